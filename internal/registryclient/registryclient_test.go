package registryclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/errdef"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

type staticCred struct{ scopes *[]string }

func (c staticCred) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	*c.scopes = o.Scopes
	return azcore.AccessToken{Token: "entra-token", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func TestExchangeACRToken(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		if r.Method != http.MethodPost || r.URL.Path != "/oauth2/exchange" || r.PostForm.Get("grant_type") != "access_token" ||
			r.PostForm.Get("access_token") != "entra-token" || r.PostForm.Get("service") != strings.TrimPrefix(srvURL(r), "https://") {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Write([]byte(`{"refresh_token":"acr-refresh"}`))
	}))
	defer srv.Close()
	var scopes []string
	host := strings.TrimPrefix(srv.URL, "https://")
	rt, err := ExchangeACRToken(context.Background(), srv.Client(), host, staticCred{&scopes})
	if err != nil || rt != "acr-refresh" {
		t.Fatalf("exchange: %q %v", rt, err)
	}
	if len(scopes) != 1 || scopes[0] != ACRScope {
		t.Fatalf("scopes %v", scopes)
	}
	if _, err := ExchangeACRToken(context.Background(), srv.Client(), host+"x", staticCred{&scopes}); err == nil {
		t.Fatal("exchange against a wrong host succeeded")
	}
}

func srvURL(r *http.Request) string { return "https://" + r.Host }

func TestLoopbackIsPlainHTTP(t *testing.T) {
	for host, want := range map[string]bool{"localhost:5000": true, "127.0.0.1:5000": true, "[::1]:5000": true, "myreg.azurecr.io": false, "10.0.0.1:5000": false} {
		if got := isLoopback(host); got != want {
			t.Errorf("isLoopback(%q) = %v", host, got)
		}
	}
}

// TestAzureRegistryNeverPlainHTTP: asking for plain http to an Azure registry is refused before any
// request, whatever the credential; other registries may use it.
func TestAzureRegistryNeverPlainHTTP(t *testing.T) {
	for _, tt := range []struct {
		ref string
		o   Options
		ok  bool
	}{
		{"myreg.azurecr.io/app:v1", Options{PlainHTTP: true}, false},
		{"MyReg.AzureCR.io:443/app:v1", Options{PlainHTTP: true, Username: "u", Password: "p"}, false},
		{"myreg.azurecr.io/app:v1", Options{PlainHTTP: true, AzureCredential: staticCred{new([]string)}}, false},
		{"myreg.azurecr.io./app:v1", Options{PlainHTTP: true, Username: "u", Password: "p"}, false},
		{"myreg.azurecr.io.:80/app:v1", Options{PlainHTTP: true}, false},
		{"myreg.azurecr.cn/app:v1", Options{PlainHTTP: true}, false},
		{"myreg.azurecr.us/app:v1", Options{PlainHTTP: true}, false},
		{"myreg.azurecr.io/app:v1", Options{}, true},
		{"registry.internal:5000/app:v1", Options{PlainHTTP: true}, true},
	} {
		repo, _, err := Open(tt.ref, tt.o)
		if tt.ok {
			if err != nil || (repo.PlainHTTP != tt.o.PlainHTTP) {
				t.Errorf("Open(%q, plain http %v) = %v", tt.ref, tt.o.PlainHTTP, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "plain http is refused") {
			t.Errorf("Open(%q) with plain http: %v, want a refusal", tt.ref, err)
		}
	}
}

// TestReferrerPagesBounded: a registry that answers every referrers page with a link to another
// is read for MaxReferrerPages pages, then the listing fails with ErrTooManyPages.
func TestReferrerPagesBounded(t *testing.T) {
	var pages atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/referrers/") {
			http.NotFound(w, r)
			return
		}
		n := pages.Add(1)
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		w.Header().Set("Link", fmt.Sprintf(`<%s?page=%d>; rel="next"`, r.URL.Path, n))
		json.NewEncoder(w).Encode(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
			Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: "application/other", Digest: digest.FromString(fmt.Sprint(n)), Size: 1}}})
	}))
	defer srv.Close()
	repo, _, err := Open(strings.TrimPrefix(srv.URL, "http://")+"/app", Options{HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("subject"), Size: 1}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // unbounded paging fails instead of hanging
	defer cancel()
	err = repo.Referrers(ctx, subject, "application/wanted", func([]ocispec.Descriptor) error { return nil })
	if !errors.Is(err, errdef.ErrTooManyPages) || pages.Load() != MaxReferrerPages {
		t.Fatalf("after %d pages: %v; want ErrTooManyPages after %d", pages.Load(), err, MaxReferrerPages)
	}
}

// TestExchangeDoesNotFollowRedirects: the exchange form holds the Entra ID access token; a
// registry (or whoever answers for it) that redirects the exchange gets a refusal, and the
// redirect's target never receives the form.
func TestExchangeDoesNotFollowRedirects(t *testing.T) {
	var stolen atomic.Int32
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stolen.Add(1)
		w.Write([]byte(`{"refresh_token":"acr-refresh"}`))
	}))
	defer sink.Close()
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, sink.URL+"/steal", code)
		}))
		var scopes []string
		rt, err := ExchangeACRToken(context.Background(), srv.Client(), strings.TrimPrefix(srv.URL, "https://"), staticCred{&scopes})
		srv.Close()
		if err == nil || rt != "" || !strings.Contains(err.Error(), fmt.Sprint(code)) {
			t.Errorf("redirect %d: refresh token %q, err %v; want a refusal naming the status", code, rt, err)
		}
	}
	if n := stolen.Load(); n != 0 {
		t.Fatalf("the redirect's target received the exchange %d times", n)
	}
}

// TestDockerConfigErrorsHideTheEntry: oras-go's error for a docker config auth entry that is not
// base64(user:password) quotes the decoded entry; the credential function's error names the host
// and the config, not the entry.
func TestDockerConfigErrorsHideTheEntry(t *testing.T) {
	const secretText = "ghp_NotBase64UserPasswordSecret"
	dir := t.TempDir()
	cfg := fmt.Sprintf(`{"auths":{"registry.example":{"auth":%q}}}`, base64.StdEncoding.EncodeToString([]byte(secretText)))
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	f, err := credentialFunc("registry.example", Options{}, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f(context.Background(), "registry.example")
	if err == nil {
		t.Fatal("a malformed auth entry was accepted")
	}
	if strings.Contains(err.Error(), secretText) || !strings.Contains(err.Error(), "registry.example") {
		t.Fatalf("err = %q; want the host named and the entry left out", err)
	}
	if inner := errors.Unwrap(err); inner == nil || !strings.Contains(inner.Error(), secretText) {
		t.Fatalf("oras-go's own error = %v; want it to quote the entry (else this test proves nothing)", inner)
	}
}

// TestDockerCredentialHelperErrorsKept: a credential helper's own message says what to do (unlock
// the keychain, start Docker Desktop) and quotes no entry: it is kept, where a malformed entry's
// error is replaced (TestDockerConfigErrorsHideTheEntry), but redacted: a token it quotes is not.
func TestDockerCredentialHelperErrorsKept(t *testing.T) {
	const token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl"
	dir := t.TempDir()
	helper := filepath.Join(dir, "docker-credential-broken")
	if err := os.WriteFile(helper, []byte("#!/bin/sh\necho 'the login keychain is locked; cached token "+token+" not used'\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"credsStore":"broken"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	f, err := credentialFunc("registry.example", Options{}, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f(context.Background(), "registry.example")
	if err == nil || !strings.Contains(err.Error(), "the login keychain is locked") || strings.Contains(err.Error(), token) {
		t.Fatalf("err = %v; want the helper's message without the token", err)
	}
	if inner := errors.Unwrap(err); inner == nil || !strings.Contains(inner.Error(), token) {
		t.Fatalf("oras-go's own error = %v; want it to quote the token (else this test proves nothing)", inner)
	}
}

// TestWraps: oras-go's malformed-entry error is found by its message however it is wrapped,
// errors.Join and several %w included, and only an error with exactly that message matches.
func TestWraps(t *testing.T) {
	entry := errors.New(invalidConfigFormat)
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"itself", entry, true},
		{"wrapped", fmt.Errorf("get credentials: %w", entry), true},
		{"joined", errors.Join(errors.New("other"), fmt.Errorf("decode: %w", entry)), true},
		{"one of several %w", fmt.Errorf("%w; %w", errors.New("other"), entry), true},
		{"quoted, not wrapped", fmt.Errorf("decode: %v", entry), false},
		{"a message that starts with it", errors.New(invalidConfigFormat + ": the helper's own words"), false},
		{"nil", nil, false},
	}
	for _, tc := range tests {
		if got := wraps(tc.err, invalidConfigFormat); got != tc.want {
			t.Errorf("%s: wraps = %v, want %v", tc.name, got, tc.want)
		}
	}
}
