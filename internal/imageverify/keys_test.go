package imageverify

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/digitorus/timestamp"
	"github.com/notaryproject/notation-core-go/signature"
	"github.com/notaryproject/notation-core-go/signature/cose"
	"github.com/notaryproject/notation-core-go/signature/jws"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	gocose "github.com/veraison/go-cose"

	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/testcert"
)

// certWithKey returns the DER of a certificate for the public key pub, which need not have a
// private key: an RSA modulus of any size is enough to make notation-core-go work for it.
func certWithKey(t testing.TB, cn string, pub any) []byte {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "issuer"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// timestampToken returns an RFC 3161 timestamp token (a CMS SignedData over a TSTInfo) signed by
// a TSA key of its own, carrying the TSA's certificate and the extra CA certificates above it:
// the countersignature a Notation envelope holds.
func timestampToken(t testing.TB, extra int) []byte {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	// The CAs from the root down, each issuing the next; the last issues the TSA's certificate.
	var chain []*x509.Certificate // nearest the TSA first, as the SignedData lists them
	var parent *x509.Certificate
	parentKey := newKey()
	for i := range extra {
		k := newKey()
		signer := parentKey
		if parent == nil {
			signer = k // the root signs itself
		}
		ca := testcert.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: fmt.Sprintf("ca %d", i)}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign}, parent, &k.PublicKey, signer)
		chain = append([]*x509.Certificate{ca}, chain...)
		parent, parentKey = ca, k
	}
	key := newKey()
	tsaSigner := parentKey
	if parent == nil {
		tsaSigner = key
	}
	tsa := testcert.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "tsa"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}}, parent, &key.PublicKey, tsaSigner)
	return signTimestamp(t, tsa, key, chain)
}

// timestampTokenByEd25519CA returns a timestamp token whose TSA certificate an Ed25519 CA issued,
// the CA's certificate included: a key neither RSA nor ECDSA.
func timestampTokenByEd25519CA(t testing.TB) []byte {
	t.Helper()
	caPub, caKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := testcert.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "ed25519 tsa ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, caPub, caKey)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tsa := testcert.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "tsa"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}}, ca, &key.PublicKey, caKey)
	return signTimestamp(t, tsa, key, []*x509.Certificate{ca})
}

// signTimestamp returns the timestamp token of the TSA tsa, signed with key, carrying tsa and
// chain.
func signTimestamp(t testing.TB, tsa *x509.Certificate, key *ecdsa.PrivateKey, chain []*x509.Certificate) []byte {
	t.Helper()
	sum := sha256.Sum256([]byte("signature"))
	ts := timestamp.Timestamp{HashAlgorithm: crypto.SHA256, HashedMessage: sum[:], Time: time.Now(), Policy: asn1.ObjectIdentifier{1, 2, 3},
		SerialNumber: big.NewInt(1), AddTSACertificate: true, Certificates: chain}
	resp, err := ts.CreateResponseWithOpts(tsa, key, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := timestamp.ParseResponse(resp)
	if err != nil {
		t.Fatal(err)
	}
	return parsed.RawToken
}

// rsaModulus returns an RSA public key whose modulus is a random odd number of bits bits.
func rsaModulus(t testing.TB, bits int) *rsa.PublicKey {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(bits)))
	if err != nil {
		t.Fatal(err)
	}
	n.SetBit(n, bits-1, 1)
	n.SetBit(n, 0, 1)
	return &rsa.PublicKey{N: n, E: 65537}
}

// withChain returns the envelope blob with its certificate chain (the unprotected header's x5c
// or x5chain) replaced by chain, and its timestamp countersignature by ts if set: the header is
// not signed, so whoever can push can do this to any signature.
func withChain(t testing.TB, blob []byte, mediaType string, chain [][]byte, ts []byte) []byte {
	t.Helper()
	if mediaType == cose.MediaTypeEnvelope {
		var msg gocose.Sign1Message
		if err := msg.UnmarshalCBOR(blob); err != nil {
			t.Fatal(err)
		}
		x5chain := []any{}
		for _, der := range chain {
			x5chain = append(x5chain, der)
		}
		msg.Headers.Unprotected[gocose.HeaderLabelX5Chain] = x5chain
		if ts != nil {
			msg.Headers.Unprotected[coseTimestampLabel] = ts
		}
		msg.Headers.RawUnprotected = nil // else go-cose writes the header as it was read
		b, err := msg.MarshalCBOR()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return editJWS(t, blob, func(fields map[string]any) {
		header := fields["header"].(map[string]any)
		header["x5c"] = chain // [][]byte: JSON arrays of base64
		if ts != nil {
			header["io.cncf.notary.timestampSignature"] = ts
		}
	})
}

// TestSignatureKeysBounded: a signature whose certificates hold a key Notation would not sign with
// (an RSA modulus of 16384 bits for the signing certificate, or of more than maxRSAKeyBits above
// it), or more certificates than a chain has, is refused as not a usable signature before any
// signature in it is checked: crypto/rsa would verify with a key of any size, at a cost no
// deadline interrupts. NamedTokens ignores it with the reason, and Verify fails it.
func TestSignatureKeysBounded(t *testing.T) {
	f := newFixture(t)
	certs, _ := f.signer.CertificateChain()
	leaf := certs[0].Raw
	ec, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		chain [][]byte
		ts    []byte // the timestamp countersignature, if set
		err   string // "" for accepted
	}{
		{"the signer's chain", [][]byte{leaf}, nil, ""},
		{"an ECDSA CA above it", [][]byte{leaf, certWithKey(t, "ec ca", &ec.PublicKey)}, nil, ""},
		{"an RSA-8192 CA above it", [][]byte{leaf, certWithKey(t, "big ca", rsaModulus(t, 8192))}, nil, ""},
		{"signing certificate with a 16384-bit RSA key", [][]byte{certWithKey(t, "huge", rsaModulus(t, 16384))}, nil, `signing certificate "CN=huge"`},
		{"signing certificate with a 1024-bit RSA key", [][]byte{certWithKey(t, "small", rsaModulus(t, 1024))}, nil, `signing certificate "CN=small"`},
		{"a CA above it with an RSA key of 8200 bits", [][]byte{leaf, certWithKey(t, "huge ca", rsaModulus(t, 8200))}, nil, `certificate chain: certificate "CN=huge ca" has an RSA key of 8200 bits, more than 8192`},
		{"11 certificates", [][]byte{leaf, leaf, leaf, leaf, leaf, leaf, leaf, leaf, leaf, leaf, leaf}, nil, "signature with 11 certificates: want 1 to 10"},
		{"no certificate", [][]byte{}, nil, "signature with 0 certificates: want 1 to 10"},
		{"a timestamp countersignature that does not parse", [][]byte{leaf}, []byte("not CMS"), "timestamp countersignature does not parse"},
		{"a timestamp countersignature with 10 certificates", [][]byte{leaf}, timestampToken(t, 9), ""},
		{"a timestamp countersignature with 11 certificates", [][]byte{leaf}, timestampToken(t, 10), "timestamp countersignature with 11 certificates: want at most 10"},
		// Mutant killed: the countersignature's certificates not bounded (boundedKeys not called).
		{"a timestamp countersignature by an Ed25519 CA", [][]byte{leaf}, timestampTokenByEd25519CA(t),
			`timestamp countersignature: certificate "CN=ed25519 tsa ca" has a ed25519.PublicKey key, neither RSA nor ECDSA`},
	}
	for _, mediaType := range []string{jws.MediaTypeEnvelope, cose.MediaTypeEnvelope} {
		// A genuine envelope of the type, signed by the fixture's signer.
		env, err := signature.NewEnvelope(mediaType)
		if err != nil {
			t.Fatal(err)
		}
		blob, err := env.Sign(&signature.SignRequest{
			Payload: signature.Payload{ContentType: binding.NotaryPayloadType, Content: []byte(`{"targetArtifact":{}}`)}, Signer: f.signer,
			SigningTime: time.Now(), SigningScheme: signature.SigningSchemeX509,
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range tests {
			t.Run(mediaType+": "+tc.name, func(t *testing.T) {
				checkBounded(t, f, withChain(t, blob, mediaType, tc.chain, tc.ts), mediaType, tc.name, tc.err)
			})
		}
	}
}

// checkBounded checks the envelope b as TestSignatureKeysBounded expects: accepted by
// checkEnvelopeKeys if want is "", else refused with want, and then, pushed as the one signature
// of an image, ignored by NamedTokens and failed by Verify with that reason.
func checkBounded(t *testing.T, f *fixture, b []byte, mediaType, name, want string) {
	t.Helper()
	err := checkEnvelopeKeys(b, mediaType)
	if want == "" {
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("checkEnvelopeKeys = %v, want %q", err, want)
	}
	other := f.pushImage(t, "bounded keys: "+mediaType+": "+name)
	pushFakeSignature(t, f, other, mediaType, string(b))
	names, err := NamedTokens(context.Background(), f.repo, other)
	if err != nil || len(names.Ignored()) != 1 || !strings.Contains(names.Ignored()[0].Error(), want) {
		t.Fatalf("NamedTokens: %v, ignored %v", err, names.Ignored())
	}
	res, err := Verify(context.Background(), f.repo, f.reference+"@"+other.Digest.String(), other, f.opts)
	if err != nil || res.Passed || !strings.Contains(res.Checks[len(res.Checks)-1].Detail, want) {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
}

// TestBoundedKeys: the certificates of a timestamp countersignature (and those above the signing
// one) may hold RSA keys of up to maxRSAKeyBits or ECDSA keys, and no other.
func TestBoundedKeys(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ed, _, _ := ed25519.GenerateKey(rand.Reader)
	parse := func(der []byte) *x509.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name string
		pub  any
		ok   bool
	}{
		{"RSA 4096 bits", rsaModulus(t, 4096), true},
		{"RSA 8192 bits", rsaModulus(t, 8192), true},
		{"RSA 8193 bits", rsaModulus(t, 8193), false},
		{"ECDSA P-256", &ec.PublicKey, true},
		{"Ed25519", ed, false},
	} {
		err := boundedKeys("timestamp countersignature", []*x509.Certificate{parse(certWithKey(t, tc.name, tc.pub))})
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestListSignaturesTrims: the signature descriptors a listing keeps hold only what is read of
// them (media type, digest, size, artifact type and the chain's thumbprints), whatever the
// registry put in them.
func TestListSignaturesTrims(t *testing.T) {
	f := newFixture(t)
	img := f.pushImage(t, "trimmed listing")
	big := strings.Repeat("x", 5<<10)
	d := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("s"), Size: 10, ArtifactType: "application/vnd.cncf.notary.signature",
		Data: []byte(big), URLs: []string{big},
		Annotations: map[string]string{thumbprintAnnotation: `["ab"]`, "junk": big},
	}
	sigs, _, err := listSignatures(context.Background(), signatureRepository{Repository: f.repo, extra: []ocispec.Descriptor{d}}, img)
	if err != nil || len(sigs) != 1 {
		t.Fatalf("signatures %v: %v", sigs, err)
	}
	want := ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, ArtifactType: d.ArtifactType, Annotations: map[string]string{thumbprintAnnotation: `["ab"]`}}
	if !reflect.DeepEqual(sigs[0], want) {
		t.Fatalf("kept %+v, want %+v", sigs[0], want)
	}
}
