package maa

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// This file implements the subset of the MAA attestation policy language the emulator supports
// (Microsoft Learn "Claim and claim rules" and "How to author an attestation policy"):
//
//	policy     = "version" "=" VERSION ";" [ "authorizationrules" block ";" ] [ "issuancerules" block ";" ]
//	block      = "{" { rule } "}"
//	rule       = [ condition { "&&" condition } ] "=>" action ";"
//	condition  = [ IDENT ":" ] "[" property { "," property } "]"
//	property   = ( "type" | "issuer" | "value" ) OP operand
//	operand    = STRING | INTEGER | "true" | "false" | IDENT "." ( "type" | "issuer" | "value" )
//	action     = "permit" "(" ")" | "deny" "(" ")"
//	           | ( "issue" | "add" ) "(" ( "claim" "=" IDENT | "type" "=" STRING "," "value" "=" operand ) ")"
//
// with OP one of == != < <= > >= (ordering only between integers), and "//" starting a comment
// that runs to the end of the line (outside strings). authorizationrules is required.
// Version 1.0, 1.1 and 1.2 texts are accepted; configurationrules, issueproperty() and the 1.2
// functions are refused as unsupported rather than ignored.
//
// Semantics, our approximation of MAA's (its engine is not public):
//   - a condition holds if at least one claim satisfies all its properties; an identifier binds the
//     claim for later conditions and for the action; a rule's conditions must all hold;
//   - authorization rules run in order; a matching deny() refuses at once; the evidence is
//     authorized only if at least one permit() matched; add() adds a claim (issuer
//     AttestationPolicy) visible to later rules;
//   - issuance rules run in order; issue() adds a claim to the token (and to the incoming set),
//     once per distinct matching claim binding; add() only to the incoming set.

// Claim issuers (MAA claim-rule grammar).
const (
	issuerService = "AttestationService"
	issuerPolicy  = "AttestationPolicy"
)

// Limits that keep a policy (written by an authenticated administrator, but still parsed and
// evaluated by the service) from exhausting the emulator.
const (
	maxPolicyBytes     = 64 << 10
	maxRulesPerSection = 256
	maxConditions      = 16
	maxProperties      = 8
	maxMatchSteps      = 100000
	maxIssuedClaims    = 1024
	maxClaims          = 4096
)

// policyClaim is one claim as the policy language sees it. Value is a bool, an int64 or a string.
type policyClaim struct {
	Type, Issuer string
	Value        any
}

// policy is a parsed attestation policy.
type policy struct {
	version       string
	authorization []rule
	issuance      []rule
}

type actionKind int

const (
	actPermit actionKind = iota + 1
	actDeny
	actIssue
	actAdd
)

type rule struct {
	conds  []condition
	action actionKind
	// For issue/add: either copy the claim bound to claimRef, or build type newType with value.
	claimRef string
	newType  string
	value    operand
}

type condition struct {
	ident string // "" if the condition binds nothing
	props []property
}

type property struct {
	field string // "type", "issuer" or "value"
	op    string
	val   operand
}

// operand is a literal (bool, int64, string) or a reference ident.field to a bound claim.
type operand struct {
	lit   any
	ref   string
	field string
}

// errPolicyDenied marks an authorization failure (as opposed to an evaluation error).
var errPolicyDenied = errors.New("policy denied the attestation")

// parsePolicy parses policy text. Errors say where and what was expected.
func parsePolicy(text string) (*policy, error) {
	if len(text) > maxPolicyBytes {
		return nil, fmt.Errorf("policy is %d bytes; at most %d are accepted", len(text), maxPolicyBytes)
	}
	if !utf8.ValidString(text) {
		return nil, errors.New("policy is not UTF-8 text")
	}
	toks, err := lexPolicy(text)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	return p.policy()
}

// ---- lexer ----

type tokKind int

const (
	tkEOF tokKind = iota
	tkIdent
	tkString
	tkNumber
	tkPunct
)

type token struct {
	kind tokKind
	text string // identifier, punctuation, number text, or the unquoted string
	line int
	col  int
}

func (t token) String() string {
	switch t.kind {
	case tkEOF:
		return "end of policy"
	case tkString:
		return strconv.Quote(t.text)
	default:
		return fmt.Sprintf("%q", t.text)
	}
}

var twoCharPuncts = []string{"==", "!=", "<=", ">=", "&&", "=>"}

func lexPolicy(s string) ([]token, error) {
	var toks []token
	line, col := 1, 1
	i := 0
	advance := func(n int) {
		for _, r := range s[i : i+n] {
			if r == '\n' {
				line++
				col = 1
			} else {
				col++
			}
		}
		i += n
	}
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			advance(1)
		case c == '/' && i+1 < len(s) && s[i+1] == '/':
			// A line comment, as in published MAA policies (Constellation's AzureGuest policy
			// comments out a rule with "//"); string literals are lexed whole below, so a "//"
			// inside one never gets here.
			j := strings.IndexByte(s[i:], '\n')
			if j < 0 {
				j = len(s) - i
			}
			advance(j)
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdentPart(s[j]) {
				j++
			}
			toks = append(toks, token{tkIdent, s[i:j], line, col})
			advance(j - i)
		case c >= '0' && c <= '9' || c == '-' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			j := i + 1
			for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == '.') {
				j++
			}
			toks = append(toks, token{tkNumber, s[i:j], line, col})
			advance(j - i)
		case c == '"':
			var b strings.Builder
			j := i + 1
			closed := false
			for j < len(s) {
				if s[j] == '\\' {
					if j+1 >= len(s) || (s[j+1] != '"' && s[j+1] != '\\') {
						return nil, fmt.Errorf("line %d col %d: only \\\" and \\\\ escapes are allowed in strings", line, col)
					}
					b.WriteByte(s[j+1])
					j += 2
					continue
				}
				if s[j] == '"' {
					closed = true
					break
				}
				if s[j] == '\n' {
					break
				}
				b.WriteByte(s[j])
				j++
			}
			if !closed {
				return nil, fmt.Errorf("line %d col %d: unterminated string", line, col)
			}
			toks = append(toks, token{tkString, b.String(), line, col})
			advance(j + 1 - i)
		default:
			matched := false
			for _, p := range twoCharPuncts {
				if strings.HasPrefix(s[i:], p) {
					toks = append(toks, token{tkPunct, p, line, col})
					advance(2)
					matched = true
					break
				}
			}
			if matched {
				break
			}
			if strings.IndexByte("=;{}[]():,.<>", c) >= 0 {
				toks = append(toks, token{tkPunct, string(c), line, col})
				advance(1)
				break
			}
			r, _ := utf8.DecodeRuneInString(s[i:])
			return nil, fmt.Errorf("line %d col %d: unexpected character %q", line, col, r)
		}
	}
	return append(toks, token{kind: tkEOF, line: line, col: col}), nil
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}

func isIdentPart(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9'
}

// ---- parser ----

type parser struct {
	toks []token
	pos  int
}

func (p *parser) peek() token { return p.toks[p.pos] }

func (p *parser) next() token {
	t := p.toks[p.pos]
	if t.kind != tkEOF {
		p.pos++
	}
	return t
}

func (p *parser) errorf(t token, format string, args ...any) error {
	return fmt.Errorf("line %d col %d: %s", t.line, t.col, fmt.Sprintf(format, args...))
}

func (p *parser) expectPunct(s string) error {
	t := p.next()
	if t.kind != tkPunct || t.text != s {
		return p.errorf(t, "expected %q, found %s", s, t)
	}
	return nil
}

func (p *parser) expectIdent(s string) error {
	t := p.next()
	if t.kind != tkIdent || t.text != s {
		return p.errorf(t, "expected %q, found %s", s, t)
	}
	return nil
}

func (p *parser) isPunct(s string) bool {
	t := p.peek()
	return t.kind == tkPunct && t.text == s
}

func (p *parser) policy() (*policy, error) {
	if err := p.expectIdent("version"); err != nil {
		return nil, err
	}
	if err := p.expectPunct("="); err != nil {
		return nil, err
	}
	v := p.next()
	if v.kind != tkNumber || (v.text != "1.0" && v.text != "1.1" && v.text != "1.2") {
		return nil, p.errorf(v, "unsupported policy version %s; 1.0, 1.1 and 1.2 are accepted", v)
	}
	if err := p.expectPunct(";"); err != nil {
		return nil, err
	}
	pol := &policy{version: v.text}
	seenAuth, seenIssuance := false, false
	for p.peek().kind != tkEOF {
		t := p.next()
		if t.kind != tkIdent {
			return nil, p.errorf(t, "expected a section name, found %s", t)
		}
		switch t.text {
		case "authorizationrules":
			if seenAuth || seenIssuance {
				return nil, p.errorf(t, "authorizationrules must appear once, before issuancerules")
			}
			seenAuth = true
			rules, err := p.block(true)
			if err != nil {
				return nil, err
			}
			pol.authorization = rules
		case "issuancerules":
			if seenIssuance {
				return nil, p.errorf(t, "issuancerules must appear once")
			}
			seenIssuance = true
			rules, err := p.block(false)
			if err != nil {
				return nil, err
			}
			pol.issuance = rules
		case "configurationrules", "policyrules":
			return nil, p.errorf(t, "section %q is not supported by the emulator", t.text)
		default:
			return nil, p.errorf(t, "unknown section %q; expected authorizationrules or issuancerules", t.text)
		}
	}
	if !seenAuth {
		return nil, errors.New("policy has no authorizationrules section")
	}
	return pol, nil
}

func (p *parser) block(authorization bool) ([]rule, error) {
	if err := p.expectPunct("{"); err != nil {
		return nil, err
	}
	var rules []rule
	for !p.isPunct("}") {
		if p.peek().kind == tkEOF {
			return nil, p.errorf(p.peek(), "unterminated rule block")
		}
		if len(rules) >= maxRulesPerSection {
			return nil, p.errorf(p.peek(), "more than %d rules in a section", maxRulesPerSection)
		}
		r, err := p.rule(authorization)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	p.next() // "}"
	if err := p.expectPunct(";"); err != nil {
		return nil, err
	}
	return rules, nil
}

func (p *parser) rule(authorization bool) (rule, error) {
	var r rule
	bound := map[string]bool{}
	if !p.isPunct("=>") {
		for {
			if len(r.conds) >= maxConditions {
				return r, p.errorf(p.peek(), "more than %d conditions in a rule", maxConditions)
			}
			c, err := p.condition(bound)
			if err != nil {
				return r, err
			}
			r.conds = append(r.conds, c)
			if !p.isPunct("&&") {
				break
			}
			p.next()
		}
	}
	if err := p.expectPunct("=>"); err != nil {
		return r, err
	}
	t := p.next()
	if t.kind != tkIdent {
		return r, p.errorf(t, "expected an action, found %s", t)
	}
	switch t.text {
	case "permit", "deny":
		if !authorization {
			return r, p.errorf(t, "%s() is allowed only in authorizationrules", t.text)
		}
		r.action = actPermit
		if t.text == "deny" {
			r.action = actDeny
		}
		if err := p.expectPunct("("); err != nil {
			return r, err
		}
		if err := p.expectPunct(")"); err != nil {
			return r, err
		}
	case "issue", "add":
		if t.text == "issue" && authorization {
			return r, p.errorf(t, "issue() is allowed only in issuancerules")
		}
		r.action = actAdd
		if t.text == "issue" {
			r.action = actIssue
		}
		if err := p.claimArgs(&r, bound); err != nil {
			return r, err
		}
	case "issueproperty":
		return r, p.errorf(t, "issueproperty() is not supported by the emulator")
	default:
		return r, p.errorf(t, "unknown action %q", t.text)
	}
	if err := p.expectPunct(";"); err != nil {
		return r, err
	}
	return r, nil
}

func (p *parser) condition(bound map[string]bool) (condition, error) {
	var c condition
	if t := p.peek(); t.kind == tkIdent {
		p.next()
		if bound[t.text] {
			return c, p.errorf(t, "identifier %q is bound twice in one rule", t.text)
		}
		if err := p.expectPunct(":"); err != nil {
			return c, err
		}
		c.ident = t.text
	}
	if err := p.expectPunct("["); err != nil {
		return c, err
	}
	seen := map[string]bool{}
	for {
		if len(c.props) >= maxProperties {
			return c, p.errorf(p.peek(), "more than %d properties in a condition", maxProperties)
		}
		ft := p.next()
		if ft.kind != tkIdent || (ft.text != "type" && ft.text != "issuer" && ft.text != "value") {
			return c, p.errorf(ft, "expected type, issuer or value, found %s", ft)
		}
		if seen[ft.text] {
			return c, p.errorf(ft, "property %q appears twice in a condition", ft.text)
		}
		seen[ft.text] = true
		ot := p.next()
		if ot.kind != tkPunct || !isComparison(ot.text) {
			return c, p.errorf(ot, "expected a comparison operator (== != < <= > >=), found %s", ot)
		}
		val, vt, err := p.operand(bound)
		if err != nil {
			return c, err
		}
		if ft.text != "value" {
			if _, ok := val.lit.(string); !ok {
				return c, p.errorf(vt, "%s must be compared with a string", ft.text)
			}
		}
		if ot.text != "==" && ot.text != "!=" {
			if _, ok := val.lit.(int64); !ok || ft.text != "value" {
				return c, p.errorf(ot, "%s compares integers only", ot.text)
			}
		}
		c.props = append(c.props, property{field: ft.text, op: ot.text, val: val})
		if p.isPunct(",") {
			p.next()
			continue
		}
		break
	}
	if err := p.expectPunct("]"); err != nil {
		return c, err
	}
	if c.ident != "" {
		bound[c.ident] = true
	}
	return c, nil
}

func isComparison(s string) bool {
	switch s {
	case "==", "!=", "<", "<=", ">", ">=":
		return true
	}
	return false
}

func (p *parser) operand(bound map[string]bool) (operand, token, error) {
	t := p.next()
	switch t.kind {
	case tkString:
		return operand{lit: t.text}, t, nil
	case tkNumber:
		n, err := strconv.ParseInt(t.text, 10, 64)
		if err != nil {
			return operand{}, t, p.errorf(t, "%s is not an integer", t)
		}
		return operand{lit: n}, t, nil
	case tkIdent:
		switch t.text {
		case "true":
			return operand{lit: true}, t, nil
		case "false":
			return operand{lit: false}, t, nil
		}
		if p.isPunct("(") {
			return operand{}, t, p.errorf(t, "function %s() is not supported by the emulator", t.text)
		}
		if !bound[t.text] {
			return operand{}, t, p.errorf(t, "%q is not bound by an earlier condition of this rule", t.text)
		}
		if err := p.expectPunct("."); err != nil {
			return operand{}, t, err
		}
		f := p.next()
		if f.kind != tkIdent || (f.text != "type" && f.text != "issuer" && f.text != "value") {
			return operand{}, t, p.errorf(f, "expected type, issuer or value after %q., found %s", t.text, f)
		}
		return operand{ref: t.text, field: f.text}, t, nil
	}
	return operand{}, t, p.errorf(t, "expected a value, found %s", t)
}

func (p *parser) claimArgs(r *rule, bound map[string]bool) error {
	if err := p.expectPunct("("); err != nil {
		return err
	}
	t := p.next()
	switch {
	case t.kind == tkIdent && t.text == "claim":
		if err := p.expectPunct("="); err != nil {
			return err
		}
		id := p.next()
		if id.kind != tkIdent || !bound[id.text] {
			return p.errorf(id, "claim= must name a claim bound by a condition of this rule")
		}
		r.claimRef = id.text
	case t.kind == tkIdent && t.text == "type":
		if err := p.expectPunct("="); err != nil {
			return err
		}
		nt := p.next()
		if nt.kind != tkString || nt.text == "" {
			return p.errorf(nt, "type= takes a non-empty string")
		}
		if r.action == actIssue && isReservedClaim(nt.text) {
			return p.errorf(nt, "claim %q is issued by the service and cannot be issued by a policy", nt.text)
		}
		r.newType = nt.text
		if err := p.expectPunct(","); err != nil {
			return err
		}
		if err := p.expectIdent("value"); err != nil {
			return err
		}
		if err := p.expectPunct("="); err != nil {
			return err
		}
		v, _, err := p.operand(bound)
		if err != nil {
			return err
		}
		r.value = v
	default:
		return p.errorf(t, "expected claim= or type=, found %s", t)
	}
	return p.expectPunct(")")
}

// isReservedClaim reports claim names that only the service sets: registered JWT claims, every
// x-ms-* claim and the secure-boot claim. A policy must not be able to overwrite them.
func isReservedClaim(name string) bool {
	switch name {
	case "iss", "iat", "nbf", "exp", "jti", "aud", "sub", "cnf", "nonce", "secureboot":
		return true
	}
	return strings.HasPrefix(name, "x-ms-")
}

// ---- evaluation ----

// evaluate runs the policy over the incoming claims. It returns the claims issued for the token,
// or an error wrapping errPolicyDenied when authorization fails.
func (pol *policy) evaluate(incoming []policyClaim) ([]policyClaim, error) {
	claims := newClaimSet(maxClaims)
	for _, c := range incoming {
		if err := claims.add(c); err != nil {
			return nil, err
		}
	}
	steps := 0
	permitted := false
	for i, r := range pol.authorization {
		tuples, err := r.match(claims.list, &steps, r.action == actAdd)
		if err != nil {
			return nil, err
		}
		if len(tuples) == 0 {
			continue
		}
		switch r.action {
		case actPermit:
			permitted = true
		case actDeny:
			return nil, fmt.Errorf("%w: authorization rule %d matched and denies", errPolicyDenied, i+1)
		case actAdd:
			for _, b := range tuples {
				c, err := r.build(b)
				if err != nil {
					return nil, err
				}
				if err := claims.add(c); err != nil {
					return nil, err
				}
			}
		}
	}
	if !permitted {
		return nil, fmt.Errorf("%w: no authorization rule permitted the evidence", errPolicyDenied)
	}
	issued := newClaimSet(maxIssuedClaims)
	for _, r := range pol.issuance {
		tuples, err := r.match(claims.list, &steps, true)
		if err != nil {
			return nil, err
		}
		for _, b := range tuples {
			c, err := r.build(b)
			if err != nil {
				return nil, err
			}
			if err := claims.add(c); err != nil {
				return nil, err
			}
			if r.action == actIssue {
				if err := issued.add(c); err != nil {
					return nil, err
				}
			}
		}
	}
	return issued.list, nil
}

// claimSet is an ordered set of claims with a size bound.
type claimSet struct {
	max  int
	list []policyClaim
	seen map[policyClaim]bool
}

func newClaimSet(max int) *claimSet {
	return &claimSet{max: max, seen: map[policyClaim]bool{}}
}

// add appends c unless an identical claim is present; it fails past the bound.
func (s *claimSet) add(c policyClaim) error {
	if s.seen[c] {
		return nil
	}
	if len(s.list) >= s.max {
		return fmt.Errorf("policy evaluation exceeds %d claims", s.max)
	}
	s.seen[c] = true
	s.list = append(s.list, c)
	return nil
}

// build makes the claim an issue()/add() action produces for one binding.
func (r rule) build(b map[string]policyClaim) (policyClaim, error) {
	if r.claimRef != "" {
		c := b[r.claimRef]
		return policyClaim{Type: c.Type, Value: c.Value, Issuer: issuerPolicy}, nil
	}
	v, ok := r.value.resolve(b)
	if !ok {
		return policyClaim{}, fmt.Errorf("value of %q refers to an unbound claim", r.newType)
	}
	return policyClaim{Type: r.newType, Value: v, Issuer: issuerPolicy}, nil
}

// match returns the bindings of the rule's conditions over claims: one (possibly empty) binding
// if the rule has no conditions. With all false it stops at the first complete binding.
func (r rule) match(claims []policyClaim, steps *int, all bool) ([]map[string]policyClaim, error) {
	var out []map[string]policyClaim
	seen := map[string]bool{}
	var walk func(i int, b map[string]policyClaim) error
	walk = func(i int, b map[string]policyClaim) error {
		if i == len(r.conds) {
			key := bindingKey(b)
			if !seen[key] {
				seen[key] = true
				out = append(out, maps.Clone(b))
			}
			return nil
		}
		c := r.conds[i]
		for _, cl := range claims {
			*steps++
			if *steps > maxMatchSteps {
				return errors.New("policy evaluation exceeded its step limit")
			}
			if !c.satisfiedBy(cl, b) {
				continue
			}
			if c.ident != "" {
				b[c.ident] = cl
			}
			if err := walk(i+1, b); err != nil {
				return err
			}
			if c.ident != "" {
				delete(b, c.ident)
			}
			if !all && len(out) > 0 {
				return nil
			}
			if c.ident == "" {
				// An unbound condition only needs one witness.
				return nil
			}
		}
		return nil
	}
	if err := walk(0, map[string]policyClaim{}); err != nil {
		return nil, err
	}
	return out, nil
}

func bindingKey(b map[string]policyClaim) string {
	var sb strings.Builder
	for _, k := range slices.Sorted(maps.Keys(b)) {
		c := b[k]
		fmt.Fprintf(&sb, "%s=%q/%q/%T:%v;", k, c.Type, c.Issuer, c.Value, c.Value)
	}
	return sb.String()
}

func (c condition) satisfiedBy(cl policyClaim, b map[string]policyClaim) bool {
	for _, p := range c.props {
		var have any
		switch p.field {
		case "type":
			have = cl.Type
		case "issuer":
			have = cl.Issuer
		default:
			have = cl.Value
		}
		want, ok := p.val.resolve(b)
		if !ok || !compare(have, p.op, want) {
			return false
		}
	}
	return true
}

func (o operand) resolve(b map[string]policyClaim) (any, bool) {
	if o.ref == "" {
		return o.lit, true
	}
	c, ok := b[o.ref]
	if !ok {
		return nil, false
	}
	switch o.field {
	case "type":
		return c.Type, true
	case "issuer":
		return c.Issuer, true
	default:
		return c.Value, true
	}
}

// compare applies op; values of different types are never equal (and != holds).
func compare(have any, op string, want any) bool {
	switch op {
	case "==":
		return have == want
	case "!=":
		return have != want
	}
	h, ok1 := have.(int64)
	w, ok2 := want.(int64)
	if !ok1 || !ok2 {
		return false
	}
	switch op {
	case "<":
		return h < w
	case "<=":
		return h <= w
	case ">":
		return h > w
	case ">=":
		return h >= w
	}
	return false
}
