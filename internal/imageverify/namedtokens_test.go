package imageverify

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/notaryproject/notation-core-go/signature"
	nregistry "github.com/notaryproject/notation-go/registry"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/binding"
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
	nregistry.Repository
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
	attesttest.SignImage(t, retargeted{Repository: nregistry.NewRepository(f.remote), to: img}, f.signer, other, otherTok, f.maaURL, time.Now())
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

// envelope returns a JWS signature envelope by s of subject made as the attested-kv plugin makes
// it, with attrs as its extended signed attributes (attesttest.SignImage always sets both).
func envelope(t *testing.T, s signature.Signer, subject ocispec.Descriptor, attrs []signature.Attribute, at time.Time) []byte {
	t.Helper()
	payload, err := json.Marshal(map[string]any{"targetArtifact": subject})
	if err != nil {
		t.Fatal(err)
	}
	env, err := signature.NewEnvelope(jwsMediaType)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := env.Sign(&signature.SignRequest{
		Payload: signature.Payload{ContentType: binding.NotaryPayloadType, Content: payload}, Signer: s, SigningTime: at,
		SigningScheme: signature.SigningSchemeX509, ExtendedSignedAttributes: attrs,
	})
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

const jwsMediaType = "application/jose+json"

// tokenAttributes are the signed attributes naming the token raw and the issuer.
func tokenAttributes(raw, issuer string) []signature.Attribute {
	return []signature.Attribute{{Key: binding.AttrTokenSHA256, Value: hexSHA(raw)}, {Key: binding.AttrIssuer, Value: issuer}}
}

// editJWS returns the JWS envelope blob with edit applied to its JSON fields (payload, protected,
// header, signature).
func editJWS(t testing.TB, blob []byte, edit func(fields map[string]any)) []byte {
	t.Helper()
	var fields map[string]any
	if err := json.Unmarshal(blob, &fields); err != nil {
		t.Fatal(err)
	}
	edit(fields)
	b, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNamedTokensBrokenEnvelopes: a signature attached to the image whose envelope is not intact
// (a byte of the signature flipped, or a payload put in after signing that targets this image) or
// does not parse or is empty does not name its token, and is ignored with the reason, beside the
// genuine signature, whose token is named.
func TestNamedTokensBrokenEnvelopes(t *testing.T) {
	f := newFixture(t)
	other := f.pushImage(t, "the image the envelope was signed for")
	tests := []struct {
		name string
		// broken returns the envelope attached to img, naming the token named.
		broken func(t *testing.T, img ocispec.Descriptor, named string) []byte
		want   string
	}{
		{"a signature byte flipped", func(t *testing.T, img ocispec.Descriptor, named string) []byte {
			return editJWS(t, envelope(t, f.signer, img, tokenAttributes(named, f.maaURL), time.Now()), func(fields map[string]any) {
				sig, err := base64.RawURLEncoding.DecodeString(fields["signature"].(string))
				if err != nil {
					t.Fatal(err)
				}
				sig[len(sig)/2] ^= 1
				fields["signature"] = base64.RawURLEncoding.EncodeToString(sig)
			})
		}, "envelope is not intact"},
		{"the payload replaced by one targeting the image", func(t *testing.T, img ocispec.Descriptor, named string) []byte {
			return editJWS(t, envelope(t, f.signer, other, tokenAttributes(named, f.maaURL), time.Now()), func(fields map[string]any) {
				p, err := json.Marshal(map[string]any{"targetArtifact": img})
				if err != nil {
					t.Fatal(err)
				}
				fields["payload"] = base64.RawURLEncoding.EncodeToString(p)
			})
		}, "envelope is not intact"},
		{"not JSON", func(*testing.T, ocispec.Descriptor, string) []byte { return []byte("not an envelope") }, "envelope does not parse"},
		{"empty", func(*testing.T, ocispec.Descriptor, string) []byte { return nil }, `layer of media type "application/jose+json" and 0 bytes is not a signature envelope`},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, tok := f.attested(t, fmt.Sprintf("broken envelope %d", i))
			named := "a token named by a broken signature " + tc.name
			if _, _, err := nregistry.NewRepository(f.remote).PushSignature(context.Background(), jwsMediaType, tc.broken(t, img, named), img, nil); err != nil {
				t.Fatal(err)
			}
			names, err := NamedTokens(context.Background(), f.repo, img)
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := names.Names(hexSHA(tok)); !ok || err != nil {
				t.Fatalf("Names(the genuine signature's token) = %v, %v", ok, err)
			}
			if ok, err := names.Names(hexSHA(named)); ok || err != nil {
				t.Fatalf("Names(the broken signature's token) = %v, %v; want false", ok, err)
			}
			if ig := names.Ignored(); len(ig) != 1 || !strings.Contains(ig[0].Error(), tc.want) {
				t.Fatalf("ignored %v; want one error containing %q", ig, tc.want)
			}
		})
	}
}

// TestNamedTokensListing: signatures listed with a descriptor that is not a signature manifest's
// (another media type, a size of 0 or beyond the limit, though the registry holds the genuine
// manifest under that digest) are ignored without being fetched; at most 256 signatures are read,
// and a listing with more says so (Truncated).
func TestNamedTokensListing(t *testing.T) {
	f := newFixture(t)
	img, tok := f.attested(t, "listing")
	var genuine []ocispec.Descriptor
	if err := f.repo.ListSignatures(context.Background(), img, func(p []ocispec.Descriptor) error { genuine = append(genuine, p...); return nil }); err != nil || len(genuine) != 1 {
		t.Fatalf("signatures %v, %v", genuine, err)
	}
	listedAs := func(edit func(d *ocispec.Descriptor)) []ocispec.Descriptor {
		d := genuine[0]
		edit(&d)
		return []ocispec.Descriptor{d}
	}
	// junk lists n descriptors of another media type besides the registry's.
	junk := func(n int) []ocispec.Descriptor {
		var ds []ocispec.Descriptor
		for i := range n {
			ds = append(ds, ocispec.Descriptor{MediaType: "application/vnd.example.not-a-manifest", Digest: digest.FromString(fmt.Sprint(i)), Size: 10})
		}
		return ds
	}
	notManifest := "not a signature manifest"
	tests := []struct {
		name      string
		extra     []ocispec.Descriptor
		ignored   int    // signatures ignored, each with want
		want      string // in each ignored error
		truncated bool
	}{
		{"listed as a layer", listedAs(func(d *ocispec.Descriptor) { d.MediaType = "application/vnd.oci.image.layer.v1.tar" }), 1, notManifest, false},
		{"listed with size 0", listedAs(func(d *ocispec.Descriptor) { d.Size = 0 }), 1, notManifest, false},
		{"listed beyond the manifest size limit", listedAs(func(d *ocispec.Descriptor) { d.Size = maxSignatureManifest + 1 }), 1, notManifest, false},
		{"255 listed", junk(maxListedSignatures - 2), maxListedSignatures - 2, notManifest, false},
		{"256 listed", junk(maxListedSignatures - 1), maxListedSignatures - 1, notManifest, false},
		{"257 listed", junk(maxListedSignatures), maxListedSignatures - 1, notManifest, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			names, err := NamedTokens(context.Background(), signatureRepository{Repository: f.repo, extra: tc.extra}, img)
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := names.Names(hexSHA(tok)); !ok || err != nil {
				t.Fatalf("Names(the genuine signature's token) = %v, %v", ok, err)
			}
			ig := names.Ignored()
			if len(ig) != tc.ignored || names.Truncated() != tc.truncated {
				t.Fatalf("ignored %d (%v), truncated %v; want %d ignored, truncated %v", len(ig), ig, names.Truncated(), tc.ignored, tc.truncated)
			}
			for _, e := range ig {
				if !strings.Contains(e.Error(), tc.want) {
					t.Fatalf("ignored %v; want it to contain %q", e, tc.want)
				}
			}
		})
	}
}

// TestVerifyJunkSignatures: Verify reads signatures as NamedTokens does. A manifest of the Notary
// signature type that is not a usable signature fails as a signature, so an image with only such
// manifests is refused rather than reported as impossible to check; beside a genuine signature it
// changes nothing; a registry that does not serve it is still an error.
func TestVerifyJunkSignatures(t *testing.T) {
	f := newFixture(t)
	junkOnly := f.pushImage(t, "junk only")
	twoLayers := pushFakeSignature(t, f, junkOnly, "application/jose+json", "{}", "{ }")
	pushFakeSignature(t, f, junkOnly, "application/octet-stream", "not an envelope")
	genuine, _ := f.attested(t, "junk beside the genuine signature")
	pushFakeSignature(t, f, genuine, "application/jose+json", "{}", "{ }")
	down := errors.New("503 service unavailable")

	for _, tc := range []struct {
		name   string
		repo   Repository
		img    ocispec.Descriptor
		passed bool
		detail string // a substring of the failed signature check; "" with err
		err    bool
	}{
		{name: "only junk", repo: f.repo, img: junkOnly, detail: "is not a usable Notation signature"},
		{name: "junk beside the genuine signature", repo: f.repo, img: genuine, passed: true},
		{name: "the registry does not serve the junk", img: junkOnly, err: true, repo: signatureRepository{Repository: f.repo, fail: func(d ocispec.Descriptor) error {
			if d.Digest == twoLayers.Digest {
				return down
			}
			return nil
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Verify(context.Background(), tc.repo, f.reference+"@"+tc.img.Digest.String(), tc.img, f.opts)
			if tc.err {
				if err == nil || !errors.Is(err, down) {
					t.Fatalf("Verify = %+v, %v; want the registry's error", res, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v; want a judgement of the image", err)
			}
			if res.Passed != tc.passed {
				t.Fatalf("Passed = %v, want %v: %+v", res.Passed, tc.passed, res.Checks)
			}
			if !tc.passed {
				last := res.Checks[len(res.Checks)-1]
				if last.Name != CheckSignature || last.Passed || !strings.Contains(last.Detail, tc.detail) {
					t.Fatalf("last check %+v, want the signature check failed naming %q", last, tc.detail)
				}
			}
		})
	}
}
