package ctcli

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/kpr-proxy/kpr/internal/conntrack"
	"github.com/kpr-proxy/kpr/internal/endpoints"
	"github.com/kpr-proxy/kpr/internal/model"
)

// How a flow reached its Service (Row.Via).
const (
	ViaClusterIP    = "clusterIP"
	ViaExternalIP   = "externalIP"
	ViaLoadBalancer = "loadBalancer"
	ViaNodePort     = "nodePort"
)

// What the flow's reply source is to the Service (Row.EndpointState).
const (
	// EPReady: a ready endpoint.
	EPReady = "ready"
	// EPTerminating: terminating but still serving.
	EPTerminating = "terminating"
	// EPNotServing: terminating and no longer serving.
	EPNotServing = "not-serving"
	// EPNotReady: not ready and not terminating.
	EPNotReady = "not-ready"
	// EPGone: the address is not an endpoint of the Service at all.
	EPGone = "gone"
	// EPNotDNATed: the reply source is the frontend itself: no DNAT happened.
	EPNotDNATed = "not-dnated"
)

// Stale reason codes (Row.ReasonCode): conntrack's, plus one the CLI
// tells apart.
const (
	ReasonEndpointGone    = conntrack.ReasonEndpointGone
	ReasonNotNATed        = conntrack.ReasonNotNATed
	ReasonFrontendRemoved = conntrack.ReasonFrontendRemoved
	// ReasonNoEndpoints: not DNATed, and the Service still has no endpoint
	// this node sends to. Deleting the entry does not help yet; the proxy
	// removes it when endpoints appear.
	ReasonNoEndpoints = "no_endpoints"
)

// Row is one conntrack entry of one of our Services, annotated.
type Row struct {
	Service model.ServicePortName
	// Port is the Service port number (the frontend port, except for
	// node-port flows).
	Port   uint16
	Via    string
	Family model.Family
	// Client is the original source, Frontend the original destination
	// (the address the client used), Endpoint the reply source (where the
	// kernel DNATed to; equal to Frontend when it did not).
	Client, Frontend, Endpoint netip.AddrPort
	EndpointState              string
	// Pod and Node of the endpoint ("" when unknown).
	Pod, Node string
	Flow      conntrack.Flow

	// Reason and ReasonCode are set for stale rows only.
	Reason, ReasonCode string
}

// NATed reports whether the kernel DNATed the flow.
func (r *Row) NATed() bool { return r.EndpointState != EPNotDNATed }

// Proto is the flow's protocol as conntrack(8) spells it.
func (r *Row) Proto() string { return conntrack.ProtoName(r.Flow.Protocol) }

// State is the flow's protocol state (TCP, SCTP) followed by UNREPLIED,
// REPLIED or ASSURED, e.g. ["ESTABLISHED", "ASSURED"] or ["UNREPLIED"].
func (r *Row) State() []string { return FlowState(&r.Flow) }

// FlowState is Row.State for a bare flow.
func FlowState(fl *conntrack.Flow) []string {
	var out []string
	switch fl.Protocol {
	case conntrack.ProtoTCP:
		out = append(out, conntrack.TCPStateName(fl.TCPState))
	case conntrack.ProtoSCTP:
		out = append(out, sctpStateName(fl.SCTPState))
	}
	switch {
	case fl.Status&conntrack.StatusAssured != 0:
		out = append(out, "ASSURED")
	case fl.Status&conntrack.StatusSeenReply != 0:
		out = append(out, "REPLIED")
	default:
		out = append(out, "UNREPLIED")
	}
	return out
}

// conntrack(8)'s names for enum sctp_conntrack.
var sctpStates = [...]string{"NONE", "CLOSED", "COOKIE_WAIT", "COOKIE_ECHOED", "ESTABLISHED", "SHUTDOWN_SENT",
	"SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT", "HEARTBEAT_SENT", "HEARTBEAT_ACKED"}

func sctpStateName(s uint8) string {
	if int(s) < len(sctpStates) {
		return sctpStates[s]
	}
	return strconv.Itoa(int(s))
}

// stateWords is every word --state accepts.
func stateWords() []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for i := 1; i <= 9; i++ { // TCP states, without NONE
		add(conntrack.TCPStateName(uint8(i)))
	}
	for _, s := range sctpStates[1:] {
		add(s)
	}
	for _, s := range []string{"UNREPLIED", "REPLIED", "ASSURED"} {
		add(s)
	}
	return out
}

// frontendKey is a Service address as the original destination shows it.
type frontendKey struct {
	proto uint8
	addr  netip.Addr
	port  uint16
}

type nodePortKey struct {
	proto uint8
	port  uint16
}

type candidate struct {
	svc *model.ServicePort
	via string
}

type famIndex struct {
	fv        *FamilyView
	frontends map[frontendKey][]candidate
	nodePorts map[nodePortKey][]candidate
	eps       map[model.ServicePortName]map[netip.AddrPort]*model.Endpoint
	// reachable: the endpoints this node DNATs each port to
	// (endpoints.Categorize(...).AllReachable, as the cleaner uses).
	reachable map[model.ServicePortName]map[netip.AddrPort]bool
}

// Annotator matches conntrack flows to Services and endpoints. It is pure:
// built from a View and the node's local addresses, no I/O.
type Annotator struct {
	fams map[model.Family]*famIndex
	// local holds the addresses a node port answers on; nil means any.
	local map[netip.Addr]bool
}

// NewAnnotator indexes v. local are this node's addresses (a flow to a node
// port counts only if its destination is one of them, or one of the
// node's addresses in v); with none known, any destination counts, as in
// the proxy's own cleanup.
func NewAnnotator(v *View, local []netip.Addr) *Annotator {
	a := &Annotator{fams: map[model.Family]*famIndex{}}
	addLocal := func(ip netip.Addr) {
		if a.local == nil {
			a.local = map[netip.Addr]bool{}
		}
		a.local[ip.Unmap()] = true
	}
	for _, ip := range local {
		addLocal(ip)
	}
	for i := range v.Families {
		fv := &v.Families[i]
		if fv.Node != nil && len(local) > 0 {
			for _, ip := range fv.Node.Addresses {
				addLocal(ip)
			}
		}
		idx := &famIndex{
			fv:        fv,
			frontends: map[frontendKey][]candidate{},
			nodePorts: map[nodePortKey][]candidate{},
			eps:       map[model.ServicePortName]map[netip.AddrPort]*model.Endpoint{},
			reachable: map[model.ServicePortName]map[netip.AddrPort]bool{},
		}
		snap := fv.Snapshot
		for _, name := range snap.SortedNames() {
			svc := snap.Services[name]
			proto := conntrack.ProtoNumber(svc.Protocol)
			add := func(ip netip.Addr, via string) {
				if snap.Family.Contains(ip) {
					k := frontendKey{proto, ip, svc.Port}
					idx.frontends[k] = append(idx.frontends[k], candidate{svc, via})
				}
			}
			add(svc.ClusterIP, ViaClusterIP)
			for _, ip := range svc.ExternalIPs {
				add(ip, ViaExternalIP)
			}
			for _, ip := range svc.LoadBalancerVIPs {
				add(ip, ViaLoadBalancer)
			}
			if svc.NodePort != 0 {
				k := nodePortKey{proto, svc.NodePort}
				idx.nodePorts[k] = append(idx.nodePorts[k], candidate{svc, ViaNodePort})
			}
			m := map[netip.AddrPort]*model.Endpoint{}
			for _, ep := range snap.Endpoints[name] {
				m[ep.AddrPort()] = ep
			}
			idx.eps[name] = m
			r := map[netip.AddrPort]bool{}
			for _, ep := range endpoints.Categorize(snap.Endpoints[name], svc, fv.Node).AllReachable {
				r[ep.AddrPort()] = true
			}
			idx.reachable[name] = r
		}
		a.fams[snap.Family] = idx
	}
	return a
}

func (a *Annotator) isLocal(ip netip.Addr) bool {
	return a.local == nil || a.local[ip.Unmap()]
}

// Annotate matches one flow: by original destination to a Service frontend
// (cluster IP, external IP or load-balancer IP at the Service port, or a
// node port on a local address), then by reply source to an endpoint. ok
// is false for flows that are not to one of our Services.
func (a *Annotator) Annotate(fl *conntrack.Flow) (Row, bool) {
	idx := a.fams[fl.Family]
	if idx == nil {
		return Row{}, false
	}
	cands := idx.frontends[frontendKey{fl.Protocol, fl.Orig.Dst, fl.Orig.DstPort}]
	if len(cands) == 0 && a.isLocal(fl.Orig.Dst) {
		cands = idx.nodePorts[nodePortKey{fl.Protocol, fl.Orig.DstPort}]
	}
	if len(cands) == 0 {
		return Row{}, false
	}
	// Two Service ports may share a frontend (overlapping external IPs):
	// the one that has the reply source as an endpoint explains the flow.
	c := cands[0]
	for _, x := range cands[1:] {
		if idx.eps[x.svc.Name][fl.Reply.SrcAddrPort()] != nil {
			c = x
			break
		}
	}
	return idx.row(fl, c.svc, c.via), true
}

func (idx *famIndex) row(fl *conntrack.Flow, svc *model.ServicePort, via string) Row {
	r := Row{
		Service:  svc.Name,
		Port:     svc.Port,
		Via:      via,
		Family:   fl.Family,
		Client:   fl.Orig.SrcAddrPort(),
		Frontend: fl.Orig.DstAddrPort(),
		Endpoint: fl.Reply.SrcAddrPort(),
		Flow:     *fl,
	}
	ep := idx.eps[svc.Name][r.Endpoint]
	switch {
	case ep != nil:
		r.Pod, r.Node = ep.PodName, ep.NodeName
		switch {
		case ep.Ready:
			r.EndpointState = EPReady
		case ep.Terminating && ep.Serving:
			r.EndpointState = EPTerminating
		case ep.Terminating:
			r.EndpointState = EPNotServing
		default:
			r.EndpointState = EPNotReady
		}
	case r.Endpoint == r.Frontend:
		r.EndpointState = EPNotDNATed
	default:
		r.EndpointState = EPGone
	}
	return r
}

// List annotates every flow that belongs to one of our Services, sorted.
func (a *Annotator) List(flows []conntrack.Flow) []Row {
	var out []Row
	for i := range flows {
		if r, ok := a.Annotate(&flows[i]); ok {
			out = append(out, r)
		}
	}
	SortRows(out)
	return out
}

// Stale returns the flows that point at endpoints the node does not send
// the Service's traffic to now, with the reason. The selection is the
// proxy's own (conntrack.NewPlan with no previous snapshot, so every
// Service port is examined): UDP and SCTP only, since a TCP client that
// loses its endpoint reconnects with a new source port and a new NAT
// decision.
func (a *Annotator) Stale(flows []conntrack.Flow) []Row {
	var out []Row
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		idx := a.fams[fam]
		if idx == nil {
			continue
		}
		plan := conntrack.NewPlan(nil, idx.fv.Snapshot, idx.fv.Node)
		for _, sf := range plan.Stale(flows) {
			svc := idx.fv.Snapshot.Services[sf.Service]
			if svc == nil {
				continue // frontend_removed cannot happen without a previous snapshot
			}
			r, ok := a.Annotate(&sf.Flow)
			if !ok {
				// The plan judges a node port on any destination
				// address (deleting too much is harmless for the
				// proxy); here only this node's entries count, as
				// in list.
				continue
			}
			if r.Service != sf.Service {
				// Service ports sharing a frontend: name the one
				// the plan judged by.
				r = idx.row(&sf.Flow, svc, r.Via)
			}
			r.ReasonCode, r.Reason = idx.explain(&r, sf.Reason)
			out = append(out, r)
		}
	}
	SortRows(out)
	return out
}

// explain turns the plan's reason into words an operator can act on.
func (idx *famIndex) explain(r *Row, code string) (string, string) {
	switch code {
	case conntrack.ReasonNotNATed:
		if len(idx.reachable[r.Service]) == 0 {
			return ReasonNoEndpoints, "Service has no endpoints, so the entry was not DNATed (kpr removes it when endpoints appear)"
		}
		return ReasonNotNATed, "Service had no endpoints when the entry was created (not DNATed)"
	case conntrack.ReasonFrontendRemoved:
		return code, fmt.Sprintf("frontend %s no longer belongs to the Service", r.Frontend)
	}
	who := "endpoint " + r.Endpoint.String()
	if d := podDesc(r.Pod, r.Node); d != "" {
		who += " (" + d + ")"
	}
	switch r.EndpointState {
	case EPGone:
		return code, who + " is no longer an endpoint"
	case EPNotServing:
		return code, who + " is terminating and no longer serving"
	case EPNotReady:
		return code, who + " is not ready"
	}
	// Endpoints that still serve are never stale (flows may stay on them);
	// this only covers a state the plan and the view disagree on.
	return code, who + " is not a serving endpoint"
}

func podDesc(pod, node string) string {
	switch {
	case pod != "" && node != "":
		return "pod " + pod + " on " + node
	case pod != "":
		return "pod " + pod
	case node != "":
		return "on " + node
	}
	return ""
}

// SortRows orders rows by Service, family, protocol, frontend, client,
// endpoint and id, for stable output.
func SortRows(rows []Row) {
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := &rows[i], &rows[j]
		if a.Service != b.Service {
			return a.Service.Less(b.Service)
		}
		if a.Family != b.Family {
			return a.Family < b.Family
		}
		if a.Flow.Protocol != b.Flow.Protocol {
			return a.Flow.Protocol < b.Flow.Protocol
		}
		if c := a.Frontend.Compare(b.Frontend); c != 0 {
			return c < 0
		}
		if c := a.Client.Compare(b.Client); c != 0 {
			return c < 0
		}
		if c := a.Endpoint.Compare(b.Endpoint); c != 0 {
			return c < 0
		}
		return a.Flow.ID < b.Flow.ID
	})
}

// RowFilter selects rows; zero fields match anything.
type RowFilter struct {
	// Namespace and Name select a Service; Port (a port name or number)
	// one of its ports.
	Namespace, Name, Port string
	Pod                   string
	Protocol              uint8
	// State is one word of Row.State, upper case.
	State string
}

// Match reports whether f selects r.
func (f *RowFilter) Match(r *Row) bool {
	switch {
	case f.Name != "" && (r.Service.Namespace != f.Namespace || r.Service.Name != f.Name),
		f.Port != "" && !portMatches(f.Port, r),
		f.Pod != "" && r.Pod != f.Pod,
		f.Protocol != 0 && r.Flow.Protocol != f.Protocol:
		return false
	}
	if f.State != "" {
		for _, s := range r.State() {
			if s == f.State {
				return true
			}
		}
		return false
	}
	return true
}

// portMatches: a number is the Service port number, anything else the
// port's name.
func portMatches(want string, r *Row) bool {
	if n, err := strconv.ParseUint(want, 10, 16); err == nil {
		return uint16(n) == r.Port
	}
	return want == r.Service.Port
}

// Filter returns the rows f selects.
func (f *RowFilter) Filter(rows []Row) []Row {
	out := rows[:0:0]
	for i := range rows {
		if f.Match(&rows[i]) {
			out = append(out, rows[i])
		}
	}
	return out
}

// parseState validates a --state value.
func parseState(s string) (string, error) {
	u := strings.ToUpper(strings.TrimSpace(s))
	for _, w := range stateWords() {
		if w == u {
			return u, nil
		}
	}
	return "", fmt.Errorf("unknown state %q (want one of %s)", s, strings.Join(stateWords(), ", "))
}
