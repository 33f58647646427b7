package mesh

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// noHealthChecks keeps a sidecar from noticing that its app died: what is
// tested is what the data path does before any health check could.
func noHealthChecks(n *Node) { n.Config.HealthInterval = time.Hour }

// regionHealthy reports the healthy count of svc in region as node n sees
// it, -1 when it lists no such row.
func regionHealthy(n *Node, svc, region string) int {
	for _, s := range n.Snapshot().Services {
		if s.Service == svc && s.Region == region {
			return s.Healthy
		}
	}
	return -1
}

// servedBy polls the edge until host answers with a body naming each of
// instances.
func servedBy(t *testing.T, edge *Node, host string, instances ...string) {
	t.Helper()
	seen := map[string]bool{}
	poll(t, 15*time.Second, host+" served by "+strings.Join(instances, " and "), func() error {
		resp, body, err := edgeGet(edge.Addrs()["public-http"], host, "/")
		if err != nil {
			return err
		}
		if resp.StatusCode == 200 {
			seen[body] = true
		}
		for _, in := range instances {
			if !seen[in] {
				return fmt.Errorf("seen %v, last %d %q", seen, resp.StatusCode, body)
			}
		}
		return nil
	})
}

// sequential sends n GETs of host through the edge one after the other
// and returns the bodies of the 200s and the other answers.
func sequential(t *testing.T, edge *Node, host string, n int) (served map[string]int, failed []string) {
	t.Helper()
	served = map[string]int{}
	for i := 0; i < n; i++ {
		resp, body, err := edgeGet(edge.Addrs()["public-http"], host, "/")
		switch {
		case err != nil:
			failed = append(failed, err.Error())
		case resp.StatusCode != 200:
			failed = append(failed, fmt.Sprintf("%d %q Proxy-Status %q", resp.StatusCode, body, resp.Header.Get("Proxy-Status")))
		default:
			served[body]++
		}
	}
	return served, failed
}

// TestCrashedAppRetried: an app dies while its sidecar runs on; before
// any health check notices, the sidecar's answer (502, connection_refused
// to its app, and the retry signal) makes the gateway send each request to
// the other instance, and the gateway leaves the dead one out of its
// region's summary once it ejected it.
func TestCrashedAppRetried(t *testing.T) {
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	join := []string{gw.Addrs()["gossip"]}
	crashing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprint(w, "web-1")
	}))
	defer crashing.Close()
	m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: crashing.Listener.Addr().String(), Join: join}, noHealthChecks)
	m.start(Config{Role: RoleSidecar, Name: "web-2", Region: "eu", Service: "web", Upstream: nameApp(t, "web-2"), Join: join}, noHealthChecks)
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	servedBy(t, edge, "web.localhost", "web-1", "web-2")

	crashing.Close() // the app is gone; its sidecar and its record stay
	served, failed := sequential(t, edge, "web.localhost", 60)
	if len(failed) > 0 || served["web-2"] != 60 {
		t.Fatalf("after web-1's app died: served %v, %d failed: %v", served, len(failed), failed[:min(3, len(failed))])
	}
	took := poll(t, 5*time.Second, "the edge sees one healthy web instance in eu", func() error {
		if h := regionHealthy(edge, "web", "eu"); h != 1 {
			return fmt.Errorf("healthy %d", h)
		}
		return nil
	})
	t.Logf("60 requests after the crash all served by web-2; the edge saw web-1 left out of eu's summary %v later", took)
}

// TestUntrustedNodeRefused: a node with the gossip key but a certificate
// from another CA publishes itself as a healthy instance of web in eu. Its
// record does not verify against the trust bundle (signedrec.go), so no
// peer believes it: eu has no web instance, every request is served from
// us, and the refusal is counted.
func TestUntrustedNodeRefused(t *testing.T) {
	m := newTestMesh(t)
	other := filepath.Join(t.TempDir(), "other-ca")
	if err := tlsmgr.InitCA(other, "test.meshd"); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(m.caDir, tlsmgr.GossipKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, tlsmgr.GossipKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	gwEU := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	gwUS := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	bad := m.start(Config{Role: RoleSidecar, Name: "web-bad", Region: "eu", Service: "web", Upstream: nameApp(t, "web-bad"),
		Join: []string{gwEU.Addrs()["gossip"]}}, func(n *Node) { n.Config.CADir = other })
	m.start(Config{Role: RoleSidecar, Name: "web-us", Region: "us", Service: "web", Upstream: nameApp(t, "web-us"),
		Join: []string{gwUS.Addrs()["gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	poll(t, 15*time.Second, "gw-eu refuses web-bad's record and the edge sees web in us", func() error {
		if v := metricValue(t, gwEU, "meshd_gossip_records_refused_total", nil); v < 1 {
			return fmt.Errorf("refused %v", v)
		}
		if us := regionHealthy(edge, "web", "us"); us != 1 {
			return fmt.Errorf("us %d", us)
		}
		return nil
	})
	if eu := regionHealthy(gwEU, "web", "eu"); eu > 0 {
		t.Errorf("gw-eu counts %d healthy web instances in eu, want none", eu)
	}
	served, failed := sequential(t, edge, "web.localhost", 30)
	if len(failed) > 0 || served["web-us"] != 30 {
		t.Fatalf("with eu's only instance untrusted: served %v, %d failed: %v", served, len(failed), failed[:min(3, len(failed))])
	}
	// The node dials the gateway itself: the handshake is refused, counted
	// and logged with the identity it claimed.
	// It presents its SVID and, to get that far, takes any server.
	svid, err := bad.ids.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	var chain [][]byte
	for _, c := range svid.Certificates {
		chain = append(chain, c.Raw)
	}
	cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"},
		Certificates: []tls.Certificate{{Certificate: chain, PrivateKey: svid.PrivateKey}}}
	if c, err := tls.Dial("tcp", gwEU.Addrs()["mesh"], cfg); err == nil {
		// TLS 1.3: the client learns of the refusal on its first read.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	poll(t, 5*time.Second, "gw-eu counts a peer of an unknown root", func() error {
		if v := metricValue(t, gwEU, "meshd_tls_peers_refused_total", map[string]string{"reason": "unknown_root"}); v < 1 {
			return fmt.Errorf("unknown_root %v", v)
		}
		return nil
	})
}
