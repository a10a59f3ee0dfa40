package maa

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestNewValidatesConfig(t *testing.T) {
	roots := x509.NewCertPool()
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey := sharedSigningKey(t)
	otherCert, err := selfSign(testRSAKey(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		msg  string
	}{
		{"no roots", Config{Issuer: "https://127.0.0.1:1"}, "TrustedRoots"},
		{"no issuer", Config{TrustedRoots: roots}, "Issuer is required"},
		{"http issuer", Config{TrustedRoots: roots, Issuer: "http://127.0.0.1:1"}, "https"},
		{"issuer with path", Config{TrustedRoots: roots, Issuer: "https://127.0.0.1:1/x"}, "no path"},
		{"non-RSA signing key", Config{TrustedRoots: roots, Issuer: "https://h", SigningKey: ecKey}, "RSA"},
		{"cert without key", Config{TrustedRoots: roots, Issuer: "https://h", SigningCert: otherCert}, "without"},
		{"cert for another key", Config{TrustedRoots: roots, Issuer: "https://h", SigningKey: rsaKey, SigningCert: otherCert}, "does not certify"},
		{"bad initial policy", Config{TrustedRoots: roots, Issuer: "https://h", SigningKey: rsaKey, Policy: "permit all"}, "initial policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("New = %v, want an error containing %q", err, tc.msg)
			}
		})
	}

	s, err := New(Config{TrustedRoots: roots, Issuer: "https://127.0.0.1:8443/", SigningKey: rsaKey})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(s.SigningCertificate().Raw)
	if s.Issuer() != "https://127.0.0.1:8443" || s.kid == "" || !strings.HasSuffix(s.kid, "=") || len(s.kid) != 44 ||
		s.kid != base64.StdEncoding.EncodeToString(sum[:]) {
		t.Errorf("issuer %q kid %q", s.Issuer(), s.kid)
	}
	if s.tokenLifetime != DefaultTokenLifetime || s.maxSkew != DefaultMaxClockSkew || s.currentPolicy().text != DefaultPolicy {
		t.Errorf("defaults not applied: %v %v %q", s.tokenLifetime, s.maxSkew, s.currentPolicy().text)
	}
}

func TestReplayCache(t *testing.T) {
	c := newReplayCache(2, 2)
	t0 := time.Unix(1000, 0)
	ak := sha256.Sum256([]byte("AK"))
	d1, d2, d3 := sha256.Sum256([]byte("1")), sha256.Sum256([]byte("2")), sha256.Sum256([]byte("3"))
	life := time.Hour
	if err := c.consume(ak, d1, t0, t0.Add(life)); err != nil {
		t.Fatal(err)
	}
	if err := c.consume(ak, d1, t0.Add(time.Minute), t0.Add(time.Minute+life)); asCheckError(err).Code != CodeCertifyInfoReplayed {
		t.Fatalf("replay = %v", err)
	}
	if err := c.consume(ak, d2, t0, t0.Add(life)); err != nil {
		t.Fatal(err)
	}
	// Full of live entries: refuse rather than evict.
	if err := c.consume(sha256.Sum256([]byte("other AK")), d3, t0, t0.Add(life)); asCheckError(err).Code != CodeReplayCacheFull || asCheckError(err).Status != http.StatusServiceUnavailable {
		t.Fatalf("full cache = %v", err)
	}
	// After the lifetime, entries expire and make room.
	later := t0.Add(life + time.Second)
	if err := c.consume(ak, d3, later, later.Add(life)); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if err := c.consume(ak, d1, later, later.Add(life)); err != nil {
		t.Fatalf("expired digest refused: %v", err)
	}
	if len(c.seen) != 2 || len(c.queue) != 2 || c.count[ak] != 2 {
		t.Errorf("cache holds %d/%d entries, %d for the AK", len(c.seen), len(c.queue), c.count[ak])
	}
}

// TestReplayCachePerAK checks the limit per AK: an AK at its limit is refused (429) without
// forgetting any of its live entries, so they stay unreplayable, while other AKs still attest;
// its entries expiring make room again.
func TestReplayCachePerAK(t *testing.T) {
	c := newReplayCache(10, 3)
	t0 := time.Unix(1000, 0)
	life := time.Hour
	a, b := sha256.Sum256([]byte("AK a")), sha256.Sum256([]byte("AK b"))
	digest := func(s string, i int) [sha256.Size]byte { return sha256.Sum256(fmt.Appendf(nil, "%s-%d", s, i)) }
	for i := range 3 {
		if err := c.consume(a, digest("a", i), t0.Add(time.Duration(i)*time.Minute), t0.Add(time.Duration(i)*time.Minute+life)); err != nil {
			t.Fatalf("a %d: %v", i, err)
		}
	}
	now := t0.Add(10 * time.Minute)
	if err := c.consume(a, digest("a", 3), now, now.Add(life)); asCheckError(err).Code != CodeAikAttestationLimit || asCheckError(err).Status != http.StatusTooManyRequests {
		t.Fatalf("AK over its limit = %v", err)
	}
	// Its live entries are all still refused as replays (none was evicted to make room).
	for i := range 3 {
		if err := c.consume(a, digest("a", i), now, now.Add(life)); asCheckError(err).Code != CodeCertifyInfoReplayed {
			t.Fatalf("replay of a %d = %v", i, err)
		}
	}
	// Another AK is not locked out.
	for i := range 3 {
		if err := c.consume(b, digest("b", i), now, now.Add(life)); err != nil {
			t.Fatalf("b %d: %v", i, err)
		}
	}
	// Once a's first entry expires, a may attest once more.
	later := t0.Add(life)
	if err := c.consume(a, digest("a", 3), later, later.Add(life)); err != nil {
		t.Fatalf("a after its first entry expired: %v", err)
	}
	if err := c.consume(a, digest("a", 4), later, later.Add(life)); asCheckError(err).Code != CodeAikAttestationLimit {
		t.Fatalf("a at its limit again = %v", err)
	}
	if c.count[a] != 3 || c.count[b] != 3 || len(c.seen) != 6 {
		t.Errorf("counts a %d b %d, %d entries", c.count[a], c.count[b], len(c.seen))
	}

	// The clock going backwards: an expired entry found before pruning is replaced, and the AK's
	// count stays that of its entries.
	c = newReplayCache(10, 2)
	d := digest("x", 0)
	if err := c.consume(a, d, t0.Add(life), t0.Add(2*life)); err != nil {
		t.Fatal(err)
	}
	if err := c.consume(a, digest("x", 1), t0, t0.Add(life)); err != nil {
		t.Fatal(err)
	}
	// At t0+life the second entry has expired but sits behind the first in the queue.
	if err := c.consume(b, digest("x", 1), t0.Add(life), t0.Add(2*life)); err != nil {
		t.Fatalf("expired, unpruned digest: %v", err)
	}
	if c.count[a] != 1 || c.count[b] != 1 || len(c.seen) != 2 {
		t.Errorf("after replacing an expired entry: counts a %d b %d, %d entries", c.count[a], c.count[b], len(c.seen))
	}
	final := t0.Add(3 * life)
	c.pruneLocked(final)
	if len(c.seen) != 0 || len(c.count) != 0 || len(c.queue) != 0 {
		t.Errorf("after every expiry: %d entries, %d AKs, queue %d", len(c.seen), len(c.count), len(c.queue))
	}
}

func TestDecodeStrictJSON(t *testing.T) {
	type doc struct {
		A string            `json:"A"`
		M map[string]string `json:"M"`
	}
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{"A":"x","M":{"k":"v"}}`, true},
		{`{"A":"x","a":"y"}`, false},
		{`{"M":{"k":"v","k":"w"}}`, false},
		{`{"A":"x"} {}`, false},
		{`{"B":1}`, false},
		{`[{"A":"x"}]`, false},
		{`{"A":"x","M":{"k":"v"},"A":"z"}`, false},
		{`{"M":{"k":{"x":1}}}`, false},
		{`{"a":"x"}`, false},
		{`{"m":{"k":"v"}}`, false},
		{`{"M":{"K":"v","k2":"w"}}`, true},
		{strings.Repeat(`{"M":`, 20) + "{}" + strings.Repeat("}", 20), false},
	} {
		var d doc
		if err := decodeStrictJSON([]byte(tc.in), &d); (err == nil) != tc.ok {
			t.Errorf("decodeStrictJSON(%s) = %v, want ok=%t", tc.in, err, tc.ok)
		}
	}
}

func TestDecodeBase64(t *testing.T) {
	if _, err := decodeStdBase64("YQ=="); err != nil {
		t.Error(err)
	}
	for _, s := range []string{"YQ", "YR==", "Y Q==", "YQ==\n", "-_8="} {
		if _, err := decodeStdBase64(s); err == nil {
			t.Errorf("decodeStdBase64(%q) accepted", s)
		}
	}
	for _, s := range []string{"YQ", "YQ==", "-_8"} {
		if _, err := decodeBase64URL(s); err != nil {
			t.Errorf("decodeBase64URL(%q): %v", s, err)
		}
	}
	for _, s := range []string{"YR", "YR==", "+/8", "YQ=", "YQ\n"} {
		if _, err := decodeBase64URL(s); err == nil {
			t.Errorf("decodeBase64URL(%q) accepted", s)
		}
	}
}

// ExampleNew starts an emulated MAA instance on loopback TLS, as the local stack does.
func ExampleNew() {
	ts := httptest.NewUnstartedServer(nil)
	roots := x509.NewCertPool() // the local "vTPM CA" root(s)
	srv, err := New(Config{TrustedRoots: roots, Issuer: "https://" + ts.Listener.Addr().String()})
	if err != nil {
		fmt.Println(err)
		return
	}
	ts.Config.Handler = srv.Handler()
	ts.StartTLS()
	defer ts.Close()

	rsp, err := ts.Client().Get(ts.URL + "/.well-known/openid-configuration")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer rsp.Body.Close()
	body, _ := io.ReadAll(rsp.Body)
	fmt.Println(rsp.StatusCode, strings.Contains(string(body), `"jwks_uri":"`+ts.URL+`/certs"`))
	// Output: 200 true
}
