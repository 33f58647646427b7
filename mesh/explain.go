package mesh

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/meshd/meshd/mesh/policy"
	"github.com/meshd/meshd/proxy"
	"github.com/meshd/meshd/tlsmgr"
)

// `meshd explain URL`: why a request goes where it goes, from the node's
// own snapshot. The answer is computed by the code a request runs: the
// role's host mapping, the policy's rule and subset draw (resolve), its
// authorization and rate limits, and the role's Route function, whose
// first candidate is where the request would go. So an explanation costs
// what one request's routing costs, including its effects: one draw of a
// split's sequence, and the balancer's pass-over of the member it did not
// pick (which only ages that member's latency estimate). Limits are only
// looked at (RateLimiter.Peek), never spent.

// Explanation is what GET /v1/explain answers.
type Explanation struct {
	URL    string `json:"url"`
	Method string `json:"method"`
	Node   string `json:"node"`
	Role   string `json:"role"`
	Region string `json:"region,omitempty"`
	// Caller is the identity the request is explained for: --from's
	// service, else the node's own (an edge's is what the public's
	// requests carry on; a sidecar's is its app's).
	Caller string `json:"caller"`
	Host   string `json:"host"`
	// Service is the service the host names, "" when none does; HostRule
	// says how the host was mapped.
	Service  string `json:"service,omitempty"`
	HostRule string `json:"host_rule,omitempty"`
	// Policy is the version of the policy the node runs (0: none);
	// Route the policy rule that matched, Subset the subset drawn.
	Policy uint64 `json:"policy"`
	Route  string `json:"route,omitempty"`
	Subset string `json:"subset,omitempty"`
	// Authz is the policy's authorization of Caller for this request:
	// "allowed (rule R)" or the refusal; "" without one.
	Authz string `json:"authz,omitempty"`
	// Limits describes the route's rate limit and whether this node
	// would refuse the request now; "" without one.
	Limits string `json:"limits,omitempty"`
	// Regions are the service's serving regions, nearest first, with
	// the health their gateways publish and the share of traffic each
	// gets (edges and gateways).
	Regions []ExplainRegion `json:"regions,omitempty"`
	// Candidates are what the node chooses from, in preference order.
	Candidates []ExplainCandidate `json:"candidates"`
	// Pick is where this request would go, Then the retry order after
	// it; both empty when it is refused.
	Pick *ExplainCandidate `json:"pick,omitempty"`
	Then []string          `json:"then,omitempty"`
	// Refused lists what would refuse the request, and why.
	Refused []string `json:"refused,omitempty"`
	// Verdict is the answer in one line.
	Verdict string `json:"verdict"`
}

// ExplainRegion is one serving region of a service.
type ExplainRegion struct {
	Region  string  `json:"region"`
	Healthy int     `json:"healthy"`
	Total   int     `json:"total"`
	Share   float64 `json:"share"`
}

// ExplainCandidate is one upstream a request may go to.
type ExplainCandidate struct {
	Name   string `json:"name"`
	Addr   string `json:"addr"`
	Region string `json:"region,omitempty"`
	// Group is "preferred" (the balancer picks among these), "fallback"
	// (tried in order after them) or "last resort" (draining).
	Group         string  `json:"group"`
	InFlight      int64   `json:"in_flight"`
	Ejected       bool    `json:"ejected,omitempty"`
	LatencyMillis float64 `json:"latency_ms,omitempty"`
	RTTMillis     float64 `json:"rtt_ms,omitempty"`
}

// Explain explains a request for rawURL (method "" is GET) from service
// from ("" for the node's own identity). A URL or service name that is
// not one is an error naming it; an unroutable request is an answer.
func (n *Node) Explain(method, rawURL, from string) (*Explanation, error) {
	if method == "" {
		method = http.MethodGet
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("url: %q is not an http(s) URL with a host", rawURL)
	}
	caller := n.ID()
	if from != "" {
		if caller, err = tlsmgr.ServiceID(n.td, from); err != nil || validLabel(from) != nil {
			return nil, fmt.Errorf("from: %q is not a service name", from)
		}
	}
	c := &n.Config
	e := &Explanation{URL: u.String(), Method: method, Node: c.Name, Role: c.Role, Region: c.Region,
		Caller: caller, Host: u.Host, Policy: n.pol.Load().version(), Candidates: []ExplainCandidate{}}
	req, err := http.NewRequest(method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	req.Host = u.Host
	req.RemoteAddr = "127.0.0.1:0"
	s := n.snap.Load()

	// Host → service, as the role's front does.
	t := n.table.Load()
	switch c.Role {
	case RoleEdge:
		svc, ok := n.publicServiceOf(u.Host, s)
		if !ok || !s.publishes(svc, n.now) {
			return e.refuse(fmt.Sprintf("no service claims host %q: not %s, no policy domain, no service's --domains",
				normalizeHost(u.Host), "<service>."+c.PublicDomain)), nil
		}
		e.Service, e.HostRule = svc, n.hostRule(u.Host, svc, s, t)
	default:
		svc, ok := meshService(u.Host)
		if !ok {
			return e.refuse(fmt.Sprintf("no service claims host %q: a %s routes <service>.mesh hosts", normalizeHost(u.Host), c.Role)), nil
		}
		e.Service, e.HostRule = svc, "<service>.mesh"
	}

	// Service → policy rule → subset, authorization, limits.
	rr := n.resolve(e.Service, req)
	e.Subset = rr.subset
	var sp *policy.Service
	if t != nil {
		sp = t.services[e.Service]
	}
	if rr.route != nil {
		e.Route = rr.route.Name
	}
	if sp != nil && sp.Authz != nil {
		if ok, rule := sp.Authz.Allowed(caller, n.td, method, u.Path); ok {
			e.Authz = fmt.Sprintf("allowed (rule %s)", rule)
		} else {
			e.Authz = fmt.Sprintf("refused (rule %s)", rule)
			e.Refused = append(e.Refused, fmt.Sprintf("authorization: service %s does not allow %s to %s %s (rule %s); its sidecars answer 403",
				e.Service, caller, method, u.Path, rule))
		}
	}
	if msg, limited := n.explainLimits(t, rr, caller); msg != "" {
		e.Limits = msg
		if limited != "" {
			e.Refused = append(e.Refused, limited)
		}
	}

	// Candidates, then the Route function's own pick.
	e.Regions = n.explainRegions(s, e.Service)
	for _, set := range n.candidateSets(s, e.Service, e.Subset) {
		e.addCandidates(n, s, set)
	}
	ups, err := n.routeFor(withRoute(req, rr))
	if err == nil && len(ups) == 0 {
		err = errors.New("no upstream")
	}
	if err != nil {
		msg := err.Error()
		var se *proxy.StatusError
		if errors.As(err, &se) {
			msg = fmt.Sprintf("%d %s", se.Code, strings.TrimPrefix(se.Msg, "meshd: "))
		}
		e.Refused = append(e.Refused, "route: "+msg)
	} else {
		p := n.candidate(s, ups[0], "")
		for _, have := range e.Candidates {
			if have.Addr == p.Addr && have.Name == p.Name {
				p.Group = have.Group
			}
		}
		e.Pick = &p
		for _, u := range ups[1:] {
			e.Then = append(e.Then, u.Name)
		}
	}
	switch {
	case len(e.Refused) > 0:
		e.Verdict = "refused: " + e.Refused[0]
	default:
		e.Verdict = "goes to " + e.Pick.Name
		if e.Pick.Region != "" {
			e.Verdict += " in " + e.Pick.Region
		}
		e.Verdict += " (" + e.Pick.Addr + ")"
	}
	return e, nil
}

func (e *Explanation) refuse(why string) *Explanation {
	e.Refused = append(e.Refused, why)
	e.Verdict = "refused: " + why
	return e
}

// hostRule says how an edge mapped a public host to svc.
func (n *Node) hostRule(host, svc string, s *Snapshot, t *routeTable) string {
	h := normalizeHost(host)
	switch {
	case t != nil && t.domains[h] != "":
		return fmt.Sprintf("policy version %d: domain of %s", t.version, svc)
	case s.domains[h] != "":
		return "claimed by " + svc + " (--domains)"
	}
	return "<service>." + n.Config.PublicDomain
}

// routeFor is the Route function of the role's forwarding handler for a
// request an app or the public sends.
func (n *Node) routeFor(r *http.Request) ([]*proxy.Upstream, error) {
	switch n.Config.Role {
	case RoleEdge:
		return n.edgeRoute(r)
	case RoleGateway:
		return n.gatewayRoute(r)
	}
	return n.outboundRoute(r)
}

// candidateSets are the sets the role's Route function chooses from, in
// its order.
func (n *Node) candidateSets(s *Snapshot, svc, subset string) []*upstreamSet {
	switch n.Config.Role {
	case RoleEdge:
		return []*upstreamSet{s.remote[svc]}
	case RoleGateway:
		return []*upstreamSet{s.instancesFor(svc, subset), s.remote[svc]}
	}
	return []*upstreamSet{s.instancesFor(svc, subset), s.gateways}
}

func (e *Explanation) addCandidates(n *Node, s *Snapshot, set *upstreamSet) {
	if set == nil || len(set.rot) == 0 {
		return
	}
	for i, u := range set.rot[0] {
		group := "fallback"
		switch {
		case set.lastResort:
			group = "last resort"
		case i < len(set.rot):
			group = "preferred"
		}
		e.Candidates = append(e.Candidates, n.candidate(s, u, group))
	}
}

func (n *Node) candidate(s *Snapshot, u *proxy.Upstream, group string) ExplainCandidate {
	now := time.Now()
	c := ExplainCandidate{Name: u.Name, Addr: u.Addr, Group: group, InFlight: u.InFlight(), Ejected: u.Ejected(now),
		LatencyMillis: float64(u.Latency().Microseconds()) / 1000, Region: n.Config.Region}
	for _, m := range s.Members {
		if m.Name == u.Name && m.MeshAddr == u.Addr {
			c.Region = m.Region
		}
	}
	if res, ok := n.probe.get(u.Addr); ok && res.up {
		c.RTTMillis = float64(res.rtt.Microseconds()) / 1000
	}
	return c
}

// explainRegions lists svc's serving regions with their shares.
func (n *Node) explainRegions(s *Snapshot, svc string) []ExplainRegion {
	tiers := s.tiers[svc]
	if len(tiers) == 0 {
		return nil
	}
	op := DefaultOverprovisioning
	if t := n.table.Load(); t != nil && t.overprovisioning(svc) > 0 {
		op = t.overprovisioning(svc)
	}
	sh := shares(tiers, op)
	out := make([]ExplainRegion, len(tiers))
	for i, t := range tiers {
		out[i] = ExplainRegion{Region: t.region, Healthy: t.healthy, Total: t.total, Share: sh[i]}
	}
	return out
}

// explainLimits describes the rate limit of the request's route and, for
// the limits this node enforces itself (an edge: per client IP and in
// total; the service's own sidecar: per caller and in total), whether it
// would refuse the request now.
func (n *Node) explainLimits(t *routeTable, rr *reqRoute, caller string) (desc, refused string) {
	if t == nil || rr.route == nil || t.limits[rr.route] == nil {
		return "", ""
	}
	l := t.limits[rr.route]
	var parts []string
	for _, r := range []struct {
		what string
		rate policy.Rate
	}{{"per caller", l.rl.PerCaller}, {"per client IP", l.rl.PerIP}, {"in total", l.rl.Total}} {
		if r.rate.Count > 0 {
			parts = append(parts, fmt.Sprintf("%s %d/%v", r.what, r.rate.Count, r.rate.Per))
		}
	}
	desc = "rate limit " + strings.Join(parts, ", ")
	if l.rl.Global {
		desc += " (mesh-wide)"
	}
	var lim *proxy.RateLimiter
	key := ""
	switch {
	case n.Config.Role == RoleEdge:
		lim = l.set(n.enforcers(rr.service, n.snap.Load())).total
	case n.Config.Role == RoleSidecar && rr.service == n.Config.Service:
		ls := l.set(n.enforcers(rr.service, n.snap.Load()))
		if lim, key = ls.perCaller, caller; lim == nil {
			lim, key = ls.total, ""
		}
	default:
		return desc + "; enforced where the service's requests enter (edges, its sidecars)", ""
	}
	if ok, after := lim.Peek(key, n.now()); !ok {
		return desc + "; this node would refuse it now",
			fmt.Sprintf("rate limit: %s of service %s route %s; retry after %v (429)", strings.Join(parts, ", "), rr.service, rr.route.Name, after.Round(time.Millisecond))
	}
	return desc + "; within the limit now", ""
}

// explainHandler serves GET /v1/explain?url=URL[&from=SERVICE][&method=M].
func (n *Node) explainHandler(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	e, err := n.Explain(q.Get("method"), q.Get("url"), q.Get("from"))
	if err != nil {
		http.Error(w, "meshd: explain: "+err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, e)
}

// String is an Explanation as `meshd explain` prints it.
func (e *Explanation) String() string {
	var b strings.Builder
	line := func(k, format string, args ...any) { fmt.Fprintf(&b, "%-10s %s\n", k, fmt.Sprintf(format, args...)) }
	where := e.Role
	if e.Region != "" {
		where += ", region " + e.Region
	}
	fmt.Fprintf(&b, "%s %s at %s (%s), as %s\n", e.Method, e.URL, e.Node, where, e.Caller)
	if e.Service != "" {
		line("host", "%s → service %s (%s)", e.Host, e.Service, e.HostRule)
	}
	if e.Policy == 0 {
		line("policy", "none: every request of a service goes to any of its instances")
	} else {
		route := e.Route
		if route == "" {
			route = "none for this service"
		}
		line("policy", "version %d, route %s%s", e.Policy, route, cond(e.Subset != "", ", subset "+e.Subset))
	}
	if e.Authz != "" {
		line("authz", "%s", e.Authz)
	}
	if e.Limits != "" {
		line("limits", "%s", e.Limits)
	}
	if len(e.Regions) > 0 {
		var rs []string
		for _, r := range e.Regions {
			rs = append(rs, fmt.Sprintf("%s %d/%d healthy, share %.0f%%", r.Region, r.Healthy, r.Total, 100*r.Share))
		}
		line("regions", "%s", strings.Join(rs, "; "))
	}
	if len(e.Candidates) > 0 {
		b.WriteString("candidates\n")
		for i, c := range e.Candidates {
			fmt.Fprintf(&b, "  %d. %s%s %s region %s, %s, %d in flight, latency %s, rtt %s\n", i+1, c.Name,
				cond(c.Ejected, " (ejected)", ""), c.Addr, dashStr(c.Region), c.Group, c.InFlight, millis(c.LatencyMillis), millis(c.RTTMillis))
		}
	}
	if e.Pick != nil {
		line("pick", "%s (%s)%s", e.Pick.Name, e.Pick.Addr, cond(len(e.Then) > 0, "; retries then "+strings.Join(e.Then, ", ")))
	}
	if len(e.Refused) > 1 { // the first is the verdict's
		for _, r := range e.Refused {
			line("refused", "%s", r)
		}
	}
	line("verdict", "%s", e.Verdict)
	return b.String()
}

func cond(ok bool, yes string, no ...string) string {
	if ok {
		return yes
	}
	return strings.Join(no, "")
}

func dashStr(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func millis(ms float64) string {
	if ms <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fms", ms)
}
