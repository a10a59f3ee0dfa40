package keyvault_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/notaryproject/notation-core-go/signature"

	"github.com/attested-kv/attested-kv/internal/emulator/entra"
	"github.com/attested-kv/attested-kv/internal/emulator/imds"
	kvemu "github.com/attested-kv/attested-kv/internal/emulator/keyvault"
	"github.com/attested-kv/attested-kv/internal/keyvault"
)

// These tests drive the real Azure SDK clients (azidentity, azcertificates, and through
// keyvault.Signer azkeys and azsecrets) against the Entra ID and Key Vault emulators on loopback
// TLS: challenge authentication, token validation, certificate creation and signing all happen
// over the wire as against Azure.

const (
	tenant   = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	clientID = "0b8a2c1d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"
	secret   = "local-emulator-secret"
	denied   = "1c1c1c1c-2d2d-4e4e-8f8f-909090909090"
	// noRoles is a client of the tenant without any role on the vault.
	noRoles = "2a2a2a2a-3b3b-4c4c-8d8d-5e5e5e5e5e5e"
)

type env struct {
	vault   *kvemu.Server
	vaultSr *httptest.Server
	entraSr *httptest.Server
	imds    *imds.Server
	imdsSr  *httptest.Server
	// managedID is a user-assigned managed identity of the tenant, attached to the emulated VM
	// whose IMDS the env serves: a new one for each env, since MSAL keeps managed identity tokens
	// in one cache per process, which would hand a later env a token of an earlier tenant.
	managedID string
	opts      azcore.ClientOptions

	tokenRequests atomic.Int32 // POSTs to Entra ID's token endpoint
	vaultRequests atomic.Int32 // requests to Key Vault
	vaultDelay    atomic.Int64 // added to every Key Vault response: a network round trip
	// floatExpiry makes Entra ID's token answers carry expires_in as 3600.0, which MSAL cannot
	// decode: its error then quotes the whole answer, access token included.
	floatExpiry atomic.Bool
}

func newEnv(t testing.TB) *env { return newEnvFor(t, kvemu.Resource) }

// newEnvFor is newEnv with a vault whose challenge names resource, which Entra ID knows.
func newEnvFor(t testing.TB, resource string) *env {
	t.Helper()
	e := &env{managedID: newUUID(t)}
	ent, err := entra.New(entra.Config{TenantID: tenant, Clients: map[string]string{clientID: secret, denied: secret, noRoles: secret}, ManagedIdentities: []string{e.managedID},
		Resources: append(entra.KnownResources(), resource)})
	if err != nil {
		t.Fatal(err)
	}
	entraH := ent.Handler()
	entraSr := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token") {
			e.tokenRequests.Add(1)
			if e.floatExpiry.Load() {
				rec := httptest.NewRecorder()
				entraH.ServeHTTP(rec, r)
				body := regexp.MustCompile(`"expires_in":\s*(\d+)`).ReplaceAll(rec.Body.Bytes(), []byte(`"expires_in":$1.0`))
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(rec.Code)
				w.Write(body)
				return
			}
		}
		entraH.ServeHTTP(w, r)
	}))
	t.Cleanup(entraSr.Close)
	vault, err := kvemu.New(kvemu.Config{
		Authority: entraSr.URL, TenantID: tenant, Resource: resource,
		ValidateToken: func(raw string) (string, error) {
			c, err := ent.ValidateAccessToken(raw, resource)
			if err != nil {
				return "", err
			}
			return c.ObjectID, nil
		},
		// The signing identity holds everything; the denied one can read keys and certificate
		// chains but not sign.
		Assignments: []kvemu.Assignment{
			{Principal: entra.ObjectID(clientID), DataActions: []string{"Microsoft.KeyVault/vaults/*"}},
			{Principal: entra.ObjectID(denied), DataActions: append([]string{"Microsoft.KeyVault/vaults/keys/read"}, kvemu.CertificateUserActions...)},
			{Principal: entra.ObjectID(e.managedID), DataActions: []string{"Microsoft.KeyVault/vaults/keys/*", "Microsoft.KeyVault/vaults/secrets/getSecret/action"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	vaultH := vault.Handler()
	vaultSr := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.vaultRequests.Add(1)
		time.Sleep(time.Duration(e.vaultDelay.Load()))
		vaultH.ServeHTTP(w, r)
	}))
	t.Cleanup(vaultSr.Close)
	// The VM's instance metadata service, with the managed identity attached.
	if e.imds, err = imds.New(imds.Config{UserAssigned: []string{e.managedID}, ObjectID: entra.ObjectID, Issue: ent.IssueManagedIdentityToken}); err != nil {
		t.Fatal(err)
	}
	e.imdsSr = httptest.NewServer(e.imds.Handler())
	t.Cleanup(e.imdsSr.Close)
	// httptest servers share one certificate, so one client trusts both.
	e.vault, e.vaultSr, e.entraSr = vault, vaultSr, entraSr
	e.opts = azcore.ClientOptions{
		Transport: vaultSr.Client(),
		Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: entraSr.URL + "/"},
		Retry:     policy.RetryOptions{MaxRetries: 1, RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 2 * time.Second},
	}
	return e
}

func (e *env) credential(t testing.TB, client, secret string) azcore.TokenCredential {
	t.Helper()
	c, err := azidentity.NewClientSecretCredential(tenant, client, secret, &azidentity.ClientSecretCredentialOptions{ClientOptions: e.opts, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// createCertificate provisions a code-signing certificate the way the bootstrap does.
func (e *env) createCertificate(t testing.TB, name, kty string, size int32, crv string, keyUsage []string) string {
	t.Helper()
	cc, err := azcertificates.NewClient(e.vaultSr.URL, e.credential(t, clientID, secret), &azcertificates.ClientOptions{ClientOptions: e.opts, DisableChallengeResourceVerification: true})
	if err != nil {
		t.Fatal(err)
	}
	kt := azcertificates.KeyType(kty)
	var curve *azcertificates.CurveName
	if crv != "" {
		c := azcertificates.CurveName(crv)
		curve = &c
	}
	var kus []*azcertificates.KeyUsageType
	for _, u := range keyUsage {
		k := azcertificates.KeyUsageType(u)
		kus = append(kus, &k)
	}
	exportable, pemType, self, subject, months := false, "application/x-pem-file", "Self", "CN=attested signer, O=attested-kv tests, ST=Local, C=ZZ", int32(12)
	codeSigning := "1.3.6.1.5.5.7.3.3"
	var keySize *int32
	if size != 0 {
		keySize = &size
	}
	_, err = cc.CreateCertificate(context.Background(), name, azcertificates.CreateCertificateParameters{CertificatePolicy: &azcertificates.CertificatePolicy{
		IssuerParameters:          &azcertificates.IssuerParameters{Name: &self},
		KeyProperties:             &azcertificates.KeyProperties{KeyType: &kt, KeySize: keySize, Curve: curve, Exportable: &exportable},
		SecretProperties:          &azcertificates.SecretProperties{ContentType: &pemType},
		X509CertificateProperties: &azcertificates.X509CertificateProperties{Subject: &subject, EnhancedKeyUsage: []*string{&codeSigning}, KeyUsage: kus, ValidityInMonths: &months},
	}}, nil)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	got, err := cc.GetCertificate(context.Background(), name, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return e.vaultSr.URL + "/keys/" + name + "/" + got.ID.Version()
}

func TestSignerAgainstEmulators(t *testing.T) {
	e := newEnv(t)
	sigKey := []string{"digitalSignature"}
	tests := []struct {
		name, kty, crv string
		size           int32
		alg            signature.Algorithm
	}{
		{"rsa2048", "RSA", "", 2048, signature.AlgorithmPS256},
		{"rsa3072", "RSA", "", 3072, signature.AlgorithmPS384},
		{"ecp256", "EC", "P-256", 0, signature.AlgorithmES256},
		{"ecp384", "EC", "P-384", 0, signature.AlgorithmES384},
		{"ecp521", "EC", "P-521", 0, signature.AlgorithmES512},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keyURL := e.createCertificate(t, tc.name, tc.kty, tc.size, tc.crv, sigKey)
			for _, id := range []string{keyURL, keyURL[:strings.LastIndex(keyURL, "/")]} { // with and without version
				kid, err := keyvault.ParseKeyID(id)
				if err != nil {
					t.Fatal(err)
				}
				s, err := keyvault.NewSigner(context.Background(), kid, keyvault.Options{Credential: e.credential(t, clientID, secret), ClientOptions: e.opts})
				if err != nil {
					t.Fatalf("NewSigner(%s): %v", id, err)
				}
				spec, _ := s.KeySpec()
				if spec.SignatureAlgorithm() != tc.alg {
					t.Fatalf("algorithm %v, want %v", spec.SignatureAlgorithm(), tc.alg)
				}
				sig, chain, err := s.Sign([]byte("payload to sign"))
				if err != nil {
					t.Fatalf("Sign: %v", err)
				}
				if len(chain) != 1 {
					t.Fatalf("chain of %d certificates", len(chain))
				}
				switch chain[0].PublicKey.(type) {
				case *rsa.PublicKey, *ecdsa.PublicKey:
				default:
					t.Fatalf("leaf key %T", chain[0].PublicKey)
				}
				if err := checkWithLeaf(chain[0], tc.alg, []byte("payload to sign"), sig); err != nil {
					t.Fatalf("the signature does not verify with the leaf: %v", err)
				}
			}
		})
	}
	if n := e.vault.Count("sign", http.StatusOK); n != 2*len(tests) {
		t.Fatalf("vault saw %d successful signs, want %d", n, 2*len(tests))
	}
}

// checkWithLeaf verifies sig over payload with leaf's key as a Notation verifier would, through
// crypto/x509 rather than the package's own verify: RSASSA-PSS with the salt as long as the hash,
// or ECDSA, whose JWS form r||s x509 wants as ASN.1.
func checkWithLeaf(leaf *x509.Certificate, alg signature.Algorithm, payload, sig []byte) error {
	algs := map[signature.Algorithm]x509.SignatureAlgorithm{
		signature.AlgorithmPS256: x509.SHA256WithRSAPSS, signature.AlgorithmPS384: x509.SHA384WithRSAPSS, signature.AlgorithmPS512: x509.SHA512WithRSAPSS,
		signature.AlgorithmES256: x509.ECDSAWithSHA256, signature.AlgorithmES384: x509.ECDSAWithSHA384, signature.AlgorithmES512: x509.ECDSAWithSHA512,
	}
	xalg, ok := algs[alg]
	if !ok {
		return fmt.Errorf("algorithm %v", alg)
	}
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); ok {
		n := (k.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*n {
			return fmt.Errorf("ECDSA signature of %d bytes, want %d", len(sig), 2*n)
		}
		der, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])})
		if err != nil {
			return err
		}
		sig = der
	}
	return leaf.CheckSignature(xalg, payload, sig)
}

// signAnswer stands between the Key Vault clients and the vault and changes Key Vault's answer
// to sign, as a faulty or hostile vault (or whoever is on the path) could: the digest is signed
// by the key at signAt instead of the key asked for, and the answer's kid is replaced with kid.
type signAnswer struct {
	inner policy.Transporter
	// signAt, when set, is the path of the key (/keys/NAME/VERSION) that signs instead.
	signAt string
	// kid, when set, replaces the kid of a successful sign answer.
	kid string
}

func (a signAnswer) Do(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodPost || !strings.HasSuffix(req.URL.Path, "/sign") {
		return a.inner.Do(req)
	}
	if a.signAt != "" {
		req = req.Clone(req.Context())
		req.URL.Path, req.URL.RawPath = a.signAt+"/sign", ""
	}
	resp, err := a.inner.Do(req)
	if err != nil || a.kid == "" || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	body["kid"] = a.kid
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
	resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
	return resp, nil
}

// TestSignerChecksKeyVaultsAnswer: Sign returns nothing unless Key Vault's answer is a signature
// by the leaf's key (ErrSignature otherwise: another key's, another version's, or the latest
// version's after the key was rotated under an id without version) under the kid of the key
// opened (ErrInvalidKeyID otherwise, even when the signature itself is the key's).
func TestSignerChecksKeyVaultsAnswer(t *testing.T) {
	e := newEnv(t)
	sigKey := []string{"digitalSignature"}
	opened := e.createCertificate(t, "opened", "RSA", 2048, "", sigKey)
	openedNext := e.createCertificate(t, "opened", "RSA", 2048, "", sigKey) // a second version
	other := e.createCertificate(t, "other", "RSA", 2048, "", sigKey)
	rotating := e.createCertificate(t, "rotating", "RSA", 2048, "", sigKey)
	rotatingLatest := rotating[:strings.LastIndex(rotating, "/")]
	path := func(keyURL string) string { return strings.TrimPrefix(keyURL, e.vaultSr.URL) }
	tests := []struct {
		name string
		// id is the key id opened; before runs between opening and signing.
		id     string
		before func()
		answer signAnswer
		// wantErr is the error Sign must return; nil when it must sign.
		wantErr error
	}{
		{name: "Key Vault's answer as sent", id: opened},
		{name: "signature by another key, under the kid opened", id: opened,
			answer: signAnswer{signAt: path(other), kid: opened}, wantErr: keyvault.ErrSignature},
		{name: "signature by the key's other version, under the kid opened", id: opened,
			answer: signAnswer{signAt: path(openedNext), kid: opened}, wantErr: keyvault.ErrSignature},
		{name: "the latest version's signature after a rotation", id: rotatingLatest,
			before: func() { e.createCertificate(t, "rotating", "RSA", 2048, "", sigKey) }, wantErr: keyvault.ErrSignature},
		{name: "signature by another key, under its kid", id: opened,
			answer: signAnswer{signAt: path(other)}, wantErr: keyvault.ErrInvalidKeyID},
		{name: "the key's signature under another key's kid", id: opened,
			answer: signAnswer{kid: other}, wantErr: keyvault.ErrInvalidKeyID},
		{name: "the key's signature under another version's kid", id: opened,
			answer: signAnswer{kid: openedNext}, wantErr: keyvault.ErrInvalidKeyID},
		{name: "the key's signature under the secret's id", id: opened,
			answer: signAnswer{kid: strings.Replace(opened, "/keys/", "/secrets/", 1)}, wantErr: keyvault.ErrInvalidKeyID},
		{name: "the key's signature under a kid without version", id: opened,
			answer: signAnswer{kid: opened[:strings.LastIndex(opened, "/")]}, wantErr: keyvault.ErrInvalidKeyID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kid, err := keyvault.ParseKeyID(tc.id)
			if err != nil {
				t.Fatal(err)
			}
			opts := e.opts
			a := tc.answer
			a.inner = e.opts.Transport
			opts.Transport = a
			s, err := keyvault.NewSigner(context.Background(), kid, keyvault.Options{Credential: e.credential(t, clientID, secret), ClientOptions: opts})
			if err != nil {
				t.Fatalf("NewSigner: %v", err)
			}
			if tc.before != nil {
				tc.before()
			}
			signs := e.vault.Count("sign", http.StatusOK)
			sig, chain, err := s.Sign([]byte("payload"))
			if n := e.vault.Count("sign", http.StatusOK) - signs; n != 1 {
				t.Fatalf("Key Vault made %d signatures, want 1", n)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Sign: %v", err)
				}
				if err := checkWithLeaf(chain[0], signature.AlgorithmPS256, []byte("payload"), sig); err != nil {
					t.Fatalf("the signature does not verify with the leaf: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Sign: %v, want %v", err, tc.wantErr)
			}
			for _, other := range []error{keyvault.ErrSignature, keyvault.ErrInvalidKeyID} {
				if other != tc.wantErr && errors.Is(err, other) {
					t.Fatalf("Sign: %v, want %v and not %v", err, tc.wantErr, other)
				}
			}
			if sig != nil || chain != nil {
				t.Fatalf("Sign refused Key Vault's answer but returned a signature of %d bytes and %d certificates", len(sig), len(chain))
			}
		})
	}
}

// onVM is a transport for a process on the emulated VM: requests to the link-local IMDS address
// reach the env's IMDS, the others go out as e.opts sends them. azidentity sends its IMDS request
// through the credential's ClientOptions.Transport, so the SDK's own request (path, query,
// Metadata header) is what the emulator sees.
type onVM struct {
	imds *httptest.Server
	out  policy.Transporter
}

func (v onVM) Do(r *http.Request) (*http.Response, error) {
	if r.URL.Host == "169.254.169.254" {
		r = r.Clone(r.Context())
		r.URL.Host = strings.TrimPrefix(v.imds.URL, "http://")
		r.Host = r.URL.Host
		return v.imds.Client().Do(r)
	}
	return v.out.Do(r)
}

// TestManagedIdentitySigner: with credential_type=managedid and the client id of the identity
// attached to the VM, the signer gets its Key Vault token from the VM's instance metadata service
// (azidentity and MSAL's real IMDS request, answered by the IMDS emulator with a token of the
// tenant) and signs as that identity; a client id the VM does not have is refused by IMDS, and
// nothing is signed.
func TestManagedIdentitySigner(t *testing.T) {
	e := newEnv(t)
	keyURL := e.createCertificate(t, "mi-signing", "RSA", 2048, "", []string{"digitalSignature"})
	kid, err := keyvault.ParseKeyID(keyURL)
	if err != nil {
		t.Fatal(err)
	}
	vm := e.opts
	vm.Transport = onVM{imds: e.imdsSr, out: e.opts.Transport}
	for _, c := range []struct {
		name, clientID string
		// wantErr is in the error when the signer must not open; "" when it must sign.
		wantErr string
	}{
		{"attached identity", e.managedID, ""},
		{"identity not on the VM", "5a5a5a5a-6b6b-4c7c-8d8d-9e9e9e9e9e9e", "Identity not found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			signsBefore := e.vault.Count("sign", http.StatusOK)
			cred, err := keyvault.NewCredential(keyvault.CredentialOptions{Type: keyvault.CredentialManagedID, ClientID: c.clientID, ClientOptions: vm})
			if err != nil {
				t.Fatal(err)
			}
			s, err := keyvault.NewSigner(context.Background(), kid, keyvault.Options{Credential: cred, ClientOptions: e.opts})
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("NewSigner: %v, want an error with %q", err, c.wantErr)
				}
				if n := e.vault.Count("sign", http.StatusOK); n != signsBefore {
					t.Fatalf("%d signatures made", n-signsBefore)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewSigner: %v", err)
			}
			if _, _, err := s.Sign([]byte("payload")); err != nil {
				t.Fatalf("Sign: %v", err)
			}
		})
	}
	// IMDS saw the SDK ask for Key Vault's resource for the identity named.
	var got []string
	for _, r := range e.imds.Requests() {
		got = append(got, fmt.Sprintf("%s %s %d", r.ClientID, r.Resource, r.Status))
	}
	if want := e.managedID + " " + kvemu.Resource + " 200"; !slices.Contains(got, want) {
		t.Fatalf("IMDS requests %q, want %q among them", got, want)
	}
}

// newUUID is a random version 4 UUID.
func newUUID(t testing.TB) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// TestSignerVerifiesChallengeResource runs the production path: a vault reached by name, not on
// loopback, so that the SDK checks that the resource Key Vault's challenge names is the vault's
// parent domain before it asks Entra ID for a token, as against *.vault.azure.net. A challenge
// naming another domain (a server asking for a token it must not get) stops NewSigner before any
// token is requested.
func TestSignerVerifiesChallengeResource(t *testing.T) {
	tests := []struct {
		name, resource string
		wantErr        string
	}{
		{"the vault's parent domain", "https://example.com", ""},
		{"another domain", "https://vault.azure.net", "doesn't match the requested domain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvFor(t, tc.resource)
			keyURL := e.createCertificate(t, "signing", "RSA", 2048, "", []string{"digitalSignature"})
			// The vault by name, as Azure names it under vault.azure.net: attested.example.com
			// (the httptest certificate covers *.example.com), dialled at the emulator's loopback
			// address.
			named := strings.Replace(keyURL, e.vaultSr.URL, "https://attested.example.com", 1)
			tr := e.vaultSr.Client().Transport.(*http.Transport).Clone()
			tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				if strings.HasSuffix(addr, ".example.com:443") {
					addr = e.vaultSr.Listener.Addr().String()
				}
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}
			opts := e.opts
			opts.Transport = &http.Client{Transport: tr}
			kid, err := keyvault.ParseKeyID(named)
			if err != nil {
				t.Fatal(err)
			}
			if kid.Loopback() {
				t.Fatal("the vault must not count as loopback, or the resource check is off")
			}
			tokens := e.tokenRequests.Load()
			s, err := keyvault.NewSigner(context.Background(), kid, keyvault.Options{Credential: e.credential(t, clientID, secret), ClientOptions: opts})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NewSigner: %v, want an error containing %q", err, tc.wantErr)
				}
				if n := e.tokenRequests.Load() - tokens; n != 0 {
					t.Fatalf("%d token requests for a challenge naming another domain", n)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewSigner: %v", err)
			}
			if _, _, err := s.Sign([]byte("payload")); err != nil {
				t.Fatalf("Sign: %v", err)
			}
		})
	}
}

func TestSignerRefusals(t *testing.T) {
	e := newEnv(t)
	good := e.createCertificate(t, "good", "RSA", 2048, "", []string{"digitalSignature"})
	defaultKU := e.createCertificate(t, "default-key-usage", "RSA", 2048, "", nil)
	open := func(id string, cred azcore.TokenCredential) (*keyvault.Signer, error) {
		kid, err := keyvault.ParseKeyID(id)
		if err != nil {
			return nil, err
		}
		return keyvault.NewSigner(context.Background(), kid, keyvault.Options{Credential: cred, ClientOptions: e.opts})
	}
	var rerr *azcore.ResponseError

	// Key usage with keyEncipherment (Key Vault's default) is refused before anything is signed.
	if _, err := open(defaultKU, e.credential(t, clientID, secret)); !errors.Is(err, keyvault.ErrCertificateChain) {
		t.Fatalf("default key usage: %v, want ErrCertificateChain", err)
	}
	// A key that does not exist.
	if _, err := open(e.vaultSr.URL+"/keys/missing", e.credential(t, clientID, secret)); !errors.As(err, &rerr) || rerr.StatusCode != http.StatusNotFound {
		t.Fatalf("missing key: %v", err)
	}
	// A wrong client secret never reaches the vault's data.
	if _, err := open(good, e.credential(t, clientID, "wrong")); err == nil || !strings.Contains(err.Error(), "AADSTS7000215") {
		t.Fatalf("wrong secret: %v", err)
	}
	// An identity without any role is refused the key, and told what it needs.
	if _, err := open(good, e.credential(t, noRoles, secret)); !errors.As(err, &rerr) || rerr.StatusCode != http.StatusForbidden ||
		!strings.Contains(err.Error(), "Key Vault refused to read the key: the signing identity holds no role that allows it") {
		t.Fatalf("no role: %v, want the 403 with what to do", err)
	}
	// An identity without the sign permission gets 403 from sign.
	s, err := open(good, e.credential(t, denied, secret))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Sign([]byte("x")); !errors.As(err, &rerr) || rerr.StatusCode != http.StatusForbidden ||
		!strings.Contains(err.Error(), "Key Vault refused to sign: the signing identity holds no role that allows it") {
		t.Fatalf("forbidden sign: %v, want the 403 with what to do", err)
	}

	// Throttling and server errors surface as response errors after the SDK's retries.
	s, err = open(good, e.credential(t, clientID, secret))
	if err != nil {
		t.Fatal(err)
	}
	// A 403 that is not RBAC's (here an injected one, without innererror) gets no RBAC hint.
	e.vault.InjectFault("sign", http.StatusForbidden, 1)
	if _, _, err := s.Sign([]byte("x")); !errors.As(err, &rerr) || rerr.StatusCode != http.StatusForbidden || strings.Contains(err.Error(), "holds no role") {
		t.Fatalf("injected 403: %v, want it without the RBAC hint", err)
	}
	e.vault.InjectFault("sign", 0, 0)
	for _, status := range []int{http.StatusTooManyRequests, http.StatusInternalServerError} {
		e.vault.InjectFault("sign", status, 5)
		if _, _, err := s.Sign([]byte("x")); !errors.As(err, &rerr) || rerr.StatusCode != status {
			t.Fatalf("injected %d: %v", status, err)
		}
		e.vault.InjectFault("sign", 0, 0)
	}
}

// TestWarmToken checks that WarmToken fetches the very token the Key Vault clients then use (one
// token request for warming, opening and signing together) and sends nothing to Key Vault.
func TestWarmToken(t *testing.T) {
	e := newEnv(t)
	keyID := e.createCertificate(t, "warm", "RSA", 2048, "", []string{"digitalSignature"})
	id, err := keyvault.ParseKeyID(keyID)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	openAndSign := func(cred azcore.TokenCredential) {
		t.Helper()
		s, err := keyvault.NewSigner(ctx, id, keyvault.Options{Credential: cred, ClientOptions: e.opts})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Sign([]byte("payload")); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		warm bool
	}{
		{"without warming", false},
		{"warmed", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cred := e.credential(t, clientID, secret)
			tokens, vault := e.tokenRequests.Load(), e.vaultRequests.Load()
			if tc.warm {
				if err := keyvault.WarmToken(ctx, cred, id); err != nil {
					t.Fatalf("WarmToken: %v", err)
				}
				if n := e.vaultRequests.Load() - vault; n != 0 {
					t.Fatalf("WarmToken sent %d requests to Key Vault", n)
				}
				if n := e.tokenRequests.Load() - tokens; n != 1 {
					t.Fatalf("WarmToken made %d token requests, want 1", n)
				}
			}
			openAndSign(cred)
			if n := e.tokenRequests.Load() - tokens; n != 1 {
				t.Fatalf("%d token requests in all, want 1", n)
			}
		})
	}
	if _, ok := (keyvault.KeyID{VaultURL: "https://v.vault.azure.cn"}).TokenScope(); ok {
		t.Fatal("a scope guessed for another cloud")
	}
}

// chainFirstTransport holds every read of a key until the certificate chain's secret has been
// asked for.
type chainFirstTransport struct {
	inner      policy.Transporter
	secretSeen chan struct{}
	once       sync.Once
}

func (c *chainFirstTransport) Do(req *http.Request) (*http.Response, error) {
	switch {
	case strings.Contains(req.URL.Path, "/secrets/"):
		c.once.Do(func() { close(c.secretSeen) })
	case req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/keys/"):
		select {
		case <-c.secretSeen:
		case <-time.After(10 * time.Second):
			return nil, errors.New("the key was read alone: the certificate chain was not asked for at the same time")
		}
	}
	return c.inner.Do(req)
}

// TestSignerReadsKeyAndChainTogether: NewSigner reads the key and the certificate chain
// concurrently (each client's challenge round trip overlaps the other's).
func TestSignerReadsKeyAndChainTogether(t *testing.T) {
	e := newEnv(t)
	keyURL := e.createCertificate(t, "together", "RSA", 2048, "", []string{"digitalSignature"})
	kid, err := keyvault.ParseKeyID(keyURL)
	if err != nil {
		t.Fatal(err)
	}
	opts := e.opts
	opts.Transport = &chainFirstTransport{inner: e.opts.Transport, secretSeen: make(chan struct{})}
	s, err := keyvault.NewSigner(context.Background(), kid, keyvault.Options{Credential: e.credential(t, clientID, secret), ClientOptions: opts})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.CertificateChain()) != 1 {
		t.Fatalf("chain of %d certificates", len(s.CertificateChain()))
	}
}

// BenchmarkNewSignerRoundTrips opens a key with every Key Vault response delayed by 10 ms, as a
// vault some distance away would answer; the access token is cached, as the plugin has it
// (WarmToken). Reading the key and the chain one after the other costs four round trips (each
// client's challenge, then its request); together, two.
func BenchmarkNewSignerRoundTrips(b *testing.B) {
	e := newEnv(b)
	kid, err := keyvault.ParseKeyID(e.createCertificate(b, "rtt", "RSA", 2048, "", []string{"digitalSignature"}))
	if err != nil {
		b.Fatal(err)
	}
	cred := e.credential(b, clientID, secret)
	if err := keyvault.WarmToken(context.Background(), cred, kid); err != nil {
		b.Fatal(err)
	}
	e.vaultDelay.Store(int64(10 * time.Millisecond))
	b.ResetTimer()
	for b.Loop() {
		if _, err := keyvault.NewSigner(context.Background(), kid, keyvault.Options{Credential: cred, ClientOptions: e.opts}); err != nil {
			b.Fatal(err)
		}
	}
}
