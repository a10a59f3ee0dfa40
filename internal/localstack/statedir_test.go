package localstack

import (
	"os"
	"path/filepath"
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
