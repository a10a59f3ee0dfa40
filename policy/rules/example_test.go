package rules_test

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/attested-kv/attested-kv/policy/rules"
)

// A rule file is parsed and compiled once, then evaluated against each token's claims.
func ExampleParse() {
	src := []byte(`# Only Linux build machines with Secure Boot on.
secure-boot: claims["secureboot"] == true
linux: claims["x-ms-azurevm-ostype"] == "Linux"
recent-os: claims["x-ms-azurevm-osversion-major"] >= 22
`)
	set, err := rules.Parse("build-vms.cel", src)
	if err != nil {
		fmt.Println(err)
		return
	}
	var claims map[string]any
	_ = json.Unmarshal([]byte(`{
		"secureboot": true,
		"x-ms-azurevm-ostype": "Linux",
		"x-ms-azurevm-osversion-major": 18
	}`), &claims)

	res := set.Evaluate(claims)
	for _, r := range res.Rules {
		if r.Passed {
			fmt.Println(r.Name, "passed")
		} else {
			fmt.Println(r.Name, "failed:", r.Reason)
		}
	}
	var ruleErr *rules.RuleError
	if err := res.Err(); errors.As(err, &ruleErr) {
		fmt.Println("rejected by", ruleErr.Rule+":", err)
	}
	// Output:
	// secure-boot passed
	// linux passed
	// recent-os failed: evaluated to false
	// rejected by recent-os: claim rule "recent-os" failed: evaluated to false
}

// A rule that refers to a claim the token lacks fails closed, with the rule's name.
func ExampleSet_Evaluate() {
	set, _ := rules.Parse("nonce.cel", []byte(
		`nonce: claims["x-ms-runtime"]["client-payload"]["nonce"] == "MTIzNA=="`+"\n"))
	res := set.Evaluate(map[string]any{"x-ms-runtime": map[string]any{"keys": []any{}}})
	fmt.Println(res.Err())
	// Output:
	// claim rule "nonce" failed: evaluation error: no such key: client-payload
}

// Errors in a rule file name the file, the line and the rule.
func ExampleParse_error() {
	_, err := rules.Parse("policy.cel", []byte("secure-boot: claims[\"secureboot\"] == true\nos: size(claims[\"x-ms-azurevm-ostype\"])\n"))
	fmt.Println(err)
	fmt.Println(errors.Is(err, rules.ErrNotBool))
	// Output:
	// claim rules policy.cel:2: rule "os": expression is not a bool: it has type int
	// true
}

// The built-in baseline is what the plugin and the verifiers apply when no rule file is set.
func ExampleBaseline() {
	for _, r := range rules.Baseline().Rules() {
		fmt.Println(r.Name)
	}
	// Output:
	// attestation-type
	// secure-boot
	// no-boot-debug
	// no-kernel-debug
	// no-test-signing
	// no-flight-signing
	// no-hypervisor-debug
	// signingdisabled-true
	// default-secureboot-keys
	// debuggers-disabled
	// db-validated
	// dbx-validated
	// pcrs-0-7-attested
}
