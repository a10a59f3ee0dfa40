package rules

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
)

// baselineRules is the baseline's rule list; changing the baseline means changing this list,
// and the mutation table below, on purpose.
var baselineRules = []string{
	"attestation-type",
	"secure-boot",
	"no-boot-debug",
	"no-kernel-debug",
	"no-test-signing",
	"no-flight-signing",
	"no-hypervisor-debug",
	"signingdisabled-true",
	"default-secureboot-keys",
	"debuggers-disabled",
	"db-validated",
	"dbx-validated",
	"pcrs-0-7-attested",
}

func TestBaselineRules(t *testing.T) {
	got := Baseline().Rules()
	if len(got) != len(baselineRules) {
		t.Fatalf("baseline has %d rules, want %d", len(got), len(baselineRules))
	}
	for i, r := range got {
		if r.Name != baselineRules[i] {
			t.Errorf("rule %d = %q, want %q", i, r.Name, baselineRules[i])
		}
	}
	// Two compilations of the embedded file name and digest the same rule set.
	first, second := Baseline(), Baseline()
	if first.Name() != baselineName || first.Digest() != second.Digest() {
		t.Error("Baseline is not stable")
	}
	// The copy users see is the embedded one, and every rule has a comment above it.
	disk, err := os.ReadFile("baseline.cel")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk, BaselineSource()) {
		t.Error("BaselineSource differs from baseline.cel")
	}
	lines := strings.Split(string(disk), "\n")
	for _, r := range got {
		if r.Line < 2 || !strings.HasPrefix(lines[r.Line-2], "#") {
			t.Errorf("rule %q (line %d) has no comment line above it", r.Name, r.Line)
		}
	}
}

// TestBaselineRealSamples checks the baseline against the two real AzureGuest claim sets we
// hold: Microsoft's Windows CVM sample and the Ubuntu CVM token of the AKS sample.
func TestBaselineRealSamples(t *testing.T) {
	for name, claims := range map[string]map[string]any{
		"windows sample claims": realClaims(t),
		"aks linux token":       realJWTClaims(t),
	} {
		t.Run(name, func(t *testing.T) {
			res := Baseline().Evaluate(claims)
			if err := res.Err(); err != nil {
				t.Errorf("baseline rejects a real token: %v; all failures: %+v", err, res.Failed())
			}
			if len(res.Rules) != len(baselineRules) {
				t.Errorf("%d results, want %d", len(res.Rules), len(baselineRules))
			}
		})
	}
}

// baselineMutations each make exactly one baseline rule fail on the real claims.
var baselineMutations = []struct {
	rule   string
	mutate func(c map[string]any)
	reason string
}{
	{"attestation-type", set("x-ms-attestation-type", "sevsnpvm"), ReasonFalse},
	{"attestation-type", del("x-ms-attestation-type"), "no such key: x-ms-attestation-type"},
	{"secure-boot", set("secureboot", false), ReasonFalse},
	{"secure-boot", set("secureboot", "true"), ReasonFalse},
	{"secure-boot", del("secureboot"), "no such key: secureboot"},
	{"no-boot-debug", set("x-ms-azurevm-bootdebug-enabled", true), ReasonFalse},
	{"no-boot-debug", del("x-ms-azurevm-bootdebug-enabled"), "no such key"},
	{"no-kernel-debug", set("x-ms-azurevm-kerneldebug-enabled", true), ReasonFalse},
	{"no-test-signing", set("x-ms-azurevm-testsigning-enabled", true), ReasonFalse},
	{"no-test-signing", del("x-ms-azurevm-testsigning-enabled"), "no such key"},
	{"no-flight-signing", set("x-ms-azurevm-flightsigning-enabled", true), ReasonFalse},
	{"no-hypervisor-debug", set("x-ms-azurevm-hypervisordebug-enabled", true), ReasonFalse},
	{"signingdisabled-true", set("x-ms-azurevm-signingdisabled", false), ReasonFalse},
	{"default-secureboot-keys", set("x-ms-azurevm-default-securebootkeysvalidated", false), ReasonFalse},
	{"default-secureboot-keys", del("x-ms-azurevm-default-securebootkeysvalidated"), "no such key"},
	{"debuggers-disabled", set("x-ms-azurevm-debuggersdisabled", false), ReasonFalse},
	{"debuggers-disabled", del("x-ms-azurevm-debuggersdisabled"), "no such key"},
	{"db-validated", set("x-ms-azurevm-dbvalidated", false), ReasonFalse},
	{"dbx-validated", set("x-ms-azurevm-dbxvalidated", false), ReasonFalse},
	{"dbx-validated", del("x-ms-azurevm-dbxvalidated"), "no such key"},
	{"pcrs-0-7-attested", set("x-ms-azurevm-attested-pcrs", []any{0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0}), ReasonFalse},
	{"pcrs-0-7-attested", set("x-ms-azurevm-attested-pcrs", []any{}), ReasonFalse},
	{"pcrs-0-7-attested", set("x-ms-azurevm-attested-pcrs", []any{7.0, 11.0, 12.0}), ReasonFalse},
	{"pcrs-0-7-attested", set("x-ms-azurevm-attested-pcrs", "0,1,2,3,4,5,6,7"), ReasonError},
	{"pcrs-0-7-attested", del("x-ms-azurevm-attested-pcrs"), "no such key"},
}

func TestBaselineMutations(t *testing.T) {
	for _, tt := range baselineMutations {
		t.Run(tt.rule, func(t *testing.T) {
			claims := realClaims(t)
			tt.mutate(claims)
			res := Baseline().Evaluate(claims)
			failed := res.Failed()
			if len(failed) != 1 || failed[0].Name != tt.rule {
				t.Fatalf("failed rules %+v, want exactly %q", failed, tt.rule)
			}
			if !strings.Contains(failed[0].Reason, tt.reason) {
				t.Errorf("Reason = %q, want it to contain %q", failed[0].Reason, tt.reason)
			}
			var re *RuleError
			if err := res.Err(); !errors.As(err, &re) || re.Rule != tt.rule {
				t.Errorf("Err() = %v, want a *RuleError for %q", err, tt.rule)
			} else if !strings.Contains(err.Error(), `claim rule "`+tt.rule+`" failed`) {
				t.Errorf("Err() = %q", err)
			}
		})
	}
}

func TestBaselineEmptyClaims(t *testing.T) {
	res := Baseline().Evaluate(map[string]any{})
	if len(res.Failed()) != len(baselineRules) {
		t.Errorf("empty claims: %d of %d rules failed", len(res.Failed()), len(baselineRules))
	}
	for _, rr := range res.Failed() {
		if !strings.Contains(rr.Reason, "no such key") {
			t.Errorf("rule %q: %q", rr.Name, rr.Reason)
		}
	}
}

func set(key string, v any) func(map[string]any) {
	return func(c map[string]any) { c[key] = v }
}

func del(key string) func(map[string]any) {
	return func(c map[string]any) { delete(c, key) }
}
