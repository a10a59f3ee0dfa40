package localstack

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// runStack runs the stack of dir in this process (Run, as `local serve` does) until stop is
// called or the test ends; it returns the state the stack published. One at a time: the TPM
// simulator is one per process.
func runStack(t *testing.T, dir string) (st *State, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *State, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Options{StateDir: dir, Ready: func(st *State) { ready <- st }}) }()
	var once bool
	stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	select {
	case st = <-ready:
		t.Cleanup(stop)
		return st, stop
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	case <-time.After(time.Minute):
		cancel()
		<-done
		t.Fatal("the stack did not become ready within a minute")
	}
	return nil, nil
}

// TestRun: Run publishes the state of a stack whose HTTPS endpoints answer through the stack's
// TLS root. Under -race it checks that the servers' start-ups share nothing (each HTTPS server
// has its own TLS config: ServeTLS writes into it).
func TestRun(t *testing.T) {
	st, _ := runStack(t, t.TempDir())
	ctx := context.Background()
	for _, c := range []ComponentStatus{
		probeHTTPS(ctx, "MAA emulator", st.MAAURL+"/certs", st.TLSRootPath),
		probeHTTPS(ctx, "Entra ID emulator", st.EntraURL+"/"+st.TenantID+"/v2.0/.well-known/openid-configuration", st.TLSRootPath),
		probeHTTPS(ctx, "Key Vault emulator", st.KeyVaultURL+"/keys/"+SigningKeyName, st.TLSRootPath, http.StatusUnauthorized),
	} {
		if !c.OK {
			t.Errorf("%s does not answer: %s", c.Name, c.Detail)
		}
	}
	// Clients reach the registry as localhost:PORT, which may resolve to ::1 first: the stack
	// holds that address's port too, so no one else can serve it.
	if l, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		l.Close()
		port := strings.TrimPrefix(st.Registry, "localhost:")
		if squat, err := net.Listen("tcp6", net.JoinHostPort("::1", port)); err == nil {
			squat.Close()
			t.Errorf("[::1]:%s, the registry's port on the IPv6 loopback, was free to take", port)
		}
	}
}

// component returns the status of the component name.
func component(t *testing.T, comps []ComponentStatus, name string) ComponentStatus {
	t.Helper()
	for _, c := range comps {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no component %q in %+v", name, comps)
	return ComponentStatus{}
}

// TestStatusTPMStopped: status reports the TPM down while it is stopped (it accepts connections
// and closes them, so a connection is no sign of health) with the command that starts it again,
// and up again once started.
func TestStatusTPMStopped(t *testing.T) {
	st, _ := runStack(t, t.TempDir())
	ctx := context.Background()
	check := func(wantOK bool) {
		t.Helper()
		c := component(t, components(ctx, st), "TPM simulator")
		if c.OK != wantOK {
			t.Fatalf("TPM status %+v, want ok %v", c, wantOK)
		}
		if !wantOK && c.Hint != "attest-bootstrap local tpm start" {
			t.Errorf("hint %q, want the command that starts the TPM", c.Hint)
		}
		if wantOK && c.Hint != "" {
			t.Errorf("hint %q on a TPM that answers", c.Hint)
		}
	}
	check(true)
	if err := controlSocket(ctx, st.ControlSocket, http.MethodPost, "/tpm/stop", nil); err != nil {
		t.Fatal(err)
	}
	check(false)
	if err := controlSocket(ctx, st.ControlSocket, http.MethodPost, "/tpm/start", nil); err != nil {
		t.Fatal(err)
	}
	check(true)
	for _, c := range components(ctx, st) {
		if !c.OK {
			t.Errorf("component %+v is down", c)
		}
	}
}

// TestRestartKeepsEnvironment: started again in its state directory, the stack listens on the
// ports of its previous start and keeps the tenant, client id and secret, and the signing key (the
// emulated vault keeps its keys), so that the environment exported then still works unchanged,
// ATTEST_KEY_ID included. A port taken meanwhile moves, and the start names it and the variables
// that changed.
func TestRestartKeepsEnvironment(t *testing.T) {
	dir := t.TempDir()
	first, stop := runStack(t, dir)
	stop()
	if len(first.PortsMoved) != 0 || len(first.EnvChanged) != 0 {
		t.Errorf("a first start reports moved ports %q and a changed environment %q", first.PortsMoved, first.EnvChanged)
	}
	same := func(a, b *State) []string {
		var diff []string
		for _, f := range []struct{ name, a, b string }{
			{"MAA", a.MAAURL, b.MAAURL}, {"TPM", a.TPMAddr, b.TPMAddr}, {"Entra ID", a.EntraURL, b.EntraURL},
			{"Key Vault", a.KeyVaultURL, b.KeyVaultURL}, {"registry", a.Registry, b.Registry},
			{"tenant", a.TenantID, b.TenantID}, {"client id", a.ClientID, b.ClientID}, {"client secret", a.ClientSecret, b.ClientSecret},
		} {
			if f.a != f.b {
				diff = append(diff, f.name)
			}
		}
		return diff
	}

	// Another test running meanwhile may take a port the stop freed: a component may then move,
	// but only one that up names, and never the credentials nor the signing key (whose id has the
	// vault's URL in it, the rest unchanged).
	moved := func(prev, next *State) {
		t.Helper()
		d := same(prev, next)
		for _, name := range d {
			if name == "tenant" || name == "client id" || name == "client secret" {
				t.Errorf("the restart changed the %s", name)
			}
		}
		if len(d) != len(next.PortsMoved) {
			t.Errorf("the restart changed %v and named %q as moved", d, next.PortsMoved)
		}
		if keyPath(next) != keyPath(prev) || next.KeyVaultURL == prev.KeyVaultURL && next.KeyID != prev.KeyID {
			t.Errorf("the restart changed the key id from %s to %s", prev.KeyID, next.KeyID)
		}
	}
	second, stop := runStack(t, dir)
	stop()
	moved(first, second)
	if len(second.PortsMoved) == 0 && len(second.EnvChanged) != 0 {
		t.Errorf("restart: nothing moved, yet changed %q; want the environment unchanged", second.EnvChanged)
	}

	// The registry's port is taken by another program meanwhile.
	ln, err := net.Listen("tcp", "127.0.0.1:"+strings.TrimPrefix(second.Registry, "localhost:"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	third, stopThird := runStack(t, dir)
	stopThird()
	moved(second, third)
	if d := same(second, third); !slices.Contains(d, "registry") {
		t.Errorf("with the registry's port taken, the restart changed %v; want the registry among them", d)
	}
	if !slices.ContainsFunc(third.PortsMoved, func(m string) bool { return strings.HasPrefix(m, "registry: port ") }) {
		t.Errorf("moved %q; want the registry named", third.PortsMoved)
	}
	if !slices.Contains(third.EnvChanged, "ATTEST_REGISTRY") {
		t.Errorf("changed %q; want ATTEST_REGISTRY among them", third.EnvChanged)
	}

	// Another local user holds the registry's port on ::1 only, where localhost may resolve
	// first: the registry moves rather than share localhost:PORT with it.
	if l, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		l.Close()
		squat, err := net.Listen("tcp6", net.JoinHostPort("::1", strings.TrimPrefix(third.Registry, "localhost:")))
		if err != nil {
			t.Fatal(err)
		}
		defer squat.Close()
		fourth, _ := runStack(t, dir)
		if d := same(third, fourth); !slices.Contains(d, "registry") {
			t.Errorf("with the registry's port taken on ::1, the restart changed %v; want the registry among them", d)
		}
	}
}
