package main

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/imageverify"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// writeFile writes content to name in a new temporary directory and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeJWKS writes a JWKS file of one RSA key, as MAA's /certs serves.
func writeJWKS(t *testing.T) string {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k.Public(), KeyID: "k", Algorithm: "RS256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "jwks.json", string(b))
}

// TestFileExitCodes: a file a flag names that cannot be read is a failure (exit 1), not a usage
// error; one that was read and holds something unusable stays a usage error (exit 2).
func TestFileExitCodes(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "absent")
	const url = "https://x.weu.attest.azure.net"
	img := "localhost:1/app@sha256:" + zeros
	verify := []string{"verify", img, "--attestation-url", url, "--key-id", "https://v.vault.azure.net/keys/k/1", "--trust-policy", skipPolicy(t)}
	token := writeFile(t, "t.jwt", "a.b.c")
	syntax := writeRules(t, "this is not a rule\n")
	claims := writeFile(t, "claims.json", "{}")
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"verify: trust policy absent", append(verify, "--trust-policy", absent), 1, "oras-attest verify: trust policy: open " + absent},
		{"verify: trust policy not JSON", append(verify, "--trust-policy", syntax), 2, "oras-attest verify: trust policy " + syntax},
		{"verify: rule file absent", append(verify, "--rules", absent), 1, "oras-attest verify: claim rules: open " + absent},
		{"verify: rule file with a syntax error", append(verify, "--rules", syntax), 2, "syntax error"},
		{"verify: JWKS file absent", append(verify, "--jwks", absent), 1, "oras-attest verify: JWKS file: open " + absent},
		{"verify: JWKS file not a JWKS", append(verify, "--jwks", syntax), 2, "oras-attest verify: JWKS file " + syntax},
		{"token verify: rule file absent", []string{"token", "verify", token, "--attestation-url", url, "--rules", absent}, 1, "oras-attest token verify: claim rules: open " + absent},
		{"token verify: JWKS file absent", []string{"token", "verify", token, "--attestation-url", url, "--jwks", absent}, 1, "oras-attest token verify: JWKS file: open " + absent},
		{"rules test: rule file absent", []string{"rules", "test", "--rules", absent, "--claims", claims}, 1, "oras-attest rules test: claim rules: open " + absent},
		{"rules test: claims absent", []string{"rules", "test", "--rules", "baseline", "--claims", absent}, 1, "oras-attest rules test: --claims: open " + absent},
		{"rules test: claims neither JSON nor a token", []string{"rules", "test", "--rules", "baseline", "--claims", syntax}, 2, "is neither a JSON claim set nor a token"},
		{"token fetch: os-release absent", []string{"token", "fetch", "--attestation-url", url, "--nonce", "n", "--os-release", absent}, 1, "oras-attest token fetch: --os-release: reading os-release: open " + absent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCmd(tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.stderr)
			}
		})
	}
}

// TestJSONErrors: with -o json, a failure that has no result to print prints {"error": ...} on
// stdout, with the message on stderr as in text; a refusal still prints its result, and a usage
// error prints nothing on stdout.
func TestJSONErrors(t *testing.T) {
	repo, name := attesttest.Registry(t)
	unsigned := attesttest.PushImage(t, repo, "unsigned")
	absent := filepath.Join(t.TempDir(), "absent")
	missing := name + "@sha256:" + zeros
	const url = "https://x.weu.attest.azure.net"
	verify := func(ref string, extra ...string) []string {
		return append([]string{"verify", ref, "-o", "json", "--attestation-url", url, "--key-id", "https://v.vault.azure.net/keys/k/1", "--jwks", writeJWKS(t), "--trust-policy", skipPolicy(t)}, extra...)
	}
	garbage := writeFile(t, "garbage.jwt", "garbage\n")
	shared := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o777); err != nil { // whatever the umask
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		args  []string
		error string // the JSON error; "" for none
	}{
		{"verify: image not found", verify(missing), "resolving " + missing + ": not found"},
		{"verify: trust policy absent", verify(missing, "--trust-policy", absent), "trust policy: open " + absent + ": no such file or directory"},
		{"attach: image not found", []string{"attach", missing, "-o", "json", "--token-dir", t.TempDir()}, "resolving " + missing + ": not found"},
		{"attach: token file absent", []string{"attach", missing, "-o", "json", "--token", absent}, "--token: open " + absent + ": no such file or directory"},
		{"token verify: token file absent", []string{"token", "verify", absent, "-o", "json", "--attestation-url", url}, "open " + absent + ": no such file or directory"},
		{"token show: not a token", []string{"token", "show", garbage, "-o", "json"}, `MAA token: check "format" failed: token has 1 dot-separated parts, a compact JWS has 3 (truncated or not a JWT?)`},
		{"token prune: store writable by others", []string{"token", "prune", "-o", "json", "--older-than", "24h", "--token-dir", shared}, "token store " + shared + " is writable by others (mode 0777): chmod go-w it, or choose another token_dir"},
		{"rules test: rule file absent", []string{"rules", "test", "-o", "json", "--rules", absent, "--claims", garbage}, "claim rules: open " + absent + ": no such file or directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(tc.args...)
			var got map[string]any
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatalf("exit %d, stdout %q (%v), stderr %q: want a JSON object", code, stdout, err, stderr)
			}
			if code != 1 || len(got) != 1 || got["error"] != tc.error || !strings.HasSuffix(stderr, ": "+tc.error+"\n") {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 1 and {\"error\": %q} on stdout and stderr", code, stdout, stderr, tc.error)
			}
		})
	}

	// A refusal prints the result, as before: no error object.
	code, stdout, stderr := runCmd(verify(name + "@" + unsigned.Digest.String())...)
	var res imageverify.Result
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || code != 1 || res.Passed || res.FailedCheck() != imageverify.CheckSignature || strings.Contains(stdout, `"error"`) || stderr != "" {
		t.Fatalf("refusal: exit %d, stdout %q (%v), stderr %q; want 1 and the result", code, stdout, err, stderr)
	}
	// A usage error prints nothing on stdout.
	if code, stdout, _ := runCmd("verify", missing, "-o", "json", "--timeout", "0"); code != 2 || stdout != "" {
		t.Fatalf("usage error: exit %d, stdout %q", code, stdout)
	}
}

// TestRulesTestJSON: rules test -o json names its result as the other commands do: passed, then
// each rule's name, line, passed and, for a failure only, reason.
func TestRulesTestJSON(t *testing.T) {
	rulesFile := writeRules(t, "ok: claims[\"a\"] == 1\nbad: claims[\"a\"] == 2\n")
	claims := writeFile(t, "claims.json", `{"a": 1}`)
	code, stdout, stderr := runCmd("rules", "test", "--rules", rulesFile, "--claims", claims, "-o", "json")
	if code != 1 {
		t.Fatalf("exit %d (%s), want 1: a rule failed", code, stderr)
	}
	var got struct {
		Passed *bool  `json:"passed"`
		Set    string `json:"set"`
		Digest string `json:"digest"`
		Rules  []map[string]any
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("%v in %s", err, stdout)
	}
	want := []map[string]any{
		{"name": "ok", "line": 1.0, "passed": true},
		{"name": "bad", "line": 2.0, "passed": false, "reason": "evaluated to false"},
	}
	if got.Passed == nil || *got.Passed || got.Set != rulesFile || !strings.HasPrefix(got.Digest, "sha256:") || !reflect.DeepEqual(got.Rules, want) {
		t.Fatalf("%s", stdout)
	}
}

// TestRulesPinVM: rules pin-vm adds to a rule file one rule admitting the given VM ids only (in
// upper case, as tokens carry them, whatever case they are given in); the result passes the
// pinned VM's claims and refuses another's. A malformed id, none, or a base file that already has
// the rule are usage errors.
func TestRulesPinVM(t *testing.T) {
	base := writeRules(t, "attestation-type: claims[\"x-ms-attestation-type\"] == \"azurevm\"\n")
	out := filepath.Join(t.TempDir(), "pinned.cel")
	code, _, stderr := runCmd("rules", "pin-vm", "--rules", base, "--vm-id", "7f3c2a9e-1b4d-4e8f-9a6b-2c5d8e1f0a3b", "--out", out)
	if code != 0 || !strings.Contains(stderr, "wrote "+out+" (2 rules") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, tc := range []struct {
		vmid string
		code int
	}{
		{"7F3C2A9E-1B4D-4E8F-9A6B-2C5D8E1F0A3B", 0},
		{"11111111-2222-3333-4444-555555555555", 1},
	} {
		claims := writeFile(t, "claims.json", `{"x-ms-attestation-type": "azurevm", "x-ms-azurevm-vmid": "`+tc.vmid+`"}`)
		if code, stdout, stderr := runCmd("rules", "test", "--rules", out, "--claims", claims); code != tc.code {
			t.Errorf("VM %s: exit %d, want %d\n%s%s", tc.vmid, code, tc.code, stdout, stderr)
		}
	}
	// The baseline by default, on standard output, every id once.
	code, stdout, _ := runCmd("rules", "pin-vm", "--vm-id", "7f3c2a9e-1b4d-4e8f-9a6b-2c5d8e1f0a3b", "--vm-id", "7F3C2A9E-1B4D-4E8F-9A6B-2C5D8E1F0A3B")
	if code != 0 || !strings.HasPrefix(stdout, string(rules.BaselineSource()[:40])) ||
		!strings.HasSuffix(stdout, `build-vms: claims["x-ms-azurevm-vmid"].upperAscii() in ["7F3C2A9E-1B4D-4E8F-9A6B-2C5D8E1F0A3B"]`+"\n") {
		t.Fatalf("exit %d:\n%s", code, stdout)
	}
	pinnedAlready := writeRules(t, "build-vms: true\n")
	for _, tc := range []struct {
		args []string
		says string
	}{
		{nil, "give each build VM's id with --vm-id"},
		{[]string{"--vm-id", "vm-1"}, `--vm-id "vm-1": want a VM id`},
		{[]string{"--vm-id", "7f3c2a9e-1b4d-4e8f-9a6b-2c5d8e1f0a3b", "--rules", pinnedAlready}, "first defined on line 1"},
	} {
		code, stdout, stderr := runCmd(append([]string{"rules", "pin-vm"}, tc.args...)...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, tc.says) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 saying %q", tc.args, code, stdout, stderr, tc.says)
		}
	}
}
