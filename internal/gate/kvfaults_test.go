package gate

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/notaryproject/notation-plugin-framework-go/plugin"

	"github.com/attested-kv/attested-kv/internal/emulator/entra"
	kvemu "github.com/attested-kv/attested-kv/internal/emulator/keyvault"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/token"
)

// TestMain makes the emulators' loopback TLS servers trusted by the production Key Vault source
// (newKeyVaultSource), which sets no transport: the Azure SDK's default one verifies against the
// system roots, which Go reads once per process, from SSL_CERT_FILE when it is set (as the local
// stack's SSL_CERT_FILE does for the plugin). Every httptest TLS server has the same certificate,
// so a bundle of that one certificate, set before any test runs, covers them all.
func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "gate-roots-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		s := httptest.NewTLSServer(http.NotFoundHandler())
		bundle := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
		s.Close()
		if err := os.WriteFile(filepath.Join(dir, "roots.pem"), bundle, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// SSL_CERT_DIR names an empty directory, so that the bundle is read alone.
		if err := os.Mkdir(filepath.Join(dir, "certs"), 0o700); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		os.Setenv("SSL_CERT_FILE", filepath.Join(dir, "roots.pem"))
		os.Setenv("SSL_CERT_DIR", filepath.Join(dir, "certs"))
		return m.Run()
	}())
}

const (
	kvTenant   = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	kvClientID = "0b8a2c1d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"
	kvSecret   = "local-emulator-secret"
)

// kvFault answers a request itself, and returns true, when it is the fault; n counts the requests
// of r's method and path so far, r's included (1-based).
type kvFault func(w http.ResponseWriter, r *http.Request, n int) bool

// kvStack is Entra ID and Key Vault (the emulators) on loopback TLS, each behind a handler that
// counts requests by method and path and injects the faults of the current row.
type kvStack struct {
	vault    *kvemu.Server
	keyID    string            // the signing key's versioned id
	leaf     *x509.Certificate // its certificate
	entraURL string            // Entra ID's authority host

	mu                     sync.Mutex
	vaultFault, entraFault kvFault
	counts                 map[string]int // "METHOD path" → requests, faulted ones included
	verified               *atomic.Bool   // the gate has a verified token (set by flagVerifier)
	early                  int            // Key Vault requests before the token verified
}

func newKVStack(t testing.TB) *kvStack {
	t.Helper()
	st := &kvStack{counts: map[string]int{}, verified: new(atomic.Bool)}
	ent, err := entra.New(entra.Config{TenantID: kvTenant, Clients: map[string]string{kvClientID: kvSecret}})
	if err != nil {
		t.Fatal(err)
	}
	// serve counts r and answers it with the fault of the row, or with h.
	serve := func(h http.Handler, fault func() kvFault, vault bool) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			st.mu.Lock()
			k := r.Method + " " + r.URL.Path
			st.counts[k]++
			n := st.counts[k]
			if vault && !st.verified.Load() {
				st.early++
			}
			f := fault()
			st.mu.Unlock()
			if f != nil && f(w, r, n) {
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	entraSr := httptest.NewTLSServer(serve(ent.Handler(), func() kvFault { return st.entraFault }, false))
	t.Cleanup(entraSr.Close)
	st.entraURL = entraSr.URL
	st.vault, err = kvemu.New(kvemu.Config{
		Authority: entraSr.URL, TenantID: kvTenant,
		ValidateToken: func(raw string) (string, error) {
			c, err := ent.ValidateAccessToken(raw, kvemu.Resource)
			if err != nil {
				return "", err
			}
			return c.ObjectID, nil
		},
		Assignments: []kvemu.Assignment{{Principal: entra.ObjectID(kvClientID), DataActions: []string{"Microsoft.KeyVault/vaults/*"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	vaultSr := httptest.NewTLSServer(serve(st.vault.Handler(), func() kvFault { return st.vaultFault }, true))
	t.Cleanup(vaultSr.Close)

	// The code-signing certificate, created through the SDK as the bootstrap creates it; before
	// any row, so no verified token is needed for these requests.
	st.verified.Store(true)
	defer st.verified.Store(false)
	opts := azcore.ClientOptions{Transport: vaultSr.Client(), Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: entraSr.URL + "/"}}
	cred, err := azidentity.NewClientSecretCredential(kvTenant, kvClientID, kvSecret, &azidentity.ClientSecretCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := azcertificates.NewClient(vaultSr.URL, cred, &azcertificates.ClientOptions{ClientOptions: opts, DisableChallengeResourceVerification: true})
	if err != nil {
		t.Fatal(err)
	}
	kty, size, exportable, pemType, self := azcertificates.KeyTypeRSA, int32(3072), false, "application/x-pem-file", "Self"
	subject, codeSigning, months := "CN=attested signer, O=attested-kv tests, ST=Local, C=ZZ", "1.3.6.1.5.5.7.3.3", int32(12)
	ku := azcertificates.KeyUsageTypeDigitalSignature
	ctx := context.Background()
	if _, err := cc.CreateCertificate(ctx, "signer", azcertificates.CreateCertificateParameters{CertificatePolicy: &azcertificates.CertificatePolicy{
		IssuerParameters:          &azcertificates.IssuerParameters{Name: &self},
		KeyProperties:             &azcertificates.KeyProperties{KeyType: &kty, KeySize: &size, Exportable: &exportable},
		SecretProperties:          &azcertificates.SecretProperties{ContentType: &pemType},
		X509CertificateProperties: &azcertificates.X509CertificateProperties{Subject: &subject, EnhancedKeyUsage: []*string{&codeSigning}, KeyUsage: []*azcertificates.KeyUsageType{&ku}, ValidityInMonths: &months},
	}}, nil); err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	got, err := cc.GetCertificate(ctx, "signer", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.leaf, err = x509.ParseCertificate(got.CER); err != nil {
		t.Fatal(err)
	}
	st.keyID = vaultSr.URL + "/keys/signer/" + got.ID.Version()
	return st
}

// reset starts a row: its faults, no requests counted, no verified token yet.
func (st *kvStack) reset(vaultFault, entraFault kvFault) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.vaultFault, st.entraFault = vaultFault, entraFault
	st.counts = map[string]int{}
	st.early = 0
	st.verified.Store(false)
}

// count returns the requests whose method is method and whose path ends with suffix, and the
// Key Vault requests made before the token verified.
func (st *kvStack) count(method, suffix string) (n, early int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for k, c := range st.counts {
		if m, p, _ := strings.Cut(k, " "); m == method && strings.HasSuffix(p, suffix) {
			n += c
		}
	}
	return n, st.early
}

// flagVerifier records that a token verified.
type flagVerifier struct {
	TokenVerifier
	ok *atomic.Bool
}

func (v flagVerifier) Verify(ctx context.Context, raw, nonce string) (*maa.Token, error) {
	tok, err := v.TokenVerifier.Verify(ctx, raw, nonce)
	if err == nil {
		v.ok.Store(true)
	}
	return tok, err
}

// TestKeyVaultFaults runs generate-envelope through the production Key Vault source (Deps.Key
// unset: newKeyVaultSource, its credential, credential_type=environment, and the azkeys,
// azcertificates and azsecrets clients, with the client options it sets) against the Entra ID and
// Key Vault emulators, with faults injected on the wire. A transient fault of Entra ID's token endpoint or of Key Vault's sign
// call is retried by the SDK and the envelope verifies with the vault's certificate; a fault that
// lasts, or an answer that cannot be used, fails closed with the code and a message naming it,
// no envelope and no token kept. Every row ends within the plugin's timeout, and Key Vault is
// never called before the attestation verified. (TestFaultMatrix covers MAA's faults and the
// gate's mapping of Key Vault's errors, with Key Vault faked.)
//
// The retries use the SDK's default delays (deps.go sets only the per-try timeout): 0.8 s
// (jittered 0.64-1.04 s) before the first retry, 2.4 s before the second. The faults that last
// answer with x-ms-retry-after-ms, which the SDK's retry policy honours, so that its 3 retries
// take milliseconds instead of 9 s; one row leaves it out, for the plugin's timeout to end them.
func TestKeyVaultFaults(t *testing.T) {
	f := newFixture(t)
	st := newKVStack(t)
	t.Setenv("AZURE_TENANT_ID", kvTenant)
	t.Setenv("AZURE_CLIENT_ID", kvClientID)
	t.Setenv("AZURE_CLIENT_SECRET", kvSecret)
	t.Setenv("AZURE_AUTHORITY_HOST", st.entraURL+"/")

	respond := func(status int, body string, hdr ...string) func(http.ResponseWriter) {
		return faultAnswer(status, body, append([]string{"Content-Type", "application/json; charset=utf-8"}, hdr...)...)
	}
	reset := resetConnection
	isSign := func(r *http.Request) bool {
		return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/sign")
	}
	isToken := func(r *http.Request) bool {
		return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token")
	}
	// first answers the first k requests (k < 0: every request) for which match holds.
	first := func(k int, match func(*http.Request) bool, answer func(w http.ResponseWriter, r *http.Request)) kvFault {
		return func(w http.ResponseWriter, r *http.Request, n int) bool {
			if !match(r) || (k >= 0 && n > k) {
				return false
			}
			answer(w, r)
			return true
		}
	}
	with := func(a func(http.ResponseWriter)) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, _ *http.Request) { a(w) }
	}
	kvBusy := `{"error":{"code":"ServiceUnavailable","message":"injected: busy"}}`
	kvInternal := `{"error":{"code":"InternalServerError","message":"injected: internal error"}}`
	entraErr := `{"error":"temporarily_unavailable","error_description":"AADSTS50000: injected: internal error","error_codes":[50000]}`

	tests := []struct {
		name         string
		vault, entra kvFault
		timeout      string           // the plugin's timeout config; "" = 20s
		code         plugin.ErrorCode // "" = signs
		message      string
		signCalls    int // sign requests Key Vault was sent, faulted ones included; -1 = not checked
		tokenCalls   int // token requests Entra ID was sent; 0 = not checked
	}{
		{name: "Key Vault 503 once at sign time, then signs", signCalls: 2,
			vault: first(1, isSign, with(respond(503, kvBusy)))},
		{name: "Key Vault 429 with Retry-After 1s once at sign time, then signs", signCalls: 2,
			vault: first(1, isSign, with(respond(429, `{"error":{"code":"Throttled","message":"injected: slow down"}}`, "Retry-After", "1")))},
		{name: "Key Vault resets the connection once at sign time, then signs", signCalls: 2,
			vault: first(1, isSign, func(w http.ResponseWriter, _ *http.Request) { reset(w) })},
		// The access token is first asked for while the attestation runs (kvSource.Warm), and a
		// failure there is only logged: opening the key asks again. One failure is therefore
		// survived with or without the SDK's retry; two need it (without it the second is the
		// key's own request, and opening the key fails). The second row's Retry-After spares it
		// the default 2.4 s before the second retry.
		{name: "Entra ID 500 once, then answers", signCalls: 1, tokenCalls: 2,
			entra: first(1, isToken, with(respond(500, entraErr)))},
		{name: "Entra ID 500 with Retry-After 1s twice, then answers", signCalls: 1, tokenCalls: 3,
			entra: first(2, isToken, with(respond(500, entraErr, "Retry-After", "1")))},
		{name: "Key Vault 500 on every try at sign time", signCalls: 4, // the first try and the SDK's 3 retries
			vault: first(-1, isSign, with(respond(500, kvInternal, "x-ms-retry-after-ms", "10"))),
			code:  plugin.ErrorCodeGeneric, message: "Key Vault sign with signer: POST"},
		// Without the retry-after: the SDK waits 0.8 s, then 2.4 s; the plugin's timeout ends the
		// wait, and the request.
		{name: "Key Vault 500 on every try, past the plugin's timeout", timeout: "3s", signCalls: -1,
			vault: first(-1, isSign, with(respond(500, kvInternal))),
			code:  plugin.ErrorCodeTimeout, message: "timeout 3s"},
		{name: "Key Vault 200 with a body that is not JSON at sign time", signCalls: 1,
			vault: first(-1, isSign, with(respond(200, `<html>gateway says hello</html>`))),
			code:  plugin.ErrorCodeGeneric, message: "unmarshalling"},
		{name: "Key Vault 200 with a signature that does not verify", signCalls: 1,
			vault: first(-1, isSign, func(w http.ResponseWriter, r *http.Request) {
				kid := "https://" + r.Host + strings.TrimSuffix(r.URL.Path, "/sign")
				respond(200, fmt.Sprintf(`{"kid":%q,"value":"AAAA"}`, kid))(w)
			}),
			code: plugin.ErrorCodeGeneric, message: "does not verify"},
		{name: "Entra ID 500 on every try", signCalls: 0,
			entra: first(-1, isToken, with(respond(500, entraErr, "x-ms-retry-after-ms", "10"))),
			code:  plugin.ErrorCodeGeneric, message: "ClientSecretCredential authentication failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st.reset(tc.vault, tc.entra)
			d := f.deps(t)
			d.Key = nil // the production Key Vault source
			verifier := d.Verifier
			d.Verifier = func(c Config) (TokenVerifier, error) {
				v, err := verifier(c)
				return flagVerifier{TokenVerifier: v, ok: st.verified}, err
			}
			timeout := tc.timeout
			if timeout == "" {
				timeout = "20s"
			}
			limit, err := time.ParseDuration(timeout)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			req := request("application/jose+json", f.with(KeyTokenDir, dir, KeyCredentialType, "environment", KeyTimeout, timeout))
			req.KeyID = st.keyID
			signed := st.vault.Count("sign", http.StatusOK)
			start := time.Now()
			rsp, err := New(d).GenerateEnvelope(context.Background(), req)
			elapsed := time.Since(start)
			t.Logf("took %s", elapsed.Round(time.Millisecond))
			if elapsed > limit+time.Second {
				t.Errorf("took %s: not bounded by the plugin's timeout %s", elapsed, timeout)
			}
			signed = st.vault.Count("sign", http.StatusOK) - signed
			signCalls, early := st.count(http.MethodPost, "/sign")
			tokenCalls, _ := st.count(http.MethodPost, "/oauth2/v2.0/token")
			if early != 0 {
				t.Errorf("Key Vault was sent %d requests before the token verified", early)
			}
			if tc.signCalls >= 0 && signCalls != tc.signCalls {
				t.Errorf("Key Vault was sent %d sign requests, want %d", signCalls, tc.signCalls)
			}
			if tc.tokenCalls > 0 && tokenCalls != tc.tokenCalls {
				t.Errorf("Entra ID was sent %d token requests, want %d", tokenCalls, tc.tokenCalls)
			}
			entries, lerr := token.NewStore(dir).List(testDigest)
			if lerr != nil && !errors.Is(lerr, token.ErrNotFound) {
				t.Fatal(lerr)
			}
			if tc.code == "" {
				if err != nil {
					t.Fatalf("want a signature after the fault, got %v", err)
				}
				content := verifiedEnvelope(t, req.SignatureEnvelopeType, rsp.SignatureEnvelope)
				if chain := content.SignerInfo.CertificateChain; len(chain) == 0 || !chain[0].Equal(st.leaf) {
					t.Fatal("the envelope is not signed with the Key Vault certificate")
				}
				if signed != 1 || len(entries) != 1 || rsp.Annotations[AnnotationTokenSHA256] != entries[0].SHA256 {
					t.Fatalf("Key Vault made %d signatures and %d tokens were kept (annotation %v), want one of each", signed, len(entries), rsp.Annotations)
				}
				return
			}
			var perr *plugin.Error
			if !errors.As(err, &perr) || perr.ErrCode != tc.code || !strings.Contains(perr.Message, tc.message) {
				t.Fatalf("got %v, want %s containing %q", err, tc.code, tc.message)
			}
			t.Logf("%s: %.300s", perr.ErrCode, perr.Message)
			if rsp != nil || signed != 0 || len(entries) != 0 {
				t.Fatalf("a signature was returned (%v), Key Vault made %d, %d tokens were kept; want none", rsp != nil, signed, len(entries))
			}
		})
	}
}
