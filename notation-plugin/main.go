// Command notation-attested-kv is the Notation plugin attested-kv: it signs container images with
// an Azure Key Vault key only after this VM's TPM has been attested by Microsoft Azure Attestation
// and the token has been verified (see internal/gate). Notation runs it; users run
//
//	notation plugin install --file ./notation-attested-kv
//	notation key add NAME --plugin attested-kv --id https://VAULT.vault.azure.net/keys/KEY/VERSION \
//	    --plugin-config attestation_url=https://INSTANCE.attest.azure.net
//	notation sign --key NAME REGISTRY/REPO@sha256:...
package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/notaryproject/notation-plugin-framework-go/cli"
	"github.com/notaryproject/notation-plugin-framework-go/plugin"

	"github.com/attested-kv/attested-kv/internal/cliutil"
	"github.com/attested-kv/attested-kv/internal/gate"
)

func main() {
	cliutil.ShortLivedGC()
	if code, done := forPeople(os.Args[1:], os.Stdout, os.Stderr); done {
		os.Exit(code)
	}
	c, err := cli.New(gate.New(gate.Deps{}))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c.Execute(context.Background(), os.Args)
}

// forPeople answers the invocations a person makes, which the plugin framework would answer
// with a bare "Invalid command, ..." (no newline, no pointer to help, exit 1): help (-h, --help,
// help) is the usage on stdout, exit 0; no arguments at all is the usage on stderr, exit 2; a
// first argument that is no plugin command of Notation's protocol (--version, a typo) is a usage
// error naming it, exit 2. done is false for the protocol's commands, which the framework handles
// (it refuses those this plugin does not implement, as Notation expects).
func forPeople(args []string, stdout, stderr io.Writer) (code int, done bool) {
	switch {
	case len(args) == 0:
		fmt.Fprint(stderr, usage)
		return 2, true
	case len(args) == 1 && (args[0] == "--help" || args[0] == "-h" || args[0] == "help"):
		fmt.Fprint(stdout, usage)
		return 0, true
	case !protocolCommands[args[0]]:
		fmt.Fprintf(stderr, "notation-attested-kv: unknown command %.60q: Notation runs this plugin with get-plugin-metadata, generate-envelope or version (see --help)\n", args[0])
		return 2, true
	}
	return 0, false
}

// protocolCommands are the commands of Notation's plugin protocol (notation-plugin-framework-go
// plugin.Command), implemented by this plugin or not.
var protocolCommands = map[string]bool{
	string(plugin.CommandGetMetadata): true, string(plugin.CommandDescribeKey): true, string(plugin.CommandGenerateSignature): true,
	string(plugin.CommandGenerateEnvelope): true, string(plugin.CommandVerifySignature): true, string(plugin.Version): true,
}

const usage = `notation-attested-kv: the Notation plugin "attested-kv".

Notation runs this program; it reads a JSON request on stdin and writes the response on stdout.
Commands: get-plugin-metadata, generate-envelope, version.

Install and use:
  notation plugin install --file ./notation-attested-kv
  notation key add NAME --plugin attested-kv --id https://VAULT.vault.azure.net/keys/KEY/VERSION \
      --plugin-config attestation_url=https://INSTANCE.attest.azure.net
  notation sign --key NAME REGISTRY/REPO@sha256:...

The key id is the keyId attest-bootstrap writes (the key's version included). The token is bound to
the key id as written, so the verifiers (oras-attest verify --key-id, Ratify's keyID) are given the
same; a key id without a version is taken (Key Vault's latest version signs) but must then be
given to them without one too.

Plugin config (--plugin-config key=value):
  attestation_url      MAA instance URL (required)
  attestation_type     AzureGuest (default and only value)
  max_token_age        oldest acceptable token, default 5m; Key Vault must have signed by then
  timeout              time limit of one signature (attestation, Key Vault), default 2m
  rules                CEL claim rule file (default: the built-in Trusted Launch baseline)
  tpm                  /dev/tpmrm0 (default; the build user must be in the device's group, usually tss),
                       swtpm:HOST:PORT, mssim:HOST:PORT or unix:PATH
  tcg_log              TCG event log, default /sys/kernel/security/tpm0/binary_bios_measurements
                       (root-only by default: a log that exists but cannot be read stops the signing;
                       give the build user read access rather than sending none, since MAA derives
                       the Secure Boot claims from it); "" sends none, as does a missing file at the
                       default path only (a path given that does not exist stops the signing)
  credential_type      environment, workloadid, managedid, azurecli; unset = DefaultAzureCredential
  client_id            managed identity / workload identity client id; needs credential_type
                       managedid or workloadid (any other type would ignore it and sign as
                       another identity, so it is refused)
  ca_certs             PEM bundle completing the certificate chain
  token_dir            token store, default $XDG_STATE_HOME/attested-kv/tokens
  timestamp_url        RFC 3161 TSA URL (needs timestamp_root_cert)
  timestamp_root_cert  the TSA's root certificate (PEM)
  log_file             diagnostics (JSON lines); nothing is written to stdout/stderr
  key_cache            directory keeping the TPM context of the ephemeral key so the next
                       attestation loads it instead of deriving it again (valid until the PCRs
                       change or the TPM resets), default $XDG_CACHE_HOME/attested-kv/tpm; off = none
  os_release           os-release file describing the OS to MAA, default /etc/os-release; read
                       as Azure's client reads it (no VERSION_ID, or one not numeric: version 1.0;
                       a VERSION_ID of 0.x is refused, as Azure's client refuses it)

Nothing is signed unless a fresh MAA token, bound to the image digest and the key id, verifies
and passes the claim rules. Never put secrets in the plugin config: 'notation sign -d' prints it.
`
