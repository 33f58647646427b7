//go:build unix

package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
)

// The hop benchmarks measure one meshd hop (Server + Handler + Pool) with a
// client and an upstream that cost as little as they can: each is a loop
// over raw HTTP/1.1 bytes that allocates nothing per request, so allocs/op
// is the hop's own, and so is most of cpu-ns/op and syscalls/op (the
// client's and the upstream's share of those is fixed: one write and about
// two reads each per request).
//
//	go test -run '^$' -bench 'Hop' -benchmem ./proxy/

// hopResponse is the upstream's answer: what bench/origin sends for
// /nostore/1k.
var hopResponse = func() []byte {
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Type: application/octet-stream\r\n" +
		"Etag: \"1k\"\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 1024\r\n\r\n")
	b.Write(make([]byte, 1024))
	return b.Bytes()
}()

// hopRequest is what h2load sends, as the client of bench/edge-tls.sh.
var hopRequest = []byte("GET /nostore/1k HTTP/1.1\r\nHost: web.localhost\r\nUser-Agent: h2load nghttp2/1.52.0\r\nAccept: */*\r\n\r\n")

// hopUpstream serves hopResponse to every request head on ln.
func hopUpstream(tb testing.TB, ln net.Listener) {
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReaderSize(c, 4<<10)
				for {
					if err := skipHead(br); err != nil {
						return
					}
					if _, err := c.Write(hopResponse); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// skipHead reads up to and including the empty line that ends a head.
func skipHead(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			return nil
		}
	}
}

// readHopResponse reads one response with a Content-Length body.
func readHopResponse(br *bufio.Reader) (status int, n int64, err error) {
	cl := int64(-1)
	for first := true; ; first = false {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, 0, err
		}
		if first {
			if len(line) < 12 {
				return 0, 0, io.ErrUnexpectedEOF
			}
			status, _ = strconv.Atoi(string(line[9:12]))
			continue
		}
		if len(line) <= 2 {
			break
		}
		if len(line) > 16 && bytes.EqualFold(line[:15], []byte("Content-Length:")) {
			cl, _ = strconv.ParseInt(string(bytes.TrimSpace(line[15:])), 10, 64)
		}
	}
	if cl < 0 {
		return status, 0, io.ErrUnexpectedEOF
	}
	d, err := br.Discard(int(cl))
	return status, int64(d), err
}

// syscallCounts returns this process's read and write system calls so far
// (/proc/self/io), or zeros where that file cannot be read.
func syscallCounts() (r, w int64) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, 0
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(": "))
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(string(v), 10, 64)
		switch string(k) {
		case "syscr":
			r = n
		case "syscw":
			w = n
		}
	}
	return r, w
}

// benchHop runs b.N requests from benchClients kept-alive connections
// through a hop in front of a raw upstream. tlsIn and tlsOut choose TLS on
// the client's and the upstream's side.
func benchHop(b *testing.B, tlsIn, tlsOut bool) {
	serverCfg, roots := selfSigned(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	up := &Upstream{Key: ln.Addr().String(), Addr: ln.Addr().String(), Name: "raw", HTTP1: true}
	if tlsOut {
		ln = tls.NewListener(ln, &tls.Config{GetCertificate: serverCfg.GetCertificate, NextProtos: []string{"http/1.1"}})
		up.TLS = &tls.Config{RootCAs: roots, ServerName: "localhost"}
	}
	hopUpstream(b, ln)

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	// No admission control: the benchmark measures the path, not the limiter.
	pool := &Pool{HTTP2: true, ConcurrencyLimit: -1, MaxDialsPerUpstream: -1}
	b.Cleanup(pool.CloseIdle)
	h := &Handler{Route: fixedRoute(up), Pool: pool, Via: "bench", Logger: logger, SignalRetry: true}
	s := &Server{Handler: h, Logger: logger}
	if tlsIn {
		s.TLS = serverCfg
	}
	addr := startWith(b, s).BoundAddr()

	dial := func() (net.Conn, error) {
		if tlsIn {
			return tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
		}
		return net.Dial("tcp", addr)
	}
	conns := make(chan net.Conn, benchClients)
	for range benchClients {
		c, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		conns <- c
	}
	type client struct {
		c  net.Conn
		br *bufio.Reader
	}
	exchange := func(cl *client) error {
		if _, err := cl.c.Write(hopRequest); err != nil {
			return err
		}
		status, n, err := readHopResponse(cl.br)
		if err == nil && (status != 200 || n != 1024) {
			b.Errorf("status %d, %d bytes", status, n)
		}
		return err
	}
	// Warm up every connection (and the hop's upstream connections).
	var wg sync.WaitGroup
	clients := make(chan *client, benchClients)
	for range benchClients {
		cl := &client{c: <-conns}
		cl.br = bufio.NewReaderSize(cl.c, 4<<10)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if err := exchange(cl); err != nil {
					b.Error(err)
					return
				}
			}
			clients <- cl
		}()
	}
	wg.Wait()
	if b.Failed() {
		return
	}

	b.SetParallelism((benchClients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ReportAllocs()
	r0, w0 := syscallCounts()
	cpu0 := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		cl := <-clients
		defer func() { clients <- cl }()
		for pb.Next() {
			if err := exchange(cl); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	r1, w1 := syscallCounts()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(r1-r0)/float64(b.N), "reads/op")
	b.ReportMetric(float64(w1-w0)/float64(b.N), "writes/op")
}

// BenchmarkHopTLS is a gateway's hop: TLS in, TLS out.
func BenchmarkHopTLS(b *testing.B) { benchHop(b, true, true) }

// BenchmarkHopTLSPlain is a sidecar's inbound hop: TLS in, plain out.
func BenchmarkHopTLSPlain(b *testing.B) { benchHop(b, true, false) }

// BenchmarkHopPlain is a sidecar's outbound hop: plain in, plain out.
func BenchmarkHopPlain(b *testing.B) { benchHop(b, false, false) }
