package spread

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/node-local-coredns/node-local-coredns/internal/coro"
)

// kubeDNS is one fake kube-dns endpoint on loopback, over TCP: it answers
// every A query with its own address, and the endpoints' name with the
// addresses it is given; it can be made slow or silent.
type kubeDNS struct {
	addr    string
	srv     *dns.Server
	delay   atomic.Int64 // ns before answering
	silent  atomic.Bool  // reads and never answers
	queries atomic.Int64
	names   *endpointList
}

type endpointList struct {
	mu    sync.Mutex
	addrs []string
	rcode int
}

func (l *endpointList) set(rcode int, addrs ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rcode, l.addrs = rcode, addrs
}

const epName = "endpoints.kube-system.svc.cluster.local."

func startKubeDNS(t *testing.T, names *endpointList) *kubeDNS {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k := &kubeDNS{addr: ln.Addr().String(), names: names}
	k.srv = &dns.Server{Listener: ln, Net: "tcp", Handler: dns.HandlerFunc(k.serve)}
	go k.srv.ActivateAndServe()
	t.Cleanup(func() { k.srv.Shutdown() })
	return k
}

func (k *kubeDNS) serve(w dns.ResponseWriter, r *dns.Msg) {
	if k.silent.Load() {
		return
	}
	if q := r.Question[0]; q.Name == epName {
		k.names.mu.Lock()
		m := new(dns.Msg)
		m.SetRcode(r, k.names.rcode)
		for _, a := range k.names.addrs {
			host, _, _ := net.SplitHostPort(a)
			rr, _ := dns.NewRR(fmt.Sprintf("%s 5 IN A %s", epName, host))
			m.Answer = append(m.Answer, rr)
		}
		k.names.mu.Unlock()
		w.WriteMsg(m)
		return
	}
	k.queries.Add(1)
	if d := time.Duration(k.delay.Load()); d > 0 {
		time.Sleep(d)
	}
	m := new(dns.Msg)
	m.SetReply(r)
	rr, _ := dns.NewRR(r.Question[0].Name + " 5 IN TXT " + k.addr)
	m.Answer = append(m.Answer, rr)
	w.WriteMsg(m)
}

// newSpread parses the block and starts the plugin as CoreDNS would.
func newSpread(t *testing.T, block string) *Spread {
	t.Helper()
	s, err := parse(caddy.NewTestController("dns", block))
	if err != nil {
		t.Fatal(err)
	}
	s.log = func(string, ...any) {}
	s.startup(t.Name())
	t.Cleanup(s.shutdown)
	return s
}

// query sends one query through the plugin and returns who answered.
func query(t *testing.T, s *Spread, name string) (string, time.Duration, error) {
	t.Helper()
	r := new(dns.Msg)
	r.SetQuestion(name, dns.TypeTXT)
	w := dnstest.NewRecorder(&test.ResponseWriter{TCP: true})
	start := time.Now()
	_, err := s.ServeDNS(context.Background(), w, r)
	took := time.Since(start)
	if err != nil {
		return "", took, err
	}
	if w.Msg == nil || len(w.Msg.Answer) != 1 {
		return "", took, fmt.Errorf("answer %v", w.Msg)
	}
	return w.Msg.Answer[0].(*dns.TXT).Txt[0], took, nil
}

func waitEndpoints(t *testing.T, s *Spread, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(s.current()) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d endpoints known, want %d", len(s.current()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cluster is a Service (its own fake server, standing for the ClusterIP)
// and n endpoints the endpoints' name lists.
func cluster(t *testing.T, n int) (*kubeDNS, []*kubeDNS, *endpointList) {
	names := &endpointList{}
	svc := startKubeDNS(t, names)
	var eps []*kubeDNS
	var addrs []string
	for range n {
		k := startKubeDNS(t, names)
		eps = append(eps, k)
		addrs = append(addrs, k.addr)
	}
	names.set(dns.RcodeSuccess, addrs...)
	return svc, eps, names
}

func block(svc *kubeDNS, port string, extra string) string {
	return fmt.Sprintf("spread . %s {\n endpoints %s %s\n refresh 1s\n%s}", svc.addr, epName, port, extra)
}

func TestSpreadEvenly(t *testing.T) {
	svc, eps, _ := cluster(t, 3)
	// Every fake endpoint listens on its own port; the name's records give
	// the address and the block's port: one port each is not expressible, so
	// the endpoints are set directly after the first lookup shows it works.
	s := newSpread(t, block(svc, portOf(eps[0].addr), ""))
	waitEndpoints(t, s, 1)
	s.setEndpoints([]string{eps[0].addr, eps[1].addr, eps[2].addr})
	shares := map[string]int{}
	const n = 300
	for i := range n {
		who, _, err := query(t, s, fmt.Sprintf("q%d.example.", i))
		if err != nil {
			t.Fatal(err)
		}
		shares[who]++
	}
	for _, e := range eps {
		if got := shares[e.addr]; got < n*30/100 || got > n*36/100 {
			t.Errorf("endpoint %s answered %d of %d queries, want a third (%v)", e.addr, got, n, shares)
		}
	}
	if svc.queries.Load() != 0 {
		t.Errorf("the Service got %d queries while the endpoints were known", svc.queries.Load())
	}
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// TestFailover: one endpoint of three stops answering (its node is gone)
// or answers late; every query is still answered, within the hedge bound.
func TestFailover(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(k *kubeDNS)
	}{
		{"silent", func(k *kubeDNS) { k.silent.Store(true) }},
		{"slow", func(k *kubeDNS) { k.delay.Store(int64(1500 * time.Millisecond)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc, eps, _ := cluster(t, 3)
			s := newSpread(t, block(svc, portOf(eps[0].addr), " refresh 1h\n"))
			waitEndpoints(t, s, 1)
			s.setEndpoints([]string{eps[0].addr, eps[1].addr, eps[2].addr})
			for i := range 30 { // warm: connections open, answer times known
				if _, _, err := query(t, s, fmt.Sprintf("warm%d.example.", i)); err != nil {
					t.Fatal(err)
				}
			}
			tc.break_(eps[1])
			var slow, bad int
			var worst time.Duration
			shares := map[string]int{}
			const n = 400
			for i := range n {
				who, took, err := query(t, s, fmt.Sprintf("q%d.example.", i))
				if err != nil {
					t.Fatalf("query %d: %v", i, err)
				}
				if who == eps[1].addr {
					bad++
				}
				shares[who]++
				if took > 150*time.Millisecond {
					slow++
				}
				worst = max(worst, took)
				time.Sleep(5 * time.Millisecond)
			}
			// 400 queries over about 2.5 s: the broken endpoint is tried
			// first once, then once a penalty (1 s, 2 s) ends, alongside
			// another: at most the first few wait for the hedge.
			if slow > 3 {
				t.Errorf("%d of %d queries took over 150 ms (worst %s)", slow, n, worst)
			}
			if worst > 700*time.Millisecond {
				t.Errorf("the slowest query took %s", worst)
			}
			if bad != 0 {
				t.Errorf("%d answers came from the broken endpoint", bad)
			}
			// Its share goes to both others alike, not to the next one.
			for _, e := range []*kubeDNS{eps[0], eps[2]} {
				if got := shares[e.addr]; got < n*40/100 || got > n*60/100 {
					t.Errorf("endpoint %s answered %d of %d queries, want about half (%v)", e.addr, got, n, shares)
				}
			}
			if s.known[eps[1].addr].until.Load() == 0 {
				t.Error("the broken endpoint is not penalized")
			}
			// It answers again: it is back in the rotation once its
			// penalty is over and a trial query finds it answering.
			eps[1].silent.Store(false)
			eps[1].delay.Store(0)
			deadline := time.Now().Add(6 * time.Second)
			for s.known[eps[1].addr].until.Load() != 0 {
				if time.Now().After(deadline) {
					t.Fatal("the endpoint did not come back into the rotation")
				}
				if _, _, err := query(t, s, "again.example."); err != nil {
					t.Fatal(err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// TestServiceOnly: without a name, with a name that does not exist and
// with every endpoint gone, the queries go to the Service.
func TestServiceOnly(t *testing.T) {
	t.Run("no-name", func(t *testing.T) {
		svc, _, _ := cluster(t, 0)
		s := newSpread(t, fmt.Sprintf("spread . %s", svc.addr))
		if who, _, err := query(t, s, "a.example."); err != nil || who != svc.addr {
			t.Fatalf("answered by %q (%v), want the Service %s", who, err, svc.addr)
		}
	})
	t.Run("nxdomain", func(t *testing.T) {
		svc, eps, names := cluster(t, 2)
		s := newSpread(t, block(svc, portOf(eps[0].addr), ""))
		waitEndpoints(t, s, 1)
		names.set(dns.RcodeNameError)
		s.lookup()
		waitEndpoints(t, s, 0)
		if who, _, err := query(t, s, "a.example."); err != nil || who != svc.addr {
			t.Fatalf("answered by %q (%v), want the Service %s", who, err, svc.addr)
		}
	})
	t.Run("endpoints-down", func(t *testing.T) {
		svc, eps, _ := cluster(t, 2)
		s := newSpread(t, block(svc, portOf(eps[0].addr), " refresh 1h\n"))
		waitEndpoints(t, s, 1)
		s.setEndpoints([]string{eps[0].addr, eps[1].addr})
		for _, e := range eps {
			e.srv.Shutdown()
		}
		for i := range 5 {
			who, took, err := query(t, s, fmt.Sprintf("a%d.example.", i))
			if err != nil || who != svc.addr {
				t.Fatalf("answered by %q (%v), want the Service %s", who, err, svc.addr)
			}
			if took > time.Second {
				t.Errorf("query %d took %s", i, took)
			}
		}
	})
	t.Run("lookup-fails", func(t *testing.T) {
		svc, eps, names := cluster(t, 2)
		s := newSpread(t, block(svc, portOf(eps[0].addr), " refresh 1h\n"))
		waitEndpoints(t, s, 1)
		names.set(dns.RcodeServerFailure)
		s.lookup()
		if got := len(s.current()); got != 1 {
			t.Fatalf("%d endpoints after a failed lookup, want the 1 known", got)
		}
	})
}

func TestNoAnswer(t *testing.T) {
	svc, _, _ := cluster(t, 0)
	svc.silent.Store(true)
	s := newSpread(t, fmt.Sprintf("spread . %s {\n read_timeout 200ms\n}", svc.addr))
	start := time.Now()
	r := new(dns.Msg)
	r.SetQuestion("a.example.", dns.TypeA)
	rcode, err := s.ServeDNS(context.Background(), dnstest.NewRecorder(&test.ResponseWriter{TCP: true}), r)
	if rcode != dns.RcodeServerFailure || err == nil {
		t.Fatalf("rcode %s, err %v; want SERVFAIL", dns.RcodeToString[rcode], err)
	}
	if took := time.Since(start); took > 700*time.Millisecond {
		t.Errorf("SERVFAIL after %s, want within the attempts' staggered read timeouts", took)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in, err string
	}{
		{"spread . 10.0.0.10", ""},
		{"spread . 10.0.0.10:5353 [fd00::10]:53", ""},
		{"spread . 10.0.0.10 {\n endpoints ep.kube-system.svc.cluster.local 53\n refresh 5s\n hedge 50ms 400ms\n attempts 2\n read_timeout 900ms\n expire 10s\n max_concurrent 100\n}", ""},
		{"spread .", "Wrong argument count"},
		{"spread . kube-dns", "not an IP address"},
		{"spread . 10.0.0.10 {\n hedge 500ms 100ms\n}", "MIN <= MAX"},
		{"spread . 10.0.0.10 {\n attempts 9\n}", "between 1 and 4"},
		{"spread . 10.0.0.10 {\n refresh 10ms\n}", "refresh: 10ms is below 1s"},
		{"spread . 10.0.0.10 {\n endpoints a.b 0\n}", "not a port"},
		{"spread . 10.0.0.10 {\n max_concurrent 0\n}", "not positive"},
		{"spread . 10.0.0.10 {\n bogus\n}", "unknown property"},
		{"spread . 10.0.0.10\nspread . 10.0.0.11", "once per server block"},
	} {
		_, err := parse(caddy.NewTestController("dns", tc.in))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
		}
	}
}

// TestPlan: the order a query tries the upstreams in.
func TestPlan(t *testing.T) {
	s, err := parse(caddy.NewTestController("dns", "spread . 10.0.0.10"))
	if err != nil {
		t.Fatal(err)
	}
	s.m = newServerMetrics("plan")
	now := time.Unix(1000, 0)
	s.clock = func() time.Time { return now }
	mk := func(addr string, until time.Duration) *upstream {
		u := s.newUpstream(addr, false)
		u.m = s.m.upstream(addr, false)
		if until != 0 {
			u.until.Store(now.Add(until).UnixNano())
		}
		return u
	}
	for _, u := range s.service {
		u.m = s.m.upstream(u.addr, true)
	}
	names := func(p []attempt) []string {
		var out []string
		for _, a := range p {
			n := a.u.addr
			if a.trial {
				n += "(trial)"
			}
			out = append(out, n)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		eps  []*upstream
		want []string
	}{
		{"none", nil, []string{"10.0.0.10:53", "10.0.0.10:53", "10.0.0.10:53"}},
		{"healthy", []*upstream{mk("a", 0), mk("b", 0), mk("c", 0)}, []string{"b", "c", "a"}},
		{"one-penalized", []*upstream{mk("a", 0), mk("b", time.Second), mk("c", 0)}, []string{"c", "a", "b"}},
		{"penalty-over", []*upstream{mk("a", 0), mk("b", -time.Second), mk("c", 0)}, []string{"b(trial)", "c", "a"}},
		{"all-penalized", []*upstream{mk("a", 3*time.Second), mk("b", time.Second)}, []string{"b", "a", "10.0.0.10:53"}},
		{"one", []*upstream{mk("a", 0)}, []string{"a", "10.0.0.10:53"}},
		{"one-try-penalty-over", []*upstream{mk("a", 0), mk("b", -time.Second)}, []string{"b"}},
		{"one-try-penalized", []*upstream{mk("a", time.Second), mk("b", 2*time.Second)}, []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.rr.Store(0)
			s.attempts = 3
			if strings.HasPrefix(tc.name, "one-try") {
				s.attempts = 1
			}
			eps := tc.eps
			s.endpoints.Store(&eps)
			if got := names(s.plan(nil)); !slices.Equal(got, tc.want) {
				t.Errorf("plan %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRefusedTrialReleased: a query refused at max_concurrent that would
// have tried a penalized endpoint leaves the trial to the next query.
func TestRefusedTrialReleased(t *testing.T) {
	svc, eps, _ := cluster(t, 2)
	s := newSpread(t, block(svc, portOf(eps[0].addr), " refresh 1h\n max_concurrent 1\n"))
	waitEndpoints(t, s, 1)
	s.setEndpoints([]string{eps[0].addr, eps[1].addr})
	for _, u := range s.current() {
		u.until.Store(time.Now().Add(-time.Second).UnixNano()) // penalties over
	}
	s.inFlight.Store(1) // max_concurrent reached
	if _, _, err := query(t, s, "refused.example."); err == nil || !strings.Contains(err.Error(), "too many") {
		t.Fatalf("error %v, want the limit", err)
	}
	for _, u := range s.current() {
		if u.trial.Load() {
			t.Errorf("endpoint %s still holds a trial no query runs", u.addr)
		}
	}
	s.inFlight.Store(0)
}

// TestShutdownWithoutStartup: an instance CoreDNS set up but never started
// (a reload that failed) shuts down at once.
func TestShutdownWithoutStartup(t *testing.T) {
	s, err := parse(caddy.NewTestController("dns", "spread . 10.0.0.10 {\n endpoints a.example\n}"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.shutdown(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown of an instance never started hangs")
	}
}

// TestTriersReused: a first attempt answered within its limit runs in the
// query's goroutine, waking no trier; attempts past their limit run in
// long-lived triers, reused from query to query, not in goroutines of their
// own each; the answer to an attempt that passed its limit still wins when
// it comes first; and the triers end with the plugin.
func TestTriersReused(t *testing.T) {
	svc, _, _ := cluster(t, 0)
	s, err := parse(caddy.NewTestController("dns", fmt.Sprintf("spread . %s {\n hedge 20ms 20ms\n}", svc.addr)))
	if err != nil {
		t.Fatal(err)
	}
	s.log = func(string, ...any) {}
	s.startup(t.Name())
	for i := range 20 {
		if _, _, err := query(t, s, fmt.Sprintf("a%d.example.", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.triers.Load(); n != 0 {
		t.Errorf("%d triers after 20 queries answered within their limit, want 0", n)
	}
	svc.delay.Store(int64(60 * time.Millisecond))
	before := svc.queries.Load()
	for i := range 5 {
		who, took, err := query(t, s, fmt.Sprintf("slow%d.example.", i))
		if err != nil {
			t.Fatal(err)
		}
		if who != svc.addr || took < 60*time.Millisecond || took > 500*time.Millisecond {
			t.Errorf("slow query %d answered by %s in %v, want %s's answer after 60 ms", i, who, took, svc.addr)
		}
		time.Sleep(70 * time.Millisecond) // the hedge's answer is back too
	}
	if got := svc.queries.Load() - before; got < 10 {
		t.Errorf("%d queries reached the Service for 5 queries past their limit, want every one hedged (10 at least)", got)
	}
	if n := s.triers.Load(); n < 1 || n > 3 {
		t.Errorf("%d triers after 5 hedged queries one at a time, want 1 to 3 (reused)", n)
	}
	s.shutdown()
	deadline := time.Now().Add(time.Second)
	for s.triers.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d triers left after shutdown", s.triers.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPooledConnectionClosed: an endpoint closes its idle connections
// (CoreDNS does after its idle timeout); the next query on a pooled one is
// sent again on a new connection, answered by the endpoint, which is not
// blamed for it.
func TestPooledConnectionClosed(t *testing.T) {
	svc, eps, _ := cluster(t, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := &kubeDNS{addr: ln.Addr().String(), names: eps[0].names}
	ep.srv = &dns.Server{Listener: ln, Net: "tcp", Handler: dns.HandlerFunc(ep.serve),
		IdleTimeout: func() time.Duration { return 20 * time.Millisecond }}
	go ep.srv.ActivateAndServe()
	t.Cleanup(func() { ep.srv.Shutdown() })
	s := newSpread(t, block(svc, portOf(eps[0].addr), " refresh 1h\n"))
	waitEndpoints(t, s, 1)
	s.setEndpoints([]string{ep.addr})
	u := s.known[ep.addr]
	for i := range 5 {
		who, _, err := query(t, s, fmt.Sprintf("idle%d.example.", i))
		if err != nil || who != ep.addr {
			t.Fatalf("query %d answered by %q (%v), want the endpoint %s", i, who, err, ep.addr)
		}
		time.Sleep(60 * time.Millisecond) // the endpoint closes the connection
	}
	if f := testutil.ToFloat64(u.m.failures); f != 0 || u.until.Load() != 0 {
		t.Errorf("the endpoint has %v failures (penalized: %v) for connections it closed while idle", f, u.until.Load() != 0)
	}
	if dialled := testutil.ToFloat64(u.m.connMisses); dialled < 5 {
		t.Errorf("%v connections dialled for 5 queries after idle closes, want 5", dialled)
	}
	if svc.queries.Load() != 0 {
		t.Errorf("the Service got %d queries", svc.queries.Load())
	}
}

// blackhole is a loopback TCP port whose handshakes never complete: a
// listener that never accepts, its backlog full, so the kernel drops the
// SYNs (as an endpoint behind a dropping firewall, or gone without a
// reset, does).
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the backlog (0 holds one connection), then check that the next
	// handshake hangs.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
		if i == 4 {
			t.Fatal("the backlog does not fill: handshakes still complete")
		}
	}
	return addr
}

// TestEndpointUnreachable: an endpoint whose connections cannot be opened
// (its SYNs dropped) holds no query longer than the hedge: a dial gets no
// longer than the limit when another attempt can follow.
func TestEndpointUnreachable(t *testing.T) {
	svc, eps, _ := cluster(t, 2)
	s := newSpread(t, block(svc, portOf(eps[0].addr), " refresh 1h\n"))
	waitEndpoints(t, s, 1)
	dead := blackhole(t)
	s.setEndpoints([]string{eps[0].addr, eps[1].addr, dead})
	var worst time.Duration
	for i := range 12 {
		who, took, err := query(t, s, fmt.Sprintf("q%d.example.", i))
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		if who != eps[0].addr && who != eps[1].addr {
			t.Errorf("query %d answered by %q", i, who)
		}
		worst = max(worst, took)
	}
	// The hedge limit is 100 ms before answers are timed; the dial timeout 2 s.
	if worst > 700*time.Millisecond {
		t.Errorf("the slowest query took %s: it waited on the unreachable endpoint's dial", worst)
	}
	if s.known[dead].until.Load() == 0 {
		t.Error("the unreachable endpoint is not penalized")
	}
}

// TestCoroutineParks: a query run as a coroutine of the goroutine that read
// it (package coro) gives that goroutine back once it is sent, whether its
// connection is pooled or has to be dialled (detached: a dial may hang),
// and the connection's waiter resumes it with the answer, or at the hedge
// limit to try the next upstream.
func TestCoroutineParks(t *testing.T) {
	for _, tc := range []struct {
		name string
		// endpoint returns the endpoint's address; its answer takes delay.
		endpoint func(t *testing.T, eps []*kubeDNS) string
		delay    time.Duration
		hedge    string
		want     func(eps []*kubeDNS, svc *kubeDNS) string
	}{
		{"answered", func(_ *testing.T, eps []*kubeDNS) string { return eps[0].addr }, 300 * time.Millisecond, "1s 2s",
			func(eps []*kubeDNS, _ *kubeDNS) string { return eps[0].addr }},
		{"past the hedge", func(_ *testing.T, eps []*kubeDNS) string { return eps[0].addr }, 2 * time.Second, "100ms 500ms",
			func(_ []*kubeDNS, svc *kubeDNS) string { return svc.addr }},
		{"dial hangs", func(t *testing.T, _ []*kubeDNS) string { return blackhole(t) }, 0, "100ms 500ms",
			func(_ []*kubeDNS, svc *kubeDNS) string { return svc.addr }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc, eps, _ := cluster(t, 1)
			s := newSpread(t, block(svc, portOf(eps[0].addr), " refresh 1h\n hedge "+tc.hedge+"\n"))
			waitEndpoints(t, s, 1)
			ep := tc.endpoint(t, eps)
			s.setEndpoints([]string{ep})
			eps[0].delay.Store(int64(tc.delay))
			type result struct {
				who string
				err error
			}
			results := make(chan result, 1)
			p := coro.NewPool(func(co *coro.Co, name string) {
				r := new(dns.Msg)
				r.SetQuestion(name, dns.TypeTXT)
				w := dnstest.NewRecorder(&test.ResponseWriter{TCP: true})
				_, err := s.ServeDNS(coro.NewContext(context.Background(), co), w, r)
				if err == nil && (w.Msg == nil || len(w.Msg.Answer) != 1) {
					err = fmt.Errorf("answer %v", w.Msg)
				}
				if err != nil {
					results <- result{err: err}
					return
				}
				results <- result{who: w.Msg.Answer[0].(*dns.TXT).Txt[0]}
			}, func() bool { return true }, func() {})
			t.Cleanup(p.Close)
			for i := range 3 {
				started := make(chan bool)
				go func() { started <- p.Start(fmt.Sprintf("q%d.example.", i)) }()
				select {
				case ok := <-started:
					if !ok {
						t.Fatalf("query %d: not started", i)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("query %d: the reading goroutine is held while the query waits", i)
				}
				select {
				case r := <-results:
					t.Fatalf("query %d answered (%+v) before the coroutine gave the reader back", i, r)
				default:
				}
				r := <-results
				if want := tc.want(eps, svc); r.err != nil || r.who != want {
					t.Fatalf("query %d answered by %q (%v), want %s", i, r.who, r.err, want)
				}
			}
		})
	}
}
