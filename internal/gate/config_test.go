package gate

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/notaryproject/notation-plugin-framework-go/plugin"

	"github.com/attested-kv/attested-kv/internal/keyvault"
)

func TestParseConfigKeyCache(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	tests := []struct {
		name    string
		setting *string
		want    string
	}{
		{"unset: the user's cache directory", nil, filepath.Join(cache, "attested-kv", "tpm")},
		{"off", ptr("off"), ""},
		{"a directory", ptr("/var/cache/build/tpm"), "/var/cache/build/tpm"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := map[string]string{KeyAttestationURL: "https://maa.example"}
			if tc.setting != nil {
				m[KeyKeyCache] = *tc.setting
			}
			c, err := ParseConfig(m)
			if err != nil {
				t.Fatal(err)
			}
			if c.KeyCacheDir != tc.want {
				t.Fatalf("KeyCacheDir = %q, want %q", c.KeyCacheDir, tc.want)
			}
		})
	}
}

func ptr(s string) *string { return &s }

// TestParseConfigAttestationURL: the instance URL is checked as the MAA client and verifier check
// it (maa.CheckInstance), and a password in it is never echoed.
func TestParseConfigAttestationURL(t *testing.T) {
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"https://maa.example", true},
		{"https://maa.example/", true},
		{"http://maa.example", false},
		{"https://maa.example/attest", false},
		{"https://maa.example#frag", false},
		{"https://user:s3cret@maa.example", false},
	} {
		_, err := ParseConfig(map[string]string{KeyAttestationURL: tc.url})
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.url, err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: the error shows the password: %v", tc.url, err)
		}
	}
}

// TestParseConfigTimestampURLNotEchoed: a timestamp_url that is refused is shown without its
// password, as attestation_url is.
func TestParseConfigTimestampURLNotEchoed(t *testing.T) {
	for _, url := range []string{"ftps://alice:s3cret@tsa.example/", "https://alice:s3cret@", "https://alice:s3cret@%zz/"} {
		_, err := ParseConfig(map[string]string{KeyAttestationURL: "https://maa.example", KeyTimestampURL: url, KeyTimestampRootCert: "/r.pem"})
		if err == nil || !strings.Contains(err.Error(), KeyTimestampURL) {
			t.Errorf("%s: err = %v; want a refusal naming %s", url, err, KeyTimestampURL)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: the error shows the password: %v", url, err)
		}
	}
}

// TestParseConfigDurations: max_token_age and timeout are between 1s and 1h, as their errors say.
func TestParseConfigDurations(t *testing.T) {
	get := map[string]func(Config) time.Duration{
		KeyMaxTokenAge: func(c Config) time.Duration { return c.MaxTokenAge },
		KeyTimeout:     func(c Config) time.Duration { return c.Timeout },
	}
	defaults := map[string]time.Duration{KeyMaxTokenAge: DefaultMaxTokenAge, KeyTimeout: DefaultTimeout}
	for _, key := range []string{KeyMaxTokenAge, KeyTimeout} {
		for _, tc := range []struct {
			value string
			want  time.Duration // 0 = refused
		}{
			{"", defaults[key]},
			{"1ns", 0},
			{"500ms", 0},
			{"999ms", 0},
			{"0s", 0},
			{"-5m", 0},
			{"five minutes", 0},
			{"1s", time.Second},
			{"5m", 5 * time.Minute},
			{"1h", time.Hour},
			{"1h1s", 0},
		} {
			name := tc.value
			if name == "" {
				name = "unset"
			}
			t.Run(key+"="+name, func(t *testing.T) {
				m := map[string]string{KeyAttestationURL: "https://maa.example"}
				if tc.value != "" {
					m[key] = tc.value
				}
				c, err := ParseConfig(m)
				if tc.want == 0 {
					if err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "between 1s and 1h0m0s") {
						t.Fatalf("accepted as %s, or the error does not name the key and the range: %v", get[key](c), err)
					}
					return
				}
				if err != nil || get[key](c) != tc.want {
					t.Fatalf("%s = %s, %v; want %s", key, get[key](c), err, tc.want)
				}
			})
		}
	}
}

// TestParseConfigCredential: client_id is refused with a credential type that would ignore it
// and sign as another identity (the default chain may take the VM's system-assigned one); the
// error names both keys and what to set.
func TestParseConfigCredential(t *testing.T) {
	for _, tc := range []struct {
		name     string
		credType string
		clientID string
		ok       bool
	}{
		{"default chain", "", "", true},
		{"managedid, system-assigned", "managedid", "", true},
		{"managedid with client_id", "managedid", "00000000-0000-0000-0000-000000000001", true},
		{"ManagedID with client_id", "ManagedID", "00000000-0000-0000-0000-000000000001", true},
		{"workloadid with client_id", "workloadid", "00000000-0000-0000-0000-000000000001", true},
		{"environment", "environment", "", true},
		{"azurecli", "azurecli", "", true},
		{"client_id with the default chain", "", "00000000-0000-0000-0000-000000000001", false},
		{"client_id with environment", "environment", "00000000-0000-0000-0000-000000000001", false},
		{"client_id with azurecli", "azurecli", "00000000-0000-0000-0000-000000000001", false},
		{"unknown credential_type", "msi", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := map[string]string{KeyAttestationURL: "https://maa.example"}
			if tc.credType != "" {
				m[KeyCredentialType] = tc.credType
			}
			if tc.clientID != "" {
				m[KeyClientID] = tc.clientID
			}
			_, err := ParseConfig(m)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, keyvault.ErrInvalidConfig) || !strings.Contains(err.Error(), KeyCredentialType) {
				t.Fatalf("err = %v, want ErrInvalidConfig naming %s", err, KeyCredentialType)
			}
			if tc.clientID != "" && (!strings.Contains(err.Error(), KeyClientID) || !strings.Contains(err.Error(), "credential_type=managedid")) {
				t.Fatalf("err = %v, want it to name %s and what to set", err, KeyClientID)
			}
		})
	}
}

// TestOSReleaseConfig: os_release names the os-release file the attestation describes the OS
// with; one that cannot be read is a configuration error naming the key, before any TPM or MAA
// request.
func TestOSReleaseConfig(t *testing.T) {
	good := filepath.Join(t.TempDir(), "os-release")
	if err := os.WriteFile(good, []byte("NAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		err  string
	}{
		{good, ""},
		{filepath.Join(t.TempDir(), "missing"), "os_release"},
	} {
		c, err := ParseConfig(map[string]string{KeyAttestationURL: "https://x.weu.attest.azure.net", KeyOSRelease: tc.path})
		if err != nil {
			t.Fatal(err)
		}
		_, err = newTPMAttester(context.Background(), c, slog.New(slog.DiscardHandler))
		if (tc.err == "") != (err == nil) || (err != nil && (!strings.Contains(err.Error(), tc.err) || ToPluginError(err).ErrCode != plugin.ErrorCodeValidation)) {
			t.Errorf("os_release %s: %v", tc.path, err)
		}
	}
}

// TestParseConfigAttestationType: attestation_type may be left out or name AzureGuest, in any
// case; any other type (another TEE's evidence) is refused, naming the key.
func TestParseConfigAttestationType(t *testing.T) {
	for _, tc := range []struct {
		setting *string
		ok      bool
	}{
		{nil, true},
		{ptr("AzureGuest"), true},
		{ptr("azureguest"), true},
		{ptr("SgxEnclave"), false},
		{ptr("Tpm"), false},
	} {
		m := map[string]string{KeyAttestationURL: "https://maa.example"}
		if tc.setting != nil {
			m[KeyAttestationType] = *tc.setting
		}
		c, err := ParseConfig(m)
		if tc.ok && (err != nil || c.AttestationType == "") || !tc.ok && (err == nil || !strings.Contains(err.Error(), KeyAttestationType)) {
			t.Errorf("%s=%v: %+v, %v; want accepted: %v", KeyAttestationType, tc.setting, c.AttestationType, err, tc.ok)
		}
	}
}
