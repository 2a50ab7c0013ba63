package netfilter

import (
	"net/netip"
	"strings"
	"testing"
)

// TestChoose: the backend for every combination of the host's rules and
// --netfilter.
func TestChoose(t *testing.T) {
	legacy := &Detection{Mode: ModeLegacy, Reason: "kubelet's hint chains are in iptables-legacy"}
	nft := &Detection{Mode: ModeNFT, Reason: "iptables-legacy holds no more rules than iptables-nft (0 against 40)"}
	none := &Detection{Mode: ModeNFT, Reason: "iptables-legacy holds no more rules than iptables-nft (0 against 0)"}
	ipvs := netip.MustParseAddr("10.96.0.10")
	tests := []struct {
		name       string
		flag       string
		host       Host
		want       Choice
		wantErr    string
		wantReason string
	}{
		{name: "kube-proxy nftables mode, no iptables rules", flag: "auto", host: Host{Iptables: none},
			want: Choice{Backend: BackendNFTables}},
		{name: "kube-proxy nftables mode, image without iptables tools", flag: "auto", host: Host{},
			want: Choice{Backend: BackendNFTables}, wantReason: "iptables-legacy holds no rules"},
		{name: "kube-proxy iptables mode on iptables-nft", flag: "auto", host: Host{Iptables: nft, IptablesFilter: true},
			want: Choice{Backend: BackendNFTables, Accept: BackendIptablesNFT}, wantReason: "accept rules go there"},
		{name: "kube-proxy iptables mode on iptables-legacy", flag: "auto", host: Host{Iptables: legacy, IptablesFilter: true},
			want: Choice{Backend: BackendIptablesLegacy}, wantReason: "hint chains"},
		{name: "legacy rules, no tools to write them", flag: "auto", host: Host{LegacyRules: 12},
			wantErr: "hold 12 rules, and this image has no iptables tools"},
		{name: "nftables asked on a legacy node", flag: "nftables", host: Host{LegacyRules: 12},
			want: Choice{Backend: BackendNFTables}},
		{name: "nftables asked, host filters in iptables-nft", flag: "nftables", host: Host{IptablesFilter: true},
			want: Choice{Backend: BackendNFTables, Accept: BackendIptablesNFT}},
		{name: "iptables-nft asked", flag: "iptables-nft", host: Host{Iptables: legacy},
			want: Choice{Backend: BackendIptablesNFT}},
		{name: "iptables-legacy asked", flag: "iptables-legacy", host: Host{},
			want: Choice{Backend: BackendIptablesLegacy}},
		{name: "IPVS mode refused in auto", flag: "auto", host: Host{IPVS: ipvs, Iptables: nft},
			wantErr: "--local-ip=169.254.20.10"},
		{name: "IPVS mode refused whatever the backend", flag: "iptables-legacy", host: Host{IPVS: ipvs},
			wantErr: "kube-ipvs0 holds 10.96.0.10"},
		{name: "unknown backend", flag: "ipvs", wantErr: "is not one of"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Choose(tc.flag, tc.host)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("Choose = %+v, %v; want one line containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Backend != tc.want.Backend || got.Accept != tc.want.Accept {
				t.Errorf("Choose = %+v, want backend %q, accept rules in %q", got, tc.want.Backend, tc.want.Accept)
			}
			if got.Reason == "" || !strings.Contains(got.Reason, tc.wantReason) {
				t.Errorf("reason %q, want one containing %q", got.Reason, tc.wantReason)
			}
		})
	}
}
