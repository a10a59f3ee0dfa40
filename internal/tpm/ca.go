package tpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
)

// OIDTCGKpAIKCertificate is the TCG key purpose of AK certificates (tcg-kp-AIKCertificate,
// 2.23.133.8.3), which Azure's vTPM AK certificates carry.
var OIDTCGKpAIKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 3}

// File names of a saved CA.
const (
	caRootCert  = "root.pem"
	caRootKey   = "root-key.pem"
	caInterCert = "intermediate.pem"
	caInterKey  = "intermediate-key.pem"
)

// AKCertValidity is the lifetime of the AK certificates a CA issues.
const AKCertValidity = 365 * 24 * time.Hour

// CA is a local stand-in for Azure's vTPM PKI ("Azure Virtual TPM Root Certificate Authority
// 2023" -> "Global Virtual TPM CA - 03" -> AK certificate), for simulators only. Its root is
// what an MAA emulator trusts; the intermediate is shipped with it, as Azure's is (its AK leaves
// carry no AIA).
type CA struct {
	Root         *x509.Certificate
	Intermediate *x509.Certificate
	rootKey      crypto.Signer
	interKey     crypto.Signer
}

// NewCA creates a CA with fresh ECDSA P-384 keys. It is not Azure's PKI and no real MAA trusts it.
func NewCA() (*CA, error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	interKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now().Add(-time.Hour)
	root, err := issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "attested-kv local Virtual TPM Root Certificate Authority", Organization: []string{"attested-kv local stack (not Microsoft)"}},
		NotBefore:             now,
		NotAfter:              now.Add(20 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil, rootKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	inter, err := issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "attested-kv local Virtual TPM CA - 01", Organization: []string{"attested-kv local stack (not Microsoft)"}},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}, root, interKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	return &CA{Root: root, Intermediate: inter, rootKey: rootKey, interKey: interKey}, nil
}

// IssueAKCertificate issues an AK certificate for pub in Azure's shape: subject
// CN=<vmID>.TrustedVM.Azure.windows.net (UNCONFIRMED beyond the samples the MAA emulator
// documents), key usage digitalSignature, extended key usage tcg-kp-AIKCertificate.
func (ca *CA) IssueAKCertificate(pub crypto.PublicKey, vmID string) (*x509.Certificate, error) {
	now := time.Now().Add(-time.Hour)
	return issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: vmID + ".TrustedVM.Azure.windows.net"},
		NotBefore:             now,
		NotAfter:              now.Add(AKCertValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{OIDTCGKpAIKCertificate},
		BasicConstraintsValid: true,
	}, ca.Intermediate, pub, ca.interKey)
}

func issue(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("issuing %q: %w", tmpl.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

// RootPEM returns the root certificate in PEM.
func (ca *CA) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root.Raw})
}

// IntermediatePEM returns the intermediate certificate in PEM.
func (ca *CA) IntermediatePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Intermediate.Raw})
}

// Save writes the CA to dir (keys mode 0600), replacing each file atomically.
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	rootKey, err := x509.MarshalPKCS8PrivateKey(ca.rootKey)
	if err != nil {
		return err
	}
	interKey, err := x509.MarshalPKCS8PrivateKey(ca.interKey)
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{caRootKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rootKey}), 0o600},
		{caInterKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: interKey}), 0o600},
		{caRootCert, ca.RootPEM(), 0o644},
		{caInterCert, ca.IntermediatePEM(), 0o644},
	}
	for _, f := range files {
		if err := atomicfile.Write(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// LoadCA reads a CA saved by Save. A missing directory or file yields an error wrapping
// os.ErrNotExist.
func LoadCA(dir string) (*CA, error) {
	root, err := readCert(filepath.Join(dir, caRootCert))
	if err != nil {
		return nil, err
	}
	inter, err := readCert(filepath.Join(dir, caInterCert))
	if err != nil {
		return nil, err
	}
	rootKey, err := readKey(filepath.Join(dir, caRootKey))
	if err != nil {
		return nil, err
	}
	interKey, err := readKey(filepath.Join(dir, caInterKey))
	if err != nil {
		return nil, err
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("%s: the intermediate is not signed by the root: %w", dir, err)
	}
	if !publicKeyEqual(rootKey.Public(), root.PublicKey) || !publicKeyEqual(interKey.Public(), inter.PublicKey) {
		return nil, fmt.Errorf("%s: a CA key does not match its certificate", dir)
	}
	return &CA{Root: root, Intermediate: inter, rootKey: rootKey, interKey: interKey}, nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

func readKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s: no PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New(path + ": not a signing key")
	}
	return s, nil
}
