package maa

import (
	"crypto/x509"
	"encoding/base64"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"
)

// FuzzDecodeAttestationInfo drives the whole evidence path with attacker-controlled bytes: body
// decoding, the TPM structure parsers, signature and chain checks, and the TCG log parser. None
// may panic; a seed built on the TPM simulator starts the fuzzer from valid evidence.
func FuzzDecodeAttestationInfo(f *testing.F) {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	e := newEnv(f) // skips without cgo
	roots.AddCert(e.ca.root)
	inter.AddCert(e.ca.inter)
	info := e.collect(f).info()
	f.Add(requestBody(f, info))
	// The same evidence with a small log, to reach the log parser (FuzzVerifyTCGLog covers it).
	info.TcgLogs = base64.StdEncoding.EncodeToString(readFixture(f, "testdata/rhel8-uefi.bin")[:512])
	f.Add(requestBody(f, info))
	f.Add([]byte(`{"AttestationInfo":""}`))
	f.Add([]byte(`{"AttestationInfo":"e30"}`))
	f.Add(rawRequestBody(f, []byte(`{"AttestationProtocolVersion":"2.0","OSType":"TGludXg=","IsolationInfo":{"Type":"TrustedLaunch"},"TpmInfo":{"PcrSet":[0,1,2,3,4,5,6,7]}}`)))

	opts := verifyOptions{roots: roots, intermediates: inter, now: time.Now(), maxClockSkew: DefaultMaxClockSkew}
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := decodeRequest(body)
		if err != nil {
			if asCheckError(err).Code == CodeInternalError {
				t.Fatalf("decoding failed without a check code: %v", err)
			}
			return
		}
		if _, err := verifyEvidence(ev, opts); err != nil && asCheckError(err).Code == CodeInternalError {
			t.Fatalf("verification failed without a check code: %v", err)
		}
		// The log parser runs on whatever the request carried, verified or not.
		_, _ = verifyTCGLog(ev.tcgLog, ev.pcrs, nil)
	})
}

// FuzzVerifyTCGLog: the TCG log parser, replay and secure-boot extraction must never panic. The
// PCR values are those the real log replays to, so that mutations reach the secure-boot parser.
func FuzzVerifyTCGLog(f *testing.F) {
	raw := readFixture(f, "testdata/rhel8-uefi.bin")
	el, err := attest.ParseEventLog(raw)
	if err != nil {
		f.Fatal(err)
	}
	pcrs := make([]pcrValue, 8)
	for i := range pcrs {
		pcrs[i] = pcrValue{index: uint32(i), digest: make([]byte, 32)}
	}
	for _, ev := range el.Events(attest.HashSHA256) {
		if ev.Type != eventTypeNoAction && ev.Index < len(pcrs) {
			pcrs[ev.Index].digest = sha256Sum(append(pcrs[ev.Index].digest, ev.Digest...))
		}
	}
	known := newDefaultKeySet(logSecureBootKeys(f, raw))
	if st, err := verifyTCGLog(raw, pcrs, known); err != nil || !st.secureBoot || !st.defaultKeys {
		f.Fatalf("the fixture does not replay: %+v %v", st, err)
	}
	f.Add(raw)
	f.Add(raw[:1024])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, log []byte) {
		st, err := verifyTCGLog(log, pcrs, known)
		if err != nil && asCheckError(err).Code == CodeInternalError {
			t.Fatalf("log check failed without a check code: %v", err)
		}
		if err == nil && len(log) > 0 && !st.logPresent {
			t.Fatal("a non-empty log was accepted as absent")
		}
	})
}

// FuzzParsePolicy: the policy parser and evaluator must never panic, and a parsed policy must
// evaluate (to a result or an error) over a realistic claim set.
func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{
		DefaultPolicy,
		`version=1.0; authorizationrules { c:[type=="secureboot", issuer=="AttestationService"] && c2:[type=="x-ms-azurevm-dbvalidated", value==true] => permit(); [type=="x", value!=3] => deny(); }; issuancerules { c:[type=="x-ms-azurevm-osdistro"] => issue(type="d", value=c.value); c:[type=="secureboot"] => issue(claim=c); };`,
		`version=1.2; authorizationrules { F1:[type=="a"] && [type=="b", value==F1.value] => add(type="c", value=-1); [type=="c", value<0] => permit(); };`,
		"version=1.0; authorizationrules { [type==\"\\\"\\\\\"] => permit(); };",
	} {
		f.Add(s)
	}
	claims := sampleClaims()
	f.Fuzz(func(t *testing.T, text string) {
		pol, err := parsePolicy(text)
		if err != nil {
			return
		}
		_, _ = pol.evaluate(claims)
	})
}

// FuzzPolicyDocument: the PUT /policies body parser must never panic.
func FuzzPolicyDocument(f *testing.F) {
	f.Add([]byte(unsignedPolicyJWS(DefaultPolicy)))
	f.Add([]byte("eyJhbGciOiJub25lIn0.."))
	f.Fuzz(func(t *testing.T, body []byte) {
		jws, text, err := parsePolicyJWS(body)
		if err != nil {
			return
		}
		if jws == "" {
			t.Fatal("accepted an empty JWS")
		}
		_, _ = parsePolicy(text)
	})
}
