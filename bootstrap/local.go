package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/attested-kv/attested-kv/internal/cliutil"
	"github.com/attested-kv/attested-kv/internal/localstack"
)

// localCommand is a command of `attest-bootstrap local`: what its help says and which flags it
// takes besides --state.
type localCommand struct {
	name    string
	args    string // the operands in the synopsis, e.g. "stop|start"
	summary string // its line in the help of `local`
	help    string // the paragraphs of its own help
	output  bool   // takes -o text|json
	debug   bool   // takes --debug
	hidden  bool   // not listed (serve, which up runs)
}

// localCommands are the commands of `attest-bootstrap local`, in the order of its help.
func localCommands() []localCommand {
	return []localCommand{
		{name: "up", summary: "start the local stack in the background", debug: true, help: `Start the local stack as a background process and wait until it is ready: MAA, Entra ID and
Key Vault emulators (HTTPS), a TPM 2.0 simulator provisioned like an Azure vTPM, and an OCI
registry, all on loopback. If the stack runs already, up says so and starts nothing. The stack
logs to stack.log in the state directory.

Started again in the same state directory, the stack keeps the ports and the emulated tenant's
client id and secret of its previous start (up names a port it could not keep), and the Key
Vault emulator's keys and certificates, so that the shells that exported its environment keep
working with the same signing key (ATTEST_KEY_ID) and images signed before still verify. When the
environment changed nonetheless (a port moved, or a signing certificate near its expiry was
replaced with a new key), up says so: run eval "$(attest-bootstrap local env)" again in those
shells. If it was the Key Vault emulator's port that moved, ATTEST_KEY_ID names the same key at
another URL, and the images signed before (whose tokens bind the key id as it was) must be signed
again.

The state directory must be the user's own, writable by no one else. up makes a new or empty
directory the stack's: it writes .attested-kv-local-stack into it before anything else. It refuses
a directory that holds anything else without that file, and writes, truncates and removes nothing
in it: choose an empty or new directory. (A state directory an earlier version's stack left, with
nothing but the stack's files in it, its state, vault or TLS bundle among them, is taken and
marked; the error says how to mark one by hand.)
`},
		{name: "env", summary: "print the shell exports for the running stack", output: true, help: `Print the shell exports for the running stack (ATTEST_*, AZURE_*, NOTATION_CONFIG,
NOTATION_LIBEXEC, SSL_CERT_FILE, SSL_CERT_DIR); use them with:
  eval "$(attest-bootstrap local env)"

The output contains a secret: AZURE_CLIENT_SECRET, the client secret of the signing identity in
the Entra ID emulator's tenant. Like the managed identity on Azure, that identity may only read
the signing key, sign with it and read its certificate chain: the emulated vault refuses it
anything else, and MAA refuses it the attestation policy. It is good for the stack's emulators on
loopback only, but do not paste it where others read it.

env prints nothing, and exits 1 naming the check that failed, unless the state directory is a
stack's, is the user's own and writable by no one else, its state.json and stack.pid are the
user's files that no one else may write (nor read, state.json: mode 0600), and the process
stack.pid names is the stack's, running as the user: otherwise another user could choose what the
shell that runs eval exports (the plugin directory notation runs, the CA bundle it trusts).
`},
		{name: "status", summary: "report whether the stack runs and each component answers", output: true, help: `Report whether the local stack runs and whether each of its components answers: the HTTPS
emulators a request, the TPM simulator a TPM command, the registry a connection. For a component
that does not answer, it may name the command that brings it back.

Exit status:
  0  the stack runs and every component answers
  1  the stack runs, but a component does not answer (the TPM after "local tpm stop", for one)
  2  usage error
  3  the stack is not running
  4  the state directory, or a file or the process of the stack, is refused: not the user's own,
     writable by others, or not a stack's; the message says why
`},
		{name: "down", summary: "stop the stack; no process is left behind", help: `Stop the stack and wait until its process is gone. The state directory is kept (keys,
certificates, the registry's content) for the next up. Removing it starts afresh, with a new
signing key: what was signed with the old one no longer verifies.

In a directory that is not a stack's state directory (no .attested-kv-local-stack), or one that
is not the user's own, or whose pid file names another user's process, down stops, writes and
removes nothing, and exits 1 saying why.
`},
		{name: "tpm", args: "stop|start", summary: "stop|start: make the stack's TPM unavailable / available again", help: `stop makes the stack's TPM unavailable, as a failed TPM would be: signing must then fail closed.
start makes it available again, with its state kept.
`},
		{name: "serve", debug: true, hidden: true, help: "Run the stack in the foreground; up starts it so.\n"},
	}
}

// localHelp is the help of `attest-bootstrap local`.
func localHelp(w io.Writer) {
	fmt.Fprint(w, `Usage: attest-bootstrap local COMMAND [flags]

The local stack stands in for Azure on loopback: MAA, Entra ID and Key Vault emulators (HTTPS), a
TPM 2.0 simulator provisioned like an Azure vTPM, and an OCI registry, in one background process.
It is for one user's trials and tests: the TPM simulator and the registry take no credentials, so
every local user can reach them (the registry holds its port on 127.0.0.1 and ::1 alike, so that
no one else can answer for localhost:PORT).

Commands:
`)
	for _, c := range localCommands() {
		if !c.hidden {
			fmt.Fprintf(w, "  %-7s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprint(w, `
Every command takes --state DIR, the stack's state directory (default
$XDG_STATE_HOME/attested-kv/local). Run "attest-bootstrap local COMMAND --help" for its flags.
Every command refuses a state directory that is not the user's own or that others may write to,
and one that holds other things than a stack's (up marks the directory it makes the stack's with
.attested-kv-local-stack, and takes an empty or new one only).
`)
}

// usage writes the help of c, with the flags of fs.
func (c localCommand) usage(w io.Writer, fs *pflag.FlagSet) {
	synopsis := "attest-bootstrap local " + c.name
	if c.args != "" {
		synopsis += " " + c.args
	}
	fmt.Fprintf(w, "Usage: %s [flags]\n\n%s\nFlags:\n%s", synopsis, c.help, fs.FlagUsages())
}

func runLocal(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		localHelp(stderr)
		return 2
	}
	sub := args[0]
	switch sub {
	case "-h", "--help", "help":
		localHelp(stdout)
		return 0
	}
	var cmd *localCommand
	for _, c := range localCommands() {
		if c.name == sub {
			cmd = &c
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "attest-bootstrap: unknown command \"local %s\"\n\n", sub)
		localHelp(stderr)
		return 2
	}
	fs := pflag.NewFlagSet("attest-bootstrap local "+sub, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	stateDir := fs.String("state", "", "state directory of the stack (default $XDG_STATE_HOME/attested-kv/local)")
	output, debug := new(string), new(bool)
	*output = "text"
	if cmd.output {
		fs.StringVarP(output, "output", "o", "text", "output format: text or json")
	}
	if cmd.debug {
		fs.BoolVar(debug, "debug", false, "log debug output")
	}
	usage := func(w io.Writer) { cmd.usage(w, fs) }
	if code, ok := parseFlags(fs, "local "+sub, args[1:], usage, stdout, stderr); !ok {
		return code
	}
	if sub != "tpm" && fs.NArg() > 0 {
		fmt.Fprintf(stderr, "attest-bootstrap local %s: unexpected argument %q\n\n", sub, fs.Arg(0))
		usage(stderr)
		return 2
	}
	if err := cliutil.CheckFormat(*output); err != nil {
		fmt.Fprintln(stderr, "attest-bootstrap:", err)
		return 2
	}
	dir := *stateDir
	if dir == "" {
		d, err := localstack.DefaultStateDir()
		if err != nil {
			fmt.Fprintln(stderr, "attest-bootstrap:", err)
			return 1
		}
		dir = d
	}
	dir, err := localstack.ResolveStateDir(dir)
	if err != nil {
		fmt.Fprintln(stderr, "attest-bootstrap:", err)
		return 1
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "attest-bootstrap local "+sub+":", err)
		return 1
	}

	switch sub {
	case "serve": // the background process that `up` starts; not for direct use
		return exitCode(localstack.Run(ctx, localstack.Options{StateDir: dir, Logger: cliutil.Logger(stderr, *debug), PluginPath: pluginPath()}), stderr)
	case "up":
		exe, err := os.Executable()
		if err != nil {
			return fail(err)
		}
		command := []string{exe, "local", "serve", "--state", dir}
		if *debug {
			command = append(command, "--debug")
		}
		st, already, err := localstack.Up(ctx, localstack.StartOptions{StateDir: dir, Command: command})
		if err != nil {
			return fail(err)
		}
		writeUp(stderr, st, already, dir, stateFlag(*stateDir, dir))
		return 0
	case "env":
		// Nothing goes to stdout unless the state is the user's own: the output is eval'd.
		st, err := localstack.Running(dir)
		if errors.Is(err, localstack.ErrNotRunning) {
			return fail(fmt.Errorf("%w; start it with: attest-bootstrap local up%s", err, stateFlag(*stateDir, dir)))
		}
		if err != nil {
			return fail(err)
		}
		if *output == "json" {
			m := map[string]string{}
			for _, kv := range localstack.Env(st) {
				m[kv[0]] = kv[1]
			}
			cliutil.WriteJSON(stdout, m)
			return 0
		}
		for _, kv := range localstack.Env(st) {
			fmt.Fprintf(stdout, "export %s=%s\n", kv[0], localstack.ShellQuote(kv[1]))
		}
		return 0
	case "status":
		st, comps, err := localstack.Status(ctx, dir)
		if err != nil && !errors.Is(err, localstack.ErrNotRunning) {
			fmt.Fprintln(stderr, "attest-bootstrap local status:", err)
			return statusRefused
		}
		if err != nil {
			if *output == "json" {
				cliutil.WriteJSON(stdout, map[string]any{"running": false, "state": dir})
			} else {
				fmt.Fprintf(stdout, "local stack: not running (state %s)\n", dir)
			}
			return 3
		}
		healthy := true
		for i, c := range comps {
			healthy = healthy && c.OK
			if c.Hint != "" {
				comps[i].Hint += stateFlag(*stateDir, dir)
			}
		}
		if *output == "json" {
			warnings := st.Warnings
			if warnings == nil {
				warnings = []string{} // a list, empty, as a JSON reader expects
			}
			cliutil.WriteJSON(stdout, map[string]any{"running": true, "healthy": healthy, "pid": st.PID, "state": dir, "startedAt": st.StartedAt, "components": comps, "warnings": warnings})
		} else {
			writeStatus(stdout, st, dir, comps)
		}
		if !healthy {
			return 1
		}
		return 0
	case "down":
		err := localstack.Down(ctx, dir)
		if errors.Is(err, localstack.ErrNotRunning) {
			fmt.Fprintf(stderr, "the local stack is not running (state %s)\n", dir)
			return 0
		}
		if err != nil {
			return fail(err)
		}
		fmt.Fprintln(stderr, "local stack stopped")
		return 0
	case "tpm":
		if fs.NArg() != 1 || (fs.Arg(0) != "stop" && fs.Arg(0) != "start") {
			fmt.Fprintf(stderr, "attest-bootstrap local tpm: want stop or start\n\n")
			usage(stderr)
			return 2
		}
		if err := localstack.SetTPMAvailable(ctx, dir, fs.Arg(0) == "start"); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stderr, "TPM simulator: %sed\n", map[string]string{"stop": "stopp", "start": "start"}[fs.Arg(0)])
		return 0
	}
	fmt.Fprintf(stderr, "attest-bootstrap: unknown command \"local %s\"\n\n", sub)
	localHelp(stderr)
	return 2
}

// statusRefused is the exit status of status for a state directory it refuses (see its help).
const statusRefused = 4

// writeUp writes what up started, or found running (already), for the stack st in dir; stateArg
// is the --state flag the commands it suggests need.
func writeUp(w io.Writer, st *localstack.State, already bool, dir, stateArg string) {
	if already {
		fmt.Fprintf(w, "the local stack is already running (pid %d, state %s)\n", st.PID, dir)
	} else {
		fmt.Fprintf(w, "local stack started (pid %d, state %s)\n", st.PID, dir)
	}
	for _, warning := range st.Warnings {
		fmt.Fprintln(w, "warning:", warning)
	}
	if !already {
		for _, m := range st.PortsMoved {
			fmt.Fprintln(w, "note:", m)
		}
	}
	fmt.Fprintf(w, "  MAA emulator        %s\n  TPM simulator       %s\n  Entra ID emulator   %s\n  Key Vault emulator  %s\n  registry            %s\n  signing key         %s (notation key %q)\n",
		st.MAAURL, st.TPMAddr, st.EntraURL, st.KeyVaultURL, st.Registry, st.KeyID, localstack.SigningKeyName)
	if !already && len(st.EnvChanged) > 0 {
		// The shells that exported the previous start's environment would reach the old ports or
		// sign with the old key id.
		fmt.Fprintf(w, "changed since the previous start: %s\nthe environment changed: run eval \"$(attest-bootstrap local env%s)\" again\n", strings.Join(st.EnvChanged, " "), stateArg)
		return
	}
	fmt.Fprintf(w, "next: eval \"$(attest-bootstrap local env%s)\"\n", stateArg)
}

// writeStatus writes the status of the running stack st, whose components are comps, as text.
func writeStatus(w io.Writer, st *localstack.State, dir string, comps []localstack.ComponentStatus) {
	fmt.Fprintf(w, "local stack: running (pid %d, since %s, state %s)\n", st.PID, st.StartedAt.Local().Format(time.RFC3339), dir)
	for _, warning := range st.Warnings {
		fmt.Fprintln(w, "  warning:", warning)
	}
	// The columns are as wide as their longest entry. An address is shown as the endpoint up and
	// env give, without the path status probed (-o json has it).
	nameWidth, addrWidth := 0, 0
	for _, c := range comps {
		nameWidth = max(nameWidth, len(c.Name))
		addrWidth = max(addrWidth, len(endpoint(c.Address)))
	}
	for _, c := range comps {
		mark := "ok  "
		if !c.OK {
			mark = "DOWN"
		}
		fmt.Fprintf(w, "  %s %-*s %-*s %s\n", mark, nameWidth, c.Name, addrWidth, endpoint(c.Address), c.Detail)
		if c.Hint != "" {
			fmt.Fprintf(w, "       to bring it back: %s\n", c.Hint)
		}
	}
}

// endpoint is the scheme and host of a URL, or addr itself if it is not one (HOST:PORT).
func endpoint(addr string) string {
	if u, err := url.Parse(addr); err == nil && u.Scheme != "" && u.Host != "" {
		return u.Scheme + "://" + u.Host
	}
	return addr
}

func stateFlag(given, abs string) string {
	if given == "" {
		return ""
	}
	return " --state " + localstack.ShellQuote(abs)
}

func exitCode(err error, stderr io.Writer) int {
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "attest-bootstrap:", err)
		return 1
	}
	return 0
}

// pluginPath is the notation-attested-kv built next to this binary (make build puts both in
// ./bin), or "" if there is none.
func pluginPath() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	p := filepath.Join(filepath.Dir(exe), localstack.PluginBinary)
	if fi, err := os.Stat(p); err != nil || fi.IsDir() {
		return ""
	}
	return p
}
