package netfilter

import (
	"fmt"
	"net/netip"
)

// Backends the agent can write its rules with (--netfilter).
const (
	BackendAuto           = "auto"
	BackendNFTables       = "nftables"
	BackendIptablesNFT    = "iptables-nft"
	BackendIptablesLegacy = "iptables-legacy"
)

// Backends lists the values of --netfilter.
var Backends = []string{BackendAuto, BackendNFTables, BackendIptablesNFT, BackendIptablesLegacy}

// Host is what the backend choice reads of the node.
type Host struct {
	// IPVS is a local IP that kube-ipvs0 holds (kube-proxy's IPVS mode),
	// or the zero Addr.
	IPVS netip.Addr
	// Iptables is the iptables mode that holds the host's rules, as
	// DetectMode tells it from the iptables tools; nil when the
	// iptables-legacy tools are not installed.
	Iptables *Detection
	// LegacyRules is the number of rules the kernel's iptables-legacy
	// tables hold beyond their built-in chains, read without the tools.
	LegacyRules int
	// IptablesFilter is set when iptables-nft's filter table holds rules in
	// INPUT or OUTPUT, or drops there by policy: the host filters (kube-proxy's
	// iptables mode rejects there), so the accept rules must go there.
	IptablesFilter bool
}

// Choice is the backend picked and why.
type Choice struct {
	// Backend is nftables, iptables-nft or iptables-legacy.
	Backend string
	// Accept, with the nftables backend, is "iptables-nft" when the accept
	// rules go to iptables-nft's filter table, else "".
	Accept string
	// Reason says what decided, for the log.
	Reason string
}

// Choose picks the backend for --netfilter=flag on host h. It never
// guesses: a node it cannot serve, or rules it cannot reach, are errors
// that say what to do.
func Choose(flag string, h Host) (Choice, error) {
	if h.IPVS.IsValid() {
		return Choice{}, fmt.Errorf("kube-proxy runs in IPVS mode here (kube-ipvs0 holds %s): IPVS takes queries to that address at INPUT before any socket, so the agent cannot serve it; "+
			"serve a link-local address instead (--local-ip=169.254.20.10, with kubelet's --cluster-dns pointed at it)", h.IPVS)
	}
	accept := func(c Choice) Choice {
		if h.IptablesFilter {
			c.Accept = BackendIptablesNFT
			c.Reason += "; the host filters INPUT/OUTPUT in iptables-nft, so the accept rules go there"
		}
		return c
	}
	switch flag {
	case BackendNFTables:
		return accept(Choice{Backend: BackendNFTables, Reason: "--netfilter=nftables"}), nil
	case BackendIptablesNFT, BackendIptablesLegacy:
		return Choice{Backend: flag, Reason: "--netfilter=" + flag}, nil
	case BackendAuto:
	default:
		return Choice{}, fmt.Errorf("--netfilter=%q is not one of auto, nftables, iptables-nft, iptables-legacy", flag)
	}
	switch {
	case h.Iptables != nil && h.Iptables.Mode == ModeLegacy:
		return Choice{Backend: BackendIptablesLegacy, Reason: h.Iptables.Reason}, nil
	case h.Iptables == nil && h.LegacyRules > 0:
		return Choice{}, fmt.Errorf("the kernel's iptables-legacy tables hold %d rules, and this image has no iptables tools to read or write them: "+
			"run the image with the iptables tools, or set --netfilter=nftables if kube-proxy does not use iptables-legacy", h.LegacyRules)
	case h.Iptables != nil:
		return accept(Choice{Backend: BackendNFTables, Reason: h.Iptables.Reason + ": the agent's own nftables table"}), nil
	default:
		return accept(Choice{Backend: BackendNFTables, Reason: "iptables-legacy holds no rules: the agent's own nftables table"}), nil
	}
}
