package maa

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"

	wire "github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/tpmsim"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// TestAttestHappyPath runs Azure's flow end to end against a real (simulated) TPM: the token
// comes back encrypted, only the TPM can open it, it verifies against /certs, and its claims are
// those of a Linux Trusted Launch guest without a TCG log.
func TestAttestHappyPath(t *testing.T) {
	e := newEnv(t)
	in := newInstance(t, e, nil)
	c := e.collect(t)

	status, body := in.attest(t, requestBody(t, c.info()))
	if status != http.StatusOK {
		t.Fatalf("attest: %d %s", status, body)
	}
	jwt := openToken(t, e.tpm, c.eph, azurePCRs, body)
	hdr, claims := in.verifyJWT(t, jwt)

	if hdr.Algorithm != "RS256" || hdr.ExtraHeaders["jku"] != in.ts.URL+"/certs" || hdr.ExtraHeaders["typ"] != "JWT" {
		t.Errorf("header = alg %q jku %v typ %v", hdr.Algorithm, hdr.ExtraHeaders["jku"], hdr.ExtraHeaders["typ"])
	}
	want := map[string]any{
		"iss":                                   in.ts.URL,
		"x-ms-ver":                              "1.0",
		"x-ms-attestation-type":                 "azurevm",
		"x-ms-azurevm-attestation-protocol-ver": "2.0",
		"x-ms-azurevm-attested-pcrs":            []any{json.Number("0"), json.Number("1"), json.Number("2"), json.Number("3"), json.Number("4"), json.Number("5"), json.Number("6"), json.Number("7")},
		"x-ms-azurevm-is-windows":               false,
		"x-ms-azurevm-ostype":                   "Linux",
		"x-ms-azurevm-osdistro":                 "Ubuntu",
		"x-ms-azurevm-osbuild":                  "NotApplication",
		"x-ms-azurevm-osversion-major":          json.Number("22"),
		"x-ms-azurevm-osversion-minor":          json.Number("4"),
		"x-ms-azurevm-vmid":                     "7F3C2A9E-1B4D-4E8F-9A6B-2C5D8E1F0A3B",
		"x-ms-policy-hash":                      policyHash(DefaultPolicy),
		// No TCG log: secure-boot claims fail closed, and so do the debugger claims.
		"secureboot":                                   false,
		"x-ms-azurevm-dbvalidated":                     false,
		"x-ms-azurevm-dbxvalidated":                    false,
		"x-ms-azurevm-default-securebootkeysvalidated": false,
		"x-ms-azurevm-bootdebug-enabled":               true,
		"x-ms-azurevm-debuggersdisabled":               false,
		// Windows boot-configuration claims, constant on Linux as in the real token.
		"x-ms-azurevm-kerneldebug-enabled":     false,
		"x-ms-azurevm-testsigning-enabled":     false,
		"x-ms-azurevm-flightsigning-enabled":   false,
		"x-ms-azurevm-hypervisordebug-enabled": false,
		"x-ms-azurevm-signingdisabled":         true,
		"x-ms-azurevm-hvci-policy":             json.Number("0"),
		"x-ms-azurevm-elam-enabled":            false,
	}
	for k, v := range want {
		if !reflect.DeepEqual(claims[k], v) {
			t.Errorf("claim %s = %#v, want %#v", k, claims[k], v)
		}
	}

	// Times: iat = nbf, exp - iat = 8h.
	iat, _ := claims["iat"].(json.Number).Int64()
	nbf, _ := claims["nbf"].(json.Number).Int64()
	exp, _ := claims["exp"].(json.Number).Int64()
	if iat != nbf || exp-iat != int64(DefaultTokenLifetime/time.Second) || time.Since(time.Unix(iat, 0)).Abs() > time.Minute {
		t.Errorf("iat %d nbf %d exp %d", iat, nbf, exp)
	}
	if jti, _ := claims["jti"].(string); len(jti) != 64 {
		t.Errorf("jti = %q, want 64 hex characters", jti)
	}

	// x-ms-runtime: the client payload exactly as sent, and the ephemeral key as a JWK.
	runtime, _ := claims["x-ms-runtime"].(map[string]any)
	if got := runtime["client-payload"]; !reflect.DeepEqual(got, map[string]any{"nonce": b64("binding-of-image-and-key")}) {
		t.Errorf("x-ms-runtime.client-payload = %#v", got)
	}
	keys, _ := runtime["keys"].([]any)
	if len(keys) != 1 {
		t.Fatalf("x-ms-runtime.keys = %#v", runtime["keys"])
	}
	jwk := keys[0].(map[string]any)
	wantJWK := ephemeralKeyJWK(c.eph.rsa)
	if jwk["kid"] != wire.EphemeralKeyKID || jwk["kty"] != "RSA" || jwk["n"] != wantJWK["n"] || jwk["e"] != "AQAB" ||
		!reflect.DeepEqual(jwk["key_ops"], []any{"encrypt"}) {
		t.Errorf("ephemeral key JWK = %#v", jwk)
	}

	// The emulator saw the request and recorded its outcome.
	recs := in.srv.Requests()
	if len(recs) != 1 || recs[0].Status != http.StatusOK || recs[0].ErrorCode != "" || recs[0].TokenID != claims["jti"] ||
		recs[0].ClientPayload[wire.NonceKey] != b64("binding-of-image-and-key") {
		t.Errorf("Requests() = %+v", recs)
	}
}

// TestAttestTokenOnlyForThisPCRState checks that the token's confidentiality rests on the TPM:
// once a quoted PCR changes, the TPM refuses to unwrap the token key.
func TestAttestTokenOnlyForThisPCRState(t *testing.T) {
	e := newEnv(t)
	in := newInstance(t, e, nil)
	c := e.collect(t)
	status, body := in.attest(t, requestBody(t, c.info()))
	if status != http.StatusOK {
		t.Fatalf("attest: %d %s", status, body)
	}
	var rsp wire.AttestResponse
	_ = json.Unmarshal(body, &rsp)
	e.tpm.extend(t, 7, sha256Sum([]byte("changed boot state")))
	raw, _ := decodeBase64URL(rsp.Token)
	var et wire.EncryptedToken
	_ = json.Unmarshal(raw, &et)
	wrapped, _ := decodeStdBase64(et.EncryptedInnerKey)
	if _, err := e.tpm.decrypt(t, c.eph, azurePCRs, wrapped); err == nil {
		t.Fatal("the TPM unwrapped the token key in a different PCR state")
	}
}

// attestWithLog attests the environment e's TPM with the event log raw (which the caller has
// replayed into the TPM), to an emulator taking the certificates whose fingerprints are known as
// the default Secure Boot keys, and returns the claims of the token issued.
func attestWithLog(t *testing.T, e *env, raw []byte, known [][sha256.Size]byte) map[string]any {
	t.Helper()
	in := newInstance(t, e, func(c *Config) { c.DefaultSecureBootKeys = known })
	c := e.collect(t)
	c.tcgLog = raw
	status, body := in.attest(t, requestBody(t, c.info()))
	if status != http.StatusOK {
		t.Fatalf("attest: %d %s", status, body)
	}
	_, claims := in.verifyJWT(t, openToken(t, e.tpm, c.eph, azurePCRs, body))
	return claims
}

// fingerprints returns the SHA-256 fingerprints of certs, as Config.DefaultSecureBootKeys lists
// them.
func fingerprints(certs ...*x509.Certificate) [][sha256.Size]byte {
	var out [][sha256.Size]byte
	for _, c := range certs {
		out = append(out, sha256.Sum256(c.Raw))
	}
	return out
}

// tpmsimKeys returns the fingerprints of the Secure Boot keys tpmsim.BuildEventLog enrolls.
func tpmsimKeys(t testing.TB) [][sha256.Size]byte {
	t.Helper()
	certs, err := tpmsim.SecureBootCertificates()
	if err != nil {
		t.Fatal(err)
	}
	return fingerprints(certs...)
}

// logSecureBootKeys returns the fingerprints of the PK, KEK and db certificates a TCG log
// measures.
func logSecureBootKeys(t testing.TB, raw []byte) [][sha256.Size]byte {
	t.Helper()
	el, err := attest.ParseEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := attest.ParseSecurebootState(el.Events(attest.HashSHA256))
	if err != nil {
		t.Fatal(err)
	}
	var out [][sha256.Size]byte
	for _, c := range slices.Concat(sb.PlatformKeys, sb.ExchangeKeys, sb.PermittedKeys) {
		out = append(out, sha256.Sum256(c.Raw))
	}
	return out
}

// replayLog extends the digests of raw's events on PCRs 0-7 into e's TPM, so the quote matches
// the log.
func replayLog(t *testing.T, e *env, raw []byte) {
	t.Helper()
	el, err := attest.ParseEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range el.Events(attest.HashSHA256) {
		if ev.Type != eventTypeNoAction && ev.Index <= 7 {
			e.tpm.extend(t, ev.Index, ev.Digest)
		}
	}
}

// TestAttestWithEventLog replays a real firmware log into the TPM, so the quote matches it, and
// checks the secure-boot claims derived from it, the log's own keys being taken as the defaults.
func TestAttestWithEventLog(t *testing.T) {
	e := newEnv(t)
	raw, err := os.ReadFile("testdata/rhel8-uefi.bin")
	if err != nil {
		t.Fatal(err)
	}
	replayLog(t, e, raw)
	claims := attestWithLog(t, e, raw, logSecureBootKeys(t, raw))
	for _, k := range []string{"secureboot", "x-ms-azurevm-dbvalidated", "x-ms-azurevm-dbxvalidated", "x-ms-azurevm-default-securebootkeysvalidated"} {
		if claims[k] != true {
			t.Errorf("claim %s = %v, want true", k, claims[k])
		}
	}

	// The same log against a quote of other PCR values is refused.
	e.tpm.extend(t, 4, sha256Sum([]byte("a boot component the log does not show")))
	c2 := e.collect(t)
	c2.tcgLog = raw
	status, body := newInstance(t, e, nil).attest(t, requestBody(t, c2.info()))
	if status != http.StatusBadRequest || cloudError(t, body).Code != CodeTcgLogMismatch {
		t.Fatalf("attest with a stale log: %d %s", status, body)
	}
}

// TestAttestDefaultSecureBootKeys checks that x-ms-azurevm-default-securebootkeysvalidated and
// x-ms-azurevm-dbvalidated are true only when the measured PK, KEK and db hold only certificates
// of Config.DefaultSecureBootKeys, and that the baseline's rules on them fail otherwise: keys
// someone enrolled themselves (tpmsim's local ones, the real log's) are not default keys unless
// configured as such. dbxvalidated and secureboot do not depend on the set.
func TestAttestDefaultSecureBootKeys(t *testing.T) {
	rhel, err := os.ReadFile("testdata/rhel8-uefi.bin")
	if err != nil {
		t.Fatal(err)
	}
	local := tpmsimKeys(t)
	tests := []struct {
		name        string
		real        bool // the rhel8 log, else tpmsim.BuildEventLog's
		known       [][sha256.Size]byte
		defaultKeys bool
	}{
		{name: "local keys, no default keys configured"},
		{name: "local keys configured", known: local, defaultKeys: true},
		{name: "local PK and KEK configured, not db", known: local[:2]},
		{name: "local KEK and db configured, not PK", known: local[1:]},
		{name: "local keys and others configured", known: append(logSecureBootKeys(t, rhel), local...), defaultKeys: true},
		{name: "real log, local keys configured", real: true, known: local},
		{name: "real log, its keys configured", real: true, known: logSecureBootKeys(t, rhel), defaultKeys: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			raw := rhel
			if tt.real {
				replayLog(t, e, raw)
			} else {
				var (
					extends []tpmsim.PCRExtend
					err     error
				)
				if raw, extends, err = tpmsim.BuildEventLog(tpmsim.EventLogOptions{SecureBoot: true}); err != nil {
					t.Fatal(err)
				}
				for _, x := range extends {
					e.tpm.extend(t, x.PCR, x.Digest)
				}
			}
			claims := attestWithLog(t, e, raw, tt.known)
			for k, want := range map[string]bool{
				"secureboot":                                   true, // in both logs
				"x-ms-azurevm-dbxvalidated":                    true,
				"x-ms-azurevm-dbvalidated":                     tt.defaultKeys,
				"x-ms-azurevm-default-securebootkeysvalidated": tt.defaultKeys,
			} {
				if claims[k] != want {
					t.Errorf("claim %s = %v, want %v", k, claims[k], want)
				}
			}
			for _, r := range rules.Baseline().Evaluate(claims).Rules {
				switch r.Name {
				case "default-secureboot-keys", "db-validated":
					if r.Passed != tt.defaultKeys {
						t.Errorf("baseline rule %s passed = %v, want %v", r.Name, r.Passed, tt.defaultKeys)
					}
				default:
					// The local log is a healthy Secure Boot but for its keys.
					if !tt.real && !r.Passed {
						t.Errorf("baseline rule %s failed: %s", r.Name, r.Reason)
					}
				}
			}
		})
	}
}

// TestDefaultKeySetHoldsOnly checks the comparison of one measured variable with the default
// keys: non-empty, certificates only, each of them listed.
func TestDefaultKeySetHoldsOnly(t *testing.T) {
	certs, err := tpmsim.SecureBootCertificates()
	if err != nil {
		t.Fatal(err)
	}
	pk, kek := *certs[0], *certs[1]
	known := newDefaultKeySet(fingerprints(certs[0]))
	hash := sha256Sum([]byte("a boot loader"))
	tests := []struct {
		name   string
		certs  []x509.Certificate
		hashes [][]byte
		want   bool
	}{
		{"listed certificate", []x509.Certificate{pk}, nil, true},
		{"empty variable", nil, nil, false},
		{"unlisted certificate", []x509.Certificate{kek}, nil, false},
		{"listed and unlisted certificates", []x509.Certificate{pk, kek}, nil, false},
		{"listed certificate and a hash", []x509.Certificate{pk}, [][]byte{hash}, false},
		{"hash only", nil, [][]byte{hash}, false},
	}
	for _, tt := range tests {
		if got := known.holdsOnly(tt.certs, tt.hashes); got != tt.want {
			t.Errorf("%s: holdsOnly = %v, want %v", tt.name, got, tt.want)
		}
	}
	if newDefaultKeySet(nil).holdsOnly([]x509.Certificate{pk}, nil) {
		t.Error("an empty set holds a certificate")
	}
}

// TestAttestUEFIDebugger checks the debugger claims against logs built like the local stack's
// (tpmsim.BuildEventLog) and replayed into the TPM: x-ms-azurevm-debuggersdisabled is true and
// x-ms-azurevm-bootdebug-enabled false only when the log proves that no UEFI debugger was
// enabled. A debugger recorded on PCR 7, whatever type or data the log gives its event, makes them
// false and true, as well as the Secure Boot claims false; so do no log, a log without PCR 7, and
// a PCR 7 whose Secure Boot state cannot be read (fail closed).
func TestAttestUEFIDebugger(t *testing.T) {
	utf16le := func(s string) []byte {
		var b []byte
		for _, r := range s {
			b = append(b, byte(r), 0)
		}
		return b
	}
	// replace rewrites one event's data in place (same length, digest kept): the log still
	// replays, but the data no longer matches what was measured.
	replace := func(old, new []byte) func(*testing.T, []byte) []byte {
		return func(t *testing.T, raw []byte) []byte {
			if bytes.Count(raw, old) != 1 || len(old) != len(new) {
				t.Fatalf("the log does not hold %q exactly once", old)
			}
			return bytes.Replace(raw, old, new, 1)
		}
	}
	// relabel gives the debugger's event another type: the type is not measured, so the log
	// still replays to the PCRs the debugger's boot extended.
	relabel := func(typ uint32) func(*testing.T, []byte) []byte {
		return func(t *testing.T, raw []byte) []byte {
			d := sha256.Sum256([]byte(uefiDebugModeAction))
			i := bytes.Index(raw, d[:])
			// TCG_PCR_EVENT2: pcrIndex, eventType, digests.count, hashAlg, digest.
			if bytes.Count(raw, d[:]) != 1 || i < 14 {
				t.Fatal("the log does not hold the debugger's digest exactly once")
			}
			out := bytes.Clone(raw)
			binary.LittleEndian.PutUint32(out[i-10:], typ)
			return out
		}
	}
	const (
		evPostCode             = 0x00000001
		evSeparator            = 0x00000004
		evEFIVariableAuthority = 0x800000E0
	)
	tests := []struct {
		name              string
		noLog             bool
		debugger          bool
		withoutPCR7       bool
		mutate            func(*testing.T, []byte) []byte
		secureBoot        bool
		debuggersDisabled bool
		bootDebug         bool
	}{
		{name: "no debugger", secureBoot: true, debuggersDisabled: true},
		{name: "no log", noLog: true, bootDebug: true},
		{name: "no event on PCR 7", withoutPCR7: true, bootDebug: true},
		{name: "UEFI debugger", debugger: true, bootDebug: true},
		{name: "UEFI debugger, event data rewritten", debugger: true,
			mutate: replace([]byte("UEFI Debug Mode"), []byte("UEFI Normal Run")), bootDebug: true},
		{name: "UEFI debugger, event relabelled EV_POST_CODE", debugger: true, mutate: relabel(evPostCode), bootDebug: true},
		{name: "UEFI debugger, event relabelled EV_SEPARATOR", debugger: true, mutate: relabel(evSeparator), bootDebug: true},
		{name: "UEFI debugger, event relabelled EV_EFI_VARIABLE_AUTHORITY", debugger: true, mutate: relabel(evEFIVariableAuthority), bootDebug: true},
		{name: "secure-boot state unreadable, no debugger",
			mutate: replace(utf16le("SecureBoot"), utf16le("XecureBoot")), bootDebug: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, extends, err := tpmsim.BuildEventLog(tpmsim.EventLogOptions{SecureBoot: true, UEFIDebugger: tt.debugger})
			if err != nil {
				t.Fatal(err)
			}
			if tt.mutate != nil {
				raw = tt.mutate(t, raw)
			}
			if tt.withoutPCR7 {
				raw, extends = dropPCR(t, raw, extends, pcrSecureBootPolicy)
			}
			e := newEnv(t)
			for _, x := range extends {
				e.tpm.extend(t, x.PCR, x.Digest)
			}
			if tt.noLog {
				raw = nil
			}
			claims := attestWithLog(t, e, raw, tpmsimKeys(t))
			for k, want := range map[string]bool{
				"secureboot":                     tt.secureBoot,
				"x-ms-azurevm-dbvalidated":       tt.secureBoot,
				"x-ms-azurevm-debuggersdisabled": tt.debuggersDisabled,
				"x-ms-azurevm-bootdebug-enabled": tt.bootDebug,
			} {
				if claims[k] != want {
					t.Errorf("claim %s = %v, want %v", k, claims[k], want)
				}
			}
		})
	}
}

// dropPCR removes the events of pcr from a crypto-agile log with the SHA-256 bank only (as
// tpmsim.BuildEventLog writes), and its extends, so that the log replays without that PCR.
func dropPCR(t *testing.T, raw []byte, extends []tpmsim.PCRExtend, pcr int) ([]byte, []tpmsim.PCRExtend) {
	t.Helper()
	le := binary.LittleEndian
	// The first event, TCG_PCClientPCREvent: pcrIndex, eventType, SHA-1 digest, eventSize, event.
	first := 4 + 4 + 20 + 4 + int(le.Uint32(raw[28:]))
	out := bytes.Clone(raw[:first])
	for rest := raw[first:]; len(rest) > 0; {
		// TCG_PCR_EVENT2 with one SHA-256 digest: pcrIndex, eventType, count, hashAlg, digest,
		// eventSize, event.
		if len(rest) < 50 || le.Uint32(rest[8:]) != 1 {
			t.Fatal("not a SHA-256-only crypto-agile log")
		}
		n := 50 + int(le.Uint32(rest[46:]))
		if int(le.Uint32(rest)) != pcr {
			out = append(out, rest[:n]...)
		}
		rest = rest[n:]
	}
	var kept []tpmsim.PCRExtend
	for _, x := range extends {
		if x.PCR != pcr {
			kept = append(kept, x)
		}
	}
	return out, kept
}

// TestUEFIDebuggerMeasured checks the debugger's detection on its own: the measured digest on
// PCR 7 counts whatever the event's type or data, EV_NO_ACTION (never extended) and other PCRs do
// not.
func TestUEFIDebuggerMeasured(t *testing.T) {
	debug := sha256.Sum256([]byte(uefiDebugModeAction))
	other := sha256.Sum256([]byte("Calling EFI Application from Boot Option"))
	tests := []struct {
		name  string
		event attest.Event
		want  bool
	}{
		{"EV_EFI_ACTION", attest.Event{Index: 7, Type: 0x80000007, Data: []byte(uefiDebugModeAction), Digest: debug[:]}, true},
		{"EV_POST_CODE", attest.Event{Index: 7, Type: 0x00000001, Data: []byte("POST CODE"), Digest: debug[:]}, true},
		{"EV_SEPARATOR", attest.Event{Index: 7, Type: 0x00000004, Data: []byte{0, 0, 0, 0}, Digest: debug[:]}, true},
		{"EV_EFI_VARIABLE_AUTHORITY", attest.Event{Index: 7, Type: 0x800000E0, Data: []byte("db"), Digest: debug[:]}, true},
		{"EV_EFI_VARIABLE_DRIVER_CONFIG", attest.Event{Index: 7, Type: 0x80000001, Digest: debug[:]}, true},
		{"data only", attest.Event{Index: 7, Type: 0x80000007, Data: []byte(uefiDebugModeAction), Digest: other[:]}, true},
		{"EV_NO_ACTION", attest.Event{Index: 7, Type: eventTypeNoAction, Digest: debug[:]}, false},
		{"another PCR", attest.Event{Index: 4, Type: 0x80000007, Data: []byte(uefiDebugModeAction), Digest: debug[:]}, false},
		{"another action", attest.Event{Index: 7, Type: 0x80000007, Data: []byte("Calling EFI Application from Boot Option"), Digest: other[:]}, false},
	}
	for _, tt := range tests {
		if got := uefiDebuggerMeasured([]attest.Event{tt.event}); got != tt.want {
			t.Errorf("%s: uefiDebuggerMeasured = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestAttestCriticalSAN accepts an AK certificate whose critical SAN holds only a directoryName,
// as TPM certificates often do (reference/tpm.md §3.5).
func TestAttestCriticalSAN(t *testing.T) {
	e := newEnv(t)
	e.akCert = e.ca.issueAKCert(t, e.ak.rsa, akCertOptions{criticalDirNameSAN: true, cn: "not-a-uuid.example"})
	in := newInstance(t, e, nil)
	c := e.collect(t)
	status, body := in.attest(t, requestBody(t, c.info()))
	if status != http.StatusOK {
		t.Fatalf("attest: %d %s", status, body)
	}
	_, claims := in.verifyJWT(t, openToken(t, e.tpm, c.eph, azurePCRs, body))
	// Not a UUID CN: the VM id is derived from the AK, stably.
	if id, _ := claims["x-ms-azurevm-vmid"].(string); !uuidPattern.MatchString(id) || id != vmID(e.akCert) {
		t.Errorf("x-ms-azurevm-vmid = %q", id)
	}
}

// TestAttestPolicyIssuance checks that issuance rules add claims and authorization rules gate.
func TestAttestPolicyIssuance(t *testing.T) {
	e := newEnv(t)
	in := newInstance(t, e, func(c *Config) {
		c.Policy = `version=1.0;
authorizationrules {
  c:[type=="x-ms-azurevm-ostype", issuer=="AttestationService", value=="Linux"] => permit();
};
issuancerules {
  c:[type=="x-ms-azurevm-osdistro", issuer=="AttestationService"] => issue(type="distro", value=c.value);
  c:[type=="x-ms-azurevm-attested-pcrs", value>=6] => issue(type="high-pcrs", value=c.value);
  => issue(type="emulated", value=true);
};`
	})
	c := e.collect(t)
	status, body := in.attest(t, requestBody(t, c.info()))
	if status != http.StatusOK {
		t.Fatalf("attest: %d %s", status, body)
	}
	_, claims := in.verifyJWT(t, openToken(t, e.tpm, c.eph, azurePCRs, body))
	if claims["distro"] != "Ubuntu" || claims["emulated"] != true ||
		!reflect.DeepEqual(claims["high-pcrs"], []any{json.Number("6"), json.Number("7")}) {
		t.Errorf("issued claims: distro=%v emulated=%v high-pcrs=%v", claims["distro"], claims["emulated"], claims["high-pcrs"])
	}
	if claims["x-ms-policy-hash"] == policyHash(DefaultPolicy) {
		t.Error("x-ms-policy-hash does not identify the policy in force")
	}
}

func TestAttestReplayedCertifyInfo(t *testing.T) {
	e := newEnv(t)
	in := newInstance(t, e, nil)
	body := requestBody(t, e.collect(t).info())
	if status, rsp := in.attest(t, body); status != http.StatusOK {
		t.Fatalf("first attest: %d %s", status, rsp)
	}
	status, rsp := in.attest(t, body)
	if status != http.StatusBadRequest || cloudError(t, rsp).Code != CodeCertifyInfoReplayed {
		t.Fatalf("replayed attest: %d %s", status, rsp)
	}
	// A fresh certification of the same (deterministic) ephemeral key is accepted.
	if status, rsp := in.attest(t, requestBody(t, e.collect(t).info())); status != http.StatusOK {
		t.Fatalf("fresh attest: %d %s", status, rsp)
	}
	recs := in.srv.Requests()
	if len(recs) != 3 || recs[1].ErrorCode != CodeCertifyInfoReplayed || recs[1].TokenID != "" {
		t.Errorf("Requests() = %+v", recs)
	}
}

// TestAttestReplayLimitPerAK checks, through the server, that one AK attesting again and again
// fills only its own share of the replay cache: beyond Config.ReplayEntriesPerAK it is refused
// (429) while another AK of the same CA still attests, its earlier certifications stay refused as
// replays, and the whole cache is still bounded (503).
func TestAttestReplayLimitPerAK(t *testing.T) {
	e := newEnv(t)
	// A second AK in the same TPM, certified by the same CA.
	otherAK := e.loaded(t, e.tpm.createPrimary(t, tpm2.TPMRHEndorsement, akTemplate(2)))
	other := &env{tpm: e.tpm, ca: e.ca, ak: otherAK, akCert: e.ca.issueAKCert(t, otherAK.rsa, akCertOptions{})}
	in := newInstance(t, e, func(c *Config) { c.ReplayEntriesPerAK, c.ReplayCacheSize = 2, 3 })
	attest := func(e *env) (int, []byte, []byte) {
		c := e.collect(t)
		defer e.unload(c.eph) // the simulator holds only three loaded objects
		body := requestBody(t, c.info())
		status, rsp := in.attest(t, body)
		return status, rsp, body
	}

	status, rsp, first := attest(e)
	if status != http.StatusOK {
		t.Fatalf("attest 1: %d %s", status, rsp)
	}
	if status, rsp, _ = attest(e); status != http.StatusOK {
		t.Fatalf("attest 2: %d %s", status, rsp)
	}
	if status, rsp, _ = attest(e); status != http.StatusTooManyRequests || cloudError(t, rsp).Code != CodeAikAttestationLimit {
		t.Fatalf("attest 3 of the same AK: %d %s, want 429 %s", status, rsp, CodeAikAttestationLimit)
	}
	if status, rsp = in.attest(t, first); status != http.StatusBadRequest || cloudError(t, rsp).Code != CodeCertifyInfoReplayed {
		t.Fatalf("replay of attest 1: %d %s", status, rsp)
	}
	if status, rsp, _ = attest(other); status != http.StatusOK {
		t.Fatalf("another AK: %d %s", status, rsp)
	}
	if status, rsp, _ = attest(other); status != http.StatusServiceUnavailable || cloudError(t, rsp).Code != CodeReplayCacheFull {
		t.Fatalf("another AK, cache full: %d %s, want 503 %s", status, rsp, CodeReplayCacheFull)
	}
}

func TestPolicyDenyThenAttest(t *testing.T) {
	e := newEnv(t)
	in := newInstance(t, e, withPolicyAdmin)
	deny := `version=1.0; authorizationrules { c:[type=="secureboot", value==false] => deny(); => permit(); }; issuancerules { };`
	status, body := in.do(t, http.MethodPut, policyURL("AzureGuest"), []byte(unsignedPolicyJWS(deny)), bearer)
	if status != http.StatusOK {
		t.Fatalf("PUT policy: %d %s", status, body)
	}
	c := e.collect(t)
	status, body = in.attest(t, requestBody(t, c.info()))
	if status != http.StatusBadRequest {
		t.Fatalf("attest under a deny policy: %d %s", status, body)
	}
	ce := cloudError(t, body)
	if ce.Code != CodePolicyEvaluationError || !strings.Contains(ce.Message, "denies") {
		t.Fatalf("error = %+v", ce)
	}
	// Policy refusals do not consume the certify info: under a permissive policy the same
	// evidence is then accepted.
	status, body = in.do(t, http.MethodPut, policyURL("azureguest"), []byte(unsignedPolicyJWS(DefaultPolicy)), bearer)
	if status != http.StatusOK {
		t.Fatalf("PUT policy: %d %s", status, body)
	}
	if status, body = in.attest(t, requestBody(t, c.info())); status != http.StatusOK {
		t.Fatalf("attest after permit policy: %d %s", status, body)
	}
}

// TestAttestMeasuredBoot checks two claims of a replayed log built like the local stack's:
// x-ms-azurevm-dbxvalidated is false when the measured dbx is empty (the other Secure Boot claims
// stay true), and the baseline rules then refuse the token on that rule alone; and a quoted PCR
// that moved from its reset value with no event in the log is a mismatch (go-attestation would
// take such a PCR as verified).
func TestAttestMeasuredBoot(t *testing.T) {
	attestLog := func(t *testing.T, opts tpmsim.EventLogOptions, dropEventsOf int, edit ...func([]byte) []byte) (int, []byte, *instance, *env, *collected) {
		t.Helper()
		raw, extends, err := tpmsim.BuildEventLog(opts)
		if err != nil {
			t.Fatal(err)
		}
		if dropEventsOf >= 0 {
			raw, _ = dropPCR(t, raw, extends, dropEventsOf) // the TPM still gets the PCR's extends
		}
		for _, f := range edit {
			raw = f(raw)
		}
		e := newEnv(t)
		for _, x := range extends {
			e.tpm.extend(t, x.PCR, x.Digest)
		}
		in := newInstance(t, e, func(c *Config) { c.DefaultSecureBootKeys = tpmsimKeys(t) })
		c := e.collect(t)
		c.tcgLog = raw
		status, body := in.attest(t, requestBody(t, c.info()))
		return status, body, in, e, c
	}
	t.Run("empty dbx", func(t *testing.T) {
		status, body, in, e, c := attestLog(t, tpmsim.EventLogOptions{SecureBoot: true, EmptyDBX: true}, -1)
		if status != http.StatusOK {
			t.Fatalf("attest: %d %s", status, body)
		}
		_, claims := in.verifyJWT(t, openToken(t, e.tpm, c.eph, azurePCRs, body))
		for k, want := range map[string]bool{"secureboot": true, "x-ms-azurevm-dbvalidated": true, "x-ms-azurevm-dbxvalidated": false} {
			if claims[k] != want {
				t.Errorf("claim %s = %v, want %v", k, claims[k], want)
			}
		}
		var failed []string
		for _, r := range rules.Baseline().Evaluate(claims).Rules {
			if !r.Passed {
				failed = append(failed, r.Name)
			}
		}
		if !slices.Equal(failed, []string{"dbx-validated"}) {
			t.Errorf("baseline rules failed %v, want [dbx-validated]", failed)
		}
	})
	t.Run("PCR changed without events", func(t *testing.T) {
		status, body, _, _, _ := attestLog(t, tpmsim.EventLogOptions{SecureBoot: true}, 1)
		if status != http.StatusBadRequest || !bytes.Contains(body, []byte(CodeTcgLogMismatch)) || !bytes.Contains(body, []byte("no event for PCR 1")) {
			t.Fatalf("attest: %d %s, want %s for PCR 1", status, body, CodeTcgLogMismatch)
		}
	})
	// EV_NO_ACTION is never extended: a PCR whose only event is one is still a PCR without events.
	t.Run("PCR changed with only an EV_NO_ACTION event", func(t *testing.T) {
		status, body, _, _, _ := attestLog(t, tpmsim.EventLogOptions{SecureBoot: true}, 1, func(raw []byte) []byte { return appendNoActionEvent(raw, 1) })
		if status != http.StatusBadRequest || !bytes.Contains(body, []byte(CodeTcgLogMismatch)) || !bytes.Contains(body, []byte("no event for PCR 1")) {
			t.Fatalf("attest: %d %s, want %s for PCR 1", status, body, CodeTcgLogMismatch)
		}
	})
}

// appendNoActionEvent appends to a SHA-256-only crypto-agile log an EV_NO_ACTION TCG_PCR_EVENT2
// on pcr, with a zero digest and four bytes of data.
func appendNoActionEvent(raw []byte, pcr uint32) []byte {
	le := binary.LittleEndian
	out := le.AppendUint32(bytes.Clone(raw), pcr)
	out = le.AppendUint32(out, eventTypeNoAction)
	out = le.AppendUint32(out, 1)      // digest count
	out = le.AppendUint16(out, 0x000B) // TPM_ALG_SHA256
	out = append(out, make([]byte, 32)...)
	out = le.AppendUint32(out, 4)
	return append(out, "note"...)
}
