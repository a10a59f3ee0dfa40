package tpmsim

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"math/big"
	"time"
	"unicode/utf16"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Event types of the TCG PC Client Platform Firmware Profile.
const (
	evPostCode                          = 0x00000001
	evNoAction                          = 0x00000003
	evSeparator                         = 0x00000004
	evAction                            = 0x00000005
	evSCRTMVersion                      = 0x00000008
	evEFIVariableDriverConfig           = 0x80000001
	evEFIVariableBoot                   = 0x80000002
	evEFIBootServicesApplication        = 0x80000003
	evEFIAction                         = 0x80000007
	evEFIVariableAuthority              = 0x800000E0
	tpmAlgSHA256                 uint16 = 0x000B
)

// uefiDebugMode is the EV_EFI_ACTION string firmware measures into PCR 7 when a UEFI debugger
// is enabled (TCG PC Client Platform Firmware Profile).
const uefiDebugMode = "UEFI Debug Mode"

// GUIDs in their EFI_GUID byte order (first three fields little-endian).
var (
	efiGlobalVariable   = guid(0x8BE4DF61, 0x93CA, 0x11D2, [8]byte{0xAA, 0x0D, 0x00, 0xE0, 0x98, 0x03, 0x2B, 0x8C})
	efiImageSecurityDB  = guid(0xD719B2CB, 0x3D3A, 0x4596, [8]byte{0xA3, 0xBC, 0xDA, 0xD0, 0x0E, 0x67, 0x65, 0x6F})
	efiCertX509         = guid(0xA5C059A1, 0x94E4, 0x4AA7, [8]byte{0x87, 0xB5, 0xAB, 0x15, 0x5C, 0x2B, 0xF0, 0x72})
	efiCertSHA256       = guid(0xC1C41626, 0x504C, 0x4092, [8]byte{0xAC, 0xA9, 0x41, 0xF9, 0x36, 0x93, 0x43, 0x28})
	localSignatureOwner = guid(0x6E8A1B40, 0x8C47, 0x4A3E, [8]byte{0x9D, 0x0F, 0x0F, 0x6C, 0x3A, 0x1E, 0x2B, 0x7D})
)

func guid(a uint32, b, c uint16, d [8]byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, a)
	out = binary.LittleEndian.AppendUint16(out, b)
	out = binary.LittleEndian.AppendUint16(out, c)
	return append(out, d[:]...)
}

// PCRExtend is one extend of the measured boot: Digest, a SHA-256 digest, is extended into the
// SHA-256 bank of PCR.
type PCRExtend struct {
	PCR    int
	Digest []byte
}

// EventLogOptions shapes the synthetic boot measured by BuildEventLog.
type EventLogOptions struct {
	// SecureBoot sets the measured SecureBoot variable and, when on, logs the db authority that
	// verified the boot loader.
	SecureBoot bool
	// UEFIDebugger records that a UEFI firmware debugger was enabled: the EV_EFI_ACTION event
	// "UEFI Debug Mode", the first event on PCR 7 (TCG PC Client Platform Firmware Profile,
	// PCR[7] measurements), which verifiers take to mean the boot may have been altered.
	UEFIDebugger bool
	// EmptyDBX measures an empty dbx (no revocations), where the log otherwise revokes one boot
	// loader hash.
	EmptyDBX bool
}

// BuildEventLog returns a TCG event log in the crypto-agile format (SHA-256 bank only) of a UEFI
// boot of a Linux VM, as an Azure Trusted Launch vTPM records it, and the PCR extends that make a
// TPM's PCRs replay from it; apply them with ApplyEventLog.
//
// The log holds: the S-CRTM version and a POST code on PCR 0; with UEFIDebugger, "UEFI Debug Mode"
// on PCR 7; the SecureBoot, PK, KEK, db and dbx variables on PCR 7 (EV_EFI_VARIABLE_DRIVER_CONFIG); the boot order and boot option on PCR 1;
// "Calling EFI Application from Boot Option" on PCR 4; separators on PCRs 0-7; with Secure Boot
// on, the db authority that verified the boot loader (EV_EFI_VARIABLE_AUTHORITY on PCR 7); the
// boot loader's image load on PCR 4; and ExitBootServices on PCR 5. The Secure Boot keys are local
// Ed25519 certificates (not Microsoft's) derived deterministically, so the log, and the PCR values
// it produces, are the same on every call for the same options.
func BuildEventLog(o EventLogOptions) ([]byte, []PCRExtend, error) {
	keys, err := SecureBootCertificates()
	if err != nil {
		return nil, nil, err
	}
	pk, kek, db := keys[0], keys[1], keys[2]
	revoked := sha256.Sum256([]byte("a revoked boot loader"))

	b := &logBuilder{}
	b.specID()
	b.event(0, evSCRTMVersion, utf16z("attested-kv vTPM firmware 1.0"))
	b.event(0, evPostCode, []byte("POST CODE"))
	sb := byte(0)
	if o.SecureBoot {
		sb = 1
	}
	if o.UEFIDebugger {
		b.event(7, evEFIAction, []byte(uefiDebugMode))
	}
	b.event(7, evEFIVariableDriverConfig, variableData(efiGlobalVariable, "SecureBoot", []byte{sb}))
	b.event(7, evEFIVariableDriverConfig, variableData(efiGlobalVariable, "PK", signatureList(efiCertX509, pk.Raw)))
	b.event(7, evEFIVariableDriverConfig, variableData(efiGlobalVariable, "KEK", signatureList(efiCertX509, kek.Raw)))
	b.event(7, evEFIVariableDriverConfig, variableData(efiImageSecurityDB, "db", signatureList(efiCertX509, db.Raw)))
	dbx := signatureList(efiCertSHA256, revoked[:])
	if o.EmptyDBX {
		dbx = nil
	}
	b.event(7, evEFIVariableDriverConfig, variableData(efiImageSecurityDB, "dbx", dbx))
	b.event(1, evEFIVariableBoot, variableData(efiGlobalVariable, "BootOrder", []byte{0, 0}))
	b.event(1, evEFIVariableBoot, variableData(efiGlobalVariable, "Boot0000", loadOption("ubuntu")))
	for pcr := 0; pcr <= 7; pcr++ {
		b.event(pcr, evSeparator, []byte{0, 0, 0, 0})
	}
	b.event(4, evEFIAction, []byte("Calling EFI Application from Boot Option"))
	if o.SecureBoot {
		b.event(7, evEFIVariableAuthority, variableData(efiImageSecurityDB, "db", append(append([]byte{}, localSignatureOwner...), db.Raw...)))
	}
	// The boot loader's image-load event: its digest is the image's Authenticode hash, not a hash
	// of the event data, as in a real log.
	loader := sha256.Sum256([]byte("attested-kv synthetic shimx64.efi"))
	b.eventDigest(4, evEFIBootServicesApplication, loader[:], imageLoadEvent())
	b.event(5, evEFIAction, []byte("Exit Boot Services Invocation"))
	b.event(5, evEFIAction, []byte("Exit Boot Services Returned with Success"))
	return b.buf.Bytes(), b.extends, nil
}

// SecureBootCertificates returns the Secure Boot certificates BuildEventLog enrolls, in this
// order: the platform key (PK), the key exchange key (KEK) and the db certificate. They are local
// self-signed certificates, the same on every call; a verifier that should take this TPM's
// Secure Boot keys as the platform's defaults (as MAA takes Microsoft's) is configured with them,
// e.g. the MAA emulator's Config.DefaultSecureBootKeys.
func SecureBootCertificates() ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, cn := range []string{"attested-kv local Platform Key", "attested-kv local Key Exchange Key", "attested-kv local UEFI CA (db)"} {
		c, err := selfSigned(cn)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// ApplyEventLog extends each digest into the SHA-256 bank of t, in order, with PCR_Extend, so
// that the log returned with extends by BuildEventLog replays to t's PCRs. The PCRs must be in
// their reset state (a freshly started TPM): applying a log twice does not replay. It stops at the
// first failure, or when ctx ends between extends.
func ApplyEventLog(ctx context.Context, t transport.TPM, extends []PCRExtend) error {
	for i, e := range extends {
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.PCR < 0 || e.PCR > 23 || len(e.Digest) != sha256.Size {
			return fmt.Errorf("extend %d: want a SHA-256 digest for PCR 0-23, got %d bytes for PCR %d", i, len(e.Digest), e.PCR)
		}
		if _, err := (tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(e.PCR), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: e.Digest}}},
		}).Execute(t); err != nil {
			return fmt.Errorf("extending PCR %d (event %d): %w", e.PCR, i, err)
		}
	}
	return nil
}

type logBuilder struct {
	buf     bytes.Buffer
	extends []PCRExtend
}

func (b *logBuilder) le32(v uint32) { b.buf.Write(binary.LittleEndian.AppendUint32(nil, v)) }

// specID writes the first event: a TCG_PCClientPCREvent (SHA-1 format) of type EV_NO_ACTION
// carrying the TCG_EfiSpecIDEventStruct "Spec ID Event03" that declares the SHA-256 bank.
func (b *logBuilder) specID() {
	var ev bytes.Buffer
	ev.WriteString("Spec ID Event03\x00")
	ev.Write(binary.LittleEndian.AppendUint32(nil, 0)) // platformClass: client
	ev.Write([]byte{0, 2, 0, 2})                       // spec version 2.0, errata 0, uintnSize 2 (64-bit)
	ev.Write(binary.LittleEndian.AppendUint32(nil, 1)) // numberOfAlgorithms
	ev.Write(binary.LittleEndian.AppendUint16(nil, tpmAlgSHA256))
	ev.Write(binary.LittleEndian.AppendUint16(nil, sha256.Size))
	ev.WriteByte(0) // vendorInfoSize
	b.le32(0)
	b.le32(evNoAction)
	b.buf.Write(make([]byte, 20))
	b.le32(uint32(ev.Len()))
	b.buf.Write(ev.Bytes())
}

// event writes a TCG_PCR_EVENT2 whose digest is SHA-256 of data.
func (b *logBuilder) event(pcr int, typ uint32, data []byte) {
	d := sha256.Sum256(data)
	b.eventDigest(pcr, typ, d[:], data)
}

func (b *logBuilder) eventDigest(pcr int, typ uint32, digest, data []byte) {
	b.le32(uint32(pcr))
	b.le32(typ)
	b.le32(1) // TPML_DIGEST_VALUES.count
	b.buf.Write(binary.LittleEndian.AppendUint16(nil, tpmAlgSHA256))
	b.buf.Write(digest)
	b.le32(uint32(len(data)))
	b.buf.Write(data)
	b.extends = append(b.extends, PCRExtend{PCR: pcr, Digest: digest})
}

// variableData is a UEFI_VARIABLE_DATA: VariableName GUID, UnicodeNameLength, VariableDataLength,
// the UTF-16LE name (no terminator) and the data.
func variableData(vendor []byte, name string, data []byte) []byte {
	u := utf16.Encode([]rune(name))
	out := append([]byte{}, vendor...)
	out = binary.LittleEndian.AppendUint64(out, uint64(len(u)))
	out = binary.LittleEndian.AppendUint64(out, uint64(len(data)))
	for _, c := range u {
		out = binary.LittleEndian.AppendUint16(out, c)
	}
	return append(out, data...)
}

// signatureList is an EFI_SIGNATURE_LIST with one EFI_SIGNATURE_DATA.
func signatureList(sigType, data []byte) []byte {
	sigSize := uint32(16 + len(data))
	out := append([]byte{}, sigType...)
	out = binary.LittleEndian.AppendUint32(out, 28+sigSize) // SignatureListSize
	out = binary.LittleEndian.AppendUint32(out, 0)          // SignatureHeaderSize
	out = binary.LittleEndian.AppendUint32(out, sigSize)
	out = append(out, localSignatureOwner...)
	return append(out, data...)
}

// imageLoadEvent is an UEFI_IMAGE_LOAD_EVENT with an end-of-path device path.
func imageLoadEvent() []byte {
	out := binary.LittleEndian.AppendUint64(nil, 0x7d000000) // ImageLocationInMemory
	out = binary.LittleEndian.AppendUint64(out, 0x100000)    // ImageLengthInMemory
	out = binary.LittleEndian.AppendUint64(out, 0)           // ImageLinkTimeAddress
	out = binary.LittleEndian.AppendUint64(out, 4)           // LengthOfDevicePath
	return append(out, 0x7f, 0xff, 0x04, 0x00)               // END_DEVICE_PATH
}

// loadOption is an EFI_LOAD_OPTION: attributes (LOAD_OPTION_ACTIVE), the device path length, the
// description and an end-of-path device path.
func loadOption(description string) []byte {
	out := binary.LittleEndian.AppendUint32(nil, 1)
	out = binary.LittleEndian.AppendUint16(out, 4)
	out = append(out, utf16z(description)...)
	return append(out, 0x7f, 0xff, 0x04, 0x00)
}

func utf16z(s string) []byte {
	var out []byte
	for _, c := range utf16.Encode([]rune(s)) {
		out = binary.LittleEndian.AppendUint16(out, c)
	}
	return append(out, 0, 0)
}

// selfSigned makes a Secure Boot key certificate for the synthetic log. The key is derived from
// cn and the certificate has fixed fields, and Ed25519 signatures are deterministic, so the
// certificate (and with it PCR 7) is the same on every run and every machine.
func selfSigned(cn string) (*x509.Certificate, error) {
	seed := sha256.Sum256([]byte("attested-kv tpmsim Secure Boot key: " + cn))
	key := ed25519.NewKeyFromSeed(seed[:])
	serial := new(big.Int).SetBytes(seed[:8])
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"attested-kv local stack"}},
		NotBefore:             time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}
