// Package takeover removes what kube-proxy left on a node, once kpr's own
// rules are in place, so that kpr can replace the kube-proxy DaemonSet
// without a gap in Service traffic.
//
// kpr's jumps from the built-in chains are prepended (render.Jumps), so while
// both rule sets are in the kernel, packets meet kpr's rules first and
// kube-proxy's are dead weight. The takeover then removes exactly
// kube-proxy's objects and nothing else:
//
//   - iptables, both families, both backends (kube-proxy may have used the
//     other one): its chains (ChainOwner) and its jumps from built-in chains
//     (matched by target and kube-proxy's comment), one iptables-restore per
//     table so no packet sees them half gone. kubelet's chains
//     (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT, the old
//     KUBE-MARK-DROP) are never touched, and a kube-proxy chain that someone
//     else's rule refers to is kept and reported;
//   - the nftables mode's "kube-proxy" tables;
//   - the ipvs mode's virtual servers (those on kube-ipvs0's addresses and on
//     the NodePorts in its ipsets), the kube-ipvs0 dummy link and its
//     ipsets (exact names only).
//
// Plan is read-only and pure apart from reading the kernel; Apply changes
// it. Guard runs the takeover after the proxy's first successful sync and
// again whenever a still-running kube-proxy puts its rules back.
package takeover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
)

// Config says where to look. A nil boundary is skipped.
type Config struct {
	// Tables are the iptables family/backend pairs to clean (see Discover).
	Tables   []Tables
	NFTables NFTables
	IPVS     IPVS
	Links    Links
	IPSets   IPSets
	// KeepVirtualServer protects IPVS virtual servers the caller programs
	// itself: kpr's ipvs mode uses the same address, protocol and port as
	// kube-proxy did for the same Service port.
	KeepVirtualServer func(VirtualServer) bool
	// DryRun plans and reports, and changes nothing.
	DryRun bool
	// Notes are carried into every Plan (e.g. what Discover could not open).
	Notes  []string
	Logger *zap.Logger
	// Out receives the plan as text on each Run; nil for logs only.
	Out io.Writer
}

// Takeover plans and applies the removal of kube-proxy's objects.
type Takeover struct {
	cfg Config
	log *zap.Logger

	mu sync.Mutex
	// present[i] are the tables Tables[i] had at the last plan; the cheap
	// presence probe only looks into those (probing a table that does
	// not exist would create it in the legacy backend).
	present map[int][]ipt.Table
}

// New returns a Takeover.
func New(cfg Config) (*Takeover, error) {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	for i, t := range cfg.Tables {
		if t == nil {
			return nil, fmt.Errorf("takeover: Tables[%d] is nil", i)
		}
	}
	return &Takeover{cfg: cfg, log: cfg.Logger, present: map[int][]ipt.Table{}}, nil
}

// Discover opens every boundary available on this node: iptables of both
// families in both backends whose tools are installed, nftables, IPVS, links
// and ipsets. What is not available is a note in the Config, not an error:
// kube-proxy cannot have used it either.
func Discover(log *zap.Logger) Config {
	if log == nil {
		log = zap.NewNop()
	}
	cfg := Config{Logger: log, Links: NewLinks()}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		for _, b := range []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT} {
			t, err := NewTables(f, b, log.Named("ipt"))
			if err != nil {
				cfg.Notes = append(cfg.Notes, fmt.Sprintf("%s-%s not checked: %v", ipTool(f), b, err))
				continue
			}
			cfg.Tables = append(cfg.Tables, t)
		}
	}
	if n, err := NewNFTables(); err == nil {
		cfg.NFTables = n
	} else {
		cfg.Notes = append(cfg.Notes, fmt.Sprintf("nftables not checked: %v", err))
	}
	if v, err := NewIPVS(); err == nil {
		cfg.IPVS = v
	} else {
		cfg.Notes = append(cfg.Notes, fmt.Sprintf("IPVS not checked: %v", err))
	}
	if s, err := NewIPSets(); err == nil {
		cfg.IPSets = s
	} else {
		cfg.Notes = append(cfg.Notes, fmt.Sprintf("ipsets not checked: %v", err))
	}
	return cfg
}

// Plan reads the node and returns what of kube-proxy's is there. It changes
// nothing. A part that cannot be read becomes a note in the plan.
func (t *Takeover) Plan(ctx context.Context) *Plan {
	p := &Plan{Notes: slices.Clone(t.cfg.Notes)}
	for i, tb := range t.cfg.Tables {
		ip, tables, err := t.planTables(ctx, tb)
		if err != nil {
			p.Notes = append(p.Notes, fmt.Sprintf("%s-%s: %v", ipTool(tb.Family()), tb.Backend(), err))
			continue
		}
		t.mu.Lock()
		t.present[i] = tables
		t.mu.Unlock()
		if len(ip.Tables) > 0 {
			p.IPTables = append(p.IPTables, ip)
		}
	}
	if t.cfg.NFTables != nil {
		tables, err := t.cfg.NFTables.Tables(ctx)
		if err != nil {
			p.Notes = append(p.Notes, fmt.Sprintf("nftables: %v", err))
		}
		for _, nt := range tables {
			if nt.Name == KubeProxyNFTable && (nt.Family == "ip" || nt.Family == "ip6") {
				p.NFTables = append(p.NFTables, nt)
			}
		}
	}
	t.planIPVS(ctx, p)
	return p
}

func (t *Takeover) planTables(ctx context.Context, tb Tables) (IPTablesPlan, []ipt.Table, error) {
	save, err := tb.SaveAll(ctx)
	if err != nil {
		return IPTablesPlan{}, nil, err
	}
	ip, err := planIPTables(tb.Family(), tb.Backend(), save)
	if err != nil {
		return IPTablesPlan{}, nil, err
	}
	parsed, _ := parseSave(save) // parsed fine just above
	tables := make([]ipt.Table, 0, len(parsed))
	for _, st := range parsed {
		tables = append(tables, ipt.Table(st.name))
	}
	return ip, tables, nil
}

// planIPVS fills in the ipvs mode's objects: the link's addresses and the
// NodePort sets' members are what identify kube-proxy's virtual servers, so
// they are read before anything is removed.
func (t *Takeover) planIPVS(ctx context.Context, p *Plan) {
	var ipvsAddrs []netip.Addr
	if t.cfg.Links != nil {
		kind, addrs, found, err := t.cfg.Links.Link(KubeIPVSDevice)
		switch {
		case err != nil:
			p.Notes = append(p.Notes, fmt.Sprintf("link %s: %v", KubeIPVSDevice, err))
		case found && kind == "dummy":
			p.Links = append(p.Links, KubeIPVSDevice)
			ipvsAddrs = addrs
		case found:
			p.Notes = append(p.Notes, fmt.Sprintf("link %s is a %s, not kube-proxy's dummy link; left alone", KubeIPVSDevice, kind))
		}
	}
	nodePorts := map[string]map[uint16]bool{}
	if t.cfg.IPSets != nil {
		sets, err := t.cfg.IPSets.List(ctx)
		if err != nil {
			p.Notes = append(p.Notes, fmt.Sprintf("ipsets: %v", err))
		}
		for _, s := range sets {
			if !IsKubeProxyIPSet(s) {
				continue
			}
			p.IPSets = append(p.IPSets, s)
			proto := nodePortSetProtocol(s)
			if proto == "" {
				continue
			}
			members, err := t.cfg.IPSets.Members(ctx, s)
			if err != nil {
				p.Notes = append(p.Notes, fmt.Sprintf("ipset %s: %v", s, err))
				continue
			}
			for _, port := range parseNodePortMembers(members) {
				if nodePorts[proto] == nil {
					nodePorts[proto] = map[uint16]bool{}
				}
				nodePorts[proto][port] = true
			}
		}
		slices.Sort(p.IPSets)
	}
	if t.cfg.IPVS != nil && (len(ipvsAddrs) > 0 || len(nodePorts) > 0) {
		servers, err := t.cfg.IPVS.VirtualServers()
		if err != nil {
			p.Notes = append(p.Notes, fmt.Sprintf("IPVS: %v", err))
		}
		p.VirtualServers = planIPVS(servers, ipvsAddrs, nodePorts, t.cfg.KeepVirtualServer)
	}
}

// Result is what one Run did.
type Result struct {
	Plan   *Plan
	DryRun bool
	// Removed counts what was actually removed.
	Chains, Jumps, Others int
	Duration              time.Duration
}

// Run plans, reports the plan (logs, and Out), and unless DryRun removes it.
// The error joins every removal that failed; what could be removed is.
func (t *Takeover) Run(ctx context.Context) (Result, error) {
	start := time.Now()
	p := t.Plan(ctx)
	res := Result{Plan: p, DryRun: t.cfg.DryRun}
	t.report(p)
	if t.cfg.DryRun || p.Empty() {
		res.Duration = time.Since(start)
		return res, nil
	}
	err := t.apply(ctx, p, &res)
	res.Duration = time.Since(start)
	return res, err
}

func (t *Takeover) report(p *Plan) {
	chains, jumps, others := p.Counts()
	verb := "removing"
	if t.cfg.DryRun {
		verb = "dry run: would remove"
	}
	if p.Empty() {
		t.log.Info("takeover: nothing of kube-proxy's on this node", zap.Bool("dry_run", t.cfg.DryRun), zap.Strings("notes", p.Notes))
	} else {
		t.log.Info("takeover: "+verb+" kube-proxy's rules", zap.Bool("dry_run", t.cfg.DryRun),
			zap.Int("chains", chains), zap.Int("jump_rules", jumps), zap.Int("other_objects", others))
	}
	for _, ip := range p.IPTables {
		for _, tp := range ip.Tables {
			fields := []zap.Field{zap.Bool("dry_run", t.cfg.DryRun), zap.String("ip_family", ip.Family.String()),
				zap.String("iptables_backend", string(ip.Backend)), zap.String("table", string(tp.Table))}
			if len(tp.Jumps) > 0 || len(tp.Chains) > 0 {
				jumps := make([]string, len(tp.Jumps))
				for i, j := range tp.Jumps {
					jumps[i] = "-A " + j.Chain + " " + j.Spec
				}
				t.log.Info("takeover: "+verb+" kube-proxy chains", append(fields,
					zap.Strings("chains", tp.chainNames()), zap.Strings("jump_rules", jumps))...)
			}
			for _, k := range tp.Kept {
				t.log.Warn("takeover: keeping a kube-proxy chain that other software uses", append(fields,
					zap.String("chain", k.Chain), zap.String("reason", k.Reason))...)
			}
		}
	}
	for _, nt := range p.NFTables {
		t.log.Info("takeover: "+verb+" nftables table", zap.Bool("dry_run", t.cfg.DryRun), zap.String("nftables_table", nt.String()))
	}
	if len(p.VirtualServers) > 0 {
		vs := make([]string, len(p.VirtualServers))
		for i, v := range p.VirtualServers {
			vs[i] = v.String()
		}
		t.log.Info("takeover: "+verb+" IPVS virtual servers", zap.Bool("dry_run", t.cfg.DryRun), zap.Strings("virtual_servers", vs))
	}
	for _, l := range p.Links {
		t.log.Info("takeover: "+verb+" link", zap.Bool("dry_run", t.cfg.DryRun), zap.String("link", l))
	}
	if len(p.IPSets) > 0 {
		t.log.Info("takeover: "+verb+" ipsets", zap.Bool("dry_run", t.cfg.DryRun), zap.Strings("ipsets", p.IPSets))
	}
	if t.cfg.Out != nil {
		_, _ = p.WriteTo(t.cfg.Out)
	}
}

// maxAttempts bounds re-planning of a table whose restore failed: a
// kube-proxy still running may change its rules between our save and our
// restore (a -D of a rule it just replaced fails), and a fresh plan fixes
// that.
const maxAttempts = 3

// apply removes the plan: iptables first (its rules refer to the ipsets),
// then nftables, IPVS virtual servers, the link, and the ipsets.
func (t *Takeover) apply(ctx context.Context, p *Plan, res *Result) error {
	var errs []error
	for _, ip := range p.IPTables {
		tb := t.tablesFor(ip.Family, ip.Backend)
		if tb == nil {
			continue
		}
		if err := t.applyTables(ctx, tb, ip, res); err != nil {
			errs = append(errs, err)
		}
	}
	if t.cfg.NFTables != nil {
		for _, nt := range p.NFTables {
			if err := t.cfg.NFTables.DeleteTable(ctx, nt); err != nil {
				errs = append(errs, fmt.Errorf("nftables table %s: %w", nt, err))
				continue
			}
			res.Others++
		}
	}
	if t.cfg.IPVS != nil {
		for _, v := range p.VirtualServers {
			if err := t.cfg.IPVS.DeleteVirtualServer(v); err != nil {
				errs = append(errs, fmt.Errorf("IPVS virtual server %s: %w", v, err))
				continue
			}
			res.Others++
		}
	}
	if t.cfg.Links != nil {
		for _, l := range p.Links {
			if err := t.cfg.Links.DeleteLink(l); err != nil {
				errs = append(errs, fmt.Errorf("link %s: %w", l, err))
				continue
			}
			res.Others++
		}
	}
	if t.cfg.IPSets != nil {
		for _, s := range p.IPSets {
			if err := t.cfg.IPSets.Destroy(ctx, s); err != nil {
				errs = append(errs, fmt.Errorf("ipset %s: %w", s, err))
				continue
			}
			res.Others++
		}
	}
	return errors.Join(errs...)
}

func (t *Takeover) tablesFor(f model.Family, b ipt.Backend) Tables {
	for _, tb := range t.cfg.Tables {
		if tb.Family() == f && tb.Backend() == b {
			return tb
		}
	}
	return nil
}

// applyTables removes one family and backend's share, table by table; a
// table whose restore fails is planned afresh and tried again.
func (t *Takeover) applyTables(ctx context.Context, tb Tables, ip IPTablesPlan, res *Result) error {
	where := ipTool(ip.Family) + "-" + string(ip.Backend)
	for attempt := 1; ; attempt++ {
		var failed []error
		for _, tp := range ip.Tables {
			if len(tp.Chains) == 0 && len(tp.Jumps) == 0 {
				continue
			}
			if err := tb.Restore(ctx, tp.restoreBatch()); err != nil {
				failed = append(failed, fmt.Errorf("%s table %s: %w", where, tp.Table, err))
				continue
			}
			res.Chains += len(tp.Chains)
			res.Jumps += len(tp.Jumps)
		}
		if len(failed) == 0 {
			return nil
		}
		if attempt == maxAttempts || ctx.Err() != nil {
			return errors.Join(failed...)
		}
		t.log.Info("takeover: a removal failed; reading the tables again and retrying",
			zap.String("iptables", where), zap.Int("attempt", attempt), zap.Error(errors.Join(failed...)))
		fresh, _, err := t.planTables(ctx, tb)
		if err != nil {
			return errors.Join(append(failed, err)...)
		}
		ip = fresh
	}
}

// probeChains are the chains Present looks for: kube-proxy's canary, which
// its monitor recreates first, and the first chains its full sync creates
// (so that a kube-proxy stopped in the middle of putting its rules back is
// noticed too). Never KUBE-POSTROUTING or KUBE-MARK-MASQ: kubelets before
// v1.28 recreate those every minute, and would look like a kube-proxy.
var probeChains = map[ipt.Table][]string{
	ipt.TableMangle: {CanaryChain},
	ipt.TableNAT:    {CanaryChain, "KUBE-SERVICES"},
	ipt.TableFilter: {CanaryChain, "KUBE-EXTERNAL-SERVICES", "KUBE-SERVICES", "KUBE-FORWARD"},
}

// Present reports, cheaply, whether kube-proxy's rules are on the node
// (again), and where. It looks for the probeChains in the tables each
// backend had at the last Plan (a backend that
// had none is saved in full, which is cheap when it is empty), for the
// nftables mode's tables and for kube-ipvs0. It changes nothing. Errors are
// treated as "not seen".
func (t *Takeover) Present(ctx context.Context) (bool, string) {
	for i, tb := range t.cfg.Tables {
		where := ipTool(tb.Family()) + "-" + string(tb.Backend())
		t.mu.Lock()
		tables, known := t.present[i]
		t.mu.Unlock()
		if !known || len(tables) == 0 {
			save, err := tb.SaveAll(ctx)
			if err != nil {
				continue
			}
			parsed, err := parseSave(save)
			if err != nil {
				continue
			}
			for _, st := range parsed {
				for _, c := range st.chains {
					if slices.Contains(probeChains[ipt.Table(st.name)], c) {
						return true, fmt.Sprintf("%s %s has %s", where, st.name, c)
					}
				}
			}
			continue
		}
		for _, table := range tables {
			for _, c := range probeChains[table] {
				if ok, err := tb.ChainExists(table, c); err == nil && ok {
					return true, fmt.Sprintf("%s %s has %s", where, table, c)
				}
			}
		}
	}
	if t.cfg.NFTables != nil {
		if tables, err := t.cfg.NFTables.Tables(ctx); err == nil {
			for _, nt := range tables {
				if nt.Name == KubeProxyNFTable && (nt.Family == "ip" || nt.Family == "ip6") {
					return true, "nftables table " + nt.String()
				}
			}
		}
	}
	if t.cfg.Links != nil {
		if kind, _, found, err := t.cfg.Links.Link(KubeIPVSDevice); err == nil && found && kind == "dummy" {
			return true, "link " + KubeIPVSDevice
		}
	}
	return false, ""
}

// Summary is a one-line description of a result, for logs.
func (r Result) Summary() string {
	var b strings.Builder
	if r.DryRun {
		c, j, o := r.Plan.Counts()
		fmt.Fprintf(&b, "dry run: would remove %d chains, %d jump rules, %d other objects", c, j, o)
	} else {
		fmt.Fprintf(&b, "removed %d chains, %d jump rules, %d other objects", r.Chains, r.Jumps, r.Others)
	}
	fmt.Fprintf(&b, " in %s", r.Duration.Round(time.Millisecond))
	return b.String()
}
