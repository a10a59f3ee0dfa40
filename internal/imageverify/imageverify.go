// Package imageverify decides, before deployment, whether an image was signed from an attested
// machine: a Notation signature that verifies under the trust policy, whose signed attributes name
// an MAA token; that token attached as a referrer; the token valid at the signing time, from the
// pinned MAA instance, bound to this image digest and the expected key, not older than the
// allowed age at signing, and meeting the claim rules (DESIGN.md, "Binding").
//
// It is shared by `oras-attest verify` and the Ratify verifier. With several signatures or tokens
// it passes if one signature and its matching token pass every check.
package imageverify

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/notaryproject/notation-core-go/signature"
	"github.com/notaryproject/notation-core-go/signature/cose" // NamedTokens parses both envelope types
	"github.com/notaryproject/notation-core-go/signature/jws"
	"github.com/notaryproject/notation-go"
	nregistry "github.com/notaryproject/notation-go/registry"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	"github.com/notaryproject/tspclient-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	gocose "github.com/veraison/go-cose"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/referrer"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// Check names, in the order they run.
const (
	CheckSignature = "signature"       // a Notation signature verifies under the trust policy
	CheckAttribute = "token-attribute" // the signature's signed attributes name a token and issuer
	CheckReferrer  = "token-referrer"  // a token referrer with that SHA-256 exists
	CheckIssuer    = "issuer"          // the signed issuer is the pinned MAA instance
	CheckToken     = "token"           // the token verifies (keys, alg, iss, lifetime at signing)
	CheckAge       = "token-age"       // the token was at most MaxTokenAge old at signing
	CheckBinding   = "binding"         // the token's nonce is the binding of this digest and key
	CheckRules     = "rules"           // the claim rules pass
)

// Checks lists the check names in order.
var Checks = []string{CheckSignature, CheckAttribute, CheckReferrer, CheckIssuer, CheckToken, CheckAge, CheckBinding, CheckRules}

// DefaultMaxSignatures bounds the signatures examined.
const DefaultMaxSignatures = 16

// Options configures Verify.
type Options struct {
	// Notation verifies signatures (trust policy and trust store). Required.
	Notation notation.Verifier
	// AttestationURL is the MAA instance tokens must come from. Required.
	AttestationURL string
	// TokenKeys are the instance's token signing keys (its /certs, or a pinned JWKS). Required.
	TokenKeys maa.KeySet
	// KeyID is the signing key id the tokens must be bound to (the Key Vault key URL). Required:
	// it is the verifier's expectation, never taken from the signature.
	KeyID string
	// MaxTokenAge is the largest gap allowed between the token's iat and the signing time.
	MaxTokenAge time.Duration
	// Rules are the claim rules; required (use rules.Baseline()).
	Rules *rules.Set
	// MaxSignatures bounds the signatures examined; DefaultMaxSignatures if zero.
	MaxSignatures int
	// SigningCertSHA256, when not empty, pins the signing certificate: the leaf of the
	// signature's chain must have one of these SHA-256 fingerprints (hex of the DER; what
	// attest-bootstrap apply prints as certificateThumbprintSha256). KeyID binds the token to the
	// key, but nothing in a Notation signature names its Key Vault key: without a pin, any key
	// whose certificate the trust policy accepts (a CA in the trust store, identities "*") signs
	// acceptably.
	SigningCertSHA256 []string
}

// ParseCertSHA256 checks and normalises a certificate fingerprint for Options.SigningCertSHA256:
// 64 hex digits, colons allowed (as openssl prints them), any case.
func ParseCertSHA256(s string) (string, error) {
	h := strings.ToLower(strings.ReplaceAll(s, ":", ""))
	if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("signing certificate fingerprint %q: want the 64 hex digits of a SHA-256", s)
	}
	return h, nil
}

// ParseCertPins is ParseCertSHA256 of each of fps, in order; the first bad one is the error.
func ParseCertPins(fps []string) ([]string, error) {
	var pins []string
	for _, fp := range fps {
		h, err := ParseCertSHA256(fp)
		if err != nil {
			return nil, err
		}
		pins = append(pins, h)
	}
	return pins, nil
}

// Check is one check's outcome.
type Check struct {
	Name   string `json:"check"`
	Passed bool   `json:"passed"`
	Detail string `json:"detail,omitempty"`
}

// Result is the outcome for one image.
type Result struct {
	Subject string `json:"subject"`
	Passed  bool   `json:"passed"`
	// Checks are those of the passing candidate, or of the candidate that got furthest.
	Checks []Check `json:"checks"`
	// Signature and TokenSHA256 identify the candidate the checks describe.
	Signature   string `json:"signature,omitempty"`
	TokenSHA256 string `json:"tokenSHA256,omitempty"`
	// TokenReferrer is the digest of the token referrer manifest the checks used.
	TokenReferrer string `json:"tokenReferrer,omitempty"`
	// SigningTime is the signature's signing time.
	SigningTime *time.Time `json:"signingTime,omitempty"`
	// SignaturesNotExamined counts the attached signatures beyond MaxSignatures that a refusal
	// did not examine (at least 1 when the listing itself stopped early); the last check's
	// detail says so too.
	SignaturesNotExamined int `json:"signaturesNotExamined,omitempty"`
}

// FailedCheck returns the name of the first failed check, or "".
func (r *Result) FailedCheck() string { return r.failed().Name }

// FailedDetail returns what the first failed check found, or "".
func (r *Result) FailedDetail() string { return r.failed().Detail }

func (r *Result) failed() Check {
	for _, c := range r.Checks {
		if !c.Passed {
			return c
		}
	}
	return Check{}
}

// Repository is what Verify reads from the registry: content, the token referrers, and the
// Notation signatures listed. A signature is read only through readSignature, with its bounds and
// checks, so the interface offers no other way to fetch one.
type Repository interface {
	referrer.Target
	ListSignatures(ctx context.Context, desc ocispec.Descriptor, fn func([]ocispec.Descriptor) error) error
}

// Verify examines subject (reference is its full name@digest, used by the trust policy's
// registry scopes). A refusal is a Result with Passed false: the image is not proven to be signed
// from an attested machine. An error means that what decides could not be read, so that a
// refusal would blame the image for trouble elsewhere: the registry (listing the signatures or
// the token referrers, fetching the signature that got furthest, or reading a token referrer
// when the token looked for is not among those read), MAA's token signing keys (its /certs),
// or the Notation configuration (no trust policy applies to reference, or a trust store cannot be
// read).
func Verify(ctx context.Context, repo Repository, reference string, subject ocispec.Descriptor, o Options) (*Result, error) {
	if o.Notation == nil || o.TokenKeys == nil || o.Rules == nil || o.AttestationURL == "" || o.KeyID == "" || o.MaxTokenAge <= 0 {
		return nil, errors.New("imageverify: Notation, AttestationURL, TokenKeys, KeyID, MaxTokenAge and Rules are required")
	}
	if o.MaxTokenAge > maa.MaxSigningAge {
		return nil, fmt.Errorf("imageverify: MaxTokenAge %s is above %s, the oldest token the plugin signs with", o.MaxTokenAge, maa.MaxSigningAge)
	}
	maxSigs := o.MaxSignatures
	if maxSigs <= 0 {
		maxSigs = DefaultMaxSignatures
	}
	// The instance must be a bare https URL (the token verifier's rule): a configuration error, not
	// a refusal of this image, and the URL is then safe to show in results.
	if err := maa.CheckInstance(o.AttestationURL); err != nil {
		return nil, fmt.Errorf("imageverify: %w", err)
	}
	for _, fp := range o.SigningCertSHA256 {
		if n, err := ParseCertSHA256(fp); err != nil || n != fp {
			return nil, fmt.Errorf("imageverify: SigningCertSHA256 %q is not 64 lowercase hex digits", fp)
		}
	}
	want, err := binding.Compute(subject.Digest.String(), o.KeyID)
	if err != nil {
		return nil, err
	}
	// A key set that fetches (the instance's /certs) starts now, so that the TLS handshake with
	// MAA and the fetch overlap the registry reads instead of following them. Keys waits for it.
	defer maa.StartPrefetch(ctx, o.TokenKeys)()
	// The token referrers are listed while the signatures are listed, fetched and verified: on a
	// remote registry these are round trips of their own. Only the referrer of the token a
	// signature names is read (referrer.Index.Find), so that the time does not grow with the
	// number of tokens attached to the image.
	listCtx, stopList := context.WithCancel(ctx)
	listed := make(chan struct{})
	var ix *referrer.Index
	go func() { defer close(listed); ix = referrer.NewIndex(listCtx, repo, subject) }()
	defer func() { stopList(); <-listed }()
	tokenIndex := func() *referrer.Index { <-listed; return ix }

	// Whoever can push to the repository can attach any number of signatures, so only MaxSignatures are
	// examined. The listing itself is cheap and goes further: with pinned certificates, the
	// signatures whose manifests name a pinned certificate are examined first, so that signatures
	// attached to push the genuine one out of reach must at least copy its annotation.
	sigs, listedMore, err := listSignatures(ctx, repo, subject)
	if err != nil {
		return nil, err
	}
	if len(o.SigningCertSHA256) > 0 {
		sigs = firstThose(sigs, func(d ocispec.Descriptor) bool { return namesPinnedCert(d, o.SigningCertSHA256) })
	}
	skipped := 0
	if len(sigs) > maxSigs {
		skipped, sigs = len(sigs)-maxSigs, sigs[:maxSigs]
	}

	res := &Result{Subject: subject.Digest.String()}
	best := -1
	var bestReadErr error
	// Where each candidate stopped, for a refusal to name the others' too: the one reported got
	// furthest, but the one the reader meant may be another (signed with the key id verified
	// against, its token not attached yet).
	var stops []string
	bestStop := -1
	record := func(c candidate) bool {
		n, stop := c.passedCount(), -1
		if !c.passed() && len(c.checks) > 0 {
			stops = append(stops, fmt.Sprintf("%s (signature %.19s)", c.checks[len(c.checks)-1].Name, c.signature))
			stop = len(stops) - 1
		}
		switch {
		case n > best:
			best, bestReadErr, bestStop = n, c.readErr, stop
			res.Checks, res.Signature, res.TokenSHA256, res.SigningTime, res.TokenReferrer = c.checks, c.signature, c.tokenSHA, c.signingTime, c.referrer
		case n == best && bestReadErr == nil:
			// A candidate as far along that could not be read may be the genuine one: the
			// outcome must not depend on the order the registry lists them in.
			bestReadErr = c.readErr
		}
		return c.passed()
	}
	if len(sigs) == 0 {
		record(candidate{checks: []Check{{Name: CheckSignature, Detail: "no Notation signature is attached"}}})
		return res, nil
	}
	for _, sd := range sigs {
		for _, c := range evaluate(ctx, repo, reference, subject, sd, tokenIndex, want, o) {
			if record(c) {
				res.Passed = true
				return res, nil
			}
		}
	}
	// The candidate that got furthest stopped because the registry, MAA's keys or the Notation
	// configuration could not be read: that is not a judgement of the image.
	if bestReadErr != nil {
		return nil, bestReadErr
	}
	if skipped > 0 || listedMore {
		res.SignaturesNotExamined = max(skipped, 1)
		more := fmt.Sprintf("%d more are", skipped)
		if listedMore {
			more = fmt.Sprintf("more than %d more are", skipped)
		}
		res.Checks[len(res.Checks)-1].Detail += fmt.Sprintf("; only %d of the image's signatures were examined and %s attached: whoever can push to the repository may have attached signatures that hide the genuine one", len(sigs), more)
	}
	// After the note on signatures not examined, which a consumer that shortens the detail (the
	// Ratify verifier's message) must keep.
	others := slices.Clone(stops)
	if bestStop >= 0 {
		others = slices.Delete(others, bestStop, bestStop+1)
	}
	if len(others) > 0 {
		const shown = 3
		more := ""
		if len(others) > shown {
			more, others = fmt.Sprintf(" and %d more", len(others)-shown), others[:shown]
		}
		res.Checks[len(res.Checks)-1].Detail += fmt.Sprintf("; the image's other signatures stopped at: %s%s", strings.Join(others, ", "), more)
	}
	return res, nil
}

// TokenNames is what the signatures of an image say about tokens (NamedTokens): which tokens they
// name, which signatures the registry did not serve, and which it served that are not usable
// signatures of the image.
type TokenNames struct {
	named map[string]bool
	// unread are the signatures the registry did not serve, each a *referrer.ReadError.
	unread []error
	// ignored are the signatures read that are not usable signatures of the image.
	ignored []error
	// read counts the signatures listed, each read or tried.
	read int
	// truncated is set when more signatures are attached than were read.
	truncated bool
}

// Names reports whether a signature of the image names the token whose hex SHA-256 (lower case)
// is sha. When none of those read does and some could not be read, it returns an error that
// wraps the first one's *referrer.ReadError: the token may be named by a signature the registry
// did not serve, so false then does not mean that no signature names it.
func (n *TokenNames) Names(sha string) (bool, error) {
	if n.named[sha] {
		return true, nil
	}
	if len(n.unread) > 0 {
		return false, fmt.Errorf("token %s: no signature read names it, and %d of the %d signatures listed could not be read: %w", sha, len(n.unread), n.read, n.unread[0])
	}
	return false, nil
}

// Ignored returns, for each signature the registry served that is not a usable signature of the
// image, an error naming it and why: a manifest that is not a Notary signature's (not exactly one
// layer, too large, an envelope of a media type Notation does not know), one listed and no longer
// in the registry, an envelope that does not parse or is not intact, or one that signs another
// image.
func (n *TokenNames) Ignored() []error { return n.ignored }

// Truncated reports whether more signatures are attached than were read (maxListedSignatures): a
// token none of those read names may be named by one beyond.
func (n *TokenNames) Truncated() bool { return n.truncated }

// NamedTokens reads the signatures of subject and returns the tokens they name in their signed
// attributes (by hex SHA-256). A signature counts if its envelope is intact (signed by its own
// leaf certificate) and its Notary payload's targetArtifact is subject (its digest); whether the
// certificate is trusted is not judged here, nor anything else Verify checks. `oras-attest
// attach` uses it to publish only the tokens some signature of the image refers to.
//
// Whoever can push to the repository can attach anything of the signature artifact type, and a
// registry without the Referrers API can list a manifest it no longer holds: such a signature is
// skipped (TokenNames.Ignored), so that it cannot stop the genuine one from counting. A signature
// the registry did not serve (a transport error, a timeout, an HTTP error other than 404, content
// that does not match its descriptor) is not skipped silently: TokenNames.Names reports it for a
// token no other signature names, the approach of referrer.Index.Find. The error is the listing's
// only. At most maxListedSignatures are read.
func NamedTokens(ctx context.Context, repo Repository, subject ocispec.Descriptor) (*TokenNames, error) {
	sigs, more, err := listSignatures(ctx, repo, subject)
	if err != nil {
		return nil, err
	}
	n := &TokenNames{named: map[string]bool{}, read: len(sigs), truncated: more}
	for _, sd := range sigs {
		sha, err := namedToken(ctx, repo, subject, sd)
		var re *referrer.ReadError
		switch {
		case errors.As(err, &re):
			n.unread = append(n.unread, err)
		case err != nil:
			n.ignored = append(n.ignored, fmt.Errorf("signature %s: %w", sd.Digest, err))
		case sha != "":
			n.named[sha] = true
		}
	}
	return n, nil
}

// namedToken reads the signature sd of subject and returns the token SHA-256 its signed
// attributes name, "" for none. A *referrer.ReadError is the registry's failure; any other error
// is a signature that is not usable.
func namedToken(ctx context.Context, repo Repository, subject, sd ocispec.Descriptor) (string, error) {
	blob, mediaType, err := readSignature(ctx, repo, sd)
	if err != nil {
		return "", err
	}
	env, err := signature.ParseEnvelope(mediaType, blob)
	if err != nil {
		return "", fmt.Errorf("envelope does not parse: %w", err)
	}
	signed, err := env.Verify()
	if err != nil {
		return "", fmt.Errorf("envelope is not intact: %w", err)
	}
	var p struct {
		TargetArtifact struct {
			Digest string `json:"digest"`
		} `json:"targetArtifact"`
	}
	if err := json.Unmarshal(signed.Payload.Content, &p); err != nil {
		return "", fmt.Errorf("payload is not a Notary payload: %w", err)
	}
	if p.TargetArtifact.Digest != subject.Digest.String() {
		return "", fmt.Errorf("signs %.80q, not %s", p.TargetArtifact.Digest, subject.Digest)
	}
	sha, _ := tokenAttrs(signed.SignerInfo.SignedAttributes)
	return sha, nil
}

// Limits of a signature manifest and its envelope, those of notation-go v1.3.2
// (registry/repository.go maxManifestSizeLimit and maxBlobSizeLimit), so that what Verify reads
// NamedTokens reads too.
const (
	maxSignatureManifest = 4 << 20
	maxSignatureEnvelope = 32 << 20
)

// mediaTypeArtifactManifest is the OCI artifact manifest of image-spec v1.1 release candidates,
// which notation-go still reads signatures from (its registry/internal/artifactspec).
const mediaTypeArtifactManifest = "application/vnd.oci.artifact.manifest.v1+json"

// readSignature returns the envelope of the signature manifest sd and the envelope's media type.
// It reads what notation-go's FetchSignatureBlob (v1.3.2) reads, an image manifest (or an
// artifact manifest) with exactly one layer (blob), but tells the registry's failures from
// content that is not a signature: a fetch that fails, but with 404, is a *referrer.ReadError;
// anything else wrong, a 404 included (a listed manifest the registry no longer holds, or an
// envelope it never held), is a plain error. The envelope's media type must be one Notation
// parses before it is fetched.
func readSignature(ctx context.Context, repo Repository, sd ocispec.Descriptor) ([]byte, string, error) {
	if (sd.MediaType != ocispec.MediaTypeImageManifest && sd.MediaType != mediaTypeArtifactManifest) || sd.Size <= 0 || sd.Size > maxSignatureManifest {
		return nil, "", fmt.Errorf("listed as a manifest of media type %.80q and %d bytes, not a signature manifest", sd.MediaType, sd.Size)
	}
	b, err := content.FetchAll(ctx, repo, sd)
	if errors.Is(err, errdef.ErrNotFound) {
		return nil, "", fmt.Errorf("listed, but the registry does not hold the manifest (a stale entry of the referrers index): %w", err)
	}
	if err != nil {
		return nil, "", &referrer.ReadError{What: "fetching signature " + sd.Digest.String() + ": its manifest", Err: err}
	}
	var m struct {
		Layers []ocispec.Descriptor `json:"layers"` // image manifest
		Blobs  []ocispec.Descriptor `json:"blobs"`  // artifact manifest
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, "", fmt.Errorf("manifest does not parse: %w", err)
	}
	layers := m.Layers
	if sd.MediaType == mediaTypeArtifactManifest {
		layers = m.Blobs
	}
	if len(layers) != 1 {
		return nil, "", fmt.Errorf("manifest has %d layers, not the one signature envelope", len(layers))
	}
	l := layers[0]
	if !slices.Contains(signature.RegisteredEnvelopeTypes(), l.MediaType) || l.Size <= 0 || l.Size > maxSignatureEnvelope {
		return nil, "", fmt.Errorf("layer of media type %.80q and %d bytes is not a signature envelope", l.MediaType, l.Size)
	}
	blob, err := content.FetchAll(ctx, repo, l)
	if errors.Is(err, errdef.ErrNotFound) {
		return nil, "", fmt.Errorf("the registry does not hold the envelope %s: %w", l.Digest, err)
	}
	if err != nil {
		return nil, "", &referrer.ReadError{What: "fetching signature " + sd.Digest.String() + ": its envelope " + l.Digest.String(), Err: err}
	}
	if err := checkEnvelopeKeys(blob, l.MediaType); err != nil {
		return nil, "", err
	}
	return blob, l.MediaType, nil
}

// Bounds of the certificates checkEnvelopeKeys lets through.
const (
	// maxChainCertificates bounds a signature's certificate chain and the certificates of its
	// timestamp countersignature (a chain of a leaf, an intermediate or two and a root).
	maxChainCertificates = 10
	// maxRSAKeyBits bounds the RSA keys of the certificates above the signing one (a CA's key
	// may be longer than Notation's key specs); RSA verification costs the square of the size.
	maxRSAKeyBits = 8192
)

// checkEnvelopeKeys refuses, before any signature in it is checked, an envelope whose
// certificates hold keys Notation would not sign with, or more certificates than a chain has.
// notation-core-go checks a JWS with its first certificate's key, and the chain, certificate by
// certificate, with each issuer's key (in Verify, and already in Content), and notation-go a
// timestamp countersignature with the TSA's, before any of them judges the key; crypto/rsa
// verifies with a key of any size, at a cost that grows with its square, and no deadline
// interrupts it. Whoever can push could otherwise attach a signature whose 1M-bit certificate key
// takes 15 s of CPU to check (in a 32 MiB envelope, hours). The signing certificate must have one
// of Notation's key specs (RSA 2048, 3072 or 4096 bits, ECDSA P-256, P-384 or P-521), as
// notation-core-go requires of the keys it signs with; the other certificates an RSA key of at
// most maxRSAKeyBits or an ECDSA key. The certificates are read as notation-core-go reads them
// (envelopeCertificates), with none of its checks.
func checkEnvelopeKeys(blob []byte, mediaType string) error {
	chainDER, ts, err := envelopeCertificates(blob, mediaType)
	if err != nil {
		return fmt.Errorf("envelope does not parse: %w", err)
	}
	if len(chainDER) == 0 || len(chainDER) > maxChainCertificates {
		return fmt.Errorf("signature with %d certificates: want 1 to %d", len(chainDER), maxChainCertificates)
	}
	chain := make([]*x509.Certificate, len(chainDER))
	for i, der := range chainDER {
		if chain[i], err = x509.ParseCertificate(der); err != nil {
			return fmt.Errorf("certificate %d of the chain: %w", i, err)
		}
	}
	if _, err := signature.ExtractKeySpec(chain[0]); err != nil {
		return fmt.Errorf("signing certificate %q: %w", chain[0].Subject, err)
	}
	if err := boundedKeys("certificate chain", chain[1:]); err != nil {
		return err
	}
	if len(ts) == 0 {
		return nil
	}
	token, err := tspclient.ParseSignedToken(ts)
	if err != nil {
		return fmt.Errorf("timestamp countersignature does not parse: %w", err)
	}
	if len(token.Certificates) > maxChainCertificates {
		return fmt.Errorf("timestamp countersignature with %d certificates: want at most %d", len(token.Certificates), maxChainCertificates)
	}
	return boundedKeys("timestamp countersignature", token.Certificates)
}

// envelopeCertificates returns the certificate chain (DER) and the timestamp countersignature of
// a JWS or COSE Notation envelope, decoded as notation-core-go v1.3 decodes them (jws.ParseEnvelope
// with encoding/json into its header's fields, cose.ParseEnvelope with go-cose and the same
// unprotected header labels), but without its checks.
func envelopeCertificates(blob []byte, mediaType string) (chain [][]byte, timestamp []byte, err error) {
	switch mediaType {
	case jws.MediaTypeEnvelope:
		var e struct {
			Header struct {
				TimestampSignature []byte   `json:"io.cncf.notary.timestampSignature,omitempty"`
				CertChain          [][]byte `json:"x5c"`
			} `json:"header"`
		}
		if err := json.Unmarshal(blob, &e); err != nil {
			return nil, nil, err
		}
		return e.Header.CertChain, e.Header.TimestampSignature, nil
	case cose.MediaTypeEnvelope:
		var msg gocose.Sign1Message
		if err := msg.UnmarshalCBOR(blob); err != nil {
			return nil, nil, err
		}
		certs, _ := msg.Headers.Unprotected[gocose.HeaderLabelX5Chain].([]any)
		for _, c := range certs {
			der, ok := c.([]byte)
			if !ok {
				return nil, nil, errors.New("x5chain holds something other than certificates")
			}
			chain = append(chain, der)
		}
		timestamp, _ = msg.Headers.Unprotected[coseTimestampLabel].([]byte)
		return chain, timestamp, nil
	}
	return nil, nil, fmt.Errorf("media type %.80q is not a Notation envelope", mediaType)
}

// coseTimestampLabel is the COSE unprotected header of the timestamp countersignature
// (notation-core-go's signature/cose headerLabelTimestampSignature).
const coseTimestampLabel = "io.cncf.notary.timestampSignature"

// boundedKeys refuses a certificate of certs, named by where, whose key is neither an RSA key of
// at most maxRSAKeyBits nor an ECDSA key.
func boundedKeys(where string, certs []*x509.Certificate) error {
	for _, cert := range certs {
		switch k := cert.PublicKey.(type) {
		case *rsa.PublicKey:
			if n := k.N.BitLen(); n > maxRSAKeyBits {
				return fmt.Errorf("%s: certificate %q has an RSA key of %d bits, more than %d", where, cert.Subject, n, maxRSAKeyBits)
			}
		case *ecdsa.PublicKey:
		default:
			return fmt.Errorf("%s: certificate %q has a %T key, neither RSA nor ECDSA", where, cert.Subject, cert.PublicKey)
		}
	}
	return nil
}

// listSignatures lists at most maxListedSignatures signatures of subject, in the registry's
// order; more reports that the registry has more.
func listSignatures(ctx context.Context, repo Repository, subject ocispec.Descriptor) (sigs []ocispec.Descriptor, more bool, err error) {
	err = repo.ListSignatures(ctx, subject, func(page []ocispec.Descriptor) error {
		for _, d := range page {
			sigs = append(sigs, referrer.Trim(d, thumbprintAnnotation))
		}
		if len(sigs) > maxListedSignatures {
			sigs, more = sigs[:maxListedSignatures], true
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, false, fmt.Errorf("listing signatures of %s: %w", subject.Digest, err)
	}
	return sigs, more, nil
}

// maxListedSignatures bounds the signatures listed, of which MaxSignatures are examined.
const maxListedSignatures = 256

// thumbprintAnnotation is the annotation of a Notation signature manifest that lists the
// SHA-256 thumbprints of its certificate chain, leaf first, as a JSON array of hex strings
// (notation-go v1.3.2 writes it in generateAnnotations; internal/envelope names it). It is the
// pusher's word, used only to order what is examined.
const thumbprintAnnotation = "io.cncf.notary.x509chain.thumbprint#S256"

// namesPinnedCert reports whether the signature manifest d says its leaf certificate is one of
// pins.
func namesPinnedCert(d ocispec.Descriptor, pins []string) bool {
	var chain []string
	if err := json.Unmarshal([]byte(d.Annotations[thumbprintAnnotation]), &chain); err != nil || len(chain) == 0 {
		return false
	}
	return slices.Contains(pins, strings.ToLower(chain[0]))
}

// firstThose returns ds with those for which pick is true first, each part in its order.
func firstThose(ds []ocispec.Descriptor, pick func(ocispec.Descriptor) bool) []ocispec.Descriptor {
	var picked, rest []ocispec.Descriptor
	for _, d := range ds {
		if pick(d) {
			picked = append(picked, d)
		} else {
			rest = append(rest, d)
		}
	}
	return append(picked, rest...)
}

// tokenAttrs reads the token's SHA-256 (lower case) and issuer from a signature's signed
// attributes, "" for one that is missing.
func tokenAttrs(sa signature.SignedAttributes) (tokenSHA, issuer string) {
	for _, a := range sa.ExtendedAttributes {
		k, _ := a.Key.(string)
		v, _ := a.Value.(string)
		switch k {
		case binding.AttrTokenSHA256:
			tokenSHA = strings.ToLower(v)
		case binding.AttrIssuer:
			issuer = v
		}
	}
	return tokenSHA, issuer
}

var errStop = errors.New("enough signatures")

type candidate struct {
	checks      []Check
	signature   string
	tokenSHA    string
	referrer    string
	signingTime *time.Time
	// readErr is why the checks stopped without judging the image, when they did: the registry,
	// MAA's signing keys or the Notation configuration could not be read.
	readErr error
}

func (c candidate) passedCount() int {
	n := 0
	for _, ch := range c.checks {
		if ch.Passed {
			n++
		}
	}
	return n
}

func (c candidate) passed() bool {
	return len(c.checks) == len(Checks) && c.passedCount() == len(Checks)
}

func (c *candidate) ok(name, detail string) { c.checks = append(c.checks, Check{name, true, detail}) }
func (c *candidate) fail(name, detail string) []candidate {
	c.checks = append(c.checks, Check{name, false, detail})
	return []candidate{*c}
}

// evaluate runs the checks for one signature against each token it could match.
// tokenIndex waits for the listing of the token referrers of subject.
func evaluate(ctx context.Context, repo Repository, reference string, subject, sd ocispec.Descriptor, tokenIndex func() *referrer.Index, want string, o Options) []candidate {
	c := candidate{signature: sd.Digest.String()}
	// Read as NamedTokens reads: a manifest that is not a signature's (anyone who can push can
	// attach one) is a signature that fails, not an image that cannot be checked; only the
	// registry's failure to serve it is (a *referrer.ReadError).
	blob, mediaType, err := readSignature(ctx, repo, sd)
	var re *referrer.ReadError
	switch {
	case errors.As(err, &re): // it names the signature and what was fetched
		c.readErr = err
		return c.fail(CheckSignature, c.readErr.Error())
	case err != nil:
		return c.fail(CheckSignature, fmt.Sprintf("signature %s is not a usable Notation signature: %v", sd.Digest, err))
	}
	outcome, err := o.Notation.Verify(ctx, subject, blob, notation.VerifierVerifyOptions{ArtifactReference: reference, SignatureMediaType: mediaType})
	if err != nil {
		if notationConfigError(err) {
			c.readErr = fmt.Errorf("verifying signature %s: the Notation trust policy or trust store cannot be used: %w", sd.Digest, err)
			return c.fail(CheckSignature, c.readErr.Error())
		}
		return c.fail(CheckSignature, err.Error())
	}
	if outcome == nil || outcome.EnvelopeContent == nil {
		return c.fail(CheckSignature, "the trust policy skips verification for this image; attested signing needs a verified signature")
	}
	if detail := notEnforced(outcome); detail != "" {
		return c.fail(CheckSignature, detail)
	}
	chain := outcome.EnvelopeContent.SignerInfo.CertificateChain
	if len(o.SigningCertSHA256) > 0 {
		if len(chain) == 0 {
			return c.fail(CheckSignature, "the signature carries no certificate chain")
		}
		sum := sha256.Sum256(chain[0].Raw)
		if got := hex.EncodeToString(sum[:]); !slices.Contains(o.SigningCertSHA256, got) {
			return c.fail(CheckSignature, fmt.Sprintf("signed with certificate %q (sha256 %s), not a pinned signing certificate", chain[0].Subject, got))
		}
	}
	signed := outcome.EnvelopeContent.SignerInfo.SignedAttributes
	st := signed.SigningTime
	c.signingTime = &st
	detail := fmt.Sprintf("signature %s verified, signed at %s", sd.Digest, st.UTC().Format(time.RFC3339))
	if len(o.SigningCertSHA256) == 0 && len(chain) > 1 {
		detail += "; " + UnpinnedKey
	}
	c.ok(CheckSignature, detail)

	tokenSHA, issuer := tokenAttrs(signed)
	if tokenSHA == "" || issuer == "" {
		return c.fail(CheckAttribute, "the signature carries no attestation token attributes: it was not made by the attested-kv plugin")
	}
	c.tokenSHA = tokenSHA
	c.ok(CheckAttribute, "token sha256 "+tokenSHA)

	ix := tokenIndex()
	if err := ix.Err(); err != nil {
		c.readErr = err
		return c.fail(CheckReferrer, err.Error())
	}
	tok, tokenErrs := ix.Find(ctx, tokenSHA)
	if tok == nil {
		var unread, malformed []error
		var re *referrer.ReadError
		for _, err := range tokenErrs {
			if errors.As(err, &re) {
				unread = append(unread, err)
			} else {
				malformed = append(malformed, err)
			}
		}
		// The token may be in a referrer the registry did not serve: telling the user to attach
		// it would send them after a token that may well be there.
		if len(unread) > 0 {
			c.readErr = fmt.Errorf("token %s not found, and %d of the %d token referrers could not be read: %w", tokenSHA, len(unread), ix.Len(), unread[0])
			return c.fail(CheckReferrer, c.readErr.Error())
		}
		detail := "no token referrer with sha256 " + tokenSHA
		if !ix.Truncated() {
			// Every referrer attached was read: the token is not among them.
			detail += " (run oras-attest attach)"
		}
		if len(malformed) > 0 {
			detail += fmt.Sprintf("; %d referrer(s) are not well-formed token referrers: %v", len(malformed), malformed[0])
		}
		if ix.Truncated() {
			detail += fmt.Sprintf("; more than %d token referrers are attached and only the first %d were read", referrer.MaxListed, referrer.MaxListed)
		}
		return c.fail(CheckReferrer, detail)
	}
	c.referrer = tok.Descriptor.Digest.String()
	c.ok(CheckReferrer, "referrer "+c.referrer)

	if strings.TrimSuffix(issuer, "/") != strings.TrimSuffix(o.AttestationURL, "/") {
		return c.fail(CheckIssuer, fmt.Sprintf("signed issuer %q is not the pinned instance %q", issuer, o.AttestationURL))
	}
	c.ok(CheckIssuer, issuer)

	// The token is judged at the signing time: it was fresh then, though expired by now.
	v, err := maa.NewVerifier(maa.VerifierOptions{
		Instance: o.AttestationURL, Keys: o.TokenKeys, MaxAge: o.MaxTokenAge,
		Now: func() time.Time { return st },
	})
	if err != nil {
		return c.fail(CheckToken, err.Error())
	}
	t, err := v.Verify(ctx, tok.Raw, "")
	if err != nil {
		if errors.Is(err, maa.ErrKeySource) {
			// MAA's signing keys could not be read (its /certs is down or unreachable): the
			// token is not judged.
			c.readErr = fmt.Errorf("verifying token %s: %w", tokenSHA, err)
			return c.fail(CheckToken, c.readErr.Error())
		}
		if maa.CheckName(err) == maa.CheckAge {
			c.ok(CheckToken, "signature, issuer and lifetime verified")
			return c.fail(CheckAge, err.Error())
		}
		return c.fail(CheckToken, err.Error())
	}
	c.ok(CheckToken, "signature, issuer and lifetime verified at the signing time")
	c.ok(CheckAge, fmt.Sprintf("issued %s before signing (max %s)", st.Sub(t.IssuedAt()).Round(time.Second), o.MaxTokenAge))

	if t.Nonce() != want {
		return c.fail(CheckBinding, bindingMismatch(subject.Digest.String(), o.KeyID, t.Nonce()))
	}
	c.ok(CheckBinding, "bound to "+subject.Digest.String()+" and "+o.KeyID)

	if err := o.Rules.Evaluate(t.Claims()).Err(); err != nil {
		return c.fail(CheckRules, err.Error())
	}
	c.ok(CheckRules, rulesPassed(o.Rules))
	return []candidate{c}
}

// UnpinnedKey says what verifying without a pinned signing certificate leaves open when the
// signing certificate was issued by another (a CA, as with Key Vault's integrated CAs): the token
// is bound to the expected key id, but nothing ties that key id to the certificate that signed.
// The signature check adds it to its detail, passed.
const UnpinnedKey = "no signing certificate is pinned and this one was issued by a CA: if the trust store holds that CA, " +
	"a signature by any key it certifies passes (pin the certificate: oras-attest --signing-cert-sha256, the Ratify verifier's signingCertSHA256)"

// UnpinnedVM says what a rule set that reads no VM id leaves open. The verifiers add it to what
// they report of the rules, passed, so that the gap shows where the result is read.
const UnpinnedVM = "no rule reads " + maa.ClaimVMID + ": a token of any Trusted Launch VM that asks the instance passes them " +
	"(pin your build VMs: oras-attest rules pin-vm; README, \"What a verified image proves\")"

// rulesPassed is the rules check's detail when rs passed.
func rulesPassed(rs *rules.Set) string {
	d := fmt.Sprintf("%d rules of %s passed", len(rs.Rules()), rs.Name())
	if !rs.Reads(maa.ClaimVMID) {
		d += "; " + UnpinnedVM
	}
	return d
}

// bindingMismatch says what a token bound to got, not to digest and keyID, is bound to, when it
// can tell: the signature pins the digest, and the plugin accepts a key id without version
// (https://VAULT/keys/NAME), so a token bound to keyID without its version was made for a
// signature with that key id. Otherwise it says only that the token is bound to another image
// or key.
func bindingMismatch(digest, keyID, got string) string {
	if short := versionless(keyID); short != "" {
		if b, err := binding.Compute(digest, short); err == nil && b == got {
			return fmt.Sprintf("the token is bound to key id %s, not %s: the image was signed with the key id without version; verify with that key id (oras-attest --key-id, the Ratify verifier's keyID) or sign with the versioned one", short, keyID)
		}
	}
	return "the token is bound to another image or key than " + digest + " and " + keyID
}

// versionless returns a Key Vault key id with a version (https://VAULT/keys/NAME/VERSION, or
// /certificates/) without it, or "" for any other key id.
func versionless(keyID string) string {
	u, err := url.Parse(keyID)
	if err != nil || u.Scheme != "https" || u.RawQuery != "" || u.Fragment != "" {
		return ""
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 3 || (parts[0] != "keys" && parts[0] != "certificates") || parts[1] == "" || parts[2] == "" {
		return ""
	}
	return strings.TrimSuffix(keyID, "/"+parts[2])
}

// notationConfigError reports whether err, from notation-go's verifier (v1.3.2,
// verifier.Verify), says that the verifier's own configuration cannot be used, whatever the
// signature:
//   - notation.NoApplicableTrustPolicyError: no trust policy's registryScopes cover the reference;
//   - truststore.TrustStoreError: a trust store the policy names is missing, not a directory or
//     unreadable, or the policy's trust store value is malformed (wrapped with %w when the TSA
//     store is loaded for a timestamp);
//   - truststore.CertificateError: a trust store's certificate file cannot be read or is not a
//     usable CA certificate, or the store holds no certificate.
//
// Everything else stays a refusal of the signature: a verification that failed (integrity,
// authenticity, trusted identity, expiry, timestamp, revocation), and the classes that are
// ambiguous. notation.VerificationInconclusiveError is also returned for what the signature
// chooses, which whoever can push to the repository writes: a verification plugin it names that
// is not installed, or a signing scheme for which the policy has no trust store ("no trusted
// certificates are found"). A revocation status that could not be checked (an OCSP or CRL server
// unreachable) is a plain error that cannot be told from others by type. Either way the image does
// not pass; this only decides whether the user is told that the image is at fault.
func notationConfigError(err error) bool {
	var (
		noPolicy notation.NoApplicableTrustPolicyError
		store    truststore.TrustStoreError
		cert     truststore.CertificateError
	)
	return errors.As(err, &noPolicy) || errors.As(err, &store) || errors.As(err, &cert)
}

// notEnforced says why a signature that notation-go accepted is not verified in the sense an
// attested signature needs, or returns "". notation-go accepts a signature whose check failed when
// the trust policy only logs that check (level "audit" or "permissive", or an override such as
// {"authenticity": "log"}): the failure is then only recorded in the outcome. A signer the trust
// store does not know, a revoked or expired signing certificate, or an expired signature would
// pass that way, so every check must be enforced (level "strict", no override).
func notEnforced(outcome *notation.VerificationOutcome) string {
	lvl := outcome.VerificationLevel
	if lvl == nil {
		return "the trust policy's verification level is unknown; attested signing needs one that enforces every check (level strict)"
	}
	for _, typ := range trustpolicy.ValidationTypes {
		if action := lvl.Enforcement[typ]; action != trustpolicy.ActionEnforce {
			return fmt.Sprintf("the trust policy does not enforce %s (level %q, action %q); attested signing needs a policy that enforces every check (level strict, no override)", typ, lvl.Name, action)
		}
	}
	for _, r := range outcome.VerificationResults {
		if r != nil && r.Error != nil && (r.Type == trustpolicy.TypeIntegrity || r.Type == trustpolicy.TypeAuthenticity) {
			return fmt.Sprintf("%s check failed: %v", r.Type, r.Error)
		}
	}
	return ""
}

// remoteRepository adds notation-go's signature access to an oras-go repository.
type remoteRepository struct {
	*remote.Repository
	sigs nregistry.Repository
}

// NewRepository returns the Repository view of r.
func NewRepository(r *remote.Repository) Repository {
	return remoteRepository{Repository: r, sigs: nregistry.NewRepository(r)}
}

func (r remoteRepository) ListSignatures(ctx context.Context, desc ocispec.Descriptor, fn func([]ocispec.Descriptor) error) error {
	return r.sigs.ListSignatures(ctx, desc, fn)
}
