// Package tsa is an RFC 3161 time-stamping authority for tests and the local stack: it answers
// POST application/timestamp-query with application/timestamp-reply, signing TSTInfo with its
// own key (github.com/digitorus/timestamp, the library behind sigstore's timestamp authority),
// under a certificate whose extended key usage is the critical id-kp-timeStamping that
// Notation's timestamping rules demand.
//
// A query it will not stamp is answered, as RFC 3161 §2.4.2 has it, with a TimeStampResp whose
// status is rejection and whose failInfo names the check (HTTP 200, so that the client reads it):
// badDataFormat for a query that does not parse, is not version 1, or whose messageImprint is not
// as long as its hash algorithm's output; badAlg for a hash algorithm other than SHA-256/384/512;
// unacceptedPolicy for a reqPolicy other than Policy; unacceptedExtension for any extension (it
// recognizes none). The token carries the TSA's certificates only when the query's certReq is
// true (RFC 3161 §2.4.1). Only a request that is not a POST of application/timestamp-query is
// refused at the HTTP level (400), since it is not a time-stamp query at all.
package tsa

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"io"
	"math/big"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/digitorus/timestamp"
)

// maxRequest bounds a time-stamp query.
const maxRequest = 16 << 10

// oidTimeStamping is id-kp-timeStamping; oidEKU the extended key usage extension.
var (
	oidTimeStamping = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 8}
	oidEKU          = asn1.ObjectIdentifier{2, 5, 29, 37}
	// Policy is the TSA policy OID the emulator stamps under (a private arc: UNREGISTERED, local use).
	Policy = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59999, 1, 1}
)

// Server is a TSA with a root and a leaf signing certificate.
type Server struct {
	Root, Leaf *x509.Certificate
	key        crypto.Signer
	serial     atomic.Int64
	now        func() time.Time
	// Requests counts the queries answered with a time-stamp token.
	Requests atomic.Int64
	// Rejections counts the queries answered with a rejection.
	Rejections atomic.Int64
}

// New creates a TSA with fresh ECDSA P-256 keys; now is its clock (time.Now if nil).
func New(now func() time.Time) (*Server, error) {
	if now == nil {
		now = time.Now
	}
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	t0 := now().Add(-time.Hour)
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "attested-kv local TSA root", Organization: []string{"attested-kv"}, Country: []string{"ZZ"}},
		NotBefore: t0, NotAfter: t0.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	root, _ := x509.ParseCertificate(rootDER)
	eku, _ := asn1.Marshal([]asn1.ObjectIdentifier{oidTimeStamping})
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "attested-kv local TSA", Organization: []string{"attested-kv"}, Country: []string{"ZZ"}},
		NotBefore: t0, NotAfter: t0.Add(5 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
		ExtraExtensions: []pkix.Extension{{Id: oidEKU, Critical: true, Value: eku}},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, leafKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	leaf, _ := x509.ParseCertificate(leafDER)
	return &Server{Root: root, Leaf: leaf, key: leafKey, now: now}, nil
}

// ServeHTTP answers time-stamp queries (RFC 3161 §3.4).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/timestamp-query" {
		http.Error(w, "want POST application/timestamp-query", http.StatusBadRequest)
		return
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxRequest+1))
	if err != nil || len(b) > maxRequest {
		http.Error(w, "query too large", http.StatusRequestEntityTooLarge)
		return
	}
	resp, granted, err := s.stamp(b)
	if err != nil {
		// An emulator's internal failure: its cause helps whoever runs the test, and holds no secret.
		http.Error(w, "time-stamping failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	if granted {
		s.Requests.Add(1)
	} else {
		s.Rejections.Add(1)
	}
	w.Header().Set("Content-Type", "application/timestamp-reply")
	w.Write(resp)
}

// errUnknownHash is the library's refusal of a messageImprint hash algorithm it does not know.
var errUnknownHash = timestamp.ParseError("Time-Stamp request uses unknown hash function")

// check parses a TimeStampReq; ok is false for a query the TSA does not grant, fail then being
// the PKIFailureInfo bit that says why.
func check(query []byte) (req *timestamp.Request, fail timestamp.FailureInfo, ok bool) {
	req, err := timestamp.ParseRequest(query)
	switch {
	case errors.Is(err, errUnknownHash):
		return nil, timestamp.BadAlgorithm, false
	case err != nil: // not DER, trailing data, no hashedMessage
		return nil, timestamp.BadDataFormat, false
	}
	// The library does not expose the version; encoding/asn1 reads the first element of the
	// SEQUENCE and ignores the rest.
	var v struct{ Version int }
	if _, err := asn1.Unmarshal(query, &v); err != nil || v.Version != 1 {
		return nil, timestamp.BadDataFormat, false
	}
	// SHA-1 imprints are refused: Notation never sends them and the library cannot build the
	// ESSCertIDv2 for them. UNCONFIRMED what public TSAs do (many still accept SHA-1).
	if req.HashAlgorithm != crypto.SHA256 && req.HashAlgorithm != crypto.SHA384 && req.HashAlgorithm != crypto.SHA512 {
		return nil, timestamp.BadAlgorithm, false
	}
	if len(req.HashedMessage) != req.HashAlgorithm.Size() {
		return nil, timestamp.BadDataFormat, false
	}
	if req.TSAPolicyOID != nil && !req.TSAPolicyOID.Equal(Policy) {
		return nil, timestamp.UnacceptedPolicy, false
	}
	// RFC 3161 §2.4.1: an extension the server does not recognize, critical or not, gets no token
	// and unacceptedExtension. This TSA recognizes none.
	if len(req.Extensions) > 0 {
		return nil, timestamp.UnacceptedExtension, false
	}
	return req, 0, true
}

// stamp answers a query with a DER TimeStampResp, granted or rejected; err is a failure of the
// TSA itself.
func (s *Server) stamp(query []byte) (resp []byte, granted bool, err error) {
	req, fail, ok := check(query)
	if !ok {
		resp, err := timestamp.CreateErrorResponse(timestamp.Rejection, fail)
		return resp, false, err
	}
	ts := timestamp.Timestamp{
		HashAlgorithm: req.HashAlgorithm, HashedMessage: req.HashedMessage,
		Time: s.now().UTC(), Nonce: req.Nonce, Policy: Policy,
		SerialNumber: big.NewInt(s.serial.Add(1)), Accuracy: time.Second,
		// RFC 3161 §2.4.1: with certReq false the SignedData certificates field MUST be absent.
		// Certificates names the issuer of the ESSCertIDv2 either way; the library leaves all
		// certificates out when AddTSACertificate is false.
		AddTSACertificate: req.Certificates, Certificates: []*x509.Certificate{s.Root},
	}
	resp, err = ts.CreateResponseWithOpts(s.Leaf, s.key, crypto.SHA256)
	return resp, err == nil, err
}
