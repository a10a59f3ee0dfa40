package maa_test

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/maa"
)

// BenchmarkAttest measures one full attestation against the emulator on loopback: TPM evidence
// (quote, ephemeral RSA-2048 key creation and certification), the MAA request, and the TPM
// decryption of the answer.
func BenchmarkAttest(b *testing.B) {
	c := attesttest.New(b, attesttest.WithSecureBoot())
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Client.AttestNonce(ctx, c.Device, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify measures the relying-party verification of one token (keys cached).
func BenchmarkVerify(b *testing.B) {
	c := attesttest.New(b)
	raw := c.Token(b, "bench")
	v, err := maa.NewVerifier(maa.VerifierOptions{Instance: c.URL, Keys: c.Keys, MaxAge: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := v.Verify(ctx, raw, "bench"); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := v.Verify(ctx, raw, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBareRS256 is the baseline of BenchmarkVerify: only the RS256 signature check of the
// same token with crypto/rsa, no parsing of claims, no checks.
func BenchmarkBareRS256(b *testing.B) {
	raw, pub := benchToken(b)
	i := strings.LastIndexByte(raw, '.')
	sig, err := base64.RawURLEncoding.DecodeString(raw[i+1:])
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		sum := sha256.Sum256([]byte(raw[:i]))
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJOSERS256 is the floor that go-jose (the JOSE library DESIGN.md names) sets under
// BenchmarkVerify: parsing the compact JWS and verifying its RS256 signature, no claims decoded and
// nothing checked. It differs from BenchmarkBareRS256 by the library's base64 and header JSON
// decoding and by its rebuilding of the signing input.
func BenchmarkJOSERS256(b *testing.B) {
	raw, pub := benchToken(b)
	b.ResetTimer()
	for b.Loop() {
		jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.RS256})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := jws.Verify(pub); err != nil {
			b.Fatal(err)
		}
	}
}

// benchToken returns a token of the emulator and the public key that signed it.
func benchToken(b *testing.B) (string, *rsa.PublicKey) {
	c := attesttest.New(b)
	raw := c.Token(b, "bench")
	keys, err := c.Keys.Keys(context.Background(), kidOf(b, raw))
	if err != nil || len(keys) == 0 {
		b.Fatal(err)
	}
	return raw, keys[0].Key.(*rsa.PublicKey)
}

func kidOf(b *testing.B, raw string) string {
	h, _, err := maa.ParseUnverified(raw)
	if err != nil {
		b.Fatal(err)
	}
	kid, _ := h["kid"].(string)
	return kid
}
