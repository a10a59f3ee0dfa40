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
