package mesh

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// syncBuffer is a bytes.Buffer safe for the demo's concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole mesh: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, logs syncBuffer
	ready := make(chan *Demo, 1)
	done := make(chan error, 1)
	go func() {
		done <- RunDemo(ctx, DemoOptions{HTTP: "127.0.0.1:0", HTTPS: "127.0.0.1:0", Admin: "127.0.0.1:0", Stdout: &out, Stderr: &logs,
			Ready: func(d *Demo) { ready <- d }})
	}()
	var d *Demo
	select {
	case d = <-ready:
	case err := <-done:
		t.Fatalf("demo ended early: %v\n%s", err, logs.String())
	case <-ctx.Done():
		t.Fatal("demo did not become ready")
	}
	public := d.Edge.Addrs()["public-http"]
	if !strings.Contains(out.String(), "curl -s -H 'Host: web.localhost' http://"+public) {
		t.Fatalf("demo did not print a working curl command:\n%s", out.String())
	}
	// The edge is in eu: both eu instances answer, naming service,
	// instance and region.
	seen := map[string]bool{}
	for i := 0; i < 20; i++ {
		req, _ := http.NewRequest("GET", "http://"+public+"/hello", nil)
		req.Host = "web.localhost"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct{ Service, Instance, Region string }
		if resp.StatusCode != 200 || json.Unmarshal(body, &e) != nil || e.Service != "web" || e.Region != "eu" {
			t.Fatalf("demo answered %d %s", resp.StatusCode, body)
		}
		seen[e.Instance] = true
	}
	if len(seen) != 2 {
		t.Fatalf("instances seen: %v, want both eu instances", seen)
	}

	// HTTPS with a certificate from the internal CA, for web.localhost
	// only; plain HTTP for other hosts redirects to it.
	rootPEM, err := tlsmgr.InternalRoot(d.Edge.Config.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	httpsAddr := d.Edge.Addrs()["public-https"]
	tc := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, httpsAddr)
		},
	}}
	resp, err := tc.Get("https://web.localhost/tls")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || !strings.Contains(string(body), `"service":"web"`) {
		t.Fatalf("https: %s %s %s", resp.Status, resp.Proto, body)
	}
	if _, err := tc.Get("https://evil.localhost/"); err == nil {
		t.Fatal("the internal CA issued a certificate for a host nobody publishes")
	}

	// The admin API reports the mesh, also to Prometheus.
	admin := d.Edge.Addrs()["admin"]
	for path, want := range map[string]string{
		"/metrics":     `meshd_gossip_members{pool="global",region="eu",role="edge"} 3`,
		"/v1/services": `"service": "web"`,
		"/v1/members":  `"name": "gw-us"`,
		"/readyz":      "ready",
		"/v1/routes":   `"via": "regions"`,
		"/":            `fetch(path`,
	} {
		resp, err := http.Get("http://" + admin + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Fatalf("%s: %d, want %q in:\n%s", path, resp.StatusCode, want, body)
		}
	}

	// A second demo on the same addresses fails with a clear message.
	err = RunDemo(ctx, DemoOptions{HTTP: public, HTTPS: "127.0.0.1:0", Admin: "127.0.0.1:0", Stdout: io.Discard, Stderr: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "is another meshd demo running?") {
		t.Fatalf("second demo: %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo returned %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("demo did not stop")
	}
	if _, err := http.Get("http://" + public + "/"); err == nil {
		t.Fatal("edge still serving after the demo stopped")
	}
	// Stopping the whole mesh is quiet: no node waits out a gossip leave
	// nobody is left to take, nor republishes into a closed pool.
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "gossip leave") {
			t.Errorf("demo logged while stopping: %s", line)
		}
	}
}
