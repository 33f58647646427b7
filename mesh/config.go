package mesh

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/meshd/meshd/proxy"
)

// Roles a node can play.
const (
	RoleEdge    = "edge"
	RoleGateway = "gateway"
	RoleSidecar = "sidecar"
)

// What a sidecar's app speaks (Config.UpstreamProtocol).
const (
	UpstreamHTTP1 = "http1"
	UpstreamH2C   = "h2c"
)

// Config is everything a node needs. The yaml tags are the keys of
// `--config FILE` and match the flag names one for one.
type Config struct {
	// Role is edge, gateway or sidecar. Required.
	Role string `yaml:"role" usage:"edge, gateway or sidecar"`
	// Name identifies the node in its gossip pools and in its SPIFFE ID.
	// Default: the host name.
	Name string `yaml:"name" usage:"node name, unique in its pools (default: host name)"`
	// Region the node runs in. Required for gateways and sidecars; an edge
	// prefers its own region when it has the service. Default for an edge: "".
	Region string `yaml:"region" usage:"region of the node (required for gateway and sidecar)"`

	// CADir holds ca.crt, ca.key and gossip.key written by `meshd ca init`.
	// Required.
	CADir string `yaml:"ca-dir" usage:"directory written by 'meshd ca init'"`
	// TrustDomain, when set, must be the trust domain of the CA in CADir:
	// a node pointed at another mesh's CA refuses to start. Default: the
	// CA's.
	TrustDomain string `yaml:"trust-domain" usage:"refuse to start unless the CA is for this trust domain"`
	// SVIDTTL is the lifetime of the node's own SVID; it is renewed at
	// half-life. Default 1h.
	SVIDTTL time.Duration `yaml:"svid-ttl" usage:"lifetime of the node's SVID, renewed at half-life (default 1h)"`
	// CAPoll is how often the node looks at CADir (ca.crt, ca.key; in
	// file mode also cert-file and key-file) for a new trust bundle or
	// issuing root from `meshd ca rotate`, at a random 75-125% of it; a
	// node that finds a new issuing root mints its SVID from it after a
	// random delay of up to 5 CAPoll. Default 2s.
	CAPoll time.Duration `yaml:"ca-poll" usage:"how often to look at ca-dir for a rotated root (default 2s)"`
	// SVIDWait is how long a starting node waits for its first SVID: a
	// SPIRE agent that does not answer yet, SVID files (or ca.crt) not
	// written yet. Meanwhile its admin API answers /readyz with 503 "no
	// SVID yet" and it opens no other listener. Default 10s.
	SVIDWait time.Duration `yaml:"svid-wait" usage:"how long a starting node waits for its SVID (SPIRE agent, cert files not there yet); /readyz says no SVID yet meanwhile (default 10s)"`

	// CertFile and KeyFile, when set, hold the node's SVID issued by
	// `meshd ca issue`; the node reloads them when they change and needs no
	// CA key (CADir then needs only ca.crt and gossip.key). Default: the
	// node mints its own SVID with the CA key.
	// SPIFFESocket reads the node's SVID and trust bundle from a SPIRE
	// agent's Workload API instead (unix:///run/spire/agent.sock) and
	// follows its rotations; CADir then needs only gossip.key, and the
	// trust domain comes from TrustDomain or CADir's ca.crt.
	SPIFFESocket string `yaml:"spiffe-socket" usage:"read the SVID from a SPIRE agent's Workload API, e.g. unix:///run/spire/agent.sock (default: mint with the CA key)"`
	CertFile     string `yaml:"cert-file" usage:"SVID certificate from 'meshd ca issue' (default: mint with the CA key)"`
	KeyFile      string `yaml:"key-file" usage:"SVID key from 'meshd ca issue'"`

	// Listen is the mTLS mesh listener of gateways and sidecars.
	// Default ":8443".
	Listen string `yaml:"listen" usage:"mTLS mesh listener of gateways and sidecars (default :8443)"`
	// Advertise is the host:port other nodes dial to reach Listen.
	// Default: Listen's bound address when Listen names a host.
	Advertise string `yaml:"advertise" usage:"host:port peers dial to reach --listen (default: its bound address)"`

	// AllowCallers narrows who may connect to the mesh listener (Listen)
	// of a gateway or sidecar: SPIFFE ID paths within the trust domain,
	// "service/api" for one identity, "gateway/*" for every ID under a
	// prefix, "*" for all. Empty (the default) allows every identity of the
	// trust domain. A sidecar that should still serve its public traffic
	// lists "gateway/*": edges reach instances through gateways.
	AllowCallers []string `yaml:"allow-callers" usage:"gateway, sidecar: SPIFFE ID paths that may connect, e.g. gateway/*,service/api (default: the whole trust domain)"`
	// NoMeshHTTP3 turns off HTTP/3 between mesh hops: the mesh listener
	// serves no HTTP/3 on its UDP port, and UDP flows to peers go as
	// DATAGRAM capsules on HTTP/2 streams instead of HTTP/3 datagrams.
	// Default off: HTTP/3 where UDP between nodes gets through, HTTP/2
	// where it does not (found per peer).
	NoMeshHTTP3 bool `yaml:"no-mesh-http3" usage:"no HTTP/3 between mesh hops: UDP flows go as capsules on HTTP/2 (default: HTTP/3 datagrams where UDP gets through)"`

	// Service is the service a sidecar fronts. Required for sidecars.
	Service string `yaml:"service" usage:"service the sidecar fronts"`
	// Subset labels the sidecar's instance ("v2") for a policy's splits
	// and rules.
	Subset string `yaml:"subset" usage:"subset label of this instance (e.g. v2), for the policy's splits and routes"`
	// Domains are extra public host names of the sidecar's service.
	Domains []string `yaml:"domains" usage:"extra public host names of the sidecar's service (repeatable)"`
	// Upstream is the app's plain HTTP address, on loopback. Required for
	// sidecars, except for an app that publishes only TCP ports (TCP).
	Upstream string `yaml:"upstream" usage:"the app's plain HTTP address, e.g. 127.0.0.1:8080"`
	// TCP publishes TCP ports of the app, NAME=ADDRESS; callers reach one
	// as <service>.mesh:NAME (or the app's port number).
	TCP []string `yaml:"tcp" usage:"sidecar: publish a TCP port of the app, NAME=127.0.0.1:5432 (repeatable)" list:"repeat"`
	// TCPOut opens local listeners for TCP ports of services,
	// SERVICE[/PORT]=LOCAL-ADDRESS: each connection is carried to the
	// port through the mesh. PORT may be left out when the service
	// publishes one TCP port.
	TCPOut []string `yaml:"tcp-out" usage:"sidecar: local listener for a service's TCP port, SERVICE[/PORT]=127.0.0.1:15432 (repeatable)" list:"repeat"`
	// UDP publishes UDP ports of the app, NAME=ADDRESS.
	UDP []string `yaml:"udp" usage:"sidecar: publish a UDP port of the app, NAME=127.0.0.1:53 (repeatable)" list:"repeat"`
	// UDPOut opens local UDP sockets for UDP ports of services,
	// SERVICE[/PORT]=LOCAL-ADDRESS; each client address is a flow carried
	// to the port through the mesh.
	UDPOut []string `yaml:"udp-out" usage:"sidecar: local UDP socket for a service's UDP port, SERVICE[/PORT]=127.0.0.1:1053 (repeatable)" list:"repeat"`
	// UpstreamProtocol is what the app speaks at Upstream: http1
	// (HTTP/1.1) or h2c (HTTP/2 without TLS, with prior knowledge: a gRPC
	// server). Chosen, not detected: an app that speaks only one of them
	// refuses the other's first request, so guessing costs a failed
	// request or a probe per connection. Default http1.
	UpstreamProtocol string `yaml:"upstream-protocol" usage:"sidecar: what the app speaks, http1 or h2c (HTTP/2 without TLS, e.g. a gRPC server) (default http1)"`
	// Outbound is the sidecar's plaintext listener for the app's calls to
	// http://<service>.mesh/. Default "127.0.0.1:15001".
	Outbound string `yaml:"outbound" usage:"sidecar listener for the app's calls to http://<service>.mesh/ (default 127.0.0.1:15001)"`
	// HealthPath, when set, makes the sidecar's health check an HTTP GET of
	// that path on the app (2xx/3xx is healthy); otherwise a TCP connect.
	HealthPath string `yaml:"health-path" usage:"HTTP path of the app's health check (default: TCP connect)"`
	// HealthInterval between two health checks of the app. Default 1s.
	HealthInterval time.Duration `yaml:"health-interval" usage:"interval of the app's health check (default 1s)"`

	// GossipAddr is the region pool's bind address (gateways and sidecars).
	// Default ":7946".
	GossipAddr string `yaml:"gossip-addr" usage:"region pool gossip address (default :7946)"`
	// Join lists region pool seeds.
	Join []string `yaml:"join" usage:"region pool seed host:port (repeatable)"`
	// WANGossipAddr is the global pool's bind address (gateways and edges).
	// Default ":7947".
	WANGossipAddr string `yaml:"wan-gossip-addr" usage:"global pool gossip address (default :7947)"`
	// WANJoin lists global pool seeds.
	WANJoin []string `yaml:"wan-join" usage:"global pool seed host:port (repeatable)"`
	// AllowAlone makes a node whose seeds (Join, WANJoin) do not answer
	// ready anyway, alone in its pool, as the first node of a mesh whose
	// seed list names nodes not started yet. Default false: such a node
	// answers 503 on /readyz ("not joined: no seed answered") until a seed
	// answers. A node without seeds is a first node and is ready alone.
	// UnsignedRecords is for a rolling upgrade from a meshd that did not
	// sign its gossip records: the node publishes its records unsigned, as
	// the old nodes read them, and believes unsigned records of others
	// (logged once per member), while still verifying every signed one.
	// Turn it on for the upgrade, then restart every node without it.
	// Default false: unsigned records are refused.
	UnsignedRecords bool `yaml:"unsigned-records" usage:"rolling upgrade from a meshd before signed gossip records: publish and accept unsigned records (turn off once every node runs this version)"`
	AllowAlone      bool `yaml:"allow-alone" usage:"ready even while no seed of --join/--wan-join answers (a first node); default: not ready until one does"`

	// PublicHTTP is the edge's public plain HTTP listener. Required for
	// edges.
	PublicHTTP string `yaml:"public-http" usage:"edge: public HTTP listener"`
	// PublicDomain: the edge serves service S at S.<PublicDomain>.
	// Default "localhost".
	PublicDomain string `yaml:"public-domain" usage:"edge: serve service S at S.<domain> (default localhost)"`

	// PublicTCP maps public TCP ports of the edge to ports of services,
	// LISTEN=SERVICE[/PORT]: each connection is carried to the nearest
	// region with a healthy instance, like a request.
	PublicTCP []string `yaml:"public-tcp" usage:"edge: public TCP port carried to a service's TCP port, LISTEN=SERVICE[/PORT], e.g. :5432=db/pg (repeatable)" list:"repeat"`

	// PublicUDP maps public UDP ports of the edge to UDP ports of
	// services, LISTEN=SERVICE[/PORT].
	PublicUDP []string `yaml:"public-udp" usage:"edge: public UDP port carried to a service's UDP port, LISTEN=SERVICE[/PORT], e.g. :53=dns/dns (repeatable)" list:"repeat"`

	// ProxyProtocolFrom lists the load balancers in front of the edge
	// that announce each client with a PROXY protocol header (v1 or v2):
	// a connection to a public TCP listener (public-http, public-https,
	// public-tcp) from one of them must start with one, and the client it
	// names is the one meshd sees. Default none: no header is read.
	ProxyProtocolFrom []string `yaml:"proxy-protocol-from" usage:"edge: address or prefix of a load balancer in front that sends PROXY protocol headers, e.g. 10.0.0.0/24 (repeatable)"`

	// PublicHTTPS is the edge's public TLS listener (HTTP/1.1 and HTTP/2
	// by ALPN). Default: none. With it, the public HTTP listener redirects
	// to HTTPS (308), except ACME challenges and PublicHTTPAllow hosts.
	PublicHTTPS string `yaml:"public-https" usage:"edge: public TLS listener (HTTP/1.1 and HTTP/2); public-http then redirects to it"`
	// TLS is where public certificates come from: files (TLSCert/TLSKey),
	// internal (an internal CA issues them on demand for the hosts the
	// catalog knows) or acme (an ACME CA, on demand, for the same hosts).
	// Default internal.
	TLS string `yaml:"tls" usage:"edge: public certificates from files, internal or acme (default internal)"`
	// TLSCert and TLSKey are the PEM files of TLS files, pairwise in
	// order; the certificate is chosen by SNI.
	TLSCert []string `yaml:"tls-cert" usage:"edge: certificate PEM file for --tls files (repeatable, paired with --tls-key; chosen by SNI)" list:"repeat"`
	TLSKey  []string `yaml:"tls-key" usage:"edge: key PEM file for --tls files (repeatable)" list:"repeat"`
	// DataDir keeps the internal CA and ACME state. Default
	// /var/lib/meshd for root, else ~/.local/share/meshd.
	DataDir string `yaml:"data-dir" usage:"edge: internal CA and ACME state (default /var/lib/meshd as root, else ~/.local/share/meshd)"`
	// ACMECA is the ACME directory URL. Default Let's Encrypt.
	ACMECA string `yaml:"acme-ca" usage:"edge: ACME directory URL (default Let's Encrypt)"`
	// ACMECARoot is a PEM file trusted for the ACME CA (a private CA such
	// as Pebble). Default: the system roots.
	ACMECARoot string `yaml:"acme-ca-root" usage:"edge: PEM file to trust for the ACME CA (default: system roots)"`
	// ACMEEmail is the ACME account's contact. Default none.
	ACMEEmail string `yaml:"acme-email" usage:"edge: contact of the ACME account"`
	// PublicHTTPAllow lists hosts served over plain HTTP instead of being
	// redirected to HTTPS.
	PublicHTTPAllow []string `yaml:"public-http-allow" usage:"edge: host served over plain HTTP instead of redirected to HTTPS (repeatable)"`

	// Hardening of the edge's public listeners; 0 keeps meshd's default
	// (see `meshd run -h`), a negative value turns a limit off.
	//
	// NoHTTP3 turns off HTTP/3 on the public-https UDP port.
	NoHTTP3 bool `yaml:"no-http3" usage:"edge: no HTTP/3 on the public-https UDP port"`
	// Allow0RTT serves safe methods from TLS 1.3 0-RTT data over HTTP/3;
	// others get 425 Too Early. Default off: 0-RTT data can be replayed.
	Allow0RTT bool `yaml:"allow-0rtt" usage:"edge: serve GET/HEAD/OPTIONS from TLS 1.3 0-RTT data over HTTP/3 (replayable; others get 425)"`
	// MaxConnsPerIP bounds concurrent connections of one client IP.
	// Default 256.
	MaxConnsPerIP int `yaml:"max-conns-per-ip" usage:"edge: concurrent connections per client IP, -1 no limit (default 256)"`
	// MaxBody bounds a request body. Default "1GiB".
	MaxBody string `yaml:"max-body" usage:"edge: largest request body, -1 no limit (default 1GiB)"`
	// MinBodyRate is the slowest a client may send a request body, per
	// second over a 20 s window. Default "1KiB".
	MinBodyRate string `yaml:"min-body-rate" usage:"edge: slowest request body per second over 20s, -1 no limit (default 1KiB)"`
	// MaxConcurrentStreams per HTTP/2 or HTTP/3 connection. Default 250.
	MaxConcurrentStreams int `yaml:"max-concurrent-streams" usage:"edge: streams per HTTP/2 or HTTP/3 connection (default 250)"`
	// ReadHeaderTimeout bounds reading a request's headers (slowloris).
	// Default 10s.
	ReadHeaderTimeout time.Duration `yaml:"read-header-timeout" usage:"edge: time to read a request's headers (default 10s)"`
	// IdleTimeout closes idle client connections. Default 120s.
	IdleTimeout time.Duration `yaml:"idle-timeout" usage:"edge: idle client connections close after this (default 2m)"`
	// SendTimeout closes an HTTP/1.1 client connection when a response
	// write (at most 256 KiB) is not taken within it. Default 60s.
	SendTimeout time.Duration `yaml:"send-timeout" usage:"edge: close an HTTP/1.1 client that takes no response bytes for this long, negative: never (default 1m)"`
	// MaxHeaderBytes bounds a request's header block. Default "64KiB".
	MaxHeaderBytes string `yaml:"max-header-bytes" usage:"edge: largest request header block (default 64KiB)"`

	// AccessLog writes one info record per public request at the edge.
	// Default off.
	AccessLog bool `yaml:"access-log" usage:"edge: one log record per public request (client, method, host, URI, status, bytes, time, cache verdict, trace ID)"`

	// CacheSize bounds the edge's HTTP cache (headers and bodies); 0
	// turns the cache off. Default "256MiB".
	CacheSize string `yaml:"cache-size" usage:"edge: HTTP cache size, 0 turns it off (default 256MiB)"`
	// CacheMaxObject is the largest response the edge caches; larger ones
	// stream through untouched. Default "8MiB".
	CacheMaxObject string `yaml:"cache-max-object" usage:"edge: largest response cached; larger ones stream through (default 8MiB)"`
	// CacheSetCookie lets the edge cache store a response with
	// Set-Cookie when it is public or names Set-Cookie in private= or
	// no-cache=, without the cookie (cache.Store.StoreSetCookie).
	// Default false: such responses are never stored.
	CacheSetCookie bool `yaml:"cache-set-cookie" usage:"edge: cache responses with Set-Cookie when public or naming it in private=/no-cache= (stored without the cookie; default: never stored)"`

	// Anycast lists the prefixes an edge announces over BGP while it can
	// serve (e.g. 198.51.100.10/32; IPv6 too). Default: none, no BGP.
	Anycast []string `yaml:"anycast" usage:"edge: anycast prefix to announce over BGP while it can serve, e.g. 198.51.100.10/32 (repeatable)"`
	// AnycastBind names the interface (e.g. "lo") the edge adds its
	// anycast addresses to when it starts (taking over ones a crashed run
	// left) and removes them from when it stops. Each anycast prefix must
	// then be one address (/32 or /128). Needs CAP_NET_ADMIN. Default: the
	// operator assigns them.
	AnycastBind string `yaml:"anycast-bind" usage:"edge: add the anycast addresses to this interface (e.g. lo) while running; needs CAP_NET_ADMIN"`
	// BGPASN is the edge's local AS number. Required with Anycast.
	BGPASN string `yaml:"bgp-asn" usage:"edge: local AS number"`
	// BGPRouterID is the BGP identifier, an IPv4 address. Required with
	// Anycast.
	BGPRouterID string `yaml:"bgp-router-id" usage:"edge: BGP router ID (an IPv4 address)"`
	// BGPPeers are the routers to peer with: ADDR,ASN[,options] (see
	// `meshd run -h`). Required with Anycast.
	BGPPeers []string `yaml:"bgp-peer" usage:"edge: BGP peer ADDR,ASN[,port=N,local=ADDR,password=P,multihop=TTL,hold=9s,connect-retry=5s,passive,bfd,bfd-interval=300ms,bfd-multiplier=3] (repeatable)" list:"repeat"`
	// BGPListenPort accepts sessions on this TCP port. Default 0: dial out
	// only.
	BGPListenPort string `yaml:"bgp-listen-port" usage:"edge: accept BGP sessions on this port (default: dial out only)"`
	// BGPDrain is what SIGTERM does to the route: withdraw, or prepend
	// (re-announce with the AS path prepended so traffic shifts without a
	// blackhole). Default withdraw.
	BGPDrain string `yaml:"bgp-drain" usage:"edge: on SIGTERM, withdraw or prepend the route (default withdraw)"`
	// BGPUpHold is how long the edge must be able to serve before it
	// announces (again), so a flapping edge does not flap its route.
	// Withdrawal is immediate. Default 5s.
	BGPUpHold time.Duration `yaml:"bgp-up-hold" usage:"edge: serve this long before announcing (again) (default 5s)"`

	// Admin is the admin API listener: "unix:PATH" or "host:port"; empty
	// disables it. `meshd run` defaults it to the node's socket,
	// AdminSocket(Name); a Node built in code has none unless set.
	Admin string `yaml:"admin" usage:"admin API listener: unix:PATH or HOST:PORT (keep it on loopback); empty disables it (default unix:ADMIN-DIR/NAME.sock, ADMIN-DIR /run/meshd for root, or $MESHD_ADMIN_DIR)"`
	// AdminPprof serves Go's profiles at /debug/pprof/ on the admin
	// listener. Default false.
	AdminPprof bool `yaml:"admin-pprof" usage:"serve Go profiles at /debug/pprof/ on the admin listener"`
	// DrainDelay is how long a stopping node stays up after publishing
	// "draining", so that peers move away before its listeners close.
	// Default 2s.
	DrainDelay time.Duration `yaml:"drain-delay" usage:"time between publishing draining and closing listeners (default 2s)"`
	// ServiceTombstone is how long a node remembers a service that was
	// in the mesh and is gone: its requests (and its public host names)
	// get 503 "no healthy instance" with Retry-After instead of 404, so
	// an outage does not read as a misconfiguration. Default 24h.
	ServiceTombstone time.Duration `yaml:"service-tombstone" usage:"how long a service that left stays known: 503 instead of 404 (default 24h)"`
	// ShutdownGrace bounds how long in-flight requests may take to finish
	// once listeners stop. Default 10s.
	ShutdownGrace time.Duration `yaml:"shutdown-grace" usage:"bound on in-flight requests at shutdown (default 10s)"`
	// ConcurrencyLimit bounds the requests the node has in flight to each
	// upstream (its app, an instance, a gateway) before their response
	// header: "adaptive" follows the upstream's latency (between 4 and
	// 1000), a number N fixes the limit at N, "off" removes it. Requests
	// over the limit wait up to QueueTimeout, then get 503 with
	// Retry-After: 1 without being sent. Default adaptive.
	ConcurrencyLimit string `yaml:"concurrency-limit" usage:"requests in flight per upstream: adaptive, off or a number; the rest wait up to queue-timeout, then get 503 (default adaptive)"`
	// QueueTimeout is how long a request over an upstream's concurrency
	// limit waits for a slot (or for a connection while dials to the
	// upstream are bounded). Default 100ms.
	QueueTimeout time.Duration `yaml:"queue-timeout" usage:"how long a request over an upstream's concurrency limit waits for a slot before 503 (default 100ms)"`

	// OTLPEndpoint turns tracing on (telemetry.go): every hop through the
	// node is a span, exported to this OTLP/HTTP receiver, e.g.
	// http://collector:4318 (a URL without a path posts to /v1/traces;
	// https verifies the receiver with the system's roots). Default "":
	// tracing off, at no cost per request.
	OTLPEndpoint string `yaml:"otlp-endpoint" usage:"trace every hop and export the spans to this OTLP/HTTP receiver, e.g. http://127.0.0.1:4318 (default: tracing off)"`
	// OTLPSampleRatio is the share of new traces the node records, from 0
	// to 1: traces it starts (public requests at the edge, an app's calls
	// without a traceparent at its sidecar). A hop that continues a mesh
	// caller's trace follows the caller's choice, so a trace is whole or
	// absent. Default 1: every trace.
	OTLPSampleRatio string `yaml:"otlp-sample-ratio" usage:"share of new traces recorded, 0 to 1; hops continuing a trace follow its sampled flag (default 1)"`

	// LogFormat is text or json. Default text.
	LogFormat string `yaml:"log-format" usage:"text or json (default text)"`
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string `yaml:"log-level" usage:"debug, info, warn or error (default info)"`
}

// FieldError is a configuration error that names its key and, when it came
// from a file, the file position.
type FieldError struct {
	Field string
	File  string
	Line  int
	Err   error
}

func (e *FieldError) Error() string {
	if e.File != "" && e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s: %v", e.File, e.Line, e.Field, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Field, e.Err)
}

func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// SetDefaults fills every empty field that has a default.
func (c *Config) SetDefaults() {
	if c.Name == "" {
		if h, err := os.Hostname(); err == nil {
			c.Name = strings.ToLower(strings.SplitN(h, ".", 2)[0])
		}
	}
	if c.SVIDTTL == 0 {
		c.SVIDTTL = time.Hour
	}
	if c.CAPoll == 0 {
		c.CAPoll = 2 * time.Second
	}
	if c.SVIDWait == 0 {
		c.SVIDWait = 10 * time.Second
	}
	if c.Listen == "" {
		c.Listen = ":8443"
	}
	if c.Outbound == "" {
		c.Outbound = "127.0.0.1:15001"
	}
	if c.UpstreamProtocol == "" {
		c.UpstreamProtocol = UpstreamHTTP1
	}
	if c.HealthInterval == 0 {
		c.HealthInterval = time.Second
	}
	if c.GossipAddr == "" {
		c.GossipAddr = ":7946"
	}
	if c.WANGossipAddr == "" {
		c.WANGossipAddr = ":7947"
	}
	if c.PublicDomain == "" {
		c.PublicDomain = "localhost"
	}
	if c.DrainDelay == 0 {
		c.DrainDelay = 2 * time.Second
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 10 * time.Second
	}
	if c.ServiceTombstone == 0 {
		c.ServiceTombstone = 24 * time.Hour
	}
	if c.ConcurrencyLimit == "" {
		c.ConcurrencyLimit = "adaptive"
	}
	if c.QueueTimeout == 0 {
		c.QueueTimeout = proxy.DefaultQueueTimeout
	}
	if c.TLS == "" {
		c.TLS = "internal"
	}
	if c.DataDir == "" {
		c.DataDir = defaultDataDir()
	}
	if c.CacheSize == "" {
		c.CacheSize = "256MiB"
	}
	if c.CacheMaxObject == "" {
		c.CacheMaxObject = "8MiB"
	}
	if c.BGPDrain == "" {
		c.BGPDrain = "withdraw"
	}
	if c.BGPUpHold == 0 {
		c.BGPUpHold = 5 * time.Second
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
}

// Validate checks every field the role uses; the error names the field.
func (c *Config) Validate() error {
	switch c.Role {
	case RoleEdge, RoleGateway, RoleSidecar:
	case "":
		return fieldErr("role", "required: edge, gateway or sidecar")
	default:
		return fieldErr("role", "%q is not a role: want edge, gateway or sidecar", c.Role)
	}
	if err := validLabel(c.Name); err != nil {
		return &FieldError{Field: "name", Err: err}
	}
	if c.Role != RoleEdge || c.Region != "" {
		if err := validLabel(c.Region); err != nil {
			return &FieldError{Field: "region", Err: err}
		}
	}
	if c.CADir == "" {
		return fieldErr("ca-dir", "required: the directory written by `meshd ca init`")
	}
	if c.SPIFFESocket != "" && (c.CertFile != "" || c.KeyFile != "") {
		return fieldErr("spiffe-socket", "give either spiffe-socket or cert-file/key-file, not both")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		if c.CertFile == "" {
			return fieldErr("cert-file", "required with key-file")
		}
		return fieldErr("key-file", "required with cert-file")
	}
	if c.SVIDTTL < time.Second {
		// Shorter lifetimes would spend more time renewing than serving.
		return fieldErr("svid-ttl", "%v is too short: at least 1s", c.SVIDTTL)
	}
	if c.CAPoll < 10*time.Millisecond {
		return fieldErr("ca-poll", "%v is too short: at least 10ms", c.CAPoll)
	}
	if c.SVIDWait < 0 {
		return fieldErr("svid-wait", "must not be negative")
	}
	if c.DrainDelay < 0 {
		return fieldErr("drain-delay", "must not be negative")
	}
	if c.ShutdownGrace < 0 {
		return fieldErr("shutdown-grace", "must not be negative")
	}
	if c.ServiceTombstone < 0 {
		return fieldErr("service-tombstone", "must not be negative")
	}
	if _, err := c.PoolConcurrencyLimit(); err != nil {
		return &FieldError{Field: "concurrency-limit", Err: err}
	}
	if c.QueueTimeout < time.Millisecond || c.QueueTimeout > maxQueueTimeout {
		return fieldErr("queue-timeout", "%v: want a duration from 1ms to %v (a longer wait outlasts the clients it would serve)", c.QueueTimeout, maxQueueTimeout)
	}
	if c.HealthInterval < 0 {
		return fieldErr("health-interval", "must not be negative")
	}
	switch c.UpstreamProtocol {
	case "", UpstreamHTTP1, UpstreamH2C:
	default:
		return fieldErr("upstream-protocol", "%q: want http1 or h2c", c.UpstreamProtocol)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return fieldErr("log-format", "%q: want text or json", c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fieldErr("log-level", "%q: want debug, info, warn or error", c.LogLevel)
	}
	if err := c.validateTracing(); err != nil {
		return err
	}
	if c.Admin != "" {
		if err := validAdmin(c.Admin); err != nil {
			return &FieldError{Field: "admin", Err: err}
		}
	}
	if err := c.validateBGP(); err != nil {
		return err
	}
	switch c.Role {
	case RoleEdge:
		if c.PublicHTTP == "" {
			return fieldErr("public-http", "required for an edge: the public HTTP listener, e.g. :80")
		}
		if err := validHostPort(c.PublicHTTP); err != nil {
			return &FieldError{Field: "public-http", Err: err}
		}
		if err := validDomain(c.PublicDomain); err != nil {
			return &FieldError{Field: "public-domain", Err: err}
		}
		if err := c.validatePublicTLS(); err != nil {
			return err
		}
		for field, v := range map[string]string{"max-body": c.MaxBody, "min-body-rate": c.MinBodyRate, "max-header-bytes": c.MaxHeaderBytes} {
			if v == "" || v == "-1" {
				continue
			}
			if _, err := parseSize(v); err != nil {
				return &FieldError{Field: field, Err: err}
			}
		}
		if c.ReadHeaderTimeout < 0 || c.IdleTimeout < 0 {
			return fieldErr("read-header-timeout", "timeouts must not be negative")
		}
		if _, err := parseSize(c.CacheSize); err != nil {
			return &FieldError{Field: "cache-size", Err: err}
		}
		if max, err := parseSize(c.CacheMaxObject); err != nil || max == 0 {
			if err == nil {
				err = errors.New("must be more than 0")
			}
			return &FieldError{Field: "cache-max-object", Err: err}
		}
		if err := validHostPort(c.WANGossipAddr); err != nil {
			return &FieldError{Field: "wan-gossip-addr", Err: err}
		}
		for _, j := range c.WANJoin {
			if err := validHostPort(j); err != nil {
				return &FieldError{Field: "wan-join", Err: err}
			}
		}
	case RoleGateway, RoleSidecar:
		if err := validHostPort(c.Listen); err != nil {
			return &FieldError{Field: "listen", Err: err}
		}
		if c.Advertise != "" {
			if err := validHostPort(c.Advertise); err != nil {
				return &FieldError{Field: "advertise", Err: err}
			}
			if host, port, _ := net.SplitHostPort(c.Advertise); host == "" || port == "0" {
				return fieldErr("advertise", "%q: needs a host and a port other peers can dial", c.Advertise)
			}
		}
		if err := validHostPort(c.GossipAddr); err != nil {
			return &FieldError{Field: "gossip-addr", Err: err}
		}
		for _, j := range c.Join {
			if err := validHostPort(j); err != nil {
				return &FieldError{Field: "join", Err: err}
			}
		}
	}
	if c.Role == RoleGateway {
		if err := validHostPort(c.WANGossipAddr); err != nil {
			return &FieldError{Field: "wan-gossip-addr", Err: err}
		}
		for _, j := range c.WANJoin {
			if err := validHostPort(j); err != nil {
				return &FieldError{Field: "wan-join", Err: err}
			}
		}
	}
	if len(c.AllowCallers) > 0 {
		if c.Role == RoleEdge {
			return fieldErr("allow-callers", "an edge has no mesh listener; it applies to gateways and sidecars")
		}
		for _, p := range c.AllowCallers {
			if err := validCallerPattern(p); err != nil {
				return &FieldError{Field: "allow-callers", Err: err}
			}
		}
	}
	if err := c.validatePorts(); err != nil {
		return err
	}
	if c.Role == RoleSidecar {
		if err := validLabel(c.Service); err != nil {
			return &FieldError{Field: "service", Err: err}
		}
		switch {
		case c.Upstream == "" && len(c.TCP) == 0 && len(c.UDP) == 0:
			return fieldErr("upstream", "required for a sidecar: the app's address, e.g. 127.0.0.1:8080 (or --tcp for an app without HTTP)")
		case c.Upstream == "" && c.HealthPath != "":
			return fieldErr("health-path", "an app without --upstream has no HTTP to check; its first --tcp port is checked by a TCP connect")
		case c.Upstream != "":
			if err := validHostPort(c.Upstream); err != nil {
				return &FieldError{Field: "upstream", Err: err}
			}
		}
		if err := validHostPort(c.Outbound); err != nil {
			return &FieldError{Field: "outbound", Err: err}
		}
		if c.HealthPath != "" && !strings.HasPrefix(c.HealthPath, "/") {
			return fieldErr("health-path", "%q must start with /", c.HealthPath)
		}
		for _, d := range c.Domains {
			if err := validDomain(d); err != nil {
				return &FieldError{Field: "domains", Err: err}
			}
		}
		if c.Subset != "" {
			if err := validLabel(c.Subset); err != nil {
				return &FieldError{Field: "subset", Err: err}
			}
		}
	} else if c.Subset != "" {
		return fieldErr("subset", "labels a sidecar's instance; a %s has none", c.Role)
	}
	return nil
}

// validateTracing checks otlp-endpoint and otlp-sample-ratio.
func (c *Config) validateTracing() error {
	if c.OTLPEndpoint != "" {
		u, err := url.Parse(c.OTLPEndpoint)
		switch {
		case err != nil:
			return &FieldError{Field: "otlp-endpoint", Err: err}
		case u.Scheme != "http" && u.Scheme != "https":
			return fieldErr("otlp-endpoint", "%q: want an http:// or https:// URL, e.g. http://127.0.0.1:4318", c.OTLPEndpoint)
		case u.Host == "" || u.Port() == "" && strings.HasSuffix(u.Host, ":"):
			return fieldErr("otlp-endpoint", "%q names no host", c.OTLPEndpoint)
		case u.User != nil:
			// A URL's credentials end up in logs; the exporter sends
			// OTEL_EXPORTER_OTLP_HEADERS instead.
			return fieldErr("otlp-endpoint", "%q: no credentials in the URL (set OTEL_EXPORTER_OTLP_HEADERS)", u.Redacted())
		case u.RawQuery != "" || u.Fragment != "":
			return fieldErr("otlp-endpoint", "%q: no query or fragment", c.OTLPEndpoint)
		}
	}
	if _, err := c.SampleRatio(); err != nil {
		return &FieldError{Field: "otlp-sample-ratio", Err: err}
	}
	return nil
}

// SampleRatio is OTLPSampleRatio as a number, 1 when it is empty.
func (c *Config) SampleRatio() (float64, error) {
	if c.OTLPSampleRatio == "" {
		return 1, nil
	}
	r, err := strconv.ParseFloat(strings.TrimSpace(c.OTLPSampleRatio), 64)
	if err != nil || !(r >= 0 && r <= 1) { // NaN fails both
		return 0, fmt.Errorf("%q: want a number from 0 to 1, e.g. 0.1", c.OTLPSampleRatio)
	}
	return r, nil
}

// maxQueueTimeout bounds queue-timeout: a request queued longer has
// usually been given up by its client.
const maxQueueTimeout = time.Minute

// maxConcurrencyLimit bounds a fixed concurrency-limit.
const maxConcurrencyLimit = 1_000_000

// PoolConcurrencyLimit is concurrency-limit as proxy.Pool.ConcurrencyLimit
// takes it: 0 adaptive, -1 off, N > 0 fixed.
func (c *Config) PoolConcurrencyLimit() (int, error) {
	switch c.ConcurrencyLimit {
	case "", "adaptive":
		return 0, nil
	case "off":
		return -1, nil
	}
	n, err := strconv.Atoi(c.ConcurrencyLimit)
	if err != nil || n < 1 || n > maxConcurrencyLimit {
		return 0, fmt.Errorf("%q: want adaptive, off or a number from 1 to %d", c.ConcurrencyLimit, maxConcurrencyLimit)
	}
	return n, nil
}

// validLabel accepts names used in SPIFFE IDs and host names: lowercase
// letters, digits and '-', 1 to 63 characters, starting with a letter or
// digit, so that <service>.mesh and <service>.<domain> are valid hosts.
func validLabel(s string) error {
	if s == "" {
		return errors.New("required")
	}
	if len(s) > 63 {
		return fmt.Errorf("%q is longer than 63 characters", s)
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch >= 'a' && ch <= 'z', ch >= '0' && ch <= '9':
		case ch == '-' && i > 0 && i < len(s)-1:
		default:
			return fmt.Errorf("%q: use lowercase letters, digits and inner '-'", s)
		}
	}
	return nil
}

func validDomain(s string) error {
	if s == "" {
		return errors.New("required")
	}
	if len(s) > 253 {
		return fmt.Errorf("%q is longer than 253 characters", s)
	}
	for _, l := range strings.Split(s, ".") {
		if err := validLabel(l); err != nil {
			return fmt.Errorf("%q is not a domain name", s)
		}
	}
	return nil
}

func validHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	if host != "" && host != "localhost" {
		if _, err := netip.ParseAddr(host); err != nil {
			if validDomain(strings.TrimSuffix(host, ".")) != nil {
				return fmt.Errorf("%q: bad host %q", s, host)
			}
		}
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil || p < 0 || p > 65535 || fmt.Sprint(p) != port {
		return fmt.Errorf("%q: bad port %q", s, port)
	}
	return nil
}

// LoadFile decodes a YAML config file into c. Unknown keys and values of
// the wrong type are errors naming the key and its line; so are values that
// Validate later refuses, through Positions.
func LoadFile(path string, c *Config) (*Positions, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return decodeYAML(path, data, c)
}

// Positions maps the keys of a config file to their lines, so a Validate
// error can point into the file.
type Positions struct {
	File  string
	Lines map[string]int
}

// Annotate adds the file position to a *FieldError for a key of the file.
func (p *Positions) Annotate(err error) error {
	var fe *FieldError
	if p == nil || !errors.As(err, &fe) || fe.File != "" {
		return err
	}
	if line, ok := p.Lines[fe.Field]; ok {
		cp := *fe
		cp.File, cp.Line = p.File, line
		return &cp
	}
	return err
}

func decodeYAML(path string, data []byte, c *Config) (*Positions, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	pos := &Positions{File: path, Lines: map[string]int{}}
	if len(root.Content) == 0 {
		return pos, nil // empty file: nothing set
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: the config file must be a mapping of keys to values", path, doc.Line)
	}
	known := map[string]reflect.StructField{}
	t := reflect.TypeOf(*c)
	for i := 0; i < t.NumField(); i++ {
		known[t.Field(i).Tag.Get("yaml")] = t.Field(i)
	}
	v := reflect.ValueOf(c).Elem()
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, val := doc.Content[i], doc.Content[i+1]
		f, ok := known[k.Value]
		if !ok {
			return nil, &FieldError{Field: k.Value, File: path, Line: k.Line, Err: errors.New("unknown key")}
		}
		if _, dup := pos.Lines[k.Value]; dup {
			return nil, &FieldError{Field: k.Value, File: path, Line: k.Line, Err: errors.New("given twice")}
		}
		pos.Lines[k.Value] = k.Line
		fv := v.FieldByIndex(f.Index)
		if err := decodeValue(val, fv); err != nil {
			return nil, &FieldError{Field: k.Value, File: path, Line: val.Line, Err: err}
		}
	}
	return pos, nil
}

func decodeValue(n *yaml.Node, fv reflect.Value) error {
	switch fv.Interface().(type) {
	case bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Decode(&b) != nil {
			return fmt.Errorf("%q: want true or false", n.Value)
		}
		fv.SetBool(b)
		return nil
	case int:
		var i int
		if n.Kind != yaml.ScalarNode || n.Decode(&i) != nil {
			return fmt.Errorf("%q: want a whole number", n.Value)
		}
		fv.SetInt(int64(i))
		return nil
	case time.Duration:
		if n.Kind != yaml.ScalarNode {
			return errors.New("want a duration such as 30s or 1h")
		}
		d, err := time.ParseDuration(n.Value)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 30s or 1h", n.Value)
		}
		fv.SetInt(int64(d))
		return nil
	case string:
		if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
			return errors.New("want a string")
		}
		fv.SetString(n.Value)
		return nil
	case []string:
		var out []string
		switch n.Kind {
		case yaml.ScalarNode:
			out = []string{n.Value}
		case yaml.SequenceNode:
			for _, e := range n.Content {
				if e.Kind != yaml.ScalarNode {
					return fmt.Errorf("line %d: want a list of strings", e.Line)
				}
				out = append(out, e.Value)
			}
		default:
			return errors.New("want a list of strings")
		}
		fv.Set(reflect.ValueOf(out))
		return nil
	}
	return fmt.Errorf("unsupported field type %s", fv.Type())
}

// MarshalYAML-free rendering of a config for `meshd run --print-config`
// and golden tests: one key per line, in field order, zero values omitted.
func (c *Config) String() string {
	var b bytes.Buffer
	v := reflect.ValueOf(*c)
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		fv := v.Field(i)
		if fv.IsZero() {
			continue
		}
		key := t.Field(i).Tag.Get("yaml")
		switch x := fv.Interface().(type) {
		case []string:
			fmt.Fprintf(&b, "%s: [%s]\n", key, strings.Join(x, ", "))
		default:
			fmt.Fprintf(&b, "%s: %v\n", key, x)
		}
	}
	return b.String()
}

// CacheBytes is the edge cache's size in bytes (0 when off, or on other
// roles); the configuration must have passed Validate.
func (c *Config) CacheBytes() int64 {
	if c.Role != RoleEdge {
		return 0
	}
	n, _ := parseSize(c.CacheSize)
	return n
}

// validCallerPattern checks one allow-callers entry: "*", or SPIFFE ID path
// segments (letters, digits, '.', '-', '_'; RFC-style SPIFFE path rules)
// with an optional final "*" segment.
func validCallerPattern(p string) error {
	if p == "*" {
		return nil
	}
	if p == "" || strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") || strings.Contains(p, "spiffe:") {
		return fmt.Errorf("%q: want a SPIFFE ID path such as service/api or gateway/*", p)
	}
	segs := strings.Split(p, "/")
	for i, seg := range segs {
		if seg == "*" && i == len(segs)-1 {
			continue
		}
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%q: empty or dot segment", p)
		}
		if strings.Contains(seg, "*") {
			return fmt.Errorf("%q: * is allowed only as the whole last segment (gateway/*)", p)
		}
		for _, r := range seg {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
				return fmt.Errorf("%q: %q is not allowed in a SPIFFE ID path", p, r)
			}
		}
	}
	return nil
}

// callerAllowed reports whether path (a SPIFFE ID's path without its
// leading slash) matches one of patterns.
func callerAllowed(patterns []string, path string) bool {
	for _, p := range patterns {
		if p == "*" || p == path {
			return true
		}
		if prefix, ok := strings.CutSuffix(p, "*"); ok && strings.HasPrefix(path, prefix) && len(path) > len(prefix) {
			return true
		}
	}
	return false
}
