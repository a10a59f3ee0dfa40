package keyvault

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"time"
)

// certificatePolicy is the subset of Key Vault's CertificatePolicy the emulator honours (JSON
// names of the REST API, as azcertificates serializes them).
type certificatePolicy struct {
	KeyProps *struct {
		Exportable *bool  `json:"exportable"`
		Kty        string `json:"kty"`
		KeySize    int    `json:"key_size"`
		Crv        string `json:"crv"`
	} `json:"key_props"`
	SecretProps *struct {
		ContentType string `json:"contentType"`
	} `json:"secret_props"`
	X509Props *struct {
		Subject        string   `json:"subject"`
		Ekus           []string `json:"ekus"`
		KeyUsage       []string `json:"key_usage"`
		ValidityMonths int      `json:"validity_months"`
	} `json:"x509_props"`
	Issuer *struct {
		Name string `json:"name"`
	} `json:"issuer"`
}

type createCertificateRequest struct {
	Policy json.RawMessage `json:"policy"`
}

func (s *Server) createCertificate(w http.ResponseWriter, r *http.Request) (int, any, error) {
	name := r.PathValue("name")
	var req createCertificateRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	var p certificatePolicy
	if len(req.Policy) == 0 || json.Unmarshal(req.Policy, &p) != nil || p.X509Props == nil || p.X509Props.Subject == "" {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "a policy with x509_props.subject is required")
	}
	// Key Vault fills a policy's missing fields with defaults the emulator does not model. For
	// these three the default decides what the certificate's secret gives away and who issues
	// the certificate, and Key Vault's is likely less safe than any the emulator would pick:
	// UNCONFIRMED what the service fills in, but Azure PowerShell's
	// New-AzKeyVaultCertificatePolicy makes the key exportable unless -KeyNotExportable is given,
	// and internal/provision reads an unset exportable as exportable. Defaulting to a
	// non-exportable key here would hide a client that forgot the field, so a policy that leaves
	// one out is refused instead, as not emulated.
	switch {
	case p.KeyProps == nil || p.KeyProps.Exportable == nil:
		return 0, nil, notEmulatedDefault("key_props.exportable")
	case p.SecretProps == nil || p.SecretProps.ContentType == "":
		return 0, nil, notEmulatedDefault("secret_props.contentType")
	case p.Issuer == nil || p.Issuer.Name == "":
		return 0, nil, notEmulatedDefault("issuer.name")
	}
	if p.SecretProps.ContentType != "application/x-pem-file" {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "secret content type %q is not emulated (use application/x-pem-file)", p.SecretProps.ContentType)
	}
	if *p.KeyProps.Exportable {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "exportable keys are not emulated: signing keys stay in the vault")
	}
	kty, size, crv := "RSA", 2048, p.KeyProps.Crv
	if p.KeyProps.Kty != "" {
		kty = p.KeyProps.Kty
	}
	if p.KeyProps.KeySize != 0 {
		size = p.KeyProps.KeySize
	}
	subject, err := parseDN(p.X509Props.Subject)
	if err != nil {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "subject: %v", err)
	}
	// Key Vault's default key usage for a certificate without one (UNCONFIRMED beyond the
	// notation-azure-kv docs, which set digitalSignature explicitly because of it). For EC keys
	// the emulator defaults to digitalSignature alone, since Key Vault refuses wrapKey/unwrapKey on
	// EC keys (see ecKeyOps); what Key Vault defaults to for EC is UNCONFIRMED.
	usages := p.X509Props.KeyUsage
	if len(usages) == 0 {
		usages = []string{"digitalSignature", "keyEncipherment"}
		if kty == "EC" || kty == "EC-HSM" {
			usages = []string{"digitalSignature"}
		}
	}
	ku, err := keyUsage(usages)
	if err != nil {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "%v", err)
	}
	ops := keyOpsForUsage(usages)
	var ekus []asn1.ObjectIdentifier
	for _, e := range p.X509Props.Ekus {
		oid, err := parseOID(e)
		if err != nil {
			return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "ekus: %v", err)
		}
		ekus = append(ekus, oid)
	}
	months := p.X509Props.ValidityMonths
	if months <= 0 {
		months = 12
	}
	issuerName := p.Issuer.Name
	var issuer Issuer
	if issuerName != "Self" {
		var ok bool
		if issuer, ok = s.cfg.Issuers[issuerName]; !ok {
			return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "issuer %q is not configured in this vault", issuerName)
		}
	}

	kv, err := s.generateKey(kty, size, crv, ops)
	if err != nil {
		return 0, nil, err
	}
	now := s.cfg.Now()
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: subject,
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.AddDate(0, months, 0),
		KeyUsage: ku, UnknownExtKeyUsage: ekus, BasicConstraintsValid: true,
	}
	parent, signer := tmpl, kv.priv
	// chainTail follows the leaf in the secret: nothing for a self-issued certificate, the
	// issuer's chain for a configured CA (UNCONFIRMED, see Issuer.Chain).
	chainTail := []*x509.Certificate(nil)
	if issuerName != "Self" {
		parent, signer, chainTail = issuer.Cert, issuer.Key, issuer.Chain
		// A CA does not issue beyond its own validity: the leaf ends when the issuer does, if
		// that is sooner (a chain whose leaf outlives its issuer fails path validation after the
		// issuer's NotAfter anyway).
		if issuer.Cert.NotAfter.Before(tmpl.NotAfter) {
			tmpl.NotAfter = issuer.Cert.NotAfter
		}
		if !now.Before(tmpl.NotAfter) {
			return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "issuer %q: its certificate expired at %s", issuerName, issuer.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, kv.priv.Public(), signer)
	if err != nil {
		return 0, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return 0, nil, err
	}
	// The certificate's key is managed by Key Vault (KeyBundle.managed: "If this is a key backing
	// a certificate, then managed will be true", azkeys models.go) and valid when the
	// certificate is: its nbf and exp are the certificate's NotBefore and NotAfter
	// (UNCONFIRMED that Key Vault copies them onto the key; it reports them on the certificate).
	kv.managed = true
	kv.nbf, kv.exp = ptr(leaf.NotBefore.Unix()), ptr(leaf.NotAfter.Unix())
	cv := &certVersion{version: kv.version, chain: append([]*x509.Certificate{leaf}, chainTail...), policy: req.Policy, issuer: issuerName, created: now, pending: s.cfg.PendingPolls}
	s.mu.Lock()
	defer s.mu.Unlock()
	nk := nameKey(name)
	s.storeKeyLocked(name, kv)
	cv.name = kv.name // the case the name was first created in
	s.certs[nk] = append(s.certs[nk], cv)
	if err := s.commitLocked(func() {
		s.unstoreKeyLocked(nk)
		if cs := s.certs[nk][:len(s.certs[nk])-1]; len(cs) == 0 {
			delete(s.certs, nk)
		} else {
			s.certs[nk] = cs
		}
	}); err != nil {
		return 0, nil, err
	}
	// Key Vault answers a creation with 202 and the operation in progress.
	return http.StatusAccepted, s.operation(r, cv, "inProgress"), nil
}

// notEmulatedDefault refuses a certificate policy that leaves field to Key Vault's default.
func notEmulatedDefault(field string) error {
	return kvError(http.StatusBadRequest, "BadParameter", "the certificate policy must give %s: Key Vault's default for it is not emulated", field)
}

// operation is the certificate operation of cv in status, naming the issuer cv was created with.
func (s *Server) operation(r *http.Request, cv *certVersion, status string) map[string]any {
	name := cv.name
	return map[string]any{
		"id":                     vaultURL(r) + "/certificates/" + name + "/pending",
		"issuer":                 map[string]any{"name": cv.issuer},
		"cancellation_requested": false,
		"status":                 status,
		"status_details":         "",
		"target":                 vaultURL(r) + "/certificates/" + name,
		"request_id":             newVersion(),
	}
}

func (s *Server) lookupCert(name, version string) (*certVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vs := s.certs[nameKey(name)]
	if len(vs) == 0 {
		return nil, kvError(http.StatusNotFound, "CertificateNotFound", "A certificate with (name/id) %s was not found in this key vault.", name)
	}
	if version == "" {
		return vs[len(vs)-1], nil
	}
	for _, v := range vs {
		if strings.EqualFold(v.version, version) {
			return v, nil
		}
	}
	return nil, kvError(http.StatusNotFound, "CertificateNotFound", "A certificate with (name/id) %s/%s was not found in this key vault.", name, version)
}

func (s *Server) certificateOperation(w http.ResponseWriter, r *http.Request) (int, any, error) {
	cv, err := s.lookupCert(r.PathValue("name"), "")
	if err != nil {
		return 0, nil, err
	}
	status := "completed"
	s.mu.Lock()
	if cv.pending > 0 {
		cv.pending--
		status = "inProgress"
	}
	s.mu.Unlock()
	return http.StatusOK, s.operation(r, cv, status), nil
}

// certAttributes are the attributes of a certificate and of its secret: nbf and exp are the
// certificate's validity.
func certAttributes(cv *certVersion) map[string]any {
	leaf := cv.chain[0]
	return attributes(true, cv.created, cv.created, ptr(leaf.NotBefore.Unix()), ptr(leaf.NotAfter.Unix()))
}

func (s *Server) getCertificate(w http.ResponseWriter, r *http.Request) (int, any, error) {
	cv, err := s.lookupCert(r.PathValue("name"), r.PathValue("version"))
	if err != nil {
		return 0, nil, err
	}
	name := cv.name
	base := vaultURL(r)
	return http.StatusOK, map[string]any{
		"id":         base + "/certificates/" + name + "/" + cv.version,
		"kid":        base + "/keys/" + name + "/" + cv.version,
		"sid":        base + "/secrets/" + name + "/" + cv.version,
		"x5t":        b64u(sha1Thumbprint(cv.chain[0].Raw)),
		"cer":        base64.StdEncoding.EncodeToString(cv.chain[0].Raw),
		"attributes": certAttributes(cv),
		"policy":     cv.policy,
	}, nil
}

func (s *Server) getSecret(w http.ResponseWriter, r *http.Request) (int, any, error) {
	cv, err := s.lookupCert(r.PathValue("name"), r.PathValue("version"))
	if err != nil {
		return 0, nil, kvError(http.StatusNotFound, "SecretNotFound", "A secret with (name/id) %s was not found in this key vault.", r.PathValue("name"))
	}
	name := cv.name
	if out := r.URL.Query().Get("outContentType"); out != "" && out != "application/x-pem-file" {
		return 0, nil, kvError(http.StatusBadRequest, "BadParameter", "outContentType %q: only application/x-pem-file is supported", out)
	}
	base := vaultURL(r)
	return http.StatusOK, map[string]any{
		"value":       pemChain(cv.chain),
		"contentType": "application/x-pem-file",
		"id":          base + "/secrets/" + name + "/" + cv.version,
		"kid":         base + "/keys/" + name + "/" + cv.version,
		"managed":     true,
		"attributes":  certAttributes(cv),
	}, nil
}

// parseDN parses "CN=x, O=y, C=ZZ" (no escaped separators).
func parseDN(s string) (pkix.Name, error) {
	var n pkix.Name
	if strings.ContainsAny(s, `\"+`) {
		return n, fmt.Errorf("escaped or multi-valued RDNs are not emulated: %q", s)
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || v == "" {
			return n, fmt.Errorf("%q is not KEY=VALUE", part)
		}
		switch strings.ToUpper(strings.TrimSpace(k)) {
		case "CN":
			n.CommonName = v
		case "O":
			n.Organization = append(n.Organization, v)
		case "OU":
			n.OrganizationalUnit = append(n.OrganizationalUnit, v)
		case "C":
			n.Country = append(n.Country, v)
		case "ST", "S":
			n.Province = append(n.Province, v)
		case "L":
			n.Locality = append(n.Locality, v)
		default:
			return n, fmt.Errorf("attribute %q is not emulated", k)
		}
	}
	return n, nil
}

func keyUsage(names []string) (x509.KeyUsage, error) {
	m := map[string]x509.KeyUsage{
		"digitalSignature": x509.KeyUsageDigitalSignature, "nonRepudiation": x509.KeyUsageContentCommitment,
		"keyEncipherment": x509.KeyUsageKeyEncipherment, "dataEncipherment": x509.KeyUsageDataEncipherment,
		"keyAgreement": x509.KeyUsageKeyAgreement, "keyCertSign": x509.KeyUsageCertSign, "cRLSign": x509.KeyUsageCRLSign,
		"encipherOnly": x509.KeyUsageEncipherOnly, "decipherOnly": x509.KeyUsageDecipherOnly,
	}
	var ku x509.KeyUsage
	for _, n := range names {
		u, ok := m[n]
		if !ok {
			return 0, fmt.Errorf("key usage %q is unknown", n)
		}
		ku |= u
	}
	return ku, nil
}

// keyOpsForUsage derives the key_ops of a certificate's key from the policy's x509 key usage:
// digitalSignature gives sign and verify, keyEncipherment wrapKey and unwrapKey, dataEncipherment
// encrypt and decrypt; other usages give no key operation. UNCONFIRMED: Key Vault documents no
// such table. The keyEncipherment row rests on Azure/AzureKeyVault#22, where importing an EC
// certificate was refused for "wrapKey", "unwrapKey" only (so keyEncipherment did not also ask
// for encrypt/decrypt); the dataEncipherment row is the emulator's reading. Deriving fewer
// operations than the service would can only make the emulator refuse more, never less.
func keyOpsForUsage(usages []string) []string {
	ops := []string{}
	add := func(v ...string) {
		for _, op := range v {
			if !slices.Contains(ops, op) {
				ops = append(ops, op)
			}
		}
	}
	for _, u := range usages {
		switch u {
		case "digitalSignature":
			add(opSign, opVerify)
		case "keyEncipherment":
			add(opWrapKey, opUnwrapKey)
		case "dataEncipherment":
			add(opEncrypt, opDecrypt)
		}
	}
	return ops
}

func parseOID(s string) (asn1.ObjectIdentifier, error) {
	var oid asn1.ObjectIdentifier
	for _, p := range strings.Split(s, ".") {
		var n int
		if _, err := fmt.Sscanf(p, "%d", &n); err != nil || n < 0 {
			return nil, fmt.Errorf("%q is not a dotted OID", s)
		}
		oid = append(oid, n)
	}
	if len(oid) < 2 {
		return nil, fmt.Errorf("%q is not a dotted OID", s)
	}
	return oid, nil
}
