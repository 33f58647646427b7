package proxy

// UDP flows over a reliable byte stream: the two ends of a CONNECT-UDP
// tunnel (RFC 9298) carried on HTTP/2 or HTTP/1.1, where each UDP payload
// travels as one DATAGRAM capsule with context ID 0 (RFC 9297 §3.5, RFC
// 9298 §5). Both ends are written against io.ReadWriteCloser, so they plug
// into whatever carries the stream (an HTTP/2 CONNECT stream between meshd
// hops, a test pipe).
//
//	client ──UDP──▶ UDPForwarder ══capsules══▶ RelayUDP ──UDP──▶ target
//	(app, user)     (sidecar --udp-out,          (sidecar beside   (127.0.0.1:53)
//	                 edge public UDP port)        the app)
//
// Between meshd hops the stream is, where UDP gets through, an HTTP/3
// request stream whose datagrams carry the payloads (h3udp.go,
// Pool.UDPOverHTTP3); both ends then skip the capsule framing and send
// each payload as one QUIC DATAGRAM frame, and one too large for it is
// dropped and counted (DroppedTooLarge).
//
// UDP semantics are kept end to end: a datagram is delivered whole or not at
// all. Nothing is fragmented, and nothing waits behind a slow flow: where a
// queue is full or a payload is too long the datagram is dropped and
// counted.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	defaultUDPIdleTimeout = 60 * time.Second
	defaultUDPMaxFlows    = 10000

	// udpFlowQueue is the number of datagrams a flow holds while its stream
	// opens or while a write to the stream is in progress.
	udpFlowQueue = 1024

	// udpSocketBuffer is the kernel buffer asked for each UDP socket
	// (growUDPBuffers): 4 MiB holds about 1,700 datagrams of 1,400 bytes
	// (the kernel counts about 2.3 KiB each), 0.4 s of 50 Mbit/s. With
	// the default 208 KiB, 20 ms, a moment without a core on a busy
	// 2-core machine lost 0.6% at 50 Mbit/s (bench/l4.sh).
	udpSocketBuffer = 4 << 20

	// udpOpenHoldDown is how long a client whose stream failed to open has
	// its datagrams dropped before the next datagram tries again (at most
	// the idle timeout), so a dead upstream is not asked once per datagram.
	udpOpenHoldDown = time.Second

	// udpReadBuf is the initial capsule buffer of a flow; it grows, once,
	// to the largest capsule the flow receives.
	udpReadBuf = 2048
)

// UDPStats are the counters of a UDPForwarder or of one RelayUDP call. "Up"
// is the direction from the UDP client toward the target, "down" the
// answers. Bytes count UDP payload only.
type UDPStats struct {
	Flows       int64 // flows opened (forwarder)
	ActiveFlows int64 // flows now open or opening (forwarder)
	OpenErrors  int64 // streams that failed to open (forwarder)

	DatagramsUp   int64 // forwarder: written to a stream; relay: sent to the target
	BytesUp       int64
	DatagramsDown int64 // forwarder: sent to the client; relay: written to the stream
	BytesDown     int64

	// Of DatagramsUp and DatagramsDown, those the stream carried as
	// HTTP/3 datagrams (QUIC DATAGRAM frames, Pool.UDPOverHTTP3); the
	// others went as DATAGRAM capsules on an HTTP/2 or HTTP/1.1 stream.
	DatagramsUpH3   int64
	DatagramsDownH3 int64

	DroppedTooBig       int64 // payload over maxUDPPayload (65527 bytes)
	DroppedTooLarge     int64 // payload that does not fit in one QUIC DATAGRAM frame of an HTTP/3 hop (about 1,410 bytes)
	DroppedQueueFull    int64 // the flow's queue was full
	DroppedTooManyFlows int64 // a new client beyond MaxFlows
	DroppedBadContext   int64 // DATAGRAM capsule with a context ID other than 0
	DroppedFlowClosed   int64 // queued for, or sent to, a flow whose stream failed or closed
	DroppedSendError    int64 // the UDP socket refused it (EMSGSIZE) or reported it refused later (ICMP port unreachable: then it is in DatagramsUp too)
}

type udpCounters struct {
	flows, active, openErrors                            atomic.Int64
	dgUp, bytesUp, dgDown, bytesDown                     atomic.Int64
	h3Up, h3Down                                         atomic.Int64
	tooBig, queueFull, tooMany, badCtx, closed, sendErrs atomic.Int64
	tooLarge                                             atomic.Int64
}

func (c *udpCounters) snapshot() UDPStats {
	return UDPStats{
		Flows:               c.flows.Load(),
		ActiveFlows:         c.active.Load(),
		OpenErrors:          c.openErrors.Load(),
		DatagramsUp:         c.dgUp.Load(),
		BytesUp:             c.bytesUp.Load(),
		DatagramsDown:       c.dgDown.Load(),
		BytesDown:           c.bytesDown.Load(),
		DatagramsUpH3:       c.h3Up.Load(),
		DatagramsDownH3:     c.h3Down.Load(),
		DroppedTooLarge:     c.tooLarge.Load(),
		DroppedTooBig:       c.tooBig.Load(),
		DroppedQueueFull:    c.queueFull.Load(),
		DroppedTooManyFlows: c.tooMany.Load(),
		DroppedBadContext:   c.badCtx.Load(),
		DroppedFlowClosed:   c.closed.Load(),
		DroppedSendError:    c.sendErrs.Load(),
	}
}

// readDatagrams reads capsules from r until it ends and hands every UDP
// payload (context ID 0, at most maxUDPPayload bytes) to deliver; the slice
// is only valid during the call. Other context IDs and longer payloads are
// dropped and counted. A clean end of the stream between capsules returns
// nil; a malformed or oversized capsule returns an error. A stream of
// HTTP/3 datagrams (datagramsOf) is read datagram by datagram, and
// counted in h3 when deliver reports it delivered.
func (c *udpCounters) readDatagrams(r io.ReadWriteCloser, h3 *atomic.Int64, deliver func([]byte) bool) error {
	if d := datagramsOf(r); d != nil {
		for {
			b, err := d.recvUDP()
			if err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
			if deliver(b) {
				h3.Add(1)
			}
		}
	}
	br := bufio.NewReader(r)
	buf := make([]byte, udpReadBuf)
	for {
		_, v, err := readCapsule(br, buf)
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if cap(v) > cap(buf) {
			buf = v[:cap(v)]
		}
		id, data, err := parseDatagram(v)
		switch {
		case err != nil:
			return err
		case id != 0:
			c.badCtx.Add(1)
		case len(data) > maxUDPPayload:
			c.tooBig.Add(1)
		default:
			deliver(data)
		}
	}
}

// writeDatagram sends one UDP payload on stream: as an HTTP/3 datagram
// when dg is set (counted in h3), else as a DATAGRAM capsule built in
// *wbuf. A payload that does not fit the hop's QUIC datagrams is dropped,
// counted and reported as errDatagramTooLarge: the flow goes on.
func (c *udpCounters) writeDatagram(stream io.Writer, dg udpDatagrams, wbuf *[]byte, b []byte, h3 *atomic.Int64) error {
	if dg != nil {
		err := dg.sendUDP(b)
		switch {
		case err == errDatagramTooLarge:
			c.tooLarge.Add(1)
		case err == nil:
			h3.Add(1)
		}
		return err
	}
	*wbuf = appendDatagram((*wbuf)[:0], b)
	_, err := stream.Write(*wbuf)
	return err
}

// UDPForwarder is the client end of UDP tunnels: it serves a UDP socket (a
// sidecar's --udp-out listener, an edge's public UDP port) and carries each
// client's datagrams over a stream of its own.
type UDPForwarder struct {
	// Open opens the stream for a new flow from client (for example a
	// CONNECT-UDP request to the next hop). The context ends when the flow
	// or Serve does, and bounds the opening to IdleTimeout. Required.
	Open func(ctx context.Context, client netip.AddrPort) (io.ReadWriteCloser, error)

	// IdleTimeout closes a flow that has carried no datagram in either
	// direction for this long. Default 60 s.
	IdleTimeout time.Duration

	// MaxFlows bounds the flows open at once; a datagram from a new client
	// beyond it is dropped and counted. Default 10000.
	MaxFlows int

	// Logger receives stream failures (warn) and flow opens and closes
	// (debug). Default slog.Default().
	Logger *slog.Logger

	c udpCounters
}

// Stats returns the forwarder's counters since it was created, over all its
// Serve calls. It is safe to call at any time.
func (f *UDPForwarder) Stats() UDPStats { return f.c.snapshot() }

var errUDPNoOpen = errors.New("proxy: UDPForwarder: Open is required")

// Serve reads datagrams from pc until ctx ends or pc is closed, with one
// flow per client source address. A flow's first datagram opens its stream
// in the background; datagrams that arrive meanwhile wait in the flow's
// small queue. Every datagram goes to the stream as one DATAGRAM capsule,
// and every datagram read back is sent to the client from pc. Serve closes
// all its flows before it returns: nil when ctx ended, the read error
// (net.ErrClosed) when pc was closed. pc itself is left open.
func (f *UDPForwarder) Serve(ctx context.Context, pc *net.UDPConn) error {
	if f.Open == nil {
		return errUDPNoOpen
	}
	growUDPBuffers(pc)
	s := &udpServe{
		f:        f,
		pc:       pc,
		c:        &f.c,
		idle:     f.IdleTimeout,
		maxFlows: f.MaxFlows,
		logger:   f.Logger,
		start:    time.Now(),
		flows:    make(map[netip.AddrPort]*udpFlow),
	}
	if s.idle <= 0 {
		s.idle = defaultUDPIdleTimeout
	}
	if s.maxFlows <= 0 {
		s.maxFlows = defaultUDPMaxFlows
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	s.ctx = ctx
	unblock := context.AfterFunc(parent, func() { pc.SetReadDeadline(aLongTimeAgo) })

	err := s.readLoop()
	if parent.Err() != nil {
		err = nil
	}
	cancel()
	s.wg.Wait()
	if !unblock() {
		pc.SetReadDeadline(time.Time{}) // the deadline was ours
	}
	return err
}

type udpServe struct {
	f        *UDPForwarder
	pc       *net.UDPConn
	c        *udpCounters
	ctx      context.Context
	idle     time.Duration
	maxFlows int
	logger   *slog.Logger
	start    time.Time
	wg       sync.WaitGroup

	mu    sync.Mutex // guards flows and every flow's removal
	flows map[netip.AddrPort]*udpFlow
}

type udpFlow struct {
	client netip.AddrPort
	queue  chan []byte
	ctx    context.Context
	cancel context.CancelFunc
	timer  *time.Timer  // idle check; set and run under udpServe.mu
	last   atomic.Int64 // time of the last datagram, since udpServe.start
	failed atomic.Bool  // Open failed: drop until removed
	gone   bool         // removed from the map; under udpServe.mu
}

func (s *udpServe) now() int64 { return int64(time.Since(s.start)) }

func (s *udpServe) readLoop() error {
	buf := make([]byte, maxUDPPayload+1) // a longer datagram is cut to this
	for {
		n, client, err := s.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		if n > maxUDPPayload {
			s.c.tooBig.Add(1)
			continue
		}
		s.deliver(client, buf[:n])
	}
}

// deliver hands one datagram from client to its flow, starting the flow if
// there is none. The send into the queue happens under s.mu, so a flow that
// removes itself (idle, failed) never leaves behind a datagram it accepted.
func (s *udpServe) deliver(client netip.AddrPort, b []byte) {
	s.mu.Lock()
	fl := s.flows[client]
	if fl == nil {
		if len(s.flows) >= s.maxFlows {
			s.mu.Unlock()
			s.c.tooMany.Add(1)
			return
		}
		fl = s.newFlowLocked(client)
	}
	if fl.failed.Load() {
		s.mu.Unlock()
		s.c.closed.Add(1)
		return
	}
	fl.last.Store(s.now())
	select {
	case fl.queue <- append([]byte(nil), b...):
	default:
		s.c.queueFull.Add(1)
	}
	s.mu.Unlock()
}

func (s *udpServe) newFlowLocked(client netip.AddrPort) *udpFlow {
	fl := &udpFlow{client: client, queue: make(chan []byte, udpFlowQueue)}
	fl.ctx, fl.cancel = context.WithCancel(s.ctx)
	fl.last.Store(s.now())
	fl.timer = time.AfterFunc(s.idle, func() { s.checkIdle(fl) })
	s.flows[client] = fl
	s.c.flows.Add(1)
	s.c.active.Add(1)
	s.wg.Add(1)
	go s.run(fl)
	return fl
}

// checkIdle runs on the flow's timer: it closes a flow that carried nothing
// for s.idle, or sets the timer for the rest. A datagram queued under s.mu
// has moved fl.last, so none can slip in between this check and the
// removal; one still queued here has waited s.idle behind a stuck write,
// and closing the stream ends that write too.
func (s *udpServe) checkIdle(fl *udpFlow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fl.gone {
		return
	}
	if rest := s.idle - time.Duration(s.now()-fl.last.Load()); rest > 0 {
		fl.timer.Reset(rest)
		return
	}
	s.removeLocked(fl)
	fl.cancel()
}

func (s *udpServe) removeLocked(fl *udpFlow) {
	if fl.gone {
		return
	}
	fl.gone = true
	fl.timer.Stop()
	if s.flows[fl.client] == fl {
		delete(s.flows, fl.client)
	}
}

// run is a flow's goroutine: it opens the stream, starts the reader that
// answers the client and writes queued datagrams to the stream until the
// flow ends.
func (s *udpServe) run(fl *udpFlow) {
	defer s.wg.Done()
	defer s.c.active.Add(-1)
	reason := s.serveFlow(fl)
	fl.cancel()
	s.mu.Lock()
	s.removeLocked(fl)
	s.mu.Unlock()
	// Nothing is sent into the queue once the flow is gone.
	s.c.closed.Add(int64(len(fl.queue)))
	s.logger.Debug("proxy: udp flow closed", "client", fl.client, "reason", reason)
}

func (s *udpServe) serveFlow(fl *udpFlow) string {
	openCtx, cancelOpen := context.WithTimeout(fl.ctx, s.idle)
	stream, err := s.f.Open(openCtx, fl.client)
	cancelOpen()
	if err != nil {
		s.c.openErrors.Add(1)
		fl.failed.Store(true)
		if fl.ctx.Err() == nil {
			s.logger.Warn("proxy: udp flow: opening the stream failed", "client", fl.client, "err", err)
			hold := min(udpOpenHoldDown, s.idle)
			t := time.NewTimer(hold)
			select {
			case <-t.C:
			case <-fl.ctx.Done():
			}
			t.Stop()
		}
		return "open failed"
	}
	if fl.ctx.Err() != nil { // idle or Serve ended while opening
		stream.Close()
		return "closed while opening"
	}
	s.logger.Debug("proxy: udp flow opened", "client", fl.client)
	var once sync.Once
	closeStream := func() { once.Do(func() { stream.Close() }) }
	stop := context.AfterFunc(fl.ctx, closeStream)
	defer stop()
	defer closeStream()

	readErr := make(chan error, 1)
	go func() {
		err := s.c.readDatagrams(stream, &s.c.h3Down, func(b []byte) bool {
			if _, err := s.pc.WriteToUDPAddrPort(b, fl.client); err != nil {
				s.c.sendErrs.Add(1)
				return false
			}
			fl.last.Store(s.now())
			s.c.dgDown.Add(1)
			s.c.bytesDown.Add(int64(len(b)))
			return true
		})
		if fl.ctx.Err() != nil {
			err = errFlowClosed // we closed the stream: whatever the read says
		} else if err == nil {
			err = io.EOF
		}
		fl.cancel()
		readErr <- err
	}()

	var wbuf []byte
	dg := datagramsOf(stream)
	reason := "closed"
	for fl.ctx.Err() == nil {
		select {
		case b := <-fl.queue:
			if err := s.c.writeDatagram(stream, dg, &wbuf, b, &s.c.h3Up); err == errDatagramTooLarge {
				continue
			} else if err != nil {
				if fl.ctx.Err() == nil {
					s.logger.Warn("proxy: udp flow: write to stream failed", "client", fl.client, "err", err)
					reason = "write failed"
				}
				s.c.closed.Add(1)
				fl.cancel()
				break
			}
			s.c.dgUp.Add(1)
			s.c.bytesUp.Add(int64(len(b)))
		case <-fl.ctx.Done():
		}
	}
	closeStream()
	switch err := <-readErr; {
	case reason != "closed", err == errFlowClosed:
	case err == io.EOF:
		reason = "stream ended"
	default:
		s.logger.Warn("proxy: udp flow: reading the stream failed", "client", fl.client, "err", err)
		reason = "read failed"
	}
	return reason
}

var (
	errFlowClosed = errors.New("proxy: udp flow closed")
	errRelayEOF   = errors.New("proxy: udp relay: stream ended")
	errRelayIdle  = errors.New("proxy: udp relay: idle")
)

// RelayUDP is the last hop of a UDP tunnel: it dials target over UDP and
// relays between it and stream, a DATAGRAM capsule per datagram in each
// direction, until the stream ends, nothing has passed either way for idle
// (default 60 s when idle <= 0), or ctx ends. It closes stream before it
// returns. The error is nil for the end of the stream and for the idle
// timeout, ctx.Err() when ctx ended, and otherwise what broke the relay
// (dial, a malformed or oversized capsule, a failed write). Datagrams the
// target refuses (ICMP port unreachable before it listens, EMSGSIZE) are
// dropped and counted, and the relay goes on.
func RelayUDP(ctx context.Context, stream io.ReadWriteCloser, target string, idle time.Duration) (UDPStats, error) {
	var c udpCounters
	err := relayUDP(ctx, stream, target, idle, &c)
	return c.snapshot(), err
}

// relayUDP is RelayUDP counting into c, which several relays may share.
func relayUDP(ctx context.Context, stream io.ReadWriteCloser, target string, idle time.Duration, c *udpCounters) error {
	if idle <= 0 {
		idle = defaultUDPIdleTimeout
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", target)
	if err != nil {
		stream.Close()
		return err
	}
	uc := conn.(*net.UDPConn)
	growUDPBuffers(uc)

	parent := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	start := time.Now()
	var last atomic.Int64
	touch := func() { last.Store(int64(time.Since(start))) }
	var timer *time.Timer
	var timerMu sync.Mutex
	timerMu.Lock()
	timer = time.AfterFunc(idle, func() {
		timerMu.Lock()
		defer timerMu.Unlock()
		rest := idle - (time.Since(start) - time.Duration(last.Load()))
		if rest > 0 {
			timer.Reset(rest)
			return
		}
		cancel(errRelayIdle)
	})
	timerMu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		stream.Close()
		uc.Close()
	})

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // stream → target
		defer wg.Done()
		err := c.readDatagrams(stream, &c.h3Up, func(b []byte) bool {
			if _, err := uc.Write(b); err != nil {
				c.sendErrs.Add(1)
				return false
			}
			touch()
			c.dgUp.Add(1)
			c.bytesUp.Add(int64(len(b)))
			return true
		})
		if err == nil {
			err = errRelayEOF
		}
		cancel(err)
	}()
	go func() { // target → stream
		defer wg.Done()
		buf := make([]byte, maxUDPPayload+1)
		var wbuf []byte
		dg := datagramsOf(stream)
		for {
			n, err := uc.Read(buf)
			if err != nil {
				if errors.Is(err, syscall.ECONNREFUSED) {
					c.sendErrs.Add(1) // an earlier datagram was refused
					continue
				}
				cancel(err)
				return
			}
			if n > maxUDPPayload {
				c.tooBig.Add(1)
				continue
			}
			if err := c.writeDatagram(stream, dg, &wbuf, buf[:n], &c.h3Down); err == errDatagramTooLarge {
				continue
			} else if err != nil {
				cancel(err)
				return
			}
			touch()
			c.dgDown.Add(1)
			c.bytesDown.Add(int64(n))
		}
	}()
	<-ctx.Done()
	if stop() { // the AfterFunc did not run: close here
		stream.Close()
		uc.Close()
	}
	wg.Wait()
	timerMu.Lock()
	timer.Stop()
	timerMu.Unlock()

	switch cause := context.Cause(ctx); {
	case parent.Err() != nil:
		return parent.Err()
	case cause == errRelayEOF, cause == errRelayIdle:
		return nil
	default:
		return cause
	}
}
