package fastcache

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/plugin/metrics/vars"
	_ "github.com/coredns/coredns/plugin/whoami"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// upstream is an authoritative server for example.org standing in for
// kube-dns: deterministic answers of every shape the differential test
// needs.
func authServer(t *testing.T) string {
	t.Helper()
	rr := func(s string) dns.RR { return newRR(t, s) }
	soa := rr("example.org. 60 IN SOA ns.example.org. hostmaster.example.org. 1 7200 3600 1209600 30")
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		q := r.Question[0]
		name := strings.ToLower(q.Name)
		switch {
		case name == "a.example.org." && q.Qtype == dns.TypeA:
			m.Answer = []dns.RR{rr(q.Name + " 300 IN A 192.0.2.1"), rr(q.Name + " 300 IN A 192.0.2.2")}
		case name == "a.example.org." && q.Qtype == dns.TypeAAAA:
			m.Answer = []dns.RR{rr(q.Name + " 300 IN AAAA 2001:db8::1")}
		case name == "a.example.org.":
			m.Ns = []dns.RR{soa} // NODATA
		case name == "cname.example.org.":
			m.Answer = []dns.RR{rr(q.Name + " 300 IN CNAME c2.example.org."), rr("c2.example.org. 300 IN CNAME a.example.org."), rr("a.example.org. 300 IN A 192.0.2.1")}
		case name == "_dns._udp.example.org." && q.Qtype == dns.TypeSRV:
			m.Answer = []dns.RR{rr(q.Name + " 300 IN SRV 0 100 53 a.example.org.")}
			m.Extra = []dns.RR{rr("a.example.org. 300 IN A 192.0.2.1")}
		case name == "1.2.0.192.in-addr.arpa." && q.Qtype == dns.TypePTR:
			m.Answer = []dns.RR{rr(q.Name + " 300 IN PTR a.example.org.")}
		case name == "txt.example.org." && q.Qtype == dns.TypeTXT:
			m.Answer = []dns.RR{rr(q.Name + ` 300 IN TXT "v=spf1 -all" "second string"`)}
		case name == "big.example.org.":
			for i := range 60 {
				m.Answer = append(m.Answer, rr(fmt.Sprintf("%s 300 IN A 198.51.100.%d", q.Name, i+1)))
			}
		case name == "mid.example.org.":
			for i := range 24 {
				m.Answer = append(m.Answer, rr(fmt.Sprintf("%s 300 IN A 198.51.100.%d", q.Name, i+1)))
			}
		default:
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{soa}
		}
		if o := r.IsEdns0(); o != nil {
			m.SetEdns0(4096, o.Do())
			if o.Do() {
				m.AuthenticatedData = true
			}
		}
		_ = w.WriteMsg(m)
	})
	return testUpstream(t, h)
}

// newRR parses the record s.
func newRR(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func freePort(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// startCoreDNS starts CoreDNS on 127.0.0.1 with the Corefile body
// (without its first line) under a zone block and returns its address.
func startCoreDNS(t *testing.T, zones, body string) string {
	t.Helper()
	Register()
	dnsserver.Quiet = true
	var (
		port int
		inst *caddy.Instance
		err  error
	)
	// A port free for UDP may be taken for TCP: try another.
	for range 5 {
		port = freePort(t)
		var blocks []string
		for _, z := range strings.Fields(zones) {
			blocks = append(blocks, fmt.Sprintf("%s:%d {\n    bind 127.0.0.1\n%s\n}\n", z, port, body))
		}
		inst, err = caddy.Start(caddy.CaddyfileInput{Contents: []byte(strings.Join(blocks, "")), ServerTypeName: "dns"})
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		t.Fatalf("starting CoreDNS: %v", err)
	}
	t.Cleanup(func() {
		inst.Stop()
		inst.ShutdownCallbacks()
	})
	Attached(2 * time.Second)
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// fastConn waits for the fast path's socket on addr: CoreDNS starts
// serving, which starts the fast path, after caddy.Start returns.
func fastConn(t *testing.T, addr string) *conn {
	t.Helper()
	for range 100 {
		listeners.mu.Lock()
		l := listeners.m["dns://"+addr]
		var c *conn
		if l != nil {
			c = l.conn
		}
		listeners.mu.Unlock()
		if c != nil {
			return c
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no fast path on %s", addr)
	return nil
}

type probe struct {
	name    string
	qtype   uint16
	edns    bool
	do      bool
	cd, ad  bool
	bufsize uint16
	// fast is whether the fast path answers it once stored.
	fast bool
}

func (p probe) msg() *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(p.name, p.qtype)
	m.CheckingDisabled = p.cd
	m.AuthenticatedData = p.ad
	if p.edns {
		m.SetEdns0(p.bufsize, p.do)
	}
	return m
}

// normal is m as text with the ID and every TTL but the OPT record's set to
// zero: what the differential test compares.
func normal(m *dns.Msg) string {
	m = m.Copy()
	m.Id = 0
	for _, s := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, r := range s {
			if r.Header().Rrtype != dns.TypeOPT {
				r.Header().Ttl = 0
			}
		}
	}
	return m.String()
}

func exchange(t *testing.T, net, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: net, Timeout: 2 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s to %s: %v", dns.TypeToString[m.Question[0].Qtype], m.Question[0].Name, addr, err)
	}
	return r
}

// TestDifferential sends the same queries to fastcache and to CoreDNS's
// cache (a miss, then hits, until the fast path answers one) and compares
// all of the last answers but the ID and the TTLs.
func TestDifferential(t *testing.T) {
	up := authServer(t)
	// With GOMAXPROCS 1 the fast path waits in Go's poller; with more, its
	// reader blocks in the kernel.
	for _, procs := range []int{1, max(2, runtime.GOMAXPROCS(0))} {
		t.Run(fmt.Sprintf("GOMAXPROCS=%d", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			testDifferential(t, up, procs >= 2)
		})
	}
}

func testDifferential(t *testing.T, up string, blocking bool) {
	body := "    errors\n    %s {\n        success 1000 30\n        denial 1000 5\n    }\n    forward . " + up
	fast := startCoreDNS(t, ". node-local-coredns.invalid.", fmt.Sprintf(body, "fastcache"))
	stock := startCoreDNS(t, ". node-local-coredns.invalid.", fmt.Sprintf(body, "cache"))
	if c := fastConn(t, fast); c.blocking != blocking {
		t.Fatalf("the fast path on %s has a blocking reader: %v, want %v", fast, c.blocking, blocking)
	}

	probes := []probe{
		{name: "a.example.org.", qtype: dns.TypeA, fast: true},
		{name: "a.example.org.", qtype: dns.TypeAAAA, fast: true},
		{name: "A.ExAmPlE.oRg.", qtype: dns.TypeA, fast: true},
		{name: "cname.example.org.", qtype: dns.TypeA, fast: true},
		{name: "CNAME.example.org.", qtype: dns.TypeA, fast: true},
		{name: "_dns._udp.example.org.", qtype: dns.TypeSRV, fast: true},
		{name: "1.2.0.192.in-addr.arpa.", qtype: dns.TypePTR, fast: true},
		{name: "txt.example.org.", qtype: dns.TypeTXT, fast: true},
		{name: "nx.example.org.", qtype: dns.TypeA, fast: true},
		{name: "Nx.Example.org.", qtype: dns.TypeAAAA, fast: true},
		{name: "a.example.org.", qtype: dns.TypeMX, fast: true},
		{name: "a.example.org.", qtype: dns.TypeA, edns: true, bufsize: 1232, fast: true},
		{name: "a.example.org.", qtype: dns.TypeA, edns: true, bufsize: 4096, do: true, fast: true},
		{name: "a.example.org.", qtype: dns.TypeA, edns: true, bufsize: 512, do: true, cd: true, fast: true},
		{name: "a.example.org.", qtype: dns.TypeA, edns: true, bufsize: 100, ad: true, fast: true},
		{name: "a.example.org.", qtype: dns.TypeA, ad: true, fast: true},
		{name: "mid.example.org.", qtype: dns.TypeA, edns: true, bufsize: 1232, fast: true},
		// Too large for the client: truncated by CoreDNS, never fast.
		{name: "mid.example.org.", qtype: dns.TypeA},
		{name: "big.example.org.", qtype: dns.TypeA},
		{name: "big.example.org.", qtype: dns.TypeA, edns: true, bufsize: 1232},
		// Large answers are compressed by CoreDNS: left to it.
		{name: "big.example.org.", qtype: dns.TypeA, edns: true, bufsize: 4096},
		// DS is routed by CoreDNS's server to the parent zone.
		{name: "a.example.org.", qtype: dns.TypeDS},
		// Answered by whoami in its own block: not cached at all.
		{name: "node-local-coredns.invalid.", qtype: dns.TypeA},
	}
	for _, p := range probes {
		t.Run(fmt.Sprintf("%s/%s/edns=%v,do=%v,cd=%v,ad=%v,size=%d", p.name, dns.TypeToString[p.qtype], p.edns, p.do, p.cd, p.ad, p.bufsize), func(t *testing.T) {
			// The answer is stored after it is sent: under load the next
			// query may still beat it to the store. Ask until the fast path
			// answers (a few times at most), or three times when it must not.
			// Every answer is compared: the miss's, the cache's hits and
			// the fast path's.
			var got, want *dns.Msg
			var fastAnswers float64
			for i := 0; i < 3 || (p.fast && fastAnswers == 0 && i < 20); i++ {
				before := served(".")
				got = exchange(t, "udp", fast, p.msg())
				want = exchange(t, "udp", stock, p.msg())
				fastAnswers += served(".") - before
				if g, w := normal(got), normal(want); g != w {
					t.Errorf("query %d: fastcache answered\n%s\nCoreDNS's cache answered\n%s", i+1, g, w)
				}
				if i == 0 && p.fast && !storedWithin(t, fast, ".", p.msg(), time.Second) {
					// With only success and denial options the answer is
					// stored when the cache stores it: at the miss.
					t.Error("not stored for the fast path after the first answer")
				}
			}
			if p.fast && fastAnswers == 0 {
				t.Error("the fast path never answered")
			}
			if !p.fast && fastAnswers != 0 {
				t.Errorf("fast path answered %v queries it should leave to CoreDNS", fastAnswers)
			}
			// The IDs match (the client checks); the TTLs are the cache's
			// capped 30 s (5 s for denials), aged by at most a second.
			for _, s := range [][]dns.RR{got.Answer, got.Ns, got.Extra} {
				for _, r := range s {
					if ttl := r.Header().Ttl; r.Header().Rrtype != dns.TypeOPT && (ttl > 30 || ttl < 3) {
						t.Errorf("TTL %d in %s", ttl, r)
					}
				}
			}
			// Over TCP, both are CoreDNS's cache.
			if g, w := normal(exchange(t, "tcp", fast, p.msg())), normal(exchange(t, "tcp", stock, p.msg())); g != w {
				t.Errorf("over TCP fastcache answered\n%s\nCoreDNS's cache answered\n%s", g, w)
			}
		})
	}
}

// untilFast asks q until the fast path answers it (the answer is stored
// after the miss's is sent, so a query may come before it).
// It returns how many queries it sent.
func untilFast(t *testing.T, addr string, q *dns.Msg, zone string) int {
	t.Helper()
	for i := range 20 {
		before := served(zone)
		exchange(t, "udp", addr, q)
		if served(zone) > before {
			return i + 1
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the fast path never answered %s", q.Question[0].Name)
	return 0
}

// storedWithin reports whether the fast path on addr holds an answer to q
// in zone's store within d (it stores after answering).
func storedWithin(t *testing.T, addr, zone string, q *dns.Msg, d time.Duration) bool {
	t.Helper()
	wire, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	var (
		pq  query
		buf [maxKey]byte
	)
	if !parseQuery(wire, buf[:], &pq) {
		t.Fatalf("the fast path does not parse %s", q.Question[0].Name)
	}
	for deadline := time.Now().Add(d); ; time.Sleep(5 * time.Millisecond) {
		listeners.mu.Lock()
		var f *FastCache
		if l := listeners.m["dns://"+addr]; l != nil {
			f = l.zones[zoneKey(zone)]
		}
		listeners.mu.Unlock()
		if f != nil && f.lookup(pq.key, f.store.now(), 0) != nil {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// served counts the fast path's answers for zone.
func served(zone string) float64 { return testutil.ToFloat64(hits.WithLabelValues(zone)) }

// TestFastPathOff: where a plugin before fastcache acts on every query
// (log), the fast path answers nothing and fastcache is CoreDNS's cache.
func TestFastPathOff(t *testing.T) {
	up := authServer(t)
	addr := startCoreDNS(t, "off.example.org.", "    log\n    fastcache\n    forward . "+up)
	before := served("off.example.org.")
	for range 4 {
		m := exchange(t, "udp", addr, queryMsg("a.off.example.org.", dns.TypeA))
		if m.Rcode != dns.RcodeNameError {
			t.Fatalf("answer %v", m)
		}
	}
	if n := served("off.example.org.") - before; n != 0 {
		t.Errorf("fast path answered %v queries behind the log plugin", n)
	}
}

// TestRequestMetrics: with the prometheus plugin, the fast path's answers
// are counted in CoreDNS's request metrics as the plugin counts them.
func TestRequestMetrics(t *testing.T) {
	up := authServer(t)
	addr := startCoreDNS(t, "metrics.example.org.", "    prometheus 127.0.0.1:0\n    fastcache\n    forward . "+up)
	server := "dns://" + addr
	count := func() float64 {
		return testutil.ToFloat64(vars.RequestCount.WithLabelValues(server, "metrics.example.org.", "", "udp", "1", "A"))
	}
	rcodes := func() float64 {
		return testutil.ToFloat64(vars.ResponseRcode.WithLabelValues(server, "metrics.example.org.", "", "NXDOMAIN", "fastcache"))
	}
	// The plugin chain counts a query after its answer is sent, and the fast
	// path reports to CoreDNS's metrics in batches: within 100 ms (a
	// blocking reader) or its read deadline (2 s, in Go's poller) once
	// queries stop. Wait until every query sent is counted.
	reqs0, nx0 := count(), rcodes()
	waitCount := func(want float64) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); count() < want && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	}
	sent := untilFast(t, addr, queryMsg("x.metrics.example.org.", dns.TypeA), "metrics.example.org.")
	waitCount(reqs0 + float64(sent))
	fast, reqs, nx := served("metrics.example.org."), count(), rcodes()
	if reqs-reqs0 != float64(sent) || nx-nx0 != float64(sent) {
		t.Fatalf("%v queries counted, %v NXDOMAIN answers, for %d sent", reqs-reqs0, nx-nx0, sent)
	}
	for range 5 {
		exchange(t, "udp", addr, queryMsg("x.metrics.example.org.", dns.TypeA))
	}
	if n := served("metrics.example.org."); n-fast != 5 {
		t.Fatalf("fast path answered %v of 5 hits", n-fast)
	}
	waitCount(reqs + 5)
	time.Sleep(50 * time.Millisecond) // and nothing more comes
	if n := count() - reqs; n != 5 {
		t.Errorf("coredns_dns_requests_total grew by %v for 5 fast answers", n)
	}
	if n := rcodes() - nx; n != 5 {
		t.Errorf("coredns_dns_responses_total{rcode=NXDOMAIN} grew by %v for 5 fast answers", n)
	}
}

// TestReloadAndStop: the fast path goes on across a reload (the new
// instance's caches, the same socket) and its socket is gone after stop.
func TestReloadAndStop(t *testing.T) {
	up := authServer(t)
	Register()
	dnsserver.Quiet = true
	var inst *caddy.Instance
	var corefile string
	var err error
	for range 5 {
		port := freePort(t)
		corefile = fmt.Sprintf("reload.example.org.:%d {\n    bind 127.0.0.1\n    fastcache\n    forward . %s\n}\n", port, up)
		inst, err = caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), ServerTypeName: "dns"})
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	addr := inst.Servers()[0].LocalAddr().String()
	ask := func() {
		t.Helper()
		if m := exchange(t, "udp", addr, queryMsg("a.reload.example.org.", dns.TypeA)); m.Rcode != dns.RcodeNameError {
			t.Fatalf("answer %v", m)
		}
	}
	untilFast(t, addr, queryMsg("a.reload.example.org.", dns.TypeA), "reload.example.org.")
	inst, err = inst.Restart(caddy.CaddyfileInput{Contents: []byte(corefile + "\n"), ServerTypeName: "dns"})
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	ask() // the new instance's cache is empty: a miss
	untilFast(t, addr, queryMsg("a.reload.example.org.", dns.TypeA), "reload.example.org.")
	inst.Stop()
	inst.ShutdownCallbacks()
	c := &dns.Client{Timeout: 300 * time.Millisecond}
	if _, _, err := c.Exchange(queryMsg("a.reload.example.org.", dns.TypeA), addr); err == nil {
		t.Error("answered after stop")
	}
	// The address is free again: nothing of ours holds it.
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("address still taken after stop: %v", err)
	}
	pc.Close()
}

// TestWorkersServeMisses: the queries the fast path passes on are served by
// at most maxWorkers workers, reused from one query to the next; past them,
// in miekg/dns's goroutine; every one is answered.
func TestWorkersServeMisses(t *testing.T) {
	up := testUpstream(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		time.Sleep(100 * time.Millisecond)
		m := new(dns.Msg)
		m.SetReply(r)
		m.Rcode = dns.RcodeNameError
		_ = w.WriteMsg(m)
	}))
	addr := startCoreDNS(t, ".", "    fastcache {\n        success 1000 30\n    }\n    forward . "+up+" {\n        max_concurrent 1000\n    }")
	l := fastConn(t, addr).l
	if l == nil {
		t.Fatal("no fast path")
	}
	ask := func(name string) error {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Timeout: 3 * time.Second}
		r, _, err := c.Exchange(q, addr)
		if err == nil && r.Rcode != dns.RcodeNameError {
			err = fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
		}
		return err
	}
	// More at once than there are workers.
	const concurrent = 2 * maxWorkers
	errs := make(chan error, concurrent)
	for i := range concurrent {
		go func() { errs <- ask(fmt.Sprintf("burst-%d.example.org.", i)) }()
	}
	for range concurrent {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	n := l.workers.Load()
	if n < 1 || n > maxWorkers {
		t.Fatalf("%d workers after %d queries at once, want 1 to %d", n, concurrent, maxWorkers)
	}
	// One after another: an idle worker takes each, from the fast path's
	// reader itself, and answers from the queried address (the client's
	// socket is connected to it).
	handed := l.handedOff.Load()
	for i := range 10 {
		if err := ask(fmt.Sprintf("seq-%d.example.org.", i)); err != nil {
			t.Fatal(err)
		}
	}
	if m := l.workers.Load(); m != n {
		t.Errorf("%d workers after queries one at a time, %d before: not reused", m, n)
	}
	if d := l.handedOff.Load() - handed; d != 10 {
		t.Errorf("the reader handed %d of 10 misses to workers itself", d)
	}
}
