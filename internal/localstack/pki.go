package localstack

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
)

// systemRootFiles are where Debian-like and Red Hat-like systems keep their root bundle.
var systemRootFiles = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
}

// loopbackHost is the DNS name of the stack's HTTPS endpoints; loopbackIPs gives their addresses.
// The one server certificate carries exactly these names, and the root is name-constrained to
// them: clients trust the root for every host through SSL_CERT_FILE and its key is on disk, so
// without the constraints it could vouch for any host (login.microsoftonline.com included).
const loopbackHost = "localhost"

func loopbackIPs() []net.IP { return []net.IP{net.IPv4(127, 0, 0, 1).To4(), net.IPv6loopback} }

// loopbackRanges are loopbackIPs as single-address ranges, the root's permitted IP ranges.
func loopbackRanges() []*net.IPNet {
	var r []*net.IPNet
	for _, ip := range loopbackIPs() {
		r = append(r, &net.IPNet{IP: ip, Mask: net.CIDRMask(8*len(ip), 8*len(ip))})
	}
	return r
}

// loopbackOnly reports whether root is constrained (critically) to the loopback names alone.
func loopbackOnly(root *x509.Certificate) bool {
	if !root.PermittedDNSDomainsCritical || !slices.Equal(root.PermittedDNSDomains, []string{loopbackHost}) ||
		len(root.ExcludedDNSDomains) > 0 || len(root.ExcludedIPRanges) > 0 {
		return false
	}
	return slices.EqualFunc(root.PermittedIPRanges, loopbackRanges(), func(a, b *net.IPNet) bool {
		return a.IP.Equal(b.IP) && slices.Equal(a.Mask, b.Mask)
	})
}

// tlsAuthority is the stack's own TLS root. Every HTTPS endpoint of the stack has a leaf issued by
// it; clients trust it through SSL_CERT_FILE (a bundle of the system roots plus this root).
type tlsAuthority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// loadOrCreateTLSAuthority keeps the root across restarts so that trust set up once stays valid.
// A kept root without the loopback name constraints (made before they were added) is replaced;
// the CA bundle is rewritten from the root at every start, so trust follows.
func loadOrCreateTLSAuthority(dir string) (*tlsAuthority, error) {
	certPath, keyPath := filepath.Join(dir, "root.pem"), filepath.Join(dir, "root-key.pem")
	if cert, key, err := loadPair(certPath, keyPath); err == nil {
		if loopbackOnly(cert) {
			return &tlsAuthority{cert: cert, key: key}, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("TLS root in %s: %w", dir, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "attested-kv local stack TLS root", Organization: []string{"attested-kv local"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(5, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		// Critical, so that a client that does not understand name constraints refuses the root.
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         []string{loopbackHost},
		PermittedIPRanges:           loopbackRanges(),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if err := savePair(certPath, keyPath, cert, key); err != nil {
		return nil, err
	}
	return &tlsAuthority{cert: cert, key: key}, nil
}

// serverCertificate issues a short-lived leaf for the loopback names.
func (a *tlsAuthority) serverCertificate() (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: loopbackHost},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(0, 0, 30),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{loopbackHost},
		IPAddresses:  loopbackIPs(),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// writeCABundle writes the system roots followed by the stack's root, for SSL_CERT_FILE.
// It reports whether the bundle holds the system's roots.
func writeCABundle(path string, root *x509.Certificate) (bool, error) {
	var bundle []byte
	system := false
	for _, f := range systemRootFiles {
		if b, err := os.ReadFile(f); err == nil {
			system = true
			bundle = append(bundle, b...)
			if len(bundle) > 0 && bundle[len(bundle)-1] != '\n' {
				bundle = append(bundle, '\n')
			}
			break
		}
	}
	bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})...)
	return system, atomicfile.Write(path, bundle, 0o644)
}

// loadOrCreateSigningKey keeps the MAA emulator's token signing key across restarts, so that
// verifiers holding a pinned JWKS keep working.
func loadOrCreateSigningKey(dir string) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(dir, "signing-cert.pem"), filepath.Join(dir, "signing-key.pem")
	if cert, key, err := loadPair(certPath, keyPath); err == nil {
		return cert, key, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("MAA signing key in %s: %w", dir, err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "attested-kv local MAA token signing"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(2, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, savePair(certPath, keyPath, cert, key)
}

func loadPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cblock, _ := pem.Decode(cb)
	kblock, _ := pem.Decode(kb)
	if cblock == nil || kblock == nil {
		return nil, nil, fmt.Errorf("%s or %s is not PEM", certPath, keyPath)
	}
	cert, err := x509.ParseCertificate(cblock.Bytes)
	if err != nil {
		return nil, nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kblock.Bytes)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not a signing key", keyPath)
	}
	return cert, signer, nil
}

func savePair(certPath, keyPath string, cert *x509.Certificate, key crypto.Signer) error {
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return atomicfile.Write(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}
