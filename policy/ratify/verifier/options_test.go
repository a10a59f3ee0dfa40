package verifier

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRegistryOptions: the verifier reads the registry with the store's authProvider, as Ratify's
// ORAS store does; a provider it cannot use is an error, not anonymous access.
func TestRegistryOptions(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("federated"), 0o600); err != nil {
		t.Fatal(err)
	}
	workloadEnv := map[string]string{"AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47", "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001", "AZURE_FEDERATED_TOKEN_FILE": tokenFile}
	noEnv := map[string]string{"AZURE_TENANT_ID": "", "AZURE_CLIENT_ID": "", "AZURE_FEDERATED_TOKEN_FILE": ""}
	tests := []struct {
		name     string
		provider AuthProvider
		useHTTP  bool
		env      map[string]string
		azure    bool
		err      string
	}{
		{name: "no provider: docker credentials", useHTTP: true},
		{name: "dockerConfig", provider: AuthProvider{Name: "dockerConfig"}},
		{name: "workload identity", provider: AuthProvider{Name: "azureWorkloadIdentity"}, env: workloadEnv, azure: true},
		{name: "workload identity with its client id", provider: AuthProvider{Name: "azureWorkloadIdentity", ClientID: "00000000-0000-0000-0000-000000000002"}, env: workloadEnv, azure: true},
		{name: "workload identity without its environment", provider: AuthProvider{Name: "azureWorkloadIdentity"}, env: noEnv, err: "azureWorkloadIdentity"},
		{name: "managed identity", provider: AuthProvider{Name: "azureManagedIdentity", ClientID: "00000000-0000-0000-0000-000000000003"}, azure: true},
		{name: "unsupported provider", provider: AuthProvider{Name: "awsEcrBasic"}, err: `"awsEcrBasic" is not supported`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var sc StoreConfig
			sc.Store.UseHTTP, sc.Store.AuthProvider = tt.useHTTP, tt.provider
			o, err := registryOptions(sc)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (o.AzureCredential != nil) != tt.azure || o.PlainHTTP != tt.useHTTP || o.Username != "" {
				t.Fatalf("options %+v: want an Azure credential %v, plain HTTP %v", o, tt.azure, tt.useHTTP)
			}
		})
	}
}
