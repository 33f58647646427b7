package tlsmgr

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// testPKI is a throwaway CA for public-certificate tests.
type testPKI struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	pem  []byte
}

func newTestPKI(t testing.TB, cn string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testPKI{cert: cert, key: key, pool: pool, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

var testSerial struct {
	sync.Mutex
	n int64
}

// leafOpts shapes a test leaf.
type leafOpts struct {
	names     []string
	ips       []net.IP
	notBefore time.Time // default now-1h
	notAfter  time.Time // default now+1h
	ocspURL   string
	isCA      bool
}

// leaf returns a PEM chain (leaf, then this CA) and a PKCS#8 PEM key, and
// the leaf's serial.
func (pki *testPKI) leaf(t testing.TB, o leafOpts) (chainPEM, keyPEM []byte, serial *big.Int) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	testSerial.Lock()
	testSerial.n++
	serial = big.NewInt(1000 + testSerial.n)
	testSerial.Unlock()
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		DNSNames:              o.names,
		IPAddresses:           o.ips,
		NotBefore:             o.notBefore,
		NotAfter:              o.notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  o.isCA,
	}
	if o.ocspURL != "" {
		tmpl.OCSPServer = []string{o.ocspURL}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, pki.cert, key.Public(), pki.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	chainPEM = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pki.pem...)
	return chainPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), serial
}

// writePair writes a leaf for names into dir as <base>.crt and <base>.key
// (atomically, as a deploy tool would) and returns the paths and serial.
func (pki *testPKI) writePair(t testing.TB, dir, base string, o leafOpts) (CertFiles, *big.Int) {
	t.Helper()
	chain, key, serial := pki.leaf(t, o)
	f := CertFiles{Cert: filepath.Join(dir, base+".crt"), Key: filepath.Join(dir, base+".key")}
	if err := writeAtomic(f.Key, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeAtomic(f.Cert, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	return f, serial
}

// serveTLS runs an echo server with cfg on 127.0.0.1:0 until the test ends:
// every connection is handshaken, then echoes what it reads.
func serveTLS(t testing.TB, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// dial handshakes with addr; cfg's ServerName is the SNI.
func dial(addr string, cfg *tls.Config) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 30 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// servedCert handshakes with sni (verification off: the tests inspect the
// certificate themselves) and returns the leaf the server presented.
func servedCert(t testing.TB, addr, sni string) (*x509.Certificate, error) {
	t.Helper()
	c, err := dial(addr, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cs := c.ConnectionState()
	if len(cs.PeerCertificates) == 0 {
		return nil, errors.New("no peer certificate")
	}
	return cs.PeerCertificates[0], nil
}

// echo writes msg and reads it back.
func echo(c *tls.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo mismatch: " + string(buf))
	}
	return nil
}

// startPublic starts p and closes it when the test ends.
func startPublic(t testing.TB, p *PublicCerts) *PublicCerts {
	t.Helper()
	if p.Logger == nil {
		p.Logger = discardLogger()
	}
	if err := p.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// String returns everything logged so far.
func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
