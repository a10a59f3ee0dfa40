package keyvault

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
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
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	json.Unmarshal(rec.Body.Bytes(), &out)
	return rec, out
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
	d32 := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	d48 := base64.RawURLEncoding.EncodeToString(make([]byte, 48))
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
		{"exportable certificate refused", "POST", "/certificates/c/create" + v, "good", map[string]any{"policy": map[string]any{"key_props": map[string]any{"exportable": true}, "x509_props": map[string]any{"subject": "CN=x"}}}, 400, "BadParameter"},
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

func FuzzSignBody(f *testing.F) {
	f.Add([]byte(`{"alg":"PS256","value":"AAAA"}`))
	f.Add([]byte(`{"alg":"ES512","value":""}`))
	_, h := newVault(f)
	call(f, h, "POST", "/keys/k/create?api-version=7.5", "good", map[string]any{"kty": "EC", "crv": "P-256"})
	f.Fuzz(func(t *testing.T, body []byte) {
		rec, _ := call(t, h, "POST", "/keys/k/sign?api-version=7.5", "good", body)
		if rec.Code == 200 {
			var req signRequest
			if json.Unmarshal(body, &req) != nil || req.Alg != "ES256" {
				t.Fatalf("signed for body %q", body)
			}
		}
	})
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
		return map[string]any{"policy": map[string]any{"key_props": map[string]any{"kty": kty, "exportable": false}, "x509_props": x}}
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
