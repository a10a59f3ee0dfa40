package azure

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/authorization/armauthorization/v2"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	computefake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3"
	acrfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources"
	aib "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/virtualmachineimagebuilder/armvirtualmachineimagebuilder/v2"
	aibfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/virtualmachineimagebuilder/armvirtualmachineimagebuilder/v2/fake"
)

// buildLayer is the fake state of the build layer's resources.
type buildLayer struct {
	galleries map[string]armcompute.Gallery
	images    map[string]armcompute.GalleryImage
	templates map[string]aib.ImageTemplate
	replicas  map[string]armcontainerregistry.Replication
	runs      int
	writes    map[string]int
}

// newFakeBuild is newFakeAzure with the build layer's fakes in its clients.
func newFakeBuild(t *testing.T) (*fakeAzure, *Clients, *buildLayer) {
	t.Helper()
	f, cl := newFakeAzure(t)
	b, bc := newBuildLayer(t)
	cl.Build = bc
	return f, cl, b
}

func newBuildLayer(t *testing.T) (*buildLayer, *BuildLayerClients) {
	t.Helper()
	b := &buildLayer{galleries: map[string]armcompute.Gallery{}, images: map[string]armcompute.GalleryImage{}, templates: map[string]aib.ImageTemplate{}, replicas: map[string]armcontainerregistry.Replication{}, writes: map[string]int{}}
	cred := &azfake.TokenCredential{}
	c := &BuildLayerClients{}
	var err error
	c.Galleries, err = armcompute.NewGalleriesClient("sub", cred, clientOptions(computefake.NewGalleriesServerTransport(&computefake.GalleriesServer{
		BeginCreateOrUpdate: func(_ context.Context, rg, name string, g armcompute.Gallery, _ *armcompute.GalleriesClientBeginCreateOrUpdateOptions) (azfake.PollerResponder[armcompute.GalleriesClientCreateOrUpdateResponse], azfake.ErrorResponder) {
			b.galleries[name] = g
			b.writes["gallery"]++
			var r azfake.PollerResponder[armcompute.GalleriesClientCreateOrUpdateResponse]
			r.SetTerminalResponse(http.StatusOK, armcompute.GalleriesClientCreateOrUpdateResponse{Gallery: g}, nil)
			return r, azfake.ErrorResponder{}
		},
		Get: func(_ context.Context, rg, name string, _ *armcompute.GalleriesClientGetOptions) (azfake.Responder[armcompute.GalleriesClientGetResponse], azfake.ErrorResponder) {
			return fakeGet(nil, b.galleries, name, func(v armcompute.Gallery) armcompute.GalleriesClientGetResponse {
				return armcompute.GalleriesClientGetResponse{Gallery: v}
			})
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
		Get: func(_ context.Context, rg, gallery, name string, _ *armcompute.GalleryImagesClientGetOptions) (azfake.Responder[armcompute.GalleryImagesClientGetResponse], azfake.ErrorResponder) {
			return fakeGet(nil, b.images, gallery+"/"+name, func(v armcompute.GalleryImage) armcompute.GalleryImagesClientGetResponse {
				return armcompute.GalleryImagesClientGetResponse{GalleryImage: v}
			})
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	c.ImageTemplates, err = aib.NewVirtualMachineImageTemplatesClient("sub", cred, clientOptions(aibfake.NewVirtualMachineImageTemplatesServerTransport(&aibfake.VirtualMachineImageTemplatesServer{
		Get: func(_ context.Context, rg, name string, _ *aib.VirtualMachineImageTemplatesClientGetOptions) (azfake.Responder[aib.VirtualMachineImageTemplatesClientGetResponse], azfake.ErrorResponder) {
			return fakeGet(nil, b.templates, name, func(v aib.ImageTemplate) aib.VirtualMachineImageTemplatesClientGetResponse {
				return aib.VirtualMachineImageTemplatesClientGetResponse{ImageTemplate: v}
			})
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
			b.writes["template-delete"]++
			var r azfake.PollerResponder[aib.VirtualMachineImageTemplatesClientDeleteResponse]
			r.SetTerminalResponse(http.StatusAccepted, aib.VirtualMachineImageTemplatesClientDeleteResponse{}, nil)
			return r, azfake.ErrorResponder{}
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	c.Replications, err = armcontainerregistry.NewReplicationsClient("sub", cred, clientOptions(acrfake.NewReplicationsServerTransport(&acrfake.ReplicationsServer{
		Get: func(_ context.Context, rg, registry, region string, _ *armcontainerregistry.ReplicationsClientGetOptions) (azfake.Responder[armcontainerregistry.ReplicationsClientGetResponse], azfake.ErrorResponder) {
			return fakeGet(nil, b.replicas, region, func(v armcontainerregistry.Replication) armcontainerregistry.ReplicationsClientGetResponse {
				return armcontainerregistry.ReplicationsClientGetResponse{Replication: v}
			})
		},
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
	f, cl, b := newFakeBuild(t)
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
	checkTemplateIdentity(t, tpl, n.ImageBuilderIdentity)
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
	// The builder's assignment, its role and the identity go too.
	if _, ok := f.identities[n.ImageBuilderIdentity]; ok || len(f.roleDefs) != 0 || f.writes["role-definition-delete"] != 2 {
		t.Fatalf("destroy left the builder identity (%v) or the role definitions %v", ok, f.roleDefs)
	}
	for key, a := range f.assignments {
		if *a.Properties.PrincipalID == "principal-"+n.ImageBuilderIdentity {
			t.Fatalf("destroy left the builder's assignment %s", key)
		}
	}
}

// checkTemplateIdentity fails unless the template runs as the named identity only and its build VM
// has no identity.
func checkTemplateIdentity(t *testing.T, tpl aib.ImageTemplate, identity string) {
	t.Helper()
	if tpl.Identity == nil || *tpl.Identity.Type != aib.ResourceIdentityTypeUserAssigned || len(tpl.Identity.UserAssignedIdentities) != 1 {
		t.Fatalf("template identity %+v", tpl.Identity)
	}
	for id := range tpl.Identity.UserAssignedIdentities {
		if !strings.HasSuffix(id, "/userAssignedIdentities/"+identity) {
			t.Fatalf("template runs as %s, want %s", id, identity)
		}
	}
	if vm := tpl.Properties.VMProfile; vm == nil || len(vm.UserAssignedIdentities) != 0 {
		t.Fatalf("build VM profile %+v: want one without identities", vm)
	}
}

func buildConfig() Config {
	cfg := testConfig
	cfg.ImageBuilder = true
	cfg.BuildLayer = BuildLayer{ArtifactsURL: "https://example.blob.core.windows.net/rel/attested-kv-linux-amd64.tar.gz", ArtifactsSHA256: strings.Repeat("ab", 32)}
	return cfg
}

// TestBuildLayerPrivilegeSeparation: the signing identity, whose token any job on a build VM can
// get, has no role on the gallery; Azure Image Builder runs as its own identity, which holds the
// narrow image publisher role on the gallery and nothing else.
func TestBuildLayerPrivilegeSeparation(t *testing.T) {
	ctx := context.Background()
	f, cl, b := newFakeBuild(t)
	cfg := buildConfig()
	n := NamesFor(cfg.NamePrefix)

	plan, err := Plan(ctx, cl, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []Step{
		{Kind: "managed identity", Name: n.ImageBuilderIdentity, Action: "create"},
		{Kind: "role definition", Name: cfg.publisherRoleName(), Action: "create"},
		{Kind: "role assignment", Name: "image publisher on the gallery (image builder identity)", Action: "ensure"},
		{Kind: "role assignment", Name: "Contributor on the gallery (signing identity)", Action: "revoke"},
	} {
		if !hasStep(plan, want.Name, want.Action) {
			t.Errorf("plan lacks %+v: %+v", want, plan)
		}
	}

	if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	signer, builder := "principal-"+n.Identity, "principal-"+n.ImageBuilderIdentity
	galleryScope := cfg.rgID() + "/providers/Microsoft.Compute/galleries/" + n.Gallery
	roleID := "/subscriptions/sub/providers/Microsoft.Authorization/roleDefinitions/" + cfg.publisherRoleID()
	var builderRoles []string
	for key, a := range f.assignments {
		scope := key[:strings.LastIndex(key, "|")]
		switch *a.Properties.PrincipalID {
		case signer:
			if strings.Contains(strings.ToLower(scope), "/galleries/") {
				t.Errorf("the signing identity holds %s at %s", *a.Properties.RoleDefinitionID, scope)
			}
		case builder:
			builderRoles = append(builderRoles, scope+" "+*a.Properties.RoleDefinitionID+" "+string(*a.Properties.PrincipalType))
		}
	}
	if len(builderRoles) != 1 || builderRoles[0] != galleryScope+" "+roleID+" ServicePrincipal" {
		t.Fatalf("the builder identity's assignments: %v, want only the publisher role at %s", builderRoles, galleryScope)
	}
	checkTemplateIdentity(t, b.templates[n.ImageTemplate], n.ImageBuilderIdentity)
	if len(f.roleDefs) != 2 { // the publisher role and the signer role
		t.Fatalf("role definitions %v", f.roleDefs)
	}
	role := f.roleDefs[cfg.publisherRoleID()].Properties
	if role == nil || *role.RoleName != "attested-kv image publisher demo1 rg sub" || len(role.Permissions) != 1 {
		t.Fatalf("role %+v", role)
	}
	var actions []string
	for _, a := range role.Permissions[0].Actions {
		actions = append(actions, *a)
	}
	want := []string{"Microsoft.Compute/galleries/read", "Microsoft.Compute/galleries/images/read", "Microsoft.Compute/galleries/images/versions/read", "Microsoft.Compute/galleries/images/versions/write"}
	if strings.Join(actions, ",") != strings.Join(want, ",") || len(role.Permissions[0].NotActions)+len(role.Permissions[0].DataActions) != 0 {
		t.Fatalf("role permissions %v, want exactly %v", actions, want)
	}
	if len(role.AssignableScopes) != 1 || *role.AssignableScopes[0] != cfg.rgID() {
		t.Fatalf("assignable scopes %v", role.AssignableScopes)
	}
	plan, err = Plan(ctx, cl, cfg)
	if err != nil || !hasStep(plan, n.ImageBuilderIdentity, "exists") || !hasStep(plan, cfg.publisherRoleName(), "exists") || !hasStep(plan, n.ImageTemplate, "exists") {
		t.Fatalf("plan after apply: %+v %v", plan, err)
	}

	// Without the build layer: one identity and no publisher role (the signer role only).
	f2, cl2, _ := newFakeBuild(t)
	if _, _, err := Apply(ctx, cl2, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, ok := f2.identities[n.ImageBuilderIdentity]; ok || len(f2.identities) != 1 || len(f2.roleDefs) != 1 || f2.writes["role-definition"] != 1 {
		t.Fatalf("without --image-builder: identities %d, role definitions %d", len(f2.identities), len(f2.roleDefs))
	}
}

// TestBuildLayerMigratesLegacyGrant: what earlier versions left (Contributor on the gallery for
// the signing identity, a template running as it) is withdrawn and replaced, once; resources of
// the build layer that are not ours are refused before any write.
func TestBuildLayerMigratesLegacyGrant(t *testing.T) {
	ctx := context.Background()
	cfg := buildConfig()
	n := NamesFor(cfg.NamePrefix)
	signer := "principal-" + n.Identity
	galleryScope := cfg.rgID() + "/providers/Microsoft.Compute/galleries/" + n.Gallery
	legacyGrant := galleryScope + "|" + assignmentName(galleryScope, signer, RoleContributor)
	legacyTemplate := func(tags map[string]*string) aib.ImageTemplate {
		return aib.ImageTemplate{Location: ptr("westeurope"), Tags: tags,
			Identity:   &aib.ImageTemplateIdentity{Type: ptr(aib.ResourceIdentityTypeUserAssigned), UserAssignedIdentities: map[string]*aib.UserAssignedIdentity{cfg.identityID(n.Identity): {}}},
			Properties: &aib.ImageTemplateProperties{VMProfile: &aib.ImageTemplateVMProfile{VMSize: ptr(DefaultBuildVMSize)}},
		}
	}
	seed := func(f *fakeAzure, b *buildLayer, templateTags map[string]*string) {
		f.groups["rg"] = armresources.ResourceGroup{Location: ptr("westeurope"), Tags: cfg.tags()}
		f.identities[n.Identity] = armmsi.Identity{Location: ptr("westeurope"), Tags: cfg.tags(), Properties: &armmsi.UserAssignedIdentityProperties{PrincipalID: ptr(signer), ClientID: ptr("client")}}
		b.galleries[n.Gallery] = armcompute.Gallery{Location: ptr("westeurope"), Tags: cfg.tags()}
		f.assignments[legacyGrant] = armauthorization.RoleAssignmentCreateParameters{Properties: &armauthorization.RoleAssignmentProperties{
			PrincipalID: ptr(signer), RoleDefinitionID: ptr(cfg.roleDefinition(RoleContributor)), PrincipalType: ptr(armauthorization.PrincipalTypeServicePrincipal),
		}}
		b.templates[n.ImageTemplate] = legacyTemplate(templateTags)
	}

	f, cl, b := newFakeBuild(t)
	seed(f, b, cfg.tags())
	plan, err := Plan(ctx, cl, cfg)
	if err != nil || !hasStep(plan, n.ImageTemplate, "recreate") {
		t.Fatalf("plan over the legacy template: %+v %v", plan, err)
	}
	if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.assignments[legacyGrant]; ok {
		t.Fatal("the signing identity still holds Contributor on the gallery")
	}
	checkTemplateIdentity(t, b.templates[n.ImageTemplate], n.ImageBuilderIdentity)
	if b.writes["template-delete"] != 1 || b.writes["template"] != 1 {
		t.Fatalf("template: %d deletes, %d writes; want it replaced once", b.writes["template-delete"], b.writes["template"])
	}
	// A second apply changes nothing.
	before := map[string]int{}
	for k, v := range f.writes {
		before[k] = v
	}
	if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"assignment", "assignment-delete", "role-definition", "role-definition-delete"} {
		if f.writes[k] != before[k] {
			t.Fatalf("second apply: %s %d -> %d", k, before[k], f.writes[k])
		}
	}
	if b.writes["template-delete"] != 1 || b.writes["template"] != 1 {
		t.Fatalf("second apply touched the template: %v", b.writes)
	}

	// Without --image-builder, a gallery left from an earlier run loses the grant too.
	f, cl, b = newFakeBuild(t)
	seed(f, b, cfg.tags())
	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.assignments[legacyGrant]; ok {
		t.Fatal("apply without --image-builder left the signing identity Contributor on the gallery")
	}

	// Not ours: refused before any write.
	for _, c := range []struct {
		what string
		put  func(f *fakeAzure, b *buildLayer)
	}{
		{"image template " + n.ImageTemplate, func(f *fakeAzure, b *buildLayer) { b.templates[n.ImageTemplate] = legacyTemplate(nil) }},
		{"image template " + n.ImageTemplate, func(f *fakeAzure, b *buildLayer) {
			b.templates[n.ImageTemplate] = legacyTemplate(map[string]*string{TagKey: ptr("other")})
		}},
		{"compute gallery " + n.Gallery, func(f *fakeAzure, b *buildLayer) {
			b.galleries[n.Gallery] = armcompute.Gallery{Location: ptr("westeurope")}
		}},
		{"image definition " + BuildImageDefinition, func(f *fakeAzure, b *buildLayer) {
			b.images[n.Gallery+"/"+BuildImageDefinition] = armcompute.GalleryImage{Location: ptr("westeurope")}
		}},
		{"managed identity " + n.ImageBuilderIdentity, func(f *fakeAzure, b *buildLayer) {
			f.identities[n.ImageBuilderIdentity] = armmsi.Identity{Location: ptr("westeurope")}
		}},
		{"role definition " + cfg.publisherRoleID(), func(f *fakeAzure, b *buildLayer) {
			f.roleDefs[cfg.publisherRoleID()] = armauthorization.RoleDefinition{Properties: &armauthorization.RoleDefinitionProperties{RoleName: ptr("someone else's role")}}
		}},
	} {
		f, cl, b := newFakeBuild(t)
		seed(f, b, cfg.tags())
		c.put(f, b)
		plan, err := Plan(ctx, cl, cfg)
		if err != nil {
			t.Fatal(err)
		}
		var refused bool
		for _, s := range plan {
			refused = refused || s.Action == "refuse"
		}
		if !refused {
			t.Errorf("%s not ours: plan %+v", c.what, plan)
		}
		_, _, err = Apply(ctx, cl, cfg, io.Discard)
		if !errors.Is(err, ErrNotOwned) || !strings.Contains(err.Error(), c.what) {
			t.Errorf("%s not ours: apply error %v", c.what, err)
		}
		if len(f.writes)+len(b.writes) != 0 {
			t.Errorf("%s not ours: apply wrote %v %v", c.what, f.writes, b.writes)
		}
		if _, ok := f.assignments[legacyGrant]; !ok {
			t.Errorf("%s not ours: apply changed assignments before refusing", c.what)
		}
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

// TestDestroyCountsGalleryVersionsAsOurs: the image versions a build published under our gallery
// do not keep the group (ARM lists them as resources of the group, and earlier templates left
// them untagged); versions under a gallery that is not ours do. Destroy also withdraws the
// Contributor grant earlier versions gave the signing identity on the gallery, and new templates
// tag what they publish.
func TestDestroyCountsGalleryVersionsAsOurs(t *testing.T) {
	ctx := context.Background()
	cfg := buildConfig()
	n := NamesFor(cfg.NamePrefix)
	galleryID := func(g string) string { return cfg.rgID() + "/providers/Microsoft.Compute/galleries/" + g }
	version := func(g string) *armresources.GenericResourceExpanded {
		// ARM's casing of ids varies: compared case-insensitively.
		return &armresources.GenericResourceExpanded{
			ID:   ptr(strings.ToUpper(galleryID(g)) + "/images/" + BuildImageDefinition + "/versions/0.24.1"),
			Name: ptr(g + "/" + BuildImageDefinition + "/0.24.1"), Type: ptr("Microsoft.Compute/galleries/images/versions"),
		}
	}
	for _, c := range []struct {
		name      string
		listed    []*armresources.GenericResourceExpanded
		groupGoes bool
	}{
		{"under our gallery", []*armresources.GenericResourceExpanded{
			{ID: ptr(galleryID(n.Gallery)), Name: ptr(n.Gallery), Type: ptr("Microsoft.Compute/galleries"), Tags: cfg.tags()},
			version(n.Gallery),
		}, true},
		{"under a foreign gallery", []*armresources.GenericResourceExpanded{
			{ID: ptr(galleryID("teamgallery")), Name: ptr("teamgallery"), Type: ptr("Microsoft.Compute/galleries"), Tags: map[string]*string{TagKey: ptr("other")}},
			version("teamgallery"),
		}, false},
		{"another image definition in our gallery", []*armresources.GenericResourceExpanded{
			{ID: ptr(galleryID(n.Gallery)), Name: ptr(n.Gallery), Type: ptr("Microsoft.Compute/galleries"), Tags: cfg.tags()},
			{ID: ptr(galleryID(n.Gallery) + "/images/team-windows"), Name: ptr(n.Gallery + "/team-windows"), Type: ptr("Microsoft.Compute/galleries/images")},
		}, false},
		{"untagged gallery of our name", []*armresources.GenericResourceExpanded{
			{ID: ptr(galleryID(n.Gallery + "x")), Name: ptr(n.Gallery + "x"), Type: ptr("Microsoft.Compute/galleries")},
			version(n.Gallery),
		}, false},
	} {
		f, cl, b := newFakeBuild(t)
		if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
			t.Fatal(err)
		}
		dist := b.templates[n.ImageTemplate].Properties.Distribute[0].(*aib.ImageTemplateSharedImageDistributor)
		if v := dist.ArtifactTags[TagKey]; v == nil || *v != cfg.NamePrefix {
			t.Fatalf("the distributor tags its image versions with %v", dist.ArtifactTags)
		}
		// What an earlier version granted the signing identity on the gallery.
		signer := "principal-" + n.Identity
		legacyGrant := galleryID(n.Gallery) + "|" + assignmentName(galleryID(n.Gallery), signer, RoleContributor)
		f.assignments[legacyGrant] = armauthorization.RoleAssignmentCreateParameters{Properties: &armauthorization.RoleAssignmentProperties{
			PrincipalID: ptr(signer), RoleDefinitionID: ptr(cfg.roleDefinition(RoleContributor)),
		}}
		f.foreign = c.listed
		steps, err := Destroy(ctx, cl, cfg, false, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if _, kept := f.groups["rg"]; kept == c.groupGoes {
			t.Errorf("%s: group kept %v, want %v; steps %+v", c.name, kept, !c.groupGoes, steps)
		}
		if _, ok := f.assignments[legacyGrant]; ok {
			t.Errorf("%s: destroy left the signing identity's Contributor grant on the gallery", c.name)
		}
	}
}

// TestDestroyGoesOnPastAssignedPublisherRole: an assignment of the image publisher role that this
// deployment did not make keeps the role (ARM refuses to delete it), and destroy reports that and
// still deletes the rest.
func TestDestroyGoesOnPastAssignedPublisherRole(t *testing.T) {
	ctx := context.Background()
	f, cl, _ := newFakeBuild(t)
	cfg := buildConfig()
	n := NamesFor(cfg.NamePrefix)
	if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	stray := cfg.galleryScope() + "|stray"
	f.assignments[stray] = armauthorization.RoleAssignmentCreateParameters{Properties: &armauthorization.RoleAssignmentProperties{
		PrincipalID: ptr("someone"), RoleDefinitionID: f.roleDefs[cfg.publisherRoleID()].ID,
	}}
	steps, err := Destroy(ctx, cl, cfg, false, io.Discard)
	if err != nil {
		t.Fatalf("destroy stopped at the assigned role: %v", err)
	}
	if !hasStep(steps, cfg.publisherRoleName(), "kept") || len(f.roleDefs) != 1 {
		t.Errorf("the kept role is not reported: %+v", steps)
	}
	// The command exits non-zero on it (bootstrap/azure.go): the deployment is not gone.
	if err := KeptError(steps); err == nil || !strings.Contains(err.Error(), cfg.publisherRoleName()) {
		t.Errorf("KeptError = %v, want it to name the kept role", err)
	}
	if err := KeptError([]Step{{Kind: "key vault", Name: "v", Action: "skip"}}); err != nil {
		t.Errorf("a skipped step is reported as kept: %v", err)
	}
	if len(f.registries)+len(f.vaults)+len(f.identities)+len(f.providers)+len(f.groups) != 0 {
		t.Errorf("left after destroy: %d registries, %d vaults, %d identities (of them %s?), %d providers, %d groups",
			len(f.registries), len(f.vaults), len(f.identities), n.ImageBuilderIdentity, len(f.providers), len(f.groups))
	}
}

// TestOwnedTagsByKind: with prefix "attested" the image template is named like the image
// definition; each keeps its own tags on a re-apply.
func TestOwnedTagsByKind(t *testing.T) {
	ctx := context.Background()
	_, cl, b := newFakeBuild(t)
	cfg := buildConfig()
	cfg.NamePrefix = "attested"
	n := NamesFor(cfg.NamePrefix)
	if n.ImageTemplate != BuildImageDefinition {
		t.Fatalf("the clash this tests is gone: template %s, image definition %s", n.ImageTemplate, BuildImageDefinition)
	}
	if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	key := n.Gallery + "/" + BuildImageDefinition
	img := b.images[key]
	img.Tags = map[string]*string{TagKey: ptr("attested"), "cost-center": ptr("42")}
	b.images[key] = img
	tpl := b.templates[n.ImageTemplate]
	tpl.Tags = map[string]*string{TagKey: ptr("attested"), "team": ptr("build")}
	b.templates[n.ImageTemplate] = tpl
	if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	if got := b.images[key].Tags; len(got) != 2 || got["cost-center"] == nil || *got["cost-center"] != "42" || got["team"] != nil {
		t.Fatalf("image definition tags after re-apply: %v", got)
	}
}

// TestReplicaKeepsForeignTags: a tag others put on a registry replica survives a re-apply.
func TestReplicaKeepsForeignTags(t *testing.T) {
	ctx := context.Background()
	_, cl, b := newFakeBuild(t)
	cfg := testConfig
	cfg.Replicas = []string{"northeurope"}
	if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	rep := b.replicas["northeurope"]
	if v := rep.Tags[TagKey]; v == nil || *v != "demo1" {
		t.Fatalf("new replica tags %v", rep.Tags)
	}
	rep.Tags = map[string]*string{TagKey: ptr("demo1"), "cost-center": ptr("42")}
	b.replicas["northeurope"] = rep
	if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	if got := b.replicas["northeurope"].Tags; len(got) != 2 || got["cost-center"] == nil || *got["cost-center"] != "42" || *got[TagKey] != "demo1" {
		t.Fatalf("replica tags after re-apply: %v", got)
	}
}

// TestApplyRefusesForeignBuildResources: a build-layer resource under one of the deployment's
// names that does not carry its tag is refused by plan and by apply before any write.
func TestApplyRefusesForeignBuildResources(t *testing.T) {
	ctx := context.Background()
	cfg := buildConfig()
	n := NamesFor(cfg.NamePrefix)
	other := map[string]*string{TagKey: ptr("other")}
	for _, c := range []struct {
		kind, name string
		put        func(f *fakeAzure, b *buildLayer, tags map[string]*string)
	}{
		{"compute gallery", n.Gallery, func(_ *fakeAzure, b *buildLayer, tags map[string]*string) {
			b.galleries[n.Gallery] = armcompute.Gallery{Location: ptr("westeurope"), Tags: tags}
		}},
		{"image definition", BuildImageDefinition, func(_ *fakeAzure, b *buildLayer, tags map[string]*string) {
			b.images[n.Gallery+"/"+BuildImageDefinition] = armcompute.GalleryImage{Location: ptr("westeurope"), Tags: tags}
		}},
		{"managed identity", n.ImageBuilderIdentity, func(f *fakeAzure, _ *buildLayer, tags map[string]*string) {
			f.identities[n.ImageBuilderIdentity] = armmsi.Identity{Location: ptr("westeurope"), Tags: tags}
		}},
		{"image template", n.ImageTemplate, func(_ *fakeAzure, b *buildLayer, tags map[string]*string) {
			b.templates[n.ImageTemplate] = aib.ImageTemplate{Location: ptr("westeurope"), Tags: tags}
		}},
	} {
		for _, foreign := range []map[string]*string{nil, other} {
			f, cl, b := newFakeBuild(t)
			f.groups["rg"] = armresources.ResourceGroup{Location: ptr("westeurope")}
			c.put(f, b, foreign)
			plan, err := Plan(ctx, cl, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(plan, func(s Step) bool { return s.Kind == c.kind && s.Name == c.name && s.Action == "refuse" }) {
				t.Errorf("%s with tags %v: plan %+v", c.kind, foreign, plan)
			}
			_, _, err = Apply(ctx, cl, cfg, io.Discard)
			if !errors.Is(err, ErrNotOwned) || !strings.Contains(err.Error(), c.kind+" "+c.name) {
				t.Errorf("%s with tags %v: apply error %v", c.kind, foreign, err)
			}
			if len(f.writes) != 0 || len(b.writes) != 0 {
				t.Errorf("%s with tags %v: apply wrote %v %v", c.kind, foreign, f.writes, b.writes)
			}
		}
	}
}

// TestPlanSameForMissingGroupAndMissingResources: a plan for a resource group that exists but
// is empty lists the same steps as one for a group to be created, but for the group's own step.
func TestPlanSameForMissingGroupAndMissingResources(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []Config{testConfig, buildConfig()} {
		_, cl, _ := newFakeBuild(t)
		missing, err := Plan(ctx, cl, cfg)
		if err != nil {
			t.Fatal(err)
		}
		f, cl, _ := newFakeBuild(t)
		f.groups["rg"] = armresources.ResourceGroup{Location: ptr("westeurope")}
		empty, err := Plan(ctx, cl, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if len(missing) == 0 || len(empty) != len(missing) || missing[0].Action != "create" || empty[0].Action != "exists" {
			t.Fatalf("image builder %v: plans\n%+v\n%+v", cfg.ImageBuilder, missing, empty)
		}
		for i := 1; i < len(missing); i++ {
			if missing[i] != empty[i] {
				t.Errorf("image builder %v: step %d: %+v for a missing group, %+v for an empty one", cfg.ImageBuilder, i, missing[i], empty[i])
			}
		}
	}
}

// TestTemplateReplacedWhenSettingsChange: a rerun of apply with other tools (artifacts URL or
// SHA-256) or another build VM size replaces the immutable template, and plan says so; the same
// settings keep it.
func TestTemplateReplacedWhenSettingsChange(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	for _, tc := range []struct {
		name   string
		change func(*BuildLayer)
		why    string // "" = kept
	}{
		{"same settings", func(*BuildLayer) {}, ""},
		{"new release", func(b *BuildLayer) {
			b.ArtifactsURL = "https://example.blob.core.windows.net/rel2/attested-kv-linux-amd64.tar.gz"
			b.ArtifactsSHA256 = strings.Repeat("cd", 32)
		}, "installs other tools"},
		{"same URL, new hash", func(b *BuildLayer) { b.ArtifactsSHA256 = strings.Repeat("cd", 32) }, "installs other tools"},
		{"another VM size", func(b *BuildLayer) { b.VMSize = "Standard_D4s_v5" }, "VM size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, cl, b := newFakeBuild(t)
			cfg := buildConfig()
			if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
				t.Fatal(err)
			}
			tc.change(&cfg.BuildLayer)
			plan, err := Plan(ctx, cl, cfg)
			if err != nil {
				t.Fatal(err)
			}
			wantAction := "exists"
			if tc.why != "" {
				wantAction = "recreate"
			}
			var planned Step
			for _, s := range plan {
				if s.Name == n.ImageTemplate {
					planned = s
				}
			}
			if planned.Action != wantAction || !strings.Contains(planned.Detail, tc.why) {
				t.Errorf("plan: %+v, want %s (%q)", planned, wantAction, tc.why)
			}
			if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
				t.Fatal(err)
			}
			replaced := b.writes["template-delete"] == 1 && b.writes["template"] == 2
			if replaced != (tc.why != "") {
				t.Fatalf("template: %d deletes, %d writes", b.writes["template-delete"], b.writes["template"])
			}
			if why := templateStale(b.templates[n.ImageTemplate], cfg.identityID(n.ImageBuilderIdentity), cfg.BuildLayer); why != "" {
				t.Errorf("the template after apply is still stale: %s", why)
			}
		})
	}
}
