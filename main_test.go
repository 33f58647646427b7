package main

import "testing"

func TestTuneGC(t *testing.T) {
	env := func(kv map[string]string) func(string) string {
		return func(k string) string { return kv[k] }
	}
	tests := []struct {
		name      string
		env       map[string]string
		cache     int64
		wantPct   int
		wantLimit int64
	}{
		{"edge with the default cache", nil, 256 << 20, gcPercent, 256<<20 + gcHeadroom},
		{"no cache", nil, 0, gcPercent, gcHeadroom},
		{"GOGC chosen by the operator", map[string]string{"GOGC": "100"}, 256 << 20, 0, 0},
		{"GOMEMLIMIT chosen by the operator", map[string]string{"GOMEMLIMIT": "2GiB"}, 0, 0, 0},
	}
	for _, tt := range tests {
		pct, limit := tuneGC(env(tt.env), tt.cache)
		if pct != tt.wantPct || limit != tt.wantLimit {
			t.Errorf("%s: tuneGC = %d, %d; want %d, %d", tt.name, pct, limit, tt.wantPct, tt.wantLimit)
		}
	}
}
