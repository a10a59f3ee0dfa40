package maa

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// oidSubjectAltName is the X.509 SubjectAltName extension (2.5.29.17).
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// verifiedEvidence is what verifyEvidence established about a request.
type verifiedEvidence struct {
	akCert *x509.Certificate
	// encKey is the ephemeral TPM key the token will be encrypted to.
	encKey *rsa.PublicKey
	// certifyDigest identifies the exact EncKeyCertifyInfo for the replay check.
	certifyDigest [sha256.Size]byte
	// akDigest identifies the AK (SHA-256 of its certificate's SubjectPublicKeyInfo, the key of
	// AikPub) for the replay check's limit per AK.
	akDigest [sha256.Size]byte
}

// verifyOptions are the trust inputs of verifyEvidence.
type verifyOptions struct {
	roots, intermediates *x509.CertPool
	now                  time.Time
	maxClockSkew         time.Duration
}

// verifyEvidence runs every cryptographic check on the TPM evidence, in the order a verifier must:
// the AK is established through its certificate chain before anything it signed is believed, and
// every signature is verified over the raw bytes before those bytes are parsed.
func verifyEvidence(ev *evidence, opts verifyOptions) (*verifiedEvidence, error) {
	cert, certKey, err := verifyAKCert(ev.akCert, opts)
	if err != nil {
		return nil, err
	}
	akKey, err := parseAKPub(ev.akPub)
	if err != nil {
		return nil, err
	}
	if !certKey.Equal(akKey) {
		return nil, refuse(CodeAikKeyMismatch, "the AK certificate certifies a different key than TpmInfo.AikPub")
	}

	// Quote.
	if err := verifyRSASSA(akKey, ev.quote, ev.quoteSig); err != nil {
		return nil, refuse(CodeQuoteSignatureInvalid, "PcrSignature is not the AK's RSASSA-PKCS1-v1_5 SHA-256 signature over PcrQuote: %v", err)
	}
	quote, err := parseAttest(ev.quote, tpm2.TPMSTAttestQuote, CodeQuoteInvalid, "PcrQuote")
	if err != nil {
		return nil, err
	}
	quoteInfo, err := quote.Attested.Quote()
	if err != nil {
		return nil, refuse(CodeQuoteInvalid, "PcrQuote carries no TPMS_QUOTE_INFO: %v", err)
	}
	if err := checkPCRSelection(quoteInfo.PCRSelect, ev.pcrSet); err != nil {
		return nil, err
	}
	pcrDigest := digestPCRs(ev.pcrs)
	if !bytes.Equal(quoteInfo.PCRDigest.Buffer, pcrDigest) {
		return nil, refuse(CodePcrDigestMismatch,
			"the PCR values sent in TpmInfo.PCRs do not hash to the quoted pcrDigest: they are not the values the TPM signed")
	}

	// Ephemeral key.
	encPub, encPubArea, err := parseTPM2BPublic(ev.encKeyPub)
	if err != nil {
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub is not a TPM2B_PUBLIC: %v", err)
	}
	encKey, err := checkEphemeralKey(encPub)
	if err != nil {
		return nil, err
	}
	wantPolicy, err := policyPCRDigest(quoteInfo.PCRSelect, pcrDigest)
	if err != nil {
		return nil, refuse(CodeEncKeyInvalid, "computing the PolicyPCR digest: %v", err)
	}
	if !bytes.Equal(encPub.AuthPolicy.Buffer, wantPolicy) {
		return nil, refuse(CodeEncKeyPolicyMismatch,
			"EncKeyPub.authPolicy is not TPM2_PolicyPCR over the quoted PCRs and their values: the key would not be bound to this PCR state")
	}

	// Certification of the ephemeral key by the AK.
	if err := verifyRSASSA(akKey, ev.certifyInfo, ev.certifySig); err != nil {
		return nil, refuse(CodeCertifySignatureInvalid,
			"EncKeyCertifyInfoSignature is not the AK's RSASSA-PKCS1-v1_5 SHA-256 signature over EncKeyCertifyInfo: %v", err)
	}
	certify, err := parseAttest(ev.certifyInfo, tpm2.TPMSTAttestCertify, CodeCertifyInfoInvalid, "EncKeyCertifyInfo")
	if err != nil {
		return nil, err
	}
	certifyInfo, err := certify.Attested.Certify()
	if err != nil {
		return nil, refuse(CodeCertifyInfoInvalid, "EncKeyCertifyInfo carries no TPMS_CERTIFY_INFO: %v", err)
	}
	name := objectName(encPub.NameAlg, encPubArea)
	if !bytes.Equal(certifyInfo.Name.Buffer, name) {
		return nil, refuse(CodeCertifiedNameMismatch,
			"EncKeyCertifyInfo certifies the object named %x, but EncKeyPub is named %x", certifyInfo.Name.Buffer, name)
	}
	if !bytes.Equal(certify.QualifiedSigner.Buffer, quote.QualifiedSigner.Buffer) {
		return nil, refuse(CodeCertifyInfoInvalid, "EncKeyCertifyInfo and PcrQuote name different signing keys")
	}
	if err := checkSameBoot(quote, certify, opts.maxClockSkew); err != nil {
		return nil, err
	}

	return &verifiedEvidence{akCert: cert, encKey: encKey, certifyDigest: sha256.Sum256(ev.certifyInfo),
		akDigest: sha256.Sum256(cert.RawSubjectPublicKeyInfo)}, nil
}

// verifyAKCert parses the AK certificate and chains it to the trusted vTPM roots
// (reference/tpm.md §4.3): ExtKeyUsageAny, because AK certificates carry TCG key purposes rather
// than serverAuth; a critical SAN (TCG directoryName SAN) is tolerated when it is well formed.
func verifyAKCert(der []byte, opts verifyOptions) (*x509.Certificate, *rsa.PublicKey, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, refuse(CodeAikCertInvalid, "AikCert is not a DER X.509 certificate: %v", err)
	}
	if opts.now.Before(cert.NotBefore) || opts.now.After(cert.NotAfter) {
		return nil, nil, refuse(CodeAikCertNotValidNow, "AikCert is valid from %s to %s, not at %s",
			cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), opts.now.UTC().Format(time.RFC3339))
	}
	if cert.BasicConstraintsValid && cert.IsCA {
		return nil, nil, refuse(CodeAikCertInvalid, "AikCert is a CA certificate, not an AK certificate")
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return nil, nil, refuse(CodeAikCertInvalid, "AikCert's key usage does not allow digital signatures")
	}
	key, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, nil, refuse(CodeAikCertInvalid, "AikCert certifies a %T key; Azure vTPM AKs are RSA", cert.PublicKey)
	}
	leaf, err := tolerateCriticalSAN(cert)
	if err != nil {
		return nil, nil, refuse(CodeAikCertInvalid, "AikCert: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         opts.roots,
		Intermediates: opts.intermediates,
		CurrentTime:   opts.now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, nil, refuse(CodeAikCertUntrusted, "AikCert (subject %q, issuer %q) does not chain to a trusted vTPM root: %v",
			cert.Subject.String(), cert.Issuer.String(), err)
	}
	return cert, key, nil
}

// tolerateCriticalSAN returns cert, or a shallow copy of it without the SAN in
// UnhandledCriticalExtensions. crypto/x509 leaves a critical SAN unhandled when it holds only
// name forms it does not parse, such as the TCG directoryName SAN of TPM certificates; go-tpm-tools
// (server.VerifyAKCert) clears it the same way. The SAN must still be a well-formed GeneralNames.
func tolerateCriticalSAN(cert *x509.Certificate) (*x509.Certificate, error) {
	i := slices.IndexFunc(cert.UnhandledCriticalExtensions, func(o asn1.ObjectIdentifier) bool { return o.Equal(oidSubjectAltName) })
	if i < 0 {
		return cert, nil
	}
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var names []asn1.RawValue
		rest, err := asn1.Unmarshal(ext.Value, &names)
		if err != nil || len(rest) != 0 || len(names) == 0 {
			return nil, errors.New("critical subjectAltName is not a well-formed GeneralNames")
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific {
				return nil, errors.New("critical subjectAltName holds a value that is not a GeneralName")
			}
		}
	}
	c := *cert
	c.UnhandledCriticalExtensions = slices.Delete(slices.Clone(cert.UnhandledCriticalExtensions), i, i+1)
	return &c, nil
}

// parseAKPub checks that AikPub is an RSA restricted signing key resident in a TPM, signing with
// RSASSA-PKCS1-v1_5 SHA-256 (the scheme AZGA quotes with: inScheme TPM_ALG_NULL, so the key's own).
func parseAKPub(data []byte) (*rsa.PublicKey, error) {
	pub, _, err := parseTPM2BPublic(data)
	if err != nil {
		return nil, refuse(CodeAikPubInvalid, "AikPub is not a TPM2B_PUBLIC: %v", err)
	}
	if pub.Type != tpm2.TPMAlgRSA {
		return nil, refuse(CodeAikPubInvalid, "AikPub is a key of type 0x%x, not RSA", uint16(pub.Type))
	}
	a := pub.ObjectAttributes
	if !a.SignEncrypt || !a.Restricted || a.Decrypt {
		return nil, refuse(CodeAikPubInvalid, "AikPub is not a restricted signing key (sign=%t restricted=%t decrypt=%t)",
			a.SignEncrypt, a.Restricted, a.Decrypt)
	}
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return nil, refuse(CodeAikPubInvalid, "AikPub is not a TPM-generated, non-duplicable key (fixedTPM=%t fixedParent=%t sensitiveDataOrigin=%t)",
			a.FixedTPM, a.FixedParent, a.SensitiveDataOrigin)
	}
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		return nil, refuse(CodeAikPubInvalid, "AikPub has no RSA parameters: %v", err)
	}
	if parms.Scheme.Scheme != tpm2.TPMAlgRSASSA {
		return nil, refuse(CodeAikPubInvalid, "AikPub signs with scheme 0x%x, not RSASSA", uint16(parms.Scheme.Scheme))
	}
	ssa, err := parms.Scheme.Details.RSASSA()
	if err != nil || ssa.HashAlg != tpm2.TPMAlgSHA256 {
		return nil, refuse(CodeAikPubInvalid, "AikPub's RSASSA scheme does not use SHA-256")
	}
	return rsaPublicKey(pub, parms, CodeAikPubInvalid, "AikPub")
}

// checkEphemeralKey checks the attributes Azure's client gives the ephemeral key (AZGA
// Tss2Util.cpp PopulateEphemeralKeyPublicTemplate: decrypt | fixedTPM | fixedParent |
// sensitiveDataOrigin | noDA, no userWithAuth, RSA-2048, scheme and symmetric NULL) and returns its
// RSA public key. Each attribute matters to the token's confidentiality:
//   - decrypt and not sign: the key can unwrap our AES key and cannot sign anything;
//   - not restricted: a restricted decryption key cannot be used with TPM2_RSA_Decrypt;
//   - fixedTPM, fixedParent, sensitiveDataOrigin: generated in and never leaving this TPM;
//   - not userWithAuth: usable only through its policy, so the PCR binding cannot be bypassed
//     with the (empty) auth value.
func checkEphemeralKey(pub *tpm2.TPMTPublic) (*rsa.PublicKey, error) {
	if pub.Type != tpm2.TPMAlgRSA {
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub is a key of type 0x%x, not RSA", uint16(pub.Type))
	}
	if pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub's nameAlg is 0x%x, not SHA-256", uint16(pub.NameAlg))
	}
	a := pub.ObjectAttributes
	switch {
	case !a.Decrypt:
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub is not a decryption key")
	case a.SignEncrypt:
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub is a signing key; the ephemeral key must be decrypt-only")
	case a.Restricted:
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub is restricted; the ephemeral key must be an unrestricted decryption key")
	case !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin:
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub is not a TPM-generated, non-duplicable key (fixedTPM=%t fixedParent=%t sensitiveDataOrigin=%t)",
			a.FixedTPM, a.FixedParent, a.SensitiveDataOrigin)
	case a.UserWithAuth:
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub has userWithAuth set: it could be used with its auth value instead of its PCR policy")
	case a.EncryptedDuplication:
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub has encryptedDuplication set")
	}
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub has no RSA parameters: %v", err)
	}
	if parms.KeyBits != 2048 {
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub is RSA-%d; the ephemeral key is RSA-2048", parms.KeyBits)
	}
	if parms.Symmetric.Algorithm != tpm2.TPMAlgNull {
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub has a symmetric algorithm; an unrestricted decryption key has none")
	}
	// The inner key is wrapped with RSAES-PKCS1-v1_5 (wire.EncryptedToken): a key bound to OAEP
	// could not unwrap it.
	if s := parms.Scheme.Scheme; s != tpm2.TPMAlgNull && s != tpm2.TPMAlgRSAES {
		return nil, refuse(CodeEncKeyInvalid, "EncKeyPub's scheme 0x%x cannot decrypt RSAES-PKCS1-v1_5", uint16(s))
	}
	return rsaPublicKey(pub, parms, CodeEncKeyInvalid, "EncKeyPub")
}

// rsaPublicKey extracts the RSA public key of pub, requiring the modulus to have the declared
// size and the exponent to be 65537 (0 in a TPMS_RSA_PARMS means 65537).
func rsaPublicKey(pub *tpm2.TPMTPublic, parms *tpm2.TPMSRSAParms, code, field string) (*rsa.PublicKey, error) {
	if parms.KeyBits < 2048 {
		return nil, refuse(code, "%s is RSA-%d; at least 2048 bits are required", field, parms.KeyBits)
	}
	if parms.Exponent != 0 && parms.Exponent != 65537 {
		return nil, refuse(code, "%s has public exponent %d; only 65537 is accepted", field, parms.Exponent)
	}
	unique, err := pub.Unique.RSA()
	if err != nil {
		return nil, refuse(code, "%s has no RSA modulus: %v", field, err)
	}
	key, err := tpm2.RSAPub(parms, unique)
	if err != nil {
		return nil, refuse(code, "%s: %v", field, err)
	}
	if len(unique.Buffer) != int(parms.KeyBits)/8 || key.N.BitLen() != int(parms.KeyBits) {
		return nil, refuse(code, "%s's modulus is not %d bits", field, parms.KeyBits)
	}
	return key, nil
}

// verifyRSASSA verifies an RSASSA-PKCS1-v1_5 SHA-256 signature over msg (the raw TPMS_ATTEST).
func verifyRSASSA(key *rsa.PublicKey, msg, sig []byte) error {
	d := sha256.Sum256(msg)
	return rsa.VerifyPKCS1v15(key, crypto.SHA256, d[:], sig)
}

// parseAttest parses a TPMS_ATTEST that the AK signed and checks its generic fields: magic,
// structure type, and empty qualifying data. Azure's guest client quotes and certifies with empty
// qualifying data (AZGA Tss2Wrapper.cpp; reference/tpm.md §3.2). Whether MAA refuses non-empty
// qualifying data is UNCONFIRMED; the emulator does, since nothing in the protocol would check it.
func parseAttest(data []byte, want tpm2.TPMST, code, field string) (*tpm2.TPMSAttest, error) {
	a, err := unmarshalExact[tpm2.TPMSAttest](data)
	if err != nil {
		return nil, refuse(code, "%s is not a TPMS_ATTEST: %v", field, err)
	}
	if a.Magic != tpm2.TPMGeneratedValue {
		return nil, refuse(code, "%s was not generated by a TPM (magic 0x%x)", field, uint32(a.Magic))
	}
	if a.Type != want {
		return nil, refuse(code, "%s is a TPMS_ATTEST of type 0x%x, want 0x%x", field, uint16(a.Type), uint16(want))
	}
	if len(a.ExtraData.Buffer) != 0 {
		return nil, refuse(code, "%s carries %d bytes of qualifying data; Azure's guest client sends none", field, len(a.ExtraData.Buffer))
	}
	return a, nil
}

// checkPCRSelection requires the quote to select exactly the SHA-256 bank and exactly PcrSet.
func checkPCRSelection(sel tpm2.TPMLPCRSelection, pcrSet []uint32) error {
	if len(sel.PCRSelections) != 1 {
		return refuse(CodePcrSelectionMismatch, "PcrQuote selects %d PCR banks; exactly one (SHA-256) is expected", len(sel.PCRSelections))
	}
	s := sel.PCRSelections[0]
	if s.Hash != tpm2.TPMAlgSHA256 {
		return refuse(CodePcrSelectionMismatch, "PcrQuote selects the bank of hash 0x%x, not SHA-256", uint16(s.Hash))
	}
	var quoted []uint32
	for i, b := range s.PCRSelect {
		for bit := range 8 {
			if b&(1<<bit) != 0 {
				quoted = append(quoted, uint32(i*8+bit))
			}
		}
	}
	if !slices.Equal(quoted, pcrSet) {
		return refuse(CodePcrSelectionMismatch, "PcrQuote covers PCRs %v but PcrSet is %v", quoted, pcrSet)
	}
	return nil
}

// digestPCRs is the quote's pcrDigest over the sent values: SHA-256 of their concatenation in
// ascending PCR order (TPM 2.0 Part 1, PCR selection order; pcrs is sorted by decodeAttestationInfo).
func digestPCRs(pcrs []pcrValue) []byte {
	h := sha256.New()
	for _, p := range pcrs {
		h.Write(p.digest)
	}
	return h.Sum(nil)
}

// policyPCRDigest is the policy digest of a trial session that ran only TPM2_PolicyPCR over sel
// with the given PCR digest: SHA-256(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || pcrDigest),
// what AZGA's GetEphemeralKeyPolicyDigest computes with a trial session.
func policyPCRDigest(sel tpm2.TPMLPCRSelection, pcrDigest []byte) ([]byte, error) {
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: pcrDigest}, Pcrs: sel}).Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}

// checkSameBoot is the emulator's anti-replay binding between the two signed structures: the
// ephemeral key's certification and the quote must come from the same TPM boot (equal resetCount
// and restartCount, equal firmware) and close in TPM time. Without it, a certify info captured
// before a reboot could be combined with a fresh quote.
func checkSameBoot(quote, certify *tpm2.TPMSAttest, maxSkew time.Duration) error {
	q, c := quote.ClockInfo, certify.ClockInfo
	if q.ResetCount != c.ResetCount || q.RestartCount != c.RestartCount {
		return refuse(CodeEvidenceBootMismatch,
			"EncKeyCertifyInfo and PcrQuote come from different TPM boots (resetCount %d vs %d, restartCount %d vs %d)",
			c.ResetCount, q.ResetCount, c.RestartCount, q.RestartCount)
	}
	if quote.FirmwareVersion != certify.FirmwareVersion {
		return refuse(CodeEvidenceBootMismatch, "EncKeyCertifyInfo and PcrQuote report different TPM firmware versions")
	}
	if d := absDiff(q.Clock, c.Clock); d > uint64(maxSkew.Milliseconds()) {
		return refuse(CodeEvidenceClockSkew, "EncKeyCertifyInfo and PcrQuote are %dms apart in TPM time; at most %s is accepted", d, maxSkew)
	}
	return nil
}

func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}

// parseTPM2BPublic parses a marshalled TPM2B_PUBLIC and returns the TPMT_PUBLIC with its raw bytes
// (from which the object's Name is computed, so that a re-encoding cannot change the Name).
func parseTPM2BPublic(data []byte) (*tpm2.TPMTPublic, []byte, error) {
	if len(data) < 2 {
		return nil, nil, errors.New("shorter than its size field")
	}
	size := int(binary.BigEndian.Uint16(data))
	if size != len(data)-2 {
		return nil, nil, fmt.Errorf("size field says %d bytes, %d follow", size, len(data)-2)
	}
	area := data[2:]
	pub, err := unmarshalExact[tpm2.TPMTPublic](area)
	if err != nil {
		return nil, nil, err
	}
	return pub, area, nil
}

// objectName is the TPM Name of an object: nameAlg || H_nameAlg(TPMT_PUBLIC). Only SHA-256 is
// used here (checkEphemeralKey requires it).
func objectName(nameAlg tpm2.TPMIAlgHash, publicArea []byte) []byte {
	h := sha256.Sum256(publicArea)
	return append(binary.BigEndian.AppendUint16(nil, uint16(nameAlg)), h[:]...)
}

// unmarshalExact unmarshals a TPM structure and requires data to be exactly its canonical
// encoding: go-tpm's Unmarshal ignores trailing bytes and tolerates some truncations, and a
// structure whose signed bytes hold more than what we parsed must not be accepted. A panic in the
// reflection-based decoder on hostile input is turned into an error.
func unmarshalExact[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](data []byte) (out *T, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("malformed TPM structure: %v", r)
		}
	}()
	v, err := tpm2.Unmarshal[T, P](data)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(*v), data) {
		return nil, errors.New("trailing or non-canonical bytes")
	}
	return v, nil
}
