package azure

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/authorization/armauthorization/v2"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/keyvault/armkeyvault"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources"

	"github.com/attested-kv/attested-kv/internal/provision"
)

// RBACRetry bounds the retries of data-plane calls refused with 403 right after their role was
// assigned (RBAC propagation delay; azure-sdk.md §2.7).
var RBACRetry = 3 * time.Minute

// AttestationType is the policy type the signing chain attests with.
const AttestationType = "AzureGuest"

// Plan reports what Apply would create; it changes nothing.
func Plan(ctx context.Context, cl *Clients, cfg Config) ([]Step, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := NamesFor(cfg.NamePrefix)
	var steps []Step
	_, err := cl.Groups.Get(ctx, cfg.ResourceGroup, nil)
	rgExists := err == nil
	switch {
	case rgExists:
		steps = append(steps, Step{Kind: "resource group", Name: cfg.ResourceGroup, Action: "exists", Detail: "used as is"})
	case isNotFound(err):
		// Everything in it is to be created; planResources still looks for a soft-deleted vault
		// (it outlives its group) and for global names taken elsewhere.
		steps = append(steps, Step{Kind: "resource group", Name: cfg.ResourceGroup, Action: "create"})
	default:
		return steps, fmt.Errorf("resource group %s: %w", cfg.ResourceGroup, err)
	}
	seen := &existingProps{}
	if steps, err = planResources(ctx, cfg, coreResources(cl, cfg, seen), rgExists, steps); err != nil {
		return steps, err
	}
	if cl.RoleDefinitions == nil {
		return steps, errors.New("no role definition client (the signer role needs one)")
	}
	if steps, err = planCustomRole(ctx, cl, cfg, cfg.signerRole(), steps); err != nil {
		return steps, err
	}
	if cfg.ImageBuilder {
		if cl.Build == nil || cl.RoleDefinitions == nil {
			return steps, errors.New("image builder: no build layer or role definition clients")
		}
		if steps, err = planBuildLayer(ctx, cl, cfg, rgExists, steps); err != nil {
			return steps, err
		}
	}
	steps = append(steps,
		Step{Kind: "attestation policy", Name: AttestationType, Action: "set", Detail: "from policy/maa/azureguest.txt"},
		planCertificate(ctx, cl, cfg, seen),
		Step{Kind: "role assignments", Name: "identity, operator, cluster", Action: "ensure", Detail: "the signer role (" + cfg.signerRole().what + ") on the signing key, Certificate User on its certificate and Secrets User on its secret, AcrPush for the identity; Certificates Officer and Attestation Contributor for the operator; AcrPull for the cluster"},
		Step{Kind: "role assignments", Name: "of earlier versions", Action: "revoke", Detail: "if an earlier version granted them (Key Vault Crypto User, and Certificate User and Secrets User on the whole vault): the roles above replace them, and they are withdrawn once those have had " + RoleSettle.String() + " to take effect"},
	)
	if rgExists {
		// Grants an earlier apply made to principals the configuration no longer names.
		var identity string
		if id, err := cl.Identities.Get(ctx, cfg.ResourceGroup, n.Identity, nil); err == nil && tagged(id.Tags, cfg.NamePrefix) && id.Properties != nil && id.Properties.PrincipalID != nil {
			identity = *id.Properties.PrincipalID
		} else if err != nil && !isNotFound(err) {
			return steps, fmt.Errorf("managed identity %s: %w", n.Identity, err)
		}
		return planFormer(ctx, cl, cfg.grants(identity), steps)
	}
	return steps, nil
}

// Apply creates or updates the deployment and returns its outputs and what it did. On error the
// steps done so far are returned with it; running Apply again completes the deployment.
func Apply(ctx context.Context, cl *Clients, cfg Config, w io.Writer) (*Outputs, []Step, error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	if cfg.AttestationPolicy == "" {
		return nil, nil, errors.New("no attestation policy text")
	}
	if cfg.ImageBuilder && (cl.Build == nil || cl.RoleDefinitions == nil) {
		return nil, nil, errors.New("image builder: no build layer or role definition clients")
	}
	if cl.RoleDefinitions == nil {
		return nil, nil, errors.New("no role definition client (the signer role needs one)")
	}
	n := NamesFor(cfg.NamePrefix)
	out := &Outputs{SubscriptionID: cfg.SubscriptionID, ResourceGroup: cfg.ResourceGroup, TenantID: cfg.TenantID}
	var steps []Step
	done := func(kind, name, action, detail string) {
		steps = append(steps, Step{Kind: kind, Name: name, Action: action, Detail: detail})
		progress(w, "%-20s %-26s %s %s", kind, name, action, detail)
	}
	fail := func(kind, name string, err error) (*Outputs, []Step, error) {
		progress(w, "%-20s %-26s FAILED: %v", kind, name, err)
		return nil, steps, fmt.Errorf("%s %s: %w (what exists is kept; run apply again to complete)", kind, name, err)
	}

	// Resource group: created with our tag if absent, used as is otherwise.
	_, err := cl.Groups.Get(ctx, cfg.ResourceGroup, nil)
	rgMissing := isNotFound(err)
	if err != nil && !rgMissing {
		return fail("resource group", cfg.ResourceGroup, err)
	}
	// Before any write: refuse resources of the same names that this deployment did not create.
	// A PUT would replace their settings (a vault's access policies and network rules) and tags,
	// and our tag would then make destroy delete them.
	own := ownedTags{}
	var seen existingProps
	if !rgMissing {
		if own, err = checkOwned(ctx, cl, cfg, &seen); err != nil {
			progress(w, "%v", err)
			return nil, steps, err
		}
	}
	// A vault of ours that destroy soft-deleted (without --purge) blocks its name until purged:
	// recover it. One that is not ours, including the vault of a deployment with the same prefix in
	// another resource group, is refused like a live one. Soft-deleted vaults outlive their
	// resource group, so this is checked even when the group is missing.
	var recoverVault bool
	if _, live := own[ownedKey("key vault", n.Vault)]; !live {
		if recoverVault, err = checkDeletedVault(ctx, cl, cfg); err != nil {
			progress(w, "%v", err)
			return nil, steps, err
		}
	}
	// Vault and registry names are global across Azure: one that another subscription or tenant
	// holds would fail the create after the group, identity and provider were written, on every
	// rerun.
	if _, live := own[ownedKey("key vault", n.Vault)]; !live && !recoverVault {
		if err := checkNameFree(ctx, cl, cfg, "key vault", n.Vault); err != nil {
			progress(w, "%v", err)
			return nil, steps, err
		}
	}
	if _, live := own[ownedKey("container registry", n.Registry)]; !live {
		if err := checkNameFree(ctx, cl, cfg, "container registry", n.Registry); err != nil {
			progress(w, "%v", err)
			return nil, steps, err
		}
	}
	tagsOf := func(kind, name string) map[string]*string {
		return mergeTags(own[ownedKey(kind, name)], cfg.NamePrefix)
	}
	if rgMissing {
		if _, err := cl.Groups.CreateOrUpdate(ctx, cfg.ResourceGroup, armresources.ResourceGroup{Location: &cfg.Location, Tags: cfg.tags()}, nil); err != nil {
			return fail("resource group", cfg.ResourceGroup, err)
		}
		done("resource group", cfg.ResourceGroup, "created", "")
	} else {
		done("resource group", cfg.ResourceGroup, "exists", "")
	}

	id, err := cl.Identities.CreateOrUpdate(ctx, cfg.ResourceGroup, n.Identity, armmsi.Identity{Location: &cfg.Location, Tags: tagsOf("managed identity", n.Identity)}, nil)
	if err != nil {
		return fail("managed identity", n.Identity, err)
	}
	if id.Properties == nil || id.Properties.PrincipalID == nil || id.Properties.ClientID == nil {
		return fail("managed identity", n.Identity, errors.New("no principal or client id in the answer"))
	}
	out.IdentityPrincipalID, out.IdentityClientID = *id.Properties.PrincipalID, *id.Properties.ClientID
	done("managed identity", n.Identity, "ready", "client id "+out.IdentityClientID)

	prov, err := cl.Attestation.Create(ctx, cfg.ResourceGroup, n.AttestationProvider, cfg.Location, tagsOf("attestation provider", n.AttestationProvider))
	if err != nil {
		return fail("attestation provider", n.AttestationProvider, err)
	}
	if prov.Properties.AttestURI == "" {
		return fail("attestation provider", n.AttestationProvider, errors.New("no attestUri in the answer"))
	}
	out.AttestationURL = prov.Properties.AttestURI
	done("attestation provider", n.AttestationProvider, "ready", out.AttestationURL)
	provScope := cfg.providerID()
	if err := assign(ctx, cl, cfg, provScope, cfg.OperatorPrincipalID, operatorType(cfg), RoleAttestationContributor); err != nil {
		return fail("role assignment", "Attestation Contributor", err)
	}
	ps, err := cl.PolicySetter(ctx, out.AttestationURL)
	if err != nil {
		return fail("attestation policy", AttestationType, err)
	}
	if err := retryForbidden(ctx, w, func() error { _, err := ps.SetPolicy(ctx, AttestationType, cfg.AttestationPolicy); return err }); err != nil {
		return fail("attestation policy", AttestationType, err)
	}
	done("attestation policy", AttestationType, "set", "")

	sku := armkeyvault.SKUNameStandard
	if cfg.HSM {
		sku = armkeyvault.SKUNamePremium
	}
	vp := &armkeyvault.VaultProperties{
		TenantID:                &cfg.TenantID,
		SKU:                     &armkeyvault.SKU{Family: ptr(armkeyvault.SKUFamilyA), Name: &sku},
		EnableRbacAuthorization: ptr(true),
		AccessPolicies:          []*armkeyvault.AccessPolicyEntry{},
	}
	if cfg.PurgeProtection {
		// Irreversible: only ever sent as true.
		vp.EnablePurgeProtection = ptr(true)
	}
	if recoverVault {
		// Recovery brings back the vault with its keys and certificates; role assignments are
		// deleted with a soft-deleted vault and not restored (Microsoft Learn, Key Vault
		// soft-delete overview), and the ones below are made again. Whether ARM applies the
		// other properties sent along is UNCONFIRMED; the next apply sends them again as an
		// ordinary update.
		vp.CreateMode = ptr(armkeyvault.CreateModeRecover)
	}
	keepVaultSettings(vp, seen.vault)
	poller, err := cl.Vaults.BeginCreateOrUpdate(ctx, cfg.ResourceGroup, n.Vault, armkeyvault.VaultCreateOrUpdateParameters{Location: &cfg.Location, Tags: tagsOf("key vault", n.Vault), Properties: vp}, nil)
	if err != nil {
		return fail("key vault", n.Vault, err)
	}
	vault, err := poller.PollUntilDone(ctx, nil)
	if err != nil {
		return fail("key vault", n.Vault, err)
	}
	if vault.Properties == nil || vault.Properties.VaultURI == nil {
		return fail("key vault", n.Vault, errors.New("no vaultUri in the answer"))
	}
	out.KeyVaultURL = *vault.Properties.VaultURI
	if recoverVault {
		done("key vault", n.Vault, "recovered", out.KeyVaultURL+" (RBAC; from soft delete)")
	} else {
		done("key vault", n.Vault, "ready", out.KeyVaultURL+" (RBAC)")
	}
	vaultScope := cfg.vaultID()
	// The operator creates the certificate, so it needs the vault scope.
	if err := assign(ctx, cl, cfg, vaultScope, cfg.OperatorPrincipalID, operatorType(cfg), RoleKeyVaultCertificatesOfficer); err != nil {
		return fail("role assignment", "Key Vault Certificates Officer (operator)", err)
	}
	done("role assignment", "Key Vault Certificates Officer (operator)", "ensured", "")
	var cert *provision.Result
	if err := retryForbidden(ctx, w, func() error {
		var err error
		cert, err = cl.Certificates(ctx, out.KeyVaultURL, cfg.signingCertificate())
		return err
	}); err != nil {
		if errors.Is(err, provision.ErrCertificateDisabled) {
			// An administrator's stop, not a step a rerun completes: the error says what to do
			// first, and no outputs or trust store are written.
			progress(w, "%-20s %-26s REFUSED: %v", "certificate", n.Certificate, err)
			return nil, steps, err
		}
		return fail("certificate", n.Certificate, err)
	}
	out.KeyID, out.Certificate = cert.KeyID, cert.Certificate
	out.CertificateSubject = cert.Certificate.Subject.String()
	sum := sha256.Sum256(cert.Certificate.Raw)
	out.CertificateThumbprint = hex.EncodeToString(sum[:])
	if len(cert.Replaced) > 0 {
		// A new version: the trust store written below trusts it instead of the old one.
		done("certificate", n.Certificate, "new version", out.KeyID+" (the existing one did not match: "+strings.Join(cert.Replaced, "; ")+
			"); signatures made with the previous certificate will no longer verify against the trust store written now, and the signingCertSHA256 pin changes to "+
			out.CertificateThumbprint+": update the policy pin and re-sign what must keep verifying")
	} else {
		done("certificate", n.Certificate, "ready", out.KeyID)
	}
	// The signing identity gets read and sign on the certificate's key (the custom signer role,
	// not Key Vault Crypto User: see signerDataActions), read on the certificate and read on its
	// secret (where the signer reads the PEM chain), each scoped to that one object rather than to
	// the vault. Key Vault RBAC takes object scopes .../vaults/<v>/keys|secrets|certificates/<name>
	// (Microsoft Learn, key-vault/general/rbac-guide). The objects exist by now, since the
	// certificate created its key and secret; whether ARM would accept the assignment before they
	// exist is UNCONFIRMED.
	signer := cfg.signerRole()
	action, err := ensureCustomRole(ctx, cl, cfg, signer)
	if err != nil {
		return fail("role definition", signer.name, err)
	}
	done("role definition", signer.name, action, signer.what)
	signing := signingAssignments(cfg, n.Certificate)
	for _, a := range signing {
		// The signer role may have been created just now (see applyBuildLayer).
		if err := retryWhile(ctx, w, "the new role to propagate", roleNotVisibleYet, func() error {
			return assign(ctx, cl, cfg, a.scope, out.IdentityPrincipalID, "ServicePrincipal", a.role)
		}); err != nil {
			return fail("role assignment", a.label, err)
		}
		done("role assignment", a.label, "ensured", "")
	}
	// The grants earlier versions made the signing identity are withdrawn once the object-scoped
	// ones above have taken effect: Certificate User and Secrets User on the whole vault, and Key
	// Vault Crypto User on the key (before that on the whole vault), which also grants keys/update,
	// with which a job on a build VM could re-enable a key an administrator disabled, and
	// keys/backup, which exports the key.
	settle, err := settledAt(ctx, cl, out.IdentityPrincipalID, signing)
	if err != nil {
		return fail("role assignment", "signing identity's object-scoped roles", err)
	}
	if err := withdrawReplaced(ctx, cl, out.IdentityPrincipalID, legacyGrants(cfg, n.Certificate), settle, done); err != nil {
		return fail("role assignment", "grants of earlier versions", err)
	}

	registry := armcontainerregistry.Registry{
		Location: &cfg.Location, Tags: tagsOf("container registry", n.Registry),
		SKU: &armcontainerregistry.SKU{Name: ptr(armcontainerregistry.SKUNamePremium)},
		Properties: &armcontainerregistry.RegistryProperties{
			AdminUserEnabled: ptr(false),
			// AcrPush/AcrPull are not honoured in ABAC mode: ask for the legacy mode explicitly.
			// An existing registry in another mode was refused before any write
			// (registryConflict), so this never switches an administrator's ABAC registry back.
			RoleAssignmentMode: ptr(armcontainerregistry.RoleAssignmentModeLegacyRegistryPermissions),
		},
	}
	keepRegistrySettings(&registry, seen.registry)
	rp, err := cl.Registries.BeginCreate(ctx, cfg.ResourceGroup, n.Registry, registry, nil)
	if err != nil {
		return fail("container registry", n.Registry, err)
	}
	reg, err := rp.PollUntilDone(ctx, nil)
	if err != nil {
		return fail("container registry", n.Registry, err)
	}
	if reg.Properties == nil || reg.Properties.LoginServer == nil {
		return fail("container registry", n.Registry, errors.New("no loginServer in the answer"))
	}
	out.RegistryLoginServer = *reg.Properties.LoginServer
	done("container registry", n.Registry, "ready", out.RegistryLoginServer)
	regScope := cfg.registryID()
	if err := assign(ctx, cl, cfg, regScope, out.IdentityPrincipalID, "ServicePrincipal", RoleAcrPush); err != nil {
		return fail("role assignment", "AcrPush (identity)", err)
	}
	done("role assignment", "AcrPush (identity)", "ensured", "")
	if cfg.ClusterPrincipalID != "" {
		if err := assign(ctx, cl, cfg, regScope, cfg.ClusterPrincipalID, "ServicePrincipal", RoleAcrPull); err != nil {
			return fail("role assignment", "AcrPull (cluster)", err)
		}
		done("role assignment", "AcrPull (cluster)", "ensured", "")
	}
	if len(cfg.Replicas) > 0 {
		if err := applyReplicas(ctx, cl.Build, cfg, done); err != nil {
			return fail("container registry", n.Registry, err)
		}
	}
	if cfg.ImageBuilder {
		if err := applyBuildLayer(ctx, cl, cfg, out, tagsOf, done, w); err != nil {
			return fail("image builder", n.ImageTemplate, err)
		}
	} else if err := revokeLegacyGalleryGrant(ctx, cl, cfg, out.IdentityPrincipalID, "revoked", done); err != nil {
		// Without the build layer this run, a gallery an earlier run made may still hold the
		// Contributor grant earlier versions gave the signing identity.
		return fail("role assignment", "Contributor on the gallery (signing identity)", err)
	}
	// Last, the grants an earlier apply made to principals the configuration no longer names.
	if err := withdrawFormer(ctx, cl, cfg.grants(out.IdentityPrincipalID), done); err != nil {
		return fail("role assignment", "former holders", err)
	}
	return out, steps, nil
}

// planDeletedVault adds the plan step of a vault that does not exist: created, recovered from
// soft delete, or refused.
func planDeletedVault(ctx context.Context, cl *Clients, cfg Config, steps []Step) ([]Step, error) {
	n := NamesFor(cfg.NamePrefix)
	d, err := deletedVault(ctx, cl, cfg)
	switch {
	case err != nil:
		return steps, err
	case d.owner == deletedOurs:
		return append(steps, Step{Kind: "key vault", Name: n.Vault, Action: "recover", Detail: "soft-deleted by an earlier destroy: recovered with its keys and certificates"}), nil
	case d.owner == deletedOtherVault:
		return append(steps, Step{Kind: "key vault", Name: n.Vault, Action: "refuse", Detail: "soft-deleted, the vault of another deployment with this prefix (" + d.vaultID + "): apply would refuse (" + d.howToProceed(cfg) + ")"}), nil
	case d.owner == deletedForeign:
		return append(steps, Step{Kind: "key vault", Name: n.Vault, Action: "refuse", Detail: "soft-deleted, not created by this deployment: apply would refuse (choose another --name-prefix)"}), nil
	}
	return planCreateGlobal(ctx, cl, cfg, "key vault", n.Vault, steps)
}

// planCreateGlobal adds the plan step of a vault or registry that is to be created: refused if
// its global name is taken elsewhere.
func planCreateGlobal(ctx context.Context, cl *Clients, cfg Config, kind, name string, steps []Step) ([]Step, error) {
	reason, err := nameTaken(ctx, cl, kind, name)
	switch {
	case err != nil:
		return steps, err
	case reason != "":
		return append(steps, Step{Kind: kind, Name: name, Action: "refuse", Detail: "the name is global and taken elsewhere (" + reason + "): apply would refuse (choose another --name-prefix)"}), nil
	}
	return append(steps, Step{Kind: kind, Name: name, Action: "create"}), nil
}

// nameTaken asks ARM whether a vault's or registry's global name is free; it returns why not, or
// "" if it is.
func nameTaken(ctx context.Context, cl *Clients, kind, name string) (string, error) {
	var free *bool
	var reason, message string
	switch kind {
	case "key vault":
		r, err := cl.Vaults.CheckNameAvailability(ctx, armkeyvault.VaultCheckNameAvailabilityParameters{Name: &name, Type: ptr("Microsoft.KeyVault/vaults")}, nil)
		if err != nil {
			return "", fmt.Errorf("%s %s: checking the name: %w", kind, name, err)
		}
		free, message = r.NameAvailable, deref(r.Message)
		if r.Reason != nil {
			reason = string(*r.Reason)
		}
	case "container registry":
		r, err := cl.Registries.CheckNameAvailability(ctx, armcontainerregistry.RegistryNameCheckRequest{Name: &name, Type: ptr("Microsoft.ContainerRegistry/registries")}, nil)
		if err != nil {
			return "", fmt.Errorf("%s %s: checking the name: %w", kind, name, err)
		}
		free, reason, message = r.NameAvailable, deref(r.Reason), deref(r.Message)
	default:
		return "", fmt.Errorf("no global name check for %s", kind)
	}
	if free != nil && *free {
		return "", nil
	}
	switch {
	case reason == "" && message == "":
		return "not available", nil
	case message == "":
		return reason, nil
	case reason == "":
		return message, nil
	}
	return reason + ": " + message, nil
}

// checkNameFree is nameTaken for apply: a taken name is an ErrNotOwned error naming the resource.
func checkNameFree(ctx context.Context, cl *Clients, cfg Config, kind, name string) error {
	reason, err := nameTaken(ctx, cl, kind, name)
	if err != nil || reason == "" {
		return err
	}
	return fmt.Errorf("%s %s: the name is global across Azure and is taken (%s) by a resource outside resource group %s that was %w: apply refuses before writing anything; choose another --name-prefix",
		kind, name, reason, cfg.ResourceGroup, ErrNotOwned)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// ErrNotOwned is the error of a resource that exists under a deployment's name but does not carry
// the deployment's tag: apply refuses to update it.
var ErrNotOwned = errors.New("not created by this deployment")

// ownedTags are the tags of the deployment's resources that exist already, by ownedKey: names
// alone can clash across kinds (with prefix "attested" the template is named like the image
// definition).
type ownedTags map[string]map[string]*string

// ownedKey is a resource's key in ownedTags.
func ownedKey(kind, name string) string { return kind + "/" + name }

// checkOwned reads the deployment's resources; any that exists without the deployment's tag is
// an ErrNotOwned error naming it.
func checkOwned(ctx context.Context, cl *Clients, cfg Config, seen *existingProps) (ownedTags, error) {
	o := ownedTags{}
	rs := coreResources(cl, cfg, seen)
	if cfg.ImageBuilder {
		rs = append(append(rs, buildResources(cl, cfg)...), templateResource(cl, cfg))
	}
	if err := checkResources(ctx, cfg, rs, o); err != nil {
		return o, err
	}
	// The roles carry no tags: getCustomRole refuses one under their ids that is not ours.
	if _, _, err := getCustomRole(ctx, cl, cfg, cfg.signerRole()); err != nil {
		return o, err
	}
	if cfg.ImageBuilder {
		// The role carries no tags: getCustomRole refuses one of its name that is not ours.
		if _, _, err := getCustomRole(ctx, cl, cfg, cfg.publisherRole()); err != nil {
			return o, err
		}
	}
	return o, nil
}

// keepVaultSettings copies onto vp, the properties apply sends for the vault, the settings of the
// existing vault's properties e that apply does not manage. The update is a PUT, which replaces
// a vault's properties (Microsoft's answer in MicrosoftDocs/azure-docs#38992; the Key Vault team
// calls the loss of networkAcls on such an update service behaviour, Azure/azure-powershell#20744),
// so leaving them out would undo what an administrator set since, such as closing the vault to
// the internet.
func keepVaultSettings(vp, e *armkeyvault.VaultProperties) {
	if e == nil {
		return
	}
	vp.NetworkACLs = e.NetworkACLs
	vp.PublicNetworkAccess = e.PublicNetworkAccess
	vp.EnabledForDeployment = e.EnabledForDeployment
	vp.EnabledForDiskEncryption = e.EnabledForDiskEncryption
	vp.EnabledForTemplateDeployment = e.EnabledForTemplateDeployment
	vp.SoftDeleteRetentionInDays = e.SoftDeleteRetentionInDays
	if e.EnablePurgeProtection != nil && *e.EnablePurgeProtection {
		vp.EnablePurgeProtection = ptr(true)
	}
}

// keepRegistrySettings is keepVaultSettings for the registry, whose update is also a PUT (what ACR
// does with the properties a PUT leaves out is UNCONFIRMED; they are sent as they are): copied
// from the existing registry e onto r, the registry apply sends, are network rules and access
// (with the bypasses for trusted services and for ACR Tasks), policies (quarantine, trust,
// retention, export), data endpoints, anonymous pull, the settings fixed at creation (encryption,
// zone redundancy), and the registry's managed identity. A registry encrypted with a
// customer-managed key reaches its key through that identity (KeyVaultProperties.Identity is its
// client id: armcontainerregistry/v3 models.go), so a PUT without it could remove the identity and
// cut the registry off from its own key.
func keepRegistrySettings(r, e *armcontainerregistry.Registry) {
	if e == nil {
		return
	}
	r.Identity = sentIdentity(e.Identity)
	rp, ep := r.Properties, e.Properties
	if ep == nil {
		return
	}
	rp.NetworkRuleSet = ep.NetworkRuleSet
	rp.NetworkRuleBypassOptions = ep.NetworkRuleBypassOptions
	rp.NetworkRuleBypassAllowedForTasks = ep.NetworkRuleBypassAllowedForTasks
	rp.PublicNetworkAccess = ep.PublicNetworkAccess
	rp.Policies = ep.Policies
	rp.DataEndpointEnabled = ep.DataEndpointEnabled
	rp.AnonymousPullEnabled = ep.AnonymousPullEnabled
	rp.Encryption = ep.Encryption
	rp.ZoneRedundancy = ep.ZoneRedundancy
}

// sentIdentity is the registry identity id as a PUT carries it: its type and its user-assigned
// identities by resource id, without the principal, tenant and client ids the service reports
// (read-only in armcontainerregistry/v3 IdentityProperties and UserIdentityProperties).
func sentIdentity(id *armcontainerregistry.IdentityProperties) *armcontainerregistry.IdentityProperties {
	if id == nil {
		return nil
	}
	out := &armcontainerregistry.IdentityProperties{Type: id.Type}
	if id.UserAssignedIdentities != nil {
		out.UserAssignedIdentities = make(map[string]*armcontainerregistry.UserIdentityProperties, len(id.UserAssignedIdentities))
		for k := range id.UserAssignedIdentities {
			out.UserAssignedIdentities[k] = &armcontainerregistry.UserIdentityProperties{}
		}
	}
	return out
}

// checkDeletedVault looks for a soft-deleted vault under the deployment's vault name: this
// deployment's is to be recovered (true); any other is an ErrNotOwned error, since recovering it
// would take over another deployment's keys.
func checkDeletedVault(ctx context.Context, cl *Clients, cfg Config) (bool, error) {
	d, err := deletedVault(ctx, cl, cfg)
	n := NamesFor(cfg.NamePrefix)
	switch {
	case err != nil:
		return false, err
	case d.owner == deletedOtherVault:
		return false, fmt.Errorf("key vault %s is soft-deleted in %s and was %w but by another deployment with prefix %s: it was %s, not %s, and recovering it here would take over that deployment's signing key; its name stays taken until it is recovered or purged: %s",
			n.Vault, cfg.Location, ErrNotOwned, cfg.NamePrefix, d.vaultID, cfg.vaultID(), d.howToProceed(cfg))
	case d.owner == deletedForeign:
		return false, fmt.Errorf("key vault %s is soft-deleted in %s and was %w (no %s=%s tag): its name stays taken until it is purged; choose another --name-prefix",
			n.Vault, cfg.Location, ErrNotOwned, TagKey, cfg.NamePrefix)
	}
	return d.owner == deletedOurs, nil
}

// deletedOwner says whose soft-deleted vault holds the deployment's vault name.
type deletedOwner int

const (
	noDeletedVault    deletedOwner = iota // none
	deletedOurs                           // this deployment's: our tag and our vault's resource id
	deletedOtherVault                     // our tag, but another vault: same prefix, another resource group or subscription
	deletedForeign                        // no tag of ours
)

// softDeleted is what deletedVault found.
type softDeleted struct {
	owner deletedOwner
	// vaultID is the resource id the vault had before deletion, as ARM reports it, or a note
	// saying ARM reported none; "" when there is no soft-deleted vault.
	vaultID string
}

// howToProceed says what to run about another deployment's soft-deleted vault: recover or purge
// it from the deployment it belongs to, or use another prefix.
func (d softDeleted) howToProceed(cfg Config) string {
	where := "from the deployment it belongs to"
	if id, err := arm.ParseResourceID(d.vaultID); err == nil && id.ResourceGroupName != "" {
		where = "with --resource-group " + id.ResourceGroupName
		if !strings.EqualFold(id.SubscriptionID, cfg.SubscriptionID) {
			where += " --subscription " + id.SubscriptionID
		}
	}
	return "run apply " + where + " to recover it there, or destroy --purge " + where + " to delete it for good, or choose another --name-prefix"
}

// deletedVault looks for a soft-deleted vault holding the deployment's vault name in its location.
// ARM keeps soft-deleted vaults per subscription and location, not per resource group, so the tag
// (whose value is only the prefix) does not tell deployments of one prefix in two groups apart:
// the vault is this deployment's only if it also had this deployment's resource id
// (DeletedVaultProperties.VaultID, "The resource id of the original vault": armkeyvault v1.5.0
// models.go; its getDeletedVault example gives the form /subscriptions/…/resourceGroups/…/
// providers/Microsoft.KeyVault/vaults/…), compared case-insensitively as ARM ids are. A vault
// whose id ARM does not report is not ours (the REST example carries it; that every answer does is
// UNCONFIRMED): purging or recovering another deployment's vault cannot be undone.
func deletedVault(ctx context.Context, cl *Clients, cfg Config) (softDeleted, error) {
	n := NamesFor(cfg.NamePrefix)
	d, err := cl.Vaults.GetDeleted(ctx, n.Vault, cfg.Location, nil)
	if isNotFound(err) {
		return softDeleted{}, nil
	}
	if err != nil {
		return softDeleted{}, fmt.Errorf("soft-deleted key vault %s: %w", n.Vault, err)
	}
	if d.Properties == nil || !tagged(d.Properties.Tags, cfg.NamePrefix) {
		return softDeleted{owner: deletedForeign}, nil
	}
	id := deref(d.Properties.VaultID)
	if !strings.EqualFold(id, cfg.vaultID()) {
		if id == "" {
			id = "unknown (ARM reported no vaultId)"
		}
		return softDeleted{owner: deletedOtherVault, vaultID: id}, nil
	}
	return softDeleted{owner: deletedOurs, vaultID: id}, nil
}

// mergeTags returns existing with the deployment's tag set: tags others put on our resources stay.
func mergeTags(existing map[string]*string, prefix string) map[string]*string {
	t := make(map[string]*string, len(existing)+1)
	for k, v := range existing {
		t[k] = v
	}
	t[TagKey] = ptr(prefix)
	return t
}

func operatorType(cfg Config) string {
	if cfg.OperatorPrincipalType == "" {
		return "User"
	}
	return cfg.OperatorPrincipalType
}

// assign creates a role assignment with a deterministic name; RoleAssignmentExists (the same
// assignment under another name) is success. principalType is sent whenever known: ARM then does not look
// the principal up in Entra ID, so an identity created moments before does not fail with
// PrincipalNotFound while the directory replicates (ARM's own PrincipalNotFound message says so
// and points to https://aka.ms/docs-principaltype).
func assign(ctx context.Context, cl *Clients, cfg Config, scope, principal, principalType, role string) error {
	var pt *armauthorization.PrincipalType
	if principalType != "" {
		pt = ptr(armauthorization.PrincipalType(principalType))
	}
	_, err := cl.RoleAssignments.Create(ctx, scope, assignmentName(scope, principal, role), armauthorization.RoleAssignmentCreateParameters{
		Properties: &armauthorization.RoleAssignmentProperties{
			PrincipalID: &principal, RoleDefinitionID: ptr(cfg.roleDefinition(role)), PrincipalType: pt,
		},
	}, nil)
	var re *azcore.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusConflict && re.ErrorCode == "RoleAssignmentExists" {
		return nil
	}
	return err
}

// signingAssignment is a role the signing identity holds on one vault object.
type signingAssignment struct{ scope, role, label string }

// signingAssignments are the signing identity's roles on the vault, each on its object: the
// deployment's signer role on the key, the built-in Certificate User and Secrets User on the
// certificate and its secret.
func signingAssignments(cfg Config, certificate string) []signingAssignment {
	vaultScope := cfg.vaultID()
	return []signingAssignment{
		{signingKeyScope(cfg, certificate), cfg.signerRoleID(), signerAssignmentLabel(certificate)},
		{vaultScope + "/certificates/" + certificate, RoleKeyVaultCertificateUser, "Key Vault Certificate User on certificate " + certificate + " (identity)"},
		{vaultScope + "/secrets/" + certificate, RoleKeyVaultSecretsUser, "Key Vault Secrets User on secret " + certificate + " (identity)"},
	}
}

// signingKeyScope is the role assignment scope of the signing key.
func signingKeyScope(cfg Config, certificate string) string {
	return cfg.vaultID() + "/keys/" + certificate
}

// signerAssignmentLabel names the signer role's assignment in steps.
func signerAssignmentLabel(certificate string) string {
	return "signer role on key " + certificate + " (identity)"
}

// legacyCryptoUserLabel names, in steps, the Key Vault Crypto User grant earlier versions gave the
// signing identity.
const legacyCryptoUserLabel = "Key Vault Crypto User (identity)"

// legacyGrants are the signing identity's grants of earlier versions, which signingAssignments
// replace: Certificate User and Secrets User on the whole vault, and Key Vault Crypto User on the
// key and before that on the whole vault.
func legacyGrants(cfg Config, certificate string) []signingAssignment {
	vaultScope := cfg.vaultID()
	return []signingAssignment{
		{vaultScope, RoleKeyVaultCertificateUser, "Key Vault Certificate User on the vault (identity)"},
		{vaultScope, RoleKeyVaultSecretsUser, "Key Vault Secrets User on the vault (identity)"},
		{signingKeyScope(cfg, certificate), RoleKeyVaultCryptoUser, legacyCryptoUserLabel + " on key " + certificate},
		{vaultScope, RoleKeyVaultCryptoUser, legacyCryptoUserLabel + " on the vault"},
	}
}

// destroySignerRole removes the signing identity's signer role assignment on the key, then the
// signer role (a role with assignments cannot be deleted). What ARM refuses is reported as kept.
func destroySignerRole(ctx context.Context, cl *Clients, cfg Config, note func(kind, name, action, detail string)) error {
	n := NamesFor(cfg.NamePrefix)
	id, err := cl.Identities.Get(ctx, cfg.ResourceGroup, n.Identity, nil)
	switch {
	case isNotFound(err):
	case err != nil:
		return fmt.Errorf("managed identity %s: %w", n.Identity, err)
	case tagged(id.Tags, cfg.NamePrefix) && id.Properties != nil && id.Properties.PrincipalID != nil:
		label := signerAssignmentLabel(n.Certificate)
		err := unassign(ctx, cl, signingKeyScope(cfg, n.Certificate), *id.Properties.PrincipalID, cfg.signerRoleID())
		var re *azcore.ResponseError
		switch {
		case err == nil:
			note("role assignment", label, "deleted", "")
		case errors.As(err, &re):
			note("role assignment", label, "kept", "delete refused: "+responseReason(re))
		default:
			return fmt.Errorf("role assignment %s: %w", label, err)
		}
	}
	return destroyCustomRole(ctx, cl, cfg, cfg.signerRole(), note)
}

// unassign deletes the assignment assign would have made; a missing one is success.
func unassign(ctx context.Context, cl *Clients, scope, principal, role string) error {
	_, err := cl.RoleAssignments.Delete(ctx, scope, assignmentName(scope, principal, role), nil)
	if isNotFound(err) {
		return nil
	}
	return err
}

// retryForbidden retries f while it fails with 403, for at most RBACRetry.
func retryForbidden(ctx context.Context, w io.Writer, f func() error) error {
	return retryWhile(ctx, w, "the role assignment to propagate", func(re *azcore.ResponseError) bool { return re.StatusCode == http.StatusForbidden }, f)
}

// retryWhile retries f while it fails with an ARM error that retryable accepts, for at most
// RBACRetry; waitingFor says in the progress report what for.
func retryWhile(ctx context.Context, w io.Writer, waitingFor string, retryable func(*azcore.ResponseError) bool, f func() error) error {
	deadline := time.Now().Add(RBACRetry)
	for delay := 5 * time.Second; ; delay = min(2*delay, 30*time.Second) {
		err := f()
		var re *azcore.ResponseError
		if err == nil || !errors.As(err, &re) || !retryable(re) || time.Now().Add(delay).After(deadline) {
			return err
		}
		code := re.ErrorCode
		if code == "" {
			code = http.StatusText(re.StatusCode)
		}
		progress(w, "  %d %s, waiting %s for %s", re.StatusCode, code, delay, waitingFor)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

// Destroy deletes the deployment's resources that carry its tag, and the resource group if the
// deployment created it and everything left in it is a resource apply creates, under the name
// apply gives it and with the tag (foreignResources). The vault is purged only if purge is set
// (and purge protection allows).
func Destroy(ctx context.Context, cl *Clients, cfg Config, purge bool, w io.Writer) ([]Step, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := NamesFor(cfg.NamePrefix)
	var steps []Step
	note := func(kind, name, action, detail string) {
		steps = append(steps, Step{Kind: kind, Name: name, Action: action, Detail: detail})
		progress(w, "%-20s %-26s %s %s", kind, name, action, detail)
	}
	core := map[string]taggedResource{}
	for _, r := range coreResources(cl, cfg, nil) {
		core[r.kind] = r
	}
	if cl.Build != nil {
		if _, err := destroyResource(ctx, cfg, templateResource(cl, cfg), note, "the gallery and its image versions are kept unless the resource group goes", func(ctx context.Context) error {
			p, err := cl.Build.ImageTemplates.BeginDelete(ctx, cfg.ResourceGroup, n.ImageTemplate, nil)
			if err == nil {
				_, err = p.PollUntilDone(ctx, nil)
			}
			return err
		}); err != nil {
			return steps, err
		}
	}
	// The image builder's identity and role go after the template that runs as it.
	if err := destroyImageBuilder(ctx, cl, cfg, note); err != nil {
		return steps, err
	}
	if _, err := destroyResource(ctx, cfg, core["container registry"], note, "", func(ctx context.Context) error {
		return deleteWithGrants(ctx, cl, cfg, cfg.registryID(), "registry "+n.Registry, note, func(ctx context.Context) error {
			p, err := cl.Registries.BeginDelete(ctx, cfg.ResourceGroup, n.Registry, nil)
			if err == nil {
				_, err = p.PollUntilDone(ctx, nil)
			}
			return err
		})
	}); err != nil {
		return steps, err
	}
	// The signer role goes with its assignment, before the vault holding the key it is assigned
	// on, and after the registry: a destroy stopped by a registry that cannot be deleted leaves
	// signing as it was.
	if err := destroySignerRole(ctx, cl, cfg, note); err != nil {
		return steps, err
	}
	vault, err := destroyResource(ctx, cfg, core["key vault"], note, "soft-deleted; keys recoverable until purged", func(ctx context.Context) error {
		_, err := cl.Vaults.Delete(ctx, cfg.ResourceGroup, n.Vault, nil)
		return err
	})
	switch {
	case err != nil:
		return steps, err
	case vault == deleted && purge:
		if err := purgeVault(ctx, cl, cfg, "", note); err != nil {
			return steps, err
		}
	case vault == absent && purge:
		// Left soft-deleted by an earlier destroy without --purge, of this deployment only: the
		// lookup is by name and location, and a vault of the same prefix from another resource
		// group would be purged with its keys, irreversibly.
		d, err := deletedVault(ctx, cl, cfg)
		switch {
		case err != nil:
			return steps, err
		case d.owner == deletedForeign:
			note("key vault", n.Vault, "skip", "soft-deleted, not created by this deployment")
		case d.owner == deletedOtherVault:
			note("key vault", n.Vault, "skip", "soft-deleted, the vault of another deployment with this prefix ("+d.vaultID+"), not "+cfg.vaultID()+": not purged")
		case d.owner == deletedOurs:
			if err := purgeVault(ctx, cl, cfg, "was soft-deleted", note); err != nil {
				return steps, err
			}
		}
	}
	if _, err := destroyResource(ctx, cfg, core["attestation provider"], note, "", func(ctx context.Context) error {
		return deleteWithGrants(ctx, cl, cfg, cfg.providerID(), "attestation provider "+n.AttestationProvider, note, func(ctx context.Context) error {
			return cl.Attestation.Delete(ctx, cfg.ResourceGroup, n.AttestationProvider)
		})
	}); err != nil {
		return steps, err
	}
	if id, err := cl.Identities.Get(ctx, cfg.ResourceGroup, n.Identity, nil); err == nil {
		var principal string
		if id.Properties != nil && id.Properties.PrincipalID != nil {
			principal = *id.Properties.PrincipalID
		}
		if !tagged(id.Tags, cfg.NamePrefix) {
			note("managed identity", n.Identity, "skip", "not created by this deployment")
		} else if err := revokeLegacyGalleryGrant(ctx, cl, cfg, principal, "deleted", note); err != nil {
			return steps, err
		} else if _, err := cl.Identities.Delete(ctx, cfg.ResourceGroup, n.Identity, nil); err != nil {
			return steps, err
		} else {
			note("managed identity", n.Identity, "deleted", "")
		}
	} else if !isNotFound(err) {
		return steps, err
	}
	if rg, err := cl.Groups.Get(ctx, cfg.ResourceGroup, nil); err == nil {
		if !tagged(rg.Tags, cfg.NamePrefix) {
			note("resource group", cfg.ResourceGroup, "skip", "not created by this deployment")
		} else if foreign, taggedForeign, err := foreignResources(ctx, cl, cfg); err != nil {
			return steps, fmt.Errorf("listing resource group %s: %w", cfg.ResourceGroup, err)
		} else if len(foreign) > 0 {
			detail := fmt.Sprintf("holds %d resources not created by this deployment (%s)", len(foreign), strings.Join(foreign, ", "))
			if taggedForeign > 0 {
				detail += fmt.Sprintf("; those marked tagged carry %s=%s but are not resources apply creates (the tag can be inherited from the group, e.g. by the Azure Policy \"Inherit a tag from the resource group\")", TagKey, cfg.NamePrefix)
			}
			note("resource group", cfg.ResourceGroup, "skip", detail)
		} else if p, err := cl.Groups.BeginDelete(ctx, cfg.ResourceGroup, nil); err != nil {
			return steps, err
		} else if _, err := p.PollUntilDone(ctx, nil); err != nil {
			return steps, err
		} else {
			note("resource group", cfg.ResourceGroup, "deleted", "")
		}
	} else if !isNotFound(err) {
		return steps, err
	}
	return steps, nil
}

// destroyOutcome is what destroyResource found and did.
type destroyOutcome int

const (
	absent  destroyOutcome = iota // no such resource
	skipped                       // exists without the deployment's tag: left alone
	deleted                       // deleted by remove
)

// destroyResource deletes r with remove if it exists and carries the deployment's tag, noting
// the step (detail goes with the deletion); one without the tag is noted as skipped. Errors name
// the resource.
func destroyResource(ctx context.Context, cfg Config, r taggedResource, note func(kind, name, action, detail string), detail string, remove func(context.Context) error) (destroyOutcome, error) {
	tags, _, err := r.tags(ctx)
	switch {
	case isNotFound(err):
		return absent, nil
	case err != nil:
		return absent, fmt.Errorf("%s %s: %w", r.kind, r.name, err)
	case !tagged(tags, cfg.NamePrefix):
		note(r.kind, r.name, "skip", "not created by this deployment")
		return skipped, nil
	}
	if err := remove(ctx); err != nil {
		return absent, fmt.Errorf("deleting %s %s: %w", r.kind, r.name, err)
	}
	note(r.kind, r.name, "deleted", detail)
	return deleted, nil
}

// purgeVault purges the deployment's soft-deleted vault. A purge ARM refuses is not an error, so
// that destroy goes on to the other resources: under purge protection (the name is held until
// the retention ends; a rerun after it purges) it is a skip step, otherwise a kept one.
func purgeVault(ctx context.Context, cl *Clients, cfg Config, detail string, note func(kind, name, action, detail string)) error {
	n := NamesFor(cfg.NamePrefix)
	p, err := cl.Vaults.BeginPurgeDeleted(ctx, n.Vault, cfg.Location, nil)
	if err == nil {
		_, err = p.PollUntilDone(ctx, nil)
	}
	var re *azcore.ResponseError
	switch {
	case err == nil:
		note("key vault", n.Vault, "purged", detail)
		return nil
	case !errors.As(err, &re):
		return fmt.Errorf("purging key vault %s: %w", n.Vault, err)
	}
	// Only purge protection is an expected refusal (skip); any other (no permission, a conflict,
	// a server error) leaves the vault where --purge was asked to remove it: kept, so that the
	// command exits non-zero.
	if d, err := cl.Vaults.GetDeleted(ctx, n.Vault, cfg.Location, nil); err == nil && d.Properties != nil &&
		d.Properties.PurgeProtectionEnabled != nil && *d.Properties.PurgeProtectionEnabled {
		reason := "purge protection: the name is held until the retention ends"
		if d.Properties.ScheduledPurgeDate != nil {
			reason += " (" + d.Properties.ScheduledPurgeDate.UTC().Format(time.DateOnly) + ")"
		}
		note("key vault", n.Vault, "skip", "not purged, left soft-deleted ("+reason+")")
		return nil
	}
	note("key vault", n.Vault, "kept", "not purged, left soft-deleted (purge refused: "+responseReason(re)+")")
	return nil
}

// revokeLegacyGalleryGrant withdraws the Contributor grant on the gallery that earlier versions
// gave the signing identity (principal), if the gallery exists: apply does it on every run, and
// destroy before the identity goes (an assignment outlives its principal).
func revokeLegacyGalleryGrant(ctx context.Context, cl *Clients, cfg Config, principal, action string, note func(kind, name, action, detail string)) error {
	if cl.Build == nil || principal == "" {
		return nil
	}
	_, err := cl.Build.Galleries.Get(ctx, cfg.ResourceGroup, NamesFor(cfg.NamePrefix).Gallery, nil)
	if isNotFound(err) {
		return nil
	}
	if err == nil {
		err = unassign(ctx, cl, cfg.galleryScope(), principal, RoleContributor)
	}
	if err != nil {
		return fmt.Errorf("role assignment Contributor on the gallery (signing identity): %w", err)
	}
	note("role assignment", "Contributor on the gallery (signing identity)", action, "if an earlier version granted it")
	return nil
}

// foreignResources lists the resources of the deployment's group that are not its own: the group
// is deleted only when it holds none (deleting a group deletes everything in it). A resource is
// the deployment's own only if it is one apply creates, by type and name (deploymentResources),
// and carries the deployment's tag: the tag alone may have been inherited from the group. The one
// exception to the tag is the image versions of our build image definition in our (own) gallery:
// versions that builds published before their distributor set ArtifactTags carry no tag, and they
// go with the image definition they belong to. withTag counts the foreign resources that carry the
// tag.
func foreignResources(ctx context.Context, cl *Clients, cfg Config) (foreign []string, withTag int, err error) {
	if cl.Resources == nil {
		return nil, 0, errors.New("no resources client to list the group with")
	}
	type listed struct {
		r         *armresources.GenericResourceExpanded
		typ, path string
		ours      bool // one apply creates, by type and name
		tagged    bool
	}
	own := deploymentResources(cfg)
	versions := buildImageVersions(NamesFor(cfg.NamePrefix))
	var all []listed
	galleryOurs := false
	pager := cl.Resources.NewListByResourceGroupPager(cfg.ResourceGroup, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, 0, err
		}
		for _, r := range page.Value {
			if r == nil {
				continue
			}
			l := listed{r: r, tagged: tagged(r.Tags, cfg.NamePrefix)}
			var ok bool
			if l.typ, l.path, ok = listedAs(r, cfg); ok {
				l.ours = slices.ContainsFunc(own, func(o listedResource) bool { return o.matches(l.typ, l.path) })
			}
			if l.ours && l.tagged && strings.EqualFold(l.typ, galleriesType) {
				galleryOurs = true
			}
			all = append(all, l)
		}
	}
	for _, l := range all {
		if l.ours && (l.tagged || galleryOurs && versions.matches(l.typ, l.path)) {
			continue
		}
		name := l.path
		if l.r.Name != nil && *l.r.Name != "" {
			name = *l.r.Name
		}
		if name == "" {
			name = "?"
		}
		typ := l.typ
		if l.r.Type != nil && *l.r.Type != "" {
			typ = *l.r.Type
		}
		switch {
		case l.tagged && typ != "":
			name += " (" + typ + ", tagged)"
			withTag++
		case l.tagged:
			name += " (tagged)"
			withTag++
		case typ != "":
			name += " (" + typ + ")"
		}
		foreign = append(foreign, name)
	}
	return foreign, withTag, nil
}

// signingCertificate is the signing certificate apply ensures.
func (c Config) signingCertificate() provision.SigningCertificate {
	kt := "RSA"
	if c.HSM {
		kt = "RSA-HSM"
	}
	return provision.SigningCertificate{
		Name: NamesFor(c.NamePrefix).Certificate, Subject: "CN=" + c.NamePrefix + " attested signer, O=attested-kv, ST=Azure, C=ZZ",
		KeyType: kt, KeySize: 3072,
	}
}

// planCertificate is the plan's certificate step: what apply will do with the certificate of an
// existing vault, read (a new version has a new key: what was signed before stops verifying
// against the trust store apply writes), or, when there is no vault yet or it cannot be read,
// that it is created if absent.
func planCertificate(ctx context.Context, cl *Clients, cfg Config, seen *existingProps) Step {
	c := cfg.signingCertificate()
	what := fmt.Sprintf("%s-%d code-signing certificate", strings.TrimSuffix(c.KeyType, "-HSM"), c.KeySize)
	if strings.HasSuffix(c.KeyType, "-HSM") {
		what += " (HSM key)"
	}
	step := Step{Kind: "certificate", Name: c.Name, Action: "ensure", Detail: what + ", created if absent"}
	if cl.CertificatePlan == nil || seen.vault == nil || seen.vault.VaultURI == nil {
		return step
	}
	action, detail, err := cl.CertificatePlan(ctx, *seen.vault.VaultURI, c)
	switch {
	case err != nil:
		step.Detail += " (the existing one could not be read: " + err.Error() + ")"
	case action == provision.PlanCreate:
		step.Action, step.Detail = "create", what
	case action == provision.PlanKeep:
		step.Action, step.Detail = "keep", "version "+detail
	case action == provision.PlanNewVersion:
		step.Action, step.Detail = "new version", "with a new key (the current one does not match: "+detail+
			"); what was signed with the current certificate will no longer verify against the trust store apply writes, and the signingCertSHA256 pin changes"
	case action == provision.PlanRefuse:
		step.Action, step.Detail = "refused", detail
	}
	return step
}
