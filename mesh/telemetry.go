package mesh

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshd/meshd/proxy"
)

// Tracing: W3C Trace Context (traceparent, tracestate) through the mesh,
// one OpenTelemetry span per hop, exported over OTLP/HTTP.
//
// Off (no --otlp-endpoint), the node builds no tracer and wraps no mesh
// handler: no SDK object is on the request path and a request costs what
// it cost before (BenchmarkTracing, TestTracingOffAllocatesNothing). Mesh
// hops then pass the caller's traceparent and tracestate on untouched,
// like any other field, so a node without tracing is transparent to a
// trace that crosses it. The edge drops a public client's traceparent and tracestate whether it
// traces or not: they are the public's, and a mesh hop behind the edge
// that traces would otherwise continue a trace whose ID, and whose
// sampling decision, the public chose.
//
// On, each hop continues the trace its mesh caller sent (an app through
// its own sidecar, or a peer whose identity mTLS verified) with a span
// whose parent is the caller's span, and sends the request on with a
// traceparent naming its own span. The edge never continues a public
// trace: it starts a new one, with an ID the public cannot pick or
// collide with, and keeps the public's context as a link on its span.
//
// The trace ID is in the edge's access log record and in the details of
// every Proxy-Status error meshd writes (proxy.TraceID reads it from the
// traceparent each hop passes on).

// Hops, in spans' meshd.hop attribute.
const (
	hopEdge     = "edge"
	hopGateway  = "gateway"
	hopInbound  = "sidecar-inbound"
	hopOutbound = "sidecar-outbound"
)

// traceContext reads and writes traceparent and tracestate.
var traceContext propagation.TraceContext

// The attributes meshd adds to the HTTP semantic conventions.
const (
	attrHop            = attribute.Key("meshd.hop")
	attrService        = attribute.Key("meshd.service")
	attrUpstream       = attribute.Key("meshd.upstream.instance")
	attrUpstreamRegion = attribute.Key("meshd.upstream.region")
	attrRole           = attribute.Key("meshd.role")
	attrRegion         = attribute.Key("meshd.region")
)

// tracing is a node's tracer; nil when tracing is off.
type tracing struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
}

// newTracing builds the node's tracer, whose failures go to log. Its spans
// go to exp, synchronously, when exp is set (tests); otherwise in batches
// to c.OTLPEndpoint. Spans carry the node's role, region and name as
// resource attributes, once per batch instead of once per span.
func newTracing(c *Config, exp sdktrace.SpanExporter, log *slog.Logger) (*tracing, error) {
	ratio, err := c.SampleRatio()
	if err != nil {
		return nil, &FieldError{Field: "otlp-sample-ratio", Err: err}
	}
	var proc sdktrace.SpanProcessor
	if exp != nil {
		proc = sdktrace.NewSimpleSpanProcessor(exp)
	} else {
		u, err := url.Parse(c.OTLPEndpoint)
		if err != nil {
			return nil, &FieldError{Field: "otlp-endpoint", Err: err}
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/traces" // OTLP/HTTP's path for traces
		}
		// New does not connect: a receiver that is down costs spans
		// (the batcher drops what it cannot hold), never the start.
		e, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(u.String()))
		if err != nil {
			return nil, &FieldError{Field: "otlp-endpoint", Err: err}
		}
		// The batcher never blocks a request: a full queue (2048 spans)
		// drops the newest.
		proc = sdktrace.NewBatchSpanProcessor(e)
	}
	attrs := []attribute.KeyValue{semconv.ServiceName("meshd-" + c.Role), semconv.ServiceInstanceID(c.Name),
		attrRole.String(c.Role)}
	if c.Region != "" {
		attrs = append(attrs, attrRegion.String(c.Region))
	}
	if c.Role == RoleSidecar && c.Service != "" {
		attrs = append(attrs, attrService.String(c.Service))
	}
	// The SDK reports failed exports through one process-wide handler;
	// a process runs one node, whose log gets them (rather than Go's
	// standard log on stderr). The batcher tries once per batch, so a
	// receiver that is down costs a line every few seconds.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: spans not exported", "err", err)
	}))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSpanProcessor(proc),
		sdktrace.WithResource(resource.NewWithAttributes(semconv.SchemaURL, attrs...)),
		// Parent-based: a hop that continues a trace records it exactly
		// when its caller did, so a trace is whole across the mesh or
		// absent; the ratio decides only for traces this node starts.
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
	)
	return &tracing{provider: tp, tracer: tp.Tracer("github.com/meshd/meshd/mesh")}, nil
}

// shutdown exports the spans still queued, within ctx.
func (t *tracing) shutdown(ctx context.Context) error {
	return t.provider.Shutdown(ctx)
}

// traced makes next one span of the trace of each request, for the given
// hop. Off, it is next itself, except at the edge, which drops the
// public's trace context (see above).
func (n *Node) traced(hop string, next http.Handler) http.Handler {
	public := hop == hopEdge
	t := n.tracing
	if t == nil {
		if !public {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			delete(r.Header, "Traceparent")
			delete(r.Header, "Tracestate")
			next.ServeHTTP(w, r)
		})
	}
	kind := trace.SpanKindServer
	if hop == hopOutbound {
		kind = trace.SpanKindClient // the app's call, made on its behalf
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		opts := make([]trace.SpanStartOption, 0, 4)
		carrier := propagation.HeaderCarrier(r.Header)
		if public {
			if sc := trace.SpanContextFromContext(traceContext.Extract(context.Background(), carrier)); sc.IsValid() {
				opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc,
					Attributes: []attribute.KeyValue{attribute.Bool("meshd.public", true)}}))
			}
			delete(r.Header, "Traceparent")
			delete(r.Header, "Tracestate")
			opts = append(opts, trace.WithNewRoot())
		} else {
			ctx = traceContext.Extract(ctx, carrier)
		}
		opts = append(opts, trace.WithSpanKind(kind), trace.WithAttributes(requestAttrs(hop, r)...))
		ctx, span := t.tracer.Start(ctx, spanName(r.Method), opts...)
		// The next hop's parent is this span; tracestate goes on as the
		// caller sent it.
		traceContext.Inject(ctx, carrier)
		rw := recorderPool.Get().(*statusRecorder)
		rw.ResponseWriter, rw.status, rw.bytes = w, 0, 0
		// Deferred: the proxy aborts a response whose upstream failed
		// half way with a panic (http.ErrAbortHandler), and the span
		// still ends.
		defer func() {
			code := rw.code(r)
			span.SetAttributes(semconv.HTTPResponseStatusCode(code))
			// HTTP semantic conventions: a server span fails on 5xx
			// only (a 4xx is the caller's error), a client span on 4xx
			// too (the app's call failed); 499 is a caller that left.
			if code >= 500 || kind == trace.SpanKindClient && code >= 400 && code != proxy.StatusClientClosedRequest {
				span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(code)))
				span.SetStatus(codes.Error, "")
			}
			span.End()
			rw.ResponseWriter = nil
			recorderPool.Put(rw)
		}()
		next.ServeHTTP(rw, r.WithContext(ctx))
	})
}

// handlerObserve is a forwarding handler's Observe: the request's
// recorder learns the upstream (observed, golden.go) and, when tracing is
// on, so does its span. svc is the service of requests no front resolved
// a route for: a sidecar's own on its inbound listener.
func (n *Node) handlerObserve(svc string) func(http.ResponseWriter, *http.Request, *proxy.Upstream, int, int64) {
	if n.tracing == nil {
		return observed
	}
	return func(w http.ResponseWriter, r *http.Request, u *proxy.Upstream, attempts int, bodyBytes int64) {
		observed(w, r, u, attempts, bodyBytes)
		spanUpstream(r, u, svc)
	}
}

// spanUpstream names the request's service and the upstream it went to
// (the last one tried when it failed) on the hop's span; the span ends
// after the handler returns.
func spanUpstream(r *http.Request, u *proxy.Upstream, svc string) {
	span := trace.SpanFromContext(r.Context())
	if !span.IsRecording() {
		return
	}
	if rr := routeFrom(r.Context()); rr != nil {
		span.SetAttributes(attrService.String(rr.service))
	} else if svc != "" {
		span.SetAttributes(attrService.String(svc))
	}
	if u == nil {
		return
	}
	span.SetAttributes(attrUpstream.String(u.Name))
	if u.Region != "" {
		span.SetAttributes(attrUpstreamRegion.String(u.Region))
	}
}

// requestAttrs are a hop's attributes from its request (HTTP semantic
// conventions, server spans). url.path leaves out the query, which may
// hold secrets; server.address is the Host asked for, without its port.
func requestAttrs(hop string, r *http.Request) []attribute.KeyValue {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	attrs := make([]attribute.KeyValue, 0, 7)
	method := semconv.HTTPRequestMethodKey.String(r.Method)
	if spanName(r.Method) == "HTTP" {
		method = semconv.HTTPRequestMethodKey.String("_OTHER")
		attrs = append(attrs, semconv.HTTPRequestMethodOriginal(r.Method))
	}
	return append(attrs, method, semconv.URLPath(r.URL.Path), semconv.URLScheme(scheme),
		semconv.ServerAddress(host), semconv.NetworkProtocolVersion(protocolVersion(r)), attrHop.String(hop))
}

// spanName is the HTTP semantic conventions' name of a span without a
// route template: the method, or "HTTP" for one outside RFC 9110 and
// PATCH, so that a client's made-up methods do not name spans.
func spanName(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete,
		http.MethodConnect, http.MethodOptions, http.MethodTrace, http.MethodPatch:
		return method
	}
	return "HTTP"
}

// protocolVersion is network.protocol.version of r: "1.1", "2", "3".
func protocolVersion(r *http.Request) string {
	switch r.ProtoMajor {
	case 2:
		return "2"
	case 3:
		return "3"
	}
	if r.ProtoMinor == 0 {
		return "1.0"
	}
	return "1.1"
}
