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
// this client sends what AZGA sends. ReadOSRelease gives 0 only for a VERSION_ID whose major
// number is 0 (as AZGA's parser does); a missing os-release, and an empty OSInfo given by the
// caller, give 0 too. UNCONFIRMED: what real MAA does with OSVersionMajor 0 (refuse it, or issue a
// token with x-ms-azurevm-osversion-major 0); we follow AZGA rather than find out on a build VM.
// from says where the description came from, and why it has no version.
func checkOSVersion(o OSInfo, from string) error {
	if o.VersionMajor != 0 {
		return nil
	}
	return fmt.Errorf("%w (%s): the major version is the leading number of VERSION_ID in os-release "+
		"(%s), which is missing, or has a VERSION_ID whose major number is 0; Azure's guest "+
		"attestation client refuses to attest so. Give an os-release whose VERSION_ID does not start "+
		"with 0 (the plugin's os_release, oras-attest's --os-release), or set ClientOptions.OS",
		ErrOSVersion, from, DefaultOSReleasePath)
}

// defaultOSInfo is used when os-release cannot be read.
func defaultOSInfo() OSInfo {
	return OSInfo{Type: OSTypeLinux, Distro: OSTypeLinux, Build: OSBuildLinux}
}

// ReadOSRelease reads an os-release file (os-release(5)) and returns its NAME and VERSION_ID as
// AZGA (Azure's guest attestation client, GetOSInfo) reports them: Type "Linux", Distro = NAME,
// VersionMajor.VersionMinor from VERSION_ID ("22.04" -> 22, 4; "9" -> 9, 0; "3.0.20240101" ->
// 3, 0), Build = OSBuildLinux. Where AZGA cannot read a version it sends 1.0, and so does this:
// VERSION_ID missing (Arch Linux), or not numbers ("rolling", "22.x", "22."); see
// parseOSVersion. A VERSION_ID whose major number is 0 gives VersionMajor 0, without error; the
// Client refuses to send it (ErrOSVersion), as AZGA does.
//
// Divergences, where this follows os-release(5) and AZGA does not: without NAME (or with an empty
// one) AZGA fails ("Distro name not found", or its Validate), where this reports "Linux", the
// default os-release(5) gives NAME; and values are unquoted as os-release(5) specifies (single
// quotes and backslash escapes too), where AZGA only deletes double quotes, so VERSION_ID='9' is
// 9.0 here and 1.0 from AZGA. Whether MAA accepts that name is UNCONFIRMED, and nothing here
// depends on either (the OS claims repeat what the client said; policy/rules/baseline.cel).
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
	info.VersionMajor, info.VersionMinor = parseOSVersion(versionID)
	return info, nil
}

// azgaDefaultMajor and azgaDefaultMinor are the version AZGA sends when os-release has no
// VERSION_ID or one it cannot parse ("1.0" in AttestationClientImpl::GetOSInfo).
const azgaDefaultMajor, azgaDefaultMinor = 1, 0

// parseOSVersion reads a VERSION_ID as AZGA's ParseVersionString does: the major number before the
// first ".", and the minor number after it if there is a "."; each must start with a decimal
// number (what follows the digits is ignored, as std::stoi ignores it) that fits an int32. If
// either does not, or v is empty, the version is AZGA's default, 1.0. A leading sign or space,
// which std::stoi would take, is not a number here either (no os-release has one).
func parseOSVersion(v string) (major, minor uint32) {
	majorPart, minorPart, hasMinor := strings.Cut(v, ".")
	major, ok := leadingInt32(majorPart)
	if !ok {
		return azgaDefaultMajor, azgaDefaultMinor
	}
	if hasMinor {
		if minor, ok = leadingInt32(minorPart); !ok {
			return azgaDefaultMajor, azgaDefaultMinor
		}
	}
	return major, minor
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

// leadingInt32 parses the leading decimal digits of s; ok is false if there are none or they do
// not fit an int32 (std::stoi's range).
func leadingInt32(s string) (uint32, bool) {
	end := 0
	for end < len(s) && s[end] >= '0' && s[end] <= '9' {
		end++
	}
	n, err := strconv.ParseUint(s[:end], 10, 31)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}
