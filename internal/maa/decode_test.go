package maa

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestDecodeObject(t *testing.T) {
	nest := func(n int) string { return strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n) }
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{"object", `{"iss":"x","exp":1700000000,"a":[1,{"b":null}],"t":true}`, ""},
		{"duplicate top-level name", `{"iss":"a","iss":"b"}`, "duplicate"},
		{"duplicate spelled with an escape", `{"iss":"a","\u0069ss":"b"}`, "duplicate"},
		{"duplicate in a nested object", `{"x-ms-runtime":{"client-payload":{"nonce":"a","nonce":"b"}}}`, "duplicate"},
		{"duplicate in an object inside an array", `{"keys":[{"kid":"a","kid":"b"}]}`, "duplicate"},
		{"same name in sibling objects", `{"a":{"k":1},"b":{"k":2}}`, ""},
		{"64 levels", nest(64), ""},
		{"65 levels", nest(65), "nested"},
		{"65 levels of arrays", "{\"a\":" + strings.Repeat("[", 64) + strings.Repeat("]", 64) + "}", "nested"},
		{"trailing data", `{"a":1} {"a":2}`, "trailing"},
		{"trailing garbage", `{"a":1}x`, "trailing"},
		{"array", `[1,2]`, "not an object"},
		{"null", `null`, "not an object"},
		{"empty", ``, "EOF"},
		{"invalid UTF-8", "{\"a\":\"\xff\"}", "UTF-8"},
		{"truncated", `{"a":`, "EOF"},
		{"bad number", `{"a":01}`, "invalid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeObject([]byte(tc.in))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("decodeObject: %v", err)
				}
				var want map[string]any
				dec := json.NewDecoder(strings.NewReader(tc.in))
				dec.UseNumber()
				if err := dec.Decode(&want); err != nil {
					t.Fatal(err)
				}
				gb, _ := json.Marshal(got)
				wb, _ := json.Marshal(want)
				if string(gb) != string(wb) {
					t.Fatalf("decoded %s, encoding/json decodes %s", gb, wb)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("decodeObject(%q) = %v, want an error containing %q", tc.in, err, tc.wantErr)
			}
		})
	}
	if v, _ := decodeObject([]byte(`{"n":1.50}`)); v["n"] != json.Number("1.50") {
		t.Fatalf("number decoded as %#v, want json.Number", v["n"])
	}
}
