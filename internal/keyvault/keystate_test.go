package keyvault_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/attested-kv/attested-kv/internal/keyvault"
)

// keysClient is an azkeys client for the emulated vault, so that requests carry the SDK's wire
// format.
func (e *env) keysClient(t testing.TB) *azkeys.Client {
	t.Helper()
	c, err := azkeys.NewClient(e.vaultSr.URL, e.credential(t, clientID, secret), &azkeys.ClientOptions{ClientOptions: e.opts, DisableChallengeResourceVerification: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestKeyStateWithSDK creates and updates keys with azkeys (KeyAttributes on CreateKey, UpdateKey)
// and checks that Key Vault's key state rules hold on sign: a disabled key, a key before its nbf
// and a key after its exp do not sign (403), and the attributes come back in the key bundle.
func TestKeyStateWithSDK(t *testing.T) {
	e := newEnv(t)
	kc := e.keysClient(t)
	ctx := context.Background()
	now := time.Now().Truncate(time.Second)
	ec, p256 := azkeys.KeyTypeEC, azkeys.CurveNameP256
	tru, fls := true, false
	later, earlier := now.Add(time.Hour), now.Add(-time.Hour)
	tests := []struct {
		name  string
		attrs *azkeys.KeyAttributes
		// update, if set, is sent with UpdateKey after the creation.
		update *azkeys.KeyAttributes
		// inner is the innererror of the 403 sign gets; "" when sign succeeds.
		inner string
	}{
		{"enabled", &azkeys.KeyAttributes{Enabled: &tru}, nil, ""},
		{"no attributes", nil, nil, ""},
		{"created disabled", &azkeys.KeyAttributes{Enabled: &fls}, nil, "KeyDisabled"},
		{"not valid before an hour from now", &azkeys.KeyAttributes{NotBefore: &later}, nil, "KeyNotYetValid"},
		{"expired an hour ago", &azkeys.KeyAttributes{Expires: &earlier}, nil, "KeyExpired"},
		{"valid now, within nbf and exp", &azkeys.KeyAttributes{NotBefore: &earlier, Expires: &later}, nil, ""},
		{"disabled by UpdateKey", nil, &azkeys.KeyAttributes{Enabled: &fls}, "KeyDisabled"},
		{"expired by UpdateKey", nil, &azkeys.KeyAttributes{Expires: &earlier}, "KeyExpired"},
		{"re-enabled by UpdateKey", &azkeys.KeyAttributes{Enabled: &fls}, &azkeys.KeyAttributes{Enabled: &tru}, ""},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := "state-" + string(rune('a'+i))
			cr, err := kc.CreateKey(ctx, name, azkeys.CreateKeyParameters{Kty: &ec, Curve: &p256, KeyAttributes: tc.attrs}, nil)
			if err != nil {
				t.Fatalf("CreateKey: %v", err)
			}
			want := cr.Attributes
			if tc.update != nil {
				ur, err := kc.UpdateKey(ctx, name, cr.Key.KID.Version(), azkeys.UpdateKeyParameters{KeyAttributes: tc.update}, nil)
				if err != nil {
					t.Fatalf("UpdateKey: %v", err)
				}
				want = ur.Attributes
			}
			// The attributes sent are the attributes the vault reports.
			gr, err := kc.GetKey(ctx, name, "", nil)
			if err != nil {
				t.Fatalf("GetKey: %v", err)
			}
			// The attributes sent, the update's over the creation's; a key is enabled by default.
			sent := azkeys.KeyAttributes{Enabled: &tru}
			for _, a := range []*azkeys.KeyAttributes{tc.attrs, tc.update} {
				if a == nil {
					continue
				}
				if a.Enabled != nil {
					sent.Enabled = a.Enabled
				}
				if a.NotBefore != nil {
					sent.NotBefore = a.NotBefore
				}
				if a.Expires != nil {
					sent.Expires = a.Expires
				}
			}
			got := gr.Attributes
			if got.Enabled == nil || *got.Enabled != *sent.Enabled {
				t.Fatalf("enabled %v, want %v", got.Enabled, *sent.Enabled)
			}
			if (got.NotBefore == nil) != (sent.NotBefore == nil) || sent.NotBefore != nil && !got.NotBefore.Equal(*sent.NotBefore) {
				t.Fatalf("nbf %v, want %v", got.NotBefore, sent.NotBefore)
			}
			if (got.Expires == nil) != (sent.Expires == nil) || sent.Expires != nil && !got.Expires.Equal(*sent.Expires) {
				t.Fatalf("exp %v, want %v", got.Expires, sent.Expires)
			}
			if *gr.Attributes.Enabled != *want.Enabled {
				t.Fatalf("GetKey enabled %v, the write answered %v", *gr.Attributes.Enabled, *want.Enabled)
			}
			alg := azkeys.SignatureAlgorithmES256
			_, err = kc.Sign(ctx, name, "", azkeys.SignParameters{Algorithm: &alg, Value: make([]byte, 32)}, nil)
			var rerr *azcore.ResponseError
			switch {
			case tc.inner == "" && err != nil:
				t.Fatalf("Sign: %v", err)
			case tc.inner != "" && (!errors.As(err, &rerr) || rerr.StatusCode != http.StatusForbidden || rerr.ErrorCode != "Forbidden" || !strings.Contains(err.Error(), tc.inner)):
				t.Fatalf("Sign: %v, want 403 Forbidden (%s)", err, tc.inner)
			}
		})
	}
}

// TestSignerRefusesDisabledCertificateKey: the key of a certificate is managed and valid when the
// certificate is; a Signer opened on it fails to sign once the key is disabled.
func TestSignerRefusesDisabledCertificateKey(t *testing.T) {
	e := newEnv(t)
	keyURL := e.createCertificate(t, "revoked", "RSA", 2048, "", []string{"digitalSignature"})
	kid, err := keyvault.ParseKeyID(keyURL)
	if err != nil {
		t.Fatal(err)
	}
	kc := e.keysClient(t)
	ctx := context.Background()
	gr, err := kc.GetKey(ctx, kid.Name, kid.Version, nil)
	if err != nil {
		t.Fatal(err)
	}
	if gr.Managed == nil || !*gr.Managed || gr.Attributes.NotBefore == nil || gr.Attributes.Expires == nil {
		t.Fatalf("certificate key: managed %v, nbf %v, exp %v; want managed with the certificate's validity", gr.Managed, gr.Attributes.NotBefore, gr.Attributes.Expires)
	}
	s, err := keyvault.NewSigner(ctx, kid, keyvault.Options{Credential: e.credential(t, clientID, secret), ClientOptions: e.opts})
	if err != nil {
		t.Fatal(err)
	}
	if !gr.Attributes.Expires.Equal(s.CertificateChain()[0].NotAfter) || !gr.Attributes.NotBefore.Equal(s.CertificateChain()[0].NotBefore) {
		t.Fatalf("key valid %v to %v, certificate %v to %v", gr.Attributes.NotBefore, gr.Attributes.Expires, s.CertificateChain()[0].NotBefore, s.CertificateChain()[0].NotAfter)
	}
	if _, _, err := s.Sign([]byte("before")); err != nil {
		t.Fatalf("Sign with the enabled key: %v", err)
	}
	disabled := false
	if _, err := kc.UpdateKey(ctx, kid.Name, kid.Version, azkeys.UpdateKeyParameters{KeyAttributes: &azkeys.KeyAttributes{Enabled: &disabled}}, nil); err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
	var rerr *azcore.ResponseError
	if _, _, err := s.Sign([]byte("after")); !errors.As(err, &rerr) || rerr.StatusCode != http.StatusForbidden {
		t.Fatalf("Sign with the disabled key: %v, want 403", err)
	}
}

// TestSignerVersionCase: Key Vault reads names and versions in any case, but the binding covers
// the key id as written, so a key id in another case than the vault's would make tokens that
// verifiers configured with the vault's spelling refuse. The Signer opens only the vault's
// spelling, and its refusal names it.
func TestSignerVersionCase(t *testing.T) {
	e := newEnv(t)
	keyURL := e.createCertificate(t, "case-test", "EC", 0, "P-256", []string{"digitalSignature"})
	base, ver := keyURL[:strings.LastIndex(keyURL, "/")], keyURL[strings.LastIndex(keyURL, "/")+1:]
	tests := []struct {
		name, id string
		want     string // the spelling the refusal names; "" if the id opens
	}{
		{"as stored", keyURL, ""},
		{"latest version, as stored", base, ""},
		{"upper-case version", base + "/" + strings.ToUpper(ver), keyURL},
		{"upper-case name and version", strings.Replace(base, "case-test", "CASE-TEST", 1) + "/" + strings.ToUpper(ver), keyURL},
		{"upper-case name, latest version", strings.Replace(base, "case-test", "Case-Test", 1), base},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kid, err := keyvault.ParseKeyID(tc.id)
			if err != nil {
				t.Fatal(err)
			}
			s, err := keyvault.NewSigner(context.Background(), kid, keyvault.Options{Credential: e.credential(t, clientID, secret), ClientOptions: e.opts})
			if tc.want != "" {
				if !errors.Is(err, keyvault.ErrInvalidKeyID) || !strings.Contains(err.Error(), fmt.Sprintf("Key Vault writes this key %q", tc.want)) {
					t.Fatalf("NewSigner(%s) = %v, want a refusal naming %s", tc.id, err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewSigner(%s): %v", tc.id, err)
			}
			if _, _, err := s.Sign([]byte("payload")); err != nil {
				t.Fatalf("Sign: %v", err)
			}
		})
	}
}

// TestObjectNameRuleAgrees checks that ParseKeyID's name rule and the emulated vault's (which
// each state Key Vault's rule on their own, so that neither hides the other's mistake) accept and
// refuse the same names: the vault answers an absent key of a valid name with 404, a bad name
// with 400.
func TestObjectNameRuleAgrees(t *testing.T) {
	e := newEnv(t)
	kc := e.keysClient(t)
	names := []string{"a", "my-key", "My-Key-1", "0", "-", "my_key", "my.key", "my key", "clé", "a~b",
		strings.Repeat("a", 127), strings.Repeat("a", 128), strings.Repeat("x", 200)}
	for _, name := range names {
		t.Run(name[:min(len(name), 20)], func(t *testing.T) {
			_, parseErr := keyvault.ParseKeyID(e.vaultSr.URL + "/keys/" + name)
			_, err := kc.GetKey(context.Background(), name, "", nil)
			var rerr *azcore.ResponseError
			if !errors.As(err, &rerr) {
				t.Fatalf("GetKey(%q): %v, want a response error", name, err)
			}
			vaultOK := rerr.StatusCode == http.StatusNotFound
			if !vaultOK && (rerr.StatusCode != http.StatusBadRequest || rerr.ErrorCode != "BadParameter") {
				t.Fatalf("GetKey(%q): %v, want 404 or 400 BadParameter", name, err)
			}
			if vaultOK != (parseErr == nil) {
				t.Fatalf("name %q: the vault accepts it %v, ParseKeyID: %v", name, vaultOK, parseErr)
			}
		})
	}
}
