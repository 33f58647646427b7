package gossip

import (
	"context"
	"net"
	"strconv"
	"sync"

	"github.com/hashicorp/memberlist"
)

type jobKind int

const (
	jobUpdate jobKind = iota // re-advertise Node.Meta
	jobWant                  // ask to.name for its record
	jobRecord                // send our record to to.name
	jobNote                  // send data to to.name (Send)
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
	data []byte // jobNote
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
	if q.pending[k] {
		if j.kind == jobNote { // the newer note replaces the waiting one
			for i := range q.q {
				if q.q[i].key() == k {
					q.q[i] = j
				}
			}
		}
		q.mu.Unlock()
		return
	}
	if len(q.q) >= q.limit {
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
func (c *Cluster) sendLoop(ctx context.Context, q *jobQueue) {
	for {
		j, ok := q.next()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-q.ready:
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
		// memberlist's UpdateNode reads this node's address outside its
		// lock while another UpdateNode writes it under the lock: two
		// senders must not run it at once.
		c.updateMu.Lock()
		err = c.ml.UpdateNode(c.tm.updateTimeout)
		c.updateMu.Unlock()
	case jobWant:
		err = c.ml.SendReliable(node, encodeWant(want{From: c.Name, Name: j.to.name, Version: j.have}))
	case jobRecord:
		r := c.self.Load()
		if r == nil {
			return
		}
		err = c.ml.SendReliable(node, encodeRecord(entry{Name: c.Name, Version: r.version, Data: r.data}))
	case jobNote:
		err = c.ml.SendReliable(node, encodeNote(note{From: c.Name, Data: j.data}))
	}
	if err != nil {
		c.log.Debug("gossip: send failed; will retry", "job", j.kind, "to", j.to.name, "err", err)
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
