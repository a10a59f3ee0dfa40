// Package keyvault emulates the Azure Key Vault data plane that azkeys, azcertificates and
// azsecrets use, so the real SDK clients sign, create certificates and read certificate chains
// against the local stack unchanged (apart from the vault URL).
//
// Emulated, with Key Vault's REST shapes (request and response JSON of the SDK's models):
//   - challenge-based bearer authentication: a request without a token gets 401 with
//     `WWW-Authenticate: Bearer authorization="{authority}/{tenant}", resource="https://vault.azure.net"`;
//     a token is validated by Config.ValidateToken (the Entra emulator's keys, audience, expiry),
//     and with Config.Assignments each operation needs its Azure RBAC data action, held at the
//     vault's scope or the object's (403 Forbidden, innererror ForbiddenByRbac, otherwise);
//   - object names: 1-127 letters, digits and dashes, refused otherwise with 400 BadParameter
//     before any handler runs; names and versions are looked up without regard to case, and ids
//     report the case the object was created with;
//   - keys: create (RSA 2048/3072/4096, EC P-256/P-384/P-521), get (latest or a version), update
//     (attributes and key_ops), sign and verify a digest with Key Vault's algorithm rules
//     (PS*/RS* on RSA keys, ES256 only on P-256, ES384 on P-384, ES512 on P-521; the digest length
//     must be the algorithm's hash size; EC signatures are raw r||s);
//   - key attributes: enabled, nbf and exp (Unix seconds) are stored per version and reported;
//     sign on a disabled key, or before nbf or from exp on (by Config.Now), gets 403 Forbidden;
//   - key_ops: creation refuses values that are not JsonWebKeyOperation values or that the key
//     type does not support (400 BadParameter), and sign and verify refuse a key whose key_ops
//     lack the operation (403 Forbidden, innererror KeyOperationForbidden);
//   - certificates: create with a policy (self-issued, or by a configured local CA issuer), the
//     pending operation, get; the policy must give key_props.exportable (false: exportable keys
//     are not emulated), secret_props.contentType (application/x-pem-file) and issuer.name, which
//     Key Vault would default and the emulator does not (400 BadParameter otherwise); get returns
//     the policy as it was sent, without the defaults Key Vault would fill into its other
//     fields; creating a certificate creates the key and the secret of the same name and
//     version, as Key Vault does, the key's key_ops following the policy's key usage, its nbf
//     and exp the certificate's validity, and its bundle marked managed; a CA-issued leaf ends
//     no later than its issuer;
//   - secrets: get of a certificate's secret as application/x-pem-file (the certificate chain:
//     the leaf alone when self-issued, the leaf and Issuer.Chain when a configured CA issued it,
//     an UNCONFIRMED model of Key Vault's integrated CAs; keys are never exportable here, so
//     no private key is ever in a secret).
//
// Persistence, which Key Vault has and an emulator in memory lacks: with Config.StatePath, New
// loads the vault's keys and certificates from that file (none there: an empty vault), and every
// change (a key created or updated, a certificate created) writes the whole state back before it
// is answered, atomically (a temporary file in the same directory, fsync, rename, fsync of the
// directory) and under the vault's lock, so that writes never interleave. The file is JSON
// ({"version":1,...}) and holds every version of every key, with its private key as PKCS#8 DER,
// kty, key_ops, enabled, nbf, exp, created, updated and the managed flag, and every version of
// every certificate, with its chain (DER), policy and issuer; it is written 0600. New refuses,
// with an error naming the file, a file that is not the user's own, that others may read or
// write, that is a symbolic link, or that does not parse or holds what the emulator never writes
// (another version, an unknown field, a key of another type, a certificate not of its key):
// starting with an empty vault instead would silently make a new signing key. A change the vault
// cannot write is undone and answered 500 InternalError, never reported done. Not kept: the
// request log, injected faults, and pending operations (a certificate read from the file has its
// operation completed).
//
// Approximations: a certificate is issued when it is created, and readable at once; only its
// operation reports "inProgress", as Key Vault's 202 answer does, for Config.PendingPolls reads of
// the pending operation before "completed" (what Key Vault returns for a read of a certificate
// still pending is UNCONFIRMED); PKCS#12 secrets are not emulated (a policy asking for
// them is refused with 400); error codes follow Key Vault's names where known (Unauthorized,
// Forbidden, KeyNotFound, CertificateNotFound, SecretNotFound, BadParameter), messages are the
// emulator's own.
package keyvault

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"mime"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Resource is Key Vault's Entra ID resource: the audience of its tokens and the challenge's
// resource.
const Resource = "https://vault.azure.net"

// APIVersions are the api-version values accepted (the SDK versions in go.mod send 2025-07-01 and
// 2026-04-01; older SDKs send 7.x).
var APIVersions = []string{"7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"}

// maxBody bounds request bodies.
const maxBody = 64 << 10

// Issuer is a certificate issuer a policy may name instead of "Self": the emulator's model of a
// CA integrated with Key Vault (as DigiCert and GlobalSign are), which issues as soon as the
// certificate is created, without a CSR to merge.
type Issuer struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// Chain are the issuer's own certificates up to the root (Cert first). The secret of every
	// certificate the issuer issues holds the leaf followed by Chain, at once. UNCONFIRMED: that
	// is the emulator's model of an integrated CA; what is documented (reference/notation.md,
	// "Certificate chain") is that a secret holds the full chain only if the chain was merged
	// in at CSR-merge time or imported, and what an integrated CA's certificates get is not.
	// A client that needs the chain of a certificate from another CA must not count on it.
	Chain []*x509.Certificate
}

// Config configures the vault.
type Config struct {
	// Authority is the Entra authority host URL (https://host[:port]) named in the challenge.
	Authority string
	// TenantID is named in the challenge.
	TenantID string
	// Resource is the Entra ID resource the challenge names; Resource if empty. Azure's SDK
	// requires the vault's host to be a subdomain of it (unless told not to check), so a vault
	// served under another domain names that domain here.
	Resource string
	// ValidateToken checks a bearer token for the resource and returns the caller's identity,
	// its object id (oid), which Assignments name. Required.
	ValidateToken func(raw string) (principal string, err error)
	// Assignments are the vault's role assignments (its Azure RBAC permission model), checked
	// for every operation. Nil lets every caller ValidateToken accepts do everything: a
	// shortcut for tests that are not about authorization, which no vault in RBAC mode offers;
	// the local stack always sets them.
	Assignments []Assignment
	// Issuers are CA issuers by name.
	Issuers map[string]Issuer
	// PendingPolls is how many reads of a new certificate's pending operation answer
	// "inProgress" before one answers "completed"; 0 completes it at the first read.
	PendingPolls int
	// Now is the clock; time.Now if nil.
	Now func() time.Time
	// StatePath, if set, is the file the vault keeps its keys and certificates in across
	// restarts (see the package documentation): New loads it, if it exists, and every change
	// rewrites it. Its directory must exist. Empty: the vault lives in memory only.
	StatePath string
	// Logger receives one record per request; silent if nil.
	Logger *slog.Logger
}

// Request is one request as the vault saw it.
type Request struct {
	Time      time.Time
	Method    string
	Path      string
	Op        string
	Principal string
	Status    int
	Code      string
}

// Server is an emulated vault.
type Server struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	keys     map[string][]*keyVersion
	certs    map[string][]*certVersion
	requests []Request
	faults   map[string]*fault
}

// keyVersion is one version of a key. It is never changed once stored: UpdateKey stores an
// updated copy in its place, so a handler holding a version reads a consistent one.
type keyVersion struct {
	// name is the key's name in the case it was first created with (Key Vault's names are
	// case-insensitive; ids report the stored case).
	name    string
	version string
	kty     string
	priv    crypto.Signer
	ops     []string
	created time.Time
	updated time.Time
	// enabled, nbf and exp are the key's attributes; nbf and exp are Unix seconds as the REST
	// API carries them, nil when unset.
	enabled  bool
	nbf, exp *int64
	// managed marks the key of a certificate (Key Vault's KeyBundle.managed).
	managed bool
}

type certVersion struct {
	name    string // as first created, like keyVersion.name
	version string
	chain   []*x509.Certificate // leaf first
	policy  json.RawMessage
	issuer  string // the policy's issuer name ("Self" or a configured CA issuer)
	created time.Time
	pending int // reads of the pending operation left before it completes; under Server.mu
}

type fault struct {
	status int
	left   int
}

// New returns a vault: empty, or with the state of Config.StatePath.
func New(cfg Config) (*Server, error) {
	if cfg.ValidateToken == nil || cfg.Authority == "" || cfg.TenantID == "" {
		return nil, errors.New("keyvault emulator: Authority, TenantID and ValidateToken are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Resource == "" {
		cfg.Resource = Resource
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	keys, certs := map[string][]*keyVersion{}, map[string][]*certVersion{}
	if cfg.StatePath != "" {
		var err error
		if keys, certs, err = loadState(cfg.StatePath); err != nil {
			return nil, fmt.Errorf("keyvault emulator: state file %s: %w", cfg.StatePath, err)
		}
	}
	return &Server{cfg: cfg, log: log, keys: keys, certs: certs, faults: map[string]*fault{}}, nil
}

// InjectFault makes the next n requests of operation op (e.g. "sign") fail with status.
func (s *Server) InjectFault(op string, status, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[op] = &fault{status: status, left: n}
}

// Requests returns the requests seen so far, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Count returns how many requests of op were answered with status (0 = any status).
func (s *Server) Count(op string, status int) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Op == op && (status == 0 || r.Status == status) {
			n++
		}
	}
	return n
}

// Handler serves the vault's data plane.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern, op string, h func(w http.ResponseWriter, r *http.Request) (int, any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { s.serve(w, r, op, h) })
	}
	route("POST /keys/{name}/create", "keys/create", s.createKey)
	// The SDK sends "NAME/" for the latest version: Key Vault treats it as "NAME".
	route("GET /keys/{name}", "keys/get", s.getKey)
	route("GET /keys/{name}/{$}", "keys/get", s.getKey)
	route("GET /keys/{name}/{version}", "keys/get", s.getKey)
	// UpdateKey: azkeys sends PATCH /keys/NAME/VERSION, and /keys/NAME/ for an empty version.
	route("PATCH /keys/{name}/{$}", "keys/update", s.updateKey)
	route("PATCH /keys/{name}/{version}", "keys/update", s.updateKey)
	// Sign and verify without a version use the key's latest version (lookupKeyLocked). The REST
	// reference still marks {key-version} required (learn.microsoft.com/rest/api/keyvault/keys/
	// sign/sign, api-version 2025-07-01), but the SDK team made it optional for the crypto
	// operations "after talking with the Key Vault and Managed HSM teams", to promote signing with
	// the latest version (Azure/azure-sdk-for-rust#4134 and #4249, Azure/azure-rest-api-specs
	// #42274 and #42571); the .NET KeyVaultClient.SignAsync documented keyVersion as optional, and
	// azkeys sends POST /keys/NAME/sign for an empty version (reference/azure-sdk.md §4.1).
	// UNCONFIRMED against the live service here, which is where azure-sdk.md leaves it.
	route("POST /keys/{name}/sign", "sign", s.sign)
	route("POST /keys/{name}/{version}/sign", "sign", s.sign)
	route("POST /keys/{name}/verify", "verify", s.verify)
	route("POST /keys/{name}/{version}/verify", "verify", s.verify)
	route("POST /certificates/{name}/create", "certificates/create", s.createCertificate)
	route("GET /certificates/{name}/pending", "certificates/getoperation", s.certificateOperation)
	route("GET /certificates/{name}", "certificates/get", s.getCertificate)
	route("GET /certificates/{name}/{$}", "certificates/get", s.getCertificate)
	route("GET /certificates/{name}/{version}", "certificates/get", s.getCertificate)
	route("GET /secrets/{name}", "secrets/get", s.getSecret)
	route("GET /secrets/{name}/{$}", "secrets/get", s.getSecret)
	route("GET /secrets/{name}/{version}", "secrets/get", s.getSecret)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.serve(w, r, "unknown", func(http.ResponseWriter, *http.Request) (int, any, error) {
			return 0, nil, kvError(http.StatusNotFound, "NotFound", "no such operation: %s %s", r.Method, r.URL.Path)
		})
	})
	return mux
}

// apiError is Key Vault's error shape {"error":{"code","message","innererror":{"code"}}}; the
// innererror is present only where Key Vault is known to send one.
type apiError struct {
	status  int
	code    string
	message string
	inner   string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func kvError(status int, code, format string, args ...any) error {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, op string, h func(http.ResponseWriter, *http.Request) (int, any, error)) {
	rec := Request{Time: s.cfg.Now(), Method: r.Method, Path: r.URL.Path, Op: op}
	status, body, err := s.authorizeAndRun(w, r, op, &rec, h)
	if err != nil {
		var ae *apiError
		if !errors.As(err, &ae) {
			ae = &apiError{status: http.StatusInternalServerError, code: "InternalError", message: err.Error()}
		}
		e := map[string]any{"code": ae.code, "message": ae.message}
		if ae.inner != "" {
			e["innererror"] = map[string]string{"code": ae.inner}
		}
		status, body, rec.Code = ae.status, map[string]any{"error": e}, ae.code
	}
	rec.Status = status
	s.mu.Lock()
	s.requests = append(s.requests, rec)
	s.mu.Unlock()
	s.log.Info("key vault request", "op", op, "path", rec.Path, "status", status, "code", rec.Code, "principal", rec.Principal)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("x-ms-keyvault-service-version", "1.9.0.0-emulated")
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer authorization="%s/%s", resource="%s"`, strings.TrimSuffix(s.cfg.Authority, "/"), s.cfg.TenantID, s.cfg.Resource))
	}
	w.WriteHeader(status)
	if body != nil {
		json.NewEncoder(w).Encode(body)
	}
}

func (s *Server) authorizeAndRun(w http.ResponseWriter, r *http.Request, op string, rec *Request, h func(http.ResponseWriter, *http.Request) (int, any, error)) (int, any, error) {
	authz := r.Header.Get("Authorization")
	if authz == "" {
		return http.StatusUnauthorized, map[string]any{"error": map[string]string{"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}}, nil
	}
	raw, ok := strings.CutPrefix(authz, "Bearer ")
	if !ok {
		return 0, nil, kvError(http.StatusUnauthorized, "Unauthorized", "AKV10001: Authorization header is not a Bearer token.")
	}
	principal, err := s.cfg.ValidateToken(raw)
	if err != nil {
		return 0, nil, kvError(http.StatusUnauthorized, "Unauthorized", "AKV10022: Invalid audience, issuer or signature: %v", err)
	}
	rec.Principal = principal
	if v := r.URL.Query().Get("api-version"); !slices.Contains(APIVersions, v) {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "The specified version (%s) is not recognized. Consider using the latest supported version (%s).", v, APIVersions[len(APIVersions)-1])
	}
	// Every route naming an object has {name}; the catch-all has none (PathValue is "").
	if name := r.PathValue("name"); name != "" && !validName(name) {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "The request URI contains an invalid name: %s", name)
	}
	if err := s.authorizeRBAC(principal, op, r.PathValue("name")); err != nil {
		return 0, nil, err
	}
	s.mu.Lock()
	f := s.faults[op]
	if f != nil && f.left > 0 {
		f.left--
		s.mu.Unlock()
		if f.status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		return 0, nil, kvError(f.status, http.StatusText(f.status), "injected fault for %s", op)
	}
	s.mu.Unlock()
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	}
	return h(w, r)
}

// decode reads a JSON request body into v. The body must be sent as application/json (charset
// UTF-8, if one is named), as Azure's SDKs send every Key Vault body (azcore's MarshalAsJSON);
// another media type is refused (UNCONFIRMED: what Key Vault answers it with, 400 or 415).
func decode(r *http.Request, v any) error {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" || (params["charset"] != "" && !strings.EqualFold(params["charset"], "utf-8")) {
		return kvError(http.StatusBadRequest, "BadParameter", "request body of Content-Type %.60q: want application/json", r.Header.Get("Content-Type"))
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return kvError(http.StatusBadRequest, "BadParameter", "request body: %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return kvError(http.StatusBadRequest, "BadParameter", "request body is not valid JSON: %v", err)
	}
	return nil
}

func newVersion() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func vaultURL(r *http.Request) string { return "https://" + r.Host }

// maxNameLen is the longest object name Key Vault accepts.
const maxNameLen = 127

// validName reports whether name is a Key Vault object name: 1-127 characters of 0-9, a-z, A-Z
// and '-' (Microsoft Learn, "Azure Key Vault keys, secrets and certificates overview", object
// identifiers). The rule is written out here rather than shared with internal/keyvault's
// ParseKeyID, so that a client rule that disagrees with the service cannot be hidden by an
// emulator applying the same rule; TestObjectNameRuleAgrees in internal/keyvault compares the two.
// Key Vault's message for a bad name, "The request URI contains an invalid name: NAME", is as
// reported for secrets in SDK issues (UNCONFIRMED for keys and certificates).
func validName(name string) bool {
	if len(name) == 0 || len(name) > maxNameLen {
		return false
	}
	for _, c := range name {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

// nameKey is the map key of an object name: Key Vault's names (and versions) are
// case-insensitive (same document, object identifiers).
func nameKey(name string) string { return strings.ToLower(name) }

// ---- keys ----

// keyAttributesRequest is the writable part of Key Vault's KeyAttributes in create and update
// requests (azkeys KeyAttributes: enabled, nbf and exp as Unix seconds, exportable); the
// read-only fields (created, updated, recoveryLevel, ...) are ignored, as the service ignores them
// (UNCONFIRMED).
type keyAttributesRequest struct {
	Enabled    *bool  `json:"enabled"`
	NotBefore  *int64 `json:"nbf"`
	Expires    *int64 `json:"exp"`
	Exportable *bool  `json:"exportable"`
}

type createKeyRequest struct {
	Kty           string                `json:"kty"`
	KeySize       int                   `json:"key_size"`
	Crv           string                `json:"crv"`
	KeyOps        []string              `json:"key_ops"`
	Attributes    *keyAttributesRequest `json:"attributes"`
	ReleasePolicy json.RawMessage       `json:"release_policy"`
}

// updateKeyRequest is UpdateKey's body (azkeys UpdateKeyParameters). KeyOps is a pointer so that
// an absent key_ops leaves the key's operations as they are.
type updateKeyRequest struct {
	Attributes    *keyAttributesRequest `json:"attributes"`
	KeyOps        *[]string             `json:"key_ops"`
	ReleasePolicy json.RawMessage       `json:"release_policy"`
}

// applyAttributes sets the attributes a request gives on kv. Exportable keys need a release
// policy (azkeys KeyAttributes.Exportable) and key release is not emulated, so exportable true is
// refused. An nbf not before exp is refused (UNCONFIRMED that Key Vault refuses it; a key valid
// at no time would refuse every sign either way).
func applyAttributes(kv *keyVersion, a *keyAttributesRequest) error {
	if a == nil {
		return nil
	}
	if a.Exportable != nil && *a.Exportable {
		return kvError(http.StatusBadRequest, "BadParameter", "exportable keys need a release policy, and key release is not emulated")
	}
	if a.Enabled != nil {
		kv.enabled = *a.Enabled
	}
	if a.NotBefore != nil {
		kv.nbf = ptr(*a.NotBefore)
	}
	if a.Expires != nil {
		kv.exp = ptr(*a.Expires)
	}
	if kv.nbf != nil && kv.exp != nil && *kv.nbf >= *kv.exp {
		return kvError(http.StatusBadRequest, "BadParameter", "attributes: nbf (%d) must be before exp (%d)", *kv.nbf, *kv.exp)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

func (s *Server) createKey(w http.ResponseWriter, r *http.Request) (int, any, error) {
	var req createKeyRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if isSet(req.ReleasePolicy) {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "release_policy: key release is not emulated")
	}
	// An absent key_ops gets the defaults; an empty list is kept as given, a key with no
	// operation (UNCONFIRMED what Key Vault does with it; the strict reading refuses every use).
	ops := req.KeyOps
	if ops == nil {
		ops = defaultKeyOps(req.Kty)
	}
	kv, err := s.generateKey(req.Kty, req.KeySize, req.Crv, ops)
	if err != nil {
		return 0, nil, err
	}
	if err := applyAttributes(kv, req.Attributes); err != nil {
		return 0, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	name := r.PathValue("name")
	s.storeKeyLocked(name, kv)
	if err := s.commitLocked(func() { s.unstoreKeyLocked(nameKey(name)) }); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, s.keyBundle(r, kv), nil
}

// isSet reports whether a JSON value was given and is not null.
func isSet(raw json.RawMessage) bool {
	return len(raw) > 0 && string(raw) != "null"
}

// updateKey is UpdateKey: it changes the attributes and key_ops of one key version (the latest
// for an empty version, UNCONFIRMED against the service, whose REST reference names the version
// as required). Whether Key Vault lets a certificate's (managed) key be updated directly is
// UNCONFIRMED; the emulator allows it.
func (s *Server) updateKey(w http.ResponseWriter, r *http.Request) (int, any, error) {
	var req updateKeyRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if isSet(req.ReleasePolicy) {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "release_policy: key release is not emulated")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	vs, i, err := s.lookupKeyLocked(r.PathValue("name"), r.PathValue("version"))
	if err != nil {
		return 0, nil, err
	}
	nv := *vs[i]
	if err := applyAttributes(&nv, req.Attributes); err != nil {
		return 0, nil, err
	}
	if req.KeyOps != nil {
		if err := checkKeyOps(nv.kty, *req.KeyOps); err != nil {
			return 0, nil, err
		}
		nv.ops = slices.Clone(*req.KeyOps)
	}
	nv.updated = s.cfg.Now()
	old := vs[i]
	vs[i] = &nv
	if err := s.commitLocked(func() { vs[i] = old }); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, s.keyBundle(r, &nv), nil
}

// Key operations (key_ops) are JsonWebKeyOperation values of the Key Vault REST API (7.4+):
// encrypt, decrypt, sign, verify, wrapKey, unwrapKey, import, export. azkeys v1.5.0 has all but
// export as KeyOperation constants (its CHANGELOG 0.12.0 removed KeyOperationExport); the REST
// reference still lists export.
const (
	opEncrypt   = "encrypt"
	opDecrypt   = "decrypt"
	opSign      = "sign"
	opVerify    = "verify"
	opWrapKey   = "wrapKey"
	opUnwrapKey = "unwrapKey"
	opImport    = "import"
	opExport    = "export"
)

// rsaKeyOps are the operations an RSA key may carry. UNCONFIRMED: whether a vault (as opposed to
// a Managed HSM) accepts import and export on a created key.
var rsaKeyOps = []string{opEncrypt, opDecrypt, opSign, opVerify, opWrapKey, opUnwrapKey, opImport, opExport}

// ecKeyOps are the operations an EC key may carry. Key Vault answers an EC key with other
// operations with 400 BadParameter `Unsupported key operation(s): "wrapKey", "unwrapKey".
// Supported values are "sign", "verify".` (Azure/AzureKeyVault issue #22, a certificate import).
var ecKeyOps = []string{opSign, opVerify}

// allowedKeyOps returns the key_ops a key of kty may carry (nil for an unknown kty).
func allowedKeyOps(kty string) []string {
	switch kty {
	case "RSA", "RSA-HSM":
		return rsaKeyOps
	case "EC", "EC-HSM":
		return ecKeyOps
	}
	return nil
}

// defaultKeyOps are the key_ops of a key created without any. UNCONFIRMED: Key Vault's defaults
// as shown by `az keyvault key create` (all six cryptographic operations for RSA, sign and verify
// for EC); only sign and verify are emulated either way.
func defaultKeyOps(kty string) []string {
	switch kty {
	case "RSA", "RSA-HSM":
		return []string{opEncrypt, opDecrypt, opSign, opVerify, opWrapKey, opUnwrapKey}
	case "EC", "EC-HSM":
		return []string{opSign, opVerify}
	}
	return nil
}

// checkKeyOps refuses key_ops values that are not JsonWebKeyOperation values or that the key
// type does not support, with Key Vault's 400 BadParameter (message of Azure/AzureKeyVault#22;
// UNCONFIRMED that an unknown value, as opposed to an unsupported one, gets the same message:
// the service may refuse it while deserializing). Values are case-sensitive here (UNCONFIRMED).
func checkKeyOps(kty string, ops []string) error {
	allowed := allowedKeyOps(kty)
	var bad []string
	for _, op := range ops {
		if !slices.Contains(allowed, op) && !slices.Contains(bad, op) {
			bad = append(bad, op)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return kvError(http.StatusBadRequest, "BadParameter", "Unsupported key operation(s): %s. Supported values are %s.", quoteList(bad), quoteList(allowed))
}

func quoteList(v []string) string {
	q := make([]string, len(v))
	for i, s := range v {
		q[i] = `"` + s + `"`
	}
	return strings.Join(q, ", ")
}

// requireKeyOp refuses an operation the key's key_ops do not permit, as Key Vault does: 403
// {"error":{"code":"Forbidden","message":"Operation decrypt is not permitted on this key.",
// "innererror":{"code":"KeyOperationForbidden"}}} (wire capture in Azure/azure-sdk-for-net#11518;
// the sign and verify messages are assumed to follow the same pattern, UNCONFIRMED).
func requireKeyOp(kv *keyVersion, op string) error {
	if slices.Contains(kv.ops, op) {
		return nil
	}
	return &apiError{status: http.StatusForbidden, code: "Forbidden", message: fmt.Sprintf("Operation %s is not permitted on this key.", op), inner: "KeyOperationForbidden"}
}

// generateKey makes a new, enabled, key version with exactly the given key_ops; storeKeyLocked
// stores it.
func (s *Server) generateKey(kty string, size int, crv string, ops []string) (*keyVersion, error) {
	var priv crypto.Signer
	var err error
	if allowedKeyOps(kty) != nil {
		if err := checkKeyOps(kty, ops); err != nil {
			return nil, err
		}
	}
	switch kty {
	case "RSA", "RSA-HSM":
		if size == 0 {
			size = 2048
		}
		if size != 2048 && size != 3072 && size != 4096 {
			return nil, kvError(http.StatusBadRequest, "BadParameter", "key_size %d: RSA keys are 2048, 3072 or 4096 bits", size)
		}
		priv, err = rsa.GenerateKey(rand.Reader, size)
	case "EC", "EC-HSM":
		var c elliptic.Curve
		switch crv {
		case "P-256", "":
			c = elliptic.P256()
		case "P-384":
			c = elliptic.P384()
		case "P-521":
			c = elliptic.P521()
		default:
			return nil, kvError(http.StatusBadRequest, "BadParameter", "crv %q is not supported (P-256K is not emulated)", crv)
		}
		priv, err = ecdsa.GenerateKey(c, rand.Reader)
	default:
		return nil, kvError(http.StatusBadRequest, "BadParameter", "kty %q: want RSA, RSA-HSM, EC or EC-HSM", kty)
	}
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	return &keyVersion{version: newVersion(), kty: kty, priv: priv, ops: slices.Clone(ops), created: now, updated: now, enabled: true}, nil
}

// storeKeyLocked stores kv as the latest version of key name, under the name's stored case if
// the key exists (UNCONFIRMED which case Key Vault reports when a new version is created under
// another case of the name). s.mu must be held.
func (s *Server) storeKeyLocked(name string, kv *keyVersion) {
	vs := s.keys[nameKey(name)]
	kv.name = name
	if len(vs) > 0 {
		kv.name = vs[0].name
	}
	s.keys[nameKey(name)] = append(vs, kv)
}

func (s *Server) lookupKey(name, version string) (*keyVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vs, i, err := s.lookupKeyLocked(name, version)
	if err != nil {
		return nil, err
	}
	return vs[i], nil
}

// lookupKeyLocked finds a key version, name and version compared without regard to case; s.mu
// must be held.
func (s *Server) lookupKeyLocked(name, version string) ([]*keyVersion, int, error) {
	vs := s.keys[nameKey(name)]
	if len(vs) == 0 {
		return nil, 0, kvError(http.StatusNotFound, "KeyNotFound", "A key with (name/id) %s was not found in this key vault.", name)
	}
	if version == "" {
		return vs, len(vs) - 1, nil // the latest version; see the sign route in Handler
	}
	for i, v := range vs {
		if strings.EqualFold(v.version, version) {
			return vs, i, nil
		}
	}
	return nil, 0, kvError(http.StatusNotFound, "KeyNotFound", "A key with (name/id) %s/%s was not found in this key vault.", name, version)
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// attributes are an object's attributes as Key Vault reports them; nbf and exp (Unix seconds)
// are left out when unset, as the service leaves them out.
func attributes(enabled bool, created, updated time.Time, nbf, exp *int64) map[string]any {
	a := map[string]any{"enabled": enabled, "created": created.Unix(), "updated": updated.Unix(), "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90}
	if nbf != nil {
		a["nbf"] = *nbf
	}
	if exp != nil {
		a["exp"] = *exp
	}
	return a
}

// Key Vault's rules for a key's state (Microsoft Learn, "About keys", key attributes): outside
// the nbf/exp window only decrypt, unwrap and verify (and release, not emulated) are allowed; a
// disabled key refuses the private-key operations decrypt, sign and unwrap, while encrypt, wrap
// and verify still work (Azure/azure-sdk-for-python#45342, a report of the live service's
// answers; the Learn page reads as if a disabled key refused every operation).
var (
	opsOutsideWindow = []string{opDecrypt, opUnwrapKey, opVerify}
	opsWhenDisabled  = []string{opEncrypt, opWrapKey, opVerify}
)

// requireKeyState refuses op on a key that is disabled, or used before its nbf or at or after its
// exp (judged by now), with 403 Forbidden. A disabled key's answer is reported as
// {"code":"Forbidden","message":"Operation sign is not allowed on a disabled key.",
// "innererror":{"code":"KeyDisabled"}} (Azure/azure-sdk-for-python#45342); the messages and
// innererror codes for an expired or not yet valid key (KeyExpired, KeyNotYetValid) are
// UNCONFIRMED.
func requireKeyState(kv *keyVersion, op string, now time.Time) error {
	forbidden := func(state, inner string) error {
		return &apiError{status: http.StatusForbidden, code: "Forbidden", message: fmt.Sprintf("Operation %s is not allowed on %s key.", op, state), inner: inner}
	}
	if !kv.enabled && !slices.Contains(opsWhenDisabled, op) {
		return forbidden("a disabled", "KeyDisabled")
	}
	if slices.Contains(opsOutsideWindow, op) {
		return nil
	}
	if kv.nbf != nil && now.Before(time.Unix(*kv.nbf, 0)) {
		return forbidden("a not yet valid", "KeyNotYetValid")
	}
	if kv.exp != nil && !now.Before(time.Unix(*kv.exp, 0)) {
		return forbidden("an expired", "KeyExpired")
	}
	return nil
}

func (s *Server) keyBundle(r *http.Request, kv *keyVersion) map[string]any {
	jwk := map[string]any{"kid": vaultURL(r) + "/keys/" + kv.name + "/" + kv.version, "kty": kv.kty, "key_ops": kv.ops}
	switch k := kv.priv.Public().(type) {
	case *rsa.PublicKey:
		jwk["n"] = b64u(k.N.Bytes())
		jwk["e"] = b64u(big.NewInt(int64(k.E)).Bytes())
	case *ecdsa.PublicKey:
		n := (k.Curve.Params().BitSize + 7) / 8
		jwk["crv"] = k.Curve.Params().Name
		if point, err := k.Bytes(); err == nil { // 0x04 || X || Y, each n bytes
			jwk["x"] = b64u(point[1 : 1+n])
			jwk["y"] = b64u(point[1+n:])
		}
	}
	b := map[string]any{"key": jwk, "attributes": attributes(kv.enabled, kv.created, kv.updated, kv.nbf, kv.exp)}
	if kv.managed {
		b["managed"] = true
	}
	return b
}

// getKey answers a disabled or expired key's bundle too: Key Vault does (notaryproject/ratify#1474
// reads the enabled attribute of a fetched key to refuse a disabled one), UNCONFIRMED for
// expired ones.
func (s *Server) getKey(w http.ResponseWriter, r *http.Request) (int, any, error) {
	kv, err := s.lookupKey(r.PathValue("name"), r.PathValue("version"))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, s.keyBundle(r, kv), nil
}

// algorithm rules of Key Vault's sign and verify.
func hashFor(alg string, kv *keyVersion) (crypto.Hash, error) {
	var h crypto.Hash
	switch alg {
	case "PS256", "RS256", "ES256":
		h = crypto.SHA256
	case "PS384", "RS384", "ES384":
		h = crypto.SHA384
	case "PS512", "RS512", "ES512":
		h = crypto.SHA512
	default:
		return 0, kvError(http.StatusBadRequest, "BadParameter", "Algorithm %q is not supported", alg)
	}
	switch k := kv.priv.Public().(type) {
	case *rsa.PublicKey:
		if alg[0] == 'E' {
			return 0, kvError(http.StatusBadRequest, "BadParameter", "Algorithm %s is not valid for an RSA key", alg)
		}
	case *ecdsa.PublicKey:
		want := map[string]string{"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg]
		if want != k.Curve.Params().Name {
			return 0, kvError(http.StatusBadRequest, "BadParameter", "Algorithm %s is not valid for a %s key", alg, k.Curve.Params().Name)
		}
	}
	return h, nil
}

type signRequest struct {
	Alg   string `json:"alg"`
	Value string `json:"value"`
}

func (s *Server) sign(w http.ResponseWriter, r *http.Request) (int, any, error) {
	var req signRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	kv, err := s.lookupKey(r.PathValue("name"), r.PathValue("version"))
	if err != nil {
		return 0, nil, err
	}
	if err := requireKeyOp(kv, opSign); err != nil {
		return 0, nil, err
	}
	if err := requireKeyState(kv, opSign, s.cfg.Now()); err != nil {
		return 0, nil, err
	}
	h, err := hashFor(req.Alg, kv)
	if err != nil {
		return 0, nil, err
	}
	digest, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(req.Value, "="))
	if err != nil || len(digest) != h.Size() {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "Invalid length of 'value': %s needs a %d-byte digest", req.Alg, h.Size())
	}
	var sig []byte
	switch k := kv.priv.(type) {
	case *rsa.PrivateKey:
		if req.Alg[0] == 'P' {
			sig, err = rsa.SignPSS(rand.Reader, k, h, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		} else {
			sig, err = rsa.SignPKCS1v15(rand.Reader, k, h, digest)
		}
	case *ecdsa.PrivateKey:
		var rr, ss *big.Int
		if rr, ss, err = ecdsa.Sign(rand.Reader, k, digest); err == nil {
			n := (k.Curve.Params().BitSize + 7) / 8
			sig = append(rr.FillBytes(make([]byte, n)), ss.FillBytes(make([]byte, n))...)
		}
	}
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"kid": vaultURL(r) + "/keys/" + kv.name + "/" + kv.version, "value": b64u(sig)}, nil
}

type verifyRequest struct {
	Alg    string `json:"alg"`
	Digest string `json:"digest"`
	Value  string `json:"value"`
}

func (s *Server) verify(w http.ResponseWriter, r *http.Request) (int, any, error) {
	var req verifyRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	kv, err := s.lookupKey(r.PathValue("name"), r.PathValue("version"))
	if err != nil {
		return 0, nil, err
	}
	if err := requireKeyOp(kv, opVerify); err != nil {
		return 0, nil, err
	}
	if err := requireKeyState(kv, opVerify, s.cfg.Now()); err != nil {
		return 0, nil, err
	}
	h, err := hashFor(req.Alg, kv)
	if err != nil {
		return 0, nil, err
	}
	digest, err1 := base64.RawURLEncoding.DecodeString(strings.TrimRight(req.Digest, "="))
	sig, err2 := base64.RawURLEncoding.DecodeString(strings.TrimRight(req.Value, "="))
	if err1 != nil || err2 != nil || len(digest) != h.Size() {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "Invalid digest or signature encoding")
	}
	ok := false
	switch k := kv.priv.Public().(type) {
	case *rsa.PublicKey:
		if req.Alg[0] == 'P' {
			ok = rsa.VerifyPSS(k, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
		} else {
			ok = rsa.VerifyPKCS1v15(k, h, digest, sig) == nil
		}
	case *ecdsa.PublicKey:
		n := (k.Curve.Params().BitSize + 7) / 8
		if len(sig) == 2*n {
			ok = ecdsa.Verify(k, digest, new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:]))
		}
	}
	return http.StatusOK, map[string]any{"value": ok}, nil
}

// sha1Thumbprint is the certificate's x5t (SHA-1 of the DER, as Key Vault reports it).
func sha1Thumbprint(der []byte) []byte {
	s := sha1.Sum(der) //nolint:gosec // Key Vault's x5t is defined as SHA-1
	return s[:]
}

func pemChain(chain []*x509.Certificate) string {
	var b strings.Builder
	for _, c := range chain {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return b.String()
}
