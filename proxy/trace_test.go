package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestTraceID: the trace ID of a W3C traceparent (Trace Context §3.2),
// and "" for every malformed one, which a hop must treat as absent.
func TestTraceID(t *testing.T) {
	const id = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, c := range []struct {
		in   []string
		want string
	}{
		{[]string{"00-" + id + "-00f067aa0ba902b7-01"}, id},
		{[]string{"00-" + id + "-00f067aa0ba902b7-00"}, id},
		{[]string{"cc-" + id + "-00f067aa0ba902b7-01-more"}, id}, // a later version: read the prefix (§4.3)
		{[]string{"00-" + id + "-00f067aa0ba902b7-01-more"}, ""}, // version 00 has nothing after the flags
		{[]string{"ff-" + id + "-00f067aa0ba902b7-01"}, ""},      // version ff is invalid
		{[]string{"00-" + strings.ToUpper(id) + "-00f067aa0ba902b7-01"}, ""},
		{[]string{"00-00000000000000000000000000000000-00f067aa0ba902b7-01"}, ""},
		{[]string{"00-" + id + "-0000000000000000-01"}, ""},
		{[]string{"00-" + id + "-00f067aa0ba902b7"}, ""},
		{[]string{"00_" + id + "-00f067aa0ba902b7-01"}, ""},
		{[]string{"00-" + id + "-00f067aa0ba902b7-01", "00-" + id + "-00f067aa0ba902b7-01"}, ""},
		{nil, ""},
	} {
		if got := TraceID(http.Header{"Traceparent": c.in}); got != c.want {
			t.Errorf("TraceID(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestProxyStatusTrace: a Proxy-Status error names the request's trace in
// its details (RFC 9209 §2.1.6), after the error's own details, and the
// Observe hook is told of the upstream the request failed on.
func TestProxyStatusTrace(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	refused := refusedAddr(t)
	var mu sync.Mutex
	var told []string
	onUp := func(_ http.ResponseWriter, _ *http.Request, u *Upstream, _ int, _ int64) {
		mu.Lock()
		defer mu.Unlock()
		name := "<nil>"
		if u != nil {
			name = u.name()
		}
		told = append(told, name)
	}
	for _, c := range []struct {
		name, traceparent string
		route             func(*http.Request) ([]*Upstream, error)
		want, wantUp      string
	}{
		{"details and trace", tp, func(*http.Request) ([]*Upstream, error) {
			return nil, &StatusError{Code: 503, Msg: "meshd: web is down", Details: `web "is" down`}
		}, `meshd-test; error=destination_unavailable; details="web \"is\" down; trace=4bf92f3577b34da6a3ce929d0e0e4736"`, "<nil>"},
		{"trace only", tp, fixedRoute(&Upstream{Key: refused, Addr: refused, Name: "web-1"}),
			`meshd-test; error=connection_refused; next-hop="web-1"; details="trace=4bf92f3577b34da6a3ce929d0e0e4736"`, "web-1"},
		{"malformed traceparent", "00-nope", fixedRoute(&Upstream{Key: refused, Addr: refused, Name: "web-1"}),
			`meshd-test; error=connection_refused; next-hop="web-1"`, "web-1"},
	} {
		told = nil
		addr := startProxy(t, &Handler{Route: c.route, Via: "meshd-test", MaxAttempts: 1, Observe: onUp})
		resp, _ := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\nTraceparent: "+c.traceparent+"\r\n\r\n")
		if got := resp.Header.Get("Proxy-Status"); got != c.want {
			t.Errorf("%s: Proxy-Status %q, want %q", c.name, got, c.want)
		}
		mu.Lock()
		if len(told) != 1 || told[0] != c.wantUp {
			t.Errorf("%s: Observe told %q, want [%s]", c.name, told, c.wantUp)
		}
		mu.Unlock()
	}
}

// TestProxyStatusValue: the Proxy-Status values meshd writes outside the
// forwarding handler (refusals by policy, rate limits) carry the trace the
// same way.
func TestProxyStatusValue(t *testing.T) {
	const id = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, c := range []struct{ name, errType, details, trace, want string }{
		{"meshd", "http_request_denied", "rule admin", id, `meshd; error=http_request_denied; details="rule admin; trace=` + id + `"`},
		{"meshd", "http_request_denied", "rule admin", "", `meshd; error=http_request_denied; details="rule admin"`},
		{"meshd", "", "fault injected", id, `meshd; details="fault injected; trace=` + id + `"`},
		{"meshd", "connection_limit_reached", "", id, `meshd; error=connection_limit_reached; details="trace=` + id + `"`},
		{"meshd", "connection_limit_reached", "", "", `meshd; error=connection_limit_reached`},
		{"9bad", "", `say "hi"`, "", `meshd; details="say \"hi\""`},
	} {
		if got := ProxyStatus(c.name, c.errType, c.details, c.trace); got != c.want {
			t.Errorf("ProxyStatus(%q, %q, %q, %q) = %q, want %q", c.name, c.errType, c.details, c.trace, got, c.want)
		}
	}
	w := httptest.NewRecorder()
	WriteRateLimited(w, time.Second, "per caller", id)
	if got, want := w.Header().Get("Proxy-Status"), `meshd; error=http_request_denied; details="per caller; trace=`+id+`"`; got != want {
		t.Errorf("WriteRateLimited: Proxy-Status %q, want %q", got, want)
	}
}
