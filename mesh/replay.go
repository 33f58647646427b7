package mesh

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/meshd/meshd/proxy"
)

// App-driven replay, in the spirit of Fly.io's fly-replay: an app that
// cannot serve a request where it landed (the writes of a database live in
// another region, a user's data is pinned elsewhere) answers with
//
//	Mesh-Replay: region=us
//
// and the edge sends the same request to region us instead, discarding
// that answer: the client sees only the replayed one. The replayed request
// carries X-Mesh-Replayed: 1 (an X-Mesh-* field, so the public cannot set
// it), and a request is replayed at most once: a Mesh-Replay on the
// replayed answer is dropped. The field never reaches the public.
//
// A request can be replayed when it has no body or a declared body of at
// most replayMaxBody bytes, which the edge then keeps until the answer
// comes; for any other the app's answer is forwarded as it is (without the
// field) and the edge logs why. Tunnels (CONNECT, upgrades) are never
// replayed. A region that serves no healthy instance of the service gets
// the request a 503 that says so.

// HeaderReplay is the response field an app sets to have its request
// replayed elsewhere.
const HeaderReplay = "Mesh-Replay"

// HeaderReplayed marks a replayed request for the app that gets it.
const HeaderReplayed = "X-Mesh-Replayed"

const replayMaxBody = 64 << 10

// replay wraps the edge's forwarding handler.
func (n *Node) replay(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rr := routeFrom(r.Context())
		if rr == nil || r.Method == http.MethodConnect || r.Header["Upgrade"] != nil {
			next.ServeHTTP(w, r)
			return
		}
		var body []byte
		canReplay := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
		if !canReplay && r.ContentLength > 0 && r.ContentLength <= replayMaxBody {
			b, err := io.ReadAll(io.LimitReader(r.Body, replayMaxBody+1))
			r.Body.Close()
			if err != nil {
				// The client's body broke: the forward reports it.
				r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(b), errBody{err}))
				next.ServeHTTP(w, r)
				return
			}
			body, canReplay = b, true
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		rw := newReplayWriter(w, canReplay)
		next.ServeHTTP(rw, r)
		if rw.region == "" {
			if rw.refused != "" {
				n.Logger.Info("edge: an app asked to replay a request that cannot be replayed",
					"service", rr.service, "host", r.Host, "path", r.URL.Path, "why", rw.refused)
			}
			return
		}
		n.replays.Add(1)
		rr.region = rw.region
		if body != nil {
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		// The replayed answer goes out as it is, minus the field.
		next.ServeHTTP(newReplayWriter(w, false), r)
	})
}

// errBody hands a body's read error on.
type errBody struct{ err error }

func (e errBody) Read([]byte) (int, error) { return 0, e.err }

// replayRegion parses a Mesh-Replay value: region=NAME, with other
// parameters (separated by ; or ,) ignored. "" when it names no valid
// region.
func replayRegion(v string) string {
	for _, part := range strings.FieldsFunc(v, func(r rune) bool { return r == ';' || r == ',' }) {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "region") {
			val = strings.Trim(strings.TrimSpace(val), `"`)
			if validLabel(val) == nil {
				return val
			}
		}
	}
	return ""
}

// replayWriter passes the response on unless its header asks for a
// replay the request allows; then it swallows the answer and puts the
// real header back as it was before (what the middleware in front of the
// forwarding set), so a swallowed answer leaves nothing in it. Header()
// is always the real header: the forwarding handler holds it across
// WriteHeader to set trailers after the body.
type replayWriter struct {
	w         http.ResponseWriter
	before    http.Header // the real header before the answer, to restore
	canReplay bool        // false: the request cannot be sent again (or was)
	decided   bool        // the status is written (or swallowed)
	region    string      // the replay asked for and allowed: the answer is swallowed
	refused   string      // why a replay asked for was not made
}

func newReplayWriter(w http.ResponseWriter, canReplay bool) *replayWriter {
	rw := &replayWriter{w: w, canReplay: canReplay}
	if h := w.Header(); canReplay && len(h) > 0 {
		rw.before = h.Clone() // usually empty: nothing to copy
	}
	return rw
}

func (rw *replayWriter) Header() http.Header { return rw.w.Header() }

func (rw *replayWriter) WriteHeader(code int) {
	if rw.decided {
		if rw.region == "" {
			rw.w.WriteHeader(code)
		}
		return
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		rw.w.WriteHeader(code) // an informational answer (103) goes out
		return
	}
	rw.decided = true
	h := rw.w.Header()
	if v := h[HeaderReplay]; len(v) > 0 {
		delete(h, HeaderReplay)
		switch region := replayRegion(v[0]); {
		case region == "":
			rw.refused = fmt.Sprintf("%s %q names no region", HeaderReplay, truncate(v[0], 100))
		case !rw.canReplay:
			rw.refused = "the request has a body over 64 KiB or of unknown length, or was replayed already"
		default:
			rw.region = region
			clear(h)
			for k, v := range rw.before {
				h[k] = v
			}
			return
		}
	}
	rw.w.WriteHeader(code)
}

func (rw *replayWriter) Write(b []byte) (int, error) {
	if !rw.decided {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.region != "" {
		return len(b), nil // the answer being replaced
	}
	return rw.w.Write(b)
}

func (rw *replayWriter) Flush() {
	if rw.region == "" {
		if !rw.decided {
			rw.WriteHeader(http.StatusOK)
		}
		_ = http.NewResponseController(rw.w).Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (deadlines,
// full duplex).
func (rw *replayWriter) Unwrap() http.ResponseWriter { return rw.w }

// errNoReplayRegion answers a replay to a region that cannot serve it.
func errNoReplayRegion(svc, region string) error {
	msg := fmt.Sprintf("the app asked to replay the request in region %s, which has no healthy instance of %s", region, svc)
	return &proxy.StatusError{Code: http.StatusServiceUnavailable, Msg: "meshd: " + msg, Details: msg, RetryAfter: downRetryAfter}
}
