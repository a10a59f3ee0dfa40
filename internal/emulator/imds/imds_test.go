package imds

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

func objectID(clientID string) string { return "oid-" + clientID }

// TestToken: the token endpoint's checks and answers, at the HTTP level.
func TestToken(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	issue := func(clientID, resource string) (string, time.Time, error) {
		if resource != "https://vault.azure.net" {
			return "", time.Time{}, errors.New("unknown resource")
		}
		return "token-of-" + clientID, now.Add(time.Hour), nil
	}
	const ok = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"
	for _, c := range []struct {
		name           string
		system         string
		user           []string
		method, target string
		header         map[string]string
		status         int
		// client is the identity the token must be of (status 200), or the error code.
		client string
	}{
		{"user-assigned by client id", "", []string{"a", "b"}, "GET", ok + "&client_id=b", nil, 200, "b"},
		{"by object id", "", []string{"a", "b"}, "GET", ok + "&object_id=oid-a", nil, 200, "a"},
		{"by object id, not the first", "", []string{"a", "b"}, "GET", ok + "&object_id=oid-b", nil, 200, "b"},
		{"object id not on the VM", "", []string{"a", "b"}, "GET", ok + "&object_id=oid-x", nil, 400, "invalid_request"},
		{"client id case", "", []string{"ab"}, "GET", ok + "&client_id=AB", nil, 200, "ab"},
		{"system-assigned by default", "s", []string{"a"}, "GET", ok, nil, 200, "s"},
		{"the one user-assigned by default", "", []string{"a"}, "GET", ok, nil, 200, "a"},
		{"several user-assigned, none named", "", []string{"a", "b"}, "GET", ok, nil, 400, "invalid_request"},
		{"identity not on the VM", "s", []string{"a"}, "GET", ok + "&client_id=x", nil, 400, "invalid_request"},
		{"no Metadata header", "s", nil, "GET", ok, map[string]string{"Metadata": ""}, 400, "bad_request_102"},
		{"Metadata not true", "s", nil, "GET", ok, map[string]string{"Metadata": "yes"}, 400, "bad_request_102"},
		{"proxied", "s", nil, "GET", ok, map[string]string{"X-Forwarded-For": "10.0.0.1"}, 400, "invalid_request"},
		{"POST", "s", nil, "POST", ok, nil, 405, "invalid_request"},
		{"no api-version", "s", nil, "GET", "/metadata/identity/oauth2/token?resource=https://vault.azure.net", nil, 400, "invalid_request"},
		{"old api-version", "s", nil, "GET", "/metadata/identity/oauth2/token?api-version=2017-09-01&resource=https://vault.azure.net", nil, 400, "invalid_request"},
		{"api-version from the future", "s", nil, "GET", "/metadata/identity/oauth2/token?api-version=2999-01-01&resource=https://vault.azure.net", nil, 400, "invalid_request"},
		{"api-version not a date", "s", nil, "GET", "/metadata/identity/oauth2/token?api-version=latest&resource=https://vault.azure.net", nil, 400, "invalid_request"},
		{"no resource", "s", nil, "GET", "/metadata/identity/oauth2/token?api-version=2018-02-01", nil, 400, "invalid_request"},
		{"a scope, not a resource", "s", nil, "GET", "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net/.default", nil, 400, "invalid_resource"},
		{"unknown resource", "s", nil, "GET", "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://example.com", nil, 400, "invalid_resource"},
		{"client and object id", "", []string{"a"}, "GET", ok + "&client_id=a&object_id=oid-a", nil, 400, "invalid_request"},
		{"msi_res_id", "", []string{"a"}, "GET", ok + "&msi_res_id=/subscriptions/x", nil, 400, "invalid_request"},
		{"another path", "s", nil, "GET", "/metadata/instance?api-version=2021-02-01", nil, 404, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := New(Config{SystemAssigned: c.system, UserAssigned: c.user, ObjectID: objectID, Issue: issue, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest(c.method, c.target, nil)
			req.Header.Set("Metadata", "true")
			for k, v := range c.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, req)
			if rec.Code != c.status {
				t.Fatalf("status %d (%s), want %d", rec.Code, rec.Body, c.status)
			}
			if c.status == http.StatusNotFound {
				return
			}
			var body map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if c.status != http.StatusOK {
				if body["error"] != c.client || body["error_description"] == "" {
					t.Fatalf("error %v, want %s with a description", body, c.client)
				}
				return
			}
			want := map[string]string{
				"access_token": "token-of-" + c.client, "client_id": c.client, "token_type": "Bearer", "resource": "https://vault.azure.net",
				"expires_in": "3600", "ext_expires_in": "3600", "expires_on": strconv.FormatInt(now.Add(time.Hour).Unix(), 10), "not_before": strconv.FormatInt(now.Unix(), 10),
			}
			if len(body) != len(want) {
				t.Fatalf("answer %v, want %v", body, want)
			}
			for k, v := range want {
				if body[k] != v {
					t.Fatalf("%s = %q, want %q (answer %v)", k, body[k], v, body)
				}
			}
		})
	}
}

// TestNewRefuses: a VM without identities, or a config without a token source, is refused.
func TestNewRefuses(t *testing.T) {
	issue := func(string, string) (string, time.Time, error) { return "", time.Time{}, nil }
	for _, c := range []Config{
		{ObjectID: objectID, Issue: issue},
		{SystemAssigned: "s", Issue: issue},
		{SystemAssigned: "s", ObjectID: objectID},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}
