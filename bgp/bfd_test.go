//go:build linux

package bgp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/packet/bfd"
)

// bfdPort is fixed by RFC 5881 §4 and by gobgp, which listens on it on all
// addresses; it is the one port these tests do not choose.
const bfdPort = 3784

// bfdResponder is a minimal BFD system (RFC 5880 §6.8.6 state machine,
// asynchronous mode) standing in for the router's side of the session.
//
// It exists because two gobgp speakers cannot both run BFD in one network
// namespace: each binds 0.0.0.0:3784 with SO_REUSEADDR, the kernel hands
// every packet to one of them, and that one drops the other's packets as
// coming from an unknown peer. The responder instead binds the more
// specific 127.0.0.2:3784, which the kernel prefers for packets to
// 127.0.0.2, while gobgp's wildcard socket gets the packets to 127.0.0.1.
type bfdResponder struct {
	conn     *net.UDPConn
	peer     *net.UDPAddr
	interval time.Duration
	myDisc   uint32
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once

	mu          sync.Mutex
	remoteDisc  uint32
	remoteState bfd.StateType
	heard       bool
}

func startBFDResponder(t *testing.T, local, peer netip.AddrPort, interval time.Duration) *bfdResponder {
	return startBFDResponderDisc(t, local, peer, interval, 0x6d657368)
}

// startBFDResponderDisc starts a responder whose session has the local
// discriminator disc, as a router's new BFD session has a new one.
func startBFDResponderDisc(t *testing.T, local, peer netip.AddrPort, interval time.Duration, disc uint32) *bfdResponder {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(t.Context(), "udp", local.String())
	if err != nil {
		t.Fatalf("bfd responder: %v (is something else using UDP %d?)", err, bfdPort)
	}
	r := &bfdResponder{
		conn:     pc.(*net.UDPConn),
		peer:     net.UDPAddrFromAddrPort(peer),
		interval: interval,
		myDisc:   disc,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go r.loop(time.Now().Add(2 * time.Minute))
	t.Cleanup(r.Stop)
	return r
}

// Restart replaces the responder's BFD session by a new one with
// discriminator disc that has not heard the peer yet, as a router does
// when it resets the BGP session the BFD session was made for.
func (r *bfdResponder) Restart(disc uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.myDisc, r.heard, r.remoteDisc, r.remoteState = disc, false, 0, bfd.StateDown
}

// Stop makes the responder fall silent, as a path that drops packets does.
func (r *bfdResponder) Stop() {
	r.once.Do(func() {
		close(r.stop)
		<-r.done
	})
}

func (r *bfdResponder) loop(until time.Time) {
	defer close(r.done)
	defer r.conn.Close()
	buf := make([]byte, 512)
	next := time.Now()
	for time.Now().Before(until) {
		select {
		case <-r.stop:
			return
		default:
		}
		if !time.Now().Before(next) {
			r.send(false)
			next = time.Now().Add(r.interval)
		}
		_ = r.conn.SetReadDeadline(next)
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue // deadline: time to transmit
		}
		if from.Addr().Unmap() != r.peer.AddrPort().Addr() {
			continue
		}
		var h bfd.BFDHeader
		if h.UnmarshalBinary(buf[:n]) != nil {
			continue
		}
		r.mu.Lock()
		if h.YourDiscriminator != 0 && h.YourDiscriminator != r.myDisc {
			// RFC 5880 §6.8.6: a nonzero Your Discriminator selects the
			// session; none here has it, so the packet is discarded (as
			// a router does for the peer of a session it has deleted).
			r.mu.Unlock()
			continue
		}
		r.heard, r.remoteDisc, r.remoteState = true, h.MyDiscriminator, h.State
		r.mu.Unlock()
		if h.Poll {
			r.send(true) // RFC 5880 §6.5: answer a Poll with Final
		}
	}
}

func (r *bfdResponder) send(final bool) {
	r.mu.Lock()
	h := bfd.BFDHeader{
		Version:               1,
		State:                 bfd.StateDown,
		Final:                 final,
		DetectTimeMultiplier:  3,
		MyDiscriminator:       r.myDisc,
		DesiredMinTxInterval:  uint32(r.interval / time.Microsecond),
		RequiredMinRxInterval: uint32(r.interval / time.Microsecond),
	}
	if r.heard {
		h.YourDiscriminator = r.remoteDisc
		// RFC 5880 §6.8.6: Down -> Init on the peer's Down, Init/Up -> Up.
		if r.remoteState == bfd.StateDown {
			h.State = bfd.StateInit
		} else if r.remoteState != bfd.StateAdminDown {
			h.State = bfd.StateUp
		}
	}
	r.mu.Unlock()
	b, err := h.MarshalBinary()
	if err == nil {
		_, _ = r.conn.WriteToUDP(b, r.peer)
	}
}

// TestSpeakerBFD brings up a BGP session with BFD to an observer on
// 127.0.0.2 whose BFD side is the responder, then makes the path fall
// silent: BFD must take the session down, and the observer must lose the
// route, within the BFD detection time, although the hold time is 30 s.
func TestSpeakerBFD(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  BFDConfig
	}{
		{"100ms x 3", BFDConfig{Interval: 100 * time.Millisecond, Multiplier: 3}},
		{"default 300ms x 3", BFDConfig{}},
	} {
		t.Run(tc.name, func(t *testing.T) { testBFD(t, tc.cfg) })
	}
}

func testBFD(t *testing.T, cfg BFDConfig) {
	lo1, lo2 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	resp := startBFDResponder(t, netip.AddrPortFrom(lo2, bfdPort), netip.AddrPortFrom(lo1, bfdPort), cfg.interval())
	obs := startObserver(t, lo2.String(), observerPeer(lo1.String(), 0))
	sp := testSpeaker(t, Peer{
		Addr: lo2, LocalAddr: lo1, ASN: observerASN, Port: uint16(obs.port),
		HoldTime: 30 * time.Second,
		BFD:      &cfg,
	})
	if err := sp.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Stop(context.Background()) })

	took := eventually(t, 15*time.Second, "BGP established and BFD up", func() bool {
		p := sp.Status().Peers[0]
		return p.State == "established" && p.BFD == "up"
	})
	t.Logf("BGP established and BFD up after %v", took)
	if err := sp.SetAnnounced(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "announcement", func() bool { return obs.has(anycast4) })
	checkMetrics(t, sp, map[string]float64{"meshd_bgp_peer_bfd_up": 1, "meshd_bgp_peer_up": 1})

	// Silent failure: the path stops carrying BFD; TCP stays open.
	start := time.Now()
	resp.Stop()
	down := eventually(t, 5*time.Second, "BFD to take the session down", func() bool {
		return sp.Status().Peers[0].State != "established"
	})
	eventually(t, 5*time.Second, "withdrawal at the observer", func() bool { return !obs.has(anycast4) })
	gone := time.Since(start)
	detect := time.Duration(cfg.multiplier()) * cfg.interval()
	t.Logf("silent failure -> session down: %v, -> observer withdrawal: %v (BFD %v x %d = %v, hold time 30s)",
		down, gone, cfg.interval(), cfg.multiplier(), detect)
	// The bound leaves room for a loaded machine; the hold time is 30 s.
	if gone > detect+2*time.Second {
		t.Errorf("BFD detection took %v; the detection time is %v", gone, detect)
	}
	p := sp.Status().Peers[0]
	if p.Flaps != 1 || p.BFD != "down" {
		t.Errorf("peer after BFD failure = %+v, want 1 flap and BFD down", p)
	}
	// gobgp resets the session when BFD goes down: a Cease/administrative
	// reset NOTIFICATION, not a hold timer expiry.
	if !strings.Contains(p.LastError, "administrative reset") {
		t.Errorf("last error = %q, want the administrative reset BFD causes", p.LastError)
	}
	checkMetrics(t, sp, map[string]float64{"meshd_bgp_peer_bfd_up": 0, "meshd_bgp_peer_flaps_total": 1})

	// The path carries BFD again, with a new BFD session on the router's
	// side (a router starts one per BGP session). The session must come
	// back by itself: not after gobgp's 30 s idle hold after a reset, nor
	// killed by a reset gobgp queued while it was down.
	resp2 := startBFDResponderDisc(t, netip.AddrPortFrom(lo2, bfdPort), netip.AddrPortFrom(lo1, bfdPort), cfg.interval(), 0x6d657369)
	// The observer, a gobgp, stays Idle 5 s after the Cease it received
	// and closes connections meanwhile; then the speaker's next dial
	// (at most every gobgpDialWait) gets through.
	bound := observerIdleHold + gobgpDialWait + recoveryMargin
	back := eventually(t, bound, "session and BFD back after the silence", func() bool {
		p := sp.Status().Peers[0]
		return p.State == "established" && p.BFD == "up" && obs.has(anycast4)
	})
	t.Logf("silence over -> established, BFD up, route at the observer: %v (bound %v; %v after the silence began)", back, bound, time.Since(start))
	resp2.Stop()
}

const (
	// gobgpDialWait: a new gobgp peer dials after 1.5 s to 2 s, and later
	// attempts come every max(ConnectRetry, 2 s) (gobgp's minimum).
	gobgpDialWait = 2 * time.Second
	// observerIdleHold is how long a gobgp observer stays Idle after it
	// received a NOTIFICATION (gobgp's fixed idle hold, 5 s).
	observerIdleHold = 5 * time.Second
	// recoveryMargin leaves room for a loaded machine under -race.
	recoveryMargin = 3 * time.Second
)

// checkStaysUp fails unless the session stays established with BFD up,
// the route stays at the observer and the flap count stays flaps for the
// whole window: a reset queued in gobgp would end the session at once.
func checkStaysUp(t *testing.T, sp *Speaker, obs *observer, flaps uint64, window time.Duration) {
	t.Helper()
	for end := time.Now().Add(window); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		p := sp.Status().Peers[0]
		if p.State != "established" || p.BFD != "up" || p.Flaps != flaps || !obs.has(anycast4) {
			t.Fatalf("session did not stay up: %+v, route at the observer %v", p, obs.has(anycast4))
		}
	}
}

// TestSpeakerBFDRouterReset: the router resets the BGP session (a
// restart or reload) and, with it, replaces its BFD session by one with a
// new discriminator. The speaker must be established and announced again
// within gobgp's dial wait, and stay so: gobgp v4.8.0 alone waits 5 s in
// Idle, and then the reset its BFD queued meanwhile ends the new session.
func TestSpeakerBFDRouterReset(t *testing.T) {
	lo1, lo2 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	// Slow BFD timers: this test is about recovery, and a machine loaded
	// enough to starve a goroutine for 0.7 s (seen with -race on two
	// shared cores) would make 100 ms x 3 expire falsely.
	cfg := BFDConfig{Interval: 500 * time.Millisecond, Multiplier: 3}
	resp := startBFDResponder(t, netip.AddrPortFrom(lo2, bfdPort), netip.AddrPortFrom(lo1, bfdPort), cfg.interval())
	obs := startObserver(t, lo2.String(), observerPeer(lo1.String(), 0))
	sp := testSpeaker(t, Peer{
		Addr: lo2, LocalAddr: lo1, ASN: observerASN, Port: uint16(obs.port),
		HoldTime: 30 * time.Second, ConnectRetry: time.Second,
		BFD: &cfg,
	})
	if err := sp.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Stop(context.Background()) })
	eventually(t, 15*time.Second, "BGP established and BFD up", func() bool {
		p := sp.Status().Peers[0]
		return p.State == "established" && p.BFD == "up"
	})
	if err := sp.SetAnnounced(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "announcement", func() bool { return obs.has(anycast4) })

	for round := uint64(1); round <= 2; round++ {
		// The router's reset: a Cease to the speaker, then a new BFD
		// session that does not know the speaker's discriminator. The
		// observer's idle hold after its own reset is 1 s.
		start := time.Now()
		if err := obs.srv.ResetPeer(t.Context(), &api.ResetPeerRequest{Address: lo1.String(), Communication: "router restart"}); err != nil {
			t.Fatal(err)
		}
		resp.Restart(0x6d657368 + uint32(round))
		eventually(t, 5*time.Second, "session down after the router's reset", func() bool {
			return sp.Status().Peers[0].Flaps == round
		})
		// The observer waits 1 s (its idle hold after its own reset),
		// the renewed peer dials within gobgpDialWait.
		bound := gobgpDialWait + recoveryMargin
		eventually(t, bound, "established, BFD up and announced after the router's reset", func() bool {
			p := sp.Status().Peers[0]
			return p.State == "established" && p.BFD == "up" && obs.has(anycast4)
		})
		t.Logf("round %d: router reset -> established, BFD up, route at the observer: %v (bound %v)", round, time.Since(start), bound)
		// A queued reset ends the session the moment it is established;
		// a BFD session still bound to the router's old one expires
		// within the detection time.
		checkStaysUp(t, sp, obs, round, cfg.interval()*time.Duration(cfg.multiplier())+time.Second)
		if p := sp.Status().Peers[0]; !strings.Contains(p.LastError, "administrative reset") {
			t.Errorf("last error = %q, want the router's administrative reset", p.LastError)
		}
	}
	sp.mu.Lock()
	renewals := sp.peers[lo2].renewals
	sp.mu.Unlock()
	if renewals != 2 {
		t.Errorf("peer renewed %d times, want once per reset (2)", renewals)
	}
}
