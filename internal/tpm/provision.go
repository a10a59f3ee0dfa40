package tpm

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// maxAKCertNV bounds the NV index the provisioner defines (MAX_NV_INDEX_SIZE of the reference TPM).
const maxAKCertNV = 2048

// ProvisionOptions configures Provision.
type ProvisionOptions struct {
	// VMID is the VM id in the AK certificate's subject; a random UUID if empty.
	VMID string
	// Replace evicts an AK and undefines an AK certificate index already present. Without it,
	// Provision keeps a complete, matching provisioning and refuses a partial or mismatched one.
	Replace bool
}

// ErrProvisioned means the TPM already holds an AK or AK certificate that Provision would have to
// overwrite; set ProvisionOptions.Replace to do so.
var ErrProvisioned = errors.New("the TPM already holds a different AK or AK certificate")

// AKTemplate is the template of the AK the provisioner creates: RSA-2048, restricted signing with
// RSASSA-SHA256, fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA. Azure's vTPM AK
// is an RSA-2048 key that quotes with RSASSA-SHA256 under an empty password (AZGA quotes with
// ESYS_TR_PASSWORD); its exact attributes and authPolicy are UNCONFIRMED (Constellation PR #203
// notes it carries a policy), and nothing in the protocol depends on them.
func AKTemplate() tpm2.TPMTPublic {
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
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
	}
}

// Provision makes a TPM (a simulator: never point it at a real vTPM) look like an Azure vTPM:
// an AK at AKHandle and, at AKCertIndex, its certificate issued by ca, with the index larger than
// the certificate as on Azure. It returns the AK certificate.
func Provision(ctx context.Context, t transport.TPM, ca *CA, o ProvisionOptions) (*x509.Certificate, error) {
	if ca == nil {
		return nil, errors.New("provisioning needs a CA")
	}
	ak, akErr := readAK(t)
	certDER, certErr := readNV(t, AKCertIndex, nvChunk) // a simulator: its NV buffer is nvChunk
	switch {
	case akErr == nil && certErr == nil && !o.Replace:
		der, err := trimDER(certDER)
		if err != nil {
			return nil, fmt.Errorf("%w: NV 0x%08x holds no certificate", ErrProvisioned, AKCertIndex)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil || !ak.key.Equal(cert.PublicKey) {
			return nil, fmt.Errorf("%w: the certificate does not match the AK", ErrProvisioned)
		}
		return cert, nil
	case (akErr == nil || certErr == nil) && !o.Replace:
		return nil, fmt.Errorf("%w: only one of the AK and its certificate is present", ErrProvisioned)
	}
	if akErr != nil && !errors.Is(akErr, ErrNoAK) {
		return nil, akErr
	}
	if certErr != nil && !isHandleError(certErr) {
		return nil, fmt.Errorf("reading NV 0x%08x: %w", AKCertIndex, certErr)
	}
	if akErr == nil {
		if _, err := (tpm2.EvictControl{
			Auth:             tpm2.TPMRHOwner,
			ObjectHandle:     tpm2.NamedHandle{Handle: ak.handle, Name: ak.name},
			PersistentHandle: ak.handle,
		}).Execute(t); err != nil {
			return nil, fmt.Errorf("evicting the old AK: %w", err)
		}
	}
	if certErr == nil {
		if err := undefineNV(t, AKCertIndex); err != nil {
			return nil, fmt.Errorf("undefining the old AK certificate index: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	created, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(AKTemplate()),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("creating the AK: %w", err)
	}
	_, err = tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: created.ObjectHandle, Name: created.Name},
		PersistentHandle: tpm2.TPMHandle(AKHandle),
	}.Execute(t)
	if ferr := flush(t, created.ObjectHandle); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		return nil, fmt.Errorf("persisting the AK at 0x%08x: %w", AKHandle, err)
	}
	if ak, err = readAK(t); err != nil {
		return nil, err
	}

	vmID := o.VMID
	if vmID == "" {
		if vmID, err = randomUUID(); err != nil {
			return nil, err
		}
	}
	cert, err := ca.IssueAKCertificate(ak.key, vmID)
	if err != nil {
		return nil, err
	}
	if err := writeAKCert(t, cert.Raw); err != nil {
		return nil, err
	}
	return cert, nil
}

// writeAKCert defines AKCertIndex with the attributes AZGA's NvDefineSpace uses (owner and auth
// read/write, SHA-256 name) and writes der followed by zero padding, since Azure's index is larger
// than the certificate it holds.
func writeAKCert(t transport.TPM, der []byte) error {
	if len(der) > maxAKCertNV {
		return fmt.Errorf("AK certificate of %d bytes exceeds the %d-byte NV index", len(der), maxAKCertNV)
	}
	size := min(maxAKCertNV, (len(der)/256+1)*256)
	if _, err := (tpm2.NVDefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex: tpm2.TPMHandle(AKCertIndex),
			NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{
				OwnerWrite: true, OwnerRead: true, AuthWrite: true, AuthRead: true,
				NT: tpm2.TPMNTOrdinary,
			},
			DataSize: uint16(size),
		}),
	}).Execute(t); err != nil {
		return fmt.Errorf("defining NV 0x%08x: %w", AKCertIndex, err)
	}
	pub, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(AKCertIndex)}.Execute(t)
	if err != nil {
		return fmt.Errorf("reading NV 0x%08x: %w", AKCertIndex, err)
	}
	data := make([]byte, size)
	copy(data, der)
	for off := 0; off < len(data); off += nvChunk {
		end := min(off+nvChunk, len(data))
		if _, err := (tpm2.NVWrite{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(AKCertIndex), Name: pub.NVName},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]},
			Offset:     uint16(off),
		}).Execute(t); err != nil {
			return fmt.Errorf("writing NV 0x%08x at %d: %w", AKCertIndex, off, err)
		}
	}
	return nil
}

// undefineNV deletes an owner-defined NV index.
func undefineNV(t transport.TPM, index uint32) error {
	pub, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(index)}.Execute(t)
	if err != nil {
		return err
	}
	_, err = tpm2.NVUndefineSpace{
		AuthHandle: tpm2.TPMRHOwner,
		NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(index), Name: pub.NVName},
	}.Execute(t)
	return err
}

// randomUUID returns a random (version 4) UUID, the shape of an Azure VM id.
func randomUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}
