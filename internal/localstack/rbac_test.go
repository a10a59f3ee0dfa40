package localstack

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/attested-kv/attested-kv/internal/keyvault"
	"github.com/attested-kv/attested-kv/internal/maa"
	maapolicy "github.com/attested-kv/attested-kv/policy/maa"
)

// TestSigningIdentityLeastPrivilege: the identity the stack exports (the one the plugin signs as)
// holds on the emulated vault exactly what attest-bootstrap apply grants the signing identity on
// Azure: it reads the signing key and signs with it, and reads the key's certificate and secret
// (the chain), and is refused everything else with Key Vault's RBAC answer, 403 ForbiddenByRbac:
// re-enabling or creating a key, creating a certificate, any other object; nor may it read or
// write the attestation policy. Before, any token of the tenant could do all of it.
func TestSigningIdentityLeastPrivilege(t *testing.T) {
	st, _ := runStack(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keys, id := signingKeyClient(t, st)
	cred, opts := exportedIdentity(t, st)
	certs, err := azcertificates.NewClient(id.VaultURL, cred, &azcertificates.ClientOptions{ClientOptions: opts, DisableChallengeResourceVerification: true})
	if err != nil {
		t.Fatal(err)
	}
	secrets, err := azsecrets.NewClient(id.VaultURL, cred, &azsecrets.ClientOptions{ClientOptions: opts, DisableChallengeResourceVerification: true})
	if err != nil {
		t.Fatal(err)
	}
	policies, err := maa.NewPolicyClient(st.MAAURL, cred, &opts)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("payload"))
	rs256 := azkeys.SignatureAlgorithmRS256
	for _, c := range []struct {
		name string
		// status is the status wanted: 0 for success.
		status int
		call   func() error
	}{
		{"read the signing key", 0, func() error { _, err := keys.GetKey(ctx, id.Name, id.Version, nil); return err }},
		{"sign with it", 0, func() error {
			_, err := keys.Sign(ctx, id.Name, id.Version, azkeys.SignParameters{Algorithm: &rs256, Value: digest[:]}, nil)
			return err
		}},
		{"read its certificate", 0, func() error { _, err := certs.GetCertificate(ctx, id.Name, "", nil); return err }},
		{"read its secret (the chain)", 0, func() error { _, err := secrets.GetSecret(ctx, id.Name, "", nil); return err }},
		{"re-enable the key", http.StatusForbidden, func() error {
			_, err := keys.UpdateKey(ctx, id.Name, id.Version, azkeys.UpdateKeyParameters{KeyAttributes: &azkeys.KeyAttributes{Enabled: ptrTo(true)}}, nil)
			return err
		}},
		{"create a key", http.StatusForbidden, func() error {
			kty := azkeys.KeyTypeRSA
			_, err := keys.CreateKey(ctx, "mine", azkeys.CreateKeyParameters{Kty: &kty}, nil)
			return err
		}},
		{"read another key", http.StatusForbidden, func() error { _, err := keys.GetKey(ctx, "other", "", nil); return err }},
		{"create a certificate", http.StatusForbidden, func() error {
			_, err := certs.CreateCertificate(ctx, "mine", azcertificates.CreateCertificateParameters{CertificatePolicy: &azcertificates.CertificatePolicy{
				IssuerParameters: &azcertificates.IssuerParameters{Name: ptrTo("Self")}, X509CertificateProperties: &azcertificates.X509CertificateProperties{Subject: ptrTo("CN=mine")},
			}}, nil)
			return err
		}},
		{"read another secret", http.StatusForbidden, func() error { _, err := secrets.GetSecret(ctx, "other", "", nil); return err }},
		{"read the attestation policy", http.StatusForbidden, func() error { _, err := policies.GetPolicy(ctx, maa.AttestationTypeAzureGuest); return err }},
		{"write the attestation policy", http.StatusForbidden, func() error {
			_, err := policies.SetPolicy(ctx, maa.AttestationTypeAzureGuest, maapolicy.AzureGuest)
			return err
		}},
	} {
		err := c.call()
		var re *azcore.ResponseError
		switch {
		case c.status == 0 && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.status == 0:
		case !errors.As(err, &re) || re.StatusCode != c.status:
			t.Errorf("%s: %v, want status %d", c.name, err, c.status)
		case strings.Contains(c.name, "attestation policy"):
		case !strings.Contains(err.Error(), "ForbiddenByRbac"):
			t.Errorf("%s: %v, want Key Vault's innererror ForbiddenByRbac", c.name, err)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

// exportedIdentity is the identity the stack st exports (the one the plugin signs as), as the
// Azure SDK uses it against the stack's emulators, and the client options that reach them (the
// stack's TLS root, the Entra ID emulator as the authority, no retries).
func exportedIdentity(t *testing.T, st *State) (azcore.TokenCredential, azcore.ClientOptions) {
	t.Helper()
	pem, err := os.ReadFile(st.TLSRootPath)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("no TLS root")
	}
	opts := azcore.ClientOptions{
		Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: st.EntraURL + "/"},
		Transport: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}},
	}
	opts.Retry.MaxRetries = -1
	cred, err := azidentity.NewClientSecretCredential(st.TenantID, st.ClientID, st.ClientSecret, &azidentity.ClientSecretCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	return cred, opts
}

// signingKeyClient is an azkeys client of the stack's vault as the exported identity, and the id
// of the stack's signing key.
func signingKeyClient(t *testing.T, st *State) (*azkeys.Client, keyvault.KeyID) {
	t.Helper()
	cred, opts := exportedIdentity(t, st)
	id, err := keyvault.ParseKeyID(st.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := azkeys.NewClient(id.VaultURL, cred, &azkeys.ClientOptions{ClientOptions: opts, DisableChallengeResourceVerification: true})
	if err != nil {
		t.Fatal(err)
	}
	return keys, id
}
