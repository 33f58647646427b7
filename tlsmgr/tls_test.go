package tlsmgr

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

type hsResult struct {
	err   error
	state tls.ConnectionState
}

// handshake runs one TLS connection over 127.0.0.1 between srv and cli.
// After a successful handshake the server writes "ok" and the client reads
// it: under TLS 1.3 a client only learns that the server refused its
// certificate when it reads.
func handshake(t *testing.T, srv, cli *tls.Config) (s, c hsResult) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- conn
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sconn, ok := <-accepted
	if !ok {
		conn.Close()
		t.Fatal("accept failed")
	}
	return handshakeOver(t, sconn, conn, srv, cli)
}

// pipeHandshake is handshake over net.Pipe: inside a synctest bubble, where
// every wait on a pipe is durably blocking and time is fake. It never
// resumes: net.Pipe has no buffer, and a resuming server's first flight,
// which carries the next ticket, would block until the client read past
// its own Finished, which it writes first.
func pipeHandshake(t *testing.T, srv, cli *tls.Config) (s, c hsResult) {
	t.Helper()
	cli = cli.Clone()
	cli.ClientSessionCache = nil
	sconn, cconn := net.Pipe()
	return handshakeOver(t, sconn, cconn, srv, cli)
}

// handshakeOver runs the exchange of handshake on a connected pair and
// closes both ends.
func handshakeOver(t *testing.T, sconn, conn net.Conn, srv, cli *tls.Config) (s, c hsResult) {
	t.Helper()
	done := make(chan hsResult, 1)
	go func() {
		defer sconn.Close()
		sconn.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(sconn, srv)
		if err := tc.Handshake(); err != nil {
			done <- hsResult{err: err}
			return
		}
		_, err := tc.Write([]byte("ok"))
		done <- hsResult{err: err, state: tc.ConnectionState()}
		// Wait for the client to hang up so the "ok" is not lost to a reset.
		io.Copy(io.Discard, tc)
	}()

	conn.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(conn, cli)
	if err := tc.Handshake(); err != nil {
		c.err = err
	} else {
		buf := make([]byte, 2)
		if _, err := io.ReadFull(tc, buf); err != nil {
			c.err = fmt.Errorf("read after handshake: %w", err)
		} else if string(buf) != "ok" {
			c.err = fmt.Errorf("read %q", buf)
		}
		c.state = tc.ConnectionState()
	}
	conn.Close()
	select {
	case s = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server side did not finish")
	}
	return s, c
}

func TestMTLS(t *testing.T) {
	dir := newCADir(t, testTD)
	otherCA := newCADir(t, testTD) // same trust domain name, different key
	webID := "spiffe://" + testTD + "/service/web"
	apiID := "spiffe://" + testTD + "/service/api"
	gwID := "spiffe://" + testTD + "/gateway/eu/gw1"
	web := startManager(t, dir, webID, 0)
	api := startManager(t, dir, apiID, 0)
	gw := startManager(t, dir, gwID, 0)
	rogue := startManager(t, otherCA, apiID, 0)

	denyGW := func(peer string) error {
		if peer == gwID {
			return errors.New("gateways may not call web")
		}
		return nil
	}
	clientFor := func(m *Manager, peer string, protos ...string) *tls.Config {
		cfg, err := m.ClientTLS(peer, protos...)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	// An attacker with a certificate from another CA does not care who the
	// server is; only the server's check stands in its way.
	attacker := clientFor(rogue, webID)
	attacker.VerifyPeerCertificate = nil
	attacker.VerifyConnection = nil
	tls12 := clientFor(api, webID, "http/1.1")
	tls12.MaxVersion = tls.VersionTLS12

	tests := []struct {
		name         string
		srv, cli     *tls.Config
		wantSrvErr   string // "" means success expected
		wantCliErr   string
		wantALPN     string
		wantVersion  uint16
		wantClientID string // as seen by the server
		wantServerID string // as seen by the client
	}{
		{name: "ok h2", srv: web.ServerTLS(nil), cli: clientFor(api, webID, "h2"),
			wantALPN: "h2", wantVersion: tls.VersionTLS13, wantClientID: apiID, wantServerID: webID},
		{name: "ok tls1.2", srv: web.ServerTLS(nil), cli: tls12,
			wantALPN: "http/1.1", wantVersion: tls.VersionTLS12, wantClientID: apiID, wantServerID: webID},
		{name: "allow accepts", srv: web.ServerTLS(denyGW), cli: clientFor(api, webID),
			wantVersion: tls.VersionTLS13, wantClientID: apiID, wantServerID: webID},
		{name: "client expects another id", srv: web.ServerTLS(nil), cli: clientFor(api, apiID),
			wantSrvErr: "tls", wantCliErr: "unexpected ID"},
		{name: "client cert from another CA", srv: web.ServerTLS(nil), cli: attacker,
			wantSrvErr: "certificate signed by unknown authority", wantCliErr: "tls"},
		{name: "allow refuses peer", srv: web.ServerTLS(denyGW), cli: clientFor(gw, webID),
			wantSrvErr: "gateways may not call web", wantCliErr: "tls"},
		{name: "server cert from another CA", srv: rogue.ServerTLS(nil), cli: clientFor(api, apiID),
			wantSrvErr: "tls", wantCliErr: "certificate signed by unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := handshake(t, tt.srv, tt.cli)
			if tt.wantSrvErr == "" {
				if s.err != nil || c.err != nil {
					t.Fatalf("server err %v, client err %v; want success", s.err, c.err)
				}
				if got := c.state.NegotiatedProtocol; got != tt.wantALPN {
					t.Errorf("ALPN %q, want %q", got, tt.wantALPN)
				}
				if c.state.Version != tt.wantVersion {
					t.Errorf("version %x, want %x", c.state.Version, tt.wantVersion)
				}
				if id, ok := PeerID(&s.state); !ok || id != tt.wantClientID {
					t.Errorf("server sees peer %q %v, want %q", id, ok, tt.wantClientID)
				}
				if id, ok := PeerID(&c.state); !ok || id != tt.wantServerID {
					t.Errorf("client sees peer %q %v, want %q", id, ok, tt.wantServerID)
				}
				if c.state.DidResume || s.state.DidResume {
					t.Error("first connection resumed")
				}
				return
			}
			if s.err == nil || !strings.Contains(s.err.Error(), tt.wantSrvErr) {
				t.Errorf("server err %v, want one containing %q", s.err, tt.wantSrvErr)
			}
			if c.err == nil || !strings.Contains(c.err.Error(), tt.wantCliErr) {
				t.Errorf("client err %v, want one containing %q", c.err, tt.wantCliErr)
			}
		})
	}
}

func TestServerRefusesPlaintext(t *testing.T) {
	web := startManager(t, newCADir(t, testTD), "spiffe://"+testTD+"/service/web", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		done <- tls.Server(conn, web.ServerTLS(nil)).Handshake()
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("server completed a handshake with a plaintext client")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server did not finish")
	}
	// The client gets no HTTP answer.
	if line, _ := bufio.NewReader(conn).ReadString('\n'); strings.HasPrefix(line, "HTTP/") {
		t.Errorf("plaintext client got an HTTP response: %q", line)
	}
}

func TestClientTLSRefusesBadPeerID(t *testing.T) {
	m := startManager(t, newCADir(t, testTD), "spiffe://"+testTD+"/service/web", 0)
	for _, tt := range []struct{ id, want string }{
		{"web", "invalid peer id"},
		{"", "invalid peer id"},
		{"spiffe://other.test/service/web", "wrong trust domain"},
	} {
		if cfg, err := m.ClientTLS(tt.id); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ClientTLS(%q) = %v, %v; want error %q", tt.id, cfg != nil, err, tt.want)
		}
	}
	var unstarted Manager
	if _, err := unstarted.ClientTLS("spiffe://" + testTD + "/service/web"); err == nil {
		t.Error("ClientTLS before Start succeeded")
	}
}

func TestTLSConfigSettings(t *testing.T) {
	m := startManager(t, newCADir(t, testTD), "spiffe://"+testTD+"/service/web", 0)
	s := m.ServerTLS(nil)
	if s.MinVersion != tls.VersionTLS12 || s.SessionTicketsDisabled || s.ClientAuth != tls.RequireAnyClientCert ||
		strings.Join(s.NextProtos, ",") != "h2,http/1.1" || s.VerifyConnection == nil || s.WrapSession == nil || s.UnwrapSession == nil {
		t.Errorf("server config: min %x tickets-off %v clientauth %v alpn %v", s.MinVersion, s.SessionTicketsDisabled, s.ClientAuth, s.NextProtos)
	}
	c, err := m.ClientTLS("spiffe://"+testTD+"/service/api", "h2")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.ClientSessionCache.(*sessionCache); c.MinVersion != tls.VersionTLS12 || !ok || strings.Join(c.NextProtos, ",") != "h2" ||
		c.GetClientCertificate == nil || c.VerifyPeerCertificate == nil || c.VerifyConnection == nil {
		t.Errorf("client config: min %x cache %T alpn %v", c.MinVersion, c.ClientSessionCache, c.NextProtos)
	}
	c2, _ := m.ClientTLS("spiffe://"+testTD+"/service/api", "h2")
	if c2.ClientSessionCache == c.ClientSessionCache {
		t.Error("two ClientTLS configs share a session cache")
	}
	if id, ok := PeerID(nil); ok || id != "" {
		t.Error("PeerID(nil) reported a peer")
	}
	if _, ok := PeerID(&tls.ConnectionState{}); ok {
		t.Error("PeerID without certificates reported a peer")
	}
}

// TestResumedSessionReauthorized: with a cache of crypto/tls's own (not
// ClientTLS's), a resumed session still meets the policy of the day.
func TestResumedSessionReauthorized(t *testing.T) {
	dir := newCADir(t, testTD)
	webID := "spiffe://" + testTD + "/service/web"
	apiID := "spiffe://" + testTD + "/service/api"
	web := startManager(t, dir, webID, 0)
	api := startManager(t, dir, apiID, 0)

	var deny atomic.Bool
	srv := web.ServerTLS(func(peer string) error {
		if deny.Load() {
			return errors.New("policy changed")
		}
		return nil
	})
	cli, err := api.ClientTLS(webID)
	if err != nil {
		t.Fatal(err)
	}
	cli.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	cli.ServerName = "web" // the cache key; without it each port is a new server

	if s, c := handshake(t, srv, cli); s.err != nil || c.err != nil {
		t.Fatalf("first: %v / %v", s.err, c.err)
	}
	s, c := handshake(t, srv, cli)
	if s.err != nil || c.err != nil {
		t.Fatalf("second: %v / %v", s.err, c.err)
	}
	if !s.state.DidResume {
		t.Fatal("second connection did not resume; the test would prove nothing")
	}
	deny.Store(true)
	s, _ = handshake(t, srv, cli)
	if s.err == nil || !strings.Contains(s.err.Error(), "policy changed") {
		t.Fatalf("resumed session after policy change: server err %v, want refusal", s.err)
	}
}

// TestRotationUnderLoad streams a response over one mTLS connection while
// both SVIDs rotate several times: the stream must finish intact, and a new
// connection must see the new server certificate.
func TestRotationUnderLoad(t *testing.T) {
	const (
		ttl    = time.Second // renewed at about 500 ms
		chunks = 50          // one every 50 ms: about 2.5 s
		every  = 50 * time.Millisecond
	)
	dir := newCADir(t, testTD)
	webID := "spiffe://" + testTD + "/service/web"
	apiID := "spiffe://" + testTD + "/service/api"
	web := startManager(t, dir, webID, ttl)
	api := startManager(t, dir, apiID, ttl)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		if id, ok := PeerID(r.TLS); !ok || id != apiID {
			http.Error(w, "wrong peer", http.StatusForbidden)
			return
		}
		fl := w.(http.Flusher)
		t := time.NewTicker(every)
		defer t.Stop()
		for i := range chunks {
			fmt.Fprintf(w, "chunk %02d\n", i)
			fl.Flush()
			select {
			case <-t.C:
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("/serial", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") })
	srv := &http.Server{Handler: mux, TLSConfig: web.ServerTLS(nil), ReadHeaderTimeout: 5 * time.Second}
	go srv.ServeTLS(ln, "", "")
	defer srv.Close()

	cfg, err := api.ClientTLS(webID, "h2")
	if err != nil {
		t.Fatal(err)
	}
	var dials atomic.Int32
	tr := &http.Transport{
		TLSClientConfig:   cfg,
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	url := "https://" + ln.Addr().String()

	webRenewals, apiRenewals := web.Renewals(), api.Renewals()
	resp, err := client.Get(url + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("proto %s, want HTTP/2", resp.Proto)
	}
	firstSerial := resp.TLS.PeerCertificates[0].SerialNumber
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("stream broke after %d bytes: %v", len(body), err)
	}
	var want strings.Builder
	for i := range chunks {
		fmt.Fprintf(&want, "chunk %02d\n", i)
	}
	if string(body) != want.String() {
		t.Fatalf("stream corrupted: got %d bytes, want %d", len(body), want.Len())
	}
	if d := dials.Load(); d != 1 {
		t.Errorf("%d dials during the stream, want one connection", d)
	}
	if n := web.Renewals() - webRenewals; n < 2 {
		t.Errorf("server renewed %d times during the stream, want >= 2", n)
	}
	if n := api.Renewals() - apiRenewals; n < 2 {
		t.Errorf("client renewed %d times during the stream, want >= 2", n)
	}

	// A new connection gets the renewed certificate; the first connection's
	// certificate has expired by now, so this also proves new handshakes do
	// not reuse it.
	tr.CloseIdleConnections()
	resp, err = client.Get(url + "/serial")
	if err != nil {
		t.Fatalf("new connection after rotation: %v", err)
	}
	resp.Body.Close()
	if d := dials.Load(); d != 2 {
		t.Errorf("%d dials, want a second connection", d)
	}
	if s := resp.TLS.PeerCertificates[0].SerialNumber; s.Cmp(firstSerial) == 0 {
		t.Errorf("new connection saw the first serial %x again", s)
	}
	if got, _ := PeerID(resp.TLS); got != webID {
		t.Errorf("new connection peer %q", got)
	}
}
