package netfilter

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The agent's own nftables table (family inet, both address families) and
// its chains. The base chains sit at the raw priority (-300), before
// conntrack (-200) and kube-proxy's DNAT (-100).
const (
	// NFTTable is the agent's table: "inet node-local-coredns".
	NFTTable = "node-local-coredns"
	// NFTPrerouting holds the NOTRACK rules for queries to the local IPs,
	// after a jump to NFTFence.
	NFTPrerouting = "prerouting"
	// NFTOutput holds the NOTRACK rules for answers from the local IPs (and
	// the watchdog's probes, and host-network queries when asked).
	NFTOutput = "output"
	// NFTFence is the watchdog's regular chain: while it fences the agent
	// off it holds an accept per local IP and protocol, which ends the
	// prerouting chain before the NOTRACK rules see the query.
	NFTFence = "fence"
)

// nftRule is one rule the native backend writes: the chain it goes to,
// its comment (kept in the rule's user data, shown by nft list) and its
// expressions.
type nftRule struct {
	Chain   string
	Comment string
	Exprs   []expr.Any
}

// direction names which end of a packet a match looks at.
type direction int

const (
	toIP   direction = iota // daddr and dport
	fromIP                  // saddr and sport
)

// match returns the expressions of `<ip> daddr|saddr <ip> <proto> dport|sport <port>`.
func match(ip netip.Addr, proto string, dir direction, port uint16) []expr.Any {
	return matchIn(unix.NFPROTO_INET, ip, proto, dir, port)
}

// matchIn is match for a table of family: in an ip or ip6 table the
// family is implied (and nft cannot list a meta nfproto there).
func matchIn(family byte, ip netip.Addr, proto string, dir direction, port uint16) []expr.Any {
	nfproto, offset := byte(unix.NFPROTO_IPV4), uint32(16)
	if ip.Is6() {
		nfproto, offset = unix.NFPROTO_IPV6, 24
	}
	if dir == fromIP {
		offset = map[bool]uint32{false: 12, true: 8}[ip.Is6()]
	}
	l4 := byte(unix.IPPROTO_UDP)
	if proto == "tcp" {
		l4 = unix.IPPROTO_TCP
	}
	portOffset := uint32(2)
	if dir == fromIP {
		portOffset = 0
	}
	var out []expr.Any
	if family == unix.NFPROTO_INET {
		out = []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		}
	}
	return append(out,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(ip.BitLen() / 8)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip.AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: portOffset, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	)
}

// boundSocket is `socket transparent 0`: a (non-transparent) socket for the
// packet's destination exists, as iptables' -m socket --nowildcard tells it.
// Not `socket wildcard`: that key needs a full socket, and the handshake's
// last ACK finds a request socket, which would then be tracked, DNAT'ed to
// kube-dns and reset; the transparent key reads request and time-wait
// sockets too.
func boundSocket() []expr.Any {
	return []expr.Any{
		&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
	}
}

// markSet is `meta mark & mark == mark`.
func markSet(mark uint32) []expr.Any {
	m := make([]byte, 4)
	binary.NativeEndian.PutUint32(m, mark)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: m},
	}
}

func rule(chain, comment string, parts ...[]expr.Any) nftRule {
	r := nftRule{Chain: chain, Comment: comment}
	for _, p := range parts {
		r.Exprs = append(r.Exprs, p...)
	}
	return r
}

var (
	notrack = []expr.Any{&expr.Notrack{}}
	accept  = []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
)

// nftRules returns the rules of the agent's table for ips, in order: the
// jump to the watchdog's fence first in prerouting, then for each IP and
// protocol the same NOTRACK rules as the iptables backend's raw table
// (Rules), with the same comments.
func nftRules(ips []netip.Addr, o Options) []nftRule {
	out := []nftRule{{Chain: NFTPrerouting, Comment: Comment + ": watchdog fence", Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: NFTFence}}}}
	for _, ip := range ips {
		for _, proto := range []string{"udp", "tcp"} {
			c := func(what string) string { return fmt.Sprintf("%s: %s %s/%s", Comment, what, ip, proto) }
			pre := [][]expr.Any{match(ip, proto, toIP, o.Port)}
			if o.SocketMatch {
				pre = append(pre, boundSocket())
			}
			out = append(out,
				rule(NFTPrerouting, c("queries to"), append(pre, notrack)...),
				rule(NFTOutput, c("answers from"), match(ip, proto, fromIP, o.Port), notrack),
			)
			if o.ProbeMark != 0 && proto == "udp" {
				out = append(out, rule(NFTOutput, c("watchdog probes to"), match(ip, proto, toIP, o.Port), markSet(o.ProbeMark), notrack))
			}
			if o.HostNetwork {
				out = append(out, rule(NFTOutput, c("host queries to"), match(ip, proto, toIP, o.Port), notrack))
			}
		}
	}
	return out
}

// acceptRules are the rules the native backend puts at the top of a host
// firewall's chain at the input or output hook whose policy is drop: the
// filter half of the design (queries to the local IPs in, answers out, and
// host queries out when asked). family is the table's family; an ip table
// gets only IPv4 rules, an ip6 table only IPv6.
func acceptRules(ips []netip.Addr, o Options, hook uint32, family byte) []nftRule {
	var out []nftRule
	for _, ip := range ips {
		if (family == unix.NFPROTO_IPV4 && !ip.Is4()) || (family == unix.NFPROTO_IPV6 && !ip.Is6()) {
			continue
		}
		for _, proto := range []string{"udp", "tcp"} {
			c := func(what string) string { return fmt.Sprintf("%s: %s %s/%s", Comment, what, ip, proto) }
			switch hook {
			case unix.NF_INET_LOCAL_IN:
				out = append(out, rule("", c("queries to"), matchIn(family, ip, proto, toIP, o.Port), accept))
			case unix.NF_INET_LOCAL_OUT:
				out = append(out, rule("", c("answers from"), matchIn(family, ip, proto, fromIP, o.Port), accept))
				if o.HostNetwork {
					out = append(out, rule("", c("host queries to"), matchIn(family, ip, proto, toIP, o.Port), accept))
				}
			}
		}
	}
	return out
}

// fenceRules are the watchdog's rules in NFTFence for ips.
func fenceRules(ips []netip.Addr, port uint16) []nftRule {
	var out []nftRule
	for _, ip := range ips {
		for _, proto := range []string{"udp", "tcp"} {
			out = append(out, rule(NFTFence, fmt.Sprintf("%s: watchdog fence for %s/%s", Comment, ip, proto), match(ip, proto, toIP, port), accept))
		}
	}
	return out
}
