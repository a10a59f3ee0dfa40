// Command ratify-maa-verifier is a Ratify v1 external verifier for the MAA token referrer
// (artifact type application/vnd.attested-kv.maa-token.v1+jwt).
//
// Ratify runs it once per token referrer with RATIFY_VERIFIER_COMMAND=VERIFY,
// RATIFY_VERIFIER_SUBJECT=<registry/repo@sha256:...> and RATIFY_VERIFIER_VERSION, and one JSON
// object on stdin: {"config": <the verifier's config>, "storeConfig": {...}, "referenceDesc":
// <the referrer's descriptor>}. It prints one result JSON on stdout: {"isSuccess", "name",
// "type", "message", "extensions"}. It succeeds only if this token is the one a trusted Notation
// signature of the subject names, and the token verifies, is bound to the subject and the
// expected key, was fresh at signing, and meets the claim rules (internal/imageverify, the same
// code as `oras-attest verify`).
//
// Verifier config keys: attestationURL (required), keyID (required), maxTokenAge (default "5m"),
// timeout (a Go duration bounding the whole verification, default "3s", at most "30s"; a
// verification that does not finish in time is a failure naming the timeout), rules (a rule file
// path; default the built-in baseline), jwksPath (pinned token keys, for clusters that cannot
// reach the MAA instance), trustPolicyDoc (a Notation trust policy document), verificationCerts
// (directories of trusted root certificates, placed in the trust store "ca:certs", as Ratify's
// notation verifier does) and signingCertSHA256 (the fingerprints of the signing certificates
// that count; needed when the trust store holds a CA or other keys). The referenceDesc must name,
// by digest, a referrer of the token artifact type. The registry is read with the store's
// authProvider: azureWorkloadIdentity or azureManagedIdentity (an Entra ID token exchanged for an
// ACR refresh token on *.azurecr.io, after any Docker credentials), or the Docker credentials.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/notaryproject/notation-go/dir"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/attested-kv/attested-kv/internal/cliutil"
	"github.com/attested-kv/attested-kv/internal/imageverify"
	"github.com/attested-kv/attested-kv/internal/keyvault"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/referrer"
	"github.com/attested-kv/attested-kv/internal/registryclient"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// Name is the verifier's name and type in Ratify's config.
const Name = "maa-token"

// maxInput bounds stdin.
const maxInput = 1 << 20

// DefaultTimeout bounds the whole verification when the config gives no "timeout". The verifier
// has to answer before the callers above it give up. If Ratify gives up first, the plugin is
// reported only as failed, without the cause (reference/oras-ratify.md §3.3; Ratify v1.4.4 runs it
// with exec.CommandContext, pkg/common/plugin/exec.go, so it is killed). If Gatekeeper's webhook
// times out, its failurePolicy decides, and the Gatekeeper chart's default is Ignore, which admits
// the pod (charts/gatekeeper/values.yaml; policy/k8s/README.md installs it with Fail). The budgets
// above the verifier, from reference/oras-ratify.md unless marked:
//   - the Gatekeeper webhook timeout: 5 s as policy/k8s/README.md installs it
//     (validatingWebhookTimeoutSeconds; Gatekeeper's chart default is 3 s, §6 item 6);
//   - Ratify's external-data provider timeout, provider.timeout.validationTimeoutSeconds, default
//     5 s in the Ratify chart (§3.7), and its executor's verificationRequestTimeout (§3.5), which
//     the chart sets to that minus 100 ms (Ratify v1.4.4 charts/ratify/templates/configmap.yaml);
//   - inside that budget Ratify first resolves the subject and lists its referrers, and only then
//     runs this plugin for the token referrer (§3.3).
//
// 3 s leaves about 2 s of the 5 s for Ratify's own registry calls, the process start and
// Gatekeeper's answer, and is ample for the verification itself: a whole `ratify verify`, the
// Notation signature and a token plugin, took well under a second on loopback (§3.8).
const DefaultTimeout = 3 * time.Second

// maxTimeout bounds the configured timeout: Kubernetes caps an admission webhook's timeoutSeconds
// at 30 s, so a longer verification can never be waited for.
const maxTimeout = 30 * time.Second

// maxAnswerMargin is the most of the timeout kept for answering: the verification's own deadline
// falls this much (or a tenth of the timeout, if less) before the answer is due, so that a
// verification that stops at its deadline still reports what it was doing.
const maxAnswerMargin = 100 * time.Millisecond

// Input is what Ratify writes on stdin.
type Input struct {
	Config        Config             `json:"config"`
	StoreConfig   StoreConfig        `json:"storeConfig"`
	ReferenceDesc ocispec.Descriptor `json:"referenceDesc"`
}

// Config is the verifier's section of Ratify's config.
type Config struct {
	Name              string                `json:"name"`
	Type              string                `json:"type"`
	AttestationURL    string                `json:"attestationURL"`
	KeyID             string                `json:"keyID"`
	MaxTokenAge       string                `json:"maxTokenAge"`
	Timeout           string                `json:"timeout"`
	Rules             string                `json:"rules"`
	JWKSPath          string                `json:"jwksPath"`
	TrustPolicyDoc    *trustpolicy.Document `json:"trustPolicyDoc"`
	VerificationCerts []string              `json:"verificationCerts"`
	SigningCertSHA256 []string              `json:"signingCertSHA256"`
}

// StoreConfig is the part of Ratify's store config the verifier reads: whether the registry is
// plain HTTP, and the store's authProvider, which the verifier uses as Ratify's ORAS store does.
type StoreConfig struct {
	Store struct {
		UseHTTP      bool         `json:"useHttp"`
		AuthProvider AuthProvider `json:"authProvider"`
	} `json:"store"`
}

// AuthProvider is the store's registry authentication (Ratify's authProvider parameters).
type AuthProvider struct {
	// Name is azureWorkloadIdentity or azureManagedIdentity (Entra ID, exchanged for an ACR
	// refresh token on *.azurecr.io), or dockerConfig or empty (the Docker credentials file).
	Name string `json:"name"`
	// ClientID is the identity's client id (default: AZURE_CLIENT_ID).
	ClientID string `json:"clientID"`
}

// registryOptions returns how the verifier reads the registry of the store config sc.
func registryOptions(sc StoreConfig) (registryclient.Options, error) {
	o := registryclient.Options{PlainHTTP: sc.Store.UseHTTP}
	ap := sc.Store.AuthProvider
	var typ string
	switch ap.Name {
	case "", "dockerConfig":
		return o, nil
	case "azureWorkloadIdentity":
		typ = keyvault.CredentialWorkloadID
	case "azureManagedIdentity":
		typ = keyvault.CredentialManagedID
	default:
		return o, fmt.Errorf("store authProvider %q is not supported by this verifier (azureWorkloadIdentity, azureManagedIdentity or dockerConfig)", ap.Name)
	}
	cred, err := keyvault.NewCredential(keyvault.CredentialOptions{Type: typ, ClientID: ap.ClientID})
	if err != nil {
		return o, fmt.Errorf("store authProvider %s: %w", ap.Name, err)
	}
	o.AzureCredential = cred
	return o, nil
}

// Result is what Ratify reads back.
type Result struct {
	IsSuccess  bool   `json:"isSuccess"`
	Name       string `json:"name"`
	Type       string `json:"type"`
	Message    string `json:"message"`
	Extensions any    `json:"extensions,omitempty"`
}

func main() {
	cliutil.ShortLivedGC()
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "version":
			fmt.Println(Name, cliutil.Version)
			return
		case "-h", "--help", "help":
			fmt.Print(usage)
			return
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res := run(ctx, os.Getenv, os.Stdin)
	json.NewEncoder(os.Stdout).Encode(res)
}

const usage = `ratify-maa-verifier: a Ratify v1 external verifier for attested-kv MAA token referrers.

Ratify runs it with RATIFY_VERIFIER_COMMAND=VERIFY, RATIFY_VERIFIER_SUBJECT and the verifier
config on stdin; it prints the verification result as JSON. See policy/k8s/README.md.
`

// run is the whole verifier, testable without a process. Every failure is a result with
// isSuccess false and a message naming the cause. The timeout is counted from the call, so reading
// the input and building the options spend it too.
func run(ctx context.Context, getenv func(string) string, stdin io.Reader) Result {
	start := time.Now()
	res := Result{Name: Name, Type: Name}
	fail := func(format string, args ...any) Result {
		res.Message = fmt.Sprintf(format, args...)
		return res
	}
	if c := getenv("RATIFY_VERIFIER_COMMAND"); c != "VERIFY" {
		return fail("unsupported command %q (want VERIFY)", c)
	}
	subjectRef := getenv("RATIFY_VERIFIER_SUBJECT")
	if subjectRef == "" || !strings.Contains(subjectRef, "@") {
		return fail("RATIFY_VERIFIER_SUBJECT %q is not a digest reference", subjectRef)
	}
	b, err := io.ReadAll(io.LimitReader(stdin, maxInput+1))
	switch {
	case err != nil:
		return fail("reading the verifier input: %v", err)
	case len(b) > maxInput:
		return fail("verifier input exceeds the stdin limit of %d bytes", maxInput)
	}
	var in Input
	if err := json.Unmarshal(b, &in); err != nil {
		return fail("verifier input is not JSON: %v", err)
	}
	if in.Config.Name != "" {
		res.Name = in.Config.Name
	}
	if in.Config.Type != "" {
		res.Type = in.Config.Type
	}
	timeout, err := parseTimeout(in.Config.Timeout)
	if err != nil {
		return fail("verifier config: %v", err)
	}
	if err := checkReferenceDesc(in.ReferenceDesc); err != nil {
		return fail("%v", err)
	}
	o, cleanup, err := options(in.Config)
	if err != nil {
		return fail("verifier config: %v", err)
	}
	defer cleanup()
	ro, err := registryOptions(in.StoreConfig)
	if err != nil {
		return fail("%v", err)
	}
	repo, ref, err := registryclient.Open(subjectRef, ro)
	if err != nil {
		return fail("%v", err)
	}
	return within(ctx, start, timeout, res, func(ctx context.Context) Result {
		return verify(ctx, res, repo, ref, in.ReferenceDesc.Digest, o)
	})
}

// verify reads the subject from repo and succeeds only if the token referrer a trusted signature
// names is want, the referrer Ratify runs the verifier for, and that token proves attested
// signing. res carries the result's name and type.
func verify(ctx context.Context, res Result, repo *remote.Repository, ref registry.Reference, want digest.Digest, o imageverify.Options) Result {
	fail := func(format string, args ...any) Result {
		res.Message = fmt.Sprintf(format, args...)
		return res
	}
	subject, err := repo.Resolve(ctx, ref.Reference)
	if err != nil {
		return fail("resolving %s: %v", ref, err)
	}
	out, err := imageverify.Verify(ctx, imageverify.NewRepository(repo), ref.Registry+"/"+ref.Repository+"@"+subject.Digest.String(), subject, o)
	if err != nil {
		return fail("%v", err)
	}
	res.Extensions = out
	switch {
	case !out.Passed:
		return fail("attested signing not proven: check %q failed", out.FailedCheck())
	case out.TokenReferrer != want.String():
		return fail("token referrer %s is not the one a trusted signature names (%s)", want, out.TokenReferrer)
	}
	res.IsSuccess = true
	res.Message = "signed from an attested machine: token " + out.TokenSHA256
	return res
}

// within runs work under one deadline, start + timeout, and returns its result, or by that
// deadline a failure naming the timeout: work gets a context whose deadline comes a margin
// earlier, and if it has not returned when the answer is due (a call that ignores its context) it
// is abandoned, to end with the process. A failure after the context ended names the timeout (or
// the interruption) before the work's own message. res is the result to fail with.
func within(ctx context.Context, start time.Time, timeout time.Duration, res Result, work func(context.Context) Result) Result {
	due := start.Add(timeout)
	ctx, cancel := context.WithDeadlineCause(ctx, due.Add(-min(maxAnswerMargin, timeout/10)), errTimeout)
	defer cancel()
	done := make(chan Result, 1) // buffered: abandoned work does not block on sending
	go func() { done <- work(ctx) }()
	answer := time.NewTimer(time.Until(due))
	defer answer.Stop()
	out := res
	select {
	case out = <-done:
	case <-answer.C:
	}
	if out.IsSuccess || ctx.Err() == nil {
		return out
	}
	msg := "verification interrupted: " + context.Cause(ctx).Error()
	if errors.Is(context.Cause(ctx), errTimeout) {
		msg = fmt.Sprintf("verification timed out after %s (verifier config \"timeout\")", timeout)
	}
	if out.Message != "" {
		msg += ": " + out.Message
	}
	out.Message = msg
	return out
}

// errTimeout is why the verification's context ends at the verifier's timeout; calls that
// report their context's cause (net/http does) name it.
var errTimeout = errors.New("verifier timeout")

// parseTimeout reads the config's timeout: DefaultTimeout if empty, else a Go duration above 0
// and at most maxTimeout.
func parseTimeout(s string) (time.Duration, error) {
	if s == "" {
		return DefaultTimeout, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > maxTimeout {
		return 0, fmt.Errorf("timeout %.40q: want a duration above 0 and at most %s, such as %s", s, maxTimeout, DefaultTimeout)
	}
	return d, nil
}

// checkReferenceDesc refuses a referrer descriptor the verifier cannot answer for. Success means
// that this referrer is the token a trusted signature names, so it must have a digest to compare,
// and be of the token artifact type the verifier is registered for: a verifier registered for
// more types (artifactTypes "*") must not vouch for, say, an SBOM.
func checkReferenceDesc(d ocispec.Descriptor) error {
	if d.Digest == "" {
		return errors.New("referenceDesc has no digest: the verifier can only vouch for a referrer it can compare with the token a signature names")
	}
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("referenceDesc digest %.100q is not a valid digest: %w", d.Digest, err)
	}
	if d.ArtifactType != referrer.ArtifactType {
		return fmt.Errorf("referenceDesc artifactType %.100q is not the MAA token artifact type %s this verifier is registered for", d.ArtifactType, referrer.ArtifactType)
	}
	return nil
}

// options builds the image verification options from the verifier config; cleanup removes the
// temporary trust store.
func options(c Config) (o imageverify.Options, cleanup func(), err error) {
	cleanup = func() {}
	o, root, err := buildOptions(c)
	if root != "" {
		cleanup = func() { os.RemoveAll(root) }
	}
	if err != nil {
		cleanup()
		return o, func() {}, err
	}
	return o, cleanup, nil
}

func buildOptions(c Config) (imageverify.Options, string, error) {
	if c.AttestationURL == "" || c.KeyID == "" {
		return imageverify.Options{}, "", errors.New("attestationURL and keyID are required")
	}
	if err := maa.CheckInstance(c.AttestationURL); err != nil {
		return imageverify.Options{}, "", fmt.Errorf("attestationURL: %w", err)
	}
	o := imageverify.Options{AttestationURL: c.AttestationURL, KeyID: c.KeyID, MaxTokenAge: 5 * time.Minute, Rules: rules.Baseline()}
	for _, p := range c.SigningCertSHA256 {
		h, err := imageverify.ParseCertSHA256(p)
		if err != nil {
			return o, "", fmt.Errorf("signingCertSHA256: %w", err)
		}
		o.SigningCertSHA256 = append(o.SigningCertSHA256, h)
	}
	if c.MaxTokenAge != "" {
		d, err := time.ParseDuration(c.MaxTokenAge)
		if err != nil || d <= 0 {
			return o, "", fmt.Errorf("maxTokenAge %q: want a duration such as 5m", c.MaxTokenAge)
		}
		o.MaxTokenAge = d
	}
	if c.Rules != "" {
		rs, err := rules.Load(c.Rules)
		if err != nil {
			return o, "", err
		}
		o.Rules = rs
	}
	if c.JWKSPath != "" {
		b, err := os.ReadFile(c.JWKSPath)
		if err != nil {
			return o, "", err
		}
		ks, err := maa.NewStaticKeySet(b)
		if err != nil {
			return o, "", err
		}
		o.TokenKeys = ks
	} else {
		o.TokenKeys = maa.NewRemoteKeySet(c.AttestationURL, maa.JWKSOptions{})
	}
	if c.TrustPolicyDoc == nil || len(c.VerificationCerts) == 0 {
		return o, "", errors.New("trustPolicyDoc and verificationCerts are required: the token is trusted only through a verified signature")
	}
	storeRoot, err := trustStoreFromCerts(c.VerificationCerts)
	if err != nil {
		return o, storeRoot, err
	}
	nv, err := verifier.New(c.TrustPolicyDoc, truststore.NewX509TrustStore(dir.NewSysFS(storeRoot)), nil)
	if err != nil {
		return o, storeRoot, err
	}
	o.Notation = nv
	return o, storeRoot, nil
}

// trustStoreFromCerts lays out the certificates of dirs as the trust store "ca:certs" in a
// private temporary directory, as Ratify's notation verifier does with verificationCerts.
func trustStoreFromCerts(dirs []string) (string, error) {
	root, err := os.MkdirTemp("", "ratify-maa-verifier-")
	if err != nil {
		return "", err
	}
	store := filepath.Join(root, dir.X509TrustStoreDir("ca", "certs"))
	if err := os.MkdirAll(store, 0o700); err != nil {
		return root, err
	}
	n := 0
	for _, d := range dirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			// A single file is accepted too.
			b, ferr := os.ReadFile(d)
			if ferr != nil {
				return root, fmt.Errorf("verificationCerts %s: %w", d, err)
			}
			if err := os.WriteFile(filepath.Join(store, fmt.Sprintf("cert-%d.pem", n)), b, 0o600); err != nil {
				return root, err
			}
			n++
			continue
		}
		for _, e := range entries {
			if e.IsDir() || !(strings.HasSuffix(e.Name(), ".pem") || strings.HasSuffix(e.Name(), ".crt") || strings.HasSuffix(e.Name(), ".cer")) {
				continue
			}
			b, err := os.ReadFile(filepath.Join(d, e.Name()))
			if err != nil {
				return root, err
			}
			if err := os.WriteFile(filepath.Join(store, fmt.Sprintf("cert-%d.pem", n)), b, 0o600); err != nil {
				return root, err
			}
			n++
		}
	}
	if n == 0 {
		return root, errors.New("verificationCerts holds no .pem, .crt or .cer certificate")
	}
	return root, nil
}
