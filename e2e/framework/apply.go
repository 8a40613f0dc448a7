package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
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

// ApplyFile server-side-applies every object in a (multi-document) YAML or
// JSON file, e.g. the project's manifests/ RBAC, and returns the objects as
// applied.
func (c *Cluster) ApplyFile(t testing.TB, path string) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := c.apply(context.Background(), b, false)
	if err != nil {
		t.Fatalf("applying %s: %v", path, err)
	}
	return objs
}

// ApplyYAML is ApplyFile for in-memory manifests.
func (c *Cluster) ApplyYAML(t testing.TB, manifest []byte) []*unstructured.Unstructured {
	t.Helper()
	objs, err := c.apply(context.Background(), manifest, false)
	if err != nil {
		t.Fatalf("applying manifest: %v", err)
	}
	return objs
}

// ApplyYAMLDryRun server-side-applies every object of a (multi-document)
// manifest with dryRun=All: the apiserver decodes, defaults, validates and
// admits each object exactly as for a real apply, and stores nothing. It
// returns the objects as the apiserver would have stored them. Use it for
// objects that cannot take effect here (a DaemonSet has no kubelet to run
// it). Namespaces a namespaced object names must exist.
func (c *Cluster) ApplyYAMLDryRun(t testing.TB, manifest []byte) []*unstructured.Unstructured {
	t.Helper()
	objs, err := c.apply(context.Background(), manifest, true)
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
			continue // empty document between "---"s
		}
		gvk := obj.GroupVersionKind()
		if gvk.Kind == "" || gvk.Version == "" {
			return out, fmt.Errorf("document %d: missing apiVersion or kind", i)
		}
		out = append(out, obj)
	}
}

// apply server-side-applies every object of manifest, in order. A real apply
// creates the namespaces that namespaced objects name; a dry run (nothing
// stored) needs them to exist.
func (c *Cluster) apply(ctx context.Context, manifest []byte, dryRun bool) ([]*unstructured.Unstructured, error) {
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
	opts := metav1.ApplyOptions{FieldManager: "kpr-e2e", Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
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
			if !dryRun {
				if err := c.ensureNamespace(ctx, ns); err != nil {
					return out, err
				}
			}
			ri = dyn.Resource(m.Resource).Namespace(ns)
		}
		applied, err := ri.Apply(ctx, obj.GetName(), obj, opts)
		if err != nil {
			return out, fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		out = append(out, applied)
	}
	return out, nil
}
