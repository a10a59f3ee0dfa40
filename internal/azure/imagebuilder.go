package azure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"
	aib "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/virtualmachineimagebuilder/armvirtualmachineimagebuilder/v2"
)

// RoleContributor is the built-in Contributor role. Earlier versions granted it to the signing
// identity on the gallery; apply now withdraws that grant (see applyBuildLayer).
const RoleContributor = "b24988ac-6180-42a0-ab88-20f7382dd24c"

// imagePublisherActions are the actions of the custom role Azure Image Builder runs with on the
// gallery: read the gallery and its image definitions, read and write image versions. They follow
// Microsoft's image-creation role sample (learn.microsoft.com/azure/virtual-machines/linux/
// image-builder-permissions-cli, aibRoleImageCreation.json) without its managed-image actions,
// since the template distributes to the gallery only. UNCONFIRMED that these four suffice for a
// SharedImage distribution.
var imagePublisherActions = []string{
	"Microsoft.Compute/galleries/read",
	"Microsoft.Compute/galleries/images/read",
	"Microsoft.Compute/galleries/images/versions/read",
	"Microsoft.Compute/galleries/images/versions/write",
}

// Build image defaults: a Trusted Launch (Gen2) Ubuntu 24.04 image.
const (
	BuildImageDefinition = "attested-build-agent"
	DefaultBuildVMSize   = "Standard_D2s_v5"
)

// BuildLayerClients are the clients of the image build layer and of registry replication.
type BuildLayerClients struct {
	Galleries      *armcompute.GalleriesClient
	GalleryImages  *armcompute.GalleryImagesClient
	ImageTemplates *aib.VirtualMachineImageTemplatesClient
	Replications   *armcontainerregistry.ReplicationsClient
}

// NewBuildLayerClients builds them for subscription.
func NewBuildLayerClients(subscription string, cred azcore.TokenCredential, opts *arm.ClientOptions) (*BuildLayerClients, error) {
	b := &BuildLayerClients{}
	var err error
	if b.Galleries, err = armcompute.NewGalleriesClient(subscription, cred, opts); err != nil {
		return nil, err
	}
	if b.GalleryImages, err = armcompute.NewGalleryImagesClient(subscription, cred, opts); err != nil {
		return nil, err
	}
	if b.ImageTemplates, err = aib.NewVirtualMachineImageTemplatesClient(subscription, cred, opts); err != nil {
		return nil, err
	}
	if b.Replications, err = armcontainerregistry.NewReplicationsClient(subscription, cred, opts); err != nil {
		return nil, err
	}
	return b, nil
}

// BuildLayer configures the image build layer.
type BuildLayer struct {
	// ArtifactsURL is an https URL of a tar.gz holding notation, notation-attested-kv and
	// oras-attest for linux/amd64 (make dist), and ArtifactsSHA256 its hex SHA-256: the image
	// build refuses anything else.
	ArtifactsURL    string `json:"artifactsUrl"`
	ArtifactsSHA256 string `json:"artifactsSha256"`
	// VMSize of the build VM; DefaultBuildVMSize if empty.
	VMSize string `json:"vmSize"`
	// Run starts a build after creating the template and waits for it.
	Run bool `json:"run"`
}

// sha256Hex, with a length of 64, is a hex SHA-256 (a {64} count would compile into 64 copies of
// the class at every start).
var sha256Hex = regexp.MustCompile(`^[0-9a-f]+$`)

// Validate checks the build layer settings.
func (b BuildLayer) Validate() error {
	if !strings.HasPrefix(b.ArtifactsURL, "https://") || strings.ContainsAny(b.ArtifactsURL, "'\"\\ \n$`") {
		return fmt.Errorf("artifacts URL %q: want an https URL without quotes, spaces or shell characters", b.ArtifactsURL)
	}
	if len(b.ArtifactsSHA256) != 64 || !sha256Hex.MatchString(b.ArtifactsSHA256) {
		return fmt.Errorf("artifacts SHA-256 %q: want 64 lower-case hex digits", b.ArtifactsSHA256)
	}
	return nil
}

// customizeScript installs the signing tools on the build-agent image. The download is checked
// against the pinned SHA-256 before anything is unpacked.
func (b BuildLayer) customizeScript() []*string {
	lines := []string{
		"set -euo pipefail",
		"curl -fsSL --retry 3 -o /tmp/attested-kv.tar.gz '" + b.ArtifactsURL + "'",
		"echo '" + b.ArtifactsSHA256 + "  /tmp/attested-kv.tar.gz' | sha256sum -c -",
		"sudo tar -C /usr/local/bin -xzf /tmp/attested-kv.tar.gz notation oras-attest",
		"sudo install -d /usr/local/lib/notation/plugins/attested-kv",
		"sudo tar -C /usr/local/lib/notation/plugins/attested-kv -xzf /tmp/attested-kv.tar.gz notation-attested-kv",
		"echo 'export NOTATION_LIBEXEC=/usr/local/lib/notation' | sudo tee /etc/profile.d/attested-kv.sh",
		// The build user reaches the vTPM through the resource manager (group tss) and must read
		// the TCG log, from which MAA derives the Secure Boot claims (UNCONFIRMED that securityfs
		// keeps this mode across boots; the tmpfiles rule re-applies it).
		"echo 'z /sys/kernel/security/tpm0/binary_bios_measurements 0440 root tss -' | sudo tee /etc/tmpfiles.d/attested-kv.conf",
		"rm -f /tmp/attested-kv.tar.gz",
	}
	out := make([]*string, len(lines))
	for i := range lines {
		out[i] = &lines[i]
	}
	return out
}

// applyBuildLayer creates the gallery, the Trusted Launch image definition, the identity Azure
// Image Builder runs as with the image publisher role on the gallery, and the Image Builder
// template (immutable: an existing one is kept unless templateStale finds it runs as another
// identity, installs other tools or builds on another VM size, and is then replaced), and
// optionally runs a build.
//
// The signing identity gets nothing on the gallery, and what earlier versions gave it (Contributor)
// is withdrawn: a job on a build VM can get that identity's token, and with write access to the
// gallery it could replace the build-agent image every later build VM boots from. The template runs
// as its own identity, with no identity attached to the build VM.
func applyBuildLayer(ctx context.Context, cl *Clients, cfg Config, out *Outputs, tagsOf func(kind, name string) map[string]*string, done func(kind, name, action, detail string), w io.Writer) error {
	b := cl.Build
	bl := cfg.BuildLayer
	n := NamesFor(cfg.NamePrefix)
	gp, err := b.Galleries.BeginCreateOrUpdate(ctx, cfg.ResourceGroup, n.Gallery, armcompute.Gallery{
		Location: &cfg.Location, Tags: tagsOf("compute gallery", n.Gallery),
		Properties: &armcompute.GalleryProperties{Description: ptr("attested-kv build agent images")},
	}, nil)
	if err != nil {
		return fmt.Errorf("compute gallery %s: %w", n.Gallery, err)
	}
	if _, err := gp.PollUntilDone(ctx, nil); err != nil {
		return fmt.Errorf("compute gallery %s: %w", n.Gallery, err)
	}
	done("compute gallery", n.Gallery, "ready", "")
	galleryScope := cfg.galleryScope()
	if err := revokeLegacyGalleryGrant(ctx, cl, cfg, out.IdentityPrincipalID, "revoked", done); err != nil {
		return err
	}
	ip, err := b.GalleryImages.BeginCreateOrUpdate(ctx, cfg.ResourceGroup, n.Gallery, BuildImageDefinition, armcompute.GalleryImage{
		Location: &cfg.Location, Tags: tagsOf("image definition", BuildImageDefinition),
		Properties: &armcompute.GalleryImageProperties{
			Identifier:       &armcompute.GalleryImageIdentifier{Publisher: ptr("attested-kv"), Offer: ptr("build-agent"), SKU: ptr("ubuntu-24_04-trustedlaunch")},
			OSType:           ptr(armcompute.OperatingSystemTypesLinux),
			OSState:          ptr(armcompute.OperatingSystemStateTypesGeneralized),
			HyperVGeneration: ptr(armcompute.HyperVGenerationV2),
			// Trusted Launch: Secure Boot and the vTPM the build VM attests with.
			Features: []*armcompute.GalleryImageFeature{{Name: ptr("SecurityType"), Value: ptr("TrustedLaunch")}},
		},
	}, nil)
	if err != nil {
		return fmt.Errorf("image definition %s: %w", BuildImageDefinition, err)
	}
	img, err := ip.PollUntilDone(ctx, nil)
	if err != nil {
		return fmt.Errorf("image definition %s: %w", BuildImageDefinition, err)
	}
	out.GalleryImageID = galleryScope + "/images/" + BuildImageDefinition
	if img.ID != nil {
		out.GalleryImageID = *img.ID
	}
	done("image definition", BuildImageDefinition, "ready", "Trusted Launch, Gen2")

	bid, err := cl.Identities.CreateOrUpdate(ctx, cfg.ResourceGroup, n.ImageBuilderIdentity, armmsi.Identity{Location: &cfg.Location, Tags: tagsOf("managed identity", n.ImageBuilderIdentity)}, nil)
	if err != nil {
		return fmt.Errorf("managed identity %s: %w", n.ImageBuilderIdentity, err)
	}
	if bid.Properties == nil || bid.Properties.PrincipalID == nil {
		return fmt.Errorf("managed identity %s: no principal id in the answer", n.ImageBuilderIdentity)
	}
	builderID := cfg.identityID(n.ImageBuilderIdentity)
	if bid.ID != nil {
		builderID = *bid.ID
	}
	done("managed identity", n.ImageBuilderIdentity, "ready", "Azure Image Builder runs as it")
	action, err := ensureCustomRole(ctx, cl, cfg, cfg.publisherRole())
	if err != nil {
		return err
	}
	done("role definition", cfg.publisherRoleName(), action, strings.Join(imagePublisherActions, ", "))
	if err := retryWhile(ctx, w, "the new role to propagate", roleNotVisibleYet, func() error {
		return assign(ctx, cl, cfg, galleryScope, *bid.Properties.PrincipalID, "ServicePrincipal", cfg.publisherRoleID())
	}); err != nil {
		return fmt.Errorf("role assignment image publisher on the gallery: %w", err)
	}
	done("role assignment", "image publisher on the gallery (image builder identity)", "ensured", "")

	tpl, err := b.ImageTemplates.Get(ctx, cfg.ResourceGroup, n.ImageTemplate, nil)
	create := isNotFound(err)
	var why string
	if err == nil {
		why = templateStale(tpl.ImageTemplate, builderID, bl)
	}
	switch {
	case err != nil && !create:
		return fmt.Errorf("image template %s: %w", n.ImageTemplate, err)
	case err == nil && !tagged(tpl.Tags, cfg.NamePrefix):
		return fmt.Errorf("image template %s exists and was %w (no %s=%s tag): apply refuses to replace it; choose another --name-prefix",
			n.ImageTemplate, ErrNotOwned, TagKey, cfg.NamePrefix)
	case err == nil && why != "":
		// Made by an earlier version running as the signing identity, or with other tools or
		// another VM size than asked for now. Templates are immutable: replaced.
		dp, err := b.ImageTemplates.BeginDelete(ctx, cfg.ResourceGroup, n.ImageTemplate, nil)
		if err != nil {
			return fmt.Errorf("image template %s: replacing it: %w", n.ImageTemplate, err)
		}
		if _, err := dp.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 15 * time.Second}); err != nil {
			return fmt.Errorf("image template %s: replacing it: %w", n.ImageTemplate, err)
		}
		done("image template", n.ImageTemplate, "deleted", why)
		create = true
	default:
		done("image template", n.ImageTemplate, "exists", "kept: same identity, tools and build VM size")
	}
	if create {
		size := bl.vmSize()
		tp, err := b.ImageTemplates.BeginCreateOrUpdate(ctx, cfg.ResourceGroup, n.ImageTemplate, aib.ImageTemplate{
			Location: &cfg.Location, Tags: tagsOf("image template", n.ImageTemplate),
			// The service runs as the builder identity. The build VM gets no identity (VMProfile
			// without UserAssignedIdentities): the customize script needs none.
			Identity: &aib.ImageTemplateIdentity{
				Type:                   ptr(aib.ResourceIdentityTypeUserAssigned),
				UserAssignedIdentities: map[string]*aib.UserAssignedIdentity{builderID: {}},
			},
			Properties: &aib.ImageTemplateProperties{
				Source: &aib.ImageTemplatePlatformImageSource{
					Type: ptr("PlatformImage"), Publisher: ptr("Canonical"), Offer: ptr("ubuntu-24_04-lts"), SKU: ptr("server"), Version: ptr("latest"),
				},
				Customize: []aib.ImageTemplateCustomizerClassification{&aib.ImageTemplateShellCustomizer{
					Type: ptr("Shell"), Name: ptr("install-attested-kv"), Inline: bl.customizeScript(),
				}},
				Distribute: []aib.ImageTemplateDistributorClassification{&aib.ImageTemplateSharedImageDistributor{
					Type: ptr("SharedImage"), GalleryImageID: &out.GalleryImageID, RunOutputName: ptr(BuildImageDefinition),
					ReplicationRegions: []*string{&cfg.Location},
					// The image versions the builds publish carry our tag, like everything else
					// destroy is to remove.
					ArtifactTags: cfg.tags(),
				}},
				VMProfile:             &aib.ImageTemplateVMProfile{VMSize: &size},
				BuildTimeoutInMinutes: ptr(int32(BuildTimeout / time.Minute)),
			},
		}, nil)
		if err != nil {
			return fmt.Errorf("image template %s: %w", n.ImageTemplate, err)
		}
		if _, err := tp.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 15 * time.Second}); err != nil {
			return fmt.Errorf("image template %s: %w", n.ImageTemplate, err)
		}
		done("image template", n.ImageTemplate, "created", "runs as "+n.ImageBuilderIdentity)
	}
	out.ImageTemplate = n.ImageTemplate
	if !bl.Run {
		return nil
	}
	rp, err := b.ImageTemplates.BeginRun(ctx, cfg.ResourceGroup, n.ImageTemplate, nil)
	if err != nil {
		return fmt.Errorf("starting the image build: %w", err)
	}
	start := time.Now()
	for !rp.Done() {
		if _, err := rp.Poll(ctx); err != nil {
			return fmt.Errorf("image build: %w", err)
		}
		progress(w, "  image build running for %s", time.Since(start).Round(time.Second))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
	if _, err := rp.Result(ctx); err != nil {
		return fmt.Errorf("image build: %w", err)
	}
	done("image build", n.ImageTemplate, "done", "a new version of "+BuildImageDefinition)
	return nil
}

// pollInterval spaces progress reports of long operations.
var pollInterval = 30 * time.Second

// applyReplicas geo-replicates the registry to each region (Premium only).
func applyReplicas(ctx context.Context, b *BuildLayerClients, cfg Config, done func(kind, name, action, detail string)) error {
	n := NamesFor(cfg.NamePrefix)
	for _, region := range cfg.Replicas {
		if strings.EqualFold(region, cfg.Location) {
			continue
		}
		// An existing replica keeps the tags others put on it.
		var existing map[string]*string
		r, err := b.Replications.Get(ctx, cfg.ResourceGroup, n.Registry, region, nil)
		switch {
		case err == nil:
			existing = r.Tags
		case !isNotFound(err):
			return fmt.Errorf("registry replica %s: %w", region, err)
		}
		p, err := b.Replications.BeginCreate(ctx, cfg.ResourceGroup, n.Registry, region, armcontainerregistry.Replication{Location: ptr(region), Tags: mergeTags(existing, cfg.NamePrefix)}, nil)
		if err != nil {
			return fmt.Errorf("registry replica %s: %w", region, err)
		}
		if _, err := p.PollUntilDone(ctx, nil); err != nil {
			return fmt.Errorf("registry replica %s: %w", region, err)
		}
		done("registry replica", region, "ready", "")
	}
	return nil
}

func (c Config) galleryScope() string {
	return c.rgID() + "/providers/Microsoft.Compute/galleries/" + NamesFor(c.NamePrefix).Gallery
}

func (c Config) identityID(name string) string {
	return c.rgID() + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name
}

// publisherRoleID is the name (a GUID) of the deployment's image publisher role: deterministic,
// so a rerun addresses the same role.
func (c Config) publisherRoleID() string {
	return assignmentName(c.rgID(), c.NamePrefix, "image-publisher")
}

// publisherRoleName is the image publisher role's display name (roleName).
func (c Config) publisherRoleName() string { return c.roleName("image publisher") }

// BuildTimeout is how long Azure Image Builder may run one build of the template.
const BuildTimeout = 90 * time.Minute

// publisherRole is the image publisher role: the four gallery actions.
func (c Config) publisherRole() customRole {
	return customRole{
		id: c.publisherRoleID(), name: c.publisherRoleName(),
		description: "Lets Azure Image Builder publish image versions to the attested-kv build-agent gallery (deployment " + c.NamePrefix + ").",
		actions:     imagePublisherActions,
		what:        strings.Join(imagePublisherActions, ", "),
	}
}

// templateStale says why the existing template t cannot serve as the build layer bl running as
// the identity id, or "" if it can: it runs as another identity, or installs other tools (its
// customize script, which pins the artifacts URL and SHA-256, differs) or builds on another VM
// size. Templates are immutable, so a stale one is replaced; keeping it would build images with
// the old tools while apply reported the new ones.
func templateStale(t aib.ImageTemplate, id string, bl BuildLayer) string {
	if !runsAsOnly(t, id) {
		return "it runs as another identity than " + id
	}
	if t.Properties == nil || t.Properties.VMProfile == nil || t.Properties.VMProfile.VMSize == nil || !strings.EqualFold(*t.Properties.VMProfile.VMSize, bl.vmSize()) {
		return "its build VM size is not " + bl.vmSize()
	}
	var script []*string
	if p := t.Properties; len(p.Customize) == 1 {
		if sh, ok := p.Customize[0].(*aib.ImageTemplateShellCustomizer); ok {
			script = sh.Inline
		}
	}
	want := bl.customizeScript()
	if !slices.EqualFunc(script, want, func(a, b *string) bool { return a != nil && b != nil && *a == *b }) {
		return "it installs other tools than " + bl.ArtifactsURL + " (sha256 " + bl.ArtifactsSHA256 + ")"
	}
	return ""
}

// vmSize is the build VM size, DefaultBuildVMSize if unset.
func (b BuildLayer) vmSize() string {
	if b.VMSize == "" {
		return DefaultBuildVMSize
	}
	return b.VMSize
}

// runsAsOnly reports whether a template runs as the identity id only, with no identity on its
// build VM.
func runsAsOnly(t aib.ImageTemplate, id string) bool {
	if t.Identity == nil || t.Identity.Type == nil || *t.Identity.Type != aib.ResourceIdentityTypeUserAssigned || len(t.Identity.UserAssignedIdentities) != 1 {
		return false
	}
	for k := range t.Identity.UserAssignedIdentities {
		if !strings.EqualFold(k, id) {
			return false
		}
	}
	return t.Properties == nil || t.Properties.VMProfile == nil || len(t.Properties.VMProfile.UserAssignedIdentities) == 0
}

// planBuildLayer adds the build layer's gallery, image definition, identity, role, assignments and
// template to a plan.
func planBuildLayer(ctx context.Context, cl *Clients, cfg Config, rgExists bool, steps []Step) ([]Step, error) {
	n := NamesFor(cfg.NamePrefix)
	steps, err := planResources(ctx, cfg, buildResources(cl, cfg), rgExists, steps)
	if err != nil {
		return steps, err
	}
	add := func(kind, name, action, detail string) {
		steps = append(steps, Step{Kind: kind, Name: name, Action: action, Detail: detail})
	}
	if steps, err = planCustomRole(ctx, cl, cfg, cfg.publisherRole(), steps); err != nil {
		return steps, err
	}
	add("role assignment", "image publisher on the gallery (image builder identity)", "ensure", "")
	add("role assignment", "Contributor on the gallery (signing identity)", "revoke", "if an earlier version granted it")
	if !rgExists {
		add("image template", n.ImageTemplate, "create", "runs as "+n.ImageBuilderIdentity)
		return steps, nil
	}
	tpl, err := cl.Build.ImageTemplates.Get(ctx, cfg.ResourceGroup, n.ImageTemplate, nil)
	var why string
	if err == nil {
		why = templateStale(tpl.ImageTemplate, cfg.identityID(n.ImageBuilderIdentity), cfg.BuildLayer)
	}
	switch {
	case isNotFound(err):
		add("image template", n.ImageTemplate, "create", "runs as "+n.ImageBuilderIdentity)
	case err != nil:
		return steps, fmt.Errorf("image template %s: %w", n.ImageTemplate, err)
	case !tagged(tpl.Tags, cfg.NamePrefix):
		add("image template", n.ImageTemplate, "refuse", "exists, not created by this deployment: apply would refuse (choose another --name-prefix)")
	case why != "":
		add("image template", n.ImageTemplate, "recreate", why)
	default:
		add("image template", n.ImageTemplate, "exists", "kept: same identity, tools and build VM size")
	}
	return steps, nil
}

// destroyImageBuilder removes the image builder identity's role assignment, the image publisher
// role and the identity, in that order (a role with assignments cannot be deleted).
func destroyImageBuilder(ctx context.Context, cl *Clients, cfg Config, note func(kind, name, action, detail string)) error {
	n := NamesFor(cfg.NamePrefix)
	id, err := cl.Identities.Get(ctx, cfg.ResourceGroup, n.ImageBuilderIdentity, nil)
	idFound := err == nil
	if err != nil && !isNotFound(err) {
		return err
	}
	ours := idFound && tagged(id.Tags, cfg.NamePrefix)
	// What ARM refuses to delete here is reported and kept, so that destroy goes on with the
	// rest; a rerun tries it again.
	var re *azcore.ResponseError
	if ours && id.Properties != nil && id.Properties.PrincipalID != nil {
		err := unassign(ctx, cl, cfg.galleryScope(), *id.Properties.PrincipalID, cfg.publisherRoleID())
		switch {
		case err == nil:
			note("role assignment", "image publisher on the gallery (image builder identity)", "deleted", "")
		case errors.As(err, &re):
			note("role assignment", "image publisher on the gallery (image builder identity)", "kept", "delete refused: "+responseReason(re))
		default:
			return fmt.Errorf("role assignment image publisher on the gallery: %w", err)
		}
	}
	if err := destroyCustomRole(ctx, cl, cfg, cfg.publisherRole(), note); err != nil {
		return err
	}
	switch {
	case !idFound:
	case !ours:
		note("managed identity", n.ImageBuilderIdentity, "skip", "not created by this deployment")
	default:
		if _, err := cl.Identities.Delete(ctx, cfg.ResourceGroup, n.ImageBuilderIdentity, nil); err != nil {
			return err
		}
		note("managed identity", n.ImageBuilderIdentity, "deleted", "")
	}
	return nil
}

// responseReason is an ARM error's code, or its status if it has none.
func responseReason(re *azcore.ResponseError) string {
	if re.ErrorCode != "" {
		return re.ErrorCode
	}
	return http.StatusText(re.StatusCode)
}
