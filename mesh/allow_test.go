package mesh

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/proxy"
)

func TestCallerPatterns(t *testing.T) {
	for _, tt := range []struct {
		patterns []string
		path     string
		want     bool
	}{
		{[]string{"*"}, "edge/e1", true},
		{[]string{"service/api"}, "service/api", true},
		{[]string{"service/api"}, "service/apix", false},
		{[]string{"gateway/*"}, "gateway/eu/gw-1", true},
		{[]string{"gateway/*"}, "gateway/", false},
		{[]string{"gateway/eu/*"}, "gateway/us/gw-1", false},
		{[]string{"service/api", "gateway/*"}, "service/web", false},
	} {
		if got := callerAllowed(tt.patterns, tt.path); got != tt.want {
			t.Errorf("callerAllowed(%q, %q) = %v, want %v", tt.patterns, tt.path, got, tt.want)
		}
	}
	for _, bad := range []string{"", "/service/api", "service/", "spiffe://td/service/api", "service/*/x", "a//b", "service/a b", "../x"} {
		if err := validCallerPattern(bad); err == nil {
			t.Errorf("validCallerPattern(%q) accepted", bad)
		}
	}
	c := Config{Role: RoleEdge, Name: "e", CADir: "/x", PublicHTTP: "127.0.0.1:0", AllowCallers: []string{"*"}}
	c.SetDefaults()
	var fe *FieldError
	if err := c.Validate(); !errors.As(err, &fe) || fe.Field != "allow-callers" {
		t.Errorf("edge with allow-callers: %v, want a FieldError naming allow-callers", err)
	}
}

// TestAllowCallers: a sidecar that admits only service/api refuses the
// gateway's handshake, so the edge cannot reach it; one that admits
// gateway/* serves.
func TestAllowCallers(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "from the app")
	}))
	defer app.Close()
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	join := []string{gw.Addrs()["gossip"]}
	m.start(Config{Role: RoleSidecar, Name: "secret-1", Region: "eu", Service: "secret", Upstream: app.Listener.Addr().String(),
		Join: join, AllowCallers: []string{"service/api"}})
	m.start(Config{Role: RoleSidecar, Name: "open-1", Region: "eu", Service: "open", Upstream: app.Listener.Addr().String(),
		Join: join, AllowCallers: []string{"gateway/*", "service/api"}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	addr := edge.Addrs()["public-http"]
	poll(t, 15*time.Second, "edge serves open", func() error {
		resp, body, err := edgeGet(addr, "open.localhost", "/")
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 || body != "from the app" {
			return fmt.Errorf("%d %q", resp.StatusCode, body)
		}
		return nil
	})
	// secret is published (the edge knows it) but its sidecar refuses the
	// gateway: never a 200.
	poll(t, 15*time.Second, "edge knows secret", func() error {
		resp, body, err := edgeGet(addr, "secret.localhost", "/")
		if err != nil {
			return err
		}
		if resp.StatusCode == 200 {
			t.Fatalf("a refused caller got through: %q", body)
		}
		if resp.StatusCode != http.StatusBadGateway {
			return fmt.Errorf("%d %q", resp.StatusCode, body)
		}
		return nil
	})
}

// TestBalancerPrefersFasterInstance: the Handler measures each instance's
// time to answer and the catalog's balancer (P2C over proxy.Upstream.Cost)
// sends most requests to the faster one.
func TestBalancerPrefersFasterInstance(t *testing.T) {
	var slowN, fastN atomic.Int64
	slowApp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		slowN.Add(1)
		time.Sleep(20 * time.Millisecond)
	}))
	defer slowApp.Close()
	fastApp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fastN.Add(1) }))
	defer fastApp.Close()
	slow := &proxy.Upstream{Key: "slow", Addr: slowApp.Listener.Addr().String(), Name: "slow"}
	fast := &proxy.Upstream{Key: "fast", Addr: fastApp.Listener.Addr().String(), Name: "fast"}
	set := newUpstreamSet([]*proxy.Upstream{slow, fast}, nil)
	h := &proxy.Handler{Via: "test", Pool: &proxy.Pool{}, Route: func(*http.Request) ([]*proxy.Upstream, error) { return set.pick(), nil }}
	for i := 0; i < 60; i++ {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "http://web.mesh/", nil))
		if w.Code != 200 {
			t.Fatalf("request %d: %d", i, w.Code)
		}
	}
	if slowN.Load() > 5 {
		t.Fatalf("slow instance got %d of 60 sequential requests (fast %d), want only the few that measured it", slowN.Load(), fastN.Load())
	}
}

func TestAnycastBindConfig(t *testing.T) {
	base := Config{Role: RoleEdge, Name: "e", CADir: "/x", PublicHTTP: "127.0.0.1:0",
		BGPASN: "64512", BGPRouterID: "192.0.2.10", BGPPeers: []string{"192.0.2.1,64500"}}
	for _, tt := range []struct {
		name    string
		anycast []string
		bind    string
	}{
		{"without anycast", nil, "lo"},
		{"a prefix, not one address", []string{"198.51.100.0/24"}, "lo"},
	} {
		c := base
		c.Anycast, c.AnycastBind = tt.anycast, tt.bind
		if tt.anycast == nil {
			c.BGPASN, c.BGPRouterID, c.BGPPeers = "", "", nil
		}
		c.SetDefaults()
		_, err := c.speaker()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "anycast-bind" {
			t.Errorf("%s: %v, want a FieldError naming anycast-bind", tt.name, err)
		}
	}
	c := base
	c.Anycast, c.AnycastBind = []string{"198.51.100.10/32", "198.51.100.11/32"}, "lo"
	if _, err := c.speaker(); err != nil {
		t.Errorf("single addresses: %v", err)
	}
}
