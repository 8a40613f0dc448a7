package plugin

import (
	"fmt"
	"net/netip"
	"slices"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/kpr-proxy/kpr/internal/cni/config"
	"github.com/kpr-proxy/kpr/internal/cni/wire"
)

// Expectation is what CHECK expects to find, from config and prevResult.
type Expectation struct {
	Bridge         string
	BridgeGateways []netip.Prefix
	MTU            int
	HostIf         string
	IfName         string
	// ContainerMAC is the pod interface's MAC from prevResult ("" = any).
	ContainerMAC string
	Addrs        []netip.Prefix
	Routes       []wire.Route
	Subnets      []netip.Prefix
	// Problems found while reading prevResult itself.
	Problems []string
}

func expectationFrom(cfg *config.Config, prev *current.Result, ifName, hostIf, netnsPath string) Expectation {
	e := Expectation{Bridge: cfg.Bridge, MTU: cfg.MTU, HostIf: hostIf, IfName: ifName}
	for _, r := range cfg.Ranges {
		e.BridgeGateways = append(e.BridgeGateways, netip.PrefixFrom(r.Gateway, r.Subnet.Bits()))
		e.Subnets = append(e.Subnets, r.Subnet)
	}
	contIdx := -1
	for i, itf := range prev.Interfaces {
		if itf.Name == ifName && itf.Sandbox != "" {
			contIdx = i
			e.ContainerMAC = itf.Mac
			if itf.Sandbox != netnsPath {
				e.Problems = append(e.Problems, fmt.Sprintf("prevResult puts %s in netns %q but CNI_NETNS is %q", ifName, itf.Sandbox, netnsPath))
			}
		}
	}
	if contIdx < 0 {
		e.Problems = append(e.Problems, fmt.Sprintf("prevResult has no interface %s in a sandbox", ifName))
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface != contIdx {
			continue
		}
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			e.Problems = append(e.Problems, fmt.Sprintf("prevResult address %v does not parse", ipc.Address))
			continue
		}
		ones, _ := ipc.Address.Mask.Size()
		e.Addrs = append(e.Addrs, netip.PrefixFrom(a.Unmap(), ones))
	}
	for _, r := range prev.Routes {
		dst, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		rt := wire.Route{Dst: netip.PrefixFrom(dst.Unmap(), ones)}
		if gw, ok := netip.AddrFromSlice(r.GW); ok {
			rt.Gw = gw.Unmap()
		}
		e.Routes = append(e.Routes, rt)
	}
	return e
}

// Diff lists every way the observed state differs from e; held are the
// addresses the IPAM store has for the attachment. Empty means healthy.
func Diff(e Expectation, o wire.Observed, held []netip.Addr) []string {
	d := append([]string(nil), e.Problems...)
	add := func(format string, args ...any) { d = append(d, fmt.Sprintf(format, args...)) }

	switch {
	case !o.Bridge.Found:
		add("bridge %s is missing", e.Bridge)
	case o.Bridge.Type != "bridge":
		add("%s is a %s, not a bridge", e.Bridge, o.Bridge.Type)
	default:
		if !o.Bridge.Up {
			add("bridge %s is down", e.Bridge)
		}
		for _, gw := range e.BridgeGateways {
			if !slices.Contains(o.Bridge.Addrs, gw) {
				add("bridge %s lacks gateway address %s", e.Bridge, gw)
			}
		}
	}

	switch {
	case !o.Host.Found:
		add("node-side veth %s is missing", e.HostIf)
	case o.Host.Type != "veth":
		add("node-side %s is a %s, not a veth", e.HostIf, o.Host.Type)
	default:
		if o.Bridge.Found && o.Host.MasterIndex != o.Bridge.Index {
			add("%s is not attached to bridge %s", e.HostIf, e.Bridge)
		}
		if !o.Host.Hairpin {
			add("hairpin mode is off on %s", e.HostIf)
		}
		if !o.Host.Up {
			add("%s is down", e.HostIf)
		}
		if o.Host.MTU != e.MTU {
			add("%s has MTU %d, config says %d", e.HostIf, o.Host.MTU, e.MTU)
		}
	}

	switch {
	case !o.Container.Found:
		add("interface %s is missing in the pod's netns", e.IfName)
	case o.Container.Type != "veth":
		add("pod interface %s is a %s, not a veth", e.IfName, o.Container.Type)
	default:
		if !o.Container.Up {
			add("pod interface %s is down", e.IfName)
		}
		if o.Container.MTU != e.MTU {
			add("pod interface %s has MTU %d, config says %d", e.IfName, o.Container.MTU, e.MTU)
		}
		if e.ContainerMAC != "" && o.Container.MAC != e.ContainerMAC {
			add("pod interface %s has MAC %s, prevResult says %s", e.IfName, o.Container.MAC, e.ContainerMAC)
		}
		if o.Host.Found && o.Host.Type == "veth" && (o.Container.PeerIndex != o.Host.Index || o.Host.PeerIndex != o.Container.Index) {
			add("pod interface %s and %s are not peers of one veth pair", e.IfName, e.HostIf)
		}
		for _, a := range e.Addrs {
			if !slices.Contains(o.Container.Addrs, a) {
				add("pod interface %s lacks address %s", e.IfName, a)
			}
		}
		for _, a := range o.Container.Addrs {
			if !slices.Contains(e.Addrs, a) {
				add("pod interface %s has unexpected address %s", e.IfName, a)
			}
		}
		for _, r := range e.Routes {
			if !slices.Contains(o.Routes, r) {
				add("pod route %s is missing", r)
			}
		}
	}

	for _, a := range e.Addrs {
		inSubnet := false
		for _, s := range e.Subnets {
			inSubnet = inSubnet || s.Contains(a.Addr())
		}
		if !inSubnet {
			add("address %s is outside the configured pod subnets %v", a.Addr(), e.Subnets)
		}
		if !slices.Contains(held, a.Addr()) {
			add("IPAM does not hold %s for this container", a.Addr())
		}
	}
	for _, h := range held {
		found := false
		for _, a := range e.Addrs {
			found = found || a.Addr() == h
		}
		if !found {
			add("IPAM holds %s for this container but prevResult does not list it", h)
		}
	}
	return d
}
