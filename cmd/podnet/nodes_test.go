package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"go.uber.org/zap/zaptest"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kpr-proxy/kpr/internal/cni/routes"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

func k8sNode(name string, podCIDRs []string, ips ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.NodeSpec{PodCIDR: podCIDRs[0], PodCIDRs: podCIDRs}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip})
	}
	return n
}

// agent is one node's `podnet node` running in-process against a fake
// API server, with its routing table bound to the node's namespace.
type agent struct {
	node    *testNode
	confDir string
	binDir  string
	done    chan error
}

func startAgent(t *testing.T, ctx context.Context, node *testNode, name string, client *fake.Clientset) *agent {
	t.Helper()
	table, err := routes.NewNetlinkTable(routes.NetlinkConfig{NetNSPath: node.ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(table.Close)
	a := &agent{node: node, confDir: t.TempDir(), binDir: t.TempDir(), done: make(chan error, 1)}
	opts := nodeOptions{
		NodeName: name, CNIConfDir: a.confDir, CNIConfName: "10-podnet.conflist", CNIBinDir: a.binDir,
		InstallBinary: true, NetworkName: "podnet", CNIVersion: "1.0.0", DataDir: node.dataDir,
		Routes: true, RouteProtocol: routes.DefaultProtocol, ResyncPeriod: time.Minute,
	}
	deps := nodeDeps{Client: client, Table: table, Executable: filepath.Join(pluginDir, "podnet"), Logger: zaptest.NewLogger(t).Named(name)}
	go func() { a.done <- runNode(ctx, opts, deps) }()
	return a
}

// conflist waits for the agent to write the node's conflist and loads it.
func (a *agent) conflist(t *testing.T) *libcni.NetworkConfigList {
	t.Helper()
	path := filepath.Join(a.confDir, "10-podnet.conflist")
	waitFor(t, "conflist "+path, func() bool { _, err := os.Stat(path); return err == nil })
	l, err := libcni.ConfListFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// waitFor polls cond; the deadline only bounds a hung test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func podnetRoutes(n *testNode) string {
	p := fmt.Sprint(routes.DefaultProtocol)
	return n.ns.MustExec("ip", "route", "show", "proto", p) + n.ns.MustExec("ip", "-6", "route", "show", "proto", p)
}

// A pod on node A reaches a pod on node B through the routes the node
// agents program (host-gw), over IPv4 and IPv6, without NAT. The agents
// also install the binary and write each node's conflist from its Node's
// podCIDRs; the pods are added with exactly those conflists. A deleted
// Node's routes go; routes podnet did not make stay.
func TestTwoNodesHostGW(t *testing.T) {
	lan := netns.New(t, "pnc-lan")
	lan.MustExec("ip", "link", "add", "br0", "type", "bridge")
	lan.MustExec("ip", "link", "set", "br0", "up")
	nodeA, nodeB := newTestNode(t, "pnc-nodea"), newTestNode(t, "pnc-nodeb")
	for _, n := range []struct {
		node     *testNode
		port     string
		ip4, ip6 string
	}{{nodeA, "port-a", "192.0.2.1/24", "2001:db8:1::1/64"}, {nodeB, "port-b", "192.0.2.2/24", "2001:db8:1::2/64"}} {
		netns.Veth(t, n.node.ns, "eth0", lan, n.port)
		lan.MustExec("ip", "link", "set", n.port, "master", "br0")
		n.node.ns.MustExec("ip", "addr", "add", n.ip4, "dev", "eth0")
		n.node.ns.MustExec("ip", "-6", "addr", "add", n.ip6, "dev", "eth0", "nodad")
	}
	// Someone else's route on node A, which podnet must leave alone.
	nodeA.ns.MustExec("ip", "route", "add", "198.18.99.0/24", "via", "192.0.2.2", "proto", "static")

	client := fake.NewClientset(
		k8sNode("node-a", []string{"198.18.1.0/24", "2001:db8:10:1::/64"}, "192.0.2.1", "2001:db8:1::1"),
		k8sNode("node-b", []string{"198.18.2.0/24", "2001:db8:10:2::/64"}, "192.0.2.2", "2001:db8:1::2"),
	)
	ctx, cancel := context.WithCancel(context.Background())
	agentA := startAgent(t, ctx, nodeA, "node-a", client)
	agentB := startAgent(t, ctx, nodeB, "node-b", client)
	defer func() {
		cancel()
		for _, a := range []*agent{agentA, agentB} {
			if err := <-a.done; err != nil {
				t.Errorf("runNode: %v", err)
			}
		}
	}()

	listA, listB := agentA.conflist(t), agentB.conflist(t)
	if st, err := os.Stat(filepath.Join(agentA.binDir, "podnet")); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("binary not installed: %v %v", st, err)
	}
	raw, _ := os.ReadFile(filepath.Join(agentA.confDir, "10-podnet.conflist"))
	if !strings.Contains(string(raw), `"subnet": "198.18.1.0/24"`) || !strings.Contains(string(raw), `"subnet": "2001:db8:10:1::/64"`) {
		t.Fatalf("node A conflist:\n%s", raw)
	}

	waitFor(t, "node A's routes to node B", func() bool {
		r := podnetRoutes(nodeA)
		return strings.Contains(r, "198.18.2.0/24 via 192.0.2.2 dev eth0") && strings.Contains(r, "2001:db8:10:2::/64 via 2001:db8:1::2 dev eth0")
	})
	waitFor(t, "node B's routes to node A", func() bool {
		r := podnetRoutes(nodeB)
		return strings.Contains(r, "198.18.1.0/24 via 192.0.2.1 dev eth0") && strings.Contains(r, "2001:db8:10:1::/64 via 2001:db8:1::1 dev eth0")
	})

	podA, podB := netns.New(t, "pnc-pod"), netns.New(t, "pnc-pod")
	ra := nodeA.mustAdd(listA, "pod-a", podA)
	rb := nodeB.mustAdd(listB, "pod-b", podB)
	for _, v6 := range []bool{false, true} {
		a, b := podAddr(t, ra, v6), podAddr(t, rb, v6)
		listen(t, podB.Path(), apOf(b, 8080))
		mustReach(t, podA.Path(), apOf(b, 8080), a)
		listen(t, podA.Path(), apOf(a, 8080))
		mustReach(t, podB.Path(), apOf(a, 8080), b)
	}

	// Node B leaves the cluster: node A drops its routes, nothing else.
	if err := client.CoreV1().Nodes().Delete(ctx, "node-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node A's routes to node B removed", func() bool {
		r := podnetRoutes(nodeA)
		return !strings.Contains(r, "198.18.2.0/24") && !strings.Contains(r, "2001:db8:10:2::/64")
	})
	if r := nodeA.ns.MustExec("ip", "route", "show"); !strings.Contains(r, "198.18.99.0/24 via 192.0.2.2 dev eth0 proto static") {
		t.Fatalf("foreign route gone:\n%s", r)
	}

	if err := nodeA.del(listA, "pod-a", podA.Path()); err != nil {
		t.Fatal(err)
	}
	if err := nodeB.del(listB, "pod-b", podB.Path()); err != nil {
		t.Fatal(err)
	}
	nodeA.assertClean(podA)
	nodeB.assertClean(podB)
}

// runNode refuses bad options before it installs or watches anything.
func TestRunNodeRejectsBadOptions(t *testing.T) {
	bin := t.TempDir()
	for _, tc := range []struct {
		name string
		o    nodeOptions
		msg  string
	}{
		{"no node name", nodeOptions{CNIBinDir: bin, InstallBinary: true}, "--node-name"},
		{"masq without cluster cidr", nodeOptions{NodeName: "n", CNIBinDir: bin, InstallBinary: true, IPMasq: true}, "--ip-masq needs --cluster-cidr"},
		{"bad cluster cidr", nodeOptions{NodeName: "n", CNIBinDir: bin, InstallBinary: true, ClusterCIDR: "198.18.0.1/16"}, "did you mean 198.18.0.0/16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := runNode(context.Background(), tc.o, nodeDeps{Client: fake.NewClientset(), Executable: filepath.Join(pluginDir, "podnet"), Logger: zaptest.NewLogger(t)})
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want mention of %q", err, tc.msg)
			}
			if entries, _ := os.ReadDir(bin); len(entries) != 0 {
				t.Fatalf("binary installed despite bad options")
			}
		})
	}
}
