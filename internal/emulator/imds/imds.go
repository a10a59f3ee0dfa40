// Package imds emulates the managed identity token endpoint of the Azure Instance Metadata
// Service (IMDS) of a VM, http://169.254.169.254/metadata/identity/oauth2/token, as azidentity's
// ManagedIdentityCredential (through MSAL's managedidentity package) calls it on an Azure VM, so
// that the plugin's credential_type=managedid runs against the local emulators unchanged. Tokens
// come from the Entra ID emulator (Config.Issue), so Key Vault's emulator accepts them and its
// role assignments name the identity's object id, as on Azure.
//
// Emulated (Microsoft Learn, "How to use managed identities for Azure resources on an Azure VM to
// acquire an access token", and MSAL Go's managedidentity request and response handling):
//   - GET only, with the header "Metadata: true" (else 400 bad_request_102, "Required metadata
//     header not specified"); a request carrying X-Forwarded-For is refused (IMDS answers only
//     requests made from the VM, never proxied ones);
//   - query parameters api-version (2018-02-01 or later, as MSAL sends), resource (required, the
//     resource URI without "/.default"), and at most one of client_id and object_id choosing a
//     user-assigned identity; msi_res_id is not emulated (400);
//   - the identity: the one named; else the system-assigned one; else, if the VM has exactly one
//     user-assigned identity and no system-assigned one, that one (implied by Microsoft Learn's
//     how-to-use-vm-token, which calls client_id and object_id "Required, if your VM has multiple
//     user-assigned managed identities", though not stated outright); a name the VM does not
//     have: 400 invalid_request "Identity not found";
//   - the answer: {"access_token", "client_id", "expires_in", "expires_on", "ext_expires_in",
//     "not_before", "resource", "token_type": "Bearer"}, the numbers as decimal strings, as IMDS
//     writes them.
//
// Not emulated: the other IMDS endpoints (instance metadata, attested documents), throttling
// (IMDS allows 20 requests a second and answers 429), and msi_res_id.
package imds

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Path is the managed identity token endpoint's path on IMDS.
const Path = "/metadata/identity/oauth2/token"

// minAPIVersion is the earliest api-version of the token endpoint.
var minAPIVersion = time.Date(2018, 2, 1, 0, 0, 0, 0, time.UTC)

// validAPIVersion reports whether v is an api-version of the token endpoint: a date (YYYY-MM-DD)
// no earlier than minAPIVersion and no later than today. Which dates IMDS publishes is not
// checked (UNCONFIRMED: MSAL sends 2018-02-01).
func validAPIVersion(v string) bool {
	d, err := time.Parse(time.DateOnly, v)
	return err == nil && !d.Before(minAPIVersion) && !d.After(time.Now())
}

// Config describes the VM's identities and where their tokens come from.
type Config struct {
	// SystemAssigned is the client id of the VM's system-assigned identity; "" if it has none.
	SystemAssigned string
	// UserAssigned are the client ids of the user-assigned identities attached to the VM.
	UserAssigned []string
	// ObjectID returns an identity's object (principal) id, for requests naming object_id.
	// Required.
	ObjectID func(clientID string) string
	// Issue returns an access token of the identity (its client id) for resource, and its
	// expiry. Required.
	Issue func(clientID, resource string) (token string, expires time.Time, err error)
	// Now is the clock; time.Now if nil.
	Now func() time.Time
}

// Request records one token request.
type Request struct {
	ClientID string // the identity chosen; "" if none
	Resource string
	Status   int
	Error    string
}

// Server is an emulated IMDS.
type Server struct {
	cfg      Config
	mu       sync.Mutex
	requests []Request
}

// New returns an IMDS serving cfg's identities.
func New(cfg Config) (*Server, error) {
	if cfg.Issue == nil || cfg.ObjectID == nil {
		return nil, errors.New("imds emulator: Issue and ObjectID are required")
	}
	if cfg.SystemAssigned == "" && len(cfg.UserAssigned) == 0 {
		return nil, errors.New("imds emulator: the VM has no identity")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.UserAssigned = slices.Clone(cfg.UserAssigned)
	return &Server{cfg: cfg}, nil
}

// Requests returns the token requests seen so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Handler serves the token endpoint; every other path is 404.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(Path, s.token)
	return mux
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	rec := Request{}
	defer func() {
		s.mu.Lock()
		s.requests = append(s.requests, rec)
		s.mu.Unlock()
	}()
	fail := func(status int, code, desc string) {
		rec.Status, rec.Error = status, code
		writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
	}
	q := r.URL.Query()
	rec.Resource = q.Get("resource")
	switch {
	case r.Method != http.MethodGet:
		w.Header().Set("Allow", http.MethodGet)
		fail(http.StatusMethodNotAllowed, "invalid_request", "Only GET is supported")
		return
	case r.Header.Get("Metadata") != "true":
		fail(http.StatusBadRequest, "bad_request_102", "Required metadata header not specified")
		return
	case r.Header.Get("X-Forwarded-For") != "":
		fail(http.StatusBadRequest, "invalid_request", "Request contains X-Forwarded-For header: IMDS does not answer proxied requests")
		return
	case q.Get("api-version") == "":
		fail(http.StatusBadRequest, "invalid_request", "Required query variable 'api-version' is missing")
		return
	case !validAPIVersion(q.Get("api-version")):
		fail(http.StatusBadRequest, "invalid_request", "Invalid version: "+q.Get("api-version"))
		return
	case rec.Resource == "":
		fail(http.StatusBadRequest, "invalid_request", "Required query variable 'resource' is missing")
		return
	case q.Has("msi_res_id"):
		fail(http.StatusBadRequest, "invalid_request", "msi_res_id is not emulated; name the identity by client_id or object_id")
		return
	case q.Has("client_id") && q.Has("object_id"):
		fail(http.StatusBadRequest, "invalid_request", "Only one of client_id, object_id and msi_res_id may be given")
		return
	}
	id, ok := s.identity(q.Get("client_id"), q.Get("object_id"))
	if !ok {
		fail(http.StatusBadRequest, "invalid_request", "Identity not found")
		return
	}
	rec.ClientID = id
	// IMDS takes the resource URI itself; a scope ("/.default") is a client mistake.
	if strings.HasSuffix(rec.Resource, "/.default") {
		fail(http.StatusBadRequest, "invalid_resource", "AADSTS500011: The resource principal named "+rec.Resource+" was not found in the tenant.")
		return
	}
	raw, exp, err := s.cfg.Issue(id, rec.Resource)
	if err != nil {
		fail(http.StatusBadRequest, "invalid_resource", fmt.Sprintf("AADSTS500011: The resource principal named %s was not found in the tenant: %v", rec.Resource, err))
		return
	}
	now := s.cfg.Now()
	in := strconv.FormatInt(int64(exp.Sub(now).Seconds()), 10)
	rec.Status = http.StatusOK
	writeJSON(w, http.StatusOK, map[string]string{
		"access_token": raw, "client_id": id, "expires_in": in, "ext_expires_in": in,
		"expires_on": strconv.FormatInt(exp.Unix(), 10), "not_before": strconv.FormatInt(now.Unix(), 10),
		"resource": rec.Resource, "token_type": "Bearer",
	})
}

// identity returns the client id of the identity a request names by client id or object id (at
// most one is non-empty), or the default one when it names none.
func (s *Server) identity(clientID, objectID string) (string, bool) {
	all := s.cfg.UserAssigned
	if s.cfg.SystemAssigned != "" {
		all = append([]string{s.cfg.SystemAssigned}, all...)
	}
	switch {
	case clientID != "":
		i := slices.IndexFunc(all, func(id string) bool { return strings.EqualFold(id, clientID) })
		return lookup(all, i)
	case objectID != "":
		i := slices.IndexFunc(all, func(id string) bool { return strings.EqualFold(s.cfg.ObjectID(id), objectID) })
		return lookup(all, i)
	case s.cfg.SystemAssigned != "":
		return s.cfg.SystemAssigned, true
	case len(s.cfg.UserAssigned) == 1:
		return s.cfg.UserAssigned[0], true
	}
	return "", false
}

func lookup(ids []string, i int) (string, bool) {
	if i < 0 {
		return "", false
	}
	return ids[i], true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
