// Package attesttest builds, for tests, the real attestation chain on loopback: a TPM 2.0
// simulator (the Microsoft reference implementation in go-tpm-tools) provisioned like an Azure
// vTPM, an MAA emulator behind TLS that trusts the simulator's vTPM CA, and the production MAA
// client; plus self-signed code-signing keys for Notation signatures.
package attesttest

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
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/notaryproject/notation-core-go/signature"
	_ "github.com/notaryproject/notation-core-go/signature/jws" // registers application/jose+json
	nregistry "github.com/notaryproject/notation-go/registry"
	"github.com/olareg/olareg"
	olacfg "github.com/olareg/olareg/config"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/attested-kv/attested-kv/internal/binding"
	emu "github.com/attested-kv/attested-kv/internal/emulator/maa"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/tpm"
	"github.com/attested-kv/attested-kv/internal/tpmsim"
)

// Chain is one TPM and one MAA instance.
type Chain struct {
	// TPM is the simulator's transport; Device reads evidence from it.
	TPM    transport.TPM
	Device *tpm.Device
	// Server serves the emulator over TLS at URL; Emulator records its requests.
	Server   *httptest.Server
	Emulator *emu.Server
	URL      string
	// Client is the production MAA client, trusting Server's certificate.
	Client *maa.Client
	// Keys are the instance's published token keys, fetched over TLS.
	Keys maa.KeySet
	// TCGLog is the measured-boot log, when the chain was built WithSecureBoot.
	TCGLog []byte
}

// Option configures New.
type Option func(*options)

type options struct {
	secureBoot      bool
	policyAuthorize func(*http.Request) error
}

// WithPolicyAuthorizer makes the emulator authorize GET/PUT /policies with f (e.g. validating an
// Entra ID token from the Entra emulator), as real MAA does. Without it the emulator refuses every
// policy request.
func WithPolicyAuthorizer(f func(*http.Request) error) Option {
	return func(o *options) { o.policyAuthorize = f }
}

// TLSServer serves h over TLS on loopback until t ends. httptest servers share one certificate,
// so the Chain's Server.Client() trusts it too.
func TLSServer(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewTLSServer(h)
	t.Cleanup(s.Close)
	return s
}

// WithSecureBoot measures a Secure Boot firmware log into the TPM (tpmsim.BuildEventLog), so the
// emulator, which takes that log's keys as the default Secure Boot keys, issues secureboot, the
// db/dbx and default-keys claims true and the debugger claims clean, as for a healthy Trusted
// Launch VM: the baseline rules pass. Without it the TPM has no event log, those claims are false
// and the debugger claims fail closed.
func WithSecureBoot() Option { return func(o *options) { o.secureBoot = true } }

type nopClose struct{ transport.TPM }

func (nopClose) Close() error { return nil }

// New builds a Chain; everything is closed when t ends. The simulator is a process-wide
// singleton: tests using New must not run in parallel.
func New(t testing.TB, opts ...Option) *Chain {
	t.Helper()
	var o options
	for _, f := range opts {
		f(&o)
	}
	ctx := context.Background()
	ca, err := tpm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	sim, err := simulator.Get()
	if err != nil {
		t.Fatalf("TPM simulator: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	tp := nopClose{transport.FromReadWriter(sim)}
	c := &Chain{TPM: tp}
	if o.secureBoot {
		log, extends, err := tpmsim.BuildEventLog(tpmsim.EventLogOptions{SecureBoot: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := tpmsim.ApplyEventLog(ctx, tp, extends); err != nil {
			t.Fatal(err)
		}
		c.TCGLog = log
	}
	if _, err := tpm.Provision(ctx, tp, ca, tpm.ProvisionOptions{}); err != nil {
		t.Fatal(err)
	}
	logPath := ""
	if c.TCGLog != nil {
		logPath = t.TempDir() + "/binary_bios_measurements"
		if err := writeFile(logPath, c.TCGLog); err != nil {
			t.Fatal(err)
		}
	}
	c.Device = tpm.New(tp, tpm.WithEventLogPath(logPath), tpm.WithEphemeralKeyCache(t.TempDir()))

	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(ca.Root)
	inters.AddCert(ca.Intermediate)
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	// The emulator takes the simulator's Secure Boot keys as the platform's defaults, as MAA takes
	// Microsoft's on Azure.
	sbKeys, err := tpmsim.SecureBootCertificates()
	if err != nil {
		t.Fatal(err)
	}
	var defaultKeys [][sha256.Size]byte
	for _, k := range sbKeys {
		defaultKeys = append(defaultKeys, sha256.Sum256(k.Raw))
	}
	e, err := emu.New(emu.Config{TrustedRoots: roots, Intermediates: inters, Issuer: srv.URL, AuthorizePolicyRequest: o.policyAuthorize,
		DefaultSecureBootKeys: defaultKeys})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = e.Handler()
	c.Server, c.Emulator, c.URL = srv, e, srv.URL
	if c.Client, err = maa.NewClient(srv.URL, maa.ClientOptions{HTTPClient: srv.Client(), RetryBaseDelay: time.Millisecond, RetryMaxDelay: 5 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	c.Keys = maa.NewRemoteKeySet(srv.URL, maa.JWKSOptions{HTTPClient: srv.Client()})
	return c
}

// Token returns a real token for nonce, from this TPM's evidence.
func (c *Chain) Token(t testing.TB, nonce string) string {
	t.Helper()
	raw, err := c.Client.AttestNonce(context.Background(), c.Device, nonce)
	if err != nil {
		t.Fatalf("attesting: %v", err)
	}
	return raw
}

// Signer returns a self-signed RSA-2048 code-signing key whose subject carries C, ST and O, as
// Notation's trusted identities require.
func Signer(t testing.TB, cn string) signature.LocalSigner {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"attested-kv tests"}, Country: []string{"ZZ"}, Province: []string{"Local"}},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	s, err := signature.NewLocalSigner([]*x509.Certificate{cert}, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeFile(path string, b []byte) error { return os.WriteFile(path, b, 0o644) }

// PushImage pushes a small image manifest to repo and returns its descriptor.
func PushImage(t testing.TB, repo content.Pusher, payload string) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	layer, err := oras.PushBytes(ctx, repo, "application/vnd.oci.image.layer.v1.tar", []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	d, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, "application/vnd.example.app", oras.PackManifestOptions{
		Layers: []ocispec.Descriptor{layer}, ManifestAnnotations: map[string]string{ocispec.AnnotationCreated: "2026-01-01T00:00:00Z"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// SignImage attaches to subject a JWS Notation signature by s carrying the signed attributes the
// attested-kv plugin sets for tokenRaw and issuer, with signing time at. It lets tests build
// signatures the plugin would refuse to make (another token, another issuer, another time).
func SignImage(t testing.TB, repo nregistry.Repository, s signature.Signer, subject ocispec.Descriptor, tokenRaw, issuer string, at time.Time) {
	t.Helper()
	payload, _ := json.Marshal(map[string]any{"targetArtifact": subject})
	sum := sha256.Sum256([]byte(tokenRaw))
	env, err := signature.NewEnvelope("application/jose+json")
	if err != nil {
		t.Fatal(err)
	}
	blob, err := env.Sign(&signature.SignRequest{
		Payload: signature.Payload{ContentType: binding.NotaryPayloadType, Content: payload}, Signer: s, SigningTime: at,
		SigningScheme: signature.SigningSchemeX509,
		ExtendedSignedAttributes: []signature.Attribute{
			{Key: binding.AttrTokenSHA256, Value: hex.EncodeToString(sum[:])},
			{Key: binding.AttrIssuer, Value: issuer},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The manifest annotation notation-go writes when it signs: the chain's SHA-256 thumbprints.
	content, err := env.Verify()
	if err != nil {
		t.Fatal(err)
	}
	var thumbprints []string
	for _, c := range content.SignerInfo.CertificateChain {
		sum := sha256.Sum256(c.Raw)
		thumbprints = append(thumbprints, hex.EncodeToString(sum[:]))
	}
	tp, _ := json.Marshal(thumbprints)
	annotations := map[string]string{"io.cncf.notary.x509chain.thumbprint#S256": string(tp)}
	if _, _, err := repo.PushSignature(context.Background(), "application/jose+json", blob, subject, annotations); err != nil {
		t.Fatal(err)
	}
}

// Registry starts an in-process OCI registry with the Referrers API (olareg, in memory) and
// returns the repository NAME/app on it, over plain HTTP, and its name.
func Registry(t testing.TB) (*remote.Repository, string) {
	t.Helper()
	reg := olareg.New(olacfg.Config{Storage: olacfg.ConfigStorage{StoreType: olacfg.StoreMem}})
	srv := httptest.NewServer(reg)
	t.Cleanup(func() { srv.Close(); reg.Close() })
	name := strings.TrimPrefix(srv.URL, "http://") + "/app"
	r, err := remote.NewRepository(name)
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true
	return r, name
}
