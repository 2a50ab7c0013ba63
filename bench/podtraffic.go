package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/node-local-coredns/node-local-coredns/internal/config"
	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// The pod-traffic figure replays what the pods of one node ask their DNS
// server, generated from a model of the node (podModel), against every
// server configured as its users configure it, and a kube-dns model as
// the upstream (kubeDNS).

// podModel is a node's pods and what they look up. Every pod has a
// namespace and resolv.conf's `search <ns>.svc.cluster.local
// svc.cluster.local cluster.local` with `options ndots:5`, as kubelet
// writes it; a lookup of a name with fewer than five dots walks the search
// path, A and AAAA for each candidate (glibc asks both), until one is not
// NXDOMAIN. A pod looks up, by a Zipf popularity over each kind's names:
//   - a Service of its namespace by its short name (svc-3): found at the
//     first candidate;
//   - a Service of another namespace (svc-3.ns-2): NXDOMAIN at the first
//     candidate, found at the second;
//   - an external name (api-17.example.com): NXDOMAIN at the three cluster
//     candidates, then answered;
//   - an external name that does not exist (nx-5.example.com): NXDOMAIN at
//     every candidate and for itself.
type podModel struct {
	namespaces, podsPerNamespace, servicesPerNamespace int
	externals, missingExternals                        int
	// The kinds' shares of lookups, in per cent: own namespace, another
	// namespace, external, missing external.
	share [4]int
	// zipf is the exponent of the popularity of each kind's names.
	zipf float64
}

var nodePods = podModel{
	namespaces: 10, podsPerNamespace: 3, servicesPerNamespace: 20,
	externals: 2000, missingExternals: 500,
	share: [4]int{45, 20, 30, 5}, zipf: 1.1,
}

const clusterDomain = "cluster.local."

// searchPath is a pod's resolv.conf search list.
func searchPath(ns string) []string {
	return []string{ns + ".svc." + clusterDomain, "svc." + clusterDomain, clusterDomain}
}

// candidates are the names a lookup of name asks, in order, with ndots:5.
func candidates(name, ns string) []string {
	if strings.Count(name, ".") >= 5 {
		return []string{name + "."}
	}
	var out []string
	for _, s := range searchPath(ns) {
		out = append(out, name+"."+s)
	}
	return append(out, name+".")
}

// answered reports whether kubeDNS answers name (with records or NODATA),
// not NXDOMAIN: the model's Services and the existing external names.
func (m podModel) answered(name string) bool {
	name = strings.ToLower(name)
	if rest, ok := strings.CutSuffix(name, ".svc."+clusterDomain); ok {
		svc, ns, ok := strings.Cut(rest, ".")
		return ok && !strings.Contains(ns, ".") && m.index(svc, "svc-", m.servicesPerNamespace) && m.index(ns, "ns-", m.namespaces)
	}
	if dns.IsSubDomain(clusterDomain, name) {
		return false
	}
	if rest, ok := strings.CutSuffix(name, ".example.com."); ok {
		return m.index(rest, "api-", m.externals)
	}
	return false
}

// index reports whether s is prefix followed by a number below n.
func (podModel) index(s, prefix string, n int) bool {
	v, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return false
	}
	i, err := strconv.Atoi(v)
	return err == nil && i >= 0 && i < n && strconv.Itoa(i) == v
}

// stream returns n queries ("name type" lines, dnsperf's input) of the
// node's pods, lookups interleaved at random, from seed.
func (m podModel) stream(n int, seed uint64) []string {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	zipf := func(n int) *rand.Zipf { return rand.NewZipf(r, m.zipf, 1, uint64(n-1)) }
	own, other, ext, missing := zipf(m.servicesPerNamespace), zipf(m.servicesPerNamespace*m.namespaces), zipf(m.externals), zipf(m.missingExternals)
	pods := m.namespaces * m.podsPerNamespace
	out := make([]string, 0, n+8)
	for len(out) < n {
		ns := fmt.Sprintf("ns-%d", r.IntN(pods)%m.namespaces)
		var name string
		switch k := r.IntN(100); {
		case k < m.share[0]:
			name = fmt.Sprintf("svc-%d", own.Uint64())
		case k < m.share[0]+m.share[1]:
			i := int(other.Uint64())
			name = fmt.Sprintf("svc-%d.ns-%d", i%m.servicesPerNamespace, i/m.servicesPerNamespace)
		case k < m.share[0]+m.share[1]+m.share[2]:
			name = fmt.Sprintf("api-%d.example.com", ext.Uint64())
		default:
			name = fmt.Sprintf("nx-%d.example.com", missing.Uint64())
		}
		for _, c := range candidates(name, ns) {
			out = append(out, c+" A", c+" AAAA")
			if m.answered(c) {
				break
			}
		}
	}
	return out[:n]
}

// kubeDNSTTL is kube-dns's TTL for every answer: CoreDNS's kubernetes
// plugin with `ttl 30`, and `cache 30` over what it forwards, as kubeadm
// deploys it. Its denials carry an SOA whose minimum is the same.
const kubeDNSTTL = 30

// kubeDNS answers as kube-dns does for the model's names: A for a Service
// (its AAAA: NODATA, an IPv4 cluster), A and AAAA for an existing external
// name, NXDOMAIN with the zone's SOA for every other name. It answers from
// memory and counts the queries it gets.
type kubeDNS struct {
	model   podModel
	queries atomic.Int64
}

func (k *kubeDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if len(r.Question) != 1 {
		return
	}
	k.queries.Add(1)
	q := r.Question[0]
	m := new(dns.Msg)
	m.SetReply(r)
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(max(opt.UDPSize(), dns.MinMsgSize), false)
	}
	name := strings.ToLower(q.Name)
	zone := clusterDomain
	if !dns.IsSubDomain(clusterDomain, name) {
		zone = "example.com."
		m.RecursionAvailable = true
	} else {
		m.Authoritative = true
	}
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: kubeDNSTTL}
	h := hash(name)
	switch {
	case !k.model.answered(name):
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{kubeDNSSOA(zone)}
	case q.Qtype == dns.TypeA && zone == clusterDomain:
		m.Answer = []dns.RR{&dns.A{Hdr: hdr, A: net.IPv4(10, 96, byte(h>>8), byte(h)).To4()}}
	case q.Qtype == dns.TypeA:
		m.Answer = []dns.RR{&dns.A{Hdr: hdr, A: net.IPv4(203, 0, byte(h>>8), byte(h)).To4()}}
	case q.Qtype == dns.TypeAAAA && zone != clusterDomain:
		m.Answer = []dns.RR{&dns.AAAA{Hdr: hdr, AAAA: net.IP{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(h >> 8), byte(h)}}}
	default:
		m.Ns = []dns.RR{kubeDNSSOA(zone)}
	}
	_ = w.WriteMsg(m)
}

func kubeDNSSOA(zone string) dns.RR {
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: kubeDNSTTL},
		Ns:  "ns.dns." + zone, Mbox: "hostmaster." + zone,
		Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: kubeDNSTTL,
	}
}

func hash(s string) uint32 {
	h := uint32(2166136261)
	for i := range len(s) {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return h
}

// kubeDNSAddr is where the kube-dns model listens, UDP and TCP.
const kubeDNSAddr = "127.0.0.1:5310"

func startKubeDNS(m podModel) (*kubeDNS, func(), error) {
	k := &kubeDNS{model: m}
	pc, err := net.ListenPacket("udp", kubeDNSAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("starting the kube-dns model: %w", err)
	}
	ln, err := net.Listen("tcp", kubeDNSAddr)
	if err != nil {
		pc.Close()
		return nil, nil, fmt.Errorf("starting the kube-dns model: %w", err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: k}
	tcp := &dns.Server{Listener: ln, Handler: k}
	go udp.ActivateAndServe() //nolint:errcheck
	go tcp.ActivateAndServe() //nolint:errcheck
	return k, func() { _ = udp.Shutdown(); _ = tcp.Shutdown() }, nil
}

// nodeCacheCorefile is NodeLocal DNSCache's published Corefile
// (kubernetes/dns, cmd/node-cache; the nodelocaldns.yaml of the
// kubernetes repository), its __PILLAR__ values filled in for the bench:
// the cluster zones to kube-dns over TCP, every other name to the node's
// resolvers (here the same kube-dns model) over UDP.
const nodeCacheCorefile = `cluster.local:{{port}} {
    errors
    cache {
            success 9984 30
            denial 9984 5
    }
    reload
    loop
    bind 127.0.0.1
    forward . {{upstream}} {
            force_tcp
    }
    prometheus 127.0.0.1:{{metrics}}
    health 127.0.0.1:{{health}}
    }
in-addr.arpa:{{port}} {
    errors
    cache 30
    reload
    loop
    bind 127.0.0.1
    forward . {{upstream}} {
            force_tcp
    }
    prometheus 127.0.0.1:{{metrics}}
    }
ip6.arpa:{{port}} {
    errors
    cache 30
    reload
    loop
    bind 127.0.0.1
    forward . {{upstream}} {
            force_tcp
    }
    prometheus 127.0.0.1:{{metrics}}
    }
.:{{port}} {
    errors
    cache 30
    reload
    loop
    bind 127.0.0.1
    forward . {{upstream}}
    prometheus 127.0.0.1:{{metrics}}
    }
`

// podServers are the servers of the pod-traffic figure, each configured
// as its users configure it for a node, forwarding to the kube-dns model.
func podServers(bin string) []*server {
	return []*server{
		{name: agentName, port: 5311, command: func(string) (*exec.Cmd, error) {
			// The built-in Corefile, sized for the chart's memory limit
			// (as the DaemonSet passes it). dnsperf is one client standing
			// for every pod of the node: misslimit's per-client limit
			// would drop the node's misses, so it is off.
			return exec.Command(filepath.Join(bin, "node-local-coredns"), "--local-ip=127.0.0.1", "--port=5311",
				"--upstream="+kubeDNSAddr, "--setup-interface=false", "--setup-netfilter=false",
				"--health-addr=127.0.0.1:15311", "--ready-addr=127.0.0.1:16311", "--metrics-addr=127.0.0.1:17311",
				"--memory-limit="+strconv.FormatInt(chartMemoryLimit, 10), "--miss-rate=0"), nil
		}},
		{name: "coredns-nodecache", port: 5312, command: func(dir string) (*exec.Cmd, error) {
			text := strings.NewReplacer("{{port}}", "5312", "{{upstream}}", kubeDNSAddr, "{{metrics}}", "17312", "{{health}}", "15312").Replace(nodeCacheCorefile)
			path := filepath.Join(dir, "Corefile")
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				return nil, err
			}
			return exec.Command(filepath.Join(bin, "coredns-stock"), "-conf", path, "-quiet"), nil
		}},
		{name: "unbound", port: 5313, command: func(dir string) (*exec.Cmd, error) {
			// Unbound's defaults, forwarding every name.
			return unbound(dir, 5313, kubeDNSAddr, "")
		}},
		{name: "dnsmasq", port: 5314, command: func(string) (*exec.Cmd, error) {
			// kube-dns's dnsmasq cache (its dnsmasq-nanny's arguments):
			// 1,000 entries, no negative caching.
			return exec.Command("dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=5314", "--listen-address=127.0.0.1",
				"--bind-interfaces", "--server="+strings.Replace(kubeDNSAddr, ":", "#", 1), "--cache-size=1000", "--no-negcache",
				"--user=root", "--pid-file=", "--log-facility=-"), nil
		}},
	}
}

// chartMemoryLimit is the chart's default memory limit of the agent's
// container (resources.limits.memory), which sizes its caches.
const chartMemoryLimit = 128 << 20

// Pod-traffic run: warmed for podWarm, then measured for podMeasure, at
// podRate queries a second.
const (
	podRate    = 10000
	podWarm    = 5 * time.Second
	podMeasure = 15 * time.Second
)

const (
	podCPUKey      = "pod traffic: CPU per query at 10k/s (µs)"
	podP50Key      = "pod traffic: latency p50 (µs)"
	podP99Key      = "pod traffic: latency p99 (µs)"
	podUpstreamKey = "pod traffic: queries to kube-dns (% of queries)"
	podAnsweredKey = "pod traffic: answered (% of queries)"
	podRSSKey      = "pod traffic: rss after (MiB)"
	podFastKey     = "pod traffic: answered by the fast path (% of queries)"
)

func isPodKey(k string) bool { return strings.HasPrefix(k, "pod traffic:") }

var podKeys = []string{podCPUKey, podP50Key, podP99Key, podUpstreamKey, podAnsweredKey, podRSSKey, podFastKey}

// agentMetrics is where podServers' node-local-coredns serves its metrics.
const agentMetrics = "http://127.0.0.1:17311/metrics"

// fastHits is the agent's count of queries its fast path answered, NaN
// when it cannot be read.
func fastHits(ctx context.Context) float64 {
	n, err := nodesim.Metric(ctx, "", agentMetrics, "coredns_fastcache_hits_total")
	if err != nil {
		return math.NaN()
	}
	return n
}

// measurePods runs the pod-traffic figure in rounds: each round starts
// every server in turn, in an order that rotates, warms it with the
// stream's first podWarm and measures the next podMeasure.
func measurePods(ctx context.Context, o options, work string, res *results) error {
	k, stop, err := startKubeDNS(nodePods)
	if err != nil {
		return err
	}
	defer stop()
	lines := nodePods.stream(int((podWarm+podMeasure)/time.Second)*podRate, 1)
	warmN := int(podWarm/time.Second) * podRate
	warmFile, measureFile := filepath.Join(work, "pods-warm.txt"), filepath.Join(work, "pods-measure.txt")
	if err := os.WriteFile(warmFile, []byte(strings.Join(lines[:warmN], "\n")+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(measureFile, []byte(strings.Join(lines[warmN:], "\n")+"\n"), 0o644); err != nil {
		return err
	}
	for _, key := range podKeys {
		res.paired[key] = true
	}
	srvs := podServers(o.bin)
	for round := range o.reps {
		for j := range srvs {
			s := srvs[(round+j)%len(srvs)]
			fmt.Fprintf(os.Stderr, "pod traffic: round %d of %d: %s\n", round+1, o.reps, s.name)
			if err := measurePodRun(ctx, o, s, k, work, round, warmFile, measureFile, res); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
	}
	return nil
}

func measurePodRun(ctx context.Context, o options, s *server, k *kubeDNS, work string, round int, warmFile, measureFile string, res *results) error {
	dir := filepath.Join(work, fmt.Sprintf("pods-%s-%d", s.name, round))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := s.start(ctx, dir, o.gomaxprocs); err != nil {
		return err
	}
	defer s.stop()
	if _, err := dnsperf(ctx, s.port, warmFile, podRate, podWarm, 1, false); err != nil {
		return err
	}
	fast := math.NaN()
	agent := s.name == agentName
	if agent {
		fast = fastHits(ctx)
	}
	before, up := s.cpu(), k.queries.Load()
	p, err := dnsperf(ctx, s.port, measureFile, podRate, podMeasure, 1, true)
	if err != nil {
		return err
	}
	used, upstream := s.cpu()-before, k.queries.Load()-up
	if agent {
		fast = fastHits(ctx) - fast
	}
	v := func(key string, x float64) { res.add(s.name, key, x) }
	if p.completed == 0 || p.sent == 0 {
		for _, key := range podKeys {
			v(key, math.NaN())
		}
		return nil
	}
	v(podCPUKey, float64(used.Microseconds())/p.completed)
	v(podP50Key, float64(p.percentile(50).Microseconds()))
	v(podP99Key, float64(p.percentile(99).Microseconds()))
	v(podUpstreamKey, 100*float64(upstream)/p.sent)
	v(podAnsweredKey, 100*p.completed/p.sent)
	v(podRSSKey, s.rss()/(1<<20))
	v(podFastKey, 100*fast/p.sent) // NaN for the peers, which have none
	return nil
}

// podSection writes the pod-traffic figure: the model, the servers'
// configurations, the table and the CPU figure round by round.
func (r *results) podSection(w func(string, ...any), o options) {
	m := nodePods
	w("## Pod traffic")
	w("")
	w("What the pods of one node ask, generated by `bench/podtraffic.go` from a model of the node: %d pods in %d", m.namespaces*m.podsPerNamespace, m.namespaces)
	w("namespaces, each with kubelet's resolv.conf (`search <ns>.svc.cluster.local svc.cluster.local cluster.local`,")
	w("`options ndots:5`), asking A and AAAA for each candidate of the search path until one is not NXDOMAIN, as glibc")
	w("does. A lookup is, by a Zipf popularity (exponent %.1f) over each kind's names: %d %% a Service of the pod's", m.zipf, m.share[0])
	w("namespace by its short name (found at the first candidate), %d %% a Service of another namespace (`svc-3.ns-2`:", m.share[1])
	w("found at the second), %d %% one of %d external names (`api-17.example.com`: three NXDOMAINs, then the answer),", m.share[2], m.externals)
	w("%d %% one of %d external names that do not exist (NXDOMAIN at every candidate). The upstream is a model of", m.share[3], m.missingExternals)
	w("kube-dns (kubeadm's CoreDNS: `ttl 30`, `cache 30`): every answer and every SOA minimum is %d s, a Service has no", kubeDNSTTL)
	w("AAAA (NODATA), it answers from memory and counts what it is asked. The stream (%s at %d queries/s) is replayed", podWarm+podMeasure, podRate)
	w("against a server started for it: the first %s warm it, the next %s are measured. %d rounds, each running every", podWarm, podMeasure, o.reps)
	w("server in turn in an order that rotates; a ratio is the median of the per-round ratios.")
	w("")
	w("Each server is configured as its users configure it on a node:")
	w("")
	w("- node-local-coredns: its built-in Corefile (30 s cap, denials 5 s), sized for the chart's memory limit of %d MiB", chartMemoryLimit>>20)
	w("  (%s entries per cache), `--miss-rate=0`: dnsperf is one client standing for every pod, and misslimit would", formatCount(config.SizedCapacity(chartMemoryLimit)))
	w("  drop the node's misses;")
	w("- coredns-nodecache: stock CoreDNS with NodeLocal DNSCache's published Corefile (the cluster zones over TCP,")
	w("  `cache 30`, success 9,984 30, denial 9,984 5; other names over UDP, to the same kube-dns model here);")
	w("- unbound: its defaults (num-threads 1, no validator), forwarding every name;")
	w("- dnsmasq: kube-dns's dnsmasq cache (`--cache-size=1000 --no-negcache`).")
	w("")
	w("\"queries to kube-dns\" is what reached the upstream, per 100 queries; \"answered\" counts any answer dnsperf got")
	w("within 1 s, NXDOMAIN included.")
	w("")
	srvs := podServers("")
	r.table(w, srvs, isPodKey)
	w("")
	r.rounds(w, srvs, func(k string) bool { return k == podCPUKey })
}

// formatCount writes n with a comma between thousands.
func formatCount(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
