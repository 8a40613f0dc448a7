// Package endpoints decides which endpoints of a Service port this node sends
// traffic to: readiness, the serving-terminating fallback, traffic policies
// and topology hints. It is pure logic shared by every proxy mode and by the
// health-check server, so all of them agree on what "local endpoints" means.
package endpoints

import "github.com/kpr-proxy/kpr/internal/model"

// Topology modes derived from EndpointSlice hints.
const (
	topologyNone     = ""
	topologySameZone = model.TrafficDistributionPreferSameZone
	topologySameNode = model.TrafficDistributionPreferSameNode
)

// Categorized is the result of Categorize.
type Categorized struct {
	// Cluster holds the endpoints for Cluster-policy traffic (topology
	// applied). Nil when the port never uses Cluster policy.
	Cluster []*model.Endpoint
	// Local holds the endpoints on this node for Local-policy traffic. Nil
	// when the port never uses Local policy.
	Local []*model.Endpoint
	// AllReachable is the union of Cluster and Local, in snapshot order:
	// every endpoint this node may send traffic to (and so needs DNAT state
	// for).
	AllReachable []*model.Endpoint
	// HasAny reports whether the Service has a usable endpoint anywhere in
	// the cluster, even if none is reachable from this node. It decides
	// between REJECT (no endpoints at all) and DROP (none local).
	HasAny bool
}

// Categorize splits a Service port's endpoints the way kube-proxy does.
//
// "Usable" means Ready; if no Ready endpoint exists (independently for the
// Cluster and the Local set), Serving+Terminating endpoints are used instead,
// so that connections keep working while a Deployment rolls.
//
// Topology: when every ready endpoint carries node hints and one is hinted for
// this node, only those are used (PreferSameNode); otherwise when every ready
// endpoint carries zone hints and one is hinted for this node's zone, only
// those (PreferSameZone). The EndpointSlice controller only writes hints for
// Services that asked for them (trafficDistribution, topology-mode
// annotation), so hints alone decide, as in kube-proxy.
func Categorize(eps []*model.Endpoint, svc *model.ServicePort, node *model.Node) Categorized {
	var c Categorized
	if len(eps) == 0 {
		return c
	}
	nodeName, zone := "", ""
	if node != nil {
		nodeName, zone = node.Name, node.Zone
	}

	topo := topologyNone
	useTerminatingLocal := false
	if svc.UsesClusterEndpoints() {
		topo = topologyFromHints(eps, nodeName, zone)
		c.Cluster = filter(eps, func(ep *model.Endpoint) bool {
			return ep.Ready && availableForTopology(ep, topo, nodeName, zone)
		})
		// No ready endpoint for the topology means no ready endpoint at all
		// (topologyFromHints only picks a mode that has one), so fall back
		// to serving-terminating endpoints anywhere.
		if len(c.Cluster) == 0 {
			c.Cluster = filter(eps, func(ep *model.Endpoint) bool { return ep.Serving && ep.Terminating })
		}
		c.HasAny = len(c.Cluster) > 0
	}

	if !svc.UsesLocalEndpoints() {
		c.AllReachable = c.Cluster
		return c
	}

	var localReady, localTerminating bool
	for _, ep := range eps {
		switch {
		case ep.Ready:
			c.HasAny = true
			localReady = localReady || ep.IsLocal
		case ep.Serving && ep.Terminating:
			c.HasAny = true
			localTerminating = localTerminating || ep.IsLocal
		}
	}
	switch {
	case localReady:
		c.Local = filter(eps, func(ep *model.Endpoint) bool { return ep.IsLocal && ep.Ready })
	case localTerminating:
		useTerminatingLocal = true
		c.Local = filter(eps, func(ep *model.Endpoint) bool { return ep.IsLocal && ep.Serving && ep.Terminating })
	default:
		c.Local = []*model.Endpoint{}
	}

	if !svc.UsesClusterEndpoints() {
		c.AllReachable = c.Local
		return c
	}
	if topo == topologyNone && !useTerminatingLocal {
		// Cluster holds every ready endpoint and Local only ready local
		// ones, so Cluster is already the union.
		c.AllReachable = c.Cluster
		return c
	}
	// Cluster may hold remote endpoints Local lacks; Local may hold local
	// endpoints that topology or readiness kept out of Cluster. Merge in
	// snapshot order (deterministic output matters for golden tests and for
	// not rewriting unchanged chains).
	in := make(map[*model.Endpoint]bool, len(c.Cluster)+len(c.Local))
	for _, ep := range c.Cluster {
		in[ep] = true
	}
	for _, ep := range c.Local {
		in[ep] = true
	}
	c.AllReachable = filter(eps, func(ep *model.Endpoint) bool { return in[ep] })
	return c
}

func topologyFromHints(eps []*model.Endpoint, nodeName, zone string) string {
	hasReady, forNode, allNode, forZone, allZone := false, false, true, false, true
	for _, ep := range eps {
		if !ep.Ready {
			continue
		}
		hasReady = true
		if len(ep.NodeHints) == 0 {
			allNode = false
		} else if contains(ep.NodeHints, nodeName) {
			forNode = true
		}
		if len(ep.ZoneHints) == 0 {
			allZone = false
		} else if contains(ep.ZoneHints, zone) {
			forZone = true
		}
	}
	switch {
	case !hasReady:
		return topologyNone
	case allNode && forNode:
		return topologySameNode
	case allZone && forZone:
		return topologySameZone
	}
	return topologyNone
}

func availableForTopology(ep *model.Endpoint, mode, nodeName, zone string) bool {
	switch mode {
	case topologyNone:
		return true
	case topologySameNode:
		return contains(ep.NodeHints, nodeName)
	case topologySameZone:
		return contains(ep.ZoneHints, zone)
	}
	return false
}

func contains(list []string, s string) bool {
	if s == "" {
		return false
	}
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func filter(eps []*model.Endpoint, keep func(*model.Endpoint) bool) []*model.Endpoint {
	out := make([]*model.Endpoint, 0, len(eps))
	for _, ep := range eps {
		if keep(ep) {
			out = append(out, ep)
		}
	}
	return out
}
