package azure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
)

// AttestationAPIVersion is the ARM api-version of Microsoft.Attestation/attestationProviders
// (armattestation v1.2.0; azure-sdk.md §2.3).
const AttestationAPIVersion = "2020-10-01"

// AttestationProviders creates, reads and deletes MAA attestation providers through an azcore ARM
// pipeline (the same pipeline the SDK's ARM clients use: bearer token, retries, RP registration).
type AttestationProviders struct {
	sub    string
	client *arm.Client
	// deleteWait bounds how long Delete waits for a provider whose deletion ARM accepted (202)
	// to be gone, reading it every deletePoll.
	deleteWait, deletePoll time.Duration
}

// Defaults of AttestationProviders.deleteWait and deletePoll.
const (
	attestationDeleteWait = 5 * time.Minute
	attestationDeletePoll = 5 * time.Second
)

// ErrDeleteNotDone is the error of a deletion ARM accepted (202) whose resource still exists
// when the wait for it ends.
var ErrDeleteNotDone = errors.New("deletion accepted but not done")

// Provider is the part of an attestation provider the bootstrap uses.
type Provider struct {
	Location   string             `json:"location"`
	Tags       map[string]*string `json:"tags,omitempty"`
	Properties struct {
		AttestURI  string `json:"attestUri,omitempty"`
		Status     string `json:"status,omitempty"`
		TrustModel string `json:"trustModel,omitempty"`
	} `json:"properties"`
}

// NewAttestationProviders returns the client.
func NewAttestationProviders(subscription string, cred azcore.TokenCredential, opts *arm.ClientOptions) (*AttestationProviders, error) {
	c, err := arm.NewClient("attested-kv.azure", "v0.1.0", cred, opts)
	if err != nil {
		return nil, err
	}
	return &AttestationProviders{sub: subscription, client: c, deleteWait: attestationDeleteWait, deletePoll: attestationDeletePoll}, nil
}

func (a *AttestationProviders) url(rg, name string) string {
	return runtime.JoinPaths(a.client.Endpoint(), "/subscriptions/"+url.PathEscape(a.sub)+"/resourceGroups/"+url.PathEscape(rg)+
		"/providers/Microsoft.Attestation/attestationProviders/"+url.PathEscape(name)) + "?api-version=" + AttestationAPIVersion
}

// Create creates or updates a provider in the AAD trust model (no policy signing certificates,
// so unsigned policies are accepted): PUT with {"location", "tags", "properties": {}}. The
// 2021-06-01 API adds tpmAttestationAuthentication, which can require callers of the provider's
// TPM attestation APIs to authenticate; this api-version cannot set it, and what the service
// defaults to, and whether it covers /attest/AzureGuest, are UNCONFIRMED (reference/azure-sdk.md
// §2.3). The plugin's MAA client sends no credential, as Azure's guest attestation client; a 401
// from the instance says to check the setting.
func (a *AttestationProviders) Create(ctx context.Context, rg, name, location string, tags map[string]*string) (*Provider, error) {
	body, _ := json.Marshal(map[string]any{"location": location, "tags": tags, "properties": map[string]any{}})
	req, err := runtime.NewRequest(ctx, http.MethodPut, a.url(rg, name))
	if err != nil {
		return nil, err
	}
	if err := req.SetBody(streaming.NopCloser(strings.NewReader(string(body))), "application/json"); err != nil {
		return nil, err
	}
	return a.do(req, http.StatusOK, http.StatusCreated)
}

// Get reads a provider; a missing one is an *azcore.ResponseError with status 404.
func (a *AttestationProviders) Get(ctx context.Context, rg, name string) (*Provider, error) {
	req, err := runtime.NewRequest(ctx, http.MethodGet, a.url(rg, name))
	if err != nil {
		return nil, err
	}
	return a.do(req, http.StatusOK)
}

// Delete deletes a provider and returns once it is gone. ARM answers 200 or 204 for a deletion
// done, and 202 for one it accepted: armattestation's ProvidersClient.Delete accepts all three
// (sdk/resourcemanager/attestation/armattestation/providers_client.go, API 2020-10-01). After a
// 202 Delete reads the provider until ARM answers 404, every deletePoll for at most deleteWait
// (an ErrDeleteNotDone error then), so that destroy does not go on to the resource group while the
// provider is still in it. The spec gives the 202 no Location or Azure-AsyncOperation header to
// poll (UNCONFIRMED that the service sends none), hence the reads.
func (a *AttestationProviders) Delete(ctx context.Context, rg, name string) error {
	req, err := runtime.NewRequest(ctx, http.MethodDelete, a.url(rg, name))
	if err != nil {
		return err
	}
	rsp, err := a.client.Pipeline().Do(req)
	if err != nil {
		return err
	}
	defer rsp.Body.Close()
	switch {
	case runtime.HasStatusCode(rsp, http.StatusOK, http.StatusNoContent):
		return nil
	case rsp.StatusCode == http.StatusAccepted:
		return a.waitGone(ctx, rg, name)
	}
	return runtime.NewResponseError(rsp)
}

// waitGone reads the provider until it is gone (404), for at most deleteWait.
func (a *AttestationProviders) waitGone(ctx context.Context, rg, name string) error {
	deadline := time.Now().Add(a.deleteWait)
	for {
		_, err := a.Get(ctx, rg, name)
		switch {
		case isNotFound(err):
			return nil
		case err != nil:
			return fmt.Errorf("attestation provider %s: waiting for its deletion: %w", name, err)
		case !time.Now().Add(a.deletePoll).Before(deadline):
			return fmt.Errorf("attestation provider %s: %w: it still exists %s after ARM accepted its deletion; run destroy again later", name, ErrDeleteNotDone, a.deleteWait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("attestation provider %s: waiting for its deletion: %w", name, ctx.Err())
		case <-time.After(a.deletePoll):
		}
	}
}

func (a *AttestationProviders) do(req *policy.Request, ok ...int) (*Provider, error) {
	req.Raw().Header.Set("Accept", "application/json")
	rsp, err := a.client.Pipeline().Do(req)
	if err != nil {
		return nil, err
	}
	defer rsp.Body.Close()
	if !runtime.HasStatusCode(rsp, ok...) {
		return nil, runtime.NewResponseError(rsp)
	}
	b, err := io.ReadAll(io.LimitReader(rsp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	var p Provider
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("attestation provider: %w", err)
	}
	return &p, nil
}
