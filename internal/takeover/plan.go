package takeover

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
)

// Plan is everything of kube-proxy's the takeover found on the node, and so
// what it removes (or, in a dry run, would remove).
type Plan struct {
	IPTables       []IPTablesPlan
	NFTables       []NFTable
	VirtualServers []VirtualServer
	Links          []string
	IPSets         []string
	// Notes are parts of the node that could not be looked at (a missing
	// tool, IPVS not in the kernel, a failed read), each with the reason.
	Notes []string
}

// IPTablesPlan is what the takeover removes from one IP family and iptables
// backend.
type IPTablesPlan struct {
	Family  model.Family
	Backend ipt.Backend
	Tables  []TablePlan
}

// TablePlan is one table's share of an IPTablesPlan.
type TablePlan struct {
	Table ipt.Table
	// Jumps are kube-proxy's rules in built-in chains that lead into its
	// chains (deleted by their full spec, one line each).
	Jumps []Rule
	// Chains are kube-proxy's chains to flush and delete, sorted.
	Chains []Chain
	// Kept are kube-proxy chains left in place because a chain that is not
	// kube-proxy's refers to them; deleting them would break that software.
	Kept []Kept
}

// Rule is one rule as iptables-save printed it.
type Rule struct {
	Chain string
	Spec  string
}

// Chain is a chain with its number of rules.
type Chain struct {
	Name  string
	Rules int
}

// Kept is a kube-proxy chain the takeover leaves alone, and why.
type Kept struct {
	Chain  string
	Reason string
}

// NFTable is an nftables table.
type NFTable struct {
	Family string // ip, ip6, inet, ...
	Name   string
}

func (t NFTable) String() string { return t.Family + " " + t.Name }

// VirtualServer is an IPVS virtual server.
type VirtualServer struct {
	Protocol string // TCP, UDP, SCTP
	Address  netip.Addr
	Port     uint16
	FWMark   uint32 // non-zero for firewall-mark services (kube-proxy makes none)
}

func (v VirtualServer) String() string {
	if v.FWMark != 0 {
		return fmt.Sprintf("fwmark %d", v.FWMark)
	}
	return fmt.Sprintf("%s %s", v.Protocol, netip.AddrPortFrom(v.Address, v.Port))
}

// Empty reports whether there is nothing of kube-proxy's to remove.
func (p *Plan) Empty() bool {
	for _, ip := range p.IPTables {
		if !ip.Empty() {
			return false
		}
	}
	return len(p.NFTables) == 0 && len(p.VirtualServers) == 0 && len(p.Links) == 0 && len(p.IPSets) == 0
}

// Empty reports whether the family and backend hold nothing to remove.
func (ip IPTablesPlan) Empty() bool {
	for _, t := range ip.Tables {
		if len(t.Jumps) > 0 || len(t.Chains) > 0 {
			return false
		}
	}
	return true
}

// Counts returns how many iptables chains, jump rules and other objects
// (nftables tables, virtual servers, links, ipsets) the plan removes.
func (p *Plan) Counts() (chains, jumps, others int) {
	for _, ip := range p.IPTables {
		for _, t := range ip.Tables {
			chains += len(t.Chains)
			jumps += len(t.Jumps)
		}
	}
	return chains, jumps, len(p.NFTables) + len(p.VirtualServers) + len(p.Links) + len(p.IPSets)
}

// WriteTo prints the plan for people, one object a line.
func (p *Plan) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	if p.Empty() {
		b.WriteString("kube-proxy takeover: nothing of kube-proxy's found on this node\n")
	} else {
		chains, jumps, others := p.Counts()
		fmt.Fprintf(&b, "kube-proxy takeover: %d iptables chains, %d jump rules, %d other objects of kube-proxy's\n", chains, jumps, others)
	}
	for _, ip := range p.IPTables {
		for _, t := range ip.Tables {
			where := fmt.Sprintf("%s %s %s", ipTool(ip.Family), ip.Backend, t.Table)
			for _, j := range t.Jumps {
				fmt.Fprintf(&b, "  remove rule   %s: -A %s %s\n", where, j.Chain, j.Spec)
			}
			for _, c := range t.Chains {
				fmt.Fprintf(&b, "  remove chain  %s: %s (%d rules)\n", where, c.Name, c.Rules)
			}
			for _, k := range t.Kept {
				fmt.Fprintf(&b, "  keep chain    %s: %s (%s)\n", where, k.Chain, k.Reason)
			}
		}
	}
	for _, t := range p.NFTables {
		fmt.Fprintf(&b, "  remove nftables table %s\n", t)
	}
	for _, v := range p.VirtualServers {
		fmt.Fprintf(&b, "  remove IPVS virtual server %s\n", v)
	}
	for _, l := range p.Links {
		fmt.Fprintf(&b, "  remove link %s\n", l)
	}
	for _, s := range p.IPSets {
		fmt.Fprintf(&b, "  remove ipset %s\n", s)
	}
	for _, n := range p.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

func ipTool(f model.Family) string {
	if f == model.IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// planIPTables works out, from full iptables-save output of one family and
// backend, which of kube-proxy's chains and jumps to remove. It is pure.
//
// A kube-proxy chain goes unless something that stays refers to it: a rule
// in another user chain (kubelet's, a CNI plugin's), or a rule in a built-in
// chain without kube-proxy's comment. Such a chain is kept with all it
// refers to, and the plan says why. kube-proxy's own jumps from built-in
// chains (matched by target and comment) always go.
func planIPTables(f model.Family, b ipt.Backend, save []byte) (IPTablesPlan, error) {
	tables, err := parseSave(save)
	if err != nil {
		return IPTablesPlan{}, err
	}
	out := IPTablesPlan{Family: f, Backend: b}
	for _, st := range tables {
		tp := planTable(st)
		if len(tp.Jumps) > 0 || len(tp.Chains) > 0 || len(tp.Kept) > 0 {
			out.Tables = append(out.Tables, tp)
		}
	}
	return out, nil
}

func planTable(st *savedTable) TablePlan {
	tp := TablePlan{Table: ipt.Table(st.name)}
	candidate := map[string]bool{}
	for _, c := range st.chains {
		if !st.builtin[c] && ChainOwner(c) == OwnerKubeProxy {
			candidate[c] = true
		}
	}
	if len(candidate) == 0 {
		return tp
	}
	kept := map[string]string{}
	keep := func(chain, reason string) {
		if _, ok := kept[chain]; !ok {
			kept[chain] = reason
		}
	}
	rulesIn := map[string]int{}
	for _, r := range st.rules {
		rulesIn[r.chain]++
		if !candidate[r.target] || candidate[r.chain] {
			continue
		}
		switch {
		case st.builtin[r.chain] && IsKubeProxyJumpComment(r.comment):
			tp.Jumps = append(tp.Jumps, Rule{Chain: r.chain, Spec: r.spec})
		case st.builtin[r.chain]:
			keep(r.target, fmt.Sprintf("built-in chain %s jumps to it without kube-proxy's comment: %s", r.chain, r.spec))
		default:
			keep(r.target, fmt.Sprintf("chain %s (%s's) refers to it", r.chain, ChainOwner(r.chain)))
		}
	}
	// Whatever a kept chain refers to must stay too.
	for changed := true; changed; {
		changed = false
		for _, r := range st.rules {
			if _, k := kept[r.chain]; !k || !candidate[r.target] {
				continue
			}
			if _, k := kept[r.target]; !k {
				kept[r.target] = "kept chain " + r.chain + " refers to it"
				changed = true
			}
		}
	}
	for c := range candidate {
		if reason, k := kept[c]; k {
			tp.Kept = append(tp.Kept, Kept{Chain: c, Reason: reason})
			continue
		}
		tp.Chains = append(tp.Chains, Chain{Name: c, Rules: rulesIn[c]})
	}
	sort.Slice(tp.Chains, func(i, j int) bool { return tp.Chains[i].Name < tp.Chains[j].Name })
	sort.Slice(tp.Kept, func(i, j int) bool { return tp.Kept[i].Chain < tp.Kept[j].Chain })
	return tp
}

// restoreBatch is the iptables-restore --noflush input that removes the
// table's share in one commit: no packet sees kube-proxy's rules half gone.
// Declaring a chain flushes it, so after the jumps are deleted nothing
// refers to the chains any more and -X succeeds.
func (tp TablePlan) restoreBatch() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", tp.Table)
	for _, c := range tp.Chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
	}
	for _, j := range tp.Jumps {
		fmt.Fprintf(&b, "-D %s %s\n", j.Chain, j.Spec)
	}
	for _, c := range tp.Chains {
		fmt.Fprintf(&b, "-X %s\n", c.Name)
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

// chainNames lists the chains of a table plan.
func (tp TablePlan) chainNames() []string {
	out := make([]string, len(tp.Chains))
	for i, c := range tp.Chains {
		out[i] = c.Name
	}
	return out
}

// planIPVS picks kube-proxy's IPVS virtual servers: those on an address of
// kube-ipvs0 (ClusterIPs, external and load-balancer IPs) and those whose
// port kube-proxy recorded in its NodePort ipsets (NodePorts on node
// addresses). Servers keep() claims are left alone.
func planIPVS(servers []VirtualServer, ipvsAddrs []netip.Addr, nodePorts map[string]map[uint16]bool, keep func(VirtualServer) bool) []VirtualServer {
	var out []VirtualServer
	for _, v := range servers {
		if v.FWMark != 0 {
			continue
		}
		if !slices.Contains(ipvsAddrs, v.Address.Unmap()) && !nodePorts[v.Protocol][v.Port] {
			continue
		}
		if keep != nil && keep(v) {
			continue
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// parseNodePortMembers reads the ports out of NodePort ipset members:
// "30080" or "tcp:30080" (bitmap:port) or "192.0.2.11,sctp:30080"
// (hash:ip,port); anything else is skipped.
func parseNodePortMembers(members []string) []uint16 {
	var out []uint16
	for _, m := range members {
		s := m
		if i := strings.LastIndexByte(s, ','); i >= 0 {
			s = s[i+1:]
		}
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			s = s[i+1:]
		}
		var port uint16
		if _, err := fmt.Sscanf(s, "%d", &port); err == nil && fmt.Sprint(port) == s {
			out = append(out, port)
		}
	}
	return out
}
