package gossip

import (
	"context"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

type jobKind int

const (
	jobUpdate jobKind = iota // re-advertise Node.Meta
	jobWant                  // ask to.name for its record
	jobRecord                // send our record to to.name
)

type target struct {
	name string
	ip   net.IP
	port uint16
}

func (p *peer) target() target { return target{name: p.name, ip: p.ip, port: p.port} }

type job struct {
	kind jobKind
	to   target
	have uint64
}

func (j job) key() string {
	return strconv.Itoa(int(j.kind)) + "/" + j.to.name
}

// jobQueue holds network work for the sender goroutines. A job equal to
// one already queued is merged into it, and the queue is bounded: past the
// limit, jobs are dropped, to be retried by the state goroutine's timers.
type jobQueue struct {
	mu      sync.Mutex
	q       []job
	pending map[string]bool
	limit   int
	ready   chan struct{}
}

func (q *jobQueue) init(limit int) {
	q.limit = limit
	q.pending = make(map[string]bool)
	q.ready = make(chan struct{}, senders)
}

func (q *jobQueue) add(j job) {
	q.mu.Lock()
	k := j.key()
	if q.pending[k] || len(q.q) >= q.limit {
		q.mu.Unlock()
		return
	}
	q.pending[k] = true
	q.q = append(q.q, j)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *jobQueue) next() (job, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.q) == 0 {
		return job{}, false
	}
	j := q.q[0]
	q.q = q.q[1:]
	delete(q.pending, j.key())
	return j, true
}

// sendLoop runs queued network jobs; these may block for memberlist's TCP
// timeout, which is why they never run on memberlist's goroutines or the
// state goroutine.
func (c *Cluster) sendLoop(ctx context.Context) {
	for {
		j, ok := c.jobs.next()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-c.jobs.ready:
				continue
			}
		}
		if ctx.Err() != nil {
			return
		}
		c.do(j)
	}
}

func (c *Cluster) do(j job) {
	node := &memberlist.Node{Name: j.to.name, Addr: j.to.ip, Port: j.to.port}
	var err error
	switch j.kind {
	case jobUpdate:
		err = c.ml.UpdateNode(c.tm.updateTimeout)
	case jobWant:
		err = c.ml.SendReliable(node, encodeWant(want{From: c.Name, Name: j.to.name, Version: j.have}))
	case jobRecord:
		r := c.self.Load()
		if r == nil {
			return
		}
		err = c.ml.SendReliable(node, encodeRecord(entry{Name: c.Name, Version: r.version, Data: r.data}))
	}
	if err != nil {
		c.log.Debug("gossip: send failed; will retry", "job", j.kind, "to", j.to.name, "err", err)
	}
}

// joinLoop makes the first join attempt for Start, retries until a seed
// answers, re-joins the seeds while the pool looks partitioned, and
// re-joins while peers still hold an old address for our name.
func (c *Cluster) joinLoop(ctx context.Context) {
	first := true
	joined := len(c.seeds) == 0
	backoff := time.Second
	lastRejoin := time.Now()
	var conflictSince time.Time
	for {
		wait := c.tm.rejoinEvery
		switch {
		case !joined:
			n, err := c.ml.Join(c.seeds)
			if first {
				c.firstJoin <- err
				first = false
			}
			if err == nil && n > 0 {
				joined = true
				lastRejoin = time.Now()
				wait = c.tm.rejoinEvery
			} else {
				c.log.Debug("gossip: join failed", "seeds", c.seeds, "err", err)
				wait = backoff
				backoff = min(2*backoff, c.tm.rejoinEvery)
			}
		case int(c.nMembers.Load()) < len(c.seeds)+1 && time.Since(lastRejoin) >= c.tm.rejoinEvery:
			// Fewer members than seeds: some seeds are across a
			// partition that memberlist has given up on; a push/pull with
			// them merges the two sides again.
			lastRejoin = time.Now()
			if _, err := c.ml.Join(c.seeds); err != nil {
				c.log.Debug("gossip: re-join failed", "seeds", c.seeds, "err", err)
			}
		}

		// While a peer lists our name at an old address, re-join every
		// conflictRetry; a round in which no peer reports it ends that.
		// Give up after tombTTL: then the other process is alive and it
		// is a configuration error, which memberlist logs.
		if at := c.conflictAt.Load(); at != 0 && joined {
			if conflictSince.IsZero() {
				conflictSince = time.Now()
				c.log.Info("gossip: peers still know this name at an older address; re-joining until they accept the new one")
			}
			if time.Since(conflictSince) < tombTTL {
				wait = c.tm.conflictRetry
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				round := time.Now().UnixNano()
				n, _ := c.ml.Join(c.conflictTargets())
				if n > 0 && c.conflictAt.Load() < round {
					c.conflictAt.Store(0)
					conflictSince = time.Time{}
					c.log.Info("gossip: peers accepted the new address")
				}
				continue
			}
		}

		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-c.conflict:
			t.Stop()
		}
	}
}

// conflictTargets is the seeds and a few random members: enough to reach
// the peers that still hold our old address without contacting a whole
// large pool every round.
func (c *Cluster) conflictTargets() []string {
	out := append([]string(nil), c.seeds...)
	var others []string
	if v := c.view.Load(); v != nil {
		for _, m := range v.members {
			if m.Name != c.Name {
				others = append(others, m.Addr)
			}
		}
	}
	rand.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
	return append(out, others[:min(4, len(others))]...)
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
