package main

import (
	"context"
	"regexp"
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

// TestHelp: --help (and -h, and `local help`) is answered on stdout with exit 0, for every
// command; `local --help` lists the local commands; each command's help lists its own flags and
// only those, and a flag another command reads is refused as unknown.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		want, not []string
	}{
		{[]string{"--help"}, []string{"attest-bootstrap local COMMAND --help"}, nil},
		{[]string{"local", "--help"}, []string{"Commands:", "\n  up ", "\n  env ", "\n  status ", "\n  down ", "\n  tpm "}, []string{"serve"}},
		{[]string{"local", "-h"}, []string{"Commands:"}, nil},
		{[]string{"local", "help"}, []string{"Commands:"}, nil},
		{[]string{"local", "up", "--help"}, []string{"Usage: attest-bootstrap local up", "--state", "--debug"}, []string{"--output"}},
		{[]string{"local", "env", "-h"}, []string{"Usage: attest-bootstrap local env", "--state", "--output"}, []string{"--debug"}},
		{[]string{"local", "status", "--help"}, []string{"Usage: attest-bootstrap local status", "--state", "--output"}, []string{"--debug"}},
		{[]string{"local", "down", "--help"}, []string{"Usage: attest-bootstrap local down", "--state"}, []string{"--output", "--debug"}},
		{[]string{"local", "tpm", "--help"}, []string{"Usage: attest-bootstrap local tpm stop|start", "--state"}, []string{"--output", "--debug"}},
		{[]string{"plan", "--help"}, []string{"Usage: attest-bootstrap plan", "--subscription", "--operator-object-id", "--hsm", "--image-builder", "--artifacts-url", "--timeout", "--cluster-principal-id"},
			[]string{"--purge", "--replicas", "--outputs", "--notation-config", "--run-image-build", "--operator-type"}},
		{[]string{"apply", "--help"}, []string{"Usage: attest-bootstrap apply", "--subscription", "--hsm", "--purge-protection", "--replicas", "--outputs", "--notation-config", "--cluster-principal-id", "--run-image-build", "--operator-type"},
			[]string{"--purge"}},
		{[]string{"destroy", "-h"}, []string{"Usage: attest-bootstrap destroy", "--subscription", "--operator-object-id", "--purge"},
			[]string{"--hsm", "--image-builder", "--replicas", "--outputs", "--purge-protection"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var o, e strings.Builder
			code := run(context.Background(), tc.args, &o, &e)
			if code != 0 || e.Len() != 0 {
				t.Fatalf("exit %d, stderr %q; want 0 and nothing", code, e.String())
			}
			// A flag is listed at the start of a line of the flags table.
			has := func(s string) bool {
				if strings.HasPrefix(s, "-") {
					return regexp.MustCompile(`(?m)^ +(-[a-z], )?` + regexp.QuoteMeta(s) + `[ \[]`).MatchString(o.String())
				}
				return strings.Contains(o.String(), s)
			}
			for _, w := range tc.want {
				if !has(w) {
					t.Errorf("the help does not have %q:\n%s", w, o.String())
				}
			}
			for _, n := range tc.not {
				if has(n) {
					t.Errorf("the help has %q:\n%s", n, o.String())
				}
			}
		})
	}
	// What a command does not read, it does not accept.
	for _, args := range [][]string{
		{"destroy", "--hsm"}, {"plan", "--purge"}, {"plan", "--replicas", "x"}, {"local", "down", "-o", "json"}, {"local", "status", "--debug"},
	} {
		var o, e strings.Builder
		if code := run(context.Background(), args, &o, &e); code != 2 || !strings.Contains(e.String(), "unknown") {
			t.Errorf("%v: exit %d, stderr %q; want 2 and the flag refused", args, code, e.String())
		}
	}
	// Nor operands it has none of.
	for _, args := range [][]string{{"local", "up", "now"}, {"local", "tpm", "pause"}} {
		var o, e strings.Builder
		if code := run(context.Background(), args, &o, &e); code != 2 || !strings.Contains(e.String(), "Usage: attest-bootstrap local "+args[1]) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and the usage", args, code, e.String())
		}
	}
}
