package mesh

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// readyz asks a node's admin API at addr (unix:PATH or host:port) for
// /readyz and returns the status and the one line of reason.
func readyz(addr string) (int, string, error) {
	target, err := FindAdmin(addr, "")
	if err != nil {
		return 0, "", err
	}
	resp, err := target.Client.Get(target.Base + "/readyz")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

// startAsync starts a node in the background, as meshd run does, and
// returns the result of Start on a channel; the node is shut down at the
// end of the test.
func (m *testMesh) startAsync(c Config) (*Node, <-chan error) {
	c.CADir, c.DrainDelay, c.HealthInterval, c.DataDir = m.caDir, time.Millisecond, 200*time.Millisecond, m.t.TempDir()
	for _, f := range []*string{&c.Listen, &c.GossipAddr, &c.Outbound} {
		if *f == "" {
			*f = "127.0.0.1:0"
		}
	}
	n := &Node{Config: c, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	done, result := make(chan error, 1), make(chan error, 1)
	go func() {
		err := n.Start(context.Background())
		result <- err
		done <- err
	}()
	m.t.Cleanup(func() {
		if err := <-result; err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			n.Shutdown(ctx)
		}
	})
	return n, done
}

// TestStartupWaitsForSVID: a sidecar whose SVID files are written after it
// started answers /readyz with 503 "no SVID yet" (and nothing else of its
// admin API) until they appear; then it starts, joins, and carries its
// app's calls.
func TestStartupWaitsForSVID(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from web") }))
	defer app.Close()
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: app.Listener.Addr().String(),
		Join: []string{gw.Addrs()["gossip"]}})

	dir := t.TempDir()
	cert, key := filepath.Join(dir, "svid.crt"), filepath.Join(dir, "svid.key")
	admin := "unix:" + filepath.Join(dir, "api.sock")
	n, done := m.startAsync(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: app.Listener.Addr().String(),
		Join: []string{gw.Addrs()["gossip"]}, CertFile: cert, KeyFile: key, Admin: admin, SVIDWait: 30 * time.Second})

	poll(t, 10*time.Second, "/readyz says no SVID yet", func() error {
		code, why, err := readyz(admin)
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || why != "no SVID yet" {
			return fmt.Errorf("%d %q", code, why)
		}
		return nil
	})
	target, _ := FindAdmin(admin, "")
	if code, body := adminGet(t, target, "/v1/self"); code != http.StatusServiceUnavailable || !strings.Contains(string(body), "no SVID yet") {
		t.Errorf("/v1/self before the SVID: %d %q, want 503 naming what the node waits for", code, body)
	}
	select {
	case err := <-done:
		t.Fatalf("Start returned before the SVID existed: %v", err)
	default:
	}

	// The files appear whole: written elsewhere, renamed in, key first.
	tmp := t.TempDir()
	id, _ := tlsmgr.ServiceID("test.meshd", "api")
	if err := tlsmgr.IssueFiles(m.caDir, id, time.Hour, filepath.Join(tmp, "c"), filepath.Join(tmp, "k")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(tmp, "k"), key); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(tmp, "c"), cert); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("start: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Start did not return after the SVID appeared")
	}
	// Once Start returned, the catalog has the region's other members.
	var members []string
	for _, mi := range n.Snapshot().Members {
		members = append(members, mi.Name)
	}
	if !strings.Contains(strings.Join(members, ","), "gw-eu") {
		t.Errorf("catalog right after Start: members %v, want the gateway", members)
	}
	poll(t, 10*time.Second, "ready", func() error {
		code, why, err := readyz(admin)
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("%d %q", code, why)
		}
		return err
	})
	poll(t, 10*time.Second, "the app's call through the new sidecar", func() error {
		resp, body, err := outboundGet(n.Addrs()["outbound"], "web.mesh")
		if err == nil && (resp.StatusCode != 200 || body != "hello from web") {
			err = fmt.Errorf("%d %q", resp.StatusCode, body)
		}
		return err
	})
}

// TestStartupWaitsForCatalog: a sidecar whose seed takes its connection
// and never answers says "no catalog yet: 0 members" while it waits for
// the first gossip sync (bounded), then serves alone and says it is not
// joined.
func TestStartupWaitsForCatalog(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for range 100 {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, unanswered, until the test ends
		}
	}()
	app := httptest.NewServer(http.NotFoundHandler())
	defer app.Close()
	m := newTestMesh(t)
	admin := "unix:" + filepath.Join(t.TempDir(), "api.sock")
	_, done := m.startAsync(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: app.Listener.Addr().String(),
		Join: []string{silent.Addr().String()}, Admin: admin})
	poll(t, 10*time.Second, "/readyz says no catalog yet", func() error {
		code, why, err := readyz(admin)
		if err == nil && (code != http.StatusServiceUnavailable || why != "no catalog yet: 0 members") {
			err = fmt.Errorf("%d %q", code, why)
		}
		return err
	})
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("start: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Start did not return: the wait for the catalog is not bounded")
	}
	if code, why, err := readyz(admin); err != nil || code != http.StatusServiceUnavailable || why != "not joined: no seed answered" {
		t.Errorf("after the bounded wait: %d %q %v, want 503 not joined", code, why, err)
	}
}
