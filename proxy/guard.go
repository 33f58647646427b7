package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// limits is what a Server enforces on each request, resolved from its
// fields at Start.
type limits struct {
	public    bool
	maxHeader int           // Server.MaxHeaderBytes, applied here on HTTP/2
	maxBody   int64         // 0: no limit
	minRate   int64         // bytes per second; 0: no check
	window    time.Duration // the span minRate is measured over
	allow0RTT bool
}

// minBytes is what a body must deliver in each window of waiting.
func (l *limits) minBytes() int64 {
	return l.minRate * int64(l.window) / int64(time.Second)
}

// guard is the handler a Server runs in front of its Handler: it counts
// requests in flight and applies the per-request rules (see Server.Public,
// MaxBodyBytes, MinBodyRate, Allow0RTT) before the Handler sees anything.
type guard struct {
	h   http.Handler
	n   *atomic.Int64
	lim limits
	// live, once set (Server.SetBodyLimits), replaces lim for requests
	// that start from then on.
	live   atomic.Pointer[limits]
	altSvc func() []string // the edge's own Alt-Svc for TCP responses; nil without HTTP/3
}

// limits are the limits of a request that starts now.
func (g *guard) limits() *limits {
	if l := g.live.Load(); l != nil {
		return l
	}
	return &g.lim
}

// ServeHTTP serves r, keeping the rapid-reset account of its HTTP/2
// connection (see h2conn).
func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 2 {
		if hc, _ := r.Context().Value(h2ConnKey{}).(*h2conn); hc != nil {
			ctx := r.Context()
			if ctx.Err() == nil {
				if hc.cork == nil {
					g.serve(w, r)
				} else {
					hw := &h2Writer{ResponseWriter: w, cork: hc.cork, head: r.Method == http.MethodHead}
					g.serve(hw, r)
					hw.done()
				}
				if ctx.Err() == nil {
					hc.completed()
					return
				}
			}
			// Reset by the client before the handler started (nobody
			// is left to answer: the handler is skipped) or while it
			// ran. Go's server cancels a stream's context only when
			// the stream closes, which for a finished handler happens
			// after it returned.
			hc.reset()
			return
		}
	}
	g.serve(w, r)
}

// serve checks r, wraps its body when a limit applies, and serves it.
// The counter is decremented in a defer, so requests ended by
// panic(http.ErrAbortHandler) count too.
func (g *guard) serve(w http.ResponseWriter, r *http.Request) {
	g.n.Add(1)
	defer g.n.Add(-1)
	lim := g.limits()
	if r.ProtoMajor == 2 && h2HeaderListSize(r) > h2MaxHeaderListSize(lim.maxHeader) {
		// RFC 9113 §10.5.1: a header list larger than the server will
		// handle may get 431; the stream ends, the connection stays.
		rejectRequest(w, r, http.StatusRequestHeaderFieldsTooLarge, "meshd: request header fields too large")
		return
	}
	if g.altSvc != nil && r.ProtoMajor < 3 {
		// Set before the handler runs: the forwarding Handler drops an
		// upstream's Alt-Svc and keeps this one (RFC 7838 §3).
		if v := g.altSvc(); v != nil {
			w.Header()["Alt-Svc"] = v
		}
	}
	if _, ok := r.Header["Early-Data"]; ok && lim.public {
		// Only this hop may say a request came in early data.
		delete(r.Header, "Early-Data")
	}
	if r.TLS != nil && !r.TLS.HandshakeComplete {
		// Only HTTP/3 serves requests before the handshake completes:
		// they came in TLS 1.3 early data, which an attacker can replay
		// (RFC 8446 §8). RFC 8470 §5.2: answer 425 unless the request is
		// safe to replay; a forwarded one carries "Early-Data: 1" so the
		// upstream can decide too (§5.1).
		if !lim.allow0RTT || !isSafeMethod(r.Method) {
			rejectRequest(w, r, http.StatusTooEarly, "meshd: too early, retry after the handshake")
			return
		}
		r.Header["Early-Data"] = []string{"1"}
	}
	if lim.public {
		if msg := checkTarget(r); msg != "" {
			rejectRequest(w, r, http.StatusBadRequest, msg)
			return
		}
	}
	if !hasBody(r) || (lim.maxBody == 0 && lim.minRate == 0) {
		g.h.ServeHTTP(w, r)
		return
	}
	if lim.maxBody > 0 && r.ContentLength > lim.maxBody {
		// Declared too large: refuse before reading a byte, and (HTTP/1)
		// close the connection rather than read the body to keep it.
		rejectRequest(w, r, http.StatusRequestEntityTooLarge, "meshd: request body too large")
		return
	}
	gb := &guardedRequest{}
	gb.body = guardBody{rc: r.Body, lim: lim, rc2: http.NewResponseController(w)}
	gb.w = guardWriter{ResponseWriter: w, body: &gb.body, r: r}
	body := r.Body
	r.Body = &gb.body
	defer func() {
		r.Body = body
		gb.body.finish()
	}()
	g.h.ServeHTTP(&gb.w, r)
	if gb.body.cutStatus() != 0 && !gb.w.wrote {
		// The handler gave up without answering (it saw the read error as
		// the client going away); the client still gets a status.
		gb.w.writeCut()
	}
}

// h2HeaderListSize is the header list size of an HTTP/2 request as RFC
// 9113 §6.5.2 counts it: name, value and 32 bytes per field, the pseudo
// fields included.
func h2HeaderListSize(r *http.Request) int {
	const perField = 32
	n := len(":method") + len(r.Method) + len(":scheme") + len("https") +
		len(":authority") + len(r.Host) + len(":path") + len(r.RequestURI) + 4*perField
	for k, vv := range r.Header {
		for _, v := range vv {
			n += len(k) + len(v) + perField
		}
	}
	return n
}

// h2MaxHeaderListSize turns a limit on an HTTP/1 header section into one
// on an HTTP/2 header list, the way Go's server has always done (room for
// ten fields' 32-byte overhead), so that what Go accepted is accepted.
func h2MaxHeaderListSize(maxHeaderBytes int) int {
	return maxHeaderBytes + 10*32
}

// hasBody reports whether r may carry a request body.
func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
}

// isSafeMethod reports the methods RFC 8470 §3 allows a server to accept in
// early data by default: safe ones (RFC 9110 §9.2.1) without side effects.
func isSafeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// checkTarget applies a public listener's rules to the request target and
// Host; it returns the client message of the first rule broken, or "".
func checkTarget(r *http.Request) string {
	if !validHost(r.Host) {
		return "meshd: invalid Host"
	}
	switch r.ProtoMajor {
	case 1:
		if r.URL.Host == "" && r.URL.Scheme == "" {
			return "" // origin-form (or "*"): Host came from the field
		}
		// Absolute-form (RFC 9112 §3.2.2): the server took the
		// authority as r.Host and dropped the Host field.
		if r.URL.User != nil {
			return "meshd: userinfo in the request target" // RFC 9110 §4.2.4
		}
		want := "http"
		if r.TLS != nil {
			want = "https"
		}
		if !strings.EqualFold(r.URL.Scheme, want) {
			return "meshd: request target scheme does not match the connection"
		}
		if r.TLS != nil && r.TLS.ServerName != "" && !strings.EqualFold(hostName(r.Host), r.TLS.ServerName) {
			// HTTP/1.1 has no connection reuse across origins, so a
			// target naming another host than the TLS server name asks
			// this connection for an origin it was not opened for.
			return "meshd: request target names another host than the TLS server name"
		}
	case 2:
		// Go keeps a Host field sent beside :authority; RFC 9113 §8.3.1
		// says to treat a different value as malformed. (quic-go already
		// rejects the HTTP/3 equivalent, RFC 9114 §4.3.1.)
		// Host names compare without case (RFC 3986 §3.2.2).
		if hv, ok := r.Header["Host"]; ok && (len(hv) != 1 || !strings.EqualFold(hv[0], r.Host)) {
			return "meshd: Host does not match :authority"
		}
	}
	return ""
}

// rejectRequest answers a request this layer refuses. On HTTP/1 the
// connection is closed afterwards: an unread body would otherwise have to be
// read (or misread) before the next request.
func rejectRequest(w http.ResponseWriter, r *http.Request, code int, msg string) {
	if r.ProtoMajor == 1 {
		w.Header()["Connection"] = []string{"close"}
	}
	writeError(w, code, msg)
}

// guardedRequest is the one allocation a request with a guarded body costs.
type guardedRequest struct {
	body guardBody
	w    guardWriter
}

// Errors a guarded body returns; the handler sees them as read errors.
var errBodyTooSlow = errors.New("proxy: request body arrived too slowly")

// guardBody enforces MaxBodyBytes and MinBodyRate on a request body.
//
// The rate counts only time spent inside Read, waiting for the client: a
// handler that stops reading (an upstream applying back-pressure) does not
// make its client look slow. Each Read gets a read deadline at the end of
// the current window, so a client that sends nothing is cut when the window
// ends; after each window of waiting, fewer than minRate×window bytes cut
// the body too.
//
// The rate applies only until the response begins. After that the request
// body is one direction of a stream the upstream has answered (a gRPC
// bidirectional call, a chat, a long poll upload), whose client may
// rightly send nothing for minutes while it reads; a slow client that
// holds a request open to tie up the server gets no answer before its
// body is in, and so stays bounded.
type guardBody struct {
	rc  io.ReadCloser
	rc2 *http.ResponseController
	lim *limits

	total    int64         // bytes read
	winBytes int64         // bytes read in this window
	waited   time.Duration // time spent in Read in this window
	deadline bool          // a read deadline is set
	status   int           // 413 or 408 once the body was cut
	err      error

	// mu guards done and the response controller: an upstream transport
	// may read the body after the handler returned, when the response
	// writer must no longer be used.
	mu   sync.Mutex
	done bool

	// answered: a final response header was written; the rate no
	// longer applies (see above). Set on the handler's goroutine, read on
	// the reader's.
	answered atomic.Bool
}

// responding ends the rate check once the response begins: the deadline a
// Read waiting now has is lifted too.
func (b *guardBody) responding() {
	if b.lim.minRate == 0 || b.answered.Swap(true) {
		return
	}
	b.clearDeadline()
}

// setDeadline sets the read deadline unless the handler has returned or
// the response began.
func (b *guardBody) setDeadline(t time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return http.ErrBodyReadAfterClose
	}
	if b.answered.Load() {
		// responding cleared deadlines already, or is about to
		// under b.mu: none is set after it.
		return errAnswered
	}
	err := b.rc2.SetReadDeadline(t)
	if err == nil {
		b.deadline = true
	}
	return err
}

// errAnswered: no read deadline once the response began.
var errAnswered = errors.New("proxy: the response began")

// finish runs when the handler returns: no use of the writer after it.
func (b *guardBody) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.deadline {
		b.deadline = false
		_ = b.rc2.SetReadDeadline(time.Time{})
	}
	b.done = true
}

func (b *guardBody) cutStatus() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status
}

func (b *guardBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	b.mu.Lock()
	done := b.done
	b.mu.Unlock()
	if done {
		// The request is over: as net/http's own bodies do once the
		// handler returned, refuse to read on.
		return 0, http.ErrBodyReadAfterClose
	}
	if max := b.lim.maxBody; max > 0 {
		// Read at most one byte past the limit: exactly max bytes pass.
		if rem := max - b.total + 1; int64(len(p)) > rem {
			p = p[:rem]
		}
	}
	var start time.Time
	rate := b.lim.minRate > 0 && !b.answered.Load()
	if rate {
		start = time.Now()
		_ = b.setDeadline(start.Add(b.lim.window - b.waited))
	}
	n, err := b.rc.Read(p)
	b.total += int64(n)
	if b.lim.maxBody > 0 && b.total > b.lim.maxBody {
		return n - int(b.total-b.lim.maxBody), b.cut(http.StatusRequestEntityTooLarge, &http.MaxBytesError{Limit: b.lim.maxBody})
	}
	if rate && !b.answered.Load() {
		b.waited += time.Since(start)
		b.winBytes += int64(n)
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			return n, b.cut(http.StatusRequestTimeout, errBodyTooSlow)
		}
		if b.waited >= b.lim.window {
			if b.winBytes < b.lim.minBytes() {
				return n, b.cut(http.StatusRequestTimeout, errBodyTooSlow)
			}
			b.waited, b.winBytes = 0, 0
		}
		if err == io.EOF {
			// After the body ends the HTTP/1 server may read on to
			// notice a client closing (watchClient); a deadline left
			// set would end that read.
			b.clearDeadline()
		}
	}
	return n, err
}

func (b *guardBody) cut(status int, err error) error {
	b.mu.Lock()
	b.status = status
	b.mu.Unlock()
	b.err = err
	return err
}

func (b *guardBody) clearDeadline() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.deadline && !b.done {
		b.deadline = false
		_ = b.rc2.SetReadDeadline(time.Time{})
	}
}

func (b *guardBody) Close() error { return b.rc.Close() }

// guardWriter replaces the error status a handler writes after its request
// body was cut (the forwarding Handler sees a failed body read and would
// answer 400) with the status that says why: 413 or 408.
type guardWriter struct {
	http.ResponseWriter
	body    *guardBody
	r       *http.Request
	wrote   bool // a final status was written
	swallow bool // the handler's own error response is discarded
}

func (w *guardWriter) WriteHeader(code int) {
	if w.wrote || code < 200 {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	if w.body.cutStatus() != 0 && code >= 400 {
		w.writeCut()
		w.swallow = true
		return
	}
	w.wrote = true
	w.body.responding()
	w.ResponseWriter.WriteHeader(code)
}

// writeCut answers with the status of the cut body.
func (w *guardWriter) writeCut() {
	w.wrote = true
	hdr := w.ResponseWriter.Header()
	for k := range hdr {
		if k != "Alt-Svc" {
			delete(hdr, k)
		}
	}
	msg := "meshd: request body too large"
	if w.body.cutStatus() == http.StatusRequestTimeout {
		msg = "meshd: request body too slow"
	}
	rejectRequest(w.ResponseWriter, w.r, w.body.cutStatus(), msg)
}

func (w *guardWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if w.swallow {
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

// FlushError lets a handler stream through the guard; ResponseController
// finds it before Unwrap.
func (w *guardWriter) FlushError() error {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if w.swallow {
		return nil
	}
	switch f := w.ResponseWriter.(type) {
	case interface{ FlushError() error }:
		return f.FlushError()
	case http.Flusher:
		f.Flush()
		return nil
	}
	return http.ErrNotSupported
}

// Flush implements http.Flusher for handlers that type-assert it.
func (w *guardWriter) Flush() { _ = w.FlushError() }

// Unwrap gives ResponseController the server's writer (deadlines, full
// duplex, hijacking).
func (w *guardWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Rapid reset (CVE-2023-44487): a client opens a stream and resets it at
// once, again and again. Go's HTTP/2 server bounds the handlers running per
// connection (MaxConcurrentStreams) and sends GOAWAY ENHANCE_YOUR_CALM when
// more than 4× that many streams wait for one; but a handler that returns
// as soon as its stream is reset (the forwarding Handler does: the client's
// cancellation reaches the upstream request) never lets them wait, so the
// attack is never cut off and each reset costs a goroutine, a request and
// the start of a forward. h2conn keeps the balance of a connection: resets
// count up, completed streams count down (never below zero: completions
// cannot be saved up for a later flood). Once resets outpace completions by
// h2ResetSlack streams, a reset stream's handler does not return until the
// connection ends: the attacker's own streams then fill the handler slots
// and the queue, and Go's server closes the connection with GOAWAY
// ENHANCE_YOUR_CALM after at most 5 × MaxConcurrentStreams more resets,
// as nginx and Go itself do. A connection still open h2ResetHold after a
// stream was held is closed: one that resets slowly also ends.
type h2conn struct {
	c     net.Conn
	cork  *corkConn // under c's TLS; nil if none
	slack int64
	debt  atomic.Int64
	held  atomic.Int64 // handlers waiting in reset, for tests
	done  chan struct{}
	once  sync.Once
}

// h2ResetHold bounds how long a reset stream's handler is held.
const h2ResetHold = 5 * time.Second

type h2ConnKey struct{}

func newH2Conn(c net.Conn, maxStreams int) *h2conn {
	// A browser leaving a page cancels all its open streams at once:
	// twice the stream limit is far from what a real client nets.
	hc := &h2conn{c: c, slack: 2 * int64(maxStreams), done: make(chan struct{})}
	if tc, ok := c.(*tls.Conn); ok {
		nc := tc.NetConn()
		if rc, ok := nc.(*rawConn); ok {
			nc = rc.Conn // raw system calls stay off on HTTP/2
		}
		if hc.cork, _ = nc.(*corkConn); hc.cork != nil {
			hc.cork.serveH2()
		}
	}
	return hc
}

// completed records a stream answered in full.
func (hc *h2conn) completed() {
	for d := hc.debt.Load(); d > 0 && !hc.debt.CompareAndSwap(d, d-1); d = hc.debt.Load() {
	}
}

// reset records a stream the client reset, and holds the handler once the
// connection's resets outpace its completed streams.
func (hc *h2conn) reset() {
	if hc.debt.Add(1) <= hc.slack {
		return
	}
	hc.held.Add(1)
	defer hc.held.Add(-1)
	t := time.NewTimer(h2ResetHold)
	defer t.Stop()
	select {
	case <-hc.done:
	case <-t.C:
		_ = hc.c.Close()
	}
}

// end releases the held handlers; the connection is closed.
func (hc *h2conn) end() { hc.once.Do(func() { close(hc.done) }) }
