package keyvault

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	nx509 "github.com/notaryproject/notation-core-go/x509"
)

// ErrCertificateChain means the certificate chain cannot be used to sign with this key.
var ErrCertificateChain = errors.New("unusable certificate chain")

// maxChainCerts bounds the certificates taken from a secret or bundle.
const maxChainCerts = 16

// ParsePEMCertificates returns the certificates of a PEM bundle, ignoring other blocks (a
// certificate's secret also holds its private key when the key is exportable; it is skipped and
// never kept).
func ParsePEMCertificates(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCertificateChain, err)
		}
		certs = append(certs, c)
		if len(certs) > maxChainCerts {
			return nil, fmt.Errorf("%w: more than %d certificates", ErrCertificateChain, maxChainCerts)
		}
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no PEM certificate found", ErrCertificateChain)
	}
	return certs, nil
}

// BuildChain orders certs leaf first, root last, where the leaf is the one certificate holding
// pub, each next one issued the previous, and the last is self-signed. It refuses duplicates, a
// second candidate leaf, a missing issuer and certificates left over, as notation-azure-kv does.
func BuildChain(pub crypto.PublicKey, certs []*x509.Certificate) ([]*x509.Certificate, error) {
	k, ok := pub.(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return nil, fmt.Errorf("%w: unsupported key type %T", ErrCertificateChain, pub)
	}
	var leaf *x509.Certificate
	rest := make([]*x509.Certificate, 0, len(certs))
	for i, c := range certs {
		for _, d := range certs[:i] {
			if bytes.Equal(c.Raw, d.Raw) {
				return nil, fmt.Errorf("%w: certificate %q appears twice", ErrCertificateChain, c.Subject)
			}
		}
		if k.Equal(c.PublicKey) {
			if leaf != nil {
				return nil, fmt.Errorf("%w: two certificates hold the signing key", ErrCertificateChain)
			}
			leaf = c
			continue
		}
		rest = append(rest, c)
	}
	if leaf == nil {
		return nil, fmt.Errorf("%w: no certificate holds the Key Vault key's public key (is the key id the certificate's key?)", ErrCertificateChain)
	}
	chain := []*x509.Certificate{leaf}
	for cur := leaf; !isSelfSigned(cur); {
		i := issuerIndex(cur, rest)
		if i < 0 {
			return nil, fmt.Errorf("%w: the issuer %q of %q is missing (complete the chain in Key Vault or with ca_certs)", ErrCertificateChain, cur.Issuer, cur.Subject)
		}
		cur = rest[i]
		chain = append(chain, cur)
		rest = append(rest[:i], rest[i+1:]...)
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("%w: %d certificate(s) do not belong to the chain, e.g. %q", ErrCertificateChain, len(rest), rest[0].Subject)
	}
	return chain, nil
}

// isSelfSigned reports whether c is signed by its own key (CheckSignatureFrom would also demand
// that c be a CA, which a self-signed code-signing leaf is not).
func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

func issuerIndex(c *x509.Certificate, candidates []*x509.Certificate) int {
	for i, p := range candidates {
		if bytes.Equal(c.RawIssuer, p.RawSubject) && c.CheckSignatureFrom(p) == nil {
			return i
		}
	}
	return -1
}

// ValidateChain applies Notation's code-signing certificate rules at time t (notation-core-go
// ValidateCodeSigningCertChain: key usage, basic constraints, EKU, validity, issuance), so a chain
// notation would refuse after signing is refused before anything is signed.
func ValidateChain(chain []*x509.Certificate, t time.Time) error {
	if err := nx509.ValidateCodeSigningCertChain(chain, &t); err != nil {
		return fmt.Errorf("%w: notation would refuse it: %w", ErrCertificateChain, err)
	}
	return nil
}
