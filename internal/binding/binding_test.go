package binding

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
)

func TestCompute(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	const k = "https://v.vault.azure.net/keys/k/1"
	sum := sha256.Sum256([]byte("attested-kv/v1\n" + d + "\n" + k))
	want := hex.EncodeToString(sum[:])
	tests := []struct {
		name, digest, key, want string
		err                     error
	}{
		{"ok", d, k, want, nil},
		{"empty digest", "", k, "", ErrInvalidInput},
		{"empty key", d, "", "", ErrInvalidInput},
		{"no algorithm", "abc", k, "", ErrInvalidInput},
		{"newline in key", d, "k\nx", "", ErrInvalidInput},
		{"newline in digest", d + "\n", k, "", ErrInvalidInput},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Compute(tt.digest, tt.key)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	// Different keys or digests must give different bindings.
	a, _ := Compute(d, k)
	b, _ := Compute(d, k+"x")
	if a == b {
		t.Fatal("binding does not depend on the key id")
	}
}
