package maa

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"testing"
	"time"
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
