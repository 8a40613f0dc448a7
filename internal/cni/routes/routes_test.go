package routes_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kpr-proxy/kpr/internal/cni/routes"
	fakeroutes "github.com/kpr-proxy/kpr/internal/cni/routes/testing"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

const proto = routes.DefaultProtocol

func node(name string, cidrs []string, ips ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.NodeSpec{PodCIDRs: cidrs}}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip})
	}
	n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeHostName, Address: name})
	return n
}

func rt(dst, via string) routes.Route {
	return routes.Route{Dst: netip.MustParsePrefix(dst), Via: netip.MustParseAddr(via), Protocol: proto}
}

func TestDesired(t *testing.T) {
	legacy := node("c", nil, "192.0.2.3")
	legacy.Spec.PodCIDR = "198.18.3.0/24"
	nodes := []*v1.Node{
		node("a", []string{"198.18.1.0/24"}, "192.0.2.1"),
		node("b", []string{"198.18.2.0/24", "2001:db8:10:2::/64"}, "192.0.2.2", "2001:db8:1::2"),
		legacy,
		node("d", nil, "192.0.2.4"),
		node("e", []string{"198.18.5.0/24", "2001:db8:10:5::/64"}, "192.0.2.5"),
		node("f", []string{"not-a-cidr"}, "192.0.2.6"),
		node("g", []string{"198.18.2.0/24"}, "192.0.2.7"),
	}
	got, skips := routes.Desired(nodes, "a", proto)
	want := []routes.Route{
		rt("198.18.2.0/24", "192.0.2.2"),
		rt("198.18.3.0/24", "192.0.2.3"),
		rt("198.18.5.0/24", "192.0.2.5"),
		rt("2001:db8:10:2::/64", "2001:db8:1::2"),
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Desired:\n got %v\nwant %v", got, want)
	}
	reasons := fmt.Sprint(skips)
	for _, s := range []string{"{d no podCIDR", "{e no InternalIP of the family of podCIDR 2001:db8:10:5::/64", `{f podCIDR "not-a-cidr" does not parse`, "{g podCIDR 198.18.2.0/24 is also claimed"} {
		if !strings.Contains(reasons, s) {
			t.Errorf("skips %s lack %q", reasons, s)
		}
	}
}

func TestPlanOnlyTouchesOwnRoutes(t *testing.T) {
	current := []routes.Route{
		rt("198.18.2.0/24", "192.0.2.2"),  // ours, right
		rt("198.18.3.0/24", "192.0.2.30"), // ours, wrong next hop
		rt("198.18.9.0/24", "192.0.2.9"),  // ours, node gone
		{Dst: netip.MustParsePrefix("198.18.4.0/24"), Via: netip.MustParseAddr("192.0.2.40"), Protocol: 4}, // static, conflicts
		{Dst: netip.MustParsePrefix("198.18.99.0/24"), Via: netip.MustParseAddr("192.0.2.99"), Protocol: 4},
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: netip.MustParseAddr("192.0.2.254"), Protocol: 3},
	}
	desired := []routes.Route{rt("198.18.2.0/24", "192.0.2.2"), rt("198.18.3.0/24", "192.0.2.3"), rt("198.18.4.0/24", "192.0.2.4")}
	ch := routes.Plan(desired, current, proto)
	if fmt.Sprint(ch.Replace) != fmt.Sprint([]routes.Route{rt("198.18.3.0/24", "192.0.2.3")}) {
		t.Errorf("Replace = %v", ch.Replace)
	}
	if fmt.Sprint(ch.Delete) != fmt.Sprint([]routes.Route{rt("198.18.9.0/24", "192.0.2.9")}) {
		t.Errorf("Delete = %v", ch.Delete)
	}
	if fmt.Sprint(ch.Conflicts) != fmt.Sprint([]routes.Route{rt("198.18.4.0/24", "192.0.2.4")}) {
		t.Errorf("Conflicts = %v", ch.Conflicts)
	}
	if routes.Plan(desired[:2], []routes.Route{desired[0], desired[1]}, proto).Empty() != true {
		t.Error("Plan of an up-to-date table is not empty")
	}
}

// localRecorder records OnLocalNode calls.
type localRecorder struct {
	mu    sync.Mutex
	calls []string
}

func (l *localRecorder) on(n *v1.Node) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, strings.Join(n.Spec.PodCIDRs, ","))
	return nil
}

func (l *localRecorder) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.calls...)
}

// eventually polls cond; the deadline only bounds a hung test, it asserts
// nothing about speed.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestControllerWithFakes(t *testing.T) {
	client := fake.NewClientset(
		node("a", []string{"198.18.1.0/24"}, "192.0.2.1"),
		node("b", []string{"198.18.2.0/24"}, "192.0.2.2"),
	)
	table := fakeroutes.NewFakeTable()
	foreign := routes.Route{Dst: netip.MustParsePrefix("198.18.99.0/24"), Via: netip.MustParseAddr("192.0.2.99"), Protocol: 4}
	table.Put(foreign)
	rec := &localRecorder{}
	c, err := routes.New(routes.Config{Client: client, NodeName: "a", Table: table, Logger: zaptest.NewLogger(t), OnLocalNode: rec.on})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	dstB := netip.MustParsePrefix("198.18.2.0/24")
	eventually(t, "route to node b", func() bool { r, ok := table.Get(dstB); return ok && r == rt("198.18.2.0/24", "192.0.2.2") })
	eventually(t, "local node callback", func() bool { return len(rec.get()) == 1 && rec.get()[0] == "198.18.1.0/24" })

	// A new node appears.
	if _, err := client.CoreV1().Nodes().Create(ctx, node("c", []string{"198.18.3.0/24"}, "192.0.2.3"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "route to node c", func() bool { _, ok := table.Get(netip.MustParsePrefix("198.18.3.0/24")); return ok })

	// Node b is deleted: its route goes, the foreign route stays.
	if err := client.CoreV1().Nodes().Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "route to deleted node b removed", func() bool { _, ok := table.Get(dstB); return !ok })
	if r, ok := table.Get(foreign.Dst); !ok || r != foreign {
		t.Fatalf("foreign route touched: %v %v", r, ok)
	}

	// Own node gets a second (IPv6) podCIDR: the callback runs again.
	self, _ := client.CoreV1().Nodes().Get(ctx, "a", metav1.GetOptions{})
	self.Spec.PodCIDRs = append(self.Spec.PodCIDRs, "2001:db8:10:1::/64")
	if _, err := client.CoreV1().Nodes().Update(ctx, self, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "second local callback", func() bool {
		c := rec.get()
		return len(c) == 2 && c[1] == "198.18.1.0/24,2001:db8:10:1::/64"
	})
}

func TestNewRejectsBadConfig(t *testing.T) {
	client := fake.NewClientset()
	if _, err := routes.New(routes.Config{Client: client}); err == nil || !strings.Contains(err.Error(), "node name") {
		t.Errorf("no node name: %v", err)
	}
	if _, err := routes.New(routes.Config{Client: client, NodeName: "a", Protocol: 2}); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("protocol 2: %v", err)
	}
}

// TestNetlinkTableKernel programs real routes inside a throwaway netns that
// has a connected network to route through.
func TestNetlinkTableKernel(t *testing.T) {
	n := netns.New(t, "pnr")
	peer := netns.New(t, "pnr-peer")
	netns.Veth(t, n, "eth0", peer, "eth0")
	n.MustExec("ip", "addr", "add", "192.0.2.1/24", "dev", "eth0")
	n.MustExec("ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", "eth0", "nodad")
	// Someone else's route that must survive.
	n.MustExec("ip", "route", "add", "198.18.99.0/24", "via", "192.0.2.99", "proto", "static")

	table, err := routes.NewNetlinkTable(routes.NetlinkConfig{NetNSPath: n.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer table.Close()
	client := fake.NewClientset()
	c, err := routes.New(routes.Config{Client: client, NodeName: "a", Table: table, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	nodes := []*v1.Node{
		node("a", []string{"198.18.1.0/24", "2001:db8:10:1::/64"}, "192.0.2.1", "2001:db8:1::1"),
		node("b", []string{"198.18.2.0/24", "2001:db8:10:2::/64"}, "192.0.2.2", "2001:db8:1::2"),
		node("c", []string{"198.18.3.0/24"}, "192.0.2.3"),
	}
	if err := c.SyncRoutes(nodes); err != nil {
		t.Fatal(err)
	}
	out4 := n.MustExec("ip", "route", "show", "proto", fmt.Sprint(proto))
	out6 := n.MustExec("ip", "-6", "route", "show", "proto", fmt.Sprint(proto))
	for _, want := range []string{"198.18.2.0/24 via 192.0.2.2 dev eth0", "198.18.3.0/24 via 192.0.2.3 dev eth0"} {
		if !strings.Contains(out4, want) {
			t.Errorf("IPv4 routes lack %q:\n%s", want, out4)
		}
	}
	if !strings.Contains(out6, "2001:db8:10:2::/64 via 2001:db8:1::2 dev eth0") {
		t.Errorf("IPv6 routes:\n%s", out6)
	}
	// Idempotent: a second sync changes nothing (List reads back what
	// Replace wrote, protocol included).
	list, _ := table.List()
	if ch := routes.Plan(mustDesired(nodes), list, proto); !ch.Empty() {
		t.Errorf("second sync would change %+v", ch)
	}

	// Node b leaves: its routes go; c's and the static one stay.
	if err := c.SyncRoutes([]*v1.Node{nodes[0], nodes[2]}); err != nil {
		t.Fatal(err)
	}
	all := n.MustExec("ip", "route", "show") + n.MustExec("ip", "-6", "route", "show")
	if strings.Contains(all, "198.18.2.0/24") || strings.Contains(all, "2001:db8:10:2::/64") {
		t.Errorf("routes of deleted node b remain:\n%s", all)
	}
	for _, want := range []string{"198.18.3.0/24 via 192.0.2.3", "198.18.99.0/24 via 192.0.2.99 dev eth0 proto static"} {
		if !strings.Contains(all, want) {
			t.Errorf("route %q missing:\n%s", want, all)
		}
	}

	// A next hop that is not on a connected network is a clear error.
	err = table.Replace(rt("198.18.7.0/24", "203.0.113.7"))
	if err == nil || !strings.Contains(err.Error(), "not on a directly connected network") {
		t.Errorf("unreachable next hop: %v", err)
	}
}

func mustDesired(nodes []*v1.Node) []routes.Route {
	d, _ := routes.Desired(nodes, "a", proto)
	return d
}
