package azure

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
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
	probe := func(kind, name string, err error) error {
		switch {
		case err == nil:
			steps = append(steps, Step{Kind: kind, Name: name, Action: "exists", Detail: "updated in place to the desired settings"})
		case isNotFound(err):
			steps = append(steps, Step{Kind: kind, Name: name, Action: "create"})
		default:
			return fmt.Errorf("%s %s: %w", kind, name, err)
		}
		return nil
	}
	_, err := cl.Groups.Get(ctx, cfg.ResourceGroup, nil)
	if err := probe("resource group", cfg.ResourceGroup, err); err != nil {
		return steps, err
	}
	rgMissing := isNotFound(err)
	if rgMissing {
		// Everything below lives in the group: all of it is to be created.
		for _, s := range [][2]string{{"managed identity", n.Identity}, {"attestation provider", n.AttestationProvider}, {"key vault", n.Vault}, {"container registry", n.Registry}} {
			steps = append(steps, Step{Kind: s[0], Name: s[1], Action: "create"})
		}
	} else {
		_, err = cl.Identities.Get(ctx, cfg.ResourceGroup, n.Identity, nil)
		if err := probe("managed identity", n.Identity, err); err != nil {
			return steps, err
		}
		_, err = cl.Attestation.Get(ctx, cfg.ResourceGroup, n.AttestationProvider)
		if err := probe("attestation provider", n.AttestationProvider, err); err != nil {
			return steps, err
		}
		_, err = cl.Vaults.Get(ctx, cfg.ResourceGroup, n.Vault, nil)
		if err := probe("key vault", n.Vault, err); err != nil {
			return steps, err
		}
		_, err = cl.Registries.Get(ctx, cfg.ResourceGroup, n.Registry, nil)
		if err := probe("container registry", n.Registry, err); err != nil {
			return steps, err
		}
	}
	steps = append(steps,
		Step{Kind: "attestation policy", Name: AttestationType, Action: "set", Detail: "from policy/maa/azureguest.txt"},
		Step{Kind: "certificate", Name: n.Certificate, Action: "ensure", Detail: "RSA-3072 code-signing certificate, created if absent"},
		Step{Kind: "role assignments", Name: "identity, operator, cluster", Action: "ensure", Detail: "Key Vault Crypto User and Certificate User, AcrPush for the identity; Certificates Officer and Attestation Contributor for the operator; AcrPull for the cluster"},
	)
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
	if _, err := cl.Groups.Get(ctx, cfg.ResourceGroup, nil); isNotFound(err) {
		if _, err := cl.Groups.CreateOrUpdate(ctx, cfg.ResourceGroup, armresources.ResourceGroup{Location: &cfg.Location, Tags: cfg.tags()}, nil); err != nil {
			return fail("resource group", cfg.ResourceGroup, err)
		}
		done("resource group", cfg.ResourceGroup, "created", "")
	} else if err != nil {
		return fail("resource group", cfg.ResourceGroup, err)
	} else {
		done("resource group", cfg.ResourceGroup, "exists", "")
	}

	id, err := cl.Identities.CreateOrUpdate(ctx, cfg.ResourceGroup, n.Identity, armmsi.Identity{Location: &cfg.Location, Tags: cfg.tags()}, nil)
	if err != nil {
		return fail("managed identity", n.Identity, err)
	}
	if id.Properties == nil || id.Properties.PrincipalID == nil || id.Properties.ClientID == nil {
		return fail("managed identity", n.Identity, errors.New("no principal or client id in the answer"))
	}
	out.IdentityPrincipalID, out.IdentityClientID = *id.Properties.PrincipalID, *id.Properties.ClientID
	identityID := cfg.rgID() + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + n.Identity
	if id.ID != nil {
		identityID = *id.ID
	}
	done("managed identity", n.Identity, "ready", "client id "+out.IdentityClientID)

	prov, err := cl.Attestation.Create(ctx, cfg.ResourceGroup, n.AttestationProvider, cfg.Location, cfg.tags())
	if err != nil {
		return fail("attestation provider", n.AttestationProvider, err)
	}
	if prov.Properties.AttestURI == "" {
		return fail("attestation provider", n.AttestationProvider, errors.New("no attestUri in the answer"))
	}
	out.AttestationURL = prov.Properties.AttestURI
	done("attestation provider", n.AttestationProvider, "ready", out.AttestationURL)
	provScope := cfg.rgID() + "/providers/Microsoft.Attestation/attestationProviders/" + n.AttestationProvider
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
	poller, err := cl.Vaults.BeginCreateOrUpdate(ctx, cfg.ResourceGroup, n.Vault, armkeyvault.VaultCreateOrUpdateParameters{Location: &cfg.Location, Tags: cfg.tags(), Properties: vp}, nil)
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
	done("key vault", n.Vault, "ready", out.KeyVaultURL+" (RBAC)")
	vaultScope := cfg.rgID() + "/providers/Microsoft.KeyVault/vaults/" + n.Vault
	for _, a := range []struct{ principal, ptype, role, label string }{
		{cfg.OperatorPrincipalID, operatorType(cfg), RoleKeyVaultCertificatesOfficer, "Key Vault Certificates Officer (operator)"},
		{out.IdentityPrincipalID, "ServicePrincipal", RoleKeyVaultCryptoUser, "Key Vault Crypto User (identity)"},
		{out.IdentityPrincipalID, "ServicePrincipal", RoleKeyVaultCertificateUser, "Key Vault Certificate User (identity)"},
	} {
		if err := assign(ctx, cl, cfg, vaultScope, a.principal, a.ptype, a.role); err != nil {
			return fail("role assignment", a.label, err)
		}
		done("role assignment", a.label, "ensured", "")
	}
	kt := "RSA"
	if cfg.HSM {
		kt = "RSA-HSM"
	}
	var cert *provision.Result
	if err := retryForbidden(ctx, w, func() error {
		var err error
		cert, err = cl.Certificates(ctx, out.KeyVaultURL, provision.SigningCertificate{
			Name: n.Certificate, Subject: "CN=" + cfg.NamePrefix + " attested signer, O=attested-kv, ST=Azure, C=ZZ",
			KeyType: kt, KeySize: 3072,
		})
		return err
	}); err != nil {
		return fail("certificate", n.Certificate, err)
	}
	out.KeyID, out.Certificate = cert.KeyID, cert.Certificate
	out.CertificateSubject = cert.Certificate.Subject.String()
	sum := sha256.Sum256(cert.Certificate.Raw)
	out.CertificateThumbprint = hex.EncodeToString(sum[:])
	done("certificate", n.Certificate, "ready", out.KeyID)

	rp, err := cl.Registries.BeginCreate(ctx, cfg.ResourceGroup, n.Registry, armcontainerregistry.Registry{
		Location: &cfg.Location, Tags: cfg.tags(),
		SKU: &armcontainerregistry.SKU{Name: ptr(armcontainerregistry.SKUNamePremium)},
		Properties: &armcontainerregistry.RegistryProperties{
			AdminUserEnabled: ptr(false),
			// AcrPush/AcrPull are not honoured in ABAC mode: ask for the legacy mode explicitly.
			RoleAssignmentMode: ptr(armcontainerregistry.RoleAssignmentModeLegacyRegistryPermissions),
		},
	}, nil)
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
	regScope := cfg.rgID() + "/providers/Microsoft.ContainerRegistry/registries/" + n.Registry
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
		if err := applyBuildLayer(ctx, cl.Build, cfg, out, identityID, cl, done, w); err != nil {
			return fail("image builder", n.ImageTemplate, err)
		}
	}
	return out, steps, nil
}

func operatorType(cfg Config) string {
	if cfg.OperatorPrincipalType == "" {
		return "User"
	}
	return cfg.OperatorPrincipalType
}

// assign creates a role assignment with a deterministic name; RoleAssignmentExists (the same
// assignment under another name) is success.
func assign(ctx context.Context, cl *Clients, cfg Config, scope, principal, principalType, role string) error {
	pt := armauthorization.PrincipalType(principalType)
	_, err := cl.RoleAssignments.Create(ctx, scope, assignmentName(scope, principal, role), armauthorization.RoleAssignmentCreateParameters{
		Properties: &armauthorization.RoleAssignmentProperties{
			PrincipalID: &principal, RoleDefinitionID: ptr(cfg.roleDefinition(role)), PrincipalType: &pt,
		},
	}, nil)
	var re *azcore.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusConflict && re.ErrorCode == "RoleAssignmentExists" {
		return nil
	}
	return err
}

// retryForbidden retries f while it fails with 403, for at most RBACRetry.
func retryForbidden(ctx context.Context, w io.Writer, f func() error) error {
	deadline := time.Now().Add(RBACRetry)
	for delay := 5 * time.Second; ; delay = min(2*delay, 30*time.Second) {
		err := f()
		var re *azcore.ResponseError
		if err == nil || !errors.As(err, &re) || re.StatusCode != http.StatusForbidden || time.Now().Add(delay).After(deadline) {
			return err
		}
		progress(w, "  403 Forbidden, waiting %s for the role assignment to propagate", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

// Destroy deletes the deployment's resources that carry its tag, and the resource group if the
// deployment created it. The vault is purged only if purge is set (and purge protection allows).
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
	if cl.Build != nil {
		if t, err := cl.Build.ImageTemplates.Get(ctx, cfg.ResourceGroup, n.ImageTemplate, nil); err == nil {
			if !tagged(t.Tags, cfg.NamePrefix) {
				note("image template", n.ImageTemplate, "skip", "not created by this deployment")
			} else if p, err := cl.Build.ImageTemplates.BeginDelete(ctx, cfg.ResourceGroup, n.ImageTemplate, nil); err != nil {
				return steps, err
			} else if _, err := p.PollUntilDone(ctx, nil); err != nil {
				return steps, err
			} else {
				note("image template", n.ImageTemplate, "deleted", "the gallery and its image versions are kept unless the resource group goes")
			}
		} else if !isNotFound(err) {
			return steps, err
		}
	}
	if reg, err := cl.Registries.Get(ctx, cfg.ResourceGroup, n.Registry, nil); err == nil {
		if !tagged(reg.Tags, cfg.NamePrefix) {
			note("container registry", n.Registry, "skip", "not created by this deployment")
		} else if p, err := cl.Registries.BeginDelete(ctx, cfg.ResourceGroup, n.Registry, nil); err != nil {
			return steps, err
		} else if _, err := p.PollUntilDone(ctx, nil); err != nil {
			return steps, err
		} else {
			note("container registry", n.Registry, "deleted", "")
		}
	} else if !isNotFound(err) {
		return steps, err
	}
	if v, err := cl.Vaults.Get(ctx, cfg.ResourceGroup, n.Vault, nil); err == nil {
		if !tagged(v.Tags, cfg.NamePrefix) {
			note("key vault", n.Vault, "skip", "not created by this deployment")
		} else {
			if _, err := cl.Vaults.Delete(ctx, cfg.ResourceGroup, n.Vault, nil); err != nil {
				return steps, err
			}
			note("key vault", n.Vault, "deleted", "soft-deleted; keys recoverable until purged")
			if purge {
				p, err := cl.Vaults.BeginPurgeDeleted(ctx, n.Vault, cfg.Location, nil)
				if err == nil {
					_, err = p.PollUntilDone(ctx, nil)
				}
				if err != nil {
					return steps, fmt.Errorf("purging key vault %s: %w", n.Vault, err)
				}
				note("key vault", n.Vault, "purged", "")
			}
		}
	} else if !isNotFound(err) {
		return steps, err
	}
	if p, err := cl.Attestation.Get(ctx, cfg.ResourceGroup, n.AttestationProvider); err == nil {
		if !tagged(p.Tags, cfg.NamePrefix) {
			note("attestation provider", n.AttestationProvider, "skip", "not created by this deployment")
		} else if err := cl.Attestation.Delete(ctx, cfg.ResourceGroup, n.AttestationProvider); err != nil {
			return steps, err
		} else {
			note("attestation provider", n.AttestationProvider, "deleted", "")
		}
	} else if !isNotFound(err) {
		return steps, err
	}
	if id, err := cl.Identities.Get(ctx, cfg.ResourceGroup, n.Identity, nil); err == nil {
		if !tagged(id.Tags, cfg.NamePrefix) {
			note("managed identity", n.Identity, "skip", "not created by this deployment")
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
