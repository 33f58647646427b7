package mesh

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshd/meshd/proxy"
)

const (
	callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan  = "00f067aa0ba902b7"
)

// tracedNode is a node of role whose spans go to the returned exporter.
func tracedNode(t *testing.T, role string) (*Node, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	n := &Node{Config: Config{Role: role, Name: "n1", Region: "eu", Service: "web"}}
	tr, err := newTracing(&n.Config, exp, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.shutdown(t.Context()) })
	n.tracing = tr
	return n, exp
}

// seen records the trace fields a handler behind a hop received.
type seen struct{ traceparent, tracestate string }

func recordingApp(s *seen, code int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.traceparent, s.tracestate = r.Header.Get("Traceparent"), r.Header.Get("Tracestate")
		w.WriteHeader(code)
	})
}

func hopRequest(traceparent, tracestate string) *http.Request {
	r := httptest.NewRequest("GET", "http://web.mesh:8080/cart?user=secret", nil)
	if traceparent != "" {
		r.Header.Set("Traceparent", traceparent)
	}
	if tracestate != "" {
		r.Header.Set("Tracestate", tracestate)
	}
	return r
}

func attrOf(attrs []attribute.KeyValue, key string) (attribute.Value, bool) {
	for _, a := range attrs {
		if string(a.Key) == key {
			return a.Value, true
		}
	}
	return attribute.Value{}, false
}

// TestTraceHopContinuesMeshCaller: a mesh hop's span is a child of its
// caller's span in the caller's trace, the request goes on with a
// traceparent naming the hop's own span and the caller's tracestate, and
// the span carries the HTTP semantic conventions' attributes.
func TestTraceHopContinuesMeshCaller(t *testing.T) {
	for _, hop := range []string{hopGateway, hopInbound, hopOutbound} {
		t.Run(hop, func(t *testing.T) {
			n, exp := tracedNode(t, RoleGateway)
			var got seen
			h := n.traced(hop, recordingApp(&got, 200))
			h.ServeHTTP(httptest.NewRecorder(), hopRequest("00-"+callerTrace+"-"+callerSpan+"-01", "vendor=x"))

			spans := exp.GetSpans()
			if len(spans) != 1 {
				t.Fatalf("%d spans, want 1", len(spans))
			}
			s := spans[0]
			if s.SpanContext.TraceID().String() != callerTrace {
				t.Errorf("trace %s, want the caller's %s", s.SpanContext.TraceID(), callerTrace)
			}
			if s.Parent.SpanID().String() != callerSpan || !s.Parent.IsRemote() {
				t.Errorf("parent %s (remote %v), want the caller's span %s", s.Parent.SpanID(), s.Parent.IsRemote(), callerSpan)
			}
			want := "00-" + callerTrace + "-" + s.SpanContext.SpanID().String() + "-01"
			if got.traceparent != want {
				t.Errorf("next hop got traceparent %q, want %q (this hop's span as parent)", got.traceparent, want)
			}
			if got.tracestate != "vendor=x" {
				t.Errorf("next hop got tracestate %q, want the caller's", got.tracestate)
			}
			wantKind := trace.SpanKindServer
			if hop == hopOutbound {
				wantKind = trace.SpanKindClient
			}
			if s.SpanKind != wantKind || s.Name != "GET" {
				t.Errorf("span %q kind %v, want GET %v", s.Name, s.SpanKind, wantKind)
			}
			for k, v := range map[string]string{"http.request.method": "GET", "url.path": "/cart",
				"server.address": "web.mesh", "url.scheme": "http", "meshd.hop": hop} {
				if a, ok := attrOf(s.Attributes, k); !ok || a.AsString() != v {
					t.Errorf("%s = %q, want %q", k, a.Emit(), v)
				}
			}
			if a, ok := attrOf(s.Attributes, "http.response.status_code"); !ok || a.AsInt64() != 200 {
				t.Errorf("http.response.status_code = %v, want 200", a.Emit())
			}
			if s.Status.Code == codes.Error {
				t.Error("a 200 marked as an error")
			}
			if r, ok := attrOf(s.Resource.Attributes(), "meshd.region"); !ok || r.AsString() != "eu" {
				t.Errorf("resource meshd.region = %q, want eu", r.Emit())
			}
		})
	}
}

// TestTraceHopNotSampled: a caller that did not sample its trace gets no
// span recorded, and the next hop still learns the trace and the decision.
func TestTraceHopNotSampled(t *testing.T) {
	n, exp := tracedNode(t, RoleGateway)
	var got seen
	n.traced(hopGateway, recordingApp(&got, 200)).ServeHTTP(httptest.NewRecorder(),
		hopRequest("00-"+callerTrace+"-"+callerSpan+"-00", ""))
	if spans := exp.GetSpans(); len(spans) != 0 {
		t.Fatalf("%d spans recorded of an unsampled trace", len(spans))
	}
	if !strings.HasPrefix(got.traceparent, "00-"+callerTrace+"-") || !strings.HasSuffix(got.traceparent, "-00") ||
		strings.Contains(got.traceparent, callerSpan) {
		t.Errorf("next hop got %q, want the caller's trace, a new parent, unsampled", got.traceparent)
	}
}

// TestTraceEdgeStartsNewTrace: the edge never continues a public trace:
// its span is a root with a new trace ID, the public's context is a link,
// and the public's tracestate does not go on.
func TestTraceEdgeStartsNewTrace(t *testing.T) {
	n, exp := tracedNode(t, RoleEdge)
	var got seen
	n.traced(hopEdge, recordingApp(&got, 200)).ServeHTTP(httptest.NewRecorder(),
		hopRequest("00-"+callerTrace+"-"+callerSpan+"-01", "public=1"))
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.SpanContext.TraceID().String() == callerTrace || s.Parent.IsValid() {
		t.Fatalf("edge span in trace %s with parent %v: continued the public's trace", s.SpanContext.TraceID(), s.Parent.SpanID())
	}
	if len(s.Links) != 1 || s.Links[0].SpanContext.TraceID().String() != callerTrace ||
		s.Links[0].SpanContext.SpanID().String() != callerSpan || s.Links[0].SpanContext.TraceState().String() != "public=1" {
		t.Errorf("links %+v, want one to the public's span", s.Links)
	}
	if want := "00-" + s.SpanContext.TraceID().String() + "-" + s.SpanContext.SpanID().String() + "-01"; got.traceparent != want {
		t.Errorf("gateway got traceparent %q, want %q", got.traceparent, want)
	}
	if got.tracestate != "" {
		t.Errorf("gateway got the public's tracestate %q", got.tracestate)
	}

	// A malformed public traceparent: no link, still a new trace.
	exp.Reset()
	n.traced(hopEdge, recordingApp(&got, 200)).ServeHTTP(httptest.NewRecorder(), hopRequest("00-zz-bad-01", ""))
	if spans := exp.GetSpans(); len(spans) != 1 || len(spans[0].Links) != 0 || proxy.TraceID(http.Header{"Traceparent": {got.traceparent}}) == "" {
		t.Errorf("malformed public traceparent: spans %+v, gateway got %q", spans, got.traceparent)
	}
}

// TestTraceHopErrorStatus: a 5xx answer fails the span; a 4xx fails only
// the sidecar's outbound span, a client span (HTTP semantic conventions:
// at a server, a 4xx is the caller's error).
func TestTraceHopErrorStatus(t *testing.T) {
	for _, c := range []struct {
		hop  string
		code int
		fail bool
	}{{hopGateway, 503, true}, {hopGateway, 502, true}, {hopGateway, 404, false}, {hopGateway, 499, false},
		{hopEdge, 504, true}, {hopEdge, 429, false}, {hopInbound, 403, false},
		{hopOutbound, 503, true}, {hopOutbound, 404, true}, {hopOutbound, 499, false}, {hopOutbound, 200, false}} {
		n, exp := tracedNode(t, RoleGateway)
		var got seen
		n.traced(c.hop, recordingApp(&got, c.code)).ServeHTTP(httptest.NewRecorder(), hopRequest("", ""))
		s := exp.GetSpans()[0]
		if (s.Status.Code == codes.Error) != c.fail {
			t.Errorf("%s %d: span status %v, want error %v", c.hop, c.code, s.Status.Code, c.fail)
		}
		if _, ok := attrOf(s.Attributes, "error.type"); ok != c.fail {
			t.Errorf("%s %d: error.type present %v, want %v", c.hop, c.code, ok, c.fail)
		}
		if s.Parent.IsValid() {
			t.Errorf("%s %d: a request without traceparent got parent %v, want a new root", c.hop, c.code, s.Parent)
		}
	}
}

// TestTracingOff: without a tracer a mesh hop passes the caller's trace
// context on as sent, and the edge drops the public's.
func TestTracingOff(t *testing.T) {
	n := &Node{Config: Config{Role: RoleGateway}}
	tp := "00-" + callerTrace + "-" + callerSpan + "-01"
	for _, hop := range []string{hopGateway, hopInbound, hopOutbound} {
		var got seen
		n.traced(hop, recordingApp(&got, 200)).ServeHTTP(httptest.NewRecorder(), hopRequest(tp, "vendor=x"))
		if got != (seen{tp, "vendor=x"}) {
			t.Errorf("%s: next hop got %+v, want the caller's fields unchanged", hop, got)
		}
	}
	var got seen
	n.traced(hopEdge, recordingApp(&got, 200)).ServeHTTP(httptest.NewRecorder(), hopRequest(tp, "vendor=x"))
	if got != (seen{}) {
		t.Errorf("edge passed the public's trace context on: %+v", got)
	}
}

// discardWriter is a ResponseWriter that costs nothing, for counting a
// hop's own allocations.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

// TestTracingOffAllocatesNothing: off, a hop allocates no more per
// request than the handler it wraps (BenchmarkTracing has the numbers).
func TestTracingOffAllocatesNothing(t *testing.T) {
	n := &Node{Config: Config{Role: RoleEdge}}
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) })
	w := &discardWriter{h: http.Header{}}
	r := hopRequest("00-"+callerTrace+"-"+callerSpan+"-01", "")
	for _, hop := range []string{hopEdge, hopGateway, hopInbound, hopOutbound} {
		h := n.traced(hop, bare)
		if a := testing.AllocsPerRun(100, func() { h.ServeHTTP(w, r) }); a != 0 {
			t.Errorf("%s: %v allocations per request with tracing off, want 0", hop, a)
		}
	}
}

// BenchmarkTracing: one hop (a gateway's, and the edge's, whose public
// handler also drops the client's trace context) forwarding to a loopback
// app, with no tracing code (bare), tracing off, and tracing on (every
// request sampled, spans to an exporter that drops them).
//
//	go test -run '^$' -bench BenchmarkTracing -benchmem ./mesh/
func BenchmarkTracing(b *testing.B) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	defer app.Close()
	pool := &proxy.Pool{}
	defer pool.CloseIdle()
	up := []*proxy.Upstream{{Key: "app", Addr: app.Listener.Addr().String(), Name: "app"}}
	for _, hop := range []string{hopGateway, hopEdge} {
		for _, mode := range []string{"bare", "off", "on"} {
			b.Run(hop+"/"+mode, func(b *testing.B) {
				n := &Node{Config: Config{Role: RoleGateway, Name: "gw", Region: "eu"}}
				if mode == "on" {
					tr, err := newTracing(&n.Config, tracetest.NewNoopExporter(), slog.New(slog.DiscardHandler))
					if err != nil {
						b.Fatal(err)
					}
					defer tr.shutdown(b.Context())
					n.tracing = tr
				}
				ph := &proxy.Handler{Pool: pool, Via: "gw", Public: hop == hopEdge, Observe: n.handlerObserve(""),
					Route: func(*http.Request) ([]*proxy.Upstream, error) { return up, nil }}
				var h http.Handler = ph
				if mode != "bare" {
					h = n.traced(hop, ph)
				}
				tp := "00-" + callerTrace + "-" + callerSpan + "-01"
				r := hopRequest(tp, "")
				w := &discardWriter{h: http.Header{}}
				b.ReportAllocs()
				for b.Loop() {
					clear(w.h)
					if hop == hopEdge {
						r.Header["Traceparent"] = []string{tp} // a client's, each time
					}
					h.ServeHTTP(w, r)
				}
			})
		}
	}
}

// TestTracingReceiverDown: a receiver that does not answer costs spans,
// never a request, and the node's log says so.
func TestTracingReceiverDown(t *testing.T) {
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50") // ms: the batcher's first export comes at once
	var logs syncBuffer
	c := Config{Role: RoleGateway, Name: "gw", Region: "eu", OTLPEndpoint: "http://" + freePort(t)}
	tr, err := newTracing(&c, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{Config: c, tracing: tr}
	var got seen
	w := httptest.NewRecorder()
	n.traced(hopGateway, recordingApp(&got, 200)).ServeHTTP(w, hopRequest("", ""))
	if w.Code != 200 || proxy.TraceID(http.Header{"Traceparent": {got.traceparent}}) == "" {
		t.Fatalf("with the receiver down: %d, next hop got %q", w.Code, got.traceparent)
	}
	poll(t, 30*time.Second, "the failed export logged", func() error {
		if !strings.Contains(logs.String(), "tracing: spans not exported") {
			return fmt.Errorf("log %q", logs.String())
		}
		return nil
	})
}
