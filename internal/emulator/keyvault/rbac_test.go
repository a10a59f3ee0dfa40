package keyvault

import (
	"errors"
	"net/http"
	"testing"
)

// TestRBAC: with assignments, each operation needs its data action held at the vault's scope or
// the object's; anything else gets Key Vault's RBAC refusal (403, innererror ForbiddenByRbac)
// before the object is even looked up.
func TestRBAC(t *testing.T) {
	for _, c := range []struct {
		name        string
		assignments []Assignment
		method      string
		path        string
		body        any
		// status is the status wanted; 403 is RBAC's refusal, anything else passed it.
		status int
	}{
		{"no assignment", []Assignment{}, http.MethodGet, "/keys/k", nil, http.StatusForbidden},
		{"another principal's", []Assignment{{Principal: "other", DataActions: []string{"Microsoft.KeyVault/vaults/*"}}}, http.MethodGet, "/keys/k", nil, http.StatusForbidden},
		{"vault scope", []Assignment{{Principal: "app", DataActions: []string{"Microsoft.KeyVault/vaults/keys/read"}}}, http.MethodGet, "/keys/k", nil, http.StatusNotFound},
		{"object scope", []Assignment{{Principal: "app", Scope: "keys/k", DataActions: []string{"Microsoft.KeyVault/vaults/keys/read"}}}, http.MethodGet, "/keys/K", nil, http.StatusNotFound},
		{"another object", []Assignment{{Principal: "app", Scope: "keys/k", DataActions: []string{"Microsoft.KeyVault/vaults/keys/read"}}}, http.MethodGet, "/keys/k2", nil, http.StatusForbidden},
		{"same name, other kind", []Assignment{{Principal: "app", Scope: "secrets/k", DataActions: []string{"Microsoft.KeyVault/vaults/keys/read"}}}, http.MethodGet, "/keys/k", nil, http.StatusForbidden},
		{"read is not create", []Assignment{{Principal: "app", DataActions: []string{"Microsoft.KeyVault/vaults/keys/read"}}}, http.MethodPost, "/keys/k/create", map[string]any{"kty": "RSA"}, http.StatusForbidden},
		{"read is not verify", []Assignment{{Principal: "app", DataActions: []string{"Microsoft.KeyVault/vaults/keys/read"}}}, http.MethodPost, "/keys/k/verify", map[string]string{"alg": "RS256", "digest": "AA", "value": "AA"}, http.StatusForbidden},
		{"certificate user cannot create a certificate", []Assignment{{Principal: "app", DataActions: CertificateUserActions}}, http.MethodPost, "/certificates/c/create", certBody(map[string]any{}, map[string]any{"subject": "CN=c"}), http.StatusForbidden},
		{"read is not sign", []Assignment{{Principal: "app", DataActions: []string{"Microsoft.KeyVault/vaults/keys/read"}}}, http.MethodPost, "/keys/k/sign", map[string]string{"alg": "RS256", "value": "AA"}, http.StatusForbidden},
		{"wildcard", []Assignment{{Principal: "app", DataActions: []string{"Microsoft.KeyVault/vaults/keys/*"}}}, http.MethodPost, "/keys/k/sign", map[string]string{"alg": "RS256", "value": "AA"}, http.StatusNotFound},
		{"wildcard of another kind", []Assignment{{Principal: "app", DataActions: CertificatesOfficerActions}}, http.MethodPost, "/keys/k/create", map[string]any{"kty": "RSA"}, http.StatusForbidden},
		{"a wildcard ends at a /", []Assignment{{Principal: "app", DataActions: []string{"Microsoft.KeyVault/vaults/key/*"}}}, http.MethodGet, "/keys/k", nil, http.StatusForbidden},
		{"a wildcard below the action", []Assignment{{Principal: "app", DataActions: []string{"Microsoft.KeyVault/vaults/keys/read/*"}}}, http.MethodGet, "/keys/k", nil, http.StatusForbidden},
		{"case of a wildcard", []Assignment{{Principal: "app", DataActions: []string{"microsoft.keyvault/VAULTS/keys/*"}}}, http.MethodGet, "/keys/k", nil, http.StatusNotFound},
		{"a prefix is not a wildcard", []Assignment{{Principal: "app", DataActions: []string{"Microsoft.KeyVault/vaults/keys"}}}, http.MethodGet, "/keys/k", nil, http.StatusForbidden},
		{"case of the action", []Assignment{{Principal: "app", DataActions: []string{"microsoft.keyvault/vaults/keys/READ"}}}, http.MethodGet, "/keys/k", nil, http.StatusNotFound},
		{"update needs update", []Assignment{{Principal: "app", Scope: "keys/k", DataActions: []string{"Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/sign/action"}}}, http.MethodPatch, "/keys/k/", map[string]any{}, http.StatusForbidden},
		{"certificate user reads the secret", []Assignment{{Principal: "app", Scope: "secrets/c", DataActions: CertificateUserActions}}, http.MethodGet, "/secrets/c", nil, http.StatusNotFound},
		{"secrets user cannot read the certificate", []Assignment{{Principal: "app", Scope: "certificates/c", DataActions: SecretsUserActions}}, http.MethodGet, "/certificates/c", nil, http.StatusForbidden},
		{"officer reads the pending operation", []Assignment{{Principal: "app", DataActions: CertificatesOfficerActions}}, http.MethodGet, "/certificates/c/pending", nil, http.StatusNotFound},
		{"nil: no RBAC (tests only)", nil, http.MethodGet, "/keys/k", nil, http.StatusNotFound},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, h := newVaultWith(t, Config{Assignments: c.assignments})
			rec, body := call(t, h, c.method, c.path+"?api-version="+APIVersions[len(APIVersions)-1], "good", c.body)
			if rec.Code != c.status {
				t.Fatalf("%s %s: status %d %v, want %d", c.method, c.path, rec.Code, body, c.status)
			}
			if c.status != http.StatusForbidden {
				return
			}
			e, _ := body["error"].(map[string]any)
			inner, _ := e["innererror"].(map[string]any)
			if e["code"] != "Forbidden" || inner["code"] != "ForbiddenByRbac" {
				t.Fatalf("refusal %v, want code Forbidden, innererror ForbiddenByRbac", body)
			}
		})
	}
}

// TestRBACUnknownOperation: an operation missing from the RBAC table is refused, even to a
// principal granted every data action, so a route added without an entry is not open to all.
func TestRBACUnknownOperation(t *testing.T) {
	s, _ := newVaultWith(t, Config{Assignments: []Assignment{{Principal: "app", DataActions: []string{"Microsoft.KeyVault/vaults/*"}}}})
	if err := s.authorizeRBAC("app", "keys/get", "k"); err != nil {
		t.Fatalf("a known operation granted by the wildcard: %v", err)
	}
	err := s.authorizeRBAC("app", "keys/purge", "k")
	var ae *apiError
	if !errors.As(err, &ae) || ae.status != http.StatusForbidden || ae.inner != "ForbiddenByRbac" {
		t.Fatalf("an operation without a data action: %v, want 403 ForbiddenByRbac", err)
	}
}
