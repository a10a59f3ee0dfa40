package token

import (
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
