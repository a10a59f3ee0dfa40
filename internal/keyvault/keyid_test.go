package keyvault

import (
	"errors"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/attested-kv/attested-kv/internal/binding"
)

func TestParseKeyID(t *testing.T) {
	tests := []struct {
		in                      string
		vault, kind, name, ver  string
		hsm, loopback, wantFail bool
	}{
		{in: "https://v1.vault.azure.net/keys/sign/0123456789abcdef0123456789abcdef", vault: "https://v1.vault.azure.net", kind: "keys", name: "sign", ver: "0123456789abcdef0123456789abcdef"},
		{in: "https://v1.vault.azure.net/keys/sign", vault: "https://v1.vault.azure.net", kind: "keys", name: "sign"},
		{in: "https://v1.vault.azure.net/keys/sign/", vault: "https://v1.vault.azure.net", kind: "keys", name: "sign"},
		{in: "https://v1.vault.azure.net/certificates/app-cert/abc", vault: "https://v1.vault.azure.net", kind: "certificates", name: "app-cert", ver: "abc"},
		{in: "https://h.managedhsm.azure.net/keys/k", vault: "https://h.managedhsm.azure.net", kind: "keys", name: "k", hsm: true},
		{in: "https://127.0.0.1:8443/keys/k/1", vault: "https://127.0.0.1:8443", kind: "keys", name: "k", ver: "1", loopback: true},
		{in: "https://v1.vault.azure.net/keys/" + strings.Repeat("n", 127) + "/" + strings.Repeat("v", 64), vault: "https://v1.vault.azure.net", kind: "keys", name: strings.Repeat("n", 127), ver: strings.Repeat("v", 64)},
		{in: "https://v1.vault.azure.net/keys/" + strings.Repeat("n", 128), wantFail: true},
		{in: "https://v1.vault.azure.net/keys/k/" + strings.Repeat("v", 65), wantFail: true},
		{in: "https://v1.vault.azure.net/keys/k/v-1", wantFail: true},
		{in: "http://v1.vault.azure.net/keys/k", wantFail: true},
		{in: "https://v1.vault.azure.net/secrets/k", wantFail: true},
		{in: "https://v1.vault.azure.net/keys", wantFail: true},
		{in: "https://v1.vault.azure.net/keys/k/v/extra", wantFail: true},
		{in: "https://v1.vault.azure.net/keys/k_x", wantFail: true},
		{in: "https://v1.vault.azure.net/keys/k/v?x=1", wantFail: true},
		{in: "https://v1.vault.azure.net/keys/k?", wantFail: true},
		{in: "https://v1.vault.azure.net/keys/k/v?", wantFail: true},
		{in: "https://v1.vault.azure.net/keys/k#", wantFail: true},
		{in: "https://user@v1.vault.azure.net/keys/k", wantFail: true},
		{in: "https://v1.vault.azure.net/keys/../k", wantFail: true},
		{in: "https://v1.vault.azure.net/keys/k/v%2f1", wantFail: true},
		{in: "", wantFail: true},
	}
	for _, tc := range tests {
		id, err := ParseKeyID(tc.in)
		if tc.wantFail {
			if !errors.Is(err, ErrInvalidKeyID) {
				t.Errorf("ParseKeyID(%q) = %+v, %v; want ErrInvalidKeyID", tc.in, id, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseKeyID(%q): %v", tc.in, err)
			continue
		}
		if id.VaultURL != tc.vault || id.Kind != tc.kind || id.Name != tc.name || id.Version != tc.ver || id.ManagedHSM() != tc.hsm || id.Loopback() != tc.loopback || id.Raw != tc.in {
			t.Errorf("ParseKeyID(%q) = %+v", tc.in, id)
		}
	}
}

func FuzzParseKeyID(f *testing.F) {
	f.Add("https://v1.vault.azure.net/keys/sign/0123456789abcdef0123456789abcdef")
	f.Add("https://127.0.0.1:8443/certificates/c")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseKeyID(s)
		if err != nil {
			return
		}
		if id.Name == "" || (id.Kind != KindKeys && id.Kind != KindCertificates) || id.VaultURL == "" {
			t.Fatalf("accepted %q as %+v", s, id)
		}
	})
}

// FuzzKeyIDSpelling: a key id that both the binding (CheckKeyID) and the signer (ParseKeyID)
// accept is written exactly as the signer reads it, its vault URL, kind, name and version joined
// by slashes: no trailing slash, escaped character or dot segment that the signer would read past
// while the binding covers it (the host's case and port are TestCheckKeyID's).
func FuzzKeyIDSpelling(f *testing.F) {
	for _, s := range []string{
		"https://v1.vault.azure.net/keys/sign/0123456789abcdef0123456789abcdef",
		"https://v1.vault.azure.net/keys/sign",
		"https://127.0.0.1:8443/certificates/c",
		"https://[::1]:8443/keys/k/1",
		"https://v1.vault.azure.net/keys/sign/",
		"https://V1.vault.azure.net/keys/sign",
		"https://v1.vault.azure.net:443/keys/sign",
		"https://v1.vault.azure.net./keys/sign",
		"https://v%31.vault.azure.net/keys/sign",
		"https://v1.vault.azure.net/keys/si%67n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if binding.CheckKeyID(raw) != nil {
			return
		}
		id, err := ParseKeyID(raw)
		if err != nil {
			return
		}
		want := id.VaultURL + "/" + id.Kind + "/" + id.Name
		if id.Version != "" {
			want += "/" + id.Version
		}
		if raw != want {
			t.Fatalf("%q is accepted as a spelling of %q", raw, want)
		}
	})
}

// TestSameSpelling: the key id Key Vault reports is compared with the one given; a reported kid
// that does not parse is refused as such, not a crash (azkeys' ID.Name dereferences nil on it).
func TestSameSpelling(t *testing.T) {
	id, err := ParseKeyID("https://v.vault.azure.net/keys/signer/0123456789abcdef0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	latest, err := ParseKeyID("https://v.vault.azure.net/keys/signer")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		id   KeyID
		kid  string
		ok   bool
	}{
		{"as given", id, id.Raw, true},
		{"latest: any version", latest, id.Raw, true},
		{"name in another case", id, "https://v.vault.azure.net/keys/Signer/0123456789abcdef0123456789abcdef", false},
		{"version in another case", id, "https://v.vault.azure.net/keys/signer/0123456789ABCDEF0123456789ABCDEF", false},
		{"empty", id, "", false},
		{"no name", id, "https://v.vault.azure.net/keys", false},
		{"not a URL", id, "%zz", false},
		{"no version", id, "https://v.vault.azure.net/keys/signer", false},
		{"a certificate", id, "https://v.vault.azure.net/certificates/signer/0123456789abcdef0123456789abcdef", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kid := azkeys.ID(tc.kid)
			err := sameSpelling(tc.id, &kid)
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidKeyID)) {
				t.Fatalf("sameSpelling(%s, %q) = %v, want ok %v", tc.id.Raw, tc.kid, err, tc.ok)
			}
		})
	}
}
