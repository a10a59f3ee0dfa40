package keyvault

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
)

func TestPublicKeyEC(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point, err := priv.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	x, y := point[1:33], point[33:]
	// A coordinate with a leading zero byte, as a JWK producer that trims integers would send it.
	var trimmedX, trimmedY []byte
	for trimmedX == nil {
		p, _ := ecdh.P256().GenerateKey(rand.Reader)
		b := p.PublicKey().Bytes()
		if b[1] == 0 {
			trimmedX, trimmedY = b[2:33], b[33:]
		}
	}
	kty, crv := azkeys.KeyTypeEC, azkeys.CurveNameP256
	offCurve := append([]byte(nil), y...)
	offCurve[31] ^= 1
	tests := []struct {
		name string
		x, y []byte
		ok   bool
	}{
		{"full-size coordinates", x, y, true},
		{"trimmed leading zero, left-padded", trimmedX, trimmedY, true},
		{"point not on the curve", x, offCurve, false},
		{"coordinate longer than the field", append([]byte{1}, x...), y, false},
		{"empty coordinate", nil, y, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pub, err := publicKey(&azkeys.JSONWebKey{Kty: &kty, Crv: &crv, X: tc.x, Y: tc.y})
			if (err == nil) != tc.ok {
				t.Fatalf("publicKey: %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && tc.name == "full-size coordinates" && !pub.(*ecdsa.PublicKey).Equal(&priv.PublicKey) {
				t.Fatal("parsed key differs")
			}
		})
	}
}
