package azure

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	computefake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3"
	acrfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3/fake"
	aib "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/virtualmachineimagebuilder/armvirtualmachineimagebuilder/v2"
	aibfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/virtualmachineimagebuilder/armvirtualmachineimagebuilder/v2/fake"
)

// buildLayer is the fake state of the build layer's resources.
type buildLayer struct {
	images    map[string]armcompute.GalleryImage
	templates map[string]aib.ImageTemplate
	replicas  map[string]armcontainerregistry.Replication
	runs      int
	writes    map[string]int
}

func newBuildLayer(t *testing.T) (*buildLayer, *BuildLayerClients) {
	t.Helper()
	b := &buildLayer{images: map[string]armcompute.GalleryImage{}, templates: map[string]aib.ImageTemplate{}, replicas: map[string]armcontainerregistry.Replication{}, writes: map[string]int{}}
	cred := &azfake.TokenCredential{}
	c := &BuildLayerClients{}
	var err error
	c.Galleries, err = armcompute.NewGalleriesClient("sub", cred, clientOptions(computefake.NewGalleriesServerTransport(&computefake.GalleriesServer{
		BeginCreateOrUpdate: func(_ context.Context, rg, name string, g armcompute.Gallery, _ *armcompute.GalleriesClientBeginCreateOrUpdateOptions) (azfake.PollerResponder[armcompute.GalleriesClientCreateOrUpdateResponse], azfake.ErrorResponder) {
			b.writes["gallery"]++
			var r azfake.PollerResponder[armcompute.GalleriesClientCreateOrUpdateResponse]
			r.SetTerminalResponse(http.StatusOK, armcompute.GalleriesClientCreateOrUpdateResponse{Gallery: g}, nil)
			return r, azfake.ErrorResponder{}
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	c.GalleryImages, err = armcompute.NewGalleryImagesClient("sub", cred, clientOptions(computefake.NewGalleryImagesServerTransport(&computefake.GalleryImagesServer{
		BeginCreateOrUpdate: func(_ context.Context, rg, gallery, name string, img armcompute.GalleryImage, _ *armcompute.GalleryImagesClientBeginCreateOrUpdateOptions) (azfake.PollerResponder[armcompute.GalleryImagesClientCreateOrUpdateResponse], azfake.ErrorResponder) {
			b.images[gallery+"/"+name] = img
			img.ID = ptr("/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/galleries/" + gallery + "/images/" + name)
			var r azfake.PollerResponder[armcompute.GalleryImagesClientCreateOrUpdateResponse]
			r.SetTerminalResponse(http.StatusOK, armcompute.GalleryImagesClientCreateOrUpdateResponse{GalleryImage: img}, nil)
			return r, azfake.ErrorResponder{}
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	c.ImageTemplates, err = aib.NewVirtualMachineImageTemplatesClient("sub", cred, clientOptions(aibfake.NewVirtualMachineImageTemplatesServerTransport(&aibfake.VirtualMachineImageTemplatesServer{
		Get: func(_ context.Context, rg, name string, _ *aib.VirtualMachineImageTemplatesClientGetOptions) (azfake.Responder[aib.VirtualMachineImageTemplatesClientGetResponse], azfake.ErrorResponder) {
			tpl, ok := b.templates[name]
			if !ok {
				return notFound[aib.VirtualMachineImageTemplatesClientGetResponse]()
			}
			var r azfake.Responder[aib.VirtualMachineImageTemplatesClientGetResponse]
			r.SetResponse(http.StatusOK, aib.VirtualMachineImageTemplatesClientGetResponse{ImageTemplate: tpl}, nil)
			return r, azfake.ErrorResponder{}
		},
		BeginCreateOrUpdate: func(_ context.Context, rg, name string, tpl aib.ImageTemplate, _ *aib.VirtualMachineImageTemplatesClientBeginCreateOrUpdateOptions) (azfake.PollerResponder[aib.VirtualMachineImageTemplatesClientCreateOrUpdateResponse], azfake.ErrorResponder) {
			b.templates[name] = tpl
			b.writes["template"]++
			var r azfake.PollerResponder[aib.VirtualMachineImageTemplatesClientCreateOrUpdateResponse]
			r.SetTerminalResponse(http.StatusOK, aib.VirtualMachineImageTemplatesClientCreateOrUpdateResponse{ImageTemplate: tpl}, nil)
			return r, azfake.ErrorResponder{}
		},
		BeginRun: func(_ context.Context, rg, name string, _ *aib.VirtualMachineImageTemplatesClientBeginRunOptions) (azfake.PollerResponder[aib.VirtualMachineImageTemplatesClientRunResponse], azfake.ErrorResponder) {
			b.runs++
			var r azfake.PollerResponder[aib.VirtualMachineImageTemplatesClientRunResponse]
			r.AddNonTerminalResponse(http.StatusAccepted, nil)
			r.SetTerminalResponse(http.StatusAccepted, aib.VirtualMachineImageTemplatesClientRunResponse{}, nil)
			return r, azfake.ErrorResponder{}
		},
		BeginDelete: func(_ context.Context, rg, name string, _ *aib.VirtualMachineImageTemplatesClientBeginDeleteOptions) (azfake.PollerResponder[aib.VirtualMachineImageTemplatesClientDeleteResponse], azfake.ErrorResponder) {
			delete(b.templates, name)
			var r azfake.PollerResponder[aib.VirtualMachineImageTemplatesClientDeleteResponse]
			r.SetTerminalResponse(http.StatusAccepted, aib.VirtualMachineImageTemplatesClientDeleteResponse{}, nil)
			return r, azfake.ErrorResponder{}
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	c.Replications, err = armcontainerregistry.NewReplicationsClient("sub", cred, clientOptions(acrfake.NewReplicationsServerTransport(&acrfake.ReplicationsServer{
		BeginCreate: func(_ context.Context, rg, registry, region string, rep armcontainerregistry.Replication, _ *armcontainerregistry.ReplicationsClientBeginCreateOptions) (azfake.PollerResponder[armcontainerregistry.ReplicationsClientCreateResponse], azfake.ErrorResponder) {
			b.replicas[region] = rep
			var r azfake.PollerResponder[armcontainerregistry.ReplicationsClientCreateResponse]
			r.SetTerminalResponse(http.StatusOK, armcontainerregistry.ReplicationsClientCreateResponse{Replication: rep}, nil)
			return r, azfake.ErrorResponder{}
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	return b, c
}

func TestBuildLayerAndReplicas(t *testing.T) {
	_, cl := newFakeAzure(t)
	b, bc := newBuildLayer(t)
	cl.Build = bc
	pollInterval = time.Millisecond
	cfg := testConfig
	cfg.ImageBuilder = true
	cfg.BuildLayer = BuildLayer{ArtifactsURL: "https://example.blob.core.windows.net/rel/attested-kv-linux-amd64.tar.gz", ArtifactsSHA256: strings.Repeat("ab", 32), Run: true}
	cfg.Replicas = []string{"westeurope", "northeurope", "eastus"}
	out, _, err := Apply(context.Background(), cl, cfg, io.Discard)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	n := NamesFor(cfg.NamePrefix)
	img := b.images[n.Gallery+"/"+BuildImageDefinition].Properties
	if *img.HyperVGeneration != armcompute.HyperVGenerationV2 || len(img.Features) != 1 || *img.Features[0].Name != "SecurityType" || *img.Features[0].Value != "TrustedLaunch" || *img.OSType != armcompute.OperatingSystemTypesLinux {
		t.Fatalf("image definition %+v", img)
	}
	tpl := b.templates[n.ImageTemplate]
	if *tpl.Identity.Type != aib.ResourceIdentityTypeUserAssigned || len(tpl.Identity.UserAssignedIdentities) != 1 {
		t.Fatalf("template identity %+v", tpl.Identity)
	}
	for id := range tpl.Identity.UserAssignedIdentities {
		if !strings.HasSuffix(id, "/userAssignedIdentities/"+n.Identity) {
			t.Fatalf("template runs as %s", id)
		}
	}
	dist := tpl.Properties.Distribute[0].(*aib.ImageTemplateSharedImageDistributor)
	if *dist.GalleryImageID != out.GalleryImageID {
		t.Fatalf("distributes to %s, want %s", *dist.GalleryImageID, out.GalleryImageID)
	}
	script := ""
	for _, l := range tpl.Properties.Customize[0].(*aib.ImageTemplateShellCustomizer).Inline {
		script += *l + "\n"
	}
	if !strings.Contains(script, "sha256sum -c") || !strings.Contains(script, cfg.BuildLayer.ArtifactsURL) || strings.Index(script, "sha256sum -c") > strings.Index(script, "tar -C") {
		t.Fatalf("the image build does not check the download before unpacking it:\n%s", script)
	}
	if b.runs != 1 {
		t.Fatalf("%d builds started, want 1", b.runs)
	}
	if _, ok := b.replicas["westeurope"]; ok || len(b.replicas) != 2 {
		t.Fatalf("replicas %v: want northeurope and eastus, not the home region", b.replicas)
	}
	// Templates are immutable: a second apply keeps the existing one.
	cfg.BuildLayer.Run = false
	if _, _, err := Apply(context.Background(), cl, cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	if b.writes["template"] != 1 || b.runs != 1 {
		t.Fatalf("second apply: %d template writes, %d runs", b.writes["template"], b.runs)
	}
	if _, err := Destroy(context.Background(), cl, cfg, false, io.Discard); err != nil {
		t.Fatal(err)
	}
	if len(b.templates) != 0 {
		t.Fatal("destroy kept the image template")
	}
}

func TestBuildLayerValidate(t *testing.T) {
	good := BuildLayer{ArtifactsURL: "https://x.example/a.tgz", ArtifactsSHA256: strings.Repeat("0", 64)}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, b := range []BuildLayer{
		{ArtifactsURL: "http://x.example/a.tgz", ArtifactsSHA256: good.ArtifactsSHA256},
		{ArtifactsURL: "https://x.example/a.tgz'; rm -rf /", ArtifactsSHA256: good.ArtifactsSHA256},
		{ArtifactsURL: good.ArtifactsURL, ArtifactsSHA256: "abc"},
		{ArtifactsURL: good.ArtifactsURL, ArtifactsSHA256: strings.Repeat("0", 65)},
		{ArtifactsURL: good.ArtifactsURL, ArtifactsSHA256: strings.Repeat("A", 64)},
	} {
		if b.Validate() == nil {
			t.Errorf("accepted %+v", b)
		}
	}
}

func clientOptions(tr interface {
	Do(*http.Request) (*http.Response, error)
}) *arm.ClientOptions {
	return &arm.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: tr}}
}
