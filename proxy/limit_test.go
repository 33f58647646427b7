package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// fakeClock is the limiter's clock in tests: it moves only when told.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// limitSim drives a limiter with synthetic traffic: it keeps up to conc
// requests in flight (as many as the limit admits) and completes the
// oldest, with latency rtt, every step, replacing it at once, so that
// requests are admitted with the load they meet, as under steady traffic.
type limitSim struct {
	l    *limiter
	clk  *fakeClock
	held []int64 // what acquire returned, oldest first
	// Seen over the whole run.
	lowest, highest int64
}

func newLimitSim() *limitSim {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	return &limitSim{l: newLimiter(0, time.Second, 0, clk.now, nil), clk: clk,
		lowest: limitInitial, highest: limitInitial}
}

// run completes 20 requests per sampling window for windows windows, each
// with latency rtt whatever the number in flight: latency this node's
// concurrency does not cause.
func (s *limitSim) run(conc int, rtt time.Duration, windows int) {
	s.runWith(conc, func(int) time.Duration { return rtt }, windows)
}

// runQueue is run against an upstream that serves capacity requests at
// once in service each and queues the rest: latency grows with the
// requests in flight.
func (s *limitSim) runQueue(conc, capacity int, service time.Duration, windows int) {
	s.runWith(conc, func(inflight int) time.Duration {
		return service * time.Duration(max(inflight, capacity)) / time.Duration(capacity)
	}, windows)
}

func (s *limitSim) runWith(conc int, latency func(inflight int) time.Duration, windows int) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel() // acquire never waits: a full limiter refuses at once
	const steps = 20
	for range windows * steps {
		for len(s.held) < conc {
			n, err := s.l.acquire(canceled)
			if err != nil {
				break
			}
			s.held = append(s.held, n)
		}
		win := max(limitWindow, 2*time.Duration(s.l.baseline.Load()))
		s.clk.t = s.clk.t.Add(win / steps)
		if len(s.held) > 0 {
			n := s.held[0]
			rtt := latency(len(s.held))
			s.held = s.held[1:]
			s.l.release(n, rtt, true)
		}
		lim := s.l.limit.Load()
		s.lowest, s.highest = min(s.lowest, lim), max(s.highest, lim)
	}
}

func (s *limitSim) limit() int64 { return s.l.limit.Load() }

func TestAdaptiveLimit(t *testing.T) {
	// An upstream slow enough that limitSlack is a small part of its
	// latency; TestLimitSlack covers fast ones.
	const base = 100 * time.Millisecond
	const saturate = 5000 // more requests than any limit admits
	tests := []struct {
		name string
		run  func(t *testing.T, s *limitSim)
	}{
		{"grows while latency stays at the baseline", func(t *testing.T, s *limitSim) {
			s.run(2, base, 3) // learn the baseline at low concurrency
			before := s.limit()
			s.run(saturate, base, 5)
			if s.limit() <= before {
				t.Errorf("limit %d after 5 windows at the baseline under load, was %d", s.limit(), before)
			}
		}},
		{"does not grow while the node uses less than half of it", func(t *testing.T, s *limitSim) {
			s.run(2, base, 3)
			s.run(limitInitial/2-1, base, 20)
			if s.limit() != limitInitial {
				t.Errorf("limit %d, want it to stay at %d: the limit was not what held requests back", s.limit(), limitInitial)
			}
		}},
		{"does not shrink while the node uses less than half of it", func(t *testing.T, s *limitSim) {
			s.run(2, base, 3)
			// Twenty times slower at three in flight, as on a machine
			// whose cores are taken by others: cutting the limit would
			// shorten nothing, and the next burst would be refused.
			s.run(3, 20*base, 30)
			if s.limit() != limitInitial {
				t.Errorf("limit %d, want it to stay at %d: the limit was not what held requests back", s.limit(), limitInitial)
			}
		}},
		{"shrinks to what a queueing upstream serves", func(t *testing.T, s *limitSim) {
			s.run(2, base, 3)
			s.run(saturate, base, 10)
			before := s.limit()
			// 8 at a time, the rest queued: latency grows with what
			// is in flight. Cutting shortens it, so the cuts go on.
			s.runQueue(saturate, 8, base, 100)
			s.lowest, s.highest = s.limit(), s.limit()
			s.runQueue(saturate, 8, base, 100)
			if s.highest >= before {
				t.Errorf("limit up to %d against a queueing upstream, was %d", s.highest, before)
			}
			// Latency 1.3 baselines at about 10 in flight, where
			// limit×gradient + √limit balances.
			if s.highest > 20 || s.lowest < 8 {
				t.Errorf("limit between %d and %d, want it near the upstream's capacity of 8", s.lowest, s.highest)
			}
		}},
		{"cuts that do not shorten latency lift the baseline", func(t *testing.T, s *limitSim) {
			s.run(2, base, 3)
			s.run(saturate, base, 10)
			before := s.limit()
			// Twice as slow whatever the concurrency, as on a CPU
			// taken by other processes: after the cuts halve what is
			// in flight without effect, the limit grows again.
			s.run(saturate, 2*base, 3)
			if s.limit() >= before {
				t.Errorf("limit %d right after latency doubled, was %d: want a cut first", s.limit(), before)
			}
			s.run(saturate, 2*base, 40)
			if s.limit() < before {
				t.Errorf("limit %d after 40 windows at a latency it does not cause, was %d", s.limit(), before)
			}
			// And back to normal: the lift fades.
			s.run(saturate, base, 20)
			if lift := time.Duration(s.l.lift); lift != 0 {
				t.Errorf("lift %v after 20 windows back at the baseline", lift)
			}
		}},
		{"halves at most per window", func(t *testing.T, s *limitSim) {
			s.run(2, base, 3)
			s.run(saturate, base, 40)
			before := s.limit()
			s.run(saturate, 50*base, 1)
			if s.limit() < before/2 {
				t.Errorf("limit fell from %d to %d in one window", before, s.limit())
			}
		}},
		{"stays within its bounds", func(t *testing.T, s *limitSim) {
			s.run(2, base, 3)
			s.run(saturate, base, 200)
			if s.limit() != limitMax {
				t.Errorf("limit %d after 200 windows at the baseline, want the maximum %d", s.limit(), limitMax)
			}
			s.run(saturate, 100*base, 30)
			if s.lowest < limitMin || s.highest > limitMax {
				t.Errorf("limit went from %d to %d, outside [%d, %d]", s.lowest, s.highest, limitMin, limitMax)
			}
		}},
		{"recovers when latency returns to the baseline", func(t *testing.T, s *limitSim) {
			s.run(2, base, 3)
			s.run(saturate, 3*base, 20)
			low := s.limit()
			s.run(saturate, base, 10)
			if s.limit() <= low+5 {
				t.Errorf("limit %d after 10 windows back at the baseline, was %d", s.limit(), low)
			}
		}},
		{"baseline does not creep up with the queue", func(t *testing.T, s *limitSim) {
			s.run(2, base, 3)
			// The two requests in flight when the load ramps up meet
			// the queue too: they are not calm once a fifth is sent.
			s.runQueue(saturate, 8, base, 100)
			if b := time.Duration(s.l.baseline.Load()); b != base || s.l.lift != 0 {
				t.Errorf("baseline %v lifted by %v after 100 windows of queueing, want %v", b, time.Duration(s.l.lift), base)
			}
		}},
		{"learns an upstream that became slower", func(t *testing.T, s *limitSim) {
			s.run(2, base, 3)
			// Four times slower for good: cuts that do not shorten
			// latency lift the baseline (and at the minimum, requests
			// are calm again and the baseline follows), and the limit
			// opens again.
			s.run(saturate, 4*base, 200)
			if b := time.Duration(s.l.baseline.Load() + s.l.lift); b < 2*base {
				t.Errorf("baseline %v, want it to have followed the upstream to about %v", b, 4*base)
			}
			if s.limit() <= limitMin {
				t.Errorf("limit %d: stuck at the minimum after the baseline moved", s.limit())
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newLimitSim()) })
	}
}

func TestLimitSlack(t *testing.T) {
	// A hop answering in 0.5 ms on an idle machine, 5 ms while the CPU is
	// shared: the wait for a core is not a queue at the upstream, and the
	// limit keeps growing. Latency well past the slack still shrinks it.
	const base = 500 * time.Microsecond
	tests := []struct {
		rtt    time.Duration
		shrink bool
	}{
		{base, false},
		{5 * time.Millisecond, false},
		{base*5/4 + limitSlack, false}, // limitTolerance × base + limitSlack
		{20 * time.Millisecond, true},
		{200 * time.Millisecond, true},
	}
	for _, tt := range tests {
		s := newLimitSim()
		s.run(2, base, 3)
		s.run(5000, base, 5)
		before := s.limit()
		s.run(5000, tt.rtt, 2)
		if shrunk := s.limit() < before; shrunk != tt.shrink {
			t.Errorf("latency %v after a baseline of %v: limit %d, was %d; want shrunk %v", tt.rtt, base, s.limit(), before, tt.shrink)
		}
	}
}

func TestLimitSampleCap(t *testing.T) {
	// One request stuck for a minute among ordinary ones must not halve
	// the limit by itself.
	s := newLimitSim()
	s.run(2, 10*time.Millisecond, 3)
	s.run(5000, 10*time.Millisecond, 10)
	before := s.limit()
	s.l.release(s.held[0], time.Minute, true)
	s.held = s.held[1:]
	s.run(5000, 10*time.Millisecond, 1)
	// Uncapped, the minute would make the window's mean seconds and halve
	// the limit; capped at ten baselines it costs a few percent.
	if s.limit() < before*9/10 {
		t.Errorf("one slow request took the limit from %d to %d", before, s.limit())
	}
}

func TestFixedLimit(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	l := newLimiter(3, time.Second, 0, clk.now, nil)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	var held []int64
	for range 3 {
		n, err := l.acquire(canceled)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, n)
	}
	if _, err := l.acquire(canceled); !errors.Is(err, context.Canceled) {
		t.Fatalf("fourth request under a fixed limit of 3: %v, want it queued (and so canceled)", err)
	}
	for range 50 {
		clk.t = clk.t.Add(20 * time.Millisecond)
		l.release(held[0], time.Second, true)
		held[0], _ = l.acquire(canceled)
	}
	if got := l.limit.Load(); got != 3 {
		t.Errorf("fixed limit moved to %d", got)
	}
	if newLimiter(-1, time.Second, 0, nil, nil) != nil {
		t.Error("a negative mode must turn the limiter off")
	}
	var off *limiter
	if _, err := off.acquire(canceled); err != nil {
		t.Errorf("no limiter refused: %v", err)
	}
	off.release(0, time.Second, true)
}

// TestLimiterQueue covers the queue in front of a full limit: a waiter
// gets the next free slot in arrival order, is refused after the queue
// timeout, is refused at once when the queue is full, and leaves the queue
// without a slot when its client goes away.
func TestLimiterQueue(t *testing.T) {
	t.Run("slots go to waiters in arrival order", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := newLimiter(1, time.Second, 0, nil, nil)
			n, _ := l.acquire(context.Background())
			var order []int
			var mu sync.Mutex
			var wg sync.WaitGroup
			for i := range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					m, err := l.acquire(context.Background())
					if err != nil {
						t.Errorf("waiter %d: %v", i, err)
						return
					}
					mu.Lock()
					order = append(order, i)
					mu.Unlock()
					l.release(m, 0, false)
				}()
				synctest.Wait() // queued before the next one arrives
			}
			l.release(n, 0, false)
			wg.Wait()
			if len(order) != 3 || order[0] != 0 || order[1] != 1 || order[2] != 2 {
				t.Errorf("slots went to waiters in order %v", order)
			}
			if l.inflight.Load() != 0 || l.waiting.Load() != 0 {
				t.Errorf("inflight %d, waiting %d after all released", l.inflight.Load(), l.waiting.Load())
			}
		})
	})
	t.Run("refused after the queue timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var total atomic.Int64
			l := newLimiter(1, 100*time.Millisecond, 0, nil, &total)
			l.acquire(context.Background())
			start := time.Now()
			_, err := l.acquire(context.Background())
			if !errors.Is(err, errQueueTimeout) || !isOverloaded(err) {
				t.Fatalf("err %v, want the queue timeout", err)
			}
			if waited := time.Since(start); waited != 100*time.Millisecond {
				t.Errorf("waited %v, want the queue timeout of 100ms", waited)
			}
			if l.rejected.Load() != 1 || total.Load() != 1 || l.queued != 0 {
				t.Errorf("rejected %d, pool total %d, queued %d", l.rejected.Load(), total.Load(), l.queued)
			}
		})
	})
	t.Run("refused at once when the queue is full", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := newLimiter(1, time.Hour, 2, nil, nil)
			n, _ := l.acquire(context.Background())
			for range 2 {
				go func() {
					if m, err := l.acquire(context.Background()); err == nil {
						l.release(m, 0, false)
					}
				}()
			}
			synctest.Wait()
			start := time.Now()
			_, err := l.acquire(context.Background())
			if !errors.Is(err, errQueueFull) {
				t.Fatalf("err %v, want the queue full", err)
			}
			if time.Since(start) != 0 {
				t.Errorf("a refusal with the queue full waited %v", time.Since(start))
			}
			l.release(n, 0, false)
		})
	})
	t.Run("a waiter whose client went away leaves without a slot", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := newLimiter(1, time.Hour, 0, nil, nil)
			n, _ := l.acquire(context.Background())
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error)
			go func() {
				_, err := l.acquire(ctx)
				done <- err
			}()
			synctest.Wait()
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("err %v, want the client's cancellation", err)
			}
			if l.queued != 0 || l.waiting.Load() != 0 || l.rejected.Load() != 0 {
				t.Errorf("queued %d, waiting %d, rejected %d after the client left", l.queued, l.waiting.Load(), l.rejected.Load())
			}
			l.release(n, 0, false)
			if _, err := l.acquire(context.Background()); err != nil {
				t.Errorf("after release: %v", err)
			}
		})
	})
	t.Run("a standing queue waits a twentieth of the timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := newLimiter(1, 100*time.Millisecond, 0, nil, nil)
			n, _ := l.acquire(context.Background())
			waited := func() time.Duration {
				start := time.Now()
				if _, err := l.acquire(context.Background()); !errors.Is(err, errQueueTimeout) {
					t.Fatalf("err %v, want a queue timeout", err)
				}
				return time.Since(start)
			}
			if d := waited(); d != 100*time.Millisecond {
				t.Errorf("first waiter waited %v, want the whole timeout", d)
			}
			// It was refused: the queue stands, the next waits 5 ms.
			if d := waited(); d != 5*time.Millisecond {
				t.Errorf("waiter after a refusal waited %v, want 5ms", d)
			}
			time.Sleep(100 * time.Millisecond) // no refusal for a whole timeout
			if d := waited(); d != 100*time.Millisecond {
				t.Errorf("waiter after a calm timeout waited %v, want the whole timeout again", d)
			}
			l.release(n, 0, false)
		})
	})
	t.Run("a queue that does not empty for a whole timeout stands", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := newLimiter(1, 100*time.Millisecond, 0, nil, nil)
			n, _ := l.acquire(context.Background())
			var wg sync.WaitGroup
			defer wg.Wait()
			queue := func() { // a waiter that is served or refused later
				wg.Add(1)
				go func() {
					defer wg.Done()
					if m, err := l.acquire(context.Background()); err == nil {
						time.Sleep(time.Second)
						l.release(m, 0, false)
					}
				}()
				synctest.Wait()
			}
			queue()                           // 0 ms: A waits
			time.Sleep(50 * time.Millisecond) // 50 ms: B waits
			queue()
			time.Sleep(10 * time.Millisecond) // 60 ms: A gets the slot, B still waits
			l.release(n, 0, false)
			synctest.Wait()
			time.Sleep(50 * time.Millisecond) // 110 ms: the queue was never empty
			start := time.Now()
			if _, err := l.acquire(context.Background()); !errors.Is(err, errQueueTimeout) {
				t.Fatalf("err %v, want a queue timeout", err)
			}
			if d := time.Since(start); d != 5*time.Millisecond {
				t.Errorf("waiter at a queue busy for 110 ms waited %v, want 5ms", d)
			}
		})
	})
	t.Run("queue bound follows the upstream's pace", func(t *testing.T) {
		l := newLimiter(10, 100*time.Millisecond, 0, nil, nil)
		if got := l.queueBound(100 * time.Millisecond); got != limitMax {
			t.Errorf("bound %d before any latency is known, want %d", got, limitMax)
		}
		l.rtt.Store(int64(20 * time.Millisecond))
		if got := l.queueBound(100 * time.Millisecond); got != 50 { // 10 × 100ms / 20ms
			t.Errorf("bound %d for 10 slots of 20ms and 100ms to wait, want 50", got)
		}
		l.rtt.Store(int64(time.Second))
		if got := l.queueBound(100 * time.Millisecond); got != 10 {
			t.Errorf("bound %d for a slow upstream, want at least the limit, 10", got)
		}
	})
}

// heldUpstream answers every request after release is closed, and counts
// the requests that reached it.
func heldUpstream(t testing.TB) (*Upstream, *atomic.Int64, chan struct{}) {
	t.Helper()
	var got atomic.Int64
	release := make(chan struct{})
	_, up := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "ok")
	}))
	return up, &got, release
}

func TestHandlerRefusesOverLimit(t *testing.T) {
	up, got, release := heldUpstream(t)
	pool := &Pool{ConcurrencyLimit: 1, QueueTimeout: time.Millisecond}
	// SignalRetry: a refusal by admission control is final, never a retry
	// signal that would send the overload on to another instance.
	addr := startProxy(t, &Handler{Route: fixedRoute(up), Pool: pool, Via: "meshd-gw", SignalRetry: true})
	first := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/first")
		if err == nil {
			resp.Body.Close()
		}
		first <- err
	}()
	waitFor(t, "the first request upstream", 5*time.Second, func() bool { return got.Load() == 1 })

	resp, body := rawExchange(t, addr, "GET /second HTTP/1.1\r\nHost: web\r\n\r\n")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", resp.StatusCode)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After %q, want 1", ra)
	}
	if rs := resp.Header.Get(HeaderRetry); rs != "" {
		t.Errorf("%s %q on a refusal by admission control", HeaderRetry, rs)
	}
	if ps := resp.Header.Get("Proxy-Status"); !strings.HasPrefix(ps, "meshd-gw; error=connection_limit_reached; next-hop=") {
		t.Errorf("Proxy-Status %q", ps)
	}
	if !strings.Contains(body, "concurrency limit") {
		t.Errorf("body %q", body)
	}
	if n := got.Load(); n != 1 {
		t.Errorf("the upstream saw %d requests, want only the first", n)
	}
	if pool.Rejected() != 1 {
		t.Errorf("pool counted %d refusals", pool.Rejected())
	}
	if ls := pool.Limits(); len(ls) != 1 || ls[0].Limit != 1 || ls[0].InFlight != 1 || ls[0].Rejected != 1 {
		t.Errorf("limits %+v", ls)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	resp, _ = rawExchange(t, addr, "GET /third HTTP/1.1\r\nHost: web\r\n\r\n")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("after the first answered: status %d", resp.StatusCode)
	}
}

func TestHandlerQueuedClientGone(t *testing.T) {
	up, got, release := heldUpstream(t)
	pool := &Pool{ConcurrencyLimit: 1, QueueTimeout: time.Hour}
	h := &Handler{Route: fixedRoute(up), Pool: pool, Via: "meshd-gw"}
	addr := startProxy(t, h)
	go func() {
		if resp, err := http.Get("http://" + addr + "/first"); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, "the first request upstream", 5*time.Second, func() bool { return got.Load() == 1 })

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/queued", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	waitFor(t, "the second request queued", 5*time.Second, func() bool {
		ls := pool.Limits()
		return len(ls) == 1 && ls[0].Queued == 1
	})
	cancel()
	if err := <-done; err == nil {
		t.Fatal("the canceled request got an answer")
	}
	waitFor(t, "the handler to see the client gone", 5*time.Second, func() bool { return h.Stats().ClientGone == 1 })
	close(release)
	resp, _ := rawExchange(t, addr, "GET /third HTTP/1.1\r\nHost: web\r\n\r\n")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d after the queue emptied", resp.StatusCode)
	}
	if n := got.Load(); n != 2 {
		t.Errorf("the upstream saw %d requests, want 2: the queued request of a client that left was sent", n)
	}
	if pool.Rejected() != 0 {
		t.Errorf("a client that left was counted as refused")
	}
}

// gatedTLSUpstream is a TLS upstream whose handshakes wait: the first four
// until first is closed, later ones until later is closed. accepted counts
// its TCP connections.
func gatedTLSUpstream(t *testing.T, h2 bool) (up *Upstream, accepted, handshakes *atomic.Int64, first, later chan struct{}) {
	t.Helper()
	accepted, handshakes = new(atomic.Int64), new(atomic.Int64)
	first, later = make(chan struct{}), make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	srv.EnableHTTP2 = h2
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			accepted.Add(1)
		}
	}
	srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		if handshakes.Add(1) <= 4 {
			<-first
		} else {
			<-later
		}
		return nil, nil
	}}
	srv.StartTLS()
	t.Cleanup(func() {
		select {
		case <-later:
		default:
			close(later)
		}
		srv.Close()
	})
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	addr := srv.Listener.Addr().String()
	return &Upstream{Key: addr, Addr: addr, TLS: &tls.Config{RootCAs: roots}}, accepted, handshakes, first, later
}

// TestDialBurst sends a burst of 50 requests to an upstream without
// connections. At most MaxDialsPerUpstream (4) handshakes run at once and
// the other requests take the connections those bring, so the upstream
// accepts at most 8 connections (4 that served the burst and at most 4 held
// in their handshake) instead of one per request.
func TestDialBurst(t *testing.T) {
	for _, tt := range []struct {
		name string
		h2   bool
		// stuck: requests that may wait for their own held handshake
		// (an HTTP/1.1 request dials for itself; an HTTP/2 dial is shared).
		stuck int64
	}{
		{"HTTP/1.1", false, 4},
		{"HTTP/2", true, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			up, accepted, handshakes, first, later := gatedTLSUpstream(t, tt.h2)
			pool := &Pool{HTTP2: tt.h2, ConcurrencyLimit: -1, QueueTimeout: time.Minute}
			t.Cleanup(pool.CloseIdle)
			const burst = 50
			var done, failed atomic.Int64
			var wg sync.WaitGroup
			for range burst {
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer done.Add(1)
					req, _ := http.NewRequest("GET", "/", nil)
					resp, err := pool.RoundTrip(up, req)
					if err != nil {
						failed.Add(1)
						t.Errorf("request: %v", err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}()
			}
			waitFor(t, "the first handshakes", 10*time.Second, func() bool { return handshakes.Load() >= 4 })
			close(first)
			deadline := time.Now().Add(20 * time.Second)
			for done.Load() < burst-tt.stuck && accepted.Load() <= 8 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			n := accepted.Load()
			close(later)
			wg.Wait()
			// Go's transport lets a dial run on after another connection
			// served its request; those must have found nothing to do.
			uc, _ := pool.transports.Load(up.Key)
			waitFor(t, "the transport's dials to end", 20*time.Second, func() bool {
				return uc.(*upstreamConns).pendingDials.Load() == 0
			})
			n = max(n, accepted.Load())
			if n > 8 {
				t.Errorf("the upstream accepted %d connections for a burst of %d requests, want at most 8", n, burst)
			}
			if failed.Load() != 0 {
				t.Errorf("%d requests failed", failed.Load())
			}
		})
	}
}

// TestDialQueueTimeout: a request that finds every dial slot held by a
// hanging handshake and no idle connection is refused after the queue
// timeout, as overload, and counted.
func TestDialQueueTimeout(t *testing.T) {
	up, _, handshakes, first, _ := gatedTLSUpstream(t, false)
	defer close(first)
	pool := &Pool{ConcurrencyLimit: -1, MaxDialsPerUpstream: 1, QueueTimeout: 10 * time.Millisecond, DialTimeout: time.Minute}
	t.Cleanup(pool.CloseIdle)
	go func() {
		req, _ := http.NewRequest("GET", "/", nil)
		if resp, err := pool.RoundTrip(up, req); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, "the first handshake", 10*time.Second, func() bool { return handshakes.Load() == 1 })
	req, _ := http.NewRequest("GET", "/", nil)
	_, err := pool.RoundTrip(up, req)
	if !isOverloaded(err) {
		t.Fatalf("err %v, want a refusal for want of a connection", err)
	}
	if code, _ := classify(context.Background(), err); code != http.StatusServiceUnavailable {
		t.Errorf("status %d", code)
	}
	if handshakes.Load() != 1 || pool.Rejected() != 1 {
		t.Errorf("handshakes %d, refused %d", handshakes.Load(), pool.Rejected())
	}
}

func TestPoolValidateLimits(t *testing.T) {
	for _, p := range []*Pool{{QueueTimeout: -1}, {MaxQueue: -1}} {
		if err := p.Validate(); err == nil {
			t.Errorf("%+v: no error", p)
		}
	}
}

func BenchmarkLimiter(b *testing.B) {
	for _, mode := range []struct {
		name string
		mode int
	}{{"adaptive", 0}, {"fixed", 1 << 20}} {
		b.Run(mode.name, func(b *testing.B) {
			l := newLimiter(mode.mode, DefaultQueueTimeout, 0, nil, nil)
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n, err := l.acquire(ctx)
					if err != nil {
						b.Error(err)
						return
					}
					l.release(n, time.Millisecond, true)
				}
			})
		})
	}
}

// TestOverloadEndToEnd offers two hops of meshd (as a gateway and a
// sidecar, with default admission control) a burst far above what the app
// behind them can serve: the app handles 4 requests at a time, 20 ms each
// (200 a second), and gets 400 requests from 100 clients at once. Every
// request is answered, by the app or with a 503 that says when to retry;
// the app is spared most of the crowd (without admission control it holds
// every client's request at once); afterwards requests are served again.
func TestOverloadEndToEnd(t *testing.T) {
	const (
		capacity = 4
		work     = 20 * time.Millisecond
		clients  = 100
		each     = 4
	)
	slots := make(chan struct{}, capacity)
	var inApp, peakApp atomic.Int64
	_, app := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inApp.Add(1)
		defer inApp.Add(-1)
		for p := peakApp.Load(); n > p && !peakApp.CompareAndSwap(p, n); p = peakApp.Load() {
		}
		select {
		case slots <- struct{}{}:
		case <-r.Context().Done():
			return
		}
		defer func() { <-slots }()
		time.Sleep(work) // the app's work
		io.WriteString(w, "done")
	}))
	sidecar := startProxy(t, &Handler{Route: fixedRoute(app), Via: "sidecar"})
	sidecarUp := &Upstream{Key: sidecar, Addr: sidecar}
	gateway := startProxy(t, &Handler{Route: fixedRoute(sidecarUp), Via: "gateway"})

	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	t.Cleanup(tr.CloseIdleConnections)
	// The timeout only ends a test that hangs; nothing is timed.
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	get := func() (int, error) {
		resp, err := client.Get("http://" + gateway + "/")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusServiceUnavailable:
			if ra := resp.Header.Get("Retry-After"); ra != "1" {
				return 0, errors.New("503 with Retry-After " + ra)
			}
			if ps := resp.Header.Get("Proxy-Status"); !strings.Contains(ps, "error=connection_limit_reached") {
				return 0, errors.New("503 with Proxy-Status " + ps)
			}
		default:
			return 0, errors.New("status " + resp.Status)
		}
		return resp.StatusCode, nil
	}

	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				code, err := get()
				if err != nil {
					t.Error(err)
					return
				}
				if code == http.StatusOK {
					ok.Add(1)
				} else {
					refused.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("burst of %d: %d served, %d refused; the app had at most %d requests at once",
		clients*each, ok.Load(), refused.Load(), peakApp.Load())
	if ok.Load()+refused.Load() != clients*each {
		t.Fatalf("%d of %d requests answered", ok.Load()+refused.Load(), clients*each)
	}
	if p := peakApp.Load(); p > clients/2 {
		t.Errorf("the app had %d requests at once, of %d clients", p, clients)
	}
	for i := range 5 {
		if code, err := get(); err != nil || code != http.StatusOK {
			t.Errorf("request %d after the burst: %d %v", i, code, err)
		}
	}
}

// BenchmarkRefused is the cost of a request that admission control
// refuses: under overload a node refuses more requests than it serves,
// and every microsecond a refusal costs is taken from those it serves.
func BenchmarkRefused(b *testing.B) {
	up, got, release := heldUpstream(b)
	defer close(release)
	pool := &Pool{ConcurrencyLimit: 1, QueueTimeout: time.Millisecond}
	defer pool.CloseIdle()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := &Handler{Route: fixedRoute(up), Pool: pool, Via: "bench", Logger: logger}
	go func() {
		req := httptest.NewRequest("GET", "http://web/held", nil)
		h.ServeHTTP(httptest.NewRecorder(), req)
	}()
	for got.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	req := httptest.NewRequest("GET", "http://web/", nil)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		clear(w.h)
		w.code = 0
		h.ServeHTTP(w, req)
		if w.code != http.StatusServiceUnavailable {
			b.Fatalf("status %d, want 503", w.code)
		}
	}
}

type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// TestLimitSplit: with Pool.LimitKey, the requests for one service fill
// their own limit of an upstream and leave the other services' slots
// free, as a gateway carrying a slow service and a fast one needs.
func TestLimitSplit(t *testing.T) {
	up, got, release := heldUpstream(t)
	pool := &Pool{ConcurrencyLimit: 1, QueueTimeout: time.Millisecond,
		LimitKey: func(r *http.Request) string { return r.Header.Get("X-Service") }}
	defer pool.CloseIdle()
	send := func(svc string) chan int {
		done := make(chan int, 1)
		go func() {
			req := httptest.NewRequest("GET", "http://web/", nil).WithContext(context.Background())
			req.RequestURI = ""
			if svc != "" {
				req.Header.Set("X-Service", svc)
			}
			resp, err := pool.RoundTrip(up, req)
			switch {
			case isOverloaded(err):
				done <- http.StatusServiceUnavailable
			case err != nil:
				t.Error(err)
				done <- 0
			default:
				resp.Body.Close()
				done <- resp.StatusCode
			}
		}()
		return done
	}
	slow := send("slow") // held upstream: takes slow's one slot
	waitFor(t, "the slow request upstream", 5*time.Second, func() bool { return got.Load() == 1 })
	if code := <-send("slow"); code != http.StatusServiceUnavailable {
		t.Errorf("a second slow request: %d, want refused (503)", code)
	}
	fast := send("fast") // its own slot: reaches the upstream
	waitFor(t, "the fast request upstream", 5*time.Second, func() bool { return got.Load() == 2 })
	// The upstream's own limit has seen no request: not listed.
	var before []string
	for _, l := range pool.Limits() {
		before = append(before, l.Split)
	}
	if strings.Join(before, ",") != "fast,slow" {
		t.Errorf("Limits lists splits %q before any request without a key, want fast and slow", before)
	}
	plain := send("") // the upstream's own limit
	waitFor(t, "the request without a key upstream", 5*time.Second, func() bool { return got.Load() == 3 })

	ls := pool.Limits()
	var splits []string
	for _, l := range ls {
		splits = append(splits, l.Split)
		if l.InFlight != 1 {
			t.Errorf("split %q: %d in flight, want 1", l.Split, l.InFlight)
		}
		if want := int64(0); l.Split == "slow" {
			if l.Rejected != 1 {
				t.Errorf("split slow refused %d, want 1", l.Rejected)
			}
		} else if l.Rejected != want {
			t.Errorf("split %q refused %d, want 0", l.Split, l.Rejected)
		}
	}
	if strings.Join(splits, ",") != ",fast,slow" {
		t.Errorf("Limits lists splits %q, want the upstream's own, fast and slow", splits)
	}
	if n := pool.Rejected(); n != 1 {
		t.Errorf("pool refused %d, want 1", n)
	}
	close(release)
	for name, done := range map[string]chan int{"slow": slow, "fast": fast, "without a key": plain} {
		if code := <-done; code != http.StatusOK {
			t.Errorf("the held %s request: %d, want 200", name, code)
		}
	}
}

func TestLimitSplitsBounded(t *testing.T) {
	pool := &Pool{ConcurrencyLimit: 3, LimitKey: func(r *http.Request) string { return r.Header.Get("X-Service") }}
	uc, err := pool.conns(&Upstream{Key: "k", Addr: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "http://web/", nil)
	seen := map[*limiter]bool{}
	for i := range maxLimitSplits + 10 {
		req.Header.Set("X-Service", "svc-"+strconv.Itoa(i))
		l := uc.limiterFor(pool.LimitKey, req)
		if i >= maxLimitSplits && l != uc.lim {
			t.Fatalf("key %d beyond the bound got a limiter of its own", i)
		}
		if l.limit.Load() != 3 {
			t.Fatalf("split limit %d, want the pool's fixed 3", l.limit.Load())
		}
		seen[l] = true
	}
	if len(seen) != maxLimitSplits+1 {
		t.Errorf("%d limiters, want %d splits and the upstream's own", len(seen), maxLimitSplits)
	}
	req.Header.Set("X-Service", "svc-0")
	if a, b := uc.limiterFor(pool.LimitKey, req), uc.limiterFor(pool.LimitKey, req); a != b || a == uc.lim {
		t.Error("the same key did not get the same split")
	}
}

// TestRefusalMovesToFreeInstance: a request refused by one instance's
// limit goes to another candidate that admits it at once; when none
// does, it is refused, once, without queueing again. Refusals never count
// against an instance's health.
func TestRefusalMovesToFreeInstance(t *testing.T) {
	busy, busyGot, release := heldUpstream(t)
	defer close(release)
	var freeGot atomic.Int64
	_, free := plainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		freeGot.Add(1)
		io.WriteString(w, "free")
	}))
	pool := &Pool{ConcurrencyLimit: 1, QueueTimeout: time.Millisecond}
	defer pool.CloseIdle()
	var route atomic.Pointer[[]*Upstream]
	route.Store(&[]*Upstream{busy, free})
	h := &Handler{Pool: pool, Via: "meshd-gw", SignalRetry: true,
		Route: func(*http.Request) ([]*Upstream, error) { return *route.Load(), nil }}
	addr := startProxy(t, h)
	go func() {
		if resp, err := http.Get("http://" + addr + "/held"); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, "the first request at the busy instance", 5*time.Second, func() bool { return busyGot.Load() == 1 })

	for i := range 5 {
		resp, body := rawExchange(t, addr, "GET /next HTTP/1.1\r\nHost: web\r\n\r\n")
		if resp.StatusCode != http.StatusOK || body != "free" {
			t.Fatalf("request %d: %d %q, want 200 from the free instance", i, resp.StatusCode, body)
		}
	}
	if n := freeGot.Load(); n != 5 {
		t.Errorf("the free instance got %d requests, want 5", n)
	}

	// Only the busy instance: refused, and the busy one is not ejected.
	route.Store(&[]*Upstream{busy})
	for i := range 5 {
		resp, _ := rawExchange(t, addr, "POST /next HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi")
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(HeaderRetry) != "" {
			t.Fatalf("request %d to a full instance: %d, %s %q, want 503 without a retry signal", i, resp.StatusCode, HeaderRetry, resp.Header.Get(HeaderRetry))
		}
	}
	if busy.Ejected(time.Now()) {
		t.Error("refusals by this node's admission control ejected the instance")
	}
	if n := busyGot.Load(); n != 1 {
		t.Errorf("the busy instance got %d requests, want only the held one", n)
	}
	// What the handler asks the pool before moving a refused request.
	route.Store(&[]*Upstream{busy, free})
	if !pool.HasFreeSlot(free, httptest.NewRequest("GET", "http://web/", nil)) {
		t.Fatal("the free instance has no free slot")
	}
	if pool.HasFreeSlot(busy, httptest.NewRequest("GET", "http://web/", nil)) {
		t.Fatal("the busy instance has a free slot")
	}
}

// TestQueueWaitOutlastsAStall: a request queued for a slot while the node
// does not run (its clock moves on, nothing is scheduled) is not refused
// the moment its timer fires late: the answer that frees a slot may be
// waiting to be read. Its wait is extended once, and the slot released
// meanwhile goes to it.
func TestQueueWaitOutlastsAStall(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	l := newLimiter(1, 50*time.Millisecond, 0, clock, nil)
	first, err := l.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stalled := make(chan struct{})
	l.onStall = func() { close(stalled) }
	got := make(chan error, 1)
	go func() {
		n, err := l.acquire(context.Background())
		if err == nil {
			l.release(n, 0, false)
		}
		got <- err
	}()
	for start := time.Now(); ; time.Sleep(time.Millisecond) {
		l.mu.Lock()
		queued := l.queued
		l.mu.Unlock()
		if queued == 1 {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("the second request was not queued")
		}
	}
	// The node stops for a second: its clock moves, nothing runs, and the
	// queue timer fires 950 ms late by that clock.
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	select {
	case <-stalled:
	case err := <-got:
		t.Fatalf("the queued request ended (%v) without its wait being extended", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the queue timer never fired")
	}
	l.release(first, 0, false)
	if err := <-got; err != nil {
		t.Fatalf("the queued request was refused after the stall: %v", err)
	}
	if r := l.rejected.Load(); r != 0 {
		t.Fatalf("%d refused", r)
	}
}
