package registryclient

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

type staticCred struct{ scopes *[]string }

func (c staticCred) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	*c.scopes = o.Scopes
	return azcore.AccessToken{Token: "entra-token", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func TestExchangeACRToken(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		if r.Method != http.MethodPost || r.URL.Path != "/oauth2/exchange" || r.PostForm.Get("grant_type") != "access_token" ||
			r.PostForm.Get("access_token") != "entra-token" || r.PostForm.Get("service") != strings.TrimPrefix(srvURL(r), "https://") {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Write([]byte(`{"refresh_token":"acr-refresh"}`))
	}))
	defer srv.Close()
	var scopes []string
	host := strings.TrimPrefix(srv.URL, "https://")
	rt, err := ExchangeACRToken(context.Background(), srv.Client(), host, staticCred{&scopes})
	if err != nil || rt != "acr-refresh" {
		t.Fatalf("exchange: %q %v", rt, err)
	}
	if len(scopes) != 1 || scopes[0] != ACRScope {
		t.Fatalf("scopes %v", scopes)
	}
	if _, err := ExchangeACRToken(context.Background(), srv.Client(), host+"x", staticCred{&scopes}); err == nil {
		t.Fatal("exchange against a wrong host succeeded")
	}
}

func srvURL(r *http.Request) string { return "https://" + r.Host }

func TestLoopbackIsPlainHTTP(t *testing.T) {
	for host, want := range map[string]bool{"localhost:5000": true, "127.0.0.1:5000": true, "[::1]:5000": true, "myreg.azurecr.io": false, "10.0.0.1:5000": false} {
		if got := isLoopback(host); got != want {
			t.Errorf("isLoopback(%q) = %v", host, got)
		}
	}
}
