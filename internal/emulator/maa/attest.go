package maa

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	wire "github.com/attested-kv/attested-kv/internal/maa"
)

// handleAttest serves POST /attest/{type}. Only AzureGuest is emulated.
func (s *Server) handleAttest(w http.ResponseWriter, r *http.Request) {
	rec := RequestRecord{Time: s.now(), Method: r.Method, Path: r.URL.Path}
	token, err := s.attest(w, r, &rec)
	if err != nil {
		ce := asCheckError(err)
		rec.Status, rec.ErrorCode, rec.ErrorMessage = ce.Status, ce.Code, ce.Err.Error()
		s.record(rec)
		writeError(w, ce)
		return
	}
	body, err := json.Marshal(wire.AttestResponse{Token: token})
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

// attest verifies one request and returns the encrypted token. Every refusal is a *checkError
// and no token exists on any error path.
func (s *Server) attest(w http.ResponseWriter, r *http.Request, rec *RequestRecord) (string, error) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return "", refuseStatus(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "%s is not allowed on %s", r.Method, r.URL.Path)
	}
	if typ := strings.TrimPrefix(r.URL.Path, "/attest/"); typ != wire.AttestationTypeAzureGuest {
		return "", refuse(CodeUnsupportedAttestationType, "attestation type %q is not emulated; only %s is", typ, wire.AttestationTypeAzureGuest)
	}
	v, err := checkAPIVersion(r, wire.AttestAPIVersion)
	rec.APIVersion = v
	if err != nil {
		return "", err
	}
	if err := requireMediaType(r, mediaTypeJSON); err != nil {
		return "", err
	}
	body, err := readBody(w, r, MaxAttestBodyBytes)
	if err != nil {
		return "", err
	}
	ev, err := decodeRequest(body)
	if err != nil {
		return "", err
	}
	rec.ClientPayload = ev.clientPayload

	now := s.now()
	ve, err := verifyEvidence(ev, verifyOptions{roots: s.roots, intermediates: s.intermediates, now: now, maxClockSkew: s.maxSkew})
	if err != nil {
		return "", err
	}
	boot, err := verifyTCGLog(ev.tcgLog, ev.pcrs, s.defaultKeys)
	if err != nil {
		return "", err
	}
	rec.Note = boot.note

	svc := serviceClaims(ev, ve, boot)
	pol := s.currentPolicy()
	issued, err := pol.parsed.evaluate(incomingClaims(svc))
	if err != nil {
		if errors.Is(err, errPolicyDenied) {
			return "", refuse(CodePolicyEvaluationError, "the attestation policy (x-ms-policy-hash %s) refused the evidence: %v", pol.hash, err)
		}
		return "", refuse(CodePolicyEvaluationError, "evaluating the attestation policy: %v", err)
	}

	claims, err := s.baseClaims(now)
	if err != nil {
		return "", err
	}
	for k, v := range svc {
		claims[k] = v
	}
	claims[wire.ClaimVer] = tokenVersion
	claims[wire.ClaimPolicyHash] = pol.hash
	runtime := map[string]any{claimKeys: []any{ephemeralKeyJWK(ve.encKey)}}
	if ev.clientPayload != nil {
		runtime[wire.ClaimClientPayload] = ev.clientPayload
	}
	claims[wire.ClaimRuntime] = runtime
	if err := mergeIssuedClaims(claims, issued); err != nil {
		return "", refuse(CodePolicyEvaluationError, "%v", err)
	}

	// Consume the certify info last, once everything else has passed, so that a refused request
	// does not burn it, and atomically, so that two concurrent copies cannot both succeed.
	if err := s.replay.consume(ve.akDigest, ve.certifyDigest, now, now.Add(s.tokenLifetime)); err != nil {
		return "", err
	}
	jwt, err := s.signJWT(claims)
	if err != nil {
		return "", err
	}
	token, err := encryptToken([]byte(jwt), ve.encKey)
	if err != nil {
		return "", err
	}
	rec.TokenID, _ = claims["jti"].(string)
	rec.PolicyHash = pol.hash
	return token, nil
}
