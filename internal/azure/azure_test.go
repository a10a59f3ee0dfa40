package azure

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/authorization/armauthorization/v2"
	authfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/authorization/armauthorization/v2/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3"
	acrfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerregistry/armcontainerregistry/v3/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/keyvault/armkeyvault"
	kvfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/keyvault/armkeyvault/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"
	msifake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources"
	rgfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources/fake"

	"github.com/attested-kv/attested-kv/internal/provision"
)

// fakeAzure is a small stateful stand-in for ARM behind the SDKs' own fake transports (and, for
// the attestation provider, which has no SDK here, a loopback HTTPS handler checked at the wire).
// It records every write so tests can check the exact parameters sent.
type fakeAzure struct {
	mu          sync.Mutex
	groups      map[string]armresources.ResourceGroup
	identities  map[string]armmsi.Identity
	vaults      map[string]armkeyvault.VaultCreateOrUpdateParameters
	registries  map[string]armcontainerregistry.Registry
	assignments map[string]armauthorization.RoleAssignmentCreateParameters
	// assignedAt is when each assignment was created (key as in assignments), reported as its
	// createdOn; tests backdate it to stand for an assignment an earlier run made. undated
	// assignments are reported without createdOn.
	assignedAt map[string]time.Time
	undated    bool
	// roleDefs are custom role definitions by id, as sent (with ID and Name set).
	roleDefs  map[string]armauthorization.RoleDefinition
	providers map[string]Provider
	writes    map[string]int
	policies  []string
	certs     map[string]bool
	failVault bool
	// deletedVaults are soft-deleted vaults (name -> the tags they had).
	deletedVaults map[string]map[string]*string
	// deletedVaultIDs are the resource ids soft-deleted vaults had (name -> id), as ARM reports
	// them in DeletedVaultProperties.VaultID; a vault without one is reported without an id.
	deletedVaultIDs map[string]string
	// taken are global vault and registry names held outside the group (name -> reason), on top
	// of the vaults (live or soft-deleted) and registries the fake holds.
	taken map[string]string
	// purgeProtected makes soft-deleted vaults unpurgeable (purge protection on).
	purgeProtected bool
	// purgeForbidden refuses purges with 403, purge protection off.
	purgeForbidden bool
	// foreign are resources in the group that no deployment of ours created.
	foreign []*armresources.GenericResourceExpanded
	// providerDelete is the status the attestation provider's DELETE answers (200 if 0). After
	// a 202 the provider is still there for providerGoneAfter more reads (-1: for ever); deleting
	// holds those counts by name, and providerGets counts the reads.
	providerDelete    int
	providerGoneAfter int
	deleting          map[string]int
	providerGets      int
	// onProviderGet, if set, runs at each read of an attestation provider.
	onProviderGet func()
	// failRegistryDelete refuses registry deletes with 409 (as a delete lock would be refused);
	// onRegistryDelete, if set, runs once a registry DELETE has been answered.
	failRegistryDelete bool
	onRegistryDelete   func()
	// grantsAtRegistryDelete are the assignments on the registry when it was deleted.
	grantsAtRegistryDelete []string
}

func (f *fakeAzure) wrote(kind string) { f.writes[kind]++ }

// afterDelete is tr, calling f.onRegistryDelete once a DELETE has been answered: outside the SDK
// fake's dispatch, which races with a context that ends while it runs.
func afterDelete(f *fakeAzure, tr interface {
	Do(*http.Request) (*http.Response, error)
}) interface {
	Do(*http.Request) (*http.Response, error)
} {
	return transportFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := tr.Do(r)
		if r.Method == http.MethodDelete && f.onRegistryDelete != nil {
			f.onRegistryDelete()
		}
		return resp, err
	})
}

// transportFunc is a function as a transport.
type transportFunc func(*http.Request) (*http.Response, error)

func (t transportFunc) Do(r *http.Request) (*http.Response, error) { return t(r) }

// assignmentLocked is the assignment under key (scope|name) as ARM reports it; f.mu is held.
func (f *fakeAzure) assignmentLocked(key string) armauthorization.RoleAssignment {
	i := strings.LastIndex(key, "|")
	p := f.assignments[key].Properties
	var created *time.Time
	if !f.undated {
		t := f.assignedAt[key]
		created = &t
	}
	return armauthorization.RoleAssignment{
		ID: ptr(key[:i] + "/providers/Microsoft.Authorization/roleAssignments/" + key[i+1:]), Name: ptr(key[i+1:]),
		Properties: &armauthorization.RoleAssignmentProperties{
			Scope: ptr(key[:i]), PrincipalID: p.PrincipalID, RoleDefinitionID: p.RoleDefinitionID, PrincipalType: p.PrincipalType, CreatedOn: created,
		},
	}
}

// plant stores, as if made long ago, the assignment of role to principal at scope under name
// ("" for the name apply gives it); it returns its key in f.assignments. f.mu is not taken: tests
// plant before they run apply.
func (f *fakeAzure) plant(scope, name, principal, role string) string {
	if name == "" {
		name = assignmentName(scope, principal, role)
	}
	key := scope + "|" + name
	f.assignments[key] = armauthorization.RoleAssignmentCreateParameters{
		Properties: &armauthorization.RoleAssignmentProperties{PrincipalID: ptr(principal), RoleDefinitionID: ptr(testConfig.roleDefinition(role))},
	}
	return key
}

// backdate makes every assignment look made by an earlier run, long enough ago to have taken
// effect.
func (f *fakeAzure) backdate() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range f.assignments {
		f.assignedAt[k] = time.Now().Add(-2 * RoleSettle)
	}
}

// respond is a fake's answer: status and the response value.
func respond[T any](status int, v T) (azfake.Responder[T], azfake.ErrorResponder) {
	var r azfake.Responder[T]
	r.SetResponse(status, v, nil)
	return r, azfake.ErrorResponder{}
}

func notFound[T any]() (azfake.Responder[T], azfake.ErrorResponder) {
	var e azfake.ErrorResponder
	e.SetResponseError(http.StatusNotFound, "ResourceNotFound")
	return azfake.Responder[T]{}, e
}

func newFakeAzure(t *testing.T) (*fakeAzure, *Clients) {
	t.Helper()
	f := &fakeAzure{groups: map[string]armresources.ResourceGroup{}, identities: map[string]armmsi.Identity{}, vaults: map[string]armkeyvault.VaultCreateOrUpdateParameters{},
		registries: map[string]armcontainerregistry.Registry{}, assignments: map[string]armauthorization.RoleAssignmentCreateParameters{}, assignedAt: map[string]time.Time{}, providers: map[string]Provider{},
		roleDefs: map[string]armauthorization.RoleDefinition{},
		writes:   map[string]int{}, certs: map[string]bool{}, deletedVaults: map[string]map[string]*string{}, deletedVaultIDs: map[string]string{}, taken: map[string]string{}, deleting: map[string]int{}}
	cred := &azfake.TokenCredential{}
	opt := func(tr interface {
		Do(*http.Request) (*http.Response, error)
	}) *arm.ClientOptions {
		return clientOptions(tr)
	}
	cl := &Clients{}
	var err error
	cl.Groups, err = armresources.NewResourceGroupsClient("sub", cred, opt(rgfake.NewResourceGroupsServerTransport(&rgfake.ResourceGroupsServer{
		Get: func(_ context.Context, name string, _ *armresources.ResourceGroupsClientGetOptions) (azfake.Responder[armresources.ResourceGroupsClientGetResponse], azfake.ErrorResponder) {
			return fakeGet(&f.mu, f.groups, name, func(v armresources.ResourceGroup) armresources.ResourceGroupsClientGetResponse {
				return armresources.ResourceGroupsClientGetResponse{ResourceGroup: v}
			})
		},
		CreateOrUpdate: func(_ context.Context, name string, p armresources.ResourceGroup, _ *armresources.ResourceGroupsClientCreateOrUpdateOptions) (azfake.Responder[armresources.ResourceGroupsClientCreateOrUpdateResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.groups[name] = p
			f.wrote("group")
			return respond(http.StatusCreated, armresources.ResourceGroupsClientCreateOrUpdateResponse{ResourceGroup: p})
		},
		BeginDelete: func(_ context.Context, name string, _ *armresources.ResourceGroupsClientBeginDeleteOptions) (azfake.PollerResponder[armresources.ResourceGroupsClientDeleteResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			delete(f.groups, name)
			f.wrote("group-delete")
			var r azfake.PollerResponder[armresources.ResourceGroupsClientDeleteResponse]
			r.SetTerminalResponse(http.StatusOK, armresources.ResourceGroupsClientDeleteResponse{}, nil)
			return r, azfake.ErrorResponder{}
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	cl.Resources, err = armresources.NewClient("sub", cred, opt(rgfake.NewServerTransport(&rgfake.Server{
		NewListByResourceGroupPager: func(rg string, _ *armresources.ClientListByResourceGroupOptions) azfake.PagerResponder[armresources.ClientListByResourceGroupResponse] {
			f.mu.Lock()
			defer f.mu.Unlock()
			res := func(name, typ string, tags map[string]*string) *armresources.GenericResourceExpanded {
				return &armresources.GenericResourceExpanded{Name: ptr(name), Type: ptr(typ), Tags: tags}
			}
			var all []*armresources.GenericResourceExpanded
			for name, v := range f.identities {
				all = append(all, res(name, "Microsoft.ManagedIdentity/userAssignedIdentities", v.Tags))
			}
			for name, v := range f.vaults {
				all = append(all, res(name, "Microsoft.KeyVault/vaults", v.Tags))
			}
			for name, v := range f.registries {
				all = append(all, res(name, "Microsoft.ContainerRegistry/registries", v.Tags))
			}
			for name, v := range f.providers {
				all = append(all, res(name, "Microsoft.Attestation/attestationProviders", v.Tags))
			}
			all = append(all, f.foreign...)
			// Two pages, to exercise the pager.
			half := len(all) / 2
			var r azfake.PagerResponder[armresources.ClientListByResourceGroupResponse]
			r.AddPage(http.StatusOK, armresources.ClientListByResourceGroupResponse{ResourceListResult: armresources.ResourceListResult{Value: all[:half]}}, nil)
			r.AddPage(http.StatusOK, armresources.ClientListByResourceGroupResponse{ResourceListResult: armresources.ResourceListResult{Value: all[half:]}}, nil)
			return r
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	cl.Identities, err = armmsi.NewUserAssignedIdentitiesClient("sub", cred, opt(msifake.NewUserAssignedIdentitiesServerTransport(&msifake.UserAssignedIdentitiesServer{
		CreateOrUpdate: func(_ context.Context, rg, name string, p armmsi.Identity, _ *armmsi.UserAssignedIdentitiesClientCreateOrUpdateOptions) (azfake.Responder[armmsi.UserAssignedIdentitiesClientCreateOrUpdateResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			p.Properties = &armmsi.UserAssignedIdentityProperties{PrincipalID: ptr("principal-" + name), ClientID: ptr("client-" + name)}
			f.identities[name] = p
			f.wrote("identity")
			return respond(http.StatusOK, armmsi.UserAssignedIdentitiesClientCreateOrUpdateResponse{Identity: p})
		},
		Get: func(_ context.Context, rg, name string, _ *armmsi.UserAssignedIdentitiesClientGetOptions) (azfake.Responder[armmsi.UserAssignedIdentitiesClientGetResponse], azfake.ErrorResponder) {
			return fakeGet(&f.mu, f.identities, name, func(v armmsi.Identity) armmsi.UserAssignedIdentitiesClientGetResponse {
				return armmsi.UserAssignedIdentitiesClientGetResponse{Identity: v}
			})
		},
		Delete: func(_ context.Context, rg, name string, _ *armmsi.UserAssignedIdentitiesClientDeleteOptions) (azfake.Responder[armmsi.UserAssignedIdentitiesClientDeleteResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			delete(f.identities, name)
			f.wrote("identity-delete")
			return respond(http.StatusOK, armmsi.UserAssignedIdentitiesClientDeleteResponse{})
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	cl.Vaults, err = armkeyvault.NewVaultsClient("sub", cred, opt(kvfake.NewVaultsServerTransport(&kvfake.VaultsServer{
		BeginCreateOrUpdate: func(_ context.Context, rg, name string, p armkeyvault.VaultCreateOrUpdateParameters, _ *armkeyvault.VaultsClientBeginCreateOrUpdateOptions) (azfake.PollerResponder[armkeyvault.VaultsClientCreateOrUpdateResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			var r azfake.PollerResponder[armkeyvault.VaultsClientCreateOrUpdateResponse]
			if f.failVault {
				var e azfake.ErrorResponder
				e.SetResponseError(http.StatusConflict, "VaultAlreadyExists")
				return r, e
			}
			_, deleted := f.deletedVaults[name]
			recover := p.Properties != nil && p.Properties.CreateMode != nil && *p.Properties.CreateMode == armkeyvault.CreateModeRecover
			if deleted != recover {
				// ARM: a soft-deleted vault blocks its name; recovery needs one.
				var e azfake.ErrorResponder
				if deleted {
					e.SetResponseError(http.StatusConflict, "ConflictError")
				} else {
					e.SetResponseError(http.StatusNotFound, "ResourceNotFound")
				}
				return r, e
			}
			delete(f.deletedVaults, name)
			delete(f.deletedVaultIDs, name)
			f.vaults[name] = p
			f.wrote("vault")
			v := armkeyvault.Vault{Tags: p.Tags, Properties: &armkeyvault.VaultProperties{VaultURI: ptr("https://" + name + ".vault.azure.net/")}}
			r.AddNonTerminalResponse(http.StatusCreated, nil)
			r.SetTerminalResponse(http.StatusOK, armkeyvault.VaultsClientCreateOrUpdateResponse{Vault: v}, nil)
			return r, azfake.ErrorResponder{}
		},
		Get: func(_ context.Context, rg, name string, _ *armkeyvault.VaultsClientGetOptions) (azfake.Responder[armkeyvault.VaultsClientGetResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			p, ok := f.vaults[name]
			if !ok {
				return notFound[armkeyvault.VaultsClientGetResponse]()
			}
			// ARM reports the vault's URI with its properties, as it does to a create.
			props := armkeyvault.VaultProperties{}
			if p.Properties != nil {
				props = *p.Properties
			}
			props.VaultURI = ptr("https://" + name + ".vault.azure.net/")
			v := armkeyvault.Vault{Tags: p.Tags, Properties: &props}
			return respond(http.StatusOK, armkeyvault.VaultsClientGetResponse{Vault: v})
		},
		Delete: func(_ context.Context, rg, name string, _ *armkeyvault.VaultsClientDeleteOptions) (azfake.Responder[armkeyvault.VaultsClientDeleteResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.deletedVaults[name] = f.vaults[name].Tags
			f.deletedVaultIDs[name] = "/subscriptions/sub/resourceGroups/" + rg + "/providers/Microsoft.KeyVault/vaults/" + name
			delete(f.vaults, name)
			f.wrote("vault-delete")
			return respond(http.StatusOK, armkeyvault.VaultsClientDeleteResponse{})
		},
		GetDeleted: func(_ context.Context, name, location string, _ *armkeyvault.VaultsClientGetDeletedOptions) (azfake.Responder[armkeyvault.VaultsClientGetDeletedResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			tags, ok := f.deletedVaults[name]
			if !ok {
				return notFound[armkeyvault.VaultsClientGetDeletedResponse]()
			}
			var id *string
			if v, ok := f.deletedVaultIDs[name]; ok {
				id = ptr(v)
			}
			var r azfake.Responder[armkeyvault.VaultsClientGetDeletedResponse]
			r.SetResponse(http.StatusOK, armkeyvault.VaultsClientGetDeletedResponse{DeletedVault: armkeyvault.DeletedVault{
				Name: ptr(name), Properties: &armkeyvault.DeletedVaultProperties{Location: ptr(location), Tags: tags, PurgeProtectionEnabled: ptr(f.purgeProtected), VaultID: id},
			}}, nil)
			return r, azfake.ErrorResponder{}
		},
		CheckNameAvailability: func(_ context.Context, p armkeyvault.VaultCheckNameAvailabilityParameters, _ *armkeyvault.VaultsClientCheckNameAvailabilityOptions) (azfake.Responder[armkeyvault.VaultsClientCheckNameAvailabilityResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			r := armkeyvault.CheckNameAvailabilityResult{NameAvailable: ptr(true)}
			_, live := f.vaults[*p.Name]
			_, deleted := f.deletedVaults[*p.Name]
			if msg, ok := f.taken[*p.Name]; ok || live || deleted {
				r = armkeyvault.CheckNameAvailabilityResult{NameAvailable: ptr(false), Reason: ptr(armkeyvault.ReasonAlreadyExists), Message: ptr(msg)}
			}
			return respond(http.StatusOK, armkeyvault.VaultsClientCheckNameAvailabilityResponse{CheckNameAvailabilityResult: r})
		},
		BeginPurgeDeleted: func(_ context.Context, name, location string, _ *armkeyvault.VaultsClientBeginPurgeDeletedOptions) (azfake.PollerResponder[armkeyvault.VaultsClientPurgeDeletedResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if _, ok := f.deletedVaults[name]; !ok {
				e := azfake.ErrorResponder{}
				e.SetResponseError(http.StatusNotFound, "ResourceNotFound")
				return azfake.PollerResponder[armkeyvault.VaultsClientPurgeDeletedResponse]{}, e
			}
			if f.purgeForbidden {
				e := azfake.ErrorResponder{}
				e.SetResponseError(http.StatusForbidden, "AuthorizationFailed")
				return azfake.PollerResponder[armkeyvault.VaultsClientPurgeDeletedResponse]{}, e
			}
			if f.purgeProtected {
				// The exact code ARM answers is UNCONFIRMED; destroy does not depend on it.
				e := azfake.ErrorResponder{}
				e.SetResponseError(http.StatusConflict, "Conflict")
				return azfake.PollerResponder[armkeyvault.VaultsClientPurgeDeletedResponse]{}, e
			}
			delete(f.deletedVaults, name)
			delete(f.deletedVaultIDs, name)
			f.wrote("vault-purge")
			var r azfake.PollerResponder[armkeyvault.VaultsClientPurgeDeletedResponse]
			r.SetTerminalResponse(http.StatusOK, armkeyvault.VaultsClientPurgeDeletedResponse{}, nil)
			return r, azfake.ErrorResponder{}
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	cl.Registries, err = armcontainerregistry.NewRegistriesClient("sub", cred, opt(afterDelete(f, acrfake.NewRegistriesServerTransport(&acrfake.RegistriesServer{
		BeginCreate: func(_ context.Context, rg, name string, p armcontainerregistry.Registry, _ *armcontainerregistry.RegistriesClientBeginCreateOptions) (azfake.PollerResponder[armcontainerregistry.RegistriesClientCreateResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.registries[name] = p
			f.wrote("registry")
			p.Properties.LoginServer = ptr(name + ".azurecr.io")
			var r azfake.PollerResponder[armcontainerregistry.RegistriesClientCreateResponse]
			r.SetTerminalResponse(http.StatusOK, armcontainerregistry.RegistriesClientCreateResponse{Registry: p}, nil)
			return r, azfake.ErrorResponder{}
		},
		Get: func(_ context.Context, rg, name string, _ *armcontainerregistry.RegistriesClientGetOptions) (azfake.Responder[armcontainerregistry.RegistriesClientGetResponse], azfake.ErrorResponder) {
			return fakeGet(&f.mu, f.registries, name, func(v armcontainerregistry.Registry) armcontainerregistry.RegistriesClientGetResponse {
				return armcontainerregistry.RegistriesClientGetResponse{Registry: v}
			})
		},
		CheckNameAvailability: func(_ context.Context, p armcontainerregistry.RegistryNameCheckRequest, _ *armcontainerregistry.RegistriesClientCheckNameAvailabilityOptions) (azfake.Responder[armcontainerregistry.RegistriesClientCheckNameAvailabilityResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			r := armcontainerregistry.RegistryNameStatus{NameAvailable: ptr(true)}
			_, live := f.registries[*p.Name]
			if msg, ok := f.taken[*p.Name]; ok || live {
				r = armcontainerregistry.RegistryNameStatus{NameAvailable: ptr(false), Reason: ptr("AlreadyExists"), Message: ptr(msg)}
			}
			return respond(http.StatusOK, armcontainerregistry.RegistriesClientCheckNameAvailabilityResponse{RegistryNameStatus: r})
		},
		BeginDelete: func(_ context.Context, rg, name string, _ *armcontainerregistry.RegistriesClientBeginDeleteOptions) (azfake.PollerResponder[armcontainerregistry.RegistriesClientDeleteResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.failRegistryDelete {
				var e azfake.ErrorResponder
				e.SetResponseError(http.StatusConflict, "ScopeLocked")
				return azfake.PollerResponder[armcontainerregistry.RegistriesClientDeleteResponse]{}, e
			}
			for key := range f.assignments {
				if strings.HasPrefix(key, "/subscriptions/sub/resourceGroups/"+rg+"/providers/Microsoft.ContainerRegistry/registries/"+name+"|") {
					f.grantsAtRegistryDelete = append(f.grantsAtRegistryDelete, key)
				}
			}
			delete(f.registries, name)
			f.wrote("registry-delete")
			var r azfake.PollerResponder[armcontainerregistry.RegistriesClientDeleteResponse]
			r.SetTerminalResponse(http.StatusOK, armcontainerregistry.RegistriesClientDeleteResponse{}, nil)
			return r, azfake.ErrorResponder{}
		},
	}))))
	if err != nil {
		t.Fatal(err)
	}
	cl.RoleAssignments, err = armauthorization.NewRoleAssignmentsClient("sub", cred, opt(authfake.NewRoleAssignmentsServerTransport(&authfake.RoleAssignmentsServer{
		Create: func(_ context.Context, scope, name string, p armauthorization.RoleAssignmentCreateParameters, _ *armauthorization.RoleAssignmentsClientCreateOptions) (azfake.Responder[armauthorization.RoleAssignmentsClientCreateResponse], azfake.ErrorResponder) {
			// The fake hands the scope over without its leading slash.
			scope = "/" + strings.TrimPrefix(scope, "/")
			f.mu.Lock()
			defer f.mu.Unlock()
			var r azfake.Responder[armauthorization.RoleAssignmentsClientCreateResponse]
			// The same (scope, principal, role) under another name: ARM answers 409.
			for k, a := range f.assignments {
				if k != scope+"|"+name && strings.HasPrefix(k, scope+"|") && *a.Properties.PrincipalID == *p.Properties.PrincipalID && *a.Properties.RoleDefinitionID == *p.Properties.RoleDefinitionID {
					var e azfake.ErrorResponder
					e.SetResponseError(http.StatusConflict, "RoleAssignmentExists")
					return r, e
				}
			}
			if _, ok := f.assignments[scope+"|"+name]; !ok {
				f.wrote("assignment")
				f.assignedAt[scope+"|"+name] = time.Now()
			}
			f.assignments[scope+"|"+name] = p
			r.SetResponse(http.StatusCreated, armauthorization.RoleAssignmentsClientCreateResponse{}, nil)
			return r, azfake.ErrorResponder{}
		},
		Delete: func(_ context.Context, scope, name string, _ *armauthorization.RoleAssignmentsClientDeleteOptions) (azfake.Responder[armauthorization.RoleAssignmentsClientDeleteResponse], azfake.ErrorResponder) {
			// The fake hands the scope over without its leading slash.
			scope = "/" + strings.TrimPrefix(scope, "/")
			f.mu.Lock()
			defer f.mu.Unlock()
			var r azfake.Responder[armauthorization.RoleAssignmentsClientDeleteResponse]
			if _, ok := f.assignments[scope+"|"+name]; !ok {
				r.SetResponse(http.StatusNoContent, armauthorization.RoleAssignmentsClientDeleteResponse{}, nil)
				return r, azfake.ErrorResponder{}
			}
			delete(f.assignments, scope+"|"+name)
			delete(f.assignedAt, scope+"|"+name)
			f.wrote("assignment-delete")
			r.SetResponse(http.StatusOK, armauthorization.RoleAssignmentsClientDeleteResponse{}, nil)
			return r, azfake.ErrorResponder{}
		},
		Get: func(_ context.Context, scope, name string, _ *armauthorization.RoleAssignmentsClientGetOptions) (azfake.Responder[armauthorization.RoleAssignmentsClientGetResponse], azfake.ErrorResponder) {
			scope = "/" + strings.TrimPrefix(scope, "/")
			f.mu.Lock()
			defer f.mu.Unlock()
			if _, ok := f.assignments[scope+"|"+name]; !ok {
				var e azfake.ErrorResponder
				e.SetResponseError(http.StatusNotFound, "RoleAssignmentNotFound")
				return azfake.Responder[armauthorization.RoleAssignmentsClientGetResponse]{}, e
			}
			return respond(http.StatusOK, armauthorization.RoleAssignmentsClientGetResponse{RoleAssignment: f.assignmentLocked(scope + "|" + name)})
		},
		NewListForScopePager: func(scope string, o *armauthorization.RoleAssignmentsClientListForScopeOptions) azfake.PagerResponder[armauthorization.RoleAssignmentsClientListForScopeResponse] {
			scope = "/" + strings.TrimPrefix(scope, "/")
			f.mu.Lock()
			defer f.mu.Unlock()
			// ARM: without a filter, the assignments at, above and below the scope; with
			// atScope(), at and above it only.
			atScope := o != nil && o.Filter != nil && *o.Filter == "atScope()"
			var all []*armauthorization.RoleAssignment
			for _, key := range slices.Sorted(maps.Keys(f.assignments)) {
				at := strings.ToLower(key[:strings.LastIndex(key, "|")])
				s := strings.ToLower(scope)
				if at == s || strings.HasPrefix(s, at+"/") || !atScope && strings.HasPrefix(at, s+"/") {
					a := f.assignmentLocked(key)
					all = append(all, &a)
				}
			}
			// Two pages, to exercise the pager.
			half := len(all) / 2
			var r azfake.PagerResponder[armauthorization.RoleAssignmentsClientListForScopeResponse]
			r.AddPage(http.StatusOK, armauthorization.RoleAssignmentsClientListForScopeResponse{RoleAssignmentListResult: armauthorization.RoleAssignmentListResult{Value: all[:half]}}, nil)
			r.AddPage(http.StatusOK, armauthorization.RoleAssignmentsClientListForScopeResponse{RoleAssignmentListResult: armauthorization.RoleAssignmentListResult{Value: all[half:]}}, nil)
			return r
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	cl.RoleDefinitions, err = armauthorization.NewRoleDefinitionsClient(cred, opt(authfake.NewRoleDefinitionsServerTransport(&authfake.RoleDefinitionsServer{
		CreateOrUpdate: func(_ context.Context, scope, id string, p armauthorization.RoleDefinition, _ *armauthorization.RoleDefinitionsClientCreateOrUpdateOptions) (azfake.Responder[armauthorization.RoleDefinitionsClientCreateOrUpdateResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			p.ID = ptr("/subscriptions/sub/providers/Microsoft.Authorization/roleDefinitions/" + id)
			p.Name = ptr(id)
			f.roleDefs[id] = p
			f.wrote("role-definition")
			return respond(http.StatusCreated, armauthorization.RoleDefinitionsClientCreateOrUpdateResponse{RoleDefinition: p})
		},
		Get: func(_ context.Context, scope, id string, _ *armauthorization.RoleDefinitionsClientGetOptions) (azfake.Responder[armauthorization.RoleDefinitionsClientGetResponse], azfake.ErrorResponder) {
			return fakeGet(&f.mu, f.roleDefs, id, func(v armauthorization.RoleDefinition) armauthorization.RoleDefinitionsClientGetResponse {
				return armauthorization.RoleDefinitionsClientGetResponse{RoleDefinition: v}
			})
		},
		Delete: func(_ context.Context, scope, id string, _ *armauthorization.RoleDefinitionsClientDeleteOptions) (azfake.Responder[armauthorization.RoleDefinitionsClientDeleteResponse], azfake.ErrorResponder) {
			f.mu.Lock()
			defer f.mu.Unlock()
			var r azfake.Responder[armauthorization.RoleDefinitionsClientDeleteResponse]
			d, ok := f.roleDefs[id]
			if !ok {
				r.SetResponse(http.StatusNoContent, armauthorization.RoleDefinitionsClientDeleteResponse{}, nil)
				return r, azfake.ErrorResponder{}
			}
			// ARM refuses to delete a role that is still assigned.
			for _, a := range f.assignments {
				if *a.Properties.RoleDefinitionID == *d.ID {
					var e azfake.ErrorResponder
					e.SetResponseError(http.StatusConflict, "RoleDefinitionHasAssignments")
					return r, e
				}
			}
			delete(f.roleDefs, id)
			f.wrote("role-definition-delete")
			r.SetResponse(http.StatusOK, armauthorization.RoleDefinitionsClientDeleteResponse{RoleDefinition: d}, nil)
			return r, azfake.ErrorResponder{}
		},
	})))
	if err != nil {
		t.Fatal(err)
	}

	// The attestation provider goes through azcore directly, so its fake is a loopback ARM
	// endpoint that checks the wire: path, api-version, body.
	armSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		// Any resource group: providers are kept by name, like the fake's other resources.
		rgAndName, ok := strings.CutPrefix(r.URL.Path, "/subscriptions/sub/resourceGroups/")
		_, name, found := strings.Cut(rgAndName, "/providers/Microsoft.Attestation/attestationProviders/")
		if !ok || !found || strings.Contains(name, "/") || r.URL.Query().Get("api-version") != AttestationAPIVersion || !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch r.Method {
		case http.MethodPut:
			var body struct {
				Location   string             `json:"location"`
				Tags       map[string]*string `json:"tags"`
				Properties map[string]any     `json:"properties"`
			}
			b, _ := io.ReadAll(r.Body)
			if json.Unmarshal(b, &body) != nil || body.Location == "" || body.Properties == nil || len(body.Properties) != 0 {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			p := Provider{Location: body.Location, Tags: body.Tags}
			p.Properties.AttestURI = "https://" + name + ".weu.attest.azure.net"
			p.Properties.Status, p.Properties.TrustModel = "Ready", "AAD"
			f.providers[name] = p
			f.wrote("provider")
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(p)
		case http.MethodGet:
			f.providerGets++
			if f.onProviderGet != nil {
				f.onProviderGet()
			}
			if left, ok := f.deleting[name]; ok {
				switch {
				case left == 0:
					delete(f.deleting, name)
					delete(f.providers, name)
				case left > 0:
					f.deleting[name] = left - 1
				}
			}
			p, ok := f.providers[name]
			if !ok {
				w.WriteHeader(http.StatusNotFound)
				w.Write([]byte(`{"error":{"code":"ResourceNotFound","message":"not found"}}`))
				return
			}
			json.NewEncoder(w).Encode(p)
		case http.MethodDelete:
			f.wrote("provider-delete")
			switch f.providerDelete {
			case 0, http.StatusOK, http.StatusNoContent:
				delete(f.providers, name)
				w.WriteHeader(max(f.providerDelete, http.StatusOK))
			case http.StatusAccepted:
				f.deleting[name] = f.providerGoneAfter
				w.WriteHeader(http.StatusAccepted)
			default:
				w.WriteHeader(f.providerDelete)
				w.Write([]byte(`{"error":{"code":"Failed","message":"refused"}}`))
			}
		}
	}))
	t.Cleanup(armSrv.Close)
	cl.Attestation, err = NewAttestationProviders("sub", cred, &arm.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: armSrv.Client(),
		Cloud: cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: armSrv.URL, Audience: "https://management.core.windows.net/"},
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	cl.PolicySetter = func(_ context.Context, uri string) (PolicySetter, error) { return policyRecorder{f, uri}, nil }
	cl.Certificates = func(_ context.Context, vaultURL string, c provision.SigningCertificate) (*provision.Result, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if !f.certs[vaultURL+c.Name] {
			f.wrote("certificate")
		}
		f.certs[vaultURL+c.Name] = true
		return &provision.Result{KeyID: vaultURL + "keys/" + c.Name + "/v1", Certificate: &x509.Certificate{Raw: []byte("der")}}, nil
	}
	return f, cl
}

type policyRecorder struct {
	f   *fakeAzure
	uri string
}

func (p policyRecorder) SetPolicy(_ context.Context, typ, text string) (string, error) {
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	p.f.policies = append(p.f.policies, p.uri+"|"+typ+"|"+text)
	return "answer", nil
}

var testConfig = Config{
	SubscriptionID: "sub", TenantID: "tenant", ResourceGroup: "rg", Location: "westeurope", NamePrefix: "demo1",
	OperatorPrincipalID: "operator", ClusterPrincipalID: "kubelet", AttestationPolicy: "version=1.0; authorizationrules { => permit(); };",
}

func TestApplyPlanDestroy(t *testing.T) {
	f, cl := newFakeAzure(t)
	ctx := context.Background()
	n := NamesFor("demo1")

	// The certificate's plan is asked of the vault apply will use, once it exists.
	var certPlanURL string
	certPlan := struct {
		action, detail string
		err            error
	}{provision.PlanKeep, "v1", nil}
	cl.CertificatePlan = func(_ context.Context, vaultURL string, c provision.SigningCertificate) (string, string, error) {
		certPlanURL = vaultURL
		if c.Name != n.Certificate || c.KeySize != 3072 {
			t.Errorf("certificate plan asked for %+v", c)
		}
		return certPlan.action, certPlan.detail, certPlan.err
	}

	plan, err := Plan(ctx, cl, testConfig)
	if err != nil {
		t.Fatal(err)
	}
	if plan[0].Action != "create" || len(f.writes) != 0 {
		t.Fatalf("plan on an empty subscription: %+v, writes %v", plan, f.writes)
	}
	if certPlanURL != "" || !hasStepDetail(plan, n.Certificate, "ensure", "created if absent") {
		t.Fatalf("certificate plan without a vault: asked of %q, %+v", certPlanURL, plan)
	}

	out, _, err := Apply(ctx, cl, testConfig, io.Discard)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	// The exact parameters that matter.
	v := f.vaults[n.Vault].Properties
	if !*v.EnableRbacAuthorization || *v.SKU.Name != armkeyvault.SKUNameStandard || *v.TenantID != "tenant" || v.EnablePurgeProtection != nil {
		t.Fatalf("vault properties %+v", v)
	}
	reg := f.registries[n.Registry]
	if *reg.SKU.Name != armcontainerregistry.SKUNamePremium || *reg.Properties.AdminUserEnabled || *reg.Properties.RoleAssignmentMode != armcontainerregistry.RoleAssignmentModeLegacyRegistryPermissions {
		t.Fatalf("registry %+v", reg.Properties)
	}
	// principal|role -> principal type and scope.
	vaultScope := testConfig.rgID() + "/providers/Microsoft.KeyVault/vaults/" + n.Vault
	regScope := testConfig.rgID() + "/providers/Microsoft.ContainerRegistry/registries/" + n.Registry
	provScope := testConfig.rgID() + "/providers/Microsoft.Attestation/attestationProviders/" + n.AttestationProvider
	wantRoles := map[string]string{
		"principal-" + n.Identity + "|" + testConfig.signerRoleID():   "ServicePrincipal " + vaultScope + "/keys/attested-signing",
		"principal-" + n.Identity + "|" + RoleKeyVaultCertificateUser: "ServicePrincipal " + vaultScope + "/certificates/attested-signing",
		"principal-" + n.Identity + "|" + RoleKeyVaultSecretsUser:     "ServicePrincipal " + vaultScope + "/secrets/attested-signing",
		"principal-" + n.Identity + "|" + RoleAcrPush:                 "ServicePrincipal " + regScope,
		"operator|" + RoleKeyVaultCertificatesOfficer:                 "User " + vaultScope,
		"operator|" + RoleAttestationContributor:                      "User " + provScope,
		"kubelet|" + RoleAcrPull:                                      "ServicePrincipal " + regScope,
	}
	for key, a := range f.assignments {
		scope := key[:strings.LastIndex(key, "|")]
		role := (*a.Properties.RoleDefinitionID)[strings.LastIndex(*a.Properties.RoleDefinitionID, "/")+1:]
		k := *a.Properties.PrincipalID + "|" + role
		if want, ok := wantRoles[k]; !ok || string(*a.Properties.PrincipalType)+" "+scope != want {
			t.Fatalf("unexpected role assignment %s (%s) at %s", k, *a.Properties.PrincipalType, scope)
		}
		delete(wantRoles, k)
	}
	if len(wantRoles) != 0 {
		t.Fatalf("missing role assignments: %v", wantRoles)
	}
	if len(f.policies) != 1 || !strings.HasPrefix(f.policies[0], out.AttestationURL+"|AzureGuest|version=1.0") {
		t.Fatalf("policies set: %v", f.policies)
	}
	if out.KeyID == "" || out.RegistryLoginServer != n.Registry+".azurecr.io" || out.IdentityClientID != "client-"+n.Identity {
		t.Fatalf("outputs %+v", out)
	}

	// A second apply changes nothing: no new resources, assignments or certificates.
	before := map[string]int{}
	for k, v := range f.writes {
		before[k] = v
	}
	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"group", "assignment", "certificate"} {
		if f.writes[k] != before[k] {
			t.Fatalf("second apply wrote %s again (%d -> %d)", k, before[k], f.writes[k])
		}
	}
	// An assignment that exists under another name is success.
	scope := testConfig.rgID() + "/providers/Microsoft.KeyVault/vaults/" + n.Vault
	if err := assign(ctx, cl, testConfig, scope, "principal-"+n.Identity, "ServicePrincipal", RoleKeyVaultCryptoUser); err != nil {
		t.Fatal(err)
	}
	f.assignments[scope+"|other-name"] = f.assignments[scope+"|"+assignmentName(scope, "principal-"+n.Identity, RoleKeyVaultCryptoUser)]
	delete(f.assignments, scope+"|"+assignmentName(scope, "principal-"+n.Identity, RoleKeyVaultCryptoUser))
	if err := assign(ctx, cl, testConfig, scope, "principal-"+n.Identity, "ServicePrincipal", RoleKeyVaultCryptoUser); err != nil {
		t.Fatalf("RoleAssignmentExists not treated as success: %v", err)
	}

	plan, err = Plan(ctx, cl, testConfig)
	if err != nil || plan[0].Action != "exists" {
		t.Fatalf("plan after apply: %+v %v", plan, err)
	}
	// With the vault there, the plan says what apply will do with its certificate: above all a
	// new version, whose new key leaves what was signed before unverifiable.
	if want := "https://" + n.Vault + ".vault.azure.net/"; certPlanURL != want || !hasStepDetail(plan, n.Certificate, "keep", "version v1") {
		t.Fatalf("certificate plan asked of %q (want %q): %+v", certPlanURL, want, plan)
	}
	for _, tc := range []struct {
		action, detail string
		err            error
		step, says     string
	}{
		{provision.PlanNewVersion, "key size: have 2048, want 3072", nil, "new version", "key size: have 2048, want 3072); what was signed with the current certificate will no longer verify"},
		{provision.PlanRefuse, "certificate sig version v1 is disabled", nil, "refused", "is disabled"},
		{"", "", errors.New("403 Forbidden"), "ensure", "the existing one could not be read: 403 Forbidden"},
	} {
		certPlan.action, certPlan.detail, certPlan.err = tc.action, tc.detail, tc.err
		if plan, err = Plan(ctx, cl, testConfig); err != nil || !hasStepDetail(plan, n.Certificate, tc.step, tc.says) {
			t.Fatalf("certificate plan %q: %+v %v", tc.action, plan, err)
		}
	}

	// Destroy removes what apply created, and purges only when asked.
	if _, err := Destroy(ctx, cl, testConfig, false, io.Discard); err != nil {
		t.Fatal(err)
	}
	if len(f.vaults)+len(f.registries)+len(f.identities)+len(f.providers)+len(f.groups)+len(f.roleDefs) != 0 || f.writes["vault-purge"] != 0 {
		t.Fatalf("left after destroy: %d vaults, %d registries, %d identities, %d providers, %d groups, %d role definitions, %d purges",
			len(f.vaults), len(f.registries), len(f.identities), len(f.providers), len(f.groups), len(f.roleDefs), f.writes["vault-purge"])
	}
}

func TestApplyPartialFailureAndForeignResources(t *testing.T) {
	f, cl := newFakeAzure(t)
	ctx := context.Background()
	f.failVault = true
	_, steps, err := Apply(ctx, cl, testConfig, io.Discard)
	var re *azcore.ResponseError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "run apply again") {
		t.Fatalf("failed apply: %v", err)
	}
	if len(steps) < 3 || len(f.providers) != 1 {
		t.Fatalf("steps before the failure: %+v", steps)
	}
	f.failVault = false
	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
		t.Fatalf("re-run: %v", err)
	}
	if f.writes["group"] != 1 {
		t.Fatalf("the resource group was created %d times", f.writes["group"])
	}

	// A resource group that existed before is kept by destroy; so is anything untagged.
	f2, cl2 := newFakeAzure(t)
	f2.groups["rg"] = armresources.ResourceGroup{Location: ptr("westeurope")}
	if _, _, err := Apply(ctx, cl2, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	n := NamesFor("demo1")
	reg := f2.registries[n.Registry]
	reg.Tags = nil
	f2.registries[n.Registry] = reg
	if _, err := Destroy(ctx, cl2, testConfig, true, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, ok := f2.groups["rg"]; !ok || len(f2.registries) != 1 || f2.writes["vault-purge"] != 1 {
		t.Fatalf("destroy: group kept %v, registries %d, purges %d", ok, len(f2.registries), f2.writes["vault-purge"])
	}
}

func TestConfigValidate(t *testing.T) {
	for _, p := range []string{"", "ab", "Demo", "1demo", "demo-x", "averyverylongprefix"} {
		c := testConfig
		c.NamePrefix = p
		if c.Validate() == nil {
			t.Errorf("prefix %q accepted", p)
		}
	}
	c := testConfig
	c.OperatorPrincipalID = ""
	if c.Validate() == nil {
		t.Error("missing operator accepted")
	}
	// All missing: every one is named, by flag and config key, in the help's order, every time.
	const want = "missing settings, given by flag or config file key: --subscription (subscriptionId), --tenant (tenantId), " +
		"--resource-group (resourceGroup), --location (location), --name-prefix (namePrefix), --operator-object-id (operatorPrincipalId)"
	for range 5 {
		if err := (Config{}).Validate(); err == nil || err.Error() != want {
			t.Fatalf("empty config: %v\nwant %s", err, want)
		}
	}
}

// TestDestroyKeepsGroupWithForeignResources: a group carrying our tag is deleted only when
// everything left in it is a resource apply creates, by type and name, carrying our tag too;
// deleting a group deletes all it holds. The tag alone does not make a resource ours: an Azure
// Policy such as "Inherit a tag from the resource group" puts it on whatever a team creates there.
func TestDestroyKeepsGroupWithForeignResources(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	ours := testConfig.tags
	other := map[string]*string{TagKey: ptr("other")}
	id := func(rest string) *string { return ptr(testConfig.rgID() + "/providers/" + rest) }
	res := func(name, typ string, tags map[string]*string) *armresources.GenericResourceExpanded {
		return &armresources.GenericResourceExpanded{Name: ptr(name), Type: ptr(typ), Tags: tags}
	}
	for _, c := range []struct {
		name   string
		listed []*armresources.GenericResourceExpanded
		// named are what the skip step must name ("" entries: the group goes).
		named []string
	}{
		{"foreign resources, and a tagged gallery apply never creates", []*armresources.GenericResourceExpanded{
			res("team-kv", "Microsoft.KeyVault/vaults", nil),
			res("otheracr", "Microsoft.ContainerRegistry/registries", other),
			res("ours-too", "Microsoft.Compute/galleries", ours()),
		}, []string{"team-kv (Microsoft.KeyVault/vaults)", "otheracr (Microsoft.ContainerRegistry/registries)", "ours-too (Microsoft.Compute/galleries, tagged)"}},
		{"a VM that inherited the tag from the group", []*armresources.GenericResourceExpanded{
			{ID: id("Microsoft.Compute/virtualMachines/team-vm"), Name: ptr("team-vm"), Type: ptr("Microsoft.Compute/virtualMachines"), Tags: ours()},
		}, []string{"team-vm (Microsoft.Compute/virtualMachines, tagged)"}},
		{"one of our names under another type", []*armresources.GenericResourceExpanded{
			res(n.Registry, "Microsoft.Storage/storageAccounts", ours()),
		}, []string{n.Registry + " (Microsoft.Storage/storageAccounts, tagged)"}},
		{"one of our types under another name", []*armresources.GenericResourceExpanded{
			res(n.Vault+"2", "Microsoft.KeyVault/vaults", ours()),
		}, []string{n.Vault + "2 (Microsoft.KeyVault/vaults, tagged)"}},
		{"a tagged replica of another registry", []*armresources.GenericResourceExpanded{
			{ID: id("Microsoft.ContainerRegistry/registries/otheracr/replications/northeurope"), Name: ptr("otheracr/northeurope"), Type: ptr("Microsoft.ContainerRegistry/registries/replications"), Tags: ours()},
		}, []string{"otheracr/northeurope (Microsoft.ContainerRegistry/registries/replications, tagged)"}},
		{"a tagged image definition of another team in our gallery", []*armresources.GenericResourceExpanded{
			res(n.Gallery, "Microsoft.Compute/galleries", ours()),
			res(n.Gallery+"/team-windows", "Microsoft.Compute/galleries/images", ours()),
		}, []string{n.Gallery + "/team-windows (Microsoft.Compute/galleries/images, tagged)"}},
		{"a resource whose id is not of its reported type", []*armresources.GenericResourceExpanded{
			{ID: id("Microsoft.Compute/virtualMachines/" + n.Vault), Name: ptr(n.Vault), Type: ptr("Microsoft.KeyVault/vaults"), Tags: ours()},
		}, []string{n.Vault + " (Microsoft.KeyVault/vaults, tagged)"}},
		// What apply creates, with the build layer and a replica, reported by id or by name
		// path (ids in ARM's varying case): the group goes.
		{"exactly apply's resources", []*armresources.GenericResourceExpanded{
			res(n.Identity, "Microsoft.ManagedIdentity/userAssignedIdentities", ours()),
			{ID: id("Microsoft.ManagedIdentity/userAssignedIdentities/" + n.ImageBuilderIdentity), Name: ptr(n.ImageBuilderIdentity), Type: ptr("Microsoft.ManagedIdentity/userAssignedIdentities"), Tags: ours()},
			res(n.AttestationProvider, "Microsoft.Attestation/attestationProviders", ours()),
			res(n.Vault, "Microsoft.KeyVault/vaults", ours()),
			res(n.Registry, "Microsoft.ContainerRegistry/registries", ours()),
			{ID: id("Microsoft.ContainerRegistry/registries/" + n.Registry + "/replications/northeurope"), Name: ptr(n.Registry + "/northeurope"), Type: ptr("Microsoft.ContainerRegistry/registries/replications"), Tags: ours()},
			res(n.Registry+"/swedencentral", "Microsoft.ContainerRegistry/registries/replications", ours()),
			{ID: id("Microsoft.Compute/galleries/" + n.Gallery), Name: ptr(n.Gallery), Type: ptr("Microsoft.Compute/galleries"), Tags: ours()},
			res(n.Gallery+"/"+BuildImageDefinition, "Microsoft.Compute/galleries/images", ours()),
			{ID: ptr(strings.ToUpper(testConfig.rgID()+"/providers/Microsoft.Compute/galleries/"+n.Gallery) + "/images/" + BuildImageDefinition + "/versions/0.24.1"),
				Name: ptr(n.Gallery + "/" + BuildImageDefinition + "/0.24.1"), Type: ptr("Microsoft.Compute/galleries/images/versions"), Tags: ours()},
			res(n.ImageTemplate, "Microsoft.VirtualMachineImages/imageTemplates", ours()),
		}, nil},
	} {
		f, cl := newFakeAzure(t)
		if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
			t.Fatal(err)
		}
		f.foreign = c.listed
		steps, err := Destroy(ctx, cl, testConfig, false, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		// Our own resources were deleted either way.
		if len(f.vaults)+len(f.registries)+len(f.identities)+len(f.providers) != 0 {
			t.Errorf("%s: left %d vaults, %d registries, %d identities, %d providers", c.name, len(f.vaults), len(f.registries), len(f.identities), len(f.providers))
		}
		_, kept := f.groups["rg"]
		if c.named == nil {
			if kept || f.writes["group-delete"] != 1 {
				t.Errorf("%s: the group of our resources only was kept; steps %+v", c.name, steps)
			}
			continue
		}
		if !kept || f.writes["group-delete"] != 0 {
			t.Errorf("%s: the group holding foreign resources was deleted", c.name)
			continue
		}
		last := steps[len(steps)-1]
		if last.Kind != "resource group" || last.Action != "skip" || !strings.Contains(last.Detail, fmt.Sprintf("holds %d resources not created by this deployment", len(c.named))) {
			t.Errorf("%s: report %+v", c.name, last)
		}
		for _, want := range c.named {
			if !strings.Contains(last.Detail, want) {
				t.Errorf("%s: report does not name %q: %s", c.name, want, last.Detail)
			}
		}
		if strings.Contains(last.Detail, ", tagged)") != strings.Contains(last.Detail, "inherited from the group") {
			t.Errorf("%s: report does not say why tagged resources are not ours: %s", c.name, last.Detail)
		}
	}
}

// TestDestroyWithdrawsResourceGrants: destroy deletes the role assignments apply made on the
// registry and the attestation provider before it deletes them, so none is left to grant its role
// on a resource made later under the same name; an assignment apply did not make is left alone.
func TestDestroyWithdrawsResourceGrants(t *testing.T) {
	ctx := context.Background()
	f, cl := newFakeAzure(t)
	cfg := testConfig
	cfg.ClusterPrincipalID = "cluster-1"
	if _, _, err := Apply(ctx, cl, cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	n := NamesFor(cfg.NamePrefix)
	regScope := cfg.rgID() + "/providers/Microsoft.ContainerRegistry/registries/" + n.Registry
	provScope := cfg.rgID() + "/providers/Microsoft.Attestation/attestationProviders/" + n.AttestationProvider
	byHand := f.plant(regScope, "0b0b0b0b-0000-4000-8000-000000000001", "by-hand", RoleAcrPull)
	count := func() (n int) {
		for key := range f.assignments {
			if strings.HasPrefix(key, regScope+"|") || strings.HasPrefix(key, provScope+"|") {
				n++
			}
		}
		return n
	}
	// AcrPush (identity), AcrPull (cluster), Attestation Contributor (operator), and the one by hand.
	if got := count(); got != 4 {
		t.Fatalf("%d assignments on the registry and provider after apply, want 4", got)
	}
	// A registry that cannot be deleted keeps its grants: they are made again.
	f.failRegistryDelete = true
	kept := maps.Clone(f.assignments)
	steps, err := Destroy(ctx, cl, cfg, false, io.Discard)
	if err == nil || !hasStepDetail(steps, "AcrPull on registry "+n.Registry, "restored", "held by cluster-1") {
		t.Fatalf("destroy with the registry locked: %v; steps %+v", err, steps)
	}
	for key := range kept {
		if _, ok := f.assignments[key]; strings.HasPrefix(key, regScope+"|") && !ok {
			t.Errorf("assignment %s on the registry that stays was not restored", key)
		}
	}
	// Nor did it take the signing identity's signer role off the key: signing goes on.
	keyScope := signingKeyScope(cfg, n.Certificate)
	if _, ok := f.assignments[keyScope+"|"+assignmentName(keyScope, "principal-"+n.Identity, cfg.signerRoleID())]; !ok {
		t.Error("the destroy stopped by the registry removed the signer role's assignment: signing broke")
	}
	// Likewise when the delete fails because destroy's context ended meanwhile (a timeout, an
	// interrupt): the grants are restored all the same.
	cctx, cancel := context.WithCancel(ctx)
	f.onRegistryDelete = cancel
	if steps, err = Destroy(cctx, cl, cfg, false, io.Discard); err == nil || !hasStepDetail(steps, "AcrPull on registry "+n.Registry, "restored", "held by cluster-1") {
		t.Fatalf("destroy interrupted during the registry's delete: %v; steps %+v", err, steps)
	}
	for key := range kept {
		if _, ok := f.assignments[key]; strings.HasPrefix(key, regScope+"|") && !ok {
			t.Errorf("assignment %s on the registry that stays was not restored after the interrupt", key)
		}
	}
	f.failRegistryDelete, f.onRegistryDelete = false, nil
	steps, err = Destroy(ctx, cl, cfg, false, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// The grants went before the registry they were on: only the one by hand was left then.
	if !slices.Equal(f.grantsAtRegistryDelete, []string{byHand}) {
		t.Fatalf("assignments on the registry when it was deleted: %v, want only %s", f.grantsAtRegistryDelete, byHand)
	}
	if _, ok := f.assignments[byHand]; !ok || count() != 1 {
		t.Fatalf("after destroy: by-hand assignment kept %v, %d assignments on the registry and provider, want only it", ok, count())
	}
	if !hasStepDetail(steps, "AcrPull on registry "+n.Registry, "deleted", "held by cluster-1") ||
		!hasStepDetail(steps, "Attestation Contributor on attestation provider "+n.AttestationProvider, "deleted", "held by "+cfg.OperatorPrincipalID) {
		t.Fatalf("destroy steps: %+v", steps)
	}
}

// TestApplyRefusesForeignResources: a resource under one of the deployment's names that does not
// carry its tag is neither overwritten nor adopted; one that does keeps the tags others added.
func TestApplyRefusesForeignResources(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	other := func() map[string]*string { return map[string]*string{TagKey: ptr("other"), "owner": ptr("team")} }
	for _, c := range []struct {
		kind, name string
		put        func(f *fakeAzure, tags map[string]*string)
		tags       func(f *fakeAzure) map[string]*string
	}{
		{"managed identity", n.Identity,
			func(f *fakeAzure, tags map[string]*string) {
				f.identities[n.Identity] = armmsi.Identity{Location: ptr("westeurope"), Tags: tags}
			},
			func(f *fakeAzure) map[string]*string { return f.identities[n.Identity].Tags }},
		{"attestation provider", n.AttestationProvider,
			func(f *fakeAzure, tags map[string]*string) {
				f.providers[n.AttestationProvider] = Provider{Location: "westeurope", Tags: tags}
			},
			func(f *fakeAzure) map[string]*string { return f.providers[n.AttestationProvider].Tags }},
		{"key vault", n.Vault,
			func(f *fakeAzure, tags map[string]*string) {
				f.vaults[n.Vault] = armkeyvault.VaultCreateOrUpdateParameters{Location: ptr("westeurope"), Tags: tags, Properties: &armkeyvault.VaultProperties{
					AccessPolicies: []*armkeyvault.AccessPolicyEntry{{ObjectID: ptr("someone")}},
				}}
			},
			func(f *fakeAzure) map[string]*string { return f.vaults[n.Vault].Tags }},
		{"container registry", n.Registry,
			func(f *fakeAzure, tags map[string]*string) {
				f.registries[n.Registry] = armcontainerregistry.Registry{Location: ptr("westeurope"), Tags: tags}
			},
			func(f *fakeAzure) map[string]*string { return f.registries[n.Registry].Tags }},
	} {
		for _, foreign := range []map[string]*string{nil, other()} {
			f, cl := newFakeAzure(t)
			f.groups["rg"] = armresources.ResourceGroup{Location: ptr("westeurope")}
			c.put(f, foreign)
			plan, err := Plan(ctx, cl, testConfig)
			if err != nil {
				t.Fatal(err)
			}
			var planned bool
			for _, s := range plan {
				if s.Name == c.name && s.Action == "refuse" && strings.Contains(s.Detail, "not created by this deployment") {
					planned = true
				}
			}
			if !planned {
				t.Errorf("%s with tags %v: plan %+v", c.kind, foreign, plan)
			}
			_, _, err = Apply(ctx, cl, testConfig, io.Discard)
			if !errors.Is(err, ErrNotOwned) || !strings.Contains(err.Error(), c.kind+" "+c.name) || !strings.Contains(err.Error(), "--name-prefix") {
				t.Errorf("%s with tags %v: apply error %v", c.kind, foreign, err)
			}
			// Refused before any write at all, so nothing half-done is left either.
			if len(f.writes) != 0 {
				t.Errorf("%s with tags %v: apply wrote %v", c.kind, foreign, f.writes)
			}
			if got := c.tags(f); len(got) != len(foreign) || (foreign != nil && *got[TagKey] != "other") {
				t.Errorf("%s: tags changed to %v", c.kind, got)
			}
		}
		// Ours (a re-apply): updated, and the tags others added stay.
		f, cl := newFakeAzure(t)
		f.groups["rg"] = armresources.ResourceGroup{Location: ptr("westeurope")}
		c.put(f, map[string]*string{TagKey: ptr("demo1"), "cost-center": ptr("42")})
		if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
			t.Fatalf("%s ours: %v", c.kind, err)
		}
		if got := c.tags(f); len(got) != 2 || got["cost-center"] == nil || *got["cost-center"] != "42" || *got[TagKey] != "demo1" {
			t.Errorf("%s ours: tags after apply %v", c.kind, got)
		}
	}
}

// TestApplyRefusesHSMDowngrade: a rerun without --hsm over a deployment made with it is refused
// before any write, and shown as refused by plan, since it would make the vault Standard and sign
// with a new software key from then on; with --hsm (flag or config file) it goes through.
func TestApplyRefusesHSMDowngrade(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	hsm := testConfig
	hsm.HSM = true
	f, cl := newFakeAzure(t)
	var keyTypes []string
	cl.Certificates = func(_ context.Context, vaultURL string, c provision.SigningCertificate) (*provision.Result, error) {
		keyTypes = append(keyTypes, c.KeyType)
		return &provision.Result{KeyID: vaultURL + "keys/" + c.Name + "/v1", Certificate: &x509.Certificate{Raw: []byte("der")}}, nil
	}
	if _, _, err := Apply(ctx, cl, hsm, io.Discard); err != nil {
		t.Fatal(err)
	}
	if sku := f.vaults[n.Vault].Properties.SKU.Name; *sku != armkeyvault.SKUNamePremium {
		t.Fatalf("--hsm made a %s vault", *sku)
	}
	clear(f.writes)

	plan, err := Plan(ctx, cl, testConfig)
	if err != nil {
		t.Fatal(err)
	}
	var planned bool
	for _, s := range plan {
		planned = planned || (s.Name == n.Vault && s.Action == "refuse" && strings.Contains(s.Detail, "--hsm"))
	}
	if !planned {
		t.Errorf("plan without --hsm does not refuse the vault: %+v", plan)
	}
	_, _, err = Apply(ctx, cl, testConfig, io.Discard)
	if !errors.Is(err, ErrDowngrade) || !strings.Contains(err.Error(), "--hsm") || !strings.Contains(err.Error(), n.Vault) {
		t.Errorf("apply without --hsm: %v", err)
	}
	if len(f.writes) != 0 || *f.vaults[n.Vault].Properties.SKU.Name != armkeyvault.SKUNamePremium || len(keyTypes) != 1 {
		t.Errorf("apply without --hsm wrote %v, vault %s, certificate requests %v", f.writes, *f.vaults[n.Vault].Properties.SKU.Name, keyTypes)
	}

	if _, _, err := Apply(ctx, cl, hsm, io.Discard); err != nil {
		t.Fatalf("rerun with --hsm: %v", err)
	}
	if !slices.Equal(keyTypes, []string{"RSA-HSM", "RSA-HSM"}) {
		t.Errorf("certificate key types requested: %v", keyTypes)
	}
}

// TestApplyRefusesABACRegistry: a registry an administrator moved to ABAC repository permissions
// is shown as refused by plan and refused by apply before any write, registry included, since
// apply would switch it back to legacy mode, where every AcrPush, AcrPull and AcrDelete assignment
// works again; a mode apply does not know is refused alike. Back in legacy mode, apply goes through.
func TestApplyRefusesABACRegistry(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	for _, c := range []struct {
		mode armcontainerregistry.RoleAssignmentMode
		says []string
	}{
		{armcontainerregistry.RoleAssignmentModeAbacRepositoryPermissions, []string{"AbacRepositoryPermissions", "AcrPush", "Container Registry Repository Writer", "not support yet"}},
		{"SomeFutureMode", []string{"SomeFutureMode", "does not know"}},
	} {
		f, cl := newFakeAzure(t)
		if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		r := f.registries[n.Registry]
		r.Properties.RoleAssignmentMode = ptr(c.mode)
		f.registries[n.Registry] = r
		clear(f.writes)
		f.mu.Unlock()

		plan, err := Plan(ctx, cl, testConfig)
		if err != nil {
			t.Fatal(err)
		}
		var step *Step
		for i := range plan {
			if plan[i].Kind == "container registry" && plan[i].Name == n.Registry {
				step = &plan[i]
			}
		}
		if step == nil || step.Action != "refuse" || !strings.HasSuffix(step.Detail, "apply would refuse") {
			t.Errorf("%s: plan step of the registry %+v", c.mode, step)
		} else {
			for _, want := range c.says {
				if !strings.Contains(step.Detail, want) {
					t.Errorf("%s: plan detail does not say %q: %s", c.mode, want, step.Detail)
				}
			}
		}
		_, _, err = Apply(ctx, cl, testConfig, io.Discard)
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "container registry "+n.Registry) {
			t.Errorf("%s: apply error %v", c.mode, err)
		}
		for _, want := range c.says {
			if err != nil && !strings.Contains(err.Error(), want) {
				t.Errorf("%s: apply error does not say %q: %v", c.mode, want, err)
			}
		}
		if len(f.writes) != 0 || *f.registries[n.Registry].Properties.RoleAssignmentMode != c.mode {
			t.Errorf("%s: apply wrote %v; registry mode now %s", c.mode, f.writes, *f.registries[n.Registry].Properties.RoleAssignmentMode)
		}
	}

	// Switched back to legacy mode by hand, or reporting no mode: updated in place.
	for _, mode := range []*armcontainerregistry.RoleAssignmentMode{ptr(armcontainerregistry.RoleAssignmentModeLegacyRegistryPermissions), nil} {
		f, cl := newFakeAzure(t)
		if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
			t.Fatal(err)
		}
		r := f.registries[n.Registry]
		r.Properties.RoleAssignmentMode = mode
		f.registries[n.Registry] = r
		plan, err := Plan(ctx, cl, testConfig)
		if err != nil || !hasStep(plan, n.Registry, "exists") {
			t.Errorf("mode %v: plan %+v, %v", mode, plan, err)
		}
		if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
			t.Errorf("mode %v: %v", mode, err)
		}
		if got := f.registries[n.Registry].Properties.RoleAssignmentMode; got == nil || *got != armcontainerregistry.RoleAssignmentModeLegacyRegistryPermissions {
			t.Errorf("mode %v: apply sent %v", mode, got)
		}
	}
}

// TestSigningRolesScopedToObjects: the signing identity's Key Vault roles are on the signing key,
// certificate and secret only, and the grants of earlier versions (Crypto User and Certificate
// User on the whole vault, then Crypto User on the key) are withdrawn, but only once the roles
// replacing them have had RoleSettle to take effect: withdrawn at once, signing could fail until
// Azure applied the new assignments.
func TestSigningRolesScopedToObjects(t *testing.T) {
	ctx := context.Background()
	f, cl := newFakeAzure(t)
	n := NamesFor("demo1")
	vaultScope := testConfig.rgID() + "/providers/Microsoft.KeyVault/vaults/" + n.Vault
	keyScope := vaultScope + "/keys/attested-signing"
	principal := "principal-" + n.Identity
	// What earlier applies left: the identity's roles on the whole vault, and Crypto User on the key.
	legacy := []struct{ scope, role string }{
		{vaultScope, RoleKeyVaultCryptoUser}, {vaultScope, RoleKeyVaultCertificateUser}, {keyScope, RoleKeyVaultCryptoUser},
	}
	for _, g := range legacy {
		f.plant(g.scope, "", principal, g.role)
	}
	held := func() map[string]bool {
		got := map[string]bool{}
		for key, a := range f.assignments {
			if *a.Properties.PrincipalID != principal || !strings.HasPrefix(key, vaultScope) {
				continue
			}
			role := (*a.Properties.RoleDefinitionID)[strings.LastIndex(*a.Properties.RoleDefinitionID, "/")+1:]
			got[key[:strings.LastIndex(key, "|")]+" "+role] = true
		}
		return got
	}
	want := map[string]bool{
		keyScope + " " + testConfig.signerRoleID():                                   true,
		vaultScope + "/certificates/attested-signing " + RoleKeyVaultCertificateUser: true,
		vaultScope + "/secrets/attested-signing " + RoleKeyVaultSecretsUser:          true,
	}
	for _, run := range []struct {
		name string
		// settled makes every assignment look made RoleSettle ago or earlier.
		settled bool
		// legacyKept is whether the earlier grants are still held after the run.
		legacyKept bool
	}{
		{"first apply", false, true},
		{"rerun at once", false, true},
		{"rerun once settled", true, false},
		{"rerun after", true, false},
	} {
		if run.settled {
			f.backdate()
		}
		_, steps, err := Apply(ctx, cl, testConfig, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", run.name, err)
		}
		got := held()
		for k := range want {
			if !got[k] {
				t.Fatalf("%s: missing %s; have %v", run.name, k, got)
			}
		}
		for _, g := range legacy {
			if k := g.scope + " " + g.role; got[k] != run.legacyKept {
				t.Fatalf("%s: earlier grant %s held %v, want %v", run.name, k, got[k], run.legacyKept)
			}
		}
		if len(got) != len(want)+len(legacy)*map[bool]int{true: 1}[run.legacyKept] {
			t.Fatalf("%s: identity's assignments on the vault: %v", run.name, got)
		}
		if run.legacyKept && !hasStepDetail(steps, legacyCryptoUserLabel+" on key attested-signing", "kept", "withdrawn by the first apply after") {
			t.Fatalf("%s: steps do not say the earlier grant is kept and until when: %+v", run.name, steps)
		}
	}
}

// TestLegacyWithdrawnWhenReplacementPredates: when the object-scoped roles were assigned long ago
// under other names (by hand, before apply; assign takes ARM's RoleAssignmentExists for success),
// their age is read from the scope's listing, and the wider grants of earlier versions go on the
// first apply instead of being kept for ever.
func TestLegacyWithdrawnWhenReplacementPredates(t *testing.T) {
	ctx := context.Background()
	f, cl := newFakeAzure(t)
	n := NamesFor("demo1")
	principal := "principal-" + n.Identity
	put := func(scope, name, role string) { f.plant(scope, name, principal, role) }
	for i, a := range signingAssignments(testConfig, n.Certificate) {
		put(a.scope, fmt.Sprintf("0a0a0a0a-0000-4000-8000-00000000000%d", i), a.role)
	}
	keyScope := signingKeyScope(testConfig, n.Certificate)
	put(keyScope, assignmentName(keyScope, principal, RoleKeyVaultCryptoUser), RoleKeyVaultCryptoUser)
	_, steps, err := Apply(ctx, cl, testConfig, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.assignments[keyScope+"|"+assignmentName(keyScope, principal, RoleKeyVaultCryptoUser)]; ok {
		t.Fatalf("Crypto User kept although its replacements are old: %+v", steps)
	}
	if !hasStep(steps, legacyCryptoUserLabel+" on key "+n.Certificate, "revoked") {
		t.Fatalf("steps: %+v", steps)
	}
}

// TestUndatedReplacementKeepsLegacy: when ARM reports no creation time for the roles replacing a
// grant of an earlier version, apply cannot tell when they took effect: it keeps the old grant
// and says it is for the operator to remove, rather than promising a time it would push back at
// every run.
func TestUndatedReplacementKeepsLegacy(t *testing.T) {
	ctx := context.Background()
	f, cl := newFakeAzure(t)
	f.undated = true
	n := NamesFor("demo1")
	principal := "principal-" + n.Identity
	keyScope := signingKeyScope(testConfig, n.Certificate)
	legacy := f.plant(keyScope, "", principal, RoleKeyVaultCryptoUser)
	for run := range 2 {
		_, steps, err := Apply(ctx, cl, testConfig, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := f.assignments[legacy]; !ok || !hasStepDetail(steps, legacyCryptoUserLabel+" on key "+n.Certificate, "kept", "ARM reported no creation time") {
			t.Fatalf("run %d: Crypto User kept %v; steps %+v", run, ok, steps)
		}
		f.backdate()
	}
}

// TestFormerHoldersWithdrawn: the grants an earlier apply made to an operator, a cluster or a
// managed identity the configuration no longer names are withdrawn (plan says so first), and
// assignments of the same roles that apply did not make are left alone.
func TestFormerHoldersWithdrawn(t *testing.T) {
	ctx := context.Background()
	f, cl := newFakeAzure(t)
	first := testConfig
	first.ClusterPrincipalID = "cluster-1"
	if _, _, err := Apply(ctx, cl, first, io.Discard); err != nil {
		t.Fatal(err)
	}
	n := NamesFor(first.NamePrefix)
	regScope := first.rgID() + "/providers/Microsoft.ContainerRegistry/registries/" + n.Registry
	// Someone grants AcrPull to another principal by hand (a random assignment name).
	f.plant(regScope, "0b0b0b0b-0000-4000-8000-000000000001", "by-hand", RoleAcrPull)
	holders := func(scope, role string) []string {
		var p []string
		for key, a := range f.assignments {
			if strings.HasPrefix(key, scope+"|") && strings.HasSuffix(*a.Properties.RoleDefinitionID, "/"+role) {
				p = append(p, *a.Properties.PrincipalID)
			}
		}
		slices.Sort(p)
		return p
	}
	// A rerun that does not name the cluster keeps its grant, and says so.
	noCluster := first
	noCluster.ClusterPrincipalID = ""
	_, steps, err := Apply(ctx, cl, noCluster, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := holders(regScope, RoleAcrPull); !slices.Equal(got, []string{"by-hand", "cluster-1"}) || !hasStepDetail(steps, "AcrPull (cluster)", "kept", "held by cluster-1") {
		t.Fatalf("rerun without --cluster-principal-id: AcrPull held by %v; steps %+v", got, steps)
	}
	second := first
	second.OperatorPrincipalID, second.ClusterPrincipalID = "operator-2", "cluster-2"
	plan, err := Plan(ctx, cl, second)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct{ name, action, detail string }{
		{"Attestation Contributor (operator)", "withdraw", "from " + first.OperatorPrincipalID + ","},
		{"Key Vault Certificates Officer (operator)", "withdraw", "from " + first.OperatorPrincipalID + ","},
		// cluster-2 holds nothing yet: cluster-1 keeps pulling meanwhile.
		{"AcrPull (cluster)", "keep", "held by cluster-1,"},
	} {
		if !hasStepDetail(plan, want.name, want.action, want.detail) {
			t.Errorf("plan has no %s of %s %s: %+v", want.action, want.name, want.detail, plan)
		}
	}
	if hasStepDetail(plan, "AcrPull (cluster)", "withdraw", "by-hand") {
		t.Errorf("plan withdraws an assignment apply did not make: %+v", plan)
	}
	_, steps, err = Apply(ctx, cl, second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// The cluster's pulls serve production: cluster-1 keeps AcrPull until cluster-2's grant has
	// had RoleSettle to take effect, and the steps say until when; the operator's grants go at once.
	if got := holders(regScope, RoleAcrPull); !slices.Equal(got, []string{"by-hand", "cluster-1", "cluster-2"}) ||
		!hasStepDetail(steps, "AcrPull (cluster)", "kept", "withdrawn by the first apply after") {
		t.Fatalf("move to cluster-2: AcrPull held by %v; steps %+v", got, steps)
	}
	if plan, err := Plan(ctx, cl, second); err != nil || !hasStepDetail(plan, "AcrPull (cluster)", "keep", "held by cluster-1") {
		t.Fatalf("plan before cluster-2's grant settles: %+v %v", plan, err)
	}
	f.backdate()
	_, steps, err = Apply(ctx, cl, second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	provScope := first.rgID() + "/providers/Microsoft.Attestation/attestationProviders/" + n.AttestationProvider
	for _, c := range []struct {
		scope, role string
		want        []string
	}{
		{provScope, RoleAttestationContributor, []string{"operator-2"}},
		{first.vaultID(), RoleKeyVaultCertificatesOfficer, []string{"operator-2"}},
		{regScope, RoleAcrPull, []string{"by-hand", "cluster-2"}},
		{regScope, RoleAcrPush, []string{"principal-" + n.Identity}},
	} {
		if got := holders(c.scope, c.role); !slices.Equal(got, c.want) {
			t.Errorf("%s at %s held by %v, want %v", roleLabel(c.role), c.scope, got, c.want)
		}
	}
	if !hasStepDetail(steps, "AcrPull (cluster)", "withdrawn", "--cluster-principal-id no longer names it") {
		t.Errorf("apply steps: %+v", steps)
	}
	// Converged: neither plan nor apply withdraws anything more.
	plan, err = Plan(ctx, cl, second)
	if err != nil {
		t.Fatal(err)
	}
	_, steps, err = Apply(ctx, cl, second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range append(plan, steps...) {
		if s.Action == "withdraw" || s.Action == "withdrawn" {
			t.Errorf("after convergence: %+v", s)
		}
	}

	// The managed identity made again (a new principal): its predecessor's grants go.
	f.mu.Lock()
	for key, a := range f.assignments {
		if *a.Properties.PrincipalID == "principal-"+n.Identity {
			a.Properties.PrincipalID = ptr("deleted-identity")
			delete(f.assignments, key)
			scope := key[:strings.LastIndex(key, "|")]
			role := (*a.Properties.RoleDefinitionID)[strings.LastIndex(*a.Properties.RoleDefinitionID, "/")+1:]
			f.assignments[scope+"|"+assignmentName(scope, "deleted-identity", role)] = a
		}
	}
	f.mu.Unlock()
	if _, _, err := Apply(ctx, cl, second, io.Discard); err != nil {
		t.Fatal(err)
	}
	for key, a := range f.assignments {
		if *a.Properties.PrincipalID == "deleted-identity" {
			t.Errorf("the former identity still holds %s", key)
		}
	}
}

// TestSignerRole: the signing identity signs through a custom role holding exactly the data
// actions the plugin uses on the key (read it, sign with it), not Key Vault Crypto User, whose
// keys/update would let a build job re-enable a key an administrator disabled and keys/backup
// export it. Reruns keep the role and the assignment, a role widened since is narrowed again,
// plan shows it, and destroy removes it.
func TestSignerRole(t *testing.T) {
	ctx := context.Background()
	f, cl := newFakeAzure(t)
	n := NamesFor("demo1")
	keyScope := testConfig.vaultID() + "/keys/" + n.Certificate
	name := "attested-kv signer demo1 rg sub"

	plan, err := Plan(ctx, cl, testConfig)
	if err != nil || !hasStepDetail(plan, name, "create", "Microsoft.KeyVault/vaults/keys/sign/action") {
		t.Fatalf("plan: %+v %v", plan, err)
	}
	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	checkRole := func(when string) {
		t.Helper()
		role, ok := f.roleDefs[testConfig.signerRoleID()]
		if !ok || role.Properties == nil || *role.Properties.RoleName != name || len(role.Properties.Permissions) != 1 {
			t.Fatalf("%s: signer role %+v", when, role.Properties)
		}
		p := role.Properties.Permissions[0]
		var data []string
		for _, a := range p.DataActions {
			data = append(data, *a)
		}
		slices.Sort(data)
		if want := []string{"Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/sign/action"}; !slices.Equal(data, want) ||
			len(p.Actions)+len(p.NotActions)+len(p.NotDataActions) != 0 {
			t.Fatalf("%s: signer role permissions %v (+%d actions, %d not actions, %d not data actions), want exactly %v",
				when, data, len(p.Actions), len(p.NotActions), len(p.NotDataActions), want)
		}
		if s := role.Properties.AssignableScopes; len(s) != 1 || *s[0] != testConfig.rgID() {
			t.Fatalf("%s: assignable scopes %v", when, s)
		}
	}
	checkRole("apply")
	// The key's assignment holds the signer role; Crypto User is held nowhere.
	var onKey []string
	for key, a := range f.assignments {
		if strings.HasSuffix(*a.Properties.RoleDefinitionID, "/"+RoleKeyVaultCryptoUser) {
			t.Errorf("Key Vault Crypto User assigned at %s", key)
		}
		if strings.HasPrefix(key, keyScope+"|") {
			onKey = append(onKey, *a.Properties.PrincipalID+" "+*a.Properties.RoleDefinitionID)
		}
	}
	if want := "principal-" + n.Identity + " /subscriptions/sub/providers/Microsoft.Authorization/roleDefinitions/" + testConfig.signerRoleID(); len(onKey) != 1 || onKey[0] != want {
		t.Fatalf("assignments on the key: %v, want %s", onKey, want)
	}

	// A rerun writes neither the role nor the assignment again.
	before := maps.Clone(f.writes)
	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	if f.writes["role-definition"] != before["role-definition"] || f.writes["assignment"] != before["assignment"] {
		t.Fatalf("rerun wrote the role %d times, assignments %d times", f.writes["role-definition"]-before["role-definition"], f.writes["assignment"]-before["assignment"])
	}
	if plan, err := Plan(ctx, cl, testConfig); err != nil || !hasStep(plan, name, "exists") {
		t.Fatalf("plan after apply: %+v %v", plan, err)
	}

	// Widened since (keys/update added): plan says update, apply narrows it back in place.
	f.mu.Lock()
	role := f.roleDefs[testConfig.signerRoleID()]
	role.Properties.Permissions[0].DataActions = append(role.Properties.Permissions[0].DataActions, ptr("Microsoft.KeyVault/vaults/keys/update/action"))
	f.mu.Unlock()
	if plan, err := Plan(ctx, cl, testConfig); err != nil || !hasStep(plan, name, "update") {
		t.Fatalf("plan of a widened role: %+v %v", plan, err)
	}
	_, steps, err := Apply(ctx, cl, testConfig, io.Discard)
	if err != nil || !hasStep(steps, name, "updated") || f.writes["role-definition"] != before["role-definition"]+1 || f.writes["assignment"] != before["assignment"] {
		t.Fatalf("apply over a widened role: %v, steps %+v", err, steps)
	}
	checkRole("rerun over a widened role")

	if _, err := Destroy(ctx, cl, testConfig, false, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.roleDefs[testConfig.signerRoleID()]; ok {
		t.Fatal("destroy kept the signer role")
	}

	// A role under its id that is not ours: refused before any write.
	f2, cl2 := newFakeAzure(t)
	f2.groups["rg"] = armresources.ResourceGroup{Location: ptr("westeurope"), Tags: testConfig.tags()}
	f2.roleDefs[testConfig.signerRoleID()] = armauthorization.RoleDefinition{Properties: &armauthorization.RoleDefinitionProperties{RoleName: ptr("someone else's role")}}
	if plan, err := Plan(ctx, cl2, testConfig); err != nil || !hasStep(plan, name, "refuse") {
		t.Errorf("plan over a foreign role: %+v %v", plan, err)
	}
	if _, _, err := Apply(ctx, cl2, testConfig, io.Discard); !errors.Is(err, ErrNotOwned) || len(f2.writes) != 0 {
		t.Errorf("apply over a foreign role: %v, writes %v", err, f2.writes)
	}
}

// TestApplyRecoversSoftDeletedVault: after a destroy without --purge, apply recovers the vault it
// soft-deleted; a soft-deleted vault that is not ours is refused, and destroy --purge purges ours.
func TestApplyRecoversSoftDeletedVault(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	f, cl := newFakeAzure(t)
	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, err := Destroy(ctx, cl, testConfig, false, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.deletedVaults[n.Vault]; !ok || len(f.groups) != 0 {
		t.Fatalf("destroy: deleted vaults %v, groups %d", f.deletedVaults, len(f.groups))
	}
	plan, err := Plan(ctx, cl, testConfig)
	if err != nil || !hasStep(plan, n.Vault, "recover") || len(plan) != 10 {
		t.Fatalf("plan: %+v %v", plan, err)
	}
	_, steps, err := Apply(ctx, cl, testConfig, io.Discard)
	if err != nil {
		t.Fatalf("apply after destroy: %v", err)
	}
	if v := f.vaults[n.Vault]; v.Properties == nil || v.Properties.CreateMode == nil || *v.Properties.CreateMode != armkeyvault.CreateModeRecover || !hasStep(steps, n.Vault, "recovered") {
		t.Fatalf("vault not recovered: %+v", v.Properties)
	}
	if len(f.deletedVaults) != 0 {
		t.Fatalf("still soft-deleted: %v", f.deletedVaults)
	}
	// A re-apply is an ordinary update.
	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil || f.vaults[n.Vault].Properties.CreateMode != nil {
		t.Fatalf("re-apply: %v", err)
	}

	// destroy, then destroy --purge, purges it.
	if _, err := Destroy(ctx, cl, testConfig, false, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, err := Destroy(ctx, cl, testConfig, true, io.Discard); err != nil || len(f.deletedVaults) != 0 || f.writes["vault-purge"] != 1 {
		t.Fatalf("destroy --purge of a soft-deleted vault: %v, %v left", err, f.deletedVaults)
	}

	// Someone else's soft-deleted vault under our name: refused, before any write.
	for _, tags := range []map[string]*string{nil, {TagKey: ptr("other")}} {
		f, cl := newFakeAzure(t)
		f.deletedVaults[n.Vault] = tags
		plan, err := Plan(ctx, cl, testConfig)
		if err != nil || !hasStep(plan, n.Vault, "refuse") {
			t.Fatalf("plan: %+v %v", plan, err)
		}
		_, _, err = Apply(ctx, cl, testConfig, io.Discard)
		if !errors.Is(err, ErrNotOwned) || !strings.Contains(err.Error(), "soft-deleted") || !strings.Contains(err.Error(), "--name-prefix") || len(f.writes) != 0 {
			t.Fatalf("apply over a foreign soft-deleted vault: %v, writes %v", err, f.writes)
		}
		if _, err := Destroy(ctx, cl, testConfig, true, io.Discard); err != nil || f.writes["vault-purge"] != 0 {
			t.Fatalf("destroy --purge purged a foreign vault: %v", err)
		}
	}
}

// TestSoftDeletedVaultOfAnotherGroup: soft-deleted vaults are looked up by subscription, location
// and name, and the tag holds only the prefix, so a deployment with the same prefix in another
// resource group finds the vault an earlier destroy (without --purge) left of the first one. Its
// destroy --purge must not purge that vault (and its keys, irreversibly), nor its apply recover it.
func TestSoftDeletedVaultOfAnotherGroup(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	f, cl := newFakeAzure(t)
	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, err := Destroy(ctx, cl, testConfig, false, io.Discard); err != nil {
		t.Fatal(err)
	}
	other := testConfig
	other.ResourceGroup = "rg2"
	before := maps.Clone(f.writes)

	steps, err := Destroy(ctx, cl, other, true, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.deletedVaults[n.Vault]; !ok || f.writes["vault-purge"] != 0 {
		t.Fatalf("destroy --purge in another group purged the first deployment's vault: %+v", steps)
	}
	if !hasStepDetail(steps, n.Vault, "skip", "another deployment") {
		t.Errorf("the skipped vault is not reported: %+v", steps)
	}

	plan, err := Plan(ctx, cl, other)
	if err != nil || !hasStepDetail(plan, n.Vault, "refuse", "--resource-group rg ") {
		t.Errorf("plan in another group: %+v %v", plan, err)
	}
	_, _, err = Apply(ctx, cl, other, io.Discard)
	if !errors.Is(err, ErrNotOwned) {
		t.Fatalf("apply in another group: %v", err)
	}
	for _, want := range []string{"another deployment", "/resourceGroups/rg/", "apply with --resource-group rg ", "destroy --purge with --resource-group rg ", "--name-prefix"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not say %q: %v", want, err)
		}
	}
	if !maps.Equal(f.writes, before) {
		t.Errorf("wrote in another group: %v, before %v", f.writes, before)
	}

	// The deployment it belongs to still recovers it.
	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil || len(f.deletedVaults) != 0 {
		t.Fatalf("apply in the vault's own group: %v, still soft-deleted %v", err, f.deletedVaults)
	}
}

// TestDeletedVaultOwner: whose a soft-deleted vault is, by its tag and its original resource id.
func TestDeletedVaultOwner(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	ours := testConfig.vaultID()
	for _, tc := range []struct {
		name  string
		tags  map[string]*string
		id    string // "" = not reported
		owner deletedOwner
		// what to proceed with says, for another deployment's vault
		proceed string
	}{
		{name: "ours", tags: testConfig.tags(), id: ours, owner: deletedOurs},
		{name: "ours, id in another case", tags: testConfig.tags(), id: strings.ToUpper(ours), owner: deletedOurs},
		{name: "another group", tags: testConfig.tags(), id: "/subscriptions/sub/resourceGroups/teamrg/providers/Microsoft.KeyVault/vaults/" + n.Vault,
			owner: deletedOtherVault, proceed: "--resource-group teamrg to"},
		{name: "another subscription", tags: testConfig.tags(), id: "/subscriptions/sub2/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/" + n.Vault,
			owner: deletedOtherVault, proceed: "--resource-group rg --subscription sub2 to"},
		{name: "id not reported", tags: testConfig.tags(), owner: deletedOtherVault, proceed: "from the deployment it belongs to"},
		{name: "untagged", id: ours, owner: deletedForeign},
		{name: "another prefix", tags: map[string]*string{TagKey: ptr("other")}, id: ours, owner: deletedForeign},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, cl := newFakeAzure(t)
			f.deletedVaults[n.Vault] = tc.tags
			if tc.id != "" {
				f.deletedVaultIDs[n.Vault] = tc.id
			}
			d, err := deletedVault(ctx, cl, testConfig)
			if err != nil || d.owner != tc.owner {
				t.Fatalf("owner %v, %v; want %v", d.owner, err, tc.owner)
			}
			if tc.proceed != "" && !strings.Contains(d.howToProceed(testConfig), tc.proceed) {
				t.Errorf("how to proceed: %q, want %q", d.howToProceed(testConfig), tc.proceed)
			}
			_, _, err = Apply(ctx, cl, testConfig, io.Discard)
			if tc.owner == deletedOurs {
				if err != nil || len(f.deletedVaults) != 0 {
					t.Fatalf("apply did not recover our vault: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrNotOwned) || len(f.writes) != 0 {
				t.Fatalf("apply over it: %v, writes %v", err, f.writes)
			}
			if _, err := Destroy(ctx, cl, testConfig, true, io.Discard); err != nil || f.writes["vault-purge"] != 0 || len(f.deletedVaults) != 1 {
				t.Fatalf("destroy --purge purged it: %v", err)
			}
		})
	}
}

func hasStepDetail(steps []Step, name, action, detail string) bool {
	for _, s := range steps {
		if s.Name == name && s.Action == action && strings.Contains(s.Detail, detail) {
			return true
		}
	}
	return false
}

func hasStep(steps []Step, name, action string) bool {
	for _, s := range steps {
		if s.Name == name && s.Action == action {
			return true
		}
	}
	return false
}

// TestApplyReportsReplacedCertificate: when the vault's signing certificate did not match the
// requested policy and a new version was made, apply says so and why (the trust store it writes
// trusts the new version only).
func TestApplyReportsReplacedCertificate(t *testing.T) {
	_, cl := newFakeAzure(t)
	cl.Certificates = func(_ context.Context, vaultURL string, c provision.SigningCertificate) (*provision.Result, error) {
		return &provision.Result{KeyID: vaultURL + "keys/" + c.Name + "/v2", Certificate: &x509.Certificate{Raw: []byte("der")},
			Replaced: []string{"key exportable"}}, nil
	}
	var progress strings.Builder
	out, steps, err := Apply(context.Background(), cl, testConfig, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(progress.String(), "new version") || !strings.Contains(progress.String(), "key exportable") {
		t.Fatalf("apply did not report the new certificate version and why:\n%s", progress.String())
	}
	// The consequences: old signatures stop verifying, and the pin changes to the new thumbprint.
	var detail string
	for _, s := range steps {
		if s.Kind == "certificate" && s.Action == "new version" {
			detail = s.Detail
		}
	}
	for _, want := range []string{"previous certificate will no longer verify", "trust store", "signingCertSHA256", out.CertificateThumbprint} {
		if !strings.Contains(detail, want) {
			t.Errorf("the new-version step does not say %q: %q", want, detail)
		}
	}
}

// TestApplyRefusesDisabledCertificate: a signing certificate an administrator disabled stops
// apply, with the refusal as its error (not a failure a rerun completes), and no outputs.
func TestApplyRefusesDisabledCertificate(t *testing.T) {
	_, cl := newFakeAzure(t)
	cl.Certificates = func(_ context.Context, _ string, c provision.SigningCertificate) (*provision.Result, error) {
		return nil, fmt.Errorf("certificate %s version v1 is disabled: %w: enable it, or delete it, then run apply again", c.Name, provision.ErrCertificateDisabled)
	}
	out, steps, err := Apply(context.Background(), cl, testConfig, io.Discard)
	if !errors.Is(err, provision.ErrCertificateDisabled) || out != nil {
		t.Fatalf("apply over a disabled certificate: %v, outputs %+v", err, out)
	}
	if strings.Contains(err.Error(), "run apply again to complete") || !strings.Contains(err.Error(), "certificate attested-signing") {
		t.Errorf("the refusal reads as a failure to rerun, or does not name the certificate: %v", err)
	}
	for _, s := range steps {
		if s.Kind == "certificate" || strings.HasPrefix(s.Name, "Key Vault Crypto") {
			t.Errorf("apply went on past the refusal: %+v", s)
		}
	}
}

// TestDestroyPurgeProtectedVault: destroy --purge of a vault under purge protection reports the
// purge it could not do and goes on to the provider, the identity and the group, both on the run
// that soft-deletes the vault and on a rerun that finds it soft-deleted.
func TestDestroyPurgeProtectedVault(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	for _, softDeletedFirst := range []bool{false, true} {
		f, cl := newFakeAzure(t)
		if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
			t.Fatal(err)
		}
		f.purgeProtected = true
		if softDeletedFirst {
			// A destroy without --purge whose group was kept, then a rerun with --purge.
			f.foreign = []*armresources.GenericResourceExpanded{{Name: ptr("team-kv"), Type: ptr("Microsoft.KeyVault/vaults")}}
			if _, err := Destroy(ctx, cl, testConfig, false, io.Discard); err != nil {
				t.Fatal(err)
			}
			f.foreign = nil
			f.providers[n.AttestationProvider] = Provider{Location: "westeurope", Tags: testConfig.tags()}
		}
		steps, err := Destroy(ctx, cl, testConfig, true, io.Discard)
		if err != nil {
			t.Fatalf("soft-deleted first %v: destroy --purge: %v", softDeletedFirst, err)
		}
		var skipped bool
		for _, s := range steps {
			skipped = skipped || (s.Name == n.Vault && s.Action == "skip" && strings.Contains(s.Detail, "purge protection"))
		}
		if !skipped || len(f.deletedVaults) != 1 || f.writes["vault-purge"] != 0 {
			t.Errorf("soft-deleted first %v: the refused purge not reported: %+v", softDeletedFirst, steps)
		}
		if len(f.providers)+len(f.identities)+len(f.groups) != 0 {
			t.Errorf("soft-deleted first %v: destroy stopped at the vault: %d providers, %d identities, %d groups left",
				softDeletedFirst, len(f.providers), len(f.identities), len(f.groups))
		}
	}
}

// TestDestroyPurgeRefused: a purge refused for another reason than purge protection (here no
// permission) leaves the vault where --purge asked to remove it: a kept step, which makes the
// command exit non-zero, while destroy still removes the rest.
func TestDestroyPurgeRefused(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	f, cl := newFakeAzure(t)
	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	f.purgeForbidden = true
	steps, err := Destroy(ctx, cl, testConfig, true, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !hasStep(steps, n.Vault, "kept") || KeptError(steps) == nil {
		t.Errorf("a refused purge is not reported as kept: %+v", steps)
	}
	if len(f.providers)+len(f.identities)+len(f.groups) != 0 {
		t.Errorf("destroy stopped at the vault: %+v", steps)
	}
}

// TestApplyRefusesTakenGlobalNames: a vault or registry name that is taken outside the group (the
// names are global across Azure) is refused before any write, and plan says so.
func TestApplyRefusesTakenGlobalNames(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	for _, c := range []struct{ kind, name string }{{"key vault", n.Vault}, {"container registry", n.Registry}} {
		for _, groupExists := range []bool{false, true} {
			f, cl := newFakeAzure(t)
			if groupExists {
				f.groups["rg"] = armresources.ResourceGroup{Location: ptr("westeurope"), Tags: testConfig.tags()}
			}
			f.taken[c.name] = "The name is already in use."
			plan, err := Plan(ctx, cl, testConfig)
			if err != nil {
				t.Fatal(err)
			}
			var refused bool
			for _, s := range plan {
				refused = refused || (s.Name == c.name && s.Action == "refuse" && strings.Contains(s.Detail, "already in use"))
			}
			if !refused {
				t.Errorf("%s taken (group %v): plan %+v", c.kind, groupExists, plan)
			}
			_, _, err = Apply(ctx, cl, testConfig, io.Discard)
			if !errors.Is(err, ErrNotOwned) || !strings.Contains(err.Error(), c.kind+" "+c.name) || !strings.Contains(err.Error(), "already in use") || !strings.Contains(err.Error(), "--name-prefix") {
				t.Errorf("%s taken (group %v): apply error %v", c.kind, groupExists, err)
			}
			if len(f.writes) != 0 {
				t.Errorf("%s taken (group %v): apply wrote %v", c.kind, groupExists, f.writes)
			}
		}
	}
}

// TestDeleteAttestationProvider: a provider deletion ARM answers with 200 or 204 is done; one it
// accepts with 202 is waited for (reads until 404), within a bound and the context, so that
// destroy goes on only once the provider is gone.
func TestDeleteAttestationProvider(t *testing.T) {
	n := NamesFor("demo1")
	for _, tc := range []struct {
		name      string
		status    int
		goneAfter int    // reads that still find the provider after a 202; -1 = never gone
		cancel    bool   // the context ends while waiting
		gets      int    // reads Delete makes, if > 0
		err       string // substring of the error; "" = success
		is        error
	}{
		{name: "200", status: http.StatusOK},
		{name: "204", status: http.StatusNoContent},
		{name: "202, gone after two reads", status: http.StatusAccepted, goneAfter: 2, gets: 3},
		{name: "202, gone at once", status: http.StatusAccepted, goneAfter: 0, gets: 1},
		{name: "202, never gone", status: http.StatusAccepted, goneAfter: -1, err: "still exists", is: ErrDeleteNotDone},
		{name: "202, context ends while waiting", status: http.StatusAccepted, goneAfter: -1, cancel: true, err: "waiting for its deletion", is: context.Canceled},
		{name: "409", status: http.StatusConflict, err: "409"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, cl := newFakeAzure(t)
			cl.Attestation.deleteWait, cl.Attestation.deletePoll = 200*time.Millisecond, 5*time.Millisecond
			f.providers[n.AttestationProvider] = Provider{Location: "westeurope", Tags: testConfig.tags()}
			f.providerDelete, f.providerGoneAfter = tc.status, tc.goneAfter
			ctx := context.Background()
			if tc.cancel {
				// The context ends once the wait is under way (at its first read), however long
				// the DELETE took: a fixed short deadline could end before the DELETE was sent.
				c, cancel := context.WithCancel(ctx)
				defer cancel()
				f.onProviderGet = cancel
				ctx, cl.Attestation.deleteWait = c, time.Hour
			}
			start := time.Now()
			err := cl.Attestation.Delete(ctx, "rg", n.AttestationProvider)
			if tc.err == "" {
				_, left := f.providers[n.AttestationProvider]
				if err != nil || left {
					t.Fatalf("delete: %v, provider left %v", err, left)
				}
				if tc.gets > 0 && f.providerGets != tc.gets {
					t.Errorf("%d reads, want %d", f.providerGets, tc.gets)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("error %v, want %q (%v)", err, tc.err, tc.is)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("gave up after %s", d)
			}
		})
	}

	// Destroy waits for the provider, then deletes the group it was in.
	f, cl := newFakeAzure(t)
	cl.Attestation.deleteWait, cl.Attestation.deletePoll = time.Second, 5*time.Millisecond
	if _, _, err := Apply(context.Background(), cl, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	f.providerDelete, f.providerGoneAfter = http.StatusAccepted, 2
	if _, err := Destroy(context.Background(), cl, testConfig, false, io.Discard); err != nil {
		t.Fatal(err)
	}
	if len(f.providers)+len(f.groups) != 0 {
		t.Errorf("after destroy: %d providers, %d groups", len(f.providers), len(f.groups))
	}
}

// fakeGet answers an SDK fake's Get from m: 404 when key is absent, 200 with wrap of its value
// otherwise. mu, when not nil, guards m.
func fakeGet[V, R any](mu *sync.Mutex, m map[string]V, key string, wrap func(V) R) (azfake.Responder[R], azfake.ErrorResponder) {
	if mu != nil {
		mu.Lock()
		defer mu.Unlock()
	}
	v, ok := m[key]
	if !ok {
		return notFound[R]()
	}
	return respond(http.StatusOK, wrap(v))
}

// TestDestroyResource: destroy deletes only what exists with the deployment's tag, notes each
// step, and its errors name the resource.
func TestDestroyResource(t *testing.T) {
	ctx := context.Background()
	readErr := errors.New("read failed")
	for _, tc := range []struct {
		name    string
		tags    map[string]*string
		readErr error
		rmErr   error
		want    destroyOutcome
		action  string // the step noted; "" = none
		err     string // substring of the error
	}{
		{name: "missing", readErr: &azcore.ResponseError{StatusCode: http.StatusNotFound}, want: absent},
		{name: "ours", tags: testConfig.tags(), want: deleted, action: "deleted"},
		{name: "not ours", tags: map[string]*string{TagKey: ptr("other")}, want: skipped, action: "skip"},
		{name: "read fails", readErr: readErr, err: "key vault v: read failed"},
		{name: "delete fails", tags: testConfig.tags(), rmErr: errors.New("busy"), err: "deleting key vault v: busy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := taggedResource{kind: "key vault", name: "v", tags: func(context.Context) (map[string]*string, string, error) { return tc.tags, "", tc.readErr }}
			var noted []string
			var removed bool
			got, err := destroyResource(ctx, testConfig, r, func(_, _, action, _ string) { noted = append(noted, action) }, "", func(context.Context) error {
				removed = true
				return tc.rmErr
			})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want || removed != (tc.want == deleted) {
				t.Fatalf("got %v, %v (removed %v), want %v", got, err, removed, tc.want)
			}
			if want := []string{tc.action}; (tc.action == "" && len(noted) != 0) || (tc.action != "" && !slices.Equal(noted, want)) {
				t.Errorf("noted %v, want %v", noted, want)
			}
		})
	}
}

// TestApplyKeepsUnmanagedSettings: a rerun of apply keeps what an administrator set on the vault
// and the registry since (network lockdown above all), since its updates are PUTs that replace
// the properties they do not carry.
func TestApplyKeepsUnmanagedSettings(t *testing.T) {
	ctx := context.Background()
	n := NamesFor("demo1")
	f, cl := newFakeAzure(t)
	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	deny := armkeyvault.NetworkRuleActionDeny
	f.mu.Lock()
	v := f.vaults[n.Vault]
	v.Properties.PublicNetworkAccess = ptr("Disabled")
	v.Properties.NetworkACLs = &armkeyvault.NetworkRuleSet{DefaultAction: &deny, IPRules: []*armkeyvault.IPRule{{Value: ptr("203.0.113.0/24")}}}
	f.vaults[n.Vault] = v
	r := f.registries[n.Registry]
	r.Properties.PublicNetworkAccess = ptr(armcontainerregistry.PublicNetworkAccessDisabled)
	r.Properties.Policies = &armcontainerregistry.Policies{QuarantinePolicy: &armcontainerregistry.QuarantinePolicy{Status: ptr(armcontainerregistry.PolicyStatusEnabled)}}
	r.Properties.NetworkRuleBypassAllowedForTasks = ptr(true)
	// A customer-managed key, reached through a user-assigned identity of the registry.
	cmkIdentity := testConfig.rgID() + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/acr-cmk"
	r.Identity = &armcontainerregistry.IdentityProperties{
		Type:                   ptr(armcontainerregistry.ResourceIdentityTypeUserAssigned),
		UserAssignedIdentities: map[string]*armcontainerregistry.UserIdentityProperties{cmkIdentity: {ClientID: ptr("cmk-client"), PrincipalID: ptr("cmk-principal")}},
		PrincipalID:            ptr("reported"),
	}
	r.Properties.Encryption = &armcontainerregistry.EncryptionProperty{
		Status:             ptr(armcontainerregistry.EncryptionStatusEnabled),
		KeyVaultProperties: &armcontainerregistry.KeyVaultProperties{Identity: ptr("cmk-client"), KeyIdentifier: ptr("https://cmk.vault.azure.net/keys/acr")},
	}
	f.registries[n.Registry] = r
	f.mu.Unlock()

	if _, _, err := Apply(ctx, cl, testConfig, io.Discard); err != nil {
		t.Fatal(err)
	}
	vp := f.vaults[n.Vault].Properties
	if vp.PublicNetworkAccess == nil || *vp.PublicNetworkAccess != "Disabled" || vp.NetworkACLs == nil || *vp.NetworkACLs.DefaultAction != deny || len(vp.NetworkACLs.IPRules) != 1 {
		t.Errorf("the vault's network settings after a rerun: %+v, %+v", vp.PublicNetworkAccess, vp.NetworkACLs)
	}
	if !*vp.EnableRbacAuthorization || *vp.SKU.Name != armkeyvault.SKUNameStandard {
		t.Errorf("the settings apply manages were not sent: %+v", vp)
	}
	rp := f.registries[n.Registry].Properties
	if rp.PublicNetworkAccess == nil || *rp.PublicNetworkAccess != armcontainerregistry.PublicNetworkAccessDisabled || rp.Policies == nil || rp.Policies.QuarantinePolicy == nil {
		t.Errorf("the registry's settings after a rerun: %+v, %+v", rp.PublicNetworkAccess, rp.Policies)
	}
	if *rp.AdminUserEnabled {
		t.Error("the admin user was enabled")
	}
	if rp.NetworkRuleBypassAllowedForTasks == nil || !*rp.NetworkRuleBypassAllowedForTasks {
		t.Errorf("the registry's bypass for ACR Tasks after a rerun: %v", rp.NetworkRuleBypassAllowedForTasks)
	}
	if e := rp.Encryption; e == nil || e.KeyVaultProperties == nil || *e.KeyVaultProperties.Identity != "cmk-client" {
		t.Errorf("the registry's encryption after a rerun: %+v", e)
	}
	id := f.registries[n.Registry].Identity
	if id == nil || id.Type == nil || *id.Type != armcontainerregistry.ResourceIdentityTypeUserAssigned || len(id.UserAssignedIdentities) != 1 || id.UserAssignedIdentities[cmkIdentity] == nil {
		t.Errorf("the registry's identity, through which it reaches its key, after a rerun: %+v", id)
	}
}

// TestKeepRegistrySettings: the registry PUT carries the existing registry's identity (as a PUT
// states it: no read-only ids) and network settings, and adds nothing to a registry apply creates.
func TestKeepRegistrySettings(t *testing.T) {
	ua := "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/cmk"
	for _, tc := range []struct {
		name     string
		existing *armcontainerregistry.Registry
		want     *armcontainerregistry.IdentityProperties
		tasks    *bool
	}{
		{name: "new registry"},
		{name: "no identity", existing: &armcontainerregistry.Registry{Properties: &armcontainerregistry.RegistryProperties{NetworkRuleBypassAllowedForTasks: ptr(false)}},
			tasks: ptr(false)},
		{name: "system-assigned",
			existing: &armcontainerregistry.Registry{
				Identity:   &armcontainerregistry.IdentityProperties{Type: ptr(armcontainerregistry.ResourceIdentityTypeSystemAssigned), PrincipalID: ptr("p"), TenantID: ptr("t")},
				Properties: &armcontainerregistry.RegistryProperties{NetworkRuleBypassAllowedForTasks: ptr(true)},
			},
			want:  &armcontainerregistry.IdentityProperties{Type: ptr(armcontainerregistry.ResourceIdentityTypeSystemAssigned)},
			tasks: ptr(true)},
		{name: "user-assigned, without properties",
			existing: &armcontainerregistry.Registry{Identity: &armcontainerregistry.IdentityProperties{
				Type:                   ptr(armcontainerregistry.ResourceIdentityTypeSystemAssignedUserAssigned),
				UserAssignedIdentities: map[string]*armcontainerregistry.UserIdentityProperties{ua: {ClientID: ptr("c"), PrincipalID: ptr("p")}},
			}},
			want: &armcontainerregistry.IdentityProperties{
				Type:                   ptr(armcontainerregistry.ResourceIdentityTypeSystemAssignedUserAssigned),
				UserAssignedIdentities: map[string]*armcontainerregistry.UserIdentityProperties{ua: {}},
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := armcontainerregistry.Registry{Properties: &armcontainerregistry.RegistryProperties{AdminUserEnabled: ptr(false)}}
			keepRegistrySettings(&r, tc.existing)
			got, _ := json.Marshal(r.Identity)
			want, _ := json.Marshal(tc.want)
			if string(got) != string(want) {
				t.Errorf("identity sent %s, want %s", got, want)
			}
			if g := r.Properties.NetworkRuleBypassAllowedForTasks; (g == nil) != (tc.tasks == nil) || (g != nil && *g != *tc.tasks) {
				show := func(b *bool) string {
					if b == nil {
						return "unset"
					}
					return fmt.Sprint(*b)
				}
				t.Errorf("bypass for tasks %s, want %s", show(g), show(tc.tasks))
			}
			if r.Properties.AdminUserEnabled == nil || *r.Properties.AdminUserEnabled {
				t.Error("the settings apply manages were changed")
			}
		})
	}
}

// TestRoleNotVisibleYet: an assignment refused because its new role or principal has not
// replicated yet is retried whatever the status ARM gives it; other refusals are not.
func TestRoleNotVisibleYet(t *testing.T) {
	for _, tc := range []struct {
		status int
		code   string
		want   bool
	}{
		{http.StatusBadRequest, "RoleDefinitionDoesNotExist", true},
		{http.StatusNotFound, "RoleDefinitionDoesNotExist", true},
		{http.StatusBadRequest, "PrincipalNotFound", true},
		{http.StatusNotFound, "PrincipalNotFound", true},
		{http.StatusBadRequest, "InvalidRoleAssignmentId", false},
		{http.StatusNotFound, "ResourceNotFound", false},
		{http.StatusForbidden, "AuthorizationFailed", false},
		{http.StatusBadRequest, "", false},
	} {
		re := &azcore.ResponseError{StatusCode: tc.status, ErrorCode: tc.code}
		if got := roleNotVisibleYet(re); got != tc.want {
			t.Errorf("roleNotVisibleYet(%d %s) = %v, want %v", tc.status, tc.code, got, tc.want)
		}
	}
}
