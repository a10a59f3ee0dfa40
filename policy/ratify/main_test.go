package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/notaryproject/notation-core-go/signature"
	nregistry "github.com/notaryproject/notation-go/registry"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/referrer"
	"github.com/attested-kv/attested-kv/policy/ratify/verifier"
)

// The verifier is exercised at its process protocol: this test binary re-executes itself as the
// verifier (TestMain), with Ratify's environment and a JSON object on stdin, and reads the result
// JSON from stdout.

func TestMain(m *testing.M) {
	if os.Getenv("RATIFY_MAA_VERIFIER_AS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const keyID = "https://kv.vault.azure.net/keys/signer/0123456789abcdef0123456789abcdef"

// exe runs the verifier process with Ratify's environment for subject and input on stdin, and
// returns its result; the process is killed if it outlives ctx.
func exe(ctx context.Context, t *testing.T, subject string, input any) verifier.Result {
	t.Helper()
	in, _ := json.Marshal(input)
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), "RATIFY_MAA_VERIFIER_AS_MAIN=1", "RATIFY_VERIFIER_COMMAND=VERIFY",
		"RATIFY_VERIFIER_SUBJECT="+subject, "RATIFY_VERIFIER_VERSION=1.0.0")
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("verifier process: %v (stderr %s)", err, stderr.String())
	}
	var res verifier.Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("stdout is not a result JSON: %v: %q", err, stdout.String())
	}
	return res
}

// fixture is a registry, an MAA instance on a simulated TPM, a Notation signer and a verifier
// config that trusts them.
type fixture struct {
	chain  *attesttest.Chain
	reg    *remote.Repository
	name   string // host:port/app of reg
	signer signature.LocalSigner
	cfg    verifier.Config
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{chain: attesttest.New(t, attesttest.WithSecureBoot()), signer: attesttest.Signer(t, "attested signer")}
	f.reg, f.name = attesttest.Registry(t)
	dir := t.TempDir()
	jwks := filepath.Join(dir, "jwks.json")
	os.WriteFile(jwks, f.chain.Emulator.JWKS(), 0o600)
	certs, _ := f.signer.CertificateChain()
	certDir := filepath.Join(dir, "certs")
	os.MkdirAll(certDir, 0o700)
	os.WriteFile(filepath.Join(certDir, "root.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certs[0].Raw}), 0o600)
	policy := &trustpolicy.Document{Version: "1.0", TrustPolicies: []trustpolicy.TrustPolicy{{
		Name: "attested", RegistryScopes: []string{"*"},
		SignatureVerification: trustpolicy.SignatureVerification{VerificationLevel: "strict"},
		TrustStores:           []string{"ca:certs"}, TrustedIdentities: []string{"*"},
	}}}
	f.cfg = verifier.Config{Name: "maa-token", Type: "maa-token", AttestationURL: f.chain.URL, KeyID: keyID, JWKSPath: jwks, TrustPolicyDoc: policy, VerificationCerts: []string{certDir}}
	return f
}

// input is the verifier's stdin for config c and referrer ref, with a plain-HTTP store.
func input(c verifier.Config, ref ocispec.Descriptor) map[string]any {
	return map[string]any{"config": c, "storeConfig": map[string]any{"store": map[string]any{"name": "oras", "useHttp": true}}, "referenceDesc": ref}
}

// signed pushes an image, signs it with a token for nonceFor(image) whose signature names
// issuer, and attaches the token; it returns the image and the token referrer.
func (f *fixture) signed(t *testing.T, content, issuer string, nonceFor func(ocispec.Descriptor) string) (ocispec.Descriptor, ocispec.Descriptor) {
	t.Helper()
	return f.signedAt(t, content, issuer, nonceFor, time.Now())
}

// signedAt is signed with the signing time at.
func (f *fixture) signedAt(t *testing.T, content, issuer string, nonceFor func(ocispec.Descriptor) string, at time.Time) (ocispec.Descriptor, ocispec.Descriptor) {
	t.Helper()
	img := attesttest.PushImage(t, f.reg, content)
	tok := f.chain.Token(t, nonceFor(img))
	attesttest.SignImage(t, nregistry.NewRepository(f.reg), f.signer, img, tok, issuer, at)
	ref, err := referrer.Attach(context.Background(), f.reg, img, referrer.Token{Raw: tok, Issuer: issuer, IssuedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return img, ref
}

func bound(d ocispec.Descriptor) string { b, _ := binding.Compute(d.Digest.String(), keyID); return b }

func TestVerifierProcess(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t)
	cfg, name := f.cfg, f.name
	img, ref := f.signed(t, "good", f.chain.URL, bound)
	if res := exe(ctx, t, name+"@"+img.Digest.String(), input(cfg, ref)); !res.IsSuccess || res.Name != "maa-token" {
		t.Fatalf("good image refused: %+v", res)
	}
	pinned := cfg
	certs, _ := f.signer.CertificateChain()
	sum := sha256.Sum256(certs[0].Raw)
	pinned.SigningCertSHA256 = []string{strings.ToUpper(hex.EncodeToString(sum[:]))}
	if res := exe(ctx, t, name+"@"+img.Digest.String(), input(pinned, ref)); !res.IsSuccess {
		t.Fatalf("good image refused with its signing certificate pinned: %+v", res)
	}

	// Signed two minutes after its token was issued: within the default maxTokenAge (5m).
	late, lateRef := f.signedAt(t, "signed late", f.chain.URL, bound, time.Now().Add(2*time.Minute))
	if res := exe(ctx, t, name+"@"+late.Digest.String(), input(cfg, lateRef)); !res.IsSuccess {
		t.Fatalf("image signed 2m after its token, default maxTokenAge: refused: %+v", res)
	}
	// A rule file the good image's token fails, to tell it from the baseline, which it passes.
	rulesFile := filepath.Join(t.TempDir(), "rules.cel")
	if err := os.WriteFile(rulesFile, []byte("no-secure-boot: claims[\"secureboot\"] == false\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	other, _ := f.signed(t, "other", f.chain.URL, bound)
	bad, badRef := f.signed(t, "bad", f.chain.URL, func(ocispec.Descriptor) string { return bound(other) })
	withDesc := func(change func(*ocispec.Descriptor)) ocispec.Descriptor { d := ref; change(&d); return d }
	tests := []struct {
		name    string
		subject string
		input   map[string]any
		message string
	}{
		{"token bound to another image", name + "@" + bad.Digest.String(), input(cfg, badRef), `check "binding" failed: the token is bound to another image`},
		{"referrer not named by the signature", name + "@" + img.Digest.String(), input(cfg, badRef), "is not the one a trusted signature names"},
		{"another expected key", name + "@" + img.Digest.String(), input(func() verifier.Config { c := cfg; c.KeyID = keyID + "0"; return c }(), ref), `check "binding" failed`},
		// The settings that tighten the verification are applied (mutants killed: maxTokenAge
		// parsed and not applied; the rules setting loaded and the baseline applied).
		{"token older at signing than the configured maxTokenAge", name + "@" + late.Digest.String(),
			input(func() verifier.Config { c := cfg; c.MaxTokenAge = "1m"; return c }(), lateRef), `check "token-age" failed`},
		{"the configured rules, not the baseline", name + "@" + img.Digest.String(),
			input(func() verifier.Config { c := cfg; c.Rules = rulesFile; return c }(), ref), `check "rules" failed: claim rule "no-secure-boot" failed`},
		{"no trust policy", name + "@" + img.Digest.String(), input(func() verifier.Config { c := cfg; c.TrustPolicyDoc = nil; return c }(), ref), "trustPolicyDoc"},
		{"subject by tag", name + ":latest", input(cfg, ref), "not a digest reference"},
		{"signed by another certificate than the pinned one", name + "@" + img.Digest.String(), input(func() verifier.Config {
			c := cfg
			c.SigningCertSHA256 = []string{strings.Repeat("ab", 32)}
			return c
		}(), ref), "not a pinned signing certificate"},
		{"attestation URL over http", name + "@" + img.Digest.String(), input(func() verifier.Config { c := cfg; c.AttestationURL = "http://x.weu.attest.azure.net"; return c }(), ref), "attestationURL"},
		{"malformed pin", name + "@" + img.Digest.String(), input(func() verifier.Config { c := cfg; c.SigningCertSHA256 = []string{"abc"}; return c }(), ref), "signingCertSHA256"},
		// The image verifies: only the referrer descriptor Ratify hands over is wrong, and the
		// verifier must not vouch for a referrer it has not compared with the signed token.
		{"referrer of another type without a digest", name + "@" + img.Digest.String(), input(cfg, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: "application/spdx+json"}), "referenceDesc has no digest"},
		{"token referrer without a digest", name + "@" + img.Digest.String(), input(cfg, withDesc(func(d *ocispec.Descriptor) { d.Digest = "" })), "referenceDesc has no digest"},
		{"the token's digest under another artifact type", name + "@" + img.Digest.String(), input(cfg, withDesc(func(d *ocispec.Descriptor) { d.ArtifactType = "application/spdx+json" })), `artifactType "application/spdx+json" is not the MAA token artifact type`},
		{"the token's digest without an artifact type", name + "@" + img.Digest.String(), input(cfg, withDesc(func(d *ocispec.Descriptor) { d.ArtifactType = "" })), `artifactType "" is not the MAA token artifact type`},
		{"malformed referrer digest", name + "@" + img.Digest.String(), input(cfg, withDesc(func(d *ocispec.Descriptor) { d.Digest = "sha256:zz" })), "is not a valid digest"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := exe(ctx, t, tc.subject, tc.input)
			detail, _ := json.Marshal(res.Extensions) // the checks, with what each found
			if res.IsSuccess || !strings.Contains(res.Message+string(detail), tc.message) {
				t.Fatalf("got %+v, want a refusal containing %q", res, tc.message)
			}
		})
	}
}

// TestVerifierTimeout: a verification that hangs, at the registry or at the MAA instance, is
// answered within the configured timeout with a refusal that names it, not left for Ratify or the
// Gatekeeper webhook to give up on (a webhook timeout is decided by its failurePolicy).
func TestVerifierTimeout(t *testing.T) {
	const timeout = time.Second
	// Generous: the process start alone takes about a second under the race detector. The
	// process is killed at killAfter, so that a verifier that hangs fails the test instead of
	// hanging it.
	const answerWithin, killAfter = 15 * time.Second, 25 * time.Second
	f := newFixture(t)
	cfg := f.cfg
	cfg.Timeout = timeout.String()
	img, ref := f.signed(t, "good", f.chain.URL, bound)
	if res := exe(t.Context(), t, f.name+"@"+img.Digest.String(), input(cfg, ref)); !res.IsSuccess {
		t.Fatalf("good image refused within %s: %+v", timeout, res)
	}

	// An MAA instance that accepts connections and never answers: the signing-key fetch hangs.
	// The image is signed naming it as the issuer, so that verification reaches the key fetch.
	silentURL, silentReached := silentServer(t)
	silentImg, silentRef := f.signed(t, "silent issuer", silentURL, bound)
	silentCfg := cfg
	silentCfg.AttestationURL, silentCfg.JWKSPath = silentURL, ""

	regHost, repoPath, _ := strings.Cut(f.name, "/")
	tests := []struct {
		name    string
		hang    func(*http.Request) bool // which registry requests never get an answer
		img     ocispec.Descriptor
		cfg     verifier.Config
		ref     ocispec.Descriptor
		reached func() bool
	}{
		{name: "registry hangs on every request", hang: func(*http.Request) bool { return true }, img: img, cfg: cfg, ref: ref},
		{name: "registry hangs listing referrers", hang: func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/referrers/") }, img: img, cfg: cfg, ref: ref},
		{name: "registry hangs serving blobs", hang: func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/blobs/") }, img: img, cfg: cfg, ref: ref},
		{name: "MAA instance silent on the signing-key fetch", hang: func(*http.Request) bool { return false }, img: silentImg, cfg: silentCfg, ref: silentRef, reached: silentReached.Load},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			host, hung := hangingProxy(t, regHost, tc.hang)
			reached := tc.reached
			if reached == nil {
				reached = hung.Load
			}
			ctx, cancel := context.WithTimeout(t.Context(), killAfter)
			defer cancel()
			began := time.Now()
			res := exe(ctx, t, host+"/"+repoPath+"@"+tc.img.Digest.String(), input(tc.cfg, tc.ref))
			took := time.Since(began)
			want := fmt.Sprintf(`verification timed out after %s (verifier config "timeout")`, timeout)
			if res.IsSuccess || !strings.Contains(res.Message, want) {
				t.Fatalf("got %+v, want a refusal containing %q", res, want)
			}
			if took > answerWithin {
				t.Fatalf("answered after %s, want within %s", took, answerWithin)
			}
			if !reached() {
				t.Fatalf("the verification never reached the hanging server: %+v", res)
			}
		})
	}
}

// hangingProxy serves the registry at target through a loopback proxy that never answers the
// requests hang selects (until the client goes away or the test ends), and reports whether such a
// request came.
func hangingProxy(t *testing.T, target string, hang func(*http.Request) bool) (host string, hung *atomic.Bool) {
	t.Helper()
	hung = new(atomic.Bool)
	release := make(chan struct{})
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hang(r) {
			proxy.ServeHTTP(w, r)
			return
		}
		hung.Store(true)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: no handler is left waiting on Close
	return strings.TrimPrefix(srv.URL, "http://"), hung
}

// silentServer accepts TCP connections on loopback and never writes a byte, so a TLS handshake
// with it hangs; it returns its https URL and reports whether a connection came.
func silentServer(t *testing.T) (string, *atomic.Bool) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reached := new(atomic.Bool)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			reached.Store(true)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "https://" + l.Addr().String(), reached
}

// TestVerifierErrorsNameTheCause: when the registry will not serve the token referrer, or MAA's
// signing keys cannot be fetched, the answer is isSuccess false with a message naming that
// cause, not a refusal that blames the image (nor one telling to attach a token that is
// attached).
func TestVerifierErrorsNameTheCause(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t)
	img, ref := f.signed(t, "good", f.chain.URL, bound)
	regHost, repoPath, _ := strings.Cut(f.name, "/")
	// The registry denies reads of the token referrer's manifest (403 is not retried).
	denying := failingProxy(t, regHost, http.StatusForbidden, func(r *http.Request) bool {
		return strings.HasSuffix(r.URL.Path, "/manifests/"+ref.Digest.String())
	})
	// An MAA instance whose port refuses connections: the signing-key fetch fails at once. The
	// image is signed naming it as the issuer, so that verification reaches the key fetch.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "https://" + l.Addr().String()
	l.Close()
	closedImg, closedRef := f.signed(t, "closed issuer", closedURL, bound)
	closedCfg := f.cfg
	closedCfg.AttestationURL, closedCfg.JWKSPath = closedURL, ""

	tests := []struct {
		name    string
		subject string
		input   map[string]any
		want    []string
	}{
		{"token referrer not served", denying + "/" + repoPath + "@" + img.Digest.String(), input(f.cfg, ref), []string{"token referrers could not be read", "403"}},
		{"MAA signing keys unreachable", f.name + "@" + closedImg.Digest.String(), input(closedCfg, closedRef), []string{"signing keys unavailable", closedURL + "/certs"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := exe(ctx, t, tc.subject, tc.input)
			if res.IsSuccess || strings.Contains(res.Message, "attested signing not proven") || strings.Contains(res.Message, "oras-attest attach") {
				t.Fatalf("got %+v, want an error, not a refusal", res)
			}
			for _, w := range tc.want {
				if !strings.Contains(res.Message, w) {
					t.Fatalf("message %q does not name the cause %q", res.Message, w)
				}
			}
		})
	}
}

// failingProxy serves the registry at target through a loopback proxy that answers the requests
// fail selects with status.
func failingProxy(t *testing.T, target string, status int, fail func(*http.Request) bool) (host string) {
	t.Helper()
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail(r) {
			http.Error(w, http.StatusText(status), status)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestVerifierRefusesVersion: a RATIFY_VERIFIER_VERSION the verifier does not support (here
// 9.9.9) is refused as Ratify's plugin skeleton refuses it: exit status 1 and the error JSON
// with code 6 (version not supported) naming the version on stdout, before stdin is read.
func TestVerifierRefusesVersion(t *testing.T) {
	cmd := exec.CommandContext(t.Context(), os.Args[0])
	cmd.Env = append(os.Environ(), "RATIFY_MAA_VERIFIER_AS_MAIN=1", "RATIFY_VERIFIER_COMMAND=VERIFY",
		"RATIFY_VERIFIER_SUBJECT=registry.invalid/app@sha256:"+strings.Repeat("0", 64), "RATIFY_VERIFIER_VERSION=9.9.9")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1 (stdout %q, stderr %q)", err, stdout.String(), stderr.String())
	}
	var e verifier.Error
	if err := json.Unmarshal(stdout.Bytes(), &e); err != nil || e.Code != verifier.CodeVersionNotSupported || !strings.Contains(e.Msg, `"9.9.9"`) || !strings.Contains(e.Details, "1.0.0") {
		t.Fatalf("stdout %q (%v): want Ratify's error JSON with code 6 naming 9.9.9", stdout.String(), err)
	}
}

// TestUsageListsEveryParameter: the help names each key of the verifier's config an operator
// sets (the config type's JSON names, but those Ratify fills in itself), so it cannot fall behind.
func TestUsageListsEveryParameter(t *testing.T) {
	typ := reflect.TypeFor[verifier.Config]()
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		if name == "name" || name == "type" {
			continue // Ratify's own
		}
		if !strings.Contains(usage, "\n  "+name+" ") {
			t.Errorf("the help does not list %q", name)
		}
	}
}
