package entra

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestTokenEndpoint(t *testing.T) {
	now := time.Now()
	s, err := New(Config{TenantID: "t1", Clients: map[string]string{"app": "s3cret"}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	h := s.Handler()
	token := func(form url.Values) (int, map[string]any) {
		req := httptest.NewRequest("POST", "https://login.example/t1/oauth2/v2.0/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var out map[string]any
		json.Unmarshal(rec.Body.Bytes(), &out)
		return rec.Code, out
	}
	base := url.Values{"grant_type": {"client_credentials"}, "client_id": {"app"}, "client_secret": {"s3cret"}, "scope": {"https://vault.azure.net/.default"}}
	with := func(k, v string) url.Values {
		f := url.Values{}
		for kk, vv := range base {
			f[kk] = vv
		}
		f.Set(k, v)
		return f
	}
	tests := []struct {
		name   string
		form   url.Values
		status int
		code   string
	}{
		{"ok", base, 200, ""},
		{"wrong secret", with("client_secret", "nope"), 401, "invalid_client"},
		{"unknown client", with("client_id", "other"), 400, "unauthorized_client"},
		{"password grant", with("grant_type", "password"), 400, "unsupported_grant_type"},
		{"scope without /.default", with("scope", "https://vault.azure.net/user_impersonation"), 400, "invalid_scope"},
	}
	for _, tc := range tests {
		status, out := token(tc.form)
		if status != tc.status || (tc.code != "" && out["error"] != tc.code) {
			t.Errorf("%s: %d %v", tc.name, status, out["error"])
		}
	}
	_, out := token(base)
	raw, _ := out["access_token"].(string)
	if _, err := s.ValidateAccessToken(raw, "https://vault.azure.net"); err != nil {
		t.Fatalf("valid token refused: %v", err)
	}
	if _, err := s.ValidateAccessToken(raw, "https://management.azure.com"); !errors.Is(err, ErrTokenAudience) {
		t.Fatalf("other audience: %v", err)
	}
	if _, err := s.ValidateAccessToken(raw[:len(raw)-2]+"AA", "https://vault.azure.net"); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("forged signature: %v", err)
	}
	other, _ := New(Config{TenantID: "t1", Clients: map[string]string{"app": "s3cret"}})
	if _, err := other.ValidateAccessToken(raw, "https://vault.azure.net"); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("token of another tenant key: %v", err)
	}
	now = now.Add(2 * TokenLifetime)
	if _, err := s.ValidateAccessToken(raw, "https://vault.azure.net"); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired: %v", err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "https://login.example/t1/v2.0/.well-known/openid-configuration", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"issuer":"https://login.example/t1/v2.0"`) {
		t.Fatalf("openid configuration: %d %s", rec.Code, rec.Body.String())
	}
}

func FuzzValidateAccessToken(f *testing.F) {
	s, err := New(Config{TenantID: "t1", Clients: map[string]string{"app": "x"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Fuzz(func(t *testing.T, raw string) {
		if _, err := s.ValidateAccessToken(raw, "https://vault.azure.net"); err == nil {
			t.Fatalf("accepted %q", raw)
		}
	})
}
