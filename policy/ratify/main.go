// Command ratify-maa-verifier is a Ratify v1 external verifier for the MAA token referrer
// (artifact type application/vnd.attested-kv.maa-token.v1+jwt).
//
// Ratify runs it once per token referrer with RATIFY_VERIFIER_COMMAND=VERIFY,
// RATIFY_VERIFIER_SUBJECT=<registry/repo@sha256:...> and RATIFY_VERIFIER_VERSION, and the
// verifier input as one JSON object on stdin. It prints one result JSON on stdout and exits 0
// whether or not the image passed. The protocol, the verifier config keys and the checks are
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res := verifier.Run(ctx, os.Getenv, os.Stdin)
	json.NewEncoder(os.Stdout).Encode(res)
}

const usage = `ratify-maa-verifier: a Ratify v1 external verifier for attested-kv MAA token referrers.

Ratify runs it with RATIFY_VERIFIER_COMMAND=VERIFY, RATIFY_VERIFIER_SUBJECT and the verifier
config on stdin; it prints the verification result as JSON. See policy/k8s/README.md.
`
