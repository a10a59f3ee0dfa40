package maa

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Sizes of the AES-GCM parameters of the encrypted response.
const (
	// gcmIVSize is the IV length we require. UNCONFIRMED: AZGA (TpmUnseal.cpp DecryptJwt) passes
	// whatever IV length it receives to OpenSSL (EVP_CTRL_GCM_SET_IVLEN) and so documents no fixed
	// length; its comment only notes 12 bytes as the default. We require the GCM standard 12-byte
	// nonce; a real response with another length would fail here with a message saying so.
	gcmIVSize = 12
	// gcmTagSize is the AES-GCM tag length we require (AuthenticationData). AZGA likewise passes
	// any length to EVP_CTRL_GCM_SET_TAG; 16 bytes is the full tag and what AZPY produces.
	gcmTagSize = 16
)

// encryptedResponse is a validated wire.EncryptedToken with its byte fields decoded.
type encryptedResponse struct {
	innerKey   []byte // RSAES-PKCS1-v1_5 ciphertext of the AES key, for the TPM
	keyBits    int
	iv         []byte
	tag        []byte
	ciphertext []byte
}

// decodeAttestResponse parses the 200 body of POST /attest/AzureGuest: {"token": base64url of an
// EncryptedToken}. It checks everything that can be checked before the TPM is asked to decrypt.
// Errors do not wrap ErrResponse; the caller adds the stage.
func decodeAttestResponse(body []byte) (*encryptedResponse, error) {
	var resp AttestResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("response body is not JSON {\"token\": ...}: %w", err)
	}
	if resp.Token == "" {
		return nil, errors.New(`response has no "token"`)
	}
	// AZGA decodes the token with its base64url decoder; accept it with or without padding.
	envelope, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(resp.Token, "="))
	if err != nil {
		return nil, fmt.Errorf("token is not base64url: %w", err)
	}
	// Unknown fields are ignored, as AZGA does: a field MAA may add must not break signing, and
	// every field used below is checked; the ciphertext itself is authenticated by AES-GCM.
	var et EncryptedToken
	if err := decodeJSON(envelope, &et, false); err != nil {
		return nil, fmt.Errorf("encrypted token is not a valid EncryptedToken document: %w", err)
	}
	p := et.EncryptionParams
	if p.Cipher != CipherAES {
		return nil, fmt.Errorf("unsupported cipher %.40q (want %q)", p.Cipher, CipherAES)
	}
	if p.BlockMode != BlockModeGCM {
		return nil, fmt.Errorf("unsupported block mode %.40q (want %q)", p.BlockMode, BlockModeGCM)
	}
	if p.BlockPadding != BlockPaddingPKC {
		return nil, fmt.Errorf("unsupported block padding %.40q (want %q)", p.BlockPadding, BlockPaddingPKC)
	}
	switch p.KeySizeInBits {
	case 128, 192, 256:
	default:
		return nil, fmt.Errorf("unsupported AES key size %d bits (want 128, 192 or 256)", p.KeySizeInBits)
	}
	r := &encryptedResponse{keyBits: p.KeySizeInBits}
	fields := []struct {
		name string
		in   string
		out  *[]byte
	}{
		{"EncryptedInnerKey", et.EncryptedInnerKey, &r.innerKey},
		{"EncryptionParams.Iv", p.Iv, &r.iv},
		{"AuthenticationData", et.AuthenticationData, &r.tag},
		{"Jwt", et.Jwt, &r.ciphertext},
	}
	for _, f := range fields {
		if f.in == "" {
			return nil, fmt.Errorf("%s is missing", f.name)
		}
		b, err := base64.StdEncoding.DecodeString(f.in)
		if err != nil {
			return nil, fmt.Errorf("%s is not base64: %w", f.name, err)
		}
		*f.out = b
	}
	if len(r.iv) != gcmIVSize {
		return nil, fmt.Errorf("IV is %d bytes, want %d", len(r.iv), gcmIVSize)
	}
	if len(r.tag) != gcmTagSize {
		return nil, fmt.Errorf("authentication tag is %d bytes, want %d", len(r.tag), gcmTagSize)
	}
	return r, nil
}

// open decrypts the JWT with the AES key unwrapped by the TPM and checks that the plaintext is a
// compact JWS. Errors do not wrap ErrResponse; the caller adds the stage.
func (r *encryptedResponse) open(key []byte) (string, error) {
	// AZGA picks the AES variant from the unwrapped key's length and only checks that
	// KeySizeInBits is non-zero; we also require the two to agree (UNCONFIRMED that MAA never
	// sends a KeySizeInBits that differs from its key, but a disagreement is a malformed answer).
	if len(key)*8 != r.keyBits {
		return "", fmt.Errorf("inner key is %d bits, EncryptionParams say %d", len(key)*8, r.keyBits)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return "", fmt.Errorf("inner key: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return "", fmt.Errorf("AES-GCM: %w", err)
	}
	sealed := make([]byte, 0, len(r.ciphertext)+len(r.tag))
	sealed = append(append(sealed, r.ciphertext...), r.tag...)
	plain, err := gcm.Open(nil, r.iv, sealed, []byte(TransportKeyAAD))
	if err != nil {
		return "", fmt.Errorf("AES-GCM authentication failed (the response was altered, or not encrypted to this TPM's ephemeral key): %w", err)
	}
	jwt := string(plain)
	if !looksLikeCompactJWS(jwt) {
		return "", errors.New("decrypted token is not a compact JWS")
	}
	return jwt, nil
}

// decryptResponse runs the whole decryption of a 200 body with the source's ephemeral key, the
// one whose public area encKeyPub the request carried.
func decryptResponse(ctx context.Context, body []byte, src EvidenceSource, encKeyPub []byte) (string, error) {
	r, err := decodeAttestResponse(body)
	if err != nil {
		return "", fmt.Errorf("decrypting the MAA response: %w: %w", ErrResponse, err)
	}
	key, err := src.DecryptWithEphemeralKey(ctx, encKeyPub, r.innerKey)
	if err != nil {
		return "", fmt.Errorf("decrypting the MAA response: %w: unwrapping the inner key with the TPM ephemeral key: %w", ErrResponse, err)
	}
	jwt, err := r.open(key)
	if err != nil {
		return "", fmt.Errorf("decrypting the MAA response: %w: %w", ErrResponse, err)
	}
	return jwt, nil
}

// looksLikeCompactJWS reports whether s is three dot-separated base64url segments, the first two
// non-empty. It does not decode or verify anything.
func looksLikeCompactJWS(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return false
	}
	for _, p := range parts {
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// decodeStrict unmarshals one JSON value into v, refusing unknown fields and trailing data.
func decodeStrict(data []byte, v any) error { return decodeJSON(data, v, true) }

// decodeJSON unmarshals exactly one JSON value into v, refusing trailing data and, if strict,
// unknown fields.
func decodeJSON(data []byte, v any, strict bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON document")
	}
	return nil
}
