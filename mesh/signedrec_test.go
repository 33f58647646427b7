package mesh

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshd/meshd/tlsmgr"
)

// svidFor mints an SVID for id from the CA in dir.
func svidFor(t *testing.T, dir, id string) *x509svid.SVID {
	t.Helper()
	ca, err := tlsmgr.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(id, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSignedRecords(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := tlsmgr.InitCA(dir, "test.meshd"); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other")
	if err := tlsmgr.InitCA(other, "test.meshd"); err != nil {
		t.Fatal(err)
	}
	ca, _ := tlsmgr.LoadCA(dir)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	now := time.Now()
	rec := &NodeRecord{Name: "web-1", Role: RoleSidecar, Region: "eu", MeshAddr: "127.0.0.1:9", State: StateReady,
		Services: []ServiceRecord{{Name: "web", Healthy: 1}}}
	b, _ := rec.Encode()
	web := svidFor(t, dir, "spiffe://test.meshd/service/web")
	signed, err := signRecord(b, now, web)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("record %d bytes, signed %d", len(b), len(signed))
	got, at, id, _, err := openRecord(signed, roots, now)
	if err != nil || !bytes.Equal(got, b) || at != now.UnixNano() || id != "spiffe://test.meshd/service/web" {
		t.Fatalf("open: %v, id %q", err, id)
	}
	if err := claimsFit(rec, id, "test.meshd"); err != nil {
		t.Errorf("web's own record: %v", err)
	}
	// Tampering anywhere, another CA, claims that do not fit.
	for i := range signed {
		if i%7 != 0 {
			continue
		}
		bad := bytes.Clone(signed)
		bad[i] ^= 0x40
		if r, _, _, _, err := openRecord(bad, roots, now); err == nil && bytes.Equal(r, b) {
			t.Fatalf("a record with byte %d flipped still opens", i)
		}
	}
	foreign, _ := signRecord(b, now, svidFor(t, other, "spiffe://test.meshd/service/web"))
	if _, _, _, _, err := openRecord(foreign, roots, now); err == nil || !strings.Contains(err.Error(), "chain not to the bundle") {
		t.Errorf("another CA's SVID: %v", err)
	}
	if _, _, _, _, err := openRecord(signed, roots, now.Add(2*time.Hour)); err == nil {
		t.Error("a record signed by an expired SVID opens")
	}
	if _, _, _, _, err := openRecord([]byte(`{"v":1}`), roots, now); err == nil {
		t.Error("an unsigned record opens")
	}
	api := "spiffe://test.meshd/service/api"
	for _, c := range []struct {
		rec  NodeRecord
		id   string
		want string
	}{
		{*rec, api, "may not announce service web"},
		{NodeRecord{Name: "gw-eu", Role: RoleGateway, Region: "eu"}, api, "may not publish the record of gateway gw-eu"},
		{NodeRecord{Name: "gw-eu", Role: RoleGateway, Region: "us"}, "spiffe://test.meshd/gateway/eu/gw-eu", "may not publish"},
		{NodeRecord{Name: "edge-2", Role: RoleEdge}, "spiffe://test.meshd/edge/edge-1", "may not publish"},
		{NodeRecord{Name: "api-1", Role: RoleSidecar, Global: map[string]int{"web": 3}}, api, "only a gateway"},
	} {
		if err := claimsFit(&c.rec, c.id, "test.meshd"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s as %s: %v, want %q", c.rec.Name, c.id, err, c.want)
		}
	}
	for _, ok := range []struct {
		rec NodeRecord
		id  string
	}{
		{NodeRecord{Name: "gw-eu", Role: RoleGateway, Region: "eu"}, "spiffe://test.meshd/gateway/eu/gw-eu"},
		{NodeRecord{Name: "edge-1", Role: RoleEdge}, "spiffe://test.meshd/edge/edge-1"},
		{NodeRecord{Name: "db-1", Role: RoleSidecar}, "spiffe://test.meshd/service/db"},
	} {
		if err := claimsFit(&ok.rec, ok.id, "test.meshd"); err != nil {
			t.Errorf("%s as %s: %v", ok.rec.Name, ok.id, err)
		}
	}
}

// TestForgedRecordDropped: a node with the gossip key and a valid SVID
// for api announces itself as an instance of web. Its record is dropped
// at every peer (logged, counted), and web's traffic goes only to web.
func TestForgedRecordDropped(t *testing.T) {
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	join := []string{gw.Addrs()["gossip"]}
	m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: nameApp(t, "web"), Join: join})
	m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: nameApp(t, "forged"), Join: join},
		func(n *Node) {
			n.forge = func(r *NodeRecord) {
				for i := range r.Services {
					r.Services[i].Name = "web"
				}
			}
		})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	poll(t, 10*time.Second, "the gateway refuses api-1's record", func() error {
		if v := metricValue(t, gw, "meshd_gossip_records_refused_total", nil); v < 1 {
			return fmt.Errorf("refused %v", v)
		}
		return nil
	})
	wantBody(t, edge.Addrs()["public-http"], "web.localhost", 200, "web")
	served, failed := sequential(t, edge, "web.localhost", 30)
	if served["web"] != 30 || len(failed) > 0 {
		t.Errorf("web's traffic: %v, %d failed; want all 30 at web-1", served, len(failed))
	}
	if h := regionHealthy(gw, "web", "eu"); h != 1 {
		t.Errorf("the gateway counts %d healthy web instances, want 1", h)
	}
}

// TestUnsignedRecordsForUpgrade: --unsigned-records is the rolling
// upgrade's window. Nodes with it publish unsigned records, as a meshd
// before signing does, and believe them; a node without it refuses them.
func TestUnsignedRecordsForUpgrade(t *testing.T) {
	m := newTestMesh(t)
	old := func(n *Node) { n.Config.UnsignedRecords = true }
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"}, old)
	m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: nameApp(t, "web"),
		Join: []string{gw.Addrs()["gossip"]}}, old)
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}}, old)
	wantBody(t, edge.Addrs()["public-http"], "web.localhost", 200, "web")
	if raw := gw.lan.Members(); len(raw) == 0 {
		t.Fatal("no members")
	} else {
		for _, mm := range raw {
			if len(mm.Record) > 0 && mm.Record[0] != '{' {
				t.Errorf("%s publishes a signed record under --unsigned-records", mm.Name)
			}
		}
	}
	strict := m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: nameApp(t, "api"),
		Join: []string{gw.Addrs()["gossip"]}})
	poll(t, 10*time.Second, "a node without the flag refuses the unsigned records", func() error {
		if v := metricValue(t, strict, "meshd_gossip_records_refused_total", nil); v < 2 {
			return fmt.Errorf("refused %v", v)
		}
		return nil
	})
}

// FuzzOpenRecord: whatever the network sends as a signed record, opening it
// never panics, and what opens is exactly a record the CA's SVID signed:
// a mutation of a signed record either fails or yields the signed bytes.
func FuzzOpenRecord(f *testing.F) {
	dir := filepath.Join(f.TempDir(), "ca")
	if err := tlsmgr.InitCA(dir, "test.meshd"); err != nil {
		f.Fatal(err)
	}
	ca, err := tlsmgr.LoadCA(dir)
	if err != nil {
		f.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("spiffe://test.meshd/service/web", time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		f.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	now := time.Now()
	rec := []byte(`{"v":1,"name":"web-1","role":"sidecar","region":"eu","state":"ready"}`)
	signed, err := signRecord(rec, now, svid)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(signed)
	f.Add(signed[:len(signed)/2])
	f.Add([]byte{recordMagic, recordVersion1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, _, id, _, err := openRecord(raw, roots, now)
		if err != nil {
			return
		}
		if !bytes.Equal(got, rec) || id != "spiffe://test.meshd/service/web" {
			t.Fatalf("opened %q signed by %q: not what was signed", got, id)
		}
	})
}
