package main

// Process end-to-end tests of routing under failure: draining nodes that
// are the last ones left, instances killed mid-run, apps that crash, and
// instances whose certificate the mesh does not trust.

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
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
