package netfilter

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestRulesPerFamily(t *testing.T) {
	tests := []struct {
		name string
		ip   string
		opts Options
		want []string // "table chain spec"
	}{
		{
			name: "IPv4, socket-gated",
			ip:   "172.27.255.78",
			opts: Options{Port: 53, SocketMatch: true},
			want: []string{
				`raw NLCOREDNS-PREROUTING -p udp -d 172.27.255.78/32 -m udp --dport 53 -m socket --nowildcard -m comment --comment node-local-coredns: queries to 172.27.255.78/udp -j NOTRACK`,
				`filter NLCOREDNS-INPUT -p udp -d 172.27.255.78/32 -m udp --dport 53 -m comment --comment node-local-coredns: queries to 172.27.255.78/udp -j ACCEPT`,
				`raw NLCOREDNS-OUTPUT -p udp -s 172.27.255.78/32 -m udp --sport 53 -m comment --comment node-local-coredns: answers from 172.27.255.78/udp -j NOTRACK`,
				`filter NLCOREDNS-OUTPUT -p udp -s 172.27.255.78/32 -m udp --sport 53 -m comment --comment node-local-coredns: answers from 172.27.255.78/udp -j ACCEPT`,
				`raw NLCOREDNS-PREROUTING -p tcp -d 172.27.255.78/32 -m tcp --dport 53 -m socket --nowildcard -m comment --comment node-local-coredns: queries to 172.27.255.78/tcp -j NOTRACK`,
				`filter NLCOREDNS-INPUT -p tcp -d 172.27.255.78/32 -m tcp --dport 53 -m comment --comment node-local-coredns: queries to 172.27.255.78/tcp -j ACCEPT`,
				`raw NLCOREDNS-OUTPUT -p tcp -s 172.27.255.78/32 -m tcp --sport 53 -m comment --comment node-local-coredns: answers from 172.27.255.78/tcp -j NOTRACK`,
				`filter NLCOREDNS-OUTPUT -p tcp -s 172.27.255.78/32 -m tcp --sport 53 -m comment --comment node-local-coredns: answers from 172.27.255.78/tcp -j ACCEPT`,
			},
		},
		{
			name: "IPv6, no socket match, other port",
			ip:   "fd00:96::a",
			opts: Options{Port: 5353},
			want: []string{
				`raw NLCOREDNS-PREROUTING -p udp -d fd00:96::a/128 -m udp --dport 5353 -m comment --comment node-local-coredns: queries to fd00:96::a/udp -j NOTRACK`,
				`filter NLCOREDNS-INPUT -p udp -d fd00:96::a/128 -m udp --dport 5353 -m comment --comment node-local-coredns: queries to fd00:96::a/udp -j ACCEPT`,
				`raw NLCOREDNS-OUTPUT -p udp -s fd00:96::a/128 -m udp --sport 5353 -m comment --comment node-local-coredns: answers from fd00:96::a/udp -j NOTRACK`,
				`filter NLCOREDNS-OUTPUT -p udp -s fd00:96::a/128 -m udp --sport 5353 -m comment --comment node-local-coredns: answers from fd00:96::a/udp -j ACCEPT`,
				`raw NLCOREDNS-PREROUTING -p tcp -d fd00:96::a/128 -m tcp --dport 5353 -m comment --comment node-local-coredns: queries to fd00:96::a/tcp -j NOTRACK`,
				`filter NLCOREDNS-INPUT -p tcp -d fd00:96::a/128 -m tcp --dport 5353 -m comment --comment node-local-coredns: queries to fd00:96::a/tcp -j ACCEPT`,
				`raw NLCOREDNS-OUTPUT -p tcp -s fd00:96::a/128 -m tcp --sport 5353 -m comment --comment node-local-coredns: answers from fd00:96::a/tcp -j NOTRACK`,
				`filter NLCOREDNS-OUTPUT -p tcp -s fd00:96::a/128 -m tcp --sport 5353 -m comment --comment node-local-coredns: answers from fd00:96::a/tcp -j ACCEPT`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, r := range Rules(netip.MustParseAddr(tc.ip), tc.opts) {
				got = append(got, r.Table+" "+r.Chain+" "+strings.Join(r.Spec, " "))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// Host-network diversion adds raw and filter OUTPUT rules for queries to the
// IP, which cannot be gated on the socket.
func TestRulesHostNetwork(t *testing.T) {
	rules := Rules(netip.MustParseAddr("10.0.0.10"), Options{Port: 53, SocketMatch: true, HostNetwork: true})
	var host []string
	for _, r := range rules {
		if strings.Contains(strings.Join(r.Spec, " "), "host queries") {
			host = append(host, r.Table+" "+r.Chain+" "+strings.Join(r.Spec, " "))
			if slices.Contains(r.Spec, "socket") {
				t.Errorf("host-network rule gated on the socket: %v", r.Spec)
			}
		}
	}
	if len(rules) != 12 || len(host) != 4 {
		t.Fatalf("got %d rules, %d for host queries; want 12 and 4", len(rules), len(host))
	}
	for _, want := range []string{"raw NLCOREDNS-OUTPUT -p udp -d 10.0.0.10/32 -m udp --dport 53", "filter NLCOREDNS-OUTPUT -p tcp -d 10.0.0.10/32 -m tcp --dport 53"} {
		if !slices.ContainsFunc(host, func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("no host-network rule %q in %q", want, host)
		}
	}
}

func TestQuoteForRestore(t *testing.T) {
	got := quote([]string{"-m", "comment", "--comment", "node-local-coredns: queries to 10.0.0.10/udp", "-j", "NOTRACK"})
	want := `-m comment --comment "node-local-coredns: queries to 10.0.0.10/udp" -j NOTRACK`
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
