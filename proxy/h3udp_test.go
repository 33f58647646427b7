package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// testCA is a small certificate authority for mesh-style mTLS between
// test hops: leaves carry a SPIFFE URI SAN, servers require a client
// certificate of the CA and authorize its URI, as tlsmgr's configurations
// do for meshd.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "meshd test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leaf issues a certificate for the SPIFFE ID id, good for client and
// server authentication at 127.0.0.1.
func (ca *testCA) leaf(t testing.TB, id string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs:         []*url.URL{u},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// peerURI returns the URI SAN of a verified peer.
func peerURI(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 || len(cs.PeerCertificates[0].URIs) != 1 {
		return ""
	}
	return cs.PeerCertificates[0].URIs[0].String()
}

// server returns an mTLS server configuration presenting id that accepts
// only clients of the CA whose SPIFFE ID allow accepts.
func (ca *testCA) server(t testing.TB, id string, allow func(string) bool) *tls.Config {
	cert := ca.leaf(t, id)
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if id := peerURI(cs); !allow(id) {
				return fmt.Errorf("caller %q refused", id)
			}
			return nil
		},
	}
}

// client returns an mTLS client configuration presenting id that accepts
// only a server of the CA with SPIFFE ID want.
func (ca *testCA) client(t testing.TB, id, want string, roots *x509.CertPool) *tls.Config {
	cert := ca.leaf(t, id)
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   "127.0.0.1",
		VerifyConnection: func(cs tls.ConnectionState) error {
			if got := peerURI(cs); got != want {
				return fmt.Errorf("server is %q, want %q", got, want)
			}
			return nil
		},
	}
}

const (
	testGatewayID = "spiffe://test.mesh/gateway/eu/gw-1"
	testDNSID     = "spiffe://test.mesh/service/dns"
	testAPIID     = "spiffe://test.mesh/service/api"
)

// meshHop starts a mesh listener (mTLS TCP and, with h3, HTTP/3 with
// datagrams on the same port) presenting id and serving h, and returns
// the Upstream a peer with identity from dials it as.
func meshHop(t *testing.T, ca *testCA, id string, h *Handler, h3 bool, from string) (*Server, *Upstream) {
	t.Helper()
	allow := func(caller string) bool { return strings.HasPrefix(caller, "spiffe://test.mesh/") }
	s := startWith(t, &Server{TLS: ca.server(t, id, allow), Handler: h, HTTP3: h3, HTTP3Datagrams: h3})
	u := &Upstream{Key: s.BoundAddr() + "|" + id, Addr: s.BoundAddr(), TLS: ca.client(t, from, id, ca.pool), Name: id}
	return s, u
}

// udpHops is a UDP forwarder whose flows go through the handler front
// as tunnels to "dns.mesh:dns", as a sidecar's --udp-out does.
func udpHops(t *testing.T, front *Handler) (*UDPForwarder, *net.UDPAddr) {
	t.Helper()
	f := &UDPForwarder{IdleTimeout: 30 * time.Second, Logger: testLogger(),
		Open: func(ctx context.Context, client netip.AddrPort) (io.ReadWriteCloser, error) {
			hdr := http.Header{HeaderProtocol: {"udp"}, HeaderClient: {client.String()}}
			return front.OpenTunnel(ctx, "dns.mesh:dns", hdr, client.String())
		}}
	addr, _ := serveUDP(t, f)
	return f, addr
}

// relayHop is the last hop: a mesh listener whose handler relays UDP
// tunnels to a UDP echo server, as the sidecar beside the app does.
func relayHop(t *testing.T, ca *testCA, h3 bool, from string) (*Handler, *Upstream) {
	t.Helper()
	app := &Upstream{Key: "app-udp", Addr: udpEcho(t), Raw: true, UDP: true}
	h := &Handler{Route: fixedRoute(app), Pool: &Pool{}, Via: "dns-1", Logger: testLogger()}
	t.Cleanup(h.Pool.CloseIdle)
	_, u := meshHop(t, ca, testDNSID, h, h3, from)
	return h, u
}

// TestUDPOverHTTP3Echo: 1,000 datagrams from one client, then 300 from
// each of 4 clients at once, through UDPForwarder → HTTP/3 hop (mTLS,
// datagrams) → RelayUDP → a UDP echo server; every one comes back, none
// lost, and every one went as an HTTP/3 datagram.
func TestUDPOverHTTP3Echo(t *testing.T) {
	ca := newTestCA(t)
	relay, up := relayHop(t, ca, true, testAPIID)
	front := &Handler{Route: fixedRoute(up), Pool: &Pool{HTTP2: true, UDPOverHTTP3: true}, Via: "api-1", Logger: testLogger()}
	t.Cleanup(front.Pool.CloseIdle)
	f, addr := udpHops(t, front)
	deadline := time.Now().Add(20 * time.Second)
	if err := runClient(udpClient(t), addr, "solo", 1000, 32, deadline); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		c := udpClient(t)
		wg.Go(func() { errs <- runClient(c, addr, fmt.Sprintf("c%d", i), 300, 16, deadline) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	const total = 1000 + 4*300
	waitFor(t, "counters", 2*time.Second, func() bool { st := f.Stats(); return st.DatagramsDown == total })
	st := f.Stats()
	t.Logf("forwarder: %+v", st)
	if st.DatagramsUp != total || st.DatagramsUpH3 != total || st.DatagramsDownH3 != total || st.Flows != 5 {
		t.Errorf("forwarder %+v, want 5 flows and %d datagrams each way, all over HTTP/3", st, total)
	}
	if d := st.DroppedTooBig + st.DroppedTooLarge + st.DroppedQueueFull + st.DroppedBadContext + st.DroppedFlowClosed + st.DroppedSendError; d != 0 {
		t.Errorf("%d dropped", d)
	}
	hop := front.Pool.UDPHopStats()
	t.Logf("client hop: %+v", hop)
	if hop.H3Opened != 5 || hop.H3Fallbacks != 0 || hop.DatagramsSent != total || hop.DatagramsReceived != total {
		t.Errorf("client hop %+v, want 5 tunnels over HTTP/3 with %d datagrams each way", hop, total)
	}
	srv := relay.Pool.UDPHopStats()
	t.Logf("server hop: %+v", srv)
	if srv.H3Accepted != 5 || srv.DatagramsReceived != total || srv.DatagramsSent != total {
		t.Errorf("server hop %+v, want 5 tunnels accepted with %d datagrams each way", srv, total)
	}
	// The relay beside the app took them from the HTTP/3 stream itself.
	if rst := relay.Pool.UDPRelayStats(); rst.DatagramsUp != total || rst.DatagramsUpH3 != total || rst.DatagramsDownH3 != total {
		t.Errorf("relay %+v, want %d datagrams each way, straight from HTTP/3", rst, total)
	}
}

// TestUDPOverHTTP3TooLarge: a payload that fits UDP but not one QUIC
// DATAGRAM frame is dropped and counted at the hop, never fragmented; the
// flow carries the next datagram as if nothing happened.
func TestUDPOverHTTP3TooLarge(t *testing.T) {
	ca := newTestCA(t)
	_, up := relayHop(t, ca, true, testAPIID)
	front := &Handler{Route: fixedRoute(up), Pool: &Pool{HTTP2: true, UDPOverHTTP3: true}, Via: "api-1", Logger: testLogger()}
	t.Cleanup(front.Pool.CloseIdle)
	f, addr := udpHops(t, front)
	c := udpClient(t)
	if err := pingPong(c, addr, []byte("first"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 1500) // over h3PacketSize with QUIC's overhead
	if err := pingPong(c, addr, big, 300*time.Millisecond); err == nil {
		t.Fatal("a 1,500-byte datagram came back over HTTP/3")
	}
	if err := pingPong(c, addr, []byte("after"), 5*time.Second); err != nil {
		t.Fatalf("the flow after the drop: %v", err)
	}
	// The counters move just after a datagram is sent on: the echo can
	// come back first.
	waitFor(t, "counters", 2*time.Second, func() bool { st := f.Stats(); return st.DatagramsUp == 2 && st.DatagramsUpH3 == 2 })
	st := f.Stats()
	if st.DroppedTooLarge != 1 || st.DatagramsUp != 2 || st.DatagramsUpH3 != 2 {
		t.Errorf("forwarder %+v, want 1 dropped too large and 2 carried over HTTP/3", st)
	}
	if hop := front.Pool.UDPHopStats(); hop.DroppedTooLarge != 1 {
		t.Errorf("hop %+v, want 1 dropped too large", hop)
	}
}

// TestUDPOverHTTP3Fallback: the peer serves no HTTP/3 (its UDP port is
// closed): the first flow waits for the QUIC dial timeout and goes over
// HTTP/2 with capsules; the peer is remembered, so the next flow does not
// wait at all.
func TestUDPOverHTTP3Fallback(t *testing.T) {
	ca := newTestCA(t)
	_, up := relayHop(t, ca, false, testAPIID)
	pool := &Pool{HTTP2: true, UDPOverHTTP3: true, H3DialTimeout: 300 * time.Millisecond, H3HoldDown: time.Minute}
	front := &Handler{Route: fixedRoute(up), Pool: pool, Via: "api-1", Logger: testLogger()}
	t.Cleanup(pool.CloseIdle)
	f, addr := udpHops(t, front)

	c := udpClient(t)
	start := time.Now()
	if err := pingPong(c, addr, []byte("first"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	first := time.Since(start)
	hop := pool.UDPHopStats()
	if hop.H3DialFails != 1 || hop.H3Fallbacks != 1 || hop.PeersNoH3 != 1 || hop.H3Opened != 0 {
		t.Errorf("after the first flow: %+v, want 1 failed dial, 1 fallback, the peer remembered", hop)
	}
	if first < 300*time.Millisecond {
		t.Errorf("first flow answered in %v, before the QUIC dial timeout", first)
	}
	if err := runClient(c, addr, "c", 200, 16, time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	// A second flow: no QUIC dial, no wait.
	c2 := udpClient(t)
	start = time.Now()
	if err := pingPong(c2, addr, []byte("second"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d >= 250*time.Millisecond {
		t.Errorf("second flow answered in %v: it waited for QUIC again", d)
	}
	hop = pool.UDPHopStats()
	if hop.H3DialFails != 1 || hop.H3Fallbacks != 2 {
		t.Errorf("after the second flow: %+v, want still 1 failed dial and 2 fallbacks", hop)
	}
	if st := f.Stats(); st.DatagramsUpH3 != 0 || st.DatagramsUp != 202 {
		t.Errorf("forwarder %+v, want 202 datagrams, none over HTTP/3", st)
	}
}

// TestUDPOverHTTP3Gateway: a gateway in the middle takes HTTP/3
// datagrams and sends capsules on HTTP/2, or the other way round; both
// carry every datagram.
func TestUDPOverHTTP3Gateway(t *testing.T) {
	for _, tc := range []struct {
		name           string
		inH3, onwardH3 bool
	}{
		{"h3 in, h2 onward", true, false},
		{"h2 in, h3 onward", false, true},
		{"h3 both", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newTestCA(t)
			_, relayUp := relayHop(t, ca, tc.onwardH3, testGatewayID)
			gw := &Handler{Route: fixedRoute(relayUp), Pool: &Pool{HTTP2: true, UDPOverHTTP3: tc.onwardH3}, Via: "gw-1", Logger: testLogger()}
			t.Cleanup(gw.Pool.CloseIdle)
			_, gwUp := meshHop(t, ca, testGatewayID, gw, tc.inH3, testAPIID)
			front := &Handler{Route: fixedRoute(gwUp), Pool: &Pool{HTTP2: true, UDPOverHTTP3: tc.inH3}, Via: "api-1", Logger: testLogger()}
			t.Cleanup(front.Pool.CloseIdle)
			f, addr := udpHops(t, front)
			if err := runClient(udpClient(t), addr, "solo", 500, 32, time.Now().Add(20*time.Second)); err != nil {
				t.Fatal(err)
			}
			st := f.Stats()
			if want := int64(0); tc.inH3 {
				want = 500
				if st.DatagramsUpH3 != want {
					t.Errorf("forwarder %+v, want %d over HTTP/3", st, want)
				}
			} else if st.DatagramsUpH3 != want {
				t.Errorf("forwarder %+v, want none over HTTP/3", st)
			}
			hop := gw.Pool.UDPHopStats()
			t.Logf("gateway: %+v", hop)
			switch {
			case tc.inH3 && hop.H3Accepted != 1:
				t.Errorf("gateway accepted %d tunnels over HTTP/3, want 1", hop.H3Accepted)
			case tc.onwardH3 && hop.H3Opened != 1:
				t.Errorf("gateway opened %d tunnels over HTTP/3, want 1", hop.H3Opened)
			}
			var h3 int64
			if tc.inH3 {
				h3 += 500
			}
			if tc.onwardH3 {
				h3 += 500
			}
			if hop.DatagramsSent != h3 || hop.DatagramsReceived != h3 {
				t.Errorf("gateway sent %d and received %d HTTP/3 datagrams, want %d each", hop.DatagramsSent, hop.DatagramsReceived, h3)
			}
		})
	}
}

// TestUDPOverHTTP3RefusesUnknownClient: the HTTP/3 side of a mesh
// listener checks the caller's certificate as the TCP side does: a client
// of another CA fails the QUIC handshake, and one of the CA whose SPIFFE
// ID is not allowed too. Neither gets a tunnel, over HTTP/3 or through the
// fallback.
func TestUDPOverHTTP3RefusesUnknownClient(t *testing.T) {
	ca := newTestCA(t)
	app := &Upstream{Key: "app-udp", Addr: udpEcho(t), Raw: true, UDP: true}
	h := &Handler{Route: fixedRoute(app), Pool: &Pool{}, Via: "dns-1", Logger: testLogger()}
	allow := func(caller string) bool { return caller == testAPIID }
	s := startWith(t, &Server{TLS: ca.server(t, testDNSID, allow), Handler: h, HTTP3: true, HTTP3Datagrams: true})
	other := newTestCA(t)
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"another CA", other.client(t, testAPIID, testDNSID, ca.pool)},
		{"identity not allowed", ca.client(t, "spiffe://test.mesh/service/evil", testDNSID, ca.pool)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := &Upstream{Key: tc.name, Addr: s.BoundAddr(), TLS: tc.cfg}
			pool := &Pool{HTTP2: true, UDPOverHTTP3: true}
			t.Cleanup(pool.CloseIdle)
			// The QUIC handshake itself is refused.
			peer := pool.newH3Peer(up, time.Second, time.Minute)
			if _, err := peer.dial(context.Background()); err == nil {
				t.Fatal("QUIC handshake with an unknown client identity succeeded")
			} else {
				t.Logf("refused: %v", err)
			}
			// And through a handler: no tunnel at all.
			front := &Handler{Route: fixedRoute(up), Pool: pool, Via: "evil", Logger: testLogger()}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			stream, err := front.OpenTunnel(ctx, "dns.mesh:dns", http.Header{HeaderProtocol: {"udp"}}, "127.0.0.1:1")
			if err == nil {
				stream.Close()
				t.Fatal("a tunnel opened for an unknown client identity")
			}
			if hop := pool.UDPHopStats(); hop.H3Opened != 0 {
				t.Errorf("hop %+v: a tunnel opened over HTTP/3", hop)
			}
		})
	}
	// The allowed identity gets its tunnel over HTTP/3.
	up := &Upstream{Key: "api", Addr: s.BoundAddr(), TLS: ca.client(t, testAPIID, testDNSID, ca.pool)}
	pool := &Pool{HTTP2: true, UDPOverHTTP3: true}
	t.Cleanup(pool.CloseIdle)
	front := &Handler{Route: fixedRoute(up), Pool: pool, Via: "api-1", Logger: testLogger()}
	_, addr := udpHops(t, front)
	if err := pingPong(udpClient(t), addr, []byte("allowed"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if hop := pool.UDPHopStats(); hop.H3Opened != 1 {
		t.Errorf("hop %+v, want the allowed caller's tunnel over HTTP/3", hop)
	}
}

// TestH3UDPCapsuleWrites: Write takes capsules split and coalesced
// anywhere and sends one datagram per DATAGRAM capsule; other capsule
// types are ignored, other context IDs dropped and counted.
func TestH3UDPCapsuleWrites(t *testing.T) {
	fs := &fakeH3Stream{recv: make(chan []byte, 8)}
	var c udpHopCounters
	s := newH3UDP(fs, &c, nil)
	defer s.Close()
	var b []byte
	b = appendDatagram(b, []byte("one"))
	b = appendCapsule(b, 0x2a, []byte("unknown type"))
	b = appendDatagram(b, []byte("two"))
	b = appendCapsule(b, capsuleDatagram, append([]byte{1}, "context 1"...))
	b = appendDatagram(b, nil)
	for i := 0; i < len(b); i += 3 {
		if _, err := s.Write(b[i:min(i+3, len(b))]); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"\x00one", "\x00two", "\x00"}
	if got := fs.sentStrings(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("sent %q, want %q", got, want)
	}
	if c.badCtx.Load() != 1 || c.sent.Load() != 3 {
		t.Errorf("bad context %d, sent %d; want 1 and 3", c.badCtx.Load(), c.sent.Load())
	}
	// Read: one capsule per datagram, whole or in pieces.
	fs.recv <- []byte("\x00hello")
	fs.recv <- []byte("\x05ignored")
	fs.recv <- []byte("\x00x")
	got := make([]byte, 0, 64)
	buf := make([]byte, 4)
	for len(got) < len(appendDatagram(appendDatagram(nil, []byte("hello")), []byte("x"))) {
		n, err := s.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if want := appendDatagram(appendDatagram(nil, []byte("hello")), []byte("x")); string(got) != string(want) {
		t.Errorf("read %q, want %q", got, want)
	}
	close(fs.recv)
	if _, err := s.Read(buf); err != io.EOF {
		t.Errorf("read after the end: %v, want io.EOF", err)
	}
	// A capsule over the limit is an error.
	if _, err := s.Write(appendVarint(appendVarint(nil, 0), maxCapsuleLen+1)); !errors.Is(err, errCapsuleTooLarge) {
		t.Errorf("oversized capsule: %v", err)
	}
}

// fakeH3Stream records datagrams sent and hands out those in recv; its
// own bytes end at once.
type fakeH3Stream struct {
	mu   sync.Mutex
	sent [][]byte
	recv chan []byte
}

func (f *fakeH3Stream) Read([]byte) (int, error)         { return 0, io.EOF }
func (f *fakeH3Stream) Write(p []byte) (int, error)      { return len(p), nil }
func (f *fakeH3Stream) Close() error                     { return nil }
func (f *fakeH3Stream) CancelRead(quic.StreamErrorCode)  {}
func (f *fakeH3Stream) CancelWrite(quic.StreamErrorCode) {}

func (f *fakeH3Stream) SendDatagram(b []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, append([]byte(nil), b...))
	return nil
}

func (f *fakeH3Stream) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	select {
	case b, ok := <-f.recv:
		if !ok {
			return nil, io.EOF
		}
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fakeH3Stream) sentStrings() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s []string
	for _, b := range f.sent {
		s = append(s, string(b))
	}
	return s
}

// TestUDPOverHTTP3ManyFlows: 260 flows open together to one peer, more than the
// streams its HTTP/3 server allows one connection (250): the client opens
// a second connection instead of leaving flows waiting for a stream, and
// every flow's datagram comes back.
func TestUDPOverHTTP3ManyFlows(t *testing.T) {
	ca := newTestCA(t)
	_, up := relayHop(t, ca, true, testAPIID)
	front := &Handler{Route: fixedRoute(up), Pool: &Pool{HTTP2: true, UDPOverHTTP3: true}, Via: "api-1", Logger: testLogger()}
	t.Cleanup(front.Pool.CloseIdle)
	f, addr := udpHops(t, front)
	const flows = 260
	deadline := time.Now().Add(20 * time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, flows)
	// 16 opening at a time: flows stay open (idle timeout 30 s), so all
	// 260 are alive together, without one burst of 260 answers at once,
	// which UDP may lose anywhere on its way.
	slots := make(chan struct{}, 16)
	for i := range flows {
		c := udpClient(t)
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			errs <- runClient(c, addr, fmt.Sprintf("f%d", i), 1, 1, deadline)
		})
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
		}
	}
	st := f.Stats()
	if failed > 0 || st.Flows != flows {
		t.Errorf("%d of %d flows got no answer; forwarder %+v", failed, flows, st)
	}
	if hop := front.Pool.UDPHopStats(); hop.H3Opened != flows || hop.H3Fallbacks != 0 {
		t.Errorf("client hop %+v, want %d tunnels over HTTP/3, no fallback", hop, flows)
	}
}
