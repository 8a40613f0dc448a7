package wire

import (
	"fmt"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// Route is a route as CHECK compares it.
type Route struct {
	Dst netip.Prefix
	Gw  netip.Addr
}

func (r Route) String() string {
	if r.Gw.IsValid() {
		return fmt.Sprintf("%s via %s", r.Dst, r.Gw)
	}
	return r.Dst.String()
}

// LinkState is what CHECK needs to know about one interface.
type LinkState struct {
	Found bool
	Type  string
	Index int
	// PeerIndex is a veth's peer ifindex (in the peer's netns).
	PeerIndex   int
	MasterIndex int
	Up          bool
	MTU         int
	MAC         string
	Hairpin     bool
	// Addrs are the global unicast addresses (link-local ones are the
	// kernel's business).
	Addrs []netip.Prefix
}

// Observed is the state of one attachment as the kernel has it.
type Observed struct {
	Bridge    LinkState
	Host      LinkState
	Container LinkState
	// Routes are the pod's routes in the main table through Container.
	Routes []Route
}

// Observe reads the bridge and node-side veth in the calling thread's netns
// and the pod interface and routes in podNS. Missing pieces come back with
// Found false; only failures to ask are errors.
func Observe(bridge, hostIf string, podNS ns.NetNS, ifName string) (Observed, error) {
	var o Observed
	var err error
	if o.Bridge, _, err = linkState(bridge); err != nil {
		return o, err
	}
	if o.Host, _, err = linkState(hostIf); err != nil {
		return o, err
	}
	err = podNS.Do(func(ns.NetNS) error {
		var l netlink.Link
		var err error
		o.Container, l, err = linkState(ifName)
		if err != nil || l == nil {
			return err
		}
		rs, err := netlinksafe.RouteList(l, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("listing pod routes: %w", err)
		}
		for _, r := range rs {
			if r.Table != 0 && r.Table != 254 {
				continue
			}
			rt := Route{}
			if r.Dst != nil {
				rt.Dst = toPrefix(r.Dst)
			} else if r.Family == netlink.FAMILY_V6 {
				rt.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			} else {
				rt.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			}
			if gw, ok := netip.AddrFromSlice(r.Gw); ok {
				rt.Gw = gw.Unmap()
			}
			o.Routes = append(o.Routes, rt)
		}
		return nil
	})
	return o, err
}

func linkState(name string) (LinkState, netlink.Link, error) {
	l, err := netlinksafe.LinkByName(name)
	if isNotFound(err) {
		return LinkState{}, nil, nil
	}
	if err != nil {
		return LinkState{}, nil, fmt.Errorf("looking up %s: %w", name, err)
	}
	a := l.Attrs()
	s := LinkState{
		Found:       true,
		Type:        l.Type(),
		Index:       a.Index,
		MasterIndex: a.MasterIndex,
		Up:          a.Flags&1 != 0, // IFF_UP
		MTU:         a.MTU,
		MAC:         a.HardwareAddr.String(),
	}
	if _, ok := l.(*netlink.Veth); ok {
		s.PeerIndex = a.ParentIndex
	}
	if a.MasterIndex != 0 {
		if pi, err := netlinksafe.LinkGetProtinfo(l); err == nil {
			s.Hairpin = pi.Hairpin
		}
	}
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return s, l, fmt.Errorf("listing addresses of %s: %w", name, err)
	}
	for _, ad := range addrs {
		p := toPrefix(ad.IPNet)
		if p.IsValid() && p.Addr().IsGlobalUnicast() {
			s.Addrs = append(s.Addrs, p)
		}
	}
	return s, l, nil
}
