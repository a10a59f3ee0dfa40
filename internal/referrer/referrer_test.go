package referrer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/olareg/olareg"
	"github.com/olareg/olareg/config"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
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

// TestFindAnnotated: FindAnnotated reads only the referrers annotated with the token's SHA-256,
// and hashes the token it reads: a referrer whose annotation names a token it does not hold (a
// false annotation, or one naming a token never attached) is not that token, and a token attached
// without the annotation is not found this way (Find falls back to reading it; FindAnnotated does
// not), on both registries.
func TestFindAnnotated(t *testing.T) {
	for name, host := range registries(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			repo, subject := newSubject(t, host)
			raws := attachTokens(t, repo, subject, 3)
			legacy := "eyJhbGciOiJSUzI1NiJ9.eyJsZWdhY3kiOjF9.c2ln"
			pushReferrer(t, repo, subject, legacy, nil)
			// One liar claims a token that is also genuinely attached, one a token never attached.
			absent := "eyJhbGciOiJSUzI1NiJ9.eyJhYnNlbnQiOjF9.c2ln"
			pushReferrer(t, repo, subject, "eyJhbGciOiJSUzI1NiJ9.eyJsaWFyIjoxfQ.c2ln", map[string]string{AnnotationTokenSHA256: hexSHA256([]byte(raws[2]))})
			pushReferrer(t, repo, subject, "eyJhbGciOiJSUzI1NiJ9.eyJsaWFyIjoyfQ.c2ln", map[string]string{AnnotationTokenSHA256: hexSHA256([]byte(absent))})
			tests := []struct {
				name string
				raw  string
				want bool // whether FindAnnotated finds the referrer holding raw
			}{
				{"annotated token", raws[0], true},
				{"annotated token a liar also claims", raws[2], true},
				{"token only a liar claims", absent, false},
				{"token attached without the annotation", legacy, false},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					// A fresh index each time: nothing read for another row is reused.
					ix := NewIndex(ctx, repo, subject)
					if ix.Len() != 6 {
						t.Fatalf("listed %d referrers, want 6", ix.Len())
					}
					f := ix.FindAnnotated(ctx, hexSHA256([]byte(tc.raw)))
					if (f != nil) != tc.want || (f != nil && (f.Raw != tc.raw || f.SHA256 != hexSHA256([]byte(tc.raw)))) {
						t.Fatalf("FindAnnotated = %+v, want found: %v", f, tc.want)
					}
				})
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
// that every push rewrites), all end up listed, and each pushed its referrer as often as the lost
// updates make it: the registry (lostUpdateRegistry) loses updates in the same order every run.
// Attacher 0's stale write of the index drops every other attacher's referrer, after each of them
// has listed the referrers once: those that did not find theirs are pushed again (the retry), and
// those that did (at least the last to write the index) find theirs gone when they look again (the
// second look, once the index could have been rewritten) and are pushed again too. Without the
// retry the attaches fail; without the second look one reports a referrer the registry dropped.
func TestConcurrentAttach(t *testing.T) {
	attachBackoff = 10 * time.Millisecond
	t.Cleanup(func() { attachBackoff = 200 * time.Millisecond })
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{"inmemory": configuration.Parameters{}, "delete": configuration.Parameters{"enabled": true}}
	cfg.Log.Level = "error"
	const n = 6
	reg := newLostUpdateRegistry(handlers.NewApp(context.Background(), cfg), n)
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	repo, subject := newSubject(t, host)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			own, err := remote.NewRepository(host + "/app")
			if err != nil {
				errs <- err
				return
			}
			own.PlainHTTP, own.SkipReferrersGC = true, true
			own.Client = &auth.Client{Client: http.DefaultClient, Header: http.Header{attacherHeader: {strconv.Itoa(i)}}}
			tok := Token{Raw: fmt.Sprintf("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIlZCJ9.c2ln%d", i), Issuer: "https://maa.example", IssuedAt: time.Now()}
			_, err = Attach(context.Background(), own, subject, tok)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("Attach: %v", err)
		}
	}
	if stuck := reg.stuck(); len(stuck) != 0 {
		t.Fatalf("the registry's order was not followed (an attach made other requests than expected): %v", stuck)
	}
	if ix := NewIndex(context.Background(), repo, subject); ix.Len() != n {
		t.Fatalf("%d token referrers listed after %d attaches", ix.Len(), n)
	}
	for i := range n {
		want := 2
		if i == 0 {
			want = 1
		}
		if got := reg.pushes(strconv.Itoa(i)); got != want {
			t.Errorf("attacher %d pushed its referrer %d times, want %d", i, got, want)
		}
	}
}

// attacherHeader names the attacher of a request to lostUpdateRegistry.
const attacherHeader = "X-Attacher"

// lostUpdateRegistry serves a registry without the Referrers API to n attachers, each naming itself
// (0 to n-1) in attacherHeader, in an order that loses updates of the referrers index (the
// referrers tag, sha256-<hex>) as processes attaching at once can, the same way every run:
//   - the first read of the index by each attacher (oras-go's, before it writes the index back with
//     its referrer added) is served once all n have asked, and no write of the index is served
//     before those n reads are: each writes back an index of its own referrer alone;
//   - the first write of attacher 0 is served only once every other attacher has listed the
//     referrers since its own first write, and every later request of theirs to the index waits
//     for that write: it drops their referrers, after the last of them to write has found its own
//     listed;
//   - after it, a read of the index for a push and the write that follows are served one attacher
//     at a time: no more updates are lost.
//
// A wait that lasts more than 10 s is given up and recorded (stuck).
type lostUpdateRegistry struct {
	app http.Handler
	n   int

	mu         sync.Mutex
	attachers  map[string]*attacherState
	arrived    int           // first index reads asked for
	allArrived chan struct{} // closed once n have been
	read       int           // first index reads served
	allRead    chan struct{} // closed once n have been
	listed     int           // attachers other than 0 that listed since their first write
	allListed  chan struct{} // closed once n-1 have
	zeroWrote  chan struct{} // closed once attacher 0's first write is served
	waits      []string      // the waits given up

	lock chan struct{} // held from a read of the index for a push to the attacher's next request
}

type attacherState struct {
	pushes   int  // token referrer manifests pushed
	reads    int  // reads of the index
	writes   int  // writes of the index
	pushRead bool // a referrer manifest was pushed: the next read of the index is oras-go's
	listed   bool // listed the referrers since its first write
	holds    bool // holds lock
}

func newLostUpdateRegistry(app http.Handler, n int) *lostUpdateRegistry {
	return &lostUpdateRegistry{
		app: app, n: n, attachers: map[string]*attacherState{},
		allArrived: make(chan struct{}), allRead: make(chan struct{}), allListed: make(chan struct{}), zeroWrote: make(chan struct{}),
		lock: make(chan struct{}, 1),
	}
}

func (r *lostUpdateRegistry) wait(ch <-chan struct{}, what string) {
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		r.giveUp(what)
	}
}

func (r *lostUpdateRegistry) giveUp(what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waits = append(r.waits, what)
}

func (r *lostUpdateRegistry) stuck() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.waits
}

func (r *lostUpdateRegistry) pushes(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a := r.attachers[id]; a != nil {
		return a.pushes
	}
	return 0
}

func (r *lostUpdateRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	id := req.Header.Get(attacherHeader)
	if id == "" {
		r.app.ServeHTTP(w, req)
		return
	}
	index := strings.Contains(req.URL.Path, "/manifests/sha256-")
	r.mu.Lock()
	a := r.attachers[id]
	if a == nil {
		a = &attacherState{}
		r.attachers[id] = a
	}
	if req.Method == http.MethodPut && strings.Contains(req.URL.Path, "/manifests/sha256:") {
		a.pushes++
		a.pushRead = true
	}
	// The lock is held until the write that follows the read; any other request releases it.
	if a.holds && !(index && req.Method == http.MethodPut) {
		a.holds = false
		<-r.lock
	}
	waitZero := id != "0" && a.listed
	r.mu.Unlock()
	if !index {
		r.app.ServeHTTP(w, req)
		return
	}
	if waitZero {
		r.wait(r.zeroWrote, "attacher "+id+" waiting for attacher 0's write")
	}
	switch req.Method {
	case http.MethodGet:
		r.mu.Lock()
		first, push := a.reads == 0, a.pushRead
		a.reads++
		a.pushRead = false
		if first {
			if r.arrived++; r.arrived == r.n {
				close(r.allArrived)
			}
		}
		r.mu.Unlock()
		switch {
		case first:
			r.wait(r.allArrived, "attacher "+id+" waiting for the others' first reads")
		case push:
			select {
			case r.lock <- struct{}{}:
				r.mu.Lock()
				a.holds = true
				r.mu.Unlock()
			case <-time.After(10 * time.Second):
				r.giveUp("attacher " + id + " waiting to read the index for a push")
			}
		}
		r.app.ServeHTTP(w, req)
		r.mu.Lock()
		switch {
		case first:
			if r.read++; r.read == r.n {
				close(r.allRead)
			}
		case !push && id != "0" && a.writes > 0 && !a.listed:
			a.listed = true
			if r.listed++; r.listed == r.n-1 {
				close(r.allListed)
			}
		}
		r.mu.Unlock()
	case http.MethodPut:
		r.mu.Lock()
		first := a.writes == 0
		r.mu.Unlock()
		if first {
			r.wait(r.allRead, "attacher "+id+" waiting for the first reads to be served")
			if id == "0" {
				r.wait(r.allListed, "attacher 0 waiting for the others to list")
			}
		}
		r.app.ServeHTTP(w, req)
		r.mu.Lock()
		a.writes++
		if first && id == "0" {
			close(r.zeroWrote)
		}
		if a.holds {
			a.holds = false
			<-r.lock
		}
		r.mu.Unlock()
	default:
		r.app.ServeHTTP(w, req)
	}
}

// failingTarget fails the fetches of the content whose mediaType is failMediaType with err, or
// serves them altered by alter, and fails the listing of the referrers with listErr.
type failingTarget struct {
	Target
	failMediaType string
	err, listErr  error
	alter         func([]byte) []byte
}

func (f failingTarget) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	if d.MediaType != f.failMediaType {
		return f.Target.Fetch(ctx, d)
	}
	if f.alter == nil {
		return nil, f.err
	}
	rc, err := f.Target.Fetch(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(f.alter(b))), nil
}

func (f failingTarget) Referrers(ctx context.Context, subject ocispec.Descriptor, artifactType string, fn func([]ocispec.Descriptor) error) error {
	if f.listErr != nil {
		return f.listErr
	}
	return f.Target.Referrers(ctx, subject, artifactType, fn)
}

// TestFindErrors: Find tells a referrer the registry did not serve (a *ReadError wrapping the
// registry's error: the token may be in it) or served other bytes than its descriptor names from
// one that was read and is not a token referrer (each check of the manifest and its token layer).
// Each referrer holds a token whose SHA-256 is the one looked for, so that a check left out makes
// Find return it.
func TestFindErrors(t *testing.T) {
	host := registries(t)["olareg (Referrers API)"]
	down := errors.New("503 Service Unavailable")
	raw := "eyJhbGciOiJSUzI1NiJ9.eyJmaW5kIjoxfQ.c2ln"
	flipLast := func(b []byte) []byte { b = bytes.Clone(b); b[len(b)-1] ^= 1; return b }
	dropLast := func(b []byte) []byte { return b[:len(b)-1] }
	big := strings.Repeat("a", MaxTokenSize+1)
	tests := []struct {
		name       string
		fail       failingTarget // Target is filled in
		layer      string        // the token layer's bytes; raw if empty, unless emptyLayer
		emptyLayer bool
		// push attaches the referrer; pushReferrer (the way Attach does) if nil.
		push func(t *testing.T, repo *remote.Repository, subject ocispec.Descriptor, layer string)
		read bool  // the error must be a *ReadError
		is   error // what the error must wrap, if not nil
		want string
	}{
		{name: "manifest not served", fail: failingTarget{failMediaType: ocispec.MediaTypeImageManifest, err: down}, read: true, is: down, want: "token referrer sha256:"},
		{name: "token layer not served", fail: failingTarget{failMediaType: LayerMediaType, err: down}, read: true, is: down, want: "fetching the token layer sha256:"},
		{name: "referrers not listed", fail: failingTarget{listErr: down}, read: true, is: down, want: "listing referrers of sha256:"},
		{name: "token layer served with a byte changed", fail: failingTarget{failMediaType: LayerMediaType, alter: flipLast}, read: true, want: "reading the token layer sha256:"},
		{name: "token layer served cut short", fail: failingTarget{failMediaType: LayerMediaType, alter: dropLast}, read: true, want: "reading the token layer sha256:"},
		{name: "two layers", push: pushTwoLayers, want: "not a token referrer"},
		{name: "an image index, not an image manifest", push: crafted(ocispec.MediaTypeImageIndex, func(m map[string]any) { m["manifests"] = []any{} }),
			want: "unexpected manifest " + ocispec.MediaTypeImageIndex},
		{name: "manifest larger than 64 KiB", push: crafted(ocispec.MediaTypeImageManifest, func(m map[string]any) {
			m["annotations"] = map[string]string{"padding": strings.Repeat("p", maxManifestSize)}
		}), want: "unexpected manifest " + ocispec.MediaTypeImageManifest + " of "},
		// The registry lists it as a token referrer (artifactType from the config's mediaType).
		{name: "no artifactType", push: crafted(ocispec.MediaTypeImageManifest, func(m map[string]any) { delete(m, "artifactType") }),
			want: `not a token referrer (artifactType "", 1 layers)`},
		{name: "layer of another media type", push: crafted(ocispec.MediaTypeImageManifest, func(m map[string]any) {
			m["layers"].([]ocispec.Descriptor)[0].MediaType = "application/octet-stream"
		}), want: "not a token referrer"},
		{name: "empty token layer", emptyLayer: true, push: crafted(ocispec.MediaTypeImageManifest, nil), want: "token layer of 0 bytes"},
		{name: "token layer larger than MaxTokenSize", layer: big, push: crafted(ocispec.MediaTypeImageManifest, nil), want: fmt.Sprintf("token layer of %d bytes", len(big))},
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
			layer := tc.layer
			if layer == "" && !tc.emptyLayer {
				layer = raw
			}
			push := tc.push
			if push == nil {
				push = func(t *testing.T, repo *remote.Repository, subject ocispec.Descriptor, layer string) {
					pushReferrer(t, repo, subject, layer, nil)
				}
			}
			push(t, repo, subject, layer)
			target := tc.fail
			target.Target = repo
			ix := NewIndex(ctx, target, subject)
			if ix.Err() == nil && ix.Len() != 1 {
				t.Fatalf("listed %d token referrers, want the one attached", ix.Len())
			}
			f, errs := ix.Find(ctx, hexSHA256([]byte(layer)))
			if f != nil || len(errs) != 1 {
				t.Fatalf("Find = %+v, %v; want one error", f, errs)
			}
			var re *ReadError
			if errors.As(errs[0], &re) != tc.read || (tc.is != nil && !errors.Is(errs[0], tc.is)) || !strings.Contains(errs[0].Error(), tc.want) {
				t.Fatalf("error %v (a *ReadError: %v); want one containing %q that is a *ReadError: %v", errs[0], re != nil, tc.want, tc.read)
			}
		})
	}
}

// crafted returns a push function for TestFindErrors: it attaches a manifest of mediaType that is
// the token referrer Attach pushes, holding layer, changed by edit (its "layers" is a
// []ocispec.Descriptor).
func crafted(mediaType string, edit func(m map[string]any)) func(t *testing.T, repo *remote.Repository, subject ocispec.Descriptor, layer string) {
	return func(t *testing.T, repo *remote.Repository, subject ocispec.Descriptor, layer string) {
		t.Helper()
		ctx := context.Background()
		cfg, err := pushBlob(ctx, repo, ArtifactType, []byte("{}"))
		if err != nil {
			t.Fatal(err)
		}
		l, err := pushBlob(ctx, repo, LayerMediaType, []byte(layer))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]any{
			"schemaVersion": 2, "mediaType": mediaType, "artifactType": ArtifactType, "config": cfg,
			"layers": []ocispec.Descriptor{l}, "subject": subject,
			"annotations": map[string]string{AnnotationTokenSHA256: hexSHA256([]byte(layer))},
		}
		if edit != nil {
			edit(m)
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := repo.Push(ctx, content.NewDescriptorFromBytes(mediaType, b), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
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

// listingTarget answers a referrers listing with pages, and nothing else.
type listingTarget struct {
	Target
	pages [][]ocispec.Descriptor
}

func (l listingTarget) Referrers(_ context.Context, _ ocispec.Descriptor, _ string, fn func([]ocispec.Descriptor) error) error {
	for _, p := range l.pages {
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

// TestNewIndexTrims: the descriptors a listing keeps hold only what is read of them (media type,
// digest, size, artifact type and the token referrer's annotations, each at most 4 KiB), whatever
// the registry put in them: a hostile one could fill each page with megabytes of annotations,
// embedded data and URLs, and the listing keeps its descriptors while the referrers are read.
func TestNewIndexTrims(t *testing.T) {
	big := strings.Repeat("x", maxKeptAnnotation+1)
	d := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType, Size: 123,
		Digest: "sha256:" + digest.Digest(strings.Repeat("a", 64)),
		Data:   []byte(big), URLs: []string{big},
		Annotations: map[string]string{
			AnnotationTokenSHA256: strings.Repeat("b", 64), AnnotationCreated: "2026-01-01T00:00:00Z",
			AnnotationIssuer: big, "junk": big,
		},
	}
	ix := NewIndex(context.Background(), listingTarget{pages: [][]ocispec.Descriptor{{d}, {d}}}, ocispec.Descriptor{Digest: d.Digest})
	if ix.Err() != nil || ix.Len() != 2 {
		t.Fatalf("listing: %v, %d descriptors", ix.Err(), ix.Len())
	}
	want := ocispec.Descriptor{
		MediaType: d.MediaType, ArtifactType: d.ArtifactType, Size: d.Size, Digest: d.Digest,
		Annotations: map[string]string{AnnotationTokenSHA256: strings.Repeat("b", 64), AnnotationCreated: "2026-01-01T00:00:00Z"},
	}
	for _, got := range ix.descs {
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("kept %+v, want %+v", got, want)
		}
	}
	if got := Trim(ocispec.Descriptor{Digest: d.Digest}, AnnotationTokenSHA256); got.Annotations != nil {
		t.Fatalf("Trim made annotations: %+v", got)
	}
}
