package mesh

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tcpApp is an app with a TCP port: it reads its client to the end (the
// client's half-close), then answers "<name> got N" and closes.
func tcpApp(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				b, err := io.ReadAll(c)
				if err != nil || len(b) == 0 {
					return // a health check's connect
				}
				io.WriteString(c, name+" got "+strconv.Itoa(len(b)))
			}()
		}
	}()
	return ln.Addr().String()
}

// tcpCall connects to addr, sends payload, half-closes and reads the
// answer to the end.
func tcpCall(addr, payload string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, payload); err != nil {
		return "", err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestTCPAcrossRegions: an app in eu reaches a TCP port of a service that
// runs only in us through its sidecar's --tcp-out listener: sidecar →
// gateway eu → gateway us (HTTP/2 CONNECT stream) → sidecar → app, with
// the caller's half-close carried to the app and the answer back. The
// port may be named, given by the app's number, or left out; a port the
// service does not publish is refused. An edge's public TCP port reaches
// it the same way.
func TestTCPAcrossRegions(t *testing.T) {
	m := newTestMesh(t)
	gwEU := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	gwUS := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	pg := tcpApp(t, "pg")
	_, pgPort, _ := net.SplitHostPort(pg)
	m.start(Config{Role: RoleSidecar, Name: "db-1", Region: "us", Service: "db", TCP: []string{"pg=" + pg},
		Join: []string{gwUS.Addrs()["gossip"]}})
	api := m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: nameApp(t, "api"),
		TCPOut: []string{"db/pg=127.0.0.1:0", "db=127.0.0.1:0", "db/" + pgPort + "=127.0.0.1:0", "db/nope=127.0.0.1:0"},
		Join:   []string{gwEU.Addrs()["gossip"]}})
	addrs := api.Addrs()
	payload := strings.Repeat("x", 200000)
	poll(t, 15*time.Second, "db/pg reachable from eu", func() error {
		got, err := tcpCall(addrs["tcp-out db/pg"], payload)
		if err != nil {
			return err
		}
		if got != "pg got 200000" {
			return fmt.Errorf("answer %q", got)
		}
		return nil
	})
	for _, k := range []string{"tcp-out db", "tcp-out db/" + pgPort} {
		if got, err := tcpCall(addrs[k], "hello"); err != nil || got != "pg got 5" {
			t.Errorf("%s: answer %q, %v", k, got, err)
		}
	}
	if got, err := tcpCall(addrs["tcp-out db/nope"], "hello"); got != "" {
		t.Errorf("unpublished port: answer %q (%v), want the connection closed", got, err)
	}

	// From the public side: an edge's public TCP port.
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gwEU.Addrs()["wan-gossip"]},
		PublicTCP: []string{"127.0.0.1:0=db/pg"}})
	poll(t, 15*time.Second, "db/pg reachable from the edge", func() error {
		got, err := tcpCall(edge.Addrs()["public-tcp 127.0.0.1:0"], payload)
		if err != nil || got != "pg got 200000" {
			return fmt.Errorf("answer %q, %v", got, err)
		}
		return nil
	})
}

// TestTCPAuthorization: a sidecar whose --allow-callers leaves out the
// caller refuses its TCP connection like any other call (the handshake
// fails; the caller's connection is closed with nothing carried), while
// an allowed caller gets through. A service with TCP ports only answers
// HTTP with a clear 404.
func TestTCPAuthorization(t *testing.T) {
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	join := []string{gw.Addrs()["gossip"]}
	m.start(Config{Role: RoleSidecar, Name: "db-1", Region: "eu", Service: "db", TCP: []string{"pg=" + tcpApp(t, "pg")},
		AllowCallers: []string{"service/web"}, Join: join})
	web := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: nameApp(t, "web"),
		TCPOut: []string{"db=127.0.0.1:0"}, Join: join})
	api := m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: nameApp(t, "api"),
		TCPOut: []string{"db=127.0.0.1:0"}, Join: join})
	poll(t, 15*time.Second, "web reaches db", func() error {
		got, err := tcpCall(web.Addrs()["tcp-out db"], "hello")
		if err != nil || got != "pg got 5" {
			return fmt.Errorf("answer %q, %v", got, err)
		}
		return nil
	})
	if got, _ := tcpCall(api.Addrs()["tcp-out db"], "hello"); got != "" {
		t.Fatalf("api, not in allow-callers, got %q from db", got)
	}
	resp, body, err := outboundGet(web.Addrs()["outbound"], "db.mesh")
	if err != nil || resp.StatusCode != 404 || !strings.Contains(body, "serves no HTTP") {
		t.Fatalf("HTTP to a TCP-only service: %v %q %v", resp, body, err)
	}
}

// outboundGet sends GET http://host/ through a sidecar's outbound listener.
func outboundGet(addr, host string) (*http.Response, string, error) {
	return edgeGet(addr, host, "/")
}
