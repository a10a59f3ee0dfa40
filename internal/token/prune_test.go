package token

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// stored is a token stored before a test, with its file's modification time.
type stored struct {
	subject, raw string
	mtime        time.Time
}

// tokenPath is where Put stores raw under subject, relative to the store's directory.
func tokenPath(subject, raw string) string {
	algo, enc, _ := strings.Cut(subject, ":")
	sum := sha256.Sum256([]byte(raw))
	return filepath.Join(algo, enc, hex.EncodeToString(sum[:])+".jwt")
}

// putAt stores raw under subject and dates its file mtime.
func putAt(t *testing.T, s *Store, subject, raw string, mtime time.Time) Entry {
	t.Helper()
	e, err := s.Put(subject, raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(e.Path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	return e
}

// writeAt writes an empty file at path, making its directories, and dates it mtime.
func writeAt(t *testing.T, path string, mtime time.Time) {
	t.Helper()
	writeFile(t, path)
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// ageDirs dates every directory below root, root excluded, mtime; Prune leaves a directory that
// changed within the last minute. A symbolic link is not followed.
func ageDirs(t *testing.T, root string, mtime time.Time) {
	t.Helper()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == root || !d.IsDir() {
			return err
		}
		return os.Chtimes(path, mtime, mtime)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(link), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// TestPrune: Prune removes the tokens older than the cutoff and the directories left empty,
// reports them, and leaves alone every entry Put does not write (a symbolic link is never
// followed); a dry run removes nothing and reports the same.
func TestPrune(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	cutoff := now.Add(-24 * time.Hour)
	old, recent := now.Add(-48*time.Hour), now.Add(-time.Minute)
	subject512 := "sha512:" + strings.Repeat("c", 128)
	algoA, encA, _ := strings.Cut(subjectA, ":")
	_, encB, _ := strings.Cut(subjectB, ":")
	hexOf := func(raw string) string { s := sha256.Sum256([]byte(raw)); return hex.EncodeToString(s[:]) }
	mixed := []stored{{subjectA, "h.a-old.sig", old}, {subjectA, "h.a-new.sig", recent}, {subjectB, "h.b-old.sig", old}}

	tests := []struct {
		name   string
		tokens []stored
		// setup adds, under the store's directory root, what Put does not write; outside is a
		// directory out of the store.
		setup func(t *testing.T, root, outside string)
		// fresh are the directories, relative to the store's, that changed just now; every
		// other directory last changed as long ago as the old tokens.
		fresh   []string
		dryRun  bool
		removed []string // the raw tokens reported removed
		kept    int
		skipped []string // the entries reported skipped, relative to the store's directory
		// temporary counts the leftovers of interrupted Puts removed.
		temporary int
		gone      []string // entries that must be gone afterwards, relative to it
		stay      []string // entries that must be there afterwards, relative to it or to outside
	}{
		{
			name:    "old tokens removed, recent kept",
			tokens:  mixed,
			removed: []string{"h.a-old.sig", "h.b-old.sig"},
			kept:    1,
			gone:    []string{tokenPath(subjectA, "h.a-old.sig"), filepath.Join(algoA, encB)},
			stay:    []string{tokenPath(subjectA, "h.a-new.sig")},
		},
		{
			name:    "dry run removes nothing",
			tokens:  mixed,
			dryRun:  true,
			removed: []string{"h.a-old.sig", "h.b-old.sig"},
			kept:    1,
			stay:    []string{tokenPath(subjectA, "h.a-old.sig"), tokenPath(subjectA, "h.a-new.sig"), tokenPath(subjectB, "h.b-old.sig")},
		},
		{
			name:   "dry run keeps empty directories",
			dryRun: true,
			setup: func(t *testing.T, root, _ string) {
				if err := os.MkdirAll(filepath.Join(root, algoA, encB), 0o700); err != nil {
					t.Fatal(err)
				}
			},
			stay: []string{filepath.Join(algoA, encB)},
		},
		{
			name:   "a token of the cutoff's age is kept",
			tokens: []stored{{subjectA, "h.cutoff.sig", cutoff}, {subjectA, "h.before.sig", cutoff.Add(-time.Second)}},
			// Before means strictly before.
			removed: []string{"h.before.sig"},
			kept:    1,
			stay:    []string{tokenPath(subjectA, "h.cutoff.sig")},
		},
		{
			name:   "directories left empty removed, the store's kept",
			tokens: []stored{{subjectA, "h.a.sig", old}, {subject512, "h.c.sig", old}},
			setup: func(t *testing.T, root, _ string) {
				// A subject directory that was empty already, as a failed Put leaves it.
				if err := os.MkdirAll(filepath.Join(root, algoA, encB), 0o700); err != nil {
					t.Fatal(err)
				}
			},
			removed: []string{"h.a.sig", "h.c.sig"},
			gone:    []string{"sha256", "sha512"},
			stay:    []string{"."},
		},
		{
			name:    "a directory changed within the last minute is kept",
			tokens:  []stored{{subjectA, "h.a.sig", old}},
			fresh:   []string{filepath.Join(algoA, encA)},
			removed: []string{"h.a.sig"},
			stay:    []string{filepath.Join(algoA, encA)},
		},
		{
			name:   "foreign entries and symbolic links left alone",
			tokens: []stored{{subjectA, "h.a-old.sig", old}},
			setup: func(t *testing.T, root, outside string) {
				a := filepath.Join(root, algoA, encA)
				writeAt(t, filepath.Join(root, "README"), old)
				writeAt(t, filepath.Join(root, "sha384", strings.Repeat("d", 96), hexOf("x")+".jwt"), old)
				writeAt(t, filepath.Join(root, algoA, "not-a-digest", hexOf("y")+".jwt"), old)
				writeAt(t, filepath.Join(root, algoA, strings.Repeat("e", 128), hexOf("z")+".jwt"), old)
				writeAt(t, filepath.Join(a, "notes.txt"), old)
				writeAt(t, filepath.Join(a, "."+hexOf("tmp")+".jwt.tmp-123"), old)
				// A running Put's temporary file: newer than the cutoff, left without a word.
				writeAt(t, filepath.Join(a, "."+hexOf("running")+".jwt.tmp-456"), time.Now())
				// Named like one but not a regular file.
				if err := os.MkdirAll(filepath.Join(a, "."+hexOf("dir")+".jwt.tmp-789"), 0o700); err != nil {
					t.Fatal(err)
				}
				writeAt(t, filepath.Join(a, strings.ToUpper(hexOf("upper"))+".jwt"), old)
				writeAt(t, filepath.Join(a, hexOf("dir")+".jwt", "inside"), old)
				// Links to old token files and to directories of them, out of the store.
				writeAt(t, filepath.Join(outside, "token.jwt"), old)
				writeAt(t, filepath.Join(outside, "subject", hexOf("out")+".jwt"), old)
				writeAt(t, filepath.Join(outside, "algorithm", strings.Repeat("f", 128), hexOf("out")+".jwt"), old)
				symlink(t, filepath.Join(outside, "token.jwt"), filepath.Join(a, hexOf("link")+".jwt"))
				symlink(t, filepath.Join(outside, "subject"), filepath.Join(root, algoA, encB))
				symlink(t, filepath.Join(outside, "algorithm"), filepath.Join(root, "sha512"))
			},
			removed: []string{"h.a-old.sig"},
			skipped: []string{
				"README",
				"sha384",
				filepath.Join(algoA, "not-a-digest"),
				filepath.Join(algoA, strings.Repeat("e", 128)),
				filepath.Join(algoA, encA, "notes.txt"),
				filepath.Join(algoA, encA, "."+hexOf("dir")+".jwt.tmp-789"),
				filepath.Join(algoA, encA, strings.ToUpper(hexOf("upper"))+".jwt"),
				filepath.Join(algoA, encA, hexOf("dir")+".jwt"),
				filepath.Join(algoA, encA, hexOf("link")+".jwt"),
				filepath.Join(algoA, encB),
				"sha512",
			},
			// What a crashed Put left, older than the cutoff.
			temporary: 1,
			gone:      []string{tokenPath(subjectA, "h.a-old.sig"), filepath.Join(algoA, encA, "."+hexOf("tmp")+".jwt.tmp-123")},
			stay: []string{
				"README",
				filepath.Join("sha384", strings.Repeat("d", 96), hexOf("x")+".jwt"),
				filepath.Join(algoA, "not-a-digest", hexOf("y")+".jwt"),
				filepath.Join(algoA, encA, "notes.txt"),
				filepath.Join(algoA, encA, "."+hexOf("running")+".jwt.tmp-456"),
				filepath.Join(algoA, encA, strings.ToUpper(hexOf("upper"))+".jwt"),
				filepath.Join(algoA, encA, hexOf("dir")+".jwt", "inside"),
				filepath.Join(algoA, encA, hexOf("link")+".jwt"),
				filepath.Join(algoA, encB),
				"sha512",
				"outside/token.jwt",
				filepath.Join("outside/subject", hexOf("out")+".jwt"),
				filepath.Join("outside/algorithm", strings.Repeat("f", 128), hexOf("out")+".jwt"),
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			root, outside := filepath.Join(base, "tokens"), filepath.Join(base, "outside")
			s := NewStore(root)
			if err := s.Prepare(); err != nil {
				t.Fatal(err)
			}
			entries := map[string]Entry{}
			for _, tok := range tc.tokens {
				entries[tok.raw] = putAt(t, s, tok.subject, tok.raw, tok.mtime)
			}
			if tc.setup != nil {
				tc.setup(t, root, outside)
			}
			ageDirs(t, root, old)
			for _, rel := range tc.fresh {
				if err := os.Chtimes(filepath.Join(root, rel), now, now); err != nil {
					t.Fatal(err)
				}
			}
			res, err := s.Prune(cutoff, PruneOptions{DryRun: tc.dryRun, Unattached: true})
			if err != nil {
				t.Fatal(err)
			}
			var removed []string
			for _, p := range res.Removed {
				var e Entry
				var mtime time.Time
				for _, tok := range tc.tokens {
					if entries[tok.raw].Path == p.Path {
						e, mtime = entries[tok.raw], tok.mtime
						removed = append(removed, tok.raw)
					}
				}
				if p.Subject != e.Subject || p.SHA256 != e.SHA256 || p.Path != e.Path || !p.Modified.Equal(mtime) {
					t.Errorf("removed %+v, want the token Put stored as %+v, modified %s", p, e, mtime)
				}
			}
			slices.Sort(removed)
			if !slices.Equal(removed, tc.removed) || len(res.Removed) != len(tc.removed) {
				t.Errorf("removed %v (%+v), want %v", removed, res.Removed, tc.removed)
			}
			if res.Kept != tc.kept {
				t.Errorf("kept %d, want %d", res.Kept, tc.kept)
			}
			if res.Temporary != tc.temporary {
				t.Errorf("leftovers of interrupted Puts removed: %d, want %d", res.Temporary, tc.temporary)
			}
			var skipped []string
			for _, sk := range res.Skipped {
				rel, err := filepath.Rel(root, sk.Path)
				if err != nil || sk.Reason == "" {
					t.Errorf("skipped %+v", sk)
				}
				skipped = append(skipped, rel)
			}
			slices.Sort(skipped)
			want := slices.Sorted(slices.Values(tc.skipped))
			if !slices.Equal(skipped, want) {
				t.Errorf("skipped\n%v\nwant\n%v", skipped, want)
			}
			for _, raw := range tc.removed {
				if _, err := os.Lstat(entries[raw].Path); tc.dryRun == errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s: %v after Prune with dry run %v", raw, err, tc.dryRun)
				}
			}
			for _, rel := range tc.gone {
				if _, err := os.Lstat(filepath.Join(root, rel)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s left: %v", rel, err)
				}
			}
			for _, rel := range tc.stay {
				path := filepath.Join(root, rel)
				if strings.HasPrefix(rel, "outside/") {
					path = filepath.Join(base, rel)
				}
				if _, err := os.Lstat(path); err != nil {
					t.Errorf("%s removed: %v", rel, err)
				}
			}
		})
	}
}

// TestPruneStoreDirectory: Prune refuses a store directory that List refuses (others may write
// to it, or another user owns it) before removing anything, and finds nothing to prune in a
// store directory that does not exist, without creating it.
func TestPruneStoreDirectory(t *testing.T) {
	old := time.Now().Add(-48 * time.Hour)
	tests := []struct {
		name string
		// setup makes the store's directory dir, holding an old token, what the case needs.
		setup   func(t *testing.T, dir string) string
		err     string // "" for none
		removed int
	}{
		{"own and closed", func(*testing.T, string) string { return "" }, "", 1},
		{"writable by others", func(t *testing.T, dir string) string {
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			return ""
		}, "writable by others", 0},
		{"group-writable", func(t *testing.T, dir string) string {
			if err := os.Chmod(dir, 0o770); err != nil {
				t.Fatal(err)
			}
			return ""
		}, "writable by others", 0},
		{"another user's", func(t *testing.T, dir string) string {
			if os.Getuid() != 0 {
				t.Skip("only root can give a directory to another user")
			}
			if err := os.Chown(dir, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return ""
		}, "belongs to uid 65534", 0},
		{"missing", func(t *testing.T, dir string) string {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			return ""
		}, "", 0},
		{"a file", func(t *testing.T, dir string) string {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			writeFile(t, dir)
			return ""
		}, "not a directory", 0},
		{"a symbolic link to a private directory", func(t *testing.T, dir string) string {
			link := dir + "-link"
			symlink(t, dir, link)
			return link
		}, "", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "tokens")
			e := putAt(t, NewStore(dir), subjectA, "h.old.sig", old)
			s := NewStore(dir)
			if link := tc.setup(t, dir); link != "" {
				s = NewStore(link)
			}
			res, err := s.Prune(time.Now(), PruneOptions{Unattached: true})
			if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("Prune: %v, want %q", err, tc.err)
			}
			if len(res.Removed) != tc.removed {
				t.Fatalf("removed %+v, want %d tokens", res.Removed, tc.removed)
			}
			if strings.Contains(tc.err, "others") || strings.Contains(tc.err, "uid") {
				if _, serr := os.Lstat(e.Path); serr != nil {
					t.Errorf("a refused Prune removed the token: %v", serr)
				}
			}
			if tc.name == "missing" {
				if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("Prune created the missing store: %v", err)
				}
			}
		})
	}
}

// TestPutDirectoryRemoved: a Put whose subject directory (and the algorithm directory above it)
// Prune removes empty, after Put made or found it and before Put writes the token, makes them
// again and stores the token; Put gives up, with the error, if they vanish at every attempt.
// Prune removes them only if they had not changed for a minute: not the ones Put just made.
func TestPutDirectoryRemoved(t *testing.T) {
	old := time.Now().Add(-48 * time.Hour)
	tests := []struct {
		name     string
		before   []stored // tokens stored before
		removals int      // how many times Prune runs between Put's MkdirAll and its write
		// aged dates the directories old before each Prune, as Put finds them when they exist.
		aged bool
		ok   bool
	}{
		{name: "subject directory new", removals: 1, ok: true},
		{name: "subject directory found", removals: 1, aged: true, ok: true},
		{name: "subject directory found, its old token removed", before: []stored{{subjectA, "h.old.sig", old}}, removals: 1, aged: true, ok: true},
		{name: "removed at every attempt but the last", removals: putAttempts - 1, aged: true, ok: true},
		{name: "removed at every attempt", removals: putAttempts, aged: true, ok: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore(filepath.Join(t.TempDir(), "tokens"))
			for _, b := range tc.before {
				putAt(t, s, b.subject, b.raw, b.mtime)
			}
			algo, _, _ := strings.Cut(subjectA, ":")
			runs := 0
			s.beforeWrite = func() {
				if runs == tc.removals {
					return
				}
				runs++
				if tc.aged {
					ageDirs(t, s.Dir(), old)
				}
				if _, err := s.Prune(time.Now().Add(-time.Hour), PruneOptions{Unattached: true}); err != nil {
					t.Error(err)
				}
				if _, err := os.Lstat(filepath.Join(s.Dir(), algo)); tc.aged != errors.Is(err, fs.ErrNotExist) {
					t.Errorf("after Prune, the algorithm directory that was aged %v: %v", tc.aged, err)
				}
			}
			e, err := s.Put(subjectA, "h.new.sig")
			if !tc.ok {
				if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "token store: ") {
					t.Fatalf("Put: %v, want the error of the directory that vanished", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Put: %v", err)
			}
			if got, err := s.Get(subjectA, e.SHA256); err != nil || got.Raw != "h.new.sig" {
				t.Fatalf("Get = %+v, %v; want the token Put stored", got, err)
			}
		})
	}
}

// TestPutPruneRace runs Put and Prune at the same time, as the plugin signing while a cron job
// prunes does: each Put stores into a subject directory Prune is emptying of an old token, or
// removing empty, and every token Put stored is there afterwards, and every old one gone.
func TestPutPruneRace(t *testing.T) {
	old := time.Now().Add(-48 * time.Hour)
	const subjects, rounds = 8, 20
	subject := func(round, i int) string { return fmt.Sprintf("sha256:%032x%032x", round, i) }
	var stored []Entry
	stores := map[string]*Store{}
	var mu sync.Mutex
	base := t.TempDir()
	for round := range rounds {
		// A store per round, so that each pass of Prune is as short as the first.
		s := NewStore(filepath.Join(base, strconv.Itoa(round)))
		// Put waits between making its directory and writing into it, as on a loaded machine,
		// so that Prune often removes the directory then.
		s.beforeWrite = func() { time.Sleep(100 * time.Microsecond) }
		// Old tokens and empty directories, all unchanged for long, for Prune to remove under
		// the Puts of the round.
		for i := range subjects {
			sd, err := s.subjectDir(subject(round, i))
			if err != nil {
				t.Fatal(err)
			}
			if i%2 == 0 {
				putAt(t, s, subject(round, i), fmt.Sprintf("h.old-%d-%d.sig", round, i), old)
			} else if err := os.MkdirAll(sd, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		ageDirs(t, s.Dir(), old)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range subjects {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				e, err := s.Put(subject(round, i), fmt.Sprintf("h.new-%d-%d.sig", round, i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				stored = append(stored, e)
				stores[e.Subject] = s
				mu.Unlock()
			}()
		}
		putsDone := make(chan struct{})
		go func() { wg.Wait(); close(putsDone) }()
		close(start)
		for pruning := true; pruning; {
			if _, err := s.Prune(time.Now().Add(-time.Hour), PruneOptions{Unattached: true}); err != nil {
				t.Error(err)
			}
			select {
			case <-putsDone:
				pruning = false
			default:
			}
		}
		if _, err := s.Prune(time.Now().Add(-time.Hour), PruneOptions{Unattached: true}); err != nil {
			t.Fatal(err)
		}
	}
	if len(stored) != subjects*rounds {
		t.Fatalf("%d tokens stored, want %d", len(stored), subjects*rounds)
	}
	for _, e := range stored {
		l, err := stores[e.Subject].List(e.Subject)
		if err != nil || len(l) != 1 || l[0].SHA256 != e.SHA256 {
			t.Errorf("%s: %d tokens (%v), want only the one Put stored, %s", e.Subject, len(l), err, e.SHA256)
		}
	}
}

// TestPruneKeepsUnattached: by default Prune removes an old token only once attach marked it
// published (MarkAttached), with its mark, and counts the old ones it keeps; asked to, it removes
// those too. A mark whose token is gone goes once old; one cannot be made for a token the store
// does not hold.
func TestPruneKeepsUnattached(t *testing.T) {
	subject := "sha256:" + strings.Repeat("a", 64)
	old := time.Now().Add(-48 * time.Hour)
	for _, c := range []struct {
		name       string
		unattached bool
		// removed are the tokens removed; the others stay.
		removed     []string
		unattachedN int
	}{
		{"default", false, []string{"h.published.sig"}, 1},
		{"unattached too", true, []string{"h.published.sig", "h.unpublished.sig"}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "tokens")
			s := NewStore(dir)
			entries := map[string]Entry{}
			for _, raw := range []string{"h.published.sig", "h.unpublished.sig"} {
				entries[raw] = putAt(t, s, subject, raw, old)
			}
			if err := s.MarkAttached(subject, entries["h.published.sig"].SHA256, "reg.example/app"); err != nil {
				t.Fatal(err)
			}
			mark := strings.TrimSuffix(entries["h.published.sig"].Path, ".jwt") + ".attached"
			// A mark left by a token removed by hand, old.
			orphan := filepath.Join(filepath.Dir(mark), strings.Repeat("c", 64)+".attached")
			writeAt(t, orphan, old)
			res, err := s.Prune(time.Now().Add(-time.Hour), PruneOptions{Unattached: c.unattached})
			if err != nil {
				t.Fatal(err)
			}
			var removed []string
			for raw, e := range entries {
				_, err := os.Stat(e.Path)
				if errors.Is(err, fs.ErrNotExist) {
					removed = append(removed, raw)
				}
			}
			slices.Sort(removed)
			if !slices.Equal(removed, c.removed) || len(res.Removed) != len(c.removed) || res.Unattached != c.unattachedN {
				t.Fatalf("removed %v (%d reported), %d unattached kept; want %v, %d", removed, len(res.Removed), res.Unattached, c.removed, c.unattachedN)
			}
			for _, f := range []string{mark, orphan} {
				if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s left: %v", filepath.Base(f), err)
				}
			}
			if len(res.Skipped) != 0 || res.Temporary != 0 {
				t.Errorf("skipped %+v, temporary %d: marks are the store's own", res.Skipped, res.Temporary)
			}
		})
	}
	s := NewStore(t.TempDir())
	if err := s.MarkAttached(subject, strings.Repeat("d", 64), "reg.example/app"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("marking a token the store does not hold: %v, want ErrNotFound", err)
	}
}

// TestMarkAttachedRepositories: the mark records each repository attach published the token to,
// once, in order, and at most MaxAttachedRepositories (the last ones); Prune reports them with
// the token it removes. An empty mark, as attach wrote it before marks recorded repositories,
// still means published (repository unknown); a name that is not REGISTRY/REPO is refused.
func TestMarkAttachedRepositories(t *testing.T) {
	subject := "sha256:" + strings.Repeat("a", 64)
	old := time.Now().Add(-48 * time.Hour)
	s := NewStore(filepath.Join(t.TempDir(), "tokens"))
	put := func(raw string) Entry { return putAt(t, s, subject, raw, old) }
	two, legacy, many := put("h.two.sig"), put("h.legacy.sig"), put("h.many.sig")

	// The promotion case: published to regA first, then to regB; regA again adds nothing.
	for _, repo := range []string{"rega.example/app", "regb.example:5000/team/app", "rega.example/app"} {
		if err := s.MarkAttached(subject, two.SHA256, repo); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"rega.example/app", "regb.example:5000/team/app"}
	if ok, repos, err := s.Attached(subject, two.SHA256); err != nil || !ok || !slices.Equal(repos, want) {
		t.Fatalf("Attached = %v, %q, %v; want true, %q", ok, repos, err, want)
	}
	// The mark from before repositories were recorded: an empty file.
	writeAt(t, strings.TrimSuffix(legacy.Path, ".jwt")+attachedSuffix, old)
	if ok, repos, err := s.Attached(subject, legacy.SHA256); err != nil || !ok || len(repos) != 0 {
		t.Fatalf("an empty mark: Attached = %v, %q, %v; want true and no repository", ok, repos, err)
	}
	var all []string
	for i := range MaxAttachedRepositories + 3 {
		all = append(all, fmt.Sprintf("reg.example/app%d", i))
		if err := s.MarkAttached(subject, many.SHA256, all[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, repos, _ := s.Attached(subject, many.SHA256); !slices.Equal(repos, all[3:]) {
		t.Fatalf("past the bound: %d repositories recorded %q, want the last %d", len(repos), repos, MaxAttachedRepositories)
	}
	for _, bad := range []string{"", "app", "reg.example/app:v1", "reg.example/app@sha256:" + strings.Repeat("0", 64), "reg.example/app\nevil.example/x", "reg.example/App"} {
		if err := s.MarkAttached(subject, two.SHA256, bad); err == nil {
			t.Errorf("MarkAttached with repository %q: no error", bad)
		}
	}
	if ok, _, err := s.Attached(subject, strings.Repeat("e", 64)); !errors.Is(err, ErrNotFound) || ok {
		t.Errorf("Attached of a token not stored: %v, %v; want ErrNotFound", ok, err)
	}

	res, err := s.Prune(time.Now().Add(-time.Hour), PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Pruned{}
	for _, p := range res.Removed {
		got[p.SHA256] = p
	}
	if p := got[two.SHA256]; !p.Attached || !slices.Equal(p.Repositories, want) {
		t.Errorf("removed %+v, want it attached to %q", p, want)
	}
	if p, ok := got[legacy.SHA256]; !ok || !p.Attached || p.Repositories == nil || len(p.Repositories) != 0 {
		t.Errorf("the token of an empty mark: removed %v, %+v; want removed, attached, repositories []", ok, p)
	}
	if len(res.Removed) != 3 || res.Unattached != 0 {
		t.Errorf("removed %d, %d unattached kept; want the 3 marked tokens removed", len(res.Removed), res.Unattached)
	}
}

// TestMarkAttachedConcurrently: attaches of one token to several repositories at once each stay
// recorded (the mark is rewritten under a lock of the subject's directory).
func TestMarkAttachedConcurrently(t *testing.T) {
	subject := "sha256:" + strings.Repeat("b", 64)
	s := NewStore(filepath.Join(t.TempDir(), "tokens"))
	e, err := s.Put(subject, "h.shared.sig")
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := s.MarkAttached(subject, e.SHA256, fmt.Sprintf("reg%d.example/app", i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if _, repos, err := s.Attached(subject, e.SHA256); err != nil || len(repos) != n {
		t.Fatalf("%d repositories recorded (%q, %v), want %d", len(repos), repos, err, n)
	}
}

// TestPruneRequiredRepositories: with PruneOptions.Repositories, an old published token goes only
// if its mark records each of them; a mark that records none (written before marks recorded
// repositories) keeps its token, and an unmarked token goes only with Unattached, whatever the
// repositories asked for.
func TestPruneRequiredRepositories(t *testing.T) {
	subject := "sha256:" + strings.Repeat("b", 64)
	old := time.Now().Add(-48 * time.Hour)
	const a, b = "reg.example/app", "prod.example/app"
	for _, c := range []struct {
		name       string
		required   []string
		unattached bool
		removed    []string // the tokens removed; the others stay
		notEvery   int
		err        string
	}{
		{name: "none asked", removed: []string{"h.a.sig", "h.ab.sig", "h.legacy.sig"}},
		{name: "the promotion target", required: []string{b}, removed: []string{"h.ab.sig"}, notEvery: 2},
		{name: "both", required: []string{a, b}, removed: []string{"h.ab.sig"}, notEvery: 2},
		{name: "the first only", required: []string{a}, removed: []string{"h.a.sig", "h.ab.sig"}, notEvery: 1},
		// Host names are case-insensitive.
		{name: "the registry in another case", required: []string{"PROD.example/app"}, removed: []string{"h.ab.sig"}, notEvery: 2},
		{name: "another repository of the registry", required: []string{"prod.example/app2"}, notEvery: 3},
		{name: "unattached too", required: []string{b}, unattached: true, removed: []string{"h.ab.sig", "h.none.sig"}, notEvery: 2},
		{name: "not a repository", required: []string{"prod.example/app:v1"}, err: "is not a repository"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := NewStore(filepath.Join(t.TempDir(), "tokens"))
			entries := map[string]Entry{}
			for _, raw := range []string{"h.a.sig", "h.ab.sig", "h.legacy.sig", "h.none.sig"} {
				e, err := s.Put(subject, raw)
				if err != nil {
					t.Fatal(err)
				}
				entries[raw] = e
			}
			for raw, repos := range map[string][]string{"h.a.sig": {a}, "h.ab.sig": {a, b}} {
				for _, r := range repos {
					if err := s.MarkAttached(subject, entries[raw].SHA256, r); err != nil {
						t.Fatal(err)
					}
				}
			}
			// A mark as attach wrote it before marks recorded repositories: empty.
			writeAt(t, strings.TrimSuffix(entries["h.legacy.sig"].Path, ".jwt")+".attached", old)
			for _, e := range entries {
				if err := os.Chtimes(e.Path, old, old); err != nil {
					t.Fatal(err)
				}
			}
			res, err := s.Prune(time.Now().Add(-time.Hour), PruneOptions{Repositories: c.required, Unattached: c.unattached})
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) || len(res.Removed) != 0 {
					t.Fatalf("Prune = %+v, %v; want an error naming %q and nothing removed", res, err, c.err)
				}
				for raw, e := range entries {
					if _, err := os.Stat(e.Path); err != nil {
						t.Fatalf("%s: %v", raw, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var removed []string
			for raw, e := range entries {
				if _, err := os.Stat(e.Path); errors.Is(err, fs.ErrNotExist) {
					removed = append(removed, raw)
				}
			}
			slices.Sort(removed)
			if !slices.Equal(removed, c.removed) || len(res.Removed) != len(c.removed) || res.NotEverywhere != c.notEvery {
				t.Fatalf("removed %v (%d reported), %d kept as not attached everywhere; want %v, %d", removed, len(res.Removed), res.NotEverywhere, c.removed, c.notEvery)
			}
		})
	}
}

// TestPruneConfirm: Confirm is asked about each token Prune would remove, and only those (not a
// newer token, nor an old one kept unpublished), with the token's subject, hash and mark, on a
// dry run too; a token it refuses is kept and listed with the reason, the others go.
func TestPruneConfirm(t *testing.T) {
	subject := "sha256:" + strings.Repeat("c", 64)
	old, now := time.Now().Add(-48*time.Hour), time.Now()
	s := NewStore(filepath.Join(t.TempDir(), "tokens"))
	yes := putAt(t, s, subject, "h.yes.sig", old)
	no := putAt(t, s, subject, "h.no.sig", old)
	putAt(t, s, subject, "h.newer.sig", now)
	putAt(t, s, subject, "h.unpublished.sig", old)
	for _, e := range []Entry{yes, no} {
		if err := s.MarkAttached(subject, e.SHA256, "reg.example/app"); err != nil {
			t.Fatal(err)
		}
	}
	for _, dry := range []bool{true, false} {
		var asked []string
		confirm := func(p Pruned) error {
			asked = append(asked, p.SHA256)
			if p.Subject != subject || !p.Attached || !slices.Equal(p.Repositories, []string{"reg.example/app"}) {
				t.Errorf("asked about %+v", p)
			}
			if p.SHA256 == no.SHA256 {
				return errors.New("not in the registry")
			}
			return nil
		}
		res, err := s.Prune(now.Add(-time.Hour), PruneOptions{DryRun: dry, Confirm: confirm})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(asked)
		want := []string{yes.SHA256, no.SHA256}
		slices.Sort(want)
		if !slices.Equal(asked, want) {
			t.Fatalf("dry run %v: asked about %v, want %v", dry, asked, want)
		}
		if len(res.Removed) != 1 || res.Removed[0].SHA256 != yes.SHA256 || len(res.Unconfirmed) != 1 ||
			res.Unconfirmed[0].SHA256 != no.SHA256 || res.Unconfirmed[0].Reason != "not in the registry" || res.Kept != 1 || res.Unattached != 1 {
			t.Fatalf("dry run %v: %+v", dry, res)
		}
	}
	if _, err := s.Get(subject, no.SHA256); err != nil {
		t.Fatalf("the unconfirmed token is gone: %v", err)
	}
	if _, err := s.Get(subject, yes.SHA256); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the confirmed token is still there: %v", err)
	}
}

// TestPruneResultEmpty: a result is empty only when nothing at all was read; each field alone
// makes it not empty, so that an error beside it is reported with what was done.
func TestPruneResultEmpty(t *testing.T) {
	if !(PruneResult{Removed: []Pruned{}, Skipped: []Skipped{}, Unconfirmed: []Unconfirmed{}}).Empty() {
		t.Fatal("a result with nothing in it is not empty")
	}
	for name, r := range map[string]PruneResult{
		"Removed":       {Removed: []Pruned{{}}},
		"Kept":          {Kept: 1},
		"Skipped":       {Skipped: []Skipped{{}}},
		"Temporary":     {Temporary: 1},
		"Unattached":    {Unattached: 1},
		"NotEverywhere": {NotEverywhere: 1},
		"Unconfirmed":   {Unconfirmed: []Unconfirmed{{}}},
	} {
		if r.Empty() {
			t.Errorf("a result with only %s is empty", name)
		}
	}
}
