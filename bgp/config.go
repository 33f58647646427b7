package bgp

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Peer is one BGP neighbor of the speaker.
//
// Its flag and config-file form is "ADDR,ASN[,option]...", see [ParsePeer].
type Peer struct {
	// Addr is the neighbor's address, IPv4 or IPv6 (a zone is allowed for
	// link-local neighbors). Required; no default.
	Addr netip.Addr
	// ASN is the neighbor's autonomous system number. Equal to the local
	// ASN makes the session iBGP, otherwise eBGP. Required; no default.
	ASN uint32
	// Port is the neighbor's TCP port. Default 0 means 179 (RFC 4271 §8.2.1).
	Port uint16
	// LocalAddr is the local address the session is bound to. Default: the
	// zero Addr, the kernel picks the source address.
	LocalAddr netip.Addr
	// Password enables TCP MD5 signatures (RFC 2385) with this key, at most
	// 80 bytes (the Linux limit). Default "": no signature.
	Password string
	// MultihopTTL is the IP TTL of an eBGP session whose neighbor is not
	// directly connected. Default 0: eBGP sessions use TTL 1 (single hop).
	// Not allowed on iBGP sessions, which are never TTL-limited.
	MultihopTTL uint8
	// HoldTime is the proposed hold time (RFC 4271 §4.2): whole seconds,
	// 3 s to 65535 s. Default 0 means 90 s. Keepalives are sent at a third
	// of the negotiated hold time.
	HoldTime time.Duration
	// ConnectRetry is the wait between attempts to open the TCP
	// connection (RFC 4271 §8 ConnectRetryTimer): whole seconds, 1 s to
	// 65535 s. Default 0 means 5 s (gobgp's own default is 120 s, too slow
	// for an edge that wants its route back).
	ConnectRetry time.Duration
	// Passive makes the speaker wait for the neighbor to connect instead of
	// dialing it. Requires Speaker.ListenPort > 0. Default false: dial.
	Passive bool
	// BFD enables Bidirectional Forwarding Detection for this neighbor
	// (RFC 5880, single hop RFC 5881). Default nil: no BFD, a silent path
	// failure is detected only when the hold time expires.
	BFD *BFDConfig
}

// BFDConfig holds a neighbor's BFD timers.
type BFDConfig struct {
	// Interval is both the desired minimum transmit interval and the
	// required minimum receive interval (RFC 5880 §6.8.1), 10 ms to 60 s
	// in whole microseconds. Default 0 means 300 ms.
	Interval time.Duration
	// Multiplier is the detection multiplier (RFC 5880 §6.8.4): the peer is
	// declared down after this many intervals without a packet. Default 0
	// means 3, so the default detection time is 900 ms.
	Multiplier uint8
}

const (
	defaultPeerPort      = 179
	defaultHoldTime      = 90 * time.Second
	defaultConnectRetry  = 5 * time.Second
	defaultBFDInterval   = 300 * time.Millisecond
	defaultBFDMultiplier = 3
	maxPasswordLen       = 80 // TCP_MD5SIG_MAXKEYLEN on Linux
)

func (b BFDConfig) interval() time.Duration {
	if b.Interval == 0 {
		return defaultBFDInterval
	}
	return b.Interval
}

func (b BFDConfig) multiplier() uint8 {
	if b.Multiplier == 0 {
		return defaultBFDMultiplier
	}
	return b.Multiplier
}

func (p Peer) port() uint16 {
	if p.Port == 0 {
		return defaultPeerPort
	}
	return p.Port
}

func (p Peer) holdTime() time.Duration {
	if p.HoldTime == 0 {
		return defaultHoldTime
	}
	return p.HoldTime
}

func (p Peer) connectRetry() time.Duration {
	if p.ConnectRetry == 0 {
		return defaultConnectRetry
	}
	return p.ConnectRetry
}

// validate checks the peer on its own; localASN decides iBGP vs eBGP.
func (p Peer) validate(localASN uint32) error {
	if !p.Addr.IsValid() {
		return errors.New("address is missing")
	}
	if err := checkPeerAddr(p.Addr); err != nil {
		return err
	}
	if err := CheckASN(p.ASN); err != nil {
		return fmt.Errorf("asn: %w", err)
	}
	if p.LocalAddr.IsValid() {
		if p.LocalAddr.Unmap().Is4() != p.Addr.Unmap().Is4() {
			return fmt.Errorf("local address %s is not of the peer's address family", p.LocalAddr)
		}
		if p.LocalAddr.IsMulticast() || p.LocalAddr.IsUnspecified() {
			return fmt.Errorf("local address %s is not a unicast address", p.LocalAddr)
		}
	}
	if len(p.Password) > maxPasswordLen {
		return fmt.Errorf("password is %d bytes, at most %d are allowed (TCP MD5 key)", len(p.Password), maxPasswordLen)
	}
	if strings.ContainsRune(p.Password, 0) {
		return errors.New("password contains a NUL byte")
	}
	if p.MultihopTTL > 0 && localASN != 0 && p.ASN == localASN {
		return errors.New("multihop applies to eBGP only; this peer is iBGP")
	}
	if p.HoldTime != 0 {
		if err := wholeSeconds(p.HoldTime, 3*time.Second, 65535*time.Second); err != nil {
			return fmt.Errorf("hold time: %w", err)
		}
	}
	if p.ConnectRetry != 0 {
		if err := wholeSeconds(p.ConnectRetry, time.Second, 65535*time.Second); err != nil {
			return fmt.Errorf("connect retry: %w", err)
		}
	}
	if p.BFD != nil {
		if err := p.BFD.validate(); err != nil {
			return fmt.Errorf("bfd: %w", err)
		}
	}
	return nil
}

func (b BFDConfig) validate() error {
	if b.Interval != 0 {
		if b.Interval < 10*time.Millisecond || b.Interval > 60*time.Second {
			return fmt.Errorf("interval %s is outside 10ms..60s", b.Interval)
		}
		if b.Interval%time.Microsecond != 0 {
			return fmt.Errorf("interval %s is not a whole number of microseconds", b.Interval)
		}
	}
	return nil
}

func checkPeerAddr(a netip.Addr) error {
	u := a.Unmap()
	switch {
	case a.Is4In6():
		return fmt.Errorf("address %s is IPv4-mapped; write it as %s", a, u)
	case u.IsUnspecified(), u.IsMulticast(), u == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("address %s is not a unicast address", a)
	}
	return nil
}

func wholeSeconds(d, lo, hi time.Duration) error {
	if d%time.Second != 0 {
		return fmt.Errorf("%s is not a whole number of seconds", d)
	}
	if d < lo || d > hi {
		return fmt.Errorf("%s is outside %s..%s", d, lo, hi)
	}
	return nil
}

// ParsePeer parses the --bgp-peer syntax "ADDR,ASN[,option]...".
//
// ADDR is an IPv4 or IPv6 address (no brackets; the comma separates it from
// the ASN). ASN is as in [ParseASN]. Options, in any order, each at most
// once:
//
//	port=N              neighbor's TCP port (default 179)
//	local=ADDR          local address of the session
//	password=KEY        TCP MD5 key (RFC 2385); cannot contain a comma
//	multihop=TTL        eBGP multihop with this TTL, 1..255
//	hold=DURATION       hold time, whole seconds 3s..65535s (default 90s)
//	connect-retry=DUR   wait between connection attempts (default 5s)
//	passive             wait for the neighbor to connect
//	bfd                 enable BFD with the default 300ms x 3
//	bfd-interval=DUR    BFD interval (enables BFD)
//	bfd-multiplier=N    BFD detection multiplier, 1..255 (enables BFD)
//
// For example "192.0.2.1,64500,hold=9s,bfd" or "2001:db8::1,64500,passive".
// The result has been validated on its own; checks that need the speaker's
// configuration (iBGP vs eBGP, listening) happen in [Speaker.Validate].
func ParsePeer(s string) (Peer, error) {
	p, err := parsePeer(s)
	if err != nil {
		return Peer{}, fmt.Errorf("bgp peer %q: %w", redactPassword(s), err)
	}
	return p, nil
}

func parsePeer(s string) (Peer, error) {
	var p Peer
	fields := strings.Split(s, ",")
	if len(fields) < 2 {
		return p, errors.New("want ADDR,ASN[,option]...")
	}
	addr, err := netip.ParseAddr(strings.TrimSpace(fields[0]))
	if err != nil {
		return p, fmt.Errorf("address: %w", err)
	}
	if err := checkPeerAddr(addr); err != nil {
		return p, err
	}
	p.Addr = addr
	if p.ASN, err = ParseASN(strings.TrimSpace(fields[1])); err != nil {
		return p, err
	}
	seen := make(map[string]bool)
	for _, f := range fields[2:] {
		key, val, hasVal := strings.Cut(f, "=")
		key = strings.TrimSpace(key)
		if key != "password" {
			val = strings.TrimSpace(val)
		}
		if seen[key] {
			return p, fmt.Errorf("option %q given twice", key)
		}
		seen[key] = true
		flag := key == "passive" || key == "bfd"
		if flag && hasVal {
			return p, fmt.Errorf("option %q takes no value", key)
		}
		if !flag && !hasVal {
			if key == "" {
				return p, errors.New("empty option")
			}
			return p, fmt.Errorf("option %q needs a value (%s=...)", key, key)
		}
		switch key {
		case "port":
			n, err := parseUint(val, 1, math.MaxUint16)
			if err != nil {
				return p, fmt.Errorf("port: %w", err)
			}
			p.Port = uint16(n)
		case "local":
			a, err := netip.ParseAddr(val)
			if err != nil {
				return p, fmt.Errorf("local: %w", err)
			}
			p.LocalAddr = a
		case "password":
			if val == "" {
				return p, errors.New("password is empty")
			}
			p.Password = val
		case "multihop":
			n, err := parseUint(val, 1, math.MaxUint8)
			if err != nil {
				return p, fmt.Errorf("multihop: %w", err)
			}
			p.MultihopTTL = uint8(n)
		case "hold":
			if p.HoldTime, err = parseDuration(val); err != nil {
				return p, fmt.Errorf("hold: %w", err)
			}
			if p.HoldTime == 0 {
				return p, errors.New("hold: 0 is not allowed (meshd always sends keepalives)")
			}
		case "connect-retry":
			if p.ConnectRetry, err = parseDuration(val); err != nil {
				return p, fmt.Errorf("connect-retry: %w", err)
			}
			if p.ConnectRetry == 0 {
				return p, errors.New("connect-retry: 0 is not allowed")
			}
		case "passive":
			p.Passive = true
		case "bfd":
			p.BFD = bfdOf(p.BFD)
		case "bfd-interval":
			d, err := parseDuration(val)
			if err != nil {
				return p, fmt.Errorf("bfd-interval: %w", err)
			}
			if d == 0 {
				return p, errors.New("bfd-interval: 0 is not allowed")
			}
			p.BFD = bfdOf(p.BFD)
			p.BFD.Interval = d
		case "bfd-multiplier":
			n, err := parseUint(val, 1, math.MaxUint8)
			if err != nil {
				return p, fmt.Errorf("bfd-multiplier: %w", err)
			}
			p.BFD = bfdOf(p.BFD)
			p.BFD.Multiplier = uint8(n)
		default:
			return p, fmt.Errorf("unknown option %q (want port, local, password, multihop, hold, connect-retry, passive, bfd, bfd-interval, bfd-multiplier)", key)
		}
	}
	if err := p.validate(0); err != nil {
		return Peer{}, err
	}
	return p, nil
}

func bfdOf(b *BFDConfig) *BFDConfig {
	if b == nil {
		return &BFDConfig{}
	}
	return b
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, fmt.Errorf("%s is negative", d)
	}
	return d, nil
}

func parseUint(s string, lo, hi uint64) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a decimal number", s)
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("%d is outside %d..%d", n, lo, hi)
	}
	return n, nil
}

// redactPassword hides a password option's value so that errors and logs
// that quote a peer specification never carry the TCP MD5 key.
func redactPassword(s string) string {
	fields := strings.Split(s, ",")
	for i, f := range fields {
		if k, _, ok := strings.Cut(f, "="); ok && strings.TrimSpace(k) == "password" {
			fields[i] = "password=REDACTED"
		}
	}
	return strings.Join(fields, ",")
}

// String returns the peer in the [ParsePeer] syntax with the password
// redacted, for logs and status.
func (p Peer) String() string { return p.format(false) }

// UnmarshalText implements encoding.TextUnmarshaler with [ParsePeer], so a
// config file can list peers in the flag syntax.
func (p *Peer) UnmarshalText(b []byte) error {
	v, err := ParsePeer(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// format writes the canonical [ParsePeer] form; secret says whether the
// password is written out (only for tests of the round trip).
func (p Peer) format(secret bool) string {
	var b strings.Builder
	b.WriteString(p.Addr.String())
	b.WriteByte(',')
	b.WriteString(strconv.FormatUint(uint64(p.ASN), 10))
	if p.Port != 0 {
		fmt.Fprintf(&b, ",port=%d", p.Port)
	}
	if p.LocalAddr.IsValid() {
		fmt.Fprintf(&b, ",local=%s", p.LocalAddr)
	}
	if p.Password != "" {
		if secret {
			fmt.Fprintf(&b, ",password=%s", p.Password)
		} else {
			b.WriteString(",password=REDACTED")
		}
	}
	if p.MultihopTTL != 0 {
		fmt.Fprintf(&b, ",multihop=%d", p.MultihopTTL)
	}
	if p.HoldTime != 0 {
		fmt.Fprintf(&b, ",hold=%s", p.HoldTime)
	}
	if p.ConnectRetry != 0 {
		fmt.Fprintf(&b, ",connect-retry=%s", p.ConnectRetry)
	}
	if p.Passive {
		b.WriteString(",passive")
	}
	if p.BFD != nil {
		b.WriteString(",bfd")
		if p.BFD.Interval != 0 {
			fmt.Fprintf(&b, ",bfd-interval=%s", p.BFD.Interval)
		}
		if p.BFD.Multiplier != 0 {
			fmt.Fprintf(&b, ",bfd-multiplier=%d", p.BFD.Multiplier)
		}
	}
	return b.String()
}

// ParseASN parses an autonomous system number in plain ("64500") or asdot
// ("1.10", RFC 5396) notation and checks it with [CheckASN].
func ParseASN(s string) (uint32, error) {
	var asn uint64
	if hi, lo, ok := strings.Cut(s, "."); ok {
		h, err1 := strconv.ParseUint(hi, 10, 16)
		l, err2 := strconv.ParseUint(lo, 10, 16)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("asn %q: asdot notation needs two numbers 0..65535", s)
		}
		asn = h<<16 | l
	} else {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("asn %q: not a number 1..4294967294", s)
		}
		asn = n
	}
	if err := CheckASN(uint32(asn)); err != nil {
		return 0, fmt.Errorf("asn %q: %w", s, err)
	}
	return uint32(asn), nil
}

// CheckASN rejects the AS numbers that must never appear in a session:
// 0 (RFC 7607), 23456 AS_TRANS (RFC 6793 §2), 65535 and 4294967295
// (reserved by RFC 7300).
func CheckASN(asn uint32) error {
	switch asn {
	case 0:
		return errors.New("AS 0 is reserved (RFC 7607)")
	case 23456:
		return errors.New("AS 23456 is AS_TRANS (RFC 6793)")
	case 65535, math.MaxUint32:
		return fmt.Errorf("AS %d is reserved (RFC 7300)", asn)
	}
	return nil
}

// ParseRouterID parses a BGP Identifier and checks it with [CheckRouterID].
func ParseRouterID(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("router id %q: %w", s, err)
	}
	if err := CheckRouterID(a); err != nil {
		return netip.Addr{}, fmt.Errorf("router id %q: %w", s, err)
	}
	return a, nil
}

// CheckRouterID requires a BGP Identifier to be a nonzero 4-octet value
// (RFC 4271 §4.2, RFC 6286 §2.1) written as an IPv4 address; multicast and
// broadcast addresses are refused as they are surely typos.
func CheckRouterID(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("router id is missing")
	case !a.Is4():
		return errors.New("router id must be an IPv4 address (RFC 6286)")
	case a.IsUnspecified():
		return errors.New("router id 0.0.0.0 is not allowed (RFC 6286 §2.1)")
	case a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("router id %s is a multicast or broadcast address", a)
	}
	return nil
}

// ParsePrefix parses an anycast prefix such as "198.51.100.10/32" or
// "2001:db8:a::/48". A bare address means a host route (/32 or /128). The
// prefix must have no host bits set and is checked with [CheckPrefix].
func ParsePrefix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("prefix %q: %w", s, err)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("prefix %q: %w", s, err)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("prefix %q: a zone is not allowed", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if err := CheckPrefix(p); err != nil {
		return netip.Prefix{}, fmt.Errorf("prefix %q: %w", s, err)
	}
	return p, nil
}

// CheckPrefix refuses prefixes that an edge must never announce: host bits
// set (the router would install something else than meant), IPv4-mapped
// IPv6, the default route, and loopback, multicast, link-local or
// unspecified space.
func CheckPrefix(p netip.Prefix) error {
	a := p.Addr()
	switch {
	case !p.IsValid():
		return errors.New("prefix is invalid")
	case p.Masked() != p:
		return fmt.Errorf("host bits are set; the prefix is %s", p.Masked())
	case a.Is4In6():
		return errors.New("IPv4-mapped IPv6 prefixes are not allowed; write the IPv4 prefix")
	case p.Bits() == 0:
		return errors.New("the default route is not an anycast prefix")
	case a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(), a.IsUnspecified():
		return errors.New("loopback, multicast, link-local and unspecified space is not announceable")
	}
	return nil
}

// Community is a BGP community (RFC 1997), written "ASN16:VALUE".
type Community uint32

// Well-known communities that have names in [ParseCommunity].
const (
	// CommunityGracefulShutdown asks the receiver to lower the route's
	// preference before the session goes away (RFC 8326).
	CommunityGracefulShutdown  Community = 0xFFFF0000
	CommunityBlackhole         Community = 0xFFFF029A // RFC 7999
	CommunityNoExport          Community = 0xFFFFFF01 // RFC 1997
	CommunityNoAdvertise       Community = 0xFFFFFF02 // RFC 1997
	CommunityNoExportSubconfed Community = 0xFFFFFF03 // RFC 1997
	CommunityNoPeer            Community = 0xFFFFFF04 // RFC 3765
)

var communityNames = map[Community]string{
	CommunityGracefulShutdown:  "graceful-shutdown",
	CommunityBlackhole:         "blackhole",
	CommunityNoExport:          "no-export",
	CommunityNoAdvertise:       "no-advertise",
	CommunityNoExportSubconfed: "no-export-subconfed",
	CommunityNoPeer:            "no-peer",
}

// ParseCommunity parses "ASN16:VALUE" (each 0..65535) or one of the names
// graceful-shutdown, blackhole, no-export, no-advertise,
// no-export-subconfed, no-peer.
func ParseCommunity(s string) (Community, error) {
	for c, name := range communityNames {
		if s == name {
			return c, nil
		}
	}
	hi, lo, ok := strings.Cut(s, ":")
	h, err1 := strconv.ParseUint(hi, 10, 16)
	l, err2 := strconv.ParseUint(lo, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("community %q: want ASN:VALUE with two numbers 0..65535, or a well-known name", s)
	}
	return Community(h<<16 | l), nil
}

// String returns the well-known name or "ASN16:VALUE".
func (c Community) String() string {
	if n, ok := communityNames[c]; ok {
		return n
	}
	return fmt.Sprintf("%d:%d", uint32(c)>>16, uint32(c)&0xFFFF)
}

// MarshalText implements encoding.TextMarshaler.
func (c Community) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with [ParseCommunity].
func (c *Community) UnmarshalText(b []byte) error {
	v, err := ParseCommunity(string(b))
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// LargeCommunity is a BGP large community (RFC 8092), written
// "GLOBAL:LOCAL1:LOCAL2", each a 32-bit number.
type LargeCommunity struct {
	Global, Local1, Local2 uint32
}

// ParseLargeCommunity parses "GLOBAL:LOCAL1:LOCAL2" (each 0..4294967295).
func ParseLargeCommunity(s string) (LargeCommunity, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return LargeCommunity{}, fmt.Errorf("large community %q: want GLOBAL:LOCAL1:LOCAL2", s)
	}
	var v [3]uint32
	for i, part := range parts {
		n, err := strconv.ParseUint(part, 10, 32)
		if err != nil {
			return LargeCommunity{}, fmt.Errorf("large community %q: %q is not a number 0..4294967295", s, part)
		}
		v[i] = uint32(n)
	}
	return LargeCommunity{v[0], v[1], v[2]}, nil
}

// String returns "GLOBAL:LOCAL1:LOCAL2".
func (c LargeCommunity) String() string {
	return fmt.Sprintf("%d:%d:%d", c.Global, c.Local1, c.Local2)
}

// MarshalText implements encoding.TextMarshaler.
func (c LargeCommunity) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with [ParseLargeCommunity].
func (c *LargeCommunity) UnmarshalText(b []byte) error {
	v, err := ParseLargeCommunity(string(b))
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// DrainMode says how [Speaker.Drain] moves traffic away before shutdown.
type DrainMode int

const (
	// DrainWithdraw withdraws the prefixes: routers move traffic to another
	// edge at once. The default.
	DrainWithdraw DrainMode = iota
	// DrainPrepend re-announces the prefixes with the local ASN prepended
	// Speaker.PrependCount times and the GRACEFUL_SHUTDOWN community
	// (RFC 8326), so routers prefer another edge while this one still has
	// a route: no blackhole while other edges' routes propagate. eBGP only.
	DrainPrepend
)

// ParseDrainMode parses "withdraw" (also "") or "prepend".
func ParseDrainMode(s string) (DrainMode, error) {
	switch s {
	case "", "withdraw":
		return DrainWithdraw, nil
	case "prepend":
		return DrainPrepend, nil
	}
	return 0, fmt.Errorf("drain mode %q: want withdraw or prepend", s)
}

// String returns "withdraw" or "prepend".
func (m DrainMode) String() string {
	switch m {
	case DrainWithdraw:
		return "withdraw"
	case DrainPrepend:
		return "prepend"
	}
	return fmt.Sprintf("DrainMode(%d)", int(m))
}

// MarshalText implements encoding.TextMarshaler.
func (m DrainMode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with [ParseDrainMode].
func (m *DrainMode) UnmarshalText(b []byte) error {
	v, err := ParseDrainMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}
