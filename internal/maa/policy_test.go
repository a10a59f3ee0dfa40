package maa_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/emulator/entra"
	"github.com/attested-kv/attested-kv/internal/maa"
)

// TestPolicyClient sets the project's AzureGuest policy through the policy client, with a real
// Entra ID token (azidentity against the Entra emulator) that the MAA emulator validates, reads it
// back, and checks that the policy decides attestation.
func TestPolicyClient(t *testing.T) {
	ent, err := entra.New(entra.Config{TenantID: "t", Clients: map[string]string{"ops": "pw"}})
	if err != nil {
		t.Fatal(err)
	}
	entSrv := attesttest.TLSServer(t, ent.Handler())
	// No event log on this TPM: secureboot is false.
	c := attesttest.New(t, attesttest.WithPolicyAuthorizer(func(r *http.Request) error {
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			return errors.New("no bearer token")
		}
		_, err := ent.ValidateAccessToken(raw, "https://attest.azure.net")
		return err
	}))
	opts := azcore.ClientOptions{Transport: c.Server.Client(), Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: entSrv.URL + "/"}}
	cred, err := azidentity.NewClientSecretCredential("t", "ops", "pw", &azidentity.ClientSecretCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := maa.NewPolicyClient(c.URL, cred, &opts)
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile("../../policy/maa/azureguest.txt")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := pc.SetPolicy(ctx, maa.AttestationTypeAzureGuest, string(text)); err != nil {
		t.Fatalf("SetPolicy: %v", err)
	}
	answer, err := pc.GetPolicy(ctx, maa.AttestationTypeAzureGuest)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := maa.PolicyText(answer); err != nil || got != string(text) {
		t.Fatalf("policy read back: %q, %v", got, err)
	}
	// The project's policy requires secure boot: this TPM measured none, so no token.
	var se *maa.ServiceError
	if _, err := c.Client.AttestNonce(ctx, c.Device, "n"); !errors.As(err, &se) {
		t.Fatalf("attestation under the secure-boot policy: %v, want a refusal", err)
	}
	// A credential for another tenant's key is refused by the instance.
	bad, _ := maa.NewPolicyClient(c.URL, failingCred{}, &opts)
	if _, err := bad.SetPolicy(ctx, maa.AttestationTypeAzureGuest, "version=1.0; authorizationrules { => permit(); };"); err == nil {
		t.Fatal("a policy was set without a valid token")
	}
}

type failingCred struct{}

func (failingCred) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "not-a-token", ExpiresOn: time.Now().Add(time.Hour)}, nil
}
