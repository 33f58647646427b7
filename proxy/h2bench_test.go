//go:build unix

package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

var benchBody100K = make([]byte, 100<<10)

// hitWith answers as the edge's cache does on a hit: the stored fields,
// then the body in one write.
func hitWith(w http.ResponseWriter, body []byte) {
	h := w.Header()
	h["Age"] = []string{"64"}
	h["Cache-Control"] = []string{"public, max-age=3600"}
	h["Cache-Status"] = []string{"meshd; hit"}
	h["Content-Type"] = []string{"application/octet-stream"}
	h["Date"] = []string{"Thu, 03 Dec 2026 13:26:07 GMT"}
	h["Etag"] = []string{`"5c55fd2d8fd2c2f4"`}
	h["Last-Modified"] = []string{"Mon, 01 Jan 2024 00:00:00 GMT"}
	h["Via"] = []string{"1.1 web-1", "1.1 gw", "1.1 edge"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	_, _ = w.Write(body)
}

// h2Client is a bare HTTP/2 client on one connection: GETs one after the
// other, frames read without decoding the answer's header block, so that
// nearly all allocations and system calls of a request are the server's.
type h2Client struct {
	tc      *tls.Conn
	bw      *bufio.Writer
	fr      *http2.Framer
	block   []byte
	id      uint32
	unacked uint32 // DATA bytes received and not yet returned to the connection window
}

func dialH2(tb testing.TB, addr string) *h2Client {
	tb.Helper()
	tc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, ServerName: "bench.test"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = tc.Close() })
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		tb.Fatalf("ALPN %q, want h2", p)
	}
	c := &h2Client{tc: tc, bw: bufio.NewWriter(tc), id: 1}
	c.fr = http2.NewFramer(c.bw, bufio.NewReader(tc))
	c.fr.SetReuseFrames()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "bench.test"}, {":path", "/1k"},
		{"user-agent", "h2load nghttp2/1.52.0"}, {"accept", "*/*"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	c.block = hb.Bytes()
	_, _ = c.bw.WriteString(http2.ClientPreface)
	// Windows as h2load's: no stream waits for a WINDOW_UPDATE.
	_ = c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<30 - 1})
	_ = c.fr.WriteWindowUpdate(0, 1<<30-1-65535)
	if err := c.bw.Flush(); err != nil {
		tb.Fatal(err)
	}
	return c
}

// get sends one GET and reads until its stream ends; it returns the body
// length and the status (0: not decoded, the header block is skipped).
func (c *h2Client) get() (int, error) {
	id := c.id
	c.id += 2
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block, EndStream: true, EndHeaders: true}); err != nil {
		return 0, err
	}
	if err := c.bw.Flush(); err != nil {
		return 0, err
	}
	n := 0
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return n, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
				_ = c.bw.Flush()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = c.fr.WritePing(true, f.Data)
				_ = c.bw.Flush()
			}
		case *http2.GoAwayFrame:
			return n, http2.ConnectionError(f.ErrCode)
		case *http2.RSTStreamFrame:
			return n, http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode}
		case *http2.HeadersFrame:
			if f.StreamID == id && f.StreamEnded() {
				return n, nil
			}
		case *http2.DataFrame:
			if f.StreamID != id {
				continue
			}
			n += len(f.Data())
			c.unacked += uint32(len(f.Data()))
			if c.unacked >= 1<<29 {
				// Only the connection window needs returning: each
				// stream is new and has its own.
				_ = c.fr.WriteWindowUpdate(0, c.unacked)
				_ = c.bw.Flush()
				c.unacked = 0
			}
			if f.StreamEnded() {
				return n, nil
			}
		}
	}
}

// writeSyscalls returns the write system calls of this process so far
// (Linux: /proc/self/io), or -1.
func writeSyscalls() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "syscw: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return -1
}

// BenchmarkServerH2Hit: what a Public TLS Server spends on an HTTP/2 GET
// answered in full by its handler (a cache hit of 1 KiB), from one client
// connection at a time on each of benchClients connections. allocs/op and
// writes/op are nearly all the server's: the client decodes nothing and
// allocates next to nothing (writes/op counts its one write per request too).
func BenchmarkServerH2Hit(b *testing.B) { benchServerH2(b, benchBody) }

// BenchmarkServerH2Hit100K is BenchmarkServerH2Hit with a 100 KiB body.
func BenchmarkServerH2Hit100K(b *testing.B) { benchServerH2(b, benchBody100K) }

func benchServerH2(b *testing.B, body []byte) {
	cfg, _ := selfSigned(b)
	h := func(w http.ResponseWriter, _ *http.Request) { hitWith(w, body) }
	s := startWith(b, &Server{Handler: http.HandlerFunc(h), TLS: cfg, Public: true})
	const conns = 8
	clients := make(chan *h2Client, conns)
	for range conns {
		c := dialH2(b, s.BoundAddr())
		for range 4 {
			if _, err := c.get(); err != nil {
				b.Fatal(err)
			}
		}
		clients <- c
	}
	b.ReportAllocs()
	w0 := writeSyscalls()
	cpu0 := cpuTime()
	b.ResetTimer()
	var mu sync.Mutex
	var failed error
	b.SetParallelism(conns)
	b.RunParallel(func(pb *testing.PB) {
		c := <-clients
		defer func() { clients <- c }()
		for pb.Next() {
			n, err := c.get()
			if err == nil && n != len(body) {
				err = strconv.ErrRange
			}
			if err != nil {
				mu.Lock()
				failed = err
				mu.Unlock()
				return
			}
		}
	})
	b.StopTimer()
	if failed != nil {
		b.Fatal(failed)
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	if w0 >= 0 {
		b.ReportMetric(float64(writeSyscalls()-w0)/float64(b.N), "writes/op")
	}
}
