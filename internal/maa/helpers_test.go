package maa

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-tpm/tpm2"

	"github.com/attested-kv/attested-kv/internal/testcert"
)

// Test keys, generated once per test binary: RSA-2048 generation is slow.
var (
	keysOnce     sync.Once
	signingKey   *rsa.PrivateKey // the instance's token signing key
	attackerKey  *rsa.PrivateKey // a key the verifier must never trust
	ephemeralKey *rsa.PrivateKey // the TPM ephemeral key of the client tests
	weakKey      *rsa.PrivateKey // RSA-1024, shorter than MinRSAKeyBits
)

func testKeys(tb testing.TB) {
	tb.Helper()
	keysOnce.Do(func() {
		gen := func(bits int) *rsa.PrivateKey {
			k, err := rsa.GenerateKey(rand.Reader, bits)
			if err != nil {
				panic(err)
			}
			return k
		}
		signingKey, attackerKey, ephemeralKey, weakKey = gen(2048), gen(2048), gen(2048), gen(1024)
	})
}

const (
	testKID      = "maa-signing-key-1"
	testInstance = "https://test.weu.attest.azure.net"
)

// testNow is the fixed clock of the verifier tests.
var testNow = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// selfSignedCert returns a self-signed certificate for key, as MAA's /certs carries.
func selfSignedCert(tb testing.TB, key *rsa.PrivateKey, cn string) *x509.Certificate {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    testNow.Add(-24 * time.Hour),
		NotAfter:     testNow.Add(365 * 24 * time.Hour),
	}
	return testcert.Issue(tb, tmpl, nil, &key.PublicKey, key)
}

// x5cOnlyJWKS is a JWKS in the shape of MAA's /certs: kid, kty and x5c only, no n/e.
func x5cOnlyJWKS(tb testing.TB, key *rsa.PrivateKey, kid string) []byte {
	tb.Helper()
	cert := selfSignedCert(tb, key, "test MAA signing")
	doc, err := json.Marshal(map[string]any{"keys": []any{map[string]any{
		"kid": kid, "kty": "RSA", "x5c": []string{base64.StdEncoding.EncodeToString(cert.Raw)},
	}}})
	if err != nil {
		tb.Fatal(err)
	}
	return doc
}

// publicJWKS is a JWKS with n/e, as go-jose writes it.
func publicJWKS(tb testing.TB, key *rsa.PrivateKey, kid string) []byte {
	tb.Helper()
	doc, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: kid, Algorithm: "RS256", Use: "sig"}}})
	if err != nil {
		tb.Fatal(err)
	}
	return doc
}

// validClaims is an AzureGuest-shaped claim set issued at now-1m, valid 8 h, carrying nonce.
func validClaims(now time.Time, nonce string) map[string]any {
	return map[string]any{
		"iss":                testInstance,
		"iat":                now.Add(-time.Minute).Unix(),
		"nbf":                now.Add(-time.Minute).Unix(),
		"exp":                now.Add(8 * time.Hour).Unix(),
		"jti":                "d4f1",
		ClaimVer:             "1.0",
		ClaimAttestationType: AttestationTypeAzureVM,
		ClaimSecureBoot:      true,
		ClaimAttestedPCRs:    []int{0, 1, 2, 3, 4, 5, 6, 7},
		ClaimProtocolVer:     ProtocolVersion,
		ClaimRuntime: map[string]any{
			ClaimClientPayload: map[string]any{NonceKey: base64.StdEncoding.EncodeToString([]byte(nonce))},
			ClaimRuntimeKeys:   []any{runtimeKeyJWK(ephemeralKey)},
		},
	}
}

// runtimeKeyJWK is the x-ms-runtime.keys entry naming key as the TPM ephemeral key, shaped as in
// Azure's sample tokens; nil before testKeys.
func runtimeKeyJWK(key *rsa.PrivateKey) map[string]any {
	if key == nil {
		return nil
	}
	return map[string]any{
		"kid": EphemeralKeyKID, "kty": "RSA", "key_ops": []string{"encrypt"},
		"n": base64.RawURLEncoding.EncodeToString(key.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(key.E)).Bytes()),
	}
}

// tpmPublic is key's public part as a marshalled TPM2B_PUBLIC, as the TPM gives EncKeyPub.
func tpmPublic(key *rsa.PublicKey) []byte {
	return tpm2.Marshal(tpm2.New2B(tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgRSA,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, NoDA: true, Decrypt: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{KeyBits: 2048}),
		Unique:     tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: key.N.Bytes()}),
	}))
}

// signJOSE signs claims with go-jose (RS256, typ JWT) and the given options.
func signJOSE(tb testing.TB, key *rsa.PrivateKey, kid string, claims map[string]any, opts *jose.SignerOptions) string {
	tb.Helper()
	if opts == nil {
		opts = &jose.SignerOptions{}
	}
	opts = opts.WithType("JWT")
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, opts)
	if err != nil {
		tb.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		tb.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// signRaw builds an RS256 compact JWS over exactly the given header and claims bytes, for headers
// go-jose would not write (duplicates, crit).
func signRaw(tb testing.TB, key *rsa.PrivateKey, header, claims []byte) string {
	tb.Helper()
	input := b64url(header) + "." + b64url(claims)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		tb.Fatal(err)
	}
	return input + "." + b64url(sig)
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
