package maa

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	wire "github.com/attested-kv/attested-kv/internal/maa"
)

// TestAttestRefusals builds evidence on a real (simulated) TPM, breaks one property per case,
// and checks that the emulator refuses with that check's own error code and issues no token.
func TestAttestRefusals(t *testing.T) {
	e := newEnv(t)
	// A second restricted signing key in the same TPM, certified by nobody.
	otherAK := e.loaded(t, e.tpm.createPrimary(t, tpm2.TPMRHEndorsement, akTemplate(2)))

	type testCase struct {
		name string
		// evidence tampers with the collected evidence (may drive the TPM).
		evidence func(t *testing.T, c *collected)
		// info tampers with the encoded document.
		info func(info *wire.AttestationInfo)
		// body replaces the request body built from the document.
		body func(t *testing.T, valid []byte) []byte
		// url replaces the request URL.
		url string
		// hdr sets request headers ("" leaves one out).
		hdr    map[string]string
		status int
		code   string
		msg    string
	}
	cases := []testCase{
		// Request shape.
		{name: "wrong api-version", url: wire.AttestPath + "?api-version=2022-08-01", status: 400, code: CodeUnsupportedAPIVersion, msg: "2020-10-01"},
		{name: "missing api-version", url: wire.AttestPath, status: 400, code: CodeUnsupportedAPIVersion, msg: "api-version"},
		{name: "repeated api-version", url: attestURL + "&api-version=2020-10-01", status: 400, code: CodeUnsupportedAPIVersion, msg: "api-version"},
		{name: "other attestation type", url: "/attest/Tpm?api-version=2020-10-01", status: 400, code: CodeUnsupportedAttestationType, msg: "Tpm"},
		{name: "sent as text/plain", hdr: map[string]string{"Content-Type": "text/plain"}, status: 415, code: CodeUnsupportedMediaTypeOrBody, msg: "application/json"},
		{name: "sent without a Content-Type", hdr: map[string]string{"Content-Type": ""}, status: 415, code: CodeUnsupportedMediaTypeOrBody, msg: "no Content-Type"},
		{name: "sent as application/jsonx", hdr: map[string]string{"Content-Type": "application/jsonx"}, status: 415, code: CodeUnsupportedMediaTypeOrBody, msg: "application/jsonx"},
		{name: "sent as JSON in UTF-16", hdr: map[string]string{"Content-Type": "application/json; charset=utf-16"}, status: 415, code: CodeUnsupportedMediaTypeOrBody, msg: "not emulated"},
		{name: "Content-Type that does not parse", hdr: map[string]string{"Content-Type": "application/json; charset"}, status: 415, code: CodeUnsupportedMediaTypeOrBody, msg: "does not parse"},
		{name: "outer body not JSON", body: func(*testing.T, []byte) []byte { return []byte("{") }, status: 400, code: CodeInvalidRequestBody},
		{name: "outer body unknown field", body: func(t *testing.T, b []byte) []byte {
			return append(b[:len(b)-1], []byte(`,"RuntimeData":"x"}`)...)
		}, status: 400, code: CodeInvalidRequestBody, msg: "RuntimeData"},
		{name: "outer body trailing data", body: func(t *testing.T, b []byte) []byte { return append(b, []byte(`{}`)...) }, status: 400, code: CodeInvalidRequestBody, msg: "trailing"},
		{name: "AttestationInfo not base64url", body: func(*testing.T, []byte) []byte { return []byte(`{"AttestationInfo":"eyJ+/w=="}`) }, status: 400, code: CodeInvalidAttestationInfoEncoding},
		{name: "AttestationInfo not JSON", body: func(t *testing.T, _ []byte) []byte { return rawRequestBody(t, []byte("not json")) }, status: 400, code: CodeInvalidAttestationInfoJSON},
		{name: "AttestationInfo duplicate key", body: func(t *testing.T, _ []byte) []byte {
			return rawRequestBody(t, []byte(`{"AttestationProtocolVersion":"2.0","attestationProtocolVersion":"2.0"}`))
		}, status: 400, code: CodeInvalidAttestationInfoJSON, msg: "duplicate"},
		{name: "AttestationInfo unknown field", body: func(t *testing.T, valid []byte) []byte {
			var req wire.AttestRequest
			_ = json.Unmarshal(valid, &req)
			inner, _ := base64.RawURLEncoding.DecodeString(req.AttestationInfo)
			return rawRequestBody(t, append(inner[:len(inner)-1], []byte(`,"Extra":1}`)...))
		}, status: 400, code: CodeInvalidAttestationInfoJSON, msg: "Extra"},
		{name: "outer body key in another case", body: func(t *testing.T, b []byte) []byte {
			return bytes.Replace(b, []byte(`"AttestationInfo"`), []byte(`"attestationInfo"`), 1)
		}, status: 400, code: CodeInvalidRequestBody, msg: "case-sensitive"},
		{name: "AttestationInfo key in lower case", body: func(t *testing.T, valid []byte) []byte {
			return rawRequestBody(t, bytes.Replace(innerDocument(t, valid), []byte(`"TpmInfo"`), []byte(`"tpminfo"`), 1))
		}, status: 400, code: CodeInvalidAttestationInfoJSON, msg: `unknown field "tpminfo"`},
		{name: "TpmInfo key in another case", body: func(t *testing.T, valid []byte) []byte {
			return rawRequestBody(t, bytes.Replace(innerDocument(t, valid), []byte(`"AikCert"`), []byte(`"AIKCert"`), 1))
		}, status: 400, code: CodeInvalidAttestationInfoJSON, msg: `"TpmInfo.AIKCert"`},
		{name: "PCRs entry key in another case", body: func(t *testing.T, valid []byte) []byte {
			return rawRequestBody(t, bytes.Replace(innerDocument(t, valid), []byte(`"Digest"`), []byte(`"digest"`), 1))
		}, status: 400, code: CodeInvalidAttestationInfoJSON, msg: `"TpmInfo.PCRs[0].digest"`},
		{name: "IsolationInfo key in another case", body: func(t *testing.T, valid []byte) []byte {
			return rawRequestBody(t, bytes.Replace(innerDocument(t, valid), []byte(`"Type"`), []byte(`"type"`), 1))
		}, status: 400, code: CodeInvalidAttestationInfoJSON, msg: `"IsolationInfo.type"`},
		{name: "oversized body", body: func(*testing.T, []byte) []byte {
			return append([]byte(`{"AttestationInfo":"`), bytes.Repeat([]byte("A"), MaxAttestBodyBytes)...)
		}, status: 413, code: CodeRequestBodyTooLarge},
		{name: "protocol version 1.0", info: func(i *wire.AttestationInfo) { i.AttestationProtocolVersion = "1.0" }, status: 400, code: CodeUnsupportedProtocolVersion},
		{name: "isolation SevSnp", info: func(i *wire.AttestationInfo) { i.IsolationInfo.Type = "SevSnp" }, status: 400, code: CodeUnsupportedIsolationType, msg: "SevSnp"},
		{name: "isolation evidence on Trusted Launch", info: func(i *wire.AttestationInfo) {
			i.IsolationInfo.Evidence = &wire.IsolationProof{Proof: "eA=="}
		}, status: 400, code: CodeUnsupportedIsolationType},
		{name: "Windows guest", info: func(i *wire.AttestationInfo) { i.OSType = b64("Windows") }, status: 400, code: CodeUnsupportedOSType},
		{name: "OS major version 0", info: func(i *wire.AttestationInfo) { i.OSVersionMajor, i.OSVersionMinor = 0, 0 }, status: 400, code: CodeInvalidOSVersion, msg: "OSVersionMajor is 0"},
		{name: "OS major version 0 with a minor", info: func(i *wire.AttestationInfo) { i.OSVersionMajor = 0 }, status: 400, code: CodeInvalidOSVersion, msg: "OSVersionMajor is 0"},
		{name: "field in base64url alphabet", info: func(i *wire.AttestationInfo) {
			i.TpmInfo.PcrQuote = base64.RawURLEncoding.EncodeToString(mustStd(i.TpmInfo.PcrQuote))
		}, status: 400, code: CodeInvalidFieldEncoding, msg: "PcrQuote"},
		{name: "field with line breaks", info: func(i *wire.AttestationInfo) {
			i.TpmInfo.AikCert = i.TpmInfo.AikCert[:64] + "\n" + i.TpmInfo.AikCert[64:]
		}, status: 400, code: CodeInvalidFieldEncoding, msg: "AikCert"},
		{name: "missing EncKeyPub", info: func(i *wire.AttestationInfo) { i.TpmInfo.EncKeyPub = "" }, status: 400, code: CodeInvalidFieldEncoding, msg: "EncKeyPub"},
		{name: "client payload not base64", info: func(i *wire.AttestationInfo) { i.ClientPayload = map[string]string{"nonce": "not base64!"} }, status: 400, code: CodeInvalidClientPayload},

		// AK certificate.
		{name: "AK cert not DER", evidence: func(t *testing.T, c *collected) { c.akCert = []byte("certificate") }, status: 400, code: CodeAikCertInvalid},
		{name: "AK cert with trailing bytes", evidence: func(t *testing.T, c *collected) { c.akCert = append(c.akCert, 0, 0) }, status: 400, code: CodeAikCertInvalid},
		{name: "AK cert from another CA", evidence: func(t *testing.T, c *collected) {
			c.akCert = newTestCA(t, "Rogue vTPM").issueAKCert(t, e.ak.rsa, akCertOptions{}).Raw
		}, status: 400, code: CodeAikCertUntrusted, msg: "Rogue vTPM"},
		{name: "AK cert expired", evidence: func(t *testing.T, c *collected) {
			c.akCert = e.ca.issueAKCert(t, e.ak.rsa, akCertOptions{notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-24 * time.Hour)}).Raw
		}, status: 400, code: CodeAikCertNotValidNow},
		{name: "AK cert is the intermediate", evidence: func(t *testing.T, c *collected) { c.akCert = e.ca.inter.Raw }, status: 400, code: CodeAikCertInvalid, msg: "CA"},
		{name: "AK cert for another key", evidence: func(t *testing.T, c *collected) {
			c.akCert = e.ca.issueAKCert(t, otherAK.rsa, akCertOptions{}).Raw
		}, status: 400, code: CodeAikKeyMismatch},
		{name: "AikPub not a TPM2B_PUBLIC", evidence: func(t *testing.T, c *collected) { c.akPub = c.akPub[:len(c.akPub)-1] }, status: 400, code: CodeAikPubInvalid},
		{name: "AikPub with trailing bytes", evidence: func(t *testing.T, c *collected) { c.akPub = append(c.akPub, 0) }, status: 400, code: CodeAikPubInvalid},
		{name: "AikPub is a decryption key", evidence: func(t *testing.T, c *collected) {
			c.akPub = c.eph.pub
			c.akCert = e.ca.issueAKCert(t, c.eph.rsa, akCertOptions{}).Raw
		}, status: 400, code: CodeAikPubInvalid, msg: "restricted signing"},

		// Quote.
		{name: "quote signed by another key", evidence: func(t *testing.T, c *collected) {
			c.quote, c.quoteSig = e.tpm.quote(t, otherAK, azurePCRs)
		}, status: 400, code: CodeQuoteSignatureInvalid},
		{name: "quote signature truncated", evidence: func(t *testing.T, c *collected) { c.quoteSig = c.quoteSig[:255] }, status: 400, code: CodeQuoteSignatureInvalid},
		{name: "quote bytes altered", evidence: func(t *testing.T, c *collected) { c.quote[len(c.quote)-1] ^= 1 }, status: 400, code: CodeQuoteSignatureInvalid},
		{name: "certify info sent as the quote", evidence: func(t *testing.T, c *collected) {
			c.quote, c.quoteSig = c.certifyInfo, c.certifySig
		}, status: 400, code: CodeQuoteInvalid, msg: "type"},
		{name: "quote with qualifying data", evidence: func(t *testing.T, c *collected) {
			rsp, err := tpm2.Quote{
				SignHandle:     e.ak.auth(tpm2.PasswordAuth(nil)),
				QualifyingData: tpm2.TPM2BData{Buffer: []byte("nonce")},
				InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
				PCRSelect:      pcrSelection(azurePCRs),
			}.Execute(e.tpm.tpm)
			if err != nil {
				t.Fatal(err)
			}
			c.quote, c.quoteSig = rsp.Quoted.Bytes(), rsaSig(t, rsp.Signature)
		}, status: 400, code: CodeQuoteInvalid, msg: "qualifying data"},
		{name: "PCR value does not match the digest", evidence: func(t *testing.T, c *collected) {
			c.pcrs[3].digest = sha256Sum([]byte("forged PCR 3"))
		}, status: 400, code: CodePcrDigestMismatch},
		{name: "PCR 7 missing from the set", evidence: func(t *testing.T, c *collected) {
			c.pcrSet, c.pcrs = c.pcrSet[:7], c.pcrs[:7]
		}, status: 400, code: CodePcrSetInvalid, msg: "lacks PCRs [7]"},
		{name: "PCR value missing from PCRs", evidence: func(t *testing.T, c *collected) { c.pcrs = c.pcrs[:7] }, status: 400, code: CodePcrSetInvalid},
		{name: "PCRs out of set order", evidence: func(t *testing.T, c *collected) { c.pcrs[0], c.pcrs[1] = c.pcrs[1], c.pcrs[0] }, status: 400, code: CodePcrSetInvalid},
		{name: "PcrSet not ascending", evidence: func(t *testing.T, c *collected) { c.pcrSet[0], c.pcrSet[1] = 1, 0 }, status: 400, code: CodePcrSetInvalid},
		{name: "PCR digest not SHA-256 sized", evidence: func(t *testing.T, c *collected) { c.pcrs[2].digest = c.pcrs[2].digest[:20] }, status: 400, code: CodePcrSetInvalid},
		{name: "quote covers more PCRs than PcrSet", evidence: func(t *testing.T, c *collected) {
			c.quote, c.quoteSig = e.tpm.quote(t, e.ak, []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8})
		}, status: 400, code: CodePcrSelectionMismatch, msg: "[0 1 2 3 4 5 6 7 8]"},

		// Ephemeral key and its certification.
		{name: "ephemeral key certified by another key", evidence: func(t *testing.T, c *collected) {
			c.certifyInfo, c.certifySig = e.tpm.certify(t, c.eph, otherAK)
		}, status: 400, code: CodeCertifySignatureInvalid},
		{name: "EncKeyPub swapped for another key", evidence: func(t *testing.T, c *collected) {
			e.unload(c.eph)
			c.eph = e.loaded(t, e.tpm.createPrimary(t, tpm2.TPMRHOwner, ephemeralTemplate(e.tpm.policyPCRDigestOnTPM(t, azurePCRs))))
		}, status: 400, code: CodeCertifiedNameMismatch},
		{name: "ephemeral key without PCR policy", evidence: func(t *testing.T, c *collected) {
			e.unload(c.eph)
			c.eph = e.loaded(t, e.tpm.createPrimary(t, tpm2.TPMRHNull, ephemeralTemplate(nil)))
			c.certifyInfo, c.certifySig = e.tpm.certify(t, c.eph, e.ak)
		}, status: 400, code: CodeEncKeyPolicyMismatch},
		{name: "ephemeral key bound to other PCRs", evidence: func(t *testing.T, c *collected) {
			e.unload(c.eph)
			c.eph = e.loaded(t, e.tpm.createPrimary(t, tpm2.TPMRHNull, ephemeralTemplate(e.tpm.policyPCRDigestOnTPM(t, []uint32{0, 1}))))
			c.certifyInfo, c.certifySig = e.tpm.certify(t, c.eph, e.ak)
		}, status: 400, code: CodeEncKeyPolicyMismatch},
		{name: "ephemeral key usable with its auth value", evidence: func(t *testing.T, c *collected) {
			tmpl := ephemeralTemplate(e.tpm.policyPCRDigestOnTPM(t, azurePCRs))
			tmpl.ObjectAttributes.UserWithAuth = true
			e.unload(c.eph)
			c.eph = e.loaded(t, e.tpm.createPrimary(t, tpm2.TPMRHNull, tmpl))
			c.certifyInfo, c.certifySig = e.tpm.certify(t, c.eph, e.ak)
		}, status: 400, code: CodeEncKeyInvalid, msg: "userWithAuth"},
		{name: "ephemeral key can sign", evidence: func(t *testing.T, c *collected) {
			tmpl := ephemeralTemplate(e.tpm.policyPCRDigestOnTPM(t, azurePCRs))
			tmpl.ObjectAttributes.SignEncrypt = true
			e.unload(c.eph)
			c.eph = e.loaded(t, e.tpm.createPrimary(t, tpm2.TPMRHNull, tmpl))
			c.certifyInfo, c.certifySig = e.tpm.certify(t, c.eph, e.ak)
		}, status: 400, code: CodeEncKeyInvalid, msg: "signing"},
		{name: "ephemeral key is the AK", evidence: func(t *testing.T, c *collected) {
			e.unload(c.eph)
			c.eph = e.ak
			c.certifyInfo, c.certifySig = e.tpm.certify(t, e.ak, e.ak)
		}, status: 400, code: CodeEncKeyInvalid},
		{name: "quote sent as certify info", evidence: func(t *testing.T, c *collected) {
			c.certifyInfo, c.certifySig = c.quote, c.quoteSig
		}, status: 400, code: CodeCertifyInfoInvalid, msg: "type"},
		{name: "certify info long before the quote", evidence: func(t *testing.T, c *collected) {
			e.tpm.clockAdvance(t, 2*time.Minute)
			c.quote, c.quoteSig = e.tpm.quote(t, e.ak, azurePCRs)
		}, status: 400, code: CodeEvidenceClockSkew},

		// TCG log.
		{name: "TCG log that does not match the PCRs", evidence: func(t *testing.T, c *collected) {
			c.tcgLog = readFixture(t, "testdata/rhel8-uefi.bin")
		}, status: 400, code: CodeTcgLogMismatch},
		{name: "TCG log garbage", evidence: func(t *testing.T, c *collected) { c.tcgLog = []byte("not an event log") }, status: 400, code: CodeTcgLogInvalid},

		// Last: it reboots the TPM, which unloads otherAK.
		{name: "certify info from before a TPM reset", evidence: func(t *testing.T, c *collected) {
			// c holds the ephemeral key and its certification from this boot; reboot and quote.
			e.tpm.reset(t)
			c.quote, c.quoteSig = e.tpm.quote(t, e.ak, azurePCRs)
			c.pcrs = e.readPCRs(t, azurePCRs)
		}, status: 400, code: CodeEvidenceBootMismatch, msg: "different TPM boots"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := newInstance(t, e, nil)
			c := e.collect(t)
			if tc.evidence != nil {
				tc.evidence(t, c)
			}
			info := c.info()
			if tc.info != nil {
				tc.info(info)
			}
			body := requestBody(t, info)
			if tc.body != nil {
				body = tc.body(t, body)
			}
			url := attestURL
			if tc.url != "" {
				url = tc.url
			}
			status, rsp := in.do(t, http.MethodPost, url, body, tc.hdr)
			ce := cloudError(t, rsp)
			t.Logf("%d %s: %s", status, ce.Code, ce.Message)
			if status != tc.status || ce.Code != tc.code || !strings.Contains(ce.Message, tc.msg) {
				t.Fatalf("got %d %s: %s\nwant %d %s containing %q", status, ce.Code, ce.Message, tc.status, tc.code, tc.msg)
			}
			recs := in.srv.Requests()
			if len(recs) != 1 || recs[0].ErrorCode != tc.code || recs[0].TokenID != "" {
				t.Errorf("Requests() = %+v", recs)
			}
		})
	}
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// innerDocument returns the AttestationInfo JSON document of a request body.
func innerDocument(t *testing.T, body []byte) []byte {
	t.Helper()
	var req wire.AttestRequest
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatal(err)
	}
	inner, err := base64.RawURLEncoding.DecodeString(req.AttestationInfo)
	if err != nil {
		t.Fatal(err)
	}
	return inner
}

func mustStd(s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}
