package gate

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/notaryproject/notation-plugin-framework-go/plugin"

	"github.com/attested-kv/attested-kv/internal/keyvault"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/redact"
	"github.com/attested-kv/attested-kv/internal/tpm"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// validationError is a request or configuration the user must fix.
type validationError struct{ msg string }

func (e *validationError) Error() string { return e.msg }

func validationf(format string, args ...any) error {
	return &validationError{msg: fmt.Sprintf(format, args...)}
}

// attestError is a failure between evidence and a verified token whose rules passed.
type attestError struct{ err error }

func (e *attestError) Error() string {
	return "attestation failed, nothing was signed: " + e.err.Error()
}
func (e *attestError) Unwrap() error { return e.err }

// ToPluginError maps err to the plugin protocol's error codes. The code only names the failure;
// whatever it is, nothing was signed.
//
//   - VALIDATION_ERROR: a request or configuration to fix: bad key ids and plugin config, the
//     machine's os-release, and a TPM that is not provisioned as an Azure vTPM or whose TCG log
//     cannot be read (see attestCode).
//   - ACCESS_DENIED: a refusal: MAA refuses the evidence (4xx), the token does not verify or is not
//     for this evidence, its binding or a claim rule fails, the TPM's state changed since the
//     evidence (the ephemeral key's PCR policy refuses); and Key Vault 401/403.
//   - THROTTLED: MAA's or Key Vault's 429.
//   - TIMEOUT: the deadline ran out (the timeout plugin config), also while waiting to retry
//     MAA; or the token reached max_token_age while the key was opened or Key Vault signed.
//   - ERROR: outages (MAA unreachable or answering 5xx after the retries, its signing keys
//     unreadable, the TPM cannot be opened), faults (the TPM's, an AK certificate Azure has not
//     provisioned yet, an answer from MAA that cannot be used), a token that passed its checks
//     but was past max_token_age once the key was open or Key Vault had signed, and anything
//     else.
//
// The message is what notation shows the user, without what looks like a credential (redact).
func ToPluginError(err error) *plugin.Error {
	var perr *plugin.Error
	if errors.As(err, &perr) {
		return &plugin.Error{ErrCode: perr.ErrCode, Message: redact.String(perr.Message), Metadata: perr.Metadata}
	}
	// Redacted: a library's error may quote a credential it was given (tspclient-go quotes the
	// TSA's URL, password included), and the message goes to notation's output and the log.
	msg := redact.String(err.Error())
	var verr *validationError
	var aerr *attestError
	var rerr *azcore.ResponseError
	switch {
	case errors.As(err, &verr),
		errors.Is(err, keyvault.ErrInvalidKeyID),
		errors.Is(err, keyvault.ErrInvalidConfig),
		errors.Is(err, keyvault.ErrCertificateChain),
		errors.Is(err, maa.ErrOSVersion): // the machine's os-release, not a refusal
		return plugin.NewError(plugin.ErrorCodeValidation, msg)
	case errors.Is(err, context.DeadlineExceeded):
		return plugin.NewError(plugin.ErrorCodeTimeout, msg)
	case errors.As(err, &aerr):
		return plugin.NewError(attestCode(err), msg)
	case errors.As(err, &rerr):
		switch rerr.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return plugin.NewError(plugin.ErrorCodeAccessDenied, msg)
		case http.StatusTooManyRequests:
			return plugin.NewError(plugin.ErrorCodeThrottled, msg)
		case http.StatusRequestTimeout, http.StatusGatewayTimeout:
			return plugin.NewError(plugin.ErrorCodeTimeout, msg)
		case http.StatusBadRequest, http.StatusNotFound:
			return plugin.NewError(plugin.ErrorCodeValidation, msg)
		}
	}
	return plugin.NewError(plugin.ErrorCodeGeneric, msg)
}

// attestCode is the code of an attestation failure (an *attestError). Only the refusals listed
// are ACCESS_DENIED; any other failure, a new one included, is ERROR, since a fault reported as a
// refusal sends the user after a policy problem that is not there. The order matters: a 429 or
// 5xx answer is a *maa.ServiceError too, and the failed key fetch a *maa.CheckError.
func attestCode(err error) plugin.ErrorCode {
	var (
		serr *maa.ServiceError
		cerr *maa.CheckError
		rule *rules.RuleError
	)
	switch {
	case errors.Is(err, maa.ErrThrottled):
		return plugin.ErrorCodeThrottled
	case errors.Is(err, maa.ErrUnavailable), errors.Is(err, tpm.ErrUnavailable), errors.Is(err, maa.ErrKeySource):
		// An outage, not a refusal: the attestation could not be asked for, or the token
		// could not be checked because the instance's signing keys could not be read.
		return plugin.ErrorCodeGeneric
	case errors.Is(err, tpm.ErrNoAK), errors.Is(err, tpm.ErrAKType), errors.Is(err, tpm.ErrNoAKCert),
		errors.Is(err, tpm.ErrEventLog):
		// This machine's setup: the tpm config names a TPM without Azure's AK and certificate,
		// or the TCG log (tcg_log) cannot be read; the message says what to change.
		return plugin.ErrorCodeValidation
	case errors.As(err, &serr) && serr.StatusCode >= 400 && serr.StatusCode < 500, // MAA refuses the evidence
		errors.As(err, &cerr),                 // the token does not verify, or not for this binding
		errors.Is(err, maa.ErrNotForEvidence), // the token names another TPM's ephemeral key
		errors.Is(err, tpm.ErrStateChanged),   // the PCRs changed since the evidence: the key's policy refuses
		errors.As(err, &rule):                 // a claim rule fails
		return plugin.ErrorCodeAccessDenied
	}
	// TPM faults (ErrQuote, ErrCertify, ErrDecrypt, ...), an AK certificate not provisioned yet,
	// an answer from MAA that cannot be used (maa.ErrResponse): not a refusal by anyone.
	return plugin.ErrorCodeGeneric
}
