package mesh

import (
	"strings"
	"testing"
)

func TestPublicService(t *testing.T) {
	domains := map[string]string{"www.example.com": "web"}
	tests := []struct {
		host, want string
		ok         bool
	}{
		{"web.localhost", "web", true},
		{"web.localhost:8480", "web", true},
		{"WEB.LocalHost.", "web", true},
		{"www.example.com", "web", true},
		{"www.example.com:443", "web", true},
		{"localhost", "", false},
		{".localhost", "", false},
		{"a.web.localhost", "", false},
		{"web.localhost.evil.com", "", false},
		{"weblocalhost", "", false},
		{"web_1.localhost", "", false},
		{"-web.localhost", "", false},
		{"web.localhost:80x", "", false},
		{"[::1]:80", "", false},
		{"", "", false},
		{"web.localhost\x00", "", false},
		{strings.Repeat("a", 64) + ".localhost", "", false},
	}
	for _, tt := range tests {
		got, ok := publicService(tt.host, "localhost", domains)
		if got != tt.want || ok != tt.ok {
			t.Errorf("publicService(%q) = %q, %v; want %q, %v", tt.host, got, ok, tt.want, tt.ok)
		}
	}
}

func TestMeshService(t *testing.T) {
	tests := []struct {
		host, want string
		ok         bool
	}{
		{"web.mesh", "web", true},
		{"api.mesh:80", "api", true},
		{"web.mesh.", "web", true},
		{"mesh", "", false},
		{"web.example.com", "", false},
		{"x.web.mesh", "", false},
	}
	for _, tt := range tests {
		got, ok := meshService(tt.host)
		if got != tt.want || ok != tt.ok {
			t.Errorf("meshService(%q) = %q, %v; want %q, %v", tt.host, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzHostRouting(f *testing.F) {
	for _, s := range []string{"web.localhost", "web.localhost:8480", "www.example.com", "web.mesh", "[::1]:1", "A.B.C.", "x:y:z"} {
		f.Add(s)
	}
	domains := map[string]string{"www.example.com": "web"}
	f.Fuzz(func(t *testing.T, host string) {
		for _, route := range []func() (string, bool){
			func() (string, bool) { return publicService(host, "localhost", domains) },
			func() (string, bool) { return meshService(host) },
		} {
			svc, ok := route()
			if !ok {
				continue
			}
			// A routed host always names a valid service, and the host
			// (lowercased, port and trailing dot gone) contains it.
			if validLabel(svc) != nil {
				t.Fatalf("host %q routed to invalid service %q", host, svc)
			}
			if _, published := domains[normalizeHost(host)]; !published && !strings.Contains(strings.ToLower(host), svc) {
				t.Fatalf("host %q routed to %q", host, svc)
			}
		}
	})
}

func TestGatewayHTTP1(t *testing.T) {
	tests := []struct {
		own, peer string
		want      bool
	}{
		{"eu", "eu", true},
		{"eu", "us", false},
		{"", "eu", false}, // an edge without a region
	}
	for _, tt := range tests {
		if got := gatewayHTTP1(tt.own, tt.peer); got != tt.want {
			t.Errorf("gatewayHTTP1(%q, %q) = %v, want %v", tt.own, tt.peer, got, tt.want)
		}
	}
}
