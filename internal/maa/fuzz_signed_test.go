package maa

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// The verifier of FuzzVerifySigned: testInstance, testNow, a maximum age of 5 minutes and the
// default skew, 60 seconds. The expectations below are written from these numbers and the rules
// documented in verify.go and checks.go, not from the code that applies them.
const (
	fuzzMaxAge = 5 * 60 // seconds
	fuzzSkew   = 60     // seconds
)

// FuzzVerifySigned signs fuzzed claims with the trusted key, so that every check after the
// signature is reached: the issuer, exp, nbf, iat and the attestation type, built from the
// fuzzed values (dates as millisecond offsets from the verifier's clock, each present or not),
// the client-payload nonce against the expected one, or, when raw is not empty, raw as the
// claims segment as it is. Verify must accept exactly when the claims meet the documented rules
// (a JSON object without duplicate names, invalid UTF-8 or nesting beyond 64 levels; iss the
// instance, one trailing slash allowed; exp after now less the skew; nbf, if present, before now
// plus the skew; iat neither after now plus the skew nor more than the maximum age before now;
// x-ms-attestation-type azurevm; the nonce, when one is expected, equal to the base64 one in
// x-ms-runtime.client-payload), and a refusal must name the first check that fails. When it
// accepts, the token's issuer, dates, nonce, client payload and claims are the signed ones.
// A date that is not an integer and lies within a millisecond of a bound (where float64
// rounding decides) leaves the verdict unchecked.
func FuzzVerifySigned(f *testing.F) {
	testKeys(f)
	const (
		hasISS = 1 << iota
		hasIAT
		hasNBF
		hasEXP
		hasType
		hasNonce
		nonceNotBase64
	)
	all := uint8(hasISS | hasIAT | hasNBF | hasEXP | hasType | hasNonce)
	minute, sec := int64(60_000), int64(1000)
	// iss, iat, nbf, exp (ms from now), which claims are present, type, the token's nonce, the
	// nonce expected, raw claims.
	f.Add(testInstance, -minute, -minute, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance+"/", -minute, -minute, 8*60*minute, all, "azurevm", "n", "", []byte(nil))
	f.Add(testInstance, -minute, -minute, 8*60*minute, all, "azurevm", "n", "m", []byte(nil))  // wrong nonce
	f.Add(testInstance, -minute, -minute, 8*60*minute, all, "azurevm", "nn", "n", []byte(nil)) // longer nonce
	f.Add(testInstance, -minute, -minute, 8*60*minute, all&^hasNonce, "azurevm", "", "n", []byte(nil))
	f.Add(testInstance, -minute, -minute, 8*60*minute, all|nonceNotBase64, "azurevm", "n!", "n", []byte(nil))
	f.Add(testInstance+"//", -minute, -minute, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add("https://evil.example", -minute, -minute, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -minute, -minute, 8*60*minute, all, "sgxenclave", "n", "n", []byte(nil))
	// On and beside each bound: iat at the maximum age and at the skew ahead, exp at the skew
	// behind, nbf at the skew ahead, and a second and two milliseconds past each.
	f.Add(testInstance, -5*minute, -minute, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -5*minute-sec, -minute, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -5*minute-2, -minute, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, 60*sec, -minute, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, 61*sec, -minute, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, 60*sec+2, -minute, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -minute, -minute, -60*sec, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -minute, -minute, -59*sec, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -minute, -minute, -60*sec+2, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -minute, 60*sec, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -minute, 61*sec, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -minute, 60*sec+2, 8*60*minute, all, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -minute, -minute, 8*60*minute, all&^hasNBF, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -minute, -minute, 8*60*minute, all&^hasIAT, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -minute, -minute, 8*60*minute, all&^hasEXP, "azurevm", "n", "n", []byte(nil))
	f.Add(testInstance, -testNow.UnixMilli()-sec, -minute, 8*60*minute, all, "azurevm", "n", "n", []byte(nil)) // iat before 1970
	// Raw claims: the shape of a real token's, with duplicates, a date of another type, deep
	// nesting (64 levels pass, 65 do not) and invalid UTF-8.
	valid := mustJSON(f, validClaims(testNow, "n"))
	f.Add("", int64(0), int64(0), int64(0), uint8(0), "", "", "n", valid)
	f.Add("", int64(0), int64(0), int64(0), uint8(0), "", "", "n", append(bytes.TrimSuffix(valid, []byte("}")), `,"iss":"https://evil.example"}`...))
	f.Add("", int64(0), int64(0), int64(0), uint8(0), "", "", "n", bytes.Replace(valid, []byte(`"exp":`), []byte(`"exp":"1"," exp":`), 1))
	f.Add("", int64(0), int64(0), int64(0), uint8(0), "", "", "n", bytes.Replace(valid, []byte(`"iat":`), []byte(`"iat":1795521540.5,"x":`), 1))
	nest := func(n int) []byte {
		return append(bytes.TrimSuffix(valid, []byte("}")), []byte(`,"deep":`+strings.Repeat("[", n-1)+strings.Repeat("]", n-1)+"}")...)
	}
	f.Add("", int64(0), int64(0), int64(0), uint8(0), "", "", "n", nest(64))
	f.Add("", int64(0), int64(0), int64(0), uint8(0), "", "", "n", nest(65))
	f.Add("", int64(0), int64(0), int64(0), uint8(0), "", "", "n", bytes.Replace(valid, []byte(`"jti":"d4f1"`), []byte("\"jti\":\"d4\xff\""), 1))

	keys, err := NewStaticKeySet(publicJWKS(f, signingKey, testKID))
	if err != nil {
		f.Fatal(err)
	}
	v, err := NewVerifier(VerifierOptions{Instance: testInstance, Keys: keys, MaxAge: fuzzMaxAge * time.Second, Now: func() time.Time { return testNow }})
	if err != nil {
		f.Fatal(err)
	}
	header := mustJSON(f, map[string]any{"alg": "RS256", "kid": testKID, "typ": "JWT"})
	f.Fuzz(func(t *testing.T, iss string, iat, nbf, exp int64, present uint8, typ, tokNonce, nonce string, raw []byte) {
		claims := raw
		if len(raw) == 0 {
			c := map[string]any{"jti": "fuzz"}
			set := func(bit uint8, name string, v any) {
				if present&bit != 0 {
					c[name] = v
				}
			}
			set(hasISS, "iss", iss)
			set(hasIAT, "iat", msDate(iat))
			set(hasNBF, "nbf", msDate(nbf))
			set(hasEXP, "exp", msDate(exp))
			set(hasType, "x-ms-attestation-type", typ)
			n := base64.StdEncoding.EncodeToString([]byte(tokNonce))
			if present&nonceNotBase64 != 0 {
				n = tokNonce
			}
			set(hasNonce, "x-ms-runtime", map[string]any{"client-payload": map[string]any{"nonce": n, "other": "b3RoZXI="}})
			claims = mustJSON(t, c)
		}
		token := signRaw(t, signingKey, header, claims)
		want := expectVerdict(token, claims, nonce)
		got, err := v.Verify(context.Background(), token, nonce)
		if err != nil {
			if got != nil {
				t.Fatal("a token with an error")
			}
			name := CheckName(err)
			if name == "" {
				t.Fatalf("error is not a *CheckError: %v", err)
			}
			if want.unsure {
				return
			}
			if want.check == "" {
				t.Fatalf("refused claims that meet every check (%v): %s", err, claims)
			}
			if name != want.check {
				t.Fatalf("refused by check %q (%v), want %q (%s): %s", name, err, want.check, want.why, claims)
			}
			return
		}
		if got == nil {
			t.Fatal("no error and no token")
		}
		if !want.unsure && want.check != "" {
			t.Fatalf("accepted claims that fail check %q (%s): %s", want.check, want.why, claims)
		}
		if want.claims == nil {
			t.Fatalf("accepted claims that are not a JSON object: %s", claims)
		}
		// What the accepted token says is what was signed.
		switch {
		case got.Raw() != token:
			t.Fatal("Raw is not the token verified")
		case got.Issuer() != want.claims["iss"]:
			t.Fatalf("Issuer %q, signed %v", got.Issuer(), want.claims["iss"])
		case !sameDate(got.IssuedAt(), want.iat):
			t.Fatalf("IssuedAt %v, signed %+v", got.IssuedAt(), want.iat)
		case !sameDate(got.Expiry(), want.exp):
			t.Fatalf("Expiry %v, signed %+v", got.Expiry(), want.exp)
		case want.nbf.present && !sameDate(got.NotBefore(), want.nbf):
			t.Fatalf("NotBefore %v, signed %+v", got.NotBefore(), want.nbf)
		case !want.nbf.present && !got.NotBefore().IsZero():
			t.Fatalf("NotBefore %v, none signed", got.NotBefore())
		case got.Nonce() != want.nonce:
			t.Fatalf("Nonce %q, signed %q", got.Nonce(), want.nonce)
		case !reflect.DeepEqual(got.ClientPayload(), want.payload):
			t.Fatalf("ClientPayload %q, signed %q", got.ClientPayload(), want.payload)
		case !reflect.DeepEqual(got.Claims(), want.claims):
			t.Fatalf("Claims %v, signed %v", got.Claims(), want.claims)
		}
	})
}

// msDate is the NumericDate ms milliseconds from testNow, as a JSON number: an integer for a
// whole second, else with three decimals.
func msDate(ms int64) json.Number {
	ms = ms%(1<<50) + testNow.UnixMilli()
	sign := ""
	if ms < 0 {
		sign, ms = "-", -ms
	}
	if ms%1000 == 0 {
		return json.Number(fmt.Sprintf("%s%d", sign, ms/1000))
	}
	return json.Number(fmt.Sprintf("%s%d.%03d", sign, ms/1000, ms%1000))
}

// verdict is what the rules say of a token: the first check it fails ("" for none), and the
// claims as signed.
type verdict struct {
	check, why string
	// unsure is set when float64 rounding may decide: the verdict is then not checked.
	unsure        bool
	claims        map[string]any
	iat, exp, nbf date
	nonce         string
	payload       map[string]string
}

// date is a NumericDate claim as the rules read it.
type date struct {
	present, number bool
	text            string
	whole           int64   // the seconds, when text is an integer
	isWhole         bool    // text is an integer that fits an int64
	f               float64 // the value, approximately
}

func readDate(claims map[string]any, name string) date {
	v, ok := claims[name]
	if !ok {
		return date{}
	}
	d := date{present: true}
	n, ok := v.(json.Number)
	if !ok {
		return d
	}
	d.number, d.text = true, string(n)
	if i, err := strconv.ParseInt(d.text, 10, 64); err == nil {
		d.whole, d.isWhole, d.f = i, true, float64(i)
		return d
	}
	d.f, _ = strconv.ParseFloat(d.text, 64) // ±Inf when out of float64's range
	return d
}

// cmp compares d with the whole second b: -1, 0 or 1, and whether the comparison is sure (an
// integer is compared exactly; another number only if it is more than a millisecond away).
func (d date) cmp(b int64) (int, bool) {
	if d.isWhole {
		switch {
		case d.whole < b:
			return -1, true
		case d.whole > b:
			return 1, true
		}
		return 0, true
	}
	diff := d.f - float64(b)
	switch {
	case math.IsNaN(diff) || math.Abs(diff) <= 1e-3:
		return 0, false
	case diff < 0:
		return -1, true
	}
	return 1, true
}

// inRange reports whether d is a date the rules allow at all: a number of seconds from 0 to
// 2^40.
func (d date) inRange() (ok, sure bool) {
	lo, s1 := d.cmp(0)
	hi, s2 := d.cmp(1 << 40)
	return d.number && lo >= 0 && hi <= 0, (s1 && s2) || !d.number
}

func sameDate(got time.Time, d date) bool {
	if d.isWhole {
		return got.Equal(time.Unix(d.whole, 0))
	}
	whole := math.Floor(d.f)
	diff := float64(got.Unix()) - whole + float64(got.Nanosecond())/1e9 - (d.f - whole)
	return math.Abs(diff) < 1e-3
}

// expectVerdict applies the documented rules to claims (the token's claims segment), for the
// expected nonce, with encoding/json and the standard library only.
func expectVerdict(token string, claims []byte, nonce string) verdict {
	fail := func(check, why string) verdict { return verdict{check: check, why: why} }
	if len(token) > MaxTokenSize {
		return fail(CheckFormat, "too large")
	}
	var parsed map[string]any
	dec := json.NewDecoder(bytes.NewReader(claims))
	dec.UseNumber()
	if err := dec.Decode(&parsed); err != nil || parsed == nil {
		return fail(CheckFormat, "not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return fail(CheckFormat, "trailing data")
	}
	if !utf8.Valid(claims) {
		return fail(CheckFormat, "invalid UTF-8")
	}
	dup, depth := jsonShape(claims)
	switch {
	case dup:
		return fail(CheckFormat, "duplicate name")
	case depth > 64:
		return fail(CheckFormat, "nested too deep")
	case bytes.Contains(bytes.ToLower(claims), []byte(`\ud`)):
		// A surrogate escape: encoding/json makes U+FFFD of a lone one, which the rules refuse
		// as invalid UTF-8.
		return verdict{unsure: true}
	}
	w := verdict{claims: parsed}
	checks := []struct {
		name string
		ok   func() (ok, sure bool)
		why  string
	}{
		{CheckIssuer, func() (bool, bool) {
			iss, _ := parsed["iss"].(string)
			return iss == testInstance || iss == testInstance+"/", true
		}, "iss"},
		{CheckExpiry, func() (bool, bool) {
			w.exp = readDate(parsed, "exp")
			ok, sure := w.exp.inRange()
			c, s := w.exp.cmp(testNow.Unix() - fuzzSkew)
			return w.exp.present && ok && c > 0, sure && s
		}, "exp"},
		{CheckNotBefore, func() (bool, bool) {
			w.nbf = readDate(parsed, "nbf")
			if !w.nbf.present {
				return true, true
			}
			ok, sure := w.nbf.inRange()
			c, s := w.nbf.cmp(testNow.Unix() + fuzzSkew)
			return ok && c <= 0, sure && s
		}, "nbf"},
		{CheckAge, func() (bool, bool) {
			w.iat = readDate(parsed, "iat")
			ok, sure := w.iat.inRange()
			future, s1 := w.iat.cmp(testNow.Unix() + fuzzSkew)
			old, s2 := w.iat.cmp(testNow.Unix() - fuzzMaxAge)
			return w.iat.present && ok && future <= 0 && old >= 0, sure && s1 && s2
		}, "iat"},
		{CheckAttestationType, func() (bool, bool) {
			typ, _ := parsed["x-ms-attestation-type"].(string)
			return typ == "azurevm", true
		}, "x-ms-attestation-type"},
	}
	for _, c := range checks {
		ok, sure := c.ok()
		if !sure {
			w.unsure = true
		}
		if !ok && w.check == "" {
			w.check, w.why = c.name, c.why
		}
	}
	// The client payload, its base64 strings decoded, and the nonce among them.
	rt, _ := parsed["x-ms-runtime"].(map[string]any)
	cp, _ := rt["client-payload"].(map[string]any)
	w.payload = map[string]string{}
	for k, v := range cp {
		if s, ok := v.(string); ok {
			if b, err := base64.StdEncoding.Strict().DecodeString(s); err == nil {
				w.payload[k] = string(b)
			}
		}
	}
	got, hasNonce := w.payload["nonce"]
	w.nonce = got
	if nonce != "" && (!hasNonce || got != nonce) && w.check == "" {
		w.check, w.why = CheckNonce, "nonce"
	}
	return w
}

// jsonShape reads claims, a JSON object encoding/json decodes, and reports whether an object in
// it has two members of the same name (after unescaping), and how deep it nests (1 for an object
// of scalars).
func jsonShape(claims []byte) (dup bool, depth int) {
	type frame struct {
		names map[string]bool // nil for an array
		name  bool            // an object's next token is a member name
	}
	var stack []*frame
	dec := json.NewDecoder(bytes.NewReader(claims))
	dec.UseNumber()
	value := func() { // a value ended: the enclosing object's next token is a name
		if len(stack) > 0 && stack[len(stack)-1].names != nil {
			stack[len(stack)-1].name = true
		}
	}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) || err != nil {
			return dup, depth
		}
		top := (*frame)(nil)
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if s, ok := tok.(string); ok && top != nil && top.names != nil && top.name {
			if top.names[s] {
				dup = true
			}
			top.names[s], top.name = true, false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{names: map[string]bool{}, name: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			value()
		default:
			value()
		}
		depth = max(depth, len(stack))
	}
}
