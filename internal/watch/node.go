package watch

import (
	"fmt"
	"net/netip"
	"reflect"

	v1 "k8s.io/api/core/v1"

	"github.com/kpr-proxy/kpr/internal/model"
)

// toBeDeletedTaint is the cluster autoscaler's taint on a node it is about to
// remove; kube-proxy's healthz reports the node unhealthy when it is set.
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// nodeFacts holds this node's facts per family slot (famIdx).
type nodeFacts [2]*model.Node

// convertNode extracts the per-family facts rendering needs.
//
// Labels holds only the topology labels (topology.kubernetes.io/zone), like
// kube-proxy's NodeTopologyConfig: other label churn must not force a full
// resync. Addresses follow utilnode.GetNodeHostIPs: InternalIP addresses of
// the family, or its ExternalIP addresses when the node has no InternalIP of
// that family.
func convertNode(n *v1.Node, fams []model.Family) (nodeFacts, []problem) {
	var probs []problem
	var cidrs [2][]netip.Prefix
	podCIDRs := n.Spec.PodCIDRs
	if len(podCIDRs) == 0 && n.Spec.PodCIDR != "" {
		podCIDRs = []string{n.Spec.PodCIDR}
	}
	for i, s := range podCIDRs {
		p, ok := parseCIDR(s)
		if !ok {
			probs = append(probs, problem{fmt.Sprintf("spec.podCIDRs[%d]", i), s, reasonInvalidPodCIDR})
			continue
		}
		fi := famIdx(model.FamilyOf(p.Addr()))
		cidrs[fi] = append(cidrs[fi], p)
	}

	var internal, external [2][]netip.Addr
	for i, a := range n.Status.Addresses {
		if a.Type != v1.NodeInternalIP && a.Type != v1.NodeExternalIP {
			continue
		}
		ip, ok := parseIP(a.Address)
		if !ok {
			probs = append(probs, problem{fmt.Sprintf("status.addresses[%d].address", i), a.Address, reasonInvalidNodeAddress})
			continue
		}
		fi := famIdx(model.FamilyOf(ip))
		if a.Type == v1.NodeInternalIP {
			internal[fi] = append(internal[fi], ip)
		} else {
			external[fi] = append(external[fi], ip)
		}
	}

	var labels map[string]string
	zone, hasZone := n.Labels[v1.LabelTopologyZone]
	if hasZone {
		labels = map[string]string{v1.LabelTopologyZone: zone}
	}
	terminating := n.DeletionTimestamp != nil
	for _, t := range n.Spec.Taints {
		if t.Key == toBeDeletedTaint {
			terminating = true
		}
	}

	var out nodeFacts
	for _, f := range fams {
		fi := famIdx(f)
		addrs := internal[fi]
		if len(addrs) == 0 {
			addrs = external[fi]
		}
		out[fi] = &model.Node{
			Name:        n.Name,
			Labels:      labels,
			PodCIDRs:    cidrs[fi],
			Zone:        zone,
			Addresses:   addrs,
			Terminating: terminating,
		}
	}
	return out, probs
}

// unknownNode is what the tracker publishes before the Node has been seen.
func unknownNode(name string, fams []model.Family) nodeFacts {
	var out nodeFacts
	for _, f := range fams {
		out[famIdx(f)] = &model.Node{Name: name}
	}
	return out
}

// deletedNode keeps the last facts (rules still need the node's addresses and
// pod CIDRs) but marks the node terminating, so healthz reports it.
func deletedNode(cur nodeFacts) nodeFacts {
	var out nodeFacts
	for i, n := range cur {
		if n != nil {
			c := *n
			c.Terminating = true
			out[i] = &c
		}
	}
	return out
}

// reuseNode keeps the previous pointer for every family whose facts did not
// change, and reports whether any family changed.
func reuseNode(cur, prev nodeFacts) (nodeFacts, bool) {
	changed := false
	for i := range cur {
		if cur[i] != nil && prev[i] != nil && reflect.DeepEqual(cur[i], prev[i]) {
			cur[i] = prev[i]
		} else if cur[i] != prev[i] {
			changed = true
		}
	}
	return cur, changed
}
