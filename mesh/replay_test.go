package mesh

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestMeshReplay: the app in eu answers writes with Mesh-Replay:
// region=us; the edge replays them, body and all, in us, and the client
// sees only us's answer, without the field. A replay is made once, and a
// region that cannot serve it gets a clear 503.
func TestMeshReplay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five nodes: skipped with -short")
	}
	m := newTestMesh(t)
	gwEU := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	gwUS := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	app := func(region string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("Cache-Control", "no-store")
			switch {
			case region == "eu" && r.URL.Path == "/write":
				w.Header().Set(HeaderReplay, "region=us")
				w.WriteHeader(http.StatusConflict)
				io.WriteString(w, "eu cannot write")
				return
			case r.URL.Path == "/mars":
				w.Header().Set(HeaderReplay, "region=mars")
			case r.URL.Path == "/ping-pong":
				w.Header().Set(HeaderReplay, "region=eu; reason=loop")
				if region == "eu" {
					w.Header().Set(HeaderReplay, "region=us")
				}
			}
			fmt.Fprintf(w, "%s %s %s replayed=%s", region, r.Method, b, r.Header.Get(HeaderReplayed))
		}))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	m.start(Config{Role: RoleSidecar, Name: "web-eu", Region: "eu", Service: "web", Upstream: app("eu"), Join: []string{gwEU.Addrs()["gossip"]}})
	m.start(Config{Role: RoleSidecar, Name: "web-us", Region: "us", Service: "web", Upstream: app("us"), Join: []string{gwUS.Addrs()["gossip"]}})
	poll(t, 15*time.Second, "the edge sees web in both regions", func() error {
		if e, u := regionHealthy(edge, "web", "eu"), regionHealthy(edge, "web", "us"); e != 1 || u != 1 {
			return fmt.Errorf("eu %d, us %d", e, u)
		}
		return nil
	})
	wantBody(t, edge.Addrs()["public-http"], "web.localhost", 200, "eu GET")
	post := func(path, body string) (*http.Response, string) {
		return request(t, "POST", edge.Addrs()["public-http"], "web.localhost", path, body)
	}
	resp, body := post("/write", "hello")
	if resp.StatusCode != 200 || body != "us POST hello replayed=1" || resp.Header.Get(HeaderReplay) != "" {
		t.Errorf("a write replayed in us: %d %q, %s %q", resp.StatusCode, body, HeaderReplay, resp.Header.Get(HeaderReplay))
	}
	if v := metricValue(t, edge, "meshd_replays_total", nil); v != 1 {
		t.Errorf("meshd_replays_total = %v, want 1", v)
	}
	// Replayed once: us's own Mesh-Replay is dropped, not followed.
	resp, body = post("/ping-pong", "x")
	if resp.StatusCode != 200 || body != "us POST x replayed=1" || resp.Header.Get(HeaderReplay) != "" {
		t.Errorf("ping-pong: %d %q, %s %q", resp.StatusCode, body, HeaderReplay, resp.Header.Get(HeaderReplay))
	}
	resp, body = post("/mars", "x")
	if resp.StatusCode != 503 || !strings.Contains(body, "region mars") {
		t.Errorf("replay to a region nobody serves: %d %q, want 503 naming it", resp.StatusCode, body)
	}
}

// TestReplayWriterKeepsTrailers: the forwarding handler holds the header
// map across WriteHeader and sets trailers in it after the body (as gRPC
// needs); through the replay wrapper they still reach the client.
func TestReplayWriterKeepsTrailers(t *testing.T) {
	n := &Node{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	h := n.replay(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hdr := w.Header()
		hdr.Set("Trailer", "Grpc-Status")
		w.WriteHeader(200)
		io.WriteString(w, "body")
		hdr.Set("Grpc-Status", "0")
	}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, withRoute(r, &reqRoute{service: "web"}))
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "body" || resp.Trailer.Get("Grpc-Status") != "0" {
		t.Errorf("body %q, trailer %v; want the trailer Grpc-Status: 0", b, resp.Trailer)
	}
}
