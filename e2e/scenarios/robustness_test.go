package scenarios

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kpr-proxy/kpr/e2e/framework"
)

const restoreFailures = "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"

// createSlice creates a hand-made EndpointSlice for Service svc (as a
// controller other than the EndpointSlice controller would) and deletes it
// when the scenario ends.
func (e *env) createSlice(t *testing.T, ns, name, svc string, at discoveryv1.AddressType, eps []discoveryv1.Endpoint, ports []discoveryv1.EndpointPort) {
	t.Helper()
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: svc,
			discoveryv1.LabelManagedBy:   "e2e.kpr.example",
		}},
		AddressType: at,
		Endpoints:   eps,
		Ports:       ports,
	}
	if _, err := e.c.Client.DiscoveryV1().EndpointSlices(ns).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating EndpointSlice %s/%s: %v", ns, name, err)
	}
	t.Cleanup(func() {
		_ = e.c.Client.DiscoveryV1().EndpointSlices(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

func readyEndpoint(addrs ...string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}
}

func slicePort(name string, proto corev1.Protocol, port *int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(proto), Port: port}
}

// testMalformedDoesNotBlock: objects the apiserver accepts but a proxy has to
// skip in part or whole must not stop it from programming a good Service
// created after them, nor make it unhealthy or fail iptables-restore; the
// valid parts of the odd objects must work. The apiserver validates
// Services, so these are the inputs that really get through:
//   - a single-stack IPv4 Service whose externalIPs, load-balancer status IPs
//     and loadBalancerSourceRanges include IPv6 values (fields are validated
//     as IPs/CIDRs, not against the Service's families), plus a
//     hostname-only ingress entry;
//   - a selector-less Service with hand-made EndpointSlices: one whose port
//     has no number (allowed for EndpointSlices), an FQDN slice, and a good
//     one whose endpoint lists a second address;
//   - a slice with a multicast endpoint address (validation rejects only
//     loopback, link-local, unspecified) and one for a Service that does not
//     exist;
//   - an SCTP port next to a TCP port, an ExternalName Service with ports, a
//     headless Service, and a Service labelled for another proxy
//     (service.kubernetes.io/service-proxy-name), which must be ignored.
func testMalformedDoesNotBlock(t *testing.T, e *env) {
	ns := "s-malformed"
	ctx := context.Background()
	m1 := e.pod(t, ns, "m-1", 0, labels("bf"))
	m2 := e.pod(t, ns, "m-2", 1, labels("manual"))
	before := make([]float64, len(e.proxies))
	for i, p := range e.proxies {
		// Upstream's counter is a label vector, absent until the first
		// failure: absent counts as 0.
		v, _, err := metric(ctx, p, restoreFailures)
		if err != nil {
			t.Fatal(err)
		}
		before[i] = v
	}

	// Wrong-family values on a single-stack IPv4 Service.
	bf := newService(ns, "bad-family", labels("bf"), tcpPort("tcp", 80))
	bf.Spec.Type = corev1.ServiceTypeLoadBalancer
	bf.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicySingleStack)
	bf.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
	bf.Spec.ExternalIPs = []string{"203.0.113.40", "2001:db8:30::40"}
	bf.Spec.LoadBalancerSourceRanges = []string{framework.OutsideNet.String(), "2001:db8:30::/64"}
	bfSvc := e.createService(t, bf)
	e.setLoadBalancerIngress(t, ns, "bad-family",
		corev1.LoadBalancerIngress{IP: "203.0.113.41"},
		corev1.LoadBalancerIngress{IP: "2001:db8:30::41"},
		corev1.LoadBalancerIngress{Hostname: "lb.example.invalid"})

	// Selector-less Service with odd hand-made slices.
	mixed := e.createService(t, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "mixed", Namespace: ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "a", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(framework.EchoTCPPort)},
		}},
	})
	e.createSlice(t, ns, "mixed-noport", "mixed", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.Endpoint{readyEndpoint(m1.IPv4().String())},
		[]discoveryv1.EndpointPort{slicePort("a", corev1.ProtocolTCP, nil)})
	e.createSlice(t, ns, "mixed-fqdn", "mixed", discoveryv1.AddressTypeFQDN,
		[]discoveryv1.Endpoint{readyEndpoint("backend.example.invalid")},
		[]discoveryv1.EndpointPort{slicePort("a", corev1.ProtocolTCP, ptr.To[int32](framework.EchoTCPPort))})
	e.createSlice(t, ns, "mixed-good", "mixed", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.Endpoint{readyEndpoint(m2.IPv4().String(), "198.18.254.254")},
		[]discoveryv1.EndpointPort{slicePort("a", corev1.ProtocolTCP, ptr.To[int32](framework.EchoTCPPort))})

	// Odd addresses, and a slice whose Service does not exist.
	e.createService(t, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "odd", Namespace: ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "a", Protocol: corev1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(framework.EchoUDPPort)},
		}},
	})
	e.createSlice(t, ns, "odd-1", "odd", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.Endpoint{readyEndpoint("224.0.1.1")},
		[]discoveryv1.EndpointPort{slicePort("a", corev1.ProtocolUDP, ptr.To[int32](framework.EchoUDPPort))})
	e.createSlice(t, ns, "ghost-1", "ghost", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.Endpoint{readyEndpoint(m1.IPv4().String())},
		[]discoveryv1.EndpointPort{slicePort("a", corev1.ProtocolTCP, ptr.To[int32](framework.EchoTCPPort))})

	// Unusual Service shapes.
	sctp := newService(ns, "sctp", labels("bf"),
		corev1.ServicePort{Name: "sctp", Protocol: corev1.ProtocolSCTP, Port: 80, TargetPort: intstr.FromInt32(9999)},
		tcpPort("tcp", 81))
	sctpSvc := e.createService(t, sctp)
	e.createService(t, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "ext-name", Namespace: ns},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "backend.example.invalid",
			Ports: []corev1.ServicePort{tcpPort("tcp", 80)}},
	})
	headless := newService(ns, "headless", labels("bf"), tcpPort("tcp", 80))
	headless.Spec.ClusterIP = corev1.ClusterIPNone
	e.createService(t, headless)
	foreign := newService(ns, "foreign", labels("bf"), tcpPort("tcp", 80))
	foreign.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "some-other-proxy"}
	foreignSvc := e.createService(t, foreign)

	// The good Service, created last.
	e.pod(t, ns, "g-1", 1, labels("good"))
	start := time.Now()
	good := e.createService(t, newService(ns, "good", labels("good"), tcpPort("tcp", 80)))
	for _, cl := range e.clients {
		expectBackends(t, cl.NetNS, "tcp", hostPort(clusterIP(t, good, false), 80), "g-1")
	}
	t.Logf("good Service served %s after its creation", time.Since(start).Round(time.Millisecond))
	e.expectProxiesHealthy(t)
	for i, p := range e.proxies {
		v, _, err := metric(ctx, p, restoreFailures)
		if err != nil {
			t.Fatal(err)
		}
		if v != before[i] {
			t.Errorf("proxy on %s: %s went from %v to %v: the odd objects made iptables-restore fail", p.Node.Name, restoreFailures, before[i], v)
		}
	}

	// The valid parts of the odd objects work.
	out := e.c.Outside().NetNS
	for _, cl := range e.clients {
		expectOnly(t, cl.NetNS, "tcp", hostPort(clusterIP(t, bfSvc, false), 80), "m-1", 3)
		expectOnly(t, cl.NetNS, "tcp", hostPort(clusterIP(t, mixed, false), 80), "m-2", 10)
		expectOnly(t, cl.NetNS, "tcp", hostPort(clusterIP(t, sctpSvc, false), 81), "m-1", 3)
	}
	expectOnly(t, out, "tcp", hostPort("203.0.113.40", 80), "m-1", 3)
	expectOnly(t, out, "tcp", hostPort("203.0.113.41", 80), "m-1", 3)

	// A Service owned by another proxy is not programmed (the good one
	// above shows the proxies are synced).
	addr := hostPort(clusterIP(t, foreignSvc, false), 80)
	if r, err := query(ctx, e.clients[0].NetNS, "tcp", addr); err == nil {
		t.Errorf("Service labelled service.kubernetes.io/service-proxy-name=some-other-proxy answered (by %s); a proxy must leave it alone", r.Pod)
	}
}

// openEchoConn opens a TCP connection to an echo server through addr and
// reads its greeting; it returns the connection, its reader and who answered.
func openEchoConn(t *testing.T, from *framework.NetNS, addr string) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	var (
		c   net.Conn
		br  *bufio.Reader
		who string
	)
	framework.Eventually(t, programTimeout, "connection to "+addr, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, queryTimeout)
		defer cancel()
		conn, err := from.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		_ = conn.SetDeadline(time.Now().Add(queryTimeout))
		r := bufio.NewReader(conn)
		line, err := r.ReadString('\n')
		if err != nil {
			conn.Close()
			return err
		}
		c, br, who = conn, r, line
		return nil
	})
	t.Cleanup(func() { c.Close() })
	return c, br, strings.TrimSpace(who)
}

// echoRoundTrip writes msg on an established echo connection and expects it
// back.
func echoRoundTrip(c net.Conn, r *bufio.Reader, msg string) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if strings.TrimSpace(line) != msg {
		return fmt.Errorf("echoed %q, want %q", line, msg)
	}
	return nil
}

// testProxyRestartKeepsConnections: established TCP connections through a
// ClusterIP (from a pod) and a NodePort (from outside, masqueraded) keep
// working across a restart of the proxy on the node that NATs them; new
// connections work after it.
func testProxyRestartKeepsConnections(t *testing.T, e *env) {
	ns := "s-restart"
	e.pod(t, ns, "r-1", 1, labels("web"))
	s := newService(ns, "web", labels("web"), tcpPort("tcp", 80))
	s.Spec.Type = corev1.ServiceTypeNodePort
	svc := e.createService(t, s)
	vip := hostPort(clusterIP(t, svc, false), 80)
	np := hostPort(e.c.Node(0).IPv4.String(), nodePortOf(t, svc, "tcp"))
	type conn struct {
		name string
		c    net.Conn
		r    *bufio.Reader
	}
	var conns []conn
	for _, x := range []struct {
		name string
		from *framework.NetNS
		addr string
	}{{"pod→ClusterIP", e.clients[0].NetNS, vip}, {"outside→NodePort(node1)", e.c.Outside().NetNS, np}} {
		c, r, who := openEchoConn(t, x.from, x.addr)
		t.Logf("%s: connected, greeting %s", x.name, who)
		if err := echoRoundTrip(c, r, "before-restart"); err != nil {
			t.Fatalf("%s: %v", x.name, err)
		}
		conns = append(conns, conn{x.name, c, r})
	}

	p := e.proxies[0]
	p.Restart(t)
	p.WaitHealthy(t, 60*time.Second)
	p.WaitSynced(t, 60*time.Second)
	for _, c := range conns {
		if err := echoRoundTrip(c.c, c.r, "after-restart"); err != nil {
			t.Errorf("%s: established connection broke across the proxy restart: %v", c.name, err)
		}
	}
	expectBackends(t, e.clients[0].NetNS, "tcp", vip, "r-1")
	expectBackends(t, e.c.Outside().NetNS, "tcp", np, "r-1")
}

// testIPTablesFlushRepaired: someone flushes the proxy's rules in node1's
// namespace (with the iptables backend the proxy uses); the proxy must put
// them back within 60 s, so new connections through a ClusterIP and a
// NodePort work again without any API change. Two kinds of flush:
//  1. `iptables -t nat -F` — rules only, chains stay;
//  2. what a firewall reload does: flush and delete every chain in the
//     mangle, nat and filter tables.
func testIPTablesFlushRepaired(t *testing.T, e *env) {
	ns := "s-flush"
	e.pod(t, ns, "f-1", 1, labels("web"))
	s := newService(ns, "web", labels("web"), tcpPort("tcp", 80))
	s.Spec.Type = corev1.ServiceTypeNodePort
	svc := e.createService(t, s)
	vip := hostPort(clusterIP(t, svc, false), 80)
	np := hostPort(e.c.Node(0).IPv4.String(), nodePortOf(t, svc, "tcp"))
	expectBackends(t, e.clients[0].NetNS, "tcp", vip, "f-1")
	expectBackends(t, e.c.Outside().NetNS, "tcp", np, "f-1")
	n1 := e.c.Node(0)

	flush := func(what string, args ...[]string) time.Time {
		t.Helper()
		for _, a := range args {
			if _, err := e.iptables(n1, false, a...); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("%s on %s (iptables-%s)", what, n1.Name, e.backend)
		return time.Now()
	}
	expectRepaired := func(what string, since time.Time) {
		t.Helper()
		err := framework.Poll(context.Background(), 60*time.Second, 500*time.Millisecond, func(ctx context.Context) error {
			if _, err := answeredBy(ctx, e.clients[0].NetNS, "tcp", vip, []string{"f-1"}, 1, true); err != nil {
				return err
			}
			_, err := answeredBy(ctx, e.c.Outside().NetNS, "tcp", np, []string{"f-1"}, 1, true)
			return err
		})
		if err != nil {
			t.Fatalf("rules not repaired 60s after %s: %v", what, err)
		}
		t.Logf("repaired %s after %s", time.Since(since).Round(100*time.Millisecond), what)
	}

	since := flush("iptables -t nat -F", []string{"-t", "nat", "-F"})
	if e.kind == framework.ProxyUpstream {
		// Upstream kube-proxy differs on purpose here: it notices a flush
		// only when its KUBE-PROXY-CANARY chain in the mangle table is
		// deleted (utiliptables.Monitor, polled every syncPeriod), and its
		// periodic full resync runs once an hour (proxyutil.FullSyncPeriod);
		// a rules-only flush of nat leaves its chains in place and goes
		// unnoticed for up to an hour (checked: not repaired after 60 s). So
		// this assertion is for kpr only; the firewall-reload flush below,
		// which upstream does detect, also restores upstream's rules.
		t.Logf("upstream kube-proxy does not detect a rules-only nat flush (canary chain in mangle only, full resync hourly); skipping that assertion for upstream")
	} else {
		expectRepaired("iptables -t nat -F", since)
	}

	since = flush("firewall-reload style flush (-F and -X in mangle, nat and filter)",
		[]string{"-t", "mangle", "-F"}, []string{"-t", "mangle", "-X"},
		[]string{"-t", "nat", "-F"}, []string{"-t", "nat", "-X"},
		[]string{"-t", "filter", "-F"}, []string{"-t", "filter", "-X"})
	expectRepaired("the firewall-reload style flush", since)
	expectBackends(t, e.clients[0].NetNS, "tcp", vip, "f-1")
}

// testRBACSufficient: over the whole run no proxy was refused anything by
// the apiserver, so manifests/rbac.yaml grants what the proxy uses.
func testRBACSufficient(t *testing.T, e *env) {
	for _, p := range e.proxies {
		b, err := os.ReadFile(p.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		var bad []string
		for _, line := range strings.Split(string(b), "\n") {
			l := strings.ToLower(line)
			if strings.Contains(l, "forbidden") || strings.Contains(l, "unauthorized") {
				bad = append(bad, line)
			}
		}
		if len(bad) > 0 {
			if len(bad) > 10 {
				bad = append(bad[:10], fmt.Sprintf("… and %d more", len(bad)-10))
			}
			t.Errorf("proxy on %s was refused by the apiserver with the manifests' RBAC (%s):\n%s", p.Node.Name, p.LogPath, strings.Join(bad, "\n"))
		}
	}
}
