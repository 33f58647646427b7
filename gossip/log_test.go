package gossip

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestParseLine(t *testing.T) {
	for _, tc := range []struct {
		in    string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:1\n", slog.LevelDebug, "Stream connection from=127.0.0.1:1"},
		{"[INFO] memberlist: Marking b as failed", slog.LevelInfo, "Marking b as failed"},
		{"[WARN] memberlist: Refuting a suspect message (from: a)\n", slog.LevelWarn, "Refuting a suspect message (from: a)"},
		{"[ERR] memberlist: Decrypt packet failed\n", slog.LevelError, "Decrypt packet failed"},
		{"[ERROR] memberlist: x", slog.LevelError, "x"},
		{"[ERR] Failed to shutdown transport: y", slog.LevelError, "Failed to shutdown transport: y"},
		{"no prefix at all", slog.LevelInfo, "no prefix at all"},
		{"[ERR] memberlist: Failed to send indirect UDP ping: write udp 127.0.0.1:1->127.0.0.1:2: use of closed network connection",
			slog.LevelDebug, "Failed to send indirect UDP ping: write udp 127.0.0.1:1->127.0.0.1:2: use of closed network connection"},
		{"", slog.LevelInfo, ""},
	} {
		level, msg := parseLine(tc.in)
		if level != tc.level || msg != tc.msg {
			t.Errorf("parseLine(%q) = %v %q, want %v %q", tc.in, level, msg, tc.level, tc.msg)
		}
	}
}

func TestLogWriter(t *testing.T) {
	var buf bytes.Buffer
	var suspects []string
	l := newMemberlistLogger(
		slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})),
		func(n string) { suspects = append(suspects, n) })
	l.Printf("[DEBUG] memberlist: hidden")
	l.Printf("[WARN] memberlist: shown %d", 1)
	l.Printf("[INFO] memberlist: Suspect gw eu 1 has failed, no acks received")
	l.Printf("[INFO] memberlist: Suspect x has not failed")
	out := buf.String()
	if strings.Contains(out, "hidden") {
		t.Errorf("debug line passed an info handler: %s", out)
	}
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, `msg="shown 1"`) {
		t.Errorf("warn line missing: %s", out)
	}
	if len(suspects) != 1 || suspects[0] != "gw eu 1" {
		t.Errorf("suspects = %q", suspects)
	}
}

func TestRateLimiter(t *testing.T) {
	r := rateLimiter{every: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at         time.Duration
		ok         bool
		suppressed int
	}{
		{0, true, 0},
		{time.Second, false, 0},
		{2 * time.Second, false, 0},
		{10 * time.Second, true, 2},
		{11 * time.Second, false, 0},
		{30 * time.Second, true, 1},
	}
	for _, s := range steps {
		ok, n := r.allow(t0.Add(s.at))
		if ok != s.ok || n != s.suppressed {
			t.Fatalf("at %v: allow = %v, %d; want %v, %d", s.at, ok, n, s.ok, s.suppressed)
		}
	}
}
