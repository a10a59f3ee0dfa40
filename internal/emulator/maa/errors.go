package maa

import (
	"errors"
	"fmt"
	"net/http"
)

// Error codes returned in CloudError.error.code. Each refusal of the emulator has its own code so
// that a test (or a user reading a plugin error) can tell which check failed. Real MAA's codes for
// the same failures are UNCONFIRMED: these names are the emulator's own.
const (
	// Request shape.
	CodeUnsupportedAPIVersion      = "UnsupportedApiVersion"
	CodeNotFound                   = "NotFound"
	CodeMethodNotAllowed           = "MethodNotAllowed"
	CodeRequestBodyTooLarge        = "RequestBodyTooLarge"
	CodeInvalidRequestBody         = "InvalidRequestBody"
	CodeUnsupportedAttestationType = "UnsupportedAttestationType"
	CodeUnauthorized               = "Unauthorized"
	CodeForbidden                  = "Forbidden"

	// AttestationInfo decoding.
	CodeInvalidAttestationInfoEncoding = "InvalidAttestationInfoEncoding"
	CodeInvalidAttestationInfoJSON     = "InvalidAttestationInfoJson"
	CodeInvalidFieldEncoding           = "InvalidFieldEncoding"
	CodeUnsupportedProtocolVersion     = "UnsupportedProtocolVersion"
	CodeUnsupportedIsolationType       = "UnsupportedIsolationType"
	CodeUnsupportedOSType              = "UnsupportedOsType"
	CodeInvalidOSVersion               = "InvalidOsVersion"
	CodeInvalidClientPayload           = "InvalidClientPayload"

	// AK certificate and AK public area.
	CodeAikCertInvalid     = "AikCertInvalid"
	CodeAikCertNotValidNow = "AikCertNotTimeValid"
	CodeAikCertUntrusted   = "AikCertUntrusted"
	CodeAikPubInvalid      = "AikPubInvalid"
	CodeAikKeyMismatch     = "AikCertKeyMismatch"

	// PCR quote.
	CodeQuoteSignatureInvalid = "QuoteSignatureInvalid"
	CodeQuoteInvalid          = "QuoteInvalid"
	CodePcrSetInvalid         = "PcrSetInvalid"
	CodePcrSelectionMismatch  = "PcrSelectionMismatch"
	CodePcrDigestMismatch     = "PcrDigestMismatch"

	// Ephemeral key and its certification.
	CodeEncKeyInvalid              = "EncKeyInvalid"
	CodeEncKeyPolicyMismatch       = "EncKeyPolicyMismatch"
	CodeCertifySignatureInvalid    = "EncKeyCertifySignatureInvalid"
	CodeCertifyInfoInvalid         = "EncKeyCertifyInfoInvalid"
	CodeCertifiedNameMismatch      = "EncKeyCertifiedNameMismatch"
	CodeEvidenceBootMismatch       = "EvidenceBootMismatch"
	CodeEvidenceClockSkew          = "EvidenceClockSkew"
	CodeCertifyInfoReplayed        = "EncKeyCertifyInfoReplayed"
	CodeReplayCacheFull            = "ReplayCacheFull"
	CodeAikAttestationLimit        = "AikAttestationLimitReached"
	CodeTcgLogInvalid              = "TcgLogInvalid"
	CodeTcgLogMismatch             = "TcgLogPcrMismatch"
	CodePolicyEvaluationError      = "PolicyEvaluationError"
	CodeInvalidPolicyDocument      = "InvalidPolicyDocument"
	CodeInvalidPolicy              = "InvalidPolicy"
	CodePolicySigningNotSupported  = "PolicySigningNotSupported"
	CodeInternalError              = "InternalError"
	CodeUnsupportedMediaTypeOrBody = "UnsupportedMediaType"
)

// checkError is a refusal: the CloudError code and HTTP status to answer with, and the cause.
// Every check of the emulator returns one, so that the handler never has to guess a status.
type checkError struct {
	Code   string
	Status int
	Err    error
}

func (e *checkError) Error() string { return e.Code + ": " + e.Err.Error() }
func (e *checkError) Unwrap() error { return e.Err }

// refuse builds a 400 checkError with a formatted cause.
func refuse(code, format string, args ...any) *checkError {
	return &checkError{Code: code, Status: http.StatusBadRequest, Err: fmt.Errorf(format, args...)}
}

// refuseStatus builds a checkError with an explicit status.
func refuseStatus(status int, code, format string, args ...any) *checkError {
	return &checkError{Code: code, Status: status, Err: fmt.Errorf(format, args...)}
}

// asCheckError maps any error to a checkError; unknown errors become 500 InternalError so that
// an unexpected failure never turns into a success.
func asCheckError(err error) *checkError {
	var ce *checkError
	if errors.As(err, &ce) {
		return ce
	}
	return &checkError{Code: CodeInternalError, Status: http.StatusInternalServerError, Err: err}
}
