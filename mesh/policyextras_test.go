package mesh

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPolicyFaultMirrorAffinity: one policy, end to end through the edge
// and a gateway: a fault rule aborts its path at the edge (the app never
// sees it) and delays another; a mirror copies a share of GETs to v2,
// whose answers nobody sees; affinity by header keeps each user on one
// instance, and when that instance leaves only its users move.
func TestPolicyFaultMirrorAffinity(t *testing.T) {
	if testing.Short() {
		t.Skip("starts six nodes: skipped with -short")
	}
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	join := []string{gw.Addrs()["gossip"]}
	var (
		mu       sync.Mutex
		hits     = map[string]int{} // instance → requests
		mirrored atomic.Int64
		faulted  atomic.Int64
	)
	app := func(name string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/abort") {
				faulted.Add(1)
			}
			if r.Header.Get(HeaderMirror) == "1" {
				mirrored.Add(1)
			}
			mu.Lock()
			hits[name]++
			mu.Unlock()
			w.Header().Set("Cache-Control", "no-store")
			io.WriteString(w, name)
		}))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	v1 := map[string]*Node{}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("web-%d", i)
		v1[name] = m.start(Config{Role: RoleSidecar, Name: name, Region: "eu", Service: "web", Subset: "v1", Upstream: app(name), Join: join})
	}
	m.start(Config{Role: RoleSidecar, Name: "web-v2", Region: "eu", Service: "web", Subset: "v2", Upstream: app("web-v2"), Join: join})
	poll(t, 15*time.Second, "the gateway sees three v1 and one v2", func() error {
		if in := gw.Snapshot().Services; len(in) == 0 || in[0].Subsets["v1"] != 3 || in[0].Subsets["v2"] != 1 {
			return fmt.Errorf("services %+v", in)
		}
		return nil
	})
	const doc = `
services:
  web:
    split: {v1: 100}
    affinity: {header: x-user}
    mirror: {subset: v2, percent: 50}
    routes:
      - match: {path-prefix: /abort}
        fault: {abort: {percent: 100, status: 418}}
      - match: {path-prefix: /slow}
        fault: {delay: {percent: 100, duration: 300ms}}
`
	applyAndWait(t, m, gw, doc, edge)
	addr := edge.Addrs()["public-http"]

	// Faults.
	for i := 0; i < 20; i++ {
		resp, body, err := edgeGet(addr, "web.localhost", "/abort/x")
		if err != nil || resp.StatusCode != 418 || !strings.Contains(resp.Header.Get("Proxy-Status"), "fault injected") {
			t.Fatalf("abort rule: %v %v %q", resp, err, body)
		}
	}
	if n := faulted.Load(); n != 0 {
		t.Errorf("aborted requests reached the app %d times", n)
	}
	start := time.Now()
	if resp, body, err := edgeGet(addr, "web.localhost", "/slow"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("delay rule: %v %v %q", resp, err, body)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("delay rule of 300ms answered in %v", d)
	}

	// Affinity: each of 30 users lands on one v1 instance, every time.
	user := func(u string) string {
		return getWith(t, addr, "web.localhost", "X-User", u)
	}
	first := map[string]string{}
	for i := 0; i < 30; i++ {
		u := fmt.Sprintf("user-%d", i)
		first[u] = user(u)
		if !strings.HasPrefix(first[u], "web-") || first[u] == "web-v2" {
			t.Fatalf("user %s served by %q", u, first[u])
		}
	}
	spread := map[string]int{}
	for round := 0; round < 3; round++ {
		for u, want := range first {
			if got := user(u); got != want {
				t.Fatalf("round %d: %s went to %s, first to %s", round, u, got, want)
			}
		}
	}
	for _, in := range first {
		spread[in]++
	}
	if len(spread) < 2 {
		t.Errorf("30 users all on %v: affinity does not spread", spread)
	}

	// Mirror: about half the GETs were copied to v2, whose answers the
	// users never saw (no request above was answered by web-v2).
	poll(t, 5*time.Second, "the mirrored copies reach v2", func() error {
		mu.Lock()
		defer mu.Unlock()
		if n := mirrored.Load(); n < 30 || n != int64(hits["web-v2"]) {
			return fmt.Errorf("%d copies, web-v2 served %d", n, hits["web-v2"])
		}
		return nil
	})
	t.Logf("users per instance %v; copies mirrored to v2: %d of %d GETs", spread, mirrored.Load(), 1+30*4)
	if n := mirrored.Load(); n > 100 {
		t.Errorf("%d of 121 GETs mirrored, want about half", n)
	}

	// One instance leaves: its users move, the others stay.
	var gone string
	for in := range spread {
		gone = in
		break
	}
	v1[gone].Shutdown(t.Context())
	poll(t, 15*time.Second, "the gateway sees two v1", func() error {
		if in := gw.Snapshot().Services; len(in) == 0 || in[0].Subsets["v1"] != 2 {
			return fmt.Errorf("services %+v", in)
		}
		return nil
	})
	for u, was := range first {
		got := user(u)
		if was != gone && got != was {
			t.Errorf("%s moved from %s to %s when %s left", u, was, got, gone)
		}
		if got == gone || got == "web-v2" {
			t.Errorf("%s served by %s after it left", u, got)
		}
	}
}

// TestConcurrencyHardLimit: an instance whose policy allows 2 requests in
// flight refuses the third with 503, Retry-After and the retry signal,
// and the gateway sends it to another instance: with 4 slow requests at
// once over two instances, none fails.
func TestConcurrencyHardLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four nodes: skipped with -short")
	}
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	release := make(chan struct{})
	var inApp atomic.Int64
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			inApp.Add(1)
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
		}
		w.Header().Set("Cache-Control", "no-store")
		io.WriteString(w, "web")
	}))
	defer slow.Close()
	join := []string{gw.Addrs()["gossip"]}
	web1 := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: slow.Listener.Addr().String(), Join: join})
	m.start(Config{Role: RoleSidecar, Name: "web-2", Region: "eu", Service: "web", Upstream: slow.Listener.Addr().String(), Join: join})
	poll(t, 15*time.Second, "the edge sees two web instances", func() error {
		if h := regionHealthy(edge, "web", "eu"); h != 2 {
			return fmt.Errorf("healthy %d", h)
		}
		return nil
	})
	const doc = "services:\n  web:\n    concurrency: {hard: 2}\n"
	applyAndWait(t, m, gw, doc, web1)
	// Warm every hop's pools and limits: a new upstream is given one
	// request at a time until it has answered some.
	for i := 0; i < 50; i++ {
		var wg sync.WaitGroup
		for j := 0; j < 4; j++ {
			wg.Add(1)
			go func() { defer wg.Done(); edgeGet(edge.Addrs()["public-http"], "web.localhost", "/") }()
		}
		wg.Wait()
	}
	codes := make(chan int, 4)
	for i := 0; i < 4; i++ {
		go func() {
			// Distinct URLs: the edge's cache would collapse four
			// requests for one into one.
			resp, _, err := edgeGet(edge.Addrs()["public-http"], "web.localhost", fmt.Sprintf("/slow?%d", i))
			if err != nil {
				codes <- 0
				return
			}
			codes <- resp.StatusCode
		}()
	}
	poll(t, 5*time.Second, "four requests in the apps", func() error {
		if n := inApp.Load(); n != 4 {
			return fmt.Errorf("%d in the apps", n)
		}
		return nil
	})
	// A fifth finds both instances full: 503 with Retry-After.
	resp, body, err := edgeGet(edge.Addrs()["public-http"], "web.localhost", "/slow?5")
	if err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("both instances at their limit: %v %v %q, want 503 with Retry-After", resp, err, body)
	}
	close(release)
	for i := 0; i < 4; i++ {
		if c := <-codes; c != 200 {
			t.Errorf("request %d of 4 within the two limits: %d", i, c)
		}
	}
	if v := metricValue(t, web1, "meshd_rate_limited_total", map[string]string{"limit": "concurrency"}); v < 1 {
		t.Errorf("web-1 counted %v concurrency refusals, want at least 1", v)
	}
}

// TestConcurrencySoftLimit: with soft: 1, a gateway sends a request to an
// instance that has none in flight while there is one: three slow
// requests at once land on three instances, round after round (the power
// of two choices alone puts two on one instance a third of the time).
func TestConcurrencySoftLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five nodes: skipped with -short")
	}
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	var (
		mu      sync.Mutex
		by      = map[string]int{}
		release = make(chan struct{})
	)
	app := func(name string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/slow") {
				mu.Lock()
				by[name]++
				mu.Unlock()
				select {
				case <-release:
				case <-time.After(10 * time.Second):
				}
			}
			w.Header().Set("Cache-Control", "no-store")
			io.WriteString(w, name)
		}))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	join := []string{gw.Addrs()["gossip"]}
	for i := 1; i <= 3; i++ {
		m.start(Config{Role: RoleSidecar, Name: fmt.Sprintf("web-%d", i), Region: "eu", Service: "web", Upstream: app(fmt.Sprintf("web-%d", i)), Join: join})
	}
	poll(t, 15*time.Second, "the edge sees three web instances", func() error {
		if h := regionHealthy(edge, "web", "eu"); h != 3 {
			return fmt.Errorf("healthy %d", h)
		}
		return nil
	})
	const doc = "services:\n  web:\n    concurrency: {soft: 1}\n"
	applyAndWait(t, m, gw, doc, gw)
	for i := 0; i < 30; i++ { // warm the pools and limits of every hop
		edgeGet(edge.Addrs()["public-http"], "web.localhost", "/")
	}
	for round := 0; round < 6; round++ {
		mu.Lock()
		clear(by)
		mu.Unlock()
		release = make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < 3; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				edgeGet(edge.Addrs()["public-http"], "web.localhost", fmt.Sprintf("/slow?%d-%d", round, i))
			}()
			// One at a time, so each choice sees the ones before it.
			poll(t, 5*time.Second, "the request reaches an app", func() error {
				mu.Lock()
				defer mu.Unlock()
				n := 0
				for _, c := range by {
					n += c
				}
				if n != i+1 {
					return fmt.Errorf("%d in the apps", n)
				}
				return nil
			})
		}
		mu.Lock()
		spread := maps.Clone(by)
		mu.Unlock()
		close(release)
		wg.Wait()
		if len(spread) != 3 {
			t.Errorf("round %d: three slow requests landed %v, want one on each instance", round, spread)
		}
	}
}
