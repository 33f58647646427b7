package policy

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Signed is a policy document as it travels by gossip: the YAML exactly
// as the operator wrote it, signed by the operator's key. Every node
// verifies it before it applies it.
type Signed struct {
	Version   uint64    `json:"version"`
	SignedAt  time.Time `json:"signed_at"`
	Document  []byte    `json:"document"`  // the YAML exactly as written
	Chain     [][]byte  `json:"chain"`     // DER, leaf (operator) first, then intermediates
	Signature []byte    `json:"signature"` // over signedMessage
}

// MaxSignedSize is the largest envelope Unmarshal reads, in bytes of JSON.
const MaxSignedSize = 512 << 10

const maxChain = 8 // certificates: the operator's and its intermediates

// The reasons Verify refuses an envelope; test with errors.Is.
var (
	ErrUnknownSigner   = errors.New("unknown signer")
	ErrChain           = errors.New("chain not to the bundle")
	ErrNotOperator     = errors.New("not an operator identity")
	ErrTrustDomain     = errors.New("wrong trust domain")
	ErrExpired         = errors.New("expired") // or not yet valid
	ErrBadSignature    = errors.New("bad signature")
	ErrInvalidDocument = errors.New("document invalid")
)

// signContext separates policy signatures from every other use of an
// operator key: a signature over a policy can never be replayed as a
// signature over anything else, nor the other way round.
const signContext = "meshd policy document v1\x00"

// signedMessage is what the signature covers: the context, the version,
// the signing time and the document's SHA-256, at fixed widths so that
// no two envelopes share a message.
func signedMessage(version uint64, at time.Time, doc []byte) []byte {
	sum := sha256.Sum256(doc)
	b := make([]byte, 0, len(signContext)+8+8+4+len(sum))
	b = append(b, signContext...)
	b = binary.BigEndian.AppendUint64(b, version)
	b = binary.BigEndian.AppendUint64(b, uint64(at.Unix()))
	b = binary.BigEndian.AppendUint32(b, uint32(at.Nanosecond()))
	return append(b, sum[:]...)
}

// algorithm is the one signature scheme meshd uses for a key type, so
// the envelope need not (and an attacker cannot) choose one.
func algorithm(pub crypto.PublicKey) (x509.SignatureAlgorithm, error) {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return x509.ECDSAWithSHA256, nil
	case ed25519.PublicKey:
		return x509.PureEd25519, nil
	case *rsa.PublicKey:
		return x509.SHA256WithRSAPSS, nil
	}
	return 0, fmt.Errorf("unsupported key type %T", pub)
}

// Sign checks that doc parses (and that its version:, if any, equals
// version), then signs the version, at and doc's SHA-256, with a context
// string that is only used for policy documents, with key. chain[0]
// must be the key's certificate, an operator identity; the rest are the
// intermediates up to meshd's CA.
func Sign(doc []byte, version uint64, at time.Time, key crypto.Signer, chain []*x509.Certificate) (*Signed, error) {
	if version == 0 {
		return nil, errors.New("policy: sign: version must be at least 1")
	}
	if at.Year() < 1 || at.Year() > 9999 {
		return nil, fmt.Errorf("policy: sign: signing time %v out of range", at)
	}
	d, err := Parse("policy.yaml", doc)
	if err != nil {
		return nil, fmt.Errorf("policy: sign: %w", err)
	}
	if d.Version != 0 && d.Version != version {
		return nil, fmt.Errorf("policy: sign: the document says version %d, signing as %d", d.Version, version)
	}
	if len(chain) == 0 || len(chain) > maxChain {
		return nil, fmt.Errorf("policy: sign: want 1 to %d certificates, got %d", maxChain, len(chain))
	}
	leaf := chain[0]
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return nil, errors.New("policy: sign: chain[0] is not the key's certificate")
	}
	if _, err := operatorID(leaf, ""); err != nil {
		return nil, fmt.Errorf("policy: sign: %w", err)
	}
	alg, err := algorithm(leaf.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("policy: sign: %w", err)
	}
	at = at.Round(0) // no monotonic reading: the time must survive JSON
	msg := signedMessage(version, at, doc)
	var sig []byte
	switch alg {
	case x509.PureEd25519:
		sig, err = key.Sign(rand.Reader, msg, crypto.Hash(0))
	case x509.SHA256WithRSAPSS:
		h := sha256.Sum256(msg)
		sig, err = key.Sign(rand.Reader, h[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	default:
		h := sha256.Sum256(msg)
		sig, err = key.Sign(rand.Reader, h[:], crypto.SHA256)
	}
	if err != nil {
		return nil, fmt.Errorf("policy: sign: %w", err)
	}
	s := &Signed{Version: version, SignedAt: at, Document: bytes.Clone(doc), Signature: sig}
	for _, c := range chain {
		s.Chain = append(s.Chain, bytes.Clone(c.Raw))
	}
	return s, nil
}

var spiffeSegment = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// operatorID checks that the leaf names one operator by its only URI
// SAN, spiffe://<trustDomain>/operator/<name> ("" = any trust domain).
// The identity is the authority here: a certificate of a service or a
// node, though issued by the same CA, cannot sign policy.
func operatorID(leaf *x509.Certificate, trustDomain string) (string, error) {
	if len(leaf.URIs) != 1 {
		return "", fmt.Errorf("%w: the certificate has %d URI SANs, want one SPIFFE ID", ErrNotOperator, len(leaf.URIs))
	}
	u := leaf.URIs[0]
	id := u.String()
	if u.Scheme != "spiffe" || u.Opaque != "" || u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Host == "" {
		return "", fmt.Errorf("%w: %q is not a SPIFFE ID", ErrNotOperator, id)
	}
	if trustDomain != "" && u.Host != trustDomain {
		return "", fmt.Errorf("%w: %s is of trust domain %q, want %q", ErrTrustDomain, id, u.Host, trustDomain)
	}
	name, ok := strings.CutPrefix(u.Path, "/operator/")
	if !ok || !spiffeSegment.MatchString(name) || name == "." || name == ".." || u.RawPath != "" {
		return "", fmt.Errorf("%w: %s (want spiffe://%s/operator/<name>)", ErrNotOperator, id, u.Host)
	}
	if leaf.IsCA {
		return "", fmt.Errorf("%w: %s is a CA certificate", ErrNotOperator, id)
	}
	if leaf.KeyUsage != 0 && leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return "", fmt.Errorf("%w: %s may not sign (no digitalSignature key usage)", ErrNotOperator, id)
	}
	return id, nil
}

// Verify checks the envelope: that its chain leads to one of roots
// (meshd's CA bundle; any extended key usage), that the leaf's one URI
// SAN is spiffe://<trustDomain>/operator/<name>, that the chain is valid
// at now, the signature, and that the document parses and its version:,
// if any, is the envelope's. It returns the parsed Document, its
// Version set from the envelope, and the operator's SPIFFE ID. Each
// refusal wraps one of the Err… reasons.
func (s *Signed) Verify(roots *x509.CertPool, trustDomain string, now time.Time) (*Document, string, error) {
	if roots == nil {
		// x509 would fall back to the system roots: a public CA must
		// never be able to sign meshd policy.
		return nil, "", fmt.Errorf("policy: %w: no trust bundle", ErrChain)
	}
	if len(s.Chain) == 0 {
		return nil, "", fmt.Errorf("policy: %w: no certificate", ErrUnknownSigner)
	}
	if len(s.Chain) > maxChain {
		return nil, "", fmt.Errorf("policy: %w: %d certificates, more than %d", ErrUnknownSigner, len(s.Chain), maxChain)
	}
	certs := make([]*x509.Certificate, len(s.Chain))
	inter := x509.NewCertPool()
	for i, der := range s.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, "", fmt.Errorf("policy: %w: certificate %d: %v", ErrUnknownSigner, i, err)
		}
		certs[i] = c
		if i > 0 {
			inter.AddCert(c)
		}
	}
	leaf := certs[0]
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		if inv := (x509.CertificateInvalidError{}); errors.As(err, &inv) && inv.Reason == x509.Expired {
			return nil, "", fmt.Errorf("policy: %w: %v", ErrExpired, err)
		}
		return nil, "", fmt.Errorf("policy: %w: %v", ErrChain, err)
	}
	id, err := operatorID(leaf, trustDomain)
	if err != nil {
		return nil, "", fmt.Errorf("policy: %w", err)
	}
	alg, err := algorithm(leaf.PublicKey)
	if err != nil {
		return nil, "", fmt.Errorf("policy: %w: %v", ErrUnknownSigner, err)
	}
	if err := leaf.CheckSignature(alg, signedMessage(s.Version, s.SignedAt, s.Document), s.Signature); err != nil {
		return nil, "", fmt.Errorf("policy: %w by %s: %v", ErrBadSignature, id, err)
	}
	if s.Version == 0 {
		return nil, "", fmt.Errorf("policy: %w: version 0", ErrInvalidDocument)
	}
	doc, err := Parse("policy.yaml", s.Document)
	if err != nil {
		return nil, "", fmt.Errorf("policy: %w: %w", ErrInvalidDocument, err)
	}
	if doc.Version != 0 && doc.Version != s.Version {
		return nil, "", fmt.Errorf("policy: %w: the document says version %d, the envelope %d", ErrInvalidDocument, doc.Version, s.Version)
	}
	doc.Version = s.Version
	return doc, id, nil
}

// Marshal encodes the envelope as JSON, as it goes into gossip.
func (s *Signed) Marshal() ([]byte, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("policy: marshal: %w", err)
	}
	return b, nil
}

// Unmarshal decodes an envelope from JSON: at most MaxSignedSize bytes,
// one object, no unknown field, every field present. It does not
// verify it.
func Unmarshal(b []byte) (*Signed, error) {
	if len(b) > MaxSignedSize {
		return nil, fmt.Errorf("policy: envelope is %d bytes, more than the limit of %d", len(b), MaxSignedSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var s Signed
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("policy: envelope: %w", err)
	}
	if len(bytes.TrimSpace(b[dec.InputOffset():])) > 0 {
		return nil, errors.New("policy: envelope: data after the JSON object")
	}
	var missing []string
	if s.Version == 0 {
		missing = append(missing, "version")
	}
	if s.SignedAt.IsZero() {
		missing = append(missing, "signed_at")
	}
	if len(s.Document) == 0 {
		missing = append(missing, "document")
	}
	if len(s.Chain) == 0 {
		missing = append(missing, "chain")
	}
	if len(s.Signature) == 0 {
		missing = append(missing, "signature")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("policy: envelope: missing %s", strings.Join(missing, ", "))
	}
	if len(s.Document) > MaxDocumentSize {
		return nil, fmt.Errorf("policy: envelope: document is %d bytes, more than the limit of %d", len(s.Document), MaxDocumentSize)
	}
	if len(s.Chain) > maxChain {
		return nil, fmt.Errorf("policy: envelope: %d certificates, more than the limit of %d", len(s.Chain), maxChain)
	}
	return &s, nil
}
