package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigFileStrict: a config file key that is not a setting (such as a flag's spelling of one)
// is a usage error naming it, not a setting silently dropped; the settings' own keys are read.
func TestConfigFileStrict(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		code       int
		stderr     string
	}{
		{"flag spelling", "subscriptionId: s\npurge-protection: true\n", 2, "purge-protection"},
		{"unknown nested key", "buildLayer:\n  artifacts-url: https://x\n", 2, "artifacts-url"},
		// Read, then refused by validation for what is missing: the keys were taken.
		{"the settings' keys", "subscriptionId: s\ntenantId: t\npurgeProtection: true\nbuildLayer:\n  vmSize: x\n", 2, "resource"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "cfg.yaml")
			if err := os.WriteFile(p, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			var o, e strings.Builder
			code := runAzure(context.Background(), "plan", []string{"--config", p}, &o, &e)
			if code != tc.code || !strings.Contains(e.String(), tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, e.String(), tc.code, tc.stderr)
			}
			if tc.stderr != "resource" && !strings.Contains(e.String(), "unknown field") {
				t.Errorf("the error does not say the key is unknown: %s", e.String())
			}
		})
	}
}
