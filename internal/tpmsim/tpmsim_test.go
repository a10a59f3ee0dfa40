package tpmsim

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
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
)

// The simulator is the Microsoft reference TPM 2.0 (go-tpm-tools); it holds process-wide state,
// so no test here is parallel, and each closes it.

func newSim(t *testing.T) transport.TPM {
	t.Helper()
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return transport.FromReadWriter(sim)
}

func readPCR(t *testing.T, tp transport.TPM, i int) []byte {
	t.Helper()
	rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(uint(i)),
	}}}}.Execute(tp)
	if err != nil {
		t.Fatalf("PCR_Read %d: %v", i, err)
	}
	if len(rsp.PCRValues.Digests) != 1 {
		t.Fatalf("PCR_Read %d: %d digests", i, len(rsp.PCRValues.Digests))
	}
	return rsp.PCRValues.Digests[0].Buffer
}

func readPCRs(t *testing.T, tp transport.TPM) []attest.PCR {
	t.Helper()
	var out []attest.PCR
	for i := 0; i < 24; i++ {
		out = append(out, attest.PCR{Index: i, Digest: readPCR(t, tp, i), DigestAlg: crypto.SHA256})
	}
	return out
}

// replay computes the SHA-256 PCR values the extends produce from zeroed PCRs.
func replay(extends []PCRExtend) map[int][]byte {
	out := map[int][]byte{}
	for _, e := range extends {
		cur, ok := out[e.PCR]
		if !ok {
			cur = make([]byte, sha256.Size)
		}
		h := sha256.Sum256(append(append([]byte{}, cur...), e.Digest...))
		out[e.PCR] = h[:]
	}
	return out
}

func TestEventLogReplaysAndShowsSecureBoot(t *testing.T) {
	for _, sb := range []bool{true, false} {
		name := map[bool]string{true: "secure boot on", false: "secure boot off"}[sb]
		t.Run(name, func(t *testing.T) { testEventLog(t, sb) })
	}
}

func testEventLog(t *testing.T, sb bool) {
	tp := newSim(t)
	raw, extends, err := BuildEventLog(EventLogOptions{SecureBoot: sb})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range extends {
		if e.PCR < 0 || e.PCR > 7 || len(e.Digest) != sha256.Size {
			t.Fatalf("extend %+v", e)
		}
	}
	if err := ApplyEventLog(context.Background(), tp, extends); err != nil {
		t.Fatal(err)
	}
	el, err := attest.ParseEventLog(raw)
	if err != nil {
		t.Fatalf("go-attestation cannot parse the log: %v", err)
	}
	if algs := el.Algs; len(algs) != 1 || algs[0] != attest.HashSHA256 {
		t.Fatalf("log banks %v, want SHA-256 only", algs)
	}
	pcrs := readPCRs(t, tp)
	events, err := el.Verify(pcrs)
	if err != nil {
		t.Fatalf("the log does not replay to the TPM's PCRs: %v", err)
	}
	if len(events) != len(extends) {
		t.Fatalf("%d verified events, %d extends", len(events), len(extends))
	}
	for pcr, want := range replay(extends) {
		if !bytes.Equal(pcrs[pcr].Digest, want) {
			t.Fatalf("PCR %d = %x, the extends replay to %x", pcr, pcrs[pcr].Digest, want)
		}
	}

	// Event types a verifier expects of a UEFI boot.
	type key struct {
		pcr int
		typ attest.EventType
	}
	seen := map[key]int{}
	for _, e := range events {
		seen[key{e.Index, e.Type}]++
	}
	const (
		evPostCodeT     attest.EventType = evPostCode
		evSCRTMVersionT attest.EventType = evSCRTMVersion
		evSeparatorT    attest.EventType = evSeparator
		evDriverConfigT attest.EventType = evEFIVariableDriverConfig
		evAuthorityT    attest.EventType = evEFIVariableAuthority
		evBootAppT      attest.EventType = evEFIBootServicesApplication
		evEFIActionT    attest.EventType = evEFIAction
		evEFIVarBootT   attest.EventType = evEFIVariableBoot
	)
	for _, k := range []key{{0, evSCRTMVersionT}, {0, evPostCodeT}, {4, evBootAppT}, {4, evEFIActionT}, {1, evEFIVarBootT}} {
		if seen[k] == 0 {
			t.Errorf("no event of type %v on PCR %d", k.typ, k.pcr)
		}
	}
	for pcr := 0; pcr <= 7; pcr++ {
		if seen[key{pcr, evSeparatorT}] != 1 {
			t.Errorf("PCR %d: %d separators", pcr, seen[key{pcr, evSeparatorT}])
		}
	}
	if n := seen[key{7, evDriverConfigT}]; n != 5 {
		t.Errorf("%d Secure Boot variables on PCR 7, want 5", n)
	}
	if n, want := seen[key{7, evAuthorityT}], map[bool]int{true: 1, false: 0}[sb]; n != want {
		t.Errorf("%d authority events on PCR 7, want %d", n, want)
	}
	var action bool
	for _, e := range events {
		if e.Index == 4 && e.Type == evEFIActionT && string(e.Data) == "Calling EFI Application from Boot Option" {
			action = true
		}
	}
	if !action {
		t.Error(`no "Calling EFI Application from Boot Option" on PCR 4`)
	}

	st, err := attest.ParseSecurebootState(events)
	if err != nil {
		t.Fatalf("secure boot state: %v", err)
	}
	if st.Enabled != sb {
		t.Fatalf("go-attestation reports SecureBoot %v, want %v", st.Enabled, sb)
	}
	if len(st.PlatformKeys) != 1 || len(st.ExchangeKeys) != 1 || len(st.PermittedKeys) != 1 || len(st.ForbiddenHashes) != 1 {
		t.Fatalf("secure boot databases: PK %d, KEK %d, db %d, dbx hashes %d",
			len(st.PlatformKeys), len(st.ExchangeKeys), len(st.PermittedKeys), len(st.ForbiddenHashes))
	}
	// The enrolled keys are those SecureBootCertificates returns, in the order PK, KEK, db.
	keys, err := SecureBootCertificates()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 || !keys[0].Equal(&st.PlatformKeys[0]) || !keys[1].Equal(&st.ExchangeKeys[0]) || !keys[2].Equal(&st.PermittedKeys[0]) {
		t.Fatal("SecureBootCertificates does not return the PK, KEK and db certificates the log enrolls")
	}
	if sb {
		if len(st.PostSeparatorAuthority) != 1 || !st.PostSeparatorAuthority[0].Equal(&st.PermittedKeys[0]) {
			t.Fatalf("want the db certificate as the authority that verified the boot loader, got %d", len(st.PostSeparatorAuthority))
		}
	}

	// The log must not replay to another PCR state.
	pcrs[7].Digest = make([]byte, sha256.Size)
	if _, err := el.Verify(pcrs); err == nil {
		t.Fatal("the log replayed to a PCR 7 it did not produce")
	}
}

// TestEventLogUEFIDebugger checks that the UEFIDebugger option logs what go-attestation takes for
// a UEFI debugger: the log still replays, and its Secure Boot state is refused for the debugger.
func TestEventLogUEFIDebugger(t *testing.T) {
	for _, tt := range []struct {
		name     string
		debugger bool
		wantErr  string
	}{
		{name: "no debugger"},
		{name: "debugger", debugger: true, wantErr: "a UEFI debugger was present during boot"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			raw, extends, err := BuildEventLog(EventLogOptions{SecureBoot: true, UEFIDebugger: tt.debugger})
			if err != nil {
				t.Fatal(err)
			}
			el, err := attest.ParseEventLog(raw)
			if err != nil {
				t.Fatal(err)
			}
			var pcrs []attest.PCR
			for i, d := range replay(extends) {
				pcrs = append(pcrs, attest.PCR{Index: i, Digest: d, DigestAlg: crypto.SHA256})
			}
			events, err := el.Verify(pcrs)
			if err != nil {
				t.Fatalf("the log does not replay: %v", err)
			}
			_, err = attest.ParseSecurebootState(events)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr) {
				t.Fatalf("ParseSecurebootState: %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestEventLogIsDeterministic(t *testing.T) {
	for _, sb := range []bool{true, false} {
		a, ea, err := BuildEventLog(EventLogOptions{SecureBoot: sb})
		if err != nil {
			t.Fatal(err)
		}
		b, eb, err := BuildEventLog(EventLogOptions{SecureBoot: sb})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) || len(ea) != len(eb) {
			t.Fatalf("SecureBoot %v: two builds differ", sb)
		}
	}
	on, _, _ := BuildEventLog(EventLogOptions{SecureBoot: true})
	off, _, _ := BuildEventLog(EventLogOptions{SecureBoot: false})
	if bytes.Equal(on, off) {
		t.Fatal("the SecureBoot option does not change the log")
	}
}

func TestApplyEventLogHonoursContext(t *testing.T) {
	tp := newSim(t)
	_, extends, err := BuildEventLog(EventLogOptions{SecureBoot: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ApplyEventLog(ctx, tp, extends); !errors.Is(err, context.Canceled) {
		t.Fatalf("ApplyEventLog with a cancelled context: %v", err)
	}
	if !bytes.Equal(readPCR(t, tp, 7), make([]byte, sha256.Size)) {
		t.Fatal("PCR 7 extended despite the cancelled context")
	}
}

// testServer is a running Server over a fresh simulator.
type testServer struct {
	*Server
	addr  string
	tpm   transport.TPM
	errc  chan error
	close func()
}

func serve(t *testing.T, o ServerOptions) *testServer {
	t.Helper()
	tp := newSim(t)
	srv := NewServer(tp, o)
	addr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx) }()
	ts := &testServer{Server: srv, addr: addr.String(), tpm: tp, errc: errc}
	var once bool
	ts.close = func() {
		if once {
			return
		}
		once = true
		cancel()
		srv.Close()
		<-errc
	}
	// Registered after newSim's cleanup, so it runs before the simulator closes.
	t.Cleanup(ts.close)
	return ts
}

// rawClient sends commands over a plain TCP connection, as another process would.
type rawClient struct{ net.Conn }

// Send implements transport.TPM.
func (c rawClient) Send(cmd []byte) ([]byte, error) {
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return nil, err
	}
	if _, err := c.Write(cmd); err != nil {
		return nil, err
	}
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < HeaderSize || size > 1<<16 {
		return nil, errors.New("bad response size")
	}
	rsp := make([]byte, size)
	copy(rsp, hdr[:])
	_, err := io.ReadFull(c, rsp[HeaderSize:])
	return rsp, err
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

func getRandom(tp transport.TPM) error {
	rsp, err := tpm2.GetRandom{BytesRequested: 16}.Execute(tp)
	if err == nil && len(rsp.RandomBytes.Buffer) != 16 {
		err = errors.New("short random")
	}
	return err
}

// expectClosed fails unless the server closes c within a few seconds.
func expectClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: connection not closed", what)
	}
}

func handles(t *testing.T, tp transport.TPM, first uint32) []tpm2.TPMHandle {
	t.Helper()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: first, PropertyCount: 64}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	return hs.Handle
}

func TestServerRoundTrip(t *testing.T) {
	_, extends, err := BuildEventLog(EventLogOptions{SecureBoot: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, ServerOptions{})
	if err := ApplyEventLog(context.Background(), srv.tpm, extends); err != nil {
		t.Fatal(err)
	}
	c := connect(t, srv.addr)
	if err := getRandom(c); err != nil {
		t.Fatalf("GetRandom through the server: %v", err)
	}
	want := replay(extends)
	for _, pcr := range []int{0, 4, 7} {
		if got := readPCR(t, c, pcr); !bytes.Equal(got, want[pcr]) {
			t.Fatalf("PCR %d through the server = %x, want %x", pcr, got, want[pcr])
		}
	}
	// A TPM error is a response like any other, and the connection stays usable.
	if _, err := (tpm2.FlushContext{FlushHandle: tpm2.TPMHandle(0x80ffffff)}).Execute(c); err == nil {
		t.Fatal("flushing a missing handle succeeded")
	} else if !errors.As(err, new(tpm2.TPMRC)) && !errors.As(err, new(tpm2.TPMFmt1Error)) {
		t.Logf("error type %T: %v", err, err)
	}
	// Startup passes through: the simulator is started already, so the TPM says so.
	if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(c); err == nil {
		t.Fatal("TPM2_Startup on a started TPM succeeded")
	}
	if err := getRandom(c); err != nil {
		t.Fatalf("GetRandom after a TPM error: %v", err)
	}
	if srv.Stopped() {
		t.Fatal("a new server reports Stopped")
	}
}

func TestServerFlushesWhatADisconnectedClientLeft(t *testing.T) {
	srv := serve(t, ServerOptions{})
	c := connect(t, srv.addr)
	ecc := tpm2.ECCSRKTemplate
	if _, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHNull, InPublic: tpm2.New2B(ecc)}).Execute(c); err != nil {
		t.Fatalf("CreatePrimary: %v", err)
	}
	for _, typ := range []tpm2.TPMSE{tpm2.TPMSEHMAC, tpm2.TPMSEPolicy} {
		if _, err := (tpm2.StartAuthSession{
			TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull,
			NonceCaller: tpm2.TPM2BNonce{Buffer: make([]byte, 16)},
			SessionType: typ, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256,
		}).Execute(c); err != nil {
			t.Fatalf("StartAuthSession: %v", err)
		}
	}
	if n := len(handles(t, c, handlesTransient)); n != 1 {
		t.Fatalf("%d transient handles while the client is connected, want 1", n)
	}
	if n := len(handles(t, c, handlesHMAC)) + len(handles(t, c, handlesPolicy)); n < 2 {
		t.Fatalf("%d sessions listed while the client is connected, want 2", n)
	}
	c.Close() // as if the client crashed

	c2 := connect(t, srv.addr)
	for _, first := range []uint32{handlesTransient, handlesHMAC, handlesPolicy} {
		if hs := handles(t, c2, first); len(hs) != 0 {
			t.Fatalf("handles 0x%08x left by a disconnected client: %v", first, hs)
		}
	}
}

func TestServerStopStart(t *testing.T) {
	srv := serve(t, ServerOptions{})
	live := connect(t, srv.addr)
	if err := getRandom(live); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if !srv.Stopped() {
		t.Fatal("Stopped() false after Stop")
	}
	// The live connection is dropped ...
	if err := getRandom(live); err == nil {
		t.Fatal("the TPM answered a live connection while stopped")
	}
	// ... and new ones are refused.
	c := connect(t, srv.addr)
	if err := getRandom(c); err == nil {
		t.Fatal("the TPM answered a new connection while stopped")
	}
	srv.Stop() // idempotent
	srv.Start()
	if srv.Stopped() {
		t.Fatal("Stopped() true after Start")
	}
	c2 := connect(t, srv.addr)
	if err := getRandom(c2); err != nil {
		t.Fatalf("after Start: %v", err)
	}
}

func TestServerBadHeaderClosesOnlyThatConnection(t *testing.T) {
	srv := serve(t, ServerOptions{})
	for _, hdr := range [][]byte{
		{0x80, 0x01, 0, 0, 0, 9, 0, 0, 1, 0x7b},             // size below the header
		{0x80, 0x01, 0, 0, 0, 0, 0, 0, 1, 0x7b},             // size zero
		{0x80, 0x01, 0, 0, 0x20, 0x01, 0, 0, 1, 0x7b},       // 8193: just above the limit
		{0x80, 0x01, 0x7f, 0xff, 0xff, 0xff, 0, 0, 1, 0x7b}, // far above the limit
	} {
		bad := connect(t, srv.addr)
		if _, err := bad.Write(hdr); err != nil {
			t.Fatal(err)
		}
		expectClosed(t, bad, "bad header")
		c := connect(t, srv.addr)
		if err := getRandom(c); err != nil {
			t.Fatalf("after header %x: %v", hdr, err)
		}
		c.Close()
	}
	// A command within MaxCommandSize but above the TPM's own limit is the TPM's to refuse, and
	// the connection stays usable.
	c := connect(t, srv.addr)
	large := make([]byte, MaxCommandSize)
	copy(large, []byte{0x80, 0x01, 0, 0, 0x20, 0x00, 0, 0, 1, 0x7b, 0, 8})
	rsp, err := c.Send(large)
	if err != nil || len(rsp) < HeaderSize || binary.BigEndian.Uint32(rsp[6:10]) == 0 {
		t.Fatalf("an oversized GetRandom: response %x, %v; want a TPM error", rsp, err)
	}
	if err := getRandom(c); err != nil {
		t.Fatalf("after an oversized command: %v", err)
	}
	c.Close()
	// A truncated command (client gone mid-command) neither answers nor stops the server.
	trunc := connect(t, srv.addr)
	trunc.Write([]byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0})
	trunc.Close()
	if err := getRandom(connect(t, srv.addr)); err != nil {
		t.Fatalf("after a truncated command: %v", err)
	}
}

func TestServerServesOneConnectionAtATime(t *testing.T) {
	srv := serve(t, ServerOptions{})
	first := connect(t, srv.addr)
	if err := getRandom(first); err != nil {
		t.Fatal(err)
	}
	second := connect(t, srv.addr)
	done := make(chan error, 1)
	go func() { done <- getRandom(second) }()
	select {
	case err := <-done:
		t.Fatalf("a second connection was served while the first holds the TPM (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := getRandom(first); err != nil {
		t.Fatalf("the first connection while another waits: %v", err)
	}
	first.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the queued connection: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the queued connection was not served after the first closed")
	}
}

func TestServerTimeouts(t *testing.T) {
	srv := serve(t, ServerOptions{IdleTimeout: 300 * time.Millisecond, QueueTimeout: 200 * time.Millisecond})
	// A client that stalls mid-command is dropped after the idle timeout.
	stalled := connect(t, srv.addr)
	stalled.Write([]byte{0x80, 0x01, 0, 0, 0, 12})
	// Meanwhile a queued connection gives up after the queue timeout.
	waiting := connect(t, srv.addr)
	time.Sleep(50 * time.Millisecond)
	waiting.Write([]byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8})
	expectClosed(t, waiting, "queued past the queue timeout")
	expectClosed(t, stalled, "stalled client")
	// The TPM is free again.
	if err := getRandom(connect(t, srv.addr)); err != nil {
		t.Fatalf("after the timeouts: %v", err)
	}
}

func TestServeReturns(t *testing.T) {
	t.Run("close", func(t *testing.T) {
		srv := serve(t, ServerOptions{})
		c := connect(t, srv.addr)
		if err := getRandom(c); err != nil {
			t.Fatal(err)
		}
		if err := srv.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := <-srv.errc; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve after Close returned %v, want net.ErrClosed", err)
		}
		srv.errc <- nil // for the cleanup
		expectClosed(t, c, "after Close")
		if err := srv.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if err := srv.Serve(context.Background()); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve after Close: %v", err)
		}
		if _, err := net.DialTimeout("tcp", srv.addr, time.Second); err == nil {
			t.Fatal("still listening after Close")
		}
	})
	t.Run("context", func(t *testing.T) {
		tp := newSim(t)
		srv := NewServer(tp, ServerOptions{})
		defer srv.Close()
		addr, err := srv.Listen("localhost:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ctx) }()
		c := connect(t, addr.String())
		if err := getRandom(c); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve after cancel returned %v, want context.Canceled", err)
		}
		expectClosed(t, c, "after cancel")
	})
}

func TestListenRefusesNonLoopback(t *testing.T) {
	srv := NewServer(nil, ServerOptions{})
	for _, a := range []string{"0.0.0.0:0", "[::]:0", "10.1.2.3:0", "192.168.1.1:0", ":0", "example.com:0", "127.0.0.1"} {
		if _, err := srv.Listen(a); err == nil {
			t.Errorf("Listen(%q) accepted", a)
		}
	}
	if err := srv.Serve(context.Background()); err == nil {
		t.Fatal("Serve without Listen succeeded")
	}
	addr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if !addr.(*net.TCPAddr).IP.IsLoopback() {
		t.Fatalf("bound %v", addr)
	}
	if _, err := srv.Listen("127.0.0.1:0"); err == nil {
		t.Fatal("second Listen accepted")
	}
	srv.Close()
}

func TestReadCommand(t *testing.T) {
	cmd := []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8}
	got, err := readCommand(bytes.NewReader(append(append([]byte{}, cmd...), 0xde, 0xad)))
	if err != nil || !bytes.Equal(got, cmd) {
		t.Fatalf("readCommand = %x, %v", got, err)
	}
	if _, err := readCommand(bytes.NewReader(nil)); err != io.EOF {
		t.Fatalf("empty stream: %v, want io.EOF", err)
	}
	if _, err := readCommand(bytes.NewReader(cmd[:11])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated body: %v", err)
	}
	if _, err := readCommand(bytes.NewReader(cmd[:5])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated header: %v", err)
	}
	big := make([]byte, MaxCommandSize)
	copy(big, cmd)
	binary.BigEndian.PutUint32(big[2:6], MaxCommandSize)
	if got, err := readCommand(bytes.NewReader(big)); err != nil || len(got) != MaxCommandSize {
		t.Fatalf("a command of MaxCommandSize: %d bytes, %v", len(got), err)
	}
	binary.BigEndian.PutUint32(big[2:6], MaxCommandSize+1)
	if _, err := readCommand(bytes.NewReader(big)); !errors.Is(err, errCommandSize) {
		t.Fatalf("a command above MaxCommandSize: %v", err)
	}
}

func FuzzReadCommand(f *testing.F) {
	f.Add([]byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8})
	f.Add([]byte{0x80, 0x01, 0, 0, 0, 9, 0, 0, 1, 0x7b})
	f.Add([]byte{0x80, 0x01, 0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0x7b})
	f.Add([]byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 1, 0x7b, 0x80, 0x01, 0, 0, 0, 10, 0, 0, 1, 0x7b})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		cmd, err := readCommand(bytes.NewReader(b))
		if err != nil {
			if cmd != nil {
				t.Fatal("bytes returned with an error")
			}
			if len(b) >= HeaderSize {
				size := binary.BigEndian.Uint32(b[2:6])
				inBounds := size >= HeaderSize && size <= MaxCommandSize
				if inBounds == errors.Is(err, errCommandSize) {
					t.Fatalf("size %d: error %v", size, err)
				}
				if inBounds && int(size) <= len(b) {
					t.Fatalf("size %d with %d bytes available: %v", size, len(b), err)
				}
			}
			return
		}
		size := binary.BigEndian.Uint32(cmd[2:6])
		if len(cmd) < HeaderSize || len(cmd) > MaxCommandSize || int(size) != len(cmd) || !bytes.Equal(cmd, b[:len(cmd)]) {
			t.Fatalf("framing returned %d bytes for size %d", len(cmd), size)
		}
	})
}
