package mesh

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// lineApp answers / with name and /stream with a line every 20 ms until
// the client goes away (bounded: 3000 lines).
func lineApp(t *testing.T, name string) string {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		io.WriteString(w, name)
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		for i := range 3000 {
			fmt.Fprintf(w, "%s %d\n", name, i)
			w.(http.Flusher).Flush()
			select {
			case <-time.After(20 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// reloadable makes n's LoadConfig return its start configuration changed
// by the last edit set.
type reloadable struct {
	mu   sync.Mutex
	edit func(*Config)
}

func (r *reloadable) attach(n *Node) {
	n.LoadConfig = func() (Config, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		c := n.Config
		c.Domains = slices.Clone(c.Domains)
		if r.edit != nil {
			r.edit(&c)
		}
		return c, nil
	}
}

func (r *reloadable) set(edit func(*Config)) {
	r.mu.Lock()
	r.edit = edit
	r.mu.Unlock()
}

// TestReloadLive: a reload moves a sidecar's route to another app and
// lowers the edge's body limit; both take effect for new requests while a
// stream opened before both reloads keeps flowing through them, and so
// does a TCP tunnel to the sidecar's unchanged port; a changed
// listen address is reported as needing a restart and not applied.
func TestReloadLive(t *testing.T) {
	appA, appB := lineApp(t, "a"), lineApp(t, "b")
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	var webCfg, edgeCfg reloadable
	echo := serveTCP(t, func(c net.Conn) { io.Copy(c, c) })
	web := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: appA,
		TCP: []string{"echo=" + echo}, Join: []string{gw.Addrs()["gossip"]}}, webCfg.attach)
	api := m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: appA,
		TCPOut: []string{"web/echo=127.0.0.1:0"}, Join: []string{gw.Addrs()["gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]},
		MaxBody: "1MiB"}, edgeCfg.attach)
	pub := edge.Addrs()["public-http"]
	wantBody(t, pub, "web.localhost", 200, "a")

	// A tunnel (a WebSocket's or a database's connection) from api to
	// web's echo port, open across both reloads.
	var tunnel net.Conn
	poll(t, 10*time.Second, "a tunnel to web's echo port", func() error {
		if got, err := tcpCall(api.Addrs()["tcp-out web/echo"], "ping"); got != "ping" {
			return fmt.Errorf("%q %v", got, err)
		}
		var err error
		tunnel, err = net.Dial("tcp", api.Addrs()["tcp-out web/echo"])
		return err
	})
	defer tunnel.Close()
	echoes := func(when string) {
		t.Helper()
		tunnel.SetDeadline(time.Now().Add(5 * time.Second))
		msg := "still here " + when + "\n"
		if _, err := io.WriteString(tunnel, msg); err != nil {
			t.Fatalf("tunnel %s: %v", when, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(tunnel, got); err != nil || string(got) != msg {
			t.Fatalf("tunnel %s: %q %v", when, got, err)
		}
	}
	echoes("before the reloads")

	req, _ := http.NewRequest("GET", "http://"+pub+"/stream", nil)
	req.Host = "web.localhost"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	stream := bufio.NewReader(resp.Body)
	readLines := func(when string, k int) {
		t.Helper()
		for range k {
			line, err := stream.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "a ") {
				t.Fatalf("stream %s: %q %v", when, line, err)
			}
		}
	}
	readLines("before the reloads", 3)

	webCfg.set(func(c *Config) { c.Upstream = appB; c.Listen = "127.0.0.1:1" })
	res, err := web.Reload()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Applied, []string{"upstream"}) || !slices.Equal(res.Restart, []string{"listen"}) {
		t.Errorf("sidecar reload: applied %v, restart %v; want [upstream], [listen]", res.Applied, res.Restart)
	}
	wantBody(t, pub, "web.localhost", 200, "b")
	if got := web.Addrs()["mesh"]; strings.HasSuffix(got, ":1") {
		t.Errorf("the mesh listener moved to %s on reload", got)
	}
	readLines("after the route changed", 5)
	echoes("after the route changed")

	edgeCfg.set(func(c *Config) { c.MaxBody = "16" })
	if res, err = edge.Reload(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Applied, []string{"max-body"}) || len(res.Restart) != 0 {
		t.Errorf("edge reload: applied %v, restart %v; want [max-body], []", res.Applied, res.Restart)
	}
	post, _ := http.NewRequest("POST", "http://"+pub+"/", strings.NewReader(strings.Repeat("x", 100)))
	post.Host = "web.localhost"
	pr, err := http.DefaultClient.Do(post)
	if err != nil {
		t.Fatal(err)
	}
	pr.Body.Close()
	if pr.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("100-byte body after max-body 16: %d, want 413", pr.StatusCode)
	}
	readLines("after the limit changed", 5)
	echoes("after the limit changed")

	// Nothing changed: nothing applied, nothing to restart (the listen
	// edit stays reported until it is undone or the node restarts).
	webCfg.set(nil)
	if res, err = web.Reload(); err != nil || len(res.Restart) != 0 || !slices.Equal(res.Applied, []string{"upstream"}) {
		t.Errorf("reload back to the start config: %+v %v, want upstream applied back", res, err)
	}
	wantBody(t, pub, "web.localhost", 200, "a")
}

// TestReloadRefusesBadFile: a config file that does not validate (or has
// an unknown key) is refused, the error naming the key and its line,
// through Reload and through POST /v1/reload; the node keeps its route.
func TestReloadRefusesBadFile(t *testing.T) {
	appA, appB := lineApp(t, "a"), lineApp(t, "b")
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	file := filepath.Join(t.TempDir(), "meshd.yaml")
	load := func(n *Node) {
		n.LoadConfig = func() (Config, error) {
			c := n.Config
			pos, err := LoadFile(file, &c)
			if err != nil {
				return c, err
			}
			c.SetDefaults()
			return c, pos.Annotate(c.Validate())
		}
	}
	web := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: appA,
		Join: []string{gw.Addrs()["gossip"]}}, load)
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	pub := edge.Addrs()["public-http"]
	wantBody(t, pub, "web.localhost", 200, "a")

	for _, tt := range []struct{ body, want string }{
		{"upstream: " + appB + "\nhealth-path: nope\n", file + ":2: health-path"},
		{"upstreem: " + appB + "\n", file + ":1: upstreem: unknown key"},
		{"upstream: [1, 2]\n", "upstream"},
	} {
		if err := os.WriteFile(file, []byte(tt.body), 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := web.Reload()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("reload of %q: %+v, %v; want an error naming %q", tt.body, res, err, tt.want)
		}
		resp, err := http.Post("http://"+web.Addrs()["admin"]+"/v1/reload", "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), tt.want) {
			t.Errorf("POST /v1/reload of %q: %d %q", tt.body, resp.StatusCode, b)
		}
		if _, body, err := edgeGet(pub, "web.localhost", "/"); err != nil || body != "a" {
			t.Errorf("after a refused reload the route changed: %q %v", body, err)
		}
	}

	// A good file through the admin API: applied, and a change that
	// needs a restart is named.
	os.WriteFile(file, []byte("upstream: "+appB+"\ngossip-addr: 127.0.0.1:1\n"), 0o600)
	resp, err := http.Post("http://"+web.Addrs()["admin"]+"/v1/reload", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"upstream"`) || !strings.Contains(string(b), `"gossip-addr"`) {
		t.Errorf("POST /v1/reload: %d %s, want upstream applied and gossip-addr to restart", resp.StatusCode, b)
	}
	wantBody(t, pub, "web.localhost", 200, "b")
}
