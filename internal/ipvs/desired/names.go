package desired

import (
	"strings"

	"github.com/kpr-proxy/kpr/internal/iptables/render"
	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/model"
)

// DefaultLink is the link the virtual IPs are bound to (kube-proxy's
// kube-ipvs0).
const DefaultLink = "kpr-ipvs0"

// Chain names. They all start with ChainPrefix, so they never collide with
// the iptables mode's KPR- chains: a node switching modes (or running
// `proxy --cleanup` for one mode) never sees one mode's rules in the other's
// chains.
const (
	ChainPrefix = render.Prefix + "IPVS-"

	// nat
	ChainServices     = ChainPrefix + "SERVICES"      // PREROUTING, OUTPUT
	ChainPostrouting  = ChainPrefix + "POSTROUTING"   // POSTROUTING
	ChainNodePort     = ChainPrefix + "NODE-PORT"     // nat: masquerade NodePorts; filter: health checks
	ChainLoadBalancer = ChainPrefix + "LOAD-BALANCER" // masquerade LB traffic unless ETP Local
	ChainMarkMasq     = ChainPrefix + "MARK-MASQ"

	// filter
	ChainForward      = ChainPrefix + "FORWARD"       // FORWARD
	ChainFirewall     = ChainPrefix + "FIREWALL"      // INPUT, FORWARD: loadBalancerSourceRanges
	ChainSourceRanges = ChainPrefix + "SOURCE-RANGES" // the allowed ranges, then DROP
	ChainFilter       = ChainPrefix + "FILTER"        // INPUT: only Service ports on virtual IPs
	ChainOutFilter    = ChainPrefix + "OUT-FILTER"    // OUTPUT: node access to source-ranged LBs
)

// NATChains and FilterChains are the chains each table holds, in the order
// they are declared.
var (
	NATChains    = []string{ChainServices, ChainPostrouting, ChainNodePort, ChainLoadBalancer, ChainMarkMasq}
	FilterChains = []string{ChainForward, ChainNodePort, ChainFirewall, ChainSourceRanges, ChainFilter, ChainOutFilter}
)

// Jumps are the rules in built-in chains that lead into ours; the proxier
// ensures them one by one (a --noflush restore cannot own one rule of a
// built-in chain). Their order is the order they must be ensured in (each
// is prepended).
func Jumps() []render.Jump {
	return []render.Jump{
		{Table: "nat", From: "OUTPUT", To: ChainServices},
		{Table: "nat", From: "PREROUTING", To: ChainServices},
		{Table: "nat", From: "POSTROUTING", To: ChainPostrouting},
		{Table: "filter", From: "FORWARD", To: ChainForward},
		{Table: "filter", From: "INPUT", To: ChainNodePort},
		{Table: "filter", From: "INPUT", To: ChainFirewall},
		{Table: "filter", From: "FORWARD", To: ChainFirewall},
		{Table: "filter", From: "INPUT", To: ChainFilter},
		{Table: "filter", From: "OUTPUT", To: ChainOutFilter},
	}
}

// IsOurChain reports whether an iptables chain belongs to the IPVS mode.
func IsOurChain(c string) bool { return strings.HasPrefix(c, ChainPrefix) }

// Set base names; SetName adds the prefix (and "6-" for IPv6).
const (
	SetLoopBack              = "LOOP-BACK"                 // hash:ip,port,ip: local endpoints, for hairpin SNAT
	SetClusterIP             = "CLUSTER-IP"                // hash:ip,port
	SetExternalIP            = "EXTERNAL-IP"               // hash:ip,port: externalIPs, ETP Cluster
	SetExternalIPLocal       = "EXTERNAL-IP-LOCAL"         // hash:ip,port: externalIPs, ETP Local
	SetLoadBalancer          = "LOAD-BALANCER"             // hash:ip,port
	SetLoadBalancerFW        = "LOAD-BALANCER-FW"          // hash:ip,port: LBs with source ranges
	SetLoadBalancerLocal     = "LOAD-BALANCER-LOCAL"       // hash:ip,port: LBs with ETP Local
	SetLoadBalancerSourceIP  = "LOAD-BALANCER-SOURCE-IP"   // hash:ip,port,ip: node access to its LB IP
	SetLoadBalancerSourceNet = "LOAD-BALANCER-SOURCE-CIDR" // hash:ip,port,net: allowed ranges
	SetNodePortTCP           = "NODE-PORT-TCP"             // bitmap:port
	SetNodePortLocalTCP      = "NODE-PORT-LOCAL-TCP"       // bitmap:port
	SetNodePortUDP           = "NODE-PORT-UDP"             // bitmap:port
	SetNodePortLocalUDP      = "NODE-PORT-LOCAL-UDP"       // bitmap:port
	SetNodePortSCTP          = "NODE-PORT-SCTP-HASH"       // hash:ip,port
	SetNodePortLocalSCTP     = "NODE-PORT-LOCAL-SCTP-HASH" // hash:ip,port
	SetHealthCheckNodePort   = "HEALTH-CHECK-NODE-PORT"    // bitmap:port
	SetIPVSIPs               = "IPVS-IPS"                  // hash:ip: every address on the link
	// SetExternalNoLocal is kpr's own: external destinations of ETP Local
	// Services that have endpoints but none on this node. Traffic from
	// outside the node to them is dropped, as in the iptables mode (whose
	// selection rules the IPVS mode shares); pods and the node itself
	// still reach the Service's other endpoints.
	SetExternalNoLocal = "EXTERNAL-NO-LOCAL" // hash:ip,port
)

var setTypes = []struct {
	base string
	typ  ipset.Type
}{
	{SetLoopBack, ipset.HashIPPortIP},
	{SetClusterIP, ipset.HashIPPort},
	{SetExternalIP, ipset.HashIPPort},
	{SetExternalIPLocal, ipset.HashIPPort},
	{SetLoadBalancer, ipset.HashIPPort},
	{SetLoadBalancerFW, ipset.HashIPPort},
	{SetLoadBalancerLocal, ipset.HashIPPort},
	{SetLoadBalancerSourceIP, ipset.HashIPPortIP},
	{SetLoadBalancerSourceNet, ipset.HashIPPortNet},
	{SetNodePortTCP, ipset.BitmapPort},
	{SetNodePortLocalTCP, ipset.BitmapPort},
	{SetNodePortUDP, ipset.BitmapPort},
	{SetNodePortLocalUDP, ipset.BitmapPort},
	{SetNodePortSCTP, ipset.HashIPPort},
	{SetNodePortLocalSCTP, ipset.HashIPPort},
	{SetHealthCheckNodePort, ipset.BitmapPort},
	{SetIPVSIPs, ipset.HashIP},
	{SetExternalNoLocal, ipset.HashIPPort},
}

// SetName is the kernel name of a set in a family: "KPR-CLUSTER-IP",
// "KPR-6-CLUSTER-IP". The longest is 31 characters, ipset's limit.
func SetName(f model.Family, base string) string {
	if f == model.IPv6 {
		return render.Prefix + "6-" + base
	}
	return render.Prefix + base
}

// SetNames lists every set name of a family.
func SetNames(f model.Family) []string {
	out := make([]string, 0, len(setTypes))
	for _, s := range setTypes {
		out = append(out, SetName(f, s.base))
	}
	return out
}

// EmptySets returns every set of a family, empty.
func EmptySets(f model.Family) map[string]*ipset.Set {
	out := make(map[string]*ipset.Set, len(setTypes))
	for _, s := range setTypes {
		n := SetName(f, s.base)
		out[n] = ipset.NewSet(n, s.typ, f)
	}
	return out
}
