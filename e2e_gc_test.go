package main

import (
	"bufio"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/meshd/meshd/tlsmgr"
)

// The collector settings a node's runtime reports in /metrics are its
// role's, and an operator's GOGC or GOMEMLIMIT replaces the role's choice
// of that setting only.
func TestGCSettingsPerRole(t *testing.T) {
	if testing.Short() {
		t.Skip("process end-to-end test: skipped with -short")
	}
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := tlsmgr.InitCA(caDir, "gc.meshd"); err != nil {
		t.Fatal(err)
	}
	app := startApp(t, "web", "web-1", "eu")
	common := []string{"--ca-dir", caDir, "--region", "eu", "--listen", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0"}
	sidecar := append([]string{"--role", "sidecar", "--service", "web", "--upstream", app.addr(), "--outbound", "127.0.0.1:0"}, common...)
	gateway := append([]string{"--role", "gateway", "--wan-gossip-addr", "127.0.0.1:0"}, common...)
	edge := []string{"--role", "edge", "--ca-dir", caDir, "--region", "eu", "--public-http", "127.0.0.1:0",
		"--wan-gossip-addr", "127.0.0.1:0", "--cache-size", "64MiB"}
	const noLimit = int64(^uint64(0) >> 1) // math.MaxInt64: the runtime's "no limit"
	tests := []struct {
		name      string
		env       []string
		args      []string
		wantGOGC  int64
		wantLimit int64
	}{
		{"sidecar", nil, sidecar, sidecarGCPercent, noLimit},
		{"gateway", nil, gateway, gatewayGCPercent, gcHeadroom},
		{"sidecar-env", []string{"GOGC=50", "GOMEMLIMIT=64MiB"}, sidecar, 50, 64 << 20},
		{"edge", nil, edge, edgeGCPercent, 64<<20 + gcHeadroom},
		{"edge-gogc", []string{"GOGC=150"}, edge, 150, 64<<20 + gcHeadroom},
		{"edge-gomemlimit", []string{"GOMEMLIMIT=300MiB"}, edge, edgeGCPercent, 300 << 20},
		{"gateway-gogc", []string{"GOGC=150"}, gateway, 150, gcHeadroom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Clear both first: the test's own environment must not decide.
			env := append([]string{"GOGC=", "GOMEMLIMIT="}, tt.env...)
			p, err := tryStartNodeEnv(t, tt.name, env, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			m := scrapeMetrics(t, p.addr("admin"))
			if got := int64(m["go_gc_gogc_percent"]); got != tt.wantGOGC {
				t.Errorf("go_gc_gogc_percent = %d, want %d", got, tt.wantGOGC)
			}
			if got := int64(m["go_gc_gomemlimit_bytes"]); got != tt.wantLimit && !(tt.wantLimit == noLimit && m["go_gc_gomemlimit_bytes"] >= float64(noLimit)) {
				t.Errorf("go_gc_gomemlimit_bytes = %v, want %d", m["go_gc_gomemlimit_bytes"], tt.wantLimit)
			}
		})
	}
}

// scrapeMetrics returns the unlabelled samples of a node's /metrics.
func scrapeMetrics(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(val, 64); err == nil {
			m[name] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(fmt.Errorf("reading /metrics: %w", err))
	}
	return m
}
