package mesh

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/tlsmgr"
)

// Streams of the streaming app: events sent streamGap apart.
const (
	streamEvents = 6
	streamGap    = 100 * time.Millisecond
	// streamLate is how long after it was sent an event may arrive.
	streamLate = 50 * time.Millisecond
)

// streamApp answers /events with a Server-Sent Events stream and /chunks
// (?n=N events instead of streamEvents) and /chunks with a chunked stream of another type with no Content-Length and no
// caching fields (the edge cache decides on its own); each event carries
// the time it was sent, in Unix nanoseconds, and is flushed at once. An
// event's "time it was sent" is the same clock as the test's: one process.
func streamApp(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	send := func(w http.ResponseWriter, r *http.Request, format string) {
		n := streamEvents
		if v, err := strconv.Atoi(r.URL.Query().Get("n")); err == nil && v > 0 {
			n = v
		}
		for i := range n {
			if i > 0 {
				select {
				case <-time.After(streamGap):
				case <-r.Context().Done():
					return
				}
			}
			fmt.Fprintf(w, format, time.Now().UnixNano())
			w.(http.Flusher).Flush()
		}
	}
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		send(w, r, "data: %d\n\n")
	})
	mux.HandleFunc("/chunks", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		send(w, r, "%d\n")
	})
	srv := &http.Server{Handler: mux}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// readStream reads the events of a streamApp response and returns, for
// each, how long after it was sent it arrived.
func readStream(body io.Reader) ([]time.Duration, error) {
	br := bufio.NewReader(body)
	var late []time.Duration
	for {
		line, err := br.ReadString('\n')
		now := time.Now()
		if err == io.EOF && line == "" {
			return late, nil
		}
		if err != nil {
			return late, err
		}
		v := strings.TrimSpace(strings.TrimPrefix(line, "data: "))
		if v == "" {
			continue // the blank line that ends an event
		}
		ns, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return late, fmt.Errorf("line %q", line)
		}
		late = append(late, now.Sub(time.Unix(0, ns)))
	}
}

// TestStreamsThroughMesh: Server-Sent Events and a chunked stream go from
// an app through sidecar, gateway and edge (one edge in the app's region,
// HTTP/1.1 on every hop; one in another region, HTTP/2 to the gateway) to
// clients over HTTP/1.1 and HTTP/2: each event arrives within streamLate
// of being sent, one by one, not when the stream ends.
func TestStreamsThroughMesh(t *testing.T) {
	app := streamApp(t)
	m := newTestMesh(t)
	gwUS := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us"})
	m.start(Config{Role: RoleSidecar, Name: "stream-1", Region: "us", Service: "stream", Upstream: app,
		Join: []string{gwUS.Addrs()["gossip"]}})
	wan := []string{gwUS.Addrs()["wan-gossip"]}
	edge := func(name, region string) *Node {
		return m.start(Config{Role: RoleEdge, Name: name, Region: region, WANJoin: wan,
			PublicHTTPS: "127.0.0.1:0", DataDir: t.TempDir(), NoHTTP3: true, PublicHTTPAllow: []string{"stream.localhost"}})
	}
	edges := []*Node{edge("edge-us", "us"), edge("edge-eu", "eu")}
	for _, e := range edges {
		wantBody(t, e.Addrs()["public-http"], "stream.localhost", 404, "404 page not found") // the app answers
	}
	for _, e := range edges {
		root, err := tlsmgr.InternalRoot(e.Config.DataDir)
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(root)
		httpsAddr := e.Addrs()["public-https"]
		h2 := &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots},
			ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, httpsAddr)
			},
		}
		h1 := &http.Transport{}
		t.Cleanup(h1.CloseIdleConnections)
		t.Cleanup(h2.CloseIdleConnections)
		for _, c := range []struct {
			proto string
			major int
			tr    *http.Transport
			url   string
		}{
			{"HTTP/1.1", 1, h1, "http://" + e.Addrs()["public-http"]},
			{"HTTP/2", 2, h2, "https://stream.localhost"},
		} {
			for _, path := range []string{"/events", "/chunks"} {
				name := fmt.Sprintf("%s %s %s", e.Config.Name, c.proto, path)
				req, _ := http.NewRequest("GET", c.url+path, nil)
				req.Host = "stream.localhost"
				resp, err := c.tr.RoundTrip(req)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if resp.StatusCode != 200 || resp.ProtoMajor != c.major {
					resp.Body.Close()
					t.Fatalf("%s: %s %s", name, resp.Proto, resp.Status)
				}
				late, err := readStream(resp.Body)
				resp.Body.Close()
				if err != nil || len(late) != streamEvents {
					t.Fatalf("%s: %d of %d events, %v", name, len(late), streamEvents, err)
				}
				worst := time.Duration(0)
				for i, d := range late {
					if d > streamLate {
						t.Errorf("%s: event %d arrived %v after it was sent (want within %v): %v", name, i, d, streamLate, late)
					}
					worst = max(worst, d)
				}
				t.Logf("%s: %d events %v apart, each arrived at most %v after it was sent", name, streamEvents, streamGap, worst.Round(10*time.Microsecond))
			}
		}
	}
}

// TestStreamSurvivesShutdown: a client is reading an event stream through
// edge, gateway and sidecar when all three are told to shut down at once.
// Each drains: the stream runs to its end, every event on time, and each
// node's Shutdown returns only after it did, well within the grace.
func TestStreamSurvivesShutdown(t *testing.T) {
	const events = 12 // 1.1 s of stream
	app := streamApp(t)
	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-us", Region: "us"})
	sc := m.start(Config{Role: RoleSidecar, Name: "stream-1", Region: "us", Service: "stream", Upstream: app,
		Join: []string{gw.Addrs()["gossip"]}})
	edge := m.start(Config{Role: RoleEdge, Name: "edge-us", Region: "us", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	addr := edge.Addrs()["public-http"]
	wantBody(t, addr, "stream.localhost", 404, "404 page not found") // the app answers

	req, _ := http.NewRequest("GET", "http://"+addr+fmt.Sprintf("/events?n=%d", events), nil)
	req.Host = "stream.localhost"
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil { // the first event is on its way
		t.Fatal(err)
	}
	start := time.Now()
	type stopped struct {
		name string
		took time.Duration
		err  error
	}
	done := make(chan stopped, 3)
	for _, n := range []*Node{edge, gw, sc} {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err := n.Shutdown(ctx)
			done <- stopped{n.Config.Name, time.Since(start), err}
		}()
	}
	late, err := readStream(br)
	ended := time.Since(start)
	if err != nil || len(late) != events-1 {
		t.Fatalf("after the shutdowns began: %d of %d more events, %v", len(late), events-1, err)
	}
	for i, d := range late {
		if d > streamLate {
			t.Errorf("event %d arrived %v after it was sent: %v", i+1, d, late)
		}
	}
	for range 3 {
		s := <-done
		if s.err != nil {
			t.Errorf("%s: shutdown: %v", s.name, s.err)
		}
		if s.took < ended-50*time.Millisecond {
			t.Errorf("%s stopped %v after the shutdowns began, before the stream ended (%v)", s.name, s.took, ended)
		}
		t.Logf("%s stopped %v after the shutdowns began; the stream ended after %v", s.name, s.took.Round(time.Millisecond), ended.Round(time.Millisecond))
	}
}
