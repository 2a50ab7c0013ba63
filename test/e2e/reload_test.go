package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/internal/corefile"
	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

// configMap is a directory laid out as kubelet mounts a ConfigMap: the file
// is a symlink through ..data, and an update swaps ..data atomically.
type configMap struct {
	dir string
	gen int
}

func (c *configMap) write(t *testing.T, content string) {
	t.Helper()
	c.gen++
	ts := filepath.Join(c.dir, fmt.Sprintf("..gen%d", c.gen))
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "Corefile"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(c.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(c.dir, "Corefile")
	if _, err := os.Lstat(link); os.IsNotExist(err) {
		if err := os.Symlink("..data/Corefile", link); err != nil {
			t.Fatal(err)
		}
	}
}

// A changed Corefile template is rendered and reloaded in-process; a broken
// one is refused with a log line and a metric while the running
// configuration keeps serving.
func TestCorefileTemplateReload(t *testing.T) {
	n := newNode(t, nodesim.Options{Pods: 1})
	pod := n.Pods[0]
	cm := &configMap{dir: t.TempDir()}
	cm.write(t, corefile.Default)
	a := startAgent(t, n, "--corefile="+filepath.Join(cm.dir, "Corefile"), "--reload-interval=2s", "--metrics-addr=127.0.0.1:9253")

	const probe = "reload-probe.cluster.local"
	if r, _, err := pod.Query("udp", nodesim.KubeDNS, probe, dns.TypeA); err != nil || r.Rcode != dns.RcodeNameError {
		t.Fatalf("before the change want NXDOMAIN for %s, got %v %v", probe, r, err)
	}
	// A new version that answers the probe name from a hosts block.
	changed := strings.Replace(corefile.Default, "    errors\n", "    errors\n    hosts {\n        10.1.2.3 "+probe+"\n        fallthrough\n    }\n", 1)
	cm.write(t, changed)
	took := eventually(t, 10*time.Second, "reloaded template answers the probe", func() bool {
		r, _, err := pod.Query("udp", nodesim.KubeDNS, probe, dns.TypeA)
		return err == nil && len(r.Answer) == 1 && strings.Contains(r.Answer[0].String(), "10.1.2.3")
	})
	t.Logf("reloaded in %s", took.Round(time.Millisecond))

	cm.write(t, changed+"\n{{ .NoSuchValue }}\n")
	eventually(t, 10*time.Second, "broken template refused", func() bool {
		return strings.Contains(a.Output(), "refusing Corefile template")
	})
	if got := metricValue(t, n, "node_local_coredns_corefile_errors_total"); got != 1 {
		t.Errorf("corefile errors metric: %v, want 1", got)
	}
	r, _, err := pod.Query("udp", nodesim.KubeDNS, probe, dns.TypeA)
	if err != nil || len(r.Answer) != 1 {
		t.Errorf("after a broken template the running configuration stopped answering: %v %v", r, err)
	}
	// Two more reload intervals: the same broken content is not logged again.
	time.Sleep(4500 * time.Millisecond)
	if strings.Count(a.Output(), "refusing Corefile template") != 1 {
		t.Errorf("the broken template was logged more than once:\n%s", a.Output())
	}
}
