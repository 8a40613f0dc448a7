package watch

import (
	"context"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/kpr-proxy/kpr/internal/model"
)

// checkChangedExact verifies the Changed contract: exactly the names for
// which SameServicePort(prev, cur) is false.
func checkChangedExact(t *testing.T, prev *model.Snapshot, fs FamilyState) {
	t.Helper()
	all := map[model.ServicePortName]struct{}{}
	for _, s := range []*model.Snapshot{prev, fs.Snapshot} {
		if s == nil {
			continue
		}
		for n := range s.Services {
			all[n] = struct{}{}
		}
		for n := range s.Endpoints {
			all[n] = struct{}{}
		}
	}
	want := map[model.ServicePortName]struct{}{}
	for n := range all {
		if !model.SameServicePort(prev, fs.Snapshot, n) {
			want[n] = struct{}{}
		}
	}
	if !maps.Equal(want, fs.Changed) {
		t.Errorf("Changed = %v, want exactly %v", sortedNames(fs.Changed), sortedNames(want))
	}
}

func TestSnapshotBasics(t *testing.T) {
	h := newHarness(t, v4)
	h.addService(svc("ns", "a", "198.19.192.1"))
	h.addSlice(slice("ns", "a-1", "a", discovery.AddressTypeIPv4, "http", 8080,
		ep{ip: "198.18.1.2", node: testNode}, ep{ip: "198.18.2.2", node: otherNode}))
	if h.takeSyncs() != 2 {
		t.Fatal("each real change must request a sync")
	}
	if s, e := h.Pending(); s != 1 || e != 1 {
		t.Fatalf("pending = %d/%d, want 1/1", s, e)
	}
	st := h.Snapshot()
	if st.ServiceChanges != 1 || st.EndpointChanges != 1 || len(st.Families) != 1 {
		t.Fatalf("state: %+v", st)
	}
	fs := st.Families[0]
	checkChangedExact(t, nil, fs)
	sp := fs.Snapshot.Services[spn("ns", "a", "http")]
	if sp == nil || sp.ClusterIP != addr("198.19.192.1") || sp.Port != 80 {
		t.Fatalf("service port: %+v", sp)
	}
	eps := fs.Snapshot.Endpoints[spn("ns", "a", "http")]
	if got := endpointIPs(eps); !reflect.DeepEqual(got, []string{"198.18.1.2:8080", "198.18.2.2:8080"}) || !eps[0].IsLocal || eps[1].IsLocal {
		t.Fatalf("endpoints: %v", got)
	}
	if !fs.NodeChanged || fs.Node.Name != testNode {
		t.Errorf("first snapshot must report the node as changed: %+v", fs)
	}
	if s, e := h.Pending(); s != 0 || e != 0 || h.rec.pendSvc != 0 || h.rec.pendEps != 0 {
		t.Errorf("pending after snapshot = %d/%d (recorder %d/%d)", s, e, h.rec.pendSvc, h.rec.pendEps)
	}

	// Nothing happened: the very same snapshot comes back, nothing changed.
	st2 := h.Snapshot()
	if st2.Families[0].Snapshot != fs.Snapshot || len(st2.Families[0].Changed) != 0 || st2.Families[0].NodeChanged {
		t.Errorf("idle snapshot: %+v", st2.Families[0])
	}
}

func TestNoOpUpdatesAreDropped(t *testing.T) {
	h := newHarness(t, v4)
	base := svc("ns", "a", "198.19.192.1")
	es := slice("ns", "a-1", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.2"})
	h.addService(base)
	h.addSlice(es)
	first := h.Snapshot().Families[0].Snapshot
	h.takeSyncs()

	// Only fields the proxy does not read change.
	s2 := base.DeepCopy()
	s2.ResourceVersion = "2"
	s2.Spec.Selector = map[string]string{"app": "new"}
	s2.Status.Conditions = []metav1.Condition{{Type: "Ready"}}
	s2.Labels = map[string]string{"team": "x"}
	s2.Spec.Ports[0].TargetPort.IntVal = 9090
	h.addService(s2)
	es2 := es.DeepCopy()
	es2.ResourceVersion = "2"
	es2.Endpoints[0].Hostname = ptr.To("h-2")
	es2.Endpoints[0].DeprecatedTopology = map[string]string{"x": "y"}
	es2.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().Add(time.Hour).Format(time.RFC3339Nano)}
	h.addSlice(es2)

	if n := h.takeSyncs(); n != 0 {
		t.Errorf("no-op updates requested %d syncs", n)
	}
	if s, e := h.Pending(); s != 0 || e != 0 {
		t.Errorf("no-op updates left pending changes %d/%d", s, e)
	}
	st := h.Snapshot()
	if st.Families[0].Snapshot != first || len(st.Families[0].Changed) != 0 || st.ServiceChanges != 0 || st.EndpointChanges != 0 {
		t.Errorf("no-op updates produced a change: %+v", st)
	}
	if st.Families[0].TriggerTimes != nil {
		t.Errorf("a no-op slice update must not record a trigger time")
	}
	if h.rec.svcChanges != 2 || h.rec.epChanges != 2 {
		t.Errorf("every event still counts as a change event: %d/%d", h.rec.svcChanges, h.rec.epChanges)
	}

	// A change and its undo before the next snapshot cancel out, as in
	// kube-proxy.
	s3 := base.DeepCopy()
	s3.ResourceVersion = "3"
	s3.Spec.Ports[0].Port = 81
	h.addService(s3)
	if s, _ := h.Pending(); s != 1 {
		t.Fatal("real change not pending")
	}
	s4 := base.DeepCopy()
	s4.ResourceVersion = "4"
	h.addService(s4)
	if s, _ := h.Pending(); s != 0 {
		t.Error("change reverted before the snapshot is still pending")
	}
	if st := h.Snapshot(); st.Families[0].Snapshot != first {
		t.Error("reverted change produced a new snapshot")
	}
}

func TestResyncDetection(t *testing.T) {
	a := svc("ns", "a", "198.19.192.1")
	b := a.DeepCopy()
	if !isResync(a, b) {
		t.Error("same resourceVersion must be a resync")
	}
	b.ResourceVersion = "2"
	if isResync(a, b) {
		t.Error("new resourceVersion is not a resync")
	}
	a.ResourceVersion, b.ResourceVersion = "", ""
	if isResync(a, b) {
		t.Error("without resourceVersions nothing can be skipped")
	}
}

func TestStructuralSharing(t *testing.T) {
	h := newHarness(t, v4)
	two := withPorts(
		v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 80},
		v1.ServicePort{Name: "https", Protocol: v1.ProtocolTCP, Port: 443},
	)
	a := svc("ns", "a", "198.19.192.1", two)
	h.addService(a)
	h.addService(svc("ns", "b", "198.19.192.2"))
	h.addService(svc("ns", "c", "198.19.192.3"))
	h.addSlice(slice("ns", "a-1", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.1"}))
	h.addSlice(slice("ns", "b-1", "b", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.2"}))
	h.addSlice(slice("ns", "c-1", "c", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.3"}))
	s1 := h.Snapshot().Families[0].Snapshot

	// Change a's https port only, and c's endpoints only.
	a2 := a.DeepCopy()
	a2.ResourceVersion = "2"
	a2.Spec.Ports[1].Port = 8443
	h.addService(a2)
	c2 := slice("ns", "c-1", "c", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.3"}, ep{ip: "198.18.1.4"})
	c2.ResourceVersion = "2"
	h.addSlice(c2)
	fs := h.Snapshot().Families[0]
	s2 := fs.Snapshot
	checkChangedExact(t, s1, fs)

	same := func(n model.ServicePortName) bool { return model.SameServicePort(s1, s2, n) }
	if !same(spn("ns", "a", "http")) || !same(spn("ns", "b", "http")) {
		t.Error("unchanged ports must keep pointer and endpoint array")
	}
	if s1.Services[spn("ns", "a", "http")] != s2.Services[spn("ns", "a", "http")] {
		t.Error("a:http ServicePort pointer changed though only a:https changed")
	}
	if same(spn("ns", "a", "https")) || s2.Services[spn("ns", "a", "https")].Port != 8443 {
		t.Error("a:https changed but reported same")
	}
	if same(spn("ns", "c", "http")) {
		t.Error("c:http endpoints changed but reported same")
	}
	if s1.Services[spn("ns", "c", "http")] != s2.Services[spn("ns", "c", "http")] {
		t.Error("c's ServicePort did not change and must keep its pointer")
	}
	b1, b2 := s1.Endpoints[spn("ns", "b", "http")], s2.Endpoints[spn("ns", "b", "http")]
	if &b1[0] != &b2[0] {
		t.Error("b's endpoint slice must share its backing array")
	}
	if len(fs.Changed) != 2 {
		t.Errorf("changed = %v", sortedNames(fs.Changed))
	}

	// Moving an endpoint between two slices of one Service without
	// changing it keeps the published array: nothing to program.
	h.addSlice(slice("ns", "c-1", "c", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.3"}))
	h.addSlice(slice("ns", "c-2", "c", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.4"}))
	fs3 := h.Snapshot().Families[0]
	if !model.SameServicePort(s2, fs3.Snapshot, spn("ns", "c", "http")) || len(fs3.Changed) != 0 {
		t.Errorf("endpoint moved between slices: changed %v", sortedNames(fs3.Changed))
	}
}

// deepCopySnapshot copies everything reachable from s.
func deepCopySnapshot(s *model.Snapshot) *model.Snapshot {
	c := &model.Snapshot{Family: s.Family,
		Services:  map[model.ServicePortName]*model.ServicePort{},
		Endpoints: map[model.ServicePortName][]*model.Endpoint{}}
	for n, p := range s.Services {
		q := *p
		q.ExternalIPs = slices.Clone(p.ExternalIPs)
		q.LoadBalancerVIPs = slices.Clone(p.LoadBalancerVIPs)
		q.LoadBalancerSourceRanges = slices.Clone(p.LoadBalancerSourceRanges)
		c.Services[n] = &q
	}
	for n, eps := range s.Endpoints {
		for _, e := range eps {
			f := *e
			f.ZoneHints, f.NodeHints = slices.Clone(e.ZoneHints), slices.Clone(e.NodeHints)
			c.Endpoints[n] = append(c.Endpoints[n], &f)
		}
	}
	return c
}

func TestSnapshotsAreImmutable(t *testing.T) {
	h := newHarness(t, dual)
	a := svc("ns", "a", "198.19.192.1", dualStack("2001:db8:20::1"))
	h.addService(a)
	h.addService(svc("ns", "b", "198.19.192.2"))
	h.addSlice(slice("ns", "a-1", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.1"}, ep{ip: "198.18.1.2"}))
	h.addSlice(slice("ns", "a-2", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.3"}))
	h.addSlice(slice("ns", "a-6", "a", discovery.AddressTypeIPv6, "http", 8080, ep{ip: "2001:db8:10::1"}))
	h.addSlice(slice("ns", "b-1", "b", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.9"}))
	st := h.Snapshot()
	copies := []*model.Snapshot{deepCopySnapshot(st.Families[0].Snapshot), deepCopySnapshot(st.Families[1].Snapshot)}

	// Every kind of later change.
	a2 := a.DeepCopy()
	a2.ResourceVersion = "2"
	a2.Spec.Ports[0].Port = 81
	a2.Spec.ExternalIPs = []string{"203.0.113.1", "2001:db8:30::1"}
	h.addService(a2)
	h.delService(svc("ns", "b", "198.19.192.2"))
	h.addSlice(slice("ns", "a-1", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.1", terminating: ptr.To(true)}))
	h.delSlice(slice("ns", "a-2", "a", discovery.AddressTypeIPv4, "http", 8080))
	h.addSlice(slice("ns", "a-6", "a", discovery.AddressTypeIPv6, "http", 8080, ep{ip: "2001:db8:10::2"}))
	h.delSlice(slice("ns", "b-1", "b", discovery.AddressTypeIPv4, "http", 8080))
	next := h.Snapshot()
	for i, f := range st.Families {
		if !reflect.DeepEqual(copies[i], f.Snapshot) {
			t.Errorf("%v snapshot was modified by later changes", f.Snapshot.Family)
		}
		if reflect.DeepEqual(copies[i], next.Families[i].Snapshot) {
			t.Errorf("%v: later changes did not produce a different snapshot", f.Snapshot.Family)
		}
	}
}

func TestMultipleSlicesMerged(t *testing.T) {
	h := newHarness(t, v4)
	h.addService(svc("ns", "a", "198.19.192.1"))
	T := ptr.To(true)
	// The same IP in two slices: the running one wins over the terminating
	// one whichever slice carries it.
	h.addSlice(slice("ns", "a-x", "a", discovery.AddressTypeIPv4, "http", 8080,
		ep{ip: "198.18.1.5", node: "old", terminating: T, ready: ptr.To(false)}, ep{ip: "198.18.1.1"}))
	h.addSlice(slice("ns", "a-y", "a", discovery.AddressTypeIPv4, "http", 8080,
		ep{ip: "198.18.1.5", node: "new"}, ep{ip: "198.18.1.3"}))
	// A slice port with another name is another Service port; one with the
	// same name but another protocol too.
	other := slice("ns", "a-z", "a", discovery.AddressTypeIPv4, "metrics", 9090, ep{ip: "198.18.1.7"})
	other.Ports = append(other.Ports, discovery.EndpointPort{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolUDP), Port: ptr.To[int32](8080)})
	h.addSlice(other)
	snap := h.Snapshot().Families[0].Snapshot
	eps := snap.Endpoints[spn("ns", "a", "http")]
	if got, want := endpointIPs(eps), []string{"198.18.1.1:8080", "198.18.1.3:8080", "198.18.1.5:8080"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("merged = %v, want %v", got, want)
	}
	if eps[2].NodeName != "new" || eps[2].Terminating {
		t.Errorf("duplicate IP: kept %+v, want the non-terminating one", *eps[2])
	}
	if got := endpointIPs(snap.Endpoints[spn("ns", "a", "metrics")]); !reflect.DeepEqual(got, []string{"198.18.1.7:9090"}) {
		t.Errorf("metrics = %v", got)
	}
	udp := model.ServicePortName{Namespace: "ns", Name: "a", Port: "http", Protocol: model.UDP}
	if got := endpointIPs(snap.Endpoints[udp]); !reflect.DeepEqual(got, []string{"198.18.1.7:8080"}) {
		t.Errorf("http/UDP = %v", got)
	}
	// Endpoints without a Service port are kept but belong to no port.
	if snap.Services[spn("ns", "a", "metrics")] != nil {
		t.Error("metrics has no Service port")
	}
}

func TestSliceMovesBetweenServices(t *testing.T) {
	h := newHarness(t, v4)
	h.addService(svc("ns", "a", "198.19.192.1"))
	h.addService(svc("ns", "b", "198.19.192.2"))
	h.addSlice(slice("ns", "x", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.1"}))
	s1 := h.Snapshot()
	if len(s1.Families[0].Snapshot.Endpoints[spn("ns", "a", "http")]) != 1 {
		t.Fatal("setup")
	}
	moved := slice("ns", "x", "b", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.1"})
	moved.ResourceVersion = "2"
	h.addSlice(moved)
	fs := h.Snapshot().Families[0]
	checkChangedExact(t, s1.Families[0].Snapshot, fs)
	if _, ok := fs.Snapshot.Endpoints[spn("ns", "a", "http")]; ok {
		t.Error("endpoints stayed with the old Service")
	}
	if got := endpointIPs(fs.Snapshot.Endpoints[spn("ns", "b", "http")]); !reflect.DeepEqual(got, []string{"198.18.1.1:8080"}) {
		t.Errorf("new Service endpoints = %v", got)
	}
	// Losing the service-name label drops the slice.
	unlabelled := moved.DeepCopy()
	unlabelled.ResourceVersion = "3"
	delete(unlabelled.Labels, discovery.LabelServiceName)
	h.addSlice(unlabelled)
	if _, ok := h.Snapshot().Families[0].Snapshot.Endpoints[spn("ns", "b", "http")]; ok {
		t.Error("slice without service-name label still feeds its old Service")
	}
	if h.rec.invalidCount("EndpointSlice/"+reasonMissingServiceName) != 1 {
		t.Error("missing label not reported")
	}
}

func TestServiceDeletion(t *testing.T) {
	h := newHarness(t, v4)
	a := svc("ns", "a", "198.19.192.1", withPorts(
		v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 80},
		v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53}))
	h.addService(a)
	h.addService(svc("ns", "b", "198.19.192.2"))
	es := slice("ns", "a-1", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.1"})
	h.addSlice(es)
	s1 := h.Snapshot().Families[0].Snapshot
	if len(s1.Services) != 3 {
		t.Fatalf("services: %v", s1.SortedNames())
	}
	h.delService(a)
	fs := h.Snapshot().Families[0]
	checkChangedExact(t, s1, fs)
	if got := fs.Snapshot.SortedNames(); !reflect.DeepEqual(got, []model.ServicePortName{spn("ns", "b", "http")}) {
		t.Errorf("after delete: %v", got)
	}
	if _, ok := fs.Snapshot.Endpoints[spn("ns", "a", "http")]; !ok {
		t.Error("endpoints are kept until their slices go (a Service may come back)")
	}
	h.delSlice(es)
	fs = h.Snapshot().Families[0]
	if len(fs.Snapshot.Endpoints) != 0 {
		t.Errorf("endpoints left: %v", fs.Snapshot.Endpoints)
	}
	if len(h.t.records) != 1 || len(h.t.sliceSvc) != 0 {
		t.Errorf("tracker keeps state of deleted objects: %d records, %d slices", len(h.t.records), len(h.t.sliceSvc))
	}
	// Adding a label that puts the Service under another proxy removes it.
	b := svc("ns", "b", "198.19.192.2", withRV("2"))
	b.Labels = map[string]string{labelServiceProxyName: "other-proxy"}
	h.addService(b)
	if fs := h.Snapshot().Families[0]; len(fs.Snapshot.Services) != 0 {
		t.Errorf("service owned by another proxy still present: %v", fs.Snapshot.SortedNames())
	}
}

func TestDualStackSplit(t *testing.T) {
	h := newHarness(t, dual)
	h.addService(svc("ns", "a", "198.19.192.1", dualStack("2001:db8:20::1")))
	h.addService(svc("ns", "v6only", "2001:db8:20::2"))
	h.addSlice(slice("ns", "a-4", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.1"}))
	h.addSlice(slice("ns", "a-6", "a", discovery.AddressTypeIPv6, "http", 8080, ep{ip: "2001:db8:10::1"}))
	h.addSlice(slice("ns", "a-fqdn", "a", discovery.AddressTypeFQDN, "http", 8080, ep{ip: "example.com"}))
	st := h.Snapshot()
	v4s, v6s := st.Family(model.IPv4).Snapshot, st.Family(model.IPv6).Snapshot
	if v4s.Family != model.IPv4 || v6s.Family != model.IPv6 || st.Families[0].Snapshot != v4s {
		t.Fatal("families out of order")
	}
	if got := v4s.SortedNames(); !reflect.DeepEqual(got, []model.ServicePortName{spn("ns", "a", "http")}) {
		t.Errorf("IPv4 services %v", got)
	}
	if got := v6s.SortedNames(); !reflect.DeepEqual(got, []model.ServicePortName{spn("ns", "a", "http"), spn("ns", "v6only", "http")}) {
		t.Errorf("IPv6 services %v", got)
	}
	if v4s.Services[spn("ns", "a", "http")].ClusterIP != addr("198.19.192.1") || v6s.Services[spn("ns", "a", "http")].ClusterIP != addr("2001:db8:20::1") {
		t.Error("cluster IPs not split per family")
	}
	if got := endpointIPs(v4s.Endpoints[spn("ns", "a", "http")]); !reflect.DeepEqual(got, []string{"198.18.1.1:8080"}) {
		t.Errorf("IPv4 endpoints %v", got)
	}
	if got := endpointIPs(v6s.Endpoints[spn("ns", "a", "http")]); !reflect.DeepEqual(got, []string{"[2001:db8:10::1]:8080"}) {
		t.Errorf("IPv6 endpoints %v", got)
	}
	if st.EndpointChanges != 2 {
		t.Errorf("FQDN slice counted as a change: %d", st.EndpointChanges)
	}
	// A change to the IPv6 side only leaves the IPv4 snapshot untouched.
	h.addSlice(slice("ns", "a-6", "a", discovery.AddressTypeIPv6, "http", 8080, ep{ip: "2001:db8:10::2"}))
	st2 := h.Snapshot()
	if st2.Family(model.IPv4).Snapshot != v4s || len(st2.Family(model.IPv4).Changed) != 0 {
		t.Error("IPv4 snapshot changed by an IPv6-only change")
	}
	if st2.Family(model.IPv6).Snapshot == v6s || len(st2.Family(model.IPv6).Changed) != 1 {
		t.Error("IPv6 change not reported")
	}
}

func TestTriggerTimes(t *testing.T) {
	h := newHarness(t, dual)
	start := h.t.start
	at := func(d time.Duration) string { return start.Add(d).Format(time.RFC3339Nano) }
	withTrigger := func(es *discovery.EndpointSlice, v string) *discovery.EndpointSlice {
		es.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: v}
		return es
	}
	h.addService(svc("ns", "a", "198.19.192.1"))
	h.addSlice(withTrigger(slice("ns", "a-1", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.1"}), at(2*time.Second)))
	h.addSlice(withTrigger(slice("ns", "a-1", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.2"}), at(3*time.Second)))
	h.addSlice(withTrigger(slice("ns", "a-2", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.3"}), at(time.Second)))
	// Older than the watcher: the initial list must not count.
	h.addSlice(withTrigger(slice("ns", "b-1", "b", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.4"}), at(-time.Hour)))
	// Unparsable: reported, ignored.
	h.addSlice(withTrigger(slice("ns", "c-1", "c", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.5"}), "yesterday"))
	// Other family.
	h.addSlice(withTrigger(slice("ns", "a-6", "a", discovery.AddressTypeIPv6, "http", 8080, ep{ip: "2001:db8:10::1"}), at(5*time.Second)))

	st := h.Snapshot()
	want4 := map[types.NamespacedName]time.Time{nn("ns", "a"): start.Add(time.Second)}
	if got := st.Family(model.IPv4).TriggerTimes; !maps.EqualFunc(got, want4, time.Time.Equal) {
		t.Errorf("IPv4 trigger times %v, want %v", got, want4)
	}
	want6 := map[types.NamespacedName]time.Time{nn("ns", "a"): start.Add(5 * time.Second)}
	if got := st.Family(model.IPv6).TriggerTimes; !maps.EqualFunc(got, want6, time.Time.Equal) {
		t.Errorf("IPv6 trigger times %v, want %v", got, want6)
	}
	if h.rec.invalidCount("EndpointSlice/"+reasonInvalidTriggerTime) != 1 {
		t.Error("bad trigger time not reported")
	}
	if st := h.Snapshot(); st.Families[0].TriggerTimes != nil || st.Families[1].TriggerTimes != nil {
		t.Error("trigger times must be consumed by the snapshot")
	}
	// A deletion drops the pending trigger time of the Service (kube-proxy).
	h.addSlice(withTrigger(slice("ns", "a-1", "a", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.9"}), at(7*time.Second)))
	h.delSlice(slice("ns", "a-2", "a", discovery.AddressTypeIPv4, "http", 8080))
	if st := h.Snapshot(); st.Families[0].TriggerTimes != nil {
		t.Errorf("trigger time survived a slice deletion: %v", st.Families[0].TriggerTimes)
	}
}

func TestBadInputLoggedOncePerVersion(t *testing.T) {
	h := newHarness(t, v4)
	bad := svc("ns", "bad", "198.19.192.9", withPorts(
		v1.ServicePort{Name: "ok", Protocol: v1.ProtocolTCP, Port: 80},
		v1.ServicePort{Name: "broken", Protocol: v1.ProtocolTCP, Port: 0}))
	h.addService(svc("ns", "good", "198.19.192.1"))
	h.addService(bad)
	badSlice := slice("ns", "bad-1", "bad", discovery.AddressTypeIPv4, "ok", 8080, ep{ip: "198.18.1.1"}, ep{ip: "198.18.1.999"})
	h.addSlice(badSlice)
	h.addSlice(slice("ns", "good-1", "good", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.2"}))

	snap := h.Snapshot().Families[0].Snapshot
	if got := snap.SortedNames(); !reflect.DeepEqual(got, []model.ServicePortName{spn("ns", "bad", "ok"), spn("ns", "good", "http")}) {
		t.Errorf("services = %v", got)
	}
	if got := endpointIPs(snap.Endpoints[spn("ns", "bad", "ok")]); !reflect.DeepEqual(got, []string{"198.18.1.1:8080"}) {
		t.Errorf("bad service endpoints = %v", got)
	}
	logs := h.logs.FilterMessage("Skipping invalid part of Service").All()
	if len(logs) != 1 {
		t.Fatalf("service warnings: %d", len(logs))
	}
	f := logs[0].ContextMap()
	if f["service"] != "ns/bad" || f["reason"] != reasonInvalidPort || f["field"] != "spec.ports[1].port" || f["value"] != "0" {
		t.Errorf("log fields: %v", f)
	}
	sl := h.logs.FilterMessage("Skipping invalid part of EndpointSlice").All()
	if len(sl) != 1 || sl[0].ContextMap()["endpointslice"] != "ns/bad-1" || sl[0].ContextMap()["value"] != "198.18.1.999" {
		t.Errorf("slice warnings: %+v", sl)
	}
	if h.rec.invalidCount("Service/"+reasonInvalidPort) != 1 || h.rec.invalidCount("EndpointSlice/"+reasonInvalidEndpointAddress) != 1 {
		t.Errorf("recorder: %v", h.rec.invalid)
	}

	// Resyncs of the same version: no conversion, no log.
	for i := 0; i < 3; i++ {
		if !isResync(bad, bad.DeepCopy()) {
			t.Fatal("resync not detected")
		}
		h.onResync(bad)
	}
	if n := h.logs.FilterMessage("Skipping invalid part of Service").Len(); n != 1 {
		t.Errorf("resyncs logged again: %d", n)
	}
	// A new version is a new object: it is checked (and reported) again.
	bad2 := bad.DeepCopy()
	bad2.ResourceVersion = "2"
	h.addService(bad2)
	if n := h.logs.FilterMessage("Skipping invalid part of Service").Len(); n != 2 {
		t.Errorf("new version not reported: %d", n)
	}
}

func TestNodeFacts(t *testing.T) {
	h := newHarness(t, dual)
	if n := h.Nodes(); n[model.IPv4].Name != testNode || len(n[model.IPv4].Addresses) != 0 {
		t.Errorf("before the Node is seen: %+v", n[model.IPv4])
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.WaitForNode(ctx, 0); err == nil {
		t.Error("WaitForNode must fail when the node was never seen")
	}
	h.Snapshot()

	h.onNode(node(otherNode), false)
	if h.takeSyncs() != 0 || h.Nodes()[model.IPv4].Zone != "" {
		t.Error("another node's object must be ignored")
	}
	h.onNode(node(testNode), false)
	if h.takeSyncs() != 1 {
		t.Error("node change must request a sync")
	}
	nodes, err := h.WaitForNode(context.Background(), NeedAddresses|NeedPodCIDRs)
	if err != nil || nodes[model.IPv4].PodCIDRs[0] != prefix("198.18.1.0/24") || nodes[model.IPv6].PodCIDRs[0] != prefix("2001:db8:10:1::/64") {
		t.Fatalf("WaitForNode: %v %+v", err, nodes)
	}
	st := h.Snapshot()
	if !st.Families[0].NodeChanged || !st.Families[1].NodeChanged || st.Families[0].Node.Zone != "zone-a" {
		t.Errorf("node change not reported: %+v", st.Families[0])
	}
	n1 := st.Families[0].Node

	// Labels other than the zone, conditions, images: no change.
	n2 := node(testNode, func(n *v1.Node) {
		n.ResourceVersion = "2"
		n.Labels["team"] = "x"
		n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}}
	})
	h.onNode(n2, false)
	if h.takeSyncs() != 0 {
		t.Error("irrelevant node update requested a sync")
	}
	if st := h.Snapshot(); st.Families[0].NodeChanged || st.Families[0].Node != n1 {
		t.Error("irrelevant node update reported as a change")
	}
	for name, mutate := range map[string]func(*v1.Node){
		"zone":      func(n *v1.Node) { n.Labels[v1.LabelTopologyZone] = "zone-b" },
		"podCIDR":   func(n *v1.Node) { n.Spec.PodCIDRs = []string{"198.18.2.0/24"} },
		"addresses": func(n *v1.Node) { n.Status.Addresses = n.Status.Addresses[:3] },
		"taint":     func(n *v1.Node) { n.Spec.Taints = []v1.Taint{{Key: toBeDeletedTaint}} },
	} {
		h.onNode(node(testNode, mutate), false)
		if st := h.Snapshot(); !st.Families[0].NodeChanged {
			t.Errorf("%s change not reported", name)
		}
		h.onNode(node(testNode), false)
		h.Snapshot()
	}
	// A change undone before the next snapshot is no change.
	h.onNode(node(testNode, func(n *v1.Node) { n.Labels[v1.LabelTopologyZone] = "zone-x" }), false)
	h.onNode(node(testNode), false)
	if st := h.Snapshot(); st.Families[0].NodeChanged || st.Families[1].NodeChanged {
		t.Error("undone node change reported")
	}

	h.onNode(node(testNode), true)
	st = h.Snapshot()
	if !st.Families[0].NodeChanged || !st.Families[0].Node.Terminating || st.Families[0].Node.PodCIDRs == nil {
		t.Errorf("deleted node: %+v", st.Families[0].Node)
	}
}

func TestWaitForNodeWakesUp(t *testing.T) {
	h := newHarness(t, v4)
	done := make(chan error, 1)
	go func() {
		_, err := h.WaitForNode(context.Background(), NeedPodCIDRs)
		done <- err
	}()
	// Without a pod CIDR the waiter keeps waiting...
	h.onNode(node(testNode, func(n *v1.Node) { n.Spec.PodCIDR, n.Spec.PodCIDRs = "", nil }), false)
	select {
	case err := <-done:
		t.Fatalf("returned before the pod CIDR was set: %v", err)
	default:
	}
	// ...and returns once it is.
	h.onNode(node(testNode), false)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestNewValidates(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no client":      {NodeName: "n", Families: v4},
		"no node":        {Families: v4},
		"no family":      {NodeName: "n"},
		"bad family":     {NodeName: "n", Families: []model.Family{5}},
		"family twice":   {NodeName: "n", Families: []model.Family{model.IPv4, model.IPv4}},
		"negative sync":  {NodeName: "n", Families: v4, ResyncPeriod: -1},
		"three families": {NodeName: "n", Families: []model.Family{model.IPv4, model.IPv6, model.IPv4}},
	} {
		if name != "no client" {
			cfg.Client = newHarness(t, v4).cfg.Client
		}
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
