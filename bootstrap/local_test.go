package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attested-kv/attested-kv/internal/localstack"
)

// TestWriteStatus: a component that does not answer is marked DOWN, and the command that brings
// it back follows on its own line.
func TestWriteStatus(t *testing.T) {
	st := &localstack.State{PID: 42, StartedAt: time.Unix(0, 0)}
	comps := []localstack.ComponentStatus{
		{Name: "MAA emulator", Address: "https://127.0.0.1:1/certs", OK: true, Detail: "200 OK"},
		{Name: "TPM simulator", Address: "127.0.0.1:2", Detail: "does not answer TPM commands: reading a response: EOF", Hint: "attest-bootstrap local tpm start --state '/s'"},
	}
	var b strings.Builder
	writeStatus(&b, st, "/s", comps)
	lines := strings.Split(b.String(), "\n")
	if len(lines) < 4 || !strings.HasPrefix(lines[2], "  DOWN TPM simulator") || strings.TrimSpace(lines[3]) != "to bring it back: attest-bootstrap local tpm start --state '/s'" {
		t.Errorf("status:\n%s", b.String())
	}
}

// TestStatusColumns: the addresses and the details of status start in one column whatever the
// length of the names ("Key Vault emulator" is the longest) and of the probed URLs.
func TestStatusColumns(t *testing.T) {
	comps := []localstack.ComponentStatus{
		{Name: "MAA emulator", Address: "https://127.0.0.1:1/certs", OK: true, Detail: "200 OK"},
		{Name: "TPM simulator", Address: "127.0.0.1:22", OK: true, Detail: "answers TPM commands"},
		{Name: "Entra ID emulator", Address: "https://127.0.0.1:333/0b1c/v2.0/.well-known/openid-configuration", OK: true, Detail: "200 OK"},
		{Name: "Key Vault emulator", Address: "https://127.0.0.1:4444/keys/attested-local", OK: true, Detail: "401: answers with the bearer challenge"},
		{Name: "registry", Address: "localhost:55555", OK: true, Detail: "accepting connections"},
	}
	var b strings.Builder
	writeStatus(&b, &localstack.State{}, "/s", comps)
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")[1:]
	if len(lines) != len(comps) {
		t.Fatalf("%d component lines, want %d:\n%s", len(lines), len(comps), b.String())
	}
	addrCol, detailCol := -1, -1
	for i, l := range lines {
		c := comps[i]
		a := strings.Index(l, endpoint(c.Address))
		d := strings.LastIndex(l, c.Detail)
		if a < 0 || d < 0 || (addrCol >= 0 && (a != addrCol || d != detailCol)) {
			t.Fatalf("misaligned:\n%s", b.String())
		}
		addrCol, detailCol = a, d
	}
	if !strings.Contains(lines[2], "Entra ID emulator  https://127.0.0.1:333 ") {
		t.Errorf("the address is not shown as the endpoint:\n%s", b.String())
	}
}

// TestEnvHelp: env's help warns that its output holds the signing identity's client secret, and
// says what that identity may do.
func TestEnvHelp(t *testing.T) {
	var o, e strings.Builder
	run(context.Background(), []string{"local", "env", "--help"}, &o, &e)
	for _, w := range []string{"AZURE_CLIENT_SECRET", "client secret of the signing identity", "may only read\nthe signing key, sign with it", "loopback only"} {
		if !strings.Contains(o.String(), w) {
			t.Errorf("no %q in:\n%s", w, o.String())
		}
	}
}

// TestStatusHelp: status's help gives its exit codes.
func TestStatusHelp(t *testing.T) {
	var o, e strings.Builder
	run(context.Background(), []string{"local", "status", "--help"}, &o, &e)
	for _, w := range []string{"Exit status:", "0  the stack runs and every component answers", "1  the stack runs, but a component does not answer", "3  the stack is not running"} {
		if !strings.Contains(o.String(), w) {
			t.Errorf("no %q in:\n%s", w, o.String())
		}
	}
}

// TestWriteUp: up says to export the environment again when a restart changed it, with the
// variables that changed and the ports that moved; a first start, or a stack already running,
// says what to run next.
func TestWriteUp(t *testing.T) {
	again := `the environment changed: run eval "$(attest-bootstrap local env --state '/s')" again`
	for _, tc := range []struct {
		name      string
		st        localstack.State
		already   bool
		want, not []string
	}{
		{"first start", localstack.State{}, false, []string{`next: eval "$(attest-bootstrap local env --state '/s')"`}, []string{"changed", "note:"}},
		{"restart, key id changed", localstack.State{EnvChanged: []string{"ATTEST_KEY_ID"}}, false,
			[]string{"changed since the previous start: ATTEST_KEY_ID\n", again}, []string{"next:", "note:"}},
		{"restart, registry moved", localstack.State{EnvChanged: []string{"ATTEST_KEY_ID", "ATTEST_REGISTRY"}, PortsMoved: []string{"registry: port 5000 of the previous start is not free"}}, false,
			[]string{"note: registry: port 5000", "changed since the previous start: ATTEST_KEY_ID ATTEST_REGISTRY\n", again}, []string{"next:"}},
		{"already running", localstack.State{EnvChanged: []string{"ATTEST_KEY_ID"}, PortsMoved: []string{"registry: x"}}, true,
			[]string{"already running", "next: eval"}, []string{"changed", "note:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			writeUp(&b, &tc.st, tc.already, "/s", " --state '/s'")
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("no %q in:\n%s", w, b.String())
				}
			}
			for _, n := range tc.not {
				if strings.Contains(b.String(), n) {
					t.Errorf("%q in:\n%s", n, b.String())
				}
			}
		})
	}
}

// fakeStack makes dir (which must exist) look like the state directory of a running stack, as up
// leaves it: the marker, stack.pid naming a live process whose command line is the stack's for
// dir, and state.json, 0600, naming that process, its exports pointing into dir. The process is a
// shell that runs a script named "local" (argv: sh local serve --state DIR) as uid, so that as
// root it can be another user's, as in the attack that env must refuse; it is killed when the
// test ends. It returns the process's pid.
func fakeStack(t *testing.T, dir string, uid int) int {
	t.Helper()
	// The script's directory must be open to uid.
	scripts, err := os.MkdirTemp("", "fakeserve")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(scripts) })
	if err := os.Chmod(scripts, 0o755); err != nil {
		t.Fatal(err)
	}
	// sleep is not the script's last command: a shell may exec its last command in place of
	// itself, and the process's command line would then be sleep's, not the stack's.
	if err := os.WriteFile(filepath.Join(scripts, "local"), []byte("while :; do sleep 600; done\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "local", "serve", "--state", dir)
	cmd.Dir = scripts
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if uid != os.Getuid() {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		syscall.Kill(-pid, syscall.SIGKILL)
		cmd.Wait()
	})
	// Start returns once execve has begun; the new command line shows in /proc a moment later
	// (read before, it is empty). A stack publishes its state only once it runs, so wait as long.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(b, []byte("serve\x00--state")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fake stack's command line is %q", b)
		}
	}
	st := localstack.State{
		Version: localstack.StateVersion, PID: pid, StartedAt: time.Now(),
		CABundlePath: filepath.Join(dir, "tls", "ca-bundle.pem"), NotationConfig: filepath.Join(dir, "notation", "config"),
		NotationLibexec: filepath.Join(dir, "notation", "libexec"), ControlSocket: filepath.Join(dir, "control.sock"),
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{
		localstack.MarkerName: []byte("marker\n"),
		"stack.pid":           []byte(strconv.Itoa(pid) + "\n"),
		"state.json":          b,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return pid
}

// alive reports whether process pid runs (and has not exited unreaped).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// TestLocalRefusesUntrustedState: env, whose output users eval, prints nothing and exits 1,
// naming the check that failed, for a state directory that others may write to or that another
// user owns, a state.json or stack.pid that others may write (or read, state.json) or another
// user owns, a stack process that another user runs (its command line mimicking the stack's), and
// a directory without the stack's marker that holds other files; status, down and tpm refuse them
// too, print nothing on stdout, and signal nothing. The user's own stack, and one an earlier
// version left (no marker), are exported. The cases of another user's files and processes need
// root (chown, and starting a process as uid 65534).
func TestLocalRefusesUntrustedState(t *testing.T) {
	const nobody = 65534
	for _, tc := range []struct {
		name      string
		root      bool
		procUID   int // the fake stack's process's uid; 0 = this user's
		setup     func(t *testing.T, dir string)
		wantError string // "" = env exports
	}{
		{name: "the user's own stack"},
		{name: "an earlier version's stack", setup: func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, localstack.MarkerName)) }},
		{name: "directory mode 0777", setup: func(t *testing.T, dir string) { os.Chmod(dir, 0o777) }, wantError: "is writable by others (mode 0777)"},
		{name: "directory mode 0775", setup: func(t *testing.T, dir string) { os.Chmod(dir, 0o775) }, wantError: "is writable by others (mode 0775)"},
		{name: "state.json mode 0644", setup: func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, "state.json"), 0o644) }, wantError: "state.json has mode 0644, which lets others read it; it must be 0600"},
		{name: "state.json mode 0666", setup: func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, "state.json"), 0o666) }, wantError: "state.json has mode 0666"},
		{name: "stack.pid mode 0666", setup: func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, "stack.pid"), 0o666) }, wantError: "stack.pid has mode 0666, which lets others write it"},
		{name: "no marker, other files", setup: func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, localstack.MarkerName))
			os.WriteFile(filepath.Join(dir, "notes.txt"), nil, 0o600)
		}, wantError: "not a local stack's state directory"},
		{name: "directory of another user", root: true, setup: func(t *testing.T, dir string) { os.Chown(dir, nobody, nobody) }, wantError: "belongs to uid 65534, not to this user"},
		{name: "state.json of another user", root: true, setup: func(t *testing.T, dir string) { os.Chown(filepath.Join(dir, "state.json"), nobody, nobody) }, wantError: "state.json belongs to uid 65534"},
		{name: "stack.pid of another user", root: true, setup: func(t *testing.T, dir string) { os.Chown(filepath.Join(dir, "stack.pid"), nobody, nobody) }, wantError: "stack.pid belongs to uid 65534"},
		{name: "stack process of another user", root: true, procUID: nobody, wantError: "which runs as uid 65534, not as this user"},
		{name: "all of another user's", root: true, procUID: nobody, setup: func(t *testing.T, dir string) {
			for _, name := range []string{localstack.MarkerName, "stack.pid", "state.json", "."} {
				os.Chown(filepath.Join(dir, name), nobody, nobody)
			}
			os.Chmod(dir, 0o777)
		}, wantError: "belongs to uid 65534"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Getuid() != 0 {
				t.Skip("needs root: another user's files and processes")
			}
			dir := filepath.Join(t.TempDir(), "state")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			uid := os.Getuid()
			if tc.procUID != 0 {
				uid = tc.procUID
			}
			pid := fakeStack(t, dir, uid)
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			ctx := context.Background()
			for _, args := range [][]string{{"env"}, {"env", "-o", "json"}} {
				var o, e strings.Builder
				code := run(ctx, append(append([]string{"local"}, args...), "--state", dir), &o, &e)
				if tc.wantError == "" {
					if code != 0 || !strings.Contains(o.String(), filepath.Join(dir, "notation", "libexec")) {
						t.Errorf("%s: exit %d, stdout %q, stderr %q; want the exports", args, code, o.String(), e.String())
					}
					continue
				}
				if code == 0 || o.Len() != 0 || !strings.Contains(e.String(), tc.wantError) {
					t.Errorf("%s: exit %d, stdout %q, stderr %q; want a failure with %q and nothing on stdout", args, code, o.String(), e.String(), tc.wantError)
				}
			}
			if tc.wantError == "" {
				return
			}
			for _, args := range [][]string{{"status"}, {"status", "-o", "json"}, {"tpm", "stop"}, {"down"}} {
				var o, e strings.Builder
				code := run(ctx, append(append([]string{"local"}, args...), "--state", dir), &o, &e)
				want := 1
				if args[0] == "status" {
					want = statusRefused
				}
				if code != want || o.Len() != 0 || !strings.Contains(e.String(), tc.wantError) {
					t.Errorf("%s: exit %d, stdout %q, stderr %q; want %d, %q and nothing on stdout", args, code, o.String(), e.String(), want, tc.wantError)
				}
			}
			if !alive(pid) {
				t.Errorf("down signalled the process %d it refused", pid)
			}
		})
	}
}

// TestLocalForeignDir: in a directory that is not a stack's (no marker) and holds the user's own
// files, state.json and stack.pid among them, up refuses (naming the marker, and saying to
// choose an empty or new directory) and down, env and status refuse; the directory stays as it
// was: no file removed, truncated or added (no lock file, no log, no marker).
func TestLocalForeignDir(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{"state.json": `{"project": "mine"}`, "stack.pid": "12345\n", "stack.log": "my log\n", "Makefile": "all:\n"}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"up"}, 1, "is not empty and has no " + localstack.MarkerName},
		{[]string{"up"}, 1, "local up takes an empty or new directory only: choose one"},
		{[]string{"down"}, 1, "not a local stack's state directory"},
		{[]string{"env"}, 1, "not a local stack's state directory"},
		{[]string{"status"}, statusRefused, "not a local stack's state directory"},
	} {
		var o, e strings.Builder
		code := run(ctx, append(append([]string{"local"}, tc.args...), "--state", dir), &o, &e)
		if code != tc.code || o.Len() != 0 || !strings.Contains(e.String(), tc.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want %d and %q", tc.args, code, o.String(), e.String(), tc.code, tc.want)
		}
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != len(files) {
		t.Errorf("the directory holds %d entries, want its %d files alone: %v", len(des), len(files), des)
	}
	for name, content := range files {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != content {
			t.Errorf("%s: %q, %v; want %q", name, b, err, content)
		}
	}
}
