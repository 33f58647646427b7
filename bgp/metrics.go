package bgp

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The speaker is its own Prometheus collector: it reads Status at scrape
// time, so nothing is updated on any path but the scrape.
var _ prometheus.Collector = (*Speaker)(nil)

var (
	descPeerUp = prometheus.NewDesc("meshd_bgp_peer_up",
		"1 if the BGP session with the peer is established, else 0.", []string{"peer"}, nil)
	descPeerState = prometheus.NewDesc("meshd_bgp_peer_session_state",
		"BGP session state (RFC 4271 8.2.2): 1 idle, 2 connect, 3 active, 4 opensent, 5 openconfirm, 6 established.", []string{"peer"}, nil)
	descPeerFlaps = prometheus.NewDesc("meshd_bgp_peer_flaps_total",
		"Times the BGP session went down after being established.", []string{"peer"}, nil)
	descPeerBFDUp = prometheus.NewDesc("meshd_bgp_peer_bfd_up",
		"1 if the BFD session with the peer is up, else 0; only for peers with BFD.", []string{"peer"}, nil)
	descAnnounced = prometheus.NewDesc("meshd_bgp_announced_prefixes",
		"Anycast prefixes currently announced (also while prepended for drain).", nil, nil)
	descChanges = prometheus.NewDesc("meshd_bgp_route_changes_total",
		"Changes of the anycast announcement applied, by action.", []string{"action"}, nil)
	descLibErrors = prometheus.NewDesc("meshd_bgp_library_errors_total",
		"Error records logged by the embedded gobgp server.", nil, nil)
)

var stateNumber = map[string]float64{
	"idle": 1, "connect": 2, "active": 3, "opensent": 4, "openconfirm": 5, "established": 6,
}

// Describe implements prometheus.Collector.
func (s *Speaker) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeerUp, descPeerState, descPeerFlaps, descPeerBFDUp, descAnnounced, descChanges, descLibErrors} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (s *Speaker) Collect(ch chan<- prometheus.Metric) {
	st := s.Status()
	for _, p := range st.Peers {
		peer := p.Addr.String()
		up := 0.0
		if p.State == "established" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descPeerUp, prometheus.GaugeValue, up, peer)
		ch <- prometheus.MustNewConstMetric(descPeerState, prometheus.GaugeValue, stateNumber[p.State], peer)
		ch <- prometheus.MustNewConstMetric(descPeerFlaps, prometheus.CounterValue, float64(p.Flaps), peer)
		if p.BFD != "" {
			bfdUp := 0.0
			if p.BFD == "up" {
				bfdUp = 1
			}
			ch <- prometheus.MustNewConstMetric(descPeerBFDUp, prometheus.GaugeValue, bfdUp, peer)
		}
	}
	n := 0
	for _, p := range st.Prefixes {
		if p.State != modeWithdrawn.String() {
			n++
		}
	}
	ch <- prometheus.MustNewConstMetric(descAnnounced, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(descChanges, prometheus.CounterValue, float64(st.Announcements), "announce")
	ch <- prometheus.MustNewConstMetric(descChanges, prometheus.CounterValue, float64(st.Prepends), "prepend")
	ch <- prometheus.MustNewConstMetric(descChanges, prometheus.CounterValue, float64(st.Withdrawals), "withdraw")
	ch <- prometheus.MustNewConstMetric(descLibErrors, prometheus.CounterValue, float64(s.libErrors.Load()))
}
