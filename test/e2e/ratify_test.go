//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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
	f := newRatifyFixture(t, r)
	s, good := f.stack, f.image
	bare := f.sign(t, "bare") // signed, token never attached
	// Signed, with another image's token attached by hand: what someone who can push but cannot
	// attest would try. oras-attest attach would refuse it; oras attaches anything.
	swapped := f.sign(t, "swapped")
	tokens, err := token.NewStore(s.env["ATTEST_TOKEN_DIR"]).List(f.digest)
	if err != nil || len(tokens) != 1 {
		t.Fatalf("tokens of %s: %d, %v", good, len(tokens), err)
	}
	jwt := filepath.Join(s.work, "app.jwt")
	if err := os.WriteFile(jwt, []byte(tokens[0].Raw), 0o600); err != nil {
		t.Fatal(err)
	}
	r.must("oras", "attach", "--disable-path-validation", "--artifact-type", referrer.ArtifactType, swapped, jwt+":application/jwt")

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
		// Ratify hands the verifier the subject as it was named, here by tag (its own Notation
		// verifier resolves it); in a cluster, its tag-to-digest mutation names images by digest.
		{name: "image named by tag", image: s.reg + "/app:v1", want: "is not a digest reference"},
		{name: "another key", image: good, want: `check "binding" failed`,
			edit: func(m map[string]any) {
				m["keyID"] = strings.Replace(s.env["ATTEST_KEY_ID"], "/keys/"+localstack.SigningKeyName+"/", "/keys/other/", 1)
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := f.config(t, true, tc.edit)
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
					if rep.VerifierName != "ratify-maa-verifier" || rep.IsSuccess != tc.success || !strings.Contains(rep.Message, tc.want) {
						t.Fatalf("token report %+v, want isSuccess %v and a message naming %q", rep, tc.success, tc.want)
					}
				}
			}
			wantTok := 1
			if tc.want == "" {
				wantTok = 0
			}
			if sig != 1 || tok != wantTok {
				t.Fatalf("%d signature and %d token reports, want 1 and %d:\n%s", sig, tok, wantTok, out)
			}
		})
	}

	// As a cluster asks: Gatekeeper's external data request to `ratify serve`, one image a key.
	t.Run("ratify serve", func(t *testing.T) {
		url := f.serve(t, f.config(t, true, nil))
		for image, want := range map[string]bool{good: true, bare: false, swapped: false} {
			if got, body := admit(t, url, image); got != want {
				t.Fatalf("ratify serve answers isSuccess %v for %s, want %v:\n%s", got, image, want, body)
			}
		}
		// Admissions at once (a deployment scaling up): one verifier process each, all answered
		// alike.
		const n = 8
		got := make(chan string, 2*n)
		var wg sync.WaitGroup
		for i := range 2 * n {
			image, want := good, true
			if i%2 == 1 {
				image, want = swapped, false
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if ok, body, err := ask(url, image); err != nil || ok != want {
					got <- fmt.Sprintf("%s: %v %s", image, err, body)
				}
			}()
		}
		wg.Wait()
		close(got)
		for body := range got {
			t.Errorf("a concurrent admission was answered otherwise than the same one alone:\n%s", body)
		}
	})
}

// BenchmarkRatifyAdmission is what the token verifier adds to an admission: the time `ratify
// serve` takes to answer Gatekeeper's external data request for one signed and attested image,
// with the shipped verifiers and policy (Notation and the token, "notation+token") and with
// Ratify's Notation verifier alone ("notation"). Ratify's result cache is off, as by default.
func BenchmarkRatifyAdmission(b *testing.B) {
	r := newRunner(b)
	f := newRatifyFixture(b, r)
	for _, bc := range []struct {
		name  string
		token bool
	}{{"notation", false}, {"notation+token", true}} {
		url := f.serve(b, f.config(b, bc.token, nil))
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if ok, body := admit(b, url, f.image); !ok {
					b.Fatalf("refused:\n%s", body)
				}
			}
		})
	}
}

// ratifyFixture is a local stack with one image signed by the attested-kv plugin and its token
// attached, and what a Ratify config needs to trust it.
type ratifyFixture struct {
	r      *runner
	stack  *stack
	image  string // registry/app@digest
	digest string
	leaf   string // SHA-256 of the signing certificate, as attest-bootstrap apply reports it
	certs  string // a directory holding the signing root
}

func newRatifyFixture(t testing.TB, r *runner) *ratifyFixture {
	t.Helper()
	r.need("notation", "oras", "ratify", "ratify-maa-verifier")
	f := &ratifyFixture{r: r, stack: upStack(t, r)}
	f.image = f.sign(t, "app")
	f.digest = f.image[strings.LastIndexByte(f.image, '@')+1:]
	r.must("oras-attest", "attach", f.image)
	var inspect struct {
		Signatures []struct {
			Certificates []struct {
				SHA256Fingerprint string
			} `json:"certificates"`
		}
	}
	if err := json.Unmarshal([]byte(r.must("notation", "inspect", "-o", "json", f.image)), &inspect); err != nil || len(inspect.Signatures) != 1 || len(inspect.Signatures[0].Certificates) == 0 {
		t.Fatalf("notation inspect: %v %+v", err, inspect)
	}
	f.leaf = inspect.Signatures[0].Certificates[0].SHA256Fingerprint
	f.certs = filepath.Join(f.stack.env["NOTATION_CONFIG"], "truststore", "x509", "ca", localstack.SigningKeyName)
	return f
}

// sign pushes the image name and signs it with the attested-kv plugin; it returns its reference
// by digest.
func (f *ratifyFixture) sign(t testing.TB, name string) string {
	t.Helper()
	ref := f.stack.reg + "/" + name + "@" + f.stack.push(t, f.r, name)
	f.r.must("notation", "sign", "--key", localstack.SigningKeyName, ref)
	return ref
}

// serve starts `ratify serve` with the config file cfg on loopback, stopped by the cleanup, and
// returns the URL of its Gatekeeper verification endpoint once it answers.
func (f *ratifyFixture) serve(t testing.TB, cfg string) string {
	t.Helper()
	addrs := freeAddrs(t, 2)
	addr := addrs[0]
	cmd := exec.Command(filepath.Join(f.r.bin, "ratify"), "serve", "--config", cfg, "--http", addr, "--health-port", addrs[1])
	cmd.Env = f.r.env
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	url := "http://" + addr + "/ratify/gatekeeper/v1/verify"
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		rsp, err := http.Post(url, "application/json", strings.NewReader(`{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderRequest","request":{"keys":[]}}`))
		if err == nil {
			rsp.Body.Close()
			return url
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("ratify serve did not answer in 20 s: %v\n%s", err, log.String())
		}
	}
}

// freeAddrs returns n distinct loopback addresses with ports nothing listens on at the time of
// the call (all are held open until it returns, so that none is handed out twice).
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

// admit sends Gatekeeper's external data request for image to the Ratify endpoint url and returns
// Ratify's verdict on it and the whole answer.
func admit(t testing.TB, url, image string) (bool, string) {
	t.Helper()
	ok, body, err := ask(url, image)
	if err != nil {
		t.Fatal(err)
	}
	return ok, body
}

// ask is admit for any goroutine: an answer that is not one it can read is an error.
func ask(url, image string) (bool, string, error) {
	req, _ := json.Marshal(map[string]any{"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderRequest",
		"request": map[string]any{"keys": []string{image}}})
	rsp, err := http.Post(url, "application/json", bytes.NewReader(req))
	if err != nil {
		return false, "", err
	}
	defer rsp.Body.Close()
	body, err := io.ReadAll(rsp.Body)
	if err != nil || rsp.StatusCode != http.StatusOK {
		return false, "", fmt.Errorf("ratify serve: HTTP %d, %v: %s", rsp.StatusCode, err, body)
	}
	// What Ratify's ConstraintTemplate reads: a system error or an item error denies, and so does
	// an item whose value is not isSuccess true.
	var res struct {
		Response struct {
			SystemError string
			Items       []struct {
				Key   string
				Error string
				Value struct{ IsSuccess bool }
			}
		}
	}
	if err := json.Unmarshal(body, &res); err != nil || len(res.Response.Items) != 1 || res.Response.Items[0].Key != image {
		return false, "", fmt.Errorf("ratify serve answer: %v: %s", err, body)
	}
	it := res.Response.Items[0]
	return res.Response.SystemError == "" && it.Error == "" && it.Value.IsSuccess, string(body), nil
}

// config writes the `ratify verify` and `ratify serve` config made of the shipped Kubernetes
// manifests, filled in for the local stack, and returns its path. What only a cluster has is
// replaced by the CLI's equivalent: the store reads the stack's plain-HTTP registry with Docker
// credentials instead of an Entra ID identity, and Ratify's Notation verifier takes the signing
// root from a directory (trust store "ca:certs") instead of a KeyManagementProvider. The
// maa-token verifier's parameters are the manifest's, with its placeholders and certificate
// directory filled in; edit, if not nil, changes them. Without token, the maa-token verifier and
// its artifact type are left out of the config: Ratify's Notation verification alone.
func (f *ratifyFixture) config(t testing.TB, token bool, edit func(map[string]any)) string {
	t.Helper()
	r, s, leaf, certs := f.r, f.stack, f.leaf, f.certs
	plugins := filepath.Join(s.work, "ratify-plugins")
	if err := os.MkdirAll(plugins, 0o755); err != nil {
		t.Fatal(err)
	}
	// Ratify finds an exec verifier by its type, or its name without one, in pluginBinDirs, as the
	// Dockerfile installs it.
	if err := os.Link(filepath.Join(r.bin, "ratify-maa-verifier"), filepath.Join(plugins, "ratify-maa-verifier")); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	fill := strings.NewReplacer("${ATTESTATION_URL}", s.env["ATTEST_URL"], "${KEY_ID}", s.env["ATTEST_KEY_ID"], "${CERT_SHA256}", leaf)
	var verifiers []map[string]any
	found := map[string]bool{}
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
		found[doc.Spec.ArtifactTypes] = true
		switch doc.Spec.ArtifactTypes {
		case signatureType:
			delete(v, "verificationCertStores")
			tp := v["trustPolicyDoc"].(map[string]any)
			for _, p := range tp["trustPolicies"].([]any) {
				p.(map[string]any)["trustStores"] = []string{"ca:certs"}
			}
		case referrer.ArtifactType:
			if !token {
				continue
			}
			if edit != nil {
				edit(v)
			}
		}
		verifiers = append(verifiers, v)
	}
	if len(found) != 2 || !found[signatureType] || !found[referrer.ArtifactType] {
		t.Fatalf("verifiers.yaml holds Verifiers for %v, want the signature and the token", found)
	}
	policy := manifests(t, "policy.yaml", fill)
	if len(policy) != 1 || policy[0].Spec.Type != "config-policy" {
		t.Fatalf("policy.yaml: %+v", policy)
	}
	pp := policy[0].Spec.Parameters
	pp["name"] = "configPolicy"
	if !token {
		delete(pp["artifactVerificationPolicies"].(map[string]any), referrer.ArtifactType)
	}
	cfg := map[string]any{
		"store":    map[string]any{"version": "1.0.0", "plugins": []any{map[string]any{"name": "oras", "useHttp": true}}},
		"policy":   map[string]any{"version": "1.0.0", "plugin": pp},
		"verifier": map[string]any{"version": "1.0.0", "pluginBinDirs": []string{plugins}, "plugins": verifiers},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.CreateTemp(s.work, "ratify-*.json")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := out.Write(b); err != nil {
		t.Fatal(err)
	}
	return out.Name()
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
func manifests(t testing.TB, name string, fill *strings.Replacer) []manifest {
	t.Helper()
	var out []manifest
	for _, doc := range k8sDocs(t, name, fill) {
		var m manifest
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out = append(out, m)
	}
	return out
}

// k8sFile is the file policy/k8s/name.
func k8sFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "policy", "k8s", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// k8sDocs are the YAML documents of policy/k8s/name, with fill applied to its text.
func k8sDocs(t testing.TB, name string, fill *strings.Replacer) []string {
	t.Helper()
	return strings.Split(fill.Replace(string(k8sFile(t, name))), "\n---\n")
}
