package localstack

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// procFS is the root of a proc file system, where the stack's commands look at the process a pid
// file names: hostProc, or a test's stand-in.
type procFS string

// hostProc is the system's proc file system.
const hostProc procFS = "/proc"

// file is the path of the file name of process pid.
func (p procFS) file(pid int, name string) string {
	return filepath.Join(string(p), strconv.Itoa(pid), name)
}

// alive reports whether process pid exists and has not exited: a zombie (exited, not yet reaped)
// counts as gone. Another user's process exists too (kill answers EPERM): whether it may be
// trusted is for the checks that follow (ownedByUser), not a reason to call it gone.
func (p procFS) alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(p.file(pid, "stat"))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	return true
}

// cmdline returns the argv of process pid.
func (p procFS) cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(p.file(pid, "cmdline"))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

// uids returns the real, effective, saved and file-system user ids of process pid, from the Uid
// line of its status file (proc_pid_status(5)).
func (p procFS) uids(pid int) ([4]int, error) {
	var ids [4]int
	b, err := os.ReadFile(p.file(pid, "status"))
	if err != nil {
		return ids, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Uid:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != len(ids) {
			return ids, fmt.Errorf("%s: Uid line %q: want %d ids", p.file(pid, "status"), line, len(ids))
		}
		for i, f := range fields {
			if ids[i], err = strconv.Atoi(f); err != nil {
				return ids, fmt.Errorf("%s: Uid line %q: %w", p.file(pid, "status"), line, err)
			}
		}
		return ids, nil
	}
	return ids, fmt.Errorf("%s: no Uid line", p.file(pid, "status"))
}

// ownedByUser checks that every user id of process pid is this user's, so that a process another
// user started (with a command line that mimics the stack's) is never taken for the stack: its
// state would not be the user's, and down would signal it. A process whose ids cannot be read is
// refused too; one gone meanwhile is an error wrapping fs.ErrNotExist.
func (p procFS) ownedByUser(pid int, pidFile string) error {
	ids, err := p.uids(pid)
	if errors.Is(err, fs.ErrNotExist) {
		return err // gone meanwhile
	}
	if err != nil {
		return &UnsafeStateError{What: "pid file", Path: pidFile, Reason: fmt.Sprintf("names process %d, whose owner cannot be read (%v)", pid, err)}
	}
	for _, id := range ids {
		if id != os.Getuid() {
			return &UnsafeStateError{What: "pid file", Path: pidFile, Reason: fmt.Sprintf("names process %d, which runs as uid %d, not as this user (uid %d)", pid, id, os.Getuid())}
		}
	}
	return nil
}
