package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
)

func policyOf(adminAddr string) (mesh.PolicyInfo, error) {
	var info mesh.PolicyInfo
	resp, err := http.Get("http://" + adminAddr + "/v1/policy")
	if err != nil {
		return info, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&info)
	return info, err
}

// TestApplyPolicy: `meshd apply` at a sidecar signs a policy with the
// operator key `meshd ca init` wrote, and gossip takes it to the gateway
// and the edge of the global pool; `meshd status policy` says when every
// node runs it. 20 applies in a row give the propagation time (logged as
// p50/p99, for the closing note); a document signed by another mesh's
// operator is refused with the reason and changes nothing; `meshd check
// policy` names the field of a bad document.
func TestApplyPolicy(t *testing.T) {
	m := newRouteMesh(t)
	gw := m.gateway("gw-eu", "eu")
	web := m.sidecar("web-1", "web", "eu", startApp(t, "web", "web-1", "eu"), gw, "--subset", "v1")
	edge := m.edge("edge-1", "eu", gw)
	nodes := []*proc{gw, web, edge}
	eventually(t, 20*time.Second, "web through the edge", func() error {
		_, err := getEcho(edge.addr("public-http"), "web.localhost")
		return err
	})

	dir := t.TempDir()
	file := filepath.Join(dir, "policy.yaml")
	write := func(body string) {
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var took []time.Duration
	for i := 1; i <= 20; i++ {
		write(fmt.Sprintf("services:\n  web:\n    timeout: %ds\n    split: {v1: 100}\n", i))
		start := time.Now()
		out, err := exec.Command(meshdBin, "apply", "-f", file, "--ca-dir", m.caDir, "--admin", web.addr("admin")).CombinedOutput()
		if err != nil {
			t.Fatalf("apply %d: %v\n%s", i, err, out)
		}
		if i == 1 && !strings.Contains(string(out), "policy version 1, signed by spiffe://route.meshd/operator/admin") {
			t.Errorf("apply said: %s", out)
		}
		eventually(t, 10*time.Second, fmt.Sprintf("version %d everywhere", i), func() error {
			for _, p := range nodes {
				info, err := policyOf(p.addr("admin"))
				if err != nil {
					return err
				}
				if info.Version != uint64(i) {
					return fmt.Errorf("%s runs %d", p.name, info.Version)
				}
			}
			return nil
		})
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("20 applies at a sidecar until the gateway and the edge run them (apply command included): p50 %v, p99 %v",
		took[len(took)/2], took[len(took)-1])
	if took[len(took)/2] > 2*time.Second {
		t.Errorf("median propagation %v, want at most 2s", took[len(took)/2])
	}

	// Records say which version a member runs; they follow the policy
	// itself by a gossip round or two.
	eventually(t, 10*time.Second, "meshd status policy: nobody behind", func() error {
		out, err := exec.Command(meshdBin, "status", "policy", "--admin", edge.addr("admin")).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "edge-1 runs policy version 20") || !strings.Contains(string(out), "gw-eu") {
			return fmt.Errorf("%v\n%s", err, out)
		}
		return nil
	})
	var out []byte
	var err error

	// Another mesh's operator key: refused at the node, nothing changes.
	other := filepath.Join(dir, "other")
	if out, err := exec.Command(meshdBin, "ca", "init", "--trust-domain", "route.meshd", "--dir", other).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	write("services: {}\n")
	out, err = exec.Command(meshdBin, "apply", "-f", file, "--key", filepath.Join(other, "operator.key"), "--admin", gw.addr("admin")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "chain not to the bundle") {
		t.Errorf("apply with another mesh's operator key: %v\n%s", err, out)
	}
	if !strings.Contains(gw.logs(), "policy: refused an apply") {
		t.Error("the refused apply is not in the gateway's log")
	}
	for _, p := range nodes {
		if info, _ := policyOf(p.addr("admin")); info.Version != 20 {
			t.Errorf("%s runs %d after the refused apply, want 20", p.name, info.Version)
		}
	}

	write("services:\n  web:\n    retries: {attempts: 0}\n")
	out, err = exec.Command(meshdBin, "check", "policy", file).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "services.web.retries.attempts") {
		t.Errorf("check policy of a bad document: %v\n%s", err, out)
	}
}

// TestPolicyTrafficProcesses: a policy applied with meshd apply, end to
// end through real processes (edge → gateway → sidecars): a 90/10 split
// over 500 requests lands within 10 ± 3%, a header rule sends matching
// requests only to v2, and a per-client-IP limit of 50/s at the edge holds
// within 10% over 5 s with 429s for the rest.
func TestPolicyTrafficProcesses(t *testing.T) {
	m := newRouteMesh(t)
	gw := m.gateway("gw-eu", "eu")
	m.sidecar("web-1", "web", "eu", startLiveApp(t, "web", "web-1", "eu"), gw, "--subset", "v1")
	m.sidecar("web-2", "web", "eu", startLiveApp(t, "web", "web-2", "eu"), gw, "--subset", "v2")
	edge := m.edge("edge-1", "eu", gw)
	public := edge.addr("public-http")
	seen := map[string]bool{}
	eventually(t, 20*time.Second, "both subsets through the edge", func() error {
		e, err := getEcho(public, "web.localhost")
		if err != nil {
			return err
		}
		seen[e.Instance] = true
		if !seen["web-1"] || !seen["web-2"] {
			return fmt.Errorf("seen %v", seen)
		}
		return nil
	})
	file := filepath.Join(t.TempDir(), "policy.yaml")
	apply := func(doc string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(meshdBin, "apply", "-f", file, "--ca-dir", m.caDir, "--admin", gw.addr("admin")).CombinedOutput(); err != nil {
			t.Fatalf("apply: %v\n%s", err, out)
		}
		want, _ := policyOf(gw.addr("admin"))
		eventually(t, 10*time.Second, "the edge runs the new policy", func() error {
			if info, err := policyOf(edge.addr("admin")); err != nil || info.Version != want.Version {
				return fmt.Errorf("edge runs %d (%v), gateway %d", info.Version, err, want.Version)
			}
			return nil
		})
	}
	apply(`
services:
  web:
    split: {v1: 90, v2: 10}
    routes:
      - match: {headers: {x-canary: "1"}}
        subset: v2
`)
	counts := map[string]int{}
	for i := 0; i < 500; i++ {
		e, err := getEcho(public, "web.localhost")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		counts[e.Instance]++
	}
	t.Logf("90/10 split over 500 requests through the edge: %v", counts)
	if v2 := float64(counts["web-2"]) / 500; v2 < 0.07 || v2 > 0.13 {
		t.Errorf("split 90/10 over 500: %v, v2 share %.3f, want 0.10 ± 0.03", counts, v2)
	}
	for i := 0; i < 50; i++ {
		req, _ := http.NewRequest("GET", "http://"+public+"/", nil)
		req.Host = "web.localhost"
		req.Header.Set("X-Canary", "1")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e echoReply
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if err != nil || e.Instance != "web-2" {
			t.Fatalf("x-canary request %d: %v, served by %q; want web-2 (v2) only", i, err, e.Instance)
		}
	}

	apply("services:\n  web:\n    rate-limit: {per-ip: 50/s}\n")
	codes := map[int]int{}
	start := time.Now()
	for i := 0; i < 500; i++ { // 100/s for 5 s, one request at a time
		time.Sleep(time.Until(start.Add(time.Duration(i) * 10 * time.Millisecond)))
		resp, _, err := get(public, "web.localhost", "/")
		if err != nil {
			t.Fatal(err)
		}
		codes[resp.StatusCode]++
	}
	t.Logf("100/s for %v against 50/s per client IP: %v", time.Since(start).Round(time.Millisecond), codes)
	// 50/s over the run's length, and a burst of 5.
	want := 50*time.Since(start).Seconds() + 5
	if ok := float64(codes[200]); ok < 0.9*want || ok > 1.1*want || codes[200]+codes[429] != 500 {
		t.Errorf("per-ip 50/s: %v, want %.0f ± 10%% allowed and the rest 429", codes, want)
	}
}

// faultyApp is an echo app that answers 503 while down and fails its
// health check (/healthz) while sick, and counts every request but the
// health checks.
type faultyApp struct {
	app
	down, sick atomic.Bool
}

func startFaultyApp(t *testing.T, service, instance, region string) *faultyApp {
	t.Helper()
	a := &faultyApp{}
	echo := mesh.EchoHandler(service, instance, region)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if a.sick.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		a.hits.Add(1)
		w.Header().Set("Cache-Control", "no-store")
		if a.down.Load() {
			http.Error(w, instance+" is down", http.StatusServiceUnavailable)
			return
		}
		echo.ServeHTTP(w, r)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

// TestPolicyResilienceProcesses: through real processes, a retry budget
// keeps upstream attempts at most 1.2 per request while one of three
// instances answers 503 (and every request succeeds), and graded failover
// moves a share of the traffic, not all of it, to the next region when
// two of the nearest region's three instances fail their health checks.
func TestPolicyResilienceProcesses(t *testing.T) {
	m := newRouteMesh(t)
	gwEU := m.gateway("gw-eu", "eu")
	gwUS := m.gateway("gw-us", "us", "--wan-join", gwEU.addr("wan-gossip"))
	var eu []*faultyApp
	for i := 1; i <= 3; i++ {
		a := startFaultyApp(t, "web", fmt.Sprintf("web-eu-%d", i), "eu")
		eu = append(eu, a)
		m.sidecar(fmt.Sprintf("web-eu-%d", i), "web", "eu", &a.app, gwEU, "--health-path", "/healthz")
	}
	us := startFaultyApp(t, "web", "web-us-1", "us")
	m.sidecar("web-us-1", "web", "us", &us.app, gwUS, "--health-path", "/healthz")
	edge := m.edge("edge-1", "eu", gwEU)
	public := edge.addr("public-http")
	healthy := func(want map[string]int) {
		t.Helper()
		eventually(t, 20*time.Second, fmt.Sprintf("the edge sees %v healthy", want), func() error {
			var got []mesh.ServiceInfo
			resp, err := http.Get("http://" + edge.addr("admin") + "/v1/services")
			if err != nil {
				return err
			}
			err = json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
			if err != nil {
				return err
			}
			have := map[string]int{}
			for _, s := range got {
				if s.Service == "web" {
					have[s.Region] = s.Healthy
				}
			}
			if have["eu"] != want["eu"] || have["us"] != want["us"] {
				return fmt.Errorf("healthy %v", have)
			}
			return nil
		})
	}
	healthy(map[string]int{"eu": 3, "us": 1})
	file := filepath.Join(t.TempDir(), "policy.yaml")
	doc := "services:\n  web:\n    retries: {attempts: 3, on: [connect-failure, 503], budget: 20%}\n"
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(meshdBin, "apply", "-f", file, "--ca-dir", m.caDir, "--admin", gwEU.addr("admin")).CombinedOutput(); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	eventually(t, 10*time.Second, "gw-eu runs version 1", func() error {
		if info, err := policyOf(gwEU.addr("admin")); err != nil || info.Version != 1 {
			return fmt.Errorf("version %d, %v", info.Version, err)
		}
		return nil
	})

	hits := func() int64 {
		n := us.hits.Load()
		for _, a := range eu {
			n += a.hits.Load()
		}
		return n
	}
	eu[2].down.Store(true)
	const n = 300
	before := hits()
	failed := 0
	for i := 0; i < n; i++ {
		if _, err := getEcho(public, "web.localhost"); err != nil {
			failed++
		}
	}
	attempts := hits() - before
	t.Logf("one of three eu instances answering 503: %d requests, %d attempts upstream, %d failed", n, attempts, failed)
	if failed > 0 || attempts > n*12/10 {
		t.Errorf("retry budget: %d attempts for %d requests (want at most 1.2 each), %d failed (want 0)", attempts, n, failed)
	}
	eu[2].down.Store(false)

	// Two of eu's three fail their health checks: eu keeps 1.4 × 1/3.
	eu[1].sick.Store(true)
	eu[2].sick.Store(true)
	healthy(map[string]int{"eu": 1, "us": 1})
	byRegion := map[string]int{}
	for i := 0; i < n; i++ {
		e, err := getEcho(public, "web.localhost")
		if err != nil {
			t.Fatal(err)
		}
		byRegion[e.Region]++
	}
	t.Logf("one of three eu instances healthy: %v of %d requests", byRegion, n)
	if share := float64(byRegion["eu"]) / n; share < 0.467-0.1 || share > 0.467+0.1 || byRegion["us"] == 0 {
		t.Errorf("graded failover: %v, eu share %.2f, want 0.47 ± 0.1 and the rest in us", byRegion, share)
	}
	eu[1].sick.Store(false)
	eu[2].sick.Store(false)
	healthy(map[string]int{"eu": 3, "us": 1})
	for i := 0; i < 100; i++ {
		if e, err := getEcho(public, "web.localhost"); err != nil || e.Region != "eu" {
			t.Fatalf("after eu recovered, request %d: %v, region %q; want all in eu", i, err, e.Region)
		}
	}
}
