package localstack

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // the registry's storage

	"github.com/attested-kv/attested-kv/internal/atomicfile"
	"github.com/attested-kv/attested-kv/internal/azure"
	"github.com/attested-kv/attested-kv/internal/emulator/entra"
	kvemu "github.com/attested-kv/attested-kv/internal/emulator/keyvault"
	emu "github.com/attested-kv/attested-kv/internal/emulator/maa"
	"github.com/attested-kv/attested-kv/internal/gate"
	"github.com/attested-kv/attested-kv/internal/keyvault"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/notationcfg"
	"github.com/attested-kv/attested-kv/internal/provision"
	maapolicy "github.com/attested-kv/attested-kv/policy/maa"
)

// Names the local stack provisions.
const (
	// SigningKeyName is the Notation key name and the Key Vault certificate name.
	SigningKeyName = "attested-local"
	// SigningSubject carries C, ST and O, which Notation's trusted identities require.
	SigningSubject = "CN=attested-local signer, O=attested-kv local stack, ST=Local, C=ZZ"
	// TrustedIdentity is the trust policy's identity for SigningSubject.
	TrustedIdentity = "x509.subject: C=ZZ, ST=Local, O=attested-kv local stack, CN=attested-local signer"
	// PluginBinary is the plugin executable's name.
	PluginBinary = "notation-" + gate.Name
)

// signing is the signing half of the stack: Entra ID and Key Vault emulators, the registry.
type signing struct {
	entra   *entra.Server
	vault   *kvemu.Server
	servers []*http.Server

	// clientID and clientSecret are the signing identity's, which the plugin uses (exported
	// by Env); operatorID and operatorSecret are the operator's, which provisions the vault and
	// writes the attestation policy from within the stack, and are never written anywhere.
	tenant, clientID, clientSecret string
	operatorID, operatorSecret     string
	entraURL, vaultURL             string
	registryAddr                   string
	keyID                          string
	// warnings are what a user must know about the stack that is not an error.
	warnings []string
	// osRelease is the os-release file the attestations describe the OS with; "" = the host's.
	osRelease string
}

// osReleaseFor chooses the os-release the stack's attestations send: the host's (at host), unless it
// cannot be read or gives major version 0 (a VERSION_ID of 0.x), which Azure's client and the MAA
// emulator refuse; then one of the stack's own, naming the emulated VM's OS.
func (s *signing) osReleaseFor(p paths, host string) error {
	if info, err := maa.ReadOSRelease(host); err == nil && info.VersionMajor != 0 {
		return nil
	}
	s.osRelease = filepath.Join(p.dir, "os-release")
	return atomicfile.Write(s.osRelease, []byte("NAME=\"attested-kv local stack\"\nVERSION_ID=\"1.0\"\n"), 0o644)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func uuid() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// startSigning starts the Entra ID and Key Vault emulators (HTTPS) and the registry (HTTP on
// loopback, reached as localhost so notation and oras use plain HTTP), and serves them until ctx
// ends. serve runs each server in the caller's supervision.
func startSigning(p paths, tlsConfig *tls.Config, r *restart, log *slog.Logger, serve func(string, func() error)) (*signing, error) {
	s := &signing{}
	s.tenant, s.clientID, s.clientSecret = r.identity()
	s.operatorID, s.operatorSecret = uuid(), randomHex(24)
	var err error
	if s.entra, err = entra.New(entra.Config{TenantID: s.tenant, Clients: map[string]string{s.clientID: s.clientSecret, s.operatorID: s.operatorSecret}, Logger: log.With("component", "entra")}); err != nil {
		return nil, err
	}
	entraLn, err := keepPort(r, "Entra ID emulator", urlHost(r.prev.EntraURL), listenTCP)
	if err != nil {
		return nil, fmt.Errorf("Entra ID emulator: %w", err)
	}
	s.entraURL = "https://" + entraLn.Addr().String()
	vaultLn, err := keepPort(r, "Key Vault emulator", urlHost(r.prev.KeyVaultURL), listenTCP)
	if err != nil {
		entraLn.Close()
		return nil, fmt.Errorf("Key Vault emulator: %w", err)
	}
	s.vaultURL = "https://" + vaultLn.Addr().String()
	if s.vault, err = kvemu.New(kvemu.Config{
		Authority: s.entraURL, TenantID: s.tenant,
		ValidateToken: func(raw string) (string, error) {
			c, err := s.entra.ValidateAccessToken(raw, kvemu.Resource)
			if err != nil {
				return "", err
			}
			return c.ObjectID, nil
		},
		Assignments: s.vaultAssignments(),
		// Key Vault issues a certificate asynchronously: the bootstrap's wait for the operation
		// runs at every start that creates one.
		PendingPolls: 1,
		// Key Vault keeps its keys: so does the emulated vault, across restarts of the stack.
		StatePath: p.vaultState(),
		Logger:    log.With("component", "keyvault"),
	}); err != nil {
		entraLn.Close()
		vaultLn.Close()
		switch {
		case errors.Is(err, kvemu.ErrStateAccess):
			// The file holds the signing key: removing it would make everything signed so far
			// unverifiable, where its mode or owner is what is wrong.
			err = fmt.Errorf("%w (make it a regular file of this user, mode 0600: chmod 600 %s)", err, p.vaultState())
		case errors.Is(err, kvemu.ErrStateInvalid):
			err = fmt.Errorf("%w (if it cannot be repaired, remove it: the stack then starts with an empty vault and a new signing key, and what was signed with the old key no longer verifies)", err)
		}
		return nil, err
	}
	regLn, err := keepPort(r, "registry", r.prev.Registry, listenLoopback)
	if err != nil {
		entraLn.Close()
		vaultLn.Close()
		return nil, fmt.Errorf("registry: %w", err)
	}
	_, port, _ := net.SplitHostPort(regLn.Addr().String())
	s.registryAddr = "localhost:" + port
	if err := os.MkdirAll(p.registryDir(), 0o700); err != nil {
		return nil, err
	}
	// distribution v3 has no Referrers API, so notation (which by default writes the referrers tag
	// schema), oras and oras-attest all meet on the tag schema; deletion is enabled so the
	// outdated referrers indexes can be removed.
	regCfg := &configuration.Configuration{}
	regCfg.Storage = configuration.Storage{
		"filesystem": configuration.Parameters{"rootdirectory": p.registryDir()},
		"delete":     configuration.Parameters{"enabled": true},
	}
	regCfg.Log.Level = "error"
	regCfg.Log.AccessLog.Disabled = true
	registry := handlers.NewApp(context.Background(), regCfg)

	entraHTTP := &http.Server{Handler: s.entra.Handler(), TLSConfig: tlsConfig.Clone(), ReadHeaderTimeout: 10 * time.Second}
	vaultHTTP := &http.Server{Handler: s.vault.Handler(), TLSConfig: tlsConfig.Clone(), ReadHeaderTimeout: 10 * time.Second}
	regHTTP := &http.Server{Handler: registry, ReadHeaderTimeout: 10 * time.Second}
	s.servers = []*http.Server{entraHTTP, vaultHTTP, regHTTP}
	serve("Entra ID emulator", func() error { return entraHTTP.ServeTLS(entraLn, "", "") })
	serve("Key Vault emulator", func() error { return vaultHTTP.ServeTLS(vaultLn, "", "") })
	serve("registry", func() error { return regHTTP.Serve(regLn) })
	return s, nil
}

func (s *signing) shutdown(ctx context.Context) {
	for _, srv := range s.servers {
		srv.Shutdown(ctx)
	}
}

// vaultAssignments are the emulated vault's role assignments, those attest-bootstrap apply makes
// on Azure (internal/azure): the operator holds Key Vault Certificates Officer on the vault, and
// the signing identity the signer role on the signing key, Certificate User on its certificate
// and Secrets User on its secret, and nothing else. So the plugin, which signs as the signing
// identity, is refused anything else the vault offers (creating or re-enabling a key, for one),
// as it would be on Azure.
func (s *signing) vaultAssignments() []kvemu.Assignment {
	signer := entra.ObjectID(s.clientID)
	return []kvemu.Assignment{
		{Principal: entra.ObjectID(s.operatorID), DataActions: kvemu.CertificatesOfficerActions},
		{Principal: signer, Scope: "keys/" + SigningKeyName, DataActions: azure.SignerDataActions()},
		{Principal: signer, Scope: "certificates/" + SigningKeyName, DataActions: kvemu.CertificateUserActions},
		{Principal: signer, Scope: "secrets/" + SigningKeyName, DataActions: kvemu.SecretsUserActions},
	}
}

// credential is the stack's operator, as azidentity uses it against Azure.
func (s *signing) credential(roots *x509.CertPool) (azcore.TokenCredential, azcore.ClientOptions, error) {
	opts := azcore.ClientOptions{
		Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: s.entraURL + "/"},
		Transport: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}},
	}
	cred, err := azidentity.NewClientSecretCredential(s.tenant, s.operatorID, s.operatorSecret, &azidentity.ClientSecretCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: true})
	if err != nil {
		return nil, opts, err
	}
	return keyvault.RedactErrors(cred), opts, nil
}

// provision ensures the signing certificate through the Azure SDK, as attest-bootstrap apply does
// on Azure (the vault's current version is reused while it is fit, so a restart keeps the key the
// previous start signed with), and prepares the Notation configuration: trust policy and store,
// the plugin, and the signing key entry.
func (s *signing) provision(ctx context.Context, p paths, roots *x509.CertPool, maaURL, tpmAddr, pluginPath string, log *slog.Logger) error {
	cred, opts, err := s.credential(roots)
	if err != nil {
		return err
	}
	res, err := provision.EnsureSigningCertificate(ctx, s.vaultURL, cred, &azcertificates.ClientOptions{ClientOptions: opts, DisableChallengeResourceVerification: true},
		provision.SigningCertificate{Name: SigningKeyName, Subject: SigningSubject, KeyType: "RSA", KeySize: 2048})
	if err != nil {
		return fmt.Errorf("provisioning the signing certificate: %w", err)
	}
	if len(res.Replaced) > 0 {
		w := "the signing certificate was replaced by a new version with a new key (" + strings.Join(res.Replaced, "; ") + "): what was signed with the previous key no longer verifies with the trust store written now; sign it again"
		s.warnings = append(s.warnings, w)
		log.Warn(w)
	}
	s.keyID = res.KeyID
	if err := s.osReleaseFor(p, maa.DefaultOSReleasePath); err != nil {
		return err
	}
	if err := notationcfg.WriteTrust(p.notationConfig(), notationcfg.Trust{
		PolicyName: SigningKeyName, StoreName: SigningKeyName, Scopes: []string{"*"},
		Roots: []*x509.Certificate{res.Certificate}, Identities: []string{TrustedIdentity},
	}); err != nil {
		return fmt.Errorf("notation trust policy: %w", err)
	}
	key := notationcfg.SigningKey{
		Name: SigningKeyName, KeyID: res.KeyID, Plugin: gate.Name, Default: true,
		PluginConfig: map[string]string{
			gate.KeyAttestationURL: maaURL,
			gate.KeyTPM:            tpmAddr,
			gate.KeyTCGLog:         p.tcgLog(),
			gate.KeyCredentialType: "environment",
			gate.KeyTokenDir:       p.tokenDir(),
			gate.KeyLogFile:        p.pluginLog(),
			gate.KeyKeyCache:       p.keyCache(),
		},
	}
	if s.osRelease != "" {
		key.PluginConfig[gate.KeyOSRelease] = s.osRelease
	}
	if err := notationcfg.WriteSigningKey(p.notationConfig(), key); err != nil {
		return fmt.Errorf("notation signing key: %w", err)
	}
	// The attestation policy, through the same client the bootstrap uses against Azure.
	pc, err := maa.NewPolicyClient(maaURL, cred, &opts)
	if err != nil {
		return err
	}
	if _, err := pc.SetPolicy(ctx, maa.AttestationTypeAzureGuest, maapolicy.AzureGuest); err != nil {
		return fmt.Errorf("setting the attestation policy: %w", err)
	}
	installed := filepath.Join(p.notationLibexec(), "plugins", gate.Name, PluginBinary)
	if pluginPath == "" {
		// A copy an earlier start installed would be another build's plugin, used without notice.
		if err := os.Remove(installed); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the earlier plugin copy: %w", err)
		}
		w := "the plugin binary " + PluginBinary + " was not found next to attest-bootstrap, so notation sign cannot use the attested-kv plugin: build it (make build) and put it beside attest-bootstrap, then restart the stack"
		s.warnings = append(s.warnings, w)
		log.Warn(w)
		return nil
	}
	return installPlugin(pluginPath, installed)
}

// installPlugin copies the plugin where notation looks for it ({NOTATION_LIBEXEC}/plugins/NAME/).
func installPlugin(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("plugin: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// KeyVaultCounts reports how many requests of each Key Vault operation were answered, by status.
type KeyVaultCounts map[string]map[int]int

func (s *signing) counts() KeyVaultCounts {
	out := KeyVaultCounts{}
	for _, r := range s.vault.Requests() {
		if out[r.Op] == nil {
			out[r.Op] = map[int]int{}
		}
		out[r.Op][r.Status]++
	}
	return out
}

var errNoSigning = errors.New("the signing components are not running")

// authorizeAttestationAdmin checks that a policy request to the MAA emulator carries a token of
// this tenant for MAA's data plane, of the operator: on Azure only the operator holds
// Attestation Contributor on the provider (internal/azure), so the signing identity may not
// read or write the policy that decides what it may sign.
func (s *signing) authorizeAttestationAdmin(r *http.Request) error {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return errors.New("no bearer token")
	}
	c, err := s.entra.ValidateAccessToken(raw, strings.TrimSuffix(maa.AttestationScope, "/.default"))
	if err != nil {
		return err
	}
	if c.ObjectID != entra.ObjectID(s.operatorID) {
		return fmt.Errorf("principal %s: %w (only the operator holds Attestation Contributor)", c.ObjectID, emu.ErrNoPolicyRole)
	}
	return nil
}
