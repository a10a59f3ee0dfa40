package gate

import (
	"path/filepath"
	"testing"
)

func TestParseConfigKeyCache(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	tests := []struct {
		name    string
		setting *string
		want    string
	}{
		{"unset: the user's cache directory", nil, filepath.Join(cache, "attested-kv", "tpm")},
		{"off", ptr("off"), ""},
		{"a directory", ptr("/var/cache/build/tpm"), "/var/cache/build/tpm"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := map[string]string{KeyAttestationURL: "https://maa.example"}
			if tc.setting != nil {
				m[KeyKeyCache] = *tc.setting
			}
			c, err := ParseConfig(m)
			if err != nil {
				t.Fatal(err)
			}
			if c.KeyCacheDir != tc.want {
				t.Fatalf("KeyCacheDir = %q, want %q", c.KeyCacheDir, tc.want)
			}
		})
	}
}

func ptr(s string) *string { return &s }
