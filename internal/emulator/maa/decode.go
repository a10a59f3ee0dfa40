package maa

import (
	"reflect"
	"slices"
	"strings"
	"unicode/utf8"

	wire "github.com/attested-kv/attested-kv/internal/maa"
)

// maxPCRIndex is the highest PCR index of a PC-client TPM (24 PCRs).
const maxPCRIndex = 23

// evidence is an AttestationInfo with every encoded field decoded, before any verification.
type evidence struct {
	osType, osDistro, osBuild    string
	osVersionMajor, osVersionMin uint32
	tcgLog                       []byte
	// clientPayload is the ClientPayload object exactly as sent (values still base64); it is
	// echoed unchanged into x-ms-runtime.client-payload.
	clientPayload map[string]string

	akCert, akPub           []byte
	quote, quoteSig         []byte
	encKeyPub               []byte
	certifyInfo, certifySig []byte
	pcrSet                  []uint32
	pcrs                    []pcrValue
}

// pcrValue is one SHA-256 PCR value sent in TpmInfo.PCRs.
type pcrValue struct {
	index  uint32
	digest []byte
}

// decodeRequest parses the outer {"AttestationInfo": "..."} body and the document inside it.
// Encodings follow wire.go (AZGA): the outer field is base64url (we accept it with or without
// padding); every binary field inside is standard base64 with padding, decoded strictly.
func decodeRequest(body []byte) (*evidence, error) {
	var req wire.AttestRequest
	if err := decodeStrictJSON(body, &req); err != nil {
		return nil, refuse(CodeInvalidRequestBody, "request body is not {\"AttestationInfo\": string}: %v", err)
	}
	if req.AttestationInfo == "" {
		return nil, refuse(CodeInvalidRequestBody, "AttestationInfo is missing or empty")
	}
	raw, err := decodeBase64URL(req.AttestationInfo)
	if err != nil {
		return nil, refuse(CodeInvalidAttestationInfoEncoding, "AttestationInfo is not base64url: %v", err)
	}
	return decodeAttestationInfo(raw)
}

// decodeAttestationInfo decodes the AttestationInfo JSON document. It checks shape and
// encodings only; the cryptographic checks are in verifyEvidence.
func decodeAttestationInfo(raw []byte) (*evidence, error) {
	var info wire.AttestationInfo
	if err := decodeStrictJSON(raw, &info); err != nil {
		return nil, refuse(CodeInvalidAttestationInfoJSON, "AttestationInfo is not a valid document: %v", err)
	}
	// Azure's client writes every member of AttestationInfo, always (AZGA
	// AttestationParameters::ToJson; ClientPayload is null when there is none), so a document
	// without one did not come from it. Whether real MAA refuses it is UNCONFIRMED; the emulator
	// does, as it refuses OSVersionMajor 0, so that a client dropping a member fails here.
	if missing := missingMembers(raw, reflect.TypeFor[wire.AttestationInfo]()); len(missing) > 0 {
		return nil, refuse(CodeInvalidAttestationInfoJSON, "AttestationInfo lacks %s, which Azure's guest attestation client always sends", strings.Join(missing, ", "))
	}
	if info.AttestationProtocolVersion != wire.ProtocolVersion {
		return nil, refuse(CodeUnsupportedProtocolVersion, "AttestationProtocolVersion %q is not supported; want %q",
			info.AttestationProtocolVersion, wire.ProtocolVersion)
	}
	if info.IsolationInfo.Type != wire.IsolationTrustedLaunch {
		return nil, refuse(CodeUnsupportedIsolationType,
			"IsolationInfo.Type %q is not supported: the emulator verifies only Trusted Launch (%q) evidence, not confidential-VM reports",
			info.IsolationInfo.Type, wire.IsolationTrustedLaunch)
	}
	if info.IsolationInfo.Evidence != nil {
		return nil, refuse(CodeUnsupportedIsolationType, "IsolationInfo.Evidence must be absent for %q", wire.IsolationTrustedLaunch)
	}

	ev := &evidence{osVersionMajor: info.OSVersionMajor, osVersionMin: info.OSVersionMinor}
	strField := func(name, v string, dst *string) error {
		b, err := decodeStdBase64(v)
		if err != nil {
			return refuse(CodeInvalidFieldEncoding, "%s is not standard base64: %v", name, err)
		}
		if !utf8.Valid(b) {
			return refuse(CodeInvalidFieldEncoding, "%s is not UTF-8 text", name)
		}
		*dst = string(b)
		return nil
	}
	binField := func(name, v string, dst *[]byte, required bool) error {
		if v == "" && required {
			return refuse(CodeInvalidFieldEncoding, "%s is missing", name)
		}
		b, err := decodeStdBase64(v)
		if err != nil {
			return refuse(CodeInvalidFieldEncoding, "%s is not standard base64: %v", name, err)
		}
		*dst = b
		return nil
	}
	tpm := info.TpmInfo
	for _, f := range []error{
		strField("OSType", info.OSType, &ev.osType),
		strField("OSDistro", info.OSDistro, &ev.osDistro),
		strField("OSBuild", info.OSBuild, &ev.osBuild),
		binField("TcgLogs", info.TcgLogs, &ev.tcgLog, false),
		binField("TpmInfo.AikCert", tpm.AikCert, &ev.akCert, true),
		binField("TpmInfo.AikPub", tpm.AikPub, &ev.akPub, true),
		binField("TpmInfo.PcrQuote", tpm.PcrQuote, &ev.quote, true),
		binField("TpmInfo.PcrSignature", tpm.PcrSignature, &ev.quoteSig, true),
		binField("TpmInfo.EncKeyPub", tpm.EncKeyPub, &ev.encKeyPub, true),
		binField("TpmInfo.EncKeyCertifyInfo", tpm.EncKeyCertifyInfo, &ev.certifyInfo, true),
		binField("TpmInfo.EncKeyCertifyInfoSignature", tpm.EncKeyCertifyInfoSignature, &ev.certifySig, true),
	} {
		if f != nil {
			return nil, f
		}
	}
	// The emulator produces Linux claims only (is-windows false, Linux boot flags); a Windows
	// guest's claims come from its boot log (SIPA events) and are not emulated.
	if ev.osType != "Linux" {
		return nil, refuse(CodeUnsupportedOSType, "OSType %q is not supported: the emulator issues Linux guest claims only", ev.osType)
	}
	// AZGA's AttestationParameters::Validate refuses to send a request with distro_version_major
	// 0 (only a VERSION_ID of 0.x gives it: AZGA sends 1.0 for a missing or unreadable one), or
	// with an empty distro name or build, so real MAA never sees one from Azure's client.
	// UNCONFIRMED: what real MAA does with them; we follow AZGA and refuse them, so that the
	// emulator never accepts what Azure's client would not send.
	if info.OSVersionMajor == 0 {
		return nil, refuse(CodeInvalidOSVersion, "OSVersionMajor is 0: Azure's guest attestation client refuses to send it (os-release VERSION_ID 0.x)")
	}
	if ev.osDistro == "" || ev.osBuild == "" {
		return nil, refuse(CodeInvalidAttestationInfoJSON, "OSDistro or OSBuild is empty: Azure's guest attestation client refuses to send either empty")
	}

	// ClientPayload values are base64 of the caller's strings (AZGA AttestationParameters.cpp);
	// they are echoed unchanged, but a value that is not base64 is refused.
	if info.ClientPayload != nil {
		ev.clientPayload = make(map[string]string, len(info.ClientPayload))
		for k, v := range info.ClientPayload {
			if _, err := decodeStdBase64(v); err != nil {
				return nil, refuse(CodeInvalidClientPayload, "ClientPayload[%q] is not standard base64: %v", k, err)
			}
			ev.clientPayload[k] = v
		}
	}

	if len(tpm.PcrSet) == 0 {
		return nil, refuse(CodePcrSetInvalid, "TpmInfo.PcrSet is empty")
	}
	for i, idx := range tpm.PcrSet {
		if idx > maxPCRIndex {
			return nil, refuse(CodePcrSetInvalid, "TpmInfo.PcrSet holds PCR %d; PCRs go up to %d", idx, maxPCRIndex)
		}
		if i > 0 && idx <= tpm.PcrSet[i-1] {
			return nil, refuse(CodePcrSetInvalid, "TpmInfo.PcrSet must be strictly ascending, got %v", tpm.PcrSet)
		}
	}
	if missing := missingRequiredPCRs(tpm.PcrSet); len(missing) > 0 {
		return nil, refuse(CodePcrSetInvalid, "TpmInfo.PcrSet %v lacks PCRs %v: Azure's guest clients always quote PCRs 0-7 of the SHA-256 bank", tpm.PcrSet, missing)
	}
	if len(tpm.PCRs) != len(tpm.PcrSet) {
		return nil, refuse(CodePcrSetInvalid, "TpmInfo.PCRs has %d entries but PcrSet names %d PCRs", len(tpm.PCRs), len(tpm.PcrSet))
	}
	ev.pcrSet = append([]uint32(nil), tpm.PcrSet...)
	for i, p := range tpm.PCRs {
		if p.Index != tpm.PcrSet[i] {
			return nil, refuse(CodePcrSetInvalid, "TpmInfo.PCRs[%d] is PCR %d but PcrSet[%d] is %d: every PCR of the set must be sent once, in set order",
				i, p.Index, i, tpm.PcrSet[i])
		}
		d, err := decodeStdBase64(p.Digest)
		if err != nil {
			return nil, refuse(CodeInvalidFieldEncoding, "TpmInfo.PCRs[%d].Digest is not standard base64: %v", i, err)
		}
		if len(d) != 32 {
			return nil, refuse(CodePcrSetInvalid, "TpmInfo.PCRs[%d].Digest has %d bytes; a SHA-256 PCR has 32", i, len(d))
		}
		ev.pcrs = append(ev.pcrs, pcrValue{index: p.Index, digest: d})
	}
	return ev, nil
}

// requiredPCRs are the PCRs every accepted quote must cover: the set Azure's Linux guest client
// quotes (AZGA AttestationLibUtils.cpp GetAttestationPcrList; Windows adds 11-14). PCR 7 carries
// the secure-boot state the token reports. Whether MAA refuses a smaller set is UNCONFIRMED; the
// emulator does, so that a token never reports secure-boot claims over PCRs nobody quoted.
var requiredPCRs = []uint32{0, 1, 2, 3, 4, 5, 6, 7}

func missingRequiredPCRs(set []uint32) []uint32 {
	var missing []uint32
	for _, r := range requiredPCRs {
		if !slices.Contains(set, r) {
			missing = append(missing, r)
		}
	}
	return missing
}
