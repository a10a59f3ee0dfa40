package maa

import (
	"crypto/rsa"
	"encoding/json"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// ClaimRuntimeKeys is the member of x-ms-runtime that lists the keys MAA attested, as JWKs; the
// TPM ephemeral key is the one with kid EphemeralKeyKID (MAA's claim-set documentation: "kid
// (under x-ms-runtime > keys): TpmEphemeralEncryptionKey"; Azure's sample tokens carry it as
// {"kid", "kty": "RSA", "key_ops": ["encrypt"], "n", "e"}).
const ClaimRuntimeKeys = "keys"

// checkIssuedFor checks that the token jwt answers the evidence whose ephemeral key is want:
// exactly one of its x-ms-runtime.keys is EphemeralKeyKID, and it is want. MAA puts there the key
// whose certification by the AK it checked, so a token issued for another VM's evidence names
// another key, however it was encrypted. The error wraps ErrNotForEvidence.
func checkIssuedFor(jwt string, want *rsa.PublicKey) error {
	_, claims, err := ParseUnverified(jwt)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotForEvidence, err)
	}
	rt, _ := claims[ClaimRuntime].(map[string]any)
	keys, ok := rt[ClaimRuntimeKeys].([]any)
	if !ok {
		return fmt.Errorf("%w: the token has no %s.%s list", ErrNotForEvidence, ClaimRuntime, ClaimRuntimeKeys)
	}
	var found *rsa.PublicKey
	for _, k := range keys {
		m, ok := k.(map[string]any)
		if !ok || m["kid"] != EphemeralKeyKID {
			continue
		}
		if found != nil {
			return fmt.Errorf("%w: %s.%s names %s more than once", ErrNotForEvidence, ClaimRuntime, ClaimRuntimeKeys, EphemeralKeyKID)
		}
		b, err := json.Marshal(m)
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrNotForEvidence, EphemeralKeyKID, err)
		}
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(b); err != nil {
			return fmt.Errorf("%w: %s is not a JWK: %w", ErrNotForEvidence, EphemeralKeyKID, err)
		}
		if found, ok = jwk.Key.(*rsa.PublicKey); !ok {
			return fmt.Errorf("%w: %s is not an RSA public key", ErrNotForEvidence, EphemeralKeyKID)
		}
	}
	switch {
	case found == nil:
		return fmt.Errorf("%w: %s.%s has no %s", ErrNotForEvidence, ClaimRuntime, ClaimRuntimeKeys, EphemeralKeyKID)
	case !found.Equal(want):
		return fmt.Errorf("%w: its %s is not the ephemeral key this TPM sent", ErrNotForEvidence, EphemeralKeyKID)
	}
	return nil
}
