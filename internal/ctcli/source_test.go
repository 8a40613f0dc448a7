package ctcli

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func ptr[T any](v T) *T { return &v }

type apiEP struct {
	ip, node, pod string
	ready         bool
}

func apiSlice(ns, name, svc string, at discovery.AddressType, port int32, proto v1.Protocol, eps ...apiEP) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: at,
		Ports:       []discovery.EndpointPort{{Name: ptr("dns"), Port: ptr(port), Protocol: ptr(proto)}},
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{e.ip},
			Conditions: discovery.EndpointConditions{Ready: ptr(e.ready), Serving: ptr(e.ready), Terminating: ptr(!e.ready)},
			NodeName:   ptr(e.node),
			TargetRef:  &v1.ObjectReference{Kind: "Pod", Namespace: ns, Name: e.pod},
		})
	}
	return s
}

// apiObjects is a dual-stack kube-dns plus a single-stack UDP Service with
// internalTrafficPolicy Local (a policy the proxy's JSON view does not
// carry, so only the API source can judge it).
func apiObjects() []runtime.Object {
	dual := v1.IPFamilyPolicyRequireDualStack
	local := v1.ServiceInternalTrafficPolicyLocal
	return []runtime.Object{
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}},
		&v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns"},
			Spec: v1.ServiceSpec{
				Type: v1.ServiceTypeClusterIP, ClusterIP: "198.19.192.10", ClusterIPs: []string{"198.19.192.10", "2001:db8:20::a"},
				IPFamilies: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, IPFamilyPolicy: &dual,
				Ports: []v1.ServicePort{{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}},
			},
		},
		apiSlice("kube-system", "kube-dns-v4", "kube-dns", discovery.AddressTypeIPv4, 53, v1.ProtocolUDP,
			apiEP{"198.18.1.5", "node1", "coredns-a", true}, apiEP{"198.18.2.7", "node2", "coredns-b", false}),
		apiSlice("kube-system", "kube-dns-v6", "kube-dns", discovery.AddressTypeIPv6, 53, v1.ProtocolUDP,
			apiEP{"2001:db8:10:1::5", "node1", "coredns-a", true}, apiEP{"2001:db8:10:2::7", "node2", "coredns-b", false}),
		&v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "stats"},
			Spec: v1.ServiceSpec{
				Type: v1.ServiceTypeClusterIP, ClusterIP: "198.19.192.50", ClusterIPs: []string{"198.19.192.50"},
				IPFamilies: []v1.IPFamily{v1.IPv4Protocol}, InternalTrafficPolicy: &local,
				Ports: []v1.ServicePort{{Name: "dns", Port: 8125, Protocol: v1.ProtocolUDP}},
			},
		},
		apiSlice("default", "stats-1", "stats", discovery.AddressTypeIPv4, 8125, v1.ProtocolUDP,
			apiEP{"198.18.1.30", "node1", "statsd-local", true}, apiEP{"198.18.2.30", "node2", "statsd-remote", true}),
	}
}

// --source api reads Services and EndpointSlices through the proxy's own
// conversion, in both families, with pods, nodes and traffic policies.
func TestAPISource(t *testing.T) {
	e := newEnv(t)
	e.ct.Add(
		flow(udp, "198.18.1.40:40100", "198.19.192.50:8125", "198.18.1.30:8125", "198.18.1.40:40100", replied|dnat, 20, 0),
		flow(udp, "198.18.1.41:40101", "198.19.192.50:8125", "198.18.2.30:8125", "198.18.1.41:40101", replied|dnat, 20, 0),
	)
	var gotKubeconfig string
	e.cfg.KubeClient = func(kc string) (kubernetes.Interface, string, error) {
		gotKubeconfig = kc
		return fake.NewClientset(apiObjects()...), "https://apiserver.test", nil
	}
	stdout, stderr, code := e.runCtx(context.Background(), "stale", "--source", "api", "--kubeconfig", "/k/config", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if gotKubeconfig != "/k/config" {
		t.Errorf("kubeconfig %q passed to the client", gotKubeconfig)
	}
	var doc JSONDoc
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Source != "apiserver https://apiserver.test" || doc.Node != "node1" {
		t.Errorf("source %q node %q", doc.Source, doc.Node)
	}
	got := map[string]string{}
	for _, r := range doc.Entries {
		got[r.Client] = r.Service + " " + r.Reason
	}
	want := map[string]string{
		// Both families of the dual-stack Service, pods from targetRef.
		"198.18.1.21:40002":         "kube-system/kube-dns:dns endpoint 198.18.2.7:53 (pod coredns-b on node2) is terminating and no longer serving",
		"198.18.1.22:40003":         "kube-system/kube-dns:dns endpoint 198.18.3.9:53 is no longer an endpoint",
		"198.18.1.23:40004":         "kube-system/kube-dns:dns Service had no endpoints when the entry was created (not DNATed)",
		"[2001:db8:10:1::21]:40011": "kube-system/kube-dns:dns endpoint [2001:db8:10:2::7]:53 (pod coredns-b on node2) is terminating and no longer serving",
	}
	// internalTrafficPolicy Local: the remote endpoint still serves, so a
	// flow to it is left alone although this node sends new traffic
	// elsewhere.
	if _, ok := got["198.18.1.41:40101"]; ok {
		t.Errorf("entry to a serving remote endpoint reported stale")
	}
	for c, w := range want {
		if got[c] != w {
			t.Errorf("client %s: got %q, want %q", c, got[c], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d stale entries, want %d: %v", len(got), len(want), got)
	}
}

// --source auto falls back to the apiserver when the proxy does not answer,
// and says so.
func TestAutoFallsBackToAPI(t *testing.T) {
	e := newEnv(t)
	e.cfg.KubeClient = func(string) (kubernetes.Interface, string, error) {
		return fake.NewClientset(apiObjects()...), "https://apiserver.test", nil
	}
	url := e.proxy.URL
	e.proxy.Close()
	stdout, stderr, code := e.runCtx(context.Background(), "list", "--proxy-url", url, "--service", "kube-system/kube-dns")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	mustContain(t, "stderr", stderr, "note: proxy debug endpoint "+url+"/debug/kpr/snapshot is unreachable", "using apiserver https://apiserver.test")
	mustContain(t, "stdout", stdout, "coredns-a", "[2001:db8:10:1::20]:40010")
}

// Missing RBAC is named, not waited on forever.
func TestAPIForbidden(t *testing.T) {
	e := newEnv(t)
	e.cfg.KubeClient = func(string) (kubernetes.Interface, string, error) {
		c := fake.NewClientset(apiObjects()...)
		c.PrependReactor("list", "endpointslices", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "discovery.k8s.io", Resource: "endpointslices"}, "", errors.New("no RBAC"))
		})
		return c, "https://apiserver.test", nil
	}
	_, stderr, code := e.runCtx(context.Background(), "list", "--source", "api")
	if code != 1 {
		t.Errorf("exit %d", code)
	}
	mustContain(t, "stderr", stderr, "apiserver https://apiserver.test: cannot list endpointslices", "forbidden",
		"needs list and watch on services, endpointslices.discovery.k8s.io and nodes")
	if strings.Contains(stderr, "proxy") && !strings.Contains(stderr, "proxy conntrack list") {
		t.Errorf("--source api mentions the proxy: %s", stderr)
	}
}
