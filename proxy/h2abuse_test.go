package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Abuser is a raw HTTP/2 client over TLS that writes frames as an
// attacker would, and watches what the server does to its connection.
type h2Abuser struct {
	conn *tls.Conn
	bw   *bufio.Writer
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer

	closed   chan struct{} // closed when the server closed the connection or sent GOAWAY
	goAway   atomic.Value  // http2.ErrCode of a GOAWAY, if one came
	lastID   atomic.Uint32 // the GOAWAY's last stream ID
	statuses sync.Map      // stream ID → :status of its response
}

func dialAbuser(t *testing.T, addr string, roots *x509.CertPool) *h2Abuser {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "example.test", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN %q", p)
	}
	// Every write and read is bounded: the test never hangs on a server
	// that stopped reading.
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	a := &h2Abuser{conn: conn, bw: bufio.NewWriterSize(conn, 64<<10), closed: make(chan struct{})}
	a.fr = http2.NewFramer(a.bw, conn)
	a.enc = hpack.NewEncoder(&a.hbuf)
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(a.bw, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := a.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	if err := a.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	go a.readLoop()
	return a
}

// readLoop reads the server's frames until the connection ends or a GOAWAY
// arrives, acknowledging SETTINGS as a client must.
func (a *h2Abuser) readLoop() {
	defer close(a.closed)
	rfr := http2.NewFramer(io.Discard, a.conn)
	rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	for i := 0; i < 10_000_000; i++ {
		f, err := rfr.ReadFrame()
		if err != nil {
			return
		}
		if mh, ok := f.(*http2.MetaHeadersFrame); ok {
			a.statuses.Store(mh.StreamID, mh.PseudoValue("status"))
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			a.lastID.Store(ga.LastStreamID)
			a.goAway.Store(ga.ErrCode)
			return
		}
	}
}

// headerBlock encodes a GET for path, plus extra fields.
func (a *h2Abuser) headerBlock(path string, extra ...hpack.HeaderField) []byte {
	a.hbuf.Reset()
	for _, f := range append([]hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: "example.test"}, {Name: ":path", Value: path},
	}, extra...) {
		_ = a.enc.WriteField(f)
	}
	return bytes.Clone(a.hbuf.Bytes())
}

// isClosed reports whether the server ended the connection by now.
func (a *h2Abuser) isClosed() bool {
	select {
	case <-a.closed:
		return true
	default:
		return false
	}
}

// waitClosed waits at most d for the server to end the connection.
func (a *h2Abuser) waitClosed(d time.Duration) bool {
	select {
	case <-a.closed:
		return true
	case <-time.After(d):
		return false
	}
}

func (a *h2Abuser) goAwayCode() string {
	if c, ok := a.goAway.Load().(http2.ErrCode); ok {
		return c.String()
	}
	return "none (connection closed)"
}

// startAbuseTarget starts a public TLS listener with a fast path "/" for
// the normal client, and h on "/work".
func startAbuseTarget(t *testing.T, h http.HandlerFunc) (string, *x509.CertPool) {
	cfg, roots := selfSigned(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/", okHandler)
	mux.HandleFunc("/work", h)
	s := startWith(t, &Server{Handler: mux, TLS: cfg, Public: true})
	return s.BoundAddr(), roots
}

// TestHTTP2RapidReset sends up to 5 000 HEADERS+RST_STREAM pairs on one
// connection (CVE-2023-44487). Go's server runs at most
// MaxConcurrentStreams handlers per connection and lets 4× that wait;
// beyond that it sends GOAWAY ENHANCE_YOUR_CALM and closes. Handlers that
// keep working after the reset (a slow upstream connect) pile up and trip
// that limit by themselves; handlers that stop at once (the forwarding
// Handler) never did, and the flood went on for as long as the client
// liked: the guard holds reset streams once the connection's resets
// outpace its completed streams, so the limit trips for them too. Either
// way the server stops reading the flood long before its end, at most
// MaxConcurrentStreams handlers run, and a normal client on another
// connection is served throughout.
func TestHTTP2RapidReset(t *testing.T) {
	tests := []struct {
		name       string
		ignoreStop bool // the handler keeps working after the reset
	}{
		{"handler keeps working", true},
		{"handler stops on reset", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var running, maxRunning, started atomic.Int64
			release := make(chan struct{})
			defer close(release)
			addr, roots := startAbuseTarget(t, func(w http.ResponseWriter, r *http.Request) {
				started.Add(1)
				n := running.Add(1)
				defer running.Add(-1)
				for m := maxRunning.Load(); n > m && !maxRunning.CompareAndSwap(m, n); m = maxRunning.Load() {
				}
				if tt.ignoreStop {
					select {
					case <-release:
					case <-time.After(2 * time.Second):
					}
					return
				}
				select {
				case <-r.Context().Done():
				case <-time.After(2 * time.Second):
				}
			})
			stop := make(chan struct{})
			nt := runNormalTraffic(tlsClient(t, roots, true), "https://"+addr+"/", stop, 20*time.Second)

			a := dialAbuser(t, addr, roots)
			const pairs = 5000
			start := time.Now()
			sent := 0
			for i := 0; i < pairs && !a.isClosed() && time.Since(start) < 10*time.Second; i++ {
				id := uint32(2*i + 1)
				err := a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: a.headerBlock("/work"), EndStream: true, EndHeaders: true})
				if err == nil {
					err = a.fr.WriteRSTStream(id, http2.ErrCodeCancel)
				}
				if err == nil && i%100 == 99 {
					err = a.bw.Flush()
				}
				if err != nil {
					break // the server closed the connection under us
				}
				sent++
			}
			_ = a.bw.Flush()
			if !a.waitClosed(10 * time.Second) {
				t.Fatalf("connection still open 10 s after %d resets", sent)
			}
			last := a.lastID.Load()
			t.Logf("closed after %d HEADERS+RST_STREAM pairs written in %v, GOAWAY %s, last stream %d; %d handlers started",
				sent, time.Since(start), a.goAwayCode(), last, started.Load())
			if a.goAwayCode() != http2.ErrCodeEnhanceYourCalm.String() {
				t.Errorf("GOAWAY %s, want ENHANCE_YOUR_CALM", a.goAwayCode())
			}
			// The server cut the flood off: the last stream it processed
			// is far from the last one sent.
			if last >= 2*pairs-1 {
				t.Errorf("GOAWAY names stream %d as the last processed: the server read the whole flood of %d", last, pairs)
			}
			// Work is bounded by the running handlers plus the 4× queue,
			// not by what the attacker sends.
			if n := started.Load(); n > 5*DefaultMaxConcurrentStreams {
				t.Errorf("%d handlers started for %d reset streams", n, sent)
			}
			if m := maxRunning.Load(); m > DefaultMaxConcurrentStreams {
				t.Errorf("%d handlers ran at once, more than MaxConcurrentStreams %d", m, DefaultMaxConcurrentStreams)
			}
			close(stop)
			nt.check(t)
		})
	}
}

// TestHTTP2ResetsWithCompletedStreams: a client that cancels many streams
// but has as many answered (a browser leaving pages, a gRPC client with
// deadlines) keeps its connection: 1 000 resets, more than the slack of
// 2 × MaxConcurrentStreams, each matched by a completed request.
func TestHTTP2ResetsWithCompletedStreams(t *testing.T) {
	addr, roots := startAbuseTarget(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	a := dialAbuser(t, addr, roots)
	id := uint32(1)
	for batch := 0; batch < 20; batch++ {
		var normal []uint32
		for i := 0; i < 50; i++ {
			if err := a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: a.headerBlock("/"), EndStream: true, EndHeaders: true}); err != nil {
				t.Fatal(err)
			}
			normal = append(normal, id)
			id += 2
			if err := a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: a.headerBlock("/work"), EndStream: true, EndHeaders: true}); err == nil {
				err = a.fr.WriteRSTStream(id, http2.ErrCodeCancel)
			} else {
				t.Fatal(err)
			}
			id += 2
		}
		if err := a.bw.Flush(); err != nil {
			t.Fatalf("batch %d: %v (GOAWAY %s)", batch, err, a.goAwayCode())
		}
		for _, n := range normal {
			waitFor(t, "the response to stream "+strconv.Itoa(int(n)), 5*time.Second, func() bool {
				_, ok := a.statuses.Load(n)
				return ok || a.isClosed()
			})
		}
		if a.isClosed() {
			t.Fatalf("connection closed after %d resets matched by as many answers, GOAWAY %s", batch*50, a.goAwayCode())
		}
	}
}

// TestHTTP2ContinuationFlood opens a header block and sends CONTINUATION
// frames without END_HEADERS, each full of header fields (CVE-2024-27316
// style; Go's CVE-2023-45288). Go's server stops storing fields beyond
// MaxHeaderBytes and closes the connection at the next fragment that
// carries data, so the flood ends after about MaxHeaderBytes of headers.
func TestHTTP2ContinuationFlood(t *testing.T) {
	addr, roots := startAbuseTarget(t, okHandler)
	stop := make(chan struct{})
	nt := runNormalTraffic(tlsClient(t, roots, true), "https://"+addr+"/", stop, 20*time.Second)

	a := dialAbuser(t, addr, roots)
	if err := a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: a.headerBlock("/"), EndHeaders: false}); err != nil {
		t.Fatal(err)
	}
	// Each fragment holds ~15 KiB of never-indexed literal fields, so
	// every byte costs the server decoding work.
	a.hbuf.Reset()
	for j := 0; j < 15; j++ {
		_ = a.enc.WriteField(hpack.HeaderField{Name: "x-flood", Value: strings.Repeat("f", 1000), Sensitive: true})
	}
	frag := bytes.Clone(a.hbuf.Bytes())
	start := time.Now()
	sent := 0
	for i := 0; i < 10_000 && !a.isClosed() && time.Since(start) < 10*time.Second; i++ {
		err := a.fr.WriteContinuation(1, false, frag)
		if err == nil {
			err = a.bw.Flush()
		}
		if err != nil {
			break
		}
		sent++
	}
	if !a.waitClosed(10 * time.Second) {
		t.Fatalf("connection still open 10 s after %d CONTINUATION frames (%d KiB)", sent, sent*len(frag)>>10)
	}
	t.Logf("closed after %d CONTINUATION frames (%d KiB) in %v, GOAWAY %s", sent, sent*len(frag)>>10, time.Since(start), a.goAwayCode())
	// Writes already in flight when the server closed are allowed for;
	// the server must not have read the whole flood.
	if sent >= 1000 {
		t.Errorf("server took %d fragments (%d KiB) of one header block", sent, sent*len(frag)>>10)
	}
	close(stop)
	nt.check(t)
}

// TestHTTP2EmptyContinuationFlood sends CONTINUATION frames without any
// payload: they add no header bytes, so the MaxHeaderBytes bound never
// trips, and Go's server keeps reading them, each at the cost of a frame
// header parse (what a PING costs). What ends the connection is the idle
// timer: a header block that never ends opens no stream, so the
// connection counts as idle and is closed after IdleTimeout (default
// 120 s; 500 ms here) while the flood goes on.
func TestHTTP2EmptyContinuationFlood(t *testing.T) {
	cfg, roots := selfSigned(t)
	s := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), TLS: cfg, Public: true, IdleTimeout: 500 * time.Millisecond})
	addr := s.BoundAddr()
	stop := make(chan struct{})
	nt := runNormalTraffic(tlsClient(t, roots, true), "https://"+addr+"/", stop, 20*time.Second)
	a := dialAbuser(t, addr, roots)
	if err := a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: a.headerBlock("/"), EndHeaders: false}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sent := 0
	for i := 0; i < 1_000_000 && !a.isClosed() && time.Since(start) < 5*time.Second; i++ {
		if err := a.fr.WriteContinuation(1, false, nil); err != nil {
			break
		}
		if i%1000 == 999 {
			if err := a.bw.Flush(); err != nil {
				break
			}
			time.Sleep(5 * time.Millisecond) // pace the flood: it must outlast IdleTimeout
		}
		sent++
	}
	_ = a.bw.Flush()
	if !a.waitClosed(5 * time.Second) {
		t.Fatalf("connection open %v after the flood began (%d empty frames), IdleTimeout is 500ms", time.Since(start), sent)
	}
	t.Logf("closed %v after the flood began, %d empty CONTINUATION frames, GOAWAY %s", time.Since(start), sent, a.goAwayCode())
	close(stop)
	nt.check(t)
}

// TestHTTP2HostMismatch: on a public listener, an HTTP/2 request whose
// Host field names another host than :authority gets 400 (RFC 9113
// §8.3.1); with matching values it is served.
func TestHTTP2HostMismatch(t *testing.T) {
	addr, roots := startAbuseTarget(t, okHandler)
	a := dialAbuser(t, addr, roots)
	tests := []struct {
		host string
		want string
	}{{"other.test", "400"}, {"example.test", "200"}, {"EXAMPLE.test", "200"}, {"example.test:8443", "400"}}
	for i, tt := range tests {
		block := a.headerBlock("/", hpack.HeaderField{Name: "host", Value: tt.host})
		if err := a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block, EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	for i, tt := range tests {
		id := uint32(2*i + 1)
		var got string
		waitFor(t, "the response to stream "+strconv.Itoa(int(id)), 5*time.Second, func() bool {
			v, ok := a.statuses.Load(id)
			if ok {
				got = v.(string)
			}
			return ok || a.isClosed()
		})
		if got != tt.want {
			t.Errorf(":authority example.test, Host %s: status %q, want %s", tt.host, got, tt.want)
		}
	}
}

// writeHeaderBlock sends block on stream id as HEADERS and CONTINUATION
// frames of at most 16 KiB (the public listener's SETTINGS_MAX_FRAME_SIZE).
func (a *h2Abuser) writeHeaderBlock(id uint32, block []byte) error {
	const max = 16 << 10
	first := block[:min(len(block), max)]
	rest := block[len(first):]
	err := a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: true, EndHeaders: len(rest) == 0})
	for err == nil && len(rest) > 0 {
		frag := rest[:min(len(rest), max)]
		rest = rest[len(frag):]
		err = a.fr.WriteContinuation(id, len(rest) == 0, frag)
	}
	if err == nil {
		err = a.bw.Flush()
	}
	return err
}

// TestHTTP2LargeHeader: a request whose header section is larger than
// MaxHeaderBytes (64 KiB) gets 431, as over HTTP/1.1, and the connection
// stays usable for the next stream; this holds for a client that ignores
// the advertised SETTINGS_MAX_HEADER_LIST_SIZE, with one large field or
// many, and for Go's own client.
func TestHTTP2LargeHeader(t *testing.T) {
	addr, roots := startAbuseTarget(t, okHandler)
	tests := []struct {
		name   string
		fields []hpack.HeaderField
	}{
		{"one 100 KB field", []hpack.HeaderField{{Name: "x-big", Value: strings.Repeat("b", 100<<10)}}},
		{"a hundred 1 KB fields", func() []hpack.HeaderField {
			var f []hpack.HeaderField
			for i := 0; i < 100; i++ {
				f = append(f, hpack.HeaderField{Name: "x-f" + strconv.Itoa(i), Value: strings.Repeat("f", 1<<10)})
			}
			return f
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := dialAbuser(t, addr, roots)
			if err := a.writeHeaderBlock(1, a.headerBlock("/", tt.fields...)); err != nil {
				t.Fatal(err)
			}
			if err := a.writeHeaderBlock(3, a.headerBlock("/")); err != nil {
				t.Fatal(err)
			}
			for _, want := range []struct {
				id     uint32
				status string
			}{{1, "431"}, {3, "200"}} {
				var got string
				waitFor(t, "the response to stream "+strconv.Itoa(int(want.id)), 5*time.Second, func() bool {
					v, ok := a.statuses.Load(want.id)
					if ok {
						got = v.(string)
					}
					return ok || a.isClosed()
				})
				if got != want.status {
					t.Errorf("stream %d: status %q, want %s (connection closed: %v, GOAWAY %s)",
						want.id, got, want.status, a.isClosed(), a.goAwayCode())
				}
			}
		})
	}
	t.Run("Go client", func(t *testing.T) {
		c := tlsClient(t, roots, true)
		req, _ := http.NewRequest("GET", "https://"+addr+"/", nil)
		req.Header.Set("X-Big", strings.Repeat("b", 100<<10))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("100 KB header: %v, want a 431 response", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || resp.ProtoMajor != 2 {
			t.Errorf("100 KB header: %s %s, want HTTP/2 431", resp.Proto, resp.Status)
		}
		if code, err := getStatus(c, "https://"+addr+"/"); err != nil || code != http.StatusOK {
			t.Errorf("next request: %d %v", code, err)
		}
	})
	t.Run("just under the limit", func(t *testing.T) {
		c := tlsClient(t, roots, true)
		req, _ := http.NewRequest("GET", "https://"+addr+"/", nil)
		req.Header.Set("X-Big", strings.Repeat("b", DefaultMaxHeaderBytes-1024))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%d-byte field: %s, want 200", DefaultMaxHeaderBytes-1024, resp.Status)
		}
	})
}
