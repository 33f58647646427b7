package mesh

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh/policy"
	"github.com/meshd/meshd/tlsmgr"
)

// signPolicy signs doc as version v with the operator key of caDir.
func signPolicy(t *testing.T, caDir, doc string, v uint64) []byte {
	t.Helper()
	op, err := tlsmgr.OperatorFromCADir(caDir, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	s, err := policy.Sign([]byte(doc), v, time.Now(), op.Key, op.Chain)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// postPolicy hands a signed policy to a node's admin API.
func postPolicy(n *Node, signed []byte) (int, string) {
	resp, err := http.Post("http://"+n.Addrs()["admin"]+"/v1/policy", "application/json", bytes.NewReader(signed))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// applyAndWait hands doc, signed as version 1, to at and waits until on
// runs it.
func applyAndWait(t *testing.T, m *testMesh, at *Node, doc string, on *Node) {
	t.Helper()
	if code, body := postPolicy(at, signPolicy(t, m.caDir, doc, 1)); code != 200 {
		t.Fatalf("apply: %d %s", code, body)
	}
	poll(t, 5*time.Second, on.Config.Name+" runs version 1", func() error {
		if v, err := policyVersion(on); err != nil || v != 1 {
			return fmt.Errorf("version %d, %v", v, err)
		}
		return nil
	})
}

func policyVersion(n *Node) (uint64, error) {
	code, body, err := adminGetTCP(n, "/v1/policy")
	if err != nil {
		return 0, err
	}
	if code != 200 {
		return 0, fmt.Errorf("/v1/policy: %d %s", code, body)
	}
	var info PolicyInfo
	if err := json.Unmarshal([]byte(body), &info); err != nil {
		return 0, err
	}
	return info.Version, nil
}

// getWith sends GET / for host to addr with one header field and returns
// the body.
func getWith(t *testing.T, addr, host, key, value string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = host
	req.Header.Set(key, value)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(b)
}

const splitPolicy = `
services:
  web:
    split: {v1: 90, v2: 10}
    routes:
      - match: {headers: {x-canary: "1"}}
        subset: v2
`

// TestPolicyAcrossPools: a policy applied at a sidecar in one region (its
// region pool only) reaches, through the gateways, the other region and
// an edge of the global pool; every node reports its version within 2 s.
// Then its rules hold end to end: a 90/10 split over 500 requests through
// the edge lands within 10 ± 3%, a header rule sends matching requests
// only to v2. A policy signed by another mesh's operator, and an older
// version, are refused and change nothing.
func TestPolicyAcrossPools(t *testing.T) {
	if testing.Short() {
		t.Skip("starts seven nodes: skipped with -short")
	}
	m := newTestMesh(t)
	gwEU := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	gwUS := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	euJoin := []string{gwEU.Addrs()["gossip"]}
	v1 := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Subset: "v1",
		Upstream: nameApp(t, "web-v1"), Join: euJoin})
	v2 := m.start(Config{Role: RoleSidecar, Name: "web-2", Region: "eu", Service: "web", Subset: "v2",
		Upstream: nameApp(t, "web-v2"), Join: euJoin})
	api := m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "us", Service: "api",
		Upstream: nameApp(t, "api"), Join: []string{gwUS.Addrs()["gossip"]}})
	nodes := []*Node{gwEU, gwUS, edge, v1, v2, api}
	wantBody(t, edge.Addrs()["public-http"], "web.localhost", 200, "web-v")
	poll(t, 15*time.Second, "both subsets in eu", func() error {
		for _, sub := range []string{"v1", "v2"} {
			if gwEU.Snapshot().subsets["web"][sub] == nil {
				return fmt.Errorf("gw-eu has no %s instance", sub)
			}
		}
		return nil
	})

	signed := signPolicy(t, m.caDir, splitPolicy, 1)
	if code, body := postPolicy(api, signed); code != 200 {
		t.Fatalf("apply at api-1: %d %s", code, body)
	}
	took := poll(t, 10*time.Second, "every node runs version 1", func() error {
		for _, n := range nodes {
			if v, err := policyVersion(n); err != nil || v != 1 {
				return fmt.Errorf("%s runs %d (%v)", n.Config.Name, v, err)
			}
		}
		return nil
	})
	t.Logf("policy version 1 reached all %d nodes in %v", len(nodes), took)
	if took > 2*time.Second {
		t.Errorf("policy took %v to reach every node, want at most 2s", took)
	}
	if v := metricValue(t, edge, "meshd_policy_propagation_seconds", nil); v != 1 {
		t.Errorf("edge meshd_policy_propagation_seconds_count = %v, want 1", v)
	}

	// /v1/policy of a gateway lists what each member runs, as their
	// records say (a gossip round or two behind the policy itself).
	poll(t, 5*time.Second, "gw-eu's /v1/policy lists its five peers", func() error {
		_, body, _ := adminGetTCP(gwEU, "/v1/policy")
		var info PolicyInfo
		if err := json.Unmarshal([]byte(body), &info); err != nil {
			return err
		}
		if info.Signer != "spiffe://test.meshd/operator/admin" || len(info.Nodes) < 5 {
			return fmt.Errorf("signer %q, %d nodes: %s", info.Signer, len(info.Nodes), body)
		}
		return nil
	})

	// The split, measured through the edge.
	counts := map[string]int{}
	for i := 0; i < 500; i++ {
		resp, body, err := edgeGet(edge.Addrs()["public-http"], "web.localhost", "/")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d: %v %v %q", i, resp, err, body)
		}
		counts[body]++
	}
	share := float64(counts["web-v2"]) / 500
	t.Logf("90/10 split over 500 requests: %v (v2 %.1f%%)", counts, 100*share)
	if share < 0.07 || share > 0.13 || counts["web-v1"]+counts["web-v2"] != 500 {
		t.Errorf("split 90/10: %v, v2 share %.3f, want 0.10 ± 0.03", counts, share)
	}

	// The header rule: x-canary: 1 goes to v2 only, from the edge and
	// from an app in the other region through its sidecar.
	for i := 0; i < 50; i++ {
		if b := getWith(t, edge.Addrs()["public-http"], "web.localhost", "X-Canary", "1"); b != "web-v2" {
			t.Fatalf("x-canary request %d went to %q", i, b)
		}
	}
	for i := 0; i < 20; i++ {
		if b := getWith(t, api.Addrs()["outbound"], "web.mesh", "X-Canary", "1"); b != "web-v2" {
			t.Fatalf("x-canary call from api went to %q", b)
		}
	}
	// The public cannot pick a subset: X-Mesh-Subset from outside is
	// dropped before the draw.
	v1Only := 0
	for i := 0; i < 40; i++ {
		if getWith(t, edge.Addrs()["public-http"], "web.localhost", "X-Mesh-Subset", "v2") == "web-v1" {
			v1Only++
		}
	}
	if v1Only == 0 {
		t.Error("a public X-Mesh-Subset: v2 sent every request to v2")
	}

	// Refusals: another mesh's operator, an old version.
	other := filepath.Join(t.TempDir(), "other")
	if err := tlsmgr.InitCA(other, "test.meshd"); err != nil {
		t.Fatal(err)
	}
	code, msg := postPolicy(gwEU, signPolicy(t, other, "services: {}\n", 2))
	if code != 400 || !strings.Contains(msg, "chain not to the bundle") {
		t.Errorf("policy of another CA: %d %q, want 400 naming the chain", code, msg)
	}
	code, msg = postPolicy(gwEU, signed)
	if code != 409 {
		t.Errorf("the same version again: %d %q, want 409", code, msg)
	}
	time.Sleep(300 * time.Millisecond)
	for _, n := range nodes {
		if v, _ := policyVersion(n); v != 1 {
			t.Errorf("%s runs %d after the refusals, want 1", n.Config.Name, v)
		}
	}
}
