//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/attested-kv/attested-kv/internal/localstack"
	"github.com/attested-kv/attested-kv/internal/referrer"
	"github.com/attested-kv/attested-kv/internal/token"
)

// signatureType is the artifact type of a Notation signature.
const signatureType = "application/vnd.cncf.notary.signature"

// TestRatifyOnLocalStack runs the token verifier as a cluster runs it: as an exec plugin of the
// real Ratify v1.4.6 (`ratify verify`, tools/ratify), with Ratify's own Notation verifier beside
// it, configured from the shipped manifests (policy/k8s/verifiers.yaml and policy.yaml), against
// images signed by the attested-kv plugin on the local stack. It checks the plugin protocol as
// Ratify speaks it (environment, the config Ratify passes, the result it reads back) rather than
// as the verifier's own tests assume it, and that the policy admits only an image whose signature
// and token both verify.
func TestRatifyOnLocalStack(t *testing.T) {
	r := newRunner(t)
	r.need("notation", "oras", "ratify", "ratify-maa-verifier")
	s := upStack(t, r)

	// A signed image with its token, and the images of the refusals.
	sign := func(name string) (ref, dig string) {
		t.Helper()
		dig = s.push(t, r, name)
		ref = s.reg + "/" + name + "@" + dig
		r.must("notation", "sign", "--key", localstack.SigningKeyName, ref)
		return ref, dig
	}
	good, goodDigest := sign("app")
	r.must("oras-attest", "attach", good)
	bare, _ := sign("bare") // signed, token never attached
	// Signed, with another image's token attached by hand: what someone who can push but cannot
	// attest would try. oras-attest attach would refuse it; oras attaches anything.
	swapped, _ := sign("swapped")
	tokens, err := token.NewStore(s.env["ATTEST_TOKEN_DIR"]).List(goodDigest)
	if err != nil || len(tokens) != 1 {
		t.Fatalf("tokens of %s: %d, %v", good, len(tokens), err)
	}
	jwt := filepath.Join(s.work, "app.jwt")
	if err := os.WriteFile(jwt, []byte(tokens[0].Raw), 0o600); err != nil {
		t.Fatal(err)
	}
	r.must("oras", "attach", "--disable-path-validation", "--artifact-type", referrer.ArtifactType, swapped, jwt+":application/jwt")

	var inspect struct {
		Signatures []struct {
			Certificates []struct {
				SHA256Fingerprint string
			} `json:"certificates"`
		}
	}
	if err := json.Unmarshal([]byte(r.must("notation", "inspect", "-o", "json", good)), &inspect); err != nil || len(inspect.Signatures) != 1 || len(inspect.Signatures[0].Certificates) == 0 {
		t.Fatalf("notation inspect: %v %+v", err, inspect)
	}
	leaf := inspect.Signatures[0].Certificates[0].SHA256Fingerprint
	certs := filepath.Join(s.env["NOTATION_CONFIG"], "truststore", "x509", "ca", localstack.SigningKeyName)

	tests := []struct {
		name    string
		image   string
		edit    func(maa map[string]any) // changes to the maa-token verifier's config
		success bool
		// want is a part of the maa-token report's message; "" when Ratify runs no token
		// verifier (the image has no token referrer) and the policy alone refuses.
		want string
	}{
		{name: "signed and attested", image: good, success: true, want: "signed from an attested machine"},
		{name: "no token referrer", image: bare},
		{name: "another image's token", image: swapped, want: `check "token-referrer" failed`},
		{name: "another certificate pinned", image: good, want: "not a pinned signing certificate",
			edit: func(m map[string]any) { m["signingCertSHA256"] = []string{strings.Repeat("ab", 32)} }},
		{name: "misspelt setting", image: good, want: `unknown key "maxTokenage"`,
			edit: func(m map[string]any) { m["maxTokenage"] = m["maxTokenAge"]; delete(m, "maxTokenAge") }},
		{name: "another key", image: good, want: `check "binding" failed`,
			edit: func(m map[string]any) {
				m["keyID"] = strings.Replace(s.env["ATTEST_KEY_ID"], "/keys/"+localstack.SigningKeyName+"/", "/keys/other/", 1)
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ratifyConfig(t, r, s, leaf, certs, tc.edit)
			out := r.must("ratify", "verify", "--config", cfg, "--subject", tc.image)
			var res struct {
				IsSuccess       bool // omitted by Ratify when false
				VerifierReports []struct {
					IsSuccess    bool
					VerifierName string
					ArtifactType string
					Message      string
				}
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("ratify verify output: %v\n%s", err, out)
			}
			if res.IsSuccess != tc.success {
				t.Fatalf("ratify verify: isSuccess %v, want %v\n%s", res.IsSuccess, tc.success, out)
			}
			var sig, tok int
			for _, rep := range res.VerifierReports {
				switch rep.ArtifactType {
				case signatureType:
					sig++
					if !rep.IsSuccess || rep.VerifierName != "notation" {
						t.Fatalf("the Notation signature is not verified by Ratify's notation verifier:\n%s", out)
					}
				case referrer.ArtifactType:
					tok++
					if rep.VerifierName != "maa-token" || rep.IsSuccess != tc.success || !strings.Contains(rep.Message, tc.want) {
						t.Fatalf("token report %+v, want isSuccess %v and a message naming %q", rep, tc.success, tc.want)
					}
				}
			}
			if wantTok := map[bool]int{true: 1}[tc.want != ""]; sig != 1 || tok != wantTok {
				t.Fatalf("%d signature and %d token reports, want 1 and %d:\n%s", sig, tok, wantTok, out)
			}
		})
	}
}

// ratifyConfig writes the `ratify verify` config made of the shipped Kubernetes manifests, filled
// in for the local stack, and returns its path. What only a cluster has is replaced by the CLI's
// equivalent: the store reads the stack's plain-HTTP registry with Docker credentials instead of
// an Entra ID identity, and Ratify's Notation verifier takes the signing root from a directory
// (trust store "ca:certs") instead of a KeyManagementProvider. The maa-token verifier's
// parameters are the manifest's, with its placeholders and certificate directory filled in; edit,
// if not nil, changes them.
func ratifyConfig(t *testing.T, r *runner, s *stack, leaf, certs string, edit func(map[string]any)) string {
	t.Helper()
	plugins := filepath.Join(s.work, "ratify-plugins")
	if err := os.MkdirAll(plugins, 0o755); err != nil {
		t.Fatal(err)
	}
	// Ratify finds an exec verifier by its type in pluginBinDirs, as the Dockerfile installs it.
	if err := os.Link(filepath.Join(r.bin, "ratify-maa-verifier"), filepath.Join(plugins, "ratify-maa-verifier")); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	fill := strings.NewReplacer("${ATTESTATION_URL}", s.env["ATTEST_URL"], "${KEY_ID}", s.env["ATTEST_KEY_ID"], "${CERT_SHA256}", leaf)
	var verifiers []map[string]any
	for _, doc := range manifests(t, "verifiers.yaml", fill) {
		if doc.Kind != "Verifier" {
			continue
		}
		v := doc.Spec.Parameters
		v["name"], v["artifactTypes"] = doc.Spec.Name, doc.Spec.ArtifactTypes
		if doc.Spec.Type != "" {
			v["type"] = doc.Spec.Type
		}
		v["verificationCerts"] = []string{certs}
		switch doc.Spec.ArtifactTypes {
		case signatureType:
			delete(v, "verificationCertStores")
			tp := v["trustPolicyDoc"].(map[string]any)
			for _, p := range tp["trustPolicies"].([]any) {
				p.(map[string]any)["trustStores"] = []string{"ca:certs"}
			}
		case referrer.ArtifactType:
			if edit != nil {
				edit(v)
			}
		}
		verifiers = append(verifiers, v)
	}
	if len(verifiers) != 2 {
		t.Fatalf("verifiers.yaml holds %d Verifiers, want the notation and the maa-token ones", len(verifiers))
	}
	policy := manifests(t, "policy.yaml", fill)
	if len(policy) != 1 || policy[0].Spec.Type != "config-policy" {
		t.Fatalf("policy.yaml: %+v", policy)
	}
	pp := policy[0].Spec.Parameters
	pp["name"] = "configPolicy"
	cfg := map[string]any{
		"store":    map[string]any{"version": "1.0.0", "plugins": []any{map[string]any{"name": "oras", "useHttp": true}}},
		"policy":   map[string]any{"version": "1.0.0", "plugin": pp},
		"verifier": map[string]any{"version": "1.0.0", "pluginBinDirs": []string{plugins}, "plugins": verifiers},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(s.work, "ratify-*.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// manifest is the part of a Ratify custom resource that the CLI config takes.
type manifest struct {
	Kind string
	Spec struct {
		Name, Type, ArtifactTypes string
		Parameters                map[string]any
	}
}

// manifests reads the resources of policy/k8s/name with fill applied to its text.
func manifests(t *testing.T, name string, fill *strings.Replacer) []manifest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "policy", "k8s", name))
	if err != nil {
		t.Fatal(err)
	}
	var out []manifest
	for _, doc := range strings.Split(fill.Replace(string(b)), "\n---\n") {
		var m manifest
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out = append(out, m)
	}
	return out
}
