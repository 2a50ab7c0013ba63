package netfilter_test

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/node-local-coredns/node-local-coredns/internal/netfilter"
	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

var (
	sweepOnce sync.Once
	nsCount   atomic.Int64
)

var update = flag.Bool("update", false, "rewrite the golden rulesets")

var (
	v4 = netip.MustParseAddr("172.27.255.78")
	v6 = netip.MustParseAddr("fd00:10::a")
)

// netns makes a namespace of the test's own and returns its name and a
// runner of commands in it.
func netns(t *testing.T) (string, func(args ...string) string) {
	t.Helper()
	if why := nodesim.Supported(); why != "" {
		if os.Getenv("NODESIM_REQUIRED") != "" {
			t.Fatalf("NODESIM_REQUIRED is set but %s", why)
		}
		t.Skipf("skipping namespace test: %s", why)
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft is needed to read the ruleset back (apt-get install nftables): %v", err)
	}
	// Named <prefix>-<pid>-<n>, so that nodesim.Sweep removes what a
	// killed run left behind.
	sweepOnce.Do(func() {
		if err := nodesim.Sweep("nlcnft"); err != nil {
			t.Logf("sweeping stale namespaces: %v", err)
		}
	})
	name := fmt.Sprintf("nlcnft-%d-%d", os.Getpid(), nsCount.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", name}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	return name, run
}

func in(t *testing.T, ns string, fn func() error) {
	t.Helper()
	if err := nodesim.InNS(ns, fn); err != nil {
		t.Fatal(err)
	}
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from what the kernel holds:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var opts = netfilter.Options{Port: 53, SocketMatch: true, ProbeMark: 0x200000}

func newNFT(t *testing.T, ns string, o netfilter.Options) *netfilter.NFT {
	t.Helper()
	var n *netfilter.NFT
	in(t, ns, func() (err error) {
		n, err = netfilter.NewNFT([]netip.Addr{v4, v6}, o, nil, quiet)
		return err
	})
	return n
}

// TestNFTRuleset: the agent's own table, as nft lists it, for both
// families, gated on the socket, with the probe mark's exception; with the
// watchdog's fence; and removed in one call.
func TestNFTRuleset(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    netfilter.Options
	}{
		{"nft-table.golden", opts},
		{"nft-table-hostnetwork.golden", netfilter.Options{Port: 53, SocketMatch: true, HostNetwork: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, run := netns(t)
			n := newNFT(t, ns, tc.o)
			in(t, ns, n.Setup)
			golden(t, tc.name, run("nft", "list", "table", "inet", netfilter.NFTTable))
			in(t, ns, func() error {
				ok, gated, err := n.Installed()
				if err != nil || !ok || !gated {
					return fmt.Errorf("Installed = %v, %v, %v; want installed and gated", ok, gated, err)
				}
				return nil
			})
			if n.Mode() != "nftables" {
				t.Errorf("Mode = %q", n.Mode())
			}
			in(t, ns, n.Teardown)
			if out := run("nft", "list", "tables"); strings.Contains(out, netfilter.NFTTable) {
				t.Errorf("after Teardown nft list tables shows the agent's table:\n%s", out)
			}
			in(t, ns, n.Teardown) // already gone: not an error
		})
	}
}

// TestNFTFence: the watchdog's fence sits in the agent's table, survives
// the agent's setup and sync, and goes with Unfence.
func TestNFTFence(t *testing.T) {
	ns, run := netns(t)
	n := newNFT(t, ns, opts)
	var f *netfilter.NFTFencer
	in(t, ns, func() (err error) { f, err = netfilter.NewNFTFencer(); return err })
	// Fenced before the agent wrote anything: the table, the fence and the
	// prerouting jump exist.
	in(t, ns, func() error { return f.Fence([]netip.Addr{v4, v6}, 53) })
	golden(t, "nft-fence-alone.golden", run("nft", "list", "table", "inet", netfilter.NFTTable))
	in(t, ns, n.Setup)
	golden(t, "nft-fenced.golden", run("nft", "list", "table", "inet", netfilter.NFTTable))
	in(t, ns, func() error {
		if ok, err := f.Fenced(); err != nil || !ok {
			return fmt.Errorf("after the agent's Setup: Fenced = %v, %v", ok, err)
		}
		if r, err := n.Sync(); err != nil || r != 0 {
			return fmt.Errorf("Sync while fenced = %d, %v; want 0 (the fence is the watchdog's)", r, err)
		}
		if err := f.Unfence(); err != nil {
			return err
		}
		if ok, err := f.Fenced(); err != nil || ok {
			return fmt.Errorf("after Unfence: Fenced = %v, %v", ok, err)
		}
		return f.Unfence()
	})
	golden(t, "nft-table.golden", run("nft", "list", "table", "inet", netfilter.NFTTable))
}

// TestNFTSyncRepairs: what an operator or another program does to the
// agent's table is put back by one Sync, and only then.
func TestNFTSyncRepairs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage []string
	}{
		{"flush ruleset", []string{"nft", "flush", "ruleset"}},
		{"delete table", []string{"nft", "delete", "table", "inet", netfilter.NFTTable}},
		{"flush chain", []string{"nft", "flush", "chain", "inet", netfilter.NFTTable, netfilter.NFTPrerouting}},
		{"rule added", []string{"nft", "add", "rule", "inet", netfilter.NFTTable, netfilter.NFTOutput, "ip", "saddr", "172.27.255.78", "drop"}},
		{"policy changed", []string{"nft", "add", "chain", "inet", netfilter.NFTTable, netfilter.NFTOutput, "{ policy drop ; }"}},
		{"rule deleted", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, run := netns(t)
			n := newNFT(t, ns, opts)
			in(t, ns, n.Setup)
			in(t, ns, func() error {
				if r, err := n.Sync(); err != nil || r != 0 {
					return fmt.Errorf("Sync of an intact table = %d, %v; want 0", r, err)
				}
				return nil
			})
			if tc.damage != nil {
				run(tc.damage...)
			} else {
				// The rule with the highest handle: one of the agent's.
				out := run("nft", "-a", "list", "chain", "inet", netfilter.NFTTable, netfilter.NFTOutput)
				m := regexp.MustCompile(`# handle (\d+)\n`).FindAllStringSubmatch(out, -1)
				run("nft", "delete", "rule", "inet", netfilter.NFTTable, netfilter.NFTOutput, "handle", m[len(m)-1][1])
			}
			in(t, ns, func() error {
				if r, err := n.Sync(); err != nil || r != 1 {
					return fmt.Errorf("Sync after %s = %d, %v; want 1", tc.name, r, err)
				}
				return nil
			})
			golden(t, "nft-table.golden", run("nft", "list", "table", "inet", netfilter.NFTTable))
		})
	}
}

// TestNFTHostFirewall: a host table of its own that drops by policy at
// input and output gets the accept rules at the top of those chains (an
// accept in the agent's table would not override its drop); iptables-nft's
// chains are left to the iptables backend; teardown leaves the host's
// table as it was.
func TestNFTHostFirewall(t *testing.T) {
	ns, run := netns(t)
	run("nft", "add table inet host")
	run("nft", "add chain inet host input { type filter hook input priority filter ; policy drop ; }")
	run("nft", "add chain inet host output { type filter hook output priority filter ; policy drop ; }")
	run("nft", "add rule inet host input ct state established,related accept")
	// A rule google/nftables cannot parse back: the agent must not need to.
	run("nft", "add rule inet host output ct original ip daddr 10.96.0.11 accept")
	run("nft", "add table ip host4")
	run("nft", "add chain ip host4 input { type filter hook input priority filter ; policy drop ; }")
	run("nft", "add chain ip host4 forward { type filter hook forward priority filter ; policy drop ; }")
	before := run("nft", "list", "ruleset")
	// iptables-nft's own filter table with a drop policy.
	run("iptables-nft", "-P", "INPUT", "DROP")
	in(t, ns, func() error {
		got, err := netfilter.IptablesNFTFilter(netfilter.IPv4)
		if err != nil || !got {
			return fmt.Errorf("IptablesNFTFilter = %v, %v; want true with INPUT DROP", got, err)
		}
		return nil
	})
	iptBefore := run("iptables-nft-save")

	n := newNFT(t, ns, opts)
	in(t, ns, n.Setup)
	golden(t, "nft-host-firewall.golden", run("nft", "list", "table", "inet", "host")+run("nft", "list", "table", "ip", "host4"))
	if got := run("iptables-nft-save"); stripCounters(got) != stripCounters(iptBefore) {
		t.Errorf("iptables-nft's filter table changed:\n%s\nwas\n%s", got, iptBefore)
	}
	// The host reloads its firewall rule by rule: the agent's accepts are
	// missing from one chain.
	out := run("nft", "-a", "list", "chain", "inet", "host", "input")
	h := regexp.MustCompile(`node-local-coredns: queries to 172\.27\.255\.78/udp" # handle (\d+)`).FindStringSubmatch(out)
	if h == nil {
		t.Fatalf("no accept for 172.27.255.78/udp in the host's input chain:\n%s", out)
	}
	run("nft", "delete", "rule", "inet", "host", "input", "handle", h[1])
	in(t, ns, func() error {
		if r, err := n.Sync(); err != nil || r != 1 {
			return fmt.Errorf("Sync after the host lost an accept = %d, %v; want 1", r, err)
		}
		return nil
	})
	golden(t, "nft-host-firewall.golden", run("nft", "list", "table", "inet", "host")+run("nft", "list", "table", "ip", "host4"))
	run("iptables-nft", "-P", "INPUT", "ACCEPT")
	run("nft", "delete", "table", "ip", "filter")
	in(t, ns, n.Teardown)
	if got := run("nft", "list", "ruleset"); got != before {
		t.Errorf("after Teardown the host's ruleset is not what it was:\n%s\nwas\n%s", got, before)
	}
}

// stripCounters drops what iptables-save varies between runs: the
// counters and the comment lines with their timestamps.
func stripCounters(s string) string {
	s = regexp.MustCompile(`(?m)^#.*\n`).ReplaceAllString(s, "")
	return regexp.MustCompile(`\[\d+:\d+\]`).ReplaceAllString(s, "")
}

// TestHostReading: what the backend choice reads of a node, read from
// the kernel in a namespace: iptables-legacy's rules without its tools,
// iptables-nft's filter table over netlink, and kube-ipvs0.
func TestHostReading(t *testing.T) {
	ns, run := netns(t)
	read := func() (legacy int, filter bool, ipvs netip.Addr) {
		in(t, ns, func() (err error) {
			if legacy, err = netfilter.LegacyKernelRules(netfilter.IPv4, netfilter.IPv6); err != nil {
				return err
			}
			if filter, err = netfilter.IptablesNFTFilter(netfilter.IPv4, netfilter.IPv6); err != nil {
				return err
			}
			ipvs, err = netfilter.IPVSHolds([]netip.Addr{v4})
			return err
		})
		return
	}
	if l, f, i := read(); l != 0 || f || i.IsValid() {
		t.Fatalf("empty namespace: legacy rules %d, iptables-nft filter %v, IPVS %v; want none", l, f, i)
	}
	run("iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES")
	run("iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES")
	run("ip6tables-legacy", "-A", "INPUT", "-j", "ACCEPT")
	run("iptables-nft", "-t", "nat", "-A", "PREROUTING", "-j", "ACCEPT")
	if l, f, _ := read(); l != 4 || f {
		// A user chain is two entries (its head and its return), a rule one.
		t.Errorf("legacy rules %d (want 4: a user chain and a rule in nat, a rule in ip6 filter); iptables-nft filter %v (want false: only nat has rules)", l, f)
	}
	run("ip6tables-nft", "-A", "OUTPUT", "-j", "ACCEPT")
	if _, f, _ := read(); !f {
		t.Error("iptables-nft filter: want true with a rule in ip6 filter OUTPUT")
	}
	// A stand-in for kube-proxy's IPVS link (this kernel has neither IPVS
	// nor dummy links: a bridge of that name).
	run("ip", "link", "add", "kube-ipvs0", "type", "bridge")
	run("ip", "addr", "add", "172.27.0.1/32", "dev", "kube-ipvs0")
	if _, _, i := read(); i.IsValid() {
		t.Errorf("IPVS = %v with only another ClusterIP on kube-ipvs0", i)
	}
	run("ip", "addr", "add", v4.String()+"/32", "dev", "kube-ipvs0")
	if _, _, i := read(); i != v4 {
		t.Errorf("IPVS = %v, want %v", i, v4)
	}
	var b bytes.Buffer
	b.WriteString(run("ip", "addr", "show", "kube-ipvs0"))
	if !strings.Contains(b.String(), v4.String()) {
		t.Fatal("kube-ipvs0 lost its address")
	}
}

// TestNFTRemovesLeftovers: an agent of an earlier version, on the
// iptables-nft backend, left its chains to the agent that replaced it (a
// rolling upgrade); the native backend's setup removes them.
func TestNFTRemovesLeftovers(t *testing.T) {
	ns, run := netns(t)
	var old *netfilter.Manager
	var ipt *netfilter.Iptables
	in(t, ns, func() (err error) {
		if ipt, err = netfilter.NewIptables(netfilter.IPv4, netfilter.ModeNFT); err != nil {
			return err
		}
		old, err = netfilter.NewManager(map[netfilter.Family]netfilter.Tables{netfilter.IPv4: ipt}, []netip.Addr{v4}, opts, quiet)
		if err != nil {
			return err
		}
		return old.Setup()
	})
	if out := run("iptables-nft-save"); !strings.Contains(out, "NLCOREDNS-PREROUTING") {
		t.Fatalf("the earlier agent's rules are not there:\n%s", out)
	}
	var n *netfilter.NFT
	in(t, ns, func() (err error) {
		if n, err = netfilter.NewNFT([]netip.Addr{v4}, opts, nil, quiet); err != nil {
			return err
		}
		n.Leftovers = []netfilter.Tables{ipt}
		return n.Setup()
	})
	if out := run("iptables-nft-save"); strings.Contains(out, "NLCOREDNS") || strings.Contains(out, "node-local-coredns") {
		t.Errorf("the earlier agent's rules are left:\n%s", out)
	}
	// The earlier agent, still running during the upgrade's overlap, puts
	// them back; the next sync removes them again.
	in(t, ns, old.Setup)
	in(t, ns, func() error { _, err := n.Sync(); return err })
	if out := run("iptables-nft-save"); strings.Contains(out, "NLCOREDNS") {
		t.Errorf("the earlier agent's rules are back after a sync:\n%s", out)
	}
	if out := run("nft", "list", "table", "inet", netfilter.NFTTable); !strings.Contains(out, "queries to 172.27.255.78/udp") {
		t.Errorf("the agent's table:\n%s", out)
	}
}
