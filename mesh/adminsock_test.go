package mesh

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// adminDir points AdminDir at a fresh directory for one test. Unix socket
// paths are short (107 bytes), so it is made directly in the temporary
// directory rather than under t.TempDir's long name.
func adminDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "meshd-adm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	dir := filepath.Join(d, "run")
	t.Setenv(AdminDirEnv, dir)
	return dir
}

func adminGet(t *testing.T, target *AdminTarget, path string) (int, []byte) {
	t.Helper()
	resp, err := target.Client.Get(target.Base + path)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", path, target.Label, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, []byte(b.String())
}

// Two nodes on one host, each on its default socket: both start (no shared
// port), the CLI finds each by name, and without a name it refuses to guess.
func TestAdminSocketPerNode(t *testing.T) {
	dir := adminDir(t)
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu", Admin: AdminSocket("gw-eu")})

	// One node: found without a name.
	one, err := FindAdmin("", "")
	if err != nil {
		t.Fatalf("FindAdmin with one node: %v", err)
	}
	if one.Label != "gw-eu" {
		t.Fatalf("FindAdmin picked %q, want gw-eu", one.Label)
	}

	m.start(Config{Role: RoleSidecar, Name: "web-eu-1", Region: "eu", Service: "web", Upstream: "127.0.0.1:1",
		Join: []string{gw.Addrs()["gossip"]}, Admin: AdminSocket("web-eu-1")})

	for _, name := range []string{"gw-eu", "web-eu-1"} {
		target, err := FindAdmin("", name)
		if err != nil {
			t.Fatalf("FindAdmin(node %s): %v", name, err)
		}
		code, body := adminGet(t, target, "/v1/self")
		var self Self
		if code != http.StatusOK || json.Unmarshal(body, &self) != nil || self.Name != name {
			t.Fatalf("/v1/self of %s over its socket: %d %s", name, code, body)
		}
	}
	if _, err := FindAdmin("", ""); err == nil || !strings.Contains(err.Error(), "gw-eu, web-eu-1") || !strings.Contains(err.Error(), "--node") {
		t.Fatalf("FindAdmin with two nodes and no name: %v, want an error naming both and --node", err)
	}
	if _, err := FindAdmin("", "nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "gw-eu") {
		t.Fatalf("FindAdmin of an unknown node: %v", err)
	}

	// Only its user may use the socket; the directory is private.
	fi, err := os.Stat(filepath.Join(dir, "gw-eu.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
}

func TestListenAdmin(t *testing.T) {
	dir := adminDir(t)
	sock := AdminSocket("n1")
	path := strings.TrimPrefix(sock, "unix:")

	// A socket a running node answers on is not taken.
	ln, err := listenAdmin(sock)
	if err != nil {
		t.Fatal(err)
	}
	go func(ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}(ln)
	if _, err := listenAdmin(sock); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second listen on a live socket: %v, want in use", err)
	}
	ln.Close()

	// A socket left by a node that died (nobody answers) is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket should still be there: %v", err)
	}
	ln, err = listenAdmin(sock)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	ln.Close()

	// A file that is not a socket is never removed.
	if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenAdmin(sock); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Fatal("the regular file was changed")
	}
	os.Remove(path)

	// A directory others can write to is refused: they could put their
	// own socket in the node's place.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := listenAdmin(sock); err == nil || !strings.Contains(err.Error(), "not this user's alone") {
		t.Fatalf("listen in a world-writable directory: %v", err)
	}
}

func TestValidAdmin(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:9901", true},
		{"unix:/run/meshd/x.sock", true},
		{"unix:relative.sock", false},
		{"unix:/" + strings.Repeat("a", 120), false},
		{"9901", false},
	} {
		if err := validAdmin(tt.addr); (err == nil) != tt.ok {
			t.Errorf("validAdmin(%q) = %v, want ok %v", tt.addr, err, tt.ok)
		}
	}
}

// Profiles are served only with AdminPprof.
func TestAdminPprofOptIn(t *testing.T) {
	m := newTestMesh(t)
	off := m.start(Config{Role: RoleGateway, Name: "gw-a", Region: "eu"})
	on := m.start(Config{Role: RoleGateway, Name: "gw-b", Region: "us", AdminPprof: true})
	for _, tt := range []struct {
		n    *Node
		want int
	}{{off, http.StatusNotFound}, {on, http.StatusOK}} {
		resp, err := http.Get("http://" + tt.n.Addrs()["admin"] + "/debug/pprof/cmdline")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: /debug/pprof/cmdline = %d, want %d", tt.n.Config.Name, resp.StatusCode, tt.want)
		}
	}
}
