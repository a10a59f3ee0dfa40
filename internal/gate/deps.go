package gate

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/notaryproject/notation-core-go/signature"
	nx509 "github.com/notaryproject/notation-core-go/x509"

	"github.com/attested-kv/attested-kv/internal/cliutil"
	"github.com/attested-kv/attested-kv/internal/keyvault"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/tpm"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// DefaultDeps are the production collaborators: the TPM named by the config and the MAA client,
// the verifier with the instance's published keys, the rule file (or the baseline), Key Vault.
func DefaultDeps() Deps {
	return Deps{
		Attester: newTPMAttester,
		Verifier: newVerifier,
		Rules:    loadRules,
		Key:      newKeyVaultSource,
		Now:      time.Now,
		Version:  cliutil.Version,
	}
}

// tpmAttester attests with the TPM at addr through the MAA client.
type tpmAttester struct {
	client *maa.Client
	cfg    Config
	log    *slog.Logger
}

func newTPMAttester(_ context.Context, c Config, log *slog.Logger) (Attester, error) {
	opts := maa.ClientOptions{Logger: log}
	if c.OSRelease != "" {
		info, err := maa.ReadOSRelease(c.OSRelease)
		if err != nil {
			return nil, validationf("plugin config %s: %v", KeyOSRelease, err)
		}
		opts.OS = &info
	}
	client, err := maa.NewClient(c.AttestationURL, opts)
	if err != nil {
		return nil, err
	}
	return &tpmAttester{client: client, cfg: c, log: log}, nil
}

// Attest implements Attester.
func (a *tpmAttester) Attest(ctx context.Context, nonce string) (string, error) {
	dev, err := tpm.Open(ctx, a.cfg.TPM, tpm.WithEventLogPath(a.cfg.TCGLog), tpm.WithLogger(a.log),
		tpm.WithEphemeralKeyCache(a.cfg.KeyCacheDir))
	if err != nil {
		return "", fmt.Errorf("TPM %s: %w", a.cfg.TPM, err)
	}
	defer dev.Close()
	return a.client.AttestNonce(ctx, dev, nonce)
}

func newVerifier(c Config) (TokenVerifier, error) {
	return maa.NewVerifier(maa.VerifierOptions{
		Instance: c.AttestationURL,
		Keys:     maa.NewRemoteKeySet(c.AttestationURL, maa.JWKSOptions{HTTPClient: &http.Client{Timeout: 30 * time.Second}}),
		MaxAge:   c.MaxTokenAge,
	})
}

// ruleSet adapts a compiled rule set to ClaimRules.
type ruleSet struct{ set *rules.Set }

func (r ruleSet) Check(claims map[string]any) error { return r.set.Evaluate(claims).Err() }

func loadRules(c Config) (ClaimRules, error) {
	s, err := rules.LoadOrBaseline(c.RulesPath)
	if err != nil {
		return nil, err
	}
	return ruleSet{s}, nil
}

// tryTimeout bounds one try of a request to Entra ID or Key Vault, as the MAA client bounds its
// own.
const tryTimeout = 30 * time.Second

// kvSource opens a Key Vault key with the credential of the plugin config.
type kvSource struct {
	id   keyvault.KeyID
	cred azcore.TokenCredential
	opts keyvault.Options
	log  *slog.Logger
}

func newKeyVaultSource(keyID string, c Config, log *slog.Logger) (KeySource, error) {
	id, err := keyvault.ParseKeyID(keyID)
	if err != nil {
		return nil, err
	}
	// Each try of a request to Entra ID, the managed identity endpoint or Key Vault is bounded, so
	// that a connection that stalls is retried rather than waited on until the deadline (the
	// Azure SDK sets no per-try limit by default).
	var co azcore.ClientOptions
	co.Retry.TryTimeout = tryTimeout
	cred, err := keyvault.NewCredential(keyvault.CredentialOptions{Type: c.CredentialType, ClientID: c.ClientID, ClientOptions: co})
	if err != nil {
		return nil, err
	}
	o := keyvault.Options{Credential: cred, ClientOptions: co}
	if c.CACerts != "" {
		if o.CACerts, err = nx509.ReadCertificateFile(c.CACerts); err != nil {
			return nil, validationf("%s: %v", KeyCACerts, err)
		}
	}
	return &kvSource{id: id, cred: cred, opts: o, log: log}, nil
}

// Warm implements KeySource: the access token only (Entra ID or the managed identity endpoint).
func (k *kvSource) Warm(ctx context.Context) {
	start := time.Now()
	if err := keyvault.WarmToken(ctx, k.cred, k.id); err != nil {
		k.log.Debug("access token not fetched ahead; it is fetched when the key is opened", "err", err)
		return
	}
	k.log.Debug("access token fetched during the attestation", "took", time.Since(start))
}

// Open implements KeySource.
func (k *kvSource) Open(ctx context.Context) (signature.Signer, error) {
	k.log.Debug("opening Key Vault key", "vault", k.id.VaultURL, "name", k.id.Name, "version", k.id.Version)
	return keyvault.NewSigner(ctx, k.id, k.opts)
}
