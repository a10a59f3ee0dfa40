package maa_test

import (
	"context"
	"testing"
	"time"

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
