package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nregistry "github.com/notaryproject/notation-go/registry"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/imageverify"
	"github.com/attested-kv/attested-kv/internal/notationcfg"
	"github.com/attested-kv/attested-kv/internal/referrer"
)

// TestAzureCredential: an Entra ID credential is made for Azure container registries only, so
// that no other registry is ever sent an ACR token exchange.
func TestAzureCredential(t *testing.T) {
	tests := []struct {
		ref   string
		azure bool
	}{
		{"myreg.azurecr.io/app@sha256:" + zeros, true},
		{"MyReg.AzureCR.io:443/app@sha256:" + zeros, true},
		{"localhost:5000/app@sha256:" + zeros, false},
		{"myreg.azurecr.io.example.com/app@sha256:" + zeros, false},
		{"ghcr.io/azurecr.io/app@sha256:" + zeros, false},
	}
	for _, tt := range tests {
		cred, err := azureCredential(tt.ref)
		if err != nil || (cred != nil) != tt.azure {
			t.Errorf("azureCredential(%q) = %v, %v; want a credential: %v", tt.ref, cred, err, tt.azure)
		}
	}
}

const zeros = "0000000000000000000000000000000000000000000000000000000000000000"

// TestVerifyConfigErrors: a verify configuration the verifier cannot use is a usage error (exit 2)
// before any registry is read, and the error does not repeat a password given in a URL.
func TestVerifyConfigErrors(t *testing.T) {
	img := "localhost:1/app@sha256:" + zeros
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"attestation URL over http", []string{"--attestation-url", "http://x.weu.attest.azure.net"}, "https://"},
		{"attestation URL with a path", []string{"--attestation-url", "https://x.weu.attest.azure.net/certs"}, "path"},
		{"attestation URL with a password", []string{"--attestation-url", "https://u:s3cret@x.weu.attest.azure.net"}, "user information"},
		{"malformed certificate pin", []string{"--attestation-url", "https://x.weu.attest.azure.net", "--signing-cert-sha256", "abc"}, "64 hex digits"},
		{"key id spelt otherwise than Key Vault writes it", []string{"--attestation-url", "https://x.weu.attest.azure.net", "--key-id", "https://v.vault.azure.net/keys/k/1/"}, `--key-id: binding: invalid input: key id "https://v.vault.azure.net/keys/k/1/" is another spelling of "https://v.vault.azure.net/keys/k/1"`},
		{"timeout of zero", []string{"--attestation-url", "https://x.weu.attest.azure.net", "--timeout", "0s"}, "--timeout 0s: want a duration above 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o, e strings.Builder
			args := append([]string{"verify", img, "--key-id", "https://v.vault.azure.net/keys/k/1"}, tt.args...)
			code := run(context.Background(), args, strings.NewReader(""), &o, &e)
			if code != 2 || !strings.Contains(e.String(), tt.want) || strings.Contains(e.String(), "s3cret") {
				t.Fatalf("exit %d, stderr %q; want 2 and an error mentioning %q", code, e.String(), tt.want)
			}
		})
	}
}

// TestTimeoutExplain: an error after the --timeout limit names it once, whether the client
// reported the context's cause or only "context deadline exceeded"; other errors are unchanged.
func TestTimeoutExplain(t *testing.T) {
	tf := timeoutFlag{d: time.Millisecond}
	ctx, cancel := tf.context(context.Background())
	defer cancel()
	<-ctx.Done()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want string
	}{
		{"deadline exceeded", ctx, fmt.Errorf("pushing: %w", ctx.Err()), "pushing: context deadline exceeded: time limit reached (--timeout 1ms)"},
		{"cause reported", ctx, fmt.Errorf("resolving: %w", context.Cause(ctx)), "resolving: time limit reached (--timeout 1ms)"},
		{"before the limit", context.Background(), errors.New("resolving: not found"), "resolving: not found"},
	}
	for _, tc := range tests {
		if got := tf.explain(tc.ctx, tc.err).Error(); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestVerifyImage: oras-attest verify passes an image signed from an attested machine, and applies
// each setting that tightens the verification: --max-age, --signing-cert-sha256 and --rules.
// Mutants killed: verifyImage passing imageverify the default max age, no pins, or the baseline
// instead of the rules loaded.
func TestVerifyImage(t *testing.T) {
	chain := attesttest.New(t, attesttest.WithSecureBoot()) // the baseline passes
	repo, name := attesttest.Registry(t)
	signer, other := attesttest.Signer(t, "attested signer"), attesttest.Signer(t, "another signer")
	const keyID = "https://kv.vault.azure.net/keys/signer/0123456789abcdef0123456789abcdef"
	cfg := t.TempDir()
	certs, _ := signer.CertificateChain()
	if err := notationcfg.WriteTrust(cfg, notationcfg.Trust{PolicyName: "test", StoreName: "test", Scopes: []string{"*"}, Roots: certs, Identities: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwks, chain.Emulator.JWKS(), 0o600); err != nil {
		t.Fatal(err)
	}
	// A rule file the token fails, where the baseline passes it.
	strict := writeRules(t, "no-secure-boot: claims[\"secureboot\"] == false\n")
	fingerprint := func(c []byte) string { s := sha256.Sum256(c); return hex.EncodeToString(s[:]) }
	otherCerts, _ := other.CertificateChain()

	// Signed two minutes after its token was issued.
	img := attesttest.PushImage(t, repo, "verify image")
	b, err := binding.Compute(img.Digest.String(), keyID)
	if err != nil {
		t.Fatal(err)
	}
	tok := chain.Token(t, b)
	attesttest.SignImage(t, nregistry.NewRepository(repo), signer, img, tok, chain.URL, time.Now().Add(2*time.Minute))
	if _, err := referrer.Attach(context.Background(), repo, img, referrer.Token{Raw: tok, Issuer: chain.URL, IssuedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	args := []string{"verify", name + "@" + img.Digest.String(), "-o", "json", "--attestation-url", chain.URL, "--key-id", keyID, "--jwks", jwks,
		"--trust-policy", filepath.Join(cfg, "trustpolicy.json"), "--trust-store", cfg}
	for _, tc := range []struct {
		name   string
		extra  []string
		failed string // the check that fails, "" for a verified image
	}{
		{"signed from an attested machine", nil, ""},
		{"signed 2m after its token, --max-age 1m", []string{"--max-age", "1m"}, imageverify.CheckAge},
		{"the signing certificate pinned", []string{"--signing-cert-sha256", strings.ToUpper(fingerprint(certs[0].Raw))}, ""},
		{"another certificate pinned", []string{"--signing-cert-sha256", fingerprint(otherCerts[0].Raw)}, imageverify.CheckSignature},
		{"rules the token fails", []string{"--rules", strict}, imageverify.CheckRules},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(append(args, tc.extra...)...)
			var res imageverify.Result
			if err := json.Unmarshal([]byte(stdout), &res); err != nil {
				t.Fatalf("exit %d, stdout %q (%v), stderr %q", code, stdout, err, stderr)
			}
			if res.Passed != (tc.failed == "") || res.FailedCheck() != tc.failed || code != map[bool]int{true: 0, false: 1}[res.Passed] {
				t.Fatalf("exit %d, passed %v, failed check %q (%+v); want failed %q", code, res.Passed, res.FailedCheck(), res.Checks, tc.failed)
			}
		})
	}
}
