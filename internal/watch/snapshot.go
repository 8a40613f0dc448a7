package watch

import (
	"maps"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kpr-proxy/kpr/internal/model"
)

// State is what one Snapshot call returns.
type State struct {
	// Families has one entry per Config.Families, in that order.
	Families []FamilyState
	// ServiceChanges is the number of Services with a net change and
	// EndpointChanges the number of EndpointSlice events with a change
	// that this snapshot consumed (the values the *_changes_pending gauges
	// had just before it).
	ServiceChanges  int
	EndpointChanges int
}

// FamilyState is the snapshot of one IP family and what changed since the
// previous one. Everything reachable from it is immutable.
type FamilyState struct {
	Snapshot *model.Snapshot
	// Node holds this node's facts in the family. Before the Node object
	// has been seen it carries only the name.
	Node *model.Node
	// NodeChanged: the node facts differ from those published with the
	// previous snapshot (always true for the first one). Downstream runs a
	// full sync when it is set.
	NodeChanged bool
	// Changed holds exactly the names n for which
	// !model.SameServicePort(previous, Snapshot, n): Service ports and
	// endpoint lists that were added, changed or removed. For the first
	// snapshot that is every name present.
	Changed map[model.ServicePortName]struct{}
	// TriggerTimes holds, per Service with an EndpointSlice change in this
	// family, the earliest endpoints.kubernetes.io/last-change-trigger-time
	// seen since the previous snapshot (only times after the watcher
	// started, as kube-proxy does), for
	// kubeproxy_network_programming_duration_seconds. Nil when empty.
	TriggerTimes map[types.NamespacedName]time.Time
}

// Family returns the state of family f, or nil if the watcher does not run f.
func (s *State) Family(f model.Family) *FamilyState {
	for i := range s.Families {
		if s.Families[i].Snapshot.Family == f {
			return &s.Families[i]
		}
	}
	return nil
}

// snapshot folds all pending changes into new per-family snapshots.
func (t *tracker) snapshot() State {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := State{
		Families:        make([]FamilyState, 0, len(t.fams)),
		ServiceChanges:  len(t.svcPending),
		EndpointChanges: t.epPending,
	}
	for _, f := range t.fams {
		st.Families = append(st.Families, t.buildFamily(f))
	}
	// Commit: everything pending is now published.
	dirty := make([]types.NamespacedName, 0, len(t.svcPending)+len(t.epDirty))
	for nn := range t.svcPending {
		dirty = append(dirty, nn)
	}
	for nn := range t.epDirty {
		dirty = append(dirty, nn)
	}
	clear(t.svcPending)
	clear(t.epDirty)
	for _, nn := range dirty {
		t.gc(nn, t.records[nn])
	}
	t.epPending = 0
	t.nodeApplied = t.node
	t.reportPending()
	return st
}

type portUpdate struct {
	name model.ServicePortName
	sp   *model.ServicePort // nil: remove
}

type endpointsUpdate struct {
	name model.ServicePortName
	eps  []*model.Endpoint // nil: remove
}

// buildFamily builds the next snapshot of one family. Called with mu held.
func (t *tracker) buildFamily(f model.Family) FamilyState {
	fi := famIdx(f)
	prev := t.prev[fi]
	var prevSvcs map[model.ServicePortName]*model.ServicePort
	var prevEps map[model.ServicePortName][]*model.Endpoint
	if prev != nil {
		prevSvcs, prevEps = prev.Services, prev.Endpoints
	}
	changed := make(map[model.ServicePortName]struct{})

	var su []portUpdate
	for nn, applied := range t.svcPending {
		var cur []*model.ServicePort
		if rec := t.records[nn]; rec != nil {
			cur = rec.ports[fi]
		}
		for _, old := range applied[fi] {
			if !slices.ContainsFunc(cur, func(p *model.ServicePort) bool { return p.Name == old.Name }) {
				su = append(su, portUpdate{old.Name, nil})
				changed[old.Name] = struct{}{}
			}
		}
		for _, p := range cur {
			if prevSvcs[p.Name] != p {
				su = append(su, portUpdate{p.Name, p})
				changed[p.Name] = struct{}{}
			}
		}
	}

	var eu []endpointsUpdate
	for nn := range t.epDirty {
		rec := t.records[nn] // kept alive by gc while dirty
		lists := mergeEndpoints(nn, rec.slices, f)
		var names []model.ServicePortName
		if len(lists) > 0 {
			names = make([]model.ServicePortName, 0, len(lists))
		}
		for _, l := range lists {
			names = append(names, l.name)
			if sameEndpoints(prevEps[l.name], l.eps) {
				continue // keep the published array
			}
			eu = append(eu, l)
			changed[l.name] = struct{}{}
		}
		for _, old := range rec.epNames[fi] {
			if !slices.Contains(names, old) {
				eu = append(eu, endpointsUpdate{old, nil})
				changed[old] = struct{}{}
			}
		}
		rec.epNames[fi] = names
	}

	fs := FamilyState{
		Node:        t.node[fi],
		NodeChanged: t.node[fi] != t.nodeApplied[fi],
		Changed:     changed,
	}
	if len(t.triggers[fi]) > 0 {
		fs.TriggerTimes = t.triggers[fi]
		t.triggers[fi] = make(map[types.NamespacedName]time.Time)
	}
	if prev != nil && len(su) == 0 && len(eu) == 0 {
		fs.Snapshot = prev // nothing changed in this family: same immutable value
		return fs
	}

	// A map that does not change is shared with the previous snapshot
	// (both are immutable); one that does is copied, which is the only
	// O(number of Services) work of an incremental snapshot.
	cur := &model.Snapshot{Family: f, Services: prevSvcs, Endpoints: prevEps}
	if len(su) > 0 || cur.Services == nil {
		cur.Services = cloneWithRoom(prevSvcs, len(su))
	}
	if len(eu) > 0 || cur.Endpoints == nil {
		cur.Endpoints = cloneWithRoom(prevEps, len(eu))
	}
	for _, u := range su {
		if u.sp == nil {
			delete(cur.Services, u.name)
		} else {
			cur.Services[u.name] = u.sp
		}
	}
	for _, u := range eu {
		if u.eps == nil {
			delete(cur.Endpoints, u.name)
		} else {
			cur.Endpoints[u.name] = u.eps
		}
	}
	t.prev[fi] = cur
	fs.Snapshot = cur
	return fs
}

// cloneWithRoom copies m; an empty m becomes a map sized for n insertions.
func cloneWithRoom[K comparable, V any](m map[K]V, n int) map[K]V {
	if len(m) == 0 {
		return make(map[K]V, n)
	}
	return maps.Clone(m)
}

// sameEndpoints: the published list can be kept (same array, or equal
// contents).
func sameEndpoints(prev, cur []*model.Endpoint) bool {
	if len(prev) != len(cur) || len(prev) == 0 {
		return false
	}
	return &prev[0] == &cur[0] || endpointsEqual(prev, cur)
}

// mergeEndpoints merges the endpoints of all slices of one Service in one
// family per (port name, protocol), as kube-proxy's EndpointSliceCache does:
// ports are matched to Service ports by name and protocol, and an IP:port in
// several slices is kept once. Slices are taken in name order so the result
// is deterministic. A port fed by a single slice publishes that slice's
// (already sorted) array without copying.
func mergeEndpoints(nn types.NamespacedName, ss []*sliceEntry, f model.Family) []endpointsUpdate {
	type group struct {
		name  string
		proto model.Protocol
		lists [][]*model.Endpoint
	}
	var buf [4]group
	groups := buf[:0]
	for _, s := range ss {
		if s.family != f {
			continue
		}
		for i := range s.ports {
			p := &s.ports[i]
			j := slices.IndexFunc(groups, func(g group) bool { return g.name == p.name && g.proto == p.proto })
			if j < 0 {
				groups = append(groups, group{name: p.name, proto: p.proto})
				j = len(groups) - 1
			}
			groups[j].lists = append(groups[j].lists, p.eps)
		}
	}
	if len(groups) == 0 {
		return nil
	}
	out := make([]endpointsUpdate, 0, len(groups))
	for _, g := range groups {
		var eps []*model.Endpoint
		if len(g.lists) == 1 {
			eps = g.lists[0]
		} else {
			n := 0
			for _, l := range g.lists {
				n += len(l)
			}
			eps = make([]*model.Endpoint, 0, n)
			for _, l := range g.lists {
				eps = append(eps, l...)
			}
			eps = sortDedupe(eps)
		}
		if len(eps) == 0 {
			continue
		}
		out = append(out, endpointsUpdate{
			name: model.ServicePortName{Namespace: nn.Namespace, Name: nn.Name, Port: g.name, Protocol: g.proto},
			eps:  eps,
		})
	}
	return out
}
