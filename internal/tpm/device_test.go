package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// The tests run against the Microsoft reference TPM 2.0 compiled into go-tpm-tools' simulator:
// a real TPM implementation, not a mock. It holds process-wide state, so no test here is parallel.

type testTPM struct {
	sim *simulator.Simulator
	t   transport.TPMCloser
}

func newSim(t testing.TB) *testTPM {
	t.Helper()
	sim, err := simulator.Get()
	if err != nil {
		t.Fatalf("TPM simulator: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	return &testTPM{sim: sim, t: nopCloser{transport.FromReadWriter(sim)}}
}

// nopCloser keeps Device.Close from closing the simulator the test cleanup closes.
type nopCloser struct{ transport.TPM }

func (nopCloser) Close() error { return nil }

var testCA = func() func(t testing.TB) *CA {
	var ca *CA
	return func(t testing.TB) *CA {
		t.Helper()
		if ca == nil {
			var err error
			if ca, err = NewCA(); err != nil {
				t.Fatal(err)
			}
		}
		return ca
	}
}()

// replaceAKCert writes der at AKCertIndex in place of the AK certificate provisioning wrote.
func replaceAKCert(t testing.TB, x *testTPM, der []byte) {
	t.Helper()
	if err := undefineNV(x.t, AKCertIndex); err != nil {
		t.Fatal(err)
	}
	if err := writeAKCert(x.t, der); err != nil {
		t.Fatal(err)
	}
}

// provisioned returns a simulator provisioned like an Azure vTPM and a Device on it that reads
// its event log from logPath ("" = none).
func provisioned(t testing.TB, logPath string) (*testTPM, *Device, *x509.Certificate) {
	t.Helper()
	x := newSim(t)
	cert, err := Provision(context.Background(), x.t, testCA(t), ProvisionOptions{VMID: "6e8a1b40-8c47-4a3e-9d0f-0f6c3a1e2b7d"})
	if err != nil {
		t.Fatalf("Provision: %v", err)
	}
	return x, New(x.t, WithEventLogPath(logPath)), cert
}

func extendPCR(t testing.TB, tp transport.TPM, pcr int, data string) {
	t.Helper()
	d := sha256.Sum256([]byte(data))
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
	}).Execute(tp); err != nil {
		t.Fatalf("PCRExtend: %v", err)
	}
}

func transientHandles(t testing.TB, tp transport.TPM) []tpm2.TPMHandle {
	t.Helper()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x80000000, PropertyCount: 64}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	h, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	return h.Handle
}

func TestEvidenceIsWhatAzureGuestSends(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "binary_bios_measurements")
	if err := os.WriteFile(logPath, []byte("not parsed here"), 0o644); err != nil {
		t.Fatal(err)
	}
	x, dev, cert := provisioned(t, logPath)
	extendPCR(t, x.t, 7, "secure boot")
	ev, err := dev.Evidence(context.Background())
	if err != nil {
		t.Fatalf("Evidence: %v", err)
	}

	// AK certificate: trimmed DER, chains to the CA, certifies the AK.
	if !bytes.Equal(ev.AKCert, cert.Raw) {
		t.Fatalf("AKCert is %d bytes, want the %d-byte certificate without NV padding", len(ev.AKCert), len(cert.Raw))
	}
	ca := testCA(t)
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(ca.Root)
	inters.AddCert(ca.Intermediate)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("AK certificate does not chain: %v", err)
	}
	akPub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](ev.AKPub)
	if err != nil {
		t.Fatalf("AKPub is not a TPM2B_PUBLIC: %v", err)
	}
	akArea, _ := akPub.Contents()
	akKey, err := tpm2.Pub(*akArea)
	if err != nil {
		t.Fatal(err)
	}
	if !akKey.(*rsa.PublicKey).Equal(cert.PublicKey) {
		t.Fatal("AKPub is not the certified key")
	}

	// Quote: bare TPMS_ATTEST signed by the AK over SHA-256 PCRs 0-7, empty qualifying data.
	sum := sha256.Sum256(ev.Quote)
	if err := rsa.VerifyPKCS1v15(akKey.(*rsa.PublicKey), crypto.SHA256, sum[:], ev.QuoteSignature); err != nil {
		t.Fatalf("quote signature: %v", err)
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](ev.Quote)
	if err != nil {
		t.Fatal(err)
	}
	if len(att.ExtraData.Buffer) != 0 {
		t.Fatalf("quote qualifying data %x, want empty as AZGA sends", att.ExtraData.Buffer)
	}
	qi, _ := att.Attested.Quote()
	if sel := qi.PCRSelect.PCRSelections; len(sel) != 1 || sel[0].Hash != tpm2.TPMAlgSHA256 || !bytes.Equal(sel[0].PCRSelect, []byte{0xff, 0, 0}) {
		t.Fatalf("quote selection %+v, want SHA-256 PCRs 0-7", sel)
	}
	var idx []uint32
	h := sha256.New()
	for _, p := range ev.PCRs {
		idx = append(idx, p.Index)
		h.Write(p.Digest)
	}
	if !slices.Equal(idx, AzurePCRs) || !bytes.Equal(h.Sum(nil), qi.PCRDigest.Buffer) {
		t.Fatalf("PCRs %v do not hash to the quoted digest", idx)
	}

	// Ephemeral key: AZGA's template, certified by the AK under its name.
	encPub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](ev.EncKeyPub)
	if err != nil {
		t.Fatal(err)
	}
	encArea, _ := encPub.Contents()
	a := encArea.ObjectAttributes
	if !a.Decrypt || a.SignEncrypt || a.Restricted || a.UserWithAuth || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		t.Fatalf("ephemeral key attributes %+v", a)
	}
	wantPolicy, _ := PolicyPCRDigest(pcrSelection(AzurePCRs), qi.PCRDigest.Buffer)
	if !bytes.Equal(encArea.AuthPolicy.Buffer, wantPolicy) {
		t.Fatal("ephemeral key policy is not PolicyPCR over the quoted PCRs")
	}
	sum = sha256.Sum256(ev.EncKeyCertifyInfo)
	if err := rsa.VerifyPKCS1v15(akKey.(*rsa.PublicKey), crypto.SHA256, sum[:], ev.EncKeyCertifyInfoSignature); err != nil {
		t.Fatalf("certify signature: %v", err)
	}
	cinfo, err := tpm2.Unmarshal[tpm2.TPMSAttest](ev.EncKeyCertifyInfo)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := cinfo.Attested.Certify()
	if err != nil || cinfo.Type != tpm2.TPMSTAttestCertify {
		t.Fatalf("certify info is not a CERTIFY: %v", err)
	}
	name, err := tpm2.ObjectName(encArea)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ci.Name.Buffer, name.Buffer) {
		t.Fatal("certification names another object")
	}
	if string(ev.TCGLog) != "not parsed here" {
		t.Fatalf("TCG log %q", ev.TCGLog)
	}
	// The ephemeral key stays loaded for the decryption, and only it.
	if hs := transientHandles(t, x.t); len(hs) != 1 {
		t.Fatalf("after Evidence: transient handles %v, want the ephemeral key alone", hs)
	}

	// The token key MAA wraps to EncKeyPub opens only in this TPM.
	encKey, err := tpm2.Pub(*encArea)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("0123456789abcdef0123456789abcdef")
	//lint:ignore SA1019 RSAES-PKCS1-v1_5 is MAA's wire format for the token key (see internal/maa/wire.go)
	wrapped, err := rsa.EncryptPKCS1v15(rand.Reader, encKey.(*rsa.PublicKey), secret)
	if err != nil {
		t.Fatal(err)
	}
	got, err := dev.DecryptWithEphemeralKey(context.Background(), ev.EncKeyPub, wrapped)
	if err != nil {
		t.Fatalf("DecryptWithEphemeralKey: %v", err)
	}
	if !bytes.Equal(got, secret) {
		t.Fatal("decrypted the wrong bytes")
	}
	if hs := transientHandles(t, x.t); len(hs) != 0 {
		t.Fatalf("DecryptWithEphemeralKey left transient handles %v", hs)
	}
	// One decryption per evidence.
	if _, err := dev.DecryptWithEphemeralKey(context.Background(), ev.EncKeyPub, wrapped); !errors.Is(err, ErrNoEphemeralKey) {
		t.Fatalf("second decryption: %v, want ErrNoEphemeralKey", err)
	}
	// A new Evidence replaces the key, and Close flushes it.
	if _, err := dev.Evidence(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.Evidence(context.Background()); err != nil {
		t.Fatal(err)
	}
	if hs := transientHandles(t, x.t); len(hs) != 1 {
		t.Fatalf("after two Evidence calls: transient handles %v, want one", hs)
	}
	dev.Close()
	if hs := transientHandles(t, x.t); len(hs) != 0 {
		t.Fatalf("Close left transient handles %v", hs)
	}
}

func TestDecryptRefusesAnotherState(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, x *testTPM)
		want   error
	}{
		{"same state", func(*testing.T, *testTPM) {}, nil},
		{"PCR 4 extended", func(t *testing.T, x *testTPM) { extendPCR(t, x.t, 4, "another kernel") }, ErrStateChanged},
		{"PCR 0 extended", func(t *testing.T, x *testTPM) { extendPCR(t, x.t, 0, "firmware") }, ErrStateChanged},
		{"PCR 8 extended (not quoted)", func(t *testing.T, x *testTPM) { extendPCR(t, x.t, 8, "grub") }, nil},
		{"TPM reset", func(t *testing.T, x *testTPM) {
			if err := x.sim.Reset(); err != nil {
				t.Fatal(err)
			}
		}, ErrStateChanged},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x, dev, _ := provisioned(t, "")
			ev, err := dev.Evidence(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			encPub, _ := tpm2.Unmarshal[tpm2.TPM2BPublic](ev.EncKeyPub)
			area, _ := encPub.Contents()
			key, _ := tpm2.Pub(*area)
			//lint:ignore SA1019 RSAES-PKCS1-v1_5 is MAA's wire format for the token key (see internal/maa/wire.go)
			wrapped, err := rsa.EncryptPKCS1v15(rand.Reader, key.(*rsa.PublicKey), []byte("k"))
			if err != nil {
				t.Fatal(err)
			}
			tc.change(t, x)
			_, err = dev.DecryptWithEphemeralKey(context.Background(), ev.EncKeyPub, wrapped)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("DecryptWithEphemeralKey: %v, want %v", err, tc.want)
			}
		})
	}
}

// wrapToEphemeral encrypts secret to the ephemeral key of ev, as MAA wraps its response key.
func wrapToEphemeral(t *testing.T, ev *Evidence, secret []byte) []byte {
	t.Helper()
	key, err := ev.EphemeralKey()
	if err != nil {
		t.Fatal(err)
	}
	//lint:ignore SA1019 RSAES-PKCS1-v1_5 is MAA's wire format for the token key (see internal/maa/wire.go)
	wrapped, err := rsa.EncryptPKCS1v15(rand.Reader, key, secret)
	if err != nil {
		t.Fatal(err)
	}
	return wrapped
}

// TestDecryptOnlyWithTheEvidencesKey runs two attestations' Evidence on one Device before either
// decrypts: a decryption must use the key whose public area its own evidence carried, or be
// refused; it must never decrypt with the other evidence's key.
func TestDecryptOnlyWithTheEvidencesKey(t *testing.T) {
	tests := []struct {
		name string
		// between runs between the two Evidence calls.
		between func(t *testing.T, x *testTPM)
		// wantFirst and wantSecond are the errors of decrypting each evidence's ciphertext, the
		// first's first.
		wantFirst, wantSecond error
		sameKey               bool
	}{
		// Another PCR state: another key. The first's ciphertext is refused before the TPM is
		// asked, and the key stays loaded for the second.
		{"PCRs changed", func(t *testing.T, x *testTPM) { extendPCR(t, x.t, 7, "db update") }, ErrEphemeralKeyMismatch, nil, false},
		// Same PCR state: the TPM derives the very same key, so the first decrypts correctly with
		// its own key, which then serves no more decryptions.
		{"same PCRs", func(*testing.T, *testTPM) {}, nil, ErrNoEphemeralKey, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x, dev, _ := provisioned(t, "")
			ctx := context.Background()
			first, err := dev.Evidence(ctx)
			if err != nil {
				t.Fatal(err)
			}
			tc.between(t, x)
			second, err := dev.Evidence(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if same := bytes.Equal(first.EncKeyPub, second.EncKeyPub); same != tc.sameKey {
				t.Fatalf("the two evidences carry the same key: %v, want %v", same, tc.sameKey)
			}
			for _, step := range []struct {
				ev   *Evidence
				want error
			}{{first, tc.wantFirst}, {second, tc.wantSecond}} {
				secret := []byte("inner key of " + fmt.Sprintf("%p", step.ev))
				got, err := dev.DecryptWithEphemeralKey(ctx, step.ev.EncKeyPub, wrapToEphemeral(t, step.ev, secret))
				if !errors.Is(err, step.want) || (step.want == nil) != (err == nil) {
					t.Fatalf("DecryptWithEphemeralKey: %v, want %v", err, step.want)
				}
				if err == nil && !bytes.Equal(got, secret) {
					t.Fatalf("decrypted %q, want %q", got, secret)
				}
			}
			if hs := transientHandles(t, x.t); len(hs) != 0 {
				t.Fatalf("transient handles %v left after both decryptions", hs)
			}
		})
	}
	// A public area that is no ephemeral key of this Device is refused, and leaves the key loaded.
	_, dev, _ := provisioned(t, "")
	ev, err := dev.Evidence(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	otherPub := tpm2.Marshal(tpm2.New2B(tpm2.TPMTPublic{
		Type: tpm2.TPMAlgRSA, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{Decrypt: true},
		Parameters:       tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{Scheme: tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull}, KeyBits: 2048}),
		Unique:           tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: other.N.Bytes()}),
	}))
	for name, pub := range map[string][]byte{"another key": otherPub, "none": nil, "not a public area": []byte("x")} {
		if _, err := dev.DecryptWithEphemeralKey(context.Background(), pub, wrapToEphemeral(t, ev, []byte("k"))); !errors.Is(err, ErrEphemeralKeyMismatch) {
			t.Fatalf("decrypt for %s: %v, want ErrEphemeralKeyMismatch", name, err)
		}
	}
	if _, err := dev.DecryptWithEphemeralKey(context.Background(), ev.EncKeyPub, wrapToEphemeral(t, ev, []byte("k"))); err != nil {
		t.Fatalf("decrypt with the evidence's own key after refusals: %v", err)
	}
}

func TestEvidenceRefusals(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		setup   func(t *testing.T) *Device
		want    error
		emptyOK bool
	}{
		{"no AK", func(t *testing.T) *Device { return New(newSim(t).t, WithEventLogPath("")) }, ErrNoAK, false},
		{"AK without certificate", func(t *testing.T) *Device {
			x, dev, _ := provisioned(t, "")
			if err := undefineNV(x.t, AKCertIndex); err != nil {
				t.Fatal(err)
			}
			return dev
		}, ErrNoAKCert, false},
		{"certificate of another key", func(t *testing.T) *Device {
			x, dev, _ := provisioned(t, "")
			other, _ := rsa.GenerateKey(rand.Reader, 2048)
			cert, err := testCA(t).IssueAKCertificate(&other.PublicKey, "00000000-0000-4000-8000-000000000000")
			if err != nil {
				t.Fatal(err)
			}
			replaceAKCert(t, x, cert.Raw)
			return dev
		}, ErrAKCertMismatch, false},
		{"Azure's placeholder AK certificate", func(t *testing.T) *Device {
			x, dev, cert := provisioned(t, "")
			signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			issuer := &x509.Certificate{Subject: pkix.Name{CommonName: "MICROSOFT AZURE TRUSTED VM RSA 2048"}}
			der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
				SerialNumber: big.NewInt(1), Subject: cert.Subject, NotBefore: cert.NotBefore, NotAfter: cert.NotAfter,
			}, issuer, cert.PublicKey, signer)
			if err != nil {
				t.Fatal(err)
			}
			replaceAKCert(t, x, der)
			return dev
		}, ErrAKCertNotProvisioned, false},
		{"event log unreadable", func(t *testing.T) *Device {
			x, _, _ := provisioned(t, "")
			return New(x.t, WithEventLogPath(dir)) // a directory: exists, cannot be read as a file
		}, ErrEventLog, false},
		{"event log absent at a chosen path", func(t *testing.T) *Device {
			x, _, _ := provisioned(t, "")
			return New(x.t, WithEventLogPath(filepath.Join(dir, "missing")))
		}, ErrEventLog, false},
		{"no event log path", func(t *testing.T) *Device {
			x, _, _ := provisioned(t, "")
			return New(x.t, WithEventLogPath(""))
		}, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := tc.setup(t)
			ev, err := dev.Evidence(context.Background())
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Evidence: %v", err)
				}
				if tc.emptyOK && len(ev.TCGLog) != 0 {
					t.Fatal("want an empty log")
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Evidence: %v, want %v", err, tc.want)
			}
			if _, err := dev.DecryptWithEphemeralKey(context.Background(), nil, []byte("x")); !errors.Is(err, ErrNoEphemeralKey) {
				t.Fatalf("decrypt after failed evidence: %v, want ErrNoEphemeralKey", err)
			}
		})
	}
}

// replaceAK replaces the AK at AKHandle by a key the simulator creates from template (a primary
// key of the endorsement hierarchy, made persistent at AKHandle as the provisioner makes the AK),
// and the AK certificate by one the test CA issues for that key: a TPM provisioned like an Azure
// vTPM in everything but the kind of its AK.
func replaceAK(t *testing.T, x *testTPM, template tpm2.TPMTPublic) {
	t.Helper()
	old, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(AKHandle)}.Execute(x.t)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: tpm2.TPMHandle(AKHandle), Name: old.Name},
		PersistentHandle: tpm2.TPMHandle(AKHandle),
	}).Execute(x.t); err != nil {
		t.Fatalf("evicting the AK: %v", err)
	}
	created, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(template)}.Execute(x.t)
	if err != nil {
		t.Fatalf("CreatePrimary: %v", err)
	}
	defer flush(x.t, created.ObjectHandle)
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: created.ObjectHandle, Name: created.Name},
		PersistentHandle: tpm2.TPMHandle(AKHandle),
	}).Execute(x.t); err != nil {
		t.Fatalf("persisting the key at the AK handle: %v", err)
	}
	area, err := created.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tpm2.Pub(*area)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := testCA(t).IssueAKCertificate(pub, "00000000-0000-4000-8000-000000000001")
	if err != nil {
		t.Fatal(err)
	}
	replaceAKCert(t, x, cert.Raw)
}

// rewritingTPM relays commands to a real (simulated) TPM and lets rewrite alter the successful
// response to each command of code cc: a TPM or a transport that misreports. It counts the
// responses it altered, so that a test can tell the alteration happened.
type rewritingTPM struct {
	transport.TPM
	cc      tpm2.TPMCC
	rewrite func(cmd, rsp []byte) bool // reports whether it altered rsp
	n       int
}

func (r *rewritingTPM) Send(cmd []byte) ([]byte, error) {
	rsp, err := r.TPM.Send(cmd)
	if err != nil || len(cmd) < HeaderSize || tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) != r.cc ||
		len(rsp) < HeaderSize || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err
	}
	rsp = bytes.Clone(rsp)
	if r.rewrite(cmd, rsp) {
		r.n++
	}
	return rsp, nil
}

// flipSignature flips a bit of the signature in a TPM2_Quote or TPM2_Certify response: after the
// header and parameterSize, a TPM2B_ATTEST, then a TPMT_SIGNATURE (sigAlg, hashAlg, TPM2B
// signature; TPM 2.0 Part 3).
func flipSignature(_, rsp []byte) bool {
	off := HeaderSize + 4
	if len(rsp) < off+2 {
		return false
	}
	off += 2 + int(binary.BigEndian.Uint16(rsp[off:])) + 4
	if len(rsp) < off+2 || binary.BigEndian.Uint16(rsp[off:]) == 0 || len(rsp) < off+2+int(binary.BigEndian.Uint16(rsp[off:])) {
		return false
	}
	rsp[off+2+10] ^= 1
	return true
}

// TestEvidenceRefusesAKOfWrongType: the key at the AK handle must be an RSA key for restricted
// signing, which signs only what the TPM itself attests (a quote, a certification), not an
// unrestricted signing key, which signs any digest it is given, nor a decryption key. Each is put
// at the AK handle of the simulator with a certificate of its own, so that nothing but the AK's
// kind is wrong.
func TestEvidenceRefusesAKOfWrongType(t *testing.T) {
	unrestricted := AKTemplate()
	unrestricted.ObjectAttributes.Restricted = false
	// An unrestricted key for both signing and decryption has no scheme of its own (Part 1).
	signDecrypt := unrestricted
	signDecrypt.ObjectAttributes.Decrypt = true
	signDecrypt.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
		KeyBits:   2048,
	})
	ecc := tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgECC,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: AKTemplate().ObjectAttributes,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}, Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
	// misreport sets and clears TPMA_OBJECT bits in a TPM2_ReadPublic response of the AK: header,
	// then outPublic's size, type and nameAlg, then objectAttributes (Part 2, TPMT_PUBLIC).
	misreport := func(set, clear uint32) func(cmd, rsp []byte) bool {
		return func(cmd, rsp []byte) bool {
			const attrs = HeaderSize + 2 + 2 + 2
			if binary.BigEndian.Uint32(cmd[HeaderSize:]) != AKHandle || len(rsp) < attrs+4 {
				return false
			}
			a := binary.BigEndian.Uint32(rsp[attrs:])
			binary.BigEndian.PutUint32(rsp[attrs:], a&^clear|set)
			return true
		}
	}
	const (
		attrDecrypt = 1 << 17 // TPMA_OBJECT decrypt
		attrSign    = 1 << 18 // TPMA_OBJECT sign / encrypt
	)
	tests := []struct {
		name     string
		template tpm2.TPMTPublic
		// rewrite, if set, alters the TPM's TPM2_ReadPublic responses.
		rewrite func(cmd, rsp []byte) bool
		want    error
	}{
		// The control: the AK's own template, replaced the same way, is accepted.
		{name: "restricted RSA signing key", template: AKTemplate()},
		{name: "unrestricted signing key", template: unrestricted, want: ErrAKType},
		{name: "unrestricted signing and decryption key", template: signDecrypt, want: ErrAKType},
		{name: "restricted decryption key (a storage key)", template: tpm2.RSASRKTemplate, want: ErrAKType},
		{name: "ECC restricted signing key", template: ecc, want: ErrAKType},
		// A TPM makes no restricted key that both signs and decrypts, nor an RSA key that does
		// neither (TPM_RC_ATTRIBUTES), so only a TPM or transport that misreports the AK can
		// present one.
		{name: "restricted signing key reported as also decrypting", template: AKTemplate(), rewrite: misreport(attrDecrypt, 0), want: ErrAKType},
		{name: "restricted signing key reported as not signing", template: AKTemplate(), rewrite: misreport(0, attrSign), want: ErrAKType},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x, _, _ := provisioned(t, "")
			replaceAK(t, x, tc.template)
			var tp transport.TPM = x.t
			rw := &rewritingTPM{TPM: x.t, cc: tpm2.TPMCCReadPublic, rewrite: tc.rewrite}
			if tc.rewrite != nil {
				tp = rw
			}
			dev := New(nopCloser{tp}, WithEventLogPath(""))
			_, err := dev.Evidence(context.Background())
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Evidence: %v", err)
				}
				dev.Close()
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Evidence: %v, want %v", err, tc.want)
			}
			if tc.rewrite != nil && rw.n == 0 {
				t.Fatal("the AK's public area was not altered")
			}
			if hs := transientHandles(t, x.t); len(hs) != 0 {
				t.Fatalf("failed Evidence left transient handles %v", hs)
			}
		})
	}
}

// TestEvidenceChecksTPMSignatures: Evidence checks the AK's signatures on the quote and on the
// certification of the ephemeral key before it returns them, so that a TPM or transport fault
// shows here, naming the check, rather than as MAA's refusal. The transport between the Device
// and the simulator flips a bit of the signature in the TPM's response.
func TestEvidenceChecksTPMSignatures(t *testing.T) {
	tests := []struct {
		name string
		cc   tpm2.TPMCC
		want error
		says string
	}{
		{"quote", tpm2.TPMCCQuote, ErrQuote, "TPM quote does not verify: crypto/rsa: verification error"},
		{"certification of the ephemeral key", tpm2.TPMCCCertify, ErrCertify, "does not verify: signature: crypto/rsa: verification error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x, _, _ := provisioned(t, "")
			rw := &rewritingTPM{TPM: x.t, cc: tc.cc, rewrite: flipSignature}
			dev := New(nopCloser{rw}, WithEventLogPath(""))
			_, err := dev.Evidence(context.Background())
			if !errors.Is(err, tc.want) || !errors.Is(err, rsa.ErrVerification) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Evidence: %v, want %v saying %q", err, tc.want, tc.says)
			}
			if rw.n != 1 {
				t.Fatalf("%d signatures altered, want 1", rw.n)
			}
			if hs := transientHandles(t, x.t); len(hs) != 0 {
				t.Fatalf("failed Evidence left transient handles %v", hs)
			}
			// The same Device, the transport no longer altering anything, gathers evidence.
			rw.rewrite = func(_, _ []byte) bool { return false }
			if _, err := dev.Evidence(context.Background()); err != nil {
				t.Fatalf("Evidence once the signatures are intact: %v", err)
			}
			dev.Close()
		})
	}
}

// TestEventLogUnreadable: an event log that exists but cannot be read stops the evidence, and a
// permission error (what a non-root build user meets on the kernel's root-only log) says why and
// the two ways out.
func TestEventLogUnreadable(t *testing.T) {
	dir := t.TempDir()
	unreadable := filepath.Join(dir, "binary_bios_measurements")
	if err := os.WriteFile(unreadable, []byte("log"), 0o000); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		path     string
		asRoot   bool // the case means something when run as root
		wantPerm bool
		says     []string
	}{
		{"permission denied", unreadable, false, true, []string{unreadable, "readable only by root", "run as a user that can read it", `tcg_log`, `to ""`, "secureboot"}},
		{"a directory", dir, true, false, []string{dir, `to ""`}},
		{"missing at a chosen path", filepath.Join(dir, "binary_bios_measurments"), true, false,
			[]string{"binary_bios_measurments does not exist", DefaultEventLogPath, "tcg_log", "--tcg-log", `to ""`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.asRoot && os.Geteuid() == 0 {
				t.Skip("root reads a file of mode 0000")
			}
			x, _, _ := provisioned(t, "")
			dev := New(x.t, WithEventLogPath(tc.path))
			_, err := dev.Evidence(context.Background())
			if !errors.Is(err, ErrEventLog) || errors.Is(err, fs.ErrPermission) != tc.wantPerm {
				t.Fatalf("Evidence: %v, want ErrEventLog (permission error: %v)", err, tc.wantPerm)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "only by root") != tc.wantPerm {
				t.Errorf("error %q: mentions root-only: %v, want %v", err, !tc.wantPerm, tc.wantPerm)
			}
			if hs := transientHandles(t, x.t); len(hs) != 0 {
				t.Fatalf("failed Evidence left transient handles %v", hs)
			}
		})
	}
}

func TestProvisionIsIdempotentAndGuarded(t *testing.T) {
	x := newSim(t)
	ctx := context.Background()
	ca := testCA(t)
	first, err := Provision(ctx, x.t, ca, ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	again, err := Provision(ctx, x.t, ca, ProvisionOptions{})
	if err != nil || !again.Equal(first) {
		t.Fatalf("second Provision: %v (same cert: %v)", err, err == nil && again.Equal(first))
	}
	// A partial provisioning is refused without Replace, repaired with it.
	if err := undefineNV(x.t, AKCertIndex); err != nil {
		t.Fatal(err)
	}
	if _, err := Provision(ctx, x.t, ca, ProvisionOptions{}); !errors.Is(err, ErrProvisioned) {
		t.Fatalf("partial: %v, want ErrProvisioned", err)
	}
	replaced, err := Provision(ctx, x.t, ca, ProvisionOptions{Replace: true, VMID: "vm"})
	if err != nil {
		t.Fatal(err)
	}
	if replaced.Subject.CommonName != "vm.TrustedVM.Azure.windows.net" {
		t.Fatalf("CN %q", replaced.Subject.CommonName)
	}
	got, err := New(x.t).AKCertificate(ctx)
	if err != nil || !got.Equal(replaced) {
		t.Fatalf("AKCertificate: %v", err)
	}
	if hs := transientHandles(t, x.t); len(hs) != 0 {
		t.Fatalf("Provision left transient handles %v", hs)
	}
}

func TestCASaveLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := LoadCA(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadCA of nothing: %v, want ErrNotExist", err)
	}
	ca := testCA(t)
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, caRootKey)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("root key file: %v %v", fi.Mode(), err)
	}
	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	cert, err := loaded.IssueAKCertificate(&key.PublicKey, "vm")
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(ca.Intermediate); err != nil {
		t.Fatalf("loaded CA issues under another key: %v", err)
	}
	// A mismatched key is refused.
	other, _ := NewCA()
	other.Root = ca.Root
	if err := other.Save(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); err == nil {
		t.Fatal("LoadCA accepted keys that do not match the certificates")
	}
}

// relay serves the TPM tp on ln until ln is closed: raw TPM 2.0 commands (swtpm's data channel),
// or commands in the reference simulator's TPM_SEND_COMMAND framing. Each response is written in
// two pieces, to check that the client reads it whole.
func relay(t *testing.T, ln net.Listener, tp transport.TPM, mssim bool) {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	serve := func(conn net.Conn) error {
		var cmd []byte
		if !mssim {
			var err error
			if cmd, err = ReadMessage(conn, 8192); err != nil {
				return err
			}
		} else {
			var hdr [9]byte
			if _, err := io.ReadFull(conn, hdr[:]); err != nil {
				return err
			}
			// TPM_SEND_COMMAND (8, TpmTcpProtocol.h), locality 0, then the command's size.
			if code := binary.BigEndian.Uint32(hdr[:4]); code != 8 || hdr[4] != 0 {
				return fmt.Errorf("mssim command %d at locality %d", code, hdr[4])
			}
			cmd = make([]byte, binary.BigEndian.Uint32(hdr[5:9]))
			if _, err := io.ReadFull(conn, cmd); err != nil {
				return err
			}
		}
		rsp, err := tp.Send(cmd)
		if err != nil {
			return err
		}
		if mssim {
			framed := binary.BigEndian.AppendUint32(nil, uint32(len(rsp)))
			rsp = binary.BigEndian.AppendUint32(append(framed, rsp...), 0)
		}
		if _, err := conn.Write(rsp[:3]); err != nil {
			return err
		}
		_, err = conn.Write(rsp[3:])
		return err
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			for serve(conn) == nil {
			}
			conn.Close()
		}
	}()
}

// listenMssim listens on two consecutive loopback ports, the reference simulator's command and
// platform ports, and returns the command port's listener and the platform port's.
func listenMssim(t *testing.T) (cmd, platform net.Listener) {
	t.Helper()
	for range 20 {
		cmd, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := cmd.Addr().(*net.TCPAddr).Port
		if platform, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+1)); err == nil {
			t.Cleanup(func() { cmd.Close(); platform.Close() })
			return cmd, platform
		}
		cmd.Close()
	}
	t.Fatal("no two consecutive free ports")
	return nil, nil
}

// streamServer listens for one of Open's socket schemes and returns the address to open and the
// listener of the command stream (the platform port of mssim accepts and is never used).
func streamServer(t *testing.T, scheme string) (addr string, ln net.Listener) {
	t.Helper()
	var err error
	switch scheme {
	case SchemeSwtpm:
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	case SchemeUnix:
		ln, err = net.Listen("unix", filepath.Join(t.TempDir(), "tpm.sock"))
	case SchemeMssim:
		var platform net.Listener
		ln, platform = listenMssim(t)
		go func() {
			for {
				conn, err := platform.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { conn.Close() })
			}
		}()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return scheme + ln.Addr().String(), ln
}

// TestOpenStream runs the whole evidence flow over each socket transport, against a loopback
// server that relays the commands to the simulator.
func TestOpenStream(t *testing.T) {
	tests := []struct {
		scheme string
		mssim  bool
	}{
		{SchemeSwtpm, false},
		{SchemeUnix, false},
		{SchemeMssim, true},
	}
	for _, tc := range tests {
		t.Run(strings.TrimSuffix(tc.scheme, ":"), func(t *testing.T) {
			x, _, _ := provisioned(t, "")
			addr, ln := streamServer(t, tc.scheme)
			relay(t, ln, x.t, tc.mssim)
			ctx := context.Background()
			dev, err := Open(ctx, addr, WithEventLogPath(""))
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			if _, err := dev.Evidence(ctx); err != nil {
				t.Fatalf("Evidence over %s: %v", addr, err)
			}
		})
	}
}

// silentServer accepts connections on ln, reads whatever comes and never answers, until the test
// ends.
func silentServer(t *testing.T, ln net.Listener) {
	t.Helper()
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			go io.Copy(io.Discard, conn)
		}
	}()
}

// TestEvidenceHonoursContext opens the swtpm and unix socket transports (not mssim: go-tpm's tcp
// transport bounds no command) to a TPM that accepts commands and never
// answers: Evidence must return when its context ends (deadline or cancellation), not after the
// transport's own two-minute bound, and the connection, now out of step, must refuse further
// commands at once.
func TestEvidenceHonoursContext(t *testing.T) {
	const wait = 200 * time.Millisecond
	deadline := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), wait)
	}
	cancelled := func() (context.Context, context.CancelFunc) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(wait, cancel)
		return ctx, cancel
	}
	tests := []struct {
		name   string
		scheme string
		ctx    func() (context.Context, context.CancelFunc)
		want   error
		says   string
	}{
		{"swtpm deadline", SchemeSwtpm, deadline, context.DeadlineExceeded, "deadline exceeded"},
		{"unix deadline", SchemeUnix, deadline, context.DeadlineExceeded, "deadline exceeded"},
		{"swtpm cancelled", SchemeSwtpm, cancelled, context.Canceled, "canceled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, ln := streamServer(t, tc.scheme)
			silentServer(t, ln)
			dev, err := Open(context.Background(), addr, WithEventLogPath(""))
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()

			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			done := make(chan error, 1)
			go func() {
				_, err := dev.Evidence(ctx)
				done <- err
			}()
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				dev.t.Close() // ends the blocked read
				<-done
				t.Fatalf("Evidence still waiting for the TPM 5s after its context ended")
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("Evidence returned after %v, want about %v", took, wait)
			}
			t.Logf("Evidence after %v: %v", time.Since(start).Round(time.Millisecond), err)
			if !errors.Is(err, tc.want) || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Evidence: %v, want %v and ErrUnavailable", err, tc.want)
			}

			start = time.Now()
			if _, err := dev.Evidence(context.Background()); !errors.Is(err, ErrUnavailable) || time.Since(start) > time.Second {
				t.Fatalf("Evidence after a timeout: %v after %v, want ErrUnavailable at once", err, time.Since(start))
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	for _, addr := range []string{"", "tpm0", "swtpm:nohostport", "swtpm:" + closed, "mssim:" + closed, "mssim:127.0.0.1:65535", "unix:/nonexistent/socket", "/nonexistent/tpmrm0"} {
		if _, err := Open(context.Background(), addr); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Open(%q): %v, want ErrUnavailable", addr, err)
		}
	}
}

func TestTrimDER(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	cert, err := testCA(t).IssueAKCertificate(&key.PublicKey, "vm")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"exact", cert.Raw, true},
		{"zero padding", append(slices.Clone(cert.Raw), make([]byte, 700)...), true},
		{"0xff padding", append(slices.Clone(cert.Raw), bytes.Repeat([]byte{0xff}, 9)...), true},
		{"truncated", cert.Raw[:len(cert.Raw)-1], false},
		{"empty", nil, false},
		{"erased NV", bytes.Repeat([]byte{0xff}, 64), false},
	}
	for _, tc := range tests {
		got, err := trimDER(tc.in)
		if tc.ok != (err == nil) || (tc.ok && !bytes.Equal(got, cert.Raw)) {
			t.Errorf("%s: err %v", tc.name, err)
		}
	}
}

func FuzzReadMessage(f *testing.F) {
	f.Add([]byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0})
	f.Add([]byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0, 0, 1, 2, 3})
	f.Add([]byte{0x80, 0x01, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		msg, err := ReadMessage(bytes.NewReader(b), 4096)
		if err != nil {
			return
		}
		if len(msg) < HeaderSize || len(msg) > 4096 || !bytes.Equal(msg, b[:len(msg)]) {
			t.Fatalf("ReadMessage returned %d bytes from %d", len(msg), len(b))
		}
	})
}

// nvBufferTPM relays commands to a real (simulated) TPM, reporting bufferMax (unless 0) as its
// TPM_PT_NV_BUFFER_MAX and refusing NV reads larger than that, as a TPM with that buffer would,
// or failing that query if capFails; it records each TPM2_NV_Read size.
type nvBufferTPM struct {
	transport.TPM
	bufferMax uint32
	capFails  bool
	reads     []uint16
}

func (x *nvBufferTPM) Send(cmd []byte) ([]byte, error) {
	const (
		ccGetCapability = 0x17A
		ccNVRead        = 0x14E
	)
	rcFailure := []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x01}
	switch binary.BigEndian.Uint32(cmd[6:10]) {
	case ccGetCapability:
		if binary.BigEndian.Uint32(cmd[10:14]) != uint32(tpm2.TPMCapTPMProperties) || binary.BigEndian.Uint32(cmd[14:18]) != uint32(tpm2.TPMPTNVBufferMax) {
			break
		}
		if x.capFails {
			return rcFailure, nil
		}
		rsp, err := x.TPM.Send(cmd)
		if err != nil || x.bufferMax == 0 || len(rsp) < 27 || binary.BigEndian.Uint32(rsp[19:23]) != uint32(tpm2.TPMPTNVBufferMax) {
			return rsp, err
		}
		binary.BigEndian.PutUint32(rsp[23:27], x.bufferMax)
		return rsp, nil
	case ccNVRead:
		auth := int(binary.BigEndian.Uint32(cmd[18:22]))
		size := binary.BigEndian.Uint16(cmd[22+auth:])
		x.reads = append(x.reads, size)
		if x.bufferMax != 0 && uint32(size) > x.bufferMax {
			return rcFailure, nil
		}
	}
	return x.TPM.Send(cmd)
}

// TestAKCertificateReadInNVBufferChunks reads an AK certificate larger than one NV read, in reads
// no larger than the TPM's TPM_PT_NV_BUFFER_MAX nor 1024 bytes, and whole.
func TestAKCertificateReadInNVBufferChunks(t *testing.T) {
	tests := []struct {
		name      string
		bufferMax uint32
		capFails  bool
		wantChunk uint16
	}{
		{"the simulator's buffer", 0, false, 1024},
		{"a smaller buffer", 512, false, 512},
		{"a larger buffer is read 1024 at a time", 4096, false, 1024},
		{"capability unreadable: 1024", 0, true, 1024},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x, _, cert := provisioned(t, "")
			// A certificate of the AK, padded with an extension to more than one 1024-byte read.
			signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
				SerialNumber: big.NewInt(2), Subject: cert.Subject, NotBefore: cert.NotBefore, NotAfter: cert.NotAfter,
				ExtraExtensions: []pkix.Extension{{Id: []int{1, 3, 6, 1, 4, 1, 311, 99, 1}, Value: bytes.Repeat([]byte{0x5a}, 1300)}},
			}, &x509.Certificate{Subject: pkix.Name{CommonName: "Test AK issuer"}}, cert.PublicKey, signer)
			if err != nil {
				t.Fatal(err)
			}
			if len(der) <= nvChunk {
				t.Fatalf("certificate of %d bytes fits one read", len(der))
			}
			replaceAKCert(t, x, der)
			proxy := &nvBufferTPM{TPM: x.t, bufferMax: tc.bufferMax, capFails: tc.capFails}
			dev := New(nopCloser{proxy}, WithEventLogPath(""))
			ev, err := dev.Evidence(context.Background())
			if err != nil {
				t.Fatalf("Evidence: %v", err)
			}
			if !bytes.Equal(ev.AKCert, der) {
				t.Fatalf("AKCert is %d bytes, want the %d-byte certificate", len(ev.AKCert), len(der))
			}
			if len(proxy.reads) < 2 || proxy.reads[0] != tc.wantChunk || slices.Max(proxy.reads) > tc.wantChunk {
				t.Fatalf("NV reads of %v bytes, want at least two of at most %d, the first %d", proxy.reads, tc.wantChunk, tc.wantChunk)
			}
			got, err := dev.AKCertificate(context.Background())
			if err != nil || !bytes.Equal(got.Raw, der) {
				t.Fatalf("AKCertificate: %v", err)
			}
		})
	}
}

// TestEventLogMissingAtDefaultPath: a VM whose firmware gives no log (nothing at the kernel's
// path) attests with an empty one, as Azure's client does.
func TestEventLogMissingAtDefaultPath(t *testing.T) {
	if _, err := os.Stat(DefaultEventLogPath); !errors.Is(err, fs.ErrNotExist) {
		t.Skipf("%s: %v; this machine has a log there", DefaultEventLogPath, err)
	}
	x, _, _ := provisioned(t, "")
	ev, err := New(x.t).Evidence(context.Background())
	if err != nil || len(ev.TCGLog) != 0 {
		t.Fatalf("Evidence: %v, log of %d bytes; want an empty log", err, len(ev.TCGLog))
	}
}
