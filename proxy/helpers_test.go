package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testLogger formats every record (so the logging paths run) and discards it.
func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(logSink, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fixedRoute routes every request to ups.
func fixedRoute(ups ...*Upstream) func(*http.Request) ([]*Upstream, error) {
	return func(*http.Request) ([]*Upstream, error) { return ups, nil }
}

// startServer starts a Server for h on 127.0.0.1 and stops it at the end of
// the test.
func startServer(t testing.TB, h http.Handler, cfg *tls.Config) *Server {
	t.Helper()
	return startWith(t, &Server{Handler: h, TLS: cfg})
}

// startProxy starts a plain Server in front of a Handler with the given
// route and pool.
func startProxy(t testing.TB, h *Handler) string {
	t.Helper()
	if h.Pool == nil {
		h.Pool = &Pool{}
	}
	if h.Via == "" {
		h.Via = "test-hop"
	}
	if h.Logger == nil {
		h.Logger = testLogger()
	}
	p := h.Pool
	t.Cleanup(p.CloseIdle)
	return startServer(t, h, nil).BoundAddr()
}

// plainUpstream starts an httptest server and returns it with its Upstream.
func plainUpstream(t testing.TB, h http.Handler) (*httptest.Server, *Upstream) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	return srv, &Upstream{Key: addr, Addr: addr, Name: "up-" + addr}
}

// tlsUpstream starts an httptest TLS server offering h2 and http/1.1, and
// returns it with an Upstream whose TLS configuration trusts it. newConns
// counts the TCP connections the upstream accepted.
func tlsUpstream(t testing.TB, h http.Handler) (*httptest.Server, *Upstream, *atomic.Int64) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	// Handshakes cut short by the client's racing dials are expected.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	var newConns atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			newConns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	addr := srv.Listener.Addr().String()
	return srv, &Upstream{Key: addr + "|tls", Addr: addr, TLS: &tls.Config{RootCAs: roots}, Name: "tls-" + addr}, &newConns
}

// refusedAddr returns a loopback address nothing listens on.
func refusedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// rawExchange sends a raw HTTP/1.1 request and reads one response.
func rawExchange(t testing.TB, addr, req string) (*http.Response, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, string(body)
}

// seen is what the echo upstream reports about the request it received.
type seen struct {
	Host   string
	URI    string
	Proto  int
	Header http.Header
	Body   string
}

// echoHandler answers with a JSON description of the request, and with
// response fields a proxy must filter.
func echoHandler(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h := w.Header()
	h.Set("Connection", "X-Resp-Hop")
	h.Set("X-Resp-Hop", "1")
	h.Set("Keep-Alive", "timeout=5")
	h.Set("Proxy-Authenticate", "Basic realm=x")
	h.Set("Via", "1.1 app")
	h.Set("X-Keep", "yes")
	h.Set("Alt-Svc", `h3=":8443"`)
	h.Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(seen{Host: r.Host, URI: r.RequestURI, Proto: r.ProtoMajor, Header: r.Header, Body: string(body)})
}

func decodeSeen(t testing.TB, body string) seen {
	t.Helper()
	var s seen
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return s
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func joined(h http.Header, k string) string { return strings.Join(h.Values(k), ", ") }

func heapInuse() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

var logSink io.Writer = io.Discard // os.Stderr to see the records
