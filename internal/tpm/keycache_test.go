package tpm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
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
	got, err := dev.DecryptWithEphemeralKey(context.Background(), ev.EncKeyPub, wrapped)
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

// countingTPM counts the commands sent through it, by command code.
type countingTPM struct {
	transport.TPMCloser
	mu sync.Mutex
	n  map[tpm2.TPMCC]int
}

func (c *countingTPM) Send(cmd []byte) ([]byte, error) {
	if len(cmd) >= HeaderSize {
		c.mu.Lock()
		c.n[tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))]++
		c.mu.Unlock()
	}
	return c.TPMCloser.Send(cmd)
}

func (c *countingTPM) count(cc tpm2.TPMCC) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[cc]
}

// currentPolicy is the ephemeral key's authPolicy for the PCR values of x now.
func currentPolicy(t *testing.T, x *testTPM) []byte {
	t.Helper()
	pcrs, err := readPCRs(x.t, AzurePCRs)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := PolicyPCRDigest(pcrSelection(AzurePCRs), digestPCRs(pcrs))
	if err != nil {
		t.Fatal(err)
	}
	return policy
}

// savedContextFile saves the context of the loaded object h, flushes it and returns a cache file
// holding it under the public area pub.
func savedContextFile(t *testing.T, x *testTPM, h tpm2.TPMHandle, pub tpm2.TPM2BPublic) []byte {
	t.Helper()
	saved, err := tpm2.ContextSave{SaveHandle: h}.Execute(x.t)
	if err != nil {
		t.Fatalf("ContextSave: %v", err)
	}
	if err := flush(x.t, h); err != nil {
		t.Fatal(err)
	}
	return encodeKeyCache(tpm2.Marshal(pub), tpm2.Marshal(saved.Context))
}

// plantChild creates a key of the ephemeral key's template and policy under a NULL-hierarchy
// parent of the test's own, with authValue auth, and returns a cache file of its context: what
// whoever can write the cache directory and use the TPM can plant.
func plantChild(t *testing.T, x *testTPM, policy, auth []byte) []byte {
	t.Helper()
	parent, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHNull, InPublic: tpm2.New2B(tpm2.RSASRKTemplate)}.Execute(x.t)
	if err != nil {
		t.Fatal(err)
	}
	defer flush(x.t, parent.ObjectHandle)
	ph := tpm2.AuthHandle{Handle: parent.ObjectHandle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)}
	created, err := tpm2.Create{
		ParentHandle: ph,
		InSensitive:  tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: auth}}},
		InPublic:     tpm2.New2B(EphemeralKeyTemplate(policy)),
	}.Execute(x.t)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	loaded, err := tpm2.Load{ParentHandle: ph, InPrivate: created.OutPrivate, InPublic: created.OutPublic}.Execute(x.t)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return savedContextFile(t, x, loaded.ObjectHandle, created.OutPublic)
}

// plantExternal loads the public area of a key of the ephemeral key's template and policy whose
// private key the test holds (LoadExternal, NULL hierarchy) and returns a cache file of it.
func plantExternal(t *testing.T, x *testTPM, policy []byte) []byte {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := EphemeralKeyTemplate(policy)
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: priv.N.Bytes()})
	le, err := tpm2.LoadExternal{InPublic: tpm2.New2B(tmpl), Hierarchy: tpm2.TPMRHNull}.Execute(x.t)
	if err != nil {
		t.Fatalf("LoadExternal: %v", err)
	}
	return savedContextFile(t, x, le.ObjectHandle, tpm2.New2B(tmpl))
}

// plantPrimaryWithAuth derives the ephemeral key itself (same template: same key, same Name, same
// Qualified Name) but with a non-empty authValue, and returns a cache file of it.
func plantPrimaryWithAuth(t *testing.T, x *testTPM, policy []byte) []byte {
	t.Helper()
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHNull,
		InSensitive:   tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: []byte("not empty")}}},
		InPublic:      tpm2.New2B(EphemeralKeyTemplate(policy)),
	}.Execute(x.t)
	if err != nil {
		t.Fatal(err)
	}
	return savedContextFile(t, x, rsp.ObjectHandle, rsp.OutPublic)
}

// evidenceWithin runs Evidence and fails the test if it has not returned within limit; unblock
// then releases it so that the test can end.
func evidenceWithin(t *testing.T, dev *Device, limit time.Duration, unblock func()) (*Evidence, error) {
	t.Helper()
	type result struct {
		ev  *Evidence
		err error
	}
	done := make(chan result, 1)
	go func() {
		ev, err := dev.Evidence(context.Background())
		done <- result{ev, err}
	}()
	select {
	case r := <-done:
		return r.ev, r.err
	case <-time.After(limit):
		if unblock != nil {
			unblock()
		}
		<-done
		t.Fatalf("Evidence still running after %v", limit)
		return nil, nil
	}
}

// TestEphemeralKeyCacheRecoversFromPlantedEntries plants, at the cache path of the current PCR
// state, what whoever can write the cache directory and use the TPM can put there. Each must cost
// at most one derivation of the key: Evidence succeeds, promptly, with the derived key (never the
// planted one), derives it exactly once, and the cache works again at the next attestation.
func TestEphemeralKeyCacheRecoversFromPlantedEntries(t *testing.T) {
	writeFile := func(t *testing.T, path string, data []byte) {
		t.Helper()
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// linkTarget is the valid cache file the symbolic link case links to.
	var linkTarget string
	tests := []struct {
		name string
		// plant puts an entry at path, the cache path for policy, the current PCR state of x.
		plant func(t *testing.T, x *testTPM, policy []byte, path string)
		// refused: the planted key loads and then fails (certification), so its file is removed
		// and a second TPM2_Certify runs; otherwise the entry is a cache miss.
		refused bool
		// log is the reason the debug log must give.
		log string
		// healed: the next attestation loads the key from the cache.
		healed bool
		// after checks the cache path after both attestations.
		after func(t *testing.T, path string)
	}{
		{
			name: "child key with an authValue",
			plant: func(t *testing.T, x *testTPM, policy []byte, path string) {
				writeFile(t, path, plantChild(t, x, policy, []byte("attacker")))
			},
			refused: true, log: "TPM_RC_BAD_AUTH", healed: true,
		},
		{
			name: "public-only LoadExternal object",
			plant: func(t *testing.T, x *testTPM, policy []byte, path string) {
				writeFile(t, path, plantExternal(t, x, policy))
			},
			refused: true, log: "TPM_RC_AUTH_UNAVAILABLE", healed: true,
		},
		{
			name: "child key without an authValue",
			plant: func(t *testing.T, x *testTPM, policy []byte, path string) {
				writeFile(t, path, plantChild(t, x, policy, nil))
			},
			refused: true, log: "not a primary key of the NULL hierarchy", healed: true,
		},
		{
			name: "the ephemeral key itself, with an authValue",
			plant: func(t *testing.T, x *testTPM, policy []byte, path string) {
				writeFile(t, path, plantPrimaryWithAuth(t, x, policy))
			},
			refused: true, log: "TPM_RC_BAD_AUTH", healed: true,
		},
		{
			name: "FIFO",
			plant: func(t *testing.T, _ *testTPM, _ []byte, path string) {
				if err := syscall.Mkfifo(path, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			log: "not a regular file", healed: true,
		},
		{
			name: "symbolic link to a valid cache file",
			plant: func(t *testing.T, x *testTPM, policy []byte, path string) {
				// The ephemeral key's own cache file, written by another Device.
				valid, _ := cacheDevice(x, t.TempDir())
				roundTrip(t, valid)
				linkTarget = valid.keyCachePath(policy)
				if err := os.Symlink(linkTarget, path); err != nil {
					t.Fatal(err)
				}
			},
			log: "symbolic link", healed: true,
			after: func(t *testing.T, path string) {
				if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
					t.Fatalf("cache path after the attestation: %v %v, want the regular file written", fi.Mode(), err)
				}
				if fi, err := os.Lstat(linkTarget); err != nil || !fi.Mode().IsRegular() {
					t.Fatalf("link target: %v %v, want it untouched", fi.Mode(), err)
				}
			},
		},
		{
			name: "directory",
			plant: func(t *testing.T, _ *testTPM, _ []byte, path string) {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(path, "keep"), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			log: "not a regular file", healed: false,
			after: func(t *testing.T, path string) {
				if _, err := os.Stat(filepath.Join(path, "keep")); err != nil {
					t.Fatalf("the directory at the cache path was touched: %v", err)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x, _, _ := provisioned(t, "")
			policy := currentPolicy(t, x)
			want := roundTrip(t, New(x.t, WithEventLogPath(""))).EncKeyPub
			dir := t.TempDir()
			var log bytes.Buffer
			l := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
			ct := &countingTPM{TPMCloser: x.t, n: map[tpm2.TPMCC]int{}}
			dev := New(ct, WithEventLogPath(""), WithEphemeralKeyCache(dir), WithLogger(l))
			path := dev.keyCachePath(policy)
			tc.plant(t, x, policy, path)

			// Opening a FIFO for reading blocks until a writer comes: the unblock is the writer.
			ev, err := evidenceWithin(t, dev, 10*time.Second, func() {
				if f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
			})
			if err != nil {
				t.Fatalf("Evidence: %v\n%s", err, log.String())
			}
			if !bytes.Equal(ev.EncKeyPub, want) {
				t.Fatal("the evidence carries another key than the derived ephemeral key")
			}
			if cacheHit(&log) || !strings.Contains(log.String(), tc.log) {
				t.Fatalf("debug log does not give the reason %q:\n%s", tc.log, log.String())
			}
			if tc.refused != strings.Contains(log.String(), "cached ephemeral key refused") {
				t.Fatalf("refused = %v, want %v:\n%s", !tc.refused, tc.refused, log.String())
			}
			wantCertify := 1
			if tc.refused {
				wantCertify = 2
			}
			if n, c := ct.count(tpm2.TPMCCCreatePrimary), ct.count(tpm2.TPMCCCertify); n != 1 || c != wantCertify {
				t.Fatalf("%d CreatePrimary and %d Certify, want 1 and %d", n, c, wantCertify)
			}
			// Only the ephemeral key is left loaded, for the decryption.
			if hs := transientHandles(t, x.t); len(hs) != 1 {
				t.Fatalf("transient handles %v, want the ephemeral key alone", hs)
			}
			dev.dropEphemeral()

			log.Reset()
			roundTrip(t, dev)
			if cacheHit(&log) != tc.healed {
				t.Fatalf("next attestation: cache hit %v, want %v:\n%s", !tc.healed, tc.healed, log.String())
			}
			if hs := transientHandles(t, x.t); len(hs) != 0 {
				t.Fatalf("transient handles left: %v", hs)
			}
			if tc.after != nil {
				tc.after(t, path)
			}
		})
	}
}

// TestNullPrimaryQualifiedName checks the Qualified Name the cache relies on against the one the
// TPM itself reports (TPM2_ReadPublic): a NULL-hierarchy primary has it; a primary of another
// hierarchy, a child of a NULL-hierarchy key and an external object with the same kind of Name
// have another.
func TestNullPrimaryQualifiedName(t *testing.T) {
	x := newSim(t)
	policy := make([]byte, 32)
	primary := func(h tpm2.TPMHandle) func(t *testing.T) tpm2.TPMHandle {
		return func(t *testing.T) tpm2.TPMHandle {
			rsp, err := tpm2.CreatePrimary{PrimaryHandle: h, InPublic: tpm2.New2B(EphemeralKeyTemplate(policy))}.Execute(x.t)
			if err != nil {
				t.Fatal(err)
			}
			return rsp.ObjectHandle
		}
	}
	load := func(file func(t *testing.T) []byte) func(t *testing.T) tpm2.TPMHandle {
		return func(t *testing.T) tpm2.TPMHandle {
			_, _, saved, err := decodeKeyCache(file(t))
			if err != nil {
				t.Fatal(err)
			}
			rsp, err := tpm2.ContextLoad{Context: *saved}.Execute(x.t)
			if err != nil {
				t.Fatal(err)
			}
			return rsp.LoadedHandle
		}
	}
	tests := []struct {
		name   string
		object func(t *testing.T) tpm2.TPMHandle
		want   bool
	}{
		{"primary of the NULL hierarchy", primary(tpm2.TPMRHNull), true},
		{"primary of the owner hierarchy", primary(tpm2.TPMRHOwner), false},
		{"primary of the endorsement hierarchy", primary(tpm2.TPMRHEndorsement), false},
		{"child of a NULL-hierarchy key", load(func(t *testing.T) []byte { return plantChild(t, x, policy, nil) }), false},
		{"external object", load(func(t *testing.T) []byte { return plantExternal(t, x, policy) }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.object(t)
			defer flush(x.t, h)
			rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(x.t)
			if err != nil {
				t.Fatal(err)
			}
			got := nullPrimaryQualifiedName(rp.Name.Buffer)
			if bytes.Equal(rp.QualifiedName.Buffer, got) != tc.want {
				t.Fatalf("TPM's qualified name %x, computed %x: equal = %v, want %v", rp.QualifiedName.Buffer, got, !tc.want, tc.want)
			}
		})
	}
}

// TestCheckCertification alters a genuine certification of the ephemeral key in each of the ways
// checkCertification must notice, and gives it the genuine certification of a child key and a
// genuine quote. Each refusal must name the check that made it: several alterations would also
// fail a later check, which must not be what catches them.
func TestCheckCertification(t *testing.T) {
	x, _, _ := provisioned(t, "")
	ak, err := readAK(x.t)
	if err != nil {
		t.Fatal(err)
	}
	key, err := createEphemeralKey(x.t, currentPolicy(t, x))
	if err != nil {
		t.Fatal(err)
	}
	defer flush(x.t, key.handle)
	ck, err := certify(x.t, key, ak)
	if err != nil {
		t.Fatalf("certify: %v", err)
	}
	other, err := createEphemeralKey(x.t, make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	flush(x.t, other.handle)

	// A genuine certification of a child key of the same template: only its Qualified Name tells.
	pubBytes, _, saved, err := decodeKeyCache(plantChild(t, x, currentPolicy(t, x), nil))
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := tpm2.ContextLoad{Context: *saved}.Execute(x.t)
	if err != nil {
		t.Fatal(err)
	}
	defer flush(x.t, loaded.LoadedHandle)
	childName, err := publicName(pubBytes)
	if err != nil {
		t.Fatal(err)
	}
	child := ephemeralKey{handle: loaded.LoadedHandle, name: tpm2.TPM2BName{Buffer: childName}, pub: pubBytes}
	childCert, err := tpm2.Certify{
		ObjectHandle: tpm2.AuthHandle{Handle: child.handle, Name: child.name, Auth: tpm2.PasswordAuth(nil)},
		SignHandle:   tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
		InScheme:     tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(x.t)
	if err != nil {
		t.Fatal(err)
	}
	childSig, err := childCert.Signature.Signature.RSASSA()
	if err != nil {
		t.Fatal(err)
	}

	// A genuine quote: the AK's signature over a TPMS_ATTEST of another type.
	q, err := quote(x.t, ak, pcrSelection(AzurePCRs))
	if err != nil {
		t.Fatalf("quote: %v", err)
	}

	flip := func(b []byte, i int) []byte { b = bytes.Clone(b); b[i] ^= 1; return b }
	// says is what the error must say: the check that refused it, not only ErrCertify.
	const (
		badSig   = "signature: crypto/rsa: verification error"
		badName  = "it certifies Name"
		notNull  = "not a primary key of the NULL hierarchy"
		notCerti = "not a CERTIFY attestation"
	)
	tests := []struct {
		name      string
		info, sig []byte
		key       ephemeralKey
		says      string // "" = accepted
	}{
		{"genuine", ck.info, ck.sig, *key, ""},
		{"signature altered", ck.info, flip(ck.sig, 10), *key, badSig},
		{"attestation altered", flip(ck.info, len(ck.info)-1), ck.sig, *key, badSig},
		// The key presented is another one, consistent in itself (its public area has the Name the
		// TPM reports for it): only the Name the AK certified tells.
		{"certification of another key", ck.info, ck.sig, *other, badName},
		{"public area of another key", ck.info, ck.sig, ephemeralKey{handle: key.handle, name: key.name, pub: other.pub}, badName},
		{"TPM names the loaded key otherwise", ck.info, ck.sig, ephemeralKey{handle: key.handle, name: other.name, pub: key.pub}, badName},
		{"child of a NULL-hierarchy key", childCert.CertifyInfo.Bytes(), childSig.Sig.Buffer, child, notNull},
		// Signed by the AK, but a quote, not a certification.
		{"quote given as the certification", q.Quote, q.QuoteSignature, *key, notCerti},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkCertification(tc.info, tc.sig, &tc.key, ak)
			if tc.says == "" {
				if err != nil {
					t.Fatalf("checkCertification: %v, want it accepted", err)
				}
				return
			}
			if !errors.Is(err, ErrCertify) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("checkCertification: %v, want ErrCertify saying %q", err, tc.says)
			}
		})
	}
}
