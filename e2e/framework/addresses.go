package framework

import (
	"fmt"
	"net/netip"
)

// The address plan (GUIDE.md §3; e2e/README.md has the table). Nothing else
// is ever used.
var (
	// RouterIPv4/6 is the nodes' default gateway on the node network.
	RouterIPv4 = netip.MustParseAddr("192.0.2.1")
	RouterIPv6 = netip.MustParseAddr("2001:db8:1::1")
	// APIServerIPv4/6 is the control-plane namespace's address.
	APIServerIPv4 = netip.MustParseAddr("192.0.2.2")
	APIServerIPv6 = netip.MustParseAddr("2001:db8:1::2")
	// NodeNetV4/V6 is the node network (one L2 segment).
	NodeNetV4 = netip.MustParsePrefix("192.0.2.0/24")
	NodeNetV6 = netip.MustParsePrefix("2001:db8:1::/64")
	// OutsideNet is the external client network behind the router.
	OutsideNet        = netip.MustParsePrefix("198.51.100.0/24")
	OutsideRouterIPv4 = netip.MustParseAddr("198.51.100.1")
	OutsideIPv4       = netip.MustParseAddr("198.51.100.10")
	// LoadBalancerNetV4/V6 is where LoadBalancer ingress IPs and externalIPs
	// come from; the router sends the v4 range to a node, as a cloud LB does.
	LoadBalancerNetV4 = netip.MustParsePrefix("203.0.113.0/24")
	LoadBalancerNetV6 = netip.MustParsePrefix("2001:db8:30::/64")
	// ClusterCIDRV4/V6 hold every node's pod CIDR.
	ClusterCIDRV4 = netip.MustParsePrefix("198.18.0.0/16")
	ClusterCIDRV6 = netip.MustParsePrefix("2001:db8:10::/56")
	// ServiceCIDRV4/V6 is the apiserver's --service-cluster-ip-range.
	ServiceCIDRV4 = netip.MustParsePrefix("198.19.192.0/18")
	ServiceCIDRV6 = netip.MustParsePrefix("2001:db8:20::/108")
)

// APIServerPort is kube-apiserver's secure port.
const APIServerPort = 6443

// APIServerURL is how nodes and the harness reach the apiserver.
func APIServerURL() string {
	return fmt.Sprintf("https://%s", netip.AddrPortFrom(APIServerIPv4, APIServerPort))
}

// ClusterCIDRFlag is the --cluster-cidr value for proxies.
func ClusterCIDRFlag() string { return ClusterCIDRV4.String() + "," + ClusterCIDRV6.String() }

// ServiceCIDRFlag is the apiserver's --service-cluster-ip-range.
func ServiceCIDRFlag() string { return ServiceCIDRV4.String() + "," + ServiceCIDRV6.String() }

// maxNodes keeps node numbers single-byte friendly and pod CIDRs distinct.
const maxNodes = 50

// nodeAddrs gives node i's (0-based) name, IPs, pod CIDRs and zone.
func nodeAddrs(i int) (name string, v4, v6 netip.Addr, pod4, pod6 netip.Prefix, zone string) {
	n := i + 1
	name = fmt.Sprintf("node%d", n)
	v4 = netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + n)})
	v6 = netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%d", 10+n))
	pod4 = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(n), 0}), 24)
	pod6 = netip.MustParsePrefix(fmt.Sprintf("2001:db8:10:%x::/64", n))
	zone = fmt.Sprintf("zone-%c", 'a'+byte(i%2))
	return
}
