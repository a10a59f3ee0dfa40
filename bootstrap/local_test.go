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

// TestStatusColumns: the addresses and the details of status start in one column whatever the
// length of the names ("Key Vault emulator" is the longest) and of the probed URLs.
func TestStatusColumns(t *testing.T) {
	comps := []localstack.ComponentStatus{
		{Name: "MAA emulator", Address: "https://127.0.0.1:1/certs", OK: true, Detail: "200 OK"},
		{Name: "TPM simulator", Address: "127.0.0.1:22", OK: true, Detail: "answers TPM commands"},
		{Name: "Entra ID emulator", Address: "https://127.0.0.1:333/0b1c/v2.0/.well-known/openid-configuration", OK: true, Detail: "200 OK"},
		{Name: "Key Vault emulator", Address: "https://127.0.0.1:4444/keys/attested-local", OK: true, Detail: "401: answers with the bearer challenge"},
		{Name: "registry", Address: "localhost:55555", OK: true, Detail: "accepting connections"},
	}
	var b strings.Builder
	writeStatus(&b, &localstack.State{}, "/s", comps)
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")[1:]
	if len(lines) != len(comps) {
		t.Fatalf("%d component lines, want %d:\n%s", len(lines), len(comps), b.String())
	}
	addrCol, detailCol := -1, -1
	for i, l := range lines {
		c := comps[i]
		a := strings.Index(l, endpoint(c.Address))
		d := strings.LastIndex(l, c.Detail)
		if a < 0 || d < 0 || (addrCol >= 0 && (a != addrCol || d != detailCol)) {
			t.Fatalf("misaligned:\n%s", b.String())
		}
		addrCol, detailCol = a, d
	}
	if !strings.Contains(lines[2], "Entra ID emulator  https://127.0.0.1:333 ") {
		t.Errorf("the address is not shown as the endpoint:\n%s", b.String())
	}
}

// TestEnvHelp: env's help warns that its output holds the signing identity's client secret, and
// says what that identity may do.
func TestEnvHelp(t *testing.T) {
	var o, e strings.Builder
	run(context.Background(), []string{"local", "env", "--help"}, &o, &e)
	for _, w := range []string{"AZURE_CLIENT_SECRET", "client secret of the signing identity", "may only read\nthe signing key, sign with it", "loopback only"} {
		if !strings.Contains(o.String(), w) {
			t.Errorf("no %q in:\n%s", w, o.String())
		}
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

// TestWriteUp: up says to export the environment again when a restart changed it, with the
// variables that changed and the ports that moved; a first start, or a stack already running,
// says what to run next.
func TestWriteUp(t *testing.T) {
	again := `the environment changed: run eval "$(attest-bootstrap local env --state '/s')" again`
	for _, tc := range []struct {
		name      string
		st        localstack.State
		already   bool
		want, not []string
	}{
		{"first start", localstack.State{}, false, []string{`next: eval "$(attest-bootstrap local env --state '/s')"`}, []string{"changed", "note:"}},
		{"restart, key id changed", localstack.State{EnvChanged: []string{"ATTEST_KEY_ID"}}, false,
			[]string{"changed since the previous start: ATTEST_KEY_ID\n", again}, []string{"next:", "note:"}},
		{"restart, registry moved", localstack.State{EnvChanged: []string{"ATTEST_KEY_ID", "ATTEST_REGISTRY"}, PortsMoved: []string{"registry: port 5000 of the previous start is not free"}}, false,
			[]string{"note: registry: port 5000", "changed since the previous start: ATTEST_KEY_ID ATTEST_REGISTRY\n", again}, []string{"next:"}},
		{"already running", localstack.State{EnvChanged: []string{"ATTEST_KEY_ID"}, PortsMoved: []string{"registry: x"}}, true,
			[]string{"already running", "next: eval"}, []string{"changed", "note:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			writeUp(&b, &tc.st, tc.already, "/s", " --state '/s'")
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("no %q in:\n%s", w, b.String())
				}
			}
			for _, n := range tc.not {
				if strings.Contains(b.String(), n) {
					t.Errorf("%q in:\n%s", n, b.String())
				}
			}
		})
	}
}
