package takeover

import "strings"

// Owner says whose a KUBE-* object is.
type Owner int

const (
	// OwnerOther is anyone but kube-proxy and kubelet (CNI plugins, firewalls,
	// kpr itself). The takeover never touches such objects.
	OwnerOther Owner = iota
	// OwnerKubeProxy objects are removed by the takeover.
	OwnerKubeProxy
	// OwnerKubelet objects are kubelet's and never touched, even where
	// kube-proxy also creates them (KUBE-FIREWALL).
	OwnerKubelet
)

func (o Owner) String() string {
	switch o {
	case OwnerKubeProxy:
		return "kube-proxy"
	case OwnerKubelet:
		return "kubelet"
	}
	return "other"
}

// kubeProxyChains are the fixed iptables chains of kube-proxy v1.37's
// iptables and ipvs modes (pkg/proxy/iptables and pkg/proxy/ipvs).
var kubeProxyChains = map[string]bool{
	// both modes
	"KUBE-SERVICES":       true, // nat (both), filter (iptables)
	"KUBE-POSTROUTING":    true, // nat
	"KUBE-MARK-MASQ":      true, // nat
	"KUBE-FORWARD":        true, // filter
	"KUBE-PROXY-FIREWALL": true, // filter
	"KUBE-PROXY-CANARY":   true, // mangle, nat, filter (the rule-reload monitor)
	// iptables mode
	"KUBE-EXTERNAL-SERVICES": true, // filter
	"KUBE-NODEPORTS":         true, // nat, filter (health check ports)
	// ipvs mode
	"KUBE-NODE-PORT":              true, // nat, filter
	"KUBE-LOAD-BALANCER":          true, // nat
	"KUBE-SOURCE-RANGES-FIREWALL": true, // filter
	"KUBE-IPVS-FILTER":            true, // filter
	"KUBE-IPVS-OUT-FILTER":        true, // filter
}

// kubeProxyChainPrefixes are kube-proxy's per-Service and per-endpoint
// chains (hashed names), including KUBE-XLB- of kube-proxy before v1.24,
// and KUBE-PROXY-*, a prefix kube-proxy reserves for its own chains.
var kubeProxyChainPrefixes = []string{
	"KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-", "KUBE-PROXY-",
}

// kubeletChains are created by kubelet (pkg/kubelet/kubelet_network_linux.go).
// KUBE-FIREWALL is also created by kube-proxy's iptables mode, as a duplicate
// of kubelet's with the same anti-martian rule, so it stays. KUBE-MARK-DROP
// was made only by kubelets before v1.28 (kube-proxy v1.37 never makes it);
// such a kubelet recreates it anyway, so it is left as kubelet's.
var kubeletChains = map[string]bool{
	"KUBE-FIREWALL":       true,
	"KUBE-KUBELET-CANARY": true,
	"KUBE-IPTABLES-HINT":  true,
	"KUBE-MARK-DROP":      true,
}

// ChainOwner classifies an iptables chain name.
func ChainOwner(chain string) Owner {
	if kubeletChains[chain] {
		return OwnerKubelet
	}
	if kubeProxyChains[chain] {
		return OwnerKubeProxy
	}
	for _, p := range kubeProxyChainPrefixes {
		if strings.HasPrefix(chain, p) {
			return OwnerKubeProxy
		}
	}
	return OwnerOther
}

// IsKubeProxyJumpComment reports whether a rule comment is one kube-proxy
// puts on the jumps it adds to built-in chains: all of them, in every
// version and mode, start with "kubernetes " (e.g. "kubernetes service
// portals") or "kube-proxy " ("kube-proxy firewall rules").
func IsKubeProxyJumpComment(comment string) bool {
	return strings.HasPrefix(comment, "kubernetes ") || strings.HasPrefix(comment, "kube-proxy ")
}

// CanaryChain is kube-proxy's rule-reload monitor chain. kube-proxy recreates
// it (and, soon after, all its rules, with its jumps put first again) within
// one sync period of it disappearing, so the Guard watches for it.
const CanaryChain = "KUBE-PROXY-CANARY"

// KubeIPVSDevice is the dummy link kube-proxy's ipvs mode binds every
// Service IP to.
const KubeIPVSDevice = "kube-ipvs0"

// kubeProxyIPSetBases are the ipsets of kube-proxy's ipvs mode
// (pkg/proxy/ipvs/ipset.go). IPv6 sets use the prefix "KUBE-6-" instead of
// "KUBE-", truncated to 31 characters.
var kubeProxyIPSetBases = []string{
	"KUBE-LOOP-BACK", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL",
	"KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER-FW",
	"KUBE-LOAD-BALANCER-SOURCE-IP", "KUBE-LOAD-BALANCER-SOURCE-CIDR",
	"KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-LOCAL-UDP",
	"KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
	"KUBE-HEALTH-CHECK-NODE-PORT", "KUBE-IPVS-IPS",
}

// IsKubeProxyIPSet reports whether an ipset is one kube-proxy's ipvs mode
// makes. Only exact names count: other software (kube-router's network
// policies, for one) also names ipsets KUBE-*.
func IsKubeProxyIPSet(name string) bool {
	for _, b := range kubeProxyIPSetBases {
		if name == b || name == ipv6SetName(b) {
			return true
		}
	}
	return false
}

func ipv6SetName(base string) string {
	n := "KUBE-6-" + strings.TrimPrefix(base, "KUBE-")
	if len(n) > 31 {
		n = n[:31]
	}
	return n
}

// nodePortSets maps kube-proxy's NodePort ipsets to the protocol of the
// ports they hold; their members tell which IPVS virtual servers on node
// addresses are kube-proxy's NodePorts.
var nodePortSets = map[string]string{
	"KUBE-NODE-PORT-TCP": "TCP", "KUBE-NODE-PORT-LOCAL-TCP": "TCP",
	"KUBE-NODE-PORT-UDP": "UDP", "KUBE-NODE-PORT-LOCAL-UDP": "UDP",
	"KUBE-NODE-PORT-SCTP-HASH": "SCTP", "KUBE-NODE-PORT-LOCAL-SCTP-HASH": "SCTP",
}

// nodePortSetProtocol returns the protocol of a NodePort set (IPv4 or IPv6
// name), or "".
func nodePortSetProtocol(name string) string {
	for base, proto := range nodePortSets {
		if name == base || name == ipv6SetName(base) {
			return proto
		}
	}
	return ""
}

// KubeProxyNFTable is the nftables table of kube-proxy's nftables mode (in
// families ip and ip6).
const KubeProxyNFTable = "kube-proxy"
