package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	netutils "k8s.io/utils/net"
)

// The parsers accept what kube-proxy accepts: its "sloppy" IP parsing
// allows leading zeros in IPv4 octets (010.0.0.1), which net/netip rejects.

func parseIP(s string) (netip.Addr, bool) {
	ip := netutils.ParseIPSloppy(s)
	if ip == nil {
		return netip.Addr{}, false
	}
	if v4 := ip.To4(); v4 != nil {
		return netip.AddrFrom4([4]byte(v4)), true
	}
	a, ok := netip.AddrFromSlice(ip)
	return a, ok
}

// parseCIDR returns the masked prefix (10.1.2.3/8 is 10.0.0.0/8), as
// kube-proxy uses the network of a CIDR, not the address written.
func parseCIDR(s string) (netip.Prefix, error) {
	_, ipnet, err := netutils.ParseCIDRSloppy(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	ones, bits := ipnet.Mask.Size()
	var addr netip.Addr
	if bits == 32 {
		addr = netip.AddrFrom4([4]byte(ipnet.IP.To4()))
	} else {
		addr = netip.AddrFrom16([16]byte(ipnet.IP.To16()))
	}
	return netip.PrefixFrom(addr, ones).Masked(), nil
}

// parseHostPort parses "IP:port" with a port in 1..65535 (kube-proxy's
// validateHostPort).
func parseHostPort(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("must be IP:port")
	}
	ip, ok := parseIP(host)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%q is not a valid IP address", host)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return netip.AddrPort{}, fmt.Errorf("%q is not a valid port (1-65535)", port)
	}
	return netip.AddrPortFrom(ip, uint16(p)), nil
}

// appendPortIfNeeded turns a bare IP into IP:port and leaves anything else
// alone for validation to judge (kube-proxy's AppendPortIfNeeded).
func appendPortIfNeeded(addr string, port int) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	if netutils.ParseIPSloppy(addr) == nil {
		return addr
	}
	return net.JoinHostPort(addr, strconv.Itoa(port))
}
