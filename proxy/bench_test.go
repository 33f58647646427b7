//go:build unix

package proxy

import (
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// benchClients is the number of concurrent clients in the proxy benchmarks.
const benchClients = 50

var benchBody = make([]byte, 1024)

func benchUpstreamHandler(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Length", "1024")
	_, _ = w.Write(benchBody)
}

// runClients sends GETs to url from benchClients goroutines for b.N requests.
func runClients(b *testing.B, url string) {
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: benchClients * 2,
		DisableCompression:  true,
	}}
	b.Cleanup(client.CloseIdleConnections)
	// Open the connections (client and upstream, TLS handshakes included)
	// before the clock starts, so the benchmark measures steady state.
	var wg sync.WaitGroup
	for range benchClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				if resp, err := client.Get(url); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	b.SetParallelism((benchClients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	defer func() {
		// CPU time of the whole process (clients, proxy and upstream)
		// per request: unlike ns/op it barely moves when other
		// processes load the machine.
		b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	}()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || n != 1024 {
				b.Errorf("status %d, %d bytes", resp.StatusCode, n)
				return
			}
		}
	})
}

// benchProxy forwards to up through a plain Server + Handler.
func benchProxy(b *testing.B, up *Upstream, pool *Pool) {
	// Info level: no per-request record, as in production.
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := &Handler{Route: fixedRoute(up), Pool: pool, Via: "bench", Logger: logger}
	addr := startProxy(b, h)
	runClients(b, "http://"+addr+"/")
}

// BenchmarkDirectH1 is the baseline: clients talk to the upstream directly.
func BenchmarkDirectH1(b *testing.B) {
	srv, _ := plainUpstream(b, http.HandlerFunc(benchUpstreamHandler))
	runClients(b, srv.URL+"/")
}

// BenchmarkProxyH1: plain HTTP/1.1 client → proxy → plain HTTP/1.1 upstream.
func BenchmarkProxyH1(b *testing.B) {
	_, up := plainUpstream(b, http.HandlerFunc(benchUpstreamHandler))
	benchProxy(b, up, &Pool{})
}

// BenchmarkProxyTLSH1: upstream leg over TLS with a pool of HTTP/1.1
// connections (Pool.HTTP2 false).
func BenchmarkProxyTLSH1(b *testing.B) {
	_, up, _ := tlsUpstream(b, http.HandlerFunc(benchUpstreamHandler))
	benchProxy(b, up, &Pool{HTTP2: false})
}

// BenchmarkProxyTLSH2: upstream leg over TLS multiplexed on HTTP/2
// (Pool.HTTP2 true).
func BenchmarkProxyTLSH2(b *testing.B) {
	_, up, _ := tlsUpstream(b, http.HandlerFunc(benchUpstreamHandler))
	benchProxy(b, up, &Pool{HTTP2: true})
}

// cpuTime returns the user and system CPU time used by this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkProxyH1Public is BenchmarkProxyH1 behind a public listener
// (Server.Public and Handler.Public): the per-IP limit, Host and target
// checks and forwarding fields, on a GET without a body.
func BenchmarkProxyH1Public(b *testing.B) {
	_, up := plainUpstream(b, http.HandlerFunc(benchUpstreamHandler))
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := &Handler{Route: fixedRoute(up), Pool: &Pool{}, Via: "bench", Public: true, Logger: logger}
	b.Cleanup(h.Pool.CloseIdle)
	s := startWith(b, &Server{Handler: h, Public: true, Logger: logger})
	runClients(b, "http://"+s.BoundAddr()+"/")
}

// BenchmarkProxyH1Policy is BenchmarkProxyH1 with a CallPolicy that
// retries (attempts, 503, a budget, back-off) but sets no timeout: on the
// success path it should cost what no policy costs (compare allocs/op).
func BenchmarkProxyH1Policy(b *testing.B) {
	_, up := plainUpstream(b, http.HandlerFunc(benchUpstreamHandler))
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	p := &CallPolicy{Attempts: 3, RetryOn: DefaultRetryOn | Retry503, Budget: NewRetryBudget(0.2, 10),
		BackoffBase: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond}
	h := &Handler{Route: fixedRoute(up), Pool: &Pool{}, Via: "bench", Logger: logger,
		Policy: func(*http.Request) *CallPolicy { return p }}
	addr := startProxy(b, h)
	runClients(b, "http://"+addr+"/")
}
