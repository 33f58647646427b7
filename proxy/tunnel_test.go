package proxy

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// tcpServer accepts connections on 127.0.0.1 and runs serve for each.
func tcpServer(t testing.TB, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// replyAfterEOF reads its client to the end (the client's half-close), then
// answers "got N: <first bytes>" and closes: a server that needs half-close
// carried end to end.
func replyAfterEOF(c net.Conn) {
	b, err := io.ReadAll(c)
	if err != nil {
		return
	}
	head := b
	if len(head) > 16 {
		head = head[:16]
	}
	_, _ = io.WriteString(c, "got "+strconv.Itoa(len(b))+": "+string(head))
}

// hopChain builds client → A (plain HTTP/1.1) → B (TLS, reached over
// HTTP/2) → C (TLS, reached over HTTP/1.1) → last, the shape of sidecar
// outbound → gateway across regions → sidecar → app. last is the
// Upstream C forwards to. It returns A's address and the three handlers.
func hopChain(t *testing.T, last *Upstream) (string, [3]*Handler) {
	t.Helper()
	srvCfg, roots := selfSigned(t)
	clientTLS := &tls.Config{RootCAs: roots, ServerName: "example.test"}
	var hs [3]*Handler
	hs[2] = &Handler{Route: fixedRoute(last), Pool: &Pool{}, Via: "hop-c", Logger: testLogger(), TunnelIdleTimeout: time.Minute}
	c := startServer(t, hs[2], srvCfg.Clone())
	upC := &Upstream{Key: "c", Addr: c.BoundAddr(), TLS: clientTLS, HTTP1: true}
	hs[1] = &Handler{Route: fixedRoute(upC), Pool: &Pool{HTTP2: true}, Via: "hop-b", Logger: testLogger()}
	b := startServer(t, hs[1], srvCfg.Clone())
	upB := &Upstream{Key: "b", Addr: b.BoundAddr(), TLS: clientTLS}
	hs[0] = &Handler{Route: fixedRoute(upB), Pool: &Pool{HTTP2: true}, Via: "hop-a", Logger: testLogger()}
	a := startServer(t, hs[0], nil)
	for _, h := range hs {
		t.Cleanup(h.Pool.CloseIdle)
	}
	return a.BoundAddr(), hs
}

// TestConnectTunnelHalfClose: a CONNECT through three hops (HTTP/1.1, an
// HTTP/2 stream, an HTTP/1.1 connection of its own) to a raw TCP server
// that answers only after the client half-closed: the client's FIN must
// travel to the server, and the answer and the server's close back.
func TestConnectTunnelHalfClose(t *testing.T) {
	app := tcpServer(t, replyAfterEOF)
	addr, hs := hopChain(t, &Upstream{Key: "app-tcp", Addr: app, Raw: true})

	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// The request and the tunnel's first bytes in one write: bytes after
	// the head belong to the tunnel.
	payload := strings.Repeat("0123456789", 10000) // 100 kB: more than one buffer
	if _, err := io.WriteString(c, "CONNECT db.mesh:pg HTTP/1.1\r\nHost: db.mesh:pg\r\n\r\n"+payload[:10]); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	if via := joined(resp.Header, "Via"); via != "1.1 hop-c, 1.1 hop-b, 2 hop-a" {
		t.Errorf("Via %q, want every hop", via)
	}
	if _, err := io.WriteString(c, payload[10:]); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("read after half-close: %v (got %q)", err, got)
	}
	if want := "got 100000: 0123456789012345"; string(got) != want {
		t.Fatalf("answer %q, want %q", got, want)
	}
	waitFor(t, "tunnels counted closed", 5*time.Second, func() bool {
		for _, h := range hs {
			if s := h.Stats(); s.Tunnels != 1 || s.TunnelsOpen != 0 || s.TunnelBytesUp != 100000 || s.TunnelBytesDown != int64(len(got)) {
				return false
			}
		}
		return true
	})
}

// TestConnectTunnelRefusals: a CONNECT that cannot open answers with an
// error status, and no tunnel.
func TestConnectTunnelRefusals(t *testing.T) {
	app := tcpServer(t, replyAfterEOF)
	t.Run("public", func(t *testing.T) {
		addr := startProxy(t, &Handler{Route: fixedRoute(&Upstream{Key: "x", Addr: app, Raw: true}), Public: true})
		resp, _ := rawExchange(t, addr, "CONNECT db.mesh:pg HTTP/1.1\r\nHost: db.mesh:pg\r\n\r\n")
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("public CONNECT: status %d, want 405", resp.StatusCode)
		}
	})
	t.Run("dial fails", func(t *testing.T) {
		addr := startProxy(t, &Handler{Route: fixedRoute(&Upstream{Key: "x", Addr: refusedAddr(t), Raw: true})})
		resp, _ := rawExchange(t, addr, "CONNECT db.mesh:pg HTTP/1.1\r\nHost: db.mesh:pg\r\n\r\n")
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(resp.Header.Get("Proxy-Status"), "connection_refused") {
			t.Fatalf("status %d Proxy-Status %q, want 502 connection_refused", resp.StatusCode, resp.Header.Get("Proxy-Status"))
		}
	})
	t.Run("route refuses", func(t *testing.T) {
		addr := startProxy(t, &Handler{Route: func(*http.Request) ([]*Upstream, error) {
			return nil, &StatusError{Code: http.StatusForbidden, Msg: "meshd: not allowed"}
		}})
		resp, _ := rawExchange(t, addr, "CONNECT db.mesh:pg HTTP/1.1\r\nHost: db.mesh:pg\r\n\r\n")
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("status %d, want 403", resp.StatusCode)
		}
	})
	t.Run("upstream refuses", func(t *testing.T) {
		// The hop behind answers the CONNECT with an error: it comes back
		// as it is, and no tunnel opens.
		inner := startProxy(t, &Handler{Route: func(*http.Request) ([]*Upstream, error) {
			return nil, &StatusError{Code: http.StatusNotFound, Msg: "meshd: no such port"}
		}})
		addr := startProxy(t, &Handler{Route: fixedRoute(&Upstream{Key: "in", Addr: inner})})
		resp, body := rawExchange(t, addr, "CONNECT db.mesh:nope HTTP/1.1\r\nHost: db.mesh:nope\r\n\r\n")
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "no such port") {
			t.Fatalf("status %d body %q, want 404 from the hop behind", resp.StatusCode, body)
		}
	})
}

// TestTunnelIdleTimeout: a tunnel that carries nothing is closed at both
// ends after TunnelIdleTimeout; one that carries bytes is not.
func TestTunnelIdleTimeout(t *testing.T) {
	var closed atomic.Int64
	app := tcpServer(t, func(c net.Conn) {
		_, _ = io.Copy(c, c)
		closed.Add(1)
	})
	h := &Handler{Route: fixedRoute(&Upstream{Key: "x", Addr: app, Raw: true}), TunnelIdleTimeout: 300 * time.Millisecond}
	addr := startProxy(t, h)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	// Busy for longer than the idle timeout: still open.
	start := time.Now()
	for i := 0; i < 8; i++ {
		io.WriteString(c, "ping")
		var b [4]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			t.Fatalf("echo %d after %v: %v", i, time.Since(start), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Then idle: both ends closed.
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("read a byte from an idle tunnel")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("idle tunnel not closed")
	}
	waitFor(t, "the app's side closed", 5*time.Second, func() bool { return closed.Load() == 1 })
}

// wsAccept is RFC 6455 §4.2.2's Sec-WebSocket-Accept for key.
func wsAccept(key string) string {
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// wsApp is an HTTP/1.1 app that accepts WebSocket upgrades (the handshake
// only) on /ws and then echoes bytes, and reports what it was sent.
func wsApp(t *testing.T, seen chan<- *http.Request) *Upstream {
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" || !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "not a websocket", http.StatusNotFound)
			return
		}
		seen <- r
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+
			wsAccept(r.Header.Get("Sec-WebSocket-Key"))+"\r\n\r\n")
		_, _ = io.Copy(conn, brw)
	}))
	return up
}

// TestWebSocketThroughHops: an HTTP/1.1 WebSocket upgrade through the
// three hops reaches the app with the client's own handshake, path and
// query, and the client gets the app's Sec-WebSocket-Accept; bytes then
// flow both ways. A request the app refuses comes back as its answer.
func TestWebSocketThroughHops(t *testing.T) {
	seen := make(chan *http.Request, 1)
	addr, _ := hopChain(t, wsApp(t, seen))
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	key := "dGhlIHNhbXBsZSBub25jZQ=="
	io.WriteString(c, "GET /ws?room=1 HTTP/1.1\r\nHost: chat.example\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "+key+"\r\nSec-WebSocket-Protocol: chat\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-Websocket-Accept") != wsAccept(key) ||
		!strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		t.Fatalf("status %d header %v, want 101 with the app's accept", resp.StatusCode, resp.Header)
	}
	r := <-seen
	if r.URL.RequestURI() != "/ws?room=1" || r.Host != "chat.example" || r.Header.Get("Sec-Websocket-Key") != key ||
		r.Header.Get("Sec-Websocket-Protocol") != "chat" {
		t.Errorf("app saw %s %s host %q header %v", r.Method, r.URL, r.Host, r.Header)
	}
	if v := r.Header.Values("Via"); len(v) != 3 {
		t.Errorf("app saw Via %q, want the three hops", v)
	}
	for i := 0; i < 100; i++ {
		msg := "frame-" + strconv.Itoa(i)
		io.WriteString(c, msg)
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(br, b); err != nil || string(b) != msg {
			t.Fatalf("echo %d: %q %v", i, b, err)
		}
	}

	// Not a websocket path: the app's 404, not a tunnel.
	resp2, body := rawExchange(t, addr, "GET /other HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "+key+"\r\n\r\n")
	if resp2.StatusCode != http.StatusNotFound || !strings.Contains(body, "not a websocket") {
		t.Fatalf("refused upgrade: status %d body %q", resp2.StatusCode, body)
	}
}

// TestUpgradeWithBodyRefused: an upgrade request with a body is refused
// before anything is sent upstream.
func TestUpgradeWithBodyRefused(t *testing.T) {
	var calls atomic.Int64
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }))
	addr := startProxy(t, &Handler{Route: fixedRoute(up)})
	for req, want := range map[string]int{
		"POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi": http.StatusNotImplemented,
		"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi":  http.StatusBadRequest,
	} {
		resp, _ := rawExchange(t, addr, req)
		if resp.StatusCode != want {
			t.Errorf("%q: status %d, want %d", req[:8], resp.StatusCode, want)
		}
	}
	if calls.Load() != 0 {
		t.Error("refused upgrade reached the upstream")
	}
}

// TestServeConn: a TCP connection handed to ServeConn goes through the
// hops to the raw server with half-close; one that cannot be routed is
// closed.
func TestServeConn(t *testing.T) {
	app := tcpServer(t, replyAfterEOF)
	_, hs := hopChain(t, &Upstream{Key: "app-tcp", Addr: app, Raw: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	refuse := &Handler{Route: func(*http.Request) ([]*Upstream, error) {
		return nil, &StatusError{Code: http.StatusNotFound, Msg: "meshd: no such service"}
	}, Pool: &Pool{}, Via: "refuse", Logger: testLogger()}
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h := hs[0]
			if i > 0 {
				h = refuse
			}
			go h.ServeConn(context.Background(), c, "db.mesh:pg", nil)
		}
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "hello")
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got 5: hello" {
		t.Fatalf("answer %q %v", got, err)
	}

	c2, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(10 * time.Second))
	if n, err := c2.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("unroutable connection: read %d %v, want it closed", n, err)
	}
	if s := refuse.Stats(); s.Failures != 1 {
		t.Errorf("failures %d, want 1", s.Failures)
	}
}

// TestExtendedConnectWebSocket: an RFC 8441 client (WebSocket over an
// HTTP/2 stream, no Sec-WebSocket-Key) gets its tunnel through a hop to an
// HTTP/1.1 app, which sees a handshake with a key the hop chose; bytes
// flow both ways on the stream. Go's HTTP/2 server offers extended
// CONNECT only with GODEBUG=http2xconnect=1 at start (meshd's main sets
// it), so the test runs itself again in a process that has it.
func TestExtendedConnectWebSocket(t *testing.T) {
	if !strings.Contains(os.Getenv("GODEBUG"), "http2xconnect=1") {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestExtendedConnectWebSocket$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "GODEBUG=http2xconnect=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestExtendedConnectWebSocket") {
			t.Fatalf("in a process with GODEBUG=http2xconnect=1: %v\n%s", err, out)
		}
		return
	}
	seen := make(chan *http.Request, 1)
	app := wsApp(t, seen)
	srvCfg, roots := selfSigned(t)
	h := &Handler{Route: fixedRoute(app), Pool: &Pool{}, Via: "hop", Logger: testLogger()}
	s := startServer(t, h, srvCfg)
	// x/net's transport: net/http's refuses a ":protocol" field.
	tr := &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.test"}}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodConnect, "https://"+s.BoundAddr()+"/ws?room=2", pr)
	req.Host = "example.test"
	req.Header.Set(":protocol", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Sec-Websocket-Accept") != "" {
		t.Fatalf("status %d header %v, want 200 without an accept (RFC 8441 §5)", resp.StatusCode, resp.Header)
	}
	r := <-seen
	if r.URL.RequestURI() != "/ws?room=2" || len(r.Header.Get("Sec-Websocket-Key")) != 24 || !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		t.Fatalf("app saw %s %s header %v", r.Method, r.URL, r.Header)
	}
	for i := 0; i < 50; i++ {
		msg := "frame-" + strconv.Itoa(i)
		if _, err := io.WriteString(pw, msg); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(resp.Body, b); err != nil || string(b) != msg {
			t.Fatalf("echo %d: %q %v", i, b, err)
		}
	}
	pw.Close()
}
