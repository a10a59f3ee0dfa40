package maa

import (
	"errors"
	"fmt"
)

// Errors of the attestation client, for errors.Is.
var (
	// ErrThrottled means MAA still answered HTTP 429 after the last attempt.
	ErrThrottled = errors.New("throttled (HTTP 429)")
	// ErrUnavailable means MAA could not be reached, timed out, or answered 5xx on the last attempt.
	ErrUnavailable = errors.New("unavailable")
	// ErrResponse means MAA answered 200 but the response was malformed or could not be decrypted.
	ErrResponse = errors.New("unusable response")
	// ErrNotForEvidence means the decrypted token does not name the ephemeral key of the evidence
	// it answers: it was issued for other evidence, and re-encrypted to this TPM's key by whoever
	// could answer in MAA's place.
	ErrNotForEvidence = errors.New("token not issued for this TPM's evidence")
	// ErrOSVersion means the OS description has major version 0 (os-release missing, or its
	// VERSION_ID 0.x): Azure's own client refuses to send such a request, so neither do we (see
	// checkOSVersion).
	ErrOSVersion = errors.New("OS major version is 0")
)

// ServiceError is an HTTP error answer from MAA, with the code and message of its CloudError body.
type ServiceError struct {
	// StatusCode is the HTTP status.
	StatusCode int
	// Code is the CloudError code (e.g. "InvalidParameter"); empty when the body had none.
	Code string
	// Message is the CloudError message, or a short excerpt of a non-JSON body.
	Message string
}

// Error returns "HTTP <status> <code>: <message>".
func (e *ServiceError) Error() string {
	s := fmt.Sprintf("HTTP %d", e.StatusCode)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}
