package azure

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/authorization/armauthorization/v2"
)

// RoleSettle is how long apply lets the role assignments it makes take effect before it withdraws
// the grants they replace. Withdrawn at once, the signing identity could be refused between the
// two: Azure applies a new assignment with a delay. Microsoft Learn's RBAC troubleshooting page
// gives up to 10 minutes (Azure Resource Manager caches); Microsoft's own answers and later
// reports give up to 30. The bound is UNCONFIRMED, so the longer one is used.
var RoleSettle = 30 * time.Minute

// grant is a role the deployment grants at one scope, and the principals that are to hold it there.
type grant struct {
	scope, role, label string
	// holders are the principals the configuration names for it. None (--cluster-principal-id not
	// given) keeps what an earlier apply granted, and reports it: a forgotten flag on a rerun must
	// not stop the cluster's image pulls.
	holders []string
	// flag names the setting that names the holders, for the message when a former one loses it.
	flag string
	// settle keeps a former holder's grant until the current holders' assignments have had
	// RoleSettle to take effect: set where the grant serves production (the cluster's pulls),
	// so that a move to a new principal never leaves both without it. The operator's grants serve
	// apply alone and go at once; a former managed identity no longer exists.
	settle bool
}

// grants are the role assignments apply makes on the deployment's resources to principals the
// configuration names: the operator (--operator-object-id), the cluster (--cluster-principal-id)
// and the signing identity (identity, its principal id; "" if it does not exist yet). The image
// builder layer's grants are its own (applyBuildLayer).
func (c Config) grants(identity string) []grant {
	n := NamesFor(c.NamePrefix)
	regScope := c.registryID()
	var cluster []string
	if c.ClusterPrincipalID != "" {
		cluster = []string{c.ClusterPrincipalID}
	}
	g := []grant{
		{scope: c.providerID(), role: RoleAttestationContributor, label: "Attestation Contributor (operator)", holders: []string{c.OperatorPrincipalID}, flag: "--operator-object-id"},
		{scope: c.vaultID(), role: RoleKeyVaultCertificatesOfficer, label: "Key Vault Certificates Officer (operator)", holders: []string{c.OperatorPrincipalID}, flag: "--operator-object-id"},
		{scope: regScope, role: RoleAcrPull, label: "AcrPull (cluster)", holders: cluster, flag: "--cluster-principal-id", settle: true},
	}
	if identity == "" {
		return g
	}
	// The identity's principal changes only when the identity is made again.
	flag := "the managed identity " + n.Identity + " (now principal " + identity + ")"
	for _, a := range signingAssignments(c, n.Certificate) {
		g = append(g, grant{scope: a.scope, role: a.role, label: a.label, holders: []string{identity}, flag: flag})
	}
	return append(g, grant{scope: regScope, role: RoleAcrPush, label: "AcrPush (identity)", holders: []string{identity}, flag: flag})
}

// madeByApply reports whether a is an assignment assign made, and if so its scope, principal and
// role (the role definition's GUID). assign names each assignment after its own scope, principal
// and role (assignmentName), so an assignment named otherwise was made by someone else and is
// never touched, whatever it grants.
func madeByApply(a *armauthorization.RoleAssignment) (scope, principal, role string, ok bool) {
	scope = scopeOf(a)
	if scope == "" || a.Name == nil || a.Properties.PrincipalID == nil || a.Properties.RoleDefinitionID == nil {
		return "", "", "", false
	}
	principal = *a.Properties.PrincipalID
	role = roleOf(*a.Properties.RoleDefinitionID)
	return scope, principal, role, strings.EqualFold(*a.Name, assignmentName(scope, principal, role))
}

// roleOf is the role definition's GUID, the last segment of its id.
func roleOf(definitionID string) string {
	return definitionID[strings.LastIndex(definitionID, "/")+1:]
}

// scopeOf is an assignment's scope: its scope property, or, when ARM leaves that out, the part
// of its id before "/providers/Microsoft.Authorization/roleAssignments/"; "" if neither tells.
func scopeOf(a *armauthorization.RoleAssignment) string {
	if a == nil || a.Properties == nil {
		return ""
	}
	if a.Properties.Scope != nil {
		return *a.Properties.Scope
	}
	if a.ID != nil {
		const sep = "/providers/microsoft.authorization/roleassignments/"
		if i := strings.LastIndex(strings.ToLower(*a.ID), sep); i > 0 {
			return (*a.ID)[:i]
		}
	}
	return ""
}

// assignmentsAt lists the role assignments made exactly at scope, or also below it if below is
// set; a scope that does not exist has none.
func assignmentsAt(ctx context.Context, cl *Clients, scope string, below bool) ([]*armauthorization.RoleAssignment, error) {
	var opts armauthorization.RoleAssignmentsClientListForScopeOptions
	if !below {
		// At and above the scope; those above (the group's, the subscription's) are dropped below.
		opts.Filter = ptr("atScope()")
	}
	var out []*armauthorization.RoleAssignment
	pager := cl.RoleAssignments.NewListForScopePager(scope, &opts)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if isNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listing role assignments at %s: %w", scope, err)
		}
		for _, a := range page.Value {
			at := strings.ToLower(scopeOf(a))
			if s := strings.ToLower(scope); at != "" && (at == s || below && strings.HasPrefix(at, s+"/")) {
				out = append(out, a)
			}
		}
	}
	return out, nil
}

// formerHolders lists the principals holding g's role at g's scope through an assignment apply
// made, that the configuration no longer names: a former operator or cluster, or a managed
// identity that was deleted and made again.
func formerHolders(ctx context.Context, cl *Clients, g grant) ([]string, error) {
	list, err := assignmentsAt(ctx, cl, g.scope, false)
	if err != nil {
		return nil, err
	}
	var former []string
	for _, a := range list {
		_, principal, role, ours := madeByApply(a)
		if !ours || !strings.EqualFold(role, g.role) || holds(g.holders, principal) {
			continue
		}
		former = append(former, principal)
	}
	return former, nil
}

// holds reports whether principal is one of holders (object ids, compared case-insensitively).
func holds(holders []string, principal string) bool {
	for _, h := range holders {
		if strings.EqualFold(h, principal) {
			return true
		}
	}
	return false
}

// former is what becomes of one former holder's grant: withdraw it now, or keep it (and why).
type former struct {
	principal string
	withdraw  bool
	detail    string
}

// decideFormer decides, for each principal formerHolders finds for g, whether its grant goes
// now: not when the configuration names no holder (keptDetail), nor, for a grant that settles,
// before the current holders' assignments have had RoleSettle to take effect.
func decideFormer(ctx context.Context, cl *Clients, g grant) ([]former, error) {
	principals, err := formerHolders(ctx, cl, g)
	if err != nil || len(principals) == 0 {
		return nil, err
	}
	var current settle
	if g.settle {
		for _, h := range g.holders {
			t, err := settledAt(ctx, cl, h, []signingAssignment{{g.scope, g.role, g.label}})
			if err != nil {
				return nil, err
			}
			current = current.later(t)
		}
	}
	var out []former
	for _, p := range principals {
		f := former{principal: p, withdraw: true, detail: "from " + p + ", granted by an earlier apply; " + g.flag + " no longer names it"}
		switch {
		case len(g.holders) == 0:
			f.withdraw, f.detail = false, keptDetail(g, p)
		case g.settle && current.pending():
			f.withdraw, f.detail = false, "held by "+p+", granted by an earlier apply; "+g.flag+" no longer names it, and it is kept so that pulls do not stop meanwhile; "+
				current.until("the grant to the principal named now")
		}
		out = append(out, f)
	}
	return out, nil
}

// withdrawFormer deletes the grants decideFormer lets go for each of gs, and reports each, and
// each it keeps.
func withdrawFormer(ctx context.Context, cl *Clients, gs []grant, done func(kind, name, action, detail string)) error {
	for _, g := range gs {
		fs, err := decideFormer(ctx, cl, g)
		if err != nil {
			return fmt.Errorf("%s: %w", g.label, err)
		}
		for _, f := range fs {
			if !f.withdraw {
				done("role assignment", g.label, "kept", f.detail)
				continue
			}
			if err := unassign(ctx, cl, g.scope, f.principal, g.role); err != nil {
				return fmt.Errorf("%s of former holder %s: %w", g.label, f.principal, err)
			}
			done("role assignment", g.label, "withdrawn", f.detail)
		}
	}
	return nil
}

// keptDetail says why a grant to p that the configuration does not name is kept.
func keptDetail(g grant, p string) string {
	return "held by " + p + ", granted by an earlier apply; " + g.flag + " names none this time, so it is kept: name the new principal to move it, or remove it by hand"
}

// planFormer adds a step for each grant decideFormer finds for each of gs: withdraw, or keep.
func planFormer(ctx context.Context, cl *Clients, gs []grant, steps []Step) ([]Step, error) {
	for _, g := range gs {
		fs, err := decideFormer(ctx, cl, g)
		if err != nil {
			// Plan reads scopes that may not exist yet, and what ARM answers for the assignments
			// of a resource that does not exist (404 is taken for none) is UNCONFIRMED: the step
			// says what could not be read instead of failing the whole plan. Apply lists them
			// once the resources exist, and fails on the error.
			steps = append(steps, Step{Kind: "role assignment", Name: g.label, Action: "unknown", Detail: "could not list who holds it: " + err.Error()})
			continue
		}
		for _, f := range fs {
			action := "withdraw"
			if !f.withdraw {
				action = "keep"
			}
			steps = append(steps, Step{Kind: "role assignment", Name: g.label, Action: action, Detail: f.detail})
		}
	}
	return steps, nil
}

// restoreTimeout bounds the restoring of the assignments deleteWithGrants removed, which runs even
// after the caller's context ended.
const restoreTimeout = 2 * time.Minute

// deleteWithGrants deletes the resource at scope (del) after every role assignment apply made at
// scope or below it, whoever holds it: whether ARM deletes a resource's role assignments with it
// is UNCONFIRMED, and one left behind would grant the same role on a resource made later under
// the same name. If the resource stays (del fails: a lock, a conflict), the assignments are made
// again, so that a failed destroy takes no access away from what is still there.
func deleteWithGrants(ctx context.Context, cl *Clients, cfg Config, scope, what string, note func(kind, name, action, detail string), del func(context.Context) error) error {
	list, err := assignmentsAt(ctx, cl, scope, true)
	if err != nil {
		return err
	}
	var removed []*armauthorization.RoleAssignment
	// restore makes the removed assignments again, each of them, even when the delete failed
	// because ctx ended (a timeout, an interrupt): the resource may still be there, and a grant
	// left off it (the cluster's AcrPull) would stop production. What cannot be restored is named.
	restore := func(cause error) error {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), restoreTimeout)
		defer cancel()
		errs := []error{cause}
		for _, a := range removed {
			at, principal, role, _ := madeByApply(a)
			pt := ""
			if a.Properties.PrincipalType != nil {
				pt = string(*a.Properties.PrincipalType)
			}
			if err := assign(rctx, cl, cfg, at, principal, pt, role); err != nil {
				errs = append(errs, fmt.Errorf("restoring %s of %s on %s failed (assign it again by hand, or run apply): %w", roleLabel(role), principal, what, err))
				continue
			}
			note("role assignment", roleLabel(role)+" on "+what, "restored", "held by "+principal+": "+what+" was not deleted")
		}
		return errors.Join(errs...)
	}
	for _, a := range list {
		at, principal, role, ours := madeByApply(a)
		if !ours {
			continue
		}
		if err := unassign(ctx, cl, at, principal, role); err != nil {
			return restore(fmt.Errorf("deleting %s of %s on %s: %w", roleLabel(role), principal, what, err))
		}
		removed = append(removed, a)
		note("role assignment", roleLabel(role)+" on "+what, "deleted", "held by "+principal)
	}
	if err := del(ctx); err != nil {
		return restore(err)
	}
	return nil
}

// roleLabel names a role GUID this deployment assigns, for steps.
func roleLabel(role string) string {
	for guid, name := range map[string]string{
		RoleAttestationContributor: "Attestation Contributor", RoleKeyVaultCertificatesOfficer: "Key Vault Certificates Officer",
		RoleAcrPull: "AcrPull", RoleAcrPush: "AcrPush", RoleKeyVaultCertificateUser: "Key Vault Certificate User",
		RoleKeyVaultSecretsUser: "Key Vault Secrets User", RoleKeyVaultCryptoUser: "Key Vault Crypto User",
	} {
		if strings.EqualFold(guid, role) {
			return name
		}
	}
	return "role " + role
}

// settle is when assignments will have had RoleSettle to take effect.
type settle struct {
	at time.Time
	// undated is set when ARM reported no creation time for one of them: at is then a time
	// that every apply pushes back, and a grant waiting for it is never withdrawn.
	undated bool
}

// pending reports whether the assignments may not have taken effect yet.
func (s settle) pending() bool { return s.undated || time.Now().Before(s.at) }

// until says when a grant kept for s goes, for steps: the time from which an apply withdraws it,
// or, without ARM's creation time, that it is for the operator to remove.
func (s settle) until(what string) string {
	if s.undated {
		return "ARM reported no creation time for " + what + ", so apply cannot tell when Azure has applied it: remove this grant by hand once that is sure"
	}
	return "withdrawn by the first apply after " + s.at.UTC().Format("15:04 MST") + ", once Azure has applied " + what
}

// later is the later of s and t.
func (s settle) later(t settle) settle {
	if t.at.After(s.at) {
		s.at = t.at
	}
	s.undated = s.undated || t.undated
	return s
}

// settledAt is when the newest of the assignments apply made of roles to principal at scopes will
// have had RoleSettle to take effect; an assignment that does not exist counts as made now, and
// one whose creation time ARM does not report makes the result undated.
func settledAt(ctx context.Context, cl *Clients, principal string, assignments []signingAssignment) (settle, error) {
	var out settle
	for _, a := range assignments {
		created, dated, err := assignedOn(ctx, cl, principal, a)
		if err != nil {
			return settle{}, fmt.Errorf("reading the role assignment %s: %w", a.label, err)
		}
		out = out.later(settle{at: created.Add(RoleSettle), undated: !dated})
	}
	return out, nil
}

// assignedOn is when a's role was assigned to principal at a's scope: the assignment assign
// made, or, when the role was assigned under another name before apply (assign then took ARM's
// RoleAssignmentExists for success), that one, found by listing the scope. Without either, or
// without ARM's createdOn, it is now: the wait for it to take effect starts over. dated is false
// when an assignment exists but ARM reported no creation time for it.
func assignedOn(ctx context.Context, cl *Clients, principal string, a signingAssignment) (created time.Time, dated bool, err error) {
	got, err := cl.RoleAssignments.Get(ctx, a.scope, assignmentName(a.scope, principal, a.role), nil)
	switch {
	case err == nil:
		if got.Properties != nil && got.Properties.CreatedOn != nil {
			return *got.Properties.CreatedOn, true, nil
		}
		return time.Now(), false, nil
	case !isNotFound(err):
		return time.Time{}, false, err
	}
	list, err := assignmentsAt(ctx, cl, a.scope, false)
	if err != nil {
		return time.Time{}, false, err
	}
	for _, l := range list {
		if p := l.Properties; p.PrincipalID != nil && strings.EqualFold(*p.PrincipalID, principal) && p.RoleDefinitionID != nil &&
			strings.EqualFold(roleOf(*p.RoleDefinitionID), a.role) {
			if p.CreatedOn == nil {
				return time.Now(), false, nil
			}
			return *p.CreatedOn, true, nil
		}
	}
	return time.Now(), true, nil
}

// withdrawReplaced withdraws the grants of earlier versions (role to principal at scope, for each
// of legacy) that the signing identity's object-scoped assignments replace, once those have
// settled (settle, from settledAt). Until then a grant that exists is kept and reported with the
// time from which a rerun withdraws it, so that signing never stops between the two.
func withdrawReplaced(ctx context.Context, cl *Clients, principal string, legacy []signingAssignment, replaced settle, done func(kind, name, action, detail string)) error {
	for _, l := range legacy {
		name := assignmentName(l.scope, principal, l.role)
		if _, err := cl.RoleAssignments.Get(ctx, l.scope, name, nil); isNotFound(err) {
			continue
		} else if err != nil {
			return fmt.Errorf("role assignment %s: %w", l.label, err)
		}
		if replaced.pending() {
			done("role assignment", l.label, "kept", "granted by an earlier version and replaced by the object-scoped roles above, and kept so that signing does not stop meanwhile; "+
				replaced.until("those roles"))
			continue
		}
		if err := unassign(ctx, cl, l.scope, principal, l.role); err != nil {
			return fmt.Errorf("role assignment %s: %w", l.label, err)
		}
		done("role assignment", l.label, "revoked", "granted by an earlier version; replaced by the object-scoped roles above")
	}
	return nil
}
