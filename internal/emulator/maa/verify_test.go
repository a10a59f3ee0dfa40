package maa

import (
	"crypto/rsa"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// publicAreaCase changes one field of a real public area and names the refusal it must meet.
type publicAreaCase struct {
	name  string
	alter func(p *tpm2.TPMTPublic, parms *tpm2.TPMSRSAParms)
	// msg is a part of the refusal only the check under test writes; "" means accepted.
	msg string
}

// primaryKeyCases are the properties both the ephemeral key and the AK must have as primary RSA
// keys the TPM created: fixedTPM and fixedParent both set (or both clear), sensitiveDataOrigin set,
// and the exponent 65537.
var primaryKeyCases = []publicAreaCase{
	{name: "fixedTPM clear", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.ObjectAttributes.FixedTPM = false },
		msg: "fixedTPM=false fixedParent=true sensitiveDataOrigin=true"},
	{name: "fixedParent clear", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.ObjectAttributes.FixedParent = false },
		msg: "fixedTPM=true fixedParent=false sensitiveDataOrigin=true"},
	{name: "sensitiveDataOrigin clear", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.ObjectAttributes.SensitiveDataOrigin = false },
		msg: "fixedTPM=true fixedParent=true sensitiveDataOrigin=false"},
	{name: "exponent 3", alter: func(_ *tpm2.TPMTPublic, r *tpm2.TPMSRSAParms) { r.Exponent = 3 }, msg: "public exponent 3"},
	{name: "modulus a byte shorter than keyBits", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) {
		n, _ := p.Unique.RSA()
		n.Buffer = n.Buffer[1:]
	}, msg: "modulus is not 2048 bits"},
}

// runPublicAreaCases runs check on the public area of k changed by each case: refused with code
// and the case's message, or accepted with k's own key.
func runPublicAreaCases(t *testing.T, k tpmKey, cases []publicAreaCase, code string, check func(*tpm2.TPMTPublic) (*rsa.PublicKey, error)) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key, err := check(alterPublicArea(t, k.pub, tc.alter))
			checkPublicAreaVerdict(t, err, code, tc.msg)
			if err == nil && !key.Equal(k.rsa) {
				t.Fatalf("accepted with %v, not the TPM's key", key)
			}
		})
	}
}

// TestCheckEphemeralKeyAttributes changes, one at a time, each property checkEphemeralKey requires
// of the public area of an ephemeral key the simulator created from AZGA's template. The TPM
// itself refuses to create several of these keys (an unrestricted decryption key with a symmetric
// algorithm, encryptedDuplication or fixedTPM set alone on a primary key, sensitiveDataOrigin
// clear, an exponent other than 65537), so no TPM-signed certification reaches these checks
// through TestAttestRefusals; each must still hold on its own, whatever the order of the checks.
func TestCheckEphemeralKeyAttributes(t *testing.T) {
	x := openTPM(t)
	k := x.createPrimary(t, tpm2.TPMRHNull, ephemeralTemplate(x.policyPCRDigestOnTPM(t, azurePCRs)))
	x.flush(t, k.handle)

	cases := []publicAreaCase{
		{name: "as created", alter: func(*tpm2.TPMTPublic, *tpm2.TPMSRSAParms) {}},
		{name: "RSAES scheme", alter: func(_ *tpm2.TPMTPublic, r *tpm2.TPMSRSAParms) {
			r.Scheme = tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgRSAES, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSAES, &tpm2.TPMSEncSchemeRSAES{})}
		}},
		{name: "exponent 65537 written out", alter: func(_ *tpm2.TPMTPublic, r *tpm2.TPMSRSAParms) { r.Exponent = 65537 }},

		{name: "nameAlg SHA-1", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.NameAlg = tpm2.TPMAlgSHA1 }, msg: "nameAlg is 0x4"},
		{name: "decrypt clear", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.ObjectAttributes.Decrypt = false }, msg: "not a decryption key"},
		{name: "sign set", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.ObjectAttributes.SignEncrypt = true }, msg: "is a signing key"},
		{name: "restricted set", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.ObjectAttributes.Restricted = true }, msg: "EncKeyPub is restricted"},
		{name: "userWithAuth set", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.ObjectAttributes.UserWithAuth = true }, msg: "userWithAuth"},
		{name: "encryptedDuplication set", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.ObjectAttributes.EncryptedDuplication = true },
			msg: "encryptedDuplication"},
		{name: "RSA-3072", alter: func(p *tpm2.TPMTPublic, r *tpm2.TPMSRSAParms) {
			// A 3072-bit modulus, so that only the key size check differs.
			n, _ := p.Unique.RSA()
			n.Buffer = append(n.Buffer, n.Buffer[:128]...)
			r.KeyBits = 3072
		}, msg: "RSA-3072; the ephemeral key is RSA-2048"},
		{name: "symmetric AES-128-CFB", alter: func(_ *tpm2.TPMTPublic, r *tpm2.TPMSRSAParms) { r.Symmetric = aes128CFB() }, msg: "has a symmetric algorithm"},
		{name: "OAEP scheme", alter: func(_ *tpm2.TPMTPublic, r *tpm2.TPMSRSAParms) {
			r.Scheme = tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgOAEP, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgOAEP, &tpm2.TPMSEncSchemeOAEP{HashAlg: tpm2.TPMAlgSHA256})}
		}, msg: "scheme 0x17 cannot decrypt"},
	}
	runPublicAreaCases(t, k, append(cases, primaryKeyCases...), CodeEncKeyInvalid, checkEphemeralKey)
}

// TestParseAKPubAttributes changes, one at a time, each property parseAKPub requires of the
// public area of an AK the simulator created, as checkEphemeralKey's test does for the ephemeral
// key: a primary key has fixedTPM and fixedParent both set or both clear, and the TPM creates no
// RSA key with sensitiveDataOrigin clear or an exponent other than 65537.
func TestParseAKPubAttributes(t *testing.T) {
	x := openTPM(t)
	k := x.createPrimary(t, tpm2.TPMRHEndorsement, akTemplate(1))
	x.flush(t, k.handle)

	cases := []publicAreaCase{
		{name: "as created", alter: func(*tpm2.TPMTPublic, *tpm2.TPMSRSAParms) {}},

		{name: "sign clear", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.ObjectAttributes.SignEncrypt = false },
			msg: "sign=false restricted=true decrypt=false"},
		{name: "restricted clear", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.ObjectAttributes.Restricted = false },
			msg: "sign=true restricted=false decrypt=false"},
		{name: "decrypt set", alter: func(p *tpm2.TPMTPublic, _ *tpm2.TPMSRSAParms) { p.ObjectAttributes.Decrypt = true },
			msg: "sign=true restricted=true decrypt=true"},
		{name: "RSAPSS scheme", alter: func(_ *tpm2.TPMTPublic, r *tpm2.TPMSRSAParms) {
			r.Scheme = tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgRSAPSS, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSAPSS, &tpm2.TPMSSigSchemeRSAPSS{HashAlg: tpm2.TPMAlgSHA256})}
		}, msg: "scheme 0x16, not RSASSA"},
		{name: "RSASSA with SHA-384", alter: func(_ *tpm2.TPMTPublic, r *tpm2.TPMSRSAParms) {
			r.Scheme = tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgRSASSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA384})}
		}, msg: "does not use SHA-256"},
	}
	runPublicAreaCases(t, k, append(cases, primaryKeyCases...), CodeAikPubInvalid, func(pub *tpm2.TPMTPublic) (*rsa.PublicKey, error) {
		return parseAKPub(tpm2.Marshal(tpm2.New2B(*pub)))
	})
}

// alterPublicArea parses a fresh copy of the TPM2B_PUBLIC tpm2bPub and applies alter to it.
func alterPublicArea(t *testing.T, tpm2bPub []byte, alter func(*tpm2.TPMTPublic, *tpm2.TPMSRSAParms)) *tpm2.TPMTPublic {
	t.Helper()
	pub, _, err := parseTPM2BPublic(slices.Clone(tpm2bPub))
	if err != nil {
		t.Fatal(err)
	}
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		t.Fatal(err)
	}
	alter(pub, parms)
	return pub
}

// checkPublicAreaVerdict requires err to be nil when msg is "", and otherwise a refusal with code
// whose message contains msg.
func checkPublicAreaVerdict(t *testing.T, err error, code, msg string) {
	t.Helper()
	if msg == "" {
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		return
	}
	var ce *checkError
	if !errors.As(err, &ce) || ce.Code != code || !strings.Contains(ce.Err.Error(), msg) {
		t.Fatalf("got %v, want a %s refusal containing %q", err, code, msg)
	}
	t.Log(err)
}
