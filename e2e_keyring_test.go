package main

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/tlsmgr"
)

// TestGossipKeyRotation: `meshd gossip keyring` rotates the gossip key of
// a running mesh (gateway, sidecar, edge) in its three steps with no
// restart: every node keeps its members and traffic flows through the
// edge after each step; the node that restarts afterwards comes back with
// the new key from its kept keyring, although its gossip.key is the old
// one.
func TestGossipKeyRotation(t *testing.T) {
	m := newRouteMesh(t)
	gw := m.gateway("gw-eu", "eu", "--data-dir", t.TempDir())
	webDir := t.TempDir()
	web := m.sidecar("web-1", "web", "eu", startLiveApp(t, "web", "web-1", "eu"), gw, "--data-dir", webDir)
	edge := m.node("edge-1", "--role", "edge", "--region", "eu", "--public-http", "127.0.0.1:0",
		"--wan-join", gw.addr("wan-gossip"), "--data-dir", t.TempDir())
	servedBy(t, edge.addr("public-http"), "web.localhost", "web-1")
	admins := strings.Join([]string{gw.addr("admin"), web.addr("admin"), edge.addr("admin")}, ",")
	keyring := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(meshdBin, append([]string{"gossip", "keyring"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("meshd gossip keyring %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := keyring("install", "--admin", admins)
	key := regexp.MustCompile(`use it\): (\S+)`).FindStringSubmatch(out)
	if key == nil {
		t.Fatalf("install printed no key:\n%s", out)
	}
	if n := strings.Count(out, "accepted"); n != 4 { // gw: two pools, web and edge one each
		t.Errorf("install reported %d pools, want 4:\n%s", n, out)
	}
	ok := func(step string) {
		t.Helper()
		for i := 0; i < 20; i++ {
			if e, err := getEcho(edge.addr("public-http"), "web.localhost"); err != nil || e.Instance != "web-1" {
				t.Fatalf("after %s, request %d: %v %+v", step, i, err, e)
			}
		}
	}
	ok("install")
	keyring("use", "--key", key[1], "--admin", admins)
	ok("use")
	caKey, err := tlsmgr.ReadGossipKey(m.caDir)
	if err != nil {
		t.Fatal(err)
	}
	old := mesh.KeyFingerprint(caKey)
	if l := keyring("list", "--admin", gw.addr("admin")); !strings.Contains(l, "accepted") || !strings.Contains(l, old) {
		t.Fatalf("after use, the gateway should still accept the old key %s:\n%s", old, l)
	}
	// Removing needs the key itself: the old one is the CA dir's.
	keyring("remove", "--key-file", m.caDir+"/gossip.key", "--admin", admins)
	ok("remove")
	list := keyring("list", "--admin", admins)
	if strings.Contains(list, old) || strings.Count(list, "accepted") != 4 {
		t.Errorf("after the rotation the old key %s is still listed:\n%s", old, list)
	}
	eventually(t, 10*time.Second, "members stay", func() error {
		out, err := exec.Command(meshdBin, "members", "--admin", gw.addr("admin")).CombinedOutput()
		if err != nil || strings.Count(string(out), "ready") < 4 {
			return fmt.Errorf("%v\n%s", err, out)
		}
		return nil
	})
	if _, err := exec.Command(meshdBin, "gossip", "keyring", "remove", "--key", key[1], "--admin", gw.addr("admin")).CombinedOutput(); err == nil {
		t.Error("removing the key in use succeeded")
	}

	// web-1 restarts: its CA dir still has the old gossip.key, which
	// nobody accepts any more; it comes back on the keyring it kept.
	if err := web.stop(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	m.sidecar("web-2", "web", "eu", startLiveApp(t, "web", "web-2", "eu"), gw, "--data-dir", t.TempDir()) // no keyring: cannot join
	m.sidecar("web-1", "web", "eu", startLiveApp(t, "web", "web-1b", "eu"), gw, "--data-dir", webDir)
	servedBy(t, edge.addr("public-http"), "web.localhost", "web-1b")
	for i := 0; i < 30; i++ {
		if e, err := getEcho(edge.addr("public-http"), "web.localhost"); err != nil || e.Instance != "web-1b" {
			t.Fatalf("request %d: %v, served by %q; want only web-1b (web-2 has the removed key only)", i, err, e.Instance)
		}
	}
}
