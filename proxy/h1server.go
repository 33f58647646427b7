package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// meshd's HTTP/1.1 server.
//
// Go's net/http server spends more CPU on an HTTP/1.1 exchange than a cache
// hit costs: per request it starts a goroutine that reads ahead to notice a
// client going away, sets three read deadlines, sorts the response header
// and writes through two buffers. On this class of machine a bare net/http
// server costs 15–18 µs of CPU per 1 KiB response against 8 µs for a loop
// that reads a request and writes a response. h1srv is that loop, with the
// parsing rules of h1parse.go: one goroutine per connection reads a
// request, runs the handler, writes the response header and a small body
// in one system call (a large body in one writev), and reads the next.
//
// A client going away is noticed when a write fails; a handler that waits
// for an upstream before writing asks for more with watchClient, which
// reads ahead on the connection while it waits longer than watchDelay (the
// forwarding Handler does, cache hits never do).
//
// HTTP/2 connections stay on net/http's server (see Server.Start).

// h1srv serves HTTP/1.x on the connections a Server hands it.
type h1srv struct {
	handler        http.Handler
	headerTimeout  time.Duration
	idleTimeout    time.Duration
	sendTimeout    time.Duration // 0: none
	maxHeaderBytes int
	logger         *slog.Logger
	addr           string

	closing atomic.Bool
	mu      sync.Mutex
	conns   map[*h1conn]struct{}
}

// Connection states, for Shutdown.
const (
	h1Idle   int32 = iota // waiting for a request
	h1Active              // reading or serving a request
)

// h1conn is one client connection.
type h1conn struct {
	srv    *h1srv
	rwc    net.Conn    // as accepted: Close goes here
	wc     net.Conn    // where writes go: the TCP connection under rwc when there is one, for writev
	raw    *rawTCP     // reads and writes of wc when it is plain TCP (rawtcp.go); nil over TLS
	hdr    http.Header // the response header map, reused (serveRequest)
	tls    *tls.ConnectionState
	remote string
	ctx    context.Context // carries the connection, for watchClient
	br     *bufio.Reader
	lr     lineReader
	wbuf   []byte
	hold   []byte // a body held back to frame it with Content-Length
	state  atomic.Int32

	// The read-ahead of watchClient: it reads into bgByte while a handler
	// waits; a byte read is the start of the next request. bgArmed: asked
	// for, starting when bgTimer fires (see watchDelay).
	bgArmed bool
	bgTimer *time.Timer
	bgOn    bool
	bgDone  chan struct{}
	bgByte  [1]byte
	bgHave  bool
	bgErr   error
	cur     *h1resp // the request being served
	curLock sync.Mutex
	werr    error // the first write error; the connection is done
	served  bool  // serveOne ran at least once: later requests are keep-alive

	// Deadlines (see rearm): rdArmed says a read deadline is set; idleAt
	// and sendAt are when the idle and the send deadline now set were set
	// (zero: the deadline set is another one, or none).
	rdArmed bool
	idleAt  time.Time
	sendAt  time.Time
}

type h1ConnKey struct{}

// serve runs the connection until it ends.
func (s *h1srv) serve(rwc net.Conn, tlsState *tls.ConnectionState) {
	c := &h1conn{srv: s, rwc: rwc, wc: rwc, tls: tlsState, remote: rwc.RemoteAddr().String()}
	if lc, ok := rwc.(*limitConn); ok {
		c.wc = lc.Conn
	}
	c.raw = newRawTCP(c.wc)
	c.ctx = context.WithValue(context.Background(), h1ConnKey{}, c)
	c.br = bufio.NewReaderSize(connReader{c}, h1BufSize)
	c.lr.br = c.br
	c.wbuf = make([]byte, 0, h1BufSize)
	c.hold = make([]byte, 0, maxLazyBody)
	c.bgDone = make(chan struct{}, 1)
	if !s.track(c, true) {
		_ = rwc.Close()
		return
	}
	defer func() {
		s.track(c, false)
		_ = rwc.Close()
	}()
	for {
		if !c.serveOne() {
			return
		}
	}
}

// track adds or removes c; it refuses to add once the server is closing.
func (s *h1srv) track(c *h1conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.conns, c)
		return true
	}
	if s.closing.Load() {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*h1conn]struct{})
	}
	s.conns[c] = struct{}{}
	return true
}

// connReader is what the connection's bufio.Reader reads from: the byte
// watchClient read ahead, then the connection.
type connReader struct{ c *h1conn }

func (r connReader) Read(p []byte) (int, error) {
	c := r.c
	if c.bgHave && len(p) > 0 {
		p[0] = c.bgByte[0]
		c.bgHave = false
		return 1, nil
	}
	if c.bgErr != nil {
		return 0, c.bgErr
	}
	if c.raw != nil {
		return c.raw.Read(p)
	}
	return c.rwc.Read(p)
}

// write sends p to the client.
func (c *h1conn) write(p []byte) (int, error) {
	if c.raw != nil {
		return c.raw.Write(p)
	}
	return c.wc.Write(p)
}

// writev sends a and b to the client, in one system call when it can.
func (c *h1conn) writev(a, b []byte) error {
	if c.raw != nil {
		_, err := c.raw.writev(a, b)
		return err
	}
	bufs := net.Buffers{a, b}
	_, err := bufs.WriteTo(c.wc)
	return err
}

// serveOne reads and serves one request; false ends the connection.
func (c *h1conn) serveOne() bool {
	s := c.srv
	// The first request's header timeout runs from when the connection
	// was handed over (at accept, or after the TLS handshake), not from
	// its first byte: a connection that never sends anything is not a
	// keep-alive connection between requests and gets no idle timeout.
	first := !c.served
	c.served = true
	if c.br.Buffered() == 0 {
		c.state.Store(h1Idle)
		if s.closing.Load() {
			return false
		}
		if first && s.headerTimeout > 0 {
			_ = c.rwc.SetReadDeadline(time.Now().Add(s.headerTimeout))
			c.rdArmed, c.idleAt = true, time.Time{}
		} else if t := s.idleTimeout; t > 0 && rearm(&c.idleAt, t) {
			_ = c.rwc.SetReadDeadline(c.idleAt.Add(t))
			c.rdArmed = true
		}
		if _, err := c.br.Peek(1); err != nil {
			return false
		}
	}
	c.state.Store(h1Active)
	// A head that arrived whole is parsed without another read, under the
	// idle deadline already set: the header timeout is for a head that
	// comes in pieces, or when no deadline is set at all. The first
	// request's head is already under its header deadline.
	headerSet := s.headerTimeout > 0 && (first || !c.rdArmed || !headBuffered(c.br))
	if headerSet && !first {
		_ = c.rwc.SetReadDeadline(time.Now().Add(s.headerTimeout))
		c.rdArmed, c.idleAt = true, time.Time{}
	}
	c.lr.budget = s.maxHeaderBytes
	var r http.Request
	err := parseRequestHead(&c.lr, &r)
	// The idle deadline may stay for a request without a body: nothing
	// reads the connection before the next request unless watchClient
	// starts, and it clears the deadline first.
	if err != nil || headerSet || r.ContentLength != 0 || r.TransferEncoding != nil {
		c.clearRead()
	}
	if err != nil {
		var re *requestError
		if errors.As(err, &re) {
			s.logger.Debug("proxy: bad request", "addr", s.addr, "remote", c.remote, "status", re.code, "err", re.msg)
			c.writeRefusal(re)
		}
		return false
	}
	return c.serveRequest(&r)
}

// writeRefusal answers a request the server refuses and ends the
// connection: what follows on it cannot be trusted to be a request.
func (c *h1conn) writeRefusal(re *requestError) {
	body := strconv.Itoa(re.code) + " " + http.StatusText(re.code) + ": " + re.msg + "\n"
	b := c.wbuf[:0]
	b = append(b, "HTTP/1.1 "...)
	b = appendStatus(b, re.code)
	b = append(b, "Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	_ = c.rwc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.sendAt = time.Time{}
	_, _ = c.write(b)
	c.wbuf = b[:0]
}

// serveRequest runs the handler for the parsed request r0 (not kept: the
// handler gets a copy with the request's context) and finishes the exchange.
func (c *h1conn) serveRequest(r0 *http.Request) (keep bool) {
	ctx, cancel := context.WithCancel(c.ctx)
	r0.RemoteAddr = c.remote
	r0.TLS = c.tls
	r := r0.WithContext(ctx)
	// The response header map is the connection's, emptied per request: a
	// handler may not use it after it returned (http.ResponseWriter), and
	// a map per request was the largest allocation of a cache hit.
	if c.hdr == nil {
		c.hdr = make(http.Header, 8)
	} else {
		clear(c.hdr)
	}
	w := &h1resp{c: c, req: r, header: c.hdr, ctx: ctx, cancel: cancel}
	defer w.cancelRequest()
	w.body.init(c, w, r)
	r.Body = &w.body
	if r.ContentLength == 0 && r.TransferEncoding == nil {
		r.Body = http.NoBody
	}
	c.curLock.Lock()
	c.cur = w
	c.curLock.Unlock()
	defer func() {
		c.curLock.Lock()
		c.cur = nil
		c.curLock.Unlock()
	}()

	if !c.runHandler(w, r) {
		c.stopWatch()
		w.body.close()
		return false
	}
	if w.hijacked {
		return false // the tunnel is over; so is the connection
	}
	c.stopWatch()
	w.finish()
	drained := w.body.finish()
	return c.werr == nil && !w.closeAfter && drained && !c.srv.closing.Load()
}

// runHandler calls the handler; false means it panicked and the
// connection must be closed without finishing the response.
func (c *h1conn) runHandler(w *h1resp, r *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				buf := make([]byte, 16<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.srv.logger.Error("proxy: handler panic", "addr", c.srv.addr, "remote", c.remote,
					"panic", fmt.Sprint(v), "stack", string(buf))
			}
			ok = false
		}
	}()
	c.srv.handler.ServeHTTP(w, r)
	return true
}

// watchClient asks the HTTP/1.1 server serving ctx's request to cancel the
// request's context as soon as the client closes its connection, by
// reading ahead on it until the handler returns. A handler calls it before
// waiting on something slow (an upstream); it does nothing for requests
// with a body still to read, on HTTP/2 and HTTP/3 (whose servers always
// watch) and outside this server.
func watchClient(ctx context.Context) {
	c, _ := ctx.Value(h1ConnKey{}).(*h1conn)
	if c == nil {
		return
	}
	c.startWatch()
}

// watchDelay is how long a handler that asked for watchClient waits before
// the read-ahead starts. Most requests are answered sooner, and for them
// the read-ahead would cost more than the rest of the hop's own work: a
// goroutine, a read that finds nothing, four deadline changes and two
// goroutine switches to stop it. A client that leaves is noticed at most
// this much later than it would be otherwise. A variable for tests.
var watchDelay = 10 * time.Millisecond

// startWatch asks for the read-ahead of the request being served, in
// watchDelay, unless something could still read from the connection (a
// request body) or the client already sent more.
func (c *h1conn) startWatch() {
	c.curLock.Lock()
	defer c.curLock.Unlock()
	w := c.cur
	if w == nil || c.bgOn || c.bgArmed || !w.body.done() || c.br.Buffered() > 0 || c.bgHave || c.bgErr != nil {
		return
	}
	c.bgArmed = true
	if c.bgTimer == nil {
		c.bgTimer = time.AfterFunc(watchDelay, c.watch)
	} else {
		c.bgTimer.Reset(watchDelay)
	}
}

// watch is the read-ahead, run by bgTimer on its own goroutine while the
// request that asked for it is still being served.
func (c *h1conn) watch() {
	c.curLock.Lock()
	w := c.cur
	if !c.bgArmed || w == nil {
		c.curLock.Unlock()
		return
	}
	c.bgArmed = false
	c.bgOn = true
	c.clearRead()
	c.curLock.Unlock()
	n, err := c.rwc.Read(c.bgByte[:])
	if n == 1 {
		c.bgHave = true
	} else if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.bgErr = err
		w.cancelRequest()
	}
	c.bgDone <- struct{}{}
}

// stopWatch ends the read-ahead and waits for it.
func (c *h1conn) stopWatch() {
	c.curLock.Lock()
	if c.bgArmed {
		c.bgArmed = false
		c.bgTimer.Stop()
	}
	on := c.bgOn
	c.curLock.Unlock()
	if !on {
		return
	}
	_ = c.rwc.SetReadDeadline(aLongTimeAgo)
	<-c.bgDone
	_ = c.rwc.SetReadDeadline(time.Time{})
	c.curLock.Lock()
	c.bgOn = false
	c.curLock.Unlock()
}

// aLongTimeAgo is a deadline that ends a blocked read at once.
var aLongTimeAgo = time.Unix(1, 0)

// shutdown closes idle connections, lets active ones finish their request
// and polls until none is left or ctx ends; then it closes the rest.
func (s *h1srv) shutdown(ctx context.Context) error {
	s.closing.Store(true)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		n := len(s.conns)
		for c := range s.conns {
			if c.state.Load() == h1Idle {
				// Wakes the Peek in serveOne, which sees closing.
				_ = c.rwc.SetReadDeadline(aLongTimeAgo)
			}
		}
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			s.close()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// close closes every connection at once.
func (s *h1srv) close() {
	s.closing.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		_ = c.rwc.Close()
	}
}

// h1resp is the http.ResponseWriter of one request, and its request body.
type h1resp struct {
	c      *h1conn
	req    *http.Request
	header http.Header
	ctx    context.Context // the request's, canceled by cancelRequest
	cancel context.CancelFunc
	body   h1body

	// abort is run (on its own goroutine) when the request is canceled:
	// the fast path's upstream connection registers its Close here
	// instead of with context.AfterFunc (see onCancel).
	abortMu  sync.Mutex
	abort    func()
	canceled bool

	status      int  // final status written, 0 before
	headerSent  bool // the header section is in wbuf or on the wire
	chunked     bool
	bodyAllowed bool
	closeAfter  bool
	clen        int64 // declared Content-Length; -1 unknown
	written     int64 // body bytes the handler wrote
	raw         []byte
	hijacked    bool // the handler took the connection (Hijack)
}

// maxLazyBody is how much of a body without Content-Length is held back to
// frame it with one; a longer one is sent chunked.
const maxLazyBody = 2 << 10

func (w *h1resp) Header() http.Header { return w.header }

// AddRawHeader adds header fields already serialized ("Name: value\r\n"
// each, names tokens, values without CR or LF): meshd's cache hands its
// stored fields over this way and skips building a map. They are written
// after the fields of Header() and replace the server's own Date field, so
// the block must carry one. The block must not change until the response is
// finished; it is ignored once the header was sent.
func (w *h1resp) AddRawHeader(block []byte) {
	if !w.headerSent {
		w.raw = block
	}
}

func (w *h1resp) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 {
		if code != http.StatusSwitchingProtocols {
			w.writeInformational(code)
		}
		return
	}
	w.status = code
	w.bodyAllowed = bodyAllowedForStatus(code) && w.req.Method != http.MethodHead
	w.clen = -1
	if cl := w.header["Content-Length"]; len(cl) == 1 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
			w.clen = n
		}
	}
	if w.clen >= 0 || !w.bodyAllowed {
		w.sendHeader()
	}
}

// writeInformational sends a 1xx response (103 Early Hints) at once.
func (w *h1resp) writeInformational(code int) {
	if w.c.werr != nil || w.req.ProtoMinor == 0 {
		return // HTTP/1.0 has no 1xx (RFC 9110 §15.2)
	}
	c := w.c
	c.wbuf = append(c.wbuf, "HTTP/1.1 "...)
	c.wbuf = appendStatus(c.wbuf, code)
	c.wbuf = appendFields(c.wbuf, w.header)
	c.wbuf = append(c.wbuf, "\r\n"...)
	w.flushBuf()
}

// bodyAllowedForStatus: 1xx, 204 and 304 have no content (RFC 9110 §6.4.1).
func bodyAllowedForStatus(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

func (w *h1resp) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.c.werr != nil {
		return 0, w.c.werr
	}
	if !w.bodyAllowed {
		if w.req.Method == http.MethodHead && bodyAllowedForStatus(w.status) {
			w.written += int64(len(p))
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.clen >= 0 && w.written+int64(len(p)) > w.clen {
		return 0, http.ErrContentLength
	}
	if len(p) == 0 {
		return 0, nil // an empty chunk would end a chunked body
	}
	w.written += int64(len(p))
	c := w.c
	if !w.headerSent {
		if len(c.hold)+len(p) <= maxLazyBody {
			c.hold = append(c.hold, p...)
			return len(p), nil
		}
		w.sendHeader() // chunked now, with what was held back
	}
	w.writeFramed(p)
	if c.werr != nil {
		return 0, c.werr
	}
	return len(p), nil
}

// writeFramed writes body bytes, as a chunk when the body is chunked.
func (w *h1resp) writeFramed(p []byte) {
	c := w.c
	if !w.chunked {
		w.writeBody(p)
		return
	}
	c.wbuf = strconv.AppendInt(c.wbuf, int64(len(p)), 16)
	c.wbuf = append(c.wbuf, "\r\n"...)
	w.writeBody(p)
	c.wbuf = append(c.wbuf, "\r\n"...)
}

// writeBody appends p to the write buffer, or sends the buffer and p
// together in one writev when p does not fit.
func (w *h1resp) writeBody(p []byte) {
	c := w.c
	if len(c.wbuf)+len(p) <= cap(c.wbuf) {
		c.wbuf = append(c.wbuf, p...)
		return
	}
	if c.werr != nil {
		return
	}
	// With a send timeout, a large body goes in pieces, each with its own
	// deadline: the timeout bounds a client that reads nothing, not one
	// that reads a big body slowly.
	first := p
	if c.srv.sendTimeout > 0 && len(first) > maxSendPiece {
		first = p[:maxSendPiece]
	}
	c.armWrite()
	err := c.writev(c.wbuf, first)
	c.wbuf = c.wbuf[:0]
	for p = p[len(first):]; err == nil && len(p) > 0; p = p[len(first):] {
		first = p[:min(len(p), maxSendPiece)]
		c.armWrite()
		_, err = c.write(first)
	}
	w.wrote(err)
}

// maxSendPiece is the most written under one send deadline.
const maxSendPiece = 256 << 10

// armWrite starts the send timeout for the next write.
func (c *h1conn) armWrite() {
	if t := c.srv.sendTimeout; t > 0 && rearm(&c.sendAt, t) {
		_ = c.rwc.SetWriteDeadline(c.sendAt.Add(t))
	}
}

// rearm reports whether a deadline of timeout t set at *at must be set
// again now, and if so sets *at to now. Setting a deadline updates a
// runtime timer; done for every request it was a few percent of a cache
// hit's CPU. A deadline set less than t/16 (at most a second) ago is kept:
// the idle and send timeouts then run between 15/16 of t and t.
func rearm(at *time.Time, t time.Duration) bool {
	now := time.Now()
	if !at.IsZero() && now.Sub(*at) < min(t/16, time.Second) {
		return false
	}
	*at = now
	return true
}

// clearRead removes the read deadline, if one is set.
func (c *h1conn) clearRead() {
	if c.rdArmed {
		_ = c.rwc.SetReadDeadline(time.Time{})
		c.rdArmed, c.idleAt = false, time.Time{}
	}
}

// headBuffered reports whether the buffer holds a whole request head:
// an empty line after the request line (and after the empty lines a
// client may send before it, RFC 9112 §2.2).
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	b = bytes.TrimLeft(b, "\r\n")
	return bytes.Contains(b, []byte("\n\r\n")) || bytes.Contains(b, []byte("\n\n"))
}

// cancelRequest cancels the request's context and runs the registered
// abort, if any.
func (w *h1resp) cancelRequest() {
	w.cancel()
	w.abortMu.Lock()
	f := w.abort
	w.abort, w.canceled = nil, true
	w.abortMu.Unlock()
	if f != nil {
		go f()
	}
}

// cancelHook is what onCancel registered: a hook with meshd's HTTP/1.1
// server, or context.AfterFunc's stop function.
type cancelHook struct {
	w    *h1resp
	stop func() bool
}

// onCancel runs f once ctx is canceled, as context.AfterFunc(ctx, f) does.
// When ctx is canceled exactly when a request of meshd's HTTP/1.1 server is
// (its context, or one that only adds values), f is registered with that
// request: one lock, where context.AfterFunc costs four allocations, a map
// and a goroutine switch to stop it. At most one such hook per request;
// a second one goes to context.AfterFunc.
func onCancel(ctx context.Context, f func()) cancelHook {
	if c, _ := ctx.Value(h1ConnKey{}).(*h1conn); c != nil {
		c.curLock.Lock()
		w := c.cur
		c.curLock.Unlock()
		if w != nil && w.ctx.Done() == ctx.Done() {
			w.abortMu.Lock()
			defer w.abortMu.Unlock()
			switch {
			case w.canceled:
				go f()
				return cancelHook{w: w}
			case w.abort == nil:
				w.abort = f
				return cancelHook{w: w}
			}
		}
	}
	return cancelHook{stop: context.AfterFunc(ctx, f)}
}

// release unregisters the hook; false when f already ran or was started.
func (h cancelHook) release() bool {
	if h.w == nil {
		return h.stop()
	}
	h.w.abortMu.Lock()
	defer h.w.abortMu.Unlock()
	if h.w.abort == nil {
		return false
	}
	h.w.abort = nil
	return true
}

// wrote records a write error: the client is gone.
func (w *h1resp) wrote(err error) {
	if err != nil && w.c.werr == nil {
		w.c.werr = err
		w.cancelRequest()
	}
}

func (w *h1resp) flushBuf() {
	c := w.c
	if len(c.wbuf) == 0 || c.werr != nil {
		c.wbuf = c.wbuf[:0]
		return
	}
	c.armWrite()
	_, err := c.write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	w.wrote(err)
}

// sendHeader puts the header section into the write buffer, choosing the
// framing: Content-Length when known, chunked on HTTP/1.1 otherwise, the
// end of the connection on HTTP/1.0. Body bytes held back stay after it.
func (w *h1resp) sendHeader() {
	if w.headerSent {
		return
	}
	w.headerSent = true
	if !w.body.headerSent() {
		w.closeAfter = true
	}
	c := w.c
	h := w.header
	if w.bodyAllowed && w.clen < 0 {
		if w.req.ProtoMinor == 1 {
			w.chunked = true
		} else {
			w.closeAfter = true
		}
	}
	if w.req.Close || hasToken(h["Connection"], "close") || c.srv.closing.Load() {
		w.closeAfter = true
	}
	b := c.wbuf
	if w.req.ProtoMinor == 0 {
		b = append(b, "HTTP/1.0 "...)
	} else {
		b = append(b, "HTTP/1.1 "...)
	}
	b = appendStatus(b, w.status)
	b = appendFields(b, h)
	b = append(b, w.raw...)
	if _, ok := h["Date"]; !ok && w.raw == nil {
		b = append(b, "Date: "...)
		b = appendDate(b)
		b = append(b, "\r\n"...)
	}
	if w.chunked {
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	} else if w.clen >= 0 && bodyAllowedForStatus(w.status) {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, w.clen, 10)
		b = append(b, "\r\n"...)
	}
	switch {
	case w.closeAfter:
		b = append(b, "Connection: close\r\n"...)
	case w.req.ProtoMinor == 0:
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	b = append(b, "\r\n"...)
	c.wbuf = b
	if len(c.hold) > 0 {
		w.writeFramed(c.hold)
		c.hold = c.hold[:0]
	}
}

// finish completes the response after the handler returned.
func (w *h1resp) finish() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	c := w.c
	if !w.headerSent {
		// The whole body is known: frame it with Content-Length, unless
		// the handler announced trailers, which need chunked.
		if _, trailers := w.header["Trailer"]; !trailers {
			w.clen = w.written
		}
		w.sendHeader()
	}
	if w.chunked {
		c.wbuf = append(c.wbuf, "0\r\n"...)
		c.wbuf = appendTrailers(c.wbuf, w.header)
		c.wbuf = append(c.wbuf, "\r\n"...)
	}
	if w.clen >= 0 && w.bodyAllowed && w.written < w.clen {
		// Fewer bytes than declared: the client must see a truncated
		// message, not wait for the rest.
		w.closeAfter = true
	}
	w.flushBuf()
}

// Flush sends what is buffered, committing the header first.
func (w *h1resp) Flush() { _ = w.FlushError() }

// FlushError is Flush for http.ResponseController.
func (w *h1resp) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.sendHeader()
	w.flushBuf()
	return w.c.werr
}

// SetReadDeadline bounds the reads of the request body
// (http.ResponseController).
func (w *h1resp) SetReadDeadline(t time.Time) error {
	c := w.c
	c.curLock.Lock() // the read-ahead's start clears the deadline too
	defer c.curLock.Unlock()
	c.rdArmed, c.idleAt = !t.IsZero(), time.Time{}
	return c.rwc.SetReadDeadline(t)
}

// SetWriteDeadline bounds the writes of the response.
func (w *h1resp) SetWriteDeadline(t time.Time) error {
	w.c.sendAt = time.Time{}
	return w.c.rwc.SetWriteDeadline(t)
}

// Hijack hands the connection to the handler (a tunnel: CONNECT or a
// protocol upgrade), before any of the response was sent; its bytes are
// the handler's from then on. Unlike net/http's, the connection stays
// tracked by the server: Shutdown waits for the handler to return (a
// tunnel drains within the grace), and the server closes the connection
// when it does. The read-ahead of watchClient is stopped and every
// deadline cleared; the returned conn's CloseWrite half-closes it.
func (w *h1resp) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c := w.c
	if w.headerSent || w.status != 0 {
		return nil, nil, errors.New("proxy: hijack after the response started")
	}
	if w.hijacked {
		return nil, nil, errors.New("proxy: connection already hijacked")
	}
	c.stopWatch()
	w.hijacked = true
	w.closeAfter = true
	_ = c.rwc.SetDeadline(time.Time{})
	c.rdArmed, c.idleAt, c.sendAt = false, time.Time{}, time.Time{}
	hc := &hijackedConn{Conn: c.rwc, c: c}
	return hc, bufio.NewReadWriter(c.br, bufio.NewWriter(hc)), nil
}

// hijackedConn reads through the connection's buffer (which may hold bytes
// the client sent after its request head) and writes as the server does.
type hijackedConn struct {
	net.Conn
	c *h1conn
}

func (h *hijackedConn) Read(p []byte) (int, error) {
	if h.c.br.Buffered() > 0 {
		return h.c.br.Read(p)
	}
	return connReader{h.c}.Read(p)
}

func (h *hijackedConn) Write(p []byte) (int, error) { return h.c.write(p) }

// CloseWrite half-closes: close_notify on TLS, FIN on TCP.
func (h *hijackedConn) CloseWrite() error {
	if hc, ok := h.c.rwc.(halfCloser); ok {
		return hc.CloseWrite()
	}
	if hc, ok := h.c.wc.(halfCloser); ok {
		return hc.CloseWrite()
	}
	return h.c.rwc.Close()
}

// EnableFullDuplex: the request body can always be read while the response
// is written on this server.
func (w *h1resp) EnableFullDuplex() error { return nil }

// appendStatus appends "code reason\r\n".
func appendStatus(b []byte, code int) []byte {
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(code)...)
	return append(b, "\r\n"...)
}

// appendFields appends a header section's fields, except those the server
// writes itself and trailers; a name that is not a token is skipped and CR
// or LF in a value become spaces, so a handler cannot split the response.
func appendFields(b []byte, h http.Header) []byte {
	for k, vv := range h {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Connection":
			continue
		}
		if !isToken(k) {
			continue // also skips TrailerPrefix keys ("Trailer:Name")
		}
		for _, v := range vv {
			b = appendField(b, k, v)
		}
	}
	return b
}

func appendField(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' || c == 0 {
			c = ' '
		}
		b = append(b, c)
	}
	return append(b, "\r\n"...)
}

// appendTrailers appends the trailer fields: those the Trailer field
// announced, with the values the handler set after the header was sent,
// and those set under http.TrailerPrefix.
func appendTrailers(b []byte, h http.Header) []byte {
	for _, v := range h["Trailer"] {
		for name := range splitList(v) {
			k := http.CanonicalHeaderKey(name)
			if !isToken(k) {
				continue
			}
			for _, tv := range h[k] {
				b = appendField(b, k, tv)
			}
		}
	}
	for k, vv := range h {
		if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix {
			name := k[len(http.TrailerPrefix):]
			if !isToken(name) {
				continue
			}
			for _, v := range vv {
				b = appendField(b, name, v)
			}
		}
	}
	return b
}

// splitList yields the non-empty elements of a comma-separated list.
func splitList(v string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for part := range strings.SplitSeq(v, ",") {
			if t := strings.Trim(part, " \t"); t != "" && !yield(t) {
				return
			}
		}
	}
}

// dateField caches the Date value for the current second.
type dateField struct {
	sec int64
	b   []byte
}

var dateCache atomic.Pointer[dateField]

func appendDate(b []byte) []byte {
	now := time.Now()
	d := dateCache.Load()
	if d == nil || d.sec != now.Unix() {
		d = &dateField{sec: now.Unix(), b: now.UTC().AppendFormat(nil, http.TimeFormat)}
		dateCache.Store(d)
	}
	return append(b, d.b...)
}

// h1body is a request body: Content-Length bytes, or chunked (RFC 9112
// §7.1) with its trailer section going into the request's Trailer.
type h1body struct {
	c   *h1conn
	w   *h1resp
	req *http.Request

	// rmu is held by whoever reads the body from the connection, and
	// guards remaining and inChunk; mu guards the rest and is never held
	// while a read waits for the client, so that the response can be
	// written while the request body is still arriving (full duplex: a
	// gRPC bidirectional stream, where the client sends its next message
	// only after it got the answer to the last one).
	rmu          sync.Mutex
	mu           sync.Mutex
	chunked      bool
	remaining    int64 // of the Content-Length body, or of the current chunk
	inChunk      bool  // remaining counts a chunk's data
	left         int64 // remaining of a Content-Length body after the last read, for headerSent
	eof          bool
	err          error
	closed       bool // the exchange ended: reads fail
	expect       bool // the client waits for 100 Continue
	continueOK   bool // 100 Continue may still be sent
	sawFirstRead bool
}

var errBodyAfterClose = errors.New("proxy: request body read after the exchange ended")

func (b *h1body) init(c *h1conn, w *h1resp, r *http.Request) {
	b.c, b.w, b.req = c, w, r
	b.chunked = r.TransferEncoding != nil
	if !b.chunked {
		b.remaining = r.ContentLength
		b.left = r.ContentLength
		b.eof = r.ContentLength <= 0
	}
	if _, ok := r.Header["Expect"]; ok {
		// Expect stays in the header: a forwarding handler passes it on
		// and sends the body only after the upstream's own 100.
		b.expect = !b.eof
		b.continueOK = b.expect
	}
}

// done reports whether nothing more can be read from the connection for
// this request.
func (b *h1body) done() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof || b.err != nil || b.closed
}

// headerSent: once the final response began, 100 Continue is too late.
// It reports whether the connection may still carry another request after
// this one, as far as the body can tell now: not after a malformed body,
// nor with more left unread than finish would discard.
func (b *h1body) headerSent() (keep bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.continueOK = false
	switch {
	case b.eof:
		return true
	case b.err != nil, b.expect && !b.sawFirstRead:
		return false
	}
	return b.chunked || b.left <= maxDrain
}

func (b *h1body) Read(p []byte) (int, error) {
	b.rmu.Lock()
	defer b.rmu.Unlock()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return 0, errBodyAfterClose
	}
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	if b.eof {
		b.mu.Unlock()
		return 0, io.EOF
	}
	if !b.sawFirstRead {
		b.sawFirstRead = true
		if b.continueOK {
			// RFC 9110 §10.1.1: the handler wants the body; tell the
			// client to send it. The handler's goroutine may be writing
			// nothing yet (continueOK is false once it wrote a header).
			b.continueOK = false
			b.c.armWrite()
			if _, err := b.c.write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
				b.err = err
				b.mu.Unlock()
				return 0, err
			}
		}
	}
	b.mu.Unlock()
	n, err := b.read(p)
	if err != nil && err != io.EOF {
		b.mu.Lock()
		b.err = err
		b.mu.Unlock()
	}
	return n, err
}

// read reads the next bytes; b.rmu is held, b.mu is not.
func (b *h1body) read(p []byte) (int, error) {
	br := b.c.br
	if !b.chunked {
		if int64(len(p)) > b.remaining {
			p = p[:b.remaining]
		}
		n, err := br.Read(p)
		b.remaining -= int64(n)
		b.mu.Lock()
		b.left = b.remaining
		if b.remaining == 0 {
			b.eof = true
			b.mu.Unlock()
			return n, io.EOF
		}
		b.mu.Unlock()
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	for !b.inChunk {
		size, err := b.readChunkSize()
		if err != nil {
			return 0, err
		}
		if size == 0 {
			if err := b.readTrailer(); err != nil {
				return 0, err
			}
			b.mu.Lock()
			b.eof = true
			b.mu.Unlock()
			return 0, io.EOF
		}
		b.remaining, b.inChunk = size, true
	}
	if int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	n, err := br.Read(p)
	b.remaining -= int64(n)
	if err == io.EOF {
		return n, io.ErrUnexpectedEOF
	}
	if b.remaining == 0 {
		b.inChunk = false
		if err := b.readCRLF(); err != nil {
			return n, err
		}
	}
	return n, err
}

var errBadChunk = errors.New("proxy: malformed chunked request body")

// readChunkSize reads "size[;ext]CRLF".
func (b *h1body) readChunkSize() (int64, error) {
	line, err := b.c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) || err == io.EOF {
			return 0, errBadChunk
		}
		return 0, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return 0, errBadChunk // chunk framing is CRLF only
	}
	line = line[:len(line)-2]
	var size int64
	digits := 0
	for _, c := range line {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		case c == ';' || c == ' ' || c == '\t':
			if digits == 0 {
				return 0, errBadChunk
			}
			return size, nil // chunk extensions are ignored (§7.1.1)
		default:
			return 0, errBadChunk
		}
		digits++
		if digits > 15 {
			return 0, errBadChunk
		}
		size = size<<4 | int64(d)
	}
	if digits == 0 {
		return 0, errBadChunk
	}
	return size, nil
}

// readCRLF reads the CRLF after a chunk's data.
func (b *h1body) readCRLF() error {
	var crlf [2]byte
	if _, err := io.ReadFull(b.c.br, crlf[:]); err != nil {
		return errBadChunk
	}
	if crlf != [2]byte{'\r', '\n'} {
		return errBadChunk
	}
	return nil
}

// readTrailer reads the trailer section into the request's Trailer.
func (b *h1body) readTrailer() error {
	lr := lineReader{br: b.c.br, budget: b.c.srv.maxHeaderBytes}
	h, err := parseFields(&lr, true)
	if err != nil {
		return errBadChunk
	}
	if len(h) == 0 {
		return nil
	}
	if b.req.Trailer == nil {
		b.req.Trailer = make(http.Header, len(h))
	}
	for k, vv := range h {
		b.req.Trailer[k] = append(b.req.Trailer[k], vv...)
	}
	return nil
}

func (b *h1body) Close() error { return nil }

// maxDrain is how much of a request body the handler left unread is read
// and discarded to keep the connection; a longer one closes it, as Go's
// server does.
const maxDrain = 256 << 10

// finish ends the body after the handler returned; it reports whether the
// connection can carry another request.
func (b *h1body) finish() bool {
	b.rmu.Lock()
	defer b.rmu.Unlock()
	b.mu.Lock()
	eof, fail := b.eof, b.err != nil || b.closed || (b.expect && !b.sawFirstRead)
	b.closed = true
	b.mu.Unlock()
	if eof {
		return true
	}
	if fail {
		// Failed, or the client still waits for 100 Continue and sends
		// nothing: the connection's state is unknown.
		return false
	}
	if !b.chunked && b.remaining > maxDrain {
		return false
	}
	var buf [4 << 10]byte
	total := 0
	for total <= maxDrain {
		n, err := b.read(buf[:])
		total += n
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
	}
	return false
}

// close ends the body without draining it.
func (b *h1body) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
}
