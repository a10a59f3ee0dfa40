package keyvault

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
)

// stateVersion is the version of the state file's format (Config.StatePath).
const stateVersion = 1

// maxStateFile bounds the state file read at New: far more than a vault of this emulator's use
// holds (an RSA 4096 key version is about 3.2 KB of PKCS#8 DER).
const maxStateFile = 64 << 20

// stateFile is the state file: the vault's keys and certificates, every version, in the order
// they were created. Binary fields ([]byte) are base64 (standard, padded), as encoding/json writes
// them. Unknown fields are refused on load: a file of a later build with more in it would
// otherwise lose it when this build rewrites the file.
type stateFile struct {
	Version      int         `json:"version"`
	Keys         []stateKey  `json:"keys"`
	Certificates []stateCert `json:"certificates"`
}

type stateKey struct {
	// Name is in the case the key was first created with.
	Name     string            `json:"name"`
	Versions []stateKeyVersion `json:"versions"`
}

type stateKeyVersion struct {
	Version string `json:"version"`
	Kty     string `json:"kty"`
	// PKCS8 is the private key, PKCS#8 DER.
	PKCS8   []byte    `json:"pkcs8"`
	KeyOps  []string  `json:"key_ops"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	Enabled bool      `json:"enabled"`
	// NotBefore and Expires are the nbf and exp attributes, Unix seconds; absent when unset.
	NotBefore *int64 `json:"nbf,omitempty"`
	Expires   *int64 `json:"exp,omitempty"`
	Managed   bool   `json:"managed,omitempty"`
}

type stateCert struct {
	// Name is the name of the certificate's key, as stored (the certificate's own case).
	Name     string             `json:"name"`
	Versions []stateCertVersion `json:"versions"`
}

type stateCertVersion struct {
	// Version is also the version of the certificate's key.
	Version string `json:"version"`
	// Chain is the leaf and the issuer's chain, DER, leaf first.
	Chain   [][]byte        `json:"chain"`
	Policy  json.RawMessage `json:"policy"`
	Issuer  string          `json:"issuer"`
	Created time.Time       `json:"created"`
}

// encodeState is the state file of keys and certs, names in a stable order (by their map key),
// versions in the order they were created.
func encodeState(keys map[string][]*keyVersion, certs map[string][]*certVersion) ([]byte, error) {
	sf := stateFile{Version: stateVersion, Keys: []stateKey{}, Certificates: []stateCert{}}
	for _, nk := range sortedKeys(keys) {
		vs := keys[nk]
		k := stateKey{Name: vs[0].name}
		for _, kv := range vs {
			der, err := x509.MarshalPKCS8PrivateKey(kv.priv)
			if err != nil {
				return nil, fmt.Errorf("key %s version %s: %w", kv.name, kv.version, err)
			}
			k.Versions = append(k.Versions, stateKeyVersion{
				Version: kv.version, Kty: kv.kty, PKCS8: der, KeyOps: nonNil(kv.ops),
				Created: kv.created.UTC(), Updated: kv.updated.UTC(), Enabled: kv.enabled,
				NotBefore: kv.nbf, Expires: kv.exp, Managed: kv.managed,
			})
		}
		sf.Keys = append(sf.Keys, k)
	}
	for _, nk := range sortedKeys(certs) {
		vs := certs[nk]
		c := stateCert{Name: vs[0].name}
		for _, cv := range vs {
			chain := make([][]byte, len(cv.chain))
			for i, x := range cv.chain {
				chain[i] = x.Raw
			}
			c.Versions = append(c.Versions, stateCertVersion{Version: cv.version, Chain: chain, Policy: cv.policy, Issuer: cv.issuer, Created: cv.created.UTC()})
		}
		sf.Certificates = append(sf.Certificates, c)
	}
	b, err := json.MarshalIndent(sf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// nonNil keeps an empty key_ops an empty list rather than null, in the file and in key bundles.
func nonNil(v []string) []string {
	if v == nil {
		return []string{}
	}
	return v
}

// parseState reads a state file, checking that it holds what this emulator writes: the version
// this build reads, no unknown field, valid and distinct names and versions, private keys of the
// emulated types and sizes matching their kty, key_ops the key type allows, nbf before exp, and
// certificates whose leaf is the public key of the key version of the same name and version. It
// refuses anything else rather than start a vault with part of its state.
func parseState(data []byte) (map[string][]*keyVersion, map[string][]*certVersion, error) {
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, nil, fmt.Errorf("not a state file: %w", err)
	}
	if head.Version != stateVersion {
		return nil, nil, fmt.Errorf("state version %d, this build reads %d", head.Version, stateVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var sf stateFile
	if err := dec.Decode(&sf); err != nil {
		return nil, nil, fmt.Errorf("not a state file: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, nil, errors.New("not a state file: data after the JSON object")
	}
	keys := map[string][]*keyVersion{}
	for _, k := range sf.Keys {
		if !validName(k.Name) {
			return nil, nil, fmt.Errorf("key name %q is not a Key Vault name", k.Name)
		}
		nk := nameKey(k.Name)
		if _, dup := keys[nk]; dup {
			return nil, nil, fmt.Errorf("key %s appears twice", k.Name)
		}
		if len(k.Versions) == 0 {
			return nil, nil, fmt.Errorf("key %s has no version", k.Name)
		}
		var vs []*keyVersion
		for _, v := range k.Versions {
			kv, err := parseKeyVersion(k.Name, v)
			if err != nil {
				return nil, nil, fmt.Errorf("key %s version %s: %w", k.Name, v.Version, err)
			}
			if slices.ContainsFunc(vs, func(o *keyVersion) bool { return nameKey(o.version) == nameKey(kv.version) }) {
				return nil, nil, fmt.Errorf("key %s: version %s appears twice", k.Name, v.Version)
			}
			vs = append(vs, kv)
		}
		keys[nk] = vs
	}
	certs := map[string][]*certVersion{}
	for _, c := range sf.Certificates {
		nk := nameKey(c.Name)
		kvs := keys[nk]
		if !validName(c.Name) || len(kvs) == 0 || kvs[0].name != c.Name {
			return nil, nil, fmt.Errorf("certificate %q has no key of its name", c.Name)
		}
		if _, dup := certs[nk]; dup {
			return nil, nil, fmt.Errorf("certificate %s appears twice", c.Name)
		}
		if len(c.Versions) == 0 {
			return nil, nil, fmt.Errorf("certificate %s has no version", c.Name)
		}
		var vs []*certVersion
		for _, v := range c.Versions {
			cv, err := parseCertVersion(c.Name, v, kvs)
			if err != nil {
				return nil, nil, fmt.Errorf("certificate %s version %s: %w", c.Name, v.Version, err)
			}
			if slices.ContainsFunc(vs, func(o *certVersion) bool { return nameKey(o.version) == nameKey(cv.version) }) {
				return nil, nil, fmt.Errorf("certificate %s: version %s appears twice", c.Name, v.Version)
			}
			vs = append(vs, cv)
		}
		certs[nk] = vs
	}
	return keys, certs, nil
}

func parseKeyVersion(name string, v stateKeyVersion) (*keyVersion, error) {
	if !validName(v.Version) {
		return nil, errors.New("not a version")
	}
	priv, err := x509.ParsePKCS8PrivateKey(v.PKCS8)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	var signer crypto.Signer
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		if v.Kty != "RSA" && v.Kty != "RSA-HSM" {
			return nil, fmt.Errorf("an RSA key of kty %q", v.Kty)
		}
		if n := k.N.BitLen(); n != 2048 && n != 3072 && n != 4096 {
			return nil, fmt.Errorf("RSA %d is not an emulated key size", n)
		}
		signer = k
	case *ecdsa.PrivateKey:
		if v.Kty != "EC" && v.Kty != "EC-HSM" {
			return nil, fmt.Errorf("an EC key of kty %q", v.Kty)
		}
		if c := k.Curve.Params().Name; c != "P-256" && c != "P-384" && c != "P-521" {
			return nil, fmt.Errorf("curve %s is not emulated", c)
		}
		signer = k
	default:
		return nil, fmt.Errorf("private key of type %T is not emulated", priv)
	}
	if err := checkKeyOps(v.Kty, v.KeyOps); err != nil {
		return nil, err
	}
	if v.NotBefore != nil && v.Expires != nil && *v.NotBefore >= *v.Expires {
		return nil, fmt.Errorf("nbf (%d) is not before exp (%d)", *v.NotBefore, *v.Expires)
	}
	if !writableTime(v.Created) || !writableTime(v.Updated) {
		return nil, errors.New("created or updated out of range")
	}
	return &keyVersion{
		name: name, version: v.Version, kty: v.Kty, priv: signer, ops: nonNil(v.KeyOps),
		created: v.Created, updated: v.Updated, enabled: v.Enabled,
		nbf: v.NotBefore, exp: v.Expires, managed: v.Managed,
	}, nil
}

// parseCertVersion reads a certificate version whose key versions are kvs. A certificate read
// from the file has its pending operation completed.
func parseCertVersion(name string, v stateCertVersion, kvs []*keyVersion) (*certVersion, error) {
	i := slices.IndexFunc(kvs, func(kv *keyVersion) bool { return kv.version == v.Version })
	if i < 0 {
		return nil, errors.New("no key version of the same version")
	}
	if len(v.Chain) == 0 {
		return nil, errors.New("no certificate")
	}
	chain := make([]*x509.Certificate, len(v.Chain))
	for j, der := range v.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("chain[%d]: %w", j, err)
		}
		chain[j] = c
	}
	pub, ok := kvs[i].priv.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(chain[0].PublicKey) {
		return nil, errors.New("the certificate is not of its key")
	}
	if !isSet(v.Policy) || v.Policy[0] != '{' {
		return nil, errors.New("no policy")
	}
	if v.Issuer == "" {
		return nil, errors.New("no issuer")
	}
	if !writableTime(v.Created) {
		return nil, errors.New("created out of range")
	}
	return &certVersion{name: name, version: v.Version, chain: chain, policy: slices.Clone(v.Policy), issuer: v.Issuer, created: v.Created}, nil
}

// writableTime reports whether t can be written back to the file: encoding/json writes years
// 0-9999 only, and the file has times in UTC.
func writableTime(t time.Time) bool {
	y := t.UTC().Year()
	return y >= 0 && y <= 9999
}

// loadState reads the state file at path: none (a first start) is an empty vault. The file holds
// private keys, so it must be a regular file of this user (the effective uid), readable and
// writable by no one else; it is opened without following a symbolic link and checked as opened.
//
// A file refused for what it is (a link, not a regular file, another user's, open to others) is
// an ErrStateAccess error; one whose content does not parse, an ErrStateInvalid error.
func loadState(path string) (map[string][]*keyVersion, map[string][]*certVersion, error) {
	data, err := atomicfile.ReadOwned(path, 0o077, maxStateFile)
	var refused *atomicfile.RefusedError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return map[string][]*keyVersion{}, map[string][]*certVersion{}, nil
	case errors.Is(err, atomicfile.ErrNotOwned) && errors.As(err, &refused):
		return nil, nil, fmt.Errorf("%w: owned by uid %d, not by this user (uid %d); it holds the vault's private keys", ErrStateAccess, refused.Owner, os.Geteuid())
	case errors.Is(err, atomicfile.ErrOpenToOthers) && errors.As(err, &refused):
		return nil, nil, fmt.Errorf("%w: mode %#o lets others read or write it; it holds the vault's private keys and must be 0600", ErrStateAccess, refused.Mode.Perm())
	case errors.As(err, &refused):
		return nil, nil, fmt.Errorf("%w: %s", ErrStateAccess, refused.Reason)
	case errors.Is(err, atomicfile.ErrTooLarge):
		return nil, nil, fmt.Errorf("%w: %w", ErrStateInvalid, err)
	case err != nil:
		return nil, nil, err
	}
	keys, certs, err := parseState(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrStateInvalid, err)
	}
	return keys, certs, nil
}

// Errors of a state file New refuses: for what the file is, or for what it holds.
var (
	ErrStateAccess  = errors.New("state file refused")
	ErrStateInvalid = errors.New("state file does not parse")
)

// commitLocked writes the vault's state to Config.StatePath after a change (nothing to do without
// one); if that fails, undo reverts the change, so that the vault never reports a change it did
// not keep, and the error (answered 500) says why. s.mu must be held, so that writes never
// interleave and each writes the state of its own change.
//
// A write can fail after its rename (at the directory's sync), with the change already in the
// file: the state as undone is then written again, so that a restart does not bring back a
// change the vault answered 500 for. If that fails too, the file may hold the undone change until
// the next change is written (each write holds the whole state); only a restart before then
// brings it back.
func (s *Server) commitLocked(undo func()) error {
	if s.cfg.StatePath == "" {
		return nil
	}
	write := func() error {
		b, err := encodeState(s.keys, s.certs)
		if err == nil {
			err = writeState(s.cfg.StatePath, b, 0o600)
		}
		return err
	}
	err := write()
	if err == nil {
		return nil
	}
	undo()
	s.log.Error("key vault state not kept: the change is undone", "file", s.cfg.StatePath, "err", err)
	if err2 := write(); err2 != nil {
		s.log.Error("key vault state file not written again after the undo: it holds the undone change if the failed write had renamed it in place, until the next change is written", "file", s.cfg.StatePath, "err", err2)
	}
	return fmt.Errorf("the vault could not keep its state in %s, the change is undone: %w", s.cfg.StatePath, err)
}

// writeState writes the state file; tests replace it to fail where a disk would.
var writeState = atomicfile.Write

// unstoreKeyLocked removes the latest version of the key nk (a map key), which storeKeyLocked
// stored; s.mu must be held.
func (s *Server) unstoreKeyLocked(nk string) {
	vs := s.keys[nk]
	vs[len(vs)-1] = nil
	if vs = vs[:len(vs)-1]; len(vs) == 0 {
		delete(s.keys, nk)
	} else {
		s.keys[nk] = vs
	}
}
