package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"slices"

	"github.com/node-local-coredns/node-local-coredns/internal/metrics"
	"github.com/node-local-coredns/node-local-coredns/internal/netfilter"
)

// Rules is the agent's rules on whichever backend holds them.
type Rules interface {
	Name() string
	Setup() error
	Sync() (int, error)
	Teardown() error
	// Installed reports whether everything is in place and whether the
	// diversion is gated on a bound socket.
	Installed() (ok, gated bool, err error)
	// SocketMatch reports whether the rules are gated on a bound socket.
	SocketMatch() bool
	// Mode names the backend.
	Mode() string
}

var (
	_ Rules = (*netfilter.Manager)(nil)
	_ Rules = (*netfilter.NFT)(nil)
)

// Netfilter is the backend chosen for a node: the agent's rules, the
// watchdog's fence and the status command read it the same way.
type Netfilter struct {
	Choice netfilter.Choice
	ips    []netip.Addr
	// iptables holds, per family, the iptables tools of the backend (or of
	// the nftables backend's accept rules).
	iptables map[netfilter.Family]*netfilter.Iptables
}

func familiesOf(ips []netip.Addr) []netfilter.Family {
	var out []netfilter.Family
	for _, ip := range ips {
		if f := netfilter.FamilyOf(ip); !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// ChooseNetfilter reads the node and picks the backend for flag (--netfilter).
// It reads before it touches anything; an error reading a backend stops it.
func ChooseNetfilter(ctx context.Context, flag string, ips []netip.Addr, log *slog.Logger) (*Netfilter, error) {
	families := familiesOf(ips)
	var (
		h   netfilter.Host
		err error
	)
	if h.IPVS, err = netfilter.IPVSHolds(ips); err != nil {
		return nil, err
	}
	if flag == netfilter.BackendAuto {
		if legacyTools(families) {
			d, err := netfilter.DetectMode(ctx, netfilter.RunSave, families...)
			if err != nil {
				return nil, err
			}
			h.Iptables = &d
		} else if h.LegacyRules, err = netfilter.LegacyKernelRules(families...); err != nil {
			return nil, err
		}
	}
	if flag == netfilter.BackendAuto || flag == netfilter.BackendNFTables {
		if h.IptablesFilter, err = netfilter.IptablesNFTFilter(families...); err != nil {
			return nil, err
		}
	}
	c, err := netfilter.Choose(flag, h)
	if err != nil {
		return nil, err
	}
	n := &Netfilter{Choice: c, ips: ips}
	mode := ""
	switch {
	case c.Backend == netfilter.BackendIptablesLegacy:
		mode = netfilter.ModeLegacy
	case c.Backend == netfilter.BackendIptablesNFT || c.Accept == netfilter.BackendIptablesNFT:
		mode = netfilter.ModeNFT
	}
	if mode != "" {
		n.iptables = map[netfilter.Family]*netfilter.Iptables{}
		for _, f := range families {
			t, err := netfilter.NewIptables(f, mode)
			if err != nil {
				if c.Backend == netfilter.BackendNFTables {
					return nil, fmt.Errorf("the host filters INPUT/OUTPUT in iptables-nft, where the agent's accept rules must go: %w; run the image with the iptables tools", err)
				}
				return nil, err
			}
			n.iptables[f] = t
		}
	}
	log.Info("packet filter", "backend", c.Backend, "accept_rules", n.acceptWhere(), "because", c.Reason)
	return n, nil
}

// acceptWhere names where the accept rules go.
func (n *Netfilter) acceptWhere() string {
	switch {
	case n.Choice.Backend != netfilter.BackendNFTables:
		return n.Choice.Backend
	case n.Choice.Accept != "":
		return n.Choice.Accept
	}
	return "nftables drop-policy chains of the host"
}

// Report sets the backend metric.
func (n *Netfilter) Report() {
	metrics.NetfilterBackend.Reset()
	metrics.NetfilterBackend.WithLabelValues(n.Choice.Backend, n.acceptWhere()).Set(1)
}

func legacyTools(families []netfilter.Family) bool {
	for _, f := range families {
		tool := "iptables-legacy-save"
		if f == netfilter.IPv6 {
			tool = "ip6tables-legacy-save"
		}
		if _, err := exec.LookPath(tool); err != nil {
			return false
		}
	}
	return true
}

// Rules returns the agent's rules on the chosen backend.
func (n *Netfilter) Rules(opts netfilter.Options, log *slog.Logger) (Rules, error) {
	tables := map[netfilter.Family]netfilter.Tables{}
	for f, t := range n.iptables {
		tables[f] = t
	}
	if n.Choice.Backend != netfilter.BackendNFTables {
		return netfilter.NewManager(tables, n.ips, opts, log)
	}
	var filter *netfilter.Manager
	if n.iptables != nil {
		fo := opts
		fo.FilterOnly = true
		var err error
		if filter, err = netfilter.NewManager(tables, n.ips, fo, log); err != nil {
			return nil, err
		}
	}
	nft, err := netfilter.NewNFT(n.ips, opts, filter, log)
	if err != nil {
		return nil, err
	}
	if filter == nil {
		// Where the image has the iptables tools: the chains an agent of an
		// earlier version wrote in iptables-nft, before the native backend.
		for _, f := range familiesOf(n.ips) {
			if t, err := netfilter.NewIptables(f, netfilter.ModeNFT); err == nil {
				nft.Leftovers = append(nft.Leftovers, t)
			}
		}
	}
	return nft, nil
}

// Fencers returns the watchdog's fence on the chosen backend.
func (n *Netfilter) Fencers() ([]netfilter.Fencer, error) {
	if n.Choice.Backend == netfilter.BackendNFTables {
		f, err := netfilter.NewNFTFencer()
		if err != nil {
			return nil, err
		}
		return []netfilter.Fencer{f}, nil
	}
	var out []netfilter.Fencer
	for _, f := range familiesOf(n.ips) {
		out = append(out, netfilter.IptablesFencer{T: n.iptables[f], Family: f})
	}
	return out, nil
}
