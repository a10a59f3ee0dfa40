package keyvault

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
)

// testCA is a CA issuer valid from notBefore to notAfter.
func testCA(t testing.TB, notBefore, notAfter time.Time) Issuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "local CA"},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return Issuer{Cert: c, Key: key, Chain: []*x509.Certificate{c}}
}

// newFromState is New as newVaultWith calls it, with the state file path, returning New's error.
func newFromState(path string) (*Server, error) {
	return New(Config{
		Authority: "https://login.example", TenantID: "tenant",
		ValidateToken: func(raw string) (string, error) {
			if raw != "good" {
				return "", errors.New("bad token")
			}
			return "app", nil
		},
		StatePath: path,
	})
}

// versionOf is the version at the end of a key bundle's kid.
func versionOf(t testing.TB, bundle map[string]any) string {
	t.Helper()
	key, _ := bundle["key"].(map[string]any)
	kid, _ := key["kid"].(string)
	i := strings.LastIndex(kid, "/")
	if i < 0 {
		t.Fatalf("no kid in %v", bundle)
	}
	return kid[i+1:]
}

// TestStatePersists: a vault with a state file keeps its keys and certificates across a restart
// (a second Server on the same file): every key type, every version, attributes and key_ops as
// created or updated, the managed flag, certificates self-issued and CA-issued with their chain
// and policy; the second vault answers every read as the first did, signs with the same private
// keys, and refuses what the first refused. The file is 0600, and a change made by the second is
// in the file a third reads.
func TestStatePersists(t *testing.T) {
	const v = "?api-version=7.5"
	start := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	clk := &clock{now: start}
	ca := testCA(t, start.AddDate(-1, 0, 0), start.AddDate(2, 0, 0))
	path := filepath.Join(t.TempDir(), "vault.json")
	cfg := Config{Now: clk.Now, Issuers: map[string]Issuer{"LocalCA": ca}, PendingPolls: 2, StatePath: path}
	_, a := newVaultWith(t, cfg)

	versions := map[string][]string{} // key name -> versions, oldest first
	createKey := func(name string, body map[string]any) {
		t.Helper()
		rec, out := call(t, a, "POST", "/keys/"+name+"/create"+v, "good", body)
		if rec.Code != 200 {
			t.Fatalf("create key %s: %d %s", name, rec.Code, rec.Body.String())
		}
		versions[name] = append(versions[name], versionOf(t, out))
	}
	hour := int64(3600)
	createKey("Rsa", map[string]any{"kty": "RSA", "key_size": 2048})
	clk.set(start.Add(time.Minute))
	createKey("Rsa", map[string]any{"kty": "RSA", "key_size": 3072})
	createKey("hsm", map[string]any{"kty": "RSA-HSM", "key_ops": []string{"sign"},
		"attributes": map[string]any{"nbf": start.Unix() - hour, "exp": start.Unix() + 24*hour}})
	createKey("ec256", map[string]any{"kty": "EC", "crv": "P-256"})
	createKey("ec384", map[string]any{"kty": "EC", "crv": "P-384", "key_ops": []string{"verify"}})
	createKey("ec521", map[string]any{"kty": "EC-HSM", "crv": "P-521"})
	createKey("noops", map[string]any{"kty": "EC", "key_ops": []string{}})
	// The first version of Rsa is disabled and loses encrypt and decrypt.
	clk.set(start.Add(2 * time.Minute))
	if rec, _ := call(t, a, "PATCH", "/keys/Rsa/"+versions["Rsa"][0]+v, "good", map[string]any{
		"attributes": map[string]any{"enabled": false}, "key_ops": []string{"sign", "verify"},
	}); rec.Code != 200 {
		t.Fatalf("update: %d %s", rec.Code, rec.Body.String())
	}
	policy := func(kty, issuer string) map[string]any {
		return map[string]any{"policy": map[string]any{
			"key_props": map[string]any{"kty": kty, "exportable": false}, "issuer": map[string]any{"name": issuer},
			"secret_props": map[string]any{"contentType": "application/x-pem-file"},
			"x509_props":   map[string]any{"subject": "CN=leaf, O=o, C=ZZ", "ekus": []string{"1.3.6.1.5.5.7.3.3"}, "key_usage": []string{"digitalSignature"}, "validity_months": 12},
		}}
	}
	for _, c := range []struct{ name, kty, issuer string }{{"self", "RSA", "Self"}, {"issued", "EC", "LocalCA"}, {"self", "EC", "Self"}} {
		if rec, _ := call(t, a, "POST", "/certificates/"+c.name+"/create"+v, "good", policy(c.kty, c.issuer)); rec.Code != 202 {
			t.Fatalf("create certificate %s: %d %s", c.name, rec.Code, rec.Body.String())
		}
		_, key := call(t, a, "GET", "/keys/"+c.name+v, "good", nil)
		versions[c.name] = append(versions[c.name], versionOf(t, key))
	}
	if _, op := call(t, a, "GET", "/certificates/self/pending"+v, "good", nil); op["status"] != "inProgress" {
		t.Fatalf("pending operation %v before the restart", op["status"])
	}

	var reads []string
	for name, vs := range versions {
		reads = append(reads, "/keys/"+name+v, "/keys/"+strings.ToUpper(name)+v)
		for _, ver := range vs {
			reads = append(reads, "/keys/"+name+"/"+ver+v)
		}
	}
	for _, name := range []string{"self", "issued"} {
		reads = append(reads, "/certificates/"+name+v, "/secrets/"+name+v)
		for _, ver := range versions[name] {
			reads = append(reads, "/certificates/"+name+"/"+ver+v, "/secrets/"+name+"/"+ver+v)
		}
	}
	before := map[string]string{}
	for _, p := range reads {
		rec, _ := call(t, a, "GET", p, "good", nil)
		if rec.Code != 200 {
			t.Fatalf("GET %s: %d %s", p, rec.Code, rec.Body.String())
		}
		before[p] = rec.Body.String()
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v, mode %v; want 0600", err, fi.Mode())
	}

	// The restart: a second vault on the same file answers every read as the first did.
	_, b := newVaultWith(t, cfg)
	for _, p := range reads {
		rec, _ := call(t, b, "GET", p, "good", nil)
		if got := rec.Body.String(); rec.Code != 200 || got != before[p] {
			t.Errorf("GET %s after the restart: %d\n%s\nwant\n%s", p, rec.Code, got, before[p])
		}
	}
	// The same private keys: what one signs, the other verifies.
	d32 := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	for _, c := range []struct {
		key, alg string
		signer   http.Handler
		verifier http.Handler
	}{
		{"Rsa", "PS256", b, a}, {"ec256", "ES256", a, b}, {"self", "ES256", b, a}, {"issued", "ES256", b, a}, {"ec521", "ES512", b, a},
	} {
		digest := d32
		if c.alg == "ES512" {
			digest = base64.RawURLEncoding.EncodeToString(make([]byte, 64))
		}
		rec, sig := call(t, c.signer, "POST", "/keys/"+c.key+"/sign"+v, "good", map[string]any{"alg": c.alg, "value": digest})
		if rec.Code != 200 {
			t.Fatalf("sign with %s: %d %s", c.key, rec.Code, rec.Body.String())
		}
		if _, ok := call(t, c.verifier, "POST", "/keys/"+c.key+"/verify"+v, "good", map[string]any{"alg": c.alg, "digest": digest, "value": sig["value"]}); ok["value"] != true {
			t.Errorf("%s: the signature of one vault does not verify in the other: %v", c.key, ok)
		}
	}
	// What the first refused, the second refuses: the disabled version, a key without sign.
	for _, c := range []struct{ path, inner string }{
		{"/keys/Rsa/" + versions["Rsa"][0] + "/sign", "KeyDisabled"},
		{"/keys/ec384/sign", "KeyOperationForbidden"},
		{"/keys/noops/sign", "KeyOperationForbidden"},
	} {
		rec, out := call(t, b, "POST", c.path+v, "good", map[string]any{"alg": "PS256", "value": d32})
		if rec.Code != 403 || innerCode(out) != c.inner {
			t.Errorf("%s after the restart: %d %q, want 403 %s", c.path, rec.Code, innerCode(out), c.inner)
		}
	}
	// A certificate read from the file has its operation completed.
	if _, op := call(t, b, "GET", "/certificates/self/pending"+v, "good", nil); op["status"] != "completed" {
		t.Errorf("pending operation %v after the restart, want completed", op["status"])
	}

	// A change the second vault makes is in the file a third vault reads.
	if rec, _ := call(t, b, "POST", "/keys/later/create"+v, "good", map[string]any{"kty": "EC"}); rec.Code != 200 {
		t.Fatalf("create after the restart: %d", rec.Code)
	}
	_, c := newVaultWith(t, cfg)
	for _, p := range append(reads, "/keys/later"+v) {
		if rec, _ := call(t, c, "GET", p, "good", nil); rec.Code != 200 {
			t.Errorf("GET %s after a second restart: %d", p, rec.Code)
		}
	}
}

// stateOf is the state file of a vault with one EC key and one EC certificate, for tests to
// spoil.
func stateOf(t testing.TB) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vault.json")
	_, h := newVaultWith(t, Config{StatePath: path})
	const v = "?api-version=7.5"
	if rec, _ := call(t, h, "POST", "/keys/k/create"+v, "good", map[string]any{"kty": "EC"}); rec.Code != 200 {
		t.Fatalf("create key: %d", rec.Code)
	}
	if rec, _ := call(t, h, "POST", "/certificates/c/create"+v, "good", certBody(map[string]any{"kty": "EC"}, map[string]any{"subject": "CN=c"})); rec.Code != 202 {
		t.Fatalf("create certificate: %d", rec.Code)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStateFileRefused: New refuses, naming the file, a state file that does not parse or holds
// what the vault never writes, and one that others may read or write, that another user owns
// (checked as root only) or that is a symbolic link, and leaves it as it is; a missing file is an
// empty vault.
func TestStateFileRefused(t *testing.T) {
	good := stateOf(t)
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	keyVersion0 := func(m map[string]any, name string) map[string]any {
		for _, k := range m["keys"].([]any) {
			if k := k.(map[string]any); k["name"] == name {
				return k["versions"].([]any)[0].(map[string]any)
			}
		}
		t.Fatalf("no key %s", name)
		return nil
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherCert := testCA(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)).Cert
	otherPKCS8, _ := x509.MarshalPKCS8PrivateKey(otherKey)
	tests := []struct {
		name string
		data []byte
		mode os.FileMode
		want string // in the error
	}{
		{"not JSON", []byte("{"), 0o600, "not a state file"},
		{"truncated", good[:len(good)/2], 0o600, "not a state file"},
		{"empty", nil, 0o600, "not a state file"},
		{"data after the object", append(append([]byte{}, good...), "{}"...), 0o600, "not a state file"},
		{"another version", edit(func(m map[string]any) { m["version"] = 2 }), 0o600, "state version 2"},
		{"no version", edit(func(m map[string]any) { delete(m, "version") }), 0o600, "state version 0"},
		{"unknown field", edit(func(m map[string]any) { m["secrets"] = []any{} }), 0o600, "unknown field"},
		{"unknown field in a key version", edit(func(m map[string]any) { keyVersion0(m, "k")["tags"] = map[string]any{} }), 0o600, "unknown field"},
		{"private key not PKCS#8", edit(func(m map[string]any) { keyVersion0(m, "k")["pkcs8"] = "AAAA" }), 0o600, "private key"},
		{"EC key of kty RSA", edit(func(m map[string]any) { keyVersion0(m, "k")["kty"] = "RSA" }), 0o600, `kty "RSA"`},
		{"key_ops the key type refuses", edit(func(m map[string]any) { keyVersion0(m, "k")["key_ops"] = []string{"wrapKey"} }), 0o600, "Unsupported key operation"},
		{"nbf after exp", edit(func(m map[string]any) { kv := keyVersion0(m, "k"); kv["nbf"], kv["exp"] = 10, 5 }), 0o600, "nbf"},
		{"bad key name", edit(func(m map[string]any) { m["keys"].([]any)[0].(map[string]any)["name"] = "a/b" }), 0o600, "not a Key Vault name"},
		{"key twice", edit(func(m map[string]any) { m["keys"] = append(m["keys"].([]any), m["keys"].([]any)[0]) }), 0o600, "appears twice"},
		{"certificate not of its key", edit(func(m map[string]any) {
			keyVersion0(m, "c")["pkcs8"] = base64.StdEncoding.EncodeToString(otherPKCS8)
		}), 0o600, "not of its key"},
		{"certificate chain not DER", edit(func(m map[string]any) {
			m["certificates"].([]any)[0].(map[string]any)["versions"].([]any)[0].(map[string]any)["chain"] = []string{"AAAA"}
		}), 0o600, "chain[0]"},
		{"certificate of another key", edit(func(m map[string]any) {
			m["certificates"].([]any)[0].(map[string]any)["versions"].([]any)[0].(map[string]any)["chain"] = [][]byte{otherCert.Raw}
		}), 0o600, "not of its key"},
		{"certificate without a key", edit(func(m map[string]any) {
			m["certificates"].([]any)[0].(map[string]any)["name"] = "nokey"
		}), 0o600, "no key of its name"},
		{"readable by others", good, 0o644, "mode 0644"},
		{"readable by the group", good, 0o640, "mode 0640"},
		{"writable by the group", good, 0o620, "mode 0620"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vault.json")
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := newFromState(path)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v; want an error naming %s and saying %q", err, path, tc.want)
			}
			// What the file is (its mode) and what it holds are told apart, for the hint.
			if want := map[bool]error{true: ErrStateInvalid, false: ErrStateAccess}[tc.mode == 0o600]; !errors.Is(err, want) {
				t.Fatalf("New: %v, want it to be %v", err, want)
			}
			if b, _ := os.ReadFile(path); !bytes.Equal(b, tc.data) {
				t.Error("the refused file was changed")
			}
		})
	}
	t.Run("symbolic link", func(t *testing.T) {
		dir := t.TempDir()
		target, link := filepath.Join(dir, "target.json"), filepath.Join(dir, "vault.json")
		if err := os.WriteFile(target, good, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		if _, err := newFromState(link); err == nil || !strings.Contains(err.Error(), "symbolic link") || !errors.Is(err, ErrStateAccess) {
			t.Fatalf("New: %v; want the symbolic link refused", err)
		}
	})
	t.Run("another user's", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("only root can give a file to another user")
		}
		path := filepath.Join(t.TempDir(), "vault.json")
		if err := os.WriteFile(path, good, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := newFromState(path); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Fatalf("New: %v; want the file of another user refused", err)
		}
	})
	t.Run("the good file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "vault.json")
		if err := os.WriteFile(path, good, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := newFromState(path); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "vault.json")
		_, h := newVaultWith(t, Config{StatePath: path})
		if rec, _ := call(t, h, "GET", "/keys/k?api-version=7.5", "good", nil); rec.Code != 404 {
			t.Fatalf("GET of a key in a new vault: %d", rec.Code)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a read wrote the state file: %v", err)
		}
	})
}

// TestStateWriteFailure: a change the vault cannot write to its state file is answered 500 and
// undone, never reported done: the key, version, update or certificate is not there afterwards
// and the file is unchanged; once the file can be written again, changes are kept. The write
// fails in two ways: the directory is read-only (skipped as root, who writes there anyway), or
// the file's name is taken by a directory while the file is set aside (the rename fails, for root
// too).
func TestStateWriteFailure(t *testing.T) {
	for _, way := range []struct {
		name string
		// block makes writes to path in dir fail; unblock undoes it.
		block, unblock func(t *testing.T, dir, path string)
	}{
		{"read-only directory",
			func(t *testing.T, dir, _ string) {
				if os.Geteuid() == 0 {
					t.Skip("root writes to a read-only directory")
				}
				if err := os.Chmod(dir, 0o500); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.Chmod(dir, 0o700) })
			},
			func(t *testing.T, dir, _ string) {
				if err := os.Chmod(dir, 0o700); err != nil {
					t.Fatal(err)
				}
			}},
		{"name taken by a directory",
			func(t *testing.T, _, path string) {
				if err := os.Rename(path, path+".aside"); err != nil {
					t.Fatal(err)
				}
				if err := os.MkdirAll(filepath.Join(path, "x"), 0o700); err != nil {
					t.Fatal(err)
				}
			},
			func(t *testing.T, _, path string) {
				if err := os.RemoveAll(path); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(path+".aside", path); err != nil {
					t.Fatal(err)
				}
			}},
	} {
		t.Run(way.name, func(t *testing.T) {
			const v = "?api-version=7.5"
			dir := filepath.Join(t.TempDir(), "state")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "vault.json")
			_, h := newVaultWith(t, Config{StatePath: path})
			rec, out := call(t, h, "POST", "/keys/k1/create"+v, "good", map[string]any{"kty": "EC"})
			if rec.Code != 200 {
				t.Fatalf("create: %d", rec.Code)
			}
			k1 := versionOf(t, out)
			written, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			way.block(t, dir, path)
			for _, c := range []struct {
				name, method, path string
				body               any
			}{
				{"create a key", "POST", "/keys/k2/create", map[string]any{"kty": "EC"}},
				{"create a version", "POST", "/keys/k1/create", map[string]any{"kty": "EC"}},
				{"update a key", "PATCH", "/keys/k1/" + k1, map[string]any{"attributes": map[string]any{"enabled": false}}},
				{"create a certificate", "POST", "/certificates/c/create", certBody(map[string]any{"kty": "EC"}, map[string]any{"subject": "CN=c"})},
				{"create a certificate of an existing key", "POST", "/certificates/k1/create", certBody(map[string]any{"kty": "EC"}, map[string]any{"subject": "CN=c"})},
			} {
				rec, out := call(t, h, c.method, c.path+v, "good", c.body)
				if rec.Code != 500 || errCode(out) != "InternalError" || !strings.Contains(rec.Body.String(), "undone") {
					t.Errorf("%s with the state file not writable: %d %s, want 500 InternalError", c.name, rec.Code, rec.Body.String())
				}
			}
			for _, c := range []struct {
				path   string
				status int
			}{{"/keys/k2", 404}, {"/certificates/c", 404}, {"/keys/c", 404}, {"/certificates/k1", 404}, {"/keys/k1", 200}} {
				if rec, _ := call(t, h, "GET", c.path+v, "good", nil); rec.Code != c.status {
					t.Errorf("GET %s after the failed changes: %d, want %d", c.path, rec.Code, c.status)
				}
			}
			_, key := call(t, h, "GET", "/keys/k1"+v, "good", nil)
			if got := versionOf(t, key); got != k1 || key["attributes"].(map[string]any)["enabled"] != true {
				t.Errorf("k1 after the failed changes: version %s (want %s), attributes %v", got, k1, key["attributes"])
			}
			way.unblock(t, dir, path)
			if b, _ := os.ReadFile(path); !bytes.Equal(b, written) {
				t.Error("the state file changed")
			}

			if rec, _ := call(t, h, "POST", "/keys/k2/create"+v, "good", map[string]any{"kty": "EC"}); rec.Code != 200 {
				t.Fatalf("create once writable: %d", rec.Code)
			}
			_, again := newVaultWith(t, Config{StatePath: path})
			for _, p := range []string{"/keys/k1", "/keys/k2"} {
				if rec, _ := call(t, again, "GET", p+v, "good", nil); rec.Code != 200 {
					t.Errorf("GET %s from the file: %d", p, rec.Code)
				}
			}
		})
	}
}

// FuzzParseState: the state file parser never panics, and what it accepts it writes back as a
// file it reads to the same state (the same file again).
func FuzzParseState(f *testing.F) {
	f.Add(stateOf(f))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"keys":[],"certificates":[]}`))
	f.Add([]byte(`{"version":1,"keys":[{"name":"k","versions":[]}]}`))
	f.Add([]byte(`{"version":1,"keys":[{"name":"k","versions":[{"version":"v","kty":"EC","pkcs8":"","key_ops":null}]}]}`))
	f.Add([]byte(`{"version":1,"certificates":[{"name":"c","versions":[{"version":"v","chain":[],"policy":{},"issuer":"Self"}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, certs, err := parseState(data)
		if err != nil {
			return
		}
		b, err := encodeState(keys, certs)
		if err != nil {
			t.Fatalf("accepted state not written: %v", err)
		}
		keys2, certs2, err := parseState(b)
		if err != nil {
			t.Fatalf("written state not read: %v\n%s", err, b)
		}
		b2, err := encodeState(keys2, certs2)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("state not stable: %v\n%s\n%s", err, b, b2)
		}
	})
}

// TestStateWriteFailsAfterRename: a write that fails after its rename (the directory's sync) has
// put the change in the file already; the vault, which answers 500 and undoes the change, writes
// the undone state again, so a restart does not bring the change back. When that write fails too,
// the next change written heals the file.
func TestStateWriteFailsAfterRename(t *testing.T) {
	const v = "?api-version=7.5"
	for _, c := range []struct {
		name string
		// failures is how many writes after the first change fail once the file is written.
		failures int
	}{
		{"rewrite succeeds", 1},
		{"rewrite fails too", 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vault.json")
			_, h := newVaultWith(t, Config{StatePath: path})
			if rec, _ := call(t, h, "POST", "/keys/k1/create"+v, "good", map[string]any{"kty": "EC"}); rec.Code != 200 {
				t.Fatalf("create k1: %d", rec.Code)
			}
			// The first write fails after its rename (the change is in the file); a second
			// failure is one before its rename (the file is left as it was).
			left := c.failures
			writeState = func(p string, data []byte, perm os.FileMode) error {
				switch left {
				case 0:
					return atomicfile.Write(p, data, perm)
				case c.failures:
					left--
					if err := atomicfile.Write(p, data, perm); err != nil {
						return err
					}
					return errors.New("sync of the directory failed")
				default:
					left--
					return errors.New("disk full")
				}
			}
			t.Cleanup(func() { writeState = atomicfile.Write })
			if rec, _ := call(t, h, "POST", "/keys/k2/create"+v, "good", map[string]any{"kty": "EC"}); rec.Code != 500 {
				t.Fatalf("create k2 with the write failing: %d, want 500", rec.Code)
			}
			if c.failures == 1 {
				// Restarted now, the vault has not got the change it answered 500 for.
				_, now := newVaultWith(t, Config{StatePath: path})
				if rec, _ := call(t, now, "GET", "/keys/k2"+v, "good", nil); rec.Code != 404 {
					t.Fatalf("after a restart the change answered 500 is back: GET k2 %d", rec.Code)
				}
			}
			if rec, _ := call(t, h, "POST", "/keys/k3/create"+v, "good", map[string]any{"kty": "EC"}); rec.Code != 200 {
				t.Fatalf("a later change: %d, want 200", rec.Code)
			}
			_, h2 := newVaultWith(t, Config{StatePath: path})
			if rec, _ := call(t, h2, "GET", "/keys/k2"+v, "good", nil); rec.Code != 404 {
				t.Fatalf("after a restart the change answered 500 is back: GET k2 %d", rec.Code)
			}
			if rec, _ := call(t, h2, "GET", "/keys/k1"+v, "good", nil); rec.Code != 200 {
				t.Fatalf("after a restart k1: %d", rec.Code)
			}
		})
	}
}
