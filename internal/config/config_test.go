package config

import (
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestNodePortAddressesResolve(t *testing.T) {
	node4, node6 := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8:1::10")
	for _, tc := range []struct {
		name   string
		npa    NodePortAddresses
		ipv6   bool
		nodeIP netip.Addr
		want   []string
	}{
		{"unset means all (v4)", NodePortAddresses{}, false, node4, []string{"0.0.0.0/0"}},
		{"unset means all (v6)", NodePortAddresses{}, true, node6, []string{"::/0"}},
		{"primary", NodePortAddresses{Primary: true}, false, node4, []string{"192.0.2.10/32"}},
		{"primary v6", NodePortAddresses{Primary: true}, true, node6, []string{"2001:db8:1::10/128"}},
		{"primary without node IP falls back to all", NodePortAddresses{Primary: true}, false, netip.Addr{}, []string{"0.0.0.0/0"}},
		{"primary skips a loopback node IP", NodePortAddresses{Primary: true}, false, netip.MustParseAddr("127.0.0.1"), []string{"0.0.0.0/0"}},
		{"CIDRs of the other family only: this family is open", NodePortAddresses{CIDRs: prefixes("2001:db8:1::/64")}, false, node4, []string{"0.0.0.0/0"}},
		{"primary and CIDRs", NodePortAddresses{Primary: true, CIDRs: prefixes("198.51.100.0/24", "2001:db8:1::/64")}, false, node4,
			[]string{"192.0.2.10/32", "198.51.100.0/24"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, p := range tc.npa.Resolve(tc.ipv6, tc.nodeIP) {
				got = append(got, p.String())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Resolve = %v, want %v", got, tc.want)
			}
		})
	}
	if !(NodePortAddresses{}).IsZero() || (NodePortAddresses{Primary: true}).IsZero() {
		t.Error("IsZero wrong")
	}
}

func TestFamilyHelpers(t *testing.T) {
	v4, v6 := SplitByFamily(prefixes("198.18.0.0/16", "2001:db8:10::/56", "192.0.2.0/24"))
	if len(v4) != 2 || len(v6) != 1 || v4[1].String() != "192.0.2.0/24" {
		t.Errorf("SplitByFamily = %v %v", v4, v6)
	}
	d := DetectLocal{ClusterCIDRs: prefixes("2001:db8:10::/56", "198.18.0.0/16")}
	if p, ok := d.ClusterCIDR(false); !ok || p.String() != "198.18.0.0/16" {
		t.Errorf("ClusterCIDR(v4) = %v %v", p, ok)
	}
	if p, ok := d.ClusterCIDR(true); !ok || p.String() != "2001:db8:10::/56" {
		t.Errorf("ClusterCIDR(v6) = %v %v", p, ok)
	}
	if _, ok := (DetectLocal{ClusterCIDRs: prefixes("198.18.0.0/16")}).ClusterCIDR(true); ok {
		t.Error("ClusterCIDR(v6) found one in a v4-only list")
	}
}

func TestMasqueradeMark(t *testing.T) {
	for bit, want := range map[int32]uint32{0: 1, 14: 0x4000, 31: 0x80000000} {
		if got := (IPTables{MasqueradeBit: bit}).MasqueradeMark(); got != want {
			t.Errorf("bit %d: mark %#x, want %#x", bit, got, want)
		}
	}
}

func TestClone(t *testing.T) {
	c := mustParse(t, "--cluster-cidr=198.18.0.0/16", "--nodeport-addresses=192.0.2.0/24",
		"--ipvs-exclude-cidrs=203.0.113.0/24", "--feature-gates=AllowServiceExternalIPs=false")
	d := c.Clone()
	if !reflect.DeepEqual(c, d) {
		t.Fatal("clone differs")
	}
	d.DetectLocal.ClusterCIDRs[0] = netip.MustParsePrefix("10.0.0.0/8")
	d.NodePortAddresses.CIDRs[0] = netip.MustParsePrefix("10.0.0.0/8")
	d.IPVS.ExcludeCIDRs[0] = netip.MustParsePrefix("10.0.0.0/8")
	d.FeatureGates["AllowServiceExternalIPs"] = true
	d.Warnings[0].Message = "changed"
	if c.DetectLocal.ClusterCIDRs[0].String() != "198.18.0.0/16" || c.NodePortAddresses.CIDRs[0].String() != "192.0.2.0/24" ||
		c.IPVS.ExcludeCIDRs[0].String() != "203.0.113.0/24" || c.FeatureGates["AllowServiceExternalIPs"] || c.Warnings[0].Message == "changed" {
		t.Error("changing the clone changed the original")
	}
}

func TestNodeName(t *testing.T) {
	if n, err := (&Config{HostnameOverride: "node-a"}).NodeName(); err != nil || n != "node-a" {
		t.Errorf("NodeName = %q, %v", n, err)
	}
	host, err := os.Hostname()
	if err != nil {
		t.Skipf("no host name: %v", err)
	}
	if n, err := (&Config{}).NodeName(); err != nil || n != strings.ToLower(strings.TrimSpace(host)) {
		t.Errorf("NodeName = %q, %v; host %q", n, err, host)
	}
}

// The gates kpr has a rule for must exist in kube-proxy v1.37; a typo
// would turn a rule into dead code.
func TestKprGatesAreKnown(t *testing.T) {
	for _, name := range []string{
		"KubeProxyIPVS", "AllowServiceExternalIPs", "PreferSameTrafficDistribution", "MultiCIDRServiceAllocator",
		"KubeProxyNFTablesLocalhostNodePorts", "NFTablesNetlink", "WinDSR", "WinOverlay",
		"ComponentFlagz", "ComponentStatusz", "ContextualLogging", "LoggingAlphaOptions", "LoggingBetaOptions",
		"NativeHistograms", "AtomicFIFO", "ClientsAllowCARotation", "ClientsAllowCBOR", "ClientsAllowTLSCacheGC",
		"ClientsPreferCBOR", "InOrderInformers", "InOrderInformersBatchProcess", "InformerResourceVersion",
		"UnlockWhileProcessingFIFO", "WatchListClient",
	} {
		if _, ok := lookupKnownGate(name); !ok {
			t.Errorf("%s is not a kube-proxy %s gate", name, knownGatesRelease)
		}
		if use, _ := kprGate(name); use == gateIrrelevant {
			t.Errorf("%s has no kpr rule", name)
		}
	}
}

// Spot checks of the generated table against kube-proxy v1.37's gates.
func TestKnownGates(t *testing.T) {
	for name, want := range map[string]gateSpec{
		"KubeProxyIPVS":                       {Default: true, Stage: stageDeprecated},
		"AllowServiceExternalIPs":             {Default: true, Stage: stageGA},
		"MultiCIDRServiceAllocator":           {Default: true, Locked: true, Stage: stageGA},
		"KubeProxyNFTablesLocalhostNodePorts": {Default: false, Stage: stageAlpha},
		"NFTablesNetlink":                     {Default: true, Stage: stageBeta},
		"LoggingAlphaOptions":                 {Default: false, Stage: stageAlpha},
		"ComponentFlagz":                      {Default: true, Stage: stageBeta},
		"WatchListClient":                     {Default: true, Stage: stageBeta},
	} {
		got, ok := lookupKnownGate(name)
		if !ok || got != want {
			t.Errorf("%s = %+v (known %v), want %+v", name, got, ok, want)
		}
	}
	if _, ok := lookupKnownGate("NoSuchGate"); ok {
		t.Error("NoSuchGate is known")
	}
}
