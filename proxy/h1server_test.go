package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// dialRaw opens a TCP connection with a deadline for the whole test.
func dialRaw(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// readResp reads one response and its whole body.
func readResp(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, string(b)
}

func TestH1Refusals(t *testing.T) {
	var calls atomic.Int32
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		io.WriteString(w, "served")
	}), nil).BoundAddr()
	big := strings.Repeat("a", DefaultMaxHeaderBytes)
	tests := []struct {
		name, req string
		want      int
	}{
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400},
		{"no colon", "GET / HTTP/1.1\r\nHost: x\r\nJunk\r\n\r\n", 400},
		{"missing Host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"malformed Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"CL and TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"differing CLs", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
		{"negative CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
		{"signed CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400},
		{"unknown coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		{"chunked not last", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 501},
		{"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"bare CR in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400},
		{"NUL in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400},
		{"invalid method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"target with a control", "GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"three parts only", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"HTTP/2.0", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
		{"not HTTP", "GET / FTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"header section too large", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + big + "\r\n\r\n", 431},
		{"unknown expectation", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: magic\r\n\r\na", 417},
		{"forbidden trailer", "POST / HTTP/1.1\r\nHost: x\r\nTrailer: Content-Length\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := calls.Load()
			c, br := dialRaw(t, addr)
			io.WriteString(c, tt.req)
			resp, _ := readResp(t, br, "GET")
			if resp.StatusCode != tt.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.want)
			}
			if !resp.Close {
				t.Error("connection not closed after a refused request")
			}
			if rest, _ := io.ReadAll(br); len(rest) != 0 {
				t.Errorf("more after the refusal: %q", rest)
			}
			if calls.Load() != before {
				t.Error("the handler ran")
			}
		})
	}
	// The server still serves.
	resp, body := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 || body != "served" {
		t.Fatalf("after the refusals: %d %q", resp.StatusCode, body)
	}
}

func TestH1Accepts(t *testing.T) {
	type got struct {
		method, host, uri, body string
		cl                      int64
		close                   bool
		header                  http.Header
		trailer                 http.Header
	}
	seenc := make(chan got, 1)
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		seenc <- got{r.Method, r.Host, r.RequestURI, string(b), r.ContentLength, r.Close, r.Header, r.Trailer}
	}), nil).BoundAddr()
	tests := []struct {
		name, req string
		check     func(t *testing.T, g got)
	}{
		{"leading empty line", "\r\nGET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n", func(t *testing.T, g got) {
			if g.uri != "/a?b=c" || g.host != "x" {
				t.Errorf("%+v", g)
			}
		}},
		{"bare LF lines", "GET / HTTP/1.1\nHost: x\nX-A:  v \n\n", func(t *testing.T, g got) {
			if g.header.Get("X-A") != "v" {
				t.Errorf("X-A %q", g.header.Get("X-A"))
			}
		}},
		{"absolute-form wins over Host", "GET http://a.example/p HTTP/1.1\r\nHost: b.example\r\n\r\n", func(t *testing.T, g got) {
			if g.host != "a.example" || g.header["Host"] != nil {
				t.Errorf("host %q, header %v", g.host, g.header)
			}
		}},
		{"field names canonical, values kept", "GET / HTTP/1.1\r\nhost: x\r\nx-custom-thing: A\r\nX-CUSTOM-THING: B\r\n\r\n", func(t *testing.T, g got) {
			if v := g.header["X-Custom-Thing"]; len(v) != 2 || v[0] != "A" || v[1] != "B" {
				t.Errorf("X-Custom-Thing %q", v)
			}
		}},
		{"equal CLs", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", func(t *testing.T, g got) {
			if g.body != "abc" || g.cl != 3 {
				t.Errorf("body %q cl %d", g.body, g.cl)
			}
		}},
		{"chunked with extension and trailer", "POST / HTTP/1.1\r\nHost: x\r\nTrailer: X-Sum\r\nTransfer-Encoding: Chunked\r\n\r\n" +
			"3;name=v\r\nabc\r\n1\r\nd\r\n0\r\nX-Sum: 4\r\n\r\n", func(t *testing.T, g got) {
			if g.body != "abcd" || g.cl != -1 || g.trailer.Get("X-Sum") != "4" {
				t.Errorf("body %q cl %d trailer %v", g.body, g.cl, g.trailer)
			}
		}},
		{"HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", func(t *testing.T, g got) {
			if !g.close {
				t.Error("HTTP/1.0 without keep-alive not marked Close")
			}
		}},
		{"HTTP/1.1 Connection: close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", func(t *testing.T, g got) {
			if !g.close {
				t.Error("not marked Close")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := rawExchange(t, addr, tt.req)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d %q", resp.StatusCode, body)
			}
			select {
			case g := <-seenc:
				tt.check(t, g)
			default:
				t.Fatal("handler did not run")
			}
		})
	}
}

func TestH1MalformedChunkedBody(t *testing.T) {
	errc := make(chan error, 1)
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		errc <- err
		w.WriteHeader(http.StatusBadRequest)
	}), nil).BoundAddr()
	for _, body := range []string{
		"3\r\nabcX\r\n0\r\n\r\n",    // data longer than the size
		"z\r\nabc\r\n0\r\n\r\n",     // not hex
		"3\nabc\r\n0\r\n\r\n",       // bare LF in the framing
		"ffffffffffffffff\r\na\r\n", // size overflow
	} {
		c, br := dialRaw(t, addr)
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"+body+"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, _ := readResp(t, br, "POST")
		if err := <-errc; err == nil {
			t.Errorf("%q: body read without error", body)
		}
		if !resp.Close {
			t.Errorf("%q: connection kept after a malformed body", body)
		}
		if rest, _ := io.ReadAll(br); len(rest) != 0 {
			t.Errorf("%q: more after the response: %q", body, rest)
		}
	}
}

func TestH1PipeliningAndKeepAlive(t *testing.T) {
	var n atomic.Int32
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%d %s %s", n.Add(1), r.URL.Path, b)
	}), nil).BoundAddr()
	c, br := dialRaw(t, addr)
	io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"+
		"POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nyo\r\n0\r\n\r\n"+
		"HEAD /4 HTTP/1.1\r\nHost: x\r\n\r\n")
	for i, want := range []string{"1 /1 ", "2 /2 hi", "3 /3 yo", ""} {
		method := "GET"
		if i == 3 {
			method = "HEAD"
		}
		resp, body := readResp(t, br, method)
		if resp.StatusCode != 200 || body != want || resp.Close {
			t.Fatalf("response %d: %d %q close=%v, want 200 %q", i+1, resp.StatusCode, body, resp.Close, want)
		}
	}
	// Still open for another request.
	io.WriteString(c, "GET /5 HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, body := readResp(t, br, "GET"); body != "5 /5 " {
		t.Fatalf("after the pipeline: %q", body)
	}
}

// TestH1UnreadBody: a body the handler ignores is read and discarded so
// the connection carries the next request, up to a bound past which the
// connection is closed instead.
func TestH1UnreadBody(t *testing.T) {
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	}), nil).BoundAddr()
	c, br := dialRaw(t, addr)
	io.WriteString(c, "POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
	if resp, body := readResp(t, br, "POST"); body != "/small" || resp.Close {
		t.Fatalf("small: %q close=%v", body, resp.Close)
	}
	io.WriteString(c, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, body := readResp(t, br, "GET"); body != "/next" {
		t.Fatalf("next: %q", body)
	}
	fmt.Fprintf(c, "POST /huge HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 1<<30)
	if resp, _ := readResp(t, br, "POST"); !resp.Close {
		t.Fatal("connection kept with 1 GiB of body unread")
	}
}

func TestH1ResponseFraming(t *testing.T) {
	big := strings.Repeat("b", 100<<10)
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/small":
			io.WriteString(w, "small")
		case "/big":
			io.WriteString(w, big)
		case "/declared":
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "12345")
		case "/short":
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, "12345")
		case "/flush":
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
		case "/204":
			w.WriteHeader(http.StatusNoContent)
			if _, err := io.WriteString(w, "x"); err != http.ErrBodyNotAllowed {
				panic("body written on a 204")
			}
		case "/trailer":
			w.Header().Set("Trailer", "X-T")
			io.WriteString(w, "t")
			w.Header().Set("X-T", "done")
			w.Header().Set(http.TrailerPrefix+"X-Late", "late")
		case "/split":
			w.Header().Set("X-Evil", "a\r\nSet-Cookie: stolen=1")
			io.WriteString(w, "s")
		case "/hints":
			w.Header().Set("Link", "</s.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "h")
		}
	}), nil).BoundAddr()

	get := func(path, proto string) (*http.Response, string, *bufio.Reader) {
		c, br := dialRaw(t, addr)
		fmt.Fprintf(c, "GET %s %s\r\nHost: x\r\n\r\n", path, proto)
		resp, body := readResp(t, br, "GET")
		return resp, body, br
	}
	if resp, body, _ := get("/small", "HTTP/1.1"); resp.ContentLength != 5 || body != "small" || resp.TransferEncoding != nil {
		t.Errorf("small: CL %d TE %v %q", resp.ContentLength, resp.TransferEncoding, body)
	}
	if resp, body, _ := get("/big", "HTTP/1.1"); len(resp.TransferEncoding) != 1 || body != big {
		t.Errorf("big: TE %v, %d bytes", resp.TransferEncoding, len(body))
	}
	if resp, body, _ := get("/big", "HTTP/1.0"); !resp.Close || resp.TransferEncoding != nil || body != big {
		t.Errorf("big over HTTP/1.0: close %v TE %v, %d bytes", resp.Close, resp.TransferEncoding, len(body))
	}
	if resp, body, _ := get("/small", "HTTP/1.0"); resp.Close || resp.ContentLength != 5 || body != "small" {
		// HTTP/1.0 without keep-alive: the server closes, and says so.
		if !resp.Close {
			t.Errorf("small over HTTP/1.0: close %v CL %d", resp.Close, resp.ContentLength)
		}
	}
	if resp, body, _ := get("/declared", "HTTP/1.1"); resp.ContentLength != 5 || body != "12345" {
		t.Errorf("declared: CL %d %q", resp.ContentLength, body)
	}
	c, br := dialRaw(t, addr)
	io.WriteString(c, "GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("short: a body shorter than its Content-Length read as complete")
	}
	if resp, body, _ := get("/flush", "HTTP/1.1"); len(resp.TransferEncoding) != 1 || body != "ab" {
		t.Errorf("flush: TE %v %q", resp.TransferEncoding, body)
	}
	if resp, body, _ := get("/204", "HTTP/1.1"); resp.StatusCode != 204 || body != "" {
		t.Errorf("204: %d %q", resp.StatusCode, body)
	}
	if resp, body, _ := get("/trailer", "HTTP/1.1"); body != "t" || resp.Trailer.Get("X-T") != "done" || resp.Trailer.Get("X-Late") != "late" {
		t.Errorf("trailer: %q %v", body, resp.Trailer)
	}
	if resp, _, _ := get("/split", "HTTP/1.1"); resp.Header.Get("Set-Cookie") != "" || !strings.Contains(resp.Header.Get("X-Evil"), "Set-Cookie") {
		t.Errorf("split: %v", resp.Header)
	}
	c, br = dialRaw(t, addr)
	io.WriteString(c, "GET /hints HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 103 || resp.Header.Get("Link") == "" {
		t.Fatalf("hints: %v %v", resp, err)
	}
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "h" {
		t.Errorf("after hints: %d %q", resp.StatusCode, body)
	}
}

// TestH1WatchClient: a handler waiting on something slow after
// watchClient sees its context canceled when the client leaves.
func TestH1WatchClient(t *testing.T) {
	canceled := make(chan struct{})
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		watchClient(r.Context())
		select {
		case <-r.Context().Done():
			close(canceled)
		case <-time.After(10 * time.Second):
		}
	}), nil).BoundAddr()
	c, _ := dialRaw(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(50 * time.Millisecond) // let the handler start waiting
	c.Close()
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("the request's context was not canceled when the client left")
	}
}

// TestH1WatchDelayed: the read-ahead starts only once the handler has
// waited watchDelay; a request answered sooner never starts it.
func TestH1WatchDelayed(t *testing.T) {
	saved := watchDelay
	t.Cleanup(func() { watchDelay = saved })
	watchDelay = time.Hour
	started := make(chan bool, 1)
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		watchClient(r.Context())
		c := r.Context().Value(h1ConnKey{}).(*h1conn)
		c.curLock.Lock()
		armed, on := c.bgArmed, c.bgOn
		c.curLock.Unlock()
		started <- armed && !on
	}), nil).BoundAddr()
	if resp, _ := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if !<-started {
		t.Fatal("the read-ahead was not merely armed right after watchClient")
	}

	watchDelay = time.Millisecond
	addr = startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		watchClient(r.Context())
		c := r.Context().Value(h1ConnKey{}).(*h1conn)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			c.curLock.Lock()
			on := c.bgOn
			c.curLock.Unlock()
			if on {
				started <- true
				return
			}
		}
		started <- false
	}), nil).BoundAddr()
	if resp, _ := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if !<-started {
		t.Fatal("the read-ahead did not start after watchDelay")
	}
}

// TestH1OnCancel: a hook registered for a request of the server runs when
// its client leaves, not at all when released first, at once on a request
// already canceled; a context that can be canceled on its own gets
// context.AfterFunc.
func TestH1OnCancel(t *testing.T) {
	type result struct {
		direct, released, derived bool // registered with the request
		releasedOK                bool
	}
	ran := make(chan string, 4)
	results := make(chan result, 1)
	// The handler releases its hooks only once the test has seen them
	// run: a release racing the cancellation may stop a hook first, as
	// it should.
	proceed := make(chan struct{})
	letGo := sync.OnceFunc(func() { close(proceed) })
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(r.Context(), struct{}{}, 1) // values only: still the request's
		var res result
		h := onCancel(ctx, func() { ran <- "released" })
		res.released = h.w != nil
		res.releasedOK = h.release()
		derived, cancel := context.WithCancel(ctx)
		defer cancel()
		hd := onCancel(derived, func() { ran <- "derived" })
		res.derived = hd.w != nil
		defer hd.release()
		hr := onCancel(ctx, func() { ran <- "request" })
		res.direct = hr.w != nil
		results <- res
		watchClient(r.Context())
		<-r.Context().Done()
		onCancel(ctx, func() { ran <- "late" })
		<-proceed
		hr.release()
	}), nil).BoundAddr()
	t.Cleanup(letGo) // before the server's shutdown, which waits for the handler
	c, _ := dialRaw(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	res := <-results
	if !res.released || !res.releasedOK || res.derived || !res.direct {
		t.Fatalf("%+v: want a hook with the request for the request's context only, released in time", res)
	}
	c.Close()
	got := map[string]bool{}
	for range 3 {
		select {
		case s := <-ran:
			got[s] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("hooks run: %v, want request, derived and late", got)
		}
	}
	letGo()
	if !got["request"] || !got["derived"] || !got["late"] {
		t.Fatalf("hooks run: %v, want request, derived and late", got)
	}
	select {
	case s := <-ran:
		t.Fatalf("hook %q ran too", s)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestH1WatchKeepsPipelinedRequest: what the read-ahead of watchClient
// reads is the next request, and it is served.
func TestH1WatchKeepsPipelinedRequest(t *testing.T) {
	release := make(chan struct{})
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		watchClient(r.Context())
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, r.URL.Path)
	}), nil).BoundAddr()
	c, br := dialRaw(t, addr)
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(50 * time.Millisecond) // the read-ahead is waiting
	io.WriteString(c, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(50 * time.Millisecond)
	close(release)
	for _, want := range []string{"/slow", "/next"} {
		if _, body := readResp(t, br, "GET"); body != want {
			t.Fatalf("got %q, want %q", body, want)
		}
	}
}

func TestH1PanicClosesOnlyItsConnection(t *testing.T) {
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic("boom")
		}
		io.WriteString(w, "ok")
	}), nil).BoundAddr()
	c, br := dialRaw(t, addr)
	io.WriteString(c, "GET /panic HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := http.ReadResponse(br, nil); err == nil {
		t.Fatal("a response after a panic")
	}
	if _, body := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); body != "ok" {
		t.Fatalf("after the panic: %q", body)
	}
}

// TestH1Shutdown: an idle connection is closed at once, a request in
// flight completes with Connection: close, and Shutdown returns after it.
func TestH1Shutdown(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	s := &Server{Addr: "127.0.0.1:0", Logger: testLogger(), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		io.WriteString(w, "done")
	})}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	idle, idleBR := dialRaw(t, s.BoundAddr())
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	readResp(t, idleBR, "GET")
	busy, busyBR := dialRaw(t, s.BoundAddr())
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	<-started
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	if _, err := idleBR.ReadByte(); err == nil {
		t.Error("idle connection still open during shutdown")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	resp, body := readResp(t, busyBR, "GET")
	if body != "done" || !resp.Close {
		t.Errorf("in-flight request: %q close=%v", body, resp.Close)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// FuzzParseRequestHead: any bytes give a request or an error, never a
// panic, and a request that parses obeys the framing rules.
func FuzzParseRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a?b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-A\r\n\r\n",
		"GET http://h/p HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		lr := lineReader{br: bufio.NewReaderSize(strings.NewReader(string(in)), 64), budget: 1 << 10}
		r := &http.Request{}
		if err := parseRequestHead(&lr, r); err != nil {
			return
		}
		if !isToken(r.Method) || r.URL == nil || r.ProtoMajor != 1 {
			t.Fatalf("accepted %q: method %q URL %v proto %d", in, r.Method, r.URL, r.ProtoMajor)
		}
		if r.TransferEncoding != nil && (r.ContentLength != -1 || r.Header["Content-Length"] != nil) {
			t.Fatalf("accepted %q with both framings", in)
		}
		if r.ContentLength < -1 {
			t.Fatalf("accepted %q with Content-Length %d", in, r.ContentLength)
		}
		for k, vv := range r.Header {
			for _, v := range vv {
				if !isToken(k) || !validFieldValue(v) {
					t.Fatalf("accepted %q with field %q: %q", in, k, v)
				}
			}
		}
	})
}

// FuzzH1Conn feeds arbitrary bytes to a connection of the HTTP/1.1 server:
// whatever comes in, the server answers with well-formed responses only,
// never panics and lets the connection go within its timeouts.
func FuzzH1Conn(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
		"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	s := &h1srv{
		handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n, _ := io.Copy(io.Discard, r.Body)
			if r.URL.Path == "/b" {
				w.(http.Flusher).Flush()
			}
			fmt.Fprintf(w, "%s %d", r.Method, n)
		}),
		headerTimeout:  200 * time.Millisecond,
		idleTimeout:    200 * time.Millisecond,
		maxHeaderBytes: 4 << 10,
		logger:         testLogger(),
	}
	// Each input goes over net.Pipe (the path of TLS connections, whose
	// writes go through the net.Conn) and over loopback TCP (rawtcp.go's
	// system calls).
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, tcp := range []bool{false, true} {
			var client, server net.Conn
			if tcp {
				client, server = tcpPair(t)
			} else {
				client, server = net.Pipe()
			}
			fuzzH1Exchange(t, s, client, server, in)
		}
	})
}

// fuzzH1Exchange serves one connection with in as the client's bytes and
// checks that every answer is a well-formed response and that the
// connection ends.
func fuzzH1Exchange(t *testing.T, s *h1srv, client, server net.Conn, in []byte) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serve(server, nil)
	}()
	_ = client.SetDeadline(time.Now().Add(5 * time.Second))
	go func() {
		_, _ = client.Write(in)
		if tc, ok := client.(*net.TCPConn); ok {
			_ = tc.CloseWrite() // the end of the input: the server need not wait for its idle timeout
		}
	}()
	br := bufio.NewReader(client)
	for i := 0; ; i++ {
		if _, err := br.Peek(1); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("server neither answered nor closed within 5 s for %q", in)
			}
			break // closed
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("malformed response %d to %q: %v", i, in, err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("response %d body to %q: %v", i, in, err)
		}
		if resp.StatusCode < 100 || resp.StatusCode > 599 {
			t.Fatalf("status %d to %q", resp.StatusCode, in)
		}
	}
	client.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("connection goroutine still running 5 s after the client left (%q)", in)
	}
}

func TestH1RawHeader(t *testing.T) {
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Map", "m")
		w.(interface{ AddRawHeader([]byte) }).AddRawHeader([]byte("Date: Sun, 01 Mar 2026 12:00:00 GMT\r\nX-Raw: a\r\nX-Raw: b\r\n"))
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
	}), nil).BoundAddr()
	resp, body := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if body != "ok" || resp.Header.Get("X-Map") != "m" || strings.Join(resp.Header["X-Raw"], ",") != "a,b" ||
		len(resp.Header["Date"]) != 1 || resp.Header.Get("Date") != "Sun, 01 Mar 2026 12:00:00 GMT" {
		t.Errorf("header %v body %q", resp.Header, body)
	}
}

// TestH1SendTimeout: a client that stops reading loses its connection
// after the send timeout; one that reads a large body slowly but steadily
// gets all of it.
func TestH1SendTimeout(t *testing.T) {
	big := make([]byte, 32<<20)
	errc := make(chan error, 1)
	s := startWith(t, &Server{SendTimeout: 300 * time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := len(big)
		if r.URL.Path == "/slow-reader" {
			n = 16 << 20
		}
		w.Header().Set("Content-Length", fmt.Sprint(n))
		_, err := w.Write(big[:n])
		if r.URL.Path == "/stuck" {
			errc <- err
		}
	})})
	c, _ := dialRaw(t, s.BoundAddr())
	io.WriteString(c, "GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("32 MiB written to a client that reads nothing")
		}
	case <-time.After(8 * time.Second):
		t.Fatal("a client that reads nothing still holds the handler after 8 s")
	}

	c2, br := dialRaw(t, s.BoundAddr())
	io.WriteString(c2, "GET /slow-reader HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	var got int
	// About 13 MB/s: the whole body takes longer than the send timeout
	// (more than the socket buffers hold), each 256 KiB piece far less.
	for i := 0; i < 1000; i++ {
		n, err := resp.Body.Read(buf)
		got += n
		if err != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got != 16<<20 {
		t.Fatalf("slow reader got %d bytes, want all %d", got, 16<<20)
	}
}

// TestH1HeaderTimeoutKeptWithIdleDeadline: a head that has not arrived
// whole is bounded by the header timeout (here 300 ms, the idle timeout
// 10 s) however it starts: first on the connection, after empty lines,
// pipelined after a request with a body or after one without.
func TestH1HeaderTimeoutKeptWithIdleDeadline(t *testing.T) {
	s := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), ReadHeaderTimeout: 300 * time.Millisecond, IdleTimeout: 10 * time.Second})
	for _, tc := range []struct {
		name      string
		in        string
		responses int
	}{
		{"first", "GET / HTTP/1.1\r\nHost: x\r\n", 0},
		{"after empty lines", "\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n", 0},
		{"after a body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n", 1},
		{"after a bodiless request", "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", s.BoundAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			if _, err := io.WriteString(c, tc.in); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			for i := 0; i < tc.responses; i++ {
				resp, err := http.ReadResponse(br, nil)
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("response %d: %v", i, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("after %v: %v, want the connection closed", time.Since(start), err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("closed after %v: not by the 300 ms header timeout", d)
			}
		})
	}
}

// TestH1IdleDeadlineRearmed: a connection with a request every 100 ms
// stays open past several idle timeouts of 300 ms (the idle deadline set
// for one request is moved on for later ones) and is closed once silent.
func TestH1IdleDeadlineRearmed(t *testing.T) {
	s := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), ReadHeaderTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	c, err := net.Dial("tcp", s.BoundAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i := range 12 {
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		time.Sleep(100 * time.Millisecond)
	}
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("silent connection: %v, want it closed", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("closed %v after the last request, idle timeout 300 ms", d)
	}
}

// TestH1HeaderMapPerRequest: the response header map is reused on a
// connection, emptied between requests: nothing a handler set for one
// response shows in the next.
func TestH1HeaderMapPerRequest(t *testing.T) {
	s := startWith(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/set" {
			w.Header().Set("X-Set", "1")
			w.Header()["Trailer"] = []string{"X-T"}
			w.Header().Set("Content-Length", "7")
			_, _ = io.WriteString(w, "set it!")
			return
		}
		_, _ = io.WriteString(w, "plain")
	})})
	c, err := net.Dial("tcp", s.BoundAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /set HTTP/1.1\r\nHost: x\r\n\r\nGET /plain HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i, want := range []string{"set it!", "plain"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if string(body) != want {
			t.Fatalf("response %d body %q, want %q", i, body, want)
		}
		if i == 1 {
			if v := resp.Header.Get("X-Set"); v != "" || resp.ContentLength != int64(len(want)) || len(resp.Trailer) != 0 {
				t.Fatalf("second response carries the first's fields: X-Set %q, length %d, trailer %v", v, resp.ContentLength, resp.Trailer)
			}
		}
	}
}

// TestSilentConnectionClosed: a connection that sends nothing at all is
// closed after about the header timeout, not held for the idle timeout
// (120 s by default): on plain HTTP/1.1, before a TLS handshake, and after
// a handshake that chose HTTP/1.1.
func TestSilentConnectionClosed(t *testing.T) {
	cfg, roots := selfSigned(t)
	plain := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), ReadHeaderTimeout: 300 * time.Millisecond})
	tlsSrv := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), TLS: cfg, ReadHeaderTimeout: 300 * time.Millisecond})
	tests := []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"plain", func() (net.Conn, error) { return net.Dial("tcp", plain.BoundAddr()) }},
		{"before the TLS handshake", func() (net.Conn, error) { return net.Dial("tcp", tlsSrv.BoundAddr()) }},
		{"after a TLS handshake for http/1.1", func() (net.Conn, error) {
			return tls.Dial("tcp", tlsSrv.BoundAddr(), &tls.Config{RootCAs: roots, ServerName: "example.test", NextProtos: []string{"http/1.1"}})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			// Generous bound: the header timeout is 300 ms, the idle
			// timeout (what held such connections before) 120 s.
			if !closedByPeer(c, 10*time.Second) {
				t.Fatalf("silent connection still open after %v; ReadHeaderTimeout is 300ms", time.Since(start))
			}
			t.Logf("closed after %v", time.Since(start))
		})
	}
}

// TestH1FieldValues: field values, gathered into one string per section,
// come out as sent: repeated fields in order, an append to one does not
// reach its neighbour, a head that arrives in pieces and the next request
// on the connection (which reuses the value buffer) are read right, and a
// handler may keep values after the next request was read.
func TestH1FieldValues(t *testing.T) {
	kept := make(chan http.Header, 2)
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header
		kept <- h
		next := h.Get("X-Mesh-Service")
		_ = append(h["X-B"], "appended")
		if got := h.Get("X-Mesh-Service"); got != next {
			t.Errorf("X-Mesh-Service %q after appending to X-B, was %q", got, next)
		}
		fmt.Fprintf(w, "%s|%s|%s|%q", strings.Join(h["X-A"], ","), h.Get("X-B"), h.Get("X-Mesh-Service"), h.Get("X-Empty"))
	}), nil).BoundAddr()
	c, br := dialRaw(t, addr)
	head := "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-B: b\r\nx-a:  2 \r\nX-Mesh-Service: web\r\nX-Empty:\r\n\r\n"
	io.WriteString(c, head[:20])
	time.Sleep(20 * time.Millisecond)
	io.WriteString(c, head[20:])
	if _, body := readResp(t, br, "GET"); body != `1,2|b|web|""` {
		t.Fatalf("first: %q", body)
	}
	first := <-kept
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-A: other\r\nX-B: longer value\r\n\r\n")
	if _, body := readResp(t, br, "GET"); body != `other|longer value||""` {
		t.Fatalf("second: %q", body)
	}
	<-kept
	if got := strings.Join(first["X-A"], ","); got != "1,2" || first.Get("X-B") != "b" {
		t.Fatalf("the first request's values changed: X-A %q X-B %q", got, first.Get("X-B"))
	}
}

// writeCounter counts the writes to a connection.
type writeCounter struct {
	net.Conn
	writes atomic.Int64
}

func (c *writeCounter) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestH1ForwardedResponseOneWrite: a forwarded response's head and a 1 KiB
// body reach the client in one write, request after request.
func TestH1ForwardedResponseOneWrite(t *testing.T) {
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "1024")
		_, _ = w.Write(make([]byte, 1024))
	}))
	h := &Handler{Route: fixedRoute(up), Pool: &Pool{}, Via: "test-hop", Logger: testLogger()}
	t.Cleanup(h.Pool.CloseIdle)
	s := &h1srv{handler: h, headerTimeout: 5 * time.Second, idleTimeout: time.Minute,
		maxHeaderBytes: DefaultMaxHeaderBytes, logger: testLogger()}
	a, b := net.Pipe()
	t.Cleanup(func() { b.Close() })
	wc := &writeCounter{Conn: a}
	go s.serve(wc, nil)
	_ = b.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(b)
	for i := range 3 {
		before := wc.writes.Load()
		go io.WriteString(b, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := readResp(t, br, "GET")
		if resp.StatusCode != 200 || len(body) != 1024 {
			t.Fatalf("request %d: status %d, %d bytes", i, resp.StatusCode, len(body))
		}
		if n := wc.writes.Load() - before; n != 1 {
			t.Errorf("request %d: the response took %d writes, want 1", i, n)
		}
	}
}
