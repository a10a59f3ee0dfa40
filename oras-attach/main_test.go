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
