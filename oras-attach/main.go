// Command oras-attest handles MAA attestation tokens for attested signing: it fetches them from
// the local TPM, verifies and shows them; later it attaches them to images as OCI referrers and
// verifies images before deployment.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/attested-kv/attested-kv/internal/cliutil"
)

const usage = `oras-attest: attestation tokens for attested container signing.

Usage:
  oras-attest token fetch  --nonce VALUE [--attestation-url URL] [--tpm ADDR] [--out FILE]
  oras-attest token verify FILE|- [--attestation-url URL] [--nonce VALUE] [--max-age DURATION] [--jwks FILE] [-o json]
  oras-attest token show   FILE|- [-o json]
  oras-attest version

Environment defaults (as printed by "attest-bootstrap local env"):
  ATTEST_URL      the MAA instance URL (--attestation-url)
  ATTEST_TPM      the TPM address (--tpm): /dev/tpmrm0, swtpm:HOST:PORT, mssim:HOST:PORT, unix:PATH
  ATTEST_TCG_LOG  the firmware event log (--tcg-log)

Run "oras-attest token fetch --help" and so on for each command's flags.
`

func main() {
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
	case "token":
		if len(args) < 2 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		io := cmdIO{stdin: stdin, stdout: stdout, stderr: stderr}
		switch args[1] {
		case "fetch":
			return tokenFetch(ctx, args[2:], io)
		case "verify":
			return tokenVerify(ctx, args[2:], io)
		case "show":
			return tokenShow(args[2:], io)
		case "-h", "--help", "help":
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "oras-attest: unknown command \"token %s\"\n\n%s", args[1], usage)
		return 2
	}
	fmt.Fprintf(stderr, "oras-attest: unknown command %q\n\n%s", args[0], usage)
	return 2
}

type cmdIO struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}
