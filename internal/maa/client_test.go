package maa

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/attested-kv/attested-kv/internal/tpm"
)

// softwareTPM is the test double at the TPM boundary: fixed evidence, and decryption with a
// software RSA key standing for the ephemeral TPM key.
type softwareTPM struct {
	ev          *tpm.Evidence
	key         *rsa.PrivateKey
	evidenceErr error
	decryptErr  error
	calls       atomic.Int64
}

func (s *softwareTPM) Evidence(context.Context) (*tpm.Evidence, error) {
	s.calls.Add(1)
	if s.evidenceErr != nil {
		return nil, s.evidenceErr
	}
	return s.ev, nil
}

func (s *softwareTPM) DecryptWithEphemeralKey(_ context.Context, encKeyPub, ciphertext []byte) ([]byte, error) {
	if s.decryptErr != nil {
		return nil, s.decryptErr
	}
	if !bytes.Equal(encKeyPub, s.ev.EncKeyPub) {
		return nil, tpm.ErrEphemeralKeyMismatch
	}
	//lint:ignore SA1019 RSAES-PKCS1-v1_5 is MAA's wire format for the token key (see internal/maa/wire.go)
	return rsa.DecryptPKCS1v15(nil, s.key, ciphertext)
}

func testEvidence() *tpm.Evidence {
	ev := &tpm.Evidence{
		AKCert:                     []byte("ak-cert-der\xff\xfe"),
		AKPub:                      []byte("ak-pub\x00\x01"),
		Quote:                      []byte("\xffTCG quote"),
		QuoteSignature:             []byte("quote-sig>>?"),
		EncKeyPub:                  tpmPublic(&ephemeralKey.PublicKey),
		EncKeyCertifyInfo:          []byte("certify-info"),
		EncKeyCertifyInfoSignature: []byte("certify-sig"),
	}
	for _, i := range tpm.AzurePCRs {
		ev.PCRs = append(ev.PCRs, tpm.PCR{Index: i, Digest: bytes.Repeat([]byte{byte(i) + 0xf0}, 32)})
	}
	return ev
}

var testOS = OSInfo{Type: OSTypeLinux, Distro: "Ubuntu", VersionMajor: 22, VersionMinor: 4, Build: OSBuildLinux}

// envelope describes the encrypted response the fake MAA sends; the fields spoil it.
type envelope struct {
	jwt          string
	keyBytes     int
	keySizeBits  int // KeySizeInBits announced; 0 = keyBytes*8
	cipher       string
	blockMode    string // "" = GCM
	padding      string // "" = PKCS7
	trailing     bool   // data after the inner JSON document
	ivSize       int
	tamperTag    bool
	paddedToken  bool
	unknownField bool
}

func (e envelope) body(t *testing.T) []byte {
	t.Helper()
	if e.keyBytes == 0 {
		e.keyBytes = 32
	}
	if e.keySizeBits == 0 {
		e.keySizeBits = e.keyBytes * 8
	}
	if e.cipher == "" {
		e.cipher = CipherAES
	}
	if e.ivSize == 0 {
		e.ivSize = 12
	}
	if e.blockMode == "" {
		e.blockMode = BlockModeGCM
	}
	if e.padding == "" {
		e.padding = BlockPaddingPKC
	}
	key := make([]byte, e.keyBytes)
	iv := make([]byte, e.ivSize)
	rand.Read(key)
	rand.Read(iv)
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCMWithNonceSize(block, e.ivSize)
	if err != nil {
		t.Fatal(err)
	}
	sealed := gcm.Seal(nil, iv, []byte(e.jwt), []byte(TransportKeyAAD))
	ct, tag := sealed[:len(sealed)-16], sealed[len(sealed)-16:]
	if e.tamperTag {
		tag[0] ^= 1
	}
	//lint:ignore SA1019 RSAES-PKCS1-v1_5 is MAA's wire format for the token key (see internal/maa/wire.go)
	wrapped, err := rsa.EncryptPKCS1v15(rand.Reader, &ephemeralKey.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	std := base64.StdEncoding.EncodeToString
	doc := map[string]any{
		"EncryptedInnerKey": std(wrapped),
		"EncryptionParams": map[string]any{
			"BlockMode": e.blockMode, "BlockPadding": e.padding, "Cipher": e.cipher,
			"KeySizeInBits": e.keySizeBits, "Iv": std(iv),
		},
		"AuthenticationData": std(tag),
		"Jwt":                std(ct),
	}
	if e.unknownField {
		doc["Extra"] = 1
	}
	enc := base64.RawURLEncoding
	if e.paddedToken {
		enc = base64.URLEncoding
	}
	inner := mustJSON(t, doc)
	if e.trailing {
		inner = append(inner, []byte(` {}`)...)
	}
	return mustJSON(t, AttestResponse{Token: enc.EncodeToString(inner)})
}

// fakeMAA is a loopback TLS server for /attest/AzureGuest that checks each request's encoding and
// answers with respond(attempt).
type fakeMAA struct {
	*httptest.Server
	t        *testing.T
	requests atomic.Int64
	respond  func(w http.ResponseWriter, r *http.Request, attempt int)
}

func newFakeMAA(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, attempt int)) *fakeMAA {
	f := &fakeMAA{t: t, respond: respond}
	f.Server = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeMAA) serve(w http.ResponseWriter, r *http.Request) {
	n := int(f.requests.Add(1))
	if err := checkAttestRequest(r); err != nil {
		f.t.Errorf("request %d: %v", n, err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.respond(w, r, n)
}

// checkAttestRequest checks what AZGA sends, independently of EncodeAttestationInfo.
func checkAttestRequest(r *http.Request) error {
	switch {
	case r.Method != http.MethodPost:
		return errors.New("method " + r.Method)
	case r.URL.Path != AttestPath || r.URL.RawQuery != "api-version="+AttestAPIVersion:
		return errors.New("URL " + r.URL.String())
	case r.Header.Get("Content-Type") != "application/json" || r.Header.Get("Accept") != "application/json":
		return errors.New("content-type/accept headers")
	}
	body, _ := io.ReadAll(r.Body)
	var req AttestRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if strings.ContainsAny(req.AttestationInfo, "=+/") {
		return errors.New("AttestationInfo is not unpadded base64url")
	}
	doc, err := base64.RawURLEncoding.DecodeString(req.AttestationInfo)
	if err != nil {
		return err
	}
	var info AttestationInfo
	if err := decodeStrict(doc, &info); err != nil {
		return err
	}
	ev := testEvidence()
	std := base64.StdEncoding.EncodeToString
	want := AttestationInfo{
		AttestationProtocolVersion: "2.0",
		OSType:                     "TGludXg=", // "Linux"
		OSDistro:                   "VWJ1bnR1", // "Ubuntu"
		OSVersionMajor:             22,
		OSVersionMinor:             4,
		OSBuild:                    "Tm90QXBwbGljYXRpb24=", // "NotApplication"
		TcgLogs:                    "",
		ClientPayload:              map[string]string{"nonce": "MTIzNA=="},
		TpmInfo: TpmInfo{
			AikCert: std(ev.AKCert), AikPub: std(ev.AKPub), PcrQuote: std(ev.Quote), PcrSignature: std(ev.QuoteSignature),
			EncKeyPub: std(ev.EncKeyPub), EncKeyCertifyInfo: std(ev.EncKeyCertifyInfo),
			EncKeyCertifyInfoSignature: std(ev.EncKeyCertifyInfoSignature),
			PcrSet:                     []uint32{0, 1, 2, 3, 4, 5, 6, 7},
		},
		IsolationInfo: IsolationInfo{Type: "TrustedLaunch"},
	}
	for _, p := range ev.PCRs {
		want.TpmInfo.PCRs = append(want.TpmInfo.PCRs, PCRValue{Index: p.Index, Digest: std(p.Digest)})
	}
	if !reflect.DeepEqual(info, want) {
		return errors.New("AttestationInfo differs:\n got " + string(mustJSONNoT(info)) + "\nwant " + string(mustJSONNoT(want)))
	}
	return nil
}

func mustJSONNoT(v any) []byte { b, _ := json.Marshal(v); return b }

func newTestClient(t *testing.T, f *fakeMAA, o ClientOptions) *Client {
	t.Helper()
	o.HTTPClient = f.Client()
	o.OS = &testOS
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 3
	}
	if o.RetryBaseDelay == 0 {
		o.RetryBaseDelay = time.Millisecond
	}
	if o.RetryMaxDelay == 0 {
		o.RetryMaxDelay = 10 * time.Millisecond
	}
	c, err := NewClient(f.URL+"/", o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAttest(t *testing.T) {
	testKeys(t)
	jwt := signJOSE(t, signingKey, testKID, validClaims(testNow, "1234"), nil)
	ok := func(e envelope) func(w http.ResponseWriter, r *http.Request, n int) {
		return func(w http.ResponseWriter, r *http.Request, n int) {
			if e.jwt == "" {
				e.jwt = jwt
			}
			w.Header().Set("Content-Type", "application/json")
			w.Write(e.body(t))
		}
	}
	status := func(code int, body string, header ...string) func(w http.ResponseWriter, r *http.Request, n int) {
		return func(w http.ResponseWriter, r *http.Request, n int) {
			for i := 0; i+1 < len(header); i += 2 {
				w.Header().Set(header[i], header[i+1])
			}
			w.WriteHeader(code)
			io.WriteString(w, body)
		}
	}
	tpmFailure := errors.New("TPM_RC_POLICY_FAIL")
	withRuntimeKeys := func(keys ...map[string]any) string {
		claims := validClaims(testNow, "1234")
		rt := claims[ClaimRuntime].(map[string]any)
		rt[ClaimRuntimeKeys] = keys
		return signJOSE(t, signingKey, testKID, claims, nil)
	}

	tests := []struct {
		name         string
		respond      func(w http.ResponseWriter, r *http.Request, n int)
		evidenceErr  error
		decryptErr   error
		wantErr      []error
		wantService  *ServiceError
		wantRequests int
		wantMsg      string
		wantAnyToken bool // success with the token the case sends, not the default one
		badEncKey    bool // the evidence's EncKeyPub does not parse
	}{
		{name: "success", respond: ok(envelope{}), wantRequests: 1},
		{name: "AES-128 key, padded token", respond: ok(envelope{keyBytes: 16, paddedToken: true}), wantRequests: 1},
		{name: "400 CloudError, no retry",
			respond:      status(400, `{"error":{"code":"InvalidParameter","message":"PcrQuote is not a TPMS_ATTEST"}}`),
			wantService:  &ServiceError{StatusCode: 400, Code: "InvalidParameter", Message: "PcrQuote is not a TPMS_ATTEST"},
			wantRequests: 1, wantMsg: "HTTP 400 InvalidParameter: PcrQuote is not a TPMS_ATTEST"},
		{name: "401 capitalised CloudError keys",
			respond:      status(401, `{"Error":{"Code":"Unauthorized","Message":"no"}}`),
			wantService:  &ServiceError{StatusCode: 401, Code: "Unauthorized", Message: "no"},
			wantRequests: 1, wantMsg: "HTTP 401 Unauthorized: no: the instance wants an authenticated caller, and this client sends no credential (as Azure's guest attestation client); check the attestation provider's tpmAttestationAuthentication setting"},
		{name: "404 plain text",
			respond:      status(404, "not here\n"),
			wantService:  &ServiceError{StatusCode: 404, Message: "not here"},
			wantRequests: 1},
		{name: "429 then 200", respond: func(w http.ResponseWriter, r *http.Request, n int) {
			if n == 1 {
				status(429, `{"error":{"code":"TooManyRequests","message":"slow down"}}`, "Retry-After", "1")(w, r, n)
				return
			}
			ok(envelope{})(w, r, n)
		}, wantRequests: 2},
		{name: "500 then 200", respond: func(w http.ResponseWriter, r *http.Request, n int) {
			if n == 1 {
				status(500, "")(w, r, n)
				return
			}
			ok(envelope{})(w, r, n)
		}, wantRequests: 2},
		{name: "503 forever", respond: status(503, `{"error":{"code":"ServiceUnavailable","message":"busy"}}`),
			wantErr: []error{ErrUnavailable}, wantService: &ServiceError{StatusCode: 503, Code: "ServiceUnavailable", Message: "busy"},
			wantRequests: 3, wantMsg: "unavailable after 3 attempt(s): HTTP 503 ServiceUnavailable: busy"},
		{name: "429 forever", respond: status(429, `{"error":{"code":"TooManyRequests","message":"slow down"}}`),
			wantErr: []error{ErrThrottled}, wantRequests: 3},
		{name: "tampered tag", respond: ok(envelope{tamperTag: true}), wantErr: []error{ErrResponse}, wantRequests: 1,
			wantMsg: "decrypting the MAA response: "},
		{name: "KeySizeInBits does not match the key", respond: ok(envelope{keySizeBits: 128}), wantErr: []error{ErrResponse},
			wantRequests: 1, wantMsg: "inner key is 256 bits"},
		{name: "KeySizeInBits not AES", respond: ok(envelope{keySizeBits: 512}), wantErr: []error{ErrResponse}, wantRequests: 1},
		{name: "cipher not AES", respond: ok(envelope{cipher: "DES"}), wantErr: []error{ErrResponse}, wantRequests: 1,
			wantMsg: "unsupported cipher"},
		{name: "16-byte IV", respond: ok(envelope{ivSize: 16}), wantErr: []error{ErrResponse}, wantRequests: 1},
		{name: "block mode not GCM", respond: ok(envelope{blockMode: "CBC"}), wantErr: []error{ErrResponse}, wantRequests: 1,
			wantMsg: `unsupported block mode "CBC"`},
		{name: "block padding not PKCS7", respond: ok(envelope{padding: "None"}), wantErr: []error{ErrResponse}, wantRequests: 1,
			wantMsg: `unsupported block padding "None"`},
		{name: "data after the encrypted token document", respond: ok(envelope{trailing: true}), wantErr: []error{ErrResponse}, wantRequests: 1,
			wantMsg: "trailing data after the JSON document"},
		{name: "unknown envelope field ignored, as AZGA does", respond: ok(envelope{unknownField: true}), wantRequests: 1},
		{name: "plaintext not a JWS", respond: ok(envelope{jwt: "hello"}), wantErr: []error{ErrResponse}, wantRequests: 1},
		{name: "200 body over the limit, no retry", respond: status(200, strings.Repeat(" ", MaxResponseSize+1)),
			wantErr: []error{ErrResponse}, wantRequests: 1},
		{name: "200 not JSON", respond: status(200, "<html>"), wantErr: []error{ErrResponse}, wantRequests: 1},
		{name: "200 token not base64url", respond: status(200, `{"token":"a b"}`), wantErr: []error{ErrResponse}, wantRequests: 1},
		{name: "evidence error: wrapped, nothing sent", respond: ok(envelope{}), evidenceErr: tpmFailure,
			wantErr: []error{tpmFailure}, wantRequests: 0, wantMsg: "TPM evidence: TPM_RC_POLICY_FAIL"},
		{name: "TPM decryption error", respond: ok(envelope{}), decryptErr: tpmFailure,
			wantErr: []error{tpmFailure, ErrResponse}, wantRequests: 1},
		// A genuine token for other evidence (another VM's ephemeral key), re-encrypted to this
		// TPM's public ephemeral key by whoever answers in MAA's place.
		{name: "token for another VM's ephemeral key", respond: ok(envelope{jwt: withRuntimeKeys(runtimeKeyJWK(attackerKey))}),
			wantErr: []error{ErrNotForEvidence}, wantRequests: 1, wantMsg: "is not the ephemeral key this TPM sent"},
		{name: "token without runtime keys", respond: ok(envelope{jwt: withRuntimeKeys()}),
			wantErr: []error{ErrNotForEvidence}, wantRequests: 1, wantMsg: "no x-ms-runtime.keys list"},
		{name: "ephemeral key named twice", respond: ok(envelope{jwt: withRuntimeKeys(runtimeKeyJWK(ephemeralKey), runtimeKeyJWK(attackerKey))}),
			wantErr: []error{ErrNotForEvidence}, wantRequests: 1, wantMsg: "more than once"},
		{name: "ephemeral key not RSA", respond: ok(envelope{jwt: withRuntimeKeys(map[string]any{"kid": EphemeralKeyKID, "kty": "oct", "k": "AAAA"})}),
			wantErr: []error{ErrNotForEvidence}, wantRequests: 1},
		{name: "evidence with an unparsable ephemeral key: nothing sent", respond: ok(envelope{}), badEncKey: true,
			wantRequests: 0, wantErr: []error{}, wantMsg: "TPM evidence: ephemeral key"},
		{name: "other runtime keys beside ours are fine", respond: ok(envelope{jwt: withRuntimeKeys(map[string]any{"kid": "HCLAkPub", "kty": "RSA"}, runtimeKeyJWK(ephemeralKey))}),
			wantRequests: 1, wantAnyToken: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeMAA(t, tc.respond)
			c := newTestClient(t, f, ClientOptions{})
			src := &softwareTPM{ev: testEvidence(), key: ephemeralKey, evidenceErr: tc.evidenceErr, decryptErr: tc.decryptErr}
			if tc.badEncKey {
				src.ev.EncKeyPub = []byte("not a TPM2B_PUBLIC")
			}
			got, err := c.AttestNonce(context.Background(), src, "1234")
			if n := int(f.requests.Load()); n != tc.wantRequests {
				t.Errorf("%d requests, want %d", n, tc.wantRequests)
			}
			if tc.wantErr == nil && tc.wantService == nil {
				if err != nil {
					t.Fatal(err)
				}
				if got != jwt && !tc.wantAnyToken {
					t.Fatalf("token differs")
				}
				if int(src.calls.Load()) != tc.wantRequests {
					t.Errorf("evidence gathered %d times for %d requests", src.calls.Load(), tc.wantRequests)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tc.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("err = %v, want errors.Is %v", err, want)
				}
			}
			if tc.wantService != nil {
				var se *ServiceError
				if !errors.As(err, &se) || *se != *tc.wantService {
					t.Errorf("err = %#v, want %#v", se, tc.wantService)
				}
				if !strings.Contains(err.Error(), "MAA "+f.URL+": ") {
					t.Errorf("err %q does not name the instance", err)
				}
			}
			if tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("err = %q, want it to contain %q", err, tc.wantMsg)
			}
		})
	}
}

// TestAttestDeadline: retries never run past ctx's deadline, and an attestation the deadline
// ends matches context.DeadlineExceeded (so the plugin reports TIMEOUT) beside the sentinel of
// the last answer, whose text it keeps.
func TestAttestDeadline(t *testing.T) {
	testKeys(t)
	status := func(code int, retryAfter string) func(w http.ResponseWriter, r *http.Request, n int) {
		return func(w http.ResponseWriter, r *http.Request, n int) {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.WriteHeader(code)
			io.WriteString(w, `{"error":{"code":"Injected","message":"injected"}}`)
		}
	}
	// untilDone is a sleep that the context always cuts short, as a deadline reached during the
	// wait does.
	untilDone := func(ctx context.Context, _ time.Duration) error {
		<-ctx.Done()
		return ctx.Err()
	}
	tests := []struct {
		name     string
		respond  func(w http.ResponseWriter, r *http.Request, n int)
		timeout  time.Duration
		cancel   bool                                             // no deadline: cancelled at the first wait
		sleep    func(ctx context.Context, d time.Duration) error // nil = the real one
		late     bool                                             // the answer arrives once the deadline has passed
		wantErr  []error
		notErr   error
		wantMsg  []string
		maxTaken time.Duration
	}{
		{name: "503 with Retry-After beyond the deadline is not slept", respond: status(503, "5"), timeout: 500 * time.Millisecond,
			wantErr: []error{ErrUnavailable, context.DeadlineExceeded}, wantMsg: []string{"HTTP 503 Injected: injected", "no time left before the deadline", "5s wait"},
			maxTaken: 400 * time.Millisecond},
		{name: "429 with Retry-After beyond the deadline is not slept", respond: status(429, "5"), timeout: 500 * time.Millisecond,
			wantErr: []error{ErrThrottled, context.DeadlineExceeded}, wantMsg: []string{"HTTP 429 Injected: injected", "no time left before the deadline"},
			maxTaken: 400 * time.Millisecond},
		{name: "503, deadline reached during the wait", respond: status(503, ""), timeout: 300 * time.Millisecond, sleep: untilDone,
			wantErr: []error{ErrUnavailable, context.DeadlineExceeded}, wantMsg: []string{"HTTP 503 Injected: injected"}, maxTaken: 2 * time.Second},
		{name: "429, deadline reached during the wait", respond: status(429, ""), timeout: 300 * time.Millisecond, sleep: untilDone,
			wantErr: []error{ErrThrottled, context.DeadlineExceeded}, wantMsg: []string{"HTTP 429 Injected: injected"}, maxTaken: 2 * time.Second},
		{name: "503 answered after the deadline", respond: status(503, ""), timeout: 300 * time.Millisecond, late: true,
			wantErr: []error{ErrUnavailable, context.DeadlineExceeded}, wantMsg: []string{"HTTP 503 Injected: injected"}, maxTaken: 2 * time.Second},
		{name: "503, cancelled during the wait: not a deadline", respond: status(503, ""), cancel: true,
			wantErr: []error{ErrUnavailable, context.Canceled}, notErr: context.DeadlineExceeded, wantMsg: []string{"HTTP 503 Injected: injected"},
			maxTaken: 2 * time.Second},
		// The deadline leaves the TLS handshake time to reach the server under -race and a loaded
		// machine (at 300 ms it once ended before the request was sent).
		{name: "hanging server", timeout: time.Second, respond: func(w http.ResponseWriter, r *http.Request, n int) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			// Never answer: returning would send an empty 200, which can race the client's
			// cancellation (the case "200 read after the deadline" below).
			panic(http.ErrAbortHandler)
		}, wantErr: []error{ErrUnavailable, context.DeadlineExceeded}, maxTaken: 3 * time.Second},
		{name: "200 read after the deadline", respond: func(w http.ResponseWriter, r *http.Request, n int) {
			io.WriteString(w, `not the answer`)
		}, timeout: time.Second, late: true, wantErr: []error{ErrUnavailable, context.DeadlineExceeded}, notErr: ErrResponse, maxTaken: 3 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeMAA(t, tc.respond)
			c := newTestClient(t, f, ClientOptions{MaxAttempts: 10, RetryMaxDelay: 5 * time.Second})
			if tc.late {
				c.http = &http.Client{Transport: lateTransport{f.Client().Transport}}
			}
			if tc.sleep != nil {
				c.sleep = tc.sleep
			}
			var (
				ctx    context.Context
				cancel context.CancelFunc
			)
			if tc.cancel {
				ctx, cancel = context.WithCancel(context.Background())
				sleep := c.sleep
				c.sleep = func(ctx context.Context, d time.Duration) error {
					cancel()
					return sleep(ctx, d)
				}
			} else {
				ctx, cancel = context.WithTimeout(context.Background(), tc.timeout)
			}
			defer cancel()
			start := time.Now()
			_, err := c.AttestNonce(ctx, &softwareTPM{ev: testEvidence(), key: ephemeralKey}, "1234")
			if d := time.Since(start); d > tc.maxTaken {
				t.Errorf("returned after %s, want within %s", d, tc.maxTaken)
			}
			for _, want := range tc.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("err = %v, want errors.Is %v", err, want)
				}
			}
			if tc.notErr != nil && errors.Is(err, tc.notErr) {
				t.Errorf("err = %v, want not errors.Is %v", err, tc.notErr)
			}
			for _, want := range tc.wantMsg {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("err = %v, want it to contain %q", err, want)
				}
			}
			if n := f.requests.Load(); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
		})
	}
}

// lateTransport sends the request regardless of its context, and returns the answer only once
// that context has ended: an answer that arrives just after the deadline.
type lateTransport struct{ rt http.RoundTripper }

func (l lateTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(r.Clone(context.WithoutCancel(r.Context())))
	<-r.Context().Done()
	return resp, err
}

func TestBackoff(t *testing.T) {
	c := &Client{baseDelay: 100 * time.Millisecond, maxDelay: time.Second}
	for attempt, max := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 5: time.Second, 40: time.Second} {
		for range 20 {
			d := c.backoff(attempt, 0)
			if d < max/2 || d > max {
				t.Fatalf("attempt %d: delay %s outside [%s, %s]", attempt, d, max/2, max)
			}
		}
	}
	if d := c.backoff(1, 3*time.Second); d != time.Second {
		t.Errorf("Retry-After 3s with max 1s gives %s", d)
	}
	if d := c.backoff(1, 300*time.Millisecond); d != 300*time.Millisecond {
		t.Errorf("Retry-After 300ms gives %s", d)
	}
}

func TestNewClient(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"https://x.weu.attest.azure.net", "https://x.weu.attest.azure.net"},
		{"https://x.weu.attest.azure.net/", "https://x.weu.attest.azure.net"},
		{"https://127.0.0.1:8443", "https://127.0.0.1:8443"},
		{"http://x.weu.attest.azure.net", ""},
		{"x.weu.attest.azure.net", ""},
		{"https://", ""},
		{"https://u:p@x.attest.azure.net", ""},
		{"https://x.attest.azure.net/attest", ""},
		{"https://x.attest.azure.net?a=b", ""},
		{"https://x.attest.azure.net/?", ""},
		{"https://x.attest.azure.net#f", ""},
		{"https:x.attest.azure.net", ""},
		{"", ""},
	}
	for _, tc := range tests {
		c, err := NewClient(tc.in, ClientOptions{OS: &testOS})
		if tc.want == "" {
			if err == nil {
				t.Errorf("NewClient(%q) accepted", tc.in)
			}
			continue
		}
		if err != nil || c.Instance() != tc.want {
			t.Errorf("NewClient(%q) = %v, %v; want %q", tc.in, c, err, tc.want)
		}
	}
	// A password in a refused URL is not repeated in the error (it ends up in logs).
	for _, in := range []string{"https://u:s3cret@x.attest.azure.net", "http://u:s3cret@x.attest.azure.net", "https://u:s3cret@x.attest.azure.net/%zz"} {
		if _, err := NewClient(in, ClientOptions{OS: &testOS}); err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("NewClient(%q): %v", in, err)
		}
	}
}

func TestReadOSRelease(t *testing.T) {
	tests := []struct {
		name, content string
		want          OSInfo
	}{
		{"ubuntu", "NAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\n", OSInfo{"Linux", "Ubuntu", 22, 4, OSBuildLinux}},
		{"no minor", "NAME='Red Hat Enterprise Linux'\nVERSION_ID=9\n", OSInfo{"Linux", "Red Hat Enterprise Linux", 9, 0, OSBuildLinux}},
		{"three parts", "# comment\nNAME=\"Azure Linux\"\nVERSION_ID=\"3.0.20240101\"\n", OSInfo{"Linux", "Azure Linux", 3, 0, OSBuildLinux}},
		{"no name", "VERSION_ID=12\n", OSInfo{"Linux", "Linux", 12, 0, OSBuildLinux}},
		{"version 0", "NAME=Test\nVERSION_ID=0.9\n", OSInfo{"Linux", "Test", 0, 9, OSBuildLinux}},
		{"trailing letters", "NAME=Test\nVERSION_ID=22.04abc\n", OSInfo{"Linux", "Test", 22, 4, OSBuildLinux}},
		// Where AZGA's GetOSInfo cannot read a version it sends 1.0; so does the client (the cases
		// of AZGA's own GetOSInfo tests: "garbage", "1.ad", no VERSION_ID).
		{"no version", "NAME=\"Arch Linux\"\n", OSInfo{"Linux", "Arch Linux", 1, 0, OSBuildLinux}},
		{"escapes", "NAME=\"Debian \\\"GNU\\\"\"\nVERSION_ID=\"rolling\"\n", OSInfo{"Linux", "Debian \"GNU\"", 1, 0, OSBuildLinux}},
		{"minor not numeric", "NAME=Test\nVERSION_ID=\"22.x\"\n", OSInfo{"Linux", "Test", 1, 0, OSBuildLinux}},
		{"AZGA 1.ad", "NAME=Test-OS\nVERSION_ID=\"1.ad\"\n", OSInfo{"Linux", "Test-OS", 1, 0, OSBuildLinux}},
		{"empty minor", "NAME=Test\nVERSION_ID=22.\n", OSInfo{"Linux", "Test", 1, 0, OSBuildLinux}},
		{"empty", "NAME=Test\nVERSION_ID=\n", OSInfo{"Linux", "Test", 1, 0, OSBuildLinux}},
		{"beyond int32", "NAME=Test\nVERSION_ID=2147483648\n", OSInfo{"Linux", "Test", 1, 0, OSBuildLinux}},
		{"int32 max", "NAME=Test\nVERSION_ID=2147483647.1\n", OSInfo{"Linux", "Test", 2147483647, 1, OSBuildLinux}},
	}
	dir := t.TempDir()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := ReadOSRelease(p)
			if err != nil || got != tc.want {
				t.Fatalf("= %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	if _, err := ReadOSRelease(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
}

// TestAttestRefusesOSVersionZero: AZGA refuses to send a request whose OS major version is 0,
// which is what a missing os-release or a VERSION_ID of 0.x gives; so does the client, before the
// TPM or MAA is asked, with an error that says what to fix. A missing or non-numeric VERSION_ID is
// sent as 1.0, as AZGA sends it.
func TestAttestRefusesOSVersionZero(t *testing.T) {
	testKeys(t)
	dir := t.TempDir()
	token := signJOSE(t, signingKey, testKID, validClaims(testNow, "1234"), nil)
	tests := []struct {
		name      string
		osRelease string // "" = no os-release file
		opt       *OSInfo
		wantErr   bool
		wantMsg   string
	}{
		{name: "no os-release", wantErr: true, wantMsg: "no such file"},
		{name: "VERSION_ID 0", osRelease: "NAME=Test\nVERSION_ID=0.9\n", wantErr: true, wantMsg: "VERSION_ID"},
		{name: "empty OSInfo given", opt: &OSInfo{}, wantErr: true, wantMsg: "ClientOptions.OS"},
		{name: "numeric VERSION_ID", osRelease: "NAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\n"}, // the fake MAA wants testOS
		{name: "OSInfo given", opt: &testOS},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if tc.osRelease != "" {
				if err := os.WriteFile(path, []byte(tc.osRelease), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			f := newFakeMAA(t, func(w http.ResponseWriter, _ *http.Request, _ int) { w.Write(envelope{jwt: token}.body(t)) })
			c := newTestClient(t, f, ClientOptions{})
			c.os, c.osFrom = resolveOS(tc.opt, path)
			src := &softwareTPM{ev: testEvidence(), key: ephemeralKey}
			_, err := c.AttestNonce(context.Background(), src, "1234")
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("Attest: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrOSVersion) || !strings.Contains(err.Error(), "os-release") || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Attest: %v, want ErrOSVersion naming os-release and %q", err, tc.wantMsg)
			}
			if n, calls := f.requests.Load(), src.calls.Load(); n != 0 || calls != 0 {
				t.Fatalf("%d requests sent and %d Evidence calls made before the refusal, want none", n, calls)
			}
			if _, err := EncodeAttestationInfo(testEvidence(), c.os, nil); !errors.Is(err, ErrOSVersion) {
				t.Fatalf("EncodeAttestationInfo: %v, want ErrOSVersion", err)
			}
		})
	}
}

func TestEncodeAttestationInfo(t *testing.T) {
	testKeys(t)
	ev := testEvidence()
	ev.TCGLog = []byte{0xfb, 0xff}
	req, err := EncodeAttestationInfo(ev, testOS, nil)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := base64.RawURLEncoding.DecodeString(req.AttestationInfo)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	if m["TcgLogs"] != "+/8=" || m["OSVersionMajor"] != float64(22) {
		t.Errorf("TcgLogs %v, OSVersionMajor %v", m["TcgLogs"], m["OSVersionMajor"])
	}
	if cp, ok := m["ClientPayload"].(map[string]any); !ok || len(cp) != 0 {
		t.Errorf("ClientPayload = %v, want {}", m["ClientPayload"])
	}
	if _, err := EncodeAttestationInfo(nil, testOS, nil); err == nil {
		t.Error("nil evidence accepted")
	}
	ev.Quote = nil
	if _, err := EncodeAttestationInfo(ev, testOS, nil); err == nil || !strings.Contains(err.Error(), "quote") {
		t.Errorf("missing quote: %v", err)
	}
}
