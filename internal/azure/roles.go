package azure

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/authorization/armauthorization/v2"
)

// signerDataActions are the data actions of the custom role the signing identity holds on the
// signing key: what the plugin does with the key and nothing more. internal/keyvault's signer
// reads the key (azkeys GetKey: keys/read) and signs digests with it (azkeys Sign:
// keys/sign/action); the certificate chain it reads from the certificate's secret (or the
// certificate itself, with ca_certs) is granted apart, by Key Vault Secrets User on the secret and
// Key Vault Certificate User on the certificate (signingAssignments). The names are those of the
// built-in Key Vault Crypto User role's JSON (azure-sdk.md ROLES: MicrosoftDocs/azure-docs
// articles/role-based-access-control/built-in-roles/security.md), of whose nine data actions these
// are two: Crypto User also grants keys/update/action (which re-enables a key an administrator
// disabled), keys/backup/action (which exports the key as a backup blob), and encrypt, decrypt,
// wrap, unwrap and verify, none of which signing needs.
var signerDataActions = []string{
	"Microsoft.KeyVault/vaults/keys/read",
	"Microsoft.KeyVault/vaults/keys/sign/action",
}

// SignerDataActions returns the data actions of the signer role (signerDataActions), for the
// emulated vault's assignments to mirror.
func SignerDataActions() []string { return slices.Clone(signerDataActions) }

// customRole is a role definition a deployment makes: a deterministic id (so a rerun addresses the
// same role), a display name naming the deployment (role names are unique in a tenant), and
// exactly its actions and data actions, assignable in the deployment's resource group only.
type customRole struct {
	// id is the role definition's name, a GUID.
	id string
	// name is its display name (RoleName); a role under id with another name is not ours.
	name        string
	description string
	actions     []string
	dataActions []string
	// what says in plan and apply steps what the role grants.
	what string
}

// roleName is the display name of a deployment's custom role of the given kind. Role names are
// unique in a tenant, so it names the subscription too: deployments of the same prefix and group
// name in two subscriptions of one tenant would otherwise collide (RoleDefinitionWithSameNameExists).
func (c Config) roleName(kind string) string {
	return "attested-kv " + kind + " " + c.NamePrefix + " " + c.ResourceGroup + " " + c.SubscriptionID
}

// signerRoleID is the name (a GUID) of the deployment's signer role.
func (c Config) signerRoleID() string {
	return assignmentName(c.rgID(), c.NamePrefix, "signer")
}

// signerRole is the role the signing identity holds on the signing key: signerDataActions only.
func (c Config) signerRole() customRole {
	return customRole{
		id: c.signerRoleID(), name: c.roleName("signer"),
		description: "Lets the attested-kv signing identity read its signing key and sign digests with it, and nothing else (deployment " + c.NamePrefix + ").",
		dataActions: signerDataActions,
		what:        strings.Join(signerDataActions, ", "),
	}
}

// definition is the role definition apply sends for r.
func (r customRole) definition(cfg Config) armauthorization.RoleDefinition {
	list := func(names []string) []*string {
		l := make([]*string, len(names))
		for i := range names {
			l[i] = &names[i]
		}
		return l
	}
	return armauthorization.RoleDefinition{Properties: &armauthorization.RoleDefinitionProperties{
		RoleName:         ptr(r.name),
		Description:      ptr(r.description),
		RoleType:         ptr("CustomRole"),
		Permissions:      []*armauthorization.Permission{{Actions: list(r.actions), NotActions: []*string{}, DataActions: list(r.dataActions), NotDataActions: []*string{}}},
		AssignableScopes: []*string{ptr(cfg.rgID())},
	}}
}

// getCustomRole reads the role r; found is false if there is none, and a role under its id with
// another name is an ErrNotOwned error.
func getCustomRole(ctx context.Context, cl *Clients, cfg Config, r customRole) (role armauthorization.RoleDefinition, found bool, err error) {
	got, err := cl.RoleDefinitions.Get(ctx, cfg.rgID(), r.id, nil)
	switch {
	case isNotFound(err):
		return role, false, nil
	case err != nil:
		return role, false, fmt.Errorf("role definition %s: %w", r.id, err)
	case got.Properties == nil || got.Properties.RoleName == nil || *got.Properties.RoleName != r.name:
		return role, true, fmt.Errorf("role definition %s exists and was %w (its name is not %q): apply refuses to overwrite it",
			r.id, ErrNotOwned, r.name)
	}
	return got.RoleDefinition, true, nil
}

// ensureCustomRole creates the role r, or updates it if its permissions or scopes differ; it
// returns what it did.
func ensureCustomRole(ctx context.Context, cl *Clients, cfg Config, r customRole) (string, error) {
	got, found, err := getCustomRole(ctx, cl, cfg, r)
	if err != nil {
		return "", err
	}
	want := r.definition(cfg)
	if found && sameRole(got, want) {
		return "exists", nil
	}
	if _, err := cl.RoleDefinitions.CreateOrUpdate(ctx, cfg.rgID(), r.id, want, nil); err != nil {
		return "", fmt.Errorf("role definition %s: %w", r.name, err)
	}
	if found {
		return "updated", nil
	}
	return "created", nil
}

// planCustomRole adds the plan step of the role r.
func planCustomRole(ctx context.Context, cl *Clients, cfg Config, r customRole, steps []Step) ([]Step, error) {
	role, found, err := getCustomRole(ctx, cl, cfg, r)
	step := Step{Kind: "role definition", Name: r.name}
	switch {
	case errors.Is(err, ErrNotOwned):
		step.Action, step.Detail = "refuse", err.Error()
	case err != nil:
		return steps, err
	case found && sameRole(role, r.definition(cfg)):
		step.Action = "exists"
	case found:
		step.Action, step.Detail = "update", r.what
	default:
		step.Action, step.Detail = "create", r.what+"; needs Microsoft.Authorization/roleDefinitions/write"
	}
	return append(steps, step), nil
}

// destroyCustomRole deletes the role r if it is ours. What ARM refuses to delete is reported as
// kept, so that destroy goes on with the rest; a rerun tries it again.
func destroyCustomRole(ctx context.Context, cl *Clients, cfg Config, r customRole, note func(kind, name, action, detail string)) error {
	if cl.RoleDefinitions == nil {
		return nil
	}
	_, found, err := getCustomRole(ctx, cl, cfg, r)
	switch {
	case errors.Is(err, ErrNotOwned):
		note("role definition", r.id, "skip", "not created by this deployment")
		return nil
	case err != nil:
		return err
	case !found:
		return nil
	}
	_, err = cl.RoleDefinitions.Delete(ctx, cfg.rgID(), r.id, nil)
	var re *azcore.ResponseError
	switch {
	case err == nil:
		note("role definition", r.name, "deleted", "")
	case errors.As(err, &re) && re.ErrorCode == "RoleDefinitionHasAssignments":
		note("role definition", r.name, "kept", "still assigned (an assignment this deployment did not make): remove it, then run destroy again")
	case errors.As(err, &re):
		note("role definition", r.name, "kept", "delete refused: "+responseReason(re))
	default:
		return fmt.Errorf("role definition %s: %w", r.name, err)
	}
	return nil
}

// roleNotVisibleYet says whether an assignment was refused because its role, or its principal,
// was created moments before and is not visible to role assignments yet: the error codes
// RoleDefinitionDoesNotExist and PrincipalNotFound, whatever the status. ARM is reported to answer
// the first with 400 and with 404 while a new custom role replicates (public troubleshooting
// pages; which one when is UNCONFIRMED), so the status is not what decides. retryWhile bounds the
// wait (RBACRetry), after which the error is returned as it came.
func roleNotVisibleYet(re *azcore.ResponseError) bool {
	return re.ErrorCode == "RoleDefinitionDoesNotExist" || re.ErrorCode == "PrincipalNotFound"
}

// sameRole reports whether a role grants exactly want's actions and data actions, and nothing
// else, at exactly want's assignable scopes.
func sameRole(got, want armauthorization.RoleDefinition) bool {
	if got.Properties == nil || len(got.Properties.Permissions) != 1 || got.Properties.Permissions[0] == nil {
		return false
	}
	gp, wp := got.Properties.Permissions[0], want.Properties.Permissions[0]
	return sameSet(gp.Actions, wp.Actions) && len(gp.NotActions) == 0 && sameSet(gp.DataActions, wp.DataActions) && len(gp.NotDataActions) == 0 &&
		sameSet(got.Properties.AssignableScopes, want.Properties.AssignableScopes)
}

// sameSet compares two lists of ARM names (case-insensitive) as sets.
func sameSet(a, b []*string) bool {
	set := func(l []*string) map[string]bool {
		m := map[string]bool{}
		for _, s := range l {
			if s != nil {
				m[strings.ToLower(*s)] = true
			}
		}
		return m
	}
	sa, sb := set(a), set(b)
	if len(sa) != len(sb) {
		return false
	}
	for k := range sa {
		if !sb[k] {
			return false
		}
	}
	return true
}
