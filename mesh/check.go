package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshd/meshd/gossip"
	"github.com/meshd/meshd/tlsmgr"
)

// `meshd check`: a node's preflight. Each check looks at what a start
// would meet (files, ports, peers) without starting anything that stays:
// the ports are bound and released at once, and the gossip seeds are
// joined by a short-lived member named meshd-check-NODE-RANDOM that leaves
// again, so the pools see it come and go.

// Levels of a Finding.
const (
	CheckOK   = "ok"
	CheckWarn = "warn"
	CheckFail = "fail"
)

// ExpiryWarning is how close to its end a certificate must be for check
// to warn.
const ExpiryWarning = 7 * 24 * time.Hour

// Finding is one line of `meshd check`.
type Finding struct {
	Level  string `json:"level"` // CheckOK, CheckWarn or CheckFail
	Check  string `json:"check"` // what was checked: a key, a file, a peer
	Detail string `json:"detail"`
}

func (f Finding) String() string { return fmt.Sprintf("%-4s  %s: %s", f.Level, f.Check, f.Detail) }

// CheckOptions tune Check; the zero value is what `meshd check` uses.
type CheckOptions struct {
	// Timeout bounds each network check (a seed's join, a BGP connect).
	// Default 3s.
	Timeout time.Duration
	// Now is the clock certificates are judged by. Default time.Now.
	Now func() time.Time
}

// Check runs the preflight of a node that would run with c (defaults
// applied): the configuration, certificates and their expiry, the CA key,
// the listen ports, the gossip seeds and their keys, clock skew against
// the peers' signed records, BGP peers.
func Check(ctx context.Context, c Config, o CheckOptions) []Finding {
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	ck := &checker{c: &c, o: o}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		ck.add(CheckFail, "config", err.Error())
		return ck.out
	}
	ck.add(CheckOK, "config", fmt.Sprintf("valid: %s %s%s", c.Role, c.Name, cond(c.Region != "", " in region "+c.Region)))
	ck.identity()
	ck.ports()
	ck.seeds(ctx)
	ck.bgpPeers(ctx)
	return ck.out
}

type checker struct {
	c   *Config
	o   CheckOptions
	out []Finding
	td  string
	ca  *tlsmgr.CA
	key []byte   // the gossip key to send with
	ids []string // the SPIFFE IDs of peers' records, for the clock check
}

func (ck *checker) add(level, check, detail string) {
	ck.out = append(ck.out, Finding{Level: level, Check: check, Detail: detail})
}

// expiry adds a finding on a certificate's validity.
func (ck *checker) expiry(check, what string, cert *x509.Certificate) {
	now := ck.o.Now()
	left := cert.NotAfter.Sub(now)
	switch {
	case now.Before(cert.NotBefore):
		ck.add(CheckFail, check, fmt.Sprintf("%s is not valid before %s (is this clock behind?)", what, cert.NotBefore.UTC().Format(time.RFC3339)))
	case left <= 0:
		ck.add(CheckFail, check, fmt.Sprintf("%s expired %s", what, cert.NotAfter.UTC().Format(time.RFC3339)))
	case left < ExpiryWarning:
		ck.add(CheckWarn, check, fmt.Sprintf("%s expires %s, in %s", what, cert.NotAfter.UTC().Format(time.RFC3339), roundDays(left)))
	default:
		ck.add(CheckOK, check, fmt.Sprintf("%s, expires %s, in %s", what, cert.NotAfter.UTC().Format(time.RFC3339), roundDays(left)))
	}
}

func roundDays(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	}
	return d.Round(time.Minute).String()
}

// identity checks ca-dir, the gossip key, the CA key and the SVID source.
func (ck *checker) identity() {
	c := ck.c
	ca, err := tlsmgr.LoadCA(c.CADir)
	switch {
	case err == nil:
		ck.ca, ck.td = ca, ca.TrustDomain
		ck.expiry("ca-dir", fmt.Sprintf("%s: CA of trust domain %s", filepath.Join(c.CADir, tlsmgr.CACertFile), ca.TrustDomain), ca.Cert)
		if c.TrustDomain != "" && c.TrustDomain != ca.TrustDomain {
			ck.add(CheckFail, "trust-domain", fmt.Sprintf("the node expects %q but the CA in %s is for %q", c.TrustDomain, c.CADir, ca.TrustDomain))
		}
	case c.SPIFFESocket != "" && c.TrustDomain != "" && errors.Is(err, fs.ErrNotExist):
		ck.td = c.TrustDomain
		ck.add(CheckOK, "ca-dir", "no ca.crt: the trust bundle comes from the SPIRE agent")
	default:
		ck.add(CheckFail, "ca-dir", err.Error())
	}
	if key, err := tlsmgr.ReadGossipKey(c.CADir); err != nil {
		ck.add(CheckFail, "ca-dir", err.Error())
	} else if primary, _, err := (&Node{Config: *c}).gossipKeys(key); err != nil {
		ck.add(CheckFail, "gossip key", err.Error())
	} else {
		ck.key = primary
		src := filepath.Join(c.CADir, tlsmgr.GossipKeyFile)
		if !bytes.Equal(primary, key) {
			src = "the keyring kept in " + c.DataDir
		}
		ck.add(CheckOK, "gossip key", fmt.Sprintf("%s (fingerprint %s)", src, KeyFingerprint(primary)))
	}
	if msg := CAKeyWarning(c); msg != "" {
		ck.add(CheckWarn, "ca key", msg)
	}
	switch {
	case c.SPIFFESocket != "":
		path := strings.TrimPrefix(c.SPIFFESocket, "unix://")
		if fi, err := os.Stat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
			ck.add(CheckFail, "spiffe-socket", fmt.Sprintf("%s: no SPIRE agent socket there (%v)", path, err))
		} else {
			ck.add(CheckOK, "spiffe-socket", path+": a socket (the SVID and its expiry are the agent's)")
		}
	case c.CertFile != "":
		ck.svidFiles()
	case ck.ca != nil && ck.ca.Key == nil:
		ck.add(CheckFail, "svid", fmt.Sprintf("no %s in %s and no cert-file: the node has nothing to mint or load its SVID with", tlsmgr.CAKeyFile, c.CADir))
	case ck.ca != nil:
		ck.add(CheckOK, "svid", fmt.Sprintf("minted with %s, lifetime %v, renewed at half-life", filepath.Join(c.CADir, tlsmgr.CAKeyFile), c.SVIDTTL))
	}
	for i := range c.TLSCert {
		if c.TLS != "files" || i >= len(c.TLSKey) {
			break
		}
		pair, err := tls.LoadX509KeyPair(c.TLSCert[i], c.TLSKey[i])
		if err != nil {
			ck.add(CheckFail, "tls-cert", fmt.Sprintf("%s: %v", c.TLSCert[i], err))
			continue
		}
		ck.expiry("tls-cert", fmt.Sprintf("%s for %s", c.TLSCert[i], strings.Join(pair.Leaf.DNSNames, ",")), pair.Leaf)
	}
}

// svidFiles checks cert-file and key-file: a pair, an SVID of this node's
// ID, issued by the CA, and its expiry.
func (ck *checker) svidFiles() {
	c := ck.c
	cert, err1 := os.ReadFile(c.CertFile)
	key, err2 := os.ReadFile(c.KeyFile)
	if err := errors.Join(err1, err2); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			ck.add(CheckWarn, "cert-file", fmt.Sprintf("%v: a start waits up to svid-wait (%v) for it", err, c.SVIDWait))
		} else {
			ck.add(CheckFail, "cert-file", err.Error())
		}
		return
	}
	svid, err := x509svid.Parse(cert, key)
	if err != nil {
		ck.add(CheckFail, "cert-file", fmt.Sprintf("%s and %s: %v", c.CertFile, c.KeyFile, err))
		return
	}
	if want := c.spiffeID(ck.td); svid.ID.String() != want {
		ck.add(CheckFail, "cert-file", fmt.Sprintf("%s is an SVID of %s, this node is %s", c.CertFile, svid.ID, want))
		return
	}
	if ck.ca != nil {
		roots := x509.NewCertPool()
		roots.AddCert(ck.ca.Cert)
		inter := x509.NewCertPool()
		for _, ic := range svid.Certificates[1:] {
			inter.AddCert(ic)
		}
		if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: ck.o.Now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil && ck.o.Now().Before(svid.Certificates[0].NotAfter) {
			ck.add(CheckFail, "cert-file", fmt.Sprintf("%s is not issued by the CA in %s: %v", c.CertFile, c.CADir, err))
			return
		}
	}
	ck.expiry("cert-file", fmt.Sprintf("%s: SVID of %s", c.CertFile, svid.ID), svid.Certificates[0])
}

// listenAddr is one address the node would bind.
type listenAddr struct{ key, network, addr string }

// ports binds each listen address of the role and releases it.
func (ck *checker) ports() {
	c := ck.c
	var as []listenAddr
	both := func(key, addr string, udp bool) {
		as = append(as, listenAddr{key, "tcp", addr})
		if udp {
			as = append(as, listenAddr{key, "udp", addr})
		}
	}
	switch c.Role {
	case RoleGateway, RoleSidecar:
		both("listen", c.Listen, !c.NoMeshHTTP3)
		both("gossip-addr", c.GossipAddr, true)
	}
	if c.Role != RoleSidecar {
		both("wan-gossip-addr", c.WANGossipAddr, true)
	}
	switch c.Role {
	case RoleSidecar:
		both("outbound", c.Outbound, false)
		for _, p := range c.OutPorts() {
			as = append(as, listenAddr{p.Proto + "-out", p.Proto, p.Listen})
		}
	case RoleEdge:
		both("public-http", c.PublicHTTP, false)
		if c.PublicHTTPS != "" {
			both("public-https", c.PublicHTTPS, !c.NoHTTP3)
		}
		for _, p := range c.PublicPorts() {
			as = append(as, listenAddr{"public-" + p.Proto, p.Proto, p.Listen})
		}
	}
	if c.Admin != "" {
		if network, a := adminNetwork(c.Admin); network == "tcp" {
			as = append(as, listenAddr{"admin", "tcp", a})
		} else if conn, err := net.DialTimeout("unix", a, time.Second); err == nil {
			conn.Close()
			ck.add(CheckFail, "admin", fmt.Sprintf("%s: a running node answers on this socket", a))
		} else {
			ck.add(CheckOK, "admin", a+": free")
		}
	}
	for _, a := range as {
		key := a.key + " " + a.network
		if _, port, _ := net.SplitHostPort(a.addr); port == "0" {
			ck.add(CheckOK, key, a.addr+": port 0, any free port")
			continue
		}
		var err error
		if a.network == "udp" {
			var pc net.PacketConn
			if pc, err = net.ListenPacket("udp", a.addr); err == nil {
				pc.Close()
			}
		} else {
			var ln net.Listener
			if ln, err = net.Listen("tcp", a.addr); err == nil {
				ln.Close()
			}
		}
		if err != nil {
			ck.add(CheckFail, key, err.Error())
		} else {
			ck.add(CheckOK, key, a.addr+": free")
		}
	}
}

// seeds joins each gossip seed with the node's key and pool label, as a
// short-lived member, and reads the clocks of the peers' signed records.
func (ck *checker) seeds(ctx context.Context) {
	c := ck.c
	type pool struct {
		key, label, bind string
		seeds            []string
		profile          gossip.Profile
	}
	var pools []pool
	if c.Role != RoleEdge {
		pools = append(pools, pool{"join", "meshd/" + ck.td + "/region/" + c.Region, c.GossipAddr, c.Join, gossip.LAN})
	}
	if c.Role != RoleSidecar {
		pools = append(pools, pool{"wan-join", "meshd/" + ck.td + "/global", c.WANGossipAddr, c.WANJoin, gossip.WAN})
	}
	var records [][]byte
	for _, p := range pools {
		if len(p.seeds) == 0 {
			ck.add(CheckOK, p.key, "no seeds: the first node of its pool")
			continue
		}
		if ck.key == nil || ck.td == "" {
			ck.add(CheckWarn, p.key, "skipped: no gossip key or trust domain to join with")
			continue
		}
		host, _, _ := net.SplitHostPort(p.bind)
		var rnd [4]byte
		rand.Read(rnd[:])
		g := &gossip.Cluster{Name: "meshd-check-" + c.Name + "-" + hex.EncodeToString(rnd[:]), BindAddr: net.JoinHostPort(host, "0"),
			Profile: p.profile, Key: ck.key, Label: p.label, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		if err := g.Start(ctx); err != nil {
			ck.add(CheckWarn, p.key, fmt.Sprintf("skipped: cannot open a gossip socket to join from: %v", err))
			continue
		}
		for _, seed := range p.seeds {
			d := net.Dialer{Timeout: ck.o.Timeout}
			conn, err := d.DialContext(ctx, "tcp", seed)
			if err != nil {
				ck.add(CheckFail, p.key, fmt.Sprintf("%s: unreachable: %v", seed, err))
				continue
			}
			conn.Close()
			jctx, cancel := context.WithTimeout(ctx, ck.o.Timeout)
			_, err = g.JoinPeers(jctx, seed)
			cancel()
			if err != nil {
				ck.add(CheckFail, p.key, fmt.Sprintf("%s: answers TCP but refused the join: the gossip key (%s) or the pool (%s) differs, or it is no meshd gossip port",
					seed, KeyFingerprint(ck.key), p.label))
				continue
			}
			ck.add(CheckOK, p.key, fmt.Sprintf("%s: joined pool %s with key %s", seed, p.label, KeyFingerprint(ck.key)))
		}
		// The records come with the join's state exchange, handed on by
		// the pool's own goroutine: a moment's wait, bounded.
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			n := 0
			for _, m := range g.Members() {
				if m.Record != nil {
					n++
				}
			}
			if n > 0 && n == len(g.Members())-1 {
				break
			}
		}
		for _, m := range g.Members() {
			if m.Record != nil {
				records = append(records, m.Record)
				ck.ids = append(ck.ids, m.Name)
			}
		}
		lctx, cancel := context.WithTimeout(ctx, ck.o.Timeout)
		if err := g.Leave(lctx); err != nil {
			g.Shutdown()
		}
		cancel()
	}
	ck.clock(records)
}

// clock compares this host's clock with the signing times of the peers'
// records. A record is signed when it changes (and when its signer's SVID
// is renewed), so its time is at most the signer's now: one signed ahead
// of this clock shows the signer's clock ahead by at least that much. A
// clock behind this one cannot be seen this way.
func (ck *checker) clock(records [][]byte) {
	if len(records) == 0 {
		ck.add(CheckOK, "clock", "skipped: no peer's record to compare with (no seeds answered, or none given); compare with NTP (chronyc tracking, timedatectl)")
		return
	}
	now := ck.o.Now()
	worst, who := time.Duration(0), ""
	for i, raw := range records {
		_, at, _, _, err := parseEnvelope(raw)
		if err != nil {
			continue // an unsigned record (--unsigned-records) has no time
		}
		if ahead := time.Unix(0, at).Sub(now); ahead > worst {
			worst, who = ahead, ck.ids[i]
		}
	}
	if worst > time.Second {
		level := CheckWarn
		if worst > policyMaxSkew {
			level = CheckFail // its records and policies are refused as signed in the future
		}
		ck.add(level, "clock", fmt.Sprintf("%s signed its record %v ahead of this host's clock: one of the two clocks is off", who, worst.Round(time.Millisecond)))
		return
	}
	ck.add(CheckOK, "clock", fmt.Sprintf("no peer's record (%d) is signed ahead of this clock; a peer behind it would not show here", len(records)))
}

// bgpPeers connects to each BGP peer's port (179 unless given).
func (ck *checker) bgpPeers(ctx context.Context) {
	sp, err := ck.c.speaker()
	if err != nil || sp == nil {
		return // validated, or no BGP
	}
	for _, p := range sp.Peers {
		port := int(p.Port)
		if port == 0 {
			port = 179
		}
		addr := net.JoinHostPort(p.Addr.String(), strconv.Itoa(port))
		if p.Passive {
			ck.add(CheckOK, "bgp-peer", addr+": passive, the router connects to this edge")
			continue
		}
		d := net.Dialer{Timeout: ck.o.Timeout}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			ck.add(CheckFail, "bgp-peer", fmt.Sprintf("%s: unreachable: %v", addr, err))
			continue
		}
		conn.Close()
		ck.add(CheckOK, "bgp-peer", addr+": accepts TCP")
	}
}

// CAKeyWarning is the warning for a sidecar that runs with the CA key
// beside it, "" for any other node: one compromised sidecar could then
// mint any identity of the mesh. The production path gives each node an
// SVID (meshd ca issue, cert-file and key-file) or SPIRE (spiffe-socket),
// and keeps ca.key elsewhere.
func CAKeyWarning(c *Config) string {
	if c.Role != RoleSidecar || c.CertFile != "" || c.SPIFFESocket != "" || c.CADir == "" {
		return ""
	}
	if _, err := os.Stat(filepath.Join(c.CADir, tlsmgr.CAKeyFile)); err != nil {
		return ""
	}
	return "this sidecar holds the CA key: anyone who takes it over can mint any identity of the mesh; " +
		"issue it an SVID (meshd ca issue --id spiffe://TD/service/" + c.Service + ") and run it with --cert-file and --key-file, " +
		"or --spiffe-socket, with a --ca-dir that has only ca.crt and gossip.key (deploy/README.md)"
}
