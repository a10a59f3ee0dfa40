package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/attested-kv/attested-kv/internal/localstack"
)

// TestWriteStatus: a component that does not answer is marked DOWN, and the command that brings
// it back follows on its own line.
func TestWriteStatus(t *testing.T) {
	st := &localstack.State{PID: 42, StartedAt: time.Unix(0, 0)}
	comps := []localstack.ComponentStatus{
		{Name: "MAA emulator", Address: "https://127.0.0.1:1/certs", OK: true, Detail: "200 OK"},
		{Name: "TPM simulator", Address: "127.0.0.1:2", Detail: "does not answer TPM commands: reading a response: EOF", Hint: "attest-bootstrap local tpm start --state '/s'"},
	}
	var b strings.Builder
	writeStatus(&b, st, "/s", comps)
	lines := strings.Split(b.String(), "\n")
	if len(lines) < 4 || !strings.HasPrefix(lines[2], "  DOWN TPM simulator") || strings.TrimSpace(lines[3]) != "to bring it back: attest-bootstrap local tpm start --state '/s'" {
		t.Errorf("status:\n%s", b.String())
	}
}

// TestStatusHelp: status's help gives its exit codes.
func TestStatusHelp(t *testing.T) {
	var o, e strings.Builder
	run(context.Background(), []string{"local", "status", "--help"}, &o, &e)
	for _, w := range []string{"Exit status:", "0  the stack runs and every component answers", "1  the stack runs, but a component does not answer", "3  the stack is not running"} {
		if !strings.Contains(o.String(), w) {
			t.Errorf("no %q in:\n%s", w, o.String())
		}
	}
}
