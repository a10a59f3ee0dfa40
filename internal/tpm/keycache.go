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
// So after creating and certifying the key, the Device saves its context (TPM2_ContextSave) to the
// cache, and the next Evidence loads it (TPM2_ContextLoad, well under a millisecond) instead of
// deriving it again. This changes nothing in what the key is or can do:
//   - a saved context is encrypted and integrity-protected by the TPM under a key derived from the
//     hierarchy's proof value; it loads only into the TPM that saved it, and a NULL-hierarchy
//     context stops loading at the next TPM reset (TPM 2.0 Part 1, "Context Management");
//   - the loaded object's public area is compared with the template for the current PCR state and
//     with the cached public area, so a context of an object of another template, policy or
//     hierarchy is refused before it is certified;
//   - whoever can write the cache directory and use the TPM can still save a context of their own
//     object with that public area: a child of their own NULL-hierarchy key (with an authValue, or
//     without), or a public-only LoadExternal object. So the AK's certification of the loaded key
//     is checked like that of a derived one (checkCertification): the Name it certifies is the
//     cached public area's, and its Qualified Name, which the TPM computes from the object's
//     ancestry, is that of a primary key of the NULL hierarchy. Only this TPM's CreatePrimary
//     makes such an object: a key of the template's attributes and policy, generated and held by
//     this TPM, with an empty authValue since the TPM certified it under one. (It can differ from
//     the derived key if its creator passed another unique value as entropy; that changes nothing
//     in what it can do);
//   - the key still decrypts only under PolicyPCR for the quoted PCR values.
//
// Any failure to read, parse, load or match the cache falls back to TPM2_CreatePrimary, which is
// what would have run anyway. So does any failure after the cached key is loaded (the TPM refuses
// to certify it, or the certification does not check out): the key is flushed, the cache file
// removed and the key derived afresh, once; a bad file costs one derivation, never an attestation.
// The cache can make an attestation faster; it can neither let one through nor make one fail.
//
// The cache file is opened without following a symbolic link and without blocking (a FIFO would
// block an open for reading until a writer came), and read only if it is a regular file of at
// most maxKeyCacheFile bytes. Anything else at its path is a cache miss: it is not removed, and
// the atomic write of the derived key's context replaces the entry (never what a link points to).
//
// The Linux kernel resource manager (/dev/tpmrm0) maps the handle TPM2_ContextLoad returns into
// the caller's space: tpm2_map_response_header (drivers/char/tpm/tpm2-space.c) maps the returned
// transient handle of every command whose attributes have rHandle, as TPM2_ContextLoad's do (it
// returns loadedHandle). Not run against a kernel TPM here (the tests use a simulator); were it
// otherwise, the ReadPublic check below would fail and the key would be derived afresh.

// maxKeyCacheFile bounds the cache file: a TPM2B_PUBLIC of an RSA-2048 key and a TPMS_CONTEXT.
const maxKeyCacheFile = 8 << 10

// keyCacheMagic starts a cache file (format version 1).
var keyCacheMagic = []byte("attested-kv ephemeral key context v1\n")

// WithEphemeralKeyCache keeps the ephemeral key's saved TPM context in dir (created with mode
// 0700; files 0600) so that the next attestation loads the key instead of deriving it again. A
// cached key is used only if the AK's certification shows it is this TPM's NULL-hierarchy primary
// key for the current PCR values. Any cache entry that cannot be used is passed over and the key
// derived again; one that loads but fails its certification is also removed.
// "" (the default) disables the cache.
func WithEphemeralKeyCache(dir string) Option { return func(d *Device) { d.keyCacheDir = dir } }

// keyCachePath is the cache file for the ephemeral key whose authPolicy is policy.
func (d *Device) keyCachePath(policy []byte) string {
	sum := sha256.Sum256(policy)
	return filepath.Join(d.keyCacheDir, "ephemeral-"+hex.EncodeToString(sum[:8])+".ctx")
}

// ephemeralKey returns the ephemeral key for the PCR state (sel, pcrDigest), loaded, with the AK's
// certification of it (checked by certify). The key comes from the cache when the cache holds it
// and it certifies as this TPM's NULL-hierarchy primary; otherwise it is derived with
// TPM2_CreatePrimary, and cached once certified. A failure with the derived key is returned.
func (d *Device) ephemeralKey(t transport.TPM, ak *akKey, sel tpm2.TPMLPCRSelection, pcrDigest []byte) (*certifiedKey, error) {
	policy, err := PolicyPCRDigest(sel, pcrDigest)
	if err != nil {
		return nil, fmt.Errorf("ephemeral key policy: %w", err)
	}
	path := ""
	if d.keyCacheDir != "" {
		path = d.keyCachePath(policy)
		if ck := d.cachedKey(t, path, policy, ak); ck != nil {
			return ck, nil
		}
	}
	key, err := createEphemeralKey(t, policy)
	if err != nil {
		return nil, err
	}
	ck, err := certify(t, key, ak)
	if err != nil {
		d.flush(key.handle)
		return nil, err
	}
	if path != "" {
		if err := saveCachedKey(t, path, key); err != nil {
			d.log.Debug("ephemeral key cache not written", "path", path, "err", err)
		}
	}
	return ck, nil
}

// cachedKey returns the cached key at path, certified, or nil if the cache holds no usable key
// for policy. A cached key that loads but then fails (the TPM refuses to certify it, or the
// certification does not check out) is flushed and its file removed, so that the caller's
// derivation replaces it: nothing at the cache path can make every attestation fail.
func (d *Device) cachedKey(t transport.TPM, path string, policy []byte, ak *akKey) *certifiedKey {
	key, err := d.loadCachedKey(t, path, EphemeralKeyTemplate(policy))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			d.log.Debug("ephemeral key cache not used; deriving the key", "path", path, "err", err)
		}
		return nil
	}
	ck, err := certify(t, key, ak)
	if err != nil {
		d.flush(key.handle)
		d.log.Debug("cached ephemeral key refused; removing the cache file and deriving the key", "path", path, "err", err)
		if err := atomicfile.Remove(path); err != nil {
			d.log.Debug("removing the ephemeral key cache file", "path", path, "err", err)
		}
		return nil
	}
	d.log.Debug("ephemeral key loaded from the cache", "path", path)
	return ck
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
// saved context. It checks framing only; Device.loadCachedKey checks the content.
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
// unique field aside), and checks that the TPM loaded exactly that object. Whether the object is
// the NULL-hierarchy primary key it claims to be is for certify to check.
func (d *Device) loadCachedKey(t transport.TPM, path string, template tpm2.TPMTPublic) (*ephemeralKey, error) {
	data, err := atomicfile.ReadRegular(path, maxKeyCacheFile)
	if err != nil {
		return nil, err
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
		d.flush(h)
		return nil, fmt.Errorf("reading the loaded key: %w", err)
	}
	if got := tpm2.Marshal(rp.OutPublic); !bytes.Equal(got, pubBytes) {
		d.flush(h)
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
