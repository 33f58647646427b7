package mesh

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestOverloadMesh overloads one service of a small mesh (edge → gateway
// → sidecar → app, default admission control) with a bounded burst far
// above what its app serves: the app handles 4 requests at a time, 20 ms
// each (200 a second), and gets 300 requests from 60 clients at once.
// Every request is answered, by the app or with a 503 that says it was
// refused and when to retry: no 502 or 504, nothing hangs. A second
// service behind the same gateway is called throughout and never refused:
// its requests count against their own limits, not the slow one's.
// Afterwards the slow service serves every request again.
func TestOverloadMesh(t *testing.T) {
	const (
		capacity = 4
		work     = 20 * time.Millisecond
		clients  = 60
		each     = 5
	)
	slots := make(chan struct{}, capacity)
	var inApp, peakApp atomic.Int64
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inApp.Add(1)
		defer inApp.Add(-1)
		for p := peakApp.Load(); n > p && !peakApp.CompareAndSwap(p, n); p = peakApp.Load() {
		}
		select {
		case slots <- struct{}{}:
		case <-r.Context().Done():
			return
		}
		time.Sleep(work)
		<-slots
		w.Header().Set("Cache-Control", "no-store")
		io.WriteString(w, "slow")
	}))
	defer slow.Close()

	m := newTestMesh(t)
	gw := m.start(Config{Role: RoleGateway, Name: "gw-eu", Region: "eu"})
	join := []string{gw.Addrs()["gossip"]}
	m.start(Config{Role: RoleSidecar, Name: "slow-1", Region: "eu", Service: "slow", Upstream: slow.Listener.Addr().String(), Join: join}, noHealthChecks)
	m.start(Config{Role: RoleSidecar, Name: "fast-1", Region: "eu", Service: "fast", Upstream: nameApp(t, "fast"), Join: join}, noHealthChecks)
	edge := m.start(Config{Role: RoleEdge, Name: "edge-1", Region: "eu", WANJoin: []string{gw.Addrs()["wan-gossip"]}})
	servedBy(t, edge, "slow.localhost", "slow")
	servedBy(t, edge, "fast.localhost", "fast")
	addr := edge.Addrs()["public-http"]

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	defer client.CloseIdleConnections()
	get := func(host string) (int, http.Header, error) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header, nil
	}

	// Connections to the gateway are shared by every service, and at most
	// four are dialled at once: warm them, so that what the burst meets
	// is the limits and not the handshakes of a cold start.
	var warm sync.WaitGroup
	for range 2 * capacity * 5 {
		warm.Add(1)
		go func() {
			defer warm.Done()
			get("fast.localhost")
		}()
	}
	warm.Wait()

	var (
		mu                sync.Mutex
		served, refused   int
		bad, fastBad      []string
		fastOK, fastCalls int
		wg                sync.WaitGroup
		done              = make(chan struct{})
	)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				code, h, err := get("slow.localhost")
				mu.Lock()
				switch {
				case err != nil:
					bad = append(bad, err.Error())
				case code == http.StatusOK:
					served++
				case code == http.StatusServiceUnavailable && h.Get("Retry-After") != "" &&
					strings.Contains(h.Get("Proxy-Status"), "error=connection_limit_reached"):
					refused++
				default:
					bad = append(bad, fmt.Sprintf("%d Proxy-Status %q", code, h.Get("Proxy-Status")))
				}
				mu.Unlock()
			}
		}()
	}
	fastDone := make(chan struct{})
	go func() {
		defer close(fastDone)
		for {
			select {
			case <-done:
				return
			default:
			}
			code, h, err := get("fast.localhost")
			mu.Lock()
			fastCalls++
			if err == nil && code == http.StatusOK {
				fastOK++
			} else {
				fastBad = append(fastBad, fmt.Sprintf("%d %v Proxy-Status %q", code, err, h.Get("Proxy-Status")))
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	wg.Wait()
	close(done)
	<-fastDone

	t.Logf("slow: %d served, %d refused; app peak %d at once; fast: %d/%d served", served, refused, peakApp.Load(), fastOK, fastCalls)
	if len(bad) > 0 {
		t.Errorf("%d answers neither served nor refused by admission control, e.g. %q", len(bad), bad[:min(3, len(bad))])
	}
	if served+refused+len(bad) != clients*each {
		t.Errorf("%d answers for %d requests", served+refused+len(bad), clients*each)
	}
	if served < capacity {
		t.Errorf("only %d served", served)
	}
	if refused == 0 {
		t.Error("no request refused: the burst never reached the limit")
	}
	if fastCalls == 0 || fastOK != fastCalls {
		t.Errorf("fast service: %d of %d served while slow was overloaded, e.g. %q", fastOK, fastCalls, fastBad[:min(3, len(fastBad))])
	}

	// Recovered: one client at a time is served again.
	poll(t, 10*time.Second, "slow serves again after the burst", func() error {
		for i := range 10 {
			code, h, err := get("slow.localhost")
			if err != nil {
				return err
			}
			if code != http.StatusOK {
				return fmt.Errorf("request %d after the burst: %d Proxy-Status %q", i, code, h.Get("Proxy-Status"))
			}
		}
		return nil
	})
}
