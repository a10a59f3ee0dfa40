package safepath

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// nobody is the unprivileged user (and group) the tests give components to, as root.
const nobody = 65534

func TestCheckParents(t *testing.T) {
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
