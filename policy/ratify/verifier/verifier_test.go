package verifier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"sigs.k8s.io/yaml"

	"github.com/attested-kv/attested-kv/internal/referrer"
)

// TestWithin: the deadline holds whatever the work does with its context, and a failure after
// the deadline names the timeout, with what the work was doing.
func TestWithin(t *testing.T) {
	const timeout = 200 * time.Millisecond
	const answerWithin = 10 * time.Second // generous: only a hang exceeds it
	// release lets work that waits beyond its deadline return after all, so that a within that
	// waited for it fails the test instead of hanging it.
	release := make(chan struct{})
	time.AfterFunc(answerWithin+time.Second, func() { close(release) })
	waitDeadline := func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-release:
			return errors.New("no deadline")
		}
	}
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	timedOut := `verification timed out after 200ms (verifier config "timeout")`
	tests := []struct {
		name    string
		parent  context.Context
		work    func(context.Context) Result
		success bool
		message string
		// early: work's context must end before the answer is due, so that its failure is reported
		early bool
	}{
		{name: "finishes in time", parent: t.Context(), success: true, message: "verified",
			work: func(context.Context) Result { return Result{IsSuccess: true, Message: "verified"} }},
		{name: "fails in time", parent: t.Context(), message: "resolving: not found",
			work: func(context.Context) Result { return Result{Message: "resolving: not found"} }},
		{name: "stops at its deadline", parent: t.Context(), message: timedOut + ": resolving: context deadline exceeded", early: true,
			work: func(ctx context.Context) Result { return Result{Message: "resolving: " + waitDeadline(ctx).Error()} }},
		{name: "ignores its context", parent: t.Context(), message: timedOut,
			work: func(context.Context) Result { <-release; return Result{IsSuccess: true} }},
		{name: "interrupted", parent: cancelled, message: "verification interrupted: context canceled: resolving: context canceled",
			work: func(ctx context.Context) Result { return Result{Message: "resolving: " + waitDeadline(ctx).Error()} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			var deadline time.Time
			res := within(tc.parent, start, timeout, Result{Name: Name, Type: Name}, func(ctx context.Context) Result {
				deadline, _ = ctx.Deadline()
				return tc.work(ctx)
			})
			if took := time.Since(start); took > answerWithin {
				t.Fatalf("answered after %s", took)
			}
			if res.IsSuccess != tc.success || res.Message != tc.message {
				t.Fatalf("got %+v, want success %v and message %q", res, tc.success, tc.message)
			}
			if tc.early && (deadline.IsZero() || !deadline.Before(start.Add(timeout))) {
				t.Fatalf("work's deadline %s is not before the answer is due (%s)", deadline, start.Add(timeout))
			}
		})
	}
}

func TestParseTimeout(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{in: "", want: DefaultTimeout},
		{in: "2s", want: 2 * time.Second},
		{in: "1500ms", want: 1500 * time.Millisecond},
		{in: "30s", want: 30 * time.Second},
		{in: "31s", err: true},
		{in: "0s", err: true},
		{in: "-1s", err: true},
		{in: "3", err: true},
		{in: "soon", err: true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q", tc.in), func(t *testing.T) {
			got, err := parseTimeout(tc.in)
			if tc.err {
				if err == nil || !strings.Contains(err.Error(), "timeout") {
					t.Fatalf("parseTimeout(%q) = %s, %v; want an error naming the timeout", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseTimeout(%q) = %s, %v; want %s", tc.in, got, err, tc.want)
			}
		})
	}
}

// TestRunRefusesInput: input the verifier cannot judge is refused before any network access,
// each with a message naming what is wrong.
func TestRunRefusesInput(t *testing.T) {
	env := map[string]string{"RATIFY_VERIFIER_COMMAND": "VERIFY", "RATIFY_VERIFIER_VERSION": "1.0.0", "RATIFY_VERIFIER_SUBJECT": "registry.invalid/app@sha256:" + strings.Repeat("0", 64)}
	tokenDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: referrer.ArtifactType, Digest: digest.Digest("sha256:" + strings.Repeat("1", 64)), Size: 100}
	withJSON := func(cfg map[string]any, desc ocispec.Descriptor) io.Reader {
		b, _ := json.Marshal(map[string]any{"config": cfg, "referenceDesc": desc})
		return bytes.NewReader(b)
	}
	// maxAge is a config that reaches the maxTokenAge check, with d as maxTokenAge.
	maxAge := func(d string) map[string]any {
		return map[string]any{"attestationURL": "https://x.weu.attest.azure.net", "keyID": "https://v.vault.azure.net/keys/k/1", "maxTokenAge": d}
	}
	tests := []struct {
		name    string
		env     map[string]string // changes to env
		stdin   io.Reader
		message string
	}{
		// Mutant killed: RATIFY_VERIFIER_COMMAND not checked.
		{"command not VERIFY", map[string]string{"RATIFY_VERIFIER_COMMAND": "GET"}, withJSON(nil, tokenDesc), `unsupported command "GET" (want VERIFY)`},
		{"config version not supported", map[string]string{"RATIFY_VERIFIER_VERSION": "9.9.9"}, withJSON(nil, tokenDesc), `plugin doesn't support version "9.9.9"; RATIFY_VERIFIER_VERSION "9.9.9", the verifier config's version, is not one this verifier supports (1.0.0)`},
		{"config version missing", map[string]string{"RATIFY_VERIFIER_VERSION": ""}, withJSON(nil, tokenDesc), "missing env variables [RATIFY_VERIFIER_VERSION]"},
		{"input over the limit", nil, strings.NewReader(strings.Repeat(" ", maxInput+1)), "verifier input exceeds the stdin limit of 1048576 bytes"},
		{"input at the limit is read", nil, strings.NewReader(strings.Repeat(" ", maxInput)), "verifier input is not JSON"},
		{"unreadable input", nil, iotest.ErrReader(errors.New("pipe closed")), "reading the verifier input: pipe closed"},
		{"timeout not a duration", nil, withJSON(map[string]any{"timeout": "3"}, tokenDesc), `verifier config: timeout "3": want a duration`},
		{"timeout of zero", nil, withJSON(map[string]any{"timeout": "0s"}, tokenDesc), `verifier config: timeout "0s"`},
		{"timeout beyond the webhook's limit", nil, withJSON(map[string]any{"timeout": "1m"}, tokenDesc), "at most 30s"},
		{"misspelt pin list", nil, withJSON(map[string]any{"signingCertSha256s": []string{"ab"}}, tokenDesc), `verifier config: unknown key "signingCertSha256s" (keys are case-sensitive`},
		{"misspelt rule file", nil, withJSON(map[string]any{"rule": "/etc/attested-kv/vm-pins.cel"}, tokenDesc), `verifier config: unknown key "rule"`},
		{"a key in another case", nil, withJSON(map[string]any{"Rules": "/etc/attested-kv/vm-pins.cel"}, tokenDesc), `verifier config: unknown key "Rules"`},
		{"a key twice", nil, strings.NewReader(`{"config":{"rules":"/a.cel","rules":"/b.cel"},"referenceDesc":{}}`), "verifier config: a key appears twice"},
		// encoding/json would merge the two objects: the keys of each are the verifier's, but not
		// the whole.
		{"config twice", nil, strings.NewReader(`{"config":{"attestationURL":"https://x.weu.attest.azure.net"},"config":{"keyID":"https://v.vault.azure.net/keys/k/1"},"referenceDesc":{}}`), "verifier input: a member appears twice"},
		{"config in another case", nil, strings.NewReader(`{"config":{"attestationURL":"https://x.weu.attest.azure.net"},"CONFIG":{"keyID":"https://v.vault.azure.net/keys/k/1"},"referenceDesc":{}}`), `verifier input: member "CONFIG" is "config" in another case`},
		{"referenceDesc in another case", nil, strings.NewReader(`{"config":{},"referenceDesc":{},"ReferenceDesc":{}}`), `verifier input: member "ReferenceDesc" is "referenceDesc" in another case`},
		{"key id spelt otherwise than Key Vault writes it", nil, withJSON(map[string]any{"attestationURL": "https://x.weu.attest.azure.net", "keyID": "https://v.vault.azure.net/keys/k/1/"}, tokenDesc), `keyID: binding: invalid input: key id "https://v.vault.azure.net/keys/k/1/" is another spelling of "https://v.vault.azure.net/keys/k/1"`},
		{"maxTokenAge negative", nil, withJSON(maxAge("-5m"), tokenDesc), `verifier config: maxTokenAge "-5m": want a duration such as 5m`},
		{"maxTokenAge zero", nil, withJSON(maxAge("0s"), tokenDesc), `verifier config: maxTokenAge "0s": want a duration such as 5m`},
		{"maxTokenAge not a duration", nil, withJSON(maxAge("5"), tokenDesc), `verifier config: maxTokenAge "5": want a duration such as 5m`},
		{"maxTokenAge above the plugin's bound", nil, withJSON(maxAge("2h"), tokenDesc), `verifier config: maxTokenAge "2h": at most 1h0m0s, the oldest token the plugin signs with`},
		{"referrer without a digest", nil, withJSON(nil, ocispec.Descriptor{ArtifactType: "application/spdx+json"}), "referenceDesc has no digest"},
		{"referrer of another artifact type", nil, withJSON(nil, func() ocispec.Descriptor { d := tokenDesc; d.ArtifactType = "application/spdx+json"; return d }()), "is not the MAA token artifact type"},
		{"referrer with a malformed digest", nil, withJSON(nil, func() ocispec.Descriptor { d := tokenDesc; d.Digest = "sha256:1"; return d }()), "is not a valid digest"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string {
				if v, ok := tc.env[k]; ok {
					return v
				}
				return env[k]
			}
			res := Run(t.Context(), getenv, tc.stdin)
			if res.IsSuccess || !strings.Contains(res.Message, tc.message) {
				t.Fatalf("got %+v, want a refusal containing %q", res, tc.message)
			}
		})
	}
}

// FuzzDecodeInput: whatever Ratify (or a registry, through referenceDesc) puts in the input, the
// decoding never panics, and an input it accepts has a usable timeout and names a token referrer
// by a valid digest.
func FuzzDecodeInput(f *testing.F) {
	good := fmt.Sprintf(`{"config":{"name":"maa","type":"maa-token","attestationURL":"https://x.weu.attest.azure.net","keyID":"https://v.vault.azure.net/keys/k/1","timeout":"2s"},`+
		`"storeConfig":{"name":"oras","store":{"authProvider":{"name":"azureWorkloadIdentity","clientID":"c"}}},`+
		`"referenceDesc":{"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":%q,"digest":"sha256:%064x","size":512}}`, referrer.ArtifactType, 1)
	if _, _, err := decodeInput([]byte(good)); err != nil {
		f.Fatalf("the good seed is refused: %v", err)
	}
	// The keys Ratify adds itself are accepted beside the verifier's own.
	ratify := strings.Replace(good, `"timeout":"2s"`, `"timeout":"2s","artifactTypes":"x","nestedReferences":"y","source":{},"version":"1.0.0","address":"/p"`, 1)
	if _, _, err := decodeInput([]byte(ratify)); err != nil {
		f.Fatalf("Ratify's own config keys are refused: %v", err)
	}
	for _, seed := range []string{good, `{}`, `{"config":{"timeout":"31s"}}`, `{"referenceDesc":{"digest":"sha256:zz"}}`, `[]`, `null`, ``} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in, timeout, err := decodeInput(b)
		if err != nil {
			return
		}
		if timeout <= 0 || timeout > maxTimeout {
			t.Fatalf("accepted timeout %v", timeout)
		}
		if in.ReferenceDesc.ArtifactType != referrer.ArtifactType || in.ReferenceDesc.Digest.Validate() != nil {
			t.Fatalf("accepted referenceDesc %+v", in.ReferenceDesc)
		}
	})
}

// TestShippedVerifierConfig decodes the maa-token Verifier of policy/k8s/verifiers.yaml as Ratify
// passes it (its parameters plus name, type and artifactTypes), with the placeholders filled and
// the commented-out settings enabled: every key the manifest names is one this verifier reads.
func TestShippedVerifierConfig(t *testing.T) {
	b, err := os.ReadFile("../../k8s/verifiers.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.NewReplacer(
		"${ATTESTATION_URL}", "https://x.weu.attest.azure.net",
		"${KEY_ID}", "https://v.vault.azure.net/keys/k/0123456789abcdef0123456789abcdef",
		"${CERT_SHA256}", strings.Repeat("ab", 32),
		"# rules:", "rules:", "# jwksPath:", "jwksPath:",
	).Replace(string(b))
	var found bool
	for _, doc := range strings.Split(text, "\n---\n") {
		var v struct {
			Kind string
			Spec struct {
				Name, Type, ArtifactTypes string
				Parameters                map[string]any
			}
		}
		if err := yaml.Unmarshal([]byte(doc), &v); err != nil {
			t.Fatal(err)
		}
		if v.Kind != "Verifier" || v.Spec.ArtifactTypes != referrer.ArtifactType {
			continue
		}
		found = true
		cfg := v.Spec.Parameters
		cfg["name"], cfg["type"], cfg["artifactTypes"] = v.Spec.Name, v.Spec.Type, v.Spec.ArtifactTypes
		in, _ := json.Marshal(map[string]any{"config": cfg, "referenceDesc": ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageManifest, ArtifactType: referrer.ArtifactType, Digest: digest.FromString("token"), Size: 1}})
		got, timeout, err := decodeInput(in)
		if err != nil {
			t.Fatalf("the shipped config is refused: %v", err)
		}
		if timeout != 3*time.Second || len(got.Config.SigningCertSHA256) != 1 || got.Config.Rules == "" || got.Config.JWKSPath == "" || got.Config.TrustPolicyDoc == nil {
			t.Fatalf("decoded config %+v, timeout %v", got.Config, timeout)
		}
	}
	if !found {
		t.Fatal("no Verifier for the token artifact type in verifiers.yaml")
	}
}
