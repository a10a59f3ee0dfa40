// Package keyvault signs with a key held in Azure Key Vault or Managed HSM, through the official
// azkeys client: the digest is computed locally and only the digest is sent (Key Vault's sign
// operation "creates a signature from a digest"); the private key never leaves the vault.
//
// A Signer satisfies notation-core-go's signature.Signer, so notation-core-go builds the JWS or
// COSE envelope around it. The certificate chain comes from the Key Vault certificate's secret
// (requested as PEM), or from the certificate plus a local CA bundle, as notation-azure-kv does;
// the leaf must hold the vault key's public key and meet Notation's code-signing certificate rules,
// which are checked before anything is signed.
package keyvault

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
)

// ErrInvalidKeyID means the key id is not a Key Vault or Managed HSM key or certificate URL.
var ErrInvalidKeyID = errors.New("invalid Key Vault key id")

// Object kinds a key id may name.
const (
	KindKeys         = "keys"
	KindCertificates = "certificates"
)

// The patterns hold no counted repetition ({1,127}): regexp expands a count into that many copies
// of the class, which costs a millisecond of start-up in every process that links this package
// (GODEBUG=inittrace=1: 2161 allocations); the lengths are checked beside them.
var (
	// namePattern, with maxNameLen, is Key Vault's object name rule: 1-127 letters, digits and
	// dashes.
	namePattern = regexp.MustCompile(`^[0-9A-Za-z-]+$`)
	// versionPattern, with maxVersionLen, accepts Key Vault's 32-hex-digit versions and other
	// alphanumeric forms.
	versionPattern = regexp.MustCompile(`^[0-9A-Za-z]+$`)
)

const (
	maxNameLen    = 127
	maxVersionLen = 64
)

// KeyID is a parsed key id: https://VAULT.vault.azure.net/{keys|certificates}/NAME[/VERSION].
// Creating a Key Vault certificate creates a key and a secret of the same name and version, so a
// certificate id and a key id name the same signing key.
type KeyID struct {
	// Raw is the id as given, which notation echoes and the binding covers.
	Raw string
	// VaultURL is https://host[:port].
	VaultURL string
	// Kind is KindKeys or KindCertificates.
	Kind string
	// Name and Version name the object; Version is empty for "the latest".
	Name, Version string
}

// ManagedHSM reports whether the vault is a Managed HSM (keys only: no certificates or secrets).
func (k KeyID) ManagedHSM() bool {
	u, err := url.Parse(k.VaultURL)
	return err == nil && strings.Contains(u.Hostname(), ".managedhsm.")
}

// Loopback reports whether the vault is on a loopback address (the local stack's emulator).
func (k KeyID) Loopback() bool {
	u, err := url.Parse(k.VaultURL)
	if err != nil {
		return false
	}
	if u.Hostname() == "localhost" {
		return true
	}
	ip := net.ParseIP(u.Hostname())
	return ip != nil && ip.IsLoopback()
}

// ParseKeyID parses a key id, with or without version; one trailing slash is tolerated.
func ParseKeyID(raw string) (KeyID, error) {
	bad := func(why string) (KeyID, error) {
		return KeyID{}, fmt.Errorf("%w %q: %s (want https://VAULT.vault.azure.net/keys/NAME[/VERSION])", ErrInvalidKeyID, raw, why)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad(err.Error())
	}
	if u.Scheme != "https" {
		return bad("the scheme must be https")
	}
	// A bare "?" or "#" parses as an empty query or fragment: still one, and another spelling.
	if u.Host == "" || u.User != nil || strings.ContainsAny(raw, "?#") || u.Opaque != "" {
		return bad("a host and a path are required; user info, query and fragment are not allowed")
	}
	parts := strings.Split(strings.TrimSuffix(strings.TrimPrefix(u.EscapedPath(), "/"), "/"), "/")
	if len(parts) < 2 || len(parts) > 3 {
		return bad("the path must be /keys/NAME or /keys/NAME/VERSION")
	}
	id := KeyID{Raw: raw, VaultURL: "https://" + u.Host, Kind: parts[0], Name: parts[1]}
	if len(parts) == 3 {
		id.Version = parts[2]
	}
	if id.Kind != KindKeys && id.Kind != KindCertificates {
		return bad("the path must start with /keys/ or /certificates/")
	}
	if len(id.Name) > maxNameLen || !namePattern.MatchString(id.Name) {
		return bad("the name must be 1-127 letters, digits or dashes")
	}
	if id.Version != "" && (len(id.Version) > maxVersionLen || !versionPattern.MatchString(id.Version)) {
		return bad("the version must be letters and digits")
	}
	return id, nil
}

// TokenScope returns the OAuth scope Key Vault's challenge asks for on this vault, when it is
// known without a challenge: https://vault.azure.net/.default for *.vault.azure.net (and the local
// stack's loopback vault, whose emulator challenges like the public cloud),
// https://managedhsm.azure.net/.default for *.managedhsm.azure.net. Other clouds report false.
func (k KeyID) TokenScope() (string, bool) {
	u, err := url.Parse(k.VaultURL)
	if err != nil {
		return "", false
	}
	host := strings.ToLower(u.Hostname())
	switch {
	case strings.HasSuffix(host, ".vault.azure.net"), k.Loopback():
		return "https://vault.azure.net/.default", true
	case strings.HasSuffix(host, ".managedhsm.azure.net"):
		return "https://managedhsm.azure.net/.default", true
	}
	return "", false
}
