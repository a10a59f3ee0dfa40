package imageverify

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/notaryproject/notation-core-go/signature"
	"github.com/notaryproject/notation-core-go/signature/cose"
	"github.com/notaryproject/notation-core-go/signature/jws"
	"github.com/notaryproject/tspclient-go"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	gocose "github.com/veraison/go-cose"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/memory"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/referrer"
)

// fuzzEnvelopes returns real signature envelopes, a JWS and a COSE one, of an attested-kv
// signature of subject (its signed attributes name a token), and, for each, the same envelope
// with its unsigned certificate chain or timestamp countersignature replaced as whoever can push
// can replace them: an ECDSA and an RSA-8192 CA above the signer (accepted), a signing key of
// 1024 or 16384 bits, an RSA-8200 CA, 11 certificates (refused), and timestamp tokens of 1, 10
// and 11 certificates.
func fuzzEnvelopes(tb testing.TB, subject ocispec.Descriptor) (jwsBlobs, coseBlobs [][]byte) {
	tb.Helper()
	s := attesttest.Signer(tb, "fuzz signer")
	certs, _ := s.CertificateChain()
	leaf := certs[0].Raw
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	chains := []struct {
		chain [][]byte
		ts    []byte
	}{
		{[][]byte{leaf, certWithKey(tb, "ec ca", &ec.PublicKey)}, nil},
		{[][]byte{leaf, certWithKey(tb, "big ca", rsaModulus(tb, 8192))}, nil},
		{[][]byte{certWithKey(tb, "small", rsaModulus(tb, 1024))}, nil},
		{[][]byte{certWithKey(tb, "huge", rsaModulus(tb, 16384))}, nil},
		{[][]byte{leaf, certWithKey(tb, "huge ca", rsaModulus(tb, 8200))}, nil},
		{[][]byte{leaf, leaf, leaf, leaf, leaf, leaf, leaf, leaf, leaf, leaf, leaf}, nil},
		{[][]byte{leaf}, timestampToken(tb, 0)},
		{[][]byte{leaf}, timestampToken(tb, 9)},
		{[][]byte{leaf}, timestampToken(tb, 10)},
	}
	payload, _ := json.Marshal(map[string]any{"targetArtifact": subject})
	for _, mt := range []string{jws.MediaTypeEnvelope, cose.MediaTypeEnvelope} {
		env, err := signature.NewEnvelope(mt)
		if err != nil {
			tb.Fatal(err)
		}
		blob, err := env.Sign(&signature.SignRequest{
			Payload: signature.Payload{ContentType: "application/vnd.cncf.notary.payload.v1+json", Content: payload}, Signer: s,
			SigningTime: time.Now(), SigningScheme: signature.SigningSchemeX509, ExtendedSignedAttributes: tokenAttributes("token", "https://maa.example"),
		})
		if err != nil {
			tb.Fatal(err)
		}
		blobs := [][]byte{blob}
		for _, c := range chains {
			blobs = append(blobs, withChain(tb, blob, mt, c.chain, c.ts))
		}
		if mt == jws.MediaTypeEnvelope {
			jwsBlobs = blobs
		} else {
			coseBlobs = blobs
		}
	}
	return jwsBlobs, coseBlobs
}

// checkAccepted checks an envelope that checkEnvelopeKeys accepted, read as notation-core-go and
// tspclient-go read it: its certificate chain has 1 to maxChainCertificates certificates, the
// signing one with a key of one of Notation's key specs and the others RSA keys of at most
// maxRSAKeyBits or ECDSA keys, and its timestamp countersignature, if any, parses and holds at
// most maxChainCertificates such certificates. The chain and countersignature are those of
// notation-core-go's Content when it returns them, else (it refuses a chain that does not
// validate, after using its keys) the unsigned header's, read with encoding/json as its JWS
// header type reads them or with go-cose. Only then is the envelope verified, as the verifiers
// would.
func checkAccepted(t *testing.T, blob []byte, mediaType string) {
	t.Helper()
	var chain []*x509.Certificate
	var ts []byte
	env, err := signature.ParseEnvelope(mediaType, blob)
	if err != nil {
		return // notation-core-go reads no certificate of it
	}
	if c, err := env.Content(); err == nil {
		chain, ts = c.SignerInfo.CertificateChain, c.SignerInfo.UnsignedAttributes.TimestampSignature
	} else {
		var ders [][]byte
		if mediaType == jws.MediaTypeEnvelope {
			var e struct {
				Header struct {
					X5C [][]byte `json:"x5c"`
					TS  []byte   `json:"io.cncf.notary.timestampSignature"`
				} `json:"header"`
			}
			if json.Unmarshal(blob, &e) != nil {
				t.Fatal("accepted a JWS whose header does not decode")
			}
			ders, ts = e.Header.X5C, e.Header.TS
		} else {
			var msg gocose.Sign1Message
			if msg.UnmarshalCBOR(blob) != nil {
				t.Fatal("accepted a COSE envelope that does not decode")
			}
			x5, _ := msg.Headers.Unprotected[gocose.HeaderLabelX5Chain].([]any)
			for _, c := range x5 {
				der, _ := c.([]byte)
				ders = append(ders, der)
			}
			ts, _ = msg.Headers.Unprotected["io.cncf.notary.timestampSignature"].([]byte)
		}
		for i, der := range ders {
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatalf("accepted certificate %d, which does not parse: %v", i, err)
			}
			chain = append(chain, cert)
		}
	}
	if len(chain) == 0 || len(chain) > maxChainCertificates {
		t.Fatalf("accepted an envelope whose chain notation-core-go reads as %d certificates", len(chain))
	}
	if _, err := signature.ExtractKeySpec(chain[0]); err != nil {
		t.Fatalf("accepted a signing certificate whose key is not one of Notation's: %v", err)
	}
	bounded := func(where string, certs []*x509.Certificate) {
		for _, cert := range certs {
			switch k := cert.PublicKey.(type) {
			case *rsa.PublicKey:
				if k.N.BitLen() > 8192 {
					t.Fatalf("accepted %s with an RSA key of %d bits", where, k.N.BitLen())
				}
			case *ecdsa.PublicKey:
			default:
				t.Fatalf("accepted %s with a %T key", where, cert.PublicKey)
			}
		}
	}
	bounded("a chain", chain[1:])
	if len(ts) > 0 {
		token, err := tspclient.ParseSignedToken(ts)
		if err != nil {
			t.Fatalf("accepted a timestamp countersignature that does not parse: %v", err)
		}
		if len(token.Certificates) > maxChainCertificates {
			t.Fatalf("accepted a timestamp countersignature of %d certificates", len(token.Certificates))
		}
		bounded("a timestamp countersignature", token.Certificates)
	}
	_, _ = env.Verify()
}

// FuzzCheckEnvelopeKeys feeds arbitrary JWS and COSE envelopes, seeded with real ones and their
// altered chains, to checkEnvelopeKeys, the check that stops hostile envelopes before any key in
// them is used: whatever the envelope, no panic; the seeds meet their documented verdicts; and
// an envelope it accepts has, as notation-core-go reads it, 1 to 10 certificates whose keys are
// within the bounds, and a timestamp countersignature of at most 10 such certificates.
func FuzzCheckEnvelopeKeys(f *testing.F) {
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("image"), Size: 5}
	jwsBlobs, coseBlobs := fuzzEnvelopes(f, subject)
	// The signature, the ECDSA CA, the RSA-8192 CA, the timestamps of 1 and 10 certificates pass.
	accepted := map[int]bool{0: true, 1: true, 2: true, 7: true, 8: true}
	for _, set := range []struct {
		mt    string
		blobs [][]byte
	}{{jws.MediaTypeEnvelope, jwsBlobs}, {cose.MediaTypeEnvelope, coseBlobs}} {
		mt, isCOSE := set.mt, set.mt == cose.MediaTypeEnvelope
		for i, b := range set.blobs {
			if err := checkEnvelopeKeys(b, mt); (err == nil) != accepted[i] {
				f.Fatalf("%s seed %d: %v, want accepted %v", mt, i, err, accepted[i])
			}
			f.Add(b, isCOSE)
		}
	}
	f.Add([]byte(`{"header":{"x5c":[]}}`), false)
	f.Add([]byte(`{"header":{"x5c":["AAAA"],"io.cncf.notary.timestampSignature":"AAAA"}}`), false)
	f.Add([]byte{0xd2, 0x84, 0x40, 0xa0, 0xf6, 0x40}, true) // an empty COSE_Sign1
	f.Fuzz(func(t *testing.T, blob []byte, isCOSE bool) {
		mt := jws.MediaTypeEnvelope
		if isCOSE {
			mt = cose.MediaTypeEnvelope
		}
		if err := checkEnvelopeKeys(blob, mt); err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		checkAccepted(t, blob, mt)
	})
}

// fuzzRepository is an in-memory repository with no referrers and no signatures listed:
// readSignature reads only content.
type fuzzRepository struct{ *memory.Store }

func (fuzzRepository) Referrers(context.Context, ocispec.Descriptor, string, func([]ocispec.Descriptor) error) error {
	return nil
}

func (fuzzRepository) ListSignatures(context.Context, ocispec.Descriptor, func([]ocispec.Descriptor) error) error {
	return nil
}

// FuzzReadSignature feeds arbitrary signature manifests and envelopes (anyone who can push to the
// repository writes both) to readSignature and namedToken, from an in-memory store that holds the
// manifest and the envelope under each Notation envelope media type; in the manifest, @DIGEST@
// and @SIZE@ stand for the envelope's digest and size, so that the fuzzer can change either part
// and keep them linked. Whatever the input, no panic, and an error is the signature's, never the
// registry's (*referrer.ReadError: the store serves all it holds). What readSignature accepts is
// a manifest of exactly one layer, of a Notation envelope media type, that is the envelope, and
// an envelope checkEnvelopeKeys accepts (FuzzCheckEnvelopeKeys's property holds of it); a token
// namedToken returns is named by an envelope readSignature accepts, as 64 hex digits.
func FuzzReadSignature(f *testing.F) {
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("image"), Size: 5}
	jwsBlobs, coseBlobs := fuzzEnvelopes(f, subject)
	manifest := func(mt, field string) []byte {
		return []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.cncf.notary.signature",` +
			`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},` +
			`"` + field + `":[{"mediaType":"` + mt + `","digest":"@DIGEST@","size":@SIZE@}]}`)
	}
	for _, b := range jwsBlobs[:3] {
		f.Add(manifest(jws.MediaTypeEnvelope, "layers"), b, false)
	}
	f.Add(manifest(jws.MediaTypeEnvelope, "layers"), jwsBlobs[4], false) // a 16384-bit signing key
	f.Add(manifest(cose.MediaTypeEnvelope, "layers"), coseBlobs[0], false)
	f.Add(manifest(cose.MediaTypeEnvelope, "blobs"), coseBlobs[7], true) // an artifact manifest, a timestamp
	f.Add(manifest(cose.MediaTypeEnvelope, "layers"), coseBlobs[5], false)
	f.Add(manifest("application/octet-stream", "layers"), jwsBlobs[0], false)
	f.Add([]byte(`{"layers":[{"mediaType":"application/jose+json","digest":"@DIGEST@","size":@SIZE@},{"mediaType":"application/jose+json","digest":"@DIGEST@","size":@SIZE@}]}`), jwsBlobs[0], false)
	f.Add([]byte(`{"layers":[{"mediaType":"application/jose+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":@SIZE@}]}`), jwsBlobs[0], false)
	f.Add([]byte(`{"layers":[]}`), []byte{}, false)
	f.Fuzz(func(t *testing.T, manifest, envelope []byte, artifact bool) {
		ctx := context.Background()
		repo := fuzzRepository{memory.New()}
		if len(envelope) > 0 {
			for _, mt := range signature.RegisteredEnvelopeTypes() {
				if err := repo.Push(ctx, content.NewDescriptorFromBytes(mt, envelope), bytes.NewReader(envelope)); err != nil {
					t.Fatal(err)
				}
			}
		}
		envDigest := digest.FromBytes(envelope)
		manifest = bytes.ReplaceAll(manifest, []byte("@DIGEST@"), []byte(envDigest))
		manifest = bytes.ReplaceAll(manifest, []byte("@SIZE@"), []byte(strconv.Itoa(len(envelope))))
		mmt := ocispec.MediaTypeImageManifest
		if artifact {
			mmt = mediaTypeArtifactManifest
		}
		sd := content.NewDescriptorFromBytes(mmt, manifest)
		if err := repo.Push(ctx, sd, bytes.NewReader(manifest)); err != nil {
			return // the manifest is empty
		}
		blob, mt, err := readSignature(ctx, repo, sd)
		var re *referrer.ReadError
		if errors.As(err, &re) {
			t.Fatalf("a registry error from content the store holds: %v", err)
		}
		sha, nerr := namedToken(ctx, repo, subject, sd)
		if errors.As(nerr, &re) {
			t.Fatalf("namedToken: a registry error from content the store holds: %v", nerr)
		}
		if err != nil {
			if nerr == nil {
				t.Fatalf("namedToken read %q from a signature readSignature refuses (%v)", sha, err)
			}
			return
		}
		var m struct {
			Layers []ocispec.Descriptor `json:"layers"`
			Blobs  []ocispec.Descriptor `json:"blobs"`
		}
		if json.Unmarshal(manifest, &m) != nil {
			t.Fatalf("accepted a manifest that does not parse: %q", manifest)
		}
		layers := m.Layers
		if artifact {
			layers = m.Blobs
		}
		switch {
		case len(layers) != 1:
			t.Fatalf("accepted a manifest of %d layers", len(layers))
		case layers[0].MediaType != mt || (mt != jws.MediaTypeEnvelope && mt != cose.MediaTypeEnvelope):
			t.Fatalf("accepted an envelope of media type %q (layer %q)", mt, layers[0].MediaType)
		case !bytes.Equal(blob, envelope) || layers[0].Digest != envDigest:
			t.Fatalf("read %d bytes, not the envelope the layer names", len(blob))
		case checkEnvelopeKeys(blob, mt) != nil:
			t.Fatal("accepted an envelope checkEnvelopeKeys refuses")
		}
		checkAccepted(t, blob, mt)
		if nerr == nil && sha != "" {
			if b, err := hex.DecodeString(sha); err != nil || len(b) != sha256.Size || strings.ToLower(sha) != sha {
				t.Fatalf("named token %q is not a lower-case hex SHA-256", sha)
			}
		}
	})
}

// TestReadSignatureManifest: readSignature reads the envelope of an artifact manifest from its
// blobs, as notation-go does, and refuses a layer larger than maxSignatureEnvelope from its
// descriptor, without fetching it. Mutants killed: an artifact manifest's envelope looked for in
// "layers"; the envelope's size not bounded.
func TestReadSignatureManifest(t *testing.T) {
	ctx := context.Background()
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("image"), Size: 5}
	jwsBlobs, _ := fuzzEnvelopes(t, subject)
	repo := fuzzRepository{memory.New()}
	layer := content.NewDescriptorFromBytes(jws.MediaTypeEnvelope, jwsBlobs[0])
	if err := repo.Push(ctx, layer, bytes.NewReader(jwsBlobs[0])); err != nil {
		t.Fatal(err)
	}
	oversized := layer
	oversized.Size = maxSignatureEnvelope + 1
	for _, tc := range []struct {
		name, mediaType string
		manifest        map[string]any
		err             string // "" for the envelope read
	}{
		{"artifact manifest", mediaTypeArtifactManifest, map[string]any{"mediaType": mediaTypeArtifactManifest, "blobs": []ocispec.Descriptor{layer}}, ""},
		{"image manifest", ocispec.MediaTypeImageManifest, map[string]any{"schemaVersion": 2, "layers": []ocispec.Descriptor{layer}}, ""},
		{"envelope over the bound", ocispec.MediaTypeImageManifest, map[string]any{"schemaVersion": 2, "layers": []ocispec.Descriptor{oversized}},
			"is not a signature envelope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.manifest)
			if err != nil {
				t.Fatal(err)
			}
			sd := content.NewDescriptorFromBytes(tc.mediaType, b)
			if err := repo.Push(ctx, sd, bytes.NewReader(b)); err != nil {
				t.Fatal(err)
			}
			blob, mt, err := readSignature(ctx, repo, sd)
			if tc.err == "" {
				if err != nil || mt != jws.MediaTypeEnvelope || !bytes.Equal(blob, jwsBlobs[0]) {
					t.Fatalf("readSignature = %d bytes of %q, %v; want the envelope", len(blob), mt, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("readSignature: %v, want %q", err, tc.err)
			}
		})
	}
}

// FuzzNamesPinnedCert feeds arbitrary thumbprint annotations (the pusher's word) to
// namesPinnedCert: it says a pinned certificate is named exactly when the annotation is a JSON
// array of strings (null elements allowed, as encoding/json allows them) whose first element is
// one of the pins, in any case.
func FuzzNamesPinnedCert(f *testing.F) {
	pin := hexSHA("certificate")
	f.Add(`["` + pin + `"]`)
	f.Add(`["` + strings.ToUpper(pin) + `","00"]`)
	f.Add(`["00","` + pin + `"]`)
	f.Add(`[1]`)
	f.Add(`[]`)
	f.Add(`"` + pin + `"`)
	f.Add(`["\u0061` + pin[1:] + `"]`)
	pins := []string{pin, hexSHA("another")}
	f.Fuzz(func(t *testing.T, annotation string) {
		got := namesPinnedCert(ocispec.Descriptor{Annotations: map[string]string{thumbprintAnnotation: annotation}}, pins)
		var chain []any
		want := false
		strs := json.Unmarshal([]byte(annotation), &chain) == nil
		for _, e := range chain {
			if _, ok := e.(string); !ok && e != nil {
				strs = false
			}
		}
		if strs && len(chain) > 0 {
			first, _ := chain[0].(string) // "" for null, which no pin is
			for _, p := range pins {
				want = want || strings.EqualFold(first, p)
			}
		}
		if got != want {
			t.Fatalf("namesPinnedCert(%q) = %v, want %v", annotation, got, want)
		}
	})
}
