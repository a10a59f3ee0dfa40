// Package localstack runs the project's local stand-ins for Azure on loopback, in one supervised
// background process: an MAA emulator (HTTPS), a TPM 2.0 simulator provisioned like an Azure vTPM
// and served over swtpm's socket framing, Entra ID and Key Vault emulators (HTTPS), and an OCI
// registry. At start it provisions the signing certificate through the Azure SDK and writes the
// Notation configuration (trust policy, trust store, the plugin, the signing key), so that after
// `eval "$(attest-bootstrap local env)"` notation signs through the attested-kv plugin. See
// DESIGN.md, "Local stack".
//
// The state directory keeps what a restart must not change: the TLS and vTPM CAs, the MAA token
// signing key, the registry's content, the previous start's ports and client credentials, and the
// emulated vault's keys and certificates (keyvault/state.json). Provisioning reuses the vault's
// signing certificate, as attest-bootstrap apply does on Azure, so the signing key, ATTEST_KEY_ID
// and the trust store stay the same and what was signed before a restart still verifies; only a
// certificate that expires within provision.RenewBefore is replaced by a new version, with a new
// key (the start warns of it).
package localstack

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
	emu "github.com/attested-kv/attested-kv/internal/emulator/maa"
	"github.com/attested-kv/attested-kv/internal/token"
	"github.com/attested-kv/attested-kv/internal/tpm"
	"github.com/attested-kv/attested-kv/internal/tpmsim"
)

// StateVersion is the version of state.json; a stack written by another version is not reused.
const StateVersion = 1

// State is what a running stack publishes in its state directory (state.json) for the other
// commands: where each component listens and which files clients need.
type State struct {
	Version       int       `json:"version"`
	PID           int       `json:"pid"`
	StartedAt     time.Time `json:"startedAt"`
	MAAURL        string    `json:"maaURL"`
	TPMAddr       string    `json:"tpmAddr"`    // the plugin's `tpm` value: swtpm:127.0.0.1:PORT
	TCGLogPath    string    `json:"tcgLogPath"` // the firmware event log matching the TPM's PCRs
	CABundlePath  string    `json:"caBundlePath"`
	CertDirPath   string    `json:"certDirPath,omitempty"` // SSL_CERT_DIR: empty, so the bundle is read alone
	TLSRootPath   string    `json:"tlsRootPath"`
	VTPMRootPath  string    `json:"vtpmRootPath"`
	ControlSocket string    `json:"controlSocket"`

	// The signing half.
	EntraURL        string `json:"entraURL"`
	TenantID        string `json:"tenantID"`
	ClientID        string `json:"clientID"`
	ClientSecret    string `json:"clientSecret"` // of the emulated tenant only; state.json is 0600
	KeyVaultURL     string `json:"keyVaultURL"`
	KeyID           string `json:"keyID"`
	Registry        string `json:"registry"`
	NotationConfig  string `json:"notationConfig"`
	NotationLibexec string `json:"notationLibexec"`
	TokenDir        string `json:"tokenDir"`
	// OSReleasePath is the os-release the attestations describe the OS with; "" = the host's.
	OSReleasePath string `json:"osReleasePath,omitempty"`

	// Warnings are what the user must know though the stack runs (e.g. no plugin installed).
	Warnings []string `json:"warnings,omitempty"`

	// How this start differs from the previous one in the state directory, whose ports and client
	// credentials it keeps where it can. PortsMoved says which components could not have their
	// previous port, and why; EnvChanged names the variables of Env whose values changed (the
	// shells that exported the previous ones must export them again). Empty on a first start.
	PortsMoved []string `json:"portsMoved,omitempty"`
	EnvChanged []string `json:"envChanged,omitempty"`
}

// Paths of the state directory's files.
type paths struct{ dir string }

func (p paths) marker() string       { return filepath.Join(p.dir, MarkerName) }
func (p paths) state() string        { return filepath.Join(p.dir, "state.json") }
func (p paths) lastState() string    { return filepath.Join(p.dir, "last-state.json") }
func (p paths) pid() string          { return filepath.Join(p.dir, "stack.pid") }
func (p paths) upLock() string       { return filepath.Join(p.dir, "up.lock") }
func (p paths) serveLock() string    { return filepath.Join(p.dir, "serve.lock") }
func (p paths) log() string          { return filepath.Join(p.dir, "stack.log") }
func (p paths) control() string      { return filepath.Join(p.dir, "control.sock") }
func (p paths) tlsDir() string       { return filepath.Join(p.dir, "tls") }
func (p paths) caBundle() string     { return filepath.Join(p.dir, "tls", "ca-bundle.pem") }
func (p paths) emptyCertDir() string { return filepath.Join(p.dir, "tls", "certs.d") }
func (p paths) vtpmDir() string      { return filepath.Join(p.dir, "vtpm") }
func (p paths) maaDir() string       { return filepath.Join(p.dir, "maa") }
func (p paths) tcgLog() string       { return filepath.Join(p.dir, "tpm", "binary_bios_measurements") }
func (p paths) tpmDir() string       { return filepath.Join(p.dir, "tpm") }
func (p paths) vtpmRootPEM() string  { return filepath.Join(p.dir, "vtpm", "root.pem") }
func (p paths) registryDir() string  { return filepath.Join(p.dir, "registry") }
func (p paths) vaultDir() string     { return filepath.Join(p.dir, "keyvault") }
func (p paths) vaultState() string   { return filepath.Join(p.dir, "keyvault", "state.json") }
func (p paths) notationConfig() string {
	return filepath.Join(p.dir, "notation", "config")
}
func (p paths) notationLibexec() string { return filepath.Join(p.dir, "notation", "libexec") }
func (p paths) tokenDir() string        { return filepath.Join(p.dir, "tokens") }
func (p paths) pluginLog() string       { return filepath.Join(p.dir, "plugin.log") }
func (p paths) keyCache() string        { return filepath.Join(p.dir, "tpm", "key-cache") }

// DefaultStateDir is $XDG_STATE_HOME/attested-kv/local, or ~/.local/state/attested-kv/local.
func DefaultStateDir() (string, error) {
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no XDG_STATE_HOME and no home directory: %w", err)
		}
		base = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(base, "attested-kv", "local"), nil
}

// Options configure Run.
type Options struct {
	// StateDir holds keys, certificates, logs and state.json.
	StateDir string
	// Logger receives the stack's diagnostics.
	Logger *slog.Logger
	// Ready, if set, is called once every component listens and state.json is written.
	Ready func(*State)
	// PluginPath is the notation-attested-kv binary to install for notation; none if empty.
	PluginPath string
}

// Run starts every component in this process, publishes state.json and blocks until ctx is done;
// then it stops everything and removes state.json. It is what `attest-bootstrap local serve`
// runs in the background process, and what tests call directly. It takes the state directory as
// Up does: a new or empty one (which it marks), or one with the marker (MarkerName).
func Run(ctx context.Context, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := paths{opts.StateDir}
	if err := claimStateDir(p.dir); err != nil {
		return err
	}
	// One stack per state directory, held for the process's life: a second one would take over
	// the control socket, the pid file and the Notation configuration of the first.
	lock, err := lockFile(p.serveLock(), false)
	if errors.Is(err, errLocked) {
		return fmt.Errorf("another local stack is running for %s (stop it with: attest-bootstrap local down --state %s)", p.dir, p.dir)
	}
	if err != nil {
		return err
	}
	defer lock.Close()
	for _, d := range []string{p.tlsDir(), p.vtpmDir(), p.maaDir(), p.tpmDir()} {
		if err := atomicfile.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
	}
	// The token store as the plugin makes it, so that oras-attest token prune with the exported
	// ATTEST_TOKEN_DIR finds it before anything was signed.
	if err := token.NewStore(p.tokenDir()).Prepare(); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	// The vault's directory is made durably: lost in a crash with its state file, the stack would
	// come back with a new signing key.
	if err := atomicfile.MkdirAll(p.vaultDir(), 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}

	// Trust material, kept across restarts.
	tlsCA, err := loadOrCreateTLSAuthority(p.tlsDir())
	if err != nil {
		return err
	}
	withSystemRoots, err := writeCABundle(p.caBundle(), tlsCA.cert)
	if err != nil {
		return err
	}
	// With SSL_CERT_FILE alone, Go (and OpenSSL) still read every file of the default certificate
	// directory, /etc/ssl/certs: about 290 files and 13 ms in each process's first TLS handshake
	// on Debian, all duplicates of the bundle. When the bundle holds the system roots, SSL_CERT_DIR
	// points to an empty directory so that the bundle is read alone.
	certDir := ""
	if withSystemRoots {
		certDir = p.emptyCertDir()
		if err := os.MkdirAll(certDir, 0o755); err != nil {
			return err
		}
	}
	vtpmCA, err := tpm.LoadCA(p.vtpmDir())
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("vTPM CA: %w", err)
		}
		if vtpmCA, err = tpm.NewCA(); err != nil {
			return fmt.Errorf("vTPM CA: %w", err)
		}
		if err := vtpmCA.Save(p.vtpmDir()); err != nil {
			return fmt.Errorf("vTPM CA: %w", err)
		}
	}
	signCert, signKey, err := loadOrCreateSigningKey(p.maaDir())
	if err != nil {
		return err
	}
	srvCert, srvKey, err := tlsCA.serverCertificate()
	if err != nil {
		return fmt.Errorf("TLS server certificate: %w", err)
	}
	// Each HTTPS server takes a Clone: ServeTLS writes the HTTP/2 settings into its config.
	tlsConfig := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{srvCert.Raw}, PrivateKey: srvKey, Leaf: srvCert}},
	}

	// A restart keeps the previous start's ports and client credentials where it can.
	r := loadRestart(p)

	// The TPM: a fresh simulator each start (its state lives in memory), provisioned like an Azure
	// vTPM, with PCRs 0-7 measured by a Secure Boot firmware event log.
	tpmSrv, tpmAddr, closeTPM, err := startTPM(ctx, p, vtpmCA, r, log)
	if err != nil {
		return err
	}
	defer closeTPM()

	// The MAA emulator.
	maaLn, err := keepPort(r, "MAA emulator", urlHost(r.prev.MAAURL), listenTCP)
	if err != nil {
		return fmt.Errorf("MAA emulator: %w", err)
	}
	maaURL := "https://" + maaLn.Addr().String()
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(vtpmCA.Root)
	inters.AddCert(vtpmCA.Intermediate)
	// The TPM's Secure Boot keys are the platform's defaults here, as Microsoft's are on Azure.
	sbKeys, err := tpmsim.SecureBootCertificates()
	if err != nil {
		maaLn.Close()
		return fmt.Errorf("MAA emulator: %w", err)
	}
	var defaultKeys [][sha256.Size]byte
	for _, k := range sbKeys {
		defaultKeys = append(defaultKeys, sha256.Sum256(k.Raw))
	}
	var sig *signing
	maaSrv, err := emu.New(emu.Config{
		TrustedRoots:          roots,
		Intermediates:         inters,
		SigningKey:            signKey,
		SigningCert:           signCert,
		Issuer:                maaURL,
		DefaultSecureBootKeys: defaultKeys,
		Logger:                log.With("component", "maa"),
		// Policy reads and writes need an Entra ID token for MAA's scope, as on Azure.
		AuthorizePolicyRequest: func(r *http.Request) error {
			if sig == nil {
				return errors.New("the Entra ID emulator is not running yet")
			}
			return sig.authorizeAttestationAdmin(r)
		},
	})
	if err != nil {
		maaLn.Close()
		return fmt.Errorf("MAA emulator: %w", err)
	}
	maaHTTP := &http.Server{Handler: maaSrv.Handler(), TLSConfig: tlsConfig.Clone(), ReadHeaderTimeout: 10 * time.Second}

	// The control socket: status and TPM outage simulation for the demo and tests.
	os.Remove(p.control())
	ctlLn, err := net.Listen("unix", p.control())
	if err != nil {
		maaLn.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	ctlHTTP := &http.Server{Handler: controlHandler(tpmSrv, func() *signing { return sig }), ReadHeaderTimeout: 5 * time.Second}

	var wg sync.WaitGroup
	errc := make(chan error, 8)
	serve := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	serve("MAA emulator", func() error { return maaHTTP.ServeTLS(maaLn, "", "") })
	serve("control socket", func() error { return ctlHTTP.Serve(ctlLn) })
	shutdownAll := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		maaHTTP.Shutdown(sctx)
		ctlHTTP.Shutdown(sctx)
		if sig != nil {
			sig.shutdown(sctx)
		}
		wg.Wait()
	}

	// The signing half: Entra ID, Key Vault, the registry; then provisioning through the SDK.
	s, err := startSigning(p, tlsConfig, r, log, serve)
	if err != nil {
		shutdownAll()
		return err
	}
	sig = s
	tlsRoots := x509.NewCertPool()
	tlsRoots.AddCert(tlsCA.cert)
	pctx, cancelProvision := context.WithTimeout(ctx, time.Minute)
	err = sig.provision(pctx, p, tlsRoots, maaURL, "swtpm:"+tpmAddr, opts.PluginPath, log)
	cancelProvision()
	if err != nil {
		shutdownAll()
		return err
	}

	st := &State{
		Version:       StateVersion,
		PID:           os.Getpid(),
		StartedAt:     time.Now().UTC(),
		MAAURL:        maaURL,
		TPMAddr:       "swtpm:" + tpmAddr,
		TCGLogPath:    p.tcgLog(),
		CABundlePath:  p.caBundle(),
		CertDirPath:   certDir,
		TLSRootPath:   filepath.Join(p.tlsDir(), "root.pem"),
		VTPMRootPath:  p.vtpmRootPEM(),
		ControlSocket: p.control(),

		EntraURL: sig.entraURL, TenantID: sig.tenant, ClientID: sig.clientID, ClientSecret: sig.clientSecret,
		KeyVaultURL: sig.vaultURL, KeyID: sig.keyID, Registry: sig.registryAddr,
		NotationConfig: p.notationConfig(), NotationLibexec: p.notationLibexec(), TokenDir: p.tokenDir(),
		Warnings: sig.warnings, OSReleasePath: sig.osRelease,
		PortsMoved: r.moved,
	}
	if !r.first() {
		st.EnvChanged = envChanges(&r.prev, st)
	}
	if err := writeState(p, st); err != nil {
		shutdownAll()
		return err
	}
	log.Info("local stack ready", "maa", maaURL, "tpm", st.TPMAddr)
	if opts.Ready != nil {
		opts.Ready(st)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	shutdownAll()
	os.Remove(p.state())
	os.Remove(p.control())
	return runErr
}

// startTPM brings up the simulator, measures the boot, provisions the AK and serves it.
func startTPM(ctx context.Context, p paths, ca *tpm.CA, r *restart, log *slog.Logger) (*tpmsim.Server, string, func(), error) {
	sim, err := simulator.Get()
	if err != nil {
		return nil, "", nil, fmt.Errorf("TPM simulator: %w", err)
	}
	t := transport.FromReadWriter(sim)
	fail := func(err error) (*tpmsim.Server, string, func(), error) {
		sim.Close()
		return nil, "", nil, err
	}
	eventLog, extends, err := tpmsim.BuildEventLog(tpmsim.EventLogOptions{SecureBoot: true})
	if err != nil {
		return fail(fmt.Errorf("event log: %w", err))
	}
	if err := tpmsim.ApplyEventLog(ctx, t, extends); err != nil {
		return fail(fmt.Errorf("measuring the boot into the TPM: %w", err))
	}
	if err := atomicfile.Write(p.tcgLog(), eventLog, 0o644); err != nil {
		return fail(err)
	}
	if _, err := tpm.Provision(ctx, t, ca, tpm.ProvisionOptions{}); err != nil {
		return fail(fmt.Errorf("provisioning the AK: %w", err))
	}
	srv := tpmsim.NewServer(t, tpmsim.ServerOptions{Logger: log.With("component", "tpm")})
	addr, err := keepPort(r, "TPM simulator", strings.TrimPrefix(r.prev.TPMAddr, tpm.SchemeSwtpm), srv.Listen)
	if err != nil {
		return fail(fmt.Errorf("TPM server: %w", err))
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(sctx); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, context.Canceled) {
			log.Error("TPM server stopped", "err", err)
		}
	}()
	return srv, addr.String(), func() {
		cancel()
		srv.Close()
		<-done
		sim.Close()
	}, nil
}

// writeState publishes st in state.json, and keeps a copy in last-state.json for the next start
// (loadRestart): state.json goes when the stack stops.
func writeState(p paths, st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(p.lastState(), append(b, '\n'), 0o600); err != nil {
		return err
	}
	return atomicfile.Write(p.state(), append(b, '\n'), 0o600)
}

// ReadState reads state.json of the stack in dir. It returns an error wrapping os.ErrNotExist
// when no stack has published one, and an *UnsafeStateError for a state.json that is not a
// regular file of this user's that no one else may read or write.
func ReadState(dir string) (*State, error) {
	return readStateFile(paths{dir}.state())
}

// readStateFile reads a state the stack published, at path (state.json, or its copy
// last-state.json): a regular file of this user's, mode 0600 at most (writeState's: it holds the
// emulated tenant's client secret, and names the plugin directory and CA bundle that env
// exports), of this build's StateVersion.
func readStateFile(path string) (*State, error) {
	b, err := readOwnFile(path, "state file", 0o077, maxStateFile)
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if st.Version != StateVersion {
		return nil, fmt.Errorf("%s: state version %d, this build reads %d", path, st.Version, StateVersion)
	}
	return &st, nil
}

// controlHandler serves the stack's control socket: health, TPM outages, and for tests the Key
// Vault emulator's request counts and fault injection.
func controlHandler(tpmSrv *tpmsim.Server, sig func() *signing) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /tpm/stop", func(w http.ResponseWriter, r *http.Request) {
		tpmSrv.Stop()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /tpm/start", func(w http.ResponseWriter, r *http.Request) {
		tpmSrv.Start()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /keyvault/requests", func(w http.ResponseWriter, r *http.Request) {
		s := sig()
		if s == nil {
			http.Error(w, errNoSigning.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s.counts())
	})
	mux.HandleFunc("POST /keyvault/fault", func(w http.ResponseWriter, r *http.Request) {
		s := sig()
		status, err1 := strconv.Atoi(r.URL.Query().Get("status"))
		n, err2 := strconv.Atoi(r.URL.Query().Get("n"))
		if s == nil || err1 != nil || err2 != nil {
			http.Error(w, "want op, status and n", http.StatusBadRequest)
			return
		}
		s.vault.InjectFault(r.URL.Query().Get("op"), status, n)
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}
