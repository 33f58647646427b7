package mesh

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrencyLimitFlags: --concurrency-limit and --queue-timeout reach
// the node's pool: with a limit of 1, a second call while the app holds the
// first is refused at once with 503, Retry-After and Proxy-Status, never
// reaches the app, and shows in /metrics.
func TestConcurrencyLimitFlags(t *testing.T) {
	var calls atomic.Int64
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			calls.Add(1)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		fmt.Fprint(w, "from the app")
	}))
	defer app.Close()
	defer close(release)
	m := newTestMesh(t)
	n := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web",
		Upstream: app.Listener.Addr().String(), ConcurrencyLimit: "1", QueueTimeout: 5 * time.Millisecond})
	if n.pool.ConcurrencyLimit != 1 || n.pool.QueueTimeout != 5*time.Millisecond {
		t.Fatalf("pool limit %d, queue timeout %v", n.pool.ConcurrencyLimit, n.pool.QueueTimeout)
	}
	out := n.Addrs()["outbound"]
	get := func(path string) (*http.Response, error) {
		req, _ := http.NewRequest("GET", "http://"+out+path, nil)
		req.Host = "web.mesh"
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	poll(t, 15*time.Second, "the sidecar serves its own service", func() error {
		resp, err := get("/")
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	go get("/hold")
	poll(t, 10*time.Second, "the first call at the app", func() error {
		if calls.Load() != 1 {
			return fmt.Errorf("%d calls", calls.Load())
		}
		return nil
	})
	resp, err := get("/hold")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" ||
		!strings.Contains(resp.Header.Get("Proxy-Status"), "error=connection_limit_reached") {
		t.Errorf("second call: %d, Retry-After %q, Proxy-Status %q", resp.StatusCode,
			resp.Header.Get("Retry-After"), resp.Header.Get("Proxy-Status"))
	}
	if calls.Load() != 1 {
		t.Errorf("the app saw %d held calls, want 1", calls.Load())
	}
	mresp, err := http.Get("http://" + n.Addrs()["admin"] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{
		`meshd_admission_rejected_total{region="eu",role="sidecar"} 1`,
		`meshd_upstream_concurrency_limit{region="eu",role="sidecar",service="",upstream="app|` + app.Listener.Addr().String() + `"} 1`,
		`meshd_upstream_rejected_total{region="eu",role="sidecar",service="",upstream="`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
