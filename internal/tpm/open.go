package tpm

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
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
	// +1): mssim:HOST:PORT.
	SchemeMssim = "mssim:"
	// SchemeUnix is a raw TPM 2.0 command stream over a Unix socket kept open (swtpm
	// "--server type=unixio"): unix:PATH.
	SchemeUnix = "unix:"
)

// Bounds on the stream transports.
const (
	// maxResponseSize bounds a TPM response (TPM2's MAX_RESPONSE_SIZE is 4096 on common TPMs).
	maxResponseSize = 16 << 10
	// commandTimeout bounds one command when the context sets no deadline. RSA key generation in a
	// software TPM can take seconds.
	commandTimeout = 2 * time.Minute
)

// Open opens the TPM at addr: a character device (DefaultDevice, /dev/tpm0), or one of the
// simulator schemes swtpm:HOST:PORT, mssim:HOST:PORT, unix:PATH. ctx bounds the connection only.
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

// streamTPM sends raw TPM 2.0 commands over one stream connection and reads each response by its
// header's size, so a response split across reads is still read whole.
type streamTPM struct {
	mu   sync.Mutex
	conn net.Conn
}

func dialStream(ctx context.Context, network, address string) (*streamTPM, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return &streamTPM{conn: conn}, nil
}

// Send implements transport.TPM.
func (s *streamTPM) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.conn.SetDeadline(time.Now().Add(commandTimeout)); err != nil {
		return nil, err
	}
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("%w: sending a command: %w", ErrUnavailable, err)
	}
	rsp, err := ReadMessage(s.conn, maxResponseSize)
	if err != nil {
		return nil, fmt.Errorf("%w: reading a response: %w", ErrUnavailable, err)
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
