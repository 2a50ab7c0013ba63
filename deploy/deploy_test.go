package deploy

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/node-local-coredns/node-local-coredns/internal/corefile"
)

var update = flag.Bool("update", false, "rewrite node-local-coredns.yaml, kustomize/ and the chart's Corefile from the chart")

const chartDir = "helm/node-local-coredns"

// renderHelm renders the chart with values, as helm template does, and
// returns the documents by template name.
func renderHelm(t *testing.T, values map[string]any) map[string]string {
	t.Helper()
	docs, err := RenderHelm(chartDir, values)
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

// joined renders the chart's documents as one stream in a fixed order.
func joined(docs map[string]string) string {
	names := make([]string, 0, len(docs))
	for n := range docs {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", n, strings.TrimSpace(docs[n]))
	}
	return b.String()
}

// objects decodes a YAML stream strictly into the k8s.io/api types and
// returns them by kind/name, each re-encoded canonically.
func objects(t *testing.T, stream string) map[string]any {
	t.Helper()
	out := map[string]any{}
	for _, doc := range splitDocs(stream) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("decoding %q: %v", doc, err)
		}
		var obj any
		switch meta.Kind {
		case "DaemonSet":
			obj = &appsv1.DaemonSet{}
		case "Service":
			obj = &corev1.Service{}
		case "ConfigMap":
			obj = &corev1.ConfigMap{}
		case "ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "PodMonitor", "PrometheusRule":
			// The Prometheus Operator's kinds, decoded without its types
			// (TestMonitoring checks their content).
			var u map[string]any
			if err := yaml.Unmarshal([]byte(doc), &u); err != nil {
				t.Fatalf("%s %s: %v", meta.Kind, meta.Metadata.Name, err)
			}
			out[meta.Kind+"/"+meta.Metadata.Name] = u
			continue
		default:
			t.Fatalf("unexpected kind %q", meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s %s does not decode strictly: %v", meta.Kind, meta.Metadata.Name, err)
		}
		out[meta.Kind+"/"+meta.Metadata.Name] = obj
	}
	return out
}

// splitDocs splits a YAML stream at its "---" lines, keeping each
// document's line ends.
func splitDocs(stream string) []string {
	var docs []string
	var cur strings.Builder
	for _, l := range strings.SplitAfter(stream, "\n") {
		if strings.TrimRight(l, "\n") == "---" {
			docs = append(docs, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteString(l)
	}
	return append(docs, cur.String())
}

func canonical(t *testing.T, objs map[string]any) string {
	t.Helper()
	keys := make([]string, 0, len(objs))
	for k := range objs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, k := range keys {
		y, err := yaml.Marshal(objs[k])
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "# %s\n%s", k, y)
	}
	return b.String()
}

func TestChartCorefileIsTheBuiltInOne(t *testing.T) {
	path := filepath.Join(chartDir, "files", "Corefile.tmpl")
	if *update {
		if err := os.WriteFile(path, []byte(corefile.Default), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != corefile.Default {
		t.Errorf("%s differs from internal/corefile/default.tmpl (go test ./deploy -update copies it)", path)
	}
}

// The Helm chart, the kustomize base and the pre-rendered file hold the
// same objects.
func TestRenderingsAgree(t *testing.T) {
	helm := joined(renderHelm(t, nil))
	if *update {
		if err := os.WriteFile("node-local-coredns.yaml", []byte("# Generated from helm/node-local-coredns by go test ./deploy -update; do not edit.\n"+helm), 0o644); err != nil {
			t.Fatal(err)
		}
		writeKustomize(t, renderHelm(t, nil))
	}
	want := canonical(t, objects(t, helm))
	pre, err := os.ReadFile("node-local-coredns.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := canonical(t, objects(t, string(pre))); got != want {
		t.Errorf("node-local-coredns.yaml differs from the chart's rendering (go test ./deploy -update rewrites it)")
	}
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		if os.Getenv("NODESIM_REQUIRED") != "" {
			t.Fatal("kubectl is needed to render the kustomize base")
		}
		t.Skip("kubectl not installed: cannot render the kustomize base")
	}
	out, err := exec.Command(kubectl, "kustomize", "kustomize").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	if got := canonical(t, objects(t, string(out))); got != want {
		t.Errorf("the kustomize base renders other objects than the chart (go test ./deploy -update rewrites it)")
	}
}

func writeKustomize(t *testing.T, docs map[string]string) {
	t.Helper()
	names := make([]string, 0, len(docs))
	for n, d := range docs {
		if err := os.WriteFile(filepath.Join("kustomize", n), []byte("# Generated from helm/node-local-coredns by go test ./deploy -update; do not edit.\n"+strings.TrimSpace(d)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("# The node-local-coredns base: kubectl apply -k deploy/kustomize\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  - %s\n", n)
	}
	if err := os.WriteFile(filepath.Join("kustomize", "kustomization.yaml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestHelmLintIsClean(t *testing.T) {
	lint := action.NewLint()
	lint.Strict = true
	res := lint.Run([]string{chartDir}, nil)
	for _, m := range res.Messages {
		if m.Severity >= support.WarningSev {
			t.Errorf("helm lint: %s", m)
		} else {
			t.Logf("helm lint: %s", m)
		}
	}
	for _, err := range res.Errors {
		t.Errorf("helm lint: %v", err)
	}
}

// The objects carry what the datapath and an operator need.
func TestObjects(t *testing.T) {
	objs := objects(t, joined(renderHelm(t, nil)))
	svc := objs["Service/node-local-coredns"].(*corev1.Service)
	if svc.Namespace != "kube-system" || svc.Spec.Selector["k8s-app"] != "kube-dns" || svc.Labels["k8s-app"] != "kube-dns" {
		t.Errorf("upstream Service: %+v", svc.ObjectMeta)
	}
	var ports []string
	for _, p := range svc.Spec.Ports {
		ports = append(ports, fmt.Sprintf("%s %d/%s", p.Name, p.Port, p.Protocol))
	}
	if !slices.Equal(ports, []string{"dns 53/UDP", "dns-tcp 53/TCP"}) {
		t.Errorf("upstream Service ports %v", ports)
	}
	cm := objs["ConfigMap/node-local-coredns"].(*corev1.ConfigMap)
	if cm.Data["Corefile.tmpl"] != corefile.Default {
		t.Error("the ConfigMap does not hold the built-in Corefile template")
	}
	if _, ok := objs["ServiceAccount/node-local-coredns"]; !ok {
		t.Error("no ServiceAccount")
	}
	ds := objs["DaemonSet/node-local-coredns"].(*appsv1.DaemonSet)
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || pod.DNSPolicy != corev1.DNSDefault || pod.PriorityClassName != "system-node-critical" {
		t.Errorf("pod: hostNetwork %t, dnsPolicy %s, priority %q", pod.HostNetwork, pod.DNSPolicy, pod.PriorityClassName)
	}
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != corev1.TolerationOpExists || pod.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v, want one that tolerates every taint", pod.Tolerations)
	}
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ru == nil || ru.MaxSurge.String() != "1" || ru.MaxUnavailable.String() != "0" {
		t.Errorf("update strategy %+v, want maxSurge 1, maxUnavailable 0", ds.Spec.UpdateStrategy)
	}
	if ds.Spec.Template.Annotations["prometheus.io/scrape"] != "true" {
		t.Error("no Prometheus scrape annotation")
	}
	names := []string{}
	for _, c := range pod.Containers {
		names = append(names, c.Name)
		sc := c.SecurityContext
		if sc == nil || (sc.Privileged != nil && *sc.Privileged) || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: must not be privileged and must have a read-only root filesystem", c.Name)
		}
		if sc != nil && (len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL") {
			t.Errorf("%s: capabilities not dropped", c.Name)
		}
		checkLeastPrivilege(t, c, legacyCaps)
		lock := false
		for _, m := range c.VolumeMounts {
			lock = lock || m.MountPath == "/run/xtables.lock"
		}
		if !lock {
			t.Errorf("%s: /run/xtables.lock not mounted", c.Name)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s: no resource requests", c.Name)
		}
	}
	if !slices.Equal(names, []string{"node-local-coredns", "watchdog"}) {
		t.Errorf("containers %v", names)
	}
	agent := pod.Containers[0]
	if agent.LivenessProbe == nil || agent.LivenessProbe.HTTPGet == nil || agent.LivenessProbe.HTTPGet.Path != "/health" {
		t.Errorf("liveness probe %+v", agent.LivenessProbe)
	}
	if agent.ReadinessProbe == nil || agent.ReadinessProbe.Exec == nil || !slices.Contains(agent.ReadinessProbe.Exec.Command, "status") {
		t.Errorf("readiness probe %+v, want node-local-coredns status", agent.ReadinessProbe)
	}
	if pod.Containers[1].Args[0] != "watchdog" {
		t.Errorf("watchdog args %v", pod.Containers[1].Args)
	}
}

// Values reach the agent's flags.
func TestValues(t *testing.T) {
	objs := objects(t, joined(renderHelm(t, map[string]any{
		"localIP": "10.96.0.10,fd00::a", "interface": "cbr0", "clusterDomain": "k8s.example.org",
		"upstream": "10.96.0.11", "cache": map[string]any{"successCapacity": 1000, "denialCapacity": 500},
		"image": map[string]any{"tag": "v9"}, "nodeSelector": map[string]any{"pool": "dns"},
		"watchdog": map[string]any{"enabled": false}, "metricsService": map[string]any{"enabled": false},
	})))
	ds := objs["DaemonSet/node-local-coredns"].(*appsv1.DaemonSet)
	agent := ds.Spec.Template.Spec.Containers[0]
	for _, want := range []string{"--local-ip=10.96.0.10,fd00::a", "--interface=cbr0", "--cluster-domain=k8s.example.org",
		"--upstream=10.96.0.11", "--cache-success=1000", "--cache-denial=500"} {
		if !slices.Contains(agent.Args, want) {
			t.Errorf("agent args %v lack %s", agent.Args, want)
		}
	}
	if !strings.HasSuffix(agent.Image, ":v9") || ds.Spec.Template.Spec.NodeSelector["pool"] != "dns" {
		t.Errorf("image %s, node selector %v", agent.Image, ds.Spec.Template.Spec.NodeSelector)
	}
	if len(ds.Spec.Template.Spec.Containers) != 1 {
		t.Error("watchdog not disabled")
	}
	if _, ok := objs["Service/node-local-coredns-metrics"]; ok {
		t.Error("metrics Service not disabled")
	}
}

// The capabilities of each container, in every rendering: what its process
// uses, and with the legacy backend possible (netfilter auto or iptables-legacy)
// what iptables-legacy uses.
var (
	ownCaps = map[string][]corev1.Capability{
		"node-local-coredns": {"NET_ADMIN", "NET_BIND_SERVICE"},
		"watchdog":           {"NET_ADMIN"},
	}
	legacyCaps = []corev1.Capability{"NET_RAW", "DAC_READ_SEARCH"}
)

// checkLeastPrivilege checks that c runs as a non-root user, without
// privilege escalation, under the runtime's seccomp profile, with exactly
// its own capabilities and extra.
func checkLeastPrivilege(t *testing.T, c corev1.Container, extra []corev1.Capability) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Errorf("%s: no securityContext with capabilities", c.Name)
		return
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Errorf("%s: must run as a non-root user (runAsNonRoot, runAsUser %v)", c.Name, sc.RunAsUser)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation must be false", c.Name)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile %+v, want RuntimeDefault", c.Name, sc.SeccompProfile)
	}
	want := append(slices.Clone(ownCaps[c.Name]), extra...)
	if got := sc.Capabilities.Add; !slices.Equal(got, want) {
		t.Errorf("%s: capabilities %v, want %v", c.Name, got, want)
	}
}

// With netfilter nftables or iptables-nft the containers do not get what
// only iptables-legacy uses.
func TestCapabilitiesByNetfilterBackend(t *testing.T) {
	for _, tc := range []struct {
		mode  string
		extra []corev1.Capability
	}{
		{"auto", legacyCaps},
		{"iptables-legacy", legacyCaps},
		{"iptables-nft", nil},
		{"nftables", nil},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			objs := objects(t, joined(renderHelm(t, map[string]any{"netfilter": tc.mode})))
			for _, c := range objs["DaemonSet/node-local-coredns"].(*appsv1.DaemonSet).Spec.Template.Spec.Containers {
				checkLeastPrivilege(t, c, tc.extra)
			}
		})
	}
}

// upstreamEndpoints (on by default) creates the headless Service of
// kube-dns's endpoints; off, there is none and the agent is told so.
func TestUpstreamEndpointsValue(t *testing.T) {
	for _, tc := range []struct {
		on   bool
		arg  bool
		svcs int
	}{{true, false, 1}, {false, true, 0}} {
		objs := objects(t, joined(renderHelm(t, map[string]any{"upstreamEndpoints": tc.on})))
		svc, ok := objs["Service/node-local-coredns-endpoints"].(*corev1.Service)
		if got := map[bool]int{true: 1}[ok]; got != tc.svcs {
			t.Errorf("upstreamEndpoints %v: %d headless Services, want %d", tc.on, got, tc.svcs)
		}
		if ok && (svc.Spec.ClusterIP != corev1.ClusterIPNone || svc.Spec.Selector["k8s-app"] != "kube-dns") {
			t.Errorf("the endpoints Service is not headless with kube-dns's selector: %+v", svc.Spec)
		}
		args := objs["DaemonSet/node-local-coredns"].(*appsv1.DaemonSet).Spec.Template.Spec.Containers[0].Args
		if got := slices.Contains(args, "--upstream-endpoints=none"); got != tc.arg {
			t.Errorf("upstreamEndpoints %v: --upstream-endpoints=none in the args %v, want %v", tc.on, got, tc.arg)
		}
	}
}
