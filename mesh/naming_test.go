package mesh

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// nameApp answers every request with its service name, never cacheable.
func nameApp(t *testing.T, name string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store") // every answer comes from the route
		io.WriteString(w, name)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// wantBody polls until a GET of host at addr answers code with a body
// containing want.
func wantBody(t *testing.T, addr, host string, code int, want string) *http.Response {
	t.Helper()
	var last *http.Response
	poll(t, 15*time.Second, fmt.Sprintf("%s answers %d %q", host, code, want), func() error {
		resp, body, err := edgeGet(addr, host, "/")
		if err != nil {
			return err
		}
		if resp.StatusCode != code || !strings.Contains(body, want) {
			return fmt.Errorf("%d %q", resp.StatusCode, body)
		}
		last = resp
		return nil
	})
	return last
}

// TestEdgeRefusesHostTakeover: a sidecar of another service that claims
// web's host names gets none of web's traffic; the edge shows the refused
// claims in /v1/routes, and the gateway logs them once with both services
// and both claiming instances.
func TestEdgeRefusesHostTakeover(t *testing.T) {
	m := newTestMesh(t)
	var gwLogs syncBuffer
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"}, func(n *Node) {
		n.Logger = slog.New(slog.NewTextHandler(&gwLogs, nil))
	})
	join := []string{gw.Addrs()["gossip"]}
	m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: nameApp(t, "web"),
		Domains: []string{"shop.example"}, Join: join})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	addr := edge.Addrs()["public-http"]
	wantBody(t, addr, "web.localhost", 200, "web")
	wantBody(t, addr, "shop.example", 200, "web")

	// api's sidecar claims both of web's names (and its own).
	m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: nameApp(t, "api"),
		Domains: []string{"web.localhost", "shop.example", "api.example"}, Join: join})
	wantBody(t, addr, "api.example", 200, "api") // the edge has api's record
	for i := 0; i < 20; i++ {
		for _, host := range []string{"web.localhost", "shop.example"} {
			resp, body, err := edgeGet(addr, host, "/")
			if err != nil || resp.StatusCode != 200 || body != "web" {
				t.Fatalf("%s: %v %v %q: taken over", host, err, resp, body)
			}
		}
	}

	// /v1/routes: both refused claims, with the owner and the reason.
	resp, err := http.Get("http://" + edge.Addrs()["admin"] + "/v1/routes")
	if err != nil {
		t.Fatal(err)
	}
	var routes []map[string]any
	err = json.NewDecoder(resp.Body).Decode(&routes)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	refused := map[string]string{}
	for _, r := range routes {
		c, _ := r["conflict"].(map[string]any)
		if r["via"] == "refused" && c != nil && c["refused"] == "api" {
			refused[fmt.Sprint(c["domain"])] = fmt.Sprint(c["owner"])
		}
	}
	if refused["web.localhost"] != "web" || refused["shop.example"] != "web" || len(refused) != 2 {
		t.Fatalf("refused claims in /v1/routes = %v; routes %v", refused, routes)
	}

	// The gateway sees the instances: it logs each conflict once, with
	// the claiming nodes of both sides.
	poll(t, 5*time.Second, "gateway logs the conflict", func() error {
		if !strings.Contains(gwLogs.String(), "domain=shop.example owner=web owner_nodes=[web-1] refused=api refused_nodes=[api-1]") {
			return fmt.Errorf("logs:\n%s", gwLogs.String())
		}
		return nil
	})
	edge.kickRebuild()
	gw.kickRebuild()
	wantBody(t, addr, "shop.example", 200, "web")
	if n := strings.Count(gwLogs.String(), "domain=shop.example owner=web"); n != 1 {
		t.Fatalf("conflict logged %d times:\n%s", n, gwLogs.String())
	}
}

// TestServiceTombstone: when the only instance of web leaves, the edge
// (and a gateway asked by a sidecar) answer 503 naming what they saw last,
// with Proxy-Status and Retry-After, for --service-tombstone; then 404.
func TestServiceTombstone(t *testing.T) {
	m := newTestMesh(t)
	clock := newFakeClock()
	withClock := func(n *Node) { n.now = clock.now }
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu", ServiceTombstone: time.Hour}, withClock)
	join := []string{gw.Addrs()["gossip"]}
	web := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: nameApp(t, "web"),
		Domains: []string{"shop.example"}, Join: join})
	client := m.start(Config{Role: RoleSidecar, Name: "client-1", Region: "eu", Service: "client", Upstream: nameApp(t, "client"),
		Join: join})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", ServiceTombstone: time.Hour,
		WANJoin: []string{gw.Addrs()["wan-gossip"]}}, withClock)
	addr, out := edge.Addrs()["public-http"], client.Addrs()["outbound"]
	wantBody(t, addr, "web.localhost", 200, "web")
	wantBody(t, addr, "shop.example", 200, "web")
	wantBody(t, out, "web.mesh", 200, "web")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	web.Shutdown(ctx)
	poll(t, 15*time.Second, "web gone from the edge's and the gateway's records", func() error {
		if edge.Snapshot().known["web"] || gw.Snapshot().known["web"] {
			return fmt.Errorf("still known")
		}
		return nil
	})
	clock.advance(12 * time.Second)

	const edgeWhy = "service web has no healthy instance (last one, in region eu, left 12s ago)"
	for _, host := range []string{"web.localhost", "shop.example"} {
		resp := wantBody(t, addr, host, 503, "meshd: "+edgeWhy)
		if got, want := resp.Header.Get("Proxy-Status"), `edge-1; error=destination_unavailable; details="`+edgeWhy+`"`; got != want {
			t.Errorf("%s: Proxy-Status %q, want %q", host, got, want)
		}
		if got := resp.Header.Get("Retry-After"); got != "5" {
			t.Errorf("%s: Retry-After %q, want 5", host, got)
		}
	}
	// The gateway knew the instance by name.
	wantBody(t, out, "web.mesh", 503, "meshd: service web has no healthy instance (last one, web-1, left 12s ago)")

	clock.advance(time.Hour)
	wantBody(t, addr, "web.localhost", 404, `no service is published at host "web.localhost"`)
	wantBody(t, addr, "shop.example", 404, `no service is published at host "shop.example"`)
	wantBody(t, out, "web.mesh", 404, `no service "web" in the mesh`)
}

// TestPolicyDecidesDomains: api claimed shop.example first and owns it;
// a policy that gives it to web moves it, and /v1/routes shows api's
// claim refused by the policy, not by the order of claims.
func TestPolicyDecidesDomains(t *testing.T) {
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	join := []string{gw.Addrs()["gossip"]}
	m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: nameApp(t, "api"),
		Domains: []string{"shop.example"}, Join: join})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	addr := edge.Addrs()["public-http"]
	wantBody(t, addr, "shop.example", 200, "api")
	m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: nameApp(t, "web"), Join: join})
	wantBody(t, addr, "web.localhost", 200, "web")

	doc := "services:\n  web:\n    domains: [shop.example]\n"
	if code, body := postPolicy(gw, signPolicy(t, m.caDir, doc, 1)); code != 200 {
		t.Fatalf("apply: %d %s", code, body)
	}
	wantBody(t, addr, "shop.example", 200, "web")
	routes := edge.routes(time.Now())
	var found bool
	for _, r := range routes {
		if r.Service == "web" && r.Via == "regions" && !slices.Contains(r.Domains, "shop.example") {
			t.Errorf("web's route lists domains %v, want shop.example among them", r.Domains)
		}
		if c := r.Conflict; c != nil && c.Domain == "shop.example" {
			found = true
			if c.Owner != "web" || c.Refused != "api" || !strings.Contains(c.Reason, "traffic policy (version 1)") {
				t.Errorf("conflict %+v, want api refused by the policy's version 1", *c)
			}
		}
	}
	if !found {
		t.Errorf("no refused claim on shop.example in %+v", routes)
	}
}
