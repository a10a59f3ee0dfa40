// Package token keeps the attestation tokens the signing plugin obtained, keyed by the digest of
// the image each one is bound to, so that `oras-attest attach` can find the token of an image
// after `notation sign` (DESIGN.md, step 6).
//
// Layout: DIR/<algorithm>/<encoded digest>/<hex SHA-256 of the token>.jwt, mode 0600 in 0700
// directories. A token is written once under its own hash, atomically, so parallel signings of
// the same or of different images never overwrite or tear each other's files, and signing an
// image again with another key keeps both tokens. The store holds no secret (tokens are
// integrity-protected, short-lived claims) but is private to the user all the same.
//
// A token is durable once Put returns: the file, its name and every directory Put created on the
// way are synced, because the plugin reports success right after Put and notation then pushes a
// signature naming the token. A token lost in a crash would leave a signature nobody can verify.
//
// Nothing is removed but by Prune, which removes the tokens older than a cutoff (`oras-attest
// token prune`) that attach marked published (MarkAttached). The mark records the repositories
// attach published the token to (DIR/<algorithm>/<encoded digest>/<hex>.attached, one
// REGISTRY/REPO a line; an empty mark, as written before, means published to a repository not
// recorded). Once a token is attached in every repository that holds the image, the store's copy
// is no longer needed; a copy of the image elsewhere (promoted to another registry before attach)
// still needs it, and nothing in the store knows of that copy.
package token

import (
	"crypto/sha256"
	_ "crypto/sha512" // go-digest accepts sha512 digests only when the hash is linked in
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
	"oras.land/oras-go/v2/registry"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
	"github.com/attested-kv/attested-kv/internal/safepath"
)

// MaxTokenSize bounds a stored token (MAA tokens are a few KiB).
const MaxTokenSize = 64 << 10

// ErrNotFound means the store has no token for the digest.
var ErrNotFound = errors.New("no attestation token stored for this digest")

// validDigest accepts OCI digests of the registered algorithms (OCI image-spec descriptor.md):
// sha256:<64 hex> or sha512:<128 hex>, lower case, as go-digest validates them.
func validDigest(s string) bool {
	d, err := digest.Parse(s)
	return err == nil && (d.Algorithm() == digest.SHA256 || d.Algorithm() == digest.SHA512)
}

// Store is a token directory.
type Store struct {
	dir string
	// beforeWrite, when set (by tests), runs in Put between making the subject directory and
	// writing the token into it.
	beforeWrite func()
}

// putAttempts bounds how often Put makes its directories again when they vanish before the
// token is written: Prune removes a subject or algorithm directory it finds empty.
const putAttempts = 5

// Entry is one stored token.
type Entry struct {
	// Subject is the image digest the token is stored under.
	Subject string
	// SHA256 is the hex SHA-256 of the token bytes (the value of the signed attribute
	// io.github.attested-kv.token.sha256).
	SHA256 string
	// Raw is the compact JWT.
	Raw string
	// Stored is when the token was written.
	Stored time.Time
	// Path is the file holding it.
	Path string
}

// NewStore returns the store in dir, which is created on the first Put.
func NewStore(dir string) *Store { return &Store{dir: dir} }

// DefaultDir is $XDG_STATE_HOME/attested-kv/tokens, or ~/.local/state/attested-kv/tokens.
func DefaultDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "attested-kv", "tokens"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("token store: %w", err)
	}
	return filepath.Join(home, ".local", "state", "attested-kv", "tokens"), nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// CheckSubject returns an error unless subject is a digest the store keeps tokens under: an OCI
// digest of sha256 or sha512.
func CheckSubject(subject string) error {
	if !validDigest(subject) {
		return fmt.Errorf("token store: %q is not a digest it keeps tokens under: want sha256 or sha512 (sha256:<64 hex> or sha512:<128 hex>)", subject)
	}
	return nil
}

// Prepare creates the store's directory if needed, durably (each new directory's parent synced,
// so that a token Put later survives a crash), and checks that this process can write to it. A
// caller that will store a token only after an expensive or irreversible step calls it first.
func (s *Store) Prepare() error {
	if err := atomicfile.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	if err := unix.Access(s.dir, unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("token store %s: not writable: %w", s.dir, err)
	}
	return s.checkOwner()
}

// checkOwner refuses a store directory that is not this user's own or that others may write to
// (such as a shared path another user created first): whoever can write there can delete the
// tokens of signatures made, or plant others. It also refuses one that another user can redirect
// (safepath.CheckParents: a directory above it or a link on the way that is theirs), since Put
// writes by path after the check: the token of a signature made would be written to a directory
// of theirs.
func (s *Store) checkOwner() error {
	if err := safepath.CheckParents(s.dir); err != nil {
		return fmt.Errorf("token store %w (choose another token_dir)", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(s.dir, &st); err != nil {
		return err
	}
	return s.ownerError(&st)
}

// ownerError is checkOwner's check of st, the store directory's status.
func (s *Store) ownerError(st *unix.Stat_t) error {
	if int(st.Uid) != os.Getuid() {
		return fmt.Errorf("token store %s belongs to uid %d, not to this user (uid %d): choose another token_dir", s.dir, st.Uid, os.Getuid())
	}
	if st.Mode&0o022 != 0 {
		return fmt.Errorf("token store %s is writable by others (mode %#o): chmod go-w it, or choose another token_dir", s.dir, st.Mode&0o777)
	}
	return nil
}

func (s *Store) subjectDir(subject string) (string, error) {
	if err := CheckSubject(subject); err != nil {
		return "", err
	}
	algo, enc, _ := strings.Cut(subject, ":")
	return filepath.Join(s.dir, algo, enc), nil
}

// Put stores raw under subject and returns its entry. Storing the same token again rewrites the
// same file with the same bytes.
// If Prune removes the directories Put made or found before the token is in them, Put makes them
// again.
// When Put returns nil the token is on stable storage: the file is synced, and so is each
// directory whose entries Put changed (the subject directory, and the parent of each directory
// it created, up to and above the store root if that did not exist), so that a crash afterwards
// does not lose it. Directories that already existed are not synced again.
func (s *Store) Put(subject, raw string) (Entry, error) {
	dir, err := s.subjectDir(subject)
	if err != nil {
		return Entry{}, err
	}
	if raw == "" || len(raw) > MaxTokenSize || strings.ContainsAny(raw, " \t\r\n") {
		return Entry{}, fmt.Errorf("token store: refusing to store a token of %d bytes with white space or beyond %d bytes", len(raw), MaxTokenSize)
	}
	sum := sha256.Sum256([]byte(raw))
	h := hex.EncodeToString(sum[:])
	path := filepath.Join(dir, h+".jwt")
	for attempt := 1; ; attempt++ {
		err := atomicfile.MkdirAll(dir, 0o700)
		if err == nil {
			if s.beforeWrite != nil {
				s.beforeWrite()
			}
			err = atomicfile.Write(path, []byte(raw), 0o600)
		}
		if err == nil {
			break
		}
		// A directory that vanished was removed empty by Prune, after MkdirAll found or made
		// it and before the token's file was in it: make it again.
		if !errors.Is(err, fs.ErrNotExist) || attempt == putAttempts {
			return Entry{}, fmt.Errorf("token store: %w", err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Entry{}, fmt.Errorf("token store: %w", err)
	}
	return Entry{Subject: subject, SHA256: h, Raw: raw, Stored: fi.ModTime(), Path: path}, nil
}

// List returns the tokens stored for subject, newest first. It returns ErrNotFound if there are
// none. A file whose content does not hash to its name is skipped: it was not written by Put.
func (s *Store) List(subject string) ([]Entry, error) {
	dir, err := s.subjectDir(subject)
	if err != nil {
		return nil, err
	}
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s in %s", ErrNotFound, subject, s.dir)
	}
	if err == nil {
		err = s.checkOwner()
	}
	if err != nil {
		return nil, fmt.Errorf("token store: %w", err)
	}
	var out []Entry
	for _, de := range des {
		name := de.Name()
		h, ok := strings.CutSuffix(name, ".jwt")
		if !ok || !de.Type().IsRegular() || len(h) != 64 {
			continue
		}
		e, err := s.read(subject, filepath.Join(dir, name), h)
		if err != nil {
			continue
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s in %s", ErrNotFound, subject, s.dir)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Stored.After(out[j].Stored) })
	return out, nil
}

// attachedSuffix names, after a token's hex SHA-256, the mark MarkAttached leaves next to it.
const attachedSuffix = ".attached"

// MaxAttachedRepositories bounds the repositories a mark records: past it, the ones recorded
// first are dropped.
const MaxAttachedRepositories = 32

// maxRepositoryName bounds a repository name in a mark: a registry host and a repository path,
// each of at most 255 bytes in practice (distribution's reference grammar bounds the path).
const maxRepositoryName = 512

// maxMarkSize bounds the part of a mark file that is read.
const maxMarkSize = MaxAttachedRepositories * (maxRepositoryName + 1)

// MarkAttached records that attach published the token of subject whose SHA-256 is sha256Hex to
// repository (REGISTRY/REPO, as oras-go parses it): the mark <hex>.attached beside the token,
// one repository a line, in the order they were first recorded, each once, the
// MaxAttachedRepositories last. Prune removes a marked token once old without being asked to
// remove unpublished tokens too. The mark says where the token was published, not where it is
// still needed: a copy of the image in another repository needs the token attached there too
// (or the image copied with its referrers). The mark is replaced atomically and durably, under
// an exclusive lock (flock) of the subject's directory, so that two attaches of one token to
// two repositories at once both stay recorded. A token the store does not hold is an
// ErrNotFound error. Losing a mark only makes Prune keep its token.
func (s *Store) MarkAttached(subject, sha256Hex, repository string) error {
	if !ValidRepository(repository) {
		return fmt.Errorf("token store: %.100q is not a repository name REGISTRY/REPO", repository)
	}
	e, err := s.Get(subject, sha256Hex)
	if err != nil {
		return err
	}
	dir := filepath.Dir(e.Path)
	unlock, err := atomicfile.LockDir(dir)
	if err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	defer unlock()
	path := filepath.Join(dir, e.SHA256+attachedSuffix)
	var repos []string
	b, err := readMark(path)
	switch {
	case err == nil:
		repos = parseMark(b)
		if slices.ContainsFunc(repos, func(r string) bool { return sameRepository(r, repository) }) {
			return nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("token store: %w", err)
	}
	repos = append(repos, repository)
	if len(repos) > MaxAttachedRepositories {
		repos = repos[len(repos)-MaxAttachedRepositories:]
	}
	if err := atomicfile.Write(path, []byte(strings.Join(repos, "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	return nil
}

// Attached reports whether attach marked the token of subject whose SHA-256 is sha256Hex
// published (MarkAttached), and the repositories the mark records: none for a mark written
// before marks recorded them (an empty file), which means published, repository unknown.
func (s *Store) Attached(subject, sha256Hex string) (bool, []string, error) {
	e, err := s.Get(subject, sha256Hex)
	if err != nil {
		return false, nil, err
	}
	b, err := readMark(filepath.Join(filepath.Dir(e.Path), e.SHA256+attachedSuffix))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil, nil
	case err != nil:
		return false, nil, fmt.Errorf("token store: %w", err)
	}
	return true, parseMark(b), nil
}

// readMark reads the mark at path (at most maxMarkSize bytes), which must be a regular file
// (a symbolic link is not followed).
func readMark(path string) ([]byte, error) {
	return atomicfile.ReadRegular(path, maxMarkSize)
}

// parseMark returns the repositories of the mark b, in order, each once; a line that is not a
// repository name is ignored.
func parseMark(b []byte) []string {
	var repos []string
	for _, line := range strings.Split(string(b), "\n") {
		if ValidRepository(line) && !slices.Contains(repos, line) {
			repos = append(repos, line)
		}
	}
	return repos
}

// ValidRepository reports whether name is a repository REGISTRY/REPO as attach records it in a
// mark: as oras-go parses and prints it, without a tag or digest.
func ValidRepository(name string) bool {
	if name == "" || len(name) > maxRepositoryName {
		return false
	}
	ref, err := registry.ParseReference(name)
	return err == nil && ref.Reference == "" && ref.Registry+"/"+ref.Repository == name
}

// Get returns the token stored for subject whose SHA-256 is sha256Hex.
func (s *Store) Get(subject, sha256Hex string) (Entry, error) {
	dir, err := s.subjectDir(subject)
	if err != nil {
		return Entry{}, err
	}
	if len(sha256Hex) != 64 || strings.Trim(strings.ToLower(sha256Hex), "0123456789abcdef") != "" {
		return Entry{}, fmt.Errorf("token store: %q is not a hex SHA-256", sha256Hex)
	}
	h := strings.ToLower(sha256Hex)
	e, err := s.read(subject, filepath.Join(dir, h+".jwt"), h)
	if errors.Is(err, fs.ErrNotExist) {
		return Entry{}, fmt.Errorf("%w: %s with token sha256 %s", ErrNotFound, subject, h)
	}
	return e, err
}

func (s *Store) read(subject, path, h string) (Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return Entry{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Entry{}, err
	}
	if fi.Size() > MaxTokenSize {
		return Entry{}, fmt.Errorf("token store: %s is larger than %d bytes", path, MaxTokenSize)
	}
	b := make([]byte, fi.Size())
	if _, err := f.ReadAt(b, 0); err != nil && fi.Size() > 0 {
		return Entry{}, err
	}
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != h {
		return Entry{}, fmt.Errorf("token store: %s does not hash to its name", path)
	}
	return Entry{Subject: subject, SHA256: h, Raw: string(b), Stored: fi.ModTime(), Path: path}, nil
}
