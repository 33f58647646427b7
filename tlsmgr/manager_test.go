package tlsmgr

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestManagerStartErrors(t *testing.T) {
	good := newCADir(t, testTD)
	noKey := t.TempDir()
	cert, _ := os.ReadFile(filepath.Join(good, CACertFile))
	os.WriteFile(filepath.Join(noKey, CACertFile), cert, 0o644)
	web := "spiffe://" + testTD + "/service/web"

	tests := []struct {
		name string
		m    *Manager
		want []string
	}{
		{"no CADir", &Manager{ID: web}, []string{"CADir is required"}},
		{"no ID", &Manager{CADir: good}, []string{"ID is required"}},
		{"bad ID", &Manager{CADir: good, ID: "web"}, []string{`ID "web"`}},
		{"root ID", &Manager{CADir: good, ID: "spiffe://" + testTD}, []string{"non-root path"}},
		{"TTL too short", &Manager{CADir: good, ID: web, TTL: time.Millisecond}, []string{"TTL 1ms"}},
		{"missing ca.key", &Manager{CADir: noKey, ID: web},
			[]string{"ca.key not found in " + noKey + ": a node needs the CA key to mint its SVID"}},
		{"missing ca dir", &Manager{CADir: filepath.Join(noKey, "nope"), ID: web}, []string{filepath.Join(noKey, "nope", CACertFile)}},
		{"wrong trust domain", &Manager{CADir: good, ID: "spiffe://other.test/service/web"},
			[]string{"wrong trust domain", "spiffe://other.test/service/web", `"` + testTD + `"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.m
			m.Logger = testLogger(t)
			err := m.Start(context.Background())
			if err == nil {
				m.Close()
				t.Fatal("Start succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			// A failed Start leaves nothing running and nothing served.
			if _, err := m.GetX509SVID(); err == nil {
				t.Error("GetX509SVID works after a failed Start")
			}
			if m.TrustDomain() != "" || !m.NotAfter().IsZero() {
				t.Error("failed Start left state behind")
			}
		})
	}
}

func TestManagerServesAndRenews(t *testing.T) {
	dir := newCADir(t, testTD)
	id := "spiffe://" + testTD + "/service/web"
	m := startManager(t, dir, id, time.Second)

	if m.TrustDomain() != testTD {
		t.Errorf("TrustDomain %q", m.TrustDomain())
	}
	first, err := m.GetX509SVID()
	if err != nil || first.ID.String() != id {
		t.Fatalf("GetX509SVID = %v, %v", first, err)
	}
	if !m.NotAfter().Equal(first.Certificates[0].NotAfter) {
		t.Errorf("NotAfter %v, SVID says %v", m.NotAfter(), first.Certificates[0].NotAfter)
	}
	b, err := m.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(testTD))
	if err != nil || len(b.X509Authorities()) != 1 {
		t.Fatalf("bundle = %v, %v", b, err)
	}
	if _, err := m.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.test")); err == nil {
		t.Error("bundle for a foreign trust domain")
	}

	// TTL 1 s: renewed at about half-life (less, with the jitter), each
	// time with a new serial and key. Expiry is in whole seconds, rounded
	// up: two renewals within the same second may both keep the first's
	// NotAfter, so wait for one that moved it.
	waitFor(t, 5*time.Second, "two renewals, one of them moving the expiry", func() bool {
		cur, err := m.GetX509SVID()
		return m.Renewals() >= 2 && err == nil && cur.Certificates[0].NotAfter.After(first.Certificates[0].NotAfter)
	})
	cur, _ := m.GetX509SVID()
	if cur.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		t.Error("renewed SVID has the first one's serial")
	}
	if publicKeysEqual(cur.PrivateKey.Public(), first.PrivateKey.Public()) {
		t.Error("renewed SVID reuses the key")
	}
	if !cur.Certificates[0].NotAfter.After(first.Certificates[0].NotAfter) {
		t.Errorf("renewed NotAfter %v not after first %v", cur.Certificates[0].NotAfter, first.Certificates[0].NotAfter)
	}
	if m.NotAfter().Before(time.Now().Truncate(time.Second)) {
		t.Errorf("current SVID already expired: %v", m.NotAfter())
	}

	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	// Close waits for the renewal goroutine, so the count is final.
	n := m.Renewals()
	select {
	case <-m.done:
	default:
		t.Fatal("renewal goroutine still running after Close")
	}
	if m.Renewals() != n {
		t.Error("renewed after Close")
	}
	if err := m.Start(context.Background()); err == nil {
		t.Error("Start after Close succeeded")
	}
	// Open connections keep using the last SVID after Close.
	if _, err := m.GetX509SVID(); err != nil {
		t.Errorf("GetX509SVID after Close: %v", err)
	}
}

func TestManagerStopsOnContextCancel(t *testing.T) {
	dir := newCADir(t, testTD)
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{CADir: dir, ID: "spiffe://" + testTD + "/edge/e1", Logger: testLogger(t)}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.TTL != 0 || m.ttl() != DefaultTTL {
		t.Errorf("default TTL: field %v, used %v", m.TTL, m.ttl())
	}
	if d := time.Until(m.NotAfter()); d < 59*time.Minute || d > time.Hour+time.Second {
		t.Errorf("default SVID lifetime %v, want 1h", d)
	}
	cancel()
	waitFor(t, 2*time.Second, "renewal goroutine to stop", func() bool {
		select {
		case <-m.done:
			return true
		default:
			return false
		}
	})
	if err := m.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
}

func TestManagerInjectedClock(t *testing.T) {
	dir := newCADir(t, testTD)
	at := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	m := &Manager{CADir: dir, ID: "spiffe://" + testTD + "/edge/e1", TTL: 2 * time.Hour,
		Logger: testLogger(t), Now: func() time.Time { return at }}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if want := at.Add(2 * time.Hour); !m.NotAfter().Equal(want) {
		t.Errorf("NotAfter %v, want %v from the injected clock", m.NotAfter(), want)
	}
}

func TestBackoff(t *testing.T) {
	m := &Manager{TTL: 32 * time.Second}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second}
	for i, w := range want {
		if got := m.backoff(i + 1); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
	if got := m.backoff(1000); got != 4*time.Second {
		t.Errorf("backoff(1000) = %v", got)
	}
}
