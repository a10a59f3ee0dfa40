package keyvault

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/attested-kv/attested-kv/internal/redact"
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
	// application (workloadid); with any other type it is refused (Check).
	ClientID string
	// ClientOptions are passed to the credential (transport, cloud).
	ClientOptions azcore.ClientOptions
}

// Check reports whether o names a credential NewCredential builds: a known Type, and a ClientID
// only with the types that use it (managedid, workloadid). Any other type would ignore the
// ClientID and authenticate as whatever identity it finds (DefaultAzureCredential: possibly the
// VM's system-assigned identity), not the one the user named. The error wraps ErrInvalidConfig.
func (o CredentialOptions) Check() error {
	switch typ := strings.ToLower(o.Type); typ {
	case CredentialManagedID, CredentialWorkloadID:
		return nil
	case CredentialDefault, CredentialEnvironment, CredentialAzureCLI:
		if o.ClientID == "" {
			return nil
		}
		what := "credential_type is unset (the DefaultAzureCredential chain, which may sign as another identity, e.g. the VM's system-assigned one)"
		if typ != CredentialDefault {
			what = fmt.Sprintf("credential_type is %q, which does not use it", o.Type)
		}
		return fmt.Errorf("%w: client_id %q is set but %s; set credential_type=managedid (a user-assigned managed identity) or credential_type=workloadid (a workload identity) to sign as that identity, or remove client_id",
			ErrInvalidConfig, o.ClientID, what)
	default:
		return fmt.Errorf("%w: credential_type %q: want one of environment, workloadid, managedid, azurecli, or unset for the default chain", ErrInvalidConfig, o.Type)
	}
}

// NewCredential returns the credential o names, once o.Check passes. On a build VM prefer
// managedid with the client id of the identity the bootstrap attached: a credential chain may
// pick a surprise identity. Its errors are redacted (RedactErrors).
func NewCredential(o CredentialOptions) (azcore.TokenCredential, error) {
	cred, err := newCredential(o)
	if err != nil {
		return nil, err
	}
	return RedactErrors(cred), nil
}

// RedactErrors returns cred with its errors redacted (package redact): an identity library's error
// may quote the identity service's answer, token included (MSAL does, for an answer it cannot
// decode), and these errors reach notation's output, the plugin's log and admission denials.
func RedactErrors(cred azcore.TokenCredential) azcore.TokenCredential {
	return redactingCredential{cred}
}

type redactingCredential struct{ cred azcore.TokenCredential }

// GetToken implements azcore.TokenCredential.
func (c redactingCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tok, err := c.cred.GetToken(ctx, opts)
	return tok, redact.Error(err)
}

func newCredential(o CredentialOptions) (azcore.TokenCredential, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
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
	default: // refused by Check
		return nil, fmt.Errorf("%w: credential_type %q", ErrInvalidConfig, o.Type)
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
