package rules

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/cel-go/cel"
	exprpb "google.golang.org/genproto/googleapis/api/expr/v1alpha1"
	"google.golang.org/protobuf/proto"
)

// The baseline rules ship compiled as well as in source: baseline.celpb holds the checked
// expression of each rule of baseline.cel (CEL's CheckedExpr protobuf, which cel-go reads back
// with CheckedExprToAst), so that a process applying the baseline plans the rules without parsing
// them. Parsing is most of the cost of compiling in a fresh process: CEL's ANTLR parser builds
// its tables on first use (about 6 of the 7.5 ms that compiling the baseline takes, and 1 MB of
// allocations), and the plugin, oras-attest and the Ratify verifier each compile the rules once
// per process.
//
// The file is generated from baseline.cel by `go test ./policy/rules -run
// TestCompiledBaselineCurrent -update`, and that test fails when the file is not byte for byte
// what baseline.cel compiles to with the linked cel-go. That test is what ties the file to the
// source: it runs in make test (CI), and make dist and make ratify-plugin run it before they build
// what ships. The checks at every load catch a stale file, not a forged one: it must name the
// digest of baseline.cel's rules (a line anyone editing the file could copy), hold one expression
// per rule, and each expression must plan as a bool; anything else makes Baseline compile the
// source instead. Review a change of baseline.celpb as a change of the rules: the names, lines and
// digest the tools print come from baseline.cel, the decisions from this file.

//go:embed baseline.celpb
var baselineCompiled []byte

// compiledMagic starts a compiled rule set. It is followed by the set's digest and a newline,
// then by each rule's checked expression in file order, as a uvarint length and the
// deterministic protobuf encoding of an exprpb.CheckedExpr.
const compiledMagic = "attested-kv checked rules v1\n"

// maxCompiledExpr bounds one checked expression of a compiled rule set.
const maxCompiledExpr = 1 << 20

// loadCompiled builds the set of the rule file src from bin, its compiled form. The rules (names,
// lines, expressions and digest) come from src; bin supplies only the checked expressions, and
// only if it was compiled from these rules.
func loadCompiled(name string, src, bin []byte) (*Set, error) {
	rs, digest, err := split(name, src)
	if err != nil {
		return nil, err
	}
	rest, ok := bytes.CutPrefix(bin, []byte(compiledMagic))
	if !ok {
		return nil, errors.New("not a compiled rule set")
	}
	line, rest, ok := bytes.Cut(rest, []byte("\n"))
	if !ok || string(line) != digest {
		return nil, fmt.Errorf("compiled from other rules than %s (%s)", name, digest)
	}
	env, err := newEnv()
	if err != nil {
		return nil, fmt.Errorf("CEL environment: %w", err)
	}
	s := &Set{name: name, rules: make([]compiled, 0, len(rs)), digest: digest}
	for _, r := range rs {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > maxCompiledExpr || n > uint64(len(rest)-k) {
			return nil, fmt.Errorf("rule %q: truncated compiled expression", r.Name)
		}
		var ce exprpb.CheckedExpr
		if err := proto.Unmarshal(rest[k:k+int(n)], &ce); err != nil {
			return nil, fmt.Errorf("rule %q: %w", r.Name, err)
		}
		rest = rest[k+int(n):]
		ast, err := cel.CheckedExprToAstWithSource(&ce, nil)
		if err != nil {
			return nil, fmt.Errorf("rule %q: %w", r.Name, err)
		}
		prg, err := program(env, ast)
		if err != nil {
			return nil, fmt.Errorf("rule %q: %w", r.Name, err)
		}
		s.rules = append(s.rules, compiled{rule: r, prg: prg, reads: claimsRead(ast)})
	}
	if len(rest) != 0 {
		return nil, errors.New("more compiled expressions than rules")
	}
	return s, nil
}
