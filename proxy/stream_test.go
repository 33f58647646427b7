package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// h2cUpstream starts a server that speaks HTTP/2 without TLS (prior
// knowledge, as gRPC servers do) and returns its Upstream with H2C set.
func h2cUpstream(t *testing.T, h http.Handler) *Upstream {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p
	srv.Start()
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	return &Upstream{Key: "h2c|" + addr, Addr: addr, Name: "app", H2C: true}
}

// echoLines answers each line of the request body with "echo: line" at
// once, flushed, and ends with the trailers a gRPC server sends; it
// requires HTTP/2 and TE: trailers, as gRPC does.
func echoLines(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 || r.Header.Get("Te") != "trailers" {
			http.Error(w, fmt.Sprintf("want HTTP/2 with TE: trailers, got %s TE %q", r.Proto, r.Header.Get("Te")), http.StatusHTTPVersionNotSupported)
			return
		}
		w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		sc := bufio.NewScanner(r.Body)
		n := 0
		for sc.Scan() {
			n++
			fmt.Fprintf(w, "echo: %s\n", sc.Text())
			w.(http.Flusher).Flush()
		}
		w.Header().Set("Grpc-Status", "0")
		w.Header().Set("Grpc-Message", fmt.Sprintf("%d lines", n))
	})
}

// TestFullDuplexOverH1: a client sends a request body line by line over
// HTTP/1.1 through meshd's HTTP/1.1 server and handler to an h2c
// upstream, and sends each line only after it read the answer to the one
// before, as a gRPC bidirectional stream does: the response streams while
// the request body is still arriving, and the trailers arrive at the end.
// Before, the server held the body's lock while a read waited for the
// client, and the response header waited for that lock: nothing moved.
func TestFullDuplexOverH1(t *testing.T) {
	up := h2cUpstream(t, echoLines(t))
	addr := startProxy(t, &Handler{Route: fixedRoute(up)})
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "http://"+addr+"/echo", pr)
	req.Header.Set("Te", "trailers")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := tr.RoundTrip(req)
		done <- result{resp, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("no response header while the request body is open")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	resp := res.resp
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s %s", resp.Status, b)
	}
	br := bufio.NewReader(resp.Body)
	const n = 200
	for i := range n {
		msg := fmt.Sprintf("message %d", i)
		if _, err := io.WriteString(pw, msg+"\n"); err != nil {
			t.Fatal(err)
		}
		lineCh := make(chan string, 1)
		go func() {
			line, _ := br.ReadString('\n')
			lineCh <- line
		}()
		select {
		case line := <-lineCh:
			if want := "echo: " + msg + "\n"; line != want {
				t.Fatalf("answer %d: %q, want %q", i, line, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer to message %d while the request body is open", i)
		}
	}
	pw.Close()
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Fatalf("after the last answer: %q", rest)
	}
	if got := resp.Trailer.Get("Grpc-Status"); got != "0" || resp.Trailer.Get("Grpc-Message") != fmt.Sprintf("%d lines", n) {
		t.Fatalf("trailers %v", resp.Trailer)
	}
}

// TestTrailersOnlyH2C: an h2c upstream's answer with no body and its
// status in the header (gRPC's trailers-only response) reaches an
// HTTP/1.1 client with the header intact.
func TestTrailersOnlyH2C(t *testing.T) {
	up := h2cUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "5")
		w.Header().Set("Grpc-Message", "not found")
		w.WriteHeader(http.StatusOK)
	}))
	addr := startProxy(t, &Handler{Route: fixedRoute(up)})
	resp, err := http.Post("http://"+addr+"/x", "application/grpc", strings.NewReader("\x00\x00\x00\x00\x00"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "5" || resp.Header.Get("Grpc-Message") != "not found" || len(b) != 0 {
		t.Fatalf("%s %v %q", resp.Status, resp.Header, b)
	}
}

// TestH2CListener: a plain listener with H2C serves HTTP/2 with prior
// knowledge (a gRPC client's plain text) and HTTP/1.1 on the same port:
// a bidirectional exchange with trailers over h2c to an h2c upstream, a
// preface that arrives in pieces, and HTTP/1.1 requests whose methods
// begin like the preface ("P").
func TestH2CListener(t *testing.T) {
	up := h2cUpstream(t, echoLines(t))
	h1up := h2cUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s", r.Method, b)
	}))
	route := func(r *http.Request) ([]*Upstream, error) {
		if r.URL.Path == "/echo" {
			return []*Upstream{up}, nil
		}
		return []*Upstream{h1up}, nil
	}
	h := &Handler{Route: route, Pool: &Pool{}, Via: "test-hop", Logger: testLogger()}
	t.Cleanup(h.Pool.CloseIdle)
	addr := startWith(t, &Server{Handler: h, H2C: true}).BoundAddr()

	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "http://"+addr+"/echo", pr)
	req.Header.Set("Te", "trailers")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("%s %s", resp.Proto, resp.Status)
	}
	br := bufio.NewReader(resp.Body)
	for i := range 50 {
		fmt.Fprintf(pw, "m%d\n", i)
		if line, err := br.ReadString('\n'); err != nil || line != fmt.Sprintf("echo: m%d\n", i) {
			t.Fatalf("answer %d: %q %v", i, line, err)
		}
	}
	pw.Close()
	io.Copy(io.Discard, br)
	resp.Body.Close()
	if resp.Trailer.Get("Grpc-Status") != "0" || resp.Trailer.Get("Grpc-Message") != "50 lines" {
		t.Fatalf("trailers %v", resp.Trailer)
	}

	// The preface in two pieces, then a request: the server waits for
	// the rest before it decides.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, h2Preface[:5])
	time.Sleep(50 * time.Millisecond)
	io.WriteString(c, h2Preface[5:])
	io.WriteString(c, "\x00\x00\x00\x04\x00\x00\x00\x00\x00") // an empty SETTINGS frame
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var frame [9]byte
	if _, err := io.ReadFull(c, frame[:]); err != nil || frame[3] != 0x4 {
		t.Fatalf("after a preface in pieces: frame %x, %v (want the server's SETTINGS)", frame, err)
	}

	// HTTP/1.1 on the same listener, a method starting like the preface.
	for _, m := range []string{"POST", "PUT", "PATCH"} {
		req, _ := http.NewRequest(m, "http://"+addr+"/", strings.NewReader("body"))
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 1 || string(b) != m+" body" {
			t.Fatalf("%s over HTTP/1.1: %s %q", m, resp.Proto, b)
		}
	}
}

// TestMinBodyRateSpareAnsweredStream: on a public listener the minimum
// request body rate cuts a client that trickles a body nobody answered
// yet (TestMinBodyRate), but not one direction of a stream the upstream
// already answers: a bidirectional exchange whose client pauses for
// several rate windows between messages, as a gRPC client does while it
// has nothing to send, keeps going, over HTTP/1.1 and HTTP/2.
func TestMinBodyRateSpareAnsweredStream(t *testing.T) {
	const window = 200 * time.Millisecond
	up := h2cUpstream(t, echoLines(t))
	h := &Handler{Route: fixedRoute(up), Pool: &Pool{}, Via: "edge", Public: true, Logger: testLogger()}
	t.Cleanup(h.Pool.CloseIdle)
	cfg, roots := selfSigned(t)
	plain := startWith(t, &Server{Handler: h, Public: true, MinBodyRate: 1000, BodyRateWindow: window}).BoundAddr()
	tlsAddr := startWith(t, &Server{Handler: h, TLS: cfg, Public: true, MinBodyRate: 1000, BodyRateWindow: window}).BoundAddr()
	for _, c := range []struct {
		name   string
		url    string
		client *http.Client
		major  int
	}{
		{"HTTP/1.1", "http://" + plain + "/echo", &http.Client{}, 1},
		{"HTTP/2", "https://" + tlsAddr + "/echo", tlsClient(t, roots, true), 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			defer pw.Close()
			req, _ := http.NewRequest("POST", c.url, pr)
			req.Header.Set("Te", "trailers")
			resp, err := c.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.ProtoMajor != c.major {
				t.Fatalf("%s %s", resp.Proto, resp.Status)
			}
			br := bufio.NewReader(resp.Body)
			for i := range 3 {
				if i > 0 {
					time.Sleep(3 * window) // nothing to send for a while
				}
				fmt.Fprintf(pw, "m%d\n", i)
				if line, err := br.ReadString('\n'); err != nil || line != fmt.Sprintf("echo: m%d\n", i) {
					t.Fatalf("answer %d after a pause of %v: %q %v", i, 3*window, line, err)
				}
			}
			pw.Close()
			io.Copy(io.Discard, br)
			if resp.Trailer.Get("Grpc-Status") != "0" {
				t.Fatalf("trailers %v", resp.Trailer)
			}
		})
	}
}
