package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestServerValidateListenerFields(t *testing.T) {
	h := http.NotFoundHandler()
	cfg, _ := selfSigned(t)
	tls12 := cfg.Clone()
	tls12.MaxVersion = tls.VersionTLS12
	tests := []startCase{
		{"http3 without tls", &Server{Addr: "127.0.0.1:0", Handler: h, HTTP3: true}, "HTTP3 requires TLS"},
		{"http3 without tls 1.3", &Server{Addr: "127.0.0.1:0", Handler: h, HTTP3: true, TLS: tls12}, "TLS 1.3"},
		{"0-rtt without http3", &Server{Addr: "127.0.0.1:0", Handler: h, TLS: cfg, Allow0RTT: true}, "Allow0RTT"},
		{"negative streams", &Server{Addr: "127.0.0.1:0", Handler: h, MaxConcurrentStreams: -1}, "MaxConcurrentStreams"},
		{"negative window", &Server{Addr: "127.0.0.1:0", Handler: h, BodyRateWindow: -1}, "BodyRateWindow"},
		{"tiny window", &Server{Addr: "127.0.0.1:0", Handler: h, BodyRateWindow: time.Millisecond}, "BodyRateWindow"},
	}
	checkStartRefused(t, tests)
}

func TestServerLimitDefaults(t *testing.T) {
	tests := []struct {
		name string
		s    *Server
		want limits
	}{
		{"internal listener: no hostile-client limits", &Server{},
			limits{maxHeader: DefaultMaxHeaderBytes, window: DefaultBodyRateWindow}},
		{"public listener: defaults", &Server{Public: true},
			limits{public: true, maxHeader: 64 << 10, maxBody: 1 << 30, minRate: 1024, window: 20 * time.Second}},
		{"public, limits turned off", &Server{Public: true, MaxBodyBytes: -1, MinBodyRate: -1},
			limits{public: true, maxHeader: DefaultMaxHeaderBytes, window: DefaultBodyRateWindow}},
		{"internal listener with explicit limits", &Server{MaxBodyBytes: 10, MinBodyRate: 5, BodyRateWindow: time.Second, MaxHeaderBytes: 1000},
			limits{maxHeader: 1000, maxBody: 10, minRate: 5, window: time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.s.limits(); got != tt.want {
				t.Errorf("limits = %+v, want %+v", got, tt.want)
			}
		})
	}
	if got := publicLimit(0, DefaultMaxConnsPerIP, true); got != 256 {
		t.Errorf("public MaxConnsPerIP default = %d", got)
	}
	if got := publicLimit(0, DefaultMaxConnsPerIP, false); got != 0 {
		t.Errorf("internal MaxConnsPerIP default = %d, want no limit", got)
	}
}

// dialFrom opens a TCP connection to addr from the loopback address src
// (Linux routes all of 127.0.0.0/8 to lo), so one test can play several
// client IPs.
func dialFrom(t testing.TB, src, addr string) (net.Conn, error) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return d.Dial("tcp", addr)
}

// closedByPeer reports whether the server closes c (EOF or reset) within d
// without sending anything.
func closedByPeer(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	_, err := c.Read(b[:])
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return err != nil
}

func TestMaxConnsPerIP(t *testing.T) {
	const limit = 4
	s := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), Public: true, MaxConnsPerIP: limit})
	addr := s.BoundAddr()
	_, port, _ := net.SplitHostPort(addr)

	// Client A (127.0.0.1) fills its quota with idle connections.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := 0; i < limit; i++ {
		c, err := dialFrom(t, "127.0.0.1", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	waitFor(t, "the held connections to be counted", 5*time.Second, func() bool {
		return s.lim.open(netip.MustParseAddr("127.0.0.1")) == limit
	})

	// Client B (127.0.0.2) is served meanwhile.
	tr := &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		return d.DialContext(ctx, network, a)
	}}
	defer tr.CloseIdleConnections()
	clientB := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	stop := make(chan struct{})
	nt := runNormalTraffic(clientB, "http://"+addr+"/", stop, 10*time.Second)

	// A's next connections are closed at accept, without a response.
	for i := 0; i < 20; i++ {
		c, err := dialFrom(t, "127.0.0.1", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: localhost:"+port+"\r\n\r\n")
		if !closedByPeer(c, 5*time.Second) {
			t.Fatalf("connection %d over the limit was not closed", i)
		}
		c.Close()
	}
	if got := s.Stats().RefusedConns; got < 20 {
		t.Errorf("RefusedConns = %d, want >= 20", got)
	}
	close(stop)
	nt.check(t)

	// A slot freed by A is A's again.
	held[0].Close()
	held = held[1:]
	waitFor(t, "a slot to be released", 5*time.Second, func() bool {
		return s.lim.open(netip.MustParseAddr("127.0.0.1")) == limit-1
	})
	resp, _ := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after a slot was freed: %d", resp.StatusCode)
	}
}

func TestMaxBodyBytes(t *testing.T) {
	const max = 1000
	upSrv, up := plainUpstream(t, http.HandlerFunc(okHandler))
	_ = upSrv
	proxyHandler := &Handler{Route: fixedRoute(up), Pool: &Pool{}, Via: "edge", Public: true, Logger: testLogger()}
	t.Cleanup(proxyHandler.Pool.CloseIdle)
	direct := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), Public: true, MaxBodyBytes: max}).BoundAddr()
	forwarded := startWith(t, &Server{Handler: proxyHandler, Public: true, MaxBodyBytes: max}).BoundAddr()

	chunked := func(n int) string {
		return "Transfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", n, strings.Repeat("a", n))
	}
	sized := func(n int) string {
		return "Content-Length: " + strconv.Itoa(n) + "\r\n\r\n" + strings.Repeat("a", n)
	}
	tests := []struct {
		name string
		body string
		want int
	}{
		{"content-length at the limit", sized(max), 200},
		{"content-length over the limit", sized(max + 1), 413},
		{"chunked at the limit", chunked(max), 200},
		{"chunked over the limit", chunked(max + 1), 413},
		{"declared huge, nothing sent", "Content-Length: 1099511627776\r\n\r\n", 413},
	}
	for _, addr := range []struct{ name, addr string }{{"direct", direct}, {"forwarded", forwarded}} {
		for _, tt := range tests {
			t.Run(addr.name+"/"+tt.name, func(t *testing.T) {
				resp, body := rawExchange(t, addr.addr, "POST / HTTP/1.1\r\nHost: localhost\r\n"+tt.body)
				if resp.StatusCode != tt.want {
					t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, tt.want)
				}
				if tt.want == 200 && resp.Header.Get("X-Body-Len") != strconv.Itoa(max) {
					t.Errorf("upstream saw %s bytes, want %d", resp.Header.Get("X-Body-Len"), max)
				}
				if tt.want == 413 && !resp.Close {
					t.Error("413 did not close the connection")
				}
			})
		}
	}
	// HTTP/2: a streamed body over the limit gets 413 too.
	cfg, roots := selfSigned(t)
	s := startWith(t, &Server{Handler: proxyHandler, TLS: cfg, Public: true, MaxBodyBytes: max})
	c := tlsClient(t, roots, true)
	for _, n := range []int{max, max + 1} {
		req, _ := http.NewRequest("POST", "https://"+s.BoundAddr()+"/", io.MultiReader(strings.NewReader(strings.Repeat("b", n))))
		req.ContentLength = -1
		req.Host = "example.test"
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := 200
		if n > max {
			want = 413
		}
		if resp.StatusCode != want || resp.ProtoMajor != 2 {
			t.Errorf("HTTP/2 body of %d: %s %d, want 2 %d", n, resp.Proto, resp.StatusCode, want)
		}
	}
}

// TestMaxBodyBytesDefault reads bodies of exactly 1 GiB and one byte more
// through the guard at the public default: meshd's end-to-end test uploads
// 1<<30 bytes.
func TestMaxBodyBytesDefault(t *testing.T) {
	lim := (&Server{Public: true}).limits()
	lim.minRate = 0
	for _, tt := range []struct {
		n      int64
		wantOK bool
	}{{DefaultMaxBodyBytes, true}, {DefaultMaxBodyBytes + 1, false}} {
		b := &guardBody{rc: io.NopCloser(io.LimitReader(zeros{}, tt.n)), lim: &lim}
		n, err := io.CopyBuffer(io.Discard, b, make([]byte, 1<<20))
		if tt.wantOK && (err != nil || n != tt.n) {
			t.Errorf("body of %d: read %d, %v", tt.n, n, err)
		}
		if !tt.wantOK && (err == nil || b.status != http.StatusRequestEntityTooLarge || n != DefaultMaxBodyBytes) {
			t.Errorf("body of %d: read %d, %v, status %d; want cut at the limit with 413", tt.n, n, err, b.status)
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestMinBodyRate(t *testing.T) {
	const window = 300 * time.Millisecond
	upSrv, up := plainUpstream(t, http.HandlerFunc(okHandler))
	_ = upSrv
	proxyHandler := &Handler{Route: fixedRoute(up), Pool: &Pool{}, Via: "edge", Public: true, Logger: testLogger()}
	t.Cleanup(proxyHandler.Pool.CloseIdle)
	// 1000 B/s over 300 ms: 300 bytes per window of waiting.
	srv := func(h http.Handler) string {
		return startWith(t, &Server{Handler: h, Public: true, MinBodyRate: 1000, BodyRateWindow: window}).BoundAddr()
	}
	direct, forwarded := srv(http.HandlerFunc(okHandler)), srv(proxyHandler)
	// A handler that waits longer than a window before reading: its
	// client is not slow, the handler is.
	lazy := srv(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(2 * window)
		okHandler(w, r)
	}))

	tests := []struct {
		name  string
		addr  string
		chunk int           // bytes per write
		every time.Duration // pause between writes
		total int
		want  int
	}{
		{"trickle direct", direct, 10, 50 * time.Millisecond, 2000, 408},
		{"trickle forwarded", forwarded, 10, 50 * time.Millisecond, 2000, 408},
		{"silent", direct, 0, 0, 2000, 408},
		{"fast", forwarded, 500, 20 * time.Millisecond, 5000, 200},
		{"handler reads late", lazy, 5000, 0, 5000, 200},
	}
	normal := &http.Client{Timeout: 5 * time.Second}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stop := make(chan struct{})
			nt := runNormalTraffic(normal, "http://"+direct+"/", stop, 10*time.Second)
			defer nt.check(t)
			defer close(stop)

			c, err := net.DialTimeout("tcp", tt.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			start := time.Now()
			_, _ = fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n", tt.total)
			respc := make(chan *http.Response, 1)
			go func() {
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					resp = nil
				}
				respc <- resp
			}()
			var resp *http.Response
			sent := 0
		send:
			for sent < tt.total && tt.chunk > 0 {
				select {
				case resp = <-respc:
					break send
				case <-time.After(tt.every):
				}
				if _, err := io.WriteString(c, strings.Repeat("x", tt.chunk)); err != nil {
					break
				}
				sent += tt.chunk
			}
			if resp == nil {
				resp = <-respc
			}
			if resp == nil {
				t.Fatalf("no response after %v", time.Since(start))
			}
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d after %v, want %d", resp.StatusCode, time.Since(start), tt.want)
			}
			if tt.want == 408 {
				if d := time.Since(start); d > 5*window {
					t.Errorf("slow body cut after %v, want about one window (%v)", d, window)
				}
				if !resp.Close {
					t.Error("408 did not close the connection")
				}
			}
		})
	}
}

func TestMinBodyRateHTTP2(t *testing.T) {
	cfg, roots := selfSigned(t)
	s := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), TLS: cfg, Public: true,
		MinBodyRate: 1000, BodyRateWindow: 300 * time.Millisecond})
	c := tlsClient(t, roots, true)
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		// 10 bytes every 100 ms, for at most 5 s.
		for i := 0; i < 50; i++ {
			if _, err := pw.Write([]byte("0123456789")); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "https://"+s.BoundAddr()+"/", pr)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || resp.ProtoMajor != 2 {
		t.Fatalf("%s %d, want HTTP/2 408", resp.Proto, resp.StatusCode)
	}
	// The connection still serves other streams.
	if code, err := getStatus(c, "https://"+s.BoundAddr()+"/"); err != nil || code != 200 {
		t.Fatalf("next request: %d %v", code, err)
	}
}

func TestPublicTargetChecks(t *testing.T) {
	public := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), Public: true}).BoundAddr()
	internal := startWith(t, &Server{Handler: http.HandlerFunc(okHandler)}).BoundAddr()
	tests := []struct {
		name     string
		req      string
		public   int
		internal int
	}{
		{"origin-form", "GET / HTTP/1.1\r\nHost: example.test\r\n", 200, 200},
		{"host with port", "GET / HTTP/1.1\r\nHost: example.test:8080\r\n", 200, 200},
		{"ipv6 literal", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n", 200, 200},
		{"empty label", "GET / HTTP/1.1\r\nHost: a..example\r\n", 400, 200},
		{"percent-encoded", "GET / HTTP/1.1\r\nHost: ex%41mple.test\r\n", 400, 200},
		{"sub-delims", "GET / HTTP/1.1\r\nHost: a!b$c.test\r\n", 400, 200},
		{"port out of range", "GET / HTTP/1.1\r\nHost: example.test:99999\r\n", 400, 200},
		{"empty port", "GET / HTTP/1.1\r\nHost: example.test:\r\n", 400, 200},
		{"two ports", "GET / HTTP/1.1\r\nHost: example.test:1:2\r\n", 400, 200},
		{"space (Go rejects)", "GET / HTTP/1.1\r\nHost: exa mple\r\n", 400, 400},
		{"missing (Go rejects)", "GET / HTTP/1.1\r\n", 400, 400},
		{"absolute-form, as a sidecar's app sends it", "GET http://web.mesh/ HTTP/1.1\r\nHost: web.mesh\r\n", 200, 200},
		{"absolute-form, userinfo", "GET http://user:pw@web.mesh/ HTTP/1.1\r\nHost: web.mesh\r\n", 400, 200},
		{"absolute-form, https on plain", "GET https://web.mesh/ HTTP/1.1\r\nHost: web.mesh\r\n", 400, 200},
		{"absolute-form, bad host", "GET http://a..b/ HTTP/1.1\r\nHost: web.mesh\r\n", 400, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, c := range []struct {
				addr string
				want int
			}{{public, tt.public}, {internal, tt.internal}} {
				resp, body := rawExchange(t, c.addr, tt.req+"Connection: close\r\n\r\n")
				if resp.StatusCode != c.want {
					t.Errorf("%s: status %d (%q), want %d", map[bool]string{true: "public", false: "internal"}[c.addr == public], resp.StatusCode, body, c.want)
				}
			}
		})
	}
}

// TestPublicTargetTLS checks an absolute-form target against the TLS server
// name over HTTP/1.1.
func TestPublicTargetTLS(t *testing.T) {
	cfg, roots := selfSigned(t)
	addr := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), TLS: cfg, Public: true}).BoundAddr()
	for _, tt := range []struct {
		target string
		want   int
	}{
		{"https://example.test/", 200},
		{"https://EXAMPLE.test:443/", 200},
		{"https://other.test/", 400},
		{"/", 200},
	} {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "example.test", NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n", tt.target)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tt.want {
			t.Errorf("GET %s with SNI example.test: %d, want %d", tt.target, resp.StatusCode, tt.want)
		}
	}
}

// TestContentLengthAndTransferEncoding: a request framed both by
// Content-Length and Transfer-Encoding (RFC 9112 §6.1, the classic
// smuggling vector) is refused with 400 before any handler runs, and the
// connection is closed, so nothing after it can be read as a request.
func TestContentLengthAndTransferEncoding(t *testing.T) {
	var calls atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		okHandler(w, r)
	})
	addr := startWith(t, &Server{Handler: h, Public: true}).BoundAddr()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"3\r\nabc\r\n0\r\n\r\n"+
		"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Errorf("status %d, close %v; want 400 and the connection closed", resp.StatusCode, resp.Close)
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Errorf("more after the 400: %q", rest)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("handler ran %d times, want 0", n)
	}
}

func TestRedirectHTTPS(t *testing.T) {
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "served") })
	exempt := func(r *http.Request) bool {
		return strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") || r.Host == "plain.example"
	}
	tests := []struct {
		name     string
		port     int
		req      string
		want     int
		location string
	}{
		{"redirect keeps path and query", 0, "GET /a/b?c=d HTTP/1.1\r\nHost: Example.test\r\n", 308, "https://example.test/a/b?c=d"},
		{"port of the http listener dropped", 443, "POST /x HTTP/1.1\r\nHost: example.test:80\r\nContent-Length: 0\r\n", 308, "https://example.test/x"},
		{"non-default https port", 8443, "GET / HTTP/1.1\r\nHost: example.test\r\n", 308, "https://example.test:8443/"},
		{"ipv6", 0, "GET / HTTP/1.1\r\nHost: [::1]:80\r\n", 308, "https://[::1]/"},
		{"absolute-form", 0, "GET http://example.test/p HTTP/1.1\r\nHost: example.test\r\n", 308, "https://example.test/p"},
		{"acme challenge exempt", 0, "GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: example.test\r\n", 200, ""},
		{"allowed host exempt", 0, "GET / HTTP/1.1\r\nHost: plain.example\r\n", 200, ""},
		{"invalid host", 0, "GET / HTTP/1.1\r\nHost: a..b\r\n", 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := startWith(t, &Server{Handler: RedirectHTTPS(tt.port, exempt, next)}).BoundAddr()
			resp, _ := rawExchange(t, addr, tt.req+"Connection: close\r\n\r\n")
			if resp.StatusCode != tt.want || resp.Header.Get("Location") != tt.location {
				t.Errorf("%d Location %q, want %d %q", resp.StatusCode, resp.Header.Get("Location"), tt.want, tt.location)
			}
		})
	}
}

func TestPublicResponseDropsMeshFields(t *testing.T) {
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Mesh-Instance", "web-7")
		w.Header().Set("x-mesh-region", "eu1")
		w.Header().Set("X-Kept", "1")
	}))
	for _, public := range []bool{true, false} {
		addr := startProxy(t, &Handler{Route: fixedRoute(up), Public: public})
		resp, _ := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
		leaked := resp.Header.Get("X-Mesh-Instance") != "" || resp.Header.Get("X-Mesh-Region") != ""
		if public == leaked || resp.Header.Get("X-Kept") != "1" {
			t.Errorf("public=%v: response header %v", public, resp.Header)
		}
	}
}

// TestGuardAllocations: the checks of a public listener cost no allocation
// on a request without a body.
func TestGuardAllocations(t *testing.T) {
	altSvc := []string{`h3=":443"; ma=2592000`}
	g := &guard{h: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), n: new(atomic.Int64),
		lim: (&Server{Public: true}).limits(), altSvc: func() []string { return altSvc }}
	r := httptest.NewRequest("GET", "/path", nil)
	r.Host = "example.test:443"
	w := httptest.NewRecorder()
	if n := testing.AllocsPerRun(100, func() { g.ServeHTTP(w, r) }); n != 0 {
		t.Errorf("%v allocations per request", n)
	}
}

// TestBodyReadAfterHandlerReturned: an upstream transport may go on
// reading a request body after the handler returned (RoundTrip closes the
// body in its own goroutine). The guard must then refuse the read instead
// of touching the finished HTTP/2 response writer, which crashed the edge.
func TestBodyReadAfterHandlerReturned(t *testing.T) {
	cfg, roots := selfSigned(t)
	late := make(chan error, 1)
	s := startWith(t, &Server{TLS: cfg, Public: true, MinBodyRate: 1000, BodyRateWindow: time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body := r.Body
			go func() {
				time.Sleep(50 * time.Millisecond) // the handler has returned by now
				_, err := body.Read(make([]byte, 16))
				late <- err
			}()
			w.WriteHeader(http.StatusNoContent)
		})})
	c := tlsClient(t, roots, true)
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte("partial body"))
	req, _ := http.NewRequest("POST", "https://"+s.BoundAddr()+"/", pr)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case err := <-late:
		if err == nil {
			t.Fatal("a read after the handler returned succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the late read never returned")
	}
	if code, err := getStatus(c, "https://"+s.BoundAddr()+"/"); err != nil || code != http.StatusNoContent {
		t.Fatalf("next request: %d %v", code, err)
	}
}

// syncBuffer is a log destination tests can read while servers write.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMalformedChunkedBodyIsClientError: a request whose chunked body is
// malformed, forwarded by the Handler to a healthy upstream, is the
// client's fault: 400, no warning about the upstream, and the upstream is
// neither ejected nor retried.
func TestMalformedChunkedBodyIsClientError(t *testing.T) {
	var upstreamSaw atomic.Int64
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamSaw.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	}))
	var logs syncBuffer
	h := &Handler{Route: fixedRoute(up), Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	addr := startProxy(t, h)
	bodies := []string{
		"z\r\nabc\r\n0\r\n\r\n",                 // size not hex
		"3\r\nabc\r\nffffffffffffffff\r\na\r\n", // size overflow after a good chunk
		"3\r\nabcX\r\n0\r\n\r\n",                // data longer than the size
	}
	for i := 0; i < EjectAfter+1; i++ {
		for _, body := range bodies {
			c, br := dialRaw(t, addr)
			_, _ = io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"+body)
			resp, got := readResp(t, br, "POST")
			c.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("%q: status %d (%q), want 400", body, resp.StatusCode, got)
			}
			if ps := resp.Header.Get("Proxy-Status"); ps != "" {
				t.Errorf("%q: Proxy-Status %q blames the upstream", body, ps)
			}
		}
	}
	if up.Ejected(time.Now()) {
		t.Error("upstream ejected after the client's malformed bodies")
	}
	if st := h.Stats(); st.Retries != 0 {
		t.Errorf("%d retries of requests whose body the client broke", st.Retries)
	}
	out := logs.String()
	if strings.Contains(out, "level=WARN") {
		t.Errorf("a client's malformed body was logged as a warning:\n%s", out)
	}
	if !strings.Contains(out, "client error") {
		t.Errorf("no client error record in the log:\n%s", out)
	}
	// The proxy still forwards good requests to the same upstream.
	resp, body := rawExchange(t, addr, "POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
	if resp.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("good request after the bad ones: %d %q", resp.StatusCode, body)
	}
}
