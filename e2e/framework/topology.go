package framework

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// Topology (see README.md for the picture):
//
//	            bridge ns "br": Linux bridge br0 (the node network's wire)
//	     ┌────────────┬──────────────┼──────────────┬─────────── …
//	  router        cp            node1          node2
//	  192.0.2.1     192.0.2.2     192.0.2.11     192.0.2.12
//	  │ ext0 198.51.100.1
//	  └──── outside 198.51.100.10
//
// The router forwards between the node network and the outside network,
// routes LoadBalancerNetV4 to a node (as a cloud LB would), and blackholes
// everything else: it is the nodes' default gateway and the "sink" GUIDE.md
// asks for, so a packet to a ClusterIP without rules passes the node's routing
// (and so its iptables filter rules) and is then silently dropped rather than
// answered.

// netnsName builds "<NSPrefix><pid>-<cluster>-<role>".
func (c *Cluster) netnsName(role string) string {
	return fmt.Sprintf("%s%d-%s-%s", NSPrefix, os.Getpid(), c.id, role)
}

// newNS creates a namespace, records it for teardown, and applies settings
// every harness namespace gets.
func (c *Cluster) newNS(role string) (*NetNS, error) {
	n, err := createNetNS(c.netnsName(role))
	if err != nil {
		return nil, err
	}
	c.namespaces = append(c.namespaces, n)
	// DAD would keep IPv6 addresses "tentative" for a second or two after
	// every link comes up; nothing here needs it. "default" covers links
	// created or moved in later (veths from CNI), "all" the rest.
	for _, k := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
		if err := n.Sysctl(k, "0"); err != nil {
			return nil, err
		}
	}
	// IPv4 devconf is inherited from the root namespace; pin rp_filter so
	// results do not depend on the host's settings.
	for _, k := range []string{"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"} {
		if err := n.Sysctl(k, "0"); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// ipAll runs several `ip` commands in ns, stopping at the first failure.
func ipAll(n *NetNS, cmds ...string) error {
	for _, cmd := range cmds {
		if _, err := n.Exec(append([]string{"ip"}, strings.Fields(cmd)...)...); err != nil {
			return err
		}
	}
	return nil
}

// buildWire creates the bridge namespace.
func (c *Cluster) buildWire() error {
	br, err := c.newNS("br")
	if err != nil {
		return err
	}
	c.bridge = br
	if err := ipAll(br, "link add br0 type bridge forward_delay 0 stp_state 0", "link set br0 up"); err != nil {
		return err
	}
	// The wire must be a plain L2 switch: no netfilter on bridged frames here.
	for _, k := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables", "net.bridge.bridge-nf-call-arptables"} {
		if fileExistsInNS(br, k) {
			if err := br.Sysctl(k, "0"); err != nil {
				return err
			}
		}
	}
	return nil
}

// plug connects member to the bridge: "eth0" inside member, port <port> on
// br0. The veth is created in the bridge namespace with its peer directly in
// member, so it never appears in the root namespace.
func (c *Cluster) plug(member *NetNS, port string) error {
	return ipAll(c.bridge,
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", port, member.Name),
		fmt.Sprintf("link set %s master br0", port),
		fmt.Sprintf("link set %s up", port),
	)
}

// addrCmds returns `ip` commands giving dev the addresses (prefix lengths
// from their networks) and bringing it up.
func addrCmds(dev string, addrs ...netip.Prefix) []string {
	var cmds []string
	for _, a := range addrs {
		extra := ""
		if a.Addr().Is6() {
			extra = " nodad"
		}
		cmds = append(cmds, fmt.Sprintf("addr add %s dev %s%s", a, dev, extra))
	}
	return append(cmds, fmt.Sprintf("link set %s up", dev))
}

func withLen(a netip.Addr, net netip.Prefix) netip.Prefix { return netip.PrefixFrom(a, net.Bits()) }

// buildRouter creates the router/sink and the outside client.
func (c *Cluster) buildRouter() error {
	rt, err := c.newNS("router")
	if err != nil {
		return err
	}
	c.router = rt
	if err := c.plug(rt, "router"); err != nil {
		return err
	}
	out, err := c.newNS("outside")
	if err != nil {
		return err
	}
	c.outside = &Host{NetNS: out, IPv4: OutsideIPv4}
	if err := ipAll(rt, fmt.Sprintf("link add ext0 type veth peer name eth0 netns %s", out.Name)); err != nil {
		return err
	}
	cmds := addrCmds("eth0", withLen(RouterIPv4, NodeNetV4), withLen(RouterIPv6, NodeNetV6))
	cmds = append(cmds, addrCmds("ext0", withLen(OutsideRouterIPv4, OutsideNet))...)
	cmds = append(cmds,
		// The sink: whatever has no route is dropped silently, never
		// answered with an ICMP error a test could mistake for a REJECT.
		"route add blackhole default",
		"-6 route add blackhole default",
	)
	if err := ipAll(rt, cmds...); err != nil {
		return err
	}
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := rt.Sysctl(k, "1"); err != nil {
			return err
		}
	}
	cmds = addrCmds("eth0", withLen(OutsideIPv4, OutsideNet))
	cmds = append(cmds, "route add default via "+OutsideRouterIPv4.String())
	return ipAll(out, cmds...)
}

// buildControlPlaneNS creates the namespace the control plane runs in.
func (c *Cluster) buildControlPlaneNS() error {
	cp, err := c.newNS("cp")
	if err != nil {
		return err
	}
	c.cp = cp
	if err := c.plug(cp, "cp"); err != nil {
		return err
	}
	cmds := addrCmds("eth0", withLen(APIServerIPv4, NodeNetV4), withLen(APIServerIPv6, NodeNetV6))
	cmds = append(cmds, "route add default via "+RouterIPv4.String(), "-6 route add default via "+RouterIPv6.String())
	return ipAll(cp, cmds...)
}

// buildNodeNS creates node n's namespace and wires it up as a node: forwarding
// on, bridged traffic through iptables (for bridge CNIs), default routes to
// the router.
func (c *Cluster) buildNodeNS(n *Node) error {
	ns, err := c.newNS(n.Name)
	if err != nil {
		return err
	}
	n.NetNS = ns
	if err := c.plug(ns, n.Name); err != nil {
		return err
	}
	cmds := addrCmds("eth0", withLen(n.IPv4, NodeNetV4), withLen(n.IPv6, NodeNetV6))
	cmds = append(cmds, "route add default via "+RouterIPv4.String(), "-6 route add default via "+RouterIPv6.String())
	if err := ipAll(ns, cmds...); err != nil {
		return err
	}
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := ns.Sysctl(k, "1"); err != nil {
			return err
		}
	}
	n.BridgeNFCall = fileExistsInNS(ns, "net.bridge.bridge-nf-call-iptables")
	if n.BridgeNFCall {
		for _, k := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"} {
			if err := ns.Sysctl(k, "1"); err != nil {
				return err
			}
		}
	}
	return nil
}

// RouteLoadBalancer points the router's route for prefix (inside
// LoadBalancerNetV4) at the given nodes, with equal-cost multipath when there
// are several — how a cloud load balancer spreads traffic over nodes.
func (c *Cluster) RouteLoadBalancer(prefix netip.Prefix, nodes ...*Node) error {
	if !LoadBalancerNetV4.Contains(prefix.Addr()) || prefix.Bits() < LoadBalancerNetV4.Bits() {
		return fmt.Errorf("prefix %s is outside the load-balancer range %s", prefix, LoadBalancerNetV4)
	}
	if len(nodes) == 0 {
		return fmt.Errorf("RouteLoadBalancer(%s): no nodes given", prefix)
	}
	args := []string{"ip", "route", "replace", prefix.Masked().String()}
	if len(nodes) == 1 {
		args = append(args, "via", nodes[0].IPv4.String())
	} else {
		for _, n := range nodes {
			args = append(args, "nexthop", "via", n.IPv4.String())
		}
	}
	_, err := c.router.Exec(args...)
	return err
}

func fileExistsInNS(n *NetNS, key string) bool {
	p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	found := false
	_ = n.Do(func() error {
		_, err := os.Stat(p)
		found = err == nil
		return nil
	})
	return found
}
