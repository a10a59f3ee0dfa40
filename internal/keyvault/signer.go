package keyvault

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/notaryproject/notation-core-go/signature"
)

// ErrSignature means Key Vault returned a signature that does not verify with the certificate's
// key: the chain and the key disagree, and nothing is returned.
var ErrSignature = errors.New("Key Vault signature does not verify with the signing certificate")

// Options configures NewSigner.
type Options struct {
	// Credential authenticates to Key Vault. Required.
	Credential azcore.TokenCredential
	// ClientOptions are passed to the azkeys, azcertificates and azsecrets clients.
	ClientOptions azcore.ClientOptions
	// CACerts, when set, complete the chain: the leaf comes from the Key Vault certificate (or,
	// for a Managed HSM, from CACerts too) and the intermediates and root from here. When empty,
	// the whole chain comes from the certificate's secret.
	CACerts []*x509.Certificate
	// Now is the clock for the certificate validity check; time.Now if nil.
	Now func() time.Time
}

// Signer signs with one Key Vault key. It implements notation-core-go's signature.Signer; Sign
// uses the context given to NewSigner, because that interface carries none.
type Signer struct {
	ctx   context.Context
	id    KeyID
	keys  *azkeys.Client
	chain []*x509.Certificate
	spec  signature.KeySpec
}

// NewSigner connects to the vault of id, reads the key's public key and the certificate chain,
// checks that the leaf holds that key and meets Notation's rules, and returns a Signer. Nothing is
// signed here.
func NewSigner(ctx context.Context, id KeyID, o Options) (*Signer, error) {
	if o.Credential == nil {
		return nil, fmt.Errorf("%w: no credential", ErrInvalidConfig)
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	// Key Vault's challenge names the resource https://vault.azure.net, which a loopback vault (the
	// local stack) cannot match; verification stays on for every other host.
	skipResourceCheck := id.Loopback()
	keys, err := azkeys.NewClient(id.VaultURL, o.Credential, &azkeys.ClientOptions{
		ClientOptions: o.ClientOptions, DisableChallengeResourceVerification: skipResourceCheck,
	})
	if err != nil {
		return nil, fmt.Errorf("Key Vault %s: %w", id.VaultURL, err)
	}
	// The key and the certificate chain are read at the same time: each client answers Key
	// Vault's authentication challenge on its first request, so one after the other would be four
	// round trips to the vault where two suffice.
	type chainResult struct {
		certs []*x509.Certificate
		err   error
	}
	chainCtx, stopChain := context.WithCancel(ctx)
	defer stopChain()
	chainDone := make(chan chainResult, 1)
	go func() {
		certs, err := readCertificates(chainCtx, id, o, skipResourceCheck)
		chainDone <- chainResult{certs, err}
	}()
	kr, err := keys.GetKey(ctx, id.Name, id.Version, nil)
	if err != nil {
		stopChain()
		<-chainDone
		return nil, fmt.Errorf("reading key %s/%s: %w", id.Kind, id.Name, withRBACHint(err, "to read the key"))
	}
	cr := <-chainDone
	if kr.Key == nil {
		return nil, fmt.Errorf("reading key %s: no key in the response", id.Name)
	}
	if err := sameSpelling(id, kr.Key.KID); err != nil {
		return nil, err
	}
	pub, err := publicKey(kr.Key)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", id.Name, err)
	}
	if cr.err != nil {
		return nil, cr.err
	}
	chain, err := BuildChain(pub, cr.certs)
	if err != nil {
		return nil, err
	}
	if err := ValidateChain(chain, now()); err != nil {
		return nil, err
	}
	spec, err := signature.ExtractKeySpec(chain[0])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCertificateChain, err)
	}
	return &Signer{ctx: ctx, id: id, keys: keys, chain: chain, spec: spec}, nil
}

// sameSpelling refuses a key id whose name or version Key Vault writes in another case than id
// does (kid is the key id the vault reports). Key Vault reads names and versions in any case, but
// the binding covers the key id as written: a token made under one spelling is refused by a
// verifier configured with Key Vault's, as bound to another key.
func sameSpelling(id KeyID, kid *azkeys.ID) error {
	if kid == nil {
		return nil
	}
	// azkeys' ID.Name and ID.Version dereference nil on a kid that does not parse: the kid is read
	// as any key id is, and one that is not is refused.
	reported, err := ParseKeyID(string(*kid))
	if err != nil || reported.Kind != KindKeys || reported.Version == "" {
		return fmt.Errorf("%w: Key Vault reported the key id %.200q for %s, which is not a versioned key id", ErrInvalidKeyID, string(*kid), id.Raw)
	}
	name, version := reported.Name, reported.Version
	if name != id.Name || (id.Version != "" && version != id.Version) {
		want := id.VaultURL + "/" + id.Kind + "/" + name
		if id.Version != "" {
			want += "/" + version
		}
		return fmt.Errorf("%w %q: Key Vault writes this key %q, and the token binds the key id as written: give it as Key Vault writes it, to the signer and to verifiers alike", ErrInvalidKeyID, id.Raw, want)
	}
	return nil
}

// readCertificates reads the certificates the chain of id is built from: ca_certs alone for a
// Managed HSM, the Key Vault certificate and ca_certs when ca_certs are given, else the PEM chain
// of the certificate's secret.
func readCertificates(ctx context.Context, id KeyID, o Options, skipResourceCheck bool) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	switch {
	case id.ManagedHSM():
		if len(o.CACerts) == 0 {
			return nil, fmt.Errorf("%w: a Managed HSM holds no certificates: give the whole chain, leaf included, in ca_certs", ErrInvalidConfig)
		}
		certs = o.CACerts
	case len(o.CACerts) > 0:
		cc, err := azcertificates.NewClient(id.VaultURL, o.Credential, &azcertificates.ClientOptions{
			ClientOptions: o.ClientOptions, DisableChallengeResourceVerification: skipResourceCheck,
		})
		if err != nil {
			return nil, err
		}
		cr, err := cc.GetCertificate(ctx, id.Name, id.Version, nil)
		if err != nil {
			return nil, fmt.Errorf("reading certificate %s: %w", id.Name, withRBACHint(err, "to read the certificate"))
		}
		leaf, err := x509.ParseCertificate(cr.CER)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %s: %w", ErrCertificateChain, id.Name, err)
		}
		certs = append([]*x509.Certificate{leaf}, o.CACerts...)
	default:
		sc, err := azsecrets.NewClient(id.VaultURL, o.Credential, &azsecrets.ClientOptions{
			ClientOptions: o.ClientOptions, DisableChallengeResourceVerification: skipResourceCheck,
		})
		if err != nil {
			return nil, err
		}
		pemType := azsecrets.ContentTypePEM
		sr, err := sc.GetSecret(ctx, id.Name, id.Version, &azsecrets.GetSecretOptions{OutContentType: &pemType})
		if err != nil {
			return nil, fmt.Errorf("reading the certificate chain from secret %s (grant secrets/get, or set ca_certs): %w", id.Name, withRBACHint(err, "to read the certificate's secret"))
		}
		if sr.Value == nil {
			return nil, fmt.Errorf("%w: secret %s is empty", ErrCertificateChain, id.Name)
		}
		if sr.ContentType != nil && !strings.EqualFold(*sr.ContentType, string(azsecrets.ContentTypePEM)) {
			return nil, fmt.Errorf("%w: secret %s is %q, not PEM", ErrCertificateChain, id.Name, *sr.ContentType)
		}
		if certs, err = ParsePEMCertificates([]byte(*sr.Value)); err != nil {
			return nil, fmt.Errorf("secret %s: %w", id.Name, err)
		}
	}
	return certs, nil
}

// KeySpec implements signature.Signer.
func (s *Signer) KeySpec() (signature.KeySpec, error) { return s.spec, nil }

// CertificateChain returns the chain, leaf first.
func (s *Signer) CertificateChain() []*x509.Certificate { return s.chain }

// Sign implements signature.Signer: it hashes payload with the hash of the key's algorithm, has
// Key Vault sign the digest, checks the signature against the leaf, and returns it with the chain.
func (s *Signer) Sign(payload []byte) ([]byte, []*x509.Certificate, error) {
	alg := s.spec.SignatureAlgorithm()
	kvAlg, err := vaultAlgorithm(alg)
	if err != nil {
		return nil, nil, err
	}
	h := alg.Hash().New()
	h.Write(payload)
	digest := h.Sum(nil)
	rsp, err := s.keys.Sign(s.ctx, s.id.Name, s.id.Version, azkeys.SignParameters{Algorithm: &kvAlg, Value: digest}, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("Key Vault sign with %s: %w", s.id.Name, withRBACHint(err, "to sign"))
	}
	// The signature's kid has the name and version of the key opened, spelt as NewSigner checked
	// it (sameSpelling, which also reads a malformed kid without crashing). The vault's host is
	// not compared (a port or a host in another case would differ in spelling only): what proves
	// the key is the check of the signature against the leaf below.
	if err := sameSpelling(s.id, rsp.KID); err != nil {
		return nil, nil, fmt.Errorf("Key Vault signed with another key than the one opened: %w", err)
	}
	if err := verify(s.chain[0].PublicKey, alg.Hash(), digest, rsp.Result); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	return rsp.Result, s.chain, nil
}

// vaultAlgorithm maps Notation's algorithms to Key Vault's (notation-azure-kv keySpecToAlg).
func vaultAlgorithm(alg signature.Algorithm) (azkeys.SignatureAlgorithm, error) {
	switch alg {
	case signature.AlgorithmPS256:
		return azkeys.SignatureAlgorithmPS256, nil
	case signature.AlgorithmPS384:
		return azkeys.SignatureAlgorithmPS384, nil
	case signature.AlgorithmPS512:
		return azkeys.SignatureAlgorithmPS512, nil
	case signature.AlgorithmES256:
		return azkeys.SignatureAlgorithmES256, nil
	case signature.AlgorithmES384:
		return azkeys.SignatureAlgorithmES384, nil
	case signature.AlgorithmES512:
		return azkeys.SignatureAlgorithmES512, nil
	}
	return "", fmt.Errorf("%w: unsupported algorithm %v", ErrInvalidConfig, alg)
}

// verify checks sig over digest the way Notation verifies it: RSASSA-PSS with the salt length
// equal to the hash, or ECDSA with raw r||s (JWA).
func verify(pub crypto.PublicKey, h crypto.Hash, digest, sig []byte) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return rsa.VerifyPSS(k, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h})
	case *ecdsa.PublicKey:
		n := (k.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*n {
			return fmt.Errorf("ECDSA signature of %d bytes, want r||s of %d", len(sig), 2*n)
		}
		r, s := new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])
		if !ecdsa.Verify(k, digest, r, s) {
			return errors.New("ECDSA verification failed")
		}
		return nil
	}
	return fmt.Errorf("unsupported key type %T", pub)
}

// publicKey converts Key Vault's JSON web key to a Go public key.
func publicKey(k *azkeys.JSONWebKey) (crypto.PublicKey, error) {
	if k.Kty == nil {
		return nil, errors.New("key type missing")
	}
	switch *k.Kty {
	case azkeys.KeyTypeRSA, azkeys.KeyTypeRSAHSM:
		if len(k.N) == 0 || len(k.E) == 0 || len(k.E) > 4 {
			return nil, errors.New("RSA key without a valid modulus or exponent")
		}
		e := 0
		for _, b := range k.E {
			e = e<<8 | int(b)
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(k.N), E: e}, nil
	case azkeys.KeyTypeEC, azkeys.KeyTypeECHSM:
		if k.Crv == nil {
			return nil, errors.New("EC key without a curve")
		}
		var curve elliptic.Curve
		switch *k.Crv {
		case azkeys.CurveNameP256:
			curve = elliptic.P256()
		case azkeys.CurveNameP384:
			curve = elliptic.P384()
		case azkeys.CurveNameP521:
			curve = elliptic.P521()
		default:
			return nil, fmt.Errorf("unsupported curve %s", *k.Crv)
		}
		// RFC 7518 §6.2.1.2: x and y are the full field size; shorter ones are left-padded, as
		// big-endian integers allow, longer ones refused. The parser checks the point is on the
		// curve.
		size := (curve.Params().BitSize + 7) / 8
		if len(k.X) == 0 || len(k.Y) == 0 || len(k.X) > size || len(k.Y) > size {
			return nil, fmt.Errorf("EC key: coordinates of %d and %d bytes for %s", len(k.X), len(k.Y), *k.Crv)
		}
		point := make([]byte, 1+2*size)
		point[0] = 4 // uncompressed
		copy(point[1+size-len(k.X):1+size], k.X)
		copy(point[1+2*size-len(k.Y):], k.Y)
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return nil, fmt.Errorf("EC key: %w", err)
		}
		return pub, nil
	}
	return nil, fmt.Errorf("unsupported key type %s", *k.Kty)
}
