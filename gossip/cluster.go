package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/hashicorp/memberlist"
)

// Cluster is this node's membership in one gossip pool. Set the exported
// fields, then call Start; a Cluster cannot be restarted after Shutdown.
type Cluster struct {
	// Name is this node's name, unique in the pool: 1 to MaxNameLen bytes
	// of UTF-8 without control characters. Required.
	Name string
	// BindAddr is the "ip:port" to listen on, UDP and TCP; port 0 picks a
	// free port (Addr then reports it). The host must be an IP literal, so
	// that a name that resolves differently cannot widen the listener.
	// Required.
	BindAddr string
	// AdvertiseAddr is the "ip:port" announced to peers, for NAT. Default:
	// the bound address.
	AdvertiseAddr string
	// Profile selects LAN (the default) or WAN timings; see Profile.config.
	Profile Profile
	// Key is the pool's AES key, 16, 24 or 32 bytes. Required: gossip is
	// always encrypted and authenticated, and messages without the key are
	// refused.
	Key []byte
	// Keys are further keys the pool accepts messages in beside Key (a
	// rotation in progress: see InstallKey, UseKey, RemoveKey). Key is the
	// one messages are sent with. Default: none.
	Keys [][]byte
	// Label separates pools that share a key and network, for example
	// "meshd/region/eu" and "meshd/global"; it is authenticated with every
	// message, so pools with different labels never exchange messages.
	// Required, at most 255 bytes.
	Label string
	// Join lists seed "host:port" addresses. Start waits for the first
	// attempt (about 2 s at most); the Cluster then keeps retrying until a
	// seed answers, re-joins any seed that is not a member, and re-joins
	// members it knew once they are gone (restarted, or across a
	// partition), with backoff capped at 1 s on LAN and 2 s on WAN; see
	// join.go. Default: none (the pool's first node: a pool of one until
	// someone joins this node).
	Join []string
	// Logger receives this package's and memberlist's logs. Default:
	// slog.Default().
	Logger *slog.Logger
	// OnChange, if set, is called after membership or any record changes
	// (this node's own included). Calls come from one goroutine owned by
	// the Cluster, never from memberlist's, one at a time, and are
	// coalesced: a burst of changes may give a single call. A slow OnChange
	// delays only later OnChange calls. Default: nil.
	OnChange func()
	// OnNote, if set, receives the notes peers sent this node with Send:
	// from is the sender's name as it says (the pool key authenticates
	// the pool, not the member: check data on its own merits). Calls come
	// from one goroutine owned by the Cluster, one at a time, in arrival
	// order; while noteQueue notes wait, further ones are dropped and
	// counted (DroppedNotes). Default: nil (notes are dropped).
	OnNote func(from string, data []byte)

	keyring atomic.Pointer[memberlist.Keyring]

	mu      sync.Mutex // guards started and closed
	started bool
	closed  bool

	// lifeMu serializes Leave and Shutdown: memberlist panics when Leave
	// follows Shutdown.
	lifeMu sync.Mutex

	log       *slog.Logger
	tm        timings
	ml        *memberlist.Memberlist
	addr      string // bound "ip:port"
	selfAddr  atomic.Pointer[string]
	seeds     []string
	maxBcast  int
	bcast     *memberlist.TransmitLimitedQueue
	nMembers  atomic.Int32
	cancel    context.CancelFunc
	loopDone  chan struct{}
	box       mailbox
	updateMu  sync.Mutex // serializes memberlist's UpdateNode (send.go)
	jobs      jobQueue
	noteJobs  jobQueue      // notes have their own senders: a record update waiting for its broadcast must not hold one up
	changed   chan struct{} // wakes the OnChange goroutine
	conflict  chan struct{} // wakes the join goroutine
	joinWake  chan struct{} // wakes the join goroutine: membership changed
	firstJoin chan error    // the join goroutine's first attempt
	joinStop  context.CancelFunc
	joined    atomic.Bool // see Joined
	bootID    uint64      // this process, in probe acks
	boots     boots
	bad       atomic.Uint64 // see BadPackets
	notes     chan note     // to the OnNote goroutine
	noteDrops atomic.Uint64 // see DroppedNotes
	counters  *poolCounters // memberlist's reports (metrics.go)
	poolID    string        // routes them here

	// conflictAt is when a peer last reported an older address for our
	// name (unix nanoseconds), see hooks.NotifyMerge.
	conflictAt atomic.Int64

	recMu       sync.Mutex // guards lastVersion and stores to self
	lastVersion uint64
	self        atomic.Pointer[record]

	view atomic.Pointer[view]

	susMu    sync.Mutex
	suspects map[string]bool

	badLog  rateLimiter
	dropLog rateLimiter

	st state // owned by the state goroutine

	// tune, if set, adjusts timings before Start uses them (tests only).
	tune func(*memberlist.Config, *timings)
	// wrap, if set, wraps the transport (tests only).
	wrap func(*memberlist.NetTransport) memberlist.NodeAwareTransport
}

// Member is one member of the pool as this node sees it.
type Member struct {
	Name string
	// Addr is the member's gossip "ip:port".
	Addr string
	// Record is the latest record known for the member, nil until known.
	// Callers must not modify it.
	Record []byte
	// Suspect is set while a probe by this node has failed and the member
	// has not answered since. memberlist does not expose suspicions it
	// learns from other members' gossip, so those are not reflected.
	Suspect bool
}

// initialJoinWait bounds how long Start waits for the first seed.
const initialJoinWait = 2 * time.Second

// Validate checks the fields and returns an error naming the first bad one.
// It changes nothing.
func (c *Cluster) Validate() error {
	if err := checkName(c.Name); err != nil {
		return fmt.Errorf("gossip: Name: %w", err)
	}
	if c.BindAddr == "" {
		return errors.New("gossip: BindAddr is required")
	}
	if _, err := parseIPPort(c.BindAddr, true); err != nil {
		return fmt.Errorf("gossip: BindAddr: %w", err)
	}
	if c.AdvertiseAddr != "" {
		ap, err := parseIPPort(c.AdvertiseAddr, false)
		if err != nil {
			return fmt.Errorf("gossip: AdvertiseAddr: %w", err)
		}
		if ap.Addr().IsUnspecified() {
			return fmt.Errorf("gossip: AdvertiseAddr: %s is not an address peers can reach", c.AdvertiseAddr)
		}
	}
	if c.Profile != LAN && c.Profile != WAN {
		return fmt.Errorf("gossip: Profile: unknown profile %d", int(c.Profile))
	}
	switch len(c.Key) {
	case 0:
		return errors.New("gossip: Key is required (16, 24 or 32 bytes): gossip is never sent unencrypted")
	case 16, 24, 32:
	default:
		return fmt.Errorf("gossip: Key is %d bytes, want 16, 24 or 32", len(c.Key))
	}
	for i, k := range c.Keys {
		if err := checkKey(k); err != nil {
			return fmt.Errorf("gossip: Keys[%d]: %w", i, err)
		}
	}
	if c.Label == "" {
		return errors.New("gossip: Label is required")
	}
	if len(c.Label) > memberlist.LabelMaxSize {
		return fmt.Errorf("gossip: Label is %d bytes, limit %d", len(c.Label), memberlist.LabelMaxSize)
	}
	for i, s := range c.Join {
		host, port, err := net.SplitHostPort(s)
		if err == nil && host == "" {
			err = errors.New("missing host")
		}
		if err == nil {
			err = checkPort(port, false)
		}
		if err != nil {
			return fmt.Errorf("gossip: Join[%d] %q: %w", i, s, err)
		}
	}
	return nil
}

func checkPort(s string, zeroOK bool) error {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return fmt.Errorf("bad port %q", s)
	}
	if p == 0 && !zeroOK {
		return errors.New("port 0")
	}
	return nil
}

func parseIPPort(s string, zeroPortOK bool) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("host %q is not an IP address", host)
	}
	if ip.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("host %q: zones are not supported", host)
	}
	if err := checkPort(port, zeroPortOK); err != nil {
		return netip.AddrPort{}, err
	}
	p, _ := strconv.ParseUint(port, 10, 16)
	return netip.AddrPortFrom(ip.Unmap(), uint16(p)), nil
}

// Start validates the fields, binds BindAddr and joins the pool. ctx bounds
// only the start itself (the first join attempt); the Cluster then runs
// until Leave or Shutdown. A Start that fails leaves nothing open.
func (c *Cluster) Start(ctx context.Context) error {
	c.mu.Lock()
	if c.started || c.closed {
		c.mu.Unlock()
		return errors.New("gossip: Start called twice")
	}
	if err := c.Validate(); err != nil {
		c.mu.Unlock()
		return err
	}
	if err := c.start(); err != nil {
		c.mu.Unlock()
		return err
	}
	c.started = true
	c.mu.Unlock()

	if len(c.seeds) == 0 {
		return nil
	}
	t := time.NewTimer(initialJoinWait)
	defer t.Stop()
	select {
	case err := <-c.firstJoin:
		if err != nil {
			c.log.Warn("gossip: no seed answered; retrying in the background", "seeds", c.seeds, "err", err)
		}
	case <-t.C:
		c.log.Warn("gossip: seeds slow to answer; retrying in the background", "seeds", c.seeds)
	case <-ctx.Done():
		c.log.Warn("gossip: start cancelled before a seed answered; retrying in the background", "seeds", c.seeds)
	}
	return nil
}

// start does the work of Start with c.mu held.
func (c *Cluster) start() error {
	bind, _ := parseIPPort(c.BindAddr, true)
	c.log = c.Logger
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("pool", c.Label, "node", c.Name)

	cfg, tm := c.Profile.config()
	if c.tune != nil {
		c.tune(cfg, &tm)
	}
	c.tm = tm
	cfg.Name = c.Name
	cfg.Label = c.Label
	cfg.SkipInboundLabelCheck = false
	kr, err := memberlist.NewKeyring(cloneKeys(append([][]byte{c.Key}, c.Keys...)), bytes.Clone(c.Key))
	if err != nil {
		return fmt.Errorf("gossip: keyring: %w", err)
	}
	cfg.Keyring = kr
	c.keyring.Store(kr)
	// Both default to true; set them anyway so that no future default can
	// let unencrypted gossip in or out.
	cfg.GossipVerifyIncoming = true
	cfg.GossipVerifyOutgoing = true
	h := &hooks{c: c}
	cfg.Delegate = h
	cfg.Events = h
	cfg.Merge = h
	cfg.Ping = h
	cfg.DelegateProtocolVersion = 1
	cfg.DelegateProtocolMin = 1
	cfg.DelegateProtocolMax = 1
	mlLog := newMemberlistLogger(c.log, c.markSuspect, &c.bad)
	cfg.Logger = mlLog
	cfg.MetricLabels = c.registerCounters()

	nt, err := bindTransport(bind, mlLog, cfg.MetricLabels)
	if err != nil {
		c.unregisterCounters()
		return fmt.Errorf("gossip: bind %s: %w", c.BindAddr, err)
	}
	cfg.Transport = nt
	if c.wrap != nil {
		cfg.Transport = c.wrap(nt)
	}
	cfg.BindAddr = bind.Addr().String()
	cfg.BindPort = nt.GetAutoBindPort()
	c.addr = net.JoinHostPort(bind.Addr().String(), strconv.Itoa(cfg.BindPort))
	if c.AdvertiseAddr != "" {
		ap, _ := parseIPPort(c.AdvertiseAddr, false)
		cfg.AdvertiseAddr = ap.Addr().String()
		cfg.AdvertisePort = int(ap.Port())
	}

	// Space for one record broadcast in a gossip packet: the packet size
	// less memberlist's compound header, label, AES-GCM overhead (version
	// byte, 12-byte nonce, 16-byte tag) and the user-message framing, with
	// room left for memberlist's own messages. Bigger records travel by
	// request over TCP instead (see state.go).
	c.maxBcast = cfg.UDPBufferSize - 2 - (2 + len(c.Label)) - 29 - 4 - 200
	c.bcast = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(c.nMembers.Load()) },
		RetransmitMult: cfg.RetransmitMult,
	}
	c.nMembers.Store(1)
	// Room for one push/pull state of the largest size memberlist accepts.
	c.box.init(maxStateDecode + 4<<20)
	c.jobs.init(4096)
	c.noteJobs.init(4096)
	c.suspects = make(map[string]bool)
	c.badLog.every = 10 * time.Second
	c.dropLog.every = 10 * time.Second
	c.changed = make(chan struct{}, 1)
	c.notes = make(chan note, noteQueue)
	c.conflict = make(chan struct{}, 1)
	c.joinWake = make(chan struct{}, 1)
	c.boots.ids = make(map[string]uint64)
	for c.bootID == 0 {
		c.bootID = rand.Uint64()
	}
	c.firstJoin = make(chan error, 1)
	c.loopDone = make(chan struct{})
	c.st.init()

	ml, err := memberlist.Create(cfg)
	if err != nil {
		_ = nt.Shutdown()
		c.unregisterCounters()
		return fmt.Errorf("gossip: start memberlist: %w", err)
	}
	c.ml = ml
	self := ml.LocalNode().Address()
	c.selfAddr.Store(&self)
	c.seeds = c.seedList(self)
	if len(c.seeds) == 0 {
		c.joined.Store(true)
	}

	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.publish()
	go c.run(ctx)
	for range senders {
		go c.sendLoop(ctx, &c.jobs)
	}
	for range noteSenders {
		go c.sendLoop(ctx, &c.noteJobs)
	}
	go c.notifyLoop(ctx)
	go c.noteLoop(ctx)
	joinCtx, joinStop := context.WithCancel(ctx)
	c.joinStop = joinStop
	go c.joinLoop(joinCtx)
	if c.self.Load() != nil {
		c.box.put(event{kind: evLocal})
	}
	return nil
}

// seedList drops this node's own address from Join and duplicates.
func (c *Cluster) seedList(self string) []string {
	var out []string
	for _, s := range c.Join {
		if s == self || s == c.addr || slices.Contains(out, s) {
			continue
		}
		out = append(out, s)
	}
	return out
}

// bindTransport binds UDP and TCP on one port. With port 0 the kernel picks
// the TCP port and the UDP bind of the same number can race with another
// process, so that case is retried a few times, as memberlist itself does.
func bindTransport(bind netip.AddrPort, l *log.Logger, labels []metrics.Label) (*memberlist.NetTransport, error) {
	tries := 1
	if bind.Port() == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var nt *memberlist.NetTransport
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs:    []string{bind.Addr().String()},
			BindPort:     int(bind.Port()),
			Logger:       l,
			MetricLabels: labels,
		})
		if err == nil {
			return nt, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, err
}

// Addr returns the bound "ip:port", or "" before Start.
func (c *Cluster) Addr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started {
		return ""
	}
	return c.addr
}

// SetRecord publishes this node's record (copied). Each call gets a new
// version, greater than any earlier one from this node even across
// restarts (unix nanoseconds, bumped past any older version peers still
// hold for this name). It reaches members through a gossip broadcast when
// small, a direct request otherwise, and push/pull anti-entropy in any case.
// It may be called before Start; the record then goes out with the join.
func (c *Cluster) SetRecord(rec []byte) error {
	if len(rec) > MaxRecordSize {
		return fmt.Errorf("gossip: record is %d bytes, limit %d", len(rec), MaxRecordSize)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("gossip: SetRecord after Shutdown")
	}
	c.setLocal(rec, 0)
	if c.started {
		c.box.put(event{kind: evLocal})
	}
	return nil
}

// setLocal stores a new version of this node's record, newer than atLeast.
func (c *Cluster) setLocal(data []byte, atLeast uint64) {
	c.recMu.Lock()
	defer c.recMu.Unlock()
	v := uint64(time.Now().UnixNano())
	v = max(v, c.lastVersion+1, atLeast+1)
	c.lastVersion = v
	if data == nil {
		data = []byte{}
	}
	c.self.Store(&record{version: v, data: bytes.Clone(data)})
}

// Members returns the alive and suspect members, this node included, sorted
// by Name; never dead or departed ones. It returns nil before Start and
// after Leave or Shutdown.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	v := c.view.Load()
	if v == nil || closed {
		return nil
	}
	out := slices.Clone(v.members)
	self := c.self.Load()
	c.susMu.Lock()
	defer c.susMu.Unlock()
	for i := range out {
		if out[i].Name == c.Name {
			if self != nil {
				out[i].Record = self.data
			}
			continue
		}
		out[i].Suspect = c.suspects[out[i].Name]
	}
	return out
}

// Joined reports whether this node has reached its pool: it has no seeds
// (it is the pool's first node), or a seed or a remembered member answered
// a join, or some other member joined it. Once true it stays true: a pool
// that shrinks later is healed by re-joins, not by calling the node
// unready.
func (c *Cluster) Joined() bool { return c.joined.Load() }

// BadPackets counts what the network sent this node that gossip refused:
// packets and streams memberlist could not authenticate, decrypt or decode
// (its log lines that name a source address), and messages of members that
// failed to decode. Log lines about them are rate-limited; this counts all.
func (c *Cluster) BadPackets() uint64 { return c.bad.Load() }

// JoinPeers contacts the given "host:port" addresses now and returns how
// many answered; an error means none did. Start already joins the Join
// field; this is for operators and tests.
func (c *Cluster) JoinPeers(ctx context.Context, addrs ...string) (int, error) {
	c.mu.Lock()
	ok := c.started && !c.closed
	c.mu.Unlock()
	if !ok {
		return 0, errors.New("gossip: JoinPeers on a cluster that is not running")
	}
	if len(addrs) == 0 {
		return 0, errors.New("gossip: JoinPeers: no addresses")
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := c.ml.Join(addrs)
		done <- result{n, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return r.n, fmt.Errorf("gossip: join %v: %w", addrs, r.err)
		}
		return r.n, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("gossip: join %v: %w", addrs, ctx.Err())
	}
}

// Leave tells the pool this node is leaving, waits until that message has
// been gossiped (bounded by ctx, and by 3 s on LAN or 5 s on WAN when ctx
// has no deadline), then shuts down. Peers drop the node at once instead of
// waiting for failure detection. Leave after Shutdown does nothing.
func (c *Cluster) Leave(ctx context.Context) error {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	c.mu.Lock()
	running := c.started && !c.closed
	c.mu.Unlock()
	if !running {
		return nil
	}
	timeout := c.tm.leaveTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	if ctx.Err() != nil || timeout <= 0 {
		timeout = time.Nanosecond
	}
	// No join may bring this node back while it says goodbye.
	c.joinStop()
	err := c.ml.Leave(timeout)
	if serr := c.shutdownLocked(); serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("gossip: leave: %w", err)
	}
	return nil
}

// Shutdown stops the node without telling the pool, as a crash would; peers
// notice by failure detection. It is idempotent. It does not wait for an
// OnChange call in progress, nor for network calls in flight, which end
// within memberlist's TCP timeout.
func (c *Cluster) Shutdown() error {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	return c.shutdownLocked()
}

func (c *Cluster) shutdownLocked() error {
	c.mu.Lock()
	if !c.started || c.closed {
		c.closed = true
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	err := c.ml.Shutdown()
	<-c.loopDone
	c.unregisterCounters()
	if err != nil {
		return fmt.Errorf("gossip: shutdown: %w", err)
	}
	return nil
}

// markSuspect is called from memberlist's logger when a probe by this node
// fails.
func (c *Cluster) markSuspect(name string) {
	if name == c.Name {
		return
	}
	c.susMu.Lock()
	was := c.suspects[name]
	c.suspects[name] = true
	c.susMu.Unlock()
	if !was {
		c.box.put(event{kind: evSuspect})
	}
}

// clearSuspect is called when the member answers a probe or announces
// itself.
func (c *Cluster) clearSuspect(name string) {
	c.susMu.Lock()
	was := c.suspects[name]
	delete(c.suspects, name)
	c.susMu.Unlock()
	if was {
		c.box.put(event{kind: evSuspect})
	}
}

const (
	// noteQueue bounds the notes waiting for OnNote.
	noteQueue = 16
	// noteSenders send notes, apart from the record senders.
	noteSenders = 2
)

// Send queues data for the member named name, sent over TCP by a sender
// goroutine; the member's OnNote receives it. A Send to a member while an
// earlier one to it still waits replaces the earlier data. Delivery is
// best effort: an unknown or unreachable member, or a full queue, loses
// the note (debug log), so callers that need it there repeat (meshd's
// policy sync resends until the member's record says it has it).
func (c *Cluster) Send(name string, data []byte) error {
	if len(data) > MaxNoteSize {
		return fmt.Errorf("gossip: note is %d bytes, limit %d", len(data), MaxNoteSize)
	}
	if name == c.Name {
		return errors.New("gossip: a note to this node itself")
	}
	// The member's address comes from this node's own snapshot: the
	// nodes memberlist's Members returns are its live records, which its
	// packet handler rewrites in place when a member comes back at a new
	// address.
	v := c.view.Load()
	if v == nil || c.ml == nil {
		return errors.New("gossip: not started")
	}
	for _, m := range v.members {
		if m.Name != name {
			continue
		}
		ap, err := netip.ParseAddrPort(m.Addr)
		if err != nil {
			return fmt.Errorf("gossip: member %q at %q: %w", name, m.Addr, err)
		}
		c.noteJobs.add(job{kind: jobNote, to: target{name: m.Name, ip: net.IP(ap.Addr().AsSlice()), port: ap.Port()},
			data: bytes.Clone(data)})
		return nil
	}
	return fmt.Errorf("gossip: no member %q", name)
}

// DroppedNotes counts notes received while noteQueue others waited for
// OnNote.
func (c *Cluster) DroppedNotes() uint64 { return c.noteDrops.Load() }

// deliverNote hands a received note to the OnNote goroutine.
func (c *Cluster) deliverNote(n note) {
	if c.OnNote == nil || n.From == c.Name {
		return
	}
	n.Data = bytes.Clone(n.Data)
	select {
	case c.notes <- n:
	default:
		c.noteDrops.Add(1)
	}
}

// noteLoop is the one goroutine that calls OnNote.
func (c *Cluster) noteLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-c.notes:
			if c.OnNote != nil {
				c.OnNote(n.From, n.Data)
			}
		}
	}
}

// notifyLoop is the one goroutine that calls OnChange.
func (c *Cluster) notifyLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.changed:
		}
		if ctx.Err() != nil {
			return
		}
		if c.OnChange != nil {
			c.OnChange()
		}
	}
}

func checkKey(k []byte) error {
	switch len(k) {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("key of %d bytes, want 16, 24 or 32", len(k))
}

func cloneKeys(ks [][]byte) [][]byte {
	out := make([][]byte, len(ks))
	for i, k := range ks {
		out[i] = bytes.Clone(k)
	}
	return out
}

// Key rotation without a restart, in three steps run on every member of
// the pool (as Consul's keyring): InstallKey the new key everywhere (each
// member then accepts it, still sending with the old one), UseKey it
// everywhere (members send with it; those not yet switched still accept
// it), RemoveKey the old one everywhere. At no step does a member refuse
// what another sends, so the pool never splits.

// InstallKey adds k to the keys the pool accepts.
func (c *Cluster) InstallKey(k []byte) error {
	if err := checkKey(k); err != nil {
		return fmt.Errorf("gossip: %w", err)
	}
	kr := c.keyring.Load()
	if kr == nil {
		return errors.New("gossip: not started")
	}
	return kr.AddKey(bytes.Clone(k))
}

// UseKey makes k, which must be installed, the key messages are sent with.
func (c *Cluster) UseKey(k []byte) error {
	kr := c.keyring.Load()
	if kr == nil {
		return errors.New("gossip: not started")
	}
	for _, have := range kr.GetKeys() {
		if bytes.Equal(have, k) {
			return kr.UseKey(k)
		}
	}
	return errors.New("gossip: the key is not installed: install it on every member first")
}

// RemoveKey stops accepting k. The key in use cannot be removed.
func (c *Cluster) RemoveKey(k []byte) error {
	kr := c.keyring.Load()
	if kr == nil {
		return errors.New("gossip: not started")
	}
	if bytes.Equal(kr.GetPrimaryKey(), k) {
		return errors.New("gossip: the key is in use: use another one first")
	}
	for _, have := range kr.GetKeys() {
		if bytes.Equal(have, k) {
			return kr.RemoveKey(k)
		}
	}
	return errors.New("gossip: the key is not installed")
}

// KeyringKeys returns the key in use and every key accepted (it
// included), nil before Start.
func (c *Cluster) KeyringKeys() (primary []byte, all [][]byte) {
	kr := c.keyring.Load()
	if kr == nil {
		return nil, nil
	}
	return kr.GetPrimaryKey(), kr.GetKeys()
}
