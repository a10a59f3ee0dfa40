package maa

import "time"

// Limits and defaults of this package.
const (
	// MaxTokenSize bounds the size of a compact JWT accepted by Verify and ParseUnverified.
	// Real AzureGuest tokens are 5 to 20 KiB.
	MaxTokenSize = 64 << 10
	// MaxResponseSize bounds every HTTP body read from MAA (attest responses, errors, JWKS).
	MaxResponseSize = 1 << 20

	// DefaultHTTPTimeout is the timeout of the HTTP client used when none is given.
	DefaultHTTPTimeout = 30 * time.Second
	// DefaultMaxAttempts is the number of attestation attempts when ClientOptions.MaxAttempts is 0.
	DefaultMaxAttempts = 4
	// DefaultRetryBaseDelay is the first retry delay when ClientOptions.RetryBaseDelay is 0.
	DefaultRetryBaseDelay = 500 * time.Millisecond
	// DefaultRetryMaxDelay caps retry delays (and Retry-After) when ClientOptions.RetryMaxDelay is 0.
	DefaultRetryMaxDelay = 8 * time.Second

	// DefaultMinRefreshInterval is how often, at most, a RemoteKeySet refetches the JWKS when it
	// meets an unknown kid.
	DefaultMinRefreshInterval = 30 * time.Second
	// MaxSigningAge is the oldest a token may be when a signature is made with it: the bound of
	// the plugin's max_token_age (the plugin refuses to sign with an older one) and of the image
	// verifiers' maximum token age (oras-attest verify --max-age, the Ratify verifier's
	// maxTokenAge), which would otherwise accept tokens no signing under the gate could have used.
	MaxSigningAge = time.Hour
	// DefaultSkew is the clock skew allowed on exp, nbf and iat when VerifierOptions.Skew is 0.
	DefaultSkew = 60 * time.Second
	// MinRSAKeyBits is the smallest RSA modulus accepted for a token signing key.
	MinRSAKeyBits = 2048

	// DefaultOSReleasePath is where ReadOSRelease looks when ClientOptions.OS is nil.
	DefaultOSReleasePath = "/etc/os-release"
	// OSTypeLinux is OSInfo.Type on Linux (AZGA sends "Linux").
	OSTypeLinux = "Linux"

	// SigningAlgorithm is the only JWS algorithm MAA uses and the only one Verify accepts.
	SigningAlgorithm = "RS256"
)
