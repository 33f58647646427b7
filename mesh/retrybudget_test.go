package mesh

import (
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestRetryBudget: web's policy retries 503s (3 attempts) within a budget
// of 20%. With one of its three instances answering 503, every request
// succeeds and the instances see at most 1.2 attempts per request (the
// failing one is ejected after 5 failures in a row); then with all three
// answering 503, the budget keeps the attempts of both runs at most 1.2
// per request, where 3 attempts each would triple the load on a service
// that is down.
func TestRetryBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five nodes: skipped with -short")
	}
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	var attempts atomic.Int64
	var allDown atomic.Bool
	app := func(name string, down bool) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			attempts.Add(1)
			w.Header().Set("Cache-Control", "no-store")
			if down || allDown.Load() {
				http.Error(w, name+" is down", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprint(w, name)
		}))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	join := []string{gw.Addrs()["gossip"]}
	for i, down := range []bool{false, false, true} {
		name := fmt.Sprintf("web-%d", i+1)
		m.start(Config{Role: RoleSidecar, Name: name, Region: "eu", Service: "web", Upstream: app(name, down), Join: join})
	}
	poll(t, 15*time.Second, "the edge sees three web instances", func() error {
		if h := regionHealthy(edge, "web", "eu"); h != 3 {
			return fmt.Errorf("healthy %d", h)
		}
		return nil
	})
	const doc = `
services:
  web:
    retries: {attempts: 3, on: [connect-failure, 503], budget: 20%, min-per-second: 5}
`
	applyAndWait(t, m, gw, doc, edge)

	const n = 300
	attempts.Store(0)
	begin := time.Now()
	start := begin
	served, failed := sequential(t, edge, "web.localhost", n)
	a := attempts.Load()
	t.Logf("one of three down: %d requests, %d attempts (%.2f each) in %v; served %v, %d failed",
		n, a, float64(a)/n, time.Since(start).Round(time.Millisecond), served, len(failed))
	if len(failed) > 0 {
		t.Errorf("one of three instances down: %d of %d failed: %v", len(failed), n, failed[:min(3, len(failed))])
	}
	if a > n*12/10 {
		t.Errorf("one of three instances down: %d attempts for %d requests, want at most 1.2 each", a, n)
	}

	allDown.Store(true)
	before := a
	start = time.Now()
	served, failed = sequential(t, edge, "web.localhost", n)
	a = attempts.Load()
	t.Logf("all three down: %d requests, %d attempts (%.2f each) in %v; %d answered 503",
		n, a-before, float64(a-before)/n, time.Since(start).Round(time.Millisecond), len(failed))
	if len(served) > 0 {
		t.Errorf("all instances down, yet served %v", served)
	}
	// The budget holds over its window (10 s, longer than both runs): the
	// retries of all 2n requests are at most 20% of them, plus the floor
	// of 5 a second. Tokens the first run did not spend fund retries in
	// the second.
	secs := time.Since(begin).Seconds()
	// The floor is counted per second (of the budget's one-second slots)
	// that saw traffic: a run of 2.9 s touches 4 of them.
	if limit := 2*n*1.2 + 5*(math.Ceil(secs)+1); float64(a) > limit {
		t.Errorf("%d attempts for %d requests in %.1fs, want at most %.0f", a, 2*n, secs, limit)
	}
	t.Logf("in all: %d attempts for %d requests (%.2f each) in %.1fs", a, 2*n, float64(a)/(2*n), secs)
}

// TestRouteTimeout: a route's timeout bounds the whole exchange through
// edge → gateway → sidecar: a slow answer becomes a 504 at the timeout,
// other routes of the service keep meshd's defaults.
func TestRouteTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three nodes: skipped with -short")
	}
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(time.Second):
		case <-r.Context().Done():
		}
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprint(w, "slow")
	}))
	defer slow.Close()
	m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: slow.Listener.Addr().String(),
		Join: []string{gw.Addrs()["gossip"]}})
	wantBody(t, edge.Addrs()["public-http"], "web.localhost", 200, "slow")
	const doc = `
services:
  web:
    routes:
      - match: {path-prefix: /api}
        timeout: 200ms
`
	applyAndWait(t, m, gw, doc, edge)
	start := time.Now()
	resp, body, err := edgeGet(edge.Addrs()["public-http"], "web.localhost", "/api/x")
	took := time.Since(start)
	if err != nil || resp.StatusCode != 504 || took > 800*time.Millisecond {
		t.Errorf("/api with a 200ms timeout: %v %v %q after %v, want 504 within the timeout", resp, err, body, took)
	}
	if resp, body, err := edgeGet(edge.Addrs()["public-http"], "web.localhost", "/other"); err != nil || resp.StatusCode != 200 {
		t.Errorf("/other without a timeout: %v %v %q, want the slow 200", resp, err, body)
	}
}
