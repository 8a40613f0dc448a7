package vm

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/kpr-proxy/kpr/e2e/build"
	"github.com/kpr-proxy/kpr/e2e/framework"
	"github.com/kpr-proxy/kpr/e2e/vm/agentapi"
	"github.com/kpr-proxy/kpr/e2e/vm/image"
)

// The real-IPVS suite: one cluster (control plane on the host, node1 in a
// qemu guest with Debian's kernel, node2 a host namespace for remote
// endpoints), the proxy under test ($E2E_PROXY: kpr or upstream) in IPVS mode
// in the guest, and scenarios asserting both traffic and the kernel's IPVS
// table. Opt-in (E2E_VM=1, `make e2e-ipvs`): a cold run downloads Debian
// packages and needs qemu.
//
//	cd e2e && E2E_VM=1 E2E_PROXY=upstream go test -count=1 -v -timeout 20m ./vm/
//	cd e2e && E2E_VM=1 E2E_PROXY=kpr go test -count=1 -v -timeout 20m ./vm/ -run 'TestIPVS/ETPLocal'

func TestMain(m *testing.M) { framework.Main(m) }

// Time budgets: the guest is emulated (TCG), so everything in it is several
// times slower than on the host.
const (
	programTimeout = 60 * time.Second
	testNS         = "ipvs-e2e"
)

type suite struct {
	c     *framework.Cluster
	v     *VM
	proxy *Proxy
}

func TestIPVS(t *testing.T) {
	if os.Getenv("E2E_VM") == "" {
		t.Skip("skipping the real-IPVS VM suite: set E2E_VM=1 (make e2e-ipvs); it boots a qemu guest and downloads Debian packages on first use")
	}
	if testing.Short() {
		t.Skip("skipping the VM suite in -short mode")
	}
	start := time.Now()
	kind := framework.ProxyUnderTest()
	c := framework.Start(t, framework.Options{Nodes: 2})
	moduleDir, err := build.FindModuleDir()
	if err != nil {
		t.Fatal(err)
	}
	c.ApplyFile(t, filepath.Join(filepath.Dir(moduleDir), "manifests", "rbac.yaml"))
	if kind == framework.ProxyUpstream {
		// As in e2e/scenarios: upstream kube-proxy also watches
		// ServiceCIDRs, which kpr's least-privilege role does not grant.
		c.ApplyYAML(t, []byte(upstreamExtraRBAC))
	}
	kc, _ := c.ServiceAccountKubeconfig(t, "kube-system", "kpr")
	pf, err := ProxyFile(c, kind)
	if err != nil {
		t.Fatal(err)
	}
	clusterUp := time.Since(start)

	v := Boot(t, c, Config{Files: []image.OverlayFile{pf}})
	backend := os.Getenv("E2E_VM_IPTABLES")
	if backend == "" {
		backend = "nft"
	}
	v.SetupNode(t, backend)
	proxyStart := time.Now()
	// E2E_VM_PROXY_ARGS adds flags (e.g. --v=4 when debugging).
	p := v.StartProxy(t, kind, kc, strings.Fields(os.Getenv("E2E_VM_PROXY_ARGS"))...)
	t.Logf("proxy under test: %s (IPVS mode, iptables backend %s); cluster %s, VM boot %s, proxy first sync %s; run dir %s",
		kind, backend, clusterUp.Round(time.Millisecond), v.BootTime.Round(time.Millisecond), time.Since(proxyStart).Round(time.Millisecond), c.RunDir)

	s := &suite{c: c, v: v, proxy: p}
	for _, sc := range []struct {
		name string
		fn   func(t *testing.T, s *suite)
	}{
		{"ClusterIP", testClusterIP},
		{"NodePort", testNodePort},
		{"SessionAffinity", testSessionAffinity},
		{"ETPLocal", testETPLocal},
		{"GracefulTermination", testGracefulTermination},
		{"ProxyRestart", testProxyRestart},
	} {
		s.run(t, sc.name, sc.fn)
	}
	t.Logf("suite took %s", time.Since(start).Round(time.Millisecond))
}

// run runs one scenario; on failure it saves the guest's state and the
// proxy's log tail before the scenario's cleanups run. A dead proxy fails
// the scenario and is restarted for the next one.
func (s *suite) run(t *testing.T, name string, fn func(*testing.T, *suite)) {
	t.Run(name, func(t *testing.T) {
		start := time.Now()
		defer func() {
			if t.Failed() {
				s.v.SaveEvidence(t, t.Name())
				t.Logf("==== proxy log (last 30 lines):\n%s", s.proxy.Tail(t, 30))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			running, exit, err := s.proxy.Running(ctx)
			cancel()
			if err == nil && !running {
				if t.Failed() {
					t.Logf("restarting the proxy (%s) for the next scenario", exit)
				} else {
					t.Errorf("proxy is not running after %s (%s); log tail:\n%s", name, exit, s.proxy.Tail(t, 40))
				}
				s.proxy.Start(t)
			}
			t.Logf("scenario %s took %s", name, time.Since(start).Round(time.Millisecond))
		}()
		fn(t, s)
	})
}

const upstreamExtraRBAC = `
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: e2e-vm-upstream-kube-proxy-servicecidrs
rules:
  - apiGroups: ["networking.k8s.io"]
    resources: ["servicecidrs"]
    verbs: ["list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: e2e-vm-upstream-kube-proxy-servicecidrs
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: e2e-vm-upstream-kube-proxy-servicecidrs
subjects:
  - kind: ServiceAccount
    name: kpr
    namespace: kube-system
`

// ---- scenarios ----

// ClusterIP: TCP and UDP ports of one Service become IPVS virtual servers
// with both pods as real servers (masquerading, weight 1), and pods and
// the node itself reach both endpoints.
func testClusterIP(t *testing.T, s *suite) {
	w1 := s.pod(t, "web-1", "web")
	w2 := s.pod(t, "web-2", "web")
	svc := s.createService(t, newService("web", map[string]string{"app": "web"}, tcpPort("tcp", 80), udpPort("udp", 8053)))
	ip := clusterIP(t, svc)
	tcpVS, udpVS := netip.AddrPortFrom(ip, 80), netip.AddrPortFrom(ip, 8053)
	s.waitReals(t, "TCP", tcpVS, w1, w2)
	s.waitReals(t, "UDP", udpVS, w1, w2)
	tbl := s.v.IPVS(t)
	for _, vs := range []*VirtualServer{tbl.Find("TCP", tcpVS), tbl.Find("UDP", udpVS)} {
		if vs.Scheduler != "rr" {
			t.Errorf("%s %s: scheduler %q, want rr (the default)", vs.Proto, vs.Addr, vs.Scheduler)
		}
		for _, r := range vs.Reals {
			if r.Forward != "Masq" || r.Weight != 1 {
				t.Errorf("%s %s -> %s: forward %s weight %d, want Masq weight 1", vs.Proto, vs.Addr, r.Addr, r.Forward, r.Weight)
			}
		}
	}
	s.expectBackends(t, ClientNS, "tcp", tcpVS.String(), w1, w2)
	s.expectBackends(t, ClientNS, "udp", udpVS.String(), w1, w2)
	// From the node itself (host-network clients, the kubelet's probes).
	s.expectBackends(t, "", "tcp", tcpVS.String(), w1, w2)
}

// NodePort: a virtual server per node address; clients outside the cluster
// reach both pods, masqueraded (externalTrafficPolicy Cluster).
func testNodePort(t *testing.T, s *suite) {
	w1 := s.pod(t, "np-1", "np")
	w2 := s.pod(t, "np-2", "np")
	svc := newService("np", map[string]string{"app": "np"}, tcpPort("tcp", 80), udpPort("udp", 8053))
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc = s.createService(t, svc)
	tcpNP, udpNP := nodePort(t, svc, "tcp"), nodePort(t, svc, "udp")
	nodeTCP := netip.AddrPortFrom(s.v.Node.IPv4, uint16(tcpNP))
	nodeUDP := netip.AddrPortFrom(s.v.Node.IPv4, uint16(udpNP))
	s.waitReals(t, "TCP", nodeTCP, w1, w2)
	s.waitReals(t, "UDP", nodeUDP, w1, w2)
	s.expectBackends(t, OutsideNS, "tcp", nodeTCP.String(), w1, w2)
	s.expectBackends(t, OutsideNS, "udp", nodeUDP.String(), w1, w2)
	// IPVS virtual servers come before the proxy's iptables rules and
	// ipsets in a sync, so the masquerading is waited for too.
	framework.Eventually(t, programTimeout, "NodePort traffic masqueraded", func(ctx context.Context) error {
		r, err := s.v.Query(ctx, OutsideNS, "tcp", nodeTCP.String())
		if err != nil {
			return err
		}
		if r.Reply.ClientIP() == OutsideIPv4.String() {
			return fmt.Errorf("externalTrafficPolicy Cluster: pod saw the client's own address %s, want it masqueraded", r.Reply.Client)
		}
		return nil
	})
}

// SessionAffinity: ClientIP affinity is an IPVS persistent service (the
// Service's timeout), and one client keeps its pod.
func testSessionAffinity(t *testing.T, s *suite) {
	p1 := s.pod(t, "sticky-1", "sticky")
	p2 := s.pod(t, "sticky-2", "sticky")
	svc := newService("sticky", map[string]string{"app": "sticky"}, tcpPort("tcp", 80))
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	timeout := int32(600)
	svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
	svc = s.createService(t, svc)
	vs := netip.AddrPortFrom(clusterIP(t, svc), 80)
	s.waitReals(t, "TCP", vs, p1, p2)
	got := s.v.IPVS(t).Find("TCP", vs)
	if got.Persistent != int(timeout) {
		t.Errorf("TCP %s: persistent %d (flags %q), want %d from sessionAffinityConfig", vs, got.Persistent, got.Flags, timeout)
	}
	// Another client (the node) gets its own, possibly different, pod,
	// also stably.
	for _, from := range []string{ClientNS, ""} {
		s.expectSticky(t, from, vs.String(), 20)
	}
}

// expectSticky waits until n consecutive connections from netns to addr
// all succeed, then requires that they all reached the same pod. (Right
// after a change a proxy's sync may still be running: its iptables rules
// can reject a connection for a moment; that is retried, a second pod is
// not.)
func (s *suite) expectSticky(t *testing.T, netns, addr string, n int) {
	t.Helper()
	var seen map[string]int
	framework.Eventually(t, programTimeout, fmt.Sprintf("%d connections to %s from %s", n, addr, nsLabel(netns)), func(ctx context.Context) error {
		var err error
		seen, err = s.v.QueryMany(ctx, netns, "tcp", addr, n)
		return err
	})
	if len(seen) != 1 {
		t.Fatalf("%d connections from %s with ClientIP affinity went to %v, want a single pod", n, nsLabel(netns), seen)
	}
}

// ETPLocal: a LoadBalancer Service with externalTrafficPolicy Local sends
// outside traffic (to its NodePort and to its load-balancer IP) only to
// this node's endpoint — the other one is on node2 — keeping the client's
// source address, and its health check node port reports one local
// endpoint. The ClusterIP keeps both endpoints.
func testETPLocal(t *testing.T, s *suite) {
	local := s.pod(t, "loc-1", "loc")
	remote := s.c.CreatePod(t, framework.PodSpec{Name: "loc-2", Namespace: testNS, Node: 1, Labels: map[string]string{"app": "loc"}})
	svc := newService("loc", map[string]string{"app": "loc"}, tcpPort("tcp", 80))
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	svc = s.createService(t, svc)
	if svc.Spec.HealthCheckNodePort == 0 {
		t.Fatal("LoadBalancer Service with externalTrafficPolicy Local got no healthCheckNodePort")
	}
	lbIP := netip.MustParseAddr("203.0.113.10")
	s.setLoadBalancerIngress(t, svc.Name, lbIP)
	s.c.WaitForEndpoints(t, testNS, "loc", []netip.Addr{local.IP, remote.IPv4()}, programTimeout)
	ip := clusterIP(t, svc)
	np := netip.AddrPortFrom(s.v.Node.IPv4, uint16(nodePort(t, svc, "tcp")))
	lb := netip.AddrPortFrom(lbIP, 80)
	remoteAddr := netip.AddrPortFrom(remote.IPv4(), framework.EchoTCPPort).String()
	s.waitIPVS(t, "ClusterIP with both endpoints, NodePort and load-balancer IP with the local one only", func(tbl *IPVSTable) error {
		if err := realsAre(tbl, "TCP", netip.AddrPortFrom(ip, 80), local.Addr(), remoteAddr); err != nil {
			return err
		}
		if err := realsAre(tbl, "TCP", np, local.Addr()); err != nil {
			return err
		}
		return realsAre(tbl, "TCP", lb, local.Addr())
	})
	for _, addr := range []netip.AddrPort{np, lb} {
		framework.Eventually(t, programTimeout, fmt.Sprintf("%s answered only by loc-1, with the client's own address", addr), func(ctx context.Context) error {
			r, err := s.v.Agent.QueryMany(ctx, queryMany(OutsideNS, "tcp", addr.String(), 20))
			if err != nil {
				return err
			}
			for i, e := range r.Errors {
				if e != "" {
					return fmt.Errorf("query %d: %s", i+1, e)
				}
				if r.Replies[i].Pod != local.Name {
					return fmt.Errorf("query %d answered by %s, want only %s", i+1, r.Replies[i].Pod, local.Name)
				}
				if r.Replies[i].ClientIP() != OutsideIPv4.String() {
					return fmt.Errorf("query %d: pod saw client %s, want the outside client's own %s", i+1, r.Replies[i].Client, OutsideIPv4)
				}
			}
			return nil
		})
	}
	localEndpoints := regexp.MustCompile(`"localEndpoints":\s*1\b`)
	framework.Eventually(t, programTimeout, "health check node port says 1 local endpoint", func(ctx context.Context) error {
		code, body, err := s.proxy.HealthCheck(ctx, int(svc.Spec.HealthCheckNodePort))
		if err != nil {
			return err
		}
		if code != 200 || !localEndpoints.MatchString(body) {
			return fmt.Errorf("health check: %d %s", code, strings.TrimSpace(body))
		}
		return nil
	})
}

// GracefulTermination: when an endpoint goes away (its pod terminating),
// its established TCP connection keeps working — IPVS keeps the real
// server with weight 0 while it has connections — and new connections go
// to the remaining endpoint only.
func testGracefulTermination(t *testing.T, s *suite) {
	old := s.pod(t, "drain-1", "drain")
	svc := s.createService(t, newService("drain", map[string]string{"app": "drain"}, tcpPort("tcp", 80)))
	vs := netip.AddrPortFrom(clusterIP(t, svc), 80)
	s.waitReals(t, "TCP", vs, old)
	ctx := context.Background()
	conn := s.openConn(t, ClientNS, vs.String())
	if conn.Hello.Pod != old.Name {
		t.Fatalf("connection answered by %s, want %s", conn.Hello.Pod, old.Name)
	}
	repl := s.pod(t, "drain-2", "drain")
	s.waitReals(t, "TCP", vs, old, repl)

	old.Terminate(t, 60*time.Second)
	// The old real server must stop taking new connections: gone, or kept
	// with weight 0 while its connection lives.
	s.waitIPVS(t, "drain-1 drained (weight 0 or removed), drain-2 weight 1", func(tbl *IPVSTable) error {
		v := tbl.Find("TCP", vs)
		if v == nil {
			return fmt.Errorf("no virtual server TCP %s", vs)
		}
		if r := v.Real(netip.MustParseAddrPort(repl.Addr())); r == nil || r.Weight != 1 {
			return fmt.Errorf("drain-2 real server: %+v, want weight 1", r)
		}
		if r := v.Real(netip.MustParseAddrPort(old.Addr())); r != nil && r.Weight != 0 {
			return fmt.Errorf("drain-1 real server still has weight %d", r.Weight)
		}
		return nil
	})
	tbl := s.v.IPVS(t)
	t.Logf("IPVS after the endpoint's removal:\n%s", tbl.Raw)
	if r := tbl.Find("TCP", vs).Real(netip.MustParseAddrPort(old.Addr())); r == nil {
		t.Logf("note: the proxy removed drain-1's real server at once (its connection is still in the IPVS connection table)")
	}
	s.echo(t, conn.ID, "still-there-1")
	var seen map[string]int
	framework.Eventually(t, programTimeout, "20 new connections after drain-1's removal", func(ctx context.Context) error {
		var err error
		seen, err = s.v.QueryMany(ctx, ClientNS, "tcp", vs.String(), 20)
		return err
	})
	if seen[old.Name] > 0 || seen[repl.Name] != 20 {
		t.Fatalf("new connections after drain-1's removal went to %v, want all 20 to %s", seen, repl.Name)
	}
	s.echo(t, conn.ID, "still-there-2")
	if err := s.v.Agent.ConnClose(ctx, conn.ID); err != nil {
		t.Fatal(err)
	}
	old.Finish(t)
	s.expectBackends(t, ClientNS, "tcp", vs.String(), repl)
}

// ProxyRestart: stopping the proxy leaves IPVS as it is (virtual servers,
// real servers, an established connection), and the restarted proxy takes
// the state over without a flap: same table, every weight 1, the connection
// still up.
func testProxyRestart(t *testing.T, s *suite) {
	r1 := s.pod(t, "keep-1", "keep")
	r2 := s.pod(t, "keep-2", "keep")
	svc := newService("keep", map[string]string{"app": "keep"}, tcpPort("tcp", 80))
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc = s.createService(t, svc)
	vs := netip.AddrPortFrom(clusterIP(t, svc), 80)
	np := netip.AddrPortFrom(s.v.Node.IPv4, uint16(nodePort(t, svc, "tcp")))
	s.waitReals(t, "TCP", vs, r1, r2)
	s.waitReals(t, "TCP", np, r1, r2)
	conn := s.openConn(t, ClientNS, vs.String())
	// Only this Service's virtual servers are compared: earlier scenarios'
	// deleted Services may still be draining (weight-0 real servers with
	// connections in TIME_WAIT), which a restarted proxy may clean up.
	mine := func(v *VirtualServer) bool {
		return v.Addr == vs || v.Addr.Port() == np.Port()
	}
	s.expectBackends(t, ClientNS, "tcp", vs.String(), r1, r2)
	s.expectBackends(t, OutsideNS, "tcp", np.String(), r1, r2)
	s.proxy.WaitIdle(t, programTimeout)
	before := s.v.IPVS(t).Filter(mine)

	s.proxy.Stop(t)
	down := s.v.IPVS(t).Filter(mine)
	if down.Shape() != before.Shape() {
		t.Errorf("IPVS changed when the proxy stopped:\n--- before\n%s\n--- after\n%s", before.Shape(), down.Shape())
	}
	s.echo(t, conn.ID, "proxy-down")
	s.expectBackends(t, ClientNS, "tcp", vs.String(), r1, r2)
	s.expectBackends(t, OutsideNS, "tcp", np.String(), r1, r2)

	restart := time.Now()
	s.proxy.Start(t)
	t.Logf("proxy restarted and synced in %s", time.Since(restart).Round(time.Millisecond))
	s.echo(t, conn.ID, "proxy-back")
	after := s.v.IPVS(t).Filter(mine)
	if after.Shape() != before.Shape() {
		t.Errorf("IPVS after the restart differs from before:\n--- before\n%s\n--- after\n%s", before.Shape(), after.Shape())
	}
	for _, v := range after.Services {
		for _, r := range v.Reals {
			if r.Weight != 1 {
				t.Errorf("after restart: %s %s -> %s has weight %d, want 1", v.Proto, v.Addr, r.Addr, r.Weight)
			}
		}
	}
	s.expectBackends(t, ClientNS, "tcp", vs.String(), r1, r2)
	s.echo(t, conn.ID, "still-up")
	if err := s.v.Agent.ConnClose(context.Background(), conn.ID); err != nil {
		t.Fatal(err)
	}
}

// ---- helpers ----

// slow logs a step that took more than a few seconds: where a scenario's
// time goes, in the test output.
func (s *suite) slow(t *testing.T, start time.Time, what string) {
	if d := time.Since(start); d > 3*time.Second {
		t.Logf("slow step (%s): %s", d.Round(time.Millisecond), what)
	}
}

func (s *suite) pod(t *testing.T, name, app string) *Pod {
	t.Helper()
	defer s.slow(t, time.Now(), "pod "+name)
	return s.v.CreatePod(t, framework.PodSpec{Name: name, Namespace: testNS, Labels: map[string]string{"app": app}})
}

func newService(name string, selector map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return framework.NewService(testNS, name, selector, ports...)
}

var (
	tcpPort = framework.TCPServicePort
	udpPort = framework.UDPServicePort
)

// createService creates svc and deletes it when the scenario ends.
func (s *suite) createService(t *testing.T, svc *corev1.Service) *corev1.Service {
	t.Helper()
	ctx := context.Background()
	if _, err := s.c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	created, err := s.c.Client.CoreV1().Services(testNS).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Service %s: %v", svc.Name, err)
	}
	t.Cleanup(func() {
		err := s.c.Client.CoreV1().Services(testNS).Delete(context.Background(), svc.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Logf("deleting Service %s: %v", svc.Name, err)
		}
	})
	return created
}

// setLoadBalancerIngress writes status.loadBalancer.ingress as a cloud
// controller would.
func (s *suite) setLoadBalancerIngress(t *testing.T, name string, ips ...netip.Addr) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := s.c.Client.CoreV1().Services(testNS).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		svc.Status.LoadBalancer.Ingress = nil
		for _, ip := range ips {
			svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip.String()})
		}
		_, err = s.c.Client.CoreV1().Services(testNS).UpdateStatus(context.Background(), svc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("setting load-balancer status of %s: %v", name, err)
	}
}

func clusterIP(t *testing.T, svc *corev1.Service) netip.Addr {
	t.Helper()
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !ip.Is4() {
		t.Fatalf("Service %s: cluster IP %q, want IPv4", svc.Name, svc.Spec.ClusterIP)
	}
	return ip
}

func nodePort(t *testing.T, svc *corev1.Service, name string) int {
	t.Helper()
	for _, p := range svc.Spec.Ports {
		if p.Name == name && p.NodePort != 0 {
			return int(p.NodePort)
		}
	}
	t.Fatalf("Service %s has no nodePort for port %s", svc.Name, name)
	return 0
}

// waitIPVS polls the guest's IPVS table until check passes.
func (s *suite) waitIPVS(t *testing.T, what string, check func(*IPVSTable) error) {
	t.Helper()
	defer s.slow(t, time.Now(), "IPVS: "+what)
	var last *IPVSTable
	err := framework.Poll(context.Background(), programTimeout, 250*time.Millisecond, func(context.Context) error {
		tbl, err := s.v.TryIPVS()
		if err != nil {
			return err
		}
		last = tbl
		return check(tbl)
	})
	if err != nil {
		raw := "(none)"
		if last != nil {
			raw = last.Raw
		}
		t.Fatalf("waiting for IPVS: %s: %v\n--- ipvsadm -Ln:\n%s", what, err, raw)
	}
}

// waitReals waits until the virtual server has exactly the pods as real
// servers on the echo port.
func (s *suite) waitReals(t *testing.T, proto string, vs netip.AddrPort, pods ...*Pod) {
	t.Helper()
	want := make([]string, len(pods))
	for i, p := range pods {
		want[i] = p.Addr()
	}
	s.waitIPVS(t, fmt.Sprintf("%s %s -> %s", proto, vs, joinNames(pods...)), func(tbl *IPVSTable) error {
		return realsAre(tbl, proto, vs, want...)
	})
}

func realsAre(tbl *IPVSTable, proto string, vs netip.AddrPort, want ...string) error {
	v := tbl.Find(proto, vs)
	if v == nil {
		return fmt.Errorf("no virtual server %s %s", proto, vs)
	}
	want = slices.Clone(want)
	sort.Strings(want)
	if got := v.RealAddrs(); !slices.Equal(got, want) {
		return fmt.Errorf("%s %s real servers %v, want %v", proto, vs, got, want)
	}
	return nil
}

func queryMany(netns, proto, addr string, n int) agentapi.QueryManyArgs {
	return agentapi.QueryManyArgs{QueryArgs: agentapi.QueryArgs{NetNS: netns, Proto: proto, Addr: addr, Timeout: 2 * time.Second}, Count: n}
}

// expectBackends waits until queries from netns to addr are answered by
// exactly the pods (each of them, nobody else, no failures).
func (s *suite) expectBackends(t *testing.T, netns, proto, addr string, pods ...*Pod) {
	t.Helper()
	want := podNames(pods...)
	defer s.slow(t, time.Now(), fmt.Sprintf("%s %s from %s answered by %v", proto, addr, nsLabel(netns), want))
	framework.Eventually(t, programTimeout, fmt.Sprintf("%s %s from %s answered by %v", proto, addr, nsLabel(netns), want), func(ctx context.Context) error {
		seen, err := s.v.QueryMany(ctx, netns, proto, addr, 4*len(want))
		if err != nil {
			return err
		}
		for pod := range seen {
			if !slices.Contains(want, pod) {
				return fmt.Errorf("answered by %s (all: %v), want only %v", pod, seen, want)
			}
		}
		if len(seen) != len(want) {
			return fmt.Errorf("answered by %v, want all of %v", seen, want)
		}
		return nil
	})
}

func (s *suite) openConn(t *testing.T, netns, addr string) agentapi.ConnOpenReply {
	t.Helper()
	var r agentapi.ConnOpenReply
	var errs []string
	defer func(start time.Time) {
		s.slow(t, start, fmt.Sprintf("connection to %s (failed attempts: %v)", addr, errs))
	}(time.Now())
	framework.Eventually(t, programTimeout, "TCP connection to "+addr, func(ctx context.Context) error {
		var err error
		r, err = s.v.Agent.ConnOpen(ctx, agentapi.ConnOpenArgs{NetNS: netns, Addr: addr, Timeout: 3 * time.Second})
		if err != nil {
			errs = append(errs, err.Error())
		}
		return err
	})
	t.Logf("connection %d %s -> %s answered by %s", r.ID, r.Local, addr, r.Hello.Pod)
	return r
}

func (s *suite) echo(t *testing.T, id int, msg string) {
	t.Helper()
	r, err := s.v.Agent.ConnEcho(context.Background(), agentapi.ConnEchoArgs{ID: id, Data: msg, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("established connection %d broke: %v", id, err)
	}
	if r.Data != msg {
		t.Fatalf("connection %d echoed %q, want %q", id, r.Data, msg)
	}
}
