package keyvault

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// withRBACHint adds what to do to a Key Vault answer that refuses the caller for want of a role
// (403 with innererror ForbiddenByRbac, as a vault in Azure RBAC mode answers; public captures in
// hashicorp/terraform-provider-azurerm#27817 and pulumi/pulumi-azure-nextgen#195), the usual
// failure of a first signature on Azure. Any other error is returned as it is. The answer stays
// in the chain (errors.As finds the *azcore.ResponseError), and its own text, which names the
// caller and the action refused, follows the hint.
func withRBACHint(err error, what string) error {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusForbidden || re.RawResponse == nil {
		return err
	}
	body, perr := runtime.Payload(re.RawResponse)
	if perr != nil {
		return err
	}
	var answer struct {
		Error struct {
			Inner struct {
				Code string `json:"code"`
			} `json:"innererror"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &answer) != nil || answer.Error.Inner.Code != "ForbiddenByRbac" {
		return err
	}
	return fmt.Errorf("Key Vault refused %s: the signing identity holds no role that allows it. "+
		"It needs the deployment's signer role on the key and Key Vault Certificate User and Secrets User on its certificate and secret, "+
		"which attest-bootstrap apply grants to the deployment's managed identity (check that credential_type and client_id name that identity); "+
		"a role assigned in the last 30 minutes may not apply yet: %w", what, err)
}
