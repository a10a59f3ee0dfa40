package binding

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
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
		{"empty algorithm", ":0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", k, "", ErrInvalidInput},
		{"empty encoded part", "sha256:", k, "", ErrInvalidInput},
		{"newline in key", d, "k\nx", "", ErrInvalidInput},
		{"newline in digest", d + "\n", k, "", ErrInvalidInput},
		// Other spellings of k would bind another key id: refused, naming the canonical one.
		{"trailing slash", d, k + "/", "", ErrInvalidInput},
		{"upper-case host", d, "https://V.vault.azure.net/keys/k/1", "", ErrInvalidInput},
		{"default port", d, "https://v.vault.azure.net:443/keys/k/1", "", ErrInvalidInput},
		{"upper-case scheme", d, "HTTPS://v.vault.azure.net/keys/k/1", "", ErrInvalidInput},
		{"empty query", d, k + "?", "", ErrInvalidInput},
		{"empty fragment", d, k + "#", "", ErrInvalidInput},
		{"fully qualified host", d, "https://v.vault.azure.net./keys/k/1", "", ErrInvalidInput},
		{"fully qualified host, default port", d, "https://v.vault.azure.net.:443/keys/k/1", "", ErrInvalidInput},
		{"other port kept", d, "https://127.0.0.1:8443/keys/k/1", hexOf("attested-kv/v1\n" + d + "\nhttps://127.0.0.1:8443/keys/k/1"), nil},
		{"IPv6 loopback kept", d, "https://[::1]:8443/keys/k/1", hexOf("attested-kv/v1\n" + d + "\nhttps://[::1]:8443/keys/k/1"), nil},
		{"not a URL", d, "test-key", hexOf("attested-kv/v1\n" + d + "\ntest-key"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Compute(tt.digest, tt.key)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err != nil && tt.key != "" && !strings.ContainsAny(tt.key, "\n") && tt.digest == d && !strings.Contains(err.Error(), `give it as "`+k+`"`) {
				t.Fatalf("err = %v, want it to name the canonical key id %s", err, k)
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

func hexOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestCheckKeyID: verifiers refuse at configuration what Compute would refuse per image.
func TestCheckKeyID(t *testing.T) {
	for _, tt := range []struct {
		key string
		ok  bool
	}{
		{"https://v.vault.azure.net/keys/k/1", true},
		{"https://127.0.0.1:8443/keys/k/1", true},
		{"test-key", true},
		{"", false},
		{"https://v.vault.azure.net/keys/k/1\n", false},
		{"https://v.vault.azure.net/keys/k/1\r", false},
		{"https://v.vault.azure.net/keys/k/1#%6B", false},
		{"https://v.vault.azure.net/keys/k/1/", false},
		{"https://V.vault.azure.net/keys/k/1", false},
		{"https://v.vault.azure.net/keys/k/1?", false},
		{"https://v.vault.azure.net:/keys/k/1", false},
		{"https://v.vault.azure.net:0443/keys/k/1", false},
		{"https://127.0.0.1:08443/keys/k/1", false},
		{"https://[::1]:443/keys/k/1", false},
		{"https://[::1]:8443/keys/k/1", true},
		{"https://[::1]/keys/k/1", true},
	} {
		err := CheckKeyID(tt.key)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalidInput)) {
			t.Errorf("CheckKeyID(%q) = %v, want ok=%v", tt.key, err, tt.ok)
		}
	}
}
