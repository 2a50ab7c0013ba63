package nodesim

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// Service is a ClusterIP Service in the simulated cluster.
type Service struct {
	Namespace, Name string
	IPs             []netip.Addr // one per family
}

// Services are the two Services of the design, both selecting the kube-dns
// endpoints: kube-dns (what pods use) and node-local-coredns (what the
// agent forwards cache misses to).
var Services = []Service{
	{Namespace: "kube-system", Name: "kube-dns", IPs: []netip.Addr{KubeDNS, KubeDNS6}},
	{Namespace: "kube-system", Name: "node-local-coredns", IPs: []netip.Addr{NodeLocalDNS, NodeLocalDNS6}},
}

// chainName derives a chain name the way kube-proxy does: a prefix and the
// first 16 base32 characters of a SHA-256 of what the chain is for.
func chainName(prefix, what string) string {
	h := sha256.Sum256([]byte(what))
	return prefix + base32.StdEncoding.EncodeToString(h[:])[:16]
}

// KubeProxyRules renders the nat and filter rules kube-proxy (iptables mode)
// would write for Services on this node, for one family, in
// iptables-restore format.
func (n *Node) KubeProxyRules(v6 bool) string { return n.kubeProxyRules(v6, false) }

func (n *Node) kubeProxyRules(v6, natOnly bool) string {
	var b strings.Builder
	podNet, bits := podCIDR, 32
	if v6 {
		podNet, bits = podCIDR6, 128
	}
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("*nat")
	w(":KUBE-SERVICES - [0:0]")
	w(":KUBE-POSTROUTING - [0:0]")
	w(":KUBE-MARK-MASQ - [0:0]")
	var chains, rules []string
	for _, svc := range Services {
		ip := svc.IPs[0]
		if v6 {
			ip = svc.IPs[1]
		}
		for _, proto := range []string{"udp", "tcp"} {
			portName := map[string]string{"udp": "dns", "tcp": "dns-tcp"}[proto]
			spn := fmt.Sprintf("%s/%s:%s", svc.Namespace, svc.Name, portName)
			svcChain := chainName("KUBE-SVC-", spn+proto)
			chains = append(chains, svcChain)
			rules = append(rules,
				fmt.Sprintf(`-A KUBE-SERVICES -d %s/%d -p %s -m comment --comment "%s cluster IP" -m %s --dport 53 -j %s`, ip, bits, proto, spn, proto, svcChain),
				fmt.Sprintf(`-A %s ! -s %s -d %s/%d -p %s -m comment --comment "%s cluster IP" -m %s --dport 53 -j KUBE-MARK-MASQ`, svcChain, podNet, ip, bits, proto, spn, proto))
			var live []*Endpoint
			for i, e := range n.Endpoints {
				if !n.removed[i] {
					live = append(live, e)
				}
			}
			for i, e := range live {
				epIP := e.IP
				dest := fmt.Sprintf("%s:53", epIP)
				if v6 {
					epIP = e.IP6
					dest = fmt.Sprintf("[%s]:53", epIP)
				}
				sepChain := chainName("KUBE-SEP-", spn+proto+epIP.String())
				chains = append(chains, sepChain)
				left := len(live) - i
				if left > 1 {
					rules = append(rules, fmt.Sprintf(`-A %s -m comment --comment "%s -> %s" -m statistic --mode random --probability %.11f -j %s`, svcChain, spn, dest, 1/float64(left), sepChain))
				} else {
					rules = append(rules, fmt.Sprintf(`-A %s -m comment --comment "%s -> %s" -j %s`, svcChain, spn, dest, sepChain))
				}
				rules = append(rules,
					fmt.Sprintf(`-A %s -s %s/%d -m comment --comment "%s" -j KUBE-MARK-MASQ`, sepChain, epIP, bits, spn),
					fmt.Sprintf(`-A %s -p %s -m comment --comment "%s" -m %s -j DNAT --to-destination %s`, sepChain, proto, spn, proto, dest))
			}
		}
	}
	for _, c := range chains {
		w(":%s - [0:0]", c)
	}
	w(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	w(`-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000`)
	w(`-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`)
	w(`-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0`)
	w(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE`)
	for _, r := range rules {
		w("%s", r)
	}
	w("COMMIT")
	if natOnly {
		return b.String()
	}
	// filter: kube-proxy's forward chain drops invalid conntrack states,
	// inserted at the top of FORWARD and INPUT as kube-proxy does.
	w("*filter")
	w(":KUBE-FORWARD - [0:0]")
	w(":KUBE-FIREWALL - [0:0]")
	w(`-I FORWARD 1 -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`)
	w(`-I INPUT 1 -j KUBE-FIREWALL`)
	w(`-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`)
	w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT`)
	w(`-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`)
	w("COMMIT")
	out := b.String()
	if v6 {
		out = strings.ReplaceAll(out, "127.0.0.0/8", "::1/128")
	}
	return out
}

// RemoveEndpoint does what kube-proxy does when kube-dns endpoint i stops
// being ready: it rewrites the Services' nat rules without it (only the nat
// table) and deletes the UDP conntrack entries that lead to it.
func (n *Node) RemoveEndpoint(ctx context.Context, i int) error {
	n.removed[i] = true
	n.setHeadless()
	if err := n.restoreKubeProxy(ctx, true); err != nil {
		return err
	}
	for _, ip := range []netip.Addr{n.Endpoints[i].IP, n.Endpoints[i].IP6} {
		// "0 flow entries" exits 1: nothing to delete is fine.
		_, _ = n.NodeExec(ctx, "conntrack", "-D", "-p", "udp", "--reply-src", ip.String())
	}
	return nil
}

// RestoreEndpoint puts endpoint i back into the Services' rules.
func (n *Node) RestoreEndpoint(ctx context.Context, i int) error {
	delete(n.removed, i)
	n.setHeadless()
	return n.restoreKubeProxy(ctx, true)
}

// setHeadless makes kube-dns answer the headless Service of its endpoints
// with the endpoints not removed, as kube-dns follows the EndpointSlices.
func (n *Node) setHeadless() {
	var eps []netip.Addr
	for i, e := range n.Endpoints {
		if !n.removed[i] {
			eps = append(eps, e.IP, e.IP6)
		}
	}
	for _, e := range n.Endpoints {
		if e.DNS != nil {
			e.DNS.SetHeadless(EndpointsName, eps)
		}
	}
}

func (n *Node) installKubeProxy(ctx context.Context) error { return n.restoreKubeProxy(ctx, false) }

func (n *Node) restoreKubeProxy(ctx context.Context, natOnly bool) error {
	for _, v6 := range []bool{false, true} {
		tool := "iptables-" + n.mode + "-restore"
		if v6 {
			tool = "ip6tables-" + n.mode + "-restore"
		}
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.NS, tool, "-w", "5")
		cmd.Stdin = strings.NewReader(n.kubeProxyRules(v6, natOnly))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("installing kube-proxy rules (%s): %w: %s", tool, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
