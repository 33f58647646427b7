package mesh

import (
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/meshd/meshd/proxy"
)

// Snapshot is the node's immutable view of the mesh, rebuilt on every
// gossip change and read without locks by the request path.
type Snapshot struct {
	// local: service → ready, healthy instances in the node's own region
	// (region pool; gateways and sidecars).
	local map[string]*upstreamSet
	// subsets: service → subset label (--subset) → its ready, healthy
	// instances in the node's own region, what a route's split or rule
	// picks from. Instances without a label are in no subset.
	subsets map[string]map[string]*upstreamSet
	// gateways: ready gateways of the node's own region (region pool; what a
	// sidecar sends to when the callee is not in its region).
	gateways *upstreamSet
	// remote: service → gateways of the regions that have healthy instances,
	// nearest region first (global pool; edges and gateways). For a gateway
	// its own region is left out: those calls are served locally.
	remote map[string]*upstreamSet
	// tiers: service → its serving regions nearest first, with their
	// health, what grade spreads over when the nearest region degrades
	// (see failover.go); graded: the result, for services that spill.
	tiers  map[string][]regionTier
	graded map[string]*gradedSet
	// byRegion: service → region → that region's serving gateways, for a
	// request an app asked to replay in a given region (replay.go).
	byRegion map[string]map[string]*upstreamSet
	// meshWide: service → healthy instances mesh-wide, as the region's
	// gateways publish it for globally limited services (region pool);
	// edges: the ready edges of the global pool. Both for a global rate
	// limit's share (limits.go).
	meshWide map[string]int
	edges    int
	// known: every service name anybody publishes, healthy or not, so that
	// "nobody runs this" (404) and "nothing healthy now" (503) differ.
	known map[string]bool
	// domains: public host name → service, the owner the node's nameBook
	// chose among the claims (see domains.go); a refused claim is not here.
	domains map[string]string
	// claims: every claim on a public host name the records make, the
	// nameBook's input.
	claims domainClaims
	// down: services with no healthy instance the node can see, and those
	// that left the mesh less than --service-tombstone ago, with what the
	// node remembers of their last healthy instances.
	down map[string]*serviceDown
	// Conflicts are the refused claims on public host names.
	Conflicts []DomainConflict

	// probeTargets are the mesh addresses of the global pool's ready
	// gateways, which edges and gateways probe for reachability and RTT.
	probeTargets []string

	// Members and Services are what the admin API shows.
	Members  []MemberInfo
	Services []ServiceInfo
}

// MemberInfo is one member of a pool as the admin API shows it.
type MemberInfo struct {
	Pool     string          `json:"pool"`
	Name     string          `json:"name"`
	Role     string          `json:"role,omitempty"`
	Region   string          `json:"region,omitempty"`
	Gossip   string          `json:"gossip"`
	MeshAddr string          `json:"addr,omitempty"`
	State    string          `json:"state"`
	Suspect  bool            `json:"suspect,omitempty"`
	Services []ServiceRecord `json:"services,omitempty"`
	Roots    []string        `json:"roots,omitempty"`     // fingerprints of the roots it trusts
	SVIDRoot string          `json:"svid_root,omitempty"` // the root its SVID chains to
	// PeerRoots: the roots that signed the other records it believes.
	PeerRoots []string `json:"peer_roots,omitempty"`
}

// ServiceInfo is one service in one region as the node sees it.
type ServiceInfo struct {
	Service   string   `json:"service"`
	Region    string   `json:"region"`
	Healthy   int      `json:"healthy"`
	Draining  int      `json:"draining,omitempty"` // healthy instances that are draining
	Instances []string `json:"instances,omitempty"`
	// Subsets counts the healthy instances per subset label.
	Subsets  map[string]int `json:"subsets,omitempty"`
	Gateways []string       `json:"gateways,omitempty"`
	Domains  []string       `json:"domains,omitempty"`
}

// upstreamSet holds candidates in preference order: every rotation of the
// preferred group (the nearest region's gateways, or the region's
// instances), each followed by the fallbacks, precomputed so that picking
// one costs no allocation.
type upstreamSet struct {
	rot [][]*proxy.Upstream
	// lastResort marks a set without a preferred group: only draining
	// members (or regions with nothing but draining instances), which
	// still serve but should get a request only when nothing else can.
	lastResort bool
	// ring is the consistent-hash ring of the preferred group, built on
	// the first request with affinity (affinity.go).
	ringOnce sync.Once
	ring     *ring
}

// newUpstreamSet makes a set where requests are balanced over first and
// fall back to rest in order. Without first, rest is tried in order and
// the set is a last resort.
func newUpstreamSet(first, rest []*proxy.Upstream) *upstreamSet {
	s := &upstreamSet{}
	if len(first) == 0 {
		if len(rest) == 0 {
			return nil
		}
		s.rot = [][]*proxy.Upstream{rest}
		s.lastResort = true
		return s
	}
	for i := range first {
		r := make([]*proxy.Upstream, 0, len(first)+len(rest))
		r = append(r, first[i:]...)
		r = append(r, first[:i]...)
		r = append(r, rest...)
		s.rot = append(s.rot, r)
	}
	return s
}

// pickFirst picks from the first of sets that has a preferred group, or
// failing that from the first that has any candidate (draining members):
// every member that is not draining, in whichever set, goes before any
// that is.
func pickFirst(sets ...*upstreamSet) []*proxy.Upstream {
	for _, s := range sets {
		if s != nil && !s.lastResort {
			return s.pick()
		}
	}
	for _, s := range sets {
		if s != nil {
			return s.pick()
		}
	}
	return nil
}

// load is what the balancer compares at now: peak-EWMA latency times
// requests in flight (proxy.Upstream.CostAt), so a slow instance and a busy
// one both get fewer requests; an ejected upstream (it could not be reached
// several times in a row) after any other.
func load(u *proxy.Upstream, now time.Time) int64 {
	if u.Ejected(now) {
		return 1 << 62
	}
	return u.CostAt(now)
}

func (s *upstreamSet) pick() []*proxy.Upstream { return s.pickBy(load, time.Now()) }

// pickBy balances by the power of two choices: of two distinct random
// members of the preferred group, the less loaded one goes first, the
// others stay behind it as retry candidates. Two random choices spread
// load almost as well as scanning for the least loaded, cost two atomic
// loads, and do not make every node herd onto the same "least loaded"
// instance (Mitzenmacher, "The Power of Two Choices"). The one passed over
// is told so (proxy.Upstream.PassedOver): its latency estimate ages, so an
// instance that answered slowly once is measured again soon instead of
// never.
func (s *upstreamSet) pickBy(load func(*proxy.Upstream, time.Time) int64, now time.Time) []*proxy.Upstream {
	if s == nil {
		return nil
	}
	n := len(s.rot)
	if n == 1 {
		return s.rot[0]
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	if load(s.rot[j][0], now) < load(s.rot[i][0], now) {
		i, j = j, i
	}
	s.rot[j][0].PassedOver(now)
	return s.rot[i]
}

// member is a decoded gossip member as the catalog builder uses it.
type member struct {
	gossipAddr string
	suspect    bool
	rec        *NodeRecord
}

// upstreamMaker builds (or reuses) the proxy.Upstream for a peer, with the
// mTLS config that verifies the SPIFFE ID the catalog expects of it.
type upstreamMaker interface {
	instanceUpstream(service string, m *NodeRecord) *proxy.Upstream
	gatewayUpstream(m *NodeRecord) *proxy.Upstream
}

// buildSnapshot folds the decoded members of the region pool (lan) and of
// the global pool (wan) into a Snapshot for a node of region self.
//
// probe, when not nil, holds reachability and RTT of the global pool's
// gateways: a gateway known to be down is left out, and regions are
// ordered nearest first by measured RTT, the node's own region first while
// it has a reachable gateway.
func buildSnapshot(selfRole, selfRegion string, lan, wan []member, mk upstreamMaker, probe *prober) *Snapshot {
	s := &Snapshot{
		local:    map[string]*upstreamSet{},
		subsets:  map[string]map[string]*upstreamSet{},
		remote:   map[string]*upstreamSet{},
		tiers:    map[string][]regionTier{},
		byRegion: map[string]map[string]*upstreamSet{},
		known:    map[string]bool{},
		domains:  map[string]string{},
		claims:   domainClaims{},
	}
	type svcRegion struct{ svc, region string }
	infos := map[svcRegion]*ServiceInfo{}
	info := func(svc, region string) *ServiceInfo {
		k := svcRegion{svc, region}
		if infos[k] == nil {
			infos[k] = &ServiceInfo{Service: svc, Region: region}
		}
		return infos[k]
	}
	// Claims are only collected here; which one owns a host name is the
	// node's decision, from what it remembers (nameBook.apply).
	addDomains := func(svc string, r *NodeRecord, sv ServiceRecord) {
		s.claims.add(svc, r.Name, sv.Since, sv.Domains)
	}

	// Region pool: instances and the region's own gateways; draining ones
	// apart, as last resorts.
	instances, drainingInstances := map[string][]*proxy.Upstream{}, map[string][]*proxy.Upstream{}
	type svcSubset struct{ svc, subset string }
	bySubset, drainingBySubset := map[svcSubset][]*proxy.Upstream{}, map[svcSubset][]*proxy.Upstream{}
	var gws, drainingGWs []*proxy.Upstream
	for _, m := range lan {
		r := m.rec
		s.Members = append(s.Members, memberInfo("region", m))
		if r.Region != selfRegion {
			continue // a region pool holds one region; ignore strays
		}
		ready := r.State == StateReady
		switch r.Role {
		case RoleSidecar:
			for _, sv := range r.Services {
				s.known[sv.Name] = true
				addDomains(sv.Name, r, sv)
				in := info(sv.Name, r.Region)
				in.Domains = mergeSorted(in.Domains, sv.Domains)
				if sv.Healthy == 0 {
					continue
				}
				u := mk.instanceUpstream(sv.Name, r)
				sub := svcSubset{sv.Name, sv.Subset}
				if !ready {
					in.Draining++
					if u != nil {
						drainingInstances[sv.Name] = append(drainingInstances[sv.Name], u)
						if sv.Subset != "" {
							drainingBySubset[sub] = append(drainingBySubset[sub], u)
						}
					}
					continue
				}
				in.Healthy++
				in.Instances = append(in.Instances, r.Name)
				if sv.Subset != "" {
					if in.Subsets == nil {
						in.Subsets = map[string]int{}
					}
					in.Subsets[sv.Subset]++
				}
				if u != nil {
					instances[sv.Name] = append(instances[sv.Name], u)
					if sv.Subset != "" {
						bySubset[sub] = append(bySubset[sub], u)
					}
				}
			}
		case RoleGateway:
			for svc, c := range r.Global {
				if s.meshWide == nil {
					s.meshWide = map[string]int{}
				}
				s.meshWide[svc] = max(s.meshWide[svc], c)
			}
			if u := mk.gatewayUpstream(r); u != nil {
				if ready {
					gws = append(gws, u)
				} else {
					drainingGWs = append(drainingGWs, u)
				}
			}
		}
	}
	for svc, ups := range instances {
		s.local[svc] = newUpstreamSet(ups, drainingInstances[svc])
	}
	for svc, ups := range drainingInstances {
		if s.local[svc] == nil {
			s.local[svc] = newUpstreamSet(nil, ups)
		}
	}
	for k := range drainingBySubset {
		if _, ok := bySubset[k]; !ok {
			bySubset[k] = nil // draining instances only: a last resort
		}
	}
	for k, ups := range bySubset {
		if s.subsets[k.svc] == nil {
			s.subsets[k.svc] = map[string]*upstreamSet{}
		}
		s.subsets[k.svc][k.subset] = newUpstreamSet(ups, drainingBySubset[k])
	}
	s.gateways = newUpstreamSet(gws, drainingGWs)

	// Global pool: per region, the services its gateways summarize. A
	// gateway is a candidate for the services its record says its region
	// serves; a draining gateway, and one whose region has nothing but
	// draining instances of the service, only as a last resort.
	type regionGWs struct {
		serving, lastResort []*proxy.Upstream
		healthy, total      int // instances, as the region's gateways summarize them
	}
	regionRTT := map[string]time.Duration{} // best measured RTT; 0 = not measured
	svcRegions := map[string]map[string]*regionGWs{}
	addGW := func(svc, region string, u *proxy.Upstream, lastResort bool) {
		if svcRegions[svc] == nil {
			svcRegions[svc] = map[string]*regionGWs{}
		}
		g := svcRegions[svc][region]
		if g == nil {
			g = &regionGWs{}
			svcRegions[svc][region] = g
		}
		if u == nil {
			return
		}
		if lastResort {
			g.lastResort = append(g.lastResort, u)
		} else {
			g.serving = append(g.serving, u)
		}
	}
	for _, m := range wan {
		r := m.rec
		s.Members = append(s.Members, memberInfo("global", m))
		if r.Role == RoleEdge && r.State == StateReady {
			s.edges++
		}
		if r.Role != RoleGateway {
			continue
		}
		// A gateway's own region is served from the region pool, which
		// has the instance-level truth.
		own := selfRole == RoleGateway && r.Region == selfRegion
		ready := r.State == StateReady
		var u *proxy.Upstream
		if !own {
			s.probeTargets = append(s.probeTargets, r.MeshAddr)
			if res, known := probe.get(r.MeshAddr); !known || res.up {
				u = mk.gatewayUpstream(r)
				if u != nil && known && (regionRTT[r.Region] == 0 || res.rtt < regionRTT[r.Region]) {
					regionRTT[r.Region] = res.rtt
				}
			}
		}
		for _, sv := range r.Services {
			s.known[sv.Name] = true
			if own {
				continue
			}
			addDomains(sv.Name, r, sv)
			in := info(sv.Name, r.Region)
			in.Domains = mergeSorted(in.Domains, sv.Domains)
			if ready {
				in.Gateways = append(in.Gateways, r.Name)
				in.Healthy = max(in.Healthy, sv.Healthy)
				in.Draining = max(in.Draining, sv.Draining)
			}
			switch {
			case u == nil:
			case ready && sv.Healthy > 0:
				addGW(sv.Name, r.Region, u, false)
				g := svcRegions[sv.Name][r.Region]
				g.healthy = max(g.healthy, sv.Healthy)
				g.total = max(g.total, sv.Total, sv.Healthy)
			case sv.Healthy > 0 || sv.Draining > 0:
				addGW(sv.Name, r.Region, u, true)
			}
		}
	}
	for svc, regions := range svcRegions {
		order := make([]string, 0, len(regions))
		for reg := range regions {
			order = append(order, reg)
		}
		// Nearest first: the node's own region, then the others by
		// measured RTT (unmeasured last), then by name.
		sort.Slice(order, func(i, j int) bool {
			a, b := order[i], order[j]
			if (a == selfRegion) != (b == selfRegion) {
				return a == selfRegion
			}
			ra, rb := regionRTT[a], regionRTT[b]
			if (ra == 0) != (rb == 0) {
				return rb == 0
			}
			if ra != rb {
				return ra < rb
			}
			return a < b
		})
		// Balanced over the nearest serving region's gateways; then the
		// other serving regions in order; then the last resorts, nearest
		// first.
		var first, rest, lastResort []*proxy.Upstream
		var tiers []regionTier
		for _, reg := range order {
			g := regions[reg]
			if len(g.serving) > 0 {
				tiers = append(tiers, regionTier{region: reg, gateways: g.serving, healthy: g.healthy, total: g.total})
				if s.byRegion[svc] == nil {
					s.byRegion[svc] = map[string]*upstreamSet{}
				}
				s.byRegion[svc][reg] = newUpstreamSet(g.serving, nil)
			}
			if first == nil {
				first = g.serving
			} else {
				rest = append(rest, g.serving...)
			}
			lastResort = append(lastResort, g.lastResort...)
		}
		if set := newUpstreamSet(first, append(rest, lastResort...)); set != nil {
			s.remote[svc] = set
		}
		if len(tiers) > 1 {
			tiers[0].lastResort = lastResort // the same for every tier: kept once
			s.tiers[svc] = tiers
		}
	}

	for _, in := range infos {
		sort.Strings(in.Instances)
		sort.Strings(in.Gateways)
		s.Services = append(s.Services, *in)
	}
	sort.Slice(s.Services, func(i, j int) bool {
		a, b := s.Services[i], s.Services[j]
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		return a.Region < b.Region
	})
	sort.SliceStable(s.Members, func(i, j int) bool {
		if s.Members[i].Pool != s.Members[j].Pool {
			return s.Members[i].Pool > s.Members[j].Pool // region before global
		}
		return s.Members[i].Name < s.Members[j].Name
	})
	return s
}

func memberInfo(pool string, m member) MemberInfo {
	return MemberInfo{
		Pool: pool, Name: m.rec.Name, Role: m.rec.Role, Region: m.rec.Region,
		Gossip: m.gossipAddr, MeshAddr: m.rec.MeshAddr, State: m.rec.State,
		Suspect: m.suspect, Services: m.rec.Services, Roots: m.rec.Roots, SVIDRoot: m.rec.SVIDRoot,
		PeerRoots: m.rec.PeerRoots,
	}
}

func mergeSorted(a, b []string) []string {
	for _, x := range b {
		found := false
		for _, y := range a {
			if x == y {
				found = true
				break
			}
		}
		if !found {
			a = append(a, x)
		}
	}
	sort.Strings(a)
	return a
}

// summarize is what a gateway publishes in the global pool for its region:
// every service of the region with its count of healthy instances (and of
// healthy ones that are draining) out of all it has (Total). An instance the gateway ejected, when
// ejected is not nil and says so, is not counted: its record may say it is
// healthy, but the gateway cannot reach it, so a region with nothing else
// must not look as if it served.
func summarize(lan []member, region string, ejected func(svc string, r *NodeRecord) bool) []ServiceRecord {
	byName := map[string]*ServiceRecord{}
	for _, m := range lan {
		r := m.rec
		if r.Role != RoleSidecar || r.Region != region {
			continue
		}
		for _, sv := range r.Services {
			sr := byName[sv.Name]
			if sr == nil {
				sr = &ServiceRecord{Name: sv.Name}
				byName[sv.Name] = sr
			}
			sr.Domains = mergeSorted(sr.Domains, sv.Domains)
			sr.Total++
			if sv.Since > 0 && (sr.Since == 0 || sv.Since < sr.Since) {
				sr.Since = sv.Since // the region's oldest claim
			}
			switch {
			case sv.Healthy == 0:
			case ejected != nil && ejected(sv.Name, r):
			case r.State == StateReady:
				sr.Healthy++
			default:
				sr.Draining++
			}
		}
	}
	out := make([]ServiceRecord, 0, len(byName))
	for _, sr := range byName {
		out = append(out, *sr)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
