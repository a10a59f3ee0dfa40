package maa

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestRemoteKeySetRefusesRedirects: the signing keys come from the instance's own /certs. A 3xx
// answer is a fetch error naming where it pointed, and the target is never asked, whether it is
// on the same host, another host or plain HTTP, and even when the caller's client would follow
// redirects.
func TestRemoteKeySetRefusesRedirects(t *testing.T) {
	testKeys(t)
	jwks := x5cOnlyJWKS(t, signingKey, testKID)

	// Where the redirects point: servers that would hand out valid keys, counting requests.
	var targetHits atomic.Int64
	serveKeys := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		targetHits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write(jwks)
	})
	otherHost := httptest.NewTLSServer(serveKeys)
	t.Cleanup(otherHost.Close)
	plain := httptest.NewServer(serveKeys)
	t.Cleanup(plain.Close)

	var location string // set per case, read by the instance's handler
	instance := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/moved"+CertsPath {
			serveKeys(w, r)
			return
		}
		http.Redirect(w, r, location, http.StatusFound)
	}))
	t.Cleanup(instance.Close)

	followed := 0
	following := &http.Client{
		Transport:     instance.Client().Transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { followed++; return nil },
	}

	tests := []struct {
		name     string
		location string
		client   *http.Client
	}{
		{"same host", instance.URL + "/moved" + CertsPath, instance.Client()},
		{"same host, relative", "/moved" + CertsPath, instance.Client()},
		{"other host", otherHost.URL + CertsPath, instance.Client()},
		{"https to http", plain.URL + CertsPath, instance.Client()},
		{"caller's client follows redirects", otherHost.URL + CertsPath, following},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			location = tc.location
			targetHits.Store(0)
			keys := NewRemoteKeySet(instance.URL, JWKSOptions{HTTPClient: tc.client})
			got, err := keys.Keys(context.Background(), testKID)
			if err == nil || len(got) != 0 {
				t.Fatalf("Keys = %d keys, %v; want a refused redirect", len(got), err)
			}
			if !errors.Is(err, ErrKeySource) {
				t.Errorf("err %v does not wrap ErrKeySource", err)
			}
			if !strings.Contains(err.Error(), "redirected to") || !strings.Contains(err.Error(), tc.location) {
				t.Errorf("err = %v, want it to name the redirect to %s", err, tc.location)
			}
			if n := targetHits.Load(); n != 0 {
				t.Errorf("the redirect target was asked %d times", n)
			}

			// Through the verifier, the refusal is the keys check.
			v := newTestVerifier(t, keys, testNow)
			keys.lastAttempt = keys.lastAttempt.Add(-2 * DefaultMinRefreshInterval) // allow a refetch
			_, err = v.Verify(context.Background(), signJOSE(t, signingKey, testKID, validClaims(testNow, "n"), nil), "n")
			if CheckName(err) != CheckKeys || !strings.Contains(err.Error(), "redirected to") {
				t.Errorf("Verify: %v, want check %q naming the redirect", err, CheckKeys)
			}
		})
	}
	if followed != 0 {
		t.Errorf("the caller's CheckRedirect was called %d times", followed)
	}
	if following.CheckRedirect == nil {
		t.Error("the caller's client was modified")
	}
	// The same instance without a redirect serves its keys: only the redirect was refused.
	direct := httptest.NewTLSServer(serveKeys)
	t.Cleanup(direct.Close)
	if got, err := NewRemoteKeySet(direct.URL, JWKSOptions{HTTPClient: direct.Client()}).Keys(context.Background(), testKID); err != nil || len(got) != 1 {
		t.Fatalf("direct fetch: %d keys, %v", len(got), err)
	}
}

// TestRemoteKeySetRefusesInsecureInstance: an instance URL that is not https://HOST[:PORT] is
// never fetched from; Keys fails naming it. There is no way to allow plain HTTP.
func TestRemoteKeySetRefusesInsecureInstance(t *testing.T) {
	testKeys(t)
	var hits atomic.Int64
	jwks := x5cOnlyJWKS(t, signingKey, testKID)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write(jwks)
	}))
	t.Cleanup(plain.Close)
	tls := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write(jwks)
	}))
	t.Cleanup(tls.Close)

	tests := []struct {
		name     string
		instance string
		client   *http.Client
		wantMsg  string
	}{
		{"plain http", plain.URL, plain.Client(), "https://"},
		{"plain http, trailing slash", plain.URL + "/", plain.Client(), "https://"},
		{"path", tls.URL + "/tenant", tls.Client(), "path"},
		{"query", tls.URL + "?x=1", tls.Client(), "query"},
		{"user information", strings.Replace(tls.URL, "https://", "https://u:s3cret@", 1), tls.Client(), "user information"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys := NewRemoteKeySet(tc.instance, JWKSOptions{HTTPClient: tc.client})
			for range 2 { // Prefetch refuses quietly, Keys with the error
				keys.Prefetch(context.Background())
			}
			got, err := keys.Keys(context.Background(), testKID)
			if err == nil || len(got) != 0 {
				t.Fatalf("Keys = %d keys, %v; want a refusal", len(got), err)
			}
			if !errors.Is(err, ErrKeySource) {
				t.Errorf("err %v does not wrap ErrKeySource", err)
			}
			// The instance is named, without its password: errors end up in logs.
			shown := strings.Replace(tc.instance, ":s3cret@", ":xxxxx@", 1)
			if !strings.Contains(err.Error(), shown) || !strings.Contains(err.Error(), tc.wantMsg) || strings.Contains(err.Error()+keys.URL(), "s3cret") {
				t.Errorf("err = %v (URL %s), want it to name %q and mention %q", err, keys.URL(), shown, tc.wantMsg)
			}
			if n := hits.Load(); n != 0 {
				t.Fatalf("the server was asked %d times", n)
			}
		})
	}

	// fetch checks the scheme of the address it is about to GET as well, whatever set it.
	keys := NewRemoteKeySet(tls.URL, JWKSOptions{HTTPClient: plain.Client()})
	keys.url = plain.URL + CertsPath
	if _, err := keys.Keys(context.Background(), testKID); err == nil || !strings.Contains(err.Error(), "not https") {
		t.Fatalf("http address: %v", err)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the server was asked %d times", n)
	}
}

// TestKeySetFor: a JWKS file gives its keys, followed through a symbolic link as Kubernetes
// mounts a ConfigMap; a missing, oversized or keyless file is an error naming the file; no file
// means the instance's /certs.
func TestKeySetFor(t *testing.T) {
	testKeys(t)
	key := signingKey
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("jwks.json", publicJWKS(t, key, "k1"))
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file string
		err        string // substring of the error; "" = the file's keys
	}{
		{name: "file", file: good},
		{name: "symbolic link", file: link},
		{name: "missing", file: filepath.Join(dir, "none.json"), err: "none.json"},
		{name: "too large", file: write("big.json", make([]byte, MaxResponseSize+1)), err: "big.json"},
		{name: "no usable key", file: write("empty.json", []byte(`{"keys":[]}`)), err: "empty.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ks, err := KeySetFor("https://maa.example", tc.file, JWKSOptions{})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if keys, err := ks.Keys(context.Background(), "k1"); err != nil || len(keys) != 1 {
				t.Fatalf("keys %v, %v", keys, err)
			}
		})
	}
	ks, err := KeySetFor("https://maa.example", "", JWKSOptions{})
	if r, ok := ks.(*RemoteKeySet); err != nil || !ok || r.URL() != "https://maa.example"+CertsPath {
		t.Fatalf("without a file: %T %v", ks, err)
	}
}
