package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/attested-kv/attested-kv/internal/attesttest"
	"github.com/attested-kv/attested-kv/internal/binding"
	"github.com/attested-kv/attested-kv/internal/imageverify"
	"github.com/attested-kv/attested-kv/internal/referrer"
)

// The verifier is exercised at its process protocol: this test binary re-executes itself as the
// verifier (TestMain), with Ratify's environment and a JSON object on stdin, and reads the result
// JSON from stdout.

func TestMain(m *testing.M) {
	if os.Getenv("RATIFY_MAA_VERIFIER_AS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const keyID = "https://kv.vault.azure.net/keys/signer/0123456789abcdef0123456789abcdef"

func exe(t *testing.T, subject string, input any) Result {
	t.Helper()
	in, _ := json.Marshal(input)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "RATIFY_MAA_VERIFIER_AS_MAIN=1", "RATIFY_VERIFIER_COMMAND=VERIFY",
		"RATIFY_VERIFIER_SUBJECT="+subject, "RATIFY_VERIFIER_VERSION=1.0.0")
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("verifier process: %v (stderr %s)", err, stderr.String())
	}
	var res Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("stdout is not a result JSON: %v: %q", err, stdout.String())
	}
	return res
}

func TestVerifierProcess(t *testing.T) {
	chain := attesttest.New(t, attesttest.WithSecureBoot())
	r, name := attesttest.Registry(t)
	repo := imageverify.NewRepository(r)
	signer := attesttest.Signer(t, "attested signer")

	dir := t.TempDir()
	jwks := filepath.Join(dir, "jwks.json")
	os.WriteFile(jwks, chain.Emulator.JWKS(), 0o600)
	certs, _ := signer.CertificateChain()
	certDir := filepath.Join(dir, "certs")
	os.MkdirAll(certDir, 0o700)
	os.WriteFile(filepath.Join(certDir, "root.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certs[0].Raw}), 0o600)
	policy := &trustpolicy.Document{Version: "1.0", TrustPolicies: []trustpolicy.TrustPolicy{{
		Name: "attested", RegistryScopes: []string{"*"},
		SignatureVerification: trustpolicy.SignatureVerification{VerificationLevel: "strict"},
		TrustStores:           []string{"ca:certs"}, TrustedIdentities: []string{"*"},
	}}}
	cfg := Config{Name: "maa-token", Type: "maa-token", AttestationURL: chain.URL, KeyID: keyID, JWKSPath: jwks, TrustPolicyDoc: policy, VerificationCerts: []string{certDir}}
	input := func(c Config, ref ocispec.Descriptor) map[string]any {
		return map[string]any{"config": c, "storeConfig": map[string]any{"store": map[string]any{"name": "oras", "useHttp": true}}, "referenceDesc": ref}
	}
	signed := func(content string, nonceFor func(ocispec.Descriptor) string) (ocispec.Descriptor, ocispec.Descriptor) {
		img := attesttest.PushImage(t, r, content)
		tok := chain.Token(t, nonceFor(img))
		attesttest.SignImage(t, repo, signer, img, tok, chain.URL, time.Now())
		ref, err := referrer.Attach(context.Background(), r, img, referrer.Token{Raw: tok, Issuer: chain.URL, IssuedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		return img, ref
	}
	bound := func(d ocispec.Descriptor) string { b, _ := binding.Compute(d.Digest.String(), keyID); return b }

	img, ref := signed("good", bound)
	if res := exe(t, name+"@"+img.Digest.String(), input(cfg, ref)); !res.IsSuccess || res.Name != "maa-token" {
		t.Fatalf("good image refused: %+v", res)
	}
	pinned := cfg
	sum := sha256.Sum256(certs[0].Raw)
	pinned.SigningCertSHA256 = []string{strings.ToUpper(hex.EncodeToString(sum[:]))}
	if res := exe(t, name+"@"+img.Digest.String(), input(pinned, ref)); !res.IsSuccess {
		t.Fatalf("good image refused with its signing certificate pinned: %+v", res)
	}

	other, _ := signed("other", bound)
	bad, badRef := signed("bad", func(ocispec.Descriptor) string { return bound(other) })
	tests := []struct {
		name    string
		subject string
		input   map[string]any
		message string
	}{
		{"token bound to another image", name + "@" + bad.Digest.String(), input(cfg, badRef), `check "binding" failed`},
		{"referrer not named by the signature", name + "@" + img.Digest.String(), input(cfg, badRef), "is not the one a trusted signature names"},
		{"another expected key", name + "@" + img.Digest.String(), input(func() Config { c := cfg; c.KeyID = keyID + "0"; return c }(), ref), `check "binding" failed`},
		{"no trust policy", name + "@" + img.Digest.String(), input(func() Config { c := cfg; c.TrustPolicyDoc = nil; return c }(), ref), "trustPolicyDoc"},
		{"subject by tag", name + ":latest", input(cfg, ref), "not a digest reference"},
		{"signed by another certificate than the pinned one", name + "@" + img.Digest.String(), input(func() Config {
			c := cfg
			c.SigningCertSHA256 = []string{strings.Repeat("ab", 32)}
			return c
		}(), ref), "not a pinned signing certificate"},
		{"attestation URL over http", name + "@" + img.Digest.String(), input(func() Config { c := cfg; c.AttestationURL = "http://x.weu.attest.azure.net"; return c }(), ref), "attestationURL"},
		{"malformed pin", name + "@" + img.Digest.String(), input(func() Config { c := cfg; c.SigningCertSHA256 = []string{"abc"}; return c }(), ref), "signingCertSHA256"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := exe(t, tc.subject, tc.input)
			detail, _ := json.Marshal(res.Extensions) // the checks, with what each found
			if res.IsSuccess || !strings.Contains(res.Message+string(detail), tc.message) {
				t.Fatalf("got %+v, want a refusal containing %q", res, tc.message)
			}
		})
	}
}

// TestRegistryOptions: the verifier reads the registry with the store's authProvider, as Ratify's
// ORAS store does; a provider it cannot use is an error, not anonymous access.
func TestRegistryOptions(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("federated"), 0o600); err != nil {
		t.Fatal(err)
	}
	workloadEnv := map[string]string{"AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47", "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001", "AZURE_FEDERATED_TOKEN_FILE": tokenFile}
	noEnv := map[string]string{"AZURE_TENANT_ID": "", "AZURE_CLIENT_ID": "", "AZURE_FEDERATED_TOKEN_FILE": ""}
	tests := []struct {
		name     string
		provider AuthProvider
		useHTTP  bool
		env      map[string]string
		azure    bool
		err      string
	}{
		{name: "no provider: docker credentials", useHTTP: true},
		{name: "dockerConfig", provider: AuthProvider{Name: "dockerConfig"}},
		{name: "workload identity", provider: AuthProvider{Name: "azureWorkloadIdentity"}, env: workloadEnv, azure: true},
		{name: "workload identity with its client id", provider: AuthProvider{Name: "azureWorkloadIdentity", ClientID: "00000000-0000-0000-0000-000000000002"}, env: workloadEnv, azure: true},
		{name: "workload identity without its environment", provider: AuthProvider{Name: "azureWorkloadIdentity"}, env: noEnv, err: "azureWorkloadIdentity"},
		{name: "managed identity", provider: AuthProvider{Name: "azureManagedIdentity", ClientID: "00000000-0000-0000-0000-000000000003"}, azure: true},
		{name: "unsupported provider", provider: AuthProvider{Name: "awsEcrBasic"}, err: `"awsEcrBasic" is not supported`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var sc StoreConfig
			sc.Store.UseHTTP, sc.Store.AuthProvider = tt.useHTTP, tt.provider
			o, err := registryOptions(sc)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (o.AzureCredential != nil) != tt.azure || o.PlainHTTP != tt.useHTTP || o.Username != "" {
				t.Fatalf("options %+v: want an Azure credential %v, plain HTTP %v", o, tt.azure, tt.useHTTP)
			}
		})
	}
}
