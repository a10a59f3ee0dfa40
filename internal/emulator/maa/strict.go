package maa

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
)

// maxJSONDepth bounds nesting in documents we accept; AttestationInfo is three levels deep.
const maxJSONDepth = 16

// decodeStrictJSON decodes exactly one JSON value from data into v. It refuses unknown fields,
// trailing data, objects with duplicate keys (compared case-insensitively, so that no two keys
// differing only in case ever reach a decoder that might fold them), and a member of a struct
// whose key does not equal the field's JSON name exactly: encoding/json matches struct fields
// case-insensitively, so {"tpminfo": ...} would fill TpmInfo and pass DisallowUnknownFields, where
// Azure's client writes the exact names (AZGA AttestationLibConst.h) and MAA's own matching is
// UNCONFIRMED. Maps (ClientPayload, a JWS header) keep whatever keys they are sent.
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
	return checkExactKeys(data, reflect.TypeOf(v))
}

// checkExactKeys decodes data again, generically, and walks it beside t, the type it was decoded
// into: every key of an object decoded into a struct must be one of the struct's JSON names,
// byte for byte. data has already decoded into t, so a value whose JSON kind does not fit its
// Go type cannot occur; it is skipped rather than reported twice.
func checkExactKeys(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return err
	}
	return walkExactKeys(doc, t, "")
}

var jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()

func walkExactKeys(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshalerType) {
		return nil // the type decodes its own JSON
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		fields := jsonFields(t)
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			ft, ok := fields[k]
			if !ok {
				for name := range fields {
					if strings.EqualFold(name, k) {
						return fmt.Errorf("unknown field %q: JSON member names are case-sensitive, the field is %q", path+k, path+name)
					}
				}
				return fmt.Errorf("unknown field %q", path+k)
			}
			if err := walkExactKeys(obj[k], ft, path+k+"."); err != nil {
				return err
			}
		}
	case reflect.Map:
		obj, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			if err := walkExactKeys(obj[k], t.Elem(), path+k+"."); err != nil {
				return err
			}
		}
	case reflect.Slice, reflect.Array:
		arr, ok := v.([]any)
		if !ok {
			return nil
		}
		for i, e := range arr {
			if err := walkExactKeys(e, t.Elem(), fmt.Sprintf("%s[%d].", strings.TrimSuffix(path, "."), i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// jsonFields maps the JSON names of struct t's fields to their types, as encoding/json names
// them: the tag's name, else the Go field name; "-" and unexported fields have none; the fields
// of an untagged embedded struct are promoted. (encoding/json's rules for conflicting promoted
// names are not reproduced: the wire structs embed nothing.)
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for n, typ := range jsonFields(ft) {
					if _, ok := fields[n]; !ok {
						fields[n] = typ
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
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

// missingMembers returns, sorted, the JSON names of t's fields that the top-level object in data
// lacks (a member whose value is null is present). data has already decoded into t.
func missingMembers(data []byte, t reflect.Type) []string {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil
	}
	var missing []string
	for name := range jsonFields(t) {
		if _, ok := obj[name]; !ok {
			missing = append(missing, name)
		}
	}
	slices.Sort(missing)
	return missing
}
