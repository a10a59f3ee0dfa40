package gate

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/notaryproject/notation-core-go/signature"
	"github.com/notaryproject/notation-plugin-framework-go/plugin"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/emulator/tsa"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/token"
	"github.com/attested-kv/attested-kv/internal/tpm"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// These tests run the gate with a real TPM (go-tpm-tools' simulator, provisioned like an Azure
// vTPM), the production MAA client and verifier, and the MAA emulator. Key Vault is replaced by a
// counting local signer here (internal/keyvault has its own tests against the Key Vault emulator;
// the end-to-end tests run both through notation), so each refusal can assert that nothing reached
// the signer. TestKeyVaultFaults is the exception: it signs through the production Key Vault
// source, against the Entra ID and Key Vault emulators.

const (
	testKeyID  = "https://kv.vault.azure.net/keys/signer/0123456789abcdef0123456789abcdef"
	testDigest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
)

// fixture is one TPM, one MAA instance, one signer.
type fixture struct {
	chain    *attesttest.Chain
	maaSrv   *httptest.Server
	dev      *tpm.Device
	signer   signature.LocalSigner
	signerN  atomic.Int32 // KeySource.Open calls: Key Vault contacted
	tokenDir string
	cfg      map[string]string
}

func newFixture(t testing.TB, opts ...attesttest.Option) *fixture {
	t.Helper()
	chain := attesttest.New(t, opts...)
	rulesFile := filepath.Join(t.TempDir(), "rules.cel")
	// The emulator derives the secure-boot claims from the TCG log, and this TPM has none, so the
	// default rules here check what the evidence does prove.
	if err := os.WriteFile(rulesFile, []byte("attestation-type: claims[\"x-ms-attestation-type\"] == \"azurevm\"\npcrs: 7.0 in claims[\"x-ms-azurevm-attested-pcrs\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := &fixture{chain: chain, maaSrv: chain.Server, dev: chain.Device, signer: attesttest.Signer(t, "attested-kv test signer"), tokenDir: t.TempDir()}
	f.cfg = map[string]string{KeyAttestationURL: chain.URL, KeyTokenDir: f.tokenDir, KeyRules: rulesFile}
	return f
}

// simAttester attests with the fixture's TPM through the production client.
type simAttester struct {
	client *maa.Client
	dev    maa.EvidenceSource // the fixture's *tpm.Device, or a faultyTPM around it
	nonce  string             // if set, attest with this nonce instead (binding mismatch)
}

func (a simAttester) Attest(ctx context.Context, nonce string) (string, error) {
	if a.nonce != "" {
		nonce = a.nonce
	}
	return a.client.AttestNonce(ctx, a.dev, nonce)
}

// faultyTPM is a TPM whose evidence or decryption fails with a given error (wrapped as
// internal/tpm wraps its own), and otherwise the TPM it wraps.
type faultyTPM struct {
	*tpm.Device
	evidenceErr, decryptErr error
}

func (d faultyTPM) Evidence(ctx context.Context) (*tpm.Evidence, error) {
	if d.evidenceErr != nil {
		return nil, d.evidenceErr
	}
	return d.Device.Evidence(ctx)
}

func (d faultyTPM) DecryptWithEphemeralKey(ctx context.Context, encKeyPub, ciphertext []byte) ([]byte, error) {
	if d.decryptErr != nil {
		return nil, d.decryptErr
	}
	return d.Device.DecryptWithEphemeralKey(ctx, encKeyPub, ciphertext)
}

// nopClose is the fixture's TPM for a second Device, which must not close it.
type nopClose struct{ transport.TPM }

func (nopClose) Close() error { return nil }

func (f *fixture) deps(t testing.TB) Deps {
	return Deps{
		Attester: func(_ context.Context, c Config, log *slog.Logger) (Attester, error) {
			cl, err := maa.NewClient(c.AttestationURL, maa.ClientOptions{HTTPClient: f.maaSrv.Client(), Logger: log, RetryBaseDelay: time.Millisecond, RetryMaxDelay: 5 * time.Millisecond})
			return simAttester{client: cl, dev: f.dev}, err
		},
		Verifier: func(c Config) (TokenVerifier, error) {
			return maa.NewVerifier(maa.VerifierOptions{
				Instance: c.AttestationURL,
				Keys:     maa.NewRemoteKeySet(c.AttestationURL, maa.JWKSOptions{HTTPClient: f.maaSrv.Client()}),
				MaxAge:   c.MaxTokenAge,
			})
		},
		Key: func(string, Config, *slog.Logger) (KeySource, error) {
			return fakeKey{f}, nil
		},
	}
}

// with returns the fixture's plugin config with the key-value pairs kv set.
func (f *fixture) with(kv ...string) map[string]string {
	m := map[string]string{}
	for k, v := range f.cfg {
		m[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func request(envType string, cfg map[string]string) *plugin.GenerateEnvelopeRequest {
	payload, _ := json.Marshal(map[string]any{"targetArtifact": map[string]any{
		"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": testDigest, "size": 1234,
	}})
	return &plugin.GenerateEnvelopeRequest{
		ContractVersion: "1.0", KeyID: testKeyID, PayloadType: PayloadType,
		SignatureEnvelopeType: envType, Payload: payload, PluginConfig: cfg,
	}
}

// TestGenerateEnvelopeSignsOnlyAfterAttestation signs with each envelope type: the envelope
// verifies, carries the stored token's SHA-256 and issuer as signed attributes and the expiry
// notation asked for, and the stored token is bound to this image digest and key id.
func TestGenerateEnvelopeSignsOnlyAfterAttestation(t *testing.T) {
	f := newFixture(t)
	g := New(f.deps(t))
	wantNonce, err := binding.Compute(testDigest, testKeyID)
	if err != nil {
		t.Fatal(err)
	}
	const expiry = 90 * 24 * time.Hour // notation sign --expiry 90d
	for _, envType := range []string{"application/jose+json", "application/cose"} {
		t.Run(envType, func(t *testing.T) {
			req := request(envType, f.cfg)
			req.ExpiryDurationInSeconds = uint64(expiry / time.Second)
			rsp, err := g.GenerateEnvelope(context.Background(), req)
			if err != nil {
				t.Fatalf("GenerateEnvelope: %v", err)
			}
			content := verifiedEnvelope(t, envType, rsp.SignatureEnvelope)
			attrs := map[any]any{}
			for _, a := range content.SignerInfo.SignedAttributes.ExtendedAttributes {
				attrs[a.Key] = a.Value
			}
			entries, err := token.NewStore(f.tokenDir).List(testDigest)
			if err != nil {
				t.Fatal(err)
			}
			if attrs[AttrTokenSHA256] != entries[0].SHA256 || rsp.Annotations[AnnotationTokenSHA256] != entries[0].SHA256 {
				t.Fatalf("signed attribute %v, annotation %v, stored token %s", attrs[AttrTokenSHA256], rsp.Annotations, entries[0].SHA256)
			}
			if attrs[AttrIssuer] != f.maaSrv.URL {
				t.Fatalf("issuer attribute %v", attrs[AttrIssuer])
			}
			// Both envelopes keep whole seconds, and the expiry is a whole number of them after
			// the signing time.
			signed := content.SignerInfo.SignedAttributes
			if got := signed.Expiry.Sub(signed.SigningTime); got != expiry {
				t.Fatalf("expiry %v, signing time %v: %v apart, want %v", signed.Expiry, signed.SigningTime, got, expiry)
			}
			for _, e := range entries {
				_, claims, err := maa.ParseUnverified(e.Raw)
				if err != nil {
					t.Fatal(err)
				}
				if n, err := maa.ClientPayloadNonce(claims); n != wantNonce {
					t.Fatalf("stored token's nonce %q (%v), want the binding of %s and %s, %s", n, err, testDigest, testKeyID, wantNonce)
				}
			}
		})
	}
}

// TestLongestExpiry: the longest expiry a time.Duration holds, 9223372036 seconds (math.MaxInt64
// nanoseconds, about 292 years), is signed as asked; a second more is refused (TestFailClosed).
func TestLongestExpiry(t *testing.T) {
	const longest = 9223372036
	f := newFixture(t)
	req := request("application/jose+json", f.cfg)
	req.ExpiryDurationInSeconds = longest
	rsp, err := New(f.deps(t)).GenerateEnvelope(context.Background(), req)
	if err != nil {
		t.Fatalf("GenerateEnvelope with an expiry of %d seconds: %v", longest, err)
	}
	content := verifiedEnvelope(t, req.SignatureEnvelopeType, rsp.SignatureEnvelope)
	signed := content.SignerInfo.SignedAttributes
	if got, want := signed.Expiry.Sub(signed.SigningTime), longest*time.Second; got != want {
		t.Fatalf("expiry %v after the signing time, want %v", got, want)
	}
}

// TestFailClosed: every failure between evidence and a verified token stops the request with the
// right protocol code, a message naming the cause, and no call to the signer.
func TestFailClosed(t *testing.T) {
	f := newFixture(t)
	closed := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		a := ln.Addr().String()
		ln.Close()
		return a
	}()
	status := func(code int) *httptest.Server {
		s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			fmt.Fprintf(w, `{"error":{"code":"Injected","message":"status %d"}}`, code)
		}))
		t.Cleanup(s.Close)
		return s
	}
	base := f.deps(t)
	// withTPM attests through dev instead of the fixture's TPM.
	withTPM := func(dev maa.EvidenceSource) func(d Deps) Deps {
		return func(d Deps) Deps {
			d.Attester = func(_ context.Context, c Config, log *slog.Logger) (Attester, error) {
				cl, err := maa.NewClient(c.AttestationURL, maa.ClientOptions{HTTPClient: f.maaSrv.Client(), Logger: log})
				return simAttester{client: cl, dev: dev}, err
			}
			return d
		}
	}
	rc := errors.New("TPM_RC_HANDLE (handle 1): the handle is not correct for the use") // stands for a TPM response code
	tests := []struct {
		name    string
		cfg     map[string]string
		deps    func(d Deps) Deps
		req     func(r *plugin.GenerateEnvelopeRequest)
		code    plugin.ErrorCode
		message string
		prefix  string // what the message starts with, when set
	}{
		// The TPM's faults and this machine's setup are not refusals: ERROR, or VALIDATION_ERROR
		// for what the user fixes in the config or the machine.
		{name: "TCG log unreadable (a directory)", deps: withTPM(tpm.New(nopClose{f.chain.TPM}, tpm.WithEventLogPath(t.TempDir()))),
			code: plugin.ErrorCodeValidation, message: "TCG event log unreadable"},
		{name: "no AK (not an Azure vTPM)", deps: withTPM(faultyTPM{Device: f.dev, evidenceErr: fmt.Errorf("%w: %w", tpm.ErrNoAK, rc)}),
			code: plugin.ErrorCodeValidation, message: "no attestation key"},
		{name: "AK of the wrong type", deps: withTPM(faultyTPM{Device: f.dev, evidenceErr: tpm.ErrAKType}),
			code: plugin.ErrorCodeValidation, message: "not an RSA restricted signing key"},
		{name: "no AK certificate", deps: withTPM(faultyTPM{Device: f.dev, evidenceErr: fmt.Errorf("%w: %w", tpm.ErrNoAKCert, rc)}),
			code: plugin.ErrorCodeValidation, message: "no AK certificate"},
		{name: "AK certificate not provisioned yet", deps: withTPM(faultyTPM{Device: f.dev, evidenceErr: fmt.Errorf("%w (issuer %q)", tpm.ErrAKCertNotProvisioned, "MICROSOFT AZURE TRUSTED VM RSA")}),
			code: plugin.ErrorCodeGeneric, message: "attest again in a few minutes"},
		{name: "quote does not verify", deps: withTPM(faultyTPM{Device: f.dev, evidenceErr: fmt.Errorf("%w: %w", tpm.ErrQuote, rsa.ErrVerification)}),
			code: plugin.ErrorCodeGeneric, message: "TPM quote does not verify"},
		{name: "TPM decryption fails", deps: withTPM(faultyTPM{Device: f.dev, decryptErr: fmt.Errorf("%w: %w", tpm.ErrDecrypt, rc)}),
			code: plugin.ErrorCodeGeneric, message: "TPM decryption"},
		{name: "an attester error of no known kind", deps: func(d Deps) Deps {
			d.Attester = func(context.Context, Config, *slog.Logger) (Attester, error) {
				return attesterFunc(func(context.Context, string) (string, error) { return "", errors.New("something new") }), nil
			}
			return d
		}, code: plugin.ErrorCodeGeneric, message: "something new"},
		// The ephemeral key's PCR policy refuses to decrypt: the TPM's state changed since the
		// evidence MAA judged, so the token is not for this state.
		{name: "TPM state changed since the evidence", deps: withTPM(faultyTPM{Device: f.dev, decryptErr: fmt.Errorf("%w: PCRs 0-7 changed: %w", tpm.ErrStateChanged, rc)}),
			code: plugin.ErrorCodeAccessDenied, message: "TPM state changed"},
		{name: "TPM unavailable", cfg: f.with(KeyTPM, "swtpm:"+closed), deps: func(d Deps) Deps {
			d.Attester = func(ctx context.Context, c Config, log *slog.Logger) (Attester, error) {
				cl, _ := maa.NewClient(c.AttestationURL, maa.ClientOptions{HTTPClient: f.maaSrv.Client()})
				return &tpmAttester{client: cl, cfg: c, log: log}, nil
			}
			return d
		}, code: plugin.ErrorCodeGeneric, message: "TPM unavailable"},
		{name: "MAA down", cfg: f.with(KeyAttestationURL, "https://"+closed), code: plugin.ErrorCodeGeneric, message: "unavailable"},
		{name: "MAA 500", cfg: f.with(KeyAttestationURL, status(500).URL), code: plugin.ErrorCodeGeneric, message: "HTTP 500"},
		{name: "MAA 429", cfg: f.with(KeyAttestationURL, status(429).URL), code: plugin.ErrorCodeThrottled, message: "429"},
		{name: "MAA refuses the evidence", cfg: f.with(KeyAttestationURL, status(400).URL), code: plugin.ErrorCodeAccessDenied, message: "HTTP 400"},
		{name: "token signed by a key the instance does not publish", deps: func(d Deps) Deps {
			d.Verifier = func(c Config) (TokenVerifier, error) {
				other, _ := rsa.GenerateKey(rand.Reader, 2048)
				jwks := fmt.Sprintf(`{"keys":[{"kty":"RSA","kid":"other","n":"%s","e":"AQAB"}]}`, b64u(other.N.Bytes()))
				ks, err := maa.NewStaticKeySet([]byte(jwks))
				if err != nil {
					return nil, err
				}
				return maa.NewVerifier(maa.VerifierOptions{Instance: c.AttestationURL, Keys: ks, MaxAge: c.MaxTokenAge})
			}
			return d
		}, code: plugin.ErrorCodeAccessDenied, message: `check "key"`},
		{name: "token from another instance", deps: func(d Deps) Deps {
			d.Verifier = func(c Config) (TokenVerifier, error) {
				return maa.NewVerifier(maa.VerifierOptions{Instance: "https://other.attest.azure.net", Keys: maa.NewRemoteKeySet(c.AttestationURL, maa.JWKSOptions{HTTPClient: f.maaSrv.Client()}), MaxAge: c.MaxTokenAge})
			}
			return d
		}, code: plugin.ErrorCodeAccessDenied, message: `check "issuer"`},
		{name: "binding mismatch", deps: func(d Deps) Deps {
			d.Attester = func(_ context.Context, c Config, _ *slog.Logger) (Attester, error) {
				cl, err := maa.NewClient(c.AttestationURL, maa.ClientOptions{HTTPClient: f.maaSrv.Client()})
				return simAttester{client: cl, dev: f.dev, nonce: strings.Repeat("0", 64)}, err
			}
			return d
		}, code: plugin.ErrorCodeAccessDenied, message: `check "nonce"`},
		{name: "token too old", deps: func(d Deps) Deps {
			d.Verifier = func(c Config) (TokenVerifier, error) {
				return maa.NewVerifier(maa.VerifierOptions{Instance: c.AttestationURL, Keys: maa.NewRemoteKeySet(c.AttestationURL, maa.JWKSOptions{HTTPClient: f.maaSrv.Client()}), MaxAge: c.MaxTokenAge,
					Now: func() time.Time { return time.Now().Add(7 * time.Minute) }})
			}
			return d
		}, code: plugin.ErrorCodeAccessDenied, message: "max age is 5m0s"},
		{name: "claim rule false (baseline: no secure boot measured)", cfg: f.with(KeyRules, ""), code: plugin.ErrorCodeAccessDenied, message: `claim rule "secure-boot"`},
		{name: "rule file missing", cfg: f.with(KeyRules, "/nonexistent/rules.cel"), code: plugin.ErrorCodeValidation, message: "claim rules: open /nonexistent/rules.cel"},
		{name: "rule file missing and MAA down: the rules are reported", cfg: f.with(KeyRules, "/nonexistent/rules.cel", KeyAttestationURL, "https://"+closed), code: plugin.ErrorCodeValidation, message: "rules.cel"},
		{name: "no attestation_url", cfg: f.with(KeyAttestationURL, ""), code: plugin.ErrorCodeValidation, message: KeyAttestationURL},
		// A refusal made before the log is open is redacted as the others are: here the log
		// file's path, quoted by the error, holds what looks like a token.
		{name: "log_file refused, its path redacted", cfg: f.with(KeyLogFile, "/nonexistent/eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln/plugin.log"), code: plugin.ErrorCodeValidation, message: "/nonexistent/[redacted token]/plugin.log"},
		{name: "unknown config key", cfg: f.with("max_token_ages", "1h"), code: plugin.ErrorCodeValidation, message: "max_token_ages"},
		{name: "client_id without credential_type", cfg: f.with(KeyClientID, "00000000-0000-0000-0000-000000000001"), code: plugin.ErrorCodeValidation, message: "client_id"},
		{name: "contract version 2.0", req: func(r *plugin.GenerateEnvelopeRequest) { r.ContractVersion = "2.0" }, code: plugin.ErrorCodeUnsupportedContractVersion},
		{name: "payload without target", req: func(r *plugin.GenerateEnvelopeRequest) { r.Payload = []byte(`{}`) }, code: plugin.ErrorCodeValidation, message: "targetArtifact"},
		{name: "payload type", req: func(r *plugin.GenerateEnvelopeRequest) { r.PayloadType = "text/plain" }, code: plugin.ErrorCodeValidation, message: "payload type"},
		{name: "expiry beyond a time.Duration", req: func(r *plugin.GenerateEnvelopeRequest) { r.ExpiryDurationInSeconds = 1<<55 + 1 }, code: plugin.ErrorCodeValidation, message: "signature expiry of 36028797018963969 seconds"},
		{name: "expiry a second beyond a time.Duration", req: func(r *plugin.GenerateEnvelopeRequest) { r.ExpiryDurationInSeconds = 9223372037 }, code: plugin.ErrorCodeValidation, message: "signature expiry of 9223372037 seconds"},
		{name: "key id in another spelling", req: func(r *plugin.GenerateEnvelopeRequest) { r.KeyID += "/" }, code: plugin.ErrorCodeValidation, message: "give it as " + strconv.Quote(testKeyID), prefix: "binding: invalid input: key id "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := base
			if tc.deps != nil {
				d = tc.deps(d)
			}
			cfg := f.cfg
			if tc.cfg != nil {
				cfg = tc.cfg
			}
			req := request("application/jose+json", cfg)
			if tc.req != nil {
				tc.req(req)
			}
			before := f.signerN.Load()
			_, err := New(d).GenerateEnvelope(context.Background(), req)
			var perr *plugin.Error
			if !errors.As(err, &perr) {
				t.Fatalf("err = %v, want a plugin error", err)
			}
			if perr.ErrCode != tc.code || !strings.Contains(perr.Message, tc.message) || !strings.HasPrefix(perr.Message, tc.prefix) {
				t.Fatalf("got %s %q, want %s containing %q, starting %q", perr.ErrCode, perr.Message, tc.code, tc.message, tc.prefix)
			}
			if strings.Contains(perr.Message, "claim rules: claim rules") {
				t.Fatalf("%q says what failed twice", perr.Message)
			}
			if f.signerN.Load() != before {
				t.Fatal("the signer (Key Vault) was reached")
			}
			if _, err := token.NewStore(f.tokenDir).List(testDigest); !errors.Is(err, token.ErrNotFound) {
				t.Fatalf("a token was stored: %v", err)
			}
		})
	}
}

// attesterFunc adapts a function to Attester.
type attesterFunc func(ctx context.Context, nonce string) (string, error)

func (f attesterFunc) Attest(ctx context.Context, nonce string) (string, error) { return f(ctx, nonce) }

// TestRulesCompileDuringAttestation: the claim rules compile while the attestation runs (their
// first compilation is the slowest step before the TPM is asked), and are still applied.
func TestRulesCompileDuringAttestation(t *testing.T) {
	f := newFixture(t)
	d := f.deps(t)
	attesting := make(chan struct{})
	inner := d.Attester
	d.Attester = func(ctx context.Context, c Config, log *slog.Logger) (Attester, error) {
		a, err := inner(ctx, c, log)
		if err != nil {
			return nil, err
		}
		return attesterFunc(func(ctx context.Context, nonce string) (string, error) {
			close(attesting)
			return a.Attest(ctx, nonce)
		}), nil
	}
	var checked atomic.Int32
	d.Rules = func(c Config) (ClaimRules, error) {
		select {
		case <-attesting:
		case <-time.After(10 * time.Second):
			return nil, errors.New("the rules were compiled before the attestation started, not during it")
		}
		s, err := loadRules(c)
		if err != nil {
			return nil, err
		}
		return countingRules{s, &checked}, nil
	}
	if _, err := New(d).GenerateEnvelope(context.Background(), request("application/jose+json", f.cfg)); err != nil {
		t.Fatal(err)
	}
	if checked.Load() != 1 {
		t.Fatalf("rules checked %d times, want 1", checked.Load())
	}
}

type countingRules struct {
	ClaimRules
	n *atomic.Int32
}

func (r countingRules) Check(claims map[string]any) error {
	r.n.Add(1)
	return r.ClaimRules.Check(claims)
}

// TestBaselineOnSecureBootVM signs with the built-in baseline rules on a TPM whose measured boot
// is a Secure Boot one: the whole claim set the emulator derives satisfies the baseline.
func TestBaselineOnSecureBootVM(t *testing.T) {
	f := newFixture(t, attesttest.WithSecureBoot())
	cfg := map[string]string{KeyAttestationURL: f.chain.URL, KeyTokenDir: f.tokenDir}
	if _, err := New(f.deps(t)).GenerateEnvelope(context.Background(), request("application/jose+json", cfg)); err != nil {
		t.Fatalf("baseline refused a Secure Boot VM: %v", err)
	}
	if len(rules.Baseline().Rules()) < 10 {
		t.Fatal("baseline unexpectedly small")
	}
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// TestTimestamping signs with timestamp_url and timestamp_root_cert set: the envelope carries an
// RFC 3161 countersignature from the TSA emulator that verifies under the TSA root.
func TestTimestamping(t *testing.T) {
	f := newFixture(t)
	authority, err := tsa.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(authority)
	t.Cleanup(srv.Close)
	root := filepath.Join(t.TempDir(), "tsa-root.pem")
	os.WriteFile(root, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: authority.Root.Raw}), 0o644)
	cfg := map[string]string{}
	for k, v := range f.cfg {
		cfg[k] = v
	}
	cfg[KeyTimestampURL], cfg[KeyTimestampRootCert] = srv.URL, root
	for _, envType := range []string{"application/jose+json", "application/cose"} {
		rsp, err := New(f.deps(t)).GenerateEnvelope(context.Background(), request(envType, cfg))
		if err != nil {
			t.Fatalf("%s: %v", envType, err)
		}
		content := verifiedEnvelope(t, envType, rsp.SignatureEnvelope)
		if len(content.SignerInfo.UnsignedAttributes.TimestampSignature) == 0 {
			t.Fatalf("%s: no timestamp countersignature", envType)
		}
	}
	if authority.Requests.Load() != 2 {
		t.Fatalf("TSA answered %d queries, want 2", authority.Requests.Load())
	}
	// A TSA whose root is not the configured one is refused: nothing is signed.
	other, _ := tsa.New(nil)
	os.WriteFile(root, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: other.Root.Raw}), 0o644)
	if _, err := New(f.deps(t)).GenerateEnvelope(context.Background(), request("application/jose+json", cfg)); err == nil {
		t.Fatal("signed with a timestamp from an untrusted TSA")
	}
	// A TSA that refuses, reached with a password in its URL: tspclient-go's error quotes the
	// URL, and notation shows the plugin's message; the password is not in it, nor in the log.
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	t.Cleanup(down.Close)
	cfg[KeyTimestampURL] = strings.Replace(down.URL, "http://", "http://tsauser:S3cretTSApass@", 1)
	cfg[KeyLogFile] = filepath.Join(t.TempDir(), "plugin.log")
	_, err = New(f.deps(t)).GenerateEnvelope(context.Background(), request("application/jose+json", cfg))
	logged, _ := os.ReadFile(cfg[KeyLogFile])
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "tsauser:xxxxx@") {
		t.Fatalf("err = %v; want the TSA's 503, its URL without the password", err)
	}
	if strings.Contains(err.Error(), "S3cretTSApass") || strings.Contains(string(logged), "S3cretTSApass") || len(logged) == 0 {
		t.Fatalf("the TSA's password is shown: err %v, log %q", err, logged)
	}
}

// fakeKey opens the fixture's signer; Warm touches nothing, as the real one touches no Key Vault.
type fakeKey struct{ f *fixture }

func (fakeKey) Warm(context.Context) {}

func (k fakeKey) Open(context.Context) (signature.Signer, error) {
	k.f.signerN.Add(1)
	return k.f.signer, nil
}

// TestKeysFetchedDuringAttestation: the instance's signing keys are fetched while the attestation
// runs. The attester here goes on only once the keys have been asked for.
func TestKeysFetchedDuringAttestation(t *testing.T) {
	f := newFixture(t)
	d := f.deps(t)
	certsAsked := make(chan struct{})
	var once sync.Once
	inner := f.maaSrv.Client()
	watching := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Path == maa.CertsPath {
			once.Do(func() { close(certsAsked) })
		}
		return inner.Transport.RoundTrip(r)
	})}
	d.Verifier = func(c Config) (TokenVerifier, error) {
		return maa.NewVerifier(maa.VerifierOptions{
			Instance: c.AttestationURL, MaxAge: c.MaxTokenAge,
			Keys: maa.NewRemoteKeySet(c.AttestationURL, maa.JWKSOptions{HTTPClient: watching}),
		})
	}
	attest := d.Attester
	d.Attester = func(ctx context.Context, c Config, log *slog.Logger) (Attester, error) {
		a, err := attest(ctx, c, log)
		if err != nil {
			return nil, err
		}
		return attesterFunc(func(ctx context.Context, nonce string) (string, error) {
			select {
			case <-certsAsked:
			case <-time.After(10 * time.Second):
				return "", errors.New("the signing keys were not fetched during the attestation")
			}
			return a.Attest(ctx, nonce)
		}), nil
	}
	if _, err := New(d).GenerateEnvelope(context.Background(), request("application/jose+json", f.cfg)); err != nil {
		t.Fatal(err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// BenchmarkGenerateEnvelopeRoundTrips signs with every MAA request delayed by 10 ms, as an
// instance some distance away answers, and a local key in place of Key Vault: the attestation's
// round trip and the signing keys' fetch (one per plugin process) overlap.
func BenchmarkGenerateEnvelopeRoundTrips(b *testing.B) {
	f := newFixture(b)
	d := f.deps(b)
	inner := f.maaSrv.Client()
	slow := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		time.Sleep(10 * time.Millisecond)
		return inner.Transport.RoundTrip(r)
	})}
	d.Attester = func(_ context.Context, c Config, log *slog.Logger) (Attester, error) {
		cl, err := maa.NewClient(c.AttestationURL, maa.ClientOptions{HTTPClient: slow, Logger: log})
		return simAttester{client: cl, dev: f.dev}, err
	}
	d.Verifier = func(c Config) (TokenVerifier, error) {
		return maa.NewVerifier(maa.VerifierOptions{
			Instance: c.AttestationURL, MaxAge: c.MaxTokenAge,
			Keys: maa.NewRemoteKeySet(c.AttestationURL, maa.JWKSOptions{HTTPClient: slow}),
		})
	}
	g := New(d)
	req := request("application/jose+json", f.cfg)
	b.ResetTimer()
	for b.Loop() {
		if _, err := g.GenerateEnvelope(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}

// countingSigner counts the uses of its private key (the Key Vault sign operation): the envelope
// asks a local signer for its key only to sign. Signing moves the clock by signFor.
type countingSigner struct {
	signature.LocalSigner
	n       *atomic.Int32
	clock   *atomic.Int64 // offset of the test's clock, in nanoseconds
	signFor time.Duration
}

func (s countingSigner) PrivateKey() crypto.PrivateKey {
	s.n.Add(1)
	s.clock.Add(int64(s.signFor))
	return s.LocalSigner.PrivateKey()
}

// countingKey opens the fixture's signer behind a countingSigner; opening moves the clock by
// openFor.
type countingKey struct {
	f                *fixture
	n                *atomic.Int32
	clock            *atomic.Int64
	openFor, signFor time.Duration
}

func (countingKey) Warm(context.Context) {}

func (k countingKey) Open(context.Context) (signature.Signer, error) {
	k.clock.Add(int64(k.openFor))
	return countingSigner{LocalSigner: k.f.signer, n: k.n, clock: k.clock, signFor: k.signFor}, nil
}

// TestTokenAgeAtSigningTime: the token must be at most max_token_age old at the signing time, not
// only when it was verified, and still when Key Vault has signed; verifiers judge it at the
// signing time the envelope states. Opening the key or signing can take long (throttling,
// retries): here the clock says they took minutes.
func TestTokenAgeAtSigningTime(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name             string
		late             time.Duration // the clock when the token has been verified
		openFor, signFor time.Duration
		code             plugin.ErrorCode // "" = signed
		message          string
	}{
		{name: "key opened and signed within the age", openFor: DefaultMaxTokenAge - 2*time.Minute, signFor: time.Minute},
		// ERROR, not ACCESS_DENIED: the token passed every check when it was verified and aged
		// while the key was opened (Entra ID or Key Vault being slow); nothing refused the
		// attestation, and signing again helps, as the message says.
		{name: "key opened after the age", openFor: DefaultMaxTokenAge + time.Minute, code: plugin.ErrorCodeGeneric, message: "old at the signing time"},
		{name: "Key Vault signed after the age", openFor: time.Minute, signFor: DefaultMaxTokenAge, code: plugin.ErrorCodeGeneric, message: "when Key Vault had signed"},
		// The deadline of opening and signing is the token's max_token_age: past it, Key Vault is
		// not asked.
		{name: "aged before the key was opened", late: DefaultMaxTokenAge + time.Second, code: plugin.ErrorCodeTimeout, message: "became older than max_token_age"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.deps(t)
			var signs atomic.Int32
			var clock atomic.Int64
			d.Key = func(string, Config, *slog.Logger) (KeySource, error) {
				return countingKey{f: f, n: &signs, clock: &clock, openFor: tt.openFor, signFor: tt.signFor}, nil
			}
			d.Now = func() time.Time { return time.Now().Add(time.Duration(clock.Load())) }
			verify := d.Verifier
			d.Verifier = func(c Config) (TokenVerifier, error) {
				v, err := verify(c)
				return lateVerifier{v, &clock, tt.late}, err
			}
			cfg := f.with(KeyTokenDir, t.TempDir())
			_, err := New(d).GenerateEnvelope(context.Background(), request("application/jose+json", cfg))
			if tt.code == "" {
				if err != nil || signs.Load() != 1 {
					t.Fatalf("err %v, %d signatures; want one", err, signs.Load())
				}
				return
			}
			var perr *plugin.Error
			if !errors.As(err, &perr) || perr.ErrCode != tt.code || !strings.Contains(perr.Message, tt.message) {
				t.Fatalf("err = %v, want %s naming %q", err, tt.code, tt.message)
			}
			if tt.signFor == 0 && signs.Load() != 0 {
				t.Fatal("Key Vault signed with a token too old at the signing time")
			}
			if _, err := token.NewStore(cfg[KeyTokenDir]).List(testDigest); !errors.Is(err, token.ErrNotFound) {
				t.Fatalf("a token was stored: %v", err)
			}
		})
	}
}

// lateVerifier verifies, then moves the clock by late.
type lateVerifier struct {
	TokenVerifier
	clock *atomic.Int64
	late  time.Duration
}

func (v lateVerifier) Verify(ctx context.Context, raw, nonce string) (*maa.Token, error) {
	tok, err := v.TokenVerifier.Verify(ctx, raw, nonce)
	v.clock.Add(int64(v.late))
	return tok, err
}

// hangingKey is a Key Vault (or Entra ID) that accepts the request and never answers: Warm or
// Open waits until its context ends.
type hangingKey struct {
	f          *fixture
	warm, open bool
}

func (k hangingKey) Warm(ctx context.Context) {
	if k.warm {
		<-ctx.Done()
	}
}

func (k hangingKey) Open(ctx context.Context) (signature.Signer, error) {
	if k.open {
		<-ctx.Done()
		return nil, fmt.Errorf("Key Vault: %w", ctx.Err())
	}
	return k.f.signer, nil
}

// lateKey is a KeySource whose Open returns, once the request's context has ended, a local
// signer, which signs whatever its context (a signer that does not watch it). If cancel is set,
// Open ends the context itself, as notation does when the user interrupts it.
type lateKey struct {
	f      *fixture
	n      *atomic.Int32 // uses of the signer's private key
	cancel context.CancelFunc
}

func (lateKey) Warm(context.Context) {}

func (k lateKey) Open(ctx context.Context) (signature.Signer, error) {
	if k.cancel != nil {
		k.cancel()
	}
	<-ctx.Done()
	return countingSigner{LocalSigner: k.f.signer, n: k.n, clock: new(atomic.Int64)}, nil
}

// TestNoSignatureOnceTheContextEnded: a request whose context ended (cancelled, or its timeout)
// while the key was opened signs nothing, even when the key source returns a signer that would
// sign regardless, and keeps no token.
func TestNoSignatureOnceTheContextEnded(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name    string
		cancel  bool
		kv      []string
		code    plugin.ErrorCode
		message string
	}{
		{name: "cancelled", cancel: true, code: plugin.ErrorCodeGeneric, message: "opening the Key Vault key: context canceled"},
		{name: "timeout", kv: []string{KeyTimeout, "1s"}, code: plugin.ErrorCodeTimeout, message: "opening the Key Vault key: context deadline exceeded (the signature took longer than the plugin config timeout 1s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var signs, opened atomic.Int32
			d := f.deps(t)
			d.Key = func(string, Config, *slog.Logger) (KeySource, error) {
				opened.Add(1)
				k := lateKey{f: f, n: &signs}
				if tt.cancel {
					k.cancel = cancel
				}
				return k, nil
			}
			cfg := f.with(append([]string{KeyTokenDir, t.TempDir()}, tt.kv...)...)
			_, err := New(d).GenerateEnvelope(ctx, request("application/jose+json", cfg))
			var perr *plugin.Error
			if !errors.As(err, &perr) || perr.ErrCode != tt.code || !strings.Contains(perr.Message, tt.message) {
				t.Fatalf("err = %v, want %s naming %q", err, tt.code, tt.message)
			}
			if opened.Load() != 1 || signs.Load() != 0 {
				t.Fatalf("key sources made %d, signatures %d: want the key opened and nothing signed", opened.Load(), signs.Load())
			}
			if _, err := token.NewStore(cfg[KeyTokenDir]).List(testDigest); !errors.Is(err, token.ErrNotFound) {
				t.Fatalf("a token was stored: %v", err)
			}
		})
	}
}

// TestHangingServicesTimeOut: notation waits for the plugin without a limit, so a service that
// never answers must end in TIMEOUT, within the timeout config or the token's max_token_age, and
// nothing is signed.
func TestHangingServicesTimeOut(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name       string
		warm, open bool
		kv         []string
		message    string
	}{
		{name: "access token never comes", warm: true, kv: []string{KeyTimeout, "1s"}, message: "deadline exceeded (the signature took longer than the plugin config timeout 1s)"},
		{name: "Key Vault never answers, timeout first", open: true, kv: []string{KeyTimeout, "1s"}, message: "deadline exceeded (the signature took longer than the plugin config timeout 1s)"},
		{name: "Key Vault never answers, max_token_age first", open: true, kv: []string{KeyMaxTokenAge, "2s"}, message: "became older than max_token_age 2s"},
		{name: "access token never comes, max_token_age first", warm: true, kv: []string{KeyMaxTokenAge, "2s"}, message: "became older than max_token_age 2s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.deps(t)
			d.Key = func(string, Config, *slog.Logger) (KeySource, error) {
				return hangingKey{f: f, warm: tt.warm, open: tt.open}, nil
			}
			cfg := f.with(append([]string{KeyTokenDir, t.TempDir()}, tt.kv...)...)
			done := make(chan error, 1)
			go func() {
				_, err := New(d).GenerateEnvelope(context.Background(), request("application/jose+json", cfg))
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("generate-envelope still waits for a service that never answers")
			}
			var perr *plugin.Error
			if !errors.As(err, &perr) || perr.ErrCode != plugin.ErrorCodeTimeout || !strings.Contains(perr.Message, tt.message) {
				t.Fatalf("err = %v, want TIMEOUT naming %q", err, tt.message)
			}
			if _, err := token.NewStore(cfg[KeyTokenDir]).List(testDigest); !errors.Is(err, token.ErrNotFound) {
				t.Fatalf("a token was stored: %v", err)
			}
		})
	}
}

// TestConfigErrorsBeforeAttestation: what the signature needs after Key Vault has signed (the
// token store) or to sign at all (the TSA roots, a digest the store keeps) is checked before the
// TPM, MAA or Key Vault are asked, so a configuration error costs no attestation and no signature
// that is thrown away.
func TestConfigErrorsBeforeAttestation(t *testing.T) {
	f := newFixture(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cfg     map[string]string
		digest  string
		envType string // "" = application/jose+json
		message string
	}{
		{name: "token_dir cannot be created", cfg: f.with(KeyTokenDir, filepath.Join(file, "tokens")), message: KeyTokenDir},
		// Found by the envelope's construction only after Key Vault, if not checked first.
		{name: "envelope type notation does not send", cfg: f.cfg, envType: "application/pkcs7-signature", message: "signature envelope type"},
		{name: "TSA root certificate missing", cfg: f.with(KeyTimestampURL, "https://tsa.example", KeyTimestampRootCert, filepath.Join(t.TempDir(), "none.pem")), message: KeyTimestampRootCert},
		{name: "sha384 target the store does not keep", cfg: f.cfg, digest: "sha384:" + strings.Repeat("ab", 48), message: "want sha256 or sha512"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.deps(t)
			var attested, opened atomic.Int32
			d.Attester = func(context.Context, Config, *slog.Logger) (Attester, error) {
				return attesterFunc(func(context.Context, string) (string, error) {
					attested.Add(1)
					return "", errors.New("not reached")
				}), nil
			}
			d.Key = func(string, Config, *slog.Logger) (KeySource, error) {
				opened.Add(1)
				return fakeKey{f}, nil
			}
			envType := "application/jose+json"
			if tt.envType != "" {
				envType = tt.envType
			}
			req := request(envType, tt.cfg)
			if tt.digest != "" {
				req.Payload, _ = json.Marshal(map[string]any{"targetArtifact": map[string]any{
					"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": tt.digest, "size": 1234,
				}})
			}
			_, err := New(d).GenerateEnvelope(context.Background(), req)
			var perr *plugin.Error
			if !errors.As(err, &perr) || perr.ErrCode != plugin.ErrorCodeValidation || !strings.Contains(perr.Message, tt.message) {
				t.Fatalf("err = %v, want VALIDATION_ERROR naming %q", err, tt.message)
			}
			if attested.Load() != 0 || opened.Load() != 0 {
				t.Fatalf("attested %d times, key sources made %d times; want neither", attested.Load(), opened.Load())
			}
		})
	}
}

// verifiedEnvelope parses a signature envelope of type envType and verifies its signature with the
// certificate it carries; it fails the test if either step fails.
func verifiedEnvelope(t testing.TB, envType string, raw []byte) *signature.EnvelopeContent {
	t.Helper()
	env, err := signature.ParseEnvelope(envType, raw)
	if err != nil {
		t.Fatal(err)
	}
	content, err := env.Verify()
	if err != nil {
		t.Fatalf("envelope does not verify: %v", err)
	}
	return content
}
