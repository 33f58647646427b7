package main

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/tlsmgr"
)

// TestCheckCommand: `meshd check` with the flags of run prints one line
// per finding and exits 0 with none failing, 1 with a port in use (the
// line naming it), 2 on a mistyped flag; `meshd check policy` is still
// the policy check.
func TestCheckCommand(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := tlsmgr.InitCA(caDir, "check.meshd"); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	args := func(listen string) []string {
		return []string{"check", "--role", "gateway", "--region", "eu", "--name", "gw", "--ca-dir", caDir, "--admin", "",
			"--listen", listen, "--gossip-addr", "127.0.0.1:0", "--wan-gossip-addr", "127.0.0.1:0"}
	}
	out, err := exec.Command(meshdBin, args("127.0.0.1:0")...).Output()
	if err != nil {
		t.Fatalf("check of a good gateway: %v\n%s", err, out)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(l, "ok    ") && !strings.HasPrefix(l, "warn  ") {
			t.Errorf("line %q: want ok or warn", l)
		}
	}
	out, err = exec.Command(meshdBin, args(busy.Addr().String())...).Output()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 ||
		!strings.Contains(string(out), "fail  listen tcp: listen tcp "+busy.Addr().String()) {
		t.Errorf("check with the listen port in use: %v\n%s", err, out)
	}
	if err := exec.Command(meshdBin, "check", "--lisen", ":1").Run(); err == nil || err.(*exec.ExitError).ExitCode() != 2 {
		t.Errorf("mistyped flag: %v, want exit 2", err)
	}
	if out, err := exec.Command(meshdBin, "check", "policy").CombinedOutput(); err == nil || !strings.Contains(string(out), "meshd check policy FILE") {
		t.Errorf("check policy without a file: %v %s", err, out)
	}
}
