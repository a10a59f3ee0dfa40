package token

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	subjectA = "sha256:" + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	subjectB = "sha256:" + "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func TestPutListGet(t *testing.T) {
	s := NewStore(filepath.Join(t.TempDir(), "tokens"))
	if _, err := s.List(subjectA); !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty store: %v, want ErrNotFound", err)
	}
	first, err := s.Put(subjectA, "h.first.sig")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // distinct mtimes for the ordering check
	second, err := s.Put(subjectA, "h.second.sig")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(subjectA, "h.second.sig"); err != nil {
		t.Fatalf("storing the same token again: %v", err)
	}
	got, err := s.List(subjectA)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].SHA256 != second.SHA256 || got[1].SHA256 != first.SHA256 {
		t.Fatalf("List = %+v, want second then first", got)
	}
	if _, err := s.List(subjectB); !errors.Is(err, ErrNotFound) {
		t.Fatalf("other subject: %v, want ErrNotFound", err)
	}
	e, err := s.Get(subjectA, strings.ToUpper(first.SHA256))
	if err != nil || e.Raw != "h.first.sig" {
		t.Fatalf("Get: %+v %v", e, err)
	}
	if _, err := s.Get(subjectB, first.SHA256); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get under another subject: %v", err)
	}
	fi, err := os.Stat(first.Path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v (%v), want 0600", fi.Mode(), err)
	}
	// A file altered behind the store's back is not served.
	if err := os.WriteFile(first.Path, []byte("h.forged.sig"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(subjectA, first.SHA256); err == nil {
		t.Fatal("Get served a file that does not hash to its name")
	}
	if got, _ := s.List(subjectA); len(got) != 1 {
		t.Fatalf("List after tampering: %d entries, want 1", len(got))
	}
}

func TestRefusals(t *testing.T) {
	s := NewStore(t.TempDir())
	tests := []struct{ name, subject, raw string }{
		{"tag, not digest", "latest", "a.b.c"},
		{"short digest", "sha256:abc", "a.b.c"},
		{"long sha256", "sha256:" + strings.Repeat("a", 65), "a.b.c"},
		{"sha512 length under sha256", "sha256:" + strings.Repeat("a", 128), "a.b.c"},
		{"sha256 length under sha512", "sha512:" + strings.Repeat("a", 64), "a.b.c"},
		{"unregistered algorithm", "md5:" + strings.Repeat("a", 32), "a.b.c"},
		{"no algorithm", ":" + strings.Repeat("a", 64), "a.b.c"},
		{"upper-case hex", "sha256:" + strings.Repeat("A", 64), "a.b.c"},
		{"path traversal", "sha256:../../" + strings.Repeat("a", 58), "a.b.c"},
		{"empty token", subjectA, ""},
		{"token with newline", subjectA, "a.b\n.c"},
		{"oversized token", subjectA, strings.Repeat("a", MaxTokenSize+1)},
	}
	for _, tc := range tests {
		if _, err := s.Put(tc.subject, tc.raw); err == nil {
			t.Errorf("%s: Put accepted", tc.name)
		}
	}
	if _, err := s.Get(subjectA, "../x"); err == nil {
		t.Error("Get accepted a non-hex name")
	}
}

// TestParallelPut stores tokens from many goroutines at once, as parallel `notation sign` runs do.
func TestParallelPut(t *testing.T) {
	s := NewStore(t.TempDir())
	var wg sync.WaitGroup
	const n = 32
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			subject := subjectA
			if i%2 == 1 {
				subject = subjectB
			}
			if _, err := s.Put(subject, fmt.Sprintf("h.%d.sig", i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	a, _ := s.List(subjectA)
	b, _ := s.List(subjectB)
	if len(a)+len(b) != n {
		t.Fatalf("%d + %d tokens stored, want %d", len(a), len(b), n)
	}
}

func TestValidDigest(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"sha256:" + strings.Repeat("0a", 32), true},
		{"sha512:" + strings.Repeat("f9", 64), true},
		{"sha256:" + strings.Repeat("0a", 32) + "0", false},
		{"sha512:" + strings.Repeat("f9", 32), false},
		{"sha256:" + strings.Repeat("g", 64), false},
		{"SHA256:" + strings.Repeat("a", 64), false},
		{"sha384:" + strings.Repeat("a", 96), false},
		{strings.Repeat("a", 71), false},
		{"", false},
	}
	for _, tc := range tests {
		if got := validDigest(tc.in); got != tc.want {
			t.Errorf("validDigest(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestPutDirectories stores a token into stores in each state Put meets: directories to create
// from the store's parents down, or some or all of them already there.
func TestPutDirectories(t *testing.T) {
	subject512 := "sha512:" + strings.Repeat("c", 128)
	tests := []struct {
		name    string
		root    string            // store directory, relative to a fresh temporary directory
		before  map[string]string // tokens stored before, subject to raw
		subject string
		raw     string
		want    int // tokens listed for subject afterwards
	}{
		{name: "new store", root: "tokens", subject: subjectA, raw: "h.a.sig", want: 1},
		{name: "new store under missing parents", root: "state/attested-kv/tokens", subject: subjectA, raw: "h.a.sig", want: 1},
		{name: "new subject", root: "tokens", before: map[string]string{subjectB: "h.b.sig"}, subject: subjectA, raw: "h.a.sig", want: 1},
		{name: "new algorithm", root: "tokens", before: map[string]string{subjectB: "h.b.sig"}, subject: subject512, raw: "h.c.sig", want: 1},
		{name: "existing subject", root: "tokens", before: map[string]string{subjectA: "h.old.sig"}, subject: subjectA, raw: "h.a.sig", want: 2},
		{name: "same token again", root: "tokens", before: map[string]string{subjectA: "h.a.sig"}, subject: subjectA, raw: "h.a.sig", want: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			s := NewStore(filepath.Join(base, tc.root))
			for subject, raw := range tc.before {
				if _, err := s.Put(subject, raw); err != nil {
					t.Fatal(err)
				}
			}
			e, err := s.Put(tc.subject, tc.raw)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Get(tc.subject, e.SHA256)
			if err != nil || got.Raw != tc.raw || got.Path != e.Path {
				t.Fatalf("Get = %+v, %v; want the token Put returned", got, err)
			}
			if l, err := s.List(tc.subject); err != nil || len(l) != tc.want {
				t.Fatalf("List: %d tokens (%v), want %d", len(l), err, tc.want)
			}
			if fi, err := os.Stat(e.Path); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("token file: %v (%v), want mode 0600", fi, err)
			}
			// Every directory from the store's down to the subject's is private to the user.
			for d := filepath.Dir(e.Path); ; d = filepath.Dir(d) {
				if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
					t.Fatalf("%s: %v (%v), want mode 0700", d, fi, err)
				}
				if d == s.Dir() {
					break
				}
			}
			des, err := os.ReadDir(filepath.Dir(e.Path))
			if err != nil {
				t.Fatal(err)
			}
			for _, de := range des {
				if !strings.HasSuffix(de.Name(), ".jwt") {
					t.Errorf("stray file %s in the subject directory", de.Name())
				}
			}
		})
	}
}

// TestPutErrors checks that Put reports a store it cannot write to and leaves nothing behind.
func TestPutErrors(t *testing.T) {
	raw := "h.a.sig"
	sum := sha256.Sum256([]byte(raw))
	algo, enc, _ := strings.Cut(subjectA, ":")
	tests := []struct {
		name string
		// block creates, under the store directory root, what stands in Put's way.
		block func(t *testing.T, root string)
	}{
		{"store directory is a file", func(t *testing.T, root string) {
			writeFile(t, root)
		}},
		{"algorithm directory is a file", func(t *testing.T, root string) {
			writeFile(t, filepath.Join(root, algo))
		}},
		{"subject directory is a file", func(t *testing.T, root string) {
			writeFile(t, filepath.Join(root, algo, enc))
		}},
		{"token name taken by a directory", func(t *testing.T, root string) {
			writeFile(t, filepath.Join(root, algo, enc, hex.EncodeToString(sum[:])+".jwt", "x"))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "tokens")
			tc.block(t, root)
			s := NewStore(root)
			_, err := s.Put(subjectA, raw)
			if err == nil {
				t.Fatal("Put succeeded")
			}
			if !strings.HasPrefix(err.Error(), "token store: ") {
				t.Errorf("error %q lacks the token store context", err)
			}
			if l, err := s.List(subjectA); err == nil {
				t.Errorf("List after a failed Put found %d tokens", len(l))
			}
			if des, err := os.ReadDir(filepath.Join(root, algo, enc)); err == nil {
				for _, de := range des {
					if strings.Contains(de.Name(), ".tmp-") {
						t.Errorf("temporary file %s left", de.Name())
					}
				}
			}
		})
	}
}

// writeFile creates an empty file at path, and its directories.
func writeFile(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestStoreOwner: a store directory that others may write to, that another user owns, or that
// another user can redirect (a directory above it writable by all) is refused by Prepare (before a
// signature) and by List (before tokens are published).
func TestStoreOwner(t *testing.T) {
	const subject = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	for _, tc := range []struct {
		name string
		// setup runs in the subtest: t is the subtest's, so that its Skip skips the subtest.
		setup func(t *testing.T, dir string) error
		err   string
	}{
		{"own and closed", func(*testing.T, string) error { return nil }, ""},
		{"writable by others", func(_ *testing.T, dir string) error { return os.Chmod(dir, 0o777) }, "writable by others"},
		{"another user's", func(t *testing.T, dir string) error {
			if os.Getuid() != 0 {
				t.Skip("only root can give a directory to another user")
			}
			return os.Chown(dir, 65534, 65534)
		}, "belongs to uid 65534"},
		// Whoever may write above the store can move it away and put a directory of their own
		// at its path between Prepare and Put.
		{"under a directory writable by all", func(_ *testing.T, dir string) error { return os.Chmod(filepath.Dir(dir), 0o777) }, "is writable by all users"},
		{"through a link into a directory writable by all", func(t *testing.T, dir string) error {
			shared := filepath.Join(t.TempDir(), "shared")
			if err := os.Mkdir(shared, 0o700); err != nil {
				return err
			}
			if err := os.Rename(dir, filepath.Join(shared, "tokens")); err != nil {
				return err
			}
			if err := os.Symlink(filepath.Join(shared, "tokens"), dir); err != nil {
				return err
			}
			return os.Chmod(shared, 0o777)
		}, "is writable by all users"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore(filepath.Join(t.TempDir(), "tokens"))
			if _, err := s.Put(subject, "a.b.c"); err != nil {
				t.Fatal(err)
			}
			if err := tc.setup(t, s.Dir()); err != nil {
				t.Fatal(err)
			}
			errP := s.Prepare()
			_, errL := s.List(subject)
			for what, err := range map[string]error{"Prepare": errP, "List": errL} {
				if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
					t.Errorf("%s: %v, want %q", what, err, tc.err)
				}
			}
		})
	}
}
