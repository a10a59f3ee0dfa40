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

// ResolveStateDir returns the one name of the state directory dir: absolute, with the symbolic
// links of its longest existing part resolved, so that `up --state LINK` and `down --state
// TARGET` find the same stack (the pid check compares the directory in the stack's command line),
// also when the directory is yet to be created below a symbolic link (a home directory reached
// through one).
func ResolveStateDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	existing, rest := abs, ""
	for {
		real, err := filepath.EvalSymlinks(existing)
		if err == nil {
			return filepath.Join(real, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("state directory %s: %w", abs, err)
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			return abs, nil
		}
		rest = filepath.Join(filepath.Base(existing), rest)
		existing = parent
	}
}

// prepareStateDir creates the state directory if needed (0700) and checks that it is the user's
// own and that no one else can write to it: it holds private keys, the plugin notation runs and
// the trust store, so a directory another user owns (such as one they created first under /tmp)
// or may write to is refused. An existing directory's mode is never changed: it may be shared on
// purpose.
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
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("state directory %s is writable by others (mode %#o): choose a directory of your own, e.g. the default", dir, fi.Mode().Perm())
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
