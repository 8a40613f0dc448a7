package wire

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

func TestHostVethName(t *testing.T) {
	a, b := HostVethName("abc", "eth0"), HostVethName("abc", "net1")
	if len(a) != 14 || !strings.HasPrefix(a, "pn") || a == b || a != HostVethName("abc", "eth0") {
		t.Fatalf("HostVethName: %q %q", a, b)
	}
}

// TestWireKernel runs the wiring directly (no CNI) in a node and a pod
// namespace: bridge idempotence, pod setup, observation, teardown twice.
func TestWireKernel(t *testing.T) {
	node := netns.New(t, "pnw-node")
	pod := netns.New(t, "pnw-pod")
	gw4 := netip.MustParsePrefix("198.18.1.1/24")
	gw6 := netip.MustParsePrefix("2001:db8:10:1::1/64")
	hostIf := HostVethName("ctr", "eth0")

	err := node.Do(func() error {
		cfg := BridgeConfig{Name: "cbr0", MTU: 1500, Gateways: []netip.Prefix{gw4, gw6}}
		br1, err := EnsureBridge(cfg)
		if err != nil {
			return err
		}
		br2, err := EnsureBridge(cfg)
		if err != nil {
			return err
		}
		if br1 != br2 {
			t.Errorf("second EnsureBridge changed the bridge: %+v -> %+v", br1, br2)
		}
		podNS, err := ns.GetNS(pod.Path())
		if err != nil {
			return err
		}
		defer podNS.Close()
		p, err := SetupPod(PodConfig{
			NetNS: podNS, IfName: "eth0", HostIfName: hostIf, Bridge: "cbr0", MTU: 1400,
			Addrs:    []netip.Prefix{netip.MustParsePrefix("198.18.1.2/24"), netip.MustParsePrefix("2001:db8:10:1::2/64")},
			Gateways: []netip.Addr{gw4.Addr(), gw6.Addr()},
		})
		if err != nil {
			return err
		}
		o, err := Observe("cbr0", hostIf, podNS, "eth0")
		if err != nil {
			return err
		}
		if !o.Bridge.Found || o.Bridge.Type != "bridge" || !slices.Contains(o.Bridge.Addrs, gw4) || !slices.Contains(o.Bridge.Addrs, gw6) {
			t.Errorf("bridge: %+v", o.Bridge)
		}
		if o.Host.MasterIndex != o.Bridge.Index || !o.Host.Hairpin || o.Host.MTU != 1400 || o.Host.PeerIndex != p.Container.Index {
			t.Errorf("host veth: %+v (bridge index %d)", o.Host, o.Bridge.Index)
		}
		if o.Container.PeerIndex != p.Host.Index || o.Container.MTU != 1400 || !o.Container.Up || len(o.Container.Addrs) != 2 {
			t.Errorf("pod interface: %+v", o.Container)
		}
		for _, want := range []Route{
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: gw4.Addr()},
			{Dst: netip.MustParsePrefix("::/0"), Gw: gw6.Addr()},
		} {
			if !slices.Contains(o.Routes, want) {
				t.Errorf("pod routes %v lack %v", o.Routes, want)
			}
		}

		// A name clash with a non-bridge is an error that says so.
		if _, err := EnsureBridge(BridgeConfig{Name: hostIf, MTU: 1500}); err == nil || !strings.Contains(err.Error(), "not a bridge") {
			t.Errorf("EnsureBridge on a veth name: %v", err)
		}
		for i := 0; i < 2; i++ {
			if err := TeardownPod(pod.Path(), "eth0", hostIf); err != nil {
				t.Errorf("TeardownPod #%d: %v", i+1, err)
			}
		}
		return TeardownPod("/run/netns/pnw-does-not-exist", "eth0", hostIf)
	})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := pod.Exec("ip", "link", "show", "eth0"); err == nil {
		t.Errorf("eth0 left in pod:\n%s", out)
	}
	if out, err := node.Exec("ip", "link", "show", hostIf); err == nil {
		t.Errorf("%s left on node:\n%s", hostIf, out)
	}
}
