package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// SyncPeriod is kube-proxy's full-resync period in the cluster, short so
// that a test sees several.
const SyncPeriod = 5 * time.Second

// StartKubeProxy starts kube-proxy on the node in the cluster's mode. In
// iptables mode, the iptables tools of the mode come first in its PATH, as
// a kube-proxy image's wrapper picks them. Its flags keep it from writing
// global sysctls (conntrack sizes, timeouts) or its OOM score, and its
// periodic full resync comes every SyncPeriod.
func (c *Cluster) StartKubeProxy(ctx context.Context) error {
	if c.proxyPath == "" {
		var err error
		if c.proxyPath, err = c.iptablesPath(); err != nil {
			return err
		}
	}
	kc, err := c.pki.kubeconfig("kube-proxy", "https://"+ControlPlaneIP.String()+":6443")
	if err != nil {
		return err
	}
	mode, cidrs := "iptables", clusterCIDRs
	if c.Mode == Nftables {
		mode = "nftables"
	}
	if c.DualStack {
		cidrs += "," + clusterCIDRs6
	}
	// A configuration file: the nftables sync period has no flag.
	conf := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
mode: %s
clusterCIDR: %s
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  syncPeriod: %s
  minSyncPeriod: 1s
nftables:
  syncPeriod: %s
  minSyncPeriod: 1s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
`, kc, c.NodeName, mode, cidrs, SyncPeriod, SyncPeriod)
	path := filepath.Join(c.dir, "kube-proxy.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return err
	}
	p, err := nodesim.Start(c.Node.NS, []string{"PATH=" + c.proxyPath}, c.Components.KubeProxy, "--config", path, "--v", "2")
	if err != nil {
		return err
	}
	c.proxyMu.Lock()
	first := c.proxy == nil
	c.proxy = p
	c.proxyMu.Unlock()
	if first {
		c.onClose(func() error { return c.StopKubeProxy() })
	}
	return nil
}

// StopKubeProxy stops kube-proxy; its rules stay, as on a real node.
func (c *Cluster) StopKubeProxy() error {
	c.proxyMu.Lock()
	p := c.proxy
	c.proxyMu.Unlock()
	if p == nil || p.Exited() {
		return nil
	}
	return stopper("kube-proxy", p)()
}

// RestartKubeProxy stops kube-proxy and starts it again (a full resync of
// every rule it owns), and waits until it reports a sync after the start.
func (c *Cluster) RestartKubeProxy(ctx context.Context) error {
	if err := c.StopKubeProxy(); err != nil {
		return err
	}
	start := time.Now()
	if err := c.StartKubeProxy(ctx); err != nil {
		return err
	}
	return c.WaitKubeProxySync(ctx, start)
}

// KubeProxyOutput is what kube-proxy logged since it last started.
func (c *Cluster) KubeProxyOutput() string {
	c.proxyMu.Lock()
	defer c.proxyMu.Unlock()
	return c.proxy.Output()
}

// WaitKubeProxySync waits until kube-proxy's last successful sync is after
// since (its sync_proxy_rules_last_timestamp_seconds metric).
func (c *Cluster) WaitKubeProxySync(ctx context.Context, since time.Time) error {
	return poll(ctx, 60*time.Second, "kube-proxy to sync", func() error {
		if err := c.componentsRunning(); err != nil {
			return errStopped(err)
		}
		v, err := nodesim.Metric(ctx, c.Node.NS, "http://127.0.0.1:10249/metrics", "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
		if err != nil {
			return err
		}
		if last := time.Unix(int64(v), 0); !last.After(since) {
			return fmt.Errorf("last sync at %s", last)
		}
		return nil
	})
}

// KubeProxySyncs returns how many times kube-proxy has synced its rules
// since it started.
func (c *Cluster) KubeProxySyncs(ctx context.Context) (float64, error) {
	return nodesim.Metric(ctx, c.Node.NS, "http://127.0.0.1:10249/metrics", "kubeproxy_sync_proxy_rules_duration_seconds")
}

// iptablesPath returns a PATH whose first directory holds the iptables
// tools of the cluster's iptables mode (as iptables, iptables-save, ...).
func (c *Cluster) iptablesPath() (string, error) {
	multi := "xtables-nft-multi"
	if c.Mode == IptablesLegacy {
		multi = "xtables-legacy-multi"
	}
	target, err := lookPath(multi)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(c.dir, "iptables-"+c.Mode)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			if err := os.Symlink(target, filepath.Join(dir, fam+suffix)); err != nil {
				return "", err
			}
		}
	}
	return dir + ":" + os.Getenv("PATH"), nil
}

func lookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("finding %s: %w (install the iptables package)", name, err)
	}
	return p, nil
}
