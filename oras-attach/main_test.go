package main

import (
	"strings"
	"testing"
)

// TestFlagErrors: an unknown flag, a flag without its value and a value that does not parse are
// named on stderr, before the command's usage, with exit 2, in every command.
func TestFlagErrors(t *testing.T) {
	img := "localhost:1/app@sha256:" + zeros
	tests := []struct {
		cmd  []string
		args []string
		want string
	}{
		{[]string{"token", "fetch"}, []string{"--bogus", "x", "--nonce", "n"}, "unknown flag: --bogus"},
		{[]string{"token", "fetch"}, []string{"--timeout", "abc", "--nonce", "n"}, `invalid argument "abc" for "--timeout" flag`},
		{[]string{"token", "fetch"}, []string{"--nonce"}, "flag needs an argument: --nonce"},
		{[]string{"token", "verify"}, []string{"t.jwt", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"token", "verify"}, []string{"t.jwt", "--max-age", "5"}, `invalid argument "5" for "--max-age" flag`},
		{[]string{"token", "show"}, []string{"t.jwt", "-x"}, "unknown shorthand flag: 'x' in -x"},
		{[]string{"token", "show"}, []string{"t.jwt", "-o"}, "flag needs an argument: 'o' in -o"},
		{[]string{"token", "prune"}, []string{"--older-than", "1month"}, `invalid argument "1month" for "--older-than" flag`},
		{[]string{"token", "prune"}, []string{"--older-than"}, "flag needs an argument: --older-than"},
		{[]string{"token", "prune"}, []string{"--older-than", "24h", "--dry-run=perhaps"}, `invalid argument "perhaps" for "--dry-run" flag`},
		{[]string{"attach"}, []string{img, "--bogus", "x"}, "unknown flag: --bogus"},
		{[]string{"attach"}, []string{img, "--timeout", "soon"}, `invalid argument "soon" for "--timeout" flag`},
		{[]string{"verify"}, []string{img, "--bogus", "x"}, "unknown flag: --bogus"},
		{[]string{"verify"}, []string{img, "--max-age", "abc"}, `invalid argument "abc" for "--max-age" flag`},
		{[]string{"verify"}, []string{img, "--plain-http=maybe"}, `invalid argument "maybe" for "--plain-http" flag`},
		{[]string{"rules", "test"}, []string{"--bogus"}, "unknown flag: --bogus"},
		{[]string{"rules", "test"}, []string{"--rules"}, "flag needs an argument: --rules"},
	}
	for _, tc := range tests {
		name := strings.Join(append(append([]string{}, tc.cmd...), tc.args...), " ")
		t.Run(name, func(t *testing.T) {
			code, stdout, stderr := runCmd(append(tc.cmd, tc.args...)...)
			prefix := "oras-attest " + strings.Join(tc.cmd, " ") + ": " + tc.want
			if code != 2 || !strings.HasPrefix(stderr, prefix) || stdout != "" {
				t.Fatalf("exit %d, stdout %q, stderr:\n%s\nwant 2, nothing on stdout, stderr starting %q", code, stdout, stderr, prefix)
			}
			if !strings.Contains(stderr, "\n\nUsage: oras-attest "+strings.Join(tc.cmd, " ")) || !strings.Contains(stderr, "Flags:\n") {
				t.Errorf("stderr lacks the usage after the error:\n%s", stderr)
			}
		})
	}
}

// TestDurationFlags: a --max-age or --timeout that is not above 0 is a usage error naming the
// flag (exit 2), in every command that takes it, before a TPM, MAA or a registry is asked:
// verify reported imageverify's "MaxTokenAge ... required" (exit 1), token verify the verifier's
// "MaxAge must be positive", and token fetch --timeout 0 blamed the TPM.
func TestDurationFlags(t *testing.T) {
	img := "localhost:1/app@sha256:" + zeros
	const url = "https://x.weu.attest.azure.net"
	fetch := []string{"token", "fetch", "--attestation-url", url, "--nonce", "n", "--tpm", "unix:/nonexistent"}
	tverify := []string{"token", "verify", "t.jwt", "--attestation-url", url}
	verify := []string{"verify", img, "--attestation-url", url, "--key-id", "https://v.vault.azure.net/keys/k/1"}
	attach := []string{"attach", img}
	prune := []string{"token", "prune", "--token-dir", t.TempDir()}
	tests := []struct {
		args []string
		want string
	}{
		{append(fetch, "--max-age", "0"), "oras-attest token fetch: --max-age 0s: want a duration above 0, such as 5m0s"},
		{append(fetch, "--timeout", "0"), "oras-attest token fetch: --timeout 0s: want a duration above 0, such as 2m0s"},
		{append(tverify, "--max-age", "0"), "oras-attest token verify: --max-age 0s: want a duration above 0, such as 5m0s"},
		{append(tverify, "--max-age", "-1m"), "oras-attest token verify: --max-age -1m0s: want a duration above 0"},
		{append(tverify, "--timeout", "0"), "oras-attest token verify: --timeout 0s: want a duration above 0, such as 30s"},
		{append(verify, "--max-age", "0"), "oras-attest verify: --max-age 0s: want a duration above 0, such as 5m0s"},
		{append(verify, "--max-age", "61m"), "oras-attest verify: --max-age 1h1m0s: at most 1h0m0s, the oldest token the plugin signs with"},
		{append(verify, "--timeout", "0"), "oras-attest verify: --timeout 0s: want a duration above 0, such as 2m0s"},
		{append(attach, "--timeout", "-5s"), "oras-attest attach: --timeout -5s: want a duration above 0, such as 2m0s"},
		{[]string{"verify", "localhost:1/app@", "--attestation-url", url, "--key-id", "https://v.vault.azure.net/keys/k/1"}, `oras-attest verify: "localhost:1/app@": the digest after @ is not one`},
		{[]string{"attach", "localhost:1/app@sha256:abc"}, `oras-attest attach: "localhost:1/app@sha256:abc": the digest after @ is not one`},
		{append(prune, "--older-than", "0"), "oras-attest token prune: --older-than 0s: want 1h0m0s or more"},
		{append(prune, "--older-than", "30m"), "oras-attest token prune: --older-than 30m0s: want 1h0m0s or more"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCmd(tc.args...)
			if code != 2 || !strings.HasPrefix(stderr, tc.want) || stdout != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 2 and %q", code, stdout, stderr, tc.want)
			}
		})
	}
}

// TestCommandGroups: "oras-attest token" and "oras-attest rules" without a subcommand, or with
// one that does not exist, say so and list the group's subcommands (exit 2); --help lists them
// on stdout.
func TestCommandGroups(t *testing.T) {
	tests := []struct {
		args   []string
		code   int
		stdout string
		stderr string
		lists  string // a synopsis the group's usage holds
	}{
		{[]string{"token"}, 2, "", "oras-attest token: missing subcommand (fetch, verify, show or prune)\n\nUsage:\n", "oras-attest token prune  --older-than DURATION"},
		{[]string{"rules"}, 2, "", "oras-attest rules: missing subcommand (test or pin-vm)\n\nUsage:\n", "oras-attest rules pin-vm --vm-id ID"},
		{[]string{"token", "list"}, 2, "", "oras-attest: unknown command \"token list\"\n\nUsage:\n", "oras-attest token fetch "},
		{[]string{"rules", "check"}, 2, "", "oras-attest: unknown command \"rules check\"\n\nUsage:\n", "oras-attest rules test "},
		{[]string{"token", "--help"}, 0, "Usage:\n", "", "oras-attest token verify FILE|-"},
		{[]string{"rules", "help"}, 0, "Usage:\n", "", "oras-attest rules test "},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCmd(tc.args...)
			out := stderr
			if tc.code == 0 {
				out = stdout
			}
			if code != tc.code || !strings.HasPrefix(stdout, tc.stdout) || !strings.HasPrefix(stderr, tc.stderr) || !strings.Contains(out, tc.lists) {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s\nwant %d, stdout starting %q, stderr starting %q, listing %q", code, stdout, stderr, tc.code, tc.stdout, tc.stderr, tc.lists)
			}
			if strings.Contains(out, "Environment defaults") {
				t.Errorf("the top-level usage instead of the group's:\n%s", out)
			}
			if tc.code == 2 && stdout != "" {
				t.Errorf("stdout %q", stdout)
			}
		})
	}
}

// TestUsageErrorsNameTheSetting: token verify and token show name what is missing or wrong,
// then print their full usage (flags included), where they printed a bare synopsis.
func TestUsageErrorsNameTheSetting(t *testing.T) {
	t.Setenv("ATTEST_URL", "")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"token", "verify", "t.jwt"}, "oras-attest token verify: --attestation-url or ATTEST_URL is required\n"},
		{[]string{"token", "verify", "--attestation-url", "https://x.weu.attest.azure.net"}, "oras-attest token verify: want one token file (FILE, or - for stdin)\n"},
		{[]string{"token", "verify", "t.jwt", "-o", "yaml"}, `oras-attest token verify: unknown output format "yaml" (want text or json)` + "\n"},
		{[]string{"token", "show"}, "oras-attest token show: want one token file (FILE, or - for stdin)\n"},
		{[]string{"token", "show", "a.jwt", "b.jwt"}, "oras-attest token show: want one token file (FILE, or - for stdin)\n"},
		{[]string{"token", "show", "t.jwt", "-o", "yaml"}, `oras-attest token show: unknown output format "yaml" (want text or json)` + "\n"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCmd(tc.args...)
			usage := "\nUsage: oras-attest " + strings.Join(tc.args[:2], " ") + " FILE|- "
			if code != 2 || stdout != "" || !strings.HasPrefix(stderr, tc.want) || !strings.Contains(stderr, usage) || !strings.Contains(stderr, "-o, --output string") {
				t.Fatalf("exit %d, stdout %q, stderr:\n%s\nwant 2, stderr starting %q, then the usage with its flags", code, stdout, stderr, tc.want)
			}
		})
	}
}

// TestHelpEnvironment: the top-level help lists each environment default the commands read.
func TestHelpEnvironment(t *testing.T) {
	code, stdout, _ := runCmd("--help")
	for _, env := range []string{"ATTEST_URL", "ATTEST_TPM", "ATTEST_TCG_LOG", "ATTEST_KEY_ID", "ATTEST_TOKEN_DIR", "NOTATION_CONFIG"} {
		if code != 0 || !strings.Contains(stdout, "\n  "+env+" ") {
			t.Errorf("exit %d, --help does not list %s:\n%s", code, env, stdout)
		}
	}
}
