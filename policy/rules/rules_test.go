package rules

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	realClaimsPath = "../../testdata/real/maa-azureguest-sample-claims.json"
	realJWTPath    = "../../testdata/real/maa-azureguest-aks-sample.jwt"
)

// realClaims returns a fresh copy of the real AzureGuest sample claim set (Windows CVM).
func realClaims(t testing.TB) map[string]any {
	t.Helper()
	b, err := os.ReadFile(realClaimsPath)
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// realJWTClaims returns the claim set of the real AzureGuest token from the AKS sample
// (Ubuntu CVM), decoded without checking its signature (its keys are not available offline).
func realJWTClaims(t testing.TB) map[string]any {
	t.Helper()
	b, err := os.ReadFile(realJWTPath)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(strings.TrimSpace(string(b)), ".")
	if len(parts) != 3 {
		t.Fatalf("%s: want a JWS compact serialization", realJWTPath)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name     string
		src      string
		want     error
		wantLine int
		wantRule string
		wantMsg  string
	}{
		{"empty file", "", ErrNoRules, 0, "", "no rules"},
		{"only comments", "# nothing\n\n   # still nothing\n", ErrNoRules, 0, "", ""},
		{"duplicate name", "a: true\nb: true\na: false\n", ErrDuplicateRule, 3, "a", "first defined on line 1"},
		{"uppercase name", "Secure-Boot: true\n", ErrInvalidName, 1, "", `"Secure-Boot"`},
		{"leading hyphen", "-a: true\n", ErrInvalidName, 1, "", ""},
		{"underscore", "secure_boot: true\n", ErrInvalidName, 1, "", ""},
		{"space in name", "secure boot: true\n", ErrInvalidName, 1, "", ""},
		{"name too long", strings.Repeat("a", 64) + ": true\n", ErrInvalidName, 1, "", ""},
		{"empty name", ": true\n", ErrInvalidName, 1, "", ""},
		{"missing colon", "# c\nsecure-boot claims[\"secureboot\"] == true\n", ErrSyntax, 2, "", "name: expression"},
		{"empty expression", "a: true\nb:\n", ErrEmptyExpression, 2, "b", ""},
		{"empty expression blank", "b:   \t\n\nc: true\n", ErrEmptyExpression, 1, "b", ""},
		{"continuation first", "  claims[\"secureboot\"]\na: true\n", ErrSyntax, 1, "", "continuation"},
		// The continuation of a commented-out rule would turn secure-boot into an OR.
		{"continuation after comment", "secure-boot: claims[\"secureboot\"] == true\n" +
			"# windows-ok: claims[\"x-ms-azurevm-is-windows\"]\n" +
			"    || claims[\"x-ms-azurevm-ostype\"] == \"Windows\"\n",
			ErrSyntax, 3, "secure-boot", "continuation line after the comment on line 2, which ends the rule"},
		{"continuation after blank line", "a: true\n\n  || false\n", ErrSyntax, 3, "a", "after the blank line on line 2"},
		{"continuation after blank and indented comment", "a: true\n\t\n  # c\n  || false\n", ErrSyntax, 4, "a", "after the blank line on line 2"},
		{"continuation after comment with CRLF", "a: [1].all(p,\r\n  p > 0)\r\n#b: true\r\n  && false\r\n", ErrSyntax, 4, "a", "comment on line 3"},
		{"compile error", "a: true\nbad: claims[\"secureboot\"] ==\n", ErrCompile, 2, "bad", "Syntax error"},
		{"undeclared variable", "bad: token[\"secureboot\"] == true\n", ErrCompile, 1, "bad", "undeclared reference"},
		{"unknown function", "bad: frobnicate(claims)\n", ErrCompile, 1, "bad", ""},
		{"non-bool int", "n: 1 + 2\n", ErrNotBool, 1, "n", "int"},
		{"non-bool string", "s: \"yes\"\n", ErrNotBool, 1, "s", "string"},
		{"non-bool list", "l: [true]\n", ErrNotBool, 1, "l", "list"},
		{"invalid utf-8", "a: \"\xff\" == \"\"\n", ErrSyntax, 0, "", "UTF-8"},
		{"oversized file", "a: true\n#" + strings.Repeat("x", MaxFileSize) + "\n", ErrTooLarge, 0, "", "bytes"},
		{"too many rules", manyRules(MaxRules + 1), ErrTooLarge, MaxRules + 1, "r256", "rules"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse("test.cel", []byte(tt.src))
			if err == nil {
				t.Fatalf("Parse succeeded with %d rules, want %v", len(s.Rules()), tt.want)
			}
			if s != nil {
				t.Errorf("Parse returned a set along with error %v", err)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("error %q does not wrap %q", err, tt.want)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *ParseError", err)
			}
			if pe.File != "test.cel" || pe.Line != tt.wantLine || pe.Rule != tt.wantRule {
				t.Errorf("ParseError at %s:%d rule %q, want test.cel:%d rule %q", pe.File, pe.Line, pe.Rule, tt.wantLine, tt.wantRule)
			}
			msg := err.Error()
			if !strings.Contains(msg, "test.cel") {
				t.Errorf("message %q does not name the file", msg)
			}
			if tt.wantRule != "" && !strings.Contains(msg, `"`+tt.wantRule+`"`) {
				t.Errorf("message %q does not name rule %q", msg, tt.wantRule)
			}
			if !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("message %q does not contain %q", msg, tt.wantMsg)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("message %q spans lines", msg)
			}
		})
	}
}

func manyRules(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString("r")
		b.WriteString(strconv.Itoa(i))
		b.WriteString(": true\n")
	}
	return b.String()
}

func TestParseLimitsAccepted(t *testing.T) {
	// Exactly MaxRules rules and a name of MaxNameLen characters are fine.
	if _, err := Parse("max.cel", []byte(manyRules(MaxRules))); err != nil {
		t.Errorf("MaxRules rules: %v", err)
	}
	if _, err := Parse("long.cel", []byte(strings.Repeat("a", MaxNameLen)+": true\n")); err != nil {
		t.Errorf("name of MaxNameLen: %v", err)
	}
	// A file of exactly MaxFileSize bytes is accepted.
	src := "a: true\n#"
	src += strings.Repeat("x", MaxFileSize-len(src))
	if _, err := Parse("size.cel", []byte(src)); err != nil {
		t.Errorf("file of MaxFileSize bytes: %v", err)
	}
}

func TestParseFormat(t *testing.T) {
	src := "\uFEFF# leading comment\r\n" +
		"\r\n" +
		"secure-boot: claims[\"secureboot\"] == true\r\n" +
		"pcrs: [0, 1].all(p,\r\n" +
		"    # a comment inside a continued rule is skipped\r\n" +
		"\tp in claims[\"x-ms-azurevm-attested-pcrs\"])   \r\n" +
		"split:\n" +
		"  claims[\"x-ms-ver\"]\n" +
		"  == \"1.0\"\n" +
		"spaced-name : true\n" +
		"colon-in-expr: {\"a\": true}[\"a\"]\n"
	s, err := Parse("format.cel", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []Rule{
		{Name: "secure-boot", Expr: `claims["secureboot"] == true`, Line: 3},
		{Name: "pcrs", Expr: "[0, 1].all(p,\np in claims[\"x-ms-azurevm-attested-pcrs\"])", Line: 4},
		{Name: "split", Expr: "claims[\"x-ms-ver\"]\n== \"1.0\"", Line: 7},
		{Name: "spaced-name", Expr: "true", Line: 10},
		{Name: "colon-in-expr", Expr: `{"a": true}["a"]`, Line: 11},
	}
	got := s.Rules()
	if len(got) != len(want) {
		t.Fatalf("got %d rules %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("rule %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if s.Name() != "format.cel" {
		t.Errorf("Name() = %q", s.Name())
	}
	res := s.Evaluate(realClaims(t))
	if err := res.Err(); err != nil {
		t.Errorf("Evaluate: %v (%+v)", err, res.Rules)
	}
	// Rules returns a copy.
	got[0].Name = "changed"
	if s.Rules()[0].Name != "secure-boot" {
		t.Error("Rules exposes the set's internal slice")
	}
}

func TestDigest(t *testing.T) {
	parse := func(src string) *Set {
		t.Helper()
		s, err := Parse("d.cel", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	base := parse("a: true\nb: 1 < 2\n")
	if !strings.HasPrefix(base.Digest(), "sha256:") || len(base.Digest()) != len("sha256:")+64 {
		t.Fatalf("Digest() = %q", base.Digest())
	}
	same := []string{
		"# comment\n\na: true\r\n\n# more\nb: 1 < 2",
		"a:    true   \nb:\t1 < 2\n",
		"a: true\nb:\n    1 < 2\n",
	}
	for _, src := range same {
		if d := parse(src).Digest(); d != base.Digest() {
			t.Errorf("layout change altered digest: %q -> %s, want %s", src, d, base.Digest())
		}
	}
	different := []string{
		"a: true\nb: 1 <= 2\n", // expression
		"a: true\nc: 1 < 2\n",  // name
		"b: 1 < 2\na: true\n",  // order
		"a: true\n",            // a rule fewer
	}
	for _, src := range different {
		if d := parse(src).Digest(); d == base.Digest() {
			t.Errorf("%q has the same digest as the base", src)
		}
	}
	if r := base.Evaluate(nil); r.Digest != base.Digest() || r.Set != "d.cel" {
		t.Errorf("Result carries Set %q Digest %q", r.Set, r.Digest)
	}
}

func TestEvaluate(t *testing.T) {
	claims := map[string]any{
		"secureboot":                     true,
		"x-ms-ver":                       "1.0",
		"x-ms-azurevm-osversion-major":   float64(22),
		"x-ms-azurevm-osdistro":          "Ubuntu",
		"x-ms-azurevm-attested-pcrs":     []any{float64(0), float64(1), float64(7)},
		"x-ms-azurevm-kerneldebug-value": "yes",
		"x-ms-runtime": map[string]any{
			"client-payload": map[string]any{"nonce": "MTIzNA=="},
			"keys":           []any{map[string]any{"kid": "TpmEphemeralEncryptionKey"}},
		},
		"go-int": 5,
	}
	tests := []struct {
		name       string
		expr       string
		wantPass   bool
		wantReason string // substring
	}{
		{"bool true", `claims["secureboot"] == true`, true, ""},
		{"bool bare", `claims["secureboot"]`, true, ""},
		{"false", `claims["secureboot"] == false`, false, ReasonFalse},
		{"string equality", `claims["x-ms-ver"] == "1.0"`, true, ""},
		{"number vs double literal", `claims["x-ms-azurevm-osversion-major"] >= 20.0`, true, ""},
		{"number vs int literal", `claims["x-ms-azurevm-osversion-major"] >= 20`, true, ""},
		{"number equals int literal", `claims["x-ms-azurevm-osversion-major"] == 22`, true, ""},
		{"int conversion", `int(claims["x-ms-azurevm-osversion-major"]) == 22`, true, ""},
		{"number too low", `claims["x-ms-azurevm-osversion-major"] >= 24`, false, ReasonFalse},
		{"go int claim", `claims["go-int"] == 5 && claims["go-int"] < 5.5`, true, ""},
		{"missing claim", `claims["x-ms-azurevm-bootdebug-enabled"] == false`, false, "no such key: x-ms-azurevm-bootdebug-enabled"},
		{"missing claim negated", `!(claims["x-ms-azurevm-bootdebug-enabled"] == true)`, false, "no such key"},
		{"missing nested claim", `claims["x-ms-runtime"]["client-payload"]["binding"] == "x"`, false, "no such key: binding"},
		{"optional missing claim", `claims[?"x-ms-absent"].orValue(false) == false`, true, ""},
		{"has on missing claim", `!has(claims.absent)`, true, ""},
		{"wrong type comparison", `claims["x-ms-ver"] > 1`, false, "no such overload"},
		{"wrong type equality", `claims["secureboot"] == "true"`, false, ReasonFalse},
		{"non-bool result", `claims["x-ms-azurevm-kerneldebug-value"]`, false, ReasonNotBool + "string (yes)"},
		{"non-bool number", `claims["x-ms-azurevm-osversion-major"]`, false, ReasonNotBool + "double (22)"},
		{"nested map", `claims["x-ms-runtime"]["client-payload"]["nonce"] == "MTIzNA=="`, true, ""},
		{"nested list of maps", `claims["x-ms-runtime"]["keys"].exists(k, k["kid"] == "TpmEphemeralEncryptionKey")`, true, ""},
		{"list membership", `7 in claims["x-ms-azurevm-attested-pcrs"]`, true, ""},
		{"list membership double", `1.0 in claims["x-ms-azurevm-attested-pcrs"]`, true, ""},
		{"list non-membership", `4 in claims["x-ms-azurevm-attested-pcrs"]`, false, ReasonFalse},
		{"list all", `[0, 1, 7].all(p, p in claims["x-ms-azurevm-attested-pcrs"])`, true, ""},
		{"list size", `size(claims["x-ms-azurevm-attested-pcrs"]) == 3`, true, ""},
		{"strings ext", `claims["x-ms-azurevm-osdistro"].lowerAscii() == "ubuntu"`, true, ""},
		{"division by zero", `1 / 0 == 1`, false, "division by zero"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse("eval.cel", []byte("the-rule: "+tt.expr+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			res := s.Evaluate(claims)
			if len(res.Rules) != 1 {
				t.Fatalf("got %d results", len(res.Rules))
			}
			rr := res.Rules[0]
			if rr.Name != "the-rule" || rr.Line != 1 {
				t.Errorf("result names %q line %d", rr.Name, rr.Line)
			}
			if rr.Passed != tt.wantPass {
				t.Fatalf("Passed = %v (reason %q), want %v", rr.Passed, rr.Reason, tt.wantPass)
			}
			err = res.Err()
			if tt.wantPass {
				if rr.Reason != "" || err != nil {
					t.Errorf("passing rule has reason %q, Err %v", rr.Reason, err)
				}
				return
			}
			if !strings.Contains(rr.Reason, tt.wantReason) {
				t.Errorf("Reason = %q, want it to contain %q", rr.Reason, tt.wantReason)
			}
			var re *RuleError
			if !errors.As(err, &re) {
				t.Fatalf("Err() = %v, not a *RuleError", err)
			}
			if re.Rule != "the-rule" || re.Reason != rr.Reason {
				t.Errorf("RuleError = %+v", re)
			}
			if want := `claim rule "the-rule" failed: `; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("Err() = %q, want prefix %q", err, want)
			}
		})
	}
}

func TestEvaluateAllRules(t *testing.T) {
	s, err := Parse("all.cel", []byte("ok: true\nfirst: false\nmissing: claims[\"gone\"]\nlast-ok: 1 < 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	res := s.Evaluate(map[string]any{})
	if len(res.Rules) != 4 {
		t.Fatalf("got %d results, want every rule", len(res.Rules))
	}
	failed := res.Failed()
	if len(failed) != 2 || failed[0].Name != "first" || failed[1].Name != "missing" {
		t.Errorf("Failed() = %+v", failed)
	}
	if !res.Rules[3].Passed {
		t.Error("rule after the failures was not evaluated")
	}
	if got, want := res.Err().Error(), `claim rule "first" failed: evaluated to false`; got != want {
		t.Errorf("Err() = %q, want %q", got, want)
	}
}

func TestZeroResultFailsClosed(t *testing.T) {
	if err := (Result{}).Err(); !errors.Is(err, ErrNoRules) {
		t.Errorf("zero Result Err() = %v, want ErrNoRules", err)
	}
	if err := (&Set{}).Evaluate(realClaims(t)).Err(); err == nil {
		t.Error("zero Set passed")
	}
}

func TestEvaluateJSONNumber(t *testing.T) {
	s, err := Parse("num.cel", []byte("major: claims[\"x-ms-azurevm-osversion-major\"] == 10.0\npcr7: 7 in claims[\"x-ms-azurevm-attested-pcrs\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(realClaimsPath)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil {
		t.Fatal(err)
	}
	if err := s.Evaluate(claims).Err(); err != nil {
		t.Error(err)
	}
	// The caller's map is left as it was.
	if _, ok := claims["x-ms-azurevm-osversion-major"].(json.Number); !ok {
		t.Errorf("claims were modified: %T", claims["x-ms-azurevm-osversion-major"])
	}
	if err := Baseline().Evaluate(claims).Err(); err != nil {
		t.Errorf("baseline with json.Number claims: %v", err)
	}
}

func TestCostLimit(t *testing.T) {
	ten := "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"
	// 10^6 iterations of the innermost predicate: far beyond CostLimit.
	expensive := ten + ".all(a, " + ten + ".all(b, " + ten + ".all(c, " + ten + ".all(d, " +
		ten + ".all(e, " + ten + ".all(f, a + b + c + d + e + f >= 0))))))"
	blowup := `[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20].map(i, "x").join("").size() > 0 && ` +
		ten + `.map(i, ` + ten + `.map(j, ` + ten + `.map(k, ` + ten + `.map(l, "0123456789"))))` + ` != []`
	s, err := Parse("cost.cel", []byte("cheap: claims[\"secureboot\"] == true\nexpensive: "+expensive+"\nblowup: "+blowup+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res := s.Evaluate(realClaims(t))
	if d := time.Since(start); d > EvalTimeout {
		t.Errorf("evaluation took %v", d)
	}
	if !res.Rules[0].Passed {
		t.Errorf("cheap rule: %+v", res.Rules[0])
	}
	for _, rr := range res.Rules[1:] {
		if rr.Passed || !strings.Contains(rr.Reason, "cost limit exceeded") {
			t.Errorf("rule %q: Passed %v, Reason %q, want a cost limit failure", rr.Name, rr.Passed, rr.Reason)
		}
	}
	var re *RuleError
	if !errors.As(res.Err(), &re) || re.Rule != "expensive" {
		t.Errorf("Err() = %v", res.Err())
	}
}

func TestEvaluateContextCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res := Baseline().EvaluateContext(ctx, realClaims(t))
	for _, rr := range res.Rules {
		if rr.Passed || !strings.Contains(rr.Reason, context.Canceled.Error()) {
			t.Errorf("rule %q under a cancelled context: Passed %v, Reason %q", rr.Name, rr.Passed, rr.Reason)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.cel")
	if err := os.WriteFile(good, []byte("secure-boot: claims[\"secureboot\"] == true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name() != good || len(s.Rules()) != 1 {
		t.Errorf("Load: name %q, %d rules", s.Name(), len(s.Rules()))
	}

	bad := filepath.Join(dir, "bad.cel")
	if err := os.WriteFile(bad, []byte("ok: true\nbroken: claims[\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	if !errors.Is(err, ErrCompile) || !strings.Contains(err.Error(), bad+":2") || !strings.Contains(err.Error(), `"broken"`) {
		t.Errorf("Load(bad) = %v", err)
	}

	big := filepath.Join(dir, "big.cel")
	if err := os.WriteFile(big, bytes.Repeat([]byte("# padding\n"), MaxFileSize/10+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Load(big) = %v, want ErrTooLarge", err)
	}

	if _, err := Load(filepath.Join(dir, "absent.cel")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(absent) = %v, want os.ErrNotExist", err)
	}
}

func TestConcurrentEvaluate(t *testing.T) {
	s := Baseline()
	claims := realClaims(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				if err := s.Evaluate(claims).Err(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestLoadOrBaseline(t *testing.T) {
	if s, err := LoadOrBaseline(""); err != nil || s != Baseline() {
		t.Fatalf(`LoadOrBaseline("") = %v, %v; want the baseline`, s, err)
	}
	if _, err := LoadOrBaseline("/nonexistent/rules.cel"); err == nil {
		t.Fatal("a missing rule file loaded")
	}
}

// TestReads: a set reads a claim when a rule reads it by name, by index or by selection, plain
// or optional; a presence test, a loop over the claim set or a computed name is not a read.
func TestReads(t *testing.T) {
	const vmid = "x-ms-azurevm-vmid"
	tests := []struct {
		name, rule string
		claim      string
		want       bool
	}{
		{"index", `claims["x-ms-azurevm-vmid"].upperAscii() in ["7F3C2A9E-1B4D-4E8F-9A6B-2C5D8E1F0A3B"]`, vmid, true},
		{"optional index", `claims[?"x-ms-azurevm-vmid"].orValue("") == "A"`, vmid, true},
		{"select", `claims.secureboot == true`, "secureboot", true},
		{"optional select", `claims.?secureboot.orValue(false)`, "secureboot", true},
		{"inside a macro", `[1].all(i, claims["x-ms-azurevm-vmid"] != "")`, vmid, true},
		{"another claim", `claims["secureboot"] == true`, vmid, false},
		{"presence only", `"x-ms-azurevm-vmid" in claims`, vmid, false},
		{"presence by has()", `has(claims.secureboot)`, "secureboot", false},
		{"presence by has(), quoted name", "has(claims.`x-ms-azurevm-vmid`)", vmid, false},
		{"quoted name read", "claims.`x-ms-azurevm-vmid` == \"A\"", vmid, true},
		{"loop over the claims", `claims.exists(k, k == "x-ms-azurevm-vmid")`, vmid, false},
		{"computed name", `claims["x-ms-azurevm-" + "vmid"] == "A"`, vmid, false},
		{"string alone", `"x-ms-azurevm-vmid" != ""`, vmid, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse("t.cel", []byte("other: true\nr: "+tc.rule+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Reads(tc.claim); got != tc.want {
				t.Errorf("Reads(%q) = %v, want %v", tc.claim, got, tc.want)
			}
		})
	}
	// The shipped baseline pins no VM (README: what to pin), and reads secureboot; the compiled
	// form and the source agree on every rule.
	src, err := Parse(baselineName, baselineSource)
	if err != nil {
		t.Fatal(err)
	}
	b := Baseline()
	if b.Reads(vmid) || !b.Reads("secureboot") || src.Reads(vmid) || !src.Reads("secureboot") {
		t.Errorf("baseline reads %s: %v (source %v), secureboot: %v (source %v)", vmid, b.Reads(vmid), src.Reads(vmid), b.Reads("secureboot"), src.Reads("secureboot"))
	}
	for i := range src.rules {
		if got, want := b.rules[i].reads, src.rules[i].reads; !slices.Equal(got, want) {
			t.Errorf("rule %s: the compiled baseline reads %q, the source %q", src.rules[i].rule.Name, got, want)
		}
	}
}
