package maa

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"unicode/utf8"

	wire "github.com/attested-kv/attested-kv/internal/maa"
)

// unsignedJWSHeader is the header of an unsigned policy JWS (reference/azure-sdk.md §5).
const unsignedJWSHeader = `{"alg":"none"}`

func newStoredPolicy(text, jws string) (*storedPolicy, error) {
	parsed, err := parsePolicy(text)
	if err != nil {
		return nil, err
	}
	return &storedPolicy{text: text, jws: jws, parsed: parsed, hash: policyHash(text)}, nil
}

func (s *Server) currentPolicy() *storedPolicy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.policy
}

// unsignedPolicyJWS wraps policy text the way Azure's tools do for the AAD trust model:
// b64url({"alg":"none"}) "." b64url({"AttestationPolicy": b64url(text)}) ".".
func unsignedPolicyJWS(text string) string {
	payload, _ := json.Marshal(wire.StoredAttestationPolicy{AttestationPolicy: base64.RawURLEncoding.EncodeToString([]byte(text))})
	return base64.RawURLEncoding.EncodeToString([]byte(unsignedJWSHeader)) + "." + base64.RawURLEncoding.EncodeToString(payload) + "."
}

// handlePolicy serves GET and PUT /policies/{type}.
func (s *Server) handlePolicy(w http.ResponseWriter, r *http.Request) {
	rec := RequestRecord{Time: s.now(), Method: r.Method, Path: r.URL.Path}
	body, err := s.policyRequest(w, r, &rec)
	if err != nil {
		ce := asCheckError(err)
		rec.Status, rec.ErrorCode, rec.ErrorMessage = ce.Status, ce.Code, ce.Err.Error()
		s.record(rec)
		writeError(w, ce)
		return
	}
	rec.Status = http.StatusOK
	s.record(rec)
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) policyRequest(w http.ResponseWriter, r *http.Request, rec *RequestRecord) ([]byte, error) {
	if r.Method != http.MethodGet && r.Method != http.MethodPut {
		w.Header().Set("Allow", "GET, PUT")
		return nil, refuseStatus(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "%s is not allowed on %s", r.Method, r.URL.Path)
	}
	// The type segment is matched case-insensitively: CLI and SDK spell it differently (azureGuest,
	// AzureGuest) and the service appears to accept both (UNCONFIRMED; reference/azure-sdk.md §5).
	typ := strings.TrimPrefix(r.URL.Path, "/policies/")
	if !strings.EqualFold(typ, wire.AttestationTypeAzureGuest) {
		return nil, refuse(CodeUnsupportedAttestationType, "attestation type %q is not emulated; only %s policies are", typ, wire.AttestationTypeAzureGuest)
	}
	v, err := checkAPIVersion(r, wire.PolicyAPIVersion)
	rec.APIVersion = v
	if err != nil {
		return nil, err
	}
	if err := requireBearer(r); err != nil {
		return nil, refuseStatus(http.StatusUnauthorized, CodeUnauthorized, "%v", err)
	}
	if err := s.authorizePolicy(r); errors.Is(err, ErrNoPolicyRole) {
		// A valid token of a caller without the role: 403, as Azure's RBAC answers (the code
		// MAA puts in the body is UNCONFIRMED).
		return nil, refuseStatus(http.StatusForbidden, CodeForbidden, "%v", err)
	} else if err != nil {
		return nil, refuseStatus(http.StatusUnauthorized, CodeUnauthorized, "%v", err)
	}
	now := s.now()
	claims, err := s.baseClaims(now)
	if err != nil {
		return nil, err
	}
	if r.Method == http.MethodGet {
		cur := s.currentPolicy()
		claims[claimPolicy] = cur.jws
		rec.PolicyHash = cur.hash
	} else {
		if err := requireMediaType(r, mediaTypeText); err != nil {
			return nil, err
		}
		body, err := readBody(w, r, MaxPolicyBodyBytes)
		if err != nil {
			return nil, err
		}
		jws, text, err := parsePolicyJWS(body)
		if err != nil {
			return nil, err
		}
		sp, err := newStoredPolicy(text, jws)
		if err != nil {
			return nil, refuse(CodeInvalidPolicy, "the policy does not parse: %v", err)
		}
		s.mu.Lock()
		s.policy = sp
		s.mu.Unlock()
		// x-ms-policy-token-hash: base64url SHA-256 of the JWS as sent. Whether MAA hashes the
		// whole compact JWS is UNCONFIRMED (reference/azure-sdk.md §5).
		sum := sha256.Sum256([]byte(jws))
		claims[claimPolicyResult] = policyResultUpdated
		claims[claimPolicyTokenHash] = base64.RawURLEncoding.EncodeToString(sum[:])
		claims[claimPolicy] = jws
		rec.PolicyHash = sp.hash
	}
	tok, err := s.signJWT(claims)
	if err != nil {
		return nil, err
	}
	return json.Marshal(wire.PolicyResponse{Token: tok})
}

// parsePolicyJWS reads a PUT /policies body: the compact JWS as the raw body, as the REST spec
// (text/plain, a JWT string) and the C++ SDK have it, byte for byte. A body that is the JWS
// quoted as a JSON string is refused (415), as is surrounding whitespace (400): whether MAA
// accepts either is UNCONFIRMED, and neither is what Azure's SDKs send. Only unsigned policies
// ({"alg":"none"}, the AAD trust model) are accepted; the emulator has no policy signers.
func parsePolicyJWS(body []byte) (jws, text string, err error) {
	if len(body) > 0 && body[0] == '"' {
		return "", "", refuseStatus(http.StatusUnsupportedMediaType, CodeUnsupportedMediaTypeOrBody,
			"the body is a JSON string; send the compact JWS itself as the text/plain body")
	}
	if len(bytes.TrimSpace(body)) != len(body) {
		return "", "", refuse(CodeInvalidPolicyDocument, "the body has whitespace around the compact JWS; surrounding whitespace is not emulated")
	}
	jws = string(body)
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		return "", "", refuse(CodeInvalidPolicyDocument, "body is not a compact JWS (header.payload.signature)")
	}
	hdrJSON, err := decodeBase64URL(parts[0])
	if err != nil {
		return "", "", refuse(CodeInvalidPolicyDocument, "JWS header is not base64url: %v", err)
	}
	var hdr map[string]any
	if err := decodeStrictJSON(hdrJSON, &hdr); err != nil {
		return "", "", refuse(CodeInvalidPolicyDocument, "JWS header is not a JSON object: %v", err)
	}
	alg, _ := hdr["alg"].(string)
	if alg != "none" {
		return "", "", refuse(CodePolicySigningNotSupported,
			"JWS alg %q: the emulator runs the AAD trust model and accepts only unsigned policies ({\"alg\":\"none\"})", alg)
	}
	for k := range hdr {
		if k != "alg" && k != "typ" {
			return "", "", refuse(CodeInvalidPolicyDocument, "unsigned policy JWS header has unexpected parameter %q", k)
		}
	}
	if parts[2] != "" {
		return "", "", refuse(CodeInvalidPolicyDocument, "an unsigned policy JWS must have an empty signature")
	}
	payload, err := decodeBase64URL(parts[1])
	if err != nil {
		return "", "", refuse(CodeInvalidPolicyDocument, "JWS payload is not base64url: %v", err)
	}
	var stored wire.StoredAttestationPolicy
	if err := decodeStrictJSON(payload, &stored); err != nil {
		return "", "", refuse(CodeInvalidPolicyDocument, "JWS payload is not a StoredAttestationPolicy: %v", err)
	}
	if stored.AttestationPolicy == "" {
		return "", "", refuse(CodeInvalidPolicyDocument, "StoredAttestationPolicy.AttestationPolicy is empty")
	}
	raw, err := decodeBase64URL(stored.AttestationPolicy)
	if err != nil {
		return "", "", refuse(CodeInvalidPolicyDocument, "AttestationPolicy is not base64url: %v", err)
	}
	if !utf8.Valid(raw) {
		return "", "", refuse(CodeInvalidPolicyDocument, "AttestationPolicy is not UTF-8 text")
	}
	return jws, string(raw), nil
}
