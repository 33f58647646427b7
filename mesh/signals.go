package mesh

import (
	"cmp"
	"slices"
	"time"
)

// Signals is what /v1/signals reports: the golden signals of every
// listener and service the node served, from its own memory (timeline.go),
// for the dashboard.
type Signals struct {
	Node   string `json:"node"`
	Role   string `json:"role"`
	Region string `json:"region,omitempty"`
	// Now is the node's clock (unix seconds); Step the length of a
	// timeline bucket in seconds; Window the seconds that Rate,
	// SuccessRate and the quantiles cover.
	Now    int64    `json:"now"`
	Step   int64    `json:"step_seconds"`
	Window int64    `json:"window_seconds"`
	Lines  []Signal `json:"signals"`
}

// Signal is one listener's and service's golden signals.
type Signal struct {
	// Listener is the hop: public (an edge's), mesh (a gateway's, or a
	// sidecar's inbound), outbound (a sidecar's, for its app).
	Listener string `json:"listener"`
	Service  string `json:"service"`
	// Requests and Errors (5xx) since the node started: the sums of
	// meshd_requests_total over the listener and service.
	Requests int64            `json:"requests"`
	Errors   int64            `json:"errors"`
	ByClass  map[string]int64 `json:"by_class"`
	// Over the last Window seconds: requests per second, the share that
	// was not a 5xx (1 without requests) and latency quantiles (ms).
	Rate        float64 `json:"rate"`
	SuccessRate float64 `json:"success_rate"`
	P50         float64 `json:"p50_ms"`
	P99         float64 `json:"p99_ms"`
	// Points are the last 15 minutes, oldest first.
	Points []TimelinePoint `json:"points"`
}

// signalWindow is how far back the dashboard's "now" numbers look: four
// buckets and the current one.
const signalWindow = 5

func (n *Node) signals(now time.Time) Signals {
	out := Signals{Node: n.Config.Name, Role: n.Config.Role, Region: n.Config.Region, Now: now.Unix(),
		Step: int64(tlStep / time.Second), Lines: []Signal{}}
	// The window starts where its oldest bucket starts; the current
	// bucket counts for the part of it that passed.
	elapsed := now.Sub(time.Unix(0, (tlEpoch(now)-1)*int64(tlStep)))
	window := elapsed + (signalWindow-1)*tlStep
	out.Window = int64(window.Round(time.Second) / time.Second)
	for k, t := range n.reqs.lines.snapshot() {
		s := Signal{Listener: k.listener, Service: k.service, ByClass: map[string]int64{}}
		for i := range t.total {
			if v := t.total[i].Load(); v > 0 {
				s.ByClass[codeClasses[i]] = v
				s.Requests += v
			}
		}
		s.Errors = s.ByClass["5xx"]
		var recent [tlLatBuckets]int64
		s.Points = t.points(now)
		var reqs, errs int64
		for i, p := range s.Points[len(s.Points)-signalWindow:] {
			reqs += p.Requests
			errs += p.Errors
			t.latency(now, len(s.Points)-signalWindow+i, &recent)
		}
		s.Rate = float64(reqs) / window.Seconds()
		s.SuccessRate = 1
		if reqs > 0 {
			s.SuccessRate = float64(reqs-errs) / float64(reqs)
		}
		s.P50, s.P99 = quantileMillis(recent[:], 0.5), quantileMillis(recent[:], 0.99)
		out.Lines = append(out.Lines, s)
	}
	slices.SortFunc(out.Lines, func(a, b Signal) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(listenerOrder(a.Listener), listenerOrder(b.Listener)))
	})
	return out
}

// listenerOrder sorts a service's hops in the order requests cross them.
func listenerOrder(l string) int {
	switch l {
	case "outbound":
		return 0
	case "public":
		return 1
	}
	return 2
}
