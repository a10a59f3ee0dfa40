package maa

import (
	"errors"
	"fmt"
)

// Names of the checks Verify runs, in the order it runs them. A failure is reported as a
// *CheckError carrying one of these names.
const (
	// CheckFormat: size, three base64url parts, JSON header and claims, no duplicate keys, no "crit".
	CheckFormat = "format"
	// CheckAlgorithm: the header's alg is RS256.
	CheckAlgorithm = "algorithm"
	// CheckKeys: the key source (the instance's /certs) could be read.
	CheckKeys = "keys"
	// CheckKey: the header's kid names a usable key of the key set.
	CheckKey = "key"
	// CheckSignature: the RS256 signature verifies with that key.
	CheckSignature = "signature"
	// CheckIssuer: iss equals the configured instance.
	CheckIssuer = "issuer"
	// CheckExpiry: exp is present and not passed.
	CheckExpiry = "expiry"
	// CheckNotBefore: nbf, when present, is reached.
	CheckNotBefore = "not-before"
	// CheckAge: iat is present, not in the future and within the maximum age.
	CheckAge = "age"
	// CheckAttestationType: x-ms-attestation-type is "azurevm", the type of AzureGuest tokens, so
	// that the client payload was sent with this instance's verification of TPM evidence.
	CheckAttestationType = "attestation-type"
	// CheckNonce: the client-payload nonce equals the expected one.
	CheckNonce = "nonce"
)

// Checks lists the checks of Verify in the order they run. CheckKeys is the failure mode of the
// key lookup that precedes CheckKey.
var Checks = []string{
	CheckFormat, CheckAlgorithm, CheckKeys, CheckKey, CheckSignature, CheckIssuer,
	CheckExpiry, CheckNotBefore, CheckAge, CheckAttestationType, CheckNonce,
}

// Sentinel errors of Verify, one per way a token can be rejected; match them with errors.Is.
var (
	// ErrTooLarge: the token is over MaxTokenSize (format).
	ErrTooLarge = errors.New("token too large")
	// ErrMalformed: not a compact JWS with JSON header and claims, duplicate keys, or "crit" (format).
	ErrMalformed = errors.New("malformed token")
	// ErrAlgorithm: alg is not RS256, e.g. "none" or "HS256" (algorithm).
	ErrAlgorithm = errors.New("signature algorithm not allowed")
	// ErrUnknownKey: no kid, or no usable key of the key set has it (key).
	ErrUnknownKey = errors.New("unknown signing key")
	// ErrKeySource: the key set could not be read (keys).
	ErrKeySource = errors.New("signing keys unavailable")
	// ErrSignature: the signature does not verify with the kid's key (signature).
	ErrSignature = errors.New("invalid signature")
	// ErrIssuer: iss is not the configured instance (issuer).
	ErrIssuer = errors.New("wrong issuer")
	// ErrExpired: exp is missing, invalid or passed (expiry).
	ErrExpired = errors.New("token expired")
	// ErrNotYetValid: nbf is invalid or not reached (not-before).
	ErrNotYetValid = errors.New("token not yet valid")
	// ErrTooOld: iat is missing or invalid, or the token is older than MaxAge (age).
	ErrTooOld = errors.New("token too old")
	// ErrIssuedInFuture: iat is later than now plus skew (age).
	ErrIssuedInFuture = errors.New("token issued in the future")
	// ErrAttestationType: x-ms-attestation-type is missing or not "azurevm", e.g. a token of
	// /attest/SgxEnclave whose runtime data the caller chose freely (attestation-type).
	ErrAttestationType = errors.New("wrong attestation type")
	// ErrNonceMismatch: the client-payload nonce is missing or differs from the expected one (nonce).
	ErrNonceMismatch = errors.New("nonce mismatch")
)

// CheckError is the error of Verify: the check that failed and why. Err wraps one of the sentinel
// errors above. Neither the token nor any key is ever part of the message.
type CheckError struct {
	// Check is one of the Check* names.
	Check string
	// Err says why; errors.Is(Err, ErrXxx) identifies the failure.
	Err error
}

// Error returns e.g. `MAA token: check "age" failed: token is 7m0s old, max age is 5m0s`.
func (e *CheckError) Error() string {
	return fmt.Sprintf("MAA token: check %q failed: %v", e.Check, e.Err)
}

// Unwrap returns Err.
func (e *CheckError) Unwrap() error { return e.Err }

// CheckName returns the name of the check that failed, or "" if err is not (and does not wrap) a
// *CheckError.
func CheckName(err error) string {
	var ce *CheckError
	if errors.As(err, &ce) {
		return ce.Check
	}
	return ""
}

// detailError is an explanation that prints as itself and matches its sentinel with errors.Is.
type detailError struct {
	msg      string
	sentinel error
}

func (e *detailError) Error() string { return e.msg }
func (e *detailError) Unwrap() error { return e.sentinel }

// fail builds a *CheckError for check, wrapping sentinel, with a formatted explanation.
func fail(check string, sentinel error, format string, args ...any) *CheckError {
	return &CheckError{Check: check, Err: &detailError{msg: fmt.Sprintf(format, args...), sentinel: sentinel}}
}
