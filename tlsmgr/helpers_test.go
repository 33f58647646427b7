package tlsmgr

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"
)

const testTD = "mesh.test"

// newCADir runs InitCA for td in a fresh temporary directory.
func newCADir(t *testing.T, td string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := InitCA(dir, td); err != nil {
		t.Fatalf("InitCA: %v", err)
	}
	return dir
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startManager starts a Manager for id and closes it when the test ends.
func startManager(t *testing.T, dir, id string, ttl time.Duration) *Manager {
	t.Helper()
	m := &Manager{CADir: dir, ID: id, TTL: ttl, Logger: testLogger(t)}
	if err := m.Start(context.Background()); err != nil {
		t.Fatalf("Start(%s): %v", id, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// waitFor polls cond every 10 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
