package nodesim

import (
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Names the simulated kube-dns answers:
//   - <anything>.svc.<domain>: A and AAAA derived from the name, TTL 30;
//   - nx-<anything>.svc.<domain> and unknown names in <domain>: NXDOMAIN;
//   - <anything>.example.org: A and AAAA, as if kube-dns had forwarded it;
//   - PTR in in-addr.arpa/ip6.arpa: a name derived from the question.
//
// Every answer is the same from every endpoint, so answers through the agent
// and through DNAT can be compared.
const TTL = 30

// EndpointsName is the chart's headless Service of kube-dns's endpoints,
// which the agent looks up to spread its misses over them.
var EndpointsName = "node-local-coredns-endpoints.kube-system.svc." + ClusterDomain + "."

// AuthDNS is an authoritative DNS server for the cluster zone, running as one
// kube-dns endpoint. It counts the queries it gets.
type AuthDNS struct {
	domain  string
	ttl     uint32
	servers []*dns.Server
	queries atomic.Int64
	mu      sync.Mutex
	byName  map[string]int
	down    atomic.Bool
	// headless are the names of headless Services and their endpoints.
	headless map[string][]netip.Addr
	delay    atomic.Int64 // nanoseconds added before each answer
	// fromPods holds when each query that came straight from a pod
	// (through DNAT, not through the agent) arrived.
	fromPods []time.Time
}

// podNets are the node's pod subnets on cbr0 (the node's own addresses,
// such as the gateways to the endpoints, are elsewhere in the pod CIDR).
var podNets = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}

// FromPods returns when queries that came straight from a pod, bypassing
// the agent, arrived (at most the first million).
func (a *AuthDNS) FromPods() []time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.fromPods)
}

// NewAuthDNS serves the cluster zone (domain) on the listeners, with
// answers of the given TTL. The caller opens the listeners (inside an
// endpoint's namespace, or on loopback for benchmarks).
func NewAuthDNS(domain string, ttl uint32, pc net.PacketConn, ln net.Listener) *AuthDNS {
	a := &AuthDNS{domain: dns.Fqdn(domain), ttl: ttl, byName: map[string]int{}}
	a.servers = []*dns.Server{
		{PacketConn: pc, Handler: a},
		{Listener: ln, Handler: a},
	}
	for _, s := range a.servers {
		go s.ActivateAndServe() //nolint:errcheck // ends when shut down
	}
	return a
}

// Queries returns how many queries the endpoint answered.
func (a *AuthDNS) Queries() int64 { return a.queries.Load() }

// QueriesFor returns how many queries for name (any type) the endpoint got.
func (a *AuthDNS) QueriesFor(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.byName[strings.ToLower(dns.Fqdn(name))]
}

// SetHeadless makes name a headless Service of the addresses: its A and
// AAAA records, with kube-dns's TTL of 5 s. Its lookups are not counted
// in Queries.
func (a *AuthDNS) SetHeadless(name string, addrs []netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.headless == nil {
		a.headless = map[string][]netip.Addr{}
	}
	a.headless[strings.ToLower(dns.Fqdn(name))] = slices.Clone(addrs)
}

// SetDelay adds d before every answer, standing in for the network between
// a node and a kube-dns pod on another node (this kernel has no netem).
func (a *AuthDNS) SetDelay(d time.Duration) { a.delay.Store(int64(d)) }

// SetDown makes the endpoint drop every query, as a hung or unreachable
// kube-dns pod does (true), or answer again.
func (a *AuthDNS) SetDown(down bool) { a.down.Store(down) }

func (a *AuthDNS) shutdown() {
	for _, s := range a.servers {
		_ = s.Shutdown()
	}
}

// ServeDNS implements dns.Handler.
func (a *AuthDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if a.down.Load() || len(r.Question) != 1 {
		return
	}
	if d := a.delay.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	a.mu.Lock()
	eps, headless := a.headless[name]
	a.mu.Unlock()
	if headless {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		for _, ip := range eps {
			hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 5}
			switch {
			case q.Qtype == dns.TypeA && ip.Is4():
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: ip.AsSlice()})
			case q.Qtype == dns.TypeAAAA && ip.Is6():
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()})
			}
		}
		_ = w.WriteMsg(m)
		return
	}
	a.queries.Add(1)
	src, _ := netip.ParseAddrPort(w.RemoteAddr().String())
	a.mu.Lock()
	a.byName[name]++
	if src.Addr() != BridgeIP && src.Addr() != BridgeIP6 && len(a.fromPods) < 1e6 &&
		(podNets[0].Contains(src.Addr().Unmap()) || podNets[1].Contains(src.Addr())) {
		a.fromPods = append(a.fromPods, time.Now())
	}
	a.mu.Unlock()

	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	answer(m, q, a.domain, a.ttl)
	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		m.Truncate(udpSize(r))
	}
	_ = w.WriteMsg(m)
}

func udpSize(r *dns.Msg) int {
	if opt := r.IsEdns0(); opt != nil {
		return int(opt.UDPSize())
	}
	return dns.MinMsgSize
}

func answer(m *dns.Msg, q dns.Question, domain string, ttl uint32) {
	name := strings.ToLower(q.Name)
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: ttl}
	inZone := dns.IsSubDomain(domain, name)
	switch {
	case strings.HasPrefix(name, "nx-"), inZone && !dns.IsSubDomain("svc."+domain, name) && name != domain:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{soa(domain)}
	case dns.IsSubDomain("in-addr.arpa.", name), dns.IsSubDomain("ip6.arpa.", name):
		if q.Qtype == dns.TypePTR {
			m.Answer = []dns.RR{&dns.PTR{Hdr: hdr, Ptr: fmt.Sprintf("host-%08x.svc.%s", hash(name), domain)}}
		}
	case inZone || dns.IsSubDomain("example.org.", name):
		switch q.Qtype {
		case dns.TypeA:
			m.Answer = []dns.RR{&dns.A{Hdr: hdr, A: AddrFor(name, false).AsSlice()}}
		case dns.TypeAAAA:
			m.Answer = []dns.RR{&dns.AAAA{Hdr: hdr, AAAA: AddrFor(name, true).AsSlice()}}
		case dns.TypeTXT:
			if strings.HasPrefix(name, "large-") {
				// About 54 KB, as a hostile zone can serve over TCP.
				for i := range 200 {
					m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{fmt.Sprintf("%03d-%s", i, strings.Repeat("x", 240))}})
				}
				break
			}
			// Large enough to truncate over plain UDP.
			var txt []string
			for i := range 8 {
				txt = append(txt, fmt.Sprintf("%d-%s", i, strings.Repeat("x", 100)))
			}
			m.Answer = []dns.RR{&dns.TXT{Hdr: hdr, Txt: txt}}
		default:
			m.Ns = []dns.RR{soa(domain)}
		}
	default:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{soa(".")}
	}
}

func soa(zone string) dns.RR {
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: TTL},
		Ns:  "ns.dns." + strings.TrimPrefix(zone, "."), Mbox: "hostmaster." + strings.TrimPrefix(zone, "."),
		Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: TTL,
	}
}

func hash(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

// AddrFor is the address the simulated kube-dns answers for name.
func AddrFor(name string, v6 bool) netip.Addr {
	h := hash(strings.ToLower(dns.Fqdn(name)))
	if v6 {
		return netip.AddrFrom16([16]byte{0xfd, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(h >> 24), byte(h >> 16), byte(h >> 8), byte(h)})
	}
	return netip.AddrFrom4([4]byte{10, 100, byte(h >> 8), byte(h)})
}
