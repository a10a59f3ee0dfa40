// Package gate is the attestation gate in front of the signing key: the logic of the Notation
// plugin attested-kv (capability SIGNATURE_GENERATOR.ENVELOPE).
//
// For each generate-envelope request it computes the binding of the image digest and key id,
// obtains an MAA token for it from the local TPM, verifies the token (signature, issuer, lifetime,
// age, the echoed binding) and the claim rules, and only then signs through Key Vault, building a
// JWS or COSE envelope whose signed attributes carry the token's SHA-256 and issuer. The token is
// kept in the token store under the image digest. Any failure before the signature stops the
// request with an error that names the cause; Key Vault is not called at all. (The identity's
// access token for Key Vault is requested from Entra ID while the attestation runs.)
//
// Fail closed is structural: the signing step takes an *Attestation, which only the gate's own
// attest step constructs from a verified token whose rules passed.
package gate

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strings"
	"time"

	"github.com/notaryproject/notation-core-go/signature"
	_ "github.com/notaryproject/notation-core-go/signature/cose" // registers application/cose
	_ "github.com/notaryproject/notation-core-go/signature/jws"  // registers application/jose+json
	nx509 "github.com/notaryproject/notation-core-go/x509"
	"github.com/notaryproject/notation-plugin-framework-go/plugin"
	"github.com/notaryproject/tspclient-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/token"
)

// Plugin identity (the name must equal the install directory and the binary's suffix).
const (
	Name        = "attested-kv"
	Description = "Signs with Azure Key Vault only after Microsoft Azure Attestation of this VM's TPM"
	URL         = "https://github.com/attested-kv/attested-kv"
)

// Signed attributes of the envelope (binding.AttrTokenSHA256, binding.AttrIssuer) and the
// annotation of the signature manifest (DESIGN.md, "Binding").
const (
	AttrTokenSHA256 = binding.AttrTokenSHA256
	AttrIssuer      = binding.AttrIssuer
	// AnnotationTokenSHA256 points from the signature manifest to the token referrer (unsigned; the
	// signed attribute is what verifiers trust). It has the signed attribute's name.
	AnnotationTokenSHA256 = binding.AttrTokenSHA256
	// PayloadType is the only payload notation sends for OCI signing.
	PayloadType = binding.NotaryPayloadType
)

// maxPayload bounds the Notary payload (a descriptor with annotations).
const maxPayload = 1 << 20

// Attester obtains an MAA token bound to nonce from the local TPM.
type Attester interface {
	Attest(ctx context.Context, nonce string) (string, error)
}

// TokenVerifier verifies a token and its echoed nonce (satisfied by *maa.Verifier).
type TokenVerifier interface {
	Verify(ctx context.Context, raw, nonce string) (*maa.Token, error)
}

// ClaimRules checks a verified token's claims; the error names the failed rule.
type ClaimRules interface {
	Check(claims map[string]any) error
}

// KeySource opens the signing key. Warm may prepare what opening needs (an access token) while
// the attestation runs, but must not call Key Vault; Open is called only after an attestation
// passed.
type KeySource interface {
	Warm(ctx context.Context)
	Open(ctx context.Context) (signature.Signer, error)
}

// Deps builds the gate's collaborators from the plugin config; tests replace them.
type Deps struct {
	Attester func(ctx context.Context, c Config, log *slog.Logger) (Attester, error)
	Verifier func(c Config) (TokenVerifier, error)
	Rules    func(c Config) (ClaimRules, error) // its errors name the claim rules (as package rules's do)
	Key      func(keyID string, c Config, log *slog.Logger) (KeySource, error)
	Now      func() time.Time
	Version  string
}

// Gate implements plugin.Plugin.
type Gate struct {
	deps Deps
}

// New returns a Gate with deps; nil fields of deps take the production implementations.
func New(deps Deps) *Gate {
	d := DefaultDeps()
	if deps.Attester != nil {
		d.Attester = deps.Attester
	}
	if deps.Verifier != nil {
		d.Verifier = deps.Verifier
	}
	if deps.Rules != nil {
		d.Rules = deps.Rules
	}
	if deps.Key != nil {
		d.Key = deps.Key
	}
	if deps.Now != nil {
		d.Now = deps.Now
	}
	if deps.Version != "" {
		d.Version = deps.Version
	}
	return &Gate{deps: d}
}

// GetMetadata implements plugin.Plugin. It is static and offline: notation calls it with no config.
func (g *Gate) GetMetadata(context.Context, *plugin.GetMetadataRequest) (*plugin.GetMetadataResponse, error) {
	return &plugin.GetMetadataResponse{
		Name:                      Name,
		Description:               Description,
		Version:                   g.deps.Version,
		URL:                       URL,
		SupportedContractVersions: []string{plugin.ContractVersion},
		Capabilities:              []plugin.Capability{plugin.CapabilityEnvelopeGenerator},
	}, nil
}

// DescribeKey implements plugin.Plugin; an envelope generator does not need it.
func (g *Gate) DescribeKey(context.Context, *plugin.DescribeKeyRequest) (*plugin.DescribeKeyResponse, error) {
	return nil, plugin.NewUnsupportedError("describe-key (attested-kv generates envelopes)")
}

// GenerateSignature implements plugin.Plugin; RAW signing cannot carry the token binding.
func (g *Gate) GenerateSignature(context.Context, *plugin.GenerateSignatureRequest) (*plugin.GenerateSignatureResponse, error) {
	return nil, plugin.NewUnsupportedError("generate-signature (attested-kv generates envelopes)")
}

// VerifySignature implements plugin.Plugin; attested-kv is not a verification plugin.
func (g *Gate) VerifySignature(context.Context, *plugin.VerifySignatureRequest) (*plugin.VerifySignatureResponse, error) {
	return nil, plugin.NewUnsupportedError("verify-signature")
}

// errTokenAged is the cause of the signing deadline: the token reached max_token_age.
var errTokenAged = errors.New("the token reached its max_token_age")

// Attestation is a verified token whose claim rules passed, bound to one digest and key. Only
// Gate.attest constructs one; signing requires it.
type Attestation struct {
	token      *maa.Token
	subject    string
	keyID      string
	verifiedAt time.Time
}

// GenerateEnvelope implements plugin.Plugin: attest, verify, check rules, then sign.
func (g *Gate) GenerateEnvelope(ctx context.Context, req *plugin.GenerateEnvelopeRequest) (*plugin.GenerateEnvelopeResponse, error) {
	if req.ContractVersion != plugin.ContractVersion {
		return nil, plugin.NewUnsupportedContractVersionError(req.ContractVersion)
	}
	// These refusals come before the log is open; they are made as every other one is, by
	// ToPluginError (redacted).
	cfg, err := ParseConfig(req.PluginConfig)
	if err != nil {
		return nil, ToPluginError(validationf("%v", err))
	}
	log, closeLog, err := openLog(cfg.LogFile)
	if err != nil {
		return nil, ToPluginError(validationf("%v", err))
	}
	defer closeLog()
	limit := fmt.Errorf("the signature took longer than the plugin config %s %s", KeyTimeout, cfg.Timeout)
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.Timeout, limit)
	defer cancel()
	rsp, err := g.generate(ctx, cfg, req, log)
	if err != nil {
		if context.Cause(ctx) == limit {
			err = fmt.Errorf("%w (%v)", err, limit)
		}
		perr := ToPluginError(err) // redacted: it goes to notation's output and to the log
		log.Error("generate-envelope refused", "code", perr.ErrCode, "err", perr.Message)
		return nil, perr
	}
	return rsp, nil
}

// maxExpirySeconds is the longest signature expiry a request may ask for: the longest
// time.Duration, in whole seconds.
const maxExpirySeconds = uint64(math.MaxInt64 / int64(time.Second))

func (g *Gate) generate(ctx context.Context, cfg Config, req *plugin.GenerateEnvelopeRequest, log *slog.Logger) (*plugin.GenerateEnvelopeResponse, error) {
	if req.PayloadType != PayloadType {
		return nil, validationf("payload type %q is not %q", req.PayloadType, PayloadType)
	}
	if req.SignatureEnvelopeType != "application/jose+json" && req.SignatureEnvelopeType != "application/cose" {
		return nil, validationf("signature envelope type %q: want application/jose+json or application/cose", req.SignatureEnvelopeType)
	}
	// time.Duration counts nanoseconds in an int64: a longer expiry would wrap around, to a
	// signature that expires before it is made or at any other time. notation's --expiry is a
	// time.Duration, so it never asks for one.
	if req.ExpiryDurationInSeconds > maxExpirySeconds {
		return nil, validationf("signature expiry of %d seconds is beyond the %d a time.Duration holds (about 292 years)", req.ExpiryDurationInSeconds, uint64(maxExpirySeconds))
	}
	subject, err := targetDigest(req.Payload)
	if err != nil {
		return nil, err
	}
	// What the signature needs after Key Vault has signed (the token store) or before (the TSA's
	// roots) is checked now: a configuration error must not cost an attestation and a Key Vault
	// signature that is then thrown away.
	store, err := tokenStore(cfg)
	if err != nil {
		return nil, err
	}
	tsa, err := newTimestamping(cfg)
	if err != nil {
		return nil, err
	}
	key, err := g.deps.Key(req.KeyID, cfg, log)
	if err != nil {
		return nil, err
	}
	// The access token for Key Vault is fetched while the TPM and MAA work; Key Vault itself is
	// not called before the attestation passes.
	warmCtx, stopWarm := context.WithCancel(ctx)
	warmed := make(chan struct{})
	go func() { defer close(warmed); key.Warm(warmCtx) }()
	att, err := g.attest(ctx, cfg, subject, req.KeyID, log)
	if err != nil {
		stopWarm()
		<-warmed
		return nil, err
	}
	// Key Vault must have signed while the token is at most max_token_age old (see sign): opening
	// the key and signing run under that deadline, and waiting for the access token too.
	signBy := att.token.IssuedAt().Add(cfg.MaxTokenAge)
	signCtx, cancelSign := context.WithTimeoutCause(ctx, signBy.Sub(g.deps.Now()), errTokenAged)
	defer cancelSign()
	select {
	case <-warmed: // one token request at a time: the clients then find it in the credential's cache
	case <-signCtx.Done():
	}
	stopWarm()
	<-warmed
	if err := ctx.Err(); err != nil { // the timeout, which also ended Warm
		return nil, fmt.Errorf("waiting for the Key Vault access token: %w", err)
	}
	env, err := g.sign(signCtx, att, key, cfg, tsa, req, log)
	if err != nil {
		if context.Cause(signCtx) == errTokenAged && ctx.Err() == nil {
			err = &attestError{err: fmt.Errorf("the token became older than %s %s before Key Vault had signed (%w); nothing was signed, sign again", KeyMaxTokenAge, cfg.MaxTokenAge, err)}
		}
		return nil, err
	}
	entry, err := store.Put(att.subject, att.token.Raw())
	if err != nil {
		return nil, fmt.Errorf("keeping the token (the signature is discarded): %w", err)
	}
	log.Info("signed", "subject", att.subject, "tokenSHA256", entry.SHA256, "tokenFile", entry.Path)
	return &plugin.GenerateEnvelopeResponse{
		SignatureEnvelope:     env,
		SignatureEnvelopeType: req.SignatureEnvelopeType,
		Annotations:           map[string]string{AnnotationTokenSHA256: entry.SHA256},
	}, nil
}

// attest runs steps 1-4 of DESIGN.md: binding, evidence and token, verification, rules.
//
// The claim rules compile while the TPM and MAA work: compiling is the first use of CEL in the
// process (8-11 ms cold, against 2-3 ms warm), and the rules are needed only once the token is
// verified. A rule file that does not compile still stops the signature, and its error is the
// one reported, before any error of the attestation.
func (g *Gate) attest(ctx context.Context, cfg Config, subject, keyID string, log *slog.Logger) (*Attestation, error) {
	b, err := binding.Compute(subject, keyID)
	if err != nil {
		return nil, validationf("%v", err) // binding.ErrInvalidInput's text starts "binding:"
	}
	var (
		rules    ClaimRules
		rulesErr error
	)
	compiled := make(chan struct{})
	go func() { defer close(compiled); rules, rulesErr = g.deps.Rules(cfg) }()
	start := time.Now()
	tok, err := g.verifiedToken(ctx, cfg, b, log)
	ready := time.Now()
	<-compiled
	if rulesErr != nil {
		return nil, validationf("%v", rulesErr) // Deps.Rules's errors name the claim rules
	}
	if err != nil {
		return nil, err
	}
	log.Debug("rules timings", "waitedAfterToken", time.Since(ready), "sinceStart", time.Since(start))
	if err := rules.Check(tok.Claims()); err != nil {
		return nil, &attestError{err: err}
	}
	log.Info("attested", "issuer", tok.Issuer(), "tokenSHA256", tok.SHA256(), "issuedAt", tok.IssuedAt())
	return &Attestation{token: tok, subject: subject, keyID: keyID, verifiedAt: time.Now()}, nil
}

// verifiedToken gets a token for the binding b from the TPM and MAA, and verifies it.
func (g *Gate) verifiedToken(ctx context.Context, cfg Config, b string, log *slog.Logger) (*maa.Token, error) {
	verifier, err := g.deps.Verifier(cfg)
	if err != nil {
		return nil, validationf("token verifier: %v", err)
	}
	attester, err := g.deps.Attester(ctx, cfg, log)
	if err != nil {
		return nil, &attestError{err: err}
	}
	// The instance's signing keys are fetched while the TPM and MAA work (one round trip less
	// after the token arrives), when the verifier can.
	defer maa.StartPrefetch(ctx, verifier)()
	start := time.Now()
	raw, err := attester.Attest(ctx, b)
	if err != nil {
		return nil, &attestError{err: err}
	}
	attested := time.Now()
	tok, err := verifier.Verify(ctx, raw, b)
	if err != nil {
		return nil, &attestError{err: fmt.Errorf("the token does not verify: %w", err)}
	}
	log.Debug("attestation timings", "attest", attested.Sub(start), "verify", time.Since(attested))
	return tok, nil
}

// sign builds the envelope; it takes the Attestation so no path reaches Key Vault without one.
//
// The signing time is taken once the key is open, and the token must still be at most
// max_token_age old then and once Key Vault has signed: verifiers judge the token's age at the
// signing time (DESIGN.md, "Binding"), and opening the key or signing can take long (Entra ID or
// Key Vault throttling and retries). ctx ends when the token reaches that age (generate).
func (g *Gate) sign(ctx context.Context, att *Attestation, key KeySource, cfg Config, tsa *timestamping, req *plugin.GenerateEnvelopeRequest, log *slog.Logger) ([]byte, error) {
	if att == nil || att.token == nil || att.keyID != req.KeyID {
		return nil, &attestError{err: errors.New("no attestation for this key")}
	}
	start := time.Now()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("before opening the Key Vault key: %w", err)
	}
	signer, err := key.Open(ctx)
	if err != nil {
		return nil, err
	}
	// A signer that does not watch ctx (a local key) must not sign past the deadline either.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("opening the Key Vault key: %w", err)
	}
	opened := time.Now()
	defer func() { log.Debug("signing timings", "openKey", opened.Sub(start), "sign", time.Since(opened)) }()
	env, err := signature.NewEnvelope(req.SignatureEnvelopeType)
	if err != nil {
		return nil, validationf("%v", err)
	}
	now := g.deps.Now()
	if age := now.Sub(att.token.IssuedAt()); age > cfg.MaxTokenAge {
		return nil, &attestError{err: fmt.Errorf("the token is %s old at the signing time, more than %s %s (since it was verified: %s waiting for the Entra ID access token, %s opening the Key Vault key); nothing was signed, sign again",
			age.Truncate(time.Millisecond), KeyMaxTokenAge, cfg.MaxTokenAge, start.Sub(att.verifiedAt).Truncate(time.Millisecond), opened.Sub(start).Truncate(time.Millisecond))}
	}
	// A local signer is signed with through its private key, never through Sign: only a remote
	// one (Key Vault) is recorded.
	var rec *recordingSigner
	if _, local := signer.(signature.LocalSigner); !local {
		rec = &recordingSigner{Signer: signer}
		signer = rec
	}
	sr := &signature.SignRequest{
		Payload:     signature.Payload{ContentType: req.PayloadType, Content: req.Payload},
		Signer:      signer,
		SigningTime: now,
		ExtendedSignedAttributes: []signature.Attribute{
			{Key: AttrTokenSHA256, Critical: false, Value: att.token.SHA256()},
			{Key: AttrIssuer, Critical: false, Value: att.token.Issuer()},
		},
		SigningAgent:  Name + "/" + g.deps.Version,
		SigningScheme: signature.SigningSchemeX509,
	}
	if req.ExpiryDurationInSeconds > 0 {
		sr.Expiry = now.Add(time.Duration(req.ExpiryDurationInSeconds) * time.Second)
	}
	if tsa != nil {
		sr.Timestamper, sr.TSARootCAs = tsa.timestamper, tsa.roots
	}
	out, err := env.Sign(sr.WithContext(ctx))
	if err != nil {
		return nil, &signError{err: err, signer: rec.err()}
	}
	// The signing time the envelope states is now; Key Vault (and the TSA) answered later. A
	// signature made once the token is past its age would claim a freshness it did not have.
	if age := g.deps.Now().Sub(att.token.IssuedAt()); age > cfg.MaxTokenAge {
		return nil, &attestError{err: fmt.Errorf("the token was %s old when Key Vault had signed, more than %s %s (signing took %s); the signature is discarded, sign again",
			age.Truncate(time.Millisecond), KeyMaxTokenAge, cfg.MaxTokenAge, g.deps.Now().Sub(now).Truncate(time.Millisecond))}
	}
	return out, nil
}

// signError is the envelope's failure to sign. The envelope packages replace the signer's error
// by a signature.InvalidSignRequestError holding only its text (notation-core-go jws and cose
// envelope.go), so the signer's own error is kept beside it: ToPluginError then finds the Key
// Vault *azcore.ResponseError or the deadline in the chain, as when opening the key fails.
type signError struct {
	err    error // what the envelope returned; its message is the one shown
	signer error // what the signer's Sign returned; nil if the signer did not fail
}

func (e *signError) Error() string { return "signing: " + e.err.Error() }

// Unwrap returns both errors, so errors.Is and errors.As see the signer's whole chain.
func (e *signError) Unwrap() []error {
	if e.signer == nil {
		return []error{e.err}
	}
	return []error{e.signer, e.err}
}

// recordingSigner is a remote signature.Signer that keeps the error its Sign returned. The
// envelope calls Sign within its own Sign, so the error is read once that has returned.
type recordingSigner struct {
	signature.Signer
	signErr error
}

// Sign implements signature.Signer.
func (s *recordingSigner) Sign(payload []byte) ([]byte, []*x509.Certificate, error) {
	sig, certs, err := s.Signer.Sign(payload)
	if err != nil {
		s.signErr = err
	}
	return sig, certs, err
}

// err returns the error of the last failed Sign; nil for a nil recordingSigner.
func (s *recordingSigner) err() error {
	if s == nil {
		return nil
	}
	return s.signErr
}

// timestamping is the RFC 3161 configuration of the signature.
type timestamping struct {
	timestamper tspclient.Timestamper
	roots       *x509.CertPool
}

// newTimestamping returns the configured TSA and its roots, or nil when timestamp_url is unset.
func newTimestamping(cfg Config) (*timestamping, error) {
	if cfg.TimestampURL == "" {
		return nil, nil
	}
	ts, err := tspclient.NewHTTPTimestamper(nil, cfg.TimestampURL)
	if err != nil {
		return nil, validationf("%s: %v", KeyTimestampURL, err)
	}
	roots, err := nx509.ReadCertificateFile(cfg.TimestampRootCert)
	if err != nil {
		return nil, validationf("%s: %v", KeyTimestampRootCert, err)
	}
	pool := x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}
	return &timestamping{timestamper: ts, roots: pool}, nil
}

// tokenStore returns the token store of the config (token_dir, or the default directory),
// prepared: created durably and writable.
func tokenStore(cfg Config) (*token.Store, error) {
	dir := cfg.TokenDir
	if dir == "" {
		var err error
		if dir, err = token.DefaultDir(); err != nil {
			return nil, validationf("%s: %v", KeyTokenDir, err)
		}
	}
	store := token.NewStore(dir)
	if err := store.Prepare(); err != nil {
		return nil, validationf("%s: %v", KeyTokenDir, err)
	}
	return store, nil
}

// targetDigest returns the digest of the payload's targetArtifact.
func targetDigest(payload []byte) (string, error) {
	if len(payload) == 0 || len(payload) > maxPayload {
		return "", validationf("payload of %d bytes", len(payload))
	}
	var p struct {
		TargetArtifact *ocispec.Descriptor `json:"targetArtifact"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		return "", validationf("payload is not a Notary payload: %v", err)
	}
	if p.TargetArtifact == nil || p.TargetArtifact.Digest == "" {
		return "", validationf("payload has no targetArtifact digest")
	}
	// The token is kept under this digest after Key Vault has signed: the store's rule is checked
	// now (sha256 or sha512).
	if err := token.CheckSubject(p.TargetArtifact.Digest.String()); err != nil {
		return "", validationf("targetArtifact digest: %v", err)
	}
	return p.TargetArtifact.Digest.String(), nil
}

// openLog returns a logger writing to path (JSON lines, mode 0600), or a silent one. The plugin
// must never write to stdout or stderr outside the protocol.
func openLog(path string) (*slog.Logger, func(), error) {
	if path == "" {
		return slog.New(slog.DiscardHandler), func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", KeyLogFile, err)
	}
	level := slog.LevelInfo
	if strings.EqualFold(os.Getenv("ATTESTED_KV_DEBUG"), "1") {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: level})).With("pid", os.Getpid()), func() { f.Close() }, nil
}
