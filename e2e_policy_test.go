package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
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
