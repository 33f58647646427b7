package mesh

import (
	"cmp"
	_ "embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Self is what /v1/self reports about the node.
type Self struct {
	Name     string            `json:"name"`
	Role     string            `json:"role"`
	Region   string            `json:"region,omitempty"`
	ID       string            `json:"id"`
	State    string            `json:"state"`
	Ready    bool              `json:"ready"`
	Addrs    map[string]string `json:"addrs"`
	MeshAddr string            `json:"mesh_addr,omitempty"`
	// SVIDNotAfter and SVIDRenewals tell when the node's identity expires
	// and how often it was renewed since start.
	SVIDNotAfter time.Time `json:"svid_not_after"`
	SVIDRenewals uint64    `json:"svid_renewals"`
}

// dashboardHTML is the admin listener's page at /: this node's golden
// signals per service and hop with their last 15 minutes (/v1/signals),
// the region map, the policy version of each node it knows, its routes,
// services and members, read from the JSON endpoints every 2 s; no script
// or style from anywhere else (the Content-Security-Policy says so).
//
//go:embed dashboard/index.html
var dashboardHTML []byte

// startAdmin opens the admin listener (a unix socket or TCP, see
// listenAdmin) and serves the admin API on it.
func (n *Node) startAdmin() error {
	ln, err := listenAdmin(n.Config.Admin)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	n.adminAddr = n.Config.Admin
	if ln.Addr().Network() == "tcp" {
		n.adminAddr = ln.Addr().String()
		if ap, err := netip.ParseAddrPort(n.adminAddr); err == nil && !ap.Addr().IsLoopback() {
			n.Logger.Warn("the admin API is reachable from the network and has no authentication: anybody who reaches it can purge the cache (keep it on loopback or a unix socket)", "addr", n.adminAddr)
		}
	}
	n.adminSrv = &http.Server{Handler: n.adminGate(n.adminHandler()), ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(n.Logger.Handler(), slog.LevelDebug)}
	go n.adminSrv.Serve(ln)
	n.Logger.Info("listening", "listener", "admin", "addr", n.adminAddr)
	return nil
}

// adminHandler serves the admin API. It listens on a unix socket only its
// user can open, or on loopback, by default; anybody who reaches it can
// read the node's state and purge its cache.
func (n *Node) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'")
		h.Set("Cache-Control", "no-store")
		w.Write(dashboardHTML)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if why := n.notReady(); why != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(why + "\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /v1/self", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, Self{Name: n.Config.Name, Role: n.Config.Role, Region: n.Config.Region, ID: n.ID(),
			State: n.state(), Ready: n.Ready(), Addrs: n.Addrs(), MeshAddr: n.advertise,
			SVIDNotAfter: n.ids.NotAfter(), SVIDRenewals: n.ids.Renewals()})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.registry, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(n.Logger.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, nonNil(n.snap.Load().Members))
	})
	mux.HandleFunc("GET /v1/ca", n.caHandler)
	mux.HandleFunc("POST /v1/cache/purge", n.purgeHandler)
	mux.HandleFunc("GET /v1/policy", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, n.policyInfo(r.URL.Query().Get("document") != ""))
	})
	mux.HandleFunc("POST /v1/policy", n.applyHandler)
	mux.HandleFunc("GET /v1/gossip/keyring", func(w http.ResponseWriter, r *http.Request) {
		n.mu.Lock()
		info := n.keyringInfo()
		n.mu.Unlock()
		writeJSON(w, info)
	})
	mux.HandleFunc("POST /v1/gossip/keyring", n.keyringHandler)
	mux.HandleFunc("POST /v1/reload", n.reloadHandler)
	mux.HandleFunc("GET /v1/explain", n.explainHandler)
	if n.Config.AdminPprof {
		// Profiles for performance work (go tool pprof http://ADMIN/debug/pprof/profile),
		// only when asked for: a profile costs CPU and shows memory contents'
		// shape to whoever can reach the admin listener.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	}
	mux.HandleFunc("GET /v1/bgp", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, n.bgpStatus())
	})
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, nonNil(n.snap.Load().Services))
	})
	mux.HandleFunc("GET /v1/signals", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, n.signals(time.Now()))
	})
	mux.HandleFunc("GET /v1/routes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, nonNil(n.routes(time.Now())))
	})
	return mux
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// RouteInfo says where this node sends a request for a service right now:
// its candidates in preference order (the balancer picks among the first
// group, the rest are retry candidates).
type RouteInfo struct {
	Service string `json:"service"`
	// Via is "instances" (the service's instances in this node's region),
	// "gateway" (this region's gateways, for a sidecar calling a service
	// it has no instance of) or "regions" (gateways of the regions that
	// run the service, nearest first).
	Via       string          `json:"via"`
	Domains   []string        `json:"domains,omitempty"`
	Upstreams []RouteUpstream `json:"upstreams"`
	// Conflict is set on the entries with Via "refused": a claim of the
	// service on a host name another service owns, which this node does
	// not route (see domains.go). Such entries have no upstreams.
	Conflict *DomainConflict `json:"conflict,omitempty"`
}

// RouteUpstream is one candidate of a route.
type RouteUpstream struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	InFlight int64  `json:"in_flight"`
	Ejected  bool   `json:"ejected,omitempty"`
	// LatencyMillis is the balancer's peak-EWMA estimate of the time to
	// an answer, 0 before the first one.
	LatencyMillis float64 `json:"latency_ms,omitempty"`
	// RTTMillis is the connect time this node last measured (gateways
	// it probes), 0 when it does not probe the address.
	RTTMillis float64 `json:"rtt_ms,omitempty"`
}

// routes lists the route of every service the snapshot can send to.
func (n *Node) routes(now time.Time) []RouteInfo {
	s := n.snap.Load()
	domains := map[string][]string{}
	t := n.table.Load()
	for d, svc := range s.domains {
		if t != nil && t.domains[d] != "" {
			continue // the policy decides it
		}
		domains[svc] = append(domains[svc], d)
	}
	if t != nil {
		for d, svc := range t.domains {
			domains[svc] = append(domains[svc], d)
		}
	}
	var out []RouteInfo
	add := func(svc, via string, set *upstreamSet) {
		if set == nil || len(set.rot) == 0 {
			return
		}
		ri := RouteInfo{Service: svc, Via: via, Domains: domains[svc]}
		slices.Sort(ri.Domains)
		for _, u := range set.rot[0] {
			ru := RouteUpstream{Name: u.Name, Addr: u.Addr, InFlight: u.InFlight(), Ejected: u.Ejected(now),
				LatencyMillis: float64(u.Latency().Microseconds()) / 1000}
			if res, ok := n.probe.get(u.Addr); ok && res.up {
				ru.RTTMillis = float64(res.rtt.Microseconds()) / 1000
			}
			ri.Upstreams = append(ri.Upstreams, ru)
		}
		out = append(out, ri)
	}
	for svc, set := range s.local {
		add(svc, "instances", set)
	}
	for svc, set := range s.remote {
		add(svc, "regions", set)
	}
	if n.Config.Role == RoleSidecar && s.gateways != nil {
		add("*", "gateway", s.gateways)
	}
	for _, c := range s.Conflicts {
		out = append(out, RouteInfo{Service: c.Refused, Via: "refused", Domains: []string{c.Domain},
			Upstreams: []RouteUpstream{}, Conflict: &c})
	}
	slices.SortFunc(out, func(a, b RouteInfo) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Via, b.Via))
	})
	return out
}
