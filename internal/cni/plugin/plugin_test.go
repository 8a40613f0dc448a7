package plugin

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kpr-proxy/kpr/internal/cni/ipam"
	fakeipam "github.com/kpr-proxy/kpr/internal/cni/ipam/testing"
	"github.com/kpr-proxy/kpr/internal/cni/masq"
	fakemasq "github.com/kpr-proxy/kpr/internal/cni/masq/testing"
	"github.com/kpr-proxy/kpr/internal/cni/wire"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

func code(t *testing.T, err error) uint {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not a CNI error", err)
	}
	return e.Code
}

// withFakes returns a plugin whose store and iptables are fakes, and counts
// store opens (to prove bad input fails before side effects).
func withFakes(st *fakeipam.FakeStore) (*Plugin, *int) {
	opens := 0
	p := New(Config{
		LockTimeout: 20 * time.Millisecond,
		OpenStore: func(string) (ipam.Store, error) {
			opens++
			return st, nil
		},
		NewMasqTable: func(bool) (masq.Table, error) { return fakemasq.NewFakeTable(), nil },
	})
	return p, &opens
}

func args(conf string, netns string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "cid", IfName: "eth0", Netns: netns, StdinData: []byte(conf)}
}

const goodConf = `{"cniVersion":"1.0.0","name":"podnet","type":"podnet","subnet":"198.18.1.0/24","dataDir":"/nonexistent-podnet"}`

func TestAddFailsBeforeSideEffects(t *testing.T) {
	for _, tc := range []struct {
		name, conf, netns string
		code              uint
		msg               string
	}{
		{"bad subnet", `{"cniVersion":"1.0.0","name":"podnet","type":"podnet","subnet":"x"}`, "/run/netns/x", types.ErrInvalidNetworkConfig, `subnet "x"`},
		{"not decodable", `{"cniVersion":"1.0.0","name":"podnet","type":"podnet","ranges":"x"}`, "/run/netns/x", types.ErrDecodingFailure, "ranges"},
		{"netns missing", goodConf, "/run/netns/podnet-unit-does-not-exist", types.ErrInvalidEnvironmentVariables, "does not exist"},
		{"netns empty", goodConf, "", types.ErrInvalidEnvironmentVariables, "CNI_NETNS is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, opens := withFakes(fakeipam.NewFakeStore())
			err := p.Add(args(tc.conf, tc.netns))
			if c := code(t, err); c != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("code %d %v, want %d mentioning %q", c, err, tc.code, tc.msg)
			}
			if *opens != 0 {
				t.Fatal("IPAM store opened before the input was validated")
			}
		})
	}
}

func TestLockTimeoutIsTryAgainLater(t *testing.T) {
	st := fakeipam.NewFakeStore()
	if err := st.Lock(context.Background()); err != nil { // someone else holds it
		t.Fatal(err)
	}
	p, _ := withFakes(st)
	err := p.GC(args(goodConf, "")) // GC touches no kernel state before locking
	if c := code(t, err); c != types.ErrTryAgainLater || !strings.Contains(err.Error(), "timed out waiting for the IPAM lock") {
		t.Fatalf("code %d: %v", c, err)
	}
}

func TestDelReleasesAndIsIdempotent(t *testing.T) {
	st := fakeipam.NewFakeStore()
	st.Put(netip.MustParseAddr("198.18.1.5"), ipam.Owner{ContainerID: "cid", IfName: "eth0"})
	st.Put(netip.MustParseAddr("198.18.1.6"), ipam.Owner{ContainerID: "other", IfName: "eth0"})
	p, _ := withFakes(st)
	// DEL looks for the node-side veth, so it runs in a throwaway netns.
	node := netns.New(t, "pnp")
	for i := 0; i < 2; i++ {
		if err := node.Do(func() error { return p.Del(args(goodConf, "")) }); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if l, _ := st.List(); len(l) != 1 || l[0].Owner.ContainerID != "other" {
		t.Fatalf("after DEL: %+v", l)
	}
}

func TestStatus(t *testing.T) {
	conf := `{"cniVersion":"1.1.0","name":"podnet","type":"podnet","subnet":"198.18.4.0/30","dataDir":"/x"}`
	st := fakeipam.NewFakeStore()
	p, _ := withFakes(st)
	if err := p.Status(args(conf, "")); err != nil {
		t.Fatalf("STATUS with room: %v", err)
	}
	st.Put(netip.MustParseAddr("198.18.4.2"), ipam.Owner{ContainerID: "a", IfName: "eth0"})
	err := p.Status(args(conf, ""))
	if c := code(t, err); c != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "exhausted: 1 of 1") {
		t.Fatalf("STATUS when full: %d %v", c, err)
	}

	masqConf := `{"cniVersion":"1.1.0","name":"podnet","type":"podnet","subnet":"198.18.1.0/24","ipMasq":true,"clusterCIDR":"198.18.0.0/16","dataDir":"/x"}`
	p = New(Config{
		OpenStore:    func(string) (ipam.Store, error) { return fakeipam.NewFakeStore(), nil },
		NewMasqTable: func(bool) (masq.Table, error) { return nil, errors.New("ipMasq needs iptables: not found") },
	})
	err = p.Status(args(masqConf, ""))
	if c := code(t, err); c != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "iptables") {
		t.Fatalf("STATUS without iptables: %d %v", c, err)
	}
	p = New(Config{OpenStore: func(string) (ipam.Store, error) { return nil, errors.New("read-only file system") }})
	if err := p.Status(args(conf, "")); code(t, err) != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS with unusable data dir: %v", err)
	}
}

func TestGC(t *testing.T) {
	conf := `{"cniVersion":"1.1.0","name":"podnet","type":"podnet","subnet":"198.18.1.0/24","dataDir":"/x",
	  "cni.dev/valid-attachments":[{"containerID":"live","ifname":"eth0"}]}`
	st := fakeipam.NewFakeStore()
	st.Put(netip.MustParseAddr("198.18.1.5"), ipam.Owner{ContainerID: "live", IfName: "eth0"})
	st.Put(netip.MustParseAddr("198.18.1.6"), ipam.Owner{ContainerID: "dead", IfName: "eth0"})
	p, _ := withFakes(st)
	if err := p.GC(args(conf, "")); err != nil {
		t.Fatal(err)
	}
	if l, _ := st.List(); len(l) != 1 || l[0].Owner.ContainerID != "live" {
		t.Fatalf("after GC: %+v", l)
	}
}

func healthy() (Expectation, wire.Observed, []netip.Addr) {
	e := Expectation{
		Bridge: "cbr0", BridgeGateways: []netip.Prefix{netip.MustParsePrefix("198.18.1.1/24")}, MTU: 1500,
		HostIf: "pn0123456789ab", IfName: "eth0", ContainerMAC: "aa:bb:cc:dd:ee:ff",
		Addrs:   []netip.Prefix{netip.MustParsePrefix("198.18.1.2/24")},
		Routes:  []wire.Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("198.18.1.1")}},
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")},
	}
	o := wire.Observed{
		Bridge:    wire.LinkState{Found: true, Type: "bridge", Index: 3, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.1.1/24")}},
		Host:      wire.LinkState{Found: true, Type: "veth", Index: 7, PeerIndex: 2, MasterIndex: 3, Up: true, MTU: 1500, Hairpin: true},
		Container: wire.LinkState{Found: true, Type: "veth", Index: 2, PeerIndex: 7, Up: true, MTU: 1500, MAC: "aa:bb:cc:dd:ee:ff", Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.1.2/24")}},
		Routes:    []wire.Route{{Dst: netip.MustParsePrefix("198.18.1.0/24")}, {Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("198.18.1.1")}},
	}
	return e, o, []netip.Addr{netip.MustParseAddr("198.18.1.2")}
}

func TestDiffHealthy(t *testing.T) {
	e, o, held := healthy()
	if d := Diff(e, o, held); len(d) != 0 {
		t.Fatalf("healthy attachment has differences: %v", d)
	}
}

func TestDiffReportsEveryDifference(t *testing.T) {
	e, o, _ := healthy()
	o.Bridge.Addrs = nil
	o.Host.MasterIndex = 9
	o.Host.Hairpin = false
	o.Container.MTU = 1400
	o.Container.PeerIndex = 8
	o.Container.Addrs = []netip.Prefix{netip.MustParsePrefix("198.18.1.9/24")}
	o.Routes = nil
	held := []netip.Addr{netip.MustParseAddr("198.18.1.9")}
	got := strings.Join(Diff(e, o, held), "\n")
	for _, want := range []string{
		"bridge cbr0 lacks gateway address 198.18.1.1/24",
		"pn0123456789ab is not attached to bridge cbr0",
		"hairpin mode is off on pn0123456789ab",
		"pod interface eth0 has MTU 1400, config says 1500",
		"pod interface eth0 and pn0123456789ab are not peers of one veth pair",
		"pod interface eth0 lacks address 198.18.1.2/24",
		"pod interface eth0 has unexpected address 198.18.1.9/24",
		"pod route 0.0.0.0/0 via 198.18.1.1 is missing",
		"IPAM does not hold 198.18.1.2 for this container",
		"IPAM holds 198.18.1.9 for this container but prevResult does not list it",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Diff lacks %q; got:\n%s", want, got)
		}
	}

	e, o, held = healthy()
	o.Container = wire.LinkState{}
	o.Host = wire.LinkState{}
	if got := strings.Join(Diff(e, o, held), "\n"); !strings.Contains(got, "interface eth0 is missing in the pod's netns") || !strings.Contains(got, "node-side veth pn0123456789ab is missing") {
		t.Errorf("missing interfaces not reported:\n%s", got)
	}
}
