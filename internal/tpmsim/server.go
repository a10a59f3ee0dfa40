// Package tpmsim serves a TPM 2.0 simulator to other processes and measures a synthetic UEFI
// boot into it, so that the local stack's TPM looks like an Azure Trusted Launch vTPM to the
// clients, which reach it as swtpm:HOST:PORT.
//
// The server speaks swtpm's TCP data channel ("--server type=tcp"): raw TPM 2.0 command bytes in,
// raw response bytes out, no framing beyond the TPM header's size field. It serves one connection
// at a time, like a TPM device, queueing the others in accept order, and acts as a minimal
// resource manager: when a client disconnects, the transient objects and sessions it left loaded
// are flushed, so a crashed client cannot exhaust the TPM's slots.
//
// BuildEventLog and ApplyEventLog produce the TCG event log of a UEFI (Secure) Boot of a Linux VM
// and extend the TPM's PCRs so that the log replays to them.
package tpmsim

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Bounds of the server.
const (
	// HeaderSize is the size of a TPM 2.0 command header: tag (2), size (4), command code (4).
	HeaderSize = 10
	// MaxCommandSize bounds a command (TPM2 MAX_COMMAND_SIZE is 4096 on common TPMs); a client
	// announcing a larger one is disconnected.
	MaxCommandSize = 8192
	// DefaultIdleTimeout is the default ServerOptions.IdleTimeout.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultQueueTimeout is the default ServerOptions.QueueTimeout.
	DefaultQueueTimeout = 2 * time.Minute
	// MaxQueued bounds the connections waiting for the TPM; more are closed at once.
	MaxQueued = 64
)

// errCommandSize is returned by readCommand for a header whose size field is out of bounds.
var errCommandSize = errors.New("TPM command size out of bounds")

// readCommand reads one TPM 2.0 command from r: the 10-byte header, whose big-endian size field
// covers the whole command, then the rest. It returns io.EOF if r ends before the first byte,
// io.ErrUnexpectedEOF if it ends inside the command, and an error wrapping errCommandSize if the
// size is below HeaderSize or above MaxCommandSize (without reading further).
func readCommand(r io.Reader) ([]byte, error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < HeaderSize || size > MaxCommandSize {
		return nil, fmt.Errorf("%w: %d bytes, want %d to %d", errCommandSize, size, HeaderSize, MaxCommandSize)
	}
	cmd := make([]byte, size)
	copy(cmd, hdr[:])
	if _, err := io.ReadFull(r, cmd[HeaderSize:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return cmd, nil
}

// ServerOptions configures a Server.
type ServerOptions struct {
	// Logger receives connection events at Debug and faults at Warn; nil discards them. Command
	// bytes are logged at Debug only.
	Logger *slog.Logger
	// IdleTimeout drops a connection that takes longer than this to send its next command
	// (whole) or to take a response, releasing the TPM for the queued connections; zero means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// QueueTimeout bounds how long a connection waits for the TPM while others hold it; it is
	// then closed. Zero means DefaultQueueTimeout.
	QueueTimeout time.Duration
}

// Server serves one TPM to TCP clients on loopback, one connection at a time. Create it with
// NewServer, bind it with Listen, run it with Serve; Stop and Start simulate an outage.
type Server struct {
	t            transport.TPM
	log          *slog.Logger
	idleTimeout  time.Duration
	queueTimeout time.Duration

	workers sync.WaitGroup // connection workers of running Serve calls

	mu      sync.Mutex
	ln      net.Listener
	serving bool
	stopped bool
	closed  bool
	conns   map[net.Conn]struct{} // queued and active connections
}

// queued is a connection waiting for the TPM.
type queued struct {
	conn  net.Conn
	timer *time.Timer // closes conn after the queue timeout
}

// NewServer returns a server for t. From now on the server must be t's only user, until Close
// returns.
func NewServer(t transport.TPM, o ServerOptions) *Server {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{t: t, log: log, idleTimeout: o.IdleTimeout, queueTimeout: o.QueueTimeout, conns: map[net.Conn]struct{}{}}
	if s.idleTimeout <= 0 {
		s.idleTimeout = DefaultIdleTimeout
	}
	if s.queueTimeout <= 0 {
		s.queueTimeout = DefaultQueueTimeout
	}
	return s
}

// Listen binds the TCP address addr ("127.0.0.1:0" picks a free port) and returns the bound
// address. addr must be a loopback address (or "localhost"): the TPM has no access control, so
// any other address, including the unspecified one, is refused.
func (s *Server) Listen(addr string) (net.Addr, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("TPM server: %w", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("TPM server: %q is not a loopback address; the simulator has no access control", host)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return nil, net.ErrClosed
	case s.ln != nil:
		return nil, errors.New("TPM server: already listening")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("TPM server: %w", err)
	}
	if a, ok := ln.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("TPM server: %s resolved to the non-loopback %s", addr, ln.Addr())
	}
	s.ln = ln
	return ln.Addr(), nil
}

// Serve accepts connections on the listener bound by Listen and serves them one at a time, in
// accept order, until ctx ends (it returns ctx.Err()) or Close is called (it returns
// net.ErrClosed). When it returns, its connections are closed and no longer use the TPM.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	ln := s.ln
	switch {
	case s.closed:
		s.mu.Unlock()
		return net.ErrClosed
	case ln == nil:
		s.mu.Unlock()
		return errors.New("TPM server: Serve before Listen")
	case s.serving:
		s.mu.Unlock()
		return errors.New("TPM server: already serving")
	}
	s.serving = true
	s.workers.Add(1)
	s.mu.Unlock()

	queue := make(chan queued, MaxQueued)
	workDone := make(chan struct{})
	go func() {
		defer s.workers.Done()
		defer close(workDone)
		s.work(queue)
	}()
	serveDone := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			ln.Close()
		case <-serveDone:
		}
	}()

	err := s.accept(ln, queue)
	close(serveDone)
	close(queue)
	s.dropAll()
	<-workDone
	if ctx.Err() != nil {
		err = ctx.Err()
	} else if s.isClosed() || errors.Is(err, net.ErrClosed) {
		err = net.ErrClosed
	}
	return err
}

// accept queues accepted connections for the worker until the listener fails.
func (s *Server) accept(ln net.Listener, queue chan<- queued) error {
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) { // e.g. out of file descriptors: retry
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("TPM server: accepting a connection", "err", err)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		remote := conn.RemoteAddr().String()
		if !s.track(conn) {
			s.log.Debug("TPM server stopped: connection closed at once", "remote", remote)
			conn.Close()
			continue
		}
		timer := time.AfterFunc(s.queueTimeout, func() {
			s.log.Warn("TPM busy: connection closed after waiting for the TPM", "remote", remote, "waited", s.queueTimeout)
			conn.Close()
		})
		select {
		case queue <- queued{conn: conn, timer: timer}:
			s.log.Debug("TPM connection accepted", "remote", remote)
		default:
			timer.Stop()
			s.untrack(conn)
			conn.Close()
			s.log.Warn("TPM busy: too many connections waiting, connection closed", "remote", remote, "waiting", MaxQueued)
		}
	}
}

// work serves the queued connections one after the other.
func (s *Server) work(queue <-chan queued) {
	for q := range queue {
		if !q.timer.Stop() { // waited too long: already closed
			s.untrack(q.conn)
			continue
		}
		s.handle(q.conn)
	}
}

// track registers a new connection; it reports false if the server is stopped or closed.
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

// dropAll closes every queued and active connection.
func (s *Server) dropAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Stop begins a simulated outage: live and queued connections are dropped, and connections
// accepted while stopped are closed at once. The TPM's state is kept. Start ends the outage.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopped {
		s.log.Debug("TPM server: outage begins")
	}
	s.stopped = true
	for c := range s.conns {
		c.Close()
	}
}

// Start ends an outage begun by Stop: new connections are served again.
func (s *Server) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		s.log.Debug("TPM server: outage ends")
	}
	s.stopped = false
}

// Stopped reports whether the server is in an outage begun by Stop.
func (s *Server) Stopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// Close stops listening, drops every connection and waits until no connection uses the TPM, so
// the caller may close the TPM afterwards. Serve then returns net.ErrClosed. Close is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	var err error
	if s.ln != nil && !s.closed {
		if err = s.ln.Close(); errors.Is(err, net.ErrClosed) {
			err = nil
		}
	}
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.workers.Wait()
	return err
}

// handle serves one connection, which owns the TPM until it ends, then flushes what it left.
func (s *Server) handle(conn net.Conn) {
	remote := conn.RemoteAddr().String()
	defer s.untrack(conn)
	defer s.flushTransients()
	defer conn.Close()
	if s.Stopped() {
		return
	}
	s.log.Debug("TPM connection serving", "remote", remote)
	for {
		if err := conn.SetReadDeadline(time.Now().Add(s.idleTimeout)); err != nil {
			s.log.Debug("TPM connection closed", "remote", remote, "err", err)
			return
		}
		cmd, err := readCommand(conn)
		var ne net.Error
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			s.log.Debug("TPM connection closed by the client", "remote", remote)
			return
		case errors.Is(err, errCommandSize):
			s.log.Warn("TPM connection dropped: bad command header", "remote", remote, "err", err)
			return
		case errors.As(err, &ne) && ne.Timeout():
			s.log.Warn("TPM connection dropped: idle or stalled client", "remote", remote, "timeout", s.idleTimeout)
			return
		default:
			// Includes the connection closed by Stop or Close.
			s.log.Debug("TPM connection closed", "remote", remote, "err", err)
			return
		}
		if s.Stopped() {
			return
		}
		if s.log.Enabled(context.Background(), slog.LevelDebug) {
			s.log.Debug("TPM command", "remote", remote,
				"code", fmt.Sprintf("0x%08x", binary.BigEndian.Uint32(cmd[6:10])), "bytes", hex.EncodeToString(cmd))
		}
		rsp, err := s.t.Send(cmd)
		if err != nil || len(rsp) == 0 {
			s.log.Warn("TPM command failed in the simulator", "remote", remote,
				"code", fmt.Sprintf("0x%08x", binary.BigEndian.Uint32(cmd[6:10])), "err", err)
			return
		}
		if err := conn.SetWriteDeadline(time.Now().Add(s.idleTimeout)); err != nil {
			return
		}
		if _, err := conn.Write(rsp); err != nil {
			s.log.Debug("TPM connection: writing a response", "remote", remote, "err", err)
			return
		}
	}
}

// Handle ranges (TPM 2.0 Part 2, TPM_HT): transient objects, loaded sessions (HMAC, and on
// most TPMs also policy), policy/saved sessions.
const (
	handlesTransient = 0x80000000
	handlesHMAC      = 0x02000000
	handlesPolicy    = 0x03000000
)

// flushTransients flushes every transient object and session the last client left, as a
// resource manager does between clients.
func (s *Server) flushTransients() {
	for _, first := range []uint32{handlesTransient, handlesHMAC, handlesPolicy} {
		// Each round lists what remains; flushing shrinks it, so a few rounds always suffice.
		for round := 0; round < 8; round++ {
			rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: first, PropertyCount: 64}.Execute(s.t)
			if err != nil {
				s.log.Warn("TPM: listing handles to flush", "first", fmt.Sprintf("0x%08x", first), "err", err)
				break
			}
			hs, err := rsp.CapabilityData.Data.Handles()
			if err != nil {
				s.log.Warn("TPM: listing handles to flush", "first", fmt.Sprintf("0x%08x", first), "err", err)
				break
			}
			flushed := 0
			for _, h := range hs.Handle {
				switch uint32(h) >> 24 {
				case handlesTransient >> 24, handlesHMAC >> 24, handlesPolicy >> 24:
				default:
					continue
				}
				if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(s.t); err != nil {
					s.log.Warn("TPM: flushing a handle left by a client", "handle", fmt.Sprintf("0x%08x", uint32(h)), "err", err)
					continue
				}
				s.log.Debug("TPM: flushed a handle left by a client", "handle", fmt.Sprintf("0x%08x", uint32(h)))
				flushed++
			}
			if flushed == 0 || !rsp.MoreData && flushed == len(hs.Handle) {
				break
			}
		}
	}
}
