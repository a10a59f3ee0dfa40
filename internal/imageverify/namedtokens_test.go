package imageverify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	nregistry "github.com/notaryproject/notation-go/registry"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/referrer"
)

// signatureRepository lists extra signature descriptors after the registry's, and makes the
// fetches that fail chooses fail, or the listing.
type signatureRepository struct {
	Repository
	extra []ocispec.Descriptor
	fail  func(ocispec.Descriptor) error
	// listErr, when set, is the listing's error.
	listErr error
}

func (r signatureRepository) ListSignatures(ctx context.Context, desc ocispec.Descriptor, fn func([]ocispec.Descriptor) error) error {
	if r.listErr != nil {
		return r.listErr
	}
	if err := r.Repository.ListSignatures(ctx, desc, fn); err != nil {
		return err
	}
	if len(r.extra) > 0 {
		return fn(r.extra)
	}
	return nil
}

func (r signatureRepository) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	if r.fail != nil {
		if err := r.fail(d); err != nil {
			return nil, err
		}
	}
	return r.Repository.Fetch(ctx, d)
}

// retargeted pushes every signature as a referrer of to, whatever image it signs.
type retargeted struct {
	Repository
	to ocispec.Descriptor
}

func (r retargeted) PushSignature(ctx context.Context, mediaType string, blob []byte, _ ocispec.Descriptor, annotations map[string]string) (ocispec.Descriptor, ocispec.Descriptor, error) {
	return r.Repository.PushSignature(ctx, mediaType, blob, r.to, annotations)
}

// pushFakeSignature attaches to img a manifest of the Notary signature artifact type with a
// layer of mediaType for each of blobs, as whoever can push to the repository can.
func pushFakeSignature(t *testing.T, f *fixture, img ocispec.Descriptor, mediaType string, blobs ...string) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	var layers []ocispec.Descriptor
	for _, b := range blobs {
		l, err := oras.PushBytes(ctx, f.remote, mediaType, []byte(b))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	d, err := oras.PackManifest(ctx, f.remote, oras.PackManifestVersion1_1, nregistry.ArtifactTypeNotation, oras.PackManifestOptions{Subject: &img, Layers: layers})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func hexSHA(raw string) string { s := sha256.Sum256([]byte(raw)); return hex.EncodeToString(s[:]) }

// TestNamedTokens: NamedTokens names the token of the genuine signature whatever else is attached
// as a signature (a manifest of two layers, an envelope of another media type, a signature of
// another image, a listed manifest the registry no longer holds), each ignored with its reason.
// A signature the registry does not serve (503) does not stop it either, unless the token looked
// for is named by no signature read: then Names returns the registry's error, not "not named".
func TestNamedTokens(t *testing.T) {
	f := newFixture(t)
	img, tok := f.attested(t, "named tokens")
	other, otherTok := f.attested(t, "another image")
	twoLayers := pushFakeSignature(t, f, img, "application/jose+json", "{}", "{ }")
	pushFakeSignature(t, f, img, "application/octet-stream", "not an envelope")
	// A genuine signature of the other image, attached to this one.
	attesttest.SignImage(t, retargeted{Repository: f.repo, to: img}, f.signer, other, otherTok, f.maaURL, time.Now())
	stale := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: nregistry.ArtifactTypeNotation, Digest: digest.FromString("deleted signature manifest"), Size: 600}

	down := errors.New("503 service unavailable")
	failManifest := func(target digest.Digest) func(ocispec.Descriptor) error {
		return func(d ocispec.Descriptor) error {
			if d.Digest == target {
				return down
			}
			return nil
		}
	}
	allFetches := func(ocispec.Descriptor) error { return down }
	envelopes := func(d ocispec.Descriptor) error {
		if d.MediaType == "application/jose+json" {
			return down
		}
		return nil
	}
	for _, tc := range []struct {
		name    string
		repo    Repository
		named   bool     // whether Names(tok) is true
		err     bool     // whether Names(tok) is an error (the registry's)
		otherOK bool     // whether Names(otherTok) is false without an error
		ignored []string // a substring of each of Ignored's errors
	}{
		{name: "junk beside the genuine signature", repo: f.repo, named: true, otherOK: true,
			ignored: []string{"manifest has 2 layers, not the one signature envelope", `layer of media type "application/octet-stream"`, "signs \"" + other.Digest.String() + "\", not " + img.Digest.String()}},
		{name: "a listed manifest the registry does not hold", repo: signatureRepository{Repository: f.repo, extra: []ocispec.Descriptor{stale}}, named: true, otherOK: true,
			ignored: []string{"2 layers", "application/octet-stream", "signs", "listed, but the registry does not hold the manifest"}},
		{name: "503 on a junk signature", repo: signatureRepository{Repository: f.repo, fail: failManifest(twoLayers.Digest)}, named: true,
			ignored: []string{"application/octet-stream", "signs"}},
		{name: "503 on every signature", repo: signatureRepository{Repository: f.repo, fail: allFetches}, err: true},
		{name: "503 on the envelopes", repo: signatureRepository{Repository: f.repo, fail: envelopes}, err: true, ignored: []string{"2 layers", "application/octet-stream"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			names, err := NamedTokens(context.Background(), tc.repo, img)
			if err != nil {
				t.Fatal(err)
			}
			ok, err := names.Names(hexSHA(tok))
			var re *referrer.ReadError
			if ok != tc.named || (err != nil) != tc.err || (err != nil && (!errors.As(err, &re) || !errors.Is(err, down) || !strings.Contains(err.Error(), "could not be read"))) {
				t.Fatalf("Names(token) = %v, %v; want %v and an error: %v", ok, err, tc.named, tc.err)
			}
			ok, err = names.Names(hexSHA(otherTok))
			if ok || (err == nil) != tc.otherOK {
				t.Errorf("Names(the other image's token) = %v, %v; want false, with an error only when signatures were not read", ok, err)
			}
			ig := names.Ignored()
			if len(ig) != len(tc.ignored) {
				t.Fatalf("ignored %v, want %d", ig, len(tc.ignored))
			}
			// In any order: the registry chooses the listing's.
			for _, want := range tc.ignored {
				if !slices.ContainsFunc(ig, func(e error) bool { return strings.Contains(e.Error(), want) }) {
					t.Errorf("ignored %v: none contains %q", ig, want)
				}
			}
		})
	}

	// The only signature not served: an error, not "not named".
	lone, loneTok := f.attested(t, "lone signature")
	names, err := NamedTokens(context.Background(), signatureRepository{Repository: f.repo, fail: allFetches}, lone)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := names.Names(hexSHA(loneTok)); ok || !errors.Is(err, down) || !strings.Contains(err.Error(), "1 of the 1 signatures listed could not be read") {
		t.Fatalf("the only signature not served: %v, %v", ok, err)
	}
	// The listing not served: NamedTokens's error.
	if _, err := NamedTokens(context.Background(), signatureRepository{Repository: f.repo, listErr: down}, lone); !errors.Is(err, down) {
		t.Fatalf("listing not served: %v", err)
	}
}
