package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The PROXY protocol (HAProxy's specification, versions 1 and 2): a header
// at the start of a TCP connection that says whose connection it really
// is. meshd writes version 2 towards an app that asks for it (the app then
// sees the public client's address, not its sidecar's), and reads either
// version from a load balancer in front of an edge, only when the
// connection comes from an address trusted to send one.

// proxyV2Sig is the 12-byte signature of a version 2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// maxProxyV2Len bounds the address and TLV part of a version 2 header
// meshd accepts: addresses take at most 216 bytes (AF_UNIX); TLVs from a
// load balancer (its SSL details, a unique ID) fit in a few hundred.
const maxProxyV2Len = 1024

// AppendProxyV2 appends a version 2 PROXY header for a connection from src
// to dst (*net.TCPAddr or *net.UDPAddr): PROXY with TCP or UDP over IPv4,
// or IPv6 when either address is IPv6 (an IPv4 one is then mapped); LOCAL
// when an address is missing or of another kind.
func AppendProxyV2(b []byte, src, dst net.Addr) []byte {
	b = append(b, proxyV2Sig...)
	s, sok := addrPort(src)
	d, dok := addrPort(dst)
	_, udp := src.(*net.UDPAddr)
	if !sok || !dok {
		return append(b, 0x20, 0x00, 0, 0) // LOCAL, AF_UNSPEC
	}
	b = append(b, 0x21) // version 2, PROXY
	proto := byte(0x1)  // STREAM
	if udp {
		proto = 0x2 // DGRAM
	}
	if s.Addr().Is4() && d.Addr().Is4() {
		b = append(b, 0x10|proto, 0, 12)
		a4, d4 := s.Addr().As4(), d.Addr().As4()
		b = append(append(b, a4[:]...), d4[:]...)
	} else {
		b = append(b, 0x20|proto, 0, 36)
		a16, d16 := s.Addr().As16(), d.Addr().As16()
		b = append(append(b, a16[:]...), d16[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, s.Port())
	return binary.BigEndian.AppendUint16(b, d.Port())
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		if a == nil {
			return netip.AddrPort{}, false
		}
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.Addr().IsValid()
	case *net.UDPAddr:
		if a == nil {
			return netip.AddrPort{}, false
		}
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.Addr().IsValid()
	}
	return netip.AddrPort{}, false
}

// ProxyHeader is what a PROXY header says.
type ProxyHeader struct {
	Src, Dst netip.AddrPort // zero for LOCAL and UNKNOWN
	// Local: the connection is the load balancer's own (a health check):
	// it carries no client address.
	Local bool
}

// ReadProxyHeader reads a PROXY header, version 1 or 2, from the start of
// br and nothing after it. Anything else (no header, a malformed one) is an
// error that says what is wrong.
func ReadProxyHeader(br *bufio.Reader) (*ProxyHeader, error) {
	first, err := br.Peek(1)
	if err != nil {
		return nil, fmt.Errorf("proxy protocol: %w", err)
	}
	switch first[0] {
	case '\r':
		return readProxyV2(br)
	case 'P':
		return readProxyV1(br)
	}
	return nil, errors.New("proxy protocol: no PROXY header")
}

func readProxyV2(br *bufio.Reader) (*ProxyHeader, error) {
	var fixed [16]byte
	if _, err := io.ReadFull(br, fixed[:]); err != nil {
		return nil, fmt.Errorf("proxy protocol v2: header: %w", err)
	}
	if !bytes.Equal(fixed[:12], proxyV2Sig) {
		return nil, errors.New("proxy protocol v2: bad signature")
	}
	if fixed[12]>>4 != 2 {
		return nil, fmt.Errorf("proxy protocol v2: version %d", fixed[12]>>4)
	}
	cmd := fixed[12] & 0xf
	fam, proto := fixed[13]>>4, fixed[13]&0xf
	n := int(binary.BigEndian.Uint16(fixed[14:]))
	if n > maxProxyV2Len {
		return nil, fmt.Errorf("proxy protocol v2: length %d over %d", n, maxProxyV2Len)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, fmt.Errorf("proxy protocol v2: addresses: %w", err)
	}
	switch cmd {
	case 0x0:
		return &ProxyHeader{Local: true}, nil // addresses, if any, are ignored
	case 0x1:
	default:
		return nil, fmt.Errorf("proxy protocol v2: command %d", cmd)
	}
	if proto != 0x1 && proto != 0x2 && proto != 0x0 {
		return nil, fmt.Errorf("proxy protocol v2: transport %d", proto)
	}
	h := &ProxyHeader{}
	switch fam {
	case 0x0: // AF_UNSPEC: no address
	case 0x1:
		if n < 12 {
			return nil, fmt.Errorf("proxy protocol v2: %d bytes for IPv4 addresses, want 12", n)
		}
		h.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:]))
	case 0x2:
		if n < 36 {
			return nil, fmt.Errorf("proxy protocol v2: %d bytes for IPv6 addresses, want 36", n)
		}
		h.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])).Unmap(), binary.BigEndian.Uint16(body[32:]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])).Unmap(), binary.BigEndian.Uint16(body[34:]))
	case 0x3: // AF_UNIX: no IP address to report
	default:
		return nil, fmt.Errorf("proxy protocol v2: address family %d", fam)
	}
	return h, nil
}

// maxProxyV1Len is the longest version 1 line, CRLF included.
const maxProxyV1Len = 107

func readProxyV1(br *bufio.Reader) (*ProxyHeader, error) {
	var line []byte
	for len(line) < maxProxyV1Len {
		c, err := br.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("proxy protocol v1: %w", err)
		}
		line = append(line, c)
		if c == '\n' {
			break
		}
	}
	if !bytes.HasSuffix(line, []byte("\r\n")) {
		return nil, errors.New("proxy protocol v1: no CRLF within 107 bytes")
	}
	f := bytes.Split(line[:len(line)-2], []byte(" "))
	if string(f[0]) != "PROXY" || len(f) < 2 {
		return nil, errors.New("proxy protocol v1: not a PROXY line")
	}
	switch string(f[1]) {
	case "UNKNOWN":
		return &ProxyHeader{Local: true}, nil
	case "TCP4", "TCP6":
	default:
		return nil, fmt.Errorf("proxy protocol v1: protocol %q", truncateBytes(f[1], 8))
	}
	if len(f) != 6 {
		return nil, fmt.Errorf("proxy protocol v1: %d fields, want 6", len(f))
	}
	src, err1 := netip.ParseAddr(string(f[2]))
	dst, err2 := netip.ParseAddr(string(f[3]))
	sp, err3 := strconv.ParseUint(string(f[4]), 10, 16)
	dp, err4 := strconv.ParseUint(string(f[5]), 10, 16)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return nil, fmt.Errorf("proxy protocol v1: bad address or port: %w", err)
	}
	if (string(f[1]) == "TCP4") != (src.Is4() && dst.Is4()) {
		return nil, errors.New("proxy protocol v1: addresses do not match the protocol")
	}
	return &ProxyHeader{Src: netip.AddrPortFrom(src, uint16(sp)), Dst: netip.AddrPortFrom(dst, uint16(dp))}, nil
}

func truncateBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}

// ProxyProtoListener wraps a listener whose connections come through a
// load balancer that sends a PROXY header: a connection from a Trusted
// address must start with one, and its RemoteAddr is then the client's.
// A connection from any other address is passed on untouched, its first
// bytes never read as a header: only a trusted peer may say who the client
// is. A trusted connection without a valid header within HeaderTimeout is
// closed and logged; the listener goes on.
type ProxyProtoListener struct {
	net.Listener
	// Trusted are the addresses of the load balancers. Required.
	Trusted []netip.Prefix
	// HeaderTimeout bounds the wait for the header. Default 5 s.
	HeaderTimeout time.Duration
	// Logger receives refused headers at warn. Default slog.Default().
	Logger *slog.Logger

	accepted atomic.Int64
	refused  atomic.Int64

	start, stop sync.Once
	ready       chan net.Conn
	closed      chan struct{}
	errc        chan error
}

// ProxyProtoStats counts the headers a ProxyProtoListener read.
type ProxyProtoStats struct {
	Accepted, Refused int64
}

// Stats returns the listener's counters.
func (l *ProxyProtoListener) Stats() ProxyProtoStats {
	return ProxyProtoStats{Accepted: l.accepted.Load(), Refused: l.refused.Load()}
}

func (l *ProxyProtoListener) trusted(a net.Addr) bool {
	ap, ok := addrPort(a)
	if !ok {
		return false
	}
	for _, p := range l.Trusted {
		if p.Contains(ap.Addr()) {
			return true
		}
	}
	return false
}

// Accept returns the next connection: an untrusted one as it came, a
// trusted one once its header was read. Headers are read on goroutines of
// their own: a slow load balancer connection does not hold up the others.
func (l *ProxyProtoListener) Accept() (net.Conn, error) {
	l.start.Do(func() {
		l.ready = make(chan net.Conn)
		l.closed = make(chan struct{})
		l.errc = make(chan error, 1)
		go l.acceptLoop()
	})
	select {
	case c := <-l.ready:
		return c, nil
	case err := <-l.errc:
		l.errc <- err // every later Accept says the same
		return nil, err
	}
}

// Close closes the listener; connections not yet handed out are closed.
func (l *ProxyProtoListener) Close() error {
	l.start.Do(func() { // closed before any Accept: Accept says so
		l.ready = make(chan net.Conn)
		l.closed = make(chan struct{})
		l.errc = make(chan error, 1)
		l.errc <- net.ErrClosed
	})
	l.stop.Do(func() {
		if l.closed != nil {
			close(l.closed)
		}
	})
	return l.Listener.Close()
}

func (l *ProxyProtoListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.errc <- err
			return
		}
		if !l.trusted(c.RemoteAddr()) {
			l.handOut(c)
			continue
		}
		go func() {
			pc, err := l.readHeader(c)
			if err != nil {
				c.Close()
				return
			}
			l.handOut(pc)
		}()
	}
}

func (l *ProxyProtoListener) handOut(c net.Conn) {
	select {
	case l.ready <- c:
	case <-l.closed:
		c.Close()
	}
}

// readHeader reads the header of a trusted connection.
func (l *ProxyProtoListener) readHeader(c net.Conn) (net.Conn, error) {
	t := l.HeaderTimeout
	if t <= 0 {
		t = 5 * time.Second
	}
	_ = c.SetReadDeadline(time.Now().Add(t))
	br := bufio.NewReaderSize(c, 256)
	h, err := ReadProxyHeader(br)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		l.refused.Add(1)
		logger := l.Logger
		if logger == nil {
			logger = slog.Default()
		}
		logger.Warn("proxy: connection from a trusted load balancer without a valid PROXY header: closed",
			"remote", c.RemoteAddr().String(), "err", err)
		return nil, err
	}
	l.accepted.Add(1)
	pc := &proxyConn{Conn: c, br: br, remote: c.RemoteAddr()}
	if !h.Local && h.Src.IsValid() {
		pc.remote = net.TCPAddrFromAddrPort(h.Src)
	}
	return pc, nil
}

// proxyConn is a trusted connection after its header: what the header
// reader buffered is read first, and RemoteAddr is the client's (the load
// balancer's own for a LOCAL header).
type proxyConn struct {
	net.Conn
	br     *bufio.Reader
	remote net.Addr
}

func (c *proxyConn) Read(p []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(p)
		}
		c.br = nil
	}
	return c.Conn.Read(p)
}

func (c *proxyConn) RemoteAddr() net.Addr { return c.remote }

// CloseWrite half-closes the connection under it.
func (c *proxyConn) CloseWrite() error { return closeWrite(c.Conn) }
