package gossip

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// waitAll polls cond every 20 ms for up to timeout and fails with every
// node's member list when it does not hold.
func waitAll(t *testing.T, timeout time.Duration, what string, nodes []*Cluster, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			var b strings.Builder
			for _, n := range nodes {
				fmt.Fprintf(&b, "\n  %s sees", n.Name)
				for _, m := range n.Members() {
					fmt.Fprintf(&b, " %s@%s(rec %q)", m.Name, m.Addr, m.Record)
				}
			}
			t.Fatalf("timed out after %v waiting for %s:%s", timeout, what, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// TestRestartSameAddress: in the layout of a first node a that has no
// seeds and b and c that join it, any one of them stopped (gracefully or
// not) and started again at the same address, with the same name and the
// same seeds as before, is a member of everyone's pool again, with its new
// record. When a restarts it knows nobody: b and c must re-join it.
func TestRestartSameAddress(t *testing.T) {
	t.Parallel()
	leave := func(c *Cluster) error { return c.Leave(context.Background()) }
	crash := func(c *Cluster) error { return c.Shutdown() }
	for _, tc := range []struct {
		name    string
		restart string // a, b
		stop    func(*Cluster) error
		// detected: wait for the peers to drop the node before it comes
		// back; otherwise it comes back before failure detection ends.
		detected bool
	}{
		{"seed after leave", "a", leave, true},
		{"joiner after leave", "b", leave, true},
		{"seed after crash, detected", "a", crash, true},
		{"seed after crash, undetected", "a", crash, false},
		{"joiner after crash, undetected", "b", crash, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, b, c := threeNodes(t)
			if !tc.detected {
				// Let the gossip of the joins die down (memberlist sends
				// each message RetransmitMult*log10(n+1) = 4 times, to
				// GossipNodes members every 200 ms): alive messages
				// still in flight would introduce the members to the
				// restarted node, which a pool that has been quiet for
				// a while does not do.
				time.Sleep(2 * time.Second)
			}
			nodes := map[string]*Cluster{"a": a, "b": b, "c": c}
			old := nodes[tc.restart]
			addr, seeds := old.Addr(), old.Join
			if err := tc.stop(old); err != nil {
				t.Fatal(err)
			}
			var others []*Cluster
			var otherNames []string
			for _, n := range []*Cluster{a, b, c} {
				if n != old {
					others = append(others, n)
					otherNames = append(otherNames, n.Name)
				}
			}
			if tc.detected {
				waitAll(t, 20*time.Second, tc.restart+" gone from its peers", others, func() bool {
					return seesExactly(others[0], otherNames...) && seesExactly(others[1], otherNames...)
				})
			}
			rec := []byte("new " + tc.restart)
			start := time.Now()
			n := newNode(t, tc.restart, func(n *Cluster) {
				n.BindAddr = addr
				n.Join = seeds
				if err := n.SetRecord(rec); err != nil {
					t.Fatal(err)
				}
			})
			all := []*Cluster{a, b, c}
			for i, x := range all {
				if x == old {
					all[i] = n
				}
			}
			d := waitAll(t, 10*time.Second, "the restarted "+tc.restart+" in every pool with its new record", all, func() bool {
				for _, x := range all {
					if !seesExactly(x, "a", "b", "c") {
						return false
					}
					if x != n && !hasRecord(x, tc.restart, rec) {
						return false
					}
				}
				return true
			})
			t.Logf("%s: %s restarted at %s is back everywhere %v after its Start returned (%v after it began)", tc.name, tc.restart, addr, d, time.Since(start))
		})
	}
}

func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// TestRememberedMembers: a member that is gone is joined again from its
// last address, with backoff, until it is back; a member whose address is
// taken by another member is forgotten.
func TestRememberedMembers(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a")
	b := newNode(t, "b", joining(a))
	waitAll(t, 5*time.Second, "b joined a", []*Cluster{a, b}, func() bool { return seesExactly(a, "a", "b") && seesExactly(b, "a", "b") })
	addr := b.Addr()
	if err := b.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitAll(t, 5*time.Second, "b gone", []*Cluster{a}, func() bool { return seesExactly(a, "a") })
	if got := a.joinTargets(); len(got) != 1 || got[addr].addr != addr {
		t.Fatalf("a's join targets %+v, want b's address %s", got, addr)
	}
	// Another node at b's address: b is replaced, and a stops looking
	// for it once it has merged with the new one.
	x := newNode(t, "x", func(n *Cluster) { n.BindAddr = addr })
	waitAll(t, 10*time.Second, "a joined x at b's old address", []*Cluster{a, x}, func() bool {
		return seesExactly(a, "a", "x") && seesExactly(x, "a", "x")
	})
	waitAll(t, 10*time.Second, "b forgotten", []*Cluster{a}, func() bool {
		v := a.view.Load()
		return len(v.lost) == 0 && len(a.joinTargets()) == 0
	})
}

// TestJoined: Joined is true at once for a node without seeds, false while
// no seed answers, and true once one does.
func TestJoined(t *testing.T) {
	t.Parallel()
	first := newNode(t, "first")
	if !first.Joined() {
		t.Error("a node without seeds is not Joined")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seed := l.Addr().String()
	l.Close()
	b := newNode(t, "b", func(c *Cluster) { c.Join = []string{seed} })
	if b.Joined() {
		t.Fatal("Joined with no seed up")
	}
	a := newNode(t, "a", func(c *Cluster) { c.BindAddr = seed })
	waitAll(t, 10*time.Second, "b joins its seed", []*Cluster{a, b}, func() bool { return b.Joined() && seesExactly(b, "a", "b") })
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitAll(t, 20*time.Second, "b alone", []*Cluster{b}, func() bool { return seesExactly(b, "b") })
	if !b.Joined() {
		t.Error("Joined turned false when the pool shrank")
	}
}

// TestJunkPackets: a stranger sending 2,000 junk packets to the gossip port
// gets them counted, and logged about once per 10 s, not once each.
func TestJunkPackets(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	a := newNode(t, "a", func(c *Cluster) {
		c.Logger = slogTo(&logs)
	})
	conn, err := net.Dial("udp", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	const total, batch = 2000, 100
	junk := [][]byte{
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		{244, 5, 'o', 't', 'h', 'e', 'r', 1, 2, 3}, // another pool's label
		{244, 3, 'x', 'y'},                         // a truncated label
		bytes.Repeat([]byte{0}, 64),
	}
	for sent := 0; sent < total; {
		// In batches, each waited for, so that the kernel's socket
		// buffer never drops any.
		for range batch {
			if _, err := conn.Write(junk[sent%len(junk)]); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		waitAll(t, 10*time.Second, fmt.Sprintf("%d junk packets counted (have %d)", sent, a.BadPackets()), nil,
			func() bool { return a.BadPackets() >= uint64(sent) })
	}
	elapsed := time.Since(start)
	if n := a.BadPackets(); n != total {
		t.Errorf("BadPackets = %d after %d junk packets", n, total)
	}
	lines := strings.Count(logs.String(), "\n")
	// Per reason and source, one line per netLogEvery.
	reasons := 3
	if limit := reasons * (1 + int(elapsed/netLogEvery)); lines > limit {
		t.Errorf("%d junk packets in %v gave %d log lines, want at most %d:\n%s", total, elapsed, lines, limit, logs.String())
	}
	if !strings.Contains(logs.String(), "from=127.0.0.1:") {
		t.Errorf("the log does not name the source:\n%s", logs.String())
	}
	t.Logf("%d junk packets: BadPackets %d, %d log lines in %v:\n%s", total, a.BadPackets(), lines, elapsed, logs.String())
	if !seesExactly(a, "a") {
		t.Errorf("members %v", names(a.Members()))
	}
}

// TestConcurrentUpdates: the senders re-advertise this node's meta at the
// same time when its record changes in quick succession (as at a node's
// start); memberlist must see one UpdateNode at a time, which the race
// detector checks.
func TestConcurrentUpdates(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a")
	var wg sync.WaitGroup
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				a.do(job{kind: jobUpdate})
			}
		}()
	}
	wg.Wait()
}

// udpDropper loses every gossip packet this node sends; streams (TCP) work.
type udpDropper struct{ *memberlist.NetTransport }

func (d udpDropper) WriteTo(b []byte, addr string) (time.Time, error) { return time.Now(), nil }
func (d udpDropper) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return time.Now(), nil
}

// TestLostProbeAcksNotSuspect: a member whose probe acks over UDP are lost
// (late or dropped, as under CPU starvation or a lossy path) but that still
// answers over TCP is neither suspected nor declared dead: memberlist's TCP
// fallback ping stays on in both profiles, with Lifeguard's awareness
// stretching a struggling node's own probe timeouts. Without the fallback
// the same member is suspected at its first probe, which shows the test
// can see the difference.
func TestLostProbeAcksNotSuspect(t *testing.T) {
	t.Parallel()
	for _, p := range []Profile{LAN, WAN} {
		cfg, _ := p.config()
		if cfg.DisableTcpPings || cfg.AwarenessMaxMultiplier < 2 || cfg.IndirectChecks < 1 {
			t.Errorf("%s: TCP fallback pings %v, awareness multiplier %d, indirect checks %d", p,
				!cfg.DisableTcpPings, cfg.AwarenessMaxMultiplier, cfg.IndirectChecks)
		}
	}
	run := func(t *testing.T, tcpPings bool) (suspected bool) {
		opt := func(c *Cluster) {
			c.tune = func(cfg *memberlist.Config, _ *timings) { cfg.DisableTcpPings = !tcpPings }
		}
		a := newNode(t, "a", opt)
		b := newNode(t, "b", opt, joining(a))
		c := newNode(t, "c", opt, joining(a), func(c *Cluster) {
			c.wrap = func(nt *memberlist.NetTransport) memberlist.NodeAwareTransport { return udpDropper{nt} }
		})
		waitAll(t, 10*time.Second, "three members", []*Cluster{a, b, c}, func() bool {
			return seesExactly(a, "a", "b", "c") && seesExactly(b, "a", "b", "c")
		})
		// a and b each probe c about every 2 s (1 s interval, two
		// members each); 6 s is three probes each.
		deadline := time.Now().Add(6 * time.Second)
		for time.Now().Before(deadline) {
			for _, n := range []*Cluster{a, b} {
				m, ok := member(n, "c")
				if !ok || m.Suspect {
					return true
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		return false
	}
	t.Run("without TCP fallback", func(t *testing.T) {
		t.Parallel()
		if !run(t, false) {
			t.Error("c was never suspected although its acks are lost and TCP pings are off: the test sees nothing")
		}
	})
	t.Run("meshd's profile", func(t *testing.T) {
		t.Parallel()
		if run(t, true) {
			t.Error("c, answering over TCP, was suspected or dropped because its UDP acks were lost")
		}
	})
}

// TestLostMembersBounded: departed members are forgotten after
// forgetAfter, and beyond maxLost only the most recently lost are kept.
func TestLostMembersBounded(t *testing.T) {
	c := &Cluster{tm: timings{forgetAfter: time.Hour}}
	c.st.init()
	t0 := time.Unix(1e6, 0)
	for i := range maxLost + 50 {
		c.st.known[fmt.Sprint("n", i)] = &known{addr: fmt.Sprintf("10.0.%d.%d:7946", i/256, i%256), lostAt: t0.Add(time.Duration(i) * time.Second)}
	}
	c.st.known["old"] = &known{addr: "10.1.0.1:7946", lostAt: t0.Add(-2 * time.Hour)}
	c.st.known["here"] = &known{addr: "10.1.0.2:7946"}
	c.housekeep(t0.Add(time.Hour - time.Minute))
	if len(c.st.known) != maxLost+1 {
		t.Fatalf("%d remembered, want %d lost and the one present", len(c.st.known), maxLost)
	}
	if c.st.known["old"] != nil || c.st.known["here"] == nil || c.st.known["n49"] != nil || c.st.known[fmt.Sprint("n", maxLost+49)] == nil {
		t.Errorf("kept the wrong members: old %v, here %v, n49 %v", c.st.known["old"], c.st.known["here"], c.st.known["n49"])
	}
}
