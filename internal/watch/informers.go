package watch

import (
	"time"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kpr-proxy/kpr/internal/model"
)

// labelServiceProxyName marks a Service (and, copied by the EndpointSlice
// controller, its slices) as owned by another proxy.
const labelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// Selectors, as kube-proxy's server.go builds them:
//   - Services: no service-proxy-name label (any value), and a cluster IP
//     other than None (headless Services are DNS only);
//   - EndpointSlices: no service.kubernetes.io/headless label, and also no
//     service-proxy-name label: the EndpointSlice controller copies a
//     Service's labels to its slices, so these are slices of Services we
//     never program and caching them would only cost memory.
func serviceLabelSelector() string {
	return mustSelector(labelServiceProxyName)
}

func sliceLabelSelector() string {
	return mustSelector(v1.IsHeadlessService, labelServiceProxyName)
}

func mustSelector(absent ...string) string {
	sel := labels.NewSelector()
	for _, k := range absent {
		r, err := labels.NewRequirement(k, selection.DoesNotExist, nil)
		if err != nil {
			panic(err) // constant keys; cannot fail
		}
		sel = sel.Add(*r)
	}
	return sel.String()
}

// The handlers check the same conditions again: a fake clientset applies
// label selectors to lists only, and an object that stops matching must be
// treated as gone even if a watch delivered it as an update.
func excludedService(svc *v1.Service) bool {
	_, ok := svc.Labels[labelServiceProxyName]
	return ok
}

func excludedSlice(es *discovery.EndpointSlice) bool {
	_, headless := es.Labels[v1.IsHeadlessService]
	_, other := es.Labels[labelServiceProxyName]
	return headless || other
}

func (w *Watcher) setupInformers() error {
	resync := w.cfg.ResyncPeriod
	// No indexers: nothing looks objects up by namespace, so the default
	// namespace index would only cost memory.
	svcInf := coreinformers.NewFilteredServiceInformer(w.cfg.Client, metav1.NamespaceAll, resync, cache.Indexers{},
		func(o *metav1.ListOptions) {
			o.LabelSelector = serviceLabelSelector()
			o.FieldSelector = fields.OneTermNotEqualSelector("spec.clusterIP", v1.ClusterIPNone).String()
		})
	sliceInf := discoveryinformers.NewFilteredEndpointSliceInformer(w.cfg.Client, metav1.NamespaceAll, resync, cache.Indexers{},
		func(o *metav1.ListOptions) { o.LabelSelector = sliceLabelSelector() })
	nodeInf := coreinformers.NewFilteredNodeInformer(w.cfg.Client, resync, cache.Indexers{},
		func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", w.cfg.NodeName).String()
		})

	type spec struct {
		inf       cache.SharedIndexInformer
		transform cache.TransformFunc
		handle    func(obj any, deleted bool)
	}
	for _, s := range []spec{
		{svcInf, w.serviceTransform(), w.onService},
		{sliceInf, transformEndpointSlice, w.onSlice},
		{nodeInf, transformNode, w.onNode},
	} {
		if err := s.inf.SetTransform(s.transform); err != nil {
			return err
		}
		reg, err := s.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { s.handle(obj, false) },
			UpdateFunc: func(oldObj, newObj any) {
				if isResync(oldObj, newObj) {
					w.onResync(newObj)
					return
				}
				s.handle(newObj, false)
			},
			DeleteFunc: func(obj any) { s.handle(obj, true) },
		})
		if err != nil {
			return err
		}
		w.informers = append(w.informers, s.inf)
		w.regs = append(w.regs, reg)
	}
	return nil
}

// isResync: the informer re-delivered an object it already had (periodic
// resync or relist). Nothing changed, so there is nothing to convert, and not
// converting also means a bad object is logged once per version.
func isResync(oldObj, newObj any) bool {
	o, ok1 := oldObj.(metav1.Object)
	n, ok2 := newObj.(metav1.Object)
	return ok1 && ok2 && n.GetResourceVersion() != "" && o.GetResourceVersion() == n.GetResourceVersion()
}

func (w *Watcher) onResync(obj any) {
	switch o := obj.(type) {
	case *v1.Service:
		w.rec.ServiceChange()
	case *discovery.EndpointSlice:
		if f, ok := sliceFamily(o.AddressType); ok && w.runs(f) {
			w.rec.EndpointChange()
		}
	}
}

func (w *Watcher) runs(f model.Family) bool {
	for _, r := range w.cfg.Families {
		if r == f {
			return true
		}
	}
	return false
}

// unwrap returns the object inside a deletion tombstone.
func unwrap(obj any) any {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

func (w *Watcher) onService(obj any, deleted bool) {
	svc, ok := unwrap(obj).(*v1.Service)
	if !ok {
		return
	}
	w.rec.ServiceChange()
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	var conv svcPorts
	if !deleted && !excludedService(svc) {
		var probs []problem
		conv, probs = convertService(svc, w.cfg.Families)
		w.report("Service", "service", svc.Namespace, svc.Name, probs)
	}
	if w.t.setService(nn, conv) {
		w.cfg.RequestSync()
	}
}

func (w *Watcher) onSlice(obj any, deleted bool) {
	es, ok := unwrap(obj).(*discovery.EndpointSlice)
	if !ok {
		return
	}
	fam, ok := sliceFamily(es.AddressType)
	if !ok || !w.runs(fam) {
		return // FQDN, or a family this proxy does not run: ignored like kube-proxy
	}
	w.rec.EndpointChange()
	var e *sliceEntry
	var trigger time.Time
	if !deleted && !excludedSlice(es) {
		svcName := es.Labels[discovery.LabelServiceName]
		if svcName == "" {
			// Without the label the slice belongs to no Service; if it
			// had one before, its endpoints are dropped from there.
			w.report("EndpointSlice", "endpointslice", es.Namespace, es.Name,
				[]problem{{"metadata.labels", discovery.LabelServiceName, reasonMissingServiceName}})
		} else {
			var probs []problem
			e, probs = convertSlice(es, fam, svcName, w.cfg.NodeName)
			trigger, probs = triggerTime(es.Annotations, probs)
			w.report("EndpointSlice", "endpointslice", es.Namespace, es.Name, probs)
		}
	}
	if w.t.setSlice(es.Namespace, es.Name, e, trigger) {
		w.cfg.RequestSync()
	}
}

// triggerTime parses endpoints.kubernetes.io/last-change-trigger-time; like
// kube-proxy, a missing or unparsable value yields the zero time.
func triggerTime(ann map[string]string, probs []problem) (time.Time, []problem) {
	v, ok := ann[v1.EndpointsLastChangeTriggerTime]
	if !ok {
		return time.Time{}, probs
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, append(probs, problem{"metadata.annotations", v, reasonInvalidTriggerTime})
	}
	return t, probs
}

func (w *Watcher) onNode(obj any, deleted bool) {
	n, ok := unwrap(obj).(*v1.Node)
	if !ok || n.Name != w.cfg.NodeName {
		return
	}
	var facts nodeFacts
	if !deleted {
		var probs []problem
		facts, probs = convertNode(n, w.cfg.Families)
		w.report("Node", "node", "", n.Name, probs)
	} else {
		w.log.Warn("This node's Node object was deleted", zap.String("node", n.Name))
	}
	if w.t.setNode(facts, deleted) {
		w.cfg.RequestSync()
	}
}

// report logs each problem once (this event brought a new object version)
// and counts it. The object is logged as "namespace/name" under key.
func (w *Watcher) report(kind, key, ns, name string, probs []problem) {
	if len(probs) == 0 {
		return
	}
	obj := name
	if ns != "" {
		obj = ns + "/" + name
	}
	for _, p := range probs {
		w.log.Warn("Skipping invalid part of "+kind,
			zap.String(key, obj),
			zap.String("reason", p.Reason),
			zap.String("field", p.Field),
			zap.String("value", p.Value))
		w.rec.InvalidObject(kind, p.Reason)
	}
}
