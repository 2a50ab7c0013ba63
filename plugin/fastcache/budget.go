package fastcache

import (
	"math"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// CoreDNS's cache bounds its entries in number, not in bytes; an answer
// over TCP can be 64 KiB, so that a few hundred names with large answers
// could fill the memory limit. fastcache counts every answer larger than
// the UDP cap at its size against one budget for the process: beyond it, a
// new large answer goes to its client without being cached.
const (
	// largeAnswer is the size above which an answer counts against the
	// budget: smaller ones are bounded by the caches' capacities.
	largeAnswer = 1232
	// goCost is what a cached answer costs per byte of its wire form:
	// CoreDNS's cache holds it as records, Go values (about twice the wire
	// size for the large TXT or A sets that make large answers).
	goCost = 2
	// itemCost is what CoreDNS's cache item costs besides its records:
	// the item, its frequency counter, its place in the shard's map.
	itemCost = 512
	// defaultBudget is the budget when Go has no soft memory limit.
	defaultBudget = 64 << 20
	// sweepEvery bounds how often a full budget is swept for entries past
	// their retention.
	sweepEvery = time.Second
)

// budget is what large answers may hold in CoreDNS's caches, and what they
// are held for: an entry is counted until it is replaced or its retention
// (the cache's longest TTL and serve_stale period) has passed, whether or
// not the cache evicted it sooner, so that the count never falls short.
type budget struct {
	mu        sync.Mutex
	limit     int64
	used      int64
	held      map[string]charge
	lastSweep time.Time
	// n is len(held), for mayHold without the lock.
	n atomic.Int64
}

type charge struct {
	bytes int64
	until time.Time
}

// largeAnswers is the process's budget, sized at fastcache's first setup.
var largeAnswers = &budget{limit: defaultBudget, held: map[string]charge{}}

// budgetFor is an eighth of Go's soft memory limit (set by the agent from
// the container's limit: about 11 % of it), or defaultBudget without one.
func budgetFor(soft int64) int64 {
	if soft <= 0 || soft == math.MaxInt64 {
		return defaultBudget
	}
	return soft / 8
}

// size sets the budget from Go's current soft memory limit.
func (b *budget) size() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.limit = budgetFor(debug.SetMemoryLimit(-1))
}

// admit counts an answer of n bytes (wire) under key, held until until,
// and reports whether it fits. An answer for a key already counted
// replaces it and is always admitted: the cache is refreshing an entry it
// holds (a prefetch, serve_stale), which has to see the answer; the budget
// is then over by at most the difference.
func (b *budget) admit(key string, n int, now, until time.Time) bool {
	cost := int64(n) * goCost
	if n <= largeAnswer {
		// A small answer's item costs more than its records.
		cost += itemCost
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	defer func() { b.n.Store(int64(len(b.held))) }()
	if c, ok := b.held[key]; ok {
		b.used += cost - c.bytes
		b.held[key] = charge{bytes: cost, until: until}
		return true
	}
	if b.used+cost > b.limit && now.Sub(b.lastSweep) >= sweepEvery {
		b.lastSweep = now
		for k, c := range b.held {
			if !now.Before(c.until) {
				b.used -= c.bytes
				delete(b.held, k)
			}
		}
	}
	if b.used+cost > b.limit {
		return false
	}
	b.held[key] = charge{bytes: cost, until: until}
	b.used += cost
	return true
}

// mayHold reports whether CoreDNS's cache of zone may hold an answer to
// r, with any DO and CD bits: one counted here, until its retention
// passed. (Where the fast path's store is the cache of what it holds, all
// CoreDNS's cache stores is counted.)
func (b *budget) mayHold(zone string, r *dns.Msg) bool {
	if b.n.Load() == 0 {
		return false
	}
	if len(r.Question) != 1 {
		return true
	}
	q := r.Question[0]
	var buf [2*maxName + 8]byte
	k := append(buf[:0], zone...)
	k = append(k, 0)
	for i := 0; i < len(q.Name); i++ {
		c := q.Name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		k = append(k, c)
	}
	k = append(k, byte(q.Qtype>>8), byte(q.Qtype), 0)
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for flags := range byte(4) {
		k[len(k)-1] = flags
		if c, ok := b.held[string(k)]; ok && now.Before(c.until) {
			return true
		}
	}
	return false
}

// inUse returns the bytes counted.
func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// budgetWriter sits between CoreDNS's cache and the upstream: it counts a
// large answer against the budget before the cache stores it, and sends
// one that does not fit to the client past the cache.
type budgetWriter struct {
	dns.ResponseWriter
	f   *FastCache
	req *dns.Msg
	lk  *lookup // the request's, for its client writer
}

func (w *budgetWriter) WriteMsg(m *dns.Msg) error {
	n := m.Len()
	if n <= largeAnswer || len(w.req.Question) != 1 {
		if w.lk != nil && !prefetching(w) {
			if w.f.denial != nil && w.lk.key != nil {
				if ok, err := w.storeOnce(m); ok {
					return err
				}
			}
			// The cache copies m before it changes it.
			w.lk.answer.Store(m)
		}
		// (Without a lookup, fastcache's own refresh of a stored answer:
		// nothing for CoreDNS's cache.)
		if len(w.req.Question) != 1 || w.f.denial == nil || w.lk == nil || !w.cached(m) {
			return w.ResponseWriter.WriteMsg(m)
		}
		// Where the fast path's store is the cache of what it holds
		// (storeOnce), what CoreDNS's cache stores besides counts against
		// the budget whatever its size: the caches' capacities are sized
		// for the fast path's compact entries.
	}
	now := time.Now()
	if largeAnswers.admit(w.key(), n, now, now.Add(w.f.opts.retention)) {
		return w.ResponseWriter.WriteMsg(m)
	}
	if w.lk == nil || w.lk.client == nil {
		// No way to the client past the cache (fastcache always gives one).
		return w.ResponseWriter.WriteMsg(m)
	}
	if w.f.m != nil {
		w.f.m.uncached.Inc()
	}
	if prefetching(w) {
		// A prefetch has no client to answer: nothing is cached, and the
		// entry the cache has expires in its time.
		return nil
	}
	return w.lk.client.WriteMsg(m)
}

// cached reports whether CoreDNS's cache stores m, the answer to w's
// request (cache.go: key).
func (w *budgetWriter) cached(m *dns.Msg) bool {
	state := request.Request{W: w, Req: w.req}
	_, ok := cacheType(m, time.Now().UTC())
	return ok && state.Match(m)
}

// prefetching reports whether w is the writer of one of the cache's
// prefetches: the one request without a client, whose remote address is
// the cache's empty TCP address.
func prefetching(w dns.ResponseWriter) bool {
	a, ok := w.RemoteAddr().(*net.TCPAddr)
	return ok && a.IP == nil && a.Port == 0
}

// key is the cache's key for the request: the name, the type and the DO
// and CD bits (CoreDNS's cache keys on these), under this zone's cache.
func (w *budgetWriter) key() string {
	q := w.req.Question[0]
	var b strings.Builder
	b.WriteString(w.f.zone)
	b.WriteByte(0)
	b.WriteString(strings.ToLower(q.Name))
	b.WriteByte(byte(q.Qtype >> 8))
	b.WriteByte(byte(q.Qtype))
	flags := byte(0)
	if o := w.req.IsEdns0(); o != nil && o.Do() {
		flags |= 1
	}
	if w.req.CheckingDisabled {
		flags |= 2
	}
	b.WriteByte(flags)
	return b.String()
}

// budgetBytes returns the budget.
func (b *budget) budgetBytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limit
}
