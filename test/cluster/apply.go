package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// fieldManager is the harness's name in managedFields.
const fieldManager = "node-local-coredns-test"

// ApplyManifests server-side applies every object of a multi-document YAML
// stream (as kubectl apply --server-side does) and returns them as applied.
// The first object the API server rejects ends it with an error naming it.
func (c *Cluster) ApplyManifests(ctx context.Context, manifests []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests), 4096)
	var out []*unstructured.Unstructured
	for {
		var raw map[string]any
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return out, fmt.Errorf("decoding the manifests: %w", err)
		}
		if len(raw) == 0 {
			continue
		}
		obj := &unstructured.Unstructured{Object: raw}
		applied, err := c.applyUnstructured(ctx, obj)
		if err != nil {
			return out, err
		}
		out = append(out, applied)
	}
}

// apply server-side applies a typed object.
func (c *Cluster) apply(ctx context.Context, obj runtime.Object) error {
	gvks, _, err := scheme.Scheme.ObjectKinds(obj)
	if err != nil {
		return err
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return err
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetGroupVersionKind(gvks[0])
	_, err = c.applyUnstructured(ctx, u)
	return err
}

func (c *Cluster) applyUnstructured(ctx context.Context, obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	gvk := obj.GroupVersionKind()
	what := fmt.Sprintf("%s %s/%s", gvk.Kind, obj.GetNamespace(), obj.GetName())
	mapping, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("applying %s: %w", what, err)
	}
	// A server-side apply body carries no status or server-set fields.
	unstructured.RemoveNestedField(obj.Object, "status")
	unstructured.RemoveNestedField(obj.Object, "metadata", "creationTimestamp")
	body, err := yaml.Marshal(obj.Object)
	if err != nil {
		return nil, err
	}
	var r = c.dynamic.Resource(mapping.Resource)
	opts := metav1.PatchOptions{FieldManager: fieldManager, Force: ptr(true)}
	var applied *unstructured.Unstructured
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		applied, err = r.Namespace(obj.GetNamespace()).Patch(ctx, obj.GetName(), types.ApplyPatchType, body, opts)
	} else {
		applied, err = r.Patch(ctx, obj.GetName(), types.ApplyPatchType, body, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("applying %s: %w", what, err)
	}
	return applied, nil
}
