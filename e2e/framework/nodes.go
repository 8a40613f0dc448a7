package framework

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// registerNode creates the Node object as a kubelet would (labels, podCIDRs,
// addresses, Ready), so proxies find their node IPs and zone.
func (c *Cluster) registerNode(ctx context.Context, n *Node) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name,
			Labels: map[string]string{
				"kubernetes.io/hostname":        n.Name,
				"kubernetes.io/os":              "linux",
				"kubernetes.io/arch":            "amd64",
				"topology.kubernetes.io/zone":   n.Zone,
				"topology.kubernetes.io/region": "e2e",
			},
		},
		Spec: corev1.NodeSpec{
			PodCIDR:  n.PodCIDRv4.String(),
			PodCIDRs: []string{n.PodCIDRv4.String(), n.PodCIDRv6.String()},
		},
	}
	created, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating Node %s: %w", n.Name, err)
	}
	now := metav1.NewTime(time.Now())
	created.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.IPv4.String()},
			{Type: corev1.NodeInternalIP, Address: n.IPv6.String()},
			{Type: corev1.NodeHostName, Address: n.Name},
		},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "e2e harness node", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		NodeInfo: corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "v1.37.2", KubeProxyVersion: ""},
		Phase:    corev1.NodeRunning,
	}
	if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting Node %s status: %w", n.Name, err)
	}
	return nil
}

// Cluster returns the node's cluster.
func (n *Node) Cluster() *Cluster { return n.c }

// IP returns the node's IPv4 or IPv6 InternalIP.
func (n *Node) IP(v6 bool) netip.Addr {
	if v6 {
		return n.IPv6
	}
	return n.IPv4
}

// addStaticPodRoutes makes each node route other nodes' pod CIDRs via their
// InternalIPs: what the podnet routes controller does, done by the harness
// for CNIReference.
func (c *Cluster) addStaticPodRoutes() error {
	for _, n := range c.nodes {
		for _, o := range c.nodes {
			if o == n {
				continue
			}
			if err := ipAll(n.NetNS,
				fmt.Sprintf("route replace %s via %s dev eth0", o.PodCIDRv4, o.IPv4),
				fmt.Sprintf("-6 route replace %s via %s dev eth0", o.PodCIDRv6, o.IPv6),
			); err != nil {
				return err
			}
		}
	}
	return nil
}

// StartEcho runs an echo server named name in any harness namespace (a node
// for a host-network workload, the outside host for a client-side server)
// on the Echo*Port ports, waits until it listens, and stops it when the test
// ends.
func (c *Cluster) StartEcho(t testing.TB, ns *NetNS, name string) *Process {
	t.Helper()
	ready := filepath.Join(c.RunDir, "echo-"+ns.Name+"-"+name+".ready")
	_ = os.Remove(ready)
	p, err := c.startProcess(ProcessSpec{Name: "echo-" + name, NS: ns, Argv: []string{
		c.bins["echo"], "serve", "--name=" + name,
		fmt.Sprintf("--tcp=:%d", EchoTCPPort), fmt.Sprintf("--udp=:%d", EchoUDPPort),
		fmt.Sprintf("--http=:%d", EchoHTTPPort), "--ready-file=" + ready,
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(2 * time.Second) })
	if err := c.waitProcess(context.Background(), p, 10*time.Second, "echo server listening", func(context.Context) error {
		_, err := os.Stat(ready)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return p
}
