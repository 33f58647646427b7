package proxy

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestPoolRoundTrip(t *testing.T) {
	_, up := plainUpstream(t, http.HandlerFunc(echoHandler))
	p := &Pool{}
	t.Cleanup(p.CloseIdle)
	req, _ := http.NewRequest("GET", "/path?q=1", nil)
	req.Host = "web.mesh"
	resp, err := p.RoundTrip(up, req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	s := decodeSeen(t, string(b))
	if s.Host != "web.mesh" || s.URI != "/path?q=1" {
		t.Errorf("upstream saw Host %q target %q", s.Host, s.URI)
	}
	if req.URL.Scheme != "http" || req.URL.Host != up.Addr {
		t.Errorf("URL %q: scheme and host not set from the upstream", req.URL)
	}
	if s.Header.Get("Accept-Encoding") != "" {
		t.Errorf("pool added Accept-Encoding %q", s.Header.Get("Accept-Encoding"))
	}
}

func TestPoolBadInput(t *testing.T) {
	tests := []struct {
		name string
		p    *Pool
		u    *Upstream
		want string
	}{
		{"nil upstream", &Pool{}, nil, "key"},
		{"no key", &Pool{}, &Upstream{Addr: "127.0.0.1:1"}, "key"},
		{"no addr", &Pool{}, &Upstream{Key: "k"}, "address"},
		{"negative idle", &Pool{MaxIdlePerUpstream: -1}, &Upstream{Key: "k", Addr: "127.0.0.1:1"}, "MaxIdlePerUpstream"},
		{"negative header timeout", &Pool{ResponseHeaderTimeout: -time.Second}, &Upstream{Key: "k", Addr: "127.0.0.1:1"}, "ResponseHeaderTimeout"},
		{"negative idle timeout", &Pool{IdleTimeout: -time.Second}, &Upstream{Key: "k", Addr: "127.0.0.1:1"}, "IdleTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "/", nil)
			resp, err := tt.p.RoundTrip(tt.u, req)
			if err == nil {
				resp.Body.Close()
				t.Fatal("RoundTrip succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not name %s", err, tt.want)
			}
			if tt.p.Len() != 0 {
				t.Error("bad input created a transport")
			}
		})
	}
}

func TestPoolForget(t *testing.T) {
	_, a := plainUpstream(t, http.HandlerFunc(echoHandler))
	_, b := plainUpstream(t, http.HandlerFunc(echoHandler))
	p := &Pool{}
	t.Cleanup(p.CloseIdle)
	for _, u := range []*Upstream{a, b, a} {
		req, _ := http.NewRequest("GET", "/", nil)
		resp, err := p.RoundTrip(u, req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if n := p.Len(); n != 2 {
		t.Fatalf("%d transports, want 2 (one per Key)", n)
	}
	p.Forget(func(key string) bool { return key == a.Key })
	if n := p.Len(); n != 1 {
		t.Fatalf("%d transports after Forget, want 1", n)
	}
	p.Forget(func(string) bool { return true })
	if n := p.Len(); n != 1 {
		t.Fatalf("Forget keeping everything dropped transports: %d left", n)
	}
}

func TestPoolDialErrorIsMarked(t *testing.T) {
	addr := refusedAddr(t)
	p := &Pool{DialTimeout: time.Second}
	req, _ := http.NewRequest("GET", "/", nil)
	_, err := p.RoundTrip(&Upstream{Key: addr, Addr: addr}, req)
	if err == nil || !isDialError(err) {
		t.Fatalf("error %v is not marked as a dial error", err)
	}
	if isDialError(errors.New("connection reset")) {
		t.Error("plain error marked as dial error")
	}
}
