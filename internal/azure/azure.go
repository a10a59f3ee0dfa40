// Package azure provisions, through the official ARM SDK modules, the Azure resources the signing
// chain needs: a resource group, a user-assigned managed identity for the build VMs, an MAA
// attestation provider (through azcore: armattestation cannot be fetched through the Go module
// proxy here, azure-sdk.md §1) and its policy, a Key Vault in RBAC mode with a code-signing
// certificate, a Premium container registry, and the role assignments between them; the signing
// identity holds a custom signer role on the signing key that can read it and sign with it only
// (roles.go). With the build layer it adds a compute gallery and an Azure Image Builder template
// that runs as a second identity of its own, holding a custom image publisher role on the gallery
// only: the signing identity, whose token any job on a build VM can get, gets no right on the
// gallery.
//
// Apply is idempotent: every resource is created or updated in place, role assignments have
// deterministic names and "already exists" counts as success, and a failed run reports what
// exists so that running it again completes. It refuses, before writing anything, a resource
// under one of its names that does not carry this deployment's tag, or one its update would
// weaken (a Premium vault without --hsm, a registry an administrator moved to ABAC repository
// permissions), and recovers the vault an earlier destroy soft-deleted. Apply converges the role assignments it makes (grants.go): those
// it made to principals the configuration no longer names are withdrawn, a grant serving
// production only once its replacement has had RoleSettle to take effect; assignments it did not
// make are never touched. Plan reads and changes nothing. Destroy removes only resources that
// carry this deployment's tag, with the role assignments apply made on them, and the resource
// group only when nothing else is left in it: everything left must be a resource apply creates,
// by type and name, and carry the tag, since a tag alone may have been inherited from the group.
package azure

import (
	"context"
	"crypto/sha1"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/authorization/armauthorization/v2"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/keyvault/armkeyvault"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources"

	"github.com/attested-kv/attested-kv/internal/provision"
)

// TagKey marks the resources a deployment created; its value is the deployment's name prefix.
const TagKey = "attested-kv-deployment"

// Built-in role definition ids (azure-sdk.md §2.7).
const (
	RoleKeyVaultCryptoUser          = "12338af0-0e69-4776-bea7-57ae8d297424"
	RoleKeyVaultCertificateUser     = "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba"
	RoleKeyVaultSecretsUser         = "4633458b-17de-408a-b874-0445c86b69e6"
	RoleKeyVaultCertificatesOfficer = "a4417e6f-fecd-4de8-b567-7b0420556985"
	RoleAcrPush                     = "8311e382-0749-4cb8-b61a-304f252e45ec"
	RoleAcrPull                     = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
	RoleAttestationContributor      = "bbf86eb8-f7b4-4cce-96e4-18cddf81d86e"
)

// Config describes a deployment.
type Config struct {
	SubscriptionID string `json:"subscriptionId"`
	TenantID       string `json:"tenantId"`
	ResourceGroup  string `json:"resourceGroup"`
	Location       string `json:"location"`
	// NamePrefix names every resource (lower-case letters and digits, 3-12 characters).
	NamePrefix string `json:"namePrefix"`
	// OperatorPrincipalID is the user or service principal running apply: it is granted
	// Certificates Officer on the vault (to create the certificate) and Attestation Contributor
	// on the provider (to set the policy).
	OperatorPrincipalID string `json:"operatorPrincipalId"`
	// OperatorPrincipalType is User (default) or ServicePrincipal.
	OperatorPrincipalType string `json:"operatorPrincipalType"`
	// ClusterPrincipalID, if set, is granted AcrPull (the cluster's kubelet identity).
	ClusterPrincipalID string `json:"clusterPrincipalId"`
	// PurgeProtection turns on the vault's purge protection (irreversible).
	PurgeProtection bool `json:"purgeProtection"`
	// HSM makes the vault Premium and the signing key RSA-HSM.
	HSM bool `json:"hsm"`
	// AttestationPolicy is the AzureGuest policy text.
	AttestationPolicy string `json:"-"`
	// ImageBuilder adds the build layer: a compute gallery, a Trusted Launch image definition and
	// an Azure Image Builder template for the build-agent image, configured by BuildLayer.
	ImageBuilder bool       `json:"imageBuilder"`
	BuildLayer   BuildLayer `json:"buildLayer"`
	// Replicas are regions the registry is geo-replicated to.
	Replicas []string `json:"replicas"`
}

var prefixPattern = regexp.MustCompile(`^[a-z][a-z0-9]{2,11}$`)

// Validate checks the config.
func (c Config) Validate() error {
	// Each setting by its flag and its key in a config file, in the order of the help.
	var missing []string
	for _, s := range []struct{ flag, key, v string }{
		{"--subscription", "subscriptionId", c.SubscriptionID},
		{"--tenant", "tenantId", c.TenantID},
		{"--resource-group", "resourceGroup", c.ResourceGroup},
		{"--location", "location", c.Location},
		{"--name-prefix", "namePrefix", c.NamePrefix},
		{"--operator-object-id", "operatorPrincipalId", c.OperatorPrincipalID},
	} {
		if s.v == "" {
			missing = append(missing, s.flag+" ("+s.key+")")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing settings, given by flag or config file key: %s", strings.Join(missing, ", "))
	}
	if !prefixPattern.MatchString(c.NamePrefix) {
		return fmt.Errorf("name prefix %q: want 3-12 lower-case letters and digits, starting with a letter", c.NamePrefix)
	}
	if c.ImageBuilder {
		if err := c.BuildLayer.Validate(); err != nil {
			return fmt.Errorf("image builder: %w", err)
		}
	}
	return nil
}

// Names are the resource names derived from the prefix (each within its service's rules).
// Identity is the signing identity the build VMs carry; ImageBuilderIdentity is the identity Azure
// Image Builder runs as to publish the build-agent image, kept apart from the signing identity.
type Names struct {
	Identity, ImageBuilderIdentity, AttestationProvider, Vault, Registry, Certificate, Gallery, ImageTemplate string
}

// NamesFor returns the names of a deployment.
func NamesFor(prefix string) Names {
	return Names{
		Identity:             prefix + "-signer",
		ImageBuilderIdentity: prefix + "-imagebuilder",
		AttestationProvider:  prefix + "attest",
		Vault:                prefix + "-kv",
		Registry:             prefix + "acr",
		Certificate:          "attested-signing",
		Gallery:              prefix + "gallery",
		ImageTemplate:        prefix + "-build-agent",
	}
}

// Clients are the ARM clients a deployment uses; tests build them on the SDKs' fake transports.
type Clients struct {
	Groups          *armresources.ResourceGroupsClient
	Identities      *armmsi.UserAssignedIdentitiesClient
	Vaults          *armkeyvault.VaultsClient
	Registries      *armcontainerregistry.RegistriesClient
	RoleAssignments *armauthorization.RoleAssignmentsClient
	// RoleDefinitions holds the image publisher role of the build layer.
	RoleDefinitions *armauthorization.RoleDefinitionsClient
	Attestation     *AttestationProviders
	// Resources lists what the resource group holds before destroy deletes it.
	Resources *armresources.Client
	// Build holds the clients of the build layer and replication; needed only when used.
	Build *BuildLayerClients
	// PolicySetter sets the attestation policy on the provider's data plane.
	PolicySetter func(ctx context.Context, attestURI string) (PolicySetter, error)
	// Certificates creates the signing certificate on the vault's data plane.
	Certificates func(ctx context.Context, vaultURL string, c provision.SigningCertificate) (*provision.Result, error)
	// CertificatePlan says what Certificates would do, changing nothing
	// (provision.PlanSigningCertificate); nil leaves Plan to say "created if absent".
	CertificatePlan func(ctx context.Context, vaultURL string, c provision.SigningCertificate) (action, detail string, err error)
}

// PolicySetter sets an attestation policy (satisfied by *maa.PolicyClient).
type PolicySetter interface {
	SetPolicy(ctx context.Context, attestationType, text string) (string, error)
}

// NewClients builds the ARM clients for subscription with cred.
func NewClients(subscription string, cred azcore.TokenCredential, opts *arm.ClientOptions) (*Clients, error) {
	c := &Clients{}
	var err error
	if c.Groups, err = armresources.NewResourceGroupsClient(subscription, cred, opts); err != nil {
		return nil, err
	}
	if c.Resources, err = armresources.NewClient(subscription, cred, opts); err != nil {
		return nil, err
	}
	if c.Identities, err = armmsi.NewUserAssignedIdentitiesClient(subscription, cred, opts); err != nil {
		return nil, err
	}
	if c.Vaults, err = armkeyvault.NewVaultsClient(subscription, cred, opts); err != nil {
		return nil, err
	}
	if c.Registries, err = armcontainerregistry.NewRegistriesClient(subscription, cred, opts); err != nil {
		return nil, err
	}
	if c.RoleAssignments, err = armauthorization.NewRoleAssignmentsClient(subscription, cred, opts); err != nil {
		return nil, err
	}
	if c.RoleDefinitions, err = armauthorization.NewRoleDefinitionsClient(cred, opts); err != nil {
		return nil, err
	}
	if c.Attestation, err = NewAttestationProviders(subscription, cred, opts); err != nil {
		return nil, err
	}
	if c.Build, err = NewBuildLayerClients(subscription, cred, opts); err != nil {
		return nil, err
	}
	return c, nil
}

// Step is one resource's planned or applied state.
type Step struct {
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	Action string `json:"action"` // create, update, exists, recover, refuse, delete, skip, kept, done
	Detail string `json:"detail,omitempty"`
}

// KeptError returns an error naming the steps whose action is "kept" (something destroy had to
// delete is still there), or nil.
func KeptError(steps []Step) error {
	var kept []string
	for _, s := range steps {
		if s.Action == "kept" {
			kept = append(kept, s.Kind+" "+s.Name)
		}
	}
	if len(kept) == 0 {
		return nil
	}
	return fmt.Errorf("destroy left %d resource(s) in place: %s (see their steps)", len(kept), strings.Join(kept, ", "))
}

// Outputs are what the other binaries need from a deployment.
type Outputs struct {
	SubscriptionID        string `json:"subscriptionId"`
	ResourceGroup         string `json:"resourceGroup"`
	TenantID              string `json:"tenantId"`
	IdentityClientID      string `json:"identityClientId"`
	IdentityPrincipalID   string `json:"identityPrincipalId"`
	AttestationURL        string `json:"attestationUrl"`
	KeyVaultURL           string `json:"keyVaultUrl"`
	KeyID                 string `json:"keyId"`
	RegistryLoginServer   string `json:"registryLoginServer"`
	CertificateSubject    string `json:"certificateSubject"`
	CertificateThumbprint string `json:"certificateThumbprintSha256"`
	// GalleryImageID and ImageTemplate name the build-agent image, with the build layer.
	GalleryImageID string `json:"galleryImageId,omitempty"`
	ImageTemplate  string `json:"imageTemplate,omitempty"`
	// Certificate is the signing certificate (for the Notation trust store).
	Certificate *x509.Certificate `json:"-"`
}

func isNotFound(err error) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusNotFound
}

func tagged(tags map[string]*string, prefix string) bool {
	v := tags[TagKey]
	return v != nil && *v == prefix
}

func ptr[T any](v T) *T { return &v }

func (c Config) tags() map[string]*string { return map[string]*string{TagKey: ptr(c.NamePrefix)} }

func (c Config) rgID() string {
	return "/subscriptions/" + c.SubscriptionID + "/resourceGroups/" + c.ResourceGroup
}

// vaultID is the resource id of the deployment's vault.
func (c Config) vaultID() string {
	return c.rgID() + "/providers/Microsoft.KeyVault/vaults/" + NamesFor(c.NamePrefix).Vault
}

// providerID is the resource id of the deployment's attestation provider.
func (c Config) providerID() string {
	return c.rgID() + "/providers/Microsoft.Attestation/attestationProviders/" + NamesFor(c.NamePrefix).AttestationProvider
}

// registryID is the resource id of the deployment's container registry.
func (c Config) registryID() string {
	return c.rgID() + "/providers/Microsoft.ContainerRegistry/registries/" + NamesFor(c.NamePrefix).Registry
}

func (c Config) roleDefinition(guid string) string {
	return "/subscriptions/" + c.SubscriptionID + "/providers/Microsoft.Authorization/roleDefinitions/" + guid
}

// assignmentName is a deterministic (name-based, SHA-1, version 5 layout) UUID of the
// assignment's scope, principal and role, so a rerun addresses the same assignment.
func assignmentName(scope, principal, role string) string {
	h := sha1.Sum([]byte(strings.ToLower(scope + "|" + principal + "|" + role))) //nolint:gosec // a name, not a security function
	b := h[:16]
	b[6] = b[6]&0x0f | 0x50
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func progress(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, format+"\n", args...)
	}
}
