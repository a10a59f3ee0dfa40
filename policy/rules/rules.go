package rules

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/cel-go/cel"
	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/operators"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/ext"
)

// Limits on a rule file and on evaluation. A rule file is user input and, on the verifier
// side, policy that runs on every deployment: every dimension is bounded.
const (
	// MaxFileSize is the largest rule file Parse accepts, in bytes.
	MaxFileSize = 64 << 10
	// MaxRules is the largest number of rules in one file.
	MaxRules = 256
	// MaxNameLen is the longest rule name.
	MaxNameLen = 63
	// CostLimit is the CEL runtime cost budget of one rule's evaluation. The baseline rules
	// cost well under 100 each; the budget leaves room for comprehensions over the claim set
	// while stopping a hostile rule (nested comprehensions, string blow-up) early.
	CostLimit = 100_000
	// EvalTimeout bounds one rule's evaluation in wall-clock time, as a second line of
	// defence behind CostLimit; the interpreter checks for it every interruptCheckFrequency
	// comprehension iterations.
	EvalTimeout = time.Second

	interruptCheckFrequency = 100
	// claimsVar is the one variable a rule sees.
	claimsVar = "claims"
	// parserRecursionLimit bounds expression nesting depth.
	parserRecursionLimit = 100
)

// baselineName is the name the built-in baseline is parsed under; it appears in errors.
const baselineName = "baseline.cel"

//go:embed baseline.cel
var baselineSource []byte

// Sentinel errors wrapped by [ParseError], so that callers can tell problems apart with
// errors.Is.
var (
	// ErrNoRules: the file holds no rules (fail closed: an empty policy accepts everything).
	ErrNoRules = errors.New("no rules")
	// ErrTooLarge: the file exceeds MaxFileSize or MaxRules.
	ErrTooLarge = errors.New("too large")
	// ErrSyntax: a line is not a comment, a rule or a continuation, or is not valid UTF-8.
	ErrSyntax = errors.New("syntax error")
	// ErrInvalidName: a rule name does not match [a-z0-9][a-z0-9-]{0,62}.
	ErrInvalidName = errors.New("invalid rule name")
	// ErrDuplicateRule: two rules have the same name.
	ErrDuplicateRule = errors.New("duplicate rule name")
	// ErrEmptyExpression: a rule has a name but no expression.
	ErrEmptyExpression = errors.New("empty expression")
	// ErrCompile: the CEL expression does not parse or type-check.
	ErrCompile = errors.New("does not compile")
	// ErrNotBool: the expression's type is known at compile time and is not bool.
	ErrNotBool = errors.New("expression is not a bool")
)

// nameRE, with MaxNameLen, is the rule name syntax. It holds no counted repetition: regexp expands
// {0,62} into 62 copies, a start-up cost in every process that links this package.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// Rule is one named expression of a rule file, as written (continuation lines trimmed and
// joined with "\n").
type Rule struct {
	// Name identifies the rule in results and errors.
	Name string
	// Expr is the CEL expression.
	Expr string
	// Line is the 1-based line of the file where the rule starts.
	Line int
}

type compiled struct {
	rule  Rule
	prg   cel.Program
	reads []string // the claims the rule reads by name (claimsRead)
}

// Set is a compiled rule file. It is immutable and safe for concurrent use.
type Set struct {
	name   string
	rules  []compiled
	digest string
}

// ParseError reports a rule file that cannot be used. File, Line and Rule say where (Line and
// Rule are zero when the problem is the whole file), and Err wraps one of the sentinel errors
// above.
type ParseError struct {
	// File is the name given to Parse (a path for Load).
	File string
	// Line is the 1-based line, or 0 for a whole-file problem.
	Line int
	// Rule is the rule's name, when known.
	Rule string
	// Err is the cause; it wraps a sentinel such as ErrCompile.
	Err error
}

// Error formats as "file:line: rule "name": cause".
func (e *ParseError) Error() string {
	var b strings.Builder
	b.WriteString("claim rules ")
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Rule != "" {
		fmt.Fprintf(&b, ": rule %q", e.Rule)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns the cause.
func (e *ParseError) Unwrap() error { return e.Err }

// Load reads and parses the rule file at path. See [Parse].
func Load(path string) (*Set, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("claim rules: %w", err)
	}
	defer f.Close()
	// Read one byte past the limit so an oversized file is reported, not truncated.
	src, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("claim rules %s: %w", path, err)
	}
	return Parse(path, src)
}

// LoadOrBaseline is Load of the rule file at path, or Baseline when path is "": what the plugin
// and the verifiers apply for their rules setting.
func LoadOrBaseline(path string) (*Set, error) {
	if path == "" {
		return Baseline(), nil
	}
	return Load(path)
}

// Baseline returns the built-in rules for Azure Trusted Launch VMs (baseline.cel in this
// package's folder). It is what the plugin and the verifiers apply when no rule file is
// configured. The set is built once per process, from the checked expressions compiled into the
// binary (baseline.celpb, see compiled.go) when they are those of baseline.cel, and from the
// source otherwise.
func Baseline() *Set { return baseline() }

var baseline = sync.OnceValue(func() *Set {
	if s, err := loadCompiled(baselineName, baselineSource, baselineCompiled); err == nil {
		return s
	}
	// A stale or unreadable compiled form (TestCompiledBaselineCurrent keeps it current) costs
	// only start-up time: the source holds the same rules.
	s, err := Parse(baselineName, baselineSource)
	if err != nil {
		// The baseline is compiled into the binary and tested; failing here is a build defect.
		panic(err)
	}
	return s
})

// BaselineSource returns the text of the built-in baseline, for users to copy and extend.
func BaselineSource() []byte { return bytes.Clone(baselineSource) }

// Parse parses and compiles a rule file. name identifies the file in errors (a path, or a
// label such as "baseline.cel"). Every rule is compiled now, so a rule that does not compile
// or cannot yield a bool fails here, before any token is looked at. Errors are *ParseError.
func Parse(name string, src []byte) (*Set, error) {
	rs, digest, err := split(name, src)
	if err != nil {
		return nil, err
	}
	env, err := newEnv()
	if err != nil {
		return nil, fmt.Errorf("claim rules %s: CEL environment: %w", name, err)
	}
	s := &Set{name: name, rules: make([]compiled, 0, len(rs)), digest: digest}
	for _, r := range rs {
		ast, iss := env.Compile(r.Expr)
		if iss != nil && iss.Err() != nil {
			return nil, &ParseError{File: name, Line: r.Line, Rule: r.Name, Err: fmt.Errorf("%w: %s", ErrCompile, oneLine(iss.Err().Error()))}
		}
		prg, err := program(env, ast)
		if err != nil {
			return nil, &ParseError{File: name, Line: r.Line, Rule: r.Name, Err: err}
		}
		s.rules = append(s.rules, compiled{rule: r, prg: prg, reads: claimsRead(ast)})
	}
	return s, nil
}

// split reads the rules of a rule file without compiling them, and computes the set's digest.
// Errors are *ParseError.
func split(name string, src []byte) ([]Rule, string, error) {
	fail := func(line int, rule string, err error) ([]Rule, string, error) {
		return nil, "", &ParseError{File: name, Line: line, Rule: rule, Err: err}
	}
	if len(src) > MaxFileSize {
		return fail(0, "", fmt.Errorf("%w: more than %d bytes", ErrTooLarge, MaxFileSize))
	}
	if !utf8.Valid(src) {
		return fail(0, "", fmt.Errorf("%w: not valid UTF-8", ErrSyntax))
	}
	text := strings.TrimPrefix(string(src), "\uFEFF")

	type pending struct {
		rule  Rule
		lines []string
	}
	var (
		parsed []pending
		seen   = map[string]int{}
		// closedBy is the line of the blank line or unindented comment that ended the rule
		// above (closer says which), or 0 while that rule may still continue. A continuation
		// line after it would silently extend the rule above: after a commented-out rule
		// ("# b: x" followed by "    || y") it would turn the rule above into an OR.
		// Indented comments keep the rule open.
		closedBy int
		closer   string
	)
	for i, line := range strings.Split(text, "\n") {
		lineNo := i + 1
		line = strings.TrimSuffix(line, "\r")
		trimmed := strings.TrimSpace(line)
		indented := line != "" && (line[0] == ' ' || line[0] == '\t')
		switch {
		case trimmed == "" || strings.HasPrefix(trimmed, "#") && !indented:
			if closedBy == 0 {
				closedBy, closer = lineNo, "comment"
				if trimmed == "" {
					closer = "blank line"
				}
			}
			continue
		case strings.HasPrefix(trimmed, "#"):
			continue
		case indented:
			if len(parsed) == 0 {
				return fail(lineNo, "", fmt.Errorf("%w: continuation line before any rule", ErrSyntax))
			}
			p := &parsed[len(parsed)-1]
			if closedBy != 0 {
				return fail(lineNo, p.rule.Name, fmt.Errorf("%w: continuation line after the %s on line %d, which ends the rule "+
					"(indent a comment inside a rule, drop the blank line, or start a new rule)", ErrSyntax, closer, closedBy))
			}
			p.lines = append(p.lines, trimmed)
			continue
		}
		closedBy = 0
		ruleName, expr, ok := strings.Cut(line, ":")
		if !ok {
			return fail(lineNo, "", fmt.Errorf(`%w: want "name: expression"`, ErrSyntax))
		}
		ruleName = strings.TrimRight(ruleName, " \t")
		if len(ruleName) > MaxNameLen || !nameRE.MatchString(ruleName) {
			return fail(lineNo, "", fmt.Errorf("%w %q: want [a-z0-9][a-z0-9-]{0,%d}", ErrInvalidName, ruleName, MaxNameLen-1))
		}
		if first, dup := seen[ruleName]; dup {
			return fail(lineNo, ruleName, fmt.Errorf("%w: first defined on line %d", ErrDuplicateRule, first))
		}
		if len(parsed) == MaxRules {
			return fail(lineNo, ruleName, fmt.Errorf("%w: more than %d rules", ErrTooLarge, MaxRules))
		}
		seen[ruleName] = lineNo
		p := pending{rule: Rule{Name: ruleName, Line: lineNo}}
		if e := strings.TrimSpace(expr); e != "" {
			p.lines = append(p.lines, e)
		}
		parsed = append(parsed, p)
	}
	if len(parsed) == 0 {
		return fail(0, "", ErrNoRules)
	}
	rs := make([]Rule, 0, len(parsed))
	h := sha256.New()
	for _, p := range parsed {
		r := p.rule
		r.Expr = strings.Join(p.lines, "\n")
		if r.Expr == "" {
			return fail(r.Line, r.Name, ErrEmptyExpression)
		}
		rs = append(rs, r)
		writeNormalized(h, r)
	}
	return rs, "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// writeNormalized writes a rule in the normalized form the digest covers:
// "name: expr\n", with the expression as stored in Rule.Expr. Comments, blank lines,
// indentation and line endings do not change a digest; rule order does.
func writeNormalized(w io.Writer, r Rule) {
	io.WriteString(w, r.Name)
	io.WriteString(w, ": ")
	io.WriteString(w, r.Expr)
	io.WriteString(w, "\n")
}

// newEnv builds the CEL environment rules are compiled in: one variable, claims, of type
// map(string, dyn).
func newEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable(claimsVar, cel.MapType(cel.StringType, cel.DynType)),
		ext.Strings(),
		cel.OptionalTypes(),
		cel.CrossTypeNumericComparisons(true),
		cel.ParserRecursionLimit(parserRecursionLimit),
		cel.ParserExpressionSizeLimit(MaxFileSize),
	)
}

// program plans a checked expression; the expression must yield a bool (or dyn, checked when
// it runs).
func program(env *cel.Env, ast *cel.Ast) (cel.Program, error) {
	if out := ast.OutputType(); !out.IsExactType(types.BoolType) && !out.IsExactType(types.DynType) {
		return nil, fmt.Errorf("%w: it has type %s", ErrNotBool, out)
	}
	prg, err := env.Program(ast,
		cel.CostLimit(CostLimit),
		cel.InterruptCheckFrequency(interruptCheckFrequency),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCompile, err)
	}
	return prg, nil
}

// oneLine folds CEL's multi-line diagnostics (message, source excerpt, caret) into one line.
// CEL names the expression "<input>"; its line:column positions count from the start of the
// expression, not of the file.
func oneLine(s string) string {
	s = strings.ReplaceAll(s, "<input>:", "expression ")
	return strings.Join(strings.Fields(s), " ")
}

// Name returns the name the set was parsed under (a path, or "baseline.cel").
func (s *Set) Name() string { return s.name }

// Rules returns the set's rules in file order.
func (s *Set) Rules() []Rule {
	out := make([]Rule, len(s.rules))
	for i, c := range s.rules {
		out[i] = c.rule
	}
	return out
}

// Reads reports whether a rule of the set reads the claim name by name: claims["name"],
// claims[?"name"], claims.name or claims.?name (a presence test, has(claims.name) or "name" in
// claims, is not a read). It is a hint that the set constrains the claim, not a proof: a rule
// may read a claim and accept any value, and a rule that finds it by looping over the claim set
// is not counted. The verifiers use it to say when no rule pins the VM.
func (s *Set) Reads(name string) bool {
	for _, c := range s.rules {
		if slices.Contains(c.reads, name) {
			return true
		}
	}
	return false
}

// claimsRead returns the claim names a checked rule reads by name (see Set.Reads).
func claimsRead(a *cel.Ast) []string {
	isClaims := func(e celast.Expr) bool { return e.Kind() == celast.IdentKind && e.AsIdent() == claimsVar }
	var names []string
	celast.PreOrderVisit(a.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.SelectKind: // claims.name; not has(claims.name), which tests presence only
			if s := e.AsSelect(); isClaims(s.Operand()) && !s.IsTestOnly() {
				names = append(names, s.FieldName())
			}
		case celast.CallKind: // claims["name"], claims[?"name"], claims.?name
			c := e.AsCall()
			switch c.FunctionName() {
			case operators.Index, operators.OptIndex, operators.OptSelect:
			default:
				return
			}
			if args := c.Args(); len(args) == 2 && isClaims(args[0]) && args[1].Kind() == celast.LiteralKind {
				if s, ok := args[1].AsLiteral().(types.String); ok {
					names = append(names, string(s))
				}
			}
		}
	}))
	return names
}

// Digest returns "sha256:" and the hex SHA-256 of the normalized rule text (each rule as
// "name: expression\n", in file order), for logging which rules were applied. Comments and
// layout do not change it.
func (s *Set) Digest() string { return s.digest }

// Reasons a rule fails, as they appear in RuleResult.Reason and RuleError.Reason (errors and
// non-bool results add detail after the prefix).
const (
	// ReasonFalse: the expression evaluated to false.
	ReasonFalse = "evaluated to false"
	// ReasonError prefixes an evaluation error, e.g. "no such key: secureboot" for a claim
	// the token lacks, or a cost or time limit.
	ReasonError = "evaluation error: "
	// ReasonNotBool prefixes the type of a non-bool result.
	ReasonNotBool = "evaluated to a non-bool: "
)

// RuleResult is the outcome of one rule.
type RuleResult struct {
	// Name is the rule's name.
	Name string `json:"name"`
	// Line is the line the rule starts on in its file.
	Line int `json:"line"`
	// Passed is true only if the expression evaluated to true.
	Passed bool `json:"passed"`
	// Reason says why a rule failed (see ReasonFalse and friends); empty if it passed.
	Reason string `json:"reason,omitempty"`
}

// Result is the outcome of evaluating a Set: every rule, in file order.
type Result struct {
	// Set is the name of the rule set (Set.Name).
	Set string `json:"set"`
	// Digest is the set's Digest, so a log line can say which rules were applied.
	Digest string `json:"digest"`
	// Rules holds one entry per rule, in file order.
	Rules []RuleResult `json:"rules"`
}

// Failed returns the rules that did not pass, in file order.
func (r Result) Failed() []RuleResult {
	var out []RuleResult
	for _, rr := range r.Rules {
		if !rr.Passed {
			out = append(out, rr)
		}
	}
	return out
}

// Err returns nil only if there was at least one rule and every rule passed. Otherwise it
// returns a *RuleError for the first failing rule (ErrNoRules for an empty result, so a
// zero Result never passes). Use Failed or Rules to report every failure.
func (r Result) Err() error {
	if len(r.Rules) == 0 {
		return fmt.Errorf("claim rules: %w", ErrNoRules)
	}
	for _, rr := range r.Rules {
		if !rr.Passed {
			reason := rr.Reason
			if reason == "" {
				reason = "did not pass"
			}
			return &RuleError{Rule: rr.Name, Reason: reason}
		}
	}
	return nil
}

// RuleError is the error of a claim rule that did not pass. Match it with errors.As.
type RuleError struct {
	// Rule is the failing rule's name.
	Rule string
	// Reason says why (see ReasonFalse and friends).
	Reason string
}

// Error formats as `claim rule "secure-boot" failed: evaluated to false`.
func (e *RuleError) Error() string {
	return fmt.Sprintf("claim rule %q failed: %s", e.Rule, e.Reason)
}

// Evaluate runs every rule against claims (a token's claim set as decoded from JSON) and
// reports each outcome. It never stops at the first failure. See [Set.EvaluateContext].
func (s *Set) Evaluate(claims map[string]any) Result {
	return s.EvaluateContext(context.Background(), claims)
}

// EvaluateContext is Evaluate with a context: cancelling ctx interrupts a running rule, which
// then fails. Each rule is also bounded by CostLimit and EvalTimeout. json.Number values
// anywhere in claims are converted to float64 first, so rules see the same types whether or
// not the caller decoded with UseNumber.
func (s *Set) EvaluateContext(ctx context.Context, claims map[string]any) Result {
	res := Result{Set: s.name, Digest: s.digest, Rules: make([]RuleResult, 0, len(s.rules))}
	if claims == nil {
		claims = map[string]any{}
	}
	act := map[string]any{claimsVar: normalize(claims)}
	for _, c := range s.rules {
		rr := RuleResult{Name: c.rule.Name, Line: c.rule.Line}
		rr.Passed, rr.Reason = eval(ctx, c.prg, act)
		res.Rules = append(res.Rules, rr)
	}
	return res
}

func eval(ctx context.Context, prg cel.Program, act map[string]any) (bool, string) {
	// The interpreter checks ctx only inside comprehensions; check it here too, so a
	// cancelled evaluation fails every remaining rule instead of passing the simple ones.
	if err := ctx.Err(); err != nil {
		return false, ReasonError + err.Error()
	}
	ctx, cancel := context.WithTimeout(ctx, EvalTimeout)
	defer cancel()
	out, _, err := prg.ContextEval(ctx, act)
	if err != nil {
		return false, ReasonError + err.Error()
	}
	if b, ok := out.(types.Bool); ok {
		if b {
			return true, ""
		}
		return false, ReasonFalse
	}
	return false, ReasonNotBool + describe(out)
}

func describe(v ref.Val) string {
	s := fmt.Sprint(v.Value())
	if len(s) > 64 {
		s = s[:61] + "..."
	}
	return fmt.Sprintf("%s (%s)", v.Type().TypeName(), s)
}

// normalize returns claims with json.Number values replaced by float64, copying only the
// containers that held one; the caller's map is never modified.
func normalize(claims map[string]any) map[string]any {
	if n, changed := normalizeValue(claims); changed {
		return n.(map[string]any)
	}
	return claims
}

// normalizeValue returns v with json.Number values replaced, and whether anything changed.
func normalizeValue(v any) (any, bool) {
	switch x := v.(type) {
	case json.Number:
		if f, err := x.Float64(); err == nil {
			return f, true
		}
		return x.String(), true
	case map[string]any:
		var cp map[string]any
		for k, e := range x {
			n, changed := normalizeValue(e)
			if !changed {
				continue
			}
			if cp == nil {
				cp = make(map[string]any, len(x))
				for k2, e2 := range x {
					cp[k2] = e2
				}
			}
			cp[k] = n
		}
		if cp != nil {
			return cp, true
		}
	case []any:
		var cp []any
		for i, e := range x {
			n, changed := normalizeValue(e)
			if !changed {
				continue
			}
			if cp == nil {
				cp = append([]any(nil), x...)
			}
			cp[i] = n
		}
		if cp != nil {
			return cp, true
		}
	}
	return v, false
}
