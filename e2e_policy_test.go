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
