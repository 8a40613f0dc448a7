package desired

import (
	"bytes"
	"sort"
	"strconv"
	"strings"

	"github.com/kpr-proxy/kpr/internal/model"
)

// The iptables rules of the IPVS mode. IPVS does the load balancing; these
// rules only decide what gets masqueraded, what is filtered, and what is let
// through. They match ip sets, so their number does not grow with the
// number of Services: the batch changes only with the configuration and the
// few per-LB node-access rules, and most syncs skip iptables-restore.
//
// Rules are written in iptables-save's order (addresses and interfaces,
// then protocol, then matches as given, then the target) so saved rules
// compare equal to rendered ones.

type rules struct{ b bytes.Buffer }

func (w *rules) line(words ...string) {
	for i, s := range words {
		if i > 0 {
			w.b.WriteByte(' ')
		}
		if strings.ContainsAny(s, " \t\"'") || s == "" {
			w.b.WriteString(strconv.Quote(s))
		} else {
			w.b.WriteString(s)
		}
	}
	w.b.WriteByte('\n')
}

func cat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func comment(c string) []string { return []string{"-m", "comment", "--comment", c} }

func set(name, dirs string) []string { return []string{"-m", "set", "--match-set", name, dirs} }

func renderRules(cfg *Config, outFilter []outFilterEntry) []byte {
	f := cfg.Family
	n := func(base string) string { return SetName(f, base) }
	mark := cfg.MasqueradeMark()
	var w rules

	// filter
	w.line("*filter")
	for _, c := range FilterChains {
		w.b.WriteString(":" + c + " - [0:0]\n")
	}
	// Let marked (Service) traffic through even where FORWARD's policy is
	// DROP, and the rest of its connection with it.
	w.line(cat([]string{"-A", ChainForward}, comment("kubernetes forwarding rules"),
		[]string{"-m", "mark", "--mark", mark + "/" + mark, "-j", "ACCEPT"})...)
	w.line(cat([]string{"-A", ChainForward}, comment("kubernetes forwarding conntrack rule"),
		[]string{"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"})...)
	// Health-check node ports are always open, so a load balancer can tell
	// "no local endpoints" (503) from "node down".
	w.line(cat([]string{"-A", ChainNodePort}, comment("health check node ports"),
		set(n(SetHealthCheckNodePort), "dst"), []string{"-j", "ACCEPT"})...)
	// loadBalancerSourceRanges. IPVS rewrites the destination after the
	// filter INPUT hook, so these see the LB IP.
	w.line(cat([]string{"-A", ChainFirewall}, comment("load balancer IPs with source ranges"),
		set(n(SetLoadBalancerFW), "dst,dst"), []string{"-j", ChainSourceRanges})...)
	w.line(cat([]string{"-A", ChainSourceRanges}, comment("allowed by loadBalancerSourceRanges"),
		set(n(SetLoadBalancerSourceNet), "dst,dst,src"), []string{"-j", "RETURN"})...)
	w.line(cat([]string{"-A", ChainSourceRanges}, comment("the node reaching its own load balancer IP"),
		set(n(SetLoadBalancerSourceIP), "dst,dst,src"), []string{"-j", "RETURN"})...)
	w.line(cat([]string{"-A", ChainSourceRanges}, comment("not in loadBalancerSourceRanges"), []string{"-j", "DROP"})...)
	// externalTrafficPolicy Local without a local endpoint: outside
	// clients are dropped; pods (when they can be told apart) and the node
	// itself are not.
	w.line(cat([]string{"-A", ChainFilter}, cfg.LocalDetector.IfNotLocal(),
		comment("externalTrafficPolicy Local without local endpoints"),
		[]string{"-m", "conntrack", "--ctstate", "NEW"}, set(n(SetExternalNoLocal), "dst,dst"),
		[]string{"-m", "addrtype", "!", "--src-type", "LOCAL", "-j", "DROP"})...)
	// Virtual IPs are local addresses, so without this anything listening
	// on 0.0.0.0 (sshd, kubelet) would answer on every Service IP
	// (kubernetes issue 72236): only Service ports get through.
	for _, s := range []struct{ set, dirs string }{
		{SetLoadBalancer, "dst,dst"}, {SetClusterIP, "dst,dst"}, {SetExternalIP, "dst,dst"},
		{SetExternalIPLocal, "dst,dst"}, {SetHealthCheckNodePort, "dst"},
	} {
		w.line(cat([]string{"-A", ChainFilter}, set(n(s.set), s.dirs), []string{"-j", "RETURN"})...)
	}
	w.line(cat([]string{"-A", ChainFilter}, comment("other ports of Service IPs"),
		[]string{"-m", "conntrack", "--ctstate", "NEW"}, set(n(SetIPVSIPs), "dst"), []string{"-j", "REJECT"})...)
	// The node cannot be kept off a source-ranged LB IP by the ranges
	// (its connection has the LB IP as source); match the virtual server
	// after IPVS picked a real server (kubernetes issue 119656).
	sort.Slice(outFilter, func(i, j int) bool {
		if c := outFilter[i].ip.Compare(outFilter[j].ip); c != 0 {
			return c < 0
		}
		if outFilter[i].port != outFilter[j].port {
			return outFilter[i].port < outFilter[j].port
		}
		return outFilter[i].proto < outFilter[j].proto
	})
	for _, e := range outFilter {
		host := e.ip.String() + "/" + strconv.Itoa(e.ip.BitLen())
		w.line(cat([]string{"-A", ChainOutFilter, "-s", host},
			comment(e.owner.String()+" node access outside loadBalancerSourceRanges"),
			[]string{"-m", "ipvs", "--vaddr", host, "--vproto", protoNumber(e.proto), "--vport", strconv.Itoa(int(e.port)), "-j", "DROP"})...)
	}
	w.line("COMMIT")

	// nat
	w.line("*nat")
	for _, c := range NATChains {
		w.b.WriteString(":" + c + " - [0:0]\n")
	}
	lo := "127.0.0.0/8"
	if f == model.IPv6 {
		lo = "::1/128"
	}
	w.line("-A", ChainServices, "-s", lo, "-j", "RETURN")
	w.line(cat([]string{"-A", ChainServices}, comment("load balancer IPs"),
		set(n(SetLoadBalancer), "dst,dst"), []string{"-j", ChainLoadBalancer})...)
	switch {
	case cfg.MasqueradeAll:
		w.line(cat([]string{"-A", ChainServices}, comment("masquerade all traffic to cluster IPs"),
			set(n(SetClusterIP), "dst,dst"), []string{"-j", ChainMarkMasq})...)
	case cfg.LocalDetector.Implemented():
		// Off-cluster traffic to a cluster IP (a static route to the
		// Service range via some node) may be answered from another node,
		// so it must be masqueraded to come back here.
		w.line(cat([]string{"-A", ChainServices}, cfg.LocalDetector.IfNotLocal(),
			comment("cluster IPs from outside the cluster"),
			set(n(SetClusterIP), "dst,dst"), []string{"-j", ChainMarkMasq})...)
	default:
		// Without a way to tell pods apart, at least masquerade the node's
		// own connections that picked a Service IP (on kpr's link) as
		// their source address.
		w.line(cat([]string{"-A", ChainServices}, comment("node traffic with a cluster IP as source"),
			set(n(SetClusterIP), "src,dst"), []string{"-j", ChainMarkMasq})...)
	}
	for _, s := range []string{SetExternalIP, SetExternalIPLocal} {
		if s == SetExternalIP {
			// Endpoints may be on other nodes: masquerade so replies come
			// back through this node (ETP Local keeps the source).
			w.line(cat([]string{"-A", ChainServices}, comment("external IPs"),
				set(n(s), "dst,dst"), []string{"-j", ChainMarkMasq})...)
		}
		// Traffic to external IPs from off the node (not bridged from a
		// pod, not local) and traffic to external IPs that are local
		// addresses is for IPVS: stop here.
		w.line(cat([]string{"-A", ChainServices}, comment("external IPs"), set(n(s), "dst,dst"),
			[]string{"-m", "physdev", "!", "--physdev-is-in", "-m", "addrtype", "!", "--src-type", "LOCAL", "-j", "ACCEPT"})...)
		w.line(cat([]string{"-A", ChainServices}, comment("external IPs"), set(n(s), "dst,dst"),
			[]string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", "ACCEPT"})...)
	}
	w.line("-A", ChainServices, "-m", "addrtype", "--dst-type", "LOCAL", "-j", ChainNodePort)
	w.line(cat([]string{"-A", ChainServices}, set(n(SetClusterIP), "dst,dst"), []string{"-j", "ACCEPT"})...)
	w.line(cat([]string{"-A", ChainServices}, set(n(SetLoadBalancer), "dst,dst"), []string{"-j", "ACCEPT"})...)

	w.line(cat([]string{"-A", ChainLoadBalancer}, set(n(SetLoadBalancerLocal), "dst,dst"), []string{"-j", "RETURN"})...)
	w.line("-A", ChainLoadBalancer, "-j", ChainMarkMasq)

	for _, np := range []struct {
		proto, local, all, dirs string
	}{
		{"tcp", SetNodePortLocalTCP, SetNodePortTCP, "dst"},
		{"udp", SetNodePortLocalUDP, SetNodePortUDP, "dst"},
		{"sctp", SetNodePortLocalSCTP, SetNodePortSCTP, "dst,dst"},
	} {
		// externalTrafficPolicy Local keeps the client's address.
		w.line(cat([]string{"-A", ChainNodePort, "-p", np.proto}, set(n(np.local), np.dirs), []string{"-j", "RETURN"})...)
		w.line(cat([]string{"-A", ChainNodePort, "-p", np.proto}, set(n(np.all), np.dirs), []string{"-j", ChainMarkMasq})...)
	}

	w.line(cat([]string{"-A", ChainPostrouting}, comment("hairpin: a pod reaching itself through a Service"),
		set(n(SetLoopBack), "dst,dst,src"), []string{"-j", "MASQUERADE"})...)
	w.line("-A", ChainPostrouting, "-m", "mark", "!", "--mark", mark+"/"+mark, "-j", "RETURN")
	// Clear the mark so a packet that traverses the stack again is not
	// masqueraded twice.
	w.line("-A", ChainPostrouting, "-j", "MARK", "--xor-mark", mark)
	masq := cat([]string{"-A", ChainPostrouting}, comment("kubernetes service traffic requiring SNAT"), []string{"-j", "MASQUERADE"})
	if cfg.RandomFully {
		masq = append(masq, "--random-fully")
	}
	w.line(masq...)
	w.line("-A", ChainMarkMasq, "-j", "MARK", "--or-mark", mark)
	w.line("COMMIT")
	return w.b.Bytes()
}

func protoNumber(p model.Protocol) string {
	switch p {
	case model.TCP:
		return "6"
	case model.UDP:
		return "17"
	case model.SCTP:
		return "132"
	}
	return string(p)
}
