package azure

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3"
	aib "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/virtualmachineimagebuilder/armvirtualmachineimagebuilder/v2"
)

// RoleContributor is the built-in Contributor role, granted to the identity on the gallery only,
// so Azure Image Builder (running as that identity) can publish image versions. A narrower custom
// role is possible; which actions AIB needs exactly is UNCONFIRMED here.
const RoleContributor = "b24988ac-6180-42a0-ab88-20f7382dd24c"

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

// applyBuildLayer creates the gallery, the Trusted Launch image definition and the Azure Image
// Builder template (immutable: an existing one is kept), and optionally runs a build.
func applyBuildLayer(ctx context.Context, b *BuildLayerClients, cfg Config, out *Outputs, identityID string, cl *Clients, done func(kind, name, action, detail string), w io.Writer) error {
	bl := cfg.BuildLayer
	n := NamesFor(cfg.NamePrefix)
	gp, err := b.Galleries.BeginCreateOrUpdate(ctx, cfg.ResourceGroup, n.Gallery, armcompute.Gallery{
		Location: &cfg.Location, Tags: cfg.tags(),
		Properties: &armcompute.GalleryProperties{Description: ptr("attested-kv build agent images")},
	}, nil)
	if err != nil {
		return fmt.Errorf("compute gallery %s: %w", n.Gallery, err)
	}
	if _, err := gp.PollUntilDone(ctx, nil); err != nil {
		return fmt.Errorf("compute gallery %s: %w", n.Gallery, err)
	}
	done("compute gallery", n.Gallery, "ready", "")
	ip, err := b.GalleryImages.BeginCreateOrUpdate(ctx, cfg.ResourceGroup, n.Gallery, BuildImageDefinition, armcompute.GalleryImage{
		Location: &cfg.Location, Tags: cfg.tags(),
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
	galleryScope := cfg.rgID() + "/providers/Microsoft.Compute/galleries/" + n.Gallery
	out.GalleryImageID = galleryScope + "/images/" + BuildImageDefinition
	if img.ID != nil {
		out.GalleryImageID = *img.ID
	}
	done("image definition", BuildImageDefinition, "ready", "Trusted Launch, Gen2")
	if err := assign(ctx, cl, cfg, galleryScope, out.IdentityPrincipalID, "ServicePrincipal", RoleContributor); err != nil {
		return fmt.Errorf("role assignment Contributor on the gallery: %w", err)
	}
	done("role assignment", "Contributor on the gallery (identity)", "ensured", "")

	if _, err := b.ImageTemplates.Get(ctx, cfg.ResourceGroup, n.ImageTemplate, nil); err == nil {
		done("image template", n.ImageTemplate, "exists", "templates are immutable: destroy it to change it")
	} else if !isNotFound(err) {
		return fmt.Errorf("image template %s: %w", n.ImageTemplate, err)
	} else {
		size := bl.VMSize
		if size == "" {
			size = DefaultBuildVMSize
		}
		tp, err := b.ImageTemplates.BeginCreateOrUpdate(ctx, cfg.ResourceGroup, n.ImageTemplate, aib.ImageTemplate{
			Location: &cfg.Location, Tags: cfg.tags(),
			Identity: &aib.ImageTemplateIdentity{
				Type:                   ptr(aib.ResourceIdentityTypeUserAssigned),
				UserAssignedIdentities: map[string]*aib.UserAssignedIdentity{identityID: {}},
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
				}},
				VMProfile:             &aib.ImageTemplateVMProfile{VMSize: &size},
				BuildTimeoutInMinutes: ptr(int32(90)),
			},
		}, nil)
		if err != nil {
			return fmt.Errorf("image template %s: %w", n.ImageTemplate, err)
		}
		if _, err := tp.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 15 * time.Second}); err != nil {
			return fmt.Errorf("image template %s: %w", n.ImageTemplate, err)
		}
		done("image template", n.ImageTemplate, "created", "")
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
		p, err := b.Replications.BeginCreate(ctx, cfg.ResourceGroup, n.Registry, region, armcontainerregistry.Replication{Location: ptr(region), Tags: cfg.tags()}, nil)
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
