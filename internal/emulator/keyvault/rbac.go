package keyvault

import (
	"net/http"
	"strings"
)

// Assignment is a role assignment on the vault in Key Vault's Azure RBAC permission model: the
// principal holds the data actions at the scope.
type Assignment struct {
	// Principal is the caller as Config.ValidateToken names it: its object id, as Azure's role
	// assignments name principals.
	Principal string
	// Scope is "" for the whole vault, or one object: "keys/NAME", "secrets/NAME" or
	// "certificates/NAME", as Key Vault's object-scoped assignments (Microsoft Learn,
	// key-vault/general/rbac-guide). Names are compared without regard to case, as Key Vault
	// looks objects up.
	Scope string
	// DataActions are Azure data action names, as role definitions list them
	// ("Microsoft.KeyVault/vaults/keys/sign/action"); one ending in "/*" grants every action
	// under it ("Microsoft.KeyVault/vaults/certificates/*").
	DataActions []string
}

// Data actions of the built-in Key Vault roles the deployment assigns (Azure's built-in roles
// reference, security section; azure-sdk.md §2.7).
var (
	// CertificateUserActions are Key Vault Certificate User's.
	CertificateUserActions = []string{
		"Microsoft.KeyVault/vaults/certificates/read",
		"Microsoft.KeyVault/vaults/secrets/getSecret/action",
		"Microsoft.KeyVault/vaults/secrets/readMetadata/action",
		"Microsoft.KeyVault/vaults/keys/read",
	}
	// SecretsUserActions are Key Vault Secrets User's.
	SecretsUserActions = []string{
		"Microsoft.KeyVault/vaults/secrets/getSecret/action",
		"Microsoft.KeyVault/vaults/secrets/readMetadata/action",
	}
	// CertificatesOfficerActions are Key Vault Certificates Officer's.
	CertificatesOfficerActions = []string{
		"Microsoft.KeyVault/vaults/certificatecas/*",
		"Microsoft.KeyVault/vaults/certificates/*",
		"Microsoft.KeyVault/vaults/certificatecontacts/write",
	}
)

// opPermission is what an operation needs: a data action on one kind of object.
type opPermission struct {
	kind   string // keys, certificates or secrets: the object's scope is kind/NAME
	action string
}

// opPermissions are the data actions the emulated operations need. Reading a certificate's
// pending operation is taken to need certificates/read: UNCONFIRMED (no public source names the
// action of GET /certificates/NAME/pending).
var opPermissions = map[string]opPermission{
	"keys/create":               {"keys", "Microsoft.KeyVault/vaults/keys/create/action"},
	"keys/get":                  {"keys", "Microsoft.KeyVault/vaults/keys/read"},
	"keys/update":               {"keys", "Microsoft.KeyVault/vaults/keys/update/action"},
	"sign":                      {"keys", "Microsoft.KeyVault/vaults/keys/sign/action"},
	"verify":                    {"keys", "Microsoft.KeyVault/vaults/keys/verify/action"},
	"certificates/create":       {"certificates", "Microsoft.KeyVault/vaults/certificates/create/action"},
	"certificates/getoperation": {"certificates", "Microsoft.KeyVault/vaults/certificates/read"},
	"certificates/get":          {"certificates", "Microsoft.KeyVault/vaults/certificates/read"},
	"secrets/get":               {"secrets", "Microsoft.KeyVault/vaults/secrets/getSecret/action"},
}

// authorizeRBAC refuses principal the operation op on the object name unless an assignment at
// the vault's scope or the object's grants its data action. An operation without a data action
// in opPermissions is refused: a route added without one must not be open to every identity.
func (s *Server) authorizeRBAC(principal, op, name string) error {
	if s.cfg.Assignments == nil {
		return nil
	}
	p, ok := opPermissions[op]
	if !ok {
		return &apiError{status: http.StatusForbidden, code: "Forbidden", inner: "ForbiddenByRbac",
			message: "operation " + op + " has no data action in the emulator's RBAC table"}
	}
	object := p.kind + "/" + name
	for _, a := range s.cfg.Assignments {
		if a.Principal != principal || a.Scope != "" && !strings.EqualFold(a.Scope, object) {
			continue
		}
		for _, d := range a.DataActions {
			if grants(d, p.action) {
				return nil
			}
		}
	}
	// Key Vault's answer, as captured in public reports (hashicorp/terraform-provider-azurerm#27817,
	// pulumi/pulumi-azure-nextgen#195): 403, code Forbidden, innererror ForbiddenByRbac, and a
	// message naming the caller, the action and the resource.
	return &apiError{status: http.StatusForbidden, code: "Forbidden", inner: "ForbiddenByRbac",
		message: "Caller is not authorized to perform action on resource.\r\n" +
			"If role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\n" +
			"Caller: oid=" + principal + "\r\nAction: '" + p.action + "'\r\nResource: '" + object + "'\r\nAssignment: (not found)\r\n"}
}

// grants reports whether the data action granted (possibly ending in "/*") covers action;
// Azure compares action names without regard to case.
func grants(granted, action string) bool {
	if prefix, ok := strings.CutSuffix(granted, "/*"); ok {
		return len(action) > len(prefix) && strings.EqualFold(action[:len(prefix)+1], prefix+"/")
	}
	return strings.EqualFold(granted, action)
}
