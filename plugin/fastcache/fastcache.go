// Package fastcache is CoreDNS's cache with a fast path in front: cache hits
// for plain UDP queries are answered from stored wire bytes by the goroutine
// that read the packet, without unpacking the query or running the plugin
// chain. Everything else comes from CoreDNS's own cache plugin, configured
// by the same options, so that the Corefile means what it says and the
// answers are CoreDNS's; with the options the fast path follows
// (storeMisses), the answers it stores are stored there only, and the
// fast path's store answers for them as the cache would (storeonce.go).
package fastcache

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/dnsutil"
	"github.com/coredns/coredns/plugin/pkg/response"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/internal/coro"
)

// FastCache is the plugin handler.
type FastCache struct {
	Next plugin.Handler

	// cache is CoreDNS's cache plugin, whose next handler is an upstream
	// marker in front of Next.
	cache plugin.Handler
	// up is the upstream marker, the cache's next handler.
	up    upstream
	opts  options
	store *store
	// denial, with storeMisses, holds the denials (NXDOMAIN, NODATA) as
	// store holds the answers, each up to the cache's capacity for them:
	// the fast path's stores are then the cache of what they hold (see
	// storeonce.go). Without, store holds both, and nil.
	denial *store
	// zone is the server block's zone, the one the fast path routes by;
	// cfg the block's configuration.
	zone string
	wire string // zone's lowercased wire name
	cfg  *dnsserver.Config
	// cacheZones and view are the zones and view labels of CoreDNS's
	// cache's metrics for the block.
	cacheZones, view string
	// fast is set at start-up when the plugins before this one in the
	// chain have no effect on a cache hit (see eligible).
	fast atomic.Bool
	// inline is set at start-up when the fast path's store is the cache of
	// what it holds (storeMisses) and only spread (and loop) run after this
	// one: a miss may go on in the fast path's reader until spread parks
	// it (see ServeDNS).
	inline bool
	// maxUDP is the bufsize plugin's cap on the client's advertised UDP
	// buffer when it runs before this one (0: none): the fast path caps it
	// the same way.
	maxUDP int
	// limit is misslimit's limiter when it runs before this one: the fast
	// path's reader applies it to the queries it leaves to the chain.
	limit *limiter
	m     *zoneMetrics
}

// Name implements plugin.Handler.
func (f *FastCache) Name() string { return pluginName }

// ServeDNS implements plugin.Handler. It hands the query to CoreDNS's cache;
// when that answers from its cache (a hit, fresh, not served stale), the
// answer it wrote is stored for the fast path; with storeMisses, when it
// stores the upstream's answer, the answer it will give from its cache
// (hitAnswer) is.
func (f *FastCache) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	// Run as a coroutine of the fast path's reader (package coro), the
	// query goes on in it only on a miss of both caches with nothing but
	// spread after: what else the cache does may wait. The coroutine is
	// hidden from the chain below, whose goroutines (prefetches, refreshes)
	// share ctx; upstream hands it to spread for the cache's miss alone.
	co := coro.FromContext(ctx)
	if co != nil {
		ctx = coro.NewContext(ctx, nil)
		if !f.inline {
			co.Detach()
			co = nil
		}
	}
	if !f.fast.Load() {
		return f.cache.ServeDNS(context.WithValue(ctx, lookupKey{}, &lookup{client: w}), w, r)
	}
	wire, err := r.Pack()
	if err != nil {
		return f.cache.ServeDNS(context.WithValue(ctx, lookupKey{}, &lookup{client: w}), w, r)
	}
	var (
		q   query
		buf [maxKey]byte
	)
	now := f.store.now()
	if !parseQuery(wire, buf[:], &q) {
		return f.cache.ServeDNS(context.WithValue(ctx, lookupKey{}, &lookup{client: w}), w, r)
	}
	if f.denial != nil {
		e := f.lookup(q.key, now, int64(f.opts.staleUpTo))
		exact := e != nil
		if e == nil && !q.do {
			// CoreDNS's cache keys on the DO bit, not on EDNS: an answer
			// stored for a query with EDNS answers one without, and the
			// other way round (the server sizes it for each).
			var other [maxKey]byte
			k := other[:copy(other[:], q.key)]
			k[len(k)-1] ^= keyEDNS
			e = f.lookup(k, now, int64(f.opts.staleUpTo))
		}
		if e != nil {
			if co != nil && now >= e.until {
				co.Detach() // served stale: it may wait for the upstream
			}
			return f.fromStore(ctx, w, r, q.key, e, now, exact)
		}
	} else if f.store.get(q.key, now) != nil {
		return f.cache.ServeDNS(context.WithValue(ctx, lookupKey{}, &lookup{client: w}), w, r)
	}
	if co != nil && largeAnswers.mayHold(f.zone, r) {
		// CoreDNS's cache may hold the name (what the fast path's store
		// cannot): served stale, it waits for the upstream.
		co.Detach()
		co = nil
	}
	cw := &captureWriter{ResponseWriter: w}
	lk := &lookup{client: cw, w: w, r: r, key: q.key, co: co}
	rc, err := f.cache.ServeDNS(context.WithValue(ctx, lookupKey{}, lk), cw, r)
	if cw.msg != nil && !lk.upstream.Load() {
		f.capture(q.key, cw.msg, now, false)
	} else {
		f.storeAfter(lk)
	}
	return rc, err
}

// storeAfter stores, with storeMisses, the answer the cache stored for
// lk's request, unless storeOnce stored it or found it cannot: the
// upstream's answer came through a writer of the cache's other than its
// miss writer's.
func (f *FastCache) storeAfter(lk *lookup) {
	if !f.opts.storeMisses || lk.tried.Load() {
		return
	}
	if a := lk.answer.Load(); a != nil {
		if m, _ := f.hitAnswer(lk.w, lk.r, a); m != nil {
			// Aged from now, as the cache's item is, not from before the
			// upstream answered.
			f.capture(lk.key, m, f.store.now(), true)
		}
	}
}

// hitAnswer returns the answer CoreDNS's cache gives to r, as CoreDNS's
// server sends it to w (scrubbed), once it has stored a, the upstream's
// answer to r; nil when the cache does not store a (or may not: a
// delegation, SERVFAIL, a truncated answer, one that does not match the
// question). It follows the cache's WriteMsg and its item's toMsg: the TTL
// of every record the minimal TTL of the message within the cache's
// bounds, the authoritative bit set, AD only when DO or AD was asked, no
// OPT but the one the server adds for the client. TestDifferential
// compares its answers with the cache's.
func (f *FastCache) hitAnswer(w dns.ResponseWriter, r, a *dns.Msg) (*dns.Msg, uint32) {
	state := request.Request{W: w, Req: r}
	if len(a.Question) != 1 || !state.Match(a) {
		return nil, 0
	}
	mt, ok := cacheType(a, time.Now().UTC())
	if !ok {
		return nil, 0
	}
	if mt != response.NoError && mt != response.NameError && mt != response.NoData {
		return nil, 0
	}
	ttl := f.storedTTL(a, mt)
	if ttl == 0 {
		return nil, 0
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.AuthenticatedData = a.AuthenticatedData && (state.Do() || r.AuthenticatedData)
	m.RecursionAvailable = a.RecursionAvailable
	m.Rcode = a.Rcode
	m.Answer, m.Ns, m.Extra = withTTL(a.Answer, ttl), withTTL(a.Ns, ttl), withTTL(a.Extra, ttl)
	if err := request.NewScrubWriter(r, discardWriter{w}).WriteMsg(m); err != nil {
		return nil, 0
	}
	return m, ttl
}

// storedTTL is the TTL CoreDNS's cache stores answer a of type mt with
// (an answer or a denial; not SERVFAIL), within its bounds.
func (f *FastCache) storedTTL(a *dns.Msg, mt response.Type) uint32 {
	var d time.Duration
	switch mt {
	case response.NameError, response.NoData:
		d = min(max(dnsutil.MinimalTTLWithMaximum(a, mt, f.opts.denialTTL), f.opts.minDenialTTL), f.opts.denialTTL)
	default:
		d = min(max(dnsutil.MinimalTTLWithMaximum(a, mt, f.opts.successTTL), f.opts.minSuccessTTL), f.opts.successTTL)
	}
	return uint32(d / time.Second)
}

// withTTL copies rrs but OPT records, with TTL ttl.
func withTTL(rrs []dns.RR, ttl uint32) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		out[i] = dns.Copy(rr)
	}
	return setTTL(out, ttl)
}

// discardWriter is w without its way to the client: the scrub writer in
// front of it prepares a message as it would go to w's client.
type discardWriter struct{ dns.ResponseWriter }

func (discardWriter) WriteMsg(*dns.Msg) error { return nil }

// capture stores m, the answer CoreDNS's cache wrote for a hit (or would
// write, fresh: hitAnswer), as it went to the client (scrubbed: OPT record
// added, possibly truncated), unless it cannot be served again as is:
// truncated, with no record to age, or served stale (TTL 0, or, unless m
// is known fresh, the configured stale TTL).
func (f *FastCache) capture(key []byte, m *dns.Msg, now int64, fresh bool) bool {
	if m.Truncated || len(m.Question) != 1 {
		return false
	}
	// Packed uncompressed, as CoreDNS sends every answer that fits: the
	// question's case is patched per query and must not leak into the
	// records' owner names through compression pointers.
	compress := m.Compress
	m.Compress = false
	resp, err := m.Pack()
	m.Compress = compress
	if err != nil || len(resp) > maxFastAnswer {
		return false
	}
	l, err := parseLayout(resp)
	if err != nil || l.ttl == 0 || (!fresh && f.opts.staleTTL > 0 && l.ttl == f.opts.staleTTL) {
		return false
	}
	life := l.ttl
	if f.opts.prefetch > 0 {
		// Leave the last part of the TTL to the cache, whose hits count
		// towards prefetching.
		life -= l.ttl * uint32(f.opts.percentage) / 100
	}
	if life == 0 {
		return false
	}
	e := newEntry(key, resp, l, now, now+int64(life)*int64(time.Second))
	if e == nil {
		return false
	}
	st := f.store
	if f.denial != nil {
		// The newest answer for the key replaces the other kind's.
		if mt, _ := cacheType(m, time.Now().UTC()); mt == response.NameError || mt == response.NoData {
			st, e.denial = f.denial, true
			f.store.delete(key)
		} else {
			f.denial.delete(key)
		}
	}
	st.put(e)
	if f.m != nil {
		f.m.size.Set(float64(f.store.len()))
		if f.denial != nil {
			f.m.denials.Set(float64(f.denial.len()))
		}
	}
	return true
}

// lookup returns the stored answer for key fresh at now, or expired less
// than grace ago.
func (f *FastCache) lookup(key []byte, now, grace int64) *entry {
	h := f.store.hash(key)
	if e := f.store.getHashed(h, key, now, grace); e != nil {
		return e
	}
	if f.denial != nil {
		return f.denial.getHashed(h, key, now, grace)
	}
	return nil
}

// maxFastAnswer is the largest answer the fast path sends: above it CoreDNS
// compresses UDP answers to avoid fragmentation (1220 bytes over IPv6).
const maxFastAnswer = 1220

// captureWriter remembers the message written through it.
type captureWriter struct {
	dns.ResponseWriter
	msg *dns.Msg
}

func (c *captureWriter) WriteMsg(m *dns.Msg) error {
	err := c.ResponseWriter.WriteMsg(m)
	if err == nil {
		c.msg = m
	}
	return err
}

// lookup is what fastcache learns of one request to CoreDNS's cache.
type lookup struct {
	// client is the writer CoreDNS's cache was given: the way to the
	// client past the cache (budgetWriter).
	client dns.ResponseWriter
	// The key of the request in the fast path's store, and the request
	// and the writer to its client (for its size and DO bit): with
	// storeMisses an upstream answer the fast path stores is stored there
	// only (storeOnce), and tried set.
	key   []byte
	r     *dns.Msg
	w     dns.ResponseWriter
	tried atomic.Bool
	// upstream is set when the cache passed the request on (a miss, a
	// refresh, a prefetch).
	upstream atomic.Bool
	// answer is the upstream's answer the cache was given to store.
	answer atomic.Pointer[dns.Msg]
	// co is the coroutine the request runs in, for spread when the cache
	// passes a miss on in it (nil: none, or it may not park).
	co *coro.Co
}

type lookupKey struct{}

// upstream sits between CoreDNS's cache and the rest of the chain and marks
// the request as a miss when the cache passes it on, and counts large
// answers against the budget (budgetWriter).
type upstream struct {
	next plugin.Handler
	f    *FastCache
}

func (u upstream) Name() string { return pluginName }

func (u upstream) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	lk, _ := ctx.Value(lookupKey{}).(*lookup)
	if lk != nil {
		lk.upstream.Store(true)
		if lk.co != nil && lk.client != nil && innerWriter(w) == lk.client {
			// The cache's miss of the request, in its goroutine: what
			// else reaches here (prefetches, refreshes) runs elsewhere.
			ctx = coro.NewContext(ctx, lk.co)
		}
	}
	w = &budgetWriter{ResponseWriter: w, f: u.f, req: r, lk: lk}
	if u.next == nil {
		return plugin.NextOrFailure(pluginName, nil, ctx, w, r)
	}
	return u.next.ServeDNS(ctx, w, r)
}
