package watch

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// The transforms below run on every object before it enters an informer
// cache. Each builds a fresh object holding only what the proxy reads (and
// what the handlers' label checks need), so everything else the apiserver
// sent (managedFields, selectors, targetRefs, other labels and annotations,
// node images and conditions...) becomes garbage at once. They are
// idempotent, as client-go requires, and pass any other type through.

// keepKeys copies the given keys of m; nil when none is present.
func keepKeys(m map[string]string, keys ...string) map[string]string {
	var out map[string]string
	for _, k := range keys {
		if v, ok := m[k]; ok {
			if out == nil {
				out = make(map[string]string, len(keys))
			}
			out[k] = v
		}
	}
	return out
}

// serviceTransform is transformService, minus spec.externalIPs when the
// AllowServiceExternalIPs feature gate is off (kube-proxy then programs no
// rules for them).
func (w *Watcher) serviceTransform() cache.TransformFunc {
	if !w.cfg.IgnoreExternalIPs {
		return transformService
	}
	return func(obj any) (any, error) {
		out, err := transformService(obj)
		if svc, ok := out.(*v1.Service); ok && err == nil {
			svc.Spec.ExternalIPs = nil
		}
		return out, err
	}
}

func transformService(obj any) (any, error) {
	svc, ok := obj.(*v1.Service)
	if !ok {
		return obj, nil
	}
	out := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name:            svc.Name,
			Namespace:       svc.Namespace,
			ResourceVersion: svc.ResourceVersion,
			Labels:          keepKeys(svc.Labels, labelServiceProxyName),
			Annotations: keepKeys(svc.Annotations,
				v1.AnnotationTopologyMode, v1.DeprecatedAnnotationTopologyAwareHints),
		},
		Spec: v1.ServiceSpec{
			Type:                     svc.Spec.Type,
			ClusterIP:                svc.Spec.ClusterIP,
			ClusterIPs:               svc.Spec.ClusterIPs,
			IPFamilies:               svc.Spec.IPFamilies,
			ExternalIPs:              svc.Spec.ExternalIPs,
			SessionAffinity:          svc.Spec.SessionAffinity,
			SessionAffinityConfig:    svc.Spec.SessionAffinityConfig,
			LoadBalancerSourceRanges: svc.Spec.LoadBalancerSourceRanges,
			ExternalTrafficPolicy:    svc.Spec.ExternalTrafficPolicy,
			InternalTrafficPolicy:    svc.Spec.InternalTrafficPolicy,
			HealthCheckNodePort:      svc.Spec.HealthCheckNodePort,
			TrafficDistribution:      svc.Spec.TrafficDistribution,
		},
	}
	if len(svc.Spec.Ports) > 0 {
		out.Spec.Ports = make([]v1.ServicePort, len(svc.Spec.Ports))
		for i, p := range svc.Spec.Ports {
			out.Spec.Ports[i] = v1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, NodePort: p.NodePort}
		}
	}
	if ing := svc.Status.LoadBalancer.Ingress; len(ing) > 0 {
		out.Status.LoadBalancer.Ingress = make([]v1.LoadBalancerIngress, len(ing))
		for i, in := range ing {
			out.Status.LoadBalancer.Ingress[i] = v1.LoadBalancerIngress{IP: in.IP, IPMode: in.IPMode}
		}
	}
	return out, nil
}

func transformEndpointSlice(obj any) (any, error) {
	es, ok := obj.(*discovery.EndpointSlice)
	if !ok {
		return obj, nil
	}
	out := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:            es.Name,
			Namespace:       es.Namespace,
			ResourceVersion: es.ResourceVersion,
			Labels: keepKeys(es.Labels,
				discovery.LabelServiceName, v1.IsHeadlessService, labelServiceProxyName),
			Annotations: keepKeys(es.Annotations, v1.EndpointsLastChangeTriggerTime),
		},
		AddressType: es.AddressType,
	}
	if len(es.Ports) > 0 {
		out.Ports = make([]discovery.EndpointPort, len(es.Ports))
		for i, p := range es.Ports {
			out.Ports[i] = discovery.EndpointPort{Name: p.Name, Protocol: p.Protocol, Port: p.Port}
		}
	}
	if len(es.Endpoints) > 0 {
		out.Endpoints = make([]discovery.Endpoint, len(es.Endpoints))
		for i := range es.Endpoints {
			ep := &es.Endpoints[i]
			addrs := ep.Addresses
			if len(addrs) > 1 {
				// Only the first address is ever used.
				addrs = []string{addrs[0]}
			}
			out.Endpoints[i] = discovery.Endpoint{
				Addresses:  addrs,
				Conditions: ep.Conditions,
				NodeName:   ep.NodeName,
				Zone:       ep.Zone,
				Hints:      ep.Hints,
			}
			if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" {
				// Only the name: operators see which pod an entry
				// belongs to (proxy conntrack, debug views).
				out.Endpoints[i].TargetRef = &v1.ObjectReference{Kind: "Pod", Name: ref.Name}
			}
		}
	}
	return out, nil
}

func transformNode(obj any) (any, error) {
	n, ok := obj.(*v1.Node)
	if !ok {
		return obj, nil
	}
	out := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:              n.Name,
			ResourceVersion:   n.ResourceVersion,
			DeletionTimestamp: n.DeletionTimestamp,
			Labels:            keepKeys(n.Labels, v1.LabelTopologyZone),
		},
		Spec: v1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
	}
	for _, t := range n.Spec.Taints {
		if t.Key == toBeDeletedTaint {
			out.Spec.Taints = append(out.Spec.Taints, v1.Taint{Key: t.Key, Effect: t.Effect})
		}
	}
	for _, a := range n.Status.Addresses {
		if a.Type == v1.NodeInternalIP || a.Type == v1.NodeExternalIP {
			out.Status.Addresses = append(out.Status.Addresses, a)
		}
	}
	return out, nil
}
