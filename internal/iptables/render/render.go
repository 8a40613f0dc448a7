// Package render turns a Snapshot into one iptables-restore batch. It is a
// pure function of its Input: no clock, no kernel, no globals, so golden
// tests and fuzzing exercise exactly what the proxy sends to the kernel.
//
// Layout (chains are kpr's own, never KUBE-*):
//
//	nat    PREROUTING/OUTPUT → KPR-SERVICES → [KPR-DST-* dispatch tree] →
//	       KPR-SVC-* (Cluster policy) / KPR-SVL-* (Local policy) /
//	       KPR-EXT-* (external destinations) / KPR-FW-* (LB source ranges)
//	       → DNAT to an endpoint on another node, or → KPR-SEP-* (hairpin
//	       masquerade mark + DNAT) for an endpoint that may be on this
//	       node, and for every endpoint of a Service with session affinity;
//	       KPR-SERVICES' last rule → KPR-NODEPORTS; POSTROUTING →
//	       KPR-POSTROUTING (MASQUERADE marked packets); KPR-MARK-MASQ.
//	filter KPR-SERVICES (REJECT/DROP cluster IPs without endpoints),
//	       KPR-EXTERNAL-SERVICES (same for external destinations),
//	       KPR-NODEPORTS (health check node ports), KPR-FORWARD,
//	       KPR-FIREWALL (LB source ranges), KPR-LOCALNET (CVE-2020-8558).
//
// A partial sync (Input.Prev set) writes only what changed: the chains of
// Service ports whose definition or endpoints changed, the shared chains
// whose content changed, and the deletion of chains nothing owns any more.
package render

import (
	"sort"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Input is everything a sync renders from.
type Input struct {
	Snapshot *model.Snapshot
	Node     *model.Node
	Config   *Config
	// Prev is the State of the last batch that was applied successfully.
	// Nil means a full sync; so does a Prev rendered from a different
	// Config or Node (compared by identity: the caller makes new values
	// when they change).
	Prev *State
	// ForceFull makes a full sync even when Prev would allow a partial one
	// (the periodic resync). Prev's chains are still deletion candidates.
	ForceFull bool
	// Existing lists the chains in the kernel per table ("nat", "filter").
	// On a full sync, generated kpr chains in it that the new state does
	// not own are deleted (leftovers of a crash or an older version). It
	// may be nil when Prev describes the kernel (a periodic or forced full
	// sync after successful ones): Prev's chains are candidates too.
	Existing map[string][]string
}

// Stats describe one rendered batch.
type Stats struct {
	Lines, Bytes int
	// ServicesRendered is how many Service ports had their chains
	// (re)written; ServicesTotal how many exist.
	ServicesRendered, ServicesTotal int
	// ChainsWritten counts chains declared (so flushed) and rewritten;
	// ChainsDeleted chains removed. Both zero: the batch changes nothing.
	ChainsWritten, ChainsDeleted int
	// NATRules and FilterRules are the rules kpr has in each table once
	// the batch is applied (the kubeproxy_sync_proxy_rules_iptables_total
	// gauge); *Written are the rules in this batch.
	NATRules, FilterRules               int
	NATRulesWritten, FilterRulesWritten int
	// Services with traffic policy Local and no local endpoints.
	NoLocalInternal, NoLocalExternal int
}

// Result is a rendered sync: one iptables-restore input, or several to be
// applied in order (Batches).
type Result struct {
	// Batches are the iptables-restore inputs, in order. There is one
	// unless Config.MaxBatchServices split a large sync.
	Batches [][]byte
	// Data is the single batch when there is only one (nil otherwise).
	Data  []byte
	Full  bool
	Stats Stats
	// State is to be passed as Input.Prev once Data has been applied.
	State *State
}

// State is what a later partial sync needs to know about this one.
type State struct {
	snapshot *model.Snapshot
	node     *model.Node
	config   *Config
	large    bool
	services map[model.ServicePortName]*svcRecord
	// shared holds the content hash of every shared chain ("table/chain"),
	// including the dispatch tree's chains.
	shared map[string]uint64
	// dispatch is the set of KPR-DST chains in the tree.
	dispatch map[string]struct{}
}

// Render builds the batch.
func Render(in Input) *Result {
	snap, cfg := in.Snapshot, in.Config
	node := in.Node
	if node == nil {
		node = &model.Node{}
	}
	totalEndpoints := 0
	for name := range snap.Services {
		totalEndpoints += len(snap.Endpoints[name])
	}
	large := totalEndpoints > cfg.largeClusterThreshold()

	prev := in.Prev
	full := in.ForceFull || prev == nil || prev.config != cfg || prev.node != in.Node || prev.large != large
	// A full sync forced by a change of config, node or comment mode still
	// knows which chains the previous state owned: they are deletion
	// candidates alongside whatever the kernel listing shows.
	forcedFrom := prev
	if full {
		prev = nil
	}

	// Shared chains are declared and written before the Service ports'
	// own, so a batch reads top-down like the packet path.
	var natShared, natSharedRules, natChains, natRules, natDeletes lineBuffer
	var filterChains, filterRules lineBuffer
	st := &State{
		snapshot: snap, node: in.Node, config: cfg, large: large,
		services: make(map[model.ServicePortName]*svcRecord, len(snap.Services)),
		shared:   make(map[string]uint64),
		dispatch: make(map[string]struct{}),
	}
	stats := Stats{ServicesTotal: len(snap.Services)}

	// Service ports, in a stable order so that shared chains render the
	// same bytes when nothing changed.
	names := snap.SortedNames()
	if prev == nil {
		// Growing a 30 MB buffer by doubling costs more than rendering
		// it; size for the typical rule lengths up front.
		natRules.b = make([]byte, 0, totalEndpoints*420+len(names)*320)
		natChains.b = make([]byte, 0, (totalEndpoints+len(names)*2)*34)
	}
	sr := &serviceRenderer{cfg: cfg, node: node, large: large, chains: &natChains, rules: &natRules}
	// Where each rendered Service port's chains end in natChains/natRules,
	// for splitting the batch (see Config.MaxBatchServices).
	var cuts []batchCut
	for _, name := range names {
		if prev != nil && model.SameServicePort(prev.snapshot, snap, name) {
			st.services[name] = prev.services[name]
			continue
		}
		st.services[name] = sr.render(name, snap.Services[name], snap.Endpoints[name])
		stats.ServicesRendered++
		if cfg.MaxBatchServices > 0 {
			cuts = append(cuts, batchCut{chains: len(natChains.b), rules: len(natRules.b)})
		}
	}

	// Generated chains nothing owns any more.
	deleteChain := func(chain string) {
		natChains.chain(chain)
		natDeletes.line("-X", chain)
		stats.ChainsDeleted++
	}
	var dispatchRules []dstRule
	for _, name := range names {
		dispatchRules = append(dispatchRules, st.services[name].dispatch...)
	}

	// Shared chains.
	root := &dispatchChain{name: ChainServices}
	inner := buildDispatch(root, dispatchRules, cfg.leafMax())
	for _, c := range inner {
		st.dispatch[c.name] = struct{}{}
	}
	writeNodePortJumps(&root.buf, cfg)

	var natNodePorts, filterServices, filterExternal, filterNodePorts, filterFirewall lineBuffer
	for _, name := range names {
		rec := st.services[name]
		natNodePorts.b = append(natNodePorts.b, rec.natNodePorts...)
		filterServices.b = append(filterServices.b, rec.filterServices...)
		filterExternal.b = append(filterExternal.b, rec.filterExternal...)
		filterNodePorts.b = append(filterNodePorts.b, rec.filterNodePorts...)
		filterFirewall.b = append(filterFirewall.b, rec.filterFirewall...)
		stats.NATRules += rec.natRules
		if rec.noLocalInternal {
			stats.NoLocalInternal++
		}
		if rec.noLocalExternal {
			stats.NoLocalExternal++
		}
	}
	var postrouting, markMasq, forward, localnet lineBuffer
	writeStaticRules(cfg, &postrouting, &markMasq, &forward, &localnet)

	emit := func(table string, chains, rules *lineBuffer, chain string, content *lineBuffer) {
		key := table + "/" + chain
		sum := content.sum()
		st.shared[key] = sum
		n := countLines(content.b)
		if table == "nat" {
			stats.NATRules += n
		} else {
			stats.FilterRules += n
		}
		if prev != nil {
			if old, ok := prev.shared[key]; ok && old == sum {
				return
			}
		}
		chains.chain(chain)
		rules.b = append(rules.b, content.b...)
		rules.lines += n
	}
	emit("filter", &filterChains, &filterRules, ChainServices, &filterServices)
	emit("filter", &filterChains, &filterRules, ChainExternalServices, &filterExternal)
	emit("filter", &filterChains, &filterRules, ChainForward, &forward)
	emit("filter", &filterChains, &filterRules, ChainNodePorts, &filterNodePorts)
	emit("filter", &filterChains, &filterRules, ChainFirewall, &filterFirewall)
	emit("filter", &filterChains, &filterRules, ChainLocalnet, &localnet)

	emit("nat", &natShared, &natSharedRules, ChainServices, &root.buf)
	for _, c := range inner {
		emit("nat", &natShared, &natSharedRules, c.name, &c.buf)
	}
	emit("nat", &natShared, &natSharedRules, ChainNodePorts, &natNodePorts)
	emit("nat", &natShared, &natSharedRules, ChainPostrouting, &postrouting)
	emit("nat", &natShared, &natSharedRules, ChainMarkMasq, &markMasq)

	// Deletions. A full sync deletes every generated chain in the kernel
	// that the new state does not own; a partial one deletes what changed
	// or removed Service ports, and the dispatch tree, no longer own.
	if prev == nil {
		owned := make(map[string]struct{}, len(st.dispatch)+len(names)*4)
		for c := range st.dispatch {
			owned[c] = struct{}{}
		}
		for _, rec := range st.services {
			for _, c := range rec.chains {
				owned[c] = struct{}{}
			}
		}
		candidates := map[string]struct{}{}
		for _, c := range in.Existing["nat"] {
			candidates[c] = struct{}{}
		}
		if forcedFrom != nil {
			for c := range forcedFrom.dispatch {
				candidates[c] = struct{}{}
			}
			for _, rec := range forcedFrom.services {
				for _, c := range rec.chains {
					candidates[c] = struct{}{}
				}
			}
		}
		var stale []string
		for c := range candidates {
			if _, ok := owned[c]; !ok && isGenerated(c) {
				stale = append(stale, c)
			}
		}
		sort.Strings(stale)
		for _, c := range stale {
			deleteChain(c)
		}
	} else {
		var stale []string
		for name, old := range prev.services {
			cur := st.services[name]
			if cur == old {
				continue
			}
			var keep map[string]struct{}
			if cur != nil {
				keep = make(map[string]struct{}, len(cur.chains))
				for _, c := range cur.chains {
					keep[c] = struct{}{}
				}
			}
			for _, c := range old.chains {
				if _, ok := keep[c]; !ok {
					stale = append(stale, c)
				}
			}
		}
		for c := range prev.dispatch {
			if _, ok := st.dispatch[c]; !ok {
				stale = append(stale, c)
			}
		}
		sort.Strings(stale)
		for _, c := range stale {
			deleteChain(c)
		}
	}

	parts := []*lineBuffer{&filterChains, &filterRules, &natShared, &natChains, &natSharedRules, &natRules, &natDeletes}
	for _, p := range parts {
		stats.Lines += p.lines
	}
	stats.Lines += 4

	var batches [][]byte
	firstChains, firstRules := 0, 0
	if cfg.MaxBatchServices > 0 && stats.ServicesRendered > cfg.MaxBatchServices {
		// The Service ports' own chains go first, MaxBatchServices per
		// batch; nothing refers to new chains until the last batch writes
		// the shared chains (dispatch tree, NodePorts, filter) and deletes
		// what is no longer owned. Each batch replaces whole chains in one
		// commit, so no Service is ever visible half-programmed.
		var markMasq lineBuffer
		writeMarkMasq(cfg, &markMasq)
		for i := cfg.MaxBatchServices - 1; i < len(cuts); i += cfg.MaxBatchServices {
			end := cuts[i]
			var b lineBuffer
			b.b = make([]byte, 0, end.chains-firstChains+end.rules-firstRules+64)
			b.line("*nat")
			if len(batches) == 0 {
				// SEP chains jump to KPR-MARK-MASQ, which must exist.
				b.chain(ChainMarkMasq)
			}
			b.b = append(b.b, natChains.b[firstChains:end.chains]...)
			if len(batches) == 0 {
				b.b = append(b.b, markMasq.b...)
				stats.Lines += 2
			}
			b.b = append(b.b, natRules.b[firstRules:end.rules]...)
			b.line("COMMIT")
			stats.Lines += 2
			batches = append(batches, b.b)
			firstChains, firstRules = end.chains, end.rules
		}
	}

	// Assemble (the last batch): every chain line of a table before its
	// rules, deletions last, so a deleted chain is no longer referenced
	// when it goes.
	var out lineBuffer
	size := 64
	for _, p := range parts {
		size += len(p.b)
	}
	out.b = make([]byte, 0, size-firstChains-firstRules)
	out.line("*filter")
	out.b = append(out.b, filterChains.b...)
	out.b = append(out.b, filterRules.b...)
	out.line("COMMIT")
	out.line("*nat")
	out.b = append(out.b, natShared.b...)
	out.b = append(out.b, natChains.b[firstChains:]...)
	out.b = append(out.b, natSharedRules.b...)
	out.b = append(out.b, natRules.b[firstRules:]...)
	out.b = append(out.b, natDeletes.b...)
	out.line("COMMIT")
	batches = append(batches, out.b)
	for _, b := range batches {
		stats.Bytes += len(b)
	}

	stats.ChainsWritten = filterChains.lines + natShared.lines + natChains.lines - stats.ChainsDeleted
	stats.NATRulesWritten = natSharedRules.lines + natRules.lines
	stats.FilterRulesWritten = filterRules.lines
	res := &Result{Batches: batches, Full: prev == nil, Stats: stats, State: st}
	if len(batches) == 1 {
		res.Data = batches[0]
	}
	return res
}

type batchCut struct{ chains, rules int }

// writeNodePortJumps ends KPR-SERVICES with the jump to KPR-NODEPORTS.
func writeNodePortJumps(w *lineBuffer, cfg *Config) {
	const c = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
	if cfg.NodePortAddresses.All {
		w.words("-A", ChainServices, "-m", "comment", "--comment", c, "-m", "addrtype", "--dst-type", "LOCAL")
		// Localhost NodePorts never work on IPv6, and on IPv4 only with
		// route_localnet, which the operator may have declined.
		if cfg.Family == model.IPv6 {
			w.words("!", "-d", "::1/128")
		} else if !cfg.LocalhostNodePorts {
			w.words("!", "-d", "127.0.0.0/8")
		}
		w.line("-j", ChainNodePorts)
		return
	}
	for _, ip := range cfg.NodePortAddresses.IPs {
		if ip.IsLoopback() && (cfg.Family == model.IPv6 || !cfg.LocalhostNodePorts) {
			continue
		}
		w.line("-A", ChainServices, "-m", "comment", "--comment", c, "-d", ip.String(), "-j", ChainNodePorts)
	}
}

// writeStaticRules renders the chains that do not depend on Services.
func writeStaticRules(cfg *Config, postrouting, markMasq, forward, localnet *lineBuffer) {
	mark := cfg.MasqueradeMark()
	postrouting.line("-A", ChainPostrouting, "-m", "mark", "!", "--mark", mark+"/"+mark, "-j", "RETURN")
	// Clear the mark so a packet that traverses the stack again (e.g.
	// through a bridge) is not masqueraded twice.
	postrouting.line("-A", ChainPostrouting, "-j", "MARK", "--xor-mark", mark)
	postrouting.words("-A", ChainPostrouting, "-m", "comment", "--comment", "kubernetes service traffic requiring SNAT", "-j", "MASQUERADE")
	if cfg.RandomFully {
		// Fully random source ports avoid the SNAT port races that drop
		// packets under load (kubernetes issue 76699).
		postrouting.words("--random-fully")
	}
	postrouting.end()

	writeMarkMasq(cfg, markMasq)

	if !cfg.ConntrackTCPBeLiberal {
		// A packet conntrack calls INVALID (e.g. out of window) would
		// otherwise skip DNAT reversal and reach the pod or client with
		// the wrong address, which resets the connection (issue 74839).
		forward.line("-A", ChainForward, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	}
	// Let marked (Service) traffic through even where FORWARD's policy is
	// DROP, and the rest of its connection with it.
	forward.line("-A", ChainForward, "-m", "comment", "--comment", "kubernetes forwarding rules",
		"-m", "mark", "--mark", mark+"/"+mark, "-j", "ACCEPT")
	forward.line("-A", ChainForward, "-m", "comment", "--comment", "kubernetes forwarding conntrack rule",
		"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")

	if cfg.Family == model.IPv4 && cfg.LocalhostNodePorts {
		// route_localnet (needed for localhost NodePorts) would let other
		// hosts reach 127.0.0.1 services (CVE-2020-8558): drop martian
		// packets to 127/8 that do not come from 127/8 and were not
		// DNATed by us.
		localnet.line("-A", ChainLocalnet, "-m", "comment", "--comment", "block incoming localnet connections",
			"-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8",
			"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
	}
}

func writeMarkMasq(cfg *Config, w *lineBuffer) {
	w.line("-A", ChainMarkMasq, "-j", "MARK", "--or-mark", cfg.MasqueradeMark())
}

func countLines(b []byte) int {
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}
