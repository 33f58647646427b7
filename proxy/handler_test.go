package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestForwardRequestHeaders(t *testing.T) {
	_, up := plainUpstream(t, http.HandlerFunc(echoHandler))
	tests := []struct {
		name    string
		public  bool
		target  string            // request-target
		host    string            // Host field
		fields  string            // extra raw field lines
		want    map[string]string // fields the upstream must see, joined with ", "
		absent  []string          // fields the upstream must not see
		wantURI string
		wantHos string
	}{
		{
			name:   "hop-by-hop fields and Connection tokens removed",
			target: "/a", host: "web.example",
			fields: "Connection: keep-alive, X-Hop-A\r\nX-Hop-A: 1\r\nKeep-Alive: 300\r\n" +
				"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\n" +
				"Te: trailers, deflate\r\nTrailer: X-T\r\nX-End: ok\r\n",
			want:   map[string]string{"X-End": "ok", "Te": "trailers", "Via": "1.1 test-hop"},
			absent: []string{"X-Hop-A", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Trailer", "Connection"},
		},
		{
			name:   "TE without trailers dropped",
			target: "/", host: "web.example",
			fields: "Te: deflate\r\n",
			absent: []string{"Te"},
		},
		{
			name:   "Via appended to the received list",
			target: "/", host: "web.example",
			fields: "Via: 1.0 fred, 1.1 p.example\r\n",
			want:   map[string]string{"Via": "1.0 fred, 1.1 p.example, 1.1 test-hop"},
		},
		{
			name:   "public edge drops X-Mesh and replaces forwarding fields",
			public: true, target: "/p", host: "web.example",
			fields: "X-Mesh-Service: billing\r\nx-mesh-caller: spiffe://td/x\r\nX-Forwarded-For: 6.6.6.6\r\n" +
				"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6\r\n",
			want: map[string]string{
				"X-Forwarded-For":   "127.0.0.1",
				"X-Forwarded-Proto": "http",
				"X-Forwarded-Host":  "web.example",
				"Forwarded":         `for=127.0.0.1;proto=http;host="web.example"`,
			},
			absent: []string{"X-Mesh-Service", "X-Mesh-Caller"},
		},
		{
			name:   "mesh hop keeps forwarding and mesh fields",
			target: "/m", host: "web.example",
			fields: "X-Forwarded-For: 6.6.6.6, 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Mesh-Service: web\r\n",
			want:   map[string]string{"X-Forwarded-For": "6.6.6.6, 10.0.0.1", "X-Forwarded-Proto": "https", "X-Mesh-Service": "web"},
			absent: []string{"Forwarded"},
		},
		{
			name:   "Host, path and query preserved",
			target: "/a%2Fb/c?x=1&y=%20", host: "web.example:8080",
			wantURI: "/a%2Fb/c?x=1&y=%20", wantHos: "web.example:8080",
		},
		{
			name:   "absolute-form target routed by its authority",
			target: "http://web.mesh/x?q=1", host: "ignored.example",
			wantURI: "/x?q=1", wantHos: "web.mesh",
		},
		{
			name:   "client Connection close is not forwarded",
			target: "/", host: "web.example",
			fields: "Connection: close\r\n",
			absent: []string{"Connection"},
		},
		{
			name:   "no User-Agent stays absent",
			target: "/", host: "web.example",
			absent: []string{"User-Agent"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var routedHost atomic.Value
			addr := startProxy(t, &Handler{
				Public: tt.public,
				Route: func(out *http.Request) ([]*Upstream, error) {
					routedHost.Store(out.Host)
					return []*Upstream{up}, nil
				},
			})
			req := "GET " + tt.target + " HTTP/1.1\r\nHost: " + tt.host + "\r\n" + tt.fields + "\r\n"
			resp, body := rawExchange(t, addr, req)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			s := decodeSeen(t, body)
			for k, v := range tt.want {
				if got := joined(s.Header, k); got != v {
					t.Errorf("upstream saw %s = %q, want %q", k, got, v)
				}
			}
			for _, k := range tt.absent {
				if v, ok := s.Header[k]; ok {
					t.Errorf("upstream saw %s = %q, want it removed", k, v)
				}
			}
			if tt.wantURI != "" && s.URI != tt.wantURI {
				t.Errorf("upstream saw target %q, want %q", s.URI, tt.wantURI)
			}
			if tt.wantHos != "" {
				if s.Host != tt.wantHos {
					t.Errorf("upstream saw Host %q, want %q", s.Host, tt.wantHos)
				}
				if got := routedHost.Load(); got != tt.wantHos {
					t.Errorf("Route saw out.Host %q, want %q", got, tt.wantHos)
				}
			}
		})
	}
}

func TestForwardResponseHeaders(t *testing.T) {
	_, up := plainUpstream(t, http.HandlerFunc(echoHandler))
	addr := startProxy(t, &Handler{Route: fixedRoute(up)})
	resp, _ := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: web.example\r\n\r\n")
	for _, k := range []string{"X-Resp-Hop", "Keep-Alive", "Proxy-Authenticate", "Alt-Svc"} {
		if v, ok := resp.Header[k]; ok {
			t.Errorf("client saw %s = %q, want it removed", k, v)
		}
	}
	if got := joined(resp.Header, "Connection"); strings.Contains(got, "X-Resp-Hop") {
		t.Errorf("client saw Connection %q naming the upstream's field", got)
	}
	if got, want := joined(resp.Header, "Via"), "1.1 app, 1.1 test-hop"; got != want {
		t.Errorf("Via = %q, want %q", got, want)
	}
	if got := resp.Header.Get("X-Keep"); got != "yes" {
		t.Errorf("X-Keep = %q, want yes", got)
	}
}

func TestRouteErrors(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		ups      []*Upstream
		wantCode int
		wantBody string
	}{
		{"unknown host", &StatusError{Code: 404, Msg: `meshd: no service for host "x"`}, nil, 404, `meshd: no service for host "x"`},
		{"no healthy instance", &StatusError{Code: 503, Msg: "meshd: no healthy instance of web"}, nil, 503, "meshd: no healthy instance of web"},
		{"wrapped status error", fmt.Errorf("route: %w", &StatusError{Code: 403, Msg: "meshd: forbidden"}), nil, 403, "meshd: forbidden"},
		{"status error without message", &StatusError{Code: 429}, nil, 429, "Too Many Requests"},
		{"status error with a non-error code", &StatusError{Code: 200, Msg: "fine"}, nil, 502, "meshd: bad gateway"},
		{"other error is 502 without details", errors.New("secret detail"), nil, 502, "meshd: bad gateway"},
		{"no candidates", nil, nil, 503, "meshd: no upstream available"},
		{"only nil candidates", nil, []*Upstream{nil}, 503, "meshd: no upstream available"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := startProxy(t, &Handler{Route: func(*http.Request) ([]*Upstream, error) { return tt.ups, tt.err }})
			resp, body := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != tt.wantCode {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.wantCode)
			}
			if strings.TrimSpace(body) != tt.wantBody {
				t.Errorf("body %q, want %q", body, tt.wantBody)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control %q, want no-store", cc)
			}
		})
	}
}

func TestRetryOnConnectFailure(t *testing.T) {
	var hits atomic.Int64
	_, good := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "ok %s", b)
	}))
	refused := func() *Upstream { a := refusedAddr(t); return &Upstream{Key: a, Addr: a} }
	// A TLS upstream whose certificate the client does not trust: the
	// handshake fails, so the request certainly did not reach it.
	_, untrusted, _ := tlsUpstream(t, http.HandlerFunc(echoHandler))
	untrusted = &Upstream{Key: untrusted.Key, Addr: untrusted.Addr, TLS: &tls.Config{RootCAs: x509.NewCertPool()}}

	tests := []struct {
		name        string
		method      string
		ups         []*Upstream
		maxAttempts int
		wantCode    int
		wantHits    int64
		wantRetries int64
	}{
		{"refused then good", "GET", []*Upstream{refused(), good}, 0, 200, 1, 1},
		{"POST with body, refused then good", "POST", []*Upstream{refused(), good}, 0, 200, 1, 1},
		{"POST, TLS handshake failure then good", "POST", []*Upstream{untrusted, good}, 0, 200, 1, 1},
		{"all refused", "GET", []*Upstream{refused(), refused()}, 0, 502, 0, 1},
		{"attempts bounded by MaxAttempts", "GET", []*Upstream{refused(), refused(), good}, 2, 502, 0, 1},
		{"default MaxAttempts is 3", "GET", []*Upstream{refused(), refused(), refused(), good}, 0, 502, 0, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hits.Store(0)
			h := &Handler{Route: fixedRoute(tt.ups...), MaxAttempts: tt.maxAttempts}
			addr := startProxy(t, h)
			req := tt.method + " / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
			if tt.method == "GET" {
				req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
			}
			resp, body := rawExchange(t, addr, req)
			if resp.StatusCode != tt.wantCode {
				t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, tt.wantCode)
			}
			if tt.wantCode == 200 && tt.method == "POST" && body != "ok body" {
				t.Errorf("body %q: the retried POST lost its body", body)
			}
			if got := hits.Load(); got != tt.wantHits {
				t.Errorf("good upstream hit %d times, want %d", got, tt.wantHits)
			}
			if got := h.Stats().Retries; got != tt.wantRetries {
				t.Errorf("retries %d, want %d", got, tt.wantRetries)
			}
		})
	}
}

// hangUpHandler reads the request body, then closes the connection without
// answering: the upstream may have acted on the request.
func hangUpHandler(calls *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		conn.Close()
	})
}

func TestRetryOnlyWhenSafe(t *testing.T) {
	tests := []struct {
		name      string
		req       string
		wantCode  int
		wantFirst int64
		wantNext  int64
	}{
		{"POST whose body was consumed is not resent",
			"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 502, 1, 0},
		{"PUT whose body was consumed is not resent",
			"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 502, 1, 0},
		{"GET without body goes to the next candidate",
			"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200, 1, 1},
		{"POST without body is still not resent",
			"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 502, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var first, next atomic.Int64
			_, a := plainUpstream(t, hangUpHandler(&first))
			_, b := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				next.Add(1)
				_, _ = io.WriteString(w, "second")
			}))
			addr := startProxy(t, &Handler{Route: fixedRoute(a, b)})
			resp, body := rawExchange(t, addr, tt.req)
			if resp.StatusCode != tt.wantCode {
				t.Errorf("status %d (%q), want %d", resp.StatusCode, body, tt.wantCode)
			}
			if got := first.Load(); got != tt.wantFirst {
				t.Errorf("first upstream saw the request %d times, want %d", got, tt.wantFirst)
			}
			if got := next.Load(); got != tt.wantNext {
				t.Errorf("second upstream saw the request %d times, want %d", got, tt.wantNext)
			}
		})
	}
}

func TestResponseHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int64
	_, slow := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	_, other := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
	}))
	t.Cleanup(func() { close(release) })
	addr := startProxy(t, &Handler{
		Route: fixedRoute(slow, other),
		Pool:  &Pool{ResponseHeaderTimeout: 150 * time.Millisecond},
	})
	start := time.Now()
	resp, body := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d (%q), want 504", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("504 after %v", d)
	}
	if got := calls.Load(); got != 1 {
		t.Errorf("%d upstream calls, want 1: a timed-out request is not retried", got)
	}
}

func TestExpectContinue(t *testing.T) {
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/reject" {
			w.WriteHeader(http.StatusExpectationFailed)
			return
		}
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	}))
	addr := startProxy(t, &Handler{Route: fixedRoute(up)})

	tests := []struct {
		path      string
		want100   bool
		wantFinal int
	}{
		{"/accept", true, 200},
		{"/reject", false, 417},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", tt.path)
			br := bufio.NewReader(conn)
			// The body is sent only after a 100, as a client would.
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode == http.StatusContinue {
				if !tt.want100 {
					t.Fatal("got 100 Continue for a request the upstream rejected")
				}
				_, _ = io.WriteString(conn, "hello")
				if resp, err = http.ReadResponse(br, nil); err != nil {
					t.Fatal(err)
				}
			} else if tt.want100 {
				t.Fatalf("got %d before the body, want 100", resp.StatusCode)
			}
			if resp.StatusCode != tt.wantFinal {
				t.Fatalf("final status %d, want %d", resp.StatusCode, tt.wantFinal)
			}
			if b, _ := io.ReadAll(resp.Body); tt.want100 && string(b) != "hello" {
				t.Errorf("body %q, want hello", b)
			}
		})
	}
}

func TestTrailers(t *testing.T) {
	upHandler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Sum")
		_, _ = w.Write(b)
		w.Header().Set("X-Sum", "sum-of-"+string(b)+"/"+r.Trailer.Get("X-Req-Sum"))
	})
	_, plain := plainUpstream(t, upHandler)
	_, h2, _ := tlsUpstream(t, upHandler)
	for _, tt := range []struct {
		name string
		up   *Upstream
		h2   bool
	}{{"http1", plain, false}, {"h2", h2, true}} {
		t.Run(tt.name, func(t *testing.T) {
			addr := startProxy(t, &Handler{Route: fixedRoute(tt.up), Pool: &Pool{HTTP2: tt.h2}})
			req, _ := http.NewRequest("POST", "http://"+addr+"/", io.MultiReader(strings.NewReader("abc")))
			req.Trailer = http.Header{"X-Req-Sum": {"r1"}}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if string(b) != "abc" {
				t.Errorf("body %q", b)
			}
			if got := resp.Trailer.Get("X-Sum"); got != "sum-of-abc/r1" {
				t.Errorf("trailer X-Sum = %q, want sum-of-abc/r1", got)
			}
		})
	}
}

func TestStreamingDownload(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
	}{
		{"chunked", "application/octet-stream"},
		{"event stream", "text/event-stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proceed := make(chan struct{})
			_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				_, _ = io.WriteString(w, "data: first\n\n")
				w.(http.Flusher).Flush()
				select {
				case <-proceed:
				case <-time.After(10 * time.Second):
					return // the proxy held the first event back
				}
				_, _ = io.WriteString(w, "data: second\n\n")
			}))
			addr := startProxy(t, &Handler{Route: fixedRoute(up)})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/events", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			first := make([]byte, len("data: first\n\n"))
			if _, err := io.ReadFull(resp.Body, first); err != nil {
				t.Fatalf("first event did not arrive before the upstream finished: %v", err)
			}
			close(proceed)
			rest, err := io.ReadAll(resp.Body)
			if err != nil || string(rest) != "data: second\n\n" {
				t.Fatalf("rest %q, %v", rest, err)
			}
		})
	}
}

func TestStreamingUpload(t *testing.T) {
	gotFirst := make(chan struct{})
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first := make([]byte, 5)
		if _, err := io.ReadFull(r.Body, first); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		close(gotFirst)
		rest, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s%s", first, rest)
	}))
	addr := startProxy(t, &Handler{Route: fixedRoute(up)})
	pr, pw := io.Pipe()
	go func() {
		_, _ = io.WriteString(pw, "first")
		select {
		case <-gotFirst:
			_, _ = io.WriteString(pw, "-second")
			pw.Close()
		case <-time.After(10 * time.Second):
			pw.CloseWithError(errors.New("upstream never saw the first bytes: upload was buffered"))
		}
	}()
	resp, err := http.Post("http://"+addr+"/", "application/octet-stream", pr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "first-second" {
		t.Fatalf("upstream got %q", b)
	}
}

// patternReader yields n bytes of a repeating pattern without holding them.
type patternReader struct{ n int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	for i := range b {
		b[i] = byte(i)
	}
	p.n -= int64(len(b))
	return len(b), nil
}

func TestLargeBodiesBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 128 MiB")
	}
	const size = 64 << 20
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil || n != size {
			http.Error(w, fmt.Sprintf("upload: %d bytes, %v", n, err), 500)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(size))
		_, _ = io.Copy(w, &patternReader{n: size})
	}))
	addr := startProxy(t, &Handler{Route: fixedRoute(up)})

	runtime.GC()
	base := heapInuse()
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if h := heapInuse(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	req, _ := http.NewRequest("PUT", "http://"+addr+"/big", &patternReader{n: size})
	req.ContentLength = size
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	close(stop)
	wg.Wait()
	if err != nil || n != size || resp.StatusCode != 200 {
		t.Fatalf("download: status %d, %d bytes, %v", resp.StatusCode, n, err)
	}
	growth := int64(peak.Load()) - int64(base)
	t.Logf("heap in use grew by %d KiB while moving 2×%d MiB", growth>>10, size>>20)
	if growth > 16<<20 {
		t.Errorf("heap grew by %d MiB for a %d MiB body: bodies are being buffered", growth>>20, size>>20)
	}
}

func TestClientCancelReachesUpstream(t *testing.T) {
	upCancelled := make(chan time.Duration, 1)
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		start := time.Now()
		select {
		case <-r.Context().Done():
			upCancelled <- time.Since(start)
		case <-time.After(10 * time.Second):
		}
	}))
	h := &Handler{Route: fixedRoute(up)}
	addr := startProxy(t, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	select {
	case d := <-upCancelled:
		t.Logf("upstream saw the cancellation after %v", d)
	case <-time.After(5 * time.Second):
		t.Fatal("upstream request context was not cancelled within 5 s of the client going away")
	}
	waitFor(t, "client-gone counter", 5*time.Second, func() bool { return h.Stats().ClientGone == 1 })
}

func TestTLSUpstreamPools(t *testing.T) {
	tests := []struct {
		name      string
		http2     bool
		upHTTP1   bool // Upstream.HTTP1
		wantProto int
	}{
		{"http1 pool", false, false, 1},
		{"h2 multiplexed", true, false, 2},
		{"h2 pool, upstream asks for http1", true, true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, up, newConns := tlsUpstream(t, http.HandlerFunc(echoHandler))
			up.HTTP1 = tt.upHTTP1
			addr := startProxy(t, &Handler{Route: fixedRoute(up), Pool: &Pool{HTTP2: tt.http2}})
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			t.Cleanup(client.CloseIdleConnections)
			get := func() {
				resp, err := client.Get("http://" + addr + "/")
				if err != nil {
					t.Error(err)
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if s := decodeSeen(t, string(b)); s.Proto != tt.wantProto {
					t.Errorf("upstream saw HTTP/%d, want HTTP/%d", s.Proto, tt.wantProto)
				}
			}
			const sequential = 40
			for range sequential {
				get()
			}
			if n := newConns.Load(); n > 2 {
				t.Errorf("%d sequential requests opened %d upstream connections, want at most 2", sequential, n)
			}
			if tt.wantProto != 2 {
				return
			}
			// HTTP/2: concurrent requests share the connection.
			var wg sync.WaitGroup
			for range 20 {
				wg.Add(1)
				go func() { defer wg.Done(); get() }()
			}
			wg.Wait()
			if n := newConns.Load(); n > 2 {
				t.Errorf("20 concurrent h2 requests opened %d connections in total, want at most 2", n)
			}
		})
	}
}

func TestPublicOverTLS(t *testing.T) {
	_, up := plainUpstream(t, http.HandlerFunc(echoHandler))
	certSrv := httptest.NewTLSServer(http.NotFoundHandler())
	certSrv.Close()
	h := &Handler{Route: fixedRoute(up), Pool: &Pool{}, Via: "edge-1", Public: true, Logger: testLogger()}
	s := startServer(t, h, &tls.Config{Certificates: certSrv.TLS.Certificates})
	roots := x509.NewCertPool()
	roots.AddCert(certSrv.Certificate())
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.com"},
		Protocols:       &protocols,
	}}
	t.Cleanup(client.CloseIdleConnections)
	req, _ := http.NewRequest("GET", "https://"+s.BoundAddr()+"/", nil)
	req.Host = "web.example"
	req.Header.Set("X-Forwarded-Proto", "http")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.ProtoMajor != 2 {
		t.Errorf("client spoke HTTP/%d to the TLS listener, want 2 by ALPN", resp.ProtoMajor)
	}
	sn := decodeSeen(t, string(b))
	if got := sn.Header.Get("X-Forwarded-Proto"); got != "https" {
		t.Errorf("X-Forwarded-Proto %q, want https", got)
	}
	if got := joined(sn.Header, "Via"); got != "2 edge-1" {
		t.Errorf("request Via %q, want %q", got, "2 edge-1")
	}
	// The response came from the upstream over HTTP/1.1 (RFC 9110 §7.6.3:
	// the protocol of the message this hop received).
	if got := joined(resp.Header, "Via"); got != "1.1 app, 1.1 edge-1" {
		t.Errorf("response Via %q", got)
	}
}

func TestHandlerMisconfigured(t *testing.T) {
	tests := []struct {
		name string
		h    *Handler
		want string
	}{
		{"no route", &Handler{Pool: &Pool{}, Via: "x"}, "Route"},
		{"no pool", &Handler{Route: fixedRoute(), Via: "x"}, "Pool"},
		{"no via", &Handler{Route: fixedRoute(), Pool: &Pool{}}, "Via"},
		{"via not a token", &Handler{Route: fixedRoute(), Pool: &Pool{}, Via: "a b"}, "Via"},
		{"negative attempts", &Handler{Route: fixedRoute(), Pool: &Pool{}, Via: "x", MaxAttempts: -1}, "MaxAttempts"},
		{"bad pool", &Handler{Route: fixedRoute(), Pool: &Pool{DialTimeout: -1}, Via: "x"}, "DialTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.h.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tt.want)
			}
			tt.h.Logger = testLogger()
			rec := httptest.NewRecorder()
			tt.h.ServeHTTP(rec, httptest.NewRequest("GET", "http://x/", nil))
			if rec.Code != 500 {
				t.Errorf("misconfigured handler answered %d, want 500", rec.Code)
			}
		})
	}
	if err := (&Handler{Route: fixedRoute(), Pool: &Pool{}, Via: "meshd-edge-eu1"}).Validate(); err != nil {
		t.Errorf("valid handler: %v", err)
	}
}

func TestClassify(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	live := context.Background()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		code int
	}{
		{"client gone wins", cancelled, &StatusError{Code: 404}, 499},
		{"status error", live, &StatusError{Code: 404, Msg: "m"}, 404},
		{"status error out of range", live, &StatusError{Code: 302}, 502},
		{"deadline", live, fmt.Errorf("x: %w", context.DeadlineExceeded), 504},
		{"net timeout", live, &net.OpError{Op: "dial", Err: timeoutErr{}}, 504},
		{"dial refused", live, &dialError{err: errors.New("connection refused")}, 502},
		{"anything else", live, io.ErrUnexpectedEOF, 502},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, msg := classify(tt.ctx, tt.err)
			if code != tt.code {
				t.Errorf("code %d, want %d", code, tt.code)
			}
			if code != 499 && msg == "" {
				t.Error("empty client message")
			}
			if strings.Contains(msg, "refused") || strings.Contains(msg, "EOF") {
				t.Errorf("message %q leaks error details", msg)
			}
		})
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// closingBody imitates Go's HTTP/1 server body: the last data comes with
// EOF, and after the server closed it a read fails.
type closingBody struct {
	data   string
	closed bool
}

func (b *closingBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	if b.data == "" {
		return n, io.EOF
	}
	return n, nil
}

func (b *closingBody) Close() error { b.closed = true; return nil }

func TestTrackedBody(t *testing.T) {
	in := &closingBody{data: "hello"}
	var tb trackedBody
	tb.rc = in
	if err := tb.Close(); err != nil || in.closed {
		t.Fatal("Close before any read closed the incoming body: a retry could not send it")
	}
	p := make([]byte, 16)
	n, err := tb.Read(p)
	if n != 5 || err != io.EOF || !tb.read.Load() {
		t.Fatalf("Read = %d, %v, read=%v", n, err, tb.read.Load())
	}
	// The server closes the body when the response header goes out; the
	// transport's check for excess data must still see EOF.
	in.closed = true
	if n, err := tb.Read(p); n != 0 || err != io.EOF {
		t.Fatalf("read after the server closed the drained body = %d, %v, want 0, EOF", n, err)
	}
	in.closed = false
	if err := tb.Close(); err != nil || !in.closed {
		t.Fatal("Close after a read did not close the incoming body")
	}
}

func TestProxyStatus(t *testing.T) {
	unit := []struct {
		name string
		code int
		err  error
		want string
	}{
		{"no instance", 503, &StatusError{Code: 503, Msg: "m"}, "destination_unavailable"},
		{"unknown host is not a fault", 404, &StatusError{Code: 404, Msg: "m"}, ""},
		{"refused", 502, &dialError{err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, "connection_refused"},
		{"dial timeout", 504, &dialError{err: &net.OpError{Op: "dial", Err: timeoutErr{}}}, "connection_timeout"},
		{"response timeout", 504, fmt.Errorf("x: %w", context.DeadlineExceeded), "http_response_timeout"},
		{"closed without answering", 502, io.ErrUnexpectedEOF, "connection_terminated"},
		{"anything else", 502, errors.New("malformed HTTP response"), "http_protocol_error"},
	}
	for _, tt := range unit {
		if got := proxyStatusError(tt.code, tt.err); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
	for _, tt := range []struct{ in, want string }{{"", "meshd"}, {"meshd-edge-eu1", "meshd-edge-eu1"}, {"1bad", "meshd"}, {"a b", "meshd"}} {
		if got := proxyStatusToken(tt.in); got != tt.want {
			t.Errorf("proxyStatusToken(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}

	// Through a server: an upstream that closes without answering, and one
	// that refuses connections.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = bufio.NewReader(c).ReadString('\n')
			c.Close()
		}
	}()
	hangup := &Upstream{Key: "hangup", Addr: ln.Addr().String()}
	refused := func() *Upstream { a := refusedAddr(t); return &Upstream{Key: a, Addr: a} }
	for _, tt := range []struct {
		name string
		up   *Upstream
		want string
	}{
		{"hang-up", hangup, "meshd-test; error=connection_terminated"},
		{"refused", refused(), "meshd-test; error=connection_refused"},
	} {
		addr := startProxy(t, &Handler{Route: fixedRoute(tt.up), Via: "meshd-test", MaxAttempts: 1})
		resp, _ := rawExchange(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
		tt.want += `; next-hop="` + tt.up.Addr + `"` // RFC 9209 §2.1.3: the upstream at fault
		if resp.StatusCode != 502 || resp.Header.Get("Proxy-Status") != tt.want {
			t.Errorf("%s: %d, Proxy-Status %q; want 502, %q", tt.name, resp.StatusCode, resp.Header.Get("Proxy-Status"), tt.want)
		}
	}
}

// TestStatusErrorRetryAfterAndDetails: a Route's 503 carries its
// Retry-After and the details of Proxy-Status (RFC 9209 §2.1.5), quoted as
// an sf-string.
func TestStatusErrorRetryAfterAndDetails(t *testing.T) {
	route := func(*http.Request) ([]*Upstream, error) {
		return nil, &StatusError{Code: 503, Msg: "meshd: web is down", RetryAfter: 1500 * time.Millisecond, Details: `web "is" down`}
	}
	addr := startProxy(t, &Handler{Route: route, Via: "meshd-test"})
	resp, body := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 503 || !strings.Contains(body, "meshd: web is down") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if got, want := resp.Header.Get("Proxy-Status"), `meshd-test; error=destination_unavailable; details="web \"is\" down"`; got != want {
		t.Errorf("Proxy-Status %q, want %q", got, want)
	}
	if got := resp.Header.Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After %q, want 2 (1.5 s rounded up)", got)
	}
}
