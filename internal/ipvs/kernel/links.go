package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Links is the boundary for the link that holds the virtual IPs.
//
// IPVS only sees packets addressed to a local address, so every virtual IP
// (cluster IPs, external IPs, load-balancer IPs) is added as a /32 (/128)
// address to a link of kpr's own. The link stays down: its addresses still
// get local routes (so the node accepts the traffic), but no subnet routes
// and no ARP/ND answers are made for them.
type Links interface {
	// EnsureLink creates the link if it is missing and reports whether it
	// existed.
	EnsureLink(name string) (existed bool, err error)
	// LinkExists reports whether the link exists.
	LinkExists(name string) (bool, error)
	// DeleteLink removes the link; a missing link is not an error.
	DeleteLink(name string) error
	// Addrs lists the link's addresses of one family, sorted.
	Addrs(name string, family model.Family) ([]netip.Addr, error)
	// AddAddr adds a host address (/32, /128); an existing one is not an
	// error.
	AddAddr(name string, a netip.Addr) error
	// DelAddr removes a host address; a missing one is not an error.
	DelAddr(name string, a netip.Addr) error
	// NodeAddrs lists the family's addresses on every link except the
	// named one, without loopback and IPv6 link-local addresses, sorted
	// and without duplicates. They are where NodePorts listen by default.
	NodeAddrs(family model.Family, except string) ([]netip.Addr, error)
}

// NetlinkLinks implements Links with vishvananda/netlink in the calling
// thread's network namespace.
type NetlinkLinks struct {
	// NewLink makes the link EnsureLink creates. Nil means a dummy link,
	// which is what production uses; tests on kernels without the dummy
	// driver pass a veth.
	NewLink func(name string) netlink.Link
}

var _ Links = (*NetlinkLinks)(nil)

// DummyLink returns a dummy link named name.
func DummyLink(name string) netlink.Link {
	return &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}
}

// VethLink returns one end of a veth pair named name, the other end named
// peer. It stands in for a dummy link where the kernel has no dummy driver.
func VethLink(name, peer string) netlink.Link {
	return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// dumpRetries bounds the retries of a netlink dump that the kernel
// interrupted (addresses changed during the dump).
const dumpRetries = 5

func (l *NetlinkLinks) EnsureLink(name string) (bool, error) {
	if _, err := netlink.LinkByName(name); err == nil {
		return true, nil
	} else if !isNotFound(err) {
		return false, fmt.Errorf("looking up link %s: %w", name, err)
	}
	mk := l.NewLink
	if mk == nil {
		mk = DummyLink
	}
	if err := netlink.LinkAdd(mk(name)); err != nil && !errors.Is(err, unix.EEXIST) {
		return false, fmt.Errorf("creating link %s: %w", name, err)
	}
	return false, nil
}

func (l *NetlinkLinks) LinkExists(name string) (bool, error) {
	if _, err := netlink.LinkByName(name); err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

func (l *NetlinkLinks) DeleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return err
	}
	return netlink.LinkDel(link)
}

func nlFamily(f model.Family) int {
	if f == model.IPv6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func addrList(link netlink.Link, f model.Family) ([]netlink.Addr, error) {
	var err error
	for range dumpRetries {
		var as []netlink.Addr
		as, err = netlink.AddrList(link, nlFamily(f))
		if err == nil {
			return as, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, err
		}
	}
	return nil, err
}

func (l *NetlinkLinks) Addrs(name string, f model.Family) ([]netip.Addr, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("looking up link %s: %w", name, err)
	}
	as, err := addrList(link, f)
	if err != nil {
		return nil, fmt.Errorf("listing addresses of %s: %w", name, err)
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out, nil
}

func hostAddr(a netip.Addr) *netlink.Addr {
	out := &netlink.Addr{IPNet: netlink.NewIPNet(a.AsSlice())}
	if a.Is6() {
		// Duplicate address detection would keep the address tentative
		// (and unusable) for a while; these addresses are ours alone.
		out.Flags = unix.IFA_F_NODAD
	}
	return out
}

func (l *NetlinkLinks) AddAddr(name string, a netip.Addr) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("looking up link %s: %w", name, err)
	}
	if err := netlink.AddrAdd(link, hostAddr(a)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding %s to %s: %w", a, name, err)
	}
	return nil
}

func (l *NetlinkLinks) DelAddr(name string, a netip.Addr) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("looking up link %s: %w", name, err)
	}
	if err := netlink.AddrDel(link, hostAddr(a)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing %s from %s: %w", a, name, err)
	}
	return nil
}

// NodeAddrs dumps every address once and skips the excluded link's by
// index: listing per interface would cost a full dump per interface, which
// with tens of thousands of virtual IPs on our link dominates a sync
// (kubernetes issue 114815).
func (l *NetlinkLinks) NodeAddrs(f model.Family, except string) ([]netip.Addr, error) {
	skip := -1
	if except != "" {
		if link, err := netlink.LinkByName(except); err == nil {
			skip = link.Attrs().Index
		} else if !isNotFound(err) {
			return nil, fmt.Errorf("looking up link %s: %w", except, err)
		}
	}
	as, err := addrList(nil, f)
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, a := range as {
		if a.LinkIndex == skip {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if !UsableNodeAddr(f, ip) || seen[ip] {
			continue
		}
		seen[ip] = true
		out = append(out, ip)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out, nil
}

// UsableNodeAddr reports whether a local address of the family can carry
// NodePort virtual servers: not loopback (IPVS does not serve 127/8 and ::1
// from other hosts, and kube-proxy's IPVS mode never did) and not IPv6
// link-local (meaningless without a zone).
func UsableNodeAddr(f model.Family, a netip.Addr) bool {
	return f.Contains(a) && !a.IsLoopback() && !(a.Is6() && a.IsLinkLocalUnicast()) && !a.IsUnspecified()
}
