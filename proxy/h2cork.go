package proxy

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// Go's HTTP/2 server writes a response that its handler finished in full
// (a cache hit, a small forwarded answer) in two flushes, so two TLS
// records and two write system calls: the handler waits until the serve
// loop has written its HEADERS frame (the loop then flushes it on its own,
// as nothing else is queued), and only then hands over the DATA. On
// loopback and on a busy edge the second write system call is the largest
// single cost of an HTTP/2 cache hit, and the client also gets the
// header block in a TCP segment of its own.
//
// corkConn, the TCP connection under the TLS of every connection a Server
// accepts, joins the two: when the guard sees a handler return with its
// whole response still buffered in the server (at most
// h2HandlerBufferSize bytes of body, no flush, no informational status),
// it announces with hold that the next write is that response's HEADERS
// and that its DATA follows at once. The next write is then kept, and sent
// together with the one after it in one write system call. Holding only
// delays bytes: a kept write goes out when the next one comes, when the
// connection is closed, and at the latest after corkDelay (a stream whose
// DATA cannot follow: a flow-control window at zero, a reset), so a wrong
// guess costs at most that much latency and never loses or reorders data.
// Connections that never announce anything (HTTP/1.1) are not affected.
type corkConn struct {
	net.Conn
	mu      sync.Mutex
	pending int    // announced writes still to keep
	held    []byte // kept bytes, not yet written
	timer   *time.Timer
	err     error // the error of a kept write that failed, for the next Write
}

const (
	// corkDelay bounds how long a write is kept.
	corkDelay = 5 * time.Millisecond
	// corkMaxPending bounds the announcements that may wait for their
	// writes: a connection's streams, roughly.
	corkMaxPending = 16
	// corkMaxHeld bounds the bytes kept: a header block is far smaller.
	corkMaxHeld = 16 << 10
	// corkKeepCap is the largest buffer a connection keeps between writes.
	corkKeepCap = 4 << 10
	// h2HandlerBufferSize is how much of a response body Go's HTTP/2
	// server buffers before it sends the header (its handler chunk
	// write size, http2handlerChunkWriteSize in net/http).
	h2HandlerBufferSize = 4 << 10
)

func newCorkConn(c net.Conn) *corkConn { return &corkConn{Conn: c} }

// hold announces that the next write should wait for the one after it.
func (c *corkConn) hold() {
	c.mu.Lock()
	if c.pending < corkMaxPending {
		c.pending++
	}
	c.mu.Unlock()
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.pending > 0 && len(c.held)+len(p) <= corkMaxHeld {
		c.pending--
		c.held = append(c.held, p...)
		if c.timer == nil {
			c.timer = time.AfterFunc(corkDelay, c.expire)
		} else {
			c.timer.Reset(corkDelay)
		}
		return len(p), nil
	}
	if len(c.held) == 0 {
		return c.Conn.Write(p)
	}
	c.timer.Stop()
	kept := len(c.held)
	c.held = append(c.held, p...)
	n, err := c.Conn.Write(c.held)
	c.clear()
	if err != nil {
		c.err = err
	}
	return max(n-kept, 0), err
}

// expire writes what was kept past corkDelay, and forgets announcements
// that turned out wrong.
func (c *corkConn) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = 0
	c.flushLocked()
}

// flushLocked writes the kept bytes; c.mu is held.
func (c *corkConn) flushLocked() {
	if len(c.held) == 0 || c.err != nil {
		return
	}
	_, err := c.Conn.Write(c.held)
	c.clear()
	if err != nil {
		c.err = err
	}
}

// clear empties the buffer, dropping a large one.
func (c *corkConn) clear() {
	if cap(c.held) > corkKeepCap {
		c.held = nil
		return
	}
	c.held = c.held[:0]
}

// Close writes what was kept (unless a write is blocked right now: closing
// is how a stuck connection is ended) and closes the connection.
func (c *corkConn) Close() error {
	if c.mu.TryLock() {
		if c.timer != nil {
			c.timer.Stop()
		}
		c.pending = 0
		c.flushLocked()
		c.mu.Unlock()
	}
	return c.Conn.Close()
}

// h2Writer is the guard's view of an HTTP/2 response on a corked
// connection: it tells whether the server can still have all of it
// buffered when the handler returns.
type h2Writer struct {
	http.ResponseWriter
	n    int64 // body bytes written
	sent bool  // something may have been sent: a flush, a 1xx status
}

func (w *h2Writer) WriteHeader(code int) {
	if code < 200 {
		w.sent = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *h2Writer) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return w.ResponseWriter.Write(p)
}

// FlushError lets a handler stream; ResponseController finds it first.
func (w *h2Writer) FlushError() error {
	w.sent = true
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Flush implements http.Flusher for handlers that type-assert it.
func (w *h2Writer) Flush() { _ = w.FlushError() }

// Unwrap gives ResponseController the server's writer.
func (w *h2Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// buffered reports whether the whole response, with a body, is still in
// the server's buffer: its HEADERS and its DATA will be written after the
// handler returns, one right after the other.
func (w *h2Writer) buffered(r *http.Request) bool {
	return !w.sent && w.n > 0 && w.n <= h2HandlerBufferSize && r.Method != http.MethodHead
}
