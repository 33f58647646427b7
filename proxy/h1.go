package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 fast path.
//
// Go's http.Transport runs every exchange through two goroutines per
// connection (a read loop and a write loop), channels, a select, a derived
// context and a response-header timer per request. For a proxy that is most
// of a hop's cost: BenchmarkProxyH1 spent about as much CPU in the
// transport's machinery as in the syscalls that move the bytes. The common
// request on a mesh hop carries no body (GET, HEAD, DELETE), and for those
// the exchange is strictly sequential: write the request, read the
// response. h1Pool does exactly that on the calling goroutine, with the
// standard library's own wire code (http.Request.Write, http.ReadResponse:
// framing, chunked bodies and trailers are Go's), and a bounded stack of
// idle connections.
//
// Everything else (request bodies, which need the response to be read while
// the body is still being sent, "Expect: 100-continue", upgrades,
// non-idempotent methods) stays on http.Transport; see useFastPath.

// maxInformational bounds the 1xx responses (e.g. 103 Early Hints) skipped
// before the final one, like Go's transport does.
const maxInformational = 5

// h1BufSize is the size of a connection's read and write buffers: Go's
// transport default, enough for a typical header section in one syscall.
const h1BufSize = 4 << 10

// Connection states of an h1Conn.
const (
	connBusy int32 = iota // carrying an exchange
	connIdle              // in the idle stack
	connDead              // closed
)

var (
	errHeaderTooLarge = errors.New("response header section too large")
	errSwitched       = errors.New("upstream switched protocols without an upgrade request")
	errTooManyInfo    = errors.New("too many 1xx responses")
	errPoolClosed     = errors.New("upstream forgotten")
)

// h1Pool holds the idle HTTP/1.1 connections of one upstream used by the
// fast path. Its zero value is not usable; see Pool.newConns.
type h1Pool struct {
	dial          func(ctx context.Context) (net.Conn, error)
	idle          chan *h1Conn // bounded: at most MaxIdlePerUpstream idle connections
	idleTimeout   time.Duration
	headerTimeout time.Duration
	closed        atomic.Bool // forgotten: connections are closed, not kept
	// dials bounds the dials in flight (shared with the key's transport);
	// nil: no bound. A request that finds every slot taken waits up to
	// queueTimeout for a slot or an idle connection (see limit.go).
	dials        chan struct{}
	queueTimeout time.Duration
	rejected     *atomic.Int64
}

func newH1Pool(dial func(ctx context.Context) (net.Conn, error), maxIdle int, idleTimeout, headerTimeout time.Duration) *h1Pool {
	return &h1Pool{
		dial:          dial,
		idle:          make(chan *h1Conn, maxIdle),
		idleTimeout:   idleTimeout,
		headerTimeout: headerTimeout,
	}
}

// h1Conn is one upstream connection of the fast path.
type h1Conn struct {
	pool   *h1Pool
	c      net.Conn
	lr     countingReader
	br     *bufio.Reader
	bw     *bufio.Writer
	state  atomic.Int32
	timer  *time.Timer // closes the connection once idle for idleTimeout
	abort  func()      // closes the connection; built once, run on cancellation (onCancel)
	reused bool        // carried an exchange before this one
	// hdrAt is when the read deadline bounding a response header was set;
	// zero: none is set (see exchangeLocked).
	hdrAt time.Time
}

// countingReader counts the bytes read from the connection since the last
// reset, so a failed exchange can tell whether the upstream answered at all,
// and bounds them while the header section is read.
type countingReader struct {
	c   net.Conn
	n   int64
	max int64 // 0: no bound
}

func (r *countingReader) Read(p []byte) (int, error) {
	if r.max > 0 {
		rem := r.max - r.n
		if rem <= 0 {
			return 0, errHeaderTooLarge
		}
		if int64(len(p)) > rem {
			p = p[:rem]
		}
	}
	n, err := r.c.Read(p)
	r.n += int64(n)
	return n, err
}

// get returns an idle connection, or dials one when none is idle or fresh
// is set.
func (p *h1Pool) get(ctx context.Context, fresh bool) (*h1Conn, error) {
	if !fresh {
		if pc := p.idleConn(); pc != nil {
			return pc, nil
		}
	}
	if p.closed.Load() {
		return nil, errPoolClosed
	}
	if p.dials != nil {
		pc, err := p.waitDial(ctx, fresh)
		if pc != nil || err != nil {
			return pc, err
		}
		defer func() { <-p.dials }()
	}
	c, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	pc := &h1Conn{pool: p, c: c}
	pc.lr.c = c
	pc.br = bufio.NewReaderSize(&pc.lr, h1BufSize)
	pc.bw = bufio.NewWriterSize(c, h1BufSize)
	pc.abort = func() { _ = pc.c.Close() }
	return pc, nil
}

// idleConn takes an idle connection, or returns nil when none is idle.
func (p *h1Pool) idleConn() *h1Conn {
	for {
		select {
		case pc := <-p.idle:
			if pc.claim() {
				return pc
			}
		default:
			return nil
		}
	}
}

// claim makes an idle connection taken from the stack busy; false when its
// idle timer closed it.
func (pc *h1Conn) claim() bool {
	if !pc.state.CompareAndSwap(connIdle, connBusy) {
		return false
	}
	pc.timer.Stop()
	pc.reused = true
	return true
}

// waitDial takes a dial slot, or, while every slot is taken, waits for a
// slot or for an idle connection (not when fresh: the caller wants a new
// one), whichever comes first, at most queueTimeout. It returns the idle
// connection, or nil with a slot taken.
func (p *h1Pool) waitDial(ctx context.Context, fresh bool) (*h1Conn, error) {
	select {
	case p.dials <- struct{}{}:
		return nil, nil
	default:
	}
	idle := p.idle
	if fresh {
		idle = nil // never ready
	}
	t := time.NewTimer(p.queueTimeout)
	defer t.Stop()
	for {
		select {
		case pc := <-idle:
			if pc.claim() {
				return pc, nil
			}
		case p.dials <- struct{}{}:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			if p.rejected != nil {
				p.rejected.Add(1)
			}
			return nil, errDialQueue
		}
	}
}

// put returns a connection whose exchange ended cleanly to the idle stack,
// or closes it when the stack is full or the pool was forgotten.
func (p *h1Pool) put(pc *h1Conn) {
	if p.closed.Load() {
		pc.close()
		return
	}
	if pc.timer == nil {
		pc.timer = time.AfterFunc(p.idleTimeout, pc.expire)
	} else {
		pc.timer.Reset(p.idleTimeout)
	}
	pc.state.Store(connIdle)
	select {
	case p.idle <- pc:
	default:
		pc.close()
	}
}

// closeIdle closes the connections idle now; with forget, connections
// still busy are closed when their exchange ends.
func (p *h1Pool) closeIdle(forget bool) {
	if forget {
		p.closed.Store(true)
	}
	for {
		select {
		case pc := <-p.idle:
			if pc.state.CompareAndSwap(connIdle, connDead) {
				pc.close()
			}
		default:
			return
		}
	}
}

// expire runs when the connection was idle for idleTimeout. It leaves a
// dead entry in the idle stack, which get skips.
func (pc *h1Conn) expire() {
	if pc.state.CompareAndSwap(connIdle, connDead) {
		_ = pc.c.Close()
	}
}

func (pc *h1Conn) close() {
	pc.state.Store(connDead)
	if pc.timer != nil {
		pc.timer.Stop()
	}
	_ = pc.c.Close()
}

// retryableError marks a failure on a reused connection before the upstream
// sent a byte: the upstream closed the idle connection as the request was
// sent (its idle timeout racing this request), and an idempotent request
// without a body may be sent again on a fresh connection.
type retryableError struct{ err error }

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

// roundTrip sends a request without a body (see useFastPath) and returns the
// response; its body gives the connection back when read to the end.
func (p *h1Pool) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if err := checkRequestHeader(req.Header); err != nil {
		return nil, err
	}
	fresh := false
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		pc, err := p.get(ctx, fresh)
		if err != nil {
			return nil, err
		}
		resp, err := pc.exchange(ctx, req)
		if err == nil {
			return resp, nil
		}
		var re *retryableError
		if !errors.As(err, &re) {
			return nil, err
		}
		// At most one retry: the next connection is a new one.
		fresh = true
	}
}

// exchange writes req and reads the response header. On error the
// connection is closed.
func (pc *h1Conn) exchange(ctx context.Context, req *http.Request) (*http.Response, error) {
	// The client going away (or any cancellation) closes the connection,
	// which ends a read or write in progress; the connection is then
	// never reused.
	hook := onCancel(ctx, pc.abort)
	fr := new(fastResponse)
	resp, err := pc.exchangeLocked(req, fr)
	if err != nil {
		hook.release()
		pc.close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if resp.Body == http.NoBody {
		// No body to wait for (HEAD, 204, 304, Content-Length: 0): the
		// connection is free now.
		pc.release(hook, !resp.Close && !req.Close)
		return resp, nil
	}
	fr.body = h1Body{rc: resp.Body, pc: pc, hook: hook, reuse: !resp.Close && !req.Close}
	resp.Body = &fr.body
	return resp, nil
}

// fastResponse is what an exchange allocates, in one piece: the response
// (when readSimpleResponse parsed it), its Content-Length body, and the
// body that gives the connection back.
type fastResponse struct {
	resp  http.Response
	fixed fixedBody
	body  h1Body
}

func (pc *h1Conn) exchangeLocked(req *http.Request, fr *fastResponse) (*http.Response, error) {
	p := pc.pool
	pc.lr.n = 0
	if p.headerTimeout > 0 && rearm(&pc.hdrAt, p.headerTimeout) {
		// Bounds the wait for the response header, as the transport's
		// ResponseHeaderTimeout does; the body has no deadline. As on
		// the server side (rearm), a deadline set less than a
		// sixteenth of the timeout ago is kept, and it stays set while
		// the connection is idle: one timer update per connection and
		// second at most, not two per exchange.
		_ = pc.c.SetReadDeadline(pc.hdrAt.Add(p.headerTimeout))
	}
	if err := writeRequestHead(pc.bw, req); err != nil {
		return nil, pc.failed(fmt.Errorf("write request: %w", err))
	}
	if err := pc.bw.Flush(); err != nil {
		return nil, pc.failed(fmt.Errorf("write request: %w", err))
	}
	pc.lr.max = pc.lr.n + maxResponseHeaderBytes
	var resp *http.Response
	for n := 0; ; n++ {
		var err error
		resp, err = readResponse(pc.br, req, fr)
		if err != nil {
			if isTimeout(err) {
				return nil, fmt.Errorf("timeout awaiting response headers: %w", err)
			}
			if pc.lr.n == 0 {
				return nil, pc.failed(fmt.Errorf("read response: %w", err))
			}
			return nil, fmt.Errorf("read response: %w", err)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return nil, errSwitched
		}
		if resp.StatusCode >= 200 {
			break
		}
		// 1xx informational responses (RFC 9110 §15.2) are not
		// forwarded; the final response follows on the connection.
		if n == maxInformational {
			return nil, errTooManyInfo
		}
	}
	pc.lr.max = 0
	if !pc.hdrAt.IsZero() && !bodyBuffered(resp, pc.br) {
		// The body needs more reads from the connection, which the
		// header's deadline must not bound.
		_ = pc.c.SetReadDeadline(time.Time{})
		pc.hdrAt = time.Time{}
	}
	return resp, nil
}

// bodyBuffered reports whether the whole of resp's body is in br already:
// reading it takes no read from the connection.
func bodyBuffered(resp *http.Response, br *bufio.Reader) bool {
	if resp.Body == http.NoBody {
		return true
	}
	fb, ok := resp.Body.(*fixedBody)
	return ok && fb.n <= int64(br.Buffered())
}

// readResponse reads a response head: the common shape (a final status,
// Content-Length or no body, no Transfer-Encoding, no trailers, every line
// strict) straight from the bytes already buffered, anything else with
// http.ReadResponse, which has consumed nothing yet when it takes over.
func readResponse(br *bufio.Reader, req *http.Request, fr *fastResponse) (*http.Response, error) {
	if resp := readSimpleResponse(br, req, fr); resp != nil {
		return resp, nil
	}
	return http.ReadResponse(br, req)
}

var crlfcrlf = []byte("\r\n\r\n")

// readSimpleResponse returns nil, having consumed nothing, unless the whole
// head is buffered and has the common shape. Header values are substrings
// of one string: one allocation for all of them. The response and its body
// are fr's.
func readSimpleResponse(br *bufio.Reader, req *http.Request, fr *fastResponse) *http.Response {
	if _, err := br.Peek(1); err != nil {
		return nil // http.ReadResponse meets the same error
	}
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, crlfcrlf)
	if end < 0 {
		return nil
	}
	hs := string(buf[:end+2])
	line, rest, _ := strings.Cut(hs, "\r\n")
	if len(line) < 12 || line[8] != ' ' || (line[12:] != "" && line[12] != ' ') || !validFieldValue(line) {
		return nil
	}
	resp := &fr.resp
	*resp = http.Response{Request: req, ProtoMajor: 1}
	switch line[:8] {
	case "HTTP/1.1":
		resp.Proto, resp.ProtoMinor = "HTTP/1.1", 1
	case "HTTP/1.0":
		resp.Proto = "HTTP/1.0"
	default:
		return nil
	}
	code, ok := parseDigits3(line[9:12])
	if !ok || code < 200 {
		return nil // 1xx: the caller's loop, with Go's parser
	}
	resp.StatusCode, resp.Status = code, strings.TrimLeft(line[9:], " ")
	n := strings.Count(rest, "\n")
	h := make(http.Header, n)
	vals := make([]string, 0, n)
	for rest != "" {
		line, rest, _ = strings.Cut(rest, "\r\n")
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return nil // also obs-fold, bare CR or LF: Go's parser decides
		}
		v := strings.Trim(line[colon+1:], " \t")
		if !validFieldValue(v) {
			return nil
		}
		vals = addField(h, vals, canonicalFieldName(line[:colon]), v)
	}
	if _, ok := h["Transfer-Encoding"]; ok {
		return nil
	}
	if _, ok := h["Trailer"]; ok {
		return nil
	}
	resp.Header = h
	if resp.ProtoMinor == 0 {
		resp.Close = !hasToken(h["Connection"], "keep-alive")
	} else {
		resp.Close = hasToken(h["Connection"], "close")
	}
	if resp.Close && hasToken(h["Connection"], "close") {
		delete(h, "Connection") // as Go's parser does
	}
	cl, hasCL := int64(-1), false
	if v, ok := h["Content-Length"]; ok {
		n, ok := parseContentLength(v)
		if !ok {
			return nil
		}
		cl, hasCL = n, true
	}
	switch {
	case req.Method == http.MethodHead:
		resp.ContentLength, resp.Body = cl, http.NoBody
	case code == http.StatusNoContent || code == http.StatusNotModified:
		resp.ContentLength, resp.Body = 0, http.NoBody
	case !hasCL:
		return nil // delimited by the end of the connection
	case cl == 0:
		resp.ContentLength, resp.Body = 0, http.NoBody
	default:
		fr.fixed = fixedBody{br: br, n: cl}
		resp.ContentLength, resp.Body = cl, &fr.fixed
	}
	_, _ = br.Discard(end + len(crlfcrlf))
	return resp
}

// parseDigits3 parses a three-digit status code.
func parseDigits3(s string) (int, bool) {
	if len(s) != 3 {
		return 0, false
	}
	n := 0
	for i := 0; i < 3; i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, true
}

// fixedBody is a Content-Length response body read from the connection's
// buffer; h1Body gives the connection back at its end.
type fixedBody struct {
	br *bufio.Reader
	n  int64
}

func (b *fixedBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.br.Read(p)
	b.n -= int64(n)
	if b.n == 0 {
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *fixedBody) Close() error { return nil }

// failed marks err as retryable when the connection was reused and the
// upstream sent nothing back.
func (pc *h1Conn) failed(err error) error {
	if pc.reused && pc.lr.n == 0 && !isTimeout(err) {
		return &retryableError{err: err}
	}
	return err
}

// release ends an exchange: the connection goes back to the idle stack when
// reuse is allowed and the cancellation hook had not fired.
func (pc *h1Conn) release(hook cancelHook, reuse bool) {
	if hook.release() && reuse && pc.br.Buffered() == 0 {
		pc.pool.put(pc)
		return
	}
	pc.close()
}

// h1Body is a fast-path response body: read to the end, it gives the
// connection back; closed early, it closes the connection (draining an
// unknown rest could take forever).
type h1Body struct {
	rc    io.ReadCloser
	pc    *h1Conn
	hook  cancelHook
	reuse bool
	done  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.done = true
		b.pc.release(b.hook, b.reuse)
	} else if err != nil {
		b.done = true
		b.hook.release()
		b.pc.close()
		return n, err
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	b.hook.release()
	b.pc.close()
	_ = b.rc.Close() // returns at once: the connection is closed
	return nil
}

// writeRequestHead writes the request line and header section of a
// request without a body, as http.Request.Write would for it, minus what a
// proxy must not add: no User-Agent of Go's own (an empty User-Agent value
// sends none), and fields in map order rather than sorted (order across
// field names carries no meaning, RFC 9110 §5.3). Field names and values
// were checked by checkRequestHeader.
func writeRequestHead(w *bufio.Writer, req *http.Request) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !httpguts.ValidHostHeader(host) {
		return fmt.Errorf("invalid Host %q", host)
	}
	w.WriteString(req.Method)
	w.WriteByte(' ')
	if req.Method == http.MethodConnect && req.URL.Path == "" {
		w.WriteString(host)
	} else {
		w.WriteString(req.URL.RequestURI())
	}
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
	if ua := req.Header["User-Agent"]; len(ua) > 0 && ua[0] != "" {
		writeField(w, "User-Agent", ua[0])
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead && req.Method != http.MethodConnect {
		// As Go's transport does: servers expect a length for other
		// methods even without a body.
		w.WriteString("Content-Length: 0\r\n")
	}
	for k, vv := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		for _, v := range vv {
			writeField(w, k, v)
		}
	}
	_, err := w.WriteString("\r\n")
	return err
}

func writeField(w *bufio.Writer, k, v string) {
	w.WriteString(k)
	w.WriteString(": ")
	w.WriteString(v)
	w.WriteString("\r\n")
}

// useFastPath reports whether req can go through the fast path: no body
// (nothing to send while the response arrives), an idempotent method (so a
// request lost on a connection the upstream closed while idle can be sent
// again), and no protocol upgrade.
func useFastPath(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	if !isIdempotent(req.Method) {
		return false
	}
	_, upgrade := req.Header["Upgrade"]
	return !upgrade && !hasToken(req.Header["Connection"], "upgrade")
}

// checkRequestHeader rejects what http.Transport rejects before sending:
// invalid field names and values (RFC 9110 §5.1, §5.5); a CR or LF in a
// value would otherwise split the request on the wire.
func checkRequestHeader(h http.Header) error {
	for k, vv := range h {
		if !isToken(k) {
			return fmt.Errorf("invalid header field name %q", k)
		}
		for _, v := range vv {
			if !validFieldValue(v) {
				return fmt.Errorf("invalid header field value for %q", k)
			}
		}
	}
	return nil
}

// validFieldValue reports whether v has no control characters other than
// horizontal tab (RFC 9110 §5.5).
func validFieldValue[T string | []byte](v T) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
