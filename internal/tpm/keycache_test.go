package tpm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// cacheDevice returns a Device on x with the ephemeral key cache in dir and its debug log.
func cacheDevice(x *testTPM, dir string) (*Device, *bytes.Buffer) {
	var log bytes.Buffer
	l := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return New(x.t, WithEventLogPath(""), WithEphemeralKeyCache(dir), WithLogger(l)), &log
}

// roundTrip gathers evidence and decrypts a value encrypted to its ephemeral key.
func roundTrip(t *testing.T, dev *Device) *Evidence {
	t.Helper()
	ev, err := dev.Evidence(context.Background())
	if err != nil {
		t.Fatalf("Evidence: %v", err)
	}
	p2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](ev.EncKeyPub)
	if err != nil {
		t.Fatal(err)
	}
	area, err := p2b.Contents()
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpm2.Pub(*area)
	if err != nil {
		t.Fatal(err)
	}
	//lint:ignore SA1019 RSAES-PKCS1-v1_5 is MAA's wire format for the token key (see internal/maa/wire.go)
	wrapped, err := rsa.EncryptPKCS1v15(rand.Reader, key.(*rsa.PublicKey), []byte("transport key"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := dev.DecryptWithEphemeralKey(context.Background(), wrapped)
	if err != nil {
		t.Fatalf("DecryptWithEphemeralKey: %v", err)
	}
	if string(got) != "transport key" {
		t.Fatalf("decrypted %q", got)
	}
	return ev
}

// cacheHit reports whether the Device logged a key loaded from the cache.
func cacheHit(log *bytes.Buffer) bool { return strings.Contains(log.String(), "loaded from the cache") }

func cacheFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "ephemeral-*.ctx"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestEphemeralKeyCache(t *testing.T) {
	x, _, _ := provisioned(t, "")
	dir := filepath.Join(t.TempDir(), "cache")
	dev, log := cacheDevice(x, dir)

	first := roundTrip(t, dev)
	files := cacheFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("cache files %v, want one", files)
	}
	if fi, err := os.Stat(files[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache file mode: %v %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("cache dir mode: %v %v", fi.Mode(), err)
	}
	if cacheHit(log) {
		t.Fatal("first evidence claims a cache hit")
	}

	log.Reset()
	second := roundTrip(t, dev)
	if !cacheHit(log) {
		t.Fatalf("second evidence did not use the cache:\n%s", log.String())
	}
	if !bytes.Equal(first.EncKeyPub, second.EncKeyPub) {
		t.Fatal("the cached key differs from the derived one")
	}
	if hs := transientHandles(t, x.t); len(hs) != 0 {
		t.Fatalf("transient handles left after decryption: %v", hs)
	}

	// Another PCR state: another key, another file; the old one is not used for it.
	extendPCR(t, x.t, 4, "another kernel")
	log.Reset()
	third := roundTrip(t, dev)
	if cacheHit(log) || bytes.Equal(third.EncKeyPub, first.EncKeyPub) {
		t.Fatal("a key of another PCR state was used")
	}
	if n := len(cacheFiles(t, dir)); n != 2 {
		t.Fatalf("%d cache files, want 2", n)
	}

	// A TPM reset changes the NULL seed: the saved context no longer loads and the key is derived
	// afresh (the PCRs are reset too, back to the first state's file).
	if err := x.sim.Reset(); err != nil {
		t.Fatal(err)
	}
	log.Reset()
	fourth := roundTrip(t, dev)
	if cacheHit(log) || !strings.Contains(log.String(), "cache not used") {
		t.Fatalf("a context saved before the TPM reset was used:\n%s", log.String())
	}
	if bytes.Equal(fourth.EncKeyPub, first.EncKeyPub) {
		t.Fatal("the key survived the TPM reset")
	}
	log.Reset()
	roundTrip(t, dev)
	if !cacheHit(log) {
		t.Fatal("the cache was not rewritten after the reset")
	}
}

// TestEphemeralKeyCacheRefusesOtherObjects plants contexts of other objects, and broken files,
// where the cache file of the current PCR state belongs: each is refused, the key is derived
// afresh, and the attestation works with the right key.
func TestEphemeralKeyCacheRefusesOtherObjects(t *testing.T) {
	x, _, _ := provisioned(t, "")
	sel := pcrSelection(AzurePCRs)
	pcrs, err := readPCRs(x.t, AzurePCRs)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := PolicyPCRDigest(sel, digestPCRs(pcrs))
	if err != nil {
		t.Fatal(err)
	}
	want := roundTrip(t, New(x.t, WithEventLogPath(""))).EncKeyPub

	// plant creates an object from template in hierarchy h and returns a cache file for it.
	plant := func(t *testing.T, h tpm2.TPMHandle, template tpm2.TPMTPublic) []byte {
		t.Helper()
		rsp, err := tpm2.CreatePrimary{PrimaryHandle: h, InPublic: tpm2.New2B(template)}.Execute(x.t)
		if err != nil {
			t.Fatal(err)
		}
		defer flush(x.t, rsp.ObjectHandle)
		saved, err := tpm2.ContextSave{SaveHandle: rsp.ObjectHandle}.Execute(x.t)
		if err != nil {
			t.Fatal(err)
		}
		return encodeKeyCache(tpm2.Marshal(rsp.OutPublic), tpm2.Marshal(saved.Context))
	}
	usable := EphemeralKeyTemplate(policy)
	usable.ObjectAttributes.UserWithAuth = true // usable with its (empty) password: no PCR binding
	otherPolicy := EphemeralKeyTemplate(make([]byte, 32))
	owner := EphemeralKeyTemplate(policy)

	tests := []struct {
		name string
		file func(t *testing.T) []byte
	}{
		{"key usable without the policy", func(t *testing.T) []byte { return plant(t, tpm2.TPMRHNull, usable) }},
		{"key of another policy", func(t *testing.T) []byte { return plant(t, tpm2.TPMRHNull, otherPolicy) }},
		{"key of the owner hierarchy", func(t *testing.T) []byte { return plant(t, tpm2.TPMRHOwner, owner) }},
		{"public area of the right key, context of another", func(t *testing.T) []byte {
			good := plant(t, tpm2.TPMRHNull, EphemeralKeyTemplate(policy))
			bad := plant(t, tpm2.TPMRHNull, otherPolicy)
			pub, _, _, err := decodeKeyCache(good)
			if err != nil {
				t.Fatal(err)
			}
			_, _, ctx, err := decodeKeyCache(bad)
			if err != nil {
				t.Fatal(err)
			}
			return encodeKeyCache(pub, tpm2.Marshal(ctx))
		}},
		{"context blob altered", func(t *testing.T) []byte {
			f := plant(t, tpm2.TPMRHNull, EphemeralKeyTemplate(policy))
			f[len(f)-5] ^= 1
			return f
		}},
		{"truncated", func(t *testing.T) []byte {
			f := plant(t, tpm2.TPMRHNull, EphemeralKeyTemplate(policy))
			return f[:len(f)-7]
		}},
		{"not a cache file", func(*testing.T) []byte { return []byte("hello") }},
		{"too large", func(*testing.T) []byte { return make([]byte, maxKeyCacheFile+1) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			dev, log := cacheDevice(x, dir)
			path := dev.keyCachePath(policy)
			if err := os.WriteFile(path, tc.file(t), 0o600); err != nil {
				t.Fatal(err)
			}
			ev := roundTrip(t, dev)
			if cacheHit(log) || !strings.Contains(log.String(), "cache not used") {
				t.Fatalf("planted cache file used:\n%s", log.String())
			}
			if !bytes.Equal(ev.EncKeyPub, want) {
				t.Fatal("evidence carries another key than the derived ephemeral key")
			}
			if hs := transientHandles(t, x.t); len(hs) != 0 {
				t.Fatalf("transient handles left: %v", hs)
			}
			// The planted file was replaced by the right key's context.
			log.Reset()
			roundTrip(t, dev)
			if !cacheHit(log) {
				t.Fatal("cache not rewritten")
			}
		})
	}
}

func TestEphemeralKeyCacheOff(t *testing.T) {
	x, _, _ := provisioned(t, "")
	dev, log := cacheDevice(x, "")
	roundTrip(t, dev)
	roundTrip(t, dev)
	if strings.Contains(log.String(), "cache") {
		t.Fatalf("the cache was used while off:\n%s", log.String())
	}
}

func FuzzDecodeKeyCache(f *testing.F) {
	f.Add(encodeKeyCache([]byte{0, 0}, nil))
	f.Add([]byte("attested-kv ephemeral key context v1\n\x00\x04abcd"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		pubBytes, pub, ctx, err := decodeKeyCache(data)
		if err != nil {
			return
		}
		if pub == nil || ctx == nil {
			t.Fatal("nil result without an error")
		}
		if !bytes.Equal(encodeKeyCache(pubBytes, tpm2.Marshal(ctx)), data) {
			t.Fatal("decode/encode does not round-trip")
		}
	})
}
