package keyvault

import (
	"context"
	"errors"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// WarmToken asks cred for the access token the Key Vault clients will need for id, so that the
// token request can run while other work does (the attestation): the credential caches the token
// and the clients' challenge flow takes it from the cache. It calls Entra ID (or the managed
// identity endpoint) only, never Key Vault.
//
// The request matches the clients' own: the scope of the vault's challenge, the credential's
// tenant (the challenge's tenant, for a vault of the identity's tenant) and CAE enabled, as
// azcore's bearer token policy asks. For a vault of an unknown cloud it does nothing.
func WarmToken(ctx context.Context, cred azcore.TokenCredential, id KeyID) error {
	scope, ok := id.TokenScope()
	if !ok {
		return errors.New("no known token scope for this vault")
	}
	_, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scope}, EnableCAE: true})
	return err
}
