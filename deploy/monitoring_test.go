package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

const (
	alertsFile    = chartDir + "/files/alerts.yaml"
	dashboardFile = chartDir + "/files/dashboard.json"
	alertsTest    = "monitoring/alerts-test.yaml"
	componentDir  = "kustomize/components/monitoring"
)

// monitoringOn turns on the chart's three monitoring objects.
var monitoringOn = map[string]any{
	"podMonitor":       map[string]any{"enabled": true},
	"prometheusRule":   map[string]any{"enabled": true},
	"grafanaDashboard": map[string]any{"enabled": true},
}

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

func readAlerts(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	return f
}

func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("NODESIM_REQUIRED") != "" {
			t.Fatal("promtool is needed (make test installs Debian's prometheus package)")
		}
		t.Skip("promtool not installed (apt-get install prometheus)")
	}
	return p
}

// TestAlertRules: promtool accepts the rules and passes their unit tests;
// every alert has a severity, a summary, a description and a runbook
// section in docs/operations.md, and a unit test in which it fires and
// one in which it does not.
func TestAlertRules(t *testing.T) {
	tool := promtool(t)
	for _, args := range [][]string{{"check", "rules", alertsFile}, {"test", "rules", alertsTest}} {
		out, err := exec.Command(tool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ops, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^#+ (.+)$`).FindAllStringSubmatch(string(ops), -1) {
		anchors[githubAnchor(m[1])] = true
	}
	b, err := os.ReadFile(alertsTest)
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(b, &tests); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	n := 0
	for _, g := range readAlerts(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[a] == "" {
					t.Errorf("%s: no %s", r.Alert, a)
				}
			}
			anchor := strings.ToLower(r.Alert)
			if want := "/docs/operations.md#" + anchor; !strings.HasSuffix(r.Annotations["runbook_url"], want) || !anchors[anchor] {
				t.Errorf("%s: runbook %q, want one ending in %s, a section of docs/operations.md", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("%s: %s needs a test in which it fires (%v) and one in which it does not (%v)", r.Alert, alertsTest, fires[r.Alert], quiet[r.Alert])
			}
		}
	}
	if n < 8 {
		t.Errorf("%d alerts, want those docs/operations.md describes", n)
	}
}

// githubAnchor is the anchor GitHub gives a heading.
func githubAnchor(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	h = regexp.MustCompile(`[^a-z0-9 _-]`).ReplaceAllString(h, "")
	return strings.ReplaceAll(h, " ", "-")
}

// TestMonitoring: the chart renders the PodMonitor, the PrometheusRule and
// the dashboard's ConfigMap only when asked; the rule holds the alerts of
// files/alerts.yaml, the ConfigMap the dashboard, labelled for Grafana's
// sidecar; the PodMonitor scrapes ports the DaemonSet declares, as the jobs
// the alerts and the dashboard select; and helm lint stays clean.
func TestMonitoring(t *testing.T) {
	off := objects(t, joined(renderHelm(t, nil)))
	for _, k := range []string{"PodMonitor/node-local-coredns", "PrometheusRule/node-local-coredns", "ConfigMap/node-local-coredns-dashboard"} {
		if off[k] != nil {
			t.Errorf("%s rendered with the default values", k)
		}
	}
	objs := objects(t, joined(renderHelm(t, monitoringOn)))

	rule, _ := objs["PrometheusRule/node-local-coredns"].(map[string]any)
	var want map[string]any
	b, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	if rule == nil || !reflect.DeepEqual(rule["spec"], want) {
		t.Errorf("the PrometheusRule's spec is not files/alerts.yaml: %v", rule)
	}

	cm, _ := objs["ConfigMap/node-local-coredns-dashboard"].(*corev1.ConfigMap)
	dash, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if cm == nil || strings.TrimSpace(cm.Data["node-local-coredns.json"]) != strings.TrimSpace(string(dash)) || cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("the dashboard's ConfigMap does not hold files/dashboard.json with the label grafana_dashboard: \"1\": %v", cm)
	}
	var d map[string]any
	if err := json.Unmarshal(dash, &d); err != nil || d["panels"] == nil {
		t.Errorf("files/dashboard.json is not a dashboard: %v", err)
	}

	ds := objs["DaemonSet/node-local-coredns"].(*appsv1.DaemonSet)
	ports := map[string]bool{}
	for _, c := range ds.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			ports[p.Name] = true
			// The API server refuses a name longer than 15 characters.
			if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
				t.Errorf("container %s: port name %q: %v", c.Name, p.Name, errs)
			}
		}
	}
	pm, _ := objs["PodMonitor/node-local-coredns"].(map[string]any)
	var spec struct {
		Endpoints []struct {
			Port        string `json:"port"`
			Relabelings []struct {
				TargetLabel string `json:"targetLabel"`
				Replacement string `json:"replacement"`
			} `json:"relabelings"`
		} `json:"podMetricsEndpoints"`
	}
	raw, _ := json.Marshal(pm["spec"])
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	jobs := map[string]bool{}
	for _, e := range spec.Endpoints {
		if !ports[e.Port] {
			t.Errorf("the PodMonitor scrapes port %q, which no container declares", e.Port)
		}
		for _, r := range e.Relabelings {
			if r.TargetLabel == "job" {
				jobs[r.Replacement] = true
			}
		}
	}
	used := regexp.MustCompile(`job=~?"([^"$]+)"`).FindAllStringSubmatch(string(b)+string(dash), -1)
	for _, m := range used {
		if !jobs[m[1]] {
			t.Errorf("the alerts or the dashboard select job %q, which the PodMonitor does not set (it sets %v)", m[1], jobs)
		}
	}
	if len(jobs) != 2 {
		t.Errorf("the PodMonitor sets jobs %v, want the agent's and the watchdog's", jobs)
	}

	lint := action.NewLint()
	lint.Strict = true
	res := lint.Run([]string{chartDir}, monitoringOn)
	for _, m := range res.Messages {
		if m.Severity >= support.WarningSev {
			t.Errorf("helm lint with monitoring on: %s", m)
		}
	}
}

// TestMonitoringComponent: the kustomize component
// (deploy/kustomize/components/monitoring) on top of the base renders the
// same objects as the chart with monitoring on.
func TestMonitoringComponent(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		if os.Getenv("NODESIM_REQUIRED") != "" {
			t.Fatal("kubectl is needed to render the kustomize base")
		}
		t.Skip("kubectl not installed: cannot render the kustomize base")
	}
	if *update {
		writeComponent(t)
	}
	overlay := t.TempDir()
	base, _ := filepath.Abs("kustomize")
	comp, _ := filepath.Abs(componentDir)
	rel := func(p string) string {
		r, err := filepath.Rel(overlay, p)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - " + rel(base) + "\ncomponents:\n  - " + rel(comp) + "\n"
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(kubectl, "kustomize", overlay).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	want := canonical(t, objects(t, joined(renderHelm(t, monitoringOn))))
	if got := canonical(t, objects(t, string(out))); got != want {
		t.Errorf("the base with the monitoring component renders other objects than the chart with monitoring on (go test ./deploy -update rewrites it)")
	}
}

// writeComponent writes the chart's monitoring objects as the kustomize
// component.
func writeComponent(t *testing.T) {
	t.Helper()
	if err := os.MkdirAll(componentDir, 0o755); err != nil {
		t.Fatal(err)
	}
	docs := renderHelm(t, monitoringOn)
	var names []string
	for _, n := range []string{"dashboard.yaml", "podmonitor.yaml", "prometheusrule.yaml"} {
		if err := os.WriteFile(filepath.Join(componentDir, n), []byte("# Generated from helm/node-local-coredns by go test ./deploy -update; do not edit.\n"+strings.TrimSpace(docs[n])+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, "  - "+n)
	}
	k := "# Monitoring for the node-local-coredns base (docs/operations.md):\n#   components: [<path to deploy/kustomize/components/monitoring>]\napiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources:\n" + strings.Join(names, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(componentDir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
}
