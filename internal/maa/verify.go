package maa

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-json-experiment/json/jsontext"
)

// VerifierOptions configures a Verifier.
type VerifierOptions struct {
	// Instance is the MAA instance URL the token must be issued by (iss), e.g.
	// "https://NAME.REGION.attest.azure.net". Required, and as NewClient requires: absolute https
	// with a host and nothing else (no path, query, fragment or user information; one trailing
	// slash is trimmed).
	Instance string
	// Keys are the instance's signing keys, usually NewRemoteKeySet(Instance, ...). Required.
	Keys KeySet
	// MaxAge is how old (since iat) a token may be. Required, > 0.
	MaxAge time.Duration
	// Skew is the clock skew allowed on exp, nbf and iat; 0 means DefaultSkew.
	Skew time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Verifier checks MAA tokens for one instance. It is safe for concurrent use.
type Verifier struct {
	issuer string
	keys   KeySet
	maxAge time.Duration
	skew   time.Duration
	now    func() time.Time
}

// NewVerifier returns a Verifier, or an error if an option is missing or invalid.
func NewVerifier(o VerifierOptions) (*Verifier, error) {
	switch {
	case o.Instance == "":
		return nil, errors.New("MAA verifier: Instance is required")
	case o.Keys == nil:
		return nil, errors.New("MAA verifier: Keys is required")
	case o.MaxAge <= 0:
		return nil, errors.New("MAA verifier: MaxAge must be positive")
	case o.Skew < 0:
		return nil, errors.New("MAA verifier: Skew must not be negative")
	}
	issuer, err := parseInstance(o.Instance)
	if err != nil {
		return nil, fmt.Errorf("MAA verifier: %w", err)
	}
	v := &Verifier{issuer: issuer, keys: o.Keys, maxAge: o.MaxAge, skew: o.Skew, now: o.Now}
	if v.skew == 0 {
		v.skew = DefaultSkew
	}
	if v.now == nil {
		v.now = time.Now
	}
	return v, nil
}

// Token is an MAA token that passed every check of Verify. Only Verify constructs one, so a
// function that takes a *Token cannot be reached with an unverified token.
type Token struct {
	raw       string
	claims    map[string]any
	issuer    string
	issuedAt  time.Time
	expiry    time.Time
	notBefore time.Time
	payload   map[string]string
	nonce     string
}

// Raw returns the compact JWT as verified.
func (t *Token) Raw() string { return t.raw }

// SHA256 returns the hex SHA-256 of the raw token bytes, a name for the token that can be logged.
func (t *Token) SHA256() string {
	sum := sha256.Sum256([]byte(t.raw))
	return hex.EncodeToString(sum[:])
}

// Issuer returns the iss claim.
func (t *Token) Issuer() string { return t.issuer }

// IssuedAt returns the iat claim.
func (t *Token) IssuedAt() time.Time { return t.issuedAt }

// Expiry returns the exp claim.
func (t *Token) Expiry() time.Time { return t.expiry }

// NotBefore returns the nbf claim, or the zero time if the token has none.
func (t *Token) NotBefore() time.Time { return t.notBefore }

// Claims returns a deep copy of the claim set. JSON numbers are json.Number.
func (t *Token) Claims() map[string]any {
	c, _ := deepCopy(t.claims).(map[string]any)
	return c
}

// ClientPayload returns x-ms-runtime.client-payload with each value base64-decoded: the strings the
// attesting client passed to Attest. Entries that are not base64 strings are left out.
func (t *Token) ClientPayload() map[string]string {
	out := make(map[string]string, len(t.payload))
	for k, v := range t.payload {
		out[k] = v
	}
	return out
}

// Nonce returns the decoded client-payload nonce, "" if the token has none.
func (t *Token) Nonce() string { return t.nonce }

// StartPrefetch starts, in the background, the key fetch of v (a Verifier or a KeySet) when it can
// prefetch (a RemoteKeySet), so that the fetch overlaps the caller's other work; stop cancels a
// fetch still running and waits for it. For anything else it does nothing.
func StartPrefetch(ctx context.Context, v any) (stop func()) {
	p, ok := v.(interface{ Prefetch(context.Context) })
	if !ok {
		return func() {}
	}
	fetchCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); p.Prefetch(fetchCtx) }()
	return func() { cancel(); <-done }
}

// Prefetch fetches the signing keys ahead of Verify when the key set can (RemoteKeySet), so that
// the fetch overlaps the attestation instead of following it. Nothing is verified or trusted by
// prefetching: Verify chooses and checks the keys as always.
func (v *Verifier) Prefetch(ctx context.Context) {
	if p, ok := v.keys.(interface{ Prefetch(context.Context) }); ok {
		p.Prefetch(ctx)
	}
}

// Verify checks raw, in the order of Checks, and returns the verified token. nonce is the value
// the attesting client sent with AttestNonce; "" skips the nonce check. A failure is a
// *CheckError naming the check, wrapping the sentinel error of the failure.
func (v *Verifier) Verify(ctx context.Context, raw string, nonce string) (*Token, error) {
	header, claims, claimsJSON, cerr := parseCompact(raw)
	if cerr != nil {
		return nil, cerr
	}

	alg, _ := header["alg"].(string)
	if alg != SigningAlgorithm {
		return nil, fail(CheckAlgorithm, ErrAlgorithm, "alg %.40q is not allowed; MAA tokens are signed with %s only", describe(header["alg"]), SigningAlgorithm)
	}

	// Key choice: by kid, from the key set only. jwk, jku, x5c and x5u headers are ignored.
	kid, _ := header["kid"].(string)
	if kid == "" {
		return nil, fail(CheckKey, ErrUnknownKey, "token header has no kid; cannot choose a signing key")
	}
	keys, err := v.keys.Keys(ctx, kid)
	if err != nil {
		return nil, &CheckError{Check: CheckKeys, Err: wrapIfNot(err, ErrKeySource)}
	}
	var candidates []any
	for _, k := range keys {
		if pub, err := usableRSAKey(k.Key); err == nil {
			candidates = append(candidates, pub)
		}
	}
	if len(candidates) == 0 {
		checked := "checked its published keys, refreshed at most once"
		if _, static := v.keys.(*StaticKeySet); static {
			checked = "checked the key set given for it (a JWKS file), not the keys it publishes"
		}
		return nil, fail(CheckKey, ErrUnknownKey, "kid %.80q is not a signing key of %s (%s)", kid, v.issuer, checked)
	}

	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, fail(CheckSignature, ErrSignature, "the JWS could not be parsed for verification: %v", err)
	}
	verified := false
	for _, pub := range candidates {
		payload, err := jws.Verify(pub)
		// The claims were decoded from the same segment; require the verified bytes to match.
		if err == nil && bytes.Equal(payload, claimsJSON) {
			verified = true
			break
		}
	}
	if !verified {
		return nil, fail(CheckSignature, ErrSignature, "signature does not verify with key %.80q of %s", kid, v.issuer)
	}

	iss, _ := claims["iss"].(string)
	if trimSlash(iss) != v.issuer {
		return nil, fail(CheckIssuer, ErrIssuer, "issuer %.200q is not the configured instance %q", iss, v.issuer)
	}

	now := v.now()
	exp, ok, err := NumericDate(claims, "exp")
	switch {
	case err != nil:
		return nil, fail(CheckExpiry, ErrExpired, "%v", err)
	case !ok:
		return nil, fail(CheckExpiry, ErrExpired, "token has no exp claim")
	case !now.Before(exp.Add(v.skew)):
		return nil, fail(CheckExpiry, ErrExpired, "token expired at %s (now %s, skew %s); attest again",
			exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), v.skew)
	}

	nbf, hasNBF, err := NumericDate(claims, "nbf")
	switch {
	case err != nil:
		return nil, fail(CheckNotBefore, ErrNotYetValid, "%v", err)
	case hasNBF && now.Before(nbf.Add(-v.skew)):
		return nil, fail(CheckNotBefore, ErrNotYetValid, "token is not valid before %s (now %s, skew %s); check this machine's clock",
			nbf.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), v.skew)
	}

	iat, ok, err := NumericDate(claims, "iat")
	switch {
	case err != nil:
		return nil, fail(CheckAge, ErrTooOld, "%v", err)
	case !ok:
		return nil, fail(CheckAge, ErrTooOld, "token has no iat claim; its age cannot be checked")
	case iat.After(now.Add(v.skew)):
		return nil, fail(CheckAge, ErrIssuedInFuture, "token is issued at %s, in the future (now %s, skew %s); check this machine's clock",
			iat.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), v.skew)
	case now.Sub(iat) > v.maxAge:
		return nil, fail(CheckAge, ErrTooOld, "token is %s old, max age is %s", now.Sub(iat).Truncate(time.Second), v.maxAge)
	}

	// MAA copies the caller's runtime data into tokens of every attestation type, signed with the
	// same keys, and its attest endpoints need no authentication: an SGX or OpenEnclave token can
	// carry any client-payload nonce. Only an AzureGuest token's payload is bound to TPM evidence.
	if typ, _ := claims[ClaimAttestationType].(string); typ != AttestationTypeAzureVM {
		return nil, fail(CheckAttestationType, ErrAttestationType, "%s is %.40q, want %q (an Azure VM guest's TPM attestation); the client payload of other attestation types is not bound to this machine",
			ClaimAttestationType, describe(claims[ClaimAttestationType]), AttestationTypeAzureVM)
	}

	gotNonce, nonceErr := ClientPayloadNonce(claims)
	if nonce != "" {
		switch {
		case nonceErr != nil:
			return nil, fail(CheckNonce, ErrNonceMismatch, "expected a client-payload nonce: %v", nonceErr)
		case subtle.ConstantTimeCompare([]byte(gotNonce), []byte(nonce)) != 1:
			return nil, fail(CheckNonce, ErrNonceMismatch, "client-payload nonce differs from the expected one; the token was not made for this request")
		}
	}

	t := &Token{raw: raw, claims: claims, issuer: iss, issuedAt: iat, expiry: exp, payload: decodedClientPayload(claims)}
	if hasNBF {
		t.notBefore = nbf
	}
	if nonceErr == nil {
		t.nonce = gotNonce
	}
	return t, nil
}

// ParseUnverified decodes the header and claims of a compact JWT without checking its signature
// or any claim, for display (`token show`). It applies the size and format checks of Verify; its
// error is a *CheckError for CheckFormat. JSON numbers are json.Number.
func ParseUnverified(raw string) (header map[string]any, claims map[string]any, err error) {
	header, claims, _, cerr := parseCompact(raw)
	if cerr != nil {
		return nil, nil, cerr
	}
	return header, claims, nil
}

// ClientPayloadNonce returns x-ms-runtime.client-payload.nonce, base64-decoded (standard alphabet,
// padded: MAA echoes the value as the client sent it). The error wraps ErrMalformed.
func ClientPayloadNonce(claims map[string]any) (string, error) {
	cp, err := clientPayload(claims)
	if err != nil {
		return "", err
	}
	rawNonce, ok := cp[NonceKey]
	if !ok {
		return "", fmt.Errorf("%w: %s.%s has no %q", ErrMalformed, ClaimRuntime, ClaimClientPayload, NonceKey)
	}
	s, ok := rawNonce.(string)
	if !ok {
		return "", fmt.Errorf("%w: %s.%s.%s is not a string", ErrMalformed, ClaimRuntime, ClaimClientPayload, NonceKey)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return "", fmt.Errorf("%w: %s.%s.%s is not base64: %v", ErrMalformed, ClaimRuntime, ClaimClientPayload, NonceKey, err)
	}
	return string(b), nil
}

// clientPayload returns the x-ms-runtime.client-payload object.
func clientPayload(claims map[string]any) (map[string]any, error) {
	rt, ok := claims[ClaimRuntime].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: token has no %s object", ErrMalformed, ClaimRuntime)
	}
	cp, ok := rt[ClaimClientPayload].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: token has no %s.%s object", ErrMalformed, ClaimRuntime, ClaimClientPayload)
	}
	return cp, nil
}

// decodedClientPayload returns the client payload's base64 string values, decoded.
func decodedClientPayload(claims map[string]any) map[string]string {
	out := map[string]string{}
	cp, err := clientPayload(claims)
	if err != nil {
		return out
	}
	for k, v := range cp {
		s, ok := v.(string)
		if !ok {
			continue
		}
		if b, err := base64.StdEncoding.Strict().DecodeString(s); err == nil {
			out[k] = string(b)
		}
	}
	return out
}

// parseCompact runs CheckFormat: size, three base64url segments, header and claims JSON objects
// without duplicate keys, no "crit". It also returns the decoded claims segment.
func parseCompact(raw string) (header, claims map[string]any, claimsJSON []byte, cerr *CheckError) {
	if len(raw) > MaxTokenSize {
		return nil, nil, nil, fail(CheckFormat, ErrTooLarge, "token is %d bytes, more than the %d allowed", len(raw), MaxTokenSize)
	}
	if raw == "" {
		return nil, nil, nil, fail(CheckFormat, ErrMalformed, "token is empty")
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, nil, nil, fail(CheckFormat, ErrMalformed, "token has %d dot-separated parts, a compact JWS has 3 (truncated or not a JWT?)", len(parts))
	}
	names := [3]string{"header", "claims", "signature"}
	var dec [3][]byte
	for i, p := range parts {
		// An empty signature is left to the algorithm and signature checks, so that an
		// "alg": "none" token is reported as such.
		if p == "" && i < 2 {
			return nil, nil, nil, fail(CheckFormat, ErrMalformed, "token %s is empty", names[i])
		}
		b, err := base64.RawURLEncoding.Strict().DecodeString(p)
		if err != nil {
			return nil, nil, nil, fail(CheckFormat, ErrMalformed, "token %s is not base64url: %v", names[i], err)
		}
		dec[i] = b
	}
	header, err := decodeObject(dec[0])
	if err != nil {
		return nil, nil, nil, fail(CheckFormat, ErrMalformed, "token header is not a JSON object: %v", err)
	}
	claims, err = decodeObject(dec[1])
	if err != nil {
		return nil, nil, nil, fail(CheckFormat, ErrMalformed, "token claims are not a JSON object: %v", err)
	}
	if _, ok := header["crit"]; ok {
		return nil, nil, nil, fail(CheckFormat, ErrMalformed, "token header has critical extensions (crit), which MAA does not use and this verifier does not support")
	}
	return header, claims, dec[1], nil
}

// maxJSONDepth bounds nesting in token JSON.
const maxJSONDepth = 64

// decodeObject decodes one JSON object, refusing duplicate names at any depth, invalid UTF-8,
// nesting deeper than maxJSONDepth and trailing data. Numbers are json.Number.
//
// It reads the tokens with jsontext (the encoding/json/v2 mirror), whose decoder rejects duplicate
// object names as RFC 7493 (I-JSON) requires; encoding/json would keep the last one, so a claim
// could be read one way here and another way by another JWT library.
func decodeObject(data []byte) (map[string]any, error) {
	// Duplicate names and invalid UTF-8 are errors by default. From a bytes.Buffer the decoder
	// parses data in place instead of copying it into a buffer of its own, and it never writes to
	// it (jsontext documents both); data is compared with the verified payload afterwards.
	dec := jsontext.NewDecoder(bytes.NewBuffer(data))
	if k := dec.PeekKind(); k != '{' {
		if _, err := dec.ReadToken(); err != nil {
			return nil, err
		}
		return nil, errors.New("not an object")
	}
	v, err := readJSONValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON object")
	}
	return v.(map[string]any), nil
}

// readJSONValue reads the next value of dec: map[string]any, []any, string, json.Number, bool or
// nil.
func readJSONValue(dec *jsontext.Decoder) (any, error) {
	tok, err := dec.ReadToken()
	if err != nil {
		if errors.Is(err, jsontext.ErrDuplicateName) {
			return nil, fmt.Errorf("duplicate key: %w", err)
		}
		return nil, err
	}
	switch tok.Kind() {
	case '{':
		if dec.StackDepth() > maxJSONDepth {
			return nil, fmt.Errorf("nested more than %d levels", maxJSONDepth)
		}
		obj := map[string]any{}
		for dec.PeekKind() != '}' {
			name, err := dec.ReadToken()
			if err != nil {
				if errors.Is(err, jsontext.ErrDuplicateName) {
					return nil, fmt.Errorf("duplicate key: %w", err)
				}
				return nil, err
			}
			key := name.String() // the token is void after the next read
			v, err := readJSONValue(dec)
			if err != nil {
				return nil, err
			}
			obj[key] = v
		}
		if _, err := dec.ReadToken(); err != nil {
			return nil, err
		}
		return obj, nil
	case '[':
		if dec.StackDepth() > maxJSONDepth {
			return nil, fmt.Errorf("nested more than %d levels", maxJSONDepth)
		}
		arr := []any{}
		for dec.PeekKind() != ']' {
			v, err := readJSONValue(dec)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		if _, err := dec.ReadToken(); err != nil {
			return nil, err
		}
		return arr, nil
	case '"':
		return tok.String(), nil
	case '0':
		return json.Number(tok.String()), nil
	case 't', 'f':
		return tok.Bool(), nil
	case 'n':
		return nil, nil
	}
	return nil, fmt.Errorf("unexpected JSON token %v", tok)
}

// NumericDate reads the NumericDate claim name (seconds since the epoch, possibly fractional) of
// claims as ParseUnverified returns them, as Verify reads it; ok is false when the claim is absent.
func NumericDate(claims map[string]any, name string) (t time.Time, ok bool, err error) {
	v, ok := claims[name]
	if !ok {
		return time.Time{}, false, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false, fmt.Errorf("claim %s is not a number", name)
	}
	if i, err := n.Int64(); err == nil {
		if i < 0 || i > 1<<40 {
			return time.Time{}, false, fmt.Errorf("claim %s is out of range", name)
		}
		return time.Unix(i, 0), true, nil
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || f < 0 || f > 1<<40 {
		return time.Time{}, false, fmt.Errorf("claim %s is not a valid date", name)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true, nil
}

// describe renders an attacker-controlled header value for an error message.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "(missing)"
	case string:
		return x
	default:
		return fmt.Sprintf("(%T)", v)
	}
}

// wrapIfNot makes err match sentinel with errors.Is.
func wrapIfNot(err, sentinel error) error {
	if errors.Is(err, sentinel) {
		return err
	}
	return fmt.Errorf("%w: %w", sentinel, err)
}

// deepCopy copies maps and slices of decoded JSON.
func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		s := make([]any, len(x))
		for i, e := range x {
			s[i] = deepCopy(e)
		}
		return s
	default:
		return v
	}
}
