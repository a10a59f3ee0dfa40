package verifier

import (
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The wire format of a Ratify v1 external verifier: the JSON on its stdin and the result JSON on
// its stdout (/work/shared/reference/oras-ratify.md §3.3; Ratify v1 pkg/verifier/config/config.go
// PluginInputConfig and pkg/verifier/types/types.go).

// Input is what Ratify writes on stdin.
type Input struct {
	// Config is the verifier's section of Ratify's config, passed as is.
	Config Config `json:"config"`
	// StoreConfig is the referrer store's config, from which the plugin reads the registry itself.
	StoreConfig StoreConfig `json:"storeConfig"`
	// ReferenceDesc is the descriptor of the referrer Ratify runs the verifier for.
	ReferenceDesc ocispec.Descriptor `json:"referenceDesc"`
}

// Config is the verifier's section of Ratify's config. Its keys are matched exactly, case
// included: a key that is neither one of Config's nor one Ratify puts there itself (ratifyKeys) is
// refused, so that a misspelt setting (signingCertSha256s, rule) cannot silently drop a pin or the
// operator's rules.
type Config struct {
	// Name is the verifier's name in Ratify's config; it names the result ([Name] if empty).
	Name string `json:"name"`
	// Type is the verifier's type in Ratify's config, by which Ratify finds the binary (by Name
	// when it is empty, and in a cluster Ratify then passes Name here); it types the result
	// ([Name] if empty).
	Type string `json:"type"`
	// AttestationURL is the MAA instance tokens must come from. Required.
	AttestationURL string `json:"attestationURL"`
	// KeyID is the signing key id (the Key Vault key URL) the token must be bound to. Required.
	KeyID string `json:"keyID"`
	// MaxTokenAge is a Go duration, the largest gap allowed between the token's issue and the
	// signing; default "5m", at most "1h" (maa.MaxSigningAge).
	MaxTokenAge string `json:"maxTokenAge"`
	// Timeout is a Go duration bounding the whole verification, default "3s" ([DefaultTimeout]),
	// at most "30s". A verification that does not finish in time is a failure naming the timeout.
	Timeout string `json:"timeout"`
	// Rules is a claim rule file path; default the built-in baseline.
	Rules string `json:"rules"`
	// JWKSPath is a file of pinned token keys, for clusters that cannot reach the MAA instance;
	// default the instance's own keys, fetched from AttestationURL.
	JWKSPath string `json:"jwksPath"`
	// TrustPolicyDoc is a Notation trust policy document. Required.
	TrustPolicyDoc *trustpolicy.Document `json:"trustPolicyDoc"`
	// VerificationCerts are directories (or files) of trusted root certificates, placed in the
	// trust store "ca:certs", as Ratify's notation verifier does. Required.
	VerificationCerts []string `json:"verificationCerts"`
	// SigningCertSHA256 are the SHA-256 fingerprints of the signing certificates that count;
	// needed when the trust store holds a CA or other keys.
	SigningCertSHA256 []string `json:"signingCertSHA256"`
}

// StoreConfig is the part of Ratify's store config the verifier reads: whether the registry is
// plain HTTP, and the store's authProvider, which the verifier uses as Ratify's ORAS store does.
type StoreConfig struct {
	// Store is the store plugin's parameters ({name: "oras", useHttp, authProvider, ...}).
	Store struct {
		// UseHTTP reads the registry over plain HTTP.
		UseHTTP bool `json:"useHttp"`
		// AuthProvider is how the registry is authenticated to.
		AuthProvider AuthProvider `json:"authProvider"`
	} `json:"store"`
}

// AuthProvider is the store's registry authentication (Ratify's authProvider parameters).
type AuthProvider struct {
	// Name is azureWorkloadIdentity or azureManagedIdentity (Entra ID, exchanged for an ACR
	// refresh token on *.azurecr.io), or dockerConfig or empty (the Docker credentials file).
	Name string `json:"name"`
	// ClientID is the identity's client id (default: AZURE_CLIENT_ID).
	ClientID string `json:"clientID"`
}

// Result is what Ratify reads back from stdout. Ratify ignores any other field, such as
// errorReason.
type Result struct {
	// IsSuccess is true only if the token proves attested signing of the subject.
	IsSuccess bool `json:"isSuccess"`
	// Name is the verifier's name, from the config.
	Name string `json:"name"`
	// Type is the verifier's type, from the config.
	Type string `json:"type"`
	// Message says what was proven, or names the check or input that failed.
	Message string `json:"message"`
	// Extensions holds the verification's checks, with what each found (an
	// *imageverify.Result), once the verification has run.
	Extensions any `json:"extensions,omitempty"`
}

// Error is the error JSON Ratify's plugin skeleton prints on stdout, exiting 1, when it refuses to
// run a verifier (Ratify v1 pkg/common/plugin/types.go, Error; reference/oras-ratify.md §3.3).
// Ratify then reports the verifier as failed with the exit status and this JSON in errorReason.
type Error struct {
	// Code is one of Ratify's plugin error codes (pkg/verifier/types/types.go), such as
	// CodeVersionNotSupported.
	Code uint `json:"code"`
	// Msg says what is wrong.
	Msg string `json:"msg"`
	// Details adds to Msg, when there is more to say.
	Details string `json:"details,omitempty"`
}

// Error returns Msg, and Details after a semicolon, as Ratify's Error does.
func (e *Error) Error() string {
	if e.Details != "" {
		return e.Msg + "; " + e.Details
	}
	return e.Msg
}

// Ratify v1's plugin error codes that the verifier answers with (pkg/verifier/types/types.go).
const (
	// CodeMissingEnvironmentVariables: a RATIFY_VERIFIER_* variable is not set.
	CodeMissingEnvironmentVariables uint = 4
	// CodeVersionNotSupported: RATIFY_VERIFIER_VERSION is not one of SupportedVersions.
	CodeVersionNotSupported uint = 6
)
