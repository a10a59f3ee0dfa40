package keyvault_test

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/attested-kv/attested-kv/internal/keyvault"
)

// TestCredentialErrorsHoldNoToken: Entra ID answers 200 with a token MSAL cannot decode
// (expires_in 3600.0); MSAL's error then quotes the whole answer, access token included. The
// credential NewCredential returns, and a Signer opened with it, say why they failed without the
// token: their errors reach notation's output, the plugin's log and admission denials.
func TestCredentialErrorsHoldNoToken(t *testing.T) {
	e := newEnv(t)
	kid := e.createCertificate(t, "redacted", "RSA", 2048, "", nil)
	id, err := keyvault.ParseKeyID(kid)
	if err != nil {
		t.Fatal(err)
	}
	e.floatExpiry.Store(true)
	jwt := regexp.MustCompile(`eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.`)
	scope := policy.TokenRequestOptions{Scopes: []string{"https://vault.azure.net/.default"}}

	// The library's own error quotes the token: what the redaction is for.
	raw, err := azidentity.NewClientSecretCredential(tenant, clientID, secret, &azidentity.ClientSecretCredentialOptions{ClientOptions: e.opts, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.GetToken(context.Background(), scope); err == nil || !jwt.MatchString(err.Error()) {
		t.Fatalf("azidentity's error = %v; want one that quotes the access token (else this test proves nothing)", err)
	}

	t.Setenv("AZURE_TENANT_ID", tenant)
	t.Setenv("AZURE_CLIENT_ID", clientID)
	t.Setenv("AZURE_CLIENT_SECRET", secret)
	t.Setenv("AZURE_AUTHORITY_HOST", e.entraSr.URL)
	cred, err := keyvault.NewCredential(keyvault.CredentialOptions{Type: keyvault.CredentialEnvironment, ClientOptions: e.opts})
	if err != nil {
		t.Fatal(err)
	}
	_, tokErr := cred.GetToken(context.Background(), scope)
	_, signErr := keyvault.NewSigner(context.Background(), id, keyvault.Options{Credential: cred, ClientOptions: e.opts})
	for name, err := range map[string]error{"GetToken": tokErr, "NewSigner": signErr} {
		if err == nil {
			t.Fatalf("%s succeeded with an answer MSAL cannot decode", name)
		}
		msg := err.Error()
		if jwt.MatchString(msg) || strings.Contains(msg, "access_token") {
			t.Errorf("%s's error quotes the token: %.300s", name, msg)
		}
		if !strings.Contains(msg, "json decode error") {
			t.Errorf("%s's error = %q; want it to keep MSAL's cause", name, msg)
		}
	}
}
