package fastcache

import (
	"context"
	"reflect"
	"strings"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/cache"
	"github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/plugin/pkg/response"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// Store once. With only the options hitAnswer follows (storeMisses), an
// upstream answer the fast path can store is stored in its store and not
// in CoreDNS's cache as well: a name costs one compact entry, not that and
// the cache's item of Go records. The fast path's stores are then the cache
// of what they hold, for every query of the key: the fast path answers
// fresh entries over UDP, and ServeDNS answers them over TCP as the cache
// would from its item, and serves an expired one as the cache's serve_stale
// does. What the fast path cannot store (SERVFAIL, delegations, answers too
// large for it or past CoreDNS's compression threshold, queries it does not
// parse) stays CoreDNS's cache's, which still sees every query the stores
// cannot answer.

// storeOnce stores m, the upstream's answer to a miss of CoreDNS's cache,
// in the fast path's store when the fast path can serve it, and then writes
// it to the client as the cache's writer would, without it; it reports
// whether it did. Only a miss's writer qualifies: the cache's refreshes of
// entries of its own (serve_stale verify, prefetch) go through other
// writers and are left to it.
func (w *budgetWriter) storeOnce(m *dns.Msg) (bool, error) {
	if !missWriter(w.ResponseWriter) {
		return false, nil
	}
	lk := w.lk
	lk.tried.Store(true)
	hm, ttl := w.f.hitAnswer(lk.w, lk.r, m)
	if hm == nil || !w.f.capture(lk.key, hm, w.f.store.now(), true) {
		return false, nil
	}
	state := request.Request{W: lk.w, Req: lk.r}
	return true, lk.client.WriteMsg(missAnswer(m, ttl, state.Do() || lk.r.AuthenticatedData))
}

// pluginWriter is the type of the writer plugin.NextOrFailure wraps the
// next handler's in (CoreDNS's, unexported).
var pluginWriter = func() reflect.Type {
	var t reflect.Type
	_, _ = plugin.NextOrFailure("", plugin.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, _ *dns.Msg) (int, error) {
		t = reflect.TypeOf(w)
		return 0, nil
	}), context.Background(), nil, nil)
	return t
}()

// missWriter reports whether w, the writer CoreDNS's cache passes its next
// handler, is its writer for a miss: its ResponseWriter as such, which
// plugin.NextOrFailure wraps, not in the writer of a refresh of its own
// (serve_stale verify), nor a prefetch's (the caller checks).
func missWriter(w dns.ResponseWriter) bool { return cacheWriter(w) != nil }

// cacheWriter returns CoreDNS's cache's writer w is, or wraps as
// plugin.NextOrFailure does, nil if neither.
func cacheWriter(w dns.ResponseWriter) *cache.ResponseWriter {
	if cw, ok := w.(*cache.ResponseWriter); ok {
		return cw
	}
	if w == nil || pluginWriter == nil {
		return nil
	}
	v := reflect.ValueOf(w)
	if v.Type() != pluginWriter || v.Kind() != reflect.Pointer || v.IsNil() {
		return nil
	}
	f := v.Elem().FieldByName("ResponseWriter")
	if !f.IsValid() || !f.CanInterface() {
		return nil
	}
	cw, _ := f.Interface().(*cache.ResponseWriter)
	return cw
}

// innerWriter returns the client's writer of CoreDNS's cache's writer w
// (for a miss, the one the cache was given; for a prefetch, nil), nil if
// w is not the cache's writer.
func innerWriter(w dns.ResponseWriter) dns.ResponseWriter {
	if cw := cacheWriter(w); cw != nil {
		return cw.ResponseWriter
	}
	return nil
}

// missAnswer is what CoreDNS's cache writes to the client for the upstream
// answer m it stores with TTL ttl: a copy without OPT records (the server
// adds the client's), every TTL ttl, AD only when DO or AD was asked.
func missAnswer(m *dns.Msg, ttl uint32, keepAD bool) *dns.Msg {
	res := m.Copy()
	res.Answer, res.Ns, res.Extra = setTTL(res.Answer, ttl), setTTL(res.Ns, ttl), setTTL(res.Extra, ttl)
	if !keepAD {
		res.AuthenticatedData = false
	}
	return res
}

// setTTL returns rrs, which the caller owns, without OPT records and with
// TTL ttl.
func setTTL(rrs []dns.RR, ttl uint32) []dns.RR {
	out := rrs[:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		rr.Header().Ttl = ttl
		out = append(out, rr)
	}
	return out
}

// fromStore answers r from e, the stored answer for its key at now (or,
// not exact, for the key of the query with or without EDNS), fresh or
// expired within serve_stale, as CoreDNS's cache answers from its item. A
// fresh answer from another key's entry is stored under r's as sent, for
// the fast path, as a hit of CoreDNS's cache is.
func (f *FastCache) fromStore(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, key []byte, e *entry, now int64, exact bool) (int, error) {
	f.countHit(ctx, e)
	if now < e.until {
		m, rc, err := writeEntry(w, r, e, cacheTTL(e, now))
		if err == nil && !exact {
			f.capture(key, m, now, true)
		}
		return rc, err
	}
	if f.opts.verify {
		tracked := f.opts.staleRecheck > 0
		if !tracked || e.beginRefresh(now) {
			if rc, err, ok := f.verifyStale(ctx, w, r, key, e, tracked); ok {
				return rc, err
			}
		}
	} else if e.beginRefresh(now) {
		// immediate: served stale, refreshed after.
		go f.refresh(ctx, w, r, key, e, true)
	}
	cacheServedStale.WithLabelValues(metrics.WithServer(ctx), f.cacheZones, f.view).Inc()
	_, rc, err := writeEntry(w, r, e, f.opts.staleTTL)
	return rc, err
}

// countHit counts an answer from the stored e, fresh or stale, as CoreDNS's
// cache counts a hit.
func (f *FastCache) countHit(ctx context.Context, e *entry) {
	typ := cache.Success
	if e.denial {
		typ = cache.Denial
	}
	cacheHits.WithLabelValues(metrics.WithServer(ctx), typ, f.cacheZones, f.view).Inc()
}

// cacheTTL is the TTL CoreDNS's cache gives an item stored as e at now:
// the stored TTL less the whole seconds since.
func cacheTTL(e *entry, now int64) uint32 {
	age := uint32((now - e.stored) / int64(time.Second))
	return e.ttl - min(age, e.ttl)
}

// verifyStale refreshes the expired entry e before it is served, as
// CoreDNS's serve_stale verify does: when the upstream's answer (NOERROR or
// NXDOMAIN, complete, to the question) comes within the timeout it is
// served and ok is set; else the refresh goes on, to store what it gets,
// and the caller serves e.
func (f *FastCache) verifyStale(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, key []byte, e *entry, tracked bool) (int, error, bool) {
	done := make(chan *verifyWriter, 1)
	go func() { done <- f.refresh(ctx, w, r, key, e, tracked) }()
	var timeout <-chan time.Time
	if f.opts.verifyTimeout > 0 {
		t := time.NewTimer(f.opts.verifyTimeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case v := <-done:
		if v.msg == nil {
			return 0, nil, false
		}
		now := f.store.now()
		if ne := f.lookup(key, now, 0); ne != nil && ne != e {
			// Stored: served as the cache serves its new item.
			_, rc, err := writeEntry(w, r, ne, cacheTTL(ne, now))
			return rc, err, true
		}
		// Not stored: served as the cache writes what it does not store.
		mt, _ := cacheType(v.msg, time.Now().UTC())
		state := request.Request{W: w, Req: r}
		if err := w.WriteMsg(missAnswer(v.msg, f.storedTTL(v.msg, mt), state.Do() || r.AuthenticatedData)); err != nil {
			return dns.RcodeServerFailure, err, true
		}
		return dns.RcodeSuccess, nil, true
	case <-timeout:
		return 0, nil, false
	}
}

// refresh asks the upstream for r again in place of the expired entry e,
// past CoreDNS's cache, as the cache's serve_stale refresh does (which
// caches neither a SERVFAIL nor what does not refresh the entry), stores
// an answer that refreshes it, and returns the writer that saw the
// answer. With tracked, e records the refresh, and a failed one is not
// retried for serve_stale's recheck.
func (f *FastCache) refresh(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, key []byte, e *entry, tracked bool) *verifyWriter {
	v := &verifyWriter{ResponseWriter: w, req: r}
	req := r.Copy()
	req.AuthenticatedData = true // as the cache asks
	// No lookup of fastcache's: the answer comes to v, not to a client.
	_, _ = f.up.ServeDNS(context.WithValue(context.WithoutCancel(ctx), lookupKey{}, (*lookup)(nil)), v, req)
	if v.msg != nil {
		if m, _ := f.hitAnswer(v, r, v.msg); m != nil {
			f.capture(key, m, f.store.now(), true)
		}
	}
	if tracked {
		e.endRefresh(f.store.now(), f.opts.staleRecheck, v.msg != nil)
	}
	return v
}

// verifyWriter keeps the answer to a refresh that refreshes the entry (as
// CoreDNS's verifyStaleResponseWriter decides) and writes nothing: the
// client may have had the stale answer already.
type verifyWriter struct {
	dns.ResponseWriter
	req *dns.Msg
	msg *dns.Msg
}

func (v *verifyWriter) WriteMsg(m *dns.Msg) error {
	state := request.Request{W: v, Req: v.req}
	if m == nil || m.Truncated || !state.Match(m) {
		return nil
	}
	switch t, _ := response.Typify(m, time.Now().UTC()); t {
	case response.OtherError, response.Meta, response.Update:
		return nil
	}
	if m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError {
		v.msg = m
	}
	return nil
}

func (v *verifyWriter) Write([]byte) (int, error) { return 0, nil }

// writeEntry answers r from e with TTL ttl, as CoreDNS's cache answers from
// its item (toMsg: the stored flags, rcode and records), and returns the
// message as written.
func writeEntry(w dns.ResponseWriter, r *dns.Msg, e *entry, ttl uint32) (*dns.Msg, int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(e.resp()); err != nil {
		return nil, dns.RcodeServerFailure, err
	}
	out := new(dns.Msg)
	out.SetReply(r)
	out.Authoritative, out.AuthenticatedData, out.RecursionAvailable = m.Authoritative, m.AuthenticatedData, m.RecursionAvailable
	out.Rcode = m.Rcode
	out.Answer, out.Ns, out.Extra = setTTL(m.Answer, ttl), setTTL(m.Ns, ttl), setTTL(m.Extra, ttl)
	if err := w.WriteMsg(out); err != nil {
		return nil, dns.RcodeServerFailure, err
	}
	return out, dns.RcodeSuccess, nil
}

// cacheType is how CoreDNS's cache (v1.14.7, cache.go: key and
// cacheResponseType) classifies an answer, and whether it stores it: not
// truncated answers, errors other than SERVFAIL, meta queries or updates,
// NXDOMAIN without an SOA, or an SOA-less NOERROR whose records do not
// answer the question; a NOERROR with an SOA whose records do not answer
// it is NODATA.
func cacheType(m *dns.Msg, now time.Time) (response.Type, bool) {
	if m.Truncated {
		return 0, false
	}
	t, _ := response.Typify(m, now)
	switch {
	case t == response.OtherError || t == response.Meta || t == response.Update:
		return t, false
	case t == response.NameError && !hasSOA(m):
		return t, false
	case t == response.NoError && isNODATA(m):
		if !hasSOA(m) {
			return t, false
		}
		return response.NoData, true
	}
	return t, true
}

func hasSOA(m *dns.Msg) bool {
	for _, r := range m.Ns {
		if r.Header().Rrtype == dns.TypeSOA {
			return true
		}
	}
	return false
}

// isNODATA reports whether a NOERROR answer with records does not answer
// its question: no record of the type at the end of the CNAME chain from
// the question's name (an ANY query: no record at the name; a CNAME query:
// no CNAME there). A chain with a loop or a name with two targets answers
// nothing.
func isNODATA(m *dns.Msg) bool {
	if len(m.Answer) == 0 || m.Rcode != dns.RcodeSuccess || len(m.Question) == 0 {
		return false
	}
	q := m.Question[0]
	class := func(c uint16) bool { return q.Qclass == dns.ClassANY || c == q.Qclass }
	at := func(rr dns.RR, name string) bool {
		return class(rr.Header().Class) && strings.EqualFold(rr.Header().Name, name)
	}
	// target is name's CNAME target ("" for none); ok is false when name
	// has two.
	target := func(name string) (string, bool) {
		t := ""
		for _, rr := range m.Answer {
			c, isCNAME := rr.(*dns.CNAME)
			if !isCNAME || !at(rr, name) {
				continue
			}
			if t != "" && !strings.EqualFold(t, c.Target) {
				return "", false
			}
			t = c.Target
		}
		return t, true
	}
	switch q.Qtype {
	case dns.TypeANY:
		for _, rr := range m.Answer {
			if at(rr, q.Name) {
				return false
			}
		}
		return true
	case dns.TypeCNAME:
		t, ok := target(q.Name)
		return !ok || t == ""
	}
	name := q.Name
	seen := map[string]bool{}
	for {
		k := strings.ToLower(name)
		if seen[k] {
			return true
		}
		seen[k] = true
		t, ok := target(name)
		if !ok {
			return true
		}
		if t == "" {
			break
		}
		name = t
	}
	for _, rr := range m.Answer {
		if rr.Header().Rrtype == q.Qtype && at(rr, name) {
			return false
		}
	}
	return true
}
