package mesh

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/meshd/meshd/mesh/policy"
	"github.com/meshd/meshd/proxy"
	"github.com/meshd/meshd/tlsmgr"
)

// HeaderCaller carries the caller's SPIFFE ID between mesh hops: the first
// hop records who called (a sidecar's outbound listener: its own service's
// identity, the app behind it; the edge: its own identity, for the public);
// a gateway relays it only from another gateway and otherwise records its
// verified peer; the destination sidecar believes it only from a gateway,
// else takes its verified peer, and hands the result to the app. An app or
// the public cannot set it: the outbound listener overwrites it and the
// edge drops every X-Mesh-* field of public requests.
const HeaderCaller = "X-Mesh-Caller"

// peerID is the verified SPIFFE ID of a mesh request's peer, "" without
// one.
func peerID(r *http.Request) string {
	id, _ := tlsmgr.PeerID(r.TLS)
	return id
}

// relayedCaller is the caller a mesh hop records for r: what a gateway
// of the trust domain relayed, else the verified peer.
func (n *Node) relayedCaller(r *http.Request) string {
	peer := peerID(r)
	if v := r.Header[HeaderCaller]; len(v) == 1 && len(v[0]) <= 2048 {
		prefix := "spiffe://" + n.td + "/"
		if strings.HasPrefix(peer, prefix+RoleGateway+"/") && strings.HasPrefix(v[0], prefix) {
			return v[0]
		}
	}
	return peer
}

// routeLimits are the token buckets of one route at this node.
//
// A limit with global: true is shared by the nodes that enforce it rather
// than counted at each: every node takes an equal share of the rate and
// the burst, 1/N, where N is the number of nodes enforcing it, which
// gossip tells: for a destination sidecar, the service's healthy
// instances mesh-wide (each gateway adds up the regions' summaries and
// publishes the sum in its region-pool record); for an edge, the ready
// edges of the global pool. The bound: while N is current, the mesh
// admits at most the rate (plus one share of burst per node); it admits
// less when the traffic is spread unevenly over the nodes (a caller that
// only reaches one instance of three gets a third of its rate), and for
// the few seconds after an instance joins or leaves, N is off by the
// change until gossip carries it. Buckets start full when N changes.
type routeLimits struct {
	rl   policy.RateLimit
	name string // the route, for the refusal's details
	cur  atomic.Pointer[limitSet]
}

// limitSet is the limiters for one share of a route's limit.
type limitSet struct {
	div                     int // the share: 1/div of the rate
	perCaller, perIP, total *proxy.RateLimiter
}

// newLimiter builds a limiter for 1/div of rate r, with 1/div of the
// burst, nil for a zero rate. Without a burst in the document a key may
// run a tenth of a second ahead (at least one request): "50/s" means
// about 50 in any second, not 100 in the first.
func newLimiter(r policy.Rate, burst, div int) *proxy.RateLimiter {
	if r.Count <= 0 || r.Per <= 0 {
		return nil
	}
	perSec := float64(r.Count) / r.Per.Seconds() / float64(div)
	if burst <= 0 {
		burst = max(1, int(math.Ceil(perSec/10)))
	} else {
		burst = max(1, burst/div)
	}
	return proxy.NewRateLimiter(perSec, burst, 0)
}

func compileLimits(svc string, r *policy.Route) *routeLimits {
	rl := r.RateLimit
	if rl == nil || rl.PerCaller.Count <= 0 && rl.PerIP.Count <= 0 && rl.Total.Count <= 0 {
		return nil
	}
	return &routeLimits{rl: *rl, name: "service " + svc + " route " + r.Name}
}

// set returns the limiters of share 1/div, building them when the share
// changed.
func (l *routeLimits) set(div int) *limitSet {
	if !l.rl.Global {
		div = 1
	}
	div = max(div, 1)
	cur := l.cur.Load()
	if cur != nil && cur.div == div {
		return cur
	}
	next := &limitSet{div: div,
		perCaller: newLimiter(l.rl.PerCaller, l.rl.Burst, div),
		perIP:     newLimiter(l.rl.PerIP, l.rl.Burst, div),
		total:     newLimiter(l.rl.Total, l.rl.Burst, div)}
	if l.cur.CompareAndSwap(cur, next) {
		return next
	}
	return l.cur.Load()
}

// enforcers is how many nodes share a global limit of svc with this one.
func (n *Node) enforcers(svc string, s *Snapshot) int {
	if n.Config.Role == RoleEdge {
		return s.edges
	}
	if c := s.meshWide[svc]; c > 0 {
		return c
	}
	for _, in := range s.Services { // no gateway says: the region's count
		if in.Service == svc && in.Region == n.Config.Region {
			return in.Healthy
		}
	}
	return 1
}

// admitted applies the route's limits to r, keyed by caller (a mesh
// identity, at the destination sidecar) or by client IP (at the edge),
// and answers 429 when one refuses.
func (n *Node) admitted(w http.ResponseWriter, r *http.Request, rr *reqRoute, caller, ip string) bool {
	t := n.table.Load()
	if t == nil || rr.route == nil {
		return true
	}
	l := t.limits[rr.route]
	if l == nil {
		return true
	}
	div := 1
	if l.rl.Global {
		div = n.enforcers(rr.service, n.snap.Load())
	}
	ls := l.set(div)
	now := n.now()
	for _, c := range [...]struct {
		lim  *proxy.RateLimiter
		key  string
		what string
	}{{ls.perCaller, caller, "per caller"}, {ls.perIP, ip, "per client IP"}, {ls.total, "", "in total"}} {
		if c.lim == nil || c.key == "" && c.lim != ls.total {
			continue
		}
		if ok, after := c.lim.Allow(c.key, now); !ok {
			n.rateLimited.WithLabelValues(rr.service, c.what).Inc()
			proxy.WriteRateLimited(w, after, "rate limit "+c.what+" of "+l.name, proxy.TraceID(r.Header))
			return false
		}
	}
	return true
}

// globalCounts is what a gateway publishes in its region-pool record:
// the healthy instances mesh-wide of every service the policy limits
// globally.
func (n *Node) globalCounts() map[string]int {
	t, s := n.table.Load(), n.snap.Load()
	if t == nil || s == nil || len(t.global) == 0 {
		return nil
	}
	out := map[string]int{}
	for _, in := range s.Services {
		if t.global[in.Service] {
			out[in.Service] += in.Healthy
		}
	}
	if len(out) > maxGlobalLimited {
		return nil // a record must decode at its peers
	}
	return out
}

// maxGlobalLimited bounds Global in a record.
const maxGlobalLimited = 1000

// remoteIP is the client IP of a public request.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// inboundFront is the front of a sidecar's mesh listener: it records the
// verified caller for the app, applies the policy's authorization of the
// sidecar's own service, resolves its route and applies its limits.
func (n *Node) inboundFront(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller := n.relayedCaller(r)
		if caller != "" {
			r.Header[HeaderCaller] = []string{caller}
		} else {
			delete(r.Header, HeaderCaller)
		}
		var sp *policy.Service
		if t := n.table.Load(); t != nil {
			sp = t.services[n.Config.Service]
		}
		if sp == nil {
			next.ServeHTTP(w, r) // no policy for the service: nothing to apply
			return
		}
		if sp.Authz != nil && !n.authorized(w, r, sp, caller) {
			return
		}
		if r.Method == http.MethodConnect {
			next.ServeHTTP(w, r)
			return
		}
		rr := &reqRoute{service: n.Config.Service, route: sp.Resolve(r.Method, r.URL.Path, r.Header)}
		noteRoute(w, rr)
		if !n.admitted(w, r, rr, caller, "") {
			return
		}
		if hard := rr.route.Concurrency.Hard; hard > 0 {
			if n.inflight.Add(1) > int64(hard) {
				n.inflight.Add(-1)
				n.rateLimited.WithLabelValues(rr.service, "concurrency").Inc()
				// Nothing reached the app: the hop before may send it
				// to another instance.
				h := w.Header()
				h[proxy.HeaderRetry] = []string{"1"}
				h["Retry-After"] = []string{"1"}
				ps := `meshd; error=connection_limit_reached; details="concurrency limit"`
				if id := proxy.TraceID(r.Header); id != "" { // built only then: refusals come in floods
					ps = proxy.ProxyStatus("meshd", "connection_limit_reached", "concurrency limit", id)
				}
				h["Proxy-Status"] = []string{ps}
				writeStatusError(w, &proxy.StatusError{Code: http.StatusServiceUnavailable,
					Msg: fmt.Sprintf("meshd: instance %s of %s has %d requests in flight, its limit", n.Config.Name, rr.service, hard)})
				return
			}
			defer n.inflight.Add(-1)
		}
		next.ServeHTTP(w, r)
	})
}

// authorized applies the service's authorization to r from caller and
// answers 403 when it refuses: the request never reaches the app. A
// refusal is counted, and logged at info with the caller and the rule (a
// line per caller and rule every few seconds at most, so a caller that
// insists does not flood the log).
func (n *Node) authorized(w http.ResponseWriter, r *http.Request, sp *policy.Service, caller string) bool {
	path := r.URL.Path
	ok, rule := sp.Authz.Allowed(caller, n.td, r.Method, path)
	if ok {
		return true
	}
	n.authzDenied.WithLabelValues(sp.Name, rule).Inc()
	who := caller
	if who == "" {
		who = "an unknown caller"
	}
	what := r.Method + " " + truncate(path, 200)
	if r.Method == http.MethodConnect {
		what = "open a tunnel"
	}
	if allow, _ := n.authzLog.Allow(who+"\x00"+rule, n.now()); allow {
		n.Logger.Info("authorization: refused a request", "service", sp.Name, "caller", who, "rule", rule,
			"method", r.Method, "path", truncate(path, 200))
	}
	msg := fmt.Sprintf("service %s does not allow %s to %s (rule %s)", sp.Name, who, what, rule)
	h := w.Header()
	h["Proxy-Status"] = []string{proxy.ProxyStatus("meshd", "http_request_denied", msg, proxy.TraceID(r.Header))}
	writeStatusError(w, &proxy.StatusError{Code: http.StatusForbidden, Msg: "meshd: " + msg})
	return false
}
