package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Pool.
const (
	// DefaultMaxIdlePerUpstream is Pool.MaxIdlePerUpstream's default. Go's
	// own default (http.DefaultMaxIdleConnsPerHost) is 2: with more
	// concurrent requests than that, every response beyond the second
	// closes its connection and the next request pays a new TCP (and TLS)
	// handshake, which halves a proxy's throughput.
	DefaultMaxIdlePerUpstream = 256
	// DefaultDialTimeout is Pool.DialTimeout's default.
	DefaultDialTimeout = 5 * time.Second
	// DefaultResponseHeaderTimeout is Pool.ResponseHeaderTimeout's default.
	DefaultResponseHeaderTimeout = 60 * time.Second
	// DefaultIdleTimeout is Pool.IdleTimeout's default.
	DefaultIdleTimeout = 90 * time.Second

	// expectContinueTimeout bounds how long a request with
	// "Expect: 100-continue" waits for the upstream's 100 before its body
	// is sent anyway (RFC 9110 §10.1.1); the value of Go's DefaultTransport.
	expectContinueTimeout = time.Second
	// maxResponseHeaderBytes bounds an upstream's response header section.
	maxResponseHeaderBytes = 1 << 20
	// h2PingInterval: an HTTP/2 connection that received no frame for this
	// long is probed with a PING, so a black-holed upstream is noticed
	// before requests pile up on it (RFC 9113 §6.7).
	h2PingInterval = 30 * time.Second
)

// Pool holds reused connections to upstreams: one http.Transport per
// Upstream.Key, created on first use. The zero value is ready to use with
// the defaults below. Fields must not change after the first RoundTrip.
type Pool struct {
	// MaxIdlePerUpstream is how many idle HTTP/1.1 connections are kept per
	// upstream. Default 256 (DefaultMaxIdlePerUpstream; Go's default of 2
	// halves a proxy's throughput).
	MaxIdlePerUpstream int
	// DialTimeout bounds the TCP connect and the TLS handshake. Default 5 s.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an upstream's response
	// header after the request was written. Default 60 s.
	ResponseHeaderTimeout time.Duration
	// IdleTimeout closes connections idle for this long. Default 90 s.
	IdleTimeout time.Duration
	// HTTP2 selects the protocol for TLS upstreams: true offers h2 by ALPN
	// and multiplexes requests on one connection per upstream (a new one
	// only when the peer's stream limit is reached); false keeps a pool of
	// HTTP/1.1 connections. Plain upstreams use HTTP/1.1 unless
	// Upstream.H2C.
	//
	// Default false, by measurement: go test -run '^$' -bench 'ProxyTLS'
	// -benchtime=2s -count=8 (TLS upstream on loopback, 50 parallel
	// clients, 1 KiB GET responses, 2 shared cores, medians; CPU of the
	// whole process: clients, proxy and upstream):
	//
	//	            CPU per request   wall per request   allocs
	//	HTTP/1.1    82.3 µs           44.5 µs            112
	//	HTTP/2      92.1 µs           49.7 µs            133
	//
	// CPU per request, the measure of a hop's cost that stays stable when
	// other processes load the machine, is about 10% lower with a pool of
	// HTTP/1.1 connections: requests without a body take the fast path
	// (h1.go) on the handler's goroutine, while Go's HTTP/2 client and
	// server funnel every stream through one connection's locks, write
	// loop and per-stream goroutines. HTTP/2 pays off when connections are
	// expensive (long RTT between regions, many upstreams); callers choose
	// per Pool.
	HTTP2 bool

	// ConcurrencyLimit bounds, per upstream (Upstream.Key), the requests
	// sent and not yet answered with a response header (see limit.go): 0
	// adapts the limit to the upstream's latency, between 4 and 1000; N > 0
	// fixes it at N; a negative value turns admission control off. A request
	// over the limit waits up to QueueTimeout for a slot; one that cannot
	// get one is answered 503 with Retry-After and Proxy-Status
	// error=connection_limit_reached, and never sent. Default 0: adaptive.
	ConcurrencyLimit int
	// QueueTimeout is how long a request waits for a slot under the limit,
	// and for a connection while MaxDialsPerUpstream dials are in flight.
	// Default 100 ms (DefaultQueueTimeout).
	QueueTimeout time.Duration
	// MaxQueue bounds the requests waiting per upstream. Default 0: as many
	// as the upstream serves within QueueTimeout at its measured pace, at
	// least its limit.
	MaxQueue int
	// MaxDialsPerUpstream bounds the connections being dialled (TCP and TLS
	// handshakes) at once per TLS upstream; other requests wait for one of
	// them, an idle connection or a dial slot. Default 4
	// (DefaultMaxDialsPerUpstream); negative: no bound.
	MaxDialsPerUpstream int
	// LimitKey splits an upstream's concurrency limit by what a request is
	// for: requests whose LimitKey differs count against separate limits
	// of the same upstream, each with its own latency baseline. A gateway
	// carries every service of its region over the same connections, and a
	// slow service must neither look like an overloaded gateway nor take
	// the slots of a fast one. Nil, or "" for a request: the upstream's one
	// limit. At most maxLimitSplits keys per upstream; requests of later
	// ones share the upstream's limit.
	LimitKey func(req *http.Request) string

	// UDPOverHTTP3 carries UDP tunnels (a CONNECT with HeaderProtocol
	// "udp") to TLS upstreams over HTTP/3, each payload in one HTTP/3
	// datagram (h3udp.go), on UDP at the upstream's address and port. A
	// tunnel whose QUIC dial fails goes over HTTP/2 or HTTP/1.1 with
	// capsules, as without this field, and so do the upstream's next ones
	// for H3HoldDown. Default false.
	UDPOverHTTP3 bool
	// H3DialTimeout bounds a QUIC handshake with an upstream, the time
	// a flow waits before it falls back when UDP is blocked. Default 1 s.
	H3DialTimeout time.Duration
	// H3HoldDown is how long an upstream whose QUIC dial failed gets its
	// UDP tunnels over HTTP/2 without trying QUIC. Default 60 s.
	H3HoldDown time.Duration

	transports sync.Map     // Upstream.Key → *upstreamConns
	rejected   atomic.Int64 // requests refused by admission control
	udpRelay   udpCounters  // every UDP relay's (tunnel.go)
	udpHop     udpHopCounters
}

// errBadUpstream is returned for an Upstream without Key or Addr.
var errBadUpstream = errors.New("proxy: upstream needs a key and an address")

// Validate reports a field with a bad value.
func (p *Pool) Validate() error {
	switch {
	case p.MaxIdlePerUpstream < 0:
		return fmt.Errorf("proxy: pool: MaxIdlePerUpstream %d is negative", p.MaxIdlePerUpstream)
	case p.DialTimeout < 0:
		return fmt.Errorf("proxy: pool: DialTimeout %v is negative", p.DialTimeout)
	case p.ResponseHeaderTimeout < 0:
		return fmt.Errorf("proxy: pool: ResponseHeaderTimeout %v is negative", p.ResponseHeaderTimeout)
	case p.IdleTimeout < 0:
		return fmt.Errorf("proxy: pool: IdleTimeout %v is negative", p.IdleTimeout)
	case p.QueueTimeout < 0:
		return fmt.Errorf("proxy: pool: QueueTimeout %v is negative", p.QueueTimeout)
	case p.MaxQueue < 0:
		return fmt.Errorf("proxy: pool: MaxQueue %d is negative", p.MaxQueue)
	case p.H3DialTimeout < 0:
		return fmt.Errorf("proxy: pool: H3DialTimeout %v is negative", p.H3DialTimeout)
	case p.H3HoldDown < 0:
		return fmt.Errorf("proxy: pool: H3HoldDown %v is negative", p.H3HoldDown)
	}
	return nil
}

func orDefault[T int | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// RoundTrip sends req to u over a pooled connection. It sets req.URL.Scheme
// ("http" or "https") and req.URL.Host (u.Addr) in place; req.Host, the
// field the upstream sees as Host, is left as it is. As with
// http.RoundTripper, the caller must close the response body.
func (p *Pool) RoundTrip(u *Upstream, req *http.Request) (*http.Response, error) {
	if u == nil || u.Key == "" || u.Addr == "" {
		return nil, errBadUpstream
	}
	uc, err := p.conns(u)
	if err != nil {
		return nil, err
	}
	if u.TLS != nil {
		req.URL.Scheme = "https"
	} else {
		req.URL.Scheme = "http"
	}
	req.URL.Host = u.Addr
	lim := uc.limiterFor(p.LimitKey, req)
	n, err := lim.acquire(req.Context())
	if err != nil {
		return nil, err
	}
	var sent time.Time
	if lim != nil {
		sent = time.Now()
	}
	var resp *http.Response
	if uc.h1 != nil && useFastPath(req) {
		resp, err = uc.h1.roundTrip(req)
	} else {
		resp, err = uc.roundTrip(req)
	}
	if lim != nil {
		rtt, sample := limitSample(req, resp, err, sent)
		lim.release(n, rtt, sample)
	}
	if err != nil {
		return nil, fmt.Errorf("proxy: round trip to %s: %w", u.Addr, err)
	}
	return resp, nil
}

// upstreamConns are the connections of one Upstream.Key: the fast path's
// HTTP/1.1 connections (nil when the upstream speaks HTTP/2) and an
// http.Transport for everything else.
type upstreamConns struct {
	t  *http.Transport
	h1 *h1Pool
	// Admission control (limit.go): nil lim is no limit, nil dials no
	// bound on dials.
	lim          *limiter
	splits       sync.Map     // Pool.LimitKey → *limiter, beside lim
	nsplits      atomic.Int32 // entries in splits
	dials        chan struct{}
	queueTimeout time.Duration
	rejected     *atomic.Int64
	h2Ready      atomic.Uint64 // HTTP/2 connections established
	// dialTunnel opens a connection of a tunnel's own (tunnel.go): TCP
	// to a plain upstream, TLS speaking HTTP/1.1 to an HTTP/1.1 one.
	dialTunnel    func(ctx context.Context) (net.Conn, error)
	headerTimeout time.Duration
	pendingDials  atomic.Int64 // transport dials waiting for a slot or dialling
	// h3 carries UDP tunnels over HTTP/3 (h3udp.go); nil unless
	// Pool.UDPOverHTTP3 and the upstream has TLS.
	h3 *h3Peer
}

// conns returns the connections of u.Key, creating them on first use. The
// lookup is a sync.Map load: no lock on the request path.
func (p *Pool) conns(u *Upstream) (*upstreamConns, error) {
	if uc, ok := p.transports.Load(u.Key); ok {
		return uc.(*upstreamConns), nil
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	// Another request may create them first; ours never dialed then.
	uc, _ := p.transports.LoadOrStore(u.Key, p.newConns(u))
	return uc.(*upstreamConns), nil
}

// CloseIdle closes the idle connections of every upstream. Connections in
// use are closed when their request finishes.
func (p *Pool) CloseIdle() {
	p.transports.Range(func(_, uc any) bool {
		uc.(*upstreamConns).closeIdle(false)
		return true
	})
}

// Forget drops the transports of every Key for which keep returns false and
// closes their idle connections; call it after a catalog change. Requests in
// flight on a dropped transport finish normally; the next request for a
// forgotten Key starts a new transport.
func (p *Pool) Forget(keep func(key string) bool) {
	p.transports.Range(func(k, uc any) bool {
		if !keep(k.(string)) {
			p.transports.Delete(k)
			uc.(*upstreamConns).closeIdle(true)
		}
		return true
	})
}

func (uc *upstreamConns) closeIdle(forget bool) {
	uc.t.CloseIdleConnections()
	if uc.h1 != nil {
		uc.h1.closeIdle(forget)
	}
	if uc.h3 != nil {
		uc.h3.closeIdle()
	}
}

// Len returns the number of upstream Keys with a transport.
func (p *Pool) Len() int {
	n := 0
	p.transports.Range(func(_, _ any) bool { n++; return true })
	return n
}

// dialError marks a failure to connect or to complete the TLS handshake:
// the upstream certainly did not receive the request, so the request may be
// retried elsewhere whatever its method and body.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// handshakeError marks a failed TLS handshake with an upstream.
type handshakeError struct {
	addr string
	err  error
}

func (e *handshakeError) Error() string { return "tls handshake with " + e.addr + ": " + e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

// certError marks a refusal by the configuration's own verification
// callbacks (VerifyPeerCertificate, VerifyConnection): meshd's mTLS
// configurations check the peer's SPIFFE ID and chain there, so their
// errors are not crypto/tls's *CertificateVerificationError, yet they say
// the same thing: the peer's certificate is not acceptable.
type certError struct{ err error }

func (e *certError) Error() string { return e.err.Error() }
func (e *certError) Unwrap() error { return e.err }

// markCertErrors wraps cfg's verification callbacks so that their errors
// are certErrors.
func markCertErrors(cfg *tls.Config) {
	if f := cfg.VerifyPeerCertificate; f != nil {
		cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			if err := f(raw, chains); err != nil {
				return &certError{err: err}
			}
			return nil
		}
	}
	if f := cfg.VerifyConnection; f != nil {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if err := f(cs); err != nil {
				return &certError{err: err}
			}
			return nil
		}
	}
}

// connectTimeoutKey is the context key of a request's
// CallPolicy.ConnectTimeout, a *time.Duration: a pointer into the shared
// policy, so attaching it boxes nothing.
type connectTimeoutKey struct{}

// connectContext bounds a dial by the request's connect timeout, when it
// has one shorter than def, or else by def. Go's transport dials with a
// context that keeps the request's values but not its cancellation, so
// the value reaches its dials as well as the fast path's.
func connectContext(ctx context.Context, def time.Duration) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Value(connectTimeoutKey{}).(*time.Duration); ok && *d > 0 && *d < def {
		def = *d
	}
	return context.WithTimeout(ctx, def)
}

// isDialError reports whether err says the request never left this node.
func isDialError(err error) bool {
	var de *dialError
	return errors.As(err, &de)
}

// newConns builds the connections of u: the dial functions (a failure is a
// dialError), the http.Transport, and for an HTTP/1.1 upstream the fast
// path's pool, which shares the dial functions but not the connections.
func (p *Pool) newConns(u *Upstream) *upstreamConns {
	dialTimeout := orDefault(p.DialTimeout, DefaultDialTimeout)
	maxIdle := orDefault(p.MaxIdlePerUpstream, DefaultMaxIdlePerUpstream)
	idleTimeout := orDefault(p.IdleTimeout, DefaultIdleTimeout)
	headerTimeout := orDefault(p.ResponseHeaderTimeout, DefaultResponseHeaderTimeout)
	d := &net.Dialer{Timeout: dialTimeout}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ctx, cancel := connectContext(ctx, dialTimeout)
		defer cancel()
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &dialError{err: fmt.Errorf("dial %s: %w", addr, err)}
		}
		return c, nil
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	t := &http.Transport{
		// Upstream addresses come from the catalog; an HTTP_PROXY in the
		// environment must never redirect mesh traffic.
		Proxy:                  nil,
		DialContext:            dial,
		MaxIdleConns:           0, // no global limit: the limit is per upstream
		MaxIdleConnsPerHost:    maxIdle,
		IdleConnTimeout:        idleTimeout,
		ResponseHeaderTimeout:  headerTimeout,
		ExpectContinueTimeout:  expectContinueTimeout,
		TLSHandshakeTimeout:    dialTimeout,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		// A proxy forwards bodies as they are: transparent gzip would
		// add Accept-Encoding the client never sent and decode responses.
		DisableCompression: true,
		Protocols:          &protocols,
	}
	uc := p.admission(u)
	uc.t = t
	uc.headerTimeout = headerTimeout
	t.DialContext = uc.boundDial(dial, false)
	if u.TLS == nil && u.H2C {
		// HTTP/2 with prior knowledge: the transport uses it for http://
		// URLs when HTTP/1 is not among its protocols.
		protocols.SetHTTP1(false)
		protocols.SetUnencryptedHTTP2(true)
		t.HTTP2 = &http.HTTP2Config{SendPingTimeout: h2PingInterval}
		return uc
	}
	if u.TLS == nil {
		uc.dialTunnel = func(ctx context.Context) (net.Conn, error) { return dial(ctx, "tcp", u.Addr) }
		uc.h1 = uc.newH1Pool(func(ctx context.Context) (net.Conn, error) {
			c, err := dial(ctx, "tcp", u.Addr)
			if err != nil {
				return nil, err
			}
			rc := newRawConn(c)
			rc.enable()
			return rc, nil
		}, maxIdle, idleTimeout, headerTimeout)
		return uc
	}
	if p.UDPOverHTTP3 {
		uc.h3 = p.newH3Peer(u, headerTimeout, idleTimeout)
	}
	cfg := u.TLS.Clone()
	markCertErrors(cfg)
	h2 := p.HTTP2 && !u.HTTP1
	if h2 {
		protocols.SetHTTP2(true)
		cfg.NextProtos = []string{"h2", "http/1.1"}
		t.HTTP2 = &http.HTTP2Config{SendPingTimeout: h2PingInterval}
	} else {
		cfg.NextProtos = []string{"http/1.1"}
	}
	// The TLS dial is done here rather than by the transport so that a
	// failed handshake is marked as a dialError: a retry on another
	// candidate is then safe for any request. The transport still reads
	// the negotiated ALPN protocol from the returned *tls.Conn.
	//
	// The fast path's connections read and write the TCP connection under
	// TLS with raw system calls (rawConn, rawtcp.go); the transport's use
	// Go's own.
	dialTLS := func(ctx context.Context, network, addr string, rawIO bool) (net.Conn, error) {
		ctx, cancel := connectContext(ctx, dialTimeout)
		defer cancel()
		raw, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &dialError{err: fmt.Errorf("dial %s: %w", addr, err)}
		}
		under := raw
		if rawIO {
			rc := newRawConn(raw)
			rc.enable()
			under = rc
		}
		c := cfg
		if c.ServerName == "" {
			// Like Go's transport: verify the name we dialed unless
			// the configuration says otherwise (meshd's mTLS
			// configurations verify a SPIFFE ID instead).
			c = cfg.Clone()
			c.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(under, c)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, &dialError{err: &handshakeError{addr: addr, err: err}}
		}
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			uc.h2Ready.Add(1)
		}
		return tc, nil
	}
	t.DialTLSContext = uc.boundDial(func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialTLS(ctx, network, addr, false)
	}, h2)
	if !h2 {
		uc.h1 = uc.newH1Pool(func(ctx context.Context) (net.Conn, error) {
			return dialTLS(ctx, "tcp", u.Addr, true)
		}, maxIdle, idleTimeout, headerTimeout)
		uc.dialTunnel = func(ctx context.Context) (net.Conn, error) { return dialTLS(ctx, "tcp", u.Addr, false) }
	}
	return uc
}
