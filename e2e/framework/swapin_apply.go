package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

// ApplyYAMLDryRun server-side-applies every object of a (multi-document)
// manifest with dryRun=All: the apiserver decodes, defaults, validates and
// admits each object exactly as for a real apply, and stores nothing. It
// returns the objects as the apiserver would have stored them. Use it for
// objects that cannot take effect here (a DaemonSet has no kubelet to run
// it). Namespaces a namespaced object names must exist.
func (c *Cluster) ApplyYAMLDryRun(t testing.TB, manifest []byte) []*unstructured.Unstructured {
	t.Helper()
	objs, err := c.applyDryRun(context.Background(), manifest)
	if err != nil {
		t.Fatalf("server-side dry-run apply: %v", err)
	}
	return objs
}

// DecodeManifest splits a (multi-document) YAML or JSON manifest into
// objects, skipping empty documents.
func DecodeManifest(manifest []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for i := 0; ; i++ {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, fmt.Errorf("document %d: %w", i, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		if gvk.Kind == "" || gvk.Version == "" {
			return out, fmt.Errorf("document %d: missing apiVersion or kind", i)
		}
		out = append(out, obj)
	}
}

func (c *Cluster) applyDryRun(ctx context.Context, manifest []byte) ([]*unstructured.Unstructured, error) {
	objs, err := DecodeManifest(manifest)
	if err != nil {
		return nil, err
	}
	disc, err := discovery.NewDiscoveryClientForConfig(c.RESTConfig)
	if err != nil {
		return nil, err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	dyn, err := dynamic.NewForConfig(c.RESTConfig)
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return out, fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ns := obj.GetNamespace()
			if ns == "" {
				ns = metav1.NamespaceDefault
				obj.SetNamespace(ns)
			}
			ri = dyn.Resource(m.Resource).Namespace(ns)
		}
		applied, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{
			FieldManager: "kpr-e2e", Force: true, DryRun: []string{metav1.DryRunAll},
		})
		if err != nil {
			return out, fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		out = append(out, applied)
	}
	return out, nil
}
