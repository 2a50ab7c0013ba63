package server

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/internal/config"
	"github.com/node-local-coredns/node-local-coredns/internal/corefile"
)

// bigUpstream is kube-dns on loopback, over UDP and TCP on one port: it
// answers big.<zone> with 120 A records (about 2 KB) and anything else with
// one, and counts the queries that came over UDP.
type bigUpstream struct {
	addr netip.AddrPort
	udp  atomic.Int64
	// delay holds every answer back, for forged answers to race it.
	delay time.Duration
}

func startBigUpstream(t testing.TB, delay time.Duration) *bigUpstream {
	t.Helper()
	u := &bigUpstream{delay: delay}
	u.addr = serveUpstream(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if _, ok := w.RemoteAddr().(*net.UDPAddr); ok {
			u.udp.Add(1)
		}
		time.Sleep(u.delay)
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		n := 1
		if strings.HasPrefix(q.Name, "big.") {
			n = 120
		}
		if strings.HasPrefix(q.Name, "txt-") {
			// As large as an answer the caches count by entry gets: about 1.1 KB.
			n = 0
			txt := make([]string, 5)
			for i := range txt {
				txt[i] = fmt.Sprintf("%d%s", i, strings.Repeat("x", 209))
			}
			m.Answer = []dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: txt}}
		}
		for i := range n {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, byte(i+1))})
		}
		if o := r.IsEdns0(); o != nil {
			m.SetEdns0(o.UDPSize(), false)
		}
		_ = w.WriteMsg(m)
	}))
	return u
}

// serveUpstream serves h over UDP and TCP on one loopback port (a port free
// for UDP may be taken for TCP: another is tried) until the test ends.
func serveUpstream(t testing.TB, h dns.Handler) netip.AddrPort {
	t.Helper()
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	for range 10 {
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
	go us.ActivateAndServe() //nolint:errcheck
	go ts.ActivateAndServe() //nolint:errcheck
	t.Cleanup(func() { _ = us.Shutdown(); _ = ts.Shutdown() })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// startBuiltIn serves the built-in Corefile on 127.0.0.1:port with up as
// kube-dns, and returns the address it answers on.
func startBuiltIn(t testing.TB, up netip.AddrPort, edit func(*corefile.Values)) string {
	t.Helper()
	return startTemplate(t, up, corefile.Default, edit)
}

// startBuiltInText is startBuiltIn with the template text.
func startBuiltInText(t testing.TB, up netip.AddrPort, text string) string {
	t.Helper()
	return startTemplate(t, up, text, nil)
}

func startTemplate(t testing.TB, up netip.AddrPort, tmpl string, edit func(*corefile.Values)) string {
	t.Helper()
	free := func(network string) int {
		l, err := net.Listen(network, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	port := free("tcp")
	v := corefile.Values{
		LocalIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Upstreams: []netip.AddrPort{up},
		ClusterDomain: "cluster.local", Port: uint16(port),
		HealthAddr: fmt.Sprintf("127.0.0.1:%d", free("tcp")), ReadyAddr: fmt.Sprintf("127.0.0.1:%d", free("tcp")),
		MetricsAddr: fmt.Sprintf("127.0.0.1:%d", free("tcp")), ReloadInterval: time.Minute, ServeStale: 0,
		MaxUDPSize: 1232, SuccessCapacity: 1000, DenialCapacity: 1000,
	}
	if edit != nil {
		edit(&v)
	}
	text, err := corefile.Render("built-in", tmpl, v)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Start(func() (string, error) { return text, nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// UDP answers are at most --max-udp-size bytes whatever buffer the client
// advertises, with TC set above it; TCP gets the whole answer; and every
// miss, of every zone, goes to kube-dns over TCP.
func TestBuiltInCapsUDPAnswers(t *testing.T) {
	up := startBigUpstream(t, 0)
	for _, tc := range []struct {
		name string
		max  int
	}{{"default 1232", 1232}, {"configured 4096", 4096}} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startBuiltIn(t, up.addr, func(v *corefile.Values) { v.MaxUDPSize = tc.max })
			for _, name := range []string{"big.example.org.", "big.default.svc.cluster.local."} {
				// A miss, then answers from the cache (and the fast path).
				for i := range 3 {
					r, size := rawUDP(t, addr, name)
					if size > tc.max {
						t.Errorf("%s over UDP (%d): %d bytes for a client advertising 65535, want at most %d", name, i, size, tc.max)
					}
					if wantTC := tc.max < 2000; r.Truncated != wantTC {
						t.Errorf("%s over UDP (%d): TC %v, want %v (%d bytes, %d records)", name, i, r.Truncated, wantTC, size, len(r.Answer))
					}
					if o := r.IsEdns0(); o == nil || int(o.UDPSize()) != tc.max {
						t.Errorf("%s over UDP (%d): OPT %v, want the buffer size %d", name, i, o, tc.max)
					}
				}
				// A small answer for such a client, asked again once
				// cached (plugin/fastcache's TestBufsizeBeforeTheFastPath
				// checks that the fast path answers it), capped the same way.
				for i := range 3 {
					r, _ := rawUDP(t, addr, "small."+name)
					if o := r.IsEdns0(); len(r.Answer) != 1 || o == nil || int(o.UDPSize()) != tc.max {
						t.Errorf("small.%s over UDP (%d): %d records, OPT %v, want 1 and the buffer size %d", name, i, len(r.Answer), o, tc.max)
					}
				}
				m := new(dns.Msg)
				m.SetQuestion(name, dns.TypeA)
				r, _, err := (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).Exchange(m, addr)
				if err != nil || len(r.Answer) != 120 {
					t.Fatalf("%s over TCP: %d records (%v), want 120", name, len(r.Answer), err)
				}
			}
		})
	}
	if n := up.udp.Load(); n != 0 {
		t.Errorf("kube-dns got %d queries over UDP from the agent; every zone's misses must go over TCP", n)
	}
}

// rawUDP asks name over UDP advertising a 65,535-byte buffer and returns
// the answer and its size on the wire.
func rawUDP(t *testing.T, addr, name string) (*dns.Msg, int) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(65535, false)
	p, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(p); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("%s over UDP: %v", name, err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil {
		t.Fatalf("%s over UDP: %v", name, err)
	}
	if r.Id != m.Id {
		t.Fatalf("%s over UDP: answer ID %d, query %d", name, r.Id, m.Id)
	}
	return r, n
}

// A cached name with an answer of about 1.1 KB, stored by CoreDNS's cache
// and by the fast path, costs no more than the memory arithmetic's
// config.EntryCost, which sizes the caches from the memory limit.
func TestEntryCost(t *testing.T) {
	const names = 3000
	up := startBigUpstream(t, 0)
	addr := startBuiltIn(t, up.addr, func(v *corefile.Values) {
		v.SuccessCapacity, v.DenialCapacity = 4*names, 4*names
	})
	c := &dns.Client{Net: "udp", UDPSize: 1232, Timeout: 2 * time.Second}
	ask := func(i int) int {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("txt-%d.example.org.", i), dns.TypeTXT)
		m.SetEdns0(1232, false)
		r, _, err := c.Exchange(m, addr)
		if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("name %d: %v %v", i, r, err)
		}
		return r.Len()
	}
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	// Warm up: the servers' goroutines, pools and buffers.
	for i := range 200 {
		ask(names + i)
		ask(names + i)
		ask(names + i)
	}
	before := heap()
	size := 0
	// The first asking is a miss, the second a hit of CoreDNS's cache, which
	// stores the answer for the fast path, the third the fast path's.
	for range 3 {
		for i := range names {
			size = ask(i)
		}
	}
	after := heap()
	per := float64(after-before) / names
	t.Logf("%d names with answers of %d bytes: %.0f bytes each in the caches (config.EntryCost %d)", names, size, per, config.EntryCost)
	if size < 1000 {
		t.Fatalf("answers of %d bytes: too small to measure the worst entry", size)
	}
	if per > config.EntryCost {
		t.Errorf("a cached name costs %.0f bytes, more than config.EntryCost (%d): the caches sized from the memory limit can outgrow their share", per, config.EntryCost)
	}
	if per < 1000 {
		t.Errorf("a cached name costs %.0f bytes: the names were not all cached, the measurement is wrong", per)
	}
}
