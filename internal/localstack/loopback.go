package localstack

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
)

// listenLoopback listens on the port of addr (127.0.0.1:PORT, PORT 0 for one the system chooses)
// of both loopback addresses, 127.0.0.1 and ::1, for a server its clients reach as
// "localhost:PORT" (the registry: notation and oras speak plain HTTP to localhost only). A client
// resolving localhost may try ::1 first (most /etc/hosts name ::1 localhost too, and Go then
// dials it first), and a port held on 127.0.0.1 only would leave [::1]:PORT to whoever binds it,
// another local user included, who would then be served the pushes and answer the pulls of
// every client, notation signing what that user serves. Where the machine has no IPv6 loopback
// (the address cannot be assigned or the family is not supported), no one can bind ::1 and
// 127.0.0.1 alone is listened on.
//
// A fixed port taken on either address is an error (keepPort then takes a new one); for PORT 0,
// a port the system gave on 127.0.0.1 but someone holds on ::1 is given back and another tried.
func listenLoopback(addr string) (net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	tries := 1
	if port == "0" {
		tries = 16
	}
	var lastErr error
	for range tries {
		v4, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", port))
		if err != nil {
			return nil, err
		}
		_, got, _ := net.SplitHostPort(v4.Addr().String())
		v6, err := net.Listen("tcp6", net.JoinHostPort("::1", got))
		switch {
		case err == nil:
			return newDualListener(v4, v6), nil
		case noIPv6Loopback(err):
			return v4, nil
		}
		v4.Close()
		lastErr = fmt.Errorf("port %s is free on 127.0.0.1 but not on ::1: %w", got, err)
	}
	return nil, lastErr
}

// noIPv6Loopback reports whether err, from listening on ::1, says the machine has no IPv6
// loopback.
func noIPv6Loopback(err error) bool {
	return errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EPROTONOSUPPORT)
}

// dualListener accepts the connections of two listeners; its address is the first's.
type dualListener struct {
	ls    [2]net.Listener
	conns chan net.Conn
	errs  chan error
	done  chan struct{}
	once  sync.Once
}

func newDualListener(a, b net.Listener) *dualListener {
	d := &dualListener{ls: [2]net.Listener{a, b}, conns: make(chan net.Conn), errs: make(chan error), done: make(chan struct{})}
	for _, l := range d.ls {
		go d.accept(l)
	}
	return d
}

// accept hands l's connections to Accept until l or d is closed. Other errors (out of file
// descriptors) are handed on too, and accepting goes on after a pause: http.Server.Serve pauses
// and retries on its side.
func (d *dualListener) accept(l net.Listener) {
	for {
		c, err := l.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			select {
			case d.errs <- err:
			case <-d.done:
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		select {
		case d.conns <- c:
		case <-d.done:
			c.Close()
			return
		}
	}
}

// Accept implements net.Listener: the next connection of either listener, or an error one of
// them met.
func (d *dualListener) Accept() (net.Conn, error) {
	select {
	case c := <-d.conns:
		return c, nil
	case err := <-d.errs:
		return nil, err
	case <-d.done:
		return nil, net.ErrClosed
	}
}

// Close closes both listeners.
func (d *dualListener) Close() error {
	var err error
	d.once.Do(func() {
		close(d.done)
		err = errors.Join(d.ls[0].Close(), d.ls[1].Close())
	})
	return err
}

// Addr is the 127.0.0.1 listener's address.
func (d *dualListener) Addr() net.Addr { return d.ls[0].Addr() }
