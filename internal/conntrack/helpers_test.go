package conntrack_test

import (
	"net/netip"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	"github.com/kpr-proxy/kpr/internal/model"
)

// Test data follows the GUIDE address plan: pods 198.18.0.0/16, services
// 198.19.192.0/18, clients 198.51.100.0/24, nodes 192.0.2.0/24, LB and
// external IPs 203.0.113.0/24 (and the IPv6 equivalents).

var (
	nodeIP    = netip.MustParseAddr("192.0.2.10")
	clientIP  = netip.MustParseAddr("198.51.100.7")
	clientIP2 = netip.MustParseAddr("198.51.100.8")
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func spn(name string, proto model.Protocol) model.ServicePortName {
	return model.ServicePortName{Namespace: "ns", Name: name, Port: "p", Protocol: proto}
}

// svcPort builds a Service port; opts tweak it.
func svcPort(name string, proto model.Protocol, clusterIP string, port uint16, opts ...func(*model.ServicePort)) *model.ServicePort {
	s := &model.ServicePort{
		Name:      spn(name, proto),
		ClusterIP: netip.MustParseAddr(clusterIP),
		Port:      port,
		Protocol:  proto,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func withNodePort(p uint16) func(*model.ServicePort) {
	return func(s *model.ServicePort) { s.NodePort = p }
}

func withExternalIPs(ips ...string) func(*model.ServicePort) {
	return func(s *model.ServicePort) {
		for _, i := range ips {
			s.ExternalIPs = append(s.ExternalIPs, netip.MustParseAddr(i))
		}
	}
}

func withLB(ips ...string) func(*model.ServicePort) {
	return func(s *model.ServicePort) {
		for _, i := range ips {
			s.LoadBalancerVIPs = append(s.LoadBalancerVIPs, netip.MustParseAddr(i))
		}
	}
}

// eps builds ready endpoints from "ip:port" strings.
func eps(addrs ...string) []*model.Endpoint {
	out := make([]*model.Endpoint, 0, len(addrs))
	for _, a := range addrs {
		p := netip.MustParseAddrPort(a)
		out = append(out, &model.Endpoint{IP: p.Addr(), Port: p.Port(), Ready: true, Serving: true, NodeName: "remote"})
	}
	return out
}

// snap builds a snapshot; svcs and endpoint lists are shared (not copied)
// so that reusing them in the next snapshot means "unchanged".
type entry struct {
	svc *model.ServicePort
	eps []*model.Endpoint
}

func snap(fam model.Family, entries ...entry) *model.Snapshot {
	s := &model.Snapshot{Family: fam, Services: map[model.ServicePortName]*model.ServicePort{}, Endpoints: map[model.ServicePortName][]*model.Endpoint{}}
	for _, e := range entries {
		s.Services[e.svc.Name] = e.svc
		if len(e.eps) > 0 {
			s.Endpoints[e.svc.Name] = e.eps
		}
	}
	return s
}

// natFlow is a flow from client:sport to frontend, DNATed to endpoint (pass
// the frontend itself as endpoint for an un-NATed flow).
func natFlow(proto uint8, client netip.Addr, sport uint16, frontend, endpoint netip.AddrPort) conntrack.Flow {
	fam := model.IPv4
	if client.Is6() {
		fam = model.IPv6
	}
	return conntrack.Flow{
		Family:   fam,
		Protocol: proto,
		Orig:     conntrack.Tuple{Src: client, Dst: frontend.Addr(), SrcPort: sport, DstPort: frontend.Port()},
		Reply:    conntrack.Tuple{Src: endpoint.Addr(), Dst: client, SrcPort: endpoint.Port(), DstPort: sport},
		Timeout:  30,
		Status:   conntrack.StatusConfirmed,
	}
}

var node = &model.Node{Name: "node-a", Addresses: []netip.Addr{nodeIP}}
