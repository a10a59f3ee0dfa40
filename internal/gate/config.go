package gate

import (
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/attested-kv/attested-kv/internal/keyvault"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/redact"
	"github.com/attested-kv/attested-kv/internal/tpm"
)

// Plugin config keys (DESIGN.md, "Plugin config"). tcg_log and log_file extend the design's list.
const (
	KeyAttestationURL    = "attestation_url"
	KeyAttestationType   = "attestation_type"
	KeyMaxTokenAge       = "max_token_age"
	KeyRules             = "rules"
	KeyTPM               = "tpm"
	KeyTCGLog            = "tcg_log"
	KeyCredentialType    = "credential_type"
	KeyClientID          = "client_id"
	KeyCACerts           = "ca_certs"
	KeyTokenDir          = "token_dir"
	KeyTimestampURL      = "timestamp_url"
	KeyTimestampRootCert = "timestamp_root_cert"
	KeyLogFile           = "log_file"
	KeyKeyCache          = "key_cache"
	KeyOSRelease         = "os_release"
	KeyTimeout           = "timeout"
)

// knownKeys lists every accepted key: an unknown key is refused, so a typo cannot silently drop a
// setting (e.g. "max_token_ages" leaving the default age in force).
var knownKeys = []string{
	KeyAttestationURL, KeyAttestationType, KeyMaxTokenAge, KeyRules, KeyTPM, KeyTCGLog,
	KeyCredentialType, KeyClientID, KeyCACerts, KeyTokenDir, KeyTimestampURL, KeyTimestampRootCert, KeyLogFile,
	KeyKeyCache, KeyOSRelease, KeyTimeout,
}

// Defaults.
const (
	// DefaultAttestationType is the MAA attestation type of Azure VM guests (reference/maa.md).
	DefaultAttestationType = "AzureGuest"
	// DefaultMaxTokenAge is the oldest token the gate accepts.
	DefaultMaxTokenAge = 5 * time.Minute
	// MinMaxTokenAge is the shortest max_token_age: token times have a resolution of one second,
	// so a shorter age refuses every token.
	MinMaxTokenAge = time.Second
	// MaxMaxTokenAge bounds max_token_age: a token is fetched for each signature, so a long age only
	// widens the window a stolen token could be replayed in. The image verifiers have the same
	// bound (maa.MaxSigningAge).
	MaxMaxTokenAge = maa.MaxSigningAge
	// DefaultTimeout bounds one generate-envelope request. notation (v1.3.2) runs a plugin with a
	// context that only an interrupt ends (exec.CommandContext under signal.NotifyContext), and a
	// service that accepts the connection and never answers (Entra ID, the managed identity
	// endpoint, Key Vault) must not hang a build for ever.
	DefaultTimeout = 2 * time.Minute
	// MaxTimeout is the longest timeout.
	MaxTimeout = time.Hour
)

// Config is the parsed plugin config.
type Config struct {
	AttestationURL  string
	AttestationType string
	MaxTokenAge     time.Duration
	// Timeout bounds the whole request: attestation, opening the key and signing.
	Timeout           time.Duration
	RulesPath         string // "" = the built-in baseline
	TPM               string
	TCGLog            string
	CredentialType    string
	ClientID          string
	CACerts           string
	TokenDir          string // "" = the default store directory
	TimestampURL      string
	TimestampRootCert string
	LogFile           string
	// KeyCacheDir holds the TPM contexts of ephemeral keys (tpm.WithEphemeralKeyCache); "" = no
	// cache. The key_cache setting: unset = the user's cache directory, "off" = none, or a path.
	KeyCacheDir string
	// OSRelease is the os-release file whose NAME and VERSION_ID describe the guest OS to MAA;
	// "" = maa.DefaultOSReleasePath. For hosts whose own is missing or has a VERSION_ID of 0.x.
	OSRelease string
}

// ParseConfig validates the plugin config map. Errors are for the user: they name the key.
func ParseConfig(m map[string]string) (Config, error) {
	var unknown []string
	for k := range m {
		if !slices.Contains(knownKeys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return Config{}, fmt.Errorf("unknown plugin config key(s) %s; known keys: %s", strings.Join(unknown, ", "), strings.Join(knownKeys, ", "))
	}
	c := Config{
		AttestationURL:    strings.TrimSuffix(m[KeyAttestationURL], "/"),
		AttestationType:   m[KeyAttestationType],
		RulesPath:         m[KeyRules],
		TPM:               m[KeyTPM],
		TCGLog:            m[KeyTCGLog],
		CredentialType:    m[KeyCredentialType],
		ClientID:          m[KeyClientID],
		CACerts:           m[KeyCACerts],
		TokenDir:          m[KeyTokenDir],
		TimestampURL:      m[KeyTimestampURL],
		TimestampRootCert: m[KeyTimestampRootCert],
		LogFile:           m[KeyLogFile],
		KeyCacheDir:       tpm.ResolveKeyCacheDir(m[KeyKeyCache]),
		OSRelease:         m[KeyOSRelease],
		MaxTokenAge:       DefaultMaxTokenAge,
		Timeout:           DefaultTimeout,
	}
	if c.AttestationURL == "" {
		return Config{}, fmt.Errorf("plugin config %s is required (the MAA instance URL, e.g. https://NAME.REGION.attest.azure.net)", KeyAttestationURL)
	}
	if err := maa.CheckInstance(c.AttestationURL); err != nil {
		return Config{}, fmt.Errorf("plugin config %s: %w", KeyAttestationURL, err)
	}
	if c.AttestationType == "" {
		c.AttestationType = DefaultAttestationType
	}
	if !strings.EqualFold(c.AttestationType, DefaultAttestationType) {
		return Config{}, fmt.Errorf("plugin config %s=%q: only %s (Azure VM guests with a vTPM) is supported", KeyAttestationType, c.AttestationType, DefaultAttestationType)
	}
	// The credential is built only when the key is opened; its settings are checked now, where the
	// other config errors are reported.
	if err := (keyvault.CredentialOptions{Type: c.CredentialType, ClientID: c.ClientID}).Check(); err != nil {
		return Config{}, fmt.Errorf("plugin config: %w", err)
	}
	if v := m[KeyMaxTokenAge]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < MinMaxTokenAge || d > MaxMaxTokenAge {
			return Config{}, fmt.Errorf("plugin config %s=%q: want a duration between %s and %s, e.g. 5m", KeyMaxTokenAge, v, MinMaxTokenAge, MaxMaxTokenAge)
		}
		c.MaxTokenAge = d
	}
	if v := m[KeyTimeout]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second || d > MaxTimeout {
			return Config{}, fmt.Errorf("plugin config %s=%q: want a duration between %s and %s, e.g. 2m", KeyTimeout, v, time.Second, MaxTimeout)
		}
		c.Timeout = d
	}
	if c.TPM == "" {
		c.TPM = tpm.DefaultDevice
	}
	// Unset is the kernel's log, which only root can read by default: a non-root build user
	// gets tpm.ErrEventLog saying so, and must be given read access or set tcg_log to "" on
	// purpose (no log: no Secure Boot claims). An unreadable log is never dropped silently.
	if _, ok := m[KeyTCGLog]; !ok {
		c.TCGLog = tpm.DefaultEventLogPath
	}
	if c.TimestampURL != "" {
		if u, err := url.Parse(c.TimestampURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return Config{}, fmt.Errorf("plugin config %s=%q: want an http(s) URL of an RFC 3161 timestamping authority", KeyTimestampURL, redact.URL(c.TimestampURL))
		}
		if c.TimestampRootCert == "" {
			return Config{}, fmt.Errorf("plugin config %s needs %s (the TSA's root certificate, to check the timestamp)", KeyTimestampURL, KeyTimestampRootCert)
		}
	} else if c.TimestampRootCert != "" {
		return Config{}, fmt.Errorf("plugin config %s is set without %s", KeyTimestampRootCert, KeyTimestampURL)
	}
	return c, nil
}
