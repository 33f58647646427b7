package mesh

import (
	"math/rand/v2"

	"github.com/meshd/meshd/proxy"
)

// Graded locality failover. An edge sends a service's requests to the
// nearest region that serves it, but not all or nothing: when that region
// degrades (some of its instances fail their health checks, are ejected or
// drain), it keeps the share it can carry and the rest spills to the next
// regions, nearest first, in proportion; when it recovers the traffic
// returns. The rule is Envoy's priority-load computation with its
// overprovisioning factor (default 1.4, the policy's failover.
// overprovisioning): a region whose healthy fraction h is at least 1/1.4
// (≈71%) keeps everything; below that it keeps 1.4·h and the next region
// takes what it can of the rest, with the same rule; when all regions
// together cannot carry 100%, the load is spread in proportion to what each
// can carry. A region with 4 of 10 instances healthy keeps 56%.
//
// The health of a region is what its gateways publish: healthy instances
// out of all the region has (ServiceRecord.Total). An instance that left
// the region pool (a clean leave, or a dead one that gossip has reaped)
// no longer counts in either, so the grade follows instances that fail
// while they are still members: health checks, ejections, drains.

// regionTier is one serving region of a service, as the catalog sees it.
type regionTier struct {
	region         string
	gateways       []*proxy.Upstream
	healthy, total int
	// lastResort (kept on the first tier only): gateways of regions
	// that have nothing but draining instances, tried after all tiers.
	lastResort []*proxy.Upstream
}

// gradedSet spreads a service's requests over its regions by share: a
// request goes to sets[i] for a draw below cum[i]. Each set balances over
// one region's gateways and falls back to every other region, nearest
// first.
type gradedSet struct {
	cum  []float64
	sets []*upstreamSet
}

// DefaultOverprovisioning is the failover factor without a policy (the
// policy package's default too).
const DefaultOverprovisioning = 1.4

// shares is the share of traffic of each tier (nearest first) under
// overprovisioning factor op.
func shares(tiers []regionTier, op float64) []float64 {
	out := make([]float64, len(tiers))
	var sum float64
	for i, t := range tiers {
		h := 1.0
		if t.total > 0 {
			h = float64(t.healthy) / float64(t.total)
		}
		out[i] = min(1, op*h)
		sum += out[i]
	}
	if sum <= 0 {
		out[0] = 1
		return out
	}
	if sum < 1 {
		// Together the regions cannot carry all: each takes its
		// proportion of what they can (Envoy's normalization).
		for i := range out {
			out[i] /= sum
		}
		return out
	}
	left := 1.0
	for i := range out {
		out[i] = min(out[i], left)
		left -= out[i]
	}
	return out
}

// grade computes the graded sets of every service that spills, with the
// overprovisioning factor op(service), DefaultOverprovisioning where op
// is nil or answers 0. A service whose nearest region carries all its
// traffic has no graded set: remote serves it, as before.
func (s *Snapshot) grade(op func(svc string) float64) {
	s.graded = nil
	for svc, tiers := range s.tiers {
		f := DefaultOverprovisioning
		if op != nil {
			if v := op(svc); v > 0 {
				f = v
			}
		}
		sh := shares(tiers, f)
		if sh[0] >= 1 {
			continue
		}
		g := &gradedSet{}
		var acc float64
		for i, t := range tiers {
			if sh[i] <= 0 {
				continue
			}
			rest := make([]*proxy.Upstream, 0, 8)
			for j, o := range tiers {
				if j != i {
					rest = append(rest, o.gateways...)
				}
			}
			rest = append(rest, tiers[0].lastResort...)
			acc += sh[i]
			g.cum = append(g.cum, acc)
			g.sets = append(g.sets, newUpstreamSet(t.gateways, rest))
		}
		g.cum[len(g.cum)-1] = 1 // no draw falls past the last set
		if s.graded == nil {
			s.graded = map[string]*gradedSet{}
		}
		s.graded[svc] = g
	}
}

// remoteFor picks candidates for svc among the regions that serve it:
// by share when the nearest region is degraded, else in the nearest
// region first.
func (s *Snapshot) remoteFor(svc string) []*proxy.Upstream {
	if g := s.graded[svc]; g != nil {
		x := rand.Float64()
		for i, c := range g.cum {
			if x < c {
				return g.sets[i].pick()
			}
		}
	}
	return s.remote[svc].pick()
}
