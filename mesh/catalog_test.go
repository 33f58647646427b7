package mesh

import (
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/proxy"
)

type fakeMaker struct{}

func (fakeMaker) instanceUpstream(svc string, r *NodeRecord) *proxy.Upstream {
	return &proxy.Upstream{Key: r.MeshAddr + "|" + svc, Addr: r.MeshAddr, Name: r.Name}
}

func (fakeMaker) gatewayUpstream(r *NodeRecord) *proxy.Upstream {
	return &proxy.Upstream{Key: r.MeshAddr + "|gw", Addr: r.MeshAddr, Name: r.Name}
}

func sidecar(name, region, svc string, healthy int, state string) member {
	return member{rec: &NodeRecord{Name: name, Role: RoleSidecar, Region: region, MeshAddr: "127.0.0.1:1", State: state,
		Services: []ServiceRecord{{Name: svc, Healthy: healthy}}}}
}

func gateway(name, region string, svcs ...ServiceRecord) member {
	return member{rec: &NodeRecord{Name: name, Role: RoleGateway, Region: region, MeshAddr: "127.0.0.2:1", State: StateReady, Services: svcs}}
}

func names(ups []*proxy.Upstream) []string {
	var out []string
	for _, u := range ups {
		out = append(out, u.Name)
	}
	return out
}

func TestSnapshotLocalInstances(t *testing.T) {
	lan := []member{
		sidecar("web-1", "eu", "web", 1, StateReady),
		sidecar("web-2", "eu", "web", 1, StateReady),
		sidecar("web-3", "eu", "web", 0, StateReady),    // unhealthy
		sidecar("web-4", "eu", "web", 1, StateDraining), // draining
		sidecar("web-5", "us", "web", 1, StateReady),    // stray from another region
		gateway("gw-eu", "eu"),
	}
	s := buildSnapshot(RoleGateway, "eu", lan, nil, fakeMaker{}, nil)
	// Equal load: both instances go first about as often.
	seen := map[string]int{}
	for i := 0; i < 400; i++ {
		ups := s.local["web"].pick()
		if len(ups) != 3 || ups[2].Name != "web-4" {
			t.Fatalf("candidates = %v, want web-1 and web-2, then the draining web-4", names(ups))
		}
		seen[ups[0].Name]++
	}
	if seen["web-1"] < 100 || seen["web-2"] < 100 {
		t.Fatalf("first picks at equal load = %v", seen)
	}
	// A loaded (or ejected) instance is never first while the other is
	// idle: with two candidates, both are always compared.
	busy := func(u *proxy.Upstream, _ time.Time) int64 {
		if u.Name == "web-1" {
			return 10
		}
		return 0
	}
	for i := 0; i < 100; i++ {
		if ups := s.local["web"].pickBy(busy, time.Now()); ups[0].Name != "web-2" || ups[1].Name != "web-1" || ups[2].Name != "web-4" {
			t.Fatalf("picked %v with web-1 loaded", names(ups))
		}
	}
	if got := names(s.gateways.pick()); len(got) != 1 || got[0] != "gw-eu" {
		t.Fatalf("gateways = %v", got)
	}
	sum := summarize(lan, "eu", nil)
	if len(sum) != 1 || sum[0].Name != "web" || sum[0].Healthy != 2 || sum[0].Draining != 1 {
		t.Fatalf("summary = %+v", sum)
	}
}

func TestSnapshotEdgePrefersOwnRegion(t *testing.T) {
	wan := []member{
		gateway("gw-us", "us", ServiceRecord{Name: "web", Healthy: 1}, ServiceRecord{Name: "api", Healthy: 1}),
		gateway("gw-eu", "eu", ServiceRecord{Name: "web", Healthy: 2}, ServiceRecord{Name: "api", Healthy: 0}),
		gateway("gw-ap", "ap", ServiceRecord{Name: "web", Healthy: 1}),
		{rec: &NodeRecord{Name: "edge-1", Role: RoleEdge, Region: "eu", State: StateReady}},
	}
	s := buildSnapshot(RoleEdge, "eu", nil, wan, fakeMaker{}, nil)
	got := names(s.remote["web"].pick())
	if len(got) != 3 || got[0] != "gw-eu" || got[1] != "gw-ap" || got[2] != "gw-us" {
		t.Fatalf("web candidates = %v, want own region first, then others", got)
	}
	// api has no healthy instance in eu: only us.
	if got := names(s.remote["api"].pick()); len(got) != 1 || got[0] != "gw-us" {
		t.Fatalf("api candidates = %v", got)
	}
	if !s.known["api"] || s.known["nope"] {
		t.Fatal("known services wrong")
	}
}

func TestSnapshotGatewayRemoteSkipsOwnRegion(t *testing.T) {
	wan := []member{
		gateway("gw-eu", "eu", ServiceRecord{Name: "web", Healthy: 2}),
		gateway("gw-us", "us", ServiceRecord{Name: "web", Healthy: 1}, ServiceRecord{Name: "api", Healthy: 1}),
	}
	s := buildSnapshot(RoleGateway, "eu", nil, wan, fakeMaker{}, nil)
	if got := names(s.remote["web"].pick()); len(got) != 1 || got[0] != "gw-us" {
		t.Fatalf("remote web = %v, want only gw-us", got)
	}
	if got := names(s.remote["api"].pick()); len(got) != 1 || got[0] != "gw-us" {
		t.Fatalf("remote api = %v", got)
	}
}

func TestSnapshotDomains(t *testing.T) {
	lan := []member{{rec: &NodeRecord{Name: "web-1", Role: RoleSidecar, Region: "eu", MeshAddr: "127.0.0.1:1", State: StateReady,
		Services: []ServiceRecord{{Name: "web", Healthy: 1, Domains: []string{"www.example.com"}}}}}}
	s := buildSnapshot(RoleGateway, "eu", lan, nil, fakeMaker{}, nil)
	newNameBook(time.Hour, "localhost", time.Time{}).apply(s, time.Now(), nil)
	if s.domains["www.example.com"] != "web" {
		t.Fatalf("domains = %v", s.domains)
	}
	if sum := summarize(lan, "eu", nil); len(sum[0].Domains) != 1 {
		t.Fatalf("summary lost domains: %+v", sum)
	}
}

// TestSnapshotDrainingLastResort: a draining instance or gateway still
// serves its drain delay, so it stays a candidate, behind every one that
// is not draining: the only instance of a service, or the only gateway of
// the mesh, keeps serving until it stops instead of 503s from the moment
// it publishes draining.
func TestSnapshotDrainingLastResort(t *testing.T) {
	drainingGW := func(name, region string, svcs ...ServiceRecord) member {
		m := gateway(name, region, svcs...)
		m.rec.State = StateDraining
		return m
	}
	want := func(what string, got []*proxy.Upstream, names_ ...string) {
		t.Helper()
		if g := names(got); strings.Join(g, ",") != strings.Join(names_, ",") {
			t.Fatalf("%s: candidates %v, want %v", what, g, names_)
		}
	}

	// Region pool: the draining instance goes after the ready one, and
	// alone it is still the candidate.
	lan := []member{
		sidecar("web-1", "eu", "web", 1, StateDraining),
		sidecar("web-2", "eu", "web", 1, StateReady),
		sidecar("api-1", "eu", "api", 1, StateDraining),
		gateway("gw-eu-a", "eu"),
		drainingGW("gw-eu-b", "eu"),
	}
	s := buildSnapshot(RoleGateway, "eu", lan, nil, fakeMaker{}, nil)
	for i := 0; i < 20; i++ {
		want("web", s.local["web"].pick(), "web-2", "web-1")
		want("gateways", s.gateways.pick(), "gw-eu-a", "gw-eu-b")
	}
	want("api", s.local["api"].pick(), "api-1")
	if s.local["web"].lastResort || !s.local["api"].lastResort {
		t.Fatal("lastResort marks the wrong sets")
	}
	sum := summarize(lan, "eu", nil)
	if len(sum) != 2 || sum[0].Name != "api" || sum[0].Healthy != 0 || sum[0].Draining != 1 ||
		sum[1].Name != "web" || sum[1].Healthy != 1 || sum[1].Draining != 1 {
		t.Fatalf("summary = %+v, want api 0+1 draining, web 1+1 draining", sum)
	}

	// Global pool, at an edge in eu: a region whose instances all drain,
	// and a draining gateway, come after every region that serves.
	wan := []member{
		gateway("gw-eu", "eu", ServiceRecord{Name: "web", Draining: 1}, ServiceRecord{Name: "api", Healthy: 1}),
		gateway("gw-us", "us", ServiceRecord{Name: "web", Healthy: 1}),
		drainingGW("gw-ap", "ap", ServiceRecord{Name: "web", Healthy: 1}, ServiceRecord{Name: "api", Healthy: 1}),
	}
	s = buildSnapshot(RoleEdge, "eu", nil, wan, fakeMaker{}, nil)
	want("edge web", s.remote["web"].pick(), "gw-us", "gw-eu", "gw-ap")
	want("edge api", s.remote["api"].pick(), "gw-eu", "gw-ap")
	// Nothing but last resorts: they are the candidates.
	s = buildSnapshot(RoleEdge, "eu", nil, wan[2:], fakeMaker{}, nil)
	want("edge web, only a draining gateway", s.remote["web"].pick(), "gw-ap")
	s = buildSnapshot(RoleEdge, "eu", nil, wan[:1], fakeMaker{}, nil)
	want("edge web, only draining instances", s.remote["web"].pick(), "gw-eu")
}

// TestSummaryLeavesOutEjected: an instance the gateway ejected (it could
// not reach it several times in a row) is not counted as healthy in the
// region's summary, whatever its own record says, so the edges stop
// choosing a region where nothing can be reached.
func TestSummaryLeavesOutEjected(t *testing.T) {
	lan := []member{
		sidecar("web-1", "eu", "web", 1, StateReady),
		sidecar("web-2", "eu", "web", 1, StateReady),
		sidecar("api-1", "eu", "api", 1, StateReady),
	}
	ejected := func(svc string, r *NodeRecord) bool { return r.Name != "web-2" }
	sum := summarize(lan, "eu", ejected)
	if len(sum) != 2 || sum[0].Name != "api" || sum[0].Healthy != 0 || sum[1].Name != "web" || sum[1].Healthy != 1 {
		t.Fatalf("summary = %+v, want api 0 and web 1 (web-2)", sum)
	}
}
