package fastcache

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/coredns/coredns/plugin/metrics/vars"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func pack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func queryMsg(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

func TestParseQuery(t *testing.T) {
	edns := func(m *dns.Msg, size uint16, do bool) *dns.Msg { m.SetEdns0(size, do); return m }
	with := func(m *dns.Msg, f func(*dns.Msg)) *dns.Msg { f(m); return m }
	tests := []struct {
		name string
		msg  *dns.Msg
		raw  func([]byte) []byte // changes to the packed query
		ok   bool
		size int
		key  string // as name/type/flag byte, when ok
	}{
		{name: "plain A", msg: queryMsg("a.example.org.", dns.TypeA), ok: true, size: 512},
		{name: "mixed case keys as lowercase", msg: queryMsg("A.ExAmple.ORG.", dns.TypeA), ok: true, size: 512},
		{name: "EDNS 1232", msg: edns(queryMsg("a.example.org.", dns.TypeA), 1232, false), ok: true, size: 1232},
		{name: "EDNS under 512 is 512", msg: edns(queryMsg("a.example.org.", dns.TypeA), 100, false), ok: true, size: 512},
		{name: "EDNS DO", msg: edns(queryMsg("a.example.org.", dns.TypeA), 4096, true), ok: true, size: 4096},
		{name: "root", msg: queryMsg(".", dns.TypeNS), ok: true, size: 512},
		{name: "response", msg: with(queryMsg("a.example.org.", dns.TypeA), func(m *dns.Msg) { m.Response = true })},
		{name: "notify", msg: with(queryMsg("a.example.org.", dns.TypeA), func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify })},
		{name: "truncated query", msg: with(queryMsg("a.example.org.", dns.TypeA), func(m *dns.Msg) { m.Truncated = true })},
		{name: "Z bit", msg: with(queryMsg("a.example.org.", dns.TypeA), func(m *dns.Msg) { m.Zero = true })},
		{name: "DS goes to the parent", msg: queryMsg("a.example.org.", dns.TypeDS)},
		{name: "AXFR", msg: queryMsg("example.org.", dns.TypeAXFR)},
		{name: "class CH", msg: with(queryMsg("version.bind.", dns.TypeTXT), func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS })},
		{name: "two questions", msg: with(queryMsg("a.example.org.", dns.TypeA), func(m *dns.Msg) {
			m.Question = append(m.Question, m.Question[0])
		})},
		{name: "answer section", msg: with(queryMsg("a.example.org.", dns.TypeA), func(m *dns.Msg) {
			rr, _ := dns.NewRR("a.example.org. 1 IN A 192.0.2.1")
			m.Answer = []dns.RR{rr}
		})},
		{name: "EDNS cookie", msg: with(edns(queryMsg("a.example.org.", dns.TypeA), 1232, false), func(m *dns.Msg) {
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}}
		})},
		{name: "EDNS client subnet", msg: with(edns(queryMsg("a.example.org.", dns.TypeA), 1232, false), func(m *dns.Msg) {
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0)}}
		})},
		{name: "EDNS version 1", msg: with(edns(queryMsg("a.example.org.", dns.TypeA), 1232, false), func(m *dns.Msg) { m.IsEdns0().SetVersion(1) })},
		{name: "two OPT records", msg: with(edns(queryMsg("a.example.org.", dns.TypeA), 1232, false), func(m *dns.Msg) {
			m.Extra = append(m.Extra, m.Extra[0])
		})},
		{name: "TSIG, not OPT", msg: with(queryMsg("a.example.org.", dns.TypeA), func(m *dns.Msg) { m.SetTsig("key.", dns.HmacSHA256, 300, 0) })},
		{name: "trailing bytes", msg: queryMsg("a.example.org.", dns.TypeA), raw: func(b []byte) []byte { return append(b, 0) }},
		{name: "cut short", msg: queryMsg("a.example.org.", dns.TypeA), raw: func(b []byte) []byte { return b[:len(b)-2] }},
		{name: "compression pointer in the question", msg: queryMsg("a.example.org.", dns.TypeA), raw: func(b []byte) []byte {
			return append(b[:12], 0xC0, 12, 0, 1, 0, 1)
		}},
		{name: "label over 63", msg: queryMsg("a.example.org.", dns.TypeA), raw: func(b []byte) []byte { b[12] = 64; return b }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pack(t, tt.msg)
			if tt.raw != nil {
				p = tt.raw(p)
			}
			var q query
			buf := make([]byte, maxKey)
			if got := parseQuery(p, buf, &q); got != tt.ok {
				t.Fatalf("parseQuery = %v, want %v", got, tt.ok)
			}
			if !tt.ok {
				return
			}
			if q.size != tt.size {
				t.Errorf("size %d, want %d", q.size, tt.size)
			}
			name, _, err := dns.UnpackDomainName(q.key, 0)
			if err != nil {
				t.Fatal(err)
			}
			if want := dns.CanonicalName(tt.msg.Question[0].Name); name != want {
				t.Errorf("key name %q, want %q", name, want)
			}
			if got := binary.BigEndian.Uint16(q.key[q.nameLen:]); got != tt.msg.Question[0].Qtype {
				t.Errorf("key type %d", got)
			}
			if q.nameLen+5 != len(q.key) {
				t.Errorf("key length %d for a name of %d", len(q.key), q.nameLen)
			}
		})
	}
}

// TestKeyFlags: every part of a query that changes CoreDNS's cached answer
// changes the key; case and the ID do not.
func TestKeyFlags(t *testing.T) {
	key := func(m *dns.Msg) string {
		var q query
		if !parseQuery(pack(t, m), make([]byte, maxKey), &q) {
			t.Fatal("not parsed")
		}
		return string(q.key)
	}
	base := queryMsg("a.example.org.", dns.TypeA)
	same := queryMsg("A.EXAMPLE.org.", dns.TypeA)
	same.Id = base.Id + 1
	same.RecursionDesired = false
	if key(base) != key(same) {
		t.Error("case, ID or RD changed the key")
	}
	variants := map[string]*dns.Msg{}
	variants["AAAA"] = queryMsg("a.example.org.", dns.TypeAAAA)
	m := queryMsg("a.example.org.", dns.TypeA)
	m.CheckingDisabled = true
	variants["CD"] = m
	m = queryMsg("a.example.org.", dns.TypeA)
	m.AuthenticatedData = true
	variants["AD"] = m
	m = queryMsg("a.example.org.", dns.TypeA)
	m.SetEdns0(1232, false)
	variants["EDNS"] = m
	m = queryMsg("a.example.org.", dns.TypeA)
	m.SetEdns0(1232, true)
	variants["DO"] = m
	seen := map[string]string{key(base): "base"}
	for name, v := range variants {
		k := key(v)
		if other, ok := seen[k]; ok {
			t.Errorf("%s has the key of %s", name, other)
		}
		seen[k] = name
	}
}

// stored returns a response to q as CoreDNS's cache writes it for a hit,
// packed, with its layout.
func stored(t testing.TB, q *dns.Msg, ttl uint32) ([]byte, layout) {
	t.Helper()
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative, m.RecursionAvailable = true, true
	a, _ := dns.NewRR("a.example.org. 300 IN A 192.0.2.1")
	b, _ := dns.NewRR("a.example.org. 300 IN A 192.0.2.2")
	m.Answer = []dns.RR{a, b}
	for _, rr := range m.Answer {
		rr.Header().Ttl = ttl
	}
	if o := q.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), o.Do())
	}
	p := pack(t, m)
	l, err := parseLayout(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, l
}

func TestAnswerPatches(t *testing.T) {
	fill := queryMsg("a.example.org.", dns.TypeA)
	fill.SetEdns0(1232, false)
	resp, l := stored(t, fill, 30)
	if l.ttl != 30 || len(l.ttls) != 2 || l.opt == 0 {
		t.Fatalf("layout %+v", l)
	}

	q := queryMsg("A.Example.ORG.", dns.TypeA)
	q.Id = 4321
	q.RecursionDesired = false
	q.SetEdns0(4000, false)
	p := pack(t, q)
	var pq query
	if !parseQuery(p, make([]byte, maxKey), &pq) {
		t.Fatal("not parsed")
	}
	out := answer(make([]byte, len(resp)), newEntry(pq.key, resp, l, 0, 1), p, &pq, 17)
	m := new(dns.Msg)
	if err := m.Unpack(out); err != nil {
		t.Fatal(err)
	}
	if m.Id != 4321 || m.RecursionDesired || !m.Response || !m.Authoritative {
		t.Errorf("header %+v", m.MsgHdr)
	}
	if m.Question[0].Name != "A.Example.ORG." {
		t.Errorf("question %q, want the query's case", m.Question[0].Name)
	}
	for _, rr := range m.Answer {
		if rr.Header().Ttl != 17 || rr.Header().Name != "a.example.org." {
			t.Errorf("record %s", rr)
		}
	}
	if o := m.IsEdns0(); o == nil || o.UDPSize() != 4000 {
		t.Errorf("OPT %v, want the query's buffer size echoed", o)
	}
}

func TestLayoutRejects(t *testing.T) {
	q := queryMsg("a.example.org.", dns.TypeA)
	resp, _ := stored(t, q, 30)
	m := new(dns.Msg)
	_ = m.Unpack(resp)
	m.Answer[1].Header().Ttl = 29
	if _, err := parseLayout(pack(t, m)); err == nil {
		t.Error("records with different TTLs accepted")
	}
	if _, err := parseLayout(pack(t, q)); err == nil {
		t.Error("a query accepted as an answer")
	}
	empty := new(dns.Msg)
	empty.SetRcode(q, dns.RcodeServerFailure)
	if _, err := parseLayout(pack(t, empty)); err == nil {
		t.Error("an answer without records accepted")
	}
	if _, err := parseLayout(resp[:len(resp)-1]); err == nil {
		t.Error("a cut answer accepted")
	}
}

func TestEntryTTL(t *testing.T) {
	s := time.Second.Nanoseconds()
	e := newEntry(nil, nil, layout{ttl: 30}, 100*s, 0)
	for _, tt := range []struct {
		at   int64
		want uint32
	}{
		{100 * s, 30},
		{100*s + 1, 29}, // rounded up: never above CoreDNS's
		{101 * s, 29},
		{129 * s, 1},
		{130 * s, 0},
		{200 * s, 0},
	} {
		if got := e.ttlAt(tt.at); got != tt.want {
			t.Errorf("ttlAt(%d s + %d) = %d, want %d", tt.at/s, tt.at%s, got, tt.want)
		}
	}
}

func TestStoreCapacity(t *testing.T) {
	st := newStore(shards) // one entry per shard
	for i := range 10 * shards {
		k := []byte{byte(i), byte(i >> 8), 1}
		st.put(newEntry(k, nil, layout{}, 0, 1<<62))
	}
	if n := st.len(); n > shards {
		t.Errorf("%d entries stored, capacity %d", n, shards)
	}
	k := []byte("key")
	st.put(newEntry(k, nil, layout{}, 0, 10))
	if st.get(k, 9) == nil || st.get(k, 10) != nil {
		t.Error("entry served outside its lifetime")
	}
}

// TestStoreEvictsExpiredFirst: a full shard makes room by evicting an
// entry the fast path no longer serves, not a live one.
func TestStoreEvictsExpiredFirst(t *testing.T) {
	for trial := range 50 {
		st := newStore(2 * shards) // two entries per shard
		// Three keys of one shard: a live entry, an expired one, a new one.
		var keys [][]byte
		var shard *shard
		for i := 0; len(keys) < 3; i++ {
			k := []byte(fmt.Sprintf("%d-%d.example.org", trial, i))
			if sh := st.shardOf(st.hash(k)); shard == nil || sh == shard {
				shard = sh
				keys = append(keys, k)
			}
		}
		st.put(newEntry(keys[0], nil, layout{}, 0, 1<<62))
		st.put(newEntry(keys[1], nil, layout{}, 0, 5))
		st.put(newEntry(keys[2], nil, layout{}, 10, 1<<62))
		if st.get(keys[0], 10) == nil || st.get(keys[2], 10) == nil {
			t.Fatalf("trial %d: a live entry evicted while an expired one was there", trial)
		}
		if st.len() != 2 {
			t.Fatalf("trial %d: %d entries, capacity 2", trial, st.len())
		}
	}
}

// TestStoreChecksKey: an entry found under another key's hash is not
// served for it.
func TestStoreChecksKey(t *testing.T) {
	st := newStore(100)
	a, b := []byte("a.example.org\x00\x01"), []byte("b.example.org\x00\x01")
	st.put(newEntry(a, []byte("answer"), layout{}, 0, 1<<62))
	if e := st.get(a, 1); e == nil || string(e.resp()) != "answer" {
		t.Fatalf("stored entry not found: %v", e)
	}
	h := st.hash(b)
	sh := st.shardOf(h)
	i, _ := sh.find(h)
	sh.slots[i] = slot{h: h, e: st.get(a, 1)} // as if a's hash were b's
	if st.get(b, 1) != nil {
		t.Error("the entry of another key served")
	}
}

// TestStoreTable: through inserts, replacements, growth and evictions, the
// store finds every key it holds, with its latest entry, holds no more than
// its capacity, and its size is the number of keys it finds.
func TestStoreTable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capacity int
		keys     int
	}{
		{"under capacity", 20000, 5000},
		{"at capacity", 4096, 4096},
		{"evicting", 640, 20000},
		{"one per shard", 1, 3000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(tc.capacity)
			latest := map[string]*entry{}
			for i := range tc.keys {
				// Every third put replaces a key put before.
				k := fmt.Sprintf("k%d", i)
				if i%3 == 2 {
					k = fmt.Sprintf("k%d", i/2)
				}
				e := newEntry([]byte(k), []byte(fmt.Sprint(i)), layout{}, 0, 1<<62)
				st.put(e)
				latest[k] = e
			}
			found := 0
			for k, e := range latest {
				switch got := st.get([]byte(k), 1); got {
				case nil:
				case e:
					found++
				default:
					t.Fatalf("key %s: entry %q, want the latest, %q", k, got.resp(), e.resp())
				}
			}
			if limit := st.perShard * shards; found > limit || st.len() != found {
				t.Errorf("%d keys found, size %d, capacity %d", found, st.len(), limit)
			}
			if tc.keys <= tc.capacity/2 && found != len(latest) {
				t.Errorf("%d of %d keys found under capacity", found, len(latest))
			}
			for i := range st.shard {
				sh := &st.shard[i]
				if used := countUsed(sh.slots); used != sh.n || 2*used > len(sh.slots) {
					t.Fatalf("shard %d: %d slots used, n %d, table %d", i, used, sh.n, len(sh.slots))
				}
			}
		})
	}
}

func countUsed(slots []slot) int {
	n := 0
	for _, s := range slots {
		if s.h != 0 {
			n++
		}
	}
	return n
}

// fastListener is a listener with one fastcache for zone "." holding the
// answer to query q.
func fastListener(t testing.TB, q *dns.Msg) *listener {
	t.Helper()
	resp, l := stored(t, q, 300)
	f := &FastCache{zone: ".", store: newStore(100), m: &zoneMetrics{hits: hits.WithLabelValues("test"), misses: misses.WithLabelValues("test")}}
	f.fast.Store(true)
	var pq query
	if !parseQuery(pack(t, q), make([]byte, maxKey), &pq) {
		t.Fatal("not parsed")
	}
	f.store.put(newEntry(pq.key, resp, l, f.store.now(), f.store.now()+int64(time.Hour)))
	ln := &listener{addr: "dns://127.0.0.1:53", zones: map[string]*FastCache{zoneKey("."): f}}
	ln.publish()
	return ln
}

// TestHitAllocatesNothing: the fast path's answer to a cache hit, from
// packet in to packet out, allocates nothing.
func TestHitAllocatesNothing(t *testing.T) {
	q := queryMsg("a.example.org.", dns.TypeA)
	ln := fastListener(t, q)
	p := pack(t, q)
	key, out := make([]byte, maxKey), make([]byte, maxFastAnswer)
	var pq query
	now := time.Now()
	allocs := testing.AllocsPerRun(1000, func() {
		if _, _, ok := ln.answer(p, key, out, &pq, now); !ok {
			t.Fatal("not a hit")
		}
	})
	if allocs != 0 {
		t.Errorf("a hit allocates %v times", allocs)
	}
}

func BenchmarkFastHit(b *testing.B) {
	q := queryMsg("a.example.org.", dns.TypeA)
	ln := fastListener(b, q)
	p := pack(b, q)
	key, out := make([]byte, maxKey), make([]byte, maxFastAnswer)
	var pq query
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := ln.answer(p, key, out, &pq, now); !ok {
			b.Fatal("not a hit")
		}
	}
}

// FuzzAnswer feeds arbitrary packets to the fast path holding one answer:
// it must not panic, must answer only a standard query with one question,
// and only with that question (the query's bytes, ID and the stored type).
func FuzzAnswer(f *testing.F) {
	q := queryMsg("a.example.org.", dns.TypeA)
	ln := fastListener(f, q)
	f.Add(pack(f, q))
	f.Add(pack(f, queryMsg("A.EXAMPLE.ORG.", dns.TypeA)))
	e := queryMsg("a.example.org.", dns.TypeA)
	e.SetEdns0(1232, true)
	f.Add(pack(f, e))
	f.Add(pack(f, queryMsg("a.example.org.", dns.TypeAAAA)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		key, out := make([]byte, maxKey), make([]byte, maxFastAnswer)
		var pq query
		resp, _, ok := ln.answer(p, key, out, &pq, time.Now())
		if !ok {
			return
		}
		req := new(dns.Msg)
		if err := req.Unpack(p); err != nil {
			t.Fatalf("answered a packet miekg/dns cannot read: %v", err)
		}
		if req.Response || req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
			t.Fatalf("answered a packet that is not a standard query: %v", req.MsgHdr)
		}
		m := new(dns.Msg)
		if err := m.Unpack(resp); err != nil {
			t.Fatalf("answer does not unpack: %v", err)
		}
		if m.Id != req.Id || !m.Response {
			t.Fatalf("answer header %v for query %v", m.MsgHdr, req.MsgHdr)
		}
		if m.Question[0] != req.Question[0] {
			t.Fatalf("answered %v for the question %v", m.Question[0], req.Question[0])
		}
		if !bytes.Equal(resp[12:12+pq.nameLen+4], p[12:12+pq.nameLen+4]) {
			t.Fatal("answer's question is not the query's")
		}
		if dns.CanonicalName(req.Question[0].Name) != "a.example.org." || req.Question[0].Qtype != dns.TypeA || req.Question[0].Qclass != dns.ClassINET {
			t.Fatalf("answered %v from the entry for a.example.org A", req.Question[0])
		}
	})
}

// TestPendingLabels: the fast path's answers, counted in a batch, reach
// CoreDNS's request metrics with the labels the prometheus plugin gives:
// the longest of its zones holding the name, the family, the type, DO.
func TestPendingLabels(t *testing.T) {
	const server = "dns://127.0.0.1:5399"
	sm := &serverMetrics{zone: "example.org.", plugin: "forward", under: []zoneRoute{
		{name: zoneKey("deep.sub.example.org."), label: "deep.sub.example.org."},
		{name: zoneKey("sub.example.org."), label: "sub.example.org."},
	}}
	m := &zoneMetrics{hits: hits.WithLabelValues("labels-test"), misses: misses.WithLabelValues("labels-test"), server: sm}
	for _, tc := range []struct {
		name     string
		do, v6   bool
		zone     string
		fam, typ string
	}{
		{"a.example.org.", false, false, "example.org.", "1", "A"},
		{"a.SUB.example.org.", true, false, "sub.example.org.", "1", "A"},
		{"x.deep.sub.example.org.", false, true, "deep.sub.example.org.", "2", "A"},
		{"notsub.example.org.", true, true, "example.org.", "2", "A"},
	} {
		q := queryMsg(tc.name, dns.TypeA)
		if tc.do {
			q.SetEdns0(1232, true)
		}
		var pq query
		if !parseQuery(pack(t, q), make([]byte, maxKey), &pq) {
			t.Fatalf("%s: not parsed", tc.name)
		}
		count := vars.RequestCount.WithLabelValues(server, tc.zone, "", "udp", tc.fam, tc.typ)
		do := vars.RequestDo.WithLabelValues(server, tc.zone, "")
		rc := vars.ResponseRcode.WithLabelValues(server, tc.zone, "", "NXDOMAIN", "forward")
		c0, d0, r0 := testutil.ToFloat64(count), testutil.ToFloat64(do), testutil.ToFloat64(rc)
		var p pending
		p.hit(m, server, &pq, tc.v6, 40, 90, dns.RcodeNameError, time.Now())
		p.hit(m, server, &pq, tc.v6, 40, 90, dns.RcodeNameError, time.Now())
		if testutil.ToFloat64(count) != c0 {
			t.Fatalf("%s: counted before the batch was flushed", tc.name)
		}
		p.flush()
		wantDo := 0.0
		if tc.do {
			wantDo = 2
		}
		if c, d, r := testutil.ToFloat64(count)-c0, testutil.ToFloat64(do)-d0, testutil.ToFloat64(rc)-r0; c != 2 || d != wantDo || r != 2 {
			t.Errorf("%s: requests %v, DO %v, NXDOMAIN %v; want 2, %v, 2 under zone %s", tc.name, c, d, r, wantDo, tc.zone)
		}
	}
}

// TestEntryHoldsItsParts: an entry gives back the key, answer, offsets and
// header it was made with, whatever their lengths, and refuses lengths its
// header cannot hold.
func TestEntryHoldsItsParts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		key, resp []byte
		l         layout
	}{
		{"empty", nil, nil, layout{}},
		{"odd lengths", []byte("k"), []byte("abc"), layout{nameLen: 3, ttls: []uint16{1}, opt: 2, ttl: 7}},
		{"typical", bytes.Repeat([]byte{'k'}, 29), bytes.Repeat([]byte{'r'}, 301),
			layout{nameLen: 27, ttls: []uint16{45, 61, 300}, opt: 290, ttl: 30}},
		{"largest offsets", []byte("key"), make([]byte, 1220), layout{nameLen: 255, ttls: []uint16{0xfffe, 0x0102}, opt: 1219, ttl: 1<<32 - 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEntry(tc.key, tc.resp, tc.l, -5, 1<<62)
			if e == nil {
				t.Fatal("no entry")
			}
			if uintptr(unsafe.Pointer(e))%unsafe.Alignof(*e) != 0 {
				t.Errorf("entry at %p, not aligned", e)
			}
			if !bytes.Equal(e.key(), tc.key) || !bytes.Equal(e.resp(), tc.resp) {
				t.Errorf("key %q, answer %q; want %q, %q", e.key(), e.resp(), tc.key, tc.resp)
			}
			var ttls []uint16
			for o := e.ttlOffsets(); len(o) >= 2; o = o[2:] {
				ttls = append(ttls, binary.BigEndian.Uint16(o))
			}
			if !slices.Equal(ttls, tc.l.ttls) {
				t.Errorf("TTL offsets %v, want %v", ttls, tc.l.ttls)
			}
			if e.stored != -5 || e.until != 1<<62 || e.ttl != tc.l.ttl || int(e.nameLen) != tc.l.nameLen || int(e.opt) != tc.l.opt {
				t.Errorf("header %+v, want layout %+v", *e, tc.l)
			}
		})
	}
	if newEntry([]byte("k"), make([]byte, 1<<16), layout{}, 0, 1) != nil {
		t.Error("an answer longer than the header's length field stored")
	}
}

// TestStoreKeepsServedEntries: a name served between the stores of a flood
// of names asked once stays in its full shard; the flood evicts its own.
// (Without the second chance, any entry of a full shard is as likely to go:
// the served name would not outlast a flood of a hundred times the shard.)
func TestStoreKeepsServedEntries(t *testing.T) {
	st := newStore(16 * shards)
	hot := []byte("hot.example.org\x00\x01")
	st.put(newEntry(hot, nil, layout{}, 0, 1<<62))
	sh := st.shardOf(st.hash(hot))
	flooded := 0
	for i := 0; flooded < 100*st.perShard; i++ {
		k := []byte(fmt.Sprintf("flood-%d.example.org\x00\x01", i))
		if st.shardOf(st.hash(k)) != sh {
			continue
		}
		flooded++
		st.put(newEntry(k, nil, layout{}, 1, 1<<62))
		if st.get(hot, 1) == nil {
			t.Fatalf("the served name evicted after %d names of its shard asked once (shard capacity %d)", flooded, st.perShard)
		}
	}
	if sh.n != st.perShard {
		t.Errorf("%d entries in the flooded shard, capacity %d", sh.n, st.perShard)
	}
}
