package mesh

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// findings runs Check and returns its lines by what was checked.
func findings(t *testing.T, c Config, o CheckOptions) []Finding {
	t.Helper()
	o.Timeout = 2 * time.Second
	fs := Check(context.Background(), c, o)
	for _, f := range fs {
		t.Log(f)
	}
	return fs
}

// wantFinding asserts a line of level for check whose detail contains
// each of parts.
func wantFinding(t *testing.T, fs []Finding, level, check string, parts ...string) {
	t.Helper()
	for _, f := range fs {
		if f.Level != level || f.Check != check {
			continue
		}
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(f.Detail, p)
		}
		if ok {
			return
		}
	}
	t.Errorf("no %q finding for %s with %q", level, check, parts)
}

func noFinding(t *testing.T, fs []Finding, level, check string) {
	t.Helper()
	for _, f := range fs {
		if f.Level == level && f.Check == check {
			t.Errorf("unexpected %s", f)
		}
	}
}

// TestCheckFindings: meshd check's preflight on real files and loopback
// ports: a port in use fails and a free one is ok; a seed that answers
// with the node's key joins, one with another key and one nobody listens
// on fail, saying which; the check's own member leaves the pool again; a
// sidecar with the CA key is warned; an SVID file that expires within a
// week is warned, one of another identity fails; a clock behind the peers'
// signed records is warned; BGP peers are connected to.
func TestCheckFindings(t *testing.T) {
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	other := newTestMesh(t) // same trust domain, another gossip key
	gwOther := other.start(Config{Role: RoleGateway, Name: "gw-other", Region: "eu"})
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	closed := freePort(t)

	c := Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: "127.0.0.1:8080", CADir: m.caDir,
		Listen: busy.Addr().String(), GossipAddr: "127.0.0.1:0", Outbound: "127.0.0.1:0", DataDir: t.TempDir(),
		Join: []string{gw.Addrs()["gossip"], gwOther.Addrs()["gossip"], closed}}
	fs := findings(t, c, CheckOptions{})
	wantFinding(t, fs, CheckOK, "config", "valid: sidecar web-1")
	wantFinding(t, fs, CheckOK, "ca-dir", "CA of trust domain test.meshd", "days")
	wantFinding(t, fs, CheckWarn, "ca key", "holds the CA key")
	wantFinding(t, fs, CheckOK, "svid", "minted with")
	wantFinding(t, fs, CheckFail, "listen tcp", busy.Addr().String(), "address already in use")
	wantFinding(t, fs, CheckOK, "outbound tcp", "any free port")
	wantFinding(t, fs, CheckOK, "join", gw.Addrs()["gossip"], "joined pool meshd/test.meshd/region/eu")
	wantFinding(t, fs, CheckFail, "join", gwOther.Addrs()["gossip"], "refused the join", "gossip key")
	wantFinding(t, fs, CheckFail, "join", closed, "unreachable")
	wantFinding(t, fs, CheckOK, "clock", "no peer's record (1)")
	poll(t, 10*time.Second, "the check's member left gw-eu's pool", func() error {
		for _, mb := range gw.lan.Members() {
			if strings.HasPrefix(mb.Name, "meshd-check-") {
				return fmt.Errorf("%s still a member", mb.Name)
			}
		}
		return nil
	})

	// A clock a minute behind sees gw-eu's record signed ahead of it.
	c.Join, c.Listen = []string{gw.Addrs()["gossip"]}, "127.0.0.1:0"
	fs = findings(t, c, CheckOptions{Now: func() time.Time { return time.Now().Add(-time.Minute) }})
	wantFinding(t, fs, CheckWarn, "clock", "gw-eu signed its record", "ahead of this host's clock")
	noFinding(t, fs, CheckFail, "listen tcp")

	// SVID files: expiring within a week, then of another identity.
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "svid.crt"), filepath.Join(dir, "svid.key")
	id, _ := tlsmgr.ServiceID("test.meshd", "web")
	if err := tlsmgr.IssueFiles(m.caDir, id, 60*time.Hour, cert, key); err != nil {
		t.Fatal(err)
	}
	c.CertFile, c.KeyFile, c.Join = cert, key, nil
	fs = findings(t, c, CheckOptions{})
	wantFinding(t, fs, CheckWarn, "cert-file", "SVID of "+id, "in 2 days")
	noFinding(t, fs, CheckWarn, "ca key")
	wantFinding(t, fs, CheckOK, "clock", "skipped")
	c.Service = "api"
	fs = findings(t, c, CheckOptions{})
	wantFinding(t, fs, CheckFail, "cert-file", "is an SVID of "+id, "this node is spiffe://test.meshd/service/api")

	// An edge's BGP peers: one accepts TCP, one does not.
	router, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer router.Close()
	_, rport, _ := net.SplitHostPort(router.Addr().String())
	e := Config{Role: RoleEdge, Name: "edge-1", CADir: m.caDir, PublicHTTP: "127.0.0.1:0", WANGossipAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		Anycast: []string{"198.51.100.10/32"}, BGPASN: "65001", BGPRouterID: "192.0.2.1",
		BGPPeers: []string{"127.0.0.1,65000,port=" + rport, "127.0.0.2,65000,port=" + rport}}
	fs = findings(t, e, CheckOptions{})
	wantFinding(t, fs, CheckOK, "bgp-peer", router.Addr().String(), "accepts TCP")
	wantFinding(t, fs, CheckFail, "bgp-peer", "127.0.0.2:"+rport, "unreachable") // nothing listens on .2

	// A bad configuration is one fail line naming the key.
	e.BGPASN = ""
	fs = findings(t, e, CheckOptions{})
	if len(fs) != 1 || fs[0].Level != CheckFail || !strings.Contains(fs[0].Detail, "bgp-asn") {
		t.Errorf("bad config: %v", fs)
	}
}
