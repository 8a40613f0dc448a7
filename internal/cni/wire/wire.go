// Package wire does podnet's kernel work through netlink: the node bridge
// with its gateway addresses, the veth pair between node and pod, the pod's
// addresses and default routes, and reading all of it back for CHECK.
//
// Functions act in the network namespace of the calling thread (the node's)
// and switch into the pod's namespace only through ns.NetNS.Do, which locks
// the OS thread for the duration.
package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// HostVethName is the node-side veth name for an attachment: "pn" plus 12
// hex digits of a hash of container ID and interface. Deterministic, so DEL
// can find it without state and an operator can compute it
// (`echo -n "$ID/eth0" | sha256sum | cut -c1-12`).
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "pn" + hex.EncodeToString(sum[:])[:12]
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// BridgeConfig describes the node bridge.
type BridgeConfig struct {
	Name string
	MTU  int
	// Gateways are the gateway addresses with their subnet's prefix length
	// (198.18.1.1/24): the address routes pods' traffic to the node, the
	// length gives the node its connected route to the pod subnet.
	Gateways []netip.Prefix
}

// Iface names an interface and its MAC for a CNI result.
type Iface struct {
	Name  string
	MAC   string
	Index int
}

// EnsureBridge creates the bridge if needed, brings it up and adds the
// gateway addresses that are missing. It is safe to run concurrently with
// itself (EEXIST is success).
func EnsureBridge(cfg BridgeConfig) (Iface, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = cfg.Name
	attrs.MTU = cfg.MTU
	created := true
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		if !errors.Is(err, syscall.EEXIST) {
			return Iface{}, fmt.Errorf("creating bridge %s: %w", cfg.Name, err)
		}
		created = false
	}
	l, err := netlinksafe.LinkByName(cfg.Name)
	if err != nil {
		return Iface{}, fmt.Errorf("looking up bridge %s: %w", cfg.Name, err)
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		return Iface{}, fmt.Errorf("%s exists but is a %s, not a bridge; set \"bridge\" to another name", cfg.Name, l.Type())
	}
	if created {
		// A bridge takes the lowest MAC of its ports unless its MAC was set
		// explicitly; pinning it keeps the pods' gateway MAC (their ARP
		// entry) stable while pods come and go.
		if err := netlink.LinkSetHardwareAddr(l, l.Attrs().HardwareAddr); err != nil {
			return Iface{}, fmt.Errorf("pinning MAC of bridge %s: %w", cfg.Name, err)
		}
		// The node owns the routes of this bridge; router advertisements
		// from a pod must not add any.
		_ = writeSysctl(fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/accept_ra", cfg.Name), "0")
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return Iface{}, fmt.Errorf("bringing bridge %s up: %w", cfg.Name, err)
	}
	have, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return Iface{}, fmt.Errorf("listing addresses of %s: %w", cfg.Name, err)
	}
	for _, gw := range cfg.Gateways {
		if hasAddr(have, gw) {
			continue
		}
		// NODAD: the gateway is ours by construction; waiting for duplicate
		// address detection would delay the first pod's IPv6 traffic.
		a := &netlink.Addr{IPNet: ipNet(gw), Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(l, a); err != nil && !errors.Is(err, syscall.EEXIST) {
			return Iface{}, fmt.Errorf("adding gateway %s to bridge %s: %w", gw, cfg.Name, err)
		}
	}
	l, err = netlinksafe.LinkByName(cfg.Name)
	if err != nil {
		return Iface{}, fmt.Errorf("looking up bridge %s: %w", cfg.Name, err)
	}
	return Iface{Name: cfg.Name, MAC: l.Attrs().HardwareAddr.String(), Index: l.Attrs().Index}, nil
}

func hasAddr(have []netlink.Addr, p netip.Prefix) bool {
	for _, a := range have {
		if toPrefix(a.IPNet) == p {
			return true
		}
	}
	return false
}

func toPrefix(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// PodConfig describes one pod attachment.
type PodConfig struct {
	// NetNS is the pod's network namespace.
	NetNS ns.NetNS
	// IfName is the pod-side name (CNI_IFNAME, normally eth0).
	IfName string
	// HostIfName is the node-side name (HostVethName).
	HostIfName string
	// Bridge is the node bridge the host end joins.
	Bridge string
	MTU    int
	// Addrs are the pod's addresses with their subnet's prefix length.
	Addrs []netip.Prefix
	// Gateways get a default route each (one per family).
	Gateways []netip.Addr
}

// Pod is what SetupPod made.
type Pod struct {
	Host      Iface
	Container Iface
	// ReplacedStale is set when a leftover node-side veth of the same
	// attachment was removed first.
	ReplacedStale bool
}

// SetupPod creates the veth pair, joins the host end to the bridge with
// hairpin mode on, and configures the pod end. On error it removes the pair
// again, so a failed ADD leaves no half-made veth.
func SetupPod(cfg PodConfig) (pod Pod, err error) {
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return Pod{}, fmt.Errorf("opening node netns: %w", err)
	}
	defer hostNS.Close()

	br, err := netlinksafe.LinkByName(cfg.Bridge)
	if err != nil {
		return Pod{}, fmt.Errorf("looking up bridge %s: %w", cfg.Bridge, err)
	}
	// A pod interface that exists means ADD ran twice: refuse before
	// touching anything, so the running pod keeps working.
	err = cfg.NetNS.Do(func(ns.NetNS) error {
		if _, err := netlinksafe.LinkByName(cfg.IfName); err == nil {
			return fmt.Errorf("interface %s already exists in netns %s (ADD twice without DEL?)", cfg.IfName, cfg.NetNS.Path())
		}
		return nil
	})
	if err != nil {
		return Pod{}, err
	}
	// A node-side veth with this attachment's name, while the pod has no
	// interface, belongs to an earlier sandbox of the same container and
	// interface (its netns gone or going: namespaces are torn down
	// asynchronously). The new ADD supersedes it.
	if old, err := netlinksafe.LinkByName(cfg.HostIfName); err == nil {
		if _, ok := old.(*netlink.Veth); !ok {
			return Pod{}, fmt.Errorf("node interface %s exists and is a %s, not podnet's veth", cfg.HostIfName, old.Type())
		}
		if err := netlink.LinkDel(old); err != nil && !errors.Is(err, syscall.ENODEV) {
			return Pod{}, fmt.Errorf("removing stale node-side veth %s: %w", cfg.HostIfName, err)
		}
		pod.ReplacedStale = true
	}

	// Create the pair inside the pod's netns with the peer placed in the
	// node's: the pod-side name can only clash inside the pod.
	err = cfg.NetNS.Do(func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = cfg.IfName
		attrs.MTU = cfg.MTU
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: cfg.HostIfName, PeerNamespace: netlink.NsFd(int(hostNS.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth pair %s/%s: %w", cfg.IfName, cfg.HostIfName, err)
		}
		return nil
	})
	if err != nil {
		return Pod{}, err
	}
	defer func() {
		if err != nil {
			// Deleting either end removes both.
			if l, lerr := netlinksafe.LinkByName(cfg.HostIfName); lerr == nil {
				_ = netlink.LinkDel(l)
			}
		}
	}()

	host, err := netlinksafe.LinkByName(cfg.HostIfName)
	if err != nil {
		return Pod{}, fmt.Errorf("looking up %s after creating it: %w", cfg.HostIfName, err)
	}
	if err := netlink.LinkSetMTU(host, cfg.MTU); err != nil {
		return Pod{}, fmt.Errorf("setting MTU of %s: %w", cfg.HostIfName, err)
	}
	if err := netlink.LinkSetMaster(host, br); err != nil {
		return Pod{}, fmt.Errorf("attaching %s to bridge %s: %w", cfg.HostIfName, cfg.Bridge, err)
	}
	// Hairpin lets a frame leave through the port it came in on: a pod that
	// connects to a Service which the proxy DNATs back to the same pod.
	if err := netlink.LinkSetHairpin(host, true); err != nil {
		return Pod{}, fmt.Errorf("enabling hairpin mode on %s: %w", cfg.HostIfName, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return Pod{}, fmt.Errorf("bringing %s up: %w", cfg.HostIfName, err)
	}
	host, err = netlinksafe.LinkByName(cfg.HostIfName)
	if err != nil {
		return Pod{}, err
	}
	pod.Host = Iface{Name: cfg.HostIfName, MAC: host.Attrs().HardwareAddr.String(), Index: host.Attrs().Index}

	err = cfg.NetNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(cfg.IfName)
		if err != nil {
			return fmt.Errorf("looking up %s in pod: %w", cfg.IfName, err)
		}
		for _, a := range cfg.Addrs {
			if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(a), Flags: unix.IFA_F_NODAD}); err != nil {
				return fmt.Errorf("adding %s to %s in pod: %w", a, cfg.IfName, err)
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("bringing %s up in pod: %w", cfg.IfName, err)
		}
		for _, gw := range cfg.Gateways {
			r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(defaultRoute(gw)), Gw: gw.AsSlice()}
			if err := netlink.RouteAdd(r); err != nil {
				if errors.Is(err, syscall.EEXIST) {
					return fmt.Errorf("pod netns already has a default %s route; podnet must own the pod's default route", family(gw))
				}
				return fmt.Errorf("adding default route via %s in pod: %w", gw, err)
			}
		}
		pod.Container = Iface{Name: cfg.IfName, MAC: l.Attrs().HardwareAddr.String(), Index: l.Attrs().Index}
		return nil
	})
	if err != nil {
		return Pod{}, err
	}
	return pod, nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// defaultRoute is 0.0.0.0/0 or ::/0 in gw's family.
func defaultRoute(gw netip.Addr) netip.Prefix {
	if gw.Is4() {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
}

// TeardownPod removes the pod's interface and the node-side veth. Missing
// netns, missing interfaces: all fine (DEL is idempotent). netnsPath may be
// empty (the runtime no longer knows it).
func TeardownPod(netnsPath, ifName, hostIfName string) error {
	if netnsPath != "" {
		err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
			l, err := netlinksafe.LinkByName(ifName)
			if isNotFound(err) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("looking up %s in pod: %w", ifName, err)
			}
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
				return fmt.Errorf("deleting %s in pod: %w", ifName, err)
			}
			return nil
		})
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		if err != nil && !errors.As(err, &notExist) && !errors.As(err, &notNS) {
			return err
		}
	}
	// Normally gone with its peer; still there if the pod's netns is gone
	// from the runtime's view but alive (or the pod end was renamed).
	l, err := netlinksafe.LinkByName(hostIfName)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up %s: %w", hostIfName, err)
	}
	if _, ok := l.(*netlink.Veth); !ok {
		return nil // not ours, whatever it is
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("deleting %s: %w", hostIfName, err)
	}
	return nil
}

// EnsureBridgeNetfilter sets net.bridge.bridge-nf-call-iptables and
// -ip6tables to 1 in the calling thread's netns when the br_netfilter
// sysctls exist. Without it, a pod's packets to a Service that the proxy
// DNATs to another pod on the same bridge are bridged past iptables and the
// reply never gets un-NATed. It reports which keys it changed.
func EnsureBridgeNetfilter() (changed []string, err error) {
	var errs []error
	for _, key := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
		path := "/proc/sys/net/bridge/" + key
		data, rerr := os.ReadFile(path)
		if errors.Is(rerr, os.ErrNotExist) {
			continue // br_netfilter not loaded: the node's job, documented
		}
		if rerr != nil {
			errs = append(errs, rerr)
			continue
		}
		if strings.TrimSpace(string(data)) == "1" {
			continue
		}
		if werr := writeSysctl(path, "1"); werr != nil {
			errs = append(errs, fmt.Errorf("setting net.bridge.%s=1: %w", key, werr))
			continue
		}
		changed = append(changed, "net.bridge."+key)
	}
	return changed, errors.Join(errs...)
}

func writeSysctl(path, value string) error {
	return os.WriteFile(path, []byte(value), 0o644)
}
