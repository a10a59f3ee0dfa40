package safepath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// nobody is the unprivileged user (and group) the tests give components to, as root.
const nobody = 65534

// accounts points the account files privateGroup reads at files holding passwd and group.
func accounts(t *testing.T, passwd, group string) {
	t.Helper()
	dir := t.TempDir()
	pf, gf := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	if err := os.WriteFile(pf, []byte(passwd), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gf, []byte(group), 0o600); err != nil {
		t.Fatal(err)
	}
	oldP, oldG := passwdFile, groupFile
	passwdFile, groupFile = pf, gf
	t.Cleanup(func() { passwdFile, groupFile = oldP, oldG })
}

// upg is this user's passwd and group entries with a user private group.
func upg() (passwd, group string) {
	return fmt.Sprintf("me:x:%d:%d::/home/me:/bin/sh\n", os.Getuid(), os.Getgid()), fmt.Sprintf("me:x:%d:\n", os.Getgid())
}

func TestCheckParents(t *testing.T) {
	passwd, group := upg()
	accounts(t, passwd, group)
	root := os.Getuid() == 0
	tests := []struct {
		name     string
		asRoot   bool                                   // needs root (chown)
		setup    func(t *testing.T, base string) string // returns the path to check
		refused  string                                 // "" = accepted; else a part of the *UnsafeError
		otherErr bool                                   // refused with another error than *UnsafeError
	}{
		{name: "private directories", setup: func(t *testing.T, base string) string {
			return mkdir(t, base, "a/b/store", 0o700)
		}},
		{name: "the path need not exist", setup: func(t *testing.T, base string) string {
			return filepath.Join(base, "not/yet/store")
		}},
		{name: "the path's own mode is the caller's", setup: func(t *testing.T, base string) string {
			return mkdir(t, base, "a/store", 0o777)
		}},
		{name: "a directory above writable by all", setup: func(t *testing.T, base string) string {
			mkdir(t, base, "shared", 0o777)
			return mkdir(t, base, "shared/store", 0o700)
		}, refused: "shared is writable by all users"},
		{name: "a sticky directory above writable by all (as /tmp)", setup: func(t *testing.T, base string) string {
			mkdir(t, base, "tmp", os.ModeSticky|0o777)
			return mkdir(t, base, "tmp/store", 0o700)
		}},
		{name: "a directory above writable by the user's own group", setup: func(t *testing.T, base string) string {
			d := mkdir(t, base, "upg", 0o770)
			if err := os.Chown(d, -1, os.Getgid()); err != nil {
				t.Fatal(err)
			}
			return mkdir(t, base, "upg/store", 0o700)
		}},
		{name: "a directory above writable by another group", asRoot: true, setup: func(t *testing.T, base string) string {
			d := mkdir(t, base, "team", 0o770)
			chown(t, d, -1, nobody)
			return mkdir(t, base, "team/store", 0o700)
		}, refused: "writable by group 65534"},
		{name: "a directory above owned by another user", asRoot: true, setup: func(t *testing.T, base string) string {
			d := mkdir(t, base, "theirs", 0o755)
			chown(t, d, nobody, nobody)
			return mkdir(t, base, "theirs/store", 0o700)
		}, refused: "theirs belongs to uid 65534"},
		{name: "a link of this user's to a private directory", setup: func(t *testing.T, base string) string {
			mkdir(t, base, "real/store", 0o700)
			symlink(t, "real", filepath.Join(base, "link"))
			return filepath.Join(base, "link/store")
		}},
		{name: "the path is a link of another user's in a sticky directory", asRoot: true, setup: func(t *testing.T, base string) string {
			mkdir(t, base, "tmp", os.ModeSticky|0o777)
			mkdir(t, base, "mine", 0o700)
			l := filepath.Join(base, "tmp/tokens")
			symlink(t, filepath.Join(base, "mine"), l)
			if err := os.Lchown(l, nobody, nobody); err != nil {
				t.Fatal(err)
			}
			return l
		}, refused: "symbolic link " + "BASE/tmp/tokens belongs to uid 65534"},
		{name: "a link into a directory writable by all", setup: func(t *testing.T, base string) string {
			mkdir(t, base, "shared", 0o777)
			mkdir(t, base, "shared/store", 0o700)
			symlink(t, filepath.Join(base, "shared/store"), filepath.Join(base, "store"))
			return filepath.Join(base, "store")
		}, refused: "shared is writable by all users"},
		{name: "a relative link, then ..: the link's target's parent is walked", setup: func(t *testing.T, base string) string {
			mkdir(t, base, "shared", 0o777)
			mkdir(t, base, "shared/deep", 0o700)
			mkdir(t, base, "safe/x", 0o700)
			// safe/link -> ../shared/deep; safe/link/.. is shared (writable by all), not safe.
			symlink(t, "../shared/deep", filepath.Join(base, "safe/link"))
			return filepath.Join(base, "safe") + "/link/../store"
		}, refused: "shared is writable by all users"},
		{name: "a sticky directory above owned by another user", asRoot: true, setup: func(t *testing.T, base string) string {
			d := mkdir(t, base, "tmp", os.ModeSticky|0o777)
			chown(t, d, nobody, nobody) // its owner may remove or rename any entry
			return mkdir(t, base, "tmp/store", 0o700)
		}, refused: "tmp belongs to uid 65534"},
		{name: "a directory above of another group, which may not write to it", asRoot: true, setup: func(t *testing.T, base string) string {
			d := mkdir(t, base, "team", 0o750)
			chown(t, d, -1, nobody)
			return mkdir(t, base, "team/store", 0o700)
		}},
		{name: "a file on the way", setup: func(t *testing.T, base string) string {
			if err := os.WriteFile(filepath.Join(base, "f"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(base, "f") + "/../store"
		}, otherErr: true},
		{name: "a loop of links", setup: func(t *testing.T, base string) string {
			symlink(t, "b", filepath.Join(base, "a"))
			symlink(t, "a", filepath.Join(base, "b"))
			return filepath.Join(base, "a/store")
		}, otherErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.asRoot && !root {
				t.Skip("needs root to give a component to another user")
			}
			base := mkdir(t, t.TempDir(), "base", 0o700)
			path := tc.setup(t, base)
			err := CheckParents(path)
			var unsafe *UnsafeError
			switch {
			case tc.otherErr:
				if err == nil || errors.As(err, &unsafe) {
					t.Fatalf("CheckParents(%s) = %v; want an error that is not an *UnsafeError", path, err)
				}
			case tc.refused == "":
				if err != nil {
					t.Fatalf("CheckParents(%s) = %v; want it accepted", path, err)
				}
			default:
				want := strings.ReplaceAll(tc.refused, "BASE", base)
				if !errors.As(err, &unsafe) || !strings.Contains(err.Error(), want) {
					t.Fatalf("CheckParents(%s) = %v; want an *UnsafeError containing %q", path, err, want)
				}
			}
		})
	}
}

// TestCheckParentsRelative: a relative path is walked from the working directory.
func TestCheckParentsRelative(t *testing.T) {
	base := mkdir(t, t.TempDir(), "base", 0o700)
	mkdir(t, base, "shared", 0o777)
	t.Chdir(filepath.Join(base, "shared"))
	var unsafe *UnsafeError
	if err := CheckParents("store"); !errors.As(err, &unsafe) {
		t.Fatalf("CheckParents(store) in a directory writable by all = %v; want an *UnsafeError", err)
	}
}

func mkdir(t *testing.T, base, rel string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(base, rel)
	if err := os.MkdirAll(p, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func chown(t *testing.T, p string, uid, gid int) {
	t.Helper()
	if err := os.Chown(p, uid, gid); err != nil {
		t.Fatal(err)
	}
}

// TestGroupWrite: a directory above the path that its group may write to is accepted only when
// that group is this user's private group (Debian's OpenSSH rule): not when another account has it
// as primary group or is listed in it, when the files do not list it, or when the directory has a
// POSIX ACL (whose group bits are the mask of what named users may do).
func TestGroupWrite(t *testing.T) {
	uid, gid := os.Getuid(), os.Getgid()
	me := fmt.Sprintf("me:x:%d:%d::/home/me:/bin/sh\n", uid, gid)
	tests := []struct {
		name          string
		passwd, group string
		acl           bool
		otherGroup    bool   // the directory's group is 65534, not this user's primary group (needs root)
		refused       string // "" = accepted
	}{
		{name: "a user private group", passwd: me, group: fmt.Sprintf("me:x:%d:\n", gid)},
		{name: "listing this user only", passwd: me, group: fmt.Sprintf("me:x:%d:me\n", gid)},
		{name: "shared as another account's primary group", passwd: me + fmt.Sprintf("other:x:%d:%d::/home/other:/bin/sh\n", uid+1, gid),
			group: fmt.Sprintf("users:x:%d:\n", gid), refused: "does not list as this user's alone"},
		{name: "listing another member", passwd: me, group: fmt.Sprintf("users:x:%d:me,other\n", gid), refused: "does not list as this user's alone"},
		{name: "not in the files (NSS)", passwd: me, group: "", refused: "does not list as this user's alone"},
		{name: "with a POSIX ACL", passwd: me, group: fmt.Sprintf("me:x:%d:\n", gid), acl: true, refused: "has a POSIX ACL"},
		{name: "another group, though no one is listed in it (as tty, which setgid programs hold)", passwd: me,
			group: fmt.Sprintf("me:x:%d:\ntty:x:%d:\n", gid, nobody), otherGroup: true, refused: "which is not this user's primary group"},
		{name: "this user not in the files (NSS)", passwd: fmt.Sprintf("other:x:%d:%d::/home/other:/bin/sh\n", uid+1, uid+1),
			group: fmt.Sprintf("me:x:%d:\n", gid), refused: "does not list as this user's alone"},
		{name: "not in the files, other groups are", passwd: me, group: fmt.Sprintf("staff:x:%d:\n", gid+1), refused: "does not list as this user's alone"},
		{name: "other groups listing others", passwd: me, group: fmt.Sprintf("users:x:%d:me,other\nme:x:%d:\n", gid+1, gid)},
		{name: "a comment line listing another member", passwd: me, group: fmt.Sprintf("#me:x:%d:other\nme:x:%d:\n", gid, gid)},
		{name: "a second entry for the group (groupadd -o) listing another member", passwd: me,
			group: fmt.Sprintf("me:x:%d:\nshared:x:%d:other\n", gid, gid), refused: "does not list as this user's alone"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.otherGroup && (os.Getuid() != 0 || gid == nobody) {
				t.Skip("needs root to give a directory to another group")
			}
			accounts(t, tc.passwd, tc.group)
			base := mkdir(t, t.TempDir(), "base", 0o700)
			d := mkdir(t, base, "proj", 0o770)
			dirGID := gid
			if tc.otherGroup {
				dirGID = nobody
			}
			if err := os.Chown(d, -1, dirGID); err != nil {
				t.Fatal(err)
			}
			if tc.acl {
				setACL(t, d, uid+1)
			}
			err := CheckParents(filepath.Join(d, "store"))
			var unsafe *UnsafeError
			switch {
			case tc.refused == "" && err != nil:
				t.Fatalf("CheckParents = %v; want it accepted", err)
			case tc.refused != "" && (!errors.As(err, &unsafe) || !strings.Contains(err.Error(), tc.refused)):
				t.Fatalf("CheckParents = %v; want an *UnsafeError containing %q", err, tc.refused)
			}
		})
	}
}

// setACL gives user other rwx on dir through a POSIX access ACL, written as setfacl writes it
// (the system.posix_acl_access attribute: version 2, then tag, permissions and id per entry).
func setACL(t *testing.T, dir string, other int) {
	t.Helper()
	const undefined = 0xffffffff
	entries := []struct {
		tag, perm uint16
		id        uint32
	}{
		{0x01, 7, undefined},     // user::rwx
		{0x02, 7, uint32(other)}, // user:other:rwx
		{0x04, 7, undefined},     // group::rwx
		{0x10, 7, undefined},     // mask::rwx
		{0x20, 0, undefined},     // other::---
	}
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	if err := syscall.Setxattr(dir, "system.posix_acl_access", b, 0); err != nil {
		t.Skipf("no POSIX ACLs here: %v", err)
	}
}
