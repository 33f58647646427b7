package proxy

import (
	"net"
	"strings"
	"testing"
)

func TestValidHost(t *testing.T) {
	tests := []struct {
		host string
		want bool
	}{
		{"example.test", true},
		{"Example.TEST.", true},
		{"a-b_c.example", true},
		{"example.test:443", true},
		{"127.0.0.1", true},
		{"127.0.0.1:8080", true},
		{"[::1]", true},
		{"[2001:db8::1]:443", true},
		{strings.Repeat("a", 63) + ".test", true},
		{"", false},
		{":443", false},
		{".", false},
		{"a..b", false},
		{".a", false},
		{"example.test:", false},
		{"example.test:0", false},
		{"example.test:65536", false},
		{"example.test:+80", false},
		{"example.test:1:2", false},
		{"[::1", false},
		{"::1", false},
		{"[::1]x", false},
		{"[::1]:", false},
		{"[fe80::1%25eth0]", false},
		{"[127.0.0.1]", false},
		{"[]", false},
		{"user@example.test", false},
		{"ex%41mple.test", false},
		{"exa mple", false},
		{"a!b", false},
		{strings.Repeat("a", 64) + ".test", false},
		{strings.Repeat("a.", 127) + "ab", false}, // 256 bytes
		{"é.test", false},
	}
	for _, tt := range tests {
		if got := validHost(tt.host); got != tt.want {
			t.Errorf("validHost(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}
}

// FuzzValidHost checks that what validHost accepts is safe to put back on
// the wire and into logs: no byte outside the host grammar, and a port that
// Go's own parser reads the same way.
func FuzzValidHost(f *testing.F) {
	for _, s := range []string{"example.test", "example.test:443", "[::1]:80", "a..b", "[::1", "x:0", "h:65535", "%41", "[::ffff:1.2.3.4]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		if !validHost(h) {
			return
		}
		for i := 0; i < len(h); i++ {
			c := h[i]
			if c <= ' ' || c >= 0x7f || strings.IndexByte(`"%@\/?#!$&'()*+,;=<>{}|^`+"`", c) >= 0 {
				t.Fatalf("validHost(%q) accepted byte %q", h, c)
			}
		}
		host, port, ok := splitHostPort(h)
		if !ok || host == "" {
			t.Fatalf("validHost(%q) but splitHostPort fails", h)
		}
		if port != "" {
			gh, gp, err := net.SplitHostPort(h)
			if err != nil || gp != port || "["+gh+"]" != host && gh != host {
				t.Fatalf("validHost(%q): split %q %q, Go splits %q %q %v", h, host, port, gh, gp, err)
			}
		}
		if hn := hostName(h); hn == "" || strings.Contains(hn, ":") && !strings.HasPrefix(hn, "[") {
			t.Fatalf("hostName(%q) = %q", h, hn)
		}
	})
}
