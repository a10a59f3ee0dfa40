// Package tsa is an RFC 3161 time-stamping authority for tests and the local stack: it answers
// POST application/timestamp-query with application/timestamp-reply, signing TSTInfo with its
// own key (github.com/digitorus/timestamp, the library behind sigstore's timestamp authority),
// under a certificate whose extended key usage is the critical id-kp-timeStamping that
// Notation's timestamping rules demand.
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
	// Requests counts the queries answered.
	Requests atomic.Int64
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
	resp, err := s.stamp(b)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.Requests.Add(1)
	w.Header().Set("Content-Type", "application/timestamp-reply")
	w.Write(resp)
}

func (s *Server) stamp(query []byte) ([]byte, error) {
	req, err := timestamp.ParseRequest(query)
	if err != nil {
		return nil, errors.New("not a time-stamp query")
	}
	ts := timestamp.Timestamp{
		HashAlgorithm: req.HashAlgorithm, HashedMessage: req.HashedMessage,
		Time: s.now().UTC(), Nonce: req.Nonce, Policy: Policy,
		SerialNumber: big.NewInt(s.serial.Add(1)), Accuracy: time.Second,
		AddTSACertificate: true, Certificates: []*x509.Certificate{s.Root},
	}
	return ts.CreateResponseWithOpts(s.Leaf, s.key, crypto.SHA256)
}
