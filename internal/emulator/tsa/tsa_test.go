package tsa

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/notaryproject/tspclient-go"
	"github.com/notaryproject/tspclient-go/pki"
)

// The queries are built and the replies read with tspclient-go, Notation's own RFC 3161 client,
// not with the library the TSA uses, so that the two sides do not share a reading of the format.

var (
	oidSHA1   = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidSHA256 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidSHA512 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}
	oidMD5    = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 5}
)

func post(t *testing.T, s *Server, query []byte) (int, []byte) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "http://tsa.example/", bytes.NewReader(query))
	req.Header.Set("Content-Type", "application/timestamp-query")
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code == http.StatusOK && rec.Header().Get("Content-Type") != "application/timestamp-reply" {
		t.Fatalf("reply Content-Type %q", rec.Header().Get("Content-Type"))
	}
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, b
}

func TestStamp(t *testing.T) {
	s, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	newReq := func(t *testing.T, edit func(*tspclient.Request)) *tspclient.Request {
		t.Helper()
		req, err := tspclient.NewRequest(tspclient.RequestOptions{Content: []byte("signature bytes"), HashAlgorithm: crypto.SHA256})
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(req)
		}
		return req
	}
	imprint := func(alg asn1.ObjectIdentifier, n int) func(*tspclient.Request) {
		return func(r *tspclient.Request) {
			r.MessageImprint.HashAlgorithm.Algorithm = alg
			r.MessageImprint.HashedMessage = bytes.Repeat([]byte{7}, n)
		}
	}
	const granted = -1
	tests := []struct {
		name  string
		edit  func(*tspclient.Request)
		raw   []byte          // sent instead of the request, if set
		fail  pki.FailureInfo // granted, or the only failInfo bit of the rejection
		certs bool            // a granted token carries certificates
	}{
		{"certReq true", nil, nil, granted, true},
		{"certReq false", func(r *tspclient.Request) { r.CertReq = false }, nil, granted, false},
		{"SHA-512 imprint", imprint(oidSHA512, 64), nil, granted, true},
		{"reqPolicy of this TSA", func(r *tspclient.Request) { r.ReqPolicy = Policy }, nil, granted, true},
		{"SHA-256 imprint of 20 bytes", imprint(oidSHA256, 20), nil, pki.FailureInfoBadDataFormat, false},
		{"SHA-256 imprint of 64 bytes", imprint(oidSHA256, 64), nil, pki.FailureInfoBadDataFormat, false},
		{"SHA-512 imprint of 32 bytes", imprint(oidSHA512, 32), nil, pki.FailureInfoBadDataFormat, false},
		{"empty imprint", imprint(oidSHA256, 0), nil, pki.FailureInfoBadDataFormat, false},
		{"SHA-1 imprint", imprint(oidSHA1, 20), nil, pki.FailureInfoBadAlg, false},
		{"MD5 imprint", imprint(oidMD5, 16), nil, pki.FailureInfoBadAlg, false},
		{"version 2", func(r *tspclient.Request) { r.Version = 2 }, nil, pki.FailureInfoBadDataFormat, false},
		{"another reqPolicy", func(r *tspclient.Request) { r.ReqPolicy = asn1.ObjectIdentifier{1, 2, 3, 4} }, nil, pki.FailureInfoUnacceptedPolicy, false},
		{"critical extension", func(r *tspclient.Request) {
			r.Extensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3, 5}, Critical: true, Value: []byte{5, 0}}}
		}, nil, pki.FailureInfoUnacceptedExtension, false},
		{"non-critical extension", func(r *tspclient.Request) {
			r.Extensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3, 5}, Value: []byte{5, 0}}}
		}, nil, pki.FailureInfoUnacceptedExtension, false},
		{"not DER", nil, []byte("not a query"), pki.FailureInfoBadDataFormat, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := newReq(t, tc.edit)
			query := tc.raw
			if query == nil {
				if query, err = req.MarshalBinary(); err != nil {
					t.Fatal(err)
				}
			}
			wantGranted, wantRejected := s.Requests.Load(), s.Rejections.Load()
			status, body := post(t, s, query)
			if status != http.StatusOK {
				t.Fatalf("HTTP %d %s: a refusal must be a TimeStampResp", status, body)
			}
			var rsp tspclient.Response
			if err := rsp.UnmarshalBinary(body); err != nil {
				t.Fatalf("reply is not a TimeStampResp: %v", err)
			}
			if tc.fail != granted {
				wantRejected++
				if rsp.Status.Status != pki.StatusRejection || len(rsp.TimestampToken.FullBytes) != 0 {
					t.Fatalf("status %v with %d token bytes, want a rejection without a token", rsp.Status.Status, len(rsp.TimestampToken.FullBytes))
				}
				for _, fi := range []pki.FailureInfo{pki.FailureInfoBadAlg, pki.FailureInfoBadRequest, pki.FailureInfoBadDataFormat, pki.FailureInfoTimeNotAvailable,
					pki.FailureInfoUnacceptedPolicy, pki.FailureInfoUnacceptedExtension, pki.FailureInfoAddInfoNotAvailable, pki.FailureInfoSystemFailure} {
					if want := fi == tc.fail; (rsp.Status.FailInfo.At(int(fi)) == 1) != want {
						t.Fatalf("failInfo %v: bit %d set = %v, want %v", rsp.Status.FailInfo, fi, !want, want)
					}
				}
			} else {
				wantGranted++
				if err := rsp.Validate(req); err != nil {
					t.Fatalf("Notation's client refuses the reply: %v", err)
				}
				tok, err := rsp.SignedToken()
				if err != nil {
					t.Fatal(err)
				}
				if got := len(tok.Certificates) > 0; got != tc.certs {
					t.Fatalf("token carries %d certificates, want some: %v", len(tok.Certificates), tc.certs)
				}
				if tc.certs {
					roots := x509.NewCertPool()
					roots.AddCert(s.Root)
					if _, err := tok.Verify(context.Background(), x509.VerifyOptions{Roots: roots}); err != nil {
						t.Fatalf("token does not verify under the TSA root: %v", err)
					}
				}
			}
			if s.Requests.Load() != wantGranted || s.Rejections.Load() != wantRejected {
				t.Fatalf("counters %d granted, %d rejected; want %d, %d", s.Requests.Load(), s.Rejections.Load(), wantGranted, wantRejected)
			}
		})
	}
}

func TestNotAQuery(t *testing.T) {
	s, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, method, contentType string }{
		{"GET", http.MethodGet, "application/timestamp-query"},
		{"wrong media type", http.MethodPost, "application/octet-stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, "http://tsa.example/", nil)
			req.Header.Set("Content-Type", tc.contentType)
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code != http.StatusBadRequest {
				t.Fatalf("HTTP %d, want 400", rec.Code)
			}
		})
	}
}

// FuzzStamp sends arbitrary queries: every one is answered with a TimeStampResp, and a token only
// for a query whose imprint has its hash algorithm's length and that names no other policy and no
// extension.
func FuzzStamp(f *testing.F) {
	s, err := New(nil)
	if err != nil {
		f.Fatal(err)
	}
	req, _ := tspclient.NewRequest(tspclient.RequestOptions{Content: []byte("x"), HashAlgorithm: crypto.SHA256})
	q, _ := req.MarshalBinary()
	f.Add(q)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, query []byte) {
		status, body := post(t, s, query)
		if status != http.StatusOK {
			t.Fatalf("HTTP %d", status)
		}
		var rsp tspclient.Response
		if err := rsp.UnmarshalBinary(body); err != nil {
			t.Fatalf("reply is not a TimeStampResp: %v", err)
		}
		if rsp.Status.Status != pki.StatusGranted {
			return
		}
		var sent tspclient.Request
		if err := sent.UnmarshalBinary(query); err != nil || sent.Validate() != nil || len(sent.Extensions) > 0 ||
			(sent.ReqPolicy != nil && !sent.ReqPolicy.Equal(Policy)) {
			t.Fatalf("granted a query tspclient-go reads as %+v (%v)", sent, err)
		}
	})
}
