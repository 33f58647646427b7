package gossip

import (
	"fmt"
	"time"

	"github.com/hashicorp/memberlist"
)

// Profile selects memberlist timings for the kind of network a pool spans.
type Profile int

const (
	// LAN is for a region pool: one datacenter, sub-millisecond RTT.
	LAN Profile = iota
	// WAN is for the global pool: gateways and edges across regions,
	// RTT up to a few hundred milliseconds.
	WAN
)

func (p Profile) String() string {
	switch p {
	case LAN:
		return "lan"
	case WAN:
		return "wan"
	}
	return fmt.Sprintf("Profile(%d)", int(p))
}

// timings are the knobs this package derives from a Profile, in addition to
// memberlist's own Config.
type timings struct {
	// fetchDelay is how long a node waits, after learning from Node.Meta
	// that a peer has a newer record, before asking the owner for it: the
	// record's own broadcast usually arrives within a gossip interval and
	// makes the request unnecessary.
	fetchDelay time.Duration
	// fetchRetry is the pause between repeated requests while still behind.
	fetchRetry time.Duration
	// conflictRetry is the pause between re-joins while peers still hold
	// an older address for this node's name (a restart on a new port).
	conflictRetry time.Duration
	// rejoinMin and rejoinMax bound the backoff between attempts to join
	// a seed that is not a member or a remembered member that is gone
	// (join.go), for rejoinFastFor after it went missing; after that it is
	// tried every rejoinEvery. A remembered member is forgotten once gone
	// for forgetAfter.
	rejoinMin, rejoinMax time.Duration
	rejoinFastFor        time.Duration
	rejoinEvery          time.Duration
	forgetAfter          time.Duration
	// leaveTimeout bounds Leave when its context has no deadline.
	leaveTimeout time.Duration
	// updateTimeout bounds the wait for a meta update to be broadcast.
	updateTimeout time.Duration
	// tick is the period of the state goroutine's housekeeping.
	tick time.Duration
}

// config returns the memberlist configuration of the profile. Security
// settings (key, label, verification) are applied by Start, not here.
//
// Failure detection. A killed node is declared dead after (a) some member
// probes it, (b) the probe fails (ProbeTimeout, then indirect probes until
// ProbeInterval ends), (c) the suspicion timeout runs out, and (d) the "dead"
// message is gossiped. memberlist computes the suspicion timeout as
//
//	min = SuspicionMult * max(1, log10(n)) * ProbeInterval
//	max = SuspicionMaxTimeoutMult * min
//
// starting at max and falling to min as other members independently confirm
// the suspicion (Lifeguard, arXiv:1707.00788 §IV-B); with too few members to
// confirm it starts at min.
//
// LAN keeps memberlist's 1 s probe interval and 500 ms probe timeout but
// lowers SuspicionMult 4→3 and SuspicionMaxTimeoutMult 6→2: for pools up to
// 10 members min=3 s and max=6 s, so the worst case is about 2 s until
// probed + 1 s probe + 6 s suspicion + 0.5 s gossip ≈ 9.5 s, and typically
// 4-6 s, inside the 10 s requirement. memberlist's default (max 24 s) misses it
// whenever confirmations are slow.
//
// WAN: memberlist's WAN default (5 s probes, SuspicionMult 6) needs at least
// 30 s of suspicion alone, so it cannot meet 30 s. We probe every 2 s with a
// 1 s timeout (3x a 300 ms intercontinental RTT, still leaving 1 s for the
// indirect probes) and use SuspicionMult 4 with SuspicionMaxTimeoutMult 2:
// for up to 10 members min=8 s and max=16 s, so the worst case is about 4 s +
// 2 s + 16 s + 1 s ≈ 23 s and typically 12-15 s, 7 s inside the 30 s
// requirement. Probing a few dozen WAN members every 2 s costs a few hundred
// bytes per second per node.
//
// LAN sends its packets uncompressed: memberlist compresses every packet
// with a fresh LZW writer, 64 KiB of garbage per ping and ack, the largest
// source of an idle sidecar's allocations, to save a few bytes on a
// network where bytes are cheap. Receivers decompress whatever is
// compressed whatever their own setting, so mixed pools interoperate. WAN
// keeps compression.
//
// DeadNodeReclaimTime lets a node that restarts with the same name on a new
// address take its name back once the old address has been dead that long
// (memberlist refuses the new address while the old one is alive, so two live
// processes with one name cannot steal it from each other). It is a few
// suspicion timeouts: long enough that a flapping old process is noticed,
// short enough that a restart is visible within seconds.
func (p Profile) config() (*memberlist.Config, timings) {
	switch p {
	case WAN:
		c := memberlist.DefaultWANConfig()
		c.ProbeInterval = 2 * time.Second
		c.ProbeTimeout = time.Second
		c.SuspicionMult = 4
		c.SuspicionMaxTimeoutMult = 2
		c.DeadNodeReclaimTime = 15 * time.Second
		return c, timings{
			fetchDelay:    2 * time.Second,
			fetchRetry:    5 * time.Second,
			conflictRetry: 5 * time.Second,
			rejoinMin:     250 * time.Millisecond,
			rejoinMax:     2 * time.Second,
			rejoinFastFor: 10 * time.Minute,
			rejoinEvery:   30 * time.Second,
			forgetAfter:   72 * time.Hour,
			leaveTimeout:  5 * time.Second,
			updateTimeout: 5 * time.Second,
			tick:          250 * time.Millisecond,
		}
	default:
		c := memberlist.DefaultLANConfig()
		c.EnableCompression = false
		c.SuspicionMult = 3
		c.SuspicionMaxTimeoutMult = 2
		c.DeadNodeReclaimTime = 5 * time.Second
		return c, timings{
			fetchDelay:    500 * time.Millisecond,
			fetchRetry:    2 * time.Second,
			conflictRetry: 2 * time.Second,
			rejoinMin:     100 * time.Millisecond,
			rejoinMax:     time.Second,
			rejoinFastFor: 10 * time.Minute,
			rejoinEvery:   30 * time.Second,
			forgetAfter:   72 * time.Hour,
			leaveTimeout:  3 * time.Second,
			updateTimeout: 2 * time.Second,
			tick:          100 * time.Millisecond,
		}
	}
}
