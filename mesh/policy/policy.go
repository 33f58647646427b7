package policy

import (
	"strings"
	"time"
)

// MaxDocumentSize is the largest policy document, in bytes of YAML.
// Other limits keep a document that every node parses on each gossip
// update cheap to read, whoever wrote it.
const MaxDocumentSize = 256 << 10

const (
	maxServices = 1000
	maxRoutes   = 100 // rules per service
	maxDomains  = 100 // domains per service
	maxSubsets  = 100 // entries of one split
	maxHeaders  = 32  // header matchers per match
	maxRegexLen = 1 << 10
	maxValueLen = 1 << 10 // paths, exact and prefix header values
)

// Document is a parsed, valid policy document.
type Document struct {
	// Version is the document's version: from its version: field when
	// Parse returns it (0 when the YAML has none), from the signed envelope
	// when Verify returns it.
	Version uint64
	// Services holds every service the document names, by name.
	Services map[string]*Service
	// Domains maps each public host name to the service that owns it,
	// from every service's domains. No host has two owners.
	Domains map[string]string
}

// Service is the policy of one service: its public domains and the
// rules that pick a route for each of its requests.
type Service struct {
	Name string
	// Domains are the public host names the service owns, as written.
	Domains []string
	// Routes are the service's rules, in the order written; the first
	// whose match holds wins.
	Routes []*Route
	// Default is the service's own settings as a route that matches
	// every request (named "default"). Resolve returns it when no rule
	// matches; every rule inherits from it what the rule does not set.
	Default *Route
	// Authz says which callers may call the service; nil allows every
	// caller of the trust domain.
	Authz *Authorization
}

// DefaultRouteName is the name of every Service.Default. No rule may use it.
const DefaultRouteName = "default"

// Route is what meshd does with a request once a rule (or the
// service's default) has matched it. Every setting is complete: the
// route already holds what it inherited and the defaults. A Route and
// what it points to are shared and must be treated as read-only.
type Route struct {
	// Name is the rule's name: as written, else its index in routes
	// ("0", "1", …), or "default" for Service.Default.
	Name string
	// Subset is the one subset every request of the route goes to, or
	// "" when the route splits or goes to any instance.
	Subset string
	// Split spreads requests over subsets by weight, sorted by subset
	// name; nil when the route has a fixed Subset or goes to any
	// instance of the service.
	Split []Weight
	// Timeouts bound each phase of a request; 0 = not set.
	Timeouts Timeouts
	// Retries is always set: the defaults where the document says nothing.
	Retries Retries
	// RateLimit is nil when requests are not limited.
	RateLimit *RateLimit
	// Concurrency caps requests in flight to the service; 0 = no cap.
	Concurrency Concurrency
	// Outlier and Failover are always set: the defaults where the
	// document says nothing. They are properties of the service's
	// instances, so only a service sets them and every rule shares them.
	Outlier  Outlier
	Failover Failover
	// Affinity is nil when requests are balanced without affinity.
	Affinity *Affinity
	// Mirror is nil when no traffic is mirrored.
	Mirror *Mirror
	// Fault is nil when no fault is injected.
	Fault *Fault

	match matcher
}

// Weight is one subset of a split and its share, relative to the sum of
// the split's weights.
type Weight struct {
	Subset string
	Weight int
}

// Timeouts of one request. 0 means the field is not set and meshd's
// built-in limit applies.
type Timeouts struct {
	Connect   time.Duration // to open a connection to an instance
	FirstByte time.Duration // from the request sent to the response's first byte
	Total     time.Duration // the whole exchange, retries included
	Idle      time.Duration // a connection or stream with no bytes moving
}

// RetryOn is the set of failures after which a request is retried.
type RetryOn uint8

// The failures a route can retry on (retries.on in the document).
const (
	RetryConnectFailure RetryOn = 1 << iota // connect-failure: no connection to the instance
	RetryRefusedStream                      // refused-stream: the instance refused the HTTP/2 stream unprocessed
	Retry502                                // 502: bad gateway
	Retry503                                // 503: service unavailable
	Retry504                                // 504: gateway timeout
	RetryTimeout                            // timeout: no first byte within timeouts.first-byte
)

var retryOnNames = [...]struct {
	bit  RetryOn
	name string
}{
	{RetryConnectFailure, "connect-failure"},
	{RetryRefusedStream, "refused-stream"},
	{Retry502, "502"},
	{Retry503, "503"},
	{Retry504, "504"},
	{RetryTimeout, "timeout"},
}

// String lists the failures as written in a document, comma-separated.
func (o RetryOn) String() string {
	var b strings.Builder
	for _, n := range retryOnNames {
		if o&n.bit != 0 {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(n.name)
		}
	}
	return b.String()
}

// Retries says when and how often a request is tried again.
type Retries struct {
	// Attempts counts tries in all, the first one included: 1 means no
	// retry. Default 2.
	Attempts int
	// On is when to retry. Default connect-failure and refused-stream:
	// the failures after which the instance cannot have acted on the request.
	On RetryOn
	// Budget caps retries at this fraction of requests (0.2 = 20%, the
	// default), so retries cannot multiply load on a failing service.
	Budget float64
	// MinPerSecond retries are allowed each second whatever the budget,
	// so a quiet service can still retry. Default 10.
	MinPerSecond float64
	// BackoffBase and BackoffMax bound the jittered exponential wait
	// between tries. Default 25ms and 250ms.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// ReplayBody is the most request body bytes kept to send again on a
	// retry; a request with a larger body is not retried. Default 64 KiB.
	ReplayBody int64
}

// Rate is Count events per Per. The zero Rate means not set.
type Rate struct {
	Count int
	Per   time.Duration // time.Second, time.Minute or time.Hour
}

// RateLimit limits requests of a route. A zero Rate is no limit of that kind.
type RateLimit struct {
	PerCaller Rate // per calling identity (SPIFFE ID)
	PerIP     Rate // per client IP address (public traffic)
	Total     Rate // all requests of the route together
	// Burst is how many requests may go at once above the rate; 0 when
	// the document does not say.
	Burst int
	// Global counts requests mesh-wide rather than on each node.
	Global bool
}

// Concurrency caps requests in flight. 0 means no cap.
type Concurrency struct {
	Soft int // above it, requests wait (or are shed by priority)
	Hard int // above it, requests are refused
}

// Outlier ejects failing instances from balancing for a while.
type Outlier struct {
	ConsecutiveFailures int           // failures in a row that eject an instance; default 5
	Ejection            time.Duration // how long an instance stays out; default 30s
	MaxEjected          float64       // most instances out at once, as a fraction; default 0.1
}

// Failover decides when traffic spills to the next region.
type Failover struct {
	// Overprovisioning multiplies a region's healthy fraction before
	// deciding it cannot carry its share; default 1.4 (Envoy's factor),
	// so a region keeps all its traffic until under ~71% healthy.
	Overprovisioning float64
}

// Affinity sends requests with the same key to the same instance by
// consistent hashing. Exactly one field is set.
type Affinity struct {
	Header string // canonical header name (http.CanonicalHeaderKey)
	Cookie string
}

// Mirror sends a copy of a fraction of requests to a subset and drops
// its responses.
type Mirror struct {
	Subset   string
	Fraction float64 // 0..1
}

// Fault injects failures for testing resilience. At least one field is set.
type Fault struct {
	Delay *FaultDelay
	Abort *FaultAbort
}

// FaultDelay holds a fraction of requests for Duration before forwarding them.
type FaultDelay struct {
	Fraction float64 // 0..1
	Duration time.Duration
}

// FaultAbort answers a fraction of requests with Status without forwarding them.
type FaultAbort struct {
	Fraction float64 // 0..1
	Status   int     // 200..599
}
