package main

import (
	"context"
	"strings"
	"testing"
)

// TestUnknownFlag: every command refuses a flag it does not know as a usage error (exit 2) that
// names the command and the flag on stderr, followed by the command's usage; nothing goes to
// stdout and nothing starts. (pflag v1.1.0 with ContinueOnError prints nothing itself.)
func TestUnknownFlag(t *testing.T) {
	state := t.TempDir()
	for _, cmd := range [][]string{
		{"plan"}, {"apply"}, {"destroy"},
		{"local", "up"}, {"local", "env"}, {"local", "status"}, {"local", "down"}, {"local", "tpm", "stop"},
	} {
		name := strings.Join(cmd, " ")
		t.Run(name, func(t *testing.T) {
			args := append(append([]string{}, cmd...), "--state", state, "--bogus")
			if cmd[0] != "local" {
				args = append(append([]string{}, cmd...), "--bogus")
			}
			if cmd[0] == "local" && len(cmd) == 3 {
				name = "local tpm"
			}
			var o, e strings.Builder
			code := run(context.Background(), args, &o, &e)
			want := "attest-bootstrap " + name + ": unknown flag: --bogus\n"
			if code != 2 || !strings.HasPrefix(e.String(), want) || !strings.Contains(e.String(), "Usage:") {
				t.Errorf("exit %d, stderr %q; want 2 and %q then the usage", code, e.String(), want)
			}
			if o.Len() != 0 {
				t.Errorf("stdout: %q", o.String())
			}
		})
	}
}
