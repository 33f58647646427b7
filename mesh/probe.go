package mesh

import (
	"context"
	"net"
	"sync"
	"time"
)

// Gateways are probed by the edges and gateways that may send them
// traffic: a TCP connect every probeInterval, bounded by probeTimeout. A
// dead gateway (connection refused) is seen within one interval, a silent
// one within interval+timeout, well inside the second an edge has to
// withdraw its anycast route when nothing answers. The connect time is the
// RTT that orders regions nearest first.
const (
	probeInterval = 250 * time.Millisecond
	probeTimeout  = 500 * time.Millisecond
)

// prober holds what the probes found, by gateway mesh address.
type prober struct {
	mu    sync.Mutex
	state map[string]probeResult
}

type probeResult struct {
	up  bool
	rtt time.Duration // smoothed connect time while up
}

// get reports a gateway's last probe; known is false before the first.
func (p *prober) get(addr string) (res probeResult, known bool) {
	if p == nil {
		return probeResult{}, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	res, known = p.state[addr]
	return res, known
}

// anyUp reports whether at least one probed gateway answers.
func (p *prober) anyUp() bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.state {
		if r.up {
			return true
		}
	}
	return false
}

// round probes every target at once and records the results. It reports
// whether anything that routing depends on changed: a gateway going up or
// down, or an RTT moving by more than a quarter (so that ordering by RTT
// does not rebuild the snapshot on every jitter).
func (p *prober) round(ctx context.Context, targets []string) bool {
	type out struct {
		addr string
		up   bool
		rtt  time.Duration
	}
	results := make(chan out, len(targets))
	for _, addr := range targets {
		go func() {
			start := time.Now()
			d := net.Dialer{Timeout: probeTimeout}
			conn, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				results <- out{addr: addr}
				return
			}
			rtt := time.Since(start)
			conn.Close()
			results <- out{addr: addr, up: true, rtt: rtt}
		}()
	}
	got := make(map[string]out, len(targets))
	for range targets {
		r := <-results
		got[r.addr] = r
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		p.state = map[string]probeResult{}
	}
	changed := false
	for addr := range p.state {
		if _, ok := got[addr]; !ok {
			delete(p.state, addr) // no longer a target
		}
	}
	for addr, r := range got {
		old, known := p.state[addr]
		nr := probeResult{up: r.up}
		if r.up {
			nr.rtt = r.rtt
			if known && old.up {
				nr.rtt = (old.rtt*7 + r.rtt) / 8 // EWMA: one slow connect does not reorder regions
			}
		}
		if !known || old.up != nr.up {
			changed = true
		} else if nr.up && (nr.rtt > old.rtt*5/4 || nr.rtt < old.rtt*3/4) {
			changed = true
		}
		p.state[addr] = nr
	}
	return changed
}

// probeLoop keeps probing the gateways of the global pool until ctx ends,
// rebuilding the snapshot and telling the anycast gate when reachability
// changes.
func (n *Node) probeLoop(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		targets := n.snap.Load().probeTargets
		if n.probe.round(ctx, targets) {
			n.kickRebuild()
		}
		n.signalCanServe()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
