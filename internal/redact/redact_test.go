package redact

import (
	"errors"
	"io/fs"
	"regexp"
	"strings"
	"testing"
)

// jwt is the shape of a compact JWS, as a reader of the logs would look for it.
var jwt = regexp.MustCompile(`eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.`)

const (
	entraToken = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJodHRwczovL3ZhdWx0LmF6dXJlLm5ldCJ9.c2lnbmF0dXJl"
	jweToken   = "eyJhbGciOiJSU0EtT0FFUCJ9.a2V5.aXY.Y2lwaGVy.dGFn"
)

func TestString(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string   // "" = only check gone and kept
		gone    []string // must not be in the output
		keptAll []string // must still be in the output
	}{
		{name: "MSAL's JSON decoding error quotes the token answer",
			in:      "ClientSecretCredential: json decode error: unix time(3600.0) could not be converted\nraw message was: {\"access_token\":\"" + entraToken + "\",\"expires_in\":3600.0}",
			gone:    []string{entraToken, "access_token", "eyJ"},
			keptAll: []string{"ClientSecretCredential: json decode error: unix time(3600.0) could not be converted", redactedAnswer}},
		{name: "MSAL's answer at the start", in: "raw message was: {\"access_token\":\"opaque-4f2a\",\"expires_in\":3600.0}", want: redactedAnswer},
		{name: "a bare JWS", in: "bad token " + entraToken + " here", want: "bad token " + redactedJWT + " here"},
		{name: "an unsecured JWS (alg none, no signature)", in: "got eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", want: "got " + redactedJWT},
		{name: "a JWE", in: "got " + jweToken, want: "got " + redactedJWT},
		{name: "JSON token fields", in: `{"refresh_token": "r3fr3sh", "Access_Token":"abc\"def", "expires_in": 10}`,
			want: `{"refresh_token": "` + redactedValue + `", "Access_Token":"` + redactedValue + `", "expires_in": 10}`},
		{name: "JSON token fields quoted in a Go string (%q)", in: `answer "{\"access_token\":\"opaque-4f2a\",\"Client_Secret\": \"s\\\\3\",\"expires_in\":3600}"`,
			want: `answer "{\"access_token\":\"` + redactedValue + `\",\"Client_Secret\": \"` + redactedValue + `\",\"expires_in\":3600}"`},
		{name: "form fields", in: "POST body grant_type=access_token&service=r.azurecr.io&access_token=s3cr3t&password=hunter2 sent",
			want: "POST body grant_type=access_token&service=r.azurecr.io&access_token=" + redactedValue + "&password=" + redactedValue + " sent"},
		{name: "other credential fields in JSON, values that are not JWS",
			in:   `{"id_token":"o1","client_secret":"o2","client_assertion":"o3","assertion":"o4","secret":"o5","identitytoken":"o6","registrytoken":"o7"}`,
			want: `{"id_token":"[redacted]","client_secret":"[redacted]","client_assertion":"[redacted]","assertion":"[redacted]","secret":"[redacted]","identitytoken":"[redacted]","registrytoken":"[redacted]"}`},
		{name: "other credential fields in a form, in any case", in: "Client_Secret=s3;cr3t&ID_TOKEN=o1&client_assertion=o2&assertion=o3&Secret=o4&IdentityToken=o5&registrytoken=o6 sent",
			want: "Client_Secret=[redacted]&ID_TOKEN=[redacted]&client_assertion=[redacted]&assertion=[redacted]&Secret=[redacted]&IdentityToken=[redacted]&registrytoken=[redacted] sent"},
		{name: "docker config auth", in: `{"auths":{"r.example":{"auth":"dXNlcjpwYXNz"}}}`, want: `{"auths":{"r.example":{"auth":"` + redactedValue + `"}}}`},
		{name: "a URL's password", in: `timestamp: POST "http://tsauser:S3cret@127.0.0.1:4286/ts": bad status: 503`,
			want: `timestamp: POST "http://tsauser:xxxxx@127.0.0.1:4286/ts": bad status: 503`},
		{name: "a URL's password, the scheme in capitals", in: `POST "HTTPS://alice:S3cret@tsa.example/ts"`, want: `POST "HTTPS://alice:xxxxx@tsa.example/ts"`},
		{name: "a URL's password holding a colon", in: `POST "https://alice:S3:cret@tsa.example/ts"`, want: `POST "https://alice:xxxxx@tsa.example/ts"`},
		{name: "a URL's password holding an @", in: `POST "http://tsauser:S3@cret@127.0.0.1:4286/ts": bad status: 503`,
			want: `POST "http://tsauser:xxxxx@127.0.0.1:4286/ts": bad status: 503`},
		{name: "a URL's user name holding an @ (an e-mail address)", in: `POST "https://alice@example.com:S3cret@tsa.example/ts"`,
			want: `POST "https://alice@example.com:xxxxx@tsa.example/ts"`},
		{name: "a URL without a password stays", in: "GET https://user@host.example:443/x and https://host.example/a:b@c",
			want: "GET https://user@host.example:443/x and https://host.example/a:b@c"},
		{name: "nothing to remove", in: "reading key keys/signer: GET https://v.vault.azure.net/keys/signer: 403 Forbidden",
			want: "reading key keys/signer: GET https://v.vault.azure.net/keys/signer: 403 Forbidden"},
		{name: "a digest stays", in: "sha256:eyJ0aGlz", want: "sha256:eyJ0aGlz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := String(tc.in)
			if tc.want != "" && got != tc.want {
				t.Fatalf("String:\n got %q\nwant %q", got, tc.want)
			}
			for _, g := range tc.gone {
				if strings.Contains(got, g) {
					t.Errorf("String = %q, still holds %q", got, g)
				}
			}
			for _, k := range tc.keptAll {
				if !strings.Contains(got, k) {
					t.Errorf("String = %q, lost %q", got, k)
				}
			}
		})
	}
}

func TestError(t *testing.T) {
	if Error(nil) != nil || Hide("x", nil) != nil {
		t.Fatal("a nil error must stay nil")
	}
	inner := &fs.PathError{Op: "open", Path: "/x", Err: fs.ErrNotExist}
	err := Error(errors.Join(inner, errors.New("token "+entraToken)))
	if strings.Contains(err.Error(), entraToken) || !strings.Contains(err.Error(), "open /x") {
		t.Fatalf("Error = %q", err)
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("Error must keep the chain")
	}
	hidden := Hide("the entry for r.example is not valid", errors.New("auth 'user:hunter2' does not conform"))
	if hidden.Error() != "the entry for r.example is not valid" || errors.Unwrap(hidden) == nil {
		t.Fatalf("Hide = %q", hidden)
	}
}

func TestURL(t *testing.T) {
	tests := map[string]string{
		"https://alice:S3cr3t@tsa.example/ts":  "https://alice:xxxxx@tsa.example/ts",
		"https://tsa.example/ts":               "https://tsa.example/ts",
		"https://alice:S3cr3t@%zz":             "(not a URL)",
		"https://alice:S3@cr3t@tsa.example/ts": "https://alice:xxxxx@tsa.example/ts",
	}
	for in, want := range tests {
		if got := URL(in); got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzString: whatever the message, String leaves no JWS-shaped text and no MSAL answer, and
// removing twice removes nothing more.
func FuzzString(f *testing.F) {
	f.Add("json decode error\nraw message was: {\"access_token\":\"" + entraToken + "\"}")
	f.Add("access_token=abc&refresh_token=def")
	f.Add(`{"password":"p\"w","auth":"x"}`)
	f.Add("eyJ" + entraToken + "." + jweToken)
	f.Fuzz(func(t *testing.T, s string) {
		got := String(s)
		if jwt.MatchString(got) || strings.Contains(got, msalRawMessage) {
			t.Fatalf("String(%q) = %q", s, got)
		}
		if again := String(got); again != got {
			t.Fatalf("String is not idempotent: %q then %q", got, again)
		}
	})
}
