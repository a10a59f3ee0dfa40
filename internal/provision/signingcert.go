// Package provision creates the Azure data-plane resources the signer needs, through the official
// SDK clients, so the same code provisions a real vault and the local stack's emulator.
package provision

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
)

// OIDCodeSigning is the code-signing extended key usage (1.3.6.1.5.5.7.3.3).
const OIDCodeSigning = "1.3.6.1.5.5.7.3.3"

// SigningCertificate describes the Key Vault certificate (and so the key) notation signs with.
type SigningCertificate struct {
	// Name of the certificate, key and secret in the vault.
	Name string
	// Subject must carry C, ST and O: Notation's trusted identities require them.
	Subject string
	// KeyType is RSA or EC (the "-HSM" variants on Premium vaults); KeySize or Curve accordingly.
	KeyType string
	KeySize int32
	Curve   string
	// ValidityMonths of the certificate; 12 if zero.
	ValidityMonths int32
	// Issuer is "Self" for a self-issued certificate, or a configured CA issuer's name.
	Issuer string
}

// Result is what CreateSigningCertificate made.
type Result struct {
	// KeyID is the versioned key URL to give notation (--id).
	KeyID string
	// Certificate is the leaf.
	Certificate *x509.Certificate
}

// CreateSigningCertificate creates the certificate with the policy Notation needs (key usage
// digitalSignature only, critical; EKU code signing; a non-exportable key; the secret as PEM so
// the chain can be read without PKCS#12) and waits for the operation to complete.
func CreateSigningCertificate(ctx context.Context, vaultURL string, cred azcore.TokenCredential, opts *azcertificates.ClientOptions, c SigningCertificate) (*Result, error) {
	client, err := azcertificates.NewClient(vaultURL, cred, opts)
	if err != nil {
		return nil, err
	}
	kt := azcertificates.KeyType(c.KeyType)
	if kt == "" {
		kt = azcertificates.KeyTypeRSA
	}
	exportable, reuse := false, false
	pemType := "application/x-pem-file"
	issuer := c.Issuer
	if issuer == "" {
		issuer = "Self"
	}
	months := c.ValidityMonths
	if months == 0 {
		months = 12
	}
	eku := OIDCodeSigning
	ds := azcertificates.KeyUsageTypeDigitalSignature
	kp := &azcertificates.KeyProperties{KeyType: &kt, Exportable: &exportable, ReuseKey: &reuse}
	if strings.HasPrefix(string(kt), "EC") {
		curve := azcertificates.CurveName(c.Curve)
		if curve == "" {
			curve = azcertificates.CurveNameP256
		}
		kp.Curve = &curve
	} else {
		size := c.KeySize
		if size == 0 {
			size = 2048
		}
		kp.KeySize = &size
	}
	_, err = client.CreateCertificate(ctx, c.Name, azcertificates.CreateCertificateParameters{CertificatePolicy: &azcertificates.CertificatePolicy{
		IssuerParameters: &azcertificates.IssuerParameters{Name: &issuer},
		KeyProperties:    kp,
		SecretProperties: &azcertificates.SecretProperties{ContentType: &pemType},
		X509CertificateProperties: &azcertificates.X509CertificateProperties{
			Subject: &c.Subject, EnhancedKeyUsage: []*string{&eku},
			KeyUsage: []*azcertificates.KeyUsageType{&ds}, ValidityInMonths: &months,
		},
	}}, nil)
	if err != nil {
		return nil, fmt.Errorf("creating certificate %s: %w", c.Name, err)
	}
	// There is no SDK poller: poll the pending operation (status strings UNCONFIRMED beyond
	// "inProgress" and "completed").
	for delay := 500 * time.Millisecond; ; delay = min(2*delay, 10*time.Second) {
		op, err := client.GetCertificateOperation(ctx, c.Name, nil)
		if err != nil {
			return nil, fmt.Errorf("certificate %s operation: %w", c.Name, err)
		}
		status := ""
		if op.Status != nil {
			status = strings.ToLower(*op.Status)
		}
		if status == "completed" {
			break
		}
		if status != "inprogress" {
			detail := ""
			if op.StatusDetails != nil {
				detail = *op.StatusDetails
			}
			return nil, fmt.Errorf("certificate %s: operation %s %s", c.Name, status, detail)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
	got, err := client.GetCertificate(ctx, c.Name, "", nil)
	if err != nil {
		return nil, fmt.Errorf("reading certificate %s: %w", c.Name, err)
	}
	if got.ID == nil || got.KID == nil {
		return nil, errors.New("certificate without id or key id")
	}
	cert, err := x509.ParseCertificate(got.CER)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", c.Name, err)
	}
	return &Result{KeyID: strings.TrimSuffix(vaultURL, "/") + "/keys/" + c.Name + "/" + got.ID.Version(), Certificate: cert}, nil
}

// EnsureSigningCertificate returns the certificate named c.Name if the vault has one, and creates
// it otherwise, so that a second bootstrap run does not add a certificate version.
func EnsureSigningCertificate(ctx context.Context, vaultURL string, cred azcore.TokenCredential, opts *azcertificates.ClientOptions, c SigningCertificate) (*Result, error) {
	client, err := azcertificates.NewClient(vaultURL, cred, opts)
	if err != nil {
		return nil, err
	}
	got, err := client.GetCertificate(ctx, c.Name, "", nil)
	var re *azcore.ResponseError
	switch {
	case errors.As(err, &re) && re.StatusCode == http.StatusNotFound:
		return CreateSigningCertificate(ctx, vaultURL, cred, opts, c)
	case err != nil:
		return nil, fmt.Errorf("reading certificate %s: %w", c.Name, err)
	}
	if got.ID == nil {
		return nil, errors.New("certificate without id")
	}
	cert, err := x509.ParseCertificate(got.CER)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", c.Name, err)
	}
	return &Result{KeyID: strings.TrimSuffix(vaultURL, "/") + "/keys/" + c.Name + "/" + got.ID.Version(), Certificate: cert}, nil
}
