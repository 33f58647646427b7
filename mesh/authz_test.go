package mesh

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestAuthorizationPolicy: web's policy denies by default, allows api
// everything, batch only GETs under /public and the public (through an
// edge) anything. api calls through two gateways from another region and
// is allowed; batch is denied /admin with a 403 that names the rule, and
// the app never sees it; a caller the app or the public forges in
// X-Mesh-Caller changes nothing.
func TestAuthorizationPolicy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts six nodes: skipped with -short")
	}
	m := newTestMesh(t)
	gwEU := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	gwUS := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	var seen atomic.Int64
	var lastCaller, lastXFF atomic.Value
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		lastCaller.Store(r.Header.Get(HeaderCaller))
		lastXFF.Store(r.Header.Get("X-Forwarded-For") + "|" + r.Header.Get("Forwarded"))
		w.Header().Set("Cache-Control", "no-store")
		io.WriteString(w, "web")
	}))
	defer app.Close()
	web := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: app.Listener.Addr().String(),
		Join: []string{gwEU.Addrs()["gossip"]}})
	api := m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "us", Service: "api", Upstream: nameApp(t, "api"),
		Join: []string{gwUS.Addrs()["gossip"]}})
	batch := m.start(Config{Role: RoleSidecar, Name: "batch-1", Region: "eu", Service: "batch", Upstream: nameApp(t, "batch"),
		Join: []string{gwEU.Addrs()["gossip"]}})
	wantBody(t, api.Addrs()["outbound"], "web.mesh", 200, "web")
	wantBody(t, batch.Addrs()["outbound"], "web.mesh", 200, "web")
	wantBody(t, edge.Addrs()["public-http"], "web.localhost", 200, "web")

	const doc = `
services:
  web:
    authorization:
      default: deny
      rules:
        - name: api-all
          callers: [service/api]
        - name: batch-public
          callers: [service/batch]
          match: {path-prefix: /public, methods: [GET]}
        - name: public
          callers: [edge]
`
	applyAndWait(t, m, gwEU, doc, web)
	call := func(from *Node, path, forged string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+from.Addrs()["outbound"]+path, nil)
		req.Host = "web.mesh"
		if forged != "" {
			req.Header.Set(HeaderCaller, forged)
		}
		req.Header.Set("X-Forwarded-For", "203.0.113.9") // an app's claim
		req.Header.Set("Forwarded", "for=203.0.113.9")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	if resp, body := call(api, "/admin", ""); resp.StatusCode != 200 || body != "web" {
		t.Errorf("api (us, through two gateways) GET /admin: %d %q, want 200", resp.StatusCode, body)
	}
	if got := lastCaller.Load(); got != "spiffe://test.meshd/service/api" {
		t.Errorf("the app saw caller %v for api's call", got)
	}
	if got := lastXFF.Load(); got != "|" {
		t.Errorf("the app saw X-Forwarded-For|Forwarded %q from another app, want nothing", got)
	}
	if resp, _ := call(batch, "/public/x", ""); resp.StatusCode != 200 {
		t.Errorf("batch GET /public/x: %d, want 200", resp.StatusCode)
	}
	before := seen.Load()
	resp, body := call(batch, "/admin", "spiffe://test.meshd/service/api") // a forged caller
	if resp.StatusCode != 403 || !strings.Contains(body, "does not allow spiffe://test.meshd/service/batch to GET /admin (rule default)") ||
		!strings.Contains(resp.Header.Get("Proxy-Status"), "http_request_denied") {
		t.Errorf("batch GET /admin with a forged caller: %d %q, Proxy-Status %q; want 403 naming batch and the rule",
			resp.StatusCode, body, resp.Header.Get("Proxy-Status"))
	}
	if seen.Load() != before {
		t.Error("a denied request reached the app")
	}
	// The public: through the edge, as the edge; a forged field is dropped.
	req, _ := http.NewRequest("GET", "http://"+edge.Addrs()["public-http"]+"/anything", nil)
	req.Host = "web.localhost"
	req.Header.Set(HeaderCaller, "spiffe://test.meshd/service/api")
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Errorf("public GET through the edge: %v %v, want 200", resp, err)
	} else {
		resp.Body.Close()
	}
	if got := lastCaller.Load(); got != "spiffe://test.meshd/edge/edge-1" {
		t.Errorf("the app saw caller %v for a public request, want the edge", got)
	}
	if got := lastXFF.Load().(string); !strings.HasPrefix(got, "127.0.0.1|for=127.0.0.1") {
		t.Errorf("the app saw X-Forwarded-For|Forwarded %q for a public request, want what the edge saw", got)
	}
	if v := metricValue(t, web, "meshd_authz_denied_total", map[string]string{"service": "web", "rule": "default"}); v != 1 {
		t.Errorf("meshd_authz_denied_total{rule=default} = %v, want 1", v)
	}
}
