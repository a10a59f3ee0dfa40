package tpm

import (
	"crypto/rsa"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Handles and indices of an Azure vTPM. Source: Microsoft's "Confidential VM Guest Attestation
// Design Detail" table and Azure's own Linux guest client (AZGA Tss2Util.h: AIK_PUB_INDEX =
// 0x81000000+3, AIK_CERT_INDEX = 0x01C101D0). See ../../shared/reference/tpm.md §3.1.
const (
	// AKHandle is the persistent handle of the Azure vTPM attestation key (RSA-2048).
	AKHandle uint32 = 0x81000003
	// AKCertIndex is the NV index holding the AK certificate (DER, possibly padded).
	AKCertIndex uint32 = 0x01C101D0
	// HCLReportIndex exists only on confidential VMs; its absence marks Trusted Launch.
	HCLReportIndex uint32 = 0x01400001
	// DefaultDevice is the kernel resource manager device used on a build VM.
	DefaultDevice = "/dev/tpmrm0"
	// DefaultEventLogPath is where Linux exposes the firmware's TCG event log.
	DefaultEventLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"
)

// AzurePCRs are the PCRs of the SHA-256 bank that Azure's Linux guest client quotes
// (AZGA AttestationLibUtils.cpp GetAttestationPcrList: {0..7} on Linux).
var AzurePCRs = []uint32{0, 1, 2, 3, 4, 5, 6, 7}

// PCR is one PCR of the SHA-256 bank: its index and its value.
type PCR struct {
	Index  uint32
	Digest []byte
}

// Evidence is what the TPM contributes to an MAA AzureGuest request, in the encodings Azure's
// Linux guest client sends (AZGA TpmInfo.cpp, Tss2Wrapper.cpp). All byte fields are raw; the
// MAA client base64-encodes them.
type Evidence struct {
	// AKCert is the DER AK certificate read from AKCertIndex, trailing NV padding trimmed.
	AKCert []byte
	// AKPub is the marshalled TPM2B_PUBLIC of the key at AKHandle (ReadPublic output).
	AKPub []byte
	// Quote is the bare TPMS_ATTEST of the PCR quote (the TPM2B_ATTEST contents).
	Quote []byte
	// QuoteSignature is the raw RSASSA-PKCS1-v1_5 signature bytes, not a TPMT_SIGNATURE.
	QuoteSignature []byte
	// PCRs are the SHA-256 values of the quoted PCRs, in ascending index order.
	PCRs []PCR
	// EncKeyPub is the marshalled TPM2B_PUBLIC of the ephemeral, PCR-bound decryption key.
	EncKeyPub []byte
	// EncKeyCertifyInfo is the bare TPMS_ATTEST from TPM2_Certify of EncKeyPub by the AK.
	EncKeyCertifyInfo []byte
	// EncKeyCertifyInfoSignature is the raw RSA signature over EncKeyCertifyInfo.
	EncKeyCertifyInfoSignature []byte
	// TCGLog is the raw firmware event log; empty when the platform gives none.
	TCGLog []byte
}

// EphemeralKey returns the RSA public key of EncKeyPub. MAA names the key it certified in the
// token it answers with (x-ms-runtime.keys, kid TpmEphemeralEncryptionKey), so that a token can be
// matched to the evidence it answers.
func (e *Evidence) EphemeralKey() (*rsa.PublicKey, error) {
	pub2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](e.EncKeyPub)
	if err != nil {
		return nil, fmt.Errorf("ephemeral key: %w", err)
	}
	pub, err := pub2b.Contents()
	if err != nil {
		return nil, fmt.Errorf("ephemeral key: %w", err)
	}
	if pub.Type != tpm2.TPMAlgRSA {
		return nil, errors.New("ephemeral key: not an RSA key")
	}
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		return nil, fmt.Errorf("ephemeral key: %w", err)
	}
	unique, err := pub.Unique.RSA()
	if err != nil {
		return nil, fmt.Errorf("ephemeral key: %w", err)
	}
	key, err := tpm2.RSAPub(parms, unique)
	if err != nil {
		return nil, fmt.Errorf("ephemeral key: %w", err)
	}
	return key, nil
}
