package localstack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fakeProc writes a proc file system stand-in under a new directory in which process pid has the
// command line argv and the user ids uidLine (the text after "Uid:" in its status file).
func fakeProc(t *testing.T, pid int, argv []string, uidLine string) procFS {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"stat":    fmt.Sprintf("%d (attest-bootstrap) S 1 %d %d 0 -1\n", pid, pid, pid),
		"cmdline": strings.Join(argv, "\x00") + "\x00",
		"status":  fmt.Sprintf("Name:\tattest-bootstrap\nState:\tS (sleeping)\nPid:\t%d\nUid:%s\nGid:\t0\t0\t0\t0\n", pid, uidLine),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return procFS(root)
}

// TestProcUIDs: the four user ids of a process are read from the Uid line of its status file,
// this process's are this user's, and a status file without a well-formed Uid line is an error.
func TestProcUIDs(t *testing.T) {
	ids, err := hostProc.uids(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	uid := os.Getuid()
	if ids != [4]int{uid, uid, uid, uid} {
		t.Errorf("this process's uids %v, want %d four times", ids, uid)
	}
	if err := hostProc.ownedByUser(os.Getpid(), "stack.pid"); err != nil {
		t.Errorf("this process is refused: %v", err)
	}
	for _, tc := range []struct {
		name, uidLine string
		want          [4]int
		wantErr       string // "" = none
	}{
		{"one user", "\t1000\t1000\t1000\t1000", [4]int{1000, 1000, 1000, 1000}, ""},
		{"set-user-id", "\t1000\t0\t0\t0", [4]int{1000, 0, 0, 0}, ""},
		{"three ids", "\t1000\t1000\t1000", [4]int{}, "want 4 ids"},
		{"not a number", "\t1000\tx\t1000\t1000", [4]int{}, "invalid syntax"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, err := fakeProc(t, 42, []string{"x"}, tc.uidLine).uids(42)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("uids: %v, %v; want an error with %q", ids, err, tc.wantErr)
				}
				return
			}
			if err != nil || ids != tc.want {
				t.Errorf("uids: %v, %v; want %v", ids, err, tc.want)
			}
		})
	}
	noUid := t.TempDir()
	os.Mkdir(filepath.Join(noUid, "7"), 0o755)
	os.WriteFile(filepath.Join(noUid, "7", "status"), []byte("Name:\tx\n"), 0o644)
	if _, err := procFS(noUid).uids(7); err == nil || !strings.Contains(err.Error(), "no Uid line") {
		t.Errorf("a status without a Uid line: %v", err)
	}
}

// TestRunningStateForeignProcess: a stack whose pid file names a live process with the stack's
// command line for the directory counts as running only if every user id of that process is
// this user's; one another user runs (its command line mimics the stack's) is refused with an
// *UnsafeStateError naming its uid, and down neither signals it nor removes anything. The process
// is this test's own, seen through a stand-in proc file system that gives it another owner.
func TestRunningStateForeignProcess(t *testing.T) {
	dir := t.TempDir()
	if err := claimStateDir(dir); err != nil {
		t.Fatal(err)
	}
	pid := os.Getpid()
	p := paths{dir}
	if err := os.WriteFile(p.pid(), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(State{Version: StateVersion, PID: pid, NotationLibexec: filepath.Join(dir, "notation", "libexec")})
	if err := os.WriteFile(p.state(), b, 0o600); err != nil {
		t.Fatal(err)
	}
	argv := []string{"/usr/bin/attest-bootstrap", "local", "serve", "--state", dir}
	uid := os.Getuid()
	own := fakeProc(t, pid, argv, fmt.Sprintf("\t%d\t%d\t%d\t%d", uid, uid, uid, uid))
	if st, err := runningState(own, dir); err != nil || st.PID != pid {
		t.Fatalf("the user's own stack: %+v, %v", st, err)
	}
	for _, uids := range []string{"\t65534\t65534\t65534\t65534", fmt.Sprintf("\t65534\t%d\t%d\t%d", uid, uid, uid), fmt.Sprintf("\t%d\t%d\t65534\t%d", uid, uid, uid)} {
		foreign := fakeProc(t, pid, argv, uids)
		_, err := runningState(foreign, dir)
		var unsafe *UnsafeStateError
		if !errors.As(err, &unsafe) || !strings.Contains(err.Error(), "runs as uid 65534") {
			t.Fatalf("Uid:%s: runningState: %v; want it refused for uid 65534", uids, err)
		}
		// A signal would end this test.
		if err := down(context.Background(), foreign, dir); !errors.As(err, &unsafe) {
			t.Errorf("Uid:%s: down: %v; want it refused", uids, err)
		}
		for _, f := range []string{p.pid(), p.state()} {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("down removed %s: %v", f, err)
			}
		}
	}
}

// TestAliveOtherUsersProcess: a process of another user exists (kill answers EPERM), so that the
// ownership check runs and refuses it, rather than the stack being taken for stopped. Only a user
// without root's privileges gets EPERM: make test runs this as nobody (make test-unprivileged).
func TestAliveOtherUsersProcess(t *testing.T) {
	if os.Getuid() == 0 {
		t.Skip("root may signal any process; make test-unprivileged runs this as nobody")
	}
	if !hostProc.alive(1) {
		t.Fatal("process 1, another user's, is taken for gone")
	}
	if err := hostProc.ownedByUser(1, "stack.pid"); err == nil {
		t.Fatal("process 1 passes as this user's")
	}
}
