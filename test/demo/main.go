// Command demo shows node-local-coredns on a simulated node: pods resolving
// through kube-proxy's DNAT, then through the agent, then through DNAT again
// after the agent stops. It removes everything it created, also on Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

func main() {
	binary := flag.String("binary", "bin/node-local-coredns", "the agent binary")
	queries := flag.Int("queries", 600, "queries per phase (bounded load)")
	hop := flag.Duration("kube-dns-delay", time.Millisecond, "delay each kube-dns answer by this much, standing in for the network to a kube-dns pod on another node")
	names := flag.Int("names", 60, "distinct names among them")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *binary, *queries, *names, *hop); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, binary string, queries, names int, hop time.Duration) error {
	if why := nodesim.Supported(); why != "" {
		return fmt.Errorf("%s", why)
	}
	if _, err := os.Stat(binary); err != nil {
		return fmt.Errorf("no agent binary (run make build): %w", err)
	}
	section("Building a simulated node")
	if err := nodesim.Sweep("nlcdemo"); err != nil {
		return err
	}
	n, err := nodesim.New(ctx, nodesim.Options{Prefix: "nlcdemo"})
	if err != nil {
		return err
	}
	defer func() {
		section("Cleaning up")
		if err := n.Close(); err != nil {
			fmt.Println("  ", err)
		} else {
			fmt.Println("   removed every namespace of the simulated node; nothing was changed outside them")
		}
	}()
	pod := n.Pods[0]
	fmt.Printf("   node namespace %s: bridge cbr0 %s, kube-proxy rules (iptables-%s)\n", n.NS, nodesim.BridgeIP, n.Mode())
	fmt.Printf("   pods %s (%s) and %s (%s)\n", n.Pods[0].NS, n.Pods[0].IP, n.Pods[1].NS, n.Pods[1].IP)
	fmt.Printf("   Service kube-dns %s and node-local-coredns %s -> kube-dns endpoints %s, %s\n",
		nodesim.KubeDNS, nodesim.NodeLocalDNS, n.Endpoints[0].IP, n.Endpoints[1].IP)
	for _, e := range n.Endpoints {
		e.DNS.SetDelay(hop)
	}
	fmt.Printf("   each kube-dns answer is delayed %s, standing in for the network to another node (-kube-dns-delay)\n", hop)

	section("1. Without the agent: the pod's DNS goes through DNAT and conntrack")
	show(pod, "web.default.svc.cluster.local", dns.TypeA)
	before := load(ctx, n, pod, queries, names)
	before.print()

	section("2. With node-local-coredns")
	agent, err := n.StartAgent(binary, "--sync-interval=2s")
	if err != nil {
		return err
	}
	defer agent.Stop(30 * time.Second) //nolint:errcheck // stopped below; this is for early returns
	if err := agent.WaitLog(ctx, "msg=serving", 20*time.Second); err != nil {
		return err
	}
	addrs, _ := n.Addrs(ctx, "nodelocaldns")
	fmt.Printf("   agent pid %d serves %s on interface %s", agent.Pid(), nodesim.KubeDNS, addrs)
	rules, _ := n.Ruleset(ctx)
	fmt.Println("   its rules (iptables-save, IPv4):")
	for _, l := range strings.Split(rules, "\n") {
		if strings.HasPrefix(l, "-A NLCOREDNS-") && strings.Contains(l, "/32") && strings.Contains(l, "-p udp") {
			fmt.Println("     ", l)
		}
	}
	fmt.Println("      (and the same for TCP)")
	show(pod, "web.default.svc.cluster.local", dns.TypeA)
	show(pod, "www.example.org", dns.TypeAAAA)
	with := load(ctx, n, pod, queries, names)
	with.print()

	section("3. The difference")
	fmt.Printf("   latency p50: %s through the agent, %s through DNAT (%.1fx)\n", with.p(50), before.p(50), ratio(before.p(50), with.p(50)))
	fmt.Printf("   latency p99: %s through the agent, %s through DNAT (%.1fx)\n", with.p(99), before.p(99), ratio(before.p(99), with.p(99)))
	fmt.Printf("   conntrack entries for the pod's DNS: %d with the agent, %d without\n", with.conntrack, before.conntrack)
	fmt.Printf("   queries that reached kube-dns: %d of %d with the agent (cache hit ratio %.1f%%), %d of %d without\n",
		with.upstream, with.sent, 100*(1-float64(with.upstream)/float64(with.sent)), before.upstream, before.sent)

	section("4. Stopping the agent (SIGTERM)")
	start := time.Now()
	code, err := agent.Stop(30 * time.Second)
	if err != nil {
		return err
	}
	fmt.Printf("   exited %d in %s\n", code, time.Since(start).Round(time.Millisecond))
	rules, _ = n.Ruleset(ctx)
	addrs, _ = n.Addrs(ctx, "nodelocaldns")
	fmt.Printf("   rules left: %d, interface left: %t\n", strings.Count(rules, "NLCOREDNS"), addrs != "")
	after := load(ctx, n, pod, 20, 5)
	fmt.Printf("   the pod still resolves: %d of %d answered, through DNAT again (%d conntrack entries)\n", after.sent-after.failed, after.sent, after.conntrack)
	return nil
}

type phase struct {
	sent, failed, upstream, conntrack int
	lat                               []time.Duration
}

// load sends queries from pod to the kube-dns ClusterIP, cycling through
// names distinct names, one at a time, and measures them.
func load(ctx context.Context, n *nodesim.Node, pod *nodesim.Pod, queries, names int) phase {
	_ = n.FlushConntrack()
	up := n.UpstreamQueries()
	var p phase
	for i := 0; i < queries && ctx.Err() == nil; i++ {
		name := fmt.Sprintf("svc-%d.default.svc.cluster.local", i%names)
		r, rtt, err := pod.Query("udp", nodesim.KubeDNS, name, dns.TypeA)
		p.sent++
		if err != nil || r.Rcode != dns.RcodeSuccess {
			p.failed++
			continue
		}
		p.lat = append(p.lat, rtt)
	}
	p.upstream = int(n.UpstreamQueries() - up)
	ct, _ := n.ConntrackDNS(nodesim.KubeDNS)
	for _, e := range ct {
		if strings.Contains(e, " "+pod.IP.String()+":") {
			p.conntrack++
		}
	}
	slices.Sort(p.lat)
	return p
}

func (p phase) p(q int) time.Duration {
	if len(p.lat) == 0 {
		return 0
	}
	return p.lat[(len(p.lat)-1)*q/100].Round(time.Microsecond)
}

func (p phase) print() {
	fmt.Printf("   %d queries, %d failed; latency p50 %s, p99 %s; %d reached kube-dns; %d conntrack entries for the pod's DNS\n",
		p.sent, p.failed, p.p(50), p.p(99), p.upstream, p.conntrack)
}

func show(pod *nodesim.Pod, name string, qtype uint16) {
	r, rtt, err := pod.Query("udp", nodesim.KubeDNS, name, qtype)
	if err != nil {
		fmt.Printf("   %s %s: %v\n", name, dns.TypeToString[qtype], err)
		return
	}
	for _, rr := range r.Answer {
		fmt.Printf("   %-60s (%s)\n", rr.String(), rtt.Round(time.Microsecond))
	}
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func section(title string) { fmt.Printf("\n== %s\n", title) }
