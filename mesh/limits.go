package mesh

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"

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
	if v := r.Header[HeaderCaller]; len(v) == 1 && n.peerRole(r) == RoleGateway &&
		strings.HasPrefix(v[0], "spiffe://"+n.td+"/") && len(v[0]) <= 2048 {
		return v[0]
	}
	return peer
}

// routeLimits are the token buckets of one route at this node.
type routeLimits struct {
	perCaller, perIP, total *proxy.RateLimiter
	name                    string // the route, for the refusal's details
}

// newLimiter builds a limiter for rate r with the route's burst, nil for
// a zero rate. Without a burst in the document a key may run a tenth of a
// second ahead (at least one request): "50/s" means about 50 in any
// second, not 100 in the first.
func newLimiter(r policy.Rate, burst int) *proxy.RateLimiter {
	if r.Count <= 0 || r.Per <= 0 {
		return nil
	}
	perSec := float64(r.Count) / r.Per.Seconds()
	if burst <= 0 {
		burst = max(1, int(math.Ceil(perSec/10)))
	}
	return proxy.NewRateLimiter(perSec, burst, 0)
}

func compileLimits(svc string, r *policy.Route) *routeLimits {
	rl := r.RateLimit
	if rl == nil {
		return nil
	}
	l := &routeLimits{
		perCaller: newLimiter(rl.PerCaller, rl.Burst),
		perIP:     newLimiter(rl.PerIP, rl.Burst),
		total:     newLimiter(rl.Total, rl.Burst),
		name:      "service " + svc + " route " + r.Name,
	}
	if l.perCaller == nil && l.perIP == nil && l.total == nil {
		return nil
	}
	return l
}

// admitted applies the route's limits to r, keyed by caller (a mesh
// identity, at the destination sidecar) or by client IP (at the edge),
// and answers 429 when one refuses. Each node keeps its own buckets: a
// caller reaching three instances of a service may make three times its
// per-caller rate in all.
func (n *Node) admitted(w http.ResponseWriter, r *http.Request, rr *reqRoute, caller, ip string) bool {
	t := n.table.Load()
	if t == nil || rr.route == nil {
		return true
	}
	l := t.limits[rr.route]
	if l == nil {
		return true
	}
	now := n.now()
	for _, c := range [...]struct {
		lim  *proxy.RateLimiter
		key  string
		what string
	}{{l.perCaller, caller, "per caller"}, {l.perIP, ip, "per client IP"}, {l.total, "", "in total"}} {
		if c.lim == nil || c.key == "" && c.lim != l.total {
			continue
		}
		if ok, after := c.lim.Allow(c.key, now); !ok {
			n.rateLimited.WithLabelValues(rr.service, c.what).Inc()
			proxy.WriteRateLimited(w, after, "rate limit "+c.what+" of "+l.name)
			return false
		}
	}
	return true
}

// remoteIP is the client IP of a public request.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// inboundFront is the front of a sidecar's mesh listener: it records the
// verified caller for the app, resolves the route of the sidecar's own
// service and applies its limits.
func (n *Node) inboundFront(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller := n.relayedCaller(r)
		if caller != "" {
			r.Header[HeaderCaller] = []string{caller}
		} else {
			delete(r.Header, HeaderCaller)
		}
		if r.Method == http.MethodConnect {
			next.ServeHTTP(w, r)
			return
		}
		rr := &reqRoute{service: n.Config.Service}
		if t := n.table.Load(); t != nil {
			if sp := t.services[rr.service]; sp != nil {
				rr.route = sp.Resolve(r.Method, r.URL.Path, r.Header)
			}
		}
		if rr.route == nil {
			next.ServeHTTP(w, r)
			return
		}
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
				h["Proxy-Status"] = []string{`meshd; error=connection_limit_reached; details="concurrency limit"`}
				writeStatusError(w, &proxy.StatusError{Code: http.StatusServiceUnavailable,
					Msg: fmt.Sprintf("meshd: instance %s of %s has %d requests in flight, its limit", n.Config.Name, rr.service, hard)})
				return
			}
			defer n.inflight.Add(-1)
		}
		next.ServeHTTP(w, r)
	})
}
