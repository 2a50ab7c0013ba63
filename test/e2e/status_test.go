package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// status runs node-local-coredns status in the node and returns its output
// and exit code.
func status(t *testing.T, n *nodesim.Node) (string, int) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.NS, binary, "status")
	cmd.Env = append(os.Environ(), n.ServiceEnv()...)
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

// status tells a node served by the agent from one whose rules are missing
// and from one whose agent is stopped, by its exit code and its report.
func TestStatus(t *testing.T) {
	n := newNode(t, nodesim.Options{Pods: 1})
	a := startAgent(t, n, "--sync-interval=1h")
	for range 3 {
		resolve(t, n.Pods[0], "udp", nodesim.KubeDNS, "s.default.svc.cluster.local", dns.TypeA)
	}

	out, code := status(t, n)
	t.Logf("healthy:\n%s", out)
	for _, want := range []string{
		"10.96.0.10: served by node-local-coredns", "present on nodelocaldns", "in place (nftables, accept rules in iptables-nft), gated on a bound socket",
		"bound (1 udp, 1 tcp)", "answered by the agent", "upstream   10.96.0.11:53: answers", "hit ratio",
		"fence      none", "agent      rules restored 0 times, 0 Corefile templates refused, 0 setup errors", "MiB resident, no memory limit",
		fmt.Sprintf("endpoints  %d kube-dns endpoints: %s:53 (", len(n.Endpoints), n.Endpoints[0].IP),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("healthy report lacks %q", want)
		}
	}
	if code != 0 {
		t.Errorf("healthy node: exit %d, want 0", code)
	}

	// The watchdog's fence, as it writes it in the agent's table.
	if _, err := n.NodeExec(t.Context(), "nft", "add rule inet node-local-coredns fence ip daddr 10.96.0.10 udp dport 53 accept"); err != nil {
		t.Fatal(err)
	}
	out, _ = status(t, n)
	if !strings.Contains(out, "fence      IN PLACE") {
		t.Errorf("fenced node: the report does not say so:\n%s", out)
	}
	if _, err := n.NodeExec(t.Context(), "nft", "flush chain inet node-local-coredns fence"); err != nil {
		t.Fatal(err)
	}

	removeDiversion(t, n)
	out, code = status(t, n)
	t.Logf("rules flushed:\n%s", out)
	if code != 1 || !strings.Contains(out, "NOT served") || !strings.Contains(out, "rules      missing") {
		t.Errorf("rules missing: exit %d, want 1 and a report saying so", code)
	}

	if code, err := a.Stop(stopTimeout); err != nil || code != 0 {
		t.Fatalf("stop: %d %v", code, err)
	}
	out, code = status(t, n)
	t.Logf("agent stopped:\n%s", out)
	if code != 1 || !strings.Contains(out, "none bound") || !strings.Contains(out, "address    missing") {
		t.Errorf("agent stopped: exit %d, want 1 and a report saying so", code)
	}
}
