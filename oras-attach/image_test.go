package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
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
