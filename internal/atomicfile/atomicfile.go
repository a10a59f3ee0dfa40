// Package atomicfile replaces and removes files and creates directories so that a reader sees the old content
// or the new, never a torn write, and so that an update is durable once the call returns: a crash
// or power loss afterwards does not undo it. A crash during a call loses at most that update.
//
// Durability rests on fsync of the file and of the directories whose entries changed, as POSIX
// file systems (Linux, macOS) provide it; the project ships for Linux only.
package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Write writes data to path through a temporary file in the same directory and a rename, so that
// a reader never sees a partial file and a crash never leaves one behind. It syncs the file before
// the rename and the directory after it, so that when Write returns nil the new content and its
// name are on stable storage. Any failure is returned, including that of the final directory sync;
// path may then hold the new content already, but without the guarantee.
func Write(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, syncDir)
}

// write is Write with the directory sync passed in, so that tests can observe and fail it.
func write(path string, data []byte, perm os.FileMode, sync func(dir string) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: create temporary file: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := sync(dir); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// MkdirAll creates the directory path and any missing parents, like os.MkdirAll, and makes each
// new directory durable by syncing its parent after creating it, from the top down. Directories
// that already exist are left alone and not synced: whoever created them made them durable.
// When MkdirAll returns nil, path exists and, on a crash afterwards, still exists.
func MkdirAll(path string, perm os.FileMode) error {
	return mkdirAll(path, perm, syncDir)
}

// mkdirAll is MkdirAll with the directory sync passed in, so that tests can observe and fail it.
func mkdirAll(path string, perm os.FileMode, sync func(dir string) error) error {
	path = filepath.Clean(path) // "a/b/" would otherwise sync "a/b" as its own parent
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil:
		return &fs.PathError{Op: "mkdir", Path: path, Err: syscall.ENOTDIR}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	parent := filepath.Dir(path)
	if parent != path {
		if err := mkdirAll(parent, perm, sync); err != nil {
			return err
		}
	}
	if err := os.Mkdir(path, perm); err != nil {
		if fi, lerr := os.Lstat(path); lerr != nil || !fi.IsDir() {
			return err
		}
		// Another process created path since the Stat above; it may not have synced the
		// parent yet, so sync it here as well.
	}
	if err := sync(parent); err != nil {
		return fmt.Errorf("mkdir %s: %w", path, err)
	}
	return nil
}

// ErrNotRegular is the error of ReadRegular for a path that holds something other than a regular
// file: a symbolic link, a FIFO, a device or a directory.
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is the error of ReadRegular for a file larger than its limit.
var ErrTooLarge = errors.New("file too large")

// ReadRegular reads the regular file at path, at most limit bytes: a larger file is an error. It
// opens without following a symbolic link and without blocking (a FIFO would otherwise block the
// open until a writer came), and checks the opened file itself, so nothing can swap the path
// between the check and the read. Anything but a regular file is an error wrapping ErrNotRegular,
// a larger file one wrapping ErrTooLarge, a missing path one wrapping fs.ErrNotExist.
func ReadRegular(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s: %w: a symbolic link", path, ErrNotRegular)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadOpened(f, limit)
}

// ErrNotOwned and ErrOpenToOthers are ReadOwned's refusals of a regular file: one that another
// user owns, one whose mode lets others in.
var (
	ErrNotOwned     = errors.New("not this user's file")
	ErrOpenToOthers = errors.New("open to other users")
)

// RefusedError is ReadOwned's refusal of a file for what it is. Err is ErrNotRegular,
// ErrNotOwned or ErrOpenToOthers; Reason says why in words ("is a symbolic link, not the file
// itself", "belongs to uid 65534, not to this user (uid 0)", ...), for the caller to name the
// file; Owner and Mode are the file's, when it was opened.
type RefusedError struct {
	Path   string
	Err    error
	Reason string
	Owner  int
	Mode   fs.FileMode
}

// Error returns the path and the reason.
func (e *RefusedError) Error() string { return e.Path + " " + e.Reason }

// Unwrap returns Err.
func (e *RefusedError) Unwrap() error { return e.Err }

// ReadOwned reads the file at path, at most limit bytes, if it is a regular file of this user (the
// effective uid) whose mode has none of the bits of deny (0o022: no one else may write it; 0o077:
// no one else may read or write it), as ReadRegular opens and checks it: without following a
// symbolic link or blocking, checking the file opened. A file refused for what it is is a
// *RefusedError, a larger file an error wrapping ErrTooLarge, a missing path one wrapping
// fs.ErrNotExist.
func ReadOwned(path string, deny fs.FileMode, limit int64) ([]byte, error) {
	refuse := func(err error, reason string, owner int, mode fs.FileMode) ([]byte, error) {
		return nil, &RefusedError{Path: path, Err: err, Reason: reason, Owner: owner, Mode: mode}
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return refuse(ErrNotRegular, "is a symbolic link, not the file itself", -1, fs.ModeSymlink)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.Mode().IsRegular() || !ok {
		return refuse(ErrNotRegular, fmt.Sprintf("is not a regular file (mode %s)", fi.Mode()), -1, fi.Mode())
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return refuse(ErrNotOwned, fmt.Sprintf("belongs to uid %d, not to this user (uid %d)", st.Uid, uid), int(st.Uid), fi.Mode())
	}
	if open := fi.Mode().Perm() & deny; open != 0 {
		rule := "no one but the user may write it"
		if deny&0o044 != 0 {
			rule = "it must be 0600"
		}
		return refuse(ErrOpenToOthers, fmt.Sprintf("has mode %#o, which lets others %s it; %s", fi.Mode().Perm(), access(open), rule), int(st.Uid), fi.Mode())
	}
	return ReadOpened(f, limit)
}

// access names what the permission bits perm (of group and others) allow.
func access(perm fs.FileMode) string {
	switch r, w := perm&0o044 != 0, perm&0o022 != 0; {
	case r && w:
		return "read and write"
	case w:
		return "write"
	case r:
		return "read"
	}
	return "execute"
}

// ReadOpened reads the opened file f, at most limit bytes, if it is a regular file: what
// ReadRegular does once it has opened the path, for callers that open it themselves (relative to
// a directory, or checking its owner first). It does not close f. Errors are ReadRegular's, named
// by f.Name().
func ReadOpened(f *os.File, limit int64) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: mode %s", f.Name(), ErrNotRegular, fi.Mode())
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: %w: more than %d bytes", f.Name(), ErrTooLarge, limit)
	}
	return data, nil
}

// Remove removes the file at path and syncs its directory, so that when Remove returns nil the
// file is gone for good: a crash afterwards does not bring it back. A path that does not exist is
// not an error.
func Remove(path string) error {
	return remove(path, syncDir)
}

// remove is Remove with the directory sync passed in, so that tests can observe and fail it.
func remove(path string, sync func(dir string) error) error {
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if err := sync(filepath.Dir(path)); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// syncDir fsyncs the directory dir, which makes the entries created, renamed or removed in it
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// LockDir takes an exclusive lock (flock) of the directory dir, waiting for it, and returns its
// release: writers that read a file, change it and write it back take it around the whole, so that
// two of them at once do not lose one's change. It serialises only the writers that take it.
func LockDir(dir string) (release func(), err error) {
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	for {
		err = syscall.Flock(fd, syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		syscall.Close(fd)
		return nil, &fs.PathError{Op: "flock", Path: dir, Err: err}
	}
	return func() { syscall.Close(fd) }, nil // closing the last descriptor releases the lock
}
