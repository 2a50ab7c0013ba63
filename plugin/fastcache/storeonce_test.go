package fastcache

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/pkg/response"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// flipUpstream answers A queries with ip, NXDOMAIN (with an SOA) for names
// starting nx-, a 60-record TXT set for big.; or, down, SERVFAIL; or,
// silent, nothing. It counts the queries per name.
type flipUpstream struct {
	mu     sync.Mutex
	ip     string
	down   bool
	silent bool
	asked  map[string]int
}

func (u *flipUpstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	u.mu.Lock()
	ip, down, silent := u.ip, u.down, u.silent
	u.asked[strings.ToLower(r.Question[0].Name)]++
	u.mu.Unlock()
	if silent {
		return
	}
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	switch {
	case down:
		m.Rcode = dns.RcodeServerFailure
	case strings.HasPrefix(q.Name, "nx-"):
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
			Ns: "ns.example.org.", Mbox: "h.example.org.", Serial: 1, Refresh: 7200, Retry: 3600, Expire: 1209600, Minttl: 30}}
	case strings.HasPrefix(q.Name, "big."):
		for i := range 60 {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300},
				Txt: []string{fmt.Sprintf("%02d%s", i, strings.Repeat("t", 30))}})
		}
	default:
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: parseIP(ip)}}
	}
	_ = w.WriteMsg(m)
}

func (u *flipUpstream) set(f func(u *flipUpstream)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	f(u)
}

func (u *flipUpstream) count(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.asked[name]
}

func parseIP(s string) []byte {
	rr, _ := dns.NewRR("x. 1 IN A " + s)
	return rr.(*dns.A).A
}

func newFlipUpstream(t *testing.T) (*flipUpstream, string) {
	u := &flipUpstream{ip: "192.0.2.1", asked: map[string]int{}}
	return u, testUpstream(t, u)
}

// cacheEntries is CoreDNS's cache's gauge of its entries of type typ for
// the server on addr.
func cacheEntries(t *testing.T, addr, typ string) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "coredns_cache_entries" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["server"] == "dns://"+addr && labels["type"] == typ {
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// TestStoredOnce checks that an answer the fast path stores is not also in
// CoreDNS's cache, and that the fast path's stores then answer every later
// query of it, over UDP and TCP, without asking the upstream again; what
// the fast path cannot store (a large answer, a SERVFAIL) is still
// CoreDNS's, counted against the budget.
func TestStoredOnce(t *testing.T) {
	u, up := newFlipUpstream(t)
	addr := startCoreDNS(t, "example.org.", "    fastcache {\n        success 1000 30\n        denial 1000 5\n    }\n    forward . "+up)
	fastConn(t, addr)
	budgetBefore := largeAnswers.inUse()
	var names []string
	for i := range 20 {
		names = append(names, fmt.Sprintf("a-%d.example.org.", i))
	}
	for i := range 5 {
		names = append(names, fmt.Sprintf("nx-%d.example.org.", i))
	}
	for round := range 3 {
		for _, n := range names {
			for _, proto := range []string{"udp", "tcp"} {
				m := new(dns.Msg)
				m.SetQuestion(n, dns.TypeA)
				r := exchange(t, proto, addr, m)
				want := dns.RcodeSuccess
				if strings.HasPrefix(n, "nx-") {
					want = dns.RcodeNameError
				}
				if r.Rcode != want || (want == dns.RcodeSuccess && len(r.Answer) != 1) {
					t.Fatalf("round %d, %s over %s: rcode %d, %d records", round, n, proto, r.Rcode, len(r.Answer))
				}
			}
		}
	}
	if got := largeAnswers.inUse() - budgetBefore; got != 0 {
		t.Errorf("%d bytes counted against the budget for answers only the fast path's store holds", got)
	}
	big := new(dns.Msg)
	bigName := fmt.Sprintf("big.%d.example.org.", time.Now().UnixNano())
	big.SetQuestion(bigName, dns.TypeTXT)
	for range 2 {
		if r := exchange(t, "tcp", addr, big); len(r.Answer) != 60 {
			t.Fatalf("big: %d records, want 60", len(r.Answer))
		}
	}
	for _, n := range append(names, bigName) {
		if c := u.count(n); c != 1 {
			t.Errorf("%s asked upstream %d times, want once", n, c)
		}
	}
	// What CoreDNS's cache stores besides counts against the budget
	// whatever its size: a SERVFAIL (cached for 5 s) as much as the large
	// answer.
	bigCost := largeAnswers.inUse() - budgetBefore
	if bigCost <= 0 {
		t.Errorf("the large answer was not counted against the budget")
	}
	u.set(func(u *flipUpstream) { u.down = true })
	sf := new(dns.Msg)
	// A name of its own: the budget is the process's, and outlives the
	// test's servers.
	sf.SetQuestion(fmt.Sprintf("servfail-%d.example.org.", time.Now().UnixNano()), dns.TypeA)
	if r := exchange(t, "udp", addr, sf); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("servfail: rcode %d", r.Rcode)
	}
	if got := largeAnswers.inUse() - budgetBefore - bigCost; got < itemCost {
		t.Errorf("a SERVFAIL CoreDNS's cache holds counted at %d bytes, want at least %d", got, itemCost)
	}
	u.set(func(u *flipUpstream) { u.down = false })
	f := fastcacheOn(t, addr, "example.org.")
	if got := f.store.len() + f.denial.len(); got != len(names) {
		t.Errorf("the fast path holds %d answers, want %d", got, len(names))
	}
	if got := f.denial.len(); got != 5 {
		t.Errorf("the fast path holds %d denials, want 5", got)
	}
	// The cache set its gauges when it stored the large answer.
	if got := cacheEntries(t, addr, "success"); got != 1 {
		t.Errorf("CoreDNS's cache holds %v answers, want 1 (the large one)", got)
	}
	if got := cacheEntries(t, addr, "denial"); got != 1 {
		t.Errorf("CoreDNS's cache holds %v denials, want 1 (the SERVFAIL)", got)
	}
}

// fastcacheOn returns the fastcache of zone on addr.
func fastcacheOn(t *testing.T, addr, zone string) *FastCache {
	t.Helper()
	listeners.mu.Lock()
	defer listeners.mu.Unlock()
	if l := listeners.m["dns://"+addr]; l != nil && l.zones[zoneKey(zone)] != nil {
		return l.zones[zoneKey(zone)]
	}
	t.Fatalf("no fastcache for %s on %s", zone, addr)
	return nil
}

// TestServeStaleFromStore runs serve_stale verify on an entry only the fast
// path's store holds, beside CoreDNS's cache with the same Corefile and an
// upstream of its own in the same state, and compares their answers: while
// the upstream answers SERVFAIL the stale answer with the stale TTL, and
// no new refresh before the recheck; once it answers again, the new
// answer; while it answers nothing, the stale answer in about the verify
// timeout.
func TestServeStaleFromStore(t *testing.T) {
	const body = "    fastcache {\n        success 1000 2 0\n        denial 1000 2 0\n        serve_stale 1h verify 200ms 7s 1s\n    }\n    forward . %s {\n        expire 100ms\n    }"
	fu, fup := newFlipUpstream(t)
	su, sup := newFlipUpstream(t)
	fast := startCoreDNS(t, "example.org.", fmt.Sprintf(body, fup))
	stock := startCoreDNS(t, "example.org.", strings.Replace(fmt.Sprintf(body, sup), "fastcache", "cache", 1))
	fastConn(t, fast)
	ups := []*flipUpstream{fu, su}
	all := func(f func(u *flipUpstream)) {
		for _, u := range ups {
			u.set(f)
		}
	}
	const name = "stale.example.org."
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	// ask sends q to both and checks they answer alike, with the record
	// ip, TTLs within a second of ttl; it returns how long the fastcache
	// took.
	ask := func(step, proto, ip string, ttl uint32) time.Duration {
		t.Helper()
		start := time.Now()
		got := exchange(t, proto, fast, q)
		took := time.Since(start)
		want := exchange(t, proto, stock, q)
		if g, w := normal(got), normal(want); g != w {
			t.Errorf("%s: fastcache answered\n%s\nCoreDNS's cache answered\n%s", step, g, w)
		}
		if len(got.Answer) != 1 || got.Answer[0].(*dns.A).A.String() != ip {
			t.Fatalf("%s: answer %v, want %s", step, got.Answer, ip)
		}
		if d := int(got.Answer[0].Header().Ttl) - int(ttl); d < -1 || d > 0 {
			t.Errorf("%s: TTL %d, want %d", step, got.Answer[0].Header().Ttl, ttl)
		}
		return took
	}
	ask("miss", "udp", "192.0.2.1", 2)
	if !storedWithin(t, fast, "example.org.", q, time.Second) {
		t.Fatal("not stored")
	}
	stale := cacheServedStale.WithLabelValues("dns://"+fast, "example.org.", "")
	staleBefore := testutil.ToFloat64(stale)

	time.Sleep(2100 * time.Millisecond)
	all(func(u *flipUpstream) { u.down = true })
	ask("expired, upstream failing", "udp", "192.0.2.1", 7)
	asked := fu.count(name)
	ask("within the recheck", "tcp", "192.0.2.1", 7)
	if c := fu.count(name); c != asked {
		t.Errorf("the upstream was asked again within the recheck (%d times, then %d)", asked, c)
	}

	time.Sleep(1100 * time.Millisecond)
	all(func(u *flipUpstream) { u.down, u.ip = false, "192.0.2.9" })
	ask("refreshed", "udp", "192.0.2.9", 2)
	ask("fresh again", "tcp", "192.0.2.9", 2)

	// Last: the refresh of a silent upstream runs on for forward's 5 s.
	time.Sleep(2100 * time.Millisecond)
	// The store served all of it: CoreDNS's cache stored nothing.
	if got := cacheEntries(t, fast, "success"); got != 0 {
		t.Errorf("CoreDNS's cache holds %v answers, want none: the fast path's store is the cache", got)
	}
	all(func(u *flipUpstream) { u.silent = true })
	if took := ask("expired, upstream silent", "udp", "192.0.2.9", 7); took > time.Second {
		t.Errorf("the stale answer took %v, want about the 200 ms verify timeout", took)
	}
	if got := testutil.ToFloat64(stale) - staleBefore; got != 3 {
		t.Errorf("%v stale answers counted, want 3", got)
	}
}

// TestDenialCapacity checks that denials, stored apart up to the denial
// capacity, never evict answers: a flood of NXDOMAIN names leaves the
// stored answers in place, as CoreDNS's two caches do.
func TestDenialCapacity(t *testing.T) {
	f := &FastCache{opts: options{successTTL: 30 * time.Second, denialTTL: 5 * time.Second, storeMisses: true}}
	f.store = newStore(shards * 64) // room for all 50 in any shard
	f.denial = f.store.sibling(shards)
	keyOf := func(name string) []byte {
		var (
			q   query
			buf [maxKey]byte
		)
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		if !parseQuery(pack(t, m), buf[:], &q) {
			t.Fatalf("%s not parsed", name)
		}
		return append([]byte(nil), q.key...)
	}
	reply := func(name string, nx bool) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r := new(dns.Msg)
		r.SetReply(m)
		if nx {
			r.Rcode = dns.RcodeNameError
			r.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 5},
				Ns: "ns.example.org.", Mbox: "h.example.org.", Minttl: 5}}
		} else {
			r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: parseIP("192.0.2.1")}}
		}
		return r
	}
	now := f.store.now()
	var good [][]byte
	for i := range 50 {
		n := fmt.Sprintf("good-%d.example.org.", i)
		k := keyOf(n)
		if !f.capture(k, reply(n, false), now, true) {
			t.Fatalf("%s not stored", n)
		}
		good = append(good, k)
	}
	for i := range 2000 {
		n := fmt.Sprintf("nx-%d.example.org.", i)
		if !f.capture(keyOf(n), reply(n, true), now, true) {
			t.Fatalf("%s not stored", n)
		}
	}
	for i, k := range good {
		if f.lookup(k, now, 0) == nil {
			t.Errorf("good-%d evicted by the denials", i)
		}
	}
	if n := f.store.len(); n != len(good) {
		t.Errorf("%d answers stored, want the %d good ones (the denials apart)", n, len(good))
	}
	if n := f.denial.len(); n == 0 || n > shards {
		t.Errorf("%d denials stored, want some and at most the capacity %d", n, shards)
	}
	// A key's newest answer replaces its other kind.
	n := "good-0.example.org."
	f.capture(good[0], reply(n, true), now, true)
	if e := f.lookup(good[0], now, 0); e == nil || f.store.get(good[0], now) != nil {
		t.Errorf("%s: the denial did not replace the answer", n)
	}
}

// TestCacheType checks the fast path's copy of CoreDNS's cache's rules for
// what it stores and how it classifies it.
func TestCacheType(t *testing.T) {
	rr := func(s string) dns.RR { return newRR(t, s) }
	soa := rr("example.org. 60 IN SOA ns.example.org. h.example.org. 1 7200 3600 1209600 30")
	msg := func(qtype uint16, rcode int, answer []dns.RR, ns ...dns.RR) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("a.example.org.", qtype)
		m.Response, m.Rcode, m.Answer, m.Ns = true, rcode, answer, ns
		return m
	}
	a := rr("a.example.org. 30 IN A 192.0.2.1")
	chain := []dns.RR{rr("a.example.org. 30 IN CNAME b.example.org."), rr("b.example.org. 30 IN CNAME c.example.org.")}
	complete := append(append([]dns.RR{}, chain...), rr("c.example.org. 30 IN A 192.0.2.1"))
	loop := []dns.RR{rr("a.example.org. 30 IN CNAME b.example.org."), rr("b.example.org. 30 IN CNAME a.example.org.")}
	twoTargets := []dns.RR{rr("a.example.org. 30 IN CNAME b.example.org."), rr("a.example.org. 30 IN CNAME c.example.org."), rr("c.example.org. 30 IN A 192.0.2.1")}
	truncated := msg(dns.TypeA, dns.RcodeSuccess, []dns.RR{a})
	truncated.Truncated = true
	for _, tc := range []struct {
		name   string
		m      *dns.Msg
		want   response.Type
		stored bool
	}{
		{"an answer", msg(dns.TypeA, dns.RcodeSuccess, []dns.RR{a}), response.NoError, true},
		{"a complete CNAME chain", msg(dns.TypeA, dns.RcodeSuccess, complete), response.NoError, true},
		{"a CNAME query", msg(dns.TypeCNAME, dns.RcodeSuccess, chain[:1]), response.NoError, true},
		{"NODATA with an SOA", msg(dns.TypeA, dns.RcodeSuccess, nil, soa), response.NoData, true},
		{"NXDOMAIN with an SOA", msg(dns.TypeA, dns.RcodeNameError, nil, soa), response.NameError, true},
		{"NXDOMAIN without an SOA", msg(dns.TypeA, dns.RcodeNameError, nil), response.NameError, false},
		{"an unfinished chain with an SOA: NODATA", msg(dns.TypeA, dns.RcodeSuccess, chain, soa), response.NoData, true},
		{"an unfinished chain without an SOA", msg(dns.TypeA, dns.RcodeSuccess, chain), response.NoError, false},
		{"a CNAME loop", msg(dns.TypeA, dns.RcodeSuccess, loop), response.NoError, false},
		{"a name with two targets", msg(dns.TypeA, dns.RcodeSuccess, twoTargets), response.NoError, false},
		{"SERVFAIL", msg(dns.TypeA, dns.RcodeServerFailure, nil), response.ServerError, true},
		{"REFUSED", msg(dns.TypeA, dns.RcodeRefused, nil), response.OtherError, false},
		{"truncated", truncated, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, stored := cacheType(tc.m, time.Now())
			if stored != tc.stored || (stored && got != tc.want) {
				t.Errorf("got %v, stored %v; want %v, stored %v", got, stored, tc.want, tc.stored)
			}
		})
	}
}
