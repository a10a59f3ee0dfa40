package token

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
)

// Pruned is a token Prune removed, or would remove on a dry run.
type Pruned struct {
	// Subject is the image digest the token was stored under.
	Subject string `json:"subject"`
	// SHA256 is the hex SHA-256 of the token, the name of its file without .jwt.
	SHA256 string `json:"sha256"`
	// Modified is the file's modification time: when Put last wrote it.
	Modified time.Time `json:"modified"`
	// Path is the file.
	Path string `json:"path"`
	// Attached is whether attach marked the token published (MarkAttached). A token without a
	// mark is removed only with PruneOptions.Unattached.
	Attached bool `json:"attached"`
	// Repositories are the repositories (REGISTRY/REPO) the mark records attach published the
	// token to: only those, not copies of the image elsewhere. Empty (never nil) for a token
	// never attached, and for a mark written before marks recorded them (Attached: published,
	// repository unknown).
	Repositories []string `json:"repositories"`
}

// Skipped is an entry of the store that Prune left alone because Put does not write it: a name
// outside the store's layout, a symbolic link (never followed), or a file of another type.
type Skipped struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// PruneResult is what Prune did.
type PruneResult struct {
	// Removed are the tokens removed (on a dry run: that would be removed), in the order of
	// the layout: algorithm, subject, token name.
	Removed []Pruned `json:"removed"`
	// Kept counts the tokens not older than the cutoff.
	Kept int `json:"kept"`
	// Skipped are the entries that are not the store's, left as they are.
	Skipped []Skipped `json:"skipped"`
	// Temporary counts the temporary files of Puts that never finished (a crash between writing
	// and renaming), older than the cutoff, removed (on a dry run: that would be removed). Those
	// of a Put still running are newer, and left alone without a word.
	Temporary int `json:"temporary"`
	// Unattached counts the tokens older than the cutoff that were kept because no attach marked
	// them published (MarkAttached), Prune being asked to keep those.
	Unattached int `json:"unattached"`
	// NotEverywhere counts the tokens older than the cutoff that attach published, kept because
	// their mark does not record every repository of PruneOptions.Repositories.
	NotEverywhere int `json:"notAttachedEverywhere"`
	// Unconfirmed are the tokens that would have been removed, kept because
	// PruneOptions.Confirm refused them, with its reason.
	Unconfirmed []Unconfirmed `json:"unconfirmed"`
}

// Empty reports whether the result holds nothing: no token, leftover or entry was read.
func (r PruneResult) Empty() bool {
	return len(r.Removed) == 0 && r.Kept == 0 && len(r.Skipped) == 0 && r.Temporary == 0 &&
		r.Unattached == 0 && r.NotEverywhere == 0 && len(r.Unconfirmed) == 0
}

// Unconfirmed is a token Prune kept because PruneOptions.Confirm refused its removal.
type Unconfirmed struct {
	Pruned
	// Reason is Confirm's error.
	Reason string `json:"reason"`
}

// PruneOptions are Prune's choices besides the cutoff.
type PruneOptions struct {
	// DryRun removes nothing and reports what would be removed.
	DryRun bool
	// Unattached removes, too, the tokens no attach marked published: their signatures can then
	// never be verified. By default they are kept, and counted.
	Unattached bool
	// Repositories, when set, keeps each old token attach published unless its mark records
	// every one of these repositories (REGISTRY/REPO, as attach names them): a token a promotion
	// target still needs is kept until it is attached there. A mark written before marks recorded
	// repositories records none. Unmarked tokens removed with Unattached are not judged by it.
	Repositories []string
	// Confirm, when set, is asked about each token Prune is about to remove (on a dry run too),
	// once every other rule lets it go: an error keeps the token, and is reported in Unconfirmed.
	// oras-attest's --check-registry asks the registries whether they still hold the token.
	Confirm func(Pruned) error
}

// Prune removes the tokens whose file was last modified before olderThan and that attach marked
// published (MarkAttached), with their marks, then the subject and algorithm directories left
// empty; the store's own directory stays. Older tokens without a mark are kept and counted in
// Unattached, unless opts.Unattached. With opts.DryRun it removes nothing and reports what it
// would remove. A store directory that does not exist holds nothing to prune. Each token removed
// is reported with the repositories its mark records: a mark means "published to these
// repositories", and Prune cannot know of other repositories the image was copied to without its
// referrers, where the token is still needed: attach it there first.
//
// It removes only what Put and MarkAttached write: a regular file named <hex SHA-256>.jwt, and
// its mark <hex SHA-256>.attached, in a directory <algorithm>/<encoded digest> of a digest the
// store keeps tokens under; a mark whose token is gone, once older than the cutoff; and the
// temporary file (".<hex SHA-256>.jwt.tmp-*", ".<hex SHA-256>.attached.tmp-*") a write
// interrupted by a crash left there, once older than the cutoff (counted in Temporary; a newer
// one may be a running write's, and is left unreported). It opens each directory below the
// store's without following a symbolic link and removes entries relative to the open directory,
// so that a link, placed anywhere, never leads it out of the store; every other entry is
// reported in Skipped and left alone. Like List, it refuses a store directory that is not this
// user's own or that others may write to.
//
// A Put running at the same time does not lose its token. Prune removes a directory with rmdir,
// which fails once the directory holds a file (Put's temporary file comes first), and only if it
// had not changed for a minute (dirGrace), so never one that Put has just made; and Put makes its
// directories again if they vanish before its file is in them. One race remains: a Put storing
// again a token whose file is older than olderThan (the same bytes under the same name) loses it
// if it renames its file into place between Prune's check of the old file and the removal. The
// plugin stores only tokens MAA has just issued, so it never stores an old one again.
//
// An error on one entry does not stop the others: the result holds what was done, and the
// error names each entry that failed.
func (s *Store) Prune(olderThan time.Time, opts PruneOptions) (PruneResult, error) {
	res := PruneResult{Removed: []Pruned{}, Skipped: []Skipped{}, Unconfirmed: []Unconfirmed{}}
	// The store's directory itself is opened as the other methods find it, through a link.
	fd, err := unix.Open(s.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("token store: %w", &fs.PathError{Op: "open", Path: s.dir, Err: err})
	}
	root := os.NewFile(uintptr(fd), s.dir)
	defer root.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return res, fmt.Errorf("token store: %w", &fs.PathError{Op: "stat", Path: s.dir, Err: err})
	}
	// The directory checked is the one opened, whatever its path names by now.
	if err := s.ownerError(&st); err != nil {
		return res, err
	}
	for _, r := range opts.Repositories {
		if !ValidRepository(r) {
			return res, fmt.Errorf("token store: %q is not a repository REGISTRY/REPO", r)
		}
	}
	p := pruner{olderThan: olderThan, changed: time.Now().Add(-dirGrace), dryRun: opts.DryRun, unattached: opts.Unattached, required: opts.Repositories, confirm: opts.Confirm, res: &res}
	p.store(root, s.dir)
	if len(p.errs) > 0 {
		return res, fmt.Errorf("token store: pruning %s: %w", s.dir, errors.Join(p.errs...))
	}
	return res, nil
}

// dirGrace is how long after its last change Prune leaves an empty directory: Put may have made
// it and not written the token into it yet. Put makes a directory again if Prune removes it
// nonetheless (an old directory Put found existing), and the one it makes is then new.
const dirGrace = time.Minute

// pruner is one run of Prune.
type pruner struct {
	olderThan time.Time
	// changed is the time before which a directory must have last changed to be removed.
	changed    time.Time
	dryRun     bool
	unattached bool
	required   []string // PruneOptions.Repositories
	confirm    func(Pruned) error
	res        *PruneResult
	errs       []error
}

func (p *pruner) skip(path, reason string) {
	p.res.Skipped = append(p.res.Skipped, Skipped{Path: path, Reason: reason})
}

// store prunes each algorithm directory of the store's directory root, at path.
func (p *pruner) store(root *os.File, path string) {
	for _, algo := range p.names(root, path) {
		if algo != "sha256" && algo != "sha512" {
			p.skip(filepath.Join(path, algo), "not an algorithm directory of the store (sha256 or sha512)")
			continue
		}
		d, mtime, ok := p.open(root, path, algo)
		if !ok {
			continue
		}
		p.algorithm(d, filepath.Join(path, algo), algo)
		d.Close()
		p.rmdir(root, path, algo, mtime)
	}
}

// algorithm prunes each subject directory of the algorithm directory d, at path.
func (p *pruner) algorithm(d *os.File, path, algo string) {
	for _, enc := range p.names(d, path) {
		subject := algo + ":" + enc
		if !validDigest(subject) {
			p.skip(filepath.Join(path, enc), "not a digest directory of "+algo)
			continue
		}
		sd, mtime, ok := p.open(d, path, enc)
		if !ok {
			continue
		}
		p.subject(sd, filepath.Join(path, enc), subject)
		sd.Close()
		p.rmdir(d, path, enc, mtime)
	}
}

// subject removes the tokens older than the cutoff from the subject directory d, at path.
func (p *pruner) subject(d *os.File, path, subject string) {
	names := p.names(d, path)
	for _, name := range names {
		file := filepath.Join(path, name)
		if isTemporary(name) {
			p.temporary(d, file, name)
			continue
		}
		if h, ok := strings.CutSuffix(name, attachedSuffix); ok && isHexSHA256(h) {
			// A marker goes with its token; one whose token is gone, once old.
			if !slices.Contains(names, h+".jwt") {
				p.removeOld(d, file, name)
			}
			continue
		}
		h, ok := strings.CutSuffix(name, ".jwt")
		if !ok || !isHexSHA256(h) {
			p.skip(file, "not a token file name (<hex sha256>.jwt)")
			continue
		}
		var st unix.Stat_t
		err := unix.Fstatat(int(d.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
		switch {
		case errors.Is(err, unix.ENOENT): // removed since it was listed
			continue
		case err != nil:
			p.errs = append(p.errs, &fs.PathError{Op: "stat", Path: file, Err: err})
			continue
		case st.Mode&unix.S_IFMT != unix.S_IFREG:
			p.skip(file, "not a regular file")
			continue
		}
		mtime := time.Unix(st.Mtim.Unix())
		if !mtime.Before(p.olderThan) {
			p.res.Kept++
			continue
		}
		marked := slices.Contains(names, h+attachedSuffix)
		if !marked && !p.unattached {
			p.res.Unattached++
			continue
		}
		repos := []string{}
		if marked {
			repos = append(repos, markRepositories(d, h+attachedSuffix)...)
			if !containsAll(repos, p.required) {
				p.res.NotEverywhere++
				continue
			}
		}
		pruned := Pruned{Subject: subject, SHA256: h, Modified: mtime, Path: file, Attached: marked, Repositories: repos}
		if p.confirm != nil {
			if err := p.confirm(pruned); err != nil {
				p.res.Unconfirmed = append(p.res.Unconfirmed, Unconfirmed{Pruned: pruned, Reason: err.Error()})
				continue
			}
		}
		if !p.dryRun {
			err := unix.Unlinkat(int(d.Fd()), name, 0)
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			if err != nil {
				p.errs = append(p.errs, &fs.PathError{Op: "remove", Path: file, Err: err})
				continue
			}
			if marked {
				if err := unix.Unlinkat(int(d.Fd()), h+attachedSuffix, 0); err != nil && !errors.Is(err, unix.ENOENT) {
					p.errs = append(p.errs, &fs.PathError{Op: "remove", Path: filepath.Join(path, h+attachedSuffix), Err: err})
				}
			}
		}
		p.res.Removed = append(p.res.Removed, pruned)
	}
}

// markRepositories returns the repositories recorded in the mark name of the directory d, none
// if it cannot be read (a mark that is not a regular file, never followed if a link, still
// counts as a mark).
func markRepositories(d *os.File, name string) []string {
	fd, err := unix.Openat(int(d.Fd()), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil
	}
	f := os.NewFile(uintptr(fd), filepath.Join(d.Name(), name))
	defer f.Close()
	b, err := atomicfile.ReadOpened(f, maxMarkSize)
	if err != nil {
		return nil
	}
	return parseMark(b)
}

// isTemporary reports whether name is that of a temporary file Put writes a token through, or
// MarkAttached its marker (atomicfile: ".<hex sha256>.jwt.tmp-<random>", ".<hex
// sha256>.attached.tmp-<random>").
func isTemporary(name string) bool {
	rest, ok := strings.CutPrefix(name, ".")
	if !ok {
		return false
	}
	for _, ext := range []string{".jwt.tmp-", attachedSuffix + ".tmp-"} {
		if h, suffix, ok := strings.Cut(rest, ext); ok && isHexSHA256(h) && suffix != "" && !strings.ContainsAny(suffix, "/.") {
			return true
		}
	}
	return false
}

// temporary removes the temporary file name in the directory d, at file, if it is a regular
// file older than the cutoff: what a Put that crashed left. A newer one may be a running Put's.
func (p *pruner) temporary(d *os.File, file, name string) {
	if p.removeOld(d, file, name) {
		p.res.Temporary++
	}
}

// removeOld removes name in the directory d, at file, if it is a regular file older than the
// cutoff (on a dry run, reports that it would), and reports whether it did. Another type of file
// is skipped; a newer one is left unreported.
func (p *pruner) removeOld(d *os.File, file, name string) bool {
	var st unix.Stat_t
	err := unix.Fstatat(int(d.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT): // renamed into place or removed since it was listed
		return false
	case err != nil:
		p.errs = append(p.errs, &fs.PathError{Op: "stat", Path: file, Err: err})
		return false
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		p.skip(file, "not a regular file")
		return false
	case !time.Unix(st.Mtim.Unix()).Before(p.olderThan):
		return false
	}
	if !p.dryRun {
		if err := unix.Unlinkat(int(d.Fd()), name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			p.errs = append(p.errs, &fs.PathError{Op: "remove", Path: file, Err: err})
			return false
		}
	}
	return true
}

// names lists the directory d, at path, sorted.
func (p *pruner) names(d *os.File, path string) []string {
	names, err := d.Readdirnames(-1)
	if err != nil {
		p.errs = append(p.errs, &fs.PathError{Op: "readdir", Path: path, Err: err})
	}
	sort.Strings(names)
	return names
}

// open opens the directory name in the directory d, at path, without following a symbolic link,
// and returns it with the time it last changed, before Prune changes it. It reports false, and
// skips the entry, if it is a link or not a directory.
func (p *pruner) open(d *os.File, path, name string) (*os.File, time.Time, bool) {
	full := filepath.Join(path, name)
	fd, err := unix.Openat(int(d.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case err == nil:
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			p.errs = append(p.errs, &fs.PathError{Op: "stat", Path: full, Err: err})
			return nil, time.Time{}, false
		}
		return os.NewFile(uintptr(fd), full), time.Unix(st.Mtim.Unix()), true
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		p.skip(full, "not a directory: a symbolic link or a file, not followed")
	case errors.Is(err, unix.ENOENT): // removed since it was listed
	default:
		p.errs = append(p.errs, &fs.PathError{Op: "open", Path: full, Err: err})
	}
	return nil, time.Time{}, false
}

// rmdir removes the directory name from the directory d, at path, if it is empty and had not
// changed for dirGrace when open saw its modification time mtime. rmdir fails on a directory
// that holds anything, such as the token or temporary file of a Put that found it.
func (p *pruner) rmdir(d *os.File, path, name string, mtime time.Time) {
	if p.dryRun || !mtime.Before(p.changed) {
		return
	}
	err := unix.Unlinkat(int(d.Fd()), name, unix.AT_REMOVEDIR)
	if err == nil || errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOENT) {
		return
	}
	p.errs = append(p.errs, &fs.PathError{Op: "rmdir", Path: filepath.Join(path, name), Err: err})
}

// isHexSHA256 reports whether h is a SHA-256 in lower-case hex, as Put names token files.
func isHexSHA256(h string) bool {
	return len(h) == 64 && strings.Trim(h, "0123456789abcdef") == ""
}

// containsAll reports whether every repository of want is in have (sameRepository).
func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.ContainsFunc(have, func(h string) bool { return sameRepository(h, w) }) {
			return false
		}
	}
	return true
}

// sameRepository reports whether the repositories REGISTRY/REPO a and b are one: the registry is
// a host name, whose case does not count; the repository's path is compared as it is.
func sameRepository(a, b string) bool {
	ra, pa, _ := strings.Cut(a, "/")
	rb, pb, _ := strings.Cut(b, "/")
	return strings.EqualFold(ra, rb) && pa == pb
}
