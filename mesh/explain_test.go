package mesh

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// explainAt asks a node's admin API to explain a request.
func explainAt(t *testing.T, n *Node, rawURL, from string) *Explanation {
	t.Helper()
	q := url.Values{"url": {rawURL}}
	if from != "" {
		q.Set("from", from)
	}
	code, body, err := adminGetTCP(n, "/v1/explain?"+q.Encode())
	if err != nil || code != 200 {
		t.Fatalf("explain %s: %d %s %v", rawURL, code, body, err)
	}
	var e Explanation
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatal(err)
	}
	return &e
}

// servedBody makes a request through the edge and returns the app that
// answered: web-REGION.
func servedBody(edge *Node, host string) (string, error) {
	resp, body, err := edgeGet(edge.Addrs()["public-http"], host, "/")
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("%d %s", resp.StatusCode, body)
	}
	return body, err
}

// TestExplain: an edge explains where a request for web goes (its own
// region's gateway, the other region's as the fallback), and the request
// goes there; with the nearest region's instance gone the explanation and
// the request move to the other region together; an unknown host is
// explained as claimed by no service; a policy's authorization refusal is
// explained for the caller it refuses and not for one it allows.
func TestExplain(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five nodes: skipped with -short")
	}
	m := newTestMesh(t)
	gwEU := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	gwUS := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	webEU := m.start(Config{Role: RoleSidecar, Name: "web-eu", Region: "eu", Service: "web", Upstream: nameApp(t, "web-eu"),
		Join: []string{gwEU.Addrs()["gossip"]}})
	m.start(Config{Role: RoleSidecar, Name: "web-us", Region: "us", Service: "web", Upstream: nameApp(t, "web-us"),
		Join: []string{gwUS.Addrs()["gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	poll(t, 15*time.Second, "the edge sees web in both regions", func() error {
		if e := explainAt(t, edge, "http://web.localhost/", ""); len(e.Regions) != 2 {
			return fmt.Errorf("regions %+v", e.Regions)
		}
		return nil
	})

	e := explainAt(t, edge, "http://web.localhost/a", "")
	if e.Service != "web" || e.Pick == nil || e.Pick.Name != "gw-eu" || e.Pick.Region != "eu" || len(e.Refused) != 0 {
		t.Fatalf("explain: %+v\n%s", e, e)
	}
	if len(e.Candidates) != 2 || e.Candidates[1].Name != "gw-us" || e.Candidates[1].Group != "fallback" {
		t.Errorf("candidates %+v, want gw-eu preferred then gw-us as fallback", e.Candidates)
	}
	if body, err := servedBody(edge, "web.localhost"); err != nil || body != "web-"+e.Pick.Region {
		t.Errorf("the request went to %q (%v); explained: %s", body, err, e.Verdict)
	}
	if !strings.Contains(e.String(), "verdict    goes to gw-eu in eu") {
		t.Errorf("text:\n%s", e)
	}

	// eu's only instance goes: the explanation and the traffic move.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	webEU.Shutdown(ctx)
	poll(t, 15*time.Second, "explain picks gw-us", func() error {
		if e = explainAt(t, edge, "http://web.localhost/", ""); e.Pick == nil || e.Pick.Name != "gw-us" {
			return fmt.Errorf("%s", e.Verdict)
		}
		return nil
	})
	if body, err := servedBody(edge, "web.localhost"); err != nil || body != "web-"+e.Pick.Region {
		t.Errorf("after eu's instance left the request went to %q (%v); explained: %s", body, err, e.Verdict)
	}

	e = explainAt(t, edge, "http://nope.example/", "")
	if e.Service != "" || e.Pick != nil || !strings.Contains(e.Verdict, `no service claims host "nope.example"`) {
		t.Errorf("unknown host: %+v", e)
	}
	if resp, _, err := edgeGet(edge.Addrs()["public-http"], "nope.example", "/"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the edge serves the host explained as unknown: %v %v", resp, err)
	}

	applyAndWait(t, m, gwEU, `
services:
  web:
    authorization:
      default: deny
      rules:
        - name: public
          callers: [edge]
`, edge)
	if e = explainAt(t, edge, "http://web.localhost/", ""); e.Authz != "allowed (rule public)" || len(e.Refused) != 0 || e.Policy != 1 {
		t.Errorf("the public under the policy: %+v", e)
	}
	e = explainAt(t, gwUS, "http://web.mesh/admin", "batch")
	if !strings.Contains(e.Authz, "refused") || len(e.Refused) == 0 || !strings.Contains(e.Verdict, "authorization") ||
		!strings.Contains(e.Verdict, "spiffe://test.meshd/service/batch") {
		t.Errorf("batch under the policy: %+v", e)
	}
	// A bad argument is a 400 naming it.
	if code, body, _ := adminGetTCP(edge, "/v1/explain?url=web.localhost"); code != http.StatusBadRequest || !strings.Contains(body, "url") {
		t.Errorf("explain without a scheme: %d %s", code, body)
	}
}
