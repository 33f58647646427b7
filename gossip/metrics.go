package gossip

import (
	"strconv"
	"sync"
	"sync/atomic"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/hashicorp/memberlist"
)

// memberlist reports its traffic and the failure detector's messages only
// to go-metrics' process-wide sink. The first Cluster to start installs a
// sink there that hands each report to the Cluster it came from: each
// Cluster gives its memberlist and transport a label (poolLabel) with an
// ID of its own, so several pools in one process (a gateway's two, a
// test's many nodes) keep apart. The sink only adds to atomics: memberlist
// calls it on its packet and probe goroutines.

const poolLabel = "meshd_pool"

var (
	sinkOnce   sync.Once
	sinkPools  sync.Map // cluster ID → *poolCounters
	nextPoolID atomic.Uint64
)

// poolCounters are what memberlist reported for one Cluster.
type poolCounters struct {
	packetsSent, packetBytesSent         atomic.Uint64
	packetsReceived, packetBytesReceived atomic.Uint64
	streamsOpened, streamsAccepted       atomic.Uint64
	streamBytesSent                      atomic.Uint64
	aliveMsgs, suspectMsgs, deadMsgs     atomic.Uint64
}

// registerCounters gives c its counters and the labels that route
// memberlist's reports to them.
func (c *Cluster) registerCounters() []metrics.Label {
	sinkOnce.Do(func() {
		cfg := metrics.DefaultConfig("")
		cfg.EnableHostname, cfg.EnableRuntimeMetrics = false, false
		_, _ = metrics.NewGlobal(cfg, poolSink{}) // fails only for a sink or config it cannot use
	})
	c.counters = &poolCounters{}
	id := strconv.FormatUint(nextPoolID.Add(1), 10)
	c.poolID = id
	sinkPools.Store(id, c.counters)
	return []metrics.Label{{Name: poolLabel, Value: id}}
}

// unregisterCounters stops routing reports to c (after Shutdown).
func (c *Cluster) unregisterCounters() {
	if c.poolID != "" {
		sinkPools.Delete(c.poolID)
	}
}

type poolSink struct{}

var _ metrics.MetricSink = poolSink{}

func (poolSink) IncrCounterWithLabels(key []string, val float32, labels []metrics.Label) {
	if len(key) != 3 || key[0] != "memberlist" {
		return
	}
	var pc *poolCounters
	for _, l := range labels {
		if l.Name == poolLabel {
			if v, ok := sinkPools.Load(l.Value); ok {
				pc = v.(*poolCounters)
			}
			break
		}
	}
	if pc == nil {
		return
	}
	n := uint64(val)
	switch key[1] + "." + key[2] {
	case "udp.sent":
		pc.packetsSent.Add(1)
		pc.packetBytesSent.Add(n)
	case "udp.received":
		pc.packetsReceived.Add(1)
		pc.packetBytesReceived.Add(n)
	case "tcp.sent":
		pc.streamBytesSent.Add(n)
	case "tcp.connect":
		pc.streamsOpened.Add(1)
	case "tcp.accept":
		pc.streamsAccepted.Add(1)
	case "msg.alive":
		pc.aliveMsgs.Add(1)
	case "msg.suspect":
		pc.suspectMsgs.Add(1)
	case "msg.dead":
		pc.deadMsgs.Add(1)
	}
}

func (poolSink) SetGauge([]string, float32)                             {}
func (poolSink) SetGaugeWithLabels([]string, float32, []metrics.Label)  {}
func (poolSink) EmitKey([]string, float32)                              {}
func (poolSink) IncrCounter([]string, float32)                          {}
func (poolSink) AddSample([]string, float32)                            {}
func (poolSink) AddSampleWithLabels([]string, float32, []metrics.Label) {}

// Stats are a pool's member states and traffic as this node sees them,
// for the caller's metrics.
type Stats struct {
	// Alive and Suspect count the members memberlist holds in each
	// state, this node included; members it found dead or that left are
	// forgotten.
	Alive, Suspect int
	// AliveMsgs, SuspectMsgs and DeadMsgs count the failure detector's
	// messages this node processed: its own probes' verdicts and those
	// gossip brought. SuspectMsgs is the rate of suspicions in the pool.
	AliveMsgs, SuspectMsgs, DeadMsgs uint64
	// Gossip packets (UDP) and their bytes, sent and received.
	PacketsSent, PacketBytesSent         uint64
	PacketsReceived, PacketBytesReceived uint64
	// Streams (TCP: push/pull, joins, records by request) this node opened
	// and accepted, and the bytes it sent on them.
	StreamsOpened, StreamsAccepted, StreamBytesSent uint64
	// HealthScore is memberlist's awareness of its own health: 0 is
	// healthy; each point stretches its probe timeouts, because this
	// node's own answers were late (a busy CPU, a slow network).
	HealthScore int
}

// Stats returns the pool's member states and counters; zero before Start
// and after Shutdown.
func (c *Cluster) Stats() Stats {
	c.mu.Lock()
	ok := c.started && !c.closed
	c.mu.Unlock()
	if !ok {
		return Stats{}
	}
	pc := c.counters
	st := Stats{
		AliveMsgs: pc.aliveMsgs.Load(), SuspectMsgs: pc.suspectMsgs.Load(), DeadMsgs: pc.deadMsgs.Load(),
		PacketsSent: pc.packetsSent.Load(), PacketBytesSent: pc.packetBytesSent.Load(),
		PacketsReceived: pc.packetsReceived.Load(), PacketBytesReceived: pc.packetBytesReceived.Load(),
		StreamsOpened: pc.streamsOpened.Load(), StreamsAccepted: pc.streamsAccepted.Load(),
		StreamBytesSent: pc.streamBytesSent.Load(),
		HealthScore:     c.ml.GetHealthScore(),
	}
	for _, m := range c.ml.Members() {
		switch m.State {
		case memberlist.StateAlive:
			st.Alive++
		case memberlist.StateSuspect:
			st.Suspect++
		}
	}
	return st
}
