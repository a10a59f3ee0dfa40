package atomicfile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var errInjected = errors.New("injected directory sync failure")

// recorder is a directory sync that records the directories it is asked to sync, relative to
// base, then syncs them for real, or fails for the directory named by fail.
type recorder struct {
	base string
	fail string

	mu     sync.Mutex
	synced []string
}

func (r *recorder) sync(dir string) error {
	rel, err := filepath.Rel(r.base, dir)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.synced = append(r.synced, filepath.ToSlash(rel))
	r.mu.Unlock()
	if r.fail != "" && rel == r.fail {
		return errInjected
	}
	return syncDir(dir)
}

// tempFiles returns the names of temporary files Write left in dir.
func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if strings.Contains(de.Name(), ".tmp-") {
			out = append(out, de.Name())
		}
	}
	return out
}

func TestWrite(t *testing.T) {
	tests := []struct {
		name string
		old  []byte // content of the file before Write; nil for none
		data []byte
		perm os.FileMode
	}{
		{name: "new file", data: []byte("new"), perm: 0o600},
		{name: "replaces a file", old: []byte("old content, longer"), data: []byte("new"), perm: 0o600},
		{name: "empty content", old: []byte("old"), data: []byte{}, perm: 0o600},
		{name: "mode from perm", data: []byte("{}\n"), perm: 0o644},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			if tc.old != nil {
				if err := os.WriteFile(path, tc.old, 0o666); err != nil {
					t.Fatal(err)
				}
			}
			rec := &recorder{base: dir}
			if err := write(path, tc.data, tc.perm, rec.sync); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, tc.data) {
				t.Fatalf("content %q (%v), want %q", got, err, tc.data)
			}
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != tc.perm {
				t.Fatalf("mode %v (%v), want %v", fi.Mode().Perm(), err, tc.perm)
			}
			if !slices.Equal(rec.synced, []string{"."}) {
				t.Errorf("synced directories %q, want the file's directory once", rec.synced)
			}
			if tmp := tempFiles(t, dir); len(tmp) != 0 {
				t.Errorf("temporary files left: %q", tmp)
			}
		})
	}
}

// TestWriteErrors checks that each failing step is reported, the directory sync included, and
// that no temporary file is left behind.
func TestWriteErrors(t *testing.T) {
	tests := []struct {
		name string
		// setup prepares dir and returns the path to write.
		setup func(t *testing.T, dir string) string
		// sync replaces the directory sync; nil for the real one.
		sync func(dir string) error
		// wantIs is an error the returned one must match; nil for any.
		wantIs error
		// landed is whether the new content is at the path despite the error (rename done).
		landed bool
	}{
		{
			name:   "directory missing",
			setup:  func(t *testing.T, dir string) string { return filepath.Join(dir, "gone", "f") },
			wantIs: fs.ErrNotExist,
		},
		{
			name: "path is a non-empty directory",
			setup: func(t *testing.T, dir string) string {
				path := filepath.Join(dir, "f")
				if err := os.MkdirAll(filepath.Join(path, "sub"), 0o700); err != nil {
					t.Fatal(err)
				}
				return path
			},
		},
		{
			name:   "directory sync fails",
			setup:  func(t *testing.T, dir string) string { return filepath.Join(dir, "f") },
			sync:   func(string) error { return errInjected },
			wantIs: errInjected,
			landed: true,
		},
		{
			name:  "directory removed before its sync",
			setup: func(t *testing.T, dir string) string { return filepath.Join(dir, "sub", "f") },
			sync: func(dir string) error {
				if err := os.RemoveAll(dir); err != nil {
					return err
				}
				return syncDir(dir)
			},
			wantIs: fs.ErrNotExist,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			if err := os.Mkdir(filepath.Join(base, "sub"), 0o700); err != nil {
				t.Fatal(err)
			}
			path := tc.setup(t, base)
			sync := tc.sync
			if sync == nil {
				sync = syncDir
			}
			err := write(path, []byte("new"), 0o600, sync)
			if err == nil {
				t.Fatal("write succeeded")
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Fatalf("error %v, want one matching %v", err, tc.wantIs)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name %s", err, path)
			}
			got, rerr := os.ReadFile(path)
			if landed := rerr == nil && string(got) == "new"; landed != tc.landed {
				t.Errorf("new content at the path: %v, want %v", landed, tc.landed)
			}
			if _, err := os.Stat(filepath.Dir(path)); err == nil {
				if tmp := tempFiles(t, filepath.Dir(path)); len(tmp) != 0 {
					t.Errorf("temporary files left: %q", tmp)
				}
			}
		})
	}
}

// TestWriteRealSync runs the exported Write, with the real directory sync.
func TestWriteRealSync(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := Write(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(filepath.Join(dir, "gone", "f"), []byte("x"), 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Write into a missing directory: %v, want ErrNotExist", err)
	}
}

func TestMkdirAll(t *testing.T) {
	tests := []struct {
		name     string
		dirs     []string // directories present before, relative to the base
		files    []string // regular files present before
		path     string
		fail     string   // directory whose sync fails
		wantSync []string // directories synced, in order, relative to the base
		wantIs   error    // nil: success
	}{
		{name: "all new", path: "a/b/c", wantSync: []string{".", "a", "a/b"}},
		{name: "parent exists", dirs: []string{"a"}, path: "a/b", wantSync: []string{"a"}},
		{name: "exists", dirs: []string{"a/b"}, path: "a/b", wantSync: nil},
		{name: "not clean", dirs: []string{"a"}, path: "a/./b//c/", wantSync: []string{"a", "a/b"}},
		{name: "file in the way", files: []string{"a"}, path: "a/b", wantIs: syscall.ENOTDIR},
		{name: "path is a file", files: []string{"a"}, path: "a", wantIs: syscall.ENOTDIR},
		{name: "sync fails", path: "a/b/c", fail: "a", wantSync: []string{".", "a"}, wantIs: errInjected},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			for _, d := range tc.dirs {
				if err := os.MkdirAll(filepath.Join(base, d), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			for _, f := range tc.files {
				if err := os.WriteFile(filepath.Join(base, f), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			rec := &recorder{base: base, fail: tc.fail}
			path := base + "/" + tc.path
			err := mkdirAll(path, 0o700, rec.sync)
			if tc.wantIs != nil {
				if !errors.Is(err, tc.wantIs) {
					t.Fatalf("error %v, want one matching %v", err, tc.wantIs)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(rec.synced, tc.wantSync) {
				t.Errorf("synced %q, want %q", rec.synced, tc.wantSync)
			}
			if tc.wantIs != nil {
				return
			}
			if fi, err := os.Stat(path); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
				t.Fatalf("%s: %v (%v), want a 0700 directory", tc.path, fi, err)
			}
		})
	}
}

// TestMkdirAllParallel creates the same directories from several goroutines, as parallel
// processes do: each must succeed even when another creates a directory first.
func TestMkdirAllParallel(t *testing.T) {
	base := t.TempDir()
	path := filepath.Join(base, "a", "b", "c")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := MkdirAll(path, 0o700); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if fi, err := os.Stat(path); err != nil || !fi.IsDir() {
		t.Fatalf("%s not a directory: %v", path, err)
	}
}

func TestSyncDir(t *testing.T) {
	dir := t.TempDir()
	if err := syncDir(dir); err != nil {
		t.Fatal(err)
	}
	if err := syncDir(filepath.Join(dir, "gone")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("syncDir of a missing directory: %v, want ErrNotExist", err)
	}
}

func TestRemove(t *testing.T) {
	tests := []struct {
		name    string
		file    bool   // the file exists before
		dir     bool   // path is a non-empty directory
		fail    string // directory whose sync fails
		synced  []string
		wantErr error
	}{
		{name: "removed and its directory synced", file: true, synced: []string{"d"}},
		{name: "missing file", synced: nil},
		{name: "directory sync fails", file: true, fail: "d", synced: []string{"d"}, wantErr: errInjected},
		{name: "non-empty directory", dir: true, wantErr: syscall.ENOTEMPTY},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			path := filepath.Join(base, "d", "f")
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			if tt.file {
				if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if tt.dir {
				if err := os.MkdirAll(filepath.Join(path, "child"), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			r := &recorder{base: base, fail: tt.fail}
			err := remove(path, r.sync)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("remove: %v, want %v", err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name %s", err, path)
			}
			if !slices.Equal(r.synced, tt.synced) {
				t.Errorf("synced %v, want %v", r.synced, tt.synced)
			}
			if _, err := os.Lstat(path); tt.file && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("file still there: %v", err)
			}
		})
	}
	if err := Remove(filepath.Join(t.TempDir(), "gone")); err != nil {
		t.Fatalf("Remove of a missing file: %v", err)
	}
}

func TestReadRegular(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("1234"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(file, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		limit int64
		want  string
		err   error
	}{
		{"file", 4, "1234", nil},
		{"file", 3, "", ErrTooLarge},
		{"gone", 4, "", fs.ErrNotExist},
		{"link", 4, "", ErrNotRegular},
		{"fifo", 4, "", ErrNotRegular}, // returns at once: opened without blocking
		{".", 4, "", ErrNotRegular},
	}
	for _, tt := range tests {
		got, err := ReadRegular(filepath.Join(dir, tt.name), tt.limit)
		if string(got) != tt.want || !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
			t.Errorf("ReadRegular(%s, %d) = %q, %v; want %q, %v", tt.name, tt.limit, got, err, tt.want, tt.err)
		}
	}
}

// TestReadOwned: ReadOwned reads a regular file of this user closed to others as deny asks, and
// refuses, with the sentinel of the reason, a symbolic link, a FIFO (without blocking), a file
// open to others, another user's file (as root), one over the limit, and a missing path.
func TestReadOwned(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	own := write("own", 0o600, "data")
	readable := write("readable", 0o644, "data")
	link := filepath.Join(dir, "link")
	if err := os.Symlink(own, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		deny os.FileMode
		want error // nil: read
	}{
		{"own 0600, no one else may read", own, 0o077, nil},
		{"0644, no one else may write", readable, 0o022, nil},
		{"0644, no one else may read", readable, 0o077, ErrOpenToOthers},
		{"symbolic link", link, 0o077, ErrNotRegular},
		{"FIFO", fifo, 0o077, ErrNotRegular},
		{"over the limit", write("large", 0o600, "0123456789"), 0o077, ErrTooLarge},
		{"missing", filepath.Join(dir, "missing"), 0o077, fs.ErrNotExist},
	}
	if os.Geteuid() == 0 {
		other := write("other", 0o600, "data")
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		tests = append(tests, struct {
			name string
			path string
			deny os.FileMode
			want error
		}{"another user's", other, 0o077, ErrNotOwned})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data, err := ReadOwned(tc.path, tc.deny, 8)
			if tc.want == nil {
				if err != nil || string(data) != "data" {
					t.Fatalf("ReadOwned = %q, %v", data, err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("ReadOwned: %v, want %v", err, tc.want)
			}
			var refused *RefusedError
			if isRefusal := tc.want == ErrNotRegular || tc.want == ErrNotOwned || tc.want == ErrOpenToOthers; errors.As(err, &refused) != isRefusal {
				t.Fatalf("ReadOwned: %v (%T): a *RefusedError exactly for a refusal of what the file is", err, err)
			}
		})
	}
}

// TestLockDir: LockDir excludes a second holder of the same directory, even in the same process
// (flock locks belong to the open file), until the first releases it; it refuses what is not a
// directory.
func TestLockDir(t *testing.T) {
	dir := t.TempDir()
	release, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(), 1)
	go func() {
		r, err := LockDir(dir)
		if err != nil {
			t.Error(err)
			r = func() {}
		}
		got <- r
	}()
	select {
	case r := <-got:
		r()
		release()
		t.Fatal("a second LockDir returned while the first held the lock")
	case <-time.After(300 * time.Millisecond):
	}
	release()
	(<-got)()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LockDir(file); !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("LockDir of a file: %v, want ENOTDIR", err)
	}
	if _, err := LockDir(filepath.Join(dir, "gone")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LockDir of a missing directory: %v, want ErrNotExist", err)
	}
}
