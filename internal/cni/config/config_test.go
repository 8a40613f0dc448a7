package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestMinimalConfigDefaults(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"podnet","type":"podnet","subnet":"198.18.1.0/24"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != "cbr0" || c.MTU != 1500 || c.DataDir != DefaultDataDir || c.IPMasq {
		t.Fatalf("defaults wrong: %+v", c)
	}
	if len(c.Ranges) != 1 || c.Ranges[0].Subnet.String() != "198.18.1.0/24" || c.Ranges[0].Gateway.String() != "198.18.1.1" {
		t.Fatalf("ranges = %+v", c.Ranges)
	}
	if c.NetworkDir() != "/var/lib/cni/podnet/podnet" {
		t.Fatalf("NetworkDir = %s", c.NetworkDir())
	}
}

func TestFullConfig(t *testing.T) {
	c, err := Parse([]byte(`{
	  "cniVersion":"1.1.0","name":"pods","type":"podnet",
	  "bridge":"br-pods","mtu":1400,"ipMasq":true,
	  "clusterCIDR":"198.18.0.0/16, 2001:db8:10::/56",
	  "dataDir":"/run/podnet/",
	  "ranges":[{"subnet":"2001:db8:10:1::/64"},{"subnet":"198.18.1.0/24","gateway":"198.18.1.254"}]
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != "br-pods" || c.MTU != 1400 || !c.IPMasq || c.DataDir != "/run/podnet" {
		t.Fatalf("got %+v", c)
	}
	// IPv4 sorts first.
	if len(c.Ranges) != 2 || c.Ranges[0].Gateway.String() != "198.18.1.254" || c.Ranges[1].Gateway.String() != "2001:db8:10:1::1" {
		t.Fatalf("ranges = %+v", c.Ranges)
	}
	if len(c.ClusterCIDRs) != 2 || c.ClusterCIDRs[1].String() != "2001:db8:10::/56" {
		t.Fatalf("clusterCIDRs = %v", c.ClusterCIDRs)
	}
}

func TestBadConfigs(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		kind       error
		msg        string
	}{
		{"not json", `{"name":`, ErrDecode, "unexpected end"},
		{"wrong type", `{"name":"n","subnet":"198.18.1.0/24","mtu":"big"}`, ErrDecode, "mtu"},
		{"subnet does not parse", `{"name":"n","subnet":"198.18.1.0/33"}`, ErrInvalid, `subnet "198.18.1.0/33": does not parse`},
		{"subnet garbage", `{"name":"n","subnet":"pods"}`, ErrInvalid, `subnet "pods"`},
		{"host bits", `{"name":"n","subnet":"198.18.1.7/24"}`, ErrInvalid, "did you mean 198.18.1.0/24"},
		{"no subnet", `{"name":"n"}`, ErrInvalid, "no pod subnet"},
		{"subnet and ranges", `{"name":"n","subnet":"198.18.1.0/24","ranges":[{"subnet":"198.18.2.0/24"}]}`, ErrInvalid, "not both"},
		{"two v4 ranges", `{"name":"n","ranges":[{"subnet":"198.18.1.0/24"},{"subnet":"198.18.2.0/24"}]}`, ErrInvalid, "two IPv4 ranges"},
		{"bad range", `{"name":"n","ranges":[{"subnet":"198.18.1.0/24"},{"subnet":"x"}]}`, ErrInvalid, "ranges[1]"},
		{"too small", `{"name":"n","subnet":"198.18.1.0/31"}`, ErrInvalid, "too small"},
		{"gateway outside", `{"name":"n","subnet":"198.18.1.0/24","gateway":"198.18.2.1"}`, ErrInvalid, "outside subnet"},
		{"gateway broadcast", `{"name":"n","subnet":"198.18.1.0/24","gateway":"198.18.1.255"}`, ErrInvalid, "broadcast"},
		{"gateway garbage", `{"name":"n","subnet":"198.18.1.0/24","gateway":"gw"}`, ErrInvalid, `gateway "gw"`},
		{"mtu low", `{"name":"n","subnet":"198.18.1.0/24","mtu":10}`, ErrInvalid, "mtu 10"},
		{"mtu v6", `{"name":"n","subnet":"2001:db8:10:1::/64","mtu":1000}`, ErrInvalid, "[1280, 65535]"},
		{"bridge too long", `{"name":"n","subnet":"198.18.1.0/24","bridge":"a-very-long-bridge-name"}`, ErrInvalid, "15"},
		{"bridge slash", `{"name":"n","subnet":"198.18.1.0/24","bridge":"a/b"}`, ErrInvalid, "'/'"},
		{"relative dataDir", `{"name":"n","subnet":"198.18.1.0/24","dataDir":"var/lib"}`, ErrInvalid, "absolute"},
		{"masq without cluster cidr", `{"name":"n","subnet":"198.18.1.0/24","ipMasq":true}`, ErrInvalid, "ipMasq needs a clusterCIDR"},
		{"subnet outside cluster", `{"name":"n","subnet":"198.18.1.0/24","clusterCIDR":"10.0.0.0/8"}`, ErrInvalid, "not inside clusterCIDR"},
		{"bad cluster cidr", `{"name":"n","subnet":"198.18.1.0/24","clusterCIDR":"198.18.0.0"}`, ErrInvalid, "clusterCIDR"},
		{"delegated ipam", `{"name":"n","subnet":"198.18.1.0/24","ipam":{"type":"host-local"}}`, ErrInvalid, "own node-local IPAM"},
		{"typo key", `{"name":"n","subnett":"198.18.1.0/24"}`, ErrInvalid, `unknown key(s) "subnett"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.conf))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", c)
			}
			if !errors.Is(err, tc.kind) {
				t.Fatalf("error %q is not %v", err, tc.kind)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not mention %q", err, tc.msg)
			}
		})
	}
}

func TestUsable(t *testing.T) {
	for _, tc := range []struct{ p, first, last string }{
		{"198.18.1.0/24", "198.18.1.1", "198.18.1.254"},
		{"198.18.0.0/16", "198.18.0.1", "198.18.255.254"},
		{"198.18.1.8/29", "198.18.1.9", "198.18.1.14"},
		{"2001:db8:10:1::/64", "2001:db8:10:1::1", "2001:db8:10:1:ffff:ffff:ffff:ffff"},
		{"2001:db8:10::/126", "2001:db8:10::1", "2001:db8:10::3"},
	} {
		f, l := Usable(netip.MustParsePrefix(tc.p))
		if f.String() != tc.first || l.String() != tc.last {
			t.Errorf("Usable(%s) = %s..%s, want %s..%s", tc.p, f, l, tc.first, tc.last)
		}
	}
}
