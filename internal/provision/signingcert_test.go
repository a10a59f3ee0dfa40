package provision

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
)

// The vault below speaks the Key Vault certificates REST API (challenge, get, create, pending
// operation) on TLS loopback, with the JSON names azcertificates sends and reads, so the tests run
// the real SDK client. Its existing version is whatever a test seeds, including states the Key
// Vault emulator never produces (exportable, disabled, expired keys).

// keyProps, x509Props, issuerProps and secretProps are the REST names of a certificate policy.
type keyProps struct {
	Exportable *bool  `json:"exportable,omitempty"`
	Kty        string `json:"kty,omitempty"`
	KeySize    int    `json:"key_size,omitempty"`
	Crv        string `json:"crv,omitempty"`
	ReuseKey   *bool  `json:"reuse_key,omitempty"`
}

type x509Props struct {
	Subject        string   `json:"subject,omitempty"`
	Ekus           []string `json:"ekus,omitempty"`
	KeyUsage       []string `json:"key_usage,omitempty"`
	ValidityMonths int      `json:"validity_months,omitempty"`
}

type issuerProps struct {
	Name string `json:"name,omitempty"`
}

type secretProps struct {
	ContentType string `json:"contentType,omitempty"`
}

type restPolicy struct {
	KeyProps    *keyProps    `json:"key_props,omitempty"`
	X509Props   *x509Props   `json:"x509_props,omitempty"`
	Issuer      *issuerProps `json:"issuer,omitempty"`
	SecretProps *secretProps `json:"secret_props,omitempty"`
}

type certVersion struct {
	version string
	leaf    *x509.Certificate
	policy  restPolicy
	enabled bool
	// enabledUnreported leaves the enabled attribute out of the answer.
	enabledUnreported bool
}

type fakeVault struct {
	mu       sync.Mutex
	versions map[string][]certVersion
	created  []restPolicy // policies of create requests, in order
}

func (v *fakeVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") == "" {
		// Key Vault's challenge (the SDK sends each first request without a token).
		w.Header().Set("WWW-Authenticate", `Bearer authorization="https://login.example/tenant", resource="https://vault.azure.net"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	base := "https://" + r.Host
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/") // certificates/{name}[/{version}|/create|/pending]
	if len(parts) < 2 || parts[0] != "certificates" {
		http.NotFound(w, r)
		return
	}
	name, rest := parts[1], ""
	if len(parts) > 2 {
		rest = parts[2]
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	vs := v.versions[name]
	switch {
	case r.Method == http.MethodPost && rest == "create":
		var req struct {
			Policy restPolicy `json:"policy"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		v.created = append(v.created, req.Policy)
		cv, err := issue(fmt.Sprintf("v%d", len(vs)+1), req.Policy, time.Now(), time.Now().AddDate(0, req.Policy.X509Props.ValidityMonths, 0))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		v.versions[name] = append(vs, cv)
		writeJSON(w, http.StatusAccepted, map[string]any{"id": base + "/certificates/" + name + "/pending", "status": "inProgress"})
	case r.Method == http.MethodGet && rest == "pending":
		writeJSON(w, http.StatusOK, map[string]any{"id": base + "/certificates/" + name + "/pending", "status": "completed"})
	case r.Method == http.MethodGet && rest == "" && len(vs) > 0:
		cv := vs[len(vs)-1]
		attrs := map[string]any{
			"enabled": cv.enabled, "nbf": cv.leaf.NotBefore.Unix(), "exp": cv.leaf.NotAfter.Unix(),
			"created": cv.leaf.NotBefore.Unix(), "updated": cv.leaf.NotBefore.Unix(),
		}
		if cv.enabledUnreported {
			delete(attrs, "enabled")
		}
		bundle := map[string]any{
			"id":         base + "/certificates/" + name + "/" + cv.version,
			"kid":        base + "/keys/" + name + "/" + cv.version,
			"sid":        base + "/secrets/" + name + "/" + cv.version,
			"cer":        base64.StdEncoding.EncodeToString(cv.leaf.Raw),
			"attributes": attrs,
		}
		if cv.policy != (restPolicy{}) {
			bundle["policy"] = cv.policy
		}
		writeJSON(w, http.StatusOK, bundle)
	case r.Method == http.MethodGet && rest == "":
		writeJSON(w, http.StatusNotFound, map[string]any{"error": map[string]any{"code": "CertificateNotFound", "message": "not found"}})
	default:
		http.NotFound(w, r)
	}
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}

var (
	keysMu sync.Mutex
	keys   = map[string]crypto.Signer{}
)

// testKey returns a key for kty/size/crv, generated once per test binary (RSA 3072 is slow).
func testKey(kty string, size int, crv string) (crypto.Signer, error) {
	id := fmt.Sprint(kty, size, crv)
	keysMu.Lock()
	defer keysMu.Unlock()
	if k, ok := keys[id]; ok {
		return k, nil
	}
	var k crypto.Signer
	var err error
	if strings.HasPrefix(kty, "EC") {
		c := map[string]elliptic.Curve{"P-256": elliptic.P256(), "P-384": elliptic.P384(), "P-521": elliptic.P521()}[crv]
		if c == nil {
			return nil, fmt.Errorf("curve %q", crv)
		}
		k, err = ecdsa.GenerateKey(c, rand.Reader)
	} else {
		k, err = rsa.GenerateKey(rand.Reader, size)
	}
	if err == nil {
		keys[id] = k
	}
	return k, err
}

// issue makes a self-signed certificate version as the policy p describes.
func issue(version string, p restPolicy, notBefore, notAfter time.Time) (certVersion, error) {
	kp := p.KeyProps
	if kp == nil {
		kp = &keyProps{Kty: "RSA", KeySize: 2048}
	}
	key, err := testKey(kp.Kty, kp.KeySize, kp.Crv)
	if err != nil {
		return certVersion{}, err
	}
	names := map[string]x509.KeyUsage{"digitalSignature": x509.KeyUsageDigitalSignature, "keyEncipherment": x509.KeyUsageKeyEncipherment}
	var ku x509.KeyUsage
	var ekus []asn1.ObjectIdentifier
	if xp := p.X509Props; xp != nil {
		for _, u := range xp.KeyUsage {
			ku |= names[u]
		}
		for _, e := range xp.Ekus {
			var oid asn1.ObjectIdentifier
			for _, n := range strings.Split(e, ".") {
				var i int
				fmt.Sscan(n, &i)
				oid = append(oid, i)
			}
			ekus = append(ekus, oid)
		}
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "signer", Organization: []string{"o"}},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: ku, UnknownExtKeyUsage: ekus, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return certVersion{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	return certVersion{version: version, leaf: leaf, policy: p, enabled: true}, err
}

type staticToken struct{}

func (staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "token", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// goodPolicy is the REST form of what the test request below asks for.
func goodPolicy() restPolicy {
	f := false
	return restPolicy{
		KeyProps:    &keyProps{Exportable: &f, Kty: "RSA", KeySize: 2048, ReuseKey: &f},
		X509Props:   &x509Props{Subject: "CN=signer, O=o, ST=s, C=ZZ", Ekus: []string{OIDCodeSigning}, KeyUsage: []string{"digitalSignature"}, ValidityMonths: 12},
		Issuer:      &issuerProps{Name: "Self"},
		SecretProps: &secretProps{ContentType: "application/x-pem-file"},
	}
}

func TestEnsureSigningCertificate(t *testing.T) {
	request := SigningCertificate{Name: "sig", Subject: "CN=signer, O=o, ST=s, C=ZZ", KeyType: "RSA", KeySize: 2048}
	now := time.Now()
	year := now.AddDate(1, 0, 0)
	tests := []struct {
		name string
		// existing version: its policy (after edit), validity, enabled; nil edit = no certificate.
		edit      func(p *restPolicy, cv *certVersion)
		notBefore time.Time
		notAfter  time.Time
		req       func(c *SigningCertificate)
		replaced  string // substring of Result.Replaced; "" = the existing version is reused
		refused   error  // the error EnsureSigningCertificate must return, creating nothing
	}{
		{name: "matching version reused", edit: func(*restPolicy, *certVersion) {}, notAfter: year},
		{name: "matching EC version reused", notAfter: year,
			edit: func(p *restPolicy, _ *certVersion) {
				p.KeyProps.Kty, p.KeyProps.KeySize, p.KeyProps.Crv = "EC", 0, "P-384"
			},
			req: func(c *SigningCertificate) { c.KeyType, c.KeySize, c.Curve = "EC", 0, "P-384" }},
		{name: "exportable key", notAfter: year, replaced: "key exportable: have true",
			edit: func(p *restPolicy, _ *certVersion) { t := true; p.KeyProps.Exportable = &t }},
		{name: "exportable unset (Key Vault's default is exportable)", notAfter: year, replaced: "key exportable: have true",
			edit: func(p *restPolicy, _ *certVersion) { p.KeyProps.Exportable = nil }},
		{name: "software key where HSM is asked for", notAfter: year, replaced: "key type: have RSA, want RSA-HSM",
			edit: func(*restPolicy, *certVersion) {},
			req:  func(c *SigningCertificate) { c.KeyType = "RSA-HSM" }},
		{name: "HSM key where software is asked for: refused", notAfter: year, refused: ErrKeyDowngrade,
			edit: func(p *restPolicy, _ *certVersion) { p.KeyProps.Kty = "RSA-HSM" }},
		{name: "expired HSM key where software is asked for: refused", notBefore: now.AddDate(-1, 0, -1), notAfter: now.Add(-time.Hour), refused: ErrKeyDowngrade,
			edit: func(p *restPolicy, _ *certVersion) { p.KeyProps.Kty = "RSA-HSM" }},
		{name: "matching HSM version reused", notAfter: year,
			edit: func(p *restPolicy, _ *certVersion) { p.KeyProps.Kty = "RSA-HSM" },
			req:  func(c *SigningCertificate) { c.KeyType = "RSA-HSM" }},
		{name: "RSA 2048 where 3072 is asked for", notAfter: year, replaced: "key size: have 2048, want 3072",
			edit: func(*restPolicy, *certVersion) {},
			req:  func(c *SigningCertificate) { c.KeySize = 3072 }},
		{name: "RSA where EC is asked for", notAfter: year, replaced: "certificate public key: have RSA 2048, want EC P-256",
			edit: func(*restPolicy, *certVersion) {},
			req:  func(c *SigningCertificate) { c.KeyType, c.KeySize = "EC", 0 }},
		{name: "EC curve differs", notAfter: year, replaced: "key curve: have P-384, want P-256",
			edit: func(p *restPolicy, _ *certVersion) {
				p.KeyProps.Kty, p.KeyProps.KeySize, p.KeyProps.Crv = "EC", 0, "P-384"
			},
			req: func(c *SigningCertificate) { c.KeyType, c.KeySize = "EC", 0 }},
		{name: "expired", notBefore: now.AddDate(-1, 0, -1), notAfter: now.Add(-24 * time.Hour), replaced: "(expired)",
			edit: func(*restPolicy, *certVersion) {}},
		{name: "expiring within RenewBefore", notAfter: now.Add(RenewBefore - time.Hour), replaced: "(expiring)",
			edit: func(*restPolicy, *certVersion) {}},
		{name: "expiring just after RenewBefore: reused", notAfter: now.Add(RenewBefore + time.Hour),
			edit: func(*restPolicy, *certVersion) {}},
		{name: "not yet valid", notBefore: now.Add(time.Hour), notAfter: year, replaced: "not before",
			edit: func(*restPolicy, *certVersion) {}},
		// An administrator's emergency stop: refused, never replaced by an enabled version with a
		// new key, whatever else is wrong with the certificate.
		{name: "disabled: refused", notAfter: year, refused: ErrCertificateDisabled,
			edit: func(_ *restPolicy, cv *certVersion) { cv.enabled = false }},
		{name: "disabled and expired: refused", notBefore: now.AddDate(-1, 0, -1), notAfter: now.Add(-time.Hour), refused: ErrCertificateDisabled,
			edit: func(_ *restPolicy, cv *certVersion) { cv.enabled = false }},
		{name: "disabled with an exportable key: refused", notAfter: year, refused: ErrCertificateDisabled,
			edit: func(p *restPolicy, cv *certVersion) { t := true; p.KeyProps.Exportable, cv.enabled = &t, false }},
		{name: "enabled not reported: refused", notAfter: year, refused: ErrCertificateDisabled,
			edit: func(_ *restPolicy, cv *certVersion) { cv.enabledUnreported = true }},
		{name: "key usage with keyEncipherment", notAfter: year, replaced: "policy key usage",
			edit: func(p *restPolicy, _ *certVersion) {
				p.X509Props.KeyUsage = []string{"digitalSignature", "keyEncipherment"}
			}},
		{name: "no code-signing EKU", notAfter: year, replaced: "certificate extended key usage",
			edit: func(p *restPolicy, _ *certVersion) { p.X509Props.Ekus = []string{"1.3.6.1.5.5.7.3.1"} }},
		{name: "PKCS#12 secret", notAfter: year, replaced: "secret content type: have application/x-pkcs12",
			edit: func(p *restPolicy, _ *certVersion) { p.SecretProps.ContentType = "application/x-pkcs12" }},
		{name: "other issuer", notAfter: year, replaced: "issuer: have SomeCA, want Self",
			edit: func(p *restPolicy, _ *certVersion) { p.Issuer.Name = "SomeCA" }},
		{name: "no policy reported", notAfter: year, replaced: "policy: not reported",
			edit: func(p *restPolicy, _ *certVersion) { *p = restPolicy{} }},
		{name: "no certificate: created", replaced: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vault := &fakeVault{versions: map[string][]certVersion{}}
			srv := httptest.NewTLSServer(vault)
			defer srv.Close()
			if tt.edit != nil {
				// The existing version is issued as its (edited) policy says, then its reported
				// policy and attributes are what the test makes of them.
				p := goodPolicy()
				cv := certVersion{enabled: true}
				tt.edit(&p, &cv)
				issued := p
				if issued.KeyProps == nil {
					issued = goodPolicy()
				}
				nb := tt.notBefore
				if nb.IsZero() {
					nb = now.Add(-time.Hour)
				}
				v, err := issue("v1", issued, nb, tt.notAfter)
				if err != nil {
					t.Fatal(err)
				}
				v.policy, v.enabled, v.enabledUnreported = p, cv.enabled, cv.enabledUnreported
				vault.versions["sig"] = []certVersion{v}
			}
			c := request
			if tt.req != nil {
				tt.req(&c)
			}
			opts := &azcertificates.ClientOptions{DisableChallengeResourceVerification: true}
			opts.Transport = srv.Client()

			// The plan says what Ensure then does, and changes nothing.
			action, detail, err := PlanSigningCertificate(context.Background(), srv.URL, staticToken{}, opts, c)
			wantAction, wantDetail := PlanKeep, "v1"
			switch {
			case tt.refused != nil:
				wantAction, wantDetail = PlanRefuse, tt.refused.Error()
			case tt.edit == nil:
				wantAction, wantDetail = PlanCreate, ""
			case tt.replaced != "":
				wantAction, wantDetail = PlanNewVersion, tt.replaced
			}
			if err != nil || action != wantAction || !strings.Contains(detail, wantDetail) || len(vault.created) != 0 {
				t.Fatalf("plan: %q %q, %v, %d versions created; want %q mentioning %q, none created", action, detail, err, len(vault.created), wantAction, wantDetail)
			}

			res, err := EnsureSigningCertificate(context.Background(), srv.URL, staticToken{}, opts, c)
			if tt.refused != nil {
				if !errors.Is(err, tt.refused) || len(vault.created) != 0 {
					t.Fatalf("got %v with %d versions created, want %v and none", err, len(vault.created), tt.refused)
				}
				if !strings.Contains(err.Error(), "certificate sig") {
					t.Errorf("the refusal does not name the certificate: %v", err)
				}
				if errors.Is(tt.refused, ErrCertificateDisabled) && (!strings.Contains(err.Error(), "enable it") || !strings.Contains(err.Error(), "delete it")) {
					t.Errorf("the refusal does not say how to proceed: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantCreates, wantVersion := 0, "v1"
			if tt.replaced != "" {
				wantCreates, wantVersion = 1, "v2"
			} else if tt.edit == nil {
				wantCreates = 1
			}
			if len(vault.created) != wantCreates {
				t.Fatalf("%d certificate versions created, want %d (Replaced %q)", len(vault.created), wantCreates, res.Replaced)
			}
			if want := srv.URL + "/keys/sig/" + wantVersion; res.KeyID != want {
				t.Errorf("KeyID %s, want %s", res.KeyID, want)
			}
			got := strings.Join(res.Replaced, "; ")
			if (tt.replaced == "") != (got == "") || !strings.Contains(got, tt.replaced) {
				t.Errorf("Replaced %q, want it to mention %q", got, tt.replaced)
			}
			if wantCreates == 0 {
				return
			}
			// The new version has the requested policy, and so passes the checks.
			p := vault.created[0]
			if p.KeyProps == nil || p.KeyProps.Exportable == nil || *p.KeyProps.Exportable || p.KeyProps.Kty != c.KeyType {
				t.Errorf("created with key properties %+v", p.KeyProps)
			}
			if d := mismatches(azcertificates.Certificate{Attributes: &azcertificates.CertificateAttributes{Enabled: ptrTo(true)}, Policy: c.policy()}, res.Certificate, c.policy(), time.Now()); len(d) > 0 {
				t.Errorf("the new version fails its own checks: %q", d)
			}
		})
	}
}

// TestEnsureSigningCertificateIdempotent: a replaced version is reused by the next run.
func TestEnsureSigningCertificateIdempotent(t *testing.T) {
	vault := &fakeVault{versions: map[string][]certVersion{}}
	srv := httptest.NewTLSServer(vault)
	defer srv.Close()
	p := goodPolicy()
	tr := true
	p.KeyProps.Exportable = &tr
	v, err := issue("v1", p, time.Now().Add(-time.Hour), time.Now().AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	vault.versions["sig"] = []certVersion{v}
	opts := &azcertificates.ClientOptions{DisableChallengeResourceVerification: true}
	opts.Transport = srv.Client()
	c := SigningCertificate{Name: "sig", Subject: "CN=signer, O=o, ST=s, C=ZZ", KeyType: "RSA", KeySize: 2048}
	var ids []string
	for range 2 {
		res, err := EnsureSigningCertificate(context.Background(), srv.URL, staticToken{}, opts, c)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.KeyID)
	}
	if ids[0] != srv.URL+"/keys/sig/v2" || ids[1] != ids[0] || len(vault.created) != 1 {
		t.Errorf("key ids %q after %d creations, want v2 twice after one", ids, len(vault.created))
	}
}

func ptrTo[T any](v T) *T { return &v }
