package mesh

import (
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand; safe for concurrent readers.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// claimer is a sidecar of svc claiming domains, its record started at since (Unix ms).
func claimer(name, svc string, since int64, domains ...string) member {
	m := sidecar(name, "eu", svc, 1, StateReady)
	m.rec.Services[0].Domains = domains
	m.rec.Services[0].Since = since
	return m
}

// bookSnapshot builds a gateway's snapshot of lan and completes it with b.
func bookSnapshot(b *nameBook, now time.Time, log *slog.Logger, lan ...member) *Snapshot {
	s := buildSnapshot(RoleGateway, "eu", lan, nil, fakeMaker{}, nil)
	b.apply(s, now, log)
	return s
}

// TestDomainOwnerIndependentOfOrder: a node that sees two claims at once
// picks the same owner whatever order the records come in: the claim of
// the longer running service, then the service name; instances of one
// service never conflict.
func TestDomainOwnerIndependentOfOrder(t *testing.T) {
	web1 := claimer("web-1", "web", 1000, "shop.example")
	web2 := claimer("web-2", "web", 5000, "shop.example") // same service: one claim
	zed := claimer("zed-1", "zed", 1000, "zed.example")
	api := claimer("api-1", "api", 2000, "shop.example", "zed.example")
	orders := [][]member{{web1, web2, api, zed}, {api, zed, web2, web1}, {zed, api, web1, web2}}
	for i, lan := range orders {
		clock := newFakeClock()
		b := newNameBook(time.Hour, "localhost", clock.now())
		s := bookSnapshot(b, clock.now(), nil, lan...)
		// shop.example: web's oldest record (1000) is older than api's
		// (2000); zed.example: zed's (1000) is older than api's.
		if s.domains["shop.example"] != "web" || s.domains["zed.example"] != "zed" {
			t.Fatalf("order %d: domains = %v", i, s.domains)
		}
		if len(s.Conflicts) != 2 {
			t.Fatalf("order %d: conflicts = %+v", i, s.Conflicts)
		}
		c := s.Conflicts[0]
		if c.Domain != "shop.example" || c.Owner != "web" || c.Refused != "api" ||
			strings.Join(c.OwnerNodes, ",") != "web-1,web-2" || strings.Join(c.RefusedNodes, ",") != "api-1" {
			t.Fatalf("order %d: conflict = %+v", i, c)
		}
		// Many rebuilds later (settle time over, maps iterated anew)
		// nothing moves.
		for j := 0; j < 5; j++ {
			clock.advance(time.Minute)
			if s := bookSnapshot(b, clock.now(), nil, lan...); s.domains["shop.example"] != "web" || s.domains["zed.example"] != "zed" {
				t.Fatalf("order %d, rebuild %d: domains = %v", i, j, s.domains)
			}
		}
	}
	// Same age: name order decides, the same on every node.
	a := claimer("a-1", "alpha", 0, "x.example")
	bb := claimer("b-1", "beta", 0, "x.example")
	for _, lan := range [][]member{{a, bb}, {bb, a}} {
		clock := newFakeClock()
		s := bookSnapshot(newNameBook(time.Hour, "localhost", clock.now()), clock.now(), nil, lan...)
		if s.domains["x.example"] != "alpha" || !strings.Contains(s.Conflicts[0].Reason, "by name") {
			t.Fatalf("domains = %v, conflicts %+v", s.domains, s.Conflicts)
		}
	}
}

// TestDomainFirstOwnerKept: a host name served by one service is never
// taken by a later claim, even one that looks older or sorts first, nor
// while the owner is gone within its tombstone; once the tombstone is
// over the name is free.
func TestDomainFirstOwnerKept(t *testing.T) {
	clock := newFakeClock()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	b := newNameBook(time.Hour, "localhost", clock.now())
	clock.advance(time.Minute) // past claimSettle
	web := claimer("web-1", "web", 5000, "shop.example")
	s := bookSnapshot(b, clock.now(), log, web)
	if s.domains["shop.example"] != "web" {
		t.Fatalf("domains = %v", s.domains)
	}
	clock.advance(time.Second)
	api := claimer("api-1", "api", 1, "shop.example") // claims to be older, sorts first
	for i := 0; i < 3; i++ {
		s = bookSnapshot(b, clock.now(), log, api, web)
		if s.domains["shop.example"] != "web" {
			t.Fatalf("rebuild %d: api took shop.example: %v", i, s.domains)
		}
	}
	if len(s.Conflicts) != 1 || !strings.Contains(s.Conflicts[0].Reason, "web has held it since") {
		t.Fatalf("conflicts = %+v", s.Conflicts)
	}
	// Logged once, with both services and both claiming nodes.
	if n := strings.Count(logs.String(), "refused a claim on a public host name"); n != 1 {
		t.Fatalf("logged %d times:\n%s", n, logs.String())
	}
	for _, want := range []string{"domain=shop.example", "owner=web", "owner_nodes=[web-1]", "refused=api", "refused_nodes=[api-1]"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}

	// web's only instance leaves: it keeps the name while tombstoned.
	clock.advance(time.Second)
	s = bookSnapshot(b, clock.now(), log, api)
	if s.domains["shop.example"] != "web" {
		t.Fatalf("tombstoned web lost shop.example: %v", s.domains)
	}
	clock.advance(12 * time.Second)
	d := s.downFor("web", clock.now())
	if d == nil || d.reason(clock.now()) != "last one, web-1, left 12s ago" {
		t.Fatalf("down = %+v (%q)", d, d.reason(clock.now()))
	}
	// The tombstone ends: a request-time check says so before any
	// rebuild, and the next rebuild gives the name to api.
	clock.advance(time.Hour)
	if d := s.downFor("web", clock.now()); d != nil {
		t.Fatalf("tombstone outlived --service-tombstone: %+v", d)
	}
	if wait, ok := b.nextExpiry(clock.now()); !ok || wait != 0 {
		t.Fatalf("nextExpiry = %v, %v", wait, ok)
	}
	s = bookSnapshot(b, clock.now(), log, api)
	if s.domains["shop.example"] != "api" || len(s.Conflicts) != 0 || s.down["web"] != nil {
		t.Fatalf("after the tombstone: domains %v, conflicts %+v, down %+v", s.domains, s.Conflicts, s.down)
	}
}

// TestDomainServiceNameRule: <service>.<public-domain> is that service's
// name; another service's claim on it is refused even while the named
// service does not run.
func TestDomainServiceNameRule(t *testing.T) {
	clock := newFakeClock()
	b := newNameBook(time.Hour, "localhost", clock.now())
	clock.advance(time.Minute)
	api := claimer("api-1", "api", 1, "web.localhost", "ghost.localhost", "api.localhost")
	s := bookSnapshot(b, clock.now(), nil, api)
	clock.advance(time.Minute)
	web := claimer("web-1", "web", 9000)
	s = bookSnapshot(b, clock.now(), nil, api, web)
	if _, ok := s.domains["web.localhost"]; ok {
		t.Fatalf("api's claim on web.localhost accepted: %v", s.domains)
	}
	if _, ok := s.domains["ghost.localhost"]; ok {
		t.Fatalf("api's claim on ghost.localhost accepted: %v", s.domains)
	}
	if s.domains["api.localhost"] != "api" {
		t.Fatalf("api's own name: %v", s.domains)
	}
	if svc, _ := publicService("web.localhost", "localhost", s.domains); svc != "web" {
		t.Fatalf("web.localhost routes to %q", svc)
	}
	if len(s.Conflicts) != 2 || s.Conflicts[0].Domain != "ghost.localhost" || s.Conflicts[1].Owner != "web" ||
		!strings.Contains(s.Conflicts[1].Reason, "name of service web") || len(s.Conflicts[1].OwnerNodes) != 0 {
		t.Fatalf("conflicts = %+v", s.Conflicts)
	}
}

// TestServiceDownReason: a known service without a healthy instance, and
// one the node never saw healthy.
func TestServiceDownReason(t *testing.T) {
	clock := newFakeClock()
	b := newNameBook(time.Hour, "localhost", clock.now())
	bookSnapshot(b, clock.now(), nil, sidecar("web-1", "eu", "web", 1, StateReady), sidecar("web-2", "eu", "web", 1, StateReady))
	s := bookSnapshot(b, clock.now(), nil, sidecar("web-1", "eu", "web", 0, StateReady), sidecar("db-1", "eu", "db", 0, StateReady))
	clock.advance(3 * time.Second)
	if got := s.downFor("web", clock.now()).reason(clock.now()); got != "last ones, web-1, web-2, healthy until 3s ago" {
		t.Fatalf("web: %q", got)
	}
	err := errNoHealthy("db", s.downFor("db", clock.now()), clock.now())
	if got := err.Error(); got != "meshd: no healthy instance of service db is reachable" {
		t.Fatalf("db: %q", got)
	}
	// Edges see regions, not instances.
	e := newNameBook(time.Hour, "localhost", clock.now())
	es := buildSnapshot(RoleEdge, "eu", nil, []member{gateway("gw-us", "us", ServiceRecord{Name: "web", Healthy: 2})}, fakeMaker{}, nil)
	e.apply(es, clock.now(), nil)
	es = buildSnapshot(RoleEdge, "eu", nil, []member{gateway("gw-us", "us")}, fakeMaker{}, nil)
	e.apply(es, clock.now(), nil)
	if got := es.downFor("web", clock.now()).reason(clock.now()); got != "last one, in region us, left 0s ago" {
		t.Fatalf("edge: %q", got)
	}
}

// TestServiceTombstoneConfig: service-tombstone is read from YAML,
// defaults to 24h and refuses a negative value by name.
func TestServiceTombstoneConfig(t *testing.T) {
	c := validSidecar()
	c.SetDefaults()
	if c.ServiceTombstone != 24*time.Hour {
		t.Fatalf("default %v, want 24h", c.ServiceTombstone)
	}
	var f Config
	if _, err := LoadFile(writeFile(t, "role: edge\nservice-tombstone: 90m\n"), &f); err != nil || f.ServiceTombstone != 90*time.Minute {
		t.Fatalf("yaml: %v, %v", f.ServiceTombstone, err)
	}
	c.ServiceTombstone = -time.Second
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "service-tombstone") {
		t.Fatalf("negative tombstone: %v", err)
	}
}
