package main

// Process end-to-end tests of routing under failure: draining nodes that
// are the last ones left, instances killed mid-run, apps that crash, and
// instances whose certificate the mesh does not trust.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
)

// routeMesh starts meshd processes sharing one CA, every listener on
// 127.0.0.1 port 0.
type routeMesh struct {
	t     *testing.T
	caDir string
}

func newRouteMesh(t *testing.T) *routeMesh {
	t.Helper()
	if testing.Short() {
		t.Skip("process end-to-end test: skipped with -short")
	}
	caDir := filepath.Join(t.TempDir(), "ca")
	if out, err := exec.Command(meshdBin, "ca", "init", "--trust-domain", "route.meshd", "--dir", caDir).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	return &routeMesh{t: t, caDir: caDir}
}

func (m *routeMesh) node(name string, args ...string) *proc {
	m.t.Helper()
	common := []string{"--ca-dir", m.caDir, "--listen", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--wan-gossip-addr", "127.0.0.1:0"}
	return startNode(m.t, name, append(common, args...)...)
}

func (m *routeMesh) gateway(name, region string, args ...string) *proc {
	m.t.Helper()
	return m.node(name, append([]string{"--role", "gateway", "--region", region}, args...)...)
}

func (m *routeMesh) sidecar(name, svc, region string, a *app, gw *proc, args ...string) *proc {
	m.t.Helper()
	return m.node(name, append([]string{"--role", "sidecar", "--region", region, "--service", svc, "--upstream", a.addr(),
		"--outbound", "127.0.0.1:0", "--join", gw.addr("gossip"), "--health-interval", "300ms"}, args...)...)
}

func (m *routeMesh) edge(name, region string, gw *proc) *proc {
	m.t.Helper()
	return m.node(name, "--role", "edge", "--region", region, "--public-http", "127.0.0.1:0", "--wan-join", gw.addr("wan-gossip"))
}

// startLiveApp is an echo app whose answers no cache may store: every
// request through the edge reaches an instance, so a failure to route one
// is seen instead of hidden by the edge serving a stored copy.
func startLiveApp(t *testing.T, service, instance, region string) *app {
	t.Helper()
	a := &app{}
	echo := mesh.EchoHandler(service, instance, region)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		w.Header().Set("Cache-Control", "no-store")
		echo.ServeHTTP(w, r)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

// servedBy waits until the edge at public answers host from instance.
func servedBy(t *testing.T, public, host, instance string) {
	t.Helper()
	eventually(t, 20*time.Second, host+" served by "+instance, func() error {
		e, err := getEcho(public, host)
		if err != nil {
			return err
		}
		if e.Instance != instance {
			return fmt.Errorf("served by %s", e.Instance)
		}
		return nil
	})
}

// drainWindow sends sequential requests to host through the edge while
// stop runs, for window after stop began, and returns how many there were
// and the failures once stop has returned.
func drainWindow(t *testing.T, public, host string, window time.Duration, stop func()) (n int, failed []string) {
	t.Helper()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		stop()
	}()
	defer func() { <-stopped }()
	start := time.Now()
	for time.Since(start) < window {
		n++
		resp, body, err := get(public, host, "/")
		switch {
		case err != nil:
			failed = append(failed, fmt.Sprintf("%v: %v", time.Since(start).Round(time.Millisecond), err))
		case resp.StatusCode != 200:
			failed = append(failed, fmt.Sprintf("%v: %d %.80s", time.Since(start).Round(time.Millisecond), resp.StatusCode, body))
		}
	}
	return n, failed
}

// TestDrainLastResort: a draining node serves until its drain delay ends,
// so when it is the only one left, requests keep going to it: first the
// only instance of a service drains, then the only gateway of its region.
func TestDrainLastResort(t *testing.T) {
	m := newRouteMesh(t)
	gw := m.gateway("gw-eu", "eu", "--drain-delay", "2s")
	a1, a2 := startLiveApp(t, "web", "web-1", "eu"), startLiveApp(t, "web", "web-2", "eu")
	sc1 := m.sidecar("web-1", "web", "eu", a1, gw, "--drain-delay", "2s")
	edge := m.edge("edge-eu", "eu", gw)
	public := edge.addr("public-http")
	servedBy(t, public, "web.localhost", "web-1")

	// The drain delay is 2 s; requests in its first 1.5 s must all succeed.
	n, failed := drainWindow(t, public, "web.localhost", 1500*time.Millisecond, func() {
		if err := sc1.stop(syscall.SIGTERM, 20*time.Second); err != nil {
			t.Error(err)
		}
	})
	t.Logf("only instance draining: %d requests, %d failed", n, len(failed))
	if len(failed) > 0 {
		t.Errorf("while the only instance drained, %d of %d requests failed, first: %v", len(failed), n, failed[:min(len(failed), 3)])
	}

	m.sidecar("web-2", "web", "eu", a2, gw)
	servedBy(t, public, "web.localhost", "web-2")
	n, failed = drainWindow(t, public, "web.localhost", 1500*time.Millisecond, func() {
		if err := gw.stop(syscall.SIGTERM, 20*time.Second); err != nil {
			t.Error(err)
		}
	})
	t.Logf("only gateway draining: %d requests, %d failed", n, len(failed))
	if len(failed) > 0 {
		t.Errorf("while the only gateway drained, %d of %d requests failed, first: %v", len(failed), n, failed[:min(len(failed), 3)])
	}
}

// steadyLoad sends n GETs of host to the edge at public, rate per second,
// each in its own goroutine (at most 64 at once), and calls at(i) before
// request i. It returns the failures (errors or non-200 answers), the
// instances that served, and how long the run took.
func steadyLoad(t *testing.T, public, host string, n, rate int, at func(i int)) (failed []string, servedBy map[string]int, took time.Duration) {
	t.Helper()
	var mu sync.Mutex
	servedBy = map[string]int{}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}}
	defer c.CloseIdleConnections()
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	start := time.Now()
	for i := 0; i < n; i++ {
		<-tick.C
		if at != nil {
			at(i)
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			sent := time.Since(start)
			req, _ := http.NewRequest(http.MethodGet, "http://"+public+"/", nil)
			req.Host = host
			resp, err := c.Do(req)
			var e echoReply
			if err == nil {
				body, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case rerr != nil:
					err = rerr
				case resp.StatusCode != 200:
					err = fmt.Errorf("%d %.100s", resp.StatusCode, body)
				default:
					err = json.Unmarshal(body, &e)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, fmt.Sprintf("request %d at %v: %v", i, sent.Round(time.Millisecond), err))
				return
			}
			servedBy[e.Instance]++
		}()
	}
	wg.Wait()
	return failed, servedBy, time.Since(start)
}

// TestFailoverSIGKILL: both instances of web in eu are killed (SIGKILL,
// by PID) in the middle of a steady 200 requests a second through an edge
// in eu; the requests go on to us at once: at most a handful fail.
func TestFailoverSIGKILL(t *testing.T) {
	m := newRouteMesh(t)
	gwEU := m.gateway("gw-eu", "eu")
	gwUS := m.gateway("gw-us", "us", "--wan-join", gwEU.addr("wan-gossip"))
	scEU1 := m.sidecar("web-eu-1", "web", "eu", startLiveApp(t, "web", "web-eu-1", "eu"), gwEU)
	scEU2 := m.sidecar("web-eu-2", "web", "eu", startLiveApp(t, "web", "web-eu-2", "eu"), gwEU)
	m.sidecar("web-us-1", "web", "us", startLiveApp(t, "web", "web-us-1", "us"), gwUS)
	edge := m.edge("edge-eu", "eu", gwEU)
	public := edge.addr("public-http")
	seen := map[string]bool{}
	eventually(t, 20*time.Second, "edge serves from both eu instances", func() error {
		e, err := getEcho(public, "web.localhost")
		if err != nil {
			return err
		}
		seen[e.Instance] = true
		if !seen["web-eu-1"] || !seen["web-eu-2"] {
			return fmt.Errorf("seen %v", seen)
		}
		return nil
	})
	eventually(t, 20*time.Second, "edge knows web in us", func() error {
		_, body, err := get(edge.addr("admin"), "x", "/v1/services")
		if err != nil {
			return err
		}
		var ss []mesh.ServiceInfo
		if err := json.Unmarshal(body, &ss); err != nil {
			return err
		}
		for _, s := range ss {
			if s.Service == "web" && s.Region == "us" && s.Healthy == 1 {
				return nil
			}
		}
		return fmt.Errorf("services %s", body)
	})

	const n, rate, killAt = 1000, 200, 300
	var killed time.Time
	failed, servedBy, took := steadyLoad(t, public, "web.localhost", n, rate, func(i int) {
		if i != killAt {
			return
		}
		killed = time.Now()
		for _, p := range []*proc{scEU1, scEU2} {
			if err := p.stop(syscall.SIGKILL, 5*time.Second); err != nil {
				t.Error(err)
			}
		}
	})
	t.Logf("%d requests in %v, both eu instances SIGKILLed before request %d (%v into the run): %d failed; served by %v",
		n, took.Round(time.Millisecond), killAt, killed.Sub(time.Now().Add(-took)).Round(time.Millisecond), len(failed), servedBy)
	if len(failed) > 0 {
		t.Logf("first failures: %q", failed[:min(len(failed), 3)])
	}
	if len(failed) > 5 {
		t.Fatalf("%d of %d requests failed after both eu instances were killed, want at most 5", len(failed), n)
	}
	if servedBy["web-us-1"] < (n-killAt)*9/10 {
		t.Fatalf("us served %d requests after eu died, want nearly all of the last %d", servedBy["web-us-1"], n-killAt)
	}
}
