package mesh

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/proxy"
)

// serveTCP is an app with a TCP port on 127.0.0.1 that runs serve for each
// connection (closed after it, and cut after 10 s), until the test ends.
func serveTCP(t *testing.T, serve func(c net.Conn)) string {
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
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// tcpApp is an app with a TCP port: it reads its client to the end (the
// client's half-close), then answers "<name> got N" and closes.
func tcpApp(t *testing.T, name string) string {
	return serveTCP(t, func(c net.Conn) {
		b, err := io.ReadAll(c)
		if err != nil || len(b) == 0 {
			return // a health check's connect
		}
		io.WriteString(c, name+" got "+strconv.Itoa(len(b)))
	})
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
	// /metrics: the tunnels and their bytes, per listener.
	if v := metricValue(t, api, "meshd_tunnels_total", map[string]string{"listener": "outbound"}); v < 3 {
		t.Errorf("meshd_tunnels_total{listener=outbound} = %v, want at least 3", v)
	}
	poll(t, 5*time.Second, "tunnel bytes on /metrics", func() error {
		if v := metricValue(t, api, "meshd_tunnel_bytes_total", map[string]string{"listener": "outbound", "direction": "up"}); v < 200000 {
			return fmt.Errorf("meshd_tunnel_bytes_total up = %v, want at least 200000", v)
		}
		return nil
	})

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

// TestTCPDrain: a TCP tunnel open when its edge is told to stop keeps
// working through the drain (the listener stops taking connections), and
// the edge stops as soon as the tunnel ends, within the shutdown grace.
func TestTCPDrain(t *testing.T) {
	echo := serveTCP(t, func(c net.Conn) { io.Copy(c, c) })
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	m.start(Config{Role: RoleSidecar, Name: "echo-1", Region: "eu", Service: "echo", TCP: []string{"echo=" + echo},
		Join: []string{gw.Addrs()["gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]},
		PublicTCP: []string{"127.0.0.1:0=echo"}, ShutdownGrace: 5 * time.Second})
	addr := edge.Addrs()["public-tcp 127.0.0.1:0"]
	var c net.Conn
	roundTrip := func(msg string) error {
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil {
			return err
		}
		if string(b) != msg {
			return fmt.Errorf("echo %q", b)
		}
		return nil
	}
	poll(t, 15*time.Second, "echo through the edge", func() error {
		var err error
		if c, err = net.DialTimeout("tcp", addr, time.Second); err != nil {
			return err
		}
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if err := roundTrip("hello"); err != nil {
			c.Close()
			return err
		}
		return nil
	})
	defer c.Close()
	stopped := make(chan time.Time, 1)
	go func() {
		edge.Shutdown(context.Background())
		stopped <- time.Now()
	}()
	// Through the drain: the open tunnel still carries bytes, a new
	// connection is not taken.
	time.Sleep(300 * time.Millisecond)
	for i := 0; i < 5; i++ {
		if err := roundTrip("during drain " + strconv.Itoa(i)); err != nil {
			t.Fatalf("open tunnel during the drain: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c2, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c2.Close()
		t.Error("the public port took a connection while draining")
	}
	select {
	case <-stopped:
		t.Fatal("the edge stopped with a tunnel still open")
	default:
	}
	closed := time.Now()
	c.Close()
	select {
	case at := <-stopped:
		if d := at.Sub(closed); d > 2*time.Second {
			t.Errorf("the edge stopped %v after its last tunnel ended", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the edge did not stop")
	}
}

// TestTCPProxyProtocol: a load balancer in front of the edge announces its
// client with a PROXY header (--proxy-protocol-from); the edge carries the
// connection to the app, whose port asks for a PROXY header
// (--tcp pg=ADDR,proxy-protocol): the app reads the load balancer's client
// as the source, and the edge's public port as the destination. A
// connection from an address not trusted to send a header reaches the app
// as coming from that address.
func TestTCPProxyProtocol(t *testing.T) {
	app := serveTCP(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		h, err := proxy.ReadProxyHeader(br)
		if err != nil {
			fmt.Fprintf(c, "no header: %v", err)
			return
		}
		if h.Local {
			io.WriteString(c, "local")
			return
		}
		line, _ := br.ReadString('\n')
		fmt.Fprintf(c, "%s>%t|%s", h.Src, h.Dst.Port() != 0, line)
	})
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	m.start(Config{Role: RoleSidecar, Name: "db-1", Region: "eu", Service: "db", TCP: []string{"pg=" + app + ",proxy-protocol"},
		Join: []string{gw.Addrs()["gossip"]}})
	trusting := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]},
		PublicTCP: []string{"127.0.0.1:0=db"}, ProxyProtocolFrom: []string{"127.0.0.0/8"}})
	plain := m.start(Config{Role: RoleEdge, Name: "edge-2", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]},
		PublicTCP: []string{"127.0.0.1:0=db"}, ProxyProtocolFrom: []string{"192.0.2.0/24"}})
	call := func(addr, send string) (string, error) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, send)
		b, err := io.ReadAll(c)
		return string(b), err
	}
	poll(t, 15*time.Second, "the app sees the load balancer's client", func() error {
		got, err := call(trusting.Addrs()["public-tcp 127.0.0.1:0"], "PROXY TCP4 203.0.113.9 198.51.100.1 4242 5432\r\nhello\n")
		if got != "203.0.113.9:4242>true|hello\n" {
			return fmt.Errorf("app answered %q (%v)", got, err)
		}
		return nil
	})
	// An app cannot name another client through its sidecar: a CONNECT
	// to the outbound listener with a forged X-Mesh-Client reaches the app
	// as coming from the caller.
	caller := m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: nameApp(t, "api"),
		Join: []string{gw.Addrs()["gossip"]}})
	poll(t, 15*time.Second, "a forged client is not believed", func() error {
		got, err := call(caller.Addrs()["outbound"], "CONNECT db.mesh:0 HTTP/1.1\r\nHost: db.mesh:0\r\n"+
			proxy.HeaderClient+": 203.0.113.66:1\r\n\r\nhello\n")
		if !strings.Contains(got, "200") || !strings.Contains(got, "127.0.0.1:") || strings.Contains(got, "203.0.113.66") {
			return fmt.Errorf("answer %q (%v)", got, err)
		}
		return nil
	})
	poll(t, 15*time.Second, "an untrusted header is data", func() error {
		got, err := call(plain.Addrs()["public-tcp 127.0.0.1:0"], "PROXY TCP4 203.0.113.9 198.51.100.1 4242 5432\r\n")
		if !strings.HasPrefix(got, "127.0.0.1:") || !strings.HasSuffix(got, "|PROXY TCP4 203.0.113.9 198.51.100.1 4242 5432\r\n") {
			return fmt.Errorf("app answered %q (%v)", got, err)
		}
		return nil
	})
}

// udpEcho is an app with a UDP port that echoes each datagram.
func udpEcho(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		b := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			pc.WriteTo(b[:n], from)
		}
	}()
	return pc.LocalAddr().String()
}

// TestUDPAcrossRegions: an app in eu sends datagrams to a UDP port of a
// service that runs only in us, through its sidecar's --udp-out socket
// (sidecar → gateway eu → gateway us → sidecar → app, HTTP/3 datagrams on
// CONNECT-UDP streams at every hop); an edge's --public-udp port reaches
// it too. 1,000 datagrams one after the other, each echoed, none lost.
func TestUDPAcrossRegions(t *testing.T) {
	m := newTestMesh(t)
	gwEU := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	gwUS := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	dns := m.start(Config{Role: RoleSidecar, Name: "dns-1", Region: "us", Service: "dns", UDP: []string{"dns=" + udpEcho(t)},
		TCP: []string{"dns=" + tcpApp(t, "dns")}, Join: []string{gwUS.Addrs()["gossip"]}})
	api := m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: nameApp(t, "api"),
		UDPOut: []string{"dns/dns=127.0.0.1:0"}, Join: []string{gwEU.Addrs()["gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gwEU.Addrs()["wan-gossip"]},
		PublicUDP: []string{"127.0.0.1:0=dns"}})
	for _, addr := range []string{api.Addrs()["udp-out dns/dns"], edge.Addrs()["public-udp 127.0.0.1:0"]} {
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		b := make([]byte, 2048)
		poll(t, 15*time.Second, "an echo through "+addr, func() error {
			c.Write([]byte("first"))
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, err := c.Read(b)
			if err != nil || string(b[:n]) != "first" {
				return fmt.Errorf("%q %v", b[:n], err)
			}
			return nil
		})
		// Echoes of the polls that timed out may still come: drain them.
		for {
			_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := c.Read(b); err != nil {
				break
			}
		}
		lost := 0
		for i := 0; i < 1000; i++ {
			msg := "datagram " + strconv.Itoa(i) + strings.Repeat(".", i%1200)
			c.Write([]byte(msg))
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := c.Read(b)
			if err != nil || string(b[:n]) != msg {
				lost++
			}
		}
		if lost > 0 {
			t.Errorf("through %s: %d of 1000 datagrams lost or wrong", addr, lost)
		}
	}
	if v := metricValue(t, api, "meshd_udp_datagrams_total", map[string]string{"listener": "udp-out dns/dns", "direction": "up"}); v < 1000 {
		t.Errorf("meshd_udp_datagrams_total up = %v, want at least 1000", v)
	}
	// The relays beside the app saw both paths' datagrams.
	if v := metricValue(t, dns, "meshd_udp_datagrams_total", map[string]string{"listener": "relay", "direction": "down"}); v < 2000 {
		t.Errorf("relay meshd_udp_datagrams_total down = %v, want at least 2000", v)
	}
	// Every hop carried them as HTTP/3 datagrams: the sockets that took
	// them from the clients, each gateway (in and onward) and the
	// sidecar beside the app.
	for _, l := range []struct {
		n        *Node
		listener string
	}{{api, "udp-out dns/dns"}, {edge, "public-udp 127.0.0.1:0"}} {
		if v := metricValue(t, l.n, "meshd_udp_datagrams_by_transport_total", map[string]string{"listener": l.listener, "direction": "up", "transport": "h3"}); v < 1000 {
			t.Errorf("%s: %v datagrams up over HTTP/3, want at least 1000", l.listener, v)
		}
		if v := metricValue(t, l.n, "meshd_udp_datagrams_by_transport_total", map[string]string{"listener": l.listener, "direction": "up", "transport": "capsule"}); v != 0 {
			t.Errorf("%s: %v datagrams up as capsules, want none", l.listener, v)
		}
	}
	for _, n := range []*Node{gwEU, gwUS, dns} {
		if v := metricValue(t, n, "meshd_mesh_h3_datagrams_total", map[string]string{"direction": "received"}); v < 2000 {
			t.Errorf("%s received %v HTTP/3 datagrams, want at least 2000", n.Config.Name, v)
		}
		if v := metricValue(t, n, "meshd_mesh_h3_tunnels_total", map[string]string{"event": "fallback"}); v != 0 {
			t.Errorf("%s: %v tunnels fell back to HTTP/2", n.Config.Name, v)
		}
	}
}

// TestUDPAcrossRegionsNoMeshHTTP3: with --no-mesh-http3 on the sending
// sidecar, its flows go as capsules on HTTP/2; the gateway onward still
// uses HTTP/3.
func TestUDPAcrossRegionsNoMeshHTTP3(t *testing.T) {
	m := newTestMesh(t)
	gwEU := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	gwUS := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us", WANJoin: []string{gwEU.Addrs()["wan-gossip"]}})
	m.start(Config{Role: RoleSidecar, Name: "dns-1", Region: "us", Service: "dns", UDP: []string{"dns=" + udpEcho(t)},
		Join: []string{gwUS.Addrs()["gossip"]}})
	api := m.start(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api", Upstream: nameApp(t, "api"),
		UDPOut: []string{"dns/dns=127.0.0.1:0"}, Join: []string{gwEU.Addrs()["gossip"]}, NoMeshHTTP3: true})
	c, err := net.Dial("udp", api.Addrs()["udp-out dns/dns"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 2048)
	poll(t, 15*time.Second, "an echo", func() error {
		c.Write([]byte("first"))
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Read(b)
		if err != nil || string(b[:n]) != "first" {
			return fmt.Errorf("%q %v", b[:n], err)
		}
		return nil
	})
	if v := metricValue(t, api, "meshd_udp_datagrams_by_transport_total", map[string]string{"listener": "udp-out dns/dns", "direction": "up", "transport": "h3"}); v != 0 {
		t.Errorf("%v datagrams up over HTTP/3 with --no-mesh-http3", v)
	}
	if v := metricValue(t, gwEU, "meshd_mesh_h3_tunnels_total", map[string]string{"event": "opened"}); v < 1 {
		t.Errorf("gateway eu opened %v tunnels over HTTP/3 onward, want at least 1", v)
	}
	if v := metricValue(t, gwEU, "meshd_mesh_h3_tunnels_total", map[string]string{"event": "accepted"}); v != 0 {
		t.Errorf("gateway eu accepted %v tunnels over HTTP/3 from a sidecar with --no-mesh-http3", v)
	}
}

// metricValue returns the value of the sample of name whose labels include
// want (a histogram's count), from n's registry, or -1.
func metricValue(t *testing.T, n *Node, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := n.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}
