package watch

import (
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kpr-proxy/kpr/internal/model"
)

// tracker records converted Services, EndpointSlices and node facts and
// folds pending changes into snapshots. It holds no client-go machinery and
// no API objects, so tests drive it by calling its methods directly.
type tracker struct {
	fams     []model.Family
	nodeName string
	rec      Recorder
	// start: trigger times at or before it are ignored, as kube-proxy's
	// trackerStartTime does, so the initial list does not report the age
	// of every object as programming latency.
	start time.Time

	mu sync.Mutex
	// records holds everything known about one Service name: its ports
	// and the slices that name it.
	records map[types.NamespacedName]*svcRecord
	// sliceSvc maps (namespace, slice name) to the Service the slice was
	// filed under, to notice slices moving between Services.
	sliceSvc map[types.NamespacedName]string
	// svcPending maps each Service with a net change to its ports as last
	// published: the "previous" half of kube-proxy's serviceChange.
	svcPending map[types.NamespacedName]svcPorts
	// epDirty: Services whose slices changed since the last snapshot.
	epDirty map[types.NamespacedName]struct{}
	// epPending counts slice events with a change (kube-proxy's
	// endpoint_changes_pending).
	epPending int
	// triggers: earliest last-change-trigger-time per Service and family.
	triggers [2]map[types.NamespacedName]time.Time
	// prev is the last published snapshot per family slot.
	prev [2]*model.Snapshot

	node        nodeFacts
	nodeApplied nodeFacts // as published with the last snapshot
	nodeSeen    bool
	// nodeNotify is closed (and replaced) whenever the node facts change.
	nodeNotify chan struct{}
}

type svcRecord struct {
	ports  svcPorts
	slices []*sliceEntry // sorted by name
	// epNames: this Service's endpoint lists in the last published
	// snapshot, per family slot.
	epNames [2][]model.ServicePortName
}

func newTracker(fams []model.Family, nodeName string, rec Recorder, start time.Time) *tracker {
	return &tracker{
		fams:       fams,
		nodeName:   nodeName,
		rec:        rec,
		start:      start,
		records:    make(map[types.NamespacedName]*svcRecord),
		sliceSvc:   make(map[types.NamespacedName]string),
		svcPending: make(map[types.NamespacedName]svcPorts),
		epDirty:    make(map[types.NamespacedName]struct{}),
		triggers:   [2]map[types.NamespacedName]time.Time{{}, {}},
		node:       unknownNode(nodeName, fams),
		nodeNotify: make(chan struct{}),
	}
}

// setService records a Service's converted ports (zero value: deleted or
// not proxied). It reports whether anything is pending afterwards, i.e.
// whether a sync should be requested.
func (t *tracker) setService(nn types.NamespacedName, conv svcPorts) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	rec := t.records[nn]
	var cur svcPorts
	if rec != nil {
		cur = rec.ports
	}
	applied, pending := t.svcPending[nn]
	if !pending {
		applied = cur
	}
	conv = reusePorts(conv, cur, applied)
	if conv.same(cur) {
		return false // no-op: nothing the proxy reads changed
	}
	if rec == nil {
		rec = &svcRecord{}
		t.records[nn] = rec
	}
	rec.ports = conv
	if conv.same(applied) {
		// Changed back to what is programmed: nothing left to do, as
		// kube-proxy drops a change whose previous equals its current.
		delete(t.svcPending, nn)
	} else if !pending {
		t.svcPending[nn] = applied
	}
	t.gc(nn, rec)
	t.reportPending()
	return t.hasPending()
}

// reusePorts replaces each converted port that equals the current or the
// published one by that existing pointer, which is what makes unchanged
// ports pointer-identical across snapshots.
func reusePorts(conv, cur, applied svcPorts) svcPorts {
	for fi := range conv {
		for i, p := range conv[fi] {
			if q := findEqualPort(cur[fi], p); q != nil {
				conv[fi][i] = q
			} else if q := findEqualPort(applied[fi], p); q != nil {
				conv[fi][i] = q
			}
		}
	}
	return conv
}

func findEqualPort(ports []*model.ServicePort, p *model.ServicePort) *model.ServicePort {
	for _, q := range ports {
		if q.Name == p.Name && servicePortEqual(q, p) {
			return q
		}
	}
	return nil
}

// setSlice records a converted EndpointSlice (nil: deleted or no longer
// ours) under (namespace, slice name). trigger is its
// last-change-trigger-time (zero if none). It reports whether the event
// changed anything.
func (t *tracker) setSlice(ns, sliceName string, e *sliceEntry, trigger time.Time) bool {
	key := types.NamespacedName{Namespace: ns, Name: sliceName}
	t.mu.Lock()
	defer t.mu.Unlock()

	var old *sliceEntry
	var oldNN types.NamespacedName
	if svc, ok := t.sliceSvc[key]; ok {
		oldNN = types.NamespacedName{Namespace: ns, Name: svc}
		if rec := t.records[oldNN]; rec != nil {
			if i, found := findSlice(rec.slices, sliceName); found {
				old = rec.slices[i]
			}
		}
	}
	switch {
	case e == nil && old == nil:
		return false
	case e != nil && old != nil && sameSlice(old, e):
		return false // no-op: nothing the proxy reads changed
	}

	if old != nil {
		rec := t.records[oldNN]
		i, _ := findSlice(rec.slices, sliceName)
		rec.slices = slices.Delete(rec.slices, i, i+1)
		delete(t.sliceSvc, key)
		t.epDirty[oldNN] = struct{}{}
	}
	if e != nil {
		nn := types.NamespacedName{Namespace: ns, Name: e.service}
		rec := t.records[nn]
		if rec == nil {
			rec = &svcRecord{}
			t.records[nn] = rec
		}
		i, _ := findSlice(rec.slices, sliceName)
		rec.slices = slices.Insert(rec.slices, i, e)
		t.sliceSvc[key] = e.service
		t.epDirty[nn] = struct{}{}
		// kube-proxy: remember the trigger time of a changed slice if it
		// is newer than the tracker; we keep the earliest per Service.
		if !trigger.IsZero() && trigger.After(t.start) {
			m := t.triggers[famIdx(e.family)]
			if cur, ok := m[nn]; !ok || trigger.Before(cur) {
				m[nn] = trigger
			}
		}
	} else {
		// kube-proxy drops the trigger times of a Service whose slice is
		// deleted: a deletion carries no meaningful trigger time.
		delete(t.triggers[famIdx(old.family)], oldNN)
	}
	t.epPending++
	t.reportPending()
	return true
}

func findSlice(s []*sliceEntry, name string) (int, bool) {
	return slices.BinarySearchFunc(s, name, func(e *sliceEntry, n string) int { return strings.Compare(e.name, n) })
}

// setNode records new node facts; deleted keeps the last facts and marks the
// node terminating. It reports whether the facts changed.
func (t *tracker) setNode(n nodeFacts, deleted bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if deleted {
		if !t.nodeSeen {
			return false
		}
		n = deletedNode(t.node)
	}
	// Reuse the published facts first, so a change and its undo between
	// two snapshots do not look like a change (and force a full sync).
	n, _ = reuseNode(n, t.nodeApplied)
	n, changed := reuseNode(n, t.node)
	firstSight := !deleted && !t.nodeSeen
	if !deleted {
		t.nodeSeen = true
	}
	if !changed && !firstSight {
		return false
	}
	t.node = n
	close(t.nodeNotify)
	t.nodeNotify = make(chan struct{})
	return changed
}

// nodeState returns the current node facts, whether the Node was seen, and
// a channel closed at the next change.
func (t *tracker) nodeState() (nodeFacts, bool, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.node, t.nodeSeen, t.nodeNotify
}

// gc forgets a Service name once nothing refers to it. Called with mu held.
func (t *tracker) gc(nn types.NamespacedName, rec *svcRecord) {
	if rec == nil || !rec.ports.empty() || len(rec.slices) > 0 ||
		len(rec.epNames[0]) > 0 || len(rec.epNames[1]) > 0 {
		return
	}
	if _, ok := t.svcPending[nn]; ok {
		return
	}
	if _, ok := t.epDirty[nn]; ok {
		return
	}
	delete(t.records, nn)
}

func (t *tracker) hasPending() bool { return len(t.svcPending) > 0 || len(t.epDirty) > 0 }

func (t *tracker) reportPending() { t.rec.ChangesPending(len(t.svcPending), t.epPending) }

// pending returns the pending change counts.
func (t *tracker) pending() (services, endpoints int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.svcPending), t.epPending
}

// servicePortEqual compares two ports field by field.
// TestServicePortEqualCoversAllFields fails when model.ServicePort gains a
// field this function does not know.
func servicePortEqual(a, b *model.ServicePort) bool {
	if a == b {
		return true
	}
	return a.Name == b.Name && a.ClusterIP == b.ClusterIP && a.Port == b.Port &&
		a.Protocol == b.Protocol && a.NodePort == b.NodePort &&
		slices.Equal(a.ExternalIPs, b.ExternalIPs) &&
		slices.Equal(a.LoadBalancerVIPs, b.LoadBalancerVIPs) &&
		slices.Equal(a.LoadBalancerSourceRanges, b.LoadBalancerSourceRanges) &&
		a.ExternalPolicyLocal == b.ExternalPolicyLocal && a.InternalPolicyLocal == b.InternalPolicyLocal &&
		a.HealthCheckNodePort == b.HealthCheckNodePort &&
		a.AffinityTimeoutSeconds == b.AffinityTimeoutSeconds &&
		a.TrafficDistribution == b.TrafficDistribution && a.TopologyAwareHints == b.TopologyAwareHints
}
