// Package referrer stores an MAA token as an OCI referrer of the image it is bound to, and finds
// it again (DESIGN.md, "Token referrer").
//
// The referrer is an image manifest v1.1 whose subject is the image, whose artifactType and
// config mediaType are ArtifactType (config blob "{}", as Notation does for its signatures, so
// registries that derive artifactType from the config also index it), with one layer of
// mediaType application/jwt holding the JWT bytes. Its annotations name the issuer, the binding
// and the token's issue time, and (an addition to DESIGN.md's list) the token's SHA-256, which the
// Referrers API returns with each descriptor so that a verifier reads only the referrer of the
// token a signature names. Every field is derived from the token alone, so attaching the same
// token twice yields the same manifest digest: one referrer.
//
// Registries without the Referrers API get the referrers tag schema through oras-go.
package referrer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry"

	"github.com/attested-kv/attested-kv/internal/binding"
)

// Media types and annotations of the token referrer.
const (
	ArtifactType      = "application/vnd.attested-kv.maa-token.v1+jwt"
	LayerMediaType    = "application/jwt"
	AnnotationIssuer  = "io.github.attested-kv.issuer"
	AnnotationBinding = "io.github.attested-kv.binding"
	AnnotationCreated = ocispec.AnnotationCreated
	// AnnotationTokenSHA256 is the hex SHA-256 of the token, the value of the signature's
	// io.github.attested-kv.token.sha256 attribute. It only chooses which referrer to read first:
	// the token read is hashed and compared (see Index.Find).
	AnnotationTokenSHA256 = binding.AttrTokenSHA256
)

// MaxTokenSize bounds the token layer read back from a registry.
const MaxTokenSize = 64 << 10

// maxManifestSize bounds a referrer manifest read back.
const maxManifestSize = 64 << 10

// Token is what gets attached: the JWT and the facts the annotations carry, taken from the
// verified token by the caller.
type Token struct {
	Raw      string
	Issuer   string
	Binding  string
	IssuedAt time.Time
}

// Target is what the package needs of a repository: content storage, the referrers listing, and
// resolution (satisfied by *remote.Repository and by oras-go's in-memory store).
type Target interface {
	content.Storage
	registry.ReferrerLister
}

// attachAttempts bounds the pushes of one referrer that the registry does not list afterwards;
// attachBackoff is the wait after the first, doubled after each.
var (
	attachAttempts = 5
	attachBackoff  = 200 * time.Millisecond
)

// Attach pushes tok as a referrer of subject and returns the referrer manifest's descriptor once
// the registry lists it among subject's referrers. A registry without the Referrers API keeps
// that list in one index (the referrers tag schema) that every push rewrites, so two processes
// attaching to one image at once can each drop the other's entry; a referrer found missing is
// pushed again (the push re-adds it), up to attachAttempts times, and then reported as an error.
//
// On such a registry a process that read the index just before this push can still write it back
// without this entry after the first check; so the check is made again once that could have
// happened (twice the time the push took). That narrows the window to processes slower than that;
// it cannot close it, since the registry offers no conditional write of the index.
func Attach(ctx context.Context, repo Target, subject ocispec.Descriptor, tok Token) (ocispec.Descriptor, error) {
	wait := attachBackoff
	for attempt := 1; ; attempt++ {
		start := time.Now()
		desc, err := push(ctx, repo, subject, tok)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		took := time.Since(start)
		found, err := listed(ctx, repo, subject, desc)
		if err == nil && found && usesTagSchema(ctx, repo, subject) {
			select {
			case <-ctx.Done():
				return ocispec.Descriptor{}, ctx.Err()
			case <-time.After(max(2*took, minSettle)):
			}
			found, err = listed(ctx, repo, subject, desc)
		}
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("checking that %s is listed as a referrer of %s: %w", desc.Digest, subject.Digest, err)
		}
		if found {
			return desc, nil
		}
		if attempt == attachAttempts {
			return ocispec.Descriptor{}, fmt.Errorf("referrer %s was pushed %d times but the registry does not list it among the referrers of %s: something else is rewriting that list (on a registry without the Referrers API, attach to one image one process at a time)", desc.Digest, attempt, subject.Digest)
		}
		select {
		case <-ctx.Done():
			return ocispec.Descriptor{}, ctx.Err()
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// minSettle is the least wait before a referrer pushed to a registry without the Referrers API
// is looked for again.
const minSettle = 100 * time.Millisecond

// usesTagSchema reports whether repo keeps subject's referrers under the referrers tag
// (sha256-<hex>, OCI distribution spec 1.1, "Referrers Tag Schema"), as oras-go does on a
// registry without the Referrers API; a repository that cannot resolve tags does not.
func usesTagSchema(ctx context.Context, repo Target, subject ocispec.Descriptor) bool {
	r, ok := repo.(interface {
		Resolve(context.Context, string) (ocispec.Descriptor, error)
	})
	if !ok {
		return false
	}
	_, err := r.Resolve(ctx, subject.Digest.Algorithm().String()+"-"+subject.Digest.Encoded())
	return err == nil
}

// errFound stops a listing once the referrer looked for is in it.
var errFound = errors.New("found")

// listed reports whether the registry lists desc among subject's token referrers.
func listed(ctx context.Context, repo Target, subject, desc ocispec.Descriptor) (bool, error) {
	found := false
	err := repo.Referrers(ctx, subject, ArtifactType, func(page []ocispec.Descriptor) error {
		for _, d := range page {
			if d.Digest == desc.Digest {
				found = true
				return errFound
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, errFound) {
		return false, err
	}
	return found, nil
}

// push pushes tok's config, layer and referrer manifest.
func push(ctx context.Context, repo Target, subject ocispec.Descriptor, tok Token) (ocispec.Descriptor, error) {
	if tok.Raw == "" || len(tok.Raw) > MaxTokenSize {
		return ocispec.Descriptor{}, fmt.Errorf("token of %d bytes cannot be attached", len(tok.Raw))
	}
	if tok.IssuedAt.IsZero() {
		return ocispec.Descriptor{}, errors.New("token has no issue time")
	}
	cfg, err := pushBlob(ctx, repo, ArtifactType, []byte("{}"))
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("pushing the config: %w", err)
	}
	layer, err := pushBlob(ctx, repo, LayerMediaType, []byte(tok.Raw))
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("pushing the token: %w", err)
	}
	desc, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, ArtifactType, oras.PackManifestOptions{
		Subject:          &subject,
		Layers:           []ocispec.Descriptor{layer},
		ConfigDescriptor: &cfg,
		ManifestAnnotations: map[string]string{
			AnnotationIssuer:      tok.Issuer,
			AnnotationBinding:     tok.Binding,
			AnnotationCreated:     tok.IssuedAt.UTC().Format(time.RFC3339),
			AnnotationTokenSHA256: hexSHA256([]byte(tok.Raw)),
		},
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("pushing the referrer manifest: %w", err)
	}
	return desc, nil
}

// pushBlob pushes data unless the repository already has it.
func pushBlob(ctx context.Context, repo Target, mediaType string, data []byte) (ocispec.Descriptor, error) {
	desc := content.NewDescriptorFromBytes(mediaType, data)
	ok, err := repo.Exists(ctx, desc)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if !ok {
		if err := repo.Push(ctx, desc, bytes.NewReader(data)); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	return desc, nil
}

// Found is one token referrer read back from a registry.
type Found struct {
	// Descriptor is the referrer manifest's descriptor.
	Descriptor ocispec.Descriptor
	// Raw is the JWT; SHA256 its hex SHA-256 (the signed attribute's value).
	Raw    string
	SHA256 string
	// Annotations are the referrer manifest's annotations (informational: the token is what is
	// verified).
	Annotations map[string]string
}

// MaxListed bounds the token referrers an Index lists: whoever can push to the repository can
// attach any number of them, and a verifier in an admission path must not page through them all.
// A token beyond the bound is not found (the verification fails closed, saying so).
var MaxListed = 256

// errListTruncated stops the listing at MaxListed.
var errListTruncated = errors.New("listing truncated")

// ReadError is a failure to read from the registry: a transport error, a timeout, an HTTP error
// answer, or content that does not match the descriptor it was listed with. Unlike a referrer
// that was read and is not a token referrer, it says nothing of what the registry holds: the
// token looked for may be in the referrer that could not be read.
type ReadError struct {
	// What names what was being read, e.g. "token referrer sha256:…".
	What string
	// Err is the registry client's error.
	Err error
}

// Error returns What and Err, e.g. "token referrer sha256:…: GET …: 503 Service Unavailable".
func (e *ReadError) Error() string { return e.What + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *ReadError) Unwrap() error { return e.Err }

// Index is the listing of a subject's token referrers (the Referrers API, or the referrers tag
// schema); tokens are read when asked for, each at most once. It is not safe for concurrent use.
type Index struct {
	repo      Target
	descs     []ocispec.Descriptor
	truncated bool
	err       error
	reads     map[string]readResult // by manifest digest
}

type readResult struct {
	f   Found
	err error
}

// NewIndex lists the token referrers of subject. A listing error is kept and returned by Find.
func NewIndex(ctx context.Context, repo Target, subject ocispec.Descriptor) *Index {
	ix := &Index{repo: repo, reads: map[string]readResult{}}
	err := repo.Referrers(ctx, subject, ArtifactType, func(page []ocispec.Descriptor) error {
		for _, d := range page {
			ix.descs = append(ix.descs, Trim(d, AnnotationTokenSHA256, AnnotationIssuer, AnnotationBinding, AnnotationCreated))
		}
		if len(ix.descs) > MaxListed {
			ix.descs, ix.truncated = ix.descs[:MaxListed], true
			return errListTruncated
		}
		return nil
	})
	if err != nil && !errors.Is(err, errListTruncated) {
		ix.err = &ReadError{What: "listing referrers of " + subject.Digest.String(), Err: err}
	}
	return ix
}

// maxKeptAnnotation bounds the value of an annotation Trim keeps.
const maxKeptAnnotation = 4 << 10

// Trim returns the listed descriptor d with only what a reader of a referrers listing needs: its
// media type, digest, size and artifact type, and the annotations of keys whose value is at most
// 4 KiB. A listing's descriptors are kept while their referrers are read, and whoever answers the
// listing decides what they carry: each page may hold up to 4 MiB (oras-go's MaxMetadataBytes) of
// annotations, embedded data and URLs, which, kept page after page, made 800 MiB live of a
// hostile registry's 32 pages.
func Trim(d ocispec.Descriptor, keys ...string) ocispec.Descriptor {
	t := ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, ArtifactType: d.ArtifactType}
	for _, k := range keys {
		if v, ok := d.Annotations[k]; ok && len(v) <= maxKeptAnnotation {
			if t.Annotations == nil {
				t.Annotations = map[string]string{}
			}
			t.Annotations[k] = v
		}
	}
	return t
}

// Err is the listing's error, a *ReadError: the registry could not list the referrers.
func (ix *Index) Err() error { return ix.err }

// Len is the number of token referrers listed.
func (ix *Index) Len() int { return len(ix.descs) }

// Find returns the referrer holding the token whose hex SHA-256 is sha, or nil with the errors
// of the referrers it could not use (see also Truncated). Referrers annotated with sha are read
// first; when none of them holds the token (a referrer from before the annotation, a registry
// that drops annotations from its listing, or a false annotation), every other referrer is read.
// The match is always on the hash of the token read, never on the annotation's word.
//
// The errors are of two kinds. A *ReadError (errors.As) is a referrer the registry did not serve,
// or the listing's error: the token may be in it, so nil then does not mean that the token is not
// attached. Any other error is a referrer that was read and is not a well-formed token referrer
// (its manifest or layer is malformed): it is reported rather than skipped silently, but it
// cannot hold a usable token.
func (ix *Index) Find(ctx context.Context, sha string) (*Found, []error) {
	if ix.err != nil {
		return nil, []error{ix.err}
	}
	var errs []error
	for _, annotated := range []bool{true, false} {
		for _, d := range ix.descs {
			if (d.Annotations[AnnotationTokenSHA256] == sha) != annotated {
				continue
			}
			f, err := ix.read(ctx, d)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if f.SHA256 == sha {
				return &f, nil
			}
		}
	}
	return nil, errs
}

// FindAnnotated is Find without the fallback: only the referrers annotated with sha are read (and
// the token read is still hashed and compared). It answers "is this token attached?" without
// reading every other referrer; nil means not found that way.
func (ix *Index) FindAnnotated(ctx context.Context, sha string) *Found {
	if ix.err != nil {
		return nil
	}
	for _, d := range ix.descs {
		if d.Annotations[AnnotationTokenSHA256] != sha {
			continue
		}
		if f, err := ix.read(ctx, d); err == nil && f.SHA256 == sha {
			return &f
		}
	}
	return nil
}

// Truncated reports whether the listing stopped at MaxListed referrers.
func (ix *Index) Truncated() bool { return ix.truncated }

// read reads the referrer d once.
func (ix *Index) read(ctx context.Context, d ocispec.Descriptor) (Found, error) {
	key := d.Digest.String()
	if r, ok := ix.reads[key]; ok {
		return r.f, r.err
	}
	f, err := read(ctx, ix.repo, d)
	var re *ReadError
	switch {
	case errors.As(err, &re):
		err = &ReadError{What: "token referrer " + d.Digest.String() + ": " + re.What, Err: re.Err}
	case err != nil:
		err = fmt.Errorf("token referrer %s: %w", d.Digest, err)
	}
	ix.reads[key] = readResult{f, err}
	return f, err
}

// read reads the referrer d. An error of the registry (including content that does not match its
// descriptor) is a *ReadError; anything else is content that is not a token referrer.
func read(ctx context.Context, repo Target, d ocispec.Descriptor) (Found, error) {
	if d.MediaType != ocispec.MediaTypeImageManifest || d.Size > maxManifestSize {
		return Found{}, fmt.Errorf("unexpected manifest %s of %d bytes", d.MediaType, d.Size)
	}
	b, err := content.FetchAll(ctx, repo, d)
	if err != nil {
		return Found{}, &ReadError{What: "fetching the manifest", Err: err}
	}
	var m ocispec.Manifest
	if err := jsonStrictUnmarshal(b, &m); err != nil {
		return Found{}, err
	}
	if m.ArtifactType != ArtifactType || len(m.Layers) != 1 || m.Layers[0].MediaType != LayerMediaType {
		return Found{}, fmt.Errorf("not a token referrer (artifactType %q, %d layers)", m.ArtifactType, len(m.Layers))
	}
	l := m.Layers[0]
	if l.Size <= 0 || l.Size > MaxTokenSize {
		return Found{}, fmt.Errorf("token layer of %d bytes", l.Size)
	}
	rc, err := repo.Fetch(ctx, l)
	if err != nil {
		return Found{}, &ReadError{What: "fetching the token layer " + l.Digest.String(), Err: err}
	}
	defer rc.Close()
	// content.ReadAll checks size and digest. A body cut short or not matching them counts as a
	// read error, as a dropped connection or a faulty proxy produce it.
	tb, err := content.ReadAll(io.LimitReader(rc, MaxTokenSize+1), l)
	if err != nil {
		return Found{}, &ReadError{What: "reading the token layer " + l.Digest.String(), Err: err}
	}
	return Found{Descriptor: d, Raw: string(tb), SHA256: hexSHA256(tb), Annotations: m.Annotations}, nil
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func jsonStrictUnmarshal(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	return nil
}
