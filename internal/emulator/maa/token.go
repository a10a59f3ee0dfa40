package maa

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"

	wire "github.com/attested-kv/attested-kv/internal/maa"
)

// Sizes of the encrypted-token envelope (AZGA TpmUnseal.cpp accepts AES-128/192/256-GCM; the
// emulator always uses AES-256 and the standard 96-bit GCM nonce).
const (
	innerKeyBytes = 32
	gcmNonceBytes = 12
)

// signJWT signs claims as a compact JWS with the instance key: header alg RS256, kid, jku =
// {issuer}/certs, typ JWT, as in real MAA tokens.
func (s *Server) signJWT(claims map[string]any) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encoding token claims: %w", err)
	}
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: cryptosigner.Opaque(s.signingKey), KeyID: s.kid}},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("jku", s.issuer+wire.CertsPath),
	)
	if err != nil {
		return "", fmt.Errorf("creating token signer: %w", err)
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("signing token: %w", err)
	}
	return obj.CompactSerialize()
}

// baseClaims are the registered claims of every token the instance signs.
func (s *Server) baseClaims(now time.Time) (map[string]any, error) {
	jti := make([]byte, 32)
	if _, err := rand.Read(jti); err != nil {
		return nil, err
	}
	return map[string]any{
		"iss": s.issuer,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(s.tokenLifetime).Unix(),
		"jti": hex.EncodeToString(jti),
	}, nil
}

// encryptToken wraps jwt for the TPM ephemeral key in the envelope AZGA's DecryptMaaToken opens
// (wire.EncryptedToken): a fresh AES-256 key wrapped with RSAES-PKCS1-v1_5 (what TPM2_RSA_Decrypt
// with TPM_ALG_RSAES undoes), the JWT sealed with AES-GCM under AAD "Transport Key", the tag
// carried separately as AuthenticationData. The result is base64url (no padding) of the JSON.
func encryptToken(jwt []byte, key *rsa.PublicKey) (string, error) {
	inner := make([]byte, innerKeyBytes)
	iv := make([]byte, gcmNonceBytes)
	if _, err := rand.Read(inner); err != nil {
		return "", err
	}
	if _, err := rand.Read(iv); err != nil {
		return "", err
	}
	block, err := aes.NewCipher(inner)
	if err != nil {
		return "", err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return "", err
	}
	sealed := gcm.Seal(nil, iv, jwt, []byte(wire.TransportKeyAAD))
	ct, tag := sealed[:len(sealed)-gcm.Overhead()], sealed[len(sealed)-gcm.Overhead():]
	// PKCS#1 v1.5 encryption is what the protocol uses (AZGA passes RsaScheme::RsaEs to the TPM);
	// it is deprecated in Go for new designs, not for interoperating with this one.
	//lint:ignore SA1019 RSAES-PKCS1-v1_5 is MAA's wire format for the token key (see internal/maa/wire.go)
	wrapped, err := rsa.EncryptPKCS1v15(rand.Reader, key, inner)
	if err != nil {
		return "", fmt.Errorf("wrapping the token key to the ephemeral key: %w", err)
	}
	doc, err := json.Marshal(wire.EncryptedToken{
		EncryptedInnerKey: base64.StdEncoding.EncodeToString(wrapped),
		EncryptionParams: wire.EncryptionParams{
			BlockMode:     wire.BlockModeGCM,
			BlockPadding:  wire.BlockPaddingPKC,
			Cipher:        wire.CipherAES,
			KeySizeInBits: innerKeyBytes * 8,
			Iv:            base64.StdEncoding.EncodeToString(iv),
		},
		AuthenticationData: base64.StdEncoding.EncodeToString(tag),
		Jwt:                base64.StdEncoding.EncodeToString(ct),
	})
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(doc), nil
}

// policyHash is x-ms-policy-hash: base64url SHA-256 of the policy text. What MAA hashes exactly is
// UNCONFIRMED (the real tokens' value matches no obvious rendering of the default policy); the
// emulator's value identifies the policy text that authorized the token.
func policyHash(text string) string {
	h := sha256.Sum256([]byte(text))
	return base64.RawURLEncoding.EncodeToString(h[:])
}
