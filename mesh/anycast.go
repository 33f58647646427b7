package mesh

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/meshd/meshd/bgp"
)

// validateBGP checks the anycast settings; each error names its key.
func (c *Config) validateBGP() error {
	_, err := c.speaker()
	return err
}

// speaker builds the BGP speaker the settings describe, or nil when the
// node announces nothing.
func (c *Config) speaker() (*bgp.Speaker, error) {
	if len(c.Anycast) == 0 {
		for field, set := range map[string]bool{"bgp-asn": c.BGPASN != "", "bgp-router-id": c.BGPRouterID != "", "bgp-peer": len(c.BGPPeers) > 0, "anycast-bind": c.AnycastBind != ""} {
			if set {
				return nil, fieldErr(field, "given without anycast: nothing would be announced")
			}
		}
		return nil, nil
	}
	if c.Role != RoleEdge {
		return nil, fieldErr("anycast", "only an edge announces anycast prefixes")
	}
	sp := &bgp.Speaker{}
	for _, a := range c.Anycast {
		p, err := bgp.ParsePrefix(a)
		if err != nil {
			return nil, &FieldError{Field: "anycast", Err: err}
		}
		if c.AnycastBind != "" && !p.IsSingleIP() {
			return nil, fieldErr("anycast-bind", "%s is not a single address (/32 or /128): bind each announced address", p)
		}
		sp.Prefixes = append(sp.Prefixes, p)
	}
	if c.BGPASN == "" {
		return nil, fieldErr("bgp-asn", "required with anycast")
	}
	asn, err := bgp.ParseASN(c.BGPASN)
	if err != nil {
		return nil, &FieldError{Field: "bgp-asn", Err: err}
	}
	sp.ASN = asn
	if c.BGPRouterID == "" {
		return nil, fieldErr("bgp-router-id", "required with anycast: an IPv4 address unique in the AS")
	}
	if sp.RouterID, err = bgp.ParseRouterID(c.BGPRouterID); err != nil {
		return nil, &FieldError{Field: "bgp-router-id", Err: err}
	}
	if len(c.BGPPeers) == 0 {
		return nil, fieldErr("bgp-peer", "required with anycast: ADDR,ASN[,options]")
	}
	for _, s := range c.BGPPeers {
		p, err := bgp.ParsePeer(s)
		if err != nil {
			return nil, &FieldError{Field: "bgp-peer", Err: err}
		}
		sp.Peers = append(sp.Peers, p)
	}
	if c.BGPListenPort != "" {
		port, err := strconv.ParseUint(c.BGPListenPort, 10, 16)
		if err != nil {
			return nil, fieldErr("bgp-listen-port", "%q is not a port", c.BGPListenPort)
		}
		sp.ListenPort = int32(port)
	}
	if _, err := bgp.ParseDrainMode(c.BGPDrain); err != nil {
		return nil, &FieldError{Field: "bgp-drain", Err: err}
	}
	if err := sp.Validate(); err != nil {
		return nil, fieldErr("bgp-peer", "%v", err)
	}
	return sp, nil
}

// startAnycast starts the edge's BGP speaker and the health gate that
// announces its prefixes only while the edge can serve.
func (n *Node) startAnycast(ctx context.Context) error {
	sp, err := n.Config.speaker()
	if err != nil || sp == nil {
		return err
	}
	sp.Logger = n.Logger.With("part", "bgp")
	if ifname := n.Config.AnycastBind; ifname != "" {
		// Before the first announcement: traffic the route attracts must
		// find the address here.
		unbind, err := bgp.BindAddrs(ifname, sp.Prefixes)
		if err != nil {
			return &FieldError{Field: "anycast-bind", Err: err}
		}
		n.unbindAnycast = unbind
		n.Logger.Info("anycast addresses bound", "interface", ifname, "prefixes", n.Config.Anycast)
	}
	if err := sp.Start(ctx); err != nil {
		n.releaseAnycastAddrs()
		return fmt.Errorf("bgp: %w", err)
	}
	n.speaker = sp
	n.gate = &bgp.Gate{UpHold: n.Config.BGPUpHold, Logger: sp.Logger}
	n.canServe = make(chan bool, 1)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.gate.Run(ctx, n.canServe, sp.SetAnnounced)
	}()
	n.signalCanServe()
	return nil
}

// signalCanServe hands the current value to the gate, dropping a stale
// value not yet read: the gate wants the latest, not every one.
func (n *Node) signalCanServe() {
	if n.canServe == nil {
		return
	}
	// The gate's input is readiness: listeners accept, not draining, and
	// at least one gateway answers.
	v := n.Ready()
	for {
		select {
		case n.canServe <- v:
			return
		default:
			select {
			case <-n.canServe:
			default:
			}
		}
	}
}

// drainAnycast withdraws (or prepends) the edge's routes before its
// listeners close, so routers move users away first.
func (n *Node) drainAnycast(ctx context.Context) {
	if n.speaker == nil {
		return
	}
	mode, _ := bgp.ParseDrainMode(n.Config.BGPDrain)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := n.speaker.Drain(dctx, mode); err != nil {
		n.Logger.Warn("bgp drain", "err", err)
	}
}

// releaseAnycastAddrs removes the anycast addresses the edge added
// (--anycast-bind): after its listeners closed, so no connection to them
// is cut.
func (n *Node) releaseAnycastAddrs() {
	if n.unbindAnycast == nil {
		return
	}
	if err := n.unbindAnycast(); err != nil {
		n.Logger.Warn("anycast-bind: removing addresses", "err", err)
	}
	n.unbindAnycast = nil
}

func (n *Node) stopAnycast(ctx context.Context) {
	defer n.releaseAnycastAddrs()
	if n.speaker == nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := n.speaker.Stop(sctx); err != nil {
		n.Logger.Warn("bgp stop", "err", err)
	}
}

// BGPStatus is /v1/bgp.
type BGPStatus struct {
	Enabled bool            `json:"enabled"`
	Gate    *bgp.GateStatus `json:"gate,omitempty"`
	Speaker *bgp.Status     `json:"speaker,omitempty"`
}

func (n *Node) bgpStatus() BGPStatus {
	if n.speaker == nil {
		return BGPStatus{}
	}
	gs, st := n.gate.Status(), n.speaker.Status()
	return BGPStatus{Enabled: true, Gate: &gs, Speaker: &st}
}
