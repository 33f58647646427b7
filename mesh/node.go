package mesh

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/meshd/meshd/bgp"
	"github.com/meshd/meshd/cache"
	"github.com/meshd/meshd/gossip"
	"github.com/meshd/meshd/proxy"
	"github.com/meshd/meshd/tlsmgr"
)

// Node is one meshd process in one role. Fill Config, then Start; stop with
// Shutdown. A Node is not reusable after Shutdown.
type Node struct {
	// Config is the node's configuration; Start applies defaults and
	// validates it.
	Config Config
	// Logger receives the node's logs. Default slog.Default().
	Logger *slog.Logger
	// LoadConfig reads the node's configuration again for Reload; its
	// error names the field (and the file position) of a bad one.
	// meshd run reads the config file and applies the same flags. Default
	// nil: Reload re-reads the certificates and the policy only.
	LoadConfig func() (Config, error)
	// LogLevel, when set, is the level of Logger's handler, which Reload
	// changes. Default nil: a changed log-level needs a restart.
	LogLevel *slog.LevelVar

	cur      atomic.Pointer[Config]         // the running configuration (reload.go)
	reloadMu sync.Mutex                     // one reload at a time
	app      atomic.Pointer[proxy.Upstream] // sidecar: its app's HTTP address

	ids      *tlsmgr.Manager
	td       string
	lan, wan *gossip.Cluster
	pool     *proxy.Pool

	meshSrv, outSrv, publicSrv, httpsSrv *proxy.Server
	outPorts                             *portListeners // sidecar: --tcp-out; edge: --public-tcp
	handlers                             []namedHandler // the forwarding handlers, for /metrics
	adminSrv                             *http.Server   // nil without Admin
	adminAddr                            string         // its bound address; unix:PATH for a socket
	advertise                            string

	snap atomic.Pointer[Snapshot]
	// The traffic policy the node runs (policysync.go) and its compiled
	// routes (chain.go); nil without one.
	pol           atomic.Pointer[policyState]
	table         atomic.Pointer[routeTable]
	polMu         sync.Mutex        // serializes adoptions; guards polBad
	polBad        map[string]string // pool/member → last refusal logged
	polKick       chan struct{}
	polPeers      []peerPolicy // guarded by mu
	rootSum       string       // names the policy file of this mesh before per-root files (policysync.go)
	policyDelay   prometheus.Histogram
	policyRefused prometheus.Counter
	rateLimited   *prometheus.CounterVec
	authzDenied   *prometheus.CounterVec
	authzLog      *proxy.RateLimiter // refusals logged per caller and rule
	// callerID is what the node records in HeaderCaller as the first
	// mesh hop: its own SPIFFE ID, as a header value.
	callerID []string
	// inflight counts the requests a sidecar's app is serving, for the
	// policy's hard concurrency limit.
	inflight atomic.Int64
	// replays counts requests the edge replayed in another region.
	replays atomic.Int64
	// mirrors holds a slot per mirrored copy in flight (fault.go).
	mirrors                               chan struct{}
	mirrored, mirrorFailed, mirrorDropped atomic.Int64
	ready                                 atomic.Bool // started and not draining
	// Start-up ordering (startup.go): the SVID, then a first catalog,
	// then the sidecar's listeners accept (serve is their Server.Hold);
	// the admin API answers only /healthz and /readyz until Start is done.
	svidUp, catalogUp, adminOpen atomic.Bool
	catalogMembers               atomic.Int64 // other members seen while waiting for the catalog
	serve                        chan struct{}
	draining                     atomic.Bool
	leaving                      atomic.Bool // gossip leave has begun: the records are final
	// wholeMesh marks a node whose whole mesh stops with it (the demo):
	// nobody is left to tell, so it does not wait for its gossip leave
	// to be passed on, which would take each node its leave timeout.
	wholeMesh bool
	healthy   atomic.Bool // sidecar: the app answers its health check

	registry *prometheus.Registry
	// tracing is the node's tracer (telemetry.go); nil when tracing is
	// off. exportSpans, when set before Start (tests only), turns it on
	// and receives every span at its end instead of an OTLP receiver.
	tracing     *tracing
	exportSpans sdktrace.SpanExporter
	reqs        *reqMetrics         // the golden signals of requests (golden.go)
	cache       *cache.Store        // edge: the HTTP cache; nil when off
	certs       *tlsmgr.PublicCerts // edge with public-https
	probe       *prober             // edges and gateways: reachability of global pool gateways
	// unbindAnycast removes the addresses --anycast-bind added.
	unbindAnycast func() error
	speaker       *bgp.Speaker // edge with anycast prefixes
	gate          *bgp.Gate    // announces only while the edge can serve
	canServe      chan bool    // latest "can serve" for the gate

	kick   chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex // guards the fields below (rebuild path only)
	upstreams map[string]*proxy.Upstream
	badRecs   map[string]string // member name → last bad record refused, to log once
	lastWAN   string            // last global record published (gateway)
	lastLAN   string
	// the SVID each pool's record was last signed with (signedrec.go)
	lastWANSVID, lastLANSVID *x509svid.SVID
	// opened: per pool, the signed records verified, by their bytes;
	// accepted: per pool and member, the newest record accepted (a
	// replayed older one is not believed).
	opened      map[string]map[string]*openedRecord
	accepted    map[string]map[string]*openedRecord
	openedUnder map[string]string          // per pool: BundleSum opened was verified with
	refusedRecs map[string][]RefusedRecord // per pool: members whose record decode refused last
	// answering: per pool, members gossip declared failed that are kept
	// in the catalog because they still answer requests (answering.go).
	answering map[string]map[string]*keptMember
	keeping   atomic.Bool // some member is kept: loop re-checks it
	// lastMembers: per pool, the members the last decode listed, for the
	// gossip address of a member kept once gossip no longer lists it.
	lastMembers    map[string][]member
	recordsRefused atomic.Int64
	unsignedSeen   map[string]bool  // members whose unsigned record was believed; under mu
	purges         []PurgeRecord    // edge: purges accepted here, newest last
	applied        map[string]int64 // edge: purge IDs applied here → unix time
	stopped        bool
	names          *nameBook   // which service owns which host name; tombstones (domains.go)
	expiry         *time.Timer // rebuilds when the next tombstone ends
	since          int64       // sidecar: Unix ms it started claiming its service (ServiceRecord.Since)

	// now is the clock of tombstones and host name claims. Default
	// time.Now; tests inject a fake one before Start.
	now func() time.Time
	// forge, when set (tests only), rewrites the node's records before
	// they are signed: a node lying about itself.
	forge func(*NodeRecord)
}

// Addrs reports the bound address of each listener the node runs, keyed by
// "mesh", "outbound", "public-http", "admin", "gossip", "wan-gossip", and
// "tcp-out SERVICE[/PORT]" for each --tcp-out.
func (n *Node) Addrs() map[string]string {
	m := map[string]string{}
	if n.outPorts != nil {
		for k, v := range n.outPorts.addrs {
			m[k] = v
		}
	}
	for name, s := range map[string]*proxy.Server{"mesh": n.meshSrv, "outbound": n.outSrv, "public-http": n.publicSrv, "public-https": n.httpsSrv} {
		if s != nil {
			m[name] = s.BoundAddr()
		}
	}
	if n.adminSrv != nil {
		m["admin"] = n.adminAddr
	}
	if n.lan != nil {
		m["gossip"] = n.lan.Addr()
	}
	if n.wan != nil {
		m["wan-gossip"] = n.wan.Addr()
	}
	return m
}

// Snapshot returns the node's current view of the mesh.
func (n *Node) Snapshot() *Snapshot { return n.snap.Load() }

// ID is the node's SPIFFE ID.
func (n *Node) ID() string { return n.Config.spiffeID(n.td) }

func (c *Config) spiffeID(td string) string {
	var id string
	switch c.Role {
	case RoleEdge:
		id, _ = tlsmgr.EdgeID(td, c.Name)
	case RoleGateway:
		id, _ = tlsmgr.GatewayID(td, c.Region, c.Name)
	case RoleSidecar:
		id, _ = tlsmgr.ServiceID(td, c.Service)
	}
	return id
}

// Start brings the node up: identity, listeners, gossip, then the record
// that tells peers it is ready. A start that fails half way closes what it
// opened and returns an error that names what failed.
func (n *Node) Start(ctx context.Context) (err error) {
	if n.Logger == nil {
		n.Logger = slog.Default()
	}
	n.Config.SetDefaults()
	if err := n.Config.Validate(); err != nil {
		return err
	}
	c := &n.Config
	n.Logger = n.Logger.With("node", c.Name, "role", c.Role)
	n.kick = make(chan struct{}, 1)
	n.upstreams = map[string]*proxy.Upstream{}
	n.badRecs = map[string]string{}
	n.applied = map[string]int64{}
	n.polBad = map[string]string{}
	n.polKick = make(chan struct{}, 1)
	n.mirrors = make(chan struct{}, mirrorInFlight)
	n.authzLog = proxy.NewRateLimiter(0.2, 1, 10000)
	if n.now == nil {
		n.now = time.Now
	}
	n.names = newNameBook(c.ServiceTombstone, c.PublicDomain, n.now())
	n.since = n.now().UnixMilli()
	n.snap.Store(&Snapshot{})
	n.registry = n.newRegistry()
	n.serve = make(chan struct{})
	n.catalogUp.Store(c.Role != RoleSidecar)

	bg, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	var closers []func()
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
			cancel()
			n.wg.Wait()
		}
	}()

	if c.OTLPEndpoint != "" || n.exportSpans != nil {
		if n.tracing, err = newTracing(c, n.exportSpans, n.Logger); err != nil {
			return err
		}
		closers = append(closers, func() { n.tracing.shutdown(context.Background()) })
	}

	// The admin API first, so that /readyz can say what a start waits
	// for; identity next: without it nothing else may talk to the mesh.
	if c.Admin != "" {
		if err := n.startAdmin(); err != nil {
			return err
		}
		closers = append(closers, func() { n.adminSrv.Close() })
	}
	if err := n.startIdentity(ctx, bg); err != nil {
		return err
	}
	n.svidUp.Store(true)
	closers = append(closers, func() { n.ids.Close() })
	n.rootSum = n.ids.BundleSum()
	n.callerID = []string{n.ID()}
	n.loadPolicy()
	caKey, err := tlsmgr.ReadGossipKey(c.CADir)
	if err != nil {
		return fmt.Errorf("ca-dir: %w", err)
	}
	key, keys, err := n.gossipKeys(caKey)
	if err != nil {
		return err
	}

	// One pool for every handler of the node: each upstream has one
	// admission limit whichever listener its requests come from.
	limit, _ := c.PoolConcurrencyLimit() // validated
	n.pool = &proxy.Pool{HTTP2: true, ConcurrencyLimit: limit, QueueTimeout: c.QueueTimeout,
		// A gateway carries every service of its region: each service
		// gets its own limit towards it. Requests to an app carry no
		// service header and count against the app's one limit.
		LimitKey: func(r *http.Request) string { return r.Header.Get(HeaderService) },
		// UDP flows to peers as HTTP/3 datagrams: a datagram lost on the
		// way stays lost instead of holding up the flow's next ones.
		UDPOverHTTP3: !c.NoMeshHTTP3}
	closers = append(closers, n.pool.CloseIdle)

	startServer := func(name string, s *proxy.Server) error {
		if err := s.Start(bg); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		closers = append(closers, func() { s.Shutdown(context.Background()) })
		n.Logger.Info("listening", "listener", name, "addr", s.BoundAddr())
		return nil
	}

	via := c.Name
	switch c.Role {
	case RoleGateway, RoleSidecar:
		// Any identity of the trust domain may call; the handler decides
		// what each identity may ask for.
		// Both say when a request reached no app (SignalRetry), so the
		// hop before sends it elsewhere; a gateway's upstreams are mesh
		// peers, whose signal it trusts, a sidecar's is its app.
		h := &proxy.Handler{Pool: n.pool, Via: via, Logger: n.Logger, SignalRetry: true, Observe: n.handlerObserve(c.Service)}
		n.handlers = append(n.handlers, namedHandler{"mesh", h})
		if c.Role == RoleGateway {
			h.Route = n.gatewayRoute
			h.Policy = instancePolicy
			h.TrustRetry = true
		} else {
			n.app.Store(appUpstream(c))
			ports := newAppPorts(c.AppPorts())
			h.Route = func(out *http.Request) ([]*proxy.Upstream, error) {
				out.Header.Del(HeaderService)
				out.Header.Del(HeaderSubset)
				if out.Method == http.MethodConnect {
					return ports.route(c.Service, out) // a TCP port of the app
				}
				app := n.app.Load()
				if app == nil {
					return nil, &proxy.StatusError{Code: http.StatusNotFound,
						Msg: "meshd: service " + c.Service + " serves no HTTP, only TCP ports"}
				}
				return []*proxy.Upstream{app}, nil
			}
		}
		var front http.Handler = n.traced(hopInbound, n.inboundFront(h))
		if c.Role == RoleGateway {
			front = n.traced(hopGateway, n.meshFront(h))
		}
		front = n.observe("mesh", nil, front)
		// HTTP/3 on the same port over UDP, with the same tls.Config:
		// the same client certificate check and allow-callers, the same
		// handler, for peers' UDP flows (CONNECT-UDP with datagrams).
		n.meshSrv = &proxy.Server{Addr: c.Listen, TLS: n.ids.ServerTLS(n.allowCaller()), Handler: front, Logger: n.Logger,
			HTTP3: !c.NoMeshHTTP3, HTTP3Datagrams: !c.NoMeshHTTP3, Hold: n.hold()}
		if err := startServer("listen", n.meshSrv); err != nil {
			return err
		}
		n.advertise = c.Advertise
		if n.advertise == "" {
			host, port, _ := net.SplitHostPort(n.meshSrv.BoundAddr())
			if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
				return fieldErr("advertise", "required when listen (%s) binds every interface: give the address peers dial", c.Listen)
			}
			n.advertise = net.JoinHostPort(host, port)
		}
	}
	if c.Role == RoleSidecar {
		out := &proxy.Handler{Pool: n.pool, Via: via, Route: n.outboundRoute, Policy: n.outboundPolicy, Logger: n.Logger, TrustRetry: true,
			Observe: n.handlerObserve("")}
		n.handlers = append(n.handlers, namedHandler{"outbound", out})
		// H2C: an app's gRPC client calls in plain text with HTTP/2.
		n.outSrv = &proxy.Server{Addr: c.Outbound, Handler: n.observe("outbound", nil, n.traced(hopOutbound, n.meshFront(out))), Logger: n.Logger, H2C: true, Hold: n.hold()}
		if err := startServer("outbound", n.outSrv); err != nil {
			return err
		}
		if n.outPorts, err = n.startOutPorts(bg, out); err != nil {
			return err
		}
		closers = append(closers, n.outPorts.close)
	}
	if c.Role == RoleEdge {
		if err := n.startEdge(bg, startServer, &closers); err != nil {
			return err
		}
		if n.outPorts, err = n.startPublicPorts(bg); err != nil {
			return err
		}
		closers = append(closers, n.outPorts.close)
	}

	// Gossip last among the listeners: peers learn of the node only once
	// it can serve.
	if c.Role == RoleSidecar {
		n.healthy.Store(n.checkApp(ctx))
	}
	onChange := n.kickRebuild
	if c.Role != RoleEdge {
		n.lan = &gossip.Cluster{Name: c.Name, BindAddr: c.GossipAddr, Profile: gossip.LAN, Key: key, Keys: keys,
			Label: "meshd/" + n.td + "/region/" + c.Region, Join: c.Join, Logger: n.Logger, OnChange: onChange,
			OnNote: n.onPolicyNote(poolRegion)}
		// The record goes out with the join, so peers never see the node
		// without it.
		lr := n.lanRecord()
		if n.forge != nil {
			n.forge(lr)
		}
		rec, _ := lr.Encode()
		if rec, err = n.seal(rec); err != nil {
			return fmt.Errorf("gossip: %w", err)
		}
		if err := n.lan.SetRecord(rec); err != nil {
			return fmt.Errorf("gossip: %w", err)
		}
		if err := n.lan.Start(bg); err != nil {
			return fmt.Errorf("gossip-addr: %w", err)
		}
		closers = append(closers, func() { n.lan.Shutdown() })
		n.Logger.Info("listening", "listener", "gossip", "addr", n.lan.Addr())
	}
	if c.Role != RoleSidecar {
		n.wan = &gossip.Cluster{Name: c.Name, BindAddr: c.WANGossipAddr, Profile: gossip.WAN, Key: key, Keys: keys,
			Label: "meshd/" + n.td + "/global", Join: c.WANJoin, Logger: n.Logger, OnChange: onChange,
			OnNote: n.onPolicyNote(poolGlobal)}
		if err := n.wan.Start(bg); err != nil {
			return fmt.Errorf("wan-gossip-addr: %w", err)
		}
		closers = append(closers, func() { n.wan.Shutdown() })
		n.Logger.Info("listening", "listener", "wan-gossip", "addr", n.wan.Addr())
	}
	if c.Role != RoleSidecar {
		n.probe = &prober{}
	}
	n.ready.Store(true)
	n.publish()
	n.rebuild()
	if c.Role == RoleSidecar {
		if err := n.awaitCatalog(ctx); err != nil {
			return err
		}
	}
	close(n.serve)

	n.wg.Add(2)
	go n.loop(bg)
	go n.policySyncLoop(bg.Done())
	if c.Role != RoleSidecar {
		n.wg.Add(1)
		go n.probeLoop(bg)
	}
	if err := n.startAnycast(bg); err != nil {
		return err
	}
	if n.speaker != nil {
		closers = append(closers, func() { n.stopAnycast(context.Background()) })
		n.registry.MustRegister(n.speaker)
	}
	if c.Role == RoleSidecar {
		n.wg.Add(1)
		go n.healthLoop(bg)
	}
	if c.Role == RoleGateway {
		n.wg.Add(1)
		go n.summaryLoop(bg)
	}
	n.adminOpen.Store(true)
	n.Logger.Info("node started", "id", n.ID(), "mesh", n.advertise)
	return nil
}

// startEdge builds the edge's public side: the chain host gate → cache →
// forward on the public HTTP listener and, with public-https, on the TLS
// listener (HTTP/1.1, HTTP/2, HTTP/3), where plain HTTP then redirects.
func (n *Node) startEdge(bg context.Context, startServer func(string, *proxy.Server) error, closers *[]func()) error {
	c := &n.Config
	// The edge's chain: request ID → access log → unknown hosts refused →
	// cache → forward.
	// A gateway that reached no instance says so, and the edge tries the
	// next region at once (TrustRetry: every upstream of the edge is a
	// gateway with a verified identity).
	ph := &proxy.Handler{Pool: n.pool, Via: c.Name, Public: true, Route: n.edgeRoute, Policy: deadlinePolicy, Logger: n.Logger, TrustRetry: true,
		Observe: n.handlerObserve("")}
	n.handlers = append(n.handlers, namedHandler{"public", ph})
	var h http.Handler = n.replay(ph)
	size, _ := parseSize(c.CacheSize)
	if size > 0 {
		n.cache = edgeCacheStore(c, size, n.Logger.With("part", "cache"))
		if err := n.cache.Start(bg); err != nil {
			return fmt.Errorf("cache-size: %w", err)
		}
		*closers = append(*closers, func() { n.cache.Close() })
		n.registry.MustRegister(n.cache.Collectors()...)
		h = n.cache.Middleware(h)
	}
	inner := h
	// front comes first on every public listener: the request's metrics
	// and (optionally) its access log record, then its ID, then its span,
	// which replaces the public's trace context with the edge's
	// (telemetry.go).
	var access *slog.Logger
	if c.AccessLog {
		access = n.Logger.With("log", "access")
	}
	front := func(h http.Handler) http.Handler {
		return n.observe("public", access, requestID(n.traced(hopEdge, h)))
	}
	gated := front(n.edgeFront(inner))
	httpHandler := gated
	if c.PublicHTTPS != "" {
		n.certs = n.publicCerts()
		n.httpsSrv = n.publicServer(c.PublicHTTPS, n.certs.TLSConfig(), gated)
		if err := startServer("public-https", n.httpsSrv); err != nil {
			return err
		}
		_, port, _ := net.SplitHostPort(n.httpsSrv.BoundAddr())
		httpsPort, _ := strconv.Atoi(port)
		// Unknown hosts get 404 before any redirect; ACME challenges
		// and --public-http-allow hosts stay on plain HTTP.
		httpHandler = front(n.certs.HTTPChallenge(n.edgeFront(proxy.RedirectHTTPS(httpsPort, n.plainHTTPAllowed(), inner))))
	}
	n.publicSrv = n.publicServer(c.PublicHTTP, nil, httpHandler)
	if err := startServer("public-http", n.publicSrv); err != nil {
		return err
	}
	if n.certs != nil {
		n.certs.ACMEHTTPAddr, n.certs.ACMETLSAddr = n.publicSrv.BoundAddr(), n.httpsSrv.BoundAddr()
		if err := n.certs.Start(bg); err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		*closers = append(*closers, func() { n.certs.Close() })
	}
	return nil
}

// startIdentity learns the trust domain and starts the node's SVID source:
// minted with the CA key, loaded from `meshd ca issue` files, or read from
// a SPIRE agent.
func (n *Node) tryIdentity(ctx context.Context) error {
	c := &n.Config
	ca, err := tlsmgr.LoadCA(c.CADir)
	switch {
	case err == nil:
		n.td = ca.TrustDomain
		if c.TrustDomain != "" && c.TrustDomain != n.td {
			return fieldErr("trust-domain", "the node expects %q but the CA in %s is for %q", c.TrustDomain, c.CADir, n.td)
		}
	case c.SPIFFESocket != "" && c.TrustDomain != "" && errors.Is(err, fs.ErrNotExist):
		// With SPIRE the bundle comes from the agent: ca.crt is optional.
		n.td = c.TrustDomain
	case c.SPIFFESocket != "" && errors.Is(err, fs.ErrNotExist):
		return fieldErr("trust-domain", "required with spiffe-socket when %s has no ca.crt", c.CADir)
	default:
		return fmt.Errorf("ca-dir: %w", err)
	}
	id := c.spiffeID(n.td)
	if id == "" {
		return fmt.Errorf("name: cannot form a SPIFFE ID for this node in trust domain %q", n.td)
	}
	// A new bundle or SVID changes what the node believes in gossip (a
	// record whose root left the bundle is refused from now on) and what
	// it publishes (its roots, its SVID's root): rebuild and publish.
	n.ids = &tlsmgr.Manager{CADir: c.CADir, ID: id, TTL: c.SVIDTTL, CertFile: c.CertFile, KeyFile: c.KeyFile, Logger: n.Logger,
		PollInterval: c.CAPoll, RemintJitter: 5 * c.CAPoll, OnChange: n.kickRebuild}
	if c.SPIFFESocket != "" {
		n.ids = &tlsmgr.Manager{SPIFFESocket: c.SPIFFESocket, ID: id, Logger: n.Logger, SPIFFETimeout: c.SVIDWait}
		if ca != nil {
			n.ids.CADir = c.CADir
		}
	}
	if err := n.ids.Start(ctx); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	return nil
}

// kickRebuild asks the loop for a new snapshot; it never blocks.
func (n *Node) kickRebuild() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// loop rebuilds the snapshot after each gossip change, from one goroutine.
func (n *Node) loop(ctx context.Context) {
	defer n.wg.Done()
	keep := time.NewTicker(answeringRecheck)
	defer keep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
			n.rebuild()
			n.publish() // a gateway's global record follows its region
		case <-keep.C:
			if n.keeping.Load() {
				n.rebuild()
				n.publish()
			}
		}
	}
}

// Shutdown stops the node in the order ARCHITECTURE.md fixes: publish
// draining, wait DrainDelay for peers to move away, stop listeners letting
// in-flight requests finish (bounded by ShutdownGrace and ctx), leave
// gossip. It returns once everything is closed.
func (n *Node) Shutdown(ctx context.Context) error {
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return nil
	}
	n.stopped = true
	n.mu.Unlock()
	c := &n.Config
	n.Logger.Info("draining", "drain_delay", c.DrainDelay)
	n.draining.Store(true)
	n.ready.Store(false)
	n.publish()
	n.signalCanServe()
	n.drainAnycast(ctx)

	t := time.NewTimer(c.DrainDelay)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
	}

	graceCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.ShutdownGrace)
	defer cancel()
	var errs []error
	var wg sync.WaitGroup
	for _, s := range []*proxy.Server{n.publicSrv, n.httpsSrv, n.meshSrv, n.outSrv} {
		if s == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Shutdown(graceCtx); err != nil {
				n.Logger.Warn("listener did not finish in time", "addr", s.BoundAddr(), "err", err)
			}
		}()
	}
	if n.outPorts != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.outPorts.shutdown(graceCtx); err != nil {
				n.Logger.Warn("tcp-out connections did not finish in time", "err", err)
			}
		}()
	}
	wg.Wait()

	// The draining record was the last: a gossip change seen while leaving
	// (peers leaving too) must not republish into a closing pool.
	n.leaving.Store(true)
	leaveCtx, cancelLeave := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancelLeave()
	for _, g := range []*gossip.Cluster{n.lan, n.wan} {
		if g == nil {
			continue
		}
		if n.wholeMesh {
			g.Shutdown()
			continue
		}
		if err := g.Leave(leaveCtx); err != nil {
			n.Logger.Warn("gossip leave", "err", err)
			g.Shutdown()
		}
	}
	n.stopAnycast(context.WithoutCancel(ctx))
	n.cancel()
	n.wg.Wait()
	if n.adminSrv != nil {
		n.adminSrv.Shutdown(graceCtx)
	}
	n.pool.CloseIdle()
	if n.cache != nil {
		n.cache.Close()
	}
	if n.tracing != nil {
		// The last spans, of the requests the listeners finished; a
		// receiver that does not take them within the bound loses them.
		flushCtx, cancelFlush := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if err := n.tracing.shutdown(flushCtx); err != nil {
			n.Logger.Warn("tracing: spans not exported at shutdown", "err", err)
		}
		cancelFlush()
	}
	if n.certs != nil {
		n.certs.Close()
	}
	if err := n.ids.Close(); err != nil {
		errs = append(errs, err)
	}
	n.Logger.Info("node stopped")
	return errors.Join(errs...)
}

func (n *Node) state() string {
	if n.draining.Load() {
		return StateDraining
	}
	return StateReady
}

// lanRecord is what the node publishes in its region pool.
func (n *Node) lanRecord() *NodeRecord {
	c := &n.Config
	r := &NodeRecord{Name: c.Name, Role: c.Role, Region: c.Region, MeshAddr: n.advertise, State: n.state(),
		Policy: n.pol.Load().version()}
	n.caClaims(r)
	if c.Role == RoleSidecar {
		h := 0
		if n.healthy.Load() {
			h = 1
		}
		r.Services = []ServiceRecord{{Name: c.Service, Domains: n.running().Domains, Healthy: h, Since: n.since,
			Subset: c.Subset, Ports: portRecords(c.AppPorts())}}
	}
	if c.Role == RoleGateway {
		r.Global = n.globalCounts()
	}
	return r
}

// wanRecord is what the node publishes in the global pool; a gateway
// summarizes its region there.
func (n *Node) wanRecord() *NodeRecord {
	c := &n.Config
	r := &NodeRecord{Name: c.Name, Role: c.Role, Region: c.Region, MeshAddr: n.advertise, State: n.state(),
		Policy: n.pol.Load().version()}
	n.caClaims(r)
	if c.Role == RoleGateway && n.lan != nil {
		r.Services = summarize(n.decode(poolRegion, n.lan.Members()), c.Region, n.instanceEjectedLocked(time.Now()))
	}
	if c.Role == RoleEdge {
		r.Purges = n.recentPurgesLocked(time.Now())
	}
	return r
}

// instanceEjectedLocked reports, for the region summary, whether the
// gateway has ejected its upstream to an instance at now: it could not be
// reached (refused, a failed handshake, an app that is gone) several times
// in a row, so it does not count as healthy, whatever its record says.
func (n *Node) instanceEjectedLocked(now time.Time) func(svc string, r *NodeRecord) bool {
	return func(svc string, r *NodeRecord) bool {
		id, err := tlsmgr.ServiceID(n.td, svc)
		if err != nil {
			return false
		}
		u := n.upstreams[r.MeshAddr+"|"+id]
		return u != nil && u.Ejected(now)
	}
}

// summaryRefresh is how often a gateway recomputes its region's summary
// for the global pool: ejection of an instance is no gossip event, and the
// edges should stop choosing a region with nothing healthy within about
// this long.
const summaryRefresh = 500 * time.Millisecond

// summaryLoop republishes a gateway's global record when its summary
// changed (publish sends only a changed record).
func (n *Node) summaryLoop(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(summaryRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.publish()
		}
	}
}

// publish sends the node's records to its pools when they changed.
func (n *Node) publish() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.leaving.Load() {
		return
	}
	svid, _ := n.ids.GetX509SVID()
	for _, p := range []struct {
		g        *gossip.Cluster
		rec      func() *NodeRecord
		last     *string
		lastSVID **x509svid.SVID
	}{{n.lan, n.lanRecord, &n.lastLAN, &n.lastLANSVID}, {n.wan, n.wanRecord, &n.lastWAN, &n.lastWANSVID}} {
		if p.g == nil {
			continue
		}
		rec := p.rec()
		if n.forge != nil {
			n.forge(rec)
		}
		b, err := rec.Encode()
		if err != nil {
			n.Logger.Error("cannot encode own record", "err", err)
			continue
		}
		// Signed again when the record or the SVID changed.
		if string(b) == *p.last && svid == *p.lastSVID {
			continue
		}
		sealed, err := b, error(nil)
		if !n.Config.UnsignedRecords {
			sealed, err = signRecord(b, time.Now(), svid)
		}
		if err != nil {
			n.Logger.Error("cannot sign own record", "err", err)
			continue
		}
		if err := p.g.SetRecord(sealed); err != nil {
			n.Logger.Error("cannot publish record", "err", err)
			continue
		}
		*p.last, *p.lastSVID = string(b), svid
	}
}

// decode turns the gossip members of pool into records, refusing (and
// logging once) those that do not verify (signedrec.go), do not decode,
// claim what their signer may not, or claim another member's name. A
// member whose record is older than one already accepted keeps the
// accepted one. Called under n.mu.
func (n *Node) decode(pool string, ms []gossip.Member) []member {
	out := make([]member, 0, len(ms))
	if n.opened == nil {
		n.opened, n.accepted = map[string]map[string]*openedRecord{}, map[string]map[string]*openedRecord{}
	}
	prev, prevAcc := n.opened[pool], n.accepted[pool]
	if sum := n.ids.BundleSum(); sum != n.openedUnder[pool] {
		// A new trust bundle (a root rotation): what verified against
		// the old one is verified again.
		prev = nil
		if n.openedUnder == nil {
			n.openedUnder = map[string]string{}
		}
		n.openedUnder[pool] = sum
	}
	var refused []RefusedRecord
	opened, accepted := make(map[string]*openedRecord, len(ms)), make(map[string]*openedRecord, len(ms))
	var roots *x509.CertPool
	now := time.Now()
	for _, m := range ms {
		if m.Record == nil {
			continue
		}
		o := prev[string(m.Record)]
		if o == nil || o.err == nil && !now.Before(o.notAfter) {
			if roots == nil {
				roots, _ = n.ids.BundlePool()
			}
			o = n.openRecord(m.Record, roots, now)
		}
		opened[string(m.Record)] = o
		err := o.err
		if err == nil && o.rec.Name != m.Name {
			err = fmt.Errorf("record names %q but the member is %q", o.rec.Name, m.Name)
		}
		if err != nil {
			if n.badRecs[m.Name] != string(m.Record) {
				n.recordsRefused.Add(1)
			}
			n.logBadRecord(m.Name, string(m.Record), err)
			refused = append(refused, RefusedRecord{Pool: pool, Name: m.Name, Reason: truncate(err.Error(), 300)})
			continue
		}
		if last := prevAcc[m.Name]; last != nil && last.at > o.at {
			n.logBadRecord(m.Name, string(m.Record), fmt.Errorf("signed at %s, before the record already accepted (a replay): kept the newer one",
				time.Unix(0, o.at).UTC().Format(time.RFC3339Nano)))
			o = last
		}
		accepted[m.Name] = o
		out = append(out, member{gossipAddr: m.Addr, suspect: m.Suspect, rec: o.rec})
	}
	out = n.keepAnswering(pool, ms, out, prevAcc, accepted, now)
	n.opened[pool], n.accepted[pool] = opened, accepted
	if n.refusedRecs == nil {
		n.refusedRecs = map[string][]RefusedRecord{}
	}
	n.refusedRecs[pool] = refused
	return out
}

// openedRecord is a gossip record verified once.
type openedRecord struct {
	rec      *NodeRecord
	at       int64     // signing time
	notAfter time.Time // the signer's certificate expires: verify again
	root     string    // fingerprint of the root the signer's chain verified to
	err      error
}

func (n *Node) openRecord(raw []byte, roots *x509.CertPool, now time.Time) *openedRecord {
	if n.Config.UnsignedRecords && len(raw) > 0 && raw[0] == '{' {
		// --unsigned-records: an old node's record, believed as before.
		rec, err := DecodeRecord(raw)
		if err == nil && !n.unsignedSeen[rec.Name] {
			if n.unsignedSeen == nil {
				n.unsignedSeen = map[string]bool{}
			}
			n.unsignedSeen[rec.Name] = true
			n.Logger.Warn("believed an unsigned gossip record (--unsigned-records)", "member", rec.Name)
		}
		return &openedRecord{rec: rec, err: err, notAfter: now.Add(time.Hour)}
	}
	if roots == nil {
		return &openedRecord{err: errors.New("no trust bundle yet")}
	}
	b, at, id, notAfter, root, err := openRecordRoot(raw, roots, now)
	if err != nil {
		return &openedRecord{err: err}
	}
	rec, err := DecodeRecord(b)
	if err == nil {
		err = claimsFit(rec, id, n.td)
	}
	if err != nil {
		return &openedRecord{err: err}
	}
	return &openedRecord{rec: rec, at: at, notAfter: notAfter, root: tlsmgr.Fingerprint(root)}
}

func (n *Node) logBadRecord(name, raw string, err error) {
	if n.badRecs[name] == raw {
		return
	}
	n.badRecs[name] = raw
	n.Logger.Warn("refused a gossip record", "member", name, "err", err)
}

// rebuild folds both pools into a new Snapshot and swaps it in.
func (n *Node) rebuild() {
	n.mu.Lock()
	defer n.mu.Unlock()
	var lan, wan []member
	if n.lan != nil {
		lan = n.decode(poolRegion, n.lan.Members())
	}
	if n.wan != nil {
		wan = n.decode(poolGlobal, n.wan.Members())
	}
	n.applyRemotePurgesLocked(wan)
	n.collectPeerPolicies(lan, wan)
	used := map[string]bool{}
	s := buildSnapshot(n.Config.Role, n.Config.Region, lan, wan, &trackingMaker{n, used}, n.probe)
	var op func(string) float64
	if t := n.table.Load(); t != nil {
		op = t.overprovisioning
	}
	s.grade(op)
	// Forget upstreams (and their pooled connections) nobody routes to.
	for k := range n.upstreams {
		if !used[k] {
			delete(n.upstreams, k)
		}
	}
	n.pool.Forget(func(key string) bool { return used[key] })
	now := n.now()
	n.names.apply(s, now, n.Logger)
	n.names.applyPolicy(s, n.table.Load(), n.Logger)
	n.scheduleExpiryLocked(now)
	n.snap.Store(s)
}

type trackingMaker struct {
	n    *Node
	used map[string]bool
}

// Instances are in the node's own region: connections to them are cheap,
// and HTTP/1.1 costs less CPU per request than HTTP/2 (proxy's benchmarks:
// 82 against 92 µs per proxied request), so they get HTTP/1.1 pools.
// Gateways may be a continent away: one multiplexed HTTP/2 connection
// spares a handshake per concurrent request there.
func (t *trackingMaker) instanceUpstream(service string, r *NodeRecord) *proxy.Upstream {
	id, err := tlsmgr.ServiceID(t.n.td, service)
	if err != nil {
		return nil
	}
	return t.upstream(r, id, true)
}

func (t *trackingMaker) gatewayUpstream(r *NodeRecord) *proxy.Upstream {
	id, err := tlsmgr.GatewayID(t.n.td, r.Region, r.Name)
	if err != nil {
		return nil
	}
	return t.upstream(r, id, gatewayHTTP1(t.n.Config.Region, r.Region))
}

// gatewayHTTP1 chooses the protocol to a gateway: HTTP/1.1 within the
// node's own region, HTTP/2 to other regions. Within a region a new
// connection costs a fraction of a millisecond and a hop over a pool of
// HTTP/1.1 connections costs a third less CPU than over Go's HTTP/2 client
// and server (bench/edge-tls.sh: edge 76 µs and gateway 73 µs per request
// instead of 104 and 107); across regions a handshake costs round trips
// of tens of milliseconds, and HTTP/2 carries every request on one
// connection. An edge without a region uses HTTP/2 to every gateway.
func gatewayHTTP1(own, peer string) bool {
	return own != "" && own == peer
}

// upstream returns the shared Upstream for a peer at its address, dialed
// with an mTLS config that accepts only the SPIFFE ID the catalog expects:
// a node that lies in gossip about its address or its service fails the
// handshake.
func (t *trackingMaker) upstream(r *NodeRecord, id string, http1 bool) *proxy.Upstream {
	key := r.MeshAddr + "|" + id
	t.used[key] = true
	if u := t.n.upstreams[key]; u != nil {
		return u
	}
	cfg, err := t.n.ids.ClientTLS(id, "h2", "http/1.1")
	if err != nil {
		t.n.Logger.Warn("cannot build client TLS", "peer", id, "err", err)
		return nil
	}
	u := &proxy.Upstream{Key: key, Addr: r.MeshAddr, TLS: cfg, Name: r.Name, Region: r.Region, HTTP1: http1}
	t.n.upstreams[key] = u
	return u
}

// allowCaller is the mesh listener's authorization beyond the trust domain
// (--allow-callers, as the node runs it now: a reload changes it for the
// next handshake); with none, every identity of the trust domain may
// connect. A refused caller fails the TLS handshake and is logged.
func (n *Node) allowCaller() func(peerID string) error {
	prefix := "spiffe://" + n.td + "/"
	return func(peerID string) error {
		patterns := n.running().AllowCallers
		if len(patterns) == 0 {
			return nil
		}
		if path, ok := strings.CutPrefix(peerID, prefix); ok && callerAllowed(patterns, path) {
			return nil
		}
		n.Logger.Warn("mesh: caller refused by allow-callers", "peer", peerID)
		return errors.New("not in allow-callers")
	}
}

// peerRole returns the role part of a verified caller's SPIFFE ID.
func (n *Node) peerRole(r *http.Request) string {
	if r.TLS == nil {
		return ""
	}
	id, ok := tlsmgr.PeerID(r.TLS)
	if !ok {
		return ""
	}
	path, ok := strings.CutPrefix(id, "spiffe://"+n.td+"/")
	if !ok {
		return ""
	}
	role, _, _ := strings.Cut(path, "/")
	return role
}

// edgeRoute: public Host → service → nearest region with healthy instances
// → one of its gateways.
func (n *Node) edgeRoute(out *http.Request) ([]*proxy.Upstream, error) {
	s := n.snap.Load()
	var svc string
	if rr := routeFrom(out.Context()); rr != nil {
		svc = rr.service
		if rr.subset != "" {
			out.Header[HeaderSubset] = []string{rr.subset}
		}
		if rr.region != "" {
			out.Header.Set(HeaderService, svc)
			out.Header[HeaderCaller] = n.callerID
			out.Header[HeaderReplayed] = []string{"1"}
			if ups := s.byRegion[svc][rr.region].pick(); len(ups) > 0 {
				return ups, nil
			}
			return nil, errNoReplayRegion(svc, rr.region)
		}
	} else {
		var ok bool
		if svc, ok = n.publicServiceOf(out.Host, s); !ok {
			return nil, errNoHost(out.Host)
		}
	}
	out.Header.Set(HeaderService, svc)
	out.Header[HeaderCaller] = n.callerID
	if ups := s.remoteFor(svc); len(ups) > 0 {
		return ups, nil
	}
	now := n.now()
	if d := s.downFor(svc, now); d != nil || s.known[svc] {
		return nil, errNoHealthy(svc, d, now)
	}
	return nil, errNoHost(out.Host)
}

// gatewayRoute serves the region's instances; a call for a service that
// runs only elsewhere goes to the nearest region's gateway, but only for
// callers that are not gateways themselves, so a request crosses at most
// one gateway-to-gateway hop and can never loop.
func (n *Node) gatewayRoute(out *http.Request) ([]*proxy.Upstream, error) {
	svc := out.Header.Get(HeaderService)
	if svc == "" {
		var ok bool
		if svc, ok = meshService(tunnelHost(out)); !ok {
			return nil, errNoHost(out.Host)
		}
		out.Header.Set(HeaderService, svc)
	}
	if c := n.relayedCaller(out); c != "" {
		out.Header[HeaderCaller] = []string{c}
	} else {
		delete(out.Header, HeaderCaller)
	}
	s := n.snap.Load()
	remote := s.remote[svc]
	if n.peerRole(out) == "gateway" {
		remote = nil
	}
	// Local instances (of the request's subset) first, then other
	// regions, whose gateways pick the same subset; draining instances,
	// here or there, only when nothing else is left.
	subset := subsetOf(out)
	local := s.instancesFor(svc, subset)
	if ups := n.routeLocal(out, s, local); len(ups) > 0 {
		return ups, nil
	}
	if ups := pickFirst(local, remote); len(ups) > 0 {
		return ups, nil
	}
	if subset != "" && s.local[svc] != nil {
		return nil, errNoSubset(svc, subset)
	}
	now := n.now()
	if d := s.downFor(svc, now); d != nil || s.known[svc] {
		return nil, errNoHealthy(svc, d, now)
	}
	return nil, errUnknownService(svc)
}

// outboundRoute serves an app's call to http://<service>.mesh/: an instance
// of the region directly, else the region's gateway. Any other host is
// refused: the outbound listener is not an open proxy.
func (n *Node) outboundRoute(out *http.Request) ([]*proxy.Upstream, error) {
	svc, ok := meshService(tunnelHost(out))
	if !ok {
		return nil, &proxy.StatusError{Code: http.StatusNotFound,
			Msg: fmt.Sprintf("meshd: the outbound listener routes only <service>.mesh hosts, not %q", truncate(out.Host, 100))}
	}
	if out.Method == http.MethodConnect {
		// The client of a tunnel from the app is the app, whatever it
		// says: the field is the mesh's, for a PROXY header at the far
		// end (--tcp NAME=ADDR,proxy-protocol).
		out.Header[proxy.HeaderClient] = []string{out.RemoteAddr}
		if out.Header[proxy.HeaderClientDst] == nil && n.outSrv != nil {
			out.Header[proxy.HeaderClientDst] = []string{n.outSrv.BoundAddr()}
		}
	}
	out.Header.Set(HeaderService, svc)
	out.Header[HeaderCaller] = n.callerID // whatever the app sent
	s := n.snap.Load()
	local := s.instancesFor(svc, subsetOf(out))
	if ups := n.routeLocal(out, s, local); len(ups) > 0 {
		return ups, nil
	}
	if ups := pickFirst(local, s.gateways); len(ups) > 0 {
		return ups, nil
	}
	now := n.now()
	if d := s.downFor(svc, now); d != nil || s.known[svc] {
		return nil, errNoHealthy(svc, d, now)
	}
	return nil, errUnknownService(svc)
}

// Ready reports whether the node serves: started, not draining, joined to
// its pools unless AllowAlone, and for a sidecar, its app healthy; for an
// edge, a gateway answers its probes.
func (n *Node) Ready() bool { return n.notReady() == "" }

// notReady says why the node is not ready, "" when it is.
func (n *Node) notReady() string {
	if n.draining.Load() {
		return "draining"
	}
	if !n.svidUp.Load() {
		return "no SVID yet"
	}
	if !n.catalogUp.Load() {
		return fmt.Sprintf("no catalog yet: %d members", n.catalogMembers.Load())
	}
	// The pools are read only once ready says Start has set them.
	if !n.ready.Load() {
		return "starting"
	}
	if !n.Config.AllowAlone {
		// A node alone because no seed answered serves a mesh of one:
		// its peers are elsewhere.
		for _, g := range []*gossip.Cluster{n.lan, n.wan} {
			if g != nil && !g.Joined() {
				return "not joined: no seed answered"
			}
		}
	}
	switch n.Config.Role {
	case RoleSidecar:
		if !n.healthy.Load() {
			return "app not healthy"
		}
	case RoleEdge:
		// An edge that reaches no gateway can only answer 503: a load
		// balancer in front of it should look elsewhere, as BGP does.
		if !n.probe.anyUp() {
			return "no gateway answers"
		}
	}
	return ""
}

// seal signs a record of this node for gossip with its SVID.
func (n *Node) seal(b []byte) ([]byte, error) {
	if n.Config.UnsignedRecords {
		return b, nil
	}
	svid, err := n.ids.GetX509SVID()
	if err != nil {
		return nil, err
	}
	return signRecord(b, time.Now(), svid)
}
