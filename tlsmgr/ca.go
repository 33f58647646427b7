package tlsmgr

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// File names inside a CA directory written by InitCA.
const (
	CACertFile    = "ca.crt"
	CAKeyFile     = "ca.key"
	GossipKeyFile = "gossip.key"
)

const (
	// caValidityYears is the lifetime of the root written by InitCA.
	caValidityYears = 10
	// backdate is how far before "now" a certificate becomes valid, so that a
	// peer whose clock runs a little behind still accepts it.
	backdate = time.Minute
	// gossipKeySize selects AES-256 for memberlist's keyring.
	gossipKeySize = 32
	// maxFileSize bounds what LoadCA and ReadGossipKey read: a CA file or a
	// gossip key is a few kilobytes at most, so anything larger is a mistake
	// (a wrong path), not something to load into memory.
	maxFileSize = 1 << 20
)

// CA is meshd's built-in certificate authority: a self-signed root whose
// certificate carries the trust domain as its only URI SAN (spiffe://<td>).
type CA struct {
	// Cert is the issuing root: the root of Roots that Key belongs to, or
	// Roots[0] when there is no Key.
	Cert *x509.Certificate
	// Roots is the trust bundle of the mesh, every root of ca.crt in file
	// order: one, or two while a rotation (rotate.go) is under way.
	Roots []*x509.Certificate
	// Key signs leaf SVIDs; nil when the directory holds no ca.key (a node
	// that only verifies peers or loads a certificate issued elsewhere).
	Key crypto.Signer
	// TrustDomain is the trust domain name taken from Cert's URI SAN,
	// e.g. "mesh.example".
	TrustDomain string
}

// InitCA creates dir (mode 0700) if needed and writes a new root CA and a
// gossip key into it: dir/ca.crt (PEM), dir/ca.key (PKCS#8 PEM, mode 0600)
// and dir/gossip.key (32 random bytes, standard base64, one line, mode 0600).
//
// It never overwrites: if any of the three files exists it returns an error
// that wraps fs.ErrExist and names the file, and writes nothing. Losing a CA
// key to an accidental second `meshd ca init` would cut every node off the
// mesh, so refusing is the only safe answer.
func InitCA(dir, trustDomain string) error {
	return initCA(dir, trustDomain, time.Now())
}

func initCA(dir, trustDomain string, now time.Time) error {
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return err
	}
	if dir == "" {
		return errors.New("ca directory is empty")
	}
	names := []string{CACertFile, CAKeyFile, GossipKeyFile}
	for _, name := range names {
		p := filepath.Join(dir, name)
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("refusing to overwrite %s: %w", p, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check %s: %w", p, err)
		}
	}

	// Build everything in memory first so that a failure writes nothing.
	certPEM, keyPEM, err := newRoot(td, now, "")
	if err != nil {
		return err
	}
	gossip := make([]byte, gossipKeySize)
	if _, err := io.ReadFull(rand.Reader, gossip); err != nil {
		return fmt.Errorf("generate gossip key: %w", err)
	}
	gossipLine := []byte(base64.StdEncoding.EncodeToString(gossip) + "\n")

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create ca directory: %w", err)
	}
	contents := [][]byte{certPEM, keyPEM, gossipLine}
	modes := []fs.FileMode{0o644, 0o600, 0o600}
	var written []string
	for i, name := range names {
		p := filepath.Join(dir, name)
		if err := writeExclusive(p, contents[i], modes[i]); err != nil {
			// Another `ca init` may have raced us; undo our part so the
			// directory holds one consistent set, never a mix.
			for _, w := range written {
				_ = os.Remove(w)
			}
			return err
		}
		written = append(written, p)
	}
	return nil
}

// writeExclusive creates p with O_EXCL, so an existing file is never
// replaced even if it appeared after InitCA's first check.
func writeExclusive(p string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("refusing to overwrite %s: %w", p, fs.ErrExist)
		}
		return fmt.Errorf("create %s: %w", p, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(p)
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(p)
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// newRoot makes a root for td; suffix ends its common name, so that the
// roots of a rotation can be told apart in a certificate dump.
func newRoot(td spiffeid.TrustDomain, now time.Time, suffix string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ca key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"meshd"},
			CommonName:   "meshd root CA " + td.Name() + suffix,
		},
		// SPIFFE Trust Domain and Bundle §4: a root of the trust domain may
		// carry the trust domain's ID; LoadCA reads the trust domain from it.
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.AddDate(caValidityYears, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// The root signs leaves directly; no intermediates (RFC 5280 §4.2.1.9).
		MaxPathLen:     0,
		MaxPathLenZero: true,
		// X509-SVID §5.2: signing certificates must have keyCertSign.
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create ca certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode ca key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// newSerial returns a random positive 128-bit serial number; RFC 5280
// §4.1.2.2 allows up to 20 octets and CAs should make serials unpredictable.
func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}

// ReadGossipKey reads and decodes dir/gossip.key: one line of standard
// base64 holding 16, 24 or 32 bytes (AES-128, -192 or -256 for memberlist's
// keyring). Errors name the file and say what is wrong.
func ReadGossipKey(dir string) ([]byte, error) {
	p := filepath.Join(dir, GossipKeyFile)
	data, err := readSmallFile(p)
	if err != nil {
		return nil, err
	}
	key, err := parseGossipKey(data)
	if err != nil {
		return nil, fmt.Errorf("gossip key %s: %w", p, err)
	}
	return key, nil
}

func parseGossipKey(data []byte) ([]byte, error) {
	s := bytes.TrimSpace(data)
	if len(s) == 0 {
		return nil, errors.New("file is empty")
	}
	// encoding/base64 skips CR and LF anywhere; a key is one line, so a
	// line break inside it means the file holds something else.
	if i := bytes.IndexAny(s, " \t\r\n"); i >= 0 {
		return nil, fmt.Errorf("whitespace at byte %d: want one line of standard base64", i)
	}
	key := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Decode(key, s)
	if err != nil {
		return nil, fmt.Errorf("not standard base64: %w", err)
	}
	key = key[:n]
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	default:
		return nil, fmt.Errorf("decodes to %d bytes, want 16, 24 or 32", len(key))
	}
}

// readSmallFile reads at most maxFileSize bytes of p; errors name the file.
func readSmallFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("read %s: larger than %d bytes", p, maxFileSize)
	}
	return data, nil
}

// LoadCA reads dir/ca.crt (required: the trust bundle, one or more root
// certificates) and dir/ca.key (optional: CA.Key is nil when the file does
// not exist). Errors name the file.
func LoadCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := readSmallFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readSmallFile(keyPath)
	if errors.Is(err, fs.ErrNotExist) {
		keyPEM, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseCA(dir, certPEM, keyPEM)
}

// parseCA is LoadCA on bytes already read from dir (keyPEM nil: no key),
// so that a Manager watching the directory parses exactly the bytes it
// took the version of.
func parseCA(dir string, certPEM, keyPEM []byte) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	roots, td, err := parseBundle(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca certificate %s: %w", certPath, err)
	}
	ca := &CA{Cert: roots[0], Roots: roots, TrustDomain: td.Name()}
	if keyPEM == nil {
		return ca, nil
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca key %s: %w", keyPath, err)
	}
	ca.Cert = nil
	for _, c := range roots {
		if publicKeysEqual(key.Public(), c.PublicKey) {
			ca.Cert = c
		}
	}
	if ca.Cert == nil {
		if len(roots) == 1 {
			return nil, fmt.Errorf("ca key %s: does not match the certificate in %s", keyPath, certPath)
		}
		return nil, fmt.Errorf("ca key %s: does not match any of the %d certificates in %s", keyPath, len(roots), certPath)
	}
	ca.Key = key
	return ca, nil
}

// maxRoots bounds the roots of one trust bundle: a rotation needs two at a
// time; more is a file that is not a bundle.
const maxRoots = 8

// parseBundle parses a trust bundle: one or more PEM CERTIFICATE blocks,
// each a CA naming the same trust domain in its URI SAN (see parseCACert),
// none twice. An error names the block (counted from 1) and what is wrong
// with it, so a bad paste into ca.crt is found without a PEM decoder.
func parseBundle(data []byte) ([]*x509.Certificate, spiffeid.TrustDomain, error) {
	var (
		roots []*x509.Certificate
		td    spiffeid.TrustDomain
	)
	rest := data
	for i := 1; ; i++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if len(roots) == maxRoots {
			return nil, spiffeid.TrustDomain{}, fmt.Errorf("more than %d certificates: not a trust bundle", maxRoots)
		}
		cert, btd, err := parseCACert(block)
		if err != nil {
			return nil, spiffeid.TrustDomain{}, fmt.Errorf("PEM block %d: %w", i, err)
		}
		if len(roots) > 0 && btd != td {
			return nil, spiffeid.TrustDomain{}, fmt.Errorf("PEM block %d: trust domain %q, but block 1 is for %q: a bundle holds one trust domain", i, btd.Name(), td.Name())
		}
		for j, r := range roots {
			if r.Equal(cert) {
				return nil, spiffeid.TrustDomain{}, fmt.Errorf("PEM block %d: the same certificate as block %d", i, j+1)
			}
		}
		roots, td = append(roots, cert), btd
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		if len(roots) == 0 {
			return nil, spiffeid.TrustDomain{}, errors.New("no PEM block found")
		}
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("after PEM block %d: %d bytes that are not PEM", len(roots), len(bytes.TrimSpace(rest)))
	}
	if len(roots) == 0 {
		return nil, spiffeid.TrustDomain{}, errors.New("no PEM block found")
	}
	return roots, td, nil
}

// parseCACert parses one PEM block that must be a CERTIFICATE of a CA
// naming a trust domain in its URI SAN.
func parseCACert(block *pem.Block) (*x509.Certificate, spiffeid.TrustDomain, error) {
	if block.Type != "CERTIFICATE" {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("PEM block is %q, want CERTIFICATE", block.Type)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("parse certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, spiffeid.TrustDomain{}, errors.New("certificate is not a CA")
	}
	if len(cert.URIs) != 1 {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("want exactly one URI SAN spiffe://<trust domain>, found %d", len(cert.URIs))
	}
	id, err := spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("URI SAN %q: %w", cert.URIs[0], err)
	}
	if id.Path() != "" {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("URI SAN %q has a path, want spiffe://<trust domain>", id)
	}
	return cert, id.TrustDomain(), nil
}

// parsePrivateKey accepts one PEM block: PKCS#8 ("PRIVATE KEY", what InitCA
// writes) or SEC 1 ("EC PRIVATE KEY", what `openssl ecparam -genkey` writes).
func parsePrivateKey(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("more than one PEM block: want exactly one private key")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, want PRIVATE KEY (PKCS#8)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
	return signer, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// Issue mints a leaf X.509-SVID for id, a full SPIFFE ID
// ("spiffe://<td>/service/web") in the CA's trust domain with a non-root
// path. The certificate is valid from now-1m (tolerating peers whose clock
// is a little behind) to now+ttl rounded up to a whole second, but never
// past the CA's own expiry; it has
// exactly one URI SAN, KeyUsage digitalSignature, ExtKeyUsage serverAuth and
// clientAuth, and is not a CA (X509-SVID standard §4.1, §4.3).
//
// certPEM holds the leaf only: the root is the trust anchor every peer
// already has, and RFC 8446 §4.4.2 lets a sender omit it. keyPEM is PKCS#8.
func (ca *CA) Issue(id string, ttl time.Duration, now time.Time) (certPEM, keyPEM []byte, err error) {
	return ca.issuePEM(id, ttl, now, svidUsage)
}

// svidUsage is what an X.509-SVID may do: authenticate either end of a TLS
// connection.
var svidUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}

func (ca *CA) issuePEM(id string, ttl time.Duration, now time.Time, usage []x509.ExtKeyUsage) (certPEM, keyPEM []byte, err error) {
	der, keyDER, err := ca.issue(id, ttl, now, usage)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// issue returns the leaf as DER and its key as PKCS#8 DER.
func (ca *CA) issue(id string, ttl time.Duration, now time.Time, usage []x509.ExtKeyUsage) (certDER, keyDER []byte, err error) {
	if ca == nil || ca.Cert == nil {
		return nil, nil, errors.New("ca has no certificate")
	}
	if ca.Key == nil {
		return nil, nil, errors.New("ca has no private key: cannot issue")
	}
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return nil, nil, fmt.Errorf("invalid spiffe id %q: %w", id, err)
	}
	if sid.TrustDomain().Name() != ca.TrustDomain {
		return nil, nil, fmt.Errorf("wrong trust domain: id %q is not in the CA's trust domain %q", id, ca.TrustDomain)
	}
	if sid.Path() == "" {
		return nil, nil, fmt.Errorf("spiffe id %q has no path: a leaf SVID needs a non-root path", id)
	}
	if ttl <= 0 {
		return nil, nil, fmt.Errorf("ttl %v: must be positive", ttl)
	}
	if now.Before(ca.Cert.NotBefore) || !now.Before(ca.Cert.NotAfter) {
		return nil, nil, fmt.Errorf("ca certificate is not valid at %s (valid %s to %s)",
			now.UTC().Format(time.RFC3339), ca.Cert.NotBefore.UTC().Format(time.RFC3339), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	// X.509 times have a resolution of one second (RFC 5280 §4.1.2.5) and
	// crypto/x509 truncates; round up instead, or a 1 s SVID minted at
	// hh:mm:ss.9 would live 100 ms and expire before its half-life renewal.
	notAfter := now.Add(ttl)
	if r := notAfter.Truncate(time.Second); !r.Equal(notAfter) {
		notAfter = r.Add(time.Second)
	}
	if notAfter.After(ca.Cert.NotAfter) {
		// A leaf outliving its issuer would fail verification anyway
		// (RFC 5280 §6.1.3 checks every certificate of the path).
		notAfter = ca.Cert.NotAfter
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"meshd"}},
		URIs:                  []*url.URL{sid.URL()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usage,
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	certDER, err = x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate for %s: %w", id, err)
	}
	keyDER, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return certDER, keyDER, nil
}

// mint issues an SVID for id and returns it parsed and validated by go-spiffe,
// so an SVID this package hands out has passed the library's own checks.
func (ca *CA) mint(id string, ttl time.Duration, now time.Time) (*x509svid.SVID, error) {
	certDER, keyDER, err := ca.issue(id, ttl, now, svidUsage)
	if err != nil {
		return nil, err
	}
	svid, err := x509svid.ParseRaw(certDER, keyDER)
	if err != nil {
		return nil, fmt.Errorf("minted svid for %s: %w", id, err)
	}
	return svid, nil
}

// parseTrustDomain accepts a trust domain name ("mesh.example") or its ID
// ("spiffe://mesh.example").
func parseTrustDomain(s string) (spiffeid.TrustDomain, error) {
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("invalid trust domain %q: %w", s, err)
	}
	if s != td.Name() && s != td.IDString() {
		// TrustDomainFromString drops the path of a full ID silently.
		return spiffeid.TrustDomain{}, fmt.Errorf("invalid trust domain %q: want a name like mesh.example", s)
	}
	return td, nil
}
