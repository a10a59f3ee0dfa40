// Package notationcfg writes and reads the files Notation verifies with: the trust policy
// (trustpolicy.json: notation v1.3 reads only that name) and the trust store
// (truststore/x509/{ca|signingAuthority|tsa}/NAME/*.pem), and the signing key list
// (signingkeys.json) that `notation key add` maintains, using notation-go's own types.
package notationcfg

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

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

// WriteTrust writes trustpolicy.json and the trust store under configDir (NOTATION_CONFIG),
// replacing what a previous WriteTrust wrote for the same names.
func WriteTrust(configDir string, t Trust) error {
	if !storeName.MatchString(t.StoreName) || t.PolicyName == "" || len(t.Roots) == 0 {
		return fmt.Errorf("notation trust: invalid store %q, policy %q or no roots", t.StoreName, t.PolicyName)
	}
	doc := &trustpolicy.Document{
		Version: "1.0",
		TrustPolicies: []trustpolicy.TrustPolicy{{
			Name:                  t.PolicyName,
			RegistryScopes:        t.Scopes,
			SignatureVerification: trustpolicy.SignatureVerification{VerificationLevel: trustpolicy.LevelStrict.Name},
			TrustStores:           []string{"ca:" + t.StoreName},
			TrustedIdentities:     t.Identities,
		}},
	}
	if err := doc.Validate(); err != nil {
		return fmt.Errorf("notation trust policy: %w", err)
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(configDir, 0o700); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(configDir, dir.PathTrustPolicy), append(b, '\n'), 0o600); err != nil {
		return err
	}
	storeDir := filepath.Join(configDir, dir.X509TrustStoreDir("ca", t.StoreName))
	if err := os.MkdirAll(storeDir, 0o700); err != nil {
		return err
	}
	for i, c := range t.Roots {
		p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		if err := atomicfile.Write(filepath.Join(storeDir, fmt.Sprintf("root-%d.pem", i)), p, 0o600); err != nil {
			return err
		}
	}
	return nil
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
	if err := os.MkdirAll(configDir, 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// NewVerifier returns a Notation verifier for the trust policy file and the directory holding
// the trust store (the directory that contains "truststore/"), as notation itself would load
// them from NOTATION_CONFIG.
func NewVerifier(trustPolicyPath, configDir string) (notation.Verifier, error) {
	b, err := os.ReadFile(trustPolicyPath)
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
