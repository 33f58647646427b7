package gossip

import (
	"context"
	"log"
	"log/slog"
	"strings"
	"sync"
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
}

func newMemberlistLogger(l *slog.Logger, onSuspect func(string)) *log.Logger {
	return log.New(&logWriter{log: l, onSuspect: onSuspect}, "", 0)
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
	w.log.Log(context.Background(), level, msg, "component", "memberlist")
	return len(p), nil
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
