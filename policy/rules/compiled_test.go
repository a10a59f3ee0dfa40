package rules

import (
	"bytes"
	"encoding/binary"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/google/cel-go/cel"
	"google.golang.org/protobuf/proto"
)

var update = flag.Bool("update", false, "rewrite baseline.celpb from baseline.cel")

// compileSet returns the compiled form of the rule file src (what loadCompiled reads).
func compileSet(t *testing.T, name string, src []byte) []byte {
	t.Helper()
	rs, digest, err := split(name, src)
	if err != nil {
		t.Fatal(err)
	}
	env, err := newEnv()
	if err != nil {
		t.Fatal(err)
	}
	out := []byte(compiledMagic + digest + "\n")
	for _, r := range rs {
		ast, iss := env.Compile(r.Expr)
		if iss != nil && iss.Err() != nil {
			t.Fatalf("rule %q: %v", r.Name, iss.Err())
		}
		ce, err := cel.AstToCheckedExpr(ast)
		if err != nil {
			t.Fatalf("rule %q: %v", r.Name, err)
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ce)
		if err != nil {
			t.Fatalf("rule %q: %v", r.Name, err)
		}
		out = binary.AppendUvarint(out, uint64(len(b)))
		out = append(out, b...)
	}
	return out
}

// TestCompiledBaselineCurrent fails when baseline.celpb is not what baseline.cel compiles to with
// the linked cel-go (after an edit of the rules, or a cel-go upgrade that changes its checked
// form); -update rewrites it.
func TestCompiledBaselineCurrent(t *testing.T) {
	want := compileSet(t, baselineName, baselineSource)
	if *update {
		if err := os.WriteFile("baseline.celpb", want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if !bytes.Equal(baselineCompiled, want) {
		t.Fatal("baseline.celpb is stale: run go test ./policy/rules -run TestCompiledBaselineCurrent -update")
	}
	if _, err := loadCompiled(baselineName, baselineSource, baselineCompiled); err != nil {
		t.Fatalf("the compiled baseline does not load: %v", err)
	}
}

// TestCompiledBaselineSameResults checks that the compiled baseline and the source decide alike,
// rule by rule, on the real claim sets and on every mutation of the baseline test. Only the
// decisions are compared: loadCompiled takes the rules' names, lines and digest from the source,
// as Parse does, so comparing those would compare the source with itself (that the compiled file
// names the source's digest is TestLoadCompiledRefuses's "other rules" case).
func TestCompiledBaselineSameResults(t *testing.T) {
	loaded, err := loadCompiled(baselineName, baselineSource, baselineCompiled)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := Parse(baselineName, baselineSource)
	if err != nil {
		t.Fatal(err)
	}
	claimSets := []map[string]any{{}, realClaims(t), realJWTClaims(t)}
	for _, m := range baselineMutations {
		c := realClaims(t)
		m.mutate(c)
		claimSets = append(claimSets, c)
	}
	for i, c := range claimSets {
		a, b := loaded.Evaluate(c), parsed.Evaluate(c)
		if len(a.Rules) != len(b.Rules) || len(b.Rules) == 0 {
			t.Fatalf("claim set %d: the compiled baseline evaluated %d rules, the source %d", i, len(a.Rules), len(b.Rules))
		}
		for j := range a.Rules {
			if a.Rules[j] != b.Rules[j] {
				t.Errorf("claim set %d, rule %s: compiled %+v, source %+v", i, a.Rules[j].Name, a.Rules[j], b.Rules[j])
			}
		}
	}
}

// TestLoadCompiledRefuses covers every way a compiled form can fail to match its source: each
// is refused (and Baseline would compile the source instead).
func TestLoadCompiledRefuses(t *testing.T) {
	good := baselineCompiled
	header := len(compiledMagic) + bytes.IndexByte(good[len(compiledMagic):], '\n') + 1
	otherSrc := []byte(strings.Replace(string(baselineSource), `== "azurevm"`, `== "sevsnpvm"`, 1))
	// Expressions swapped between rules keep the digest and the count; only the byte-for-byte
	// comparison of TestCompiledBaselineCurrent can see them, which is why the file is generated.
	tests := []struct {
		name string
		src  []byte
		bin  []byte
		want string
	}{
		{"empty", baselineSource, nil, "not a compiled rule set"},
		{"wrong magic", baselineSource, append([]byte("attested-kv checked rules v0\n"), good[len(compiledMagic):]...), "not a compiled rule set"},
		{"other rules", otherSrc, good, "compiled from other rules"},
		{"no digest line", baselineSource, []byte(compiledMagic + "sha256:"), "compiled from other rules"},
		{"truncated", baselineSource, good[:len(good)-10], `rule "pcrs-0-7-attested": truncated`},
		{"header only", baselineSource, good[:header], `rule "attestation-type": truncated`},
		{"trailing data", baselineSource, append(bytes.Clone(good), 0), "more compiled expressions than rules"},
		{"huge length", baselineSource, append(bytes.Clone(good[:header]), 0xff, 0xff, 0xff, 0xff, 0x0f), "truncated"},
		{"not a protobuf", baselineSource, append(append(bytes.Clone(good[:header]), 3), 0xff, 0xff, 0xff), "cannot parse"},
		{"not a bool", []byte("a: claims[\"x\"] + 1\n"), compileSet(t, baselineName, []byte("a: claims[\"x\"] + 1\n")), "not a bool"},
		{"bad source", []byte("not a rule\n"), good, "syntax error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := loadCompiled(baselineName, tt.src, tt.bin)
			if err == nil {
				t.Fatalf("loaded %d rules", len(s.Rules()))
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// BenchmarkBaselineCompiled and BenchmarkBaselineSource compare building the baseline from its
// compiled form and from source. Run each with -count=1 -benchtime=1x in a fresh process for the
// cold cost (CEL builds its parser tables on first use); warm numbers favour the source.
func BenchmarkBaselineCompiled(b *testing.B) {
	for b.Loop() {
		if _, err := loadCompiled(baselineName, baselineSource, baselineCompiled); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBaselineSource(b *testing.B) {
	for b.Loop() {
		if _, err := Parse(baselineName, baselineSource); err != nil {
			b.Fatal(err)
		}
	}
}
