package maa

import (
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"math/big"
	"regexp"
	"slices"
	"strings"

	wire "github.com/attested-kv/attested-kv/internal/maa"
)

// Claim names the emulator issues, spelled as in the real AzureGuest tokens kept in
// testdata/real (the Linux token from AZGA's AKS sample and AZGA's sampleAttestationToken.json).
const (
	claimBootDebug         = "x-ms-azurevm-bootdebug-enabled"
	claimDBValidated       = "x-ms-azurevm-dbvalidated"
	claimDBXValidated      = "x-ms-azurevm-dbxvalidated"
	claimDebuggersDisabled = "x-ms-azurevm-debuggersdisabled"
	claimDefaultKeysValid  = "x-ms-azurevm-default-securebootkeysvalidated"
	claimELAM              = "x-ms-azurevm-elam-enabled"
	claimFlightSigning     = "x-ms-azurevm-flightsigning-enabled"
	claimHVCIPolicy        = "x-ms-azurevm-hvci-policy"
	claimHypervisorDebug   = "x-ms-azurevm-hypervisordebug-enabled"
	claimIsWindows         = "x-ms-azurevm-is-windows"
	claimKernelDebug       = "x-ms-azurevm-kerneldebug-enabled"
	claimOSBuild           = "x-ms-azurevm-osbuild"
	claimOSDistro          = "x-ms-azurevm-osdistro"
	claimOSType            = "x-ms-azurevm-ostype"
	claimOSVersionMajor    = "x-ms-azurevm-osversion-major"
	claimOSVersionMinor    = "x-ms-azurevm-osversion-minor"
	claimSigningDisabled   = "x-ms-azurevm-signingdisabled"
	claimTestSigning       = "x-ms-azurevm-testsigning-enabled"
	claimKeys              = "keys" // inside x-ms-runtime
	claimPolicyResult      = "x-ms-policy-result"
	claimPolicyTokenHash   = "x-ms-policy-token-hash"
	claimPolicy            = "x-ms-policy"
	policyResultUpdated    = "Updated"
	tokenVersion           = "1.0"
	ephemeralKeyOpEncrypt  = "encrypt"
)

// serviceClaims are the claims the service issues (issuer AttestationService), as policy input
// and token content. Values are bool, int64, string or []int64.
//
// Not all of them are derived from verified evidence. The OS claims (x-ms-azurevm-ostype,
// -osdistro, -osbuild, -osversion-major, -osversion-minor) are copied from the request's OSType,
// OSDistro, OSBuild and OSVersionMajor/Minor: the client asserts them and nothing in the quote or
// the log checks them, as with real MAA as far as the public sources tell (UNCONFIRMED whether
// MAA compares them with the measurements). The Windows boot-configuration claims are constants.
func serviceClaims(ev *evidence, ve *verifiedEvidence, boot bootState) map[string]any {
	pcrs := make([]int64, len(ev.pcrSet))
	for i, p := range ev.pcrSet {
		pcrs[i] = int64(p)
	}
	return map[string]any{
		wire.ClaimAttestationType: wire.AttestationTypeAzureVM,
		wire.ClaimProtocolVer:     wire.ProtocolVersion,
		wire.ClaimAttestedPCRs:    pcrs,
		wire.ClaimVMID:            vmID(ve.akCert),
		wire.ClaimSecureBoot:      boot.secureBoot,
		// Whoever holds PK or KEK can rewrite db, so db counts as validated only under the
		// default PK and KEK: both claims are the same check (UNCONFIRMED how MAA decides them).
		claimDBValidated:      boot.defaultKeys,
		claimDefaultKeysValid: boot.defaultKeys,
		// dbx is only measured and non-empty, not compared with a current revocation list
		// (UNCONFIRMED what MAA compares it with).
		claimDBXValidated: boot.dbxMeasured,
		claimIsWindows:    false,
		// Client-asserted: copied from the request, not from the evidence.
		claimOSType:         ev.osType,
		claimOSDistro:       ev.osDistro,
		claimOSBuild:        ev.osBuild,
		claimOSVersionMajor: int64(ev.osVersionMajor),
		claimOSVersionMinor: int64(ev.osVersionMin),
		// "Debuggers disabled" and "boot debugging off" are claimed only when the log proves that
		// no UEFI debugger was recorded in PCR 7; with no log, or a PCR 7 that cannot be read,
		// they fail closed (how MAA itself sets them, and what it issues without a log, is
		// UNCONFIRMED).
		claimBootDebug:         !boot.noDebugger,
		claimDebuggersDisabled: boot.noDebugger,
		// Windows boot-configuration claims. MAA derives them from Windows boot measurements; on
		// Linux guests the real token (testdata/real) carries these constant values, which the
		// emulator reproduces: they say nothing about the Linux boot.
		claimKernelDebug:     false,
		claimTestSigning:     false,
		claimFlightSigning:   false,
		claimHypervisorDebug: false,
		claimSigningDisabled: true,
		claimHVCIPolicy:      int64(0),
		claimELAM:            false,
	}
}

// incomingClaims turns the service claims into the policy engine's claim set (issuer
// AttestationService), one claim per element for array claims, in a stable order.
func incomingClaims(svc map[string]any) []policyClaim {
	var out []policyClaim
	for _, name := range slices.Sorted(maps.Keys(svc)) {
		switch v := svc[name].(type) {
		case []int64:
			for _, x := range v {
				out = append(out, policyClaim{Type: name, Issuer: issuerService, Value: x})
			}
		default:
			out = append(out, policyClaim{Type: name, Issuer: issuerService, Value: v})
		}
	}
	return out
}

// mergeIssuedClaims adds the policy's issued claims to the token claims. Several values for one
// name become an array. A reserved (service) claim may only be re-issued with the service's own
// value, which is then a no-op; anything else is a policy error.
func mergeIssuedClaims(token map[string]any, issued []policyClaim) error {
	grouped := map[string][]any{}
	var order []string
	for _, c := range issued {
		if _, ok := grouped[c.Type]; !ok {
			order = append(order, c.Type)
		}
		grouped[c.Type] = append(grouped[c.Type], c.Value)
	}
	for _, name := range order {
		vals := grouped[name]
		if isReservedClaim(name) {
			existing, ok := token[name]
			if ok && len(vals) == 1 && existing == vals[0] {
				continue
			}
			if ok && slices.Equal(asAnySlice(existing), vals) {
				continue
			}
			return fmt.Errorf("the policy issues the service claim %q with a value of its own", name)
		}
		if len(vals) == 1 {
			token[name] = vals[0]
		} else {
			token[name] = vals
		}
	}
	return nil
}

func asAnySlice(v any) []any {
	s, ok := v.([]int64)
	if !ok {
		return nil
	}
	out := make([]any, len(s))
	for i, x := range s {
		out[i] = x
	}
	return out
}

var uuidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// vmID is x-ms-azurevm-vmid. Azure AK certificates are issued to
// CN=<vm-id>.TrustedVM.Azure.windows.net (reference/tpm.md §4.1), so the VM id is the CN's first
// label when it is a UUID. Otherwise (e.g. a test CA naming the AK differently) it is a stable
// UUID-shaped id derived from the AK's public key, so that one TPM always gets the same id. Real
// MAA takes the VM id from the host; both derivations are the emulator's (UNCONFIRMED).
func vmID(cert *x509.Certificate) string {
	label, _, _ := strings.Cut(cert.Subject.CommonName, ".")
	if uuidPattern.MatchString(label) {
		return strings.ToUpper(label)
	}
	h := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	b := h[:16]
	b[6] = b[6]&0x0f | 0x80 // RFC 9562 version 8 (custom)
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	s := hex.EncodeToString(b)
	return strings.ToUpper(s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32])
}

// ephemeralKeyJWK is the x-ms-runtime.keys entry for the TPM ephemeral key, shaped as in real
// tokens: {"kid":"TpmEphemeralEncryptionKey","kty":"RSA","key_ops":["encrypt"],"e":..,"n":..}.
func ephemeralKeyJWK(k *rsa.PublicKey) map[string]any {
	return map[string]any{
		"kid":     wire.EphemeralKeyKID,
		"kty":     "RSA",
		"key_ops": []string{ephemeralKeyOpEncrypt},
		"n":       base64.RawURLEncoding.EncodeToString(k.N.Bytes()),
		"e":       base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.E)).Bytes()),
	}
}
