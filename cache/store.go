package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of the Store's fields.
const (
	DefaultMaxBytes       = 256 << 20
	DefaultMaxObject      = 8 << 20
	DefaultCollapseWait   = 5 * time.Second
	DefaultMaxHeuristic   = 24 * time.Hour
	DefaultKeepStale      = time.Hour
	DefaultRefreshTimeout = 30 * time.Second
	DefaultName           = "meshd"
)

// Store is an RFC 9111 shared HTTP cache. Set the fields, call Validate
// (optional) and Start, wrap handlers with Middleware, and Close when the
// servers using it have shut down. Fields must not change after Start.
type Store struct {
	// MaxBytes bounds the cache: the sum of every entry's cost (key,
	// header and body bytes plus a fixed overhead). Default 256 MiB.
	MaxBytes int64
	// MaxObject is the largest body stored. A larger response streams
	// through untouched and is never buffered whole. Default 8 MiB.
	MaxObject int64
	// Now is the clock used for every freshness and age computation.
	// Default time.Now.
	Now func() time.Time
	// Logger receives store errors and background refresh failures.
	// Default slog.Default().
	Logger *slog.Logger
	// CollapseWait bounds how long a request waits for a concurrent
	// request for the same URL to bring a response, before it goes
	// upstream itself. Default 5 s.
	CollapseWait time.Duration
	// Scheme returns the scheme a request was received with, which is
	// part of the cache key. Default: "https" when r.TLS is set, else
	// "http". Set it to read X-Forwarded-Proto only where that header
	// comes from a trusted hop.
	Scheme func(r *http.Request) string
	// MaxHeuristic caps heuristic freshness (RFC 9111 §4.2.2), which is
	// 10% of the time since Last-Modified. Default 24 h.
	MaxHeuristic time.Duration
	// KeepStale is how long an entry is kept after it can no longer be
	// served stale, for revalidation with a conditional request. It
	// bounds the ristretto TTL. Default 1 h.
	KeepStale time.Duration
	// RefreshTimeout bounds a background revalidation started by
	// stale-while-revalidate. Default 30 s.
	RefreshTimeout time.Duration
	// Name is the cache's identifier in Cache-Status (RFC 9211 §2).
	// Default "meshd".
	Name string
	// StoreSetCookie lets a response with Set-Cookie be stored when it
	// is public or names Set-Cookie in private="..." or no-cache="...",
	// and then without its Set-Cookie field (the client that caused the
	// fetch still gets its cookie). Default false: a response with
	// Set-Cookie is never stored, as nginx and Varnish do by default,
	// because such a response is often made for the one user it signs in.
	StoreSetCookie bool

	st atomic.Pointer[state]
}

// errStarted is returned by Start on a Store that was already started.
var errStarted = errors.New("cache: store already started")

// Validate reports the first invalid field. Zero values mean the defaults.
func (s *Store) Validate() error {
	switch {
	case s.MaxBytes < 0:
		return fmt.Errorf("cache: MaxBytes %d: must not be negative", s.MaxBytes)
	case s.MaxObject < 0:
		return fmt.Errorf("cache: MaxObject %d: must not be negative", s.MaxObject)
	case s.CollapseWait < 0:
		return fmt.Errorf("cache: CollapseWait %s: must not be negative", s.CollapseWait)
	case s.MaxHeuristic < 0:
		return fmt.Errorf("cache: MaxHeuristic %s: must not be negative", s.MaxHeuristic)
	case s.KeepStale < 0:
		return fmt.Errorf("cache: KeepStale %s: must not be negative", s.KeepStale)
	case s.RefreshTimeout < 0:
		return fmt.Errorf("cache: RefreshTimeout %s: must not be negative", s.RefreshTimeout)
	case s.Name != "" && !validToken(s.Name):
		return fmt.Errorf("cache: Name %q: must be a token (RFC 9211 §2)", s.Name)
	}
	maxBytes, maxObject := or(s.MaxBytes, DefaultMaxBytes), or(s.MaxObject, DefaultMaxObject)
	if maxObject > maxBytes {
		return fmt.Errorf("cache: MaxObject %d exceeds MaxBytes %d", maxObject, maxBytes)
	}
	return nil
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Start validates the fields and creates the cache. The context bounds
// background revalidations; Close stops them too.
func (s *Store) Start(ctx context.Context) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if s.st.Load() != nil {
		return errStarted
	}
	st := &state{
		maxObject:      or(s.MaxObject, DefaultMaxObject),
		now:            s.Now,
		log:            s.Logger,
		collapseWait:   or(s.CollapseWait, DefaultCollapseWait),
		scheme:         s.Scheme,
		maxHeuristic:   or(s.MaxHeuristic, DefaultMaxHeuristic),
		keepStale:      or(s.KeepStale, DefaultKeepStale),
		refreshTimeout: or(s.RefreshTimeout, DefaultRefreshTimeout),
		name:           or(s.Name, DefaultName),
		setCookie:      s.StoreSetCookie,
		seed:           maphash.MakeSeed(),
		m:              newMetrics(),
		flights:        make(map[string]*flight),
		idx: index{
			byPrimary: make(map[string]map[*entry]struct{}),
			byTag:     make(map[string]map[*entry]struct{}),
		},
	}
	if st.now == nil {
		st.now = time.Now
	}
	if st.log == nil {
		st.log = slog.Default()
	}
	if st.scheme == nil {
		st.scheme = defaultScheme
	}
	st.hitStatus = []string{st.name + "; hit"}
	maxBytes := or(s.MaxBytes, DefaultMaxBytes)
	c, err := ristretto.NewCache(&ristretto.Config[uint64, *entry]{
		// About ten counters per expected entry at 10 KiB per entry.
		NumCounters: max(maxBytes/1024, 1000),
		MaxCost:     maxBytes,
		BufferItems: 64,
		// Costs are computed from the entry itself.
		IgnoreInternalCost: true,
		OnEvict: func(it *ristretto.Item[*entry]) {
			if !st.closing.Load() {
				st.m.evictions.Inc()
			}
		},
		OnReject: func(it *ristretto.Item[*entry]) { st.m.rejections.Inc() },
		// OnExit sees every value leaving the cache (evicted, rejected,
		// replaced, deleted, expired): the one place that keeps the index
		// and the gauges honest.
		OnExit: func(e *entry) {
			if e != nil {
				st.release(e)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("cache: create ristretto cache: %w", err)
	}
	st.c = c
	st.ctx, st.cancel = context.WithCancel(ctx)
	st.m.bind(st)
	if !s.st.CompareAndSwap(nil, st) {
		st.cancel()
		c.Close()
		return errStarted
	}
	st.wg.Add(1)
	go st.sweeper()
	return nil
}

// sweepEvery is how often entries past their usefulness are removed.
const sweepEvery = time.Minute

func (st *state) sweeper() {
	defer st.wg.Done()
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-st.ctx.Done():
			return
		case <-t.C:
			st.sweep()
		}
	}
}

// sweep removes entries past until: too stale to serve, and kept past
// KeepStale for revalidation. It returns how many it removed.
func (st *state) sweep() int {
	now := st.now()
	var dead []*entry
	st.idx.mu.Lock()
	for _, set := range st.idx.byPrimary {
		for e := range set {
			if e.until.Before(now) {
				dead = append(dead, e)
			}
		}
	}
	st.idx.mu.Unlock()
	n := 0
	for _, e := range dead {
		l, ok := st.acquire()
		if !ok {
			break
		}
		// Delete only if e is still what the key holds.
		if cur, found := st.c.Get(st.hashString(e.key)); found && cur == e {
			st.c.Del(st.hashString(e.key))
			n++
		}
		l.n.Add(-1)
		st.release(e)
	}
	return n
}

func defaultScheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

// Close stops background revalidations, waits for requests to stop
// touching the store, and frees it. Requests after Close pass through to
// the wrapped handler. Close is idempotent.
func (s *Store) Close() error {
	st := s.st.Load()
	if st == nil {
		return nil
	}
	st.bgMu.Lock()
	first := st.closing.CompareAndSwap(false, true)
	st.bgMu.Unlock()
	if !first {
		return nil
	}
	st.cancel()
	st.wg.Wait()
	// Bounded wait for leases: a lease covers only ristretto calls, which
	// never block for long.
	deadline := time.Now().Add(10 * time.Second)
	for st.leases() != 0 {
		if time.Now().After(deadline) {
			return errors.New("cache: close: requests still inside the store after 10s")
		}
		time.Sleep(time.Millisecond)
	}
	st.c.Close()
	return nil
}

// Collectors returns the Prometheus collectors of the store, for the
// caller to register. It returns nil before Start.
func (s *Store) Collectors() []prometheus.Collector {
	st := s.st.Load()
	if st == nil {
		return nil
	}
	return st.m.collectors()
}

// state is what Start creates; the request path reads it through one
// atomic load.
type state struct {
	c              *ristretto.Cache[uint64, *entry]
	seed           maphash.Seed
	maxObject      int64
	now            func() time.Time
	log            *slog.Logger
	collapseWait   time.Duration
	scheme         func(*http.Request) string
	maxHeuristic   time.Duration
	keepStale      time.Duration
	refreshTimeout time.Duration
	name           string
	setCookie      bool // Store.StoreSetCookie
	hitStatus      []string
	m              *metrics

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup // background revalidations
	bgMu    sync.Mutex     // orders wg.Add against Close's wg.Wait
	closing atomic.Bool
	lease   [16]paddedCounter

	// gen changes on every purge; a fetch that started before a purge
	// does not store its response.
	gen atomic.Uint64
	// inval records invalidations (RFC 9111 §4.4): a fetch that started
	// before an invalidation of its own URL does not store its response,
	// while fetches of other URLs are not disturbed (a global counter
	// would keep a site that receives POSTs from storing anything).
	inval invalLog

	flightMu sync.Mutex
	flights  map[string]*flight
	waiting  atomic.Int64 // requests waiting for a flight, for tests

	idx index
}

// mark is what a fetch records when it starts, to tell at the end
// whether a purge or an invalidation of its URL happened meanwhile.
type mark struct {
	gen, inval uint64
}

// markNow returns the mark of a fetch starting now.
func (st *state) markNow() mark {
	return mark{gen: st.gen.Load(), inval: st.inval.seq.Load()}
}

// unchanged reports whether nothing since m forbids storing a response
// for primary: no purge, and no invalidation of primary. Invalidations
// of other URLs do not count, exactly: a fetch that lost its store to an
// unrelated POST made the client's next request a miss.
func (st *state) unchanged(m mark, primary string) bool {
	if st.gen.Load() != m.gen {
		return false
	}
	return !st.inval.since(m.inval, st.hashString(primary))
}

// invalRing is how many recent invalidations are remembered. A fetch
// that outlives more of them than that does not store its response.
const invalRing = 1024

// invalLog remembers the primary key hashes of recent invalidations, in
// order. Reading it costs one atomic load while nothing was invalidated.
type invalLog struct {
	seq  atomic.Uint64 // invalidations so far
	mu   sync.Mutex
	ring [invalRing]uint64 // ring[i%invalRing]: hash of invalidation i
}

func (l *invalLog) add(h uint64) {
	l.mu.Lock()
	n := l.seq.Load()
	l.ring[n%invalRing] = h
	l.seq.Store(n + 1)
	l.mu.Unlock()
}

// since reports whether h was invalidated after invalidation number
// start, or whether too many invalidations happened to tell.
func (l *invalLog) since(start, h uint64) bool {
	if l.seq.Load() == start {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	end := l.seq.Load()
	if end-start > invalRing {
		return true
	}
	for i := start; i != end; i++ {
		if l.ring[i%invalRing] == h {
			return true
		}
	}
	return false
}

type paddedCounter struct {
	n atomic.Int64
	_ [56]byte
}

// acquire takes a lease on the ristretto cache, which must not be used
// concurrently with its Close. Leases are spread over padded counters so
// that concurrent hits do not contend on one cache line.
func (st *state) acquire() (*paddedCounter, bool) {
	p := &st.lease[rand.Uint32()&15]
	p.n.Add(1)
	if st.closing.Load() {
		p.n.Add(-1)
		return nil, false
	}
	return p, true
}

func (st *state) leases() int64 {
	var n int64
	for i := range st.lease {
		n += st.lease[i].n.Load()
	}
	return n
}

func (st *state) hash(key []byte) uint64 { return maphash.Bytes(st.seed, key) }

func (st *state) hashString(key string) uint64 { return maphash.String(st.seed, key) }

// get returns the entry stored under key, comparing the full key because
// ristretto keeps only its hash.
func (st *state) get(key []byte) *entry {
	e, ok := st.c.Get(st.hash(key))
	if !ok || e == nil || e.key != string(key) {
		return nil
	}
	return e
}

// set stores e. A Set that ristretto drops is fine: the response being
// served does not depend on it.
func (st *state) set(e *entry) bool {
	st.idx.add(e)
	st.m.objects.Add(boolInt(!e.node))
	st.m.bytes.Add(e.cost)
	l, ok := st.acquire()
	if ok {
		// No ristretto TTL: its Get then reads the clock on every hit
		// (a quarter of a hit's cost on a VM without a vDSO clock).
		// sweep expires entries instead.
		ok = st.c.Set(st.hashString(e.key), e, e.cost)
		l.n.Add(-1)
	}
	if !ok {
		st.m.dropped.Inc()
		st.release(e)
		return false
	}
	if !e.node {
		st.m.stores.Inc()
	}
	return true
}

// settle waits until buffered Sets are applied, so that a request that
// arrives after a collapsed fetch finds its entry.
func (st *state) settle() {
	if l, ok := st.acquire(); ok {
		st.c.Wait()
		l.n.Add(-1)
	}
}

func (st *state) del(key string) {
	if l, ok := st.acquire(); ok {
		st.c.Del(st.hashString(key))
		l.n.Add(-1)
	}
}

// release takes e out of the index and gauges, once.
func (st *state) release(e *entry) {
	if !e.live.CompareAndSwap(true, false) {
		return
	}
	st.idx.remove(e)
	st.m.objects.Add(-boolInt(!e.node))
	st.m.bytes.Add(-e.cost)
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// index maps URLs and tags to stored entries for purges. ristretto keeps
// only hashes, so it cannot answer "which keys start with this prefix".
// It is touched on store, exit and purge, never on a hit.
type index struct {
	mu        sync.Mutex
	byPrimary map[string]map[*entry]struct{}
	byTag     map[string]map[*entry]struct{}
}

func (x *index) add(e *entry) {
	e.live.Store(true)
	x.mu.Lock()
	defer x.mu.Unlock()
	addTo(x.byPrimary, e.primary, e)
	for _, t := range e.tags {
		addTo(x.byTag, t, e)
	}
}

func (x *index) remove(e *entry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	removeFrom(x.byPrimary, e.primary, e)
	for _, t := range e.tags {
		removeFrom(x.byTag, t, e)
	}
}

func addTo(m map[string]map[*entry]struct{}, k string, e *entry) {
	s := m[k]
	if s == nil {
		s = make(map[*entry]struct{})
		m[k] = s
	}
	s[e] = struct{}{}
}

func removeFrom(m map[string]map[*entry]struct{}, k string, e *entry) {
	if s := m[k]; s != nil {
		delete(s, e)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

// PurgeURL removes every stored response for the URL (all its Vary
// variants) and returns how many were removed. The URL is matched after
// NormalizeURL; one that does not normalize removes nothing.
func (s *Store) PurgeURL(u string) int {
	key, err := NormalizeURL(u)
	if err != nil {
		return 0
	}
	return s.purge(func(x *index) []*entry { return collect(x.byPrimary[key], nil) })
}

// PurgePrefix removes every stored response whose URL starts with
// prefix. A prefix with a scheme ("https://example.com/img/") matches
// that scheme only; one without ("example.com/img/") matches http and
// https. An empty prefix removes nothing.
func (s *Store) PurgePrefix(prefix string) int {
	if prefix == "" {
		return 0
	}
	withScheme := strings.Contains(prefix, "://")
	if withScheme {
		// Normalize scheme and host case as keys have them.
		i := strings.Index(prefix, "://")
		rest := prefix[i+3:]
		j := strings.IndexAny(rest, "/?")
		if j < 0 {
			j = len(rest)
		}
		prefix = strings.ToLower(prefix[:i+3+j]) + rest[j:]
	} else {
		j := strings.IndexAny(prefix, "/?")
		if j < 0 {
			j = len(prefix)
		}
		prefix = strings.ToLower(prefix[:j]) + prefix[j:]
	}
	return s.purge(func(x *index) []*entry {
		var out []*entry
		for k, set := range x.byPrimary {
			u := k
			if !withScheme {
				u = k[strings.Index(k, "://")+3:]
			}
			if strings.HasPrefix(u, prefix) {
				out = collect(set, out)
			}
		}
		return out
	})
}

// PurgeTag removes every stored response that carried tag in Cache-Tag
// or Surrogate-Key.
func (s *Store) PurgeTag(tag string) int {
	if tag == "" {
		return 0
	}
	return s.purge(func(x *index) []*entry { return collect(x.byTag[tag], nil) })
}

func collect(set map[*entry]struct{}, out []*entry) []*entry {
	for e := range set {
		out = append(out, e)
	}
	return out
}

// purge removes the entries pick selects. ristretto is called only after
// the index lock is released: Del hands work to ristretto's goroutine,
// whose OnExit takes the same lock.
func (s *Store) purge(pick func(*index) []*entry) int {
	st := s.st.Load()
	if st == nil || st.closing.Load() {
		return 0
	}
	st.gen.Add(1)
	st.idx.mu.Lock()
	victims := pick(&st.idx)
	st.idx.mu.Unlock()
	n := 0
	for _, e := range victims {
		if !e.node {
			n++
		}
		st.release(e)
		st.del(e.key)
	}
	st.m.purged.Add(float64(n))
	return n
}

// invalidate removes every variant stored for a primary key
// (RFC 9111 §4.4).
func (st *state) invalidate(primary string) {
	st.inval.add(st.hashString(primary))
	st.idx.mu.Lock()
	victims := collect(st.idx.byPrimary[primary], nil)
	st.idx.mu.Unlock()
	for _, e := range victims {
		st.release(e)
		st.del(e.key)
	}
}
