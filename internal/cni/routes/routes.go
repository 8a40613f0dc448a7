// Package routes keeps host-gw routes between nodes: for every other Node, a
// route to each of its podCIDRs via its InternalIP of the same family (what
// flannel's host-gw backend does). Nodes must share an L2 segment, since the
// next hop is the other node itself.
//
// podnet marks its routes with a dedicated route protocol number
// (DefaultProtocol, `ip route show proto 211`) and only ever deletes or
// replaces routes carrying that mark, so routes made by anyone else survive.
//
// The pure parts (Desired, Plan) decide; Table is the kernel boundary.
package routes

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"

	v1 "k8s.io/api/core/v1"
)

// DefaultProtocol is the route protocol number podnet's routes carry. It is
// not assigned in iproute2's rt_protos (routing daemons use 8-192 sparsely).
const DefaultProtocol = 211

// Route is a main-table unicast route.
type Route struct {
	Dst      netip.Prefix
	Via      netip.Addr
	Protocol int
}

func (r Route) String() string { return fmt.Sprintf("%s via %s proto %d", r.Dst, r.Via, r.Protocol) }

// Table is the kernel boundary: the main routing table of one netns.
// Implementations: NetlinkTable and the fake in routes/testing.
type Table interface {
	// List returns the main table's unicast routes of both families with
	// a destination prefix (default routes included), any protocol.
	List() ([]Route, error)
	// Replace adds r or replaces the route to r.Dst.
	Replace(r Route) error
	// Delete removes r; a route already gone is not an error.
	Delete(r Route) error
}

// Skip says why a node contributes no route of some family.
type Skip struct {
	Node   string
	Reason string
}

// PodCIDRs returns a node's pod CIDRs (spec.podCIDRs, or the older
// spec.podCIDR), parsed; unparsable entries are returned as errors.
func PodCIDRs(n *v1.Node) ([]netip.Prefix, []error) {
	raw := n.Spec.PodCIDRs
	if len(raw) == 0 && n.Spec.PodCIDR != "" {
		raw = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	var errs []error
	for _, s := range raw {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("podCIDR %q does not parse", s))
			continue
		}
		out = append(out, p.Masked())
	}
	return out, errs
}

// InternalIPs returns a node's first InternalIP per family (v4, v6; zero if none).
func InternalIPs(n *v1.Node) (v4, v6 netip.Addr) {
	for _, a := range n.Status.Addresses {
		if a.Type != v1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		ip = ip.Unmap()
		if ip.Is4() && !v4.IsValid() {
			v4 = ip
		}
		if ip.Is6() && !v6.IsValid() {
			v6 = ip
		}
	}
	return v4, v6
}

// Desired returns, sorted by destination, the routes this node (self) needs:
// every other node's pod CIDRs via that node's InternalIP of the same family.
func Desired(nodes []*v1.Node, self string, protocol int) ([]Route, []Skip) {
	type owned struct {
		r    Route
		node string
	}
	var all []owned
	var skips []Skip
	for _, n := range nodes {
		if n.Name == self {
			continue
		}
		cidrs, errs := PodCIDRs(n)
		for _, err := range errs {
			skips = append(skips, Skip{Node: n.Name, Reason: err.Error()})
		}
		if len(cidrs) == 0 && len(errs) == 0 {
			skips = append(skips, Skip{Node: n.Name, Reason: "no podCIDR assigned yet"})
		}
		v4, v6 := InternalIPs(n)
		for _, c := range cidrs {
			via := v4
			if c.Addr().Is6() {
				via = v6
			}
			if !via.IsValid() {
				skips = append(skips, Skip{Node: n.Name, Reason: fmt.Sprintf("no InternalIP of the family of podCIDR %s", c)})
				continue
			}
			all = append(all, owned{Route{Dst: c, Via: via, Protocol: protocol}, n.Name})
		}
	}
	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i].r.Dst, all[j].r.Dst
		if a.Addr() != b.Addr() {
			return a.Addr().Less(b.Addr())
		}
		if a.Bits() != b.Bits() {
			return a.Bits() < b.Bits()
		}
		return all[i].node < all[j].node
	})
	// Two nodes claiming one CIDR: keep the first by name, report the rest.
	var out []Route
	for _, o := range all {
		if len(out) > 0 && out[len(out)-1].Dst == o.r.Dst {
			skips = append(skips, Skip{Node: o.node, Reason: fmt.Sprintf("podCIDR %s is also claimed by another node", o.r.Dst)})
			continue
		}
		out = append(out, o.r)
	}
	return out, skips
}

// Changes is what Plan decided.
type Changes struct {
	// Replace are desired routes missing or pointing elsewhere.
	Replace []Route
	// Delete are podnet-marked routes no longer desired.
	Delete []Route
	// Conflicts are desired routes whose destination is already routed by
	// someone else (another protocol): left alone, reported.
	Conflicts []Route
}

// Empty reports whether nothing needs doing.
func (c Changes) Empty() bool { return len(c.Replace) == 0 && len(c.Delete) == 0 }

// Plan compares desired with the current table. Only routes with the given
// protocol are ever replaced or deleted.
func Plan(desired, current []Route, protocol int) Changes {
	var ch Changes
	ours := map[netip.Prefix][]Route{}
	foreign := map[netip.Prefix]bool{}
	for _, r := range current {
		if r.Protocol == protocol {
			ours[r.Dst] = append(ours[r.Dst], r)
		} else {
			foreign[r.Dst] = true
		}
	}
	want := map[netip.Prefix]bool{}
	for _, d := range desired {
		want[d.Dst] = true
		if foreign[d.Dst] {
			ch.Conflicts = append(ch.Conflicts, d)
			continue
		}
		have := ours[d.Dst]
		if len(have) <= 1 {
			if len(have) == 0 || have[0].Via != d.Via {
				ch.Replace = append(ch.Replace, d) // replaced in place
			}
			continue
		}
		// Several of our routes to one prefix (metrics differ): drop extras.
		for _, h := range have {
			if h.Via != d.Via {
				ch.Delete = append(ch.Delete, h)
			}
		}
		if !slices.ContainsFunc(have, func(h Route) bool { return h.Via == d.Via }) {
			ch.Replace = append(ch.Replace, d)
		}
	}
	for dst, rs := range ours {
		if !want[dst] {
			ch.Delete = append(ch.Delete, rs...)
		}
	}
	sort.Slice(ch.Delete, func(i, j int) bool { return ch.Delete[i].Dst.String() < ch.Delete[j].Dst.String() })
	return ch
}
