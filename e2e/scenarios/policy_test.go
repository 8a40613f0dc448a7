package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/kpr-proxy/kpr/e2e/framework"
)

// healthCheckReply is what kube-proxy's service health-check server answers.
type healthCheckReply struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      *int  `json:"localEndpoints"`
	ServiceProxyHealthy *bool `json:"serviceProxyHealthy"`
}

// expectHealthCheck waits until the Service's health-check node port on n
// answers wantCode with wantLocal local endpoints.
func expectHealthCheck(t *testing.T, from *framework.NetNS, n *framework.Node, port int, ns, name string, wantCode, wantLocal int) {
	t.Helper()
	url := fmt.Sprintf("http://%s/", hostPort(n.IPv4.String(), port))
	framework.Eventually(t, programTimeout, fmt.Sprintf("health check %s → %d with localEndpoints=%d", url, wantCode, wantLocal), func(ctx context.Context) error {
		code, body, err := from.HTTPGet(ctx, url)
		if err != nil {
			return err
		}
		var r healthCheckReply
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			return fmt.Errorf("HTTP %d, body %q: %v", code, body, err)
		}
		if code != wantCode || r.LocalEndpoints == nil || *r.LocalEndpoints != wantLocal {
			return fmt.Errorf("HTTP %d, body %s", code, strings.TrimSpace(body))
		}
		if r.Service.Namespace != ns || r.Service.Name != name {
			return fmt.Errorf("body names Service %s/%s, want %s/%s", r.Service.Namespace, r.Service.Name, ns, name)
		}
		return nil
	})
}

// testETPLocal: externalTrafficPolicy Local on a LoadBalancer Service with its
// one endpoint on node1. From outside, node1's NodePort and the LB IP answer
// with the client's own source address; node2's NodePort drops the traffic
// (no reply, no reset); the health-check node port says 200 with
// localEndpoints 1 on node1 and 503 with 0 on node2. When an endpoint starts
// on node2 as well, node2 serves it (with the source preserved) and turns
// healthy.
func testETPLocal(t *testing.T, e *env) {
	ns := "s-etp-local"
	e.pod(t, ns, "l-1", 0, labels("web"))
	s := newService(ns, "web", labels("web"), tcpPort("tcp", 80), udpPort("udp", 80))
	s.Spec.Type = corev1.ServiceTypeLoadBalancer
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	svc := e.createService(t, s)
	if svc.Spec.HealthCheckNodePort == 0 {
		t.Fatal("apiserver allocated no healthCheckNodePort")
	}
	hc := int(svc.Spec.HealthCheckNodePort)
	const lbIP = "203.0.113.30" // routed to node1
	e.setLoadBalancerIngress(t, ns, "web", corev1.LoadBalancerIngress{IP: lbIP})
	out := e.c.Outside().NetNS
	n1, n2 := e.c.Node(0), e.c.Node(1)

	expectHealthCheck(t, out, n1, hc, ns, "web", 200, 1)
	expectHealthCheck(t, out, n2, hc, ns, "web", 503, 0)

	for _, proto := range []string{"tcp", "udp"} {
		for _, addr := range []string{hostPort(n1.IPv4.String(), nodePortOf(t, svc, proto)), hostPort(lbIP, 80)} {
			expectBackends(t, out, proto, addr, "l-1")
			r, err := query(context.Background(), out, proto, addr)
			if err != nil {
				t.Fatal(err)
			}
			if r.ClientIP() != framework.OutsideIPv4.String() {
				t.Errorf("%s %s: backend saw source %s, want the outside client's %s (externalTrafficPolicy Local preserves it)", proto, addr, r.ClientIP(), framework.OutsideIPv4)
			}
		}
	}
	// Before the proxy programs the Service a connection to node2's
	// NodePort is refused by node2's stack; afterwards it must vanish.
	expectDropped(t, out, "tcp", hostPort(n2.IPv4.String(), nodePortOf(t, svc, "tcp")))

	e.pod(t, ns, "l-2", 1, labels("web"))
	expectHealthCheck(t, out, n2, hc, ns, "web", 200, 1)
	addr := hostPort(n2.IPv4.String(), nodePortOf(t, svc, "tcp"))
	expectOnly(t, out, "tcp", addr, "l-2", 10)
	r, err := query(context.Background(), out, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.ClientIP() != framework.OutsideIPv4.String() {
		t.Errorf("NodePort via node2: backend saw source %s, want %s", r.ClientIP(), framework.OutsideIPv4)
	}
}

// testITPLocal: internalTrafficPolicy Local sends a pod's traffic only to
// endpoints on its own node, and drops it when its node has none.
func testITPLocal(t *testing.T, e *env) {
	ns := "s-itp-local"
	e.pod(t, ns, "i-1", 0, labels("web"))
	i2 := e.pod(t, ns, "i-2", 1, labels("web"))
	s := newService(ns, "web", labels("web"), tcpPort("tcp", 80), udpPort("udp", 80))
	s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	svc := e.createService(t, s)
	vip := hostPort(clusterIP(t, svc, false), 80)
	for _, proto := range []string{"tcp", "udp"} {
		expectOnly(t, e.clients[0].NetNS, proto, vip, "i-1", 20)
		expectOnly(t, e.clients[1].NetNS, proto, vip, "i-2", 20)
	}
	i2.Delete(t)
	expectDropped(t, e.clients[1].NetNS, "tcp", vip)
	expectOnly(t, e.clients[0].NetNS, "tcp", vip, "i-1", 10)
}

// testNoEndpointsReject: a Service without endpoints rejects at once: TCP
// connections to its ClusterIP and NodePort are refused, UDP gets port
// unreachable, each within a second. (Without the proxy's rule a ClusterIP
// packet goes to the router, which drops it silently.)
func testNoEndpointsReject(t *testing.T, e *env) {
	ns := "s-noendpoints"
	s := newService(ns, "empty", labels("nothing-has-this-label"), tcpPort("tcp", 80), udpPort("udp", 80))
	s.Spec.Type = corev1.ServiceTypeNodePort
	svc := e.createService(t, s)
	vip := hostPort(clusterIP(t, svc, false), 80)
	for _, cl := range e.clients {
		framework.Eventually(t, programTimeout, "TCP to "+vip+" from "+cl.Name+" refused within 1s", func(ctx context.Context) error {
			return dialRefusedWithin(ctx, cl.NetNS, vip, time.Second)
		})
		framework.Eventually(t, programTimeout, "UDP to "+vip+" from "+cl.Name+" port unreachable within 1s", func(ctx context.Context) error {
			return udpRefusedWithin(ctx, cl.NetNS, vip, time.Second)
		})
	}
	// The kernel rate-limits the ICMP errors a REJECT sends (per peer: one
	// per net.ipv4.icmp_ratelimit = 1 s, in bursts of up to 6), and
	// upstream rejects TCP with icmp-port-unreachable too, so clients are
	// not hammered: one more round from each client pod (4 rejections per
	// peer in all), two rounds to both nodes' NodePorts from outside.
	ctx := context.Background()
	for _, from := range []*framework.NetNS{e.clients[0].NetNS, e.clients[1].NetNS} {
		if err := dialRefusedWithin(ctx, from, vip, time.Second); err != nil {
			t.Fatal(err)
		}
		if err := udpRefusedWithin(ctx, from, vip, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ {
		for _, n := range e.c.Nodes() {
			np := hostPort(n.IPv4.String(), nodePortOf(t, svc, "tcp"))
			if err := dialRefusedWithin(ctx, e.c.Outside().NetNS, np, time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// testSessionAffinity: with sessionAffinity ClientIP every request from one
// client goes to the same pod, for TCP and UDP, from clients on both nodes.
// The Service starts without affinity so that all three endpoints are seen
// to be programmed first; stickiness can then not come from a single
// programmed endpoint.
func testSessionAffinity(t *testing.T, e *env) {
	ns := "s-affinity"
	e.pod(t, ns, "a", 0, labels("web"))
	e.pod(t, ns, "b", 1, labels("web"))
	e.pod(t, ns, "c", 0, labels("web"))
	svc := e.createService(t, newService(ns, "web", labels("web"), tcpPort("tcp", 80), udpPort("udp", 80)))
	vip := hostPort(clusterIP(t, svc, false), 80)
	for _, cl := range e.clients {
		for _, proto := range []string{"tcp", "udp"} {
			expectBackends(t, cl.NetNS, proto, vip, "a", "b", "c")
		}
	}
	e.updateService(t, ns, "web", func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP })
	for _, cl := range e.clients {
		for _, proto := range []string{"tcp", "udp"} {
			var first string
			framework.Eventually(t, programTimeout, fmt.Sprintf("%s from %s sticks to one pod", proto, cl.Name), func(ctx context.Context) error {
				seen, err := tally(ctx, cl.NetNS, proto, vip, 10)
				if err != nil {
					return err
				}
				if len(seen) != 1 {
					return fmt.Errorf("answered by %v", seen)
				}
				first = sortedKeys(seen)[0]
				return nil
			})
			seen, err := tally(context.Background(), cl.NetNS, proto, vip, 30)
			if err != nil {
				t.Fatal(err)
			}
			if len(seen) != 1 || seen[first] != 30 {
				t.Errorf("%s from %s: with ClientIP affinity 30 requests went to %v, want all to %s", proto, cl.Name, seen, first)
			}
		}
	}
}

// tally sends n queries and counts who answered; any failed query is an
// error.
func tally(ctx context.Context, from *framework.NetNS, proto, addr string, n int) (map[string]int, error) {
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		r, err := query(ctx, from, proto, addr)
		if err != nil {
			return seen, err
		}
		seen[r.Pod]++
	}
	return seen, nil
}

// testTerminatingFallback: when a Service has only terminating endpoints
// that still serve, they are used. First one of two pods terminates and is
// seen to get no new connections (the other is ready); then the second one
// terminates too, and both terminating pods serve again — proof that the
// proxy synced the change and fell back, not that it is behind.
func testTerminatingFallback(t *testing.T, e *env) {
	ns := "s-terminating"
	a := e.pod(t, ns, "a", 0, labels("web"))
	b := e.pod(t, ns, "b", 1, labels("web"))
	svc := e.createService(t, newService(ns, "web", labels("web"), tcpPort("tcp", 80), udpPort("udp", 80)))
	vip := hostPort(clusterIP(t, svc, false), 80)
	for _, cl := range e.clients {
		expectBackends(t, cl.NetNS, "tcp", vip, "a", "b")
	}
	a.Terminate(t, 60*time.Second)
	for _, cl := range e.clients {
		expectOnly(t, cl.NetNS, "tcp", vip, "b", 20)
	}
	b.Terminate(t, 60*time.Second)
	for _, cl := range e.clients {
		for _, proto := range []string{"tcp", "udp"} {
			expectBackends(t, cl.NetNS, proto, vip, "a", "b")
		}
	}
	// A new ready pod takes over all new traffic again.
	e.pod(t, ns, "c", 1, labels("web"))
	for _, cl := range e.clients {
		expectOnly(t, cl.NetNS, "tcp", vip, "c", 20)
	}
}
