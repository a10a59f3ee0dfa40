package maa

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// sampleClaims is an incoming claim set like the one serviceClaims builds for a Linux guest.
func sampleClaims() []policyClaim {
	return incomingClaims(map[string]any{
		"secureboot":                   true,
		"x-ms-azurevm-ostype":          "Linux",
		"x-ms-azurevm-osdistro":        "Ubuntu",
		"x-ms-azurevm-osversion-major": int64(22),
		"x-ms-azurevm-attested-pcrs":   []int64{0, 1, 2, 3, 4, 5, 6, 7},
		"x-ms-azurevm-dbvalidated":     false,
	})
}

func TestParsePolicyAccepts(t *testing.T) {
	for _, text := range []string{
		DefaultPolicy,
		"version=1.0; authorizationrules { => permit(); }; issuancerules {};",
		"version= 1.0;\nauthorizationrules\n{\n\t=> permit();\n};\nissuancerules\n{\n};",
		"version=1.2; authorizationrules { => permit(); };",
		"version=1.1; authorizationrules { }; issuancerules { };",
		`version=1.0;
authorizationrules {
  [type=="secureboot", issuer=="AttestationService", value==true] && [type=="x-ms-azurevm-osversion-major", value>=20] => permit();
  c:[type=="x-ms-azurevm-dbvalidated", value!=true] => deny();
};
issuancerules {
  c:[type=="x-ms-azurevm-osdistro"] => issue(type="distro", value=c.value);
  c:[type=="secureboot"] => issue(claim=c);
  F1:[type=="a"] && C2:[type=="b", value==F1.value] => add(claim=C2);
  => issue(type="quoted \"name\"", value=-5);
};`,
	} {
		if _, err := parsePolicy(text); err != nil {
			t.Errorf("parsePolicy(%q): %v", text, err)
		}
	}
}

func TestParsePolicyRefuses(t *testing.T) {
	for _, tc := range []struct{ text, msg string }{
		{"", `expected "version"`},
		{"version=2.0; authorizationrules { => permit(); };", "unsupported policy version"},
		{"version=1.0;", "no authorizationrules"},
		{"version=1.0; authorizationrules { => permit(); }", `expected ";"`},
		{"version=1.0; authorizationrules { => permit() };", `expected ";"`},
		{"version=1.0; authorizationrules { => permit(); ", "unterminated"},
		{"version=1.0; authorizationrules { => issue(type=\"x\", value=1); };", "only in issuancerules"},
		{"version=1.0; authorizationrules { => permit(); }; issuancerules { => permit(); };", "only in authorizationrules"},
		{"version=1.0; issuancerules { }; authorizationrules { => permit(); };", "before issuancerules"},
		{"version=1.0; authorizationrules { => permit(); }; authorizationrules { => permit(); };", "once"},
		{"version=1.0; authorizationrules { c:[type==\"x\"] && c:[type==\"y\"] => permit(); };", "bound twice"},
		{"version=1.0; authorizationrules { [type==\"x\", value==d.value] => permit(); };", "not bound"},
		{"version=1.0; authorizationrules { [type<\"x\"] => permit(); };", "integers only"},
		{"version=1.0; authorizationrules { [type==1] => permit(); };", "string"},
		{"version=1.0; authorizationrules { [type==\"x\", value<\"5\"] => deny(); => permit(); };", "integers only"},
		{"version=1.0; authorizationrules { => permit(); }; issuancerules { => issue(type=\"\", value=1); };", "non-empty string"},
		{"version=1.0; authorizationrules { => permit(); }; issuancerules { => issue(type=\"x-ms-runtime\", value=\"x\"); };", "service"},
		{"version=1.0; authorizationrules { [type==\"x\", type==\"y\"] => permit(); };", "twice"},
		{"version=1.0; authorizationrules { [kind==\"x\"] => permit(); };", "expected type, issuer or value"},
		{"version=1.0; authorizationrules { [type==\"x] => permit(); };", "unterminated string"},
		{"version=1.0; authorizationrules { [type==\"x\\n\"] => permit(); };", "escapes"},
		{"version=1.0; authorizationrules { [type==\"x\", value==1.5] => permit(); };", "not an integer"},
		{"version=1.0; authorizationrules { => allow(); };", "unknown action"},
		{"version=1.0; authorizationrules { => permit(); }; issuancerules { => issueproperty(type=\"x\", value=1); };", "not supported"},
		{"version=1.0; authorizationrules { => permit(); }; issuancerules { => issue(type=\"x-ms-azurevm-vmid\", value=\"x\"); };", "service"},
		{"version=1.0; authorizationrules { => permit(); }; issuancerules { => issue(claim=c); };", "bound"},
		{"version=1.0; authorizationrules { => permit(); } ; junk { };", "unknown section"},
		{"version=1.0; authorizationrules { => permit(); }; issuancerules { c:[type==\"x\"] => issue(type=\"y\", value=JmesPath(c.value, \"a\")); };", "function JmesPath() is not supported"},
		{"version=1.0; authorizationrules { => permit(); }; # comment", "unexpected character"},
		{"version=1.0; authorizationrules { => permit(); }; / comment", "unexpected character '/'"},
		{"version=1.0; authorizationrules { // => permit(); };", "unterminated rule block"},
		{"version=1.0;\xff", "UTF-8"},
		{strings.Repeat(" ", maxPolicyBytes+1), "at most"},
	} {
		_, err := parsePolicy(tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("parsePolicy(%.60q) = %v, want an error containing %q", tc.text, err, tc.msg)
		}
	}
}

func TestPolicyEvaluate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy string
		denied bool
		issued []policyClaim
	}{
		{name: "default permits", policy: DefaultPolicy},
		{name: "no rule permits", policy: "version=1.0; authorizationrules { };", denied: true},
		{name: "condition not met", policy: `version=1.0; authorizationrules { [type=="secureboot", value==false] => permit(); };`, denied: true},
		{name: "condition met", policy: `version=1.0; authorizationrules { [type=="secureboot", value==true] => permit(); };`},
		{name: "issuer must match", policy: `version=1.0; authorizationrules { [type=="secureboot", issuer=="CustomClaim"] => permit(); };`, denied: true},
		{name: "deny wins over an earlier permit", policy: `version=1.0; authorizationrules { => permit(); [type=="x-ms-azurevm-dbvalidated", value==false] => deny(); };`, denied: true},
		{name: "deny that does not match", policy: `version=1.0; authorizationrules { [type=="secureboot", value==false] => deny(); => permit(); };`},
		{name: "type mismatch is not equal", policy: `version=1.0; authorizationrules { [type=="x-ms-azurevm-osversion-major", value=="22"] => permit(); };`, denied: true},
		{name: "integer ordering", policy: `version=1.0; authorizationrules { [type=="x-ms-azurevm-osversion-major", value>20] && [type=="x-ms-azurevm-osversion-major", value<=22] => permit(); };`},
		{name: "not equal denies", policy: `version=1.0; authorizationrules { [type=="x-ms-azurevm-dbvalidated", value!=true] => deny(); => permit(); };`, denied: true},
		{name: "not equal that does not hold", policy: `version=1.0; authorizationrules { [type=="secureboot", value!=true] => deny(); => permit(); };`},
		{name: "less than is strict", policy: `version=1.0; authorizationrules { [type=="x-ms-azurevm-osversion-major", value<22] => permit(); };`, denied: true},
		{name: "missing claim", policy: `version=1.0; authorizationrules { [type=="x-ms-isolation-tee"] => permit(); };`, denied: true},
		{name: "multi-valued claim", policy: `version=1.0; authorizationrules { [type=="x-ms-azurevm-attested-pcrs", value==7] => permit(); };`},
		{name: "add is visible to later rules", policy: `version=1.0; authorizationrules {
			c:[type=="x-ms-azurevm-osdistro"] => add(type="distro", value=c.value);
			[type=="distro", issuer=="AttestationPolicy", value=="Ubuntu"] => permit(); };`},
		{name: "cross-condition reference", policy: `version=1.0; authorizationrules { => permit(); }; issuancerules {
			a:[type=="x-ms-azurevm-ostype"] && b:[type=="x-ms-azurevm-ostype", value==a.value] => issue(type="os", value=b.value); };`,
			issued: []policyClaim{{Type: "os", Issuer: issuerPolicy, Value: "Linux"}}},
		{name: "issue per binding", policy: `version=1.0; authorizationrules { => permit(); }; issuancerules {
			c:[type=="x-ms-azurevm-attested-pcrs", value>5] => issue(type="p", value=c.value); };`,
			issued: []policyClaim{{Type: "p", Issuer: issuerPolicy, Value: int64(6)}, {Type: "p", Issuer: issuerPolicy, Value: int64(7)}}},
		{name: "issue copies a claim", policy: `version=1.0; authorizationrules { => permit(); }; issuancerules {
			c:[type=="secureboot"] => issue(claim=c); };`,
			issued: []policyClaim{{Type: "secureboot", Issuer: issuerPolicy, Value: true}}},
		{name: "issued claims feed later issuance rules", policy: `version=1.0; authorizationrules { => permit(); }; issuancerules {
			=> issue(type="a", value=1);
			c:[type=="a"] => issue(type="b", value=c.value); };`,
			issued: []policyClaim{{Type: "a", Issuer: issuerPolicy, Value: int64(1)}, {Type: "b", Issuer: issuerPolicy, Value: int64(1)}}},
		{name: "add in issuance rules feeds later rules but is not issued", policy: `version=1.0; authorizationrules { => permit(); }; issuancerules {
			=> add(type="a", value=1);
			c:[type=="a"] => issue(type="b", value=c.value); };`,
			issued: []policyClaim{{Type: "b", Issuer: issuerPolicy, Value: int64(1)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pol, err := parsePolicy(tc.policy)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			issued, err := pol.evaluate(sampleClaims())
			if tc.denied {
				if !errors.Is(err, errPolicyDenied) {
					t.Fatalf("evaluate = %v, %v; want denied", issued, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("evaluate: %v", err)
			}
			if !reflect.DeepEqual(issued, tc.issued) {
				t.Errorf("issued = %#v, want %#v", issued, tc.issued)
			}
		})
	}
}

// TestPolicyLineComments checks that "//" comments, which published MAA policies use
// (Constellation's AzureGuest policy comments out its secureboot rule with one), are skipped to
// the end of the line outside strings: each policy decides and issues exactly as the same policy
// written without its comments.
func TestPolicyLineComments(t *testing.T) {
	healthy := func() []policyClaim {
		return incomingClaims(map[string]any{
			"secureboot":                                   true,
			"x-ms-azurevm-dbvalidated":                     true,
			"x-ms-azurevm-dbxvalidated":                    true,
			"x-ms-azurevm-signingdisabled":                 true,
			"x-ms-azurevm-debuggersdisabled":               true,
			"x-ms-azurevm-default-securebootkeysvalidated": true,
		})
	}
	noSecureBoot := func() []policyClaim {
		c := healthy()
		for i := range c {
			if c[i].Type == "secureboot" {
				c[i].Value = false
			}
		}
		return c
	}
	for _, tc := range []struct {
		name, commented, plain string
	}{
		{
			name: "rule commented out, as in Constellation's policy",
			commented: `version= 1.0;
authorizationrules
{
    [type=="x-ms-azurevm-default-securebootkeysvalidated", value==false] => deny();
    [type=="x-ms-azurevm-debuggersdisabled", value==false] => deny();
    // Secure Boot is left to the relying party here.
    //[type=="secureboot", value==false] => deny();
    [type=="x-ms-azurevm-signingdisabled", value==false] => deny();
    [type=="x-ms-azurevm-dbvalidated", value==false] => deny();
    [type=="x-ms-azurevm-dbxvalidated", value==false] => deny();
    => permit();
};
issuancerules
{
};`,
			plain: `version= 1.0;
authorizationrules
{
    [type=="x-ms-azurevm-default-securebootkeysvalidated", value==false] => deny();
    [type=="x-ms-azurevm-debuggersdisabled", value==false] => deny();
    [type=="x-ms-azurevm-signingdisabled", value==false] => deny();
    [type=="x-ms-azurevm-dbvalidated", value==false] => deny();
    [type=="x-ms-azurevm-dbxvalidated", value==false] => deny();
    => permit();
};
issuancerules
{
};`,
		},
		{
			name:      "comments after tokens, holding policy syntax, and at the end without a newline",
			commented: "version=1.0; // v1\nauthorizationrules { // \"unterminated }; deny();\n=> permit(); // =>\n}; // end\nissuancerules { => issue(type=\"t\", value=1); }; //",
			plain:     "version=1.0; authorizationrules { => permit(); }; issuancerules { => issue(type=\"t\", value=1); };",
		},
		{
			name:      "// inside strings is not a comment",
			commented: `version=1.0; authorizationrules { => permit(); }; issuancerules { => issue(type="https://example.com//claim", value="a // b"); // c` + "\n" + `};`,
			plain:     `version=1.0; authorizationrules { => permit(); }; issuancerules { => issue(type="https://example.com//claim", value="a // b"); };`,
		},
		{
			name:      "CRLF line ends",
			commented: "version=1.0;\r\nauthorizationrules {\r\n// c:[type==\"secureboot\", value==true] => permit();\r\n[type==\"x-ms-azurevm-dbvalidated\", value==true] => permit(); // db\r\n};\r\n",
			plain:     "version=1.0;\r\nauthorizationrules {\r\n[type==\"x-ms-azurevm-dbvalidated\", value==true] => permit();\r\n};\r\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			commented, err := parsePolicy(tc.commented)
			if err != nil {
				t.Fatalf("parse with comments: %v", err)
			}
			plain, err := parsePolicy(tc.plain)
			if err != nil {
				t.Fatalf("parse without comments: %v", err)
			}
			if len(commented.authorization) != len(plain.authorization) || len(commented.issuance) != len(plain.issuance) {
				t.Fatalf("%d+%d rules with comments, %d+%d without", len(commented.authorization), len(commented.issuance), len(plain.authorization), len(plain.issuance))
			}
			for name, claims := range map[string]func() []policyClaim{"healthy": healthy, "no secure boot": noSecureBoot, "sample": sampleClaims} {
				gotIssued, gotErr := commented.evaluate(claims())
				wantIssued, wantErr := plain.evaluate(claims())
				if errors.Is(gotErr, errPolicyDenied) != errors.Is(wantErr, errPolicyDenied) || (gotErr == nil) != (wantErr == nil) || !reflect.DeepEqual(gotIssued, wantIssued) {
					t.Errorf("%s claims: with comments %v, %v; without %v, %v", name, gotIssued, gotErr, wantIssued, wantErr)
				}
			}
		})
	}
	// The commented-out rule is what lets a VM without Secure Boot through.
	pol, err := parsePolicy(`version=1.0; authorizationrules { // [type=="secureboot", value==false] => deny();` + "\n" + `=> permit(); };`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pol.evaluate(noSecureBoot()); err != nil {
		t.Errorf("a commented-out deny() applied: %v", err)
	}
}

func TestMergeIssuedClaims(t *testing.T) {
	token := map[string]any{"secureboot": true, "x-ms-azurevm-attested-pcrs": []int64{0, 7}}
	if err := mergeIssuedClaims(token, []policyClaim{
		{Type: "secureboot", Value: true},                     // a copy of the service claim: no-op
		{Type: "x-ms-azurevm-attested-pcrs", Value: int64(0)}, // copies of the array's values
		{Type: "x-ms-azurevm-attested-pcrs", Value: int64(7)},
		{Type: "custom", Value: "a"},
		{Type: "custom", Value: "b"},
	}); err != nil {
		t.Fatal(err)
	}
	if token["secureboot"] != true || !reflect.DeepEqual(token["custom"], []any{"a", "b"}) {
		t.Errorf("token = %v", token)
	}
	// A policy must not change a service claim (e.g. by add() then issue(claim=...)).
	if err := mergeIssuedClaims(token, []policyClaim{{Type: "secureboot", Value: false}}); err == nil {
		t.Error("a policy overwrote the secureboot claim")
	}
	if err := mergeIssuedClaims(map[string]any{}, []policyClaim{{Type: "x-ms-azurevm-vmid", Value: "x"}}); err == nil {
		t.Error("a policy added a service claim the token did not have")
	}
}

func TestPolicyEvaluationIsBounded(t *testing.T) {
	// Sixteen unrelated conditions over a large claim set would be 40^16 bindings.
	conds := make([]string, 0, maxConditions)
	for i := range maxConditions {
		conds = append(conds, string(rune('a'+i))+`:[type=="x-ms-azurevm-attested-pcrs"]`)
	}
	pol, err := parsePolicy(`version=1.0; authorizationrules { => permit(); }; issuancerules { ` + strings.Join(conds, " && ") + ` => issue(type="n", value=a.value); };`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pol.evaluate(sampleClaims()); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("evaluate = %v, want the step limit", err)
	}
}
