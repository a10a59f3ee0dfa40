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

	"github.com/go-jose/go-jose/v4/jwt"
)

func TestTokenEndpoint(t *testing.T) {
	now := time.Now()
	s, err := New(Config{TenantID: "t1", Clients: map[string]string{"app": "s3cret"}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	h := s.Handler()
	token := func(form url.Values) (int, map[string]any) { return postToken(h, form) }
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
	// One character in the middle of the signature changed: always other signature bytes (the
	// last characters' low bits may be padding, which decodes the same).
	sigAt := strings.LastIndex(raw, ".") + (len(raw)-strings.LastIndex(raw, "."))/2
	swap := byte('A')
	if raw[sigAt] == 'A' {
		swap = 'B'
	}
	forged := raw[:sigAt] + string(swap) + raw[sigAt+1:]
	if _, err := s.ValidateAccessToken(forged, "https://vault.azure.net"); !errors.Is(err, ErrTokenInvalid) {
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

// TestTokenScopes checks that tokens are issued only for one known resource at a time, with the
// resource exactly as requested as the audience, and that validation compares it exactly.
func TestTokenScopes(t *testing.T) {
	s, err := New(Config{TenantID: "t1", Clients: map[string]string{"app": "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	h := s.Handler()
	token := func(scope string) (int, map[string]any) {
		return postToken(h, url.Values{"grant_type": {"client_credentials"}, "client_id": {"app"}, "client_secret": {"s3cret"}, "scope": {scope}})
	}
	tests := []struct {
		name, scope string
		status      int
		code        string
		aadsts      float64 // the error_codes entry expected
		aud         string  // the audience of the token issued
	}{
		{"Key Vault", "https://vault.azure.net/.default", 200, "", 0, "https://vault.azure.net"},
		{"Key Vault as azidentity asks", "https://vault.azure.net/.default openid offline_access profile", 200, "", 0, "https://vault.azure.net"},
		{"MAA", "https://attest.azure.net/.default", 200, "", 0, "https://attest.azure.net"},
		{"ACR", "https://containerregistry.azure.net/.default", 200, "", 0, "https://containerregistry.azure.net"},
		{"Managed HSM", "https://managedhsm.azure.net/.default", 200, "", 0, "https://managedhsm.azure.net"},
		{"ARM with its double slash", "https://management.core.windows.net//.default", 200, "", 0, "https://management.core.windows.net/"},
		{"unknown resource", "https://storage.azure.com/.default", 400, "invalid_resource", 500011, ""},
		{"trailing-slash variant of Key Vault", "https://vault.azure.net//.default", 400, "invalid_resource", 500011, ""},
		{"Key Vault in another case", "https://VAULT.azure.net/.default", 400, "invalid_resource", 500011, ""},
		{"ARM without its slash", "https://management.core.windows.net/.default", 400, "invalid_resource", 500011, ""},
		{"/.default with a named permission", "https://vault.azure.net/.default https://vault.azure.net/user_impersonation", 400, "invalid_scope", 70011, ""},
		{"/.default with a Graph permission", "https://vault.azure.net/.default User.Read", 400, "invalid_scope", 70011, ""},
		{"two resources", "https://vault.azure.net/.default https://attest.azure.net/.default", 400, "invalid_scope", 70011, ""},
		{"only OIDC scopes", "openid profile", 400, "invalid_scope", 1002012, ""},
		{"no scope", "", 400, "invalid_scope", 1002012, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, out := token(tc.scope)
			if status != tc.status || (tc.code != "" && out["error"] != tc.code) {
				t.Fatalf("got %d %v %v, want %d %s", status, out["error"], out["error_description"], tc.status, tc.code)
			}
			if tc.status != 200 {
				if codes, _ := out["error_codes"].([]any); len(codes) != 1 || codes[0] != tc.aadsts {
					t.Fatalf("error_codes %v, want [%v]", out["error_codes"], tc.aadsts)
				}
				if out["access_token"] != nil {
					t.Fatal("a refusal carries a token")
				}
				return
			}
			raw, _ := out["access_token"].(string)
			c, err := s.ValidateAccessToken(raw, tc.aud)
			if err != nil {
				t.Fatalf("token refused for its own audience %s: %v", tc.aud, err)
			}
			if len(c.Audience) != 1 || c.Audience[0] != tc.aud {
				t.Fatalf("aud %v, want [%s]", c.Audience, tc.aud)
			}
		})
	}
}

// TestAudienceExact checks that ValidateAccessToken accepts no variant of the audience asked for:
// a token whose aud carries a trailing slash is not one for the identifier without it, nor the
// reverse.
func TestAudienceExact(t *testing.T) {
	s, err := New(Config{TenantID: "t1", Clients: map[string]string{"app": "s3cret"}, Resources: []string{"https://vault.azure.net", "https://vault.azure.net/"}})
	if err != nil {
		t.Fatal(err)
	}
	issue := func(scope string) string {
		_, out := postToken(s.Handler(), url.Values{"grant_type": {"client_credentials"}, "client_id": {"app"}, "client_secret": {"s3cret"}, "scope": {scope}})
		raw, _ := out["access_token"].(string)
		if raw == "" {
			t.Fatalf("no token for %s: %v", scope, out)
		}
		return raw
	}
	plain, slash := issue("https://vault.azure.net/.default"), issue("https://vault.azure.net//.default")
	tests := []struct {
		name, token, audience string
		ok                    bool
	}{
		{"exact", plain, "https://vault.azure.net", true},
		{"exact with slash", slash, "https://vault.azure.net/", true},
		{"slash token for the plain identifier", slash, "https://vault.azure.net", false},
		{"plain token for the slash identifier", plain, "https://vault.azure.net/", false},
		{"another case", plain, "https://VAULT.azure.net", false},
		{"another resource", plain, "https://attest.azure.net", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.ValidateAccessToken(tc.token, tc.audience)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && !errors.Is(err, ErrTokenAudience) {
				t.Fatalf("got %v, want ErrTokenAudience", err)
			}
		})
	}
}

// postToken posts form to h's token endpoint of tenant t1 and returns the status and the JSON body.
func postToken(h http.Handler, form url.Values) (int, map[string]any) {
	req := httptest.NewRequest("POST", "https://login.example/t1/oauth2/v2.0/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	json.Unmarshal(rec.Body.Bytes(), &out)
	return rec.Code, out
}

// TestManagedIdentityToken: IssueManagedIdentityToken issues only to the tenant's managed
// identities (a client with a secret gets its tokens from the token endpoint, and a managed
// identity none there), only for known resources, and its tokens validate like the token
// endpoint's, naming the identity's object id.
func TestManagedIdentityToken(t *testing.T) {
	if _, err := New(Config{TenantID: "t1", Clients: map[string]string{"mi": "x"}, ManagedIdentities: []string{"mi"}}); err == nil {
		t.Fatal("a client id both with a secret and as a managed identity accepted")
	}
	s, err := New(Config{TenantID: "t1", Clients: map[string]string{"app": "s3cret"}, ManagedIdentities: []string{"mi"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		client, resource string
		want             error
	}{
		{"mi", ResourceKeyVault, nil},
		{"app", ResourceKeyVault, ErrNotManagedIdentity},
		{"other", ResourceKeyVault, ErrNotManagedIdentity},
		{"mi", "https://example.com", ErrUnknownResource},
		{"mi", ResourceKeyVault + "/.default", ErrUnknownResource},
	} {
		raw, exp, err := s.IssueManagedIdentityToken(c.client, c.resource)
		if !errors.Is(err, c.want) {
			t.Fatalf("%s for %s: %v, want %v", c.client, c.resource, err, c.want)
		}
		if c.want != nil {
			continue
		}
		claims, err := s.ValidateAccessToken(raw, c.resource)
		if err != nil || claims.AppID != c.client || claims.ObjectID != ObjectID(c.client) || !claims.Expiry.Time().Equal(exp.Truncate(time.Second)) {
			t.Fatalf("token of %s: %+v, %v", c.client, claims, err)
		}
	}
	// A managed identity has no secret: the token endpoint does not know it.
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {"mi"}, "client_secret": {""}, "scope": {ResourceKeyVault + "/.default"}}
	req := httptest.NewRequest(http.MethodPost, "/t1/oauth2/v2.0/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if rec.Code == http.StatusOK {
		t.Fatalf("the token endpoint issued a managed identity a token: %s", rec.Body)
	}
}

// TestValidateAccessTokenClaims signs, with the tenant's own key, tokens that differ from the ones
// the token endpoint issues in one claim each, and checks that ValidateAccessToken refuses each:
// the issuer of another tenant or in another form, another tenant's tid, and a not-before or
// issued-at time beyond the minute of skew. The token endpoint never issues such a token; these
// checks are what ValidateAccessToken promises to a relying party all the same.
func TestValidateAccessTokenClaims(t *testing.T) {
	now := time.Now()
	s, err := New(Config{TenantID: "t1", Clients: map[string]string{"app": "s3cret"}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		alter func(*Claims)
		ok    bool
	}{
		{"as issued", func(*Claims) {}, true},
		{"issuer of another tenant", func(c *Claims) { c.Issuer = "https://sts.windows.net/t2/" }, false},
		{"v2.0 issuer", func(c *Claims) { c.Issuer = "https://login.microsoftonline.com/t1/v2.0" }, false},
		{"another tenant", func(c *Claims) { c.TenantID = "t2" }, false},
		{"no exp (never expires)", func(c *Claims) { c.Expiry = nil }, false},
		{"not valid for ten minutes", func(c *Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(10 * time.Minute)) }, false},
		{"issued ten minutes from now", func(c *Claims) { c.IssuedAt = jwt.NewNumericDate(now.Add(10 * time.Minute)) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Claims{
				Claims: jwt.Claims{
					Issuer: s.Issuer(), Audience: jwt.Audience{ResourceKeyVault}, Subject: ObjectID("app"),
					IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(TokenLifetime)),
				},
				TenantID: "t1", ObjectID: ObjectID("app"), AppID: "app",
			}
			tc.alter(&c)
			raw, err := jwt.Signed(s.signer).Claims(c).Serialize()
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.ValidateAccessToken(raw, ResourceKeyVault)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && !errors.Is(err, ErrTokenInvalid) {
				t.Fatalf("got %v, want ErrTokenInvalid", err)
			}
			t.Log(err)
		})
	}
}
