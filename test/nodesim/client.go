package nodesim

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Query sends one query for name/qtype from namespace ns to server over
// proto ("udp" or "tcp") and returns the answer and how long it took.
func Query(ns, proto string, server netip.AddrPort, name string, qtype uint16, timeout time.Duration) (*dns.Msg, time.Duration, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	return Exchange(ns, proto, server, m, timeout)
}

// Exchange sends m from namespace ns to server over proto.
func Exchange(ns, proto string, server netip.AddrPort, m *dns.Msg, timeout time.Duration) (*dns.Msg, time.Duration, error) {
	var conn net.Conn
	addr := server.String()
	err := InNS(ns, func() error {
		var err error
		conn, err = net.DialTimeout(proto, addr, timeout)
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("dialing %s/%s from %s: %w", addr, proto, ns, err)
	}
	c := &dns.Conn{Conn: conn}
	defer c.Close()
	start := time.Now()
	_ = c.SetDeadline(start.Add(timeout))
	if err := c.WriteMsg(m); err != nil {
		return nil, 0, err
	}
	for {
		r, err := c.ReadMsg()
		if err != nil {
			return nil, time.Since(start), err
		}
		if r.Id == m.Id {
			return r, time.Since(start), nil
		}
	}
}

// Query sends one query from the pod to server port 53, with a 2 s timeout.
func (p *Pod) Query(proto string, server netip.Addr, name string, qtype uint16) (*dns.Msg, time.Duration, error) {
	return Query(p.NS, proto, netip.AddrPortFrom(server, 53), name, qtype, 2*time.Second)
}

// ConntrackDNS returns the node's conntrack entries whose original
// destination is dst port 53, as "proto src:sport -> dst:dport" lines.
func (n *Node) ConntrackDNS(dst netip.Addr) ([]string, error) {
	ns, err := netns.GetFromName(n.NS)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	family := netlink.InetFamily(netlink.FAMILY_V4)
	if dst.Is6() {
		family = netlink.FAMILY_V6
	}
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, family)
	if err != nil {
		return nil, fmt.Errorf("listing conntrack in %s: %w", n.NS, err)
	}
	var out []string
	for _, f := range flows {
		ip, ok := netip.AddrFromSlice(f.Forward.DstIP)
		if !ok || ip.Unmap() != dst || f.Forward.DstPort != 53 {
			continue
		}
		proto := strconv.Itoa(int(f.Forward.Protocol))
		switch f.Forward.Protocol {
		case 6:
			proto = "tcp"
		case 17:
			proto = "udp"
		}
		out = append(out, fmt.Sprintf("%s %s -> %s", proto,
			net.JoinHostPort(f.Forward.SrcIP.String(), strconv.Itoa(int(f.Forward.SrcPort))),
			net.JoinHostPort(f.Forward.DstIP.String(), strconv.Itoa(int(f.Forward.DstPort)))))
	}
	return out, nil
}

// FlushConntrack deletes every conntrack entry in the node's namespace.
func (n *Node) FlushConntrack() error {
	ns, err := netns.GetFromName(n.NS)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.ConntrackTableFlush(netlink.ConntrackTable)
}

// UpstreamQueries returns the queries all kube-dns endpoints answered.
func (n *Node) UpstreamQueries() int64 {
	var total int64
	for _, e := range n.Endpoints {
		if e.DNS != nil {
			total += e.DNS.Queries()
		}
	}
	return total
}

// UpstreamQueriesFor returns the queries for name all endpoints got.
func (n *Node) UpstreamQueriesFor(name string) int {
	total := 0
	for _, e := range n.Endpoints {
		if e.DNS != nil {
			total += e.DNS.QueriesFor(name)
		}
	}
	return total
}

// FromPods returns when queries that came straight from pods (through
// DNAT, bypassing the agent) reached any kube-dns endpoint, in order.
func (n *Node) FromPods() []time.Time {
	var out []time.Time
	for _, e := range n.Endpoints {
		if e.DNS != nil {
			out = append(out, e.DNS.FromPods()...)
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// DeleteConntrackTo deletes the node's conntrack entries whose original
// destination is dst, and no others (flushing the whole table would also
// cut connections the test does not look at, such as a CoreDNS's watch of
// the API server through a ClusterIP). It returns how many it deleted.
func (n *Node) DeleteConntrackTo(dst netip.Addr) (uint, error) {
	ns, err := netns.GetFromName(n.NS)
	if err != nil {
		return 0, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	family := netlink.InetFamily(netlink.FAMILY_V4)
	if dst.Is6() {
		family = netlink.FAMILY_V6
	}
	f := &netlink.ConntrackFilter{}
	if err := f.AddIP(netlink.ConntrackOrigDstIP, dst.AsSlice()); err != nil {
		return 0, err
	}
	return h.ConntrackDeleteFilters(netlink.ConntrackTable, family, f)
}

// UDPDrops sums the drop counters of the node's UDP sockets bound to addr
// (IPv4): the datagrams the kernel dropped because a socket's receive
// buffer was full.
func (n *Node) UDPDrops(addr netip.AddrPort) (int, error) {
	out, err := n.NodeExec(context.Background(), "cat", "/proc/net/udp")
	if err != nil {
		return 0, err
	}
	a4 := addr.Addr().As4()
	local := fmt.Sprintf("%02X%02X%02X%02X:%04X", a4[3], a4[2], a4[1], a4[0], addr.Port())
	total := 0
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 13 || f[1] != local {
			continue
		}
		d, err := strconv.Atoi(f[len(f)-1])
		if err != nil {
			return 0, fmt.Errorf("parsing /proc/net/udp: %q", l)
		}
		total += d
	}
	return total, nil
}
