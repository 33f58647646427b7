package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// udpEcho starts a UDP echo server on 127.0.0.1:0 and returns its address.
func udpEcho(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	growUDPBuffers(pc) // a flow's whole queue may arrive at once
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().String()
}

// relays wires UDPForwarder.Open to RelayUDP over net.Pipe and records what
// every relay returned.
type relays struct {
	target string
	idle   time.Duration
	tcp    bool // a loopback TCP pair instead of net.Pipe: capsules split and coalesce
	wg     sync.WaitGroup
	mu     sync.Mutex
	stats  []UDPStats
	errs   []error
	opened atomic.Int64
}

func (r *relays) open(ctx context.Context, client netip.AddrPort) (io.ReadWriteCloser, error) {
	var a, b net.Conn
	if r.tcp {
		var err error
		if a, b, err = loopbackTCPPair(); err != nil {
			return nil, err
		}
	} else {
		a, b = net.Pipe()
	}
	r.opened.Add(1)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		st, err := RelayUDP(context.Background(), b, r.target, r.idle)
		r.mu.Lock()
		r.stats = append(r.stats, st)
		r.errs = append(r.errs, err)
		r.mu.Unlock()
	}()
	return a, nil
}

// loopbackTCPPair returns the two ends of a loopback TCP connection.
func loopbackTCPPair() (net.Conn, net.Conn, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ac := make(chan accepted, 1)
	go func() { c, err := ln.Accept(); ac <- accepted{c, err} }()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	r := <-ac
	if r.err != nil {
		a.Close()
		return nil, nil, r.err
	}
	return a, r.c, nil
}

func (r *relays) done() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.stats)
}

// total sums the counters of the relays that returned.
func (r *relays) total() (st UDPStats, errs []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.stats {
		st.DatagramsUp += s.DatagramsUp
		st.DatagramsDown += s.DatagramsDown
		st.BytesUp += s.BytesUp
		st.BytesDown += s.BytesDown
		st.DroppedTooBig += s.DroppedTooBig
		st.DroppedBadContext += s.DroppedBadContext
		st.DroppedSendError += s.DroppedSendError
	}
	return st, append([]error(nil), r.errs...)
}

// serveUDP runs f.Serve on 127.0.0.1:0 until the test ends and returns the
// listener's address and a function that stops Serve and waits for it.
func serveUDP(t testing.TB, f *UDPForwarder) (*net.UDPAddr, func() error) {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	growUDPBuffers(pc) // before the first datagram, which may come before Serve runs
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- f.Serve(ctx, pc) }()
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-errc:
			case <-time.After(5 * time.Second):
				serveErr = errors.New("Serve did not return within 5 s of cancel")
			}
			pc.Close()
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return pc.LocalAddr().(*net.UDPAddr), stop
}

func udpClient(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	growUDPBuffers(c) // a burst of echoes waits for the test to read it
	return c
}

// pingPong sends msg from c to addr and waits up to d for the same bytes.
func pingPong(c *net.UDPConn, addr *net.UDPAddr, msg []byte, d time.Duration) error {
	if _, err := c.WriteToUDP(msg, addr); err != nil {
		return err
	}
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	for {
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if bytes.Equal(buf[:n], msg) {
			return nil
		}
	}
}

// runClient sends n datagrams "<id> <seq> <padding>" from c, at most window
// unanswered at a time, and checks that every one comes back exactly once
// and only to this client, before deadline.
func runClient(c *net.UDPConn, addr *net.UDPAddr, id string, n, window int, deadline time.Time) error {
	tokens := make(chan struct{}, window)
	for range window {
		tokens <- struct{}{}
	}
	sendErr := make(chan error, 1)
	go func() {
		for i := range n {
			select {
			case <-tokens:
			case <-time.After(time.Until(deadline)):
				sendErr <- fmt.Errorf("%s: no window for datagram %d", id, i)
				return
			}
			msg := fmt.Sprintf("%s %d %s", id, i, strings.Repeat("x", i%1200))
			if _, err := c.WriteToUDP([]byte(msg), addr); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	seen := make([]bool, n)
	buf := make([]byte, 2048)
	c.SetReadDeadline(deadline)
	for got := 0; got < n; got++ {
		m, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("%s: %d of %d echoed: %v", id, got, n, err)
		}
		var gid string
		var seq int
		if _, err := fmt.Sscanf(string(buf[:m]), "%s %d", &gid, &seq); err != nil || gid != id || seq < 0 || seq >= n {
			return fmt.Errorf("%s: got someone else's datagram %.40q", id, buf[:m])
		}
		if want := len(fmt.Sprintf("%s %d %s", id, seq, strings.Repeat("x", seq%1200))); m != want {
			return fmt.Errorf("%s: datagram %d is %d bytes, want %d", id, seq, m, want)
		}
		if seen[seq] {
			return fmt.Errorf("%s: datagram %d twice", id, seq)
		}
		seen[seq] = true
		tokens <- struct{}{}
	}
	return <-sendErr
}

// TestUDPForwardRelayEcho: 1,000 datagrams from one client, then 300 from
// each of 4 clients at once, through UDPForwarder → net.Pipe (or loopback
// TCP) → RelayUDP → a UDP echo server; every one comes back to its own
// client, none lost.
func TestUDPForwardRelayEcho(t *testing.T) {
	t.Run("pipe", func(t *testing.T) { testUDPForwardRelayEcho(t, false) })
	t.Run("tcp", func(t *testing.T) { testUDPForwardRelayEcho(t, true) })
}

func testUDPForwardRelayEcho(t *testing.T, tcp bool) {
	r := &relays{target: udpEcho(t), idle: 30 * time.Second, tcp: tcp}
	f := &UDPForwarder{Open: r.open, IdleTimeout: 30 * time.Second}
	addr, stop := serveUDP(t, f)
	deadline := time.Now().Add(10 * time.Second)

	if err := runClient(udpClient(t), addr, "solo", 1000, 32, deadline); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		c := udpClient(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- runClient(c, addr, fmt.Sprintf("c%d", i), 300, 16, deadline)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	const total = 1000 + 4*300
	// The counters move just after a datagram is sent on.
	waitFor(t, "counters", 2*time.Second, func() bool { st := f.Stats(); return st.DatagramsUp == total && st.DatagramsDown == total })
	st := f.Stats()
	t.Logf("forwarder: %+v", st)
	if st.Flows != 5 || st.ActiveFlows != 5 || st.DatagramsUp != total || st.DatagramsDown != total || st.BytesUp != st.BytesDown {
		t.Errorf("forwarder stats %+v, want 5 flows and %d datagrams each way", st, total)
	}
	if d := st.DroppedTooBig + st.DroppedQueueFull + st.DroppedTooManyFlows + st.DroppedBadContext + st.DroppedFlowClosed + st.DroppedSendError; d != 0 {
		t.Errorf("%d dropped", d)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Serve closed every flow, so every relay saw its stream end.
	waitFor(t, "relays to return", 5*time.Second, func() bool { return r.done() == 5 })
	rst, rerrs := r.total()
	t.Logf("relays: %+v", rst)
	for _, err := range rerrs {
		if err != nil {
			t.Errorf("relay: %v", err)
		}
	}
	if rst.DatagramsUp != total || rst.DatagramsDown != total || rst.BytesUp != st.BytesUp {
		t.Errorf("relay stats %+v, want %d datagrams each way", rst, total)
	}
	if st := f.Stats(); st.ActiveFlows != 0 {
		t.Errorf("%d flows active after Serve returned", st.ActiveFlows)
	}
}

// TestUDPLargeDatagram: the largest IPv4 UDP payload (65507 bytes) goes
// through whole.
func TestUDPLargeDatagram(t *testing.T) {
	r := &relays{target: udpEcho(t), idle: 10 * time.Second}
	f := &UDPForwarder{Open: r.open}
	addr, _ := serveUDP(t, f)
	c := udpClient(t)
	msg := bytes.Repeat([]byte("0123456789abcdef"), 65507/16+1)[:65507]
	if err := pingPong(c, addr, msg, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "counters", 2*time.Second, func() bool { return f.Stats().DatagramsDown == 1 })
	if st := f.Stats(); st.BytesUp != 65507 || st.BytesDown != 65507 {
		t.Fatalf("stats %+v", st)
	}
}

// TestUDPIdleTimeout: a flow that carries nothing for IdleTimeout closes
// its stream (the relay returns nil); the next datagram opens a new flow.
func TestUDPIdleTimeout(t *testing.T) {
	r := &relays{target: udpEcho(t), idle: 30 * time.Second}
	f := &UDPForwarder{Open: r.open, IdleTimeout: 150 * time.Millisecond}
	addr, _ := serveUDP(t, f)
	c := udpClient(t)
	if err := pingPong(c, addr, []byte("one"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	// Traffic keeps the flow open past the timeout.
	for i := range 6 {
		time.Sleep(50 * time.Millisecond)
		if err := pingPong(c, addr, []byte(fmt.Sprint("keep", i)), 3*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if st := f.Stats(); st.Flows != 1 || r.done() != 0 {
		t.Fatalf("flow closed while in use: %+v, %d relays returned", st, r.done())
	}
	start := time.Now()
	waitFor(t, "idle flow to close", 3*time.Second, func() bool { return f.Stats().ActiveFlows == 0 })
	waitFor(t, "relay to return", 3*time.Second, func() bool { return r.done() == 1 })
	t.Logf("closed %v after the last datagram's answer", time.Since(start).Round(time.Millisecond))
	if _, errs := r.total(); errs[0] != nil {
		t.Fatalf("relay returned %v, want nil (stream ended)", errs[0])
	}
	if err := pingPong(c, addr, []byte("two"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if st := f.Stats(); st.Flows != 2 || st.ActiveFlows != 1 || st.DroppedFlowClosed != 0 {
		t.Fatalf("stats %+v, want a second flow", st)
	}
}

// TestUDPRelayIdleTimeout: RelayUDP ends by itself when nothing passes.
func TestUDPRelayIdleTimeout(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	done := make(chan error, 1)
	go func() {
		_, err := RelayUDP(context.Background(), b, udpEcho(t), 100*time.Millisecond)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RelayUDP: %v, want nil after the idle timeout", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("RelayUDP still running 3 s after a 100 ms idle timeout")
	}
}

// TestUDPMaxFlows: a client beyond MaxFlows is dropped and counted; when a
// flow ends, a new client gets its place.
func TestUDPMaxFlows(t *testing.T) {
	r := &relays{target: udpEcho(t), idle: 30 * time.Second}
	f := &UDPForwarder{Open: r.open, MaxFlows: 2, IdleTimeout: 500 * time.Millisecond}
	addr, _ := serveUDP(t, f)
	c1, c2, c3 := udpClient(t), udpClient(t), udpClient(t)
	for _, c := range []*net.UDPConn{c1, c2} {
		if err := pingPong(c, addr, []byte("hi"), 3*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := pingPong(c3, addr, []byte("third"), 200*time.Millisecond); err == nil {
		t.Fatal("third client answered with MaxFlows 2")
	}
	if st := f.Stats(); st.DroppedTooManyFlows != 1 || st.Flows != 2 {
		t.Fatalf("stats %+v, want 1 dropped for too many flows", st)
	}
	waitFor(t, "flows to go idle", 5*time.Second, func() bool { return f.Stats().ActiveFlows == 0 })
	if err := pingPong(c3, addr, []byte("third again"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestUDPQueueWhileOpening: datagrams that arrive while the stream opens
// wait in the flow's queue; beyond the queue they are dropped and counted.
func TestUDPQueueWhileOpening(t *testing.T) {
	r := &relays{target: udpEcho(t), idle: 30 * time.Second}
	release := make(chan struct{})
	f := &UDPForwarder{
		Open: func(ctx context.Context, client netip.AddrPort) (io.ReadWriteCloser, error) {
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return r.open(ctx, client)
		},
	}
	addr, _ := serveUDP(t, f)
	c := udpClient(t)
	const n = udpFlowQueue + 22
	for i := range n {
		if _, err := c.WriteToUDP(fmt.Appendf(nil, "q%d", i), addr); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "datagrams to be queued or dropped", 5*time.Second, func() bool {
		if st := f.Stats(); st.DroppedQueueFull > n-udpFlowQueue {
			t.Fatalf("stats %+v", st)
		}
		return f.Stats().DroppedQueueFull == n-udpFlowQueue
	})
	close(release)
	buf := make([]byte, 100)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range udpFlowQueue {
		m, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%d of %d queued datagrams echoed: %v", i, udpFlowQueue, err)
		}
		if want := fmt.Sprintf("q%d", i); string(buf[:m]) != want {
			t.Fatalf("echo %d: %q, want %q (in order)", i, buf[:m], want)
		}
	}
	waitFor(t, "counters", 2*time.Second, func() bool { return f.Stats().DatagramsUp == udpFlowQueue })
	if st := f.Stats(); st.DatagramsUp != udpFlowQueue || st.DroppedQueueFull != n-udpFlowQueue {
		t.Fatalf("stats %+v", st)
	}
}

// TestUDPOpenFails: a stream that cannot be opened counts an error, drops
// the client's datagrams for the hold-down, then tries again.
func TestUDPOpenFails(t *testing.T) {
	r := &relays{target: udpEcho(t), idle: 30 * time.Second}
	var fail atomic.Bool
	fail.Store(true)
	f := &UDPForwarder{
		Logger: slog.New(slog.DiscardHandler),
		Open: func(ctx context.Context, client netip.AddrPort) (io.ReadWriteCloser, error) {
			if fail.Load() {
				return nil, errors.New("upstream down")
			}
			return r.open(ctx, client)
		},
	}
	addr, _ := serveUDP(t, f)
	c := udpClient(t)
	if err := pingPong(c, addr, []byte("lost"), 100*time.Millisecond); err == nil {
		t.Fatal("answered with Open failing")
	}
	c.WriteToUDP([]byte("held"), addr)
	waitFor(t, "the held-down datagram to be counted", 3*time.Second, func() bool { return f.Stats().DroppedFlowClosed >= 1 })
	if st := f.Stats(); st.OpenErrors != 1 || st.Flows != 1 {
		t.Fatalf("stats %+v, want 1 open error (one attempt during the hold-down)", st)
	}
	fail.Store(false)
	waitFor(t, "the failed flow to go", 3*time.Second, func() bool { return f.Stats().ActiveFlows == 0 })
	if err := pingPong(c, addr, []byte("back"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestUDPServeEnds: Serve returns nil when its context ends and the read
// error when the socket is closed, and closes every flow either way.
func TestUDPServeEnds(t *testing.T) {
	for _, how := range []string{"cancel", "close"} {
		t.Run(how, func(t *testing.T) {
			r := &relays{target: udpEcho(t), idle: 30 * time.Second}
			f := &UDPForwarder{Open: r.open}
			pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- f.Serve(ctx, pc) }()
			addr := pc.LocalAddr().(*net.UDPAddr)
			for range 3 {
				if err := pingPong(udpClient(t), addr, []byte("x"), 3*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			if how == "cancel" {
				cancel()
			} else {
				pc.Close()
			}
			select {
			case err := <-errc:
				if how == "cancel" && err != nil {
					t.Fatalf("Serve after cancel: %v, want nil", err)
				}
				if how == "close" && !errors.Is(err, net.ErrClosed) {
					t.Fatalf("Serve after close: %v, want net.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Serve did not return")
			}
			if st := f.Stats(); st.ActiveFlows != 0 {
				t.Fatalf("%d flows left", st.ActiveFlows)
			}
			waitFor(t, "relays to end", 3*time.Second, func() bool { return r.done() == 3 })
		})
	}
	if err := (&UDPForwarder{}).Serve(context.Background(), nil); err == nil {
		t.Fatal("Serve without Open did not fail")
	}
}

// TestUDPRelayDrops: RelayUDP drops (and counts) a DATAGRAM with another
// context ID and a payload over maxUDPPayload, skips unknown capsules and
// relays the rest; an oversized capsule ends it with an error.
func TestUDPRelayDrops(t *testing.T) {
	a, b := net.Pipe()
	type result struct {
		st  UDPStats
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := RelayUDP(context.Background(), b, udpEcho(t), 10*time.Second)
		done <- result{st, err}
	}()
	var wire []byte
	wire = appendCapsule(wire, capsuleDatagram, append(appendVarint(nil, 2), "ctx2"...))
	wire = appendDatagram(wire, make([]byte, maxUDPPayload+1))
	wire = appendCapsule(wire, 0x2a, []byte("unknown"))
	wire = appendDatagram(wire, []byte("ok"))
	go a.Write(wire)
	br := bufio.NewReader(a)
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, v, err := readCapsule(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id, data, _ := parseDatagram(v); id != 0 || string(data) != "ok" {
		t.Fatalf("echo: context %d %q", id, data)
	}
	// A capsule over the limit ends the relay.
	go a.Write(appendVarint(appendVarint(nil, capsuleDatagram), maxCapsuleLen+1))
	select {
	case r := <-done:
		if !errors.Is(r.err, errCapsuleTooLarge) {
			t.Fatalf("RelayUDP: %v, want errCapsuleTooLarge", r.err)
		}
		if r.st.DroppedBadContext != 1 || r.st.DroppedTooBig != 1 || r.st.DatagramsUp != 1 || r.st.DatagramsDown != 1 {
			t.Fatalf("stats %+v", r.st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RelayUDP did not end on an oversized capsule")
	}
	a.Close()
}

// TestUDPRelayTargetNotListening: datagrams refused by the target (ICMP
// port unreachable) are counted and the relay goes on.
func TestUDPRelayTargetNotListening(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	target := pc.LocalAddr().String()
	pc.Close()
	a, b := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var st UDPStats
	go func() {
		var err error
		st, err = RelayUDP(ctx, b, target, 10*time.Second)
		done <- err
	}()
	for range 5 {
		a.Write(appendDatagram(nil, []byte("anyone?")))
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("RelayUDP: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RelayUDP did not end on cancel")
	}
	t.Logf("%+v", st)
	if st.DroppedSendError == 0 {
		t.Fatalf("no send errors counted: %+v", st)
	}
	a.Close()
}

// TestUDPStuckStream: a stream that takes no bytes (its peer never reads)
// holds up only its own flow, which closes after IdleTimeout; the datagram
// in the blocked write and those queued behind it are counted as dropped.
func TestUDPStuckStream(t *testing.T) {
	var mu sync.Mutex
	var peers []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range peers {
			c.Close()
		}
	})
	r := &relays{target: udpEcho(t), idle: 30 * time.Second}
	stuck := udpClient(t)
	stuckPort := stuck.LocalAddr().(*net.UDPAddr).AddrPort()
	f := &UDPForwarder{
		IdleTimeout: 150 * time.Millisecond,
		Open: func(ctx context.Context, client netip.AddrPort) (io.ReadWriteCloser, error) {
			if client != stuckPort {
				return r.open(ctx, client)
			}
			a, b := net.Pipe() // nobody reads b
			mu.Lock()
			peers = append(peers, b)
			mu.Unlock()
			return a, nil
		},
	}
	addr, _ := serveUDP(t, f)
	for i := range 5 {
		stuck.WriteToUDP(fmt.Appendf(nil, "stuck%d", i), addr)
	}
	// Another client is served meanwhile.
	if err := pingPong(udpClient(t), addr, []byte("free"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the stuck flow to close", 3*time.Second, func() bool { return f.Stats().DroppedFlowClosed == 5 })
	if st := f.Stats(); st.DatagramsUp != 1 || st.Flows != 2 {
		t.Fatalf("stats %+v", st)
	}
}
