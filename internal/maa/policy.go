package maa

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
)

// AttestationScope is the Entra ID scope of MAA's data plane (the scope of Microsoft's
// attestation SDKs; azure-sdk.md §5).
const AttestationScope = "https://attest.azure.net/.default"

// PolicyClient sets and reads an instance's attestation policy on MAA's data plane:
// PUT and GET {instance}/policies/{type}?api-version=2025-06-01. There is no Go data-plane SDK,
// so the requests go through an azcore pipeline (bearer token, retries, the HTTPS check).
type PolicyClient struct {
	instance string
	pl       runtime.Pipeline
}

// NewPolicyClient returns a client for instance authenticated with cred.
func NewPolicyClient(instance string, cred azcore.TokenCredential, opts *azcore.ClientOptions) (*PolicyClient, error) {
	inst, err := parseInstance(instance)
	if err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &azcore.ClientOptions{}
	}
	pl := runtime.NewPipeline("attested-kv-maa", "v0.1.0", runtime.PipelineOptions{
		PerRetry: []policy.Policy{runtime.NewBearerTokenPolicy(cred, []string{AttestationScope}, nil)},
	}, opts)
	return &PolicyClient{instance: inst, pl: pl}, nil
}

// UnsignedPolicyJWS wraps policy text as MAA's unsigned policy document (AAD trust model):
// base64url({"alg":"none"}) "." base64url({"AttestationPolicy": base64url(text)}) "." — an empty
// signature (SPEC-MAA StoredAttestationPolicy; az CLI's set_policy).
func UnsignedPolicyJWS(text string) string {
	payload, _ := json.Marshal(StoredAttestationPolicy{AttestationPolicy: base64.RawURLEncoding.EncodeToString([]byte(text))})
	return base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + base64.RawURLEncoding.EncodeToString(payload) + "."
}

// SetPolicy replaces the policy for attestationType (e.g. AttestationTypeAzureGuest) and returns
// the instance's answer token (a JWT whose x-ms-policy-result says Updated). The answer token is
// not verified here; callers that need to can verify it with the instance's keys.
func (c *PolicyClient) SetPolicy(ctx context.Context, attestationType, text string) (string, error) {
	if strings.TrimSpace(text) == "" {
		return "", errors.New("MAA policy: empty policy text")
	}
	req, err := runtime.NewRequest(ctx, http.MethodPut, c.url(attestationType))
	if err != nil {
		return "", err
	}
	// The REST spec declares text/plain with the JWS as the body (UNCONFIRMED which Content-Type
	// the service insists on; the C++ SDK sends the raw JWS).
	if err := req.SetBody(streaming.NopCloser(strings.NewReader(UnsignedPolicyJWS(text))), "text/plain"); err != nil {
		return "", err
	}
	return c.do(req, attestationType)
}

// GetPolicy returns the instance's answer token for the current policy of attestationType.
func (c *PolicyClient) GetPolicy(ctx context.Context, attestationType string) (string, error) {
	req, err := runtime.NewRequest(ctx, http.MethodGet, c.url(attestationType))
	if err != nil {
		return "", err
	}
	return c.do(req, attestationType)
}

func (c *PolicyClient) url(attestationType string) string {
	return c.instance + "/policies/" + attestationType + "?api-version=" + PolicyAPIVersion
}

func (c *PolicyClient) do(req *policy.Request, attestationType string) (string, error) {
	rsp, err := c.pl.Do(req)
	if err != nil {
		return "", fmt.Errorf("MAA policy %s at %s: %w", attestationType, c.instance, err)
	}
	defer rsp.Body.Close()
	if !runtime.HasStatusCode(rsp, http.StatusOK) {
		return "", fmt.Errorf("MAA policy %s at %s: %w", attestationType, c.instance, runtime.NewResponseError(rsp))
	}
	b, err := io.ReadAll(io.LimitReader(rsp.Body, MaxResponseSize))
	if err != nil {
		return "", err
	}
	var out PolicyResponse
	if err := json.Unmarshal(b, &out); err != nil || out.Token == "" {
		return "", fmt.Errorf("MAA policy %s at %s: the answer has no token", attestationType, c.instance)
	}
	return out.Token, nil
}

// PolicyText extracts the policy text from a policy answer token's x-ms-policy claim (itself an
// unsigned JWS whose payload is a StoredAttestationPolicy). The token is read unverified.
func PolicyText(answer string) (string, error) {
	_, claims, err := ParseUnverified(answer)
	if err != nil {
		return "", err
	}
	inner, _ := claims["x-ms-policy"].(string)
	parts := strings.Split(inner, ".")
	if len(parts) != 3 {
		return "", errors.New("the answer carries no x-ms-policy document")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", err
	}
	var sp StoredAttestationPolicy
	if err := json.Unmarshal(payload, &sp); err != nil {
		return "", err
	}
	text, err := base64.RawURLEncoding.DecodeString(sp.AttestationPolicy)
	return string(text), err
}
