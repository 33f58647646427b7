package pebbletest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// readyTimeout bounds the wait for Pebble's directory to answer.
const readyTimeout = 15 * time.Second

// Pebble is one Pebble ACME server for one test. Its fields are set by New
// and must not be changed.
type Pebble struct {
	// DirURL is the ACME directory URL, for --acme-ca.
	DirURL string
	// MgmtURL is the base URL of Pebble's management API (issuing roots).
	MgmtURL string
	// CARoot is a PEM file with the root that Pebble's API certificate
	// chains to, for --acme-ca-root. It is not the root Pebble issues
	// under: see Roots.
	CARoot string
	// Client trusts CARoot; it talks to the ACME and management APIs.
	Client *http.Client

	t        testing.TB
	bin      string
	dir      string
	certFile string
	keyFile  string
	apiPort  int
	mgmtPort int
	dnsAddr  string
	dns      *dnsServer
	log      syncBuffer
	started  bool
}

// New prepares a Pebble server: its API certificate, its two API ports and
// its DNS server. Nothing validates until Start. Without the pebble binary
// the test is skipped, or failed when the CI environment variable is
// "true".
func New(t testing.TB) *Pebble {
	t.Helper()
	bin, err := exec.LookPath("pebble")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("pebble not found on PATH; CI must install the Debian package \"pebble\"")
		}
		t.Skip("pebble not found on PATH: install the Debian package \"pebble\" to run the ACME tests")
	}
	p := &Pebble{t: t, bin: bin, dir: t.TempDir()}
	p.dns = serveDNS(t)
	p.dnsAddr = p.dns.addr

	// Pebble's own API certificate, from a throwaway CA.
	rootPEM, chainPEM, keyPEM, err := apiCertificate()
	if err != nil {
		t.Fatalf("pebble api certificate: %v", err)
	}
	p.certFile, p.keyFile = filepath.Join(p.dir, "cert.pem"), filepath.Join(p.dir, "key.pem")
	p.CARoot = filepath.Join(p.dir, "api-root.pem")
	for name, data := range map[string][]byte{p.certFile: chainPEM, p.keyFile: keyPEM, p.CARoot: rootPEM} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	p.apiPort, p.mgmtPort = FreePort(t), FreePort(t)
	p.DirURL = fmt.Sprintf("https://127.0.0.1:%d/dir", p.apiPort)
	p.MgmtURL = fmt.Sprintf("https://127.0.0.1:%d", p.mgmtPort)
	p.Client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	t.Cleanup(p.Client.CloseIdleConnections)
	return p
}

// Start runs Pebble, validating HTTP-01 on httpPort and TLS-ALPN-01 on
// tlsPort of 127.0.0.1, and waits until its directory answers. It stops
// Pebble when the test ends (and logs Pebble's output if the test failed).
func (p *Pebble) Start(httpPort, tlsPort int) {
	t := p.t
	t.Helper()
	if p.started {
		t.Fatal("pebbletest: Start called twice")
	}
	p.started = true
	cfg, err := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", p.apiPort),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", p.mgmtPort),
		"certificate":                    p.certFile,
		"privateKey":                     p.keyFile,
		"httpPort":                       httpPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}})
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(p.dir, "pebble-config.json")
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(p.bin, "-config", cfgFile, "-dnsserver", p.dnsAddr, "-strict=false")
	cmd.Env = append(os.Environ(),
		"PEBBLE_VA_NOSLEEP=1",      // validate at once instead of after 0-15 s
		"PEBBLE_WFE_NONCEREJECT=0", // no deliberate badNonce retries: keeps tests fast
		"PEBBLE_AUTHZREUSE=0",      // every order validates afresh
	)
	cmd.Stdout, cmd.Stderr = &p.log, &p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("pebble log:\n%s", p.Log())
		}
	})
	deadline := time.Now().Add(readyTimeout)
	for {
		res, err := p.Client.Get(p.DirURL)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-exited:
			t.Fatalf("pebble exited early:\n%s", p.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble not ready after %v (last error %v):\n%s", readyTimeout, err, p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Start is New followed by Start, for tests whose listeners are bound
// before Pebble runs.
func Start(t testing.TB, httpPort, tlsPort int) *Pebble {
	t.Helper()
	p := New(t)
	p.Start(httpPort, tlsPort)
	return p
}

// RootPEM fetches the root Pebble issues under, as PEM. Pebble makes a new
// one each run, so it is only known after Start.
func (p *Pebble) RootPEM() []byte {
	p.t.Helper()
	res, err := p.Client.Get(p.MgmtURL + "/roots/0")
	if err != nil {
		p.t.Fatalf("fetch pebble root: %v", err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil || res.StatusCode != http.StatusOK {
		p.t.Fatalf("pebble root: status %s, err %v, body %q", res.Status, err, data)
	}
	return data
}

// Roots is RootPEM as a pool, for verifying certificates Pebble issued.
func (p *Pebble) Roots() *x509.CertPool {
	p.t.Helper()
	data := p.RootPEM()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		p.t.Fatalf("pebble root: no certificate in %q", data)
	}
	return pool
}

// Log returns everything Pebble has written so far.
func (p *Pebble) Log() string { return p.log.String() }

// LogCount counts the occurrences of s in Pebble's output, e.g. of "orders
// in the db", which Pebble logs once for every new order.
func (p *Pebble) LogCount(s string) int { return strings.Count(p.log.String(), s) }

// DNSQueries returns the names Pebble asked its DNS server about, lower
// case, in order: a name it never asked about was never validated.
func (p *Pebble) DNSQueries() []string { return p.dns.names() }

// FreePort returns a loopback TCP port that was free a moment ago. Pebble
// is a separate process and cannot be handed a listener, so its ports,
// and the ports it validates against when those belong to another
// process, are picked this way; a caller must expect a lost race.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a concurrency-safe sink for Pebble's output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// apiCertificate makes a CA and a certificate for Pebble's API on
// 127.0.0.1 and localhost; it returns the CA as PEM, the chain (leaf then
// CA) and the leaf's PKCS#8 key.
func apiCertificate() (rootPEM, chainPEM, keyPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pebbletest API CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "pebble"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	rootPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	chainPEM = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), rootPEM...)
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return rootPEM, chainPEM, keyPEM, nil
}
