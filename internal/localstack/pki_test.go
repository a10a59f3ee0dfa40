package localstack

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/attested-kv/attested-kv/internal/testcert"
)

// leaf issues a server certificate for dns and ips from a's root.
func (a *tlsAuthority) leaf(t *testing.T, dns []string, ips []net.IP) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: dns, IPAddresses: ips,
	}
	return testcert.Issue(t, tmpl, a.cert, key.Public(), a.key)
}

func TestTLSRootNameConstraints(t *testing.T) {
	a, err := loadOrCreateTLSAuthority(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(a.cert)
	verify := func(c *x509.Certificate, name string) error {
		_, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: name})
		return err
	}

	srv, _, err := a.serverCertificate()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if err := verify(srv, name); err != nil {
			t.Errorf("the stack's server certificate for %s: %v", name, err)
		}
	}

	tests := []struct {
		name string
		dns  []string
		ips  []net.IP
	}{
		{"login.microsoftonline.com", []string{"login.microsoftonline.com"}, nil},
		{"vault.azure.net", []string{"myvault.vault.azure.net"}, nil},
		{"localhost with a foreign name beside it", []string{"localhost", "login.microsoftonline.com"}, nil},
		{"another loopback address", nil, []net.IP{net.IPv4(127, 0, 0, 2)}},
		{"a routable address", nil, []net.IP{net.IPv4(10, 0, 0, 1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := a.leaf(t, tt.dns, tt.ips)
			name := ""
			if len(tt.dns) > 0 {
				name = tt.dns[len(tt.dns)-1]
			} else {
				name = tt.ips[0].String()
			}
			err := verify(c, name)
			var ce x509.CertificateInvalidError
			if !errors.As(err, &ce) || ce.Reason != x509.CANotAuthorizedForThisName {
				t.Errorf("verification: %v, want a name-constraint error (CANotAuthorizedForThisName)", err)
			}
		})
	}
}

// TestTLSRootReplacedWithoutConstraints: a root kept from before the name constraints is not
// reused; the one made in its place is, across restarts.
func TestTLSRootReplacedWithoutConstraints(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "attested-kv local stack TLS root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(5, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}
	old := testcert.Issue(t, tmpl, nil, key.Public(), key)
	if err := savePair(filepath.Join(dir, "root.pem"), filepath.Join(dir, "root-key.pem"), old, key); err != nil {
		t.Fatal(err)
	}
	a, err := loadOrCreateTLSAuthority(dir)
	if err != nil {
		t.Fatal(err)
	}
	if a.cert.Equal(old) || !loopbackOnly(a.cert) {
		t.Fatalf("the unconstrained root was kept (constraints %v %v)", a.cert.PermittedDNSDomains, a.cert.PermittedIPRanges)
	}
	again, err := loadOrCreateTLSAuthority(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.cert.Equal(a.cert) {
		t.Error("the constrained root was not kept across a restart")
	}
}
