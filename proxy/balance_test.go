package proxy

import (
	"io"
	"math"
	"net/http"
	"testing"
	"time"
)

// TestInFlightAndEjection: the Handler counts requests in flight per
// upstream until their responses end, and ejects an upstream it could not
// reach EjectAfter times in a row until it is reached again.
func TestInFlightAndEjection(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	_, slow := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		w.Write([]byte("done"))
	}))
	addr := startProxy(t, &Handler{Route: fixedRoute(slow)})
	done := make(chan int, 1)
	go func() {
		code, _ := getStatus(http.DefaultClient, "http://"+addr+"/")
		done <- code
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("request never reached the upstream")
	}
	if n := slow.InFlight(); n != 1 {
		t.Fatalf("in flight during the request = %d, want 1", n)
	}
	close(release)
	if code := <-done; code != 200 {
		t.Fatalf("status %d", code)
	}
	deadline := time.Now().Add(5 * time.Second)
	for slow.InFlight() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := slow.InFlight(); n != 0 {
		t.Fatalf("in flight after the response = %d, want 0", n)
	}

	a := refusedAddr(t)
	dead := &Upstream{Key: a, Addr: a}
	_, good := plainUpstream(t, http.HandlerFunc(echoHandler))
	paddr := startProxy(t, &Handler{Route: fixedRoute(dead, good)})
	for i := 1; i <= EjectAfter; i++ {
		if dead.Ejected(time.Now()) {
			t.Fatalf("ejected after %d failures, want %d", i-1, EjectAfter)
		}
		if code, err := getStatus(http.DefaultClient, "http://"+paddr+"/"); err != nil || code != 200 {
			t.Fatalf("request %d: %d %v (the good upstream should answer)", i, code, err)
		}
	}
	if !dead.Ejected(time.Now()) {
		t.Fatalf("not ejected after %d refused connections", EjectAfter)
	}
	if dead.Ejected(time.Now().Add(EjectFor + time.Second)) {
		t.Fatal("still ejected after EjectFor")
	}
	if dead.InFlight() != 0 || good.InFlight() != 0 {
		t.Fatalf("in flight left over: dead %d, good %d", dead.InFlight(), good.InFlight())
	}
	good.reached(false)
	good.reached(true)
	if good.failStreak.Load() != 0 {
		t.Fatal("a success did not end the failure streak")
	}
}

// TestPeakEWMA: a slower sample replaces the estimate at once; faster
// ones pull it down with weight growing with the time since the last
// sample (1/e left after LatencyDecay).
func TestPeakEWMA(t *testing.T) {
	u := &Upstream{}
	t0 := time.Unix(1000, 0)
	if u.Latency() != 0 || u.Cost() != 0 {
		t.Fatalf("unmeasured: latency %v cost %d, want 0", u.Latency(), u.Cost())
	}
	u.inflight.Store(1)
	if u.Cost() != int64(time.Second) {
		t.Fatalf("unmeasured with a request in flight: cost %d, want a second's worth", u.Cost())
	}
	u.inflight.Store(0)
	u.observe(10*time.Millisecond, t0)
	if u.Latency() != 10*time.Millisecond {
		t.Fatalf("first sample: %v", u.Latency())
	}
	u.observe(50*time.Millisecond, t0.Add(time.Millisecond))
	if u.Latency() != 50*time.Millisecond {
		t.Fatalf("peak: %v, want 50ms at once", u.Latency())
	}
	// A fast sample right after the peak barely moves it...
	u.observe(time.Millisecond, t0.Add(2*time.Millisecond))
	if l := u.Latency(); l < 49*time.Millisecond {
		t.Fatalf("1 ms after the peak: %v, want still near 50ms", l)
	}
	// ...one LatencyDecay later it is mostly forgotten: 1/e of the gap left.
	before := u.Latency()
	u.observe(time.Millisecond, t0.Add(2*time.Millisecond+LatencyDecay))
	want := time.Millisecond + time.Duration(float64(before-time.Millisecond)/math.E)
	if l := u.Latency(); l < want-time.Millisecond || l > want+time.Millisecond {
		t.Fatalf("after LatencyDecay: %v, want about %v", l, want)
	}
	u.inflight.Store(3)
	at := t0.Add(2*time.Millisecond + LatencyDecay)
	if c := u.CostAt(at); c != int64(u.Latency())*4 {
		t.Fatalf("cost %d, want latency × (in flight + 1) = %d", c, int64(u.Latency())*4)
	}
	// An estimate nobody updates decays toward zero: 1/e per LatencyDecay.
	if c, want := u.CostAt(at.Add(LatencyDecay)), float64(u.Latency())*4/math.E; math.Abs(float64(c)-want) > want/100 {
		t.Fatalf("cost after LatencyDecay without samples %d, want about %.0f", c, want)
	}
}

// p2c is the choice the catalog's balancer makes between two candidates
// at now, including the pass-over it reports.
func p2c(a, b *Upstream, now time.Time) *Upstream {
	if b.CostAt(now) < a.CostAt(now) {
		a, b = b, a
	}
	b.PassedOver(now)
	return a
}

// TestPeakDoesNotStarve: one slow answer (a peak) must not keep an upstream
// from being measured again while another one answers fast, neither when
// requests are sparse (time decay) nor when they are dense (pass-over
// aging); an upstream that is consistently slower still gets nothing.
// The clock is injected: every step is a request at a chosen time.
func TestPeakDoesNotStarve(t *testing.T) {
	t0 := time.Unix(1000, 0)
	run := func(a, b *Upstream, start time.Time, step time.Duration, n int, latency func(*Upstream) time.Duration, pass bool) (first, hitsA int) {
		now := start
		first = -1
		for i := 0; i < n; i++ {
			w := a
			if pass {
				w = p2c(a, b, now)
			} else if b.CostAt(now) < a.CostAt(now) {
				w = b
			}
			if w == a {
				hitsA++
				if first < 0 {
					first = i
				}
			}
			w.observe(latency(w), now.Add(latency(w)))
			now = now.Add(step)
		}
		return first, hitsA
	}
	peaked := func() (a, b *Upstream) {
		a, b = &Upstream{Name: "a"}, &Upstream{Name: "b"}
		a.observe(time.Second, t0) // its first answer paid for a slow connection
		b.observe(time.Millisecond, t0)
		return a, b
	}
	ms := func(*Upstream) time.Duration { return time.Millisecond }

	// Sparse: one request a second, nothing but time at work. a's
	// second is forgotten when e^(-t/LatencyDecay) < 1/1000: ~69 s.
	a, b := peaked()
	if first, _ := run(a, b, t0.Add(time.Second), time.Second, 120, ms, false); first < 0 || first > 80 {
		t.Fatalf("sparse requests: the peaked upstream was measured again at request %d, want within 80 s", first)
	}
	// Dense: a request every 2 ms; pass-overs age a's estimate.
	a, b = peaked()
	first, _ := run(a, b, t0.Add(time.Millisecond), 2*time.Millisecond, 40, ms, true)
	if first < 0 || first > 20 {
		t.Fatalf("dense requests: the peaked upstream was measured again at request %d, want within 20", first)
	}
	// Once measured again, equal upstreams share the requests.
	if _, hits := run(a, b, t0.Add(time.Second), 2*time.Millisecond, 100, ms, true); hits < 20 || hits > 80 {
		t.Fatalf("equal upstreams after the peak: a got %d of 100", hits)
	}

	// Consistently slower: a answered in 10 ms, several times, so its
	// floor is 10 ms; aging stops there, above b's 1 ms.
	a, b = &Upstream{Name: "a"}, &Upstream{Name: "b"}
	for i := 0; i < 5; i++ {
		a.observe(10*time.Millisecond, t0)
		b.observe(time.Millisecond, t0)
	}
	slow := func(u *Upstream) time.Duration {
		if u == a {
			return 10 * time.Millisecond
		}
		return time.Millisecond
	}
	if _, hits := run(a, b, t0.Add(time.Millisecond), 2*time.Millisecond, 200, slow, true); hits != 0 {
		t.Fatalf("a 10× slower upstream got %d of 200 dense requests, want 0", hits)
	}
}

// TestHandlerMeasuresLatency: the forwarding Handler feeds each upstream's
// estimate with its time to a response header.
func TestHandlerMeasuresLatency(t *testing.T) {
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		io.WriteString(w, "slow")
	}))
	addr := startProxy(t, &Handler{Route: fixedRoute(up)})
	if resp, _ := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if l := up.Latency(); l < 20*time.Millisecond || l > 5*time.Second {
		t.Fatalf("latency estimate %v after a 20 ms answer", l)
	}
}

// TestEjectionsTotal: each run of EjectAfter failures to reach an
// upstream is one ejection, however long the run.
func TestEjectionsTotal(t *testing.T) {
	u := &Upstream{Key: "k", Addr: "127.0.0.1:1"}
	for range 2 * EjectAfter {
		u.reached(false)
	}
	if got := u.EjectionsTotal(); got != 1 {
		t.Fatalf("after one long run of failures: %d ejections, want 1", got)
	}
	u.reached(true)
	for range EjectAfter {
		u.reached(false)
	}
	if got := u.EjectionsTotal(); got != 2 {
		t.Fatalf("after a success and another run: %d ejections, want 2", got)
	}
}
