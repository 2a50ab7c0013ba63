package e2e

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/node-local-coredns/node-local-coredns/deploy"
	"github.com/node-local-coredns/node-local-coredns/test/cluster"
	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// The image the cluster tests run: make image writes the archive, the test
// loads it under this name.
const (
	testImage      = "localhost/node-local-coredns:cluster-test"
	defaultArchive = "../../bin/node-local-coredns-image.tar"
	// testImageNFT is the variant with the binary alone, from the archive
	// beside the image's (-nftables.tar).
	testImageNFT = "localhost/node-local-coredns:cluster-test-nftables"
)

// clusterEnv is what every TestCluster subtest shares: the components and
// the image.
type clusterEnv struct {
	comps  cluster.Components
	podman cluster.Podman
}

// setupClusterEnv builds (or finds cached) the real components and loads the
// image, or skips t (fails it when NODESIM_REQUIRED is set) where the
// cluster cannot run here.
func setupClusterEnv(t *testing.T) *clusterEnv {
	t.Helper()
	why := nodesim.Supported()
	if why == "" {
		for _, tool := range []string{"podman", "runc", "nft", "go"} {
			if _, err := exec.LookPath(tool); err != nil {
				why = "the cluster tests need " + tool + " (make test installs it)"
			}
		}
	}
	archive := os.Getenv("NLC_IMAGE_ARCHIVE")
	if archive == "" {
		archive = defaultArchive
	}
	if why == "" {
		if _, err := os.Stat(archive); err != nil {
			why = "the cluster tests need the image archive (make image writes it): " + err.Error()
		}
	}
	if why != "" {
		if os.Getenv("NODESIM_REQUIRED") != "" {
			t.Fatalf("NODESIM_REQUIRED is set but %s", why)
		}
		t.Skipf("skipping the cluster tests: %s", why)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	comps, err := cluster.Build(ctx, filepath.Join("..", "cluster", cluster.ComponentsDir), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("components: %s", comps)
	conf, err := filepath.Abs("../../image/containers.conf")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	hooks, err := cluster.WriteHooks(filepath.Join(t.TempDir(), "hooks"), exe)
	if err != nil {
		t.Fatal(err)
	}
	pm := cluster.Podman{Conf: conf, HooksDir: hooks}
	if err := pm.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pm.LoadImage(ctx, archive, testImage); err != nil {
		t.Fatal(err)
	}
	t.Logf("image: %s from %s", testImage, archive)
	static := strings.TrimSuffix(archive, ".tar") + "-nftables.tar"
	if err := pm.LoadImage(ctx, static, testImageNFT); err != nil {
		t.Fatal(err)
	}
	t.Logf("image: %s from %s", testImageNFT, static)
	return &clusterEnv{comps: comps, podman: pm}
}

// testWriter sends the harness's log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// newCluster builds a cluster for t and removes it when t ends.
func newCluster(t *testing.T, env *clusterEnv, o cluster.Options) *cluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	o.Log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	start := time.Now()
	c, err := cluster.New(ctx, env.comps, o)
	if err != nil {
		t.Fatalf("building the cluster: %v", err)
	}
	t.Logf("cluster (kube-proxy %s mode) up in %s", o.Mode, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-proxy's log:\n%s", lastLines(c.KubeProxyOutput(), 30))
			for _, d := range c.CoreDNS {
				t.Logf("%s's log:\n%s", d.Name, lastLines(d.Output(), 15))
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("removing the cluster: %v", err)
		}
	})
	return c
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// renderings are the project's three renderings of its manifests: the
// pre-rendered file, the Helm chart and the kustomize base.
func renderings(t *testing.T) map[string][]byte {
	t.Helper()
	pre, err := os.ReadFile("../../deploy/node-local-coredns.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := deploy.RenderHelm("../../deploy/helm/node-local-coredns", nil)
	if err != nil {
		t.Fatal(err)
	}
	var helm strings.Builder
	for _, d := range docs {
		helm.WriteString("---\n" + d + "\n")
	}
	kust, err := exec.Command("kubectl", "kustomize", "../../deploy/kustomize").Output()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v", err)
	}
	return map[string][]byte{"deploy/node-local-coredns.yaml": pre, "helm": []byte(helm.String()), "kustomize": kust}
}

// applyManifests server-side applies every rendering of the manifests to
// the cluster's API server and returns the DaemonSet as the API server
// stored it (defaults filled in).
func applyManifests(t *testing.T, c *cluster.Cluster) *appsv1.DaemonSet {
	t.Helper()
	ctx := t.Context()
	for name, m := range renderings(t) {
		objs, err := c.ApplyManifests(ctx, m)
		if err != nil {
			t.Fatalf("applying %s: %v", name, err)
		}
		var kinds []string
		for _, o := range objs {
			kinds = append(kinds, o.GetKind()+"/"+o.GetName())
		}
		t.Logf("applied %s: %s", name, strings.Join(kinds, ", "))
	}
	if err := c.SyncEndpointSlices(ctx); err != nil {
		t.Fatal(err)
	}
	u, err := c.Client.AppsV1().DaemonSets("kube-system").Get(ctx, "node-local-coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := c.Client.CoreV1().Services("kube-system").Get(ctx, "node-local-coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == "None" {
		t.Fatalf("the node-local-coredns Service has no ClusterIP: %q", svc.Spec.ClusterIP)
	}
	t.Logf("the API server gave the node-local-coredns Service %v", svc.Spec.ClusterIPs)
	for _, ip := range svc.Spec.ClusterIPs {
		if err := c.WaitService(ctx, netip.MustParseAddr(ip)); err != nil {
			t.Fatal(err)
		}
	}
	return u
}

// runPod runs the DaemonSet's pod from the image as name and waits until
// its agent serves; when t fails, its containers' logs are shown.
func runPod(t *testing.T, c *cluster.Cluster, env *clusterEnv, ds *appsv1.DaemonSet, name string) *cluster.Pod {
	t.Helper()
	pod, err := c.RunPod(t.Context(), env.podman, ds, testImage, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, ct := range pod.Containers {
				t.Logf("log of %s:\n%s", ct.Name, lastLines(ct.Logs(context.Background(), env.podman), 40))
			}
		}
	})
	if err := pod.Containers["node-local-coredns"].WaitLog(t.Context(), env.podman, "msg=serving", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return pod
}

// TestCluster runs the agent and watchdog from the image, as the
// DaemonSet's pod, on a cluster of real components, once per kube-proxy
// mode, through every scenario of docs/compatibility.md.
func TestCluster(t *testing.T) {
	env := setupClusterEnv(t)
	for _, mode := range cluster.Modes {
		t.Run(mode, func(t *testing.T) {
			s := newSuite(t, env, cluster.Options{Mode: mode, DualStack: mode == cluster.Nftables, Endpoints: clusterEndpoints + 1, Standby: 1})
			for _, sc := range clusterScenarios {
				if !t.Run(sc.name, func(t *testing.T) { sc.run(t, s) }) {
					// Later scenarios start from the state an earlier
					// one leaves; one failure ends the mode.
					return
				}
			}
		})
	}
}
