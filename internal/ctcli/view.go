package ctcli

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/kpr-proxy/kpr/internal/app"
	"github.com/kpr-proxy/kpr/internal/model"
)

// View is the Service data the CLI annotates conntrack entries with: one
// FamilyView per IP family that has Services. Whatever the source (the
// running proxy or the apiserver), it ends up as the same model.Snapshot the
// proxy itself programs from, so conntrack.NewPlan can judge it unchanged.
type View struct {
	// Source says where the data came from, for messages and JSON
	// ("proxy http://127.0.0.1:10249", "apiserver https://…").
	Source string
	// Node is the node name the data is relative to (local endpoints).
	Node string
	// Families is sorted, IPv4 first.
	Families []FamilyView
}

// FamilyView is one IP family's Services and this node's facts.
type FamilyView struct {
	Snapshot *model.Snapshot
	// Node is never nil; it may carry only the name.
	Node *model.Node
}

// Family returns the view of family f, or nil.
func (v *View) Family(f model.Family) *FamilyView {
	for i := range v.Families {
		if v.Families[i].Snapshot.Family == f {
			return &v.Families[i]
		}
	}
	return nil
}

// ServicePorts returns the ports of Service ns/name in every family, sorted.
func (v *View) ServicePorts(ns, name string) []*model.ServicePort {
	var out []*model.ServicePort
	for _, fv := range v.Families {
		for _, n := range fv.Snapshot.SortedNames() {
			if n.Namespace == ns && n.Name == name {
				out = append(out, fv.Snapshot.Services[n])
			}
		}
	}
	return out
}

// hasPod reports whether any endpoint belongs to the named pod.
func (v *View) hasPod(pod string) bool {
	for _, fv := range v.Families {
		for _, eps := range fv.Snapshot.Endpoints {
			for _, ep := range eps {
				if ep.PodName == pod {
					return true
				}
			}
		}
	}
	return false
}

// ViewFromSnapshotView converts the proxy's /debug/kpr/snapshot JSON into a
// View: what the proxy programmed, with the traffic policies, topology hints
// and node zone that decide which endpoints this node uses.
func ViewFromSnapshotView(sv *app.SnapshotView, source string) (*View, error) {
	byFam := map[model.Family]*model.Snapshot{}
	for i := range sv.Services {
		s := &sv.Services[i]
		fam, err := parseFamily(s.Family)
		if err != nil {
			return nil, fmt.Errorf("service %s/%s: %w", s.Namespace, s.Name, err)
		}
		snap := byFam[fam]
		if snap == nil {
			snap = &model.Snapshot{Family: fam, Services: map[model.ServicePortName]*model.ServicePort{}, Endpoints: map[model.ServicePortName][]*model.Endpoint{}}
			byFam[fam] = snap
		}
		sp, eps, err := servicePortOf(s, fam)
		if err != nil {
			return nil, fmt.Errorf("service %s/%s: %w", s.Namespace, s.Name, err)
		}
		if _, dup := snap.Services[sp.Name]; dup {
			return nil, fmt.Errorf("service port %s listed twice for %s", sp.Name, fam)
		}
		snap.Services[sp.Name] = sp
		if len(eps) > 0 {
			snap.Endpoints[sp.Name] = eps
		}
	}
	v := &View{Source: source, Node: sv.Node}
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		if snap := byFam[fam]; snap != nil {
			v.Families = append(v.Families, FamilyView{Snapshot: snap, Node: &model.Node{Name: sv.Node, Zone: sv.NodeZone}})
		}
	}
	return v, nil
}

func parseFamily(s string) (model.Family, error) {
	switch s {
	case "IPv4":
		return model.IPv4, nil
	case "IPv6":
		return model.IPv6, nil
	}
	return 0, fmt.Errorf("unknown IP family %q", s)
}

func parseProtocol(s string) (model.Protocol, error) {
	switch p := model.Protocol(s); p {
	case model.TCP, model.UDP, model.SCTP:
		return p, nil
	}
	return "", fmt.Errorf("unknown protocol %q", s)
}

func parseAddr(fam model.Family, what, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s: %w", what, err)
	}
	if !fam.Contains(a) {
		return netip.Addr{}, fmt.Errorf("%s %s is not an %s address", what, a, fam)
	}
	return a, nil
}

func servicePortOf(s *app.ServiceView, fam model.Family) (*model.ServicePort, []*model.Endpoint, error) {
	proto, err := parseProtocol(s.Protocol)
	if err != nil {
		return nil, nil, err
	}
	if s.ServicePort == 0 {
		return nil, nil, fmt.Errorf("port %q: port 0", s.Port)
	}
	sp := &model.ServicePort{
		Name:     model.ServicePortName{Namespace: s.Namespace, Name: s.Name, Port: s.Port, Protocol: proto},
		Port:     s.ServicePort,
		Protocol: proto,
		NodePort: s.NodePort,

		InternalPolicyLocal: s.InternalPolicyLocal,
		ExternalPolicyLocal: s.ExternalPolicyLocal,
	}
	if sp.ClusterIP, err = parseAddr(fam, "clusterIP", s.ClusterIP); err != nil {
		return nil, nil, err
	}
	for _, x := range s.ExternalIPs {
		a, err := parseAddr(fam, "externalIP", x)
		if err != nil {
			return nil, nil, err
		}
		sp.ExternalIPs = append(sp.ExternalIPs, a)
	}
	for _, x := range s.LBIPs {
		a, err := parseAddr(fam, "loadBalancerIP", x)
		if err != nil {
			return nil, nil, err
		}
		sp.LoadBalancerVIPs = append(sp.LoadBalancerVIPs, a)
	}
	eps := make([]*model.Endpoint, 0, len(s.Endpoints))
	for _, e := range s.Endpoints {
		a, err := parseAddr(fam, "endpoint", e.IP)
		if err != nil {
			return nil, nil, err
		}
		eps = append(eps, &model.Endpoint{
			IP: a, Port: e.Port, Ready: e.Ready, Serving: e.Serving, Terminating: e.Terminating,
			NodeName: e.Node, PodName: e.Pod, IsLocal: e.Local,
			Zone: e.Zone, ZoneHints: e.ZoneHints, NodeHints: e.NodeHints,
		})
	}
	// Snapshots keep endpoints sorted; the JSON already is, but do not
	// depend on it.
	sort.SliceStable(eps, func(i, j int) bool { return eps[i].AddrPort().Compare(eps[j].AddrPort()) < 0 })
	return sp, eps, nil
}
