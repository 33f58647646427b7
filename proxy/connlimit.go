package proxy

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// rejectLogInterval spaces the warnings about refused connections: a flood
// from one address must not become a flood of log records.
const rejectLogInterval = 10 * time.Second

// ipLimiter counts open connections per client IP address, across the TCP
// and the QUIC listener of one Server. It is touched once when a connection
// opens and once when it closes, never per request.
type ipLimiter struct {
	max    int
	logger *slog.Logger
	addr   string // the listener, for the log

	mu    sync.Mutex
	conns map[netip.Addr]int

	rejected   atomic.Int64 // total refused
	suppressed atomic.Int64 // refused since the last warning
	lastLog    atomic.Int64 // unix nanoseconds of the last warning
}

func newIPLimiter(max int, logger *slog.Logger, addr string) *ipLimiter {
	return &ipLimiter{max: max, logger: logger, addr: addr, conns: make(map[netip.Addr]int)}
}

// acquire takes a slot for a connection from remote. It reports false, and
// logs (rate-limited), when the address already has max connections open.
// An address that does not parse (not expected from TCP or UDP) is keyed as
// the zero address, so it is still limited.
func (l *ipLimiter) acquire(remote net.Addr) (netip.Addr, bool) {
	ip := addrIP(remote)
	l.mu.Lock()
	n := l.conns[ip]
	if n >= l.max {
		l.mu.Unlock()
		l.reject(ip)
		return ip, false
	}
	l.conns[ip] = n + 1
	l.mu.Unlock()
	return ip, true
}

func (l *ipLimiter) release(ip netip.Addr) {
	l.mu.Lock()
	if n := l.conns[ip]; n <= 1 {
		delete(l.conns, ip)
	} else {
		l.conns[ip] = n - 1
	}
	l.mu.Unlock()
}

// open returns how many connections ip holds now (for tests).
func (l *ipLimiter) open(ip netip.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns[ip]
}

func (l *ipLimiter) reject(ip netip.Addr) {
	l.rejected.Add(1)
	l.suppressed.Add(1)
	now := time.Now().UnixNano()
	last := l.lastLog.Load()
	if now-last < int64(rejectLogInterval) || !l.lastLog.CompareAndSwap(last, now) {
		return
	}
	l.logger.Warn("proxy: connection refused, client IP at its connection limit",
		"addr", l.addr, "client", ip.String(), "limit", l.max,
		"refused_since_last_warning", l.suppressed.Swap(0))
}

func addrIP(a net.Addr) netip.Addr {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return ap.Addr().Unmap()
}

// limitListener closes connections over the per-IP limit as soon as they
// are accepted, before any TLS handshake work is spent on them; other
// addresses are unaffected.
type limitListener struct {
	net.Listener
	lim *ipLimiter
}

func (ln *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip, ok := ln.lim.acquire(c.RemoteAddr())
		if !ok {
			_ = c.Close()
			continue
		}
		return &limitConn{Conn: c, lim: ln.lim, ip: ip}, nil
	}
}

// limitConn gives its slot back on the first Close.
type limitConn struct {
	net.Conn
	lim    *ipLimiter
	ip     netip.Addr
	closed atomic.Bool
}

func (c *limitConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.lim.release(c.ip)
	}
	return c.Conn.Close()
}

// releaseWhenDone gives a QUIC connection's slot back when ctx (the
// connection's context) ends.
func (l *ipLimiter) releaseWhenDone(ctx context.Context, ip netip.Addr) {
	context.AfterFunc(ctx, func() { l.release(ip) })
}
