package notationcfg

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/notaryproject/notation-go/dir"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
	"github.com/attested-kv/attested-kv/internal/testcert"
)

// Statements found in users' trust policies, as notation's documentation writes them.
const (
	otherScoped = `{
      "name": "wabbit-networks-images",
      "registryScopes": [ "registry.example/wabbit-networks/net-monitor" ],
      "signatureVerification": { "level": "strict", "override": { "revocation": "log" } },
      "trustStores": [ "ca:wabbit-networks" ],
      "trustedIdentities": [ "x509.subject: C=US, ST=WA, L=Seattle, O=wabbit-networks.io, OU=Finance, CN=SecureBuilder" ]
    }`
	otherScoped2  = `{"name":"acme-rockets","registryScopes":["registry.example/acme/rockets"],"signatureVerification":{"level":"audit"},"trustStores":["ca:acme","tsa:acme-tsa"],"trustedIdentities":["*"]}`
	otherWildcard = `{"name":"global-policy","registryScopes":["*"],"signatureVerification":{"level":"permissive"},"trustStores":["ca:acme"],"trustedIdentities":["*"]}`
	// An older version of our own statement: another identity and store.
	oursOld = `{"name":"attested-kv-demo","registryScopes":["*"],"signatureVerification":{"level":"strict"},"trustStores":["ca:attested-kv-old"],"trustedIdentities":["x509.subject: CN=old signer,O=attested-kv,ST=Azure,C=ZZ"]}`
)

func TestWriteTrust(t *testing.T) {
	root := testRoot(t)
	trust := Trust{
		PolicyName: "attested-kv-demo", StoreName: "attested-kv-demo", Scopes: []string{"*"},
		Roots: []*x509.Certificate{root}, Identities: []string{"x509.subject: CN=demo signer,O=attested-kv,ST=Azure,C=ZZ"},
	}
	oursJSON, err := json.Marshal(trustpolicy.TrustPolicy{
		Name: trust.PolicyName, RegistryScopes: trust.Scopes,
		SignatureVerification: trustpolicy.SignatureVerification{VerificationLevel: "strict"},
		TrustStores:           []string{"ca:" + trust.StoreName}, TrustedIdentities: trust.Identities,
	})
	if err != nil {
		t.Fatal(err)
	}
	ours := string(oursJSON)
	doc := func(statements ...string) string {
		b := []byte(`{"version": "1.0", "trustPolicies": [`)
		for i, s := range statements {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, s...)
		}
		return string(append(b, "]}\n"...))
	}

	tests := []struct {
		name     string
		existing string // "" for no file
		// want is the statements expected in the written file, in order.
		want []string
		// wantTop is the top-level member names expected in the written file, in order.
		wantTop []string
		// Otherwise the error expected, with the file left byte for byte as it was.
		wantErr                  error
		wantStatement, wantScope string
	}{
		{
			name:    "no file",
			want:    []string{ours},
			wantTop: []string{"version", "trustPolicies"},
		},
		{
			name:     "another registry scope is kept, ours appended",
			existing: doc(otherScoped),
			want:     []string{otherScoped, ours},
			wantTop:  []string{"version", "trustPolicies"},
		},
		{
			name:     "older version of ours replaced in place",
			existing: doc(otherScoped, oursOld, otherScoped2),
			want:     []string{otherScoped, ours, otherScoped2},
			wantTop:  []string{"version", "trustPolicies"},
		},
		{
			name:     "unknown top-level fields kept in order",
			existing: `{"$comment": "mine", "trustPolicies": [` + otherScoped2 + `], "version": "1.0", "x-extra": {"a": [1, 2]}}`,
			want:     []string{otherScoped2, ours},
			wantTop:  []string{"$comment", "trustPolicies", "version", "x-extra"},
		},
		{
			name:          "wildcard scope under another name refused",
			existing:      doc(otherScoped, otherWildcard),
			wantErr:       &ConflictError{},
			wantStatement: "global-policy", wantScope: "*",
		},
		{
			name:          "older ours kept beside another wildcard refused",
			existing:      doc(oursOld, otherWildcard),
			wantErr:       &ConflictError{},
			wantStatement: "global-policy", wantScope: "*",
		},
		{
			name:     "unsupported version refused",
			existing: `{"version": "2.0", "trustPolicies": [` + otherScoped + `]}`,
			wantErr:  &ConflictError{},
		},
		{name: "not JSON refused", existing: "{\"version\": \"1.0\", \"trustPolicies\": [\n", wantErr: ErrNotTrustPolicy},
		{name: "JSON array refused", existing: `[` + otherScoped + `]`, wantErr: ErrNotTrustPolicy},
		{name: "empty object refused", existing: `{}`, wantErr: ErrNotTrustPolicy},
		{name: "empty file refused", existing: " ", wantErr: ErrNotTrustPolicy},
		{name: "statement of the wrong type refused", existing: doc(`{"name": "x", "registryScopes": "*"}`), wantErr: ErrNotTrustPolicy},
		{name: "trailing data refused", existing: doc(otherScoped) + `{}`, wantErr: ErrNotTrustPolicy},
		{name: "keys that collide in encoding/json refused", existing: `{"version": "1.0", "trustPolicies": [], "TrustPolicies": [` + otherScoped + `]}`, wantErr: ErrNotTrustPolicy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "trustpolicy.json")
			if tt.existing != "" {
				if err := os.WriteFile(path, []byte(tt.existing), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			err := WriteTrust(dir, trust)
			if tt.wantErr != nil {
				checkRefused(t, err, tt.wantErr, tt.wantStatement, tt.wantScope)
				checkUnchanged(t, dir, path, tt.existing)
				return
			}
			if err != nil {
				t.Fatalf("WriteTrust: %v", err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := topLevelKeys(t, b); !slices.Equal(got, tt.wantTop) {
				t.Errorf("top-level members %q, want %q", got, tt.wantTop)
			}
			var got struct {
				TrustPolicies []json.RawMessage `json:"trustPolicies"`
			}
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if len(got.TrustPolicies) != len(tt.want) {
				t.Fatalf("%d statements, want %d:\n%s", len(got.TrustPolicies), len(tt.want), b)
			}
			for i, w := range tt.want {
				if g, w := compact(t, got.TrustPolicies[i]), compact(t, []byte(w)); !bytes.Equal(g, w) {
					t.Errorf("statement %d:\n got %s\nwant %s", i, g, w)
				}
			}
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("trust policy mode: %v, %v; want 0600", fi.Mode(), err)
			}
			pem, err := os.ReadFile(filepath.Join(dir, "truststore/x509/ca/attested-kv-demo/root-0.pem"))
			if err != nil || !bytes.Contains(pem, []byte("BEGIN CERTIFICATE")) {
				t.Errorf("trust store root: %q, %v", pem, err)
			}
			// notation's own verifier, which validates the document, accepts the result.
			if _, err := NewVerifier(path, dir); err != nil {
				t.Errorf("notation rejects the written trust policy: %v", err)
			}
		})
	}
}

// TestWriteTrustRemovesStaleRoots: a root dropped from Trust.Roots stops being trusted (notation
// trusts every file of a trust store), while files WriteTrust did not name are kept.
func TestWriteTrustRemovesStaleRoots(t *testing.T) {
	dir := t.TempDir()
	trust := Trust{PolicyName: "p", StoreName: "s", Scopes: []string{"*"}, Identities: []string{"*"},
		Roots: []*x509.Certificate{testRoot(t), testRoot(t), testRoot(t)}}
	if err := WriteTrust(dir, trust); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "truststore/x509/ca/s")
	users := []string{"user.pem", "root-01.pem", "root-3.pem.bak", "root-.pem"}
	for _, name := range users {
		if err := os.WriteFile(filepath.Join(store, name), []byte("user's"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rotated := testRoot(t)
	trust.Roots = []*x509.Certificate{rotated}
	if err := WriteTrust(dir, trust); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(store)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := append([]string{"root-0.pem"}, users...)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("trust store holds %v, want %v", names, want)
	}
	b, err := os.ReadFile(filepath.Join(store, "root-0.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if blk, _ := pem.Decode(b); blk == nil || !bytes.Equal(blk.Bytes, rotated.Raw) {
		t.Fatal("root-0.pem is not the rotated root")
	}
}

// TestWriteTrustRefusesSymlink checks that a trustpolicy.json that is a symlink, which notation
// itself refuses to read, is neither followed nor replaced.
func TestWriteTrustRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "policy.json")
	content := "{\"version\": \"1.0\", \"trustPolicies\": [" + otherScoped + "]}\n"
	if err := os.WriteFile(target, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "trustpolicy.json")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	err := WriteTrust(dir, Trust{PolicyName: "p", StoreName: "s", Scopes: []string{"*"}, Roots: []*x509.Certificate{testRoot(t)}, Identities: []string{"*"}})
	if !errors.Is(err, ErrNotTrustPolicy) {
		t.Fatalf("WriteTrust over a symlink: %v, want ErrNotTrustPolicy", err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink was replaced: %v, %v", fi.Mode(), err)
	}
	checkUnchanged(t, dir, target, content)
}

// TestNewVerifierLoadsAsNotation: NewVerifier (oras-attest verify's trust policy) loads a trust
// policy file exactly when notation's own loader (trustpolicy.LoadDocument, pointed at the same
// directory) does: a symbolic link or a directory is refused by both.
func TestNewVerifierLoadsAsNotation(t *testing.T) {
	content := "{\"version\": \"1.0\", \"trustPolicies\": [" + otherScoped + "]}\n"
	saved := dir.UserConfigDir
	t.Cleanup(func() { dir.UserConfigDir = saved })
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
		ok    bool
		// notRegular: the refusal is atomicfile.ErrNotRegular, saying notation refuses it too.
		notRegular bool
	}{
		{"regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}, true, false},
		{"symbolic link to a policy", func(t *testing.T, path string) {
			target := filepath.Join(t.TempDir(), "policy.json")
			if err := os.WriteFile(target, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}, false, true},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, false, true},
		{"missing", func(t *testing.T, path string) {}, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := t.TempDir()
			path := filepath.Join(cfg, "trustpolicy.json")
			tc.setup(t, path)
			_, err := NewVerifier(path, cfg)
			if (err == nil) != tc.ok {
				t.Fatalf("NewVerifier: %v, want ok=%v", err, tc.ok)
			}
			if tc.notRegular && (!errors.Is(err, atomicfile.ErrNotRegular) || !strings.Contains(err.Error(), "notation, too, loads only a regular file")) {
				t.Fatalf("NewVerifier: %v, want atomicfile.ErrNotRegular and notation named", err)
			}
			dir.UserConfigDir = cfg
			if _, nerr := trustpolicy.LoadDocument(); (nerr == nil) != tc.ok {
				t.Fatalf("notation's loader: %v, want ok=%v (NewVerifier: %v)", nerr, tc.ok, err)
			}
		})
	}
	// Beyond notation: a file larger than any trust policy is not read whole.
	cfg := t.TempDir()
	path := filepath.Join(cfg, "trustpolicy.json")
	if err := os.WriteFile(path, []byte(content+strings.Repeat(" ", maxTrustPolicyFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewVerifier(path, cfg); !errors.Is(err, atomicfile.ErrTooLarge) {
		t.Fatalf("NewVerifier of a %d-byte file: %v, want atomicfile.ErrTooLarge", maxTrustPolicyFile+len(content), err)
	}
}

func checkRefused(t *testing.T, err, want error, statement, scope string) {
	t.Helper()
	if err == nil {
		t.Fatal("WriteTrust succeeded, want a refusal")
	}
	t.Logf("error: %v", err)
	if want == ErrNotTrustPolicy {
		if !errors.Is(err, ErrNotTrustPolicy) {
			t.Fatalf("error %v, want ErrNotTrustPolicy", err)
		}
		if !bytes.Contains([]byte(err.Error()), []byte("trustpolicy.json")) {
			t.Errorf("error %q does not name the file", err)
		}
		return
	}
	var ce *ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v, want a *ConflictError", err)
	}
	if ce.Statement != statement || ce.Scope != scope || ce.Err == nil {
		t.Errorf("conflict with statement %q over scope %q (%v), want %q over %q", ce.Statement, ce.Scope, ce.Err, statement, scope)
	}
	for _, s := range []string{statement, "NOTATION_CONFIG", "trustpolicy.json"} {
		if !bytes.Contains([]byte(err.Error()), []byte(s)) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}

// checkUnchanged checks that path still holds exactly content and that no trust store was written.
func checkUnchanged(t *testing.T, dir, path, content string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != content {
		t.Errorf("file changed:\n got %q\nwant %q", b, content)
	}
	if _, err := os.Stat(filepath.Join(dir, "truststore")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a trust store was written despite the refusal: %v", err)
	}
}

func topLevelKeys(t *testing.T, b []byte) []string {
	t.Helper()
	members, err := objectMembers(b)
	if err != nil {
		t.Fatalf("written file: %v", err)
	}
	var keys []string
	for _, m := range members {
		keys = append(keys, m.key)
	}
	return keys
}

func compact(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// testRoot returns a self-signed CA certificate, as the trust store needs.
func testRoot(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "notationcfg test root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	return testcert.Issue(t, tmpl, nil, &key.PublicKey, key)
}

// FuzzMergeTrustPolicy checks that whatever an existing trustpolicy.json holds, the merge either
// refuses it or yields a document notation accepts with our statement in it exactly once.
func FuzzMergeTrustPolicy(f *testing.F) {
	f.Add([]byte(`{"version":"1.0","trustPolicies":[` + otherScoped + `]}`))
	f.Add([]byte(`{"version":"1.0","trustPolicies":[` + oursOld + `,` + otherScoped2 + `]}`))
	f.Add([]byte(`{"version":"1.0","trustPolicies":[` + otherWildcard + `]}`))
	f.Add([]byte(`{"Version":"1.0","trustpolicies":[],"x":null}`))
	f.Add([]byte(`not json`))
	ours := trustpolicy.TrustPolicy{
		Name: "attested-kv-demo", RegistryScopes: []string{"*"},
		SignatureVerification: trustpolicy.SignatureVerification{VerificationLevel: "strict"},
		TrustStores:           []string{"ca:attested-kv-demo"}, TrustedIdentities: []string{"*"},
	}
	f.Fuzz(func(t *testing.T, existing []byte) {
		path := filepath.Join(t.TempDir(), "trustpolicy.json")
		if err := os.WriteFile(path, existing, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := mergeTrustPolicy(path, ours)
		if err != nil {
			return
		}
		var doc trustpolicy.Document
		if err := json.Unmarshal(out, &doc); err != nil {
			t.Fatalf("merged document is not JSON: %v", err)
		}
		if err := doc.Validate(); err != nil {
			t.Fatalf("merged document does not validate: %v", err)
		}
		n := 0
		for _, s := range doc.TrustPolicies {
			if s.Name == ours.Name {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d statements named %q, want 1", n, ours.Name)
		}
	})
}

// TestWriteTrustConcurrent: writers of the same configuration at once (two applies) each keep
// their statement and signing key: without the directory's lock, each wrote back its own merge
// and one was lost.
func TestWriteTrustConcurrent(t *testing.T) {
	const writers = 8
	dir := t.TempDir()
	root := testRoot(t)
	var wg sync.WaitGroup
	errs := make(chan error, 2*writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("p%d", i)
			errs <- WriteTrust(dir, Trust{PolicyName: name, StoreName: "s" + name, Scopes: []string{"registry.example/app" + name}, Roots: []*x509.Certificate{root}, Identities: []string{"*"}})
			errs <- WriteSigningKey(dir, SigningKey{Name: "k" + name, KeyID: "https://v.vault.azure.net/keys/k" + name, Plugin: "attested-kv"})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	policy, err := os.ReadFile(filepath.Join(dir, "trustpolicy.json"))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := os.ReadFile(filepath.Join(dir, "signingkeys.json"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range writers {
		if !strings.Contains(string(policy), fmt.Sprintf(`"p%d"`, i)) {
			t.Errorf("statement p%d lost:\n%s", i, policy)
		}
		if !strings.Contains(string(keys), fmt.Sprintf(`"kp%d"`, i)) {
			t.Errorf("signing key kp%d lost:\n%s", i, keys)
		}
	}
}

// TestWritersTakeTheLock: WriteTrust and WriteSigningKey wait for the configuration directory's
// lock (atomicfile.LockDir), which another writer holds here, and write once it is released; each
// creates the directory when it does not exist yet (a user's first configuration).
func TestWritersTakeTheLock(t *testing.T) {
	root := testRoot(t)
	writers := map[string]func(dir string) error{
		"WriteTrust": func(dir string) error {
			return WriteTrust(dir, Trust{PolicyName: "p", StoreName: "s", Scopes: []string{"registry.example/app"}, Roots: []*x509.Certificate{root}, Identities: []string{"*"}})
		},
		"WriteSigningKey": func(dir string) error {
			return WriteSigningKey(dir, SigningKey{Name: "k", KeyID: "https://v.vault.azure.net/keys/k", Plugin: "attested-kv"})
		},
	}
	for name, write := range writers {
		t.Run(name, func(t *testing.T) {
			if err := write(filepath.Join(t.TempDir(), "not", "yet")); err != nil {
				t.Fatalf("into a directory that does not exist yet: %v", err)
			}
			dir := t.TempDir()
			release, err := atomicfile.LockDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- write(dir) }()
			select {
			case err := <-done:
				release()
				t.Fatalf("%s returned (%v) while another writer held the directory's lock", name, err)
			case <-time.After(300 * time.Millisecond):
			}
			release()
			if err := <-done; err != nil {
				t.Fatalf("%s after the lock was released: %v", name, err)
			}
		})
	}
}
