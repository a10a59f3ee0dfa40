package verifier_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"

	"github.com/attested-kv/attested-kv/policy/ratify/verifier"
)

// Run answers every input with a result for Ratify; here the subject is named by tag, which the
// verifier refuses before reading the registry.
func ExampleRun() {
	env := map[string]string{
		"RATIFY_VERIFIER_COMMAND": "VERIFY",
		"RATIFY_VERIFIER_SUBJECT": "registry.example/app:latest",
		"RATIFY_VERIFIER_VERSION": "1.0.0",
	}
	input := `{"config": {"name": "ratify-maa-verifier"}, "referenceDesc": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
		"artifactType": "application/vnd.attested-kv.maa-token.v1+jwt", "size": 935,
		"digest": "sha256:7fdcc83e157fd26924093ef0837ec7db853936754056cc9a3c1392865ee9921b"}}`
	res := verifier.Run(context.Background(), func(k string) string { return env[k] }, strings.NewReader(input))
	json.NewEncoder(os.Stdout).Encode(res)
	// Output:
	// {"isSuccess":false,"name":"ratify-maa-verifier","type":"ratify-maa-verifier","message":"RATIFY_VERIFIER_SUBJECT \"registry.example/app:latest\" is not a digest reference: name the image by digest, or keep Ratify's tag-to-digest mutation on (chart value provider.enableMutation)"}
}
