package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/imageverify"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// issued is a token from the MAA emulator, with what verifying it offline takes.
type issued struct {
	url   string // the emulator's instance URL, the token's iss
	token string // token file
	jwks  string // the instance's /certs, as a JWKS file
}

// issue attests nonce with a TPM simulator and the MAA emulator on loopback (attesttest.New)
// and writes the token and the instance's keys to files. The chain lives in a subtest: the
// simulator is one per process, and the token verifies offline (--jwks) once it is gone.
func issue(t *testing.T, name, nonce string, opts ...attesttest.Option) issued {
	t.Helper()
	dir := t.TempDir()
	out := issued{token: filepath.Join(dir, "token.jwt"), jwks: filepath.Join(dir, "jwks.json")}
	if !t.Run("issue "+name, func(t *testing.T) {
		chain := attesttest.New(t, opts...)
		out.url = chain.URL
		if err := os.WriteFile(out.token, []byte(chain.Token(t, nonce)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out.jwks, chain.Emulator.JWKS(), 0o600); err != nil {
			t.Fatal(err)
		}
	}) {
		t.FailNow()
	}
	return out
}

func writeRules(t *testing.T, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rules.cel")
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func runCmd(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), &o, &e)
	return code, o.String(), e.String()
}

func TestTokenVerifyRules(t *testing.T) {
	const nonce = "N-rules"
	// A healthy Trusted Launch VM: Secure Boot on, db and dbx measured.
	healthy := issue(t, "secure boot", nonce, attesttest.WithSecureBoot())
	// No event log: the emulator issues secureboot, dbvalidated and dbxvalidated false.
	insecure := issue(t, "no secure boot", nonce)

	failing := writeRules(t, "attestation-type: claims[\"x-ms-attestation-type\"] == \"azurevm\"\nfail: claims[\"secureboot\"] == false\n")
	missing := writeRules(t, "absent-claim: claims[\"x-ms-no-such-claim\"] == true\n")
	lenient := writeRules(t, "attestation-type: claims[\"x-ms-attestation-type\"] == \"azurevm\"\n")
	anyVM := writeRules(t, "some-vm: claims[\"x-ms-azurevm-vmid\"] != \"\"\n")
	syntax := writeRules(t, "this is not a rule\n")
	notBool := writeRules(t, "not-bool: 1 + 1\n")

	verify := func(tok issued, extra ...string) []string {
		return append([]string{"token", "verify", tok.token, "--attestation-url", tok.url, "--jwks", tok.jwks, "--nonce", nonce}, extra...)
	}
	tests := []struct {
		name      string
		args      []string
		code      int
		stdout    []string // substrings stdout must hold
		notStdout []string // substrings it must not hold
		stderr    string
	}{
		{
			name: "baseline passes a healthy token",
			args: verify(healthy),
			code: 0,
			stdout: []string{"ok   signature\n", "ok   nonce\n", "ok   rule secure-boot\n", "ok   rule no-kernel-debug\n", "ok   rule pcrs-0-7-attested\n", "claim rules of baseline.cel passed",
				"note: no rule reads x-ms-azurevm-vmid: a token of any Trusted Launch VM that asks the instance passes them"},
		},
		{
			name:      "rules that read the VM id: no note",
			args:      verify(healthy, "--rules", anyVM),
			code:      0,
			stdout:    []string{"ok   rule some-vm\n", "1 claim rules of " + anyVM + " passed"},
			notStdout: []string{"note:"},
		},
		{
			name: "baseline refuses a token without secure boot, naming each failed rule",
			args: verify(insecure),
			code: 1,
			stdout: []string{
				"ok   signature\n", "ok   rule attestation-type\n",
				"FAIL rule secure-boot: evaluated to false\n",
				// No log: nothing shows that no UEFI debugger ran, so the emulator claims one.
				"FAIL rule no-boot-debug: evaluated to false\n",
				"FAIL rule default-secureboot-keys: evaluated to false\n",
				"FAIL rule debuggers-disabled: evaluated to false\n",
				"FAIL rule db-validated: evaluated to false\n",
				"FAIL rule dbx-validated: evaluated to false\n",
				"ok   rule no-kernel-debug\n",
				"token REFUSED: 6 claim rules of baseline.cel failed: secure-boot, no-boot-debug, default-secureboot-keys, debuggers-disabled, db-validated, dbx-validated\n",
			},
			notStdout: []string{"token verified"},
		},
		{
			name:      "failing rule file",
			args:      verify(healthy, "--rules", failing),
			code:      1,
			stdout:    []string{"ok   rule attestation-type\n", "FAIL rule fail: evaluated to false\n", `token REFUSED: claim rule "fail" failed: evaluated to false`},
			notStdout: []string{"rule secure-boot", "token verified"},
		},
		{
			name:   "rule on a claim the token lacks",
			args:   verify(healthy, "--rules", missing),
			code:   1,
			stdout: []string{"FAIL rule absent-claim: evaluation error: no such key: x-ms-no-such-claim\n"},
		},
		{
			name:      "rule file replaces the baseline",
			args:      verify(insecure, "--rules", lenient),
			code:      0,
			stdout:    []string{"ok   rule attestation-type\n", "1 claim rules of " + lenient + " passed"},
			notStdout: []string{"secure-boot", "FAIL"},
		},
		{
			name:      "rules do not run on a token that does not verify",
			args:      append(verify(healthy), "--nonce", "another nonce"),
			code:      1,
			stdout:    []string{"ok   signature\n", "FAIL nonce\n", "token REFUSED"},
			notStdout: []string{"rule "},
		},
		{
			// Mutant killed: --max-age not passed to the verifier (the default 5m applied).
			name:      "token older than --max-age",
			args:      verify(healthy, "--max-age", "1ns"),
			code:      1,
			stdout:    []string{"ok   signature\n", "FAIL age\n", `token REFUSED: MAA token: check "age" failed`},
			notStdout: []string{"rule ", "token verified"},
		},
		{
			name:   "rule file with a syntax error",
			args:   verify(healthy, "--rules", syntax),
			code:   2,
			stderr: "oras-attest token verify: claim rules " + syntax + ":1: syntax error",
		},
		{
			name:   "rule that does not yield a bool",
			args:   verify(healthy, "--rules", notBool),
			code:   2,
			stderr: `rule "not-bool": expression is not a bool`,
		},
		{
			name:   "rule file that does not exist",
			args:   verify(healthy, "--rules", filepath.Join(t.TempDir(), "absent.cel")),
			code:   1,
			stderr: "oras-attest token verify: claim rules: open ",
		},
		{
			name:   "rule file is loaded before the token is read",
			args:   []string{"token", "verify", filepath.Join(t.TempDir(), "absent.jwt"), "--attestation-url", healthy.url, "--rules", syntax},
			code:   2,
			stderr: "syntax error",
		},
		{
			name:   "help describes --rules, on stdout",
			args:   []string{"token", "verify", "--help"},
			code:   0,
			stdout: []string{"--rules string             CEL claim rule file (default: the built-in baseline)"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			for _, s := range tc.stdout {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			for _, s := range tc.notStdout {
				if strings.Contains(stdout, s) {
					t.Errorf("stdout holds %q:\n%s", s, stdout)
				}
			}
			if !strings.Contains(stderr, tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, stderr)
			}
			if tc.code == 2 && stdout != "" {
				t.Errorf("a configuration error printed checks:\n%s", stdout)
			}
		})
	}
}

func TestTokenVerifyRulesJSON(t *testing.T) {
	const nonce = "N-json"
	insecure := issue(t, "no secure boot", nonce)
	failing := writeRules(t, "attestation-type: claims[\"x-ms-attestation-type\"] == \"azurevm\"\nfail: claims[\"secureboot\"] == true\n")

	tests := []struct {
		name       string
		rules      []string
		code       int
		verified   bool
		failed     []checkOutcome // the rule checks that failed, in order
		errText    string
		ruleSet    string
		ruleChecks int
	}{
		{
			name: "baseline", code: 1, ruleSet: "baseline.cel", ruleChecks: len(rules.Baseline().Rules()),
			failed: []checkOutcome{
				{Check: checkRule, Rule: "secure-boot", Reason: "evaluated to false"},
				{Check: checkRule, Rule: "no-boot-debug", Reason: "evaluated to false"},
				{Check: checkRule, Rule: "default-secureboot-keys", Reason: "evaluated to false"},
				{Check: checkRule, Rule: "debuggers-disabled", Reason: "evaluated to false"},
				{Check: checkRule, Rule: "db-validated", Reason: "evaluated to false"},
				{Check: checkRule, Rule: "dbx-validated", Reason: "evaluated to false"},
			},
			errText: "6 claim rules of baseline.cel failed: secure-boot, no-boot-debug, default-secureboot-keys, debuggers-disabled, db-validated, dbx-validated",
		},
		{
			name: "rule file", rules: []string{"--rules", failing}, code: 1, ruleSet: failing, ruleChecks: 2,
			failed:  []checkOutcome{{Check: checkRule, Rule: "fail", Reason: "evaluated to false"}},
			errText: `claim rule "fail" failed: evaluated to false`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"token", "verify", insecure.token, "--attestation-url", insecure.url, "--jwks", insecure.jwks, "--nonce", nonce, "-o", "json"}, tc.rules...)
			code, stdout, stderr := runCmd(args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			var res verifyResult
			if err := json.Unmarshal([]byte(stdout), &res); err != nil {
				t.Fatalf("%v: %s", err, stdout)
			}
			if res.Verified != tc.verified || res.FailedCheck != checkRule || res.Error != tc.errText || res.RuleSet != tc.ruleSet || !strings.HasPrefix(res.RuleSetDigest, "sha256:") {
				t.Errorf("result %+v", res)
			}
			var failed []checkOutcome
			rulesSeen := 0
			for _, c := range res.Checks {
				if c.Check != checkRule {
					if !c.Passed {
						t.Errorf("check %q failed", c.Check)
					}
					continue
				}
				rulesSeen++
				if !c.Passed {
					failed = append(failed, c)
				} else if c.Reason != "" {
					t.Errorf("passed rule %q has a reason %q", c.Rule, c.Reason)
				}
			}
			if rulesSeen != tc.ruleChecks || len(failed) != len(tc.failed) {
				t.Fatalf("%d rule checks, failed %+v; want %d, %+v", rulesSeen, failed, tc.ruleChecks, tc.failed)
			}
			for i := range failed {
				if failed[i] != tc.failed[i] {
					t.Errorf("failed rule %d: %+v, want %+v", i, failed[i], tc.failed[i])
				}
			}
		})
	}
}

// TestTokenVerifyJSONNotes: a verified token's JSON result carries the unpinned-VM note, as the
// text does, while the rules read no VM id; rules that read it leave no note.
func TestTokenVerifyJSONNotes(t *testing.T) {
	const nonce = "N-notes"
	healthy := issue(t, "secure boot", nonce, attesttest.WithSecureBoot())
	anyVM := writeRules(t, "some-vm: claims[\"x-ms-azurevm-vmid\"] != \"\"\n")
	for _, tc := range []struct {
		name  string
		rules []string
		notes []string
	}{
		{"baseline", nil, []string{imageverify.UnpinnedVM}},
		{"rules reading the VM id", []string{"--rules", anyVM}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"token", "verify", healthy.token, "--attestation-url", healthy.url, "--jwks", healthy.jwks, "--nonce", nonce, "-o", "json"}, tc.rules...)
			code, stdout, stderr := runCmd(args...)
			var res verifyResult
			if err := json.Unmarshal([]byte(stdout), &res); code != 0 || err != nil || !res.Verified {
				t.Fatalf("exit %d, %v: %s %s", code, err, stdout, stderr)
			}
			if !slices.Equal(res.Notes, tc.notes) {
				t.Fatalf("notes %q, want %q", res.Notes, tc.notes)
			}
		})
	}
}
