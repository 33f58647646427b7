package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/meshd/meshd/proxy"
)

// TCP (and UDP) ports of services: a sidecar publishes its app's ports by
// name (--tcp pg=127.0.0.1:5432); a caller reaches one through a tunnel to
// "<service>.mesh:<port>", where the port is the name, the app's port
// number, or 0 for the service's only TCP port. Each hop routes the tunnel
// as it routes a request for the service (same instances, gateways,
// identities and authorization); the last hop, the sidecar beside the app,
// connects to the app's port.

// maxPorts bounds the ports a sidecar publishes (and a record may list).
const maxPorts = 64

// AppPort is a port of the app that a sidecar publishes.
type AppPort struct {
	Name  string // "pg"
	Proto string // "tcp" or "udp"
	Addr  string // the app's address, "127.0.0.1:5432"
	// ProxyProtocol: each connection to the app starts with a PROXY
	// protocol v2 header naming the client.
	ProxyProtocol bool
}

// OutPort is a local listener of a sidecar for a port of a service.
type OutPort struct {
	Service string // "db"
	Port    string // "pg"; "" for the service's only port of its protocol
	Proto   string // "tcp" or "udp"
	Listen  string // "127.0.0.1:15432"
}

// authority is the tunnel target for the port: "db.mesh:pg", "db.mesh:0".
func (p OutPort) authority() string {
	port := p.Port
	if port == "" {
		port = "0"
	}
	return p.Service + meshSuffix + ":" + port
}

// parseAppPort parses NAME=ADDR[,proxy-protocol] (--tcp, --udp).
func parseAppPort(proto, v string) (AppPort, error) {
	name, rest, ok := strings.Cut(v, "=")
	if !ok {
		return AppPort{}, fmt.Errorf("%q: want NAME=ADDRESS, e.g. pg=127.0.0.1:5432", v)
	}
	if err := validLabel(name); err != nil {
		return AppPort{}, fmt.Errorf("%q: port name: %w", v, err)
	}
	if isNumber(name) {
		return AppPort{}, fmt.Errorf("%q: a port name is not a number (callers may use the number of the app's port)", v)
	}
	addr, opt, _ := strings.Cut(rest, ",")
	p := AppPort{Name: name, Proto: proto, Addr: addr}
	switch opt {
	case "":
	case "proxy-protocol":
		if proto != "tcp" {
			return AppPort{}, fmt.Errorf("%q: proxy-protocol is for TCP ports", v)
		}
		p.ProxyProtocol = true
	default:
		return AppPort{}, fmt.Errorf("%q: unknown option %q (known: proxy-protocol)", v, opt)
	}
	if err := validHostPort(addr); err != nil {
		return AppPort{}, fmt.Errorf("%q: %w", v, err)
	}
	return p, nil
}

// parseOutPort parses SERVICE[/PORT]=LOCALADDR (--tcp-out, --udp-out).
func parseOutPort(proto, v string) (OutPort, error) {
	target, listen, ok := strings.Cut(v, "=")
	if !ok {
		return OutPort{}, fmt.Errorf("%q: want SERVICE[/PORT]=LOCAL-ADDRESS, e.g. db/pg=127.0.0.1:15432", v)
	}
	return newOutPort(v, proto, target, listen)
}

// newOutPort checks SERVICE[/PORT] and the local address of v.
func newOutPort(v, proto, target, listen string) (OutPort, error) {
	svc, port, _ := strings.Cut(target, "/")
	if err := validLabel(svc); err != nil {
		return OutPort{}, fmt.Errorf("%q: service: %w", v, err)
	}
	if port != "" && !isNumber(port) {
		if err := validLabel(port); err != nil {
			return OutPort{}, fmt.Errorf("%q: port: %w", v, err)
		}
	}
	if err := validHostPort(listen); err != nil {
		return OutPort{}, fmt.Errorf("%q: %w", v, err)
	}
	return OutPort{Service: svc, Port: port, Proto: proto, Listen: listen}, nil
}

func isNumber(s string) bool {
	if s == "" || len(s) > 5 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// AppPorts returns the app's ports of --tcp and --udp. The configuration
// must be valid.
func (c *Config) AppPorts() []AppPort {
	var ps []AppPort
	for proto, vs := range c.portFields(appPort) {
		for _, v := range vs {
			if p, err := parseAppPort(proto, v); err == nil {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// OutPorts returns the local listeners of --tcp-out and --udp-out. The
// configuration must be valid.
func (c *Config) OutPorts() []OutPort {
	var ps []OutPort
	for proto, vs := range c.portFields(outPort) {
		for _, v := range vs {
			if p, err := parseOutPort(proto, v); err == nil {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// Kinds of port flags: --tcp/--udp, --tcp-out/--udp-out,
// --public-tcp/--public-udp.
type portKind int

const (
	appPort portKind = iota
	outPort
	publicPort
)

// portFields returns the flags of one kind, TCP's then UDP's.
func (c *Config) portFields(k portKind) func(func(string, []string) bool) {
	tcp, udp := c.TCP, c.UDP
	switch k {
	case outPort:
		tcp, udp = c.TCPOut, c.UDPOut
	case publicPort:
		tcp, udp = c.PublicTCP, c.PublicUDP
	}
	return func(yield func(string, []string) bool) {
		if yield("tcp", tcp) {
			yield("udp", udp)
		}
	}
}

// parsePublicPort parses LISTEN=SERVICE[/PORT] (--public-tcp).
func parsePublicPort(proto, v string) (OutPort, error) {
	listen, target, ok := strings.Cut(v, "=")
	if !ok {
		return OutPort{}, fmt.Errorf("%q: want LISTEN-ADDRESS=SERVICE[/PORT], e.g. :5432=db/pg", v)
	}
	return newOutPort(v, proto, target, listen)
}

// PublicPorts returns the edge's public ports of --public-tcp and
// --public-udp. The configuration must be valid.
func (c *Config) PublicPorts() []OutPort {
	var ps []OutPort
	for proto, vs := range c.portFields(publicPort) {
		for _, v := range vs {
			if p, err := parsePublicPort(proto, v); err == nil {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// proxyProtocolFrom parses --proxy-protocol-from: prefixes, or addresses
// as one-address prefixes. The configuration must be valid.
func (c *Config) proxyProtocolFrom() []netip.Prefix {
	var ps []netip.Prefix
	for _, v := range c.ProxyProtocolFrom {
		if p, err := parsePrefixOrAddr(v); err == nil {
			ps = append(ps, p)
		}
	}
	return ps
}

func parsePrefixOrAddr(v string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(v); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q: want an IP address or a prefix such as 10.0.0.0/24", v)
	}
	return p.Masked(), nil
}

// validatePorts checks --tcp, --tcp-out, --public-tcp and
// --proxy-protocol-from.
func (c *Config) validatePorts() error {
	if len(c.ProxyProtocolFrom) > 0 && c.Role != RoleEdge {
		return fieldErr("proxy-protocol-from", "only an edge has public listeners behind a load balancer")
	}
	for _, v := range c.ProxyProtocolFrom {
		if _, err := parsePrefixOrAddr(v); err != nil {
			return &FieldError{Field: "proxy-protocol-from", Err: err}
		}
	}
	// A TCP and a UDP listener may share an address; two of one
	// protocol may not.
	listens := map[string]bool{}
	dup := func(proto, addr string) bool {
		k := proto + " " + addr
		if listens[k] && !strings.HasSuffix(addr, ":0") {
			return true
		}
		listens[k] = true
		return false
	}
	for proto, vs := range c.portFields(publicPort) {
		field := "public-" + proto
		if len(vs) > 0 && c.Role != RoleEdge {
			return fieldErr(field, "only an edge has public ports")
		}
		for _, v := range vs {
			p, err := parsePublicPort(proto, v)
			if err != nil {
				return &FieldError{Field: field, Err: err}
			}
			if dup(proto, p.Listen) {
				return fieldErr(field, "address %s given twice", p.Listen)
			}
		}
	}
	for proto, vs := range c.portFields(appPort) {
		if len(vs) > 0 && c.Role != RoleSidecar {
			return fieldErr(proto, "only a sidecar publishes service ports")
		}
		if len(vs) > maxPorts {
			return fieldErr(proto, "%d ports, over the limit of %d", len(vs), maxPorts)
		}
		names := map[string]bool{}
		for _, v := range vs {
			p, err := parseAppPort(proto, v)
			if err != nil {
				return &FieldError{Field: proto, Err: err}
			}
			if names[p.Name] {
				return fieldErr(proto, "port name %q given twice", p.Name)
			}
			names[p.Name] = true
		}
	}
	for proto, vs := range c.portFields(outPort) {
		field := proto + "-out"
		if len(vs) > 0 && c.Role != RoleSidecar {
			return fieldErr(field, "only a sidecar reaches service ports")
		}
		for _, v := range vs {
			p, err := parseOutPort(proto, v)
			if err != nil {
				return &FieldError{Field: field, Err: err}
			}
			if dup(proto, p.Listen) {
				return fieldErr(field, "local address %s given twice", p.Listen)
			}
		}
	}
	return nil
}

// splitTunnelTarget splits a tunnel authority "db.mesh:pg" into the host
// and the port token.
func splitTunnelTarget(authority string) (host, port string) {
	i := strings.LastIndexByte(authority, ':')
	if i < 0 {
		return authority, ""
	}
	return authority[:i], authority[i+1:]
}

// tunnelHost is the host of out to route by: a CONNECT's authority without
// its port token (which may be a name, which Host parsing refuses).
func tunnelHost(out *http.Request) string {
	if out.Method != http.MethodConnect {
		return out.Host
	}
	h, _ := splitTunnelTarget(out.Host)
	return h
}

// appPorts is the sidecar's view of its app's ports, built once at start.
type appPorts struct {
	tcp, udp portSet
}

// portSet is the app's ports of one protocol.
type portSet struct {
	proto  string
	byName map[string]*proxy.Upstream
	byNum  map[string]*proxy.Upstream // by the app's port number
	only   *proxy.Upstream            // the one port, when there is one
	names  []string
}

func newAppPorts(ps []AppPort) *appPorts {
	a := &appPorts{}
	for _, set := range []*portSet{&a.tcp, &a.udp} {
		set.byName, set.byNum = map[string]*proxy.Upstream{}, map[string]*proxy.Upstream{}
	}
	a.tcp.proto, a.udp.proto = "TCP", "UDP"
	for _, p := range ps {
		set := &a.tcp
		if p.Proto == "udp" {
			set = &a.udp
		}
		u := &proxy.Upstream{Key: "app-" + p.Proto + "|" + p.Name + "|" + p.Addr, Addr: p.Addr, Name: "app:" + p.Name, Raw: true,
			ProxyProtocol: p.ProxyProtocol, UDP: p.Proto == "udp"}
		set.byName[p.Name] = u
		if _, port, err := net.SplitHostPort(p.Addr); err == nil {
			if _, dup := set.byNum[port]; dup {
				set.byNum[port] = nil // two apps' ports with one number: by name only
			} else {
				set.byNum[port] = u
			}
		}
		set.names = append(set.names, p.Name)
	}
	for _, set := range []*portSet{&a.tcp, &a.udp} {
		if len(set.byName) == 1 {
			for _, u := range set.byName {
				set.only = u
			}
		}
	}
	return a
}

// route picks the app's port a CONNECT asks for: a UDP port when it
// says it carries UDP (proxy.HeaderProtocol), else a TCP port.
func (a *appPorts) route(service string, out *http.Request) ([]*proxy.Upstream, error) {
	set := &a.tcp
	switch v := out.Header.Get(proxy.HeaderProtocol); v {
	case "":
	case "udp":
		set = &a.udp
	default:
		return nil, &proxy.StatusError{Code: http.StatusBadRequest, Msg: fmt.Sprintf("meshd: unknown tunnel protocol %q", truncate(v, 16))}
	}
	_, port := splitTunnelTarget(out.Host)
	var u *proxy.Upstream
	switch {
	case port == "0" || port == "":
		u = set.only
		if u == nil && len(set.names) > 1 {
			return nil, &proxy.StatusError{Code: http.StatusNotFound,
				Msg: fmt.Sprintf("meshd: service %s has %d %s ports (%s): name one", service, len(set.names), set.proto, strings.Join(set.names, ", "))}
		}
	case isNumber(port):
		u = set.byNum[port]
	default:
		u = set.byName[port]
	}
	if u == nil {
		return nil, &proxy.StatusError{Code: http.StatusNotFound,
			Msg: fmt.Sprintf("meshd: service %s publishes no %s port %q", service, set.proto, truncate(port, 64))}
	}
	return []*proxy.Upstream{u}, nil
}

// portRecords lists the app's ports for the sidecar's record.
func portRecords(ps []AppPort) []PortRecord {
	var rs []PortRecord
	for _, p := range ps {
		port := 0
		if _, s, err := net.SplitHostPort(p.Addr); err == nil {
			port, _ = strconv.Atoi(s)
		}
		rs = append(rs, PortRecord{Name: p.Name, Proto: p.Proto, Port: port})
	}
	return rs
}

// portListeners are a sidecar's local listeners of --tcp-out and the
// connections they carry.
type portListeners struct {
	lns   []net.Listener
	pcs   []*net.UDPConn // UDP sockets: closed at shutdown, flows end with them
	udp   []namedForwarder
	addrs map[string]string // "tcp-out db/pg" → bound address
	wg    sync.WaitGroup    // accept loops and connections
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// startOutPorts opens the sidecar's local listeners of --tcp-out; each
// accepted connection goes through h as a tunnel to the service's port.
func (n *Node) startOutPorts(bg context.Context, h *proxy.Handler) (*portListeners, error) {
	pl := newPortListeners()
	for _, p := range n.Config.OutPorts() {
		name := p.Proto + "-out " + p.Service
		if p.Port != "" {
			name += "/" + p.Port
		}
		if err := pl.listen(bg, p.Proto+"-out", name, p, h, nil, n.Logger); err != nil {
			pl.close()
			return nil, err
		}
	}
	return pl, nil
}

// startPublicPorts opens the edge's public TCP ports (--public-tcp); each
// connection is carried to the service's port in the nearest region that
// has a healthy instance, like a request for the service.
func (n *Node) startPublicPorts(bg context.Context) (*portListeners, error) {
	pl := newPortListeners()
	h := &proxy.Handler{Pool: n.pool, Via: n.Config.Name, Logger: n.Logger, Public: true, Route: n.edgeTCPRoute}
	n.handlers = append(n.handlers, namedHandler{"public-ports", h})
	for _, p := range n.Config.PublicPorts() {
		if err := pl.listen(bg, "public-"+p.Proto, "public-"+p.Proto+" "+p.Listen, p, h, n.Config.proxyProtocolFrom(), n.Logger); err != nil {
			pl.close()
			return nil, err
		}
	}
	return pl, nil
}

// edgeTCPRoute routes a public TCP connection: its tunnel's authority
// names the service.
func (n *Node) edgeTCPRoute(out *http.Request) ([]*proxy.Upstream, error) {
	svc, ok := meshService(tunnelHost(out))
	if !ok {
		return nil, errNoHost(out.Host)
	}
	out.Header.Set(HeaderService, svc)
	s := n.snap.Load()
	if ups := s.remoteFor(svc); len(ups) > 0 {
		return ups, nil
	}
	now := n.now()
	if d := s.downFor(svc, now); d != nil || s.known[svc] {
		return nil, errNoHealthy(svc, d, now)
	}
	return nil, errUnknownService(svc)
}

func newPortListeners() *portListeners {
	return &portListeners{addrs: map[string]string{}, conns: map[net.Conn]struct{}{}}
}

// listen opens p.Listen and carries each connection through h.
func (pl *portListeners) listen(ctx context.Context, field, name string, p OutPort, h *proxy.Handler, trusted []netip.Prefix, logger *slog.Logger) error {
	if p.Proto == "udp" {
		return pl.listenUDP(ctx, field, name, p, h, logger)
	}
	ln, err := net.Listen("tcp", p.Listen)
	if err != nil {
		return &FieldError{Field: field, Err: err}
	}
	if len(trusted) > 0 {
		ln = &proxy.ProxyProtoListener{Listener: ln, Trusted: trusted, Logger: logger}
	}
	pl.lns = append(pl.lns, ln)
	pl.addrs[name] = ln.Addr().String()
	logger.Info("listening", "listener", name, "addr", ln.Addr().String(), "target", p.authority())
	pl.wg.Add(1)
	go pl.accept(ctx, ln, h, p, logger)
	return nil
}

func (pl *portListeners) accept(ctx context.Context, ln net.Listener, h *proxy.Handler, p OutPort, logger *slog.Logger) {
	defer pl.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				logger.Warn("accept failed", "addr", p.Listen, "err", err)
			}
			return
		}
		pl.mu.Lock()
		pl.conns[c] = struct{}{}
		pl.wg.Add(1)
		pl.mu.Unlock()
		go func() {
			defer pl.wg.Done()
			h.ServeConn(ctx, c, p.authority(), http.Header{HeaderService: {p.Service}})
			pl.mu.Lock()
			delete(pl.conns, c)
			pl.mu.Unlock()
		}()
	}
}

// listenUDP opens the UDP socket p.Listen; each client address is a flow
// carried through h as a tunnel to the service's UDP port.
func (pl *portListeners) listenUDP(ctx context.Context, field, name string, p OutPort, h *proxy.Handler, logger *slog.Logger) error {
	ua, err := net.ResolveUDPAddr("udp", p.Listen)
	if err != nil {
		return &FieldError{Field: field, Err: err}
	}
	pc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return &FieldError{Field: field, Err: err}
	}
	pl.pcs = append(pl.pcs, pc)
	pl.addrs[name] = pc.LocalAddr().String()
	logger.Info("listening", "listener", name, "addr", pc.LocalAddr().String(), "target", p.authority())
	local := pc.LocalAddr().String()
	f := &proxy.UDPForwarder{Logger: logger, Open: func(fctx context.Context, client netip.AddrPort) (io.ReadWriteCloser, error) {
		hdr := http.Header{HeaderService: {p.Service}, proxy.HeaderProtocol: {"udp"},
			proxy.HeaderClient: {client.String()}, proxy.HeaderClientDst: {local}}
		return h.OpenTunnel(fctx, p.authority(), hdr, client.String())
	}}
	pl.udp = append(pl.udp, namedForwarder{name, f})
	pl.wg.Add(1)
	go func() {
		defer pl.wg.Done()
		if err := f.Serve(ctx, pc); err != nil && !errors.Is(err, net.ErrClosed) {
			logger.Warn("udp: serve failed", "addr", p.Listen, "err", err)
		}
	}()
	return nil
}

// shutdown stops accepting, lets open connections finish until ctx ends,
// then closes the rest.
func (pl *portListeners) shutdown(ctx context.Context) error {
	if pl == nil {
		return nil
	}
	pl.stopAccepting()
	done := make(chan struct{})
	go func() {
		pl.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	pl.close()
	<-done
	return ctx.Err()
}

// stopAccepting closes the listeners and the UDP sockets: UDP has no
// connection to finish, its flows end with the socket.
func (pl *portListeners) stopAccepting() {
	for _, ln := range pl.lns {
		ln.Close()
	}
	for _, pc := range pl.pcs {
		pc.Close()
	}
}

// close closes the listeners and every connection at once.
func (pl *portListeners) close() {
	pl.stopAccepting()
	pl.mu.Lock()
	for c := range pl.conns {
		c.Close()
	}
	pl.mu.Unlock()
}

// namedHandler is a forwarding handler and the listener it serves, for
// /metrics.
type namedHandler struct {
	listener string
	h        *proxy.Handler
}

// namedForwarder is a UDP socket's forwarder and the socket's name.
type namedForwarder struct {
	listener string
	f        *proxy.UDPForwarder
}
