package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// systemd's notify protocol (sd_notify(3)), for units with Type=notify:
// READY=1 once the node is ready (its first catalog, joined, its app
// healthy: what /readyz says), STOPPING=1 when it starts to drain, and
// WATCHDOG=1 every half WatchdogSec while the process runs, so systemd
// restarts a node that hangs. Without NOTIFY_SOCKET it does nothing.
type notifier struct {
	conn *net.UnixConn
	log  *slog.Logger
}

func newNotifier(log *slog.Logger) *notifier {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		log.Warn("systemd notify: cannot reach NOTIFY_SOCKET", "err", err)
		return nil
	}
	return &notifier{conn: c, log: log}
}

func (n *notifier) send(state string) {
	if n == nil {
		return
	}
	if _, err := n.conn.Write([]byte(state)); err != nil {
		n.log.Warn("systemd notify failed", "state", state, "err", err)
	}
}

// run sends READY=1 once ready() holds and the watchdog pings until ctx
// ends.
func (n *notifier) run(ctx context.Context, ready func() bool) {
	if n == nil {
		return
	}
	var watchdog <-chan time.Time
	if us, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64); err == nil && us > 0 &&
		(os.Getenv("WATCHDOG_PID") == "" || os.Getenv("WATCHDOG_PID") == strconv.Itoa(os.Getpid())) {
		t := time.NewTicker(time.Duration(us) * time.Microsecond / 2)
		defer t.Stop()
		watchdog = t.C
	}
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	sent := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-watchdog:
			n.send("WATCHDOG=1")
		case <-poll.C:
			if !sent && ready() {
				n.send("READY=1\nSTATUS=serving")
				sent = true
			}
		}
	}
}

func (n *notifier) close() {
	if n != nil {
		n.conn.Close()
	}
}
