package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// DemoOptions configures RunDemo.
type DemoOptions struct {
	// HTTP is the edge's public address. Fixed (not port 0) so a second demo
	// on the same machine fails clearly instead of starting beside the
	// first. Default "127.0.0.1:8480".
	HTTP string
	// HTTPS is the edge's public TLS address, with certificates from an
	// internal CA. Default "127.0.0.1:8443".
	HTTPS string
	// Admin is the edge's admin address. Default "127.0.0.1:9901", the
	// address `meshd members` and `meshd services` ask by default.
	Admin string
	// LogLevel of the demo's nodes. Default "warn".
	LogLevel string
	// Stdout receives the addresses and commands to try; Stderr the logs.
	Stdout, Stderr io.Writer
	// Ready, when set, is called with the running demo once the mesh has
	// converged (tests use it).
	Ready func(*Demo)
}

// Demo is a running demo mesh.
type Demo struct {
	Dir   string  // holds the demo's CA
	Edge  *Node   // the edge, region eu
	Nodes []*Node // every node, edge first
	apps  []*http.Server
}

// EchoHandler is the demo's app: it answers every request with JSON that
// names the service, instance and region that served it and what arrived.
func EchoHandler(service, instance, region string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"service":           service,
			"instance":          instance,
			"region":            region,
			"method":            r.Method,
			"host":              r.Host,
			"path":              r.URL.RequestURI(),
			"via":               r.Header.Values("Via"),
			"x_forwarded_for":   r.Header.Get("X-Forwarded-For"),
			"x_forwarded_proto": r.Header.Get("X-Forwarded-Proto"),
		})
	})
}

// RunDemo starts two regions (eu and us: one gateway and two echo
// instances with their sidecars each) and one edge on loopback, prints how
// to use them, and runs until ctx ends, then shuts everything down.
func RunDemo(ctx context.Context, o DemoOptions) error {
	if o.HTTP == "" {
		o.HTTP = "127.0.0.1:8480"
	}
	if o.Admin == "" {
		o.Admin = "127.0.0.1:9901"
	}
	if o.HTTPS == "" {
		o.HTTPS = "127.0.0.1:8443"
	}
	if o.LogLevel == "" {
		o.LogLevel = "warn"
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(o.LogLevel)); err != nil {
		return fmt.Errorf("log-level: %q: want debug, info, warn or error", o.LogLevel)
	}
	logger := slog.New(slog.NewTextHandler(o.Stderr, &slog.HandlerOptions{Level: lv}))

	d, err := startDemo(ctx, o, logger)
	if err != nil {
		return err
	}
	defer d.stop()

	// Wait (bounded) until the edge sees web in both regions and is ready
	// (its probes reached a gateway), so the commands printed work at once.
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		s := d.Edge.Snapshot()
		n := 0
		for _, si := range s.Services {
			if si.Service == "web" && si.Healthy > 0 {
				n++
			}
		}
		if n >= 2 && d.Edge.Ready() {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	public := d.Edge.Addrs()["public-http"]
	_, httpsPort, _ := net.SplitHostPort(d.Edge.Addrs()["public-https"])
	admin := d.Edge.Addrs()["admin"]
	root := filepath.Join(d.Edge.Config.DataDir, "internal-ca", "root.crt")
	fmt.Fprintf(o.Stdout, `meshd demo: two regions (eu, us), a gateway and two "web" instances each, one edge in eu.
  edge (public HTTP):  http://%[1]s  (web.localhost is served over plain HTTP; other hosts redirect to HTTPS)
  edge (public HTTPS): https://web.localhost:%[2]s  (certificates from an internal CA: %[4]s)
  edge admin:          http://%[3]s  (a dashboard in a browser; meshd members|services|routes)

Try:
  curl -s -H 'Host: web.localhost' http://%[1]s/hello
  curl -s --cacert %[4]s --resolve web.localhost:%[2]s:127.0.0.1 https://web.localhost:%[2]s/hello
  curl -s http://%[3]s/v1/services
  curl -s -i -H 'Host: nothing.localhost' http://%[1]s/

Ctrl-C stops the mesh.
`, public, httpsPort, admin, root)
	if o.Ready != nil {
		o.Ready(d)
	}
	<-ctx.Done()
	fmt.Fprintln(o.Stdout, "meshd demo: stopping")
	return nil
}

func startDemo(ctx context.Context, o DemoOptions, logger *slog.Logger) (_ *Demo, err error) {
	dir, err := os.MkdirTemp("", "meshd-demo-")
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	d := &Demo{Dir: dir}
	defer func() {
		if err != nil {
			d.stop()
		}
	}()
	if err := tlsmgr.InitCA(filepath.Join(dir, "ca"), "demo.meshd"); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	caDir := filepath.Join(dir, "ca")
	base := Config{CADir: caDir, SVIDTTL: time.Hour, DrainDelay: 200 * time.Millisecond,
		ShutdownGrace: 3 * time.Second, Listen: "127.0.0.1:0", GossipAddr: "127.0.0.1:0",
		WANGossipAddr: "127.0.0.1:0", Outbound: "127.0.0.1:0", Admin: "", HealthInterval: 500 * time.Millisecond}
	start := func(c Config) (*Node, error) {
		n := &Node{Config: c, Logger: logger, wholeMesh: true}
		if err := n.Start(ctx); err != nil {
			return nil, err
		}
		d.Nodes = append(d.Nodes, n)
		return n, nil
	}

	// The edge first: it holds the fixed addresses, so a second demo stops
	// here before starting anything else.
	ec := base
	ec.Role, ec.Name, ec.Region, ec.PublicHTTP, ec.Admin = RoleEdge, "edge-eu", "eu", o.HTTP, o.Admin
	ec.PublicHTTPS, ec.TLS, ec.DataDir = o.HTTPS, "internal", filepath.Join(dir, "data")
	ec.PublicHTTPAllow = []string{"web.localhost"} // so the plain-HTTP curl works too
	if d.Edge, err = start(ec); err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("demo: %s, %s or %s is in use: is another meshd demo running? (pick others with --http, --https and --admin): %w", o.HTTP, o.HTTPS, o.Admin, err)
		}
		return nil, fmt.Errorf("demo: %w", err)
	}
	wanSeed := d.Edge.Addrs()["wan-gossip"]
	for _, region := range []string{"eu", "us"} {
		gc := base
		gc.Role, gc.Name, gc.Region, gc.WANJoin = RoleGateway, "gw-"+region, region, []string{wanSeed}
		gw, err := start(gc)
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		for i := 1; i <= 2; i++ {
			name := fmt.Sprintf("web-%s-%d", region, i)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, fmt.Errorf("demo: %w", err)
			}
			app := &http.Server{Handler: EchoHandler("web", name, region), ReadHeaderTimeout: 10 * time.Second}
			d.apps = append(d.apps, app)
			go app.Serve(ln)
			sc := base
			sc.Role, sc.Name, sc.Region, sc.Service, sc.Upstream = RoleSidecar, name, region, "web", ln.Addr().String()
			sc.Join = []string{gw.Addrs()["gossip"]}
			if _, err := start(sc); err != nil {
				return nil, fmt.Errorf("demo: %w", err)
			}
		}
	}
	return d, nil
}

// stop shuts every node down at once (each drains on its own), then the
// apps, then removes the demo's CA.
func (d *Demo) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, n := range d.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.Shutdown(ctx)
		}()
	}
	wg.Wait()
	for _, a := range d.apps {
		a.Close() // the sidecars in front have stopped: nothing is in flight
	}
	os.RemoveAll(d.Dir)
}
