package tlsmgr

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// logBuffer is a concurrency-safe log sink the tests can search.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func TestIssueFiles(t *testing.T) {
	dir := newCADir(t, testTD)
	out := t.TempDir()
	certPath, keyPath := filepath.Join(out, "web.crt"), filepath.Join(out, "web.key")
	id := "spiffe://" + testTD + "/service/web"
	if err := IssueFiles(dir, id, time.Hour, certPath, keyPath); err != nil {
		t.Fatalf("IssueFiles: %v", err)
	}
	svid, err := x509svid.Load(certPath, keyPath)
	if err != nil || svid.ID.String() != id {
		t.Fatalf("x509svid.Load = %v, %v", svid, err)
	}
	if fi, _ := os.Stat(keyPath); fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(certPath); fi.Mode().Perm() != 0o644 {
		t.Errorf("cert mode %v, want 0644", fi.Mode().Perm())
	}
	// Re-issuing replaces both files and leaves no temporary files behind.
	if err := IssueFiles(dir, id, time.Hour, certPath, keyPath); err != nil {
		t.Fatalf("second IssueFiles: %v", err)
	}
	svid2, err := x509svid.Load(certPath, keyPath)
	if err != nil || svid2.Certificates[0].SerialNumber.Cmp(svid.Certificates[0].SerialNumber) == 0 {
		t.Fatalf("re-issue: %v, same serial %v", err, err == nil)
	}
	if entries, _ := os.ReadDir(out); len(entries) != 2 {
		t.Errorf("output dir holds %d entries, want 2", len(entries))
	}

	certOnly := t.TempDir()
	caCert, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	os.WriteFile(filepath.Join(certOnly, CACertFile), caCert, 0o644)
	for _, tt := range []struct {
		name, dir, id, cert, key, want string
	}{
		{"no ca key", certOnly, id, "a.crt", "a.key", "ca.key not found"},
		{"wrong trust domain", dir, "spiffe://other.test/service/web", "a.crt", "a.key", "wrong trust domain"},
		{"same file", dir, id, "a.pem", "a.pem", "different files"},
		{"no output", dir, id, "", "a.key", "required"},
		{"no ca", t.TempDir(), id, "a.crt", "a.key", CACertFile},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := t.TempDir()
			p := func(s string) string {
				if s == "" {
					return ""
				}
				return filepath.Join(o, s)
			}
			err := IssueFiles(tt.dir, tt.id, time.Hour, p(tt.cert), p(tt.key))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
			if entries, _ := os.ReadDir(o); len(entries) != 0 {
				t.Errorf("failed IssueFiles wrote %v", entries)
			}
		})
	}
}

// certOnlyDir copies ca.crt (and not ca.key) of dir into a new directory:
// what a node in file mode is given.
func certOnlyDir(t *testing.T, dir string) string {
	t.Helper()
	d := t.TempDir()
	b, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, CACertFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// nextPoll lets the fake time of the synctest bubble run for one
// PollInterval of m and waits until m's poller is idle again: exactly one
// poll ran, and it saw every file written before the call.
func nextPoll(t *testing.T, m *Manager) {
	t.Helper()
	synctest.Wait()
	n := m.polls.Load()
	time.Sleep(m.PollInterval)
	synctest.Wait()
	if got := m.polls.Load(); got != n+1 {
		t.Fatalf("%d polls in one interval, want 1", got-n)
	}
}

// TestFileModeReloads runs in a synctest bubble: the poller's ticker runs
// on fake time and the test decides when a poll happens relative to its
// writes, so no poll can fall between the writes of a key and its
// certificate unless the test puts it there.
func TestFileModeReloads(t *testing.T) {
	synctest.Test(t, testFileModeReloads)
}

// fileModeNode issues an SVID for the web service with the CA in caDir
// into a fresh directory and starts a file-mode Manager (polling every
// 20 ms) on it, given only ca.crt; it closes the Manager when the test
// ends.
func fileModeNode(t *testing.T, caDir string) (m *Manager, logs *logBuffer, certPath, keyPath string) {
	t.Helper()
	out := t.TempDir()
	certPath, keyPath = filepath.Join(out, "web.crt"), filepath.Join(out, "web.key")
	if err := IssueFiles(caDir, "spiffe://"+testTD+"/service/web", time.Hour, certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	logs = &logBuffer{}
	m = &Manager{CADir: certOnlyDir(t, caDir), CertFile: certPath, KeyFile: keyPath, PollInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))}
	if err := m.Start(context.Background()); err != nil {
		t.Fatalf("Start in file mode: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m, logs, certPath, keyPath
}

func testFileModeReloads(t *testing.T) {
	caDir := newCADir(t, testTD)
	webID := "spiffe://" + testTD + "/service/web"
	web, logs, certPath, keyPath := fileModeNode(t, caDir)
	if web.TrustDomain() != testTD {
		t.Errorf("TrustDomain %q", web.TrustDomain())
	}
	first, _ := web.GetX509SVID()
	if first.ID.String() != webID {
		t.Fatalf("ID %s, want %s from the certificate", first.ID, webID)
	}

	// A minting client talks to the file-mode server: both sources meet.
	api := startManager(t, caDir, "spiffe://"+testTD+"/service/api", 0)
	cli, err := api.ClientTLS(webID)
	if err != nil {
		t.Fatal(err)
	}
	serialSeen := func() string {
		t.Helper()
		s, c := pipeHandshake(t, web.ServerTLS(nil), cli)
		if s.err != nil || c.err != nil {
			t.Fatalf("handshake: %v / %v", s.err, c.err)
		}
		return c.state.PeerCertificates[0].SerialNumber.Text(16)
	}
	serial1 := serialSeen()

	// A new pair is picked up by the next poll and the next handshake.
	if err := IssueFiles(caDir, webID, time.Hour, certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	nextPoll(t, web)
	if n := web.Renewals(); n != 1 {
		t.Fatalf("Renewals %d after a new pair, want 1", n)
	}
	if serial2 := serialSeen(); serial2 == serial1 {
		t.Error("handshake after reload still shows the old certificate")
	}
	good, _ := web.GetX509SVID()

	// Bad replacements are refused, each once, and the current SVID stays.
	stage := t.TempDir()
	otherCA := newCADir(t, testTD)
	sc, sk := filepath.Join(stage, "c"), filepath.Join(stage, "k")
	if err := IssueFiles(otherCA, webID, time.Hour, sc, sk); err != nil {
		t.Fatal(err)
	}
	copyFile := func(from, to string) {
		t.Helper()
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeAtomic(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name  string
		apply func()
		want  string
	}{
		{"key of another pair", func() { copyFile(sk, keyPath) }, "does not match"},
		{"pair from another CA", func() { copyFile(sc, certPath) }, "does not verify"},
		{"garbage certificate", func() { os.WriteFile(certPath, []byte("garbage"), 0o644) }, "cannot parse"},
	}
	for i, st := range steps {
		before := logs.count("svid reload failed")
		st.apply()
		nextPoll(t, web)
		if got := logs.count("svid reload failed") - before; got != 1 {
			t.Errorf("step %d %s: %d refusals logged, want 1", i, st.name, got)
		}
		if logs.count(st.want) == 0 {
			t.Errorf("step %d %s: log lacks %q", i, st.name, st.want)
		}
		if cur, _ := web.GetX509SVID(); cur != good {
			t.Fatalf("step %s replaced the SVID", st.name)
		}
	}
	if web.Renewals() != 1 {
		t.Errorf("Renewals %d after refused reloads, want 1", web.Renewals())
	}
	// A refused version is logged once, not on every poll.
	n := logs.count("svid reload failed")
	for range 5 {
		nextPoll(t, web)
	}
	if got := logs.count("svid reload failed"); got != n {
		t.Errorf("failed reload logged %d more times while files were unchanged", got-n)
	}
	if err := IssueFiles(caDir, webID, time.Hour, certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	nextPoll(t, web)
	if web.Renewals() != 2 {
		t.Errorf("Renewals %d after recovery, want 2", web.Renewals())
	}
	if serial3 := serialSeen(); serial3 == serial1 {
		t.Error("recovered certificate not served")
	}
}

// TestFileModeVersionIsContent: file mode reloads when the bytes change and
// only then. A file that is touched (or whose bytes were already loaded
// under an older modification time, as when a poll lands between the writes
// of key and certificate) is no new SVID, and a replacement of the same
// size whose modification time did not move (a file system with coarse
// timestamps, a copy that preserves times) is one.
func TestFileModeVersionIsContent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, logs, certPath, keyPath := fileModeNode(t, newCADir(t, testTD))

		// Touched, same bytes: nothing to reload.
		later := time.Now().Add(time.Minute)
		for _, p := range []string{certPath, keyPath} {
			if err := os.Chtimes(p, later, later); err != nil {
				t.Fatal(err)
			}
		}
		nextPoll(t, m)
		if n := m.Renewals(); n != 0 || logs.count("svid reloaded") != 0 {
			t.Errorf("touching the files counted as %d renewals (log %q)", n, logs.buf.String())
		}

		// Replaced with garbage of the same size, modification time put
		// back: the change is still seen, and refused.
		fi, err := os.Stat(certPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(certPath, bytes.Repeat([]byte{'x'}, int(fi.Size())), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(certPath, fi.ModTime(), fi.ModTime()); err != nil {
			t.Fatal(err)
		}
		nextPoll(t, m)
		if logs.count("svid reload failed") != 1 || logs.count("cannot parse") != 1 {
			t.Errorf("same-size replacement not seen: log %q", logs.buf.String())
		}
		if m.Renewals() != 0 {
			t.Errorf("Renewals %d, want 0", m.Renewals())
		}
	})
}

func TestFileModePinnedID(t *testing.T) {
	caDir := newCADir(t, testTD)
	out := t.TempDir()
	certPath, keyPath := filepath.Join(out, "c"), filepath.Join(out, "k")
	webID := "spiffe://" + testTD + "/service/web"
	if err := IssueFiles(caDir, webID, time.Hour, certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	m := &Manager{CADir: certOnlyDir(t, caDir), ID: webID, CertFile: certPath, KeyFile: keyPath,
		PollInterval: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := IssueFiles(caDir, "spiffe://"+testTD+"/service/api", time.Hour, certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "refusal", func() bool { return logs.count("svid reload failed") > 0 })
	if cur, _ := m.GetX509SVID(); cur.ID.String() != webID || m.Renewals() != 0 {
		t.Errorf("identity changed to %s (renewals %d) despite ID %s", cur.ID, m.Renewals(), webID)
	}
}

func TestFileModeStartErrors(t *testing.T) {
	caDir := newCADir(t, testTD)
	nodeDir := certOnlyDir(t, caDir)
	otherCA := newCADir(t, testTD)
	out := t.TempDir()
	p := func(s string) string { return filepath.Join(out, s) }
	webID := "spiffe://" + testTD + "/service/web"
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(IssueFiles(caDir, webID, time.Hour, p("web.crt"), p("web.key")))
	must(IssueFiles(otherCA, webID, time.Hour, p("rogue.crt"), p("rogue.key")))
	// An expired certificate: minted with a 1 s TTL 50 s ago (the CA itself
	// is backdated by one minute).
	ca, err := LoadCA(caDir)
	must(err)
	c, k, err := ca.Issue(webID, time.Second, time.Now().Add(-50*time.Second))
	must(err)
	must(os.WriteFile(p("old.crt"), c, 0o644))
	must(os.WriteFile(p("old.key"), k, 0o600))

	tests := []struct {
		name string
		m    *Manager
		want string
	}{
		{"only cert", &Manager{CADir: nodeDir, CertFile: p("web.crt")}, "set together"},
		{"missing cert", &Manager{CADir: nodeDir, CertFile: p("nope.crt"), KeyFile: p("web.key")}, p("nope.crt")},
		{"other CA", &Manager{CADir: nodeDir, CertFile: p("rogue.crt"), KeyFile: p("rogue.key")}, "does not verify"},
		{"expired", &Manager{CADir: nodeDir, CertFile: p("old.crt"), KeyFile: p("old.key")}, "expired"},
		{"wrong ID", &Manager{CADir: nodeDir, ID: "spiffe://" + testTD + "/service/api",
			CertFile: p("web.crt"), KeyFile: p("web.key")}, `want "spiffe://mesh.test/service/api"`},
		{"mismatched pair", &Manager{CADir: nodeDir, CertFile: p("web.crt"), KeyFile: p("rogue.key")}, "does not match"},
		{"negative poll", &Manager{CADir: nodeDir, CertFile: p("web.crt"), KeyFile: p("web.key"), PollInterval: -1}, "PollInterval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.m.Logger = testLogger(t)
			err := tt.m.Start(context.Background())
			if err == nil {
				tt.m.Close()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestWriteAtomicReplaces(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	for _, content := range []string{"one", "two"} {
		if err := writeAtomic(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != content {
			t.Errorf("content %q, want %q", b, content)
		}
	}
	if err := writeAtomic(filepath.Join(t.TempDir(), "no", "dir"), nil, 0o600); err == nil {
		t.Error("write into a missing directory succeeded")
	}
}
