package gossip

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Record replication.
//
// Every node owns one record with a version (unix nanoseconds at SetRecord,
// strictly increasing, so that a restarted node's records win over its old
// ones). A record travels three ways:
//
//  1. broadcast: when it fits in a gossip packet, the owner queues it on a
//     TransmitLimitedQueue, and every node that learns a newer version queues
//     it again, so it spreads epidemically in O(log n) gossip rounds;
//  2. request: Node.Meta carries the version (memberlist gossips meta
//     changes as alive messages); a node that sees a version newer than the
//     record it holds waits fetchDelay for the broadcast, then asks the
//     owner over TCP, and repeats every fetchRetry while still behind. This
//     is how records too big for a packet travel;
//  3. push/pull: LocalState carries every record a node holds for live
//     members, and MergeRemoteState keeps the newer of each, so any missed
//     message is repaired at the next exchange.
//
// Merging keeps, per name, the highest version. A member that leaves or is
// declared dead loses its record, and a tombstone with the last version seen
// keeps stale copies still in flight from resurrecting it; a new incarnation
// (memberlist's join event for the name) clears the tombstone. Records for
// names not (yet) members are kept for pendingTTL, in case the record raced
// ahead of the join, and are not passed on.

const (
	// senders is the number of goroutines doing TCP sends, so that one
	// unreachable peer (TCPTimeout) does not hold up the others.
	senders    = 4
	pendingTTL = 30 * time.Second
	tombTTL    = 5 * time.Minute
	sweepEvery = 5 * time.Second
	// maxLost bounds the departed members re-joined (join.go).
	maxLost = 256
)

type evKind int

const (
	evMsg     evKind = iota // user message (data)
	evState                 // push/pull state (data)
	evJoin                  // member joined or changed meta (node)
	evLeave                 // member left or died (node)
	evLocal                 // this node's record changed
	evSuspect               // suspect set changed
)

type nodeInfo struct {
	name string
	ip   net.IP
	port uint16
	meta []byte
}

type event struct {
	kind evKind
	data []byte
	node nodeInfo
}

// mailbox is the hand-off from memberlist's goroutines to the state
// goroutine: put never blocks. Data events are dropped once maxBytes are
// pending (gossip repairs the loss later); membership events are never
// dropped, their number being bounded by membership changes.
type mailbox struct {
	mu       sync.Mutex
	q        []event
	bytes    int
	maxBytes int
	ready    chan struct{}
}

func (m *mailbox) init(maxBytes int) {
	m.maxBytes = maxBytes
	m.ready = make(chan struct{}, 1)
}

func (m *mailbox) put(e event) bool {
	m.mu.Lock()
	if len(e.data) > 0 && m.bytes+len(e.data) > m.maxBytes {
		m.mu.Unlock()
		return false
	}
	m.q = append(m.q, e)
	m.bytes += len(e.data)
	m.mu.Unlock()
	select {
	case m.ready <- struct{}{}:
	default:
	}
	return true
}

func (m *mailbox) take() []event {
	m.mu.Lock()
	defer m.mu.Unlock()
	q := m.q
	m.q, m.bytes = nil, 0
	return q
}

func (c *Cluster) post(e event) {
	if !c.box.put(e) {
		if ok, n := c.dropLog.allow(time.Now()); ok {
			c.log.Warn("gossip: state goroutine behind, dropped a message; push/pull will repair", "suppressed", n)
		}
	}
}

type errTooBigT struct{ n, limit int }

func (e errTooBigT) Error() string { return fmt.Sprintf("%d bytes exceeds %d", e.n, e.limit) }

func errTooBig(n, limit int) error { return errTooBigT{n, limit} }

// refuse logs, rate-limited, a message that failed to decode.
func (c *Cluster) refuse(what string, err error) {
	c.bad.Add(1)
	if ok, n := c.badLog.allow(time.Now()); ok {
		c.log.Warn("gossip: refused malformed "+what, "err", err, "suppressed", n)
	}
}

type record struct {
	version uint64
	data    []byte
	at      time.Time // when received
}

type peer struct {
	name    string
	ip      net.IP
	port    uint16
	addr    string
	meta    uint64    // record version the member advertises
	fetchAt time.Time // next request for its record; zero when not behind
}

type tomb struct {
	version uint64
	at      time.Time
}

// known is a member this node has seen alive, remembered so that it can be
// joined again once it is gone (join.go).
type known struct {
	addr   string
	lostAt time.Time // zero while it is a member
}

type lostMember struct {
	name, addr string
}

// state is owned by the state goroutine; nothing else touches it.
type state struct {
	peers     map[string]*peer
	records   map[string]*record
	tombs     map[string]tomb
	known     map[string]*known
	dirty     bool
	lastSweep time.Time
}

func (s *state) init() {
	s.peers = make(map[string]*peer)
	s.records = make(map[string]*record)
	s.tombs = make(map[string]tomb)
	s.known = make(map[string]*known)
}

func (s *state) version(name string) uint64 {
	if r := s.records[name]; r != nil {
		return r.version
	}
	return 0
}

// view is the immutable snapshot readers use (Members, LocalState).
type view struct {
	members []Member // sorted by Name, self included (record filled by Members)
	live    []entry  // records of live members other than self
	// lost are remembered members that are gone, at addresses no member
	// uses.
	lost []lostMember
}

// run is the state goroutine.
func (c *Cluster) run(ctx context.Context) {
	defer close(c.loopDone)
	t := time.NewTicker(c.tm.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.box.ready:
			now := time.Now()
			for _, e := range c.box.take() {
				c.handle(e, now)
			}
		case now := <-t.C:
			c.housekeep(now)
		}
		if c.st.dirty {
			c.st.dirty = false
			c.publish()
			select {
			case c.changed <- struct{}{}:
			default:
			}
			c.wakeJoin()
		}
	}
}

func (c *Cluster) handle(e event, now time.Time) {
	s := &c.st
	switch e.kind {
	case evMsg:
		m, err := decodeMessage(e.data)
		if err != nil {
			c.refuse("message", err)
			return
		}
		switch m.Kind {
		case kindRecord:
			c.apply(m.Record, now, e.data)
		case kindWant:
			if m.Want.Name != c.Name {
				return
			}
			if p := s.peers[m.Want.From]; p != nil {
				c.jobs.add(job{kind: jobRecord, to: p.target()})
			}
		case kindNote:
			c.deliverNote(m.Note)
		}
	case evState:
		entries, err := decodeState(e.data)
		if err != nil {
			c.refuse("state", err)
			return
		}
		for _, en := range entries {
			c.apply(en, now, nil)
		}
	case evJoin:
		n := e.node
		if n.name == c.Name {
			return
		}
		meta, err := decodeMeta(n.meta)
		if err != nil {
			c.refuse("meta of "+n.name, err)
		}
		p := s.peers[n.name]
		if p == nil {
			p = &peer{name: n.name}
			s.peers[n.name] = p
			c.nMembers.Store(int32(len(s.peers) + 1))
		}
		p.ip, p.port, p.meta = n.ip, n.port, meta
		p.addr = net.JoinHostPort(n.ip.String(), itoa(n.port))
		delete(s.tombs, n.name)
		s.known[n.name] = &known{addr: p.addr}
		c.joined.Store(true)
		// A tombstone may have kept a record of this incarnation out; a
		// pending record of a name not yet known becomes live now.
		c.checkBehind(p, now)
		c.clearSuspect(n.name)
		s.dirty = true
	case evLeave:
		n := e.node
		if n.name == c.Name {
			return
		}
		v := s.version(n.name)
		if p := s.peers[n.name]; p != nil {
			v = max(v, p.meta)
		}
		if v > 0 {
			s.tombs[n.name] = tomb{version: v, at: now}
		}
		delete(s.peers, n.name)
		delete(s.records, n.name)
		if k := s.known[n.name]; k != nil {
			k.lostAt = now
		}
		c.nMembers.Store(int32(len(s.peers) + 1))
		c.clearSuspect(n.name)
		c.forgetBoot(n.name)
		s.dirty = true
	case evLocal:
		r := c.self.Load()
		if r == nil {
			return
		}
		msg := encodeRecord(entry{Name: c.Name, Version: r.version, Data: r.data})
		c.queueBroadcast(c.Name, msg)
		c.jobs.add(job{kind: jobUpdate})
		s.dirty = true
	case evSuspect:
		s.dirty = true
	}
}

// apply merges one received record. msg, if not nil, is the message it came
// in, to be passed on as a broadcast.
func (c *Cluster) apply(e entry, now time.Time, msg []byte) {
	s := &c.st
	if e.Name == c.Name {
		// A copy of our own record from before a restart that is newer
		// than ours (the clock went back), or as new but different:
		// publish ours again above it, so that it replaces the old one
		// everywhere. Our own record echoed back is equal and ignored.
		if r := c.self.Load(); r != nil && (e.Version > r.version ||
			e.Version == r.version && !bytes.Equal(e.Data, r.data)) {
			c.setLocal(r.data, e.Version)
			c.handle(event{kind: evLocal}, now)
		}
		return
	}
	if t, ok := s.tombs[e.Name]; ok && e.Version <= t.version {
		return
	}
	if e.Version <= s.version(e.Name) {
		return
	}
	s.records[e.Name] = &record{version: e.Version, data: bytes.Clone(e.Data), at: now}
	p := s.peers[e.Name]
	if p == nil {
		return // pending until the member joins
	}
	c.checkBehind(p, now)
	s.dirty = true
	if msg != nil {
		c.queueBroadcast(e.Name, msg)
	}
}

// checkBehind schedules or cancels a request for p's record.
func (c *Cluster) checkBehind(p *peer, now time.Time) {
	if p.meta > c.st.version(p.name) {
		if p.fetchAt.IsZero() {
			p.fetchAt = now.Add(c.tm.fetchDelay)
		}
		return
	}
	p.fetchAt = time.Time{}
}

func (c *Cluster) queueBroadcast(name string, msg []byte) {
	if len(msg) > c.maxBcast {
		return
	}
	c.bcast.QueueBroadcast(&recordBroadcast{name: name, msg: msg})
}

func (c *Cluster) housekeep(now time.Time) {
	s := &c.st
	for _, p := range s.peers {
		if p.fetchAt.IsZero() || now.Before(p.fetchAt) {
			continue
		}
		if p.meta <= s.version(p.name) {
			p.fetchAt = time.Time{}
			continue
		}
		c.jobs.add(job{kind: jobWant, to: p.target(), have: s.version(p.name)})
		p.fetchAt = now.Add(c.tm.fetchRetry)
	}
	if now.Sub(s.lastSweep) < sweepEvery {
		return
	}
	s.lastSweep = now
	for name, r := range s.records {
		if s.peers[name] == nil && now.Sub(r.at) > pendingTTL {
			delete(s.records, name)
		}
	}
	for name, t := range s.tombs {
		if now.Sub(t.at) > tombTTL {
			delete(s.tombs, name)
		}
	}
	inUse := map[string]bool{}
	for _, p := range s.peers {
		inUse[p.addr] = true
	}
	var lost []string
	for name, k := range s.known {
		if k.lostAt.IsZero() {
			continue
		}
		// Forget a member gone for forgetAfter, or whose address another
		// member now uses (it was replaced).
		if now.Sub(k.lostAt) > c.tm.forgetAfter || inUse[k.addr] {
			delete(s.known, name)
			s.dirty = true
			continue
		}
		lost = append(lost, name)
	}
	// In a pool with churn, keep trying only the most recently lost.
	if len(lost) > maxLost {
		slices.SortFunc(lost, func(a, b string) int { return s.known[b].lostAt.Compare(s.known[a].lostAt) })
		for _, name := range lost[maxLost:] {
			delete(s.known, name)
		}
		s.dirty = true
	}
}

// publish builds a new view from the state; called only by the state
// goroutine (and by start before it runs).
func (c *Cluster) publish() {
	s := &c.st
	v := &view{
		members: make([]Member, 0, len(s.peers)+1),
		live:    make([]entry, 0, len(s.records)),
	}
	if self := c.selfAddr.Load(); self != nil {
		v.members = append(v.members, Member{Name: c.Name, Addr: *self})
	}
	for name, p := range s.peers {
		m := Member{Name: name, Addr: p.addr}
		if r := s.records[name]; r != nil {
			m.Record = r.data
			v.live = append(v.live, entry{Name: name, Version: r.version, Data: r.data})
		}
		v.members = append(v.members, m)
	}
	self := c.selfAddr.Load()
	for name, k := range s.known {
		if !k.lostAt.IsZero() && (self == nil || k.addr != *self) {
			v.lost = append(v.lost, lostMember{name: name, addr: k.addr})
		}
	}
	slices.SortFunc(v.members, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	c.view.Store(v)
}

// recordBroadcast is one record on the broadcast queue; a newer record of
// the same node replaces it.
type recordBroadcast struct {
	name string
	msg  []byte
}

var _ memberlist.NamedBroadcast = (*recordBroadcast)(nil)

func (b *recordBroadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(*recordBroadcast)
	return ok && o.name == b.name
}

// Name makes the queue replace an older broadcast of the same node's record.
func (b *recordBroadcast) Name() string { return "record/" + b.name }

func (b *recordBroadcast) Message() []byte { return b.msg }

func (b *recordBroadcast) Finished() {}
