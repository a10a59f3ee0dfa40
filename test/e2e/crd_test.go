//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestManifestsMatchRatifyCRDs checks the Ratify resources of policy/k8s against the schemas of
// the CRDs that Ratify's chart installs (charts/ratify/crds of the pinned v1.4.6 module, the
// chart policy/k8s/README.md installs): each kind is one of them, its version is served, and every
// field is one the schema declares, with the declared type. The API server would prune a field
// the schema does not declare (a misspelt artifactTypes, say), or kubectl's strict field
// validation refuse it; neither runs here, for want of a cluster.
func TestManifestsMatchRatifyCRDs(t *testing.T) {
	crdDir := filepath.Join(ratifyModule(t), "charts", "ratify", "crds")
	schemas := map[string]map[string]any{} // "group/version kind" -> openAPIV3Schema
	files, _ := filepath.Glob(filepath.Join(crdDir, "*.yaml"))
	for _, f := range files {
		var crd struct {
			Spec struct {
				Group    string
				Names    struct{ Kind string }
				Versions []struct {
					Name   string
					Served bool
					Schema struct {
						OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
					}
				}
			}
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, &crd); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, v := range crd.Spec.Versions {
			if v.Served {
				schemas[crd.Spec.Group+"/"+v.Name+" "+crd.Spec.Names.Kind] = v.Schema.OpenAPIV3Schema
			}
		}
	}
	if len(schemas) == 0 {
		t.Fatalf("no CRD schemas in %s", crdDir)
	}
	// The placeholders README.md step 0 fills in are strings wherever they stand.
	fill := strings.NewReplacer("${ATTESTATION_URL}", "https://x.weu.attest.azure.net", "${KEY_ID}", "https://v.vault.azure.net/keys/k/0123456789abcdef0123456789abcdef",
		"${CERT_SHA256}", strings.Repeat("ab", 32), "${RATIFY_CLIENT_ID}", "00000000-0000-0000-0000-000000000000", "${SIGNING_ROOT_PEM}", "-----BEGIN CERTIFICATE-----")
	checked := map[string]int{}
	for _, name := range []string{"kmp.yaml", "policy.yaml", "store.yaml", "verifiers.yaml"} {
		for _, doc := range k8sDocs(t, name, fill) {
			var obj map[string]any
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			key := fmt.Sprint(obj["apiVersion"], " ", obj["kind"])
			schema, ok := schemas[key]
			if !ok {
				t.Errorf("%s: %s is not a kind and version Ratify's CRDs serve", name, key)
				continue
			}
			for _, p := range mismatches(obj, schema, "") {
				t.Errorf("%s: %s: %s", name, key, p)
			}
			checked[fmt.Sprint(obj["kind"])]++
		}
	}
	for _, kind := range []string{"KeyManagementProvider", "Policy", "Store", "Verifier"} {
		if checked[kind] == 0 {
			t.Errorf("no %s checked", kind)
		}
	}
}

// TestConstraintMatchesRatifyTemplate checks policy/k8s/constraint.yaml against Ratify's
// ConstraintTemplate (library/default/template.yaml of the pinned module), which README.md has
// the operator fetch by commit and check by SHA-256: the pinned hash is that file's, and the
// constraint is of the kind the template creates.
func TestConstraintMatchesRatifyTemplate(t *testing.T) {
	tmpl, err := os.ReadFile(filepath.Join(ratifyModule(t), "library", "default", "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	readme := k8sFile(t, "README.md")
	sum := sha256.Sum256(tmpl)
	if pin := hex.EncodeToString(sum[:]) + "  ratify-template.yaml"; !strings.Contains(string(readme), pin) {
		t.Errorf("policy/k8s/README.md does not pin the template of the Ratify module (%s)", pin)
	}
	var template struct {
		Kind string
		Spec struct {
			CRD struct {
				Spec struct {
					Names struct{ Kind string }
				}
			}
		}
	}
	if err := yaml.Unmarshal(tmpl, &template); err != nil || template.Kind != "ConstraintTemplate" {
		t.Fatalf("template.yaml: %v %+v", err, template)
	}
	var constraint struct{ APIVersion, Kind string }
	if err := yaml.Unmarshal(k8sFile(t, "constraint.yaml"), &constraint); err != nil {
		t.Fatal(err)
	}
	if constraint.APIVersion != "constraints.gatekeeper.sh/v1beta1" || constraint.Kind != template.Spec.CRD.Spec.Names.Kind {
		t.Errorf("constraint.yaml is a %s %s; the template creates constraints.gatekeeper.sh/v1beta1 %s", constraint.APIVersion, constraint.Kind, template.Spec.CRD.Spec.Names.Kind)
	}
}

// TestRatifyChartValues checks the values policy/k8s/README.md sets on `helm install` of Ratify
// against the values.yaml of the chart it installs (charts/ratify of the pinned module): helm
// takes a misspelt key without a word, and the setting is then simply not made.
func TestRatifyChartValues(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(ratifyModule(t), "charts", "ratify", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(b, &values); err != nil {
		t.Fatal(err)
	}
	readme := k8sFile(t, "README.md")
	// The install command: its line and the continuation lines after it.
	var command []string
	lines := strings.Split(string(readme), "\n")
	for i, l := range lines {
		if strings.Contains(l, "helm install ratify ") {
			for j := i; j < len(lines); j++ {
				command = append(command, lines[j])
				if !strings.HasSuffix(strings.TrimSpace(lines[j]), "\\") {
					break
				}
			}
			break
		}
	}
	keys := regexp.MustCompile(`--set '?([A-Za-z0-9_.]+)=`).FindAllStringSubmatch(strings.Join(command, "\n"), -1)
	if len(keys) == 0 {
		t.Fatalf("no --set in the README's helm install of Ratify: %q", command)
	}
	for _, k := range keys {
		v, ok := lookup(values, k[1])
		if !ok {
			t.Errorf("--set %s: not a value of Ratify's chart", k[1])
		} else if _, section := v.(map[string]any); section {
			t.Errorf("--set %s: a section of Ratify's chart values, not a value", k[1])
		}
	}
}

// lookup returns the value at the dotted path of values, and whether there is one (it may be
// null).
func lookup(values map[string]any, path string) (any, bool) {
	var v any = values
	for _, p := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[p]; !ok {
			return nil, false
		}
	}
	return v, true
}

// ratifyModule is the directory of the Ratify module tools/ratify pins, in the module cache.
func ratifyModule(t *testing.T) string {
	t.Helper()
	r := newRunner(t)
	r.need("ratify") // the module is in the module cache once tools/ratify is built
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/ratify-project/ratify")
	cmd.Dir = filepath.Join("..", "..", "tools", "ratify")
	out, err := cmd.Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("locating the Ratify module: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// mismatches lists where v does not fit the OpenAPI v3 schema s of a CRD: a field s does not
// declare (unless it keeps unknown fields), or a value of another type.
func mismatches(v any, s map[string]any, path string) []string {
	if path == "" {
		path = "."
	}
	var out []string
	typ, _ := s["type"].(string)
	switch x := v.(type) {
	case map[string]any:
		if typ != "object" {
			return []string{fmt.Sprintf("%s is an object, the schema says %s", path, typ)}
		}
		if keep, _ := s["x-kubernetes-preserve-unknown-fields"].(bool); keep {
			return nil
		}
		props, _ := s["properties"].(map[string]any)
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if path == "." && k == "metadata" {
				continue // ObjectMeta, which the API server checks itself
			}
			ps, ok := props[k].(map[string]any)
			if !ok {
				out = append(out, fmt.Sprintf("%s%s is not a field of the schema", strings.TrimSuffix(path, ".")+".", k))
				continue
			}
			out = append(out, mismatches(x[k], ps, strings.TrimSuffix(path, ".")+"."+k)...)
		}
	case []any:
		if typ != "array" {
			return []string{fmt.Sprintf("%s is a list, the schema says %s", path, typ)}
		}
		items, _ := s["items"].(map[string]any)
		for i, e := range x {
			out = append(out, mismatches(e, items, fmt.Sprintf("%s[%d]", path, i))...)
		}
	case string:
		if typ != "string" {
			out = append(out, fmt.Sprintf("%s is a string, the schema says %s", path, typ))
		}
	case bool:
		if typ != "boolean" {
			out = append(out, fmt.Sprintf("%s is a boolean, the schema says %s", path, typ))
		}
	case float64:
		if typ != "integer" && typ != "number" {
			out = append(out, fmt.Sprintf("%s is a number, the schema says %s", path, typ))
		}
	}
	return out
}
