package referrer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/olareg/olareg"
	"github.com/olareg/olareg/config"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"
)

// registries are the two in-process registries the referrer must work with: olareg has the
// Referrers API, distribution v3 has not (oras-go then uses the referrers tag schema).
func registries(t *testing.T) map[string]string {
	t.Helper()
	ola := olareg.New(config.Config{Storage: config.ConfigStorage{StoreType: config.StoreMem}})
	olaSrv := httptest.NewServer(ola)
	t.Cleanup(func() { olaSrv.Close(); ola.Close() })

	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{"inmemory": configuration.Parameters{}, "delete": configuration.Parameters{"enabled": true}}
	cfg.Log.Level = "error"
	app := handlers.NewApp(context.Background(), cfg)
	distSrv := httptest.NewServer(app)
	t.Cleanup(distSrv.Close)
	return map[string]string{
		"olareg (Referrers API)":         strings.TrimPrefix(olaSrv.URL, "http://"),
		"distribution v3 (tag fallback)": strings.TrimPrefix(distSrv.URL, "http://"),
	}
}

func pushImage(t *testing.T, repo *remote.Repository) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	layer, err := oras.PushBytes(ctx, repo, "application/vnd.oci.image.layer.v1.tar", []byte("app"))
	if err != nil {
		t.Fatal(err)
	}
	desc, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, "application/vnd.example.app", oras.PackManifestOptions{
		Layers: []ocispec.Descriptor{layer}, ManifestAnnotations: map[string]string{ocispec.AnnotationCreated: "2026-01-01T00:00:00Z"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return desc
}

func TestAttachAndFind(t *testing.T) {
	for name, host := range registries(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			repo, subject := newSubject(t, host)
			tok := Token{Raw: "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln", Issuer: "https://maa.example", Binding: strings.Repeat("ab", 32), IssuedAt: time.Date(2026, 11, 25, 1, 2, 3, 0, time.UTC)}
			first, err := Attach(ctx, repo, subject, tok)
			if err != nil {
				t.Fatalf("Attach: %v", err)
			}
			again, err := Attach(ctx, repo, subject, tok)
			if err != nil || again.Digest != first.Digest {
				t.Fatalf("second Attach: %v %s vs %s", err, again.Digest, first.Digest)
			}
			other := tok
			other.Raw = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ5In0.c2ln"
			if _, err := Attach(ctx, repo, subject, other); err != nil {
				t.Fatal(err)
			}
			ix := NewIndex(ctx, repo, subject)
			if ix.Len() != 2 {
				t.Fatalf("listed %d token referrers, want 2 (the same token attached twice is one)", ix.Len())
			}
			got, errs := ix.Find(ctx, hexSHA256([]byte(tok.Raw)))
			if len(errs) != 0 {
				t.Fatalf("Find errors: %v", errs)
			}
			if got == nil || got.Descriptor.Digest != first.Digest || got.Raw != tok.Raw || got.Annotations[AnnotationBinding] != tok.Binding || got.Annotations[AnnotationCreated] != "2026-11-25T01:02:03Z" {
				t.Fatalf("Find = %+v", got)
			}
			if f, errs := ix.Find(ctx, hexSHA256([]byte(other.Raw))); f == nil || f.Raw != other.Raw || len(errs) != 0 {
				t.Fatalf("Find(other) = %+v, %v", f, errs)
			}
		})
	}
}

func TestAttachRefuses(t *testing.T) {
	for _, tok := range []Token{{Raw: "", IssuedAt: time.Now()}, {Raw: "a.b.c"}, {Raw: strings.Repeat("a", MaxTokenSize+1), IssuedAt: time.Now()}} {
		if _, err := Attach(context.Background(), nil, ocispec.Descriptor{}, tok); err == nil {
			t.Errorf("Attach accepted %d-byte token with iat %v", len(tok.Raw), tok.IssuedAt)
		}
	}
}

// countingTarget counts the referrer manifests fetched.
type countingTarget struct {
	Target
	manifests int
}

func (c *countingTarget) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	if d.MediaType == ocispec.MediaTypeImageManifest {
		c.manifests++
	}
	return c.Target.Fetch(ctx, d)
}

// TestFindReadsTheNamedReferrer: with several tokens attached, Find reads only the referrer the
// annotation names, on both registries; referrers without the annotation, or with a false one,
// are still found by reading the others.
func TestFindReadsTheNamedReferrer(t *testing.T) {
	for name, host := range registries(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			repo, subject := newSubject(t, host)
			raws := attachTokens(t, repo, subject, 6)
			// A referrer from before the annotation, and one whose annotation names another token.
			legacy := "eyJhbGciOiJSUzI1NiJ9.eyJsZWdhY3kiOjF9.c2ln"
			pushReferrer(t, repo, subject, legacy, nil)
			liar := "eyJhbGciOiJSUzI1NiJ9.eyJsaWFyIjoxfQ.c2ln"
			pushReferrer(t, repo, subject, liar, map[string]string{AnnotationTokenSHA256: hexSHA256([]byte(raws[2]))})

			c := &countingTarget{Target: repo}
			ix := NewIndex(ctx, c, subject)
			if ix.Len() != 8 {
				t.Fatalf("listed %d referrers, want 8", ix.Len())
			}
			f, errs := ix.Find(ctx, hexSHA256([]byte(raws[4])))
			if f == nil || f.Raw != raws[4] || len(errs) != 0 {
				t.Fatalf("Find = %+v, %v", f, errs)
			}
			if c.manifests != 1 {
				t.Fatalf("read %d referrer manifests to find an annotated token, want 1", c.manifests)
			}
			for _, raw := range []string{legacy, liar, raws[2]} {
				if f, errs := ix.Find(ctx, hexSHA256([]byte(raw))); f == nil || f.Raw != raw {
					t.Fatalf("Find(%s) = %+v, %v", raw, f, errs)
				}
			}
			if c.manifests != 8 {
				t.Fatalf("read %d referrer manifests in all, want each of the 8 once", c.manifests)
			}
			if f, _ := ix.Find(ctx, strings.Repeat("0", 64)); f != nil {
				t.Fatalf("Find of an absent token = %+v", f)
			}
		})
	}
}

// pushReferrer pushes a token referrer the way Attach does, with the given annotations only.
func pushReferrer(t *testing.T, repo *remote.Repository, subject ocispec.Descriptor, raw string, annotations map[string]string) {
	t.Helper()
	ctx := context.Background()
	cfg, err := pushBlob(ctx, repo, ArtifactType, []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	layer, err := pushBlob(ctx, repo, LayerMediaType, []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, ArtifactType, oras.PackManifestOptions{
		Subject: &subject, Layers: []ocispec.Descriptor{layer}, ConfigDescriptor: &cfg, ManifestAnnotations: annotations,
	}); err != nil {
		t.Fatal(err)
	}
}

// newSubject returns the repository app of the registry at host, over plain HTTP, with an image
// pushed to it.
func newSubject(t *testing.T, host string) (*remote.Repository, ocispec.Descriptor) {
	t.Helper()
	repo, err := remote.NewRepository(host + "/app")
	if err != nil {
		t.Fatal(err)
	}
	repo.PlainHTTP = true
	return repo, pushImage(t, repo)
}

// TestIndexBound: an image with more token referrers than MaxListed is listed up to the bound;
// a token beyond it is not found, and the error says why.
func TestIndexBound(t *testing.T) {
	defer func(n int) { MaxListed = n }(MaxListed)
	MaxListed = 3
	for name, host := range registries(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			repo, subject := newSubject(t, host)
			raws := attachTokens(t, repo, subject, 5)
			ix := NewIndex(ctx, repo, subject)
			if ix.Len() != 3 {
				t.Fatalf("listed %d, want 3", ix.Len())
			}
			found := 0
			for _, raw := range raws {
				f, errs := ix.Find(ctx, hexSHA256([]byte(raw)))
				if f != nil {
					found++
					continue
				}
				if len(errs) != 0 || !ix.Truncated() {
					t.Fatalf("not found: errors %v, truncated %v", errs, ix.Truncated())
				}
			}
			if found != 3 {
				t.Fatalf("found %d tokens, want 3", found)
			}
		})
	}
}

// attachTokens attaches n distinct tokens to subject and returns them.
func attachTokens(t *testing.T, repo *remote.Repository, subject ocispec.Descriptor, n int) []string {
	t.Helper()
	var raws []string
	for i := range n {
		raw := fmt.Sprintf("eyJhbGciOiJSUzI1NiJ9.eyJuIjo%dfQ.c2ln", i)
		raws = append(raws, raw)
		tok := Token{Raw: raw, Issuer: "https://maa.example", Binding: strings.Repeat("ab", 32), IssuedAt: time.Now()}
		if _, err := Attach(context.Background(), repo, subject, tok); err != nil {
			t.Fatal(err)
		}
	}
	return raws
}

// forgetfulTarget lists the token referrers without the newest manifest for the first hide
// listings: the index update of a push another process overwrote.
type forgetfulTarget struct {
	Target
	hide, listings, pushes int
}

func (f *forgetfulTarget) Push(ctx context.Context, d ocispec.Descriptor, r io.Reader) error {
	if d.MediaType == ocispec.MediaTypeImageManifest {
		f.pushes++
	}
	return f.Target.Push(ctx, d, r)
}

func (f *forgetfulTarget) Referrers(ctx context.Context, subject ocispec.Descriptor, artifactType string, fn func([]ocispec.Descriptor) error) error {
	f.listings++
	if f.listings > f.hide {
		return f.Target.Referrers(ctx, subject, artifactType, fn)
	}
	return fn(nil)
}

// TestAttachConfirmsListing: a referrer the registry does not list after its push is pushed
// again until it is listed; one never listed is an error that says so, not a success.
func TestAttachConfirmsListing(t *testing.T) {
	attachBackoff = time.Millisecond
	t.Cleanup(func() { attachBackoff = 200 * time.Millisecond })
	host := registries(t)["distribution v3 (tag fallback)"]
	tok := Token{Raw: "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ6In0.c2ln", Issuer: "https://maa.example", IssuedAt: time.Now()}
	for _, tc := range []struct {
		hide, pushes int
		err          string
	}{
		{hide: 0, pushes: 1},
		{hide: 2, pushes: 3},
		{hide: attachAttempts, pushes: attachAttempts, err: "does not list it"},
	} {
		t.Run(fmt.Sprintf("hidden from %d listings", tc.hide), func(t *testing.T) {
			repo, subject := newSubject(t, host)
			f := &forgetfulTarget{Target: repo, hide: tc.hide}
			_, err := Attach(context.Background(), f, subject, tok)
			if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) || f.pushes != tc.pushes {
				t.Fatalf("Attach: %v after %d pushes; want error %q after %d", err, f.pushes, tc.err, tc.pushes)
			}
		})
	}
}

// TestConcurrentAttach: attaches of different tokens to one image at once, each through its own
// repository value as separate processes would, on a registry without the Referrers API (one index
// that every push rewrites), all end up listed. The registry answers reads of the index slowly,
// as a remote one does, so that the attaches read it before the others have written it back.
func TestConcurrentAttach(t *testing.T) {
	attachBackoff = 10 * time.Millisecond
	t.Cleanup(func() { attachBackoff = 200 * time.Millisecond })
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{"inmemory": configuration.Parameters{}, "delete": configuration.Parameters{"enabled": true}}
	cfg.Log.Level = "error"
	app := handlers.NewApp(context.Background(), cfg)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/sha256-") {
			time.Sleep(50 * time.Millisecond)
		}
		app.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	repo, subject := newSubject(t, host)
	const n = 6
	errs := make(chan error, n)
	for i := range n {
		go func() {
			own, err := remote.NewRepository(host + "/app")
			if err != nil {
				errs <- err
				return
			}
			own.PlainHTTP, own.SkipReferrersGC = true, true
			tok := Token{Raw: fmt.Sprintf("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIlZCJ9.c2ln%d", i), Issuer: "https://maa.example", IssuedAt: time.Now()}
			_, err = Attach(context.Background(), own, subject, tok)
			errs <- err
		}()
	}
	failed := 0
	for range n {
		if err := <-errs; err != nil {
			failed++
			t.Log(err)
		}
	}
	// An attach may fail (saying so); none may report a referrer the registry then drops.
	if ix := NewIndex(context.Background(), repo, subject); ix.Len() != n-failed {
		t.Fatalf("%d token referrers listed after %d attaches reported success", ix.Len(), n-failed)
	}
}

// failingTarget fails the fetches of the content whose mediaType is failMediaType with err, and
// the listing of the referrers with listErr.
type failingTarget struct {
	Target
	failMediaType string
	err, listErr  error
}

func (f failingTarget) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	if d.MediaType == f.failMediaType {
		return nil, f.err
	}
	return f.Target.Fetch(ctx, d)
}

func (f failingTarget) Referrers(ctx context.Context, subject ocispec.Descriptor, artifactType string, fn func([]ocispec.Descriptor) error) error {
	if f.listErr != nil {
		return f.listErr
	}
	return f.Target.Referrers(ctx, subject, artifactType, fn)
}

// TestFindErrors: Find tells a referrer the registry did not serve (a *ReadError wrapping the
// registry's error: the token may be in it) from one that was read and is not a token referrer.
func TestFindErrors(t *testing.T) {
	host := registries(t)["olareg (Referrers API)"]
	down := errors.New("503 Service Unavailable")
	tests := []struct {
		name      string
		fail      failingTarget // Target is filled in
		malformed bool          // a referrer with two layers is attached instead of the token
		read      bool          // the error must be a *ReadError wrapping down
		want      string        // in the error
	}{
		{name: "manifest not served", fail: failingTarget{failMediaType: ocispec.MediaTypeImageManifest, err: down}, read: true, want: "token referrer sha256:"},
		{name: "token layer not served", fail: failingTarget{failMediaType: LayerMediaType, err: down}, read: true, want: "fetching the token layer sha256:"},
		{name: "referrers not listed", fail: failingTarget{listErr: down}, read: true, want: "listing referrers of sha256:"},
		{name: "two layers", malformed: true, want: "not a token referrer"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			// A repository of its own: the image pushed is the same in each.
			repo, err := remote.NewRepository(fmt.Sprintf("%s/find%d", host, i))
			if err != nil {
				t.Fatal(err)
			}
			repo.PlainHTTP = true
			subject := pushImage(t, repo)
			raw := "eyJhbGciOiJSUzI1NiJ9.eyJmaW5kIjoxfQ.c2ln"
			if tc.malformed {
				pushTwoLayers(t, repo, subject, raw)
			} else {
				pushReferrer(t, repo, subject, raw, nil)
			}
			target := tc.fail
			target.Target = repo
			f, errs := NewIndex(ctx, target, subject).Find(ctx, hexSHA256([]byte(raw)))
			if f != nil || len(errs) != 1 {
				t.Fatalf("Find = %+v, %v; want one error", f, errs)
			}
			var re *ReadError
			if errors.As(errs[0], &re) != tc.read || errors.Is(errs[0], down) != tc.read || !strings.Contains(errs[0].Error(), tc.want) {
				t.Fatalf("error %v (a *ReadError: %v); want one containing %q that is a *ReadError: %v", errs[0], re != nil, tc.want, tc.read)
			}
		})
	}
}

// pushTwoLayers pushes a referrer of the token artifact type whose manifest has raw as a second
// layer: not a token referrer.
func pushTwoLayers(t *testing.T, repo *remote.Repository, subject ocispec.Descriptor, raw string) {
	t.Helper()
	ctx := context.Background()
	var layers []ocispec.Descriptor
	for _, b := range []string{"a.b.c", raw} {
		l, err := pushBlob(ctx, repo, LayerMediaType, []byte(b))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	if _, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, ArtifactType, oras.PackManifestOptions{Subject: &subject, Layers: layers}); err != nil {
		t.Fatal(err)
	}
}
