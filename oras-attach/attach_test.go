package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/notaryproject/notation-core-go/signature"
	nregistry "github.com/notaryproject/notation-go/registry"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/imageverify"
	"github.com/attested-kv/attested-kv/internal/referrer"
	"github.com/attested-kv/attested-kv/internal/token"
)

// TestAttach: attach publishes only the tokens a signature of the image names (from the token
// store or a file), skips or refuses the others with the reason, and its JSON output is always
// the list of referrers attached.
func TestAttach(t *testing.T) {
	chain := attesttest.New(t)
	repo, name := attesttest.Registry(t)
	signer := attesttest.Signer(t, "attested signer")
	const keyID = "https://kv.vault.azure.net/keys/signer/0123456789abcdef0123456789abcdef"
	tokenFor := func(img ocispec.Descriptor) string {
		b, err := binding.Compute(img.Digest.String(), keyID)
		if err != nil {
			t.Fatal(err)
		}
		return chain.Token(t, b)
	}
	signed := attesttest.PushImage(t, repo, "signed")
	signedTok := tokenFor(signed)
	attesttest.SignImage(t, nregistry.NewRepository(repo), signer, signed, signedTok, chain.URL, time.Now())
	other := attesttest.PushImage(t, repo, "other")
	otherTok := tokenFor(other)
	unsigned := attesttest.PushImage(t, repo, "unsigned")
	unsignedTok := tokenFor(unsigned)

	dir := t.TempDir()
	store := token.NewStore(dir + "/tokens")
	for _, put := range []struct {
		img ocispec.Descriptor
		raw string
	}{{signed, signedTok}, {signed, otherTok}, {unsigned, unsignedTok}} {
		if _, err := store.Put(put.img.Digest.String(), put.raw); err != nil {
			t.Fatal(err)
		}
	}
	file := func(raw string) string {
		p := t.TempDir() + "/token.jwt"
		if err := os.WriteFile(p, []byte(raw), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	garbage := file("garbage\n")
	sha := func(raw string) string { s := sha256.Sum256([]byte(raw)); return hex.EncodeToString(s[:]) }
	ref := func(img ocispec.Descriptor) string { return name + "@" + img.Digest.String() }

	tests := []struct {
		name     string
		args     []string
		code     int
		attached int    // referrers in the JSON output
		stderr   string // substring of stderr
	}{
		{"store: the named token attached, another image's skipped", []string{ref(signed), "--token-dir", store.Dir()}, 0, 1, "skipped stored token " + sha(otherTok)},
		{"file: the named token", []string{ref(signed), "--token", file(signedTok)}, 0, 1, ""},
		{"file: another image's token refused", []string{ref(signed), "--token", file(otherTok)}, 1, 0, "no signature of " + ref(signed) + " names token " + sha(otherTok)},
		{"file: not a token", []string{ref(signed), "--token", garbage}, 1, -1, "--token " + garbage + " is not an attestation token: MAA token: check \"format\" failed"},
		{"file: a hand-made JWT refused", []string{ref(signed), "--token", file("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln")}, 1, 0, "no signature of"},
		{"store: an unsigned image's token is not attached", []string{ref(unsigned), "--token-dir", store.Dir()}, 1, 0, "nothing attached: none of the 1 stored tokens"},
		{"stdin for both the token and the password", []string{ref(signed), "--token", "-", "-u", "user", "--password-stdin"}, 2, -1, "both read stdin"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var o, e strings.Builder
			code := run(context.Background(), append([]string{"attach", "-o", "json"}, tc.args...), strings.NewReader(""), &o, &e)
			if code != tc.code || !strings.Contains(e.String(), tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, e.String(), tc.code, tc.stderr)
			}
			if tc.attached < 0 {
				return
			}
			var out []ocispec.Descriptor
			if err := json.Unmarshal([]byte(o.String()), &out); err != nil || len(out) != tc.attached {
				t.Fatalf("JSON output %q (%v): want a list of %d referrers", o.String(), err, tc.attached)
			}
		})
	}
	// A rerun pushes nothing again and says so.
	var o, e strings.Builder
	if code := run(context.Background(), []string{"attach", ref(signed), "--token-dir", store.Dir()}, strings.NewReader(""), &o, &e); code != 0 || !strings.Contains(o.String(), "Token already attached to "+ref(signed)) {
		t.Fatalf("rerun: exit %d, stdout %q, stderr %q", code, o.String(), e.String())
	}
	// What the registry holds: the signed image has exactly its own token attached.
	ix := referrer.NewIndex(context.Background(), repo, signed)
	if f, _ := ix.Find(context.Background(), sha(signedTok)); f == nil || ix.Len() != 1 {
		t.Fatalf("%d token referrers on the signed image, its own found: %v", ix.Len(), f != nil)
	}
	if ix := referrer.NewIndex(context.Background(), repo, unsigned); ix.Len() != 0 {
		t.Fatalf("%d token referrers on the unsigned image", ix.Len())
	}
	// The store marks what attach published, and only that: token prune removes a token only
	// once it is published.
	old := time.Now().Add(-48 * time.Hour)
	for _, put := range []struct {
		img ocispec.Descriptor
		raw string
	}{{signed, signedTok}, {signed, otherTok}, {unsigned, unsignedTok}} {
		e, err := store.Get(put.img.Digest.String(), sha(put.raw))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(e.Path, old, old); err != nil {
			t.Fatal(err)
		}
	}
	res, err := store.Prune(time.Now().Add(-time.Hour), token.PruneOptions{})
	if err != nil || len(res.Removed) != 1 || res.Removed[0].SHA256 != sha(signedTok) || res.Unattached != 2 {
		t.Fatalf("prune after attach: %+v, %v; want the attached token removed and the 2 others kept", res, err)
	}
}

// TestAttachIssuedAt: attach reads a token's iat as the verifiers do (maa.NumericDate), so a
// NumericDate with a fraction or an exponent, which RFC 7519 allows and Verify accepts, is attached
// with its date; a token without iat, or with one that is not a date, is refused.
func TestAttachIssuedAt(t *testing.T) {
	repo, name := attesttest.Registry(t)
	signer := attesttest.Signer(t, "attested signer")
	img := attesttest.PushImage(t, repo, "image")
	b64 := base64.RawURLEncoding.EncodeToString
	tokenWith := func(iat string) string {
		claims := `{"iss":"https://a.attest.azure.net",` + iat + `"x-ms-runtime":{"client-payload":{"nonce":"` + base64.StdEncoding.EncodeToString([]byte("b")) + `"}}}`
		return b64([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + b64([]byte(claims)) + "." + b64([]byte("signature"))
	}
	tests := []struct {
		name, iat string
		code      int
		created   string // the referrer's creation annotation
		stderr    string
	}{
		{"integer", `"iat":1700000000,`, 0, "2023-11-14T22:13:20Z", ""},
		{"fraction", `"iat":1700000000.75,`, 0, "2023-11-14T22:13:20Z", ""},
		{"exponent", `"iat":1.7e9,`, 0, "2023-11-14T22:13:20Z", ""},
		{"missing", ``, 1, "", "claim iat is missing"},
		{"string", `"iat":"1700000000",`, 1, "", "claim iat is not a number"},
		{"negative", `"iat":-1,`, 1, "", "claim iat is out of range"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw := tokenWith(tc.iat)
			attesttest.SignImage(t, nregistry.NewRepository(repo), signer, img, raw, "https://a.attest.azure.net", time.Now())
			p := t.TempDir() + "/token.jwt"
			if err := os.WriteFile(p, []byte(raw), 0o600); err != nil {
				t.Fatal(err)
			}
			var o, e strings.Builder
			code := run(context.Background(), []string{"attach", "-o", "json", name + "@" + img.Digest.String(), "--token", p}, strings.NewReader(""), &o, &e)
			if code != tc.code || !strings.Contains(e.String(), tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, e.String(), tc.code, tc.stderr)
			}
			if tc.code != 0 {
				return
			}
			var out []ocispec.Descriptor
			if err := json.Unmarshal([]byte(o.String()), &out); err != nil || len(out) != 1 {
				t.Fatalf("JSON output %q: %v", o.String(), err)
			}
			if got := out[0].Annotations[ocispec.AnnotationCreated]; got != tc.created {
				t.Fatalf("created %q, want %q", got, tc.created)
			}
		})
	}
}

// signAndStore pushes an image of payload to repo, signs it with signer naming a token chain
// issued for it and keyID (as the plugin signs), and stores the token in store.
func signAndStore(t *testing.T, chain *attesttest.Chain, repo *remote.Repository, signer signature.Signer, store *token.Store, keyID, payload string) (ocispec.Descriptor, string) {
	t.Helper()
	img := attesttest.PushImage(t, repo, payload)
	b, err := binding.Compute(img.Digest.String(), keyID)
	if err != nil {
		t.Fatal(err)
	}
	tok := chain.Token(t, b)
	attesttest.SignImage(t, nregistry.NewRepository(repo), signer, img, tok, chain.URL, time.Now())
	if _, err := store.Put(img.Digest.String(), tok); err != nil {
		t.Fatal(err)
	}
	return img, tok
}

// TestTokenPruneCheckRegistry: with --check-registry, prune removes a token attach published only
// once each repository its mark records still lists it; a token the registry lost, one whose mark
// records no repository, and one whose registry cannot be reached are kept, each with its reason,
// on a dry run too. A token attach never published, removed with --include-unattached, has
// nothing to check.
func TestTokenPruneCheckRegistry(t *testing.T) {
	chain := attesttest.New(t)
	repo, name := attesttest.Registry(t)
	signer := attesttest.Signer(t, "attested signer")
	const keyID = "https://kv.vault.azure.net/keys/signer/0123456789abcdef0123456789abcdef"
	sha := func(raw string) string { s := sha256.Sum256([]byte(raw)); return hex.EncodeToString(s[:]) }
	dir := t.TempDir() + "/tokens"
	store := token.NewStore(dir)
	signed := func(payload string) (ocispec.Descriptor, string) {
		return signAndStore(t, chain, repo, signer, store, keyID, payload)
	}
	attach := func(img ocispec.Descriptor) {
		var o, e strings.Builder
		if code := run(context.Background(), []string{"attach", name + "@" + img.Digest.String(), "--token-dir", dir}, strings.NewReader(""), &o, &e); code != 0 {
			t.Fatalf("attach: exit %d: %s", code, e.String())
		}
	}
	kept, keptTok := signed("kept in the registry")
	attach(kept)
	// A token the registry does not list although its mark records the repository: what a
	// referrer deleted since (by hand, by a retention rule) or lost to a concurrent rewrite of a
	// referrers index leaves.
	lost, lostTok := signed("lost by the registry")
	if err := store.MarkAttached(lost.Digest.String(), sha(lostTok), name); err != nil {
		t.Fatal(err)
	}
	legacy, legacyTok := signed("marked before marks recorded repositories")
	if err := os.WriteFile(filepath.Join(dir, "sha256", legacy.Digest.Encoded(), sha(legacyTok)+".attached"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	gone, goneTok := signed("in a registry that does not answer")
	// A closed port on loopback: the connection is refused at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String() + "/app"
	l.Close()
	if err := store.MarkAttached(gone.Digest.String(), sha(goneTok), closed); err != nil {
		t.Fatal(err)
	}
	// Attached to the first repository, and recorded in a second (a copy of the image) that does
	// not list it: the first repository's answer is not enough.
	copyRepo, copyName := attesttest.Registry(t)
	half, halfTok := signed("attached to one of its two repositories")
	attach(half)
	if c := attesttest.PushImage(t, copyRepo, "attached to one of its two repositories"); c.Digest != half.Digest {
		t.Fatalf("the copy is %s, not %s", c.Digest, half.Digest)
	}
	if err := store.MarkAttached(half.Digest.String(), sha(halfTok), copyName); err != nil {
		t.Fatal(err)
	}
	// Not listed, beside a token referrer that is not well-formed (a layer of another type): the
	// token may be the one not read.
	junk, junkTok := signed("beside a referrer that cannot be read")
	if err := store.MarkAttached(junk.Digest.String(), sha(junkTok), name); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cfg, err := oras.PushBytes(ctx, repo, referrer.ArtifactType, []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	layer, err := oras.PushBytes(ctx, repo, "application/octet-stream", []byte(junkTok))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, referrer.ArtifactType, oras.PackManifestOptions{
		Subject: &junk, Layers: []ocispec.Descriptor{layer}, ConfigDescriptor: &cfg,
		ManifestAnnotations: map[string]string{referrer.AnnotationTokenSHA256: sha(junkTok)},
	}); err != nil {
		t.Fatal(err)
	}
	never, neverTok := signed("never attached")
	old := time.Now().Add(-48 * time.Hour)
	for _, e := range []struct {
		img ocispec.Descriptor
		raw string
	}{{kept, keptTok}, {lost, lostTok}, {legacy, legacyTok}, {gone, goneTok}, {half, halfTok}, {junk, junkTok}, {never, neverTok}} {
		if err := os.Chtimes(filepath.Join(dir, "sha256", e.img.Digest.Encoded(), sha(e.raw)+".jwt"), old, old); err != nil {
			t.Fatal(err)
		}
	}
	reasons := map[string]string{
		sha(lostTok):   name + "@" + lost.Digest.String() + " holds no token referrer with this token: attach it there again",
		sha(legacyTok): "not checked: its mark records no repository",
		sha(goneTok):   "not checked in " + closed + ": resolving",
		sha(halfTok):   copyName + "@" + half.Digest.String() + " holds no token referrer with this token",
		sha(junkTok):   "not found in " + name + "@" + junk.Digest.String() + ", and 1 of its 1 token referrers could not be read",
	}
	prune := func(t *testing.T, args ...string) pruneResult {
		t.Helper()
		var o, e strings.Builder
		code := run(context.Background(), append([]string{"token", "prune", "--older-than", "1h", "--check-registry", "--include-unattached", "--token-dir", dir, "-o", "json"}, args...), strings.NewReader(""), &o, &e)
		var res pruneResult
		if err := json.Unmarshal([]byte(o.String()), &res); code != 0 || err != nil {
			t.Fatalf("exit %d (%v), stdout %s, stderr %s", code, err, o.String(), e.String())
		}
		if !res.CheckRegistry || len(res.Unconfirmed) != len(reasons) {
			t.Fatalf("unconfirmed %+v, want %d", res.Unconfirmed, len(reasons))
		}
		for _, u := range res.Unconfirmed {
			if want, ok := reasons[u.SHA256]; !ok || !strings.Contains(u.Reason, want) {
				t.Errorf("token %s kept with %q, want %q", u.SHA256, u.Reason, want)
			}
		}
		removed := []string{}
		for _, p := range res.Removed {
			removed = append(removed, p.SHA256)
		}
		slices.Sort(removed)
		want := []string{sha(keptTok), sha(neverTok)}
		slices.Sort(want)
		if !slices.Equal(removed, want) {
			t.Fatalf("removed %v, want %v", removed, want)
		}
		return res
	}
	t.Run("dry run", func(t *testing.T) { prune(t, "--dry-run") })
	t.Run("prune", func(t *testing.T) { prune(t) })
	left, err := filepath.Glob(filepath.Join(dir, "sha256", "*", "*.jwt"))
	if err != nil || len(left) != len(reasons) {
		t.Fatalf("tokens left %v (%v), want the %d unconfirmed", left, err, len(reasons))
	}
	// The text output names each token kept and why.
	var o, e strings.Builder
	if code := run(context.Background(), []string{"token", "prune", "--older-than", "1h", "--check-registry", "--token-dir", dir}, strings.NewReader(""), &o, &e); code != 0 ||
		!strings.Contains(o.String(), "kept "+lost.Digest.String()+" token "+sha(lostTok)[:12]) || !strings.Contains(o.String(), "5 older tokens kept that a registry does not list, or could not be asked") {
		t.Fatalf("text: exit %d, stdout %s, stderr %s", code, o.String(), e.String())
	}
	// The registry flags go with --check-registry only, and its limit must leave it time.
	for _, args := range [][]string{{"--plain-http"}, {"--username", "u"}, {"--password-stdin"}, {"--timeout", "1m"}, {"--check-registry", "--timeout", "0s"}} {
		var o, e strings.Builder
		want := "--" + strings.TrimPrefix(args[0], "--") + " is for --check-registry"
		if args[0] == "--check-registry" {
			want = "--timeout 0s: want a duration above 0"
		}
		if code := run(context.Background(), append([]string{"token", "prune", "--older-than", "1h", "--token-dir", dir}, args...), strings.NewReader(""), &o, &e); code != 2 || !strings.Contains(e.String(), want) {
			t.Fatalf("%v: exit %d, stderr %s; want 2 and %q", args, code, e.String(), want)
		}
	}
}

// TestTokenPruneCheckRegistryTimeout: a registry that accepts the connection and never answers
// does not hang prune --check-registry: at its --timeout the token is kept, the limit named.
func TestTokenPruneCheckRegistryTimeout(t *testing.T) {
	release := make(chan struct{})
	silent := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(silent.Close)
	t.Cleanup(func() { close(release) }) // runs first: no handler is left waiting on Close
	repository := strings.TrimPrefix(silent.URL, "http://") + "/app"
	store := token.NewStore(t.TempDir() + "/tokens")
	subject := "sha256:" + strings.Repeat("e", 64)
	e, err := store.Put(subject, "h.waiting.sig")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.MarkAttached(subject, e.SHA256, repository); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(e.Path, old, old); err != nil {
		t.Fatal(err)
	}
	var o, stderr strings.Builder
	began := time.Now()
	code := run(t.Context(), []string{"token", "prune", "--older-than", "1h", "--check-registry", "--timeout", "300ms", "--token-dir", store.Dir(), "-o", "json"}, strings.NewReader(""), &o, &stderr)
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("prune returned after %s", took)
	}
	var res pruneResult
	if err := json.Unmarshal([]byte(o.String()), &res); code != 0 || err != nil || len(res.Removed) != 0 || len(res.Unconfirmed) != 1 ||
		!strings.Contains(res.Unconfirmed[0].Reason, "not checked in "+repository) || !strings.Contains(res.Unconfirmed[0].Reason, "time limit reached (--timeout 300ms)") {
		t.Fatalf("exit %d (%v), stdout %s, stderr %s", code, err, o.String(), stderr.String())
	}
	if _, err := os.Stat(e.Path); err != nil {
		t.Fatalf("the token is gone: %v", err)
	}
}

// TestAttachTimeout: attach gives up at its --timeout on a registry that accepts the connection
// and never answers, with an error naming the limit, instead of hanging; a limit that is not above
// 0 is a usage error.
func TestAttachTimeout(t *testing.T) {
	release := make(chan struct{})
	var reached atomic.Bool
	silent := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		reached.Store(true)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(silent.Close)
	t.Cleanup(func() { close(release) }) // runs first: no handler is left waiting on Close
	ref := strings.TrimPrefix(silent.URL, "http://") + "/app@sha256:" + zeros
	tests := []struct {
		name    string
		timeout string
		code    int
		stderr  string
	}{
		{"registry never answers", "300ms", 1, "time limit reached (--timeout 300ms)"},
		{"zero", "0s", 2, "--timeout 0s: want a duration above 0"},
		{"negative", "-1s", 2, "--timeout -1s: want a duration above 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var o, e strings.Builder
			began := time.Now()
			code := run(t.Context(), []string{"attach", ref, "--token-dir", t.TempDir(), "--timeout", tc.timeout}, strings.NewReader(""), &o, &e)
			if took := time.Since(began); took > 5*time.Second {
				t.Fatalf("attach returned after %s", took)
			}
			if code != tc.code || !strings.Contains(e.String(), tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, e.String(), tc.code, tc.stderr)
			}
			if tc.code == 1 && !reached.Load() {
				t.Fatal("the registry was never asked")
			}
		})
	}
	// --help documents the flag and its default.
	var o, e strings.Builder
	if code := run(t.Context(), []string{"attach", "--help"}, strings.NewReader(""), &o, &e); code != 0 || !strings.Contains(o.String(), "--timeout duration") || !strings.Contains(o.String(), "(default 2m0s)") {
		t.Fatalf("attach --help: exit %d, %q", code, o.String())
	}
}

// TestImageNotFound: an image the registry does not hold is named once in the error, by attach
// and verify alike (oras-go's error names the reference already), with exit 1.
func TestImageNotFound(t *testing.T) {
	_, name := attesttest.Registry(t)
	ref := name + "@sha256:" + zeros
	want := "resolving " + ref + ": not found\n"
	for _, args := range [][]string{
		{"attach", ref, "--token-dir", t.TempDir()},
		{"verify", ref, "--attestation-url", "https://x.weu.attest.azure.net", "--key-id", "https://v.vault.azure.net/keys/k/1", "--trust-policy", skipPolicy(t)},
	} {
		t.Run(args[0], func(t *testing.T) {
			code, _, stderr := runCmd(args...)
			if code != 1 || !strings.HasSuffix(stderr, want) || strings.Count(stderr, ref) != 1 {
				t.Fatalf("exit %d, stderr %q; want 1 and an error ending %q", code, stderr, want)
			}
		})
	}
}

// skipPolicy writes a trust policy that Notation loads, skipping verification for every image.
func skipPolicy(t *testing.T) string {
	t.Helper()
	p := t.TempDir() + "/trustpolicy.json"
	doc := `{"version":"1.0","trustPolicies":[{"name":"all","registryScopes":["*"],"signatureVerification":{"level":"skip"}}]}`
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAttachNoStoredToken: an image without a stored token is reported naming the directory
// looked in, whether it is the default or given, and how to give the plugin's token_dir.
func TestAttachNoStoredToken(t *testing.T) {
	repo, name := attesttest.Registry(t)
	img := attesttest.PushImage(t, repo, "never signed")
	ref := name + "@" + img.Digest.String()
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state)
	t.Setenv("ATTEST_TOKEN_DIR", "")
	given := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"default", nil, " in " + state + "/attested-kv/tokens (the default token store, ATTEST_TOKEN_DIR being unset): was the image signed"},
		{"given", []string{"--token-dir", given}, " in " + given + " (the token store of --token-dir or ATTEST_TOKEN_DIR): was the image signed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCmd(append([]string{"attach", ref}, tc.args...)...)
			if code != 1 || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "give it with --token-dir or ATTEST_TOKEN_DIR; ") || !strings.HasSuffix(stderr, "oras discover shows them, oras-attest verify checks them\n") {
				t.Fatalf("exit %d, stderr %q; want 1 and %q", code, stderr, tc.want)
			}
		})
	}
}

// TestAttachSignatureReads: attach publishes the token of the genuine signature whatever else
// whoever can push attached as a signature (here a manifest of the Notary signature type with two
// layers, which notation-go refuses to read), and records where it published it. A signature the
// registry does not serve (503) stops attach only for a stored token no signature read names: the
// only signature not served is an error, not "nothing attached"; a junk one not served is not,
// until a stored token is left unnamed.
func TestAttachSignatureReads(t *testing.T) {
	chain := attesttest.New(t)
	repo, name := attesttest.Registry(t)
	host, _, _ := strings.Cut(name, "/")
	signer := attesttest.Signer(t, "attested signer")
	const keyID = "https://kv.vault.azure.net/keys/signer/0123456789abcdef0123456789abcdef"
	ctx := context.Background()
	sigRepo := imageverify.NewRepository(repo)
	store := token.NewStore(t.TempDir() + "/tokens")
	sha := func(raw string) string { s := sha256.Sum256([]byte(raw)); return hex.EncodeToString(s[:]) }
	signed := func(t *testing.T, content string) (ocispec.Descriptor, string) {
		t.Helper()
		return signAndStore(t, chain, repo, signer, store, keyID, content)
	}
	// junk attaches to img a manifest of the Notary signature type with two layers.
	junk := func(t *testing.T, img ocispec.Descriptor) ocispec.Descriptor {
		t.Helper()
		var layers []ocispec.Descriptor
		for _, b := range []string{"{}", "{ }"} {
			l, err := oras.PushBytes(ctx, repo, "application/jose+json", []byte(b))
			if err != nil {
				t.Fatal(err)
			}
			layers = append(layers, l)
		}
		d, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, nregistry.ArtifactTypeNotation, oras.PackManifestOptions{Subject: &img, Layers: layers})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	signatureOf := func(t *testing.T, img ocispec.Descriptor) digest.Digest {
		t.Helper()
		var sigs []ocispec.Descriptor
		if err := sigRepo.ListSignatures(ctx, img, func(p []ocispec.Descriptor) error { sigs = append(sigs, p...); return nil }); err != nil || len(sigs) != 1 {
			t.Fatalf("signatures %v, %v", sigs, err)
		}
		return sigs[0].Digest
	}
	// unavailable is a proxy to the registry that answers 503 to the fetch of the manifest d.
	unavailable := func(t *testing.T, d digest.Digest) string {
		proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: host})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/"+d.String()) {
				http.Error(w, "service unavailable", http.StatusServiceUnavailable)
				return
			}
			proxy.ServeHTTP(w, r)
		}))
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	attach := func(t *testing.T, registry string, img ocispec.Descriptor) (code int, out []ocispec.Descriptor, stderr string) {
		t.Helper()
		code, stdout, stderr := runCmd("attach", registry+"/app@"+img.Digest.String(), "--token-dir", store.Dir(), "-o", "json")
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatalf("stdout %q: %v (stderr %q)", stdout, err, stderr)
		}
		return code, out, stderr
	}
	attachedTokens := func(img ocispec.Descriptor) int { return referrer.NewIndex(ctx, repo, img).Len() }

	t.Run("a two-layer signature beside the genuine one", func(t *testing.T) {
		img, tok := signed(t, "junk beside")
		junk(t, img)
		code, out, stderr := attach(t, host, img)
		if code != 0 || len(out) != 1 || attachedTokens(img) != 1 {
			t.Fatalf("exit %d, %d attached (%d in the registry), stderr %q; want 0 and the token attached", code, len(out), attachedTokens(img), stderr)
		}
		if ok, repos, err := store.Attached(img.Digest.String(), sha(tok)); err != nil || !ok || len(repos) != 1 || repos[0] != name {
			t.Fatalf("mark: %v, %q, %v; want %s", ok, repos, err, name)
		}
	})
	// oras-go's client retries a 503 for several seconds: these two run at once, with the tokens
	// made first (one TPM).
	lone, _ := signed(t, "lone")
	junkImg, junkTok := signed(t, "junk unavailable")
	unnamed := chain.Token(t, "a signing whose signature was not pushed")
	t.Run("503 on the only signature", func(t *testing.T) {
		t.Parallel()
		img := lone
		code, out, stderr := attach(t, unavailable(t, signatureOf(t, img)), img)
		if code != 1 || len(out) != 0 || attachedTokens(img) != 0 || !strings.Contains(stderr, "1 of the 1 signatures listed could not be read") ||
			!strings.Contains(stderr, "503") || strings.Contains(stderr, "nothing attached") {
			t.Fatalf("exit %d, %d attached, stderr %q; want 1 and the registry's error", code, len(out), stderr)
		}
	})
	t.Run("503 on a junk signature", func(t *testing.T) {
		t.Parallel()
		img, tok := junkImg, junkTok
		registry := unavailable(t, junk(t, img).Digest)
		if code, out, stderr := attach(t, registry, img); code != 0 || len(out) != 1 {
			t.Fatalf("exit %d, %d attached, stderr %q; want 0 and the token attached", code, len(out), stderr)
		}
		// A stored token no signature read names may be named by the one not served.
		if _, err := store.Put(img.Digest.String(), unnamed); err != nil {
			t.Fatal(err)
		}
		code, out, stderr := attach(t, registry, img)
		if code != 1 || len(out) != 1 || out[0].Annotations[referrer.AnnotationTokenSHA256] != sha(tok) ||
			!strings.Contains(stderr, "token "+sha(unnamed)+": no signature read names it, and 1 of the 2 signatures listed could not be read") {
			t.Fatalf("exit %d, attached %v, stderr %q; want 1, the named token listed and the unnamed one's error", code, out, stderr)
		}
	})
}

// TestAttachPastFalseReferrer: a referrer whose annotation names the stored token but that holds
// other bytes (whoever can push can attach one) does not count as the token attached: attach
// pushes the real token, lists its referrer and marks it published; beside the genuine referrer
// attach pushes nothing and lists the genuine one.
func TestAttachPastFalseReferrer(t *testing.T) {
	chain := attesttest.New(t)
	repo, name := attesttest.Registry(t)
	signer := attesttest.Signer(t, "attested signer")
	const keyID = "https://kv.vault.azure.net/keys/signer/0123456789abcdef0123456789abcdef"
	ctx := context.Background()
	store := token.NewStore(t.TempDir() + "/tokens")
	sha := func(raw string) string { s := sha256.Sum256([]byte(raw)); return hex.EncodeToString(s[:]) }
	// liar attaches to img a token referrer annotated with tok's SHA-256 that holds other bytes.
	liar := func(t *testing.T, img ocispec.Descriptor, tok string) ocispec.Descriptor {
		t.Helper()
		cfg, err := oras.PushBytes(ctx, repo, referrer.ArtifactType, []byte("{}"))
		if err != nil {
			t.Fatal(err)
		}
		layer, err := oras.PushBytes(ctx, repo, referrer.LayerMediaType, []byte("eyJhbGciOiJSUzI1NiJ9.eyJsaWFyIjoxfQ.c2ln"))
		if err != nil {
			t.Fatal(err)
		}
		d, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, referrer.ArtifactType, oras.PackManifestOptions{
			Subject: &img, Layers: []ocispec.Descriptor{layer}, ConfigDescriptor: &cfg,
			ManifestAnnotations: map[string]string{referrer.AnnotationTokenSHA256: sha(tok)},
		})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	tests := []struct {
		name     string
		attached bool // the genuine referrer is attached before attach runs
		stdout   string
	}{
		{name: "a false referrer only", stdout: "Attached token to "},
		{name: "a false referrer beside the genuine one", attached: true, stdout: "Token already attached to "},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, tok := signAndStore(t, chain, repo, signer, store, keyID, fmt.Sprintf("false referrer %d", i))
			var genuine digest.Digest
			if tc.attached {
				d, err := referrer.Attach(ctx, repo, img, referrer.Token{Raw: tok, Issuer: chain.URL, IssuedAt: time.Now()})
				if err != nil {
					t.Fatal(err)
				}
				genuine = d.Digest
			}
			lie := liar(t, img, tok)
			code, stdout, stderr := runCmd("attach", name+"@"+img.Digest.String(), "--token-dir", store.Dir())
			if code != 0 || !strings.Contains(stdout, tc.stdout) || strings.Contains(stdout, lie.Digest.String()) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 0, %q, and not the false referrer %s", code, stdout, stderr, tc.stdout, lie.Digest)
			}
			ix := referrer.NewIndex(ctx, repo, img)
			f, errs := ix.Find(ctx, sha(tok))
			if f == nil || f.Raw != tok || f.Descriptor.Digest == lie.Digest || ix.Len() != 2 || len(errs) != 0 {
				t.Fatalf("after attach: %d referrers, the token's %+v, %v; want it and the false one", ix.Len(), f, errs)
			}
			if !strings.Contains(stdout, "Digest: "+f.Descriptor.Digest.String()) || (tc.attached && f.Descriptor.Digest != genuine) {
				t.Fatalf("stdout %q does not name the token's referrer %s", stdout, f.Descriptor.Digest)
			}
			if ok, repos, err := store.Attached(img.Digest.String(), sha(tok)); err != nil || !ok || len(repos) != 1 || repos[0] != name {
				t.Fatalf("mark: %v, %q, %v; want %s", ok, repos, err, name)
			}
		})
	}
}

// TestTagReferenceRefused: attach and verify refuse an image given by tag, even one the registry
// resolves, with a usage error (exit 2) that says to give the digest: a tag can move between
// signing and deployment. verify refuses it before it reads any file (here a trust policy that
// does not exist).
func TestTagReferenceRefused(t *testing.T) {
	repo, name := attesttest.Registry(t)
	img := attesttest.PushImage(t, repo, "tagged")
	if err := repo.Tag(context.Background(), img, "v1"); err != nil {
		t.Fatal(err)
	}
	ref := name + ":v1"
	want := fmt.Sprintf("%q: give the image by digest (REGISTRY/REPO@sha256:...), not by tag", ref)
	for _, args := range [][]string{
		{"attach", ref, "--token-dir", t.TempDir()},
		{"verify", ref, "--attestation-url", "https://x.weu.attest.azure.net", "--key-id", "https://v.vault.azure.net/keys/k/1", "--trust-policy", t.TempDir() + "/none.json"},
	} {
		t.Run(args[0], func(t *testing.T) {
			code, stdout, stderr := runCmd(args...)
			if code != 2 || !strings.Contains(stderr, want) || stdout != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 2 and %q", code, stdout, stderr, want)
			}
		})
	}
}

// TestTokenPruneCheckRegistryAsksOnce: prune --check-registry asks a repository about an image
// once, whatever the number of its tokens, a failed answer included: the image's other tokens are
// kept for the same reason without asking again (each ask costing the client's retries).
func TestTokenPruneCheckRegistryAsksOnce(t *testing.T) {
	var requests atomic.Int64
	notFound := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		requests.Add(1)
		http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`, http.StatusNotFound)
	}))
	t.Cleanup(notFound.Close)
	repository := strings.TrimPrefix(notFound.URL, "http://") + "/app"
	store := token.NewStore(t.TempDir() + "/tokens")
	subject := "sha256:" + strings.Repeat("f", 64)
	old := time.Now().Add(-48 * time.Hour)
	put := func(raw string) {
		e, err := store.Put(subject, raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.MarkAttached(subject, e.SHA256, repository); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(e.Path, old, old); err != nil {
			t.Fatal(err)
		}
	}
	prune := func(tokens int) int64 {
		requests.Store(0)
		var o, e strings.Builder
		code := run(t.Context(), []string{"token", "prune", "--older-than", "1h", "--check-registry", "--dry-run", "--token-dir", store.Dir(), "-o", "json"}, strings.NewReader(""), &o, &e)
		var res pruneResult
		if err := json.Unmarshal([]byte(o.String()), &res); code != 0 || err != nil || len(res.Unconfirmed) != tokens || len(res.Removed) != 0 {
			t.Fatalf("exit %d (%v), stdout %s, stderr %s", code, err, o.String(), e.String())
		}
		for _, u := range res.Unconfirmed {
			if u.Reason != res.Unconfirmed[0].Reason || !strings.Contains(u.Reason, "not checked in "+repository) {
				t.Fatalf("reasons %+v", res.Unconfirmed)
			}
		}
		return requests.Load()
	}
	put("h.first.sig")
	one := prune(1)
	put("h.second.sig")
	put("h.third.sig")
	if three := prune(3); one == 0 || three != one {
		t.Fatalf("%d requests for one token, %d for three of the same image; want the same, above 0", one, three)
	}
}
