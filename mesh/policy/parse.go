package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/textproto"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Error is a problem in a policy document, at a position in it. Every
// error Parse returns is an *Error.
type Error struct {
	File   string // the name given to Parse
	Line   int    // 1-based
	Column int    // 1-based; 0 when the YAML parser did not say
	Path   string // field path, e.g. services.web.routes[1].timeout; "" for the document itself
	Msg    string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(e.Line))
	if e.Column > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Column))
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Defaults where the document does not set a field.
var (
	defaultRetries = Retries{
		Attempts:     2,
		On:           RetryConnectFailure | RetryRefusedStream,
		Budget:       0.2,
		MinPerSecond: 10,
		BackoffBase:  25 * time.Millisecond,
		BackoffMax:   250 * time.Millisecond,
		ReplayBody:   64 << 10,
	}
	defaultOutlier  = Outlier{ConsecutiveFailures: 5, Ejection: 30 * time.Second, MaxEjected: 0.1}
	defaultFailover = Failover{Overprovisioning: 1.4}
)

// DefaultRoute returns the route of a service the document says nothing
// about: what meshd does with its requests when it has no policy for it.
func DefaultRoute() *Route {
	return &Route{Name: DefaultRouteName, Retries: defaultRetries, Outlier: defaultOutlier, Failover: defaultFailover}
}

// Parse decodes and validates a policy document. name is used in error
// positions ("policy.yaml"). It stops at the first problem and returns
// it as an *Error that names the file position and the field.
//
// The document is plain YAML: one document, no anchors, aliases or
// explicit tags, and no field that meshd does not know. A signed
// document is read by people before it goes to every node; what they
// read must be what every node enforces, with nothing expanded, merged
// or silently ignored.
func Parse(name string, data []byte) (*Document, error) {
	p := &parser{file: name}
	return p.parse(data)
}

// parse runs the parser; failf stops it by panicking with an *Error.
func (p *parser) parse(data []byte) (doc *Document, err error) {
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(*Error)
			if !ok {
				panic(r)
			}
			doc, err = nil, e
		}
	}()
	root := p.decode(data)
	return p.document(root), nil
}

type parser struct {
	file      string
	regexSize int // instructions of the document's regular expressions so far
}

// failf stops the parse with an error at n (the document start when n is nil).
func (p *parser) failf(n *yaml.Node, path, format string, args ...any) {
	e := &Error{File: p.file, Line: 1, Column: 1, Path: path, Msg: fmt.Sprintf(format, args...)}
	if n != nil && n.Line > 0 {
		e.Line, e.Column = n.Line, n.Column
	}
	panic(e)
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (p *parser) decode(data []byte) *yaml.Node {
	if len(data) > MaxDocumentSize {
		p.failf(nil, "", "document is %d bytes, more than the limit of %d", len(data), MaxDocumentSize)
	}
	// Check the encoding before the YAML parser does, to report where.
	line, col := 1, 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			p.failf(&yaml.Node{Line: line, Column: col}, "", "not UTF-8")
		case r == '\n':
			line, col = line+1, 0
		case r < 0x20 && r != '\t' && r != '\r', r == 0x7f:
			p.failf(&yaml.Node{Line: line, Column: col}, "", "control character %U", r)
		}
		i += size
		col++
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.failf(nil, "", "empty document")
		}
		p.yamlError(err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		p.failf(&next, "", "more than one YAML document")
	case !errors.Is(err, io.EOF):
		p.yamlError(err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		p.failf(&doc, "", "empty document")
	}
	return doc.Content[0]
}

// parserProblems are the messages of the YAML parser's (not scanner's)
// errors. yaml.v3 reports their line counting from 0, and leaves the
// line out when it is the first: yamlError counts from 1.
var parserProblems = []string{
	"did not find expected <stream-start>",
	"did not find expected <document start>",
	"found undefined tag handle",
	"did not find expected node content",
	"did not find expected '-' indicator",
	"did not find expected key",
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"found duplicate %YAML directive",
	"found incompatible YAML document",
	"found duplicate %TAG directive",
}

// yamlError turns an error of the YAML parser into an *Error. The
// parser names a line (where the construct that failed begins) but no
// column.
func (p *parser) yamlError(err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	if slices.Contains(parserProblems, msg) {
		line++
	}
	panic(&Error{File: p.file, Line: max(line, 1), Msg: msg})
}

// plain refuses what the document format leaves out of YAML.
func (p *parser) plain(n *yaml.Node, path string) {
	switch {
	case n.Kind == yaml.AliasNode:
		p.failf(n, path, "aliases are not allowed in a policy document")
	case n.Anchor != "":
		p.failf(n, path, "anchors are not allowed in a policy document")
	case n.Style&yaml.TaggedStyle != 0:
		p.failf(n, path, "tags are not allowed in a policy document")
	}
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "null"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

type entry struct {
	key, val *yaml.Node
	name     string // the key
	path     string // path of the value
}

// mapping returns the entries of the mapping n in document order. When
// known is not nil, every key must be one of them. Keys are unique.
func (p *parser) mapping(n *yaml.Node, path string, known ...string) []entry {
	p.plain(n, path)
	if n.Kind != yaml.MappingNode {
		p.failf(n, path, "want a mapping, not %s", kindName(n))
	}
	out := make([]entry, 0, len(n.Content)/2)
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p.plain(k, path)
		if k.Kind != yaml.ScalarNode || k.Tag == "!!null" {
			p.failf(k, path, "want a field name, not %s", kindName(k))
		}
		if known != nil && !slices.Contains(known, k.Value) {
			p.failf(k, path, "unknown field %q", k.Value)
		}
		if seen[k.Value] {
			p.failf(k, path, "duplicate field %q", k.Value)
		}
		seen[k.Value] = true
		out = append(out, entry{key: k, val: v, name: k.Value, path: join(path, k.Value)})
	}
	return out
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func (p *parser) list(n *yaml.Node, path string, limit int) []*yaml.Node {
	p.plain(n, path)
	if n.Kind != yaml.SequenceNode {
		p.failf(n, path, "want a list, not %s", kindName(n))
	}
	if len(n.Content) > limit {
		p.failf(n, path, "%d entries, more than the limit of %d", len(n.Content), limit)
	}
	for i, c := range n.Content {
		p.plain(c, fmt.Sprintf("%s[%d]", path, i))
	}
	return n.Content
}

// str returns a scalar's text. Numbers and booleans count as their text
// (x-canary: 1 means the header value "1").
func (p *parser) str(n *yaml.Node, path string) string {
	p.plain(n, path)
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.failf(n, path, "want a string, not %s", kindName(n))
	}
	return n.Value
}

func (p *parser) integer(n *yaml.Node, path string, lo, hi int64) int64 {
	p.plain(n, path)
	var v int64
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		p.failf(n, path, "want an integer, not %s", kindName(n))
	}
	if v < lo || v > hi {
		p.failf(n, path, "%d is out of range [%d, %d]", v, lo, hi)
	}
	return v
}

func (p *parser) number(n *yaml.Node, path string, lo, hi float64) float64 {
	p.plain(n, path)
	var v float64
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") || n.Decode(&v) != nil ||
		math.IsNaN(v) || math.IsInf(v, 0) {
		p.failf(n, path, "want a number, not %s", kindName(n))
	}
	if v < lo || v > hi {
		p.failf(n, path, "%v is out of range [%v, %v]", v, lo, hi)
	}
	return v
}

func (p *parser) boolean(n *yaml.Node, path string) bool {
	p.plain(n, path)
	var v bool
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&v) != nil {
		p.failf(n, path, "want true or false, not %s", kindName(n))
	}
	return v
}

// duration reads Go duration syntax ("250ms", "1m30s"), > 0 and ≤ hi.
func (p *parser) duration(n *yaml.Node, path string, hi time.Duration) time.Duration {
	s := p.str(n, path)
	d, err := time.ParseDuration(s)
	if err != nil || n.Tag != "!!str" {
		p.failf(n, path, "want a duration like \"250ms\" or \"2s\", not %q", s)
	}
	if d <= 0 || d > hi {
		p.failf(n, path, "duration %s is out of range (0, %s]", s, hi)
	}
	return d
}

// percent reads "20%" (0 to 100, fractions allowed) and returns a
// fraction (0.2). When bare is set, a plain number means percent too
// (the fields named percent).
func (p *parser) percent(n *yaml.Node, path string, bare bool) float64 {
	p.plain(n, path)
	if bare && n.Kind == yaml.ScalarNode && (n.Tag == "!!int" || n.Tag == "!!float") {
		return p.number(n, path, 0, 100) / 100
	}
	s := p.str(n, path)
	num, ok := strings.CutSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if !ok || err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		p.failf(n, path, "want a percentage like \"20%%\", not %q", s)
	}
	if v < 0 || v > 100 {
		p.failf(n, path, "percentage %s is out of range [0%%, 100%%]", s)
	}
	return v / 100
}

// rate reads "50/s", "3000/m" or "10/h".
func (p *parser) rate(n *yaml.Node, path string) Rate {
	s := p.str(n, path)
	count, unit, ok := strings.Cut(s, "/")
	c, err := strconv.Atoi(strings.TrimSpace(count))
	per := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[strings.TrimSpace(unit)]
	if !ok || err != nil || per == 0 {
		p.failf(n, path, "want a rate like \"50/s\", \"3000/m\" or \"10/h\", not %q", s)
	}
	if c < 1 || c > 1e9 {
		p.failf(n, path, "rate count %d is out of range [1, 1000000000]", c)
	}
	return Rate{Count: c, Per: per}
}

// size reads a byte count: an integer, or "64KiB", "1MiB", "1GiB", "512B".
func (p *parser) size(n *yaml.Node, path string, hi int64) int64 {
	p.plain(n, path)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" {
		return p.integer(n, path, 0, hi)
	}
	s := p.str(n, path)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
			if err != nil || v < 0 {
				break
			}
			if v > hi/u.mult {
				p.failf(n, path, "size %s is more than the limit of %d bytes", s, hi)
			}
			return v * u.mult
		}
	}
	p.failf(n, path, "want a size like \"64KiB\", \"1MiB\" or a number of bytes, not %q", s)
	return 0
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// label checks a service, subset or route name: a DNS label, so that
// it can appear in SPIFFE IDs, host names and metric labels unchanged.
func (p *parser) label(n *yaml.Node, path, what, s string) string {
	if !dnsLabel.MatchString(s) {
		p.failf(n, path, "%s %q is not a DNS label (lowercase a-z, 0-9 and '-', at most 63, no '-' at either end)", what, s)
	}
	return s
}

// domain checks a public host name: lowercase DNS name, no trailing
// dot, no wildcard, not an IP address.
func (p *parser) domain(n *yaml.Node, path, s string) string {
	if s != strings.ToLower(s) {
		p.failf(n, path, "domain %q must be lowercase", s)
	}
	labels := strings.Split(s, ".")
	bad := len(s) > 253 || len(labels) < 1
	for _, l := range labels {
		bad = bad || !dnsLabel.MatchString(l)
	}
	if !bad && strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		bad = true // a numeric top-level label: an IP address, not a name
	}
	if bad {
		p.failf(n, path, "domain %q is not a DNS name (labels of a-z, 0-9 and '-', separated by '.', at most 253)", s)
	}
	return s
}

func (p *parser) document(root *yaml.Node) *Document {
	doc := &Document{Services: map[string]*Service{}, Domains: map[string]string{}}
	for _, e := range p.mapping(root, "", "version", "services") {
		switch e.name {
		case "version":
			p.plain(e.val, e.path)
			var v uint64
			if e.val.Kind != yaml.ScalarNode || e.val.Tag != "!!int" || e.val.Decode(&v) != nil || v == 0 {
				p.failf(e.val, e.path, "want a positive integer, not %s", kindName(e.val))
			}
			doc.Version = v
		case "services":
			svcs := p.mapping(e.val, e.path)
			if len(svcs) > maxServices {
				p.failf(e.val, e.path, "%d services, more than the limit of %d", len(svcs), maxServices)
			}
			for _, s := range svcs {
				name := p.label(s.key, e.path, "service name", s.name)
				svc, nodes := p.service(s.val, s.path, name)
				for i, d := range svc.Domains {
					if owner, ok := doc.Domains[d]; ok {
						p.failf(nodes[i], fmt.Sprintf("%s.domains[%d]", s.path, i), "domain %q is already owned by service %q", d, owner)
					}
					doc.Domains[d] = name
				}
				doc.Services[name] = svc
			}
		}
	}
	return doc
}

// settings are what a service or a rule writes, before inheritance.
type settings struct {
	subset      string
	split       []Weight
	hasSplit    bool
	timeouts    Timeouts
	retries     *Retries
	rateLimit   *RateLimit
	concurrency *Concurrency
	outlier     *Outlier
	failover    *Failover
	affinity    *Affinity
	mirror      *Mirror
	fault       *Fault
}

// serviceOnly are settings of a service's instances rather than of a
// class of requests: a rule cannot set them.
var serviceOnly = []string{"concurrency", "outlier", "failover"}

var settingFields = []string{"split", "timeout", "timeouts", "retries", "rate-limit",
	"concurrency", "outlier", "failover", "affinity", "mirror", "fault"}

// setting reads one settings field into st; false when e is not one.
func (p *parser) setting(e entry, st *settings, all map[string]entry) bool {
	switch e.name {
	case "split":
		st.split, st.hasSplit = p.split(e.val, e.path), true
	case "timeout":
		if t, ok := all["timeouts"]; ok {
			for _, f := range p.mapping(t.val, t.path) {
				if f.name == "total" {
					p.failf(e.key, e.path, "set timeout or timeouts.total, not both")
				}
			}
		}
		st.timeouts.Total = p.duration(e.val, e.path, maxTimeout)
	case "timeouts":
		for _, f := range p.mapping(e.val, e.path, "connect", "first-byte", "total", "idle") {
			d := p.duration(f.val, f.path, maxTimeout)
			switch f.name {
			case "connect":
				st.timeouts.Connect = d
			case "first-byte":
				st.timeouts.FirstByte = d
			case "total":
				st.timeouts.Total = d
			case "idle":
				st.timeouts.Idle = d
			}
		}
	case "retries":
		r := p.retries(e.val, e.path)
		st.retries = &r
	case "rate-limit":
		st.rateLimit = p.rateLimit(e.val, e.path)
	case "concurrency":
		c := p.concurrency(e.val, e.path)
		st.concurrency = &c
	case "outlier":
		o := p.outlier(e.val, e.path)
		st.outlier = &o
	case "failover":
		f := defaultFailover
		for _, g := range p.mapping(e.val, e.path, "overprovisioning") {
			f.Overprovisioning = p.number(g.val, g.path, 1, 100)
		}
		st.failover = &f
	case "affinity":
		st.affinity = p.affinity(e.val, e.path)
	case "mirror":
		st.mirror = p.mirror(e.val, e.path)
	case "fault":
		st.fault = p.fault(e.val, e.path)
	default:
		return false
	}
	return true
}

const (
	maxTimeout  = 24 * time.Hour
	maxBackoff  = time.Hour
	maxEjection = 24 * time.Hour
	maxDelay    = time.Hour
	maxReplay   = 16 << 20
	maxWeight   = 1_000_000
)

func byName(es []entry) map[string]entry {
	m := make(map[string]entry, len(es))
	for _, e := range es {
		m[e.name] = e
	}
	return m
}

func (p *parser) service(n *yaml.Node, path, name string) (*Service, []*yaml.Node) {
	known := append([]string{"domains", "routes", "authorization"}, settingFields...)
	es := p.mapping(n, path, known...)
	all := byName(es)
	svc := &Service{Name: name}
	var st settings
	var domainNodes []*yaml.Node
	for _, e := range es {
		if p.setting(e, &st, all) {
			continue
		}
		if e.name == "authorization" {
			svc.Authz = p.authorization(e.val, e.path)
			continue
		}
		if e.name == "domains" {
			for i, d := range p.list(e.val, e.path, maxDomains) {
				dp := fmt.Sprintf("%s[%d]", e.path, i)
				s := p.domain(d, dp, p.str(d, dp))
				if slices.Contains(svc.Domains, s) {
					p.failf(d, dp, "duplicate domain %q", s)
				}
				svc.Domains = append(svc.Domains, s)
				domainNodes = append(domainNodes, d)
			}
		}
	}
	def := DefaultRoute()
	def.Split, def.Timeouts, def.RateLimit = st.split, st.timeouts, st.rateLimit
	def.Affinity, def.Mirror, def.Fault = st.affinity, st.mirror, st.fault
	if st.retries != nil {
		def.Retries = *st.retries
	}
	if st.concurrency != nil {
		def.Concurrency = *st.concurrency
	}
	if st.outlier != nil {
		def.Outlier = *st.outlier
	}
	if st.failover != nil {
		def.Failover = *st.failover
	}
	svc.Default = def
	if e, ok := all["routes"]; ok {
		names := map[string]int{}
		catchAll := -1
		for i, rn := range p.list(e.val, e.path, maxRoutes) {
			rp := fmt.Sprintf("%s[%d]", e.path, i)
			if catchAll >= 0 {
				p.failf(rn, rp, "unreachable: %s[%d] matches every request", e.path, catchAll)
			}
			r, nameNode := p.route(rn, rp, i, def)
			if j, dup := names[r.Name]; dup {
				p.failf(nameNode, rp, "route name %q is already the name of routes[%d]", r.Name, j)
			}
			names[r.Name] = i
			if r.match.all() {
				catchAll = i
			}
			svc.Routes = append(svc.Routes, r)
		}
	}
	return svc, domainNodes
}

// route reads one rule: a copy of def with what the rule sets.
func (p *parser) route(n *yaml.Node, path string, index int, def *Route) (*Route, *yaml.Node) {
	known := append([]string{"name", "match", "subset"}, settingFields...)
	es := p.mapping(n, path, known...)
	all := byName(es)
	r := *def
	r.Name = strconv.Itoa(index)
	nameNode := n
	var st settings
	for _, e := range es {
		if slices.Contains(serviceOnly, e.name) {
			p.failf(e.key, e.path, "%s is a setting of the service's instances: set it on the service, not on a route", e.name)
		}
		if p.setting(e, &st, all) {
			continue
		}
		switch e.name {
		case "name":
			nameNode = e.val
			r.Name = p.label(e.val, e.path, "route name", p.str(e.val, e.path))
			if r.Name == DefaultRouteName {
				p.failf(e.val, e.path, "route name %q is reserved for the service's own settings", DefaultRouteName)
			}
		case "match":
			r.match = p.match(e.val, e.path)
		case "subset":
			if s, ok := all["split"]; ok {
				p.failf(s.key, s.path, "set subset or split, not both")
			}
			st.subset = p.label(e.val, e.path, "subset", p.str(e.val, e.path))
		}
	}
	switch {
	case st.subset != "":
		r.Subset, r.Split = st.subset, nil
	case st.hasSplit:
		r.Subset, r.Split = "", st.split
	}
	// Timeouts field by field: a rule that sets only total keeps the
	// service's connect timeout.
	if st.timeouts.Connect != 0 {
		r.Timeouts.Connect = st.timeouts.Connect
	}
	if st.timeouts.FirstByte != 0 {
		r.Timeouts.FirstByte = st.timeouts.FirstByte
	}
	if st.timeouts.Total != 0 {
		r.Timeouts.Total = st.timeouts.Total
	}
	if st.timeouts.Idle != 0 {
		r.Timeouts.Idle = st.timeouts.Idle
	}
	// The others as a whole: retries: {attempts: 1} on a rule means one
	// attempt with the default conditions and budget, not the service's.
	if st.retries != nil {
		r.Retries = *st.retries
	}
	if st.rateLimit != nil {
		r.RateLimit = st.rateLimit
	}
	if st.affinity != nil {
		r.Affinity = st.affinity
	}
	if st.mirror != nil {
		r.Mirror = st.mirror
	}
	if st.fault != nil {
		r.Fault = st.fault
	}
	return &r, nameNode
}

func (p *parser) split(n *yaml.Node, path string) []Weight {
	es := p.mapping(n, path)
	if len(es) == 0 {
		p.failf(n, path, "want at least one subset")
	}
	if len(es) > maxSubsets {
		p.failf(n, path, "%d subsets, more than the limit of %d", len(es), maxSubsets)
	}
	ws := make([]Weight, 0, len(es))
	sum := 0
	for _, e := range es {
		w := Weight{Subset: p.label(e.key, path, "subset", e.name), Weight: int(p.integer(e.val, e.path, 0, maxWeight))}
		sum += w.Weight
		ws = append(ws, w)
	}
	if sum == 0 {
		p.failf(n, path, "weights add up to 0: no subset would get any request")
	}
	slices.SortFunc(ws, func(a, b Weight) int { return strings.Compare(a.Subset, b.Subset) })
	return ws
}

func (p *parser) retries(n *yaml.Node, path string) Retries {
	r := defaultRetries
	var baseNode, maxNode *yaml.Node
	for _, e := range p.mapping(n, path, "attempts", "on", "budget", "min-per-second", "backoff", "replay-body") {
		switch e.name {
		case "attempts":
			r.Attempts = int(p.integer(e.val, e.path, 1, 10))
		case "on":
			r.On = 0
			for i, c := range p.list(e.val, e.path, len(retryOnNames)) {
				cp := fmt.Sprintf("%s[%d]", e.path, i)
				s := p.str(c, cp)
				var bit RetryOn
				for _, rn := range retryOnNames {
					if rn.name == s {
						bit = rn.bit
					}
				}
				if bit == 0 {
					p.failf(c, cp, "unknown condition %q (want connect-failure, refused-stream, 502, 503, 504 or timeout)", s)
				}
				if r.On&bit != 0 {
					p.failf(c, cp, "duplicate condition %q", s)
				}
				r.On |= bit
			}
		case "budget":
			r.Budget = p.percent(e.val, e.path, false)
		case "min-per-second":
			r.MinPerSecond = p.number(e.val, e.path, 0, 1e6)
		case "backoff":
			for _, b := range p.mapping(e.val, e.path, "base", "max") {
				d := p.duration(b.val, b.path, maxBackoff)
				if b.name == "base" {
					r.BackoffBase, baseNode = d, b.val
				} else {
					r.BackoffMax, maxNode = d, b.val
				}
			}
			if r.BackoffBase > r.BackoffMax {
				at, field := baseNode, "base"
				if maxNode != nil {
					at, field = maxNode, "max"
				}
				p.failf(at, join(e.path, field), "backoff base %s is above backoff max %s", r.BackoffBase, r.BackoffMax)
			}
		case "replay-body":
			r.ReplayBody = p.size(e.val, e.path, maxReplay)
		}
	}
	return r
}

func (p *parser) rateLimit(n *yaml.Node, path string) *RateLimit {
	rl := &RateLimit{}
	es := p.mapping(n, path, "per-caller", "per-ip", "total", "burst", "global")
	for _, e := range es {
		switch e.name {
		case "per-caller":
			rl.PerCaller = p.rate(e.val, e.path)
		case "per-ip":
			rl.PerIP = p.rate(e.val, e.path)
		case "total":
			rl.Total = p.rate(e.val, e.path)
		case "burst":
			rl.Burst = int(p.integer(e.val, e.path, 1, 1e9))
		case "global":
			rl.Global = p.boolean(e.val, e.path)
		}
	}
	if rl.PerCaller == (Rate{}) && rl.PerIP == (Rate{}) && rl.Total == (Rate{}) {
		p.failf(n, path, "want at least one of per-caller, per-ip or total")
	}
	return rl
}

func (p *parser) concurrency(n *yaml.Node, path string) Concurrency {
	var c Concurrency
	var hardNode *yaml.Node
	for _, e := range p.mapping(n, path, "soft", "hard") {
		v := int(p.integer(e.val, e.path, 1, 1e6))
		if e.name == "soft" {
			c.Soft = v
		} else {
			c.Hard, hardNode = v, e.val
		}
	}
	if c.Soft == 0 && c.Hard == 0 {
		p.failf(n, path, "want soft, hard or both")
	}
	if c.Hard != 0 && c.Soft > c.Hard {
		p.failf(hardNode, join(path, "hard"), "hard limit %d is below soft limit %d", c.Hard, c.Soft)
	}
	return c
}

func (p *parser) outlier(n *yaml.Node, path string) Outlier {
	o := defaultOutlier
	for _, e := range p.mapping(n, path, "consecutive-failures", "ejection", "max-ejected") {
		switch e.name {
		case "consecutive-failures":
			o.ConsecutiveFailures = int(p.integer(e.val, e.path, 1, 1000))
		case "ejection":
			o.Ejection = p.duration(e.val, e.path, maxEjection)
		case "max-ejected":
			o.MaxEjected = p.percent(e.val, e.path, false)
		}
	}
	return o
}

var tokenRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

func (p *parser) affinity(n *yaml.Node, path string) *Affinity {
	es := p.mapping(n, path, "header", "cookie")
	if len(es) != 1 {
		p.failf(n, path, "want exactly one of header or cookie")
	}
	e := es[0]
	s := p.str(e.val, e.path)
	if !tokenRE.MatchString(s) || len(s) > 256 {
		p.failf(e.val, e.path, "%q is not a valid %s name", s, e.name)
	}
	if e.name == "header" {
		return &Affinity{Header: textproto.CanonicalMIMEHeaderKey(s)}
	}
	return &Affinity{Cookie: s}
}

func (p *parser) mirror(n *yaml.Node, path string) *Mirror {
	m := &Mirror{Fraction: -1}
	for _, e := range p.mapping(n, path, "subset", "percent") {
		if e.name == "subset" {
			m.Subset = p.label(e.val, e.path, "subset", p.str(e.val, e.path))
		} else {
			m.Fraction = p.percent(e.val, e.path, true)
		}
	}
	if m.Subset == "" || m.Fraction < 0 {
		p.failf(n, path, "want subset and percent")
	}
	return m
}

func (p *parser) fault(n *yaml.Node, path string) *Fault {
	f := &Fault{}
	for _, e := range p.mapping(n, path, "delay", "abort") {
		frac := -1.0
		if e.name == "delay" {
			d := &FaultDelay{}
			for _, g := range p.mapping(e.val, e.path, "percent", "duration") {
				if g.name == "percent" {
					frac = p.percent(g.val, g.path, true)
				} else {
					d.Duration = p.duration(g.val, g.path, maxDelay)
				}
			}
			if frac < 0 || d.Duration == 0 {
				p.failf(e.val, e.path, "want percent and duration")
			}
			d.Fraction, f.Delay = frac, d
		} else {
			a := &FaultAbort{}
			for _, g := range p.mapping(e.val, e.path, "percent", "status") {
				if g.name == "percent" {
					frac = p.percent(g.val, g.path, true)
				} else {
					a.Status = int(p.integer(g.val, g.path, 200, 599))
				}
			}
			if frac < 0 || a.Status == 0 {
				p.failf(e.val, e.path, "want percent and status")
			}
			a.Fraction, f.Abort = frac, a
		}
	}
	if f.Delay == nil && f.Abort == nil {
		p.failf(n, path, "want delay, abort or both")
	}
	return f
}
