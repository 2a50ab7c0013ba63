package netfilter

import (
	"fmt"
	"net/netip"
	"strings"
)

// FenceChain is the watchdog's chain in raw PREROUTING. While the agent
// does not answer, it holds a rule per local IP that ends the raw table for
// DNS to that IP before the agent's NOTRACK rules see it: the queries are
// tracked and DNAT'ed to kube-dns as if the agent were not there.
const FenceChain = "NLCOREDNS-FENCE"

var fenceHook = Hook{Table: "raw", Builtin: "PREROUTING", Chain: FenceChain}

// Fencer is the watchdog's fence on one backend.
type Fencer interface {
	// Fence takes DNS to ips (those of its families) off the agent.
	Fence(ips []netip.Addr, port uint16) error
	// Unfence removes the fence; what is already gone is not an error.
	Unfence() error
	// Fenced reports whether the fence is in place.
	Fenced() (bool, error)
	// Mode names the backend.
	Mode() string
}

// iptablesFence is what the iptables fence needs of one family's tables.
type iptablesFence interface {
	Exists(table, chain string, spec []string) (bool, error)
	ChainExists(table, chain string) (bool, error)
	Restore(payload string) error
	DeleteRule(table, chain string, spec []string) error
	DeleteChain(table, chain string) error
	Mode() string
}

// IptablesFencer is the fence in one family's iptables raw table.
type IptablesFencer struct {
	T      iptablesFence
	Family Family
}

// Fence implements Fencer for the IPs of the fencer's family.
func (f IptablesFencer) Fence(ips []netip.Addr, port uint16) error {
	var mine []netip.Addr
	for _, ip := range ips {
		if FamilyOf(ip) == f.Family {
			mine = append(mine, ip)
		}
	}
	return Fence(f.T, mine, port)
}

// Unfence implements Fencer.
func (f IptablesFencer) Unfence() error { return Unfence(f.T) }

// Fenced implements Fencer.
func (f IptablesFencer) Fenced() (bool, error) { return f.T.ChainExists(fenceHook.Table, FenceChain) }

// Mode implements Fencer.
func (f IptablesFencer) Mode() string { return f.T.Mode() }

// Fence takes DNS to ips off the agent: it writes the fence chain and puts
// its jump first in raw PREROUTING, in one transaction (moving the jump to
// the top if something was inserted above it).
func Fence(t iptablesFence, ips []netip.Addr, port uint16) error {
	var b strings.Builder
	b.WriteString("*raw\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n", FenceChain)
	for _, ip := range ips {
		for _, proto := range []string{"udp", "tcp"} {
			fmt.Fprintf(&b, "-A %s -p %s -d %s/%d -m %s --dport %d -m comment --comment %q -j ACCEPT\n",
				FenceChain, proto, ip, ip.BitLen(), proto, port, Comment+": watchdog fence for "+ip.String()+"/"+proto)
		}
	}
	ok, err := jumpPresent(t, fenceHook)
	if err != nil {
		return err
	}
	if ok {
		fmt.Fprintf(&b, "-D %s %s\n", fenceHook.Builtin, quote(fenceHook.JumpSpec()))
	}
	fmt.Fprintf(&b, "-I %s 1 %s\n", fenceHook.Builtin, quote(fenceHook.JumpSpec()))
	b.WriteString("COMMIT\n")
	if err := t.Restore(b.String()); err != nil {
		return fmt.Errorf("fencing in %s: %w", t.Mode(), err)
	}
	return nil
}

// Unfence removes the fence; what is already gone is not an error.
func Unfence(t iptablesFence) error {
	if err := t.DeleteRule(fenceHook.Table, fenceHook.Builtin, fenceHook.JumpSpec()); err != nil {
		return fmt.Errorf("removing fence jump in %s: %w", t.Mode(), err)
	}
	if err := t.DeleteChain(fenceHook.Table, FenceChain); err != nil {
		return fmt.Errorf("removing fence chain in %s: %w", t.Mode(), err)
	}
	return nil
}

func jumpPresent(t iptablesFence, h Hook) (bool, error) {
	ok, err := t.ChainExists(h.Table, h.Chain)
	if err != nil || !ok {
		return false, err
	}
	return t.Exists(h.Table, h.Builtin, h.JumpSpec())
}
