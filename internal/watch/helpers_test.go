package watch

import (
	"net/netip"
	"slices"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Addresses from the project's address plan (GUIDE.md §3).
const (
	testNode  = "node-a"
	otherNode = "node-b"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func prefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

var v4 = []model.Family{model.IPv4}
var dual = []model.Family{model.IPv4, model.IPv6}

// svc builds a ClusterIP Service with one TCP port 80 named "http"; opts
// adjust it.
func svc(ns, name, clusterIP string, opts ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1"},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			Ports:      []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}},
		},
	}
	if a, err := netip.ParseAddr(clusterIP); err == nil {
		if a.Is4() {
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol}
		} else {
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
		}
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func withPorts(ports ...v1.ServicePort) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.Ports = ports }
}

func withRV(rv string) func(*v1.Service) {
	return func(s *v1.Service) { s.ResourceVersion = rv }
}

func dualStack(v6 string) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, v6)
		s.Spec.IPFamilies = append(s.Spec.IPFamilies, v1.IPv6Protocol)
	}
}

// ep describes one endpoint for slice().
type ep struct {
	ip          string
	node        string
	ready       *bool
	serving     *bool
	terminating *bool
}

// slice builds an EndpointSlice of service svcName with one port and the
// given endpoints.
func slice(ns, name, svcName string, at discovery.AddressType, portName string, port int32, eps ...ep) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name, ResourceVersion: "1",
			Labels: map[string]string{discovery.LabelServiceName: svcName},
		},
		AddressType: at,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(portName), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(port)}},
	}
	for _, e := range eps {
		d := discovery.Endpoint{
			Addresses:  []string{e.ip},
			Conditions: discovery.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating},
		}
		if e.node != "" {
			d.NodeName = ptr.To(e.node)
		}
		es.Endpoints = append(es.Endpoints, d)
	}
	return es
}

func spn(ns, name, port string) model.ServicePortName {
	return model.ServicePortName{Namespace: ns, Name: name, Port: port, Protocol: model.TCP}
}

func nn(ns, name string) types.NamespacedName { return types.NamespacedName{Namespace: ns, Name: name} }

// fakeRecorder counts what the watcher reports.
type fakeRecorder struct {
	mu               sync.Mutex
	invalid          map[string]int // "kind/reason"
	svcChanges       int
	epChanges        int
	pendSvc, pendEps int
}

var _ Recorder = (*fakeRecorder)(nil)

func (r *fakeRecorder) InvalidObject(kind, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.invalid == nil {
		r.invalid = map[string]int{}
	}
	r.invalid[kind+"/"+reason]++
}
func (r *fakeRecorder) ServiceChange()  { r.mu.Lock(); r.svcChanges++; r.mu.Unlock() }
func (r *fakeRecorder) EndpointChange() { r.mu.Lock(); r.epChanges++; r.mu.Unlock() }
func (r *fakeRecorder) ChangesPending(s, e int) {
	r.mu.Lock()
	r.pendSvc, r.pendEps = s, e
	r.mu.Unlock()
}
func (r *fakeRecorder) invalidCount(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.invalid[key]
}

// harness is a Watcher that tests drive by calling its handlers directly.
type harness struct {
	*Watcher
	rec   *fakeRecorder
	logs  *observer.ObservedLogs
	syncs int
}

func newHarness(t testing.TB, fams []model.Family) *harness {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	h := &harness{rec: &fakeRecorder{}, logs: logs}
	w, err := New(Config{
		Client:      fake.NewClientset(),
		NodeName:    testNode,
		Families:    fams,
		Logger:      zap.New(core),
		Recorder:    h.rec,
		RequestSync: func() { h.syncs++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	h.Watcher = w
	return h
}

// takeSyncs returns and resets the number of RequestSync calls.
func (h *harness) takeSyncs() int { n := h.syncs; h.syncs = 0; return n }

func (h *harness) addService(s *v1.Service)             { h.onService(s, false) }
func (h *harness) delService(s *v1.Service)             { h.onService(s, true) }
func (h *harness) addSlice(es *discovery.EndpointSlice) { h.onSlice(es, false) }
func (h *harness) delSlice(es *discovery.EndpointSlice) { h.onSlice(es, true) }

func endpointIPs(eps []*model.Endpoint) []string {
	out := make([]string, len(eps))
	for i, e := range eps {
		out[i] = e.String()
	}
	return out
}

func sortedNames(m map[model.ServicePortName]struct{}) []model.ServicePortName {
	names := make([]model.ServicePortName, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b model.ServicePortName) int {
		if a.Less(b) {
			return -1
		}
		if b.Less(a) {
			return 1
		}
		return 0
	})
	return names
}

type runtimeObject = runtime.Object
