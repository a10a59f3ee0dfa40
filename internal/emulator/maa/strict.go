package maa

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxJSONDepth bounds nesting in documents we accept; AttestationInfo is three levels deep.
const maxJSONDepth = 16

// decodeStrictJSON decodes exactly one JSON value from data into v. It refuses unknown fields,
// trailing data, and objects with duplicate keys (compared case-insensitively, because
// encoding/json matches struct fields case-insensitively: {"AikCert":..,"aikcert":..} would
// otherwise be resolved silently to the last one, a parser differential an attacker could use).
func decodeStrictJSON(data []byte, v any) error {
	if err := checkDuplicateKeys(data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON document")
	}
	return nil
}

// checkDuplicateKeys walks the token stream of data and fails on a key repeated in one object.
func checkDuplicateKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type frame struct {
		object    bool
		expectKey bool
		keys      map[string]bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if top != nil && top.object {
					top.expectKey = true // this value completes the pending key
				}
				if len(stack) >= maxJSONDepth {
					return fmt.Errorf("JSON nested deeper than %d levels", maxJSONDepth)
				}
				stack = append(stack, &frame{object: t == '{', expectKey: t == '{', keys: map[string]bool{}})
			case '}', ']':
				stack = stack[:len(stack)-1]
			}
		case string:
			if top != nil && top.object && top.expectKey {
				k := strings.ToLower(t)
				if top.keys[k] {
					return fmt.Errorf("duplicate JSON key %q", t)
				}
				top.keys[k] = true
				top.expectKey = false
				continue
			}
			if top != nil && top.object {
				top.expectKey = true
			}
		default:
			if top != nil && top.object {
				top.expectKey = true
			}
		}
	}
}

// decodeStdBase64 decodes s as standard base64 WITH padding, strictly: no newlines (which
// encoding/base64 would otherwise skip), no non-zero trailing bits. AZGA writes every binary
// field of AttestationInfo this way (AttestationHelper.cpp binary_to_base64).
func decodeStdBase64(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("base64 contains line breaks")
	}
	return base64.StdEncoding.Strict().DecodeString(s)
}

// decodeBase64URL decodes s as base64url, with or without padding, strictly.
func decodeBase64URL(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("base64url contains line breaks")
	}
	if strings.HasSuffix(s, "=") {
		return base64.URLEncoding.Strict().DecodeString(s)
	}
	return base64.RawURLEncoding.Strict().DecodeString(s)
}
