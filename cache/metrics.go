package cache

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the store's Prometheus collectors. Counters are atomic;
// the gauges read atomics kept by set and release.
type metrics struct {
	hits          prometheus.Counter
	misses        prometheus.Counter
	staleServed   prometheus.Counter
	revalidations prometheus.Counter
	notModified   prometheus.Counter
	stores        prometheus.Counter
	rejections    prometheus.Counter
	dropped       prometheus.Counter
	evictions     prometheus.Counter
	purged        prometheus.Counter
	collapsed     prometheus.Counter

	objects atomic.Int64
	bytes   atomic.Int64
	gauges  []prometheus.Collector
}

func newMetrics() *metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "meshd", Subsystem: "cache", Name: name, Help: help,
		})
	}
	return &metrics{
		hits:          c("hits_total", "Requests answered from the cache without contacting the origin."),
		misses:        c("misses_total", "Cacheable requests forwarded because nothing usable was stored."),
		staleServed:   c("stale_served_total", "Stale responses served (stale-while-revalidate, stale-if-error, max-stale)."),
		revalidations: c("revalidations_total", "Conditional requests sent to revalidate a stored response."),
		notModified:   c("revalidations_not_modified_total", "Revalidations answered 304 Not Modified."),
		stores:        c("stores_total", "Responses handed to the store."),
		rejections:    c("rejections_total", "Responses refused by the admission policy."),
		dropped:       c("dropped_sets_total", "Stores dropped because the store's buffer was full."),
		evictions:     c("evictions_total", "Entries evicted for space or expiry."),
		purged:        c("purged_total", "Entries removed by purge requests."),
		collapsed:     c("collapsed_total", "Requests answered by waiting for a concurrent request's response."),
	}
}

// bind creates the gauges reading st's counters.
func (m *metrics) bind(st *state) {
	m.gauges = []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "meshd", Subsystem: "cache", Name: "objects",
			Help: "Responses in the cache.",
		}, func() float64 { return float64(m.objects.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "meshd", Subsystem: "cache", Name: "bytes",
			Help: "Bytes of responses in the cache (headers and bodies).",
		}, func() float64 { return float64(m.bytes.Load()) }),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return append([]prometheus.Collector{
		m.hits, m.misses, m.staleServed, m.revalidations, m.notModified, m.stores,
		m.rejections, m.dropped, m.evictions, m.purged, m.collapsed,
	}, m.gauges...)
}
