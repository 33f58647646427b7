package mesh

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/meshd/meshd/mesh/policy"
	"github.com/meshd/meshd/proxy"
)

// Fault injection and mirroring, for testing an app's resilience and a
// new version with real traffic.
//
// A fault (the route's fault: delay and/or abort a share of requests) is
// applied once per request, by its first hop: the edge for public
// traffic, the caller's sidecar for calls between services. An aborted
// request never leaves that hop; its answer says it was injected
// (Proxy-Status details "fault injected"), so nobody mistakes a test for
// an outage.
//
// A mirror copies a share of the route's requests to instances of a
// subset and discards their answers. It is sent by the hop that picks the
// service's instances (the gateway of their region, or the caller's
// sidecar in the same region), so each request is mirrored at most once.
// Only requests without a body are mirrored (GET, HEAD, DELETE and the
// like): copying a body would hold the real request until the copy is
// made. At most mirrorInFlight copies are in flight
// at a node, and a copy beyond that is not sent: mirroring must never
// slow the real request down.

const (
	mirrorInFlight = 64
	mirrorTimeout  = 10 * time.Second
	// HeaderMirror marks a mirrored copy for the app that receives it.
	HeaderMirror = "X-Mesh-Mirror"
)

// injectFault applies the route's fault to r and reports whether the
// request goes on (false: it was answered here, or its client left while
// it was delayed).
func injectFault(w http.ResponseWriter, r *http.Request, f *policy.Fault) bool {
	if f == nil {
		return true
	}
	if d := f.Delay; d != nil && rand.Float64() < d.Fraction {
		t := time.NewTimer(d.Duration)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return false
		}
	}
	if a := f.Abort; a != nil && rand.Float64() < a.Fraction {
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h["Proxy-Status"] = []string{proxy.ProxyStatus("meshd", "", "fault injected", proxy.TraceID(r.Header))}
		w.WriteHeader(a.Status)
		fmt.Fprintf(w, "meshd: fault injected (%d)\n", a.Status)
		return false
	}
	return true
}

// mirror sends a copy of out, a request for svc about to be forwarded by a
// hop that picks instances, to an instance of the route's mirror subset,
// when the draw says so.
func (n *Node) mirror(out *http.Request, rr *reqRoute, s *Snapshot) {
	if rr == nil || rr.route == nil || rr.route.Mirror == nil {
		return
	}
	m := rr.route.Mirror
	if m.Subset == rr.subset || rand.Float64() >= m.Fraction {
		return
	}
	if out.ContentLength != 0 || out.Body != nil && out.Body != http.NoBody {
		return // bodies are not copied: see above
	}
	ups := s.instancesFor(rr.service, m.Subset).pick()
	if len(ups) == 0 {
		return
	}
	select {
	case n.mirrors <- struct{}{}:
	default:
		n.mirrorDropped.Add(1)
		return
	}
	cp := out.Clone(context.WithoutCancel(out.Context()))
	cp.Body = nil
	cp.Header[HeaderSubset] = []string{m.Subset}
	cp.Header[HeaderMirror] = []string{"1"}
	u := ups[0]
	go func() {
		defer func() { <-n.mirrors }()
		ctx, cancel := context.WithTimeout(cp.Context(), mirrorTimeout)
		defer cancel()
		resp, err := n.pool.RoundTrip(u, cp.WithContext(ctx))
		if err != nil {
			n.mirrorFailed.Add(1)
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		n.mirrored.Add(1)
	}()
}
