package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/node-local-coredns/node-local-coredns/deploy"
	"github.com/node-local-coredns/node-local-coredns/test/cluster"
	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// suite is one cluster (one kube-proxy mode) and the agent's pod that
// serves it now; the scenarios run on it in order.
type suite struct {
	c        *cluster.Cluster
	env      *clusterEnv
	ds       *appsv1.DaemonSet
	pod      *cluster.Pod
	pods     int
	localIPs []netip.Addr
	// t is the mode's test, which owns the pods (a pod outlives the
	// scenario that started it).
	t *testing.T
}

// clusterRate is the pods' load in the scenarios, in queries per second.
const clusterRate = 300

// The Services the scenarios resolve, in the default namespace.
const (
	webName  = "web.default.svc.cluster.local."
	dbName   = "db.default.svc.cluster.local."
	webSRV   = "_http._tcp.web.default.svc.cluster.local."
	nxName   = "nx.default.svc.cluster.local."
	webMixed = "WeB.DeFaulT.svc.CLUSTER.local."
)

// loadNames are the names the pods' load cycles through: all exist.
var loadNames = []string{webName, dbName, "kubernetes.default.svc.cluster.local.", "kube-dns.kube-system.svc.cluster.local."}

func newSuite(t *testing.T, env *clusterEnv, o cluster.Options) *suite {
	c := newCluster(t, env, o)
	ds := applyManifests(t, c)
	s := &suite{c: c, env: env, ds: ds, t: t, localIPs: []netip.Addr{nodesim.KubeDNS}}
	if o.DualStack {
		// Kubelet's environment carries only the primary ClusterIP: a
		// dual-stack cluster names both through the chart's localIP.
		s.localIPs = append(s.localIPs, nodesim.KubeDNS6)
		docs, err := deploy.RenderHelm("../../deploy/helm/node-local-coredns", map[string]any{"localIP": nodesim.KubeDNS.String() + "," + nodesim.KubeDNS6.String()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ApplyManifests(t.Context(), []byte(docs["daemonset.yaml"])); err != nil {
			t.Fatal(err)
		}
		if s.ds, err = c.Client.AppsV1().DaemonSets("kube-system").Get(t.Context(), "node-local-coredns", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s.createServices(t)
	s.pod = s.startPod(t)
	// The entries of lookups made through kube-proxy before the agent ran
	// (the harness's own wait for kube-dns).
	for _, ip := range s.localIPs {
		if _, err := c.Node.DeleteConntrackTo(ip); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// startPod runs a new pod of the DaemonSet and waits until it serves.
func (s *suite) startPod(t *testing.T) *cluster.Pod {
	t.Helper()
	s.pods++
	return runPod(t, s.c, s.env, s.ds, fmt.Sprintf("nlc-%d", s.pods))
}

func (s *suite) agent() *cluster.Container { return s.pod.Containers["node-local-coredns"] }

// createServices creates web (a ClusterIP Service with a named port, for
// SRV) and db (headless, with an EndpointSlice of two addresses).
func (s *suite) createServices(t *testing.T) {
	ctx := t.Context()
	web := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	if s.c.DualStack {
		policy := corev1.IPFamilyPolicyRequireDualStack
		web.Spec.IPFamilyPolicy = &policy
	}
	db := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone,
			Selector:  map[string]string{"app": "db"},
			Ports:     []corev1.ServicePort{{Name: "pg", Port: 5432, Protocol: corev1.ProtocolTCP}},
		},
	}
	for _, svc := range []*corev1.Service{web, db} {
		if _, err := s.c.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s.setDBAddresses(t, "10.244.9.1", "10.244.9.2")
}

// setDBAddresses writes the headless Service db's EndpointSlice.
func (s *suite) setDBAddresses(t *testing.T, addrs ...string) {
	t.Helper()
	ready := true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "db-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "db"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptrTo("pg"), Protocol: ptrTo(corev1.ProtocolTCP), Port: ptrTo(int32(5432))}},
	}
	for _, a := range addrs {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	ctx := t.Context()
	cl := s.c.Client.DiscoveryV1().EndpointSlices("default")
	old, err := cl.Get(ctx, slice.Name, metav1.GetOptions{})
	if err == nil {
		old.Endpoints = slice.Endpoints
		_, err = cl.Update(ctx, old, metav1.UpdateOptions{})
	} else {
		_, err = cl.Create(ctx, slice, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

func ptrTo[T any](v T) *T { return &v }

// ask sends one query from the first pod to server:53 over proto.
func ask(t *testing.T, s *suite, proto string, server netip.Addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	r, _, err := nodesim.Query(s.c.Node.Pods[0].NS, proto, netip.AddrPortFrom(server, 53), name, qtype, 2*time.Second)
	if err != nil {
		t.Fatalf("%s %s %s to %s: %v", proto, dns.TypeToString[qtype], name, server, err)
	}
	return r
}

// records renders a response for comparison: the rcode, the answer
// section without TTLs in a stable order (CoreDNS's loadbalance shuffles
// it), and the authority section's owners and types (an SOA's serial moves
// with the API server's changes; a cached one is older). Owner names are
// compared without case: a cached answer's owners have the case of the
// query that filled the cache, in CoreDNS's cache as in the agent's (the
// question keeps the client's case; ask checks that).
func records(m *dns.Msg) string {
	var ans []string
	for _, rr := range m.Answer {
		rr = dns.Copy(rr)
		rr.Header().Ttl = 0
		rr.Header().Name = strings.ToLower(rr.Header().Name)
		ans = append(ans, rr.String())
	}
	slices.Sort(ans)
	var ns []string
	for _, rr := range m.Ns {
		ns = append(ns, strings.ToLower(rr.Header().Name)+" "+dns.TypeToString[rr.Header().Rrtype])
	}
	return fmt.Sprintf("%s answer=[%s] authority=[%s]", dns.RcodeToString[m.Rcode], strings.Join(ans, "; "), strings.Join(ns, "; "))
}

// kubeDNS is the first CoreDNS endpoint's address: what kube-dns answers
// without the agent.
func (s *suite) kubeDNS() netip.Addr { return s.c.CoreDNS[0].Endpoint.IP }

// podDNSConntrack counts conntrack entries of the pods' DNS to the local
// IPs.
func (s *suite) podDNSConntrack(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, ip := range s.localIPs {
		for _, p := range s.c.Node.Pods {
			out = append(out, podConntrack(t, s.c.Node, p, ip)...)
		}
	}
	return out
}

// agentRequests is the agent's count of DNS requests it served.
func (s *suite) agentRequests(t *testing.T) float64 {
	t.Helper()
	v, err := nodesim.Metric(t.Context(), s.c.Node.NS, agentMetrics, "coredns_dns_requests_total")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// probe runs the agent container's readiness or liveness probe.
func (s *suite) probe(t *testing.T, which string) error {
	t.Helper()
	a := s.agent()
	p := a.Spec.ReadinessProbe
	if which == "liveness" {
		p = a.Spec.LivenessProbe
	}
	return a.Probe(t.Context(), s.env.podman, p)
}

// agentRules is the agent's part of the node's ruleset.
func (s *suite) agentRules(t *testing.T) string {
	t.Helper()
	var keep []string
	for _, l := range strings.Split(ruleset(t, s.c.Node), "\n") {
		if strings.Contains(l, "NLCOREDNS") || strings.Contains(l, "node-local-coredns: ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// podLoad runs the pods' load against the kube-dns ClusterIP while faults
// happen at their offsets, and returns the report.
func (s *suite) podLoad(t *testing.T, d time.Duration, missEvery int, faults ...fault) *nodesim.Report {
	t.Helper()
	spec := nodesim.LoadSpec{Server: nodesim.KubeDNS, Rate: clusterRate, Duration: d, Names: loadNames, MissEvery: missEvery, TCPEvery: 4, Timeout: 2 * time.Second, Workers: 32}
	done := make(chan *nodesim.Report, 1)
	go func() { done <- s.c.Node.Load(context.Background(), spec) }()
	start := time.Now()
	for _, f := range faults {
		time.Sleep(time.Until(start.Add(f.at)))
		f.do(t)
	}
	rep := <-done
	t.Logf("pod load: %s", rep.Summary())
	return rep
}

var clusterScenarios = []struct {
	name string
	run  func(*testing.T, *suite)
}{
	{"served", scenarioServed},
	{"answers", scenarioAnswers},
	{"service-changes", scenarioServiceChanges},
	{"kube-proxy-resync", scenarioKubeProxyResync},
	{"readiness", scenarioReadiness},
	{"sigkill", scenarioSIGKILL},
	{"rolling-upgrade", scenarioRollingUpgrade},
	{"graceful-stop", scenarioGracefulStop},
	// A bad kube-dns endpoint (cluster_upstream_test.go).
	{"misses-spread", scenarioMissesSpread},
	{"endpoint-silent", scenarioEndpointSilent},
	{"endpoint-overloaded", scenarioEndpointOverloaded},
	{"endpoints-rolling-restart", scenarioEndpointsRollingRestart},
	{"endpoint-added", scenarioEndpointAdded},
	{"static-image", scenarioStaticImage},
	{"mode-detection", scenarioModeDetection},
}

// The image that holds only the binary serves beside kube-proxy's nftables
// mode with no external program; beside its iptables modes, where the
// accept rules (or all rules) need the iptables tools, both containers exit
// with one line that says to use the image with them, and the node is left
// as it was.
func scenarioStaticImage(t *testing.T, s *suite) {
	ctx := t.Context()
	for _, name := range []string{"node-local-coredns", "watchdog"} {
		if err := s.pod.Containers[name].Stop(ctx, s.env.podman); err != nil {
			t.Fatal(err)
		}
	}
	s.pods++
	pod, err := s.c.RunPod(ctx, s.env.podman, s.ds, testImageNFT, fmt.Sprintf("nlc-%d-static", s.pods))
	if err != nil {
		t.Fatal(err)
	}
	agent := pod.Containers["node-local-coredns"]
	if s.c.Mode == cluster.Nftables {
		if err := agent.WaitLog(ctx, s.env.podman, "msg=serving", 30*time.Second); err != nil {
			t.Fatalf("the binary-only image beside kube-proxy's nftables mode: %v", err)
		}
		if logs := agent.Logs(ctx, s.env.podman); !strings.Contains(logs, "backend=nftables") {
			t.Errorf("the binary-only image did not pick its nftables table:\n%s", lastLines(logs, 10))
		}
		if err := pod.Containers["watchdog"].WaitLog(ctx, s.env.podman, "msg=watching", 30*time.Second); err != nil {
			t.Errorf("the binary-only image's watchdog: %v", err)
		}
		for _, ip := range s.localIPs {
			if _, err := s.c.Node.DeleteConntrackTo(ip); err != nil {
				t.Fatal(err)
			}
			for _, proto := range []string{"udp", "tcp"} {
				if r := ask(t, s, proto, ip, webName, dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
					t.Errorf("%s to %s through the binary-only image: %s", proto, ip, records(r))
				}
			}
		}
		if ct := s.podDNSConntrack(t); len(ct) != 0 {
			t.Errorf("pods' DNS left %d conntrack entries with the binary-only image, want 0: %v", len(ct), ct)
		}
		for _, name := range []string{"node-local-coredns", "watchdog"} {
			if err := pod.Containers[name].Stop(ctx, s.env.podman); err != nil {
				t.Error(err)
			}
		}
		if rules := s.agentRules(t); rules != "" {
			t.Errorf("the binary-only image left rules after SIGTERM:\n%s", rules)
		}
	} else {
		want := map[string]string{
			cluster.IptablesNFT:    "run the image with the iptables tools",
			cluster.IptablesLegacy: "this image has no iptables tools",
		}[s.c.Mode]
		for _, name := range []string{"node-local-coredns", "watchdog"} {
			c := pod.Containers[name]
			eventually(t, 30*time.Second, "the binary-only image's "+name+" to exit", func() bool { return !c.Running(ctx, s.env.podman) })
			code, _, err := c.ExitCode(ctx, s.env.podman)
			if err != nil {
				t.Fatal(err)
			}
			logs := c.Logs(ctx, s.env.podman)
			if code == 0 || !strings.Contains(logs, want) || strings.Contains(logs, "msg=serving") {
				t.Errorf("%s of the binary-only image beside kube-proxy's %s mode: exit %d, want an error containing %q:\n%s", name, s.c.Mode, code, want, lastLines(logs, 10))
			}
			t.Logf("%s: exit %d, %s", name, code, lastLines(logs, 1))
		}
		if rules := s.agentRules(t); rules != "" {
			t.Errorf("the agent touched the node's rules:\n%s", rules)
		}
		if addrs, _ := s.c.Node.Addrs(ctx, "nodelocaldns"); addrs != "" {
			t.Errorf("the agent touched the node's interfaces: %q", addrs)
		}
	}
	s.pod = s.startPod(t)
	s.assertBackOnAgent(t)
}

// Pods are served by the agent: their DNS leaves no conntrack entry, the
// agent counts it, both probes pass, and its processes run non-root with
// only their capabilities.
func scenarioServed(t *testing.T, s *suite) {
	logs := s.agent().Logs(t.Context(), s.env.podman)
	// The backend beside each kube-proxy mode: iptables-legacy where
	// kube-proxy's rules are there; the agent's own table otherwise, with
	// the accept rules in iptables-nft's filter table where kube-proxy's
	// iptables mode filters (it rejects there for a Service without
	// endpoints), and nowhere else beside its nftables mode (whose filter
	// chains skip untracked packets).
	wantMode := map[string]string{
		cluster.IptablesLegacy: "backend=iptables-legacy accept_rules=iptables-legacy",
		cluster.IptablesNFT:    "backend=nftables accept_rules=iptables-nft",
		cluster.Nftables:       `backend=nftables accept_rules="nftables drop-policy chains of the host"`,
	}[s.c.Mode]
	if !strings.Contains(logs, wantMode) {
		t.Errorf("the agent did not pick %s beside kube-proxy's %s mode:\n%s", wantMode, s.c.Mode, lastLines(logs, 20))
	}
	tables, err := s.c.Node.NodeExec(t.Context(), "nft", "list", "tables")
	if err != nil {
		t.Fatal(err)
	}
	if own := strings.Contains(tables, "table inet node-local-coredns"); own != (s.c.Mode != cluster.IptablesLegacy) {
		t.Errorf("nft list tables shows the agent's table: %v, want %v beside kube-proxy's %s mode:\n%s", own, !own, s.c.Mode, tables)
	}
	if s.c.Mode == cluster.Nftables {
		for _, tool := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
			out, err := s.c.Node.NodeExec(t.Context(), tool)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, "NLCOREDNS") || strings.Contains(out, "node-local-coredns") {
				t.Errorf("beside kube-proxy's nftables mode the agent has rules in %s:\n%s", tool, out)
			}
		}
	}
	before := s.agentRequests(t)
	for _, ip := range s.localIPs {
		for _, proto := range []string{"udp", "tcp"} {
			for range 5 {
				if r := ask(t, s, proto, ip, webName, dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
					t.Fatalf("%s to %s: %s", proto, ip, records(r))
				}
			}
		}
	}
	// The fast path reports its answers to the metrics in batches.
	eventually(t, 5*time.Second, fmt.Sprintf("the agent counts the %d requests", 10*len(s.localIPs)), func() bool {
		return s.agentRequests(t)-before >= float64(10*len(s.localIPs))
	})
	if ct := s.podDNSConntrack(t); len(ct) != 0 {
		t.Errorf("pods' DNS left %d conntrack entries, want 0: %v", len(ct), ct)
	}
	for _, p := range []string{"readiness", "liveness"} {
		if err := s.probe(t, p); err != nil {
			t.Errorf("%s probe: %v", p, err)
		}
	}
	checkLeastPrivilege(t, s)
}

// Through the agent, every kind of answer is kube-dns's.
func scenarioAnswers(t *testing.T, s *suite) {
	web, err := s.c.Client.CoreV1().Services("default").Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	queries := []struct {
		name  string
		qtype uint16
	}{
		{webName, dns.TypeA}, {webName, dns.TypeAAAA}, {webSRV, dns.TypeSRV}, {dbName, dns.TypeA},
		{nxName, dns.TypeA}, {webMixed, dns.TypeA}, {"host.example.org.", dns.TypeA},
	}
	for _, ip := range web.Spec.ClusterIPs {
		rev, err := dns.ReverseAddr(ip)
		if err != nil {
			t.Fatal(err)
		}
		queries = append(queries, struct {
			name  string
			qtype uint16
		}{rev, dns.TypePTR})
	}
	for _, q := range queries {
		want := records(ask(t, s, "udp", s.kubeDNS(), q.name, q.qtype))
		for _, ip := range s.localIPs {
			for _, proto := range []string{"udp", "tcp"} {
				// Twice: a miss, then an answer from the cache.
				for i := range 2 {
					r := ask(t, s, proto, ip, q.name, q.qtype)
					if got := records(r); got != want {
						t.Errorf("%s %s over %s to %s (%d): got %s, kube-dns says %s", q.name, dns.TypeToString[q.qtype], proto, ip, i, got, want)
					}
					if r.Question[0].Name != q.name {
						t.Errorf("%s: question came back as %s", q.name, r.Question[0].Name)
					}
				}
			}
		}
	}
	if ct := s.podDNSConntrack(t); len(ct) != 0 {
		t.Errorf("pods' DNS left %d conntrack entries, want 0: %v", len(ct), ct)
	}
}

// A Service created, changed and deleted while pods resolve it: the agent
// follows kube-dns within its caches' TTLs (kube-dns's 5 s here).
func scenarioServiceChanges(t *testing.T, s *suite) {
	ctx := t.Context()
	const name = "late.default.svc.cluster.local."
	within := 15 * time.Second
	if r := ask(t, s, "udp", nodesim.KubeDNS, name, dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("before the Service exists: %s, want NXDOMAIN", records(r))
	}
	svc, err := s.c.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "late", Namespace: "default"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := "A\t" + svc.Spec.ClusterIP
	var last string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last answer through the agent: %s; kube-dns: %s", last, records(ask(t, s, "udp", s.kubeDNS(), name, dns.TypeA)))
		}
	})
	took := eventually(t, within, "the agent answers the new Service", func() bool {
		last = records(ask(t, s, "udp", nodesim.KubeDNS, name, dns.TypeA))
		return strings.Contains(last, want)
	})
	t.Logf("created: answered through the agent after %s", took.Round(time.Millisecond))

	if r := ask(t, s, "udp", nodesim.KubeDNS, dbName, dns.TypeA); len(r.Answer) != 2 {
		t.Fatalf("db before the change: %s, want its two addresses", records(r))
	}
	s.setDBAddresses(t, "10.244.9.3")
	took = eventually(t, within, "the agent answers the headless Service's new address", func() bool {
		r := ask(t, s, "udp", nodesim.KubeDNS, dbName, dns.TypeA)
		return len(r.Answer) == 1 && strings.Contains(r.Answer[0].String(), "10.244.9.3")
	})
	t.Logf("changed: answered through the agent after %s", took.Round(time.Millisecond))
	if got, want := records(ask(t, s, "udp", nodesim.KubeDNS, dbName, dns.TypeA)), records(ask(t, s, "udp", s.kubeDNS(), dbName, dns.TypeA)); got != want {
		t.Errorf("db through the agent: %s, kube-dns: %s", got, want)
	}

	if r := ask(t, s, "udp", nodesim.KubeDNS, name, dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("before the delete: %s", records(r))
	}
	if err := s.c.Client.CoreV1().Services("default").Delete(ctx, "late", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	took = eventually(t, within, "the agent answers NXDOMAIN for the deleted Service", func() bool {
		return ask(t, s, "udp", nodesim.KubeDNS, name, dns.TypeA).Rcode == dns.RcodeNameError
	})
	t.Logf("deleted: NXDOMAIN through the agent after %s", took.Round(time.Millisecond))
}

// kube-proxy restarted (a full resync of every rule it owns), then
// through the syncs a live cluster makes it do (a partial sync for each
// Service change) and its canary monitor (every SyncPeriod; kube-proxy 1.37
// resyncs in full only hourly or when its canary chain is gone): the
// agent's rules are untouched, nothing had to be restored, and pods stay on
// the agent.
func scenarioKubeProxyResync(t *testing.T, s *suite) {
	ctx := t.Context()
	rules := s.agentRules(t)
	if rules == "" {
		t.Fatal("no agent rules in the node's ruleset")
	}
	restored, err := nodesim.Metric(ctx, s.c.Node.NS, agentMetrics, "node_local_coredns_restored_total")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.c.RestartKubeProxy(ctx); err != nil {
		t.Fatal(err)
	}
	syncs, err := s.c.KubeProxySyncs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range 3 {
		name := fmt.Sprintf("churn-%d", i)
		if _, err := s.c.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "kube-proxy to sync the new Service", func() bool {
			n, err := s.c.KubeProxySyncs(ctx)
			return err == nil && n >= syncs+float64(i+1)
		})
		if err := s.c.Client.CoreV1().Services("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Until(start.Add(2*cluster.SyncPeriod + time.Second)))
	n, _ := s.c.KubeProxySyncs(ctx)
	t.Logf("kube-proxy: restarted, then %v syncs and %s of its canary monitor", n-syncs, time.Since(start).Round(time.Second))
	if got := s.agentRules(t); got != rules {
		t.Errorf("the agent's rules changed across kube-proxy's syncs:\nbefore:\n%s\nafter:\n%s", rules, got)
	}
	after, err := nodesim.Metric(ctx, s.c.Node.NS, agentMetrics, "node_local_coredns_restored_total")
	if err != nil {
		t.Fatal(err)
	}
	if after != restored {
		t.Errorf("the agent restored %v addresses or rules during kube-proxy's syncs, want 0", after-restored)
	}
	for range 10 {
		ask(t, s, "udp", nodesim.KubeDNS, webName, dns.TypeA)
	}
	if ct := s.podDNSConntrack(t); len(ct) != 0 {
		t.Errorf("pods' DNS left %d conntrack entries after kube-proxy's resync, want 0: %v", len(ct), ct)
	}
}

// The readiness probe is true only while the node is served: rules
// removed by someone make it false until the agent's sync puts them back.
func scenarioReadiness(t *testing.T, s *suite) {
	if err := s.probe(t, "readiness"); err != nil {
		t.Fatalf("readiness while served: %v", err)
	}
	tool := "iptables-nft"
	if s.c.Mode == cluster.IptablesLegacy {
		tool = "iptables-legacy"
	}
	native := native(t, s.c.Node)
	restored := func() float64 {
		v, err := nodesim.Metric(t.Context(), s.c.Node.NS, agentMetrics, "node_local_coredns_restored_total")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	// The agent's sync may put the rules back between the flush and the
	// probe (a window of a probe's length in every sync interval): then
	// flush again.
	for attempt := 1; ; attempt++ {
		before := restored()
		args := []string{tool, "-w", "-t", "raw", "-F", "NLCOREDNS-PREROUTING"}
		if native {
			args = []string{"nft", "flush", "chain", "inet", "node-local-coredns", "prerouting"}
		}
		if _, err := s.c.Node.NodeExec(t.Context(), args...); err != nil {
			t.Fatal(err)
		}
		err := s.probe(t, "readiness")
		if err != nil {
			break
		}
		if restored() == before || attempt == 3 {
			t.Fatal("readiness passed with the agent's PREROUTING rules flushed")
		}
	}
	took := eventually(t, 30*time.Second, "readiness after the agent's sync repairs the rules", func() bool { return s.probe(t, "readiness") == nil })
	t.Logf("ready again after %s", took.Round(time.Millisecond))
}

// SIGKILL under load: only queries in flight at the kill fail, pods fall
// back to kube-dns through kube-proxy at once, and the restarted container
// takes them back.
func scenarioSIGKILL(t *testing.T, s *suite) {
	agent := s.agent()
	var (
		k        kill
		st       start
		fellBack atomic.Int64
	)
	rep := s.podLoad(t, 8*time.Second, 5,
		fault{at: 2 * time.Second, do: func(t *testing.T) {
			k.signalled = time.Now()
			if err := agent.Kill(t.Context(), s.env.podman); err != nil {
				t.Fatal(err)
			}
			eventually(t, 10*time.Second, "the agent's container to stop", func() bool { return !agent.Running(t.Context(), s.env.podman) })
			k.gone = time.Now()
		}},
		fault{at: 4 * time.Second, do: func(t *testing.T) {
			// Queries while it is dead went through kube-proxy.
			fellBack.Store(int64(len(s.podDNSConntrack(t))))
			st.begun = time.Now()
			if err := agent.Start(t.Context(), s.env.podman); err != nil {
				t.Fatal(err)
			}
			eventually(t, 30*time.Second, "the restarted agent to serve", func() bool {
				return strings.Count(agent.Logs(t.Context(), s.env.podman), "msg=serving") >= 2
			})
			st.serving = time.Now()
		}})
	if bad := notInFlight(rep, []start{st}, k); len(bad) != 0 {
		t.Errorf("%d failures were not in flight at the kill: %v", len(bad), bad[:min(len(bad), 5)])
	}
	if fellBack.Load() == 0 {
		t.Error("no conntrack entry for pods' DNS while the agent was dead: they did not fall back to kube-proxy's DNAT")
	}
	t.Logf("while dead: %d conntrack entries of pods' DNS (through kube-proxy); %d queries failed, all in flight at the kill", fellBack.Load(), len(rep.Failed()))
	s.assertBackOnAgent(t)
}

// assertBackOnAgent deletes the conntrack entries of the pods' DNS (left
// from a fallback) and checks that new lookups make none.
func (s *suite) assertBackOnAgent(t *testing.T) {
	t.Helper()
	for _, ip := range s.localIPs {
		if _, err := s.c.Node.DeleteConntrackTo(ip); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		ask(t, s, "udp", nodesim.KubeDNS, webName, dns.TypeA)
		ask(t, s, "tcp", nodesim.KubeDNS, webName, dns.TypeA)
	}
	if ct := s.podDNSConntrack(t); len(ct) != 0 {
		t.Errorf("pods' lookups are not back on the agent: %d conntrack entries: %v", len(ct), ct)
	}
}

// A rolling upgrade (maxSurge 1): the new pod starts beside the old one,
// then the old one is stopped: not one lookup lost.
func scenarioRollingUpgrade(t *testing.T, s *suite) {
	old := s.pod
	rep := s.podLoad(t, 10*time.Second, 5, fault{at: 2 * time.Second, do: func(t *testing.T) {
		s.pod = s.startPod(s.t)
		for _, name := range []string{"node-local-coredns", "watchdog"} {
			if err := old.Containers[name].Stop(t.Context(), s.env.podman); err != nil {
				t.Error(err)
			}
		}
		if code, oom, err := old.Containers["node-local-coredns"].ExitCode(t.Context(), s.env.podman); err != nil || code != 0 || oom {
			t.Errorf("the old agent exited %d (OOM killed: %v, %v), want 0", code, oom, err)
		}
	}})
	if f := rep.Failed(); len(f) != 0 {
		t.Errorf("%d lookups failed across the rolling upgrade, want 0: %v", len(f), f[:min(len(f), 5)])
	}
	if err := s.probe(t, "readiness"); err != nil {
		t.Errorf("the new pod is not ready: %v", err)
	}
	s.assertBackOnAgent(t)
}

// A graceful stop of the last pod under load: not one lookup lost, nothing
// left on the node; then a new pod serves again.
func scenarioGracefulStop(t *testing.T, s *suite) {
	rep := s.podLoad(t, 6*time.Second, 5, fault{at: 2 * time.Second, do: func(t *testing.T) {
		for _, name := range []string{"node-local-coredns", "watchdog"} {
			if err := s.pod.Containers[name].Stop(t.Context(), s.env.podman); err != nil {
				t.Error(err)
			}
		}
	}})
	if f := rep.Failed(); len(f) != 0 {
		t.Errorf("%d lookups failed across a graceful stop, want 0: %v", len(f), f[:min(len(f), 5)])
	}
	if rules := s.agentRules(t); rules != "" {
		t.Errorf("rules left after a graceful stop:\n%s", rules)
	}
	if addrs, _ := s.c.Node.Addrs(t.Context(), "nodelocaldns"); addrs != "" {
		t.Errorf("interface left: %q", addrs)
	}
	s.pod = s.startPod(s.t)
	s.assertBackOnAgent(t)
}

// Without NET_RAW the agent cannot read iptables-legacy tables. On a legacy
// node (kube-proxy's tables are there) it says so and stops before it
// touches the node, rather than guess nft, as it once did, putting its
// rules where kube-proxy's are not. On an nft node the legacy backend has
// no tables to read, which it can tell: it picks nft and serves. The
// running pod is stopped first, so that the node is bare.
func scenarioModeDetection(t *testing.T, s *suite) {
	ctx := t.Context()
	for _, name := range []string{"node-local-coredns", "watchdog"} {
		if err := s.pod.Containers[name].Stop(ctx, s.env.podman); err != nil {
			t.Fatal(err)
		}
	}
	ds := s.ds.DeepCopy()
	for i, c := range ds.Spec.Template.Spec.Containers {
		caps := c.SecurityContext.Capabilities
		caps.Add = slices.DeleteFunc(slices.Clone(caps.Add), func(c corev1.Capability) bool { return c == "NET_RAW" })
		ds.Spec.Template.Spec.Containers[i].SecurityContext.Capabilities = caps
	}
	s.pods++
	pod, err := s.c.RunPod(ctx, s.env.podman, ds, testImage, fmt.Sprintf("nlc-%d-no-net-raw", s.pods))
	if err != nil {
		t.Fatal(err)
	}
	agent := pod.Containers["node-local-coredns"]
	if s.c.Mode != cluster.IptablesLegacy {
		if err := agent.WaitLog(ctx, s.env.podman, "msg=serving", 30*time.Second); err != nil {
			t.Fatalf("without NET_RAW on an nft node: %v", err)
		}
		if logs := agent.Logs(ctx, s.env.podman); !strings.Contains(logs, "backend=nftables") {
			t.Errorf("without NET_RAW on an nft node the agent did not pick its nftables table:\n%s", lastLines(logs, 10))
		}
		for _, name := range []string{"node-local-coredns", "watchdog"} {
			if err := pod.Containers[name].Stop(ctx, s.env.podman); err != nil {
				t.Error(err)
			}
		}
		return
	}
	eventually(t, 30*time.Second, "the agent without NET_RAW to exit", func() bool { return !agent.Running(ctx, s.env.podman) })
	code, _, err := agent.ExitCode(ctx, s.env.podman)
	if err != nil {
		t.Fatal(err)
	}
	logs := agent.Logs(ctx, s.env.podman)
	if code == 0 || !strings.Contains(logs, "reading the iptables-legacy rules") || !strings.Contains(logs, "--netfilter") {
		t.Errorf("without NET_RAW: exit %d, want an error naming the unreadable iptables-legacy rules and --netfilter:\n%s", code, lastLines(logs, 10))
	}
	if strings.Contains(logs, "msg=serving") {
		t.Error("the agent served without knowing the node's iptables mode")
	}
	if rules := s.agentRules(t); rules != "" {
		t.Errorf("the agent touched the node's rules:\n%s", rules)
	}
	if addrs, _ := s.c.Node.Addrs(ctx, "nodelocaldns"); addrs != "" {
		t.Errorf("the agent touched the node's interfaces: %q", addrs)
	}
	t.Logf("without NET_RAW: exit %d, %s", code, lastLines(logs, 1))
}

// The capabilities (linux/capability.h) the containers' processes hold.
const (
	capDACReadSearch  = 1 << unix.CAP_DAC_READ_SEARCH
	capNetBindService = 1 << unix.CAP_NET_BIND_SERVICE
	capNetAdmin       = 1 << unix.CAP_NET_ADMIN
	capNetRaw         = 1 << unix.CAP_NET_RAW
)

// checkLeastPrivilege checks that the pod's processes run as the manifests
// say, the way containerd starts them: a non-root user, no_new_privs, the
// bounding set the container's capabilities, and in effect only what each
// process uses itself (the agent NET_ADMIN and NET_BIND_SERVICE, the
// watchdog NET_ADMIN), the tools' capabilities ambient.
func checkLeastPrivilege(t *testing.T, s *suite) {
	t.Helper()
	tools := uint64(capNetAdmin | capNetRaw | capDACReadSearch)
	for name, eff := range map[string]uint64{"node-local-coredns": capNetAdmin | capNetBindService, "watchdog": capNetAdmin} {
		st, err := s.pod.Containers[name].ProcessStatus(t.Context(), s.env.podman)
		if err != nil {
			t.Fatal(err)
		}
		hex := func(k string) uint64 {
			n, err := strconv.ParseUint(st[k], 16, 64)
			if err != nil {
				t.Fatalf("%s: %s %q: %v", name, k, st[k], err)
			}
			return n
		}
		if uids := strings.Fields(st["Uid"]); len(uids) != 4 || slices.Contains(uids, "0") {
			t.Errorf("%s: uids %q, want none of them root", name, st["Uid"])
		}
		if st["NoNewPrivs"] != "1" {
			t.Errorf("%s: NoNewPrivs %q, want 1 (allowPrivilegeEscalation: false)", name, st["NoNewPrivs"])
		}
		if got := hex("CapEff"); got != eff {
			t.Errorf("%s: effective capabilities %#x, want %#x", name, got, eff)
		}
		bnd := hex("CapBnd")
		if got := hex("CapAmb"); got != tools&bnd {
			t.Errorf("%s: ambient capabilities %#x, want the tools' that the container has, %#x", name, got, tools&bnd)
		}
		if got := hex("CapPrm"); got&^(eff|tools) != 0 {
			t.Errorf("%s: permitted capabilities %#x beyond its own and the tools'", name, got)
		}
	}
}
