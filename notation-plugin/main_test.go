package main

import (
	"strings"
	"testing"
)

// TestForPeople: without arguments the plugin prints its usage on stderr and exits 2, where the
// plugin framework printed "Invalid command, ..." without a newline or a pointer to --help; help
// is the usage on stdout; a plugin command is left to the framework.
func TestForPeople(t *testing.T) {
	tests := []struct {
		args           []string
		code           int
		done           bool
		stdout, stderr string
	}{
		{nil, 2, true, "", usage},
		{[]string{"--help"}, 0, true, usage, ""},
		{[]string{"-h"}, 0, true, usage, ""},
		{[]string{"help"}, 0, true, usage, ""},
		{[]string{"get-plugin-metadata"}, 0, false, "", ""},
		{[]string{"generate-envelope"}, 0, false, "", ""},
		{[]string{"describe-key"}, 0, false, "", ""}, // the framework refuses it: not a capability of this plugin
		{[]string{"bogus"}, 2, true, "", "notation-attested-kv: unknown command \"bogus\": Notation runs this plugin with get-plugin-metadata, generate-envelope or version (see --help)\n"},
		{[]string{"--version"}, 2, true, "", "notation-attested-kv: unknown command \"--version\": Notation runs this plugin with get-plugin-metadata, generate-envelope or version (see --help)\n"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var o, e strings.Builder
			code, done := forPeople(tc.args, &o, &e)
			if code != tc.code || done != tc.done || o.String() != tc.stdout || e.String() != tc.stderr {
				t.Fatalf("forPeople(%q) = %d, %v, stdout %q, stderr %q; want %d, %v, stdout %q, stderr %q", tc.args, code, done, o.String(), e.String(), tc.code, tc.done, tc.stdout, tc.stderr)
			}
		})
	}
	if !strings.HasSuffix(usage, "\n") || !strings.Contains(usage, "Commands: get-plugin-metadata, generate-envelope, version.") {
		t.Errorf("usage does not end with a newline or list the commands:\n%s", usage)
	}
}
