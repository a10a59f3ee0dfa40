package maa

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/attested-kv/attested-kv/internal/tpm"
)

// EvidenceSource is what the client needs from a TPM (satisfied by *tpm.Device).
type EvidenceSource interface {
	// Evidence returns fresh evidence, including a new ephemeral key certified by the AK.
	Evidence(ctx context.Context) (*tpm.Evidence, error)
	// DecryptWithEphemeralKey decrypts the RSAES-PKCS1-v1_5 ciphertext MAA returns with the
	// ephemeral key whose public area encKeyPub (Evidence.EncKeyPub) the request carried, and
	// refuses if that is not the key it holds.
	DecryptWithEphemeralKey(ctx context.Context, encKeyPub, ciphertext []byte) ([]byte, error)
}

// ClientOptions configures a Client. The zero value gives the defaults.
type ClientOptions struct {
	// HTTPClient sends the requests; nil means a client with DefaultHTTPTimeout that does not
	// follow redirects.
	HTTPClient *http.Client
	// Logger receives retry warnings and, at Debug only, request and response sizes; nil is quiet.
	// Tokens and evidence are never logged.
	Logger *slog.Logger
	// OS is the OS description sent to MAA; nil means ReadOSRelease(DefaultOSReleasePath). Its
	// VersionMajor must not be 0 (os-release missing, or a VERSION_ID of 0.x): Attest refuses to
	// send it, with ErrOSVersion, as Azure's own client does.
	OS *OSInfo
	// MaxAttempts bounds the attestation attempts; 0 means DefaultMaxAttempts.
	MaxAttempts int
	// RetryBaseDelay is the first retry delay, doubled at each attempt with jitter; 0 means
	// DefaultRetryBaseDelay.
	RetryBaseDelay time.Duration
	// RetryMaxDelay caps each delay, including a Retry-After from MAA; 0 means DefaultRetryMaxDelay.
	RetryMaxDelay time.Duration
}

// Client attests an Azure VM guest's TPM evidence with one MAA instance.
type Client struct {
	instance    string
	attestURL   string
	http        *http.Client
	log         *slog.Logger
	os          OSInfo
	osFrom      string // where os came from, for checkOSVersion's error
	maxAttempts int
	baseDelay   time.Duration
	maxDelay    time.Duration
	sleep       func(ctx context.Context, d time.Duration) error // replaced in tests
}

// NewClient returns a client for the MAA instance URL, e.g. "https://NAME.REGION.attest.azure.net".
// The URL must be absolute https with a host and nothing else: no path, query, fragment or user
// information. One trailing slash is trimmed.
func NewClient(instance string, o ClientOptions) (*Client, error) {
	inst, err := parseInstance(instance)
	if err != nil {
		return nil, err
	}
	if o.MaxAttempts < 0 || o.RetryBaseDelay < 0 || o.RetryMaxDelay < 0 {
		return nil, errors.New("MAA client: MaxAttempts, RetryBaseDelay and RetryMaxDelay must not be negative")
	}
	c := &Client{
		instance:    inst,
		attestURL:   inst + AttestPath + "?api-version=" + AttestAPIVersion,
		http:        o.HTTPClient,
		log:         o.Logger,
		maxAttempts: o.MaxAttempts,
		baseDelay:   o.RetryBaseDelay,
		maxDelay:    o.RetryMaxDelay,
		sleep:       sleepCtx,
	}
	if c.http == nil {
		c.http = &http.Client{
			Timeout: DefaultHTTPTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.maxAttempts == 0 {
		c.maxAttempts = DefaultMaxAttempts
	}
	if c.baseDelay == 0 {
		c.baseDelay = DefaultRetryBaseDelay
	}
	if c.maxDelay == 0 {
		c.maxDelay = DefaultRetryMaxDelay
	}
	if c.baseDelay > c.maxDelay {
		c.baseDelay = c.maxDelay
	}
	c.os, c.osFrom = resolveOS(o.OS, DefaultOSReleasePath)
	return c, nil
}

// resolveOS returns the OS description a client sends: opt if set, else what the os-release file
// at path says, else defaultOSInfo, whose major version 0 Attest refuses; and a description of
// where it came from for that refusal.
func resolveOS(opt *OSInfo, path string) (OSInfo, string) {
	if opt != nil {
		return *opt, "ClientOptions.OS"
	}
	info, err := ReadOSRelease(path)
	if err != nil {
		return defaultOSInfo(), err.Error()
	}
	return info, path
}

// parseInstance validates an instance URL and returns it normalised: scheme://host.
func parseInstance(instance string) (string, error) {
	u, err := url.Parse(instance)
	if err != nil {
		// url.Error quotes the whole string, which may hold a password: only its cause is shown.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("MAA instance is not a URL: %w", err)
	}
	// Errors show the URL without its password (url.URL.Redacted).
	bad := func(why string) error { return fmt.Errorf("MAA instance %q: %s", u.Redacted(), why) }
	switch {
	case u.Scheme != "https":
		return "", bad("must be an absolute https:// URL")
	case u.Host == "" || u.Opaque != "":
		return "", bad("has no host")
	case u.User != nil:
		return "", bad("must not carry user information")
	case u.RawQuery != "" || u.ForceQuery:
		return "", bad("must not have a query")
	case u.Fragment != "" || strings.Contains(instance, "#"):
		return "", bad("must not have a fragment")
	case strings.TrimSuffix(u.Path, "/") != "":
		return "", bad("must not have a path (give only https://NAME.REGION.attest.azure.net)")
	}
	return "https://" + u.Host, nil
}

// CheckInstance checks that instance is an MAA instance URL as the client and the verifier take
// it: https://HOST[:PORT], nothing else (one trailing slash allowed). The error shows the URL
// without its password.
func CheckInstance(instance string) error {
	_, err := parseInstance(instance)
	return err
}

// Instance returns the normalised instance URL, without a trailing slash.
func (c *Client) Instance() string { return c.instance }

// AttestNonce is Attest with the payload {"nonce": nonce} (NonceKey), as Microsoft's sample app
// sends; Verify reads it back from x-ms-runtime.client-payload.nonce.
func (c *Client) AttestNonce(ctx context.Context, src EvidenceSource, nonce string) (string, error) {
	return c.Attest(ctx, src, map[string]string{NonceKey: nonce})
}

// Attest sends fresh evidence from src to MAA with payload as ClientPayload and returns the
// compact JWT, decrypted with src's ephemeral key. The JWT is not verified: that is Verifier's job.
// It must name the evidence's ephemeral key in x-ms-runtime.keys, as MAA's tokens do, or the
// error wraps ErrNotForEvidence: encryption to that key proves nothing about who issued the token,
// since the key is public. The check reads the token's payload before Verifier checks its
// signature; the caller verifies these same bytes before trusting any of it.
//
// Each attempt gathers new evidence. Throttling (429), server errors (5xx), network errors and
// timeouts are retried with exponential backoff and jitter, honouring Retry-After, up to
// MaxAttempts and never past ctx's deadline. The error names its stage and matches, with
// errors.Is, ErrOSVersion (refused before the TPM or MAA is asked), ErrThrottled, ErrUnavailable,
// ErrResponse or ErrNotForEvidence, or the TPM's own errors; other HTTP
// errors are a *ServiceError, not retried. When ctx's deadline ends the retries, during a wait or
// because the next wait would pass it, the error also matches context.DeadlineExceeded
// (context.Canceled for a cancellation) and still carries the last answer.
func (c *Client) Attest(ctx context.Context, src EvidenceSource, payload map[string]string) (string, error) {
	if err := checkOSVersion(c.os, c.osFrom); err != nil {
		return "", fmt.Errorf("MAA request: %w", err)
	}
	for attempt := 1; ; attempt++ {
		ev, err := src.Evidence(ctx)
		if err != nil {
			return "", fmt.Errorf("TPM evidence: %w", err)
		}
		// The token must name this key (checkIssuedFor); one that does not parse is the
		// evidence's fault, found before MAA is asked.
		encKey, err := ev.EphemeralKey()
		if err != nil {
			return "", fmt.Errorf("TPM evidence: %w", err)
		}
		req, err := EncodeAttestationInfo(ev, c.os, payload)
		if err != nil {
			return "", err
		}
		body, err := json.Marshal(req)
		if err != nil {
			return "", fmt.Errorf("encoding the MAA request: %w", err)
		}
		respBody, res := c.post(ctx, body)
		if res == nil {
			c.log.Debug("MAA attest response", "instance", c.instance, "bytes", len(respBody))
			jwt, err := decryptResponse(ctx, respBody, src, ev.EncKeyPub)
			if err != nil {
				return "", err
			}
			if err := checkIssuedFor(jwt, encKey); err != nil {
				return "", err
			}
			return jwt, nil
		}
		if !res.retryable {
			return "", res.err
		}
		// final gives up after this attempt. When ctx's end is why, the error also wraps that
		// (context.DeadlineExceeded for a deadline), so the caller can tell a deadline from an
		// outage; the sentinel and the last answer stay in the chain and the message.
		final := func(ended error) error {
			if ended == nil || (ctx.Err() != nil && errors.Is(res.err, ctx.Err())) {
				return fmt.Errorf("MAA %s: %w after %d attempt(s): %w", c.instance, res.sentinel, attempt, res.err)
			}
			return fmt.Errorf("MAA %s: %w after %d attempt(s) (%w): %w", c.instance, res.sentinel, attempt, ended, res.err)
		}
		if ctx.Err() != nil {
			return "", final(ctxEnded(ctx))
		}
		if attempt >= c.maxAttempts {
			return "", final(nil)
		}
		delay := c.backoff(attempt, res.retryAfter)
		if deadline, ok := ctx.Deadline(); ok && !time.Now().Add(delay).Before(deadline) {
			return "", final(fmt.Errorf("no time left before the deadline for another attempt after the %s wait: %w", delay, context.DeadlineExceeded))
		}
		c.log.Warn("MAA attestation failed, retrying", "instance", c.instance, "attempt", attempt,
			"max_attempts", c.maxAttempts, "delay", delay, "err", res.err)
		if err := c.sleep(ctx, delay); err != nil {
			if ended := ctxEnded(ctx); ended != nil {
				err = ended
			}
			return "", final(err)
		}
	}
}

// ctxEnded is why ctx ended: ctx.Err() (context.DeadlineExceeded or context.Canceled), followed by
// its cause when one was given (context.WithDeadlineCause) so the message names it too; nil while
// ctx has not ended.
func ctxEnded(ctx context.Context) error {
	err := ctx.Err()
	if cause := context.Cause(ctx); err != nil && cause != nil && cause != err {
		return fmt.Errorf("%w: %w", err, cause)
	}
	return err
}

// attemptError is the failure of one HTTP attempt.
type attemptError struct {
	err        error
	retryable  bool
	sentinel   error         // ErrThrottled or ErrUnavailable when retryable
	retryAfter time.Duration // from Retry-After, 0 if absent
}

// post sends one attest request. It returns the 200 body, or the attempt's failure.
func (c *Client) post(ctx context.Context, body []byte) ([]byte, *attemptError) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.attestURL, bytes.NewReader(body))
	if err != nil {
		return nil, &attemptError{err: fmt.Errorf("MAA %s: building the request: %w", c.instance, err)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	c.log.Debug("MAA attest request", "url", c.attestURL, "bytes", len(body))
	resp, err := c.http.Do(req)
	if err != nil {
		err = fmt.Errorf("sending the request: %w", err)
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil, &attemptError{err: err, retryable: true, sentinel: ErrUnavailable}
	}
	defer resp.Body.Close()
	data, readErr := readBounded(resp.Body, MaxResponseSize)
	if resp.StatusCode == http.StatusOK && ctx.Err() != nil {
		// The deadline (or a cancellation) came while the answer was read: whatever arrived is
		// not used, and the attestation ends as the context did, not as a bad answer from MAA.
		// (An error answer is kept: its text says what MAA answered.)
		return nil, &attemptError{err: fmt.Errorf("reading the response: %w", ctx.Err()), retryable: true, sentinel: ErrUnavailable}
	}
	if resp.StatusCode == http.StatusOK {
		if errors.Is(readErr, errBodyTooLarge) {
			return nil, &attemptError{err: fmt.Errorf("decrypting the MAA response: %w: %w", ErrResponse, readErr)}
		}
		if readErr != nil {
			// A 200 cut short is a transport problem, not a bad answer: retry it.
			return nil, &attemptError{err: fmt.Errorf("reading the response: %w", readErr), retryable: true, sentinel: ErrUnavailable}
		}
		return data, nil
	}
	se := parseServiceError(resp.StatusCode, resp.Status, data)
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return nil, &attemptError{err: se, retryable: true, sentinel: ErrThrottled, retryAfter: parseRetryAfter(resp.Header.Get("Retry-After"))}
	case resp.StatusCode >= 500:
		ra := time.Duration(0)
		if resp.StatusCode == http.StatusServiceUnavailable {
			ra = parseRetryAfter(resp.Header.Get("Retry-After"))
		}
		return nil, &attemptError{err: se, retryable: true, sentinel: ErrUnavailable, retryAfter: ra}
	case resp.StatusCode == http.StatusUnauthorized:
		// An attestation provider has an ARM setting, tpmAttestationAuthentication, that can
		// require callers of its TPM attestation APIs to be authenticated (reference/azure-sdk.md
		// §2.3). This client sends no credential, as Azure's guest attestation client sends none
		// (AttestationLibUtils.cpp); UNCONFIRMED whether the setting covers AzureGuest.
		return nil, &attemptError{err: fmt.Errorf("MAA %s: %w: the instance wants an authenticated caller, and this client sends "+
			"no credential (as Azure's guest attestation client); check the attestation provider's tpmAttestationAuthentication setting", c.instance, se)}
	default:
		return nil, &attemptError{err: fmt.Errorf("MAA %s: %w", c.instance, se)}
	}
}

// backoff returns the delay before attempt+1: Retry-After if given (capped), else the exponential
// delay base*2^(attempt-1), capped, with "equal jitter" (half fixed, half random).
func (c *Client) backoff(attempt int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, c.maxDelay)
	}
	d := c.baseDelay
	for i := 1; i < attempt && d < c.maxDelay; i++ {
		d *= 2
	}
	d = min(d, c.maxDelay)
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + rand.N(half+1)
}

// parseRetryAfter reads a Retry-After given in seconds; HTTP dates and junk give 0.
func parseRetryAfter(v string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		return 0
	}
	if n > 3600 {
		n = 3600
	}
	return time.Duration(n) * time.Second
}

// sleepCtx sleeps for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// errBodyTooLarge is the error of readBounded for a body over its limit.
var errBodyTooLarge = errors.New("body too large")

// readBounded reads at most limit bytes; a longer body is an error wrapping errBodyTooLarge.
func readBounded(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return data, err
	}
	if int64(len(data)) > limit {
		return data[:limit], fmt.Errorf("%w: more than %d bytes", errBodyTooLarge, limit)
	}
	return data, nil
}

// Bounds, in bytes and before the "..." that marks a cut, of what parseServiceError keeps of an
// error answer: its code, its message, and the excerpt of a body that is not a CloudError.
const (
	maxErrorCode    = 100
	maxErrorMessage = 1000
	maxBodyExcerpt  = 200
)

// parseServiceError reads a CloudError body ({"error": {"code", "message"}}, or the capitalised
// keys AZGA also accepts); a body that is not one gives a short printable excerpt as Message.
// Code and Message are printable UTF-8 (excerpt), of at most maxErrorCode and maxErrorMessage
// bytes before a "...".
func parseServiceError(status int, statusText string, body []byte) *ServiceError {
	se := &ServiceError{StatusCode: status}
	var doc map[string]json.RawMessage
	if json.Unmarshal(body, &doc) == nil {
		inner, ok := doc["error"]
		if !ok {
			inner, ok = doc["Error"]
		}
		var fields map[string]json.RawMessage
		if ok && json.Unmarshal(inner, &fields) == nil {
			se.Code = jsonStringField(fields, "code", "Code")
			se.Message = jsonStringField(fields, "message", "Message")
		}
	}
	if se.Code == "" && se.Message == "" {
		se.Message = excerpt(string(body), maxBodyExcerpt)
		if se.Message == "" {
			se.Message = strings.TrimSpace(strings.TrimPrefix(statusText, strconv.Itoa(status)))
		}
	}
	se.Code = excerpt(se.Code, maxErrorCode)
	se.Message = excerpt(se.Message, maxErrorMessage)
	return se
}

func jsonStringField(m map[string]json.RawMessage, keys ...string) string {
	for _, k := range keys {
		var s string
		if raw, ok := m[k]; ok && json.Unmarshal(raw, &s) == nil {
			return s
		}
	}
	return ""
}

// excerpt returns s with each rune that is not printable replaced by a space (a byte that is not
// UTF-8 by U+FFFD, as strings.Map reads it), without leading and trailing white space, and cut to
// at most n bytes on a rune boundary, "..." marking the cut: valid, printable UTF-8 of at most
// n+3 bytes. A cut by byte count alone could split a multi-byte character, leaving invalid UTF-8
// in an error message.
func excerpt(s string, n int) string {
	s = strings.TrimSpace(strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, s))
	if len(s) > n {
		i := max(n, 0)
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i] + "..."
	}
	return s
}

// EncodeAttestationInfo builds the AzureGuest request body from TPM evidence, the OS description
// and the caller's ClientPayload, in AZGA's encodings (see wire.go): the AttestationInfo JSON is
// base64url without padding; its byte fields, OS strings and payload values are standard base64.
func EncodeAttestationInfo(ev *tpm.Evidence, os OSInfo, payload map[string]string) (AttestRequest, error) {
	if ev == nil {
		return AttestRequest{}, errors.New("TPM evidence: no evidence")
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{
		{"AK certificate", ev.AKCert}, {"AK public area", ev.AKPub}, {"quote", ev.Quote},
		{"quote signature", ev.QuoteSignature}, {"ephemeral key public area", ev.EncKeyPub},
		{"ephemeral key certification", ev.EncKeyCertifyInfo},
		{"ephemeral key certification signature", ev.EncKeyCertifyInfoSignature},
	} {
		if len(f.b) == 0 {
			return AttestRequest{}, fmt.Errorf("TPM evidence: %s is missing", f.name)
		}
	}
	if len(ev.PCRs) == 0 {
		return AttestRequest{}, errors.New("TPM evidence: no PCR values")
	}
	if err := checkOSVersion(os, "OS description"); err != nil {
		return AttestRequest{}, err
	}
	b64 := base64.StdEncoding.EncodeToString
	info := AttestationInfo{
		AttestationProtocolVersion: ProtocolVersion,
		OSType:                     b64([]byte(os.Type)),
		OSDistro:                   b64([]byte(os.Distro)),
		OSVersionMajor:             os.VersionMajor,
		OSVersionMinor:             os.VersionMinor,
		OSBuild:                    b64([]byte(os.Build)),
		TcgLogs:                    b64(ev.TCGLog),
		ClientPayload:              make(map[string]string, len(payload)),
		TpmInfo: TpmInfo{
			AikCert:                    b64(ev.AKCert),
			AikPub:                     b64(ev.AKPub),
			PcrQuote:                   b64(ev.Quote),
			PcrSignature:               b64(ev.QuoteSignature),
			EncKeyPub:                  b64(ev.EncKeyPub),
			EncKeyCertifyInfo:          b64(ev.EncKeyCertifyInfo),
			EncKeyCertifyInfoSignature: b64(ev.EncKeyCertifyInfoSignature),
			PcrSet:                     make([]uint32, 0, len(ev.PCRs)),
			PCRs:                       make([]PCRValue, 0, len(ev.PCRs)),
		},
		IsolationInfo: IsolationInfo{Type: IsolationTrustedLaunch},
	}
	for k, v := range payload {
		info.ClientPayload[k] = b64([]byte(v))
	}
	for _, p := range ev.PCRs {
		info.TpmInfo.PcrSet = append(info.TpmInfo.PcrSet, p.Index)
		info.TpmInfo.PCRs = append(info.TpmInfo.PCRs, PCRValue{Index: p.Index, Digest: b64(p.Digest)})
	}
	doc, err := json.Marshal(info)
	if err != nil {
		return AttestRequest{}, fmt.Errorf("encoding AttestationInfo: %w", err)
	}
	return AttestRequest{AttestationInfo: base64.RawURLEncoding.EncodeToString(doc)}, nil
}
