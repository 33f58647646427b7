package mesh

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestShares(t *testing.T) {
	tier := func(h, n int) regionTier { return regionTier{healthy: h, total: n} }
	for _, c := range []struct {
		name  string
		tiers []regionTier
		op    float64
		want  []float64
	}{
		{"healthy nearest keeps all", []regionTier{tier(10, 10), tier(5, 5)}, 1.4, []float64{1, 0}},
		{"71% healthy still keeps all", []regionTier{tier(8, 11), tier(5, 5)}, 1.4, []float64{1, 0}},
		{"4 of 10 keeps 56%", []regionTier{tier(4, 10), tier(5, 5)}, 1.4, []float64{0.56, 0.44}},
		{"1 of 3", []regionTier{tier(1, 3), tier(1, 1)}, 1.4, []float64{1.4 / 3, 1 - 1.4/3}},
		{"nothing healthy spills all", []regionTier{tier(0, 3), tier(1, 1)}, 1.4, []float64{0, 1}},
		{"three tiers, the third unused", []regionTier{tier(5, 10), tier(1, 2), tier(1, 1)}, 1.4, []float64{0.7, 0.3, 0}},
		{"three tiers, all needed", []regionTier{tier(2, 10), tier(2, 10), tier(5, 5)}, 1.4, []float64{0.28, 0.28, 0.44}},
		{"all degraded: in proportion", []regionTier{tier(1, 10), tier(3, 10)}, 1.4, []float64{0.25, 0.75}},
		{"factor 1: strict proportion", []regionTier{tier(9, 10), tier(1, 1)}, 1, []float64{0.9, 0.1}},
		{"unknown total counts as healthy", []regionTier{tier(3, 0), tier(1, 1)}, 1.4, []float64{1, 0}},
	} {
		got := shares(c.tiers, c.op)
		for i := range c.want {
			if math.Abs(got[i]-c.want[i]) > 1e-9 {
				t.Errorf("%s: shares %v, want %v", c.name, got, c.want)
				break
			}
		}
	}
}

// TestGradedFailover: the edge's nearest region eu runs three instances
// of web, us one. With two of eu's three failing their health checks, eu
// keeps 1.4 × 1/3 ≈ 47% of the traffic and us takes the rest (a share
// moves, not all of it); once they recover, all of it returns to eu.
func TestGradedFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts seven nodes: skipped with -short")
	}
	m := newTestMesh(t)
	gwEU := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	gwUS := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	var sick atomic.Bool
	app := func(name string, canFail bool) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/healthz" && canFail && sick.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			w.Header().Set("Cache-Control", "no-store")
			io.WriteString(w, name)
		}))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	euJoin := []string{gwEU.Addrs()["gossip"]}
	for i, canFail := range []bool{false, true, true} {
		m.start(Config{Role: RoleSidecar, Name: fmt.Sprintf("web-eu-%d", i+1), Region: "eu", Service: "web",
			Upstream: app("eu", canFail), HealthPath: "/healthz", Join: euJoin})
	}
	m.start(Config{Role: RoleSidecar, Name: "web-us-1", Region: "us", Service: "web",
		Upstream: app("us", false), HealthPath: "/healthz", Join: []string{gwUS.Addrs()["gossip"]}})
	healthy := func(eu, us int) {
		poll(t, 15*time.Second, fmt.Sprintf("the edge sees %d healthy in eu, %d in us", eu, us), func() error {
			if e, u := regionHealthy(edge, "web", "eu"), regionHealthy(edge, "web", "us"); e != eu || u != us {
				return fmt.Errorf("eu %d, us %d", e, u)
			}
			return nil
		})
	}
	healthy(3, 1)
	servedBy(t, edge, "web.localhost", "eu")
	const n = 300
	if served, failed := sequential(t, edge, "web.localhost", n); served["eu"] != n {
		t.Fatalf("eu healthy: served %v, %d failed %v; want all %d by eu", served, len(failed), failed, n)
	}

	sick.Store(true)
	healthy(1, 1)
	served, failed := sequential(t, edge, "web.localhost", n)
	if len(failed) > 0 {
		t.Fatalf("%d failed: %v", len(failed), failed[:min(3, len(failed))])
	}
	// eu's share is 1.4/3 ≈ 0.467: 140 of 300, binomial σ ≈ 8.6.
	if got := float64(served["eu"]) / n; got < 0.467-0.1 || got > 0.467+0.1 {
		t.Errorf("one of three healthy in eu: eu served %v of %d requests (%.2f), want 0.47 ± 0.1", served["eu"], n, got)
	}
	t.Logf("one of three healthy in eu: %v", served)

	sick.Store(false)
	healthy(3, 1)
	if served, failed := sequential(t, edge, "web.localhost", n); served["eu"] != n {
		t.Fatalf("eu recovered: served %v, %d failed; want all %d back in eu", served, len(failed), n)
	}
}
