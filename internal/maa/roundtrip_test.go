package maa_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"

	emu "github.com/attested-kv/attested-kv/internal/emulator/maa"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/tpm"
)

// The round trip: a real TPM 2.0 (the reference implementation in go-tpm-tools' simulator)
// provisioned like an Azure vTPM, the production client, and the MAA emulator, which verifies the
// evidence on its own reading of the protocol. Client and emulator share only the wire types.

type nopClose struct{ transport.TPM }

func (nopClose) Close() error { return nil }

func newInstance(t *testing.T, trusted *tpm.CA) (*httptest.Server, *emu.Server) {
	t.Helper()
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(trusted.Root)
	inters.AddCert(trusted.Intermediate)
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	e, err := emu.New(emu.Config{TrustedRoots: roots, Intermediates: inters, Issuer: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = e.Handler()
	return srv, e
}

func newDevice(t *testing.T, ca *tpm.CA) *tpm.Device {
	t.Helper()
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	tp := nopClose{transport.FromReadWriter(sim)}
	if _, err := tpm.Provision(context.Background(), tp, ca, tpm.ProvisionOptions{}); err != nil {
		t.Fatal(err)
	}
	return tpm.New(tp, tpm.WithEventLogPath(""))
}

func TestRoundTripWithEmulator(t *testing.T) {
	ca, err := tpm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	srv, e := newInstance(t, ca)
	dev := newDevice(t, ca)
	ctx := context.Background()
	client, err := maa.NewClient(srv.URL, maa.ClientOptions{HTTPClient: srv.Client(), OS: &maa.OSInfo{Type: "Linux", Distro: "Ubuntu", VersionMajor: 24, VersionMinor: 4, Build: maa.OSBuildLinux}})
	if err != nil {
		t.Fatal(err)
	}
	const nonce = "8f14e45fceea167a5a36dedd4bea2543"
	raw, err := client.AttestNonce(ctx, dev, nonce)
	if err != nil {
		t.Fatalf("AttestNonce: %v", err)
	}
	v, err := maa.NewVerifier(maa.VerifierOptions{
		Instance: srv.URL,
		Keys:     maa.NewRemoteKeySet(srv.URL, maa.JWKSOptions{HTTPClient: srv.Client()}),
		MaxAge:   time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := v.Verify(ctx, raw, nonce)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	claims := tok.Claims()
	if claims["x-ms-attestation-type"] != "azurevm" {
		t.Errorf("x-ms-attestation-type = %v", claims["x-ms-attestation-type"])
	}
	if tok.Nonce() != nonce || tok.Issuer() != srv.URL {
		t.Errorf("nonce %q issuer %q", tok.Nonce(), tok.Issuer())
	}
	if _, err := v.Verify(ctx, raw, "another"); maa.CheckName(err) != maa.CheckNonce {
		t.Errorf("another nonce: %v", err)
	}
	if n := len(e.Requests()); n != 1 {
		t.Errorf("emulator saw %d requests, want 1", n)
	}

	// Evidence whose AK certificate comes from another CA is refused by the emulator, and the
	// client reports MAA's error without retrying.
	other, err := tpm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	srv2, e2 := newInstance(t, other)
	client2, err := maa.NewClient(srv2.URL, maa.ClientOptions{HTTPClient: srv2.Client()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = client2.AttestNonce(ctx, dev, nonce)
	var se *maa.ServiceError
	if !errors.As(err, &se) || se.StatusCode >= 500 || se.Code != emu.CodeAikCertUntrusted {
		t.Fatalf("untrusted AK: %v, want a 4xx %s", err, emu.CodeAikCertUntrusted)
	}
	if n := len(e2.Requests()); n != 1 {
		t.Errorf("refused evidence was sent %d times", n)
	}
	if rec := e2.Requests()[0]; rec.Status == http.StatusOK || rec.TokenID != "" {
		t.Errorf("emulator issued a token for untrusted evidence: %+v", rec)
	}
}
