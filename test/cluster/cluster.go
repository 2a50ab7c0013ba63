// Package cluster builds a Kubernetes cluster out of real components in
// network namespaces: etcd and kube-apiserver in a control-plane namespace;
// a node (the simulated node's namespaces, test/nodesim, without its
// kube-proxy-shaped rules) programmed by the real kube-proxy in iptables
// mode (on iptables-nft or iptables-legacy) or nftables mode; and kube-dns
// endpoints running the real CoreDNS with its kubernetes plugin, which
// reaches the API server through the kubernetes Service's ClusterIP as a pod
// does. The harness itself plays kubelet (it runs the DaemonSet's containers
// from the image with podman, see pod.go) and the EndpointSlice controller
// (it writes the slices of the kube-dns Services). Nothing is done in the
// caller's namespace except creating and deleting the named namespaces.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// Proxy modes, as the subtests of TestCluster are named.
const (
	IptablesNFT    = "iptables-nft"
	IptablesLegacy = "iptables-legacy"
	Nftables       = "nftables"
)

// Modes are the kube-proxy modes the harness runs.
var Modes = []string{IptablesNFT, IptablesLegacy, Nftables}

// The cluster's addresses; the pod, endpoint and Service addresses are the
// simulated node's (nodesim).
var (
	ControlPlaneIP  = netip.MustParseAddr("10.250.0.2")
	ControlPlaneIP6 = netip.MustParseAddr("fd00:250::2")
	NodeIP          = netip.MustParseAddr("10.250.0.1")
	NodeIP6         = netip.MustParseAddr("fd00:250::1")
	KubernetesIP    = netip.MustParseAddr("10.96.0.1") // the kubernetes Service
	serviceCIDRs    = "10.96.0.0/12"
	serviceCIDRs6   = "fd00:96::/108"
	clusterCIDRs    = "10.244.0.0/16"
	clusterCIDRs6   = "fd00:244::/48"
)

// Options shape a cluster.
type Options struct {
	// Mode is the kube-proxy mode: IptablesNFT, IptablesLegacy or Nftables.
	Mode string
	// DualStack gives the Services, the node and the endpoints both
	// families.
	DualStack bool
	// Endpoints is the number of CoreDNS endpoints (default 2).
	Endpoints int
	// Standby is how many of them (the last ones) run but are kept out of
	// the EndpointSlices until RestoreEndpoint adds them.
	Standby int
	// Pods is the number of pod namespaces (default 2).
	Pods int
	// Log receives the harness's progress (default: discarded).
	Log *slog.Logger
}

// Cluster is a running cluster of one node.
type Cluster struct {
	Options
	Components Components
	Node       *nodesim.Node
	NodeName   string
	// Client is an admin client of the API server, reached from this
	// process through the control-plane namespace.
	Client  kubernetes.Interface
	CoreDNS []*CoreDNS

	dynamic   dynamic.Interface
	mapper    meta.RESTMapper
	dir       string
	cpNS      string
	pki       *pki
	etcd      *nodesim.Agent
	apiserver *nodesim.Agent
	proxyMu   sync.Mutex
	proxy     *nodesim.Agent
	proxyPath string // PATH with the iptables tools of the mode first
	closers   []func() error
}

// New builds and starts a cluster. On error everything started is stopped
// and removed.
func New(ctx context.Context, comps Components, o Options) (_ *Cluster, err error) {
	if o.Endpoints == 0 {
		o.Endpoints = 2
	}
	if o.Pods == 0 {
		o.Pods = 2
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	iptMode := "nft"
	if o.Mode == IptablesLegacy {
		iptMode = "legacy"
	}
	node, err := nodesim.New(ctx, nodesim.Options{Prefix: "nlk", Pods: o.Pods, Endpoints: o.Endpoints, IptablesMode: iptMode, External: true})
	if err != nil {
		return nil, err
	}
	c := &Cluster{Options: o, Components: comps, Node: node, NodeName: "node-" + o.Mode, cpNS: node.Prefix + "-cp"}
	c.closers = append(c.closers, node.Close)
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
		}
	}()
	if c.dir, err = os.MkdirTemp("", node.Prefix+"-"); err != nil {
		return nil, err
	}
	c.closers = append(c.closers, func() error { return os.RemoveAll(c.dir) })
	if err := c.linkControlPlane(ctx); err != nil {
		return nil, err
	}
	steps := []struct {
		what string
		fn   func(context.Context) error
	}{
		{"starting etcd and kube-apiserver", c.startControlPlane},
		{"creating the node and the kube-dns Services", c.createObjects},
		{"starting kube-proxy", c.StartKubeProxy},
		{"starting CoreDNS", c.startCoreDNS},
	}
	for _, s := range steps {
		start := time.Now()
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", s.what, err)
		}
		o.Log.Info(s.what, "took", time.Since(start).Round(time.Millisecond))
	}
	// Pods reach kube-dns only once kube-proxy has programmed its
	// ClusterIP and CoreDNS has synced with the API server. kube-proxy's
	// /healthz answers before its first sync, so the test is the lookup.
	if err := c.WaitService(ctx, nodesim.KubeDNS); err != nil {
		return nil, err
	}
	return c, nil
}

// Close stops every component and removes the namespaces and files.
func (c *Cluster) Close() error {
	var errs []error
	for i := len(c.closers) - 1; i >= 0; i-- {
		errs = append(errs, c.closers[i]())
	}
	c.closers = nil
	return errors.Join(errs...)
}

func (c *Cluster) onClose(fn func() error) { c.closers = append(c.closers, fn) }

// linkControlPlane makes the control-plane namespace, linked to the node,
// which routes through it by default (a real node has a default route:
// without one, the node's own traffic to a ClusterIP fails before DNAT).
func (c *Cluster) linkControlPlane(ctx context.Context) error {
	if err := c.Node.AddNS(c.cpNS); err != nil {
		return err
	}
	node := []string{
		"ip link add vcp type veth peer name eth0 netns " + c.cpNS,
		"ip link set vcp up",
		"ip addr add " + NodeIP.String() + "/24 dev vcp",
		"ip -6 addr add " + NodeIP6.String() + "/64 dev vcp nodad",
		"ip route add default via " + ControlPlaneIP.String(),
		"ip -6 route add default via " + ControlPlaneIP6.String(),
	}
	cp := []string{
		"ip link set lo up",
		"ip link set eth0 up",
		"ip addr add " + ControlPlaneIP.String() + "/24 dev eth0",
		"ip -6 addr add " + ControlPlaneIP6.String() + "/64 dev eth0 nodad",
		"ip route add default via " + NodeIP.String(),
		"ip -6 route add default via " + NodeIP6.String(),
	}
	for _, l := range node {
		if _, err := c.Node.NodeExec(ctx, strings.Fields(l)...); err != nil {
			return err
		}
	}
	for _, l := range cp {
		if _, err := c.Node.Exec(ctx, c.cpNS, strings.Fields(l)...); err != nil {
			return err
		}
	}
	return nil
}

// startControlPlane starts etcd and kube-apiserver in the control-plane
// namespace and waits until the API server is ready.
func (c *Cluster) startControlPlane(ctx context.Context) error {
	sans := []net.IP{net.ParseIP(ControlPlaneIP.String()), net.ParseIP(KubernetesIP.String()), net.ParseIP("fd00:96::1"), net.ParseIP("127.0.0.1")}
	names := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	var err error
	if c.pki, err = newPKI(c.dir, sans, names); err != nil {
		return err
	}
	c.etcd, err = nodesim.Start(c.cpNS, nil, c.Components.Etcd,
		"--data-dir", filepath.Join(c.dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "default=http://127.0.0.1:2380",
		"--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		return err
	}
	c.onClose(stopper("etcd", c.etcd))
	svcRange := serviceCIDRs
	if c.DualStack {
		svcRange += "," + serviceCIDRs6
	}
	c.apiserver, err = nodesim.Start(c.cpNS, nil, c.Components.APIServer,
		"--etcd-servers", "http://127.0.0.1:2379",
		"--advertise-address", ControlPlaneIP.String(),
		"--bind-address", "0.0.0.0", "--secure-port", "6443",
		"--service-cluster-ip-range", svcRange,
		"--tls-cert-file", c.pki.Cert, "--tls-private-key-file", c.pki.Key,
		"--client-ca-file", c.pki.CA,
		"--service-account-key-file", c.pki.SAPub, "--service-account-signing-key-file", c.pki.SAKey,
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--token-auth-file", c.pki.Tokens,
		"--authorization-mode", "RBAC",
		"--allow-privileged",
		"--cert-dir", filepath.Join(c.dir, "apiserver-certs"),
		"--v", "1")
	if err != nil {
		return err
	}
	c.onClose(stopper("kube-apiserver", c.apiserver))
	kc, err := c.pki.kubeconfig("admin", "https://"+net.JoinHostPort(ControlPlaneIP.String(), "6443"))
	if err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		return err
	}
	// This process is in the root namespace: dial the API server from a
	// thread in the control-plane namespace.
	cfg.Dial = nodesim.Dialer(c.cpNS)
	cfg.QPS, cfg.Burst = 100, 200
	if c.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if c.dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		return err
	}
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Client.Discovery()))
	return poll(ctx, 90*time.Second, "the API server to be ready and the kubernetes Service to exist", func() error {
		if c.apiserver.Exited() || c.etcd.Exited() {
			return errStopped(fmt.Errorf("a control-plane process exited:\netcd: %s\nkube-apiserver: %s", tail(c.etcd.Output()), tail(c.apiserver.Output())))
		}
		body, err := c.Client.CoreV1().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%w: %s", err, body)
		}
		_, err = c.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		return err
	})
}

// createObjects creates the Node (before kube-proxy starts, else it waits
// 30 s for the node's IPs), the kube-dns Service and CoreDNS's RBAC.
func (c *Cluster) createObjects(ctx context.Context) error {
	addrs := []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: NodeIP.String()}}
	podCIDRs := []string{"10.244.1.0/24"}
	if c.DualStack {
		addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: NodeIP6.String()})
		podCIDRs = append(podCIDRs, "fd00:244:1::/64")
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: c.NodeName, Labels: map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/hostname": c.NodeName}},
		Spec:       corev1.NodeSpec{PodCIDR: podCIDRs[0], PodCIDRs: podCIDRs},
	}
	created, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	created.Status.Addresses = addrs
	created.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return err
	}
	kubeDNS := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns"}},
		Spec: corev1.ServiceSpec{
			Selector:  map[string]string{"k8s-app": "kube-dns"},
			ClusterIP: nodesim.KubeDNS.String(),
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
				{Name: "metrics", Port: 9153, Protocol: corev1.ProtocolTCP},
			},
		},
	}
	if c.DualStack {
		policy := corev1.IPFamilyPolicyRequireDualStack
		kubeDNS.Spec.IPFamilyPolicy = &policy
		kubeDNS.Spec.ClusterIPs = []string{nodesim.KubeDNS.String(), nodesim.KubeDNS6.String()}
	}
	if _, err := c.Client.CoreV1().Services("kube-system").Create(ctx, kubeDNS, metav1.CreateOptions{}); err != nil {
		return err
	}
	return c.applyCoreDNSRBAC(ctx)
}

// SyncEndpointSlices plays the EndpointSlice controller for every Service
// in kube-system that selects k8s-app: kube-dns: one slice per family
// listing the CoreDNS endpoints, each ready and serving unless it is marked
// removed (RemoveEndpoint), in which case it is listed neither ready nor
// serving, as the controller does for a terminating pod (kube-proxy then
// flushes its conntrack entries).
func (c *Cluster) SyncEndpointSlices(ctx context.Context) error {
	svcs, err := c.Client.CoreV1().Services("kube-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, svc := range svcs.Items {
		if svc.Spec.Selector["k8s-app"] != "kube-dns" {
			continue
		}
		families := []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4}
		if c.DualStack {
			families = append(families, discoveryv1.AddressTypeIPv6)
		}
		for _, family := range families {
			slice := &discoveryv1.EndpointSlice{
				ObjectMeta: metav1.ObjectMeta{
					Name: fmt.Sprintf("%s-%s", svc.Name, strings.ToLower(string(family))), Namespace: svc.Namespace,
					Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: "node-local-coredns-test-harness"},
				},
				AddressType: family,
			}
			for _, p := range svc.Spec.Ports {
				name, proto, port := p.Name, p.Protocol, p.TargetPort.IntVal
				if port == 0 {
					port = p.Port
				}
				slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &port})
			}
			for _, d := range c.CoreDNS {
				up := !d.removed.Load()
				ip := d.Endpoint.IP
				if family == discoveryv1.AddressTypeIPv6 {
					ip = d.Endpoint.IP6
				}
				nodeName := c.NodeName
				slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
					Addresses:  []string{ip.String()},
					Conditions: discoveryv1.EndpointConditions{Ready: &up, Serving: &up, Terminating: ptr(!up)},
					NodeName:   &nodeName,
					TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "kube-system", Name: d.Name},
				})
			}
			if err := c.apply(ctx, slice); err != nil {
				return fmt.Errorf("writing the EndpointSlice of %s: %w", svc.Name, err)
			}
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// WaitService waits until a pod resolves through the Service at ip (TCP
// and UDP): kube-proxy has programmed it with its endpoints.
func (c *Cluster) WaitService(ctx context.Context, ip netip.Addr) error {
	return poll(ctx, 60*time.Second, "kube-proxy to program the Service at "+ip.String(), func() error {
		if err := c.componentsRunning(); err != nil {
			return errStopped(err)
		}
		for _, proto := range []string{"udp", "tcp"} {
			r, _, err := c.Node.Pods[0].Query(proto, ip, "kubernetes.default.svc.cluster.local.", dns.TypeA)
			if err != nil {
				return err
			}
			if r.Rcode != dns.RcodeSuccess {
				return fmt.Errorf("%s answer %s", proto, dns.RcodeToString[r.Rcode])
			}
		}
		return nil
	})
}

// componentsRunning reports a component that exited.
func (c *Cluster) componentsRunning() error {
	c.proxyMu.Lock()
	proxy := c.proxy
	c.proxyMu.Unlock()
	procs := map[string]*nodesim.Agent{"etcd": c.etcd, "kube-apiserver": c.apiserver, "kube-proxy": proxy}
	for _, d := range c.CoreDNS {
		procs[d.Name] = d.proc
	}
	for name, p := range procs {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited: %s", name, tail(p.Output()))
		}
	}
	return nil
}

// stopper stops a component with SIGTERM (SIGKILL after 10 s).
func stopper(name string, p *nodesim.Agent) func() error {
	return func() error {
		if _, err := p.Stop(10 * time.Second); err != nil {
			return fmt.Errorf("stopping %s: %w", name, err)
		}
		return nil
	}
}

type stopped struct{ error }

func errStopped(err error) error { return stopped{err} }

// poll calls fn until it returns nil, an error from errStopped, or timeout.
func poll(ctx context.Context, timeout time.Duration, what string, fn func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		last = fn()
		if last == nil {
			return nil
		}
		var s stopped
		if errors.As(last, &s) {
			return s.error
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting %s for %s: %w", timeout, what, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// tail returns the last lines of a log.
func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}
