package tlsmgr

// Behaviours of the Workload API client that a real SPIRE agent showed
// (TestSPIRE in the root package), each against the fake agent.

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

// TestSPIFFEBundleUpdateIsNotARenewal follows SPIRE's CA rotation as the
// real agent sends it (TestSPIRE): first the next CA's root joins the
// bundle with the SVID unchanged, which the Manager trusts at once and
// logs as a bundle update, not as a renewal; then an SVID of the new CA,
// which is one; then the old root leaves the bundle.
func TestSPIFFEBundleUpdateIsNotARenewal(t *testing.T) {
	_, oldCA := testCA(t, testTD)
	_, newCA := testCA(t, testTD)
	both := append(append([]byte{}, oldCA.Cert.Raw...), newCA.Cert.Raw...)
	first := svidEntry(t, oldCA, spWeb)
	agent, addr := startFakeWorkloadAPI(t, x509Response(first))
	logs := &logBuffer{}
	web := startSPIFFE(t, &Manager{SPIFFESocket: addr, ID: spWeb,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	td := spiffeid.RequireTrustDomainFromString(testTD)
	roots := func() int {
		t.Helper()
		b, err := web.GetX509BundleForTrustDomain(td)
		if err != nil {
			t.Fatal(err)
		}
		return len(b.X509Authorities())
	}

	// The next CA is prepared: same SVID, a second root.
	prepared := proto.Clone(first).(*workload.X509SVID)
	prepared.Bundle = both
	before := web.updates.Load()
	agent.set(x509Response(prepared))
	waitFor(t, 5*time.Second, "the bundle update", func() bool { return web.updates.Load() > before })
	if roots() != 2 {
		t.Fatalf("trusts %d roots after the bundle update, want 2", roots())
	}
	if web.Renewals() != 0 || currentSerial(t, web) != leafOf(t, first).SerialNumber.Text(16) {
		t.Errorf("bundle update: %d renewals, serial %s; want 0 and the first SVID kept", web.Renewals(), currentSerial(t, web))
	}
	if logs.count("trust bundle updated") != 1 || logs.count("added=1 removed=0") != 1 || logs.count("svid rotated") != 0 {
		t.Errorf("bundle update logged as:\n%s", logs.buf.String())
	}

	// The next CA is active: an SVID chaining to the new root.
	activated := svidEntry(t, newCA, spWeb)
	activated.Bundle = both
	agent.set(x509Response(activated))
	waitFor(t, 5*time.Second, "the rotation to the new CA", func() bool { return web.Renewals() == 1 })
	if got, want := currentSerial(t, web), leafOf(t, activated).SerialNumber.Text(16); got != want {
		t.Errorf("serial %s after the rotation, want %s", got, want)
	}
	if logs.count("svid rotated") != 1 || logs.count("trust bundle updated") != 1 {
		t.Errorf("rotation logged as:\n%s", logs.buf.String())
	}

	// The old root is pruned.
	pruned := proto.Clone(activated).(*workload.X509SVID)
	pruned.Bundle = newCA.Cert.Raw
	before = web.updates.Load()
	agent.set(x509Response(pruned))
	waitFor(t, 5*time.Second, "the pruned bundle", func() bool { return web.updates.Load() > before })
	if roots() != 1 || web.Renewals() != 1 || logs.count("added=0 removed=1") != 1 {
		t.Errorf("pruned bundle: %d roots, %d renewals; want 1 and 1; logged:\n%s", roots(), web.Renewals(), logs.buf.String())
	}
}

// TestSPIFFEAgentRestart: a SPIRE agent that restarts (TestSPIRE's) ends
// the Workload API stream. The Manager keeps its SVID, warns (no error:
// nothing failed yet), and once the agent is back says so and follows its
// updates again.
func TestSPIFFEAgentRestart(t *testing.T) {
	_, ca := testCA(t, testTD)
	first := svidEntry(t, ca, spWeb)
	path := filepath.Join(t.TempDir(), "agent.sock")
	_, stop := startFakeWorkloadAPIAt(t, path, x509Response(first))
	logs := &logBuffer{}
	web := startSPIFFE(t, &Manager{SPIFFESocket: "unix://" + path, ID: spWeb,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})

	stop()
	waitFor(t, 5*time.Second, "the lost agent to be logged", func() bool { return logs.count("Failed to watch the Workload API") > 0 })
	if _, err := web.GetX509SVID(); err != nil || currentSerial(t, web) != leafOf(t, first).SerialNumber.Text(16) {
		t.Fatalf("without the agent: %v, want the first SVID kept", err)
	}

	// The agent comes back with a new SVID, as a restarted SPIRE agent
	// does (it mints its workloads' SVIDs anew).
	second := svidEntry(t, ca, spWeb)
	startFakeWorkloadAPIAt(t, path, x509Response(second))
	// go-spiffe retries after 1s, 2s, ...: well within 10s.
	waitFor(t, 10*time.Second, "the SVID of the agent that came back", func() bool { return web.Renewals() == 1 })
	if got, want := currentSerial(t, web), leafOf(t, second).SerialNumber.Text(16); got != want {
		t.Errorf("serial %s, want %s", got, want)
	}
	if logs.count("level=ERROR") != 0 || logs.count("level=WARN msg=\"Failed to watch the Workload API") == 0 {
		t.Errorf("the agent's restart logged as:\n%s", logs.buf.String())
	}
	if logs.count("spiffe workload api is back") != 1 {
		t.Errorf("nothing says the agent is back:\n%s", logs.buf.String())
	}
}

// TestSPIFFEOtherTrustDomain: an agent of another trust domain (SPIRE's
// trust_domain is not the node's) offers the right path in the wrong
// trust domain; the error says which trust domains differ.
func TestSPIFFEOtherTrustDomain(t *testing.T) {
	_, other := testCA(t, "other.test")
	_, addr := startFakeWorkloadAPI(t, x509Response(svidEntry(t, other, "spiffe://other.test/service/web")))
	m := &Manager{SPIFFESocket: addr, ID: spWeb, Logger: testLogger(t), SPIFFETimeout: 2 * time.Second}
	err := m.Start(context.Background())
	if err == nil {
		m.Close()
		t.Fatal("Start succeeded")
	}
	want := `the agent issues SVIDs of trust domain "other.test", this node is in "` + testTD + `"`
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), `offers no svid for "`+spWeb+`"`) {
		t.Errorf("error %q, want it to contain %q", err, want)
	}

	// An offer that has the node's trust domain, only not its ID, is not
	// about trust domains.
	_, ca := testCA(t, testTD)
	_, addr = startFakeWorkloadAPI(t, x509Response(svidEntry(t, other, "spiffe://other.test/service/web"), svidEntry(t, ca, spAPI)))
	m = &Manager{SPIFFESocket: addr, ID: spWeb, Logger: testLogger(t), SPIFFETimeout: 2 * time.Second}
	if err := m.Start(context.Background()); err == nil || strings.Contains(err.Error(), "trust domain") {
		m.Close()
		t.Errorf("Start: %v, want an error that does not blame the trust domain", err)
	}
}
