//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// leakPatterns are what no output may hold at the default level, whatever the secret's value:
// a compact JWS with a JSON header and claims (MAA's tokens, Entra ID's access tokens, whatever
// their header's order) or its claims alone, a PEM private key, a JWK's private exponent, an OAuth token field.
var leakPatterns = map[string]*regexp.Regexp{
	"a JWT":              regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.`),
	"a token's claims":   regexp.MustCompile(`eyJ[A-Za-z0-9_-]{200,}`), // base64url of a long JSON object
	"a PEM private key":  regexp.MustCompile(`-----BEGIN [A-Z ]*PRIVATE KEY-----`),
	"a JWK private part": regexp.MustCompile(`"(d|p|q|dp|dq|qi)"\s*:\s*"[A-Za-z0-9_-]{16,}"`),
	"an OAuth token":     regexp.MustCompile(`"(access_token|refresh_token)"`),
}

// checkNoSecrets fails t if outputs hold any of secrets (each token also by each of its three
// parts: a token's claims or signature printed alone are as much a leak) or any leak pattern.
func checkNoSecrets(t *testing.T, outputs string, secrets []string) {
	t.Helper()
	var all []string
	for _, s := range secrets {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		all = append(all, s)
		if parts := strings.Split(s, "."); len(parts) == 3 {
			for _, p := range parts[1:] { // the header alone names only the algorithm and key
				if len(p) >= 16 {
					all = append(all, p)
				}
			}
		}
	}
	for _, s := range all {
		if strings.Contains(outputs, s) {
			t.Errorf("a secret (%d bytes, starting %.6q) appears in the outputs", len(s), s)
		}
	}
	for what, re := range leakPatterns {
		if m := re.FindString(outputs); m != "" {
			t.Errorf("%s appears in the outputs (%.24s...)", what, m)
		}
	}
}

// storedTokens returns the tokens in the token store dir.
func storedTokens(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.HasSuffix(p, ".jwt") {
			b, _ := os.ReadFile(p)
			out = append(out, string(b))
		}
		return nil
	})
	return out
}

// TestDemoOutputsHoldNoSecret runs the demo (scripts/demo.sh, which make demo runs) and checks
// everything it printed, the plugin's log and the stack's log for the tokens it made, the
// emulated tenant's secrets and anything shaped like a token or a private key.
func TestDemoOutputsHoldNoSecret(t *testing.T) {
	r := newRunner(t)
	r.need("notation", "oras", "oras-attest", "attest-bootstrap", "notation-attested-kv")
	state := filepath.Join(t.TempDir(), "state")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(root, "scripts", "demo.sh"))
	cmd.Env = append(os.Environ(), "ATTEST_DEMO_STATE="+state, "ATTEST_BIN="+r.bin, "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	t.Cleanup(func() {
		exec.Command(filepath.Join(r.bin, "attest-bootstrap"), "local", "down", "--state", state).Run()
	})
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Successfully signed") {
		t.Fatalf("the demo signed nothing:\n%s", out)
	}
	outputs := string(out)
	for _, f := range []string{"plugin.log", "stack.log"} {
		b, err := os.ReadFile(filepath.Join(state, f))
		if err != nil {
			t.Fatal(err)
		}
		outputs += string(b)
	}
	// The tenant's secrets, as the stack keeps them in its state (0600).
	var secrets []string
	files, _ := filepath.Glob(filepath.Join(state, "*.json"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		var m map[string]any
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		for k, v := range m {
			if s, ok := v.(string); ok && strings.Contains(strings.ToLower(k), "secret") {
				secrets = append(secrets, s)
			}
		}
	}
	if len(secrets) == 0 {
		t.Fatalf("no secret found in the state's files %v: the check would prove nothing", files)
	}
	tokens := storedTokens(t, state)
	if len(tokens) == 0 {
		t.Fatal("no token stored under the state directory: the check would prove nothing")
	}
	checkNoSecrets(t, outputs, append(secrets, tokens...))
}
