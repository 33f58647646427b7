package mesh

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/reflection"

	"github.com/meshd/meshd/tlsmgr"
)

// grpcurlPath finds grpcurl (a gRPC client nobody here wrote) on PATH or
// in $GOPATH/bin, where .ci/run installs it; without it the test skips,
// or fails in CI.
func grpcurlPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("grpcurl"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "grpcurl")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	missingTool(t, "grpcurl not installed: go install github.com/fullstorydev/grpcurl/cmd/grpcurl@latest")
	return ""
}

// missingTool skips a test whose tool is not installed, or fails it under
// CI=true, where .ci/run installs every tool.
func missingTool(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// interopApp serves grpc-go's interop test service (and reflection, which
// grpcurl uses to learn the schema) over HTTP/2 without TLS, as gRPC
// servers do behind a sidecar; it returns its address.
func interopApp(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, interop.NewTestServer())
	reflection.Register(s)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

// grpcEdge is an edge's public TLS listener as grpcurl reaches it: the
// address, the internal CA's root and the host to ask for.
type grpcEdge struct {
	addr, caFile, host string
	hops               []string // the nodes the response's Via must name, in order
}

func newGRPCEdge(t *testing.T, edge *Node, host string) grpcEdge {
	t.Helper()
	root, err := tlsmgr.InternalRoot(edge.Config.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(caFile, root, 0o600); err != nil {
		t.Fatal(err)
	}
	return grpcEdge{addr: edge.Addrs()["public-https"], caFile: caFile, host: host}
}

// grpcurl runs grpcurl against the edge with stdin as its request
// messages (-d @) when stdin is not nil, else with data as -d.
func (e grpcEdge) grpcurl(t *testing.T, bin string, stdin []byte, data string, method string, extra ...string) (stdout, stderr string, err error) {
	t.Helper()
	args := []string{"-authority", e.host, "-max-time", "20"}
	if e.caFile == "" {
		args = append(args, "-plaintext")
	} else {
		args = append(args, "-cacert", e.caFile)
	}
	args = append(args, extra...)
	if stdin != nil {
		args = append(args, "-d", "@")
	} else if data != "" {
		args = append(args, "-d", data)
	}
	args = append(args, e.addr, method)
	cmd := exec.Command(bin, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// TestGRPCThroughMesh: grpcurl calls grpc-go's interop service through
// the whole mesh: the edge's public HTTPS listener (HTTP/2), a gateway and
// a sidecar (HTTP/1.1 between them within the region, HTTP/2 to a gateway
// of another region) and h2c to the app. Unary calls, a server stream, a
// bidirectional stream of 10,000 messages, and error statuses both as a
// trailers-only answer and as trailers after data arrive as the app sent
// them.
func TestGRPCThroughMesh(t *testing.T) {
	bin := grpcurlPath(t)
	app := interopApp(t)

	m := newTestMesh(t)
	gwUS := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us"}, testLog)
	gwEU := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu", WANJoin: []string{gwUS.Addrs()["wan-gossip"]}})
	wan := []string{gwUS.Addrs()["wan-gossip"], gwEU.Addrs()["wan-gossip"]}
	// An edge in us reaches us's gateway over HTTP/1.1, one in eu over
	// HTTP/2 (another region).
	edges := map[string]*Node{
		"same region (HTTP/1.1 hops)": m.start(Config{Role: RoleEdge, Name: "edge-us", Region: "us", WANJoin: wan,
			PublicHTTPS: "127.0.0.1:0", DataDir: t.TempDir(), NoHTTP3: true}, testLog),
		"other region (HTTP/2 to the gateway)": m.start(Config{Role: RoleEdge, Name: "edge-eu", Region: "eu", WANJoin: wan,
			PublicHTTPS: "127.0.0.1:0", DataDir: t.TempDir(), NoHTTP3: true}),
	}
	const svc = "grpc.testing.TestService/"
	sidecar := m.start(Config{Role: RoleSidecar, Name: "interop-1", Region: "us", Service: "interop", Upstream: app,
		UpstreamProtocol: UpstreamH2C, Join: []string{gwUS.Addrs()["gossip"]}}, testLog)
	// An app in eu calls interop through its sidecar's outbound listener
	// in plain text (h2c): sidecar → gateway eu (HTTP/1.1) → gateway us
	// (HTTP/2) → sidecar → app.
	caller := m.start(Config{Role: RoleSidecar, Name: "caller-1", Region: "eu", Service: "caller", Upstream: nameApp(t, "caller"),
		Join: []string{gwEU.Addrs()["gossip"]}}, testLog)
	paths := map[string]grpcEdge{
		"outbound sidecar eu, gateway eu, gateway us (h2c in)": {addr: caller.Addrs()["outbound"], host: "interop.mesh",
			hops: []string{"2 interop-1", "1.1 gw-us", "2 gw-eu", "1.1 caller-1"}},
	}
	for name, edge := range edges {
		e := newGRPCEdge(t, edge, "interop.localhost")
		proto := "1.1"
		if edge.Config.Region != "us" {
			proto = "2"
		}
		e.hops = []string{"2 interop-1", "1.1 gw-us", proto + " " + edge.Config.Name}
		paths[name] = e
	}
	for name, e := range paths {
		t.Run(name, func(t *testing.T) {
			poll(t, 15*time.Second, "EmptyCall through "+name, func() error {
				out, errOut, err := e.grpcurl(t, bin, nil, "", svc+"EmptyCall")
				if err != nil {
					return fmt.Errorf("%v: %s%s", err, out, errOut)
				}
				return nil
			})

			out, errOut, err := e.grpcurl(t, bin, nil, `{"response_size": 300}`, svc+"UnaryCall", "-v",
				"-H", "x-grpc-test-echo-trailing-bin: AAEC")
			head, trailers, _ := strings.Cut(out, "Response trailers received:")
			if via := "via: " + strings.Join(e.hops, "\nvia: ") + "\n"; !strings.Contains(head, via) {
				t.Errorf("UnaryCall: response header without via: %s\n%s", via, head)
			}
			if err != nil || !strings.Contains(out, `"body": "`+strings.Repeat("A", 300*4/3)+`"`) || !strings.Contains(trailers, "x-grpc-test-echo-trailing-bin: AAEC") {
				t.Fatalf("UnaryCall: %v\n%s%s", err, out, errOut)
			}

			out, errOut, err = e.grpcurl(t, bin, nil,
				`{"response_parameters": [{"size": 10}, {"size": 20, "interval_us": 100000}, {"size": 30, "interval_us": 100000}]}`,
				svc+"StreamingOutputCall")
			if err != nil || strings.Count(out, `"payload"`) != 3 {
				t.Fatalf("StreamingOutputCall: %v\n%s%s", err, out, errOut)
			}

			// An error before any message: grpc-status in the
			// response header (trailers-only).
			_, errOut, err = e.grpcurl(t, bin, nil, `{"response_status": {"code": 5, "message": "no such thing"}}`, svc+"UnaryCall")
			if err == nil || !strings.Contains(errOut, "NotFound") || !strings.Contains(errOut, "no such thing") {
				t.Fatalf("UnaryCall with status 5: %v\n%s", err, errOut)
			}
			// An error after a message: grpc-status in trailers.
			out, errOut, err = e.grpcurl(t, bin,
				[]byte(`{"response_parameters": [{"size": 10}]} {"response_status": {"code": 9, "message": "too late"}}`),
				"", svc+"FullDuplexCall")
			if err == nil || strings.Count(out, `"payload"`) != 1 || !strings.Contains(errOut, "FailedPrecondition") || !strings.Contains(errOut, "too late") {
				t.Fatalf("FullDuplexCall ending in status 9: %v\n%s%s", err, out, errOut)
			}

			const n = 10000
			var in bytes.Buffer
			for range n {
				in.WriteString(`{"response_parameters": [{"size": 10}]}` + "\n")
			}
			start := time.Now()
			out, errOut, err = e.grpcurl(t, bin, in.Bytes(), "", svc+"FullDuplexCall")
			took := time.Since(start)
			if got := strings.Count(out, `"payload"`); err != nil || got != n {
				t.Fatalf("FullDuplexCall: %d of %d responses, %v\n%s", got, n, err, errOut)
			}
			t.Logf("FullDuplexCall through %s: %d messages each way in %v", name, n, took.Round(time.Millisecond))
		})
	}

	// A server stream in flight across regions (HTTP/2 from the edge to
	// the gateway) when the edge, the gateway and the sidecar are all told
	// to shut down: each drains, and the stream ends with all its
	// messages and status OK.
	t.Run("drain", func(t *testing.T) {
		edge := edges["other region (HTTP/2 to the gateway)"]
		e := newGRPCEdge(t, edge, "interop.localhost")
		const msgs = 15 // 1.4 s
		params := strings.Repeat(`{"size": 10, "interval_us": 100000},`, msgs)
		var out bytes.Buffer
		var errOut bytes.Buffer
		cmd := exec.Command(bin, "-cacert", e.caFile, "-authority", e.host, "-max-time", "20",
			"-d", `{"response_parameters": [`+strings.TrimSuffix(params, ",")+`]}`, e.addr, svc+"StreamingOutputCall")
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(400 * time.Millisecond) // grpcurl's reflection and the first messages
		start := time.Now()
		type stopped struct {
			name string
			took time.Duration
			err  error
		}
		done := make(chan stopped, 3)
		for _, n := range []*Node{edge, gwUS, sidecar} {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				err := n.Shutdown(ctx)
				done <- stopped{n.Config.Name, time.Since(start), err}
			}()
		}
		err := cmd.Wait()
		ended := time.Since(start)
		if got := strings.Count(out.String(), `"payload"`); err != nil || got != msgs {
			t.Fatalf("StreamingOutputCall while the path shut down: %d of %d messages, %v\n%s", got, msgs, err, errOut.String())
		}
		for range 3 {
			s := <-done
			if s.err != nil {
				t.Errorf("%s: shutdown: %v", s.name, s.err)
			}
			t.Logf("%s stopped %v after the shutdowns began; the stream ended after %v", s.name, s.took.Round(time.Millisecond), ended.Round(time.Millisecond))
		}
	})
}

// testLog sends a node's log to stderr at debug level when MESHD_TEST_LOG
// is set, for debugging a test.
func testLog(n *Node) {
	if os.Getenv("MESHD_TEST_LOG") != "" {
		n.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
}

// TestHealthCheckH2C: with upstream-protocol h2c, a health-path check
// speaks HTTP/2 without TLS, which an app that speaks nothing else
// answers; over HTTP/1.1 the same app would look dead.
func TestHealthCheckH2C(t *testing.T) {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 || r.URL.Path != "/healthz" {
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	srv.Config.Protocols = &p
	srv.Start()
	defer srv.Close()
	for proto, want := range map[string]bool{UpstreamH2C: true, UpstreamHTTP1: false} {
		n := &Node{Config: Config{Upstream: srv.Listener.Addr().String(), HealthPath: "/healthz", UpstreamProtocol: proto}}
		if got := n.checkApp(context.Background()); got != want {
			t.Errorf("upstream-protocol %s: healthy %v, want %v", proto, got, want)
		}
	}
}
