package policy

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)

// testCA is a throwaway CA of trust domain td, as meshd ca init makes one.
type ecdsaKey = ecdsa.PrivateKey

type testCA struct {
	t    testing.TB
	td   string
	cert *x509.Certificate
	key  crypto.Signer
	pool *x509.CertPool
}

var serial int64

func newCA(t testing.TB, td string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: td + " root"},
		NotBefore:             testNow.Add(-24 * time.Hour),
		NotAfter:              testNow.Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{t: t, td: td, cert: cert, key: key, pool: pool}
}

// issue makes a leaf for the SPIFFE ID spiffe://<td><path> with key,
// valid from notBefore to notAfter.
func (ca *testCA) issue(id string, key crypto.Signer, notBefore, notAfter time.Time) *x509.Certificate {
	ca.t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		ca.t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		ca.t.Fatal(err)
	}
	return cert
}

func ecKey(t testing.TB) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const signDoc = `version: 3
services:
  web:
    domains: [www.example.com]
    split: {v1: 90, v2: 10}
`

func TestSignVerify(t *testing.T) {
	ca := newCA(t, "example.org")
	for _, kt := range []string{"ecdsa-p256", "ecdsa-p384", "ed25519", "rsa"} {
		t.Run(kt, func(t *testing.T) {
			var key crypto.Signer
			var err error
			switch kt {
			case "ecdsa-p256":
				key = ecKey(t)
			case "ecdsa-p384":
				key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			case "ed25519":
				_, key, err = ed25519.GenerateKey(rand.Reader)
			case "rsa":
				key, err = rsa.GenerateKey(rand.Reader, 2048)
			}
			if err != nil {
				t.Fatal(err)
			}
			leaf := ca.issue("spiffe://example.org/operator/alice", key, testNow.Add(-time.Hour), testNow.Add(time.Hour))
			s, err := Sign([]byte(signDoc), 3, testNow, key, []*x509.Certificate{leaf})
			if err != nil {
				t.Fatal(err)
			}
			b, err := s.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			s2, err := Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			doc, id, err := s2.Verify(ca.pool, "example.org", testNow)
			if err != nil {
				t.Fatal(err)
			}
			if id != "spiffe://example.org/operator/alice" {
				t.Errorf("id = %q", id)
			}
			if doc.Version != 3 || doc.Domains["www.example.com"] != "web" {
				t.Errorf("doc = %+v", doc)
			}
			if !bytes.Equal(s2.Document, []byte(signDoc)) || !s2.SignedAt.Equal(testNow) {
				t.Errorf("envelope changed in JSON: %+v", s2)
			}
		})
	}
}

func TestSignVersionFromEnvelope(t *testing.T) {
	ca := newCA(t, "example.org")
	key := ecKey(t)
	leaf := ca.issue("spiffe://example.org/operator/alice", key, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	doc := []byte("services: {web: {domains: [a.example]}}\n")
	s, err := Sign(doc, 42, testNow, key, []*x509.Certificate{leaf})
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := s.Verify(ca.pool, "example.org", testNow)
	if err != nil {
		t.Fatal(err)
	}
	if d.Version != 42 {
		t.Errorf("Version = %d, want the envelope's 42", d.Version)
	}
}

func TestSignRefuses(t *testing.T) {
	ca := newCA(t, "example.org")
	key := ecKey(t)
	leaf := ca.issue("spiffe://example.org/operator/alice", key, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	svc := ca.issue("spiffe://example.org/service/web", key, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	chain := []*x509.Certificate{leaf}
	for _, tc := range []struct {
		name    string
		doc     string
		version uint64
		key     crypto.Signer
		chain   []*x509.Certificate
		want    string
	}{
		{"version 0", signDoc, 0, key, chain, "version must be at least 1"},
		{"doc version differs", signDoc, 4, key, chain, "the document says version 3, signing as 4"},
		{"invalid doc", "services: {Web: {}}\n", 1, key, chain, `policy.yaml:1:12: services: service name "Web" is not a DNS label`},
		{"other key", signDoc, 3, ecKey(t), chain, "chain[0] is not the key's certificate"},
		{"no chain", signDoc, 3, key, nil, "want 1 to 8 certificates, got 0"},
		{"service identity", signDoc, 3, key, []*x509.Certificate{svc}, "not an operator identity: spiffe://example.org/service/web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Sign([]byte(tc.doc), tc.version, testNow, tc.key, tc.chain)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestVerifyRefuses(t *testing.T) {
	ca := newCA(t, "example.org")
	other := newCA(t, "example.org")
	foreign := newCA(t, "evil.org")
	key := ecKey(t)
	valid := func(c *testCA, id string) *x509.Certificate {
		return c.issue(id, key, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	}
	alice := valid(ca, "spiffe://example.org/operator/alice")
	good, err := Sign([]byte(signDoc), 3, testNow, key, []*x509.Certificate{alice})
	if err != nil {
		t.Fatal(err)
	}
	// forge puts another certificate of the same key in front of good's
	// signature, as an attacker holding that certificate would.
	forge := func(cert *x509.Certificate) *Signed {
		s := *good
		s.Chain = [][]byte{cert.Raw}
		return &s
	}
	tamper := func(f func(*Signed)) *Signed {
		s := *good
		s.Document = bytes.Clone(good.Document)
		f(&s)
		return &s
	}
	for _, tc := range []struct {
		name        string
		s           *Signed
		trustDomain string
		now         time.Time
		want        error
		msg         string
	}{
		{"other CA", forge(valid(other, "spiffe://example.org/operator/alice")), "example.org", testNow, ErrChain, "chain not to the bundle"},
		{"service identity", forge(valid(ca, "spiffe://example.org/service/web")), "example.org", testNow, ErrNotOperator, "not an operator identity: spiffe://example.org/service/web"},
		{"gateway identity", forge(valid(ca, "spiffe://example.org/gateway/eu/n1")), "example.org", testNow, ErrNotOperator, "not an operator identity"},
		{"operator without name", forge(valid(ca, "spiffe://example.org/operator/")), "example.org", testNow, ErrNotOperator, "not an operator identity"},
		{"operator sub-path", forge(valid(ca, "spiffe://example.org/operator/a/b")), "example.org", testNow, ErrNotOperator, "not an operator identity"},
		{"wrong trust domain in cert", forge(valid(foreign, "spiffe://evil.org/operator/alice")), "example.org", testNow, ErrChain, "chain not to the bundle"},
		{"other trust domain, same CA", forge(valid(ca, "spiffe://other.org/operator/alice")), "example.org", testNow, ErrTrustDomain, `wrong trust domain: spiffe://other.org/operator/alice is of trust domain "other.org", want "example.org"`},
		{"not spiffe", forge(valid(ca, "https://example.org/operator/alice")), "example.org", testNow, ErrNotOperator, `"https://example.org/operator/alice" is not a SPIFFE ID`},
		{"wrong trust domain asked", good, "other.org", testNow, ErrTrustDomain, `wrong trust domain: spiffe://example.org/operator/alice is of trust domain "example.org", want "other.org"`},
		{"expired", good, "example.org", testNow.Add(2 * time.Hour), ErrExpired, "expired"},
		{"not yet valid", good, "example.org", testNow.Add(-2 * time.Hour), ErrExpired, "is before"},
		{"tampered document", tamper(func(s *Signed) { s.Document[len(s.Document)-3] = '2' }), "example.org", testNow, ErrBadSignature, "bad signature by spiffe://example.org/operator/alice"},
		{"tampered version", tamper(func(s *Signed) { s.Version = 4 }), "example.org", testNow, ErrBadSignature, "bad signature"},
		{"tampered signed_at", tamper(func(s *Signed) { s.SignedAt = s.SignedAt.Add(time.Nanosecond) }), "example.org", testNow, ErrBadSignature, "bad signature"},
		{"tampered signature", tamper(func(s *Signed) { s.Signature = bytes.Clone(s.Signature); s.Signature[10] ^= 1 }), "example.org", testNow, ErrBadSignature, "bad signature"},
		{"no chain", tamper(func(s *Signed) { s.Chain = nil }), "example.org", testNow, ErrUnknownSigner, "unknown signer: no certificate"},
		{"garbage certificate", tamper(func(s *Signed) { s.Chain = [][]byte{[]byte("junk")} }), "example.org", testNow, ErrUnknownSigner, "unknown signer: certificate 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, id, err := tc.s.Verify(ca.pool, tc.trustDomain, tc.now)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.msg)
			}
			if doc != nil || id != "" {
				t.Errorf("refused envelope still returned %v, %q", doc, id)
			}
		})
	}
	if _, _, err := good.Verify(nil, "example.org", testNow); !errors.Is(err, ErrChain) {
		t.Errorf("nil roots: err = %v, want %v (never the system roots)", err, ErrChain)
	}
}

// TestVerifyInvalidDocument: a valid signature over a document that
// does not parse, or whose version: is not the envelope's, is refused.
// Sign never makes one, so the test signs the message itself.
func TestVerifyInvalidDocument(t *testing.T) {
	ca := newCA(t, "example.org")
	key := ecKey(t)
	leaf := ca.issue("spiffe://example.org/operator/alice", key, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	for _, tc := range []struct {
		doc     string
		version uint64
		msg     string
	}{
		{"services: {web: {bogus: 1}}\n", 1, `document invalid: policy.yaml:1:18: services.web: unknown field "bogus"`},
		{"version: 2\n", 3, "document invalid: the document says version 2, the envelope 3"},
	} {
		sig := signRaw(t, key, signedMessage(tc.version, testNow, []byte(tc.doc)))
		s := &Signed{Version: tc.version, SignedAt: testNow, Document: []byte(tc.doc), Chain: [][]byte{leaf.Raw}, Signature: sig}
		_, _, err := s.Verify(ca.pool, "example.org", testNow)
		if !errors.Is(err, ErrInvalidDocument) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("err = %v, want %q", err, tc.msg)
		}
	}
}

func signRaw(t *testing.T, key crypto.Signer, msg []byte) []byte {
	h := sha256Sum(msg)
	sig, err := key.Sign(rand.Reader, h, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func TestVerifyIntermediate(t *testing.T) {
	root := newCA(t, "example.org")
	ikey := ecKey(t)
	serial++
	itmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, itmpl, root.cert, ikey.Public(), root.key)
	if err != nil {
		t.Fatal(err)
	}
	icert, _ := x509.ParseCertificate(der)
	inter := &testCA{t: t, td: "example.org", cert: icert, key: ikey}
	key := ecKey(t)
	leaf := inter.issue("spiffe://example.org/operator/bob", key, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	s, err := Sign([]byte(signDoc), 3, testNow, key, []*x509.Certificate{leaf, icert})
	if err != nil {
		t.Fatal(err)
	}
	if _, id, err := s.Verify(root.pool, "example.org", testNow); err != nil || id != "spiffe://example.org/operator/bob" {
		t.Fatalf("Verify = %q, %v", id, err)
	}
	s.Chain = s.Chain[:1]
	if _, _, err := s.Verify(root.pool, "example.org", testNow); !errors.Is(err, ErrChain) {
		t.Fatalf("without the intermediate: err = %v, want %v", err, ErrChain)
	}
}

func TestUnmarshalRefuses(t *testing.T) {
	ok := `{"version":1,"signed_at":"2026-03-01T12:00:00Z","document":"eA==","chain":["eA=="],"signature":"eA=="}`
	if _, err := Unmarshal([]byte(ok)); err != nil {
		t.Fatalf("Unmarshal(%s) = %v", ok, err)
	}
	for _, tc := range []struct{ in, msg string }{
		{"", "envelope: EOF"},
		{"[]", "cannot unmarshal array"},
		{`{"version":1,"signed_at":"2026-03-01T12:00:00Z","document":"eA==","chain":["eA=="],"signature":"eA==","extra":1}`, `unknown field "extra"`},
		{ok + "{}", "data after the JSON object"},
		{ok + "}", "data after the JSON object"},
		{`{"version":1}`, "missing signed_at, document, chain, signature"},
		{`{"version":-1}`, "cannot unmarshal number -1"},
		{`{"version":1,"signed_at":"2026-03-01T12:00:00Z","document":"!!","chain":["eA=="],"signature":"eA=="}`, "illegal base64"},
		{strings.Repeat(" ", MaxSignedSize+1), "more than the limit"},
	} {
		_, err := Unmarshal([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("Unmarshal(%.40q) = %v, want %q", tc.in, err, tc.msg)
		}
	}
}

func sha256Sum(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}
