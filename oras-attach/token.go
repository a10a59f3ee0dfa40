package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
	"github.com/attested-kv/attested-kv/internal/cliutil"
	"github.com/attested-kv/attested-kv/internal/imageverify"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/token"
	"github.com/attested-kv/attested-kv/internal/tpm"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// maxTokenFile bounds what token verify and show read; MAA tokens are a few KiB.
const maxTokenFile = 1 << 20

// newFlags returns a flag set that reports errors, with the command's usage, on stderr.
func newFlags(name, synopsis string, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s\n\nFlags:\n%s", synopsis, fs.FlagUsages())
	}
	fs.SortFlags = false
	return fs
}

// parse parses args; it returns (exit code, done) where done means the caller must return. Help
// asked for (-h, --help) goes to stdout with exit 0, so that `oras-attest attach --help | less`
// shows it; a usage error (an unknown flag, a flag without its value, a value that does not
// parse) goes to stderr, named, then the usage, with exit 2.
func parse(fs *pflag.FlagSet, args []string, stdout io.Writer) (int, bool) {
	usage := fs.Usage
	fs.Usage = func() {} // printed below, where it is known whether help was asked for
	err := fs.Parse(args)
	fs.Usage = usage
	switch {
	case errors.Is(err, pflag.ErrHelp):
		fs.SetOutput(stdout)
		usage()
		return 0, true
	case err != nil:
		// pflag (v1.1.0) returns the error of a ContinueOnError set without printing it.
		return usageError(fs, err), true
	}
	return 0, false
}

// usageError prints err, then the command's usage, on the flag set's output (stderr) and returns
// the exit code of a usage error, 2.
func usageError(fs *pflag.FlagSet, err error) int {
	fmt.Fprintf(fs.Output(), "%s: %v\n\n", fs.Name(), err)
	fs.Usage()
	return 2
}

func tokenFetch(ctx context.Context, args []string, io cmdIO) int {
	fs := newFlags("oras-attest token fetch", "oras-attest token fetch --nonce VALUE [flags]", io.stderr)
	url := fs.String("attestation-url", os.Getenv("ATTEST_URL"), "MAA instance URL (env ATTEST_URL)")
	tpmAddr := fs.String("tpm", cliutil.EnvOr("ATTEST_TPM", tpm.DefaultDevice), "TPM: device path, swtpm:HOST:PORT, mssim:HOST:PORT or unix:PATH (env ATTEST_TPM)")
	tcgLog := fs.String("tcg-log", cliutil.EnvOr("ATTEST_TCG_LOG", tpm.DefaultEventLogPath), "firmware TCG event log; \"\" sends none, as does a missing file at the default path only (env ATTEST_TCG_LOG)")
	osRelease := fs.String("os-release", os.Getenv("ATTEST_OS_RELEASE"), "os-release file describing the OS to MAA, read as Azure's client reads it (env ATTEST_OS_RELEASE; default /etc/os-release)")
	keyCache := fs.String("key-cache", "", "directory keeping the TPM context of the ephemeral key between attestations (default: the user's cache directory; \"off\": none)")
	nonce := fs.String("nonce", "", "value MAA echoes in the token's client payload (required)")
	out := fs.String("out", "", "write the token to FILE (mode 0600) instead of stdout")
	noVerify := fs.Bool("no-verify", false, "do not verify the token before writing it (not recommended)")
	maxAge := fs.Duration("max-age", defaultMaxAge, "maximum token age accepted by the verification")
	timeout := timeoutFlag{usage: "overall time limit, retries included"}
	timeout.add(fs)
	debug := fs.Bool("debug", false, "debug logging (may print evidence; never use in shared logs)")
	if code, done := parse(fs, args, io.stdout); done {
		return code
	}
	usageErr := func(err error) int {
		fmt.Fprintln(io.stderr, "oras-attest token fetch:", err)
		return 2
	}
	if fs.NArg() != 0 {
		return usageErr(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	if *url == "" || *nonce == "" {
		return usageErr(errors.New("--attestation-url (or ATTEST_URL) and --nonce are required"))
	}
	if err := timeout.check(); err != nil {
		return usageErr(err)
	}
	if err := checkPositive("--max-age", *maxAge, defaultMaxAge); err != nil {
		return usageErr(err)
	}
	log := cliutil.Logger(io.stderr, *debug)
	ctx, cancel := timeout.context(ctx)
	defer cancel()
	fail := func(err error) int {
		fmt.Fprintln(io.stderr, "oras-attest token fetch:", timeout.explain(ctx, err))
		return 1
	}

	copts := maa.ClientOptions{Logger: log}
	if *osRelease != "" {
		info, err := maa.ReadOSRelease(*osRelease)
		if err != nil {
			fmt.Fprintln(io.stderr, "oras-attest token fetch: --os-release:", err)
			return fileCode(err)
		}
		copts.OS = &info
	}
	client, err := maa.NewClient(*url, copts)
	if err != nil {
		return fail(err)
	}
	dev, err := tpm.Open(ctx, *tpmAddr, tpm.WithEventLogPath(*tcgLog), tpm.WithLogger(log),
		tpm.WithEphemeralKeyCache(tpm.ResolveKeyCacheDir(*keyCache)))
	if err != nil {
		return fail(fmt.Errorf("TPM %s: %w", *tpmAddr, err))
	}
	defer dev.Close()
	raw, err := client.AttestNonce(ctx, dev, *nonce)
	if err != nil {
		return fail(err)
	}
	if !*noVerify {
		v, err := maa.NewVerifier(maa.VerifierOptions{
			Instance: *url,
			Keys:     maa.NewRemoteKeySet(*url, maa.JWKSOptions{HTTPClient: &http.Client{Timeout: 30 * time.Second}}),
			MaxAge:   *maxAge,
		})
		if err != nil {
			return fail(err)
		}
		if _, err := v.Verify(ctx, raw, *nonce); err != nil {
			return fail(fmt.Errorf("the token MAA returned does not verify: %w", err))
		}
	}
	if *out == "" {
		fmt.Fprintln(io.stdout, raw)
		return 0
	}
	if err := atomicfile.Write(*out, []byte(raw+"\n"), 0o600); err != nil {
		return fail(err)
	}
	fmt.Fprintf(io.stderr, "token written to %s\n", *out)
	return 0
}

// checkRule names, in token verify's output, the check of one claim rule; the rules run after
// the verifier's checks (maa.Checks), on the claims of a token that passed them.
const checkRule = "rule"

// verifyResult is token verify's JSON output. Verified is true only if the token passed every
// check, claim rules included.
type verifyResult struct {
	Verified    bool       `json:"verified"`
	FailedCheck string     `json:"failedCheck,omitempty"`
	Error       string     `json:"error,omitempty"`
	Issuer      string     `json:"issuer,omitempty"`
	IssuedAt    *time.Time `json:"issuedAt,omitempty"`
	Expiry      *time.Time `json:"expiry,omitempty"`
	Nonce       string     `json:"nonce,omitempty"`
	SHA256      string     `json:"sha256,omitempty"`
	// RuleSet and RuleSetDigest say which claim rules were applied (rules.Set Name and Digest).
	RuleSet       string         `json:"ruleSet,omitempty"`
	RuleSetDigest string         `json:"ruleSetDigest,omitempty"`
	Checks        []checkOutcome `json:"checks"`
	// Notes say what a verified token does not prove (imageverify.UnpinnedVM).
	Notes []string `json:"notes,omitempty"`
}

// checkOutcome is one check of token verify. Rule and Reason are set for a claim rule's check
// (Check is checkRule): its name and, when it failed, why.
type checkOutcome struct {
	Check  string `json:"check"`
	Rule   string `json:"rule,omitempty"`
	Passed bool   `json:"passed"`
	Reason string `json:"reason,omitempty"`
}

// String is the check's text line: the check, the rule's name, and why a rule failed.
func (c checkOutcome) String() string {
	s := c.Check
	if c.Rule != "" {
		s += " " + c.Rule
	}
	if !c.Passed && c.Reason != "" {
		s += ": " + c.Reason
	}
	return s
}

func tokenVerify(ctx context.Context, args []string, io cmdIO) int {
	fs := newFlags("oras-attest token verify", "oras-attest token verify FILE|- [flags]", io.stderr)
	url := fs.String("attestation-url", os.Getenv("ATTEST_URL"), "the MAA instance the token must come from: pins iss and the key source (env ATTEST_URL)")
	nonce := fs.String("nonce", "", "the value the token's client payload must carry (checked when given)")
	maxAge := fs.Duration("max-age", defaultMaxAge, "maximum age of the token (from its iat)")
	rulesFile := fs.String("rules", "", "CEL claim rule file (default: the built-in baseline)")
	jwks := fs.String("jwks", "", "verify with the keys of this JWKS file instead of fetching {instance}/certs (offline use)")
	output := fs.StringP("output", "o", "text", "output format: text or json")
	timeout := timeoutFlag{def: 30 * time.Second, usage: "time limit for fetching the instance's keys"}
	timeout.add(fs)
	if code, done := parse(fs, args, io.stdout); done {
		return code
	}
	if err := cliutil.CheckFormat(*output); err != nil {
		return usageError(fs, err)
	}
	if fs.NArg() != 1 {
		return usageError(fs, errors.New("want one token file (FILE, or - for stdin)"))
	}
	if *url == "" {
		return usageError(fs, errors.New("--attestation-url or ATTEST_URL is required"))
	}
	fail := func(code int, err error) int {
		return report(io, "oras-attest token verify", *output == "json", code, err)
	}
	for _, err := range []error{timeout.check(), checkPositive("--max-age", *maxAge, defaultMaxAge)} {
		if err != nil {
			return fail(2, err)
		}
	}
	// A rule file that does not load is a configuration error, reported before any check.
	rs, err := rules.LoadOrBaseline(*rulesFile)
	if err != nil {
		return fail(fileCode(err), err)
	}
	raw, err := readToken(fs.Arg(0), io.stdin)
	if err != nil {
		return fail(1, err)
	}
	keys, err := maa.KeySetFor(*url, *jwks, maa.JWKSOptions{HTTPClient: &http.Client{Timeout: timeout.d}})
	if err != nil {
		return fail(fileCode(err), err)
	}
	v, err := maa.NewVerifier(maa.VerifierOptions{Instance: *url, Keys: keys, MaxAge: *maxAge})
	if err != nil {
		return fail(2, err)
	}
	vctx, cancel := timeout.context(ctx)
	defer cancel()
	tok, verr := v.Verify(vctx, raw, *nonce)

	res := verifyResult{Checks: outcomes(verr, *nonce != "")}
	refusal := verr
	if verr != nil {
		res.FailedCheck = maa.CheckName(verr)
		res.Error = verr.Error()
	} else {
		iat, exp := tok.IssuedAt(), tok.Expiry()
		res.Issuer, res.IssuedAt, res.Expiry, res.Nonce, res.SHA256 = tok.Issuer(), &iat, &exp, tok.Nonce(), tok.SHA256()
		// The claims are evidence only once the token verified; the rules run on them then.
		rr := rs.EvaluateContext(ctx, tok.Claims())
		res.RuleSet, res.RuleSetDigest = rr.Set, rr.Digest
		for _, r := range rr.Rules {
			res.Checks = append(res.Checks, checkOutcome{Check: checkRule, Rule: r.Name, Passed: r.Passed, Reason: r.Reason})
		}
		if refusal = rulesRefusal(rr); refusal != nil {
			res.FailedCheck, res.Error = checkRule, refusal.Error()
		}
	}
	res.Verified = refusal == nil
	if res.Verified && !rs.Reads(maa.ClaimVMID) {
		res.Notes = append(res.Notes, imageverify.UnpinnedVM)
	}
	if *output == "json" {
		cliutil.WriteJSON(io.stdout, res)
	} else {
		for _, c := range res.Checks {
			printCheck(io.stdout, c.Passed, c.String())
		}
		if refusal != nil {
			fmt.Fprintf(io.stdout, "token REFUSED: %v\n", refusal)
		} else {
			fmt.Fprintf(io.stdout, "token verified: issuer %s, issued %s ago, expires %s, sha256 %s, %d claim rules of %s passed\n",
				res.Issuer, time.Since(*res.IssuedAt).Round(time.Second), res.Expiry.Local().Format(time.RFC3339), res.SHA256,
				len(rs.Rules()), res.RuleSet)
			for _, n := range res.Notes {
				fmt.Fprintln(io.stdout, "note:", n)
			}
		}
	}
	if refusal != nil {
		return 1
	}
	return 0
}

// rulesRefusal returns nil if every claim rule passed, and otherwise an error naming each rule
// that failed (the reasons are on the checks' lines).
func rulesRefusal(r rules.Result) error {
	failed := r.Failed()
	if len(failed) <= 1 {
		return r.Err() // nil, the one *rules.RuleError, or an empty set's error
	}
	names := make([]string, len(failed))
	for i, f := range failed {
		names[i] = f.Name
	}
	return fmt.Errorf("%d claim rules of %s failed: %s", len(failed), r.Set, strings.Join(names, ", "))
}

// outcomes lists the verifier's checks in order, marking the failed one and leaving out the
// ones after it (not run) and the nonce check when no nonce was asked for.
func outcomes(verr error, withNonce bool) []checkOutcome {
	failed := ""
	if verr != nil {
		failed = maa.CheckName(verr)
	}
	var out []checkOutcome
	for _, c := range maa.Checks {
		if c == maa.CheckNonce && !withNonce {
			continue
		}
		if c == failed {
			out = append(out, checkOutcome{Check: c, Passed: false})
			return out
		}
		out = append(out, checkOutcome{Check: c, Passed: true})
	}
	if verr != nil { // a failure outside the named checks (e.g. the key source was unreachable)
		out = append(out, checkOutcome{Check: failed, Passed: false})
	}
	return out
}

func tokenShow(args []string, io cmdIO) int {
	fs := newFlags("oras-attest token show", "oras-attest token show FILE|- [-o json]", io.stderr)
	output := fs.StringP("output", "o", "text", "output format: text or json")
	if code, done := parse(fs, args, io.stdout); done {
		return code
	}
	if err := cliutil.CheckFormat(*output); err != nil {
		return usageError(fs, err)
	}
	if fs.NArg() != 1 {
		return usageError(fs, errors.New("want one token file (FILE, or - for stdin)"))
	}
	fail := func(err error) int { return report(io, "oras-attest token show", *output == "json", 1, err) }
	raw, err := readToken(fs.Arg(0), io.stdin)
	if err != nil {
		return fail(err)
	}
	header, claims, err := maa.ParseUnverified(raw)
	if err != nil {
		return fail(err)
	}
	if *output == "json" {
		cliutil.WriteJSON(io.stdout, map[string]any{"verified": false, "header": header, "claims": claims})
		return 0
	}
	fmt.Fprintln(io.stdout, "# NOT VERIFIED: this shows what the token says; use 'oras-attest token verify' to check it.")
	fmt.Fprintln(io.stdout, "header:")
	cliutil.WriteJSON(io.stdout, header)
	fmt.Fprintln(io.stdout, "claims:")
	cliutil.WriteJSON(io.stdout, claims)
	if n, err := maa.ClientPayloadNonce(claims); err == nil {
		fmt.Fprintf(io.stdout, "client payload nonce (decoded): %s\n", n)
	}
	return 0
}

// readToken reads a token from a file or, for "-", from stdin, and trims surrounding white space.
func readToken(name string, stdin io.Reader) (string, error) {
	var r io.Reader = stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return "", err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxTokenFile+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxTokenFile {
		return "", fmt.Errorf("%s: larger than %d bytes, not a token", name, maxTokenFile)
	}
	s := strings.TrimSpace(string(bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))))
	if s == "" {
		return "", fmt.Errorf("%s: empty", name)
	}
	return s, nil
}

// minPruneAge is the least --older-than token prune accepts: attach runs after notation sign, so
// a token stored more recently may belong to an image whose token is not attached yet, and a
// pruned token can no longer be attached.
const minPruneAge = time.Hour

// pruneExample is the --older-than an error suggests: 30 days.
const pruneExample = 30 * 24 * time.Hour

// pruneResult is token prune's JSON output: what the store's Prune did (token.PruneResult: the
// tokens removed or, with DryRun, that would be removed, and those kept, with why), with the
// choices it was run with. Error is set when pruning failed part way, after removing Removed.
type pruneResult struct {
	TokenDir  string    `json:"tokenDir"`
	DryRun    bool      `json:"dryRun"`
	OlderThan string    `json:"olderThan"`
	Before    time.Time `json:"before"`
	token.PruneResult
	// RequiredRepositories are the --require-repository values, and CheckRegistry is
	// --check-registry.
	RequiredRepositories []string `json:"requiredRepositories"`
	CheckRegistry        bool     `json:"checkRegistry"`
	Error                string   `json:"error,omitempty"`
}

// tokenPrune removes from the token store the tokens stored longer ago than --older-than, which
// the user must choose: attach can no longer publish a token once it is pruned. Each token
// removed is listed with the repositories attach published it to: only those have it.
func tokenPrune(ctx context.Context, args []string, io cmdIO) int {
	fs := newFlags("oras-attest token prune", "oras-attest token prune --older-than DURATION [flags]", io.stderr)
	olderThan := fs.Duration("older-than", 0, "remove the tokens stored longer ago than this that attach published (to the repositories listed, and only those), at least 1h (required)")
	var tokenDir tokenDirFlag
	tokenDir.add(fs)
	dryRun := fs.Bool("dry-run", false, "list the tokens that would be removed, and remove nothing")
	unattached := fs.Bool("include-unattached", false, "remove, too, old tokens attach never published from this store: the signatures naming them can then never be verified")
	required := fs.StringArray("require-repository", nil, "keep each token whose mark does not record this repository REGISTRY/REPO (repeatable): a promotion target that still needs it")
	check := fs.Bool("check-registry", false, "remove a published token only once each repository its mark records still lists it as a token referrer of its image (reads the registries; -u, --password-stdin and --plain-http as for attach)")
	var reg registryFlags
	reg.add(fs)
	timeout := timeoutFlag{def: 10 * time.Minute, usage: "time limit of the registry reads of --check-registry; a token not checked by then is kept"}
	timeout.add(fs)
	output := fs.StringP("output", "o", "text", "output format: text or json")
	if code, done := parse(fs, args, io.stdout); done {
		return code
	}
	if err := cliutil.CheckFormat(*output); err != nil {
		return usageError(fs, err)
	}
	if !*check {
		for _, f := range []string{"username", "password-stdin", "plain-http", "timeout"} {
			if fs.Changed(f) {
				return usageError(fs, fmt.Errorf("--%s is for --check-registry", f))
			}
		}
	}
	if err := timeout.check(); err != nil {
		return usageError(fs, err)
	}
	if fs.NArg() != 0 {
		return usageError(fs, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	repos := []string{}
	for _, r := range *required {
		if !token.ValidRepository(r) { // spelt as attach records it
			return usageError(fs, fmt.Errorf("--require-repository %q: want a repository REGISTRY/REPO, without a tag or digest", r))
		}
		repos = append(repos, r)
	}
	if !fs.Changed("older-than") {
		return usageError(fs, fmt.Errorf("--older-than is required: a pruned token can no longer be attached, so choose how old a token must be to go, such as %s", pruneExample))
	}
	if *olderThan < minPruneAge {
		return usageError(fs, fmt.Errorf("--older-than %s: want %s or more: a token stored more recently may belong to an image not attached yet (attach runs after notation sign), and a pruned token can no longer be attached", *olderThan, minPruneAge))
	}
	asJSON := *output == "json"
	fail := func(err error) int { return report(io, "oras-attest token prune", asJSON, 1, err) }
	store, _, err := tokenDir.store()
	if err != nil {
		return fail(err)
	}
	opts := token.PruneOptions{DryRun: *dryRun, Unattached: *unattached, Repositories: repos}
	if *check {
		ro, err := reg.options(io)
		if err != nil {
			return usageError(fs, err)
		}
		var cancel context.CancelFunc
		ctx, cancel = timeout.context(ctx)
		defer cancel()
		opts.Confirm = newRegistryCheck(ctx, ro).confirm
	}
	now := time.Now()
	res := pruneResult{TokenDir: store.Dir(), DryRun: *dryRun, OlderThan: olderThan.String(), Before: now.Add(-*olderThan), RequiredRepositories: repos, CheckRegistry: *check}
	if _, serr := os.Stat(store.Dir()); os.IsNotExist(serr) {
		// The default store of a machine that never signed holds nothing to prune; a store named
		// that does not exist is a mistyped --token-dir (in a cron job, it would prune nothing
		// every night, unseen).
		if tokenDir.dir != "" {
			return fail(fmt.Errorf("token store %s (--token-dir or ATTEST_TOKEN_DIR) does not exist: is it the plugin's token_dir? "+
				"(the plugin makes it at its first signature: before that there is nothing to prune; create it, mode 0700, to prune from the start)", store.Dir()))
		}
		fmt.Fprintf(io.stderr, "oras-attest token prune: %s, the default token store, does not exist: nothing to prune (the plugin's token_dir is elsewhere? give it with --token-dir)\n", store.Dir())
	}
	pr, err := store.Prune(res.Before, opts)
	if err != nil && pr.Empty() {
		return fail(err) // nothing read to report: {"error": ...}
	}
	res.PruneResult = pr
	for _, s := range res.Skipped {
		fmt.Fprintf(io.stderr, "oras-attest token prune: skipped %s: %s\n", s.Path, s.Reason)
	}
	if asJSON {
		if err != nil {
			res.Error = err.Error()
		}
		cliutil.WriteJSON(io.stdout, res)
	} else {
		printPruned(io.stdout, res, now)
	}
	if err != nil {
		return report(io, "oras-attest token prune", false, 1, err)
	}
	return 0
}

// printPruned prints token prune's text output: a line per token, then a summary.
func printPruned(w io.Writer, res pruneResult, now time.Time) {
	verb := "removed"
	if res.DryRun {
		verb = "would remove"
	}
	subjects := map[string]bool{}
	for _, p := range res.Removed {
		subjects[p.Subject] = true
		fmt.Fprintf(w, "%s %s token %s, stored %s ago, %s\n", verb, p.Subject, p.SHA256[:12], now.Sub(p.Modified).Round(time.Minute), publishedTo(p))
	}
	for _, u := range res.Unconfirmed {
		fmt.Fprintf(w, "kept %s token %s, stored %s ago, %s: %s\n", u.Subject, u.SHA256[:12], now.Sub(u.Modified).Round(time.Minute), publishedTo(u.Pruned), u.Reason)
	}
	cutoff := fmt.Sprintf("older than %s (stored before %s)", res.OlderThan, res.Before.Local().Format(time.RFC3339))
	kept := plural(res.Kept, "newer token") + " kept"
	if res.Unattached > 0 {
		kept += "; " + plural(res.Unattached, "older token") + " attach never published kept (attach the images first, or --include-unattached removes them, and the signatures naming them can then never be verified)"
	}
	if res.NotEverywhere > 0 {
		kept += "; " + plural(res.NotEverywhere, "older token") + " not attached to " + strings.Join(res.RequiredRepositories, " and ") + " kept (attach them there first)"
	}
	if len(res.Unconfirmed) > 0 {
		kept += "; " + plural(len(res.Unconfirmed), "older token") + " kept that a registry does not list, or could not be asked (--check-registry; see above)"
	}
	if res.Temporary > 0 {
		// What a store interrupted by a crash left (never a token).
		kept += "; " + plural(res.Temporary, "leftover") + " of an interrupted store " + map[bool]string{true: "would be removed", false: "removed"}[res.DryRun]
	}
	switch {
	case len(res.Removed) == 0 && res.Unattached+res.NotEverywhere+len(res.Unconfirmed) > 0:
		// Older tokens exist, all kept: "no token is older" would contradict the reasons below.
		fmt.Fprintf(w, "no token in %s %s can be removed; %s\n", res.TokenDir, cutoff, kept)
	case len(res.Removed) == 0:
		fmt.Fprintf(w, "no token in %s is %s; %s\n", res.TokenDir, cutoff, kept)
	case res.DryRun:
		fmt.Fprintf(w, "would remove %s of %s from %s, %s; %s; nothing removed (--dry-run)\n", plural(len(res.Removed), "token"), plural(len(subjects), "image"), res.TokenDir, cutoff, kept)
	default:
		fmt.Fprintf(w, "removed %s of %s from %s, %s; %s\n", plural(len(res.Removed), "token"), plural(len(subjects), "image"), res.TokenDir, cutoff, kept)
	}
}

// publishedTo says where attach published the token p, as its mark records it.
func publishedTo(p token.Pruned) string {
	switch {
	case !p.Attached:
		return "never attached"
	case len(p.Repositories) == 0:
		return "attached (repository not recorded)"
	}
	return "attached to " + strings.Join(p.Repositories, ", ")
}

// plural is n and noun, in the plural unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
