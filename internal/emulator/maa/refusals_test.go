package maa

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"os"
	"slices"
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
	// A leaked AK, for the checks that only evidence no TPM signs can reach.
	leaked := newSoftwareAK(t, e.ca)
	// A CA whose intermediate a row gives the instance as chain material, under no trusted root.
	chainOnly := newTestCA(t, "Chain-only vTPM")

	// useAK makes ak the AK of c: its public area, a certificate from the trusted CA, and the
	// quote and certification signed by it.
	useAK := func(t *testing.T, c *collected, ak tpmKey) {
		c.akPub = ak.pub
		c.akCert = e.ca.issueAKCert(t, ak.rsa, akCertOptions{}).Raw
		c.quote, c.quoteSig = e.tpm.quote(t, ak, azurePCRs)
		c.certifyInfo, c.certifySig = e.tpm.certify(t, c.eph, ak)
	}
	// useEph replaces the ephemeral key of c with one the TPM creates in the NULL hierarchy from
	// AZGA's template, PolicyPCR over PCRs 0-7 included, changed by alter; the AK certifies it.
	useEph := func(t *testing.T, c *collected, alter func(*tpm2.TPMTPublic)) {
		tmpl := ephemeralTemplate(e.tpm.policyPCRDigestOnTPM(t, azurePCRs))
		alter(&tmpl)
		e.unload(c.eph)
		c.eph = e.loaded(t, e.tpm.createPrimary(t, tpm2.TPMRHNull, tmpl))
		c.certifyInfo, c.certifySig = e.tpm.certify(t, c.eph, e.ak)
	}

	type testCase struct {
		name string
		// evidence tampers with the collected evidence (may drive the TPM).
		evidence func(t *testing.T, c *collected)
		// info tampers with the encoded document.
		info func(info *wire.AttestationInfo)
		// body replaces the request body built from the document.
		body func(t *testing.T, valid []byte) []byte
		// url replaces the request URL, method the POST.
		url, method string
		// cfg changes the instance's configuration.
		cfg func(*Config)
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
		{name: "GET with valid evidence", method: http.MethodGet, status: 405, code: CodeMethodNotAllowed, msg: "GET"},
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
		{name: "empty OS distro", info: func(i *wire.AttestationInfo) { i.OSDistro = "" }, status: 400, code: CodeInvalidAttestationInfoJSON, msg: "OSDistro or OSBuild is empty"},
		{name: "empty OS build", info: func(i *wire.AttestationInfo) { i.OSBuild = "" }, status: 400, code: CodeInvalidAttestationInfoJSON, msg: "OSDistro or OSBuild is empty"},
		{name: "AttestationInfo without ClientPayload and TcgLogs", body: func(t *testing.T, valid []byte) []byte {
			var doc map[string]any
			if err := json.Unmarshal(innerDocument(t, valid), &doc); err != nil {
				t.Fatal(err)
			}
			delete(doc, "ClientPayload")
			delete(doc, "TcgLogs")
			b, _ := json.Marshal(doc)
			return rawRequestBody(t, b)
		}, status: 400, code: CodeInvalidAttestationInfoJSON, msg: "lacks ClientPayload, TcgLogs"},
		{name: "AttestationInfo without OSVersionMinor", body: func(t *testing.T, valid []byte) []byte {
			var doc map[string]any
			if err := json.Unmarshal(innerDocument(t, valid), &doc); err != nil {
				t.Fatal(err)
			}
			delete(doc, "OSVersionMinor")
			b, _ := json.Marshal(doc)
			return rawRequestBody(t, b)
		}, status: 400, code: CodeInvalidAttestationInfoJSON, msg: "lacks OSVersionMinor"},
		{name: "OS distro not UTF-8", info: func(i *wire.AttestationInfo) { i.OSDistro = b64("Ubuntu\xff") }, status: 400, code: CodeInvalidFieldEncoding, msg: "OSDistro is not UTF-8"},
		{name: "client payload not base64", info: func(i *wire.AttestationInfo) { i.ClientPayload = map[string]string{"nonce": "not base64!"} }, status: 400, code: CodeInvalidClientPayload},

		// AK certificate.
		{name: "AK cert not DER", evidence: func(t *testing.T, c *collected) { c.akCert = []byte("certificate") }, status: 400, code: CodeAikCertInvalid},
		{name: "AK cert with trailing bytes", evidence: func(t *testing.T, c *collected) { c.akCert = append(c.akCert, 0, 0) }, status: 400, code: CodeAikCertInvalid},
		{name: "AK cert from another CA", evidence: func(t *testing.T, c *collected) {
			c.akCert = newTestCA(t, "Rogue vTPM").issueAKCert(t, e.ak.rsa, akCertOptions{}).Raw
		}, status: 400, code: CodeAikCertUntrusted, msg: "Rogue vTPM"},
		{name: "AK cert under an intermediate that is only chain material", cfg: func(c *Config) { c.Intermediates.AddCert(chainOnly.inter) },
			evidence: func(t *testing.T, c *collected) {
				c.akCert = chainOnly.issueAKCert(t, e.ak.rsa, akCertOptions{}).Raw
			}, status: 400, code: CodeAikCertUntrusted, msg: "Chain-only vTPM"},
		{name: "AK cert with an empty critical SAN", evidence: func(t *testing.T, c *collected) {
			c.akCert = e.ca.issueAKCert(t, e.ak.rsa, akCertOptions{extensions: []pkix.Extension{criticalSAN(nil)}}).Raw
		}, status: 400, code: CodeAikCertInvalid, msg: "not a well-formed GeneralNames"},
		{name: "AK cert with bytes after its critical SAN", evidence: func(t *testing.T, c *collected) {
			ext := criticalSAN(dirNameGeneralName())
			ext.Value = append(ext.Value, 0x05, 0x00)
			c.akCert = e.ca.issueAKCert(t, e.ak.rsa, akCertOptions{extensions: []pkix.Extension{ext}}).Raw
		}, status: 400, code: CodeAikCertInvalid, msg: "not a well-formed GeneralNames"},
		{name: "AK cert with a critical SAN holding a non-GeneralName", evidence: func(t *testing.T, c *collected) {
			s, _ := asn1.Marshal("TPM")
			c.akCert = e.ca.issueAKCert(t, e.ak.rsa, akCertOptions{extensions: []pkix.Extension{criticalSAN(s)}}).Raw
		}, status: 400, code: CodeAikCertInvalid, msg: "not a GeneralName"},
		{name: "AK cert with an unknown critical extension beside its critical SAN", evidence: func(t *testing.T, c *collected) {
			null, _ := asn1.Marshal(asn1.NullRawValue)
			c.akCert = e.ca.issueAKCert(t, e.ak.rsa, akCertOptions{criticalDirNameSAN: true,
				extensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59999, 9}, Critical: true, Value: null}}}).Raw
		}, status: 400, code: CodeAikCertUntrusted, msg: "unhandled critical extension"},
		{name: "AK cert expired", evidence: func(t *testing.T, c *collected) {
			c.akCert = e.ca.issueAKCert(t, e.ak.rsa, akCertOptions{notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-24 * time.Hour)}).Raw
		}, status: 400, code: CodeAikCertNotValidNow},
		{name: "AK cert is the intermediate", evidence: func(t *testing.T, c *collected) { c.akCert = e.ca.inter.Raw }, status: 400, code: CodeAikCertInvalid, msg: "CA"},
		{name: "AK cert for key encipherment only", evidence: func(t *testing.T, c *collected) {
			c.akCert = e.ca.issueAKCert(t, e.ak.rsa, akCertOptions{keyUsage: x509.KeyUsageKeyEncipherment}).Raw
		}, status: 400, code: CodeAikCertInvalid, msg: "key usage"},
		{name: "AK cert for another key", evidence: func(t *testing.T, c *collected) {
			c.akCert = e.ca.issueAKCert(t, otherAK.rsa, akCertOptions{}).Raw
		}, status: 400, code: CodeAikKeyMismatch},
		{name: "AikPub not a TPM2B_PUBLIC", evidence: func(t *testing.T, c *collected) { c.akPub = c.akPub[:len(c.akPub)-1] }, status: 400, code: CodeAikPubInvalid},
		{name: "AikPub longer than its size field", evidence: func(t *testing.T, c *collected) { c.akPub = append(c.akPub, 0) }, status: 400, code: CodeAikPubInvalid, msg: "size field"},
		{name: "AikPub with trailing bytes inside its size", evidence: func(t *testing.T, c *collected) { c.akPub = growTPM2B(c.akPub) },
			status: 400, code: CodeAikPubInvalid, msg: "trailing or non-canonical"},
		{name: "AikPub is a decryption key", evidence: func(t *testing.T, c *collected) {
			c.akPub = c.eph.pub
			c.akCert = e.ca.issueAKCert(t, c.eph.rsa, akCertOptions{}).Raw
		}, status: 400, code: CodeAikPubInvalid, msg: "restricted signing"},
		{name: "AK duplicable with its parent", evidence: func(t *testing.T, c *collected) {
			// fixedTPM clear, fixedParent set: only a child key can be so.
			tmpl := akTemplate(3)
			tmpl.ObjectAttributes.FixedTPM = false
			e.unload(c.eph)
			ak := e.loaded(t, e.tpm.createUnderDuplicableParent(t, tmpl))
			c.eph = e.ephemeralKey(t, azurePCRs)
			useAK(t, c, ak)
		}, status: 400, code: CodeAikPubInvalid, msg: "fixedTPM=false fixedParent=true sensitiveDataOrigin=true"},
		{name: "AK signs with RSASSA-PSS", evidence: func(t *testing.T, c *collected) {
			tmpl := akTemplate(3)
			rsaParms(tmpl).Scheme = tpm2.TPMTRSAScheme{
				Scheme:  tpm2.TPMAlgRSAPSS,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSAPSS, &tpm2.TPMSSigSchemeRSAPSS{HashAlg: tpm2.TPMAlgSHA256}),
			}
			useAK(t, c, e.loaded(t, e.tpm.createPrimary(t, tpm2.TPMRHEndorsement, tmpl)))
		}, status: 400, code: CodeAikPubInvalid, msg: "not RSASSA"},
		{name: "AK signs with RSASSA SHA-384", evidence: func(t *testing.T, c *collected) {
			tmpl := akTemplate(3)
			rsaParms(tmpl).Scheme = tpm2.TPMTRSAScheme{
				Scheme:  tpm2.TPMAlgRSASSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA384}),
			}
			useAK(t, c, e.loaded(t, e.tpm.createPrimary(t, tpm2.TPMRHEndorsement, tmpl)))
		}, status: 400, code: CodeAikPubInvalid, msg: "does not use SHA-256"},

		// Quote.
		{name: "quote signed by another key", evidence: func(t *testing.T, c *collected) {
			c.quote, c.quoteSig = e.tpm.quote(t, otherAK, azurePCRs)
		}, status: 400, code: CodeQuoteSignatureInvalid},
		{name: "quote signature truncated", evidence: func(t *testing.T, c *collected) { c.quoteSig = c.quoteSig[:255] }, status: 400, code: CodeQuoteSignatureInvalid},
		{name: "quote bytes altered", evidence: func(t *testing.T, c *collected) { c.quote[len(c.quote)-1] ^= 1 }, status: 400, code: CodeQuoteSignatureInvalid},
		{name: "quote signed by the AK with TPM2_Sign", evidence: func(t *testing.T, c *collected) {
			// The AK's quote with another magic: what TPM2_Sign lets the AK sign.
			c.quote[3] ^= 1
			c.quoteSig = e.tpm.signWithTicket(t, e.ak, c.quote)
		}, status: 400, code: CodeQuoteInvalid, msg: "not generated by a TPM"},
		{name: "quote with trailing bytes under the AK's signature", evidence: func(t *testing.T, c *collected) {
			c.quote = append(c.quote, 0)
			leaked.resign(t, c)
		}, status: 400, code: CodeQuoteInvalid, msg: "trailing or non-canonical"},
		{name: "quote of the SHA-1 bank", evidence: func(t *testing.T, c *collected) {
			sel := pcrSelection(azurePCRs)
			sel.PCRSelections[0].Hash = tpm2.TPMAlgSHA1
			c.quote, c.quoteSig = e.tpm.quoteSelection(t, e.ak, sel)
		}, status: 400, code: CodePcrSelectionMismatch, msg: "not SHA-256"},
		{name: "quote of the SHA-256 and SHA-1 banks", evidence: func(t *testing.T, c *collected) {
			sel := pcrSelection(azurePCRs)
			sha1 := sel.PCRSelections[0]
			sha1.Hash = tpm2.TPMAlgSHA1
			sel.PCRSelections = append(sel.PCRSelections, sha1)
			c.quote, c.quoteSig = e.tpm.quoteSelection(t, e.ak, sel)
		}, status: 400, code: CodePcrSelectionMismatch, msg: "selects 2 PCR banks"},
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
		{name: "PcrSet names PCR 24", evidence: func(t *testing.T, c *collected) {
			c.pcrSet = append(c.pcrSet, 24)
			c.pcrs = append(c.pcrs, pcrValue{index: 24, digest: make([]byte, 32)})
		}, status: 400, code: CodePcrSetInvalid, msg: "PCRs go up to 23"},
		{name: "PcrSet repeats a PCR", evidence: func(t *testing.T, c *collected) {
			c.pcrSet = []uint32{0, 1, 1, 2, 3, 4, 5, 6, 7}
			c.pcrs = slices.Insert(c.pcrs, 2, c.pcrs[1])
		}, status: 400, code: CodePcrSetInvalid, msg: "strictly ascending"},
		{name: "PCRs holds a value beyond PcrSet", evidence: func(t *testing.T, c *collected) {
			c.pcrs = append(c.pcrs, pcrValue{index: 8, digest: make([]byte, 32)})
		}, status: 400, code: CodePcrSetInvalid, msg: "PCRs has 9 entries but PcrSet names 8"},
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
		{name: "ephemeral key is restricted", evidence: func(t *testing.T, c *collected) {
			// A restricted decryption key must have a symmetric algorithm (the TPM refuses one
			// without); only the restricted check names the attribute.
			useEph(t, c, func(p *tpm2.TPMTPublic) {
				p.ObjectAttributes.Restricted = true
				rsaParms(*p).Symmetric = aes128CFB()
			})
		}, status: 400, code: CodeEncKeyInvalid, msg: "EncKeyPub is restricted"},
		{name: "ephemeral key duplicable with its parent", evidence: func(t *testing.T, c *collected) {
			// fixedTPM clear, fixedParent set: only a child key can be so.
			tmpl := ephemeralTemplate(e.tpm.policyPCRDigestOnTPM(t, azurePCRs))
			tmpl.ObjectAttributes.FixedTPM = false
			e.unload(c.eph)
			c.eph = e.loaded(t, e.tpm.createUnderDuplicableParent(t, tmpl))
			c.certifyInfo, c.certifySig = e.tpm.certify(t, c.eph, e.ak)
		}, status: 400, code: CodeEncKeyInvalid, msg: "fixedTPM=false fixedParent=true sensitiveDataOrigin=true"},
		{name: "ephemeral key is RSA-1024", evidence: func(t *testing.T, c *collected) {
			useEph(t, c, func(p *tpm2.TPMTPublic) {
				rsaParms(*p).KeyBits = 1024
				p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 128)})
			})
		}, status: 400, code: CodeEncKeyInvalid, msg: "RSA-1024; the ephemeral key is RSA-2048"},
		{name: "ephemeral key decrypts OAEP only", evidence: func(t *testing.T, c *collected) {
			useEph(t, c, func(p *tpm2.TPMTPublic) {
				rsaParms(*p).Scheme = tpm2.TPMTRSAScheme{
					Scheme:  tpm2.TPMAlgOAEP,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgOAEP, &tpm2.TPMSEncSchemeOAEP{HashAlg: tpm2.TPMAlgSHA256}),
				}
			})
		}, status: 400, code: CodeEncKeyInvalid, msg: "cannot decrypt RSAES-PKCS1-v1_5"},
		{name: "ephemeral key named with SHA-384", evidence: func(t *testing.T, c *collected) {
			useEph(t, c, func(p *tpm2.TPMTPublic) {
				p.NameAlg = tpm2.TPMAlgSHA384
				p.AuthPolicy.Buffer = e.tpm.policyPCRDigestOnTPMWith(t, tpm2.TPMAlgSHA384, azurePCRs)
			})
		}, status: 400, code: CodeEncKeyInvalid, msg: "nameAlg is 0xc, not SHA-256"},
		{name: "EncKeyPub with trailing bytes inside its size", evidence: func(t *testing.T, c *collected) { c.eph.pub = growTPM2B(c.eph.pub) },
			status: 400, code: CodeEncKeyInvalid, msg: "trailing or non-canonical"},
		{name: "certify info for a software key signed by the AK with TPM2_Sign", evidence: func(t *testing.T, c *collected) {
			// What a TPM2_Sign-made certification could do: vouch for a key held outside any TPM,
			// with the PCR policy and every attribute of the real one, which could open the token.
			outside := testRSAKey(t)
			tmpl := ephemeralTemplate(e.tpm.policyPCRDigestOnTPM(t, azurePCRs))
			tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: outside.N.FillBytes(make([]byte, 256))})
			e.unload(c.eph)
			c.eph = tpmKey{pub: tpm2.Marshal(tpm2.New2B(tmpl)), rsa: &outside.PublicKey}
			a := mustUnmarshal[tpm2.TPMSAttest](t, c.certifyInfo)
			ci, err := a.Attested.Certify()
			if err != nil {
				t.Fatal(err)
			}
			ci.Name.Buffer = objectName(tpm2.TPMAlgSHA256, tpm2.Marshal(tmpl))
			a.Magic ^= 1
			c.certifyInfo = tpm2.Marshal(a)
			c.certifySig = e.tpm.signWithTicket(t, e.ak, c.certifyInfo)
		}, status: 400, code: CodeCertifyInfoInvalid, msg: "not generated by a TPM"},
		{name: "certify info with qualifying data", evidence: func(t *testing.T, c *collected) {
			rsp, err := tpm2.Certify{
				ObjectHandle:   c.eph.auth(tpm2.PasswordAuth(nil)),
				SignHandle:     e.ak.auth(tpm2.PasswordAuth(nil)),
				QualifyingData: tpm2.TPM2BData{Buffer: []byte("nonce")},
				InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			}.Execute(e.tpm.tpm)
			if err != nil {
				t.Fatal(err)
			}
			c.certifyInfo, c.certifySig = rsp.CertifyInfo.Bytes(), rsaSig(t, rsp.Signature)
		}, status: 400, code: CodeCertifyInfoInvalid, msg: "EncKeyCertifyInfo carries 5 bytes of qualifying data"},
		{name: "certify info naming another signer than the quote", evidence: func(t *testing.T, c *collected) {
			a := mustUnmarshal[tpm2.TPMSAttest](t, c.certifyInfo)
			a.QualifiedSigner.Buffer = slices.Clone(a.QualifiedSigner.Buffer)
			a.QualifiedSigner.Buffer[len(a.QualifiedSigner.Buffer)-1] ^= 1
			c.certifyInfo = tpm2.Marshal(a)
			leaked.resign(t, c)
		}, status: 400, code: CodeCertifyInfoInvalid, msg: "name different signing keys"},
		{name: "certify info from other TPM firmware", evidence: func(t *testing.T, c *collected) {
			a := mustUnmarshal[tpm2.TPMSAttest](t, c.certifyInfo)
			a.FirmwareVersion ^= 1
			c.certifyInfo = tpm2.Marshal(a)
			leaked.resign(t, c)
		}, status: 400, code: CodeEvidenceBootMismatch, msg: "firmware"},
		{name: "certify info from before a TPM restart", evidence: func(t *testing.T, c *collected) {
			a := mustUnmarshal[tpm2.TPMSAttest](t, c.certifyInfo)
			a.ClockInfo.RestartCount ^= 1
			c.certifyInfo = tpm2.Marshal(a)
			leaked.resign(t, c)
		}, status: 400, code: CodeEvidenceBootMismatch, msg: "different TPM boots"},
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
		// Policy.
		{name: "policy re-issuing a service claim with its own value", cfg: func(c *Config) {
			c.Policy = `version=1.0; authorizationrules { => add(type="secureboot", value=true); => permit(); };
issuancerules { c:[type=="secureboot", issuer=="AttestationPolicy"] => issue(claim=c); };`
		}, status: 400, code: CodePolicyEvaluationError, msg: `service claim "secureboot"`},
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
			in := newInstance(t, e, tc.cfg)
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
			method := http.MethodPost
			if tc.method != "" {
				method = tc.method
			}
			status, rsp := in.do(t, method, url, body, tc.hdr)
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

// softwareAK stands for a leaked AK: a software RSA key whose AikPub claims all an Azure AK's
// does (restricted, fixedTPM, RSASSA SHA-256; nothing in a public area proves where its private
// key lives) and whose certificate the trusted CA issued. Rows sign with it TPMS_ATTEST structures
// that carry TPM_GENERATED_VALUE and that no TPM signs, to reach the checks made after the
// signatures: the signature check cannot tell them from a TPM's.
type softwareAK struct {
	key       *rsa.PrivateKey
	pub, cert []byte
}

func newSoftwareAK(t testing.TB, ca *testCA) softwareAK {
	t.Helper()
	key := testRSAKey(t)
	tmpl := akTemplate(0)
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: key.N.FillBytes(make([]byte, 256))})
	return softwareAK{key: key, pub: tpm2.Marshal(tpm2.New2B(tmpl)), cert: ca.issueAKCert(t, &key.PublicKey, akCertOptions{}).Raw}
}

// resign makes a the AK of c and signs c's quote and certification with it, as they are.
func (a softwareAK) resign(t testing.TB, c *collected) {
	t.Helper()
	c.akPub, c.akCert = a.pub, a.cert
	c.quoteSig, c.certifySig = a.sign(t, c.quote), a.sign(t, c.certifyInfo)
}

func (a softwareAK) sign(t testing.TB, msg []byte) []byte {
	t.Helper()
	d := sha256.Sum256(msg)
	sig, err := rsa.SignPKCS1v15(rand.Reader, a.key, crypto.SHA256, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// rsaParms returns the RSA parameters of tmpl, shared with it: changing them changes tmpl.
func rsaParms(tmpl tpm2.TPMTPublic) *tpm2.TPMSRSAParms {
	p, err := tmpl.Parameters.RSADetail()
	if err != nil {
		panic(err)
	}
	return p
}

// criticalSAN is a critical subjectAltName extension whose SEQUENCE holds elems.
func criticalSAN(elems ...[]byte) pkix.Extension {
	v, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: bytes.Join(elems, nil)})
	return pkix.Extension{Id: oidSubjectAltName, Critical: true, Value: v}
}

// dirNameGeneralName is a GeneralName directoryName ([4]) CN=TPM, the form of TCG SANs.
func dirNameGeneralName() []byte {
	dn, _ := asn1.Marshal(pkix.Name{CommonName: "TPM"}.ToRDNSequence())
	gn, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: dn})
	return gn
}

// growTPM2B appends a byte to a TPM2B structure and counts it in the size field.
func growTPM2B(b []byte) []byte {
	out := append(slices.Clone(b), 0)
	binary.BigEndian.PutUint16(out, uint16(len(out)-2))
	return out
}

func mustUnmarshal[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](t testing.TB, b []byte) *T {
	t.Helper()
	v, err := tpm2.Unmarshal[T, P](b)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
