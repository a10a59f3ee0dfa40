package maa

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// jwksServer serves jwks at /certs on a loopback TLS server and counts the requests.
type jwksServer struct {
	*httptest.Server
	hits atomic.Int64
}

func newJWKSServer(t *testing.T, jwks []byte) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if r.Method != http.MethodGet || r.URL.Path != CertsPath {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(jwks)
	}))
	t.Cleanup(s.Close)
	return s
}

func newTestVerifier(t *testing.T, keys KeySet, now time.Time) *Verifier {
	t.Helper()
	v, err := NewVerifier(VerifierOptions{
		Instance: testInstance + "/", // one trailing slash is trimmed
		Keys:     keys,
		MaxAge:   5 * time.Minute,
		Now:      func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVerifyForgeriesAndMalformedTokens(t *testing.T) {
	testKeys(t)
	now := testNow
	const nonce = "image-digest-binding"

	// The instance publishes its key the way MAA does: x5c only.
	certs := newJWKSServer(t, x5cOnlyJWKS(t, signingKey, testKID))
	keys := NewRemoteKeySet(testInstance, JWKSOptions{HTTPClient: certs.Client()})
	keys.url = certs.URL + CertsPath // the issuer stays testInstance; the keys come from loopback

	// The attacker's own key set, which a jku header points at; it must never be fetched.
	attackerCerts := newJWKSServer(t, publicJWKS(t, attackerKey, "attacker"))

	valid := func(mod func(map[string]any)) string {
		c := validClaims(now, nonce)
		if mod != nil {
			mod(c)
		}
		return signJOSE(t, signingKey, testKID, c, nil)
	}
	header := func(h map[string]any) []byte { return mustJSON(t, h) }
	claimsJSON := mustJSON(t, validClaims(now, nonce))
	attackerCert := selfSignedCert(t, attackerKey, "attacker")

	hs256WithPublicKey := func() string {
		pubDER, err := x509.MarshalPKIXPublicKey(&signingKey.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		input := b64url(header(map[string]any{"alg": "HS256", "kid": testKID, "typ": "JWT"})) + "." + b64url(claimsJSON)
		mac := hmac.New(sha256.New, pubDER)
		mac.Write([]byte(input))
		return input + "." + b64url(mac.Sum(nil))
	}

	// sloppyNonce encodes nonce with a padding bit set: base64 that a lenient decoder reads as
	// nonce, and that no encoder writes.
	sloppyNonce := func() string {
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
		enc := base64.StdEncoding.EncodeToString([]byte(nonce))
		i := strings.IndexByte(enc, '=') - 1
		sloppy := enc[:i] + string(alphabet[strings.IndexByte(alphabet, enc[i])+1]) + enc[i+1:]
		if b, err := base64.StdEncoding.DecodeString(sloppy); err != nil || string(b) != nonce {
			t.Fatalf("%s does not decode leniently to the nonce: %q, %v", sloppy, b, err)
		}
		return sloppy
	}()
	// sloppySignature is a valid token whose signature segment has a padding bit set: the same
	// signature to a lenient decoder (go-jose's), so another string for the same token.
	sloppySignature := func() string {
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
		tok := valid(nil)
		sloppy := tok[:len(tok)-1] + string(alphabet[strings.IndexByte(alphabet, tok[len(tok)-1])+1])
		parts := strings.Split(sloppy, ".")
		want, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[2])
		if b, err := base64.RawURLEncoding.DecodeString(parts[2]); err != nil || !bytes.Equal(b, want) {
			t.Fatalf("%s does not decode leniently to the signature: %v", parts[2], err)
		}
		return sloppy
	}()
	failed := func(check, msg string) string { return `MAA token: check "` + check + `" failed: ` + msg }

	tests := []struct {
		name      string
		token     string
		nonce     string
		wantCheck string
		wantErr   error
		wantMsg   string
	}{
		{name: "alg none", token: b64url(header(map[string]any{"alg": "none", "kid": testKID})) + "." + b64url(claimsJSON) + ".",
			nonce: nonce, wantCheck: CheckAlgorithm, wantErr: ErrAlgorithm},
		{name: "alg missing", token: signRaw(t, signingKey, header(map[string]any{"kid": testKID}), claimsJSON),
			nonce: nonce, wantCheck: CheckAlgorithm, wantErr: ErrAlgorithm},
		{name: "HS256 keyed with the RSA public key", token: hs256WithPublicKey(),
			nonce: nonce, wantCheck: CheckAlgorithm, wantErr: ErrAlgorithm},
		{name: "attacker key in its own jwk header, own kid",
			token: signJOSE(t, attackerKey, "attacker", validClaims(now, nonce), &jose.SignerOptions{EmbedJWK: true}),
			nonce: nonce, wantCheck: CheckKey, wantErr: ErrUnknownKey},
		{name: "attacker key in its own jwk header, instance kid",
			token: signJOSE(t, attackerKey, testKID, validClaims(now, nonce),
				(&jose.SignerOptions{}).WithHeader("jwk", jose.JSONWebKey{Key: &attackerKey.PublicKey, KeyID: testKID}).WithHeader("kid", testKID)),
			nonce: nonce, wantCheck: CheckSignature, wantErr: ErrSignature},
		{name: "attacker certificate in x5c, instance kid",
			token: signJOSE(t, attackerKey, testKID, validClaims(now, nonce),
				(&jose.SignerOptions{}).WithHeader("x5c", []string{base64.StdEncoding.EncodeToString(attackerCert.Raw)}).WithHeader("kid", testKID)),
			nonce: nonce, wantCheck: CheckSignature, wantErr: ErrSignature},
		{name: "jku at the attacker's server, attacker kid",
			token: signJOSE(t, attackerKey, "attacker", validClaims(now, nonce),
				(&jose.SignerOptions{}).WithHeader("jku", attackerCerts.URL+CertsPath).WithHeader("kid", "attacker")),
			nonce: nonce, wantCheck: CheckKey, wantErr: ErrUnknownKey},
		{name: "jku at the attacker's server, instance kid",
			token: signJOSE(t, attackerKey, testKID, validClaims(now, nonce),
				(&jose.SignerOptions{}).WithHeader("jku", attackerCerts.URL+CertsPath).WithHeader("kid", testKID)),
			nonce: nonce, wantCheck: CheckSignature, wantErr: ErrSignature},
		{name: "no kid", token: signRaw(t, signingKey, header(map[string]any{"alg": "RS256"}), claimsJSON),
			nonce: nonce, wantCheck: CheckKey, wantErr: ErrUnknownKey},
		{name: "claims altered after signing", token: func() string {
			parts := strings.Split(valid(nil), ".")
			c := validClaims(now, nonce)
			c[ClaimSecureBoot] = false
			return parts[0] + "." + b64url(mustJSON(t, c)) + "." + parts[2]
		}(), nonce: nonce, wantCheck: CheckSignature, wantErr: ErrSignature},
		{name: "empty signature", token: func() string {
			parts := strings.Split(valid(nil), ".")
			return parts[0] + "." + parts[1] + "."
		}(), nonce: nonce, wantCheck: CheckSignature, wantErr: ErrSignature},
		{name: "wrong issuer", token: valid(func(c map[string]any) { c["iss"] = "https://evil.weu.attest.azure.net" }),
			nonce: nonce, wantCheck: CheckIssuer, wantErr: ErrIssuer},
		{name: "issuer with a path", token: valid(func(c map[string]any) { c["iss"] = testInstance + "/x" }),
			nonce: nonce, wantCheck: CheckIssuer, wantErr: ErrIssuer},
		{name: "expired", token: valid(func(c map[string]any) { c["exp"] = now.Add(-2 * time.Minute).Unix() }),
			nonce: nonce, wantCheck: CheckExpiry, wantErr: ErrExpired},
		{name: "no exp", token: valid(func(c map[string]any) { delete(c, "exp") }),
			nonce: nonce, wantCheck: CheckExpiry, wantErr: ErrExpired},
		{name: "exp not a number", token: valid(func(c map[string]any) { c["exp"] = "tomorrow" }),
			nonce: nonce, wantCheck: CheckExpiry, wantErr: ErrExpired},
		{name: "exp beyond 2^40 seconds", token: valid(func(c map[string]any) { c["exp"] = int64(1<<40 + 1) }),
			nonce: nonce, wantCheck: CheckExpiry, wantErr: ErrExpired, wantMsg: failed(CheckExpiry, "claim exp is out of range")},
		{name: "exp negative", token: valid(func(c map[string]any) { c["exp"] = -1 }),
			nonce: nonce, wantCheck: CheckExpiry, wantErr: ErrExpired, wantMsg: failed(CheckExpiry, "claim exp is out of range")},
		{name: "exp a decimal beyond 2^40 seconds", token: valid(func(c map[string]any) { c["exp"] = json.Number("1e13") }),
			nonce: nonce, wantCheck: CheckExpiry, wantErr: ErrExpired, wantMsg: failed(CheckExpiry, "claim exp is not a valid date")},
		{name: "nbf negative", token: valid(func(c map[string]any) { c["nbf"] = -1 }),
			nonce: nonce, wantCheck: CheckNotBefore, wantErr: ErrNotYetValid, wantMsg: failed(CheckNotBefore, "claim nbf is out of range")},
		{name: "nbf a negative decimal", token: valid(func(c map[string]any) { c["nbf"] = json.Number("-0.5") }),
			nonce: nonce, wantCheck: CheckNotBefore, wantErr: ErrNotYetValid, wantMsg: failed(CheckNotBefore, "claim nbf is not a valid date")},
		{name: "not yet valid", token: valid(func(c map[string]any) { c["nbf"] = now.Add(2 * time.Minute).Unix() }),
			nonce: nonce, wantCheck: CheckNotBefore, wantErr: ErrNotYetValid},
		{name: "too old", token: valid(func(c map[string]any) { c["iat"] = now.Add(-7 * time.Minute).Unix() }),
			nonce: nonce, wantCheck: CheckAge, wantErr: ErrTooOld, wantMsg: `MAA token: check "age" failed: token is 7m0s old, max age is 5m0s`},
		{name: "no iat", token: valid(func(c map[string]any) { delete(c, "iat") }),
			nonce: nonce, wantCheck: CheckAge, wantErr: ErrTooOld},
		{name: "issued in the future", token: valid(func(c map[string]any) { c["iat"] = now.Add(2 * time.Minute).Unix() }),
			nonce: nonce, wantCheck: CheckAge, wantErr: ErrIssuedInFuture},
		{name: "sgx attestation type, matching nonce", token: valid(func(c map[string]any) { c[ClaimAttestationType] = "sgx" }),
			nonce: nonce, wantCheck: CheckAttestationType, wantErr: ErrAttestationType,
			wantMsg: `MAA token: check "attestation-type" failed: x-ms-attestation-type is "sgx", want "azurevm" (an Azure VM guest's TPM attestation); the client payload of other attestation types is not bound to this machine`},
		{name: "attestation type missing", token: valid(func(c map[string]any) { delete(c, ClaimAttestationType) }),
			nonce: nonce, wantCheck: CheckAttestationType, wantErr: ErrAttestationType},
		{name: "nonce mismatch", token: valid(nil), nonce: "another-image",
			wantCheck: CheckNonce, wantErr: ErrNonceMismatch},
		{name: "nonce claim missing", token: valid(func(c map[string]any) { c[ClaimRuntime] = map[string]any{ClaimClientPayload: map[string]any{}} }),
			nonce: nonce, wantCheck: CheckNonce, wantErr: ErrNonceMismatch},
		{name: "runtime claim missing", token: valid(func(c map[string]any) { delete(c, ClaimRuntime) }),
			nonce: nonce, wantCheck: CheckNonce, wantErr: ErrNonceMismatch},
		{name: "nonce sent unencoded", token: valid(func(c map[string]any) {
			c[ClaimRuntime] = map[string]any{ClaimClientPayload: map[string]any{NonceKey: nonce}}
		}), nonce: nonce, wantCheck: CheckNonce, wantErr: ErrNonceMismatch},
		{name: "nonce in base64 with a padding bit set", token: valid(func(c map[string]any) {
			c[ClaimRuntime] = map[string]any{ClaimClientPayload: map[string]any{NonceKey: sloppyNonce}}
		}), nonce: nonce, wantCheck: CheckNonce, wantErr: ErrNonceMismatch},
		{name: "truncated", token: valid(nil)[:200], nonce: nonce, wantCheck: CheckFormat, wantErr: ErrMalformed},
		{name: "truncated inside the signature", token: func() string { s := valid(nil); return s[:len(s)-6] }(),
			nonce: nonce, wantCheck: CheckSignature, wantErr: ErrSignature},
		{name: "bad base64", token: "eyJhbGciOiJSUzI1NiJ9!." + b64url(claimsJSON) + ".c2ln", nonce: nonce,
			wantCheck: CheckFormat, wantErr: ErrMalformed},
		{name: "padded base64", token: b64url(header(map[string]any{"alg": "RS256", "kid": testKID})) + "=." + b64url(claimsJSON) + ".c2ln",
			nonce: nonce, wantCheck: CheckFormat, wantErr: ErrMalformed},
		// Strict base64url: a token has one spelling, so its SHA-256 (the signed attribute) names
		// it. Mutant killed: parseCompact decoding with base64.RawURLEncoding without Strict().
		{name: "signature in base64url with a padding bit set", token: sloppySignature, nonce: nonce,
			wantCheck: CheckFormat, wantErr: ErrMalformed},
		{name: "header not JSON", token: b64url([]byte("alg=RS256")) + "." + b64url(claimsJSON) + ".c2ln", nonce: nonce,
			wantCheck: CheckFormat, wantErr: ErrMalformed},
		{name: "claims an array", token: signRaw(t, signingKey, header(map[string]any{"alg": "RS256", "kid": testKID}), []byte(`[1]`)),
			nonce: nonce, wantCheck: CheckFormat, wantErr: ErrMalformed},
		{name: "oversized", token: strings.Repeat("A", MaxTokenSize+1), nonce: nonce, wantCheck: CheckFormat, wantErr: ErrTooLarge},
		{name: "empty", token: "", nonce: nonce, wantCheck: CheckFormat, wantErr: ErrMalformed},
		{name: "four parts", token: valid(nil) + ".x", nonce: nonce, wantCheck: CheckFormat, wantErr: ErrMalformed},
		{name: "crit header", token: signRaw(t, signingKey, header(map[string]any{"alg": "RS256", "kid": testKID, "crit": []string{"exp"}, "exp": 1}), claimsJSON),
			nonce: nonce, wantCheck: CheckFormat, wantErr: ErrMalformed},
		{name: "duplicate alg header", token: signRaw(t, signingKey, []byte(`{"alg":"none","kid":"`+testKID+`","alg":"RS256"}`), claimsJSON),
			nonce: nonce, wantCheck: CheckFormat, wantErr: ErrMalformed},
		{name: "duplicate claim", token: signRaw(t, signingKey, header(map[string]any{"alg": "RS256", "kid": testKID}),
			[]byte(`{"iss":"https://evil.example","iss":"`+testInstance+`"}`)),
			nonce: nonce, wantCheck: CheckFormat, wantErr: ErrMalformed},
	}
	v := newTestVerifier(t, keys, now)
	seen := map[string]string{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := v.Verify(context.Background(), tc.token, tc.nonce)
			if err == nil {
				t.Fatalf("Verify accepted a bad token (nonce %q)", tok.Nonce())
			}
			if tok != nil {
				t.Error("Verify returned a token with an error")
			}
			if got := CheckName(err); got != tc.wantCheck {
				t.Errorf("CheckName = %q, want %q (err: %v)", got, tc.wantCheck, err)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want errors.Is %v", err, tc.wantErr)
			}
			if tc.wantMsg != "" && err.Error() != tc.wantMsg {
				t.Errorf("message = %q, want %q", err.Error(), tc.wantMsg)
			}
			if len(tc.token) > 40 && strings.Contains(err.Error(), tc.token[:40]) {
				t.Errorf("the error message quotes the token: %v", err)
			}
			seen[tc.wantErr.Error()] = tc.wantCheck
		})
	}
	if n := attackerCerts.hits.Load(); n != 0 {
		t.Errorf("the verifier fetched the jku of a token %d times", n)
	}
	if n := certs.hits.Load(); n != 1 {
		t.Errorf("the instance JWKS was fetched %d times, want 1 (MinRefreshInterval not passed)", n)
	}
	// The valid token passes the same verifier.
	if _, err := v.Verify(context.Background(), valid(nil), nonce); err != nil {
		t.Fatalf("valid token rejected: %v", err)
	}
}

func TestVerifyValidTokenAccessors(t *testing.T) {
	testKeys(t)
	keys, err := NewStaticKeySet(publicJWKS(t, signingKey, testKID))
	if err != nil {
		t.Fatal(err)
	}
	v := newTestVerifier(t, keys, testNow)
	claims := validClaims(testNow, "1234")
	claims[ClaimRuntime].(map[string]any)[ClaimClientPayload].(map[string]any)["purpose"] = base64.StdEncoding.EncodeToString([]byte("sign"))
	raw := signJOSE(t, signingKey, testKID, claims, nil)

	for _, nonce := range []string{"1234", ""} {
		tok, err := v.Verify(context.Background(), raw, nonce)
		if err != nil {
			t.Fatalf("Verify(nonce %q): %v", nonce, err)
		}
		if tok.Raw() != raw {
			t.Error("Raw differs")
		}
		sum := sha256.Sum256([]byte(raw))
		if tok.SHA256() != strings.ToLower(base16(sum[:])) {
			t.Errorf("SHA256 = %s", tok.SHA256())
		}
		if tok.Issuer() != testInstance {
			t.Errorf("Issuer = %q", tok.Issuer())
		}
		if !tok.IssuedAt().Equal(testNow.Add(-time.Minute)) || !tok.NotBefore().Equal(testNow.Add(-time.Minute)) ||
			!tok.Expiry().Equal(testNow.Add(8*time.Hour)) {
			t.Errorf("times: iat %v nbf %v exp %v", tok.IssuedAt(), tok.NotBefore(), tok.Expiry())
		}
		if tok.Nonce() != "1234" {
			t.Errorf("Nonce = %q", tok.Nonce())
		}
		if p := tok.ClientPayload(); p["nonce"] != "1234" || p["purpose"] != "sign" || len(p) != 2 {
			t.Errorf("ClientPayload = %v", p)
		}
		c := tok.Claims()
		if c[ClaimAttestationType] != AttestationTypeAzureVM {
			t.Errorf("claims: %v", c[ClaimAttestationType])
		}
		// Claims is a copy: changing it does not change the token.
		c[ClaimRuntime].(map[string]any)[ClaimClientPayload] = nil
		delete(c, "iss")
		if tok.Claims()["iss"] != testInstance || tok.Claims()[ClaimRuntime].(map[string]any)[ClaimClientPayload] == nil {
			t.Error("Claims returned the token's own map")
		}
	}
}

func base16(b []byte) string {
	const hexdigits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, hexdigits[c>>4], hexdigits[c&15])
	}
	return string(out)
}

func TestVerifySkew(t *testing.T) {
	testKeys(t)
	keys, err := NewStaticKeySet(publicJWKS(t, signingKey, testKID))
	if err != nil {
		t.Fatal(err)
	}
	v := newTestVerifier(t, keys, testNow)
	tests := []struct {
		name string
		mod  func(map[string]any)
		ok   bool
	}{
		{"expired 30s ago, within skew", func(c map[string]any) { c["exp"] = testNow.Add(-30 * time.Second).Unix() }, true},
		{"expired exactly skew ago", func(c map[string]any) { c["exp"] = testNow.Add(-DefaultSkew).Unix() }, false},
		{"nbf 30s ahead, within skew", func(c map[string]any) { c["nbf"] = testNow.Add(30 * time.Second).Unix() }, true},
		{"no nbf", func(c map[string]any) { delete(c, "nbf") }, true},
		{"iat 30s ahead, within skew", func(c map[string]any) { c["iat"] = testNow.Add(30 * time.Second).Unix() }, true},
		{"iat exactly max age", func(c map[string]any) { c["iat"] = testNow.Add(-5 * time.Minute).Unix() }, true},
		{"fractional dates", func(c map[string]any) { c["iat"] = float64(testNow.Unix()) - 0.5 }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validClaims(testNow, "n")
			tc.mod(c)
			_, err := v.Verify(context.Background(), signJOSE(t, signingKey, testKID, c, nil), "n")
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestRemoteKeySetRefresh(t *testing.T) {
	testKeys(t)
	certs := newJWKSServer(t, x5cOnlyJWKS(t, signingKey, testKID))
	keys := NewRemoteKeySet(certs.URL+"/", JWKSOptions{HTTPClient: certs.Client(), MinRefreshInterval: time.Minute})
	clock := testNow
	keys.now = func() time.Time { return clock }
	v := newTestVerifier(t, keys, testNow)
	ctx := context.Background()

	good := signJOSE(t, signingKey, testKID, validClaims(testNow, "n"), nil)
	unknown := signJOSE(t, signingKey, "rotated-in-later", validClaims(testNow, "n"), nil)

	if _, err := v.Verify(ctx, good, "n"); err != nil {
		t.Fatal(err)
	}
	if n := certs.hits.Load(); n != 1 {
		t.Fatalf("first use: %d fetches, want 1", n)
	}
	// Just under MinRefreshInterval since the fetch: not refetched (mutant killed: the interval
	// compared shorter than configured).
	clock = clock.Add(time.Minute - time.Second)
	if _, err := v.Verify(ctx, unknown, "n"); !errors.Is(err, ErrUnknownKey) || CheckName(err) != CheckKey || !strings.Contains(err.Error(), "checked its published keys") {
		t.Fatalf("unknown kid: %v", err)
	}
	// With a key set given (oras-attest --jwks, the Ratify verifier's jwksPath), the refusal says
	// that set was checked, not what the instance publishes.
	static, err := NewStaticKeySet(publicJWKS(t, signingKey, testKID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newTestVerifier(t, static, testNow).Verify(ctx, unknown, "n"); !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), "the key set given for it (a JWKS file)") {
		t.Fatalf("unknown kid, static keys: %v", err)
	}
	if n := certs.hits.Load(); n != 1 {
		t.Fatalf("unknown kid within MinRefreshInterval: %d fetches, want 1", n)
	}
	clock = clock.Add(2 * time.Minute)
	for range 3 {
		if _, err := v.Verify(ctx, unknown, "n"); !errors.Is(err, ErrUnknownKey) || CheckName(err) != CheckKey {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if n := certs.hits.Load(); n != 2 {
		t.Fatalf("unknown kid after MinRefreshInterval, 3 tokens: %d fetches, want 2 (refreshed exactly once)", n)
	}
	if _, err := v.Verify(ctx, good, "n"); err != nil {
		t.Fatal(err)
	}
	if n := certs.hits.Load(); n != 2 {
		t.Fatalf("known kid: %d fetches, want 2", n)
	}
}

func TestRemoteKeySetUnreachable(t *testing.T) {
	testKeys(t)
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	client := srv.Client()
	url := srv.URL
	srv.Close()
	v := newTestVerifier(t, NewRemoteKeySet(url, JWKSOptions{HTTPClient: client}), testNow)
	_, err := v.Verify(context.Background(), signJOSE(t, signingKey, testKID, validClaims(testNow, "n"), nil), "n")
	if CheckName(err) != CheckKeys || !errors.Is(err, ErrKeySource) {
		t.Fatalf("err = %v (check %q), want check %q and ErrKeySource", err, CheckName(err), CheckKeys)
	}

	// Within MinRefreshInterval the failure is not retried, and still reported as the key
	// source's, not as a kid the instance does not publish (mutant killed: Keys answering no keys
	// and no error after a failed fetch).
	_, err = v.Verify(context.Background(), signJOSE(t, signingKey, testKID, validClaims(testNow, "n"), nil), "n")
	if CheckName(err) != CheckKeys || !errors.Is(err, ErrKeySource) || !strings.Contains(err.Error(), "not retried") {
		t.Fatalf("second attempt within MinRefreshInterval: err = %v (check %q), want check %q and ErrKeySource", err, CheckName(err), CheckKeys)
	}

	// A server that answers, but not a JWKS.
	bad := newJWKSServer(t, []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"`+testKID+`"}]}`))
	v = newTestVerifier(t, NewRemoteKeySet(bad.URL, JWKSOptions{HTTPClient: bad.Client()}), testNow)
	_, err = v.Verify(context.Background(), signJOSE(t, signingKey, testKID, validClaims(testNow, "n"), nil), "n")
	if CheckName(err) != CheckKeys || !errors.Is(err, ErrKeySource) {
		t.Fatalf("symmetric-only JWKS: err = %v", err)
	}

	// The instance's keys, but in an answer that is not one: over MaxResponseSize (padded with
	// white space), or with an error status. Mutants killed: the JWKS read unbounded; the status
	// not checked.
	jwks := x5cOnlyJWKS(t, signingKey, testKID)
	for name, h := range map[string]http.HandlerFunc{
		"JWKS over MaxResponseSize": func(w http.ResponseWriter, r *http.Request) {
			w.Write(jwks[:len(jwks)-1])
			w.Write([]byte(strings.Repeat(" ", MaxResponseSize)))
			w.Write([]byte("}"))
		},
		"JWKS with HTTP 500": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			w.Write(jwks)
		},
	} {
		srv := httptest.NewTLSServer(h)
		defer srv.Close()
		v = newTestVerifier(t, NewRemoteKeySet(srv.URL, JWKSOptions{HTTPClient: srv.Client()}), testNow)
		_, err = v.Verify(context.Background(), signJOSE(t, signingKey, testKID, validClaims(testNow, "n"), nil), "n")
		if CheckName(err) != CheckKeys || !errors.Is(err, ErrKeySource) {
			t.Errorf("%s: err = %v, want check %q and ErrKeySource", name, err, CheckKeys)
		}
	}
}

func TestNewStaticKeySet(t *testing.T) {
	testKeys(t)
	tests := []struct {
		name string
		jwks []byte
		ok   bool
	}{
		{"n and e", publicJWKS(t, signingKey, testKID), true},
		{"x5c only, as MAA serves", x5cOnlyJWKS(t, signingKey, testKID), true},
		{"symmetric key", []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"}]}`), false},
		{"no kid", []byte(strings.Replace(string(publicJWKS(t, signingKey, testKID)), `"kid":"`+testKID+`",`, "", 1)), false},
		{"encryption key", []byte(strings.Replace(string(publicJWKS(t, signingKey, testKID)), `"use":"sig"`, `"use":"enc"`, 1)), false},
		{"alg PS256", []byte(strings.Replace(string(publicJWKS(t, signingKey, testKID)), `"alg":"RS256"`, `"alg":"PS256"`, 1)), false},
		{"RSA-1024", publicJWKS(t, weakKey, testKID), false},
		{"RSA-1024, x5c only", x5cOnlyJWKS(t, weakKey, testKID), false},
		{"not JSON", []byte("keys"), false},
		{"empty", []byte(`{"keys":[]}`), false},
		// Members are read as go-jose reads the key: by their exact names, and never twice. With
		// encoding/json the checks took "USE" for "use" (the last of the two), or "KID" for the
		// kid go-jose does not see, and kept a key restricted to encryption or PS256, or
		// without a kid.
		{"use enc, then USE sig", withMembers(publicJWKS(t, signingKey, testKID), `"use":"sig"`, `"use":"enc","USE":"sig"`), false},
		{"alg PS256, then ALG RS256", withMembers(publicJWKS(t, signingKey, testKID), `"alg":"RS256"`, `"alg":"PS256","ALG":"RS256"`), false},
		{"kid in capitals only", withMembers(publicJWKS(t, signingKey, testKID), `"kid":"`+testKID+`"`, `"KID":"`+testKID+`"`), false},
		{"kid twice", withMembers(publicJWKS(t, signingKey, testKID), `"kid":"`+testKID+`"`, `"kid":"other","kid":"`+testKID+`"`), false},
		{"x5c only, use enc, then USE sig", withMembers(x5cOnlyJWKS(t, signingKey, testKID), `"kty":"RSA"`, `"kty":"RSA","use":"enc","USE":"sig"`), false},
		{"x5c only, alg PS256", withMembers(x5cOnlyJWKS(t, signingKey, testKID), `"kty":"RSA"`, `"kty":"RSA","alg":"PS256"`), false},
		{"x5c only, use enc", withMembers(x5cOnlyJWKS(t, signingKey, testKID), `"kty":"RSA"`, `"kty":"RSA","use":"enc"`), false},
		{"x5c only, kty in capitals only", withMembers(x5cOnlyJWKS(t, signingKey, testKID), `"kty":"RSA"`, `"KTY":"RSA"`), false},
		// With n present the key is n's, and an x5c must agree with it (go-jose checks); mutant
		// killed: the first certificate's key taken whenever x5c is present.
		{"n of the key, x5c of another", withMembers(publicJWKS(t, signingKey, testKID), `"kty":"RSA"`,
			`"kty":"RSA","x5c":["`+base64.StdEncoding.EncodeToString(selfSignedCert(t, attackerKey, "other").Raw)+`"]`), false},
		{"keys twice", []byte(`{"keys":[],"keys":` + strings.TrimSuffix(strings.TrimPrefix(string(publicJWKS(t, signingKey, testKID)), `{"keys":`), `}`) + `}`), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ks, err := NewStaticKeySet(tc.jwks)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				return
			}
			got, _ := ks.Keys(context.Background(), testKID)
			if len(got) != 1 || !signingKey.PublicKey.Equal(got[0].Key) {
				t.Fatalf("keys = %v", got)
			}
		})
	}
}

// withMembers returns jwks with the member old, which must be in it, replaced by members.
func withMembers(jwks []byte, old, members string) []byte {
	if !strings.Contains(string(jwks), old) {
		panic(fmt.Sprintf("%s not in %s", old, jwks))
	}
	return []byte(strings.Replace(string(jwks), old, members, 1))
}

// TestVerifyRefusesUnusableKeys: a token signed with a key the instance publishes under its kid is
// still refused (ErrUnknownKey) when that key is not one MAA signs with: RSA shorter than
// MinRSAKeyBits, or restricted to another algorithm than RS256. The keys come from the instance's
// /certs on loopback, and for the last row from a key set that hands out whatever it holds.
func TestVerifyRefusesUnusableKeys(t *testing.T) {
	testKeys(t)
	jwk := func(key *rsa.PrivateKey, kid, alg string) json.RawMessage {
		return mustJSON(t, jose.JSONWebKey{Key: &key.PublicKey, KeyID: kid, Algorithm: alg, Use: "sig"})
	}
	var x5c struct{ Keys []json.RawMessage }
	if err := json.Unmarshal(x5cOnlyJWKS(t, weakKey, "weak-x5c"), &x5c); err != nil {
		t.Fatal(err)
	}
	certs := newJWKSServer(t, mustJSON(t, map[string]any{"keys": []json.RawMessage{
		jwk(signingKey, testKID, "RS256"), jwk(weakKey, "weak", "RS256"), x5c.Keys[0], jwk(signingKey, "ps256", "PS256"),
	}}))
	remote := NewRemoteKeySet(testInstance, JWKSOptions{HTTPClient: certs.Client()})
	remote.url = certs.URL + CertsPath
	// unfiltered holds what it is given, as a KeySet of another package may.
	unfiltered := &StaticKeySet{keys: []jose.JSONWebKey{{Key: &weakKey.PublicKey, KeyID: "weak", Algorithm: "RS256", Use: "sig"}}}
	tests := []struct {
		name string
		keys KeySet
		key  *rsa.PrivateKey
		kid  string
		ok   bool
	}{
		{"RSA-2048, RS256", remote, signingKey, testKID, true},
		{"RSA-1024", remote, weakKey, "weak", false},
		{"RSA-1024, x5c only", remote, weakKey, "weak-x5c", false},
		{"alg PS256", remote, signingKey, "ps256", false},
		{"RSA-1024 from a key set that does not filter", unfiltered, weakKey, "weak", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := newTestVerifier(t, tc.keys, testNow)
			_, err := v.Verify(context.Background(), signJOSE(t, tc.key, tc.kid, validClaims(testNow, "n"), nil), "n")
			if tc.ok {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrUnknownKey) || CheckName(err) != CheckKey {
				t.Fatalf("Verify: %v, want ErrUnknownKey from check %q", err, CheckKey)
			}
		})
	}
}

func TestNewVerifierOptions(t *testing.T) {
	ks := &StaticKeySet{}
	for _, o := range []VerifierOptions{
		{Keys: ks, MaxAge: time.Minute},
		{Instance: testInstance, MaxAge: time.Minute},
		{Instance: testInstance, Keys: ks},
		{Instance: testInstance, Keys: ks, MaxAge: time.Minute, Skew: -1},
	} {
		if _, err := NewVerifier(o); err == nil {
			t.Errorf("NewVerifier(%+v) accepted", o)
		}
	}
}

// TestNewVerifierInstance: the instance is the issuer and, through NewRemoteKeySet, where the
// signing keys come from, so it must be https://HOST[:PORT] and nothing else, as for NewClient.
func TestNewVerifierInstance(t *testing.T) {
	tests := []struct {
		name       string
		instance   string
		wantIssuer string // "" means refused
		wantMsg    string
	}{
		{"https", testInstance, testInstance, ""},
		{"https, trailing slash", testInstance + "/", testInstance, ""},
		{"https with a port", "https://127.0.0.1:8443", "https://127.0.0.1:8443", ""},
		{"plain http", "http://test.weu.attest.azure.net", "", "https://"},
		{"no scheme", "test.weu.attest.azure.net", "", "https://"},
		{"path", testInstance + "/attest", "", "path"},
		{"certs path", testInstance + CertsPath, "", "path"},
		{"query", testInstance + "?x=1", "", "query"},
		{"empty query", testInstance + "?", "", "query"},
		{"user information", "https://user:pass@test.weu.attest.azure.net", "", "user information"},
		{"fragment", testInstance + "#frag", "", "fragment"},
		{"empty fragment", testInstance + "#", "", "fragment"},
		// The issuer is the normalised URL (url.Parse lowers the scheme), what MAA writes in iss.
		{"scheme in capitals", "HTTPS://test.weu.attest.azure.net", testInstance, ""},
		{"no host", "https://", "", "no host"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := NewVerifier(VerifierOptions{Instance: tc.instance, Keys: &StaticKeySet{}, MaxAge: time.Minute})
			if tc.wantIssuer == "" {
				if err == nil {
					t.Fatalf("NewVerifier(Instance %q) accepted", tc.instance)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("err = %v, want it to mention %q", err, tc.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if v.issuer != tc.wantIssuer {
				t.Errorf("issuer = %q, want %q", v.issuer, tc.wantIssuer)
			}
		})
	}
}

// TestVerifyAttestationType: MAA copies caller-chosen runtime data into tokens of every
// attestation type (SGX, OpenEnclave, ...), signed with the same keys; only an azurevm token's
// client payload is bound to TPM evidence. A token of another type, or of none, fails
// CheckAttestationType before its nonce is looked at, even when the nonce matches.
func TestVerifyAttestationType(t *testing.T) {
	testKeys(t)
	keys, err := NewStaticKeySet(publicJWKS(t, signingKey, testKID))
	if err != nil {
		t.Fatal(err)
	}
	v := newTestVerifier(t, keys, testNow)
	const nonce = "image-digest-binding"
	tests := []struct {
		name    string
		value   any // nil: claim absent
		wantMsg string
	}{
		{"sgx", "sgx", `x-ms-attestation-type is "sgx", want "azurevm"`},
		{"openenclave", "openenclave", `"openenclave"`},
		{"sevsnpvm", "sevsnpvm", `"sevsnpvm"`},
		{"case differs", "AzureVM", `"AzureVM"`},
		{"attestation type name instead of claim value", AttestationTypeAzureGuest, `"AzureGuest"`},
		{"missing", nil, `(missing)`},
		{"not a string", []string{AttestationTypeAzureVM}, `([]interface {})`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validClaims(testNow, nonce)
			if tc.value == nil {
				delete(c, ClaimAttestationType)
			} else {
				c[ClaimAttestationType] = tc.value
			}
			raw := signJOSE(t, signingKey, testKID, c, nil)
			for _, n := range []string{nonce, "other-nonce", ""} {
				tok, err := v.Verify(context.Background(), raw, n)
				if tok != nil || err == nil {
					t.Fatalf("Verify(nonce %q) accepted a token of type %v", n, tc.value)
				}
				if CheckName(err) != CheckAttestationType || !errors.Is(err, ErrAttestationType) {
					t.Fatalf("Verify(nonce %q): err = %v (check %q), want check %q and ErrAttestationType", n, err, CheckName(err), CheckAttestationType)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("err = %v, want it to name %s", err, tc.wantMsg)
				}
			}
		})
	}
	// The same claims with the azurevm type verify.
	if _, err := v.Verify(context.Background(), signJOSE(t, signingKey, testKID, validClaims(testNow, nonce), nil), nonce); err != nil {
		t.Fatalf("azurevm token rejected: %v", err)
	}
}

// TestChecksOrder: the attestation type is checked after the signature, issuer and validity
// checks and before the nonce.
func TestChecksOrder(t *testing.T) {
	want := []string{CheckFormat, CheckAlgorithm, CheckKeys, CheckKey, CheckSignature, CheckIssuer,
		CheckExpiry, CheckNotBefore, CheckAge, CheckAttestationType, CheckNonce}
	if strings.Join(Checks, ",") != strings.Join(want, ",") {
		t.Fatalf("Checks = %v, want %v", Checks, want)
	}
	// An expired SGX token fails the expiry check: the order of Checks is the order of Verify.
	testKeys(t)
	keys, err := NewStaticKeySet(publicJWKS(t, signingKey, testKID))
	if err != nil {
		t.Fatal(err)
	}
	c := validClaims(testNow, "n")
	c[ClaimAttestationType] = "sgx"
	c["exp"] = testNow.Add(-time.Hour).Unix()
	if _, err := newTestVerifier(t, keys, testNow).Verify(context.Background(), signJOSE(t, signingKey, testKID, c, nil), "n"); CheckName(err) != CheckExpiry {
		t.Fatalf("expired sgx token: %v, want check %q", err, CheckExpiry)
	}
}

// readRealToken returns the real AzureGuest token printed in Microsoft's AKS sample.
func readRealToken(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("../../testdata/real/maa-azureguest-aks-sample.jwt")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestRealTokenParseUnverified(t *testing.T) {
	raw := readRealToken(t)
	header, claims, err := ParseUnverified(raw)
	if err != nil {
		t.Fatal(err)
	}
	if header["alg"] != "RS256" || header["kid"] == "" || header["jku"] != "https://sharedwus.wus.attest.azure.net/certs" {
		t.Errorf("header = %v", header)
	}
	if claims["iss"] != "https://sharedwus.wus.attest.azure.net" || claims[ClaimAttestationType] != AttestationTypeAzureVM {
		t.Errorf("iss %v, type %v", claims["iss"], claims[ClaimAttestationType])
	}
	if _, ok := claims["exp"].(json.Number); !ok {
		t.Errorf("exp is %T, want json.Number", claims["exp"])
	}
	nonce, err := ClientPayloadNonce(claims)
	if err != nil || nonce != "1234" {
		t.Fatalf("ClientPayloadNonce = %q, %v; want 1234", nonce, err)
	}

	// Without the instance's keys the real token cannot verify, and says why.
	testKeys(t)
	ks, err := NewStaticKeySet(publicJWKS(t, signingKey, testKID))
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierOptions{Instance: "https://sharedwus.wus.attest.azure.net", Keys: ks, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), raw, "1234"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("real token with foreign keys: %v", err)
	}
}

// TestRealTokenShapedClaims re-signs the real token's claim set with a test key and fresh dates:
// the verifier must accept what MAA actually issues.
func TestRealTokenShapedClaims(t *testing.T) {
	testKeys(t)
	_, claims, err := ParseUnverified(readRealToken(t))
	if err != nil {
		t.Fatal(err)
	}
	claims["iat"] = testNow.Add(-time.Minute).Unix()
	claims["nbf"] = testNow.Add(-time.Minute).Unix()
	claims["exp"] = testNow.Add(8 * time.Hour).Unix()
	raw := signJOSE(t, signingKey, testKID, claims, (&jose.SignerOptions{}).WithHeader("jku", "https://sharedwus.wus.attest.azure.net/certs"))
	ks, err := NewStaticKeySet(x5cOnlyJWKS(t, signingKey, testKID))
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierOptions{Instance: "https://sharedwus.wus.attest.azure.net/", Keys: ks, MaxAge: 5 * time.Minute,
		Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := v.Verify(context.Background(), raw, "1234")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Nonce() != "1234" || tok.Claims()[ClaimVMID] != "D3FD4B09-37A3-40D5-8F2A-EA80762213CC" {
		t.Errorf("nonce %q, vmid %v", tok.Nonce(), tok.Claims()[ClaimVMID])
	}
}

func TestParseUnverifiedRejects(t *testing.T) {
	for _, raw := range []string{"", "a.b", "a.b.c.d", strings.Repeat("x", MaxTokenSize+1), "e30.e30", "W10.e30.", "e30.W10."} {
		if _, _, err := ParseUnverified(raw); err == nil || CheckName(err) != CheckFormat {
			t.Errorf("ParseUnverified(%.20q) = %v", raw, err)
		}
	}
	if _, _, err := ParseUnverified("e30.e30."); err != nil {
		t.Errorf("ParseUnverified of {}.{}. = %v", err)
	}
}

func TestClientPayloadNonce(t *testing.T) {
	tests := []struct {
		name   string
		claims map[string]any
		want   string
		ok     bool
	}{
		{"sample", map[string]any{ClaimRuntime: map[string]any{ClaimClientPayload: map[string]any{"nonce": "MTIzNA=="}}}, "1234", true},
		{"no runtime", map[string]any{}, "", false},
		{"no payload", map[string]any{ClaimRuntime: map[string]any{}}, "", false},
		{"no nonce", map[string]any{ClaimRuntime: map[string]any{ClaimClientPayload: map[string]any{}}}, "", false},
		{"not a string", map[string]any{ClaimRuntime: map[string]any{ClaimClientPayload: map[string]any{"nonce": 1}}}, "", false},
		{"unpadded", map[string]any{ClaimRuntime: map[string]any{ClaimClientPayload: map[string]any{"nonce": "MTIzNA"}}}, "", false},
		{"padding bits set", map[string]any{ClaimRuntime: map[string]any{ClaimClientPayload: map[string]any{"nonce": "MTIzNB=="}}}, "", false},
		{"url alphabet", map[string]any{ClaimRuntime: map[string]any{ClaimClientPayload: map[string]any{"nonce": "-_8="}}}, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ClientPayloadNonce(tc.claims)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("= %q, %v; want %q ok=%v", got, err, tc.want, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrMalformed) {
				t.Errorf("err %v does not wrap ErrMalformed", err)
			}
		})
	}
}

func TestRemoteKeySetPrefetch(t *testing.T) {
	testKeys(t)
	certs := newJWKSServer(t, x5cOnlyJWKS(t, signingKey, testKID))
	keys := NewRemoteKeySet(certs.URL, JWKSOptions{HTTPClient: certs.Client(), MinRefreshInterval: time.Hour})
	v := newTestVerifier(t, keys, testNow)
	ctx := context.Background()
	done := make(chan struct{})
	go func() { defer close(done); keys.Prefetch(ctx) }()
	if _, err := v.Verify(ctx, signJOSE(t, signingKey, testKID, validClaims(testNow, "n"), nil), "n"); err != nil {
		t.Fatal(err)
	}
	<-done
	keys.Prefetch(ctx) // keys held: no fetch
	if n := certs.hits.Load(); n != 1 {
		t.Fatalf("prefetch racing a verification, then another prefetch: %d fetches, want 1", n)
	}

	// A failed prefetch is forgotten: the first verification fetches again (within
	// MinRefreshInterval) and succeeds once the server answers.
	var up atomic.Bool
	jwks := x5cOnlyJWKS(t, signingKey, testKID)
	flaky := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		w.Write(jwks)
	}))
	defer flaky.Close()
	keys = NewRemoteKeySet(flaky.URL, JWKSOptions{HTTPClient: flaky.Client(), MinRefreshInterval: time.Hour})
	keys.Prefetch(ctx)
	up.Store(true)
	if _, err := newTestVerifier(t, keys, testNow).Verify(ctx, signJOSE(t, signingKey, testKID, validClaims(testNow, "n"), nil), "n"); err != nil {
		t.Fatalf("after a failed prefetch: %v", err)
	}
}

// TestRemoteKeySetPrefetchKeepsTheRefreshLimit: a prefetch counts as a fetch for
// MinRefreshInterval, and does not fetch again after a failed fetch within it, so that neither
// gives a token with an unknown kid a fetch of its own. Mutants killed: Prefetch not recording (or
// backdating) its fetch time; Prefetch fetching while a failed fetch is not yet retried.
func TestRemoteKeySetPrefetchKeepsTheRefreshLimit(t *testing.T) {
	testKeys(t)
	ctx := context.Background()
	unknown := signJOSE(t, signingKey, "rotated-in-later", validClaims(testNow, "n"), nil)

	certs := newJWKSServer(t, x5cOnlyJWKS(t, signingKey, testKID))
	keys := NewRemoteKeySet(certs.URL, JWKSOptions{HTTPClient: certs.Client(), MinRefreshInterval: time.Hour})
	keys.Prefetch(ctx)
	if _, err := newTestVerifier(t, keys, testNow).Verify(ctx, unknown, "n"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown kid after a prefetch: %v", err)
	}
	if n := certs.hits.Load(); n != 1 {
		t.Errorf("prefetch, then an unknown kid within MinRefreshInterval: %d fetches, want 1", n)
	}

	var hits atomic.Int64
	down := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "busy", http.StatusServiceUnavailable)
	}))
	defer down.Close()
	keys = NewRemoteKeySet(down.URL, JWKSOptions{HTTPClient: down.Client(), MinRefreshInterval: time.Hour})
	if _, err := newTestVerifier(t, keys, testNow).Verify(ctx, unknown, "n"); !errors.Is(err, ErrKeySource) {
		t.Fatalf("keys down: %v", err)
	}
	keys.Prefetch(ctx)
	if n := hits.Load(); n != 1 {
		t.Errorf("a failed fetch, then a prefetch within MinRefreshInterval: %d fetches, want 1", n)
	}
}

// TestNumericDate: a NumericDate claim is read as RFC 7519 defines it, seconds since the epoch,
// a fraction and an exponent included; a negative, too large or non-numeric one is refused.
func TestNumericDate(t *testing.T) {
	tests := []struct {
		name  string
		claim any
		want  time.Time
		ok    bool
		err   string
	}{
		{"integer", json.Number("1700000000"), time.Unix(1700000000, 0), true, ""},
		{"fraction", json.Number("1700000000.75"), time.Unix(1700000000, 75e7), true, ""},
		{"exponent", json.Number("1.7e9"), time.Unix(1700000000, 0), true, ""},
		{"absent", nil, time.Time{}, false, ""},
		{"negative", json.Number("-1"), time.Time{}, false, "out of range"},
		{"too large", json.Number("1e13"), time.Time{}, false, "not a valid date"},
		{"string", "1700000000", time.Time{}, false, "not a number"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			claims := map[string]any{}
			if tc.claim != nil {
				claims["iat"] = tc.claim
			}
			got, ok, err := NumericDate(claims, "iat")
			if !got.Equal(tc.want) || ok != tc.ok || (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("NumericDate = %v, %v, %v; want %v, %v, %q", got, ok, err, tc.want, tc.ok, tc.err)
			}
		})
	}
}
