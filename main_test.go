package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

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

// A mistyped flag gets one line that names it and says where the flags
// are listed, not the whole list around it; -h still lists them.
func TestFlagErrorsAreShort(t *testing.T) {
	for _, args := range [][]string{
		{"run", "--rol=edge"},
		{"members", "--bogus"},
		{"cache", "purge", "--bogus"},
		{"run", "--role=edge", "extra"},
	} {
		var stderr strings.Builder
		err := run(context.Background(), args, io.Discard, &stderr)
		if !errors.Is(err, errUsage) {
			t.Errorf("%v: err %v, want a usage error", args, err)
			continue
		}
		if want := "see meshd " + args[0]; !strings.Contains(err.Error(), want) {
			t.Errorf("%v: %q does not say %q", args, err, want)
		}
		if stderr.Len() != 0 {
			t.Errorf("%v: printed %d bytes besides the error:\n%s", args, stderr.Len(), stderr.String())
		}
	}
	var stderr strings.Builder
	err := run(context.Background(), []string{"run", "-h"}, io.Discard, &stderr)
	if !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr.String(), "-allow-callers") {
		t.Errorf("run -h: %v, printed %q; want the flag list", err, stderr.String())
	}
}
