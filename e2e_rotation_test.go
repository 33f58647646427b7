package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// TestRootRotationKeysOff: the root rotation of README.md's "Rotating the
// root", with processes and the keys off the nodes (deploy/README.md): the
// operator runs `meshd ca rotate` in its CA directory, copies ca.crt to
// the nodes and re-issues their SVIDs after switch; `meshd ca status`
// says when each step has reached every node. A request loop through
// edge → gateway → sidecar runs through the three steps and none fails;
// a client still on the old root after finish is refused by the gateway
// as unknown_root, in its log and its metrics.
func TestRootRotationKeysOff(t *testing.T) {
	if testing.Short() {
		t.Skip("process end-to-end test: skipped with -short")
	}
	dir := t.TempDir()
	caDir, nodeDir, staleDir := filepath.Join(dir, "ca"), filepath.Join(dir, "node"), filepath.Join(dir, "stale")
	if err := tlsmgr.InitCA(caDir, "rot.meshd"); err != nil {
		t.Fatal(err)
	}
	// install copies a file of the CA directory to a node's, atomically as
	// a config management tool would.
	install := func(to, name string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(caDir, name))
		if err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(to, "."+name+".tmp")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(to, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{nodeDir, staleDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		install(d, tlsmgr.CACertFile)
		install(d, tlsmgr.GossipKeyFile)
	}
	meshd := func(args ...string) (string, error) {
		out, err := exec.Command(meshdBin, args...).CombinedOutput()
		return string(out), err
	}
	issue := func(in, id, name string) []string {
		t.Helper()
		cert, key := filepath.Join(in, name+".crt"), filepath.Join(in, name+".key")
		if out, err := meshd("ca", "issue", "--dir", caDir, "--id", id, "--cert", cert, "--key", key, "--ttl", "1h"); err != nil {
			t.Fatalf("ca issue: %v\n%s", err, out)
		}
		return []string{"--cert-file", cert, "--key-file", key}
	}
	ids := map[string]string{"gw": "spiffe://rot.meshd/gateway/eu/gw-eu", "web": "spiffe://rot.meshd/service/web", "edge": "spiffe://rot.meshd/edge/edge-1"}
	reissue := func() {
		for name, id := range ids {
			issue(nodeDir, id, name)
		}
	}
	issue(staleDir, "spiffe://rot.meshd/service/legacy", "legacy") // from the old root, kept for after finish

	common := []string{"--ca-dir", nodeDir, "--ca-poll", "200ms", "--listen", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--wan-gossip-addr", "127.0.0.1:0"}
	with := func(a ...[]string) []string {
		out := append([]string{}, common...)
		for _, x := range a {
			out = append(out, x...)
		}
		return out
	}
	gw := startNode(t, "gw-eu", with([]string{"--role", "gateway", "--region", "eu"}, issue(nodeDir, ids["gw"], "gw"))...)
	web := startNode(t, "web-1", with([]string{"--role", "sidecar", "--region", "eu", "--service", "web",
		"--upstream", startLiveApp(t, "web", "web-1", "eu").addr(), "--outbound", "127.0.0.1:0", "--join", gw.addr("gossip"),
		"--health-interval", "300ms"}, issue(nodeDir, ids["web"], "web"))...)
	edge := startNode(t, "edge-1", with([]string{"--role", "edge", "--region", "eu", "--public-http", "127.0.0.1:0",
		"--wan-join", gw.addr("wan-gossip")}, issue(nodeDir, ids["edge"], "edge"))...)
	public := edge.addr("public-http")
	servedBy(t, public, "web.localhost", "web-1")

	status := func() error {
		out, err := meshd("ca", "status", "--dir", caDir, "--admin", gw.addr("admin")+","+edge.addr("admin"))
		if err != nil {
			return fmt.Errorf("%v:\n%s", err, out)
		}
		if strings.Count(out, "\n") < 4 { // the target line, the header, three nodes
			return fmt.Errorf("fewer than three nodes:\n%s", out)
		}
		return nil
	}
	eventually(t, 20*time.Second, "ca status before the rotation", status)

	var sent, failed atomic.Int64
	var firstErr atomic.Value
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(3 * time.Minute)
		for i := 0; i < 30000 && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			resp, body, err := get(public, "web.localhost", fmt.Sprintf("/r/%d", i))
			if err == nil && resp.StatusCode != 200 {
				err = fmt.Errorf("status %d: %s", resp.StatusCode, body)
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	stopped := false
	stopLoop := func() {
		if !stopped {
			stopped = true
			close(stop)
			<-done
		}
	}
	defer stopLoop()

	step := func(name string, after func()) {
		t.Helper()
		start := time.Now()
		// --admin: the step itself checks that the one before reached every node.
		if out, err := meshd("ca", "rotate", name, "--dir", caDir, "--admin", gw.addr("admin")+","+edge.addr("admin")); err != nil {
			t.Fatalf("ca rotate %s: %v\n%s", name, err, out)
		}
		after()
		d := eventually(t, 60*time.Second, name+": meshd ca status exits 0", status)
		t.Logf("rotation timeline: %-6s reached every node (ca status exit 0) %v after the step (%v of it the meshd ca rotate command and the operator's copying and issuing); %d requests so far, %d failed",
			name, time.Since(start).Round(time.Millisecond), (time.Since(start) - d).Round(time.Millisecond), sent.Load(), failed.Load())
	}
	step("begin", func() { install(nodeDir, tlsmgr.CACertFile) })
	step("switch", reissue)
	step("finish", func() { install(nodeDir, tlsmgr.CACertFile) })
	time.Sleep(500 * time.Millisecond) // requests after the last step, too
	stopLoop()
	t.Logf("request loop: %d sent, %d failed", sent.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed during the rotation; first: %v\ngw:\n%s\nweb:\n%s\nedge:\n%s", failed.Load(), sent.Load(), firstErr.Load(),
			gw.logs(), web.logs(), edge.logs())
	}
	if sent.Load() < 50 {
		t.Errorf("only %d requests sent", sent.Load())
	}
	if strings.Contains(web.logs(), "tls: refused a peer") || strings.Contains(gw.logs(), "tls: refused a peer") {
		t.Errorf("a node refused a peer during the rotation:\ngw:\n%s\nweb:\n%s", gw.logs(), web.logs())
	}

	// A client still on the old root: its SVID and bundle from before
	// begin.
	legacy := &tlsmgr.Manager{CADir: staleDir, CertFile: filepath.Join(staleDir, "legacy.crt"), KeyFile: filepath.Join(staleDir, "legacy.key"),
		Logger: newLogger(io.Discard, "text", "info", new(slog.LevelVar))}
	if err := legacy.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer legacy.Close()
	cfg, err := legacy.ClientTLS(ids["gw"], "http/1.1")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := tls.Dial("tcp", gw.addr("listen"), cfg); err == nil {
		c.Close()
		t.Fatal("a client on the old root completed a handshake with the gateway")
	} else {
		t.Logf("a client on the old root dialing the gateway: %v", err)
	}
	// The gateway's side: a client that presents the old SVID without
	// checking the gateway's (a node's own check, above, would stop
	// first) is refused for it.
	pair, err := tls.LoadX509KeyPair(filepath.Join(staleDir, "legacy.crt"), filepath.Join(staleDir, "legacy.key"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", gw.addr("listen"), &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1)) // TLS 1.3: the server's refusal arrives after the client's Finished
		c.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "bad certificate") && !strings.Contains(err.Error(), "unknown certificate authority") {
		t.Errorf("an old-root client certificate: %v, want the gateway to refuse it", err)
	}
	eventually(t, 10*time.Second, "the gateway logs the refusal", func() error {
		re := regexp.MustCompile(`"msg":"tls: refused a peer".*"peer":"spiffe://rot.meshd/service/legacy","reason":"unknown_root","issuer":"CN=meshd root CA rot.meshd,O=meshd keyid [0-9a-f]+"`)
		if !re.MatchString(gw.logs()) {
			return fmt.Errorf("no such line in:\n%s", gw.logs())
		}
		return nil
	})
	_, body, err := get(gw.addr("admin"), gw.addr("admin"), "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`meshd_tls_peers_refused_total\{reason="unknown_root",[^}]*\} ([0-9]+)`).FindSubmatch(body); m == nil || string(m[1]) == "0" {
		t.Errorf("the gateway's metrics do not count the refusal: %q", m)
	}
}
