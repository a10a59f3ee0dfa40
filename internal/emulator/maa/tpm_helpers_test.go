package maa

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"math/big"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/attested-kv/attested-kv/internal/testcert"
)

// The helpers below drive the in-process Microsoft reference TPM (go-tpm-tools simulator) with
// go-tpm commands, the way Azure's guest client drives a vTPM (AZGA Tss2Wrapper.cpp): an AK that
// quotes SHA-256 PCRs with empty qualifying data, an ephemeral PCR-bound key created in the NULL
// hierarchy and certified by the AK. They exist so that tests can also build evidence Azure's
// client would never send (a key without policy, a quote by another key, ...), which the
// production collector (internal/tpm) rightly cannot produce.

// testTPM is one simulator, powered on, closed at the end of the test.
type testTPM struct {
	sim *simulator.Simulator
	tpm transport.TPM
}

func openTPM(t testing.TB) *testTPM {
	t.Helper()
	sim, err := simulator.Get()
	if err != nil {
		t.Skipf("TPM simulator unavailable (needs cgo): %v", err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	return &testTPM{sim: sim, tpm: transport.FromReadWriter(sim)}
}

// reset reboots the TPM: resetCount advances, PCRs return to zero, persistent objects remain.
func (x *testTPM) reset(t testing.TB) {
	t.Helper()
	if err := x.sim.Reset(); err != nil {
		t.Fatalf("TPM reset: %v", err)
	}
}

// tpmKey is a loaded TPM key.
type tpmKey struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	// pub is the marshalled TPM2B_PUBLIC, as sent in AikPub / EncKeyPub.
	pub []byte
	rsa *rsa.PublicKey
}

func (k tpmKey) auth(s tpm2.Session) tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: s}
}

// akTemplate is an attestation key template: RSA-2048 restricted signing, RSASSA-SHA256.
// unique varies the key (a primary key is a function of hierarchy seed and template).
func akTemplate(unique byte) tpm2.TPMTPublic {
	u := make([]byte, 256)
	u[0] = unique
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgRSA,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
			Restricted: true, SignEncrypt: true, NoDA: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTRSAScheme{
				Scheme:  tpm2.TPMAlgRSASSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			KeyBits: 2048,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: u}),
	}
}

// ephemeralTemplate is AZGA's ephemeral key template (Tss2Util.cpp
// PopulateEphemeralKeyPublicTemplate) with the given authPolicy.
func ephemeralTemplate(policy []byte) tpm2.TPMTPublic {
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

// createPrimary creates a primary key in hierarchy h.
func (x *testTPM) createPrimary(t testing.TB, h tpm2.TPMHandle, tmpl tpm2.TPMTPublic) tpmKey {
	t.Helper()
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: h, InPublic: tpm2.New2B(tmpl)}.Execute(x.tpm)
	if err != nil {
		t.Fatalf("CreatePrimary: %v", err)
	}
	return loadedKey(t, rsp.ObjectHandle, rsp.Name, rsp.OutPublic)
}

// loadedKey is the tpmKey of the object loaded at handle with the given name and public area.
func loadedKey(t testing.TB, handle tpm2.TPMHandle, name tpm2.TPM2BName, out tpm2.TPM2BPublic) tpmKey {
	t.Helper()
	pub, err := out.Contents()
	if err != nil {
		t.Fatal(err)
	}
	return tpmKey{handle: handle, name: name, pub: tpm2.Marshal(out), rsa: tpmRSAPub(t, pub)}
}

// persistAK makes ak persistent at handle (Azure's AK lives at 0x81000003) and returns it there.
func (x *testTPM) persistAK(t testing.TB, ak tpmKey, handle tpm2.TPMHandle) tpmKey {
	t.Helper()
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: ak.handle, Name: ak.name},
		PersistentHandle: handle,
	}).Execute(x.tpm); err != nil {
		t.Fatalf("EvictControl: %v", err)
	}
	x.flush(t, ak.handle)
	ak.handle = handle
	return ak
}

func (x *testTPM) flush(t testing.TB, h tpm2.TPMHandle) {
	t.Helper()
	if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(x.tpm); err != nil {
		t.Fatalf("FlushContext: %v", err)
	}
}

// pcrSelection selects pcrs of the SHA-256 bank (3-byte bitmap, as TSS2 sends it).
func pcrSelection(pcrs []uint32) tpm2.TPMLPCRSelection {
	bitmap := make([]byte, 3)
	for _, p := range pcrs {
		bitmap[p/8] |= 1 << (p % 8)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: bitmap}}}
}

func (x *testTPM) extend(t testing.TB, pcr int, digest []byte) {
	t.Helper()
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{
			HashAlg: tpm2.TPMAlgSHA256, Digest: digest,
		}}},
	}).Execute(x.tpm); err != nil {
		t.Fatalf("PCRExtend %d: %v", pcr, err)
	}
}

func (x *testTPM) readPCRs(t testing.TB, pcrs []uint32) [][]byte {
	t.Helper()
	var out [][]byte
	for _, p := range pcrs {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: pcrSelection([]uint32{p})}.Execute(x.tpm)
		if err != nil || len(rsp.PCRValues.Digests) != 1 {
			t.Fatalf("PCRRead %d: %v", p, err)
		}
		out = append(out, rsp.PCRValues.Digests[0].Buffer)
	}
	return out
}

// quote is TPM2_Quote by ak over pcrs of the SHA-256 bank with empty qualifying data and the
// key's own scheme, as AZGA's GetPCRQuote does. It returns the TPMS_ATTEST bytes and the raw
// signature.
func (x *testTPM) quote(t testing.TB, ak tpmKey, pcrs []uint32) ([]byte, []byte) {
	t.Helper()
	return x.quoteSelection(t, ak, pcrSelection(pcrs))
}

// quoteSelection is quote over any PCR selection (another bank, several banks).
func (x *testTPM) quoteSelection(t testing.TB, ak tpmKey, sel tpm2.TPMLPCRSelection) ([]byte, []byte) {
	t.Helper()
	rsp, err := tpm2.Quote{
		SignHandle: ak.auth(tpm2.PasswordAuth(nil)),
		InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect:  sel,
	}.Execute(x.tpm)
	if err != nil {
		t.Fatalf("Quote: %v", err)
	}
	return rsp.Quoted.Bytes(), rsaSig(t, rsp.Signature)
}

// certify is TPM2_Certify of obj by ak with empty qualifying data.
func (x *testTPM) certify(t testing.TB, obj, ak tpmKey) ([]byte, []byte) {
	t.Helper()
	rsp, err := tpm2.Certify{
		ObjectHandle: obj.auth(tpm2.PasswordAuth(nil)),
		SignHandle:   ak.auth(tpm2.PasswordAuth(nil)),
		InScheme:     tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(x.tpm)
	if err != nil {
		t.Fatalf("Certify: %v", err)
	}
	return rsp.CertifyInfo.Bytes(), rsaSig(t, rsp.Signature)
}

// rsaSig returns the raw signature bytes of an RSASSA or RSAPSS signature (PcrSignature carries
// no scheme: the emulator verifies it as RSASSA-PKCS1-v1_5 SHA-256 whatever the key signed with).
func rsaSig(t testing.TB, sig tpm2.TPMTSignature) []byte {
	t.Helper()
	if s, err := sig.Signature.RSASSA(); err == nil {
		return s.Sig.Buffer
	}
	s, err := sig.Signature.RSAPSS()
	if err != nil {
		t.Fatalf("signature is neither RSASSA nor RSAPSS: %v", err)
	}
	return s.Sig.Buffer
}

// signWithTicket signs msg with the (restricted) key k the one way TPM2_Sign allows a restricted
// key to sign data it did not generate: TPM2_Hash first, whose ticket vouches that msg does not
// begin with TPM_GENERATED_VALUE. It is what anyone who can use the AK can sign; a TPMS_ATTEST so
// signed differs from a TPM's own in its magic alone.
func (x *testTPM) signWithTicket(t testing.TB, k tpmKey, msg []byte) []byte {
	t.Helper()
	h, err := tpm2.Hash{Data: tpm2.TPM2BMaxBuffer{Buffer: msg}, HashAlg: tpm2.TPMAlgSHA256, Hierarchy: tpm2.TPMRHEndorsement}.Execute(x.tpm)
	if err != nil {
		t.Fatalf("Hash: %v", err)
	}
	rsp, err := tpm2.Sign{
		KeyHandle:  k.auth(tpm2.PasswordAuth(nil)),
		Digest:     h.OutHash,
		InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		Validation: h.Validation,
	}.Execute(x.tpm)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return rsaSig(t, rsp.Signature)
}

// duplicableParentTemplate is a storage key (RSA-2048 restricted decryption, AES-128-CFB) with
// fixedTPM and fixedParent clear: a primary key must have both set or both clear, so a key with
// fixedTPM clear and fixedParent set exists only as the child of such a parent, which can be
// duplicated to another TPM, or to software, with its children.
func duplicableParentTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgRSA,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			SensitiveDataOrigin: true, UserWithAuth: true, Restricted: true, Decrypt: true, NoDA: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: aes128CFB(),
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   2048,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
	}
}

func aes128CFB() tpm2.TPMTSymDefObject {
	return tpm2.TPMTSymDefObject{
		Algorithm: tpm2.TPMAlgAES,
		KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
		Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
	}
}

// createUnderDuplicableParent creates and loads a key from tmpl as the child of a
// duplicableParentTemplate primary in the NULL hierarchy, which it then flushes (the simulator
// holds only three loaded objects). The child is loaded, not flushed.
func (x *testTPM) createUnderDuplicableParent(t testing.TB, tmpl tpm2.TPMTPublic) tpmKey {
	t.Helper()
	parent := x.createPrimary(t, tpm2.TPMRHNull, duplicableParentTemplate())
	defer x.flush(t, parent.handle)
	auth := parent.auth(tpm2.PasswordAuth(nil))
	c, err := tpm2.Create{ParentHandle: auth, InPublic: tpm2.New2B(tmpl)}.Execute(x.tpm)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	l, err := tpm2.Load{ParentHandle: auth, InPrivate: c.OutPrivate, InPublic: c.OutPublic}.Execute(x.tpm)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return loadedKey(t, l.ObjectHandle, l.Name, c.OutPublic)
}

// tpmRSAPub is the RSA public key of an RSA public area.
func tpmRSAPub(t testing.TB, pub *tpm2.TPMTPublic) *rsa.PublicKey {
	t.Helper()
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		t.Fatal(err)
	}
	unique, err := pub.Unique.RSA()
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpm2.RSAPub(parms, unique)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// policyPCRDigestOnTPM computes the PolicyPCR digest over the current values of pcrs with a trial
// session: the TPM's own computation, independent of the emulator's PolicyCalculator.
func (x *testTPM) policyPCRDigestOnTPM(t testing.TB, pcrs []uint32) []byte {
	t.Helper()
	return x.policyPCRDigestOnTPMWith(t, tpm2.TPMAlgSHA256, pcrs)
}

// policyPCRDigestOnTPMWith is policyPCRDigestOnTPM in a trial session of hash alg (the nameAlg of
// the key the policy is for).
func (x *testTPM) policyPCRDigestOnTPMWith(t testing.TB, alg tpm2.TPMIAlgHash, pcrs []uint32) []byte {
	t.Helper()
	sess, closer, err := tpm2.PolicySession(x.tpm, alg, 16, tpm2.Trial())
	if err != nil {
		t.Fatalf("trial session: %v", err)
	}
	defer func() { _ = closer() }()
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: pcrSelection(pcrs)}).Execute(x.tpm); err != nil {
		t.Fatalf("PolicyPCR: %v", err)
	}
	rsp, err := tpm2.PolicyGetDigest{PolicySession: sess.Handle()}.Execute(x.tpm)
	if err != nil {
		t.Fatalf("PolicyGetDigest: %v", err)
	}
	return rsp.PolicyDigest.Buffer
}

// decrypt unwraps ciphertext (RSAES) with the ephemeral key under a PolicyPCR session, as AZGA's
// DecryptWithEphemeralKey does: it works only in the PCR state the key is bound to.
func (x *testTPM) decrypt(t testing.TB, key tpmKey, pcrs []uint32, ciphertext []byte) ([]byte, error) {
	t.Helper()
	sess, closer, err := tpm2.PolicySession(x.tpm, tpm2.TPMAlgSHA256, 16)
	if err != nil {
		t.Fatalf("policy session: %v", err)
	}
	defer func() { _ = closer() }()
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: pcrSelection(pcrs)}).Execute(x.tpm); err != nil {
		t.Fatalf("PolicyPCR: %v", err)
	}
	rsp, err := tpm2.RSADecrypt{
		KeyHandle:  key.auth(sess),
		CipherText: tpm2.TPM2BPublicKeyRSA{Buffer: ciphertext},
		InScheme:   tpm2.TPMTRSADecrypt{Scheme: tpm2.TPMAlgRSAES},
	}.Execute(x.tpm)
	if err != nil {
		return nil, err
	}
	return rsp.Message.Buffer, nil
}

// clockSet advances the TPM's Clock by d with TPM2_ClockSet (not wrapped by go-tpm's new API,
// so sent raw: owner authorization with an empty password session).
func (x *testTPM) clockAdvance(t testing.TB, d time.Duration) {
	t.Helper()
	rsp, err := tpm2.ReadClock{}.Execute(x.tpm)
	if err != nil {
		t.Fatalf("ReadClock: %v", err)
	}
	newTime := rsp.CurrentTime.ClockInfo.Clock + uint64(d.Milliseconds())
	cmd := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTSessions))
	cmd = binary.BigEndian.AppendUint32(cmd, 0) // size, patched below
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMCCClockSet))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRHOwner))
	cmd = binary.BigEndian.AppendUint32(cmd, 9) // authorization area size
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRSPW))
	cmd = append(cmd, 0, 0, 0, 0, 0) // nonce size 0, attributes 0, hmac size 0
	cmd = binary.BigEndian.AppendUint64(cmd, newTime)
	binary.BigEndian.PutUint32(cmd[2:], uint32(len(cmd)))
	out, err := x.tpm.Send(cmd)
	if err != nil {
		t.Fatalf("ClockSet: %v", err)
	}
	if len(out) < 10 || binary.BigEndian.Uint32(out[6:]) != 0 {
		t.Fatalf("ClockSet: TPM answered %x", out)
	}
}

// testCA is a vTPM-like PKI: root -> intermediate -> AK certificates, the shape of Azure's
// "Azure Virtual TPM Root Certificate Authority 2023" -> "Global Virtual TPM CA - 03" -> leaf.
type testCA struct {
	root, inter       *x509.Certificate
	rootKey, interKey *rsa.PrivateKey
}

// oidTCGAIKCertificate is the TCG key purpose of AK certificates (2.23.133.8.3).
var oidTCGAIKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 3}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	ca := &testCA{rootKey: testRSAKey(t), interKey: testRSAKey(t)}
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " Root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	ca.root = testcert.Issue(t, rootTmpl, rootTmpl, &ca.rootKey.PublicKey, ca.rootKey)
	interTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name + " Intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(2, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		MaxPathLenZero: true,
	}
	ca.inter = testcert.Issue(t, interTmpl, ca.root, &ca.interKey.PublicKey, ca.rootKey)
	return ca
}

// akCertOptions shape an AK certificate.
type akCertOptions struct {
	cn                 string
	notBefore          time.Time
	notAfter           time.Time
	criticalDirNameSAN bool
	// keyUsage replaces digitalSignature when not zero.
	keyUsage x509.KeyUsage
	// extensions are added to the certificate as they are.
	extensions []pkix.Extension
}

func (ca *testCA) issueAKCert(t testing.TB, key *rsa.PublicKey, o akCertOptions) *x509.Certificate {
	t.Helper()
	if o.cn == "" {
		o.cn = "7f3c2a9e-1b4d-4e8f-9a6b-2c5d8e1f0a3b.TrustedVM.Azure.windows.net"
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().AddDate(1, 0, 0)
	}
	if o.keyUsage == 0 {
		o.keyUsage = x509.KeyUsageDigitalSignature
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: o.cn},
		NotBefore: o.notBefore, NotAfter: o.notAfter,
		KeyUsage:              o.keyUsage,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{oidTCGAIKCertificate},
		BasicConstraintsValid: true,
	}
	if o.criticalDirNameSAN {
		// A TCG-style SAN holding only a directoryName ([4]), marked critical: crypto/x509 leaves
		// it in UnhandledCriticalExtensions.
		dn, _ := asn1.Marshal(pkix.Name{CommonName: "TPM"}.ToRDNSequence())
		gn, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: dn})
		san, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: gn})
		tmpl.ExtraExtensions = []pkix.Extension{{Id: oidSubjectAltName, Critical: true, Value: san}}
	}
	tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, o.extensions...)
	return testcert.Issue(t, tmpl, ca.inter, key, ca.interKey)
}

func testRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sha256Sum(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}
