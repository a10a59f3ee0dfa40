package keyvault

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// These tests speak to the handler at the HTTP level, with the wire formats of the REST API
// (the SDK-level tests are in internal/keyvault).

func newVault(t testing.TB) (*Server, http.Handler) {
	t.Helper()
	return newVaultWith(t, Config{})
}

// newVaultWith is newVault with cfg's clock, issuers, pending polls, assignments and state
// file; its callers are all "app".
func newVaultWith(t testing.TB, cfg Config) (*Server, http.Handler) {
	t.Helper()
	s, err := New(Config{
		Authority: "https://login.example", TenantID: "tenant",
		ValidateToken: func(raw string) (string, error) {
			if raw != "good" {
				return "", errors.New("bad token")
			}
			return "app", nil
		},
		Now:          cfg.Now,
		Issuers:      cfg.Issuers,
		PendingPolls: cfg.PendingPolls,
		Assignments:  cfg.Assignments,
		StatePath:    cfg.StatePath,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, s.Handler()
}

func call(t testing.TB, h http.Handler, method, path, token string, body any) (*httptest.ResponseRecorder, map[string]any) {
	t.Helper()
	var b []byte
	switch v := body.(type) {
	case nil:
	case []byte:
		b = v
	default:
		b, _ = json.Marshal(v)
	}
	req := httptest.NewRequest(method, "https://vault.example"+path, bytes.NewReader(b))
	if body != nil {
		req.Header.Set("Content-Type", "application/json") // as azcore sends every body
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	json.Unmarshal(rec.Body.Bytes(), &out)
	return rec, out
}

// certBody is a create-certificate body with keyProps and x509Props, and the fields every
// policy must give (key_props.exportable, secret_props.contentType, issuer.name) set to false,
// PEM and Self where keyProps does not set exportable itself.
func certBody(keyProps, x509Props map[string]any) map[string]any {
	kp := maps.Clone(keyProps)
	if _, ok := kp["exportable"]; !ok {
		kp["exportable"] = false
	}
	return map[string]any{"policy": map[string]any{
		"key_props": kp, "x509_props": x509Props,
		"secret_props": map[string]any{"contentType": "application/x-pem-file"},
		"issuer":       map[string]any{"name": "Self"},
	}}
}

func errCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func TestVaultRules(t *testing.T) {
	s, h := newVault(t)
	const v = "?api-version=7.5"
	if rec, _ := call(t, h, "POST", "/keys/rsa/create"+v, "good", map[string]any{"kty": "RSA", "key_size": 2048}); rec.Code != 200 {
		t.Fatalf("create rsa: %d", rec.Code)
	}
	if rec, _ := call(t, h, "POST", "/keys/ec/create"+v, "good", map[string]any{"kty": "EC", "crv": "P-256"}); rec.Code != 200 {
		t.Fatalf("create ec: %d", rec.Code)
	}
	if rec, _ := call(t, h, "POST", "/certificates/pem/create"+v, "good", certBody(map[string]any{}, map[string]any{"subject": "CN=pem"})); rec.Code != 202 {
		t.Fatalf("create certificate: %d", rec.Code)
	}
	d32 := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	d48 := base64.RawURLEncoding.EncodeToString(make([]byte, 48))
	pkcs12 := certBody(map[string]any{}, map[string]any{"subject": "CN=x"})
	pkcs12["policy"].(map[string]any)["secret_props"] = map[string]any{"contentType": "application/x-pkcs12"}
	tests := []struct {
		name, method, path, token string
		body                      any
		status                    int
		code                      string
	}{
		{"no token: the challenge", "POST", "/keys/rsa/sign" + v, "", map[string]any{"alg": "PS256", "value": d32}, 401, "Unauthorized"},
		{"bad token", "POST", "/keys/rsa/sign" + v, "bad", map[string]any{"alg": "PS256", "value": d32}, 401, "Unauthorized"},
		{"no api-version", "POST", "/keys/rsa/sign", "good", map[string]any{"alg": "PS256", "value": d32}, 400, "BadParameter"},
		{"PS256 with a 48-byte digest", "POST", "/keys/rsa/sign" + v, "good", map[string]any{"alg": "PS256", "value": d48}, 400, "BadParameter"},
		{"ES384 on a P-256 key", "POST", "/keys/ec/sign" + v, "good", map[string]any{"alg": "ES384", "value": d48}, 400, "BadParameter"},
		{"ES256 on an RSA key", "POST", "/keys/rsa/sign" + v, "good", map[string]any{"alg": "ES256", "value": d32}, 400, "BadParameter"},
		{"unknown key", "POST", "/keys/nope/sign" + v, "good", map[string]any{"alg": "PS256", "value": d32}, 404, "KeyNotFound"},
		{"body not JSON", "POST", "/keys/rsa/sign" + v, "good", []byte("{"), 400, "BadParameter"},
		{"PS256 ok", "POST", "/keys/rsa/sign" + v, "good", map[string]any{"alg": "PS256", "value": d32}, 200, ""},
		{"ES256 ok", "POST", "/keys/ec/sign" + v, "good", map[string]any{"alg": "ES256", "value": d32}, 200, ""},
		{"RSA-1024 key refused", "POST", "/keys/small/create" + v, "good", map[string]any{"kty": "RSA", "key_size": 1024}, 400, "BadParameter"},
		{"PKCS#12 certificate refused", "POST", "/certificates/p12/create" + v, "good", pkcs12, 400, "BadParameter"},
		{"secret as PKCS#12 refused", "GET", "/secrets/pem" + v + "&outContentType=application/x-pkcs12", "good", nil, 400, "BadParameter"},
		{"exportable certificate refused", "POST", "/certificates/c/create" + v, "good", certBody(map[string]any{"exportable": true}, map[string]any{"subject": "CN=x"}), 400, "BadParameter"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, out := call(t, h, tc.method, tc.path, tc.token, tc.body)
			if rec.Code != tc.status || errCode(out) != tc.code {
				t.Fatalf("got %d %q, want %d %q (%s)", rec.Code, errCode(out), tc.status, tc.code, rec.Body.String())
			}
			if rec.Code == 401 {
				if ch := rec.Header().Get("WWW-Authenticate"); !strings.Contains(ch, `authorization="https://login.example/tenant"`) || !strings.Contains(ch, `resource="https://vault.azure.net"`) {
					t.Fatalf("challenge %q", ch)
				}
			}
		})
	}
	// Signatures verify with the vault's own verify.
	_, sig := call(t, h, "POST", "/keys/ec/sign"+v, "good", map[string]any{"alg": "ES256", "value": d32})
	_, ver := call(t, h, "POST", "/keys/ec/verify"+v, "good", map[string]any{"alg": "ES256", "digest": d32, "value": sig["value"]})
	if ver["value"] != true {
		t.Fatalf("verify: %v", ver)
	}
	// Injected faults, counted in the request log.
	s.InjectFault("sign", 429, 1)
	if rec, _ := call(t, h, "POST", "/keys/rsa/sign"+v, "good", map[string]any{"alg": "PS256", "value": d32}); rec.Code != 429 || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("injected 429: %d", rec.Code)
	}
	if n := s.Count("sign", 200); n != 3 {
		t.Fatalf("%d successful signs logged, want 3", n)
	}
}

// FuzzSignBody feeds arbitrary sign request bodies to a P-256 key: a 200 answer must be an ES256
// signature (the only algorithm Key Vault allows on that curve) of a value that decodes as
// base64url to exactly SHA-256's 32 bytes, and must verify with the key over those bytes.
func FuzzSignBody(f *testing.F) {
	d := func(n int) string { return base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xa5}, n)) }
	f.Add([]byte(`{"alg":"PS256","value":"AAAA"}`))
	f.Add([]byte(`{"alg":"ES512","value":""}`))
	// ES256 on the P-256 key: a digest of the right length (signed), with padding, and of the
	// lengths of SHA-384 and SHA-512 and one byte short (all refused by the length check).
	f.Add([]byte(`{"alg":"ES256","value":"` + d(32) + `"}`))
	f.Add([]byte(`{"alg":"ES256","value":"` + base64.URLEncoding.EncodeToString(make([]byte, 32)) + `"}`))
	f.Add([]byte(`{"alg":"ES256","value":"` + d(48) + `"}`))
	f.Add([]byte(`{"alg":"ES256","value":"` + d(64) + `"}`))
	f.Add([]byte(`{"alg":"ES256","value":"` + d(31) + `"}`))
	_, h := newVault(f)
	_, created := call(f, h, "POST", "/keys/k/create?api-version=7.5", "good", map[string]any{"kty": "EC", "crv": "P-256"})
	pub := ecJWK(f, created)
	// The first ES256 seed gets past every check: the fuzzer starts from a signature made.
	if rec, out := call(f, h, "POST", "/keys/k/sign?api-version=7.5", "good", map[string]any{"alg": "ES256", "value": d(32)}); rec.Code != 200 {
		f.Fatalf("the ES256 seed is refused: %d %v", rec.Code, out)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		rec, out := call(t, h, "POST", "/keys/k/sign?api-version=7.5", "good", body)
		if rec.Code != 200 {
			return
		}
		var req signRequest
		if json.Unmarshal(body, &req) != nil || req.Alg != "ES256" {
			t.Fatalf("signed for body %q", body)
		}
		// Key Vault's value is base64url; padding is tolerated.
		digest, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(req.Value, "="))
		if err != nil || len(digest) != sha256.Size {
			t.Fatalf("signed a value of %d bytes (%v) with ES256, which needs a %d-byte digest: body %q", len(digest), err, sha256.Size, body)
		}
		v, _ := out["value"].(string)
		sig, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil || len(sig) != 64 || !ecdsa.Verify(pub, digest, new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			t.Fatalf("answered 200 with signature %q, not an ES256 signature of the digest by the key", v)
		}
	})
}

// ecJWK returns the P-256 public key of a key bundle's JWK.
func ecJWK(tb testing.TB, bundle map[string]any) *ecdsa.PublicKey {
	tb.Helper()
	key, _ := bundle["key"].(map[string]any)
	coord := func(name string) []byte {
		s, _ := key[name].(string)
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || len(b) != 32 {
			tb.Fatalf("key bundle's %s is %q", name, s)
		}
		return b
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, coord("x")...), coord("y")...))
	if err != nil {
		tb.Fatalf("key bundle's JWK: %v", err)
	}
	return pub
}

// TestKeyOps checks that key_ops are validated on creation and enforced on sign and verify, and
// that a certificate's key carries the operations its policy's key usage allows, not more.
func TestKeyOps(t *testing.T) {
	_, h := newVault(t)
	const v = "?api-version=7.5"
	d32 := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	sign := map[string]any{"alg": "PS256", "value": d32}
	verify := map[string]any{"alg": "PS256", "digest": d32, "value": d32}
	esSign := map[string]any{"alg": "ES256", "value": d32}
	cert := func(kty string, usage ...string) map[string]any {
		x := map[string]any{"subject": "CN=x"}
		if usage != nil {
			x["key_usage"] = usage
		}
		return certBody(map[string]any{"kty": kty}, x)
	}
	tests := []struct {
		name, method, path string
		body               any
		status             int
		code, inner        string
		keyOps             []any // the key_ops of the key bundle answered, if set
	}{
		{"create sign-only key", "POST", "/keys/signonly/create" + v, map[string]any{"kty": "RSA", "key_ops": []string{"sign"}}, 200, "", "", []any{"sign"}},
		{"sign with a sign-only key", "POST", "/keys/signonly/sign" + v, sign, 200, "", "", nil},
		{"verify with a sign-only key", "POST", "/keys/signonly/verify" + v, verify, 403, "Forbidden", "KeyOperationForbidden", nil},
		{"create verify-only key", "POST", "/keys/verifyonly/create" + v, map[string]any{"kty": "RSA", "key_ops": []string{"verify"}}, 200, "", "", []any{"verify"}},
		{"sign with a verify-only key", "POST", "/keys/verifyonly/sign" + v, sign, 403, "Forbidden", "KeyOperationForbidden", nil},
		{"unknown key op", "POST", "/keys/frob/create" + v, map[string]any{"kty": "RSA", "key_ops": []string{"sign", "frobnicate"}}, 400, "BadParameter", "", nil},
		{"a refused key is not stored", "POST", "/keys/frob/sign" + v, sign, 404, "KeyNotFound", "", nil},
		{"key op in the wrong case", "POST", "/keys/case/create" + v, map[string]any{"kty": "RSA", "key_ops": []string{"Sign"}}, 400, "BadParameter", "", nil},
		{"wrapKey on an EC key", "POST", "/keys/ecwrap/create" + v, map[string]any{"kty": "EC", "crv": "P-256", "key_ops": []string{"sign", "wrapKey"}}, 400, "BadParameter", "", nil},
		{"EC key defaults to sign and verify", "POST", "/keys/ec/create" + v, map[string]any{"kty": "EC", "crv": "P-256"}, 200, "", "", []any{"sign", "verify"}},
		{"key with an empty key_ops list", "POST", "/keys/noops/create" + v, map[string]any{"kty": "RSA", "key_ops": []string{}}, 200, "", "", []any{}},
		{"a key without operations refuses sign", "POST", "/keys/noops/sign" + v, sign, 403, "Forbidden", "KeyOperationForbidden", nil},
		{"RSA key defaults to six operations", "POST", "/keys/rsa/create" + v, map[string]any{"kty": "RSA"}, 200, "", "", []any{"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"}},
		{"certificate with keyEncipherment only", "POST", "/certificates/kecert/create" + v, cert("RSA", "keyEncipherment"), 202, "", "", nil},
		{"its key has no sign", "GET", "/keys/kecert" + v, nil, 200, "", "", []any{"wrapKey", "unwrapKey"}},
		{"its key refuses sign", "POST", "/keys/kecert/sign" + v, sign, 403, "Forbidden", "KeyOperationForbidden", nil},
		{"its key refuses verify", "POST", "/keys/kecert/verify" + v, verify, 403, "Forbidden", "KeyOperationForbidden", nil},
		{"certificate with digitalSignature", "POST", "/certificates/dscert/create" + v, cert("RSA", "digitalSignature"), 202, "", "", nil},
		{"its key signs and verifies only", "GET", "/keys/dscert" + v, nil, 200, "", "", []any{"sign", "verify"}},
		{"its key signs", "POST", "/keys/dscert/sign" + v, sign, 200, "", "", nil},
		{"certificate with keyCertSign only", "POST", "/certificates/cacert/create" + v, cert("RSA", "keyCertSign"), 202, "", "", nil},
		{"its key has no operation", "GET", "/keys/cacert" + v, nil, 200, "", "", []any{}},
		{"its key refuses sign too", "POST", "/keys/cacert/sign" + v, sign, 403, "Forbidden", "KeyOperationForbidden", nil},
		{"RSA certificate with Key Vault's default key usage", "POST", "/certificates/defcert/create" + v, cert("RSA"), 202, "", "", nil},
		{"its key has sign and wrap", "GET", "/keys/defcert" + v, nil, 200, "", "", []any{"sign", "verify", "wrapKey", "unwrapKey"}},
		{"EC certificate with keyEncipherment", "POST", "/certificates/eccert/create" + v, cert("EC", "digitalSignature", "keyEncipherment"), 400, "BadParameter", "", nil},
		{"EC certificate without key usage", "POST", "/certificates/ecdef/create" + v, cert("EC"), 202, "", "", nil},
		{"its EC key signs", "POST", "/keys/ecdef/sign" + v, esSign, 200, "", "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, out := call(t, h, tc.method, tc.path, "good", tc.body)
			if rec.Code != tc.status || errCode(out) != tc.code {
				t.Fatalf("got %d %q, want %d %q (%s)", rec.Code, errCode(out), tc.status, tc.code, rec.Body.String())
			}
			e, _ := out["error"].(map[string]any)
			inner, _ := e["innererror"].(map[string]any)
			if got, _ := inner["code"].(string); got != tc.inner {
				t.Fatalf("innererror %q, want %q (%s)", got, tc.inner, rec.Body.String())
			}
			if tc.keyOps != nil {
				key, _ := out["key"].(map[string]any)
				if got, _ := key["key_ops"].([]any); !reflect.DeepEqual(got, tc.keyOps) {
					t.Fatalf("key_ops %v, want %v", key["key_ops"], tc.keyOps)
				}
			}
		})
	}
}

// TestCertificatePolicyDefaults checks that a certificate policy must give the fields whose Key
// Vault defaults the emulator does not model (key_props.exportable, secret_props.contentType,
// issuer.name): a policy that leaves one out is refused, not filled with a default safer than
// Azure's, and nothing is created.
func TestCertificatePolicyDefaults(t *testing.T) {
	_, h := newVault(t)
	const v = "?api-version=7.5"
	x509Props := map[string]any{"subject": "CN=c"}
	full := func() map[string]any {
		return map[string]any{
			"key_props":    map[string]any{"kty": "EC", "exportable": false},
			"secret_props": map[string]any{"contentType": "application/x-pem-file"},
			"issuer":       map[string]any{"name": "Self"},
			"x509_props":   x509Props,
		}
	}
	without := func(field, member string) map[string]any {
		p := full()
		if member == "" {
			delete(p, field)
		} else {
			m := maps.Clone(p[field].(map[string]any))
			delete(m, member)
			p[field] = m
		}
		return p
	}
	tests := []struct {
		name   string
		policy map[string]any
		status int
		msg    string
	}{
		{"minimal policy", map[string]any{"x509_props": x509Props}, 400, "key_props.exportable"},
		{"no key_props", without("key_props", ""), 400, "key_props.exportable"},
		{"no key_props.exportable", without("key_props", "exportable"), 400, "key_props.exportable"},
		{"no secret_props", without("secret_props", ""), 400, "secret_props.contentType"},
		{"no secret_props.contentType", without("secret_props", "contentType"), 400, "secret_props.contentType"},
		{"no issuer", without("issuer", ""), 400, "issuer.name"},
		{"no issuer.name", without("issuer", "name"), 400, "issuer.name"},
		{"full policy", full(), 202, ""},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("c%d", i)
			rec, out := call(t, h, "POST", "/certificates/"+name+"/create"+v, "good", map[string]any{"policy": tc.policy})
			if rec.Code != tc.status {
				t.Fatalf("got %d, want %d (%s)", rec.Code, tc.status, rec.Body.String())
			}
			if tc.status != 202 {
				e, _ := out["error"].(map[string]any)
				if msg, _ := e["message"].(string); errCode(out) != "BadParameter" || !strings.Contains(msg, tc.msg) || !strings.Contains(msg, "not emulated") {
					t.Fatalf("error %s, want BadParameter naming %s as not emulated", rec.Body.String(), tc.msg)
				}
				if rec, _ := call(t, h, "GET", "/keys/"+name+v, "good", nil); rec.Code != 404 {
					t.Fatalf("a refused certificate left a key: %d", rec.Code)
				}
				return
			}
			_, cert := call(t, h, "GET", "/certificates/"+name+v, "good", nil)
			p, _ := cert["policy"].(map[string]any)
			kp, _ := p["key_props"].(map[string]any)
			sp, _ := p["secret_props"].(map[string]any)
			ip, _ := p["issuer"].(map[string]any)
			if kp["exportable"] != false || sp["contentType"] != "application/x-pem-file" || ip["name"] != "Self" {
				t.Fatalf("policy read back %v", p)
			}
		})
	}
}

// TestSignKeyVersion pins which version of a key signs: the one named, or without a version the
// latest (see the sign route in Handler for the sources and what is UNCONFIRMED). Each signature
// verifies under the version expected and not under the other one.
func TestSignKeyVersion(t *testing.T) {
	_, h := newVault(t)
	const v = "?api-version=7.5"
	var versions []string
	for range 2 {
		rec, out := call(t, h, "POST", "/keys/k/create"+v, "good", map[string]any{"kty": "EC", "crv": "P-256"})
		if rec.Code != 200 {
			t.Fatalf("create: %d %s", rec.Code, rec.Body.String())
		}
		versions = append(versions, versionOf(t, out))
	}
	first, latest := versions[0], versions[1]
	d32 := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	tests := []struct {
		name, path string
		status     int
		signer     string // the version whose kid the answer names, and under which it verifies
	}{
		{"no version: the latest", "/keys/k/sign", 200, latest},
		{"name in another case, no version", "/keys/K/sign", 200, latest},
		{"the first version", "/keys/k/" + first + "/sign", 200, first},
		{"the latest version named", "/keys/k/" + latest + "/sign", 200, latest},
		{"a version in upper case", "/keys/k/" + strings.ToUpper(first) + "/sign", 200, first},
		{"an unknown version", "/keys/k/" + strings.Repeat("0", 32) + "/sign", 404, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, out := call(t, h, "POST", tc.path+v, "good", map[string]any{"alg": "ES256", "value": d32})
			if rec.Code != tc.status {
				t.Fatalf("got %d, want %d (%s)", rec.Code, tc.status, rec.Body.String())
			}
			if tc.status != 200 {
				return
			}
			if kid, _ := out["kid"].(string); kid != "https://vault.example/keys/k/"+tc.signer {
				t.Fatalf("kid %q, want version %s", kid, tc.signer)
			}
			for _, ver := range versions {
				_, res := call(t, h, "POST", "/keys/k/"+ver+"/verify"+v, "good", map[string]any{"alg": "ES256", "digest": d32, "value": out["value"]})
				if got, want := res["value"], ver == tc.signer; got != want {
					t.Fatalf("verify under version %s: %v, want %v", ver, got, want)
				}
			}
		})
	}
}

// TestVaultWantsJSONBodies: a body is read only when sent as application/json (UTF-8), as
// Azure's SDKs send it; a client sending it otherwise fails here rather than against Azure.
func TestVaultWantsJSONBodies(t *testing.T) {
	_, h := newVault(t)
	const v = "?api-version=7.5"
	if rec, _ := call(t, h, "POST", "/keys/rsa/create"+v, "good", map[string]any{"kty": "RSA", "key_size": 2048}); rec.Code != 200 {
		t.Fatalf("create: %d", rec.Code)
	}
	body, _ := json.Marshal(map[string]any{"alg": "PS256", "value": base64.RawURLEncoding.EncodeToString(make([]byte, 32))})
	for _, tc := range []struct {
		contentType string
		status      int
	}{
		{"application/json", 200},
		{"application/json; charset=utf-8", 200},
		{"", 400},
		{"text/plain", 400},
		{"application/json; charset=utf-16", 400},
		{"application/x-www-form-urlencoded", 400},
	} {
		req := httptest.NewRequest("POST", "https://vault.example/keys/rsa/sign"+v, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer good")
		if tc.contentType != "" {
			req.Header.Set("Content-Type", tc.contentType)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.status || tc.status != 200 && !strings.Contains(rec.Body.String(), "want application/json") {
			t.Errorf("Content-Type %q: %d %s, want %d", tc.contentType, rec.Code, rec.Body.String(), tc.status)
		}
	}
}

// TestVerifyRefusesWrongSignatures checks the vault's verify: true only for a signature the key
// made over that digest with that algorithm, PS* only with the salt length of the hash as Key
// Vault signs, EC only as raw r||s of the curve's size; and a digest of another length than the
// algorithm's hash is refused (400 BadParameter) as for sign.
func TestVerifyRefusesWrongSignatures(t *testing.T) {
	s, h := newVault(t)
	const v = "?api-version=7.5"
	call(t, h, "POST", "/keys/rsa/create"+v, "good", map[string]any{"kty": "RSA", "key_size": 2048})
	call(t, h, "POST", "/keys/ec/create"+v, "good", map[string]any{"kty": "EC", "crv": "P-256"})
	b64 := base64.RawURLEncoding.EncodeToString
	d := sha256.Sum256([]byte("signed"))
	other := sha256.Sum256([]byte("not signed"))
	sign := func(key, alg string) []byte {
		t.Helper()
		rec, out := call(t, h, "POST", "/keys/"+key+"/sign"+v, "good", map[string]any{"alg": alg, "value": b64(d[:])})
		sig, err := base64.RawURLEncoding.DecodeString(fmt.Sprint(out["value"]))
		if rec.Code != 200 || err != nil {
			t.Fatalf("sign %s: %d %s", alg, rec.Code, rec.Body)
		}
		return sig
	}
	rs256, ps256, es256 := sign("rsa", "RS256"), sign("rsa", "PS256"), sign("ec", "ES256")
	// A PSS signature by the vault's key with an empty salt: valid PSS, not Key Vault's PS256.
	kv, err := s.lookupKey("rsa", "")
	if err != nil {
		t.Fatal(err)
	}
	noSalt, err := rsa.SignPSS(rand.Reader, kv.priv.(*rsa.PrivateKey), crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: 0})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, key, alg string
		digest, sig    []byte
		status         int
		valid          bool
	}{
		{"RS256", "rsa", "RS256", d[:], rs256, 200, true},
		{"RS256 over another digest", "rsa", "RS256", other[:], rs256, 200, false},
		{"PS256", "rsa", "PS256", d[:], ps256, 200, true},
		{"PS256 with an empty salt", "rsa", "PS256", d[:], noSalt, 200, false},
		{"ES256", "ec", "ES256", d[:], es256, 200, true},
		{"ES256 with s padded to 33 bytes", "ec", "ES256", d[:], slices.Concat(es256[:32], []byte{0}, es256[32:]), 200, false},
		{"ES256 with a 48-byte digest", "ec", "ES256", make([]byte, 48), es256, 400, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, out := call(t, h, "POST", "/keys/"+tc.key+"/verify"+v, "good", map[string]any{"alg": tc.alg, "digest": b64(tc.digest), "value": b64(tc.sig)})
			if rec.Code != tc.status {
				t.Fatalf("status %d (%s), want %d", rec.Code, rec.Body, tc.status)
			}
			if tc.status != 200 {
				if errCode(out) != "BadParameter" {
					t.Fatalf("error %s, want BadParameter", rec.Body)
				}
				return
			}
			if out["value"] != tc.valid {
				t.Fatalf("verify answered %v, want %v", out["value"], tc.valid)
			}
		})
	}
}
