package takeover

import (
	"slices"
	"testing"
)

func TestChainOwner(t *testing.T) {
	for chain, want := range map[string]Owner{
		"KUBE-SERVICES": OwnerKubeProxy, "KUBE-SVC-ERIFXISQEP7F7OF4": OwnerKubeProxy, "KUBE-SEP-X": OwnerKubeProxy,
		"KUBE-XLB-OLD": OwnerKubeProxy, "KUBE-PROXY-CANARY": OwnerKubeProxy, "KUBE-PROXY-FIREWALL": OwnerKubeProxy,
		"KUBE-NODE-PORT": OwnerKubeProxy, "KUBE-IPVS-OUT-FILTER": OwnerKubeProxy, "KUBE-MARK-MASQ": OwnerKubeProxy,
		"KUBE-FIREWALL": OwnerKubelet, "KUBE-KUBELET-CANARY": OwnerKubelet, "KUBE-IPTABLES-HINT": OwnerKubelet,
		"KUBE-MARK-DROP": OwnerKubelet,
		"KPR-SERVICES":   OwnerOther, "KUBE-ROUTER-INPUT": OwnerOther, "CNI-HOSTPORT-DNAT": OwnerOther, "INPUT": OwnerOther,
	} {
		if got := ChainOwner(chain); got != want {
			t.Errorf("ChainOwner(%s) = %s, want %s", chain, got, want)
		}
	}
}

func TestIsKubeProxyIPSet(t *testing.T) {
	for name, want := range map[string]bool{
		"KUBE-CLUSTER-IP": true, "KUBE-6-CLUSTER-IP": true, "KUBE-6-LOAD-BALANCER-SOURCE-CID": true,
		"KUBE-NODE-PORT-LOCAL-SCTP-HASH": true, "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS": true,
		"KUBE-SRC-ABCDEF": false, "KPR-CLUSTER-IP": false, "KUBE-6-LOAD-BALANCER-SOURCE-CIDR": false,
	} {
		if got := IsKubeProxyIPSet(name); got != want {
			t.Errorf("IsKubeProxyIPSet(%s) = %v, want %v", name, got, want)
		}
	}
}

func TestParseNodePortMembers(t *testing.T) {
	got := parseNodePortMembers([]string{"30080", "tcp:30081", "192.0.2.11,sctp:30082", "2001:db8:1::11,sctp:30083", "nonsense", "99999", "", "1-2"})
	if want := []uint16{30080, 30081, 30082, 30083}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
