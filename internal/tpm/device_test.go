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
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

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
	got, err := dev.DecryptWithEphemeralKey(context.Background(), wrapped)
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
	if _, err := dev.DecryptWithEphemeralKey(context.Background(), wrapped); !errors.Is(err, ErrNoEphemeralKey) {
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
			_, err = dev.DecryptWithEphemeralKey(context.Background(), wrapped)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("DecryptWithEphemeralKey: %v, want %v", err, tc.want)
			}
		})
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
			if err := undefineNV(x.t, AKCertIndex); err != nil {
				t.Fatal(err)
			}
			if err := writeAKCert(x.t, cert.Raw); err != nil {
				t.Fatal(err)
			}
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
			if err := undefineNV(x.t, AKCertIndex); err != nil {
				t.Fatal(err)
			}
			if err := writeAKCert(x.t, der); err != nil {
				t.Fatal(err)
			}
			return dev
		}, ErrAKCertNotProvisioned, false},
		{"event log unreadable", func(t *testing.T) *Device {
			x, _, _ := provisioned(t, "")
			return New(x.t, WithEventLogPath(dir)) // a directory: exists, cannot be read as a file
		}, ErrEventLog, false},
		{"event log absent", func(t *testing.T) *Device {
			x, _, _ := provisioned(t, "")
			return New(x.t, WithEventLogPath(filepath.Join(dir, "missing")))
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
			if _, err := dev.DecryptWithEphemeralKey(context.Background(), []byte("x")); !errors.Is(err, ErrNoEphemeralKey) {
				t.Fatalf("decrypt after failed evidence: %v, want ErrNoEphemeralKey", err)
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

// TestOpenStream runs the whole evidence flow over the swtpm-style TCP transport, against a
// loopback server that relays raw commands to the simulator.
func TestOpenStream(t *testing.T) {
	x, _, _ := provisioned(t, "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			for {
				cmd, err := ReadMessage(conn, 8192)
				if err != nil {
					conn.Close()
					break
				}
				rsp, err := x.t.Send(cmd)
				if err != nil {
					conn.Close()
					break
				}
				// Split the response to check that the client reads it whole.
				conn.Write(rsp[:3])
				conn.Write(rsp[3:])
			}
		}
	}()
	ctx := context.Background()
	dev, err := Open(ctx, "swtpm:"+ln.Addr().String(), WithEventLogPath(""))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if _, err := dev.Evidence(ctx); err != nil {
		t.Fatalf("Evidence over swtpm transport: %v", err)
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
