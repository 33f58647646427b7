package mesh

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"
	"time"
)

// TestHopsResumeTLSSessions: once a hop has connected, its next
// connection to the same peer resumes the TLS session (tlsmgr counts the
// resumed handshakes it re-authorized), over the HTTP/2 connection from an
// edge to a gateway of another region and over the HTTP/1.1 connections
// from a gateway to a sidecar.
func TestHopsResumeTLSSessions(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "from the app")
	}))
	defer app.Close()
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	sc := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: app.Listener.Addr().String(),
		Join: []string{gw.Addrs()["gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-us", Region: "us", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	addr := edge.Addrs()["public-http"]
	get := func() error {
		resp, body, err := edgeGet(addr, "web.localhost", "/")
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 || body != "from the app" {
			return fmt.Errorf("%d %q", resp.StatusCode, body)
		}
		return nil
	}
	poll(t, 15*time.Second, "edge serves web", get)
	for i := range 3 {
		edgeBefore, scBefore := edge.ids.Resumed(), sc.ids.Resumed()
		// Every hop's next request needs a new connection.
		edge.pool.CloseIdle()
		gw.pool.CloseIdle()
		if err := get(); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if edge.ids.Resumed() == edgeBefore {
			t.Errorf("request %d: the edge's new HTTP/2 connection to the gateway did not resume", i)
		}
		if sc.ids.Resumed() == scBefore {
			t.Errorf("request %d: the gateway's new HTTP/1.1 connection to the sidecar did not resume", i)
		}
	}
	resp, err := http.Get("http://" + sc.Addrs()["admin"] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if m := regexp.MustCompile(`(?m)^meshd_tls_resumed_total\{.*\} (\d+)$`).FindStringSubmatch(string(b)); m == nil || m[1] == "0" {
		t.Errorf("/metrics: meshd_tls_resumed_total %v, want a count above 0", m)
	}
}
