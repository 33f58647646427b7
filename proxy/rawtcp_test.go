package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func TestRawTCPOnlyForTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if newRawTCP(a) != nil {
		t.Fatal("rawTCP over a net.Pipe")
	}
	c, _ := tcpPair(t)
	if newRawTCP(c) == nil {
		t.Fatal("no rawTCP over TCP")
	}
}

// TestRawTCPWritevLarge: a writev far larger than the socket buffers, to
// a reader that takes it slowly, arrives whole and in order: partial
// writes and waits for writability resume where they stopped.
func TestRawTCPWritevLarge(t *testing.T) {
	a, b := tcpPair(t)
	r := newRawTCP(a)
	head := bytes.Repeat([]byte("h"), 1000)
	body := make([]byte, 8<<20)
	for i := range body {
		body[i] = byte(i * 7 / 13)
	}
	got := make(chan []byte, 1)
	go func() {
		var buf bytes.Buffer
		chunk := make([]byte, 64<<10)
		for buf.Len() < len(head)+len(body) {
			n, err := b.Read(chunk)
			buf.Write(chunk[:n])
			if err != nil {
				break
			}
			if buf.Len() < 1<<20 {
				time.Sleep(time.Millisecond) // slow at first: the writer must wait
			}
		}
		got <- buf.Bytes()
	}()
	n, err := r.writev(head, body)
	if err != nil || n != len(head)+len(body) {
		t.Fatalf("writev: %d, %v", n, err)
	}
	data := <-got
	if !bytes.Equal(data[:len(head)], head) || !bytes.Equal(data[len(head):], body) {
		t.Fatal("bytes differ from what was written")
	}
	// One buffer, and an empty first one, go out as well.
	for _, bufs := range [][2][]byte{{[]byte("one"), nil}, {nil, []byte("two")}} {
		if _, err := r.writev(bufs[0], bufs[1]); err != nil {
			t.Fatal(err)
		}
	}
	rest := make([]byte, 6)
	if _, err := io.ReadFull(b, rest); err != nil || string(rest) != "onetwo" {
		t.Fatalf("read %q, %v", rest, err)
	}
}

// TestRawTCPReadErrors: deadlines end a waiting read with the net.Conn's
// error, a closed peer reads as EOF, a reset peer fails the write.
func TestRawTCPReadErrors(t *testing.T) {
	a, b := tcpPair(t)
	r := newRawTCP(a)
	buf := make([]byte, 16)
	_ = a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	n, err := r.Read(buf)
	var ne net.Error
	if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past deadline: %d, %v", n, err)
	}
	_ = a.SetReadDeadline(time.Time{})
	if _, err := b.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if n, err := r.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty read: %d, %v", n, err)
	}
	b.Close()
	if n, err := r.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read after peer closed: %d, %v", n, err)
	}
	// The peer is gone: writes fail (EPIPE or ECONNRESET) within a few tries.
	var werr error
	for i := 0; i < 100 && werr == nil; i++ {
		_, werr = r.Write(bytes.Repeat([]byte("x"), 64<<10))
		time.Sleep(time.Millisecond)
	}
	var oe *net.OpError
	if !errors.As(werr, &oe) || oe.Op != "write" {
		t.Fatalf("write to a closed peer: %v", werr)
	}
	a.Close()
	if _, err := r.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read of a closed connection: %v", err)
	}
}

// TestRawTCPNoAllocs: a write and a read cost no allocation.
func TestRawTCPNoAllocs(t *testing.T) {
	a, b := tcpPair(t)
	ra, rb := newRawTCP(a), newRawTCP(b)
	msg, buf := []byte("ping"), make([]byte, 16)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ra.writev(msg, msg); err != nil {
			t.Fatal(err)
		}
		if n, err := io.ReadFull(rb, buf[:8]); n != 8 || err != nil {
			t.Fatal(n, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per write and read", allocs)
	}
}

// TestRawConnUnderTLS: a TLS connection over rawConn (as the HTTP/1.1
// server's and the fast path's are) carries data both ways, honours read
// deadlines without breaking the connection (watchClient's read-ahead is
// stopped that way), and a Close wakes a blocked read.
func TestRawConnUnderTLS(t *testing.T) {
	a, b := tcpPair(t)
	cfg, roots := selfSigned(t)
	ra, rb := newRawConn(a), newRawConn(b)
	ra.enable()
	rb.enable()
	if !ra.on || !rb.on {
		t.Fatal("rawConn not enabled over TCP")
	}
	srv := tls.Server(ra, cfg)
	cli := tls.Client(rb, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("0123456789"), 5000) // several records
	go func() { _, err := cli.Write(msg); errc <- err }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(srv, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %v, equal %v", err, bytes.Equal(got, msg))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	_ = srv.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var one [1]byte
	_, err := srv.Read(one[:])
	if !errors.Is(err, os.ErrDeadlineExceeded) || !isTimeout(err) {
		t.Fatalf("read past the deadline: %v", err)
	}
	_ = srv.SetReadDeadline(time.Time{})
	go func() { _, err := cli.Write([]byte("x")); errc <- err }()
	if _, err := srv.Read(one[:]); err != nil || one[0] != 'x' {
		t.Fatalf("read after a deadline: %q %v", one[:], err)
	}
	<-errc

	go func() {
		time.Sleep(20 * time.Millisecond)
		srv.Close()
	}()
	if _, err := srv.Read(one[:]); err == nil {
		t.Fatal("read on a closed connection succeeded")
	}
}

// TestRawConnPassThrough: a rawConn not enabled, or over something that
// is not TCP, uses the wrapped connection.
func TestRawConnPassThrough(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	r := newRawConn(a)
	r.enable()
	if r.on {
		t.Fatal("enabled over a net.Pipe")
	}
	go func() { _, _ = b.Write([]byte("hi")) }()
	var buf [2]byte
	if _, err := io.ReadFull(r, buf[:]); err != nil || string(buf[:]) != "hi" {
		t.Fatalf("%q %v", buf[:], err)
	}
}

// TestServerTLSRawIO: an HTTP/1.1 connection over TLS reads and writes
// with raw system calls.
func TestServerTLSRawIO(t *testing.T) {
	cfg, roots := selfSigned(t)
	s := startWith(t, &Server{Handler: http.HandlerFunc(okHandler), TLS: cfg})
	c, err := tls.Dial("tcp", s.BoundAddr(), &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	s.h1.mu.Lock()
	defer s.h1.mu.Unlock()
	n, raw := 0, 0
	for hc := range s.h1.conns {
		n++
		if tc, ok := hc.rwc.(*tls.Conn); ok {
			if rc, ok := tc.NetConn().(*rawConn); ok && rc.on {
				raw++
			}
		}
	}
	if n != 1 || raw != 1 {
		t.Fatalf("%d HTTP/1.1 connections, %d with raw I/O", n, raw)
	}
}
