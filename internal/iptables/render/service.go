package render

import (
	"net/netip"
	"strconv"

	"github.com/kpr-proxy/kpr/internal/endpoints"
	"github.com/kpr-proxy/kpr/internal/model"
)

// svcRecord is what one Service port contributes to a sync. It is kept in
// the State so that an unchanged Service port costs nothing on the next
// partial sync: its own chains are not rendered again, and its share of the
// shared chains is reused byte for byte.
type svcRecord struct {
	// chains are the generated nat chains the Service port owns.
	chains []string
	// natRules counts the rules in those chains (for metrics).
	natRules int

	// Its entries in shared chains.
	dispatch        []dstRule // nat KPR-SERVICES tree, keyed by destination
	natNodePorts    []byte    // nat KPR-NODEPORTS lines
	filterServices  []byte    // filter KPR-SERVICES lines
	filterExternal  []byte    // filter KPR-EXTERNAL-SERVICES lines
	filterNodePorts []byte    // filter KPR-NODEPORTS lines
	filterFirewall  []byte    // filter KPR-FIREWALL lines

	noLocalInternal, noLocalExternal bool
}

// dstRule is one rule matching a destination IP; its chain is decided when
// the dispatch tree is built, so only the words after "-A <chain>" are kept.
type dstRule struct {
	ip   netip.Addr
	body string
}

// serviceRenderer renders one Service port. Its own chains go straight into
// the batch (chains/rules); shared-chain lines go into the record.
type serviceRenderer struct {
	cfg     *Config
	node    *model.Node
	large   bool
	chains  *lineBuffer // nat chain declarations
	rules   *lineBuffer // nat rules
	scratch lineBuffer
}

func (r *serviceRenderer) render(name model.ServicePortName, sp *model.ServicePort, eps []*model.Endpoint) *svcRecord {
	rec := &svcRecord{}
	cat := endpoints.Categorize(eps, sp, r.node)
	ch := chainsFor(name)
	proto := sp.Protocol.Lower()
	svcName := comment(name.String())
	port := strconv.Itoa(int(sp.Port))

	// Which chains exist and where each kind of traffic goes; the logic and
	// its corner cases are kube-proxy's, so behaviour is identical.
	usesClusterChain := len(cat.Cluster) > 0 && sp.UsesClusterEndpoints()
	usesLocalChain := len(cat.Local) > 0 && sp.UsesLocalEndpoints()

	internalChain, hasInternal := ch.svc, cat.HasAny
	if sp.InternalPolicyLocal {
		internalChain = ch.svl
		hasInternal = hasInternal && len(cat.Local) > 0
	}
	externalPolicyChain, hasExternal := ch.svc, cat.HasAny
	if sp.ExternalPolicyLocal {
		externalPolicyChain = ch.svl
		hasExternal = hasExternal && len(cat.Local) > 0
	}
	// The EXT chain also carries the short-circuit rules for local sources,
	// so it exists whenever any endpoint exists, even with none local.
	usesExtChain := cat.HasAny && sp.ExternallyAccessible()
	lbChain := ch.ext
	usesFWChain := cat.HasAny && len(sp.LoadBalancerVIPs) > 0 && len(sp.LoadBalancerSourceRanges) > 0
	if usesFWChain {
		lbChain = ch.fw
	}

	var internalTarget, internalComment, externalTarget, externalComment string
	if !cat.HasAny {
		internalTarget, externalTarget = "REJECT", "REJECT"
		internalComment = svcName + " has no endpoints"
		externalComment = internalComment
	} else {
		if !hasInternal {
			internalTarget, internalComment = "DROP", svcName+" has no local endpoints"
			rec.noLocalInternal = true
		}
		if !hasExternal {
			externalTarget, externalComment = "DROP", svcName+" has no local endpoints"
			rec.noLocalExternal = true
		}
	}

	// Shared-chain entries.
	var filterSvc, filterExt, filterNP, filterFW, natNP lineBuffer
	clusterIP := sp.ClusterIP.String()
	if hasInternal {
		rec.dispatch = append(rec.dispatch, dstRule{sp.ClusterIP, r.body(
			"-m", "comment", "--comment", svcName+" cluster IP",
			"-m", proto, "-p", proto, "-d", clusterIP, "--dport", port, "-j", internalChain)})
	} else {
		filterSvc.line("-A", ChainServices, "-m", "comment", "--comment", internalComment,
			"-m", proto, "-p", proto, "-d", clusterIP, "--dport", port, "-j", internalTarget)
	}
	for _, ip := range sp.ExternalIPs {
		if cat.HasAny {
			rec.dispatch = append(rec.dispatch, dstRule{ip, r.body(
				"-m", "comment", "--comment", svcName+" external IP",
				"-m", proto, "-p", proto, "-d", ip.String(), "--dport", port, "-j", ch.ext)})
		}
		if !hasExternal {
			filterExt.line("-A", ChainExternalServices, "-m", "comment", "--comment", externalComment,
				"-m", proto, "-p", proto, "-d", ip.String(), "--dport", port, "-j", externalTarget)
		}
	}
	for _, ip := range sp.LoadBalancerVIPs {
		if cat.HasAny {
			rec.dispatch = append(rec.dispatch, dstRule{ip, r.body(
				"-m", "comment", "--comment", svcName+" loadbalancer IP",
				"-m", proto, "-p", proto, "-d", ip.String(), "--dport", port, "-j", lbChain)})
		}
		if usesFWChain {
			// Packets the FW chain did not accept were not DNATed, so
			// they still carry the LB IP and this rule drops them.
			filterFW.line("-A", ChainFirewall, "-m", "comment", "--comment", svcName+" traffic not accepted by "+ch.fw,
				"-m", proto, "-p", proto, "-d", ip.String(), "--dport", port, "-j", "DROP")
		}
		if !hasExternal {
			filterExt.line("-A", ChainExternalServices, "-m", "comment", "--comment", externalComment,
				"-m", proto, "-p", proto, "-d", ip.String(), "--dport", port, "-j", externalTarget)
		}
	}
	if sp.NodePort != 0 {
		np := strconv.Itoa(int(sp.NodePort))
		if cat.HasAny {
			// NodePorts are not subject to loadBalancerSourceRanges (as
			// in kube-proxy; changing it would break existing users).
			natNP.line("-A", ChainNodePorts, "-m", "comment", "--comment", svcName,
				"-m", proto, "-p", proto, "--dport", np, "-j", ch.ext)
		}
		if !hasExternal {
			filterExt.line("-A", ChainExternalServices, "-m", "comment", "--comment", externalComment,
				"-m", "addrtype", "--dst-type", "LOCAL",
				"-m", proto, "-p", proto, "--dport", np, "-j", externalTarget)
		}
	}
	if sp.HealthCheckNodePort != 0 {
		// Always open, so a load balancer can tell "no local endpoints"
		// (503) from "node down" (no answer).
		filterNP.line("-A", ChainNodePorts, "-m", "comment", "--comment", svcName+" health check node port",
			"-m", "tcp", "-p", "tcp", "--dport", strconv.Itoa(int(sp.HealthCheckNodePort)), "-j", "ACCEPT")
	}
	rec.natNodePorts = natNP.b
	rec.filterServices, rec.filterExternal, rec.filterNodePorts, rec.filterFirewall = filterSvc.b, filterExt.b, filterNP.b, filterFW.b

	// The Service port's own chains.
	startRules := r.rules.lines
	declare := func(chain string) {
		r.chains.chain(chain)
		rec.chains = append(rec.chains, chain)
	}

	if hasInternal {
		match := []string{"-m", "comment", "--comment", svcName + " cluster IP",
			"-m", proto, "-p", proto, "-d", clusterIP, "--dport", port}
		if r.cfg.MasqueradeAll {
			r.rules.words("-A", internalChain)
			r.rules.words(match...)
			r.rules.line("-j", ChainMarkMasq)
		} else if r.cfg.LocalDetector.Implemented() {
			// Off-cluster traffic to a cluster IP (a static route to the
			// Service range via some node) may be answered from another
			// node, so it must be masqueraded to come back here.
			r.rules.words("-A", internalChain)
			r.rules.words(match...)
			r.rules.words(r.cfg.LocalDetector.IfNotLocal()...)
			r.rules.line("-j", ChainMarkMasq)
		}
	}

	if usesExtChain {
		declare(ch.ext)
		if !sp.ExternalPolicyLocal {
			// Endpoints may be on other nodes: masquerade so replies
			// come back through this node.
			r.rules.line("-A", ch.ext, "-m", "comment", "--comment", "masquerade traffic for "+svcName+" external destinations",
				"-j", ChainMarkMasq)
		} else {
			if r.cfg.LocalDetector.Implemented() {
				// Pod traffic to an external destination is subject to
				// neither policy: as if it went out to the LB and back.
				r.rules.words("-A", ch.ext, "-m", "comment", "--comment", "pod traffic for "+svcName+" external destinations")
				r.rules.words(r.cfg.LocalDetector.IfLocal()...)
				r.rules.line("-j", ch.svc)
			}
			// The node itself: its source address would be a local
			// address the endpoint cannot answer, so masquerade it.
			r.rules.line("-A", ch.ext, "-m", "comment", "--comment", "masquerade LOCAL traffic for "+svcName+" external destinations",
				"-m", "addrtype", "--src-type", "LOCAL", "-j", ChainMarkMasq)
			r.rules.line("-A", ch.ext, "-m", "comment", "--comment", "route LOCAL traffic for "+svcName+" external destinations",
				"-m", "addrtype", "--src-type", "LOCAL", "-j", ch.svc)
		}
		if hasExternal {
			r.rules.line("-A", ch.ext, "-j", externalPolicyChain)
		}
	}

	if usesFWChain {
		declare(ch.fw)
		fwComment := svcName + " loadbalancer IP"
		allowFromNode := false
		for _, cidr := range sp.LoadBalancerSourceRanges {
			r.rules.line("-A", ch.fw, "-m", "comment", "--comment", fwComment, "-s", cidr.String(), "-j", ch.ext)
			if r.cfg.NodeIP.IsValid() && cidr.Contains(r.cfg.NodeIP) {
				allowFromNode = true
			}
		}
		// A VIP-style LB often makes the VIP a local address, so a
		// request from this node loops back with the VIP as source.
		if allowFromNode {
			for _, ip := range sp.LoadBalancerVIPs {
				r.rules.line("-A", ch.fw, "-m", "comment", "--comment", fwComment, "-s", ip.String(), "-j", ch.ext)
			}
		}
		// Whatever falls off the end is dropped by filter KPR-FIREWALL.
		r.rules.line("-A", ch.fw, "-m", "comment", "--comment", "other traffic to "+svcName+" will be dropped by "+ChainFirewall)
	}

	// Endpoints that need a chain of their own get one (its name is a
	// SHA-256: compute each once); the rest are DNATed from the Service
	// chain directly (no entry here).
	sepNames := make(map[*model.Endpoint]string, len(cat.AllReachable))
	for _, ep := range cat.AllReachable {
		if needsEndpointChain(sp, ep) {
			sepNames[ep] = endpointChain(name, ep)
		}
	}
	if usesClusterChain {
		declare(ch.svc)
		r.endpointRules(sp, svcName, ch.svc, cat.Cluster, sepNames)
	}
	if usesLocalChain {
		declare(ch.svl)
		r.endpointRules(sp, svcName, ch.svl, cat.Local, sepNames)
	}
	for _, ep := range cat.AllReachable {
		sep := sepNames[ep]
		if sep == "" {
			continue
		}
		declare(sep)
		r.rules.words("-A", sep)
		if !r.large {
			r.rules.words("-m", "comment", "--comment", svcName)
		}
		// Hairpin: a pod reaching itself through the Service must be
		// masqueraded or it would answer itself directly.
		r.rules.line("-s", ep.IP.String(), "-j", ChainMarkMasq)
		r.rules.words("-A", sep)
		if !r.large {
			r.rules.words("-m", "comment", "--comment", svcName)
		}
		if sp.AffinityTimeoutSeconds > 0 {
			r.rules.words("-m", "recent", "--name", sep, "--set")
		}
		r.rules.line("-m", proto, "-p", proto, "-j", "DNAT", "--to-destination", ep.String())
	}
	rec.natRules = r.rules.lines - startRules
	return rec
}

// endpointRules spreads traffic over endpoints: first session affinity
// ("recent" lists keyed by endpoint chain), then a chain of statistic
// matches with probabilities 1/n, 1/(n-1), … 1 for a uniform random pick.
func (r *serviceRenderer) endpointRules(sp *model.ServicePort, svcName, chain string, eps []*model.Endpoint, sepNames map[*model.Endpoint]string) {
	if sp.AffinityTimeoutSeconds > 0 {
		secs := strconv.Itoa(int(sp.AffinityTimeoutSeconds))
		for _, ep := range eps {
			sep := sepNames[ep]
			r.rules.words("-A", chain)
			if !r.large {
				r.rules.words("-m", "comment", "--comment", svcName+" -> "+ep.String())
			}
			r.rules.line("-m", "recent", "--name", sep, "--rcheck", "--seconds", secs, "--reap", "-j", sep)
		}
	}
	n := len(eps)
	for i, ep := range eps {
		sep := sepNames[ep]
		r.rules.words("-A", chain)
		if !r.large {
			r.rules.words("-m", "comment", "--comment", svcName+" -> "+ep.String())
		}
		if i < n-1 {
			r.rules.words("-m", "statistic", "--mode", "random", "--probability", probability(n-i))
		}
		if sep == "" {
			proto := sp.Protocol.Lower()
			r.rules.line("-m", proto, "-p", proto, "-j", "DNAT", "--to-destination", ep.String())
			continue
		}
		r.rules.line("-j", sep)
	}
}

// needsEndpointChain says whether an endpoint needs a KPR-SEP chain of its
// own, as every endpoint has in kube-proxy. Only two things need one:
//   - session affinity: the "recent" list is set on the way to DNAT and
//     checked from the Service chain, keyed by the endpoint chain's name;
//   - hairpin: a packet from the endpoint to its own Service must be marked
//     for masquerade, and only when the endpoint is picked; a DNAT rule ends
//     the traversal, so marking and DNAT take two rules in a chain of their
//     own. Only an endpoint that can send from this node can hairpin here:
//     one on this node, or one whose node is unknown (hand-made
//     EndpointSlices without nodeName), which we must assume might be.
//
// Every other endpoint (those on other nodes: nearly all of them in a large
// cluster) is DNATed straight from the Service chain. That drops one chain
// and two rules per endpoint: at 10k Services × 10 endpoints, 100k chains,
// which is what iptables-restore's time and the legacy backend's whole-table
// replace grow with. The packet's path and NAT result are the same.
func needsEndpointChain(sp *model.ServicePort, ep *model.Endpoint) bool {
	return sp.AffinityTimeoutSeconds > 0 || ep.IsLocal || ep.NodeName == ""
}

// body renders the words of a rule after "-A <chain>".
func (r *serviceRenderer) body(words ...string) string {
	r.scratch.reset()
	r.scratch.words(words...)
	return string(r.scratch.b)
}

var probabilities []string

func init() {
	probabilities = make([]string, 129)
	for i := 1; i < len(probabilities); i++ {
		probabilities[i] = formatProbability(i)
	}
}

func formatProbability(n int) string {
	return strconv.FormatFloat(1.0/float64(n), 'f', 10, 64)
}

// probability is 1/n with ten decimals, as kube-proxy writes it.
func probability(n int) string {
	if n < len(probabilities) {
		return probabilities[n]
	}
	return formatProbability(n)
}
