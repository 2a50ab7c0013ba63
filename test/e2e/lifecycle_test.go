package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// SIGKILL (as the OOM killer sends it) leaves rules and address behind, but
// the rules divert only while a socket is bound: pods resolve through DNAT
// at once. A restarted agent adopts what is left and takes the traffic back.
func TestKilledAgentFallsBackToDNAT(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	pod := n.Pods[0]
	a := startAgent(t, n, "--sync-interval=1s")
	resolve(t, pod, "udp", nodesim.KubeDNS, "k.default.svc.cluster.local", dns.TypeA)
	if err := a.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Wait(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if countRules(ruleset(t, n)) == 0 {
		t.Fatal("no rules left after SIGKILL: the test would not show the socket gate")
	}
	before := n.UpstreamQueriesFor("k.default.svc.cluster.local")
	for _, proto := range []string{"udp", "tcp"} {
		resolve(t, pod, proto, nodesim.KubeDNS, "k.default.svc.cluster.local", dns.TypeA)
	}
	if got := n.UpstreamQueriesFor("k.default.svc.cluster.local") - before; got != 2 {
		t.Errorf("with the agent dead, kube-dns got %d of 2 queries", got)
	}
	if ct := podConntrack(t, n, pod, nodesim.KubeDNS); len(ct) != 2 {
		t.Errorf("with the agent dead, want both queries tracked and DNAT'ed; conntrack has %q", ct)
	}

	b := startAgent(t, n, "--sync-interval=1s")
	if !strings.Contains(b.Output(), "adopting interface left by an earlier run") {
		t.Errorf("restarted agent did not adopt the interface:\n%s", b.Output())
	}
	if err := n.FlushConntrack(); err != nil {
		t.Fatal(err)
	}
	resolve(t, pod, "udp", nodesim.KubeDNS, "k.default.svc.cluster.local", dns.TypeA)
	if ct := podConntrack(t, n, pod, nodesim.KubeDNS); len(ct) != 0 {
		t.Errorf("restarted agent: conntrack entries %q, want none", ct)
	}
	if code, err := b.Stop(stopTimeout); err != nil || code != 0 {
		t.Fatalf("stop: %d %v", code, err)
	}
	if addrs, _ := n.Addrs(t.Context(), "nodelocaldns"); addrs != "" {
		t.Errorf("adopted interface left after stop: %q", addrs)
	}
	if got := countRules(ruleset(t, n)); got != 0 {
		t.Errorf("%d rules left after stop", got)
	}
}

// On a node whose kube-proxy uses iptables-legacy, the agent writes legacy
// rules too, and none in nftables.
func TestLegacyIptablesNode(t *testing.T) {
	n := newNode(t, nodesim.Options{IptablesMode: "legacy"})
	pod := n.Pods[0]
	a := startAgent(t, n)
	if !strings.Contains(a.Output(), "backend=iptables-legacy") {
		t.Errorf("agent did not pick legacy mode:\n%s", a.Output())
	}
	if got := countRules(ruleset(t, n)); got != rulesPerIP {
		t.Errorf("iptables-legacy holds %d of the agent's rules, want %d", got, rulesPerIP)
	}
	nft, err := n.NodeExec(t.Context(), "iptables-nft-save")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(nft, "NLCOREDNS") {
		t.Errorf("agent wrote nft rules on a legacy node:\n%s", nft)
	}
	resolve(t, pod, "udp", nodesim.KubeDNS, "l.default.svc.cluster.local", dns.TypeA)
	if ct := podConntrack(t, n, pod, nodesim.KubeDNS); len(ct) != 0 {
		t.Errorf("conntrack entries %q, want none", ct)
	}
}

// A bad flag, a missing environment variable or a bad Corefile template
// stops the agent with one line that says what to set, before it touches
// the node.
func TestBadConfigurationLeavesNodeAlone(t *testing.T) {
	n := newNode(t, nodesim.Options{})
	bad := filepath.Join(t.TempDir(), "Corefile.tmpl")
	if err := os.WriteFile(bad, []byte(".:{{ .Port }} {\n    forward . {{ .NoSuchValue }}\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{name: "bad IP", args: []string{"--local-ip=10.96.0.300"}, code: 2, want: "--local-ip"},
		{name: "no kube-dns env", env: []string{"KUBE_DNS_SERVICE_HOST="}, code: 2, want: "$KUBE_DNS_SERVICE_HOST"},
		{name: "no upstream env", env: []string{"NODE_LOCAL_COREDNS_SERVICE_HOST="}, code: 2, want: "$NODE_LOCAL_COREDNS_SERVICE_HOST"},
		{name: "unknown flag", args: []string{"--no-such-flag"}, code: 2, want: "no-such-flag"},
		{name: "bad template", args: []string{"--corefile=" + bad}, code: 1, want: "NoSuchValue"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("ip", append([]string{"netns", "exec", n.NS, binary}, tc.args...)...)
			cmd.Env = append(append(os.Environ(), n.ServiceEnv()...), tc.env...)
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != tc.code {
				t.Errorf("exit code %d, want %d", code, tc.code)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			last := lines[len(lines)-1]
			if !strings.Contains(last, tc.want) || !strings.HasPrefix(last, "node-local-coredns: ") {
				t.Errorf("last line %q does not name %q:\n%s", last, tc.want, out)
			}
			if addrs, _ := n.Addrs(t.Context(), "nodelocaldns"); addrs != "" {
				t.Errorf("interface created: %q", addrs)
			}
			if got := countRules(ruleset(t, n)); got != 0 {
				t.Errorf("%d rules installed", got)
			}
		})
	}
}

// Without privileges the agent serves on addresses that already exist
// (loopback here), forwarding to an upstream given by flag.
func TestUnprivilegedOnLoopback(t *testing.T) {
	n := newNode(t, nodesim.Options{Pods: 1, Endpoints: 1})
	up, err := nodesim.StartAuthDNS(n.NS, "127.0.0.1:5399")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Shutdown()
	if err := os.Chmod(filepath.Dir(binary), 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := n.StartAgentAs(65534, binary, "--local-ip=127.0.0.1", "--port=5353", "--upstream=127.0.0.1:5399",
		"--setup-interface=false", "--setup-netfilter=false",
		"--health-addr=127.0.0.1:18080", "--ready-addr=127.0.0.1:18181", "--metrics-addr=127.0.0.1:19253")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if code, err := a.Stop(stopTimeout); err != nil || code != 0 {
			t.Errorf("stop: exit %d, %v:\n%s", code, err, a.Output())
		}
	}()
	if err := a.WaitLog(t.Context(), "msg=serving", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.Pid()))
	if err != nil || !strings.Contains(string(status), "\nUid:\t65534\t65534") || !strings.Contains(string(status), "\nCapEff:\t0000000000000000") {
		t.Fatalf("agent is not running unprivileged (%v):\n%s", err, status)
	}
	server := netip.MustParseAddrPort("127.0.0.1:5353")
	for range 3 {
		r, _, err := nodesim.Query(n.NS, "udp", server, "u.default.svc.cluster.local", dns.TypeA, 2*time.Second)
		if err != nil || len(r.Answer) != 1 {
			t.Fatalf("query: %v %v\n%s", r, err, a.Output())
		}
	}
	if got := up.QueriesFor("u.default.svc.cluster.local"); got != 1 {
		t.Errorf("upstream got %d queries, want 1", got)
	}
	if got := countRules(ruleset(t, n)); got != 0 {
		t.Errorf("unprivileged agent installed %d rules", got)
	}
}
