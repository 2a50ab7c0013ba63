package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// CoreDNS is one kube-dns endpoint: the real CoreDNS serving the cluster
// domain from the API server, in one of the node's endpoint namespaces.
type CoreDNS struct {
	Name     string
	Endpoint *nodesim.Endpoint
	conf     string
	binary   string
	proc     *nodesim.Agent
	removed  atomic.Bool
}

// corefile is kube-dns's Corefile: CoreDNS's kubernetes plugin, as a
// cluster's CoreDNS runs it, without forwarding (nothing outside the
// sandbox is reachable) and without a cache (so that what the test changes
// in the API server shows in kube-dns's next answer).
const corefile = `.:53 {
    errors
    health :8080
    ready :8181
    prometheus :9153
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %s test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    template IN A example.org {
        answer "{{ .Name }} 60 IN A 192.0.2.1"
    }
    template IN AAAA example.org {
        answer "{{ .Name }} 60 IN AAAA 2001:db8::1"
    }
    loadbalance
}
`

// startCoreDNS starts a CoreDNS in every endpoint namespace, then writes
// the kube-dns EndpointSlices.
func (c *Cluster) startCoreDNS(ctx context.Context) error {
	// The kubernetes Service's ClusterIP, as a pod reaches the API server.
	kc, err := c.pki.kubeconfig("coredns", "https://"+net.JoinHostPort(KubernetesIP.String(), "443"))
	if err != nil {
		return err
	}
	conf := filepath.Join(c.dir, "Corefile")
	if err := os.WriteFile(conf, fmt.Appendf(nil, corefile, kc), 0o644); err != nil {
		return err
	}
	for i, e := range c.Node.Endpoints {
		d := &CoreDNS{Name: fmt.Sprintf("coredns-%d", i+1), Endpoint: e, conf: conf, binary: c.Components.CoreDNS}
		d.removed.Store(i >= len(c.Node.Endpoints)-c.Standby)
		c.CoreDNS = append(c.CoreDNS, d)
		if err := d.Start(); err != nil {
			return err
		}
		c.onClose(d.Stop)
	}
	return c.SyncEndpointSlices(ctx)
}

// Start starts the CoreDNS process (again, after Stop).
func (d *CoreDNS) Start() error {
	p, err := nodesim.Start(d.Endpoint.NS, nil, d.binary, "-conf", d.conf)
	if err != nil {
		return err
	}
	d.proc = p
	return nil
}

// Stop stops the CoreDNS process.
func (d *CoreDNS) Stop() error {
	if d.proc == nil {
		return nil
	}
	return stopper(d.Name, d.proc)()
}

// WaitReady waits until CoreDNS's ready endpoint says it has synced with
// the API server.
func (d *CoreDNS) WaitReady(ctx context.Context) error {
	return poll(ctx, 60*time.Second, d.Name+" to be ready", func() error {
		if d.proc.Exited() {
			return errStopped(fmt.Errorf("%s exited: %s", d.Name, tail(d.proc.Output())))
		}
		_, err := nodesim.Get(ctx, d.Endpoint.NS, "http://127.0.0.1:8181/ready")
		return err
	})
}

// Requests is CoreDNS's count of the queries it was sent (its prometheus
// plugin's coredns_dns_requests_total).
func (d *CoreDNS) Requests(ctx context.Context) (float64, error) {
	return nodesim.Metric(ctx, d.Endpoint.NS, "http://127.0.0.1:9153/metrics", "coredns_dns_requests_total")
}

// SetSilent makes the endpoint's namespace drop every packet it receives
// (true), as when its node is gone but it is still listed, or take the
// drop away.
func (d *CoreDNS) SetSilent(ctx context.Context, silent bool) error {
	args := []string{"netns", "exec", d.Endpoint.NS, "nft", "add table inet silent; add chain inet silent input { type filter hook input priority 0; policy drop; }"}
	if !silent {
		args[len(args)-1] = "delete table inet silent"
	}
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: nft: %w: %s", d.Name, err, out)
	}
	return nil
}

// Overload stalls CoreDNS for stall at a time, with a moment to run in
// between (SIGSTOP, SIGCONT after stall, SIGSTOP 10 ms later), as a
// CoreDNS starved of CPU answers in bursts: a query waits up to stall.
// The returned function ends it, leaving CoreDNS running; it ends by itself
// after at most limit.
func (d *CoreDNS) Overload(stall, limit time.Duration) (end func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		defer d.proc.Signal(syscall.SIGCONT) //nolint:errcheck // it may have exited
		deadline := time.After(limit)
		for {
			if err := d.proc.Signal(syscall.SIGSTOP); err != nil {
				return
			}
			select {
			case <-done:
				return
			case <-deadline:
				return
			case <-time.After(stall):
			}
			if err := d.proc.Signal(syscall.SIGCONT); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		<-stopped
	}
}

// Output is what CoreDNS logged.
func (d *CoreDNS) Output() string { return d.proc.Output() }

// RemoveEndpoint takes endpoint i out of the kube-dns EndpointSlices
// (neither ready nor serving, as for a terminating pod) without stopping it.
func (c *Cluster) RemoveEndpoint(ctx context.Context, i int) error {
	c.CoreDNS[i].removed.Store(true)
	return c.SyncEndpointSlices(ctx)
}

// RestoreEndpoint puts endpoint i back into the EndpointSlices.
func (c *Cluster) RestoreEndpoint(ctx context.Context, i int) error {
	c.CoreDNS[i].removed.Store(false)
	return c.SyncEndpointSlices(ctx)
}

// applyCoreDNSRBAC gives CoreDNS's user what CoreDNS's own manifest gives
// its service account.
func (c *Cluster) applyCoreDNSRBAC(ctx context.Context) error {
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:coredns"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "coredns", Namespace: "kube-system"}},
	}
	if err := c.apply(ctx, role); err != nil {
		return err
	}
	return c.apply(ctx, binding)
}
