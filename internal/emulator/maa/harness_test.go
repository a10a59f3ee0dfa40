package maa

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/go-tpm/tpm2"

	wire "github.com/attested-kv/attested-kv/internal/maa"
)

// azurePCRs is what Azure's Linux guest client quotes.
var azurePCRs = []uint32{0, 1, 2, 3, 4, 5, 6, 7}

// akHandle is the Azure AK's persistent handle (reference/tpm.md §3.1).
const akHandle = tpm2.TPMHandle(0x81000003)

var (
	signingKeyOnce sync.Once
	signingKey     *rsa.PrivateKey
)

// sharedSigningKey saves an RSA key generation per test server.
func sharedSigningKey(t testing.TB) *rsa.PrivateKey {
	signingKeyOnce.Do(func() { signingKey = testRSAKey(t) })
	return signingKey
}

// env is a provisioned "Azure vTPM": a simulator with an AK at 0x81000003 certified by a test CA.
type env struct {
	tpm    *testTPM
	ca     *testCA
	ak     tpmKey
	akCert *x509.Certificate
}

func newEnv(t testing.TB) *env {
	t.Helper()
	x := openTPM(t)
	ca := newTestCA(t, "Test Virtual TPM")
	ak := x.persistAK(t, x.createPrimary(t, tpm2.TPMRHEndorsement, akTemplate(1)), akHandle)
	return &env{tpm: x, ca: ca, ak: ak, akCert: ca.issueAKCert(t, ak.rsa, akCertOptions{})}
}

// collected is one round of evidence, in raw form, before encoding.
type collected struct {
	akCert, akPub           []byte
	quote, quoteSig         []byte
	pcrSet                  []uint32
	pcrs                    []pcrValue
	eph                     tpmKey
	certifyInfo, certifySig []byte
	tcgLog                  []byte
	payload                 map[string]string
}

// ephemeralKey creates AZGA's ephemeral key (NULL hierarchy, PolicyPCR over pcrs) and schedules
// its flush.
func (e *env) ephemeralKey(t testing.TB, pcrs []uint32) tpmKey {
	t.Helper()
	return e.loaded(t, e.tpm.createPrimary(t, tpm2.TPMRHNull, ephemeralTemplate(e.tpm.policyPCRDigestOnTPM(t, pcrs))))
}

func (e *env) loaded(t testing.TB, k tpmKey) tpmKey {
	t.Cleanup(func() { _, _ = (tpm2.FlushContext{FlushHandle: k.handle}).Execute(e.tpm.tpm) })
	return k
}

// unload flushes a transient key early: the simulator holds only three loaded objects.
func (e *env) unload(k tpmKey) {
	_, _ = (tpm2.FlushContext{FlushHandle: k.handle}).Execute(e.tpm.tpm)
}

// collect gathers evidence as Azure's client does: ephemeral key, its certification, the quote of
// PCRs 0-7 and their values.
func (e *env) collect(t testing.TB) *collected {
	t.Helper()
	eph := e.ephemeralKey(t, azurePCRs)
	ci, cs := e.tpm.certify(t, eph, e.ak)
	q, qs := e.tpm.quote(t, e.ak, azurePCRs)
	return &collected{
		akCert: e.akCert.Raw, akPub: e.ak.pub,
		quote: q, quoteSig: qs,
		pcrSet: append([]uint32(nil), azurePCRs...), pcrs: e.readPCRs(t, azurePCRs),
		eph: eph, certifyInfo: ci, certifySig: cs,
		payload: map[string]string{wire.NonceKey: b64("binding-of-image-and-key")},
	}
}

func (e *env) readPCRs(t testing.TB, set []uint32) []pcrValue {
	var out []pcrValue
	for i, d := range e.tpm.readPCRs(t, set) {
		out = append(out, pcrValue{index: set[i], digest: d})
	}
	return out
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// info encodes the evidence as AZGA does (wire.go): standard base64 for every binary field.
func (c *collected) info() *wire.AttestationInfo {
	enc := base64.StdEncoding.EncodeToString
	pcrs := make([]wire.PCRValue, len(c.pcrs))
	for i, p := range c.pcrs {
		pcrs[i] = wire.PCRValue{Index: p.index, Digest: enc(p.digest)}
	}
	return &wire.AttestationInfo{
		AttestationProtocolVersion: wire.ProtocolVersion,
		OSType:                     b64("Linux"),
		OSDistro:                   b64("Ubuntu"),
		OSVersionMajor:             22,
		OSVersionMinor:             4,
		OSBuild:                    b64(wire.OSBuildLinux),
		TcgLogs:                    enc(c.tcgLog),
		ClientPayload:              c.payload,
		TpmInfo: wire.TpmInfo{
			AikCert: enc(c.akCert), AikPub: enc(c.akPub),
			PcrQuote: enc(c.quote), PcrSignature: enc(c.quoteSig),
			EncKeyPub: enc(c.eph.pub), EncKeyCertifyInfo: enc(c.certifyInfo), EncKeyCertifyInfoSignature: enc(c.certifySig),
			PcrSet: c.pcrSet, PCRs: pcrs,
		},
		IsolationInfo: wire.IsolationInfo{Type: wire.IsolationTrustedLaunch},
	}
}

// requestBody is the POST body for info: {"AttestationInfo": base64url(JSON)}.
func requestBody(t testing.TB, info *wire.AttestationInfo) []byte {
	t.Helper()
	inner, err := json.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	return rawRequestBody(t, inner)
}

func rawRequestBody(t testing.TB, inner []byte) []byte {
	t.Helper()
	b, err := json.Marshal(wire.AttestRequest{AttestationInfo: base64.RawURLEncoding.EncodeToString(inner)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// instance is an emulator behind a loopback TLS server.
type instance struct {
	srv    *Server
	ts     *httptest.Server
	client *http.Client
}

func newInstance(t *testing.T, e *env, mod func(*Config)) *instance {
	t.Helper()
	ts := httptest.NewUnstartedServer(nil)
	roots := x509.NewCertPool()
	inter := x509.NewCertPool()
	if e != nil {
		roots.AddCert(e.ca.root)
		inter.AddCert(e.ca.inter)
	}
	cfg := Config{
		TrustedRoots:  roots,
		Intermediates: inter,
		SigningKey:    sharedSigningKey(t),
		Issuer:        "https://" + ts.Listener.Addr().String(),
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts.Config.Handler = srv.Handler()
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return &instance{srv: srv, ts: ts, client: ts.Client()}
}

// do sends one request. Its Content-Type is what internal/maa's clients send: text/plain for a
// policy PUT, application/json otherwise; hdr sets headers over it, and a header hdr maps to ""
// is left out.
func (in *instance) do(t *testing.T, method, path string, body []byte, hdr map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, in.ts.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if method == http.MethodPut && strings.HasPrefix(path, "/policies/") {
		req.Header.Set("Content-Type", "text/plain")
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
			continue
		}
		req.Header.Set(k, v)
	}
	rsp, err := in.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer rsp.Body.Close()
	b, err := io.ReadAll(rsp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return rsp.StatusCode, b
}

const attestURL = wire.AttestPath + "?api-version=" + wire.AttestAPIVersion

func (in *instance) attest(t *testing.T, body []byte) (int, []byte) {
	t.Helper()
	return in.do(t, http.MethodPost, attestURL, body, nil)
}

// cloudError decodes a CloudError body, failing the test if it is not one.
func cloudError(t *testing.T, body []byte) wire.CloudErrorBody {
	t.Helper()
	var ce wire.CloudError
	if err := json.Unmarshal(body, &ce); err != nil || ce.Error.Code == "" || ce.Error.Message == "" {
		t.Fatalf("body is not a CloudError: %s", body)
	}
	if strings.Contains(string(body), `"token"`) {
		t.Fatalf("error body carries a token: %s", body)
	}
	return ce.Error
}

// openToken decrypts an AzureGuest response with the TPM, as AZGA's DecryptMaaToken does, and
// returns the JWT.
func openToken(t *testing.T, x *testTPM, eph tpmKey, pcrs []uint32, body []byte) string {
	t.Helper()
	var rsp wire.AttestResponse
	if err := json.Unmarshal(body, &rsp); err != nil || rsp.Token == "" {
		t.Fatalf("response is not {\"token\":...}: %s", body)
	}
	raw, err := base64.RawURLEncoding.DecodeString(rsp.Token)
	if err != nil {
		t.Fatalf("token envelope is not unpadded base64url: %v", err)
	}
	var et wire.EncryptedToken
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&et); err != nil {
		t.Fatalf("token envelope: %v", err)
	}
	p := et.EncryptionParams
	if p.BlockMode != wire.BlockModeGCM || p.BlockPadding != wire.BlockPaddingPKC || p.Cipher != wire.CipherAES || p.KeySizeInBits != 256 {
		t.Fatalf("encryption params = %+v", p)
	}
	std := base64.StdEncoding.Strict()
	wrapped, err1 := std.DecodeString(et.EncryptedInnerKey)
	iv, err2 := std.DecodeString(p.Iv)
	tag, err3 := std.DecodeString(et.AuthenticationData)
	ct, err4 := std.DecodeString(et.Jwt)
	for _, err := range []error{err1, err2, err3, err4} {
		if err != nil {
			t.Fatalf("envelope field is not standard base64: %v", err)
		}
	}
	key, err := x.decrypt(t, eph, pcrs, wrapped)
	if err != nil {
		t.Fatalf("TPM2_RSA_Decrypt of the inner key: %v", err)
	}
	return string(gcmOpen(t, key, iv, ct, tag))
}

func gcmOpen(t *testing.T, key, iv, ct, tag []byte) []byte {
	t.Helper()
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCMWithNonceSize(block, len(iv))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := gcm.Open(nil, iv, append(append([]byte(nil), ct...), tag...), []byte(wire.TransportKeyAAD))
	if err != nil {
		t.Fatalf("AES-GCM open: %v", err)
	}
	return pt
}

// verifyJWT checks the token's signature against the instance's /certs and returns its header
// and claims.
func (in *instance) verifyJWT(t *testing.T, jwt string) (jose.Header, map[string]any) {
	t.Helper()
	status, certs := in.do(t, http.MethodGet, wire.CertsPath, nil, nil)
	if status != http.StatusOK {
		t.Fatalf("GET /certs: %d %s", status, certs)
	}
	// Real MAA publishes each key as kid, kty and x5c only (reference/maa.md): no n or e.
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(certs, &set); err != nil {
		t.Fatalf("JWKS: %v", err)
	}
	jws, err := jose.ParseSignedCompact(jwt, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("token is not an RS256 JWS: %v", err)
	}
	hdr := jws.Signatures[0].Protected
	var pub *rsa.PublicKey
	for _, k := range set.Keys {
		if k["kid"] != hdr.KeyID {
			continue
		}
		if pub != nil {
			t.Fatalf("kid %q names more than one key in /certs", hdr.KeyID)
		}
		names := slices.Sorted(maps.Keys(k))
		if !slices.Equal(names, []string{"kid", "kty", "x5c"}) || k["kty"] != "RSA" {
			t.Fatalf("JWK has members %v (kty %v), want kid, kty RSA and x5c only, as MAA's /certs", names, k["kty"])
		}
		x5c, _ := k["x5c"].([]any)
		b64, _ := x5c[0].(string)
		der, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(x5c) != 1 {
			t.Fatalf("x5c is not one standard base64 certificate: %v", k["x5c"])
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("x5c[0]: %v", err)
		}
		pub, _ = cert.PublicKey.(*rsa.PublicKey)
	}
	if pub == nil {
		t.Fatalf("kid %q names no RSA key in /certs", hdr.KeyID)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		t.Fatalf("token signature: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil {
		t.Fatal(err)
	}
	return hdr, claims
}
