package gate

import (
	"testing"
)

// FuzzTargetDigest feeds arbitrary Notary payloads (notation passes what it got from the user's
// command line and the registry) to the payload decoder.
func FuzzTargetDigest(f *testing.F) {
	f.Add([]byte(`{"targetArtifact":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","size":1}}`))
	f.Add([]byte(`{"targetArtifact":{"digest":"sha256:"}}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		d, err := targetDigest(payload)
		if err == nil && (len(d) < len("sha256:")+64) {
			t.Fatalf("accepted digest %q", d)
		}
	})
}

// FuzzParseConfig feeds arbitrary plugin config values: a config either parses into sane values
// or is refused, never half-applied.
func FuzzParseConfig(f *testing.F) {
	f.Add("https://x.attest.azure.net", "5m", "")
	f.Add("http://x", "-1s", "https://tsa")
	f.Fuzz(func(t *testing.T, url, age, tsa string) {
		c, err := ParseConfig(map[string]string{KeyAttestationURL: url, KeyMaxTokenAge: age, KeyTimestampURL: tsa})
		if err != nil {
			return
		}
		if c.MaxTokenAge <= 0 || c.MaxTokenAge > MaxMaxTokenAge || c.AttestationURL == "" || tsa != "" {
			t.Fatalf("accepted %+v", c)
		}
	})
}
