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
