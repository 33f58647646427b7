package gossip

import (
	"context"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// logWriter turns memberlist's log lines ("[WARN] memberlist: text") into
// slog records at the matching level. memberlist takes only a *log.Logger,
// so the adapter sits behind one (see newMemberlistLogger).
type logWriter struct {
	log *slog.Logger
	// onSuspect, if set, is told the node name of every
	// "Suspect <name> has failed" line: memberlist has no API that exposes
	// its own suspicions, and this line is written exactly when a probe by
	// this node fails and it marks the member suspect.
	onSuspect func(name string)
	// bad, if set, counts lines about bad input from the network (see
	// badInput).
	bad *atomic.Uint64
	// lim rate-limits warnings and errors.
	lim keyedLimiter
}

// netLogEvery is the period of the rate limit on memberlist's warnings
// and errors: one line per reason and source address per period.
const netLogEvery = 10 * time.Second

func newMemberlistLogger(l *slog.Logger, onSuspect func(string), bad *atomic.Uint64) *log.Logger {
	return log.New(newLogWriter(l, onSuspect, bad, time.Now), "", 0)
}

func newLogWriter(l *slog.Logger, onSuspect func(string), bad *atomic.Uint64, now func() time.Time) *logWriter {
	return &logWriter{log: l, onSuspect: onSuspect, bad: bad,
		lim: keyedLimiter{every: netLogEvery, max: maxLimitKeys, now: now}}
}

// levels maps memberlist's prefixes to slog levels; anything unprefixed is
// Info.
var levels = []struct {
	prefix string
	level  slog.Level
}{
	{"[DEBUG]", slog.LevelDebug},
	{"[TRACE]", slog.LevelDebug},
	{"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn},
	{"[ERR]", slog.LevelError},
	{"[ERROR]", slog.LevelError},
}

// parseLine splits one memberlist log line into level and message.
func parseLine(line string) (slog.Level, string) {
	line = strings.TrimRight(line, "\r\n")
	level := slog.LevelInfo
	for _, l := range levels {
		if rest, ok := strings.CutPrefix(line, l.prefix); ok {
			level, line = l.level, rest
			break
		}
	}
	line = strings.TrimSpace(line)
	line = strings.TrimPrefix(line, "memberlist: ")
	if level > slog.LevelDebug && strings.Contains(line, "use of closed network connection") {
		// This node's own sockets, closed by Leave or Shutdown: a probe
		// still in flight fails, as expected when a node stops.
		level = slog.LevelDebug
	}
	return level, line
}

const (
	suspectPrefix = "Suspect "
	suspectSuffix = " has failed, no acks received"
)

func (w *logWriter) Write(p []byte) (int, error) {
	level, msg := parseLine(string(p))
	if w.onSuspect != nil {
		if rest, ok := strings.CutPrefix(msg, suspectPrefix); ok {
			if name, ok := strings.CutSuffix(rest, suspectSuffix); ok {
				w.onSuspect(name)
			}
		}
	}
	if level < slog.LevelWarn {
		w.log.Log(context.Background(), level, msg, "component", "memberlist")
		return len(p), nil
	}
	// Warnings and errors are mostly about what the network sent (a
	// stranger's packets, a peer's bad stream): anyone who can reach the
	// gossip port could otherwise write a line per packet. One line per
	// reason and source per netLogEvery gets through, with the count of
	// those suppressed since.
	src := source(msg)
	if w.bad != nil && badInput(msg, src) {
		w.bad.Add(1)
	}
	ok, n := w.lim.allow(reason(msg) + "|" + src)
	if !ok {
		return len(p), nil
	}
	if n > 0 {
		w.log.Log(context.Background(), level, msg, "component", "memberlist", "suppressed", n)
	} else {
		w.log.Log(context.Background(), level, msg, "component", "memberlist")
	}
	return len(p), nil
}

// source returns the IP address of memberlist's "from=IP:port" suffix, or
// "" when the line names none. The port is left out: a sender's packets
// come from many ports.
func source(msg string) string {
	i := strings.LastIndex(msg, "from=")
	if i < 0 {
		return ""
	}
	a, _, _ := strings.Cut(msg[i+len("from="):], " ")
	if host, _, err := net.SplitHostPort(a); err == nil {
		return host
	}
	return a
}

// reason is the fixed part of a memberlist message: the text before the
// first detail (a colon, quote, parenthesis or digit), so that values from
// the packet, such as a label or a message type, do not make every line a
// new reason.
func reason(msg string) string {
	if i := strings.IndexAny(msg, ":\"'(0123456789"); i >= 0 {
		msg = msg[:i]
	}
	msg = strings.TrimSpace(msg)
	if len(msg) > 80 {
		msg = msg[:80]
	}
	return msg
}

// badInput reports whether a memberlist warning or error with source src
// is about input from the network: memberlist names the sender as
// "from=ADDR" on each of those, and also on failures of its own sends
// (acks, pings, forwarded acks, its state), which are not counted.
func badInput(msg, src string) bool {
	if src == "" {
		return false
	}
	for _, p := range []string{"Failed to send", "Failed to forward", "Failed to push"} {
		if strings.HasPrefix(msg, p) {
			return false
		}
	}
	return !strings.Contains(msg, "use of closed network connection")
}

// maxLimitKeys bounds the keyedLimiter's memory: past it, expired keys are
// dropped, and if all are live, new sources share one key per reason.
const maxLimitKeys = 1024

// keyedLimiter is a rateLimiter per key, for log lines keyed by reason
// and source.
type keyedLimiter struct {
	mu    sync.Mutex
	every time.Duration
	max   int
	now   func() time.Time
	keys  map[string]*limitState
}

type limitState struct {
	last       time.Time
	suppressed int
}

// allow reports whether to log a line with this key now, and how many were
// suppressed since the last one logged.
func (l *keyedLimiter) allow(key string) (bool, int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil {
		l.keys = make(map[string]*limitState)
	}
	st := l.keys[key]
	if st == nil && len(l.keys) >= l.max {
		for k, s := range l.keys {
			if now.Sub(s.last) >= l.every {
				delete(l.keys, k)
			}
		}
		if len(l.keys) >= l.max {
			r, _, _ := strings.Cut(key, "|")
			key = r + "|*"
			st = l.keys[key]
		}
	}
	if st == nil {
		l.keys[key] = &limitState{last: now}
		return true, 0
	}
	if now.Sub(st.last) < l.every {
		st.suppressed++
		return false, 0
	}
	n := st.suppressed
	st.last, st.suppressed = now, 0
	return true, n
}

// rateLimiter lets one event through per period and counts the rest, so
// that a peer sending garbage cannot flood the log.
type rateLimiter struct {
	mu         sync.Mutex
	every      time.Duration
	last       time.Time
	suppressed int
}

// allow reports whether to log now and how many events were suppressed
// since the last one logged.
func (r *rateLimiter) allow(now time.Time) (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && now.Sub(r.last) < r.every {
		r.suppressed++
		return false, 0
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return true, n
}
