package maa

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"

	wire "github.com/attested-kv/attested-kv/internal/maa"
)

// Defaults of Config.
const (
	// DefaultPolicy permits every attestation whose evidence verifies and issues no extra claims
	// (the policy of the REST spec's Set_Policy example).
	DefaultPolicy = "version=1.0; authorizationrules { => permit(); }; issuancerules { };"
	// DefaultTokenLifetime matches real AzureGuest tokens (exp - iat = 28800 s in testdata/real).
	DefaultTokenLifetime = 8 * time.Hour
	// DefaultMaxClockSkew bounds the TPM-clock distance between the quote and the certification
	// of the ephemeral key.
	DefaultMaxClockSkew = 60 * time.Second
	// DefaultReplayCacheSize bounds the number of remembered EncKeyCertifyInfo digests.
	DefaultReplayCacheSize = 65536
	// DefaultReplayEntriesPerAK bounds the remembered digests of one AK: a certified TPM can
	// then fill at most 1/64 of the cache (one attestation every 28 s over a token lifetime).
	DefaultReplayEntriesPerAK = 1024
	// MaxAttestBodyBytes bounds POST /attest bodies (a TCG log is tens of KiB; the body carries it
	// base64-encoded twice).
	MaxAttestBodyBytes = 4 << 20
	// MaxPolicyBodyBytes bounds PUT /policies bodies.
	MaxPolicyBodyBytes = 256 << 10
	// maxRecords bounds the request log kept for Requests().
	maxRecords = 1024
)

// Config configures an emulated MAA instance. Zero values take the documented defaults; roots and
// issuer are required.
type Config struct {
	// TrustedRoots are the vTPM root CAs AK certificates must chain to. Required.
	TrustedRoots *x509.CertPool
	// Intermediates completes chains; Azure leaves under "Global Virtual TPM CA - 03" carry no AIA,
	// so the intermediates are shipped, not fetched. They are chain material, not trust anchors.
	Intermediates *x509.CertPool
	// SigningKey signs tokens (RS256, so an RSA key of at least 2048 bits) and SigningCert is the
	// certificate published for it in /certs x5c. With neither, New generates an RSA-2048 key and a
	// self-signed certificate; with only SigningKey, New self-signs a certificate for it.
	SigningKey  crypto.Signer
	SigningCert *x509.Certificate
	// Issuer is the instance URL (https://host[:port], no path): the iss claim, the OpenID issuer,
	// and the base of jku. Required.
	Issuer string
	// Policy is the initial AzureGuest policy text; DefaultPolicy if empty.
	Policy string
	// TokenLifetime is exp - iat of issued tokens; DefaultTokenLifetime if zero.
	TokenLifetime time.Duration
	// Now is the clock; time.Now if nil.
	Now func() time.Time
	// MaxClockSkewBetweenQuoteAndCertify bounds the TPM-clock distance between PcrQuote and
	// EncKeyCertifyInfo; DefaultMaxClockSkew if zero.
	MaxClockSkewBetweenQuoteAndCertify time.Duration
	// ReplayCacheSize bounds the remembered certify infos; DefaultReplayCacheSize if zero. When
	// the cache is full of live entries, attestations are refused with 503.
	ReplayCacheSize int
	// ReplayEntriesPerAK bounds the remembered certify infos of one AK (by its public key), so
	// that one TPM cannot fill the cache for the others; DefaultReplayEntriesPerAK if zero, at
	// most ReplayCacheSize. An AK at its limit has its attestations refused with 429 until its
	// entries expire; they are not forgotten early, which would let them be replayed.
	ReplayEntriesPerAK int
	// DefaultSecureBootKeys are the SHA-256 fingerprints of the DER certificates taken as the
	// platform's default Secure Boot keys, as MAA takes Microsoft's. The token says
	// x-ms-azurevm-default-securebootkeysvalidated and x-ms-azurevm-dbvalidated true only when the
	// PK, KEK and db measured in the TCG log are non-empty and hold only certificates listed here
	// (no hashes). Empty: no key is a default one, and those claims are false. The local stack
	// lists its TPM's own keys (tpmsim.SecureBootCertificates).
	DefaultSecureBootKeys [][sha256.Size]byte
	// AuthorizePolicyRequest authorizes GET and PUT /policies, which real MAA allows only with a
	// valid Entra ID bearer token for https://attest.azure.net carrying an attestation role
	// (reference/azure-sdk.md §5). It is called for requests that carry an
	// "Authorization: Bearer ..." header and must validate that token; an error wrapping
	// ErrNoPolicyRole (a valid token of a caller without the role) is answered 403, any other
	// 401. If nil, every policy request is refused with 401: the emulator cannot validate a
	// token, so it fails closed.
	AuthorizePolicyRequest func(*http.Request) error
	// Logger receives one record per request; nothing is logged if nil.
	Logger *slog.Logger
}

// ErrNoPolicyRole is what Config.AuthorizePolicyRequest returns, wrapped, for a caller whose
// token is valid but who holds no attestation role on the provider.
var ErrNoPolicyRole = errors.New("no attestation role on the provider")

// RequestRecord is one attest or policy request as the emulator saw it, with its outcome.
type RequestRecord struct {
	Time   time.Time
	Method string
	// Path is the request path without the query; APIVersion the api-version it named.
	Path       string
	APIVersion string
	// Status is the HTTP status answered; ErrorCode and ErrorMessage are empty on success.
	Status       int
	ErrorCode    string
	ErrorMessage string
	// ClientPayload is the attest request's ClientPayload as sent, once it decoded.
	ClientPayload map[string]string
	// TokenID is the jti of the token issued, if any; PolicyHash the x-ms-policy-hash it carries.
	TokenID    string
	PolicyHash string
	// Note carries non-fatal observations, e.g. why the secure-boot claims are false.
	Note string
}

// Server is an emulated MAA instance for Azure VM guests (attestation type AzureGuest).
type Server struct {
	roots, intermediates *x509.CertPool
	signingKey           crypto.Signer
	signingCert          *x509.Certificate
	kid                  string
	jwks                 []byte
	issuer               string
	tokenLifetime        time.Duration
	maxSkew              time.Duration
	now                  func() time.Time
	authorizePolicy      func(*http.Request) error
	log                  *slog.Logger
	replay               *replayCache
	defaultKeys          defaultKeySet

	mu     sync.Mutex
	policy *storedPolicy

	recMu   sync.Mutex
	records []RequestRecord
}

// storedPolicy is the current AzureGuest policy.
type storedPolicy struct {
	text   string
	jws    string // the unsigned JWS holding it, as PUT (or built for the initial policy)
	parsed *policy
	hash   string
}

// New validates cfg and builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.TrustedRoots == nil {
		return nil, errors.New("maa emulator: Config.TrustedRoots is required")
	}
	issuer, err := normalizeIssuer(cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("maa emulator: %w", err)
	}
	s := &Server{
		roots:           cfg.TrustedRoots,
		intermediates:   cfg.Intermediates,
		issuer:          issuer,
		tokenLifetime:   cfg.TokenLifetime,
		maxSkew:         cfg.MaxClockSkewBetweenQuoteAndCertify,
		now:             cfg.Now,
		authorizePolicy: cfg.AuthorizePolicyRequest,
		log:             cfg.Logger,
		defaultKeys:     newDefaultKeySet(cfg.DefaultSecureBootKeys),
	}
	if s.intermediates == nil {
		s.intermediates = x509.NewCertPool()
	}
	if s.tokenLifetime <= 0 {
		s.tokenLifetime = DefaultTokenLifetime
	}
	if s.maxSkew <= 0 {
		s.maxSkew = DefaultMaxClockSkew
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.authorizePolicy == nil {
		s.authorizePolicy = refusePolicyRequests
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	size := cfg.ReplayCacheSize
	if size <= 0 {
		size = DefaultReplayCacheSize
	}
	perAK := cfg.ReplayEntriesPerAK
	if perAK <= 0 {
		perAK = DefaultReplayEntriesPerAK
	}
	s.replay = newReplayCache(size, perAK)

	if err := s.setupSigning(cfg.SigningKey, cfg.SigningCert); err != nil {
		return nil, fmt.Errorf("maa emulator: %w", err)
	}
	text := cfg.Policy
	if text == "" {
		text = DefaultPolicy
	}
	sp, err := newStoredPolicy(text, unsignedPolicyJWS(text))
	if err != nil {
		return nil, fmt.Errorf("maa emulator: initial policy: %w", err)
	}
	s.policy = sp
	return s, nil
}

func normalizeIssuer(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("Config.Issuer is required")
	}
	u, err := url.Parse(strings.TrimSuffix(raw, "/"))
	if err != nil {
		return "", fmt.Errorf("Config.Issuer: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("Config.Issuer %q must be an https URL with a host and no path", raw)
	}
	return u.String(), nil
}

// setupSigning settles the signing key and certificate and precomputes kid and the JWKS.
func (s *Server) setupSigning(key crypto.Signer, cert *x509.Certificate) error {
	switch {
	case key == nil && cert != nil:
		return errors.New("Config.SigningCert given without Config.SigningKey")
	case key == nil:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		key = k
	}
	pub, ok := key.Public().(*rsa.PublicKey)
	if !ok || pub.N.BitLen() < 2048 {
		return errors.New("Config.SigningKey must be an RSA key of at least 2048 bits (tokens are RS256)")
	}
	if cert == nil {
		c, err := selfSign(key, s.now())
		if err != nil {
			return fmt.Errorf("self-signing the token signing certificate: %w", err)
		}
		cert = c
	}
	if !pub.Equal(cert.PublicKey) {
		return errors.New("Config.SigningCert does not certify Config.SigningKey")
	}
	s.signingKey, s.signingCert = key, cert
	// kid: standard base64 of SHA-256 over the certificate, the same shape as real MAA kids
	// (44 characters, padded); stable for a given certificate.
	sum := sha256.Sum256(cert.Raw)
	s.kid = base64.StdEncoding.EncodeToString(sum[:])
	// The shape of real MAA's /certs: each key carries kid, kty and its certificate chain (x5c,
	// standard base64 DER) and no n or e (reference/maa.md), so relying parties must take the
	// public key from the certificate, as they must against Azure.
	type jwk struct {
		Kid string   `json:"kid"`
		Kty string   `json:"kty"`
		X5c []string `json:"x5c"`
	}
	jwks, err := json.Marshal(struct {
		Keys []jwk `json:"keys"`
	}{Keys: []jwk{{Kid: s.kid, Kty: "RSA", X5c: []string{base64.StdEncoding.EncodeToString(cert.Raw)}}}})
	if err != nil {
		return fmt.Errorf("encoding JWKS: %w", err)
	}
	s.jwks = jwks
	return nil
}

func selfSign(key crypto.Signer, now time.Time) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "attested-kv MAA emulator token signing"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(5, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// Issuer returns the instance URL (the iss claim of its tokens).
func (s *Server) Issuer() string { return s.issuer }

// SigningCertificate returns the certificate of the token signing key.
func (s *Server) SigningCertificate() *x509.Certificate { return s.signingCert }

// JWKS returns the JSON Web Key Set served at /certs.
func (s *Server) JWKS() []byte { return append([]byte(nil), s.jwks...) }

// Requests returns the attest and policy requests seen so far (the most recent 1024), oldest first.
func (s *Server) Requests() []RequestRecord {
	s.recMu.Lock()
	defer s.recMu.Unlock()
	return append([]RequestRecord(nil), s.records...)
}

func (s *Server) record(rec RequestRecord) {
	s.recMu.Lock()
	if len(s.records) >= maxRecords {
		s.records = append(s.records[:0:0], s.records[1:]...)
	}
	s.records = append(s.records, rec)
	s.recMu.Unlock()
	attrs := []any{"method", rec.Method, "path", rec.Path, "status", rec.Status}
	if rec.ErrorCode != "" {
		s.log.Warn("maa emulator refused request", append(attrs, "code", rec.ErrorCode, "message", rec.ErrorMessage)...)
		return
	}
	if rec.Note != "" {
		attrs = append(attrs, "note", rec.Note)
	}
	s.log.Info("maa emulator served request", append(attrs, "jti", rec.TokenID)...)
}

// Handler returns the instance's HTTP API:
//
//	POST /attest/AzureGuest?api-version=2020-10-01
//	GET  /certs
//	GET  /.well-known/openid-configuration
//	GET  /policies/AzureGuest?api-version=2025-06-01
//	PUT  /policies/AzureGuest?api-version=2025-06-01
//
// Every error is answered as a CloudError {"error":{"code","message"}}.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch {
	case path == wire.CertsPath:
		if !allowMethod(w, r, http.MethodGet) {
			return
		}
		writeJSON(w, http.StatusOK, s.jwks)
	case path == wire.OpenIDConfigPath:
		if !allowMethod(w, r, http.MethodGet) {
			return
		}
		doc, _ := json.Marshal(map[string]any{
			"issuer":                                s.issuer,
			"jwks_uri":                              s.issuer + wire.CertsPath,
			"id_token_signing_alg_values_supported": []string{string(jose.RS256)},
		})
		writeJSON(w, http.StatusOK, doc)
	case strings.HasPrefix(path, "/attest/"):
		s.handleAttest(w, r)
	case strings.HasPrefix(path, "/policies/"):
		s.handlePolicy(w, r)
	default:
		writeError(w, refuseStatus(http.StatusNotFound, CodeNotFound, "no such endpoint: %s", path))
	}
}

func allowMethod(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, refuseStatus(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "%s is not allowed on %s", r.Method, r.URL.Path))
	return false
}

// checkAPIVersion requires exactly one api-version query parameter with the given value.
func checkAPIVersion(r *http.Request, want string) (string, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return "", refuse(CodeUnsupportedAPIVersion, "malformed query string: %v", err)
	}
	v := q["api-version"]
	if len(v) != 1 || v[0] != want {
		return strings.Join(v, ","), refuse(CodeUnsupportedAPIVersion, "api-version %q is not supported here; use api-version=%s", strings.Join(v, ","), want)
	}
	return v[0], nil
}

// Media types of request bodies: POST /attest takes JSON {"AttestationInfo": ...} (AZGA
// AttestationClientImpl.cpp; reference/maa.md "Request"), PUT /policies the compact JWS as raw
// text (the REST spec's Policy_Set "consumes: text/plain"; reference/azure-sdk.md §5, where the
// header the C++ SDK sends is UNCONFIRMED).
const (
	mediaTypeJSON = "application/json"
	mediaTypeText = "text/plain"
)

// requireMediaType refuses with 415 a request whose one Content-Type is not want. Parameters
// are allowed, and mime.ParseMediaType compares the type without regard to case, as RFC 9110
// says; a charset other than UTF-8 is refused as not emulated (every body here is ASCII, and
// what MAA does with another charset is UNCONFIRMED).
func requireMediaType(r *http.Request, want string) error {
	values := r.Header.Values("Content-Type")
	switch len(values) {
	case 0:
		return refuseStatus(http.StatusUnsupportedMediaType, CodeUnsupportedMediaTypeOrBody, "the request has no Content-Type; send the body as %s", want)
	case 1:
	default:
		return refuseStatus(http.StatusUnsupportedMediaType, CodeUnsupportedMediaTypeOrBody, "the request has %d Content-Type headers; send one, %s", len(values), want)
	}
	mt, params, err := mime.ParseMediaType(values[0])
	if err != nil {
		return refuseStatus(http.StatusUnsupportedMediaType, CodeUnsupportedMediaTypeOrBody, "Content-Type %q does not parse: %v; send the body as %s", values[0], err, want)
	}
	if mt != want {
		return refuseStatus(http.StatusUnsupportedMediaType, CodeUnsupportedMediaTypeOrBody, "Content-Type %q is not supported here; send the body as %s", mt, want)
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return refuseStatus(http.StatusUnsupportedMediaType, CodeUnsupportedMediaTypeOrBody, "charset %q is not emulated; send %s as UTF-8", cs, want)
	}
	return nil
}

// readBody reads at most limit bytes of the body, answering 413 beyond that.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, refuseStatus(http.StatusRequestEntityTooLarge, CodeRequestBodyTooLarge, "request body exceeds %d bytes", limit)
		}
		return nil, refuse(CodeInvalidRequestBody, "reading request body: %v", err)
	}
	return body, nil
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeError(w http.ResponseWriter, ce *checkError) {
	body, _ := json.Marshal(wire.CloudError{Error: wire.CloudErrorBody{Code: ce.Code, Message: ce.Err.Error()}})
	writeJSON(w, ce.Status, body)
}

// errNoPolicyAuthorizer is the refusal of every policy request when Config.AuthorizePolicyRequest
// is nil.
var errNoPolicyAuthorizer = errors.New("no policy authorizer is configured, so no bearer token can be validated: policy requests are refused")

// requireBearer refuses a request without an "Authorization: Bearer <token>" header; it runs
// before Config.AuthorizePolicyRequest, which validates the token.
func requireBearer(r *http.Request) error {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return errors.New("the policy endpoints require an Authorization: Bearer token")
	}
	return nil
}

// refusePolicyRequests is the policy-endpoint authorization without Config.AuthorizePolicyRequest:
// fail closed.
func refusePolicyRequests(*http.Request) error { return errNoPolicyAuthorizer }
