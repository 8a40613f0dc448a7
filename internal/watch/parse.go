package watch

import (
	"net/netip"
	"strings"

	netutils "k8s.io/utils/net"

	"github.com/kpr-proxy/kpr/internal/model"
)

// problem is one bad part of an object that was skipped. Field is a JSON path
// into the object ("spec.ports[1].port"), Reason a stable snake_case word used
// as a metric label.
type problem struct {
	Field  string
	Value  string
	Reason string
}

// Reasons, stable: they become metric label values.
const (
	reasonInvalidClusterIP        = "invalid_cluster_ip"
	reasonClusterIPFamilyMismatch = "cluster_ip_family_mismatch"
	reasonInvalidPort             = "invalid_port"
	reasonInvalidNodePort         = "invalid_node_port"
	reasonUnknownProtocol         = "unknown_protocol"
	reasonDuplicatePort           = "duplicate_port"
	reasonInvalidExternalIP       = "invalid_external_ip"
	reasonInvalidLoadBalancerIP   = "invalid_load_balancer_ip"
	reasonInvalidSourceRange      = "invalid_source_range"
	reasonInvalidHealthCheckPort  = "invalid_health_check_node_port"
	reasonMissingHealthCheckPort  = "missing_health_check_node_port"
	reasonInvalidAffinityTimeout  = "invalid_affinity_timeout"
	reasonMissingServiceName      = "missing_service_name"
	reasonMissingPortName         = "missing_port_name"
	reasonNoEndpointAddress       = "no_endpoint_address"
	reasonInvalidEndpointAddress  = "invalid_endpoint_address"
	reasonEndpointFamilyMismatch  = "endpoint_family_mismatch"
	reasonInvalidTriggerTime      = "invalid_trigger_time"
	reasonInvalidPodCIDR          = "invalid_pod_cidr"
	reasonInvalidNodeAddress      = "invalid_node_address"
)

// parseIP parses an address the way kube-proxy does (ParseIPSloppy: IPv4
// octets with leading zeros are accepted as decimal), rejects IPv6 zones, and
// unmaps IPv4-mapped IPv6 addresses to IPv4 as net.IP does.
func parseIP(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		ip := netutils.ParseIPSloppy(s)
		if ip == nil {
			return netip.Addr{}, false
		}
		a, _ = netip.AddrFromSlice(ip)
	}
	if a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// parseCIDR parses a CIDR like kube-proxy (ParseCIDRSloppy after trimming
// spaces, which API validation lets through for loadBalancerSourceRanges) and
// returns the masked network.
func parseCIDR(s string) (netip.Prefix, bool) {
	s = strings.TrimSpace(s)
	p, err := netip.ParsePrefix(s)
	if err != nil {
		_, ipnet, err := netutils.ParseCIDRSloppy(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		a, _ := netip.AddrFromSlice(ipnet.IP)
		ones, _ := ipnet.Mask.Size()
		a = a.Unmap()
		p = netip.PrefixFrom(a, ones)
		if !p.IsValid() {
			return netip.Prefix{}, false
		}
	}
	if p.Addr().Zone() != "" || p.Addr().Is4In6() {
		return netip.Prefix{}, false
	}
	return p.Masked(), true
}

// famIdx maps a family to its slot in the per-family arrays the tracker uses.
func famIdx(f model.Family) int {
	if f == model.IPv6 {
		return 1
	}
	return 0
}

// familyOfAPI maps the Kubernetes family names to model families.
func familyOfAPI(s string) (model.Family, bool) {
	switch s {
	case "IPv4":
		return model.IPv4, true
	case "IPv6":
		return model.IPv6, true
	}
	return 0, false
}

// validProtocol applies the API default (TCP) to an empty protocol and
// reports whether the result is one the proxy can program.
func validProtocol(p string) (model.Protocol, bool) {
	switch model.Protocol(p) {
	case "":
		return model.TCP, true
	case model.TCP, model.UDP, model.SCTP:
		return model.Protocol(p), true
	}
	return model.Protocol(p), false
}
