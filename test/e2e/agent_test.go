package e2e

import (
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// Without the agent, pods resolve through kube-proxy's DNAT, and conntrack
// tracks every query.
func TestWithoutAgentPodsResolveThroughDNAT(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	pod := n.Pods[0]
	for _, proto := range []string{"udp", "tcp"} {
		resolve(t, pod, proto, nodesim.KubeDNS, "web.default.svc.cluster.local", dns.TypeA)
	}
	if got := n.UpstreamQueries(); got != 2 {
		t.Errorf("kube-dns endpoints answered %d queries, want 2", got)
	}
	if ct := podConntrack(t, n, pod, nodesim.KubeDNS); len(ct) != 2 {
		t.Errorf("conntrack entries for the pod's DNS: %q, want one UDP and one TCP", ct)
	}
}

// With the agent, pods' queries to the kube-dns ClusterIP are answered by the
// agent over UDP and TCP, without any conntrack entry; a repeated name
// reaches kube-dns once, through the node-local-coredns Service; answers are
// the same as kube-dns's.
func TestAgentServesPodsWithoutConntrack(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	pod := n.Pods[0]
	// What kube-dns answers, before the agent runs.
	const name = "api.default.svc.cluster.local"
	direct := resolve(t, pod, "udp", nodesim.KubeDNS, name, dns.TypeA)
	nx, _, err := pod.Query("udp", nodesim.KubeDNS, "nx-gone.default.svc.cluster.local", dns.TypeA)
	if err != nil {
		t.Fatal(err)
	}
	external, _, err := pod.Query("udp", nodesim.KubeDNS, "www.example.org", dns.TypeAAAA)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.FlushConntrack(); err != nil {
		t.Fatal(err)
	}

	startAgent(t, n, "--sync-interval=1s")
	for i := range 5 {
		for _, proto := range []string{"udp", "tcp"} {
			r := resolve(t, pod, proto, nodesim.KubeDNS, name, dns.TypeA)
			if i == 0 && proto == "udp" && !sameAnswer(r, direct) {
				t.Errorf("answer through the agent differs from kube-dns's:\n%v\nvs\n%v", r, direct)
			}
		}
		resolve(t, n.Pods[1], "udp", nodesim.KubeDNS, name, dns.TypeA)
	}
	if got := n.UpstreamQueriesFor(name) - 1; got != 1 {
		t.Errorf("kube-dns got %d queries for %s through the agent, want 1 (the rest from its cache)", got, name)
	}
	r, _, err := pod.Query("udp", nodesim.KubeDNS, "nx-gone.default.svc.cluster.local", dns.TypeA)
	if err != nil || !sameAnswer(r, nx) {
		t.Errorf("NXDOMAIN through the agent: %v, %v; want\n%v", r, err, nx)
	}
	r, _, err = pod.Query("tcp", nodesim.KubeDNS, "www.example.org", dns.TypeAAAA)
	if err != nil || !sameAnswer(r, external) {
		t.Errorf("external name through the agent: %v, %v; want\n%v", r, err, external)
	}
	for _, p := range n.Pods {
		if ct := podConntrack(t, n, p, nodesim.KubeDNS); len(ct) != 0 {
			t.Errorf("conntrack entries for %s's DNS with the agent: %q, want none", p.NS, ct)
		}
	}
	// Misses went to kube-dns through the node-local-coredns Service: DNAT'ed
	// (so tracked) on their way from the agent.
	if ct, err := n.ConntrackDNS(nodesim.NodeLocalDNS); err != nil || len(ct) == 0 {
		t.Errorf("no conntrack entry for the agent's upstream Service %s (%v): misses did not go through it", nodesim.NodeLocalDNS, err)
	}
	// Besides the three questions, only the loop plugin's HINFO probes
	// reached kube-dns.
	got := n.UpstreamQueriesFor(name) - 1 + n.UpstreamQueriesFor("nx-gone.default.svc.cluster.local") - 1 + n.UpstreamQueriesFor("www.example.org") - 1
	if got != 3 {
		t.Errorf("kube-dns got %d queries through the agent for the three questions, want 3 (one each)", got)
	}
}

// SIGTERM removes the rules, the address and the interface, exits 0 well
// within 30 s, and pods resolve through DNAT again. A new agent takes over.
func TestStopCleansUpAndRestartTakesOver(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	pod := n.Pods[0]
	a := startAgent(t, n, "--sync-interval=1s")
	if dump := ruleset(t, n); countRules(dump) != rulesPerIP {
		t.Fatalf("want %d rules in the agent's chains, got:\n%s", rulesPerIP, dump)
	}
	if addrs, _ := n.Addrs(t.Context(), "nodelocaldns"); !strings.Contains(addrs, nodesim.KubeDNS.String()+"/32") {
		t.Fatalf("nodelocaldns does not hold %s: %q", nodesim.KubeDNS, addrs)
	}
	resolve(t, pod, "udp", nodesim.KubeDNS, "a.default.svc.cluster.local", dns.TypeA)

	start := time.Now()
	if err := a.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, err := a.Wait(stopTimeout)
	if err != nil || code != 0 {
		t.Fatalf("exit code %d (%v) after SIGTERM, want 0:\n%s", code, err, a.Output())
	}
	t.Logf("stopped in %s", time.Since(start).Round(time.Millisecond))
	dump := ruleset(t, n)
	if strings.Contains(dump, "NLCOREDNS") || strings.Contains(dump, `comment "node-local-coredns`) || strings.Contains(dump, "--comment node-local-coredns") {
		t.Errorf("rules left after SIGTERM:\n%s", dump)
	}
	if addrs, _ := n.Addrs(t.Context(), "nodelocaldns"); addrs != "" {
		t.Errorf("interface left after SIGTERM: %q", addrs)
	}
	before := n.UpstreamQueries()
	resolve(t, pod, "udp", nodesim.KubeDNS, "a.default.svc.cluster.local", dns.TypeA)
	if n.UpstreamQueries() != before+1 {
		t.Errorf("after SIGTERM the query did not reach kube-dns")
	}
	if ct := podConntrack(t, n, pod, nodesim.KubeDNS); len(ct) != 1 {
		t.Errorf("after SIGTERM want the pod's query tracked and DNAT'ed, conntrack has %q", ct)
	}

	startAgent(t, n, "--sync-interval=1s")
	if err := n.FlushConntrack(); err != nil {
		t.Fatal(err)
	}
	resolve(t, pod, "udp", nodesim.KubeDNS, "b.default.svc.cluster.local", dns.TypeA)
	resolve(t, pod, "tcp", nodesim.KubeDNS, "b.default.svc.cluster.local", dns.TypeA)
	if ct := podConntrack(t, n, pod, nodesim.KubeDNS); len(ct) != 0 {
		t.Errorf("restarted agent: conntrack entries %q, want none", ct)
	}
}

// Someone flushing the raw and filter tables (a CNI restoring its own rules)
// does not break DNS, and the agent puts its rules back within the sync
// interval.
func TestFlushedRulesComeBack(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	pod := n.Pods[0]
	startAgent(t, n, "--sync-interval=1s")
	want := countRules(ruleset(t, n))
	for _, damage := range []func() string{
		func() string { return removeDiversion(t, n) },
		func() string {
			if _, err := n.NodeExec(t.Context(), "iptables", "-t", "filter", "-F", "NLCOREDNS-INPUT"); err != nil {
				t.Fatal(err)
			}
			return "iptables -t filter -F NLCOREDNS-INPUT"
		},
	} {
		what := damage()
		// Meanwhile queries are DNAT'ed to kube-dns and still answered.
		resolve(t, pod, "udp", nodesim.KubeDNS, "during.default.svc.cluster.local", dns.TypeA)
		took := eventually(t, 3*time.Second, "rules restored", func() bool {
			return countRules(ruleset(t, n)) == want
		})
		t.Logf("%s: restored in %s", what, took.Round(time.Millisecond))
	}
	if err := n.FlushConntrack(); err != nil {
		t.Fatal(err)
	}
	resolve(t, pod, "udp", nodesim.KubeDNS, "after.default.svc.cluster.local", dns.TypeA)
	if ct := podConntrack(t, n, pod, nodesim.KubeDNS); len(ct) != 0 {
		t.Errorf("after restore: conntrack entries %q, want none", ct)
	}
}

// With --interface cbr0 the agent adds the ClusterIP to the existing bridge
// and removes only that address when it stops.
func TestExistingInterface(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	pod := n.Pods[0]
	a := startAgent(t, n, "--interface=cbr0")
	addrs, _ := n.Addrs(t.Context(), "cbr0")
	if !strings.Contains(addrs, nodesim.KubeDNS.String()+"/32") {
		t.Fatalf("cbr0 does not hold %s: %q", nodesim.KubeDNS, addrs)
	}
	resolve(t, pod, "udp", nodesim.KubeDNS, "c.default.svc.cluster.local", dns.TypeA)
	if ct := podConntrack(t, n, pod, nodesim.KubeDNS); len(ct) != 0 {
		t.Errorf("conntrack entries %q, want none", ct)
	}
	if code, err := a.Stop(stopTimeout); err != nil || code != 0 {
		t.Fatalf("stop: %d %v", code, err)
	}
	addrs, _ = n.Addrs(t.Context(), "cbr0")
	if strings.Contains(addrs, nodesim.KubeDNS.String()) {
		t.Errorf("cbr0 still holds %s after stop: %q", nodesim.KubeDNS, addrs)
	}
	if !strings.Contains(addrs, nodesim.BridgeIP.String()+"/24") {
		t.Errorf("cbr0 lost its own address: %q", addrs)
	}
	resolve(t, pod, "udp", nodesim.KubeDNS, "c.default.svc.cluster.local", dns.TypeA)
}

// One agent serves the IPv4 and the IPv6 ClusterIP, with ip6tables rules,
// and neither family's queries are tracked.
func TestDualStack(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	pod := n.Pods[0]
	startAgent(t, n, "--local-ip="+nodesim.KubeDNS.String()+","+nodesim.KubeDNS6.String(),
		"--upstream="+nodesim.NodeLocalDNS.String()+",["+nodesim.NodeLocalDNS6.String()+"]:53")
	for _, proto := range []string{"udp", "tcp"} {
		resolve(t, pod, proto, nodesim.KubeDNS, "v4.default.svc.cluster.local", dns.TypeA)
		resolve(t, pod, proto, nodesim.KubeDNS6, "v6.default.svc.cluster.local", dns.TypeAAAA)
	}
	if ct := podConntrack(t, n, pod, nodesim.KubeDNS); len(ct) != 0 {
		t.Errorf("IPv4 conntrack entries %q, want none", ct)
	}
	if ct := podConntrack(t, n, pod, nodesim.KubeDNS6); len(ct) != 0 {
		t.Errorf("IPv6 conntrack entries %q, want none", ct)
	}
	dump := ruleset(t, n)
	for _, ip := range []netip.Addr{nodesim.KubeDNS, nodesim.KubeDNS6} {
		if got := countRulesFor(dump, ip); got != rulesPerIP {
			t.Errorf("the agent has %d rules for %s, want %d:\n%s", got, ip, rulesPerIP, dump)
		}
	}
}
