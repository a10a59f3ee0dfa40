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
	"github.com/attested-kv/attested-kv/internal/tpm"
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

// ToPluginError maps err to the plugin protocol's error codes: refusals of the attestation (MAA
// refuses the evidence, the token does not verify, its binding or a claim rule fails) and Key
// Vault 401/403 are ACCESS_DENIED; bad key ids and config VALIDATION_ERROR; MAA's or Key Vault's
// 429 THROTTLED; timeouts TIMEOUT; outages (MAA unreachable or answering 5xx after the retries,
// its signing keys unreadable, the TPM cannot be opened) and anything else ERROR. The message is what notation shows the user.
func ToPluginError(err error) *plugin.Error {
	var perr *plugin.Error
	if errors.As(err, &perr) {
		return perr
	}
	msg := err.Error()
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
		switch {
		case errors.Is(err, maa.ErrThrottled):
			return plugin.NewError(plugin.ErrorCodeThrottled, msg)
		case errors.Is(err, maa.ErrUnavailable), errors.Is(err, tpm.ErrUnavailable), errors.Is(err, maa.ErrKeySource):
			// An outage, not a refusal: the attestation could not be asked for, or the token
			// could not be checked because the instance's signing keys could not be read.
			return plugin.NewError(plugin.ErrorCodeGeneric, msg)
		}
		return plugin.NewError(plugin.ErrorCodeAccessDenied, msg)
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
