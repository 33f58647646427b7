package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// TestKeysOffTheNodes: the production path of deploy/README.md. The CA
// key stays in one directory; every node gets ca.crt, gossip.key and an
// SVID from meshd ca issue, nothing else, and edge → gateway → sidecar
// serves. A sidecar that does hold ca.key is warned about it; the ones
// without it are not.
func TestKeysOffTheNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("process end-to-end test: skipped with -short")
	}
	dir := t.TempDir()
	caDir, nodeDir := filepath.Join(dir, "ca"), filepath.Join(dir, "node")
	if err := tlsmgr.InitCA(caDir, "prod.meshd"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(nodeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{tlsmgr.CACertFile, tlsmgr.GossipKeyFile} {
		b, err := os.ReadFile(filepath.Join(caDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(nodeDir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	issue := func(id, name string) []string {
		cert, key := filepath.Join(nodeDir, name+".crt"), filepath.Join(nodeDir, name+".key")
		out, err := exec.Command(meshdBin, "ca", "issue", "--dir", caDir, "--id", id, "--cert", cert, "--key", key, "--ttl", "1h").CombinedOutput()
		if err != nil {
			t.Fatalf("ca issue: %v\n%s", err, out)
		}
		return []string{"--cert-file", cert, "--key-file", key}
	}
	common := []string{"--ca-dir", nodeDir, "--listen", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--wan-gossip-addr", "127.0.0.1:0"}
	with := func(a ...[]string) []string {
		out := append([]string{}, common...)
		for _, x := range a {
			out = append(out, x...)
		}
		return out
	}
	gw := startNode(t, "gw-eu", with([]string{"--role", "gateway", "--region", "eu"}, issue("spiffe://prod.meshd/gateway/eu/gw-eu", "gw"))...)
	app := startLiveApp(t, "web", "web-1", "eu")
	web := startNode(t, "web-1", with([]string{"--role", "sidecar", "--region", "eu", "--service", "web", "--upstream", app.addr(),
		"--outbound", "127.0.0.1:0", "--join", gw.addr("gossip"), "--health-interval", "300ms"},
		issue("spiffe://prod.meshd/service/web", "web"))...)
	edge := startNode(t, "edge-1", with([]string{"--role", "edge", "--region", "eu", "--public-http", "127.0.0.1:0",
		"--wan-join", gw.addr("wan-gossip")}, issue("spiffe://prod.meshd/edge/edge-1", "edge"))...)
	servedBy(t, edge.addr("public-http"), "web.localhost", "web-1")

	// The convenient way, with ca.key beside the sidecar: it serves, and
	// says what that risks.
	risky := startNode(t, "web-2", "--ca-dir", caDir, "--listen", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0",
		"--role", "sidecar", "--region", "eu", "--service", "web", "--upstream", startLiveApp(t, "web", "web-2", "eu").addr(),
		"--outbound", "127.0.0.1:0", "--join", gw.addr("gossip"))
	eventually(t, 10*time.Second, "web-2 warns that it holds the CA key", func() error {
		if !strings.Contains(risky.logs(), "this sidecar holds the CA key") {
			return os.ErrNotExist
		}
		return nil
	})
	if strings.Contains(web.logs(), "holds the CA key") {
		t.Error("web-1, run on an issued SVID, warns about a CA key it does not have")
	}
}
