package keyvault

import (
	"errors"
	"strings"
	"testing"
)

// TestNewCredential: a client_id is used only by managedid and workloadid; with any other type it
// would be ignored and the credential would authenticate as whatever identity it finds, so it is
// refused, with an error naming both keys and what to set.
func TestNewCredential(t *testing.T) {
	// The workload identity credential reads its tenant and token file when it is built.
	t.Setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-0000000000aa")
	t.Setenv("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/azure/tokens/azure-identity-token")
	const id = "00000000-0000-0000-0000-000000000001"
	tests := []struct {
		name    string
		o       CredentialOptions
		refused string // "" = built; else a part of the error
	}{
		{name: "default chain", o: CredentialOptions{}},
		{name: "managedid, system-assigned", o: CredentialOptions{Type: CredentialManagedID}},
		{name: "managedid, user-assigned", o: CredentialOptions{Type: CredentialManagedID, ClientID: id}},
		{name: "workloadid", o: CredentialOptions{Type: CredentialWorkloadID, ClientID: id}},
		{name: "azurecli", o: CredentialOptions{Type: CredentialAzureCLI}},
		{name: "client_id with the default chain", o: CredentialOptions{ClientID: id}, refused: "credential_type is unset"},
		{name: "client_id with environment", o: CredentialOptions{Type: CredentialEnvironment, ClientID: id}, refused: `credential_type is "environment"`},
		{name: "client_id with azurecli", o: CredentialOptions{Type: "AzureCLI", ClientID: id}, refused: `credential_type is "AzureCLI"`},
		{name: "unknown type", o: CredentialOptions{Type: "msi"}, refused: `credential_type "msi"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cred, err := NewCredential(tc.o)
			if tc.refused == "" {
				if err != nil || cred == nil {
					t.Fatalf("NewCredential: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.refused) {
				t.Fatalf("err = %v, want ErrInvalidConfig containing %q", err, tc.refused)
			}
			if tc.o.ClientID != "" {
				for _, want := range []string{"client_id", "credential_type=managedid", "credential_type=workloadid"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("err = %v, want it to name %q", err, want)
					}
				}
			}
		})
	}
}
