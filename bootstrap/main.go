// Command attest-bootstrap provisions what the attested signing chain needs: on Azure
// (plan, apply, destroy through the ARM SDK) and, for machines without Azure, the local stack
// (local up|env|status|down).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/attested-kv/attested-kv/internal/cliutil"
)

const usage = `attest-bootstrap: provision the attested signing chain.

Usage:
  attest-bootstrap plan    --subscription S --tenant T --resource-group RG --location L --name-prefix P --operator-object-id ID
                           [--cluster-principal-id ID] [--hsm] [--image-builder --artifacts-url URL --artifacts-sha256 HEX]
  attest-bootstrap apply   (plan's flags) [--purge-protection] [--outputs FILE] [--notation-config DIR]
                           [--replicas R1,R2] [--run-image-build]
  attest-bootstrap destroy (plan's first six flags) [--purge]
      (or --config FILE in YAML or JSON; -o json; see "attest-bootstrap COMMAND --help")
  attest-bootstrap local up      [--state DIR]   start the local stack in the background
  attest-bootstrap local env     [--state DIR]   print shell exports for the running stack
  attest-bootstrap local status  [--state DIR] [-o json]
  attest-bootstrap local down    [--state DIR]   stop the stack; no process is left behind
  attest-bootstrap local tpm stop|start [--state DIR]
                                                  make the stack's TPM unavailable / available again
      (see "attest-bootstrap local --help" and "attest-bootstrap local COMMAND --help")
  attest-bootstrap version

apply creates or updates, idempotently: the resource group, a user-assigned managed identity,
an attestation provider and its AzureGuest policy, a Key Vault (RBAC) with an RSA-3072
code-signing certificate, a Premium container registry, and the role assignments; it writes the
outputs file and the Notation trust policy and store. The managed identity signs through a custom
role (attested-kv signer <prefix> <rg> <subscription>) holding only
Microsoft.KeyVault/vaults/keys/read and .../keys/sign/action on the signing key, not Key Vault
Crypto User (whose keys/update re-enables a disabled key and keys/backup exports it), and reads
the chain through Certificate User on the certificate and Secrets User on its secret. The wider
grants of earlier versions (Crypto User, vault-wide Certificate and Secrets User) are withdrawn by
the first apply 30 minutes after their replacements were assigned, so that signing never stops
meanwhile. Apply also withdraws the grants it made to an operator or cluster the flags no longer
name (a former cluster's AcrPull once the new one's is 30 minutes old; plan lists them). With --image-builder it adds a compute
gallery, a Trusted Launch image definition and an Azure Image Builder template that runs as its
own identity (<prefix>-imagebuilder) with a custom role that can only read the gallery and write
image versions; the signing identity gets no right on the gallery, and the Contributor grant
earlier versions gave it there is withdrawn. Creating the custom roles needs
Microsoft.Authorization/roleDefinitions/write (Owner or User Access Administrator).
destroy removes only what apply tagged, and the role assignments apply made on what it removes.

The local stack runs on loopback only: MAA, Entra ID and Key Vault emulators (HTTPS), a TPM 2.0
simulator provisioned like an Azure vTPM, and an OCI registry. Use it with:
  eval "$(attest-bootstrap local env)"

--state defaults to $XDG_STATE_HOME/attested-kv/local.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	switch args[0] {
	case "version":
		fmt.Fprintln(stdout, "attest-bootstrap", cliutil.Version)
		return 0
	case "local":
		return runLocal(ctx, args[1:], stdout, stderr)
	case "plan", "apply", "destroy":
		return runAzure(ctx, args[0], args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "attest-bootstrap: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// parseFlags parses args into fs for the command cmd ("plan", "local up"). --help (or -h) writes
// the command's usage (from usage) on stdout, and the command ends with 0: help asked for is not
// an error. pflag (v1.1.0) with ContinueOnError prints no parse error, so it is printed here, then
// the usage, on stderr: a usage error, exit 2. ok is false when the command must end with code.
// fs.Usage is replaced.
func parseFlags(fs *pflag.FlagSet, cmd string, args []string, usage func(io.Writer), stdout, stderr io.Writer) (code int, ok bool) {
	fs.Usage = func() {} // pflag calls it for --help only, which is answered below
	err := fs.Parse(args)
	switch {
	case err == nil:
		return 0, true
	case errors.Is(err, pflag.ErrHelp):
		usage(stdout)
		return 0, false
	}
	fmt.Fprintf(stderr, "attest-bootstrap %s: %v\n\n", cmd, err)
	usage(stderr)
	return 2, false
}
