package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// poolMembers lists "pool/name" of every member a node's admin API shows.
func poolMembers(adminAddr string) ([]string, error) {
	ms, err := members(adminAddr)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.Pool+"/"+m.Name)
	}
	sort.Strings(out)
	return out, nil
}

// TestRestartedGatewayRejoins: in the README's layout, where the gateway
// of the first region has no --join and everyone else joins it, the
// gateway stopped with SIGTERM and started again with the same flags is
// back in both pools, and the edge serves through it again.
func TestRestartedGatewayRejoins(t *testing.T) {
	if testing.Short() {
		t.Skip("process end-to-end test: skipped with -short")
	}
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if out, err := exec.Command(meshdBin, "ca", "init", "--trust-domain", "restart.meshd", "--dir", caDir).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	p := freePorts(t, 3)
	gwArgs := []string{"--role", "gateway", "--region", "eu", "--ca-dir", caDir,
		"--listen", fmt.Sprintf("127.0.0.1:%d", p[0]),
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", p[1]),
		"--wan-gossip-addr", fmt.Sprintf("127.0.0.1:%d", p[2])}
	common := []string{"--ca-dir", caDir, "--listen", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--wan-gossip-addr", "127.0.0.1:0"}
	node := func(name string, args ...string) *proc {
		return startNode(t, name, append(append([]string{}, common...), args...)...)
	}
	gw := startNode(t, "gw-eu", gwArgs...)
	app1 := startApp(t, "web", "web-eu-1", "eu")
	app2 := startApp(t, "web", "web-eu-2", "eu")
	for name, a := range map[string]*app{"web-eu-1": app1, "web-eu-2": app2} {
		node(name, "--role", "sidecar", "--region", "eu", "--service", "web", "--upstream", a.addr(),
			"--outbound", "127.0.0.1:0", "--join", gw.addr("gossip"), "--health-interval", "300ms")
	}
	gwUS := node("gw-us", "--role", "gateway", "--region", "us", "--wan-join", gw.addr("wan-gossip"))
	edge := node("edge-eu", "--role", "edge", "--region", "eu", "--public-http", "127.0.0.1:0", "--wan-join", gw.addr("wan-gossip"))

	want := map[string][]string{
		"gw-eu":   {"global/edge-eu", "global/gw-eu", "global/gw-us", "region/gw-eu", "region/web-eu-1", "region/web-eu-2"},
		"gw-us":   {"global/edge-eu", "global/gw-eu", "global/gw-us", "region/gw-us"},
		"edge-eu": {"global/edge-eu", "global/gw-eu", "global/gw-us"},
	}
	converged := func(gw *proc) func() error {
		return func() error {
			for name, p := range map[string]*proc{"gw-eu": gw, "gw-us": gwUS, "edge-eu": edge} {
				got, err := poolMembers(p.addr("admin"))
				if err != nil {
					return err
				}
				if !slices.Equal(got, want[name]) {
					return fmt.Errorf("%s sees %v, want %v", name, got, want[name])
				}
			}
			if _, err := getEcho(edge.addr("public-http"), "web.localhost"); err != nil {
				return fmt.Errorf("edge: %v", err)
			}
			return nil
		}
	}
	eventually(t, 20*time.Second, "mesh converged", converged(gw))

	if err := gw.stop(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	gw2 := startNode(t, "gw-eu", gwArgs...)
	started := time.Since(start)
	took := eventually(t, 20*time.Second, "restarted gw-eu back in both pools, edge serving through it", converged(gw2))
	t.Logf("gw-eu restarted (SIGTERM, start took %v): both pools and the edge's route back %v after it started", started, took)
	if logs := gw2.logs(); strings.Contains(logs, "Conflicting address") {
		t.Errorf("restarted gateway logged an address conflict:\n%s", logs)
	}
}
