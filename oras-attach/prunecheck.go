package main

import (
	"context"
	"errors"
	"fmt"

	"oras.land/oras-go/v2/registry/remote"

	"github.com/attested-kv/attested-kv/internal/referrer"
	"github.com/attested-kv/attested-kv/internal/registryclient"
	"github.com/attested-kv/attested-kv/internal/token"
)

// registryCheck is token prune's --check-registry: a token attach published goes only once each
// repository its mark records still lists it as a token referrer of its image. The mark says
// that attach published the token once; the registry may have lost it since (a referrers index
// rewritten by a concurrent attach on a registry without the Referrers API, a referrer deleted
// by hand or by a retention rule), and a token pruned then could never be attached again.
type registryCheck struct {
	ctx  context.Context
	opts registryclient.Options
	// repos are the repositories opened so far, by REGISTRY/REPO: one client, and one set of
	// registry tokens, per repository.
	repos map[string]*remote.Repository
	// subject is the image whose listings indexes holds, by REGISTRY/REPO@DIGEST, failures
	// included: an image signed many times is listed once in each repository, and only one image's
	// listings are kept at a time (Prune goes through the store image by image).
	subject string
	indexes map[string]listing
}

// listing is the token referrers of an image listed in one repository, or why they were not.
type listing struct {
	ix  *referrer.Index
	err error
}

func newRegistryCheck(ctx context.Context, opts registryclient.Options) *registryCheck {
	return &registryCheck{ctx: ctx, opts: opts, repos: map[string]*remote.Repository{}}
}

// confirm is token.PruneOptions.Confirm: nil once every repository of p's mark holds p. A token
// attach never published (removed with --include-unattached, as asked) has nothing to check.
func (c *registryCheck) confirm(p token.Pruned) error {
	if !p.Attached {
		return nil
	}
	if len(p.Repositories) == 0 {
		return errors.New("not checked: its mark records no repository (an attach before marks recorded them); attach the image again to record it")
	}
	for _, r := range p.Repositories {
		if err := c.holds(r, p.Subject, p.SHA256); err != nil {
			return err
		}
	}
	return nil
}

// holds returns nil if the repository lists the token whose hex SHA-256 is sha as a token
// referrer of the image subject, and says why not otherwise.
func (c *registryCheck) holds(repository, subject, sha string) error {
	if err := c.ctx.Err(); err != nil {
		return fmt.Errorf("not checked in %s: %w", repository, context.Cause(c.ctx))
	}
	ref := repository + "@" + subject
	ix, err := c.index(repository, ref, subject)
	if err != nil {
		return fmt.Errorf("not checked in %s: %w", repository, err)
	}
	found, errs := ix.Find(c.ctx, sha)
	switch {
	case found != nil:
		return nil
	case len(errs) > 0:
		return fmt.Errorf("not found in %s, and %d of its %d token referrers could not be read or are not token referrers (the first: %w)", ref, len(errs), ix.Len(), errs[0])
	case ix.Truncated():
		return fmt.Errorf("not found in %s among the first %d token referrers read, of more", ref, referrer.MaxListed)
	}
	return fmt.Errorf("%s holds no token referrer with this token: attach it there again (oras-attest attach %s) before pruning", ref, ref)
}

// index lists the token referrers of the image ref (repository@subject), opening the repository
// the first time. A failure is kept like a listing: the image's other tokens are kept for the same
// reason, without asking a registry that failed (after its retries) again.
func (c *registryCheck) index(repository, ref, subject string) (*referrer.Index, error) {
	if subject != c.subject {
		c.subject, c.indexes = subject, map[string]listing{}
	}
	l, ok := c.indexes[ref]
	if !ok {
		l.ix, l.err = c.list(repository, ref, subject)
		c.indexes[ref] = l
	}
	return l.ix, l.err
}

// list opens the repository the first time and lists the token referrers of ref.
func (c *registryCheck) list(repository, ref, subject string) (*referrer.Index, error) {
	repo, ok := c.repos[repository]
	if !ok {
		var err error
		if repo, _, err = openRepository(ref, c.opts); err != nil {
			return nil, err
		}
		c.repos[repository] = repo
	}
	desc, err := repo.Resolve(c.ctx, subject)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", ref, err)
	}
	ix := referrer.NewIndex(c.ctx, repo, desc)
	if err := ix.Err(); err != nil {
		return nil, err
	}
	return ix, nil
}
