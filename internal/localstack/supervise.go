package localstack

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/attested-kv/attested-kv/internal/tpm"
)

// ErrNotRunning reports that no stack is running for a state directory.
var ErrNotRunning = errors.New("the local stack is not running")

// StartOptions configure Up.
type StartOptions struct {
	// StateDir is the stack's state directory.
	StateDir string
	// Command is the argv that runs the stack in the foreground (Run), e.g.
	// [/path/attest-bootstrap local serve --state DIR]. Up starts it detached.
	Command []string
	// Timeout bounds the wait for the stack to become ready (default 60s).
	Timeout time.Duration
}

// Up starts the stack as a detached background process and waits until it is ready. If a stack
// is already running for the state directory it returns its state and alreadyRunning = true.
//
// Concurrent Up calls for one directory run one after the other (a lock in the directory), so
// that two of them never start two stacks; StateDir should come from ResolveStateDir.
//
// The state directory must be the user's own and writable by no one else. Up makes a new or empty
// directory the stack's by writing the marker (MarkerName) into it first, and refuses a directory
// that holds anything else without the marker (an error wrapping ErrNotStackDir) before it writes,
// truncates or removes anything in it; a directory an earlier version's stack left, without the
// marker, gets it.
func Up(ctx context.Context, opts StartOptions) (st *State, alreadyRunning bool, err error) {
	p := paths{opts.StateDir}
	if err := claimStateDir(p.dir); err != nil {
		return nil, false, err
	}
	upLock, err := lockFile(p.upLock(), true)
	if err != nil {
		return nil, false, err
	}
	defer upLock.Close()
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	var unsafe *UnsafeStateError
	if st, err := runningState(hostProc, opts.StateDir); err == nil {
		return st, true, nil
	} else if errors.As(err, &unsafe) {
		return nil, false, err
	}
	// A stack that holds the directory but has not published its state yet (one started by an
	// Up that was interrupted) is waited for, not doubled.
	if running, err := serving(p); err != nil {
		return nil, false, err
	} else if running {
		st, err := waitForState(ctx, opts.StateDir, timeout)
		return st, err == nil, err
	}
	// A stale state.json from a crashed stack must not be taken for the new one's.
	removeStale(p)
	logf, err := os.OpenFile(p.log(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("stack log: %w", err)
	}
	defer logf.Close()
	if len(opts.Command) == 0 {
		return nil, false, errors.New("no command to start the stack with")
	}
	cmd := exec.Command(opts.Command[0], opts.Command[1:]...)
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlive the terminal and our process group
	if err := cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("starting the stack: %w", err)
	}
	pid := cmd.Process.Pid
	if err := os.WriteFile(p.pid(), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		cmd.Process.Kill()
		return nil, false, fmt.Errorf("pid file: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			os.Remove(p.pid())
			return nil, false, fmt.Errorf("the stack exited during start-up (%v); its log %s ends with:\n%s", err, p.log(), tail(p.log(), 20))
		case <-deadline.C:
			cmd.Process.Signal(syscall.SIGTERM)
			return nil, false, fmt.Errorf("the stack did not become ready within %s; see %s", timeout, p.log())
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			return nil, false, ctx.Err()
		case <-tick.C:
			if st, err := ReadState(p.dir); err == nil && st.PID == pid {
				return st, false, nil
			}
		}
	}
}

// Down stops the stack and waits until its process is gone. It returns ErrNotRunning if there
// was nothing to stop.
//
// In a state directory that is not the stack's (no marker: an error wrapping ErrNotStackDir) or
// that the user may not trust, as env would not (an *UnsafeStateError: the directory, its
// state.json or stack.pid, or the process that names, not the user's own or open to others),
// Down signals, writes and removes nothing.
func Down(ctx context.Context, stateDir string) error {
	return down(ctx, hostProc, stateDir)
}

// down is Down with the proc file system passed in.
func down(ctx context.Context, proc procFS, stateDir string) error {
	p := paths{stateDir}
	if err := stackDir(stateDir); err != nil {
		return err
	}
	var unsafe *UnsafeStateError
	if _, err := ReadState(stateDir); errors.As(err, &unsafe) {
		return err
	}
	// Under Up's lock: an up running meanwhile would start a stack whose files this removes.
	upLock, err := lockFile(p.upLock(), true)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return ErrNotRunning
	case err != nil:
		return err
	}
	defer upLock.Close()
	pid, pidErr := stackPID(proc, stateDir)
	if errors.As(pidErr, &unsafe) {
		return pidErr
	}
	if pidErr != nil {
		running, err := serving(p)
		if err != nil {
			return err
		}
		if running {
			// A stack holds the directory, but the pid file does not name it: nothing is
			// signalled or removed on a guess.
			return fmt.Errorf("a local stack holds %s, but its pid file does not name it (%v): stop it by its process (attest-bootstrap local serve --state %s)", stateDir, pidErr, stateDir)
		}
		// Whatever a crashed stack left is stale.
		removeStale(p)
		return ErrNotRunning
	}
	process, _ := os.FindProcess(pid)
	if err := process.Signal(syscall.SIGTERM); err != nil {
		removeStale(p)
		return ErrNotRunning
	}
	deadline := time.Now().Add(15 * time.Second)
	for proc.alive(pid) {
		if time.Now().After(deadline) {
			process.Signal(syscall.SIGKILL)
			time.Sleep(100 * time.Millisecond)
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if proc.alive(pid) {
		return fmt.Errorf("the stack (pid %d) did not stop", pid)
	}
	removeStale(p)
	return nil
}

// removeStale removes the files a stack that is not running left in p: its pid file, a
// state.json that reads as its state, and its control socket; a file that is not what the stack
// writes there stays.
func removeStale(p paths) {
	if b, err := readOwnFile(p.pid(), "pid file", 0o022, maxPIDFile); err == nil {
		if _, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			os.Remove(p.pid())
		}
	}
	if _, err := ReadState(p.dir); err == nil {
		os.Remove(p.state())
	}
	if fi, err := os.Lstat(p.control()); err == nil && fi.Mode().Type() == fs.ModeSocket {
		os.Remove(p.control())
	}
}

// ComponentStatus is the health of one component.
type ComponentStatus struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	OK      bool   `json:"ok"`
	Detail  string `json:"detail,omitempty"`
	// Hint is a command that may bring the component back.
	Hint string `json:"hint,omitempty"`
}

// Running returns the state of the stack running for stateDir, with Status's checks and errors,
// without probing its components: what `local env` needs.
func Running(stateDir string) (*State, error) {
	return runningState(hostProc, stateDir)
}

// Status reports each component of a running stack. It returns an error wrapping ErrNotRunning
// if no stack runs for stateDir; one wrapping ErrNotStackDir for a directory that is not a
// stack's, and an *UnsafeStateError for a state directory, state file, pid file or stack process
// that is not the user's own or that others may change.
func Status(ctx context.Context, stateDir string) (*State, []ComponentStatus, error) {
	st, err := runningState(hostProc, stateDir)
	if err != nil {
		return nil, nil, err
	}
	return st, components(ctx, st), nil
}

// components probes each component of the stack st describes.
func components(ctx context.Context, st *State) []ComponentStatus {
	var out []ComponentStatus
	out = append(out, probeHTTPS(ctx, "MAA emulator", st.MAAURL+"/certs", st.TLSRootPath))
	out = append(out, probeTPM(ctx, "TPM simulator", st.TPMAddr))
	out = append(out, probeHTTPS(ctx, "Entra ID emulator", st.EntraURL+"/"+st.TenantID+"/v2.0/.well-known/openid-configuration", st.TLSRootPath))
	out = append(out, probeHTTPS(ctx, "Key Vault emulator", st.KeyVaultURL+"/keys/"+SigningKeyName, st.TLSRootPath, http.StatusUnauthorized))
	out = append(out, probeTCP(ctx, "registry", st.Registry))
	return out
}

// Env returns the shell exports of DESIGN.md for a running stack, in a stable order.
func Env(st *State) [][2]string {
	env := [][2]string{
		{"ATTEST_URL", st.MAAURL},
		{"ATTEST_TPM", st.TPMAddr},
		{"ATTEST_TCG_LOG", st.TCGLogPath},
		{"SSL_CERT_FILE", st.CABundlePath},
		{"ATTEST_KEY_ID", st.KeyID},
		{"ATTEST_REGISTRY", st.Registry},
		{"ATTEST_TOKEN_DIR", st.TokenDir},
		{"AZURE_TENANT_ID", st.TenantID},
		{"AZURE_CLIENT_ID", st.ClientID},
		{"AZURE_CLIENT_SECRET", st.ClientSecret},
		{"AZURE_AUTHORITY_HOST", st.EntraURL + "/"},
		{"NOTATION_CONFIG", st.NotationConfig},
		{"NOTATION_LIBEXEC", st.NotationLibexec},
	}
	if st.CertDirPath != "" {
		env = append(env, [2]string{"SSL_CERT_DIR", st.CertDirPath})
	}
	if st.OSReleasePath != "" {
		env = append(env, [2]string{"ATTEST_OS_RELEASE", st.OSReleasePath})
	}
	return env
}

// ShellQuote quotes s for a POSIX shell.
func ShellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// SetTPMAvailable stops or restarts the stack's TPM (to show that signing fails closed).
func SetTPMAvailable(ctx context.Context, stateDir string, up bool) error {
	path := "/tpm/stop"
	if up {
		path = "/tpm/start"
	}
	return control(ctx, stateDir, http.MethodPost, path, nil)
}

// KeyVaultRequests returns the Key Vault emulator's answered requests by operation and status.
func KeyVaultRequests(ctx context.Context, stateDir string) (KeyVaultCounts, error) {
	var out KeyVaultCounts
	return out, control(ctx, stateDir, http.MethodGet, "/keyvault/requests", &out)
}

// InjectKeyVaultFault makes the next n Key Vault requests of op fail with status.
func InjectKeyVaultFault(ctx context.Context, stateDir, op string, status, n int) error {
	return control(ctx, stateDir, http.MethodPost, fmt.Sprintf("/keyvault/fault?op=%s&status=%d&n=%d", op, status, n), nil)
}

// control calls the stack's control socket and decodes a JSON answer into out, if given.
func control(ctx context.Context, stateDir, method, path string, out any) error {
	st, err := runningState(hostProc, stateDir)
	if err != nil {
		return err
	}
	return controlSocket(ctx, st.ControlSocket, method, path, out)
}

// controlSocket calls the control socket at socket.
func controlSocket(ctx context.Context, socket, method, path string, out any) error {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, method, "http://stack"+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("control socket: %s", resp.Status)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// runningState returns the state of a stack whose process is alive, after checking that the
// user may trust it: the state directory is the user's own, writable by no one else, and the
// stack's (stackDir); stack.pid and state.json are regular files of the user's that no one else
// may write (nor read, state.json); the process stack.pid names runs the stack's command for the
// directory as the user. The state is what `local env` exports, so any of these failing is an
// error naming the check (an *UnsafeStateError, or one wrapping ErrNotStackDir), not a state.
// No stack is an error wrapping ErrNotRunning.
func runningState(proc procFS, stateDir string) (*State, error) {
	if err := stackDir(stateDir); err != nil {
		return nil, err
	}
	var unsafe *UnsafeStateError
	pid, err := stackPID(proc, stateDir)
	if errors.As(err, &unsafe) {
		return nil, err
	}
	if err != nil {
		return nil, ErrNotRunning
	}
	st, err := ReadState(stateDir)
	if errors.As(err, &unsafe) {
		return nil, err
	}
	if err != nil || st.PID != pid {
		return nil, fmt.Errorf("%w (process %d has not published its state)", ErrNotRunning, pid)
	}
	return st, nil
}

// stackPID reads the pid file and checks that the process is alive, is our stack for this
// state directory, so that a recycled pid is never signalled, and runs as this user. A pid file
// or process the user may not trust is an *UnsafeStateError.
func stackPID(proc procFS, stateDir string) (int, error) {
	pidFile := paths{stateDir}.pid()
	b, err := readOwnFile(pidFile, "pid file", 0o022, maxPIDFile)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pid file")
	}
	if !proc.alive(pid) {
		return 0, ErrNotRunning
	}
	argv, err := proc.cmdline(pid)
	if err != nil {
		return 0, err
	}
	if !isStackCommand(argv, stateDir) {
		return 0, fmt.Errorf("pid %d is not the local stack of %s", pid, stateDir)
	}
	if err := proc.ownedByUser(pid, pidFile); err != nil {
		return 0, err
	}
	return pid, nil
}

// isStackCommand reports whether argv is the command Up starts for stateDir:
// PROGRAM local serve --state stateDir [flags].
func isStackCommand(argv []string, stateDir string) bool {
	return len(argv) >= 5 && argv[1] == "local" && argv[2] == "serve" && argv[3] == "--state" && argv[4] == stateDir
}

// serving reports whether a stack process holds the state directory p (its serve lock). A
// missing directory has none.
func serving(p paths) (bool, error) {
	lock, err := lockFile(p.serveLock(), false)
	switch {
	case errors.Is(err, errLocked):
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	case err != nil:
		return false, err
	}
	lock.Close()
	return false, nil
}

// waitForState waits up to timeout for the running stack of stateDir to publish its state.
func waitForState(ctx context.Context, stateDir string, timeout time.Duration) (*State, error) {
	deadline := time.Now().Add(timeout)
	var unsafe *UnsafeStateError
	for {
		st, err := runningState(hostProc, stateDir)
		if err == nil {
			return st, nil
		}
		if errors.As(err, &unsafe) {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("a local stack holds %s but did not become ready within %s (%w); see %s", stateDir, timeout, err, paths{stateDir}.log())
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func probeHTTPS(ctx context.Context, name, url, rootPath string, okStatus ...int) ComponentStatus {
	cs := ComponentStatus{Name: name, Address: url}
	pem, err := os.ReadFile(rootPath)
	if err != nil {
		cs.Detail = err.Error()
		return cs
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		cs.Detail = err.Error()
		return cs
	}
	resp.Body.Close()
	cs.OK = resp.StatusCode == http.StatusOK || slices.Contains(okStatus, resp.StatusCode)
	cs.Detail = resp.Status
	if resp.StatusCode == http.StatusUnauthorized && cs.OK {
		cs.Detail = "401: answers with the bearer challenge"
	}
	return cs
}

// tpmProbeTimeout bounds the TPM probe; the TPM serves one client at a time, so a signing in
// progress may hold it a moment.
const tpmProbeTimeout = 5 * time.Second

// probeTPM checks that the TPM at addr (swtpm:HOST:PORT) answers a TPM command
// (TPM2_GetCapability, through go-tpm) on its data channel. A connection alone tells nothing: the
// stopped TPM (attest-bootstrap local tpm stop) accepts connections and closes them.
func probeTPM(ctx context.Context, name, addr string) ComponentStatus {
	hostPort := strings.TrimPrefix(addr, tpm.SchemeSwtpm)
	cs := ComponentStatus{Name: name, Address: hostPort}
	ctx, cancel := context.WithTimeout(ctx, tpmProbeTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", hostPort)
	if err == nil {
		defer conn.Close()
		deadline, _ := ctx.Deadline()
		conn.SetDeadline(deadline)
		_, err = tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTManufacturer), PropertyCount: 1}.Execute(streamTPM{conn})
	}
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		// Not an outage for sure: another client may hold the TPM that long.
		cs.Detail = fmt.Sprintf("no answer to a TPM command within %s: %v", tpmProbeTimeout, err)
		return cs
	case err != nil:
		cs.Detail = "does not answer TPM commands: " + err.Error()
		cs.Hint = "attest-bootstrap local tpm start"
		return cs
	}
	cs.OK = true
	cs.Detail = "answers TPM commands"
	return cs
}

// maxTPMResponse bounds a TPM response (TPM2's MAX_RESPONSE_SIZE is 4096 on common TPMs).
const maxTPMResponse = 16 << 10

// streamTPM is a transport.TPM over a raw TPM 2.0 command stream (swtpm's data channel).
type streamTPM struct{ conn net.Conn }

// Send implements transport.TPM.
func (s streamTPM) Send(cmd []byte) ([]byte, error) {
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("sending a command: %w", err)
	}
	rsp, err := tpm.ReadMessage(s.conn, maxTPMResponse)
	if err != nil {
		return nil, fmt.Errorf("reading a response: %w", err)
	}
	return rsp, nil
}

func probeTCP(ctx context.Context, name, addr string) ComponentStatus {
	cs := ComponentStatus{Name: name, Address: addr}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		cs.Detail = err.Error()
		return cs
	}
	c.Close()
	cs.OK = true
	cs.Detail = "accepting connections"
	return cs
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
