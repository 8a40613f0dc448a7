package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/kpr-proxy/kpr/e2e/framework"
)

// testHealthzAndMetrics: after the first sync /healthz and /livez answer 200
// and the metrics port exports kube-proxy's sync metrics, with values showing
// that syncs happened.
func testHealthzAndMetrics(t *testing.T, e *env) {
	ctx := context.Background()
	for _, p := range e.proxies {
		for _, path := range []string{"/healthz", "/livez"} {
			url := fmt.Sprintf("http://%s%s", hostPort(p.Node.IPv4.String(), framework.ProxyHealthzPort), path)
			code, body, err := p.Node.HTTPGet(ctx, url)
			if err != nil {
				t.Fatalf("%s on %s: %v", path, p.Node.Name, err)
			}
			if code != 200 {
				t.Errorf("%s on %s: HTTP %d (%s), want 200 after the first sync", path, p.Node.Name, code, strings.TrimSpace(body))
			}
			if path == "/healthz" {
				var v map[string]any
				if err := json.Unmarshal([]byte(body), &v); err != nil {
					t.Errorf("/healthz on %s: body %q is not JSON (kube-proxy answers {\"lastUpdated\":…,\"currentTime\":…}): %v", p.Node.Name, body, err)
				} else if _, ok := v["lastUpdated"]; !ok {
					t.Errorf("/healthz on %s: body %q has no lastUpdated", p.Node.Name, body)
				}
			}
		}
		body, err := p.Metrics(ctx)
		if err != nil {
			t.Fatalf("metrics on %s: %v", p.Node.Name, err)
		}
		// Exported by both kube-proxy and kpr once a sync has run; the
		// first group must be > 0 by now. (The restore-failure counters
		// are label vectors upstream, absent until a failure happens, so
		// they are not required here.)
		positive := []string{
			"kubeproxy_sync_proxy_rules_duration_seconds_count",
			"kubeproxy_sync_proxy_rules_duration_seconds_bucket",
			"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			"kubeproxy_sync_full_proxy_rules_duration_seconds_count",
			"kubeproxy_sync_proxy_rules_iptables_total",
			"kubeproxy_sync_proxy_rules_service_changes_total",
			"kubeproxy_sync_proxy_rules_endpoint_changes_total",
			"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
		}
		present := []string{
			"kubeproxy_sync_proxy_rules_service_changes_pending",
			"kubeproxy_sync_proxy_rules_endpoint_changes_pending",
		}
		for _, name := range append(positive, present...) {
			v, ok := sumMetric(body, name)
			switch {
			case !ok:
				t.Errorf("metrics on %s: %s missing", p.Node.Name, name)
			case slices.Contains(positive, name) && v <= 0:
				t.Errorf("metrics on %s: %s = %v, want > 0 after the first sync", p.Node.Name, name, v)
			}
		}
	}
}

// testClusterIP: TCP and UDP to a ClusterIP from a pod on each node reach a
// backend on the same node and one on the other node, with the client pod's
// own address as source (no masquerading inside the cluster CIDR); a node's
// host network reaches it too.
func testClusterIP(t *testing.T, e *env) {
	ns := "s-clusterip"
	e.pod(t, ns, "a", 0, labels("web"))
	e.pod(t, ns, "b", 1, labels("web"))
	svc := e.createService(t, newService(ns, "web", labels("web"), tcpPort("tcp", 80), udpPort("udp", 80)))
	vip := clusterIP(t, svc, false)
	for _, proto := range []string{"tcp", "udp"} {
		for _, cl := range e.clients {
			expectBackends(t, cl.NetNS, proto, hostPort(vip, 80), "a", "b")
			r, err := query(context.Background(), cl.NetNS, proto, hostPort(vip, 80))
			if err != nil {
				t.Fatal(err)
			}
			if r.ClientIP() != cl.IPv4().String() {
				t.Errorf("%s from %s answered by %s seeing client %s, want the pod's own %s (pod-to-Service traffic is not masqueraded)", proto, cl.Name, r.Pod, r.ClientIP(), cl.IPv4())
			}
		}
	}
	for _, n := range e.c.Nodes() {
		expectBackends(t, n.NetNS, "tcp", hostPort(vip, 80), "a", "b")
	}
}

// testNodePort: TCP and UDP NodePorts answer from outside via both nodes,
// reaching backends on both; with externalTrafficPolicy Cluster the source is
// masqueraded. A pod reaches another node's NodePort too.
func testNodePort(t *testing.T, e *env) {
	ns := "s-nodeport"
	e.pod(t, ns, "a", 0, labels("web"))
	e.pod(t, ns, "b", 1, labels("web"))
	s := newService(ns, "web", labels("web"), tcpPort("tcp", 80), udpPort("udp", 80))
	s.Spec.Type = corev1.ServiceTypeNodePort
	svc := e.createService(t, s)
	out := e.c.Outside()
	for _, n := range e.c.Nodes() {
		for _, proto := range []string{"tcp", "udp"} {
			addr := hostPort(n.IPv4.String(), nodePortOf(t, svc, proto))
			expectBackends(t, out.NetNS, proto, addr, "a", "b")
			r, err := query(context.Background(), out.NetNS, proto, addr)
			if err != nil {
				t.Fatal(err)
			}
			if r.ClientIP() == framework.OutsideIPv4.String() {
				t.Errorf("%s NodePort via %s: backend %s saw the outside client's address %s; externalTrafficPolicy Cluster masquerades", proto, n.Name, r.Pod, r.ClientIP())
			}
		}
	}
	expectBackends(t, e.clients[0].NetNS, "tcp", hostPort(e.c.Node(1).IPv4.String(), nodePortOf(t, svc, "tcp")), "a", "b")
}

// testLoadBalancer: a LoadBalancer Service's ingress IPs (set in its status as
// a cloud controller would) answer from outside, whichever node the
// "cloud" sends the traffic to, and from inside the cluster.
func testLoadBalancer(t *testing.T, e *env) {
	ns := "s-lb"
	e.pod(t, ns, "a", 0, labels("web"))
	e.pod(t, ns, "b", 1, labels("web"))
	s := newService(ns, "web", labels("web"), tcpPort("tcp", 80), udpPort("udp", 80))
	s.Spec.Type = corev1.ServiceTypeLoadBalancer
	e.createService(t, s)
	const viaNode1, viaNode2 = "203.0.113.10", "203.0.113.11"
	e.setLoadBalancerIngress(t, ns, "web", corev1.LoadBalancerIngress{IP: viaNode1}, corev1.LoadBalancerIngress{IP: viaNode2})
	e.routeLoadBalancer(t, viaNode2, e.c.Node(1))
	out := e.c.Outside().NetNS
	for _, proto := range []string{"tcp", "udp"} {
		expectBackends(t, out, proto, hostPort(viaNode1, 80), "a", "b")
		expectBackends(t, out, proto, hostPort(viaNode2, 80), "a", "b")
	}
	expectBackends(t, e.clients[1].NetNS, "tcp", hostPort(viaNode1, 80), "a", "b")
}

// testExternalIPs: spec.externalIPs answer from outside (routed to either
// node) and from pods.
func testExternalIPs(t *testing.T, e *env) {
	ns := "s-extip"
	e.pod(t, ns, "a", 0, labels("web"))
	e.pod(t, ns, "b", 1, labels("web"))
	const viaNode1, viaNode2 = "203.0.113.20", "203.0.113.21"
	s := newService(ns, "web", labels("web"), tcpPort("tcp", 80), udpPort("udp", 80))
	s.Spec.ExternalIPs = []string{viaNode1, viaNode2}
	e.createService(t, s)
	e.routeLoadBalancer(t, viaNode2, e.c.Node(1))
	out := e.c.Outside().NetNS
	for _, proto := range []string{"tcp", "udp"} {
		expectBackends(t, out, proto, hostPort(viaNode1, 80), "a", "b")
		expectBackends(t, out, proto, hostPort(viaNode2, 80), "a", "b")
	}
	for _, cl := range e.clients {
		expectBackends(t, cl.NetNS, "tcp", hostPort(viaNode1, 80), "a", "b")
	}
}

// testHairpin: a pod reaches itself through its own Service (ClusterIP, TCP
// and UDP), which needs the proxy's hairpin masquerade and the bridge's
// hairpin mode.
func testHairpin(t *testing.T, e *env) {
	ns := "s-hairpin"
	p := e.pod(t, ns, "self", 0, labels("web"))
	svc := e.createService(t, newService(ns, "web", labels("web"), tcpPort("tcp", 80), udpPort("udp", 80)))
	vip := clusterIP(t, svc, false)
	for _, proto := range []string{"tcp", "udp"} {
		expectOnly(t, p.NetNS, proto, hostPort(vip, 80), "self", 5)
	}
}

// testIPv6ClusterIP: a dual-stack Service's IPv6 ClusterIP answers TCP and
// UDP from pods on both nodes, reaching backends on both, with the client's
// IPv6 address as source; its IPv4 ClusterIP works alongside; an IPv6
// NodePort answers from a pod.
func testIPv6ClusterIP(t *testing.T, e *env) {
	ns := "s-ipv6"
	e.pod(t, ns, "a", 0, labels("web"))
	e.pod(t, ns, "b", 1, labels("web"))
	s := newService(ns, "web", labels("web"), tcpPort("tcp", 80), udpPort("udp", 80))
	s.Spec.Type = corev1.ServiceTypeNodePort
	s.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyRequireDualStack)
	s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
	svc := e.createService(t, s)
	vip6 := clusterIP(t, svc, true)
	if !framework.ServiceCIDRV6.Contains(mustPrefix(t, vip6+"/128").Addr()) {
		t.Fatalf("IPv6 ClusterIP %s is outside %s", vip6, framework.ServiceCIDRV6)
	}
	for _, cl := range e.clients {
		for _, proto := range []string{"tcp", "udp"} {
			expectBackends(t, cl.NetNS, proto, hostPort(vip6, 80), "a", "b")
			r, err := query(context.Background(), cl.NetNS, proto, hostPort(vip6, 80))
			if err != nil {
				t.Fatal(err)
			}
			if r.ClientIP() != cl.IPv6().String() {
				t.Errorf("%s [%s]:80 from %s: backend %s saw %s, want the pod's own %s", proto, vip6, cl.Name, r.Pod, r.ClientIP(), cl.IPv6())
			}
		}
		expectBackends(t, cl.NetNS, "tcp", hostPort(clusterIP(t, svc, false), 80), "a", "b")
	}
	expectBackends(t, e.clients[0].NetNS, "tcp", hostPort(e.c.Node(1).IPv6.String(), nodePortOf(t, svc, "tcp")), "a", "b")
}
