//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// TestLocalStackSupervision: the stack's life as users drive it, with the real binary: two `up`
// at once start one stack, `down` through a symbolic link to the state directory stops it, and a
// state directory that cannot hold the stack is refused with the reason.
func TestLocalStackSupervision(t *testing.T) {
	r := newRunner(t)
	base := t.TempDir()
	real := filepath.Join(base, "real")
	link := filepath.Join(base, "link")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	statusPID := func(dir string) int {
		t.Helper()
		out, _, _ := r.run("attest-bootstrap", "local", "status", "--state", dir, "-o", "json")
		var s struct {
			Running  bool            `json:"running"`
			PID      int             `json:"pid"`
			Warnings json.RawMessage `json:"warnings"`
		}
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatalf("status: %v: %s", err, out)
		}
		if !s.Running {
			return 0
		}
		if !bytes.HasPrefix(s.Warnings, []byte("[")) {
			t.Errorf("status warnings %s, want a list (empty if none)", s.Warnings)
		}
		return s.PID
	}
	t.Cleanup(func() { r.run("attest-bootstrap", "local", "down", "--state", real) })

	// Two `up` at once, through the two names of the directory: one stack, reported by both.
	var wg sync.WaitGroup
	outs := make([]string, 2)
	codes := make([]int, 2)
	for i, dir := range []string{link, real} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, outs[i], codes[i] = r.run("attest-bootstrap", "local", "up", "--state", dir)
		}()
	}
	wg.Wait()
	if codes[0] != 0 || codes[1] != 0 {
		t.Fatalf("up exits %v:\n%s\n%s", codes, outs[0], outs[1])
	}
	pid := statusPID(real)
	if pid == 0 || statusPID(link) != pid {
		t.Fatalf("status through the two names: pid %d and %d", pid, statusPID(link))
	}
	for i, out := range outs {
		if !strings.Contains(out, "(pid "+strconv.Itoa(pid)+",") {
			t.Errorf("up %d reports another stack than pid %d:\n%s", i, pid, out)
		}
	}
	serves := 0
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), "serve\x00--state\x00"+real+"\x00") {
			serves++
		}
	}
	if serves != 1 {
		t.Fatalf("%d stack processes for %s, want 1", serves, real)
	}

	// `down` through the link stops the stack started through the directory's own name.
	r.must("attest-bootstrap", "local", "down", "--state", link)
	if running(pid) {
		t.Fatalf("the stack (pid %d) still runs after down", pid)
	}

	// attest-bootstrap without the plugin beside it: `up` says so, and the copy an earlier start
	// installed in the state directory is removed rather than used without notice.
	installed := filepath.Join(real, "notation", "libexec", "plugins", "attested-kv", "notation-attested-kv")
	if _, err := os.Stat(installed); err != nil {
		t.Fatalf("the first start installed no plugin: %v", err)
	}
	lone := filepath.Join(t.TempDir(), "attest-bootstrap")
	b, err := os.ReadFile(filepath.Join(r.bin, "attest-bootstrap"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lone, b, 0o755); err != nil {
		t.Fatal(err)
	}
	alone := &runner{t: t, bin: filepath.Dir(lone), env: r.env}
	_, errOut := alone.must2("attest-bootstrap", "local", "up", "--state", real)
	alone.must("attest-bootstrap", "local", "down", "--state", real)
	if !strings.Contains(errOut, "warning: the plugin binary notation-attested-kv was not found") {
		t.Errorf("up without the plugin does not warn:\n%s", errOut)
	}
	if _, err := os.Stat(installed); err == nil {
		t.Errorf("the earlier plugin copy %s is still installed", installed)
	}

	// A state path too long for the control socket is refused before anything starts.
	long := filepath.Join(base, strings.Repeat("d", 120))
	if _, errOut, code := r.run("attest-bootstrap", "local", "up", "--state", long); code == 0 || !strings.Contains(errOut, "choose a shorter --state") {
		t.Errorf("up with a long state path: exit %d: %s", code, errOut)
	}
	// A directory another user owns is refused (only root can make one here).
	if os.Getuid() == 0 {
		other := filepath.Join(base, "other")
		if err := os.Mkdir(other, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, errOut, code := r.run("attest-bootstrap", "local", "up", "--state", other); code == 0 || !strings.Contains(errOut, "belongs to uid 65534") {
			t.Errorf("up in another user's directory: exit %d: %s", code, errOut)
		}
	}
}

// running reports whether pid is a live process: not gone, and not a zombie (the stack's parent
// is whatever adopted it, which may not reap it).
func running(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// must2 is must returning stderr too.
func (r *runner) must2(name string, args ...string) (stdout, stderr string) {
	r.t.Helper()
	out, errOut, code := r.run(name, args...)
	if code != 0 {
		r.t.Fatalf("%s %s: exit %d\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), code, out, errOut)
	}
	return out, errOut
}
