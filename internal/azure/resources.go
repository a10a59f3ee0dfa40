package azure

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/keyvault/armkeyvault"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources"
)

// taggedResource is one of the deployment's resources that carries its tag, with the read that
// finds it. Plan, the ownership check that runs before Apply writes anything, and the build
// layer's plan walk the same lists, so they cannot disagree on what the deployment holds.
type taggedResource struct {
	kind, name string
	// tags reads the resource; a missing one is an error isNotFound matches. conflict, when not
	// empty, says why updating the existing resource to the desired settings would give up
	// something the deployment holds or an administrator set (an HSM-backed key, a registry's ABAC
	// mode): Plan shows it as refused and Apply refuses before writing.
	tags func(ctx context.Context) (tags map[string]*string, conflict string, err error)
	// refusal is the error a conflict is refused with in apply; ErrDowngrade if nil.
	refusal error
	// createDetail is the detail of the plan step that creates the resource.
	createDetail string
	// planMissing adds the plan step of a resource that does not exist, where that takes more
	// than creating it (a vault may be soft-deleted, a global name taken); nil means create.
	planMissing func(ctx context.Context, steps []Step) ([]Step, error)
}

// coreResources are the signing chain's resources in the resource group, in plan order.
// The reads keep into seen, when it is not nil, the properties apply carries over into its updates
// (keepVaultSettings, keepRegistrySettings), so that it does not read them again.
func coreResources(cl *Clients, cfg Config, seen *existingProps) []taggedResource {
	if seen == nil {
		seen = &existingProps{}
	}
	n := NamesFor(cfg.NamePrefix)
	rg := cfg.ResourceGroup
	return []taggedResource{
		{kind: "managed identity", name: n.Identity, tags: func(ctx context.Context) (map[string]*string, string, error) {
			r, err := cl.Identities.Get(ctx, rg, n.Identity, nil)
			return r.Tags, "", err
		}},
		{kind: "attestation provider", name: n.AttestationProvider, tags: func(ctx context.Context) (map[string]*string, string, error) {
			p, err := cl.Attestation.Get(ctx, rg, n.AttestationProvider)
			if p == nil {
				return nil, "", err
			}
			return p.Tags, "", err
		}},
		{kind: "key vault", name: n.Vault, tags: func(ctx context.Context) (map[string]*string, string, error) {
			r, err := cl.Vaults.Get(ctx, rg, n.Vault, nil)
			seen.vault = r.Properties
			return r.Tags, vaultConflict(r.Vault, cfg), err
		}, planMissing: func(ctx context.Context, steps []Step) ([]Step, error) {
			return planDeletedVault(ctx, cl, cfg, steps)
		}},
		{kind: "container registry", name: n.Registry, refusal: ErrUnsupported, tags: func(ctx context.Context) (map[string]*string, string, error) {
			r, err := cl.Registries.Get(ctx, rg, n.Registry, nil)
			if err == nil {
				seen.registry = &r.Registry
			}
			return r.Tags, registryConflict(r.Registry), err
		}, planMissing: func(ctx context.Context, steps []Step) ([]Step, error) {
			return planCreateGlobal(ctx, cl, cfg, "container registry", n.Registry, steps)
		}},
	}
}

// ErrDowngrade is the error of an apply that would give up a protection the deployment has,
// such as an HSM-backed signing key.
var ErrDowngrade = errors.New("refused: apply would weaken the deployment")

// vaultConflict says why the existing vault v cannot be updated to cfg: a Premium vault, whose
// signing key is RSA-HSM, under a configuration without --hsm would become Standard and sign with a
// new software key from then on. (The settings apply does not manage, such as network rules, are
// carried over: keepVaultSettings.)
func vaultConflict(v armkeyvault.Vault, cfg Config) string {
	if cfg.HSM || v.Properties == nil || v.Properties.SKU == nil || v.Properties.SKU.Name == nil {
		return ""
	}
	if *v.Properties.SKU.Name != armkeyvault.SKUNamePremium {
		return ""
	}
	return "the vault is Premium and its signing key is HSM-backed, but --hsm was not given: apply would make the vault Standard and replace the key with a software one; " +
		`pass --hsm (or "hsm": true in the config file), or destroy the deployment first to move to a software key`
}

// ErrUnsupported is the error of an apply refused because an existing resource of the deployment
// has a setting that apply would undo and cannot serve yet, such as a registry in ABAC mode.
var ErrUnsupported = errors.New("refused: the existing resource has a setting apply does not support")

// registryConflict says why the existing registry r cannot be updated to what apply sends, or ""
// if it can. Apply sends RoleAssignmentMode LegacyRegistryPermissions, because the roles it grants
// on the registry, AcrPush to the signing identity and AcrPull to the cluster, are legacy ACR roles,
// which a registry in ABAC mode (AbacRepositoryPermissions, the portal's "RBAC Registry + ABAC
// Repository Permissions") does not honour (Microsoft Learn,
// container-registry-rbac-abac-repository-permissions). An administrator can move an existing
// registry to ABAC mode, which stops AcrPush, AcrPull and AcrDelete on it by design; the update
// would quietly move it back and make every such assignment work again. A mode apply does not
// know is refused the same way. A registry that reports no mode is taken as legacy, the mode apply
// has always sent.
func registryConflict(r armcontainerregistry.Registry) string {
	if r.Properties == nil || r.Properties.RoleAssignmentMode == nil {
		return ""
	}
	switch m := *r.Properties.RoleAssignmentMode; m {
	case armcontainerregistry.RoleAssignmentModeLegacyRegistryPermissions:
		return ""
	case armcontainerregistry.RoleAssignmentModeAbacRepositoryPermissions:
		return "the registry's role assignment permissions mode is " + string(m) + " (RBAC Registry + ABAC Repository Permissions), and apply would switch it back to " +
			string(armcontainerregistry.RoleAssignmentModeLegacyRegistryPermissions) + ", under which every AcrPush, AcrPull and AcrDelete assignment on it works again: " +
			"apply grants AcrPush (signing identity) and AcrPull (cluster), which registries in ABAC mode do not honour; they would need the Container Registry Repository Writer " +
			"and Reader roles instead, which apply does not support yet. Switch the registry back to legacy mode yourself if that is intended, or choose another --name-prefix"
	default:
		return "the registry's role assignment permissions mode is " + string(m) + ", which apply does not know, and apply would switch it to " +
			string(armcontainerregistry.RoleAssignmentModeLegacyRegistryPermissions) + ": switch it yourself if that is intended, or choose another --name-prefix"
	}
}

// existingProps are the properties of the deployment's existing vault and the existing registry
// (its identity sits beside its properties), as read by the ownership check (nil for one that does
// not exist).
type existingProps struct {
	vault    *armkeyvault.VaultProperties
	registry *armcontainerregistry.Registry
}

// buildResources are the build layer's tagged resources but its image template, which Plan
// judges by more than its tag (runsAsOnly), in plan order.
func buildResources(cl *Clients, cfg Config) []taggedResource {
	n := NamesFor(cfg.NamePrefix)
	rg := cfg.ResourceGroup
	return []taggedResource{
		{kind: "compute gallery", name: n.Gallery, tags: func(ctx context.Context) (map[string]*string, string, error) {
			r, err := cl.Build.Galleries.Get(ctx, rg, n.Gallery, nil)
			return r.Tags, "", err
		}},
		{kind: "image definition", name: BuildImageDefinition, createDetail: "Trusted Launch, Gen2", tags: func(ctx context.Context) (map[string]*string, string, error) {
			r, err := cl.Build.GalleryImages.Get(ctx, rg, n.Gallery, BuildImageDefinition, nil)
			return r.Tags, "", err
		}},
		{kind: "managed identity", name: n.ImageBuilderIdentity, createDetail: "Azure Image Builder runs as it", tags: func(ctx context.Context) (map[string]*string, string, error) {
			r, err := cl.Identities.Get(ctx, rg, n.ImageBuilderIdentity, nil)
			return r.Tags, "", err
		}},
	}
}

// templateResource is the build layer's image template.
func templateResource(cl *Clients, cfg Config) taggedResource {
	n := NamesFor(cfg.NamePrefix)
	return taggedResource{kind: "image template", name: n.ImageTemplate, tags: func(ctx context.Context) (map[string]*string, string, error) {
		r, err := cl.Build.ImageTemplates.Get(ctx, cfg.ResourceGroup, n.ImageTemplate, nil)
		return r.Tags, "", err
	}}
}

// planResources adds the plan steps of rs: each is created if the group is to be created or the
// resource is missing, refused if it exists without the deployment's tag, and updated in place
// otherwise.
func planResources(ctx context.Context, cfg Config, rs []taggedResource, rgExists bool, steps []Step) ([]Step, error) {
	for _, r := range rs {
		if rgExists {
			tags, conflict, err := r.tags(ctx)
			switch {
			case err == nil && !tagged(tags, cfg.NamePrefix):
				steps = append(steps, Step{Kind: r.kind, Name: r.name, Action: "refuse", Detail: "exists, not created by this deployment: apply would refuse (choose another --name-prefix)"})
				continue
			case err == nil && conflict != "":
				steps = append(steps, Step{Kind: r.kind, Name: r.name, Action: "refuse", Detail: conflict + ": apply would refuse"})
				continue
			case err == nil:
				steps = append(steps, Step{Kind: r.kind, Name: r.name, Action: "exists", Detail: "updated in place to the desired settings"})
				continue
			case !isNotFound(err):
				return steps, fmt.Errorf("%s %s: %w", r.kind, r.name, err)
			}
		}
		if r.planMissing == nil {
			steps = append(steps, Step{Kind: r.kind, Name: r.name, Action: "create", Detail: r.createDetail})
			continue
		}
		var err error
		if steps, err = r.planMissing(ctx, steps); err != nil {
			return steps, err
		}
	}
	return steps, nil
}

// checkResources reads rs for checkOwned: the tags of each that exists go into o; one that
// exists without the deployment's tag is an ErrNotOwned error naming it.
func checkResources(ctx context.Context, cfg Config, rs []taggedResource, o ownedTags) error {
	for _, r := range rs {
		tags, conflict, err := r.tags(ctx)
		switch {
		case isNotFound(err):
			continue
		case err != nil:
			return fmt.Errorf("%s %s: %w", r.kind, r.name, err)
		case !tagged(tags, cfg.NamePrefix):
			return fmt.Errorf("%s %s exists and was %w (no %s=%s tag): apply refuses to overwrite and adopt it; choose another --name-prefix",
				r.kind, r.name, ErrNotOwned, TagKey, cfg.NamePrefix)
		case conflict != "":
			refusal := r.refusal
			if refusal == nil {
				refusal = ErrDowngrade
			}
			return fmt.Errorf("%s %s: %w: %s", r.kind, r.name, refusal, conflict)
		}
		o[ownedKey(r.kind, r.name)] = tags
	}
	return nil
}

// ARM resource types of what apply creates, as the resource list API reports them.
const (
	identitiesType   = "Microsoft.ManagedIdentity/userAssignedIdentities"
	providersType    = "Microsoft.Attestation/attestationProviders"
	vaultsType       = "Microsoft.KeyVault/vaults"
	registriesType   = "Microsoft.ContainerRegistry/registries"
	replicationsType = registriesType + "/replications"
	galleriesType    = "Microsoft.Compute/galleries"
	imagesType       = galleriesType + "/images"
	versionsType     = imagesType + "/versions"
	templatesType    = "Microsoft.VirtualMachineImages/imageTemplates"
)

// listedResource is a resource apply creates in the resource group, as the resource list API
// reports it: its ARM type and its name path, the names from the top-level resource down joined
// by "/" (a gallery's image definition is gallery/definition).
type listedResource struct {
	typ, path string
	// child makes path the parent's path: any one child of it of type typ matches (a registry
	// replica in any region, any image version).
	child bool
}

// deploymentResources are the resources apply creates in the resource group, named from cfg as
// apply names them (NamesFor). Destroy deletes the group only if everything in it is one of these
// and carries the deployment's tag: a tag alone says nothing, since an Azure Policy such as the
// built-in "Inherit a tag from the resource group" puts the group's tags on whatever anyone
// creates in it. The build layer is included whatever cfg says of it, and replicas in any region,
// because destroy is given neither: the names come from the prefix alone, and a replica lives and
// dies with its registry.
func deploymentResources(cfg Config) []listedResource {
	n := NamesFor(cfg.NamePrefix)
	return []listedResource{
		{typ: identitiesType, path: n.Identity},
		{typ: identitiesType, path: n.ImageBuilderIdentity},
		{typ: providersType, path: n.AttestationProvider},
		{typ: vaultsType, path: n.Vault},
		{typ: registriesType, path: n.Registry},
		{typ: replicationsType, path: n.Registry, child: true},
		{typ: galleriesType, path: n.Gallery},
		{typ: imagesType, path: n.Gallery + "/" + BuildImageDefinition},
		buildImageVersions(n),
		{typ: templatesType, path: n.ImageTemplate},
	}
}

// buildImageVersions are the image versions of the build-agent image definition.
func buildImageVersions(n Names) listedResource {
	return listedResource{typ: versionsType, path: n.Gallery + "/" + BuildImageDefinition, child: true}
}

// matches reports whether a listed resource of type typ and name path path is r; ARM compares
// types and names case-insensitively.
func (r listedResource) matches(typ, path string) bool {
	if !strings.EqualFold(typ, r.typ) {
		return false
	}
	if !r.child {
		return strings.EqualFold(path, r.path)
	}
	i := strings.LastIndex(path, "/")
	return i > 0 && i < len(path)-1 && strings.EqualFold(path[:i], r.path)
}

// listedAs is the ARM type and name path of a resource the resource list API reported in cfg's
// resource group. They come from its id when it has one, which is its full address with the names
// of its parents, and else from its type and name; for a child resource that name is taken to be
// its name path, parent/child (the form ARM's Resources_ListByResourceGroup gives child names in
// is UNCONFIRMED; the id, which it also reports, is used first). ok is false when they cannot be
// told: an id that does not parse, lies outside the group, crosses into another provider (an
// extension resource) or disagrees with the reported type. Such a resource counts as foreign.
func listedAs(r *armresources.GenericResourceExpanded, cfg Config) (typ, path string, ok bool) {
	if r.ID == nil || *r.ID == "" {
		if r.Type == nil || r.Name == nil || *r.Type == "" || *r.Name == "" {
			return "", "", false
		}
		return *r.Type, *r.Name, true
	}
	id, err := arm.ParseResourceID(*r.ID)
	if err != nil || !strings.EqualFold(id.SubscriptionID, cfg.SubscriptionID) || !strings.EqualFold(id.ResourceGroupName, cfg.ResourceGroup) {
		return "", "", false
	}
	typ = id.ResourceType.String()
	if r.Type != nil && !strings.EqualFold(*r.Type, typ) {
		return "", "", false
	}
	var names []string
	for p := id; p.ResourceType.String() != arm.ResourceGroupResourceType.String(); p = p.Parent {
		if p.Parent == nil || !strings.EqualFold(p.ResourceType.Namespace, id.ResourceType.Namespace) || p.Name == "" {
			return "", "", false
		}
		names = append(names, p.Name)
	}
	if len(names) == 0 {
		return "", "", false
	}
	slices.Reverse(names)
	return typ, strings.Join(names, "/"), true
}
