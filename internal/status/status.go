// Package status answers the operator's question "is this node's DNS
// really served by node-local-coredns?": for each local IP, whether the
// address, the rules and a bound socket are there, whether the agent
// answers, and how much DNS conntrack still sees; then the upstream and the
// cache.
package status

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/node-local-coredns/node-local-coredns/internal/agent"
	"github.com/node-local-coredns/node-local-coredns/internal/config"
	"github.com/node-local-coredns/node-local-coredns/internal/netfilter"
	"github.com/node-local-coredns/node-local-coredns/internal/sockets"
	"github.com/node-local-coredns/node-local-coredns/internal/watchdog"
)

// IP is the state of one local IP.
type IP struct {
	Addr       netip.Addr
	Interface  string // "" when the address is on no interface
	Rules      bool
	Gated      bool // rules gated on a bound socket
	Backend    string
	UDPSockets int
	TCPSockets int
	// Answered is true when the agent itself answered the probe.
	Answered bool
	Latency  time.Duration
	ProbeErr string
	// Conntrack counts DNS entries to the IP: zero while pods are served
	// by the agent.
	Conntrack int
}

// Served reports whether the agent really serves this IP.
func (ip IP) Served() bool {
	return ip.Interface != "" && ip.Rules && ip.UDPSockets > 0 && ip.Answered
}

// Report is the whole status.
type Report struct {
	IPs             []IP
	Upstreams       []netip.AddrPort
	UpstreamAnswers bool
	UpstreamLatency time.Duration
	CacheEntries    float64
	CacheHitRatio   float64
	CacheKnown      bool
	// Agent is what the agent's own metrics say (known with CacheKnown).
	Agent AgentStats
	// Fenced is set while the watchdog's fence takes the node off the
	// agent; FenceErr when it could not be read.
	Fenced     bool
	FenceErr   string
	MetricsErr string
	RulesErr   string
}

// endpointsLine says which kube-dns endpoints the agent sends its misses
// to, each with its share of the answers and whether it is in the rotation.
func endpointsLine(eps map[string]Endpoint) string {
	if len(eps) == 0 {
		return "none known: misses go through the upstream Service (see NodeLocalCoreDNSUpstreamEndpointsUnknown in docs/operations.md)"
	}
	var total float64
	for _, e := range eps {
		total += e.Answers
	}
	var parts []string
	for _, to := range slices.Sorted(maps.Keys(eps)) {
		e := eps[to]
		state := fmt.Sprintf("%.0f%% of answers", 100*e.Answers/max(total, 1))
		if e.Penalized {
			state += ", OUT of the rotation: failing or slow"
		}
		parts = append(parts, to+" ("+state+")")
	}
	return fmt.Sprintf("%d kube-dns endpoints: %s", len(eps), strings.Join(parts, ", "))
}

// Served reports whether every local IP is served by the agent.
func (r Report) Served() bool {
	for _, ip := range r.IPs {
		if !ip.Served() {
			return false
		}
	}
	return len(r.IPs) > 0
}

// Check gathers the status in the calling process's network namespace.
func Check(ctx context.Context, cfg config.Status) Report {
	r := Report{Upstreams: cfg.Upstreams}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var rulesOK, gated bool
	backend := ""
	nf, err := agent.ChooseNetfilter(ctx, cfg.Netfilter, cfg.LocalIPs, quiet)
	if err == nil {
		var rules agent.Rules
		rules, err = nf.Rules(netfilter.Options{
			Port: cfg.Port, SocketMatch: true, HostNetwork: cfg.DivertHostNetwork, ProbeMark: cfg.ProbeMark,
		}, quiet)
		if err == nil {
			backend = rules.Mode()
			rulesOK, gated, err = rules.Installed()
		}
		r.Fenced, r.FenceErr = fenced(nf)
	}
	if err != nil {
		r.RulesErr = err.Error()
	}
	for _, ip := range cfg.LocalIPs {
		s := IP{Addr: ip, Rules: rulesOK, Gated: gated, Backend: backend}
		s.Interface = interfaceOf(ip)
		if socks, err := sockets.Serving([]netip.AddrPort{netip.AddrPortFrom(ip, cfg.Port)}); err == nil {
			for _, so := range socks {
				if so.Proto == "udp" {
					s.UDPSockets++
				} else {
					s.TCPSockets++
				}
			}
		}
		s.Answered, s.Latency, s.ProbeErr = probe(ctx, netip.AddrPortFrom(ip, cfg.Port), cfg.ProbeMark, cfg.Timeout)
		s.Conntrack = conntrackDNS(ip, cfg.Port)
		r.IPs = append(r.IPs, s)
	}
	for _, up := range cfg.Upstreams {
		start := time.Now()
		m := new(dns.Msg)
		m.SetQuestion(".", dns.TypeNS)
		c := &dns.Client{Net: "tcp", Timeout: cfg.Timeout}
		if _, _, err := c.ExchangeContext(ctx, m, up.String()); err == nil {
			r.UpstreamAnswers = true
			r.UpstreamLatency = time.Since(start)
			break
		}
	}
	r.CacheEntries, r.CacheHitRatio, r.Agent, err = cacheStats(ctx, cfg.MetricsAddr, cfg.Timeout)
	if err != nil {
		r.MetricsErr = err.Error()
	} else {
		r.CacheKnown = true
	}
	return r
}

// fenced reports whether the watchdog's fence is in place.
func fenced(nf *agent.Netfilter) (bool, string) {
	fencers, err := nf.Fencers()
	if err != nil {
		return false, err.Error()
	}
	for _, f := range fencers {
		ok, err := f.Fenced()
		if err != nil {
			return false, err.Error()
		}
		if ok {
			return true, ""
		}
	}
	return false, ""
}

func interfaceOf(ip netip.Addr) string {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
				return l.Attrs().Name
			}
		}
	}
	return ""
}

// probe asks the watchdog's probe name with the probe mark: the agent
// answers it itself (NOERROR); anything else (kube-dns through DNAT answers
// NXDOMAIN) means the agent did not.
func probe(ctx context.Context, addr netip.AddrPort, mark uint32, timeout time.Duration) (bool, time.Duration, string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r, rtt, err := watchdog.Probe(ctx, addr, mark)
	switch {
	case err != nil:
		return false, 0, err.Error()
	case r.Rcode != dns.RcodeSuccess:
		return false, rtt, "answered " + dns.RcodeToString[r.Rcode] + " by something else (kube-dns through DNAT?)"
	}
	return true, rtt, ""
}

func conntrackDNS(ip netip.Addr, port uint16) int {
	family := netlink.InetFamily(unix.AF_INET)
	if ip.Is6() {
		family = unix.AF_INET6
	}
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, family)
	if err != nil {
		return -1
	}
	n := 0
	for _, f := range flows {
		if dst, ok := netip.AddrFromSlice(f.Forward.DstIP); ok && dst.Unmap() == ip && f.Forward.DstPort == port {
			n++
		}
	}
	return n
}

// AgentStats are counters and gauges of the agent's, as the alerts read
// them.
type AgentStats struct {
	RulesRestored, CorefileErrors, SetupErrors float64
	// Resident memory and the Go memory limit (0: none known).
	Resident, MemoryLimit float64
	// SpreadKnown is set when the agent looks kube-dns's endpoints up (the
	// spread plugin's coredns_spread_endpoints); Endpoints are the ones it
	// knows, by address.
	SpreadKnown bool
	Endpoints   map[string]Endpoint
}

// Endpoint is what the agent's spread plugin says of one kube-dns endpoint.
type Endpoint struct {
	Answers   float64 // answers it gave first, since the agent started
	Penalized bool    // out of the rotation now
}

// cacheStats reads the cache plugins' and the agent's metrics.
func cacheStats(ctx context.Context, addr string, timeout time.Duration) (entries, hitRatio float64, agent AgentStats, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, 0, agent, err
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/metrics", nil)
	if err != nil {
		return 0, 0, agent, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, agent, fmt.Errorf("reading the agent's metrics: %w", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, 0, agent, fmt.Errorf("parsing the agent's metrics: %w", err)
	}
	sum := func(name string) float64 {
		var total float64
		if mf, ok := families[name]; ok {
			for _, m := range mf.GetMetric() {
				total += value(m)
			}
		}
		return total
	}
	entries = sum("coredns_cache_entries")
	// The answers fastcache stores once are in its store alone (type
	// success and denial); type all are copies of CoreDNS's.
	if mf, ok := families["coredns_fastcache_entries"]; ok {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "type" && l.GetValue() != "all" {
					entries += value(m)
				}
			}
		}
	}
	// fastcache answers most hits itself, before CoreDNS's cache.
	hits := sum("coredns_cache_hits_total") + sum("coredns_fastcache_hits_total")
	misses := sum("coredns_cache_misses_total")
	if hits+misses > 0 {
		hitRatio = hits / (hits + misses)
	}
	agent = AgentStats{
		CorefileErrors: sum("node_local_coredns_corefile_errors_total"),
		SetupErrors:    sum("node_local_coredns_setup_errors_total"),
		Resident:       sum("process_resident_memory_bytes"),
		MemoryLimit:    sum("go_gc_gomemlimit_bytes"),
	}
	if _, ok := families["coredns_spread_endpoints"]; ok {
		agent.SpreadKnown = true
		agent.Endpoints = map[string]Endpoint{}
		each := func(name string, fn func(to string, m *dto.Metric)) {
			for _, m := range families[name].GetMetric() {
				kind, to := "endpoint", ""
				for _, l := range m.GetLabel() {
					switch l.GetName() {
					case "to":
						to = l.GetValue()
					case "kind":
						kind = l.GetValue()
					}
				}
				if to != "" && kind == "endpoint" {
					fn(to, m)
				}
			}
		}
		each("coredns_spread_answers_total", func(to string, m *dto.Metric) {
			e := agent.Endpoints[to]
			e.Answers += value(m)
			agent.Endpoints[to] = e
		})
		each("coredns_spread_endpoint_penalized", func(to string, m *dto.Metric) {
			if e, ok := agent.Endpoints[to]; ok { // an endpoint's, not the Service's
				e.Penalized = e.Penalized || value(m) > 0
				agent.Endpoints[to] = e
			}
		})
	}
	if mf, ok := families["node_local_coredns_restored_total"]; ok {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == "rules" {
					agent.RulesRestored += value(m)
				}
			}
		}
	}
	return entries, hitRatio, agent, nil
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return 0
}

// Write prints the report for a person.
func (r Report) Write(w io.Writer) {
	yes := func(b bool, y, n string) string {
		if b {
			return y
		}
		return n
	}
	for _, ip := range r.IPs {
		fmt.Fprintf(w, "%s: %s\n", ip.Addr, yes(ip.Served(), "served by node-local-coredns", "NOT served by node-local-coredns (pods go to kube-dns through DNAT)"))
		fmt.Fprintf(w, "  address    %s\n", yes(ip.Interface != "", "present on "+ip.Interface, "missing"))
		rules := "missing"
		if ip.Rules {
			rules = "in place (" + ip.Backend + "), " + yes(ip.Gated, "gated on a bound socket", "NOT gated on a socket (kernel lacks the socket match)")
		} else if r.RulesErr != "" {
			rules = "unknown: " + r.RulesErr
		}
		fmt.Fprintf(w, "  rules      %s\n", rules)
		fmt.Fprintf(w, "  socket     %s\n", yes(ip.UDPSockets > 0, fmt.Sprintf("bound (%d udp, %d tcp)", ip.UDPSockets, ip.TCPSockets), "none bound"))
		fmt.Fprintf(w, "  probe      %s\n", yes(ip.Answered, "answered by the agent in "+ip.Latency.Round(time.Microsecond).String(), "not answered by the agent: "+ip.ProbeErr))
		fmt.Fprintf(w, "  conntrack  %d entries for DNS to %s\n", ip.Conntrack, ip.Addr)
	}
	var ups []string
	for _, u := range r.Upstreams {
		ups = append(ups, u.String())
	}
	fmt.Fprintf(w, "upstream   %s: %s\n", strings.Join(ups, ", "), yes(r.UpstreamAnswers, "answers in "+r.UpstreamLatency.Round(time.Microsecond).String(), "does not answer"))
	switch {
	case r.FenceErr != "":
		fmt.Fprintf(w, "fence      unknown: %s\n", r.FenceErr)
	case r.Fenced:
		fmt.Fprintf(w, "fence      IN PLACE: the watchdog took the node off a silent agent (pods go to kube-dns)\n")
	default:
		fmt.Fprintf(w, "fence      none\n")
	}
	if !r.CacheKnown {
		fmt.Fprintf(w, "cache      unknown: %s\n", r.MetricsErr)
		return
	}
	fmt.Fprintf(w, "cache      %.0f entries, hit ratio %.1f%%\n", r.CacheEntries, 100*r.CacheHitRatio)
	a := r.Agent
	if a.SpreadKnown {
		fmt.Fprintf(w, "endpoints  %s\n", endpointsLine(a.Endpoints))
	}
	fmt.Fprintf(w, "agent      rules restored %.0f times, %.0f Corefile templates refused, %.0f setup errors since it started\n", a.RulesRestored, a.CorefileErrors, a.SetupErrors)
	limit := "no memory limit"
	if a.MemoryLimit > 0 && a.MemoryLimit < 1<<62 {
		limit = fmt.Sprintf("%.0f%% of its %.0f MiB limit", 100*a.Resident/a.MemoryLimit, a.MemoryLimit/(1<<20))
	}
	fmt.Fprintf(w, "memory     %.1f MiB resident, %s\n", a.Resident/(1<<20), limit)
}
