package mesh

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/meshd/meshd/gossip"
	"github.com/meshd/meshd/proxy"
	"github.com/meshd/meshd/tlsmgr"
)

// metrics are the node's Prometheus collectors, served on the admin API's
// /metrics. Values that already live elsewhere (snapshot, identity) are
// read at scrape time, so the request path pays nothing for them.
func (n *Node) newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	n.policyDelay = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meshd_policy_propagation_seconds",
		Help:        "From a policy's signing (meshd apply) to this node running it; clocks of the operator's machine and the node's are compared.",
		ConstLabels: prometheus.Labels{"role": n.Config.Role, "region": n.Config.Region},
		Buckets:     []float64{.01, .025, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60}})
	n.policyRefused = prometheus.NewCounter(prometheus.CounterOpts{Name: "meshd_policy_refused_total",
		Help:        "Signed policies from peers that failed verification (unknown signer, bad signature, invalid document); their log lines name the peer once per reason.",
		ConstLabels: prometheus.Labels{"role": n.Config.Role, "region": n.Config.Region}})
	n.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshd_rate_limited_total",
		Help:        "Requests refused with 429 by a policy's rate limit at this node, per service and kind of limit.",
		ConstLabels: prometheus.Labels{"role": n.Config.Role, "region": n.Config.Region}}, []string{"service", "limit"})
	n.authzDenied = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshd_authz_denied_total",
		Help:        "Requests a destination sidecar refused with 403 by its service's authorization (the policy), per service and deciding rule.",
		ConstLabels: prometheus.Labels{"role": n.Config.Role, "region": n.Config.Region}}, []string{"service", "rule"})
	// The scheduler's metrics beside the defaults: go_sched_latencies_seconds
	// (how long goroutines wait to run) is a node's own saturation, which
	// no upstream latency shows: past capacity the edge's requests wait
	// for its CPU before anything is sent (README, Performance).
	reg.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsScheduler)), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	labels := prometheus.Labels{"role": n.Config.Role, "region": n.Config.Region}
	n.reqs = newReqMetrics(labels)
	reg.MustRegister(n.reqs.collectors()...)
	for _, m := range []struct {
		result string
		n      *atomic.Int64
	}{{"sent", &n.mirrored}, {"failed", &n.mirrorFailed}, {"dropped", &n.mirrorDropped}} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshd_mirrored_total",
			Help:        "Copies of requests mirrored to a subset by a policy: sent (answered, answer discarded), failed (no answer), dropped (too many in flight, not sent).",
			ConstLabels: prometheus.Labels{"role": n.Config.Role, "region": n.Config.Region, "result": m.result}},
			func() float64 { return float64(m.n.Load()) }))
	}
	for _, reason := range []string{tlsmgr.RefusedUnknownRoot, tlsmgr.RefusedExpired, tlsmgr.RefusedIdentity, tlsmgr.RefusedOther} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshd_tls_peers_refused_total",
			Help:        "mTLS handshakes refused because of the peer's certificate, by reason: unknown_root (its chain leads to no root of the bundle), expired, identity (valid but not accepted here), other. Each is logged (tls: refused a peer) with the identity it claimed.",
			ConstLabels: prometheus.Labels{"role": n.Config.Role, "region": n.Config.Region, "reason": reason}},
			func() float64 {
				if n.ids == nil {
					return 0
				}
				return float64(n.ids.PeerRefusals()[reason])
			}))
	}
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshd_gossip_records_refused_total",
		Help: "Gossip records refused: not signed by an SVID of the trust bundle, a bad signature, claims the signer may not make (another service's instances, a gateway's summary), or a record that does not decode.", ConstLabels: labels},
		func() float64 { return float64(n.recordsRefused.Load()) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshd_replays_total",
		Help: "Requests an app asked to replay in another region (Mesh-Replay) that the edge replayed there.", ConstLabels: labels},
		func() float64 { return float64(n.replays.Load()) }))
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshd_ready", Help: "1 while the node serves (started, not draining).", ConstLabels: labels},
			func() float64 { return b2f(n.Ready()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshd_svid_expiry_seconds", Help: "Unix time the node's SVID expires.", ConstLabels: labels},
			func() float64 { return float64(n.ids.NotAfter().Unix()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshd_svid_renewals_total", Help: "SVIDs minted or reloaded after the first.", ConstLabels: labels},
			func() float64 { return float64(n.ids.Renewals()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshd_trust_bundle_expiry_seconds", Help: "Unix time the first root CA of the node's trust bundle expires.", ConstLabels: labels},
			func() float64 { t, _ := n.ids.RootExpiry(); return float64(t.Unix()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshd_trust_bundle_roots", Help: "Root CAs in the node's trust bundle (two while a root rotates).", ConstLabels: labels},
			func() float64 { _, n := n.ids.RootExpiry(); return float64(n) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshd_tls_resumed_total", Help: "mTLS handshakes, as server or client, that resumed a session and re-authorized the peer.", ConstLabels: labels},
			func() float64 { return float64(n.ids.Resumed()) }),
		&memberCollector{n: n, desc: prometheus.NewDesc("meshd_gossip_members", "Members of each gossip pool the node sees.", []string{"pool"}, labels)},
		newGossipCollector(n, labels),
		newUpstreamCollector(n, labels),
		&serviceCollector{n: n, desc: prometheus.NewDesc("meshd_service_healthy_instances", "Healthy instances of each service per region, as the node sees them.", []string{"service", "service_region"}, labels)},
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshd_admission_rejected_total", Help: "Requests refused with 503 by admission control (concurrency limit, queue, dials) without being sent.", ConstLabels: labels},
			func() float64 {
				if n.pool == nil {
					return 0
				}
				return float64(n.pool.Rejected())
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshd_policy_version", Help: "Version of the signed traffic policy the node runs (0: none).", ConstLabels: labels},
			func() float64 { return float64(n.pol.Load().version()) }),
		n.policyDelay, n.policyRefused, n.rateLimited, n.authzDenied,
		newLimitCollector(n, labels),
		newTunnelCollector(n, labels),
		newHopCollector(n, labels),
	)
	return reg
}

// tunnelCollector reports the tunnels (TCP, WebSocket, UDP flows) of each
// forwarding handler and the datagrams of each UDP socket, at scrape time.
type tunnelCollector struct {
	n                                    *Node
	opened, open, bytes, dgrams, dropped *prometheus.Desc
	byTransport, retries, budgeted       *prometheus.Desc
}

func newTunnelCollector(n *Node, labels prometheus.Labels) *tunnelCollector {
	return &tunnelCollector{n: n,
		opened:      prometheus.NewDesc("meshd_tunnels_total", "Tunnels (CONNECT, WebSocket, TCP ports, UDP flows) opened, per listener.", []string{"listener"}, labels),
		open:        prometheus.NewDesc("meshd_tunnels_open", "Tunnels open now, per listener.", []string{"listener"}, labels),
		bytes:       prometheus.NewDesc("meshd_tunnel_bytes_total", "Bytes carried by tunnels that closed, per listener; direction up is client to upstream.", []string{"listener", "direction"}, labels),
		dgrams:      prometheus.NewDesc("meshd_udp_datagrams_total", "Datagrams carried by each UDP socket (--udp-out, --public-udp) and by a sidecar's relays to its app (listener relay); up is client to service.", []string{"listener", "direction"}, labels),
		dropped:     prometheus.NewDesc("meshd_udp_dropped_total", "Datagrams each UDP socket dropped, by reason (too_big: over 65,527 bytes; too_large: over what one QUIC datagram of an HTTP/3 hop holds, about 1,410 bytes).", []string{"listener", "reason"}, labels),
		byTransport: prometheus.NewDesc("meshd_udp_datagrams_by_transport_total", "meshd_udp_datagrams_total split by how the next hop carried them: h3 (HTTP/3 datagrams) or capsule (DATAGRAM capsules on an HTTP/2 stream).", []string{"listener", "direction", "transport"}, labels),
		retries:     prometheus.NewDesc("meshd_retries_total", "Attempts beyond the first of requests and tunnels, per listener (meshd_request_retries_total splits requests' by service).", []string{"listener"}, labels),
		budgeted:    prometheus.NewDesc("meshd_retry_budget_exhausted_total", "Retries a policy allowed that its retry budget refused, per listener: the last answer or error was forwarded instead.", []string{"listener"}, labels),
	}
}

func (c *tunnelCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.opened, c.open, c.bytes, c.dgrams, c.dropped, c.byTransport, c.retries, c.budgeted} {
		ch <- d
	}
}

func (c *tunnelCollector) Collect(ch chan<- prometheus.Metric) {
	for _, nh := range c.n.handlers {
		st := nh.h.Stats()
		ch <- prometheus.MustNewConstMetric(c.opened, prometheus.CounterValue, float64(st.Tunnels), nh.listener)
		ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(st.TunnelsOpen), nh.listener)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(st.TunnelBytesUp), nh.listener, "up")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(st.TunnelBytesDown), nh.listener, "down")
		ch <- prometheus.MustNewConstMetric(c.retries, prometheus.CounterValue, float64(st.Retries), nh.listener)
		ch <- prometheus.MustNewConstMetric(c.budgeted, prometheus.CounterValue, float64(st.RetriesBudgeted), nh.listener)
	}
	if c.n.pool != nil && len(c.n.Config.UDP) > 0 {
		// The sidecar's relays to its app's UDP ports.
		c.udp(ch, "relay", c.n.pool.UDPRelayStats())
	}
	if c.n.outPorts == nil {
		return
	}
	for _, nf := range c.n.outPorts.udp {
		c.udp(ch, nf.listener, nf.f.Stats())
	}
}

// udp reports one UDP socket's (or the relays') datagrams and drops.
func (c *tunnelCollector) udp(ch chan<- prometheus.Metric, listener string, st proxy.UDPStats) {
	ch <- prometheus.MustNewConstMetric(c.dgrams, prometheus.CounterValue, float64(st.DatagramsUp), listener, "up")
	ch <- prometheus.MustNewConstMetric(c.dgrams, prometheus.CounterValue, float64(st.DatagramsDown), listener, "down")
	for _, d := range []struct {
		dir     string
		all, h3 int64
	}{{"up", st.DatagramsUp, st.DatagramsUpH3}, {"down", st.DatagramsDown, st.DatagramsDownH3}} {
		ch <- prometheus.MustNewConstMetric(c.byTransport, prometheus.CounterValue, float64(d.h3), listener, d.dir, "h3")
		ch <- prometheus.MustNewConstMetric(c.byTransport, prometheus.CounterValue, float64(d.all-d.h3), listener, d.dir, "capsule")
	}
	for reason, v := range map[string]int64{"too_big": st.DroppedTooBig, "too_large": st.DroppedTooLarge, "queue_full": st.DroppedQueueFull,
		"too_many_flows": st.DroppedTooManyFlows, "bad_context": st.DroppedBadContext,
		"flow_closed": st.DroppedFlowClosed, "send_error": st.DroppedSendError} {
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(v), listener, reason)
	}
}

// hopCollector reports the node's UDP tunnels over HTTP/3 between mesh
// hops (proxy.Pool.UDPHopStats), as client and as server, at scrape time.
type hopCollector struct {
	n                                     *Node
	tunnels, dgrams, dropped, unreachable *prometheus.Desc
}

func newHopCollector(n *Node, labels prometheus.Labels) *hopCollector {
	return &hopCollector{n: n,
		tunnels:     prometheus.NewDesc("meshd_mesh_h3_tunnels_total", "UDP tunnels between mesh hops over HTTP/3: opened to peers, accepted from peers, fallback (carried over HTTP/2 because QUIC to the peer failed now or recently), dial_failed (QUIC dials that failed or timed out).", []string{"event"}, labels),
		dgrams:      prometheus.NewDesc("meshd_mesh_h3_datagrams_total", "HTTP/3 datagrams sent and received on UDP tunnels between mesh hops.", []string{"direction"}, labels),
		dropped:     prometheus.NewDesc("meshd_mesh_h3_dropped_total", "UDP payloads dropped on HTTP/3 hops: too_large (over one QUIC datagram), bad_context (a context ID other than 0), queue_full (received faster than the tunnel's next step took them).", []string{"reason"}, labels),
		unreachable: prometheus.NewDesc("meshd_mesh_h3_peers_unreachable", "Peers remembered as unreachable over HTTP/3, whose UDP flows go over HTTP/2 for now.", nil, labels),
	}
}

func (c *hopCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.tunnels, c.dgrams, c.dropped, c.unreachable} {
		ch <- d
	}
}

func (c *hopCollector) Collect(ch chan<- prometheus.Metric) {
	if c.n.pool == nil {
		return
	}
	st := c.n.pool.UDPHopStats()
	for _, e := range []struct {
		event string
		v     int64
	}{{"opened", st.H3Opened}, {"accepted", st.H3Accepted}, {"fallback", st.H3Fallbacks}, {"dial_failed", st.H3DialFails}} {
		ch <- prometheus.MustNewConstMetric(c.tunnels, prometheus.CounterValue, float64(e.v), e.event)
	}
	ch <- prometheus.MustNewConstMetric(c.dgrams, prometheus.CounterValue, float64(st.DatagramsSent), "sent")
	ch <- prometheus.MustNewConstMetric(c.dgrams, prometheus.CounterValue, float64(st.DatagramsReceived), "received")
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.DroppedTooLarge), "too_large")
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.DroppedBadContext), "bad_context")
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.DroppedQueueFull), "queue_full")
	ch <- prometheus.MustNewConstMetric(c.unreachable, prometheus.GaugeValue, float64(st.PeersNoH3))
}

// limitCollector reports each upstream's admission state (proxy.Pool.Limits)
// at scrape time.
type limitCollector struct {
	n                                *Node
	limit, inflight, queued, refused *prometheus.Desc
}

func newLimitCollector(n *Node, labels prometheus.Labels) *limitCollector {
	// service: the split of the upstream's limit by the service a
	// request is for (a gateway carries many); "" for the upstream's own.
	l := []string{"upstream", "service"}
	return &limitCollector{n: n,
		limit:    prometheus.NewDesc("meshd_upstream_concurrency_limit", "Requests the node admits at once to each upstream (adaptive or fixed).", l, labels),
		inflight: prometheus.NewDesc("meshd_upstream_inflight", "Requests sent to each upstream and waiting for their response header.", l, labels),
		queued:   prometheus.NewDesc("meshd_upstream_queued", "Requests waiting for a slot under each upstream's concurrency limit.", l, labels),
		refused:  prometheus.NewDesc("meshd_upstream_rejected_total", "Requests refused by each upstream's concurrency limit since its connections were created.", l, labels),
	}
}

func (c *limitCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.limit
	ch <- c.inflight
	ch <- c.queued
	ch <- c.refused
}

func (c *limitCollector) Collect(ch chan<- prometheus.Metric) {
	if c.n.pool == nil {
		return
	}
	for _, u := range c.n.pool.Limits() {
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(u.Limit), u.Key, u.Split)
		ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(u.InFlight), u.Key, u.Split)
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(u.Queued), u.Key, u.Split)
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(u.Rejected), u.Key, u.Split)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

type memberCollector struct {
	n    *Node
	desc *prometheus.Desc
}

func (c *memberCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *memberCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	for _, m := range c.n.snap.Load().Members {
		counts[m.Pool]++
	}
	for pool, v := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(v), pool)
	}
}

type serviceCollector struct {
	n    *Node
	desc *prometheus.Desc
}

func (c *serviceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *serviceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.n.snap.Load().Services {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(s.Healthy), s.Service, s.Region)
	}
}

// gossipCollector reports each gossip pool's members by state, the
// failure detector's messages and the pool's traffic (gossip.Stats), at
// scrape time.
type gossipCollector struct {
	n                                                            *Node
	bad, states, messages, packets, packetBytes, streams, sBytes *prometheus.Desc
	health                                                       *prometheus.Desc
}

func newGossipCollector(n *Node, labels prometheus.Labels) *gossipCollector {
	pool := []string{"pool"}
	return &gossipCollector{n: n,
		bad:         prometheus.NewDesc("meshd_gossip_bad_packets_total", "Packets and streams that gossip refused from the network (not authenticated, not decrypted or not decoded), per pool; their log lines are rate-limited.", pool, labels),
		states:      prometheus.NewDesc("meshd_gossip_members_by_state", "Members of each gossip pool by the failure detector's state (alive, suspect), this node included; dead and departed members are forgotten.", []string{"pool", "state"}, labels),
		messages:    prometheus.NewDesc("meshd_gossip_member_messages_total", "Failure-detector messages this node processed per pool, by kind: suspect (a suspicion, its own or gossiped), alive (a refutation or a join), dead.", []string{"pool", "kind"}, labels),
		packets:     prometheus.NewDesc("meshd_gossip_packets_total", "Gossip packets (UDP) per pool and direction (sent, received).", []string{"pool", "direction"}, labels),
		packetBytes: prometheus.NewDesc("meshd_gossip_packet_bytes_total", "Bytes of gossip packets per pool and direction.", []string{"pool", "direction"}, labels),
		streams:     prometheus.NewDesc("meshd_gossip_streams_total", "Gossip streams (TCP: joins, push/pull, large records) per pool, opened by this node or accepted.", []string{"pool", "direction"}, labels),
		sBytes:      prometheus.NewDesc("meshd_gossip_stream_bytes_sent_total", "Bytes this node sent on gossip streams, per pool.", pool, labels),
		health:      prometheus.NewDesc("meshd_gossip_health_score", "The failure detector's view of this node's own health per pool: 0 healthy; each point stretches its probe timeouts because its own answers were late.", pool, labels),
	}
}

func (c *gossipCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.bad, c.states, c.messages, c.packets, c.packetBytes, c.streams, c.sBytes, c.health} {
		ch <- d
	}
}

func (c *gossipCollector) Collect(ch chan<- prometheus.Metric) {
	// The pools are set during Start, before the node turns ready.
	if !c.n.ready.Load() && !c.n.draining.Load() {
		return
	}
	counter := func(d *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
	}
	for pool, g := range map[string]*gossip.Cluster{poolRegion: c.n.lan, poolGlobal: c.n.wan} {
		if g == nil {
			continue
		}
		st := g.Stats()
		counter(c.bad, g.BadPackets(), pool)
		ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, float64(st.Alive), pool, "alive")
		ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, float64(st.Suspect), pool, "suspect")
		counter(c.messages, st.SuspectMsgs, pool, "suspect")
		counter(c.messages, st.AliveMsgs, pool, "alive")
		counter(c.messages, st.DeadMsgs, pool, "dead")
		counter(c.packets, st.PacketsSent, pool, "sent")
		counter(c.packets, st.PacketsReceived, pool, "received")
		counter(c.packetBytes, st.PacketBytesSent, pool, "sent")
		counter(c.packetBytes, st.PacketBytesReceived, pool, "received")
		counter(c.streams, st.StreamsOpened, pool, "opened")
		counter(c.streams, st.StreamsAccepted, pool, "accepted")
		counter(c.sBytes, st.StreamBytesSent, pool)
		ch <- prometheus.MustNewConstMetric(c.health, prometheus.GaugeValue, float64(st.HealthScore), pool)
	}
}

// upstreamCollector reports the health of each mesh upstream the node
// keeps (instances, gateways), at scrape time.
type upstreamCollector struct {
	n                  *Node
	ejected, ejections *prometheus.Desc
}

func newUpstreamCollector(n *Node, labels prometheus.Labels) *upstreamCollector {
	l := []string{"upstream", "upstream_region"}
	return &upstreamCollector{n: n,
		ejected:   prometheus.NewDesc("meshd_upstream_ejected", "1 while the node keeps an upstream out of its balancing (it could not be reached several times in a row, or a policy's outlier detection ejected it), else 0.", l, labels),
		ejections: prometheus.NewDesc("meshd_upstream_ejections_total", "Times each upstream was ejected.", l, labels),
	}
}

func (c *upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.ejected
	ch <- c.ejections
}

func (c *upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	c.n.mu.Lock()
	ups := make([]*proxy.Upstream, 0, len(c.n.upstreams))
	for _, u := range c.n.upstreams {
		ups = append(ups, u)
	}
	c.n.mu.Unlock()
	for _, u := range ups {
		ch <- prometheus.MustNewConstMetric(c.ejected, prometheus.GaugeValue, b2f(u.Ejected(now)), u.Key, u.Region)
		ch <- prometheus.MustNewConstMetric(c.ejections, prometheus.CounterValue, float64(u.EjectionsTotal()), u.Key, u.Region)
	}
}
