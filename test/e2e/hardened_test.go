package e2e

import (
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// A hardened node filters INPUT and OUTPUT with a drop policy, accepting
// only loopback, established traffic and connections to its own DNS
// upstream (the node-local-coredns Service, before DNAT). The agent's queries
// and answers are untracked, so no "established" rule lets them through:
// its accept rules must be where the host drops. On every combination of
// where the host filters and which backend the agent picks, pods resolve
// through the agent (hits and misses, UDP and TCP) with no conntrack entry.
func TestHardenedNode(t *testing.T) {
	upstream := nodesim.NodeLocalDNS.String()
	for _, tc := range []struct {
		name     string
		mode     string // kube-proxy's iptables mode on the node
		firewall [][]string
		backend  string // in the agent's log line
		metric   string // the backend label of node_local_coredns_netfilter_backend
	}{
		{
			name:     "iptables-nft drops, native table",
			mode:     "nft",
			firewall: iptablesFirewall("iptables-nft", upstream),
			backend:  "backend=nftables accept_rules=iptables-nft",
			metric:   "nftables",
		},
		{
			name: "host nftables table drops, native table",
			mode: "nft",
			firewall: [][]string{
				{"nft", "add table inet host"},
				{"nft", "add chain inet host input { type filter hook input priority filter ; policy drop ; }"},
				{"nft", "add chain inet host output { type filter hook output priority filter ; policy drop ; }"},
				{"nft", "add rule inet host input ct state established,related accept"},
				{"nft", "add rule inet host output ct state established,related accept"},
				{"nft", "add rule inet host input iif lo accept"},
				{"nft", "add rule inet host output oif lo accept"},
				{"nft", "add rule inet host output ct original ip daddr " + upstream + " accept"},
			},
			backend: "backend=nftables accept_rules=iptables-nft",
			metric:  "nftables",
		},
		{
			name:     "iptables-legacy drops, legacy backend",
			mode:     "legacy",
			firewall: iptablesFirewall("iptables-legacy", upstream),
			backend:  "backend=iptables-legacy",
			metric:   "iptables-legacy",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, nodesim.Options{IptablesMode: tc.mode})
			pod := n.Pods[0]
			for _, args := range tc.firewall {
				if _, err := n.NodeExec(t.Context(), args...); err != nil {
					t.Fatal(err)
				}
			}
			a := startAgent(t, n, "--sync-interval=1s")
			if !strings.Contains(a.Output(), tc.backend) {
				t.Errorf("the agent did not log %q:\n%s", tc.backend, a.Output())
			}
			if got := metricSeries(t, n, "node_local_coredns_netfilter_backend"); len(got) != 1 || got[0].Labels["backend"] != tc.metric || got[0].Value != 1 {
				t.Errorf("node_local_coredns_netfilter_backend = %+v, want one series with backend %q at 1", got, tc.metric)
			}
			for _, proto := range []string{"udp", "tcp"} {
				// The first lookup is a miss (the agent asks kube-dns), the
				// second a hit.
				for _, name := range []string{proto + "-miss.default.svc.cluster.local", proto + "-miss.default.svc.cluster.local"} {
					if r := resolve(t, pod, proto, nodesim.KubeDNS, name, dns.TypeA); len(r.Answer) == 0 {
						t.Errorf("%s %s: no answer through the hardened node", proto, name)
					}
				}
			}
			if ct := podConntrack(t, n, pod, nodesim.KubeDNS); len(ct) != 0 {
				t.Errorf("conntrack entries %q, want none", ct)
			}
		})
	}
}

// iptablesFirewall is a hardened node's filter in one iptables backend:
// loopback, established traffic and the node's DNS upstream (before DNAT)
// accepted, everything else dropped, in and out.
func iptablesFirewall(tool, upstream string) [][]string {
	return [][]string{
		{tool, "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{tool, "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{tool, "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"},
		{tool, "-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"},
		{tool, "-A", "OUTPUT", "-m", "conntrack", "--ctorigdst", upstream, "-j", "ACCEPT"},
		{tool, "-P", "INPUT", "DROP"},
		{tool, "-P", "OUTPUT", "DROP"},
	}
}
