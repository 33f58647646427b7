package mesh

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

func getCAView(t *testing.T, n *Node) CAView {
	t.Helper()
	resp, err := http.Get("http://" + n.Addrs()["admin"] + "/v1/ca")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v CAView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// caTarget is the target of `meshd ca status --dir`: the directory's
// bundle and issuing root.
func caTarget(t *testing.T, dir string) CATarget {
	t.Helper()
	ca, err := tlsmgr.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return CATarget{Roots: tlsmgr.Fingerprints(ca.Roots), Issuing: tlsmgr.Fingerprint(ca.Cert), From: dir}
}

// TestRootRotationThroughMesh: a request loop through edge → gateway →
// sidecar runs while the root is rotated in three steps, with no failed
// request; after each step the test measures how long it took until every
// node runs it (its Manager) and until every node's gossip record says so
// (what `meshd ca status` reads). New handshakes work at every step (a
// sidecar started after finish gets traffic). A node still on the old root
// after finish is refused: its handshake as unknown_root, with a log line
// and the metric, and its gossip record, which `ca status` reports.
func TestRootRotationThroughMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five nodes and rotates a root: skipped with -short")
	}
	app := func(name string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s\n", name)
		}))
		t.Cleanup(s.Close)
		return s
	}
	m := newTestMesh(t)
	staleDir := filepath.Join(t.TempDir(), "stale-ca")
	os.MkdirAll(staleDir, 0o700)
	for _, f := range []string{tlsmgr.CACertFile, tlsmgr.CAKeyFile, tlsmgr.GossipKeyFile} {
		b, err := os.ReadFile(filepath.Join(m.caDir, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(staleDir, f), b, 0o600)
	}
	const caPoll = 100 * time.Millisecond // ca-poll: re-mint within 5 polls
	gwLog := &syncBuffer{}
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu", CAPoll: caPoll},
		func(n *Node) { n.Logger = slog.New(slog.NewTextHandler(gwLog, nil)) })
	web1 := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", CAPoll: caPoll,
		Upstream: app("web-1").Listener.Addr().String(), Join: []string{gw.Addrs()["gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", CAPoll: caPoll, WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	nodes := []*Node{gw, web1, edge}
	public := edge.Addrs()["public-http"]
	poll2 := func(what string, cond func() error) time.Duration { return poll(t, 30*time.Second, what, cond) }
	poll2("edge serves web", func() error {
		resp, body, err := edgeGet(public, "web.localhost", "/")
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 {
			return fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		return nil
	})

	// The request loop: bounded in count and time, stopped at the end.
	var sent, failed atomic.Int64
	var seenMu sync.Mutex
	seen := map[string]int{}
	var firstErrs []string
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		client := &http.Client{Timeout: 5 * time.Second}
		deadline := time.Now().Add(2 * time.Minute)
		for i := 0; i < 50000 && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				return
			default:
			}
			req, _ := http.NewRequest("GET", "http://"+public+fmt.Sprintf("/r/%d", i), nil)
			req.Host = "web.localhost"
			sent.Add(1)
			resp, err := client.Do(req)
			var body []byte
			if err == nil {
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("status %d: %s", resp.StatusCode, body)
				}
			}
			seenMu.Lock()
			if err != nil {
				failed.Add(1)
				if len(firstErrs) < 5 {
					firstErrs = append(firstErrs, err.Error())
				}
			} else {
				seen[strings.TrimSpace(string(body))]++
			}
			seenMu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	stopLoop := sync.OnceFunc(func() {
		close(stop)
		<-done
	})
	defer stopLoop()

	// freshHandshakes dials the mesh listeners of gw and web-1 with new
	// configs (no session to resume), as a new upstream connection does.
	freshHandshakes := func(step string) {
		t.Helper()
		for _, p := range []struct{ from, to *Node }{{edge, gw}, {gw, web1}} {
			cfg, err := p.from.ids.ClientTLS(p.to.ID(), "h2")
			if err != nil {
				t.Fatal(err)
			}
			c, err := tls.Dial("tcp", p.to.Addrs()["mesh"], cfg)
			if err != nil {
				t.Fatalf("%s: a new handshake %s → %s: %v", step, p.from.Config.Name, p.to.Config.Name, err)
			}
			c.Close()
		}
	}
	managersAt := func(target CATarget) error {
		for _, n := range nodes {
			if got := behind(n.ids.Roots(), n.ids.SVIDRoot(), nil, target); got != "" {
				return fmt.Errorf("%s %s", n.Config.Name, got)
			}
		}
		return nil
	}
	gossipAt := func(target CATarget) error {
		for _, n := range []*Node{gw, edge} {
			lines, refused, ok := CAStatus([]CAView{getCAView(t, n)}, target)
			if !ok {
				return fmt.Errorf("from %s: %+v refused %+v", n.Config.Name, lines, refused)
			}
			if want := map[*Node]int{gw: 3, edge: 2}[n]; len(lines) != want {
				return fmt.Errorf("%s sees %d members, want %d", n.Config.Name, len(lines), want)
			}
		}
		return nil
	}
	step := func(name string, run func(string) (*tlsmgr.Rotation, error)) {
		t.Helper()
		start := time.Now()
		if _, err := run(m.caDir); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		target := caTarget(t, m.caDir)
		poll2(name+" reaching every node", func() error { return managersAt(target) })
		toNodes := time.Since(start)
		poll2(name+" reaching every record", func() error { return gossipAt(target) })
		t.Logf("rotation timeline: %-6s every node in %v, every gossip record (ca status ok) in %v; %d requests so far, %d failed",
			name, toNodes.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), sent.Load(), failed.Load())
		freshHandshakes(name)
	}
	if err := gossipAt(caTarget(t, m.caDir)); err != nil {
		poll2("records before the rotation", func() error { return gossipAt(caTarget(t, m.caDir)) })
	}
	// A policy signed by the operator of the old root, running everywhere.
	const doc = "services:\n  web:\n    timeout: 10s\n"
	applyAndWait(t, m, gw, doc, web1)

	renewals := web1.ids.Renewals()
	step("begin", tlsmgr.RotateBegin)
	if web1.ids.Renewals() != renewals {
		t.Error("begin made web-1 re-mint its SVID")
	}
	step("switch", tlsmgr.RotateSwitch)
	// Re-applied as the README says: signed with operator.crt, which switch
	// re-issued from the new root.
	if code, body := postPolicy(gw, signPolicy(t, m.caDir, doc, 2)); code != 200 {
		t.Fatalf("re-apply: %d %s", code, body)
	}
	poll2("web-1 runs the re-applied policy", func() error {
		if v, err := policyVersion(web1); err != nil || v != 2 {
			return fmt.Errorf("version %d, %v", v, err)
		}
		return nil
	})
	step("finish", tlsmgr.RotateFinish)
	for _, n := range nodes {
		if v, err := policyVersion(n); err != nil || v != 2 {
			t.Errorf("%s after finish: policy version %d, %v; want 2 still running", n.Config.Name, v, err)
		}
	}

	// A sidecar started after finish, on the new root, gets traffic: the
	// gateway's new upstream connection to it verifies against the new
	// bundle.
	// It shares web-1's --data-dir, as nodes of one host do, and starts
	// with the policy web-1 kept there while it trusted both roots.
	web2 := m.start(Config{Role: RoleSidecar, Name: "web-2", Region: "eu", Service: "web", CAPoll: caPoll, DataDir: web1.Config.DataDir,
		Upstream: app("web-2").Listener.Addr().String(), Join: []string{gw.Addrs()["gossip"]}})
	if st := web2.pol.Load(); st == nil || st.version() != 2 || st.source != "disk" {
		t.Errorf("web-2 started with policy %+v, want version 2 from disk", st)
	}
	poll2("web-2 serving through the edge", func() error {
		seenMu.Lock()
		defer seenMu.Unlock()
		if seen["web-2"] == 0 {
			return fmt.Errorf("responses so far: %v", seen)
		}
		return nil
	})
	stopLoop()
	t.Logf("request loop: %d sent, %d failed, by instance %v", sent.Load(), failed.Load(), seen)
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed during the rotation, first: %q", failed.Load(), sent.Load(), firstErrs)
	}
	if sent.Load() < 100 {
		t.Errorf("only %d requests sent: the loop did not run through the rotation", sent.Load())
	}

	// A node still on the old root after finish: started from a copy of
	// the CA directory taken before begin (restored from a backup, or
	// down during the whole rotation).
	legacy := m.start(Config{Role: RoleSidecar, Name: "legacy-1", Region: "eu", Service: "legacy", CAPoll: caPoll,
		Upstream: app("legacy").Listener.Addr().String(), Join: []string{gw.Addrs()["gossip"]}},
		func(n *Node) { n.Config.CADir = staleDir })
	// Its gossip record is refused, and `ca status` says so.
	poll2("the legacy record refused", func() error {
		_, refused, ok := CAStatus([]CAView{getCAView(t, gw)}, caTarget(t, m.caDir))
		for _, r := range refused {
			if r.Name == "legacy-1" && strings.Contains(r.Reason, "chain not to the bundle") && strings.Contains(r.Reason, "unknown authority") && !ok {
				return nil
			}
		}
		return fmt.Errorf("refused %+v, ok %v", refused, ok)
	})
	// Its handshakes are refused both ways, as unknown_root, with a log
	// line naming it and the metric.
	cfg, err := gw.ids.ClientTLS(legacy.ID(), "h2")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := tls.Dial("tcp", legacy.Addrs()["mesh"], cfg); err == nil {
		c.Close()
		t.Fatal("the gateway completed a handshake with a node on the old root")
	} else {
		t.Logf("the gateway dialing the legacy node: %v", err)
	}
	if got := gw.ids.PeerRefusals()[tlsmgr.RefusedUnknownRoot]; got < 1 {
		t.Errorf("gateway unknown_root refusals %d, want at least 1", got)
	}
	want := regexp.MustCompile(`msg="tls: refused a peer" .*peer=` + regexp.QuoteMeta(legacy.ID()) + ` reason=unknown_root issuer="CN=meshd root CA test.meshd,O=meshd keyid [0-9a-f]+" err=".*unknown authority"`)
	if !want.MatchString(gwLog.String()) {
		t.Errorf("the gateway's log has no line %s:\n%s", want, gwLog.String())
	}
	metrics := func(n *Node) string {
		resp, err := http.Get("http://" + n.Addrs()["admin"] + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if m := regexp.MustCompile(`meshd_tls_peers_refused_total\{reason="unknown_root",[^}]*\} ([0-9]+)`).FindStringSubmatch(metrics(gw)); m == nil || m[1] == "0" {
		t.Errorf("the gateway's /metrics does not count the unknown_root refusal: %q", m)
	}
	cfg, err = legacy.ids.ClientTLS(gw.ID(), "h2")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := tls.Dial("tcp", gw.Addrs()["mesh"], cfg); err == nil {
		c.Close()
		t.Fatal("the legacy node completed a handshake with the gateway")
	} else if !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("the legacy node dialing the gateway: %v, want an unknown authority", err)
	} else {
		t.Logf("the legacy node dialing the gateway: %v", err)
	}
	if got := legacy.ids.PeerRefusals()[tlsmgr.RefusedUnknownRoot]; got < 1 {
		t.Errorf("legacy unknown_root refusals %d, want at least 1", got)
	}
}

func TestCAStatus(t *testing.T) {
	const a, b = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
	switched := CATarget{Roots: []string{a, b}, Issuing: b}
	member := func(pool, name string, roots []string, svid string) MemberInfo {
		return MemberInfo{Pool: pool, Name: name, Roots: roots, SVIDRoot: svid}
	}
	tests := []struct {
		name       string
		views      []CAView
		target     CATarget
		wantOK     bool
		wantBehind map[string]string
	}{
		{"all switched", []CAView{{Members: []MemberInfo{member("region", "gw", []string{b, a}, b), member("region", "web", []string{a, b}, b)}}},
			switched, true, nil},
		{"one not re-minted", []CAView{{Members: []MemberInfo{member("region", "gw", []string{a, b}, b), member("region", "web", []string{a, b}, a)}}},
			switched, false, map[string]string{"web": "SVID from " + a + ", not " + b}},
		{"one still on the old bundle", []CAView{{Members: []MemberInfo{member("region", "web", []string{a}, a)}}},
			switched, false, map[string]string{"web": "does not trust " + b + "; SVID from " + a + ", not " + b}},
		{"one not finished", []CAView{{Members: []MemberInfo{member("global", "edge", []string{a, b}, b)}}},
			CATarget{Roots: []string{b}, Issuing: b}, false, map[string]string{"edge": "still trusts " + a}},
		{"an old meshd", []CAView{{Members: []MemberInfo{member("global", "edge", nil, "")}}},
			switched, false, map[string]string{"edge": "its record names no roots (a meshd from before root rotation?)"}},
		{"holds a peer's record signed from the old root", []CAView{{Members: []MemberInfo{
			{Pool: "region", Name: "web", Roots: []string{a, b}, SVIDRoot: b, PeerRoots: []string{a, b}}}}},
			switched, false, map[string]string{"web": "holds peers' records signed from " + a}},
		{"bundle only", []CAView{{Members: []MemberInfo{member("region", "web", []string{a, b}, a)}}},
			CATarget{Roots: []string{a, b}}, true, nil},
		{"a member in two views counts once", []CAView{
			{Members: []MemberInfo{member("region", "gw", []string{a, b}, b)}},
			{Members: []MemberInfo{member("global", "gw", []string{a, b}, b), member("global", "edge", []string{a, b}, b)}}},
			switched, true, nil},
		{"a record refused for its chain", []CAView{{Members: []MemberInfo{member("region", "gw", []string{a, b}, b)},
			Refused: []RefusedRecord{{Pool: "region", Name: "legacy", Reason: "chain not to the bundle: x509: certificate signed by unknown authority"}}}},
			switched, false, nil},
		{"a record refused for its claims", []CAView{{Members: []MemberInfo{member("region", "gw", []string{a, b}, b)},
			Refused: []RefusedRecord{{Pool: "region", Name: "evil", Reason: "spiffe://td/service/api may not announce service web"}}}},
			switched, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines, _, ok := CAStatus(tt.views, tt.target)
			if ok != tt.wantOK {
				t.Errorf("ok %v, want %v: %+v", ok, tt.wantOK, lines)
			}
			names := map[string]bool{}
			for _, l := range lines {
				if names[l.Name] {
					t.Errorf("%s listed twice", l.Name)
				}
				names[l.Name] = true
				if l.Behind != tt.wantBehind[l.Name] {
					t.Errorf("%s: behind %q, want %q", l.Name, l.Behind, tt.wantBehind[l.Name])
				}
			}
		})
	}
}
