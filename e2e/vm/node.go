package vm

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/e2e/framework"
	"github.com/kpr-proxy/kpr/e2e/vm/agentapi"
)

// Inside the guest (see README.md for the picture):
//
//	outside ns 198.51.100.10 ──veth── ext0 198.51.100.1
//	                                   node (the VM itself): eth0 192.0.2.11 (qemu slirp, gateway/sink 192.0.2.1)
//	                                   cbr0 198.18.1.1/24 ──veth── pod namespaces 198.18.1.x
//	                                                      └─veth── client ns 198.18.1.2
//
// The node's own addresses and pod CIDR are those of the Node object the
// harness registered for it, so EndpointSlices and the proxy's node IP
// detection see exactly what a real node would report.

// IPTablesBackends are the values SetupNode accepts.
var IPTablesBackends = []string{"nft", "legacy"}

// SetupNode wires the guest as its node: addresses and a default route to
// the slirp gateway (a sink), forwarding, the pod bridge with
// bridge-nf-call-iptables, a client namespace on the bridge, the outside
// client behind the node, and iptables/ip6tables (+ -save/-restore)
// pointing at backend ("nft", Debian's default, or "legacy").
func (v *VM) SetupNode(t testing.TB, backend string) {
	t.Helper()
	if backend != "nft" && backend != "legacy" {
		t.Fatalf("SetupNode: iptables backend %q, want nft or legacy", backend)
	}
	n := v.Node
	gw := v.gatewayIP()
	client := v.ClientIP()
	script := fmt.Sprintf(`
for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf xtables-%[1]s-multi /usr/sbin/$t
done
ip link set lo up
ip addr add %[2]s/%[3]d dev eth0
ip -6 addr add %[4]s/%[5]d dev eth0 nodad
ip link set eth0 up
ip route add default via %[6]s
ip -6 route add default via %[7]s dev eth0
sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
ip link add cbr0 type bridge forward_delay 0 stp_state 0
# A fixed MAC: a bridge otherwise takes its lowest port's, and changes it
# when that pod goes, leaving neighbours with a dead gateway MAC for ~30s.
ip link set cbr0 address 02:00:00:00:00:01
ip addr add %[8]s/%[9]d dev cbr0
ip link set cbr0 up
sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
mkdir -p /run/kpr
# the outside client, behind the node
ip netns add %[10]s
ip link add ext0 type veth peer name eth0 netns %[10]s
ip addr add %[11]s/%[12]d dev ext0
ip link set ext0 up
ip -n %[10]s link set lo up
ip -n %[10]s addr add %[13]s/%[12]d dev eth0
ip -n %[10]s link set eth0 up
ip -n %[10]s route add default via %[11]s
`, backend,
		n.IPv4, framework.NodeNetV4.Bits(), n.IPv6, framework.NodeNetV6.Bits(),
		RouterIPv4, framework.RouterIPv6,
		gw, n.PodCIDRv4.Bits(),
		OutsideNS, framework.OutsideRouterIPv4, framework.OutsideNet.Bits(), OutsideIPv4)
	v.Sh(t, script)
	v.plugNS(t, ClientNS, "vclient", client)
}

// ClientIP is the client namespace's address on the pod bridge (.2 of the
// pod CIDR): a pod-network client no Service selects.
func (v *VM) ClientIP() netip.Addr { return v.gatewayIP().Next() }

// plugNS creates namespace name on the pod bridge with ip.
func (v *VM) plugNS(t testing.TB, name, hostIf string, ip netip.Addr) {
	t.Helper()
	bits := v.Node.PodCIDRv4.Bits()
	v.Sh(t, fmt.Sprintf(`
ip netns add %[1]s
ip link add %[2]s type veth peer name eth0 netns %[1]s
ip link set %[2]s master cbr0
ip link set %[2]s up
ip -n %[1]s link set lo up
ip -n %[1]s addr add %[3]s/%[4]d dev eth0
ip -n %[1]s link set eth0 up
ip -n %[1]s route add default via %[5]s
`, name, hostIf, ip, bits, v.gatewayIP()))
}

// Pod is a pod inside the guest: a network namespace on the pod bridge
// running the echo server, and its API object (framework.CreateRemotePod),
// so EndpointSlices come from the real controller.
type Pod struct {
	*framework.Pod
	// NetNS is the guest namespace; IP the pod's address.
	NetNS string
	IP    netip.Addr

	v       *VM
	proc    string
	hostIf  string
	removed bool
}

// CreatePod starts an echo pod in the guest and creates its Pod object on
// the VM's node (spec.Node is set to it). The pod is removed when the test
// ends.
func (v *VM) CreatePod(t testing.TB, spec framework.PodSpec) *Pod {
	t.Helper()
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	spec.Node = v.Node.Index
	ip := v.allocIP()
	p := &Pod{NetNS: "pod-" + spec.Namespace + "-" + spec.Name, IP: ip, v: v,
		hostIf: fmt.Sprintf("vp%d", ip.As4()[3])}
	p.proc = p.NetNS
	v.plugNS(t, p.NetNS, p.hostIf, ip)
	ready := "/run/kpr/" + p.NetNS + ".ready"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := v.Agent.Start(ctx, agentapi.StartArgs{Name: p.proc, NetNS: p.NetNS, Argv: []string{
		agentapi.BinDir + "/echo", "serve", "--name=" + spec.Name,
		fmt.Sprintf("--tcp=:%d", framework.EchoTCPPort), fmt.Sprintf("--udp=:%d", framework.EchoUDPPort),
		fmt.Sprintf("--http=:%d", framework.EchoHTTPPort), "--ready-file=" + ready,
	}}); err != nil {
		t.Fatalf("starting echo in %s: %v", p.NetNS, err)
	}
	framework.Eventually(t, 20*time.Second, "echo server of "+p.NetNS+" listening", func(ctx context.Context) error {
		_, err := v.Agent.ReadFile(ctx, ready)
		if err != nil {
			if st, serr := v.Agent.Status(ctx, p.proc); serr == nil && !st.Running {
				return fmt.Errorf("echo server exited (%s)", st.Exit)
			}
		}
		return err
	})
	t.Cleanup(func() { p.removeLocal() })
	p.Pod = v.c.CreateRemotePod(t, spec, ip)
	return p
}

// Finish completes the pod's life as a kubelet does: stops the server,
// removes its namespace, deletes the Pod object.
func (p *Pod) Finish(t testing.TB) {
	t.Helper()
	p.removeLocal()
	p.Pod.Finish(t)
}

// removeLocal stops the echo server and removes the namespace (best
// effort: the VM may be gone already at cleanup).
func (p *Pod) removeLocal() {
	if p.removed || p.v.qemu == nil || !p.v.qemu.Running() {
		return
	}
	p.removed = true
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, _ = p.v.Agent.Stop(ctx, agentapi.StopArgs{Name: p.proc, Grace: 2 * time.Second})
	_, _ = p.v.Agent.Exec(ctx, agentapi.ExecArgs{Argv: []string{"/bin/sh", "-c", fmt.Sprintf("ip link del %s; ip netns del %s", p.hostIf, p.NetNS)}})
}

// Addr is the pod's ip:port for the echo server's TCP/UDP port.
func (p *Pod) Addr() string { return netip.AddrPortFrom(p.IP, framework.EchoTCPPort).String() }

// podNames lists pods' names.
func podNames(ps ...*Pod) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Name
	}
	return out
}

func joinNames(ps ...*Pod) string { return strings.Join(podNames(ps...), ",") }
