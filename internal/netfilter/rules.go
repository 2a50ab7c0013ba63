// Package netfilter installs the rules that take DNS for the local IPs off
// conntrack and kube-proxy's DNAT, in chains of the agent's own with one jump
// from each built-in chain, through iptables-legacy or iptables-nft.
package netfilter

import (
	"fmt"
	"net/netip"
	"strconv"
)

// Family is an IP address family.
type Family int

// The address families.
const (
	IPv4 Family = iota
	IPv6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// FamilyOf returns the family of ip.
func FamilyOf(ip netip.Addr) Family {
	if ip.Is4() {
		return IPv4
	}
	return IPv6
}

// Comment marks every rule and jump of the agent.
const Comment = "node-local-coredns"

// Hook is one built-in chain the agent hooks into, with the chain of its own
// that the jump leads to.
type Hook struct {
	Table   string
	Builtin string
	Chain   string
}

// Hooks are the agent's chains, in the order they are set up.
var Hooks = []Hook{
	{Table: "raw", Builtin: "PREROUTING", Chain: "NLCOREDNS-PREROUTING"},
	{Table: "raw", Builtin: "OUTPUT", Chain: "NLCOREDNS-OUTPUT"},
	{Table: "filter", Builtin: "INPUT", Chain: "NLCOREDNS-INPUT"},
	{Table: "filter", Builtin: "OUTPUT", Chain: "NLCOREDNS-OUTPUT"},
}

// JumpSpec is the rule in a built-in chain that leads to the agent's chain.
func (h Hook) JumpSpec() []string {
	return []string{"-m", "comment", "--comment", Comment, "-j", h.Chain}
}

// Rule is one rule in one of the agent's chains.
type Rule struct {
	Table string
	Chain string
	Spec  []string
}

// Options choose the rules besides the four per protocol of the design.
type Options struct {
	// Port is the DNS port served.
	Port uint16
	// SocketMatch gates the PREROUTING NOTRACK rules on a socket bound to
	// the address (-m socket --nowildcard): when the agent is not listening,
	// traffic is tracked and DNAT'ed to kube-dns as if it were not there.
	SocketMatch bool
	// HostNetwork also takes host-network clients' queries off conntrack
	// (raw OUTPUT). Those rules cannot be gated on the socket.
	HostNetwork bool
	// ProbeMark, if not 0, lets UDP queries that carry this firewall mark
	// (the watchdog's probes) reach the agent from the node itself, even
	// while the watchdog has fenced the agent off.
	ProbeMark uint32
	// FilterOnly writes only the filter table's accept rules (the native
	// backend holds the NOTRACK rules in its own nftables table).
	FilterOnly bool
}

// Rules returns the agent's rules for one local IP: TCP and UDP, for
//   - raw PREROUTING: queries to ip skip conntrack (and so DNAT),
//   - filter INPUT: queries to ip are accepted,
//   - raw OUTPUT: answers from ip skip conntrack,
//   - filter OUTPUT: answers from ip are accepted,
//
// and, with HostNetwork, queries from the node itself to ip.
func Rules(ip netip.Addr, o Options) []Rule {
	bits := strconv.Itoa(ip.BitLen())
	addr := ip.String() + "/" + bits
	port := strconv.Itoa(int(o.Port))
	var out []Rule
	for _, proto := range []string{"udp", "tcp"} {
		match := func(dir, portDir string) []string {
			return []string{"-p", proto, dir, addr, "-m", proto, portDir, port}
		}
		comment := func(what string) []string {
			return []string{"-m", "comment", "--comment", fmt.Sprintf("%s: %s %s/%s", Comment, what, ip, proto)}
		}
		pre := match("-d", "--dport")
		if o.SocketMatch {
			pre = append(pre, "-m", "socket", "--nowildcard")
		}
		out = append(out,
			Rule{"raw", "NLCOREDNS-PREROUTING", join(pre, comment("queries to"), "-j", "NOTRACK")},
			Rule{"filter", "NLCOREDNS-INPUT", join(match("-d", "--dport"), comment("queries to"), "-j", "ACCEPT")},
			Rule{"raw", "NLCOREDNS-OUTPUT", join(match("-s", "--sport"), comment("answers from"), "-j", "NOTRACK")},
			Rule{"filter", "NLCOREDNS-OUTPUT", join(match("-s", "--sport"), comment("answers from"), "-j", "ACCEPT")},
		)
		if o.ProbeMark != 0 && proto == "udp" {
			mark := fmt.Sprintf("0x%x/0x%x", o.ProbeMark, o.ProbeMark)
			out = append(out, Rule{"raw", "NLCOREDNS-OUTPUT", join(match("-d", "--dport"), "-m", "mark", "--mark", mark, comment("watchdog probes to"), "-j", "NOTRACK")})
		}
		if o.HostNetwork {
			out = append(out,
				Rule{"raw", "NLCOREDNS-OUTPUT", join(match("-d", "--dport"), comment("host queries to"), "-j", "NOTRACK")},
				Rule{"filter", "NLCOREDNS-OUTPUT", join(match("-d", "--dport"), comment("host queries to"), "-j", "ACCEPT")},
			)
		}
	}
	return out
}

func join(parts ...any) []string {
	var out []string
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			out = append(out, v)
		case []string:
			out = append(out, v...)
		}
	}
	return out
}
