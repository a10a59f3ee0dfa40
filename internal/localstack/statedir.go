package localstack

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// maxSocketPath is the longest path a Unix socket can be bound to on Linux (sun_path is 108
// bytes, one of them the terminating NUL).
const maxSocketPath = 107

// Bounds of the small files the stack's commands read from the state directory.
const (
	maxPIDFile   = 64
	maxStateFile = 1 << 20
)

// UnsafeStateError reports a state directory, a file in it or the process its pid file names that
// is not the user's own, or that others may change. The stack's commands refuse it: trusting it
// would let another user choose what `local env` exports (the plugin directory notation runs
// plugins from, the CA bundle) or which process `local down` signals.
type UnsafeStateError struct {
	// What is refused: "state directory", "state file" or "pid file" (also for the process it
	// names).
	What string
	// Path is its path.
	Path string
	// Reason is the check that failed, e.g. "belongs to uid 65534, not to this user (uid 1000)".
	Reason string
}

// Error implements error.
func (e *UnsafeStateError) Error() string { return e.What + " " + e.Path + " " + e.Reason }

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

// prepareStateDir creates the state directory if needed (0700) and checks it as checkStateDir
// does, and that its control socket's path is not too long. An existing directory's mode is never
// changed: it may be shared on purpose.
func prepareStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if err := checkStateDir(dir); err != nil {
		return err
	}
	if n := len(paths{dir}.control()); n > maxSocketPath {
		return fmt.Errorf("state directory %s is too long: its control socket path would be %d bytes, and a Unix socket path is at most %d; choose a shorter --state", dir, n, maxSocketPath)
	}
	return nil
}

// checkStateDir checks, without changing anything, that the state directory is the user's own
// and that no one else can write to it: it holds private keys, the plugin notation runs and the
// trust store, and the state that `local env` exports, so a directory another user owns (such as
// one they created first under /tmp) or may write to is refused with an *UnsafeStateError, as is
// a symbolic link. A missing directory is an error wrapping fs.ErrNotExist.
func checkStateDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return &UnsafeStateError{What: "state directory", Path: dir, Reason: "is a symbolic link: give the directory itself"}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok {
		return fmt.Errorf("state directory %s is not a directory", dir)
	}
	if int(st.Uid) != os.Getuid() {
		return &UnsafeStateError{What: "state directory", Path: dir, Reason: fmt.Sprintf("belongs to uid %d, not to this user (uid %d): another user controls what it holds; choose another --state", st.Uid, os.Getuid())}
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return &UnsafeStateError{What: "state directory", Path: dir, Reason: fmt.Sprintf("is writable by others (mode %#o): another user could change what it holds; choose a directory of your own, e.g. the default, or take others' write access away (chmod go-w)", fi.Mode().Perm())}
	}
	return nil
}

// readOwnFile reads the file at path, at most limit bytes, if it is a regular file of this user
// whose mode has none of the bits of deny (0o022: no one else may write it; 0o077: no one else
// may read or write it). It opens without following a symbolic link and without blocking, and
// checks the opened file, so nothing can swap the path between the check and the read. A file
// refused for what it is is an *UnsafeStateError naming it as what; a missing one an error
// wrapping fs.ErrNotExist.
func readOwnFile(path, what string, deny fs.FileMode, limit int64) ([]byte, error) {
	refuse := func(reason string) ([]byte, error) {
		return nil, &UnsafeStateError{What: what, Path: path, Reason: reason}
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return refuse("is a symbolic link, not the file itself")
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
		return refuse(fmt.Sprintf("is not a regular file (mode %s)", fi.Mode()))
	}
	if int(st.Uid) != os.Getuid() {
		return refuse(fmt.Sprintf("belongs to uid %d, not to this user (uid %d)", st.Uid, os.Getuid()))
	}
	if open := fi.Mode().Perm() & deny; open != 0 {
		rule := "no one but the user may write it"
		if deny&0o044 != 0 {
			rule = "it must be 0600"
		}
		return refuse(fmt.Sprintf("has mode %#o, which lets others %s it; %s", fi.Mode().Perm(), access(open), rule))
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s %s: more than %d bytes", what, path, limit)
	}
	return data, nil
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
