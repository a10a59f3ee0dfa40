package maa

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/google/go-attestation/attest"
)

// eventTypeNoAction is EV_NO_ACTION: informational, never extended into a PCR.
const eventTypeNoAction = 0x03

// A UEFI firmware debugger that was enabled during boot is recorded on PCR 7 as an EV_EFI_ACTION
// event whose data, and digested string, is "UEFI Debug Mode" (TCG PC Client Platform Firmware
// Profile; go-attestation's ParseSecurebootState refuses such a log with "a UEFI debugger was
// present during boot").
const (
	pcrSecureBootPolicy = 7
	uefiDebugModeAction = "UEFI Debug Mode"
)

// bootState is what the TCG log, replayed against the quoted PCRs, says about the boot.
type bootState struct {
	// logPresent is false when the client sent no log (Azure Trusted Launch may give none).
	logPresent bool
	// secureBoot: the SecureBoot variable measured in PCR 7 was 1.
	secureBoot bool
	// defaultKeys: the PK, KEK and db measured in PCR 7 are non-empty and hold only certificates
	// of the configured default Secure Boot keys (see defaultKeySet.holdsOnly).
	defaultKeys bool
	// dbxMeasured: a non-empty dbx was measured in PCR 7 (its contents are not compared with
	// anything).
	dbxMeasured bool
	// uefiDebugger: PCR 7 records that a UEFI debugger was enabled during boot.
	uefiDebugger bool
	// noDebugger: the log proves that no UEFI debugger was enabled: PCR 7 was measured, its
	// Secure Boot state parsed, and none of its events is the debugger's. False when there is no
	// log or PCR 7 cannot be read (fail closed), whatever uefiDebugger says.
	noDebugger bool
	// note explains why the secure-boot claims are false, for the request log.
	note string
}

// verifyTCGLog replays the TCG event log against the quoted SHA-256 PCR values (which
// verifyEvidence has already proven the TPM signed) and derives the secure-boot state from the
// events of the replayed PCRs only.
//
// An empty log is accepted with every secure-boot claim false and the debugger claims saying a
// debugger may have been present (fail closed): Azure's Linux client tolerates a missing log, and
// what real MAA issues then is UNCONFIRMED. A log that does not replay to the quoted values is
// refused. The mapping from log to claims is an approximation of MAA's (which is not public):
// secureboot is the measured SecureBoot variable; default-securebootkeysvalidated and dbvalidated
// mean that the measured PK, KEK and db hold only certificates in known (bootState.defaultKeys);
// dbxvalidated means only that a non-empty dbx was measured. No debugger is
// claimed only when PCR 7 was measured, its Secure Boot state parses, and no PCR 7 event extended
// the debugger's digest (see uefiDebuggerMeasured).
func verifyTCGLog(raw []byte, pcrs []pcrValue, known defaultKeySet) (bootState, error) {
	if len(raw) == 0 {
		return bootState{note: "no TCG log was sent; secure-boot claims are false and a UEFI debugger is not excluded"}, nil
	}
	el, err := parseEventLog(raw)
	if err != nil {
		return bootState{}, refuse(CodeTcgLogInvalid, "TcgLogs is not a TCG event log: %v", err)
	}
	quoted := make([]attest.PCR, 0, len(pcrs))
	for _, p := range pcrs {
		quoted = append(quoted, attest.PCR{Index: int(p.index), Digest: p.digest, DigestAlg: crypto.SHA256})
	}
	events, err := verifyEventLog(el, quoted)
	if err != nil {
		var re attest.ReplayError
		if errors.As(err, &re) {
			return bootState{}, refuse(CodeTcgLogMismatch, "TcgLogs does not replay to the quoted SHA-256 values of PCRs %v", re.InvalidPCRs)
		}
		return bootState{}, refuse(CodeTcgLogMismatch, "TcgLogs does not replay to the quoted SHA-256 PCR values: %v", err)
	}
	// go-attestation treats a PCR without events as verified whatever its value; a quoted PCR that
	// moved from its reset value with nothing in the log to explain it is a mismatch too.
	extended := map[int]bool{}
	for _, e := range el.Events(attest.HashSHA256) {
		if e.Type != eventTypeNoAction {
			extended[e.Index] = true
		}
	}
	for _, p := range pcrs {
		if !extended[int(p.index)] && !bytes.Equal(p.digest, make([]byte, len(p.digest))) {
			return bootState{}, refuse(CodeTcgLogMismatch, "TcgLogs has no event for PCR %d, whose quoted value is not its reset value", p.index)
		}
	}

	st := bootState{logPresent: true, uefiDebugger: uefiDebuggerMeasured(events)}
	if !extended[pcrSecureBootPolicy] {
		st.note = "the log has no event for PCR 7; secure-boot claims are false and a UEFI debugger is not excluded"
		return st, nil
	}
	sb, err := parseSecurebootState(events)
	if err != nil {
		st.note = fmt.Sprintf("secure-boot state could not be established from the log (%v); secure-boot claims are false", err)
		if st.uefiDebugger {
			st.note += "; a UEFI debugger was enabled during boot"
		} else {
			st.note += " and a UEFI debugger is not excluded"
		}
		return st, nil
	}
	if st.uefiDebugger {
		// go-attestation refuses every log with the debugger's event on PCR 7; this is a
		// safeguard should a later version accept one.
		st.note = "a UEFI debugger was enabled during boot; secure-boot claims are false"
		return st, nil
	}
	st.noDebugger = true
	st.secureBoot = sb.Enabled
	st.defaultKeys = known.holdsOnly(sb.PlatformKeys, sb.PlatformKeyHashes) &&
		known.holdsOnly(sb.ExchangeKeys, sb.ExchangeKeyHashes) &&
		known.holdsOnly(sb.PermittedKeys, sb.PermittedHashes)
	st.dbxMeasured = len(sb.ForbiddenKeys)+len(sb.ForbiddenHashes) > 0
	if !st.defaultKeys {
		st.note = "the measured PK, KEK and db are not (only) the configured default Secure Boot keys; " +
			"default-securebootkeysvalidated and dbvalidated are false"
	}
	return st, nil
}

// defaultKeySet holds the SHA-256 fingerprints of the DER certificates accepted as the
// platform's default Secure Boot keys (Config.DefaultSecureBootKeys).
type defaultKeySet map[[sha256.Size]byte]struct{}

func newDefaultKeySet(fingerprints [][sha256.Size]byte) defaultKeySet {
	s := make(defaultKeySet, len(fingerprints))
	for _, f := range fingerprints {
		s[f] = struct{}{}
	}
	return s
}

// holdsOnly reports whether a measured Secure Boot variable (its certificates and hashes, as
// go-attestation parsed its EFI_SIGNATURE_LISTs, each proven measured by its event digest) is
// non-empty and holds only certificates in s. A hash entry is never a default key: s lists
// certificates, and an enrolled hash is someone's own choice (UNCONFIRMED whether MAA's defaults
// admit any).
func (s defaultKeySet) holdsOnly(certs []x509.Certificate, hashes [][]byte) bool {
	if len(certs) == 0 || len(hashes) > 0 {
		return false
	}
	for _, c := range certs {
		if _, ok := s[sha256.Sum256(c.Raw)]; !ok {
			return false
		}
	}
	return true
}

// uefiDebuggerMeasured reports whether the replayed events record a UEFI debugger on PCR 7.
// go-attestation detects the same event but returns it as an unexported error, indistinguishable
// by errors.Is from its other refusals, and stops at the first problem it finds; so the events
// are searched here.
//
// What counts is the digest, SHA-256 of "UEFI Debug Mode", which the replay has proven was
// extended into PCR 7, on any event that is not EV_NO_ACTION (the only type the replay skips).
// Neither the event's type nor its data is measured, so a log cannot hide the debugger by
// relabelling the event (as EV_POST_CODE, EV_SEPARATOR, EV_EFI_VARIABLE_AUTHORITY...) or by
// rewriting its data. Data that reads "UEFI Debug Mode" counts too: a log that says so is taken
// at its word.
func uefiDebuggerMeasured(events []attest.Event) bool {
	want := sha256.Sum256([]byte(uefiDebugModeAction))
	for _, e := range events {
		if e.Index != pcrSecureBootPolicy || e.Type == eventTypeNoAction {
			continue
		}
		if bytes.Equal(e.Digest, want[:]) || string(e.Data) == uefiDebugModeAction {
			return true
		}
	}
	return false
}

// The go-attestation calls below parse attacker-supplied bytes; a panic in them must refuse the
// request, not kill the emulator.

func parseEventLog(raw []byte) (el *attest.EventLog, err error) {
	defer func() {
		if r := recover(); r != nil {
			el, err = nil, fmt.Errorf("malformed event log: %v", r)
		}
	}()
	return attest.ParseEventLog(raw)
}

func verifyEventLog(el *attest.EventLog, pcrs []attest.PCR) (events []attest.Event, err error) {
	defer func() {
		if r := recover(); r != nil {
			events, err = nil, fmt.Errorf("malformed event log: %v", r)
		}
	}()
	return el.Verify(pcrs)
}

func parseSecurebootState(events []attest.Event) (st *attest.SecurebootState, err error) {
	defer func() {
		if r := recover(); r != nil {
			st, err = nil, fmt.Errorf("malformed secure-boot events: %v", r)
		}
	}()
	return attest.ParseSecurebootState(events)
}
