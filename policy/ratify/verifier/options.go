package verifier

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/notaryproject/notation-go/dir"
	notation "github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/truststore"

	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/imageverify"
	"github.com/attested-kv/attested-kv/internal/keyvault"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/registryclient"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// registryOptions returns how the verifier reads the registry of the store config sc.
func registryOptions(sc StoreConfig) (registryclient.Options, error) {
	o := registryclient.Options{PlainHTTP: sc.Store.UseHTTP}
	ap := sc.Store.AuthProvider
	var typ string
	switch ap.Name {
	case "", "dockerConfig":
		return o, nil
	case "azureWorkloadIdentity":
		typ = keyvault.CredentialWorkloadID
	case "azureManagedIdentity":
		typ = keyvault.CredentialManagedID
	default:
		return o, fmt.Errorf("store authProvider %q is not supported by this verifier (azureWorkloadIdentity, azureManagedIdentity or dockerConfig)", ap.Name)
	}
	cred, err := keyvault.NewCredential(keyvault.CredentialOptions{Type: typ, ClientID: ap.ClientID})
	if err != nil {
		return o, fmt.Errorf("store authProvider %s: %w", ap.Name, err)
	}
	o.AzureCredential = cred
	return o, nil
}

// options builds the image verification options from the verifier config; cleanup removes the
// temporary trust store.
func options(c Config) (o imageverify.Options, cleanup func(), err error) {
	cleanup = func() {}
	o, root, err := buildOptions(c)
	if root != "" {
		cleanup = func() { os.RemoveAll(root) }
	}
	if err != nil {
		cleanup()
		return o, func() {}, err
	}
	return o, cleanup, nil
}

// buildOptions is options without the cleanup: it returns the temporary trust store's root, if
// it made one, even with an error.
func buildOptions(c Config) (imageverify.Options, string, error) {
	if c.AttestationURL == "" || c.KeyID == "" {
		return imageverify.Options{}, "", errors.New("attestationURL and keyID are required")
	}
	if err := maa.CheckInstance(c.AttestationURL); err != nil {
		return imageverify.Options{}, "", fmt.Errorf("attestationURL: %w", err)
	}
	if err := binding.CheckKeyID(c.KeyID); err != nil {
		return imageverify.Options{}, "", fmt.Errorf("keyID: %w", err)
	}
	o := imageverify.Options{AttestationURL: c.AttestationURL, KeyID: c.KeyID, MaxTokenAge: 5 * time.Minute}
	pins, err := imageverify.ParseCertPins(c.SigningCertSHA256)
	if err != nil {
		return o, "", fmt.Errorf("signingCertSHA256: %w", err)
	}
	o.SigningCertSHA256 = pins
	if c.MaxTokenAge != "" {
		d, err := time.ParseDuration(c.MaxTokenAge)
		if err != nil || d <= 0 {
			return o, "", fmt.Errorf("maxTokenAge %q: want a duration such as 5m", c.MaxTokenAge)
		}
		if d > maa.MaxSigningAge {
			return o, "", fmt.Errorf("maxTokenAge %q: at most %s, the oldest token the plugin signs with", c.MaxTokenAge, maa.MaxSigningAge)
		}
		o.MaxTokenAge = d
	}
	rs, err := rules.LoadOrBaseline(c.Rules)
	if err != nil {
		return o, "", err
	}
	o.Rules = rs
	if o.TokenKeys, err = maa.KeySetFor(c.AttestationURL, c.JWKSPath, maa.JWKSOptions{}); err != nil {
		return o, "", fmt.Errorf("jwksPath: %w", err)
	}
	if c.TrustPolicyDoc == nil || len(c.VerificationCerts) == 0 {
		return o, "", errors.New("trustPolicyDoc and verificationCerts are required: the token is trusted only through a verified signature")
	}
	storeRoot, err := trustStoreFromCerts(c.VerificationCerts)
	if err != nil {
		return o, storeRoot, err
	}
	nv, err := notation.New(c.TrustPolicyDoc, truststore.NewX509TrustStore(dir.NewSysFS(storeRoot)), nil)
	if err != nil {
		return o, storeRoot, err
	}
	o.Notation = nv
	return o, storeRoot, nil
}

// trustStoreFromCerts lays out the certificates of dirs as the trust store "ca:certs" in a
// private temporary directory, as Ratify's notation verifier does with verificationCerts.
func trustStoreFromCerts(dirs []string) (string, error) {
	root, err := os.MkdirTemp("", "ratify-maa-verifier-")
	if err != nil {
		return "", err
	}
	store := filepath.Join(root, dir.X509TrustStoreDir("ca", "certs"))
	if err := os.MkdirAll(store, 0o700); err != nil {
		return root, err
	}
	n := 0
	for _, d := range dirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			// A single file is accepted too.
			b, ferr := os.ReadFile(d)
			if ferr != nil {
				return root, fmt.Errorf("verificationCerts %s: %w", d, err)
			}
			if err := os.WriteFile(filepath.Join(store, fmt.Sprintf("cert-%d.pem", n)), b, 0o600); err != nil {
				return root, err
			}
			n++
			continue
		}
		for _, e := range entries {
			if e.IsDir() || !(strings.HasSuffix(e.Name(), ".pem") || strings.HasSuffix(e.Name(), ".crt") || strings.HasSuffix(e.Name(), ".cer")) {
				continue
			}
			b, err := os.ReadFile(filepath.Join(d, e.Name()))
			if err != nil {
				return root, err
			}
			if err := os.WriteFile(filepath.Join(store, fmt.Sprintf("cert-%d.pem", n)), b, 0o600); err != nil {
				return root, err
			}
			n++
		}
	}
	if n == 0 {
		return root, errors.New("verificationCerts holds no .pem, .crt or .cer certificate")
	}
	return root, nil
}
