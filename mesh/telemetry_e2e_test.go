package mesh

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/proxy"
)

// otlpSpan is one span an OTLP/HTTP receiver got, with its resource.
type otlpSpan struct {
	span     *tracepb.Span
	resource map[string]string
}

func (s otlpSpan) attr(key string) string { return attrString(s.span.Attributes, key) }

func attrString(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.Key == key {
			if iv, ok := kv.Value.Value.(*commonpb.AnyValue_IntValue); ok {
				return fmt.Sprint(iv.IntValue)
			}
			return kv.Value.GetStringValue()
		}
	}
	return ""
}

// otlpReceiver is an OTLP/HTTP trace receiver (OTLP §"OTLP/HTTP"): it
// decodes each binary protobuf ExportTraceServiceRequest POSTed to
// /v1/traces and keeps its spans.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []otlpSpan
	bad   []string // requests that were not a valid export
}

func newOTLPReceiver(t *testing.T) (*otlpReceiver, string) {
	rcv := &otlpReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &req)
		}
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		if r.Method != "POST" || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" || err != nil {
			rcv.bad = append(rcv.bad, fmt.Sprintf("%s %s %q: %v", r.Method, r.URL.Path, r.Header.Get("Content-Type"), err))
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		for _, rs := range req.ResourceSpans {
			res := map[string]string{}
			for _, kv := range rs.Resource.GetAttributes() {
				res[kv.Key] = kv.Value.GetStringValue()
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					rcv.spans = append(rcv.spans, otlpSpan{span: s, resource: res})
				}
			}
		}
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	}))
	t.Cleanup(srv.Close)
	return rcv, srv.URL // no path: meshd posts to /v1/traces
}

// trace returns the spans of trace id, and the requests that were not
// valid exports.
func (r *otlpReceiver) trace(id string) ([]otlpSpan, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []otlpSpan
	for _, s := range r.spans {
		if hex.EncodeToString(s.span.TraceId) == id {
			out = append(out, s)
		}
	}
	return out, append([]string(nil), r.bad...)
}

// TestTracingEndToEnd: a public request through edge → gateway → sidecar
// → app with every node exporting to an OTLP/HTTP receiver is one trace
// of three spans, each hop's the child of the one before; the trace is
// the edge's, not the public client's (which is a link); the app gets a
// traceparent of that trace naming the sidecar's span; the edge's access
// log and a Proxy-Status error name the trace.
func TestTracingEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four nodes: skipped with -short")
	}
	rcv, endpoint := newOTLPReceiver(t)
	var appMu sync.Mutex
	appSaw := map[string]string{} // service and path → traceparent
	var webOutbound string        // web's sidecar's outbound listener, once it runs
	app := func(svc string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tp := r.Header.Get("Traceparent")
			appMu.Lock()
			appSaw[svc+r.URL.Path] = tp
			out := webOutbound
			appMu.Unlock()
			w.Header().Set("Cache-Control", "no-store")
			if svc == "web" && r.URL.Path == "/traced" {
				// web calls api through its sidecar, passing its
				// trace on as an instrumented app would.
				req, _ := http.NewRequest("GET", "http://"+out+"/inner", nil)
				req.Host = "api.mesh"
				req.Header.Set("Traceparent", tp)
				resp, err := http.DefaultClient.Do(req)
				if err != nil || resp.StatusCode != 200 {
					http.Error(w, fmt.Sprintf("api: %v %v", resp, err), 502)
					return
				}
				resp.Body.Close()
			}
			io.WriteString(w, svc)
		}))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}

	m := newTestMesh(t)
	tracingOn := func(c Config) Config { c.OTLPEndpoint = endpoint; return c }
	gw := m.start(tracingOn(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"}))
	join := []string{gw.Addrs()["gossip"]}
	web := m.start(tracingOn(Config{Role: RoleSidecar, Name: "web-1", Region: "eu", Service: "web",
		Upstream: app("web"), Join: join}))
	appMu.Lock()
	webOutbound = web.Addrs()["outbound"]
	appMu.Unlock()
	api := m.start(tracingOn(Config{Role: RoleSidecar, Name: "api-1", Region: "eu", Service: "api",
		Upstream: app("api"), Join: join}))
	// down's app is not there: its sidecar reports it unhealthy.
	m.start(tracingOn(Config{Role: RoleSidecar, Name: "down-1", Region: "eu", Service: "down",
		Upstream: freePort(t), Join: join}))
	var edgeLog syncBuffer
	edge := m.start(tracingOn(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", AccessLog: true,
		WANJoin: []string{gw.Addrs()["wan-gossip"]}}), func(n *Node) {
		n.Logger = slog.New(slog.NewTextHandler(&edgeLog, nil))
	})
	addr := edge.Addrs()["public-http"]
	wantBody(t, addr, "web.localhost", 200, "web")
	poll(t, 15*time.Second, "web's sidecar routes api", func() error {
		resp, body, err := outboundGet(webOutbound, "api.mesh")
		if err != nil || resp.StatusCode != 200 {
			return fmt.Errorf("%v %q %v", resp, body, err)
		}
		return nil
	})

	// The public client sends a traceparent of its own.
	const publicTrace, publicSpan = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	req, _ := http.NewRequest("GET", "http://"+addr+"/traced?q=secret", nil)
	req.Host = "web.localhost"
	req.Header.Set("Traceparent", "00-"+publicTrace+"-"+publicSpan+"-01")
	req.Header.Set("Tracestate", "public=1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	appMu.Lock()
	tp, apiTP := appSaw["web/traced"], appSaw["api/inner"]
	appMu.Unlock()
	traceID := proxy.TraceID(http.Header{"Traceparent": {tp}})
	if traceID == "" || traceID == publicTrace {
		t.Fatalf("app got traceparent %q: want a trace the edge started, not the public's %s", tp, publicTrace)
	}

	for _, n := range []*Node{edge, gw, web, api} {
		if err := n.tracing.provider.ForceFlush(t.Context()); err != nil {
			t.Fatalf("%s: flush: %v", n.Config.Name, err)
		}
	}
	spans, bad := rcv.trace(traceID)
	if len(bad) > 0 {
		t.Fatalf("receiver refused exports: %q", bad)
	}
	// web's sidecar sends to api-1 directly once it knows it healthy,
	// through the gateway until then: 5 spans, or 6.
	if len(spans) != 5 && len(spans) != 6 {
		for _, s := range spans {
			t.Logf("%s %s %s parent %x span %x", s.resource["service.instance.id"], s.attr("meshd.hop"), s.attr("url.path"), s.span.ParentSpanId, s.span.SpanId)
		}
		t.Fatalf("trace %s has %d spans, want edge, gateway, web's sidecar in and out, (gateway,) api's sidecar", traceID, len(spans))
	}
	byHop := map[string]otlpSpan{}
	for _, s := range spans {
		byHop[s.resource["service.instance.id"]+" "+s.attr("meshd.hop")+" "+s.attr("url.path")] = s
	}
	e, g, sc := byHop["edge-1 edge /traced"], byHop["gw-eu gateway /traced"], byHop["web-1 sidecar-inbound /traced"]
	out, g2, in := byHop["web-1 sidecar-outbound /inner"], byHop["gw-eu gateway /inner"], byHop["api-1 sidecar-inbound /inner"]
	apiVia := "api-1"
	if len(spans) == 5 {
		g2 = out // no gateway between web's sidecar and api's
	} else {
		apiVia = "gw-eu"
	}
	if e.span == nil || g.span == nil || sc.span == nil || out.span == nil || g2.span == nil || in.span == nil {
		t.Fatalf("hops %v, want edge, gateway, web-1's inbound and outbound, (gateway,) api-1's inbound", byHop)
	}
	if len(e.span.ParentSpanId) != 0 {
		t.Errorf("edge span has parent %x: it continued a public trace", e.span.ParentSpanId)
	}
	if len(e.span.Links) != 1 || hex.EncodeToString(e.span.Links[0].TraceId) != publicTrace ||
		hex.EncodeToString(e.span.Links[0].SpanId) != publicSpan {
		t.Errorf("edge span links %v, want one to the public's span", e.span.Links)
	}
	for _, c := range []struct {
		child, parent otlpSpan
		name          string
	}{{g, e, "gateway"}, {sc, g, "sidecar"}, {out, sc, "web's outbound (its app passed the trace on)"},
		{g2, out, "gateway of web's call"}, {in, g2, "api's sidecar"}} {
		if c.child.span == c.parent.span {
			continue // no gateway on web's call
		}
		if string(c.child.span.ParentSpanId) != string(c.parent.span.SpanId) {
			t.Errorf("%s span's parent %x, want the span before it %x", c.name, c.child.span.ParentSpanId, c.parent.span.SpanId)
		}
	}
	if want := "00-" + traceID + "-" + hex.EncodeToString(sc.span.SpanId) + "-01"; tp != want {
		t.Errorf("app got traceparent %q, want %q (the sidecar's span as parent)", tp, want)
	}
	if want := "00-" + traceID + "-" + hex.EncodeToString(in.span.SpanId) + "-01"; apiTP != want {
		t.Errorf("api's app got traceparent %q, want %q", apiTP, want)
	}
	if out.span.Kind != tracepb.Span_SPAN_KIND_CLIENT || out.attr("meshd.service") != "api" ||
		out.attr("meshd.upstream.instance") != apiVia || out.attr("server.address") != "api.mesh" {
		t.Errorf("web's outbound span: kind %v, attributes %v", out.span.Kind, out.span.Attributes)
	}
	for _, c := range []struct {
		s                      otlpSpan
		role, instance, region string
	}{{e, RoleEdge, "gw-eu", "eu"}, {g, RoleGateway, "web-1", "eu"}, {sc, RoleSidecar, "app", "eu"}} { // a sidecar's app is in its own region
		if c.s.span.Kind != tracepb.Span_SPAN_KIND_SERVER || c.s.span.Name != "GET" {
			t.Errorf("%s: span %q kind %v, want a GET server span", c.role, c.s.span.Name, c.s.span.Kind)
		}
		for k, v := range map[string]string{"http.request.method": "GET", "url.path": "/traced", "server.address": "web.localhost",
			"http.response.status_code": "200", "meshd.service": "web", "meshd.upstream.instance": c.instance,
			"meshd.upstream.region": c.region} {
			if got := c.s.attr(k); got != v {
				t.Errorf("%s: %s = %q, want %q", c.role, k, got, v)
			}
		}
		if c.s.resource["meshd.role"] != c.role || c.s.resource["service.name"] != "meshd-"+c.role {
			t.Errorf("%s: resource %v", c.role, c.s.resource)
		}
	}

	// The access log record of that request names the trace.
	poll(t, 5*time.Second, "the access log names the trace", func() error {
		if !regexp.MustCompile(`msg=access .*uri="?/traced\?q=secret"? .*`).MatchString(edgeLog.String()) ||
			!strings.Contains(edgeLog.String(), "trace="+traceID) {
			return fmt.Errorf("log:\n%s", edgeLog.String())
		}
		return nil
	})

	// An error answer names its trace in Proxy-Status, and its spans
	// failed.
	var ps string
	poll(t, 15*time.Second, "down.localhost answers a Proxy-Status error", func() error {
		resp, _, err := edgeGet(addr, "down.localhost", "/")
		if err != nil {
			return err
		}
		ps = resp.Header.Get("Proxy-Status")
		if resp.StatusCode < 500 || !strings.Contains(ps, "trace=") {
			return fmt.Errorf("%d, Proxy-Status %q", resp.StatusCode, ps)
		}
		return nil
	})
	t.Logf("Proxy-Status: %s", ps)
	m2 := regexp.MustCompile(`trace=([0-9a-f]{32})`).FindStringSubmatch(ps)
	if m2 == nil {
		t.Fatalf("Proxy-Status %q names no trace", ps)
	}
	if !strings.Contains(edgeLog.String(), "trace="+m2[1]) {
		t.Errorf("the access log does not name the error's trace %s", m2[1])
	}

	// A node that stops exports the spans it still holds: the edge's
	// span of the error answer is in its batcher until then.
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	if err := edge.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	errSpans, _ := rcv.trace(m2[1])
	var edgeSpans int
	for _, s := range errSpans {
		if s.attr("meshd.hop") != hopEdge {
			continue
		}
		edgeSpans++
		if s.span.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR || s.attr("http.response.status_code") != "503" {
			t.Errorf("edge span of the error answer: %s, status %v; want 503, error", s.attr("http.response.status_code"), s.span.Status)
		}
	}
	if edgeSpans != 1 {
		t.Errorf("Proxy-Status names trace %s, which has %d edge spans after the edge stopped, want 1", m2[1], edgeSpans)
	}
}
