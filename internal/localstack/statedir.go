package localstack

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// maxSocketPath is the longest path a Unix socket can be bound to on Linux (sun_path is 108
// bytes, one of them the terminating NUL).
const maxSocketPath = 107

// ResolveStateDir returns the one name of the state directory dir: absolute, and with symbolic
// links resolved when it exists, so that `up --state LINK` and `down --state TARGET` find the same
// stack (the pid check compares the directory in the stack's command line).
func ResolveStateDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return abs, nil
	case err != nil:
		return "", fmt.Errorf("state directory %s: %w", abs, err)
	}
	return real, nil
}

// prepareStateDir creates the state directory if needed and checks that it is the user's own and
// closed to others: it holds private keys, the plugin notation runs and the trust store, so a
// directory another user can write to (such as one they created first under /tmp) is refused,
// and one of the user's own that others may read is closed (0700).
func prepareStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok {
		return fmt.Errorf("state directory %s is not a directory", dir)
	}
	if int(st.Uid) != os.Getuid() {
		return fmt.Errorf("state directory %s belongs to uid %d, not to this user (uid %d): choose another --state", dir, st.Uid, os.Getuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
	}
	if n := len(paths{dir}.control()); n > maxSocketPath {
		return fmt.Errorf("state directory %s is too long: its control socket path would be %d bytes, and a Unix socket path is at most %d; choose a shorter --state", dir, n, maxSocketPath)
	}
	return nil
}

// errLocked is the error of lockFile for a lock another process holds.
var errLocked = errors.New("locked by another process")

// lockFile takes an exclusive lock on path (created if missing), waiting for it if wait is set
// and failing with errLocked otherwise. The lock lasts until the returned file is closed or the
// process ends, so a crashed holder never leaves it taken.
func lockFile(path string, wait bool) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_EX
	if !wait {
		how |= syscall.LOCK_NB
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errLocked
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return f, nil
}
