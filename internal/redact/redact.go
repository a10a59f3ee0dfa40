// Package redact makes error messages safe to show: the messages of the identity and registry
// libraries may quote what a service answered or what a configuration file holds, and that can
// be a credential. MSAL, for one, appends the identity service's whole answer, access token
// included, to the error it returns for an answer it cannot decode ("raw message was: ...").
//
// What is removed is what looks like a credential: compact JWS/JWE (Entra ID access tokens, MAA
// tokens), the values of token, secret and password fields in JSON or in a form, URLs' passwords,
// and MSAL's quoted answer. Anything else is left as it is, so that the message still names its cause.
package redact

import (
	"net/url"
	"regexp"
	"strings"
	"sync"
)

// msalRawMessage is where MSAL quotes the identity service's answer in its JSON decoding errors
// (microsoft-authentication-library-for-go, apps/internal/oauth/ops/internal/comm/comm.go: "json
// decode error: %w\nraw message was: %s"). The answer is a token response: everything from the
// marker on is left out.
const msalRawMessage = "raw message was:"

// Placeholders written where something was removed.
const (
	redactedJWT    = "[redacted token]"
	redactedValue  = "[redacted]"
	redactedAnswer = "[the identity service's answer is left out: it may hold a token]"
)

// patterns are compiled at first use, not at start-up: every process that links this package
// (the plugin's two processes per signature among them) would pay for them otherwise.
var patterns = sync.OnceValue(func() []rule {
	// The names of fields that hold a credential, in JSON ("name": "value") or in a form
	// (name=value): OAuth 2.0's (RFC 6749), ACR's token exchange, docker's config.
	const names = `access_token|refresh_token|id_token|client_secret|client_assertion|assertion|password|secret|auth|identitytoken|registrytoken`
	return []rule{
		// A compact JWS (three base64url segments) or JWE (five), starting with a JSON
		// header: "eyJ" is the base64url of `{"`.
		{regexp.MustCompile(`eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)?`), redactedJWT},
		{regexp.MustCompile(`(?i)"(` + names + `)"(\s*:\s*)"(?:[^"\\]|\\.)*"`), `"$1"$2"` + redactedValue + `"`},
		// The same JSON quoted in a Go string (%q, strconv.Quote): its quotes are escaped.
		{regexp.MustCompile(`(?i)\\"(` + names + `)\\"(\s*:\s*)\\"(?:[^"\\]|\\[^"])*\\"`), `\"$1\"$2\"` + redactedValue + `\"`},
		{regexp.MustCompile(`(?i)\b(` + names + `)=[^&\s"']+`), `$1=` + redactedValue},
		// A URL's password (scheme://user:password@host), as url.URL.Redacted writes it: a
		// library that quotes the URL it was given (tspclient-go quotes its TSA's) quotes it.
		// As url.Parse reads it, the user name ends at the first ':' and the password at the
		// last '@' before the path: either may hold an '@' that is not escaped.
		{regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.-]*://[^/\s:"']*):[^/\s"']*@`), `$1:xxxxx@`},
	}
})

type rule struct {
	re   *regexp.Regexp
	with string
}

// String returns s without what looks like a credential (see the package documentation).
func String(s string) string {
	if i := strings.Index(s, msalRawMessage); i >= 0 {
		s = s[:i] + redactedAnswer
	}
	for _, r := range patterns() {
		s = r.re.ReplaceAllString(s, r.with)
	}
	return s
}

// Error returns err with the message String(err.Error()); it wraps err, so errors.Is and
// errors.As still find what err wraps. Error(nil) is nil.
//
// Callers must show the returned error's message, not the message of an error they find in its
// chain: those are the library's own, unredacted.
func Error(err error) error {
	if err == nil {
		return nil
	}
	return &redactedError{msg: String(err.Error()), err: err}
}

// Hide returns an error with the message msg alone that wraps err: for errors whose text may quote
// a secret in a form String cannot recognise (a docker config's auth entry, decoded, is any
// text). Hide(msg, nil) is nil.
func Hide(msg string, err error) error {
	if err == nil {
		return nil
	}
	return &redactedError{msg: msg, err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// URL returns s for display: without its password (url.URL.Redacted), or a placeholder if it does
// not parse (url.Parse's error would quote it whole).
func URL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(not a URL)"
	}
	return u.Redacted()
}
