package mesh

import (
	"testing"
	"time"
)

// TestTimeline: requests land in their 15-second bucket with their class
// and latency; quantiles are the upper bounds of their latency buckets;
// after 15 minutes a bucket's slot is reused and the old counts are gone,
// while the totals since start stay.
func TestTimeline(t *testing.T) {
	tl := newTimeline()
	t0 := time.Unix(1_800_000_000, 0) // a bucket boundary: divisible by 15
	for i := range 98 {
		tl.add(t0.Add(time.Duration(i)*10*time.Millisecond), codeClass(200), 0.002) // 2 ms
	}
	tl.add(t0.Add(time.Second), codeClass(503), 0.5)
	tl.add(t0.Add(time.Second), codeClass(404), 0.5)
	tl.add(t0.Add(16*time.Second), codeClass(200), 0.010)

	pts := tl.points(t0.Add(20 * time.Second))
	if len(pts) != tlSlots {
		t.Fatalf("%d points, want %d", len(pts), tlSlots)
	}
	cur, prev := pts[len(pts)-1], pts[len(pts)-2]
	if prev.Start != t0.Unix() || cur.Start != t0.Unix()+15 {
		t.Fatalf("bucket starts %d, %d; want %d, %d", prev.Start, cur.Start, t0.Unix(), t0.Unix()+15)
	}
	if prev.Requests != 100 || prev.Errors != 1 || cur.Requests != 1 || cur.Errors != 0 {
		t.Fatalf("buckets %+v, %+v: want 100 requests with 1 error, then 1", prev, cur)
	}
	// 2 ms falls in (1.6 ms, 2.26 ms]; 0.5 s in (0.41 s, 0.58 s].
	if prev.P50 != 2.263 || prev.P99 != 579.262 {
		t.Errorf("p50 %v ms, p99 %v ms; want 2.263 and 579.262", prev.P50, prev.P99)
	}
	for _, p := range pts[:len(pts)-2] {
		if p.Requests != 0 || p.P50 != 0 {
			t.Fatalf("an empty bucket holds %+v", p)
		}
	}

	// 15 minutes later the first bucket's slot holds a new bucket.
	later := t0.Add(tlSlots * tlStep)
	tl.add(later, codeClass(200), 0.001)
	pts = tl.points(later)
	if last := pts[len(pts)-1]; last.Requests != 1 || last.Start != later.Unix() {
		t.Fatalf("reused slot: %+v, want 1 request at %d", last, later.Unix())
	}
	if pts[0].Requests != 0 && pts[0].Start == t0.Unix() {
		t.Fatalf("the first bucket is still there 15 minutes later: %+v", pts[0])
	}
	// A request that ended in a bucket whose slot moved on is dropped.
	tl.add(t0.Add(time.Second), codeClass(200), 0.001)
	if got := tl.points(later)[len(pts)-1].Requests; got != 1 {
		t.Fatalf("a late request changed the new bucket: %d requests", got)
	}
	if got := tl.total[codeClass(200)].Load(); got != 101 {
		t.Errorf("2xx since start: %d, want 101", got)
	}
}

func TestLatIndex(t *testing.T) {
	for i := 1; i < tlLatBuckets-1; i++ {
		hi := latUpper(i)
		if got := latIndex(hi * 0.999); got != i {
			t.Errorf("latIndex(%g) = %d, want %d", hi*0.999, got, i)
		}
		if got := latIndex(hi * 1.001); got != i+1 {
			t.Errorf("latIndex(%g) = %d, want %d", hi*1.001, got, i+1)
		}
	}
	if latIndex(0) != 0 || latIndex(1e6) != tlLatBuckets-1 {
		t.Errorf("latIndex(0) = %d, latIndex(1e6) = %d", latIndex(0), latIndex(1e6))
	}
}
