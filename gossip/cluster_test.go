package gossip

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestJoinAndReplicate(t *testing.T) {
	t.Parallel()
	start := time.Now()
	// a publishes before Start, so its record goes out with the join.
	a := newNode(t, "a", func(c *Cluster) {
		if err := c.SetRecord([]byte("rec-a")); err != nil {
			t.Fatal(err)
		}
	})
	b := newNode(t, "b", joining(a))
	c := newNode(t, "c", joining(a))
	if err := b.SetRecord([]byte("rec-b")); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRecord([]byte("rec-c")); err != nil {
		t.Fatal(err)
	}
	nodes := []*Cluster{a, b, c}
	recs := map[string][]byte{"a": []byte("rec-a"), "b": []byte("rec-b"), "c": []byte("rec-c")}
	allSee := func(recs map[string][]byte) func() bool {
		return func() bool {
			for _, n := range nodes {
				if !seesExactly(n, "a", "b", "c") {
					return false
				}
				for name, rec := range recs {
					if !hasRecord(n, name, rec) {
						return false
					}
				}
			}
			return true
		}
	}
	waitFor(t, 10*time.Second, "members and records everywhere", allSee(recs))
	t.Logf("join convergence (3 nodes, members and records): %v", time.Since(start))

	for _, n := range nodes {
		for _, m := range n.Members() {
			if m.Addr == "" || m.Suspect {
				t.Errorf("%s sees %+v", n.Name, m)
			}
			if m.Name == n.Name && m.Addr != n.Addr() {
				t.Errorf("%s: self Addr %q, Addr() %q", n.Name, m.Addr, n.Addr())
			}
		}
	}

	// A small update travels by broadcast.
	recs["c"] = []byte("rec-c-2")
	if err := c.SetRecord(recs["c"]); err != nil {
		t.Fatal(err)
	}
	d := waitFor(t, 10*time.Second, "small update everywhere", allSee(recs))
	t.Logf("small record update reached every member in %v", d)

	// A record too big for a packet travels by request over TCP.
	big := bytes.Repeat([]byte("0123456789abcdef"), 40<<10/16)
	recs["b"] = big
	if err := b.SetRecord(big); err != nil {
		t.Fatal(err)
	}
	d = waitFor(t, 10*time.Second, "40 KiB update everywhere", allSee(recs))
	t.Logf("40 KiB record update reached every member in %v", d)

	// Records are copied on the way in.
	buf := []byte("rec-a-2")
	if err := a.SetRecord(buf); err != nil {
		t.Fatal(err)
	}
	buf[0] = 'X'
	recs["a"] = []byte("rec-a-2")
	waitFor(t, 10*time.Second, "copied record everywhere", allSee(recs))
}

func TestGracefulLeave(t *testing.T) {
	t.Parallel()
	a, b, c := threeNodes(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	if err := c.Leave(ctx); err != nil {
		t.Fatalf("leave: %v", err)
	}
	d := waitFor(t, 2*time.Second-time.Since(start), "c gone from a and b", func() bool {
		return seesExactly(a, "a", "b") && seesExactly(b, "a", "b")
	})
	t.Logf("graceful leave: gone from every peer %v after Leave was called", time.Since(start))
	_ = d
	if ms := c.Members(); ms != nil {
		t.Errorf("Members after Leave = %v, want nil", names(ms))
	}
	if err := c.Leave(ctx); err != nil {
		t.Errorf("second Leave: %v", err)
	}
	if err := c.Shutdown(); err != nil {
		t.Errorf("Shutdown after Leave: %v", err)
	}
	if err := c.SetRecord([]byte("x")); err == nil {
		t.Error("SetRecord after Leave: no error")
	}
}

func TestFailureDetection(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		profile Profile
		limit   time.Duration
	}{
		{LAN, 10 * time.Second},
		{WAN, 30 * time.Second},
	} {
		t.Run(tc.profile.String(), func(t *testing.T) {
			t.Parallel()
			a, b, c := threeNodes(t, profile(tc.profile))
			var sawSuspect atomic.Bool
			start := time.Now()
			if err := c.Shutdown(); err != nil {
				t.Fatal(err)
			}
			if err := c.Shutdown(); err != nil {
				t.Fatalf("second Shutdown: %v", err)
			}
			d := waitFor(t, tc.limit, "killed c gone from a and b", func() bool {
				for _, n := range []*Cluster{a, b} {
					if m, ok := member(n, "c"); ok && m.Suspect {
						sawSuspect.Store(true)
					}
				}
				return seesExactly(a, "a", "b") && seesExactly(b, "a", "b")
			})
			t.Logf("%s: abrupt shutdown detected by every peer in %v (limit %v)", tc.profile, time.Since(start), tc.limit)
			_ = d
			if !sawSuspect.Load() {
				t.Errorf("c was never reported Suspect before it was removed")
			}
		})
	}
}

func TestSecurity(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a")
	b := newNode(t, "b", joining(a))
	waitFor(t, 5*time.Second, "a and b joined", func() bool { return seesExactly(a, "a", "b") })

	t.Run("no key", func(t *testing.T) {
		c := &Cluster{Name: "nokey", BindAddr: "127.0.0.1:0", Label: testLabel, Join: []string{a.Addr()}}
		err := c.Start(context.Background())
		if err == nil || !strings.Contains(err.Error(), "Key") {
			t.Fatalf("Start without key: %v, want an error naming Key", err)
		}
		if c.Addr() != "" || c.Members() != nil {
			t.Errorf("failed Start left state: Addr %q, Members %v", c.Addr(), c.Members())
		}
	})

	intruders := []struct {
		name string
		opt  func(*Cluster)
	}{
		{"wrongkey", func(c *Cluster) { c.Key = bytes.Repeat([]byte{0x43}, 32) }},
		{"shortkey", func(c *Cluster) { c.Key = bytes.Repeat([]byte{0x42}, 16) }},
		{"otherlabel", func(c *Cluster) { c.Label = "meshd/other" }},
	}
	var started []*Cluster
	for _, in := range intruders {
		x := newNode(t, in.name, in.opt, joining(a))
		started = append(started, x)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		n, err := x.JoinPeers(ctx, a.Addr())
		cancel()
		if err == nil {
			t.Errorf("%s: JoinPeers succeeded (%d)", in.name, n)
		}
		if err := x.SetRecord([]byte("evil")); err != nil {
			t.Fatal(err)
		}
	}
	// Give the intruders time to retry joins and gossip, then check that
	// nobody ever let them in.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if !seesExactly(a, "a", "b") || !seesExactly(b, "a", "b") {
			t.Fatalf("intruder admitted: a sees %v, b sees %v", names(a.Members()), names(b.Members()))
		}
		for _, x := range started {
			if !seesExactly(x, x.Name) {
				t.Fatalf("%s sees %v", x.Name, names(x.Members()))
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRestartWithNewAddress(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		stop  func(*Cluster) error
		limit time.Duration
	}{
		{"after leave", func(c *Cluster) error { return c.Leave(context.Background()) }, 10 * time.Second},
		// After a crash the peers refuse the new address until the old
		// one is dead (≤10 s) plus DeadNodeReclaimTime (5 s).
		{"after crash", func(c *Cluster) error { return c.Shutdown() }, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.name == "after crash" && testing.Short() {
				t.Skip("takes ~15 s; runs without -short")
			}
			a, b, c := threeNodes(t)
			if err := c.SetRecord([]byte("old")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "old record everywhere", func() bool {
				return hasRecord(a, "c", []byte("old")) && hasRecord(b, "c", []byte("old"))
			})
			oldAddr := c.Addr()
			if err := tc.stop(c); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			c2 := newNode(t, "c", joining(a), func(n *Cluster) {
				if err := n.SetRecord([]byte("new")); err != nil {
					t.Fatal(err)
				}
			})
			if c2.Addr() == oldAddr {
				t.Fatalf("restarted on the same address %s", oldAddr)
			}
			waitFor(t, tc.limit, "restarted c with new record and address everywhere", func() bool {
				for _, n := range []*Cluster{a, b} {
					m, ok := member(n, "c")
					if !ok || m.Addr != c2.Addr() || !bytes.Equal(m.Record, []byte("new")) {
						return false
					}
				}
				return seesExactly(c2, "a", "b", "c")
			})
			t.Logf("restart %s: new address and record everywhere after %v", tc.name, time.Since(start))
		})
	}
}

// goid returns the current goroutine's id and whether memberlist is on its
// stack.
func goid() (string, bool) {
	buf := make([]byte, 64<<10)
	buf = buf[:runtime.Stack(buf, false)]
	first, _, _ := strings.Cut(string(buf), "\n")
	return strings.Fields(first)[1], strings.Contains(string(buf), "hashicorp/memberlist")
}

func TestOnChange(t *testing.T) {
	t.Parallel()
	var (
		mu       sync.Mutex
		ids      = map[string]bool{}
		inML     bool
		inFlight atomic.Int32
		overlap  atomic.Bool
		calls    atomic.Int32
		release  = make(chan struct{})
		once     sync.Once
	)
	a := newNode(t, "a", func(c *Cluster) {
		c.OnChange = func() {
			if inFlight.Add(1) > 1 {
				overlap.Store(true)
			}
			defer inFlight.Add(-1)
			id, ml := goid()
			mu.Lock()
			ids[id] = true
			inML = inML || ml
			mu.Unlock()
			calls.Add(1)
			// The first call blocks until the test has seen gossip
			// proceed without it.
			once.Do(func() { <-release })
		}
	})
	if err := a.SetRecord([]byte("a1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "first OnChange", func() bool { return calls.Load() >= 1 })

	// OnChange is now blocked; the pool must still work.
	b := newNode(t, "b", joining(a))
	c := newNode(t, "c", joining(a))
	if err := b.SetRecord([]byte("b1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "gossip with OnChange blocked", func() bool {
		return seesExactly(a, "a", "b", "c") && hasRecord(a, "b", []byte("b1")) && hasRecord(c, "a", []byte("a1"))
	})
	if n := calls.Load(); n != 1 {
		t.Fatalf("OnChange called %d times while the first call was blocked", n)
	}
	close(release)
	// The changes made meanwhile are delivered, coalesced.
	waitFor(t, 5*time.Second, "coalesced OnChange after unblocking", func() bool { return calls.Load() >= 2 })
	before := calls.Load()
	if err := c.SetRecord([]byte("c1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "OnChange for a record change", func() bool {
		return calls.Load() > before && hasRecord(a, "c", []byte("c1"))
	})

	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 1 {
		t.Errorf("OnChange ran on %d goroutines, want 1", len(ids))
	}
	if inML {
		t.Error("OnChange ran on a memberlist goroutine")
	}
	if overlap.Load() {
		t.Error("OnChange calls overlapped")
	}
}

// TestMergeRules feeds messages straight into the delegate, as memberlist
// would after decrypting them, and checks what is kept.
func TestMergeRules(t *testing.T) {
	t.Parallel()
	a, b, _ := threeNodes(t)
	if err := b.SetRecord([]byte("b1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "b1 at a", func() bool { return hasRecord(a, "b", []byte("b1")) })
	cur := b.self.Load().version
	h := &hooks{c: a}

	garbage := [][]byte{
		nil,
		{},
		{0xff},
		{wireVersion, kindRecord},
		{wireVersion, 99, 1, 'b'},
		encodeRecord(entry{Name: "b", Version: cur + 1, Data: []byte("x")})[:10],
		append(encodeRecord(entry{Name: "b", Version: cur + 1, Data: []byte("x")}), 0),
		bytes.Repeat([]byte{0xff}, maxMessage+1),
	}
	for _, g := range garbage {
		h.NotifyMsg(g)
		h.MergeRemoteState(g, false)
	}
	// Older and equal versions lose; a record for a name that is not a
	// member is not shown.
	h.NotifyMsg(encodeRecord(entry{Name: "b", Version: cur - 1, Data: []byte("older")}))
	h.NotifyMsg(encodeRecord(entry{Name: "b", Version: cur, Data: []byte("same")}))
	h.MergeRemoteState(encodeState([]entry{
		{Name: "b", Version: cur - 5, Data: []byte("older")},
		{Name: "ghost", Version: 1, Data: []byte("boo")},
	}, maxStateEncode), false)
	// A marker sent last shows when the state goroutine has processed
	// everything before it.
	h.NotifyMsg(encodeRecord(entry{Name: "c", Version: 1 << 62, Data: []byte("marker")}))
	waitFor(t, 5*time.Second, "marker", func() bool { return hasRecord(a, "c", []byte("marker")) })
	if !hasRecord(a, "b", []byte("b1")) {
		m, _ := member(a, "b")
		t.Errorf("b's record = %q, want b1", m.Record)
	}
	if !seesExactly(a, "a", "b", "c") {
		t.Errorf("members %v", names(a.Members()))
	}

	// A newer version wins.
	h.MergeRemoteState(encodeState([]entry{{Name: "b", Version: cur + 1, Data: []byte("b2")}}, maxStateEncode), false)
	waitFor(t, 5*time.Second, "newer record", func() bool { return hasRecord(a, "b", []byte("b2")) })

	// A copy of a's own record with a version at or above a's current one
	// (as after a restart with the clock set back) makes a republish above
	// it, instead of being accepted.
	if err := a.SetRecord([]byte("mine")); err != nil {
		t.Fatal(err)
	}
	mine := a.self.Load().version
	h.NotifyMsg(encodeRecord(entry{Name: "a", Version: mine + 1000, Data: []byte("stale")}))
	waitFor(t, 5*time.Second, "republish above the stale version", func() bool {
		r := a.self.Load()
		return r.version > mine+1000 && string(r.data) == "mine"
	})
	waitFor(t, 5*time.Second, "b sees a's record", func() bool { return hasRecord(b, "a", []byte("mine")) })
}

func TestValidate(t *testing.T) {
	t.Parallel()
	good := func() *Cluster {
		return &Cluster{Name: "n", BindAddr: "127.0.0.1:0", Key: testKey, Label: testLabel}
	}
	for _, tc := range []struct {
		name  string
		edit  func(*Cluster)
		field string // "" when valid
	}{
		{"valid", func(*Cluster) {}, ""},
		{"valid wan ipv6 advertise", func(c *Cluster) {
			c.Profile = WAN
			c.AdvertiseAddr = "[2001:db8::1]:7946"
			c.Join = []string{"seed.example:7946", "10.0.0.1:7946"}
			c.Key = testKey[:24]
		}, ""},
		{"no name", func(c *Cluster) { c.Name = "" }, "Name"},
		{"long name", func(c *Cluster) { c.Name = strings.Repeat("n", 256) }, "Name"},
		{"control in name", func(c *Cluster) { c.Name = "a\nb" }, "Name"},
		{"no bind", func(c *Cluster) { c.BindAddr = "" }, "BindAddr"},
		{"bind without port", func(c *Cluster) { c.BindAddr = "127.0.0.1" }, "BindAddr"},
		{"bind hostname", func(c *Cluster) { c.BindAddr = "localhost:0" }, "BindAddr"},
		{"bind bad port", func(c *Cluster) { c.BindAddr = "127.0.0.1:70000" }, "BindAddr"},
		{"advertise port 0", func(c *Cluster) { c.AdvertiseAddr = "127.0.0.1:0" }, "AdvertiseAddr"},
		{"advertise unspecified", func(c *Cluster) { c.AdvertiseAddr = "0.0.0.0:7946" }, "AdvertiseAddr"},
		{"profile", func(c *Cluster) { c.Profile = 7 }, "Profile"},
		{"no key", func(c *Cluster) { c.Key = nil }, "Key"},
		{"bad key", func(c *Cluster) { c.Key = testKey[:20] }, "Key"},
		{"no label", func(c *Cluster) { c.Label = "" }, "Label"},
		{"long label", func(c *Cluster) { c.Label = strings.Repeat("l", 256) }, "Label"},
		{"join no port", func(c *Cluster) { c.Join = []string{"10.0.0.1"} }, "Join[0]"},
		{"join port 0", func(c *Cluster) { c.Join = []string{"a:1", "b:0"} }, "Join[1]"},
		{"join no host", func(c *Cluster) { c.Join = []string{":7946"} }, "Join[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.edit(c)
			err := c.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Validate = %v, want an error naming %s", err, tc.field)
			}
			if err := c.Start(context.Background()); err == nil {
				t.Fatal("Start accepted an invalid config")
			}
		})
	}
}

func TestStartErrors(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a")
	b := &Cluster{Name: "b", BindAddr: a.Addr(), Key: testKey, Label: testLabel, Logger: testLogger()}
	err := b.Start(context.Background())
	if err == nil {
		_ = b.Shutdown()
		t.Fatal("Start on a port in use succeeded")
	}
	if !strings.Contains(err.Error(), a.Addr()) {
		t.Errorf("error %q does not name %s", err, a.Addr())
	}
	if err := a.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}

	// A seed that does not answer does not fail Start, and Start returns
	// within its bound.
	start := time.Now()
	c := newNode(t, "c", func(c *Cluster) { c.Join = []string{"127.0.0.1:1"} })
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Start with a dead seed took %v", d)
	}
	if !seesExactly(c, "c") {
		t.Errorf("members %v", names(c.Members()))
	}

	// Before Start.
	var z Cluster
	if z.Addr() != "" || z.Members() != nil {
		t.Error("zero Cluster reports an address or members")
	}
	if err := z.Shutdown(); err != nil {
		t.Errorf("Shutdown before Start: %v", err)
	}
	if err := z.Leave(context.Background()); err != nil {
		t.Errorf("Leave before Start: %v", err)
	}
	if _, err := z.JoinPeers(context.Background(), "127.0.0.1:1"); err == nil {
		t.Error("JoinPeers before Start succeeded")
	}
}

func TestSetRecordLimit(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a")
	if err := a.SetRecord(make([]byte, MaxRecordSize)); err != nil {
		t.Fatalf("SetRecord of exactly %d bytes: %v", MaxRecordSize, err)
	}
	v := a.self.Load().version
	err := a.SetRecord(make([]byte, MaxRecordSize+1))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprint(MaxRecordSize)) {
		t.Fatalf("SetRecord too big = %v", err)
	}
	if a.self.Load().version != v {
		t.Error("refused record changed the version")
	}
	if m, _ := member(a, "a"); len(m.Record) != MaxRecordSize {
		t.Errorf("record is %d bytes after a refused SetRecord", len(m.Record))
	}
}

// lockedBuffer is a log sink safe for memberlist's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestMalformedIsLoggedRateLimited(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	a := newNode(t, "a", func(c *Cluster) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	h := &hooks{c: a}
	for i := range 50 {
		h.NotifyMsg([]byte{wireVersion, kindRecord, byte(i)})
	}
	if err := a.SetRecord([]byte("mine")); err != nil {
		t.Fatal(err)
	}
	// An older copy of our own record is ignored, not adopted.
	h.NotifyMsg(encodeRecord(entry{Name: "a", Version: 1, Data: []byte("old")}))
	waitFor(t, 5*time.Second, "a refusal logged", func() bool {
		return strings.Contains(logs.String(), "refused malformed message")
	})
	if n := strings.Count(logs.String(), "refused malformed"); n != 1 {
		t.Errorf("50 bad messages gave %d log lines, want 1:\n%s", n, logs.String())
	}
	if !seesExactly(a, "a") || !hasRecord(a, "a", []byte("mine")) {
		t.Errorf("members %+v", a.Members())
	}
}

func TestJoinRetriesInBackground(t *testing.T) {
	t.Parallel()
	// Reserve a port, free it, and give it to b as its seed before anyone
	// listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seed := l.Addr().String()
	l.Close()
	b := newNode(t, "b", func(c *Cluster) { c.Join = []string{seed} })
	if !seesExactly(b, "b") {
		t.Fatalf("b sees %v before the seed exists", names(b.Members()))
	}
	a := newNode(t, "a", func(c *Cluster) { c.BindAddr = seed })
	d := waitFor(t, 10*time.Second, "b joins a once a is up", func() bool {
		return seesExactly(a, "a", "b") && seesExactly(b, "a", "b")
	})
	t.Logf("background join succeeded %v after the seed came up", d)
}

// TestPartitionHeals: c's only seed dies and is replaced at the same
// address by a node that knows nobody; c keeps re-joining its seed, which
// is not a member, and merges with the new node.
func TestPartitionHeals(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a")
	c := newNode(t, "c", joining(a))
	waitFor(t, 5*time.Second, "c joined a", func() bool { return seesExactly(c, "a", "c") })
	addr := a.Addr()
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "c alone", func() bool { return seesExactly(c, "c") })
	a2 := newNode(t, "a2", func(n *Cluster) { n.BindAddr = addr })
	d := waitFor(t, 10*time.Second, "c re-joined its seed", func() bool {
		return seesExactly(c, "a2", "c") && seesExactly(a2, "a2", "c")
	})
	t.Logf("partition healed %v after the seed came back", d)
}
