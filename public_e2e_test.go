package main

// Process end-to-end tests of the edge's public front door: TLS from the
// three certificate sources (files chosen by SNI and reloaded on SIGHUP,
// the internal CA, ACME against Pebble), HTTP/1.1 and HTTP/2 over TLS
// (Go's client and curl), HTTP/3 (quic-go's client) with Alt-Svc, h2spec
// against the real listener, the public HTTP listener's redirects,
// hardening rules with small limits, and HTTP/2 abuse (rapid reset,
// malformed bodies) with a normal client served throughout. One mesh (a CA, a gateway, a sidecar
// in front of an app) serves every edge; each scenario starts its own edge
// process with the flags it tests.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/meshd/meshd/tlsmgr/pebbletest"
)

// pubDomains are the public host names the sidecar publishes for its
// service "web" besides web.localhost. "localhost" is there for h2spec,
// which sends its -h value as SNI and :authority and must resolve it
// without a DNS server of its own.
var pubDomains = []string{"www.example.test", "api.example.test", "localhost"}

// pubMesh is the mesh every edge of these tests forwards to.
type pubMesh struct {
	caDir string
	gw    *proc
	sc    *proc
	app   *app
}

func startPubMesh(t *testing.T) *pubMesh {
	t.Helper()
	m := &pubMesh{caDir: filepath.Join(t.TempDir(), "ca")}
	if out, err := exec.Command(meshdBin, "ca", "init", "--trust-domain", "public.meshd", "--dir", m.caDir).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	m.gw = startNode(t, "pub-gw", append(m.common(), "--role", "gateway", "--region", "eu")...)
	m.app = startApp(t, "web", "pub-web-1", "eu")
	m.sc = startNode(t, "pub-web-1", append(m.common(), "--role", "sidecar", "--region", "eu", "--service", "web",
		"--domains", strings.Join(pubDomains, ","), "--upstream", m.app.addr(), "--outbound", "127.0.0.1:0",
		"--join", m.gw.addr("gossip"), "--health-interval", "300ms")...)
	return m
}

func (m *pubMesh) common() []string {
	return []string{"--ca-dir", m.caDir, "--listen", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--wan-gossip-addr", "127.0.0.1:0"}
}

// edge starts an edge in the mesh's global pool; it fails the test if the
// process does not start.
func (m *pubMesh) edge(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p, err := m.tryEdge(t, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tryEdge is edge returning the failure instead, for callers that retry
// a lost race for a port.
func (m *pubMesh) tryEdge(t *testing.T, name string, args ...string) (*proc, error) {
	t.Helper()
	all := append(append(m.common(), "--role", "edge", "--region", "eu", "--wan-join", m.gw.addr("wan-gossip")), args...)
	p, err := tryStartNode(t, name, all...)
	if err == nil {
		t.Cleanup(func() {
			if t.Failed() {
				alive := "running"
				select {
				case <-p.done:
					alive = fmt.Sprintf("exited: %v", p.cmd.ProcessState)
				default:
				}
				t.Logf("%s (%s) log:\n%s", name, alive, p.logs())
			}
		})
	}
	return p, err
}

// logCount counts the JSON log records of p with msg whose text also
// contains every one of subs.
func (p *proc) logCount(msg string, subs ...string) int {
	n := 0
	for _, line := range strings.Split(p.logs(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != msg {
			continue
		}
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			n++
		}
	}
	return n
}

// pubClient is an HTTPS client that connects to addr whatever the URL's
// host (as curl --resolve does), from source address src if not empty,
// trusting roots, and speaking only HTTP/2 (h2) or only HTTP/1.1.
func pubClient(addr, src string, roots *x509.CertPool, h2 bool) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	var protos http.Protocols
	if h2 {
		protos.SetHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig:     &tls.Config{RootCAs: roots},
		Protocols:           &protos,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// pubDo sends a request and reads the whole answer.
func pubDo(c *http.Client, method, url string, body []byte) (*http.Response, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// pubEcho is the part of the app's echo answer these tests read.
type pubEcho struct {
	Service, Instance, Host string
	Via                     []string
	XForwardedProto         string `json:"x_forwarded_proto"`
}

// wantEcho checks that an answer is the web app's 200, forwarded with
// the given X-Forwarded-Proto.
func wantEcho(resp *http.Response, body []byte, proto string) error {
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s: %.200s", resp.Status, body)
	}
	var e pubEcho
	if err := json.Unmarshal(body, &e); err != nil {
		return fmt.Errorf("not the app's echo: %v: %.200s", err, body)
	}
	if e.Service != "web" || e.XForwardedProto != proto {
		return fmt.Errorf("answered by %+v, want service web with X-Forwarded-Proto %s", e, proto)
	}
	return nil
}

// waitServed polls url until the edge forwards it to the app: the edge has
// learned of the service from gossip.
func waitServed(t *testing.T, c *http.Client, url, proto string) {
	t.Helper()
	eventually(t, 20*time.Second, "edge serves "+url, func() error {
		resp, body, err := pubDo(c, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		return wantEcho(resp, body, proto)
	})
}

// pubPort returns the port of a host:port.
func pubPort(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// pubPKI is a throwaway CA for the --tls files certificates.
type pubPKI struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	pem   []byte
	pool  *x509.CertPool
	mu    sync.Mutex
	nextN int64
}

func newPubPKI(t *testing.T) *pubPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meshd e2e public CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
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
	return &pubPKI{cert: cert, key: key, pool: pool, nextN: 100,
		pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// writePair issues a leaf for names and writes dir/base.crt (leaf, then
// the CA) and dir/base.key, each by rename so a reader never sees half a
// file. It returns the two paths and the leaf's serial.
func (pki *pubPKI) writePair(t *testing.T, dir, base string, names ...string) (certFile, keyFile string, serial *big.Int) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pki.mu.Lock()
	pki.nextN++
	serial = big.NewInt(pki.nextN)
	pki.mu.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, pki.cert, key.Public(), pki.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key")
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pki.pem...)
	pubWriteFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	pubWriteFile(t, certFile, chain)
	return certFile, keyFile, serial
}

// pubWriteFile replaces name atomically, as a deploy tool would.
func pubWriteFile(t *testing.T, name string, data []byte) {
	t.Helper()
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, name); err != nil {
		t.Fatal(err)
	}
}

// handshake connects to addr with sni and returns the leaf the edge chose
// (verified against roots unless roots is nil).
func handshake(addr, sni string, roots *x509.CertPool) (*x509.Certificate, error) {
	cfg := &tls.Config{ServerName: sni, RootCAs: roots, InsecureSkipVerify: roots == nil}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// curlGet runs curl against https://host:port/ resolved to 127.0.0.1,
// trusting caFile, and returns the HTTP version, the status and the
// response headers and body as curl printed them.
func curlGet(t *testing.T, proto, host, port, caFile string) (version, status, out string) {
	t.Helper()
	bin, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("curl not found on PATH; CI must install it")
		}
		t.Skip("curl not found on PATH")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-sS", "--max-time", "10", proto, "--resolve", host+":"+port+":127.0.0.1",
		"--cacert", caFile, "-D", "-", "-w", "\n%{http_version} %{http_code}", "https://"+host+":"+port+"/")
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", proto, err, b)
	}
	s := strings.TrimSpace(string(b))
	i := strings.LastIndexByte(s, '\n')
	version, status, _ = strings.Cut(s[i+1:], " ")
	return version, status, s[:i]
}

// TestPublicEdge runs every scenario against one mesh.
func TestPublicEdge(t *testing.T) {
	if testing.Short() {
		t.Skip("process end-to-end test: skipped with -short")
	}
	m := startPubMesh(t)
	t.Run("internal", func(t *testing.T) { testPublicInternal(t, m) })
	t.Run("files", func(t *testing.T) { testPublicFiles(t, m) })
	t.Run("hardening", func(t *testing.T) { testPublicHardening(t, m) })
	t.Run("HTTP/2 abuse", func(t *testing.T) { testPublicH2Abuse(t, m) })
	t.Run("acme", func(t *testing.T) { testPublicACME(t, m) })
}

// testPublicInternal: an edge with --tls internal serves HTTP/1.1, HTTP/2
// and HTTP/3 on one port with certificates the root from `meshd ca root`
// verifies, only for published hosts; h2spec passes against it; its
// public HTTP listener redirects, refuses and serves as configured.
func testPublicInternal(t *testing.T, m *pubMesh) {
	dataDir := t.TempDir()
	edge := m.edge(t, "pub-edge-int", "--public-http", "127.0.0.1:0", "--public-https", "127.0.0.1:0",
		"--tls", "internal", "--data-dir", dataDir, "--public-http-allow", "www.example.test")
	httpsAddr, httpAddr := edge.addr("public-https"), edge.addr("public-http")
	port := pubPort(t, httpsAddr)

	out, err := exec.Command(meshdBin, "ca", "root", "--data-dir", dataDir).Output()
	if err != nil {
		t.Fatalf("meshd ca root: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(out) {
		t.Fatalf("meshd ca root printed no PEM certificate: %q", out)
	}
	rootFile := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(rootFile, out, 0o600); err != nil {
		t.Fatal(err)
	}
	webURL := "https://web.localhost:" + port + "/"
	h1, h2 := pubClient(httpsAddr, "", roots, false), pubClient(httpsAddr, "", roots, true)
	defer h1.CloseIdleConnections()
	defer h2.CloseIdleConnections()
	waitServed(t, h1, webURL, "https")

	t.Run("Go client over HTTP/1.1 and HTTP/2 with Alt-Svc", func(t *testing.T) {
		for _, tt := range []struct {
			c     *http.Client
			proto string
		}{{h1, "HTTP/1.1"}, {h2, "HTTP/2.0"}} {
			resp, body, err := pubDo(tt.c, http.MethodGet, webURL, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := wantEcho(resp, body, "https"); err != nil {
				t.Fatalf("%s: %v", tt.proto, err)
			}
			if resp.Proto != tt.proto {
				t.Errorf("answered over %s, want %s", resp.Proto, tt.proto)
			}
			// RFC 7838 §3: h3 at the same port of the same host.
			if alt := resp.Header.Get("Alt-Svc"); !strings.Contains(alt, `h3=":`+port+`"`) {
				t.Errorf("%s: Alt-Svc %q does not name h3 on port %s", tt.proto, alt, port)
			}
		}
	})

	t.Run("curl over HTTP/1.1 and HTTP/2", func(t *testing.T) {
		for _, tt := range []struct{ flag, version string }{{"--http1.1", "1.1"}, {"--http2", "2"}} {
			version, status, out := curlGet(t, tt.flag, "web.localhost", port, rootFile)
			if version != tt.version || status != "200" {
				t.Fatalf("curl %s: HTTP/%s %s, want HTTP/%s 200:\n%s", tt.flag, version, status, tt.version, out)
			}
			if !strings.Contains(strings.ToLower(out), `alt-svc: h3=":`+port+`"`) || !strings.Contains(out, `"service":"web"`) {
				t.Fatalf("curl %s: no Alt-Svc for h3 on %s or not the app's answer:\n%s", tt.flag, port, out)
			}
		}
	})

	t.Run("HTTP/3 with quic-go's client", func(t *testing.T) {
		tr := &http3.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots},
			// The UDP port is the TCP port's number (Alt-Svc said so).
			Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
				return quic.DialAddrEarly(ctx, "127.0.0.1:"+port, tlsCfg, cfg)
			},
		}
		defer tr.Close()
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		for i := 0; i < 3; i++ {
			resp, body, err := pubDo(c, http.MethodGet, webURL, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := wantEcho(resp, body, "https"); err != nil {
				t.Fatal(err)
			}
			if resp.Proto != "HTTP/3.0" {
				t.Fatalf("answered over %s, want HTTP/3.0", resp.Proto)
			}
		}
		// Unknown hosts get no certificate of their own over HTTP/3
		// either: the default one fails the client's verification.
		resp, _, err := pubDo(c, http.MethodGet, "https://nothing.localhost:"+port+"/", nil)
		if err == nil {
			t.Fatalf("HTTP/3 request for an unpublished host answered %s", resp.Status)
		}
	})

	t.Run("internal CA: published hosts only", func(t *testing.T) {
		for _, host := range []string{"web.localhost", "www.example.test"} {
			leaf, err := handshake(httpsAddr, host, roots)
			if err != nil {
				t.Fatalf("%s: the root from meshd ca root does not verify the edge: %v", host, err)
			}
			if err := leaf.VerifyHostname(host); err != nil || leaf.IsCA {
				t.Fatalf("%s: leaf %v (CA %v): %v", host, leaf.DNSNames, leaf.IsCA, err)
			}
		}
		// Unpublished names get the default certificate, valid for none
		// of them (tlsmgr.DefaultCertName), and nothing is issued.
		for _, host := range []string{"nothing.localhost", "evil.example.test", "web.localhost.evil.test"} {
			if leaf, err := handshake(httpsAddr, host, nil); err == nil && leaf.VerifyHostname(host) == nil {
				t.Errorf("handshake for unpublished %s succeeded with a certificate for %v", host, leaf.DNSNames)
			}
		}
		// The edge still serves published hosts after the refusals.
		resp, body, err := pubDo(h2, http.MethodGet, webURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := wantEcho(resp, body, "https"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("TLS versions, suites and resumption", func(t *testing.T) {
		gcm := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
		cbc := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
			tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
		for _, tt := range []struct {
			name     string
			min, max uint16
			suites   []uint16
			want     uint16 // negotiated version; 0: the handshake must fail
		}{
			{"default client", 0, 0, nil, tls.VersionTLS13},
			{"TLS 1.2 with ECDHE and AEAD", tls.VersionTLS12, tls.VersionTLS12, gcm, tls.VersionTLS12},
			{"TLS 1.2 with CBC or RSA key exchange only", tls.VersionTLS12, tls.VersionTLS12, cbc, 0},
			{"TLS 1.1", tls.VersionTLS10, tls.VersionTLS11, nil, 0},
		} {
			cfg := &tls.Config{ServerName: "web.localhost", RootCAs: roots, MinVersion: tt.min, MaxVersion: tt.max, CipherSuites: tt.suites}
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", httpsAddr, cfg)
			if tt.want == 0 {
				if err == nil {
					c.Close()
					t.Errorf("%s: handshake succeeded", tt.name)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
				continue
			}
			if v := c.ConnectionState().Version; v != tt.want {
				t.Errorf("%s: negotiated %s, want %s", tt.name, tls.VersionName(v), tls.VersionName(tt.want))
			}
			c.Close()
		}
		// A returning client resumes its session (RFC 8446 §2.2). The
		// ticket arrives after the handshake, so the first connection
		// reads once before closing.
		cache := tls.NewLRUClientSessionCache(4)
		for i, wantResumed := range []bool{false, true} {
			cfg := &tls.Config{ServerName: "web.localhost", RootCAs: roots, ClientSessionCache: cache, NextProtos: []string{"http/1.1"}}
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", httpsAddr, cfg)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			req, _ := http.NewRequest(http.MethodGet, webURL, nil)
			if err := req.Write(c); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := c.ConnectionState().DidResume; got != wantResumed {
				t.Errorf("connection %d: resumed %v, want %v", i+1, got, wantResumed)
			}
			c.Close()
		}
	})

	t.Run("public HTTP: redirect, refuse, allow", func(t *testing.T) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		defer c.CloseIdleConnections()
		for _, tt := range []struct {
			host, path string
			status     int
			location   string // for 308
			proto      string // for 200: X-Forwarded-Proto the app saw
		}{
			{"web.localhost", "/a/b?c=d", http.StatusPermanentRedirect, "https://web.localhost:" + port + "/a/b?c=d", ""},
			{"API.example.test", "/", http.StatusPermanentRedirect, "https://api.example.test:" + port + "/", ""},
			{"nothing.localhost", "/", http.StatusNotFound, "", ""},
			{"example.org", "/", http.StatusNotFound, "", ""},
			{"www.example.test", "/x", http.StatusOK, "", "http"},
		} {
			req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+tt.path, nil)
			req.Host = tt.host
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("%s%s: %s, want %d: %.200s", tt.host, tt.path, resp.Status, tt.status, body)
				continue
			}
			if loc := resp.Header.Get("Location"); tt.location != "" && !strings.EqualFold(loc, tt.location) {
				t.Errorf("%s%s: Location %q, want %q", tt.host, tt.path, loc, tt.location)
			}
			if tt.status == http.StatusOK {
				if err := wantEcho(resp, body, tt.proto); err != nil {
					t.Errorf("%s: %v", tt.host, err)
				}
			}
		}
	})

	t.Run("h2spec", func(t *testing.T) { runH2spec(t, edge, port) })
}

// pubH2specAllowed is proxy/h2spec_test.go's list of h2spec cases allowed
// to fail, with its reasons: the edge's TLS listener is that listener.
var pubH2specAllowed = map[string]string{
	"http2/6.5.3/1": "Go's HTTP/2 server closes a connection whose SETTINGS frame repeats a parameter " +
		"(net/http anti-DoS choice, RFC 9113 §6.5.3 allows repeats); no real client repeats one",
	"http2/8.1.2.2/1": "Go answers a request with a connection-specific field (Connection) with 400 and ends the stream " +
		"instead of RST_STREAM PROTOCOL_ERROR; RFC 9113 §8.1.1 allows a response, and the handler never sees the request",
	"http2/8.1.2.2/2": "Go answers a request with TE other than \"trailers\" with 400 and ends the stream " +
		"instead of RST_STREAM PROTOCOL_ERROR; RFC 9113 §8.1.1 allows a response, and the handler never sees the request",
}

// runH2spec runs h2spec against the edge's TLS listener on port, with
// "localhost" (a published host) as SNI and :authority, so its requests
// go through to the app.
func runH2spec(t *testing.T, edge *proc, port string) {
	bin := ""
	if p, err := exec.LookPath("h2spec"); err == nil {
		bin = p
	} else if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
			if p := filepath.Join(dir, "bin", "h2spec"); fileExists(p) {
				bin = p
				break
			}
		}
	}
	if bin == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("h2spec not installed (go install github.com/summerwind/h2spec/cmd/h2spec@latest)")
		}
		t.Skip("h2spec not installed; go install github.com/summerwind/h2spec/cmd/h2spec@latest")
	}
	start := time.Now()
	cases, out, err := h2specRun(t, bin, port)
	// A dead edge is the finding, whatever h2spec made of it.
	pubCheckAlive(t, edge, "h2spec")
	if err != nil {
		t.Fatalf("h2spec aborted: %v\n%s", err, out)
	}
	total, failed, allowed := len(cases), 0, 0
	for _, c := range cases {
		if c.ok {
			continue
		}
		if reason, ok := pubH2specAllowed[c.id]; ok {
			allowed++
			t.Logf("allowed failure %s (%s): %s", c.id, c.desc, reason)
			continue
		}
		failed++
		t.Errorf("h2spec failed %s: %s", c.id, c.desc)
	}
	if total == 0 {
		t.Fatalf("report lists no test cases\n%s", out)
	}
	t.Logf("h2spec against the edge: %d cases, %d allowed failures, %d unexpected failures, %v",
		total, allowed, failed, time.Since(start).Round(time.Millisecond))
	if failed > 0 {
		t.Logf("h2spec output:\n%s", out)
	}
}

// h2specCase is one case of an h2spec report.
type h2specCase struct {
	id, desc string // id as h2spec's command line takes it: "http2/6.5.3/1"
	ok       bool
}

// h2specRun runs h2spec against the edge's TLS listener on port and
// returns the cases of its report; an error means h2spec wrote no report.
func h2specRun(t *testing.T, bin, port string) ([]h2specCase, []byte, error) {
	t.Helper()
	report := filepath.Join(t.TempDir(), "report.xml")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-h", "localhost", "-p", port, "-t", "-k", "-j", report).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("h2spec: %v\n%s", err, out)
	}
	raw, rerr := os.ReadFile(report)
	if rerr != nil {
		return nil, out, fmt.Errorf("no report (%v): %w", err, rerr)
	}
	var rep struct {
		Suites []struct {
			Cases []struct {
				Package string    `xml:"package,attr"`
				Desc    string    `xml:"classname,attr"`
				Failure *struct{} `xml:"failure"`
				Error   *struct{} `xml:"error"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(raw, &rep); err != nil {
		t.Fatalf("h2spec report: %v", err)
	}
	var cases []h2specCase
	for _, s := range rep.Suites {
		for i, c := range s.Cases {
			// A suite's cases are numbered from 1 in h2spec's IDs.
			id := c.Package + "/" + strconv.Itoa(i+1)
			cases = append(cases, h2specCase{id: id, desc: c.Desc, ok: c.Failure == nil && c.Error == nil})
		}
	}
	return cases, out, nil
}

func fileExists(name string) bool {
	_, err := os.Stat(name)
	return err == nil
}

// testPublicFiles: --tls files with several pairs chooses by SNI, and
// SIGHUP reloads them without dropping an open connection.
func testPublicFiles(t *testing.T, m *pubMesh) {
	pki := newPubPKI(t)
	dir := t.TempDir()
	type pair struct {
		cert, key string
		serial    *big.Int
	}
	pairs := map[string]*pair{}
	var args []string
	// The first pair is the default for names no pair covers.
	for _, p := range []struct {
		base  string
		names []string
	}{
		{"default", []string{"edge.example.net"}},
		{"web", []string{"web.localhost"}},
		{"api", []string{"api.example.test"}},
		{"wild", []string{"*.example.test"}},
	} {
		c, k, s := pki.writePair(t, dir, p.base, p.names...)
		pairs[p.base] = &pair{c, k, s}
		args = append(args, "--tls-cert", c, "--tls-key", k)
	}
	edge := m.edge(t, "pub-edge-files", append([]string{"--public-http", "127.0.0.1:0",
		"--public-https", "127.0.0.1:0", "--tls", "files"}, args...)...)
	httpsAddr := edge.addr("public-https")
	port := pubPort(t, httpsAddr)
	c := pubClient(httpsAddr, "", pki.pool, true)
	defer c.CloseIdleConnections()
	waitServed(t, c, "https://web.localhost:"+port+"/", "https")

	t.Run("SNI picks the certificate", func(t *testing.T) {
		for _, tt := range []struct{ sni, want string }{
			{"web.localhost", "web"},
			{"api.example.test", "api"},
			{"API.Example.Test", "api"},
			{"www.example.test", "wild"},
			{"deep.www.example.test", "default"}, // a wildcard covers one label only
			{"unknown.test", "default"},
			{"", "default"}, // no SNI
		} {
			leaf, err := handshake(httpsAddr, tt.sni, nil)
			if err != nil {
				t.Fatalf("SNI %q: %v", tt.sni, err)
			}
			if leaf.SerialNumber.Cmp(pairs[tt.want].serial) != 0 {
				t.Errorf("SNI %q: got the certificate for %v, want the %s pair", tt.sni, leaf.DNSNames, tt.want)
			}
		}
		// A full request per covered name, verified against the CA.
		for _, host := range []string{"web.localhost", "api.example.test", "www.example.test"} {
			resp, body, err := pubDo(c, http.MethodGet, "https://"+host+":"+port+"/", nil)
			if err != nil {
				t.Fatalf("%s: %v", host, err)
			}
			if err := wantEcho(resp, body, "https"); err != nil {
				t.Fatalf("%s: %v", host, err)
			}
		}
	})

	t.Run("SIGHUP reloads without dropping an open connection", func(t *testing.T) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", httpsAddr,
			&tls.Config{ServerName: "web.localhost", RootCAs: pki.pool, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		// roundTrip sends one keep-alive request on conn.
		roundTrip := func() error {
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			req, _ := http.NewRequest(http.MethodGet, "https://web.localhost:"+port+"/", nil)
			if err := req.Write(conn); err != nil {
				return err
			}
			resp, err := http.ReadResponse(br, req)
			if err != nil {
				return err
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			if resp.Close {
				return errors.New("the edge asked to close the connection")
			}
			return wantEcho(resp, body, "https")
		}
		if err := roundTrip(); err != nil {
			t.Fatal(err)
		}
		old := conn.ConnectionState().PeerCertificates[0]

		// A bad replacement first: a key that does not match. SIGHUP
		// refuses it and the edge keeps serving the old pair.
		refused := edge.logCount("reload refused; still serving the previous configuration")
		_, otherKey, _ := pki.writePair(t, t.TempDir(), "other", "web.localhost")
		keyPEM, err := os.ReadFile(otherKey)
		if err != nil {
			t.Fatal(err)
		}
		goodKey, err := os.ReadFile(pairs["web"].key)
		if err != nil {
			t.Fatal(err)
		}
		pubWriteFile(t, pairs["web"].key, keyPEM)
		if err := edge.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "bad files refused", func() error {
			if edge.logCount("reload refused; still serving the previous configuration") == refused {
				return errors.New("no refusal logged")
			}
			return nil
		})
		if leaf, err := handshake(httpsAddr, "web.localhost", pki.pool); err != nil || leaf.SerialNumber.Cmp(old.SerialNumber) != 0 {
			t.Fatalf("after a refused reload: %v, serving the old certificate %v", err, err == nil && leaf.Equal(old))
		}
		pubWriteFile(t, pairs["web"].key, goodKey)

		// The good replacement.
		_, _, serial := pki.writePair(t, dir, "web", "web.localhost")
		hexSerial := `serial ` + serial.Text(16) + `,`
		reloads := edge.logCount("public certificates reloaded", `"trigger":"reload"`, hexSerial)
		if err := edge.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, 5*time.Second, "SIGHUP reload", func() error {
			if edge.logCount("public certificates reloaded", `"trigger":"reload"`, hexSerial) == reloads {
				return errors.New("no reload of the new files logged")
			}
			return nil
		})
		// The reload has happened: a new connection sees the new
		// certificate at once, the open one keeps working.
		leaf, err := handshake(httpsAddr, "web.localhost", pki.pool)
		if err != nil {
			t.Fatal(err)
		}
		if leaf.SerialNumber.Cmp(serial) != 0 {
			t.Fatalf("new connection got serial %v, want the new certificate's %v", leaf.SerialNumber, serial)
		}
		for i := 0; i < 3; i++ {
			if err := roundTrip(); err != nil {
				t.Fatalf("request %d on the connection opened before the reload: %v", i, err)
			}
		}
		if p := edge.cmd.ProcessState; p != nil {
			t.Fatalf("edge exited: %v", p)
		}
		t.Logf("SIGHUP reload logged %v after the signal; the connection opened before it served 3 more requests", took)
	})
}

// testPublicHardening: small limits through the edge binary, each with a
// normal client served during the abuse.
func testPublicHardening(t *testing.T, m *pubMesh) {
	pki := newPubPKI(t)
	certFile, keyFile, _ := pki.writePair(t, t.TempDir(), "web", "web.localhost")
	const maxConns = 3
	edge := m.edge(t, "pub-edge-hard", "--public-http", "127.0.0.1:0", "--public-https", "127.0.0.1:0",
		"--tls", "files", "--tls-cert", certFile, "--tls-key", keyFile,
		"--max-body", "1KiB", "--max-conns-per-ip", strconv.Itoa(maxConns))
	httpsAddr := edge.addr("public-https")
	url := "https://web.localhost:" + pubPort(t, httpsAddr) + "/"
	// Each part uses its own source address, so the per-IP limit of one
	// part is not spent by another's connections.
	ready := pubClient(httpsAddr, "127.0.0.3", pki.pool, true)
	waitServed(t, ready, url, "https")
	ready.CloseIdleConnections()

	t.Run("request body over --max-body", func(t *testing.T) {
		c := pubClient(httpsAddr, "127.0.0.4", pki.pool, true)
		defer c.CloseIdleConnections()
		for _, tt := range []struct {
			size   int
			status int
		}{{1024, 200}, {1025, 413}, {64 << 10, 413}, {10, 200}} {
			resp, body, err := pubDo(c, http.MethodPost, url+"upload", bytes.Repeat([]byte("x"), tt.size))
			if err != nil {
				t.Fatalf("%d bytes: %v", tt.size, err)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("%d bytes: %s, want %d: %.200s", tt.size, resp.Status, tt.status, body)
			}
			if tt.status == 200 && string(body) != strconv.Itoa(tt.size) {
				t.Fatalf("%d bytes: the app received %q", tt.size, body)
			}
			// A normal request keeps being served, on the same
			// HTTP/2 connection.
			resp, body, err = pubDo(c, http.MethodGet, url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := wantEcho(resp, body, "https"); err != nil {
				t.Fatalf("after a %d-byte body: %v", tt.size, err)
			}
		}
	})

	t.Run("connections per client IP", func(t *testing.T) {
		// The normal client holds one connection from 127.0.0.1.
		normal := pubClient(httpsAddr, "127.0.0.1", pki.pool, true)
		defer normal.CloseIdleConnections()
		check := func(c *http.Client, who string) {
			t.Helper()
			resp, body, err := pubDo(c, http.MethodGet, url, nil)
			if err != nil {
				t.Fatalf("%s: %v", who, err)
			}
			if err := wantEcho(resp, body, "https"); err != nil {
				t.Fatalf("%s: %v", who, err)
			}
		}
		check(normal, "normal client before the abuse")
		// The abuser fills the rest of 127.0.0.1's allowance with idle
		// TCP connections that never handshake.
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}
		var hogs []net.Conn
		defer func() {
			for _, h := range hogs {
				h.Close()
			}
		}()
		for i := 0; i < maxConns-1; i++ {
			h, err := d.Dial("tcp", httpsAddr)
			if err != nil {
				t.Fatal(err)
			}
			hogs = append(hogs, h)
		}
		// The next connection from 127.0.0.1 is closed at accept, so
		// its handshake fails (the listener accepts in order: the hogs
		// are counted before it).
		if _, err := handshake(httpsAddr, "web.localhost", pki.pool); err == nil {
			t.Fatalf("connection %d from 127.0.0.1 was served; limit %d", maxConns+1, maxConns)
		}
		check(normal, "normal client's open connection during the abuse")
		other := pubClient(httpsAddr, "127.0.0.2", pki.pool, false)
		defer other.CloseIdleConnections()
		check(other, "client from 127.0.0.2 during the abuse")
		eventually(t, 5*time.Second, "refusal logged", func() error {
			if edge.logCount("proxy: connection refused, client IP at its connection limit", "127.0.0.1") == 0 {
				return errors.New("no refusal of 127.0.0.1 in the edge's log")
			}
			return nil
		})
		// Once the abuser leaves, 127.0.0.1 may open new connections.
		for _, h := range hogs {
			h.Close()
		}
		hogs = nil
		eventually(t, 10*time.Second, "new connection from 127.0.0.1 after the abuse", func() error {
			c := pubClient(httpsAddr, "127.0.0.1", pki.pool, false)
			defer c.CloseIdleConnections()
			resp, body, err := pubDo(c, http.MethodGet, url, nil)
			if err != nil {
				return err
			}
			return wantEcho(resp, body, "https")
		})
	})
}

// pubCheckAlive fails the test if p has exited; a process that is dying
// gets a moment to finish. (It found a crash of the edge when an upstream
// transport read a request body after the HTTP/2 handler had returned.)
func pubCheckAlive(t *testing.T, p *proc, during string) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(200 * time.Millisecond):
		return
	}
	logs := p.logs()
	excerpt := logs
	if i := strings.Index(logs, "panic: "); i >= 0 {
		excerpt = logs[i:min(len(logs), i+1500)]
	} else if len(logs) > 4000 {
		excerpt = logs[len(logs)-4000:]
	}
	t.Fatalf("%s died during %s: %v\n%s", p.name, during, p.cmd.ProcessState, excerpt)
}

// h2Burst opens one HTTP/2 connection to addr and sends streams requests
// to "/" of host, each ended as pattern says, without waiting for answers:
// "reset-get" (GET, then RST_STREAM: CVE-2023-44487), "reset-post" (POST
// with a declared body, then RST_STREAM before any of it) or "long-body"
// (Content-Length 1, then 8 bytes of DATA: malformed, RFC 9113 §8.1.1).
// Write errors end the burst: the server may close the connection.
func h2Burst(addr, host string, roots *x509.CertPool, pattern string, streams int) error {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{RootCAs: roots, ServerName: hostName(host), NextProtos: []string{"h2"}})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		return fmt.Errorf("ALPN %q, want h2", p)
	}
	// Read (and drop) what the server sends, so it never blocks on us.
	read := make(chan struct{})
	go func() { io.Copy(io.Discard, conn); close(read) }()
	bw := bufio.NewWriter(conn)
	fr := http2.NewFramer(bw, conn)
	io.WriteString(bw, http2.ClientPreface)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := 0; i < streams; i++ {
		id := uint32(1 + 2*i)
		method, fields := "POST", []hpack.HeaderField{{Name: "content-length", Value: "1"}}
		if pattern == "reset-get" {
			method, fields = "GET", nil
		}
		hb.Reset()
		for _, f := range append([]hpack.HeaderField{{Name: ":method", Value: method}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: host}, {Name: ":path", Value: "/"}}, fields...) {
			enc.WriteField(f)
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(),
			EndHeaders: true, EndStream: pattern == "reset-get"}); err != nil {
			break
		}
		if pattern == "long-body" {
			fr.WriteData(id, false, []byte("test"))
			fr.WriteData(id, true, []byte("test"))
		} else {
			fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		if bw.Flush() != nil {
			break
		}
	}
	// Give the server a moment to act on the last frames before closing.
	select {
	case <-read:
	case <-time.After(100 * time.Millisecond):
	}
	return nil
}

// hostName is host without a port.
func hostName(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return host
}

// testPublicH2Abuse: HTTP/2 streams a client resets, or whose body breaks
// its Content-Length, do not take the edge down, and a normal client is
// served after every burst.
func testPublicH2Abuse(t *testing.T, m *pubMesh) {
	pki := newPubPKI(t)
	certFile, keyFile, _ := pki.writePair(t, t.TempDir(), "web", "web.localhost")
	for _, pattern := range []string{"reset-get", "reset-post", "long-body"} {
		t.Run(pattern, func(t *testing.T) {
			// An edge of its own: a crash is this pattern's finding.
			edge := m.edge(t, "pub-edge-"+pattern, "--public-http", "127.0.0.1:0", "--public-https", "127.0.0.1:0",
				"--tls", "files", "--tls-cert", certFile, "--tls-key", keyFile)
			httpsAddr := edge.addr("public-https")
			authority := "web.localhost:" + pubPort(t, httpsAddr)
			normal := pubClient(httpsAddr, "127.0.0.2", pki.pool, true)
			defer normal.CloseIdleConnections()
			waitServed(t, normal, "https://"+authority+"/", "https")
			// 10 connections of 50 streams: below Go's rapid-reset
			// threshold per connection, so every stream reaches the
			// forwarding handler and its upstream request.
			for round := 0; round < 10; round++ {
				if err := h2Burst(httpsAddr, authority, pki.pool, pattern, 50); err != nil {
					pubCheckAlive(t, edge, pattern)
					t.Fatalf("round %d: %v", round, err)
				}
				resp, body, err := pubDo(normal, http.MethodGet, "https://"+authority+"/", nil)
				if err == nil {
					err = wantEcho(resp, body, "https")
				}
				if err != nil {
					pubCheckAlive(t, edge, pattern)
					t.Fatalf("normal client after round %d: %v", round, err)
				}
			}
			pubCheckAlive(t, edge, pattern)
		})
	}
}

// testPublicACME: an edge with --tls acme obtains a certificate from
// Pebble for a published host, validated against the edge's own public
// ports, and never asks Pebble about an unknown one.
func testPublicACME(t *testing.T, m *pubMesh) {
	pb := pebbletest.New(t)
	dataDir := t.TempDir()
	// Pebble validates against fixed ports, so the edge gets ports picked
	// free a moment ago; another process may take one first: retry.
	var edge *proc
	var httpPort, tlsPort int
	for attempt := 1; ; attempt++ {
		httpPort, tlsPort = pebbletest.FreePort(t), pebbletest.FreePort(t)
		var err error
		edge, err = m.tryEdge(t, "pub-edge-acme",
			"--public-http", fmt.Sprintf("127.0.0.1:%d", httpPort), "--public-https", fmt.Sprintf("127.0.0.1:%d", tlsPort),
			"--no-http3", "--tls", "acme", "--data-dir", dataDir,
			"--acme-ca", pb.DirURL, "--acme-ca-root", pb.CARoot, "--acme-email", "ops@meshd.test")
		if err == nil {
			break
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
	}
	pb.Start(httpPort, tlsPort)
	httpsAddr, httpAddr := edge.addr("public-https"), edge.addr("public-http")
	// The edge knows the service once its public HTTP listener redirects
	// the host instead of refusing it.
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer plain.CloseIdleConnections()
	eventually(t, 20*time.Second, "edge knows www.example.test", func() error {
		req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/", nil)
		req.Host = "www.example.test"
		resp, err := plain.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusPermanentRedirect {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	})
	roots := pb.Roots()

	const host = "www.example.test"
	start := time.Now()
	leaf, err := handshake(httpsAddr, host, roots)
	if err != nil {
		t.Fatalf("handshake for %s (certificate verified against Pebble's root): %v\nedge log:\n%s", host, err, edge.logs())
	}
	issued := time.Since(start)
	if err := leaf.VerifyHostname(host); err != nil {
		t.Fatal(err)
	}
	c := pubClient(httpsAddr, "", roots, true)
	defer c.CloseIdleConnections()
	resp, body, err := pubDo(c, http.MethodGet, "https://"+host+":"+strconv.Itoa(tlsPort)+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := wantEcho(resp, body, "https"); err != nil {
		t.Fatal(err)
	}
	// certmagic picks one of the two challenges at random; either way the
	// edge's own listener answered Pebble's validation.
	challenge := answeredChallenge(edge.logs(), host)
	if challenge == "" {
		t.Errorf("the edge's log shows no challenge for %s answered", host)
	}
	if !containsString(pb.DNSQueries(), host) {
		t.Errorf("Pebble never resolved %s: no validation reached the edge (DNS log %v)", host, pb.DNSQueries())
	}
	t.Logf("ACME certificate for %s from Pebble in %v (challenge answered: %s)", host, issued.Round(time.Millisecond), challenge)

	orders := pb.LogCount("orders in the db")
	if orders == 0 {
		t.Errorf("Pebble's log shows no order")
	}
	for _, bad := range []string{"evil.example.test", "nothing.localhost", "web.localhost.evil.test"} {
		if leaf, err := handshake(httpsAddr, bad, nil); err == nil && leaf.VerifyHostname(bad) == nil {
			t.Errorf("handshake for unknown %s got a certificate for %v", bad, leaf.DNSNames)
		}
	}
	// The same host again is served from the edge's cache: no new order.
	if again, err := handshake(httpsAddr, host, roots); err != nil || !again.Equal(leaf) {
		t.Errorf("second handshake for %s: %v (same certificate: %v)", host, err, err == nil && again.Equal(leaf))
	}
	if n := pb.LogCount("orders in the db"); n != orders {
		t.Errorf("Pebble logged new orders after handshakes for unknown names (%d -> %d)", orders, n)
	}
	for _, s := range []string{"evil", "nothing.localhost"} {
		if n := pb.LogCount(s); n != 0 {
			t.Errorf("Pebble's log mentions %q %d times", s, n)
		}
	}
	for _, q := range pb.DNSQueries() {
		if strings.Contains(q, "evil") || strings.Contains(q, "nothing") {
			t.Errorf("Pebble resolved %s: a validation was attempted", q)
		}
	}
	filepath.WalkDir(dataDir, func(p string, _ os.DirEntry, _ error) error {
		if strings.Contains(p, "evil") || strings.Contains(p, "nothing") {
			t.Errorf("the edge's ACME storage holds %s", p)
		}
		return nil
	})
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// answeredChallenge returns the ACME challenge type (http-01 or
// tls-alpn-01) that certmagic's log in an edge's JSON log says was answered
// for host, or "".
func answeredChallenge(logs, host string) string {
	for _, line := range strings.Split(logs, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		msg, _ := rec["msg"].(string)
		ch, _ := rec["challenge"].(string)
		if strings.HasPrefix(msg, "served key authentication") && ch != "" && strings.Contains(line, `"`+host+`"`) {
			return ch
		}
	}
	return ""
}
