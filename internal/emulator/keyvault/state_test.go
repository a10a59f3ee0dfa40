package keyvault

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a settable Config.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func innerCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	inner, _ := e["innererror"].(map[string]any)
	c, _ := inner["code"].(string)
	return c
}

// TestKeyState checks that a key's enabled, nbf and exp attributes are stored from create and
// update, echoed in its bundle, and enforced on sign by the vault's clock (403 Forbidden), while
// verify stays allowed, as Key Vault allows it on disabled and expired keys; and that a
// certificate's key carries the certificate's validity and is marked managed.
func TestKeyState(t *testing.T) {
	start := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	clk := &clock{now: start}
	_, h := newVaultWith(t, Config{Now: clk.Now})
	const v = "?api-version=7.5"
	d32 := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	sign := map[string]any{"alg": "ES256", "value": d32}
	ec := func(attrs map[string]any) map[string]any {
		return map[string]any{"kty": "EC", "crv": "P-256", "attributes": attrs}
	}
	hour := int64(3600)
	t0 := start.Unix()
	tests := []struct {
		name, method, path string
		at                 time.Time // the clock; start if zero
		body               any
		status             int
		code, inner        string
		attrs              map[string]any // attributes the answer must carry, if set
	}{
		{"create a disabled key", "POST", "/keys/off/create" + v, time.Time{}, ec(map[string]any{"enabled": false}), 200, "", "", map[string]any{"enabled": false}},
		{"a disabled key does not sign", "POST", "/keys/off/sign" + v, time.Time{}, sign, 403, "Forbidden", "KeyDisabled", nil},
		{"its bundle says disabled", "GET", "/keys/off" + v, time.Time{}, nil, 200, "", "", map[string]any{"enabled": false}},
		{"create a key valid from in an hour", "POST", "/keys/later/create" + v, time.Time{}, ec(map[string]any{"nbf": t0 + hour}), 200, "", "", map[string]any{"enabled": true, "nbf": float64(t0 + hour)}},
		{"it does not sign before nbf", "POST", "/keys/later/sign" + v, time.Time{}, sign, 403, "Forbidden", "KeyNotYetValid", nil},
		{"it signs at nbf", "POST", "/keys/later/sign" + v, start.Add(time.Hour), sign, 200, "", "", nil},
		{"create a key valid for an hour", "POST", "/keys/hour/create" + v, time.Time{}, ec(map[string]any{"exp": t0 + hour}), 200, "", "", map[string]any{"exp": float64(t0 + hour)}},
		{"it signs before exp", "POST", "/keys/hour/sign" + v, start.Add(59 * time.Minute), sign, 200, "", "", nil},
		{"it does not sign at exp", "POST", "/keys/hour/sign" + v, start.Add(time.Hour), sign, 403, "Forbidden", "KeyExpired", nil},
		{"create an enabled key", "POST", "/keys/k/create" + v, time.Time{}, ec(nil), 200, "", "", map[string]any{"enabled": true}},
		{"it signs", "POST", "/keys/k/sign" + v, time.Time{}, sign, 200, "", "", nil},
		{"disable it (latest version)", "PATCH", "/keys/k/" + v, time.Time{}, map[string]any{"attributes": map[string]any{"enabled": false}}, 200, "", "", map[string]any{"enabled": false}},
		{"it no longer signs", "POST", "/keys/k/sign" + v, time.Time{}, sign, 403, "Forbidden", "KeyDisabled", nil},
		{"enable it, with an exp", "PATCH", "/keys/k/" + v, time.Time{}, map[string]any{"attributes": map[string]any{"enabled": true, "exp": t0 + hour}}, 200, "", "", map[string]any{"enabled": true, "exp": float64(t0 + hour)}},
		{"it signs again", "POST", "/keys/k/sign" + v, time.Time{}, sign, 200, "", "", nil},
		{"it stops at its new exp", "POST", "/keys/k/sign" + v, start.Add(2 * time.Hour), sign, 403, "Forbidden", "KeyExpired", nil},
		{"update with key_ops the key type lacks", "PATCH", "/keys/k/" + v, time.Time{}, map[string]any{"key_ops": []string{"wrapKey"}}, 400, "BadParameter", "", nil},
		{"update an unknown key", "PATCH", "/keys/nope/" + v, time.Time{}, map[string]any{"attributes": map[string]any{"enabled": false}}, 404, "KeyNotFound", "", nil},
		{"nbf after exp refused", "POST", "/keys/bad/create" + v, time.Time{}, ec(map[string]any{"nbf": t0 + hour, "exp": t0}), 400, "BadParameter", "", nil},
		{"nbf equal to exp refused", "POST", "/keys/bad/create" + v, time.Time{}, ec(map[string]any{"nbf": t0, "exp": t0}), 400, "BadParameter", "", nil},
		{"exportable refused", "POST", "/keys/bad/create" + v, time.Time{}, ec(map[string]any{"exportable": true}), 400, "BadParameter", "", nil},
		{"nbf as a string refused", "POST", "/keys/bad/create" + v, time.Time{}, ec(map[string]any{"nbf": "2030-01-01"}), 400, "BadParameter", "", nil},
		{"release_policy refused", "POST", "/keys/bad/create" + v, time.Time{}, map[string]any{"kty": "EC", "release_policy": map[string]any{"data": "e30"}}, 400, "BadParameter", "", nil},
		{"certificate", "POST", "/certificates/c/create" + v, time.Time{}, certBody(map[string]any{"kty": "EC", "crv": "P-256"}, map[string]any{"subject": "CN=c", "validity_months": 1}), 202, "", "", nil},
		{"its key signs while the certificate is valid", "POST", "/keys/c/sign" + v, time.Time{}, sign, 200, "", "", nil},
		{"its key does not sign after the certificate expired", "POST", "/keys/c/sign" + v, start.AddDate(0, 1, 1), sign, 403, "Forbidden", "KeyExpired", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			at := tc.at
			if at.IsZero() {
				at = start
			}
			clk.set(at)
			rec, out := call(t, h, tc.method, tc.path, "good", tc.body)
			if rec.Code != tc.status || errCode(out) != tc.code || innerCode(out) != tc.inner {
				t.Fatalf("got %d %q %q, want %d %q %q (%s)", rec.Code, errCode(out), innerCode(out), tc.status, tc.code, tc.inner, rec.Body.String())
			}
			got, _ := out["attributes"].(map[string]any)
			for k, want := range tc.attrs {
				if got[k] != want {
					t.Fatalf("attributes.%s = %v, want %v (%s)", k, got[k], want, rec.Body.String())
				}
			}
		})
	}

	// Verify is allowed on disabled and expired keys: sign with a key, then disable it and move
	// past its exp.
	clk.set(start)
	call(t, h, "POST", "/keys/ver/create"+v, "good", ec(map[string]any{"exp": t0 + hour}))
	_, sig := call(t, h, "POST", "/keys/ver/sign"+v, "good", sign)
	call(t, h, "PATCH", "/keys/ver/"+v, "good", map[string]any{"attributes": map[string]any{"enabled": false}})
	clk.set(start.Add(2 * time.Hour))
	if rec, out := call(t, h, "POST", "/keys/ver/verify"+v, "good", map[string]any{"alg": "ES256", "digest": d32, "value": sig["value"]}); rec.Code != 200 || out["value"] != true {
		t.Fatalf("verify with a disabled, expired key: %d %s", rec.Code, rec.Body.String())
	}

	// The certificate's key: managed, its nbf and exp the certificate's validity.
	clk.set(start)
	_, key := call(t, h, "GET", "/keys/c"+v, "good", nil)
	_, cert := call(t, h, "GET", "/certificates/c"+v, "good", nil)
	der, _ := base64.StdEncoding.DecodeString(cert["cer"].(string))
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ka, _ := key["attributes"].(map[string]any)
	if key["managed"] != true || ka["nbf"] != float64(leaf.NotBefore.Unix()) || ka["exp"] != float64(leaf.NotAfter.Unix()) {
		t.Fatalf("certificate key: managed %v, nbf %v, exp %v; certificate valid %v to %v", key["managed"], ka["nbf"], ka["exp"], leaf.NotBefore.Unix(), leaf.NotAfter.Unix())
	}
	ca, _ := cert["attributes"].(map[string]any)
	if ca["nbf"] != ka["nbf"] || ca["exp"] != ka["exp"] {
		t.Fatalf("certificate attributes %v, key attributes %v", ca, ka)
	}
	if _, plain := call(t, h, "GET", "/keys/k"+v, "good", nil); plain["managed"] != nil {
		t.Fatalf("a key created on its own is reported managed: %v", plain["managed"])
	}
}

// TestObjectNames checks that names outside Key Vault's rule (1-127 of 0-9, a-z, A-Z, '-') are
// refused with 400 BadParameter on every kind of object, and that the longest valid name works.
func TestObjectNames(t *testing.T) {
	_, h := newVault(t)
	const v = "?api-version=7.5"
	key := map[string]any{"kty": "EC", "crv": "P-256"}
	cert := certBody(map[string]any{"kty": "EC"}, map[string]any{"subject": "CN=n"})
	long127, long128, long200 := strings.Repeat("a", 127), strings.Repeat("a", 128), strings.Repeat("b", 200)
	tests := []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"underscore", "POST", "/keys/my_key/create" + v, key, 400, "BadParameter"},
		{"dot", "POST", "/keys/my.key/create" + v, key, 400, "BadParameter"},
		{"escaped dot", "POST", "/keys/my%2Ekey/create" + v, key, 400, "BadParameter"},
		{"non-ASCII letter", "POST", "/keys/cl%C3%A9/create" + v, key, 400, "BadParameter"},
		{"128 characters", "POST", "/keys/" + long128 + "/create" + v, key, 400, "BadParameter"},
		{"200 characters", "POST", "/keys/" + long200 + "/create" + v, key, 400, "BadParameter"},
		{"certificate with an underscore", "POST", "/certificates/my_cert/create" + v, cert, 400, "BadParameter"},
		{"certificate of 200 characters", "POST", "/certificates/" + long200 + "/create" + v, cert, 400, "BadParameter"},
		{"pending of a bad name", "GET", "/certificates/my.cert/pending" + v, nil, 400, "BadParameter"},
		{"get key of a bad name", "GET", "/keys/my_key" + v, nil, 400, "BadParameter"},
		{"sign with a bad name", "POST", "/keys/my_key/sign" + v, map[string]any{"alg": "ES256", "value": ""}, 400, "BadParameter"},
		{"update a bad name", "PATCH", "/keys/my_key/" + v, map[string]any{}, 400, "BadParameter"},
		{"secret of a bad name", "GET", "/secrets/my.secret" + v, nil, 400, "BadParameter"},
		{"no token still gets the challenge", "POST", "/keys/my_key/create" + v, key, 401, "Unauthorized"},
		{"127 characters", "POST", "/keys/" + long127 + "/create" + v, key, 200, ""},
		{"letters, digits and dashes", "POST", "/keys/My-Key-1/create" + v, key, 200, ""},
		{"certificate with dashes", "POST", "/certificates/code-signing-2/create" + v, cert, 202, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			token := "good"
			if tc.status == 401 {
				token = ""
			}
			rec, out := call(t, h, tc.method, tc.path, token, tc.body)
			if rec.Code != tc.status || errCode(out) != tc.code {
				t.Fatalf("got %d %q, want %d %q (%s)", rec.Code, errCode(out), tc.status, tc.code, rec.Body.String())
			}
		})
	}
}

// TestCaseInsensitiveLookup checks that keys, certificates and secrets are found whatever the
// case of their name and version, and that ids report the case they were created with.
func TestCaseInsensitiveLookup(t *testing.T) {
	_, h := newVault(t)
	const v = "?api-version=7.5"
	d32 := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	_, created := call(t, h, "POST", "/keys/MixedCase/create"+v, "good", map[string]any{"kty": "EC", "crv": "P-256"})
	kid := created["key"].(map[string]any)["kid"].(string)
	ver := kid[strings.LastIndex(kid, "/")+1:]
	if rec, _ := call(t, h, "POST", "/certificates/CertCase/create"+v, "good", certBody(map[string]any{"kty": "EC"}, map[string]any{"subject": "CN=c"})); rec.Code != 202 {
		t.Fatalf("create certificate: %d", rec.Code)
	}
	_, c := call(t, h, "GET", "/certificates/CertCase"+v, "good", nil)
	cid := c["id"].(string)
	cver := cid[strings.LastIndex(cid, "/")+1:]
	up := strings.ToUpper
	tests := []struct {
		name, method, path string
		body               any
		field              string // the id field of the answer
		want               string
	}{
		{"key by lower-case name", "GET", "/keys/mixedcase" + v, nil, "kid", kid},
		{"key by upper-case name and version", "GET", "/keys/MIXEDCASE/" + up(ver) + v, nil, "kid", kid},
		{"sign by upper-case version", "POST", "/keys/mixedCASE/" + up(ver) + "/sign" + v, map[string]any{"alg": "ES256", "value": d32}, "kid", kid},
		{"update by upper-case version", "PATCH", "/keys/mixedcase/" + up(ver) + v, map[string]any{"attributes": map[string]any{"enabled": true}}, "kid", kid},
		{"certificate by lower-case name and upper-case version", "GET", "/certificates/certcase/" + up(cver) + v, nil, "id", cid},
		{"pending by upper-case name", "GET", "/certificates/CERTCASE/pending" + v, nil, "target", strings.TrimSuffix(cid, "/"+cver)},
		{"secret by upper-case name and version", "GET", "/secrets/CERTCASE/" + up(cver) + v, nil, "id", strings.Replace(cid, "/certificates/", "/secrets/", 1)},
		{"certificate's key by lower-case name", "GET", "/keys/certcase/" + up(cver) + v, nil, "kid", strings.Replace(cid, "/certificates/", "/keys/", 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, out := call(t, h, tc.method, tc.path, "good", tc.body)
			if rec.Code/100 != 2 {
				t.Fatalf("got %d (%s)", rec.Code, rec.Body.String())
			}
			got, _ := out[tc.field].(string)
			if k, ok := out["key"].(map[string]any); ok && tc.field == "kid" {
				got, _ = k["kid"].(string)
			}
			if got != tc.want {
				t.Fatalf("%s %q, want %q", tc.field, got, tc.want)
			}
		})
	}
}

// TestCertificateIssuer checks that the pending operation names the issuer the certificate was
// created with, and that a CA-issued leaf ends no later than its issuer.
func TestCertificateIssuer(t *testing.T) {
	start := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	newCA := func(notAfter time.Time) Issuer { return testCA(t, start.AddDate(-1, 0, 0), notAfter) }
	ca := newCA(start.AddDate(0, 1, 0)) // ends in a month
	_, h := newVaultWith(t, Config{Now: func() time.Time { return start }, Issuers: map[string]Issuer{
		"LocalCA": ca, "ExpiredCA": newCA(start.Add(-time.Hour)),
	}})
	const v = "?api-version=7.5"
	policy := func(issuer string, months int) map[string]any {
		return map[string]any{"policy": map[string]any{
			"key_props": map[string]any{"kty": "EC", "exportable": false}, "issuer": map[string]any{"name": issuer},
			"secret_props": map[string]any{"contentType": "application/x-pem-file"},
			"x509_props":   map[string]any{"subject": "CN=leaf", "validity_months": months},
		}}
	}
	tests := []struct {
		name, cert, issuer string
		months             int
		status             int
		notAfter           time.Time // of the leaf, if the creation succeeds
	}{
		{"self-issued", "self", "Self", 12, 202, start.AddDate(0, 12, 0)},
		{"CA-issued within the CA's validity", "short", "LocalCA", 0, 202, start.AddDate(0, 1, 0)},
		{"CA-issued beyond the CA's validity is capped", "long", "LocalCA", 12, 202, ca.Cert.NotAfter},
		{"CA expired", "late", "ExpiredCA", 12, 400, time.Time{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			months := tc.months
			if months == 0 {
				months = 1
			}
			rec, op := call(t, h, "POST", "/certificates/"+tc.cert+"/create"+v, "good", policy(tc.issuer, months))
			if rec.Code != tc.status {
				t.Fatalf("create: %d, want %d (%s)", rec.Code, tc.status, rec.Body.String())
			}
			if rec.Code != 202 {
				return
			}
			if got := op["issuer"].(map[string]any)["name"]; got != tc.issuer {
				t.Fatalf("create operation issuer %v, want %s", got, tc.issuer)
			}
			_, pending := call(t, h, "GET", "/certificates/"+tc.cert+"/pending"+v, "good", nil)
			if got := pending["issuer"].(map[string]any)["name"]; got != tc.issuer {
				t.Fatalf("pending issuer %v, want %s", got, tc.issuer)
			}
			_, sec := call(t, h, "GET", "/secrets/"+tc.cert+v, "good", nil)
			block, _ := pem.Decode([]byte(sec["value"].(string)))
			leaf, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if !leaf.NotAfter.Equal(tc.notAfter) {
				t.Fatalf("leaf NotAfter %v, want %v", leaf.NotAfter, tc.notAfter)
			}
			if tc.issuer != "Self" {
				if err := leaf.CheckSignatureFrom(ca.Cert); err != nil {
					t.Fatalf("leaf not issued by the CA: %v", err)
				}
			}
		})
	}
}

// TestCertificateOperationPending checks that a creation answers 202 with the operation in
// progress, as Key Vault does, and that the operation completes after Config.PendingPolls reads, so
// that a client which reads the certificate without waiting for the operation is caught.
func TestCertificateOperationPending(t *testing.T) {
	const v = "?api-version=7.5"
	policy := certBody(map[string]any{"kty": "EC"}, map[string]any{"subject": "CN=leaf", "validity_months": 12})
	for _, polls := range []int{0, 1, 3} {
		t.Run(fmt.Sprint(polls), func(t *testing.T) {
			_, h := newVaultWith(t, Config{PendingPolls: polls})
			rec, op := call(t, h, "POST", "/certificates/c/create"+v, "good", policy)
			if rec.Code != 202 || op["status"] != "inProgress" {
				t.Fatalf("create: %d, status %v; want 202 and inProgress", rec.Code, op["status"])
			}
			for i := range polls + 2 {
				want := "inProgress"
				if i >= polls {
					want = "completed"
				}
				rec, op := call(t, h, "GET", "/certificates/c/pending"+v, "good", nil)
				if rec.Code != 200 || op["status"] != want {
					t.Fatalf("read %d of the operation: %d, status %v; want %s", i+1, rec.Code, op["status"], want)
				}
			}
		})
	}
}

// TestCertificateSecretChain pins exactly what a certificate's secret holds: PEM CERTIFICATE
// blocks and nothing else, the leaf (the certificate's cer) first, then, for a certificate from
// a configured CA issuer, Issuer.Chain in order. Giving a CA-issued certificate its chain at once
// is the emulator's UNCONFIRMED model of Key Vault's integrated CAs (see Issuer.Chain).
func TestCertificateSecretChain(t *testing.T) {
	start := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	root := testCA(t, start.AddDate(-1, 0, 0), start.AddDate(5, 0, 0))
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "local intermediate CA"},
		NotBefore: start.AddDate(-1, 0, 0), NotAfter: start.AddDate(4, 0, 0),
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}, root.Cert, interKey.Public(), root.Key)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	issuer := Issuer{Cert: inter, Key: interKey, Chain: []*x509.Certificate{inter, root.Cert}}
	_, h := newVaultWith(t, Config{Now: func() time.Time { return start }, Issuers: map[string]Issuer{"LocalCA": issuer}})
	const v = "?api-version=7.5"

	tests := []struct {
		name, issuer string
		tail         []*x509.Certificate // what follows the leaf
	}{
		{"self-issued: the leaf alone", "Self", nil},
		{"CA-issued: the leaf, then the issuer's chain", "LocalCA", issuer.Chain},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("c%d", i)
			body := certBody(map[string]any{"kty": "EC"}, map[string]any{"subject": "CN=leaf", "validity_months": 12})
			body["policy"].(map[string]any)["issuer"] = map[string]any{"name": tc.issuer}
			if rec, _ := call(t, h, "POST", "/certificates/"+name+"/create"+v, "good", body); rec.Code != 202 {
				t.Fatalf("create: %d %s", rec.Code, rec.Body.String())
			}
			_, cert := call(t, h, "GET", "/certificates/"+name+v, "good", nil)
			cer, err := base64.StdEncoding.DecodeString(cert["cer"].(string))
			if err != nil {
				t.Fatal(err)
			}
			rec, sec := call(t, h, "GET", "/secrets/"+name+v, "good", nil)
			if rec.Code != 200 || sec["contentType"] != "application/x-pem-file" {
				t.Fatalf("secret: %d %s", rec.Code, rec.Body.String())
			}
			var blocks [][]byte
			rest := []byte(sec["value"].(string))
			for len(rest) > 0 {
				var b *pem.Block
				if b, rest = pem.Decode(rest); b == nil {
					t.Fatalf("the secret holds something other than PEM blocks: %q", rest)
				}
				if b.Type != "CERTIFICATE" || len(b.Headers) != 0 {
					t.Fatalf("the secret holds a %s block (headers %v)", b.Type, b.Headers)
				}
				blocks = append(blocks, b.Bytes)
			}
			want := [][]byte{cer}
			for _, c := range tc.tail {
				want = append(want, c.Raw)
			}
			if len(blocks) != len(want) {
				t.Fatalf("the secret holds %d certificates, want %d", len(blocks), len(want))
			}
			for j := range want {
				if !bytes.Equal(blocks[j], want[j]) {
					t.Fatalf("certificate %d of the secret is not the expected one", j)
				}
			}
			if tc.tail != nil {
				leaf, err := x509.ParseCertificate(cer)
				if err != nil {
					t.Fatal(err)
				}
				roots, inters := x509.NewCertPool(), x509.NewCertPool()
				roots.AddCert(root.Cert)
				inters.AddCert(inter)
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: start, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
					t.Fatalf("the leaf does not chain to the root: %v", err)
				}
			}
		})
	}
}
