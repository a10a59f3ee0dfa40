// Package safepath checks that no other user can redirect a path: that every directory above it,
// and every symbolic link on the way to it, can be changed only by this user or by root.
//
// A directory of one's own (the token store, the local stack's state) is only as private as the
// directories above it: whoever may rename or replace an entry above it can put a directory of
// their own at its path after it was checked, and what is written there afterwards, or run from
// there, is theirs. The rule is OpenSSH's for StrictModes (secure_path in misc.c), extended to
// symbolic links, which are followed once their owner is checked:
//   - each directory above the path is owned by root or by this user, and no one else may write
//     to it, unless its sticky bit is set (as on /tmp: others may add entries but not rename or
//     remove this user's); group write is allowed, as Debian's OpenSSH allows it, only for a user
//     private group (Debian's and Ubuntu's default, with umask 002): this user's primary group,
//     which /etc/group lists with no member but this user and no other /etc/passwd entry has as
//     its primary group, on a directory without a POSIX ACL (whose group bits are the mask of
//     what named users and groups may do). A group the files do not list (NSS, LDAP) is not
//     taken as private;
//   - each symbolic link on the way is owned by root or by this user (a link in a sticky
//     directory can be replaced only by its owner).
//
// The path itself is the caller's to check (its owner and mode rules differ: a token store must
// be this user's, a system path root's).
package safepath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// maxLinks bounds the symbolic links followed, as the kernel's MAXSYMLINKS does.
const maxLinks = 40

// UnsafeError says which directory or link on the way to Path another user can change.
type UnsafeError struct {
	// Path is the path checked.
	Path string
	// Component is the directory or link another user can change.
	Component string
	// Reason says why.
	Reason string
}

func (e *UnsafeError) Error() string {
	return fmt.Sprintf("%s is not safe: %s %s, so another user could put a directory of their own at its path; use a path under directories only you (or root) can change", e.Path, e.Component, e.Reason)
}

// CheckParents checks the directories above path and the symbolic links on the way to it,
// following the links, as the package documentation says. A component that does not exist ends
// the walk without error: whoever creates it later is the caller. The error is an *UnsafeError
// when another user can change a component, else the error of reading one.
//
// The path is walked as the kernel resolves it, a component at a time (a ".." after a link
// leaves the link's target, not the link), not cleaned first as filepath.Clean would.
func CheckParents(path string) error {
	p := path
	if !filepath.IsAbs(p) {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		p = wd + "/" + p
	}
	root, err := os.Lstat("/")
	if err != nil {
		return err
	}
	if err := checkDir(path, "/", root); err != nil {
		return err
	}
	todo := components(p)
	cur := "/"
	links := 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		if name == ".." {
			cur = filepath.Dir(cur) // cur holds no link: its parent is lexical
			continue
		}
		next := filepath.Join(cur, name)
		fi, err := os.Lstat(next)
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if _, err := checkOwner(path, next, fi, "symbolic link"); err != nil {
				return err
			}
			if links++; links > maxLinks {
				return fmt.Errorf("%s: more than %d symbolic links on the way", path, maxLinks)
			}
			target, err := os.Readlink(next)
			if err != nil {
				return err
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			todo = append(components(target), todo...)
			continue
		}
		if len(todo) == 0 {
			return nil // the path itself: the caller's to check
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s: %s is not a directory", path, next)
		}
		if err := checkDir(path, next, fi); err != nil {
			return err
		}
		cur = next
	}
	return nil
}

// components splits p at its slashes, without empty and "." components.
func components(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// checkDir checks the directory dir above path, fi its Lstat.
func checkDir(path, dir string, fi fs.FileInfo) error {
	st, err := checkOwner(path, dir, fi, "directory")
	if err != nil {
		return err
	}
	unsafe := func(format string, a ...any) error {
		return &UnsafeError{Path: path, Component: "directory " + dir, Reason: fmt.Sprintf(format, a...)}
	}
	switch perm := fi.Mode().Perm(); {
	case fi.Mode()&fs.ModeSticky != 0:
		return nil
	case perm&0o002 != 0:
		return unsafe("is writable by all users (mode %#o) without the sticky bit", perm)
	case perm&0o020 == 0:
		return nil
	case int(st.Gid) != os.Getgid():
		return unsafe("is writable by group %d (mode %#o), which is not this user's primary group", st.Gid, perm)
	case hasACL(dir):
		return unsafe("has a POSIX ACL whose mask lets others write to it (mode %#o)", perm)
	case !privateGroup(int(st.Gid)):
		return unsafe("is writable by group %d (mode %#o), which %s does not list as this user's alone", st.Gid, perm, groupFile)
	}
	return nil
}

// The account files privateGroup reads; tests point them elsewhere.
var groupFile, passwdFile = "/etc/group", "/etc/passwd"

// privateGroup reports whether gid is this user's private group: /etc/group lists it with no
// member but this user, in every entry with that gid (groupadd -o makes several, and a member of
// any of them holds the gid), and no other /etc/passwd entry has it as primary group. Only the
// files are read (as Go's os/user does without cgo): a group they do not list is not private.
func privateGroup(gid int) bool {
	me, others := "", false
	for _, f := range entries(passwdFile) { // name:password:uid:gid:...
		u, errU := strconv.Atoi(f[2])
		g, errG := strconv.Atoi(f[3])
		switch {
		case errU != nil || errG != nil:
		case u == os.Getuid():
			me = f[0]
		case g == gid:
			others = true
		}
	}
	if me == "" || others {
		return false
	}
	listed := false
	for _, f := range entries(groupFile) { // name:password:gid:member,member
		if g, err := strconv.Atoi(f[2]); err != nil || g != gid {
			continue
		}
		for _, m := range strings.Split(f[3], ",") {
			if m = strings.TrimSpace(m); m != "" && m != me {
				return false
			}
		}
		listed = true
	}
	return listed
}

// entries returns the colon-separated fields of the lines of the account file path that have at
// least four, comments left out; none if it cannot be read.
func entries(path string) [][]string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out [][]string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Split(line, ":"); len(f) >= 4 && !strings.HasPrefix(line, "#") {
			out = append(out, f)
		}
	}
	return out
}

// hasACL reports whether dir has a POSIX access ACL beyond its mode bits. An error other than
// "none" or "not supported" is taken as one.
func hasACL(dir string) bool {
	_, err := syscall.Getxattr(dir, "system.posix_acl_access", nil)
	return !errors.Is(err, syscall.ENODATA) && !errors.Is(err, syscall.ENOTSUP)
}

// checkOwner refuses a component owned by another user than root and this one, and returns its
// status.
func checkOwner(path, name string, fi fs.FileInfo, what string) (*syscall.Stat_t, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("%s: cannot read the owner of %s", path, name)
	}
	if st.Uid != 0 && int(st.Uid) != os.Getuid() {
		return nil, &UnsafeError{Path: path, Component: what + " " + name, Reason: fmt.Sprintf("belongs to uid %d", st.Uid)}
	}
	return st, nil
}
