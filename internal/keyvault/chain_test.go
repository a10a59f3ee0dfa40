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
	"strings"
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

// TestBuildChain: each refusal names the rule it applies, so that a row refused by another rule
// (a duplicate that is also a left-over certificate) does not pass for the wrong reason.
func TestBuildChain(t *testing.T) {
	p := newPKI(t)
	otherKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	// impostor has the intermediate's subject and the root's signature, but another key: the
	// leaf's issuer by name only.
	impostorKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	impostor := testcert.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "inter"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign},
		p.root, impostorKey.Public(), p.rootKey)
	// ownKeyLeaf names the intermediate as its issuer but is signed with its own key: its
	// signature verifies with its own key, yet it is not self-signed. x509.CreateCertificate
	// takes the issuer name from parent and checks parent's key against the signer's, so parent
	// is the intermediate with the leaf's key.
	asInter := *p.inter
	asInter.PublicKey = p.leafKey.Public()
	ownKeyLeaf := testcert.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "signer"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, BasicConstraintsValid: true}, &asInter, p.leafKey.Public(), p.leafKey)
	if ownKeyLeaf.CheckSignature(ownKeyLeaf.SignatureAlgorithm, ownKeyLeaf.RawTBSCertificate, ownKeyLeaf.Signature) != nil {
		t.Fatal("the own-key leaf must verify with its own key")
	}
	// namesake is a leaf whose subject is its issuer's name, signed by the intermediate: issuer
	// and subject agree, yet it is not self-signed.
	namesake := testcert.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "inter"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, BasicConstraintsValid: true}, p.inter, otherKey.Public(), p.interKey)
	tests := []struct {
		name  string
		pub   crypto.PublicKey
		certs []*x509.Certificate
		// wantErr is in the error of a refused chain; "" means the chain leaf, inter, root.
		wantErr string
	}{
		{"ordered", p.leafKey.Public(), []*x509.Certificate{p.leaf, p.inter, p.root}, ""},
		{"unordered", p.leafKey.Public(), []*x509.Certificate{p.root, p.leaf, p.inter}, ""},
		{"leaf named as its issuer", otherKey.Public(), []*x509.Certificate{p.inter, namesake, p.root}, ""},
		{"duplicate", p.leafKey.Public(), []*x509.Certificate{p.leaf, p.inter, p.inter, p.root}, `"CN=inter" appears twice`},
		{"missing intermediate", p.leafKey.Public(), []*x509.Certificate{p.leaf, p.root}, `the issuer "CN=inter" of "CN=signer" is missing`},
		{"impostor issuer: the name, another key", p.leafKey.Public(), []*x509.Certificate{p.leaf, impostor, p.root}, `the issuer "CN=inter" of "CN=signer" is missing`},
		{"signed by its own key under another issuer's name", p.leafKey.Public(), []*x509.Certificate{ownKeyLeaf}, `the issuer "CN=inter" of "CN=signer" is missing`},
		{"extra certificate", p.leafKey.Public(), []*x509.Certificate{p.leaf, p.inter, p.root, p.strayRoot}, `1 certificate(s) do not belong to the chain, e.g. "CN=stray"`},
		{"two leaves for the key", p.leafKey.Public(), []*x509.Certificate{p.leaf, p.leafBadKU, p.inter, p.root}, "two certificates hold the signing key"},
		{"no leaf for the key", otherKey.Public(), []*x509.Certificate{p.leaf, p.inter, p.root}, "no certificate holds the Key Vault key's public key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			chain, err := BuildChain(tc.pub, tc.certs)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("BuildChain: %v, want an error containing %q", err, tc.wantErr)
				}
				if !errors.Is(err, ErrCertificateChain) {
					t.Fatalf("%v is not ErrCertificateChain", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("BuildChain: %v", err)
			}
			if len(chain) != 3 || !tc.pub.(*rsa.PublicKey).Equal(chain[0].PublicKey) || chain[1] != p.inter || chain[2] != p.root {
				t.Fatalf("chain of %d certificates, want leaf, inter, root", len(chain))
			}
		})
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
