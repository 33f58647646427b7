package mesh

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads a node's /metrics over HTTP with Prometheus' own parser.
func scrape(t *testing.T, n *Node) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + n.Addrs()["admin"] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s /metrics: %d", n.Config.Name, resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("%s /metrics does not parse: %v", n.Config.Name, err)
	}
	return fams
}

// sample is the value of the series of family name whose labels include
// want (a counter's value, a histogram's sample count, a gauge's value);
// the sum over every such series, 0 when there is none.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	var sum float64
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		}
	}
	return sum
}

// request sends method path with body to addr for host and returns the
// response and its body.
func request(t *testing.T, method, addr, host, path, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// goldenMesh is edge → gateway → sidecar → app in region eu, running a
// policy that gives web a route "api" (/api) and denies /private.
type goldenMesh struct {
	edge, gw, web *Node
	okBody        string
}

const goldenPolicy = `
services:
  web:
    routes:
      - name: api
        match: {path-prefix: /api}
    authorization:
      rules:
        - name: no-private
          callers: ["*"]
          match: {path-prefix: /private}
          action: deny
`

func startGoldenMesh(t *testing.T) *goldenMesh {
	t.Helper()
	const okBody = "hello from web\n"
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Cache-Control", "no-store")
		io.WriteString(w, okBody)
	}))
	t.Cleanup(app.Close)
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	web := m.start(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web", Upstream: app.Listener.Addr().String(),
		Join: []string{gw.Addrs()["gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	wantBody(t, edge.Addrs()["public-http"], "web.localhost", 200, okBody)
	applyAndWait(t, m, gw, goldenPolicy, web)
	for _, n := range []*Node{edge, gw} {
		poll(t, 5*time.Second, n.Config.Name+" runs the policy", func() error {
			if v, err := policyVersion(n); err != nil || v != 1 {
				return fmt.Errorf("version %d, %v", v, err)
			}
			return nil
		})
	}
	return &goldenMesh{edge: edge, gw: gw, web: web, okBody: okBody}
}

// send makes the test's known traffic through the edge: 10 POSTs of 100
// bytes to /api, 10 GETs of /page (all 200) and 5 GETs of /private (403,
// Proxy-Status error=http_request_denied from web's sidecar). It returns
// the body bytes of the 403s.
func (g *goldenMesh) send(t *testing.T) int {
	t.Helper()
	addr := g.edge.Addrs()["public-http"]
	do := func(method, path string, body string, want int) int {
		resp, b := request(t, method, addr, "web.localhost", path, body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d %q, want %d", method, path, resp.StatusCode, b, want)
		}
		if want == 403 && !strings.Contains(resp.Header.Get("Proxy-Status"), "error=http_request_denied") {
			t.Fatalf("%s %s: Proxy-Status %q, want http_request_denied", method, path, resp.Header.Get("Proxy-Status"))
		}
		return len(b)
	}
	denied := 0
	for i := range 10 {
		do("POST", fmt.Sprintf("/api/items/%d", i), strings.Repeat("x", 100), 200)
		do("GET", fmt.Sprintf("/page/%d", i), "", 200)
	}
	for i := range 5 {
		denied += do("GET", fmt.Sprintf("/private/%d", i), "", 403)
	}
	return denied
}

// TestGoldenSignalMetrics sends a known number of requests through edge →
// gateway → sidecar and checks, on each hop's /metrics as Prometheus
// parses it, that requests, latency observations, errors by Proxy-Status
// reason, body bytes and upstream regions add up to what was sent.
func TestGoldenSignalMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three nodes: skipped with -short")
	}
	g := startGoldenMesh(t)
	hops := []struct {
		n        *Node
		listener string
		// deniedFrom is upstream_region of the 403s: the sidecar
		// refuses them itself.
		deniedFrom string
	}{{g.edge, "public", "eu"}, {g.gw, "mesh", "eu"}, {g.web, "mesh", upstreamNone}}
	before := map[string]map[string]*dto.MetricFamily{}
	for _, h := range hops {
		before[h.n.Config.Name] = scrape(t, h.n)
	}
	deniedBytes := g.send(t)

	for _, h := range hops {
		name := h.n.Config.Name
		// The sidecar's and the gateway's counts follow the edge's
		// response by a moment: each hop records once its handler ends.
		poll(t, 5*time.Second, name+" counts every request", func() error {
			after := scrape(t, h.n)
			delta := func(metric string, labels map[string]string) float64 {
				return sample(after, metric, labels) - sample(before[name], metric, labels)
			}
			base := map[string]string{"listener": h.listener, "service": "web"}
			with := func(kv ...string) map[string]string {
				m := map[string]string{}
				for k, v := range base {
					m[k] = v
				}
				for i := 0; i < len(kv); i += 2 {
					m[kv[i]] = kv[i+1]
				}
				return m
			}
			checks := []struct {
				what   string
				metric string
				labels map[string]string
				want   float64
			}{
				{"api 2xx", "meshd_requests_total", with("route", "api", "upstream_region", "eu", "code_class", "2xx"), 10},
				{"default 2xx", "meshd_requests_total", with("route", "default", "upstream_region", "eu", "code_class", "2xx"), 10},
				{"denied 4xx", "meshd_requests_total", with("route", "default", "upstream_region", h.deniedFrom, "code_class", "4xx"), 5},
				{"all requests", "meshd_requests_total", base, 25},
				{"api latency observations", "meshd_request_duration_seconds", with("route", "api", "code_class", "2xx"), 10},
				{"all latency observations", "meshd_request_duration_seconds", base, 25},
				{"errors by reason", "meshd_request_errors_total", with("reason", "http_request_denied"), 5},
				{"all errors", "meshd_request_errors_total", base, 5},
				{"request body bytes", "meshd_request_body_bytes_total", base, 1000},
				{"response body bytes", "meshd_response_body_bytes_total", base, float64(20*len(g.okBody) + deniedBytes)},
				{"retries", "meshd_request_retries_total", base, 0},
			}
			for _, c := range checks {
				if got := delta(c.metric, c.labels); got != c.want {
					return fmt.Errorf("%s: %s%v went up by %v, want %v", c.what, c.metric, c.labels, got, c.want)
				}
			}
			return nil
		})
	}
	// Every hop's roles and regions are constant labels.
	fams := scrape(t, g.gw)
	if got := sample(fams, "meshd_requests_total", map[string]string{"role": RoleGateway, "region": "eu", "service": "web"}); got < 25 {
		t.Errorf("gateway: meshd_requests_total{role=gateway,region=eu,service=web} = %v, want at least 25", got)
	}
	if fams["meshd_request_duration_seconds"].GetType() != dto.MetricType_HISTOGRAM {
		t.Errorf("meshd_request_duration_seconds is a %v, want a histogram", fams["meshd_request_duration_seconds"].GetType())
	}

	checkREADMEMetrics(t, g.edge, g.gw, g.web)
	checkNativeHistogram(t, g.edge)

	// The rest of a hop's health: gossip pools, upstreams, identity.
	now := float64(time.Now().Unix())
	for _, c := range []struct {
		n      *Node
		metric string
		labels map[string]string
		ok     func(float64) bool
		want   string
	}{
		{g.gw, "meshd_gossip_members_by_state", map[string]string{"pool": "region", "state": "alive"}, eq(2), "2 (gw-eu, web-1)"},
		{g.gw, "meshd_gossip_members_by_state", map[string]string{"pool": "global", "state": "alive"}, eq(2), "2 (gw-eu, edge-1)"},
		{g.gw, "meshd_gossip_members_by_state", map[string]string{"pool": "region", "state": "suspect"}, eq(0), "0"},
		{g.gw, "meshd_gossip_packets_total", map[string]string{"pool": "region", "direction": "received"}, above(0), "> 0"},
		{g.gw, "meshd_gossip_packet_bytes_total", map[string]string{"pool": "global", "direction": "sent"}, above(0), "> 0"},
		{g.web, "meshd_gossip_streams_total", map[string]string{"pool": "region"}, above(0), "> 0 (its join)"},
		{g.edge, "meshd_gossip_health_score", map[string]string{"pool": "global"}, eq(0), "0"},
		{g.gw, "meshd_upstream_ejected", map[string]string{"upstream_region": "eu"}, eq(0), "0: web-1 answers"},
		{g.edge, "meshd_upstream_ejections_total", map[string]string{"upstream_region": "eu"}, eq(0), "0"},
		{g.web, "meshd_trust_bundle_roots", nil, eq(1), "1"},
		{g.web, "meshd_trust_bundle_expiry_seconds", nil, above(now + 86400), "more than a day ahead"},
		{g.web, "meshd_svid_expiry_seconds", nil, above(now), "ahead"},
		{g.edge, "meshd_retries_total", map[string]string{"listener": "public"}, eq(0), "0"},
		{g.gw, "meshd_retry_budget_exhausted_total", map[string]string{"listener": "mesh"}, eq(0), "0"},
	} {
		fams := scrape(t, c.n)
		if fams[c.metric] == nil {
			t.Errorf("%s: no %s", c.n.Config.Name, c.metric)
			continue
		}
		if v := sample(fams, c.metric, c.labels); !c.ok(v) {
			t.Errorf("%s: %s%v = %v, want %s", c.n.Config.Name, c.metric, c.labels, v, c.want)
		}
	}
}

// checkNativeHistogram scrapes n in Prometheus' protobuf format, the one
// that carries native histograms, and checks the latency histogram is one
// (a schema and sparse buckets) besides its classic buckets.
func checkNativeHistogram(t *testing.T, n *Node) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+n.Addrs()["admin"]+"/metrics", nil)
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeProtoDelim)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	for {
		var f dto.MetricFamily
		if err := dec.Decode(&f); err != nil {
			t.Fatalf("no meshd_request_duration_seconds in the protobuf scrape (%v)", err)
		}
		if f.GetName() != "meshd_request_duration_seconds" {
			continue
		}
		for _, m := range f.Metric {
			h := m.GetHistogram()
			if h.GetSampleCount() == 0 {
				continue
			}
			if h.Schema == nil || len(h.PositiveSpan) == 0 || len(h.Bucket) == 0 {
				t.Errorf("meshd_request_duration_seconds%v: schema %v, %d spans, %d classic buckets: want a native histogram with classic buckets",
					m.Label, h.Schema, len(h.PositiveSpan), len(h.Bucket))
			}
			return
		}
		t.Fatal("meshd_request_duration_seconds has no observations in the protobuf scrape")
	}
}

// checkREADMEMetrics: every metric README.md's section on metrics names is
// served by one of nodes, but for those only an anycast edge has, or only
// a rate limit creates.
func checkREADMEMetrics(t *testing.T, nodes ...*Node) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n## Metrics and the dashboard\n")
	if i < 0 {
		t.Fatal("README.md has no section Metrics and the dashboard")
	}
	s = s[i+1:]
	if j := strings.Index(s, "\n## "); j > 0 {
		s = s[:j]
	}
	served := map[string]bool{}
	for _, n := range nodes {
		for name := range scrape(t, n) {
			served[name] = true
		}
	}
	elsewhere := map[string]string{
		"meshd_bgp_peer_up": "anycast", "meshd_bgp_peer_session_state": "anycast", "meshd_bgp_peer_flaps_total": "anycast",
		"meshd_bgp_announced_prefixes": "anycast", "meshd_rate_limited_total": "a rate limit",
	}
	names := regexp.MustCompile("`(meshd_[a-z0-9_]+)`").FindAllStringSubmatch(s, -1)
	if len(names) < 30 {
		t.Fatalf("README's metric table names only %d metrics", len(names))
	}
	for _, m := range names {
		name := m[1]
		if !served[name] && elsewhere[name] == "" {
			t.Errorf("README.md names %s; no node of the test serves it", name)
		}
	}
}

func eq(want float64) func(float64) bool   { return func(v float64) bool { return v == want } }
func above(min float64) func(float64) bool { return func(v float64) bool { return v > min } }

func TestProxyStatusReason(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{`meshd; details="fault injected"`, ""},
		{`web-1; error=connection_refused; next-hop="app"`, "connection_refused"},
		{`gw; error=destination_unavailable, edge; error=http_protocol_error`, "destination_unavailable"},
		{`gw; next-hop="x"; error=made_up`, "other"},
		{`gw; details="no error=here"`, "other"},
		{`gw;error=http_response_timeout`, "http_response_timeout"},
		{`gw; xerror=connection_refused`, ""},
	} {
		h := http.Header{}
		if c.in != "" {
			h.Set("Proxy-Status", c.in)
		}
		if got := proxyStatusReason(h); got != c.want {
			t.Errorf("proxyStatusReason(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestCodeClass(t *testing.T) {
	for code, want := range map[int]string{100: "1xx", 200: "2xx", 304: "3xx", 404: "4xx", 499: "4xx", 503: "5xx", 0: "5xx", 700: "5xx"} {
		if got := codeClasses[codeClass(code)]; got != want {
			t.Errorf("codeClass(%d) = %s, want %s", code, got, want)
		}
	}
}

// TestSeriesBound: past maxSeries label combinations, new ones count
// without service, route and region instead of growing the registry, and
// past maxLines services share one timeline.
func TestSeriesBound(t *testing.T) {
	m := newReqMetrics(nil)
	m.maxSeries, m.maxLines = 64, 16
	now := time.Now()
	for i := range m.maxSeries {
		m.record(&outcome{key: seriesKey{listener: "mesh", service: fmt.Sprint("svc", i), route: "default", region: "eu", class: 1}, end: now})
	}
	m.record(&outcome{key: seriesKey{listener: "mesh", service: "one-too-many", route: "default", region: "eu", class: 1}, end: now})
	m.record(&outcome{key: seriesKey{listener: "mesh", service: "another", route: "r", region: "us", class: 1}, end: now})
	if n := len(m.series.snapshot()); n != m.maxSeries+1 {
		t.Fatalf("%d series, want %d and the overflow", n, m.maxSeries)
	}
	lines := m.lines.snapshot()
	if len(lines) != m.maxLines+1 || lines[lineKey{"mesh", ""}] == nil {
		t.Fatalf("%d timelines, want %d and a shared one", len(lines), m.maxLines)
	}
	if got := lines[lineKey{"mesh", ""}].total[1].Load(); got != int64(m.maxSeries-m.maxLines+2) {
		t.Errorf("the shared timeline counted %d requests, want %d", got, m.maxSeries-m.maxLines+2)
	}
	overflow := m.series.snapshot()[seriesKey{listener: "mesh", region: upstreamNone, class: 1}]
	if overflow == nil {
		t.Fatal("no overflow series")
	}
	var d dto.Metric
	overflow.requests.(prometheus.Metric).Write(&d)
	if d.Counter.GetValue() != 2 {
		t.Errorf("overflow series counted %v requests, want 2", d.Counter.GetValue())
	}
}

// TestSchedulerLatencyMetric: a node exports how long its goroutines wait
// to run (go_sched_latencies_seconds), the saturation of the node itself
// that no upstream's latency shows.
func TestSchedulerLatencyMetric(t *testing.T) {
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	fam := scrape(t, gw)["go_sched_latencies_seconds"]
	if fam == nil || fam.GetType() != dto.MetricType_HISTOGRAM || len(fam.GetMetric()) != 1 {
		t.Fatalf("go_sched_latencies_seconds: %v, want one histogram", fam)
	}
	if h := fam.GetMetric()[0].GetHistogram(); h.GetSampleCount() == 0 || len(h.GetBucket()) == 0 {
		t.Fatalf("go_sched_latencies_seconds has no samples or buckets: %v", h)
	}
}
