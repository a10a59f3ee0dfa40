package localstack

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
	"github.com/attested-kv/attested-kv/internal/safepath"
)

// maxSocketPath is the longest path a Unix socket can be bound to on Linux (sun_path is 108
// bytes, one of them the terminating NUL).
const maxSocketPath = 107

// MarkerName is the file that marks a directory as a local stack's state directory. Up writes it
// into the directory it creates, or finds empty, before anything else; the stack's commands
// write, truncate or remove nothing in a directory without it (but for one an earlier version's
// stack left, which up marks).
const MarkerName = ".attested-kv-local-stack"

// markerText is the content of the marker file, for whoever finds it.
const markerText = "This directory is the state directory of an attested-kv local stack (attest-bootstrap local).\n" +
	"It holds private keys: keep it private. Removing the whole directory starts afresh, with a new signing key.\n"

// Bounds of the small files the stack's commands read from the state directory.
const (
	maxMarkerFile = 4 << 10
	maxPIDFile    = 64
	maxStateFile  = 1 << 20
)

// ErrNotStackDir reports a state directory that is not a local stack's: it has no marker
// (MarkerName) and does not hold an earlier version's stack either. The stack's commands write,
// truncate or remove nothing in it.
var ErrNotStackDir = errors.New("not a local stack's state directory")

// UnsafeStateError reports a state directory, a file in it or the process its pid file names that
// is not the user's own, or that others may change. The stack's commands refuse it: trusting it
// would let another user choose what `local env` exports (the plugin directory notation runs
// plugins from, the CA bundle) or which process `local down` signals.
type UnsafeStateError struct {
	// What is refused: "state directory", "state file", "pid file" (also for the process it
	// names) or "marker file".
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
	// Durably: each directory made has its parent synced, or the keys and tokens kept in it,
	// each synced when written, could vanish with it in a power loss.
	if err := atomicfile.MkdirAll(dir, 0o700); err != nil {
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
// a symbolic link, and so is one under a directory another user can change (safepath). A missing
// directory is an error wrapping fs.ErrNotExist.
func checkStateDir(dir string) error {
	// The directories above it too: whoever may rename an entry above it can put a directory
	// of their own at its path after this check, with a plugin of theirs for notation to run.
	var unsafe *safepath.UnsafeError
	if err := safepath.CheckParents(dir); errors.As(err, &unsafe) {
		return &UnsafeStateError{What: "state directory", Path: dir, Reason: fmt.Sprintf("can be redirected by another user: %s %s; choose a directory under directories only you (or root) can change, e.g. the default", unsafe.Component, unsafe.Reason)}
	} else if err != nil { // a missing component is not an error of CheckParents
		return fmt.Errorf("state directory: %w", err)
	}
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
// whose mode has none of the bits of deny (atomicfile.ReadOwned). A file refused for what it is
// is an *UnsafeStateError naming it as what; a missing one an error wrapping fs.ErrNotExist.
func readOwnFile(path, what string, deny fs.FileMode, limit int64) ([]byte, error) {
	data, err := atomicfile.ReadOwned(path, deny, limit)
	var refused *atomicfile.RefusedError
	switch {
	case errors.As(err, &refused):
		return nil, &UnsafeStateError{What: what, Path: path, Reason: refused.Reason}
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return data, err
}

// dirKind is what a state directory holds, as the stack's commands see it.
type dirKind int

const (
	dirMissing dirKind = iota // no such directory
	dirEmpty                  // empty: up may make it the stack's
	dirMarked                 // the stack's: it holds the marker
	dirEarlier                // the stack's, from a version before the marker (earlierStack)
	dirForeign                // anything else: nothing is written, truncated or removed in it
)

// inspectStateDir checks the state directory as checkStateDir does and tells what it holds,
// without changing anything.
func inspectStateDir(dir string) (dirKind, error) {
	if err := checkStateDir(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return dirMissing, nil
		}
		return dirForeign, err
	}
	// The marker is read first: the directory is listed only without it (every command checks
	// the directory, the stack's start-up polls several times).
	_, err := readOwnFile(paths{dir}.marker(), "marker file", 0o022, maxMarkerFile)
	switch {
	case err == nil:
		return dirMarked, nil
	case !errors.Is(err, fs.ErrNotExist):
		return dirForeign, err
	}
	f, err := os.Open(dir)
	if err != nil {
		return dirForeign, fmt.Errorf("state directory: %w", err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return dirForeign, fmt.Errorf("state directory %s: %w", dir, err)
	}
	switch {
	case len(names) == 0:
		return dirEmpty, nil
	case earlierStack(dir, names):
		return dirEarlier, nil
	}
	return dirForeign, nil
}

// earlierStack reports whether the directory dir, whose entries are names, is the state directory
// of a stack of a version before the marker: it holds nothing but the files the stack makes, and
// the state the stack published (state.json, or last-state.json once it stopped) reads as its
// own, or, for a stack stopped before last-state.json existed or whose up failed, a file only the
// stack writes is there as the user's own: the emulated vault's state (0600) or the stack's TLS
// bundle.
func earlierStack(dir string, names []string) bool {
	for _, name := range names {
		if !isStackEntry(name) {
			return false
		}
	}
	p := paths{dir}
	for _, path := range []string{p.state(), p.lastState()} {
		if _, err := readStateFile(path); err == nil {
			return true
		}
	}
	if _, err := readOwnFile(p.vaultState(), "vault state", 0o077, maxEarlierArtefact); err == nil {
		return true
	}
	if b, err := readOwnFile(p.caBundle(), "TLS bundle", 0o022, maxEarlierArtefact); err == nil && bytes.Contains(b, []byte("-----BEGIN CERTIFICATE-----")) {
		return true
	}
	return false
}

// maxEarlierArtefact bounds the reads of earlierStack.
const maxEarlierArtefact = 4 << 20

// adoptHint tells how to let local up take a directory an earlier stack left without the marker.
func adoptHint(dir string) string {
	return fmt.Sprintf("if it is a local stack's state directory of an earlier version, create %s in it to keep its signing key and images", filepath.Join(dir, MarkerName))
}

// isStackEntry reports whether name is the name of an entry the stack makes in its state
// directory, or of the temporary file atomicfile.Write leaves of one when interrupted.
func isStackEntry(name string) bool {
	if n, _, ok := strings.Cut(name, ".tmp-"); ok && strings.HasPrefix(n, ".") {
		name = n[1:]
	}
	switch name {
	case MarkerName, "state.json", "last-state.json", "stack.pid", "up.lock", "serve.lock", "stack.log",
		"control.sock", "plugin.log", "os-release",
		"tls", "vtpm", "maa", "tpm", "registry", "keyvault", "notation", "tokens":
		return true
	}
	return false
}

// stackDir checks, without changing anything, that dir is the state directory of a stack that
// the user may trust: checkStateDir's checks, and the marker (or an earlier version's stack). A
// missing or empty directory is ErrNotRunning; any other directory without the marker an error
// wrapping ErrNotStackDir.
func stackDir(dir string) error {
	kind, err := inspectStateDir(dir)
	if err != nil {
		return err
	}
	switch kind {
	case dirMissing, dirEmpty:
		return ErrNotRunning
	case dirForeign:
		return fmt.Errorf("%w: %s has no %s, the file local up leaves in the state directory it makes; give the --state local up ran with (%s)", ErrNotStackDir, dir, MarkerName, adoptHint(dir))
	}
	return nil
}

// claimStateDir makes dir the stack's state directory, for up and serve: it creates it if needed
// and checks it (prepareStateDir), then writes the marker into it if it is empty, or if an earlier
// version's stack left it; a directory that holds anything else is refused with an error wrapping
// ErrNotStackDir, and nothing in it changes.
func claimStateDir(dir string) error {
	if err := prepareStateDir(dir); err != nil {
		return err
	}
	kind, err := inspectStateDir(dir)
	if err != nil {
		return err
	}
	switch kind {
	case dirMarked:
		return nil
	case dirForeign:
		return fmt.Errorf("%w: %s is not empty and has no %s, the file local up leaves in the state directory it makes; local up takes an empty or new directory only: choose one (%s)", ErrNotStackDir, dir, MarkerName, adoptHint(dir))
	}
	// Empty, or an earlier stack's (dirMissing cannot be: prepareStateDir made it). Another up may
	// write the marker at the same time: whichever comes first makes it.
	f, err := os.OpenFile(paths{dir}.marker(), os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state directory marker: %w", err)
	}
	if _, err := f.WriteString(markerText); err != nil {
		f.Close()
		return fmt.Errorf("state directory marker: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("state directory marker: %w", err)
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
