package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// needTool returns the path of a program a test runs, or skips the test
// with what is missing; under CI=true a missing tool fails it (.ci/run
// installs every one).
func needTool(t *testing.T, what string, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if strings.ContainsRune(p, '*') {
			if m, _ := filepath.Glob(p); len(m) > 0 {
				return m[len(m)-1]
			}
			continue
		}
		if lp, err := exec.LookPath(p); err == nil {
			return lp
		}
	}
	msg := fmt.Sprintf("%s not found (tried %s): install it (.ci/run does)", what, strings.Join(paths, ", "))
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// procOutput collects a child process's output; String may be called
// while the process writes.
type procOutput struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (o *procOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *procOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// freePort returns a loopback port nothing listens on now (another
// program may take it before the caller does; tests accept that race).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// postgres is a PostgreSQL server (Debian's) started for one test on
// 127.0.0.1, trusting every local connection.
type postgres struct {
	port int
	cmd  *exec.Cmd
}

// startPostgres runs initdb and postgres as the postgres user when the test
// runs as root (PostgreSQL refuses to run as root), else as the test's user.
func startPostgres(t *testing.T) *postgres {
	t.Helper()
	initdb := needTool(t, "PostgreSQL (initdb)", "/usr/lib/postgresql/*/bin/initdb", "initdb")
	bin := filepath.Dir(initdb)
	dir, err := os.MkdirTemp("", "meshd-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres user to run PostgreSQL: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	run := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Dir = dir
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		return cmd
	}
	data := filepath.Join(dir, "data")
	if out, err := run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	pg := &postgres{port: freePort(t)}
	var log procOutput
	pg.cmd = run("postgres", "-D", data, "-h", "127.0.0.1", "-p", strconv.Itoa(pg.port), "-k", dir, "-c", "fsync=off")
	pg.cmd.Stdout, pg.cmd.Stderr = &log, &log
	if err := pg.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pg.cmd.Process.Kill() // by its PID
		pg.cmd.Wait()
	})
	eventually(t, 20*time.Second, "postgres accepts connections", func() error {
		out, err := psql(t, "127.0.0.1:"+strconv.Itoa(pg.port), "select 1")
		if err != nil {
			return fmt.Errorf("%v: %s (log: %s)", err, out, log.String())
		}
		return nil
	})
	return pg
}

func (pg *postgres) addr() string { return "127.0.0.1:" + strconv.Itoa(pg.port) }

// psql runs one command (SQL on standard input) with psql against addr and returns its output.
func psql(t *testing.T, addr, command string) (string, error) {
	t.Helper()
	bin := needTool(t, "psql", "psql")
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "-U", "postgres", "-X", "-q", "-t", "-A",
		"-v", "ON_ERROR_STOP=1", "-f", "-")
	cmd.Stdin = strings.NewReader(command) // a statement may be longer than an argument can be
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=5", "PGSSLMODE=disable")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestPostgresThroughMesh: psql, PostgreSQL's own client, talks to a
// PostgreSQL server that runs only in region us, from region eu through
// a sidecar's --tcp-out port (sidecar → gateway eu → gateway us →
// sidecar → PostgreSQL) and from the public side through an edge's
// --public-tcp port: a table is created, filled with 10,000 rows in one
// statement and read back, a 2 MB answer and a 512 kB statement go through.
func TestPostgresThroughMesh(t *testing.T) {
	pg := startPostgres(t)
	m := newRouteMesh(t)
	gwEU := m.gateway("gw-eu", "eu")
	gwUS := m.gateway("gw-us", "us", "--wan-join", gwEU.addr("wan-gossip"))
	m.node("db-us-1", "--role", "sidecar", "--region", "us", "--service", "db", "--tcp", "pg="+pg.addr(),
		"--outbound", "127.0.0.1:0", "--join", gwUS.addr("gossip"), "--health-interval", "300ms")
	api := m.sidecar("api-eu-1", "api", "eu", startApp(t, "api", "api-eu-1", "eu"), gwEU, "--tcp-out", "db/pg=127.0.0.1:0")
	edge := m.node("edge-eu", "--role", "edge", "--region", "eu", "--public-http", "127.0.0.1:0",
		"--wan-join", gwEU.addr("wan-gossip"), "--public-tcp", "127.0.0.1:0=db/pg")

	viaSidecar := api.addr("tcp-out db/pg")
	viaEdge := edge.addr("public-tcp 127.0.0.1:0")
	for _, path := range []struct{ name, addr string }{{"sidecar", viaSidecar}, {"edge", viaEdge}} {
		eventually(t, 20*time.Second, "psql through the "+path.name, func() error {
			out, err := psql(t, path.addr, "select 41+1")
			if err != nil || out != "42" {
				return fmt.Errorf("%v: %q", err, out)
			}
			return nil
		})
	}
	if out, err := psql(t, viaSidecar, "create table t (id int, v text); insert into t select g, md5(g::text) from generate_series(1, 10000) g"); err != nil {
		t.Fatalf("create and fill: %v: %s", err, out)
	}
	out, err := psql(t, viaEdge, "select count(*), sum(id) from t")
	if err != nil || out != "10000|50005000" {
		t.Fatalf("read back through the edge: %v: %q", err, out)
	}
	// Large messages both ways: a 2 MB answer, a 512 kB statement.
	out, err = psql(t, viaSidecar, "select string_agg(md5(g::text), '') from generate_series(1, 65536) g")
	if err != nil || len(out) != 2097152 {
		t.Fatalf("large answer: %v: %d bytes", err, len(out))
	}
	out, err = psql(t, viaEdge, "select length('"+strings.Repeat("x", 512<<10)+"')")
	if err != nil || out != strconv.Itoa(512<<10) {
		t.Fatalf("large statement: %v: %q", err, out)
	}
}

// wsServer is a WebSocket echo server in Python's websockets library; it
// prints "ready" once it listens.
const wsServer = `
import asyncio, sys, websockets
async def echo(ws, path=None):
    async for msg in ws:
        await ws.send(msg)
async def main():
    async with websockets.serve(echo, "127.0.0.1", int(sys.argv[1]), max_size=4<<20):
        print("ready", flush=True)
        await asyncio.Future()
asyncio.run(main())
`

// wsClient connects through addr to ws://HOST/PATH, sends N messages and
// a 1 MiB one, checks each echo, and prints "ok N".
const wsClient = `
import asyncio, socket, sys, websockets
async def main():
    addr, host, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    h, p = addr.rsplit(":", 1)
    sock = socket.create_connection((h, int(p)), timeout=10)
    async with websockets.connect("ws://" + host + "/chat?room=1", sock=sock, max_size=4<<20, open_timeout=10) as ws:
        for i in range(n):
            await ws.send("message %d" % i)
            got = await asyncio.wait_for(ws.recv(), 10)
            assert got == "message %d" % i, got
        big = "x" * (1 << 20)
        await ws.send(big)
        got = await asyncio.wait_for(ws.recv(), 10)
        assert got == big, len(got)
    print("ok", n)
asyncio.run(main())
`

// TestWebSocketAcrossRegions: a client of Python's websockets library
// talks to a websockets echo server that runs only in region us, through
// an edge in eu (HTTP/1.1 Upgrade → HTTP/2 CONNECT stream to gateway us →
// HTTP/1.1 Upgrade to the sidecar and the app): 1,000 messages and a
// 1 MiB one echoed, each checked.
func TestWebSocketAcrossRegions(t *testing.T) {
	py := needWebsockets(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "client.py"), []byte(wsClient), 0o644); err != nil {
		t.Fatal(err)
	}
	appAddr, srvOut := startWSApp(t, py, dir)

	m := newRouteMesh(t)
	gwEU := m.gateway("gw-eu", "eu")
	gwUS := m.gateway("gw-us", "us", "--wan-join", gwEU.addr("wan-gossip"))
	m.node("chat-us-1", "--role", "sidecar", "--region", "us", "--service", "chat", "--upstream", appAddr,
		"--outbound", "127.0.0.1:0", "--join", gwUS.addr("gossip"), "--health-interval", "300ms")
	edge := m.edge("edge-eu", "eu", gwEU)
	public := edge.addr("public-http")

	var out []byte
	eventually(t, 30*time.Second, "a websocket session through the mesh", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var err error
		out, err = exec.CommandContext(ctx, py, filepath.Join(dir, "client.py"), public, "chat.localhost", "1000").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, lastLines(string(out), 5))
		}
		return nil
	})
	if got := strings.TrimSpace(string(out)); got != "ok 1000" {
		t.Fatalf("client: %q (server: %s)", got, srvOut.String())
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// wssClient is wsClient over TLS, trusting the CA in argv[4].
const wssClient = `
import asyncio, socket, ssl, sys, websockets
async def main():
    addr, host, n, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    h, p = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=ca)
    sock = socket.create_connection((h, int(p)), timeout=10)
    async with websockets.connect("wss://" + host + "/chat", sock=sock, ssl=ctx, server_hostname=host, open_timeout=10) as ws:
        for i in range(n):
            await ws.send("message %d" % i)
            got = await asyncio.wait_for(ws.recv(), 10)
            assert got == "message %d" % i, got
    print("ok", n)
asyncio.run(main())
`

// needWebsockets returns Debian's python3 when it has the websockets
// library (python3-websockets), else skips or fails as needTool does.
func needWebsockets(t *testing.T) string {
	t.Helper()
	py := "/usr/bin/python3"
	if out, err := exec.Command(py, "-c", "import websockets").CombinedOutput(); err != nil {
		needTool(t, "python3 with websockets (Debian: python3-websockets): "+strings.TrimSpace(string(out)))
	}
	return py
}

// startWSApp runs wsServer from dir and returns its address and output.
func startWSApp(t *testing.T, py, dir string) (string, *procOutput) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "server.py"), []byte(wsServer), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	srv := exec.Command(py, filepath.Join(dir, "server.py"), strconv.Itoa(port))
	out := &procOutput{}
	srv.Stdout, srv.Stderr = out, out
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Kill() // by its PID
		srv.Wait()
	})
	addr := "127.0.0.1:" + strconv.Itoa(port)
	eventually(t, 10*time.Second, "the websockets server listens", func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return fmt.Errorf("%v (%s)", err, out.String())
		}
		return c.Close()
	})
	return addr, out
}

// TestWebSocketPublicTLS: through an edge's public TLS listener, a
// websockets client over HTTP/1.1 (wss://), and an RFC 8441 client
// (WebSocket on an HTTP/2 stream, x/net's client, frames written here)
// reach a websockets echo server behind a sidecar.
func TestWebSocketPublicTLS(t *testing.T) {
	py := needWebsockets(t)
	dir := t.TempDir()
	appAddr, _ := startWSApp(t, py, dir)
	m := newRouteMesh(t)
	gw := m.gateway("gw-eu", "eu")
	m.node("chat-eu-1", "--role", "sidecar", "--region", "eu", "--service", "chat", "--upstream", appAddr,
		"--outbound", "127.0.0.1:0", "--join", gw.addr("gossip"), "--health-interval", "300ms")
	dataDir := t.TempDir()
	edge := m.node("edge-eu", "--role", "edge", "--region", "eu", "--public-http", "127.0.0.1:0",
		"--public-https", "127.0.0.1:0", "--tls", "internal", "--data-dir", dataDir, "--wan-join", gw.addr("wan-gossip"))
	root, err := exec.Command(meshdBin, "ca", "root", "--data-dir", dataDir).Output()
	if err != nil {
		t.Fatalf("meshd ca root: %v", err)
	}
	rootFile := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(rootFile, root, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "client.py"), []byte(wssClient), 0o644); err != nil {
		t.Fatal(err)
	}
	httpsAddr := edge.addr("public-https")
	eventually(t, 30*time.Second, "a wss:// session through the edge", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, py, filepath.Join(dir, "client.py"), httpsAddr, "chat.localhost", "200", rootFile).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "ok 200" {
			return fmt.Errorf("%v: %s", err, lastLines(string(out), 5))
		}
		return nil
	})

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(root)
	tr := &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "chat.localhost"},
		DialTLSContext: func(ctx context.Context, network, _ string, cfg *tls.Config) (net.Conn, error) {
			d := &tls.Dialer{Config: cfg}
			return d.DialContext(ctx, network, httpsAddr)
		}}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodConnect, "https://chat.localhost/chat", pr)
	req.Header.Set(":protocol", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("extended CONNECT: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("extended CONNECT: status %d %q", resp.StatusCode, b)
	}
	for i := 0; i < 20; i++ {
		msg := "rfc8441 message " + strconv.Itoa(i)
		// A masked text frame (RFC 6455 §5.2), short enough for a 7-bit length.
		mask := []byte{1, 2, 3, 4}
		frame := []byte{0x81, 0x80 | byte(len(msg))}
		frame = append(frame, mask...)
		for j := 0; j < len(msg); j++ {
			frame = append(frame, msg[j]^mask[j%4])
		}
		if _, err := pw.Write(frame); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 2+len(msg))
		if _, err := io.ReadFull(resp.Body, got); err != nil {
			t.Fatalf("echo %d: %v", i, err)
		}
		if got[0] != 0x81 || int(got[1]) != len(msg) || string(got[2:]) != msg {
			t.Fatalf("echo %d: frame % x", i, got)
		}
	}
	pw.Close()
}

// startUnbound runs Debian's unbound on a free 127.0.0.1 port with one
// local record, meshd.test A 192.0.2.7, and returns its address.
func startUnbound(t *testing.T) string {
	t.Helper()
	bin := needTool(t, "unbound", "unbound", "/usr/sbin/unbound")
	dir := t.TempDir()
	port := freeUDPPortE2E(t)
	cfg := fmt.Sprintf(`server:
	interface: 127.0.0.1
	port: %d
	do-ip6: no
	do-tcp: no
	do-daemonize: no
	chroot: ""
	username: ""
	pidfile: ""
	directory: %q
	use-syslog: no
	logfile: ""
	num-threads: 1
	module-config: "iterator"
	access-control: 127.0.0.0/8 allow
	local-zone: "meshd.test." static
	local-data: "meshd.test. 300 IN A 192.0.2.7"
remote-control:
	control-enable: no
`, port, dir)
	path := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-d", "-c", path)
	var log procOutput
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill() // by its PID
		cmd.Wait()
	})
	addr := "127.0.0.1:" + strconv.Itoa(port)
	eventually(t, 10*time.Second, "unbound answers", func() error {
		if out, err := dig(t, addr, 1, 0); err != nil || out != 1 {
			return fmt.Errorf("%v (%d answers; log: %s)", err, out, log.String())
		}
		return nil
	})
	return addr
}

// dig asks addr n times for meshd.test A with dig, from source port
// srcPort (0: dig's own choice), and returns how many answers were right.
func dig(t *testing.T, addr string, n, srcPort int) (int, error) {
	t.Helper()
	bin := needTool(t, "dig (dnsutils)", "dig")
	host, port, _ := net.SplitHostPort(addr)
	var batch strings.Builder
	for range n {
		fmt.Fprintf(&batch, "@%s -p %s meshd.test A +short +tries=1 +time=2", host, port)
		if srcPort != 0 {
			fmt.Fprintf(&batch, " -b 127.0.0.1#%d", srcPort)
		}
		batch.WriteString("\n")
	}
	path := filepath.Join(t.TempDir(), "batch")
	if err := os.WriteFile(path, []byte(batch.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-f", path).CombinedOutput()
	good := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) == "192.0.2.7" {
			good++
		}
	}
	return good, err
}

// TestDNSThroughMesh: dig, BIND's DNS client, asks unbound, a DNS server
// that runs only in region us, through a sidecar's --udp-out socket in eu
// (sidecar → gateway eu → gateway us → sidecar → unbound, datagrams as
// capsules on CONNECT tunnels) and through an edge's --public-udp port:
// 1,000 queries each way, none lost.
func TestDNSThroughMesh(t *testing.T) {
	ub := startUnbound(t)
	m := newRouteMesh(t)
	gwEU := m.gateway("gw-eu", "eu")
	gwUS := m.gateway("gw-us", "us", "--wan-join", gwEU.addr("wan-gossip"))
	m.node("dns-us-1", "--role", "sidecar", "--region", "us", "--service", "dns", "--udp", "dns="+ub,
		"--outbound", "127.0.0.1:0", "--join", gwUS.addr("gossip"), "--health-interval", "300ms")
	api := m.sidecar("api-eu-1", "api", "eu", startApp(t, "api", "api-eu-1", "eu"), gwEU, "--udp-out", "dns/dns=127.0.0.1:0")
	edge := m.node("edge-eu", "--role", "edge", "--region", "eu", "--public-http", "127.0.0.1:0",
		"--wan-join", gwEU.addr("wan-gossip"), "--public-udp", "127.0.0.1:0=dns")
	for _, path := range []struct{ name, addr string }{
		{"sidecar", api.addr("udp-out dns/dns")}, {"edge", edge.addr("public-udp 127.0.0.1:0")},
	} {
		eventually(t, 20*time.Second, "dig through the "+path.name, func() error {
			if n, err := dig(t, path.addr, 1, 0); n != 1 {
				return fmt.Errorf("no answer (%v)", err)
			}
			return nil
		})
		// One source port: one flow, as a resolver's would be.
		src := freeUDPPortE2E(t)
		if n, err := dig(t, path.addr, 1000, src); n != 1000 {
			t.Errorf("through the %s: %d of 1000 queries answered (%v)", path.name, n, err)
		}
		// dig's own random ports: a flow per query, 200 of them.
		if n, err := dig(t, path.addr, 200, 0); n != 200 {
			t.Errorf("through the %s, a flow per query: %d of 200 answered (%v)", path.name, n, err)
		}
	}
}

func freeUDPPortE2E(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}
