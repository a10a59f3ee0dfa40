package tpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
)

// The ephemeral key cache.
//
// The ephemeral key is a primary key of the NULL hierarchy, and a primary key is derived
// deterministically from its hierarchy's seed and its template (TPM 2.0 Part 1, "Primary
// Objects"). Its template is fixed except for the PolicyPCR authPolicy, so for one PCR state and
// one boot (the NULL seed changes at every TPM reset) TPM2_CreatePrimary returns the same key every
// time; AZGA relies on this when it creates the key a second time to decrypt MAA's answer. The
// derivation is an RSA prime search: about 90 ms on the reference simulator, often seconds on a
// discrete TPM, and the largest cost of an attestation.
//
// So after creating the key, the Device saves its context (TPM2_ContextSave) to the cache, and the
// next Evidence loads it (TPM2_ContextLoad, well under a millisecond) instead of deriving it again.
// This changes nothing in what the key is or can do:
//   - a saved context is encrypted and integrity-protected by the TPM under a key derived from the
//     hierarchy's proof value; it loads only into the TPM that saved it, and a NULL-hierarchy
//     context stops loading at the next TPM reset (TPM 2.0 Part 1, "Context Management");
//   - the loaded object's public area is compared with the template for the current PCR state and
//     with the cached public area, so a context of any other object (another template, another
//     policy, another hierarchy) is refused and the key is derived afresh;
//   - the key still decrypts only under PolicyPCR for the quoted PCR values.
//
// Any failure to read, parse, load or match the cache falls back to TPM2_CreatePrimary, which is
// what would have run anyway: the cache can make an attestation faster, never let one through.
//
// UNCONFIRMED: that the Linux kernel resource manager (/dev/tpmrm0) maps the handle TPM2_ContextLoad
// returns into the caller's space (its response-handle mapping suggests so). If it does not, the
// ReadPublic check below fails and the key is derived afresh.

// maxKeyCacheFile bounds the cache file: a TPM2B_PUBLIC of an RSA-2048 key and a TPMS_CONTEXT.
const maxKeyCacheFile = 8 << 10

// keyCacheMagic starts a cache file (format version 1).
var keyCacheMagic = []byte("attested-kv ephemeral key context v1\n")

// WithEphemeralKeyCache keeps the ephemeral key's saved TPM context in dir (created with mode
// 0700; files 0600) so that the next attestation loads the key instead of deriving it again. ""
// (the default) disables the cache.
func WithEphemeralKeyCache(dir string) Option { return func(d *Device) { d.keyCacheDir = dir } }

// keyCachePath is the cache file for the ephemeral key whose authPolicy is policy.
func (d *Device) keyCachePath(policy []byte) string {
	sum := sha256.Sum256(policy)
	return filepath.Join(d.keyCacheDir, "ephemeral-"+hex.EncodeToString(sum[:8])+".ctx")
}

// ephemeralKey returns the ephemeral key for the PCR state (sel, pcrDigest), loaded from the cache
// when it holds that key, derived with TPM2_CreatePrimary otherwise.
func (d *Device) ephemeralKey(sel tpm2.TPMLPCRSelection, pcrDigest []byte) (*ephemeralKey, error) {
	policy, err := PolicyPCRDigest(sel, pcrDigest)
	if err != nil {
		return nil, fmt.Errorf("ephemeral key policy: %w", err)
	}
	if d.keyCacheDir == "" {
		return createEphemeralKey(d.t, policy)
	}
	path := d.keyCachePath(policy)
	key, err := loadCachedKey(d.t, path, EphemeralKeyTemplate(policy))
	if err == nil {
		d.log.Debug("ephemeral key loaded from the cache", "path", path)
		return key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		d.log.Debug("ephemeral key cache not used; deriving the key", "path", path, "err", err)
	}
	if key, err = createEphemeralKey(d.t, policy); err != nil {
		return nil, err
	}
	if err := saveCachedKey(d.t, path, key); err != nil {
		d.log.Debug("ephemeral key cache not written", "path", path, "err", err)
	}
	return key, nil
}

// saveCachedKey writes the public area and saved context of key to path.
func saveCachedKey(t transport.TPM, path string, key *ephemeralKey) error {
	rsp, err := tpm2.ContextSave{SaveHandle: key.handle}.Execute(t)
	if err != nil {
		return fmt.Errorf("saving the key's context: %w", err)
	}
	data := encodeKeyCache(key.pub, tpm2.Marshal(rsp.Context))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}

// encodeKeyCache lays out a cache file: magic, TPM2B_PUBLIC, TPMS_CONTEXT.
func encodeKeyCache(pub, ctx []byte) []byte {
	return append(append(bytes.Clone(keyCacheMagic), pub...), ctx...)
}

// decodeKeyCache parses a cache file into the key's TPM2B_PUBLIC (as bytes and parsed) and its
// saved context. It checks framing only; loadCachedKey checks the content.
func decodeKeyCache(data []byte) (pubBytes []byte, pub *tpm2.TPMTPublic, ctx *tpm2.TPMSContext, err error) {
	rest, ok := bytes.CutPrefix(data, keyCacheMagic)
	if !ok {
		return nil, nil, nil, errors.New("not an ephemeral key cache file")
	}
	if len(rest) < 2 {
		return nil, nil, nil, io.ErrUnexpectedEOF
	}
	n := 2 + int(binary.BigEndian.Uint16(rest))
	if len(rest) < n {
		return nil, nil, nil, io.ErrUnexpectedEOF
	}
	pubBytes, rest = rest[:n], rest[n:]
	p2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pubBytes)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("public area: %w", err)
	}
	if pub, err = p2b.Contents(); err != nil {
		return nil, nil, nil, fmt.Errorf("public area: %w", err)
	}
	if ctx, err = tpm2.Unmarshal[tpm2.TPMSContext](rest); err != nil {
		return nil, nil, nil, fmt.Errorf("context: %w", err)
	}
	if !bytes.Equal(tpm2.Marshal(ctx), rest) {
		return nil, nil, nil, errors.New("context: trailing bytes")
	}
	return pubBytes, pub, ctx, nil
}

// loadCachedKey loads the cached key at path if it is a NULL-hierarchy object of template (its
// unique field aside), and checks that the TPM loaded exactly that object.
func loadCachedKey(t transport.TPM, path string, template tpm2.TPMTPublic) (*ephemeralKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyCacheFile+1))
	f.Close()
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyCacheFile {
		return nil, errors.New("cache file too large")
	}
	pubBytes, pub, saved, err := decodeKeyCache(data)
	if err != nil {
		return nil, err
	}
	if err := matchesTemplate(pub, template); err != nil {
		return nil, err
	}
	if saved.Hierarchy != tpm2.TPMRHNull {
		return nil, fmt.Errorf("context of hierarchy %#x, want the NULL hierarchy", saved.Hierarchy)
	}
	loaded, err := tpm2.ContextLoad{Context: *saved}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("loading the context (stale after a TPM reset): %w", err)
	}
	h := loaded.LoadedHandle
	rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t)
	if err != nil {
		flush(t, h)
		return nil, fmt.Errorf("reading the loaded key: %w", err)
	}
	if got := tpm2.Marshal(rp.OutPublic); !bytes.Equal(got, pubBytes) {
		flush(t, h)
		return nil, errors.New("the TPM loaded another object than the cached public area")
	}
	return &ephemeralKey{handle: h, name: rp.Name, pub: pubBytes}, nil
}

// matchesTemplate checks that pub is template with some unique value: the same type, name
// algorithm, attributes, policy and parameters.
func matchesTemplate(pub *tpm2.TPMTPublic, template tpm2.TPMTPublic) error {
	rsa, err := pub.Unique.RSA()
	if err != nil || len(rsa.Buffer) != 256 {
		return errors.New("cached key is not an RSA-2048 key")
	}
	p := *pub
	p.Unique = template.Unique
	if !bytes.Equal(tpm2.Marshal(p), tpm2.Marshal(template)) {
		return errors.New("cached key is not the ephemeral key for the current PCR values")
	}
	return nil
}

// KeyCacheOff is the key-cache setting that disables the ephemeral key cache.
const KeyCacheOff = "off"

// ResolveKeyCacheDir turns a key-cache setting into WithEphemeralKeyCache's directory: "" is the
// default, $XDG_CACHE_HOME/attested-kv/tpm (or ~/.cache/attested-kv/tpm), or no cache when the
// user has no cache directory; KeyCacheOff is no cache; anything else is the directory itself.
func ResolveKeyCacheDir(setting string) string {
	switch setting {
	case KeyCacheOff:
		return ""
	case "":
		base, err := os.UserCacheDir()
		if err != nil {
			return ""
		}
		return filepath.Join(base, "attested-kv", "tpm")
	default:
		return setting
	}
}
