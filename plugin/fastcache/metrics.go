package fastcache

import (
	"errors"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/plugin/metrics/vars"
	"github.com/coredns/coredns/plugin/pkg/rcode"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	// hits counts the queries the fast path answered.
	hits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "hits_total",
		Help:      "The count of queries answered by the fast path.",
	}, []string{"zone"})
	// misses counts the queries the fast path looked up and passed on to the
	// plugin chain (not found, expired, or too large for the client).
	misses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "misses_total",
		Help:      "The count of queries the fast path looked up and passed on to the plugin chain.",
	}, []string{"zone"})
	// size is the number of answers the fast path holds.
	size = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "entries",
		Help:      "The number of answers stored for the fast path, by type: success and denial where the fast path's store is the cache of what it holds, all (both) where CoreDNS's cache holds them as well.",
	}, []string{"zone", "type"})

	// uncached counts the large answers sent without being cached, the
	// budget for large answers being full.
	uncached = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "uncached_large_answers_total",
		Help:      "The count of answers sent without being cached, the budget for large answers being full: answers larger than 1232 bytes, and, where fastcache stores answers once, any CoreDNS's cache would hold besides.",
	}, []string{"zone"})
	// largeBytes is what the large answers cached are counted at.
	largeBytes = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "large_answers_bytes",
		Help:      "The bytes counted against the budget for cached answers larger than 1232 bytes.",
	}, func() float64 { return float64(largeAnswers.inUse()) })
	// largeLimit is that budget.
	largeLimit = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "large_answers_budget_bytes",
		Help:      "The budget for cached answers larger than 1232 bytes (an eighth of Go's soft memory limit).",
	}, func() float64 { return float64(largeAnswers.budgetBytes()) })

	// tcpOpen and tcpRefused are the fast path's TCP connections on each
	// address: open now, and closed at once for passing a cap (reason
	// "total" or "client").
	tcpOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "tcp_connections",
		Help:      "The TCP connections open on the fast path's listener.",
	}, []string{"server"})
	tcpRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "tcp_refused_total",
		Help:      "The count of TCP connections closed on accepting them, past the cap on all connections (reason total) or on one client address's (reason client).",
	}, []string{"server", "reason"})

	registerMetrics sync.Once
)

// zoneMetrics are the counters one fastcache updates per query, resolved
// once so that a hit allocates nothing.
type zoneMetrics struct {
	hits, misses, uncached prometheus.Counter
	// size and denials are the stores' sizes (denials nil without a
	// denial store).
	size, denials prometheus.Gauge
	// server is set when the prometheus plugin runs before fastcache: the
	// fast path then counts its answers as the prometheus plugin would.
	server *serverMetrics
}

// registerAll registers the plugin's metrics (once, through registerMetrics).
func registerAll() {
	for _, c := range []prometheus.Collector{hits, misses, size, limitedDrops, uncached, largeBytes, largeLimit, tcpOpen, tcpRefused} {
		_ = prometheus.DefaultRegisterer.Register(c)
	}
}

func newZoneMetrics(cfg *dnsserver.Config, f *FastCache) *zoneMetrics {
	registerMetrics.Do(registerAll)
	m := &zoneMetrics{
		hits:     hits.WithLabelValues(f.zone),
		misses:   misses.WithLabelValues(f.zone),
		uncached: uncached.WithLabelValues(f.zone),
	}
	if f.denial != nil {
		m.size, m.denials = size.WithLabelValues(f.zone, "success"), size.WithLabelValues(f.zone, "denial")
	} else {
		m.size = size.WithLabelValues(f.zone, "all")
	}
	if h, ok := cfg.Handler("prometheus").(*metrics.Metrics); ok && h != nil {
		m.server = &serverMetrics{zone: f.zone, plugin: nextAfter(cfg, "prometheus")}
		// The prometheus plugin labels a query with the longest of its
		// zones that holds the name; zones under this one come from other
		// server blocks sharing its metrics address.
		for _, z := range h.ZoneNames() {
			if z = dns.CanonicalName(z); z != dns.CanonicalName(f.zone) && dns.IsSubDomain(f.zone, z) {
				m.server.under = append(m.server.under, zoneRoute{name: zoneKey(z), label: z})
			}
		}
		slices.SortFunc(m.server.under, func(a, b zoneRoute) int { return len(b.name) - len(a.name) })
	}
	return m
}

// nextAfter is the name of the handler that follows name in cfg's chain:
// the prometheus plugin labels answers with it.
func nextAfter(cfg *dnsserver.Config, name string) string {
	at := slices.Index(dnsserver.Directives, name)
	best, bestAt := "", len(dnsserver.Directives)
	for _, h := range cfg.Handlers() {
		i := slices.Index(dnsserver.Directives, h.Name())
		if i > at && i < bestAt {
			best, bestAt = h.Name(), i
		}
	}
	return best
}

func (m *zoneMetrics) miss() { m.misses.Inc() }

// CoreDNS's cache's counters of hits and of stale answers (plugin/cache's
// metrics.go, the same options): where the fast path's store is the cache
// of what it holds, the answers it gives through the plugin chain are the
// cache's hits, and count there (the fast path's own in hits_total).
var (
	cacheHits = existingCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "cache",
		Name:      "hits_total",
		Help:      "The count of cache hits.",
	}, []string{"server", "type", "zones", "view"})
	cacheServedStale = existingCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "cache",
		Name:      "served_stale_total",
		Help:      "The number of requests served from stale cache entries.",
	}, []string{"server", "zones", "view"})
)

// existingCounter returns the counter CoreDNS's cache registered with
// opts and labels, or registers it.
func existingCounter(opts prometheus.CounterOpts, labels []string) *prometheus.CounterVec {
	v := prometheus.NewCounterVec(opts, labels)
	err := prometheus.DefaultRegisterer.Register(v)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if e, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
			return e
		}
	}
	return v
}

// pending holds the fast path's answers not yet in CoreDNS's request
// metrics: the reading goroutine counts them between two reads, in batches
// of pendingFlush, or once the oldest is flushAfter old (when queries stop,
// within the blocking reader's idle wake-up, 100 ms, or miekg/dns's 2 s
// read deadline in Go's poller). Per answer, the histograms' memory would be
// touched from cold CPU caches at moderate rates; in batches of a whole
// 100 ms, counting them would hold the next queries up for a quarter of a
// millisecond. fastcache's own counters are counted at once.
type pending struct {
	obs    [pendingMax]observation
	n      int
	first  time.Time
	server string
}

const (
	pendingMax = 256
	// pendingFlush pending answers are counted between two reads: a batch
	// short enough not to hold the next query up (about 10 µs), long
	// enough to touch the histograms' memory once for many answers.
	pendingFlush = 128
	flushAfter   = 100 * time.Millisecond
)

// observation is one pending answer, in 24 bytes: the reader writes one
// per hit, through memory the CPU's caches do not hold at moderate rates.
type observation struct {
	m         *zoneMetrics
	qtype     uint16
	rcode     uint8
	flags     uint8  // obsV6, obsDO
	zone      uint16 // 0: the zone's own label; i+1: under[i]'s
	req, resp uint16
	dur       uint32 // nanoseconds, at most 4.29 s
}

const (
	obsV6 = 1 << iota
	obsDO
)

// hit records one answer of the fast path, read at start.
func (p *pending) hit(m *zoneMetrics, server string, q *query, v6 bool, reqLen, respLen, rc int, start time.Time) {
	m.hits.Inc()
	if m.server == nil {
		return
	}
	if p.n == pendingMax || p.n > 0 && server != p.server {
		p.flush()
	}
	o := &p.obs[p.n]
	var flags uint8
	if v6 {
		flags |= obsV6
	}
	if q.do {
		flags |= obsDO
	}
	*o = observation{m: m, qtype: q.qtype, rcode: uint8(rc), flags: flags, zone: m.server.zoneOf(q),
		req: uint16(min(reqLen, math.MaxUint16)), resp: uint16(min(respLen, math.MaxUint16)),
		dur: uint32(min(time.Since(start), math.MaxUint32))}
	if p.n == 0 {
		p.first, p.server = start, server
	}
	p.n++
}

// due reports whether the pending answers are to be counted: pendingFlush
// of them, or the oldest older than flushAfter.
func (p *pending) due(now time.Time) bool {
	return p.n >= pendingFlush || p.n > 0 && now.Sub(p.first) >= flushAfter
}

// flush counts the pending answers.
func (p *pending) flush() {
	for i := range p.n {
		o := &p.obs[i]
		s := o.m.server
		k := serverKey{server: p.server, zone: s.zone, v6: o.flags&obsV6 != 0, qtype: o.qtype, rcode: int(o.rcode), do: o.flags&obsDO != 0}
		if o.zone > 0 {
			k.zone = s.under[o.zone-1].label
		}
		s.report(k, int(o.req), int(o.resp), time.Duration(o.dur))
		o.m = nil
	}
	p.n = 0
}

// serverMetrics are CoreDNS's request metrics (the prometheus plugin's)
// for one zone, by server, family and type.
type serverMetrics struct {
	zone, plugin string
	// under are the prometheus plugin's zones below zone, longest first.
	under []zoneRoute
	// handles maps a serverKey to its *handles; copied on write.
	handles atomic.Pointer[map[serverKey]*handles]
	mu      sync.Mutex
}

type serverKey struct {
	server string
	zone   string
	v6     bool
	qtype  uint16
	rcode  int
	do     bool
}

type handles struct {
	count, responses, do prometheus.Counter
	duration, respSize   prometheus.Observer
	reqSize              prometheus.Observer
}

// zoneOf returns which of the prometheus plugin's zones labels an answer to
// q: 0 for s.zone, i+1 for s.under[i].
func (s *serverMetrics) zoneOf(q *query) uint16 {
	name := q.key[:q.nameLen]
	for i, z := range s.under[:min(len(s.under), math.MaxUint16-1)] {
		if o := len(name) - len(z.name); o >= 0 && q.labelAt(o) && string(name[o:]) == z.name {
			return uint16(i + 1)
		}
	}
	return 0
}

func (s *serverMetrics) report(k serverKey, reqLen, respLen int, dur time.Duration) {
	var h *handles
	if hs := s.handles.Load(); hs != nil {
		h = (*hs)[k]
	}
	if h == nil {
		h = s.resolve(k)
	}
	if h.do != nil {
		h.do.Inc()
	}
	h.count.Inc()
	h.duration.Observe(dur.Seconds())
	h.respSize.Observe(float64(respLen))
	h.reqSize.Observe(float64(reqLen))
	h.responses.Inc()
}

func (s *serverMetrics) resolve(k serverKey) *handles {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := map[serverKey]*handles{}
	if hs := s.handles.Load(); hs != nil {
		old = *hs
	}
	if h := old[k]; h != nil {
		return h
	}
	fam := "1"
	if k.v6 {
		fam = "2"
	}
	h := &handles{
		count:     vars.RequestCount.WithLabelValues(k.server, k.zone, "", "udp", fam, qTypeString(k.qtype)),
		duration:  vars.RequestDuration.WithLabelValues(k.server, k.zone, ""),
		respSize:  vars.ResponseSize.WithLabelValues(k.server, k.zone, "", "udp"),
		reqSize:   vars.RequestSize.WithLabelValues(k.server, k.zone, "", "udp"),
		responses: vars.ResponseRcode.WithLabelValues(k.server, k.zone, "", rcode.ToString(k.rcode), s.plugin),
	}
	if k.do {
		h.do = vars.RequestDo.WithLabelValues(k.server, k.zone, "")
	}
	hs := make(map[serverKey]*handles, len(old)+1)
	for kk, v := range old {
		hs[kk] = v
	}
	hs[k] = h
	s.handles.Store(&hs)
	return h
}

// monitored are the query types CoreDNS's request metrics name; others are
// counted as "other" (plugin/metrics/vars/monitor.go).
var monitored = []uint16{
	dns.TypeAAAA, dns.TypeA, dns.TypeCNAME, dns.TypeDNSKEY, dns.TypeDS, dns.TypeMX,
	dns.TypeNSEC3, dns.TypeNSEC, dns.TypeNS, dns.TypePTR, dns.TypeRRSIG, dns.TypeSOA,
	dns.TypeSRV, dns.TypeTXT, dns.TypeHTTPS, dns.TypeSVCB, dns.TypeIXFR, dns.TypeAXFR, dns.TypeANY,
}

func qTypeString(t uint16) string {
	if slices.Contains(monitored, t) {
		return dns.Type(t).String()
	}
	return "other"
}
