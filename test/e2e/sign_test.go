//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/localstack"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/token"
)

// stack is a local stack started for one test, with the runner's environment set as after
// `eval "$(attest-bootstrap local env)"`, and HOME in a directory of the test's own.
type stack struct {
	state, work string
	env         map[string]string // local env -o json
	reg         string            // the registry's host:port
}

// upStack starts a local stack that the test's cleanup stops, and points r at it.
func upStack(t testing.TB, r *runner) *stack {
	t.Helper()
	s := &stack{state: t.TempDir(), work: t.TempDir()}
	r.must("attest-bootstrap", "local", "up", "--state", s.state)
	t.Cleanup(func() { r.run("attest-bootstrap", "local", "down", "--state", s.state) })
	// `local env` prints the emulated tenant's client secret by design (it is what the shell
	// exports): its output alone is left out of the outputs checked for secrets.
	r.mu.Lock()
	before := r.outputs.Len()
	r.mu.Unlock()
	env := r.must("attest-bootstrap", "local", "env", "--state", s.state, "-o", "json")
	r.mu.Lock()
	r.outputs.Truncate(before)
	r.mu.Unlock()
	if err := json.Unmarshal([]byte(env), &s.env); err != nil {
		t.Fatal(err)
	}
	r.env = append(os.Environ(), "HOME="+s.work, "XDG_CONFIG_HOME="+filepath.Join(s.work, "config"))
	for k, v := range s.env {
		r.env = append(r.env, k+"="+v)
	}
	s.reg = s.env["ATTEST_REGISTRY"]
	return s
}

// push pushes a small artifact as the image name:v1 and returns its digest.
func (s *stack) push(t testing.TB, r *runner, name string) string {
	t.Helper()
	f := filepath.Join(s.work, name+".txt")
	if err := os.WriteFile(f, []byte("image "+name), 0o644); err != nil {
		t.Fatal(err)
	}
	r.must("oras", "push", "--disable-path-validation", s.reg+"/"+name+":v1", f)
	return strings.TrimSpace(r.must("oras", "resolve", s.reg+"/"+name+":v1"))
}

// TestSigningChainOnLocalStack is the chain a build script runs, with the real notation v1.3.2
// and oras v1.3.6 CLIs (tools/go.mod): push an image, `notation sign` through the attested-kv
// plugin (JWS and COSE), `notation verify`, `oras-attest attach`, `oras discover`,
// `oras-attest verify`; then the fail-closed cases, each leaving no signature behind.
func TestSigningChainOnLocalStack(t *testing.T) {
	r := newRunner(t)
	r.need("notation", "oras")
	s := upStack(t, r)
	state, work, env, reg := s.state, s.work, s.env, s.reg
	ctx := context.Background()
	push := func(name string) string { return s.push(t, r, name) }
	referrers := func(ref string) map[string]int {
		t.Helper()
		var d struct {
			Referrers []struct {
				ArtifactType string `json:"artifactType"`
			} `json:"referrers"`
		}
		if err := json.Unmarshal([]byte(r.must("oras", "discover", "--format", "json", ref)), &d); err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, x := range d.Referrers {
			out[x.ArtifactType]++
		}
		return out
	}
	signs := func() int {
		t.Helper()
		c, err := localstack.KeyVaultRequests(ctx, state)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, k := range c["sign"] {
			n += k
		}
		return n
	}

	// The chain.
	dig := push("app")
	ref := reg + "/app@" + dig
	r.must("notation", "sign", "--key", localstack.SigningKeyName, ref)
	r.must("notation", "sign", "--signature-format", "cose", ref)
	r.must("notation", "verify", ref)
	var inspect struct {
		Signatures []struct {
			SignedAttributes map[string]any `json:"signedAttributes"`
		} `json:"signatures"`
	}
	if err := json.Unmarshal([]byte(r.must("notation", "inspect", "-o", "json", ref)), &inspect); err != nil {
		t.Fatal(err)
	}
	if len(inspect.Signatures) != 2 {
		t.Fatalf("notation inspect lists %d signatures, want 2", len(inspect.Signatures))
	}
	for _, s := range inspect.Signatures {
		if v, _ := s.SignedAttributes["io.github.attested-kv.token.sha256"].(string); len(v) != 64 {
			t.Fatalf("signature without the token digest as a signed attribute: %v", s.SignedAttributes)
		}
	}
	out := r.must("oras-attest", "attach", ref)
	if strings.Count(out, "Digest: sha256:") != 2 {
		t.Fatalf("attach: %s", out)
	}
	again := r.must("oras-attest", "attach", ref)
	got := referrers(ref)
	if got["application/vnd.cncf.notary.signature"] != 2 || got["application/vnd.attested-kv.maa-token.v1+jwt"] != 2 {
		t.Fatalf("oras discover: %v (attaching twice must not add referrers; second attach said %s)", got, again)
	}
	out = r.must("oras-attest", "verify", ref)
	if !strings.Contains(out, "VERIFIED") {
		t.Fatalf("verify: %s", out)
	}
	// The Ratify-style verification refuses a signed image whose token was never attached.
	bare := push("bare")
	r.must("notation", "sign", reg+"/bare@"+bare)
	out, _, code := r.run("oras-attest", "verify", reg+"/bare@"+bare, "-o", "json")
	if code == 0 || !strings.Contains(out, `"token-referrer"`) {
		t.Fatalf("verify of an image without its token: exit %d %s", code, out)
	}

	// As a user sets it up by hand: `notation plugin install --file` and `notation key add` into
	// a fresh notation configuration, with the trust policy copied from the stack's.
	t.Run("plugin install and key add", func(t *testing.T) {
		cfg, libexec := filepath.Join(work, "notation-config"), filepath.Join(work, "notation-libexec")
		if err := os.CopyFS(filepath.Join(cfg, "truststore"), os.DirFS(filepath.Join(env["NOTATION_CONFIG"], "truststore"))); err != nil {
			t.Fatal(err)
		}
		tp, err := os.ReadFile(filepath.Join(env["NOTATION_CONFIG"], "trustpolicy.json"))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(cfg, "trustpolicy.json"), tp, 0o600)
		saved := r.env
		defer func() { r.env = saved }()
		r.env = append(append([]string{}, saved...), "NOTATION_CONFIG="+cfg, "NOTATION_LIBEXEC="+libexec)
		r.must("notation", "plugin", "install", "--file", filepath.Join(r.bin, localstack.PluginBinary))
		if out := r.must("notation", "plugin", "ls"); !strings.Contains(out, "attested-kv") || !strings.Contains(out, "SIGNATURE_GENERATOR.ENVELOPE") {
			t.Fatalf("notation plugin ls: %s", out)
		}
		r.must("notation", "key", "add", "byhand", "--plugin", "attested-kv", "--id", env["ATTEST_KEY_ID"],
			"--plugin-config", "attestation_url="+env["ATTEST_URL"], "--plugin-config", "tpm="+env["ATTEST_TPM"],
			"--plugin-config", "tcg_log="+env["ATTEST_TCG_LOG"], "--plugin-config", "credential_type=environment",
			"--plugin-config", "token_dir="+env["ATTEST_TOKEN_DIR"])
		d := push("byhand")
		ref := reg + "/byhand@" + d
		r.must("notation", "sign", "--key", "byhand", ref)
		r.must("notation", "verify", ref)
	})

	// Eight signings at once (a build farm job fanning out): each gets its own token, bound to its
	// own image; the TPM serves one client at a time and the others wait their turn.
	t.Run("parallel signings", func(t *testing.T) {
		const n = 8
		digests := make([]string, n)
		for i := range digests {
			digests[i] = push("par" + string(rune('a'+i)))
		}
		errs := make(chan string, n)
		var wg sync.WaitGroup
		for i, d := range digests {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, errOut, code := r.run("notation", "sign", reg+"/par"+string(rune('a'+i))+"@"+d); code != 0 {
					errs <- errOut
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Errorf("parallel sign failed: %s", e)
		}
		seen := map[string]bool{}
		store := token.NewStore(env["ATTEST_TOKEN_DIR"])
		for _, d := range digests {
			entries, err := store.List(d)
			if err != nil || len(entries) != 1 {
				t.Fatalf("tokens for %s: %d, %v", d, len(entries), err)
			}
			_, claims, err := maa.ParseUnverified(entries[0].Raw)
			if err != nil {
				t.Fatal(err)
			}
			nonce, _ := maa.ClientPayloadNonce(claims)
			want, _ := binding.Compute(d, env["ATTEST_KEY_ID"])
			if nonce != want || seen[entries[0].SHA256] {
				t.Fatalf("token for %s is not its own (nonce %s, want %s)", d, nonce, want)
			}
			seen[entries[0].SHA256] = true
		}
	})

	// Fail closed: nothing is signed and no signature appears in the registry.
	tests := []struct {
		name      string
		before    func()
		after     func()
		message   string
		signCalls bool // whether Key Vault may have been asked (it refused)
	}{
		{name: "TPM unavailable",
			before:  func() { r.must("attest-bootstrap", "local", "tpm", "stop", "--state", state) },
			after:   func() { r.must("attest-bootstrap", "local", "tpm", "start", "--state", state) },
			message: "TPM"},
		{name: "claim rule false",
			before: func() {
				os.WriteFile(filepath.Join(work, "strict.cel"), []byte("vm-pinned: claims[\"x-ms-azurevm-vmid\"] == \"00000000-0000-0000-0000-000000000000\"\n"), 0o644)
			},
			after:   func() {},
			message: `claim rule "vm-pinned"`},
		{name: "Key Vault 403", signCalls: true,
			before:  func() { localstack.InjectKeyVaultFault(ctx, state, "sign", 403, 10) },
			after:   func() { localstack.InjectKeyVaultFault(ctx, state, "sign", 0, 0) },
			message: "403"},
		{name: "Key Vault 500", signCalls: true,
			before:  func() { localstack.InjectKeyVaultFault(ctx, state, "sign", 500, 10) },
			after:   func() { localstack.InjectKeyVaultFault(ctx, state, "sign", 0, 0) },
			message: "500"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := push("refused" + string(rune('a'+i)))
			target := reg + "/refused" + string(rune('a'+i)) + "@" + d
			before := signs()
			tc.before()
			args := []string{"sign", target}
			if tc.name == "claim rule false" {
				args = append(args, "--plugin-config", "rules="+filepath.Join(work, "strict.cel"))
			}
			_, errOut, code := r.run("notation", args...)
			tc.after()
			if code == 0 || !strings.Contains(errOut, tc.message) {
				t.Fatalf("notation sign: exit %d, stderr %q; want a failure naming %q", code, errOut, tc.message)
			}
			if got := referrers(target); got["application/vnd.cncf.notary.signature"] != 0 {
				t.Fatalf("a signature exists after a refused signing: %v", got)
			}
			if !tc.signCalls && signs() != before {
				t.Fatalf("Key Vault was asked to sign (%d -> %d) although attestation failed", before, signs())
			}
		})
	}

	// No secret in any output at the default level: the tokens, the client secret, the access
	// tokens are never printed by the commands above (token fetch prints a token only when asked
	// to, and is not run here), nor written to the plugin's log or the stack's log.
	t.Run("no secrets in outputs", func(t *testing.T) {
		logs := r.outputs.String()
		for _, f := range []string{filepath.Join(state, "plugin.log"), filepath.Join(state, "stack.log")} {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			logs += string(b)
		}
		tokens := storedTokens(t, env["ATTEST_TOKEN_DIR"])
		if len(tokens) == 0 || env["AZURE_CLIENT_SECRET"] == "" {
			t.Fatal("no token stored or no client secret: the check would prove nothing")
		}
		checkNoSecrets(t, logs, append(tokens, env["AZURE_CLIENT_SECRET"]))
	})
}
