package mesh

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync/atomic"

	"github.com/meshd/meshd/mesh/policy"
	"github.com/meshd/meshd/proxy"
)

// Routes are values. Each role's chain resolves a request's route once, at
// its front: which service it is for (from Host, or from the mesh header a
// previous hop set), which of the policy's rules matched, and which subset
// the request goes to. The result rides in the request's context; the
// cache, the forwarding handler's Route function and the limits read it
// and never derive it again.
//
//	edge:     request ID → access log → edgeFront (host → service, 404) → cache → forward
//	gateway:  meshFront (service header) → forward (instances of the subset, else a remote region)
//	sidecar:  inbound:  meshFront (own service) → forward to the app
//	          outbound: meshFront (<service>.mesh) → forward (instances of the subset, else the gateway)
//
// The subset is chosen once per request, by the first hop that resolves
// the route, and travels on as HeaderSubset, so that the hop that picks an
// instance honours the first hop's draw (a 90/10 split stays 90/10 however
// many hops a request crosses). HeaderSubset is an X-Mesh-* field: the edge
// drops it from public requests, so only mesh identities (an app through
// its own sidecar, for testing a subset) can set it.

// HeaderSubset carries the subset a request goes to between mesh hops.
const HeaderSubset = "X-Mesh-Subset"

// routeTable is a policy version compiled for the request path: immutable,
// swapped whole when a new version is adopted.
type routeTable struct {
	version  uint64
	services map[string]*policy.Service
	domains  map[string]string // public host → service, as the policy says
	draws    map[*policy.Route]*atomic.Uint64
	limits   map[*policy.Route]*routeLimits
	calls    map[*policy.Route]*routeCalls
	global   map[string]bool // services with a global rate limit
}

func compileRoutes(doc *policy.Document) *routeTable {
	t := &routeTable{version: doc.Version, services: doc.Services, domains: doc.Domains,
		draws: map[*policy.Route]*atomic.Uint64{}, limits: map[*policy.Route]*routeLimits{},
		calls: map[*policy.Route]*routeCalls{}, global: map[string]bool{}}
	for _, s := range doc.Services {
		for _, r := range append([]*policy.Route{s.Default}, s.Routes...) {
			t.calls[r] = compileCalls(r)
			if l := compileLimits(s.Name, r); l != nil {
				t.limits[r] = l
				if l.rl.Global {
					t.global[s.Name] = true
				}
			}
			if len(r.Split) > 0 {
				c := &atomic.Uint64{}
				c.Store(rand.Uint64()) // nodes start at different points of the sequence
				t.draws[r] = c
			}
		}
	}
	return t
}

// overprovisioning is svc's failover factor, 0 when the policy does not
// name the service (the caller's default applies).
func (t *routeTable) overprovisioning(svc string) float64 {
	if sp := t.services[svc]; sp != nil {
		return sp.Default.Failover.Overprovisioning
	}
	return 0
}

// golden is 2⁶⁴/φ, the golden ratio's inverse in 64-bit fixed point.
const golden = 0x9E3779B97F4A7C15

// draw is the next point in [0,1) for a split of route r: the k-th point
// of the golden-ratio sequence frac(k/φ), k counting the route's requests
// at this node. Any run of consecutive requests spreads over [0,1) almost
// evenly (its discrepancy grows only with the log of the run's length), so
// a 90/10 split sends 10 ± 2 of any 100 consecutive requests to the 10%,
// where independent random draws miss by ±3 (one binomial standard
// deviation) and by ±1.3% over 500 requests.
func (t *routeTable) draw(r *policy.Route) float64 {
	c := t.draws[r]
	if c == nil {
		return rand.Float64()
	}
	x := c.Add(1) * golden // frac(k/φ) in fixed point, exact modulo 2⁶⁴
	return float64(x>>11) / (1 << 53)
}

// reqRoute is one request's resolved route.
type reqRoute struct {
	service string
	subset  string        // "" = any instance
	route   *policy.Route // nil without a policy for the service
	calls   *routeCalls   // the route's retries and timeouts; nil with route
	region  string        // the region an app asked to replay the request in (edge)
}

type routeKey struct{}

func routeFrom(ctx context.Context) *reqRoute {
	rr, _ := ctx.Value(routeKey{}).(*reqRoute)
	return rr
}

// resolve finds the route of a request for svc. A subset already named in
// HeaderSubset (a previous mesh hop's draw, or an app's override through
// its own sidecar) is kept; otherwise the policy's rule for the request
// draws one and HeaderSubset carries it on.
func (n *Node) resolve(svc string, r *http.Request) *reqRoute {
	rr := &reqRoute{service: svc}
	t := n.table.Load()
	if t != nil {
		if sp := t.services[svc]; sp != nil {
			rr.route = sp.Resolve(r.Method, r.URL.Path, r.Header)
			rr.calls = t.calls[rr.route]
		}
	}
	if v := r.Header[HeaderSubset]; len(v) > 0 {
		if validLabel(v[0]) == nil {
			rr.subset = v[0]
			return rr
		}
		delete(r.Header, HeaderSubset)
	}
	if rr.route != nil {
		if rr.subset = rr.route.PickSubset(t.draw(rr.route)); rr.subset != "" {
			r.Header[HeaderSubset] = []string{rr.subset}
		}
	}
	return rr
}

func withRoute(r *http.Request, rr *reqRoute) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), routeKey{}, rr))
}

// publicServiceOf maps a public Host to its service: the policy's domains
// first (the policy decides every host it names), then the names services
// claim (the nameBook's choice) and <service>.<public-domain>.
func (n *Node) publicServiceOf(host string, s *Snapshot) (string, bool) {
	if t := n.table.Load(); t != nil && len(t.domains) > 0 {
		if h := normalizeHost(host); h != "" {
			if svc, ok := t.domains[h]; ok {
				return svc, true
			}
		}
	}
	return publicService(host, n.Config.PublicDomain, s.domains)
}

// edgeFront is the front of the edge's public chain: it answers requests
// for hosts no service publishes before they reach the cache, so the cache
// never holds an entry for a host the edge does not serve and the edge is
// never an open proxy; it resolves the route of every other request.
func (n *Node) edgeFront(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := n.snap.Load()
		svc, ok := n.publicServiceOf(r.Host, s)
		if !ok || !s.publishes(svc, n.now) {
			writeStatusError(w, errNoHost(r.Host).(*proxy.StatusError))
			return
		}
		// The public never picks a subset: X-Mesh-* from outside is
		// dropped by the forwarding handler too, but the draw happens
		// here, before it.
		delete(r.Header, HeaderSubset)
		rr := n.resolve(svc, r)
		noteRoute(w, rr)
		if rr.route != nil && (!n.admitted(w, r, rr, "", remoteIP(r)) || !injectFault(w, r, rr.route.Fault)) {
			return
		}
		next.ServeHTTP(w, withRoute(r, rr))
	})
}

// forwardedFields are what the edge records of a public client.
var forwardedFields = [...]string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded"}

// meshFront is the front of a gateway's mesh listener and of a sidecar's
// outbound listener: the service comes from the mesh header (set by the
// previous hop) or from Host (<service>.mesh). A request it cannot place
// goes on unresolved, for the Route function to refuse.
func (n *Node) meshFront(next http.Handler) http.Handler {
	outbound := n.Config.Role == RoleSidecar
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if outbound {
			// An app's claims about a client are not the mesh's: only
			// the edge, which saw the client, sets these.
			for _, k := range forwardedFields {
				delete(r.Header, k)
			}
		}
		if r.Method == http.MethodConnect {
			next.ServeHTTP(w, r) // tunnels: no HTTP route
			return
		}
		svc := r.Header.Get(HeaderService)
		if svc == "" {
			var ok bool
			if svc, ok = meshService(r.Host); !ok {
				next.ServeHTTP(w, r)
				return
			}
		}
		rr := n.resolve(svc, r)
		noteRoute(w, rr)
		if n.Config.Role == RoleSidecar && rr.route != nil && !injectFault(w, r, rr.route.Fault) {
			return // the app's call, at its first hop
		}
		next.ServeHTTP(w, withRoute(r, rr))
	})
}

// pickInstances returns the instances of the request's subset in the
// node's region, or every instance of the service when the request has no
// subset.
func (s *Snapshot) instancesFor(svc, subset string) *upstreamSet {
	if subset == "" {
		return s.local[svc]
	}
	return s.subsets[svc][subset]
}

// errNoSubset answers a request for a subset nothing healthy serves.
func errNoSubset(svc, subset string) error {
	msg := fmt.Sprintf("no healthy instance of service %s in subset %s is reachable", svc, subset)
	return &proxy.StatusError{Code: http.StatusServiceUnavailable, Msg: "meshd: " + msg,
		Details: msg, RetryAfter: downRetryAfter}
}

// subsetOf is the subset the request's route chose, "" for any instance.
func subsetOf(out *http.Request) string {
	if rr := routeFrom(out.Context()); rr != nil {
		return rr.subset
	}
	if v := out.Header[HeaderSubset]; len(v) > 0 && validLabel(v[0]) == nil {
		return v[0]
	}
	return ""
}
