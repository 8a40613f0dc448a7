package conntrack

import (
	"net/netip"
	"sort"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Reasons a flow is stale (the `reason` log key and StaleFlow.Reason).
const (
	// ReasonEndpointGone: the flow was DNATed to an address that is no
	// longer an endpoint this node sends the Service port's traffic to.
	ReasonEndpointGone = "endpoint_gone"
	// ReasonNotNATed: the flow's reply source is its own destination, i.e.
	// no DNAT happened: the first packet was sent while the Service port
	// had no usable endpoint (or no rules yet) and was black-holed or
	// routed away. Now that there are endpoints, the entry must go or the
	// client never reaches them.
	ReasonNotNATed = "not_nated"
	// ReasonFrontendRemoved: the Service port (or this frontend address or
	// node port of it) no longer exists.
	ReasonFrontendRemoved = "frontend_removed"
)

// StaleFlow is a flow chosen for deletion and why.
type StaleFlow struct {
	Flow    Flow
	Service model.ServicePortName
	Reason  string
}

type frontendKey struct {
	proto uint8
	addr  netip.Addr
	port  uint16
}

type nodePortKey struct {
	proto uint8
	port  uint16
}

// target is what a frontend (or node port) may legitimately be NATed to.
type target struct {
	name model.ServicePortName
	// allowed holds the reply sources (endpoint ip:port) that are fine.
	allowed map[netip.AddrPort]struct{}
	// removed: the frontend no longer exists; every entry to it is stale.
	removed bool
}

func (t *target) allows(ap netip.AddrPort) bool {
	_, ok := t.allowed[ap]
	return ok
}

// Plan is the per-sync decision of which Service frontends to examine and
// which reply sources each may keep. Build it with NewPlan, dump the
// protocols in Protocols(), then call Stale. It is pure: no kernel, no clock.
type Plan struct {
	family model.Family
	cur    *model.Snapshot
	node   *model.Node

	examined  []model.ServicePortName
	frontends map[frontendKey]*target
	nodePorts map[nodePortKey]*target
	udp, sctp bool

	// Built lazily, only when a decision needs to know about Service
	// ports that were not examined (see owner).
	curFrontends map[frontendKey]model.ServicePortName
	curNodePorts map[nodePortKey]model.ServicePortName
	targets      map[model.ServicePortName]*target
}

// NewPlan examines the UDP and SCTP Service ports that differ between prev
// and cur (model.SameServicePort); prev == nil examines every one. For
// each examined port the allowed reply sources are its serving endpoints,
// wherever they run and whatever the traffic policies, topology hints or
// terminating state (as kube-proxy's reconciler): an established flow may
// stay on an endpoint that still serves even when new traffic goes
// elsewhere. They apply to its cluster IP,
// external IPs and load-balancer IPs (at the Service port) and its node
// port (any destination address). Frontends that an examined port had in
// prev but not in cur are examined too: every entry to them is stale unless
// another Service port now owns them.
//
// A nil cur gives an empty plan (nothing is ever stale); a prev of another
// family than cur is ignored (everything examined).
func NewPlan(prev, cur *model.Snapshot, node *model.Node) *Plan {
	if cur == nil {
		cur = &model.Snapshot{}
	}
	if prev != nil && prev.Family != cur.Family {
		prev = nil
	}
	p := &Plan{
		family:    cur.Family,
		cur:       cur,
		node:      node,
		frontends: map[frontendKey]*target{},
		nodePorts: map[nodePortKey]*target{},
		targets:   map[model.ServicePortName]*target{},
	}
	changed := changedNames(prev, cur)
	seen := make(map[model.ServicePortName]bool, len(changed))

	// Current definitions first, so that a frontend moving from one
	// examined Service port to another is judged by its new owner.
	for _, name := range changed {
		svc := cur.Services[name]
		if svc == nil {
			continue
		}
		proto := ProtoNumber(svc.Protocol)
		if !cleanable(proto) {
			continue
		}
		t := p.targetFor(name, svc)
		p.forEachFrontend(svc, func(k frontendKey) { p.claim(p.frontends, k, t) })
		if svc.NodePort != 0 {
			p.claimNodePort(nodePortKey{proto, svc.NodePort}, t)
		}
		p.markProto(proto)
		p.examined = append(p.examined, name)
		seen[name] = true
	}

	// Then frontends that went away.
	if prev != nil {
		for _, name := range changed {
			svc := prev.Services[name]
			if svc == nil {
				continue
			}
			proto := ProtoNumber(svc.Protocol)
			if !cleanable(proto) {
				continue
			}
			added := false
			p.forEachFrontend(svc, func(k frontendKey) {
				if _, ok := p.frontends[k]; ok {
					return
				}
				if owner, ok := p.frontendOwner(k); ok {
					p.frontends[k] = p.targetFor(owner, cur.Services[owner])
				} else {
					p.frontends[k] = &target{name: name, removed: true}
				}
				added = true
			})
			if svc.NodePort != 0 {
				k := nodePortKey{proto, svc.NodePort}
				if _, ok := p.nodePorts[k]; !ok {
					if owner, ok := p.nodePortOwner(k); ok {
						p.nodePorts[k] = p.targetFor(owner, cur.Services[owner])
					} else {
						p.nodePorts[k] = &target{name: name, removed: true}
					}
					added = true
				}
			}
			if added {
				p.markProto(proto)
				if !seen[name] {
					p.examined = append(p.examined, name)
					seen[name] = true
				}
			}
		}
	}
	return p
}

// changedNames lists, sorted, the Service port names present in prev or
// cur whose definition or endpoints differ.
func changedNames(prev, cur *model.Snapshot) []model.ServicePortName {
	var out []model.ServicePortName
	for name := range cur.Services {
		if prev == nil || !model.SameServicePort(prev, cur, name) {
			out = append(out, name)
		}
	}
	if prev != nil {
		for name := range prev.Services {
			if _, ok := cur.Services[name]; !ok {
				out = append(out, name)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

func cleanable(proto uint8) bool { return proto == ProtoUDP || proto == ProtoSCTP }

func (p *Plan) markProto(proto uint8) {
	if proto == ProtoUDP {
		p.udp = true
	} else {
		p.sctp = true
	}
}

func (p *Plan) forEachFrontend(svc *model.ServicePort, fn func(frontendKey)) {
	proto := ProtoNumber(svc.Protocol)
	add := func(a netip.Addr) {
		if p.family.Contains(a) {
			fn(frontendKey{proto, a, svc.Port})
		}
	}
	add(svc.ClusterIP)
	for _, a := range svc.ExternalIPs {
		add(a)
	}
	for _, a := range svc.LoadBalancerVIPs {
		add(a)
	}
}

// targetFor computes (once) the allowed reply sources of a current
// Service port: every endpoint that still serves. Only endpoints that are
// gone or no longer serving break a flow; a rolling update, a traffic
// policy or a topology change moves new traffic but leaves existing UDP
// flows alone (a DNS client mid-query keeps its answer).
func (p *Plan) targetFor(name model.ServicePortName, svc *model.ServicePort) *target {
	if t, ok := p.targets[name]; ok {
		return t
	}
	eps := p.cur.Endpoints[name]
	t := &target{name: name, allowed: make(map[netip.AddrPort]struct{}, len(eps))}
	for _, ep := range eps {
		if ep.Serving {
			t.allowed[ep.AddrPort()] = struct{}{}
		}
	}
	p.targets[name] = t
	return t
}

// claim records that k belongs to t. Two Service ports may share a
// frontend (overlapping external IPs); then an entry is kept if either may
// use its endpoint — deleting less is the safe side.
func (p *Plan) claim(m map[frontendKey]*target, k frontendKey, t *target) {
	old, ok := m[k]
	if !ok || old == t {
		m[k] = t
		return
	}
	m[k] = merge(old, t)
}

func (p *Plan) claimNodePort(k nodePortKey, t *target) {
	old, ok := p.nodePorts[k]
	if !ok || old == t {
		p.nodePorts[k] = t
		return
	}
	p.nodePorts[k] = merge(old, t)
}

func merge(a, b *target) *target {
	m := &target{name: a.name, allowed: make(map[netip.AddrPort]struct{}, len(a.allowed)+len(b.allowed))}
	for ap := range a.allowed {
		m.allowed[ap] = struct{}{}
	}
	for ap := range b.allowed {
		m.allowed[ap] = struct{}{}
	}
	return m
}

// buildIndex indexes every cleanable frontend and node port of cur. Only
// needed for the rare decisions that involve Service ports that were not
// examined, so it is built on first use.
func (p *Plan) buildIndex() {
	if p.curFrontends != nil {
		return
	}
	p.curFrontends = map[frontendKey]model.ServicePortName{}
	p.curNodePorts = map[nodePortKey]model.ServicePortName{}
	for _, name := range p.cur.SortedNames() {
		svc := p.cur.Services[name]
		proto := ProtoNumber(svc.Protocol)
		if !cleanable(proto) {
			continue
		}
		p.forEachFrontend(svc, func(k frontendKey) {
			if _, ok := p.curFrontends[k]; !ok {
				p.curFrontends[k] = name
			}
		})
		if svc.NodePort != 0 {
			k := nodePortKey{proto, svc.NodePort}
			if _, ok := p.curNodePorts[k]; !ok {
				p.curNodePorts[k] = name
			}
		}
	}
}

func (p *Plan) frontendOwner(k frontendKey) (model.ServicePortName, bool) {
	p.buildIndex()
	n, ok := p.curFrontends[k]
	return n, ok
}

func (p *Plan) nodePortOwner(k nodePortKey) (model.ServicePortName, bool) {
	p.buildIndex()
	n, ok := p.curNodePorts[k]
	return n, ok
}

// Examined lists the UDP/SCTP Service ports this plan looks at, sorted.
func (p *Plan) Examined() []model.ServicePortName { return p.examined }

// Protocols lists the L4 protocols whose flows must be dumped (empty: no
// dump needed this sync).
func (p *Plan) Protocols() []uint8 {
	var out []uint8
	if p.udp {
		out = append(out, ProtoUDP)
	}
	if p.sctp {
		out = append(out, ProtoSCTP)
	}
	return out
}

// Stale returns the flows (among a dump of the plan's family) that must be
// deleted. Flows of other families or protocols, and flows to destinations
// that are not examined frontends, are never selected.
func (p *Plan) Stale(flows []Flow) []StaleFlow {
	var out []StaleFlow
	for i := range flows {
		fl := &flows[i]
		if fl.Family != p.family || !p.wants(fl.Protocol) {
			continue
		}
		replySrc := fl.Reply.SrcAddrPort()
		k := frontendKey{fl.Protocol, fl.Orig.Dst, fl.Orig.DstPort}
		if t, ok := p.frontends[k]; ok {
			// A frontend match decides alone: the node-port rule below
			// must not judge a Service IP's entries by another Service's
			// endpoints just because the port numbers coincide.
			if !t.allows(replySrc) {
				out = append(out, StaleFlow{Flow: *fl, Service: t.name, Reason: reason(t, fl)})
			}
			continue
		}
		t, ok := p.nodePorts[nodePortKey{fl.Protocol, fl.Orig.DstPort}]
		if !ok || t.allows(replySrc) {
			continue
		}
		if _, isFrontend := p.frontendOwner(k); isFrontend {
			// Destination is a (not examined) Service frontend whose
			// port equals our node port: not node-port traffic.
			continue
		}
		out = append(out, StaleFlow{Flow: *fl, Service: t.name, Reason: reason(t, fl)})
	}
	return out
}

func (p *Plan) wants(proto uint8) bool {
	return (proto == ProtoUDP && p.udp) || (proto == ProtoSCTP && p.sctp)
}

func reason(t *target, fl *Flow) string {
	switch {
	case t.removed:
		return ReasonFrontendRemoved
	case fl.Reply.Src == fl.Orig.Dst && fl.Reply.SrcPort == fl.Orig.DstPort:
		return ReasonNotNATed
	}
	return ReasonEndpointGone
}
