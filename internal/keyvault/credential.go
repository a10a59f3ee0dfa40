package keyvault

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// Credential types of the plugin config key credential_type, as notation-azure-kv names them.
// Empty means DefaultAzureCredential.
const (
	CredentialDefault     = ""
	CredentialEnvironment = "environment"
	CredentialWorkloadID  = "workloadid"
	CredentialManagedID   = "managedid"
	CredentialAzureCLI    = "azurecli"
)

// ErrInvalidConfig means a credential or chain setting is not valid.
var ErrInvalidConfig = fmt.Errorf("invalid Key Vault configuration")

// CredentialOptions chooses the Entra ID credential.
type CredentialOptions struct {
	// Type is one of the Credential* constants, case-insensitive.
	Type string
	// ClientID selects a user-assigned managed identity (managedid) or the workload identity
	// application (workloadid).
	ClientID string
	// ClientOptions are passed to the credential (transport, cloud).
	ClientOptions azcore.ClientOptions
}

// NewCredential returns the credential o names. On a build VM prefer managedid with the client id
// of the identity the bootstrap attached: a credential chain may pick a surprise identity.
func NewCredential(o CredentialOptions) (azcore.TokenCredential, error) {
	disco := authorityIsLoopback()
	switch strings.ToLower(o.Type) {
	case CredentialDefault:
		return azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{
			ClientOptions: o.ClientOptions, DisableInstanceDiscovery: disco,
		})
	case CredentialEnvironment:
		return azidentity.NewEnvironmentCredential(&azidentity.EnvironmentCredentialOptions{
			ClientOptions: o.ClientOptions, DisableInstanceDiscovery: disco,
		})
	case CredentialWorkloadID:
		return azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientOptions: o.ClientOptions, ClientID: o.ClientID, DisableInstanceDiscovery: disco,
		})
	case CredentialManagedID:
		opts := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: o.ClientOptions}
		if o.ClientID != "" {
			opts.ID = azidentity.ClientID(o.ClientID)
		}
		return azidentity.NewManagedIdentityCredential(opts)
	case CredentialAzureCLI:
		return azidentity.NewAzureCLICredential(nil)
	default:
		return nil, fmt.Errorf("%w: credential_type %q: want one of environment, workloadid, managedid, azurecli, or unset for the default chain", ErrInvalidConfig, o.Type)
	}
}

// authorityIsLoopback reports whether AZURE_AUTHORITY_HOST names a loopback authority (the local
// stack's Entra ID emulator), where Entra's instance discovery has nothing to discover.
func authorityIsLoopback() bool {
	u, err := url.Parse(os.Getenv("AZURE_AUTHORITY_HOST"))
	if err != nil || u.Host == "" {
		return false
	}
	if u.Hostname() == "localhost" {
		return true
	}
	ip := net.ParseIP(u.Hostname())
	return ip != nil && ip.IsLoopback()
}
