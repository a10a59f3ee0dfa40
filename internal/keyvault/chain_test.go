package keyvault

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/attested-kv/attested-kv/internal/testcert"
)

type pki struct {
	root, inter, leaf    *x509.Certificate
	rootKey, interKey    *ecdsa.PrivateKey
	leafKey              *rsa.PrivateKey
	strayRoot            *x509.Certificate
	leafBadKU, leafOther *x509.Certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{}
	p.rootKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p.interKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p.leafKey, _ = rsa.GenerateKey(rand.Reader, 2048)
	ca := func(cn string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	}
	p.root = testcert.Issue(t, ca("root"), nil, p.rootKey.Public(), p.rootKey)
	p.inter = testcert.Issue(t, ca("inter"), p.root, p.interKey.Public(), p.rootKey)
	leaf := func(ku x509.KeyUsage, eku []x509.ExtKeyUsage) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: "signer"}, KeyUsage: ku, ExtKeyUsage: eku, BasicConstraintsValid: true}
	}
	p.leaf = testcert.Issue(t, leaf(x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}), p.inter, p.leafKey.Public(), p.interKey)
	p.leafBadKU = testcert.Issue(t, leaf(x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment, nil), p.inter, p.leafKey.Public(), p.interKey)
	p.leafOther = testcert.Issue(t, leaf(x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}), p.inter, p.leafKey.Public(), p.interKey)
	strayKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p.strayRoot = testcert.Issue(t, ca("stray"), nil, strayKey.Public(), strayKey)
	return p
}

func TestBuildChain(t *testing.T) {
	p := newPKI(t)
	otherKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	tests := []struct {
		name  string
		pub   crypto.PublicKey
		certs []*x509.Certificate
		ok    bool
	}{
		{"ordered", p.leafKey.Public(), []*x509.Certificate{p.leaf, p.inter, p.root}, true},
		{"unordered", p.leafKey.Public(), []*x509.Certificate{p.root, p.leaf, p.inter}, true},
		{"duplicate", p.leafKey.Public(), []*x509.Certificate{p.leaf, p.inter, p.inter, p.root}, false},
		{"missing intermediate", p.leafKey.Public(), []*x509.Certificate{p.leaf, p.root}, false},
		{"extra certificate", p.leafKey.Public(), []*x509.Certificate{p.leaf, p.inter, p.root, p.strayRoot}, false},
		{"two leaves for the key", p.leafKey.Public(), []*x509.Certificate{p.leaf, p.leafBadKU, p.inter, p.root}, false},
		{"no leaf for the key", otherKey.Public(), []*x509.Certificate{p.leaf, p.inter, p.root}, false},
	}
	for _, tc := range tests {
		chain, err := BuildChain(tc.pub, tc.certs)
		if tc.ok != (err == nil) {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrCertificateChain) {
				t.Errorf("%s: %v is not ErrCertificateChain", tc.name, err)
			}
			continue
		}
		if len(chain) != 3 || chain[0] != p.leaf || chain[1] != p.inter || chain[2] != p.root {
			t.Errorf("%s: wrong order", tc.name)
		}
	}
}

func TestValidateChain(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name  string
		chain []*x509.Certificate
		at    time.Time
		ok    bool
	}{
		{"code signing leaf", []*x509.Certificate{p.leaf, p.inter, p.root}, time.Now(), true},
		{"leaf with keyEncipherment", []*x509.Certificate{p.leafBadKU, p.inter, p.root}, time.Now(), false},
		{"leaf for TLS servers", []*x509.Certificate{p.leafOther, p.inter, p.root}, time.Now(), false},
		{"expired", []*x509.Certificate{p.leaf, p.inter, p.root}, time.Now().Add(48 * time.Hour), false},
	}
	for _, tc := range tests {
		if err := ValidateChain(tc.chain, tc.at); tc.ok != (err == nil) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestParsePEMCertificates(t *testing.T) {
	p := newPKI(t)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(p.leafKey)
	bundle := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	for _, c := range []*x509.Certificate{p.leaf, p.inter, p.root} {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	certs, err := ParsePEMCertificates(bundle)
	if err != nil || len(certs) != 3 {
		t.Fatalf("ParsePEMCertificates: %d, %v", len(certs), err)
	}
	if _, err := ParsePEMCertificates([]byte("no pem")); !errors.Is(err, ErrCertificateChain) {
		t.Fatalf("no PEM: %v", err)
	}
	if _, err := ParsePEMCertificates(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})); !errors.Is(err, ErrCertificateChain) {
		t.Fatalf("junk certificate: %v", err)
	}
}

func TestVerify(t *testing.T) {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := sha256.Sum256([]byte("payload"))
	pss, _ := rsa.SignPSS(rand.Reader, rk, crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	r, s, _ := ecdsa.Sign(rand.Reader, ek, d[:])
	raw := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	der, _ := ecdsa.SignASN1(rand.Reader, ek, d[:])
	tests := []struct {
		name string
		pub  crypto.PublicKey
		sig  []byte
		ok   bool
	}{
		{"PSS", rk.Public(), pss, true},
		{"PSS by another key", ek.Public(), pss, false},
		{"ECDSA r||s", ek.Public(), raw, true},
		{"ECDSA DER is not what JWS carries", ek.Public(), der, false},
		{"ECDSA flipped", ek.Public(), append(append([]byte{}, raw[:63]...), raw[63]^1), false},
	}
	for _, tc := range tests {
		if err := verify(tc.pub, crypto.SHA256, d[:], tc.sig); tc.ok != (err == nil) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
