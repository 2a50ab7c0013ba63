package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/node-local-coredns/node-local-coredns/internal/corefile"
	"github.com/node-local-coredns/node-local-coredns/test/nodesim"
)

const (
	alertsFile    = "../../deploy/helm/node-local-coredns/files/alerts.yaml"
	dashboardFile = "../../deploy/helm/node-local-coredns/files/dashboard.json"
	promAddr      = "127.0.0.1:9090"
)

// Windows and durations of the alerts, shortened for the test: what
// minutes of a real node show, seconds of a simulated one show too. The
// expressions are the chart's; promtool's unit tests check them at their
// real durations.
var (
	forDuration = regexp.MustCompile(`(?m)^(\s+for:) \S+$`)
	rangeWindow = regexp.MustCompile(`\[(\d+[smh])\]`)
)

func shortened(rules string) string {
	rules = forDuration.ReplaceAllString(rules, "$1 3s")
	return rangeWindow.ReplaceAllString(rules, "[20s]")
}

// prometheus runs Debian's Prometheus in the node's namespace, scraping the
// agent (job node-local-coredns, as the chart's PodMonitor names it) and
// the watchdog (node-local-coredns-watchdog) every second and evaluating
// the chart's alerts every second.
func startPrometheus(t *testing.T, n *nodesim.Node) *nodesim.Agent {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is needed (make test installs Debian's prometheus package)")
	}
	dir := t.TempDir()
	rules, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts.yaml"), []byte(shortened(string(rules))), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := `global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files: [alerts.yaml]
scrape_configs:
  - job_name: node-local-coredns
    static_configs: [{targets: ["127.0.0.1:9253"]}]
  - job_name: node-local-coredns-watchdog
    static_configs: [{targets: ["127.0.0.1:9254"]}]
`
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := nodesim.Start(n.NS, nil, bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr, "--log.level=warn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if code, err := p.Stop(10 * time.Second); err != nil || t.Failed() {
			t.Logf("prometheus: exit %d %v:\n%s", code, err, lastLines(p.Output(), 20))
		}
	})
	out, _ := exec.Command(bin, "--version").CombinedOutput()
	t.Logf("%s", strings.SplitN(string(out), "\n", 2)[0])
	return p
}

// promGet asks Prometheus's HTTP API in the node's namespace.
func promGet(t *testing.T, n *nodesim.Node, path string, q url.Values, v any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	body, err := nodesim.Get(ctx, n.NS, "http://"+promAddr+path+"?"+q.Encode())
	if err != nil {
		return err
	}
	var resp struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return fmt.Errorf("decoding %s: %w", path, err)
	}
	if resp.Status != "success" {
		return fmt.Errorf("%s: %s", path, body)
	}
	return json.Unmarshal(resp.Data, v)
}

// firing returns the alerts Prometheus has firing, by name.
func firing(t *testing.T, n *nodesim.Node) map[string]bool {
	t.Helper()
	var data struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	if err := promGet(t, n, "/api/v1/alerts", nil, &data); err != nil {
		t.Logf("reading alerts: %v", err)
		return nil
	}
	out := map[string]bool{}
	for _, a := range data.Alerts {
		if a.State == "firing" {
			out[a.Labels["alertname"]] = true
		}
	}
	return out
}

// waitAlert waits until alert is firing (or, with fire false, is not), and
// returns how long that took.
func waitAlert(t *testing.T, n *nodesim.Node, alert string, fire bool, timeout time.Duration) time.Duration {
	t.Helper()
	what := map[bool]string{true: "firing", false: "resolved"}[fire]
	return eventually(t, timeout, alert+" "+what, func() bool { return firing(t, n)[alert] == fire })
}

// TestPrometheusAlerts: a real Prometheus scrapes the agent and the
// watchdog on the simulated node with the chart's alerts, while the faults
// happen: the rules removed again and again, kube-dns down, a Corefile
// template refused, the agent hung (and fenced by the watchdog), the agent
// killed. Each fault's alert is
// seen firing through Prometheus's API, then resolving once the fault is
// over; none fires on the healthy node. Every metric the alerts and the
// dashboard use is one the agent or the watchdog exports.
func TestPrometheusAlerts(t *testing.T) {
	// A 1 s TTL (cached for the cache's 5 s minimum): cached names expire
	// while kube-dns is down and are served stale.
	n := newNode(t, nodesim.Options{TTL: 1})
	pod := n.Pods[0]
	// The Corefile template as a ConfigMap volume holds it.
	cm := &configMap{dir: t.TempDir()}
	cm.write(t, corefile.Default)
	args := []string{"--sync-interval=1s", "--corefile=" + filepath.Join(cm.dir, "Corefile"), "--reload-interval=2s"}
	agent := startAgent(t, n, args...)
	startWatchdog(t, n)
	startPrometheus(t, n)
	eventually(t, 30*time.Second, "Prometheus scraping the agent and the watchdog", func() bool {
		var res struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		}
		err := promGet(t, n, "/api/v1/query", url.Values{"query": {`sum(up{job=~"node-local-coredns|node-local-coredns-watchdog"})`}}, &res)
		return err == nil && len(res.Result) == 1 && res.Result[0].Value[1] == "2"
	})
	// The names the kube-dns-down load cycles through (HitNames 4), cached
	// before kube-dns goes.
	for i := range 20 {
		resolve(t, pod, "udp", nodesim.KubeDNS, fmt.Sprintf("hit-%d.default.svc.cluster.local", i%4), dns.TypeA)
	}
	// Healthy: nothing fires (the alerts' shortened windows are full).
	time.Sleep(22 * time.Second)
	if f := firing(t, n); len(f) != 0 {
		t.Fatalf("alerts firing on a healthy node: %v", f)
	}

	t.Run("rules removed again and again", func(t *testing.T) {
		for range 5 {
			removeDiversion(t, n)
			time.Sleep(1500 * time.Millisecond)
		}
		t.Logf("NodeLocalCoreDNSRulesRestored firing %s after the last removal", waitAlert(t, n, "NodeLocalCoreDNSRulesRestored", true, 20*time.Second).Round(time.Second))
		t.Logf("resolved after %s", waitAlert(t, n, "NodeLocalCoreDNSRulesRestored", false, 60*time.Second).Round(time.Second))
	})

	t.Run("kube-dns down", func(t *testing.T) {
		for _, e := range n.Endpoints {
			e.DNS.SetDown(true)
		}
		ctx, stop := context.WithCancel(t.Context())
		done := make(chan *nodesim.Report, 1)
		go func() {
			spec := nodesim.LoadSpec{Server: nodesim.KubeDNS, Rate: 40, Duration: 100 * time.Second, HitNames: 4, MissEvery: 2, Timeout: 3 * time.Second, Workers: 32}
			done <- n.Load(ctx, spec)
		}()
		up := func() {
			for _, e := range n.Endpoints {
				e.DNS.SetDown(false)
			}
		}
		defer up()
		for _, a := range []string{"NodeLocalCoreDNSServfailRatioHigh", "NodeLocalCoreDNSServingStale"} {
			t.Logf("%s firing after %s", a, waitAlert(t, n, a, true, 70*time.Second).Round(time.Second))
		}
		up()
		stop()
		t.Logf("load while kube-dns was down: %s", (<-done).Summary())
		for range 20 {
			resolve(t, pod, "udp", nodesim.KubeDNS, "back.default.svc.cluster.local", dns.TypeA)
		}
		for _, a := range []string{"NodeLocalCoreDNSServfailRatioHigh", "NodeLocalCoreDNSServingStale"} {
			t.Logf("%s resolved after %s", a, waitAlert(t, n, a, false, 60*time.Second).Round(time.Second))
		}
	})

	t.Run("Corefile rejected", func(t *testing.T) {
		cm.write(t, corefile.Default+"\n{{ .NoSuchValue }}\n")
		t.Logf("NodeLocalCoreDNSCorefileRejected firing after %s", waitAlert(t, n, "NodeLocalCoreDNSCorefileRejected", true, 30*time.Second).Round(time.Second))
		cm.write(t, corefile.Default)
		t.Logf("resolved after %s", waitAlert(t, n, "NodeLocalCoreDNSCorefileRejected", false, 60*time.Second).Round(time.Second))
	})

	t.Run("agent hung", func(t *testing.T) {
		if err := agent.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		cont := func() { _ = agent.Signal(syscall.SIGCONT) }
		defer cont()
		t.Logf("NodeLocalCoreDNSFenced firing after %s", waitAlert(t, n, "NodeLocalCoreDNSFenced", true, 30*time.Second).Round(time.Second))
		cont()
		t.Logf("resolved after %s", waitAlert(t, n, "NodeLocalCoreDNSFenced", false, 30*time.Second).Round(time.Second))
		waitAlert(t, n, "NodeLocalCoreDNSDown", false, 30*time.Second)
	})

	t.Run("agent killed", func(t *testing.T) {
		if err := agent.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		t.Logf("NodeLocalCoreDNSDown firing after %s", waitAlert(t, n, "NodeLocalCoreDNSDown", true, 30*time.Second).Round(time.Second))
		// The gated rules left behind send the pods to kube-dns meanwhile.
		resolve(t, pod, "udp", nodesim.KubeDNS, "killed.default.svc.cluster.local", dns.TypeA)
		startAgent(t, n, args...)
		t.Logf("resolved after %s", waitAlert(t, n, "NodeLocalCoreDNSDown", false, 30*time.Second).Round(time.Second))
	})

	t.Run("metrics exist", func(t *testing.T) {
		var names []string
		if err := promGet(t, n, "/api/v1/label/__name__/values", nil, &names); err != nil {
			t.Fatal(err)
		}
		for _, m := range usedMetrics(t) {
			if !slices.Contains(names, m) {
				t.Errorf("the alerts or the dashboard use %s, which neither the agent nor the watchdog exported", m)
			}
		}
	})
}

// usedMetrics returns the metric names the chart's alerts and dashboard
// read.
func usedMetrics(t *testing.T) []string {
	t.Helper()
	var text string
	for _, f := range []string{alertsFile, dashboardFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text += string(b)
	}
	set := map[string]bool{}
	for _, m := range regexp.MustCompile(`\b(?:node_local_coredns|coredns|process|go)_[a-z0-9_]+|\bup\b`).FindAllString(text, -1) {
		set[m] = true
	}
	var out []string
	for m := range set {
		out = append(out, m)
	}
	sort.Strings(out)
	if len(out) < 10 {
		t.Fatalf("found only %v in the alerts and the dashboard", out)
	}
	return out
}
