package tpm

import "errors"

// Errors of this package, for errors.Is. Each names the step of evidence gathering that failed;
// wrapped errors carry the TPM's own response code.
var (
	// ErrUnavailable means the TPM could not be opened or stopped answering.
	ErrUnavailable = errors.New("TPM unavailable")
	// ErrNoAK means there is no key at AKHandle: this is not an Azure vTPM (or not provisioned).
	ErrNoAK = errors.New("no attestation key at the Azure AK handle 0x81000003")
	// ErrNoAKCert means NV index AKCertIndex is absent or holds no certificate.
	ErrNoAKCert = errors.New("no AK certificate at the Azure NV index 0x01C101D0")
	// ErrAKCertNotProvisioned means the NV index holds Azure's placeholder AK certificate (issuer
	// CN "MICROSOFT AZURE TRUSTED VM RSA..."), which a VM carries until Azure provisions the real
	// one shortly after boot; attesting later helps (reference/tpm.md, AZGA IsAkCertProvisioned).
	ErrAKCertNotProvisioned = errors.New("the AK certificate is Azure's placeholder: this VM's AK certificate is not provisioned yet; attest again in a few minutes")
	// ErrAKCertMismatch means the AK certificate does not certify the key at AKHandle.
	ErrAKCertMismatch = errors.New("the AK certificate does not match the attestation key")
	// ErrAKType means the key at AKHandle is not an RSA restricted signing key.
	ErrAKType = errors.New("the key at the AK handle is not an RSA restricted signing key")
	// ErrQuote means the TPM's quote did not check out locally (signature, PCR digest).
	ErrQuote = errors.New("TPM quote does not verify")
	// ErrCertify means the AK's certification of the ephemeral key (TPM2_Certify) did not check out
	// locally: its signature, or the Name or Qualified Name it certifies, which must be those of a
	// primary key of this TPM's NULL hierarchy with the ephemeral key's public area.
	ErrCertify = errors.New("the AK's certification of the ephemeral key does not verify")
	// ErrEventLog means the TCG event log exists but could not be read.
	ErrEventLog = errors.New("TCG event log unreadable")
	// ErrNoEphemeralKey means DecryptWithEphemeralKey found no key loaded: it was called before
	// Evidence, or the key of the last Evidence has already served its one decryption.
	ErrNoEphemeralKey = errors.New("no ephemeral key: gather evidence first (each Evidence's key serves one decryption)")
	// ErrEphemeralKeyMismatch means DecryptWithEphemeralKey was given the ciphertext of an evidence
	// whose ephemeral key is not the one loaded: another Evidence on the same Device replaced it.
	// A Device runs one attestation at a time (see Device).
	ErrEphemeralKeyMismatch = errors.New("the loaded ephemeral key is not the one of this evidence: a later Evidence on the same Device replaced it (run one attestation at a time per Device)")
	// ErrStateChanged means the TPM was reset or its PCRs changed since the evidence was gathered,
	// so the ephemeral key can no longer be used (this is the protection, not a fault).
	ErrStateChanged = errors.New("TPM state changed since the evidence was gathered")
	// ErrDecrypt means the TPM refused to decrypt with the ephemeral key.
	ErrDecrypt = errors.New("TPM decryption with the ephemeral key failed")
)
