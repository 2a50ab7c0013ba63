package e2e

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

const stopTimeout = 30 * time.Second

// rulesPerIP is the number of rules the agent installs per local IP with
// the default flags: NOTRACK and ACCEPT for queries and answers, UDP and
// TCP, and the watchdog's probe rule.
const rulesPerIP = 9

// startAgent runs the agent on n with args and waits until it serves. The
// agent is stopped when t ends.
func startAgent(t *testing.T, n *nodesim.Node, args ...string) *nodesim.Agent {
	t.Helper()
	return startBinary(t, n, "msg=serving", args...)
}

// startWatchdog runs the watchdog on n and waits until it watches.
func startWatchdog(t *testing.T, n *nodesim.Node, args ...string) *nodesim.Agent {
	t.Helper()
	return startBinary(t, n, "msg=watching", append([]string{"watchdog"}, args...)...)
}

// startBinary runs the binary on n with args, waits for marker in its log
// and stops it (showing its log if t failed) when t ends.
func startBinary(t *testing.T, n *nodesim.Node, marker string, args ...string) *nodesim.Agent {
	t.Helper()
	a, err := n.StartAgent(binary, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := a.Stop(stopTimeout); err != nil {
			t.Errorf("stopping %v: %v", args, err)
		}
		if t.Failed() {
			t.Logf("log of %v:\n%s", args, a.Output())
		}
	})
	if err := a.WaitLog(t.Context(), marker, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	return a
}

// resolve queries name from pod over proto and checks the answer is the
// one kube-dns gives.
func resolve(t *testing.T, pod *nodesim.Pod, proto string, server netip.Addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	r, _, err := pod.Query(proto, server, name, qtype)
	if err != nil {
		t.Fatalf("%s %s %s from %s to %s: %v", proto, dns.TypeToString[qtype], name, pod.NS, server, err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("%s %s %s: got rcode %s with %d answers, want one answer:\n%v", proto, dns.TypeToString[qtype], name, dns.RcodeToString[r.Rcode], len(r.Answer), r)
	}
	var got netip.Addr
	switch rr := r.Answer[0].(type) {
	case *dns.A:
		got, _ = netip.AddrFromSlice(rr.A)
	case *dns.AAAA:
		got, _ = netip.AddrFromSlice(rr.AAAA)
	}
	if want := nodesim.AddrFor(name, qtype == dns.TypeAAAA); got.Unmap() != want {
		t.Fatalf("%s %s: got %v, want %s", dns.TypeToString[qtype], name, r.Answer[0], want)
	}
	return r
}

// podConntrack returns the node's conntrack entries for DNS from pod to dst.
func podConntrack(t *testing.T, n *nodesim.Node, pod *nodesim.Pod, dst netip.Addr) []string {
	t.Helper()
	all, err := n.ConntrackDNS(dst)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range all {
		if strings.Contains(e, " "+pod.IP.String()+":") || strings.Contains(e, " ["+pod.IP6.String()+"]:") {
			out = append(out, e)
		}
	}
	return out
}

// ruleset returns the node's iptables-save and ip6tables-save output.
func ruleset(t *testing.T, n *nodesim.Node) string {
	t.Helper()
	out, err := n.Ruleset(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// countRules counts the agent's rules in a ruleset dump: those in its
// iptables chains, and those in its nftables table but for the jump to the
// watchdog's fence (one per table, not per IP).
func countRules(dump string) int {
	n := 0
	for _, l := range strings.Split(dump, "\n") {
		if strings.HasPrefix(l, "-A NLCOREDNS-") ||
			(strings.Contains(l, `comment "node-local-coredns: `) && !strings.Contains(l, `watchdog fence"`)) {
			n++
		}
	}
	return n
}

// countRulesFor counts the agent's rules for ip in a ruleset dump.
func countRulesFor(dump string, ip netip.Addr) int {
	var keep []string
	for _, l := range strings.Split(dump, "\n") {
		if strings.Contains(l, " "+ip.String()+"/") || strings.Contains(l, " "+ip.String()+" ") {
			keep = append(keep, l)
		}
	}
	return countRules(strings.Join(keep, "\n"))
}

// native reports whether the agent on n wrote its own nftables table.
func native(t *testing.T, n *nodesim.Node) bool {
	t.Helper()
	table, err := n.AgentTable(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return table != ""
}

// removeDiversion takes the agent's NOTRACK rules away as someone else
// would (a CNI restoring its own rules, an operator): the raw table flushed
// on the iptables backends, the agent's table deleted on the native one. It
// returns what it did.
func removeDiversion(t *testing.T, n *nodesim.Node) string {
	t.Helper()
	args := []string{"iptables", "-t", "raw", "-F"}
	if native(t, n) {
		args = []string{"nft", "delete", "table", "inet", "node-local-coredns"}
	}
	if _, err := n.NodeExec(t.Context(), args...); err != nil {
		t.Fatal(err)
	}
	return strings.Join(args, " ")
}

// eventually polls cond every 100ms until it is true or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < timeout {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not true after %s", what, timeout)
	return 0
}

// sameAnswer reports whether two responses carry the same rcode and the
// same records in the answer and authority sections, TTLs aside (a cached
// answer ages, and a cache clears the AA bit).
func sameAnswer(a, b *dns.Msg) bool {
	records := func(m *dns.Msg) string {
		var sb strings.Builder
		sb.WriteString(dns.RcodeToString[m.Rcode])
		for _, s := range [][]dns.RR{m.Answer, m.Ns} {
			sb.WriteString("|")
			for _, rr := range s {
				rr = dns.Copy(rr)
				rr.Header().Ttl = 0
				sb.WriteString(rr.String() + ";")
			}
		}
		return sb.String()
	}
	return records(a) == records(b)
}

// metricValue sums every series of the agent's metric name (0 when it has
// none).
func metricValue(t *testing.T, n *nodesim.Node, name string) float64 {
	t.Helper()
	v, err := nodesim.Metric(t.Context(), n.NS, agentMetrics, name)
	if err != nil {
		t.Fatalf("reading the agent's metrics: %v", err)
	}
	return v
}

// metricSeries returns every series of the agent's metric name.
func metricSeries(t *testing.T, n *nodesim.Node, name string) []nodesim.Sample {
	t.Helper()
	series, err := nodesim.MetricSeries(t.Context(), n.NS, agentMetrics, name)
	if err != nil {
		t.Fatalf("reading the agent's metrics: %v", err)
	}
	return series
}

// agentMetrics is where the simulated node's agent serves its metrics.
const agentMetrics = "http://127.0.0.1:9253/metrics"
