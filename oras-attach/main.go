// Command oras-attest handles MAA attestation tokens for attested signing: it fetches them from
// the local TPM, verifies and shows them, attaches them to images as OCI referrers, and verifies
// images before deployment.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"syscall"

	"github.com/attested-kv/attested-kv/internal/cliutil"
)

// tokenSynopses and rulesSynopses are the subcommands of the command groups token and rules.
const (
	tokenSynopses = `  oras-attest token fetch  --nonce VALUE [--attestation-url URL] [--tpm ADDR] [--out FILE]
  oras-attest token verify FILE|- [--attestation-url URL] [--nonce VALUE] [--max-age DURATION] [--rules FILE] [--jwks FILE] [-o json]
  oras-attest token show   FILE|- [-o json]
  oras-attest token prune  --older-than DURATION [--token-dir DIR] [--require-repository REPO]... [--dry-run] [--include-unattached] [-o json]
`
	rulesSynopses = `  oras-attest rules test --rules FILE --claims FILE [-o json]
  oras-attest rules pin-vm --vm-id ID [--vm-id ID ...] [--rules FILE] [--out FILE]
`
)

const usage = `oras-attest: attestation tokens for attested container signing.

Usage:
` + tokenSynopses + `  oras-attest attach REGISTRY/REPO@DIGEST [--token FILE] [--token-dir DIR] [--timeout 2m] [-o json]
  oras-attest verify REGISTRY/REPO@DIGEST --attestation-url URL --key-id KEY_URL
                     [--signing-cert-sha256 HEX] [--trust-policy FILE] [--trust-store DIR] [--rules FILE]
                     [--max-age 5m] [--jwks FILE] [--timeout 2m] [-o json]
` + rulesSynopses + `  oras-attest version

attach publishes only the tokens a signature of the image names (sign first); what is listed as a
signature but is not a Notary signature of this image is ignored. A registry that does not serve
a signature fails attach only for a stored token no signature read names. -o json prints the
list of referrers attached, also when a later token fails.

token prune removes from the token store the tokens stored longer ago than --older-than (1h at
least; there is no default) that attach published, and the directories left empty; --dry-run
lists them first. Attach marks each token it publishes with the repositories (REGISTRY/REPO) it
published it to, and prune lists them with each token: the mark means "published to these
repositories", and only those. An image copied to another repository before attach (a promotion
to another registry) needs its token attached there too: attach it there before pruning, or copy
the image with its referrers (oras cp -r) after attach; --require-repository REGISTRY/REPO
(repeatable) keeps each token whose mark does not record it. Older tokens attach never published are
kept and counted: a pruned token can no longer be attached, and the signature naming it never
verified. --include-unattached removes them too.

Exit status: 0 verified, or done; 1 refused, or failed (a registry, MAA or the TPM, a file that
cannot be read); 2 usage error (a flag, an argument, or what a file given holds, is wrong).
With -o json, a failure (status 1) that has no result to print (no checks, no list of referrers)
prints {"error": "MESSAGE"} on stdout, besides the message on stderr; a usage error (status 2) is
reported on stderr only.

Environment defaults (as printed by "attest-bootstrap local env"):
  ATTEST_URL        the MAA instance URL (--attestation-url)
  ATTEST_TPM        the TPM address (--tpm): /dev/tpmrm0, swtpm:HOST:PORT, mssim:HOST:PORT, unix:PATH
  ATTEST_TCG_LOG    the firmware event log (--tcg-log)
  ATTEST_OS_RELEASE the os-release file describing the OS to MAA (--os-release; default
                    /etc/os-release)
  ATTEST_KEY_ID     the Key Vault key id signatures must be made with (--key-id)
  ATTEST_TOKEN_DIR  the token store attach reads and token prune prunes, the plugin's token_dir
                    (--token-dir; default $XDG_STATE_HOME/attested-kv/tokens, else
                    ~/.local/state/attested-kv/tokens)
  NOTATION_CONFIG   where the Notation trust policy and trust store live

Run "oras-attest token fetch --help" and so on for each command's flags.
`

// group is a command group (token, rules): its subcommands' names and synopses.
type group struct {
	name     string
	names    string // the subcommands, as the error for a missing one lists them
	synopses string
}

var (
	tokenGroup = group{name: "token", names: "fetch, verify, show or prune", synopses: tokenSynopses}
	rulesGroup = group{name: "rules", names: "test or pin-vm", synopses: rulesSynopses}
)

// usage is the group's usage: its subcommands' synopses.
func (g group) usage() string {
	return fmt.Sprintf("Usage:\n%s\nRun \"oras-attest %s SUBCOMMAND --help\" for a subcommand's flags.\n", g.synopses, g.name)
}

// dispatch runs the group's subcommand named by args[0], from run; help goes to stdout (exit 0),
// a missing or unknown subcommand is named on stderr with the group's usage (exit 2).
func (g group) dispatch(args []string, stdout, stderr io.Writer, cmds map[string]func(args []string) int) int {
	if len(args) == 0 {
		fmt.Fprintf(stderr, "oras-attest %s: missing subcommand (%s)\n\n%s", g.name, g.names, g.usage())
		return 2
	}
	if cmd, ok := cmds[args[0]]; ok {
		return cmd(args[1:])
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, g.usage())
		return 0
	}
	fmt.Fprintf(stderr, "oras-attest: unknown command \"%s %s\"\n\n%s", g.name, args[0], g.usage())
	return 2
}

func main() {
	cliutil.ShortLivedGC()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is the whole command, testable without a process.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "version":
		fmt.Fprintln(stdout, "oras-attest", cliutil.Version)
		return 0
	case "attach":
		return attach(ctx, args[1:], cmdIO{stdin: stdin, stdout: stdout, stderr: stderr})
	case "verify":
		return verifyImage(ctx, args[1:], cmdIO{stdin: stdin, stdout: stdout, stderr: stderr})
	case "rules":
		cio := cmdIO{stdin: stdin, stdout: stdout, stderr: stderr}
		return rulesGroup.dispatch(args[1:], stdout, stderr, map[string]func([]string) int{
			"test":   func(a []string) int { return rulesTest(a, cio) },
			"pin-vm": func(a []string) int { return rulesPinVM(a, cio) },
		})
	case "token":
		cio := cmdIO{stdin: stdin, stdout: stdout, stderr: stderr}
		return tokenGroup.dispatch(args[1:], stdout, stderr, map[string]func([]string) int{
			"fetch":  func(a []string) int { return tokenFetch(ctx, a, cio) },
			"verify": func(a []string) int { return tokenVerify(ctx, a, cio) },
			"show":   func(a []string) int { return tokenShow(a, cio) },
			"prune":  func(a []string) int { return tokenPrune(ctx, a, cio) },
		})
	}
	fmt.Fprintf(stderr, "oras-attest: unknown command %q\n\n%s", args[0], usage)
	return 2
}

type cmdIO struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// jsonError is what -o json prints on stdout for a failure (exit 1) that has no result to print,
// so that a consumer of the JSON output gets an object in every case.
type jsonError struct {
	Error string `json:"error"`
}

// report prints err on stderr, after the command's name, and returns code, the exit code: 1 for a
// failure, 2 for a usage error (the usage lists them). With json, a failure also prints jsonError
// on stdout; a usage error does not.
func report(io cmdIO, cmd string, json bool, code int, err error) int {
	fmt.Fprintf(io.stderr, "%s: %v\n", cmd, err)
	if json && code == 1 {
		cliutil.WriteJSON(io.stdout, jsonError{Error: err.Error()})
	}
	return code
}

// fileCode is the exit code of an error loading a file that a flag names: 1 when the file cannot
// be read (it is missing, or this user may not read it: the machine's state, not the command
// line), 2 when it was read and what it holds is wrong.
func fileCode(err error) int {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return 1
	}
	return 2
}
