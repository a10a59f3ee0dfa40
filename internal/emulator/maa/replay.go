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
// Memory is bounded: entries expire after the token lifetime, and a live entry is never forgotten
// (forgetting it would let its certification be replayed). Instead, each AK (identified by the
// SHA-256 of its public key) may hold at most perAK live entries, beyond which that AK's new
// attestations are refused (429) until its entries expire; so one TPM attesting in a loop locks out
// only itself. The whole cache holds at most max entries, beyond which every new attestation is
// refused (503): reaching that takes max/perAK distinct AKs, each certified by the trusted roots.
type replayCache struct {
	mu    sync.Mutex
	max   int
	perAK int
	seen  map[[sha256.Size]byte]replayEntry // certify digest -> its entry
	count map[[sha256.Size]byte]int         // AK digest -> its entries in seen
	queue []replayEntry                     // insertion order, for expiry
}

type replayEntry struct {
	digest, ak [sha256.Size]byte
	expiry     time.Time
}

// newReplayCache returns a cache of at most max entries, at most perAK of them for one AK
// (perAK is capped at max).
func newReplayCache(max, perAK int) *replayCache {
	return &replayCache{
		max:   max,
		perAK: min(perAK, max),
		seen:  make(map[[sha256.Size]byte]replayEntry),
		count: make(map[[sha256.Size]byte]int),
	}
}

// consume records digest, a certification by the AK whose public key digest is ak, as used until
// expiry, or fails if it was already used, or if the AK or the cache holds as many live entries as
// it may.
func (c *replayCache) consume(ak, digest [sha256.Size]byte, now, expiry time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pruneLocked(now)
	if e, ok := c.seen[digest]; ok {
		if now.Before(e.expiry) {
			return refuse(CodeCertifyInfoReplayed,
				"this EncKeyCertifyInfo was already used for a token; every attestation needs a fresh certification of the ephemeral key")
		}
		// Expired but not pruned yet (the clock went backwards): its queue entry no longer
		// matches and will be skipped.
		c.deleteLocked(e)
	}
	if c.count[ak] >= c.perAK {
		return refuseStatus(http.StatusTooManyRequests, CodeAikAttestationLimit,
			"this AK has %d attestations whose tokens may still be live, the emulator's limit per AK; try again once they expire", c.count[ak])
	}
	if len(c.seen) >= c.max {
		return refuseStatus(http.StatusServiceUnavailable, CodeReplayCacheFull,
			"the emulator's replay cache holds %d live entries; try again later", len(c.seen))
	}
	e := replayEntry{digest: digest, ak: ak, expiry: expiry}
	c.seen[digest] = e
	c.count[ak]++
	c.queue = append(c.queue, e)
	return nil
}

// deleteLocked forgets the entry e of seen.
func (c *replayCache) deleteLocked(e replayEntry) {
	delete(c.seen, e.digest)
	if c.count[e.ak]--; c.count[e.ak] <= 0 {
		delete(c.count, e.ak)
	}
}

// pruneLocked drops expired entries from the front of the queue. Expiries are insertion time plus
// a constant lifetime, so the queue is ordered by expiry unless the clock goes backwards, in which
// case entries only stay longer (never shorter) than their lifetime.
func (c *replayCache) pruneLocked(now time.Time) {
	n := 0
	for n < len(c.queue) && !now.Before(c.queue[n].expiry) {
		q := c.queue[n]
		if e, ok := c.seen[q.digest]; ok && e.expiry.Equal(q.expiry) && e.ak == q.ak {
			c.deleteLocked(e)
		}
		n++
	}
	if n > 0 {
		c.queue = append(c.queue[:0:0], c.queue[n:]...)
	}
}
