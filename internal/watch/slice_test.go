package watch

import (
	"reflect"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kpr-proxy/kpr/internal/model"
)

func TestConvertSliceConditions(t *testing.T) {
	T, F := ptr.To(true), ptr.To(false)
	tests := []struct {
		name                        string
		ready, serving, terminating *bool
		want                        [3]bool // ready, serving, terminating
	}{
		{"all nil", nil, nil, nil, [3]bool{true, true, false}},
		{"not ready, serving nil means serving (API and kube-proxy)", F, nil, nil, [3]bool{false, true, false}},
		{"terminating and serving", F, T, T, [3]bool{false, true, true}},
		{"terminating, not serving", F, F, T, [3]bool{false, false, true}},
		{"ready explicit", T, T, F, [3]bool{true, true, false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			es := slice("ns", "s-1", "s", discovery.AddressTypeIPv4, "http", 8080,
				ep{ip: "198.18.1.1", ready: tc.ready, serving: tc.serving, terminating: tc.terminating})
			e, probs := convertSlice(es, model.IPv4, "s", testNode)
			if len(probs) != 0 {
				t.Fatalf("problems: %+v", probs)
			}
			got := e.ports[0].eps[0]
			if [3]bool{got.Ready, got.Serving, got.Terminating} != tc.want {
				t.Errorf("ready/serving/terminating = %v/%v/%v, want %v", got.Ready, got.Serving, got.Terminating, tc.want)
			}
		})
	}
}

func TestConvertSlice(t *testing.T) {
	es := slice("ns", "s-1", "s", discovery.AddressTypeIPv4, "http", 8080,
		ep{ip: "198.18.1.20", node: testNode},
		ep{ip: "198.18.1.3", node: otherNode},
		ep{ip: "198.18.1.100"},
	)
	es.Ports = append(es.Ports, discovery.EndpointPort{Name: ptr.To("dns"), Protocol: ptr.To(v1.ProtocolUDP), Port: ptr.To[int32](53)})
	es.Endpoints[1].Zone = ptr.To("zone-b")
	es.Endpoints[1].Hints = &discovery.EndpointHints{
		ForZones: []discovery.ForZone{{Name: "zone-b"}, {Name: "zone-c"}},
		ForNodes: []discovery.ForNode{{Name: otherNode}},
	}
	e, probs := convertSlice(es, model.IPv4, "s", testNode)
	if len(probs) != 0 {
		t.Fatalf("problems: %+v", probs)
	}
	if e.name != "s-1" || e.service != "s" || e.family != model.IPv4 || len(e.ports) != 2 {
		t.Fatalf("entry: %+v", e)
	}
	if e.ports[0].name != "http" || e.ports[0].proto != model.TCP || e.ports[1].name != "dns" || e.ports[1].proto != model.UDP {
		t.Fatalf("ports: %+v", e.ports)
	}
	if got, want := endpointIPs(e.ports[0].eps), []string{"198.18.1.3:8080", "198.18.1.20:8080", "198.18.1.100:8080"}; !reflect.DeepEqual(got, want) {
		t.Errorf("http endpoints (sorted by IP) = %v, want %v", got, want)
	}
	if got, want := endpointIPs(e.ports[1].eps), []string{"198.18.1.3:53", "198.18.1.20:53", "198.18.1.100:53"}; !reflect.DeepEqual(got, want) {
		t.Errorf("dns endpoints = %v, want %v", got, want)
	}
	want := model.Endpoint{
		IP: addr("198.18.1.3"), Port: 8080, Ready: true, Serving: true,
		NodeName: otherNode, Zone: "zone-b",
		ZoneHints: []string{"zone-b", "zone-c"}, NodeHints: []string{otherNode},
	}
	if got := *e.ports[0].eps[0]; !reflect.DeepEqual(got, want) {
		t.Errorf("endpoint:\n got %+v\nwant %+v", got, want)
	}
	if !e.ports[0].eps[1].IsLocal || e.ports[0].eps[0].IsLocal || e.ports[0].eps[2].IsLocal {
		t.Errorf("IsLocal must be set only for endpoints on %s", testNode)
	}
}

func TestConvertSliceBadInput(t *testing.T) {
	es := slice("ns", "s-1", "s", discovery.AddressTypeIPv4, "http", 8080,
		ep{ip: "198.18.1.1"},
		ep{ip: "198.18.1.300"},   // malformed
		ep{ip: "2001:db8:10::1"}, // wrong family for an IPv4 slice
		ep{ip: "198.18.1.2"},
	)
	es.Endpoints = append(es.Endpoints, discovery.Endpoint{}) // no address
	es.Ports = append(es.Ports,
		discovery.EndpointPort{Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](1)},                       // nil name
		discovery.EndpointPort{Name: ptr.To("nil-port"), Protocol: ptr.To(v1.ProtocolTCP)},                     // nil port
		discovery.EndpointPort{Name: ptr.To("zero"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](0)}, // 0
		discovery.EndpointPort{Name: ptr.To("big"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](65536)},
		discovery.EndpointPort{Name: ptr.To("icmp"), Protocol: ptr.To(v1.Protocol("ICMP")), Port: ptr.To[int32](1)},
		discovery.EndpointPort{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](9)}, // duplicate
		discovery.EndpointPort{Name: ptr.To("noproto"), Port: ptr.To[int32](9090)},                             // nil protocol: TCP
	)
	e, probs := convertSlice(es, model.IPv4, "s", testNode)
	var reasons []string
	for _, p := range probs {
		reasons = append(reasons, p.Reason)
	}
	wantReasons := []string{
		reasonInvalidEndpointAddress, reasonEndpointFamilyMismatch, reasonNoEndpointAddress,
		reasonMissingPortName, reasonInvalidPort, reasonInvalidPort, reasonInvalidPort, reasonUnknownProtocol, reasonDuplicatePort,
	}
	if !reflect.DeepEqual(reasons, wantReasons) {
		t.Errorf("reasons = %v\nwant %v", reasons, wantReasons)
	}
	if len(e.ports) != 2 || e.ports[0].name != "http" || e.ports[1].name != "noproto" || e.ports[1].proto != model.TCP {
		t.Fatalf("ports = %+v", e.ports)
	}
	if got, want := endpointIPs(e.ports[0].eps), []string{"198.18.1.1:8080", "198.18.1.2:8080"}; !reflect.DeepEqual(got, want) {
		t.Errorf("endpoints = %v, want %v", got, want)
	}
}

func TestSortDedupePrefersNonTerminating(t *testing.T) {
	T := ptr.To(true)
	for _, tc := range []struct {
		name string
		eps  []ep
		want string // node of the survivor of 198.18.1.1
	}{
		{"terminating first", []ep{{ip: "198.18.1.1", node: "old", terminating: T}, {ip: "198.18.1.1", node: "new"}}, "new"},
		{"terminating last", []ep{{ip: "198.18.1.1", node: "new"}, {ip: "198.18.1.1", node: "old", terminating: T}}, "new"},
		{"both running: later wins", []ep{{ip: "198.18.1.1", node: "a"}, {ip: "198.18.1.1", node: "b"}}, "b"},
		{"both terminating: first kept", []ep{{ip: "198.18.1.1", node: "a", terminating: T}, {ip: "198.18.1.1", node: "b", terminating: T}}, "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			es := slice("ns", "s-1", "s", discovery.AddressTypeIPv4, "http", 80, append(tc.eps, ep{ip: "198.18.1.0"})...)
			e, _ := convertSlice(es, model.IPv4, "s", testNode)
			eps := e.ports[0].eps
			if len(eps) != 2 || eps[1].NodeName != tc.want {
				t.Errorf("got %v (node %q), want survivor on %q", endpointIPs(eps), eps[len(eps)-1].NodeName, tc.want)
			}
		})
	}
}

func TestTransformsKeepWhatTheProxyReads(t *testing.T) {
	s := svc("ns", "s", "198.19.192.10", dualStack("2001:db8:20::a"), func(s *v1.Service) {
		s.Labels = map[string]string{"app": "x", labelServiceProxyName: "other"}
		s.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}", v1.AnnotationTopologyMode: "Auto"}
		s.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
		s.Spec.Selector = map[string]string{"app": "x"}
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].TargetPort = intstr.FromInt32(8080)
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalIPs = []string{"203.0.113.1"}
		s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24"}
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 31000
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.10", Hostname: "x", Ports: []v1.PortStatus{{Port: 1}}}}
		s.Status.Conditions = []metav1.Condition{{Type: "x"}}
	})
	obj, _ := transformService(s)
	ts := obj.(*v1.Service)
	if ts.ManagedFields != nil || ts.Spec.Selector != nil || ts.Status.Conditions != nil || ts.Spec.Ports[0].TargetPort.IntValue() != 0 ||
		ts.Status.LoadBalancer.Ingress[0].Hostname != "" || len(ts.Annotations) != 1 || len(ts.Labels) != 1 {
		t.Errorf("transformed Service keeps unused data: %+v", ts)
	}
	// Everything the converter reads survives.
	before, _ := convertService(s, dual)
	after, _ := convertService(ts, dual)
	if !reflect.DeepEqual(deref(before), deref(after)) {
		t.Errorf("conversion differs after transform:\n%+v\n%+v", deref(before), deref(after))
	}
	if !excludedService(ts) {
		t.Error("transform dropped the service-proxy-name label the handler checks")
	}
	// Idempotent.
	again, _ := transformService(ts)
	if !reflect.DeepEqual(again, ts) {
		t.Error("transformService is not idempotent")
	}

	es := slice("ns", "s-1", "s", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "198.18.1.1", node: testNode})
	es.Labels["endpointslice.kubernetes.io/managed-by"] = "x"
	es.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: "2026-01-02T03:04:05Z", "other": "y"}
	es.Endpoints[0].TargetRef = &v1.ObjectReference{Kind: "Pod", Name: "p"}
	es.Endpoints[0].Hostname = ptr.To("h")
	es.Endpoints[0].Addresses = append(es.Endpoints[0].Addresses, "198.18.1.2")
	es.Ports[0].AppProtocol = ptr.To("http")
	obj, _ = transformEndpointSlice(es)
	tes := obj.(*discovery.EndpointSlice)
	if ref := tes.Endpoints[0].TargetRef; ref == nil || *ref != (v1.ObjectReference{Kind: "Pod", Name: "p"}) {
		t.Errorf("transformed slice must keep only the pod's kind and name: %+v", ref)
	}
	if tes.Endpoints[0].Hostname != nil || len(tes.Endpoints[0].Addresses) != 1 ||
		tes.Ports[0].AppProtocol != nil || len(tes.Labels) != 1 || len(tes.Annotations) != 1 {
		t.Errorf("transformed slice keeps unused data: %+v", tes)
	}
	e1, _ := convertSlice(es, model.IPv4, "s", testNode)
	e2, _ := convertSlice(tes, model.IPv4, "s", testNode)
	if !sameSlice(e1, e2) {
		t.Error("conversion differs after transform")
	}
	if again, _ := transformEndpointSlice(tes); !reflect.DeepEqual(again, tes) {
		t.Error("transformEndpointSlice is not idempotent")
	}
}

func deref(p svcPorts) [2][]model.ServicePort {
	var out [2][]model.ServicePort
	for i := range p {
		for _, sp := range p[i] {
			out[i] = append(out[i], *sp)
		}
	}
	return out
}
