// Command oras-attest handles MAA attestation tokens for attested signing: it fetches them from
// the local TPM, verifies and shows them, attaches them to images as OCI referrers, and verifies
// images before deployment.
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
  oras-attest token verify FILE|- [--attestation-url URL] [--nonce VALUE] [--max-age DURATION] [--rules FILE] [--jwks FILE] [-o json]
  oras-attest token show   FILE|- [-o json]
  oras-attest attach REGISTRY/REPO@DIGEST [--token FILE] [--token-dir DIR] [--timeout 2m] [-o json]
  oras-attest verify REGISTRY/REPO@DIGEST --attestation-url URL --key-id KEY_URL
                     [--signing-cert-sha256 HEX] [--trust-policy FILE] [--trust-store DIR] [--rules FILE]
                     [--max-age 5m] [--jwks FILE] [--timeout 2m] [-o json]
  oras-attest rules test --rules FILE --claims FILE [-o json]
  oras-attest version

attach publishes only the tokens a signature of the image names (sign first); -o json prints the
list of referrers attached.

Environment defaults (as printed by "attest-bootstrap local env"):
  ATTEST_URL      the MAA instance URL (--attestation-url)
  ATTEST_TPM      the TPM address (--tpm): /dev/tpmrm0, swtpm:HOST:PORT, mssim:HOST:PORT, unix:PATH
  ATTEST_TCG_LOG  the firmware event log (--tcg-log)
  ATTEST_KEY_ID   the Key Vault key id signatures must be made with (--key-id)
  NOTATION_CONFIG where the Notation trust policy and trust store live

Run "oras-attest token fetch --help" and so on for each command's flags.
`

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
		if len(args) >= 2 && (args[1] == "-h" || args[1] == "--help" || args[1] == "help") {
			fmt.Fprint(stdout, usage)
			return 0
		}
		if len(args) < 2 || args[1] != "test" {
			fmt.Fprint(stderr, usage)
			return 2
		}
		return rulesTest(args[2:], cmdIO{stdin: stdin, stdout: stdout, stderr: stderr})
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
