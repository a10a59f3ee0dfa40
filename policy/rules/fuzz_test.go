package rules

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary rule files to Parse: it must never panic, must return either a
// usable set or a *ParseError, and a set it returns must evaluate without panicking.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("baseline.cel"); err == nil {
		f.Add(b)
	}
	for _, s := range []string{
		"",
		"a: true\n",
		"a: true\na: false\n",
		"Bad: true\n",
		"a:\n  claims[\"x\"]\n  == 1\n",
		"  continuation first\n",
		"a: claims[\"secureboot\"] ==\n",
		"a: 1\n",
		"a: [1,2,3].all(x, x in claims[\"x-ms-azurevm-attested-pcrs\"])\r\n# c\r\n",
		"a: claims[?\"x\"].orValue(false)\n",
		"a: \"\"\"\n  multi\n  \"\"\" == \"\"\n",
		"\uFEFFa: true",
		"a: " + strings.Repeat("(", 200) + "true" + strings.Repeat(")", 200) + "\n",
	} {
		f.Add([]byte(s))
	}
	claims := map[string]any{
		"secureboot":                 true,
		"x":                          1.0,
		"x-ms-azurevm-attested-pcrs": []any{0.0, 1.0, 7.0},
		"x-ms-runtime":               map[string]any{"client-payload": map[string]any{"nonce": "n"}},
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		s, err := Parse("fuzz.cel", src)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *ParseError: %v", err, err)
			}
			if s != nil {
				t.Fatal("set returned with an error")
			}
			return
		}
		rs := s.Rules()
		if len(rs) == 0 || len(rs) > MaxRules {
			t.Fatalf("%d rules", len(rs))
		}
		seen := map[string]bool{}
		for _, r := range rs {
			if !nameRE.MatchString(r.Name) || seen[r.Name] || r.Expr == "" || r.Line < 1 {
				t.Fatalf("bad rule %+v", r)
			}
			seen[r.Name] = true
		}
		res := s.Evaluate(claims)
		if len(res.Rules) != len(rs) {
			t.Fatalf("%d results for %d rules", len(res.Rules), len(rs))
		}
		for _, rr := range res.Rules {
			if rr.Passed == (rr.Reason != "") {
				t.Fatalf("inconsistent result %+v", rr)
			}
		}
		if (res.Err() == nil) != (len(res.Failed()) == 0) {
			t.Fatal("Err and Failed disagree")
		}
	})
}
