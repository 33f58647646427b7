package tlsmgr

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Files of the internal public CA, in DataDir/InternalCADir.
const (
	InternalCADir      = "internal-ca"
	InternalRootFile   = "root.crt"
	InternalRootKey    = "root.key"
	internalRootName   = "meshd internal public CA"
	internalLeafLife   = 7 * 24 * time.Hour
	maxInternalEntries = 10000
)

// InternalRoot returns the PEM root certificate of the internal public CA
// in dataDir (DataDir/internal-ca/root.crt), the certificate to trust in a
// browser for SourceInternal; it backs `meshd ca root --data-dir DIR`. It
// only reads: before the first node start with the internal source there is
// no CA, and the error wraps fs.ErrNotExist.
func InternalRoot(dataDir string) ([]byte, error) {
	if dataDir == "" {
		return nil, errors.New("data directory is empty")
	}
	p := filepath.Join(dataDir, InternalCADir, InternalRootFile)
	data, err := readSmallFile(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no internal CA in %s yet (a node creates it on its first start with --tls internal): %w", dataDir, err)
		}
		return nil, err
	}
	if _, err := parseInternalRoot(data); err != nil {
		return nil, fmt.Errorf("internal root %s: %w", p, err)
	}
	return data, nil
}

func parseInternalRoot(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("certificate is not a CA")
	}
	return cert, nil
}

// internalIssuer issues leaf certificates on demand, in memory, for hosts
// Allow accepts.
type internalIssuer struct {
	p    *PublicCerts
	root *x509.Certificate
	key  crypto.Signer

	mu      sync.Mutex
	entries map[string]*internalEntry
}

type internalEntry struct {
	cert    *tls.Certificate // nil until the first issuance completes
	renewAt time.Time
	call    *issueCall // non-nil while an issuance runs
}

type issueCall struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

func (p *PublicCerts) startInternal() error {
	root, key, err := loadOrCreateInternalCA(filepath.Join(p.DataDir, InternalCADir), p.clock())
	if err != nil {
		return err
	}
	ii := &internalIssuer{p: p, root: root, key: key, entries: map[string]*internalEntry{}}
	def, err := newDefaultCert(ii.issue, p.clock())
	if err != nil {
		return fmt.Errorf("default certificate: %w", err)
	}
	p.internal, p.fallback = ii, def
	p.logger().Info("public certificates ready", "source", SourceInternal,
		"ca", filepath.Join(p.DataDir, InternalCADir, InternalRootFile), "ca_not_after", root.NotAfter)
	return nil
}

// loadOrCreateInternalCA loads dir/root.crt and dir/root.key, creating them
// when dir does not exist. Creation writes both files into a temporary
// directory next to dir and renames it into place: the rename fails if dir
// appeared meanwhile (another node process on the same DataDir), and that
// process's CA is then loaded, so the two never end up with different CAs.
func loadOrCreateInternalCA(dir string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := createInternalCA(dir, now); err != nil {
			return nil, nil, err
		}
	}
	certPath, keyPath := filepath.Join(dir, InternalRootFile), filepath.Join(dir, InternalRootKey)
	data, err := readSmallFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	root, err := parseInternalRoot(data)
	if err != nil {
		return nil, nil, fmt.Errorf("internal root %s: %w", certPath, err)
	}
	data, err = readSmallFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	key, err := parsePrivateKey(data)
	if err != nil {
		return nil, nil, fmt.Errorf("internal root key %s: %w", keyPath, err)
	}
	if !publicKeysEqual(key.Public(), root.PublicKey) {
		return nil, nil, fmt.Errorf("internal root key %s does not match %s", keyPath, certPath)
	}
	if !now.Before(root.NotAfter) {
		return nil, nil, fmt.Errorf("internal root %s expired at %s: move %s away to create a new CA", certPath, root.NotAfter.UTC().Format(time.RFC3339), dir)
	}
	return root, key, nil
}

func createInternalCA(dir string, now time.Time) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp*")
	if err != nil {
		return fmt.Errorf("create internal ca: %w", err)
	}
	defer os.RemoveAll(tmp) // after a successful rename there is nothing left
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate internal ca key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// A name of its own and no URI SAN: nothing about it is a SPIFFE
		// trust domain, so trusting it grants nothing inside the mesh.
		Subject:               pkix.Name{Organization: []string{"meshd"}, CommonName: internalRootName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.AddDate(caValidityYears, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0, // signs leaves directly (RFC 5280 §4.2.1.9)
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("create internal ca certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode internal ca key: %w", err)
	}
	if err := writeExclusive(filepath.Join(tmp, InternalRootKey), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	if err := writeExclusive(filepath.Join(tmp, InternalRootFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(dir); statErr == nil {
			return nil // another process created it first; load theirs
		}
		return fmt.Errorf("create internal ca: %w", err)
	}
	return nil
}

// get returns the certificate for serverName, issuing one when there is
// none or the current one is due for renewal (two thirds into its life).
// Concurrent handshakes for one host share one issuance; while a renewal
// runs, the others keep getting the current, still valid certificate.
func (ii *internalIssuer) get(ctx context.Context, serverName string) (*tls.Certificate, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	host, err := normalizeHost(serverName)
	if err != nil {
		return nil, fmt.Errorf("tlsmgr: no certificate for server name %q: %w", serverName, err)
	}
	now := ii.p.clock()
	ii.mu.Lock()
	e := ii.entries[host]
	if e != nil && e.cert != nil && now.Before(e.renewAt) {
		ii.mu.Unlock()
		return e.cert, nil
	}
	if e != nil && e.call != nil {
		cur, call := e.cert, e.call
		ii.mu.Unlock()
		if cur != nil && now.Before(cur.Leaf.NotAfter) {
			return cur, nil
		}
		select {
		case <-call.done:
			return call.cert, call.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if e == nil {
		if len(ii.entries) >= maxInternalEntries {
			ii.evictLocked()
		}
		e = &internalEntry{}
		ii.entries[host] = e
	}
	call := &issueCall{done: make(chan struct{})}
	e.call = call
	ii.mu.Unlock()

	call.cert, call.err = ii.issueAllowed(ctx, host, now)

	ii.mu.Lock()
	e.call = nil
	if call.err != nil {
		// Forget the host: a refused name leaves nothing behind, and a
		// failed renewal is retried by the next handshake.
		if ii.entries[host] == e {
			delete(ii.entries, host)
		}
	} else {
		e.cert = call.cert
		life := call.cert.Leaf.NotAfter.Sub(now)
		e.renewAt = now.Add(life * 2 / 3)
	}
	ii.mu.Unlock()
	close(call.done)
	return call.cert, call.err
}

// evictLocked drops one idle entry (map order is random) so the cache stays
// bounded even if Allow accepts very many names.
func (ii *internalIssuer) evictLocked() {
	for host, e := range ii.entries {
		if e.call == nil {
			delete(ii.entries, host)
			return
		}
	}
}

func (ii *internalIssuer) issueAllowed(ctx context.Context, host string, now time.Time) (*tls.Certificate, error) {
	if err := ii.p.Allow(ctx, host); err != nil {
		ii.p.logger().Debug("public certificate refused", "source", SourceInternal, "host", host, "err", err)
		return nil, fmt.Errorf("tlsmgr: no certificate for %q: %w", host, err)
	}
	cert, err := ii.issue(host, now)
	if err != nil {
		ii.p.logger().Error("internal certificate issuance failed", "host", host, "err", err)
		return nil, err
	}
	ii.p.logger().Info("internal certificate issued", "host", host, "serial", cert.Leaf.SerialNumber.Text(16), "not_after", cert.Leaf.NotAfter)
	return cert, nil
}

// issue signs a serverAuth leaf for host with the internal CA: ECDSA
// P-256, valid from now-1m to now+7d (never past the root). The chain holds
// the leaf only: the root is the trust anchor clients were given (RFC 8446
// §4.4.2 allows omitting it).
func (ii *internalIssuer) issue(host string, now time.Time) (*tls.Certificate, error) {
	return signLeaf(host, now, ii.root, ii.key)
}

// signLeaf makes a serverAuth leaf for host, valid from now-1m to now+7d,
// signed by parent and parentKey (never valid past parent), or self-signed
// when parent is nil.
func signLeaf(host string, now time.Time, parent *x509.Certificate, parentKey crypto.Signer) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(internalLeafLife)
	if parent != nil && notAfter.After(parent.NotAfter) {
		notAfter = parent.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              []string{host},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", host, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate for %s: %w", host, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
