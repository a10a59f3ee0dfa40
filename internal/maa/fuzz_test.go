package maa

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

func FuzzParseUnverified(f *testing.F) {
	f.Add(readRealToken(f))
	f.Add("e30.e30.")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add(`a.b.c`)
	f.Add(b64url([]byte(`{"a":1,"a":2}`)) + ".e30.x")
	f.Add(b64url([]byte(`{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`)) + ".e30.x")
	f.Fuzz(func(t *testing.T, raw string) {
		h, c, err := ParseUnverified(raw)
		if err != nil {
			if CheckName(err) != CheckFormat {
				t.Fatalf("error without the format check: %v", err)
			}
			return
		}
		if h == nil || c == nil || len(raw) > MaxTokenSize {
			t.Fatal("accepted without a header and claims, or oversized")
		}
		_, _ = ClientPayloadNonce(c)
	})
}

// FuzzVerify feeds arbitrary strings to a verifier whose only key signed none of the seeds:
// nothing may panic and nothing may verify.
func FuzzVerify(f *testing.F) {
	testKeys(f)
	now := testNow
	f.Add(readRealToken(f))
	// Well-formed tokens that nonetheless must fail: signed by another key under the trusted kid.
	f.Add(signJOSE(f, attackerKey, testKID, validClaims(now, "n"), nil))
	f.Add(signJOSE(f, attackerKey, "other", validClaims(now, "n"), nil))
	f.Add(b64url([]byte(`{"alg":"none","kid":"`+testKID+`"}`)) + "." + b64url(mustJSON(f, validClaims(now, "n"))) + ".")
	f.Add(b64url([]byte(`{"alg":"HS256","kid":"`+testKID+`"}`)) + "." + b64url(mustJSON(f, validClaims(now, "n"))) + ".AAAA")
	f.Add("")
	f.Add("...")

	keys, err := NewStaticKeySet(publicJWKS(f, signingKey, testKID))
	if err != nil {
		f.Fatal(err)
	}
	v, err := NewVerifier(VerifierOptions{Instance: testInstance, Keys: keys, MaxAge: time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		for _, nonce := range []string{"", "n"} {
			tok, err := v.Verify(context.Background(), raw, nonce)
			if err == nil || tok != nil {
				t.Fatalf("verified a token no trusted key signed: %q", raw)
			}
			if CheckName(err) == "" {
				t.Fatalf("error is not a *CheckError: %v", err)
			}
		}
	})
}

func FuzzDecodeEncryptedToken(f *testing.F) {
	std := base64.StdEncoding.EncodeToString
	good := `{"EncryptedInnerKey":"` + std(make([]byte, 256)) + `","EncryptionParams":{"BlockMode":"ChainingModeGCM","BlockPadding":"PKCS7","Cipher":"AES","KeySizeInBits":256,"Iv":"` +
		std(make([]byte, 12)) + `"},"AuthenticationData":"` + std(make([]byte, 16)) + `","Jwt":"` + std([]byte("ct")) + `"}`
	f.Add([]byte(`{"token":"` + base64.RawURLEncoding.EncodeToString([]byte(good)) + `"}`))
	f.Add([]byte(`{"token":"` + base64.URLEncoding.EncodeToString([]byte(good)) + `"}`))
	f.Add([]byte(`{"token":""}`))
	f.Add([]byte(`{"token":"e30"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := decodeAttestResponse(body)
		if err != nil {
			return
		}
		if len(r.iv) != gcmIVSize || len(r.tag) != gcmTagSize || len(r.innerKey) == 0 || len(r.ciphertext) == 0 {
			t.Fatalf("accepted bad sizes: iv %d tag %d", len(r.iv), len(r.tag))
		}
		switch r.keyBits {
		case 128, 192, 256:
		default:
			t.Fatalf("accepted key size %d", r.keyBits)
		}
		// Opening with a key of the announced size must fail cleanly (the tag cannot match).
		if _, err := r.open(make([]byte, r.keyBits/8)); err == nil {
			t.Log("opened with a zero key (possible only for a crafted zero-key response)")
		}
		if _, err := r.open(make([]byte, 7)); err == nil {
			t.Fatal("opened with a key of the wrong size")
		}
	})
}

// FuzzParseJWKS feeds arbitrary documents to the JWKS parser (MAA's /certs answer): nothing may
// panic, and every key it keeps must be what Verify may use, read as go-jose reads it: an RSA
// public key of at least MinRSAKeyBits with a kid, restricted to no use but "sig" and no
// algorithm but RS256.
func FuzzParseJWKS(f *testing.F) {
	testKeys(f)
	f.Add(publicJWKS(f, signingKey, testKID))
	f.Add(x5cOnlyJWKS(f, signingKey, testKID))
	f.Add(publicJWKS(f, weakKey, testKID))
	// A key whose members, read without regard to case and keeping the last, looked usable.
	f.Add(withMembers(publicJWKS(f, signingKey, testKID), `"use":"sig"`, `"use":"enc","USE":"sig"`))
	f.Add(withMembers(x5cOnlyJWKS(f, signingKey, testKID), `"kty":"RSA"`, `"kty":"RSA","alg":"PS256","Alg":"RS256"`))
	f.Add([]byte(`{"keys":[{"kty":"EC","kid":"k","crv":"P-256","x":"","y":""}]}`))
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := parseJWKS(data, nil)
		if err != nil {
			if len(keys) != 0 {
				t.Fatalf("error %v with %d keys", err, len(keys))
			}
			return
		}
		if len(keys) == 0 {
			t.Fatal("no error and no key")
		}
		for _, k := range keys {
			pub, ok := k.Key.(*rsa.PublicKey)
			switch {
			case !ok || pub.N == nil || pub.N.BitLen() < MinRSAKeyBits:
				t.Fatalf("kept key %T", k.Key)
			case k.KeyID == "":
				t.Fatal("kept a key without a kid")
			case k.Use != "" && k.Use != "sig":
				t.Fatalf("kept a key restricted to use %q", k.Use)
			case k.Algorithm != "" && k.Algorithm != SigningAlgorithm:
				t.Fatalf("kept a key restricted to algorithm %q", k.Algorithm)
			}
		}
	})
}

// FuzzParseServiceError feeds arbitrary error answers (MAA's and the JWKS endpoint's bodies and
// status lines come from the network) to parseServiceError: Code and Message are valid UTF-8 of
// printable runes, Code at most maxErrorCode and Message at most maxErrorMessage bytes before the
// "..." of a cut. A CloudError body made of code and message keeps them as they are when they are
// short, printable and trimmed already.
func FuzzParseServiceError(f *testing.F) {
	euro := strings.Repeat("€", 400) // 3 bytes a rune: the bounds fall inside one
	f.Add([]byte(`{"error":{"code":"InvalidParameter","message":"PcrQuote is not a TPMS_ATTEST"}}`), "400 Bad Request", "InvalidParameter", "PcrQuote is not a TPMS_ATTEST")
	f.Add([]byte(`{"Error":{"Code":"Unauthorized","Message":"no"}}`), "401 Unauthorized", "", "no")
	f.Add([]byte("not here\n"), "404 Not Found", "Unauthorized", "")
	f.Add([]byte(euro), "503 "+euro, euro, euro)
	f.Add([]byte(`{"error":{"code":"`+euro+`","message":"`+euro+euro+`"}}`), "", "\x00\t", "\xff\xfe")
	f.Add([]byte("\xe2\x82"+euro+"\xc3"), "500\u00a0\u2028", "a\u200bb", " padded ")
	f.Add([]byte{}, "", "", "")
	valid := func(s string, bound int) bool {
		if len(s) > bound+len("...") || !utf8.ValidString(s) {
			return false
		}
		for _, r := range s {
			if !unicode.IsPrint(r) {
				return false
			}
		}
		return true
	}
	check := func(t *testing.T, se *ServiceError, what string) {
		t.Helper()
		if se == nil || se.StatusCode != 503 {
			t.Fatalf("%s: %+v", what, se)
		}
		if !valid(se.Code, maxErrorCode) {
			t.Fatalf("%s: code %q (%d bytes) is over %d bytes or not printable UTF-8", what, se.Code, len(se.Code), maxErrorCode)
		}
		if !valid(se.Message, maxErrorMessage) {
			t.Fatalf("%s: message %q (%d bytes) is over %d bytes or not printable UTF-8", what, se.Message, len(se.Message), maxErrorMessage)
		}
		_ = se.Error()
	}
	// clean reports whether s is kept as it is: within bound, printable UTF-8 and trimmed.
	clean := func(s string, bound int) bool {
		return len(s) <= bound && valid(s, bound) && strings.TrimSpace(s) == s
	}
	f.Fuzz(func(t *testing.T, body []byte, statusText, code, message string) {
		check(t, parseServiceError(503, statusText, body), "body")
		doc, err := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": message}})
		if err != nil {
			t.Fatal(err)
		}
		se := parseServiceError(503, statusText, doc)
		check(t, se, "CloudError")
		if code == "" && message == "" {
			return
		}
		if clean(code, maxErrorCode) && se.Code != code {
			t.Fatalf("code %q read as %q", code, se.Code)
		}
		if clean(message, maxErrorMessage) && se.Message != message {
			t.Fatalf("message %q read as %q", message, se.Message)
		}
	})
}
