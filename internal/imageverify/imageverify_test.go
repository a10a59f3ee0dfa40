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
	"math/big"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/notaryproject/notation-core-go/signature"
	_ "github.com/notaryproject/notation-core-go/signature/jws"
	"github.com/olareg/olareg"
	"github.com/olareg/olareg/config"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/attested-kv/attested-kv/internal/binding"
	emu "github.com/attested-kv/attested-kv/internal/emulator/maa"
	"github.com/attested-kv/attested-kv/internal/gate"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/notationcfg"
	"github.com/attested-kv/attested-kv/internal/referrer"
	"github.com/attested-kv/attested-kv/internal/tpm"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// The fixture is real end to end except for the Key Vault signer (a local key here): a TPM
// simulator provisioned like an Azure vTPM, the MAA emulator, the production MAA client, an
// in-process registry with the Referrers API, and notation-go's verifier with a trust store on disk.

const keyID = "https://kv.vault.azure.net/keys/signer/0123456789abcdef0123456789abcdef"

type nopClose struct{ transport.TPM }

func (nopClose) Close() error { return nil }

type fixture struct {
	maaURL    string
	maaClient *maa.Client
	keys      maa.KeySet
	dev       *tpm.Device
	repo      Repository
	remote    *remote.Repository
	reference string
	signer    signature.LocalSigner
	untrusted signature.LocalSigner
	opts      Options
}

func selfSigned(t *testing.T, cn string) signature.LocalSigner {
	t.Helper()
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn, Organization: []string{"test"}, Country: []string{"ZZ"}, Province: []string{"Local"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, BasicConstraintsValid: true,
	}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	cert, _ := x509.ParseCertificate(der)
	s, err := signature.NewLocalSigner([]*x509.Certificate{cert}, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	ca, err := tpm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	tp := nopClose{transport.FromReadWriter(sim)}
	if _, err := tpm.Provision(ctx, tp, ca, tpm.ProvisionOptions{}); err != nil {
		t.Fatal(err)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(ca.Root)
	inters.AddCert(ca.Intermediate)
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	e, err := emu.New(emu.Config{TrustedRoots: roots, Intermediates: inters, Issuer: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = e.Handler()
	client, err := maa.NewClient(srv.URL, maa.ClientOptions{HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}

	reg := olareg.New(config.Config{Storage: config.ConfigStorage{StoreType: config.StoreMem}})
	regSrv := httptest.NewServer(reg)
	t.Cleanup(func() { regSrv.Close(); reg.Close() })
	name := strings.TrimPrefix(regSrv.URL, "http://") + "/app"
	r, err := remote.NewRepository(name)
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true

	f := &fixture{
		maaURL: srv.URL, maaClient: client, dev: tpm.New(tp, tpm.WithEventLogPath("")),
		keys: maa.NewRemoteKeySet(srv.URL, maa.JWKSOptions{HTTPClient: srv.Client()}),
		repo: NewRepository(r), remote: r, reference: name,
		signer: selfSigned(t, "attested signer"), untrusted: selfSigned(t, "someone else"),
	}
	cfgDir := t.TempDir()
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
	f.opts = Options{Notation: nv, AttestationURL: srv.URL, TokenKeys: f.keys, KeyID: keyID, MaxTokenAge: 5 * time.Minute, Rules: rs}
	return f
}

func (f *fixture) pushImage(t *testing.T, content string) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	layer, err := oras.PushBytes(ctx, f.remote, "application/vnd.oci.image.layer.v1.tar", []byte(content))
	if err != nil {
		t.Fatal(err)
	}
	d, err := oras.PackManifest(ctx, f.remote, oras.PackManifestVersion1_1, "application/vnd.example.app", oras.PackManifestOptions{
		Layers: []ocispec.Descriptor{layer}, ManifestAnnotations: map[string]string{ocispec.AnnotationCreated: "2026-01-01T00:00:00Z"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// token gets a real token bound to nonce.
func (f *fixture) token(t *testing.T, nonce string) string {
	t.Helper()
	raw, err := f.maaClient.AttestNonce(context.Background(), f.dev, nonce)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// sign attaches a JWS signature of subject carrying the attributes the plugin sets.
func (f *fixture) sign(t *testing.T, s signature.LocalSigner, subject ocispec.Descriptor, tokenRaw, issuer string, at time.Time) {
	t.Helper()
	payload, _ := json.Marshal(map[string]any{"targetArtifact": subject})
	sum := sha256.Sum256([]byte(tokenRaw))
	env, _ := signature.NewEnvelope("application/jose+json")
	blob, err := env.Sign(&signature.SignRequest{
		Payload: signature.Payload{ContentType: gate.PayloadType, Content: payload}, Signer: s, SigningTime: at,
		SigningScheme: signature.SigningSchemeX509,
		ExtendedSignedAttributes: []signature.Attribute{
			{Key: gate.AttrTokenSHA256, Value: hex.EncodeToString(sum[:])},
			{Key: gate.AttrIssuer, Value: issuer},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.repo.PushSignature(context.Background(), "application/jose+json", blob, subject, nil); err != nil {
		t.Fatal(err)
	}
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
	tests := []struct {
		name   string
		setup  func(t *testing.T, img ocispec.Descriptor)
		opts   func(o *Options)
		failed string
	}{
		{name: "signed from an attested machine", setup: func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(img, keyID))
			f.sign(t, f.signer, img, tok, f.maaURL, time.Now())
			f.attach(t, img, tok)
		}},
		{name: "no signature", setup: func(t *testing.T, img ocispec.Descriptor) {
			f.attach(t, img, f.token(t, bind(img, keyID)))
		}, failed: CheckSignature},
		{name: "signed by an untrusted key", setup: func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(img, keyID))
			f.sign(t, f.untrusted, img, tok, f.maaURL, time.Now())
			f.attach(t, img, tok)
		}, failed: CheckSignature},
		{name: "no token referrer", setup: func(t *testing.T, img ocispec.Descriptor) {
			f.sign(t, f.signer, img, f.token(t, bind(img, keyID)), f.maaURL, time.Now())
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
		{name: "token older than allowed at signing", setup: func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(img, keyID))
			f.sign(t, f.signer, img, tok, f.maaURL, time.Now().Add(10*time.Minute))
			f.attach(t, img, tok)
		}, failed: CheckAge},
		{name: "claim rule false", setup: func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(img, keyID))
			f.sign(t, f.signer, img, tok, f.maaURL, time.Now())
			f.attach(t, img, tok)
		}, opts: func(o *Options) { o.Rules = rules.Baseline() }, failed: CheckRules},
		{name: "token keys of another instance", setup: func(t *testing.T, img ocispec.Descriptor) {
			tok := f.token(t, bind(img, keyID))
			f.sign(t, f.signer, img, tok, f.maaURL, time.Now())
			f.attach(t, img, tok)
		}, opts: func(o *Options) {
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
