package gossip

import (
	"bytes"
	"fmt"
	"log"
	"log/slog"
	"strings"
	"sync/atomic"
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
		func(n string) { suspects = append(suspects, n) }, nil)
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

// TestNetworkLinesRateLimited: memberlist's warnings and errors get one
// line per reason and source address per netLogEvery, the next one carrying
// the count suppressed; lines about bad input are all counted.
func TestNetworkLinesRateLimited(t *testing.T) {
	var buf bytes.Buffer
	var bad atomic.Uint64
	now := time.Unix(1000, 0)
	w := newLogWriter(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})),
		nil, &bad, func() time.Time { return now })
	l := log.New(w, "", 0)
	for i := range 500 {
		// One source on many ports, labels chosen by the sender.
		l.Printf(`[ERR] memberlist: discarding packet with unacceptable label "x%d": from=192.0.2.1:%d`, i, 1000+i)
		l.Printf("[ERR] memberlist: Decrypt packet failed: no key from=192.0.2.1:%d", 1000+i)
		l.Printf("[ERR] memberlist: Decrypt packet failed: no key from=192.0.2.2:%d", 1000+i)
		l.Printf("[ERR] memberlist: Failed to send ack: write: broken pipe from=192.0.2.3:%d", 1000+i)
		l.Printf("[INFO] memberlist: Marking %d as failed", i)
	}
	out := buf.String()
	count := func(s string) int { return strings.Count(out, s) }
	if n := count("unacceptable label"); n != 1 {
		t.Errorf("500 label lines from one source gave %d lines", n)
	}
	if n := count("Decrypt packet failed"); n != 2 {
		t.Errorf("500 decrypt lines from each of two sources gave %d lines, want 2", n)
	}
	if n := count("Failed to send ack"); n != 1 {
		t.Errorf("send failures gave %d lines", n)
	}
	if n := count("Marking"); n != 500 {
		t.Errorf("info lines are not rate-limited, got %d of 500", n)
	}
	if n := bad.Load(); n != 1500 {
		t.Errorf("bad input counted %d, want 1500 (sends of our own are not bad input)", n)
	}
	buf.Reset()
	now = now.Add(netLogEvery)
	l.Printf("[ERR] memberlist: Decrypt packet failed: no key from=192.0.2.1:1")
	if out := buf.String(); !strings.Contains(out, "suppressed=499") {
		t.Errorf("line after the period does not carry the suppressed count: %s", out)
	}
}

func TestKeyedLimiterBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	l := keyedLimiter{every: time.Second, max: 4, now: func() time.Time { return now }}
	for i := range 4 {
		if ok, _ := l.allow(fmt.Sprintf("r|10.0.0.%d", i)); !ok {
			t.Fatalf("source %d not logged", i)
		}
	}
	// Full of live keys: new sources share one key per reason.
	if ok, _ := l.allow("r|10.0.0.9"); !ok {
		t.Fatal("first overflow source not logged")
	}
	for i := 10; i < 100; i++ {
		if ok, _ := l.allow(fmt.Sprintf("r|10.0.0.%d", i)); ok {
			t.Fatalf("overflow source %d logged", i)
		}
	}
	if len(l.keys) > 5 {
		t.Errorf("%d keys kept, limit 4 + one overflow key", len(l.keys))
	}
	// Once they expire, keys are reclaimed.
	now = now.Add(time.Second)
	if ok, _ := l.allow("r|10.0.0.200"); !ok {
		t.Fatal("new source after expiry not logged")
	}
	if len(l.keys) > 2 {
		t.Errorf("%d keys kept after expiry", len(l.keys))
	}
}

func TestSourceAndReason(t *testing.T) {
	for _, tc := range []struct{ msg, src, reason string }{
		{`discarding packet with unacceptable label "": from=127.0.0.1:5`, "127.0.0.1", "discarding packet with unacceptable label"},
		{"Decrypt packet failed: x from=[2001:db8::1]:7946", "2001:db8::1", "Decrypt packet failed"},
		{"msg type (7) not supported from=10.0.0.1:1 (packet handler)", "10.0.0.1", "msg type"},
		{"Push/Pull with b failed: dial tcp", "", "Push/Pull with b failed"},
		{"Refuting a suspect message (from: a)", "", "Refuting a suspect message"},
	} {
		if got := source(tc.msg); got != tc.src {
			t.Errorf("source(%q) = %q, want %q", tc.msg, got, tc.src)
		}
		if got := reason(tc.msg); got != tc.reason {
			t.Errorf("reason(%q) = %q, want %q", tc.msg, got, tc.reason)
		}
	}
}
