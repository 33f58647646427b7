package gossip

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Joining and re-joining.
//
// A pool heals itself from this node's side, as Consul's retry_join and
// its reconnection of known members do:
//
//   - until a seed answers, every seed is tried, with backoff;
//   - afterwards, a seed that is not a member (its address is not a member's
//     address) is tried again, with backoff;
//   - every member seen alive is remembered by name and address; once it is
//     gone (left or declared dead), its address is tried, with backoff,
//     until the name is back, another member holds the address, or
//     forgetAfter has passed (at most maxLost such members are kept, the
//     most recently lost);
//   - a member whose probe acks carry a new boot identifier has restarted
//     at the same address faster than failure detection noticed; it knows
//     nobody (a first node has no seeds), so it is joined at once.
//
// Backoff starts at rejoinMin and doubles up to rejoinMax (1 s on LAN, 2 s
// on WAN) for rejoinFastFor after a target went missing, then it is tried
// every rejoinEvery. Each address is tried on its own goroutine, at most
// one attempt at a time, so that an unreachable host (a TCP timeout) does
// not delay the others.
//
// A join is a push/pull with the target. When the target is a restarted
// member, the peers still hold its old incarnation as left or dead, and
// ignore the new process's alive message (same name, lower incarnation);
// the push/pull hands the target that old state, memberlist on the target
// refutes it with a higher incarnation, and its alive message then
// replaces the old state everywhere. So a node restarted with the same
// name and address is a member again within one backoff step plus a
// gossip round.

// joinTarget is one address to join.
type joinTarget struct {
	addr string
	seed bool
	// resolve: a seed given by host name, checked against the members'
	// addresses after resolving it (once joined), instead of joined blindly.
	resolve bool
	// conflict: a re-join because peers hold an older address for our
	// name; addrs are then several.
	conflict bool
	addrs    []string
}

type joinResult struct {
	key     string
	t       joinTarget
	present bool // a host name seed that resolves to a member: nothing to do
	round   int64
	n       int
	err     error
}

type retry struct {
	next  time.Time
	delay time.Duration
	since time.Time // when the target went missing
	busy  bool
}

const conflictKey = "\x00conflict"

// joinLoop makes the first join attempt for Start, then keeps every seed
// and every remembered member in the pool (see above), and re-joins while
// peers still hold an old address for our name.
func (c *Cluster) joinLoop(ctx context.Context) {
	firstPending := len(c.seeds) > 0
	firstSeen := map[string]bool{}
	var firstErr error
	tries := map[string]*retry{}
	results := make(chan joinResult, 16)
	var conflictSince time.Time
	tick := time.NewTicker(c.tm.tick)
	defer tick.Stop()
	for {
		now := time.Now()
		want := c.joinTargets()
		if at := c.conflictAt.Load(); at != 0 && c.joined.Load() {
			if conflictSince.IsZero() {
				conflictSince = now
				c.log.Info("gossip: peers still know this name at an older address; re-joining until they accept the new one")
			}
			// Give up after tombTTL: then the other process is alive
			// and it is a configuration error, which memberlist logs.
			if now.Sub(conflictSince) < tombTTL {
				want[conflictKey] = joinTarget{conflict: true}
				if tries[conflictKey] == nil {
					// The join that found the conflict just ran.
					tries[conflictKey] = &retry{next: now.Add(c.tm.conflictRetry)}
				}
			}
		} else {
			conflictSince = time.Time{}
		}
		for _, addr := range c.takeRestarted() {
			if _, ok := want[addr]; !ok {
				want[addr] = joinTarget{addr: addr}
			}
			if r := tries[addr]; r != nil {
				r.next = now
			}
		}
		for k, r := range tries {
			if _, ok := want[k]; !ok && !r.busy {
				delete(tries, k)
			}
		}
		for k, t := range want {
			r := tries[k]
			if r == nil {
				r = &retry{since: now}
				tries[k] = r
			}
			if r.busy || now.Before(r.next) {
				continue
			}
			r.busy = true
			if t.conflict {
				t.addrs = c.conflictTargets()
			} else {
				t.addrs = []string{t.addr}
			}
			go c.attempt(ctx, k, t, results)
		}

		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-c.joinWake:
		case <-c.conflict:
		case res := <-results:
			now = time.Now()
			r := tries[res.key]
			r.busy = false
			ok := res.err == nil && res.n > 0
			if ok {
				c.joined.Store(true)
			}
			if firstPending && res.t.seed && !firstSeen[res.key] {
				firstSeen[res.key] = true
				if res.err != nil {
					firstErr = res.err
				}
				if ok || len(firstSeen) == len(c.seeds) {
					if ok {
						firstErr = nil
					}
					c.firstJoin <- firstErr
					firstPending = false
				}
			}
			switch {
			case res.t.conflict:
				if ok && c.conflictAt.Load() < res.round {
					c.conflictAt.Store(0)
					c.log.Info("gossip: peers accepted the new address")
				}
				r.next = now.Add(c.tm.conflictRetry)
			case res.present:
				r.delay = 0
				r.next = now.Add(c.tm.rejoinEvery)
			case ok:
				// The target's members are merged and it should be a
				// member within a gossip round. If it stays a target (a
				// seed given by an address other than the one it
				// advertises, behind NAT), each join is a full state
				// exchange: back off from rejoinMax to rejoinEvery.
				r.delay = min(max(2*r.delay, c.tm.rejoinMax), c.tm.rejoinEvery)
				r.next = now.Add(r.delay)
			default:
				c.log.Debug("gossip: join failed; will retry", "addrs", res.t.addrs, "err", res.err)
				r.delay = min(max(2*r.delay, c.tm.rejoinMin), c.rejoinCap(r, now))
				r.next = now.Add(r.delay)
			}
		}
	}
}

// rejoinCap is the longest pause between two attempts at a target missing
// since r.since.
func (c *Cluster) rejoinCap(r *retry, now time.Time) time.Duration {
	if now.Sub(r.since) < c.tm.rejoinFastFor {
		return c.tm.rejoinMax
	}
	return c.tm.rejoinEvery
}

// attempt runs one join and reports it.
func (c *Cluster) attempt(ctx context.Context, key string, t joinTarget, out chan<- joinResult) {
	res := joinResult{key: key, t: t, round: time.Now().UnixNano()}
	if t.resolve && c.resolvesToMember(ctx, t.addr) {
		res.present = true
	} else {
		res.n, res.err = c.ml.Join(t.addrs)
	}
	select {
	case out <- res:
	case <-ctx.Done():
	}
}

// joinTargets lists what to join now, keyed by address: seeds until one
// answers, then seeds that are not members, and remembered members that
// are gone.
func (c *Cluster) joinTargets() map[string]joinTarget {
	out := map[string]joinTarget{}
	v := c.view.Load()
	addrs := map[string]bool{}
	if v != nil {
		for _, m := range v.members {
			addrs[m.Addr] = true
		}
	}
	joined := c.joined.Load()
	for _, s := range c.seeds {
		ap, err := netip.ParseAddrPort(s)
		switch {
		case !joined:
			out[s] = joinTarget{addr: s, seed: true}
		case err != nil:
			out[s] = joinTarget{addr: s, seed: true, resolve: true}
		case !addrs[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()]:
			out[s] = joinTarget{addr: s, seed: true}
		}
	}
	if v != nil {
		for _, l := range v.lost {
			if _, ok := out[l.addr]; !ok && !addrs[l.addr] {
				out[l.addr] = joinTarget{addr: l.addr}
			}
		}
	}
	return out
}

// resolvesToMember reports whether host:port resolves to a member's
// address; on a lookup error it reports false, so the seed is joined.
func (c *Cluster) resolvesToMember(ctx context.Context, hostport string) bool {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return false
	}
	v := c.view.Load()
	if v == nil {
		return false
	}
	for _, ip := range ips {
		a := net.JoinHostPort(ip.Unmap().String(), port)
		for _, m := range v.members {
			if m.Addr == a {
				return true
			}
		}
	}
	return false
}

// conflictTargets is the seeds and a few random members: enough to reach
// the peers that still hold our old address without contacting a whole
// large pool every round.
func (c *Cluster) conflictTargets() []string {
	out := append([]string(nil), c.seeds...)
	var others []string
	if v := c.view.Load(); v != nil {
		for _, m := range v.members {
			if m.Name != c.Name {
				others = append(others, m.Addr)
			}
		}
	}
	rand.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
	return append(out, others[:min(4, len(others))]...)
}

// wakeJoin tells the join goroutine that membership changed.
func (c *Cluster) wakeJoin() {
	select {
	case c.joinWake <- struct{}{}:
	default:
	}
}

// boots tracks the boot identifier each member's probe acks carry: a new
// one at the same name means the member restarted.
type boots struct {
	mu        sync.Mutex
	ids       map[string]uint64
	restarted []string // addresses to join at once
}

// bootPayload is this process's boot identifier, sent in every probe ack.
func (c *Cluster) bootPayload() []byte {
	return binary.BigEndian.AppendUint64(nil, c.bootID)
}

// noteBoot is called with a member's ack payload (on memberlist's probe
// goroutine: it only records).
func (c *Cluster) noteBoot(name, addr string, payload []byte) {
	if len(payload) != 8 || name == c.Name {
		return
	}
	id := binary.BigEndian.Uint64(payload)
	b := &c.boots
	b.mu.Lock()
	old, seen := b.ids[name]
	b.ids[name] = id
	changed := seen && old != id
	if changed && len(b.restarted) < 64 {
		b.restarted = append(b.restarted, addr)
	}
	b.mu.Unlock()
	if changed {
		c.log.Info("gossip: member restarted without being noticed; joining it", "member", name, "addr", addr)
		c.wakeJoin()
	}
}

// forgetBoot drops a departed member's boot identifier.
func (c *Cluster) forgetBoot(name string) {
	c.boots.mu.Lock()
	delete(c.boots.ids, name)
	c.boots.mu.Unlock()
}

func (c *Cluster) takeRestarted() []string {
	c.boots.mu.Lock()
	defer c.boots.mu.Unlock()
	r := c.boots.restarted
	c.boots.restarted = nil
	return r
}
