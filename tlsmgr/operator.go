package tlsmgr

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The operator key signs what people change in a running mesh (the traffic
// policy that `meshd apply` spreads): a certificate issued by the mesh's CA
// with the SPIFFE ID spiffe://<td>/operator/<name>, which every node
// verifies against its trust bundle. It is not an SVID: its extended key
// usage is code signing only, so it can never authenticate a TLS connection
// to a mesh listener, and a node holding it cannot pose as one.
const (
	OperatorCertFile = "operator.crt"
	OperatorKeyFile  = "operator.key"
	// DefaultOperator is the operator name `meshd ca init` issues for.
	DefaultOperator = "admin"
	// operatorTTL is the lifetime of an operator certificate written to a
	// file; one minted for a single `meshd apply` lives minutes.
	operatorTTL = 365 * 24 * time.Hour
)

var operatorUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}

// OperatorID returns spiffe://<td>/operator/<name>.
func OperatorID(td, name string) (string, error) {
	return meshID(td, "operator", seg{"operator", name})
}

// IssueOperator mints an operator certificate and key for name with the CA,
// valid for ttl (PEM: the leaf, then PKCS#8).
func (ca *CA) IssueOperator(name string, ttl time.Duration, now time.Time) (certPEM, keyPEM []byte, err error) {
	id, err := OperatorID(ca.TrustDomain, name)
	if err != nil {
		return nil, nil, err
	}
	return ca.issuePEM(id, ttl, now, operatorUsage)
}

// WriteOperator issues an operator certificate for name with the CA in dir
// and writes dir/operator.crt and dir/operator.key (mode 0600). It never
// overwrites either file.
func WriteOperator(dir, name string) error {
	ca, err := LoadCA(dir)
	if err != nil {
		return err
	}
	if ca.Key == nil {
		return fmt.Errorf("%s not found in %s: issuing the operator key needs the CA key", CAKeyFile, dir)
	}
	certPEM, keyPEM, err := ca.IssueOperator(name, operatorTTL, time.Now())
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(dir, OperatorCertFile), filepath.Join(dir, OperatorKeyFile)
	if err := writeExclusive(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeExclusive(certPath, certPEM, 0o644); err != nil {
		_ = os.Remove(keyPath)
		return err
	}
	return nil
}

// Operator is a loaded operator key: what signs a policy document.
type Operator struct {
	Key   crypto.Signer
	Chain []*x509.Certificate // leaf first
	ID    string
}

// LoadOperator reads an operator certificate (PEM, the leaf first, then any
// intermediates) and its key, and checks that they match and that the
// certificate names an operator.
func LoadOperator(certPath, keyPath string) (*Operator, error) {
	data, err := readSmallFile(certPath)
	if err != nil {
		return nil, err
	}
	var chain []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("operator certificate %s: PEM block %q, want CERTIFICATE", certPath, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("operator certificate %s: %w", certPath, err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("operator certificate %s: no certificate found", certPath)
	}
	if len(chain[0].URIs) != 1 || !strings.Contains(chain[0].URIs[0].Path, "/operator/") {
		return nil, fmt.Errorf("operator certificate %s: not an operator identity (want one URI SAN spiffe://<td>/operator/<name>)", certPath)
	}
	data, err = readSmallFile(keyPath)
	if err != nil {
		return nil, err
	}
	key, err := parsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("operator key %s: %w", keyPath, err)
	}
	if !publicKeysEqual(key.Public(), chain[0].PublicKey) {
		return nil, fmt.Errorf("operator key %s: does not match the certificate in %s", keyPath, certPath)
	}
	return &Operator{Key: key, Chain: chain, ID: chain[0].URIs[0].String()}, nil
}

// OperatorFromCADir finds the operator key of a CA directory: its
// operator.crt and operator.key when they exist, or else, when the directory
// holds the CA key, an operator certificate minted for this one use, valid
// for ttl.
func OperatorFromCADir(dir string, ttl time.Duration) (*Operator, error) {
	certPath, keyPath := filepath.Join(dir, OperatorCertFile), filepath.Join(dir, OperatorKeyFile)
	if _, err := os.Stat(keyPath); err == nil {
		return LoadOperator(certPath, keyPath)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	ca, err := LoadCA(dir)
	if err != nil {
		return nil, err
	}
	if ca.Key == nil {
		return nil, fmt.Errorf("%s holds neither %s nor %s: give --key with an operator key (meshd ca operator)", dir, OperatorKeyFile, CAKeyFile)
	}
	der, keyDER, err := ca.issue(mustOperatorID(ca.TrustDomain), ttl, time.Now(), operatorUsage)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, err
	}
	return &Operator{Key: k.(crypto.Signer), Chain: []*x509.Certificate{leaf}, ID: leaf.URIs[0].String()}, nil
}

func mustOperatorID(td string) string {
	id, _ := OperatorID(td, DefaultOperator)
	return id
}

// BundlePool returns the trust bundle's roots as a pool, to verify what an
// operator signed.
func (m *Manager) BundlePool() (*x509.CertPool, error) {
	cur := m.cur.Load()
	if cur == nil {
		return nil, errors.New("tlsmgr: manager not started: no bundle")
	}
	pool := x509.NewCertPool()
	for _, c := range cur.bundle.X509Authorities() {
		pool.AddCert(c)
	}
	return pool, nil
}

// BundleSum names the trust bundle: the hex SHA-256 of its roots, first 16
// bytes, "" before Start. Files a node keeps per mesh are named by it.
func (m *Manager) BundleSum() string {
	cur := m.cur.Load()
	if cur == nil {
		return ""
	}
	h := sha256.New()
	for _, c := range cur.bundle.X509Authorities() {
		h.Write(c.Raw)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
