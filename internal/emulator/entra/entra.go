// Package entra emulates the parts of the Microsoft Entra ID (Azure AD) token service that
// azidentity's client-secret credential uses, so the real SDK authenticates against the local
// stack: the OpenID metadata of a tenant, instance discovery, the v2.0 token endpoint with the
// client-credentials grant, and the tenant's signing keys. Issued access tokens are RS256 JWTs
// with the claims Azure resource providers check (aud, iss, tid, oid, appid, exp), and
// ValidateAccessToken is how the other emulators check the bearer tokens they receive.
//
// Tokens are issued only for the resources the tenant knows (Config.Resources, by default
// KnownResources: those this project requests), one resource per request, with the resource
// exactly as requested as the audience; ValidateAccessToken compares the audience exactly.
//
// Approximations: only the client-credentials grant with a client secret exists; the token
// issuer is the v1 form https://sts.windows.net/{tenant}/ that Key Vault accepts (UNCONFIRMED
// which of the v1 and v2 forms a given resource's tokens carry); error bodies follow Entra's
// {"error","error_description","error_codes"} shape with AADSTS codes for the failures emulated.
package entra

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TokenLifetime is the lifetime of issued access tokens (Entra's default is 60-90 minutes).
const TokenLifetime = time.Hour

// maxFormBytes bounds a token request body.
const maxFormBytes = 64 << 10

// Resource identifiers (application ID URIs) of the Azure services this project requests tokens
// for: a client asks for "<resource>/.default" and the token's aud is <resource>.
const (
	// ResourceKeyVault is Key Vault's: its challenge names resource="https://vault.azure.net" and
	// the SDK asks for that + "/.default" (reference/azure-sdk.md §4.2; internal/keyvault).
	ResourceKeyVault = "https://vault.azure.net"
	// ResourceManagedHSM is Managed HSM's (internal/keyvault KeyID.TokenScope; the exact string
	// on the service side is UNCONFIRMED, reference/azure-sdk.md §4.4).
	ResourceManagedHSM = "https://managedhsm.azure.net"
	// ResourceAttestation is MAA's data plane (scope https://attest.azure.net/.default,
	// reference/azure-sdk.md §5; internal/maa AttestationScope).
	ResourceAttestation = "https://attest.azure.net"
	// ResourceContainerRegistry is ACR's (internal/registryclient ACRScope).
	ResourceContainerRegistry = "https://containerregistry.azure.net"
	// ResourceManager is ARM's audience in azcore's public cloud configuration, trailing slash
	// included: ARM clients ask for "https://management.core.windows.net//.default"
	// (reference/azure-sdk.md §3.4).
	ResourceManager = "https://management.core.windows.net/"
)

// KnownResources returns the resources a tenant issues tokens for when Config.Resources is nil.
func KnownResources() []string {
	return []string{ResourceKeyVault, ResourceManagedHSM, ResourceAttestation, ResourceContainerRegistry, ResourceManager}
}

// oidcScopes are the OpenID Connect scopes MSAL adds to every token request (azidentity sends
// "scope=<scope> openid offline_access profile", reference/azure-sdk.md §3.4); they may accompany
// a "/.default" scope.
var oidcScopes = []string{"openid", "profile", "offline_access", "email"}

// Config configures the emulated tenant.
type Config struct {
	// TenantID is the only tenant served.
	TenantID string
	// Clients maps application (client) ids to their secrets.
	Clients map[string]string
	// ManagedIdentities are the client ids of the tenant's managed identities: they have no
	// secret, and get tokens only through the instance metadata service of a VM they are
	// attached to (IssueManagedIdentityToken, for internal/emulator/imds).
	ManagedIdentities []string
	// Resources are the resource identifiers tokens may be issued for, compared exactly (case and
	// trailing slash included); KnownResources() if nil. A request for any other resource is
	// refused, as Entra refuses a resource with no service principal in the tenant.
	Resources []string
	// Now is the clock; time.Now if nil.
	Now func() time.Time
	// Logger receives one record per request (never secrets or tokens); silent if nil.
	Logger *slog.Logger
}

// Server is an emulated Entra ID tenant.
type Server struct {
	cfg    Config
	key    *rsa.PrivateKey
	kid    string
	signer jose.Signer
	log    *slog.Logger

	mu       sync.Mutex
	requests []Request
}

// Request records one token request.
type Request struct {
	Time     time.Time
	ClientID string
	Scope    string
	Status   int
	Error    string
}

// Claims are the claims of an access token that relying parties use.
type Claims struct {
	jwt.Claims
	TenantID string `json:"tid"`
	ObjectID string `json:"oid"`
	AppID    string `json:"appid"`
}

// New creates the tenant with a fresh RSA-2048 signing key.
func New(cfg Config) (*Server, error) {
	if cfg.TenantID == "" || len(cfg.Clients)+len(cfg.ManagedIdentities) == 0 {
		return nil, errors.New("entra emulator: a tenant id and at least one client or managed identity are required")
	}
	for _, id := range cfg.ManagedIdentities {
		if _, ok := cfg.Clients[id]; ok {
			return nil, fmt.Errorf("entra emulator: %s is both a client with a secret and a managed identity", id)
		}
	}
	cfg.ManagedIdentities = slices.Clone(cfg.ManagedIdentities)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Resources == nil {
		cfg.Resources = KnownResources()
	}
	cfg.Resources = slices.Clone(cfg.Resources)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	kid := thumbprint(&key.PublicKey)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, key: key, kid: kid, signer: signer, log: log}, nil
}

func thumbprint(pub *rsa.PublicKey) string {
	t, _ := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	return hex.EncodeToString(t)[:32]
}

// Issuer is the iss of this tenant's access tokens.
func (s *Server) Issuer() string { return "https://sts.windows.net/" + s.cfg.TenantID + "/" }

// Requests returns the token requests seen so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Handler serves the tenant. Absolute URLs in the metadata use the request's host.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	t := "/" + s.cfg.TenantID
	mux.HandleFunc("GET "+t+"/v2.0/.well-known/openid-configuration", s.openID)
	mux.HandleFunc("GET /common/discovery/instance", s.instanceDiscovery)
	mux.HandleFunc("GET "+t+"/discovery/v2.0/keys", s.keys)
	mux.HandleFunc("POST "+t+"/oauth2/v2.0/token", s.token)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "invalid_request", "AADSTS90002: Tenant or endpoint not found.")
	})
	return mux
}

func base(r *http.Request) string { return "https://" + r.Host }

func (s *Server) openID(w http.ResponseWriter, r *http.Request) {
	b := base(r) + "/" + s.cfg.TenantID
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                b + "/v2.0",
		"authorization_endpoint":                b + "/oauth2/v2.0/authorize",
		"token_endpoint":                        b + "/oauth2/v2.0/token",
		"jwks_uri":                              b + "/discovery/v2.0/keys",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post"},
		"response_types_supported":              []string{"code", "id_token", "token"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"tenant_region_scope":                   "local",
	})
}

func (s *Server) instanceDiscovery(w http.ResponseWriter, r *http.Request) {
	host := r.Host
	writeJSON(w, http.StatusOK, map[string]any{
		"tenant_discovery_endpoint": base(r) + "/" + s.cfg.TenantID + "/v2.0/.well-known/openid-configuration",
		"api-version":               "1.1",
		"metadata": []map[string]any{{
			"preferred_network": host, "preferred_cache": host, "aliases": []string{host},
		}},
	})
}

func (s *Server) keys(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &s.key.PublicKey, KeyID: s.kid, Use: "sig", Algorithm: "RS256"}}})
}

// record keeps and logs one token request.
func (s *Server) record(rec Request) {
	s.mu.Lock()
	s.requests = append(s.requests, rec)
	s.mu.Unlock()
	s.log.Info("token request", "client", rec.ClientID, "scope", rec.Scope, "status", rec.Status, "error", rec.Error)
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	rec := Request{Time: s.cfg.Now()}
	defer func() { s.record(rec) }()
	fail := func(status int, code, desc string) {
		rec.Status, rec.Error = status, code
		writeError(w, status, code, desc)
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		fail(http.StatusBadRequest, "invalid_request", "AADSTS900144: The request body must contain the following parameter: 'grant_type'.")
		return
	}
	f := r.PostForm
	rec.ClientID, rec.Scope = f.Get("client_id"), f.Get("scope")
	if f.Get("grant_type") != "client_credentials" {
		fail(http.StatusBadRequest, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type; only client_credentials is emulated.")
		return
	}
	secret, ok := s.cfg.Clients[rec.ClientID]
	if !ok {
		fail(http.StatusBadRequest, "unauthorized_client", fmt.Sprintf("AADSTS700016: Application with identifier '%s' was not found in the directory '%s'.", rec.ClientID, s.cfg.TenantID))
		return
	}
	if subtle.ConstantTimeCompare([]byte(f.Get("client_secret")), []byte(secret)) != 1 {
		fail(http.StatusUnauthorized, "invalid_client", "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.")
		return
	}
	resource, code, desc := s.resourceOf(rec.Scope)
	if code != "" {
		fail(http.StatusBadRequest, code, desc)
		return
	}
	raw, _, err := s.issue(rec.ClientID, resource)
	if err != nil {
		fail(http.StatusInternalServerError, "temporarily_unavailable", "AADSTS50000: There was an error issuing a token.")
		return
	}
	rec.Status = http.StatusOK
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type": "Bearer", "expires_in": int(TokenLifetime.Seconds()), "ext_expires_in": int(TokenLifetime.Seconds()),
		"access_token": raw,
	})
}

// issue signs an access token of clientID for resource, and returns it with its expiry.
func (s *Server) issue(clientID, resource string) (string, time.Time, error) {
	now := s.cfg.Now()
	exp := now.Add(TokenLifetime)
	claims := Claims{
		Claims: jwt.Claims{
			Issuer: s.Issuer(), Audience: jwt.Audience{resource}, Subject: ObjectID(clientID),
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(exp),
		},
		TenantID: s.cfg.TenantID, ObjectID: ObjectID(clientID), AppID: clientID,
	}
	raw, err := jwt.Signed(s.signer).Claims(claims).Serialize()
	return raw, exp, err
}

// ErrNotManagedIdentity means a token was asked for a client id that is not one of the tenant's
// managed identities; ErrUnknownResource, for a resource the tenant does not know.
var (
	ErrNotManagedIdentity = errors.New("not a managed identity of the tenant")
	ErrUnknownResource    = errors.New("resource not found in the tenant")
)

// IssueManagedIdentityToken issues the access token the instance metadata service hands a VM
// for one of the tenant's managed identities (Config.ManagedIdentities) and resource (exactly
// as one of Config.Resources, which IMDS takes without "/.default"): the claims of a
// client-credentials token of that client id. It is the emulated IMDS's way into the tenant; the
// request is recorded like a token request, with the scope "<resource> (IMDS)".
func (s *Server) IssueManagedIdentityToken(clientID, resource string) (string, time.Time, error) {
	rec := Request{Time: s.cfg.Now(), ClientID: clientID, Scope: resource + " (IMDS)"}
	defer func() { s.record(rec) }()
	switch {
	case !slices.Contains(s.cfg.ManagedIdentities, clientID):
		rec.Status, rec.Error = http.StatusBadRequest, "unauthorized_client"
		return "", time.Time{}, fmt.Errorf("%w: %s", ErrNotManagedIdentity, clientID)
	case !slices.Contains(s.cfg.Resources, resource):
		rec.Status, rec.Error = http.StatusBadRequest, "invalid_resource"
		return "", time.Time{}, fmt.Errorf("%w: %s", ErrUnknownResource, resource)
	}
	raw, exp, err := s.issue(clientID, resource)
	if err != nil {
		rec.Status, rec.Error = http.StatusInternalServerError, "temporarily_unavailable"
		return "", time.Time{}, err
	}
	rec.Status = http.StatusOK
	return raw, exp, nil
}

// resourceOf returns the resource a client-credentials scope parameter asks for, or the error
// code and description Entra refuses it with:
//   - no "<resource>/.default" scope: AADSTS1002012 (client credential flows need one);
//   - a "/.default" scope together with another one (a second resource, or a named permission
//     such as https://vault.azure.net/user_impersonation; the OIDC scopes MSAL adds are allowed):
//     AADSTS70011, invalid_scope;
//   - a resource this tenant does not know: AADSTS500011, invalid_resource.
//
// UNCONFIRMED: the exact descriptions, and whether the v2.0 endpoint reports AADSTS500011 as
// error "invalid_resource" (the v1 name, used here) or "invalid_scope"; the status is 400 for all.
func (s *Server) resourceOf(scope string) (resource, code, desc string) {
	var resources, others []string
	for _, sc := range strings.Fields(scope) {
		switch res, ok := strings.CutSuffix(sc, "/.default"); {
		case ok:
			resources = append(resources, res)
		case !slices.Contains(oidcScopes, sc):
			others = append(others, sc)
		}
	}
	switch {
	case len(resources) == 0:
		return "", "invalid_scope", "AADSTS1002012: The provided value for scope " + scope + " is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
	case len(resources) > 1 || len(others) > 0:
		return "", "invalid_scope", "AADSTS70011: The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope " + scope + " is not valid. A /.default scope cannot be combined with other scopes."
	case !slices.Contains(s.cfg.Resources, resources[0]):
		return "", "invalid_resource", fmt.Sprintf("AADSTS500011: The resource principal named %s was not found in the tenant named %s. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", resources[0], s.cfg.TenantID)
	}
	return resources[0], "", ""
}

// ObjectID is the service principal object id (the oid claim) the tenant gives a client id; role
// assignments name principals by it, as Azure's do.
func ObjectID(clientID string) string {
	h := sha256.Sum256([]byte("oid:" + clientID))
	b := h[:16]
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Errors of ValidateAccessToken.
var (
	ErrTokenInvalid  = errors.New("access token invalid")
	ErrTokenExpired  = errors.New("access token expired")
	ErrTokenAudience = errors.New("access token audience mismatch")
)

// ValidateAccessToken checks a bearer token issued by this tenant for audience: RS256 signature
// by the tenant key, issuer, tenant, audience, and lifetime (one minute of skew).
//
// The audience must equal audience exactly: a token for "https://vault.azure.net/" is not one for
// "https://vault.azure.net", nor the reverse. The real clients ask for the exact resource their
// service names (Key Vault's challenge resource plus "/.default", MAA's
// https://attest.azure.net/.default; reference/azure-sdk.md §4.2, §5), so they never hold a
// trailing-slash variant; whether Key Vault or MAA would accept one is UNCONFIRMED, so the
// emulators do not. A relying party that accepts two identifiers (ARM accepts several) calls this
// once per identifier.
func (s *Server) ValidateAccessToken(raw, audience string) (*Claims, error) {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTokenInvalid, err)
	}
	var c Claims
	if err := tok.Claims(&s.key.PublicKey, &c); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrTokenInvalid, err)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: s.Issuer(), Time: s.cfg.Now()}, time.Minute); err != nil {
		if errors.Is(err, jwt.ErrExpired) {
			return nil, ErrTokenExpired
		}
		return nil, fmt.Errorf("%w: %v", ErrTokenInvalid, err)
	}
	// go-jose checks exp only when the token has one: a token that never expires is not an
	// Entra ID access token (every one carries exp), so it is refused.
	if c.Expiry == nil {
		return nil, fmt.Errorf("%w: no exp claim", ErrTokenInvalid)
	}
	if c.TenantID != s.cfg.TenantID {
		return nil, fmt.Errorf("%w: tenant %q", ErrTokenInvalid, c.TenantID)
	}
	if !c.Audience.Contains(audience) {
		return nil, fmt.Errorf("%w: token is for %v, not %s", ErrTokenAudience, c.Audience, audience)
	}
	return &c, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// writeError answers Entra's error shape; error_codes carries the AADSTS number of desc.
func writeError(w http.ResponseWriter, status int, code, desc string) {
	codes := []int{}
	if rest, ok := strings.CutPrefix(desc, "AADSTS"); ok {
		if end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' }); end > 0 {
			if n, err := strconv.Atoi(rest[:end]); err == nil {
				codes = append(codes, n)
			}
		}
	}
	writeJSON(w, status, map[string]any{"error": code, "error_description": desc, "error_codes": codes, "timestamp": time.Now().UTC().Format("2006-01-02 15:04:05Z")})
}
