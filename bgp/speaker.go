package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Errors returned by [Speaker.SetAnnounced] and [Speaker.Drain].
var (
	// ErrNotStarted: the speaker was never started.
	ErrNotStarted = errors.New("bgp: speaker not started")
	// ErrStopped: the speaker has been stopped (or failed); nothing is announced.
	ErrStopped = errors.New("bgp: speaker stopped")
	// ErrDraining: a drain has begun, so the prefixes are never announced
	// again at full preference by this speaker.
	ErrDraining = errors.New("bgp: speaker is draining")
)

// Speaker is an embedded BGP speaker that announces a fixed set of anycast
// prefixes to its peers while told to, and withdraws them otherwise.
//
// Set the exported fields, then call Start; the fields must not change
// afterwards. A Speaker starts once: after Stop it cannot be restarted.
type Speaker struct {
	// ASN is the local autonomous system number, checked with [CheckASN].
	// Required; no default.
	ASN uint32
	// RouterID is the BGP Identifier, an IPv4 address unique within the AS
	// (RFC 6286). Required; no default.
	RouterID netip.Addr
	// ListenPort is the TCP port for incoming sessions. Default 0: do not
	// listen, only dial out (then no peer may be Passive).
	ListenPort int32
	// ListenAddrs are the local addresses to listen on when ListenPort > 0.
	// Default: all addresses ("0.0.0.0" and "::").
	ListenAddrs []string
	// Peers are the BGP neighbors. Required: at least one.
	Peers []Peer
	// Prefixes are the anycast prefixes announced while SetAnnounced(true)
	// holds, each checked with [CheckPrefix]. Required: at least one.
	Prefixes []netip.Prefix
	// NextHop4 is the next hop of IPv4 prefixes. Default: the zero Addr,
	// next-hop self (the local address of each session).
	NextHop4 netip.Addr
	// NextHop6 is the next hop of IPv6 prefixes. Default: the zero Addr,
	// next-hop self. Required when IPv6 prefixes go to an IPv4 peer.
	NextHop6 netip.Addr
	// Communities are attached to every announced prefix (RFC 1997).
	// Default: none.
	Communities []Community
	// LargeCommunities are attached to every announced prefix (RFC 8092).
	// Default: none.
	LargeCommunities []LargeCommunity
	// PrependCount is how many times DrainPrepend prepends the local ASN,
	// 1 to 32. Default 0 means 3.
	PrependCount int
	// Logger receives the speaker's and gobgp's logs. Default: slog.Default().
	Logger *slog.Logger

	// now is the clock for status timestamps; tests replace it. Default time.Now.
	now func() time.Time

	mu         sync.Mutex
	started    bool
	stopping   bool
	err        error // why the speaker stopped on its own, if it did
	bgp        *server.BgpServer
	log        *slog.Logger
	baseLog    *slog.Logger
	cancel     context.CancelFunc // ends the gobgp watch
	kick       chan struct{}      // cap 1: work is waiting for the worker
	quit       chan struct{}      // closed by Stop: the worker returns
	workerDone chan struct{}
	done       chan struct{} // closed when fully stopped

	// route state: the mode wanted by callers and the mode applied to gobgp.
	desired, applied   routeMode
	desiredGen         uint64
	appliedGen         uint64
	appliedErr         error
	appliedCh          chan struct{} // closed and replaced when appliedGen moves
	drain              *DrainMode
	routeSince         time.Time
	announces, prepend uint64
	withdraws          uint64

	// peer state, written by the worker from copied gobgp events.
	peers map[netip.Addr]*peerState

	evMu     sync.Mutex
	events   []peerEvent
	overflow bool // events were dropped: the worker re-reads all peers

	libErrors atomic.Uint64 // gobgp log records at level Error
}

type routeMode int

const (
	modeWithdrawn routeMode = iota
	modeAnnounced
	modePrepended
)

func (m routeMode) String() string {
	switch m {
	case modeAnnounced:
		return "announced"
	case modePrepended:
		return "prepended"
	}
	return "withdrawn"
}

type peerState struct {
	cfg         Peer
	state       bgp.FSMState
	since       time.Time
	established time.Time
	flaps       uint64
	lastError   string

	// renew: the session of this BFD peer left Established, so the worker
	// deletes the peer from gobgp and adds it again (see renewPeer).
	renew bool
	// removed: renewPeer deleted the peer but has not yet added it back.
	removed bool
	// renewals counts completed renewals, for tests.
	renewals uint64
}

// peerEvent is a copy of the part of a gobgp peer event the worker needs,
// so that nothing gobgp owns is retained after its callback returns.
type peerEvent struct {
	addr   netip.Addr
	state  bgp.FSMState
	at     time.Time
	reason string
}

const (
	maxQueuedEvents = 4096
	retryInterval   = time.Second
	defaultPrepend  = 3
)

// Validate reports the first configuration error, naming the field; it
// changes nothing. Start calls it.
func (s *Speaker) Validate() error {
	if err := CheckASN(s.ASN); err != nil {
		return fmt.Errorf("bgp: asn: %w", err)
	}
	if err := CheckRouterID(s.RouterID); err != nil {
		return fmt.Errorf("bgp: router id: %w", err)
	}
	if s.ListenPort < 0 || s.ListenPort > 65535 {
		return fmt.Errorf("bgp: listen port %d is outside 0..65535", s.ListenPort)
	}
	for _, a := range s.ListenAddrs {
		if _, err := netip.ParseAddr(a); err != nil {
			return fmt.Errorf("bgp: listen address %q: %w", a, err)
		}
	}
	if len(s.ListenAddrs) > 0 && s.ListenPort == 0 {
		return errors.New("bgp: listen addresses are set but listen port is 0 (do not listen)")
	}
	if len(s.Peers) == 0 {
		return errors.New("bgp: no peers")
	}
	if len(s.Prefixes) == 0 {
		return errors.New("bgp: no prefixes to announce")
	}
	if s.NextHop4.IsValid() && (!s.NextHop4.Is4() || s.NextHop4.IsUnspecified() || s.NextHop4.IsMulticast()) {
		return fmt.Errorf("bgp: next hop %s for IPv4 prefixes is not an IPv4 unicast address", s.NextHop4)
	}
	if s.NextHop6.IsValid() && (!s.NextHop6.Is6() || s.NextHop6.Is4In6() || s.NextHop6.IsUnspecified() || s.NextHop6.IsMulticast()) {
		return fmt.Errorf("bgp: next hop %s for IPv6 prefixes is not an IPv6 unicast address", s.NextHop6)
	}
	if s.PrependCount < 0 || s.PrependCount > 32 {
		return fmt.Errorf("bgp: prepend count %d is outside 1..32", s.PrependCount)
	}
	has4, has6 := false, false
	seenPrefix := make(map[netip.Prefix]bool)
	for _, p := range s.Prefixes {
		if err := CheckPrefix(p); err != nil {
			return fmt.Errorf("bgp: prefix %s: %w", p, err)
		}
		if seenPrefix[p] {
			return fmt.Errorf("bgp: prefix %s is listed twice", p)
		}
		seenPrefix[p] = true
		has4 = has4 || p.Addr().Is4()
		has6 = has6 || p.Addr().Is6()
	}
	seenPeer := make(map[netip.Addr]bool)
	for _, p := range s.Peers {
		if err := p.validate(s.ASN); err != nil {
			return fmt.Errorf("bgp: peer %s: %w", p.Addr, err)
		}
		if seenPeer[p.Addr] {
			return fmt.Errorf("bgp: peer %s is listed twice", p.Addr)
		}
		seenPeer[p.Addr] = true
		if p.Passive && s.ListenPort == 0 {
			return fmt.Errorf("bgp: peer %s is passive but the speaker does not listen (listen port 0)", p.Addr)
		}
		if p.BFD != nil && p.MultihopTTL > 0 {
			// gobgp implements single-hop BFD only (RFC 5881: TTL 255,
			// port 3784), which a multihop neighbor would drop.
			return fmt.Errorf("bgp: peer %s: bfd is single-hop only and cannot be combined with multihop", p.Addr)
		}
		// A next-hop-self of the wrong family cannot be encoded for the
		// peer (RFC 4760 §3): say so now rather than announce a route the
		// router ignores.
		if has6 && p.Addr.Unmap().Is4() && !s.NextHop6.IsValid() {
			return fmt.Errorf("bgp: peer %s is IPv4 and IPv6 prefixes are announced: set an IPv6 next hop", p.Addr)
		}
		if has4 && p.Addr.Is6() && !p.Addr.Is4In6() && !s.NextHop4.IsValid() {
			return fmt.Errorf("bgp: peer %s is IPv6 and IPv4 prefixes are announced: set an IPv4 next hop", p.Addr)
		}
	}
	return nil
}

// Start validates the configuration, starts the embedded gobgp server and
// configures the peers. Nothing is announced until SetAnnounced(true). A
// start that fails half way stops what it started. ctx bounds the start
// only, not the speaker's life.
func (s *Speaker) Start(ctx context.Context) (err error) {
	if err := s.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("bgp: speaker already started")
	}
	s.started = true
	s.init()
	// Never server.GrpcListenAddress: the embedded speaker exposes no API.
	srv := server.NewBgpServer(server.LoggerOption(newLibraryLogger(s.baseLog, s.libErrors.Add, s.fail), nil))
	s.bgp = srv
	s.mu.Unlock()
	go srv.Serve()
	go s.worker()
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Stop(ctx))
		}
	}()

	global := &api.Global{
		Asn:             s.ASN,
		RouterId:        s.RouterID.String(),
		ListenPort:      -1, // gobgp's "do not listen"; its 0 means 179
		ListenAddresses: slices.Clone(s.ListenAddrs),
	}
	if s.ListenPort > 0 {
		global.ListenPort = s.ListenPort
	}
	if err := call(ctx, func() error {
		return srv.StartBgp(ctx, &api.StartBgpRequest{Global: global})
	}); err != nil {
		return fmt.Errorf("bgp: start: %w", err)
	}

	// Watch before adding peers so that no state change is missed.
	watchCtx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()
	if err := srv.WatchEvent(watchCtx, server.WatchEventMessageCallbacks{
		OnPeerUpdate: s.onPeerUpdate,
	}, server.WatchPeer()); err != nil {
		return fmt.Errorf("bgp: watch peers: %w", err)
	}

	for _, p := range s.Peers {
		req := &api.AddPeerRequest{Peer: s.apiPeer(p)}
		if err := call(ctx, func() error { return srv.AddPeer(ctx, req) }); err != nil {
			return fmt.Errorf("bgp: add peer %s: %w", p.Addr, err)
		}
	}
	s.log.Info("bgp speaker started", "asn", s.ASN, "router_id", s.RouterID,
		"listen_port", s.ListenPort, "peers", len(s.Peers), "prefixes", len(s.Prefixes))
	return nil
}

// init prepares the runtime state; called with mu held.
func (s *Speaker) init() {
	if s.now == nil {
		s.now = time.Now
	}
	base := s.Logger
	if base == nil {
		base = slog.Default()
	}
	s.baseLog = base
	s.log = base.With("component", "bgp")
	s.kick = make(chan struct{}, 1)
	s.quit = make(chan struct{})
	s.workerDone = make(chan struct{})
	s.done = make(chan struct{})
	s.appliedCh = make(chan struct{})
	s.routeSince = s.now()
	s.peers = make(map[netip.Addr]*peerState, len(s.Peers))
	for _, p := range s.Peers {
		s.peers[p.Addr] = &peerState{cfg: p, state: bgp.BGP_FSM_IDLE, since: s.routeSince}
	}
}

// call runs a gobgp management call, which does not honor its context, so
// that the caller's wait can be cancelled. The call itself ends when gobgp
// serves it or stops.
func call(ctx context.Context, f func() error) error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Speaker) apiPeer(p Peer) *api.Peer {
	hold := uint64(p.holdTime() / time.Second)
	retry := uint64(p.connectRetry() / time.Second)
	ap := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Addr.String(),
			PeerAsn:         p.ASN,
			AuthPassword:    p.Password,
		},
		Transport: &api.Transport{
			RemotePort:  uint32(p.port()),
			PassiveMode: p.Passive,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          hold,
			KeepaliveInterval: max(hold/3, 1), // RFC 4271 §10 suggests a third
			ConnectRetry:      retry,
			// After gobgp sends a Cease/Administrative Reset (its BFD
			// does on BFD down) the peer stays Idle this long; gobgp's
			// default is 30 s, an outage of its own for an edge whose
			// path is back. renewPeers normally replaces such a peer
			// at once; this bounds the wait if it cannot.
			IdleHoldTimeAfterReset: retry,
		}},
	}
	if p.LocalAddr.IsValid() {
		ap.Transport.LocalAddress = p.LocalAddr.String()
	}
	if p.MultihopTTL > 0 {
		ap.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.MultihopTTL)}
	}
	// Negotiate only the families that are announced (RFC 4760 §8).
	families := make(map[api.Family_Afi]bool)
	for _, pfx := range s.Prefixes {
		if pfx.Addr().Is4() {
			families[api.Family_AFI_IP] = true
		} else {
			families[api.Family_AFI_IP6] = true
		}
	}
	for _, afi := range []api.Family_Afi{api.Family_AFI_IP, api.Family_AFI_IP6} {
		if families[afi] {
			ap.AfiSafis = append(ap.AfiSafis, &api.AfiSafi{Config: &api.AfiSafiConfig{
				Family:  &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST},
				Enabled: true,
			}})
		}
	}
	if p.BFD != nil {
		iv := uint32(p.BFD.interval() / time.Microsecond)
		ap.Bfd = &api.BfdPeerConfig{
			Enabled:                  true,
			DesiredMinimumTxInterval: iv,
			RequiredMinimumReceive:   iv,
			DetectionMultiplier:      uint32(p.BFD.multiplier()),
		}
	}
	return ap
}

// onPeerUpdate is gobgp's callback. It copies the event and hands it to
// the worker without ever blocking gobgp's watcher goroutine.
func (s *Speaker) onPeerUpdate(ev *apiutil.WatchEventMessage_PeerEvent, at time.Time) {
	if ev == nil || ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	e := peerEvent{
		addr:   ev.Peer.State.NeighborAddress,
		state:  ev.Peer.State.SessionState,
		at:     at,
		reason: ev.Peer.State.DisconnectMessage,
	}
	s.evMu.Lock()
	if len(s.events) < maxQueuedEvents {
		s.events = append(s.events, e)
	} else {
		s.overflow = true
	}
	s.evMu.Unlock()
	s.poke()
}

func (s *Speaker) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// worker is the one goroutine that applies peer events and route changes,
// so gobgp calls happen in the order callers asked for them.
func (s *Speaker) worker() {
	defer close(s.workerDone)
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-s.kick:
		case <-retry.C:
		}
		s.applyEvents()
		failed := false
		if err := s.renewPeers(); err != nil {
			s.log.Warn("bgp peer renewal failed; retrying", "err", err, "in", retryInterval)
			failed = true
		}
		if err := s.reconcile(); err != nil {
			s.log.Warn("bgp route change failed; retrying", "err", err, "in", retryInterval)
			failed = true
		}
		if failed {
			retry.Reset(retryInterval)
		}
	}
}

func (s *Speaker) applyEvents() {
	s.evMu.Lock()
	evs, overflow := s.events, s.overflow
	s.events, s.overflow = nil, false
	s.evMu.Unlock()
	if overflow {
		evs = append(evs, s.listPeers()...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range evs {
		ps, ok := s.peers[e.addr]
		if !ok || ps.state == e.state {
			continue
		}
		if ps.state == bgp.BGP_FSM_ESTABLISHED {
			ps.flaps++
			ps.renew = ps.cfg.BFD != nil
		}
		if e.state == bgp.BGP_FSM_ESTABLISHED {
			ps.established = e.at
			// A session that is up again needs no renewal; if gobgp
			// still holds a stale reset for it, the session drops at
			// once and that drop asks for the renewal again.
			ps.renew = false
		} else {
			ps.established = time.Time{}
		}
		// Only a fall to Idle carries a failure; the other transitions'
		// reasons ("open-msg-received", ...) are progress, not errors.
		if e.state == bgp.BGP_FSM_IDLE && e.reason != "" {
			ps.lastError = e.reason
		}
		ps.state, ps.since = e.state, e.at
		s.log.Info("bgp peer state", "peer", e.addr, "state", stateName(e.state), "reason", e.reason)
	}
}

// renewPeers deletes and re-adds, in gobgp, every BFD peer whose session
// has left Established, so that the next session starts clean.
//
// gobgp v4.8.0 needs this (osrg/gobgp#3561). Its BFD keeps the router's
// old BFD discriminator after the BGP session ends and drops the packets
// of the router's new BFD session (RFC 5880 §6.8.6 would accept them:
// a zero Your Discriminator selects the session by source address), so
// it declares BFD down one detection time later and calls ResetPeer.
// gobgp's FSM reads a reset only in Established, so a reset made while
// the peer is down waits in the peer's queue and is sent as a Cease the
// moment the next session is established: the router drops that session,
// starts a new BFD session, and the cycle repeats. A reset sent while
// Established also holds the peer in Idle for IdleHoldTimeAfterReset.
// DeletePeer stops the peer's FSM and BFD session with their queued
// state; AddPeer starts a new FSM (no idle hold on its first start) and a
// BFD session in Down with a new discriminator, which binds to whatever
// session the router runs now. Peers without BFD are left alone: nothing
// else in this package resets a peer.
func (s *Speaker) renewPeers() error {
	s.mu.Lock()
	var todo []netip.Addr
	for _, p := range s.Peers {
		if ps := s.peers[p.Addr]; ps.renew && ps.state != bgp.BGP_FSM_ESTABLISHED {
			todo = append(todo, p.Addr)
		}
	}
	s.mu.Unlock()
	var errs []error
	for _, a := range todo {
		if err := s.renewPeer(a); err != nil {
			errs = append(errs, fmt.Errorf("peer %s: %w", a, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Speaker) renewPeer(addr netip.Addr) error {
	ctx := context.Background() // gobgp's calls return when it stops
	s.mu.Lock()
	ps := s.peers[addr]
	removed, cfg := ps.removed, ps.cfg
	s.mu.Unlock()
	if !removed {
		// The events applied so far may lag behind gobgp: a session that
		// is established by now is not torn down (if a stale reset
		// kills it, its drop asks for the renewal again).
		up := false
		if err := s.bgp.ListPeer(ctx, &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) {
			up = p.State != nil && p.State.SessionState == api.PeerState_SESSION_STATE_ESTABLISHED
		}); err != nil {
			return fmt.Errorf("read state: %w", err)
		}
		if up {
			s.mu.Lock()
			ps.renew = false
			s.mu.Unlock()
			return nil
		}
		// The session is down, so gobgp sends nothing to the router here.
		if err := s.bgp.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		s.mu.Lock()
		ps.removed = true
		s.mu.Unlock()
	}
	if err := s.bgp.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(cfg)}); err != nil {
		return fmt.Errorf("add: %w", err)
	}
	s.mu.Lock()
	ps.renew, ps.removed = false, false
	ps.renewals++
	s.mu.Unlock()
	s.log.Info("bgp peer renewed after its session went down (clears gobgp's BFD and reset state)", "peer", addr)
	return nil
}

// listPeers reads every peer's state from gobgp, used only after events
// were dropped; it runs on the worker, never in a callback.
func (s *Speaker) listPeers() []peerEvent {
	var evs []peerEvent
	now := s.now()
	err := s.bgp.ListPeer(context.Background(), &api.ListPeerRequest{}, func(p *api.Peer) {
		if p.State == nil {
			return
		}
		a, err := netip.ParseAddr(p.State.NeighborAddress)
		if err != nil {
			return
		}
		evs = append(evs, peerEvent{addr: a, state: fsmFromAPI(p.State.SessionState), at: now, reason: p.State.DisconnectMessage})
	})
	if err != nil {
		s.log.Warn("bgp list peers failed", "err", err)
	}
	return evs
}

func fsmFromAPI(st api.PeerState_SessionState) bgp.FSMState {
	switch st {
	case api.PeerState_SESSION_STATE_CONNECT:
		return bgp.BGP_FSM_CONNECT
	case api.PeerState_SESSION_STATE_ACTIVE:
		return bgp.BGP_FSM_ACTIVE
	case api.PeerState_SESSION_STATE_OPENSENT:
		return bgp.BGP_FSM_OPENSENT
	case api.PeerState_SESSION_STATE_OPENCONFIRM:
		return bgp.BGP_FSM_OPENCONFIRM
	case api.PeerState_SESSION_STATE_ESTABLISHED:
		return bgp.BGP_FSM_ESTABLISHED
	}
	return bgp.BGP_FSM_IDLE
}

// reconcile brings gobgp's local RIB to the desired mode. A failed change
// leaves applied as it was, so the retry timer tries it again.
func (s *Speaker) reconcile() error {
	s.mu.Lock()
	want, gen, have := s.desired, s.desiredGen, s.applied
	if want == have {
		if s.appliedGen < gen {
			s.appliedGen, s.appliedErr = gen, nil
			s.broadcastLocked()
		}
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	err := s.applyMode(want)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.applied = want
		s.routeSince = s.now()
		switch want {
		case modeAnnounced:
			s.announces++
		case modePrepended:
			s.prepend++
		case modeWithdrawn:
			s.withdraws++
		}
		s.log.Info("bgp prefixes "+want.String(), "prefixes", s.Prefixes)
	}
	s.appliedGen, s.appliedErr = gen, err
	s.broadcastLocked()
	return err
}

func (s *Speaker) broadcastLocked() {
	close(s.appliedCh)
	s.appliedCh = make(chan struct{})
}

func (s *Speaker) applyMode(m routeMode) error {
	paths, err := s.paths(m)
	if err != nil {
		return err
	}
	if m == modeWithdrawn {
		return s.bgp.DeletePath(apiutil.DeletePathRequest{Paths: paths})
	}
	// Adding a path for a prefix this speaker already originates replaces
	// it (implicit withdraw, RFC 4271 §3.1), so announced -> prepended is a
	// single update per prefix and never a withdrawal.
	_, err = s.bgp.AddPath(apiutil.AddPathRequest{Paths: paths})
	return err
}

// paths builds one locally originated path per prefix for mode m.
func (s *Speaker) paths(m routeMode) ([]*apiutil.Path, error) {
	comms := make([]uint32, 0, len(s.Communities)+1)
	for _, c := range s.Communities {
		comms = append(comms, uint32(c))
	}
	var asPath []uint32
	if m == modePrepended {
		n := s.PrependCount
		if n == 0 {
			n = defaultPrepend
		}
		for range n {
			asPath = append(asPath, s.ASN)
		}
		if !slices.Contains(s.Communities, CommunityGracefulShutdown) {
			comms = append(comms, uint32(CommunityGracefulShutdown))
		}
	}
	age := s.now()
	out := make([]*apiutil.Path, 0, len(s.Prefixes))
	for _, pfx := range s.Prefixes {
		nlri, err := bgp.NewIPAddrPrefix(pfx)
		if err != nil {
			return nil, fmt.Errorf("prefix %s: %w", pfx, err)
		}
		attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
		family := bgp.RF_IPv4_UC
		if pfx.Addr().Is4() {
			// 0.0.0.0 asks gobgp for next-hop self on each session.
			nh := netip.IPv4Unspecified()
			if s.NextHop4.IsValid() {
				nh = s.NextHop4
			}
			a, err := bgp.NewPathAttributeNextHop(nh)
			if err != nil {
				return nil, fmt.Errorf("next hop %s: %w", nh, err)
			}
			attrs = append(attrs, a)
		} else {
			family = bgp.RF_IPv6_UC
			nh := netip.IPv6Unspecified()
			if s.NextHop6.IsValid() {
				nh = s.NextHop6
			}
			a, err := bgp.NewPathAttributeMpReachNLRI(family, []bgp.PathNLRI{{NLRI: nlri}}, nh)
			if err != nil {
				return nil, fmt.Errorf("next hop %s: %w", nh, err)
			}
			attrs = append(attrs, a)
		}
		if len(asPath) > 0 {
			attrs = append(attrs, bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{
				bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, asPath),
			}))
		}
		if len(comms) > 0 {
			attrs = append(attrs, bgp.NewPathAttributeCommunities(comms))
		}
		if len(s.LargeCommunities) > 0 {
			lc := make([]*bgp.LargeCommunity, len(s.LargeCommunities))
			for i, c := range s.LargeCommunities {
				lc[i] = bgp.NewLargeCommunity(c.Global, c.Local1, c.Local2)
			}
			attrs = append(attrs, bgp.NewPathAttributeLargeCommunities(lc))
		}
		out = append(out, &apiutil.Path{
			Family:     family,
			Nlri:       nlri,
			Attrs:      attrs,
			Age:        age.Unix(),
			Withdrawal: m == modeWithdrawn,
		})
	}
	return out, nil
}

// SetAnnounced announces the configured prefixes (true) or withdraws them
// (false) and waits until gobgp has taken the change. It is idempotent.
//
// If ctx ends first, the change still takes effect in the background; the
// error only says it was not confirmed in time. After Drain,
// SetAnnounced(true) changes nothing and returns ErrDraining, while
// SetAnnounced(false) still withdraws.
func (s *Speaker) SetAnnounced(ctx context.Context, on bool) error {
	want := modeWithdrawn
	if on {
		want = modeAnnounced
	}
	s.mu.Lock()
	if err := s.usableLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	if on && s.drain != nil {
		s.mu.Unlock()
		return ErrDraining
	}
	gen := s.setDesiredLocked(want)
	s.mu.Unlock()
	return s.waitApplied(ctx, gen)
}

// Drain starts moving traffic away before a shutdown: DrainWithdraw
// withdraws the prefixes; DrainPrepend re-announces them with the local
// ASN prepended PrependCount times and the GRACEFUL_SHUTDOWN community
// (RFC 8326) if they are announced, and leaves them withdrawn otherwise.
// From then on the speaker never announces at full preference again.
// DrainPrepend is refused, changing nothing, when a peer is iBGP: the
// local ASN in the AS_PATH would make iBGP peers drop the route as a loop
// (RFC 4271 §9.1.2) instead of preferring another edge.
func (s *Speaker) Drain(ctx context.Context, mode DrainMode) error {
	if mode != DrainWithdraw && mode != DrainPrepend {
		return fmt.Errorf("bgp: drain: unknown mode %d", int(mode))
	}
	if mode == DrainPrepend {
		for _, p := range s.Peers {
			if p.ASN == s.ASN {
				return fmt.Errorf("bgp: drain prepend: peer %s is iBGP; use withdraw", p.Addr)
			}
		}
	}
	s.mu.Lock()
	if err := s.usableLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	if s.drain == nil || *s.drain == DrainPrepend {
		m := mode
		s.drain = &m
	}
	want := modeWithdrawn
	if *s.drain == DrainPrepend && s.desired != modeWithdrawn {
		want = modePrepended
	}
	gen := s.setDesiredLocked(want)
	s.mu.Unlock()
	s.log.Info("bgp drain", "mode", mode)
	return s.waitApplied(ctx, gen)
}

func (s *Speaker) usableLocked() error {
	if !s.started {
		return ErrNotStarted
	}
	if s.stopping {
		if s.err != nil {
			return fmt.Errorf("%w: %w", ErrStopped, s.err)
		}
		return ErrStopped
	}
	return nil
}

func (s *Speaker) setDesiredLocked(m routeMode) uint64 {
	if s.desired != m {
		s.desired = m
		s.desiredGen++
	}
	s.poke()
	return s.desiredGen
}

func (s *Speaker) waitApplied(ctx context.Context, gen uint64) error {
	for {
		s.mu.Lock()
		if s.appliedGen >= gen {
			var err error
			if s.appliedGen == gen && s.appliedErr != nil {
				err = fmt.Errorf("bgp: %w", s.appliedErr)
			}
			s.mu.Unlock()
			return err
		}
		ch := s.appliedCh
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("bgp: route change not confirmed: %w", ctx.Err())
		case <-s.done:
			return ErrStopped
		}
	}
}

// Stop closes every session (each peer gets a NOTIFICATION Cease and
// withdraws this speaker's routes at once, RFC 4271 §6.7) and stops gobgp.
// It is idempotent. If ctx ends first, the teardown goes on in the
// background and Stop returns ctx's error.
func (s *Speaker) Stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.started {
		s.mu.Unlock()
		return nil
	}
	first := !s.stopping
	s.stopping = true
	s.mu.Unlock()
	if first {
		close(s.quit)
		go s.teardown()
	}
	return s.waitDone(ctx)
}

func (s *Speaker) waitDone(ctx context.Context) error {
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bgp: stop: %w", ctx.Err())
	}
}

// teardown stops gobgp first, so a worker blocked in a gobgp call returns,
// then waits for the worker.
func (s *Speaker) teardown() {
	s.mu.Lock()
	cancel := s.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	// gobgp's Stop does nothing if Serve has not begun yet, and Serve would
	// then run forever; a management call returns only once Serve runs.
	_, _ = s.bgp.GetBgp(context.Background(), &api.GetBgpRequest{})
	s.bgp.Stop()
	<-s.workerDone
	s.log.Info("bgp speaker stopped")
	close(s.done)
}

// fail is the fatal path of gobgp's logger: the speaker records why,
// stops announcing and stops, and Done and Err report it.
func (s *Speaker) fail(msg string) {
	s.mu.Lock()
	if s.err == nil {
		s.err = fmt.Errorf("gobgp fatal: %s", msg)
	}
	started := s.started && s.done != nil
	s.mu.Unlock()
	if started {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = s.Stop(ctx)
		}()
	}
}

// Done is closed when the speaker has stopped, by Stop or on its own after
// a fatal error (see Err). It is nil before Start.
func (s *Speaker) Done() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// Err says why the speaker stopped on its own; nil if it did not.
func (s *Speaker) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}
