package gate

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/notaryproject/notation-core-go/signature"
	"github.com/notaryproject/notation-plugin-framework-go/plugin"

	"github.com/attested-kv/attested-kv/internal/maa"
)

// TestFaultMatrix injects faults between the plugin and its services: MAA (in front of the real
// emulator), the instance's key endpoint, and Key Vault. Each fault either succeeds within a
// bounded time after retries, or fails closed with the protocol code that names it and without
// a signature. (TestFailClosed covers the refusals of the evidence, token and rules themselves.)
// Key Vault is faked here, its errors made in the test; TestKeyVaultFaults injects Key Vault's and
// Entra ID's faults on the wire, through the production Key Vault source and the Azure SDK.
func TestFaultMatrix(t *testing.T) {
	f := newFixture(t)
	emu := f.chain.Emulator.Handler()
	// faulty serves MAA's API in front of the emulator; fault answers request n (1-based) itself
	// when it returns true.
	faulty := func(fault func(w http.ResponseWriter, r *http.Request, n int) bool) string {
		var n atomic.Int32
		s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == maa.AttestPath && fault(w, r, int(n.Add(1))) {
				return
			}
			emu.ServeHTTP(w, r)
		}))
		t.Cleanup(s.Close)
		return s.URL
	}
	respond, reset := faultAnswer, resetConnection
	kvError := func(status int) error {
		req, _ := http.NewRequest(http.MethodPost, "https://kv.vault.azure.net/keys/signer/sign", nil)
		return runtime.NewResponseError(&http.Response{StatusCode: status, Status: http.StatusText(status), Request: req,
			Header: http.Header{}, Body: io.NopCloser(strings.NewReader(`{"error":{"code":"Injected","message":"injected"}}`))})
	}

	type faultCase struct {
		name    string
		fault   func(w http.ResponseWriter, r *http.Request, n int) bool // MAA attest faults
		signer  error                                                    // Key Vault fault when the key is opened
		signErr error                                                    // Key Vault fault when it signs
		envType string                                                   // "" = application/jose+json
		keys    bool                                                     // the key endpoint is down
		timeout time.Duration
		code    plugin.ErrorCode // "" = signs
		message string
	}
	tests := []faultCase{
		{name: "MAA 503 once, then answers", fault: func(w http.ResponseWriter, _ *http.Request, n int) bool {
			if n == 1 {
				respond(503, `{"error":{"code":"ServiceUnavailable","message":"busy"}}`)(w)
			}
			return n == 1
		}},
		{name: "MAA 429 with Retry-After once, then answers", fault: func(w http.ResponseWriter, _ *http.Request, n int) bool {
			if n == 1 {
				respond(429, `{"error":{"code":"TooManyRequests","message":"slow down"}}`, "Retry-After", "1")(w)
			}
			return n == 1
		}},
		{name: "MAA connection reset once, then answers", fault: func(w http.ResponseWriter, _ *http.Request, n int) bool {
			if n == 1 {
				reset(w)
			}
			return n == 1
		}},
		{name: "MAA connection reset always", fault: func(w http.ResponseWriter, _ *http.Request, _ int) bool { reset(w); return true },
			code: plugin.ErrorCodeGeneric, message: "unavailable"},
		{name: "MAA 503 always", fault: func(w http.ResponseWriter, _ *http.Request, _ int) bool {
			respond(503, `{"error":{"code":"ServiceUnavailable","message":"busy"}}`)(w)
			return true
		}, code: plugin.ErrorCodeGeneric, message: "HTTP 503"},
		{name: "MAA refuses the evidence (400)", fault: func(w http.ResponseWriter, _ *http.Request, _ int) bool {
			respond(400, `{"error":{"code":"InvalidParameter","message":"refused"}}`)(w)
			return true
		}, code: plugin.ErrorCodeAccessDenied, message: "HTTP 400"},
		{name: "MAA 429 always", fault: func(w http.ResponseWriter, _ *http.Request, _ int) bool {
			respond(429, `{"error":{"code":"TooManyRequests","message":"slow down"}}`)(w)
			return true
		}, code: plugin.ErrorCodeThrottled, message: "429"},
		// An answer from MAA that cannot be used (maa.ErrResponse) is not a refusal: MAA refuses
		// evidence with a 4xx, and nothing here was refused, by MAA or by a check of the token.
		// It is ERROR, as an outage is; it still stops the signature.
		{name: "MAA 200 with a malformed body", fault: func(w http.ResponseWriter, _ *http.Request, _ int) bool {
			respond(200, `{"token": 42}`)(w)
			return true
		}, code: plugin.ErrorCodeGeneric, message: "response"},
		{name: "MAA 200 with an undecryptable token", fault: func(w http.ResponseWriter, _ *http.Request, _ int) bool {
			respond(200, `{"token":"eyJFbmNyeXB0ZWRJbm5lcktleSI6IkFBQUEifQ"}`)(w)
			return true
		}, code: plugin.ErrorCodeGeneric, message: "response"},
		{name: "MAA slower than the deadline", timeout: time.Second, fault: func(w http.ResponseWriter, r *http.Request, _ int) bool {
			select {
			case <-r.Context().Done():
			case <-time.After(3 * time.Second):
			}
			panic(http.ErrAbortHandler) // no answer at all, not an empty 200
		}, code: plugin.ErrorCodeTimeout},
		// The deadline, not MAA, ends the retries: Retry-After (capped at RetryMaxDelay, 2s) would
		// wait past it, so the client stops at once. TIMEOUT, and the message keeps MAA's answer.
		{name: "MAA 503 with Retry-After past the deadline", timeout: 1500 * time.Millisecond, fault: func(w http.ResponseWriter, _ *http.Request, _ int) bool {
			respond(503, `{"error":{"code":"ServiceUnavailable","message":"busy"}}`, "Retry-After", "5")(w)
			return true
		}, code: plugin.ErrorCodeTimeout, message: "HTTP 503 ServiceUnavailable: busy"},
		{name: "MAA 429 with Retry-After past the deadline", timeout: 1500 * time.Millisecond, fault: func(w http.ResponseWriter, _ *http.Request, _ int) bool {
			respond(429, `{"error":{"code":"TooManyRequests","message":"slow down"}}`, "Retry-After", "5")(w)
			return true
		}, code: plugin.ErrorCodeTimeout, message: "HTTP 429 TooManyRequests: slow down"},
		{name: "instance keys unreachable", keys: true, code: plugin.ErrorCodeGeneric, message: `check "keys"`},
		{name: "Key Vault 403", signer: kvError(403), code: plugin.ErrorCodeAccessDenied, message: "403"},
		{name: "Key Vault 429", signer: kvError(429), code: plugin.ErrorCodeThrottled, message: "429"},
		{name: "Key Vault 500", signer: kvError(500), code: plugin.ErrorCodeGeneric, message: "500"},
		{name: "Key Vault 404 (wrong key id)", signer: kvError(404), code: plugin.ErrorCodeValidation, message: "404"},
	}
	// The same faults when Key Vault's sign call fails: the envelope packages keep only the text of
	// the signer's error, and each envelope type wraps it its own way; the code must still name the
	// fault, and the message the signing step.
	for _, env := range []struct{ name, typ string }{{"JWS", "application/jose+json"}, {"COSE", "application/cose"}} {
		deadline := fmt.Errorf("Key Vault sign with signer: %w", &url.Error{Op: "Post", URL: "https://kv.vault.azure.net/keys/signer/sign", Err: context.DeadlineExceeded})
		tests = append(tests,
			faultCase{name: "Key Vault 403 at sign time, " + env.name, signErr: kvError(403), envType: env.typ, code: plugin.ErrorCodeAccessDenied, message: "403"},
			faultCase{name: "Key Vault 429 at sign time, " + env.name, signErr: kvError(429), envType: env.typ, code: plugin.ErrorCodeThrottled, message: "429"},
			faultCase{name: "Key Vault deadline at sign time, " + env.name, signErr: deadline, envType: env.typ, code: plugin.ErrorCodeTimeout, message: "deadline exceeded"},
			faultCase{name: "Key Vault 500 at sign time, " + env.name, signErr: kvError(500), envType: env.typ, code: plugin.ErrorCodeGeneric, message: "500"},
		)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			url := f.chain.URL
			if tc.fault != nil {
				url = faulty(tc.fault)
			}
			d := f.deps(t)
			d.Attester = func(_ context.Context, c Config, log *slog.Logger) (Attester, error) {
				cl, err := maa.NewClient(url, maa.ClientOptions{HTTPClient: f.maaSrv.Client(), Logger: log, RetryBaseDelay: 10 * time.Millisecond, RetryMaxDelay: 2 * time.Second})
				return simAttester{client: cl, dev: f.dev}, err
			}
			keysURL := f.chain.URL
			if tc.keys {
				keysURL = "https://127.0.0.1:1"
			}
			d.Verifier = func(c Config) (TokenVerifier, error) {
				return maa.NewVerifier(maa.VerifierOptions{Instance: f.chain.URL, Keys: maa.NewRemoteKeySet(keysURL, maa.JWKSOptions{HTTPClient: f.maaSrv.Client()}), MaxAge: c.MaxTokenAge})
			}
			signed := false
			var signCalls atomic.Int32
			d.Key = func(string, Config, *slog.Logger) (KeySource, error) {
				return keyFunc(func() (signature.Signer, error) {
					if tc.signer != nil {
						return nil, tc.signer
					}
					if tc.signErr != nil {
						return failingSigner{key: f.signer, err: tc.signErr, calls: &signCalls}, nil
					}
					signed = true
					return f.signer, nil
				}), nil
			}
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			dir := t.TempDir()
			cfg := map[string]string{KeyAttestationURL: f.chain.URL, KeyTokenDir: dir, KeyRules: f.cfg[KeyRules]}
			start := time.Now()
			envType := tc.envType
			if envType == "" {
				envType = "application/jose+json"
			}
			rsp, err := New(d).GenerateEnvelope(ctx, request(envType, cfg))
			if elapsed := time.Since(start); elapsed > 15*time.Second {
				t.Fatalf("took %s: not bounded", elapsed)
			}
			if tc.code == "" {
				if err != nil || !signed || len(rsp.SignatureEnvelope) == 0 {
					t.Fatalf("want a signature after the fault, got %v", err)
				}
				return
			}
			var perr *plugin.Error
			if !errors.As(err, &perr) || perr.ErrCode != tc.code || !strings.Contains(perr.Message, tc.message) {
				t.Fatalf("got %v, want %s containing %q", err, tc.code, tc.message)
			}
			if rsp != nil || signed {
				t.Fatal("a signature was produced")
			}
			if tc.signErr != nil && (signCalls.Load() != 1 || !strings.HasPrefix(perr.Message, "signing: ")) {
				t.Fatalf("Key Vault was asked to sign %d times, want once; message %q, want it to name the signing", signCalls.Load(), perr.Message)
			}
		})
	}
}

// keyFunc is a KeySource whose Open is the function.
type keyFunc func() (signature.Signer, error)

func (keyFunc) Warm(context.Context) {}

func (k keyFunc) Open(context.Context) (signature.Signer, error) { return k() }

// failingSigner is a remote signer (as the Key Vault signer is) whose Sign fails with err.
type failingSigner struct {
	key   signature.LocalSigner // the key spec
	err   error
	calls *atomic.Int32
}

func (s failingSigner) Sign([]byte) ([]byte, []*x509.Certificate, error) {
	s.calls.Add(1)
	return nil, nil, s.err
}

func (s failingSigner) KeySpec() (signature.KeySpec, error) { return s.key.KeySpec() }

// TestSignNeedsTheKeysAttestation: sign, the only path to Key Vault, refuses before opening the
// key an Attestation that is missing, holds no token, or was made for another key id than the
// request's; with the request's key id it goes on to open the key. GenerateEnvelope always
// attests with the request's key id, so only this test reaches the refusals.
func TestSignNeedsTheKeysAttestation(t *testing.T) {
	const keyID = "https://v.vault.azure.net/keys/k/0123456789abcdef0123456789abcdef"
	var opened atomic.Int32
	key := keyFunc(func() (signature.Signer, error) { opened.Add(1); return nil, errors.New("key opened") })
	req := &plugin.GenerateEnvelopeRequest{KeyID: keyID}
	g := New(Deps{})
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name string
		att  *Attestation
	}{
		{"no attestation", nil},
		{"no token", &Attestation{keyID: keyID}},
		{"another key", &Attestation{token: &maa.Token{}, keyID: "https://v.vault.azure.net/keys/other/0123456789abcdef0123456789abcdef"}},
		{"the key without its version", &Attestation{token: &maa.Token{}, keyID: "https://v.vault.azure.net/keys/k"}},
	} {
		_, err := g.sign(context.Background(), tc.att, key, Config{}, nil, req, log)
		var ae *attestError
		if !errors.As(err, &ae) || !strings.Contains(err.Error(), "no attestation for this key") {
			t.Errorf("%s: %v, want the attestation refusal", tc.name, err)
		}
	}
	if n := opened.Load(); n != 0 {
		t.Fatalf("the key was opened %d times for attestations of no use", n)
	}
	if _, err := g.sign(context.Background(), &Attestation{token: &maa.Token{}, keyID: keyID}, key, Config{}, nil, req, log); err == nil || !strings.Contains(err.Error(), "key opened") || opened.Load() != 1 {
		t.Fatalf("with the request's key id: %v, %d opens; want the key opened once", err, opened.Load())
	}
}

// faultAnswer returns a handler writing status, the headers hdr (name, value, ...) and body: an
// injected fault's answer.
func faultAnswer(status int, body string, hdr ...string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// resetConnection closes the request's connection without an answer.
func resetConnection(w http.ResponseWriter) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		conn.Close()
	}
}
