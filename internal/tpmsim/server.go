// Package tpmsim serves a TPM 2.0 simulator to other processes and measures a synthetic UEFI
// boot into it, so that the local stack's TPM looks like an Azure Trusted Launch vTPM to the
// clients, which reach it as swtpm:HOST:PORT.
//
// The server speaks swtpm's TCP data channel: raw TPM 2.0 command bytes in, raw response bytes
// out, no framing beyond the TPM header's size field. It serves one connection at a time, like a
// TPM device, and acts as a minimal resource manager: when a client disconnects, the transient
// objects and sessions it left loaded are flushed, so a crashed client cannot exhaust the TPM.
package tpmsim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/attested-kv/attested-kv/internal/tpm"
)

// Bounds of the server.
const (
	// MaxCommandSize bounds a command (TPM2 MAX_COMMAND_SIZE is 4096 on common TPMs).
	MaxCommandSize = 8192
	// IdleTimeout drops a connection that sends nothing for this long, releasing the TPM.
	IdleTimeout = 30 * time.Second
	// QueueTimeout bounds how long a connection waits for the TPM while another holds it.
	QueueTimeout = 2 * time.Minute
)

// ServerOptions configures a Server.
type ServerOptions struct {
	// Logger receives connection events at Debug and faults at Warn; nil is silent.
	Logger *slog.Logger
}

// Server serves one TPM over TCP on loopback.
type Server struct {
	t   transport.TPM
	log *slog.Logger

	tpmMu    sync.Mutex     // held while a connection owns the TPM
	handlers sync.WaitGroup // running connection handlers

	mu      sync.Mutex
	ln      net.Listener
	stopped bool
	closed  bool
	conns   map[net.Conn]struct{}
}

// NewServer returns a server for t. The server is its only user from now on.
func NewServer(t transport.TPM, o ServerOptions) *Server {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{t: t, log: log, conns: map[net.Conn]struct{}{}}
}

// Listen binds addr, which must be a loopback address: the TPM has no access control.
func (s *Server) Listen(addr string) (net.Addr, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("TPM server: %q is not a loopback address; the simulator has no access control", host)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	return ln.Addr(), nil
}

// Serve accepts connections until ctx ends or Close is called.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	ln := s.ln
	s.mu.Unlock()
	if ln == nil {
		return errors.New("TPM server: Serve before Listen")
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return net.ErrClosed
		}
		s.handlers.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.handlers.Done()
			s.handle(conn)
		}()
	}
}

// Stop simulates an outage: live connections are dropped and new ones closed at once.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	for c := range s.conns {
		c.Close()
	}
}

// Start ends an outage begun by Stop.
func (s *Server) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = false
}

// Stopped reports whether the server is in a simulated outage.
func (s *Server) Stopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// Close stops listening, drops every connection and waits until no handler uses the TPM, so the
// caller may close the TPM afterwards.
func (s *Server) Close() error {
	s.mu.Lock()
	var err error
	if s.ln != nil {
		err = s.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.closed = true
	s.mu.Unlock()
	s.handlers.Wait()
	return err
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

func (s *Server) handle(conn net.Conn) {
	defer conn.Close()
	if !s.track(conn) {
		s.log.Debug("TPM stopped: connection refused", "remote", conn.RemoteAddr())
		return
	}
	defer s.untrack(conn)

	// Wait for the TPM, bounded: a client that holds it longer than QueueTimeout starves others.
	acquired := make(chan struct{})
	go func() { s.tpmMu.Lock(); close(acquired) }()
	select {
	case <-acquired:
	case <-time.After(QueueTimeout):
		go func() { <-acquired; s.tpmMu.Unlock() }()
		s.log.Warn("TPM busy: connection dropped after waiting", "remote", conn.RemoteAddr())
		return
	}
	defer s.tpmMu.Unlock()
	defer s.flushTransients()
	s.log.Debug("TPM connection", "remote", conn.RemoteAddr())

	for {
		if err := conn.SetReadDeadline(time.Now().Add(IdleTimeout)); err != nil {
			return
		}
		cmd, err := tpm.ReadMessage(conn, MaxCommandSize)
		if err != nil {
			s.log.Debug("TPM connection closed", "remote", conn.RemoteAddr(), "err", err)
			return
		}
		if s.Stopped() {
			return
		}
		s.log.Debug("TPM command", "bytes", cmd)
		rsp, err := s.t.Send(cmd)
		if err != nil {
			// The transport returns TPM error codes as errors and the response bytes with them;
			// a response-less failure is a simulator fault.
			var rc tpm2.TPMRC
			if !errors.As(err, &rc) || len(rsp) == 0 {
				s.log.Warn("TPM command failed", "err", err)
				return
			}
		}
		if _, err := conn.Write(rsp); err != nil {
			return
		}
	}
}

// Handle ranges (TPM 2.0 Part 2, TPM_HT).
const (
	handlesTransient = 0x80000000
	handlesHMAC      = 0x02000000
	handlesPolicy    = 0x03000000
)

// flushTransients flushes the transient objects and sessions the last client left, as a resource
// manager does between clients.
func (s *Server) flushTransients() {
	for _, first := range []uint32{handlesTransient, handlesHMAC, handlesPolicy} {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: first, PropertyCount: 64}.Execute(s.t)
		if err != nil {
			s.log.Warn("listing handles to flush", "err", err)
			continue
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			continue
		}
		for _, h := range hs.Handle {
			if uint32(h)&0xff000000 != first&0xff000000 {
				continue
			}
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(s.t); err != nil {
				s.log.Warn("flushing a handle left by a client", "handle", fmt.Sprintf("0x%08x", uint32(h)), "err", err)
			}
		}
	}
}
