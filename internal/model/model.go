// Package model holds the proxy's view of the cluster: plain, immutable data
// built from Services, EndpointSlices and the Node, one Snapshot per IP family.
//
// Everything downstream (iptables and IPVS rendering, health checks, conntrack
// cleanup) reads a Snapshot and nothing else, which is what makes rendering a
// pure function that golden tests and fuzzing can exercise.
//
// A Snapshot and everything reachable from it must never be mutated after it
// has been published. The change tracker shares unchanged *ServicePort values
// and endpoint slices between consecutive snapshots, so pointer equality is a
// cheap, exact "did this Service port change" test for partial syncs.
package model

import (
	"fmt"
	"net/netip"
	"sort"
)

// Family is an IP family. The proxy runs one rule set per family.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return fmt.Sprintf("Family(%d)", uint8(f))
}

// Contains reports whether a belongs to the family (IPv4-mapped IPv6
// addresses count as IPv6: Kubernetes never uses them for IPv4).
func (f Family) Contains(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	if f == IPv4 {
		return a.Is4()
	}
	return a.Is6()
}

// FamilyOf returns the family of a valid address.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// Protocol is a Service port protocol, spelled as in the Kubernetes API.
type Protocol string

const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// Lower is the spelling iptables and conntrack use ("tcp", "udp", "sctp").
func (p Protocol) Lower() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	}
	return string(p)
}

// ServicePortName identifies one port of one Service, as kube-proxy's
// proxy.ServicePortName does. Port is the port's name ("" for an unnamed
// single port).
type ServicePortName struct {
	Namespace string
	Name      string
	Port      string
	Protocol  Protocol
}

// String is "namespace/name:port" (or "namespace/name" for an unnamed port),
// the form kube-proxy uses in logs and rule comments.
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.Namespace + "/" + n.Name
	}
	return n.Namespace + "/" + n.Name + ":" + n.Port
}

// Less orders ServicePortNames for deterministic output.
func (n ServicePortName) Less(o ServicePortName) bool {
	if n.Namespace != o.Namespace {
		return n.Namespace < o.Namespace
	}
	if n.Name != o.Name {
		return n.Name < o.Name
	}
	if n.Port != o.Port {
		return n.Port < o.Port
	}
	return n.Protocol < o.Protocol
}

// TrafficDistribution values of spec.trafficDistribution that change endpoint
// selection.
const (
	TrafficDistributionPreferClose    = "PreferClose"
	TrafficDistributionPreferSameZone = "PreferSameZone"
	TrafficDistributionPreferSameNode = "PreferSameNode"
)

// ServicePort is one port of one Service in one IP family, already validated:
// every address belongs to the snapshot's family, ports are in range.
type ServicePort struct {
	Name ServicePortName

	ClusterIP netip.Addr
	Port      uint16
	Protocol  Protocol
	// NodePort is 0 when the Service has no node port.
	NodePort uint16

	ExternalIPs []netip.Addr
	// LoadBalancerVIPs are status.loadBalancer.ingress IPs that the proxy
	// must program (ipMode Proxy entries are left to the load balancer).
	LoadBalancerVIPs []netip.Addr
	// LoadBalancerSourceRanges restrict who may use LoadBalancerVIPs; empty
	// means everyone.
	LoadBalancerSourceRanges []netip.Prefix

	// ExternalPolicyLocal is externalTrafficPolicy: Local on a Service that
	// is reachable from outside (node port, LB or external IPs).
	ExternalPolicyLocal bool
	// InternalPolicyLocal is internalTrafficPolicy: Local.
	InternalPolicyLocal bool
	// HealthCheckNodePort is set for LoadBalancer Services with
	// externalTrafficPolicy: Local.
	HealthCheckNodePort uint16

	// AffinityTimeoutSeconds > 0 means sessionAffinity: ClientIP.
	AffinityTimeoutSeconds int32

	// TrafficDistribution is spec.trafficDistribution ("" when unset).
	TrafficDistribution string
	// TopologyAwareHints is true when the Service asked for hints through the
	// service.kubernetes.io/topology-mode annotation ("Auto").
	TopologyAwareHints bool
}

// ExternallyAccessible reports whether the port can be reached other than
// through its cluster IP.
func (s *ServicePort) ExternallyAccessible() bool {
	return s.NodePort != 0 || len(s.LoadBalancerVIPs) > 0 || len(s.ExternalIPs) > 0
}

// UsesClusterEndpoints: some traffic to this port may go to any endpoint.
// An externally accessible port always does: even with
// externalTrafficPolicy Local, pods and the node itself short-circuit to any
// endpoint (as if they went out to the load balancer and came back).
func (s *ServicePort) UsesClusterEndpoints() bool {
	return !s.InternalPolicyLocal || s.ExternallyAccessible()
}

// UsesLocalEndpoints: some traffic to this port may go only to endpoints on
// this node.
func (s *ServicePort) UsesLocalEndpoints() bool {
	return s.InternalPolicyLocal || (s.ExternallyAccessible() && s.ExternalPolicyLocal)
}

// Endpoint is one backend of one Service port, merged from all the
// EndpointSlices of the Service.
type Endpoint struct {
	IP   netip.Addr
	Port uint16

	// Conditions as in discovery/v1, nil values already defaulted as the
	// API and kube-proxy do: Ready and Serving to true, Terminating to false.
	Ready       bool
	Serving     bool
	Terminating bool

	NodeName string
	Zone     string
	// PodName is the endpoint's targetRef name when it is a Pod in the
	// Service's namespace (for operator tooling; "" otherwise).
	PodName string
	// IsLocal: the endpoint runs on this node.
	IsLocal bool

	// ZoneHints and NodeHints are the EndpointSlice hints (nil when the
	// slice carries none).
	ZoneHints []string
	NodeHints []string
}

// AddrPort is the endpoint as "ip:port" / "[ip]:port".
func (e *Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.IP, e.Port) }

// String is the endpoint's "ip:port".
func (e *Endpoint) String() string { return e.AddrPort().String() }

// Node holds the facts about the node the proxy runs on that rendering needs.
type Node struct {
	Name string
	// Labels holds only the labels the proxy acts on (the zone label), so
	// other label churn does not force a full resync.
	Labels map[string]string
	// PodCIDRs of this node, in this family.
	PodCIDRs []netip.Prefix
	// Zone is the topology.kubernetes.io/zone label ("" if unset).
	Zone string
	// Addresses are the node's InternalIP addresses in this family from
	// Node.status.addresses, primary first, falling back to ExternalIPs when
	// the family has no InternalIP (used for --nodeport-addresses primary
	// and as the node IP).
	Addresses []netip.Addr
	// Terminating: the node is being deleted (or was deleted) or carries
	// the ToBeDeletedByClusterAutoscaler taint (healthz reports 503).
	Terminating bool
}

// Snapshot is the complete, immutable state to program for one IP family.
//
// Endpoints slices are sorted by (IP, Port) so rendering is deterministic.
// Services without endpoints have no entry in Endpoints. Endpoints whose
// Service port is unknown are kept (a Service may arrive after its slices)
// but are never programmed.
type Snapshot struct {
	Family    Family
	Services  map[ServicePortName]*ServicePort
	Endpoints map[ServicePortName][]*Endpoint
}

// SortedNames returns the Service port names in a stable order.
func (s *Snapshot) SortedNames() []ServicePortName {
	names := make([]ServicePortName, 0, len(s.Services))
	for n := range s.Services {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return names[i].Less(names[j]) })
	return names
}

// SameServicePort reports whether a Service port is unchanged between two
// snapshots: its definition and its endpoint list are the identical (shared)
// values. The change tracker guarantees that a changed input yields a new
// value, so this is exact, not a heuristic.
func SameServicePort(prev, cur *Snapshot, name ServicePortName) bool {
	if prev == nil || cur == nil {
		return false
	}
	ps, pok := prev.Services[name]
	cs, cok := cur.Services[name]
	if pok != cok || ps != cs {
		return false
	}
	pe, ce := prev.Endpoints[name], cur.Endpoints[name]
	if len(pe) != len(ce) {
		return false
	}
	return len(pe) == 0 || &pe[0] == &ce[0]
}
