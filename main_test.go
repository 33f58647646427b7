package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/meshd/meshd/mesh"
)

// Each role gets its own collector settings, and an operator's GOGC or
// GOMEMLIMIT replaces the role's choice of that one setting only.
func TestTuneGC(t *testing.T) {
	env := func(kv map[string]string) func(string) string {
		return func(k string) string { return kv[k] }
	}
	const cache = 256 << 20
	tests := []struct {
		name  string
		role  string
		env   map[string]string
		cache int64
		want  gcPolicy
	}{
		{"edge with the default cache", mesh.RoleEdge, nil, cache, gcPolicy{edgeGCPercent, cache + gcHeadroom}},
		{"edge without a cache", mesh.RoleEdge, nil, 0, gcPolicy{edgeGCPercent, gcHeadroom}},
		{"gateway", mesh.RoleGateway, nil, 0, gcPolicy{gatewayGCPercent, gcHeadroom}},
		{"sidecar", mesh.RoleSidecar, nil, 0, gcPolicy{sidecarGCPercent, 0}},
		{"edge, GOGC chosen by the operator", mesh.RoleEdge, map[string]string{"GOGC": "100"}, cache, gcPolicy{0, cache + gcHeadroom}},
		{"edge, GOMEMLIMIT chosen by the operator", mesh.RoleEdge, map[string]string{"GOMEMLIMIT": "2GiB"}, cache, gcPolicy{edgeGCPercent, 0}},
		{"edge, both chosen by the operator", mesh.RoleEdge, map[string]string{"GOGC": "off", "GOMEMLIMIT": "2GiB"}, cache, gcPolicy{0, 0}},
		{"sidecar, GOGC chosen by the operator", mesh.RoleSidecar, map[string]string{"GOGC": "50"}, 0, gcPolicy{0, 0}},
		{"gateway, GOMEMLIMIT chosen by the operator", mesh.RoleGateway, map[string]string{"GOMEMLIMIT": "512MiB"}, 0, gcPolicy{gatewayGCPercent, 0}},
	}
	for _, tt := range tests {
		got, err := tuneGC(env(tt.env), tt.role, tt.cache)
		if err != nil || got != tt.want {
			t.Errorf("%s: tuneGC = %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
	// A GOGC the runtime would read as 100 is refused, naming it.
	for _, v := range []string{"abc", "1.5", "400%", "OFF"} {
		_, err := tuneGC(env(map[string]string{"GOGC": v}), mesh.RoleSidecar, 0)
		if err == nil || !strings.Contains(err.Error(), "GOGC="+v) {
			t.Errorf("GOGC=%s: err = %v; want one naming GOGC=%s", v, err, v)
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

// TestRunTracingFlags: --otlp-endpoint and --otlp-sample-ratio reach the
// node's config, and a bad value is refused with the flag named before
// anything starts.
func TestRunTracingFlags(t *testing.T) {
	for _, c := range []struct{ flag, value, want string }{
		{"--otlp-endpoint", "ftp://collector:4318", "otlp-endpoint: "},
		{"--otlp-endpoint", "http://user:secret@collector:4318", "otlp-endpoint: "},
		{"--otlp-sample-ratio", "2", "otlp-sample-ratio: "},
	} {
		args := []string{"run", "--role=gateway", "--name=gw", "--region=eu", "--ca-dir", t.TempDir(),
			"--admin", "", "--listen", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--wan-gossip-addr", "127.0.0.1:0",
			c.flag, c.value}
		err := run(context.Background(), args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %s: %v, want an error naming %q", c.flag, c.value, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s %s: the error shows the password: %v", c.flag, c.value, err)
		}
	}
}
