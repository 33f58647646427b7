package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3Server is a Server's HTTP/3 side: a UDP socket on the TCP listener's
// address and port, a QUIC transport on it, and quic-go's http3.Server.
type h3Server struct {
	srv    *http3.Server
	udp    net.PacketConn
	tr     *quic.Transport
	ln     http3.QUICListener
	done   chan struct{} // closed when ServeListener returned
	altSvc atomic.Pointer[[]string]
}

// quicListener is what both quic.Listener and quic.EarlyListener provide.
type quicListener interface {
	Accept(context.Context) (*quic.Conn, error)
	Addr() net.Addr
	Close() error
}

// startHTTP3 binds UDP at addr (the bound TCP address, so the port is the
// same) and serves g over HTTP/3; g advertises it on TCP responses from
// then on. On error nothing stays open.
func (s *Server) startHTTP3(ctx context.Context, addr string, g *guard, lim *ipLimiter, logger *slog.Logger) (*h3Server, error) {
	var lc net.ListenConfig
	udp, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("proxy: http3: %w", err)
	}
	streams := orDefault(s.MaxConcurrentStreams, DefaultMaxConcurrentStreams)
	qconf := &quic.Config{
		// quic-go's default is 100 bidirectional streams; the same bound
		// as HTTP/2 keeps the two protocols alike for a client.
		MaxIncomingStreams: int64(streams),
		// The handshake is the QUIC counterpart of reading a request
		// header: a client that stalls it is cut as soon.
		HandshakeIdleTimeout: orDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout),
		MaxIdleTimeout:       orDefault(s.IdleTimeout, DefaultServerIdleTimeout),
		// http3.Server would enable 0-RTT when given no Config: early
		// data is replayable (RFC 8446 §8), so it is opt-in here.
		Allow0RTT: s.Allow0RTT,
	}
	if s.HTTP3Datagrams {
		qconf.EnableDatagrams = true
		qconf.InitialPacketSize = h3PacketSize
	}
	// ALPN "h3" instead of the TCP listener's h2 and http/1.1; a
	// GetConfigForClient is wrapped the same way.
	tlsConf := http3.ConfigureTLSConfig(s.TLS)
	tr := &quic.Transport{Conn: udp}
	var ln quicListener
	if s.Allow0RTT {
		// The early listener hands out connections before the handshake
		// completes, so requests in 0-RTT data can be served.
		ln, err = tr.ListenEarly(tlsConf, qconf)
	} else {
		// Connections come out after the handshake: the client proved
		// its address before it takes a slot of the per-IP limit.
		ln, err = tr.Listen(tlsConf, qconf)
	}
	if err != nil {
		_ = tr.Close()
		_ = udp.Close()
		return nil, fmt.Errorf("proxy: http3: listen on %s: %w", addr, err)
	}
	var qln http3.QUICListener = ln
	if lim != nil {
		qln = &quicLimitListener{quicListener: ln, lim: lim}
	}
	_, port, _ := net.SplitHostPort(udp.LocalAddr().String())
	hs := &h3Server{
		srv: &http3.Server{
			Addr:           net.JoinHostPort("", port),
			Handler:        g,
			QUICConfig:     qconf,
			MaxHeaderBytes: orDefault(s.MaxHeaderBytes, DefaultMaxHeaderBytes),
			IdleTimeout:    orDefault(s.IdleTimeout, DefaultServerIdleTimeout),
			Logger:         logger,
			// Also announces SETTINGS_H3_DATAGRAM; extended CONNECT
			// (RFC 9220) quic-go always offers.
			EnableDatagrams: s.HTTP3Datagrams,
		},
		udp:  udp,
		tr:   tr,
		ln:   qln,
		done: make(chan struct{}),
	}
	// Set before any request can run, on either protocol.
	if !s.HTTP3Datagrams {
		g.altSvc = hs.altSvcValue
	}
	go func() {
		defer close(hs.done)
		if err := hs.srv.ServeListener(qln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("proxy: http3 listener stopped", "addr", udp.LocalAddr().String(), "err", err)
		}
	}()
	return hs, nil
}

// altSvcValue returns the Alt-Svc field value advertising this HTTP/3
// listener, from http3.Server.SetQUICHeaders (h3=":port"; ma=2592000). It
// is computed once, as soon as the listener is registered with the server,
// and shared read-only by every response afterwards: no lock per request.
func (hs *h3Server) altSvcValue() []string {
	if v := hs.altSvc.Load(); v != nil {
		return *v
	}
	hdr := make(http.Header, 1)
	if err := hs.srv.SetQUICHeaders(hdr); err != nil {
		return nil // ServeListener has not registered the listener yet
	}
	v := hdr["Alt-Svc"]
	v = v[:len(v):len(v)] // an append by a later handler must copy
	hs.altSvc.Store(&v)
	return v
}

// shutdown sends GOAWAY on every HTTP/3 connection, waits for their
// requests until ctx ends, then closes everything.
func (hs *h3Server) shutdown(ctx context.Context) error {
	err := hs.srv.Shutdown(ctx)
	_ = hs.ln.Close()
	<-hs.done
	_ = hs.tr.Close()
	_ = hs.udp.Close()
	return err
}

// quicLimitListener applies the per-IP connection limit to QUIC
// connections, sharing the TCP listener's counts.
type quicLimitListener struct {
	quicListener
	lim *ipLimiter
}

func (ln *quicLimitListener) Accept(ctx context.Context) (*quic.Conn, error) {
	for {
		c, err := ln.quicListener.Accept(ctx)
		if err != nil {
			return nil, err
		}
		ip, ok := ln.lim.acquire(c.RemoteAddr())
		if !ok {
			_ = c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeExcessiveLoad), "connection limit")
			continue
		}
		ln.lim.releaseWhenDone(c.Context(), ip)
		return c, nil
	}
}

// noTLS13 reports whether c rules out TLS 1.3, which QUIC requires
// (RFC 9001 §4.2).
func noTLS13(c *tls.Config) bool {
	return c.MaxVersion != 0 && c.MaxVersion < tls.VersionTLS13
}
