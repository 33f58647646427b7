package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Tunnels: CONNECT (RFC 9110 §9.3.6, RFC 9113 §8.5) and protocol upgrades
// (WebSocket: RFC 6455 over HTTP/1.1, RFC 8441 extended CONNECT over
// HTTP/2).
//
// A tunnel is routed like a request (the Route function sees the outgoing
// request: Method CONNECT with Host the authority, or the upgrade's GET),
// then carried to the chosen upstream as the hop to it speaks:
//
//   - an HTTP/2 upstream: a CONNECT stream on the pooled connection (an
//     extended CONNECT with :protocol for an upgrade), many tunnels per
//     connection;
//   - an HTTP/1.1 upstream (TLS or plain): a connection of its own, on
//     which the CONNECT (or the upgrade request) is written and, once the
//     upstream accepts, bytes flow both ways;
//   - an Upstream with Raw set: a TCP connection to Addr, no HTTP at all
//     (the last hop, beside the app's TCP port).
//
// Between meshd hops the upgrade's own fields (Sec-WebSocket-Key and the
// others) travel as fields of the extended CONNECT, so the last hop can
// send the app the client's very handshake and the client gets the app's
// Sec-WebSocket-Accept. Only an RFC 8441 client, which sends no key, makes
// the hop that speaks HTTP/1.1 to the app choose one.
//
// Half-closes travel end to end where the carrier has them: a FIN on TCP,
// close_notify on TLS, END_STREAM on an HTTP/2 stream meshd opened. Go's
// HTTP/2 server cannot end a response stream while its handler still
// reads: a tunnel served over HTTP/2 ends as a whole once the upstream
// side ends. A tunnel idle in both directions for TunnelIdleTimeout is
// closed at both ends.

// DefaultTunnelIdleTimeout is Handler.TunnelIdleTimeout's default: an hour,
// as HAProxy's documentation advises for WebSocket ("timeout tunnel"); a
// database pool's idle connections live that long.
const DefaultTunnelIdleTimeout = time.Hour

// Between meshd hops an upgrade over HTTP/2 is a plain CONNECT stream
// (RFC 9113 §8.5) that says what it carries in two fields: Go's HTTP/2
// server offers RFC 8441's extended CONNECT only when the process starts
// with GODEBUG=http2xconnect=1, and a hop must not depend on how its peer
// was started. A public listener drops X-Mesh-* fields, so no client can
// ask for this form.
const (
	headerUpgrade = "X-Mesh-Upgrade" // the protocol: "websocket"
	headerTarget  = "X-Mesh-Target"  // the upgrade's request target: "/chat?room=1"
)

// tunnelProto returns what kind of tunnel r asks for: ok with proto "" for
// a CONNECT, ok with the protocol ("websocket") for an upgrade: an
// HTTP/1.1 Upgrade, an extended CONNECT (RFC 8441) or, from a mesh peer
// (public false), a CONNECT with X-Mesh-Upgrade.
func tunnelProto(r *http.Request, public bool) (proto string, ok bool) {
	if r.Method == http.MethodConnect {
		if p, ok := r.Header[":protocol"]; ok && len(p) > 0 {
			return strings.ToLower(p[0]), true
		}
		if p := r.Header[headerUpgrade]; !public && len(p) > 0 && isToken(p[0]) {
			return strings.ToLower(p[0]), true
		}
		return "", true
	}
	if !hasToken(r.Header["Connection"], "upgrade") {
		return "", false
	}
	up := r.Header.Get("Upgrade")
	// The first protocol the client offers is the one it gets
	// (RFC 9110 §7.8 lets the server choose; meshd does not).
	up, _, _ = strings.Cut(up, ",")
	up = strings.TrimSpace(up)
	up, _, _ = strings.Cut(up, "/") // a version ("websocket/13") is not a protocol name
	return strings.ToLower(up), isToken(up)
}

// HeaderProtocol says what a CONNECT between mesh hops carries: "udp" for
// UDP datagrams in DATAGRAM capsules (RFC 9297 §3.5, the stream form of
// RFC 9298's CONNECT-UDP), absent for TCP.
const HeaderProtocol = "X-Mesh-Protocol"

// The client of a TCP tunnel, as the hop that accepted its connection saw
// it, for a PROXY header at the last hop (Upstream.ProxyProtocol): the
// client's address and the address it connected to. Set by ServeConn; a
// public hop drops what the client sent.
const (
	HeaderClient    = "X-Mesh-Client"
	HeaderClientDst = "X-Mesh-Client-Dst"
)

// headerAddr parses an address field, or returns nil.
func headerAddr(h http.Header, k string) net.Addr {
	v := h[k]
	if len(v) == 0 {
		return nil
	}
	ap, err := netip.ParseAddrPort(v[0])
	if err != nil {
		return nil
	}
	return net.TCPAddrFromAddrPort(ap)
}

// halfCloser is a stream whose write side can be closed alone.
type halfCloser interface {
	CloseWrite() error
}

// UDPRelayStats are the counters of every UDP relay the pool ran (the last
// hop of UDP tunnels, Upstream.UDP): datagrams up (to the app) and down,
// and those dropped.
func (p *Pool) UDPRelayStats() UDPStats { return p.udpRelay.snapshot() }

// Tunnel opens a tunnel to u for req: a CONNECT when proto is "", else an
// upgrade to proto. req.Host is the authority (CONNECT) or the host
// (upgrade); req.URL's path is the upgrade's target. It returns the
// upstream's response and, when the upstream accepted (2xx to a CONNECT,
// 101 to an HTTP/1.1 upgrade, 2xx to an extended CONNECT), the stream; on a
// refusal the stream is nil and resp carries the upstream's answer, whose
// body the caller closes. Tunnels do not count against the upstream's
// concurrency limit: it bounds requests waiting for an answer, and a
// tunnel gets its answer at once.
func (p *Pool) Tunnel(u *Upstream, req *http.Request, proto string) (*http.Response, io.ReadWriteCloser, error) {
	if u == nil || u.Key == "" || u.Addr == "" {
		return nil, nil, errBadUpstream
	}
	uc, err := p.conns(u)
	if err != nil {
		return nil, nil, err
	}
	ctx := req.Context()
	if uc.h3 != nil && proto == "" && req.Header.Get(HeaderProtocol) == "udp" {
		// A UDP flow to a mesh peer: HTTP/3 datagrams when QUIC gets
		// through, else capsules on the HTTP/2 (or HTTP/1.1) path below.
		if resp, stream, ok := uc.h3.tunnelH3(req); ok {
			return resp, stream, nil
		}
	}
	switch {
	case u.Raw && u.UDP:
		// The last hop of a UDP tunnel: datagrams to and from Addr (see
		// udpRelay).
		return &http.Response{StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{}, Body: http.NoBody}, &udpRelay{ctx: ctx, c: &p.udpRelay, target: u.Addr}, nil
	case u.Raw:
		c, err := uc.tunnelDial(ctx)
		if err != nil {
			return nil, nil, err
		}
		if u.ProxyProtocol {
			hdr := AppendProxyV2(nil, headerAddr(req.Header, HeaderClient), headerAddr(req.Header, HeaderClientDst))
			if _, err := c.Write(hdr); err != nil {
				c.Close()
				return nil, nil, &dialError{err: fmt.Errorf("proxy: PROXY header to %s: %w", u.Addr, err)}
			}
		}
		return &http.Response{StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{}, Body: http.NoBody}, c, nil
	case uc.h1 == nil:
		return uc.tunnelH2(u, req, proto)
	}
	return uc.tunnelH1(ctx, u, req, proto)
}

// tunnelH2 opens a CONNECT stream on the upstream's HTTP/2 connection.
func (uc *upstreamConns) tunnelH2(u *Upstream, req *http.Request, proto string) (*http.Response, io.ReadWriteCloser, error) {
	pr, pw := io.Pipe()
	out := req.Clone(req.Context())
	out.Method = http.MethodConnect
	out.Body = pr
	out.ContentLength = -1
	out.GetBody = nil
	out.URL.Scheme, out.URL.Host = "https", u.Addr
	if proto != "" {
		out.Header[headerUpgrade] = []string{proto}
		out.Header[headerTarget] = []string{req.URL.RequestURI()}
	}
	out.URL.Path, out.URL.RawPath, out.URL.RawQuery = "", "", ""
	resp, err := uc.t.RoundTrip(out)
	if err != nil {
		pw.Close()
		return nil, nil, fmt.Errorf("proxy: tunnel to %s: %w", u.Addr, err)
	}
	if resp.StatusCode/100 != 2 {
		pw.Close()
		return resp, nil, nil
	}
	return resp, &h2Stream{w: pw, body: resp.Body}, nil
}

// h2Stream is a tunnel on an HTTP/2 stream meshd opened: writes go into
// the request body, reads come from the response body.
type h2Stream struct {
	w    *io.PipeWriter
	body io.ReadCloser
}

func (s *h2Stream) Read(p []byte) (int, error)  { return s.body.Read(p) }
func (s *h2Stream) Write(p []byte) (int, error) { return s.w.Write(p) }

// CloseWrite ends the request body: END_STREAM, the stream's half-close.
func (s *h2Stream) CloseWrite() error { return s.w.Close() }

func (s *h2Stream) Close() error {
	s.w.CloseWithError(net.ErrClosed)
	return s.body.Close()
}

// tunnelH1 opens a connection of the tunnel's own to an HTTP/1.1 upstream
// and asks for the tunnel on it.
func (uc *upstreamConns) tunnelH1(ctx context.Context, u *Upstream, req *http.Request, proto string) (*http.Response, io.ReadWriteCloser, error) {
	c, err := uc.tunnelDial(ctx)
	if err != nil {
		return nil, nil, err
	}
	out := *req
	out.Header = req.Header.Clone()
	if proto == "" {
		out.Method = http.MethodConnect
		u2 := *req.URL
		u2.Path, u2.RawPath, u2.RawQuery = "", "", ""
		out.URL = &u2
	} else {
		out.Method = http.MethodGet
		out.Header["Connection"] = []string{"Upgrade"}
		out.Header["Upgrade"] = []string{proto}
		if proto == "websocket" && out.Header.Get("Sec-Websocket-Key") == "" {
			// An RFC 8441 client sends no key: the HTTP/1.1 handshake
			// needs one (RFC 6455 §4.1).
			var k [16]byte
			_, _ = rand.Read(k[:])
			out.Header["Sec-Websocket-Key"] = []string{base64.StdEncoding.EncodeToString(k[:])}
			if out.Header.Get("Sec-Websocket-Version") == "" {
				out.Header["Sec-Websocket-Version"] = []string{"13"}
			}
		}
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if t := uc.headerTimeout; t > 0 {
		_ = c.SetDeadline(time.Now().Add(t))
	}
	bw := bufio.NewWriterSize(c, 4<<10)
	if err := writeRequestHead(bw, &out); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("proxy: tunnel to %s: %w", u.Addr, err)
	}
	if err := bw.Flush(); err != nil {
		c.Close()
		return nil, nil, &dialError{err: fmt.Errorf("proxy: tunnel to %s: write: %w", u.Addr, err)}
	}
	br := bufio.NewReaderSize(c, 4<<10)
	resp, err := http.ReadResponse(br, &out)
	if err != nil {
		c.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, nil, fmt.Errorf("proxy: tunnel to %s: %w", u.Addr, err)
	}
	_ = c.SetDeadline(time.Time{})
	accepted := resp.StatusCode == http.StatusSwitchingProtocols && proto != "" ||
		resp.StatusCode/100 == 2 && proto == ""
	if !accepted {
		// The answer is forwarded as it is; its connection ends with it.
		resp.Body = &closeWith{ReadCloser: resp.Body, c: c}
		return resp, nil, nil
	}
	resp.Body = http.NoBody
	return resp, &bufConn{Conn: c, r: br}, nil
}

// closeWith closes c with the body.
type closeWith struct {
	io.ReadCloser
	c net.Conn
}

func (b *closeWith) Close() error {
	err := b.ReadCloser.Close()
	b.c.Close()
	return err
}

// bufConn reads what its reader buffered before reading the connection.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection: close_notify on TLS, FIN on TCP.
func (c *bufConn) CloseWrite() error { return closeWrite(c.Conn) }

// closeWrite half-closes c when it can, and closes it otherwise.
func closeWrite(c net.Conn) error {
	if hc, ok := c.(halfCloser); ok {
		return hc.CloseWrite()
	}
	return c.Close()
}

// tunnelDial opens a connection of its own to the upstream: TCP, or TLS
// speaking HTTP/1.1.
func (uc *upstreamConns) tunnelDial(ctx context.Context) (net.Conn, error) {
	if uc.dialTunnel == nil {
		return nil, errors.New("proxy: upstream cannot carry tunnels")
	}
	return uc.dialTunnel(ctx)
}

// serveTunnel is ServeHTTP for a CONNECT or an upgrade.
func (h *Handler) serveTunnel(w http.ResponseWriter, r *http.Request, c *handlerConfig, proto string) {
	if proto == "" && h.Public {
		// An edge is not an open proxy: its public TCP ports carry raw
		// TCP, never a CONNECT from anyone.
		h.failures.Add(1)
		w.Header()["Allow"] = []string{"GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"}
		writeError(w, http.StatusMethodNotAllowed, "meshd: CONNECT is not served here")
		return
	}
	if r.Method != http.MethodConnect && r.Method != http.MethodGet {
		h.failures.Add(1)
		writeError(w, http.StatusNotImplemented, "meshd: only GET may ask for a protocol upgrade")
		return
	}
	if r.ContentLength != 0 && r.Method != http.MethodConnect {
		h.failures.Add(1)
		writeError(w, http.StatusBadRequest, "meshd: an upgrade request has no body")
		return
	}
	o := &outgoing{}
	h.prepare(o, r, c)
	o.req.Body, o.req.GetBody, o.req.ContentLength = nil, nil, 0
	if proto == "" {
		o.req.Method = http.MethodConnect
	} else {
		// Routed as the GET it is; carried as the hop to the upstream
		// speaks (see Pool.Tunnel).
		o.req.Method = http.MethodGet
		if r.Method == http.MethodConnect && !h.Public {
			if t := r.Header.Get(headerTarget); t != "" {
				u, err := url.ParseRequestURI(t)
				if err != nil {
					h.failures.Add(1)
					writeError(w, http.StatusBadRequest, "meshd: bad "+headerTarget)
					return
				}
				o.url.Path, o.url.RawPath, o.url.RawQuery = u.Path, u.RawPath, u.RawQuery
			}
		}
		if o.url.Path == "" {
			o.url.Path = "/"
		}
		delete(o.req.Header, headerUpgrade)
		delete(o.req.Header, headerTarget)
	}
	resp, stream, u, attempts, err := h.openTunnel(r, c, o, proto)
	if err != nil {
		h.fail(w, r, c, o, u, attempts, err)
		return
	}
	if stream == nil {
		// Refused by the upstream: its answer goes back as it is.
		h.respond(w, r, c, o, http.NewResponseController(w), resp)
		return
	}
	defer stream.Close()
	client, err := h.acceptTunnel(w, r, c, o, resp, proto)
	if err != nil {
		h.clientGone.Add(1)
		c.logger.Debug("proxy: tunnel client went away", "host", r.Host, "err", err)
		return
	}
	defer client.Close()
	h.carry(r, c, client, stream, u, proto)
}

// carry splices an open tunnel and counts it.
func (h *Handler) carry(r *http.Request, c *handlerConfig, client, stream io.ReadWriteCloser, u *Upstream, proto string) {
	h.tunnels.Add(1)
	h.tunnelsOpen.Add(1)
	defer h.tunnelsOpen.Add(-1)
	if rl, ok := stream.(*udpRelay); ok {
		if d := datagramsOf(client); d != nil {
			// HTTP/3 datagrams in: the relay takes them from the
			// client's stream itself, no capsules and no pipe between.
			cd := &countedDatagrams{udpDatagrams: d, ReadWriteCloser: client}
			if rl.relayOn(cd) {
				h.tunnelBytesUp.Add(cd.up)
				h.tunnelBytesDown.Add(cd.down)
				c.logger.Debug("proxy: tunnel closed", "host", r.Host, "proto", "udp", "upstream", u.name(),
					"bytes_up", cd.up, "bytes_down", cd.down)
				return
			}
		}
	}
	up, down := splice(client, stream, orDefault(h.TunnelIdleTimeout, DefaultTunnelIdleTimeout))
	h.tunnelBytesUp.Add(up)
	h.tunnelBytesDown.Add(down)
	c.logger.Debug("proxy: tunnel closed", "host", r.Host, "proto", proto, "upstream", u.name(),
		"bytes_up", up, "bytes_down", down)
}

// udpRelay is the last hop's side of a UDP tunnel (Upstream.UDP): the
// relay to the app's UDP port. Read as a stream, it is one end of a pipe
// whose other end relayUDP serves, DATAGRAM capsules on it; carry runs the
// relay on the client's own stream instead when that carries HTTP/3
// datagrams (relayOn), which saves a goroutine hand-off and two copies per
// datagram, and with them the moments a busy hop would make quic-go drop
// datagrams from its short per-stream queue.
type udpRelay struct {
	ctx    context.Context
	c      *udpCounters
	target string

	mu     sync.Mutex
	here   net.Conn // the pipe's end, once the relay runs on it
	closed bool
	direct bool // the relay runs on a client stream (relayOn)
}

func (r *udpRelay) pipe() (net.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.direct {
		return nil, net.ErrClosed
	}
	if r.here == nil {
		here, there := net.Pipe()
		r.here = here
		go func() {
			if err := relayUDP(r.ctx, there, r.target, 0, r.c); err != nil && r.ctx.Err() == nil {
				slog.Debug("proxy: UDP relay ended", "target", r.target, "err", err)
			}
		}()
	}
	return r.here, nil
}

func (r *udpRelay) Read(p []byte) (int, error) {
	c, err := r.pipe()
	if err != nil {
		return 0, err
	}
	return c.Read(p)
}

func (r *udpRelay) Write(p []byte) (int, error) {
	c, err := r.pipe()
	if err != nil {
		return 0, err
	}
	return c.Write(p)
}

func (r *udpRelay) Close() error {
	r.mu.Lock()
	r.closed = true
	here := r.here
	r.mu.Unlock()
	if here != nil {
		return here.Close()
	}
	return nil
}

// relayOn runs the relay on stream until the tunnel ends and closes
// stream; false, doing nothing, when the relay already runs on its pipe or
// was closed.
func (r *udpRelay) relayOn(stream io.ReadWriteCloser) bool {
	r.mu.Lock()
	if r.closed || r.here != nil {
		r.mu.Unlock()
		return false
	}
	r.direct = true
	r.mu.Unlock()
	if err := relayUDP(r.ctx, stream, r.target, 0, r.c); err != nil && r.ctx.Err() == nil {
		slog.Debug("proxy: UDP relay ended", "target", r.target, "err", err)
	}
	return true
}

// countedDatagrams counts a tunnel's payload bytes for the tunnel byte
// counters; relayUDP reads and writes it from one goroutine each and has
// returned before the counts are read.
type countedDatagrams struct {
	udpDatagrams
	io.ReadWriteCloser
	up, down int64
}

func (c *countedDatagrams) sendUDP(b []byte) error {
	err := c.udpDatagrams.sendUDP(b)
	if err == nil {
		c.down += int64(len(b))
	}
	return err
}

func (c *countedDatagrams) recvUDP() ([]byte, error) {
	b, err := c.udpDatagrams.recvUDP()
	c.up += int64(len(b))
	return b, err
}

// openTunnel routes the tunnel of o and opens it to the first candidate
// that can be reached. A tunnel moves on to the next candidate only when it
// certainly did not reach an upstream (a dial or handshake failure): its
// bytes are never sent twice. On a refusal by the upstream stream is nil
// and resp its answer.
func (h *Handler) openTunnel(r *http.Request, c *handlerConfig, o *outgoing, proto string) (resp *http.Response, stream io.ReadWriteCloser, u *Upstream, attempts int, err error) {
	ups, err := h.Route(&o.req)
	if err == nil && len(ups) == 0 {
		err = errNoUpstream
	}
	if err != nil {
		return nil, nil, nil, 0, err
	}
	for _, cand := range ups {
		if attempts == c.maxAttempts {
			break
		}
		if cand == nil {
			continue
		}
		if attempts > 0 {
			h.retries.Add(1)
		}
		attempts++
		u = cand
		resp, stream, err = h.Pool.Tunnel(u, &o.req, proto)
		if err == nil {
			u.reached(true)
			break
		}
		var de *dialError
		u.reached(!errors.As(err, &de))
		if r.Context().Err() != nil || !isDialError(err) {
			break
		}
	}
	if resp == nil && err == nil {
		err = errNoUpstream
	}
	return resp, stream, u, attempts, err
}

// ServeConn carries conn, a TCP connection accepted by the caller (a
// sidecar's local port for a service's TCP port, an edge's public TCP
// port), through a tunnel to authority ("db.mesh:pg"), routed by Route as
// a CONNECT to it with the fields of header (may be nil). It returns when
// the tunnel is over, and closes conn. A connection that cannot be
// carried (no route, no upstream reached, refused by the upstream) is
// closed, and the reason logged at warn: a TCP client cannot be told why.
func (h *Handler) ServeConn(ctx context.Context, conn net.Conn, authority string, header http.Header) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() }) // the caller stops: so does the tunnel
	defer stop()
	if header == nil {
		header = http.Header{}
	}
	if header[HeaderClient] == nil {
		header[HeaderClient] = []string{conn.RemoteAddr().String()}
		header[HeaderClientDst] = []string{conn.LocalAddr().String()}
	}
	stream, r, u, err := h.openConn(ctx, authority, header, conn.RemoteAddr().String())
	if err != nil {
		return
	}
	defer stream.Close()
	h.carry(r, h.config(), conn, stream, u, "")
}

// OpenTunnel opens a tunnel to authority as ServeConn does and returns its
// stream, for a caller that carries something else than one TCP
// connection over it (a UDP flow). ctx bounds the opening only: the
// stream lives until it is closed. client is the address of whom the
// tunnel is for, for the log.
func (h *Handler) OpenTunnel(ctx context.Context, authority string, header http.Header, client string) (io.ReadWriteCloser, error) {
	tctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	stream, _, _, err := h.openConn(tctx, authority, header, client)
	if err != nil {
		cancel()
		return nil, err
	}
	if !stop() {
		stream.Close()
		cancel()
		return nil, ctx.Err()
	}
	h.tunnels.Add(1)
	h.tunnelsOpen.Add(1)
	return &cancelOnClose{ReadWriteCloser: stream, cancel: cancel, h: h}, nil
}

// cancelOnClose ends a tunnel's context when its stream is closed, and
// counts it closed.
type cancelOnClose struct {
	io.ReadWriteCloser
	cancel context.CancelFunc
	h      *Handler
	once   sync.Once
}

// unwrapStream lets a UDP flow reach the HTTP/3 datagrams underneath
// (datagramsOf).
func (c *cancelOnClose) unwrapStream() io.ReadWriteCloser { return c.ReadWriteCloser }

func (c *cancelOnClose) Close() error {
	err := c.ReadWriteCloser.Close()
	c.cancel()
	c.once.Do(func() { c.h.tunnelsOpen.Add(-1) })
	return err
}

func (h *Handler) openConn(ctx context.Context, authority string, header http.Header, client string) (io.ReadWriteCloser, *http.Request, *Upstream, error) {
	c := h.config()
	h.requests.Add(1)
	if c.err != nil {
		h.failures.Add(1)
		c.logger.Error("proxy: handler misconfigured", "err", c.err)
		return nil, nil, nil, c.err
	}
	if header == nil {
		header = http.Header{}
	}
	r := (&http.Request{Method: http.MethodConnect, Host: authority, URL: &url.URL{Host: authority},
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: header, Body: http.NoBody,
		RequestURI: authority, RemoteAddr: client}).WithContext(ctx)
	o := &outgoing{}
	h.prepare(o, r, c)
	o.req.Body, o.req.GetBody, o.req.ContentLength = nil, nil, 0
	if h.Public {
		// prepare dropped the X-Mesh-* fields a client may not choose;
		// these are this hop's own.
		for _, k := range []string{HeaderClient, HeaderClientDst, HeaderProtocol} {
			if v := header[k]; v != nil {
				o.req.Header[k] = v
			}
		}
	}
	resp, stream, u, _, err := h.openTunnel(r, c, o, "")
	if err == nil && stream == nil {
		discard(resp)
		err = fmt.Errorf("the upstream answered %d", resp.StatusCode)
	}
	if err != nil {
		h.failures.Add(1)
		code, msg := classify(ctx, err)
		c.logger.Warn("proxy: connection not carried", "target", authority, "protocol", header.Get(HeaderProtocol),
			"remote", client, "upstream", u.name(), "status", code, "reason", msg, "err", err)
		return nil, nil, nil, err
	}
	return stream, r, u, nil
}

// acceptTunnel tells the client the tunnel is open and returns its side of
// it: the connection itself for HTTP/1.1 (hijacked), the request and
// response bodies for HTTP/2 and HTTP/3.
func (h *Handler) acceptTunnel(w http.ResponseWriter, r *http.Request, c *handlerConfig, o *outgoing, resp *http.Response, proto string) (io.ReadWriteCloser, error) {
	hdr := make(http.Header, len(resp.Header)+1)
	copyResponseHeader(hdr, resp.Header, h.Public)
	delete(hdr, HeaderRetry)
	delete(hdr, "Content-Length")
	hdr["Via"] = appendVia(o.via[:], resp.Header["Via"], c.via(resp.ProtoMajor, resp.ProtoMinor, h.Via))
	if r.ProtoMajor == 1 {
		// Through the writers of the chain in front (access log, cache)
		// to the server's own.
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return nil, fmt.Errorf("proxy: the server cannot hand over its connection: %w", err)
		}
		b := make([]byte, 0, 256)
		if proto == "" {
			b = append(b, "HTTP/1.1 200 OK\r\n"...)
			delete(hdr, "Sec-Websocket-Accept")
		} else {
			b = append(b, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "...)
			b = append(b, proto...)
			b = append(b, "\r\n"...)
		}
		b = appendFields(b, hdr)
		b = append(b, "\r\n"...)
		if _, err := conn.Write(b); err != nil {
			conn.Close()
			return nil, err
		}
		// Bytes the client sent after its request head are the tunnel's
		// first: read through the server's buffer.
		return &bufConn{Conn: conn, r: brw.Reader}, nil
	}
	if isConnectUDP(r) {
		// CONNECT-UDP from a mesh peer over HTTP/3: the tunnel is the
		// request stream's HTTP/3 datagrams.
		return acceptH3UDP(w, hdr, &h.Pool.udpHop)
	}
	if r.Header.Get("Sec-Websocket-Key") == "" {
		delete(hdr, "Sec-Websocket-Accept") // RFC 8441 §5: not part of this handshake
	}
	for k, vv := range hdr {
		w.Header()[k] = vv
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return nil, err
	}
	return &serverStream{r: r.Body, w: w, rc: rc}, nil
}

// serverStream is the client's side of a tunnel served over HTTP/2 or
// HTTP/3: the request body in, the response body out, flushed per write.
type serverStream struct {
	r  io.ReadCloser
	w  io.Writer
	rc *http.ResponseController
}

func (s *serverStream) Read(p []byte) (int, error) { return s.r.Read(p) }

func (s *serverStream) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err == nil {
		err = s.rc.Flush()
	}
	return n, err
}

func (s *serverStream) Close() error { return s.r.Close() }

// splice copies between a and b until both directions ended, one failed,
// or neither carried a byte for idle. An end of one direction is passed on
// as a half-close where the other side has one; where it has none (a
// stream served over HTTP/2) the tunnel ends once the upstream's side (b
// to a) ended. It returns the bytes copied a→b and b→a.
func splice(a, b io.ReadWriteCloser, idle time.Duration) (ab, ba int64) {
	var (
		last      atomic.Int64
		once      sync.Once
		closeBoth = func() {
			once.Do(func() {
				a.Close()
				b.Close()
			})
		}
	)
	last.Store(time.Now().UnixNano())
	var timer *time.Timer
	var check func()
	check = func() {
		since := time.Since(time.Unix(0, last.Load()))
		if since >= idle {
			closeBoth()
			return
		}
		timer.Reset(idle - since)
	}
	timer = time.AfterFunc(idle, check)
	defer timer.Stop()

	copyHalf := func(dst, src io.ReadWriteCloser, n *int64) error {
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		buf := *bp
		for {
			k, rerr := src.Read(buf)
			if k > 0 {
				last.Store(time.Now().UnixNano())
				if _, werr := dst.Write(buf[:k]); werr != nil {
					return werr
				}
				*n += int64(k)
			}
			if rerr == io.EOF {
				return nil
			}
			if rerr != nil {
				return rerr
			}
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := copyHalf(b, a, &ab); err != nil {
			closeBoth()
			return
		}
		if hc, ok := b.(halfCloser); ok {
			_ = hc.CloseWrite()
		} else {
			closeBoth()
		}
	}()
	err := copyHalf(a, b, &ba)
	hc, ok := a.(halfCloser)
	if err != nil || !ok {
		closeBoth()
	} else {
		_ = hc.CloseWrite()
	}
	<-done
	closeBoth()
	return ab, ba
}
