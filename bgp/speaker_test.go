package bgp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	speakerASN  = 64512
	observerASN = 64500
)

var (
	anycast4 = netip.MustParsePrefix("198.51.100.10/32")
	anycast6 = netip.MustParsePrefix("2001:db8:a::/48")
	nextHop6 = netip.MustParseAddr("2001:db8::10")
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// freePort returns a TCP port that was free on host a moment ago; BGP
// needs the number up front for the peer's configuration, so callers
// retry when someone else takes it in between.
func freePort(t *testing.T, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// eventually polls cond every few milliseconds until it holds or timeout
// passes, and returns how long it took.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// observer is a plain gobgp server standing in for the edge's router; the
// test reads what it learned through gobgp's own API.
type observer struct {
	srv  *server.BgpServer
	port int // listening port, 0 if it only dials
}

func observerPeer(addr string, remotePort int) *api.Peer {
	p := &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: addr, PeerAsn: speakerASN},
		Transport: &api.Transport{PassiveMode: remotePort == 0, RemotePort: uint32(remotePort)},
		Timers:    &api.Timers{Config: &api.TimersConfig{ConnectRetry: 1, IdleHoldTimeAfterReset: 1}},
	}
	for _, afi := range []api.Family_Afi{api.Family_AFI_IP, api.Family_AFI_IP6} {
		p.AfiSafis = append(p.AfiSafis, &api.AfiSafi{Config: &api.AfiSafiConfig{
			Family: &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST}, Enabled: true,
		}})
	}
	return p
}

// startObserver starts an observer listening on host (or not listening if
// host is "") with one peer, retrying on port conflicts.
func startObserver(t *testing.T, host string, peer *api.Peer) *observer {
	t.Helper()
	var lastErr error
	for range 5 {
		o := &observer{srv: server.NewBgpServer(server.LoggerOption(testLogger(t), nil))}
		go o.srv.Serve()
		g := &api.Global{Asn: observerASN, RouterId: "192.0.2.1", ListenPort: -1}
		if host != "" {
			o.port = freePort(t, host)
			g.ListenPort = int32(o.port)
			g.ListenAddresses = []string{host}
		}
		if lastErr = o.srv.StartBgp(t.Context(), &api.StartBgpRequest{Global: g}); lastErr != nil {
			o.srv.Stop()
			continue
		}
		if err := o.srv.AddPeer(t.Context(), &api.AddPeerRequest{Peer: peer}); err != nil {
			o.srv.Stop()
			t.Fatal(err)
		}
		t.Cleanup(o.srv.Stop)
		return o
	}
	t.Fatalf("observer: %v", lastErr)
	return nil
}

func (o *observer) established() bool {
	up := false
	_ = o.srv.ListPeer(context.Background(), &api.ListPeerRequest{}, func(p *api.Peer) {
		up = p.State.SessionState == api.PeerState_SESSION_STATE_ESTABLISHED
	})
	return up
}

// route is what the observer learned for one prefix.
type route struct {
	nextHop     netip.Addr
	asPath      []uint32
	communities []uint32
	large       []LargeCommunity
}

func (o *observer) routes() map[netip.Prefix]route {
	out := make(map[netip.Prefix]route)
	for _, fam := range []bgp.Family{bgp.RF_IPv4_UC, bgp.RF_IPv6_UC} {
		_ = o.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: fam},
			func(nlri bgp.NLRI, paths []*apiutil.Path) {
				pfx, err := netip.ParsePrefix(nlri.String())
				if err != nil || len(paths) == 0 {
					return
				}
				var r route
				for _, a := range paths[0].Attrs {
					switch a := a.(type) {
					case *bgp.PathAttributeNextHop:
						r.nextHop = a.Value
					case *bgp.PathAttributeMpReachNLRI:
						r.nextHop = a.Nexthop
					case *bgp.PathAttributeAsPath:
						for _, seg := range a.Value {
							r.asPath = append(r.asPath, seg.GetAS()...)
						}
					case *bgp.PathAttributeCommunities:
						r.communities = a.Value
					case *bgp.PathAttributeLargeCommunities:
						for _, c := range a.Values {
							r.large = append(r.large, LargeCommunity{c.ASN, c.LocalData1, c.LocalData2})
						}
					}
				}
				out[pfx] = r
			})
	}
	return out
}

func (o *observer) has(p netip.Prefix) bool {
	_, ok := o.routes()[p]
	return ok
}

func testSpeaker(t *testing.T, peer Peer) *Speaker {
	return &Speaker{
		ASN:              speakerASN,
		RouterID:         netip.MustParseAddr("192.0.2.10"),
		Peers:            []Peer{peer},
		Prefixes:         []netip.Prefix{anycast4, anycast6},
		NextHop6:         nextHop6,
		Communities:      []Community{speakerASN<<16 | 100, CommunityNoExport},
		LargeCommunities: []LargeCommunity{{speakerASN, 1, 2}},
		Logger:           testLogger(t),
	}
}

// TestSpeakerAnnounceWithdraw peers a Speaker with a gobgp observer on
// 127.0.0.1, once with the speaker dialing and once with it listening, and
// checks what the observer learns through each step of an edge's life.
func TestSpeakerAnnounceWithdraw(t *testing.T) {
	for _, topo := range []string{"speaker dials", "speaker listens"} {
		t.Run(topo, func(t *testing.T) {
			var sp *Speaker
			var obs *observer
			if topo == "speaker dials" {
				obs = startObserver(t, "127.0.0.1", observerPeer("127.0.0.1", 0))
				sp = testSpeaker(t, Peer{Addr: netip.MustParseAddr("127.0.0.1"), ASN: observerASN, Port: uint16(obs.port), HoldTime: 9 * time.Second})
				if err := sp.Start(t.Context()); err != nil {
					t.Fatal(err)
				}
			} else {
				var err error
				for range 5 {
					sp = testSpeaker(t, Peer{Addr: netip.MustParseAddr("127.0.0.1"), ASN: observerASN, Passive: true, HoldTime: 9 * time.Second})
					sp.ListenPort = int32(freePort(t, "127.0.0.1"))
					sp.ListenAddrs = []string{"127.0.0.1"}
					if err = sp.Start(t.Context()); err == nil {
						break
					}
				}
				if err != nil {
					t.Fatal(err)
				}
				obs = startObserver(t, "", observerPeer("127.0.0.1", int(sp.ListenPort)))
			}
			t.Cleanup(func() { _ = sp.Stop(context.Background()) })
			checkLifecycle(t, sp, obs)
		})
	}
}

func checkLifecycle(t *testing.T, sp *Speaker, obs *observer) {
	ctx := t.Context()
	took := eventually(t, 15*time.Second, "session established", func() bool {
		return obs.established() && sp.Status().Peers[0].State == "established"
	})
	t.Logf("session established after %v", took)
	if r := obs.routes(); len(r) != 0 {
		t.Fatalf("observer learned %v before anything was announced", r)
	}

	// Announce: both families, next-hop self for IPv4, configured for IPv6.
	if err := sp.SetAnnounced(ctx, true); err != nil {
		t.Fatal(err)
	}
	took = eventually(t, 5*time.Second, "announcement at the observer", func() bool {
		return obs.has(anycast4) && obs.has(anycast6)
	})
	t.Logf("announce -> observer: %v", took)
	r := obs.routes()
	if got := r[anycast4]; got.nextHop != netip.MustParseAddr("127.0.0.1") || !slices.Equal(got.asPath, []uint32{speakerASN}) {
		t.Errorf("IPv4 route = %+v, want next hop 127.0.0.1 (self) and AS path [%d]", got, speakerASN)
	}
	if got := r[anycast6]; got.nextHop != nextHop6 {
		t.Errorf("IPv6 route next hop = %v, want %v", got.nextHop, nextHop6)
	}
	for _, p := range []netip.Prefix{anycast4, anycast6} {
		if got := r[p]; !slices.Equal(got.communities, []uint32{speakerASN<<16 | 100, uint32(CommunityNoExport)}) ||
			!slices.Equal(got.large, []LargeCommunity{{speakerASN, 1, 2}}) {
			t.Errorf("%s communities = %v, large = %v", p, got.communities, got.large)
		}
	}
	st := sp.Status()
	if !st.Announced() || st.Prefixes[0].State != "announced" || st.Announcements != 1 {
		t.Errorf("status after announce = %+v", st)
	}
	checkMetrics(t, sp, map[string]float64{
		"meshd_bgp_peer_up": 1, "meshd_bgp_peer_session_state": 6, "meshd_bgp_announced_prefixes": 2,
		`meshd_bgp_route_changes_total{action="announce"}`: 1,
	})

	// Idempotent: announcing again changes nothing.
	if err := sp.SetAnnounced(ctx, true); err != nil || sp.Status().Announcements != 1 {
		t.Fatalf("second SetAnnounced(true) = %v, announcements %d", err, sp.Status().Announcements)
	}

	// Withdraw (the health gate said the edge cannot serve).
	if err := sp.SetAnnounced(ctx, false); err != nil {
		t.Fatal(err)
	}
	took = eventually(t, 5*time.Second, "withdrawal at the observer", func() bool { return len(obs.routes()) == 0 })
	t.Logf("withdraw -> observer: %v", took)

	// Announce again, then drain with prepend: the route stays, less preferred.
	if err := sp.SetAnnounced(ctx, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "re-announcement", func() bool { return obs.has(anycast4) })
	if err := sp.Drain(ctx, DrainPrepend); err != nil {
		t.Fatal(err)
	}
	// Both prefixes' updates: the IPv6 one may arrive just after the IPv4.
	took = eventually(t, 5*time.Second, "prepended routes at the observer", func() bool {
		r := obs.routes()
		return len(r[anycast4].asPath) == 4 && len(r[anycast6].asPath) == 4
	})
	t.Logf("drain prepend -> observer: %v", took)
	r = obs.routes()
	for _, p := range []netip.Prefix{anycast4, anycast6} {
		if got := r[p]; !slices.Equal(got.asPath, []uint32{speakerASN, speakerASN, speakerASN, speakerASN}) ||
			!slices.Contains(got.communities, uint32(CommunityGracefulShutdown)) {
			t.Errorf("%s while draining = %+v, want AS path 4 x %d and graceful-shutdown", p, got, speakerASN)
		}
	}
	if err := sp.SetAnnounced(ctx, true); !errors.Is(err, ErrDraining) {
		t.Errorf("SetAnnounced(true) while draining = %v, want ErrDraining", err)
	}

	// Drain by withdrawal; a later announce is refused and changes nothing.
	if err := sp.Drain(ctx, DrainWithdraw); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "drain withdrawal", func() bool { return len(obs.routes()) == 0 })
	if err := sp.SetAnnounced(ctx, true); !errors.Is(err, ErrDraining) {
		t.Errorf("SetAnnounced(true) after drain = %v, want ErrDraining", err)
	}
	st = sp.Status()
	if st.Drain != "withdraw" || st.Announced() || st.Announcements != 2 || st.Prepends != 1 || st.Withdrawals != 2 {
		t.Errorf("status after drain = %+v", st)
	}
	if st.Peers[0].Flaps != 0 || st.Peers[0].UptimeSeconds <= 0 {
		t.Errorf("peer status = %+v, want no flaps and a positive uptime", st.Peers[0])
	}
	b, err := json.Marshal(st)
	if err != nil || !strings.Contains(string(b), `"prefix":"198.51.100.10/32"`) || !strings.Contains(string(b), `"state":"established"`) {
		t.Errorf("status JSON = %s, %v", b, err)
	}

	// Stop closes the session; the observer drops it.
	if err := sp.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "observer session down after Stop", func() bool { return !obs.established() })
	if err := sp.SetAnnounced(ctx, false); !errors.Is(err, ErrStopped) {
		t.Errorf("SetAnnounced after Stop = %v, want ErrStopped", err)
	}
	if st := sp.Status(); st.Running {
		t.Errorf("status after Stop says running: %+v", st)
	}
	if err := sp.Stop(ctx); err != nil {
		t.Errorf("second Stop = %v", err)
	}
}

func checkMetrics(t *testing.T, sp *Speaker, want map[string]float64) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(sp); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]float64)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			var labels []string
			for _, l := range m.GetLabel() {
				if l.GetName() != "peer" {
					labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
			}
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Gauge != nil:
				got[key] = m.GetGauge().GetValue()
			case m.Counter != nil:
				got[key] = m.GetCounter().GetValue()
			}
		}
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("metric %s = %v (present %v), want %v; all: %v", k, g, ok, v, got)
		}
	}
}

// TestSpeakerStopWithdraws shows the kill path of a planned stop: Stop
// sends a NOTIFICATION, so the router drops the route at once instead of
// after the hold time.
func TestSpeakerStopWithdraws(t *testing.T) {
	obs := startObserver(t, "127.0.0.1", observerPeer("127.0.0.1", 0))
	sp := testSpeaker(t, Peer{Addr: netip.MustParseAddr("127.0.0.1"), ASN: observerASN, Port: uint16(obs.port), HoldTime: 90 * time.Second})
	if err := sp.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Stop(context.Background()) })
	eventually(t, 15*time.Second, "session", obs.established)
	if err := sp.SetAnnounced(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "announcement", func() bool { return obs.has(anycast4) })
	start := time.Now()
	if err := sp.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "withdrawal after Stop", func() bool { return !obs.has(anycast4) })
	t.Logf("Stop -> observer withdrawal: %v (hold time 90s)", time.Since(start))
}

// TestSpeakerPassword checks TCP MD5 (RFC 2385): with the same key on both
// sides the session comes up; when only the speaker signs, the observer's
// kernel drops the segments and the session never establishes.
func TestSpeakerPassword(t *testing.T) {
	for _, tc := range []struct {
		name        string
		observerKey string
		wantUp      bool
	}{
		{"same key", "s3cret", true},
		{"observer unsigned", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := observerPeer("127.0.0.1", 0)
			p.Conf.AuthPassword = tc.observerKey
			obs := startObserver(t, "127.0.0.1", p)
			sp := testSpeaker(t, Peer{Addr: netip.MustParseAddr("127.0.0.1"), ASN: observerASN, Port: uint16(obs.port), Password: "s3cret", ConnectRetry: time.Second})
			if err := sp.Start(t.Context()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sp.Stop(context.Background()) })
			if tc.wantUp {
				eventually(t, 15*time.Second, "session with TCP MD5", obs.established)
				return
			}
			// Negative case: several connect attempts (retry 1 s) must all fail.
			deadline := time.Now().Add(4 * time.Second)
			for time.Now().Before(deadline) {
				if obs.established() || sp.Status().Peers[0].State == "established" {
					t.Fatal("session came up although only one side signs with TCP MD5")
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

func TestSpeakerStartFails(t *testing.T) {
	// A port in use makes StartBgp fail; Start must report it and leave
	// nothing running.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sp := testSpeaker(t, Peer{Addr: netip.MustParseAddr("127.0.0.1"), ASN: observerASN, Passive: true})
	sp.ListenPort = int32(l.Addr().(*net.TCPAddr).Port)
	sp.ListenAddrs = []string{"127.0.0.1"}
	err = sp.Start(t.Context())
	if err == nil {
		t.Fatal("Start succeeded on a port in use")
	}
	select {
	case <-sp.Done():
	default:
		t.Fatal("a failed Start left the speaker running")
	}
	if err := sp.SetAnnounced(t.Context(), true); !errors.Is(err, ErrStopped) {
		t.Errorf("SetAnnounced after failed Start = %v, want ErrStopped", err)
	}
	if err := sp.Start(t.Context()); err == nil {
		t.Error("a speaker restarted")
	}

	// Invalid configuration: Start refuses before touching anything.
	bad := testSpeaker(t, Peer{Addr: netip.MustParseAddr("127.0.0.1"), ASN: 0})
	if err := bad.Start(t.Context()); err == nil || !strings.Contains(err.Error(), "RFC 7607") {
		t.Errorf("Start with ASN 0 = %v", err)
	}
	if err := bad.SetAnnounced(t.Context(), true); !errors.Is(err, ErrNotStarted) {
		t.Errorf("SetAnnounced on an unstarted speaker = %v, want ErrNotStarted", err)
	}
	if st := bad.Status(); st.Running || st.Announced() || len(st.Peers) != 1 {
		t.Errorf("status of an unstarted speaker = %+v", st)
	}
	if err := bad.Stop(t.Context()); err != nil {
		t.Errorf("Stop of an unstarted speaker = %v", err)
	}
}

func TestDrainPrependRefusedForIBGP(t *testing.T) {
	obs := startObserver(t, "127.0.0.1", observerPeer("127.0.0.1", 0))
	sp := testSpeaker(t, Peer{Addr: netip.MustParseAddr("127.0.0.1"), ASN: speakerASN, Port: uint16(obs.port)})
	if err := sp.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Stop(context.Background()) })
	if err := sp.Drain(t.Context(), DrainPrepend); err == nil || !strings.Contains(err.Error(), "iBGP") {
		t.Fatalf("Drain(prepend) with an iBGP peer = %v", err)
	}
	if st := sp.Status(); st.Drain != "" {
		t.Errorf("refused drain changed the status: %+v", st)
	}
}

// TestSetAnnouncedCancelled: a cancelled wait returns the context's error
// while the change still takes effect.
func TestSetAnnouncedCancelled(t *testing.T) {
	obs := startObserver(t, "127.0.0.1", observerPeer("127.0.0.1", 0))
	sp := testSpeaker(t, Peer{Addr: netip.MustParseAddr("127.0.0.1"), ASN: observerASN, Port: uint16(obs.port)})
	if err := sp.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Stop(context.Background()) })
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := sp.SetAnnounced(ctx, true); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("SetAnnounced with a cancelled context = %v", err)
	}
	eventually(t, 5*time.Second, "announcement applied in the background", func() bool { return sp.Status().Announced() })
}

// TestConcurrentUse runs Status, metrics and announcements at once under
// the race detector.
func TestConcurrentUse(t *testing.T) {
	obs := startObserver(t, "127.0.0.1", observerPeer("127.0.0.1", 0))
	sp := testSpeaker(t, Peer{Addr: netip.MustParseAddr("127.0.0.1"), ASN: observerASN, Port: uint16(obs.port)})
	if err := sp.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 20 {
				_ = sp.SetAnnounced(t.Context(), (i+j)%2 == 0)
				_ = sp.Status()
				ch := make(chan prometheus.Metric, 64)
				sp.Collect(ch)
			}
		})
	}
	wg.Wait()
	if err := sp.SetAnnounced(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	if !sp.Status().Announced() {
		t.Error("last SetAnnounced(true) did not win")
	}
	if err := sp.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
}
