// Package deploy holds the Kubernetes manifests of node-local-coredns: the
// Helm chart (helm/node-local-coredns), the kustomize base (kustomize/) and
// the pre-rendered node-local-coredns.yaml, which its tests keep in
// agreement.
package deploy

import (
	"fmt"
	"path/filepath"
	"strings"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
)

// RenderHelm renders the chart in dir with values, as helm template does
// for a release node-local-coredns in kube-system, and returns the
// non-empty documents by template file name.
func RenderHelm(dir string, values map[string]any) (map[string]string, error) {
	ch, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("loading the chart: %w", err)
	}
	vals, err := chartutil.ToRenderValues(ch, values, chartutil.ReleaseOptions{Name: "node-local-coredns", Namespace: "kube-system", IsInstall: true}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, fmt.Errorf("the chart's values: %w", err)
	}
	out, err := engine.Render(ch, vals)
	if err != nil {
		return nil, fmt.Errorf("rendering the chart: %w", err)
	}
	docs := map[string]string{}
	for name, doc := range out {
		if strings.HasSuffix(name, ".tpl") || strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		docs[filepath.Base(name)] = doc
	}
	return docs, nil
}

func stripComments(doc string) string {
	var keep []string
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
