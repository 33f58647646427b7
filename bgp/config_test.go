package bgp

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParsePeer(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		in      string
		want    Peer
		wantErr string
	}{
		{in: "192.0.2.1,64500", want: Peer{Addr: a("192.0.2.1"), ASN: 64500}},
		{in: " 192.0.2.1 , 64500 ", want: Peer{Addr: a("192.0.2.1"), ASN: 64500}},
		{in: "2001:db8::1,1.10", want: Peer{Addr: a("2001:db8::1"), ASN: 1<<16 | 10}},
		{in: "fe80::1%eth0,64500", want: Peer{Addr: a("fe80::1%eth0"), ASN: 64500}},
		{
			in: "192.0.2.1,64500,port=1179,local=192.0.2.2,password=s3cr=t ,multihop=2,hold=9s,connect-retry=1s,passive,bfd-interval=100ms,bfd-multiplier=5",
			want: Peer{
				Addr: a("192.0.2.1"), ASN: 64500, Port: 1179, LocalAddr: a("192.0.2.2"),
				Password: "s3cr=t ", MultihopTTL: 2, HoldTime: 9 * time.Second, ConnectRetry: time.Second,
				Passive: true, BFD: &BFDConfig{Interval: 100 * time.Millisecond, Multiplier: 5},
			},
		},
		{in: "192.0.2.1,64500,bfd", want: Peer{Addr: a("192.0.2.1"), ASN: 64500, BFD: &BFDConfig{}}},
		{in: "192.0.2.1", wantErr: "want ADDR,ASN"},
		{in: "", wantErr: "want ADDR,ASN"},
		{in: "host.example,64500", wantErr: "address"},
		{in: "0.0.0.0,64500", wantErr: "not a unicast address"},
		{in: "224.0.0.5,64500", wantErr: "not a unicast address"},
		{in: "::ffff:192.0.2.1,64500", wantErr: "IPv4-mapped"},
		{in: "192.0.2.1,0", wantErr: "RFC 7607"},
		{in: "192.0.2.1,23456", wantErr: "AS_TRANS"},
		{in: "192.0.2.1,4294967296", wantErr: "not a number"},
		{in: "192.0.2.1,-1", wantErr: "not a number"},
		{in: "192.0.2.1,64500,port=0", wantErr: "outside 1..65535"},
		{in: "192.0.2.1,64500,port=65536", wantErr: "outside 1..65535"},
		{in: "192.0.2.1,64500,port", wantErr: "needs a value"},
		{in: "192.0.2.1,64500,passive=yes", wantErr: "takes no value"},
		{in: "192.0.2.1,64500,passive,passive", wantErr: "given twice"},
		{in: "192.0.2.1,64500,", wantErr: "empty option"},
		{in: "192.0.2.1,64500,colour=red", wantErr: "unknown option"},
		{in: "192.0.2.1,64500,hold=2s", wantErr: "outside 3s"},
		{in: "192.0.2.1,64500,hold=0s", wantErr: "0 is not allowed"},
		{in: "192.0.2.1,64500,hold=9.5s", wantErr: "whole number of seconds"},
		{in: "192.0.2.1,64500,hold=-9s", wantErr: "negative"},
		{in: "192.0.2.1,64500,hold=nine", wantErr: "hold"},
		{in: "192.0.2.1,64500,multihop=256", wantErr: "outside 1..255"},
		{in: "192.0.2.1,64500,bfd-interval=5ms", wantErr: "outside 10ms..60s"},
		{in: "192.0.2.1,64500,bfd-multiplier=0", wantErr: "outside 1..255"},
		{in: "192.0.2.1,64500,local=2001:db8::2", wantErr: "not of the peer's address family"},
		{in: "192.0.2.1,64500,password=", wantErr: "password is empty"},
		{in: "192.0.2.1,64500,password=" + strings.Repeat("k", 81), wantErr: "at most 80"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePeer(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParsePeer(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				if !reflect.DeepEqual(got, Peer{}) {
					t.Errorf("ParsePeer(%q) returned %+v with its error, want the zero Peer", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePeer(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParsePeer(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			again, err := ParsePeer(got.format(true))
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("round trip of %q through %q = %+v, %v", tt.in, got.format(true), again, err)
			}
		})
	}
}

func TestPeerStringRedactsPassword(t *testing.T) {
	p, err := ParsePeer("192.0.2.1,64500,password=hunter2")
	if err != nil {
		t.Fatal(err)
	}
	if s := p.String(); strings.Contains(s, "hunter2") || !strings.Contains(s, "password=REDACTED") {
		t.Errorf("String() = %q, want the password redacted", s)
	}
	_, err = ParsePeer("192.0.2.1,64500,password=hunter2,colour=red")
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %v must not quote the password", err)
	}
	var q Peer
	if err := q.UnmarshalText([]byte("192.0.2.1,64500,password=hunter2")); err != nil || q.Password != "hunter2" {
		t.Errorf("UnmarshalText = %+v, %v", q, err)
	}
}

func TestParseASN(t *testing.T) {
	tests := []struct {
		in      string
		want    uint32
		wantErr string
	}{
		{"1", 1, ""},
		{"64500", 64500, ""},
		{"4200000000", 4200000000, ""},
		{"4294967294", 4294967294, ""},
		{"1.0", 65536, ""},
		{"65535.65534", 4294967294, ""},
		{"0", 0, "RFC 7607"},
		{"0.0", 0, "RFC 7607"},
		{"23456", 0, "AS_TRANS"},
		{"65535", 0, "RFC 7300"},
		{"4294967295", 0, "RFC 7300"},
		{"65535.65535", 0, "RFC 7300"},
		{"4294967296", 0, "not a number"},
		{"65536.1", 0, "asdot"},
		{"1.", 0, "asdot"},
		{"AS64500", 0, "not a number"},
		{"", 0, "not a number"},
		{"+5", 0, "not a number"},
	}
	for _, tt := range tests {
		got, err := ParseASN(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseASN(%q) = %d, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseASN(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestParseRouterID(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{"192.0.2.1", ""},
		{"10.255.255.254", ""},
		{"0.0.0.0", "RFC 6286"},
		{"255.255.255.255", "broadcast"},
		{"224.0.0.1", "multicast"},
		{"2001:db8::1", "IPv4"},
		{"::ffff:192.0.2.1", "IPv4"},
		{"192.0.2", "router id"},
		{"", "router id"},
	}
	for _, tt := range tests {
		got, err := ParseRouterID(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseRouterID(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.String() != tt.in {
			t.Errorf("ParseRouterID(%q) = %v, %v", tt.in, got, err)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{"198.51.100.10/32", "198.51.100.10/32", ""},
		{"198.51.100.10", "198.51.100.10/32", ""},
		{"198.51.100.0/24", "198.51.100.0/24", ""},
		{"2001:db8:a::/48", "2001:db8:a::/48", ""},
		{"2001:db8::10", "2001:db8::10/128", ""},
		{"198.51.100.10/24", "", "host bits are set; the prefix is 198.51.100.0/24"},
		{"0.0.0.0/0", "", "default route"},
		{"::/0", "", "default route"},
		{"127.0.0.1/32", "", "loopback"},
		{"::1/128", "", "loopback"},
		{"224.0.0.0/4", "", "multicast"},
		{"ff02::1/128", "", "multicast"},
		{"169.254.1.1/32", "", "link-local"},
		{"fe80::1/128", "", "link-local"},
		{"fe80::1%eth0", "", "zone"},
		{"::ffff:198.51.100.10/128", "", "IPv4-mapped"},
		{"198.51.100.10/33", "", "prefix"},
		{"anycast", "", "prefix"},
		{"", "", "prefix"},
	}
	for _, tt := range tests {
		got, err := ParsePrefix(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePrefix(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}

func TestParseCommunities(t *testing.T) {
	comms := []struct {
		in      string
		want    Community
		wantErr bool
	}{
		{"64500:100", 64500<<16 | 100, false},
		{"0:0", 0, false},
		{"65535:65535", 0xFFFFFFFF, false},
		{"no-export", CommunityNoExport, false},
		{"graceful-shutdown", CommunityGracefulShutdown, false},
		{"65536:1", 0, true},
		{"1:65536", 0, true},
		{"64500", 0, true},
		{"a:b", 0, true},
		{"1:2:3", 0, true},
	}
	for _, tt := range comms {
		got, err := ParseCommunity(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseCommunity(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err == nil {
			if back, err := ParseCommunity(got.String()); err != nil || back != got {
				t.Errorf("round trip of %q via %q = %v, %v", tt.in, got, back, err)
			}
		}
	}
	large := []struct {
		in      string
		want    LargeCommunity
		wantErr bool
	}{
		{"4200000000:1:2", LargeCommunity{4200000000, 1, 2}, false},
		{"0:0:0", LargeCommunity{}, false},
		{"4294967295:4294967295:4294967295", LargeCommunity{1<<32 - 1, 1<<32 - 1, 1<<32 - 1}, false},
		{"4294967296:0:0", LargeCommunity{}, true},
		{"1:2", LargeCommunity{}, true},
		{"1:2:3:4", LargeCommunity{}, true},
		{"1::3", LargeCommunity{}, true},
	}
	for _, tt := range large {
		got, err := ParseLargeCommunity(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseLargeCommunity(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	for in, want := range map[string]DrainMode{"": DrainWithdraw, "withdraw": DrainWithdraw, "prepend": DrainPrepend} {
		if got, err := ParseDrainMode(in); err != nil || got != want {
			t.Errorf("ParseDrainMode(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseDrainMode("blackhole"); err == nil {
		t.Error("ParseDrainMode(blackhole) accepted")
	}
}

func validSpeaker() *Speaker {
	return &Speaker{
		ASN:      64512,
		RouterID: netip.MustParseAddr("192.0.2.10"),
		Peers:    []Peer{{Addr: netip.MustParseAddr("192.0.2.1"), ASN: 64500}},
		Prefixes: []netip.Prefix{netip.MustParsePrefix("198.51.100.10/32")},
	}
}

func TestSpeakerValidate(t *testing.T) {
	p4 := Peer{Addr: netip.MustParseAddr("192.0.2.1"), ASN: 64500}
	p6 := Peer{Addr: netip.MustParseAddr("2001:db8::1"), ASN: 64500}
	pfx6 := netip.MustParsePrefix("2001:db8:a::/48")
	tests := []struct {
		name    string
		mod     func(s *Speaker)
		wantErr string
	}{
		{"valid", func(s *Speaker) {}, ""},
		{"valid dual stack with next hops", func(s *Speaker) {
			s.Peers = []Peer{p4, p6}
			s.Prefixes = append(s.Prefixes, pfx6)
			s.NextHop4 = netip.MustParseAddr("192.0.2.10")
			s.NextHop6 = netip.MustParseAddr("2001:db8::10")
		}, ""},
		{"valid ipv6 only", func(s *Speaker) { s.Peers = []Peer{p6}; s.Prefixes = []netip.Prefix{pfx6} }, ""},
		{"asn 0", func(s *Speaker) { s.ASN = 0 }, "asn"},
		{"no router id", func(s *Speaker) { s.RouterID = netip.Addr{} }, "router id is missing"},
		{"ipv6 router id", func(s *Speaker) { s.RouterID = netip.MustParseAddr("2001:db8::1") }, "IPv4"},
		{"listen port", func(s *Speaker) { s.ListenPort = 70000 }, "listen port"},
		{"negative listen port", func(s *Speaker) { s.ListenPort = -1 }, "listen port"},
		{"bad listen addr", func(s *Speaker) { s.ListenPort = 179; s.ListenAddrs = []string{"eth0"} }, "listen address"},
		{"listen addr without port", func(s *Speaker) { s.ListenAddrs = []string{"127.0.0.1"} }, "listen port is 0"},
		{"no peers", func(s *Speaker) { s.Peers = nil }, "no peers"},
		{"no prefixes", func(s *Speaker) { s.Prefixes = nil }, "no prefixes"},
		{"bad prefix", func(s *Speaker) { s.Prefixes = []netip.Prefix{netip.MustParsePrefix("198.51.100.10/24")} }, "host bits"},
		{"duplicate prefix", func(s *Speaker) { s.Prefixes = append(s.Prefixes, s.Prefixes[0]) }, "listed twice"},
		{"duplicate peer", func(s *Speaker) { s.Peers = []Peer{p4, p4} }, "listed twice"},
		{"bad peer asn", func(s *Speaker) { s.Peers = []Peer{{Addr: p4.Addr, ASN: 23456}} }, "AS_TRANS"},
		{"peer without addr", func(s *Speaker) { s.Peers = []Peer{{ASN: 64500}} }, "address is missing"},
		{"passive without listening", func(s *Speaker) { s.Peers = []Peer{{Addr: p4.Addr, ASN: 64500, Passive: true}} }, "passive"},
		{"ibgp multihop", func(s *Speaker) { s.Peers = []Peer{{Addr: p4.Addr, ASN: 64512, MultihopTTL: 2}} }, "eBGP only"},
		{"bfd with multihop", func(s *Speaker) {
			s.Peers = []Peer{{Addr: p4.Addr, ASN: 64500, MultihopTTL: 2, BFD: &BFDConfig{}}}
		}, "single-hop"},
		{"bfd interval", func(s *Speaker) {
			s.Peers = []Peer{{Addr: p4.Addr, ASN: 64500, BFD: &BFDConfig{Interval: 1500 * time.Nanosecond}}}
		}, "bfd"},
		{"hold time", func(s *Speaker) { s.Peers = []Peer{{Addr: p4.Addr, ASN: 64500, HoldTime: time.Second}} }, "hold time"},
		{"ipv6 prefix over ipv4 peer", func(s *Speaker) { s.Prefixes = append(s.Prefixes, pfx6) }, "set an IPv6 next hop"},
		{"ipv4 prefix over ipv6 peer", func(s *Speaker) { s.Peers = []Peer{p6} }, "set an IPv4 next hop"},
		{"ipv6 next hop4", func(s *Speaker) { s.NextHop4 = netip.MustParseAddr("2001:db8::1") }, "next hop"},
		{"mapped next hop6", func(s *Speaker) { s.NextHop6 = netip.MustParseAddr("::ffff:192.0.2.1") }, "next hop"},
		{"prepend count", func(s *Speaker) { s.PrependCount = 33 }, "prepend count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpeaker()
			tt.mod(s)
			before := validSpeaker()
			tt.mod(before)
			err := s.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want error containing %q", err, tt.wantErr)
			}
			if !reflect.DeepEqual(before, s) {
				t.Error("Validate changed the speaker")
			}
		})
	}
}

func FuzzParsePeer(f *testing.F) {
	for _, s := range []string{
		"192.0.2.1,64500",
		"2001:db8::1,1.10,passive,bfd",
		"192.0.2.1,64500,port=1179,local=192.0.2.2,password=x,multihop=2,hold=9s,connect-retry=1s,bfd-interval=100ms,bfd-multiplier=5",
		"fe80::1%eth0,64500,bfd",
		"192.0.2.1,64500,,",
		"192.0.2.1,4294967295",
		",",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePeer(s)
		if err != nil {
			if !reflect.DeepEqual(p, Peer{}) {
				t.Fatalf("error %v with non-zero peer %+v", err, p)
			}
			return
		}
		if err := p.validate(0); err != nil {
			t.Fatalf("ParsePeer(%q) accepted a peer that does not validate: %v", s, err)
		}
		again, err := ParsePeer(p.format(true))
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", p.format(true), s, err)
		}
		if !reflect.DeepEqual(again, p) {
			t.Fatalf("round trip of %q: %+v != %+v", s, again, p)
		}
	})
}

func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{"198.51.100.10/32", "198.51.100.10", "2001:db8::/32", "0.0.0.0/0", "198.51.100.10/24", "::ffff:1.2.3.4/128", "fe80::1%x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePrefix(s)
		if err != nil {
			return
		}
		if CheckPrefix(p) != nil || p.Masked() != p || p.Bits() == 0 {
			t.Fatalf("ParsePrefix(%q) = %v, which CheckPrefix rejects", s, p)
		}
		if again, err := ParsePrefix(p.String()); err != nil || again != p {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}

func FuzzParseASN(f *testing.F) {
	for _, s := range []string{"64500", "1.10", "0", "23456", "4294967295", "65535.65535", "1.", ".1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		asn, err := ParseASN(s)
		if err != nil {
			return
		}
		if CheckASN(asn) != nil {
			t.Fatalf("ParseASN(%q) = %d, which CheckASN rejects", s, asn)
		}
	})
}

func FuzzParseCommunity(f *testing.F) {
	for _, s := range []string{"64500:100", "no-export", "1:2:3", "4200000000:1:2", ":", "::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if c, err := ParseCommunity(s); err == nil {
			if back, err := ParseCommunity(c.String()); err != nil || back != c {
				t.Fatalf("community round trip of %q: %v, %v", s, back, err)
			}
		}
		if c, err := ParseLargeCommunity(s); err == nil {
			if back, err := ParseLargeCommunity(c.String()); err != nil || back != c {
				t.Fatalf("large community round trip of %q: %v, %v", s, back, err)
			}
		}
	})
}

func FuzzParseRouterID(f *testing.F) {
	for _, s := range []string{"192.0.2.1", "0.0.0.0", "255.255.255.255", "::1", "1.2.3.4%eth0", "01.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseRouterID(s)
		if err != nil {
			return
		}
		if CheckRouterID(a) != nil || !a.Is4() || a.Zone() != "" {
			t.Fatalf("ParseRouterID(%q) = %v, which is not a valid BGP Identifier", s, a)
		}
	})
}
