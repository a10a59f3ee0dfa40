package referrer

import (
	"bytes"
	"context"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/memory"
)

// memTarget is an in-memory repository; the referrers listing is not used by read.
type memTarget struct{ *memory.Store }

func (memTarget) Referrers(context.Context, ocispec.Descriptor, string, func([]ocispec.Descriptor) error) error {
	return nil
}

// FuzzReadReferrer feeds arbitrary manifests (registries are untrusted) to the referrer reader:
// it must never panic, and anything it accepts must be a one-layer token referrer whose layer
// bytes match their descriptor.
func FuzzReadReferrer(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.attested-kv.maa-token.v1+jwt","config":{"mediaType":"application/vnd.attested-kv.maa-token.v1+jwt","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/jwt","digest":"sha256:5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9","size":1}]}`), []byte("0"))
	f.Add([]byte(`{"layers":[{}]}`), []byte(""))
	f.Fuzz(func(t *testing.T, manifest, layer []byte) {
		ctx := context.Background()
		store := memTarget{memory.New()}
		ld := content.NewDescriptorFromBytes(LayerMediaType, layer)
		if len(layer) > 0 {
			store.Push(ctx, ld, bytes.NewReader(layer))
		}
		md := content.NewDescriptorFromBytes(ocispec.MediaTypeImageManifest, manifest)
		if err := store.Push(ctx, md, bytes.NewReader(manifest)); err != nil {
			return
		}
		got, err := read(ctx, store, md)
		if err != nil {
			return
		}
		// The store holds one blob besides the manifest, the layer: what read accepts is that
		// layer, whole, and its hash.
		if len(got.Raw) == 0 || len(got.Raw) > MaxTokenSize || got.Raw != string(layer) || got.SHA256 != hexSHA256(layer) {
			t.Fatalf("accepted a %d-byte token, SHA-256 %s, from a %d-byte layer", len(got.Raw), got.SHA256, len(layer))
		}
	})
}
