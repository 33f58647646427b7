package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingUpstream starts a plain upstream that counts the connections it
// accepted and closed.
func countingUpstream(t *testing.T, h http.Handler) (up *Upstream, opened, closed *atomic.Int64) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	opened, closed = new(atomic.Int64), new(atomic.Int64)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			closed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	return &Upstream{Key: addr, Addr: addr}, opened, closed
}

// get sends one request through p and returns the response with its body
// read to the end.
func get(t *testing.T, p *Pool, u *Upstream, method, target string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, target, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := p.RoundTrip(u, req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, target, err)
	}
	return resp, string(b)
}

func TestFastPathReusesConnection(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/len", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello") })
	mux.HandleFunc("/empty", func(w http.ResponseWriter, r *http.Request) { w.Header().Set("Content-Length", "0") })
	mux.HandleFunc("/204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/304", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotModified) })
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		_, _ = io.WriteString(w, "part1,")
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "part2")
		w.Header().Set("X-Sum", "42")
	})
	mux.HandleFunc("/early-hints", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		_, _ = io.WriteString(w, "final")
	})
	up, opened, _ := countingUpstream(t, mux)
	p := &Pool{}
	t.Cleanup(p.CloseIdle)

	tests := []struct {
		method, target string
		wantCode       int
		wantBody       string
		wantTrailer    string
	}{
		{"GET", "/len", 200, "hello", ""},
		{"HEAD", "/len", 200, "", ""},
		{"GET", "/empty", 200, "", ""},
		{"DELETE", "/204", 204, "", ""},
		{"GET", "/304", 304, "", ""},
		{"GET", "/chunked", 200, "part1,part2", "42"},
		{"OPTIONS", "/early-hints", 200, "final", ""},
	}
	for round := range 2 {
		for _, tt := range tests {
			resp, body := get(t, p, up, tt.method, tt.target, nil)
			if resp.StatusCode != tt.wantCode || body != tt.wantBody {
				t.Errorf("round %d: %s %s: %d %q, want %d %q", round, tt.method, tt.target, resp.StatusCode, body, tt.wantCode, tt.wantBody)
			}
			if got := resp.Trailer.Get("X-Sum"); got != tt.wantTrailer {
				t.Errorf("%s %s: trailer X-Sum %q, want %q", tt.method, tt.target, got, tt.wantTrailer)
			}
		}
	}
	if n := opened.Load(); n != 1 {
		t.Errorf("%d upstream connections for sequential requests, want 1", n)
	}
}

// rawUpstream serves each accepted connection with serve on 127.0.0.1 and
// returns its Upstream and the number of connections accepted.
func rawUpstream(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) (*Upstream, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				serve(c, bufio.NewReader(c))
			}()
		}
	}()
	addr := ln.Addr().String()
	return &Upstream{Key: addr, Addr: addr}, &accepted
}

// readRequest reads one request head; it reports false at the end of the
// connection.
func readRequest(br *bufio.Reader) bool {
	req, err := http.ReadRequest(br)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, req.Body)
	return true
}

func TestFastPathStaleConnectionRetried(t *testing.T) {
	// The upstream answers one request per connection without saying it
	// will close (as a server whose idle timeout fires just then): the
	// next request on the pooled connection finds it closed and must be
	// sent again on a new one.
	var served atomic.Int64
	up, accepted := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if readRequest(br) {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		c.Close()
		served.Add(1)
	})
	p := &Pool{}
	t.Cleanup(p.CloseIdle)
	for i := range 3 {
		resp, body := get(t, p, up, "GET", "/", nil)
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		// Let the upstream close the pooled connection before the next
		// request is sent on it.
		waitFor(t, "upstream close", 5*time.Second, func() bool { return served.Load() == int64(i+1) })
	}
	if n := accepted.Load(); n != 3 {
		t.Errorf("%d connections accepted, want one per request", n)
	}
}

func TestFastPathBadResponses(t *testing.T) {
	tests := []struct {
		name    string
		resp    string
		wantErr string
	}{
		{"switching protocols", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", "switched protocols"},
		{"too many 1xx", strings.Repeat("HTTP/1.1 103 Early Hints\r\n\r\n", maxInformational+1) + "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "1xx"},
		{"header too large", "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", maxResponseHeaderBytes+10) + "\r\n\r\n", "too large"},
		{"garbage", "SSH-2.0-OpenSSH\r\n\r\n", "malformed HTTP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, _ := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
				if readRequest(br) {
					_, _ = io.WriteString(c, tt.resp)
				}
			})
			p := &Pool{}
			t.Cleanup(p.CloseIdle)
			req, _ := http.NewRequest("GET", "/", nil)
			resp, err := p.RoundTrip(up, req)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("got %d, want an error", resp.StatusCode)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not say %q", err, tt.wantErr)
			}
			uc, _ := p.conns(up)
			if n := len(uc.h1.idle); n != 0 {
				t.Errorf("%d idle connections after a failed exchange, want 0", n)
			}
		})
	}
}

func TestFastPathCancel(t *testing.T) {
	closed := make(chan struct{})
	arrived := make(chan struct{})
	up, _ := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if readRequest(br) {
			close(arrived)
			// Never answer; see the proxy close the connection.
			_, _ = br.ReadByte()
			close(closed)
		}
	})
	p := &Pool{}
	t.Cleanup(p.CloseIdle)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "/", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := p.RoundTrip(up, req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("request did not arrive")
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RoundTrip did not return after cancellation")
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("upstream connection not closed after cancellation")
	}
}

func TestFastPathHeaderTimeout(t *testing.T) {
	up, _ := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if readRequest(br) {
			_, _ = br.ReadByte() // until the proxy gives up
		}
	})
	p := &Pool{ResponseHeaderTimeout: 50 * time.Millisecond}
	t.Cleanup(p.CloseIdle)
	req, _ := http.NewRequest("GET", "/", nil)
	_, err := p.RoundTrip(up, req)
	if err == nil || !isTimeout(err) {
		t.Fatalf("error %v, want a timeout", err)
	}
}

// TestFastPathHeaderDeadlineKept: the header deadline, kept set across
// exchanges, still bounds the header of a later exchange on the same
// connection, and never a body that comes after its header.
func TestFastPathHeaderDeadlineKept(t *testing.T) {
	const timeout = 200 * time.Millisecond
	up, accepted := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for n := 0; readRequest(br); n++ {
			switch n {
			case 0: // at once, the whole body with the header
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			case 1: // a header at once, the body after more than the timeout
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsl")
				time.Sleep(2 * timeout)
				_, _ = io.WriteString(c, "ow")
			case 2: // at once again
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			default: // never
				_, _ = br.ReadByte()
				return
			}
		}
	})
	p := &Pool{ResponseHeaderTimeout: timeout}
	t.Cleanup(p.CloseIdle)
	for _, want := range []string{"ok", "slow", "ok"} {
		if _, got := get(t, p, up, "GET", "/", nil); got != want {
			t.Fatalf("body %q, want %q", got, want)
		}
	}
	req, _ := http.NewRequest("GET", "/", nil)
	start := time.Now()
	_, err := p.RoundTrip(up, req)
	if err == nil || !isTimeout(err) {
		t.Fatalf("error %v, want a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timed out after %v", d)
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

func TestFastPathEarlyCloseDropsConnection(t *testing.T) {
	up, opened, closed := countingUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Larger than any buffer: the response is still being sent when
		// the body is closed.
		_, _ = w.Write(make([]byte, 1<<20))
	}))
	p := &Pool{}
	t.Cleanup(p.CloseIdle)
	req, _ := http.NewRequest("GET", "/", nil)
	resp, err := p.RoundTrip(up, req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitFor(t, "upstream connection closed", 5*time.Second, func() bool { return closed.Load() == 1 })
	get(t, p, up, "GET", "/", nil)
	if n := opened.Load(); n != 2 {
		t.Errorf("%d connections, want 2: a half-read response must not leave its connection in the pool", n)
	}
}

func TestFastPathIdleLimits(t *testing.T) {
	release := make(chan struct{})
	var arrived atomic.Int64
	up, opened, closed := countingUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		<-release
	}))
	p := &Pool{MaxIdlePerUpstream: 2, IdleTimeout: 200 * time.Millisecond}
	t.Cleanup(p.CloseIdle)
	const n = 5
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", "/", nil)
			resp, err := p.RoundTrip(up, req)
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
	waitFor(t, "concurrent requests", 5*time.Second, func() bool { return arrived.Load() == n })
	close(release)
	wg.Wait()
	if got := opened.Load(); got != n {
		t.Fatalf("%d connections opened, want %d", got, n)
	}
	// Beyond MaxIdlePerUpstream connections are closed at once; the
	// rest when IdleTimeout passes.
	waitFor(t, "connections beyond the idle limit closed", 5*time.Second, func() bool { return closed.Load() >= n-2 })
	waitFor(t, "idle connections closed after IdleTimeout", 5*time.Second, func() bool { return closed.Load() == n })
	// Dead entries are skipped: the next request dials anew.
	get(t, p, up, "GET", "/", nil)
	if got := opened.Load(); got != n+1 {
		t.Errorf("%d connections opened, want %d", got, n+1)
	}
}

func TestFastPathForget(t *testing.T) {
	up, _, closed := countingUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	p := &Pool{}
	get(t, p, up, "GET", "/", nil)
	p.Forget(func(string) bool { return false })
	waitFor(t, "idle connection closed by Forget", 5*time.Second, func() bool { return closed.Load() == 1 })
}

func TestFastPathRejectsBadFields(t *testing.T) {
	up, opened, _ := countingUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	p := &Pool{}
	t.Cleanup(p.CloseIdle)
	tests := []struct {
		name string
		hdr  http.Header
	}{
		{"CRLF in value", http.Header{"X-A": {"a\r\nX-Injected: 1"}}},
		{"NUL in value", http.Header{"X-A": {"a\x00"}}},
		{"space in name", http.Header{"X A": {"1"}}},
		{"empty name", http.Header{"": {"1"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "/", nil)
			req.Header = tt.hdr
			resp, err := p.RoundTrip(up, req)
			if err == nil {
				resp.Body.Close()
				t.Fatal("request with a bad field was sent")
			}
		})
	}
	if n := opened.Load(); n != 0 {
		t.Errorf("%d connections opened for bad requests, want 0", n)
	}
}

func TestUseFastPath(t *testing.T) {
	tests := []struct {
		name   string
		method string
		body   io.Reader
		hdr    http.Header
		want   bool
	}{
		{"GET", "GET", nil, nil, true},
		{"HEAD", "HEAD", nil, nil, true},
		{"DELETE", "DELETE", nil, nil, true},
		{"PUT without body", "PUT", nil, nil, true},
		{"GET with body", "GET", strings.NewReader("x"), nil, false},
		{"POST without body", "POST", nil, nil, false},
		{"PATCH", "PATCH", nil, nil, false},
		{"upgrade", "GET", nil, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, "http://x/", tt.body)
			for k, v := range tt.hdr {
				req.Header[k] = v
			}
			if got := useFastPath(req); got != tt.want {
				t.Errorf("useFastPath = %v, want %v", got, tt.want)
			}
		})
	}
}

// FuzzFastPathResponse feeds arbitrary upstream bytes to the fast path: it
// must return an error or a response whose body reads to an end, never
// panic or hang, and keep a connection only after a complete response.
func FuzzFastPathResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"))
	f.Add([]byte("HTTP/1.0 200 OK\r\n\r\nclose-delimited"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok"))
	f.Add([]byte("HTTP/1.1 101 Switching Protocols\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		go func() {
			defer server.Close()
			br := bufio.NewReader(server)
			if readRequest(br) {
				_, _ = server.Write(data)
			}
		}()
		p := newH1Pool(func(context.Context) (net.Conn, error) { return client, nil }, 1, time.Minute, 2*time.Second)
		defer p.closeIdle(true)
		req, _ := http.NewRequest("GET", "http://x/", nil)
		resp, err := p.roundTrip(req)
		if err != nil {
			if len(p.idle) != 0 {
				t.Fatal("connection kept after a failed exchange")
			}
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	})
}

func TestWriteRequestHead(t *testing.T) {
	tests := []struct {
		name, method, url, host string
		header                  http.Header
		want                    []string // lines that must be there
		not                     []string // substrings that must not
	}{
		{"get with query", "GET", "http://up/a%20b?x=1", "web.example", http.Header{"User-Agent": {""}, "Accept": {"*/*"}},
			[]string{"GET /a%20b?x=1 HTTP/1.1", "Host: web.example", "Accept: */*"}, []string{"User-Agent", "Content-Length"}},
		{"delete has a length", "DELETE", "http://up/x", "", http.Header{"User-Agent": {"curl/8"}},
			[]string{"DELETE /x HTTP/1.1", "Host: up", "User-Agent: curl/8", "Content-Length: 0"}, nil},
		{"framing fields never copied", "GET", "http://up/", "h", http.Header{"Host": {"evil"}, "Transfer-Encoding": {"chunked"}, "Content-Length": {"5"}},
			[]string{"Host: h"}, []string{"evil", "chunked", "Content-Length"}},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, tt.url, nil)
		req.Host, req.Header = tt.host, tt.header
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		if err := writeRequestHead(bw, req); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		bw.Flush()
		out := buf.String()
		if !strings.HasSuffix(out, "\r\n\r\n") {
			t.Errorf("%s: head not terminated: %q", tt.name, out)
		}
		// What Go's own parser reads back is what was meant.
		back, err := http.ReadRequest(bufio.NewReader(strings.NewReader(out)))
		if err != nil {
			t.Errorf("%s: unreadable head %q: %v", tt.name, out, err)
			continue
		}
		if back.Method != tt.method {
			t.Errorf("%s: method %q", tt.name, back.Method)
		}
		for _, l := range tt.want {
			if !strings.Contains(out, l+"\r\n") {
				t.Errorf("%s: missing %q in %q", tt.name, l, out)
			}
		}
		for _, s := range tt.not {
			if strings.Contains(out, s) {
				t.Errorf("%s: %q in %q", tt.name, s, out)
			}
		}
	}
	req, _ := http.NewRequest("GET", "http://up/", nil)
	req.Host = "bad host\r\nX: y"
	if err := writeRequestHead(bufio.NewWriter(io.Discard), req); err == nil {
		t.Error("an invalid Host was written")
	}
}

// sameAsGo parses in with readResponse and with http.ReadResponse and
// reports a difference in anything a forwarding handler uses. It returns
// whether the fast path took the response.
func sameAsGo(t testing.TB, in, method string) bool {
	t.Helper()
	req := &http.Request{Method: method}
	br := bufio.NewReaderSize(strings.NewReader(in), 4096)
	fast := readSimpleResponse(br, req, new(fastResponse))
	took := fast != nil
	if fast == nil {
		return false
	}
	want, werr := http.ReadResponse(bufio.NewReader(strings.NewReader(in)), req)
	if werr != nil {
		t.Fatalf("fast path accepted %q, Go's parser refuses it: %v", in, werr)
	}
	gotBody, gerr := io.ReadAll(fast.Body)
	wantBody, wberr := io.ReadAll(want.Body)
	switch {
	case fast.StatusCode != want.StatusCode || fast.Status != want.Status || fast.Proto != want.Proto ||
		fast.ProtoMinor != want.ProtoMinor:
		t.Fatalf("%q: status %q %d %s, Go %q %d %s", in, fast.Status, fast.StatusCode, fast.Proto, want.Status, want.StatusCode, want.Proto)
	case fast.ContentLength != want.ContentLength || fast.Close != want.Close:
		t.Fatalf("%q: length %d close %v, Go %d %v", in, fast.ContentLength, fast.Close, want.ContentLength, want.Close)
	case (gerr == nil) != (wberr == nil) || string(gotBody) != string(wantBody):
		t.Fatalf("%q: body %q (%v), Go %q (%v)", in, gotBody, gerr, wantBody, wberr)
	}
	if len(fast.Header) != len(want.Header) {
		t.Fatalf("%q: header %v, Go %v", in, fast.Header, want.Header)
	}
	for k, v := range want.Header {
		if strings.Join(fast.Header[k], "\x00") != strings.Join(v, "\x00") {
			t.Fatalf("%q: %s = %q, Go %q", in, k, fast.Header[k], v)
		}
	}
	// What follows the response is left for the next one.
	rest, _ := io.ReadAll(br)
	if wrest, _ := io.ReadAll(io.MultiReader(want.Body)); len(wrest) != 0 {
		t.Fatalf("Go's body not drained")
	}
	_ = rest
	return took
}

func TestReadSimpleResponse(t *testing.T) {
	for _, tt := range []struct {
		in, method string
		fast       bool
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello", "GET", true},
		{"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nX-Two: a\r\nX-Two: b\r\nx-lower-case:  v \r\n\r\nhelloNEXT", "GET", true},
		{"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", "GET", true},
		{"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi", "GET", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi", "GET", true},
		{"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n", "GET", true},
		{"HTTP/1.1 304 Not Modified\r\nEtag: \"a\"\r\n\r\n", "GET", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", "HEAD", true},
		{"HTTP/1.1 200 OK\r\n\r\n", "HEAD", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "GET", true},
		{"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", "GET", true},
		{"HTTP/1.1 599 Whatever Text\r\nContent-Length: 1\r\n\r\nx", "GET", true},
		// Taken by Go's parser.
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", "GET", false},
		{"HTTP/1.1 200 OK\r\nTrailer: X\r\nContent-Length: 2\r\n\r\nhi", "GET", false},
		{"HTTP/1.1 200 OK\r\n\r\nuntil close", "GET", false},
		{"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "GET", false},
		{"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", "GET", false},
		{"HTTP/1.1 200 OK\nContent-Length: 0\n\n", "GET", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", "GET", false},
		{"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", "GET", false},
		{"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "GET", false},
	} {
		if got := sameAsGo(t, tt.in, tt.method); got != tt.fast {
			t.Errorf("%q: fast path %v, want %v", tt.in, got, tt.fast)
		}
	}
}

// FuzzReadSimpleResponse: whatever the fast path accepts, Go's parser
// reads the same way.
func FuzzReadSimpleResponse(f *testing.F) {
	f.Add("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello", false)
	f.Add("HTTP/1.0 304 Not Modified\r\nConnection: keep-alive\r\n\r\n", true)
	f.Fuzz(func(t *testing.T, in string, head bool) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		sameAsGo(t, in, method)
	})
}
