package mesh

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// The dashboard's memory: for each listener and service, the last 15
// minutes of requests in 15-second buckets (counts per status class and a
// latency histogram each), kept by the node itself so that the dashboard
// answers "since when" without a Prometheus server. A timeline is about
// 11 KiB, one per listener and service the node served; the request path
// adds to it with atomics only.

const (
	tlStep  = 15 * time.Second
	tlSlots = 60 // 15 minutes
	// Latency buckets grow by √2 from 100 µs; the last holds everything
	// above about 74 s. A quantile read from them is within a factor of
	// 1.19 (√√2) of the truth.
	tlLatBuckets = 40
	tlLatBase    = 1e-4
)

type tlSlot struct {
	epoch atomic.Int64 // bucket number (unix time / tlStep) + 1; 0: never used
	codes [len(codeClasses)]atomic.Uint32
	lat   [tlLatBuckets]atomic.Uint32
}

type timeline struct {
	mu    sync.Mutex // serializes the reset of a slot for a new bucket
	slots [tlSlots]tlSlot
	total [len(codeClasses)]atomic.Int64 // since the node started
}

func newTimeline() *timeline { return new(timeline) }

func tlEpoch(t time.Time) int64 { return t.UnixNano()/int64(tlStep) + 1 }

// latIndex is the latency bucket of secs: bucket i > 0 holds
// (base·√2^(i-1), base·√2^i].
func latIndex(secs float64) int {
	if secs <= tlLatBase {
		return 0
	}
	frac, exp := math.Frexp(secs / tlLatBase) // secs/base = frac·2^exp, frac in [0.5, 1)
	i := 2*exp - 1
	if frac > math.Sqrt2/2 {
		i++
	}
	return min(max(i, 0), tlLatBuckets-1)
}

// latUpper is the upper bound of latency bucket i, in seconds.
func latUpper(i int) float64 { return tlLatBase * math.Pow(math.Sqrt2, float64(i)) }

// add counts one request that ended at now.
func (t *timeline) add(now time.Time, class uint8, secs float64) {
	t.total[class].Add(1)
	e := tlEpoch(now)
	if e <= 0 {
		return // before 1970: a clock nobody should trust
	}
	s := &t.slots[e%tlSlots]
	if s.epoch.Load() != e {
		t.mu.Lock()
		if s.epoch.Load() < e {
			for i := range s.codes {
				s.codes[i].Store(0)
			}
			for i := range s.lat {
				s.lat[i].Store(0)
			}
			s.epoch.Store(e)
		}
		t.mu.Unlock()
		if s.epoch.Load() != e {
			return // a request older than the slot's bucket: its time has passed
		}
	}
	s.codes[class].Add(1)
	s.lat[latIndex(secs)].Add(1)
}

// TimelinePoint is one bucket of a dashboard timeline.
type TimelinePoint struct {
	// Start is the bucket's start, unix seconds.
	Start int64 `json:"t"`
	// Requests ended in the bucket; Errors among them answered 5xx.
	Requests int64 `json:"n"`
	Errors   int64 `json:"err"`
	// P50 and P99 are the bucket's latency quantiles in milliseconds
	// (upper bounds of the histogram buckets they fall in), 0 without
	// requests.
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
}

// points returns the timeline's buckets of the last 15 minutes up to now,
// oldest first.
func (t *timeline) points(now time.Time) []TimelinePoint {
	out := make([]TimelinePoint, 0, tlSlots)
	last := tlEpoch(now)
	for e := last - tlSlots + 1; e <= last; e++ {
		p := TimelinePoint{Start: (e - 1) * int64(tlStep/time.Second)}
		s := &t.slots[e%tlSlots]
		if s.epoch.Load() == e {
			var lat [tlLatBuckets]int64
			for i := range s.codes {
				v := int64(s.codes[i].Load())
				p.Requests += v
				if i == 4 {
					p.Errors += v
				}
			}
			for i := range s.lat {
				lat[i] = int64(s.lat[i].Load())
			}
			p.P50, p.P99 = quantileMillis(lat[:], 0.5), quantileMillis(lat[:], 0.99)
		}
		out = append(out, p)
	}
	return out
}

// latency adds to lat the latency histogram of the i-th of the buckets
// points(now) returns, when it is still held.
func (t *timeline) latency(now time.Time, i int, lat *[tlLatBuckets]int64) {
	e := tlEpoch(now) - tlSlots + 1 + int64(i)
	s := &t.slots[e%tlSlots]
	if s.epoch.Load() != e {
		return
	}
	for j := range s.lat {
		lat[j] += int64(s.lat[j].Load())
	}
}

// quantileMillis is the q-quantile of a latency histogram in
// milliseconds: the upper bound of the bucket it falls in; 0 when empty.
func quantileMillis(lat []int64, q float64) float64 {
	var n int64
	for _, v := range lat {
		n += v
	}
	if n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(n)))
	var seen int64
	for i, v := range lat {
		if seen += v; seen >= rank {
			return math.Round(latUpper(i)*1e6) / 1e3
		}
	}
	return math.Round(latUpper(len(lat)-1)*1e6) / 1e3
}
