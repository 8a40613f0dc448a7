package watch

import (
	"net/netip"
	"reflect"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kpr-proxy/kpr/internal/model"
)

func node(name string, opts ...func(*v1.Node)) *v1.Node {
	n := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: "1",
			Labels: map[string]string{v1.LabelTopologyZone: "zone-a", "kubernetes.io/hostname": name}},
		Spec: v1.NodeSpec{PodCIDR: "198.18.1.0/24", PodCIDRs: []string{"198.18.1.0/24", "2001:db8:10:1::/64"}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeHostName, Address: name},
			{Type: v1.NodeExternalIP, Address: "203.0.113.50"},
			{Type: v1.NodeInternalIP, Address: "192.0.2.10"},
			{Type: v1.NodeInternalIP, Address: "192.0.2.11"},
			{Type: v1.NodeExternalIP, Address: "2001:db8:1::10"},
		}},
	}
	for _, o := range opts {
		o(n)
	}
	return n
}

func TestConvertNode(t *testing.T) {
	tests := []struct {
		name  string
		node  *v1.Node
		want  map[model.Family]model.Node
		probs []string
	}{
		{
			name: "dual stack, InternalIP first, ExternalIP only when no InternalIP of the family",
			node: node(testNode),
			want: map[model.Family]model.Node{
				model.IPv4: {Name: testNode, Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}, Zone: "zone-a",
					PodCIDRs: []netip.Prefix{prefix("198.18.1.0/24")}, Addresses: []netip.Addr{addr("192.0.2.10"), addr("192.0.2.11")}},
				model.IPv6: {Name: testNode, Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}, Zone: "zone-a",
					PodCIDRs: []netip.Prefix{prefix("2001:db8:10:1::/64")}, Addresses: []netip.Addr{addr("2001:db8:1::10")}},
			},
		},
		{
			name: "legacy podCIDR, no zone, deleting",
			node: node(testNode, func(n *v1.Node) {
				n.Spec.PodCIDRs = nil
				n.Labels = nil
				n.DeletionTimestamp = &metav1.Time{}
				n.Status.Addresses = n.Status.Addresses[:3]
			}),
			want: map[model.Family]model.Node{
				model.IPv4: {Name: testNode, PodCIDRs: []netip.Prefix{prefix("198.18.1.0/24")}, Addresses: []netip.Addr{addr("192.0.2.10")}, Terminating: true},
				model.IPv6: {Name: testNode, Terminating: true},
			},
		},
		{
			name: "autoscaler taint, bad CIDR and address",
			node: node(testNode, func(n *v1.Node) {
				n.Spec.Taints = []v1.Taint{{Key: "other"}, {Key: toBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
				n.Spec.PodCIDRs = []string{"198.18.1.0/33", "198.18.1.0/24"}
				n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.0.2.x"}, {Type: v1.NodeInternalIP, Address: "192.0.2.10"}}
			}),
			want: map[model.Family]model.Node{
				model.IPv4: {Name: testNode, Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}, Zone: "zone-a",
					PodCIDRs: []netip.Prefix{prefix("198.18.1.0/24")}, Addresses: []netip.Addr{addr("192.0.2.10")}, Terminating: true},
				model.IPv6: {Name: testNode, Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}, Zone: "zone-a", Terminating: true},
			},
			probs: []string{reasonInvalidPodCIDR, reasonInvalidNodeAddress},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, probs := convertNode(tc.node, dual)
			for f, want := range tc.want {
				if !reflect.DeepEqual(*got[famIdx(f)], want) {
					t.Errorf("%v:\n got %+v\nwant %+v", f, *got[famIdx(f)], want)
				}
			}
			var reasons []string
			for _, p := range probs {
				reasons = append(reasons, p.Reason)
			}
			if !reflect.DeepEqual(reasons, tc.probs) {
				t.Errorf("problems %v, want %v", reasons, tc.probs)
			}
			// The transform keeps all of it.
			tn, _ := transformNode(tc.node)
			again, _ := convertNode(tn.(*v1.Node), dual)
			if !reflect.DeepEqual(again, got) {
				t.Errorf("conversion differs after transform")
			}
		})
	}
}
