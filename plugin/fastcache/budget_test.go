package fastcache

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The budget counts each key once, frees what has passed its retention
// (at most once a second), and refuses what does not fit.
func TestBudgetAdmit(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := &budget{limit: 10 * goCost * 1000, held: map[string]charge{}}
	steps := []struct {
		key  string
		n    int
		at   time.Time
		life time.Duration
		ok   bool
		used int64
	}{
		{"a", 4000, t0, time.Minute, true, 4000},
		{"b", 4000, t0, 10 * time.Second, true, 8000},
		{"a", 5000, t0, time.Minute, true, 9000},                       // a replaced, not added
		{"c", 2000, t0, time.Minute, false, 9000},                      // over the limit
		{"c", 2000, t0.Add(5 * time.Second), time.Minute, false, 9000}, // b still held
		{"c", 2000, t0.Add(11 * time.Second), time.Minute, true, 7000}, // b past its retention
		{"d", 4000, t0.Add(11 * time.Second), time.Minute, false, 7000},
		{"d", 4000, t0.Add(70 * time.Second), time.Minute, true, 6000}, // a gone, c held till 71 s
	}
	for i, s := range steps {
		if ok := b.admit(s.key, s.n, s.at, s.at.Add(s.life)); ok != s.ok {
			t.Errorf("step %d (%s, %d bytes): admitted %t, want %t", i, s.key, s.n, ok, s.ok)
		}
		if got := b.inUse(); got != s.used*goCost {
			t.Errorf("step %d: %d bytes counted, want %d", i, got, s.used*goCost)
		}
	}
}

// Large answers fill the budget and no more: past it they are answered in
// full but not cached (kube-dns is asked again), while the ones admitted
// are answered from the cache.
func TestLargeAnswersBudget(t *testing.T) {
	var (
		mu    sync.Mutex
		asked = map[string]int{}
	)
	up := testUpstream(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		mu.Lock()
		asked[strings.ToLower(q.Name)]++
		mu.Unlock()
		for i := range 40 { // about 9.3 KB
			txt := fmt.Sprintf("%03d%s", i, strings.Repeat("x", 197))
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300}, Txt: []string{txt}})
		}
		_ = w.WriteMsg(m)
	}))
	addr := startCoreDNS(t, "example.org.", "    fastcache\n    forward . "+up)
	const fits = 5
	answerSize := 0
	largeAnswers.mu.Lock()
	saved := largeAnswers.limit
	// Room for five of them: set after CoreDNS's setup sized the budget.
	largeAnswers.limit = largeAnswers.used + fits*goCost*9400
	largeAnswers.mu.Unlock()
	t.Cleanup(func() {
		largeAnswers.mu.Lock()
		largeAnswers.limit = saved
		largeAnswers.mu.Unlock()
	})
	before := testutil.ToFloat64(uncached.WithLabelValues("example.org."))
	const names = 20
	for round := range 2 {
		for i := range names {
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("large-%d.example.org.", i), dns.TypeTXT)
			r := exchange(t, "tcp", addr, m)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 40 {
				t.Fatalf("round %d, name %d: rcode %d, %d records, want the 40", round, i, r.Rcode, len(r.Answer))
			}
			answerSize = r.Len()
		}
	}
	if answerSize <= largeAnswer {
		t.Fatalf("answers of %d bytes are not large", answerSize)
	}
	mu.Lock()
	defer mu.Unlock()
	cached := 0
	for i := range names {
		switch n := asked[fmt.Sprintf("large-%d.example.org.", i)]; n {
		case 1:
			cached++
		case 2:
		default:
			t.Errorf("large-%d asked upstream %d times, want 1 (cached) or 2 (not)", i, n)
		}
	}
	if cached != fits {
		t.Errorf("%d of %d large answers cached, want the %d the budget holds", cached, names, fits)
	}
	if got := testutil.ToFloat64(uncached.WithLabelValues("example.org.")) - before; got != 2*(names-fits) {
		t.Errorf("%.0f answers counted as uncached, want %d", got, 2*(names-fits))
	}
	if used, limit := largeAnswers.inUse(), largeAnswers.budgetBytes(); used > limit {
		t.Errorf("%d bytes counted, over the budget of %d", used, limit)
	}
}

// testUpstream serves h over UDP and TCP on one loopback port (a port free
// for UDP may be taken for TCP: another is tried).
func testUpstream(t *testing.T, h dns.Handler) string {
	t.Helper()
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	for range 5 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	us := &dns.Server{PacketConn: pc, Handler: h}
	ts := &dns.Server{Listener: ln, Handler: h}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	t.Cleanup(func() { us.Shutdown(); ts.Shutdown() })
	return pc.LocalAddr().String()
}

// mayHold finds what the budget counts for a request's name and type, in
// any case and with any DO and CD bits, under the zone's cache, until its
// retention passes.
func TestBudgetMayHold(t *testing.T) {
	b := &budget{limit: 1 << 20, held: map[string]charge{}}
	req := func(name string, qtype uint16, do, cd bool) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if do {
			m.SetEdns0(1232, true)
		}
		m.CheckingDisabled = cd
		return m
	}
	now := time.Now()
	if b.mayHold("example.org.", req("a.example.org.", dns.TypeA, false, false)) {
		t.Fatal("an empty budget holds a name")
	}
	w := &budgetWriter{f: &FastCache{zone: "example.org."}, req: req("Big.Example.org.", dns.TypeTXT, true, false)}
	b.admit(w.key(), 2000, now, now.Add(time.Hour))
	w = &budgetWriter{f: &FastCache{zone: "example.org."}, req: req("gone.example.org.", dns.TypeA, false, false)}
	b.admit(w.key(), 2000, now.Add(-2*time.Hour), now.Add(-time.Hour))
	for _, tc := range []struct {
		zone string
		r    *dns.Msg
		want bool
	}{
		{"example.org.", req("big.example.org.", dns.TypeTXT, false, false), true},
		{"example.org.", req("BIG.EXAMPLE.ORG.", dns.TypeTXT, false, true), true},
		{"example.org.", req("big.example.org.", dns.TypeTXT, true, true), true},
		{"example.org.", req("big.example.org.", dns.TypeA, false, false), false},
		{"example.org.", req("other.example.org.", dns.TypeTXT, false, false), false},
		{".", req("big.example.org.", dns.TypeTXT, false, false), false},
		{"example.org.", req("gone.example.org.", dns.TypeA, false, false), false},
		{"example.org.", &dns.Msg{}, true}, // no question to look up: maybe
	} {
		name := "(none)"
		if len(tc.r.Question) == 1 {
			name = tc.r.Question[0].Name
		}
		if got := b.mayHold(tc.zone, tc.r); got != tc.want {
			t.Errorf("mayHold(%s, %s) = %v, want %v", tc.zone, name, got, tc.want)
		}
	}
}
