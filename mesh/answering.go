package mesh

import (
	"strings"
	"time"

	"github.com/meshd/meshd/gossip"
)

// A member that gossip declares failed while it still answers requests.
//
// Gossip's failure detector is a UDP probe every second with a 500 ms
// timeout and a few seconds of suspicion. On a machine starved of CPU (a
// node past its capacity, or beside a busy neighbour) a node's probes and
// acks can be late while its proxy still answers every request, and gossip
// then declares it dead: its instances, or a whole region behind its
// gateway, would vanish from the catalog, and requests that were being
// served would get 503s until the node refutes its death. So a member that
// leaves the pool without having published "draining" first (a graceful
// leave drains first) is kept while this node's proxy has an answer from it
// newer than answeringWindow. A node that really died stops answering at
// once and gossip needs longer than answeringWindow to declare it dead
// (LAN: a probe, its timeout and at least 3 s of suspicion), so its
// instances go as before; the proxy's own ejection (connections refused,
// failed handshakes) covers the requests in between. A kept member goes
// once answers stop for answeringWindow, or after maxKeepAnswering, and
// comes back as an ordinary member when gossip sees it again.
const (
	answeringWindow  = 2 * time.Second
	answeringRecheck = 500 * time.Millisecond
	maxKeepAnswering = 2 * time.Minute
)

// keptMember is a member gossip lost that answers requests.
type keptMember struct {
	m     member
	o     *openedRecord
	since time.Time
}

// keepAnswering adds to out, the members of ms (gossip's list of pool)
// whose records were accepted, those that left the list without draining
// and still answer (see above); prev are the records accepted at the
// previous decode, accepted the ones of this one (kept members are added
// to it). A member gossip still lists, whose record was refused (its root
// left the bundle, a forgery), is never kept. Called under n.mu.
func (n *Node) keepAnswering(pool string, ms []gossip.Member, out []member, prev, accepted map[string]*openedRecord, now time.Time) []member {
	if n.answering == nil {
		n.answering = map[string]map[string]*keptMember{}
	}
	kept := n.answering[pool]
	next := map[string]*keptMember{}
	var listed map[string]bool
	for name, o := range prev {
		if accepted[name] != nil || o.rec == nil || o.rec.State == StateDraining {
			continue
		}
		if listed == nil {
			listed = make(map[string]bool, len(ms))
			for _, m := range ms {
				listed[m.Name] = true
			}
		}
		if listed[name] {
			continue
		}
		k := kept[name]
		if k == nil {
			// Gone since the previous decode: its address comes from the
			// members that decode listed.
			k = &keptMember{m: member{gossipAddr: lastGossipAddr(n.lastMembers[pool], name), suspect: true, rec: o.rec}, o: o, since: now}
		}
		switch {
		case now.Sub(k.since) > maxKeepAnswering:
			n.Logger.Warn("gossip still reports a member failed that answers requests; dropped it from the catalog",
				"pool", pool, "member", name, "kept", maxKeepAnswering)
			continue
		case !n.answersSince(o.rec, now.Add(-answeringWindow)):
			if kept[name] != nil {
				n.Logger.Info("a member gossip reported failed stopped answering; dropped it from the catalog", "pool", pool, "member", name)
			}
			continue
		}
		if kept[name] == nil {
			n.Logger.Warn("gossip reports a member failed that answers requests; keeping it in the catalog while it answers",
				"pool", pool, "member", name)
		}
		next[name] = k
		accepted[name] = o
		out = append(out, k.m)
	}
	if n.lastMembers == nil {
		n.lastMembers = map[string][]member{}
	}
	n.lastMembers[pool] = out
	n.answering[pool] = next
	keeping := false
	for _, k := range n.answering {
		keeping = keeping || len(k) > 0
	}
	n.keeping.Store(keeping)
	return out
}

// answersSince reports whether the proxy had an answer from the node of
// rec (any of its identities at its mesh address) at or after t.
func (n *Node) answersSince(rec *NodeRecord, t time.Time) bool {
	if rec.MeshAddr == "" {
		return false
	}
	prefix := rec.MeshAddr + "|"
	for key, u := range n.upstreams {
		if strings.HasPrefix(key, prefix) && u.AnsweredSince(t) {
			return true
		}
	}
	return false
}

// lastGossipAddr is the gossip address of member name in ms, the members
// a decode listed, "" when it is not among them.
func lastGossipAddr(ms []member, name string) string {
	for _, m := range ms {
		if m.rec != nil && m.rec.Name == name {
			return m.gossipAddr
		}
	}
	return ""
}
