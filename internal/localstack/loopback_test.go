package localstack

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
)

// listenBoth skips t on a machine without an IPv6 loopback, else listens with listenLoopback on
// a port the system chooses and returns the listener and its port.
func listenBoth(t *testing.T) (net.Listener, string) {
	t.Helper()
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	l.Close()
	if l, err = listenLoopback("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return l, port
}

// TestListenLoopback: the registry's port is held on 127.0.0.1 and ::1 alike, so that no one
// else can serve localhost:PORT on the address a client may try first; both are served; a fixed
// port someone holds on ::1 is refused (keepPort then takes another). (A system-chosen port taken
// on ::1 is retried; which port the system gives cannot be arranged, so that path is not tested.)
func TestListenLoopback(t *testing.T) {
	l, port := listenBoth(t)
	defer l.Close()
	if !strings.HasPrefix(l.Addr().String(), "127.0.0.1:") {
		t.Fatalf("address %s, want 127.0.0.1", l.Addr())
	}
	if other, err := net.Listen("tcp6", net.JoinHostPort("::1", port)); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		if other != nil {
			other.Close()
		}
		t.Fatalf("another listener got [::1]:%s: %v", port, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "registry") })}
	go srv.Serve(l)
	defer srv.Close()
	for _, host := range []string{"127.0.0.1", "::1"} {
		resp, err := http.Get("http://" + net.JoinHostPort(host, port) + "/")
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "registry" {
			t.Fatalf("%s answered %q", host, b)
		}
	}

	// Someone holds a port on ::1 only.
	squat, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squat.Close()
	_, taken, _ := net.SplitHostPort(squat.Addr().String())
	if l2, err := listenLoopback(net.JoinHostPort("127.0.0.1", taken)); err == nil {
		l2.Close()
		t.Fatalf("port %s, held on ::1 by another, was listened on", taken)
	}
	if l4, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", taken)); err != nil {
		t.Fatalf("the refused port was kept on 127.0.0.1: %v", err)
	} else {
		l4.Close()
	}
}

// TestDualListenerClose: closing ends Accept with net.ErrClosed and frees both addresses.
func TestDualListenerClose(t *testing.T) {
	l, port := listenBoth(t)
	done := make(chan error, 1)
	go func() { _, err := l.Accept(); done <- err }()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		host := "127.0.0.1"
		if network == "tcp6" {
			host = "::1"
		}
		again, err := net.Listen(network, net.JoinHostPort(host, port))
		if err != nil {
			t.Fatalf("%s port %s not freed: %v", host, port, err)
		}
		again.Close()
	}
}
