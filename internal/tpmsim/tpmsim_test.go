package tpmsim

import (
	"bytes"
	"context"
	"crypto"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/attested-kv/attested-kv/internal/tpm"
)

// The simulator is the Microsoft reference TPM 2.0 (go-tpm-tools); it holds process-wide state,
// so no test here is parallel.

func newSim(t *testing.T) transport.TPM {
	t.Helper()
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return transport.FromReadWriter(sim)
}

func readPCRs(t *testing.T, tp transport.TPM) []attest.PCR {
	t.Helper()
	var out []attest.PCR
	for i := 0; i < 24; i++ {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
			Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(uint(i)),
		}}}}.Execute(tp)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, attest.PCR{Index: i, Digest: rsp.PCRValues.Digests[0].Buffer, DigestAlg: crypto.SHA256})
	}
	return out
}

func TestEventLogReplaysAndShowsSecureBoot(t *testing.T) {
	for _, sb := range []bool{true, false} {
		t.Run(map[bool]string{true: "secure boot on", false: "secure boot off"}[sb], func(t *testing.T) { testEventLog(t, sb) })
	}
}

func testEventLog(t *testing.T, sb bool) {
	{
		tp := newSim(t)
		raw, extends, err := BuildEventLog(EventLogOptions{SecureBoot: sb})
		if err != nil {
			t.Fatal(err)
		}
		if err := ApplyEventLog(context.Background(), tp, extends); err != nil {
			t.Fatal(err)
		}
		el, err := attest.ParseEventLog(raw)
		if err != nil {
			t.Fatalf("go-attestation cannot parse the log: %v", err)
		}
		events, err := el.Verify(readPCRs(t, tp))
		if err != nil {
			t.Fatalf("the log does not replay to the TPM's PCRs: %v", err)
		}
		st, err := attest.ParseSecurebootState(events)
		if err != nil {
			t.Fatalf("secure boot state: %v", err)
		}
		if st.Enabled != sb || len(st.PlatformKeys) != 1 || len(st.ExchangeKeys) != 1 || len(st.PermittedKeys) != 1 || len(st.ForbiddenHashes) != 1 {
			t.Fatalf("SecureBoot %v: state %+v", sb, st)
		}
		if sb && len(st.PostSeparatorAuthority) != 1 {
			t.Fatalf("want the db authority that verified the boot loader, got %d", len(st.PostSeparatorAuthority))
		}
		// The log must not replay to another PCR state.
		pcrs := readPCRs(t, tp)
		pcrs[7].Digest = make([]byte, 32)
		if _, err := el.Verify(pcrs); err == nil {
			t.Fatal("the log replayed to a PCR 7 it did not produce")
		}
	}
}

func serve(t *testing.T) (*Server, string) {
	t.Helper()
	srv := NewServer(newSim(t), ServerOptions{})
	addr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); srv.Close(); <-done })
	return srv, addr.String()
}

func dial(t *testing.T, addr string) *tpm.Device {
	t.Helper()
	d, err := tpm.Open(context.Background(), "swtpm:"+addr)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// rawClient sends commands over a plain connection, as another process would.
type rawClient struct{ net.Conn }

func (c rawClient) Send(cmd []byte) ([]byte, error) {
	if _, err := c.Write(cmd); err != nil {
		return nil, err
	}
	return tpm.ReadMessage(c, 8192)
}

func connect(t *testing.T, addr string) rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return rawClient{c}
}

func TestServer(t *testing.T) {
	srv, addr := serve(t)

	c := connect(t, addr)
	if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(c); err != nil {
		t.Fatalf("GetRandom through the server: %v", err)
	}
	// A client that leaves a transient key loaded and disconnects leaves nothing behind.
	if _, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHNull, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}).Execute(c); err != nil {
		t.Fatalf("CreatePrimary: %v", err)
	}
	c.Close()
	c2 := connect(t, addr)
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: handlesTransient, PropertyCount: 16}.Execute(c2)
	if err != nil {
		t.Fatal(err)
	}
	if hs, _ := rsp.CapabilityData.Data.Handles(); len(hs.Handle) != 0 {
		t.Fatalf("transient handles left by a disconnected client: %v", hs.Handle)
	}
	c2.Close()

	// An outage drops connections and refuses new ones until Start.
	srv.Stop()
	c3 := connect(t, addr)
	if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(c3); err == nil {
		t.Fatal("the TPM answered while stopped")
	}
	srv.Start()
	c4 := connect(t, addr)
	if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(c4); err != nil {
		t.Fatalf("after Start: %v", err)
	}
	c4.Close()

	// A bad header closes that connection; the server keeps serving.
	for _, hdr := range [][]byte{
		{0x80, 0x01, 0, 0, 0, 9, 0, 0, 1, 0x7b},             // size below the header
		{0x80, 0x01, 0x7f, 0xff, 0xff, 0xff, 0, 0, 1, 0x7b}, // size far above the limit
	} {
		bad := connect(t, addr)
		bad.Write(hdr)
		bad.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(bad); err != nil && !errors.Is(err, io.EOF) {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("header %x: connection not closed", hdr)
			}
		}
	}
	d := dial(t, addr)
	defer d.Close()
	if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(connectAfter(t, d, addr)); err != nil {
		t.Fatalf("after bad headers: %v", err)
	}
}

// connectAfter closes d (which holds the TPM) and returns a new raw connection.
func connectAfter(t *testing.T, d *tpm.Device, addr string) rawClient {
	d.Close()
	return connect(t, addr)
}

func TestListenRefusesNonLoopback(t *testing.T) {
	srv := NewServer(nil, ServerOptions{})
	for _, a := range []string{"0.0.0.0:0", "10.1.2.3:0", ":0"} {
		if _, err := srv.Listen(a); err == nil {
			t.Errorf("Listen(%q) accepted", a)
		}
	}
}

func FuzzServerFraming(f *testing.F) {
	f.Add([]byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8})
	f.Fuzz(func(t *testing.T, b []byte) {
		msg, err := tpm.ReadMessage(bytes.NewReader(b), MaxCommandSize)
		if err == nil && (len(msg) < tpm.HeaderSize || int(binary.BigEndian.Uint32(msg[2:6])) != len(msg)) {
			t.Fatalf("framing returned %d bytes for size %d", len(msg), binary.BigEndian.Uint32(msg[2:6]))
		}
	})
}
