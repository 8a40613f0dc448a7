// Package smoke checks that the e2e harness itself works: control plane,
// topology, pods, EndpointSlices, node routes, and that a proxy (upstream
// kube-proxy here) can serve Services in it.
package smoke

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kpr-proxy/kpr/e2e/framework"
)

func TestMain(m *testing.M) { framework.Main(m) }

func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping e2e smoke test in -short mode")
	}
	c := framework.Start(t, framework.Options{})
	ctx := context.Background()

	// Two echo pods on two nodes, and a dual-stack Service selecting them.
	labels := map[string]string{"app": "echo"}
	p1 := c.CreatePod(t, framework.PodSpec{Name: "echo-1", Node: 0, Labels: labels})
	p2 := c.CreatePod(t, framework.PodSpec{Name: "echo-2", Node: 1, Labels: labels})
	for _, p := range []*framework.Pod{p1, p2} {
		if !p.IPv4().IsValid() || !p.IPv6().IsValid() {
			t.Fatalf("pod %s: want one IPv4 and one IPv6 address, got %v", p.Name, p.IPs)
		}
		if !p.Node.PodCIDRv4.Contains(p.IPv4()) || !p.Node.PodCIDRv6.Contains(p.IPv6()) {
			t.Fatalf("pod %s IPs %v are outside node %s's pod CIDRs", p.Name, p.IPs, p.Node.Name)
		}
	}
	svc, err := c.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: corev1.ServiceSpec{
			Type:           corev1.ServiceTypeNodePort,
			Selector:       labels,
			IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicyRequireDualStack),
			Ports: []corev1.ServicePort{
				{Name: "tcp", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("tcp")},
				{Name: "udp", Protocol: corev1.ProtocolUDP, Port: 80, TargetPort: intstr.FromString("udp")},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Service echo: clusterIPs %v, nodePort %d", svc.Spec.ClusterIPs, svc.Spec.Ports[0].NodePort)

	// The EndpointSlice controller (kube-controller-manager) turns the pods
	// into EndpointSlices, with both families' addresses.
	c.WaitForEndpoints(t, "default", "echo", append(append([]netip.Addr{}, p1.IPs...), p2.IPs...), 30*time.Second)

	t.Run("outside reaches node IPs", func(t *testing.T) {
		for _, n := range c.Nodes() {
			c.StartEcho(t, n.NetNS, n.Name+"-host")
			r, err := c.Outside().QueryTimeout(3*time.Second, "tcp", framework.AddrPort(n.IPv4, framework.EchoTCPPort))
			if err != nil {
				t.Fatalf("outside -> %s: %v", n.Name, err)
			}
			if r.Pod != n.Name+"-host" || r.ClientIP() != framework.OutsideIPv4.String() {
				t.Fatalf("outside -> %s: got %+v, want server %s-host seeing client %s", n.Name, r, n.Name, framework.OutsideIPv4)
			}
		}
	})

	t.Run("pod network across nodes", func(t *testing.T) {
		t.Logf("CNI: %s", c.CNI)
		n1 := c.Node(0)
		for _, ip := range p2.IPs {
			// Routes to other nodes' pod CIDRs come from the routes controller
			// (podnet) or the harness (reference CNI); allow it a moment.
			framework.Eventually(t, 20*time.Second, fmt.Sprintf("node1 -> pod on node2 (%s)", ip), func(ctx context.Context) error {
				cctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				r, err := n1.Query(cctx, "tcp", framework.AddrPort(ip, framework.EchoTCPPort))
				if err != nil {
					return err
				}
				if r.Pod != p2.Name {
					return fmt.Errorf("answered by %q", r.Pod)
				}
				return nil
			})
			r, err := p1.QueryTimeout(3*time.Second, "udp", framework.AddrPort(ip, framework.EchoUDPPort))
			if err != nil {
				t.Fatalf("pod echo-1 -> pod echo-2 (%s) over UDP: %v", ip, err)
			}
			if r.Pod != p2.Name || r.ClientIP() != p1.IP(ip.Is6()).String() {
				t.Fatalf("pod to pod: got %+v, want echo-2 seeing %s", r, p1.IP(ip.Is6()))
			}
		}
	})

	t.Run("ServiceAccount token", func(t *testing.T) {
		_, token := c.ServiceAccountKubeconfig(t, "kube-system", "kpr-e2e-smoke")
		cs, err := kubernetes.NewForConfig(c.RESTConfigForToken(token))
		if err != nil {
			t.Fatal(err)
		}
		rev, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := "system:serviceaccount:kube-system:kpr-e2e-smoke"; rev.Status.UserInfo.Username != want {
			t.Fatalf("token authenticates as %q, want %q", rev.Status.UserInfo.Username, want)
		}
	})

	t.Run("upstream kube-proxy serves the Service", func(t *testing.T) {
		bin, err := c.ProxyBinary(framework.ProxyUpstream)
		if err != nil {
			t.Fatal(err)
		}
		// node1 uses the machine's default iptables (nf_tables here), node2
		// the legacy backend, so both ProxySpec paths are exercised.
		for i := range c.Nodes() {
			n := c.Node(i)
			spec := framework.ProxySpec{Binary: bin, Args: framework.StandardProxyArgs(n, c.AdminKubeconfig)}
			if i == 1 {
				spec.Env = c.IPTablesBackendEnv(t, "legacy")
			}
			p := n.StartProxy(t, spec)
			p.WaitHealthy(t, 60*time.Second)
			p.WaitSynced(t, 60*time.Second)
		}
		if out := c.Node(1).MustExec(t, "iptables-legacy-save", "-t", "nat"); !strings.Contains(out, "KUBE-SERVICES") {
			t.Fatalf("node2's kube-proxy did not program the legacy backend:\n%s", out)
		}
		for _, cip := range svc.Spec.ClusterIPs {
			ip := netip.MustParseAddr(cip)
			for _, proto := range []string{"tcp", "udp"} {
				seen := map[string]bool{}
				framework.Eventually(t, 30*time.Second, fmt.Sprintf("%s ClusterIP %s to reach both pods from pod echo-1", proto, ip), func(ctx context.Context) error {
					cctx, cancel := context.WithTimeout(ctx, time.Second)
					defer cancel()
					r, err := p1.Query(cctx, proto, framework.AddrPort(ip, 80))
					if err != nil {
						return err
					}
					seen[r.Pod] = true
					if !seen[p1.Name] || !seen[p2.Name] {
						return fmt.Errorf("seen so far: %v", seen)
					}
					return nil
				})
			}
		}
		// NodePort from outside, to each node: exercises the router, the
		// node's DNAT and, for the remote pod, masquerade and the return path.
		nodePort := int(svc.Spec.Ports[0].NodePort)
		for _, n := range c.Nodes() {
			seen := map[string]bool{}
			framework.Eventually(t, 30*time.Second, fmt.Sprintf("outside -> NodePort on %s to reach both pods", n.Name), func(ctx context.Context) error {
				cctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				r, err := c.Outside().Query(cctx, "tcp", framework.AddrPort(n.IPv4, nodePort))
				if err != nil {
					return err
				}
				seen[r.Pod] = true
				if !seen[p1.Name] || !seen[p2.Name] {
					return fmt.Errorf("seen so far: %v", seen)
				}
				return nil
			})
		}
	})

	t.Run("pod termination", func(t *testing.T) {
		p3 := c.CreatePod(t, framework.PodSpec{Name: "echo-3", Node: 1, Labels: labels})
		all := append(append(append([]netip.Addr{}, p1.IPs...), p2.IPs...), p3.IPs...)
		c.WaitForEndpoints(t, "default", "echo", all, 30*time.Second)
		p3.Terminate(t, 30*time.Second)
		framework.Eventually(t, 30*time.Second, "echo-3's endpoints to be terminating", func(ctx context.Context) error {
			list, err := c.Client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=echo"})
			if err != nil {
				return err
			}
			n := 0
			for _, s := range list.Items {
				for _, ep := range s.Endpoints {
					if ep.TargetRef != nil && ep.TargetRef.Name == p3.Name {
						if ep.Conditions.Terminating == nil || !*ep.Conditions.Terminating {
							return fmt.Errorf("endpoint %v not terminating yet", ep.Addresses)
						}
						n++
					}
				}
			}
			if n == 0 {
				return fmt.Errorf("no endpoints for echo-3")
			}
			return nil
		})
		p3.Finish(t)
		c.WaitForEndpoints(t, "default", "echo", append(append([]netip.Addr{}, p1.IPs...), p2.IPs...), 30*time.Second)
	})
}
