package mesh

import (
	"math/rand/v2"
	"sort"
	"time"

	"github.com/meshd/meshd/proxy"
)

// Snapshot is the node's immutable view of the mesh, rebuilt on every
// gossip change and read without locks by the request path.
type Snapshot struct {
	// local: service → ready, healthy instances in the node's own region
	// (region pool; gateways and sidecars).
	local map[string]*upstreamSet
	// gateways: ready gateways of the node's own region (region pool; what a
	// sidecar sends to when the callee is not in its region).
	gateways *upstreamSet
	// remote: service → gateways of the regions that have healthy instances,
	// nearest region first (global pool; edges and gateways). For a gateway
	// its own region is left out: those calls are served locally.
	remote map[string]*upstreamSet
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
}

// ServiceInfo is one service in one region as the node sees it.
type ServiceInfo struct {
	Service   string   `json:"service"`
	Region    string   `json:"region"`
	Healthy   int      `json:"healthy"`
	Instances []string `json:"instances,omitempty"`
	Gateways  []string `json:"gateways,omitempty"`
	Domains   []string `json:"domains,omitempty"`
}

// upstreamSet holds candidates in preference order: every rotation of the
// preferred group (the nearest region's gateways, or the region's
// instances), each followed by the fallbacks, precomputed so that picking
// one costs no allocation.
type upstreamSet struct {
	rot [][]*proxy.Upstream
}

// newUpstreamSet makes a set where requests are balanced over first and
// fall back to rest in order.
func newUpstreamSet(first, rest []*proxy.Upstream) *upstreamSet {
	s := &upstreamSet{}
	if len(first) == 0 {
		if len(rest) == 0 {
			return nil
		}
		s.rot = [][]*proxy.Upstream{rest}
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
		local:   map[string]*upstreamSet{},
		remote:  map[string]*upstreamSet{},
		known:   map[string]bool{},
		domains: map[string]string{},
		claims:  domainClaims{},
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

	// Region pool: instances and the region's own gateways.
	instances := map[string][]*proxy.Upstream{}
	var gws []*proxy.Upstream
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
				if ready && sv.Healthy > 0 {
					in.Healthy++
					in.Instances = append(in.Instances, r.Name)
					if u := mk.instanceUpstream(sv.Name, r); u != nil {
						instances[sv.Name] = append(instances[sv.Name], u)
					}
				}
			}
		case RoleGateway:
			if u := mk.gatewayUpstream(r); ready && u != nil {
				gws = append(gws, u)
			}
		}
	}
	for svc, ups := range instances {
		s.local[svc] = newUpstreamSet(ups, nil)
	}
	s.gateways = newUpstreamSet(gws, nil)

	// Global pool: per region, the services its gateways summarize.
	regionGWs := map[string][]*proxy.Upstream{}
	regionRTT := map[string]time.Duration{} // best measured RTT; 0 = not measured
	svcRegions := map[string]map[string]bool{}
	for _, m := range wan {
		r := m.rec
		s.Members = append(s.Members, memberInfo("global", m))
		if r.Role != RoleGateway {
			continue
		}
		for _, sv := range r.Services {
			s.known[sv.Name] = true
			if selfRole == RoleGateway && r.Region == selfRegion {
				continue // the region pool has the instance-level truth
			}
			addDomains(sv.Name, r, sv)
			in := info(sv.Name, r.Region)
			in.Domains = mergeSorted(in.Domains, sv.Domains)
			if r.State != StateReady {
				continue
			}
			in.Gateways = append(in.Gateways, r.Name)
			if sv.Healthy > in.Healthy {
				in.Healthy = sv.Healthy
			}
			if sv.Healthy > 0 {
				if svcRegions[sv.Name] == nil {
					svcRegions[sv.Name] = map[string]bool{}
				}
				svcRegions[sv.Name][r.Region] = true
			}
		}
		if r.State == StateReady && !(selfRole == RoleGateway && r.Region == selfRegion) {
			s.probeTargets = append(s.probeTargets, r.MeshAddr)
			res, known := probe.get(r.MeshAddr)
			if known && !res.up {
				continue
			}
			if u := mk.gatewayUpstream(r); u != nil {
				regionGWs[r.Region] = append(regionGWs[r.Region], u)
				if known && (regionRTT[r.Region] == 0 || res.rtt < regionRTT[r.Region]) {
					regionRTT[r.Region] = res.rtt
				}
			}
		}
	}
	for svc, regions := range svcRegions {
		order := make([]string, 0, len(regions))
		for reg := range regions {
			if selfRole == RoleGateway && reg == selfRegion {
				continue
			}
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
		for len(order) > 0 && len(regionGWs[order[0]]) == 0 {
			order = order[1:] // every gateway of that region is down
		}
		if len(order) == 0 {
			continue
		}
		var rest []*proxy.Upstream
		for _, reg := range order[1:] {
			rest = append(rest, regionGWs[reg]...)
		}
		if set := newUpstreamSet(regionGWs[order[0]], rest); set != nil {
			s.remote[svc] = set
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
		Suspect: m.suspect, Services: m.rec.Services,
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
// every service of the region with its count of healthy instances.
func summarize(lan []member, region string) []ServiceRecord {
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
			if sv.Since > 0 && (sr.Since == 0 || sv.Since < sr.Since) {
				sr.Since = sv.Since // the region's oldest claim
			}
			if r.State == StateReady && sv.Healthy > 0 {
				sr.Healthy++
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
