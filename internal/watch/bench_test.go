package watch

import (
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/kpr-proxy/kpr/internal/model"
)

const (
	benchServices  = 10000
	benchEndpoints = 10
)

// benchEndpointIP spreads the scale-bench endpoints over the ranges the
// address plan reserves for them (198.18.0.0/16 and 198.19.0.0/17).
func benchEndpointIP(k int) string {
	k %= 65536 + 32768
	base := netip.MustParseAddr("198.18.0.0").As4()
	if k >= 65536 {
		base = netip.MustParseAddr("198.19.0.0").As4()
		k -= 65536
	}
	base[2] += byte(k >> 8)
	base[3] += byte(k)
	return netip.AddrFrom4(base).String()
}

// benchObjects builds Services and slices shaped like what an apiserver
// sends (managed fields, selectors, target refs...), so the transforms have
// something to drop.
func benchObjects(n, m int) ([]*v1.Service, []*discovery.EndpointSlice) {
	svcs := make([]*v1.Service, n)
	slices := make([]*discovery.EndpointSlice, n)
	svcBase := netip.MustParseAddr("198.19.192.0").As4()
	managed := []metav1.ManagedFieldsEntry{{
		Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
		FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: make([]byte, 600)},
	}}
	for i := range n {
		ip := svcBase
		ip[2] += byte(i >> 8)
		ip[3] += byte(i)
		name := "svc-" + strconv.Itoa(i)
		ns := "ns-" + strconv.Itoa(i%100)
		s := svc(ns, name, netip.AddrFrom4(ip).String())
		s.UID = types.UID(fmt.Sprintf("0b2d2f0e-1f55-4a4d-9d1c-%012d", i))
		s.Labels = map[string]string{"app": name}
		s.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": string(make([]byte, 400))}
		s.ManagedFields = managed
		s.Spec.Selector = map[string]string{"app": name}
		s.Spec.Ports[0].TargetPort.IntVal = 8080
		s.Spec.SessionAffinity = v1.ServiceAffinityNone
		s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicySingleStack)
		s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyCluster)
		svcs[i] = s

		var eps []ep
		for j := range m {
			eps = append(eps, ep{ip: benchEndpointIP(i*m + j), node: "node-" + strconv.Itoa((i+j)%100),
				ready: ptr.To(true), serving: ptr.To(true), terminating: ptr.To(false)})
		}
		es := slice(ns, name+"-abcde", name, discovery.AddressTypeIPv4, "http", 8080, eps...)
		es.Labels["endpointslice.kubernetes.io/managed-by"] = "endpointslice-controller.k8s.io"
		es.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: "2026-01-02T03:04:05Z"}
		es.ManagedFields = managed
		for j := range es.Endpoints {
			e := &es.Endpoints[j]
			e.TargetRef = &v1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name + "-pod-" + strconv.Itoa(j), UID: "0b2d2f0e-1f55-4a4d-9d1c-000000000000"}
			e.Zone = ptr.To("zone-" + strconv.Itoa(j%3))
		}
		slices[i] = es
	}
	return svcs, slices
}

func benchWatcher(b testing.TB) *Watcher {
	w, err := New(Config{Client: fake.NewClientset(), NodeName: "node-0", Families: []model.Family{model.IPv4}})
	if err != nil {
		b.Fatal(err)
	}
	return w
}

func ingest(w *Watcher, svcs []*v1.Service, slices []*discovery.EndpointSlice) {
	for _, s := range svcs {
		w.onService(s, false)
	}
	for _, es := range slices {
		w.onSlice(es, false)
	}
}

// BenchmarkSnapshotFromScratch: the first snapshot of 10k Services × 10
// endpoints, events already recorded (the cold-start cost on the sync
// goroutine).
func BenchmarkSnapshotFromScratch(b *testing.B) {
	svcs, slices := benchObjects(benchServices, benchEndpoints)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		w := benchWatcher(b)
		ingest(w, svcs, slices)
		b.StartTimer()
		st := w.Snapshot()
		if len(st.Families[0].Snapshot.Services) != benchServices {
			b.Fatal("wrong snapshot")
		}
	}
}

// BenchmarkIngestAndSnapshot: all 20k add events through the handlers
// (conversion, validation, change tracking) plus the first snapshot.
func BenchmarkIngestAndSnapshot(b *testing.B) {
	svcs, slices := benchObjects(benchServices, benchEndpoints)
	b.ReportAllocs()
	for b.Loop() {
		w := benchWatcher(b)
		ingest(w, svcs, slices)
		w.Snapshot()
	}
}

// BenchmarkSnapshotAfterOneServiceChange: one Service update event and the
// next snapshot, with 10k Services × 10 endpoints in place.
func BenchmarkSnapshotAfterOneServiceChange(b *testing.B) {
	svcs, slices := benchObjects(benchServices, benchEndpoints)
	w := benchWatcher(b)
	ingest(w, svcs, slices)
	w.Snapshot()
	versions := [2]*v1.Service{svcs[42].DeepCopy(), svcs[42].DeepCopy()}
	versions[1].Spec.Ports[0].Port = 81
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		v := versions[i%2].DeepCopy()
		v.ResourceVersion = strconv.Itoa(i + 10)
		w.onService(v, false)
		fs := w.Snapshot().Families[0]
		if len(fs.Changed) != 1 {
			b.Fatalf("changed %d", len(fs.Changed))
		}
	}
}

// BenchmarkSnapshotAfterOneEndpointChange: one EndpointSlice update (an
// endpoint turns not-ready) and the next snapshot.
func BenchmarkSnapshotAfterOneEndpointChange(b *testing.B) {
	svcs, slices := benchObjects(benchServices, benchEndpoints)
	w := benchWatcher(b)
	ingest(w, svcs, slices)
	w.Snapshot()
	versions := [2]*discovery.EndpointSlice{slices[42].DeepCopy(), slices[42].DeepCopy()}
	versions[1].Endpoints[3].Conditions.Ready = ptr.To(false)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		v := versions[i%2].DeepCopy()
		v.ResourceVersion = strconv.Itoa(i + 10)
		w.onSlice(v, false)
		fs := w.Snapshot().Families[0]
		if len(fs.Changed) != 1 {
			b.Fatalf("changed %d", len(fs.Changed))
		}
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkRetainedMemory reports what stays on the heap for 10k Services ×
// 10 endpoints: the API objects as decoded, the same objects after the
// informer transforms (what the informer caches hold), and what the tracker
// with its published snapshot adds on top of those (the proxy's only other
// copy; it shares strings with the cached objects).
func BenchmarkRetainedMemory(b *testing.B) {
	for b.Loop() {
		base := heapInUse()
		svcs, slices := benchObjects(benchServices, benchEndpoints)
		raw := heapInUse() - base

		tSvcs := make([]*v1.Service, len(svcs))
		tSlices := make([]*discovery.EndpointSlice, len(slices))
		for i := range svcs {
			o, _ := transformService(svcs[i])
			tSvcs[i] = o.(*v1.Service)
			o, _ = transformEndpointSlice(slices[i])
			tSlices[i] = o.(*discovery.EndpointSlice)
		}
		svcs, slices = nil, nil
		transformed := heapInUse() - base

		w := benchWatcher(b)
		ingest(w, tSvcs, tSlices)
		st := w.Snapshot()
		both := heapInUse() - base
		runtime.KeepAlive(st)
		runtime.KeepAlive(w)
		runtime.KeepAlive(tSvcs)
		runtime.KeepAlive(tSlices)

		b.ReportMetric(float64(raw)/(1<<20), "raw-objects-MB")
		b.ReportMetric(float64(transformed)/(1<<20), "transformed-objects-MB")
		b.ReportMetric(float64(both-transformed)/(1<<20), "tracker+snapshot-MB")
	}
}
