package proxy

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// Go's HTTP/2 server writes each response's HEADERS in a flush of their
// own: the handler waits until the serve loop has written them (the loop
// then flushes, as nothing else is queued), and only then hands over the
// DATA. A 1 KiB cache hit so cost two TLS records and two write system
// calls, the second write being the largest single cost of the hit on a
// busy edge. And every DATA frame of 16 KiB (the frame size clients allow)
// plus its 9-byte frame header is one full TLS record and a small one,
// written with two system calls: a 100 KiB hit took 15.
//
// corkConn, the TCP connection under the TLS of every connection a Server
// accepts, joins such writes:
//   - the guard's h2Writer announces with hold, just before the server
//     writes a response's HEADERS from a chunk that carries body bytes
//     (when the handler returns with at most h2HandlerBufferSize of body
//     buffered, at the write that overflows that buffer, at the first
//     flush with bytes buffered), that the next write is those HEADERS
//     and that DATA follows at once; that write is kept and sent with the
//     one after it;
//   - on an HTTP/2 connection (serveH2), a write of one full TLS record is
//     kept and sent with the rest of its TLS write.
//
// Keeping only delays bytes: a kept write goes out with the next write
// (one writev, the new bytes not copied), when the connection is closed,
// and at the latest after corkDelay or corkRecordDelay (an announced
// stream whose DATA cannot follow: a flow-control window at zero, a reset;
// a TLS write that ended at a record boundary). A wrong guess costs at
// most that much latency and never loses or reorders data. A connection
// that is not HTTP/2 and announces nothing (HTTP/1.1) is not affected.
type corkConn struct {
	net.Conn
	mu      sync.Mutex
	h2      bool         // the connection speaks HTTP/2: full records are joined too
	pending int          // announced writes still to keep
	held    []byte       // kept bytes, not yet written
	pooled  *[]byte      // held's buffer came from corkBufs
	tcp     *net.TCPConn // the connection, for one writev of kept and new bytes; nil if not TCP
	iov     [2][]byte    // the writev's buffers, kept here so that no write allocates them
	bufs    net.Buffers
	timer   *time.Timer
	err     error // the error of a kept write that failed, for the next Write
}

const (
	// corkDelay bounds how long an announced write is kept.
	corkDelay = 5 * time.Millisecond
	// corkRecordDelay bounds how long a full TLS record is kept for the
	// rest of its TLS write: that comes at once, from the same
	// goroutine, unless the write happened to end at a record boundary.
	corkRecordDelay = 200 * time.Microsecond
	// corkMaxPending bounds the announcements that may wait for their
	// writes: a connection's streams, roughly.
	corkMaxPending = 16
	// corkMaxHeld bounds the bytes kept: a header block is far smaller,
	// and this is a few full TLS records.
	corkMaxHeld = 64 << 10
	// corkKeepCap is the largest buffer a connection keeps between writes.
	corkKeepCap = 4 << 10
	// h2HandlerBufferSize is how much of a response body Go's HTTP/2
	// server buffers before it sends the header (its handler chunk
	// write size, http2handlerChunkWriteSize in net/http).
	h2HandlerBufferSize = 4 << 10
	// tlsFullRecord: a TLS application data record at least this long
	// (header included) carries a full 16 KiB of plaintext (RFC 8446
	// §5.2: 2^14 bytes of plaintext at most, then the content type and
	// an AEAD tag of 16 bytes; TLS 1.2's AEAD suites add an explicit
	// nonce instead).
	tlsFullRecord = 5 + 1<<14 + 16
)

// corkBufs holds the buffers of kept full records between uses.
var corkBufs = sync.Pool{New: func() any { b := make([]byte, 0, corkMaxHeld); return &b }}

func newCorkConn(c net.Conn) *corkConn {
	cc := &corkConn{Conn: c}
	raw := c
	if lc, ok := c.(*limitConn); ok {
		raw = lc.Conn
	}
	cc.tcp, _ = raw.(*net.TCPConn)
	return cc
}

// serveH2 marks the connection as HTTP/2: Go's HTTP/2 server writes DATA
// frames of 16 KiB and 9 bytes of frame header, so each frame becomes a
// full TLS record and a small one, which go out in two write system calls;
// on an HTTP/2 connection a full record is kept and joined with the rest
// of its TLS write.
func (c *corkConn) serveH2() {
	c.mu.Lock()
	c.h2 = true
	c.mu.Unlock()
}

// hold announces that the next write should wait for the one after it.
func (c *corkConn) hold() {
	c.mu.Lock()
	if c.pending < corkMaxPending {
		c.pending++
	}
	c.mu.Unlock()
}

// fullRecord reports whether p is one TLS application data record
// carrying 16 KiB of plaintext.
func fullRecord(p []byte) bool {
	return len(p) >= tlsFullRecord && p[0] == 23 && len(p) == 5+(int(p[3])<<8|int(p[4]))
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if len(c.held)+len(p) <= corkMaxHeld {
		delay := time.Duration(0)
		switch {
		case c.pending > 0:
			c.pending--
			delay = corkDelay
		case c.h2 && fullRecord(p):
			delay = corkRecordDelay
		}
		if delay > 0 {
			if c.pooled == nil && len(c.held)+len(p) > cap(c.held) && len(p) > corkKeepCap {
				c.pooled = corkBufs.Get().(*[]byte)
				c.held = append((*c.pooled)[:0], c.held...)
			}
			c.held = append(c.held, p...)
			if c.timer == nil {
				c.timer = time.AfterFunc(delay, c.expire)
			} else {
				c.timer.Reset(delay)
			}
			return len(p), nil
		}
	}
	if len(c.held) == 0 {
		return c.Conn.Write(p)
	}
	c.timer.Stop()
	kept := len(c.held)
	var n int
	var err error
	if c.tcp != nil {
		// One writev: the new bytes are not copied.
		c.bufs = append(net.Buffers(c.iov[:0]), c.held, p)
		var n64 int64
		n64, err = c.bufs.WriteTo(c.tcp)
		c.iov = [2][]byte{}
		n = int(n64)
	} else {
		c.held = append(c.held, p...)
		n, err = c.Conn.Write(c.held)
	}
	c.clear()
	if err != nil {
		c.err = err
	}
	return max(n-kept, 0), err
}

// expire writes what was kept past its delay, and forgets announcements
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

// clear empties the buffer, giving a large one back.
func (c *corkConn) clear() {
	switch {
	case c.pooled != nil:
		*c.pooled = c.held[:0]
		corkBufs.Put(c.pooled)
		c.held, c.pooled = nil, nil
	case cap(c.held) > corkKeepCap:
		c.held = nil
	default:
		c.held = c.held[:0]
	}
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
// connection. Go's server sends a response's HEADERS from a writeChunk
// that, when it carries body bytes, hands over DATA right after: when the
// handler returns with 1 to h2HandlerBufferSize body bytes buffered, at
// the write that overflows that buffer, and at the first flush with bytes
// buffered. Just before each, the writer announces the HEADERS to the
// cork. (A HEAD response's HEADERS end the stream: nothing follows.)
type h2Writer struct {
	http.ResponseWriter
	cork *corkConn
	head bool  // a HEAD request: no DATA ever follows the HEADERS
	n    int64 // body bytes written
	sent bool  // the final HEADERS were sent (or announced)
}

// announce tells the cork that the HEADERS are written next, with DATA
// right after.
func (w *h2Writer) announce() {
	w.sent = true
	if !w.head {
		w.cork.hold()
	}
}

func (w *h2Writer) Write(p []byte) (int, error) {
	if !w.sent && len(p) > 0 && w.n+int64(len(p)) > h2HandlerBufferSize {
		w.announce()
	}
	w.n += int64(len(p))
	return w.ResponseWriter.Write(p)
}

// FlushError lets a handler stream; ResponseController finds it first.
func (w *h2Writer) FlushError() error {
	switch {
	case w.sent:
	case w.n > 0:
		w.announce()
	default:
		w.sent = true // the HEADERS go out alone
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Flush implements http.Flusher for handlers that type-assert it.
func (w *h2Writer) Flush() { _ = w.FlushError() }

// Unwrap gives ResponseController the server's writer.
func (w *h2Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// done is called when the handler returned.
func (w *h2Writer) done() {
	if !w.sent && w.n > 0 {
		w.announce()
	}
}
