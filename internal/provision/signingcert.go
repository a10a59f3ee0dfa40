// Package provision creates the Azure data-plane resources the signer needs, through the official
// SDK clients, so the same code provisions a real vault and the local stack's emulator.
package provision

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
)

// OIDCodeSigning is the code-signing extended key usage (1.3.6.1.5.5.7.3.3).
const OIDCodeSigning = "1.3.6.1.5.5.7.3.3"

// RenewBefore is how close to its expiry an existing certificate may be and still be reused by
// EnsureSigningCertificate: with less than 30 days left it creates a new version instead, so that
// the certificate a bootstrap run writes to a Notation trust store (and signs with) stays valid for
// at least a month afterwards rather than failing verification soon after the run.
const RenewBefore = 30 * 24 * time.Hour

// pemContentType is the secret content type asked for, so the chain reads without PKCS#12.
const pemContentType = "application/x-pem-file"

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
	// Replaced lists why EnsureSigningCertificate created a new version rather than reuse the
	// vault's current one, one entry per failed check ("key type: have RSA, want RSA-HSM"); nil
	// when the current version was reused, or when there was none.
	Replaced []string
}

// CreateSigningCertificate creates the certificate with the policy Notation needs (key usage
// digitalSignature only, critical; EKU code signing; a non-exportable key; the secret as PEM so
// the chain can be read without PKCS#12) and waits for the operation to complete.
func CreateSigningCertificate(ctx context.Context, vaultURL string, cred azcore.TokenCredential, opts *azcertificates.ClientOptions, c SigningCertificate) (*Result, error) {
	client, err := azcertificates.NewClient(vaultURL, cred, opts)
	if err != nil {
		return nil, err
	}
	_, err = client.CreateCertificate(ctx, c.Name, azcertificates.CreateCertificateParameters{CertificatePolicy: c.policy()}, nil)
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

// policy is the certificate policy CreateSigningCertificate asks for, with c's defaults filled in:
// RSA 2048 (or P-256 for EC keys), issuer Self, 12 months.
func (c SigningCertificate) policy() *azcertificates.CertificatePolicy {
	kt := azcertificates.KeyType(c.KeyType)
	if kt == "" {
		kt = azcertificates.KeyTypeRSA
	}
	exportable, reuse := false, false
	pemType := pemContentType
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
	if isEC(kt) {
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
	subject := c.Subject
	return &azcertificates.CertificatePolicy{
		IssuerParameters: &azcertificates.IssuerParameters{Name: &issuer},
		KeyProperties:    kp,
		SecretProperties: &azcertificates.SecretProperties{ContentType: &pemType},
		X509CertificateProperties: &azcertificates.X509CertificateProperties{
			Subject: &subject, EnhancedKeyUsage: []*string{&eku},
			KeyUsage: []*azcertificates.KeyUsageType{&ds}, ValidityInMonths: &months,
		},
	}
}

func isEC(kt azcertificates.KeyType) bool { return strings.HasPrefix(string(kt), "EC") }

func isHSM(kt *azcertificates.KeyType) bool {
	return kt != nil && strings.HasSuffix(strings.ToUpper(string(*kt)), "-HSM")
}

// ErrKeyDowngrade is EnsureSigningCertificate's refusal to replace a certificate whose key is
// HSM-backed by one whose key is not: signatures would silently stop being HSM-made.
var ErrKeyDowngrade = errors.New("refused to replace an HSM-backed key by a software key")

// ErrCertificateDisabled is EnsureSigningCertificate's refusal to replace a signing certificate
// whose current version is disabled: an administrator disabled it (an emergency stop, such as
// after a suspected compromise), and a new, enabled version with a new key would resume signing
// and be written to the trust store.
var ErrCertificateDisabled = errors.New("refused to replace a signing certificate an administrator disabled")

// EnsureSigningCertificate returns the certificate named c.Name if the vault's current version of
// it is what c asks for, so that a second bootstrap run does not add a certificate version, and
// creates the certificate otherwise. A current version that is disabled (or whose enabled
// attribute Key Vault does not report) is an ErrCertificateDisabled error, and so is never
// replaced. An enabled current version is reused only if it is valid now and for at least
// RenewBefore more, its key usage is digitalSignature alone and its extended key usage code
// signing alone, its public key has c's type and size or curve, and its policy (which Key Vault
// follows for every later version) has c's key type and size or curve, a non-exportable key, c's
// issuer and the PEM secret content type. Any other enabled version is replaced by a new version
// created with c's policy; Result.Replaced says why. Subject, validity months and key reuse are
// not compared: they do not weaken the key or the certificate Notation trusts.
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
	cert, diffs, err := judge(got.Certificate, c)
	if err != nil {
		return nil, err
	}
	if len(diffs) > 0 {
		res, err := CreateSigningCertificate(ctx, vaultURL, cred, opts, c)
		if err != nil {
			return nil, fmt.Errorf("replacing certificate %s version %s (%s): %w", c.Name, got.ID.Version(), strings.Join(diffs, "; "), err)
		}
		res.Replaced = diffs
		return res, nil
	}
	return &Result{KeyID: strings.TrimSuffix(vaultURL, "/") + "/keys/" + c.Name + "/" + got.ID.Version(), Certificate: cert}, nil
}

// Plan actions of PlanSigningCertificate.
const (
	PlanCreate     = "create"      // no certificate of the name
	PlanKeep       = "keep"        // the current version is reused
	PlanNewVersion = "new version" // a new version, with a new key, replaces the current one
	PlanRefuse     = "refuse"      // apply would stop: a disabled certificate, or an HSM downgrade
)

// PlanSigningCertificate says, changing nothing, what EnsureSigningCertificate would do with c:
// one of the Plan actions, and for PlanNewVersion what does not match, for PlanRefuse why. It
// reads the certificate only (certificates/read). An error means it could not be read.
func PlanSigningCertificate(ctx context.Context, vaultURL string, cred azcore.TokenCredential, opts *azcertificates.ClientOptions, c SigningCertificate) (action, detail string, err error) {
	client, err := azcertificates.NewClient(vaultURL, cred, opts)
	if err != nil {
		return "", "", err
	}
	got, err := client.GetCertificate(ctx, c.Name, "", nil)
	var re *azcore.ResponseError
	switch {
	case errors.As(err, &re) && re.StatusCode == http.StatusNotFound:
		return PlanCreate, "", nil
	case err != nil:
		return "", "", fmt.Errorf("reading certificate %s: %w", c.Name, err)
	}
	_, diffs, err := judge(got.Certificate, c)
	switch {
	case errors.Is(err, ErrCertificateDisabled), errors.Is(err, ErrKeyDowngrade):
		return PlanRefuse, err.Error(), nil
	case err != nil:
		return "", "", err
	case len(diffs) > 0:
		return PlanNewVersion, strings.Join(diffs, "; "), nil
	}
	return PlanKeep, got.ID.Version(), nil
}

// judge decides what to do with got, the current version of c's certificate: refuse it (an
// error wrapping ErrCertificateDisabled or ErrKeyDowngrade, or one saying it cannot be read),
// replace it (diffs, what does not match), or reuse it (no diffs). cert is its leaf.
func judge(got azcertificates.Certificate, c SigningCertificate) (cert *x509.Certificate, diffs []string, err error) {
	if got.ID == nil {
		return nil, nil, errors.New("certificate without id")
	}
	cert, err = x509.ParseCertificate(got.CER)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate %s: %w", c.Name, err)
	}
	if a := got.Attributes; a == nil || a.Enabled == nil || !*a.Enabled {
		state := "disabled"
		if a == nil || a.Enabled == nil {
			state = "not reported as enabled"
		}
		// A deleted certificate keeps its name while soft-deleted: Key Vault answers a create of
		// the name with 409 Conflict, inner error ObjectIsDeletedButRecoverable, until it is
		// purged or recovered (shown for keys by azure-sdk-for-cpp's live tests and for secrets by
		// the .NET SDK's samples; for certificates UNCONFIRMED, by analogy).
		return nil, nil, fmt.Errorf("certificate %s version %s is %s: %w: apply does not replace a signing certificate an administrator disabled; enable it, or delete it (and purge it), then run apply again",
			c.Name, got.ID.Version(), state, ErrCertificateDisabled)
	}
	if got.Policy != nil && got.Policy.KeyProperties != nil && isHSM(got.Policy.KeyProperties.KeyType) && !isHSM(c.policy().KeyProperties.KeyType) {
		return nil, nil, fmt.Errorf("certificate %s: %w: its key is %s and a new version would have a %s key", c.Name, ErrKeyDowngrade, *got.Policy.KeyProperties.KeyType, *c.policy().KeyProperties.KeyType)
	}
	return cert, mismatches(got, cert, c.policy(), time.Now()), nil
}

// mismatches lists how the enabled certificate version got (whose leaf is cert) falls short of the
// policy want at time now, each entry naming the field with what it has and what is wanted; none
// means it can be reused. A field Key Vault did not report counts as a mismatch. Whether got is
// enabled is not its business: a disabled version is refused, not replaced
// (EnsureSigningCertificate).
func mismatches(got azcertificates.Certificate, cert *x509.Certificate, want *azcertificates.CertificatePolicy, now time.Time) []string {
	var d []string
	add := func(field, have, wanted string) { d = append(d, field+": have "+have+", want "+wanted) }

	switch {
	case now.Before(cert.NotBefore):
		add("not before", cert.NotBefore.UTC().Format(time.RFC3339), "at or before "+now.UTC().Format(time.RFC3339))
	case !now.Before(cert.NotAfter):
		add("not after", cert.NotAfter.UTC().Format(time.RFC3339)+" (expired)", "after "+now.Add(RenewBefore).UTC().Format(time.RFC3339))
	case cert.NotAfter.Sub(now) < RenewBefore:
		add("not after", cert.NotAfter.UTC().Format(time.RFC3339)+" (expiring)", "after "+now.Add(RenewBefore).UTC().Format(time.RFC3339))
	}
	if cert.KeyUsage != x509.KeyUsageDigitalSignature {
		add("certificate key usage", fmt.Sprintf("%#x", int(cert.KeyUsage)), "digitalSignature only")
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}) || len(cert.UnknownExtKeyUsage) > 0 {
		add("certificate extended key usage", fmt.Sprint(cert.ExtKeyUsage, cert.UnknownExtKeyUsage), "code signing only")
	}

	wkp := want.KeyProperties
	switch pub := cert.PublicKey.(type) {
	case *rsa.PublicKey:
		if isEC(*wkp.KeyType) {
			add("certificate public key", fmt.Sprintf("RSA %d", pub.N.BitLen()), "EC "+string(*wkp.Curve))
		} else if pub.N.BitLen() != int(*wkp.KeySize) {
			add("certificate public key", fmt.Sprintf("RSA %d", pub.N.BitLen()), fmt.Sprintf("RSA %d", *wkp.KeySize))
		}
	case *ecdsa.PublicKey:
		name := curveName(pub.Curve)
		if !isEC(*wkp.KeyType) {
			add("certificate public key", "EC "+name, fmt.Sprintf("RSA %d", *wkp.KeySize))
		} else if name != string(*wkp.Curve) {
			add("certificate public key", "EC "+name, "EC "+string(*wkp.Curve))
		}
	default:
		add("certificate public key", fmt.Sprintf("%T", pub), "RSA or EC")
	}

	p := got.Policy
	if p == nil {
		return append(d, "policy: not reported")
	}
	if kp := p.KeyProperties; kp == nil {
		d = append(d, "key properties: not reported")
	} else {
		if kp.KeyType == nil || !strings.EqualFold(string(*kp.KeyType), string(*wkp.KeyType)) {
			add("key type", str(kp.KeyType), string(*wkp.KeyType))
		}
		// Key Vault's default for a certificate's key is exportable: unset counts as exportable.
		if kp.Exportable == nil || *kp.Exportable {
			add("key exportable", "true", "false")
		}
		if isEC(*wkp.KeyType) {
			if kp.Curve == nil || *kp.Curve != *wkp.Curve {
				add("key curve", str(kp.Curve), string(*wkp.Curve))
			}
		} else if kp.KeySize == nil || *kp.KeySize != *wkp.KeySize {
			add("key size", num(kp.KeySize), num(wkp.KeySize))
		}
	}
	if ip := p.IssuerParameters; ip == nil || ip.Name == nil || !strings.EqualFold(*ip.Name, *want.IssuerParameters.Name) {
		var have *string
		if ip != nil {
			have = ip.Name
		}
		add("issuer", str(have), *want.IssuerParameters.Name)
	}
	if sp := p.SecretProperties; sp == nil || sp.ContentType == nil || *sp.ContentType != *want.SecretProperties.ContentType {
		var have *string
		if sp != nil {
			have = sp.ContentType
		}
		add("secret content type", str(have), *want.SecretProperties.ContentType)
	}
	if xp := p.X509CertificateProperties; xp == nil {
		d = append(d, "x509 properties: not reported")
	} else {
		var ku []string
		for _, u := range xp.KeyUsage {
			if u != nil {
				ku = append(ku, string(*u))
			}
		}
		if !slices.Equal(ku, []string{string(azcertificates.KeyUsageTypeDigitalSignature)}) {
			add("policy key usage", fmt.Sprint(ku), "[digitalSignature]")
		}
		var ekus []string
		for _, e := range xp.EnhancedKeyUsage {
			if e != nil {
				ekus = append(ekus, *e)
			}
		}
		if !slices.Equal(ekus, []string{OIDCodeSigning}) {
			add("policy extended key usage", fmt.Sprint(ekus), "["+OIDCodeSigning+"]")
		}
	}
	return d
}

// curveName names c as Key Vault does (P-256, P-384, P-521).
func curveName(c elliptic.Curve) string {
	if c == nil || c.Params() == nil {
		return "unknown"
	}
	return c.Params().Name
}

func str[T ~string](p *T) string {
	if p == nil {
		return "unset"
	}
	return string(*p)
}

func num(p *int32) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}
