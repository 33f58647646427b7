package gossip

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"
)

var testKey = bytes.Repeat([]byte{0x42}, 32)

const testLabel = "meshd/test"

// testLogger discards logs unless MESHD_TEST_LOG is set: memberlist keeps
// logging from its goroutines after a test ends, where t.Log would panic.
func testLogger() *slog.Logger {
	if os.Getenv("MESHD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newNode returns a started Cluster on 127.0.0.1:0, shut down at the end of
// the test. opts adjust it before Start.
func newNode(t *testing.T, name string, opts ...func(*Cluster)) *Cluster {
	t.Helper()
	c := &Cluster{
		Name:     name,
		BindAddr: "127.0.0.1:0",
		Key:      testKey,
		Label:    testLabel,
		Logger:   testLogger(),
	}
	for _, o := range opts {
		o(c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() { _ = c.Shutdown() })
	return c
}

func joining(seed *Cluster) func(*Cluster) {
	return func(c *Cluster) { c.Join = []string{seed.Addr()} }
}

func profile(p Profile) func(*Cluster) {
	return func(c *Cluster) { c.Profile = p }
}

// waitFor polls cond every 20 ms until it holds or timeout passes, and
// returns how long it took.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func names(ms []Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

func member(c *Cluster, name string) (Member, bool) {
	for _, m := range c.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// hasRecord reports whether c sees name with exactly rec.
func hasRecord(c *Cluster, name string, rec []byte) bool {
	m, ok := member(c, name)
	return ok && m.Record != nil && bytes.Equal(m.Record, rec)
}

func seesExactly(c *Cluster, want ...string) bool {
	return slices.Equal(names(c.Members()), want)
}

// threeNodes starts a, b and c, with b and c joining through a, and waits
// until all see all.
func threeNodes(t *testing.T, opts ...func(*Cluster)) (a, b, c *Cluster) {
	t.Helper()
	a = newNode(t, "a", opts...)
	b = newNode(t, "b", append(slices.Clone(opts), joining(a))...)
	c = newNode(t, "c", append(slices.Clone(opts), joining(a))...)
	waitFor(t, 10*time.Second, "three members everywhere", func() bool {
		return seesExactly(a, "a", "b", "c") && seesExactly(b, "a", "b", "c") && seesExactly(c, "a", "b", "c")
	})
	return a, b, c
}
