// Command ratify-maa-verifier is a Ratify v1 external verifier for the MAA token referrer
// (artifact type application/vnd.attested-kv.maa-token.v1+jwt).
//
// Ratify runs it once per token referrer with RATIFY_VERIFIER_COMMAND=VERIFY,
// RATIFY_VERIFIER_SUBJECT=<registry/repo@sha256:...> and RATIFY_VERIFIER_VERSION, and the
// verifier input as one JSON object on stdin. It prints one result JSON on stdout and exits 0
// whether or not the image passed. A RATIFY_VERIFIER_VERSION it does not support (it supports
// 1.0.0, what Ratify sends for a Verifier without a version) is refused as Ratify's plugin
// skeleton refuses it: the error JSON {"code": 6, "msg", "details"} on stdout and exit status 1. The protocol, the verifier config keys and the checks are
// those of package [github.com/attested-kv/attested-kv/policy/ratify/verifier]; this command
// only wires the process to [verifier.Run]. "ratify-maa-verifier version" prints the version.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/attested-kv/attested-kv/internal/cliutil"
	"github.com/attested-kv/attested-kv/policy/ratify/verifier"
)

func main() {
	cliutil.ShortLivedGC()
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "version":
			fmt.Println(verifier.Name, cliutil.Version)
			return
		case "-h", "--help", "help":
			fmt.Print(usage)
			return
		}
	}
	// A config version the verifier does not support is refused as Ratify's plugin skeleton
	// refuses it: its error JSON on stdout, exit status 1.
	if e := verifier.CheckVersion(os.Getenv("RATIFY_VERIFIER_VERSION")); e != nil {
		json.NewEncoder(os.Stdout).Encode(e)
		fmt.Fprintln(os.Stderr, "ratify-maa-verifier:", e)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res := verifier.Run(ctx, os.Getenv, os.Stdin)
	json.NewEncoder(os.Stdout).Encode(res)
}

const usage = `ratify-maa-verifier: a Ratify v1 external verifier for attested-kv MAA token referrers.

Ratify runs it with RATIFY_VERIFIER_COMMAND=VERIFY, RATIFY_VERIFIER_SUBJECT,
RATIFY_VERIFIER_VERSION (the verifier config's version: 1.0.0, the default of a Verifier resource,
is the one supported) and the verifier config on stdin; it prints the verification result as JSON.
Another version is refused with {"code": 6, ...} on stdout and exit status 1, as Ratify's plugin
skeleton does. See policy/k8s/README.md and policy/k8s/verifiers.yaml.

Verifier parameters (keys are case-sensitive; an unknown key refuses every image):
  attestationURL     the MAA instance tokens must come from (required)
  keyID              the Key Vault key id the token must be bound to (required)
  trustPolicyDoc     a Notation trust policy document (required)
  verificationCerts  directories or files of trusted root certificates, the trust store
                     "ca:certs" (required)
  signingCertSHA256  SHA-256 fingerprints of the signing certificates that count
  maxTokenAge        largest gap between the token's issue and the signing, default 5m, at most 1h
  timeout            limit of the whole verification, default 3s, at most 30s
  rules              claim rule file, default the built-in Trusted Launch baseline (which admits
                     any Trusted Launch VM's token: pin x-ms-azurevm-vmid in a rule file)
  jwksPath           pinned MAA token keys, for clusters that cannot reach the instance
`
