package azure

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

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
}

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
	return &AttestationProviders{sub: subscription, client: c}, nil
}

func (a *AttestationProviders) url(rg, name string) string {
	return runtime.JoinPaths(a.client.Endpoint(), "/subscriptions/"+url.PathEscape(a.sub)+"/resourceGroups/"+url.PathEscape(rg)+
		"/providers/Microsoft.Attestation/attestationProviders/"+url.PathEscape(name)) + "?api-version=" + AttestationAPIVersion
}

// Create creates or updates a provider in the AAD trust model (no policy signing certificates,
// so unsigned policies are accepted): PUT with {"location", "tags", "properties": {}}.
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

// Delete deletes a provider (200 or 204).
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
	if !runtime.HasStatusCode(rsp, http.StatusOK, http.StatusNoContent) {
		return runtime.NewResponseError(rsp)
	}
	return nil
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
