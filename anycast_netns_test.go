package main

// Network end-to-end test of the edge's anycast: network namespaces joined
// by veth pairs, BIRD 2 as the router in front of two edges, each edge a
// whole meshd mesh of its own (edge, gateway, sidecar, app) on its
// namespace's loopback, both announcing 198.51.100.10/32 over eBGP with
// BFD. The router installs the route into its kernel table with ECMP, so
// that traffic from the client namespace reaches both edges and the table
// shows exactly which edges are announced.
//
// It needs root, ip (iproute2), bird and birdc (bird2), nft (nftables),
// curl and go. Without them it skips, except under CI=true where it fails.
// Nothing leaves the namespaces the test creates: no namespace has a
// default route, the host's interfaces and routes are never touched, and
// every namespace, process and file is removed in t.Cleanup.
//
// Run it alone with:
//
//	go test -race -count=1 -run TestAnycastNetns -v .

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	anycastIP     = "198.51.100.10"
	anycastPrefix = anycastIP + "/32"
	routerASN     = 64500
	// bgpHold is the hold time the edges propose; BIRD accepts it, so it
	// is the negotiated hold time of every session (RFC 4271 §4.2).
	bgpHold = 3 * time.Second
	// upHold is the edges' --bgp-up-hold.
	upHold = time.Second
	// edgeDrain is the edges' --drain-delay.
	edgeDrain = 2 * time.Second
	nftTable  = "meshd_netns_test"
	// resetRecovery bounds the edge's return after the router resets its
	// session: the edge renews its peer at once, gobgp dials a new peer
	// after 1.5 s to 2 s (its minimum connect retry of 2 s, jittered; the
	// edges' connect-retry=1s is below it), BIRD accepts at once, and the
	// route reaches the kernel in milliseconds (measured: 1.7 s to 2 s);
	// 1.5 s of margin for a loaded machine. It stays below gobgp's own
	// 5 s idle hold plus its dial, so a peer that is not renewed fails.
	// The up-hold does not apply: the edge could serve all along.
	resetRecovery = 3500 * time.Millisecond
	// silenceRecovery bounds the edge's return after a silent failure
	// ends: BIRD's error wait after the BFD failure (1 s, 2 s on a
	// repeated error) overlaps gobgp's dials, which fail while the path
	// drops SYNs and come every 2 s (each waits 2 s for its SYN), so the
	// next dial is at most 2 s away (measured: 1.4 s to 2.4 s); 1.5 s of
	// margin. Before the fix it was 31.5 s (gobgp's idle hold after its
	// BFD reset).
	silenceRecovery = 5500 * time.Millisecond
)

// netnsHelperSrc is the app behind each sidecar (it answers with the name
// of its namespace) and the client's request loop. It is built by the test
// into its temp dir, so the test needs no program outside the repository.
const netnsHelperSrc = `package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

type result struct {
	I     int    ` + "`json:\"i\"`" + `
	Start int64  ` + "`json:\"start\"`" + `
	End   int64  ` + "`json:\"end\"`" + `
	Body  string ` + "`json:\"body,omitempty\"`" + `
	Err   string ` + "`json:\"err,omitempty\"`" + `
}

func main() {
	listen := flag.String("listen", "", "serve: address of the app")
	name := flag.String("name", "", "serve: what the app answers")
	get := flag.String("get", "", "loop: URL to request")
	host := flag.String("host", "", "loop: Host header")
	n := flag.Int("n", 200, "loop: number of requests at most")
	every := flag.Duration("every", 20*time.Millisecond, "loop: pause between requests")
	limit := flag.Duration("for", 20*time.Second, "loop: time at most")
	flag.Parse()
	if *get != "" {
		loop(*get, *host, *n, *every, *limit)
		return
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "{\"msg\":\"node started\"}")
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, *name)
	}))
}

// loop sends one request per new connection, so that each is routed (and
// hashed over ECMP paths) on its own, and prints one JSON line each.
func loop(url, host string, n int, every, limit time.Duration) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	enc := json.NewEncoder(os.Stdout)
	deadline := time.Now().Add(limit)
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		r := result{I: i, Start: time.Now().UnixNano()}
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Host = host
		resp, err := c.Do(req)
		if err == nil {
			var b []byte
			b, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			r.Body = string(b)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		if err != nil {
			r.Err = err.Error()
		}
		r.End = time.Now().UnixNano()
		enc.Encode(r)
		time.Sleep(every)
	}
}
`

// loopResult is one line of the helper's request loop.
type loopResult struct {
	I     int    `json:"i"`
	Start int64  `json:"start"`
	End   int64  `json:"end"`
	Body  string `json:"body"`
	Err   string `json:"err"`
}

// lab is the test's little internet: the namespaces, BIRD, and one mesh
// per edge namespace.
type lab struct {
	t       *testing.T
	dir     string
	router  string // namespace names, unique per run
	client  string
	edges   []*labEdge
	helper  string // built helper binary
	birdCtl string
	bird    *labProc
}

// labEdge is an edge namespace and the mesh inside it.
type labEdge struct {
	name       string // "edge1": the app answers with it
	ns         string
	addr       string // on the link to the router
	routerAddr string
	asn        int
	caDir      string
	edge, gw   *labProc
}

// labProc is a process started in a namespace. The command is
// `ip netns exec NS prog ...`, which execs prog in place, so the PID is the
// program's own and signals reach it directly.
type labProc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  bytes.Buffer
	done chan struct{}
}

func (p *labProc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// stop sends sig to the process (by its PID) and waits for it to exit.
func (p *labProc) stop(sig syscall.Signal, within time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(within):
		return fmt.Errorf("%s did not exit within %v after %v", p.name, within, sig)
	}
}

func (p *labProc) exitErr() error {
	if st := p.cmd.ProcessState; st != nil && !st.Success() {
		return fmt.Errorf("%s exited with %v", p.name, st)
	}
	return nil
}

// netnsPrereqs says why the test cannot run here, or nil.
func netnsPrereqs() error {
	if runtime.GOOS != "linux" {
		return errors.New("network namespaces are Linux only")
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, BIRD on port 179, nftables)")
	}
	var missing []string
	for _, tool := range []string{"ip", "bird", "birdc", "nft", "curl", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools %v (apt-get install iproute2 bird2 nftables curl)", missing)
	}
	return nil
}

// run runs a command and fails the test with its output on error.
func (l *lab) run(name string, args ...string) string {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// in runs a command inside namespace ns.
func (l *lab) in(ns string, args ...string) string {
	l.t.Helper()
	return l.run("ip", append([]string{"netns", "exec", ns}, args...)...)
}

// start runs argv inside namespace ns, collecting its stderr, and waits
// for the JSON log line "node started". The process is killed in Cleanup.
func (l *lab) start(ns, name string, argv ...string) *labProc {
	l.t.Helper()
	p := &labProc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	started := make(chan struct{})
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var once sync.Once
		for sc.Scan() {
			line := sc.Bytes()
			p.mu.Lock()
			p.log.Write(line)
			p.log.WriteByte('\n')
			p.mu.Unlock()
			var rec struct{ Msg string }
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "node started" {
				once.Do(func() { close(started) })
			}
		}
		p.cmd.Wait()
	}()
	l.t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if l.t.Failed() {
			l.t.Logf("--- log of %s:\n%s", p.name, tail(p.logs(), 40))
		}
	})
	select {
	case <-started:
	case <-p.done:
		l.t.Fatalf("%s exited before starting:\n%s", name, p.logs())
	case <-time.After(20 * time.Second):
		l.t.Fatalf("%s did not start in 20s:\n%s", name, p.logs())
	}
	return p
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// newLab creates the namespaces, links and BIRD. Everything is undone in
// Cleanup, in reverse order, also when the test fails half way.
func newLab(t *testing.T) *lab {
	l := &lab{t: t, dir: t.TempDir()}
	var b [4]byte
	rand.Read(b[:])
	suffix := fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
	ns := func(role string) string {
		name := "meshd-" + role + "-" + suffix
		l.run("ip", "netns", "add", name)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", name, err, out)
			}
		})
		l.run("ip", "-n", name, "link", "set", "lo", "up")
		return name
	}
	l.router, l.client = ns("router"), ns("client")
	for i := 1; i <= 2; i++ {
		e := &labEdge{
			name:       fmt.Sprintf("edge%d", i),
			addr:       fmt.Sprintf("192.0.2.%d", 4*(i-1)+2),
			routerAddr: fmt.Sprintf("192.0.2.%d", 4*(i-1)+1),
			asn:        64510 + i,
		}
		e.ns = ns(e.name)
		l.edges = append(l.edges, e)
		// The veth pair is created inside the namespaces (never in the
		// host's), a /30 per link; deleting a namespace deletes its end.
		dev := "to-" + e.name
		l.run("ip", "-n", l.router, "link", "add", dev, "type", "veth", "peer", "name", "to-router", "netns", e.ns)
		l.run("ip", "-n", l.router, "addr", "add", e.routerAddr+"/30", "dev", dev)
		l.run("ip", "-n", l.router, "link", "set", dev, "up")
		l.run("ip", "-n", e.ns, "addr", "add", e.addr+"/30", "dev", "to-router")
		l.run("ip", "-n", e.ns, "link", "set", "to-router", "up")
		// The operator's part: the way back to the clients, no default
		// route. The edge puts the anycast address on lo itself
		// (--anycast-bind).
		l.run("ip", "-n", e.ns, "route", "add", "203.0.113.0/24", "via", e.routerAddr)
	}
	l.run("ip", "-n", l.router, "link", "add", "to-client", "type", "veth", "peer", "name", "to-router", "netns", l.client)
	l.run("ip", "-n", l.router, "addr", "add", "203.0.113.1/30", "dev", "to-client")
	l.run("ip", "-n", l.router, "link", "set", "to-client", "up")
	l.run("ip", "-n", l.client, "addr", "add", "203.0.113.2/30", "dev", "to-router")
	l.run("ip", "-n", l.client, "link", "set", "to-router", "up")
	l.run("ip", "-n", l.client, "route", "add", "198.51.100.0/24", "via", "203.0.113.1")
	// Forward, and hash ECMP flows on ports too (policy 1, L4), so that
	// one client's connections spread over both edges. Both are settings
	// of the router namespace only.
	l.in(l.router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv4/fib_multipath_hash_policy")

	l.startBird()
	return l
}

// startBird writes BIRD's configuration and runs it in the foreground in
// the router namespace. Both edges are eBGP neighbors with BFD; the kernel
// protocol merges equal paths, so the table lists every announcing edge.
// Short retry timers keep the test's recoveries fast.
func (l *lab) startBird() {
	conf := filepath.Join(l.dir, "bird.conf")
	l.birdCtl = filepath.Join(l.dir, "bird.ctl")
	var b strings.Builder
	fmt.Fprintf(&b, `router id 192.0.2.1;
log stderr all;
protocol device { scan time 10; }
protocol kernel {
	ipv4 { import none; export all; };
	merge paths on;
}
protocol bfd {
	debug { states };
	interface "*" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };
}
template bgp edge {
	local as %d;
	connect delay time 1;
	connect retry time 1;
	error wait time 1, 2;
	bfd on;
	ipv4 { import all; export none; };
}
`, routerASN)
	for _, e := range l.edges {
		fmt.Fprintf(&b, "protocol bgp %s from edge { neighbor %s as %d; local %s; }\n", e.name, e.addr, e.asn, e.routerAddr)
	}
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		l.t.Fatal(err)
	}
	p := &labProc{name: "bird", done: make(chan struct{})}
	p.cmd = exec.Command("ip", "netns", "exec", l.router, "bird", "-f", "-c", conf, "-s", l.birdCtl)
	var out syncWriter
	out.p = p
	p.cmd.Stdout, p.cmd.Stderr = &out, &out
	if err := p.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	l.bird = p
	l.t.Cleanup(func() {
		if l.t.Failed() {
			l.t.Logf("--- birdc show protocols all:\n%s", l.birdc("show", "protocols", "all"))
			l.t.Logf("--- birdc show bfd sessions:\n%s", l.birdc("show", "bfd", "sessions"))
			l.t.Logf("--- bird log:\n%s", tail(p.logs(), 80))
		}
		p.cmd.Process.Kill()
		<-p.done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := exec.Command("birdc", "-s", l.birdCtl, "show", "status").CombinedOutput(); err == nil {
			return
		}
		select {
		case <-p.done:
			l.t.Fatalf("bird exited: %v\n%s", p.cmd.ProcessState, p.logs())
		default:
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("bird did not open its control socket in 10s:\n%s", p.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type syncWriter struct{ p *labProc }

func (w *syncWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.log.Write(b)
}

// birdc asks the running BIRD; for logs only.
func (l *lab) birdc(args ...string) string {
	out, err := exec.Command("birdc", append([]string{"-s", l.birdCtl}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("birdc: %v\n%s", err, out)
	}
	return string(out)
}

// nexthops reads the router's kernel table: the set of edges (by link
// address) the anycast route points to; empty when there is no route.
func (l *lab) nexthops() (map[string]bool, error) {
	out, err := exec.Command("ip", "-n", l.router, "route", "show", "exact", anycastPrefix).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ip route: %v: %s", err, out)
	}
	return parseNexthops(string(out)), nil
}

// parseNexthops takes every "via ADDR" of `ip route show` output, for a
// single path ("... via A dev ...") and a multipath route ("nexthop via A").
func parseNexthops(out string) map[string]bool {
	hops := map[string]bool{}
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "via" {
			hops[f[i+1]] = true
		}
	}
	return hops
}

func hopList(h map[string]bool) []string {
	var s []string
	for a := range h {
		s = append(s, a)
	}
	slices.Sort(s)
	return s
}

// waitRoute polls the router's kernel table every 10 ms until cond holds,
// and returns the time since from (the moment of the failure). The time is
// that of the first read that satisfied cond, so it is at most 10 ms plus
// one `ip route` late.
func (l *lab) waitRoute(what string, from time.Time, limit time.Duration, cond func(map[string]bool) bool) time.Duration {
	l.t.Helper()
	_, changed := l.waitRouteWindow(what, from, limit, cond)
	return changed.Sub(from)
}

// waitRouteWindow is waitRoute returning the window in which the table
// changed: after the last read that did not satisfy cond (or from) and at
// or before the first read that did.
func (l *lab) waitRouteWindow(what string, from time.Time, limit time.Duration, cond func(map[string]bool) bool) (notYet, changed time.Time) {
	l.t.Helper()
	var last map[string]bool
	notYet = from
	for {
		read := time.Now()
		h, err := l.nexthops()
		if err != nil {
			l.t.Fatal(err)
		}
		if cond(h) {
			return notYet, time.Now()
		}
		last, notYet = h, read
		if time.Since(from) > limit {
			l.t.Fatalf("%s: not within %v; the router's route points to %v\n%s", what, limit, hopList(last), l.birdc("show", "route", "all"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func has(addrs ...string) func(map[string]bool) bool {
	return func(h map[string]bool) bool {
		for _, a := range addrs {
			if !h[a] {
				return false
			}
		}
		return true
	}
}

func hasNot(addr string) func(map[string]bool) bool {
	return func(h map[string]bool) bool { return !h[addr] }
}

// curl requests the anycast address from the client namespace and returns
// the body: the name of the edge namespace that answered.
func (l *lab) curl() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", l.client, "curl", "-sS", "--fail", "--max-time", "2",
		"-H", "Host: web.localhost", "http://"+anycastIP+"/").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("curl: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// buildHelper compiles netnsHelperSrc into the lab's directory.
func (l *lab) buildHelper() {
	src := filepath.Join(l.dir, "helper", "main.go")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(src, []byte(netnsHelperSrc), 0o644); err != nil {
		l.t.Fatal(err)
	}
	l.helper = filepath.Join(l.dir, "helper", "netnshelper")
	cmd := exec.Command("go", "build", "-o", l.helper, "main.go")
	cmd.Dir = filepath.Dir(src)
	// Outside any module; the helper imports the standard library only.
	cmd.Env = append(os.Environ(), "GO111MODULE=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("building the helper: %v\n%s", err, out)
	}
}

// Fixed addresses inside each edge namespace: it is the namespace's own
// loopback, so they cannot collide with anything else on the machine.
const (
	nsGatewayMesh = "127.0.0.1:8443"
	nsGatewayLAN  = "127.0.0.1:7946"
	nsGatewayWAN  = "127.0.0.1:7947"
	nsEdgeWAN     = "127.0.0.1:7948"
	nsSidecarMesh = "127.0.0.1:8444"
	nsSidecarLAN  = "127.0.0.1:7950"
	nsApp         = "127.0.0.1:8080"
)

func (l *lab) meshd(e *labEdge, name string, args ...string) *labProc {
	l.t.Helper()
	argv := append([]string{meshdBin, "run", "--name", name, "--region", "r1", "--ca-dir", e.caDir,
		"--log-format", "json", "--log-level", "info"}, args...)
	return l.start(e.ns, e.name+"/"+name, argv...)
}

// startGateway starts the gateway; rejoin is for a restart, when the
// sidecar and the edge are there to be joined.
func (l *lab) startGateway(e *labEdge, rejoin bool) {
	args := []string{"--role", "gateway", "--listen", nsGatewayMesh, "--gossip-addr", nsGatewayLAN,
		"--wan-gossip-addr", nsGatewayWAN, "--admin", "127.0.0.1:9902", "--drain-delay", "100ms"}
	if rejoin {
		args = append(args, "--join", nsSidecarLAN, "--wan-join", nsEdgeWAN)
	}
	e.gw = l.meshd(e, "gw", args...)
}

// startEdge starts the edge with its BGP speaker; bfd says whether its
// session to the router runs BFD (default timers, 300 ms × 3).
func (l *lab) startEdge(e *labEdge, bfd bool) {
	peer := fmt.Sprintf("%s,%d,hold=%s,connect-retry=1s", e.routerAddr, routerASN, bgpHold)
	if bfd {
		peer += ",bfd"
	}
	e.edge = l.meshd(e, "edge", "--role", "edge", "--public-http", "0.0.0.0:80", "--wan-gossip-addr", nsEdgeWAN,
		"--wan-join", nsGatewayWAN, "--admin", "127.0.0.1:9901", "--drain-delay", edgeDrain.String(),
		"--anycast", anycastPrefix, "--anycast-bind", "lo", "--bgp-asn", fmt.Sprint(e.asn), "--bgp-router-id", e.addr,
		"--bgp-peer", peer, "--bgp-up-hold", upHold.String())
}

// startMesh runs a self-contained mesh in e's namespace: its own CA, a
// gateway, the app, its sidecar, and the anycast edge.
func (l *lab) startMesh(e *labEdge) {
	e.caDir = filepath.Join(l.dir, e.name, "ca")
	l.run(meshdBin, "ca", "init", "--trust-domain", e.name+".netns.meshd", "--dir", e.caDir)
	l.startGateway(e, false)
	l.start(e.ns, e.name+"/app", l.helper, "-listen", nsApp, "-name", e.name)
	l.meshd(e, "web", "--role", "sidecar", "--service", "web", "--upstream", nsApp, "--listen", nsSidecarMesh,
		"--outbound", "127.0.0.1:15001", "--gossip-addr", nsSidecarLAN, "--join", nsGatewayLAN,
		"--health-interval", "300ms", "--admin", "127.0.0.1:9903", "--drain-delay", "100ms")
	l.startEdge(e, true)
}

// nft drops (or stops dropping) the edge's BGP and BFD packets inside its
// namespace, both ways: TCP 179 and UDP 3784/3785 (RFC 5881 §4). The edge
// process keeps running: to the router it is a silent failure.
func (l *lab) silence(e *labEdge, on bool) {
	l.t.Helper()
	if !on {
		l.in(e.ns, "nft", "delete", "table", "inet", nftTable)
		return
	}
	rules := fmt.Sprintf(`table inet %s {
	chain in {
		type filter hook input priority 0; policy accept;
		tcp sport 179 drop
		tcp dport 179 drop
		udp dport { 3784, 3785 } drop
		udp sport { 3784, 3785 } drop
	}
	chain out {
		type filter hook output priority 0; policy accept;
		tcp sport 179 drop
		tcp dport 179 drop
		udp dport { 3784, 3785 } drop
		udp sport { 3784, 3785 } drop
	}
}
`, nftTable)
	f := filepath.Join(l.dir, e.name+".nft")
	if err := os.WriteFile(f, []byte(rules), 0o600); err != nil {
		l.t.Fatal(err)
	}
	l.in(e.ns, "nft", "-f", f)
}

// answersOnly sends n requests and fails unless every one is answered by
// the edge named want.
func (l *lab) answersOnly(want string, n int) {
	l.t.Helper()
	for i := 0; i < n; i++ {
		got, err := l.curl()
		if err != nil {
			l.t.Fatalf("request %d: %v", i, err)
		}
		if got != want {
			l.t.Fatalf("request %d answered by %q, want only %q", i, got, want)
		}
	}
}

// waitAnswer polls until a request is answered by the edge named want.
func (l *lab) waitAnswer(want string, limit time.Duration) {
	l.t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < limit {
		got, err := l.curl()
		if err == nil && got == want {
			return
		}
		last = fmt.Sprintf("%q %v", got, err)
		time.Sleep(50 * time.Millisecond)
	}
	l.t.Fatalf("no answer from %s within %v; last: %s", want, limit, last)
}

func TestAnycastNetns(t *testing.T) {
	if testing.Short() {
		t.Skip("network end-to-end test: skipped with -short")
	}
	if err := netnsPrereqs(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("anycast network test cannot run in CI: %v", err)
		}
		t.Skipf("anycast network test: %v", err)
	}
	l := newLab(t)
	l.buildHelper()
	e1, e2 := l.edges[0], l.edges[1]
	for _, e := range l.edges {
		l.startMesh(e)
	}

	type measure struct {
		what  string
		took  time.Duration
		bound string
	}
	var table []measure
	defer func() {
		var b strings.Builder
		fmt.Fprintf(&b, "failure → router withdrawal (hold time %v, BFD 300ms×3, up-hold %v):\n", bgpHold, upHold)
		for _, m := range table {
			fmt.Fprintf(&b, "  %-44s %8v   (%s)\n", m.what, m.took.Round(time.Millisecond), m.bound)
		}
		t.Log(b.String())
	}()

	// 1. Both edges announce once they can serve; the router's kernel
	// table gets one path per edge, and the client is answered.
	start := time.Now()
	took := l.waitRoute("both edges announced", start, 30*time.Second, has(e1.addr, e2.addr))
	t.Logf("both edges announced %v after the last edge started", took)
	seen := map[string]int{}
	for i := 0; i < 60 && (seen[e1.name] == 0 || seen[e2.name] == 0); i++ {
		got, err := l.curl()
		if err != nil {
			t.Fatalf("client not answered through the anycast address: %v", err)
		}
		seen[got]++
	}
	if seen[e1.name] == 0 || seen[e2.name] == 0 || len(seen) != 2 {
		t.Fatalf("answers over ECMP: %v, want both edges", seen)
	}
	t.Logf("answers over ECMP: %v", seen)

	// 2. SIGKILL of an edge that gets traffic: the kernel closes its BGP
	// connection, BIRD withdraws at once, answers come from the other.
	t0 := time.Now()
	if err := e1.edge.stop(syscall.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	took = l.waitRoute("edge1 withdrawn after SIGKILL", t0, bgpHold+2*time.Second, hasNot(e1.addr))
	table = append(table, measure{"SIGKILL of the edge process", took, fmt.Sprintf("< hold %v + 2s", bgpHold)})
	l.answersOnly(e2.name, 10)

	// 3. Restart it; then silence it with BFD, then without.
	t0 = time.Now()
	l.startEdge(e1, true)
	took = l.waitRoute("edge1 announced after restart", t0, 20*time.Second, has(e1.addr, e2.addr))
	t.Logf("restarted edge1 announced again after %v (up-hold %v)", took, upHold)
	l.waitBFDUp(e1, 10*time.Second)

	l.silence(e1, true)
	t0 = time.Now()
	took = l.waitRoute("edge1 withdrawn by BFD", t0, bgpHold+2*time.Second, hasNot(e1.addr))
	table = append(table, measure{"silent failure, BFD 300ms×3", took, "< 1s"})
	if took >= time.Second {
		t.Errorf("BFD took %v to detect the silent edge, want < 1s", took)
	}
	// The path comes back: the edge recovers by itself, without a
	// restart. Its BGP peer was renewed when BFD took the session down
	// (no 30 s idle hold after gobgp's reset, no reset queued for the
	// next session), so what remains is BIRD's error wait after the BFD
	// failure (error wait time 1 s) and gobgp's next dial (every 2 s,
	// its minimum connect retry, while the silence drops the SYNs).
	l.silence(e1, false)
	t0 = time.Now()
	took = l.waitRoute("edge1 announced again after the silence ended", t0, silenceRecovery, has(e1.addr, e2.addr))
	table = append(table, measure{"  recovery: path back → announced", took, fmt.Sprintf("< %v", silenceRecovery)})
	l.waitAnswer(e1.name, 10*time.Second)
	// Now without BFD: the edge restarts with another peer configuration.
	if err := e1.edge.stop(syscall.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	l.waitRoute("edge1 withdrawn after SIGKILL", time.Now(), bgpHold+2*time.Second, hasNot(e1.addr))
	l.startEdge(e1, false)
	l.waitRoute("edge1 without BFD announced", time.Now(), 20*time.Second, has(e1.addr, e2.addr))
	l.silence(e1, true)
	t0 = time.Now()
	took = l.waitRoute("edge1 withdrawn by the hold timer", t0, bgpHold+3*time.Second, hasNot(e1.addr))
	table = append(table, measure{"silent failure, no BFD", took, fmt.Sprintf("≈ hold %v", bgpHold)})
	// BIRD's hold timer restarts on each keepalive (every hold/3), so it
	// fires between 2/3 of the hold time and the hold time after the drop.
	if took < bgpHold*2/3-100*time.Millisecond {
		t.Errorf("without BFD the silent edge was withdrawn after %v, before the hold timer (%v) could fire", took, bgpHold)
	}
	l.silence(e1, false)
	// Back to BFD for the rest of the test.
	if err := e1.edge.stop(syscall.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	l.startEdge(e1, true)
	l.waitRoute("edge1 with BFD announced", time.Now(), 30*time.Second, has(e1.addr, e2.addr))
	l.waitAnswer(e1.name, 10*time.Second)

	// 4. Health failure: the gateway dies, the edge process lives. The
	// edge cannot serve, so it withdraws; it announces again once the
	// gateway is back and the up-hold has passed.
	t0 = time.Now()
	if err := e1.gw.stop(syscall.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	took = l.waitRoute("edge1 withdrawn when its gateway died", t0, 5*time.Second, hasNot(e1.addr))
	table = append(table, measure{"health failure (gateway SIGKILL)", took, "≈ 1s"})
	if took > 1500*time.Millisecond {
		t.Errorf("the edge withdrew %v after its gateway died, want about 1s", took)
	}
	l.answersOnly(e2.name, 5)
	t0 = time.Now()
	l.startGateway(e1, true)
	took = l.waitRoute("edge1 announced after its gateway came back", t0, 30*time.Second, has(e1.addr, e2.addr))
	table = append(table, measure{"  recovery: gateway restart → announced", took, fmt.Sprintf("≥ up-hold %v", upHold)})
	if took < upHold {
		t.Errorf("the edge announced %v after its gateway restarted, before the up-hold %v", took, upHold)
	}
	l.waitAnswer(e1.name, 10*time.Second)

	// 5. SIGTERM of edge2 while the client sends requests: the route goes
	// first, the edge keeps serving for --drain-delay, then closes.
	l.drainUnderLoad(e1, e2, func(took time.Duration) {
		table = append(table, measure{"SIGTERM (drain: withdraw first)", took, "withdrawn before listeners close"})
	})

	// 6. The router resets the session (a restart, a reload), twice: the
	// edge must come back by itself each time, and stay.
	for i := 1; i <= 2; i++ {
		took := l.routerReset(e1)
		table = append(table, measure{fmt.Sprintf("router resets the session (%d) → announced", i), took, fmt.Sprintf("< %v", resetRecovery)})
	}
}

// routerReset restarts BIRD's session with e (birdc restart: a Cease to
// the edge, a new BFD session on the router), waits for e to be announced
// again within resetRecovery, and checks that it stays announced.
//
// gobgp v4.8.0 alone never recovers here: its BFD stays bound to the
// router's old BFD discriminator, expires, and resets the peer while it
// is down; gobgp sends that queued Cease the moment the next session is
// established, the router drops it and starts a new BFD session, and the
// cycle repeats every 30 s. The bgp package renews the peer when its
// session goes down, which clears both.
func (l *lab) routerReset(e *labEdge) time.Duration {
	l.t.Helper()
	l.waitBFDUp(e, 10*time.Second)
	t0 := time.Now()
	l.birdc("restart", e.name)
	l.waitRoute(e.name+" withdrawn after the router's reset", t0, 5*time.Second, hasNot(e.addr))
	took := l.waitRoute(e.name+" announced again after the router's reset", t0, resetRecovery, has(e.addr))
	l.waitAnswer(e.name, 10*time.Second)
	// A stale BFD session would expire within its detection time (0.9 s
	// at the router's side, 1 s slow-start intervals before that), and a
	// queued reset ends the session at once: both would show by now.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		h, err := l.nexthops()
		if err != nil {
			l.t.Fatal(err)
		}
		if !h[e.addr] {
			l.t.Fatalf("%s withdrawn again %v after it came back from the router's reset", e.name, time.Since(t0)-took)
		}
	}
	l.waitBFDUp(e, 10*time.Second)
	return took
}

// waitBFDUp waits until BIRD's BFD session with e is up with its final
// timers: a session that has just come up still runs the slow start
// intervals of RFC 5880 §6.8.3 (1 s) until its poll sequence ends, and a
// silence then would be detected late. The router's detection time is
// the edge's multiplier times the larger of the router's receive interval
// and the edge's transmit interval: 3 × 300 ms.
func (l *lab) waitBFDUp(e *labEdge, limit time.Duration) {
	l.t.Helper()
	start := time.Now()
	for {
		out := l.birdc("show", "bfd", "sessions")
		for _, line := range strings.Split(out, "\n") {
			// IP address, interface, state, since, interval, timeout
			f := strings.Fields(line)
			if len(f) < 6 || f[0] != e.addr || f[2] != "Up" {
				continue
			}
			iv, err1 := time.ParseDuration(f[len(f)-2] + "s")
			timeout, err2 := time.ParseDuration(f[len(f)-1] + "s")
			if err1 == nil && err2 == nil && iv <= 300*time.Millisecond && timeout <= 900*time.Millisecond {
				return
			}
		}
		if time.Since(start) > limit {
			l.t.Fatalf("BFD session with %s not up with its final timers within %v:\n%s", e.name, limit, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// drainUnderLoad runs a bounded request loop in the client namespace (one
// connection per request, spread over both edges), sends SIGTERM to
// stopping while it runs, and checks that no request failed.
func (l *lab) drainUnderLoad(staying, stopping *labEdge, record func(time.Duration)) {
	t := l.t
	t.Helper()
	const every = 20 * time.Millisecond
	cmd := exec.Command("ip", "netns", "exec", l.client, l.helper, "-get", "http://"+anycastIP+"/", "-host", "web.localhost",
		"-n", "1000", "-every", every.String(), "-for", "20s")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var results []loopResult
	var badLines []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var r loopResult
			mu.Lock()
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				badLines = append(badLines, sc.Text())
			} else {
				results = append(results, r)
			}
			mu.Unlock()
		}
		cmd.Wait()
	}()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(results) }

	// Let the loop run on both edges first.
	for start := time.Now(); count() < 25; {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("request loop made %d requests in 10s: %s", count(), stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A random phase, so that the signal is not tied to the loop's pauses.
	time.Sleep(mrand.N(every + 3*time.Millisecond))
	t0 := time.Now()
	if err := stopping.edge.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	notYet, switched := l.waitRouteWindow(stopping.name+" withdrawn after SIGTERM", t0, 5*time.Second, hasNot(stopping.addr))
	took := switched.Sub(t0)
	record(took)
	if took >= edgeDrain {
		t.Errorf("%s was withdrawn %v after SIGTERM, not before its drain delay (%v) ended", stopping.name, took, edgeDrain)
	}
	// Withdrawn, but still serving what the routers send it until the
	// drain delay ends: ask it directly on its link address.
	out, err := exec.Command("ip", "netns", "exec", l.router, "curl", "-sS", "--fail", "--max-time", "2",
		"-H", "Host: web.localhost", "http://"+stopping.addr+"/").CombinedOutput()
	if since := time.Since(t0); since < edgeDrain && (err != nil || string(out) != stopping.name) {
		t.Errorf("%s did not serve %v after SIGTERM, inside its drain delay: %v %s", stopping.name, since, err, out)
	}
	select {
	case <-stopping.edge.done:
		t.Fatalf("%s exited %v after SIGTERM, before its drain delay %v", stopping.name, time.Since(t0), edgeDrain)
	default:
	}
	if err := stopping.edge.stop(syscall.SIGTERM, edgeDrain+15*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := stopping.edge.exitErr(); err != nil {
		t.Errorf("after SIGTERM: %v", err)
	}
	exited := time.Now()
	t.Logf("%s exited %v after SIGTERM (drain delay %v)", stopping.name, exited.Sub(t0), edgeDrain)
	// --anycast-bind: the edge took its address off lo when it stopped.
	if out, err := exec.Command("ip", "-n", stopping.ns, "addr", "show", "dev", "lo").CombinedOutput(); err != nil || strings.Contains(string(out), anycastIP+"/") {
		t.Errorf("%s: anycast address still on lo after SIGTERM (%v):\n%s", stopping.name, err, out)
	}
	// Twenty more requests after the exit, then stop the loop (it also
	// stops by itself after 1000 requests or 20 s).
	for n := count() + 20; count() < n; {
		select {
		case <-done:
			n = 0
		case <-time.After(10 * time.Millisecond):
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("request loop did not end in 10s")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(badLines) > 0 {
		t.Fatalf("request loop printed %q", badLines)
	}
	var before, during, after = map[string]int{}, map[string]int{}, map[string]int{}
	failed := 0
	var durs []time.Duration
	lostToSwitch := 0
	for _, r := range results {
		durs = append(durs, time.Duration(r.End-r.Start))
		if r.Err != "" {
			failed++
			// A stateless router re-hashes every flow when a path goes:
			// a connection that was open to the withdrawn edge at that
			// instant has its next packets sent to the other edge, which
			// knows nothing of it and resets it. No edge can prevent
			// that, so such a request is counted apart; the edge's part
			// is that nothing else fails: it keeps serving until the
			// routers have moved, and closes only then.
			overlaps := r.Start <= switched.UnixNano() && r.End >= notYet.UnixNano()
			if overlaps && strings.Contains(r.Err, "connection reset") && lostToSwitch == 0 {
				lostToSwitch++
				t.Logf("request %d was open while the router switched paths (%v..%v after SIGTERM, switch in %v..%v) and was reset: %s",
					r.I, time.Unix(0, r.Start).Sub(t0), time.Unix(0, r.End).Sub(t0), notYet.Sub(t0), switched.Sub(t0), r.Err)
				continue
			}
			t.Errorf("request %d (%v after SIGTERM) failed: %s", r.I, time.Unix(0, r.Start).Sub(t0).Round(time.Millisecond), r.Err)
			continue
		}
		switch at := time.Unix(0, r.Start); {
		case at.Before(t0):
			before[r.Body]++
		case at.Before(exited):
			during[r.Body]++
		default:
			after[r.Body]++
		}
	}
	slices.Sort(durs)
	t.Logf("request loop: %d requests (one connection each, every %v), %d failed (%d open at the path switch); median %v, max %v; answered by: before SIGTERM %v, during the drain %v, after exit %v",
		len(results), every, failed, lostToSwitch, durs[len(durs)/2].Round(time.Microsecond), durs[len(durs)-1].Round(time.Microsecond), before, during, after)
	if len(results) < 100 {
		t.Errorf("the request loop made only %d requests: %s", len(results), stderr.String())
	}
	if before[stopping.name] == 0 {
		t.Errorf("%s answered nothing before SIGTERM (%v): the drain was not tested", stopping.name, before)
	}
	if after[stopping.name] != 0 || after[staying.name] == 0 {
		t.Errorf("after %s exited, answers came from %v", stopping.name, after)
	}
}
