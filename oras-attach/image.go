package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/pflag"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/cliutil"
	"github.com/attested-kv/attested-kv/internal/imageverify"
	"github.com/attested-kv/attested-kv/internal/keyvault"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/notationcfg"
	"github.com/attested-kv/attested-kv/internal/referrer"
	"github.com/attested-kv/attested-kv/internal/registryclient"
	"github.com/attested-kv/attested-kv/internal/token"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// registryFlags are the registry access flags shared by attach and verify.
type registryFlags struct {
	username      string
	passwordStdin bool
	plainHTTP     bool
}

func (r *registryFlags) add(fs *pflag.FlagSet) {
	fs.StringVarP(&r.username, "username", "u", "", "registry user name (default: docker credentials; Entra ID exchange for *.azurecr.io)")
	fs.BoolVar(&r.passwordStdin, "password-stdin", false, "read the registry password from stdin")
	fs.BoolVar(&r.plainHTTP, "plain-http", false, "use http (default only for localhost and loopback registries; refused for *.azurecr.io)")
}

func (r *registryFlags) options(cio cmdIO) (registryclient.Options, error) {
	o := registryclient.Options{Username: r.username, PlainHTTP: r.plainHTTP}
	if r.passwordStdin {
		if r.username == "" {
			return o, errors.New("--password-stdin needs --username")
		}
		b, err := io.ReadAll(io.LimitReader(cio.stdin, maxPassword+1))
		switch {
		case err != nil:
			return o, fmt.Errorf("reading the password from stdin: %w", err)
		case len(b) > maxPassword:
			return o, fmt.Errorf("the password on stdin is longer than %d bytes", maxPassword)
		}
		o.Password = strings.TrimRight(string(b), "\r\n")
		if o.Password == "" {
			return o, errors.New("--password-stdin: stdin holds no password")
		}
	}
	return o, nil
}

// tokenDirFlag is --token-dir, the token store the plugin writes (its token_dir), which attach
// reads and token prune prunes: ATTEST_TOKEN_DIR when the flag is not given, else
// token.DefaultDir.
type tokenDirFlag struct {
	dir string
}

func (t *tokenDirFlag) add(fs *pflag.FlagSet) {
	fs.StringVar(&t.dir, "token-dir", os.Getenv("ATTEST_TOKEN_DIR"), "token store, the plugin's token_dir (env ATTEST_TOKEN_DIR; default $XDG_STATE_HOME/attested-kv/tokens)")
}

// store returns the token store, and which one it is for an error to name: the one given, or
// the default.
func (t *tokenDirFlag) store() (*token.Store, string, error) {
	if t.dir != "" {
		return token.NewStore(t.dir), "the token store of --token-dir or ATTEST_TOKEN_DIR", nil
	}
	dir, err := token.DefaultDir()
	if err != nil {
		return nil, "", err
	}
	return token.NewStore(dir), "the default token store, ATTEST_TOKEN_DIR being unset", nil
}

// maxPassword bounds the registry password read from stdin (an ACR token is a few KiB).
const maxPassword = 64 << 10

// defaultTimeout is the default of --timeout.
const defaultTimeout = 2 * time.Minute

// defaultMaxAge is the default of --max-age.
const defaultMaxAge = 5 * time.Minute

// timeoutFlag is --timeout, the time limit of a command: a registry that accepts the connection
// and never answers must not hang attach or verify, nor a stalled TPM or MAA token fetch.
type timeoutFlag struct {
	d time.Duration
	// def and usage are the flag's default and help text; zero means defaultTimeout and
	// "overall time limit".
	def   time.Duration
	usage string
	// reached is the cause of the end of the context made by context.
	reached error
}

func (t *timeoutFlag) add(fs *pflag.FlagSet) {
	if t.def == 0 {
		t.def = defaultTimeout
	}
	if t.usage == "" {
		t.usage = "overall time limit"
	}
	fs.DurationVar(&t.d, "timeout", t.def, t.usage)
}

// check refuses a limit that would end the command before it starts.
func (t *timeoutFlag) check() error {
	return checkPositive("--timeout", t.d, t.def)
}

// checkPositive refuses a duration flag's value d that is not above 0, naming the flag and its
// default as an example: a limit of 0 ends the command before it starts, and a --max-age of 0
// accepts no token, which the libraries would report with their own field names.
func checkPositive(flag string, d, def time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%s %s: want a duration above 0, such as %s", flag, d, def)
	}
	return nil
}

// context returns ctx limited to the flag's duration; at the limit its cause names the flag.
func (t *timeoutFlag) context(ctx context.Context) (context.Context, context.CancelFunc) {
	t.reached = fmt.Errorf("time limit reached (--timeout %s)", t.d)
	return context.WithTimeoutCause(ctx, t.d, t.reached)
}

// explain adds to err that the time limit was reached, when it ended ctx (from context) and err
// does not say so already: a client that reports ctx.Err() only says "context deadline exceeded".
func (t *timeoutFlag) explain(ctx context.Context, err error) error {
	if err == nil || t.reached == nil || !errors.Is(context.Cause(ctx), t.reached) || errors.Is(err, t.reached) {
		return err
	}
	return fmt.Errorf("%w: %w", err, t.reached)
}

// image is a resolved image reference.
type image struct {
	repo    *remote.Repository
	subject ocispec.Descriptor
	// name is REGISTRY/REPO@DIGEST, as trust policies scope it.
	name string
	// repository is REGISTRY/REPO.
	repository string
}

// open checks that ref names a digest, opens its repository with the registry flags and resolves
// it. The int is the exit code for an error: 2 for a usage error, 1 for a registry failure.
func (r *registryFlags) open(ctx context.Context, ref string, io cmdIO) (*image, int, error) {
	if err := splitDigestRef(ref); err != nil {
		return nil, 2, err
	}
	ro, err := r.options(io)
	if err != nil {
		return nil, 2, err
	}
	repo, parsed, err := openRepository(ref, ro)
	if err != nil {
		return nil, 2, err
	}
	subject, err := repo.Resolve(ctx, parsed.Reference)
	switch {
	case errors.Is(err, errdef.ErrNotFound):
		// oras-go's error is "REFERENCE: not found": the reference is named once, here.
		return nil, 1, fmt.Errorf("resolving %s: %w", ref, errdef.ErrNotFound)
	case err != nil:
		return nil, 1, fmt.Errorf("resolving %s: %w", ref, err)
	}
	repository := parsed.Registry + "/" + parsed.Repository
	return &image{repo: repo, subject: subject, name: repository + "@" + subject.Digest.String(), repository: repository}, 0, nil
}

// openRepository opens the repository of ref with the registry options ro, and for an Azure
// container registry, when ro names no user, the Entra ID credential (azureCredential).
func openRepository(ref string, ro registryclient.Options) (*remote.Repository, registry.Reference, error) {
	if ro.Username == "" {
		cred, err := azureCredential(ref)
		if err != nil {
			return nil, registry.Reference{}, err
		}
		ro.AzureCredential = cred
	}
	return registryclient.Open(ref, ro)
}

// azureCredential returns the Entra ID credential for ref's registry when it is an Azure
// container registry (*.azurecr.io), nil otherwise. It is DefaultAzureCredential (environment,
// workload identity, managed identity, Azure CLI), which registryclient exchanges for an ACR
// refresh token when the registry has no Docker credential. Making it calls no service.
func azureCredential(ref string) (azcore.TokenCredential, error) {
	host, _, _ := strings.Cut(ref, "/")
	if !registryclient.IsAzureRegistry(host) {
		return nil, nil
	}
	cred, err := keyvault.NewCredential(keyvault.CredentialOptions{})
	if err != nil {
		return nil, fmt.Errorf("Entra ID credential for %s: %w", host, err)
	}
	return cred, nil
}

// printCheck prints one check line, "ok  " or "FAIL" first.
func printCheck(w io.Writer, passed bool, text string) {
	mark := "ok  "
	if !passed {
		mark = "FAIL"
	}
	fmt.Fprintf(w, "%s %s\n", mark, text)
}

// splitDigestRef requires IMAGE@sha256:...: a tag could move between signing and deployment.
func splitDigestRef(ref string) error {
	i := strings.LastIndex(ref, "@")
	if i < 0 {
		return fmt.Errorf("%q: give the image by digest (REGISTRY/REPO@sha256:...), not by tag", ref)
	}
	if _, err := digest.Parse(ref[i+1:]); err != nil {
		// An empty one is what IMAGE=REPO@$(oras resolve REPO:TAG) gives when the resolve failed.
		return fmt.Errorf("%q: the digest after @ is not one (%v): want sha256: and 64 hex digits, as oras resolve prints", ref, err)
	}
	return nil
}

func attach(ctx context.Context, args []string, io cmdIO) int {
	fs := newFlags("oras-attest attach", "oras-attest attach REGISTRY/REPO@DIGEST [--token FILE] [flags]", io.stderr)
	tokenFile := fs.String("token", "", "attach this token file (- for stdin) instead of the token store's tokens for the digest; a signature of the image must name it")
	var tokenDir tokenDirFlag
	tokenDir.add(fs)
	output := fs.StringP("output", "o", "text", "output format: text or json")
	var timeout timeoutFlag
	timeout.add(fs)
	var reg registryFlags
	reg.add(fs)
	if code, done := parse(fs, args, io.stdout); done {
		return code
	}
	// listed is set once the JSON output is the list of referrers attached.
	listed := false
	fail := func(code int, err error) int {
		return report(io, "oras-attest attach", *output == "json" && !listed, code, timeout.explain(ctx, err))
	}
	if fs.NArg() != 1 {
		return fail(2, errors.New("want exactly one image reference REGISTRY/REPO@DIGEST"))
	}
	if err := cliutil.CheckFormat(*output); err != nil {
		return fail(2, err)
	}
	if err := timeout.check(); err != nil {
		return fail(2, err)
	}
	if *tokenFile == "-" && reg.passwordStdin {
		return fail(2, errors.New("--token - and --password-stdin both read stdin: give the token as a file"))
	}
	// A token file is read, and must be a token, before the registry is asked: a file that is
	// not one is reported as such, not as a token no signature names.
	var raws []string
	if *tokenFile != "" {
		raw, err := readToken(*tokenFile, io.stdin)
		if err != nil {
			return fail(1, fmt.Errorf("--token: %w", err))
		}
		if _, _, err := maa.ParseUnverified(raw); err != nil {
			return fail(1, fmt.Errorf("--token %s is not an attestation token: %w", *tokenFile, err))
		}
		raws = []string{raw}
	}
	ctx, cancel := timeout.context(ctx)
	defer cancel()
	img, code, err := reg.open(ctx, fs.Arg(0), io)
	if err != nil {
		return fail(code, err)
	}
	repo, subject := img.repo, img.subject
	// On a registry without the Referrers API every attach rewrites the subject's referrers
	// index and deletes the one it replaced; two attaches at once can then fail on deleting an
	// index the other already deleted. The replaced index is left for the registry's garbage
	// collection instead (it is untagged).
	repo.SkipReferrersGC = true

	// store is the token store the tokens come from, where each one published is marked so
	// (nil with --token).
	var store *token.Store
	if *tokenFile == "" {
		var which string
		store, which, err = tokenDir.store()
		if err != nil {
			return fail(1, err)
		}
		entries, err := store.List(subject.Digest.String())
		if errors.Is(err, token.ErrNotFound) {
			// The error names the directory looked in; the plugin may keep its tokens elsewhere.
			return fail(1, fmt.Errorf("%w (%s): was the image signed with the attested-kv plugin on this machine? If the plugin's token_dir is another directory, give it with --token-dir or ATTEST_TOKEN_DIR; "+
				"if its tokens were attached and then pruned (token prune), they are on the registry already: oras discover shows them, oras-attest verify checks them", err, which))
		}
		if err != nil {
			return fail(1, err)
		}
		for _, e := range entries {
			raws = append(raws, e.Raw)
		}
	}
	// Only a token that a signature of this image names is published: not one that no signature
	// of this image names (one of another image, key or instance stored under this digest, or one
	// whose signature was never pushed: the plugin stores the token before notation pushes the
	// signature), nor one named by a signature of another image attached to this one (the
	// signature's payload must target this digest). Signatures that are not usable are ignored,
	// so that whoever can push cannot block attach with them; a stored token left unnamed while
	// some signature could not be read fails attach after the others are attached.
	names, err := imageverify.NamedTokens(ctx, imageverify.NewRepository(repo), subject)
	if err != nil {
		return fail(1, err)
	}
	// JSON output is always the list of referrers attached, also when a later token fails.
	out := []ocispec.Descriptor{}
	done := func(code int, err error) int {
		if *output == "json" {
			cliutil.WriteJSON(io.stdout, out)
			listed = true
		}
		if err != nil {
			return fail(code, err)
		}
		return code
	}
	// Tokens already attached are not pushed again: each push rewrites the referrers list of a
	// registry without the Referrers API, and waits for it to settle.
	attached := referrer.NewIndex(ctx, repo, subject)
	if err := attached.Err(); err != nil {
		return done(1, err)
	}
	skipped := 0
	// unread is the error of the first stored token not attached because signatures that may
	// name it could not be read; unreadN counts those tokens.
	var unread error
	unreadN := 0
	for _, raw := range raws {
		sum := sha256.Sum256([]byte(raw))
		sha := hex.EncodeToString(sum[:])
		ok, err := names.Names(sha)
		if err != nil {
			if *tokenFile != "" {
				return done(1, fmt.Errorf("%w: run attach again once the registry answers", err))
			}
			if unreadN++; unread == nil {
				unread = err
			}
			continue
		}
		if !ok {
			why := ignoredNote(names)
			if *tokenFile != "" {
				return done(1, fmt.Errorf("no signature of %s names token %s: sign the image first (notation sign with the attested-kv plugin), or give the token its signature names%s", img.name, sha, why))
			}
			skipped++
			fmt.Fprintf(io.stderr, "oras-attest attach: skipped stored token %s: no signature of the image names it (a signature made with another key or instance, or one that was never pushed)%s\n", sha, why)
			continue
		}
		// A token published is marked so in the store, with this repository, so that token prune
		// may remove it once old and say where it was published; a mark that cannot be written
		// only makes prune keep the token.
		markAttached := func() {
			if store == nil {
				return
			}
			if err := store.MarkAttached(subject.Digest.String(), sha, img.repository); err != nil {
				fmt.Fprintf(io.stderr, "oras-attest attach: token %s is attached, but could not be marked so in the token store (token prune will keep it): %v\n", sha, err)
			}
		}
		if f := attached.FindAnnotated(ctx, sha); f != nil {
			markAttached()
			out = append(out, f.Descriptor)
			if *output != "json" {
				fmt.Fprintf(io.stdout, "Token already attached to %s\nDigest: %s\n", fs.Arg(0), f.Descriptor.Digest)
			}
			continue
		}
		_, claims, err := maa.ParseUnverified(raw)
		if err != nil {
			return done(1, fmt.Errorf("token %s: %w", sha, err))
		}
		iss, _ := claims["iss"].(string)
		nonce, err := maa.ClientPayloadNonce(claims)
		if err != nil {
			return done(1, fmt.Errorf("token %s: %w", sha, err))
		}
		// Read as the verifiers read it.
		iat, ok, err := maa.NumericDate(claims, "iat")
		if err == nil && !ok {
			err = errors.New("claim iat is missing")
		}
		if err != nil {
			return done(1, fmt.Errorf("token %s: %w", sha, err))
		}
		desc, err := referrer.Attach(ctx, repo, subject, referrer.Token{Raw: raw, Issuer: iss, Binding: nonce, IssuedAt: iat})
		if err != nil {
			return done(1, err)
		}
		markAttached()
		out = append(out, desc)
		if *output != "json" {
			fmt.Fprintf(io.stdout, "Attached token to %s\nDigest: %s\n", fs.Arg(0), desc.Digest)
		}
	}
	if unread != nil {
		if unreadN > 1 {
			unread = fmt.Errorf("%d stored tokens are not attached; the first: %w", unreadN, unread)
		}
		return done(1, fmt.Errorf("%w: run attach again once the registry answers (the tokens attached are kept)", unread))
	}
	if len(out) == 0 {
		return done(1, fmt.Errorf("nothing attached: none of the %d stored tokens of %s is named by a signature of the image; sign it first (notation sign with the attested-kv plugin)", skipped, img.name))
	}
	return done(0, nil)
}

// ignoredNote says, for a message about a token no signature names, that signatures were listed
// that are not usable, and that more are attached than were read: "" if neither.
func ignoredNote(names *imageverify.TokenNames) string {
	note := ""
	if ig := names.Ignored(); len(ig) > 0 {
		note = fmt.Sprintf("; %d of the signatures listed are not usable signatures of the image and were ignored (the first: %v)", len(ig), ig[0])
	}
	if names.Truncated() {
		note += "; more signatures are attached than were read"
	}
	return note
}

func verifyImage(ctx context.Context, args []string, io cmdIO) int {
	fs := newFlags("oras-attest verify", "oras-attest verify REGISTRY/REPO@DIGEST --attestation-url URL --key-id KEY_URL [flags]", io.stderr)
	url := fs.String("attestation-url", os.Getenv("ATTEST_URL"), "the MAA instance tokens must come from (env ATTEST_URL)")
	keyID := fs.String("key-id", os.Getenv("ATTEST_KEY_ID"), "the Key Vault key id the image must be signed with (env ATTEST_KEY_ID)")
	maxAge := fs.Duration("max-age", defaultMaxAge, "largest age of the token at the signing time (at most 1h)")
	rulesFile := fs.String("rules", "", "CEL claim rule file (default: the built-in baseline)")
	jwks := fs.String("jwks", "", "token signing keys from this JWKS file instead of {instance}/certs (offline use)")
	pins := fs.StringSlice("signing-cert-sha256", nil, "SHA-256 fingerprint(s) of the signing certificate (certificateThumbprintSha256 of attest-bootstrap apply): only a signature by that certificate counts; needed when the trust store holds a CA or other keys")
	cfgDir := notationcfg.DefaultConfigDir()
	trustPolicy := fs.String("trust-policy", filepath.Join(cfgDir, "trustpolicy.json"), "Notation trust policy")
	trustStore := fs.String("trust-store", cfgDir, "directory holding Notation's truststore/ (NOTATION_CONFIG)")
	output := fs.StringP("output", "o", "text", "output format: text or json")
	var timeout timeoutFlag
	timeout.add(fs)
	var reg registryFlags
	reg.add(fs)
	if code, done := parse(fs, args, io.stdout); done {
		return code
	}
	fail := func(code int, err error) int {
		return report(io, "oras-attest verify", *output == "json", code, timeout.explain(ctx, err))
	}
	if fs.NArg() != 1 {
		return fail(2, errors.New("want exactly one image reference REGISTRY/REPO@DIGEST"))
	}
	if err := cliutil.CheckFormat(*output); err != nil {
		return fail(2, err)
	}
	if err := timeout.check(); err != nil {
		return fail(2, err)
	}
	if err := checkPositive("--max-age", *maxAge, defaultMaxAge); err != nil {
		return fail(2, err)
	}
	if *maxAge > maa.MaxSigningAge {
		return fail(2, fmt.Errorf("--max-age %s: at most %s, the oldest token the plugin signs with (its max_token_age has the same bound)", *maxAge, maa.MaxSigningAge))
	}
	if *url == "" || *keyID == "" {
		return fail(2, errors.New("--attestation-url and --key-id are required (they pin where the token and the signature must come from)"))
	}
	if err := splitDigestRef(fs.Arg(0)); err != nil {
		return fail(2, err)
	}
	if err := maa.CheckInstance(*url); err != nil {
		return fail(2, err)
	}
	if err := binding.CheckKeyID(*keyID); err != nil {
		return fail(2, fmt.Errorf("--key-id: %w", err))
	}
	certPins, err := imageverify.ParseCertPins(*pins)
	if err != nil {
		return fail(2, err)
	}
	ctx, cancel := timeout.context(ctx)
	defer cancel()
	// The rules compile while the registry is read; their errors are reported first.
	var rs *rules.Set
	var rulesErr error
	rulesDone := make(chan struct{})
	go func() {
		defer close(rulesDone)
		rs, rulesErr = rules.LoadOrBaseline(*rulesFile)
	}()
	keys, err := maa.KeySetFor(*url, *jwks, maa.JWKSOptions{HTTPClient: &http.Client{Timeout: 30 * time.Second}})
	if err != nil {
		<-rulesDone
		return fail(fileCode(err), err)
	}
	nv, err := notationcfg.NewVerifier(*trustPolicy, *trustStore)
	if err != nil {
		<-rulesDone
		return fail(fileCode(err), err)
	}
	img, code, err := reg.open(ctx, fs.Arg(0), io)
	<-rulesDone
	if rulesErr != nil {
		return fail(fileCode(rulesErr), rulesErr)
	}
	if err != nil {
		return fail(code, err)
	}
	res, err := imageverify.Verify(ctx, imageverify.NewRepository(img.repo), img.name, img.subject, imageverify.Options{
		Notation: nv, AttestationURL: *url, TokenKeys: keys, KeyID: *keyID, MaxTokenAge: *maxAge, Rules: rs,
		SigningCertSHA256: certPins,
	})
	if err != nil {
		return fail(1, err)
	}
	if *output == "json" {
		cliutil.WriteJSON(io.stdout, res)
	} else {
		for _, c := range res.Checks {
			printCheck(io.stdout, c.Passed, fmt.Sprintf("%-16s %s", c.Name, c.Detail))
		}
		if res.Passed {
			fmt.Fprintf(io.stdout, "image %s VERIFIED: signed from an attested machine\n", fs.Arg(0))
		} else {
			fmt.Fprintf(io.stdout, "image %s REFUSED: check %q failed\n", fs.Arg(0), res.FailedCheck())
		}
	}
	if !res.Passed {
		return 1
	}
	return 0
}
