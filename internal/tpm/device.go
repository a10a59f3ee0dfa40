package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// MaxEventLogSize bounds the TCG event log read from disk. Firmware logs are tens of KiB; MAA's
// request carries the log base64-encoded twice.
const MaxEventLogSize = 1 << 20

// quoteAttempts bounds the retries when a PCR changes between PCR_Read and Quote.
const quoteAttempts = 3

// Device is an open TPM that gathers Azure guest attestation evidence.
//
// Its methods may be called from several goroutines (they run one at a time), but a Device holds
// the ephemeral key of its latest Evidence only: run one attestation at a time per Device, that is
// Evidence, then DecryptWithEphemeralKey of MAA's answer to that evidence, before the next
// Evidence. An Evidence in between replaces the key; DecryptWithEphemeralKey then refuses the
// earlier evidence's ciphertext with ErrEphemeralKeyMismatch (or, when the PCRs had not changed
// and the TPM derived the same key again, decrypts it with that same key, after which the later
// evidence's decryption finds ErrNoEphemeralKey). It never decrypts with a key other than the one
// whose public area the caller's evidence carries. Concurrent attestations need one Device each.
type Device struct {
	mu           sync.Mutex
	t            transport.TPMCloser
	eventLogPath string
	keyCacheDir  string
	log          *slog.Logger

	// last is the PCR state the last Evidence bound its ephemeral key to.
	last *ephemeralState
	// nvChunk is the NV read size, from nvReadChunk on first use; 0 until then.
	nvChunk int
}

// ephemeralState is the ephemeral key of the last Evidence, kept loaded until it has decrypted
// MAA's answer (or the next Evidence or Close).
type ephemeralState struct {
	sel    tpm2.TPMLPCRSelection
	digest []byte // SHA-256 over the quoted PCR values
	key    *ephemeralKey
}

// Option configures a Device.
type Option func(*Device)

// WithEventLogPath reads the TCG event log from path; "" sends no log. Default:
// DefaultEventLogPath.
func WithEventLogPath(path string) Option { return func(d *Device) { d.eventLogPath = path } }

// WithLogger logs evidence gathering to l (nothing secret is logged; evidence bytes only at Debug).
func WithLogger(l *slog.Logger) Option { return func(d *Device) { d.log = l } }

// New returns a Device on an open transport; Close closes the transport.
func New(t transport.TPMCloser, opts ...Option) *Device {
	d := &Device{t: t, eventLogPath: DefaultEventLogPath}
	for _, o := range opts {
		o(d)
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	return d
}

// Close closes the TPM connection.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dropEphemeral()
	return d.t.Close()
}

// dropEphemeral flushes the loaded ephemeral key, if any (best effort: a TPM reset has flushed it
// already).
func (d *Device) dropEphemeral() {
	if d.last != nil && d.last.key != nil {
		d.flush(d.last.key.handle)
	}
	d.last = nil
}

// flush flushes the transient object or session h, best effort. It goes through the unbound
// transport (see tpm), so that a call whose context ended between two commands still releases
// the TPM's slots. After a command interrupted in transit nothing more can be sent on that
// connection (see Open), so the handle stays loaded until the TPM's resource manager reclaims it
// when the connection closes, or, on a bare simulator without one, until the simulator restarts.
func (d *Device) flush(h tpm2.TPMHandle) {
	if err := flush(d.t, h); err != nil {
		d.log.Debug("flushing a TPM handle", "handle", fmt.Sprintf("%#x", uint32(h)), "err", err)
	}
}

// tpm returns the transport for the commands of a call made with ctx. Over Open's swtpm: and
// unix: sockets each command is bounded by ctx's deadline and interrupted when ctx is cancelled;
// a character device and mssim: (go-tpm's tcp transport) cannot interrupt a command, so there
// ctx is only checked between the steps of the call.
func (d *Device) tpm(ctx context.Context) transport.TPM {
	if s, ok := d.t.(contextSender); ok {
		return boundTPM{s: s, ctx: ctx}
	}
	return d.t
}

// placeholderAKIssuer is in the issuer CN of the AK certificate a VM holds before Azure provisions
// its real one (AZGA TpmCertOperations.cpp, IsAkCertProvisioned).
const placeholderAKIssuer = "MICROSOFT AZURE TRUSTED VM RSA"

// Evidence gathers what MAA's AzureGuest endpoint takes, as AZGA's AttestationClientImpl
// GetTpmInfo does: AK certificate and public area, the SHA-256 quote of AzurePCRs with empty
// qualifying data, the PCR values, an ephemeral key certified by the AK (see WithEphemeralKeyCache),
// and the event log. It checks the quote and the certification locally before returning them, so
// a TPM or transport fault is reported here rather than as a refusal by MAA. Over a socket, ctx
// bounds each TPM command (see Open).
func (d *Device) Evidence(ctx context.Context) (*Evidence, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dropEphemeral()
	t := d.tpm(ctx)

	ak, err := readAK(t)
	if err != nil {
		return nil, err
	}
	certDER, err := readNV(t, AKCertIndex, d.nvReadChunk(t))
	if err != nil {
		if isHandleError(err) {
			return nil, fmt.Errorf("%w: %w", ErrNoAKCert, err)
		}
		return nil, fmt.Errorf("reading the AK certificate: %w", err)
	}
	if certDER, err = trimDER(certDER); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoAKCert, err)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoAKCert, err)
	}
	// Azure's client checks the issuer the same way before it calls MAA, which would refuse the
	// placeholder with an error that does not say to wait.
	if strings.Contains(cert.Issuer.CommonName, placeholderAKIssuer) {
		return nil, fmt.Errorf("%w (issuer %q)", ErrAKCertNotProvisioned, cert.Issuer.CommonName)
	}
	if !ak.key.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%w (certificate %q)", ErrAKCertMismatch, cert.Subject.CommonName)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	sel := pcrSelection(AzurePCRs)
	var ev *Evidence
	for attempt := 1; ; attempt++ {
		ev, err = quote(t, ak, sel)
		if err == nil {
			break
		}
		if !errors.Is(err, errPCRRace) || attempt == quoteAttempts {
			return nil, err
		}
		d.log.Debug("PCRs changed between read and quote; quoting again", "attempt", attempt)
	}
	ev.AKCert = certDER
	ev.AKPub = ak.pub
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	pcrDigest := digestPCRs(ev.PCRs)
	// The key stays loaded for DecryptWithEphemeralKey. AZGA flushes it here and creates it again
	// to decrypt; keeping it saves one RSA key generation per attestation (seconds on a discrete
	// TPM) and changes nothing in what it can do: it still opens only under PolicyPCR, and it is
	// flushed right after the decryption, at the next Evidence, or at Close.
	ck, err := d.ephemeralKey(t, ak, sel, pcrDigest)
	if err != nil {
		return nil, err
	}
	ev.EncKeyPub, ev.EncKeyCertifyInfo, ev.EncKeyCertifyInfoSignature = ck.key.pub, ck.info, ck.sig
	st := &ephemeralState{sel: sel, digest: pcrDigest, key: ck.key}

	if ev.TCGLog, err = d.readEventLog(); err != nil {
		d.flush(ck.key.handle)
		return nil, err
	}
	d.last = st
	d.log.Info("TPM evidence gathered", "ak", cert.Subject.CommonName, "pcrs", len(ev.PCRs), "tcgLogBytes", len(ev.TCGLog))
	d.log.Debug("TPM evidence", "quote", ev.Quote, "encKeyPub", ev.EncKeyPub)
	return ev, nil
}

// DecryptWithEphemeralKey decrypts ciphertext (RSAES-PKCS1-v1_5, as MAA wraps its response key)
// with the ephemeral key of the last Evidence, as AZGA's DecryptWithEphemeralKey does: the key,
// kept loaded since Evidence (AZGA recreates it from the same template in the NULL hierarchy), is
// used under a PolicyPCR session for the PCR values that were quoted. encKeyPub is the EncKeyPub
// of the evidence MAA answered: the loaded key must have exactly that public area (certify checked
// when it was loaded that the TPM's Name of the key is the Name of this area), or the call fails with
// ErrEphemeralKeyMismatch and leaves the loaded key to the Evidence it belongs to (see Device). A
// TPM reset (new NULL seed) or any PCR change since Evidence makes it fail with ErrStateChanged.
func (d *Device) DecryptWithEphemeralKey(ctx context.Context, encKeyPub, ciphertext []byte) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.last
	if st == nil || st.key == nil {
		return nil, ErrNoEphemeralKey
	}
	if !bytes.Equal(encKeyPub, st.key.pub) {
		return nil, fmt.Errorf("%w: the evidence's public area is not the loaded key's (Name %x)", ErrEphemeralKeyMismatch, st.key.name.Buffer)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// One decryption per evidence: the key is flushed whatever happens.
	defer d.dropEphemeral()
	t := d.tpm(ctx)
	key := st.key
	// The session is flushed through the unbound transport (d.flush), not its closer, so that it
	// is released even when ctx has ended (between commands: see flush).
	sess, _, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, 16)
	if err != nil {
		return nil, fmt.Errorf("%w: starting a policy session: %w", ErrDecrypt, err)
	}
	defer d.flush(sess.Handle())
	// PolicyPCR with the expected digest: the TPM compares it with the current PCRs (TPM_RC_VALUE
	// if they changed), as AZGA's Tss2Session::PolicyPcr does.
	if _, err := (tpm2.PolicyPCR{
		PolicySession: sess.Handle(),
		PcrDigest:     tpm2.TPM2BDigest{Buffer: st.digest},
		Pcrs:          st.sel,
	}).Execute(t); err != nil {
		if isValueError(err) {
			return nil, fmt.Errorf("%w: PCRs 0-7 changed: %w", ErrStateChanged, err)
		}
		return nil, fmt.Errorf("%w: PolicyPCR: %w", ErrDecrypt, err)
	}
	rsp, err := tpm2.RSADecrypt{
		KeyHandle:  tpm2.AuthHandle{Handle: key.handle, Name: key.name, Auth: sess},
		CipherText: tpm2.TPM2BPublicKeyRSA{Buffer: ciphertext},
		InScheme:   tpm2.TPMTRSADecrypt{Scheme: tpm2.TPMAlgRSAES},
	}.Execute(t)
	if err != nil {
		if isHandleError(err) || tpmErrorIs(err, tpm2.TPMRCReferenceH0) {
			return nil, fmt.Errorf("%w: the ephemeral key is gone (TPM reset): %w", ErrStateChanged, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrDecrypt, err)
	}
	return rsp.Message.Buffer, nil
}

// AKCertificate returns the AK certificate stored at AKCertIndex, padding trimmed.
func (d *Device) AKCertificate(ctx context.Context) (*x509.Certificate, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := d.tpm(ctx)
	der, err := readNV(t, AKCertIndex, d.nvReadChunk(t))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoAKCert, err)
	}
	if der, err = trimDER(der); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoAKCert, err)
	}
	return x509.ParseCertificate(der)
}

// readEventLog reads the TCG log. No path, or no file at DefaultEventLogPath (a VM whose firmware
// gives none), is an empty log, as in AZGA ("TCG logs not found on device"). Any other failure
// stops the evidence, a missing file at a path someone chose included (a misspelt path would
// otherwise be sent as no log, and MAA's refusal would not say why): sending no log when one
// exists would silently change the claims MAA issues.
func (d *Device) readEventLog() ([]byte, error) {
	if d.eventLogPath == "" {
		return nil, nil
	}
	f, err := os.Open(d.eventLogPath)
	if errors.Is(err, fs.ErrNotExist) && d.eventLogPath == DefaultEventLogPath {
		d.log.Info("no TCG event log; sending an empty one", "path", d.eventLogPath)
		return nil, nil
	}
	if err != nil {
		return nil, d.eventLogError(err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxEventLogSize+1))
	if err != nil {
		return nil, d.eventLogError(err)
	}
	if len(b) > MaxEventLogSize {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrEventLog, d.eventLogPath, MaxEventLogSize)
	}
	return b, nil
}

// eventLogError wraps a failure to open or read the event log in ErrEventLog. A permission error
// gets its own explanation, since it is what a non-root build user meets by default: the kernel
// creates DefaultEventLogPath readable by root only (mode 0440 in securityfs), and membership in
// the tss group, which opens /dev/tpmrm0, does not help. It stays fatal: attesting without the
// log would change the claims MAA issues (see readEventLog).
func (d *Device) eventLogError(err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w: %s: permission denied (the kernel makes the firmware event log %s "+
			"readable only by root by default): either run as a user that can read it, or set the TCG "+
			"log path (the plugin's tcg_log, oras-attach's --tcg-log) to \"\" to attest deliberately "+
			"without it, knowing that MAA then has no log to derive the Secure Boot claims from, so "+
			"expect secureboot not to be true and the baseline rule secure-boot to refuse the token: %w",
			ErrEventLog, d.eventLogPath, DefaultEventLogPath, err)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s does not exist (only a log missing at the default path, %s, is sent as none): "+
			"correct the TCG log path (the plugin's tcg_log, oras-attest's --tcg-log), or set it to \"\" to send none: %w",
			ErrEventLog, d.eventLogPath, DefaultEventLogPath, err)
	}
	return fmt.Errorf("%w: %s: %w (point the TCG log path elsewhere, or to \"\" to send none)", ErrEventLog, d.eventLogPath, err)
}

// akKey is the AK as read from the TPM.
type akKey struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	pub    []byte // marshalled TPM2B_PUBLIC
	key    *rsa.PublicKey
}

func readAK(t transport.TPM) (*akKey, error) {
	rsp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(AKHandle)}.Execute(t)
	if err != nil {
		if isHandleError(err) {
			return nil, fmt.Errorf("%w: %w", ErrNoAK, err)
		}
		return nil, fmt.Errorf("reading the AK: %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAKType, err)
	}
	if pub.Type != tpm2.TPMAlgRSA || !pub.ObjectAttributes.Restricted || !pub.ObjectAttributes.SignEncrypt || pub.ObjectAttributes.Decrypt {
		return nil, ErrAKType
	}
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAKType, err)
	}
	unique, err := pub.Unique.RSA()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAKType, err)
	}
	key, err := tpm2.RSAPub(parms, unique)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAKType, err)
	}
	return &akKey{handle: tpm2.TPMHandle(AKHandle), name: rsp.Name, pub: tpm2.Marshal(rsp.OutPublic), key: key}, nil
}

// errPCRRace marks a quote whose PCR digest does not match the values read just before.
var errPCRRace = errors.New("PCRs changed between PCR_Read and Quote")

// quote reads the selected SHA-256 PCRs and quotes them with the AK (empty qualifying data, the
// key's own scheme: AZGA Tss2Wrapper::GetPCRQuote), then checks the signature and that the quoted
// digest is the digest of the values read.
func quote(t transport.TPM, ak *akKey, sel tpm2.TPMLPCRSelection) (*Evidence, error) {
	pcrs, err := readPCRs(t, AzurePCRs)
	if err != nil {
		return nil, err
	}
	rsp, err := tpm2.Quote{
		SignHandle: tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
		InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect:  sel,
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("TPM2_Quote: %w", err)
	}
	quoted := rsp.Quoted.Bytes()
	sig, err := rsp.Signature.Signature.RSASSA()
	if err != nil || rsp.Signature.SigAlg != tpm2.TPMAlgRSASSA {
		return nil, fmt.Errorf("%w: signature is not RSASSA", ErrQuote)
	}
	if h, _ := sig.Hash.Hash(); h != crypto.SHA256 {
		return nil, fmt.Errorf("%w: signature hash is not SHA-256", ErrQuote)
	}
	sum := sha256.Sum256(quoted)
	if err := rsa.VerifyPKCS1v15(ak.key, crypto.SHA256, sum[:], sig.Sig.Buffer); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrQuote, err)
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](quoted)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrQuote, err)
	}
	qi, err := att.Attested.Quote()
	if err != nil || att.Type != tpm2.TPMSTAttestQuote {
		return nil, fmt.Errorf("%w: not a quote", ErrQuote)
	}
	if subtle.ConstantTimeCompare(qi.PCRDigest.Buffer, digestPCRs(pcrs)) != 1 {
		return nil, errPCRRace
	}
	return &Evidence{Quote: quoted, QuoteSignature: sig.Sig.Buffer, PCRs: pcrs}, nil
}

// readPCRs reads the SHA-256 values of pcrs, looping because a TPM returns at most 8 digests per
// PCR_Read.
func readPCRs(t transport.TPM, pcrs []uint32) ([]PCR, error) {
	out := make([]PCR, 0, len(pcrs))
	for _, p := range pcrs {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: pcrSelection([]uint32{p})}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("TPM2_PCR_Read %d: %w", p, err)
		}
		if len(rsp.PCRValues.Digests) != 1 || len(rsp.PCRValues.Digests[0].Buffer) != sha256.Size {
			return nil, fmt.Errorf("TPM2_PCR_Read %d: the TPM has no SHA-256 value for it (is the SHA-256 bank allocated?)", p)
		}
		out = append(out, PCR{Index: p, Digest: rsp.PCRValues.Digests[0].Buffer})
	}
	return out, nil
}

// digestPCRs is SHA-256 over the concatenated PCR values, in selection order: the quote's
// pcrDigest and the PolicyPCR digest.
func digestPCRs(pcrs []PCR) []byte {
	h := sha256.New()
	for _, p := range pcrs {
		h.Write(p.Digest)
	}
	return h.Sum(nil)
}

// pcrSelection selects pcrs in the SHA-256 bank, with the 3-byte bitmap of a PC Client TPM.
func pcrSelection(pcrs []uint32) tpm2.TPMLPCRSelection {
	bitmap := make([]byte, 3)
	for _, p := range pcrs {
		bitmap[p/8] |= 1 << (p % 8)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: bitmap}}}
}

// ephemeralKey is a loaded ephemeral key.
type ephemeralKey struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	pub    []byte
}

// EphemeralKeyTemplate is AZGA's ephemeral key template (Tss2Util::PopulateEphemeralKeyPublicTemplate):
// RSA-2048, nameAlg SHA-256, decrypt|fixedTPM|fixedParent|sensitiveDataOrigin|noDA (no
// userWithAuth: usable only through its policy), scheme NULL, a zeroed 256-byte unique, and
// authPolicy = TPM2_PolicyPCR over the selection and PCR digest.
func EphemeralKeyTemplate(policy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgRSA,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			Decrypt: true, FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, NoDA: true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   2048,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
	}
}

// PolicyPCRDigest is the authPolicy of an object usable only while the PCRs in sel have the
// values whose SHA-256 digest is pcrDigest (TPM2_PolicyPCR from an empty policy).
func PolicyPCRDigest(sel tpm2.TPMLPCRSelection, pcrDigest []byte) ([]byte, error) {
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: pcrDigest}, Pcrs: sel}).Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}

// createEphemeralKey derives the ephemeral key with authPolicy policy in the NULL hierarchy.
func createEphemeralKey(t transport.TPM, policy []byte) (*ephemeralKey, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHNull,
		InPublic:      tpm2.New2B(EphemeralKeyTemplate(policy)),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("creating the ephemeral key: %w", err)
	}
	return &ephemeralKey{handle: rsp.ObjectHandle, name: rsp.Name, pub: tpm2.Marshal(rsp.OutPublic)}, nil
}

// certifiedKey is a loaded ephemeral key and the AK's certification of it.
type certifiedKey struct {
	key  *ephemeralKey
	info []byte // bare TPMS_ATTEST of TPM2_Certify
	sig  []byte // raw RSASSA signature over info
}

// certify has the AK certify the ephemeral key with empty qualifying data (AZGA
// Tss2Wrapper::GetCertifiedKeyAndFlushHandle), then checks the certification with
// checkCertification. The key's admin role is authorized by its (empty) authValue, since
// adminWithPolicy is clear.
func certify(t transport.TPM, key *ephemeralKey, ak *akKey) (*certifiedKey, error) {
	rsp, err := tpm2.Certify{
		ObjectHandle: tpm2.AuthHandle{Handle: key.handle, Name: key.name, Auth: tpm2.PasswordAuth(nil)},
		SignHandle:   tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
		InScheme:     tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("certifying the ephemeral key: %w", err)
	}
	s, err := rsp.Signature.Signature.RSASSA()
	if err != nil || rsp.Signature.SigAlg != tpm2.TPMAlgRSASSA {
		return nil, fmt.Errorf("%w: signature is not RSASSA", ErrCertify)
	}
	if h, _ := s.Hash.Hash(); h != crypto.SHA256 {
		return nil, fmt.Errorf("%w: signature hash is not SHA-256", ErrCertify)
	}
	info := rsp.CertifyInfo.Bytes()
	if err := checkCertification(info, s.Sig.Buffer, key, ak); err != nil {
		return nil, err
	}
	return &certifiedKey{key: key, info: info, sig: s.Sig.Buffer}, nil
}

// checkCertification checks the AK's certification of key as a verifier would: the AK signed it
// (RSASSA-SHA256), it is a TPM-generated CERTIFY, the Name it certifies is both the Name of the
// public area key.pub (what the evidence carries) and the Name the TPM reports for the loaded
// key.handle, and the Qualified Name it certifies is that of a primary key of the NULL hierarchy
// with that Name. The last check is what makes a loaded context trustworthy: a child of some
// other key, or an external (LoadExternal) object, with the ephemeral key's template has another
// Qualified Name, which the TPM itself reports and the AK signs.
func checkCertification(info, sig []byte, key *ephemeralKey, ak *akKey) error {
	sum := sha256.Sum256(info)
	if err := rsa.VerifyPKCS1v15(ak.key, crypto.SHA256, sum[:], sig); err != nil {
		return fmt.Errorf("%w: signature: %w", ErrCertify, err)
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](info)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrCertify, err)
	}
	ci, err := att.Attested.Certify()
	if err != nil || att.Type != tpm2.TPMSTAttestCertify {
		return fmt.Errorf("%w: not a CERTIFY attestation", ErrCertify)
	}
	name, err := publicName(key.pub)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrCertify, err)
	}
	if !bytes.Equal(ci.Name.Buffer, name) || !bytes.Equal(key.name.Buffer, name) {
		return fmt.Errorf("%w: it certifies Name %x; the key's public area has Name %x and the TPM names the loaded key %x",
			ErrCertify, ci.Name.Buffer, name, key.name.Buffer)
	}
	if want := nullPrimaryQualifiedName(name); !bytes.Equal(ci.QualifiedName.Buffer, want) {
		return fmt.Errorf("%w: qualified name %x, want %x: the key is not a primary key of the NULL hierarchy",
			ErrCertify, ci.QualifiedName.Buffer, want)
	}
	return nil
}

// publicName is the Name of the object whose marshalled TPM2B_PUBLIC is pub: nameAlg followed by
// the nameAlg digest of the TPMT_PUBLIC (TPM 2.0 Part 1, "Names").
func publicName(pub []byte) ([]byte, error) {
	p2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pub)
	if err != nil {
		return nil, fmt.Errorf("public area: %w", err)
	}
	area, err := p2b.Contents()
	if err != nil {
		return nil, fmt.Errorf("public area: %w", err)
	}
	name, err := tpm2.ObjectName(area)
	if err != nil {
		return nil, fmt.Errorf("public area: %w", err)
	}
	return name.Buffer, nil
}

// nullPrimaryQualifiedName is the Qualified Name of the primary object of the NULL hierarchy whose
// Name is name (a SHA-256 Name, as the ephemeral key template has). TPM 2.0 Part 1, "Names":
// QN(B) = H_nameAlg(QN(parent) || Name(B)), where the QN of a hierarchy is its handle, and the
// result is prefixed with nameAlg like a Name. The digest covers the two names' bytes without
// TPM2B size fields, and the hierarchy's QN is the 4-byte big-endian TPM_RH_NULL (reference TPM,
// Object.c: ComputeQualifiedName, and GetQualifiedName for a TPM_HT_PERMANENT handle). The
// reference TPM gives a LoadExternal object QN = Name, and a child the digest over its parent's QN.
func nullPrimaryQualifiedName(name []byte) []byte {
	h := sha256.New()
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMRHNull)))
	h.Write(name)
	return h.Sum(binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMAlgSHA256)))
}

func flush(t transport.TPM, h tpm2.TPMHandle) error {
	_, err := tpm2.FlushContext{FlushHandle: h}.Execute(t)
	return err
}

// nvChunk is the largest NV read or write: AZPY reads 1024-byte chunks, and TPM_PT_NV_BUFFER_MAX
// is 1024 on the reference simulator. A TPM may allow less (nvReadChunk).
const nvChunk = 1024

// nvReadChunk returns the NV read size of this TPM, min(TPM_PT_NV_BUFFER_MAX, nvChunk), queried
// with TPM2_GetCapability on first use and kept for the Device's life. d.mu must be held.
//
// If the capability cannot be read (or the TPM does not report the property), it falls back to
// nvChunk without failing: this is not a place to fail closed, since the chunk size decides
// nothing about what is trusted. A TPM whose buffer is smaller refuses a larger TPM2_NV_Read
// with an error that readNV reports, it never returns other data; and the certificate read is
// checked against the AK anyway. The failure is not kept, so the next call asks again.
func (d *Device) nvReadChunk(t transport.TPM) int {
	if d.nvChunk != 0 {
		return d.nvChunk
	}
	n, err := nvBufferMax(t)
	if err != nil {
		d.log.Debug("TPM_PT_NV_BUFFER_MAX not read; reading NV in chunks of the default size", "chunk", nvChunk, "err", err)
		return nvChunk
	}
	d.nvChunk = min(n, nvChunk)
	return d.nvChunk
}

// nvBufferMax reads TPM_PT_NV_BUFFER_MAX, the largest TPM2_NV_Read and TPM2_NV_Write (TPM 2.0
// Part 2, TPM_PT), with TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES).
func nvBufferMax(t transport.TPM) (int, error) {
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapTPMProperties,
		Property:      uint32(tpm2.TPMPTNVBufferMax),
		PropertyCount: 1,
	}.Execute(t)
	if err != nil {
		return 0, fmt.Errorf("TPM2_GetCapability(TPM_PT_NV_BUFFER_MAX): %w", err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return 0, fmt.Errorf("TPM2_GetCapability(TPM_PT_NV_BUFFER_MAX): %w", err)
	}
	for _, p := range props.TPMProperty {
		if p.Property == tpm2.TPMPTNVBufferMax && p.Value > 0 {
			return int(p.Value), nil
		}
	}
	return 0, errors.New("TPM2_GetCapability: the TPM does not report TPM_PT_NV_BUFFER_MAX")
}

// readNV reads the whole NV index with owner authorization (AZGA Tss2Util::NvRead reads with
// ESYS_TR_RH_OWNER and an empty password), in reads of at most chunk bytes.
func readNV(t transport.TPM, index uint32, chunk int) ([]byte, error) {
	pubRsp, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(index)}.Execute(t)
	if err != nil {
		return nil, err
	}
	pub, err := pubRsp.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	size := int(pub.DataSize)
	out := make([]byte, 0, size)
	for len(out) < size {
		n := min(size-len(out), chunk)
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(index), Name: pubRsp.NVName},
			Size:       uint16(n),
			Offset:     uint16(len(out)),
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("TPM2_NV_Read at offset %d: %w", len(out), err)
		}
		if len(rsp.Data.Buffer) == 0 {
			return nil, fmt.Errorf("TPM2_NV_Read at offset %d: no data", len(out))
		}
		out = append(out, rsp.Data.Buffer...)
	}
	return out, nil
}

// trimDER returns the first DER object of b: the NV index may be larger than the certificate it
// holds (cmc's GetVtpmAkCert trims the same way).
func trimDER(b []byte) ([]byte, error) {
	var raw asn1.RawValue
	rest, err := asn1.Unmarshal(b, &raw)
	if err != nil {
		return nil, fmt.Errorf("not a DER certificate: %w", err)
	}
	return b[:len(b)-len(rest)], nil
}

// isHandleError reports whether err is the TPM saying a handle or index does not exist.
func isHandleError(err error) bool {
	return tpmErrorIs(err, tpm2.TPMRCHandle)
}

// isValueError reports whether err is TPM_RC_VALUE (PolicyPCR: the PCRs differ from the digest).
func isValueError(err error) bool {
	return tpmErrorIs(err, tpm2.TPMRCValue)
}

func tpmErrorIs(err error, rc tpm2.TPMRC) bool { return errors.Is(err, rc) }
