package mesh

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// testMesh starts in-process nodes on 127.0.0.1 port 0 sharing one CA.
type testMesh struct {
	t     *testing.T
	caDir string
}

func newTestMesh(t *testing.T) *testMesh {
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := tlsmgr.InitCA(caDir, "test.meshd"); err != nil {
		t.Fatal(err)
	}
	return &testMesh{t: t, caDir: caDir}
}

// start starts a node; opts run on it before Start (a clock, a logger).
func (m *testMesh) start(c Config, opts ...func(*Node)) *Node {
	m.t.Helper()
	c.CADir = m.caDir
	c.DrainDelay = time.Millisecond
	for _, f := range []*string{&c.Listen, &c.GossipAddr, &c.WANGossipAddr, &c.Outbound, &c.Admin} {
		if *f == "" {
			*f = "127.0.0.1:0"
		}
	}
	if c.Role == RoleEdge && c.PublicHTTP == "" {
		c.PublicHTTP = "127.0.0.1:0"
	}
	c.HealthInterval = 200 * time.Millisecond
	if c.DataDir == "" {
		c.DataDir = m.t.TempDir() // where the node keeps the policy it runs
	}
	n := &Node{Config: c, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, o := range opts {
		o(n)
	}
	if err := n.Start(context.Background()); err != nil {
		m.t.Fatalf("start %s: %v", c.Name, err)
	}
	m.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.Shutdown(ctx)
	})
	return n
}

func poll(t *testing.T, d time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < d {
		if err = cond(); err == nil {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, d, err)
	return 0
}

func edgeGet(addr, host, path string) (*http.Response, string, error) {
	req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body), nil
}

// TestEdgeCacheAndGossipPurge: five edges cache a response; a purge at one
// reaches all five through gossip.
func TestEdgeCacheAndGossipPurge(t *testing.T) {
	if testing.Short() {
		t.Skip("starts seven nodes: skipped with -short")
	}
	var origin atomic.Int64
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := origin.Add(1)
		w.Header().Set("Cache-Control", "public, max-age=300")
		w.Header().Set("Cache-Tag", "page, "+strings.Trim(r.URL.Path, "/"))
		fmt.Fprintf(w, "response %d for %s\n", n, r.URL.Path)
	}))
	defer app.Close()

	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: app.Listener.Addr().String(),
		Join: []string{gw.Addrs()["gossip"]}})
	var edges []*Node
	for i := 1; i <= 5; i++ {
		edges = append(edges, m.start(Config{Role: RoleEdge, Name: fmt.Sprintf("edge-%d", i), Region: "eu",
			WANJoin: []string{gw.Addrs()["wan-gossip"]}}))
	}
	for _, e := range edges {
		poll(t, 15*time.Second, e.Config.Name+" serves web", func() error {
			resp, body, err := edgeGet(e.Addrs()["public-http"], "web.localhost", "/warm")
			if err != nil {
				return err
			}
			if resp.StatusCode != 200 {
				return fmt.Errorf("%d %s", resp.StatusCode, body)
			}
			return nil
		})
	}

	// Each edge stores /a; the second request is a hit, and the Cache-Tag
	// header never leaves the edge.
	for _, e := range edges {
		addr := e.Addrs()["public-http"]
		edgeGet(addr, "web.localhost", "/a")
		resp, _, err := edgeGet(addr, "web.localhost", "/a")
		if err != nil {
			t.Fatal(err)
		}
		if cs := resp.Header.Get("Cache-Status"); !strings.Contains(cs, "hit") {
			t.Fatalf("%s: second request Cache-Status %q, want a hit", e.Config.Name, cs)
		}
		if resp.Header.Get("Cache-Tag") != "" {
			t.Fatalf("%s: Cache-Tag leaked to the client", e.Config.Name)
		}
	}
	before := origin.Load()

	// A bad purge is refused and changes nothing.
	admin := edges[0].Addrs()["admin"]
	for _, body := range []string{`{}`, `{"url":"x"}`, `{"url":"http://a/","tag":"t"}`, `{"nope":1}`, `not json`} {
		resp, err := http.Post("http://"+admin+"/v1/cache/purge", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("purge %s: %d, want 400", body, resp.StatusCode)
		}
	}

	poll(t, 10*time.Second, "edge-1 sees all five edges", func() error {
		n := 0
		for _, m := range edges[0].Snapshot().Members {
			if m.Pool == "global" && m.Role == RoleEdge {
				n++
			}
		}
		if n != 5 {
			return fmt.Errorf("%d edges", n)
		}
		return nil
	})
	start := time.Now()
	resp, err := http.Post("http://"+admin+"/v1/cache/purge", "application/json", bytes.NewReader([]byte(`{"url":"http://web.localhost/a"}`)))
	if err != nil {
		t.Fatal(err)
	}
	var res PurgeResult
	json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if resp.StatusCode != 200 || res.Removed != 1 || res.Edges != 5 {
		t.Fatalf("purge answered %d %+v", resp.StatusCode, res)
	}
	var slowest time.Duration
	for _, e := range edges {
		addr := e.Addrs()["public-http"]
		poll(t, 5*time.Second, "purge reaches "+e.Config.Name, func() error {
			resp, _, err := edgeGet(addr, "web.localhost", "/a")
			if err != nil {
				return err
			}
			if cs := resp.Header.Get("Cache-Status"); strings.Contains(cs, "hit") {
				return fmt.Errorf("still a hit")
			}
			return nil
		})
		if d := time.Since(start); d > slowest {
			slowest = d
		}
	}
	t.Logf("purge of one URL reached all 5 edges within %v", slowest)
	if got := origin.Load() - before; got != 5 {
		t.Fatalf("origin saw %d requests after the purge, want one per edge", got)
	}

	// Purge by tag, from another edge.
	start = time.Now()
	resp, err = http.Post("http://"+edges[3].Addrs()["admin"]+"/v1/cache/purge", "application/json", strings.NewReader(`{"tag":"page"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, e := range edges {
		addr := e.Addrs()["public-http"]
		poll(t, 5*time.Second, "tag purge reaches "+e.Config.Name, func() error {
			resp, _, err := edgeGet(addr, "web.localhost", "/a")
			if err != nil {
				return err
			}
			if strings.Contains(resp.Header.Get("Cache-Status"), "hit") {
				return fmt.Errorf("still a hit")
			}
			return nil
		})
	}
	t.Logf("purge by tag reached all 5 edges within %v", time.Since(start))

	// Unknown hosts are refused before the cache and never stored.
	resp2, body, _ := edgeGet(edges[0].Addrs()["public-http"], "evil.example", "/a")
	if resp2.StatusCode != 404 || !strings.Contains(body, "no service") {
		t.Fatalf("unknown host: %d %s", resp2.StatusCode, body)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"256MiB": 256 << 20, "8MB": 8e6, "64k": 64 << 10, "1048576": 1 << 20, "0": 0, " 1 GiB ": 1 << 30} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1", "1.5GiB", "lots", "99999999999GiB"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

// TestEdgeReadiness: an edge is ready only while a gateway answers its
// probes, and reports it on /readyz.
func TestEdgeReadiness(t *testing.T) {
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	readyz := func() int {
		resp, err := http.Get("http://" + edge.Addrs()["admin"] + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	poll(t, 10*time.Second, "edge ready once the gateway answers", func() error {
		if c := readyz(); c != 200 {
			return fmt.Errorf("readyz %d", c)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gw.Shutdown(ctx)
	poll(t, 5*time.Second, "edge not ready once no gateway answers", func() error {
		if c := readyz(); c != http.StatusServiceUnavailable {
			return fmt.Errorf("readyz %d", c)
		}
		return nil
	})
}
