package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3Client returns an HTTP/3 client trusting roots.
func h3Client(t testing.TB, roots *x509.CertPool, cache tls.ClientSessionCache) (*http.Client, *http3.Transport) {
	t.Helper()
	tr := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.test", ClientSessionCache: cache}}
	t.Cleanup(func() { _ = tr.Close() })
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, tr
}

// TestHTTP3SameAnswer serves the forwarding Handler over TCP and HTTP/3 on
// one port and checks that HTTP/1.1, HTTP/2 and HTTP/3 clients get the same
// answer, that TCP responses advertise the edge's own HTTP/3 listener
// (and not the upstream's), and that HTTP/3 applies the same limits.
func TestHTTP3SameAnswer(t *testing.T) {
	_, up := plainUpstream(t, http.HandlerFunc(echoHandler))
	h := &Handler{Route: fixedRoute(up), Pool: &Pool{}, Via: "edge", Public: true, Logger: testLogger()}
	t.Cleanup(h.Pool.CloseIdle)
	cfg, roots := selfSigned(t)
	s := startWith(t, &Server{Handler: h, TLS: cfg, HTTP3: true, Public: true, MaxBodyBytes: 100})
	addr := s.BoundAddr()
	_, port, _ := net.SplitHostPort(addr)
	wantAltSvc := `h3=":` + port + `"; ma=2592000`

	h3c, _ := h3Client(t, roots, nil)
	clients := []struct {
		name  string
		c     *http.Client
		major int
	}{
		{"HTTP/1.1", tlsClient(t, roots, false), 1},
		{"HTTP/2", tlsClient(t, roots, true), 2},
		{"HTTP/3", h3c, 3},
	}
	var bodies []seen
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "https://"+addr+"/path?q=1", strings.NewReader("hello"))
			req.Host = "example.test"
			resp, err := c.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || resp.ProtoMajor != c.major {
				t.Fatalf("%s %d, want HTTP/%d 200", resp.Proto, resp.StatusCode, c.major)
			}
			got := resp.Header.Values("Alt-Svc")
			if c.major < 3 && (len(got) != 1 || got[0] != wantAltSvc) {
				t.Errorf("Alt-Svc %q, want the edge's own %q only", got, wantAltSvc)
			}
			if c.major == 3 && len(got) != 0 {
				t.Errorf("HTTP/3 response carries Alt-Svc %q", got)
			}
			sn := decodeSeen(t, string(b))
			if sn.Body != "hello" || sn.Host != "example.test" || sn.URI != "/path?q=1" {
				t.Errorf("upstream saw %+v", sn)
			}
			if v := sn.Header.Get("Via"); v != strconv.Itoa(c.major)+" edge" && v != "1.1 edge" {
				t.Errorf("Via %q", v)
			}
			sn.Header.Del("Via")
			bodies = append(bodies, sn)

			// The same body limit on every protocol.
			req, _ = http.NewRequest("POST", "https://"+addr+"/", strings.NewReader(strings.Repeat("x", 101)))
			req.Host = "example.test"
			resp2, err := c.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp2.Body.Close()
			if resp2.StatusCode != http.StatusRequestEntityTooLarge {
				t.Errorf("body over the limit: %d, want 413", resp2.StatusCode)
			}
		})
	}
	if len(bodies) == 3 && joined(bodies[1].Header, "X-Forwarded-Proto") != joined(bodies[2].Header, "X-Forwarded-Proto") {
		t.Errorf("HTTP/2 and HTTP/3 forwarded differently: %v vs %v", bodies[1].Header, bodies[2].Header)
	}
}

// TestHTTP3PortInUse: a UDP port taken by someone else fails Start and
// leaves the TCP port free.
func TestHTTP3PortInUse(t *testing.T) {
	cfg, _ := selfSigned(t)
	// Find a UDP port whose TCP twin is free (bounded attempts).
	for attempt := 0; attempt < 10; attempt++ {
		udp, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := udp.LocalAddr().String()
		s := &Server{Addr: addr, Handler: http.NotFoundHandler(), TLS: cfg, HTTP3: true, Logger: testLogger()}
		err = s.Start(context.Background())
		udp.Close()
		if err == nil {
			_ = s.Shutdown(context.Background())
			t.Fatal("Start succeeded with the UDP port in use")
		}
		if strings.Contains(err.Error(), "listen tcp") {
			continue // the TCP twin was taken; try another port
		}
		if !strings.Contains(err.Error(), "http3") || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("error %q does not say HTTP/3's port is in use", err)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("TCP port still held after the failed Start: %v", err)
		}
		ln.Close()
		return
	}
	t.Skip("no UDP port with a free TCP twin in 10 attempts")
}

// TestHTTP3Shutdown: an HTTP/3 request in flight finishes during Shutdown.
func TestHTTP3Shutdown(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	cfg, roots := selfSigned(t)
	s := &Server{Addr: "127.0.0.1:0", TLS: cfg, HTTP3: true, Logger: testLogger(),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				close(entered)
				<-release
			}
			io.WriteString(w, "finished")
		})}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, _ := h3Client(t, roots, nil)
	got := make(chan string, 1)
	go func() {
		resp, err := c.Get("https://" + s.BoundAddr() + "/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	<-entered
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with an HTTP/3 request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if b := <-got; b != "finished" {
		t.Fatalf("in-flight HTTP/3 request: %q", b)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	// The UDP port is released.
	udp, err := net.ListenPacket("udp", s.BoundAddr())
	if err != nil {
		t.Fatalf("UDP port still bound after Shutdown: %v", err)
	}
	udp.Close()
}

// TestHTTP3ConnsPerIP: QUIC connections count toward MaxConnsPerIP with
// the TCP ones.
func TestHTTP3ConnsPerIP(t *testing.T) {
	cfg, roots := selfSigned(t)
	s := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), TLS: cfg, HTTP3: true, Public: true, MaxConnsPerIP: 1})
	addr := s.BoundAddr()
	// One TCP connection holds the only slot of 127.0.0.1.
	held, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "example.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	c, _ := h3Client(t, roots, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+addr+"/", nil)
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("HTTP/3 connection over the per-IP limit served: %d", resp.StatusCode)
	}
	if s.Stats().RefusedConns == 0 {
		t.Error("refused QUIC connection not counted")
	}
	held.Close()
	waitFor(t, "the TCP slot to be released", 5*time.Second, func() bool { return s.Stats().RefusedConns > 0 && s.lim.open(addrIP(held.LocalAddr())) == 0 })
	if code, err := getStatus(c, "https://"+addr+"/"); err != nil || code != 200 {
		t.Fatalf("HTTP/3 after the slot was freed: %d %v", code, err)
	}
}

// resumedEarly dials addr twice with one session cache and returns the
// second connection, dialed for 0-RTT.
func resumedEarly(t *testing.T, addr string, roots *x509.CertPool) *quic.Conn {
	t.Helper()
	cache := tls.NewLRUClientSessionCache(4)
	c, _ := h3Client(t, roots, cache)
	if code, err := getStatus(c, "https://"+addr+"/"); err != nil || code != 200 {
		t.Fatalf("first request: %d %v", code, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddrEarly(ctx, addr,
		&tls.Config{RootCAs: roots, ServerName: "example.test", ClientSessionCache: cache, NextProtos: []string{http3.NextProtoH3}},
		&quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.CloseWithError(0, "") })
	return conn
}

// TestHTTP3ZeroRTT: early data is refused by default; when allowed, a GET
// in 0-RTT is served.
//
// quic-go v0.65's 0-RTT client races with itself (its connection loop
// applies the server's transport parameters while the early stream reads
// them), which the race detector reports about one run in five. The race
// is in the test's client, not in meshd's server, so under -race this test
// does not run; .ci/run runs it again without -race.
func TestHTTP3ZeroRTT(t *testing.T) {
	if raceDetector {
		t.Skip("quic-go's 0-RTT client races with itself under -race; .ci/run runs this test without -race")
	}
	cfg, roots := selfSigned(t)
	for _, allow := range []bool{false, true} {
		t.Run("allow="+strconv.FormatBool(allow), func(t *testing.T) {
			s := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), TLS: cfg, HTTP3: true, Public: true, Allow0RTT: allow})
			conn := resumedEarly(t, s.BoundAddr(), roots)
			cc := (&http3.Transport{}).NewClientConn(conn)
			req, _ := http.NewRequest(http3.MethodGet0RTT, "https://example.test/", nil)
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("GET: %d", resp.StatusCode)
			}
			select {
			case <-conn.HandshakeComplete():
			case <-time.After(5 * time.Second):
				t.Fatal("handshake did not complete")
			}
			if used := conn.ConnectionState().Used0RTT; used != allow {
				t.Errorf("0-RTT used %v, want %v", used, allow)
			}
		})
	}
}

// TestEarlyDataRule checks the RFC 8470 rule on requests that arrived
// before the handshake completed, which only HTTP/3 produces.
func TestEarlyDataRule(t *testing.T) {
	tests := []struct {
		allow     bool
		method    string
		want      int
		earlyData string
	}{
		{false, "GET", 425, ""},
		{true, "GET", 200, "1"},
		{true, "HEAD", 200, "1"},
		{true, "OPTIONS", 200, "1"},
		{true, "POST", 425, ""},
		{true, "PUT", 425, ""},
		{true, "DELETE", 425, ""},
	}
	for _, tt := range tests {
		var gotEarly string
		g := &guard{n: new(atomic.Int64), lim: limits{allow0RTT: tt.allow},
			h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { gotEarly = r.Header.Get("Early-Data") })}
		r, _ := http.NewRequest(tt.method, "https://example.test/", nil)
		r.TLS = &tls.ConnectionState{HandshakeComplete: false}
		r.ProtoMajor = 3
		w := httptest.NewRecorder()
		g.ServeHTTP(w, r)
		if w.Code != tt.want || gotEarly != tt.earlyData {
			t.Errorf("allow=%v %s in early data: %d Early-Data %q, want %d %q", tt.allow, tt.method, w.Code, gotEarly, tt.want, tt.earlyData)
		}
		// After the handshake, every method is served, and a client's
		// own Early-Data field is not forwarded from a public listener.
		gotEarly = ""
		g.lim.public = true
		r, _ = http.NewRequest(tt.method, "https://example.test/", nil)
		r.Header.Set("Early-Data", "1")
		r.TLS = &tls.ConnectionState{HandshakeComplete: true}
		w = httptest.NewRecorder()
		g.ServeHTTP(w, r)
		if w.Code != 200 || gotEarly != "" {
			t.Errorf("allow=%v %s after the handshake: %d Early-Data %q", tt.allow, tt.method, w.Code, gotEarly)
		}
	}
}
