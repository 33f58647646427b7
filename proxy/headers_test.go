package proxy

import (
	"net/http"
	"net/netip"
	"net/textproto"
	"slices"
	"strings"
	"testing"
)

func TestIsHopByHop(t *testing.T) {
	hop := []string{"Connection", "connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "TE", "Trailer", "Transfer-Encoding", "Upgrade", "UPGRADE"}
	end := []string{"Content-Length", "Via", "X-Forwarded-For", "Tee", "Trailers", "Host", "", "Connections"}
	for _, k := range hop {
		if !isHopByHop(k) {
			t.Errorf("%q not hop-by-hop", k)
		}
	}
	for _, k := range end {
		if isHopByHop(k) {
			t.Errorf("%q hop-by-hop", k)
		}
	}
}

func TestHasToken(t *testing.T) {
	tests := []struct {
		values []string
		token  string
		want   bool
	}{
		{[]string{"keep-alive, Upgrade"}, "upgrade", true},
		{[]string{"keep-alive", " x-a ,\tx-b "}, "X-B", true},
		{[]string{"keep-alive,,"}, "x", false},
		{[]string{"upgraded"}, "upgrade", false},
		{nil, "upgrade", false},
		{[]string{""}, "", false},
	}
	for _, tt := range tests {
		if got := hasToken(tt.values, tt.token); got != tt.want {
			t.Errorf("hasToken(%q, %q) = %v, want %v", tt.values, tt.token, got, tt.want)
		}
	}
}

func TestForwardedValue(t *testing.T) {
	tests := []struct {
		ip, proto, host string
		want            string
	}{
		{"192.0.2.1", "https", "web.example", `for=192.0.2.1;proto=https;host="web.example"`},
		{"2001:db8::1", "http", "web.example:8080", `for="[2001:db8::1]";proto=http;host="web.example:8080"`},
		{"", "http", "", `proto=http`},
		{"192.0.2.1", "http", `bad"host`, `for=192.0.2.1;proto=http`},
	}
	for _, tt := range tests {
		if got := forwardedValue(tt.ip, tt.proto, tt.host); got != tt.want {
			t.Errorf("forwardedValue(%q, %q, %q) = %q, want %q", tt.ip, tt.proto, tt.host, got, tt.want)
		}
	}
}

func TestOutgoingHeaderDoesNotShareValues(t *testing.T) {
	in := http.Header{"A": {"1"}, "B": {"2"}, "Via": {"1.0 x"}}
	out := outgoingHeader(in, &forwardInfo{via: "1.1 me"})
	out["A"] = append(out["A"], "appended")
	out.Add("Via", "later")
	if got := out["B"]; !slices.Equal(got, []string{"2"}) {
		t.Errorf("append to A overwrote B: %q", got)
	}
	if got := in["Via"]; !slices.Equal(got, []string{"1.0 x"}) {
		t.Errorf("incoming Via changed: %q", got)
	}
	if got := out["Via"]; !slices.Equal(got, []string{"1.0 x", "1.1 me", "later"}) {
		t.Errorf("Via %q", got)
	}
}

func TestOutgoingHeaderAllocations(t *testing.T) {
	in := http.Header{
		"Accept": {"*/*"}, "User-Agent": {"curl/8"}, "Connection": {"keep-alive"},
		"X-Request-Id": {"abc"}, "Cookie": {"a=b"},
	}
	fi := &forwardInfo{via: "1.1 me"}
	allocs := testing.AllocsPerRun(100, func() { _ = outgoingHeader(in, fi) })
	// The map (its header and one group of slots) and one backing array
	// of values.
	if allocs > 3 {
		t.Errorf("outgoingHeader allocates %.0f times, want at most 3", allocs)
	}
}

// FuzzOutgoingHeader checks header hygiene for any incoming field name,
// value and Connection list: no hop-by-hop field or field named by
// Connection survives (except those this hop sets itself), this hop is the
// last Via entry, and a public hop forwards no X-Mesh-* field.
func FuzzOutgoingHeader(f *testing.F) {
	f.Add("X-Hop", "1", "keep-alive, X-Hop", false, "1.0 fred")
	f.Add("Keep-Alive", "300", "", true, "")
	f.Add("X-Mesh-Service", "billing", "", true, "")
	f.Add("Te", "trailers, deflate", "te", false, "")
	f.Add("Via", "1.1 a", "Via", true, "2 b")
	f.Add("X-Forwarded-For", "6.6.6.6", "x-forwarded-for", true, "")
	f.Add(":protocol", "websocket", ",,,", false, "")
	f.Fuzz(func(t *testing.T, name, value, conn string, public bool, via string) {
		in := http.Header{}
		if name != "" {
			in[name] = []string{value}
		}
		if conn != "" {
			in["Connection"] = append(in["Connection"], conn)
		}
		if via != "" {
			in["Via"] = append(in["Via"], via)
		}
		fi := &forwardInfo{via: "1.1 me", public: public, clientIP: "192.0.2.1", proto: "http", host: "h"}
		out := outgoingHeader(in, fi)
		added := map[string]bool{"Via": true, "Te": true, "User-Agent": true}
		if public {
			for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded"} {
				added[k] = true
			}
		}
		for k, vv := range out {
			if added[k] {
				continue
			}
			if isHopByHop(k) {
				t.Errorf("hop-by-hop field %q forwarded", k)
			}
			for _, c := range in["Connection"] {
				for _, tok := range strings.Split(c, ",") {
					if strings.EqualFold(strings.Trim(tok, " \t"), k) {
						t.Errorf("field %q named by Connection forwarded", k)
					}
				}
			}
			if public && strings.HasPrefix(textproto.CanonicalMIMEHeaderKey(k), "X-Mesh-") {
				t.Errorf("public hop forwarded %q", k)
			}
			if strings.HasPrefix(k, ":") {
				t.Errorf("pseudo-field %q forwarded", k)
			}
			if len(vv) == 0 {
				t.Errorf("field %q with no values", k)
			}
		}
		if v := out["Via"]; len(v) == 0 || v[len(v)-1] != "1.1 me" {
			t.Errorf("Via %q does not end with this hop", v)
		}
		if te, ok := out["Te"]; ok && !slices.Equal(te, []string{"trailers"}) {
			t.Errorf("TE forwarded as %q", te)
		}
	})
}

// FuzzForwarding checks the parsing of the client address and the
// Forwarded element built from it for any RemoteAddr and Host.
func FuzzForwarding(f *testing.F) {
	f.Add("192.0.2.1:5555", "web.example")
	f.Add("[2001:db8::1]:443", "web.example:8443")
	f.Add("[fe80::1%eth0]:1", "")
	f.Add("garbage", "a\"b")
	f.Add(":", "\\")
	f.Fuzz(func(t *testing.T, remote, host string) {
		ip := clientIP(remote)
		if ip != "" && !strings.Contains(remote, ip) {
			t.Fatalf("clientIP(%q) = %q, not part of the address", remote, ip)
		}
		if ip != "" {
			if _, err := netip.ParseAddr(ip); err != nil {
				t.Fatalf("clientIP(%q) = %q, not an IP address", remote, ip)
			}
		}
		v := forwardedValue(ip, "https", host)
		if !strings.Contains(v, "proto=https") {
			t.Fatalf("Forwarded %q lacks proto", v)
		}
		if strings.Count(v, `"`)%2 != 0 {
			t.Fatalf("Forwarded %q has an unbalanced quote", v)
		}
		for i := 0; i < len(v); i++ {
			if v[i] < 0x20 || v[i] == 0x7f {
				t.Fatalf("Forwarded %q contains a control character", v)
			}
		}
	})
}
