package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// TestReloadProcess: a running `meshd run --config FILE` re-reads the file
// on SIGHUP and on `meshd reload`: it applies allow-callers, names
// service-tombstone as needing a restart, and refuses a bad file naming
// the key and its line, exit status 1, still serving.
func TestReloadProcess(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if err := tlsmgr.InitCA(caDir, "reload.meshd"); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "meshd.yaml")
	base := fmt.Sprintf("role: gateway\nregion: eu\nca-dir: %s\nlisten: 127.0.0.1:0\ngossip-addr: 127.0.0.1:0\nwan-gossip-addr: 127.0.0.1:0\n", caDir)
	write := func(extra string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(base+extra), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	gw := startNode(t, "gw-1", "--config", file)
	admin := gw.addr("admin")

	write("allow-callers: [gateway/*]\n")
	gw.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 10*time.Second, "the SIGHUP reload logged", func() error {
		for _, l := range strings.Split(gw.logs(), "\n") {
			if strings.Contains(l, `"msg":"reloaded"`) && strings.Contains(l, `"applied":["allow-callers"]`) {
				return nil
			}
		}
		return fmt.Errorf("no reload record")
	})

	write("allow-callers: [gateway/*]\nservice-tombstone: 1h\n")
	out, err := exec.Command(meshdBin, "reload", "--admin", admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "applied: nothing changed") ||
		!strings.Contains(string(out), "needs a restart (running the old values): service-tombstone") {
		t.Errorf("meshd reload with service-tombstone changed: %v\n%s", err, out)
	}

	write("allow-callers: [\"gate*way\"]\n")
	out, err = exec.Command(meshdBin, "reload", "--admin", admin).CombinedOutput()
	want := file + ":7: allow-callers"
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), want) {
		t.Errorf("meshd reload of a bad file: %v\n%s\nwant exit 1 naming %q", err, out, want)
	}
	if info := selfInfo(t, admin); !info.Ready {
		t.Errorf("after a refused reload: %+v", info)
	}
}
