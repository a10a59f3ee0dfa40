package referrer

import (
	"context"
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

func TestAttachAndList(t *testing.T) {
	for name, host := range registries(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			repo, err := remote.NewRepository(host + "/app")
			if err != nil {
				t.Fatal(err)
			}
			repo.PlainHTTP = true
			subject := pushImage(t, repo)
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
			found, errs := List(ctx, repo, subject)
			if len(errs) != 0 {
				t.Fatalf("List errors: %v", errs)
			}
			if len(found) != 2 {
				t.Fatalf("List found %d token referrers, want 2 (the same token attached twice is one)", len(found))
			}
			var got *Found
			for i := range found {
				if found[i].Descriptor.Digest == first.Digest {
					got = &found[i]
				}
			}
			if got == nil || got.Raw != tok.Raw || got.Annotations[AnnotationBinding] != tok.Binding || got.Annotations[AnnotationCreated] != "2026-11-25T01:02:03Z" {
				t.Fatalf("List = %+v", found)
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
