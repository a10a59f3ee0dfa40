package main

import (
	"context"
	"strings"
	"testing"
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
