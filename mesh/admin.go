package mesh

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/pprof"
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

// adminHandler serves the admin API. It listens on loopback by default and
// only reads state, so it needs no authentication of its own.
func (n *Node) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !n.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready\n"))
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
	mux.HandleFunc("POST /v1/cache/purge", n.purgeHandler)
	// Profiles for performance work (go tool pprof http://ADMIN/debug/pprof/profile).
	// The admin listener is on loopback unless the operator moves it.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /v1/bgp", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, n.bgpStatus())
	})
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, nonNil(n.snap.Load().Services))
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
