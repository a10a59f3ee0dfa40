package maa

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejson "github.com/go-jose/go-jose/v4/json"

	"github.com/attested-kv/attested-kv/internal/redact"
)

// KeySet gives the verifier the instance's token signing keys. Keys come only from the instance
// (or a file the operator trusts), never from a token's own headers.
type KeySet interface {
	// Keys returns the usable keys whose kid equals kid: possibly none, with a nil error, when the
	// source was read but has no such key. An error means the source could not be read.
	Keys(ctx context.Context, kid string) ([]jose.JSONWebKey, error)
}

// StaticKeySet is a fixed set of keys, for offline verification.
type StaticKeySet struct {
	keys []jose.JSONWebKey
}

// NewStaticKeySet parses a JWKS document ({"keys": [...]}, as served by {instance}/certs). Only RSA
// public keys of at least MinRSAKeyBits with a kid are kept; a set with none is an error.
func NewStaticKeySet(jwksJSON []byte) (*StaticKeySet, error) {
	keys, err := parseJWKS(jwksJSON, nil)
	if err != nil {
		return nil, err
	}
	return &StaticKeySet{keys: keys}, nil
}

// Keys returns the keys named kid.
func (s *StaticKeySet) Keys(_ context.Context, kid string) ([]jose.JSONWebKey, error) {
	return keysByID(s.keys, kid), nil
}

// KeySetFor is the key set a verifier of instance's tokens uses: the JWKS file jwksFile when one is
// given (a pinned copy of {instance}/certs, for machines that cannot reach the instance), and the
// instance's /certs otherwise. The file is read up to MaxResponseSize bytes; it may be a symbolic
// link, as Kubernetes mounts a ConfigMap's files.
func KeySetFor(instance, jwksFile string, o JWKSOptions) (KeySet, error) {
	if jwksFile == "" {
		return NewRemoteKeySet(instance, o), nil
	}
	f, err := os.Open(jwksFile)
	if err != nil {
		return nil, fmt.Errorf("JWKS file: %w", err)
	}
	defer f.Close()
	b, err := readBounded(f, MaxResponseSize)
	if err != nil {
		return nil, fmt.Errorf("JWKS file %s: %w", jwksFile, err)
	}
	ks, err := NewStaticKeySet(b)
	if err != nil {
		return nil, fmt.Errorf("JWKS file %s: %w", jwksFile, err)
	}
	return ks, nil
}

// JWKSOptions configures a RemoteKeySet. The zero value gives the defaults.
type JWKSOptions struct {
	// HTTPClient fetches the JWKS; nil means a client with DefaultHTTPTimeout. The key set uses a
	// shallow copy that never follows redirects, whatever the client's CheckRedirect: MAA serves
	// /certs itself, so a redirect (to another host, or to plain HTTP) is refused as a fetch error.
	HTTPClient *http.Client
	// MinRefreshInterval is the least time between two fetches; 0 means
	// DefaultMinRefreshInterval. It bounds how often tokens with unknown kids can make the set
	// refetch.
	MinRefreshInterval time.Duration
	// Logger receives key-set refreshes at Debug and fetch failures at Warn; nil is quiet.
	Logger *slog.Logger
}

// RemoteKeySet is the JWKS of an MAA instance, {instance}/certs, fetched on first use and cached.
// On an unknown kid it refetches, at most once per MinRefreshInterval. It is safe for concurrent
// use.
type RemoteKeySet struct {
	url        string
	urlErr     error // why the instance URL is refused; every fetch fails with it
	http       *http.Client
	minRefresh time.Duration
	log        *slog.Logger
	now        func() time.Time // replaced in tests

	mu          sync.Mutex // held across a fetch, so that concurrent misses cause one fetch
	keys        []jose.JSONWebKey
	haveKeys    bool
	lastAttempt time.Time
	lastErr     error
}

// NewRemoteKeySet returns the key set served at instance + CertsPath; the verifier checks the
// issuer separately. The instance URL must be as NewClient requires, https://HOST[:PORT] and
// nothing else (one trailing slash is trimmed). Since the keys decide which tokens are genuine,
// they are never fetched over plain HTTP or from wherever a redirect points: if instance is not
// such a URL, every Keys call fails with an error naming it.
func NewRemoteKeySet(instance string, o JWKSOptions) *RemoteKeySet {
	ks := &RemoteKeySet{
		minRefresh: o.MinRefreshInterval,
		log:        o.Logger,
		now:        time.Now,
	}
	if inst, err := parseInstance(instance); err != nil {
		ks.url, ks.urlErr = redact.URL(trimSlash(instance))+CertsPath, fmt.Errorf("refusing to fetch the signing keys: %w", err)
	} else {
		ks.url = inst + CertsPath
	}
	if o.HTTPClient != nil {
		c := *o.HTTPClient // shallow: the caller's transport, TLS roots and timeout are kept
		ks.http = &c
	} else {
		ks.http = &http.Client{Timeout: DefaultHTTPTimeout}
	}
	ks.http.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	if ks.minRefresh <= 0 {
		ks.minRefresh = DefaultMinRefreshInterval
	}
	if ks.log == nil {
		ks.log = slog.New(slog.DiscardHandler)
	}
	return ks
}

// URL returns the JWKS address.
func (r *RemoteKeySet) URL() string { return r.url }

// Keys returns the keys named kid, fetching the JWKS on first use and refetching on a miss when
// MinRefreshInterval has passed since the last fetch. The error wraps ErrKeySource.
func (r *RemoteKeySet) Keys(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.haveKeys {
		if found := keysByID(r.keys, kid); len(found) > 0 {
			return found, nil
		}
	}
	if !r.lastAttempt.IsZero() && r.now().Sub(r.lastAttempt) < r.minRefresh {
		if !r.haveKeys {
			return nil, fmt.Errorf("%w: %s (not retried for %s): %w", ErrKeySource, r.url, r.minRefresh, r.lastErr)
		}
		return nil, nil
	}
	r.lastAttempt = r.now()
	keys, err := r.fetch(ctx)
	if err != nil {
		r.lastErr = err
		r.log.Warn("MAA signing keys: fetch failed", "url", r.url, "err", err)
		return nil, fmt.Errorf("%w: %s: %w", ErrKeySource, r.url, err)
	}
	r.keys, r.haveKeys, r.lastErr = keys, true, nil
	r.log.Debug("MAA signing keys: fetched", "url", r.url, "keys", len(keys))
	return keysByID(r.keys, kid), nil
}

// Prefetch fetches the JWKS if no fetch was attempted yet, so that a caller can overlap it with
// other work; Keys then waits for it instead of fetching again. A failed prefetch is forgotten:
// the next Keys call fetches and reports its own error.
func (r *RemoteKeySet) Prefetch(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.haveKeys || !r.lastAttempt.IsZero() {
		return
	}
	start := r.now()
	keys, err := r.fetch(ctx)
	if err != nil {
		r.log.Debug("MAA signing keys: prefetch failed", "url", r.url, "err", err)
		return
	}
	r.keys, r.haveKeys, r.lastAttempt = keys, true, start
	r.log.Debug("MAA signing keys: prefetched", "url", r.url, "keys", len(keys))
}

// fetch GETs and parses the JWKS, over https only and without following redirects.
func (r *RemoteKeySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	if r.urlErr != nil {
		return nil, r.urlErr
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return nil, err
	}
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("refusing to fetch the signing keys from %q: not https", r.url)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := r.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		to := resp.Header.Get("Location")
		if to == "" {
			to = "(no Location)"
		}
		return nil, fmt.Errorf("the JWKS endpoint redirected to %.200q (HTTP %d); MAA does not redirect, so the keys were not fetched", to, resp.StatusCode)
	}
	body, err := readBounded(resp.Body, MaxResponseSize)
	if err != nil {
		return nil, fmt.Errorf("reading the JWKS: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS request answered %w", parseServiceError(resp.StatusCode, resp.Status, body))
	}
	return parseJWKS(body, r.log)
}

// parseJWKS reads a JWKS and keeps the usable keys: RSA public keys of at least MinRSAKeyBits
// with a kid, not restricted to another use or algorithm. A key may carry only x5c (as MAA's
// /certs does), in which case its public key is the first certificate's. Unusable entries are
// skipped; a set with no usable key is an error.
//
// Members are read with go-jose's JSON decoder, which matches names case-sensitively and refuses
// duplicates, as go-jose reads the keys themselves: with encoding/json, which takes "USE" for
// "use" and keeps the last of two, the checks could read one kid, use or algorithm and the key
// kept carry another.
func parseJWKS(data []byte, log *slog.Logger) ([]jose.JSONWebKey, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var set struct {
		Keys []josejson.RawMessage `json:"keys"`
	}
	if err := josejson.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("JWKS is not JSON {\"keys\": [...]}: %w", err)
	}
	var keys []jose.JSONWebKey
	for i, raw := range set.Keys {
		k, err := parseJWK(raw)
		if err != nil {
			log.Debug("MAA signing keys: skipping key", "index", i, "reason", err)
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("JWKS holds no usable key (%d entries; want RSA public keys of at least %d bits with a kid)", len(set.Keys), MinRSAKeyBits)
	}
	return keys, nil
}

// parseJWK reads one usable key of a JWKS. The kid, use and algorithm are checked on the key as
// parsed, the one Verify uses.
func parseJWK(raw josejson.RawMessage) (jose.JSONWebKey, error) {
	var meta struct {
		Kty string   `json:"kty"`
		Kid string   `json:"kid"`
		Use string   `json:"use"`
		Alg string   `json:"alg"`
		N   string   `json:"n"`
		X5c []string `json:"x5c"`
	}
	if err := josejson.Unmarshal(raw, &meta); err != nil {
		return jose.JSONWebKey{}, err
	}
	if meta.Kty != "RSA" {
		return jose.JSONWebKey{}, fmt.Errorf("kty %.20q is not RSA", meta.Kty)
	}
	var k jose.JSONWebKey
	if meta.N == "" && len(meta.X5c) > 0 {
		// go-jose requires n and e; MAA's /certs publishes only the certificate chain.
		der, err := base64.StdEncoding.DecodeString(meta.X5c[0])
		if err != nil {
			return jose.JSONWebKey{}, fmt.Errorf("x5c[0] is not base64: %w", err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return jose.JSONWebKey{}, fmt.Errorf("x5c[0]: %w", err)
		}
		k = jose.JSONWebKey{Key: cert.PublicKey, KeyID: meta.Kid, Algorithm: meta.Alg, Use: meta.Use, Certificates: []*x509.Certificate{cert}}
	} else if err := k.UnmarshalJSON(raw); err != nil {
		return jose.JSONWebKey{}, err
	}
	switch {
	case k.KeyID == "":
		return jose.JSONWebKey{}, errors.New("no kid")
	case k.Use != "" && k.Use != "sig":
		return jose.JSONWebKey{}, fmt.Errorf("use %.20q is not sig", k.Use)
	case k.Algorithm != "" && k.Algorithm != SigningAlgorithm:
		return jose.JSONWebKey{}, fmt.Errorf("alg %.20q is not %s", k.Algorithm, SigningAlgorithm)
	}
	pub, err := usableRSAKey(k.Key)
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	k.Key = pub
	return k, nil
}

// usableRSAKey returns the RSA public key of key if it is one of at least MinRSAKeyBits. Private
// keys in a JWKS are reduced to their public half.
func usableRSAKey(key any) (*rsa.PublicKey, error) {
	var pub *rsa.PublicKey
	switch k := key.(type) {
	case *rsa.PublicKey:
		pub = k
	case *rsa.PrivateKey:
		pub = &k.PublicKey
	default:
		return nil, fmt.Errorf("key type %T is not an RSA public key", key)
	}
	if pub == nil || pub.N == nil {
		return nil, errors.New("empty RSA key")
	}
	if pub.N.BitLen() < MinRSAKeyBits {
		return nil, fmt.Errorf("RSA key of %d bits is shorter than %d", pub.N.BitLen(), MinRSAKeyBits)
	}
	return pub, nil
}

// keysByID returns the keys of keys with the given kid.
func keysByID(keys []jose.JSONWebKey, kid string) []jose.JSONWebKey {
	var out []jose.JSONWebKey
	for _, k := range keys {
		if k.KeyID == kid {
			out = append(out, k)
		}
	}
	return out
}

// trimSlash removes one trailing slash.
func trimSlash(s string) string {
	if len(s) > 0 && s[len(s)-1] == '/' {
		return s[:len(s)-1]
	}
	return s
}
