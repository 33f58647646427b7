package mesh

import (
	"hash/maphash"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/meshd/meshd/mesh/policy"
	"github.com/meshd/meshd/proxy"
)

// Session affinity: a route with affinity (a header or a cookie) sends
// the requests that carry the same value to the same instance, by
// consistent hashing on a ring of the instances' keys (ring hash, as
// Envoy's and Karger's): each instance owns ringPoints points of the
// ring, and a value goes to the owner of the first point at or after its
// hash. When one instance of N leaves, only the values it owned (about 1/N)
// move; the others keep their instance. An ejected owner is passed over
// for the next instance on the ring, so its values come back when it does.
// A request without the header or cookie is balanced as any other.
//
// The ring is built, once, by the first request with affinity that a
// snapshot's set of instances serves, and lives as long as the snapshot.

const ringPoints = 160

// ring is the consistent-hash ring of an upstreamSet's preferred group.
type ring struct {
	hashes []uint64 // sorted
	owner  []int32  // owner[i]: index in the set's preferred group of hashes[i]
}

// ringSeed is fixed for the process's life and the same on every node
// is not needed: a node's ring only decides what this node sends.
var ringSeed = maphash.MakeSeed()

func buildRing(first []*proxy.Upstream) *ring {
	r := &ring{hashes: make([]uint64, 0, len(first)*ringPoints), owner: make([]int32, 0, len(first)*ringPoints)}
	type point struct {
		h uint64
		o int32
	}
	pts := make([]point, 0, len(first)*ringPoints)
	for i, u := range first {
		// Points come from the upstream's key only, so an instance keeps
		// its points whoever else joins or leaves.
		for p := 0; p < ringPoints; p++ {
			pts = append(pts, point{maphash.String(ringSeed, u.Key+"#"+strconv.Itoa(p)), int32(i)})
		}
	}
	sort.Slice(pts, func(a, b int) bool { return pts[a].h < pts[b].h })
	for _, p := range pts {
		r.hashes = append(r.hashes, p.h)
		r.owner = append(r.owner, p.o)
	}
	return r
}

// pickKey is pick for a request with affinity key: the rotation that
// starts at the key's instance on the ring (the next one on the ring that
// is not ejected), others behind it as retry candidates.
func (s *upstreamSet) pickKey(key string, now time.Time) []*proxy.Upstream {
	if s == nil {
		return nil
	}
	if len(s.rot) == 1 || s.lastResort {
		return s.rot[0]
	}
	s.ringOnce.Do(func() {
		first := make([]*proxy.Upstream, len(s.rot))
		for i, r := range s.rot {
			first[i] = r[0]
		}
		s.ring = buildRing(first)
	})
	r := s.ring
	h := maphash.String(ringSeed, key)
	i, _ := slices.BinarySearch(r.hashes, h)
	for n := 0; n < len(r.hashes); n++ {
		o := r.owner[(i+n)%len(r.hashes)]
		if !s.rot[o][0].Ejected(now) {
			return s.rot[o]
		}
	}
	return s.rot[r.owner[i%len(r.hashes)]]
}

// affinityKey is the request's affinity value under a, "" without one.
func affinityKey(a *policy.Affinity, r *http.Request) string {
	if a == nil {
		return ""
	}
	if a.Header != "" {
		if v := r.Header[a.Header]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	if c, err := r.Cookie(a.Cookie); err == nil {
		return c.Value
	}
	return ""
}

// routeLocal is the part of the route that only the hop picking the
// service's instances plays (gateway, or the caller's sidecar in the same
// region): the mirror, and the instance by affinity. It returns nil when
// the request is balanced as any other.
func (n *Node) routeLocal(out *http.Request, s *Snapshot, local *upstreamSet) []*proxy.Upstream {
	rr := routeFrom(out.Context())
	if local == nil || local.lastResort || rr == nil || rr.route == nil {
		return nil
	}
	n.mirror(out, rr, s)
	if k := affinityKey(rr.route.Affinity, out); k != "" {
		return local.pickKey(k, n.now())
	}
	if soft := rr.route.Concurrency.Soft; soft > 0 {
		return local.pickUnder(int64(soft))
	}
	return nil
}

// pickUnder is pick for a service with a soft concurrency limit: when
// the balancer's choice has soft requests or more in flight from this
// node, the first instance below it goes first instead; when every
// instance is at the limit, the balancer's choice stands (the hard limit,
// if any, refuses at the instance).
func (s *upstreamSet) pickUnder(soft int64) []*proxy.Upstream {
	ups := s.pick()
	if len(ups) == 0 || ups[0].InFlight() < soft {
		return ups
	}
	start := rand.IntN(len(s.rot))
	for i := range s.rot {
		r := s.rot[(start+i)%len(s.rot)]
		if r[0].InFlight() < soft {
			return r
		}
	}
	return ups
}
