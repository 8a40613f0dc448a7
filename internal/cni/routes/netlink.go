package routes

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetlinkTable is the main routing table of one network namespace.
type NetlinkTable struct {
	h netlinksafe.Handle
}

var _ Table = (*NetlinkTable)(nil)

// NetlinkConfig configures NewNetlinkTable.
type NetlinkConfig struct {
	// NetNSPath selects the namespace; empty means the caller's. The
	// netlink socket is bound to the namespace it was opened in, so the
	// table keeps acting there whichever thread uses it later.
	NetNSPath string
}

// NewNetlinkTable opens a netlink handle in the configured namespace.
func NewNetlinkTable(cfg NetlinkConfig) (*NetlinkTable, error) {
	open := func() (netlinksafe.Handle, error) { return netlinksafe.NewHandle(unix.NETLINK_ROUTE) }
	if cfg.NetNSPath == "" {
		h, err := open()
		if err != nil {
			return nil, fmt.Errorf("opening netlink: %w", err)
		}
		return &NetlinkTable{h: h}, nil
	}
	var h netlinksafe.Handle
	err := ns.WithNetNSPath(cfg.NetNSPath, func(ns.NetNS) error {
		var err error
		h, err = open()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening netlink in %s: %w", cfg.NetNSPath, err)
	}
	return &NetlinkTable{h: h}, nil
}

// Close releases the netlink socket.
func (t *NetlinkTable) Close() { t.h.Close() }

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// List implements Table.
func (t *NetlinkTable) List() ([]Route, error) {
	var out []Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := t.h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("listing routes: %w", err)
		}
		for _, r := range rs {
			if r.Type != unix.RTN_UNICAST {
				continue
			}
			rt := Route{Protocol: int(r.Protocol)}
			if r.Dst != nil {
				a, _ := netip.AddrFromSlice(r.Dst.IP)
				ones, _ := r.Dst.Mask.Size()
				rt.Dst = netip.PrefixFrom(a.Unmap(), ones)
			} else if fam == netlink.FAMILY_V4 {
				rt.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			} else {
				rt.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			if gw, ok := netip.AddrFromSlice(r.Gw); ok {
				rt.Via = gw.Unmap()
			}
			out = append(out, rt)
		}
	}
	return out, nil
}

func toNetlink(r Route) *netlink.Route {
	return &netlink.Route{
		Dst:      ipNet(r.Dst),
		Gw:       r.Via.AsSlice(),
		Protocol: netlink.RouteProtocol(r.Protocol),
		Table:    unix.RT_TABLE_MAIN,
	}
}

// Replace implements Table. The kernel finds the outgoing interface from the
// next hop, which must be on a directly connected network (host-gw).
func (t *NetlinkTable) Replace(r Route) error {
	if err := t.h.RouteReplace(toNetlink(r)); err != nil {
		if errors.Is(err, syscall.ENETUNREACH) {
			return fmt.Errorf("route %s: next hop %s is not on a directly connected network (host-gw needs nodes on one L2 segment): %w", r.Dst, r.Via, err)
		}
		return fmt.Errorf("route %s: %w", r, err)
	}
	return nil
}

// Delete implements Table.
func (t *NetlinkTable) Delete(r Route) error {
	if err := t.h.RouteDel(toNetlink(r)); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("deleting route %s: %w", r, err)
	}
	return nil
}
