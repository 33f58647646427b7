package main

// The SPIRE end-to-end test: a real spire-server and spire-agent, the
// release .ci/spire.sh builds, run on loopback and issue every node's SVID;
// the nodes read them with --spiffe-socket and follow SPIRE's rotations of
// SVIDs and of its CA.

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/tlsmgr"
)

// spireVersion is the SPIRE release the test runs; .ci/spire.sh builds it.
const spireVersion = "v1.13.3"

// needSPIRE returns the directory holding spire-server and spire-agent:
// $MESHD_SPIRE_DIR, else the cache .ci/spire.sh fills. Without them the
// test skips, and fails under CI=true (.ci/run builds them).
func needSPIRE(t *testing.T) string {
	t.Helper()
	var tried []string
	if d := os.Getenv("MESHD_SPIRE_DIR"); d != "" {
		tried = append(tried, d)
	}
	tried = append(tried, filepath.Join("/var/cache/meshd-spire", spireVersion))
	for _, d := range tried {
		ok := true
		for _, b := range []string{"spire-server", "spire-agent"} {
			if fi, err := os.Stat(filepath.Join(d, b)); err != nil || fi.Mode()&0o111 == 0 {
				ok = false
			}
		}
		if ok {
			return d
		}
	}
	msg := fmt.Sprintf("spire-server and spire-agent %s not found in %s: build them with .ci/spire.sh (.ci/run does) or set MESHD_SPIRE_DIR",
		spireVersion, strings.Join(tried, ", "))
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// spireProc is a running SPIRE process, killed by its PID when the test
// ends.
type spireProc struct {
	cmd  *exec.Cmd
	out  *procOutput
	done chan struct{}
}

func startSPIREProc(t *testing.T, bin string, args ...string) (*spireProc, error) {
	t.Helper()
	p := &spireProc{cmd: exec.Command(bin, args...), out: &procOutput{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p, nil
}

// waitHealthy runs check (a healthcheck subcommand) until it succeeds, the
// process exits or 30s pass.
func (p *spireProc) waitHealthy(name string, check func() error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v\n%s", name, p.cmd.ProcessState, lastLines(p.out.String(), 30))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy within 30s: %v\n%s", name, err, lastLines(p.out.String(), 30))
		}
	}
}

// spireServer is a spire-server with a sqlite datastore, the join_token
// node attestor and a self-signed CA of caTTL, whose SVIDs live svidTTL.
type spireServer struct {
	t    *testing.T
	bin  string
	sock string
	td   string
	port int
	proc *spireProc
}

func startSPIREServer(t *testing.T, binDir, dir, td string, caTTL, svidTTL time.Duration) *spireServer {
	t.Helper()
	s := &spireServer{t: t, bin: filepath.Join(binDir, "spire-server"), sock: filepath.Join(dir, "server.sock"), td: td}
	// SPIRE takes its port from the config: a free one now, and another
	// try when something took it before the server bound it.
	for attempt := 1; ; attempt++ {
		s.port = freePort(t)
		data := filepath.Join(dir, fmt.Sprintf("server-data-%d", attempt))
		conf := filepath.Join(dir, "server.conf")
		writeFile(t, conf, fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "INFO"
  ca_ttl = %q
  default_x509_svid_ttl = %q
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
}
`, s.port, s.sock, td, data, caTTL, svidTTL, filepath.Join(data, "datastore.sqlite3")))
		p, err := startSPIREProc(t, s.bin, "run", "-config", conf)
		if err != nil {
			t.Fatal(err)
		}
		err = p.waitHealthy("spire-server", func() error { _, err := s.cli("healthcheck"); return err })
		if err == nil {
			s.proc = p
			return s
		}
		if attempt < 3 && strings.Contains(p.out.String(), "address already in use") {
			p.cmd.Process.Kill()
			<-p.done
			continue
		}
		t.Fatal(err)
	}
}

// cli runs a spire-server subcommand ("entry create") against the server.
func (s *spireServer) cli(sub string, args ...string) (string, error) {
	a := append(strings.Fields(sub), "-socketPath", s.sock)
	out, err := exec.Command(s.bin, append(a, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("spire-server %s %s: %v\n%s", sub, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (s *spireServer) mustCLI(sub string, args ...string) string {
	s.t.Helper()
	out, err := s.cli(sub, args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// bundle returns the roots of the server's trust bundle.
func (s *spireServer) bundle() ([]*x509.Certificate, error) {
	out, err := s.cli("bundle show", "-format", "pem")
	if err != nil {
		return nil, err
	}
	var roots []*x509.Certificate
	rest := []byte(out)
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("spire-server bundle show: %w", err)
		}
		roots = append(roots, c)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("spire-server bundle show: no certificate in %q", out)
	}
	return roots, nil
}

// rootOf returns the root of the server's bundle that signed leaf.
func (s *spireServer) rootOf(leaf *x509.Certificate) (*x509.Certificate, error) {
	roots, err := s.bundle()
	if err != nil {
		return nil, err
	}
	for _, r := range roots {
		if leaf.CheckSignatureFrom(r) == nil {
			return r, nil
		}
	}
	return nil, fmt.Errorf("%v (serial %s) is signed by no root of SPIRE's bundle", leaf.URIs, leaf.SerialNumber.Text(16))
}

// spireAgent is a spire-agent attested with a join token, serving the
// Workload API on a socket, with the unix workload attestor reporting
// each workload's binary path. It keeps its keys and its own SVID on disk,
// so that it comes back from a restart without attesting again (a join
// token is good once).
type spireAgent struct {
	t       *testing.T
	bin     string
	conf    string
	sock    string
	entries int // SVIDs the agent must hold before it counts as started
	server  *spireServer
	proc    *spireProc
}

// startSPIREAgent starts the agent and returns it once it holds the SVIDs
// of all entries.
func startSPIREAgent(t *testing.T, binDir, dir string, s *spireServer, token string, entries int) *spireAgent {
	t.Helper()
	bundle := filepath.Join(dir, "bootstrap-bundle.pem")
	writeFile(t, bundle, s.mustCLI("bundle show"))
	a := &spireAgent{t: t, bin: filepath.Join(binDir, "spire-agent"), conf: filepath.Join(dir, "agent.conf"),
		sock: filepath.Join(dir, "agent.sock"), entries: entries, server: s}
	data := filepath.Join(dir, "agent-data")
	writeFile(t, a.conf, fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_bundle_path = %q
  trust_domain = %q
  join_token = %q
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "disk" {
    plugin_data {
      directory = %q
    }
  }
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = true
    }
  }
}
`, data, s.port, a.sock, bundle, s.td, token, data))
	a.start()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("spire-agent:\n%s", lastLines(a.proc.out.String(), 40))
			t.Logf("spire-server:\n%s", lastLines(s.proc.out.String(), 40))
		}
	})
	return a
}

// start runs the agent and waits until it is healthy and holds every
// entry's SVID (it is healthy a sync, about 5s, before it has them).
func (a *spireAgent) start() {
	a.t.Helper()
	p, err := startSPIREProc(a.t, a.bin, "run", "-config", a.conf)
	if err != nil {
		a.t.Fatal(err)
	}
	a.proc = p
	err = p.waitHealthy("spire-agent", func() error {
		out, err := exec.Command(a.bin, "healthcheck", "-socketPath", a.sock).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if n := strings.Count(p.out.String(), `msg="Creating X509-SVID"`); n < a.entries {
			return fmt.Errorf("%d of %d SVIDs created", n, a.entries)
		}
		return nil
	})
	if err != nil {
		a.t.Fatal(err)
	}
}

// restart stops the agent with SIGTERM, as an upgrade would, and starts it
// again on the same socket.
func (a *spireAgent) restart() {
	a.t.Helper()
	a.proc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.proc.done:
	case <-time.After(10 * time.Second):
		a.t.Fatal("spire-agent did not stop within 10s of SIGTERM")
	}
	a.start()
}

// addr is the agent's Workload API as --spiffe-socket takes it.
func (a *spireAgent) addr() string { return "unix://" + a.sock }

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// copyBinary puts a copy of the meshd binary at path.
func copyBinary(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(meshdBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// peerLeaf returns the certificate the mTLS listener at addr presents on a
// new handshake. The test has no SVID, so the listener refuses it once it
// asks for the client's; by then the client has seen the server's.
func peerLeaf(addr string) (*x509.Certificate, error) {
	var leaf *x509.Certificate
	conf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			c, err := x509.ParseCertificate(raw[0])
			leaf = c
			return err
		}}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, conf)
	if c != nil {
		c.Close()
	}
	if leaf == nil {
		return nil, fmt.Errorf("no certificate from %s: %v", addr, err)
	}
	return leaf, nil
}

// spireStreamApp is the web app of the SPIRE test: /long streams a line
// every 200ms until release is closed (at most two minutes), then a last
// line with the count; everything else is the echo app.
type spireStreamApp struct {
	srv     *httptest.Server
	release chan struct{}
}

func startSPIREStreamApp(t *testing.T, service, instance, region string) *spireStreamApp {
	t.Helper()
	a := &spireStreamApp{release: make(chan struct{})}
	echo := mesh.EchoHandler(service, instance, region)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if r.URL.Path != "/long" {
			echo.ServeHTTP(w, r)
			return
		}
		fl := w.(http.Flusher)
		for i := 0; i < 600; i++ {
			fmt.Fprintf(w, "chunk %03d\n", i)
			fl.Flush()
			select {
			case <-a.release:
				fmt.Fprintf(w, "end %d\n", i+1)
				return
			case <-r.Context().Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}))
	t.Cleanup(a.srv.Close)
	return a
}

// TestSPIRE: edge → gateway → sidecar → app on SVIDs that a real SPIRE
// issues, through rotations of the SVIDs (20s ones, which the agent
// renews about every ten seconds) during a streaming response that
// completes, and through a rotation of SPIRE's own CA, with a request loop
// running throughout in which no request may fail.
func TestSPIRE(t *testing.T) {
	if testing.Short() {
		t.Skip("process end-to-end test: skipped with -short")
	}
	binDir := needSPIRE(t)
	const td = "spire.meshd"
	const caTTL, svidTTL = 150 * time.Second, 20 * time.Second
	dir := t.TempDir()
	srv := startSPIREServer(t, binDir, dir, td, caTTL, svidTTL)
	started := time.Now()
	firstRoots, err := srv.bundle()
	if err != nil {
		t.Fatal(err)
	}

	// The agent's SPIFFE ID follows from its join token, so the entries
	// exist before the agent does and its first sync brings them.
	tokenOut := srv.mustCLI("token generate", "-ttl", "600")
	var token string
	for _, line := range strings.Split(tokenOut, "\n") {
		if v, ok := strings.CutPrefix(line, "Token: "); ok {
			token = strings.TrimSpace(v)
		}
	}
	if token == "" {
		t.Fatalf("token generate printed no token: %q", tokenOut)
	}
	agentID := "spiffe://" + td + "/spire/agent/join_token/" + token
	// Every process runs as the test's uid: each node gets its own copy
	// of meshd, and its entry requires both the uid and that path.
	uid := strconv.Itoa(os.Getuid())
	ids := map[string]string{
		"edge-1": "spiffe://" + td + "/edge/edge-1",
		"gw-eu":  "spiffe://" + td + "/gateway/eu/gw-eu",
		"web-1":  "spiffe://" + td + "/service/web",
		"web-2":  "spiffe://" + td + "/service/web",
	}
	bins := map[string]string{}
	for name, id := range ids {
		bins[name] = filepath.Join(dir, "meshd-"+name)
		copyBinary(t, bins[name])
		srv.mustCLI("entry create", "-parentID", agentID, "-spiffeID", id,
			"-selector", "unix:uid:"+uid, "-selector", "unix:path:"+bins[name],
			"-x509SVIDTTL", strconv.Itoa(int(svidTTL/time.Second)))
	}
	// The operator who signs policies is a workload too: `spire-agent api
	// fetch` writes its SVID for meshd apply.
	operator := "spiffe://" + td + "/operator/alice"
	srv.mustCLI("entry create", "-parentID", agentID, "-spiffeID", operator,
		"-selector", "unix:uid:"+uid, "-selector", "unix:path:"+filepath.Join(binDir, "spire-agent"))
	agent := startSPIREAgent(t, binDir, dir, srv, token, len(ids)+1)

	// The nodes hold only the gossip key: SPIRE is their CA.
	caDir, nodeDir := filepath.Join(dir, "ca"), filepath.Join(dir, "node")
	if err := tlsmgr.InitCA(caDir, td); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(nodeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(caDir, tlsmgr.GossipKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(nodeDir, tlsmgr.GossipKeyFile), string(key))
	common := []string{"--ca-dir", nodeDir, "--trust-domain", td, "--spiffe-socket", agent.addr(),
		"--listen", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--wan-gossip-addr", "127.0.0.1:0"}
	node := func(name string, args ...string) *proc {
		t.Helper()
		p, err := tryStartNodeBin(t, bins[name], name, nil, append(append([]string{}, common...), args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	// A workload gets only the SVIDs of its own entries: the edge's
	// binary, started as a gateway, is refused and told what it was
	// offered.
	_, err = tryStartNodeBin(t, bins["edge-1"], "gw-x", nil, append(append([]string{}, common...), "--role", "gateway", "--region", "eu")...)
	if err == nil || !strings.Contains(err.Error(), `offers no svid for "spiffe://`+td+`/gateway/eu/gw-x"`) ||
		!strings.Contains(err.Error(), ids["edge-1"]) {
		t.Fatalf("the edge's binary started as gateway gw-x: want it refused, naming the SVID it was offered; got %v", err)
	}

	// SPIRE's trust domain is the mesh's: a node told another one is
	// refused, and told which two differ.
	_, err = tryStartNodeBin(t, bins["gw-eu"], "gw-eu", nil, "--ca-dir", nodeDir, "--trust-domain", "other.meshd",
		"--spiffe-socket", agent.addr(), "--role", "gateway", "--region", "eu", "--listen", "127.0.0.1:0",
		"--gossip-addr", "127.0.0.1:0", "--wan-gossip-addr", "127.0.0.1:0")
	if want := `the agent issues SVIDs of trust domain "` + td + `", this node is in "other.meshd"`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("a gateway of trust domain other.meshd on SPIRE of %s: want it refused with %q; got %v", td, want, err)
	}

	gw := node("gw-eu", "--role", "gateway", "--region", "eu")
	app := startSPIREStreamApp(t, "web", "web-1", "eu")
	sidecar := func(name string, a *spireStreamApp) *proc {
		return node(name, "--role", "sidecar", "--region", "eu", "--service", "web", "--upstream", a.srv.Listener.Addr().String(),
			"--outbound", "127.0.0.1:0", "--join", gw.addr("gossip"), "--health-interval", "300ms")
	}
	web := sidecar("web-1", app)
	edge := node("edge-1", "--role", "edge", "--region", "eu", "--public-http", "127.0.0.1:0", "--wan-join", gw.addr("wan-gossip"))
	public := edge.addr("public-http")
	servedBy(t, public, "web.localhost", "web-1")
	t.Logf("SPIRE server up to the mesh serving: %v", time.Since(started).Round(time.Millisecond))

	// What SPIRE issued is what the nodes serve: a leaf for the node's ID
	// chaining to a root of SPIRE's bundle.
	mtls := map[string]string{"gw-eu": gw.addr("listen"), "web-1": web.addr("listen")}
	firstSerial := map[string]string{}
	for name, addr := range mtls {
		leaf, err := peerLeaf(addr)
		if err != nil {
			t.Fatal(err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != ids[name] {
			t.Fatalf("%s presents %v, want %s", name, leaf.URIs, ids[name])
		}
		if _, err := srv.rootOf(leaf); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		firstSerial[name] = leaf.SerialNumber.Text(16)
	}

	// A request loop, bounded in count, runs through the rest of the
	// test; every request must succeed.
	var sent atomic.Int64
	var failMu sync.Mutex
	var failures []string
	stopLoop, loopDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(loopDone)
		for i := 0; i < 3000; i++ {
			select {
			case <-stopLoop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			sent.Add(1)
			e, err := getEcho(public, "web.localhost")
			if err == nil && e.Instance != "web-1" && e.Instance != "web-2" {
				err = fmt.Errorf("served by %q", e.Instance)
			}
			if err != nil {
				failMu.Lock()
				failures = append(failures, fmt.Sprintf("at %v: %v", time.Since(started).Round(time.Millisecond), err))
				failMu.Unlock()
			}
		}
	}()
	endLoop := sync.OnceFunc(func() {
		close(stopLoop)
		<-loopDone
	})
	defer endLoop()

	admins := map[string]string{"edge-1": edge.addr("admin"), "gw-eu": gw.addr("admin"), "web-1": web.addr("admin")}
	t.Run("a streaming response completes across SVID rotations by SPIRE", func(t *testing.T) {
		before := map[string]mesh.Self{}
		for name, a := range admins {
			before[name] = selfInfo(t, a)
		}
		req, _ := http.NewRequest("GET", "http://"+public+"/long", nil)
		req.Host = "web.localhost"
		resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("stream: %s", resp.Status)
		}
		lines := make(chan string, 1000)
		readErr := make(chan error, 1)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				lines <- sc.Text()
			}
			readErr <- sc.Err()
		}()
		// Every node's SVID rotates while the stream runs: SPIRE hands
		// it a new certificate (a later expiry; a new serial on the mTLS
		// listeners), and the node counts the renewal. The stream goes
		// on until the SVIDs its connections were made with have expired.
		eventually(t, 60*time.Second, "SPIRE rotates every node's SVID", func() error {
			for name, a := range admins {
				if time.Now().Before(before[name].SVIDNotAfter) {
					return fmt.Errorf("%s's SVID of the stream's start expires at %v", name, before[name].SVIDNotAfter)
				}
				s := selfInfo(t, a)
				if s.SVIDRenewals <= before[name].SVIDRenewals || !s.SVIDNotAfter.After(before[name].SVIDNotAfter) {
					return fmt.Errorf("%s: %d renewals, svid expires %v (before the stream: %d, %v)", name,
						s.SVIDRenewals, s.SVIDNotAfter, before[name].SVIDRenewals, before[name].SVIDNotAfter)
				}
			}
			for name, addr := range mtls {
				leaf, err := peerLeaf(addr)
				if err != nil {
					return err
				}
				if leaf.SerialNumber.Text(16) == firstSerial[name] {
					return fmt.Errorf("%s still presents serial %s", name, firstSerial[name])
				}
			}
			return nil
		})
		close(app.release)
		n := 0
		var last string
		for line := range lines {
			if line == fmt.Sprintf("chunk %03d", n) {
				n++
				continue
			}
			last = line
		}
		if err := <-readErr; err != nil {
			t.Fatalf("stream cut after %d chunks: %v", n, err)
		}
		if last != fmt.Sprintf("end %d", n) {
			t.Fatalf("stream ended with %q after %d chunks, want \"end %d\"", last, n, n)
		}
		t.Logf("a %d-chunk stream (%.1fs) completed across SVID rotations of every node, outliving the SVIDs it started on", n, float64(n)*0.2)
	})

	// An agent restart (an upgrade) leaves the nodes on their current
	// SVIDs; they reconnect and follow the new agent's rotations.
	t.Run("nodes follow the SPIRE agent through a restart", func(t *testing.T) {
		agent.restart()
		// The old agent is gone: what the nodes get from now on comes
		// from the new one.
		before := map[string]uint64{}
		for name, a := range admins {
			before[name] = selfInfo(t, a).SVIDRenewals
		}
		took := eventually(t, 40*time.Second, "every node takes an SVID from the restarted agent", func() error {
			for name, a := range admins {
				if s := selfInfo(t, a); s.SVIDRenewals <= before[name] {
					return fmt.Errorf("%s: %d renewals, as before the restart", name, s.SVIDRenewals)
				}
			}
			return nil
		})
		t.Logf("every node on an SVID of the restarted agent %v after it was up again", took.Round(100*time.Millisecond))
		for _, p := range []*proc{edge, gw, web} {
			if logs := p.logs(); !strings.Contains(logs, `"msg":"spiffe workload api is back"`) ||
				!strings.Contains(logs, `"level":"WARN","msg":"Failed to watch the Workload API`) {
				t.Errorf("%s: no warning about the lost agent, or nothing says it is back:\n%s", p.name, lastLines(logs, 20))
			}
		}
	})

	// Policies are signed by an operator whose SVID SPIRE issued.
	t.Run("meshd apply with an operator SVID from SPIRE", func(t *testing.T) {
		opDir := filepath.Join(dir, "operator")
		if err := os.MkdirAll(opDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(agent.bin, "api", "fetch", "x509", "-socketPath", agent.sock, "-write", opDir).CombinedOutput(); err != nil {
			t.Fatalf("spire-agent api fetch x509: %v\n%s", err, out)
		}
		policy := filepath.Join(dir, "policy.yaml")
		writeFile(t, policy, "services:\n  web:\n    timeout: 7s\n")
		out, err := exec.Command(meshdBin, "apply", "-f", policy, "--key", filepath.Join(opDir, "svid.0.key"),
			"--cert", filepath.Join(opDir, "svid.0.pem"), "--admin", gw.addr("admin")).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "signed by "+operator) {
			t.Fatalf("meshd apply: %v\n%s", err, out)
		}
		eventually(t, 10*time.Second, "the policy on every node", func() error {
			for _, p := range []*proc{edge, gw, web} {
				if info, err := policyOf(p.addr("admin")); err != nil || info.Version != 1 {
					return fmt.Errorf("%s runs version %d (%v)", p.name, info.Version, err)
				}
			}
			return nil
		})
	})

	// SPIRE prepares its next CA at half of ca_ttl (its root joins the
	// bundle the agent sends) and signs with it from five sixths on.
	t.Run("SPIRE's CA rotation reaches every node", func(t *testing.T) {
		took := eventually(t, caTTL, "the gateway and the sidecar serve SVIDs of SPIRE's next CA", func() error {
			for name, addr := range mtls {
				leaf, err := peerLeaf(addr)
				if err != nil {
					return err
				}
				root, err := srv.rootOf(leaf)
				if err != nil {
					return fmt.Errorf("%s: %v", name, err)
				}
				for _, r := range firstRoots {
					if r.Equal(root) {
						return fmt.Errorf("%s: still on SPIRE's first CA", name)
					}
				}
			}
			return nil
		})
		t.Logf("SVIDs of SPIRE's next CA %v after the server started (ca_ttl %v, waited %v)",
			time.Since(started).Round(time.Second), caTTL, took.Round(time.Second))
		// Each node saw the new root arrive as what it is: a bundle
		// update, not an SVID rotation.
		for _, p := range []*proc{edge, gw, web} {
			if !strings.Contains(p.logs(), `"msg":"trust bundle updated","node":"`+p.name+`","role":`) ||
				!strings.Contains(p.logs(), `"roots":2,"added":1,"removed":0`) {
				t.Errorf("%s logged no bundle update adding SPIRE's next root", p.name)
			}
		}
		// A sidecar started now serves: its first handshakes with the
		// gateway, full ones, verify the gateway's SVID of the new CA,
		// and its own SVID moves to the new CA too.
		web2 := sidecar("web-2", startSPIREStreamApp(t, "web", "web-2", "eu"))
		servedBy(t, public, "web.localhost", "web-2")
		eventually(t, 30*time.Second, "web-2 on an SVID of SPIRE's next CA", func() error {
			leaf, err := peerLeaf(web2.addr("listen"))
			if err != nil {
				return err
			}
			root, err := srv.rootOf(leaf)
			if err != nil {
				return err
			}
			for _, r := range firstRoots {
				if r.Equal(root) {
					return errors.New("web-2 presents an SVID of SPIRE's first CA")
				}
			}
			return nil
		})
		// The policy signed on the previous CA's operator SVID reaches
		// web-2 by gossip and verifies there: SPIRE keeps the old root in
		// the bundle.
		eventually(t, 10*time.Second, "web-2 runs the policy", func() error {
			if info, err := policyOf(web2.addr("admin")); err != nil || info.Version != 1 {
				return fmt.Errorf("web-2 runs version %d (%v)", info.Version, err)
			}
			return nil
		})
	})
	endLoop()
	failMu.Lock()
	defer failMu.Unlock()
	t.Logf("requests through edge → gateway → sidecar during the rotations: %d sent, %d failed", sent.Load(), len(failures))
	if len(failures) > 0 {
		t.Fatalf("%d requests failed: %s", len(failures), strings.Join(failures[:min(len(failures), 10)], "; "))
	}
}
