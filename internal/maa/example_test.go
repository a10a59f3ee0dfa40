package maa_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/attested-kv/attested-kv/internal/maa"
)

// ExampleVerifier_Verify verifies a token offline, with the instance's keys from a saved JWKS.
// Online, use maa.NewRemoteKeySet(instance, maa.JWKSOptions{}) instead of the static set.
func ExampleVerifier_Verify() {
	const instance = "https://example.weu.attest.azure.net"

	// Stand-in for MAA: a signing key, its JWKS and a token it issued. In real use the JWKS is
	// {instance}/certs and the token comes from Client.AttestNonce.
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1"}}})
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{
		"iss": instance, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(8 * time.Hour).Unix(),
		"x-ms-attestation-type": "azurevm",
		"x-ms-runtime": map[string]any{"client-payload": map[string]any{
			"nonce": base64.StdEncoding.EncodeToString([]byte("sha256:0123")),
		}},
	})
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, nil)
	jws, _ := signer.Sign(claims)
	raw, _ := jws.CompactSerialize()

	keys, err := maa.NewStaticKeySet(jwks)
	if err != nil {
		fmt.Println(err)
		return
	}
	v, err := maa.NewVerifier(maa.VerifierOptions{Instance: instance, Keys: keys, MaxAge: 5 * time.Minute})
	if err != nil {
		fmt.Println(err)
		return
	}
	tok, err := v.Verify(context.Background(), raw, "sha256:0123")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("issuer:", tok.Issuer())
	fmt.Println("nonce:", tok.Nonce())

	_, err = v.Verify(context.Background(), raw, "sha256:4567")
	fmt.Println("other nonce:", maa.CheckName(err))
	// Output:
	// issuer: https://example.weu.attest.azure.net
	// nonce: sha256:0123
	// other nonce: nonce
}
