package render

import (
	"fmt"
	"net/netip"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Config is everything besides the Snapshot that shapes the rules. It is
// fixed for the life of a proxier except for what the node's facts change
// (NodeCIDR local detection, node IPs), which the caller folds in; any
// change of Config forces a full sync.
type Config struct {
	Family model.Family

	// MasqueradeBit is --iptables-masquerade-bit (kube-proxy default 14).
	MasqueradeBit int
	// MasqueradeAll is --masquerade-all: SNAT all traffic to cluster IPs.
	MasqueradeAll bool
	// RandomFully adds --random-fully to MASQUERADE (when iptables has it).
	RandomFully bool

	// LocalDetector tells pod traffic from other traffic.
	LocalDetector LocalDetector

	// NodePortAddresses: all local addresses, or only these IPs (already
	// resolved from --nodeport-addresses against the node's interfaces).
	NodePortAddresses NodePortAddresses
	// LocalhostNodePorts is --iptables-localhost-nodeports (IPv4 only).
	LocalhostNodePorts bool

	// NodeIP is the node's primary IP in this family (invalid if unknown);
	// used to let the node itself through loadBalancerSourceRanges.
	NodeIP netip.Addr

	// ConntrackTCPBeLiberal: the node runs with nf_conntrack_tcp_be_liberal,
	// so the INVALID-drop rule is not needed (kube-proxy skips it too).
	ConntrackTCPBeLiberal bool

	// LargeClusterEndpoints: above this many endpoints in total, per-endpoint
	// rule comments are left out to shrink the batch, as kube-proxy does
	// (its threshold is 1000). 0 means 1000.
	LargeClusterEndpoints int

	// MaxBatchServices > 0 splits a sync that rewrites more Service ports
	// than this into several iptables-restore inputs. The nf_tables backend
	// of iptables-restore is quadratic in the size of one input (a
	// kube-proxy-shaped batch of 10k Services takes many minutes), while
	// batches of a few hundred Services take a fraction of a second each
	// however many rules the table already holds. The legacy backend
	// replaces the whole table per input, so it wants one batch (0).
	MaxBatchServices int

	// DispatchLeafMax: at most this many destination IPs share one dispatch
	// chain before it is split by destination prefix. 0 means the default
	// (16); tests set it small to exercise the tree.
	DispatchLeafMax int
}

// MasqueradeMark is the mark value string, "0x4000" for bit 14 (the form
// iptables-save prints, so saved rules compare equal).
func (c *Config) MasqueradeMark() string {
	return fmt.Sprintf("%#x", uint32(1)<<uint(c.MasqueradeBit))
}

func (c *Config) largeClusterThreshold() int {
	if c.LargeClusterEndpoints > 0 {
		return c.LargeClusterEndpoints
	}
	return 1000
}

func (c *Config) leafMax() int {
	if c.DispatchLeafMax > 0 {
		return c.DispatchLeafMax
	}
	return 16
}

// NodePortAddresses says where NodePorts listen.
type NodePortAddresses struct {
	// All: every local address (kube-proxy's default when the flag is unset).
	All bool
	// IPs: the local addresses that matched --nodeport-addresses.
	IPs []netip.Addr
}

// LocalDetector renders the iptables matches for "traffic from a pod on this
// node" and its negation, as kube-proxy's proxyutil.LocalTrafficDetector.
type LocalDetector struct {
	Mode      string
	ifLocal   []string
	ifNoLocal []string
}

// Implemented reports whether local traffic can be told apart at all.
func (d LocalDetector) Implemented() bool { return len(d.ifLocal) > 0 }

// IfLocal is the match for local pod traffic.
func (d LocalDetector) IfLocal() []string { return d.ifLocal }

// IfNotLocal is the match for everything else.
func (d LocalDetector) IfNotLocal() []string { return d.ifNoLocal }

// NoLocalDetector is used when no mode applies; ClusterIP traffic from
// outside the cluster is then not masqueraded (unless --masquerade-all).
func NoLocalDetector() LocalDetector { return LocalDetector{Mode: "None"} }

// DetectLocalByCIDR treats traffic from the given CIDR (the cluster CIDR or
// this node's pod CIDR, in this family) as local.
func DetectLocalByCIDR(mode string, cidr netip.Prefix) LocalDetector {
	c := cidr.Masked().String()
	return LocalDetector{Mode: mode, ifLocal: []string{"-s", c}, ifNoLocal: []string{"!", "-s", c}}
}

// DetectLocalByBridge treats traffic entering through the pod bridge as local.
func DetectLocalByBridge(bridge string) LocalDetector {
	return LocalDetector{Mode: "BridgeInterface", ifLocal: []string{"-i", bridge}, ifNoLocal: []string{"!", "-i", bridge}}
}

// DetectLocalByInterfacePrefix treats traffic entering through interfaces
// named prefix* (the host ends of pod veths) as local.
func DetectLocalByInterfacePrefix(prefix string) LocalDetector {
	p := prefix + "+"
	return LocalDetector{Mode: "InterfaceNamePrefix", ifLocal: []string{"-i", p}, ifNoLocal: []string{"!", "-i", p}}
}

// Jump is a rule in a built-in chain that sends packets into one of ours.
// These cannot be part of the --noflush restore (that would mean owning the
// whole built-in chain), so the apply layer ensures them one by one.
type Jump struct {
	Table string
	From  string // built-in chain
	To    string // our chain
	Args  []string
}

// RuleArgs is the full rule spec: extra matches, the comment, the jump.
func (j Jump) RuleArgs() []string {
	out := append([]string{}, j.Args...)
	return append(out, "-m", "comment", "--comment", "kpr: "+j.To, "-j", j.To)
}

// Jumps lists the jump rules for a family, in the order they must be
// ensured (each is prepended, so that kpr's rules run before others').
func Jumps(family model.Family, localhostNodePorts bool) []Jump {
	newConn := []string{"-m", "conntrack", "--ctstate", "NEW"}
	j := []Jump{
		{"filter", "INPUT", ChainExternalServices, newConn},
		{"filter", "FORWARD", ChainExternalServices, newConn},
		{"filter", "INPUT", ChainNodePorts, nil},
		{"filter", "FORWARD", ChainServices, newConn},
		{"filter", "OUTPUT", ChainServices, newConn},
		{"filter", "FORWARD", ChainForward, nil},
		{"filter", "INPUT", ChainFirewall, newConn},
		{"filter", "OUTPUT", ChainFirewall, newConn},
		{"filter", "FORWARD", ChainFirewall, newConn},
		{"nat", "OUTPUT", ChainServices, nil},
		{"nat", "PREROUTING", ChainServices, nil},
		{"nat", "POSTROUTING", ChainPostrouting, nil},
	}
	if family == model.IPv4 && localhostNodePorts {
		j = append(j, Jump{"filter", "INPUT", ChainLocalnet, nil}, Jump{"filter", "OUTPUT", ChainLocalnet, nil})
	}
	return j
}

// FixedChains lists the fixed chains of each table (declared on every full
// sync, removed by --cleanup).
func FixedChains() map[string][]string {
	return map[string][]string{
		"filter": {ChainServices, ChainExternalServices, ChainForward, ChainNodePorts, ChainFirewall, ChainLocalnet},
		"nat":    {ChainServices, ChainNodePorts, ChainPostrouting, ChainMarkMasq},
	}
}
