package maa

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// OSInfo describes the guest OS as MAA's AzureGuest request carries it; MAA echoes it in the
// x-ms-azurevm-os* claims.
type OSInfo struct {
	// Type is "Linux" (OSTypeLinux) or "Windows".
	Type string
	// Distro is os-release NAME, e.g. "Ubuntu".
	Distro string
	// VersionMajor and VersionMinor come from os-release VERSION_ID ("22.04" -> 22, 4).
	VersionMajor, VersionMinor uint32
	// Build is wire.OSBuildLinux ("NotApplication") on Linux.
	Build string
}

// checkOSVersion refuses an OS description with VersionMajor 0, before anything is sent: AZGA's
// AttestationParameters::Validate refuses to send a request whose distro_version_major is 0, and
// this client sends what AZGA sends. UNCONFIRMED: what real MAA does with OSVersionMajor 0
// (refuse it, or issue a token with x-ms-azurevm-osversion-major 0); we follow AZGA rather than
// find out on a build VM. from says where the description came from, and why it has no version.
func checkOSVersion(o OSInfo, from string) error {
	if o.VersionMajor != 0 {
		return nil
	}
	return fmt.Errorf("%w (%s): the major version is the leading number of VERSION_ID in os-release "+
		"(%s), which is missing, has no VERSION_ID, or a VERSION_ID that does not start with a number; "+
		"Azure's guest attestation client refuses to attest so. The VM image must have an os-release "+
		"with a numeric VERSION_ID (e.g. VERSION_ID=\"22.04\"), or the caller must set ClientOptions.OS",
		ErrOSVersion, from, DefaultOSReleasePath)
}

// defaultOSInfo is used when os-release cannot be read.
func defaultOSInfo() OSInfo {
	return OSInfo{Type: OSTypeLinux, Distro: OSTypeLinux, Build: OSBuildLinux}
}

// ReadOSRelease reads an os-release file (os-release(5)) and returns its NAME and VERSION_ID as
// AZGA reports them: Type "Linux", Distro = NAME (default "Linux", as os-release(5) specifies),
// VersionMajor.VersionMinor = the leading numbers of VERSION_ID ("22.04" -> 22, 4; "9" -> 9, 0;
// missing or non-numeric parts -> 0), Build = OSBuildLinux. A VersionMajor of 0 is returned
// without error; the Client refuses to send it (ErrOSVersion).
func ReadOSRelease(path string) (OSInfo, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return OSInfo{}, fmt.Errorf("reading os-release: %w", err)
	}
	if len(data) > MaxResponseSize {
		return OSInfo{}, fmt.Errorf("reading os-release %s: file larger than %d bytes", path, MaxResponseSize)
	}
	info := defaultOSInfo()
	var versionID string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		value = unquoteOSRelease(strings.TrimSpace(value))
		switch strings.TrimSpace(key) {
		case "NAME":
			if value != "" {
				info.Distro = value
			}
		case "VERSION_ID":
			versionID = value
		}
	}
	if err := sc.Err(); err != nil {
		return OSInfo{}, fmt.Errorf("reading os-release %s: %w", path, err)
	}
	major, rest, _ := strings.Cut(versionID, ".")
	minor, _, _ := strings.Cut(rest, ".")
	info.VersionMajor = leadingUint32(major)
	info.VersionMinor = leadingUint32(minor)
	return info, nil
}

// unquoteOSRelease removes shell-style quotes and backslash escapes from an os-release value.
func unquoteOSRelease(v string) string {
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		quote := v[0]
		v = v[1 : len(v)-1]
		if quote == '\'' {
			return v
		}
	}
	if !strings.Contains(v, `\`) {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

// leadingUint32 parses the leading decimal digits of s, 0 if there are none or they overflow.
func leadingUint32(s string) uint32 {
	end := 0
	for end < len(s) && s[end] >= '0' && s[end] <= '9' {
		end++
	}
	n, err := strconv.ParseUint(s[:end], 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}
