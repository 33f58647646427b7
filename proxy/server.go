package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Server.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultServerIdleTimeout = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
	// DefaultMaxConcurrentStreams is Go's own HTTP/2 default, applied to
	// HTTP/3 too.
	DefaultMaxConcurrentStreams = 250

	// Defaults that apply on a Public server only.

	// DefaultMaxConnsPerIP allows a large NAT (an office, a carrier-grade
	// NAT) its browsers at 6 HTTP/1.1 connections each, or hundreds of
	// HTTP/2 users, while one address cannot hold thousands of idle
	// connections.
	DefaultMaxConnsPerIP = 256
	// DefaultMaxBodyBytes: 1 GiB. Exactly this much is accepted.
	DefaultMaxBodyBytes = 1 << 30
	// DefaultMinBodyRate (bytes per second) and DefaultBodyRateWindow:
	// a request body must deliver 1 KiB/s averaged over each 20 s spent
	// waiting for it, i.e. 20 KiB per window. Any real link, even 2G
	// mobile at a few KB/s, clears it; a slowloris-style client must
	// send 1 KiB/s for each connection it holds. Apache's mod_reqtimeout
	// uses the same shape (20 s, then a minimum rate of 500 B/s).
	DefaultMinBodyRate    = 1 << 10
	DefaultBodyRateWindow = 20 * time.Second
	// DefaultSendTimeout: a client must take some of a response within
	// 60 s of each write, as nginx's send_timeout; a response piece is at
	// most 256 KiB, so any client reading 4.3 KiB/s or faster is never cut.
	DefaultSendTimeout = 60 * time.Second

	// h2HeaderDecodeFactor: Go's HTTP/2 server decodes header lists up
	// to its MaxHeaderBytes and answers a larger one by closing the
	// connection (COMPRESSION_ERROR for one large field, PROTOCOL_ERROR
	// for many), killing every stream on it and making clients retry.
	// meshd lets Go decode up to this many times Server.MaxHeaderBytes
	// and answers what is over the limit with 431 in the guard. The
	// decoded fields live only until the guard answers; 4 × 64 KiB per
	// connection is what one 256 KiB read buffer would cost.
	h2HeaderDecodeFactor = 4

	// publicMaxReadFrameSize is SETTINGS_MAX_FRAME_SIZE on a Public
	// server: the protocol's initial value (RFC 9113 §6.5.2).
	publicMaxReadFrameSize = 16 << 10
)

// Server is one listener: plain HTTP/1.1, or TLS with HTTP/2 and HTTP/1.1
// chosen by ALPN, optionally with HTTP/3 on UDP at the same address. Set the
// fields, then Start; Shutdown drains it. A Server is started at most once.
//
// Limits marked "(public)" below default to the stated value when Public is
// set and to no limit otherwise; a positive value applies on any server,
// and a negative value turns the limit off.
type Server struct {
	// Addr is the "host:port" to listen on; port 0 picks a free port.
	// Required.
	Addr string
	// TLS enables TLS with ALPN "h2" and "http/1.1"; it must provide a
	// certificate (Certificates, GetCertificate or GetConfigForClient) and
	// is cloned at Start. Nil means plain HTTP/1.1 only: no h2c, because
	// meshd only speaks cleartext on loopback to applications.
	TLS *tls.Config
	// Handler serves every request. Required.
	Handler http.Handler
	// Hold, when set, makes the TCP listener accept connections only once
	// Hold is closed: Start still binds the port (a port in use is an
	// error at once, and the address is known), but a client's connection
	// waits in the kernel's backlog, unanswered, until then, instead of
	// reaching a handler that cannot serve it yet (a sidecar before its
	// first catalog). HTTP/3, when on, is not held. Default nil: accept
	// from Start.
	Hold <-chan struct{}
	// Logger receives listener errors; TLS handshake failures (scanners,
	// clients that give up) at debug level, others at warn.
	// Default slog.Default().
	Logger *slog.Logger
	// ReadHeaderTimeout bounds reading a request's header section, the
	// defence against slow-header clients. Default 10 s. Bodies have no
	// deadline: they stream, and uploads may take long.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle for this long.
	// Default 120 s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's header section; a larger one gets
	// 431 Request Header Fields Too Large (RFC 6585 §5). On HTTP/2 the
	// size is the header list size of RFC 9113 §6.5.2 (32 bytes per
	// field on top of name and value), and the connection stays open for
	// other streams as long as the list fits h2HeaderDecodeFactor times
	// the limit, which is what SETTINGS_MAX_HEADER_LIST_SIZE advertises;
	// beyond that the connection is closed, as HPACK state cannot be
	// kept without decoding everything. HTTP/3: the QPACK-decoded size.
	// Default 64 KiB.
	MaxHeaderBytes int

	// Public marks a listener that untrusted clients reach (the edge's
	// public HTTPS and HTTP listeners). It turns on the "(public)" limits
	// below and rejects with 400:
	//   - a Host that is not a valid uri-host[:port] (see validHost);
	//   - on HTTP/2, a Host field that differs from :authority (RFC 9113
	//     §8.3.1; quic-go already rejects this on HTTP/3);
	//   - an absolute-form target (RFC 9112 §3.2.2) with userinfo (RFC
	//     9110 §4.2.4), with a scheme other than the connection's, or,
	//     over TLS, naming another host than the TLS server name.
	// It also keeps HTTP/2 frames at 16 KiB (SETTINGS_MAX_FRAME_SIZE, RFC
	// 9113 §4.2) instead of Go's 1 MiB, bounding per-connection buffers.
	// Default false: mesh listeners serve mTLS-verified peers, and on a
	// sidecar's outbound listener the app sends absolute-form targets
	// such as "GET http://web.mesh/" as to an HTTP proxy.
	Public bool
	// HTTP3 also serves Handler over HTTP/3 (RFC 9114) on UDP at the same
	// address and port as the TCP listener, with the same limits, and
	// advertises it in an Alt-Svc field (RFC 7838) on every response sent
	// over TCP. Requires TLS allowing TLS 1.3. Default false.
	HTTP3 bool
	// HTTP3Datagrams makes the HTTP/3 listener a mesh hop's: HTTP
	// Datagrams (RFC 9297) on, so that CONNECT-UDP tunnels from meshd
	// peers (Pool.UDPOverHTTP3) carry each UDP payload in one QUIC
	// DATAGRAM frame; packets of 1,452 bytes from the first (see
	// h3PacketSize); and no Alt-Svc on TCP responses, since peers dial
	// UDP on their own and the field would travel on towards users.
	// Requires HTTP3. Default false.
	HTTP3Datagrams bool
	// Allow0RTT accepts TLS 1.3 early data on HTTP/3. Early data can be
	// replayed by an attacker (RFC 8446 §8), so only GET, HEAD and
	// OPTIONS are served from it, forwarded with "Early-Data: 1"; any
	// other method gets 425 Too Early and the client retries after the
	// handshake (RFC 8470). Requires HTTP3. Default false.
	Allow0RTT bool
	// H2C makes a plain listener (TLS nil) serve HTTP/2 with prior
	// knowledge (RFC 9113 §3.3) besides HTTP/1.1: a connection that opens
	// with the HTTP/2 preface goes to net/http's HTTP/2 server (h2c.go).
	// For a sidecar's outbound listener, where gRPC clients call other
	// services in plain text. Ignored with TLS, which chooses HTTP/2 by
	// ALPN. Default false.
	H2C bool
	// MaxConcurrentStreams bounds the requests one HTTP/2 or HTTP/3
	// connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS,
	// RFC 9113 §6.5.2; QUIC MAX_STREAMS, RFC 9000 §4.6). Default 250.
	MaxConcurrentStreams int
	// ProxyProtocolFrom lists the load balancers in front of this
	// listener that announce each client with a PROXY header (v1 or v2,
	// see ProxyProtoListener): a TCP connection from one of them must
	// start with a header, whose client address the server then uses
	// (X-Forwarded-For, per-IP limits, logs). Connections from elsewhere
	// are served as they come. HTTP/3 has no PROXY header. Default none.
	ProxyProtocolFrom []netip.Prefix
	// MaxConnsPerIP (public) bounds the open connections (TCP and QUIC
	// together) of one client IP address. A connection over the limit is
	// closed as soon as it is accepted, before its TLS handshake, and
	// logged at most once per 10 s; other addresses are unaffected.
	// Default 256 (DefaultMaxConnsPerIP).
	MaxConnsPerIP int
	// MaxBodyBytes (public) bounds a request body: a declared
	// Content-Length above it gets 413 before any byte is read, a body
	// that grows past it is cut and the request answered with 413 if no
	// response was sent yet. Default 1 GiB (exactly 1 GiB passes).
	MaxBodyBytes int64
	// MinBodyRate (public) is the minimum rate, in bytes per second, at
	// which a request body must arrive, averaged over each BodyRateWindow
	// spent waiting for it: a body that delivers less is cut and the
	// request answered with 408 if no response was sent yet. Time the
	// handler spends not reading (upstream back-pressure) does not count,
	// nor does anything after the response began: the body is then one
	// direction of a stream the upstream answers (a gRPC bidirectional
	// call), which may rightly be idle. Default 1 KiB/s
	// (DefaultMinBodyRate).
	MinBodyRate int64
	// BodyRateWindow is the span MinBodyRate is measured over; a body
	// that sends nothing at all is cut after one window. Default 20 s.
	BodyRateWindow time.Duration
	// SendTimeout (public) closes an HTTP/1.1 connection when a write of
	// its response (at most 256 KiB) is not taken by the client within
	// this long: a client that stops reading cannot hold a connection
	// and its buffers forever. Default 60 s (DefaultSendTimeout).
	SendTimeout time.Duration

	inflight atomic.Int64

	mu      sync.Mutex
	started bool
	srv     *http.Server // HTTP/2; nil without TLS
	h1      *h1srv
	guard   *guard
	ln      net.Listener
	h3      *h3Server     // nil without HTTP3
	lim     *ipLimiter    // nil without a per-IP limit
	done    chan struct{} // closed when Serve returned
}

// ServerStats are a Server's counters since Start.
type ServerStats struct {
	// RefusedConns counts connections closed at accept because their
	// client IP was at MaxConnsPerIP.
	RefusedConns int64
}

// Stats returns the server's counters. It is safe to call at any time.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	lim := s.lim
	s.mu.Unlock()
	var st ServerStats
	if lim != nil {
		st.RefusedConns = lim.rejected.Load()
	}
	return st
}

// Validate reports a missing or bad field.
func (s *Server) Validate() error {
	if s.Addr == "" {
		return errors.New("proxy: server: Addr is required")
	}
	if _, _, err := net.SplitHostPort(s.Addr); err != nil {
		return fmt.Errorf("proxy: server: Addr %q: %w", s.Addr, err)
	}
	switch {
	case s.Handler == nil:
		return errors.New("proxy: server: Handler is required")
	case s.ReadHeaderTimeout < 0:
		return fmt.Errorf("proxy: server: ReadHeaderTimeout %v is negative", s.ReadHeaderTimeout)
	case s.IdleTimeout < 0:
		return fmt.Errorf("proxy: server: IdleTimeout %v is negative", s.IdleTimeout)
	case s.MaxHeaderBytes < 0:
		return fmt.Errorf("proxy: server: MaxHeaderBytes %d is negative", s.MaxHeaderBytes)
	case s.TLS != nil && len(s.TLS.Certificates) == 0 && s.TLS.GetCertificate == nil && s.TLS.GetConfigForClient == nil:
		return errors.New("proxy: server: TLS has no certificate (Certificates, GetCertificate or GetConfigForClient)")
	case s.HTTP3 && s.TLS == nil:
		return errors.New("proxy: server: HTTP3 requires TLS")
	case s.HTTP3 && noTLS13(s.TLS):
		return errors.New("proxy: server: HTTP3 requires TLS 1.3, but TLS.MaxVersion rules it out")
	case s.HTTP3Datagrams && !s.HTTP3:
		return errors.New("proxy: server: HTTP3Datagrams requires HTTP3")
	case s.Allow0RTT && !s.HTTP3:
		return errors.New("proxy: server: Allow0RTT requires HTTP3 (early data exists only on HTTP/3 here)")
	case s.MaxConcurrentStreams < 0:
		return fmt.Errorf("proxy: server: MaxConcurrentStreams %d is negative", s.MaxConcurrentStreams)
	case s.BodyRateWindow < 0:
		return fmt.Errorf("proxy: server: BodyRateWindow %v is negative", s.BodyRateWindow)
	case s.BodyRateWindow > 0 && s.BodyRateWindow < 100*time.Millisecond:
		return fmt.Errorf("proxy: server: BodyRateWindow %v is below 100ms", s.BodyRateWindow)
	}
	return nil
}

// publicLimit resolves a "(public)" limit: negative turns it off (0),
// positive applies, zero takes def on a Public server and is off otherwise.
func publicLimit[T int | int64 | time.Duration](v, def T, public bool) T {
	switch {
	case v < 0:
		return 0
	case v > 0:
		return v
	case public:
		return def
	}
	return 0
}

// limits resolves the per-request limits from the fields.
func (s *Server) limits() limits {
	l := limits{
		public:    s.Public,
		maxHeader: orDefault(s.MaxHeaderBytes, DefaultMaxHeaderBytes),
		maxBody:   publicLimit(s.MaxBodyBytes, DefaultMaxBodyBytes, s.Public),
		minRate:   publicLimit(s.MinBodyRate, DefaultMinBodyRate, s.Public),
		window:    orDefault(s.BodyRateWindow, DefaultBodyRateWindow),
		allow0RTT: s.Allow0RTT,
	}
	return l
}

// Start validates the fields and binds the listener (and, with HTTP3, the
// UDP socket on the same port) synchronously, so a port in use is reported
// here, naming the address ("listen tcp 127.0.0.1:8080: bind: address
// already in use"); then it serves in the background. ctx bounds the bind
// only: stop the server with Shutdown.
func (s *Server) Start(ctx context.Context) error {
	if err := s.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return fmt.Errorf("proxy: server %s already started", s.Addr)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	logger := s.Logger
	if logger == nil {
		logger = slog.Default()
	}
	bound := ln.Addr().String()
	if len(s.ProxyProtocolFrom) > 0 {
		ln = &ProxyProtoListener{Listener: ln, Trusted: s.ProxyProtocolFrom, Logger: logger}
	}
	var lim *ipLimiter
	if n := publicLimit(s.MaxConnsPerIP, DefaultMaxConnsPerIP, s.Public); n > 0 {
		lim = newIPLimiter(n, logger, bound)
		ln = &limitListener{Listener: ln, lim: lim}
	}
	if s.Hold != nil {
		ln = &holdListener{Listener: ln, hold: s.Hold, closed: make(chan struct{})}
	}
	g := &guard{h: s.Handler, n: &s.inflight, lim: s.limits()}
	var h3 *h3Server
	if s.HTTP3 {
		h3, err = s.startHTTP3(ctx, bound, g, lim, logger)
		if err != nil {
			_ = ln.Close()
			return err
		}
	}
	h1 := &h1srv{
		handler:        g,
		headerTimeout:  orDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout),
		idleTimeout:    orDefault(s.IdleTimeout, DefaultServerIdleTimeout),
		sendTimeout:    publicLimit(s.SendTimeout, DefaultSendTimeout, s.Public),
		maxHeaderBytes: orDefault(s.MaxHeaderBytes, DefaultMaxHeaderBytes),
		logger:         logger,
		addr:           bound,
	}
	var (
		srv    *http.Server // HTTP/2 connections; nil without TLS or H2C
		hl     *handoffListener
		tlsCfg *tls.Config
	)
	if s.TLS != nil || s.H2C {
		// HTTP/1.1 is meshd's own server (h1server.go); HTTP/2
		// connections go to net/http's, which gets them after the TLS
		// handshake (or, with H2C, once they opened with the HTTP/2
		// preface) through a handoff listener.
		var protocols http.Protocols
		if s.TLS != nil {
			tlsCfg = s.TLS.Clone()
			if len(tlsCfg.NextProtos) == 0 {
				tlsCfg.NextProtos = []string{"h2", "http/1.1"}
			}
			protocols.SetHTTP1(true)
			protocols.SetHTTP2(true)
		} else {
			protocols.SetUnencryptedHTTP2(true)
		}
		srv = &http.Server{
			Handler:           g,
			ReadHeaderTimeout: h1.headerTimeout,
			IdleTimeout:       h1.idleTimeout,
			MaxHeaderBytes:    h2HeaderDecodeFactor * h1.maxHeaderBytes, // the guard applies MaxHeaderBytes itself
			ErrorLog:          log.New(serverLogWriter{logger: logger, addr: bound}, "", 0),
			Protocols:         &protocols,
			TLSConfig:         tlsCfg,
		}
		hl = newHandoffListener(ln.Addr())
		// Per-connection rapid-reset accounting (see h2conn); the state
		// hook releases held handlers when the connection ends.
		maxStreams := orDefault(s.MaxConcurrentStreams, DefaultMaxConcurrentStreams)
		var h2conns sync.Map // net.Conn → *h2conn
		srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			hc := newH2Conn(c, maxStreams)
			h2conns.Store(c, hc)
			return context.WithValue(ctx, h2ConnKey{}, hc)
		}
		srv.ConnState = func(c net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				if hc, ok := h2conns.LoadAndDelete(c); ok {
					hc.(*h2conn).end()
				}
			}
		}
		// Go's HTTP/2 server carries the mitigations for rapid reset
		// (CVE-2023-44487: at most MaxConcurrentStreams handlers run per
		// connection, 4× that may wait, beyond that GOAWAY
		// ENHANCE_YOUR_CALM; the guard makes it trip, see h2conn) and
		// for CONTINUATION floods
		// (CVE-2023-45288: header bytes beyond MaxHeaderBytes close the
		// connection; see h2HeaderDecodeFactor); h2abuse_test.go shows both.
		srv.HTTP2 = &http.HTTP2Config{
			MaxConcurrentStreams: maxStreams,
			CountError: func(errType string) {
				logger.Debug("proxy: http2 error", "addr", bound, "type", errType)
			},
		}
		if s.Public {
			// Go's server reads frames of up to 1 MiB and keeps a read
			// buffer the size of the largest one per connection; the
			// RFC 9113 §4.2 default of 16 KiB bounds what a hostile
			// client makes each connection hold (the per-IP limit
			// times 1 MiB would be 256 MiB per address). Large bodies
			// still stream: they just take more frames.
			srv.HTTP2.MaxReadFrameSize = publicMaxReadFrameSize
		}
	}
	s.srv, s.h1, s.ln, s.h3, s.lim, s.guard, s.started = srv, h1, ln, h3, lim, g, true
	s.done = make(chan struct{})
	var wg sync.WaitGroup
	if srv != nil {
		wg.Go(func() {
			if err := srv.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error("proxy: HTTP/2 server stopped", "addr", bound, "err", err)
			}
		})
	}
	wg.Go(func() { s.acceptLoop(ln, tlsCfg, h1, hl, logger, bound) })
	go func() {
		wg.Wait()
		close(s.done)
	}()
	return nil
}

// holdListener accepts nothing until hold is closed (Server.Hold); Close
// ends a wait.
type holdListener struct {
	net.Listener
	hold      <-chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *holdListener) Accept() (net.Conn, error) {
	select {
	case <-l.hold:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	return l.Listener.Accept()
}

func (l *holdListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// acceptLoop accepts connections until ln is closed. Each gets its own
// goroutine at once: the TLS handshake, then HTTP/1.1 here or HTTP/2 on
// net/http's server, by ALPN.
func (s *Server) acceptLoop(ln net.Listener, tlsCfg *tls.Config, h1 *h1srv, hl *handoffListener, logger *slog.Logger, bound string) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			logger.Warn("proxy: accept failed", "addr", bound, "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if tlsCfg == nil {
			if hl != nil {
				go servePlainH2C(c, h1, hl, logger, bound)
				continue
			}
			go h1.serve(c, nil)
			continue
		}
		go s.serveTLS(c, tlsCfg, h1, hl, logger, bound)
	}
}

// serveTLS runs the handshake, within the header timeout, and hands the
// connection to the server of the negotiated protocol.
func (s *Server) serveTLS(c net.Conn, cfg *tls.Config, h1 *h1srv, hl *handoffListener, logger *slog.Logger, bound string) {
	// Two wrappers under TLS: the cork (corkConn), which Go's HTTP/2
	// server writes through, and raw system calls (rawConn), which the
	// HTTP/1.1 server turns on once the handshake chose it; then reads
	// and writes go straight to the TCP connection, past the cork.
	rc := newRawConn(newCorkConn(c))
	tc := tls.Server(rc, cfg)
	if h1.headerTimeout > 0 {
		_ = c.SetDeadline(time.Now().Add(h1.headerTimeout))
	}
	if err := tc.Handshake(); err != nil {
		// Scanners and clients that give up: routine on a public port.
		logger.Debug("proxy: TLS handshake error", "addr", bound, "remote", c.RemoteAddr().String(), "err", err)
		_ = c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	st := tc.ConnectionState()
	switch st.NegotiatedProtocol {
	case "h2":
		hl.push(tc)
	case "", "http/1.1":
		// Raw system calls under TLS too (rawtcp.go); HTTP/2 keeps
		// Go's own.
		rc.enable()
		h1.serve(tc, &st)
	default:
		// acme-tls/1 (RFC 8737): the handshake was the whole exchange.
		_ = tc.Close()
	}
}

// handoffListener passes connections whose TLS handshake chose HTTP/2 to
// net/http's server.
type handoffListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

// push hands c over, or closes it once the listener is closed.
func (l *handoffListener) push(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.closed:
		_ = c.Close()
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }

// SetBodyLimits changes MaxBodyBytes and MinBodyRate (0 their defaults
// on a Public server, negative no limit, as the fields) of a running
// server, for requests that start from now on: requests under way, and
// open connections otherwise, keep going (`meshd reload`). Before Start it
// does nothing; set the fields instead.
func (s *Server) SetBodyLimits(maxBody, minRate int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.guard == nil {
		return
	}
	s.MaxBodyBytes, s.MinBodyRate = maxBody, minRate
	l := s.limits()
	s.guard.live.Store(&l)
}

// BoundAddr returns the address the listener is bound to (with the port
// chosen for port 0), or "" before Start. (A method named Addr cannot exist
// beside the Addr field.)
func (s *Server) BoundAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// InFlight returns the number of requests being served now; drain logic
// polls it.
func (s *Server) InFlight() int64 { return s.inflight.Load() }

// Shutdown stops accepting connections, closes idle ones, waits for
// in-flight requests to finish (HTTP/2 clients get GOAWAY) and returns. When
// ctx ends first, the remaining connections are closed and ctx's error is
// returned. Shutdown before Start does nothing.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv, h1, ln, h3, done := s.srv, s.h1, s.ln, s.h3, s.done
	s.mu.Unlock()
	if h1 == nil {
		return nil
	}
	_ = ln.Close()
	// HTTP/3 drains beside TCP: its clients get GOAWAY at the same time.
	h3err := make(chan error, 1)
	if h3 != nil {
		go func() { h3err <- h3.shutdown(ctx) }()
	} else {
		h3err <- nil
	}
	h2err := make(chan error, 1)
	if srv != nil {
		go func() {
			err := srv.Shutdown(ctx)
			if err != nil {
				_ = srv.Close()
			}
			h2err <- err
		}()
	} else {
		h2err <- nil
	}
	err := h1.shutdown(ctx)
	<-done // the accept loop and Serve return once their listeners close
	err = errors.Join(err, <-h2err, <-h3err)
	if err != nil {
		return fmt.Errorf("proxy: shutdown of %s: %w", s.Addr, err)
	}
	return nil
}

// serverLogWriter turns net/http's log lines into slog records. TLS
// handshake errors are routine on a public port and go to debug.
type serverLogWriter struct {
	logger *slog.Logger
	addr   string
}

func (w serverLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	level := slog.LevelWarn
	if strings.HasPrefix(msg, "http: TLS handshake error") {
		level = slog.LevelDebug
	}
	w.logger.Log(context.Background(), level, "proxy: "+msg, "addr", w.addr)
	return len(p), nil
}
