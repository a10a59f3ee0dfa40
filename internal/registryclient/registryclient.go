// Package registryclient opens OCI repositories with the credentials a build or deployment
// machine has: an explicit username and password, the docker config and its credential helpers
// (as docker, notation and oras use them), and for Azure Container Registry the Entra ID token
// exchange, so a managed identity needs no docker login.
package registryclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/retry"

	"github.com/attested-kv/attested-kv/internal/redact"
)

// ACRScope is the Entra ID scope of Azure Container Registry's token exchange.
const ACRScope = "https://containerregistry.azure.net/.default"

// acrNullUser is the user name ACR expects with an exchanged refresh token.
const acrNullUser = "00000000-0000-0000-0000-000000000000"

// MaxReferrerPages bounds the pages of one referrers listing; beyond it the listing fails with
// oras-go's errdef.ErrTooManyPages.
const MaxReferrerPages = 32

// Options configures Open.
type Options struct {
	// Username and Password, when set, are used for the registry and nothing else is consulted.
	Username, Password string
	// PlainHTTP forces http; by default http is used only for localhost and loopback addresses.
	PlainHTTP bool
	// AzureCredential, when set, is used for *.azurecr.io registries that have no docker
	// credential: an Entra ID token is exchanged at /oauth2/exchange for an ACR refresh token.
	AzureCredential azcore.TokenCredential
	// HTTPClient is the transport; a retrying client if nil.
	HTTPClient *http.Client
}

// Open returns the repository named by ref (host[:port]/path, with or without a tag or digest)
// and the parsed reference.
func Open(ref string, o Options) (*remote.Repository, registry.Reference, error) {
	r, err := registry.ParseReference(ref)
	if err != nil {
		return nil, registry.Reference{}, fmt.Errorf("image reference %q: %w", ref, err)
	}
	repo, err := remote.NewRepository(r.Registry + "/" + r.Repository)
	if err != nil {
		return nil, registry.Reference{}, err
	}
	// ACR serves HTTPS only, and over plain http whoever is on the path can rewrite the
	// registry's WWW-Authenticate challenge to send the credential (an ACR refresh token that can
	// push, or a docker password) to a token server of their choosing: refused.
	if o.PlainHTTP && isACRHost(r.Host()) {
		return nil, registry.Reference{}, fmt.Errorf("%s is an Azure container registry, which serves https only: plain http is refused, since it would expose the registry credential", r.Host())
	}
	repo.PlainHTTP = o.PlainHTTP || isLoopback(r.Host())
	hc := o.HTTPClient
	if hc == nil {
		hc = retry.DefaultClient
	}
	cred, err := credentialFunc(r.Registry, o, hc)
	if err != nil {
		return nil, registry.Reference{}, err
	}
	repo.Client = &auth.Client{Client: hc, Cache: auth.NewCache(), Credential: cred, ClientID: "oras-attest"}
	// oras-go pages through the Referrers API without end by default, and its client-side
	// artifact-type filter means the callers' own bounds count only matching entries: a registry
	// that ignores the filter, or a subject with thousands of other referrers, would be paged
	// through until the deadline.
	repo.ReferrerListMaxPages = MaxReferrerPages
	return repo, r, nil
}

func isLoopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// IsAzureRegistry reports whether hostport names an Azure container registry of the public cloud
// (*.azurecr.io, in any case: host names are case-insensitive, and with or without the root's
// trailing dot), the registries AzureCredential is used for.
func IsAzureRegistry(hostport string) bool {
	return strings.HasSuffix(registryHost(hostport), ".azurecr.io")
}

// isACRHost reports whether hostport names an Azure container registry of any cloud: the public
// one, Azure China (*.azurecr.cn) or Azure Government (*.azurecr.us). All serve https only.
func isACRHost(hostport string) bool {
	host := registryHost(hostport)
	for _, suffix := range []string{".azurecr.io", ".azurecr.cn", ".azurecr.us"} {
		if strings.HasSuffix(host, suffix) {
			return true
		}
	}
	return false
}

// registryHost is the host of hostport in lower case, without a port or the root's trailing dot.
func registryHost(hostport string) string {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

func credentialFunc(hostport string, o Options, hc *http.Client) (auth.CredentialFunc, error) {
	if o.Username != "" || o.Password != "" {
		return auth.StaticCredential(hostport, auth.Credential{Username: o.Username, Password: o.Password}), nil
	}
	store, err := credentials.NewStoreFromDocker(credentials.StoreOptions{})
	if err != nil {
		return nil, fmt.Errorf("docker credentials: %w", err)
	}
	docker := hideDockerErrors(credentials.Credential(store))
	if o.AzureCredential == nil || !IsAzureRegistry(hostport) {
		return docker, nil
	}
	return func(ctx context.Context, host string) (auth.Credential, error) {
		if c, err := docker(ctx, host); err == nil && c != auth.EmptyCredential {
			return c, nil
		}
		rt, err := ExchangeACRToken(ctx, hc, host, o.AzureCredential)
		if err != nil {
			return auth.EmptyCredential, err
		}
		return auth.Credential{Username: acrNullUser, Password: rt}, nil
	}, nil
}

// hideDockerErrors returns f with errors that do not quote the docker config: oras-go's error for
// an entry it cannot decode (config.ErrInvalidConfigFormat, "invalid config format") quotes the
// entry, decoded: the secret. These errors reach oras-attest's output and the admission denials the
// Ratify verifier writes, so that one is replaced by a message naming the host and the file; any
// other (a credential helper's own message, Docker Desktop not running) is kept, redacted.
func hideDockerErrors(f auth.CredentialFunc) auth.CredentialFunc {
	return func(ctx context.Context, host string) (auth.Credential, error) {
		c, err := f(ctx, host)
		switch {
		case err == nil:
			return c, nil
		case wraps(err, invalidConfigFormat):
			return auth.EmptyCredential, redact.Hide(fmt.Sprintf("the docker config's entry for %s ($DOCKER_CONFIG/config.json, else ~/.docker/config.json) cannot be read; it is not shown, since it may be the secret: check it, or log in again (oras login, docker login)", host), err)
		}
		return auth.EmptyCredential, redact.Error(err)
	}
}

// invalidConfigFormat is the message of oras-go's config.ErrInvalidConfigFormat, which its
// internal package keeps from errors.Is.
const invalidConfigFormat = "invalid config format"

// wraps reports whether err or an error it wraps has the message msg.
func wraps(err error, msg string) bool {
	if err == nil {
		return false
	}
	if err.Error() == msg {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return wraps(u.Unwrap(), msg)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if wraps(e, msg) {
				return true
			}
		}
	}
	return false
}

// ExchangeACRToken trades an Entra ID access token for an ACR refresh token
// (POST https://{registry}/oauth2/exchange, grant_type=access_token).
func ExchangeACRToken(ctx context.Context, hc *http.Client, registryHost string, cred azcore.TokenCredential) (string, error) {
	at, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{ACRScope}})
	if err != nil {
		return "", fmt.Errorf("Entra ID token for %s: %w", registryHost, err)
	}
	// No tenant field: Microsoft's own Go client (azcontainerregistry, acquireRefreshToken in
	// authentication_policy.go) sends exactly grant_type, service and access_token, and its
	// exchange options make tenant optional; the access token's tid names the tenant anyway.
	// UNCONFIRMED whether ACR needs it for a token of a guest tenant (reference/oras-ratify.md
	// lists it, from ACR's AAD-OAuth.md example).
	form := url.Values{"grant_type": {"access_token"}, "service": {registryHost}, "access_token": {at.Token}}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+registryHost+"/oauth2/exchange", strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	// The form holds the Entra ID access token: a redirect is not followed (Go's client would send
	// the form again to wherever it points, plain http included) but refused below as any other
	// answer than 200.
	noRedirect := *hc
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	rsp, err := noRedirect.Do(req)
	if err != nil {
		return "", fmt.Errorf("ACR token exchange at %s: %w", registryHost, err)
	}
	defer rsp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(rsp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if rsp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("ACR token exchange at %s: HTTP %d", registryHost, rsp.StatusCode)
	}
	var out struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal(body, &out); err != nil || out.RefreshToken == "" {
		return "", fmt.Errorf("ACR token exchange at %s: no refresh_token in the answer", registryHost)
	}
	return out.RefreshToken, nil
}
