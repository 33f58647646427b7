package proxy

import (
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// HTTP/2 without TLS on a plain listener (Server.H2C).
//
// A gRPC client given a plain address (a sidecar's outbound listener)
// speaks HTTP/2 with prior knowledge (RFC 9113 §3.3): its first bytes are
// the connection preface. The accepting goroutine peeks at them with
// MSG_PEEK, which leaves them in the socket: a connection that starts with
// the preface goes to net/http's HTTP/2 server (which reads the preface
// itself), any other to meshd's HTTP/1.1 server unchanged, still a bare
// *net.TCPConn for its raw system calls.

// h2Preface is the HTTP/2 client connection preface (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// servePlainH2C sends c to the HTTP/2 server when it opens with the
// preface, else to the HTTP/1.1 server. The peek is bounded by the header
// timeout, as the first request's head is.
func servePlainH2C(c net.Conn, h1 *h1srv, hl *handoffListener, logger *slog.Logger, bound string) {
	if h1.headerTimeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(h1.headerTimeout))
	}
	h2, err := peekPreface(c)
	if err != nil {
		if err != io.EOF {
			logger.Debug("proxy: no request on a new connection", "addr", bound, "remote", c.RemoteAddr().String(), "err", err)
		}
		_ = c.Close()
		return
	}
	if h2 {
		_ = c.SetReadDeadline(time.Time{})
		hl.push(c)
		return
	}
	h1.serve(c, nil) // it sets the first request's deadline itself
}

// peekPreface reports whether c's first bytes are the HTTP/2 preface,
// without reading them off the connection. It waits only while what
// arrived is a beginning of the preface: the first byte of an HTTP/1.1
// request line tells most requests apart ("P" of POST, PUT and PATCH the
// second). A connection that is not TCP is taken for HTTP/1.1.
func peekPreface(c net.Conn) (bool, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return false, nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false, err
	}
	var buf [len(h2Preface)]byte
	n, last := 0, -1
	var errno syscall.Errno
	for {
		err = rc.Read(func(fd uintptr) bool {
			for {
				r, _, e := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
					syscall.MSG_PEEK, 0, 0)
				switch e {
				case syscall.EINTR:
					continue
				case syscall.EAGAIN:
					return false
				}
				n, errno = int(r), e
				// The same bytes as last time: wait for more.
				return e != 0 || n != last
			}
		})
		switch {
		case err != nil:
			return false, err
		case errno != 0:
			return false, errno
		case n == 0:
			return false, io.EOF
		case !strings.HasPrefix(h2Preface, string(buf[:n])):
			return false, nil
		case n == len(buf):
			return true, nil
		}
		last = n
	}
}
