package gossip

import (
	"bytes"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/memberlist"
)

// hooks receives memberlist's callbacks. They run on memberlist's packet,
// stream and probe goroutines, some with memberlist's node lock held, so
// every method here only copies its input and hands it to the state
// goroutine through the mailbox (or reads an immutable snapshot). None of
// them blocks, does I/O, or calls back into memberlist.
type hooks struct{ c *Cluster }

var (
	_ memberlist.Delegate      = (*hooks)(nil)
	_ memberlist.EventDelegate = (*hooks)(nil)
	_ memberlist.MergeDelegate = (*hooks)(nil)
	_ memberlist.PingDelegate  = (*hooks)(nil)
)

// NodeMeta advertises the version of this node's record, so that a peer
// holding an older one knows to ask for it.
func (h *hooks) NodeMeta(limit int) []byte {
	if limit < metaLen {
		return nil
	}
	var v uint64
	if r := h.c.self.Load(); r != nil {
		v = r.version
	}
	return encodeMeta(v)
}

// NotifyMsg receives a record broadcast, a record sent on request, or a
// request. b is reused by memberlist after return, hence the copy.
func (h *hooks) NotifyMsg(b []byte) {
	if len(b) > maxMessage {
		h.c.refuse("message", errTooBig(len(b), maxMessage))
		return
	}
	h.c.post(event{kind: evMsg, data: bytes.Clone(b)})
}

// GetBroadcasts hands memberlist the queued record broadcasts; the queue is
// safe for concurrent use and never blocks.
func (h *hooks) GetBroadcasts(overhead, limit int) [][]byte {
	return h.c.bcast.GetBroadcasts(overhead, limit)
}

// LocalState sends this node's record and every record it holds for live
// members, for push/pull anti-entropy. Over the size budget, a random
// subset goes this time and others next time.
func (h *hooks) LocalState(join bool) []byte {
	c := h.c
	var entries []entry
	if r := c.self.Load(); r != nil {
		entries = append(entries, entry{Name: c.Name, Version: r.version, Data: r.data})
	}
	if v := c.view.Load(); v != nil {
		size := 0
		for _, e := range v.live {
			size += entrySize(e)
		}
		live := v.live
		if size > maxStateEncode {
			live = append([]entry(nil), live...)
			rand.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
		}
		entries = append(entries, live...)
	}
	return encodeState(entries, maxStateEncode)
}

// MergeRemoteState receives a peer's LocalState.
func (h *hooks) MergeRemoteState(b []byte, join bool) {
	if len(b) > maxStateDecode {
		h.c.refuse("state", errTooBig(len(b), maxStateDecode))
		return
	}
	h.c.post(event{kind: evState, data: bytes.Clone(b)})
}

func nodeOf(n *memberlist.Node) nodeInfo {
	return nodeInfo{
		name: n.Name,
		ip:   bytes.Clone(n.Addr),
		port: n.Port,
		meta: bytes.Clone(n.Meta),
	}
}

// NotifyJoin, NotifyUpdate and NotifyLeave are called by memberlist with
// its node lock held, in order.
func (h *hooks) NotifyJoin(n *memberlist.Node) {
	h.c.post(event{kind: evJoin, node: nodeOf(n)})
}

func (h *hooks) NotifyUpdate(n *memberlist.Node) {
	h.c.post(event{kind: evJoin, node: nodeOf(n)})
}

func (h *hooks) NotifyLeave(n *memberlist.Node) {
	h.c.post(event{kind: evLeave, node: nodeOf(n)})
}

// NotifyMerge sees a peer's member list when this node joins it. If the
// peer lists our name at another address, an earlier process with our name
// (this node before a restart on a new port) is still known there, and
// memberlist will refuse our address until that one has been dead for
// DeadNodeReclaimTime; the join goroutine then re-joins until it is
// accepted, because nothing else would tell the peers our new address.
func (h *hooks) NotifyMerge(peers []*memberlist.Node) error {
	self := h.c.selfAddr.Load()
	if self == nil {
		return nil
	}
	for _, p := range peers {
		if p.Name == h.c.Name && p.Address() != *self {
			h.c.conflictAt.Store(time.Now().UnixNano())
			select {
			case h.c.conflict <- struct{}{}:
			default:
			}
			break
		}
	}
	return nil
}

// AckPayload carries this process's boot identifier in probe acks, so that
// a member restarted at the same address is noticed (join.go).
func (h *hooks) AckPayload() []byte { return h.c.bootPayload() }

// NotifyPingComplete: the member answered our probe, so it is not suspect.
func (h *hooks) NotifyPingComplete(other *memberlist.Node, _ time.Duration, payload []byte) {
	h.c.clearSuspect(other.Name)
	h.c.noteBoot(other.Name, other.Address(), payload)
}
