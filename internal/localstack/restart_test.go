package localstack

import (
	"net"
	"slices"
	"strings"
	"testing"
)

// TestEnvChanges: the variables whose values differ, appear or disappear between two starts are
// named, in Env's order; equal ones are not.
func TestEnvChanges(t *testing.T) {
	prev := &State{MAAURL: "https://127.0.0.1:1", KeyID: "k1", Registry: "localhost:5", CertDirPath: "/c", TenantID: "t"}
	for _, tc := range []struct {
		name string
		next State
		want []string
	}{
		{"same", *prev, nil},
		{"key id", State{MAAURL: "https://127.0.0.1:1", KeyID: "k2", Registry: "localhost:5", CertDirPath: "/c", TenantID: "t"}, []string{"ATTEST_KEY_ID"}},
		{"registry and tenant", State{MAAURL: "https://127.0.0.1:1", KeyID: "k1", Registry: "localhost:6", CertDirPath: "/c", TenantID: "u"}, []string{"ATTEST_REGISTRY", "AZURE_TENANT_ID"}},
		{"a variable gone", State{MAAURL: "https://127.0.0.1:1", KeyID: "k1", Registry: "localhost:5", TenantID: "t"}, []string{"SSL_CERT_DIR"}},
		{"a variable new", State{MAAURL: "https://127.0.0.1:1", KeyID: "k1", Registry: "localhost:5", CertDirPath: "/c", TenantID: "t", OSReleasePath: "/o"}, []string{"ATTEST_OS_RELEASE"}},
	} {
		if got := envChanges(prev, &tc.next); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestKeepPort: the previous port is taken again when free; when it is not, or on a first start,
// a port the system chooses, and only a port that could not be kept is noted.
func TestKeepPort(t *testing.T) {
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	prevAddr := free.Addr().String()
	free.Close()
	r := &restart{}
	ln, err := keepPort(r, "registry", prevAddr, listenTCP)
	if err != nil {
		t.Fatal(err)
	}
	if ln.Addr().String() != prevAddr || len(r.moved) != 0 {
		t.Errorf("listens on %s (moved %q), want %s kept", ln.Addr(), r.moved, prevAddr)
	}
	// Now taken by ln.
	other, err := keepPort(r, "registry", prevAddr, listenTCP)
	if err != nil {
		t.Fatal(err)
	}
	if other.Addr().String() == prevAddr || len(r.moved) != 1 || !strings.Contains(r.moved[0], "registry: port ") {
		t.Errorf("listens on %s (moved %q), want another port and the move noted", other.Addr(), r.moved)
	}
	other.Close()
	ln.Close()
	first := &restart{}
	ln, err = keepPort(first, "registry", "", listenTCP)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if len(first.moved) != 0 {
		t.Errorf("a first start notes %q", first.moved)
	}
}
