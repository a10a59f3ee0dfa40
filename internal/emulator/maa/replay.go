package maa

import (
	"crypto/sha256"
	"net/http"
	"sync"
	"time"
)

// replayCache remembers the digests of the EncKeyCertifyInfo structures of issued tokens, so that
// the exact same certification cannot be used twice while a token from it may still be valid.
//
// This is the emulator's stand-in for MAA's freshness checks, which are not public (UNCONFIRMED how
// MAA does it). The protocol's own freshness is that the token is encrypted to a key that only the
// TPM, in the quoted PCR state and (for a NULL-hierarchy key, as AZGA creates it) in the same boot,
// can use; the cache adds that a captured request cannot be answered twice.
//
// Memory is bounded: entries expire after the token lifetime, and when the cache is full of live
// entries new attestations are refused (fail closed) rather than evicting entries an attacker could
// then replay.
type replayCache struct {
	mu    sync.Mutex
	max   int
	seen  map[[sha256.Size]byte]time.Time // digest -> expiry
	queue []replayEntry                   // insertion order, for expiry
}

type replayEntry struct {
	digest [sha256.Size]byte
	expiry time.Time
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, seen: make(map[[sha256.Size]byte]time.Time)}
}

// consume records digest as used until expiry, or fails if it was already used.
func (c *replayCache) consume(digest [sha256.Size]byte, now, expiry time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pruneLocked(now)
	if exp, ok := c.seen[digest]; ok && now.Before(exp) {
		return refuse(CodeCertifyInfoReplayed,
			"this EncKeyCertifyInfo was already used for a token; every attestation needs a fresh certification of the ephemeral key")
	}
	if len(c.seen) >= c.max {
		return refuseStatus(http.StatusServiceUnavailable, CodeReplayCacheFull,
			"the emulator's replay cache holds %d live entries; try again later", len(c.seen))
	}
	c.seen[digest] = expiry
	c.queue = append(c.queue, replayEntry{digest: digest, expiry: expiry})
	return nil
}

// pruneLocked drops expired entries from the front of the queue. Expiries are insertion time plus
// a constant lifetime, so the queue is ordered by expiry unless the clock goes backwards, in which
// case entries only stay longer (never shorter) than their lifetime.
func (c *replayCache) pruneLocked(now time.Time) {
	n := 0
	for n < len(c.queue) && !now.Before(c.queue[n].expiry) {
		e := c.queue[n]
		if exp, ok := c.seen[e.digest]; ok && exp.Equal(e.expiry) {
			delete(c.seen, e.digest)
		}
		n++
	}
	if n > 0 {
		c.queue = append(c.queue[:0:0], c.queue[n:]...)
	}
}
