package localstack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// TestOSReleaseFor: the stack describes the host's OS to MAA when the MAA client accepts its
// os-release (as Azure's client, it reads a missing or non-numeric VERSION_ID as 1.0), and an
// os-release of its own otherwise.
func TestOSReleaseFor(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, host string
		own        bool
	}{
		{"Debian 12", "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n", false},
		{"rolling release", "NAME=\"Arch Linux\"\nBUILD_ID=rolling\n", false},
		{"testing", "NAME=\"Debian GNU/Linux\"\nVERSION_CODENAME=trixie\n", false},
		{"version 0", "NAME=\"Pre-release\"\nVERSION_ID=\"0.9\"\n", true},
		{"no os-release", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := filepath.Join(t.TempDir(), "os-release")
			if tc.host != "" {
				if err := os.WriteFile(host, []byte(tc.host), 0o644); err != nil {
					t.Fatal(err)
				}
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

// entries returns the names in dir, sorted.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
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
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// stackStateJSON is a state.json as the stack writes it.
const stackStateJSON = `{"version": 1, "pid": 12345, "maaURL": "https://127.0.0.1:1"}`

// TestClaimStateDir: up (and serve) make a new or empty directory the stack's by writing the
// marker into it, keep a marked one, and mark one an earlier version's stack left (the stack's
// files only, with a state that reads as the stack's); a directory that holds anything else is
// refused with ErrNotStackDir, naming the marker, and nothing in it changes.
func TestClaimStateDir(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   map[string]string // nil: the directory does not exist
		refused bool
	}{
		{"new", nil, false},
		{"empty", map[string]string{}, false},
		{"marked", map[string]string{MarkerName: markerText, "stack.log": "x", "notes.txt": "the user's"}, false},
		{"earlier stack, stopped", map[string]string{"last-state.json": stackStateJSON, "keyvault/": "", "tls/": "", "stack.log": "", "up.lock": "", "serve.lock": ""}, false},
		{"earlier stack, running", map[string]string{"state.json": stackStateJSON, "last-state.json": stackStateJSON, "stack.pid": "12345\n", "control.sock": "", "registry/": ""}, false},
		{"earlier stack, interrupted write", map[string]string{"last-state.json": stackStateJSON, ".last-state.json.tmp-123": "{"}, false},
		// Stopped by a version before last-state.json (down removes state.json), or whose up
		// failed before it published its state: the vault's state or the TLS bundle says whose.
		{"earlier stack, stopped, no state file: the vault's state", map[string]string{"keyvault/state.json": `{"version":1}`, "tls/": "", "registry/": "", "tokens/": "", "stack.log": "", "up.lock": ""}, false},
		{"earlier stack, no state file: the TLS bundle", map[string]string{"tls/ca-bundle.pem": "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n", "vtpm/": ""}, false},
		{"a vault state others may read", map[string]string{"keyvault/state.json": `{"version":1}`}, true},
		{"a TLS bundle without a certificate", map[string]string{"tls/ca-bundle.pem": "notes"}, true},
		{"a project's state.json", map[string]string{"state.json": `{"project": "x"}`, "stack.pid": "1\n"}, true},
		{"a stack's state among other files", map[string]string{"state.json": stackStateJSON, "stack.pid": "12345\n", "go.mod": "module x\n"}, true},
		{"the stack's names, no state", map[string]string{"registry/": "", "tokens/": ""}, true},
		{"another version's state", map[string]string{"last-state.json": `{"version": 2}`}, true},
		{"a state others may read", map[string]string{"last-state.json": stackStateJSON}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			if tc.files != nil {
				if err := os.Mkdir(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				writeFiles(t, dir, tc.files)
				if tc.name == "a state others may read" {
					os.Chmod(filepath.Join(dir, "last-state.json"), 0o644)
				}
				if tc.name == "a vault state others may read" {
					os.Chmod(filepath.Join(dir, "keyvault", "state.json"), 0o644)
				}
			}
			var before []string
			if tc.files != nil {
				before = entries(t, dir)
			}
			err := claimStateDir(dir)
			if tc.refused {
				if !errors.Is(err, ErrNotStackDir) || !strings.Contains(err.Error(), MarkerName) || !strings.Contains(err.Error(), "choose one") || !strings.Contains(err.Error(), "create "+filepath.Join(dir, MarkerName)+" in it to keep its signing key") {
					t.Fatalf("claimStateDir: %v; want ErrNotStackDir naming %s", err, MarkerName)
				}
				if after := entries(t, dir); !slices.Equal(after, before) {
					t.Errorf("the refused directory changed from %q to %q", before, after)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(dir, MarkerName))
			if err != nil || string(b) != markerText && tc.name != "marked" {
				t.Errorf("marker: %q, %v", b, err)
			}
			if err := claimStateDir(dir); err != nil {
				t.Errorf("claimed again: %v", err)
			}
			if err := stackDir(dir); err != nil && !errors.Is(err, ErrNotRunning) {
				t.Errorf("stackDir of the claimed directory: %v", err)
			}
		})
	}
}

// TestStackDirReadOnly: the check every command but up runs changes nothing: an earlier
// version's stack directory is accepted but not marked, a foreign one is refused with
// ErrNotStackDir, and a missing or empty one is ErrNotRunning without being created.
func TestStackDirReadOnly(t *testing.T) {
	base := t.TempDir()
	earlier := filepath.Join(base, "earlier")
	os.Mkdir(earlier, 0o700)
	writeFiles(t, earlier, map[string]string{"last-state.json": stackStateJSON, "keyvault/": ""})
	foreign := filepath.Join(base, "foreign")
	os.Mkdir(foreign, 0o700)
	writeFiles(t, foreign, map[string]string{"state.json": stackStateJSON, "README": "mine"})
	empty := filepath.Join(base, "empty")
	os.Mkdir(empty, 0o700)
	missing := filepath.Join(base, "missing")
	for _, tc := range []struct {
		dir  string
		want error
	}{{earlier, nil}, {foreign, ErrNotStackDir}, {empty, ErrNotRunning}, {missing, ErrNotRunning}} {
		var before []string
		if tc.dir != missing {
			before = entries(t, tc.dir)
		}
		if err := stackDir(tc.dir); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("stackDir(%s): %v, want %v", filepath.Base(tc.dir), err, tc.want)
		}
		if tc.dir == missing {
			if _, err := os.Stat(missing); err == nil {
				t.Errorf("stackDir created %s", missing)
			}
		} else if after := entries(t, tc.dir); !slices.Equal(after, before) {
			t.Errorf("stackDir(%s) changed the directory from %q to %q", filepath.Base(tc.dir), before, after)
		}
	}
}

// TestUntrustedStateRefused: every command's check refuses, with an *UnsafeStateError naming the
// cause, a state directory that others may write to, redirect (a directory above it writable by
// all, or another user's) or that is a symbolic link, and a
// state.json, stack.pid or marker that is not a regular file of the user's or that others may
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
		// Whoever may rename entries above it can swap in a directory of their own, with a
		// plugin of theirs, after the check.
		{"a directory above writable by all", func(t *testing.T, dir string) string { os.Chmod(filepath.Dir(dir), 0o777); return dir }, false, "can be redirected by another user: directory "},
		{"a directory above of another user", func(t *testing.T, dir string) string { chown(t, filepath.Dir(dir)); return dir }, true, "belongs to uid 65534; choose a directory under directories only you"},
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
		{"marker mode 0666", func(t *testing.T, dir string) string { os.Chmod(paths{dir}.marker(), 0o666); return dir }, false, "marker file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Getuid() != 0 {
				t.Skip("only root can give a file to another user")
			}
			dir := filepath.Join(t.TempDir(), "state")
			if err := claimStateDir(dir); err != nil {
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

// TestDownForeignDir: down in a directory that is not a stack's (no marker), holding the user's
// own state.json and stack.pid, refuses with ErrNotStackDir and leaves the directory as it was:
// the files kept, no lock file made. In the stack's directory with no stack running, it removes
// a state.json only if it reads as the stack's.
func TestDownForeignDir(t *testing.T) {
	for _, state := range []string{`{"project": "x"}`, stackStateJSON} {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"state.json": state, "stack.pid": "12345\n", "Makefile": "all:\n"})
		before := entries(t, dir)
		if err := Down(context.Background(), dir); !errors.Is(err, ErrNotStackDir) {
			t.Errorf("Down: %v; want ErrNotStackDir", err)
		}
		if after := entries(t, dir); !slices.Equal(after, before) {
			t.Errorf("down changed the directory from %q to %q", before, after)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "state.json")); string(b) != state {
			t.Errorf("state.json is now %q", b)
		}
	}

	marked := t.TempDir()
	if err := claimStateDir(marked); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, marked, map[string]string{"state.json": `{"project": "x"}`})
	if err := Down(context.Background(), marked); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Down: %v; want ErrNotRunning", err)
	}
	if _, err := os.Stat(filepath.Join(marked, "state.json")); err != nil {
		t.Errorf("down removed a state.json that is not the stack's: %v", err)
	}
	writeFiles(t, marked, map[string]string{"state.json": stackStateJSON, "stack.pid": "999999999\n"})
	if err := Down(context.Background(), marked); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Down: %v; want ErrNotRunning", err)
	}
	for _, name := range []string{"state.json", "stack.pid"} {
		if _, err := os.Stat(filepath.Join(marked, name)); err == nil {
			t.Errorf("down kept the stale %s", name)
		}
	}
}
