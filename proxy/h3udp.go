package proxy

// UDP tunnels between meshd hops over HTTP/3: a CONNECT-UDP request
// (RFC 9298, an extended CONNECT with :protocol connect-udp, RFC 9220)
// on the peer's mesh port over UDP, with each UDP payload in one HTTP/3
// datagram (RFC 9297 §2.1: a QUIC DATAGRAM frame holding the quarter
// stream ID, context ID 0 and the payload). A datagram lost on the way
// stays lost, and nothing behind it waits for a retransmission, which is
// what the applications that chose UDP (DNS, games, media, VPNs) want and
// what the HTTP/2 capsule path cannot give them.
//
//	UDPForwarder ──h3 datagrams──▶ gateway ──h3 datagrams or capsules──▶ sidecar ──▶ RelayUDP
//
// The peer is dialed with the TLS configuration of its HTTP/2 path (ALPN
// "h3" instead), so it must present the same SPIFFE ID; the peer's mesh
// listener serves HTTP/3 with the very tls.Config of its TCP listener, so
// the caller's identity is checked, and authorized, as over TCP. Requests
// go through the same Handler and Route.
//
// Where UDP between two nodes is blocked (a firewall, a path that drops
// 1,452-byte packets), the QUIC handshake fails within H3DialTimeout; the
// flow then goes over HTTP/2 with capsules, and the peer is remembered as
// without HTTP/3 for H3HoldDown so that the next flows do not wait again.
//
// Every hop sees a tunnel's stream as a byte stream of DATAGRAM capsules
// (h3UDP's Read and Write), so a gateway splices HTTP/3 datagrams to HTTP/2
// capsules and back without knowing which is which. The two ends that
// make or take UDP datagrams (UDPForwarder, RelayUDP) use sendUDP and
// recvUDP instead and skip the capsule framing.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Defaults of Pool's HTTP/3 fields.
const (
	// DefaultH3DialTimeout is Pool.H3DialTimeout's default: a QUIC
	// handshake between mesh nodes takes one round trip; a second means
	// UDP does not get through, and the flow's first datagrams wait in
	// its queue meanwhile.
	DefaultH3DialTimeout = time.Second
	// DefaultH3HoldDown is Pool.H3HoldDown's default.
	DefaultH3HoldDown = 60 * time.Second
)

const (
	// protocolConnectUDP is the :protocol of CONNECT-UDP (RFC 9298 §3.4).
	protocolConnectUDP = "connect-udp"

	// h3PacketSize is the QUIC packet size of mesh hops from the first
	// packet on: 1,500-byte Ethernet minus the IPv6 and UDP headers, the
	// most quic-go sends. A QUIC DATAGRAM frame must fit in one packet,
	// so this bounds the UDP payloads a hop carries over HTTP/3 (about
	// 1,410 bytes; iperf3's 1,400-byte datagrams and DNS over EDNS's
	// 1,232 fit); with quic-go's default of 1,280 until path MTU
	// discovery grows it, a flow's first datagrams over 1,230 bytes would
	// be dropped. A path that cannot carry such packets fails the
	// handshake, and its flows go over HTTP/2.
	h3PacketSize = 1452

	// h3RecvQueue is how many received datagrams a tunnel holds for its
	// reader. quic-go keeps 32 per stream and drops the next ones
	// silently: 7 ms at 50 Mbit/s, less than a busy 2-core node may leave
	// a goroutine without a core (bench/l4.sh lost 0.05–0.1% through the
	// full path that way). A goroutine of the tunnel's own takes them
	// from quic-go at once; 512 (115 ms at 50 Mbit/s of 1,400-byte
	// datagrams) wait here, and what overflows is counted (queue_full).
	h3RecvQueue = 512

	// h3KeepAlive keeps a QUIC connection with open flows alive while
	// they are quiet (the flows' own idle timeout decides when they end).
	h3KeepAlive = 15 * time.Second
)

// errDatagramTooLarge is returned by sendUDP for a payload that does not
// fit in one QUIC DATAGRAM frame of the hop; it is dropped and counted.
var errDatagramTooLarge = errors.New("proxy: UDP payload larger than the hop's QUIC datagrams")

// udpDatagrams is a tunnel stream that carries whole UDP payloads as
// HTTP/3 datagrams.
type udpDatagrams interface {
	// sendUDP sends one UDP payload as one datagram, or returns
	// errDatagramTooLarge (nothing sent) or the error that ended the
	// stream.
	sendUDP(payload []byte) error
	// recvUDP returns the next UDP payload, valid until the next call;
	// io.EOF once the peer ended the tunnel.
	recvUDP() ([]byte, error)
}

// datagramsOf returns the HTTP/3 datagrams under a tunnel stream, or nil
// when the stream carries capsules.
func datagramsOf(s io.ReadWriteCloser) udpDatagrams {
	for range 4 { // wrappers do not nest deeper
		if d, ok := s.(udpDatagrams); ok {
			return d
		}
		w, ok := s.(interface{ unwrapStream() io.ReadWriteCloser })
		if !ok {
			return nil
		}
		s = w.unwrapStream()
	}
	return nil
}

// UDPHopStats are a Pool's counters of UDP tunnels over HTTP/3 between
// meshd hops: those its Tunnel opened (client) and those a Handler using
// the pool accepted (server). Sent and received count HTTP/3 datagrams in
// either role.
type UDPHopStats struct {
	H3Opened    int64 // tunnels opened to a peer over HTTP/3
	H3Accepted  int64 // tunnels accepted from a peer over HTTP/3
	H3Fallbacks int64 // UDP tunnels to a TLS peer carried over HTTP/2 or HTTP/1.1 instead (QUIC failed now or recently)
	H3DialFails int64 // QUIC dials that failed or timed out
	PeersNoH3   int64 // peers now remembered as unreachable over HTTP/3 (a gauge)

	DatagramsSent     int64
	DatagramsReceived int64
	DroppedTooLarge   int64 // did not fit in one QUIC DATAGRAM frame ("too_large")
	DroppedBadContext int64 // received with a context ID other than 0, or without one
	DroppedQueueFull  int64 // received while the tunnel's reader was h3RecvQueue behind ("queue_full")
}

type udpHopCounters struct {
	opened, accepted, fallbacks, dialFails atomic.Int64
	sent, received, tooLarge, badCtx       atomic.Int64
	queueFull                              atomic.Int64
}

// UDPHopStats returns the pool's HTTP/3 tunnel counters.
func (p *Pool) UDPHopStats() UDPHopStats {
	c := &p.udpHop
	st := UDPHopStats{
		H3Opened:          c.opened.Load(),
		H3Accepted:        c.accepted.Load(),
		H3Fallbacks:       c.fallbacks.Load(),
		H3DialFails:       c.dialFails.Load(),
		DatagramsSent:     c.sent.Load(),
		DatagramsReceived: c.received.Load(),
		DroppedTooLarge:   c.tooLarge.Load(),
		DroppedBadContext: c.badCtx.Load(),
		DroppedQueueFull:  c.queueFull.Load(),
	}
	now := time.Now().UnixNano()
	p.transports.Range(func(_, v any) bool {
		if h := v.(*upstreamConns).h3; h != nil && h.noH3Until.Load() > now {
			st.PeersNoH3++
		}
		return true
	})
	return st
}

// h3Stream is what both ends of an HTTP/3 request stream provide:
// *http3.RequestStream (client) and *http3.Stream (server).
type h3Stream interface {
	io.ReadWriteCloser
	CancelRead(quic.StreamErrorCode)
	CancelWrite(quic.StreamErrorCode)
	SendDatagram([]byte) error
	ReceiveDatagram(context.Context) ([]byte, error)
}

// h3UDP is a UDP tunnel on an HTTP/3 request stream. Read and Write carry
// DATAGRAM capsules (each Read returns at most one), translated to and from
// HTTP/3 datagrams; sendUDP and recvUDP carry bare payloads. One goroutine
// may read and one may write at a time.
type h3UDP struct {
	str     h3Stream
	c       *udpHopCounters
	ctx     context.Context // ends at Close
	cancel  context.CancelFunc
	release func() // at Close; may be nil
	once    sync.Once
	drained chan struct{} // closed when the stream's own bytes ended
	rq      chan []byte   // received datagrams; closed when they ended
	rerr    error         // why, once rq is closed

	wmu   sync.Mutex
	wpend []byte // Write: the start of a capsule not yet complete
	sbuf  []byte // context ID and payload

	rmu   sync.Mutex
	rpend []byte // Read: a capsule not yet returned whole
	roff  int
}

var _ udpDatagrams = (*h3UDP)(nil)

func newH3UDP(str h3Stream, c *udpHopCounters, release func()) *h3UDP {
	s := &h3UDP{str: str, c: c, release: release, drained: make(chan struct{}), rq: make(chan []byte, h3RecvQueue)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.drain()
	go s.receive()
	return s
}

// receive moves datagrams from quic-go's short queue to rq as they come
// (see h3RecvQueue). quic-go hands out a new slice for each.
func (s *h3UDP) receive() {
	defer close(s.rq)
	for {
		b, err := s.str.ReceiveDatagram(s.ctx)
		if err != nil {
			s.rerr = err
			return
		}
		select {
		case s.rq <- b:
		default:
			s.c.queueFull.Add(1)
		}
	}
}

// drain reads the stream's own bytes until the peer ends it. meshd sends
// none (its datagrams go as QUIC DATAGRAM frames); capsules of a peer are
// ignored, as RFC 9297 §3.2 allows for types one does not use. quic-go
// ends the stream's datagrams only after a read saw its end: ReceiveDatagram
// then returns what is queued and the end after it.
func (s *h3UDP) drain() {
	defer close(s.drained)
	buf := make([]byte, 512)
	for {
		if _, err := s.str.Read(buf); err != nil {
			return
		}
	}
}

func (s *h3UDP) sendUDP(payload []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.sendLocked(payload)
}

func (s *h3UDP) sendLocked(payload []byte) error {
	s.sbuf = append(append(s.sbuf[:0], 0), payload...) // context ID 0 (RFC 9298 §5)
	err := s.str.SendDatagram(s.sbuf)
	if err == nil {
		s.c.sent.Add(1)
		return nil
	}
	var tl *quic.DatagramTooLargeError
	if errors.As(err, &tl) {
		s.c.tooLarge.Add(1)
		return errDatagramTooLarge
	}
	if s.ctx.Err() != nil {
		return net.ErrClosed
	}
	return err
}

func (s *h3UDP) recvUDP() ([]byte, error) {
	for {
		b, ok := <-s.rq
		if !ok {
			err := s.rerr
			switch {
			case s.ctx.Err() != nil:
				return nil, net.ErrClosed
			case errors.Is(err, io.EOF):
				return nil, io.EOF
			}
			return nil, err
		}
		id, data, err := parseDatagram(b)
		if err != nil || id != 0 {
			s.c.badCtx.Add(1)
			continue
		}
		s.c.received.Add(1)
		return data, nil
	}
}

// Read returns the next datagram as a DATAGRAM capsule, or what is left of
// one that did not fit p.
func (s *h3UDP) Read(p []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.roff >= len(s.rpend) {
		b, err := s.recvUDP()
		if err != nil {
			return 0, err
		}
		s.rpend = appendDatagram(s.rpend[:0], b)
		s.roff = 0
	}
	n := copy(p, s.rpend[s.roff:])
	s.roff += n
	return n, nil
}

// Write takes capsules, in pieces of any size, and sends each DATAGRAM
// capsule's payload as one datagram. Payloads too large for the hop are
// dropped and counted, capsules of other types ignored (RFC 9297 §3.2); a
// capsule longer than maxCapsuleLen or without a context ID is an error.
func (s *h3UDP) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wpend = append(s.wpend, p...)
	b := s.wpend
	for {
		typ, n1 := parseVarint(b)
		if n1 == 0 {
			break
		}
		l, n2 := parseVarint(b[n1:])
		if n2 == 0 {
			break
		}
		if l > maxCapsuleLen {
			return 0, fmt.Errorf("%w: type %#x, %d bytes", errCapsuleTooLarge, typ, l)
		}
		end := n1 + n2 + int(l)
		if len(b) < end {
			break
		}
		v := b[n1+n2 : end]
		b = b[end:]
		if typ != capsuleDatagram {
			continue
		}
		id, data, err := parseDatagram(v)
		if err != nil {
			return 0, err
		}
		if id != 0 {
			s.c.badCtx.Add(1)
			continue
		}
		if err := s.sendLocked(data); err != nil && err != errDatagramTooLarge {
			return 0, err
		}
	}
	s.wpend = s.wpend[:copy(s.wpend, b)]
	return len(p), nil
}

// Close ends the tunnel in both directions: FIN on the stream, so the
// peer's side ends too, and STOP_SENDING for what the peer still sends.
func (s *h3UDP) Close() error {
	s.once.Do(func() {
		s.cancel()
		s.str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
		_ = s.str.Close()
		if s.release != nil {
			s.release()
		}
	})
	return nil
}

// acceptH3UDP answers a CONNECT-UDP request served over HTTP/3 with hdr
// and 200, and returns its tunnel: datagrams on the request stream.
func acceptH3UDP(w http.ResponseWriter, hdr http.Header, c *udpHopCounters) (io.ReadWriteCloser, error) {
	hs := httpStreamer(w)
	if hs == nil {
		return nil, errors.New("proxy: the HTTP/3 server cannot hand over its stream")
	}
	for k, vv := range hdr {
		w.Header()[k] = vv
	}
	w.Header()[http3.CapsuleProtocolHeader] = []string{"?1"} // RFC 9297 §3.4
	w.WriteHeader(http.StatusOK)
	str, err := hs.HTTPStream() // sends the header
	if err != nil {
		return nil, err
	}
	c.accepted.Add(1)
	return newH3UDP(str, c, nil), nil
}

// httpStreamer finds quic-go's response writer under the writers of the
// chain in front (guard, access log), which unwrap as for
// http.ResponseController.
func httpStreamer(w http.ResponseWriter) http3.HTTPStreamer {
	for range 8 {
		if hs, ok := w.(http3.HTTPStreamer); ok {
			return hs
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
	return nil
}

// isConnectUDP reports whether r, served over HTTP/3, is a CONNECT-UDP
// request; quic-go puts the :protocol of an extended CONNECT in Proto.
func isConnectUDP(r *http.Request) bool {
	return r.ProtoMajor == 3 && r.Method == http.MethodConnect && r.Proto == protocolConnectUDP
}

// h3Peer is the HTTP/3 side of one TLS upstream: its QUIC connection,
// dialed on the first UDP tunnel, and whether QUIC failed recently.
type h3Peer struct {
	addr        string
	tls         *tls.Config
	qconf       *quic.Config
	dialTimeout time.Duration
	holdDown    time.Duration
	headerTime  time.Duration
	idleTimeout time.Duration
	c           *udpHopCounters
	noH3Until   atomic.Int64 // unix nanoseconds; 0: QUIC worked or was not tried

	mu      sync.Mutex
	cur     *h3Conn
	dialing chan struct{} // closed when the dial in progress ends
}

// h3Conn is one QUIC connection to a peer, on a UDP socket of its own,
// and the tunnels on it.
type h3Conn struct {
	peer  *h3Peer
	tr    *quic.Transport
	qc    *quic.Conn
	cc    *http3.ClientConn
	flows int         // under peer.mu
	idle  *time.Timer // closes the connection once it carried no flow for idleTimeout; under peer.mu
}

func (p *Pool) newH3Peer(u *Upstream, headerTimeout, idleTimeout time.Duration) *h3Peer {
	cfg := u.TLS.Clone()
	markCertErrors(cfg)
	cfg.NextProtos = []string{http3.NextProtoH3}
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(u.Addr)
	}
	dialTimeout := orDefault(p.H3DialTimeout, DefaultH3DialTimeout)
	return &h3Peer{
		addr: u.Addr,
		tls:  cfg,
		qconf: &quic.Config{
			EnableDatagrams:      true,
			HandshakeIdleTimeout: dialTimeout,
			MaxIdleTimeout:       idleTimeout,
			KeepAlivePeriod:      h3KeepAlive,
			InitialPacketSize:    h3PacketSize,
		},
		dialTimeout: dialTimeout,
		holdDown:    orDefault(p.H3HoldDown, DefaultH3HoldDown),
		headerTime:  headerTimeout,
		idleTimeout: idleTimeout,
		c:           &p.udpHop,
	}
}

// blocked reports whether QUIC to the peer failed within the hold-down.
func (h *h3Peer) blocked() bool {
	until := h.noH3Until.Load()
	return until != 0 && time.Now().UnixNano() < until
}

// acquire returns the peer's connection with one more flow counted on it,
// dialing it first if there is none. One dial at a time: other flows wait
// for its outcome.
func (h *h3Peer) acquire(ctx context.Context) (*h3Conn, error) {
	for {
		h.mu.Lock()
		if hc := h.cur; hc != nil {
			if hc.qc.Context().Err() == nil && hc.flows >= h3MaxFlowsPerConn {
				// Full: a peer refuses streams past its limit (250 by
				// default), and a flow waiting for one would lose its
				// datagrams. The next flows go on a new connection;
				// this one serves its own until they end.
				h.cur = nil
			} else if hc.qc.Context().Err() == nil {
				hc.flows++
				if hc.idle != nil {
					hc.idle.Stop()
					hc.idle = nil
				}
				h.mu.Unlock()
				return hc, nil
			}
			h.cur = nil
		}
		if wait := h.dialing; wait != nil {
			h.mu.Unlock()
			select {
			case <-wait:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if h.blocked() {
				return nil, errors.New("proxy: QUIC dial failed")
			}
			continue
		}
		done := make(chan struct{})
		h.dialing = done
		h.mu.Unlock()

		hc, err := h.dial(ctx)
		h.mu.Lock()
		h.dialing = nil
		close(done)
		if err != nil {
			h.mu.Unlock()
			if ctx.Err() == nil {
				// A dial cut short by its flow says nothing of the path.
				h.noH3Until.Store(time.Now().Add(h.holdDown).UnixNano())
				h.c.dialFails.Add(1)
				slog.Warn("proxy: QUIC to a mesh peer failed: its UDP flows go over HTTP/2 for a while",
					"peer", h.addr, "for", h.holdDown, "err", err)
			}
			return nil, err
		}
		h.noH3Until.Store(0)
		h.cur = hc
		hc.flows = 1
		h.mu.Unlock()
		context.AfterFunc(hc.qc.Context(), func() { hc.closed() })
		return hc, nil
	}
}

// dial opens a QUIC connection to the peer within dialTimeout and waits
// for its SETTINGS, which must offer HTTP datagrams and extended CONNECT.
// The socket is bound to the local address the system routes the peer
// from (127.0.0.1 for a peer on loopback), never to every interface.
func (h *h3Peer) dial(ctx context.Context) (*h3Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, h.dialTimeout)
	defer cancel()
	host, port, err := net.SplitHostPort(h.addr)
	if err != nil {
		return nil, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	raddr, err := net.ResolveUDPAddr("udp", net.JoinHostPort(ips[0].Unmap().String(), port))
	if err != nil {
		return nil, err
	}
	probe, err := net.DialUDP("udp", nil, raddr) // no packet: only picks the route
	if err != nil {
		return nil, err
	}
	laddr := *probe.LocalAddr().(*net.UDPAddr)
	probe.Close()
	laddr.Port = 0
	pc, err := net.ListenUDP("udp", &laddr)
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: pc}
	qc, err := tr.Dial(ctx, raddr, h.tls, h.qconf)
	if err != nil {
		tr.Close()
		pc.Close()
		return nil, fmt.Errorf("quic dial %s: %w", h.addr, err)
	}
	fail := func(err error) (*h3Conn, error) {
		_ = qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		tr.Close()
		pc.Close()
		return nil, err
	}
	cc := (&http3.Transport{EnableDatagrams: true, QUICConfig: h.qconf}).NewClientConn(qc)
	select {
	case <-cc.ReceivedSettings():
	case <-qc.Context().Done():
		// With TLS 1.3 the client's handshake completes before the
		// server has checked the client's certificate: a refusal
		// arrives as the connection's close.
		return fail(fmt.Errorf("quic %s: %w", h.addr, context.Cause(qc.Context())))
	case <-ctx.Done():
		return fail(fmt.Errorf("no HTTP/3 SETTINGS from %s: %w", h.addr, ctx.Err()))
	}
	if s := cc.Settings(); !s.EnableDatagrams || !s.EnableExtendedConnect {
		return fail(fmt.Errorf("%s serves HTTP/3 without datagrams or extended CONNECT", h.addr))
	}
	return &h3Conn{peer: h, tr: tr, qc: qc, cc: cc}, nil
}

// closed runs when the connection ended, whoever ended it: its socket is
// closed and the next flow dials again.
func (hc *h3Conn) closed() {
	h := hc.peer
	h.mu.Lock()
	if h.cur == hc {
		h.cur = nil
	}
	if hc.idle != nil {
		hc.idle.Stop()
	}
	h.mu.Unlock()
	hc.tr.Close()
	hc.tr.Conn.Close()
}

// release ends one flow's use of the connection; the last one leaves it
// open for idleTimeout, for the next flow.
func (hc *h3Conn) release() {
	h := hc.peer
	h.mu.Lock()
	defer h.mu.Unlock()
	hc.flows--
	switch {
	case hc.flows == 0 && h.cur == hc:
		hc.idle = time.AfterFunc(h.idleTimeout, func() { hc.closeIfIdle() })
	case hc.flows == 0:
		// A connection that filled up and was replaced: nobody will
		// put a flow on it again.
		go func() { _ = hc.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "") }()
	}
}

// h3MaxFlowsPerConn is the most UDP flows one QUIC connection to a peer
// carries, each a stream: under the 250 streams meshd's HTTP/3 server
// allows a connection (Server.MaxConcurrentStreams).
const h3MaxFlowsPerConn = 200

func (hc *h3Conn) closeIfIdle() {
	hc.peer.mu.Lock()
	idle := hc.flows == 0
	hc.peer.mu.Unlock()
	if idle {
		_ = hc.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "idle")
	}
}

// closeIdle closes the connection if it carries no flow.
func (h *h3Peer) closeIdle() {
	h.mu.Lock()
	hc := h.cur
	h.mu.Unlock()
	if hc != nil {
		hc.closeIfIdle()
	}
}

// tunnelH3 opens a CONNECT-UDP tunnel for req to the peer over HTTP/3.
// ok false means the tunnel could not be opened over HTTP/3 before the
// peer answered (QUIC blocked or failed, now or within the hold-down; the
// connection broke): nothing reached the peer's handler, and the caller
// carries the tunnel over HTTP/2. A refusal by the peer (stream nil, resp
// its answer) and success are final.
func (h *h3Peer) tunnelH3(req *http.Request) (resp *http.Response, stream io.ReadWriteCloser, ok bool) {
	if h.blocked() {
		h.c.fallbacks.Add(1)
		return nil, nil, false
	}
	ctx := req.Context()
	hc, err := h.acquire(ctx)
	if err != nil {
		h.c.fallbacks.Add(1)
		return nil, nil, false
	}
	resp, stream, err = hc.open(req)
	if err != nil {
		hc.release()
		if ctx.Err() == nil {
			slog.Debug("proxy: CONNECT-UDP over HTTP/3 failed, trying HTTP/2", "peer", h.addr, "err", err)
		}
		h.c.fallbacks.Add(1)
		return nil, nil, false
	}
	if stream == nil {
		hc.release()
	}
	return resp, stream, true
}

// open sends the extended CONNECT on a new request stream and reads the
// answer.
func (hc *h3Conn) open(req *http.Request) (*http.Response, io.ReadWriteCloser, error) {
	ctx := req.Context()
	rs, err := hc.cc.OpenRequestStream(ctx)
	if err != nil {
		return nil, nil, err
	}
	abort := func() {
		rs.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
		rs.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
	}
	stop := context.AfterFunc(ctx, abort)
	defer stop()
	hdr := req.Header.Clone()
	hdr[http3.CapsuleProtocolHeader] = []string{"?1"} // RFC 9298 §3.2
	out := (&http.Request{
		Method: http.MethodConnect,
		Proto:  protocolConnectUDP,
		Host:   req.Host,
		URL:    &url.URL{Scheme: "https", Host: req.Host, Path: masquePath(req.Host)},
		Header: hdr,
	}).WithContext(ctx)
	if err := rs.SendRequestHeader(out); err != nil {
		abort()
		return nil, nil, err
	}
	if t := hc.peer.headerTime; t > 0 {
		_ = rs.SetReadDeadline(time.Now().Add(t))
	}
	resp, err := rs.ReadResponse()
	if err != nil {
		abort()
		return nil, nil, err
	}
	_ = rs.SetReadDeadline(time.Time{})
	if resp.StatusCode/100 != 2 {
		resp.Body = &abortWith{ReadCloser: resp.Body, abort: abort}
		return resp, nil, nil
	}
	resp.Body = http.NoBody
	hc.peer.c.opened.Add(1)
	return resp, newH3UDP(rs, hc.peer.c, hc.release), nil
}

// abortWith resets a refused tunnel's stream with its answer's body.
type abortWith struct {
	io.ReadCloser
	abort func()
}

func (b *abortWith) Close() error {
	err := b.ReadCloser.Close()
	b.abort()
	return err
}

// masquePath is the request target of CONNECT-UDP for authority, RFC
// 9298's default template /.well-known/masque/udp/{host}/{port}/. Between
// meshd hops :authority names the target too (meshd routes tunnels by
// it, "dns.mesh:dns"), so the path only repeats it.
func masquePath(authority string) string {
	host, port, err := net.SplitHostPort(authority)
	if err != nil {
		host, port = authority, "0"
	}
	return "/.well-known/masque/udp/" + host + "/" + port + "/" // url.URL.Path: escaped when sent
}
