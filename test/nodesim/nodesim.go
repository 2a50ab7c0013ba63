// Package nodesim builds a simulated Kubernetes node out of network
// namespaces: a node namespace with the cbr0 bridge and kube-proxy-shaped
// iptables rules, pod namespaces on the bridge, and kube-dns endpoint
// namespaces, routed as if on other nodes, each running an authoritative DNS
// server for the cluster zone. Nothing is done in the caller's namespace
// except creating and deleting the named namespaces.
package nodesim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// The simulated cluster's addresses.
var (
	KubeDNS       = netip.MustParseAddr("10.96.0.10") // kube-dns ClusterIP
	KubeDNS6      = netip.MustParseAddr("fd00:96::a") // kube-dns ClusterIP, IPv6
	NodeLocalDNS  = netip.MustParseAddr("10.96.0.11") // node-local-coredns Service ClusterIP
	NodeLocalDNS6 = netip.MustParseAddr("fd00:96::b") // node-local-coredns Service, IPv6
	BridgeIP      = netip.MustParseAddr("10.244.1.1") // cbr0, the pods' gateway
	BridgeIP6     = netip.MustParseAddr("fd00:244:1::1")
	podCIDR       = "10.244.0.0/16"
	podCIDR6      = "fd00:244::/48"
	serviceCIDR   = "10.96.0.0/12"
	serviceCIDR6  = "fd00:96::/108"
	ClusterDomain = "cluster.local"
)

// Options shape the simulated node.
type Options struct {
	// Prefix names the namespaces: <prefix>-<pid>-<random>-node,
	// <prefix>-<pid>-<random>-pod1, ...; default "nlc". The process id lets
	// Sweep remove what a killed process left behind.
	Prefix string
	// Pods is the number of pod namespaces (default 2).
	Pods int
	// Endpoints is the number of kube-dns endpoints (default 2).
	Endpoints int
	// IptablesMode is the mode kube-proxy's rules are written in: "nft"
	// (default) or "legacy".
	IptablesMode string
	// TTL of kube-dns's answers (default 30).
	TTL uint32
	// External leaves kube-proxy's rules and the endpoints' DNS servers to
	// the caller (the real-component cluster, test/cluster): the node gets
	// its namespaces, links and addresses only, and Endpoint.DNS is nil.
	External bool
}

// Node is a simulated node.
type Node struct {
	Prefix    string
	NS        string // the node's namespace
	Pods      []*Pod
	Endpoints []*Endpoint
	mode      string
	created   []string
	// removed marks endpoints kube-proxy no longer sends traffic to.
	removed map[int]bool
}

// Pod is a pod namespace on cbr0.
type Pod struct {
	NS  string
	IP  netip.Addr
	IP6 netip.Addr
}

// Endpoint is a kube-dns endpoint namespace, routed from the node.
type Endpoint struct {
	NS  string
	IP  netip.Addr
	IP6 netip.Addr
	// DNS is the simulated kube-dns server (nil on an External node).
	DNS *AuthDNS
}

// Supported reports why the simulated node cannot be built here, or "" if
// it can: it needs root, ip, and the iptables tools.
func Supported() string {
	if os.Geteuid() != 0 {
		return "the simulated node needs root (network namespaces and iptables)"
	}
	for _, tool := range []string{"ip", "iptables-restore", "ip6tables-restore", "iptables-nft", "iptables-legacy"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("the simulated node needs %s (make test installs it)", tool)
		}
	}
	return ""
}

// New builds a node. On error everything created so far is removed.
func New(ctx context.Context, o Options) (n *Node, err error) {
	if o.Prefix == "" {
		o.Prefix = "nlc"
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	o.Prefix = fmt.Sprintf("%s-%d-%s", o.Prefix, os.Getpid(), hex.EncodeToString(b))
	if o.Pods == 0 {
		o.Pods = 2
	}
	if o.Endpoints == 0 {
		o.Endpoints = 2
	}
	if o.IptablesMode == "" {
		o.IptablesMode = "nft"
	}
	if o.TTL == 0 {
		o.TTL = TTL
	}
	n = &Node{Prefix: o.Prefix, NS: o.Prefix + "-node", mode: o.IptablesMode, removed: map[int]bool{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
			n = nil
		}
	}()
	if err := n.addNS(n.NS); err != nil {
		return nil, err
	}
	node := []string{
		"ip link set lo up",
		"sysctl -qw net.ipv4.ip_forward=1",
		"sysctl -qw net.ipv6.conf.all.forwarding=1",
		"ip link add cbr0 type bridge",
		"ip link set cbr0 up",
		"ip addr add " + BridgeIP.String() + "/24 dev cbr0",
		"ip addr add " + BridgeIP6.String() + "/64 dev cbr0 nodad",
		// The Service CIDRs go out of the node as on a real one; DNAT
		// turns them into endpoint addresses before routing matters.
		"ip route add " + serviceCIDR + " dev cbr0",
		"ip -6 route add " + serviceCIDR6 + " dev cbr0",
	}
	if err := n.run(ctx, n.NS, node...); err != nil {
		return nil, err
	}
	for i := 1; i <= o.Pods; i++ {
		p := &Pod{
			NS:  fmt.Sprintf("%s-pod%d", o.Prefix, i),
			IP:  netip.AddrFrom4([4]byte{10, 244, 1, byte(9 + i)}),
			IP6: netip.MustParseAddr(fmt.Sprintf("fd00:244:1::%x", 9+i)),
		}
		if err := n.addNS(p.NS); err != nil {
			return nil, err
		}
		host := fmt.Sprintf("vpod%d", i)
		if err := n.run(ctx, n.NS,
			fmt.Sprintf("ip link add %s type veth peer name eth0 netns %s", host, p.NS),
			fmt.Sprintf("ip link set %s master cbr0 up", host),
		); err != nil {
			return nil, err
		}
		if err := n.run(ctx, p.NS,
			"ip link set lo up",
			"ip link set eth0 up",
			"ip addr add "+p.IP.String()+"/24 dev eth0",
			"ip addr add "+p.IP6.String()+"/64 dev eth0 nodad",
			"ip route add default via "+BridgeIP.String(),
			"ip -6 route add default via "+BridgeIP6.String(),
		); err != nil {
			return nil, err
		}
		n.Pods = append(n.Pods, p)
	}
	for i := 1; i <= o.Endpoints; i++ {
		e := &Endpoint{
			NS:  fmt.Sprintf("%s-dns%d", o.Prefix, i),
			IP:  netip.AddrFrom4([4]byte{10, 244, byte(1 + i), 53}),
			IP6: netip.MustParseAddr(fmt.Sprintf("fd00:244:%x::53", 1+i)),
		}
		gw := netip.AddrFrom4([4]byte{10, 244, byte(1 + i), 1})
		gw6 := netip.MustParseAddr(fmt.Sprintf("fd00:244:%x::1", 1+i))
		if err := n.addNS(e.NS); err != nil {
			return nil, err
		}
		host := fmt.Sprintf("vdns%d", i)
		if err := n.run(ctx, n.NS,
			fmt.Sprintf("ip link add %s type veth peer name eth0 netns %s", host, e.NS),
			fmt.Sprintf("ip link set %s up", host),
			fmt.Sprintf("ip addr add %s/24 dev %s", gw, host),
			fmt.Sprintf("ip addr add %s/64 dev %s nodad", gw6, host),
		); err != nil {
			return nil, err
		}
		if err := n.run(ctx, e.NS,
			"ip link set lo up",
			"ip link set eth0 up",
			"ip addr add "+e.IP.String()+"/24 dev eth0",
			"ip addr add "+e.IP6.String()+"/64 dev eth0 nodad",
			"ip route add default via "+gw.String(),
			"ip -6 route add default via "+gw6.String(),
		); err != nil {
			return nil, err
		}
		n.Endpoints = append(n.Endpoints, e)
		if o.External {
			continue
		}
		var pc net.PacketConn
		var ln net.Listener
		err := InNS(e.NS, func() error {
			var err error
			if pc, err = net.ListenPacket("udp", ":53"); err != nil {
				return err
			}
			ln, err = net.Listen("tcp", ":53")
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("starting kube-dns endpoint in %s: %w", e.NS, err)
		}
		e.DNS = NewAuthDNS(ClusterDomain, o.TTL, pc, ln)
	}
	if o.External {
		return n, nil
	}
	// kube-dns answers the headless Service of its own endpoints, as the
	// chart creates it, with the endpoints' addresses.
	n.setHeadless()
	if err := n.installKubeProxy(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

// AddNS adds namespace name, deleted with the node (Close).
func (n *Node) AddNS(name string) error { return n.addNS(name) }

func (n *Node) addNS(name string) error {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("adding namespace %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	n.created = append(n.created, name)
	return nil
}

// run runs each command line (split on spaces) in namespace ns.
func (n *Node) run(ctx context.Context, ns string, lines ...string) error {
	for _, l := range lines {
		if _, err := n.Exec(ctx, ns, strings.Fields(l)...); err != nil {
			return err
		}
	}
	return nil
}

// Exec runs a command in namespace ns and returns its output.
func (n *Node) Exec(ctx context.Context, ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("running %q in %s: %w: %s", strings.Join(args, " "), ns, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// NodeExec runs a command in the node's namespace.
func (n *Node) NodeExec(ctx context.Context, args ...string) (string, error) {
	return n.Exec(ctx, n.NS, args...)
}

// Close stops the endpoints' servers and deletes every namespace the node
// created. It is safe to call more than once.
func (n *Node) Close() error {
	for _, e := range n.Endpoints {
		if e.DNS != nil {
			e.DNS.shutdown()
		}
	}
	n.Endpoints = nil
	var errs []error
	for i := len(n.created) - 1; i >= 0; i-- {
		if out, err := exec.Command("ip", "netns", "del", n.created[i]).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %w: %s", n.created[i], err, bytes.TrimSpace(out)))
		}
	}
	n.created = nil
	return errors.Join(errs...)
}

// Sweep deletes the namespaces that a simulated node of a process that no
// longer runs left behind (named <prefix>-<pid>-...), for every prefix. It
// never touches a namespace of a live process or one named otherwise.
func Sweep(prefixes ...string) error {
	entries, err := os.ReadDir("/var/run/netns")
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		for _, p := range prefixes {
			rest, ok := strings.CutPrefix(e.Name(), p+"-")
			if !ok {
				continue
			}
			pidStr, _, ok := strings.Cut(rest, "-")
			pid, err := strconv.Atoi(pidStr)
			if !ok || err != nil || pid <= 0 {
				continue
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				continue // its process still runs
			}
			// Processes the dead test started there (a cluster's etcd,
			// kube-apiserver, CoreDNS) outlive it; end them first.
			if out, err := exec.Command("ip", "netns", "pids", e.Name()).Output(); err == nil {
				for _, f := range strings.Fields(string(out)) {
					if p, err := strconv.Atoi(f); err == nil && p > 1 {
						_ = syscall.Kill(p, syscall.SIGKILL)
					}
				}
			}
			if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("deleting stale namespace %s: %w: %s", e.Name(), err, bytes.TrimSpace(out)))
			}
		}
	}
	return errors.Join(errs...)
}

// InNS runs fn on a thread in namespace ns. Sockets that fn opens stay in
// ns and may be used from any goroutine afterwards.
func InNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is not returned to the runtime's pool if switching back
		// fails: without UnlockOSThread it exits with the goroutine.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			errc <- fmt.Errorf("opening namespace %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// Ruleset returns iptables-save and ip6tables-save of the node in the mode
// kube-proxy's rules were written in, then the agent's nftables table.
func (n *Node) Ruleset(ctx context.Context) (string, error) {
	v4, err := n.NodeExec(ctx, "iptables-"+n.mode+"-save")
	if err != nil {
		return "", err
	}
	v6, err := n.NodeExec(ctx, "ip6tables-"+n.mode+"-save")
	if err != nil {
		return "", err
	}
	table, err := n.AgentTable(ctx)
	return v4 + v6 + table, err
}

// AgentTable returns what nft lists of the agent's own table (the native
// backend's), or "" when there is none.
func (n *Node) AgentTable(ctx context.Context) (string, error) {
	out, err := n.NodeExec(ctx, "nft", "list", "table", "inet", "node-local-coredns")
	if err != nil && strings.Contains(out, "No such file or directory") {
		return "", nil
	}
	return out, err
}

// Mode is the iptables mode the node's rules are in.
func (n *Node) Mode() string { return n.mode }

// Addrs returns the addresses on the node's interface dev ("" when the
// interface does not exist).
func (n *Node) Addrs(ctx context.Context, dev string) (string, error) {
	out, err := n.NodeExec(ctx, "ip", "-br", "addr", "show", "dev", dev)
	if err != nil && strings.Contains(out, "does not exist") {
		return "", nil
	}
	return out, err
}

// StartAuthDNS runs another simulated kube-dns server on addr (host:port)
// in namespace ns, for tests that need an upstream on loopback.
func StartAuthDNS(ns, addr string) (*AuthDNS, error) {
	var pc net.PacketConn
	var ln net.Listener
	err := InNS(ns, func() error {
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("starting DNS server on %s in %s: %w", addr, ns, err)
	}
	return NewAuthDNS(ClusterDomain, TTL, pc, ln), nil
}

// Shutdown stops the server.
func (a *AuthDNS) Shutdown() { a.shutdown() }
