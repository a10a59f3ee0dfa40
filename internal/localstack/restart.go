package localstack

import (
	"fmt"
	"net"
	"net/url"
	"slices"
)

// restart carries the previous start of the stack in the same state directory into this one, so
// that the environment exported then (Env) stays valid: each component listens on its previous
// port again when it is free, and the emulated tenant keeps its client id and secret. What could
// not be kept is noted in moved.
type restart struct {
	// prev is the state the previous start published (last-state.json); empty for a first start.
	prev State
	// moved says, for each component that could not have its previous port, why.
	moved []string
}

// loadRestart reads the previous start's state in p. A first start, or a state this build cannot
// read (another version's), starts afresh.
func loadRestart(p paths) *restart {
	r := &restart{}
	if prev, err := readStateFile(p.lastState()); err == nil {
		r.prev = *prev
	}
	return r
}

// first reports whether no previous start is known.
func (r *restart) first() bool { return r.prev.Version == 0 }

// keepPort calls listen on 127.0.0.1 and the port of prevAddr (HOST:PORT, the component's
// address at the previous start), and if that fails (the port is taken), or on a first start,
// on a port the system chooses; a port that could not be kept is noted in r.moved.
func keepPort[T any](r *restart, component, prevAddr string, listen func(addr string) (T, error)) (T, error) {
	if _, port, err := net.SplitHostPort(prevAddr); err == nil && port != "" && port != "0" {
		v, err := listen(net.JoinHostPort("127.0.0.1", port))
		if err == nil {
			return v, nil
		}
		r.moved = append(r.moved, fmt.Sprintf("%s: port %s of the previous start is not free (%v), so it listens on a new port", component, port, err))
	}
	return listen("127.0.0.1:0")
}

// listenTCP listens on the TCP address addr.
func listenTCP(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// urlHost is the HOST:PORT of an http(s) URL, or "".
func urlHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Host
}

// identity returns the emulated tenant's id and its client's id and secret: the previous start's,
// or new ones for a first start.
func (r *restart) identity() (tenant, clientID, clientSecret string) {
	if p := r.prev; p.TenantID != "" && p.ClientID != "" && p.ClientSecret != "" {
		return p.TenantID, p.ClientID, p.ClientSecret
	}
	return uuid(), uuid(), randomHex(24)
}

// envChanges returns the names of the variables of Env whose values differ between prev and
// next (set in one only included), in Env's order.
func envChanges(prev, next *State) []string {
	old := map[string]string{}
	for _, kv := range Env(prev) {
		old[kv[0]] = kv[1]
	}
	var changed []string
	for _, kv := range Env(next) {
		if v, ok := old[kv[0]]; !ok || v != kv[1] {
			changed = append(changed, kv[0])
		}
		delete(old, kv[0])
	}
	for _, kv := range Env(prev) {
		if _, gone := old[kv[0]]; gone && !slices.Contains(changed, kv[0]) {
			changed = append(changed, kv[0])
		}
	}
	return changed
}
