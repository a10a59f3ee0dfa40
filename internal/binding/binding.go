// Package binding computes the value that ties an attestation token to one image and one signing
// key (DESIGN.md, "Binding").
package binding

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Domain is the domain-separation prefix of binding version 1.
const Domain = "attested-kv/v1\n"

// ErrInvalidInput reports a digest or key id that cannot be bound.
var ErrInvalidInput = errors.New("binding: invalid input")

// Compute returns hex(SHA-256("attested-kv/v1\n" || digest || "\n" || keyID)), where digest is
// the target artifact's OCI digest ("sha256:<hex>") and keyID the signing key's identifier.
// It refuses empty values and values containing a newline, which would make the encoding
// ambiguous.
func Compute(digest, keyID string) (string, error) {
	if digest == "" || keyID == "" {
		return "", fmt.Errorf("%w: digest and key id must not be empty", ErrInvalidInput)
	}
	if strings.ContainsAny(digest, "\n\r") || strings.ContainsAny(keyID, "\n\r") {
		return "", fmt.Errorf("%w: digest and key id must not contain line breaks", ErrInvalidInput)
	}
	if algo, hexPart, ok := strings.Cut(digest, ":"); !ok || algo == "" || hexPart == "" {
		return "", fmt.Errorf("%w: digest %q is not of the form algorithm:encoded", ErrInvalidInput, digest)
	}
	if err := CheckKeyID(keyID); err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte(Domain))
	h.Write([]byte(digest))
	h.Write([]byte("\n"))
	h.Write([]byte(keyID))
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Signed attributes of the signature envelope that carry the token (DESIGN.md, "Binding"): the hex
// SHA-256 of the JWT bytes and the MAA instance URL. Both are non-critical: notation v1.3 ignores
// unknown critical attributes anyway, so verifiers check them explicitly.
const (
	AttrTokenSHA256 = "io.github.attested-kv.token.sha256"
	AttrIssuer      = "io.github.attested-kv.attestation.issuer"
)

// NotaryPayloadType is the payload type notation signs for OCI artifacts.
const NotaryPayloadType = "application/vnd.cncf.notary.payload.v1+json"

// CheckKeyID refuses, as Compute does, a key id that is not written in its canonical form (see
// canonicalURL), naming that form: verifiers call it with their configuration, before reading
// anything, so that a misspelt key id is a configuration error rather than a refused image.
func CheckKeyID(keyID string) error {
	if keyID == "" || strings.ContainsAny(keyID, "\r\n") {
		return fmt.Errorf("%w: key id must be set, without line breaks", ErrInvalidInput)
	}
	if canon, ok := canonicalURL(keyID); !ok {
		return fmt.Errorf("%w: key id %q is another spelling of %q, and the binding covers the key id as written: give it as %[3]q, to the signer and to verifiers alike", ErrInvalidInput, keyID, canon)
	}
	return nil
}

// canonicalURL reports whether keyID, when it is an https URL (a Key Vault key id), is written in
// its one canonical form, and returns that form: scheme and host in lower case, no default port
// and no empty one, a port in plain decimal, no trailing dot on the host, no trailing slash, no empty query ("?") or fragment ("#").
// Different spellings of one key would give different bindings, so a token made under one
// spelling would be refused by a verifier configured with another, as bound to "another key". The name and version are Key Vault's to spell: the signer compares them with
// the key id the vault reports. Key ids that are not https URLs are left as they are.
func canonicalURL(keyID string) (string, bool) {
	u, err := url.Parse(keyID)
	if err != nil || !strings.EqualFold(u.Scheme, "https") || u.Host == "" {
		return keyID, true
	}
	c := *u
	c.Scheme = "https"
	// The port as a plain decimal number, none for an empty one or https's 443.
	host := strings.ToLower(u.Host)
	if h, port, err := net.SplitHostPort(host); err == nil {
		h = strings.TrimSuffix(h, ".")
		n, err := strconv.ParseUint(port, 10, 16)
		switch {
		case port == "" || err == nil && n == 443:
			host = h
			if strings.Contains(h, ":") { // IPv6
				host = "[" + h + "]"
			}
		case err == nil:
			host = net.JoinHostPort(h, strconv.FormatUint(n, 10))
		default:
			host = net.JoinHostPort(h, port)
		}
	} else {
		host = strings.TrimSuffix(host, ".")
	}
	c.Host = host
	c.Path = strings.TrimRight(u.Path, "/")
	c.RawPath = ""
	c.ForceQuery = false
	c.RawFragment = ""
	canon := c.String()
	return canon, canon == keyID
}
