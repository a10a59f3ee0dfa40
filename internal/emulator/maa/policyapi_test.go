package maa

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	wire "github.com/attested-kv/attested-kv/internal/maa"
)

var bearer = map[string]string{"Authorization": "Bearer test-token"}

// withPolicyAdmin configures an authorizer that accepts exactly the bearer token of bearer.
func withPolicyAdmin(c *Config) {
	c.AuthorizePolicyRequest = func(r *http.Request) error {
		if r.Header.Get("Authorization") != bearer["Authorization"] {
			return errors.New("token refused by the test authorizer")
		}
		return nil
	}
}

// withHeader returns a copy of hdr with header k set to v.
func withHeader(hdr map[string]string, k, v string) map[string]string {
	out := maps.Clone(hdr)
	out[k] = v
	return out
}

func policyURL(typ string) string {
	return "/policies/" + typ + "?api-version=" + wire.PolicyAPIVersion
}

// policyToken verifies a policy response's token and returns its claims.
func policyToken(t *testing.T, in *instance, body []byte) map[string]any {
	t.Helper()
	var rsp wire.PolicyResponse
	if err := json.Unmarshal(body, &rsp); err != nil || rsp.Token == "" {
		t.Fatalf("policy response is not {\"token\":...}: %s", body)
	}
	_, claims := in.verifyJWT(t, rsp.Token)
	return claims
}

func TestPolicyPutGet(t *testing.T) {
	in := newInstance(t, nil, withPolicyAdmin)

	// GET before any PUT returns the initial policy as an unsigned JWS.
	status, body := in.do(t, http.MethodGet, policyURL("AzureGuest"), nil, bearer)
	if status != http.StatusOK {
		t.Fatalf("GET: %d %s", status, body)
	}
	if got := policyToken(t, in, body)["x-ms-policy"]; got != unsignedPolicyJWS(DefaultPolicy) {
		t.Errorf("initial x-ms-policy = %v", got)
	}

	text := `version=1.2; authorizationrules { c:[type=="secureboot", value==true] => permit(); }; issuancerules { };`
	jws := unsignedPolicyJWS(text)
	for _, tc := range []struct {
		name        string
		contentType string
	}{
		{"text/plain", "text/plain"},
		{"text/plain in UTF-8", "text/plain; charset=utf-8"},
		{"media type in another case", "Text/Plain; charset=UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := withHeader(bearer, "Content-Type", tc.contentType)
			status, body := in.do(t, http.MethodPut, policyURL("azureGuest"), []byte(jws), hdr)
			if status != http.StatusOK {
				t.Fatalf("PUT: %d %s", status, body)
			}
			claims := policyToken(t, in, body)
			sum := sha256.Sum256([]byte(jws))
			if claims["x-ms-policy-result"] != "Updated" || claims["x-ms-policy"] != jws ||
				claims["x-ms-policy-token-hash"] != base64.RawURLEncoding.EncodeToString(sum[:]) || claims["iss"] != in.ts.URL {
				t.Errorf("PUT claims = %v", claims)
			}
			status, body = in.do(t, http.MethodGet, policyURL("AzureGuest"), nil, bearer)
			if status != http.StatusOK || policyToken(t, in, body)["x-ms-policy"] != jws {
				t.Errorf("GET after PUT: %d %s", status, body)
			}
			if in.srv.currentPolicy().text != text {
				t.Errorf("stored policy = %q", in.srv.currentPolicy().text)
			}
		})
	}
}

func TestPolicyRefusals(t *testing.T) {
	hdrNone := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`))
	payload := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	stored := func(text string) string {
		return payload(`{"AttestationPolicy":"` + base64.RawURLEncoding.EncodeToString([]byte(text)) + `"}`)
	}
	for _, tc := range []struct {
		name, method, url, body string
		hdr                     map[string]string
		status                  int
		code, msg               string
	}{
		{"unknown type", "PUT", policyURL("SgxEnclave"), unsignedPolicyJWS(DefaultPolicy), bearer, 400, CodeUnsupportedAttestationType, "SgxEnclave"},
		{"wrong api-version", "PUT", "/policies/AzureGuest?api-version=2020-10-01", unsignedPolicyJWS(DefaultPolicy), bearer, 400, CodeUnsupportedAPIVersion, "2025-06-01"},
		{"no api-version", "GET", "/policies/AzureGuest", "", bearer, 400, CodeUnsupportedAPIVersion, "api-version"},
		{"no bearer", "PUT", policyURL("AzureGuest"), unsignedPolicyJWS(DefaultPolicy), nil, 401, CodeUnauthorized, "Bearer"},
		{"bad method", "DELETE", policyURL("AzureGuest"), "", bearer, 405, CodeMethodNotAllowed, "DELETE"},
		{"policy does not parse", "PUT", policyURL("AzureGuest"), unsignedPolicyJWS("version=1.0; authorizationrules { => permit() };"), bearer, 400, CodeInvalidPolicy, "expected \";\""},
		{"unsupported section", "PUT", policyURL("AzureGuest"), unsignedPolicyJWS("version=1.2; configurationrules { }; authorizationrules { => permit(); };"), bearer, 400, CodeInvalidPolicy, "configurationrules"},
		{"issues a service claim", "PUT", policyURL("AzureGuest"), unsignedPolicyJWS(`version=1.0; authorizationrules { => permit(); }; issuancerules { => issue(type="secureboot", value=true); };`), bearer, 400, CodeInvalidPolicy, "service"},
		{"signed policy", "PUT", policyURL("AzureGuest"), payload(`{"alg":"RS256"}`) + "." + stored(DefaultPolicy) + ".c2ln", bearer, 400, CodePolicySigningNotSupported, "RS256"},
		{"not a JWS", "PUT", policyURL("AzureGuest"), DefaultPolicy, bearer, 400, CodeInvalidPolicyDocument, "compact JWS"},
		{"unsigned header with a kid", "PUT", policyURL("AzureGuest"), payload(`{"alg":"none","kid":"k"}`) + "." + stored(DefaultPolicy) + ".", bearer, 400, CodeInvalidPolicyDocument, `unexpected parameter "kid"`},
		{"signature on alg none", "PUT", policyURL("AzureGuest"), hdrNone + "." + stored(DefaultPolicy) + ".c2ln", bearer, 400, CodeInvalidPolicyDocument, "empty signature"},
		{"payload not a StoredAttestationPolicy", "PUT", policyURL("AzureGuest"), hdrNone + "." + payload(`{"Policy":"x"}`) + ".", bearer, 400, CodeInvalidPolicyDocument, "StoredAttestationPolicy"},
		{"payload key in another case", "PUT", policyURL("AzureGuest"), hdrNone + "." + payload(`{"attestationPolicy":"`+base64.RawURLEncoding.EncodeToString([]byte(DefaultPolicy))+`"}`) + ".", bearer, 400, CodeInvalidPolicyDocument, "case-sensitive"},
		{"policy not base64url", "PUT", policyURL("AzureGuest"), hdrNone + "." + payload(`{"AttestationPolicy":"***"}`) + ".", bearer, 400, CodeInvalidPolicyDocument, "base64url"},
		{"oversized", "PUT", policyURL("AzureGuest"), strings.Repeat("a", MaxPolicyBodyBytes+1), bearer, 413, CodeRequestBodyTooLarge, "exceeds"},
		{"sent as application/json", "PUT", policyURL("AzureGuest"), unsignedPolicyJWS(DefaultPolicy), withHeader(bearer, "Content-Type", "application/json"), 415, CodeUnsupportedMediaTypeOrBody, "text/plain"},
		{"sent without a Content-Type", "PUT", policyURL("AzureGuest"), unsignedPolicyJWS(DefaultPolicy), withHeader(bearer, "Content-Type", ""), 415, CodeUnsupportedMediaTypeOrBody, "no Content-Type"},
		{"sent as text/plain in UTF-16", "PUT", policyURL("AzureGuest"), unsignedPolicyJWS(DefaultPolicy), withHeader(bearer, "Content-Type", "text/plain; charset=utf-16"), 415, CodeUnsupportedMediaTypeOrBody, "not emulated"},
		{"quoted JSON string", "PUT", policyURL("AzureGuest"), `"` + unsignedPolicyJWS(DefaultPolicy) + `"`, bearer, 415, CodeUnsupportedMediaTypeOrBody, "JSON string"},
		{"quoted JSON string as application/json", "PUT", policyURL("AzureGuest"), `"` + unsignedPolicyJWS(DefaultPolicy) + `"`, withHeader(bearer, "Content-Type", "application/json"), 415, CodeUnsupportedMediaTypeOrBody, "text/plain"},
		{"whitespace around the JWS", "PUT", policyURL("AzureGuest"), unsignedPolicyJWS(DefaultPolicy) + "\n", bearer, 400, CodeInvalidPolicyDocument, "whitespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := newInstance(t, nil, withPolicyAdmin)
			status, body := in.do(t, tc.method, tc.url, []byte(tc.body), tc.hdr)
			ce := cloudError(t, body)
			if status != tc.status || ce.Code != tc.code || !strings.Contains(ce.Message, tc.msg) {
				t.Fatalf("got %d %+v, want %d %s containing %q", status, ce, tc.status, tc.code, tc.msg)
			}
			if in.srv.currentPolicy().text != DefaultPolicy {
				t.Error("a refused request changed the policy")
			}
			recs := in.srv.Requests()
			if len(recs) != 1 || recs[0].ErrorCode != tc.code || recs[0].Status != tc.status {
				t.Errorf("Requests() = %+v", recs)
			}
		})
	}
}

// TestPolicyAuthorization checks that the policy endpoints fail closed: without an authorizer no
// request is served, whatever token it carries, and with one only the tokens it accepts are.
func TestPolicyAuthorization(t *testing.T) {
	other := map[string]string{"Authorization": "Bearer some-other-token"}
	basic := map[string]string{"Authorization": "Basic dXNlcjpwdw=="}
	// withRoleless accepts the token of bearer as valid but finds no attestation role behind it.
	withRoleless := func(c *Config) {
		c.AuthorizePolicyRequest = func(r *http.Request) error {
			if r.Header.Get("Authorization") != bearer["Authorization"] {
				return errors.New("token refused by the test authorizer")
			}
			return fmt.Errorf("principal p: %w", ErrNoPolicyRole)
		}
	}
	put := unsignedPolicyJWS(`version=1.0; authorizationrules { c:[type=="secureboot", value==true] => permit(); }; issuancerules { };`)
	for _, tc := range []struct {
		name       string
		authorizer func(*Config)
		method     string
		hdr        map[string]string
		status     int
		msg        string
	}{
		{"no authorizer: GET with a token", nil, "GET", bearer, 401, "no policy authorizer"},
		{"no authorizer: PUT with a token", nil, "PUT", bearer, 401, "no policy authorizer"},
		{"no authorizer: PUT without a token", nil, "PUT", nil, 401, "Bearer"},
		{"authorizer: PUT without a token", withPolicyAdmin, "PUT", nil, 401, "Bearer"},
		{"authorizer: PUT with Basic auth", withPolicyAdmin, "PUT", basic, 401, "Bearer"},
		{"authorizer: PUT by a caller without the role", withRoleless, "PUT", bearer, 403, "no attestation role"},
		{"authorizer: PUT with a refused token", withPolicyAdmin, "PUT", other, 401, "refused by the test authorizer"},
		{"authorizer: GET with a refused token", withPolicyAdmin, "GET", other, 401, "refused by the test authorizer"},
		{"authorizer: GET with an accepted token", withPolicyAdmin, "GET", bearer, 200, ""},
		{"authorizer: PUT with an accepted token", withPolicyAdmin, "PUT", bearer, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := newInstance(t, nil, tc.authorizer)
			var body []byte
			if tc.method == "PUT" {
				body = []byte(put)
			}
			status, rsp := in.do(t, tc.method, policyURL("AzureGuest"), body, tc.hdr)
			if status != tc.status {
				t.Fatalf("got %d %s, want %d", status, rsp, tc.status)
			}
			if tc.status == http.StatusOK {
				policyToken(t, in, rsp)
				return
			}
			code := CodeUnauthorized
			if tc.status == http.StatusForbidden {
				code = CodeForbidden
			}
			if ce := cloudError(t, rsp); ce.Code != code || !strings.Contains(ce.Message, tc.msg) {
				t.Fatalf("got %+v, want %s containing %q", ce, code, tc.msg)
			}
			if in.srv.currentPolicy().text != DefaultPolicy {
				t.Error("an unauthorized request changed the policy")
			}
		})
	}
}

func TestMetadataEndpoints(t *testing.T) {
	in := newInstance(t, nil, nil)
	status, body := in.do(t, http.MethodGet, wire.OpenIDConfigPath, nil, nil)
	var oc wire.OpenIDConfiguration
	if status != http.StatusOK || json.Unmarshal(body, &oc) != nil || oc.Issuer != in.ts.URL || oc.JWKSURI != in.ts.URL+"/certs" {
		t.Fatalf("openid-configuration: %d %s", status, body)
	}
	status, body = in.do(t, http.MethodGet, wire.CertsPath, nil, nil)
	if status != http.StatusOK || string(body) != string(in.srv.JWKS()) {
		t.Fatalf("/certs: %d %s", status, body)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("/certs: %s", body)
	}
	// Real MAA's keys carry kid, kty and x5c only (reference/maa.md), so a relying party that
	// reads n and e alone fails here as it would against Azure.
	k := set.Keys[0]
	if names := slices.Sorted(maps.Keys(k)); !slices.Equal(names, []string{"kid", "kty", "x5c"}) {
		t.Errorf("JWK members = %v, want [kid kty x5c]: %v", names, k)
	}
	if k["kty"] != "RSA" || len(k["kid"].(string)) != 44 {
		t.Errorf("JWK = %v", k)
	}
	status, body = in.do(t, http.MethodGet, "/nothing", nil, nil)
	if status != http.StatusNotFound || cloudError(t, body).Code != CodeNotFound {
		t.Errorf("unknown path: %d %s", status, body)
	}
	status, body = in.do(t, http.MethodPost, wire.CertsPath, nil, nil)
	if status != http.StatusMethodNotAllowed || cloudError(t, body).Code != CodeMethodNotAllowed {
		t.Errorf("POST /certs: %d %s", status, body)
	}
}
