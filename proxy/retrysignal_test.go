package proxy

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// hop starts a proxy hop in front of ups and returns it as an Upstream of
// the hop before it.
func hop(t *testing.T, h *Handler, ups ...*Upstream) *Upstream {
	t.Helper()
	h.Route = fixedRoute(ups...)
	addr := startProxy(t, h)
	return &Upstream{Key: addr, Addr: addr, Name: "hop-" + addr}
}

// okUpstream answers 200 "ok" and counts its requests.
func okUpstream(t *testing.T) (*Upstream, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	_, u := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	return u, &n
}

func do(t *testing.T, addr, method, body string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://"+addr+"/", rd)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// TestRetrySignal: a hop that reaches no upstream says so (HeaderRetry)
// and the hop before it, trusting it, sends the request to its next
// candidate: a dead app behind a sidecar, or a region with nothing left
// behind a gateway, costs a retry instead of a 502.
func TestRetrySignal(t *testing.T) {
	refused := func() *Upstream { a := refusedAddr(t); return &Upstream{Key: a, Addr: a, Name: "app"} }

	// The hop that cannot reach its app: 502, connection_refused with the
	// next hop's name, and the signal.
	dead := hop(t, &Handler{Via: "sidecar-1", SignalRetry: true}, refused())
	resp, _ := do(t, dead.Addr, "GET", "")
	if resp.StatusCode != 502 || resp.Header.Get(HeaderRetry) != "1" {
		t.Fatalf("dead app: %d, %s %q; want 502 with the signal", resp.StatusCode, HeaderRetry, resp.Header.Get(HeaderRetry))
	}
	if got, want := resp.Header.Get("Proxy-Status"), `sidecar-1; error=connection_refused; next-hop="app"`; got != want {
		t.Errorf("Proxy-Status %q, want %q", got, want)
	}

	// A hop that trusts it retries its next candidate, for a GET and for
	// a POST without a body alike: nothing reached an app.
	good, hits := okUpstream(t)
	gw := startProxy(t, &Handler{Route: fixedRoute(dead, good), TrustRetry: true, SignalRetry: true})
	for _, method := range []string{"GET", "POST"} {
		resp, body := do(t, gw, method, "")
		if resp.StatusCode != 200 || body != "ok" || resp.Header.Get(HeaderRetry) != "" {
			t.Fatalf("%s through a trusting hop: %d %q %s=%q, want 200 from the next candidate", method, resp.StatusCode, body, HeaderRetry, resp.Header.Get(HeaderRetry))
		}
	}
	if hits.Load() != 2 || dead.failStreak.Load() != 2 {
		t.Fatalf("next candidate got %d requests, signalling hop's fail streak %d; want 2 and 2", hits.Load(), dead.failStreak.Load())
	}

	// A body the hop already sent cannot be sent again: the signalling
	// hop's answer comes back, without the signal.
	resp, _ = do(t, gw, "POST", "payload")
	if resp.StatusCode != 502 || resp.Header.Get(HeaderRetry) != "" || hits.Load() != 2 {
		t.Fatalf("POST with a body: %d %s=%q, next candidate hits %d; want 502 from the dead hop, no signal, no retry",
			resp.StatusCode, HeaderRetry, resp.Header.Get(HeaderRetry), hits.Load())
	}

	// Every candidate signals: the last answer is passed on with the
	// signal, so the hop before this one can try elsewhere in turn; the
	// public edge never shows it.
	dead2 := hop(t, &Handler{Via: "sidecar-2", SignalRetry: true}, refused())
	region := hop(t, &Handler{Via: "gw", TrustRetry: true, SignalRetry: true}, dead, dead2)
	resp, _ = do(t, region.Addr, "GET", "")
	if resp.StatusCode != 502 || resp.Header.Get(HeaderRetry) != "1" || !strings.Contains(resp.Header.Get("Proxy-Status"), "sidecar-") {
		t.Fatalf("region with nothing left: %d %s=%q Proxy-Status %q; want the last instance's 502, signalled",
			resp.StatusCode, HeaderRetry, resp.Header.Get(HeaderRetry), resp.Header.Get("Proxy-Status"))
	}
	edge := startProxy(t, &Handler{Route: fixedRoute(region), TrustRetry: true, Public: true})
	resp, _ = do(t, edge, "GET", "")
	if resp.StatusCode != 502 || resp.Header.Get(HeaderRetry) != "" {
		t.Fatalf("public edge: %d %s=%q, want 502 without the signal", resp.StatusCode, HeaderRetry, resp.Header.Get(HeaderRetry))
	}
	edge = startProxy(t, &Handler{Route: fixedRoute(region, good), TrustRetry: true, Public: true})
	if resp, body := do(t, edge, "GET", ""); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("public edge with a second region: %d %q, want 200", resp.StatusCode, body)
	}
}

// TestRetrySignalNotFromApps: an app (an upstream the hop does not trust)
// cannot make meshd retry its requests elsewhere or pass the signal on.
func TestRetrySignalNotFromApps(t *testing.T) {
	_, forger := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderRetry, "1")
		w.WriteHeader(502)
	}))
	good, hits := okUpstream(t)
	sidecar := startProxy(t, &Handler{Route: fixedRoute(forger, good), SignalRetry: true})
	resp, _ := do(t, sidecar, "GET", "")
	if resp.StatusCode != 502 || resp.Header.Get(HeaderRetry) != "" || hits.Load() != 0 {
		t.Fatalf("forged signal: %d %s=%q, next candidate hits %d; want the app's 502 as it is, without the field", resp.StatusCode, HeaderRetry, resp.Header.Get(HeaderRetry), hits.Load())
	}
	if forger.failStreak.Load() != 0 {
		t.Fatal("an app's forged signal counted as a failure to reach it")
	}
}
