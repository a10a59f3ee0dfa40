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

	"github.com/attested-kv/attested-kv/internal/maa"
)

// TestResolveStateDir: the state directory has one name whether it is reached through a
// symbolic link or not, and whether it exists yet or not, so that the name `up` puts in the
// stack's command line is the one later commands look for.
func TestResolveStateDir(t *testing.T) {
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ in, want string }{
		{real, real},
		{link, real},
		{filepath.Join(link, "st"), filepath.Join(real, "st")},         // not created yet
		{filepath.Join(link, "a", "b"), filepath.Join(real, "a", "b")}, // nor its parent
		{filepath.Join(base, "none", "st"), filepath.Join(base, "none", "st")},
	} {
		got, err := ResolveStateDir(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ResolveStateDir(%s) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
	// Created afterwards, the directory still resolves to the name given before.
	before, _ := ResolveStateDir(filepath.Join(link, "st"))
	if err := prepareStateDir(before); err != nil {
		t.Fatal(err)
	}
	if after, _ := ResolveStateDir(filepath.Join(link, "st")); after != before {
		t.Errorf("resolved %s before creation, %s after", before, after)
	}
	// A directory others may write to is refused, and its mode left as it is.
	shared := filepath.Join(base, "shared")
	if err := os.Mkdir(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(shared, 0o777)
	if err := prepareStateDir(shared); err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Errorf("prepareStateDir of a mode 0777 directory: %v", err)
	}
	if fi, _ := os.Stat(shared); fi.Mode().Perm() != 0o777 {
		t.Errorf("the shared directory's mode was changed to %#o", fi.Mode().Perm())
	}
}

// TestOSReleaseFor: the stack describes the host's OS to MAA when its os-release has a numeric
// VERSION_ID, and an os-release of its own otherwise, which the MAA client accepts.
func TestOSReleaseFor(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, host string
		own        bool
	}{
		{"Debian 12", "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n", false},
		{"rolling release", "NAME=\"Arch Linux\"\nBUILD_ID=rolling\n", true},
		{"testing", "NAME=\"Debian GNU/Linux\"\nVERSION_CODENAME=trixie\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := filepath.Join(t.TempDir(), "os-release")
			if err := os.WriteFile(host, []byte(tc.host), 0o644); err != nil {
				t.Fatal(err)
			}
			var s signing
			if err := s.osReleaseFor(paths{dir}, host); err != nil {
				t.Fatal(err)
			}
			if (s.osRelease != "") != tc.own {
				t.Fatalf("os-release %q, want the stack's own: %v", s.osRelease, tc.own)
			}
			if tc.own {
				info, err := maa.ReadOSRelease(s.osRelease)
				if err != nil || info.VersionMajor == 0 {
					t.Fatalf("the stack's os-release: %+v, %v", info, err)
				}
			}
		})
	}
}

// writeFiles writes files (name -> content; a name ending in / is a directory) into dir, 0600.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		path := filepath.Join(dir, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(path, 0o700); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestUntrustedStateRefused: every command's check refuses, with an *UnsafeStateError naming the
// cause, a state directory that others may write to or that is a symbolic link, and a
// state.json or stack.pid that is not a regular file of the user's or that others may
// write (or read, state.json); as root, it also refuses them owned by another user.
func TestUntrustedStateRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T, dir string) string // returns the --state to check
		root   bool                                  // needs root (chown)
		reason string
	}{
		{"directory mode 0777", func(t *testing.T, dir string) string { os.Chmod(dir, 0o777); return dir }, false, "is writable by others (mode 0777)"},
		{"directory mode 0770", func(t *testing.T, dir string) string { os.Chmod(dir, 0o770); return dir }, false, "is writable by others (mode 0770)"},
		{"directory a symbolic link", func(t *testing.T, dir string) string {
			link := dir + "-link"
			if err := os.Symlink(dir, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, false, "is a symbolic link"},
		{"directory of another user", func(t *testing.T, dir string) string { chown(t, dir); return dir }, true, "belongs to uid 65534, not to this user"},
		{"state.json mode 0644", func(t *testing.T, dir string) string { os.Chmod(paths{dir}.state(), 0o644); return dir }, false, "state.json has mode 0644, which lets others read it; it must be 0600"},
		{"state.json mode 0660", func(t *testing.T, dir string) string { os.Chmod(paths{dir}.state(), 0o660); return dir }, false, "has mode 0660, which lets others read and write it"},
		{"state.json a symbolic link", func(t *testing.T, dir string) string {
			p := paths{dir}
			os.Rename(p.state(), p.state()+".real")
			os.Symlink(p.state()+".real", p.state())
			return dir
		}, false, "state.json is a symbolic link, not the file itself"},
		{"state.json of another user", func(t *testing.T, dir string) string { chown(t, paths{dir}.state()); return dir }, true, "state.json belongs to uid 65534"},
		{"stack.pid mode 0666", func(t *testing.T, dir string) string { os.Chmod(paths{dir}.pid(), 0o666); return dir }, false, "stack.pid has mode 0666, which lets others write it; no one but the user may write it"},
		{"stack.pid a directory", func(t *testing.T, dir string) string {
			os.Remove(paths{dir}.pid())
			os.Mkdir(paths{dir}.pid(), 0o700)
			return dir
		}, false, "stack.pid is not a regular file"},
		{"stack.pid of another user", func(t *testing.T, dir string) string { chown(t, paths{dir}.pid()); return dir }, true, "stack.pid belongs to uid 65534"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Getuid() != 0 {
				t.Skip("only root can give a file to another user")
			}
			dir := filepath.Join(t.TempDir(), "state")
			if err := prepareStateDir(dir); err != nil {
				t.Fatal(err)
			}
			// The stack's process is this test's, seen through a stand-in proc file system.
			pid, uid := os.Getpid(), os.Getuid()
			b, _ := json.Marshal(State{Version: StateVersion, PID: pid})
			writeFiles(t, dir, map[string]string{"stack.pid": strconv.Itoa(pid) + "\n", "state.json": string(b)})
			proc := fakeProc(t, pid, []string{"attest-bootstrap", "local", "serve", "--state", dir}, fmt.Sprintf("\t%d\t%d\t%d\t%d", uid, uid, uid, uid))
			if _, err := runningState(proc, dir); err != nil {
				t.Fatalf("before the change: %v", err)
			}
			state := tc.setup(t, dir)
			_, err := runningState(proc, state)
			var unsafe *UnsafeStateError
			if !errors.As(err, &unsafe) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("runningState: %v; want an *UnsafeStateError with %q", err, tc.reason)
			}
			// A signal would end this test.
			if err := down(context.Background(), proc, state); !errors.As(err, &unsafe) {
				t.Errorf("down: %v; want it refused", err)
			}
		})
	}
}

// chown gives path to uid and gid 65534 (nobody).
func chown(t *testing.T, path string) {
	t.Helper()
	if err := os.Lchown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
}
