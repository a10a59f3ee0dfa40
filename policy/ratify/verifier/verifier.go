package verifier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/attested-kv/attested-kv/internal/imageverify"
	"github.com/attested-kv/attested-kv/internal/referrer"
	"github.com/attested-kv/attested-kv/internal/registryclient"
)

// Name is the verifier's name in Ratify's config as policy/k8s/verifiers.yaml ships it: the
// binary's, by which Ratify finds it (that Verifier has no type; verifiers.yaml says why). It names
// the results given before the config is read, and those of a config without a name or type.
const Name = "ratify-maa-verifier"

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

// SupportedVersions are the verifier config versions (RATIFY_VERIFIER_VERSION) the verifier
// accepts. Ratify v1 sends the verifier's "version" (Verifier resource spec.version, or the
// config file's verifier section or entry), and "1.0.0" for a Verifier resource without one
// (config.GetDefaultPluginVersion); a config file without one sends "0.1.0" (types.SpecVersion),
// which Ratify's own plugins refuse too. A v1 plugin must accept only the versions it supports
// (reference/oras-ratify.md §3.3; Ratify's skel.PluginMain refuses the others with code 6).
var SupportedVersions = []string{"1.0.0"}

// CheckVersion returns the [Error] Ratify's plugin skeleton answers for the config version
// version, RATIFY_VERIFIER_VERSION: CodeMissingEnvironmentVariables if it is empty,
// CodeVersionNotSupported if it is not one of SupportedVersions, or nil. Command
// ratify-maa-verifier prints it on stdout and exits 1, as the skeleton does; [Run] refuses such an
// input with its message.
func CheckVersion(version string) *Error {
	if version == "" {
		return &Error{Code: CodeMissingEnvironmentVariables, Msg: "missing env variables [RATIFY_VERIFIER_VERSION]"}
	}
	if !slices.Contains(SupportedVersions, version) {
		return &Error{Code: CodeVersionNotSupported, Msg: fmt.Sprintf("plugin doesn't support version %.40q", version),
			Details: fmt.Sprintf("RATIFY_VERIFIER_VERSION %.40q, the verifier config's version, is not one this verifier supports (%s): set the Verifier's version to %s, or leave it unset", version, strings.Join(SupportedVersions, ", "), SupportedVersions[0])}
	}
	return nil
}

// Run is the whole verifier: it reads Ratify's environment through getenv and the [Input] JSON
// from stdin, verifies, and returns the [Result] to print. Every failure is a result with
// IsSuccess false and a message naming the cause, an unsupported RATIFY_VERIFIER_VERSION
// included ([CheckVersion], which the command checks first to answer as Ratify's skeleton does). The timeout is counted from the call, so
// reading the input and building the options spend it too. Run answers by the timeout even if a
// call inside ignores its context; such a call is abandoned, to end with the process, so Run is
// meant for the short-lived verifier process.
func Run(ctx context.Context, getenv func(string) string, stdin io.Reader) Result {
	start := time.Now()
	res := Result{Name: Name, Type: Name}
	fail := func(format string, args ...any) Result {
		res.Message = fmt.Sprintf(format, args...)
		return res
	}
	if c := getenv("RATIFY_VERIFIER_COMMAND"); c != "VERIFY" {
		return fail("unsupported command %q (want VERIFY)", c)
	}
	if e := CheckVersion(getenv("RATIFY_VERIFIER_VERSION")); e != nil {
		return fail("%v", e)
	}
	b, err := io.ReadAll(io.LimitReader(stdin, maxInput+1))
	switch {
	case err != nil:
		return fail("reading the verifier input: %v", err)
	case len(b) > maxInput:
		return fail("verifier input exceeds the stdin limit of %d bytes", maxInput)
	}
	in, timeout, err := decodeInput(b)
	if in.Config.Name != "" {
		res.Name = in.Config.Name
	}
	if in.Config.Type != "" {
		res.Type = in.Config.Type
	}
	if err != nil {
		return fail("%v", err)
	}
	// Checked once the config is read, so that this refusal too carries the configured name.
	subjectRef := getenv("RATIFY_VERIFIER_SUBJECT")
	if subjectRef == "" || !strings.Contains(subjectRef, "@") {
		return fail("RATIFY_VERIFIER_SUBJECT %q is not a digest reference: name the image by digest, or keep Ratify's tag-to-digest mutation on (chart value provider.enableMutation)", subjectRef)
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
		// The cause goes into the message too: Gatekeeper shows neither the extensions nor
		// Ratify's log, and an operator needs to know whether a token expired or MAA was down.
		return fail("attested signing not proven: check %q failed: %s", out.FailedCheck(), clip(out.FailedDetail(), maxMessageDetail))
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

// decodeInput decodes the verifier input b and checks the parts that need no I/O: the timeout and
// the referrer descriptor. The input is returned as far as it decoded, so that the answer can
// carry the verifier's configured name and type even when a check fails.
func decodeInput(b []byte) (Input, time.Duration, error) {
	var in Input
	if err := json.Unmarshal(b, &in); err != nil {
		var kerr *configKeyError
		if errors.As(err, &kerr) {
			return in, 0, fmt.Errorf("verifier config: %v", kerr.err)
		}
		return Input{}, 0, fmt.Errorf("verifier input is not JSON: %v", err)
	}
	if err := checkInputKeys(b); err != nil {
		return in, 0, fmt.Errorf("verifier input: %v", err)
	}
	timeout, err := parseTimeout(in.Config.Timeout)
	if err != nil {
		return in, 0, fmt.Errorf("verifier config: %v", err)
	}
	if err := checkReferenceDesc(in.ReferenceDesc); err != nil {
		return in, 0, err
	}
	return in, timeout, nil
}

// inputKeys are Input's JSON names.
var inputKeys = []string{"config", "storeConfig", "referenceDesc"}

// checkInputKeys refuses an input b whose top level names a member twice, or names one of
// Input's members in another case. encoding/json, which decodes the input, would merge two config
// objects into one (checkConfigKeys checks each alone) and take "CONFIG" for "config", so that
// what is decoded would not be one object as written. Ratify writes the input itself, from one
// map; other members are left to it.
func checkInputKeys(b []byte) error {
	return eachMember(b, "member", func(name string) error {
		for _, k := range inputKeys {
			if name != k && strings.EqualFold(name, k) {
				return fmt.Errorf("member %.60q is %q in another case", name, k)
			}
		}
		return nil
	})
}

// eachMember calls check with the name of each member of the JSON object b, as written, and
// refuses a name given twice (calling the members what): the walk checkInputKeys and
// checkConfigKeys share. A b that is not an object (null) has no members.
func eachMember(b []byte, what string, check func(name string) error) error {
	dec := jsontext.NewDecoder(bytes.NewReader(b))
	if dec.PeekKind() != '{' {
		return nil
	}
	if _, err := dec.ReadToken(); err != nil {
		return err
	}
	for dec.PeekKind() != '}' {
		tok, err := dec.ReadToken()
		if errors.Is(err, jsontext.ErrDuplicateName) {
			return fmt.Errorf("a %s appears twice: %v", what, err)
		}
		if err != nil {
			return err
		}
		if err := check(tok.String()); err != nil {
			return err
		}
		if err := dec.SkipValue(); err != nil {
			return err
		}
	}
	return nil
}

// ratifyKeys are the keys Ratify itself puts in a verifier's config besides the verifier's own
// parameters: the Verifier resource's name, type, artifactTypes and source (Ratify v1
// pkg/controllers/utils/verifier.go, SpecToVerifierConfig), and in a config file also version,
// address and nestedReferences (reference/oras-ratify.md §3.3).
var ratifyKeys = []string{"name", "type", "version", "address", "artifactTypes", "nestedReferences", "source"}

// configKeys are the keys a verifier config may hold: Config's JSON names and ratifyKeys.
var configKeys = func() []string {
	keys := slices.Clone(ratifyKeys)
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && !slices.Contains(keys, name) {
			keys = append(keys, name)
		}
	}
	return keys
}()

// configKeyError is Config.UnmarshalJSON's refusal of the config's keys (checkConfigKeys).
type configKeyError struct{ err error }

func (e *configKeyError) Error() string { return e.err.Error() }

// UnmarshalJSON decodes the config object b after checkConfigKeys, so that a config naming a key
// twice or a key the verifier does not know is refused (a *configKeyError) as it is decoded. The
// settings are decoded first, so that a refusal can still be answered under the configured name.
func (c *Config) UnmarshalJSON(b []byte) error {
	type plain Config
	if err := json.Unmarshal(b, (*plain)(c)); err != nil {
		return err
	}
	if err := checkConfigKeys(b); err != nil {
		return &configKeyError{err}
	}
	return nil
}

// checkConfigKeys refuses a config object b that names a key twice or a key outside configKeys.
// encoding/json, which decodes the config, matches names regardless of case and keeps the last of
// duplicates; the names are checked here exactly, so that what is decoded is what the operator
// wrote.
func checkConfigKeys(b []byte) error {
	// null: the required settings are reported missing later.
	return eachMember(b, "key", func(name string) error {
		if !slices.Contains(configKeys, name) {
			return fmt.Errorf("unknown key %.60q (keys are case-sensitive; this verifier knows %s)", name, strings.Join(configKeys, ", "))
		}
		return nil
	})
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

// maxMessageDetail bounds the failed check's detail quoted in a result's message.
const maxMessageDetail = 400

// clip shortens s to at most n bytes, at a rune boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
