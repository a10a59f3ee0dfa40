package azure

import (
	"context"
	"errors"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/keyvault/armkeyvault"
)

// taggedResource is one of the deployment's resources that carries its tag, with the read that
// finds it. Plan, the ownership check that runs before Apply writes anything, and the build
// layer's plan walk the same lists, so they cannot disagree on what the deployment holds.
type taggedResource struct {
	kind, name string
	// tags reads the resource; a missing one is an error isNotFound matches. conflict, when not
	// empty, says why updating the existing resource to the desired settings would give up
	// something the deployment holds: Plan shows it as refused and Apply refuses before writing.
	tags func(ctx context.Context) (tags map[string]*string, conflict string, err error)
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
		{kind: "container registry", name: n.Registry, tags: func(ctx context.Context) (map[string]*string, string, error) {
			r, err := cl.Registries.Get(ctx, rg, n.Registry, nil)
			if err == nil {
				seen.registry = &r.Registry
			}
			return r.Tags, "", err
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
			return fmt.Errorf("%s %s: %w: %s", r.kind, r.name, ErrDowngrade, conflict)
		}
		o[ownedKey(r.kind, r.name)] = tags
	}
	return nil
}
