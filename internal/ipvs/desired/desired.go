// Package desired computes what the IPVS mode wants the kernel to hold for
// one IP family: virtual servers with their real servers, the addresses of
// kpr's link, the ip sets, and the iptables-restore batch. It is a pure
// function of (Snapshot, Node, Config): no clock, no kernel, no globals, so
// golden tests and benchmarks exercise exactly what a sync reconciles
// towards.
//
// The layout follows kube-proxy's IPVS mode (same ip sets and chains, named
// KPR-… instead of KUBE-…), with real-server selection shared with the
// iptables mode through endpoints.Categorize.
package desired

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/kpr-proxy/kpr/internal/endpoints"
	"github.com/kpr-proxy/kpr/internal/iptables/render"
	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	"github.com/kpr-proxy/kpr/internal/model"
)

// Config is everything besides the Snapshot and Node that shapes the state.
type Config struct {
	Family model.Family
	// Scheduler is the IPVS scheduler ("rr" when empty).
	Scheduler string

	MasqueradeBit int
	MasqueradeAll bool
	// RandomFully adds --random-fully to MASQUERADE.
	RandomFully bool
	// LocalDetector tells this node's pod traffic from other traffic.
	LocalDetector render.LocalDetector

	// NodePortIPs are the addresses NodePort virtual servers are made on
	// (--nodeport-addresses resolved against the node's interfaces).
	NodePortIPs []netip.Addr
	// NodeAddrs are the node's own addresses outside kpr's link: an
	// external or load-balancer IP that is one of them is already local
	// and is not bound to the link.
	NodeAddrs []netip.Addr
	// NodeIP is the node's primary IP (invalid if unknown), let through
	// loadBalancerSourceRanges that contain it.
	NodeIP netip.Addr
}

// DefaultScheduler is kube-proxy's default.
const DefaultScheduler = "rr"

func (c *Config) scheduler() string {
	if c.Scheduler == "" {
		return DefaultScheduler
	}
	return c.Scheduler
}

// MasqueradeMark is the mark value string ("0x4000" for bit 14).
func (c *Config) MasqueradeMark() string {
	return fmt.Sprintf("%#x", uint32(1)<<uint(c.MasqueradeBit))
}

// Kind says which Service address a virtual server is for.
type Kind string

const (
	KindClusterIP    Kind = "cluster-ip"
	KindExternalIP   Kind = "external-ip"
	KindLoadBalancer Kind = "load-balancer"
	KindNodePort     Kind = "node-port"
)

// VirtualServer is one desired IPVS service and its real servers, all with
// weight 1 (IPVS mode uses weights only to drain: 0 means terminating).
type VirtualServer struct {
	kernel.Service
	Owner model.ServicePortName
	Kind  Kind
	// Bind: the address goes on kpr's link.
	Bind  bool
	Dests []netip.AddrPort // sorted, unique
}

// Stats describe a desired state.
type Stats struct {
	ServicePorts   int
	VirtualServers int
	RealServers    int
	BindAddrs      int
	SetEntries     int
	// Service ports with a Local traffic policy and endpoints, but none
	// on this node (kubeproxy_sync_proxy_rules_no_local_endpoints_total).
	NoLocalInternal, NoLocalExternal int
}

// State is the desired kernel state of one family.
type State struct {
	Family   model.Family
	Services map[kernel.Key]*VirtualServer
	// Sets holds every set of the family, empty ones included.
	Sets map[string]*ipset.Set
	// Bind lists the addresses for kpr's link, sorted.
	Bind []netip.Addr
	// Rules is the iptables-restore --noflush batch for our chains.
	Rules []byte
	// Conflicts describe virtual servers two Services asked for; the
	// first Service (in name order) keeps it.
	Conflicts []string
	Stats     Stats
}

// SortedKeys lists the virtual servers in a stable order.
func (s *State) SortedKeys() []kernel.Key {
	keys := make([]kernel.Key, 0, len(s.Services))
	for k := range s.Services {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Less(keys[j]) })
	return keys
}

// outFilterEntry is a load-balancer IP:port whose source ranges leave the
// node out; the node's own connections to it are dropped.
type outFilterEntry struct {
	ip    netip.Addr
	proto model.Protocol
	port  uint16
	owner model.ServicePortName
}

type renderer struct {
	cfg       *Config
	node      *model.Node
	st        *State
	sets      map[string]*ipset.Set
	nodeAddrs map[netip.Addr]bool
	bind      map[netip.Addr]bool
	outFilter []outFilterEntry
}

func (r *renderer) set(base string) *ipset.Set { return r.sets[SetName(r.cfg.Family, base)] }

// Render computes the desired state. node may be nil (no topology, no local
// endpoints known).
func Render(snap *model.Snapshot, node *model.Node, cfg *Config) *State {
	if node == nil {
		node = &model.Node{}
	}
	r := &renderer{
		cfg:  cfg,
		node: node,
		st: &State{
			Family:   cfg.Family,
			Services: make(map[kernel.Key]*VirtualServer, len(snap.Services)*2),
		},
		sets:      EmptySets(cfg.Family),
		nodeAddrs: make(map[netip.Addr]bool, len(cfg.NodeAddrs)),
		bind:      make(map[netip.Addr]bool, len(snap.Services)),
	}
	r.st.Sets = r.sets
	for _, a := range cfg.NodeAddrs {
		r.nodeAddrs[a] = true
	}
	for _, name := range snap.SortedNames() {
		sp := snap.Services[name]
		if sp.Protocol != model.TCP && sp.Protocol != model.UDP && sp.Protocol != model.SCTP {
			continue // the change tracker never passes one; be safe
		}
		r.service(name, sp, snap.Endpoints[name])
	}
	ips := r.set(SetIPVSIPs)
	r.st.Bind = make([]netip.Addr, 0, len(r.bind))
	for a := range r.bind {
		r.st.Bind = append(r.st.Bind, a)
		ips.Add(ipset.IP(a))
	}
	sort.Slice(r.st.Bind, func(i, j int) bool { return r.st.Bind[i].Less(r.st.Bind[j]) })

	st := &r.st.Stats
	st.ServicePorts = len(snap.Services)
	st.VirtualServers = len(r.st.Services)
	for _, vs := range r.st.Services {
		st.RealServers += len(vs.Dests)
	}
	st.BindAddrs = len(r.st.Bind)
	for _, s := range r.sets {
		st.SetEntries += len(s.Entries)
	}
	r.st.Rules = renderRules(cfg, r.outFilter)
	return r.st
}

func (r *renderer) service(name model.ServicePortName, sp *model.ServicePort, eps []*model.Endpoint) {
	cat := endpoints.Categorize(eps, sp, r.node)
	proto, port := sp.Protocol, sp.Port

	// Hairpin: a pod that reaches itself through the Service must be
	// masqueraded or it would answer itself directly.
	loop := r.set(SetLoopBack)
	for _, ep := range eps {
		if ep.IsLocal && r.cfg.Family.Contains(ep.IP) {
			loop.Add(ipset.IPPortIP(ep.IP, proto, ep.Port, ep.IP))
		}
	}

	// Real servers. Internal traffic (the cluster IP) follows
	// internalTrafficPolicy, external traffic externalTrafficPolicy, with
	// endpoints.Categorize's readiness, terminating fallback and topology.
	internal := cat.Cluster
	if sp.InternalPolicyLocal {
		internal = cat.Local
		if cat.HasAny && len(cat.Local) == 0 {
			r.st.Stats.NoLocalInternal++
		}
	}
	external := cat.Cluster
	noLocalExternal := false
	if sp.ExternalPolicyLocal {
		if len(cat.Local) > 0 {
			external = cat.Local
		} else if cat.HasAny {
			// A virtual server cannot tell pods from outside clients:
			// keep every endpoint for pods and the node (as the iptables
			// mode's short-circuit does), and drop outside traffic with
			// SetExternalNoLocal (as the iptables mode does).
			noLocalExternal = true
			r.st.Stats.NoLocalExternal++
		}
	}
	internalDests := r.dests(internal)
	externalDests := internalDests
	if !sameSlice(internal, external) {
		externalDests = r.dests(external)
	}

	flags, timeout := uint32(0), uint32(0)
	if sp.AffinityTimeoutSeconds > 0 {
		flags, timeout = kernel.FlagPersistent, uint32(sp.AffinityTimeoutSeconds)
	}
	if r.cfg.scheduler() == "mh" {
		// kube-proxy hashes the source port too with mh (mh-port).
		flags |= kernel.FlagSched2
	}
	add := func(ip netip.Addr, port uint16, kind Kind, bind bool, dests []netip.AddrPort) {
		key := kernel.Key{Protocol: proto, Addr: ip, Port: port}
		if prev, ok := r.st.Services[key]; ok {
			if prev.Owner != name {
				r.st.Conflicts = append(r.st.Conflicts, fmt.Sprintf("%s (%s of %s) is already used by %s (%s); ignored",
					key, kind, name, prev.Owner, prev.Kind))
			}
			return
		}
		r.st.Services[key] = &VirtualServer{
			Service: kernel.Service{
				Family: r.cfg.Family, Protocol: proto, Addr: ip, Port: port,
				Scheduler: r.cfg.scheduler(), Flags: flags, Timeout: timeout,
			},
			Owner: name, Kind: kind, Bind: bind, Dests: dests,
		}
		if bind {
			r.bind[ip] = true
		}
	}

	r.set(SetClusterIP).Add(ipset.IPPort(sp.ClusterIP, proto, port))
	add(sp.ClusterIP, port, KindClusterIP, true, internalDests)

	noLocal := r.set(SetExternalNoLocal)
	for _, ip := range sp.ExternalIPs {
		if sp.ExternalPolicyLocal {
			r.set(SetExternalIPLocal).Add(ipset.IPPort(ip, proto, port))
		} else {
			r.set(SetExternalIP).Add(ipset.IPPort(ip, proto, port))
		}
		if noLocalExternal {
			noLocal.Add(ipset.IPPort(ip, proto, port))
		}
		add(ip, port, KindExternalIP, !r.nodeAddrs[ip], externalDests)
	}

	for _, ip := range sp.LoadBalancerVIPs {
		entry := ipset.IPPort(ip, proto, port)
		r.set(SetLoadBalancer).Add(entry)
		if sp.ExternalPolicyLocal {
			r.set(SetLoadBalancerLocal).Add(entry)
		}
		if len(sp.LoadBalancerSourceRanges) > 0 {
			r.set(SetLoadBalancerFW).Add(entry)
			allowFromNode := false
			for _, cidr := range sp.LoadBalancerSourceRanges {
				if !r.cfg.Family.Contains(cidr.Addr()) {
					continue
				}
				for _, p := range ipset.SplitZero(cidr) {
					r.set(SetLoadBalancerSourceNet).Add(ipset.IPPortNet(ip, proto, port, p))
				}
				if r.cfg.NodeIP.IsValid() && cidr.Contains(r.cfg.NodeIP) {
					allowFromNode = true
				}
			}
			if allowFromNode {
				// A request from the node to its own LB IP has the LB IP
				// as source (the address is local): let it through.
				r.set(SetLoadBalancerSourceIP).Add(ipset.IPPortIP(ip, proto, port, ip))
			} else {
				r.outFilter = append(r.outFilter, outFilterEntry{ip: ip, proto: proto, port: port, owner: name})
			}
		}
		if noLocalExternal {
			noLocal.Add(entry)
		}
		add(ip, port, KindLoadBalancer, !r.nodeAddrs[ip], externalDests)
	}

	if sp.NodePort != 0 && len(r.cfg.NodePortIPs) > 0 {
		np := sp.NodePort
		local := sp.ExternalPolicyLocal
		switch proto {
		case model.TCP, model.UDP:
			all, loc := SetNodePortTCP, SetNodePortLocalTCP
			if proto == model.UDP {
				all, loc = SetNodePortUDP, SetNodePortLocalUDP
			}
			r.set(all).Add(ipset.Port(np))
			if local {
				r.set(loc).Add(ipset.Port(np))
			}
		case model.SCTP:
			// No bitmap:port for SCTP in ipset: one entry per address.
			for _, ip := range r.cfg.NodePortIPs {
				r.set(SetNodePortSCTP).Add(ipset.IPPort(ip, proto, np))
				if local {
					r.set(SetNodePortLocalSCTP).Add(ipset.IPPort(ip, proto, np))
				}
			}
		}
		for _, ip := range r.cfg.NodePortIPs {
			if noLocalExternal {
				noLocal.Add(ipset.IPPort(ip, proto, np))
			}
			add(ip, np, KindNodePort, false, externalDests)
		}
	}
	if sp.HealthCheckNodePort != 0 {
		r.set(SetHealthCheckNodePort).Add(ipset.Port(sp.HealthCheckNodePort))
	}
}

func sameSlice(a, b []*model.Endpoint) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// dests turns endpoints into sorted, unique real servers of this family.
// Snapshots keep endpoints sorted, so the sort is usually skipped.
func (r *renderer) dests(eps []*model.Endpoint) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(eps))
	sorted := true
	for _, ep := range eps {
		if r.cfg.Family.Contains(ep.IP) {
			ap := ep.AddrPort()
			if n := len(out); n > 0 && out[n-1].Compare(ap) > 0 {
				sorted = false
			}
			out = append(out, ap)
		}
	}
	if !sorted {
		slices.SortFunc(out, netip.AddrPort.Compare)
	}
	n := 0
	for i, d := range out {
		if i == 0 || d != out[n-1] {
			out[n] = d
			n++
		}
	}
	return out[:n]
}
