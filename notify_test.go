package main

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// TestSystemdNotify: meshd run speaks systemd's notify protocol to the
// NOTIFY_SOCKET it is given (here a socket this test listens on):
// READY=1 once the node serves, WATCHDOG=1 every half WATCHDOG_USEC,
// STOPPING=1 when SIGTERM starts the drain.
func TestSystemdNotify(t *testing.T) {
	if testing.Short() {
		t.Skip("process test: skipped with -short")
	}
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if err := tlsmgr.InitCA(caDir, "notify.meshd"); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(meshdBin, "run", "--role", "gateway", "--name", "gw-n", "--region", "eu", "--ca-dir", caDir,
		"--listen", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--wan-gossip-addr", "127.0.0.1:0", "--admin", "",
		"--data-dir", filepath.Join(dir, "data"), "--drain-delay", "100ms")
	cmd.Env = append(cmd.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	got := map[string]int{}
	buf := make([]byte, 4096)
	// read takes datagrams until cond holds or d passes.
	read := func(what string, d time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !cond() {
			ln.SetReadDeadline(deadline)
			n, err := ln.Read(buf)
			if err != nil {
				t.Fatalf("waiting for %s: %v (got %v)", what, err, got)
			}
			for _, l := range strings.Split(string(buf[:n]), "\n") {
				got[l]++
			}
		}
	}
	read("READY=1", 20*time.Second, func() bool { return got["READY=1"] > 0 })
	pings := got["WATCHDOG=1"]
	read("3 watchdog pings", 5*time.Second, func() bool { return got["WATCHDOG=1"] >= pings+3 })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	read("STOPPING=1", 10*time.Second, func() bool { return got["STOPPING=1"] > 0 })
	if err := cmd.Wait(); err != nil {
		t.Errorf("meshd exited with %v after SIGTERM", err)
	}
	if got["READY=1"] != 1 {
		t.Errorf("READY=1 sent %d times, want once", got["READY=1"])
	}
}
