package tpm

import (
	"context"
	"testing"
)

// BenchmarkEvidence measures evidence gathering on the reference TPM simulator: AK and
// certificate reads, PCR reads, the quote, and the ephemeral key's creation and certification.
func BenchmarkEvidence(b *testing.B) {
	_, dev, _ := provisioned(b, "")
	ctx := context.Background()
	for b.Loop() {
		if _, err := dev.Evidence(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEvidenceCached is BenchmarkEvidence with the ephemeral key cache, as the plugin runs:
// the key's saved context is loaded instead of deriving the key.
func BenchmarkEvidenceCached(b *testing.B) {
	x, _, _ := provisioned(b, "")
	dev := New(x.t, WithEventLogPath(""), WithEphemeralKeyCache(b.TempDir()))
	ctx := context.Background()
	for b.Loop() {
		if _, err := dev.Evidence(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
