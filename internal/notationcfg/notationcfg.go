// Package notationcfg writes and reads the files Notation verifies with: the trust policy
// (trustpolicy.json: notation v1.3 reads only that name) and the trust store
// (truststore/x509/{ca|signingAuthority|tsa}/NAME/*.pem), and the signing key list
// (signingkeys.json) that `notation key add` maintains, using notation-go's own types.
package notationcfg

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/config"
	"github.com/notaryproject/notation-go/dir"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
)

// storeName is Notation's trust store name rule.
var storeName = regexp.MustCompile(`^[a-zA-Z0-9_.-]+$`)

// Trust describes one trust policy statement and its trust store.
type Trust struct {
	// PolicyName names the statement; StoreName the "ca" trust store.
	PolicyName, StoreName string
	// Scopes are registry scopes (repositories without tags), or ["*"].
	Scopes []string
	// Roots go into the trust store: root certificates only, as Notation requires.
	Roots []*x509.Certificate
	// Identities are trusted x509.subject identities, or ["*"].
	Identities []string
}

// maxTrustPolicyFile bounds how much of a trustpolicy.json WriteTrust and NewVerifier read.
const maxTrustPolicyFile = 1 << 20

// ErrNotTrustPolicy reports an existing trustpolicy.json that WriteTrust cannot read as a
// Notation trust policy document (not JSON, not the document's shape, too large, or not a
// regular file). WriteTrust leaves such a file unchanged.
var ErrNotTrustPolicy = errors.New("not a Notation trust policy document")

// ConflictError reports that the statement WriteTrust writes cannot join the trust policy
// document already in Path: notation-go's validation rejects the merged document. WriteTrust
// leaves the file unchanged.
type ConflictError struct {
	// Path is the trust policy file.
	Path string
	// Policy is the name of the statement WriteTrust was writing.
	Policy string
	// Statement is the existing statement in the way, and Scope the registry scope both
	// statements claim; either is empty when notation-go rejects the document for another reason.
	Statement, Scope string
	// Err is notation-go's validation error.
	Err error
}

// Error names the file, the statements in conflict, and what the user can do about it.
func (e *ConflictError) Error() string {
	const elsewhere = "point NOTATION_CONFIG (or --notation-config) at a separate directory"
	fix := "the file was left unchanged; remove or edit that statement, or " + elsewhere
	if e.Statement == "" {
		fix = "the file was left unchanged; fix it, or " + elsewhere
	}
	switch {
	case e.Statement != "" && e.Scope != "":
		return fmt.Sprintf("trust policy %s: existing statement %q already covers registry scope %q, which statement %q needs, and notation allows one statement per scope; %s",
			e.Path, e.Statement, e.Scope, e.Policy, fix)
	case e.Statement != "":
		return fmt.Sprintf("trust policy %s: existing statement %q conflicts with statement %q: %v; %s", e.Path, e.Statement, e.Policy, e.Err, fix)
	default:
		return fmt.Sprintf("trust policy %s: notation rejects it with statement %q added: %v; %s", e.Path, e.Policy, e.Err, fix)
	}
}

// Unwrap returns notation-go's validation error.
func (e *ConflictError) Unwrap() error { return e.Err }

// WriteTrust puts t into the Notation configuration under configDir (NOTATION_CONFIG): the
// trust policy statement named t.PolicyName in trustpolicy.json, and t.Roots as
// root-0.pem, root-1.pem, ... in the "ca" trust store t.StoreName.
//
// Every other statement in an existing trustpolicy.json is kept as it was, in its place,
// along with the document's version and any other top-level fields: a statement named
// t.PolicyName is replaced where it stands, otherwise the new one is appended. The merged
// document must pass notation-go's validation; if it does not (typically another statement
// already covers the same registry scope, e.g. "*"), WriteTrust writes nothing and returns a
// *ConflictError naming that statement. An existing file that is not a trust policy document
// is never overwritten: WriteTrust returns an error wrapping ErrNotTrustPolicy. Files are
// replaced atomically with mode 0600. The trust store is written before the policy that
// refers to it: root-N.pem files in t.StoreName are replaced by t.Roots and those beyond them
// are removed, so that a root dropped from t.Roots is no longer trusted; any other file there
// and every other trust store are left alone.
func WriteTrust(configDir string, t Trust) error {
	if !storeName.MatchString(t.StoreName) || t.PolicyName == "" || len(t.Roots) == 0 {
		return fmt.Errorf("notation trust: invalid store %q, policy %q or no roots", t.StoreName, t.PolicyName)
	}
	ours := trustpolicy.TrustPolicy{
		Name:                  t.PolicyName,
		RegistryScopes:        t.Scopes,
		SignatureVerification: trustpolicy.SignatureVerification{VerificationLevel: trustpolicy.LevelStrict.Name},
		TrustStores:           []string{"ca:" + t.StoreName},
		TrustedIdentities:     t.Identities,
	}
	alone := &trustpolicy.Document{Version: "1.0", TrustPolicies: []trustpolicy.TrustPolicy{ours}}
	if err := alone.Validate(); err != nil {
		return fmt.Errorf("notation trust policy: %w", err)
	}
	// The policy is read, merged and written back: two writers at once (two applies writing the
	// user's notation configuration) would each write their merge, and one's statement would be
	// lost. They take the configuration directory's lock; notation's own commands do not.
	release, err := lockConfigDir(configDir)
	if err != nil {
		return err
	}
	defer release()
	policyPath := filepath.Join(configDir, dir.PathTrustPolicy)
	policy, err := mergeTrustPolicy(policyPath, ours)
	if err != nil {
		return err
	}
	storeDir := filepath.Join(configDir, dir.X509TrustStoreDir("ca", t.StoreName))
	if err := atomicfile.MkdirAll(storeDir, 0o700); err != nil {
		return err
	}
	for i, c := range t.Roots {
		p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		if err := atomicfile.Write(filepath.Join(storeDir, rootFile(i)), p, 0o600); err != nil {
			return err
		}
	}
	if err := removeStaleRoots(storeDir, len(t.Roots)); err != nil {
		return err
	}
	return atomicfile.Write(policyPath, policy, 0o600)
}

// rootFile is the name of the trust store file of the i-th root WriteTrust writes.
func rootFile(i int) string { return fmt.Sprintf("root-%d.pem", i) }

// rootFileName matches the names rootFile gives, and only those.
var rootFileName = regexp.MustCompile(`^root-(0|[1-9][0-9]{0,8})\.pem$`)

// removeStaleRoots removes the root-N.pem files of storeDir that an earlier WriteTrust with more
// roots left, N >= n: notation trusts every certificate file in a trust store.
func removeStaleRoots(storeDir string, n int) error {
	entries, err := os.ReadDir(storeDir)
	if err != nil {
		return fmt.Errorf("notation trust store: %w", err)
	}
	for _, e := range entries {
		m := rootFileName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if i, _ := strconv.Atoi(m[1]); i < n { // at most 9 digits: always a number
			continue
		}
		if err := atomicfile.Remove(filepath.Join(storeDir, e.Name())); err != nil {
			return fmt.Errorf("notation trust store: removing a stale root: %w", err)
		}
	}
	return nil
}

// jsonMember is one member of a JSON object, its value kept as the file had it.
type jsonMember struct {
	key   string
	value json.RawMessage
}

// mergeTrustPolicy returns the trust policy file at path with statement ours in it (replacing
// the statement of the same name, or appended), validated by notation-go. Nothing is written.
func mergeTrustPolicy(path string, ours trustpolicy.TrustPolicy) ([]byte, error) {
	oursJSON, err := json.Marshal(ours)
	if err != nil {
		return nil, err
	}
	members := []jsonMember{
		{key: "version", value: json.RawMessage(`"1.0"`)},
		{key: "trustPolicies", value: json.RawMessage("[]")},
	}
	b, err := readTrustPolicy(path)
	if err != nil {
		return nil, err
	}
	if b != nil {
		if members, err = objectMembers(b); err != nil {
			return nil, fmt.Errorf("%s: %w: %v; it was left unchanged", path, ErrNotTrustPolicy, err)
		}
	}
	policies, version := -1, ""
	for i, m := range members {
		// encoding/json, and so notation, matches member names without regard to case.
		switch {
		case strings.EqualFold(m.key, "trustPolicies"):
			policies = i
		case strings.EqualFold(m.key, "version"):
			if err := json.Unmarshal(m.value, &version); err != nil {
				return nil, fmt.Errorf("%s: %w: version: %v; it was left unchanged", path, ErrNotTrustPolicy, err)
			}
		}
	}
	if policies < 0 || version == "" || bytes.Equal(members[policies].value, []byte("null")) {
		return nil, fmt.Errorf("%s: %w: it needs a \"version\" and a \"trustPolicies\" list; it was left unchanged", path, ErrNotTrustPolicy)
	}
	var statements []json.RawMessage
	if err := json.Unmarshal(members[policies].value, &statements); err != nil {
		return nil, fmt.Errorf("%s: %w: trustPolicies: %v; it was left unchanged", path, ErrNotTrustPolicy, err)
	}
	at := -1
	for i, raw := range statements {
		var s trustpolicy.TrustPolicy
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("%s: %w: trust policy statement %d: %v; it was left unchanged", path, ErrNotTrustPolicy, i+1, err)
		}
		if s.Name == ours.Name && at < 0 {
			at = i
		}
	}
	if at >= 0 {
		statements[at] = oursJSON
	} else {
		at = len(statements)
		statements = append(statements, oursJSON)
	}
	list := []byte("[")
	for i, raw := range statements {
		if i > 0 {
			list = append(list, ',')
		}
		list = append(list, raw...)
	}
	members[policies].value = append(list, ']')
	out, err := encodeMembers(members)
	if err != nil {
		return nil, err
	}
	// Validate exactly what notation will read.
	var doc trustpolicy.Document
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, err
	}
	if err := doc.Validate(); err != nil {
		return nil, conflict(path, &doc, at, err)
	}
	return out, nil
}

// readTrustPolicy reads at most maxTrustPolicyFile bytes of the regular file at path; it returns
// nil and no error if there is no file.
func readTrustPolicy(path string) ([]byte, error) {
	b, err := atomicfile.ReadRegular(path, maxTrustPolicyFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, nil
	case errors.Is(err, atomicfile.ErrNotRegular), errors.Is(err, atomicfile.ErrTooLarge):
		// notation itself refuses a trust policy that is a symlink or not a file.
		return nil, fmt.Errorf("%w: %w; it was left unchanged", ErrNotTrustPolicy, err)
	case err != nil:
		return nil, err
	}
	return b, nil
}

// objectMembers splits the JSON object b into its members in order, refusing keys that
// encoding/json would take for the same field and anything after the object.
func objectMembers(b []byte) ([]jsonMember, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	if tok, err := d.Token(); err != nil {
		return nil, err
	} else if tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var members []jsonMember
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		for _, m := range members {
			if strings.EqualFold(m.key, key) {
				return nil, fmt.Errorf("duplicate key %q", key)
			}
		}
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			return nil, err
		}
		members = append(members, jsonMember{key: key, value: v})
	}
	if _, err := d.Token(); err != nil {
		return nil, err
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return members, nil
}

// encodeMembers writes members as an indented JSON object, in order, ending in a newline.
func encodeMembers(members []jsonMember) ([]byte, error) {
	var compact bytes.Buffer
	compact.WriteByte('{')
	for i, m := range members {
		if i > 0 {
			compact.WriteByte(',')
		}
		k, err := json.Marshal(m.key)
		if err != nil {
			return nil, err
		}
		compact.Write(k)
		compact.WriteByte(':')
		compact.Write(m.value)
	}
	compact.WriteByte('}')
	var out bytes.Buffer
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// conflict explains why notation-go rejects doc, in which statement at is ours: another
// statement with the same name or a registry scope in common, else the library's own error.
func conflict(path string, doc *trustpolicy.Document, at int, err error) error {
	ours := doc.TrustPolicies[at]
	e := &ConflictError{Path: path, Policy: ours.Name, Err: err}
	for i, s := range doc.TrustPolicies {
		if i == at {
			continue
		}
		if s.Name == ours.Name {
			e.Statement = s.Name
			return e
		}
		for _, scope := range s.RegistryScopes {
			if slices.Contains(ours.RegistryScopes, scope) {
				e.Statement, e.Scope = s.Name, scope
				return e
			}
		}
	}
	return e
}

// SigningKey is a plugin-backed signing key entry.
type SigningKey struct {
	Name, KeyID, Plugin string
	PluginConfig        map[string]string
	// Default makes it the key `notation sign` uses without --key.
	Default bool
}

// WriteSigningKey adds or replaces k in configDir/signingkeys.json, keeping other keys.
func WriteSigningKey(configDir string, k SigningKey) error {
	release, err := lockConfigDir(configDir) // read, changed, written back: as WriteTrust
	if err != nil {
		return err
	}
	defer release()
	path := filepath.Join(configDir, dir.PathSigningKeys)
	var keys config.SigningKeys
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &keys); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	out := keys.Keys[:0]
	for _, e := range keys.Keys {
		if e.Name != k.Name {
			out = append(out, e)
		}
	}
	keys.Keys = append(out, config.KeySuite{
		Name:        k.Name,
		ExternalKey: &config.ExternalKey{ID: k.KeyID, PluginName: k.Plugin, PluginConfig: k.PluginConfig},
	})
	if k.Default {
		name := k.Name
		keys.Default = &name
	}
	b, err := json.MarshalIndent(keys, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// lockConfigDir creates the configuration directory if needed and takes its lock, for a read,
// change and write back of a file in it.
func lockConfigDir(configDir string) (func(), error) {
	if err := atomicfile.MkdirAll(configDir, 0o700); err != nil {
		return nil, err
	}
	release, err := atomicfile.LockDir(configDir)
	if err != nil {
		return nil, fmt.Errorf("notation configuration: %w", err)
	}
	return release, nil
}

// NewVerifier returns a Notation verifier for the trust policy file and the directory holding
// the trust store (the directory that contains "truststore/"), as notation itself would load
// them from NOTATION_CONFIG.
//
// The file is read as notation reads it: a symbolic link, or anything but a regular file, is
// refused, so that this verifier never judges with a policy notation itself would not load.
func NewVerifier(trustPolicyPath, configDir string) (notation.Verifier, error) {
	b, err := atomicfile.ReadRegular(trustPolicyPath, maxTrustPolicyFile)
	if errors.Is(err, atomicfile.ErrNotRegular) {
		err = fmt.Errorf("%w (notation, too, loads only a regular file)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("trust policy: %w", err)
	}
	var doc trustpolicy.Document
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("trust policy %s: %w", trustPolicyPath, err)
	}
	return verifier.New(&doc, truststore.NewX509TrustStore(dir.NewSysFS(configDir)), nil)
}

// DefaultConfigDir is where notation reads its configuration: NOTATION_CONFIG, else
// $XDG_CONFIG_HOME/notation (~/.config/notation).
func DefaultConfigDir() string {
	if d := os.Getenv("NOTATION_CONFIG"); d != "" {
		return d
	}
	p, err := dir.ConfigFS().SysPath()
	if err != nil {
		return ".notation"
	}
	return p
}
