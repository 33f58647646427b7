package tlsmgr

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// pebble is a Pebble ACME server (Debian package "pebble") run by a test on
// loopback, resolving every name to 127.0.0.1 through the test's own DNS
// server.
type pebble struct {
	dir     string // ACME directory URL
	mgmt    string // management base URL
	caRoot  string // PEM file that the ACME API's certificate chains to
	client  *http.Client
	log     *logBuffer
	dnsSeen func() []string
}

// freePort returns a loopback port that was free a moment ago. Pebble is a
// separate process and cannot be handed a listener, so its own two ports
// are picked this way; the ports it validates against are the test's
// listeners, bound on port 0.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startPebble runs Pebble validating HTTP-01 on httpPort and TLS-ALPN-01 on
// tlsPort of 127.0.0.1. Without the binary the test skips, except in CI.
func startPebble(t *testing.T, httpPort, tlsPort int) *pebble {
	t.Helper()
	bin, err := exec.LookPath("pebble")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("pebble not found on PATH; CI must install the Debian package \"pebble\"")
		}
		t.Skip("pebble not found on PATH: install the Debian package \"pebble\" to run the ACME end-to-end test")
	}
	dir := t.TempDir()
	dnsAddr, dnsSeen := serveDNS(t)

	// Pebble's own API certificate, from a CA the test makes.
	pki := newTestPKI(t, "pebble API CA")
	chain, key, _ := pki.leaf(t, leafOpts{names: []string{"localhost"}, ips: []net.IP{net.IPv4(127, 0, 0, 1)}})
	certFile, keyFile, rootFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "api-root.pem")
	for name, data := range map[string][]byte{certFile: chain, keyFile: key, rootFile: pki.pem} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	apiPort, mgmtPort := freePort(t), freePort(t)
	cfg, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", apiPort),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", mgmtPort),
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       httpPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}})
	cfgFile := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	log := &logBuffer{}
	cmd := exec.Command(bin, "-config", cfgFile, "-dnsserver", dnsAddr, "-strict=false")
	cmd.Env = append(os.Environ(),
		"PEBBLE_VA_NOSLEEP=1",      // validate at once instead of after 0-15 s
		"PEBBLE_WFE_NONCEREJECT=0", // no deliberate badNonce retries: keeps the test fast
		"PEBBLE_AUTHZREUSE=0",      // every order validates afresh
	)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("pebble log:\n%s", log.String())
		}
	})

	pb := &pebble{
		dir:     fmt.Sprintf("https://127.0.0.1:%d/dir", apiPort),
		mgmt:    fmt.Sprintf("https://127.0.0.1:%d", mgmtPort),
		caRoot:  rootFile,
		client:  &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool}}},
		log:     log,
		dnsSeen: dnsSeen,
	}
	t.Cleanup(pb.client.CloseIdleConnections)
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := pb.client.Get(pb.dir)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return pb
			}
		}
		select {
		case <-exited:
			t.Fatalf("pebble exited early:\n%s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble not ready after 15s (last error %v):\n%s", err, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// roots fetches the root that Pebble issues under (it is new each run).
func (pb *pebble) roots(t *testing.T) *x509.CertPool {
	t.Helper()
	res, err := pb.client.Get(pb.mgmt + "/roots/0")
	if err != nil {
		t.Fatalf("fetch pebble root: %v", err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	pool := x509.NewCertPool()
	if res.StatusCode != http.StatusOK || !pool.AppendCertsFromPEM(data) {
		t.Fatalf("pebble root: status %s, body %q", res.Status, data)
	}
	return pool
}

// serveDNS answers every A query with 127.0.0.1 and every other query with
// no records, on a UDP socket at 127.0.0.1:0, and records the names asked.
// It parses just enough of RFC 1035 §4.1 for one-question queries.
func serveDNS(t *testing.T) (string, func() []string) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			name, resp, ok := dnsAnswer(buf[:n])
			if !ok {
				continue
			}
			mu.Lock()
			seen = append(seen, name)
			mu.Unlock()
			pc.WriteTo(resp, from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().String(), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

func dnsAnswer(q []byte) (name string, resp []byte, ok bool) {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return "", nil, false
	}
	i := 12
	var labels []string
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if l > 63 || i+1+l > len(q) {
			return "", nil, false
		}
		labels = append(labels, string(q[i+1:i+1+l]))
		i += 1 + l
	}
	if i+5 > len(q) {
		return "", nil, false
	}
	qtype := binary.BigEndian.Uint16(q[i+1:])
	question := q[12 : i+5]
	var b bytes.Buffer
	b.Write(q[:2])                                                  // ID
	flags := uint16(0x8480) | binary.BigEndian.Uint16(q[2:])&0x0100 // QR, AA, RA, copy RD
	binary.Write(&b, binary.BigEndian, flags)
	an := uint16(0)
	if qtype == 1 {
		an = 1
	}
	binary.Write(&b, binary.BigEndian, []uint16{1, an, 0, 0})
	b.Write(question)
	if an == 1 {
		// Name pointer to the question (offset 12), A, IN, TTL 1 s, 127.0.0.1.
		b.Write([]byte{0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 127, 0, 0, 1})
	}
	return strings.ToLower(strings.Join(labels, ".")), b.Bytes(), true
}

// acmeEdge is one PublicCerts in SourceACME with its public listeners: a TLS
// echo listener and an HTTP listener wrapped by HTTPChallenge.
type acmeEdge struct {
	p       *PublicCerts
	tlsAddr string
	logs    *logBuffer
	allow   *allowList
}

func startACMEEdge(t *testing.T, pb *pebble, tlsLn, httpLn net.Listener, allowed ...string) *acmeEdge {
	t.Helper()
	e := &acmeEdge{logs: &logBuffer{}, allow: newAllowList(allowed...)}
	e.p = &PublicCerts{
		Source:     SourceACME,
		DataDir:    t.TempDir(),
		Allow:      e.allow.allow,
		ACMECA:     pb.dir,
		ACMECARoot: pb.caRoot,
		ACMEEmail:  "ops@meshd.test",
		Logger:     slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if tlsLn != nil {
		e.p.ACMETLSAddr = tlsLn.Addr().String()
	} else {
		tlsLn, _ = net.Listen("tcp", "127.0.0.1:0")
	}
	if httpLn != nil {
		e.p.ACMEHTTPAddr = httpLn.Addr().String()
	}
	startPublic(t, e.p)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("edge log:\n%s", e.logs.String())
		}
	})
	e.tlsAddr = serveTLSOn(t, tls.NewListener(tlsLn, e.p.TLSConfig()))
	if httpLn != nil {
		srv := &http.Server{Handler: e.p.HTTPChallenge(http.NotFoundHandler()), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(httpLn)
		t.Cleanup(func() { srv.Close() })
	}
	return e
}

// TestPublicACMEPebble obtains certificates from Pebble on loopback, once
// through TLS-ALPN-01 only and once through HTTP-01 only, with real
// validation, and checks that a name Allow refuses never reaches the CA.
func TestPublicACMEPebble(t *testing.T) {
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pb := startPebble(t, httpLn.Addr().(*net.TCPAddr).Port, tlsLn.Addr().(*net.TCPAddr).Port)
	roots := pb.roots(t)

	// Edge A answers on Pebble's TLS port only: TLS-ALPN-01. Edge B answers
	// on Pebble's HTTP port only: HTTP-01; its own TLS listener is anywhere.
	edgeA := startACMEEdge(t, pb, tlsLn, nil, "web.localhost")
	edgeB := startACMEEdge(t, pb, nil, httpLn, "api.localhost")

	for _, tt := range []struct {
		edge      *acmeEdge
		host      string
		challenge string // what the edge's log must show it answered
	}{
		{edgeA, "web.localhost", `challenge=tls-alpn-01`},
		{edgeB, "api.localhost", `challenge=http-01`},
	} {
		t.Run(tt.host, func(t *testing.T) {
			c, err := dial(tt.edge.tlsAddr, &tls.Config{ServerName: tt.host, RootCAs: roots})
			if err != nil {
				t.Fatalf("handshake (certificate from pebble verified against pebble's root): %v", err)
			}
			leaf := c.ConnectionState().PeerCertificates[0]
			if err := echo(c, "hello\n"); err != nil {
				t.Fatal(err)
			}
			c.Close()
			if err := leaf.VerifyHostname(tt.host); err != nil {
				t.Fatal(err)
			}
			if tt.edge.logs.count(tt.challenge) == 0 {
				t.Errorf("edge log shows no %s answered", tt.challenge)
			}
			// The second handshake is served from the cache: same leaf, no
			// new order, Allow not asked again.
			calls := tt.edge.allow.callsFor(tt.host)
			leaf2, err := servedCert(t, tt.edge.tlsAddr, tt.host)
			if err != nil || !leaf2.Equal(leaf) {
				t.Fatalf("second handshake: %v, same certificate %v", err, err == nil && leaf2.Equal(leaf))
			}
			if n := tt.edge.allow.callsFor(tt.host); n != calls {
				t.Errorf("Allow asked again for a cached certificate (%d -> %d)", calls, n)
			}
		})
	}
	orders := pb.log.count("orders in the db")

	t.Run("refused names never reach the CA", func(t *testing.T) {
		for _, host := range []string{"evil.localhost", "api.localhost"} { // api.localhost is edge B's, not A's
			if _, err := dial(edgeA.tlsAddr, &tls.Config{ServerName: host, RootCAs: roots}); err == nil {
				t.Errorf("handshake for %s on edge A succeeded", host)
			}
			if edgeA.allow.callsFor(host) == 0 {
				t.Errorf("Allow was not asked about %s", host)
			}
		}
		if n := pb.log.count("evil.localhost"); n != 0 {
			t.Errorf("pebble log mentions evil.localhost %d times", n)
		}
		if n := pb.log.count("orders in the db"); n != orders {
			t.Errorf("pebble logged new orders after refused handshakes (%d -> %d)", orders, n)
		}
		for _, name := range pb.dnsSeen() {
			if strings.Contains(name, "evil") {
				t.Errorf("pebble resolved %s: a validation was attempted", name)
			}
		}
		if _, err := os.Stat(filepath.Join(edgeA.p.DataDir, ACMEStorageDir)); err != nil {
			t.Fatal(err)
		}
		found := false
		filepath.WalkDir(edgeA.p.DataDir, func(p string, _ os.DirEntry, _ error) error {
			found = found || strings.Contains(p, "evil")
			return nil
		})
		if found {
			t.Error("storage holds something for evil.localhost")
		}
	})
}

// serveTLSOn runs serveTLS's echo server on an existing TLS listener.
func serveTLSOn(t *testing.T, ln net.Listener) string {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(60 * time.Second))
				if err := c.(*tls.Conn).HandshakeContext(context.Background()); err != nil {
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}
