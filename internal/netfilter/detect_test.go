package netfilter

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

func TestDetectMode(t *testing.T) {
	const (
		kubeProxyRules = "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\nCOMMIT\n"
		hint           = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
		denied         = "exit status 1: iptables-legacy-save v1.8.9 (legacy): Cannot initialize: Permission denied (you must be root)"
	)
	tests := []struct {
		name string
		// saves maps a tool to its output; "ERR:..." makes it fail, and
		// a tool not listed is not installed.
		saves      map[string]string
		families   []Family
		want       string
		wantErr    string
		wantReason string
	}{
		{
			name:       "kube-proxy on legacy",
			saves:      map[string]string{"iptables-legacy-save": kubeProxyRules, "ip6tables-legacy-save": "", "iptables-nft-save": "", "ip6tables-nft-save": ""},
			want:       ModeLegacy,
			wantReason: "more rules (2 against 0)",
		},
		{
			name:  "kube-proxy on nft",
			saves: map[string]string{"iptables-legacy-save": "", "ip6tables-legacy-save": "", "iptables-nft-save": kubeProxyRules, "ip6tables-nft-save": ""},
			want:  ModeNFT,
		},
		{
			name:       "hint chain outweighs rule counts",
			saves:      map[string]string{"iptables-legacy-save": kubeProxyRules, "ip6tables-legacy-save": "", "iptables-nft-save": hint, "ip6tables-nft-save": ""},
			want:       ModeNFT,
			wantReason: "hint chains are in iptables-nft",
		},
		{
			name:  "no rules anywhere: nft",
			saves: map[string]string{"iptables-legacy-save": "", "ip6tables-legacy-save": "", "iptables-nft-save": "", "ip6tables-nft-save": ""},
			want:  ModeNFT,
		},
		{
			name:  "legacy tools not installed",
			saves: map[string]string{"iptables-nft-save": kubeProxyRules, "ip6tables-nft-save": ""},
			want:  ModeNFT,
		},
		{
			// The defect: legacy rules unreadable without NET_RAW were
			// counted as none, and nft picked on a legacy node.
			name:    "legacy rules unreadable",
			saves:   map[string]string{"iptables-legacy-save": "ERR:" + denied, "ip6tables-legacy-save": "", "iptables-nft-save": "", "ip6tables-nft-save": ""},
			wantErr: "reading the iptables-legacy rules with iptables-legacy-save",
		},
		{
			// An IPv4-only agent does not read ip6tables at all.
			name:     "ip6tables unreadable, IPv4 only",
			families: []Family{IPv4},
			saves:    map[string]string{"iptables-legacy-save": kubeProxyRules, "ip6tables-legacy-save": "ERR:exit status 1", "iptables-nft-save": "", "ip6tables-nft-save": "ERR:exit status 1"},
			want:     ModeLegacy,
		},
		{
			name:    "nft rules unreadable",
			saves:   map[string]string{"iptables-legacy-save": kubeProxyRules, "ip6tables-legacy-save": "", "iptables-nft-save": "", "ip6tables-nft-save": "ERR:exit status 4"},
			wantErr: "reading the ip6tables-nft rules",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			save := func(_ context.Context, tool string) ([]byte, error) {
				out, ok := tt.saves[tool]
				if !ok {
					return nil, fmt.Errorf("finding %s: %w", tool, exec.ErrNotFound)
				}
				if msg, failed := strings.CutPrefix(out, "ERR:"); failed {
					return nil, errors.New(msg)
				}
				return []byte(out), nil
			}
			d, err := DetectMode(context.Background(), save, tt.families...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "--netfilter") {
					t.Fatalf("DetectMode = %+v, %v; want an error containing %q that names --netfilter", d, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("DetectMode: %v", err)
			}
			if d.Mode != tt.want || !strings.Contains(d.Reason, tt.wantReason) {
				t.Errorf("DetectMode = %+v, want mode %s with a reason containing %q", d, tt.want, tt.wantReason)
			}
		})
	}
}
