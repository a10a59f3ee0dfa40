package tpm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/tcp"
)

// Address schemes accepted by Open, besides a device path.
const (
	// SchemeSwtpm is a raw TPM 2.0 command stream over TCP (swtpm's "--server type=tcp" data port
	// and the local stack's simulator): swtpm:HOST:PORT.
	SchemeSwtpm = "swtpm:"
	// SchemeMssim is the Microsoft reference simulator's TCP protocol (command port, platform port
	// +1): mssim:HOST:PORT, through go-tpm's tcp transport, which bounds no command: a context
	// bounds only the connection there.
	SchemeMssim = "mssim:"
	// SchemeUnix is a raw TPM 2.0 command stream over a Unix socket kept open (swtpm
	// "--server type=unixio"): unix:PATH.
	SchemeUnix = "unix:"
)

// Bounds on the stream transports.
const (
	// maxResponseSize bounds a TPM response (TPM2's MAX_RESPONSE_SIZE is 4096 on common TPMs).
	maxResponseSize = 16 << 10
	// commandTimeout bounds one command over a socket; the context of the Device call that sends
	// it can only shorten the bound. RSA key generation in a software TPM can take seconds.
	commandTimeout = 2 * time.Minute
)

// Open opens the TPM at addr: a character device (DefaultDevice, /dev/tpm0), or one of the
// simulator schemes swtpm:HOST:PORT, mssim:HOST:PORT, unix:PATH. ctx bounds the connection. Over
// swtpm and unix sockets, each TPM command a Device method sends is bounded by that method's
// context (its deadline, or commandTimeout if earlier) and interrupted when it is cancelled; a
// command that fails in transit leaves the connection unusable (a late response could be taken
// for the next one's), so the Device then fails with ErrUnavailable until it is opened again. A
// character device or mssim cannot interrupt a command: there the context is checked between steps.
func Open(ctx context.Context, addr string, opts ...Option) (*Device, error) {
	t, err := openTransport(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, addr, err)
	}
	return New(t, opts...), nil
}

func openTransport(ctx context.Context, addr string) (transport.TPMCloser, error) {
	switch {
	case addr == "":
		return nil, fmt.Errorf("no TPM address")
	case strings.HasPrefix(addr, SchemeSwtpm):
		hostPort := strings.TrimPrefix(addr, SchemeSwtpm)
		if _, _, err := net.SplitHostPort(hostPort); err != nil {
			return nil, fmt.Errorf("want swtpm:HOST:PORT: %w", err)
		}
		return dialStream(ctx, "tcp", hostPort)
	case strings.HasPrefix(addr, SchemeUnix):
		return dialStream(ctx, "unix", strings.TrimPrefix(addr, SchemeUnix))
	case strings.HasPrefix(addr, SchemeMssim):
		host, port, err := net.SplitHostPort(strings.TrimPrefix(addr, SchemeMssim))
		if err != nil {
			return nil, fmt.Errorf("want mssim:HOST:PORT: %w", err)
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 || p == 65535 {
			return nil, fmt.Errorf("mssim port %q: want 1-65534 (the platform port is the next one)", port)
		}
		return tcp.Open(tcp.Config{
			CommandAddress:  net.JoinHostPort(host, port),
			PlatformAddress: net.JoinHostPort(host, strconv.FormatUint(p+1, 10)),
		})
	case strings.HasPrefix(addr, "/"):
		return linuxtpm.Open(addr)
	default:
		return nil, fmt.Errorf("unknown TPM address %q: want a device path, swtpm:HOST:PORT, mssim:HOST:PORT or unix:PATH", addr)
	}
}

// streamTPM sends raw TPM 2.0 commands over one stream connection (swtpm's data channel) and
// reads each response whole by its header's size, however it is split across reads. Each command
// is bounded by a deadline (sendContext).
type streamTPM struct {
	mu   sync.Mutex
	conn net.Conn
	// broken is the failure that left the stream out of step with the TPM; commands are refused
	// after it.
	broken error
}

// contextSender is a transport whose commands a context can bound (streamTPM).
type contextSender interface {
	sendContext(ctx context.Context, cmd []byte) ([]byte, error)
}

// boundTPM is a transport.TPM that sends each command bounded by ctx.
type boundTPM struct {
	s   contextSender
	ctx context.Context
}

// Send implements transport.TPM.
func (b boundTPM) Send(cmd []byte) ([]byte, error) { return b.s.sendContext(b.ctx, cmd) }

func dialStream(ctx context.Context, network, address string) (*streamTPM, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return &streamTPM{conn: conn}, nil
}

// Send implements transport.TPM: sendContext without a context, so bounded by commandTimeout.
func (s *streamTPM) Send(cmd []byte) ([]byte, error) {
	return s.sendContext(context.Background(), cmd)
}

// longAgo is a deadline in the past, which makes pending and later I/O on a connection fail.
var longAgo = time.Unix(1, 0)

// sendContext sends cmd and reads the response before the earlier of ctx's deadline and
// commandTimeout from now, and gives up as soon as ctx is cancelled. A failure in transit (a
// timeout included) leaves a partial command or an unread response on the stream, so it marks the
// stream broken and every later command fails with ErrUnavailable.
func (s *streamTPM) sendContext(ctx context.Context, cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return nil, fmt.Errorf("%w: the connection failed earlier: %w", ErrUnavailable, s.broken)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("TPM command not sent: %w", context.Cause(ctx))
	}
	deadline := time.Now().Add(commandTimeout)
	ctxDeadline, ok := ctx.Deadline()
	ctxBound := ok && ctxDeadline.Before(deadline)
	if ctxBound {
		deadline = ctxDeadline
	}
	if err := s.conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// Registered after SetDeadline, so that its deadline in the past always wins: it runs at once
	// if ctx is done already.
	interrupted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(interrupted)
		s.conn.SetDeadline(longAgo)
	})
	rsp, err := s.exchange(cmd)
	if !stop() {
		<-interrupted // so that it cannot move the deadline of a later command
	}
	if err != nil {
		s.broken = err
		switch {
		case ctx.Err() != nil:
			err = fmt.Errorf("%w: %w", context.Cause(ctx), err)
		case ctxBound && errors.Is(err, os.ErrDeadlineExceeded):
			// The connection's deadline can pass a moment before ctx's timer fires.
			err = fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return rsp, nil
}

// exchange writes cmd and reads the response.
func (s *streamTPM) exchange(cmd []byte) ([]byte, error) {
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("sending a command: %w", err)
	}
	rsp, err := ReadMessage(s.conn, maxResponseSize)
	if err != nil {
		return nil, fmt.Errorf("reading a response: %w", err)
	}
	return rsp, nil
}

// Close implements io.Closer.
func (s *streamTPM) Close() error { return s.conn.Close() }

// HeaderSize is the size of a TPM 2.0 command or response header: tag (2), size (4), code (4).
const HeaderSize = 10

// ReadMessage reads one TPM 2.0 command or response from r: the 10-byte header, whose size field
// covers the whole message, then the rest. Sizes below HeaderSize or above max are refused.
func ReadMessage(r io.Reader, max int) ([]byte, error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < HeaderSize || uint64(size) > uint64(max) {
		return nil, fmt.Errorf("TPM message size %d outside [%d, %d]", size, HeaderSize, max)
	}
	msg := make([]byte, size)
	copy(msg, hdr[:])
	if _, err := io.ReadFull(r, msg[HeaderSize:]); err != nil {
		return nil, err
	}
	return msg, nil
}
