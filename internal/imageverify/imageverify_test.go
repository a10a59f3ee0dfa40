package imageverify

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/notaryproject/notation-core-go/signature"
	_ "github.com/notaryproject/notation-core-go/signature/jws"
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/dir"
	nregistry "github.com/notaryproject/notation-go/registry"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/notationcfg"
	"github.com/attested-kv/attested-kv/internal/referrer"
	"github.com/attested-kv/attested-kv/internal/testcert"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// The fixture is real end to end except for the Key Vault signer (a local key here): a TPM
// simulator provisioned like an Azure vTPM, the MAA emulator, the production MAA client, an
// in-process registry with the Referrers API, and notation-go's verifier with a trust store on disk.

const keyID = "https://kv.vault.azure.net/keys/signer/0123456789abcdef0123456789abcdef"

type fixture struct {
	chain     *attesttest.Chain
	maaURL    string
	repo      Repository
	remote    *remote.Repository
	reference string
	signer    signature.LocalSigner
	untrusted signature.LocalSigner
	cfgDir    string
	opts      Options
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	chain := attesttest.New(t)
	r, name := attesttest.Registry(t)

	f := &fixture{
		chain: chain, maaURL: chain.URL,
		repo: NewRepository(r), remote: r, reference: name,
		signer: attesttest.Signer(t, "attested signer"), untrusted: attesttest.Signer(t, "someone else"),
	}
	cfgDir := t.TempDir()
	f.cfgDir = cfgDir
	certs, _ := f.signer.CertificateChain()
	if err := notationcfg.WriteTrust(cfgDir, notationcfg.Trust{PolicyName: "test", StoreName: "test", Scopes: []string{"*"}, Roots: certs, Identities: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	nv, err := notationcfg.NewVerifier(filepath.Join(cfgDir, "trustpolicy.json"), cfgDir)
	if err != nil {
		t.Fatal(err)
	}
	// The fixture's TPM has no event log, so the emulator issues secureboot false: the default
	// rules check what the evidence proves.
	rs, err := rules.Parse("test.cel", []byte("attestation-type: claims[\"x-ms-attestation-type\"] == \"azurevm\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	f.opts = Options{Notation: nv, AttestationURL: chain.URL, TokenKeys: chain.Keys, KeyID: keyID, MaxTokenAge: 5 * time.Minute, Rules: rs}
	return f
}

// notationWith returns a Notation verifier of the fixture's trust store under its trust policy
// changed by edit.
func (f *fixture) notationWith(t *testing.T, edit func(*trustpolicy.SignatureVerification)) notation.Verifier {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.cfgDir, "trustpolicy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc trustpolicy.Document
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for i := range doc.TrustPolicies {
		edit(&doc.TrustPolicies[i].SignatureVerification)
	}
	path := filepath.Join(t.TempDir(), "trustpolicy.json")
	if b, err = json.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	nv, err := notationcfg.NewVerifier(path, f.cfgDir)
	if err != nil {
		t.Fatal(err)
	}
	return nv
}

// notationTrusting returns a Notation verifier whose trust store holds the certificates of
// signers.
func (f *fixture) notationTrusting(t *testing.T, signers ...signature.LocalSigner) notation.Verifier {
	t.Helper()
	var roots []*x509.Certificate
	for _, s := range signers {
		chain, _ := s.CertificateChain()
		roots = append(roots, chain[len(chain)-1])
	}
	dir := t.TempDir()
	if err := notationcfg.WriteTrust(dir, notationcfg.Trust{PolicyName: "test", StoreName: "test", Scopes: []string{"*"}, Roots: roots, Identities: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	nv, err := notationcfg.NewVerifier(filepath.Join(dir, "trustpolicy.json"), dir)
	if err != nil {
		t.Fatal(err)
	}
	return nv
}

// certSHA256 is the fingerprint of s's leaf certificate.
func certSHA256(t *testing.T, s signature.LocalSigner) string {
	t.Helper()
	chain, err := s.CertificateChain()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(chain[0].Raw)
	return hex.EncodeToString(sum[:])
}

func (f *fixture) pushImage(t *testing.T, content string) ocispec.Descriptor {
	return attesttest.PushImage(t, f.remote, content)
}

// token gets a real token bound to nonce.
func (f *fixture) token(t *testing.T, nonce string) string { return f.chain.Token(t, nonce) }

func (f *fixture) sign(t *testing.T, s signature.LocalSigner, subject ocispec.Descriptor, tokenRaw, issuer string, at time.Time) {
	attesttest.SignImage(t, nregistry.NewRepository(f.remote), s, subject, tokenRaw, issuer, at)
}

// attested pushes an image and gives it what an attested build does: a token bound to it and
// keyID, a signature by the trusted signer naming the token, and the token's referrer. It
// returns the image and the token.
func (f *fixture) attested(t *testing.T, content string) (ocispec.Descriptor, string) {
	t.Helper()
	return f.attestedBy(t, content, f.signer)
}

// attestedBy is attested with the signature by s.
func (f *fixture) attestedBy(t *testing.T, content string, s signature.LocalSigner) (ocispec.Descriptor, string) {
	t.Helper()
	img := f.pushImage(t, content)
	b, err := binding.Compute(img.Digest.String(), keyID)
	if err != nil {
		t.Fatal(err)
	}
	tok := f.token(t, b)
	f.sign(t, s, img, tok, f.maaURL, time.Now())
	f.attach(t, img, tok)
	return img, tok
}

func (f *fixture) attach(t *testing.T, subject ocispec.Descriptor, raw string) {
	t.Helper()
	if _, err := referrer.Attach(context.Background(), f.remote, subject, referrer.Token{Raw: raw, Issuer: f.maaURL, IssuedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

func TestVerify(t *testing.T) {
	f := newFixture(t)
	other := f.pushImage(t, "other image")
	bind := func(d ocispec.Descriptor, key string) string {
		b, err := binding.Compute(d.Digest.String(), key)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// signedBy signs the image with s, with a fresh token bound to it and keyID, and attaches the
	// token.
	signedBy := func(s signature.LocalSigner) func(t *testing.T, img ocispec.Descriptor) {
		return func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(img, keyID))
			f.sign(t, s, img, tok, f.maaURL, time.Now())
			f.attach(t, img, tok)
		}
	}
	// signedWith signs the image with the trusted key, with a fresh token bound to it and keyID
	// attached, and the signed attributes attrs returns for the token.
	signedWith := func(attrs func(tok string) []signature.Attribute) func(t *testing.T, img ocispec.Descriptor) {
		return func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(img, keyID))
			if _, _, err := nregistry.NewRepository(f.remote).PushSignature(context.Background(), jwsMediaType, envelope(t, f.signer, img, attrs(tok), time.Now()), img, nil); err != nil {
				t.Fatal(err)
			}
			f.attach(t, img, tok)
		}
	}
	tests := []struct {
		name   string
		setup  func(t *testing.T, img ocispec.Descriptor)
		opts   func(o *Options)
		failed string
	}{
		{name: "signed from an attested machine", setup: signedBy(f.signer)},
		{name: "signed with the token attributes, by envelope", setup: signedWith(func(tok string) []signature.Attribute { return tokenAttributes(tok, f.maaURL) })},
		{name: "no token attributes", setup: signedWith(func(string) []signature.Attribute { return nil }), failed: CheckAttribute},
		{name: "no issuer attribute", setup: signedWith(func(tok string) []signature.Attribute { return tokenAttributes(tok, f.maaURL)[:1] }), failed: CheckAttribute},
		{name: "no token attribute", setup: signedWith(func(tok string) []signature.Attribute { return tokenAttributes(tok, f.maaURL)[1:] }), failed: CheckAttribute},
		{name: "no signature", setup: func(t *testing.T, img ocispec.Descriptor) {
			f.attach(t, img, f.token(t, bind(img, keyID)))
		}, failed: CheckSignature},
		{name: "signed by an untrusted key", setup: signedBy(f.untrusted), failed: CheckSignature},
		// notation-go accepts these two when the trust policy only logs authenticity failures.
		{name: "signed by an untrusted key, audit trust policy", setup: signedBy(f.untrusted), opts: func(o *Options) {
			o.Notation = f.notationWith(t, func(sv *trustpolicy.SignatureVerification) { sv.VerificationLevel = trustpolicy.LevelAudit.Name })
		}, failed: CheckSignature},
		{name: "signed by an untrusted key, authenticity overridden to log", setup: signedBy(f.untrusted), opts: func(o *Options) {
			o.Notation = f.notationWith(t, func(sv *trustpolicy.SignatureVerification) {
				sv.Override = map[trustpolicy.ValidationType]trustpolicy.ValidationAction{trustpolicy.TypeAuthenticity: trustpolicy.ActionLog}
			})
		}, failed: CheckSignature},
		{name: "signed by the trusted key, audit trust policy", setup: signedBy(f.signer), opts: func(o *Options) {
			o.Notation = f.notationWith(t, func(sv *trustpolicy.SignatureVerification) { sv.VerificationLevel = trustpolicy.LevelAudit.Name })
		}, failed: CheckSignature},
		// Permissive only logs revocation and expiry: a revoked signing certificate would pass.
		{name: "signed by the trusted key, permissive trust policy", setup: signedBy(f.signer), opts: func(o *Options) {
			o.Notation = f.notationWith(t, func(sv *trustpolicy.SignatureVerification) { sv.VerificationLevel = trustpolicy.LevelPermissive.Name })
		}, failed: CheckSignature},
		{name: "signed by the trusted key, revocation overridden to log", setup: signedBy(f.signer), opts: func(o *Options) {
			o.Notation = f.notationWith(t, func(sv *trustpolicy.SignatureVerification) {
				sv.Override = map[trustpolicy.ValidationType]trustpolicy.ValidationAction{trustpolicy.TypeRevocation: trustpolicy.ActionLog}
			})
		}, failed: CheckSignature},
		// Both keys' certificates are trusted (as under a shared CA): only the pin tells them apart.
		{name: "another trusted key, signing certificate pinned", setup: signedBy(f.untrusted), opts: func(o *Options) {
			o.Notation = f.notationTrusting(t, f.signer, f.untrusted)
			o.SigningCertSHA256 = []string{certSHA256(t, f.signer)}
		}, failed: CheckSignature},
		{name: "another trusted key, no pin", setup: signedBy(f.untrusted), opts: func(o *Options) { o.Notation = f.notationTrusting(t, f.signer, f.untrusted) }},
		{name: "the pinned signing certificate", setup: signedBy(f.signer), opts: func(o *Options) {
			o.Notation = f.notationTrusting(t, f.signer, f.untrusted)
			o.SigningCertSHA256 = []string{certSHA256(t, f.untrusted), certSHA256(t, f.signer)}
		}},
		{name: "no token referrer", setup: func(t *testing.T, img ocispec.Descriptor) {
			f.sign(t, f.signer, img, f.token(t, bind(img, keyID)), f.maaURL, time.Now())
		}, failed: CheckReferrer},
		// The token is found by the SHA-256 of the bytes read, never by the annotation: a referrer
		// annotated with the signed token's hash that holds another token, bound alike, is not it.
		{name: "referrer annotated as the signed token, holding another", setup: func(t *testing.T, img ocispec.Descriptor) {
			signed, substitute := f.token(t, bind(img, keyID)), f.token(t, bind(img, keyID))
			f.sign(t, f.signer, img, signed, f.maaURL, time.Now())
			ctx := context.Background()
			cfg, err := oras.PushBytes(ctx, f.remote, referrer.ArtifactType, []byte("{}"))
			if err != nil {
				t.Fatal(err)
			}
			layer, err := oras.PushBytes(ctx, f.remote, referrer.LayerMediaType, []byte(substitute))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256([]byte(signed))
			if _, err := oras.PackManifest(ctx, f.remote, oras.PackManifestVersion1_1, referrer.ArtifactType, oras.PackManifestOptions{
				Subject: &img, Layers: []ocispec.Descriptor{layer}, ConfigDescriptor: &cfg,
				ManifestAnnotations: map[string]string{referrer.AnnotationTokenSHA256: hex.EncodeToString(sum[:])},
			}); err != nil {
				t.Fatal(err)
			}
		}, failed: CheckReferrer},
		{name: "token for another digest", setup: func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(other, keyID))
			f.sign(t, f.signer, img, tok, f.maaURL, time.Now())
			f.attach(t, img, tok)
		}, failed: CheckBinding},
		{name: "token bound to another key", setup: func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(img, keyID+"0"))
			f.sign(t, f.signer, img, tok, f.maaURL, time.Now())
			f.attach(t, img, tok)
		}, failed: CheckBinding},
		{name: "token of another MAA instance", setup: func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(img, keyID))
			f.sign(t, f.signer, img, tok, "https://other.weu.attest.azure.net", time.Now())
			f.attach(t, img, tok)
		}, failed: CheckIssuer},
		// The token is the instance's, but the signed issuer is not the pinned instance as written
		// (mutant killed: the signed issuer compared as a prefix).
		{name: "signed issuer a path under the pinned instance", setup: func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(img, keyID))
			f.sign(t, f.signer, img, tok, f.maaURL+"/other", time.Now())
			f.attach(t, img, tok)
		}, failed: CheckIssuer},
		{name: "token older than allowed at signing", setup: func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(img, keyID))
			f.sign(t, f.signer, img, tok, f.maaURL, time.Now().Add(10*time.Minute))
			f.attach(t, img, tok)
		}, failed: CheckAge},
		{name: "claim rule false", setup: signedBy(f.signer), opts: func(o *Options) { o.Rules = rules.Baseline() }, failed: CheckRules},
		{name: "token keys of another instance", setup: signedBy(f.signer), opts: func(o *Options) {
			other, _ := rsa.GenerateKey(rand.Reader, 2048)
			jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: other.Public(), KeyID: "other", Algorithm: "RS256", Use: "sig"}}})
			ks, err := maa.NewStaticKeySet(jwks)
			if err != nil {
				t.Fatal(err)
			}
			o.TokenKeys = ks
		}, failed: CheckToken},
		{name: "a bad signature beside a good one passes", setup: func(t *testing.T, img ocispec.Descriptor) {
			bad := f.token(t, bind(other, keyID))
			f.sign(t, f.signer, img, bad, f.maaURL, time.Now())
			f.attach(t, img, bad)
			tok := f.token(t, bind(img, keyID))
			f.sign(t, f.signer, img, tok, f.maaURL, time.Now())
			f.attach(t, img, tok)
		}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := f.pushImage(t, "image "+tc.name+string(rune('a'+i)))
			tc.setup(t, img)
			o := f.opts
			if tc.opts != nil {
				tc.opts(&o)
			}
			res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, o)
			if err != nil {
				t.Fatal(err)
			}
			if res.Passed != (tc.failed == "") || res.FailedCheck() != tc.failed {
				t.Fatalf("passed %v, failed check %q (%+v); want failed %q", res.Passed, res.FailedCheck(), res.Checks, tc.failed)
			}
		})
	}
}

// orderedRepository makes ListSignatures wait until the token referrers are being listed.
type orderedRepository struct {
	Repository
	tokensListed chan struct{}
	once         sync.Once
}

func (r *orderedRepository) Referrers(ctx context.Context, desc ocispec.Descriptor, artifactType string, fn func([]ocispec.Descriptor) error) error {
	if artifactType == referrer.ArtifactType {
		r.once.Do(func() { close(r.tokensListed) })
	}
	return r.Repository.Referrers(ctx, desc, artifactType, fn)
}

func (r *orderedRepository) ListSignatures(ctx context.Context, desc ocispec.Descriptor, fn func([]ocispec.Descriptor) error) error {
	return listAfter(ctx, r.Repository, r.tokensListed, "the token referrers were not listed while the signatures were", desc, fn)
}

// listAfter lists the signatures of desc in repo once first is closed, or fails with failure
// if it is not closed within 10 s: what must have started before the signatures are listed.
func listAfter(ctx context.Context, repo Repository, first <-chan struct{}, failure string, desc ocispec.Descriptor, fn func([]ocispec.Descriptor) error) error {
	select {
	case <-first:
	case <-time.After(10 * time.Second):
		return errors.New(failure)
	}
	return repo.ListSignatures(ctx, desc, fn)
}

// TestTokensListedWithSignatures: the token referrers are read concurrently with the signatures
// (two round trips to a remote registry instead of one after the other), and still checked.
func TestTokensListedWithSignatures(t *testing.T) {
	f := newFixture(t)
	img, _ := f.attested(t, "concurrent listing")
	repo := &orderedRepository{Repository: f.repo, tokensListed: make(chan struct{})}
	res, err := Verify(context.Background(), repo, f.reference+"@"+img.Digest.String(), img, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Passed {
		t.Fatalf("refused: %+v", res.Checks)
	}
}

// prefetchingKeys is a key set that can prefetch, and says when it was asked to.
type prefetchingKeys struct {
	maa.KeySet
	asked chan struct{}
	once  sync.Once
}

func (k *prefetchingKeys) Prefetch(context.Context) { k.once.Do(func() { close(k.asked) }) }

// keysFirstRepository makes ListSignatures wait until the token keys are being fetched.
type keysFirstRepository struct {
	Repository
	fetching <-chan struct{}
}

func (r keysFirstRepository) ListSignatures(ctx context.Context, desc ocispec.Descriptor, fn func([]ocispec.Descriptor) error) error {
	return listAfter(ctx, r.Repository, r.fetching, "the token keys were not fetched while the signatures were listed", desc, fn)
}

// TestKeysFetchedWithSignatures: a key set that fetches starts before the registry reads, so
// that the round trips to MAA and to the registry overlap, and the image still verifies.
func TestKeysFetchedWithSignatures(t *testing.T) {
	f := newFixture(t)
	img, _ := f.attested(t, "keys prefetched")
	keys := &prefetchingKeys{KeySet: f.opts.TokenKeys, asked: make(chan struct{})}
	o := f.opts
	o.TokenKeys = keys
	res, err := Verify(context.Background(), keysFirstRepository{Repository: f.repo, fetching: keys.asked}, f.reference+"@"+img.Digest.String(), img, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Passed {
		t.Fatalf("refused: %+v", res.Checks)
	}
}

func TestParseCertSHA256(t *testing.T) {
	hexSum := strings.Repeat("ab", 32)
	tests := []struct {
		in, want string
	}{
		{hexSum, hexSum},
		{strings.ToUpper(hexSum), hexSum},
		{strings.TrimSuffix(strings.Repeat("AB:", 32), ":"), hexSum},
		{hexSum[:62], ""},
		{hexSum + "ab", ""},
		{strings.Repeat("zz", 32), ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, err := ParseCertSHA256(tt.in)
		if got != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("ParseCertSHA256(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	a, b := strings.Repeat("ab", 32), strings.Repeat("0c", 32)
	if got, err := ParseCertPins([]string{strings.ToUpper(a), b}); err != nil || !slices.Equal(got, []string{a, b}) {
		t.Errorf("ParseCertPins = %q, %v", got, err)
	}
	if got, err := ParseCertPins([]string{a, "abcd"}); err == nil || !strings.Contains(err.Error(), `"abcd"`) || got != nil {
		t.Errorf("ParseCertPins with a bad pin = %q, %v", got, err)
	}
}

// TestVerifyRefusesInstanceURL: an attestation URL the token verifier would refuse is a
// configuration error of Verify, not a refusal of the image.
func TestVerifyRefusesInstanceURL(t *testing.T) {
	f := newFixture(t)
	img := f.pushImage(t, "instance url")
	for _, u := range []string{"http://x.weu.attest.azure.net", "https://x.weu.attest.azure.net/path", "https://u:p@x.weu.attest.azure.net"} {
		o := f.opts
		o.AttestationURL = u
		if res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, o); err == nil {
			t.Errorf("AttestationURL %q: result %+v, want an error", u, res)
		}
	}
}

// TestVerifyRefusesUnnormalisedPins: a signing certificate pin not in ParseCertSHA256's form
// (upper case, colons) is a configuration error, not a pin that no certificate matches, so that
// every image would be refused as signed by another certificate. Mutant killed: the pin checked
// only to parse.
func TestVerifyRefusesUnnormalisedPins(t *testing.T) {
	f := newFixture(t)
	img, _ := f.attested(t, "pin spelling")
	pin := certSHA256(t, f.signer)
	var colons []string
	for i := 0; i < len(pin); i += 2 {
		colons = append(colons, pin[i:i+2])
	}
	for _, p := range []string{strings.ToUpper(pin), strings.Join(colons, ":")} {
		o := f.opts
		o.SigningCertSHA256 = []string{p}
		if res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, o); err == nil || !strings.Contains(err.Error(), "SigningCertSHA256") {
			t.Errorf("SigningCertSHA256 %q: result %+v, %v; want a configuration error", p, res, err)
		}
	}
	o := f.opts
	o.SigningCertSHA256 = []string{pin}
	if res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, o); err != nil || !res.Passed {
		t.Fatalf("the pin as ParseCertSHA256 gives it: %+v, %v", res, err)
	}
}

// lastRepository lists the signatures in the registry's order but with those for which last
// is true at the end, and can make the token listing, the fetch of signature manifests or the
// reads of the token referrers fail.
type lastRepository struct {
	Repository
	last              func(ocispec.Descriptor) bool
	listErr, fetchErr error
	// fetchFails chooses the signatures whose fetch fails with fetchErr; nil means all.
	fetchFails func(ocispec.Descriptor) bool
	// tokenFetch, when set, is called before each fetch of anything but a signature manifest (a
	// token referrer's manifest or layer, a signature's envelope); an error it returns is the
	// fetch's.
	tokenFetch func(ctx context.Context, d ocispec.Descriptor) error
}

func (r lastRepository) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	if d.ArtifactType == nregistry.ArtifactTypeNotation { // a signature manifest
		if r.fetchErr != nil && (r.fetchFails == nil || r.fetchFails(d)) {
			return nil, r.fetchErr
		}
		return r.Repository.Fetch(ctx, d)
	}
	if r.tokenFetch != nil {
		if err := r.tokenFetch(ctx, d); err != nil {
			return nil, err
		}
	}
	return r.Repository.Fetch(ctx, d)
}

func (r lastRepository) ListSignatures(ctx context.Context, desc ocispec.Descriptor, fn func([]ocispec.Descriptor) error) error {
	var all []ocispec.Descriptor
	if err := r.Repository.ListSignatures(ctx, desc, func(page []ocispec.Descriptor) error { all = append(all, page...); return nil }); err != nil {
		return err
	}
	if r.last != nil {
		all = firstThose(all, func(d ocispec.Descriptor) bool { return !r.last(d) })
	}
	return fn(all)
}

func (r lastRepository) Referrers(ctx context.Context, desc ocispec.Descriptor, artifactType string, fn func([]ocispec.Descriptor) error) error {
	if r.listErr != nil && artifactType == referrer.ArtifactType {
		return r.listErr
	}
	return r.Repository.Referrers(ctx, desc, artifactType, fn)
}

// TestSignatureFlood: signatures attached to push the genuine one beyond MaxSignatures make a
// refusal that says so; with a pinned certificate, the signatures whose manifests name it are
// examined first, and the image verifies.
func TestSignatureFlood(t *testing.T) {
	f := newFixture(t)
	img, tok := f.attested(t, "flooded")
	for range 3 {
		f.sign(t, f.untrusted, img, tok, f.maaURL, time.Now())
	}
	pin := certSHA256(t, f.signer)
	genuine := func(d ocispec.Descriptor) bool { return namesPinnedCert(d, []string{pin}) }
	repo := lastRepository{Repository: f.repo, last: genuine}
	ref := f.reference + "@" + img.Digest.String()

	o := f.opts
	o.MaxSignatures = 2
	res, err := Verify(context.Background(), repo, ref, img, o)
	if err != nil {
		t.Fatal(err)
	}
	last := res.Checks[len(res.Checks)-1]
	if res.Passed || res.SignaturesNotExamined != 2 || !strings.Contains(last.Detail, "only 2 of the image's signatures were examined and 2 more are attached") {
		t.Fatalf("passed %v, not examined %d, detail %q", res.Passed, res.SignaturesNotExamined, last.Detail)
	}

	o.SigningCertSHA256 = []string{pin}
	if res, err = Verify(context.Background(), repo, ref, img, o); err != nil || !res.Passed || res.SignaturesNotExamined != 0 {
		t.Fatalf("with the pin: %+v, %v", res, err)
	}
}

// TestRegistryErrorsAreErrors: when the registry cannot be read, Verify returns an error naming
// what failed, not a refusal that blames the image (or tells to attach a token that is there).
func TestRegistryErrorsAreErrors(t *testing.T) {
	f := newFixture(t)
	img, tok := f.attested(t, "registry down")
	f.sign(t, f.untrusted, img, tok, f.maaURL, time.Now())
	genuine := func(d ocispec.Descriptor) bool { return namesPinnedCert(d, []string{certSHA256(t, f.signer)}) }
	down := errors.New("503 service unavailable")
	// failing makes the fetches of the token referrers' content of mediaType fail with down.
	failing := func(mediaType string) func(context.Context, ocispec.Descriptor) error {
		return func(_ context.Context, d ocispec.Descriptor) error {
			if d.MediaType == mediaType {
				return down
			}
			return nil
		}
	}
	// hanging makes the fetch of the token layer wait for the end of the verification's context.
	hanging := func(ctx context.Context, d ocispec.Descriptor) error {
		if d.MediaType != referrer.LayerMediaType {
			return nil
		}
		<-ctx.Done()
		return ctx.Err()
	}
	for _, tc := range []struct {
		name    string
		repo    lastRepository
		timeout time.Duration // of the verification; 0 for none
		is      error         // what the error must wrap
		want    string
	}{
		{"token referrers not listed", lastRepository{Repository: f.repo, listErr: down}, 0, down, "listing referrers of " + img.Digest.String()},
		{"signature not fetched", lastRepository{Repository: f.repo, fetchErr: down}, 0, down, "fetching signature"},
		// The untrusted signature is refused first; the genuine one, as far along, is unreadable.
		{"genuine signature not fetched, after a refused one", lastRepository{Repository: f.repo, fetchErr: down, fetchFails: genuine, last: genuine}, 0, down, "fetching signature"},
		// The token was attached: a refusal would send the user to attach it again.
		{"token referrer manifest not fetched", lastRepository{Repository: f.repo, tokenFetch: failing(ocispec.MediaTypeImageManifest)}, 0, down, "could not be read: token referrer sha256:"},
		{"token layer not fetched", lastRepository{Repository: f.repo, tokenFetch: failing(referrer.LayerMediaType)}, 0, down, "fetching the token layer"},
		{"token layer fetch times out", lastRepository{Repository: f.repo, tokenFetch: hanging}, time.Second, context.DeadlineExceeded, "1 of the 1 token referrers could not be read"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			res, err := Verify(ctx, tc.repo, f.reference+"@"+img.Digest.String(), img, f.opts)
			if err == nil || !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "oras-attest attach") {
				t.Fatalf("got %+v, %v; want an error containing %q", res, err, tc.want)
			}
		})
	}
}

// TestTokenReferrerRefusal: a token that is not among the referrers, all of which were read, is a
// refusal that tells the user to attach it, also beside a referrer that was read and is
// malformed (named in the detail); with more referrers than are listed, attaching is not
// suggested (the token may be attached beyond the bound).
func TestTokenReferrerRefusal(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name      string
		setup     func(t *testing.T, img ocispec.Descriptor)
		maxListed int
		want      []string // in the token-referrer check's detail
		notWant   string
	}{
		{name: "no referrer", want: []string{"(run oras-attest attach)"}},
		{name: "a malformed referrer", setup: func(t *testing.T, img ocispec.Descriptor) { pushMalformedReferrer(t, f, img) },
			want: []string{"(run oras-attest attach)", "1 referrer(s) are not well-formed token referrers", "2 layers"}},
		{name: "more referrers than listed", maxListed: 1, setup: func(t *testing.T, img ocispec.Descriptor) {
			f.attach(t, img, f.token(t, "another nonce 1"))
			f.attach(t, img, f.token(t, "another nonce 2"))
		}, want: []string{"more than 1 token referrers are attached"}, notWant: "oras-attest attach"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.maxListed > 0 {
				defer func(n int) { referrer.MaxListed = n }(referrer.MaxListed)
				referrer.MaxListed = tc.maxListed
			}
			img := f.pushImage(t, fmt.Sprintf("refused %d", i))
			b, err := binding.Compute(img.Digest.String(), keyID)
			if err != nil {
				t.Fatal(err)
			}
			f.sign(t, f.signer, img, f.token(t, b), f.maaURL, time.Now())
			if tc.setup != nil {
				tc.setup(t, img)
			}
			res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, f.opts)
			if err != nil {
				t.Fatalf("error %v, want a refusal", err)
			}
			detail := res.FailedDetail()
			if res.Passed || res.FailedCheck() != CheckReferrer || (tc.notWant != "" && strings.Contains(detail, tc.notWant)) {
				t.Fatalf("passed %v, failed check %q: %q", res.Passed, res.FailedCheck(), detail)
			}
			for _, w := range tc.want {
				if !strings.Contains(detail, w) {
					t.Fatalf("detail %q does not contain %q", detail, w)
				}
			}
		})
	}
}

// pushMalformedReferrer attaches to img a referrer of the token artifact type with two layers.
func pushMalformedReferrer(t *testing.T, f *fixture, img ocispec.Descriptor) {
	t.Helper()
	ctx := context.Background()
	var layers []ocispec.Descriptor
	for _, b := range []string{"a.b.c", "d.e.f"} {
		l, err := oras.PushBytes(ctx, f.remote, referrer.LayerMediaType, []byte(b))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	if _, err := oras.PackManifest(ctx, f.remote, oras.PackManifestVersion1_1, referrer.ArtifactType, oras.PackManifestOptions{Subject: &img, Layers: layers}); err != nil {
		t.Fatal(err)
	}
}

// TestKeySourceErrorIsAnError: when MAA's signing keys cannot be read (its /certs answers 503),
// Verify returns an error naming the key source, not a refusal of the token; a key set that was
// read and lacks the token's key still refuses it.
func TestKeySourceErrorIsAnError(t *testing.T) {
	f := newFixture(t)
	img, _ := f.attested(t, "keys unavailable")
	certsDown := attesttest.TLSServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "service unavailable", http.StatusServiceUnavailable)
	}))
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: other.Public(), KeyID: "other", Algorithm: "RS256", Use: "sig"}}})
	otherKeys, err := maa.NewStaticKeySet(jwks)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		keys   maa.KeySet
		failed string // the refusal's failed check; "" for an error
	}{
		{name: "/certs answers 503", keys: maa.NewRemoteKeySet(certsDown.URL, maa.JWKSOptions{HTTPClient: certsDown.Client()})},
		{name: "keys of another instance", keys: otherKeys, failed: CheckToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := f.opts
			o.TokenKeys = tc.keys
			res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, o)
			if tc.failed == "" {
				if err == nil || !errors.Is(err, maa.ErrKeySource) || !strings.Contains(err.Error(), "503") {
					t.Fatalf("got %+v, %v; want an error wrapping maa.ErrKeySource", res, err)
				}
				return
			}
			if err != nil || res.Passed || res.FailedCheck() != tc.failed {
				t.Fatalf("got %+v, %v; want a refusal at %q", res, err, tc.failed)
			}
		})
	}
}

// TestNotationConfigErrors: a Notation configuration that cannot be used for the image (no
// trust policy scope covers it, its trust store is missing, empty or holds a file that is not a
// certificate) is an error of Verify; a signature that does not verify under a usable one stays
// a refusal.
func TestNotationConfigErrors(t *testing.T) {
	f := newFixture(t)
	img, _ := f.attested(t, "notation configuration")
	certs, _ := f.signer.CertificateChain()
	// notationIn returns a Notation verifier trusting the fixture's signer for scopes, with its
	// trust store changed by edit.
	notationIn := func(t *testing.T, scopes []string, edit func(t *testing.T, storeDir string)) notation.Verifier {
		t.Helper()
		cfgDir := t.TempDir()
		if err := notationcfg.WriteTrust(cfgDir, notationcfg.Trust{PolicyName: "test", StoreName: "test", Scopes: scopes, Roots: certs, Identities: []string{"*"}}); err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(t, filepath.Join(cfgDir, dir.X509TrustStoreDir("ca", "test")))
		}
		nv, err := notationcfg.NewVerifier(filepath.Join(cfgDir, "trustpolicy.json"), cfgDir)
		if err != nil {
			t.Fatal(err)
		}
		return nv
	}
	emptyStore := func(t *testing.T, storeDir string) {
		if err := os.RemoveAll(storeDir); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(storeDir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var (
		noPolicy notation.NoApplicableTrustPolicyError
		store    truststore.TrustStoreError
		cert     truststore.CertificateError
	)
	tests := []struct {
		name     string
		notation func(t *testing.T) notation.Verifier
		as       any    // what the error must be (errors.As); nil for a refusal
		failed   string // the refusal's failed check
	}{
		{name: "no trust policy scope covers the image", as: &noPolicy,
			notation: func(t *testing.T) notation.Verifier { return notationIn(t, []string{"registry.example/other"}, nil) }},
		{name: "trust store missing", as: &store, notation: func(t *testing.T) notation.Verifier {
			return notationIn(t, []string{"*"}, func(t *testing.T, storeDir string) {
				if err := os.RemoveAll(storeDir); err != nil {
					t.Fatal(err)
				}
			})
		}},
		{name: "trust store empty", as: &cert, notation: func(t *testing.T) notation.Verifier { return notationIn(t, []string{"*"}, emptyStore) }},
		{name: "trust store file not a certificate", as: &cert, notation: func(t *testing.T) notation.Verifier {
			return notationIn(t, []string{"*"}, func(t *testing.T, storeDir string) {
				emptyStore(t, storeDir)
				if err := os.WriteFile(filepath.Join(storeDir, "root.pem"), []byte("not a certificate"), 0o600); err != nil {
					t.Fatal(err)
				}
			})
		}},
		{name: "signer not trusted", failed: CheckSignature, notation: func(t *testing.T) notation.Verifier { return f.notationTrusting(t, f.untrusted) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := f.opts
			o.Notation = tc.notation(t)
			res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, o)
			if tc.as == nil {
				if err != nil || res.Passed || res.FailedCheck() != tc.failed {
					t.Fatalf("got %+v, %v; want a refusal at %q", res, err, tc.failed)
				}
				return
			}
			if err == nil || !errors.As(err, tc.as) || !strings.Contains(err.Error(), "trust policy or trust store cannot be used") {
				t.Fatalf("got %+v, %v; want an error matching %T", res, err, tc.as)
			}
		})
	}
}

// TestBindingDetail: a token bound to the configured key id without its version (an image signed
// with the versionless key id, which the plugin accepts) is refused as before, and the binding
// check says so, naming both ids and the remedies; any other mismatch says only that the token is
// bound to another image or key.
func TestBindingDetail(t *testing.T) {
	f := newFixture(t)
	const short = "https://kv.vault.azure.net/keys/signer"
	other := f.pushImage(t, "another image")
	tests := []struct {
		name   string
		digest func(img ocispec.Descriptor) string
		key    string
		detail string
	}{
		{"the key id without version", func(img ocispec.Descriptor) string { return img.Digest.String() }, short,
			"the token is bound to key id " + short + ", not " + keyID + ": the image was signed with the key id without version; verify with that key id (oras-attest --key-id, the Ratify verifier's keyID) or sign with the versioned one"},
		{"another key", func(img ocispec.Descriptor) string { return img.Digest.String() }, "https://kv.vault.azure.net/keys/other",
			"the token is bound to another image or key than %s and " + keyID},
		{"another image, the key id without version", func(ocispec.Descriptor) string { return other.Digest.String() }, short,
			"the token is bound to another image or key than %s and " + keyID},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := f.pushImage(t, "binding "+string(rune('a'+i)))
			b, err := binding.Compute(tc.digest(img), tc.key)
			if err != nil {
				t.Fatal(err)
			}
			tok := f.token(t, b)
			f.sign(t, f.signer, img, tok, f.maaURL, time.Now())
			f.attach(t, img, tok)
			res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, f.opts)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.detail
			if strings.Contains(want, "%s") {
				want = fmt.Sprintf(want, img.Digest)
			}
			if res.Passed || res.FailedCheck() != CheckBinding || res.FailedDetail() != want {
				t.Fatalf("passed %v, failed %q: %q; want the binding check to fail with %q", res.Passed, res.FailedCheck(), res.FailedDetail(), want)
			}
		})
	}
}

func TestVersionless(t *testing.T) {
	tests := []struct{ keyID, want string }{
		{keyID, "https://kv.vault.azure.net/keys/signer"},
		{"https://kv.vault.azure.net/certificates/signer/abc", "https://kv.vault.azure.net/certificates/signer"},
		{"https://kv.vault.azure.net/keys/signer", ""},
		{"https://kv.vault.azure.net/secrets/signer/abc", ""},
		{"http://kv.vault.azure.net/keys/signer/abc", ""},
		{"signer-key", ""},
	}
	for _, tc := range tests {
		if got := versionless(tc.keyID); got != tc.want {
			t.Errorf("versionless(%q) = %q, want %q", tc.keyID, got, tc.want)
		}
	}
}

// TestVMPin: a rule set that pins the VM id of the token's machine passes, one that pins another
// fails the rules check, and the rules check of a set that reads no VM id says that any Trusted
// Launch VM's token passes it.
func TestVMPin(t *testing.T) {
	f := newFixture(t)
	img, tok := f.attested(t, "vm pin")
	_, claims, err := maa.ParseUnverified(tok)
	if err != nil {
		t.Fatal(err)
	}
	vmid, _ := claims[maa.ClaimVMID].(string)
	if vmid == "" {
		t.Fatalf("the emulator's token has no %s", maa.ClaimVMID)
	}
	pin := func(id string) *rules.Set {
		rs, err := rules.Parse("pinned.cel", []byte(fmt.Sprintf("build-vms: claims[%q].upperAscii() in [%q]\n", maa.ClaimVMID, id)))
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	tests := []struct {
		name       string
		rules      *rules.Set
		failed     string
		unpinnedVM bool // the rules check says no rule reads the VM id
	}{
		{"no pin", f.opts.Rules, "", true},
		{"this VM pinned", pin(strings.ToUpper(vmid)), "", false},
		{"another VM pinned", pin("7F3C2A9E-1B4D-4E8F-9A6B-2C5D8E1F0A3B"), CheckRules, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := f.opts
			o.Rules = tc.rules
			res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, o)
			if err != nil {
				t.Fatal(err)
			}
			if res.Passed != (tc.failed == "") || res.FailedCheck() != tc.failed {
				t.Fatalf("passed %v, failed %q (%+v); want failed %q", res.Passed, res.FailedCheck(), res.Checks, tc.failed)
			}
			if !res.Passed {
				return
			}
			var detail string
			for _, c := range res.Checks {
				if c.Name == CheckRules {
					detail = c.Detail
				}
			}
			if strings.Contains(detail, UnpinnedVM) != tc.unpinnedVM {
				t.Fatalf("rules check %q; want the unpinned-VM note: %v", detail, tc.unpinnedVM)
			}
		})
	}
}

// TestMaxTokenAgeBound: a maximum token age above the plugin's bound is a configuration error;
// at the bound the image verifies.
func TestMaxTokenAgeBound(t *testing.T) {
	f := newFixture(t)
	img, _ := f.attested(t, "max age")
	for _, tc := range []struct {
		age     time.Duration
		wantErr bool
	}{{maa.MaxSigningAge, false}, {maa.MaxSigningAge + time.Second, true}, {0, true}} {
		o := f.opts
		o.MaxTokenAge = tc.age
		res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, o)
		if tc.wantErr {
			if err == nil || !strings.Contains(err.Error(), "MaxTokenAge") {
				t.Errorf("MaxTokenAge %s: %v, want a configuration error", tc.age, err)
			}
			continue
		}
		if err != nil || !res.Passed {
			t.Errorf("MaxTokenAge %s: %v, %+v", tc.age, err, res)
		}
	}
}

// caSigner returns an RSA-2048 code-signing key whose certificate a CA of its own issued; the
// chain is the leaf and the CA.
func caSigner(t *testing.T, cn string) signature.LocalSigner {
	t.Helper()
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	name := func(cn string) pkix.Name {
		return pkix.Name{CommonName: cn, Organization: []string{"attested-kv tests"}, Country: []string{"ZZ"}, Province: []string{"Local"}}
	}
	ca := testcert.Issue(t, &x509.Certificate{
		Subject: name(cn + " CA"), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, nil, caKey.Public(), caKey)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	leaf := testcert.Issue(t, &x509.Certificate{
		Subject: name(cn), BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}, ca, key.Public(), caKey)
	s, err := signature.NewLocalSigner([]*x509.Certificate{leaf, ca}, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestKeyPin: a signature whose certificate a CA issued passes with the CA in the trust store,
// and, unless the signing certificate is pinned, its check says that any key the CA certifies
// would pass; a self-signed certificate in the trust store says nothing more.
func TestKeyPin(t *testing.T) {
	f := newFixture(t)
	issued := caSigner(t, "CA-issued signer")
	tests := []struct {
		name        string
		signer      signature.LocalSigner
		pins        []string
		unpinnedKey bool
	}{
		{"self-signed, no pin", f.signer, nil, false},
		{"CA-issued, no pin", issued, nil, true},
		{"CA-issued, pinned", issued, []string{certSHA256(t, issued)}, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, _ := f.attestedBy(t, "key pin "+string(rune('a'+i)), tc.signer)
			o := f.opts
			o.Notation = f.notationTrusting(t, tc.signer)
			o.SigningCertSHA256 = tc.pins
			res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, o)
			if err != nil || !res.Passed {
				t.Fatalf("%v, %+v", err, res)
			}
			if got := strings.Contains(res.Checks[0].Detail, UnpinnedKey); res.Checks[0].Name != CheckSignature || got != tc.unpinnedKey {
				t.Fatalf("%s check %q; want the unpinned-key note: %v", res.Checks[0].Name, res.Checks[0].Detail, tc.unpinnedKey)
			}
		})
	}
}

// TestRefusalNamesOtherSignatures: a refusal reports the signature that got furthest, and says
// where the image's other signatures stopped: the one the reader meant may be another (here, one
// whose token was not attached yet, beside one whose token is bound to another key).
func TestRefusalNamesOtherSignatures(t *testing.T) {
	f := newFixture(t)
	img := f.pushImage(t, "two signatures")
	other, err := binding.Compute(img.Digest.String(), keyID+"0")
	if err != nil {
		t.Fatal(err)
	}
	tok := f.token(t, other)
	f.sign(t, f.signer, img, tok, f.maaURL, time.Now())
	f.attach(t, img, tok) // bound to another key: fails the binding check
	mine, err := binding.Compute(img.Digest.String(), keyID)
	if err != nil {
		t.Fatal(err)
	}
	f.sign(t, f.signer, img, f.token(t, mine), f.maaURL, time.Now()) // its token not attached
	res, err := Verify(context.Background(), f.repo, f.reference+"@"+img.Digest.String(), img, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Passed || res.FailedCheck() != CheckBinding || !strings.Contains(res.FailedDetail(), "; the image's other signatures stopped at: token-referrer (signature sha256:") {
		t.Fatalf("passed %v, failed %s: %s", res.Passed, res.FailedCheck(), res.FailedDetail())
	}
}
