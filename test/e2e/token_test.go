//go:build e2e

// Package e2e runs the built binaries as a user would, against the local stack.
// Run with: make test-e2e (it sets ATTEST_E2E_BIN to ./bin).
package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

type runner struct {
	t   testing.TB
	bin string
	env []string
	// outputs collects everything the commands printed, for the no-secrets check.
	mu      sync.Mutex
	outputs bytes.Buffer
}

func (r *runner) run(name string, args ...string) (stdout, stderr string, code int) {
	r.t.Helper()
	cmd := exec.Command(filepath.Join(r.bin, name), args...)
	cmd.Env = r.env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r.mu.Lock()
	r.outputs.Write(o.Bytes())
	r.outputs.Write(e.Bytes())
	r.mu.Unlock()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		r.t.Fatalf("%s %v: %v", name, args, err)
	}
	return o.String(), e.String(), code
}

func (r *runner) must(name string, args ...string) string {
	r.t.Helper()
	out, errOut, code := r.run(name, args...)
	if code != 0 {
		r.t.Fatalf("%s %s: exit %d\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// need fails the test unless each of tools was built into the runner's bin directory.
func (r *runner) need(tools ...string) {
	r.t.Helper()
	for _, tool := range tools {
		if _, err := os.Stat(filepath.Join(r.bin, tool)); err != nil {
			r.t.Fatalf("%s CLI missing in %s: run make test-e2e, which builds it", tool, r.bin)
		}
	}
}

func newRunner(t testing.TB) *runner {
	bin := os.Getenv("ATTEST_E2E_BIN")
	if bin == "" {
		t.Skip("ATTEST_E2E_BIN not set; run through make test-e2e")
	}
	return &runner{t: t, bin: bin, env: os.Environ()}
}

func TestTokenChainOnLocalStack(t *testing.T) {
	r := newRunner(t)
	state := t.TempDir()
	work := t.TempDir()

	r.must("attest-bootstrap", "local", "up", "--state", state)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			r.run("attest-bootstrap", "local", "down", "--state", state)
		}
	})
	// A second up reuses the running stack.
	_, errOut, code := r.run("attest-bootstrap", "local", "up", "--state", state)
	if code != 0 || !strings.Contains(errOut, "already running") {
		t.Fatalf("second up: exit %d, %s", code, errOut)
	}

	var env map[string]string
	if err := json.Unmarshal([]byte(r.must("attest-bootstrap", "local", "env", "--state", state, "-o", "json")), &env); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ATTEST_URL", "ATTEST_TPM", "ATTEST_TCG_LOG", "SSL_CERT_FILE"} {
		if env[k] == "" {
			t.Fatalf("local env lacks %s: %v", k, env)
		}
		r.env = append(r.env, k+"="+env[k])
	}
	r.must("attest-bootstrap", "local", "status", "--state", state)

	tok := filepath.Join(work, "t.jwt")
	r.must("oras-attest", "token", "fetch", "--nonce", "N-123", "--out", tok)
	if fi, err := os.Stat(tok); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}

	out := r.must("oras-attest", "token", "verify", tok, "--nonce", "N-123", "-o", "json")
	var res struct {
		Verified    bool
		FailedCheck string
		Nonce       string
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Verified || res.Nonce != "N-123" {
		t.Fatalf("verify: %v %s", err, out)
	}

	refused := func(name, file, nonce, wantCheck string) {
		t.Helper()
		out, _, code := r.run("oras-attest", "token", "verify", file, "--nonce", nonce, "-o", "json")
		var res struct {
			Verified    bool
			FailedCheck string
		}
		json.Unmarshal([]byte(out), &res)
		if code == 0 || res.Verified || res.FailedCheck != wantCheck {
			t.Fatalf("%s: exit %d, want refusal by %q; output %s", name, code, wantCheck, out)
		}
	}
	refused("other nonce", tok, "N-124", "nonce")

	raw, _ := os.ReadFile(tok)
	s := strings.TrimSpace(string(raw))
	i := len(s) - 6
	c := byte('A')
	if s[i] == 'A' {
		c = 'B'
	}
	forged := filepath.Join(work, "forged.jwt")
	os.WriteFile(forged, []byte(s[:i]+string(c)+s[i+1:]), 0o600)
	refused("flipped signature character", forged, "N-123", "signature")

	out = r.must("oras-attest", "token", "show", tok, "-o", "json")
	var shown struct {
		Claims map[string]any
	}
	if err := json.Unmarshal([]byte(out), &shown); err != nil {
		t.Fatal(err)
	}
	if shown.Claims["x-ms-attestation-type"] != "azurevm" || shown.Claims["secureboot"] != true {
		t.Fatalf("claims: %v", shown.Claims)
	}

	// With the TPM stopped, no token.
	r.must("attest-bootstrap", "local", "tpm", "stop", "--state", state)
	_, errOut, code = r.run("oras-attest", "token", "fetch", "--nonce", "N-125", "--timeout", "20s")
	if code == 0 || !strings.Contains(errOut, "TPM") {
		t.Fatalf("fetch with the TPM stopped: exit %d, stderr %s", code, errOut)
	}
	r.must("attest-bootstrap", "local", "tpm", "start", "--state", state)
	r.must("oras-attest", "token", "fetch", "--nonce", "N-126")

	// down leaves no process behind.
	pidBytes, err := os.ReadFile(filepath.Join(state, "stack.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(pidBytes)))
	r.must("attest-bootstrap", "local", "down", "--state", state)
	stopped = true
	if running(pid) {
		t.Fatalf("process %d still alive after down", pid)
	}
	if out, _, code := r.run("attest-bootstrap", "local", "status", "--state", state); code == 0 {
		t.Fatalf("status after down: %s", out)
	}
}
