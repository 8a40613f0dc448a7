package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/ipvs/desired"
	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	"github.com/kpr-proxy/kpr/internal/model"
)

// CleanupConfig says what Cleanup removes. A nil boundary is skipped.
type CleanupConfig struct {
	// IPTs are the iptables interfaces (families, backends) to clean.
	IPTs  []ipt.Interface
	IPVS  kernel.Handle
	IPSet ipset.Interface
	Links kernel.Links
	// LinkName is desired.DefaultLink when empty.
	LinkName string
	// ExcludeCIDRs: virtual servers in these ranges are left alone.
	ExcludeCIDRs []netip.Prefix
	// Families limits the cleanup to these families (nil: both). With one
	// family, only its addresses leave the shared link, which is deleted
	// once no address of the other family is left on it.
	Families []model.Family
	Logger   *zap.Logger
}

func (c *CleanupConfig) families() []model.Family {
	if len(c.Families) == 0 {
		return []model.Family{model.IPv4, model.IPv6}
	}
	return c.Families
}

// Cleanup removes everything the IPVS mode creates, in the configured
// families (both by default), and nothing else: the jumps from built-in
// chains, the KPR-IPVS- chains and the canary, then kpr's ip sets (only once
// no rule references them), then the virtual servers (all TCP, UDP and SCTP ones outside ExcludeCIDRs, as kube-proxy's
// IPVS mode owns the table; firewall-mark services are never touched), then
// the link. It is what `proxy --cleanup` runs, and it is idempotent.
func Cleanup(ctx context.Context, c CleanupConfig) error {
	log := c.Logger
	if log == nil {
		log = zap.NewNop()
	}
	var errs []error
	for _, iface := range c.IPTs {
		errs = append(errs, cleanupRules(ctx, iface, log)...)
	}
	if c.IPSet != nil {
		errs = append(errs, cleanupSets(ctx, c.IPSet, c.families(), log)...)
	}
	if c.IPVS != nil {
		errs = append(errs, cleanupServices(c.IPVS, c.families(), c.ExcludeCIDRs, log)...)
	}
	if c.Links != nil {
		name := c.LinkName
		if name == "" {
			name = desired.DefaultLink
		}
		errs = append(errs, cleanupLink(c.Links, name, c.families(), log)...)
	}
	return errors.Join(errs...)
}

func cleanupLink(l kernel.Links, name string, fams []model.Family, log *zap.Logger) []error {
	exists, err := l.LinkExists(name)
	if err != nil || !exists {
		if err != nil {
			return []error{fmt.Errorf("looking up link %s: %w", name, err)}
		}
		return nil
	}
	var errs []error
	cleaned := map[model.Family]bool{}
	for _, f := range fams {
		cleaned[f] = true
		addrs, err := l.Addrs(name, f)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing addresses of %s: %w", name, err))
			continue
		}
		for _, a := range addrs {
			if err := l.DelAddr(name, a); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		if cleaned[f] {
			continue
		}
		if addrs, err := l.Addrs(name, f); err != nil || len(addrs) > 0 {
			// The other family still uses the link.
			return errs
		}
	}
	if err := l.DeleteLink(name); err != nil {
		return append(errs, fmt.Errorf("deleting link %s: %w", name, err))
	}
	log.Info("removed the virtual IP link", zap.String("link", name))
	return errs
}

func cleanupRules(ctx context.Context, iface ipt.Interface, log *zap.Logger) []error {
	var errs []error
	for _, j := range desired.Jumps() {
		if err := iface.DeleteRule(ipt.Table(j.Table), j.From, j.RuleArgs()...); err != nil {
			errs = append(errs, fmt.Errorf("deleting jump %s/%s -> %s: %w", j.Table, j.From, j.To, err))
		}
	}
	// The canary is kpr's too (shared with the iptables mode, which
	// recreates it if it runs).
	for _, table := range ipt.DefaultCanaryTables() {
		if err := iface.FlushChain(table, ipt.CanaryChain); err != nil {
			errs = append(errs, fmt.Errorf("flushing %s/%s: %w", table, ipt.CanaryChain, err))
		} else if err := iface.DeleteChain(table, ipt.CanaryChain); err != nil {
			errs = append(errs, fmt.Errorf("deleting %s/%s: %w", table, ipt.CanaryChain, err))
		}
	}
	for _, table := range []ipt.Table{ipt.TableFilter, ipt.TableNAT} {
		n, err := ipt.RemoveChains(ctx, iface, table, desired.IsOurChain)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if n == 0 {
			continue
		}
		log.Info("removed kpr IPVS-mode chains", zap.String("ip_family", iface.Family().String()),
			zap.String("backend", string(iface.Backend())), zap.String("table", string(table)), zap.Int("chains", n))
	}
	return errs
}

func cleanupSets(ctx context.Context, is ipset.Interface, fams []model.Family, log *zap.Logger) []error {
	ours := map[string]bool{}
	for _, f := range fams {
		for _, n := range desired.SetNames(f) {
			ours[n] = true
		}
	}
	data, err := is.Save(ctx)
	if err != nil {
		return []error{fmt.Errorf("listing ip sets: %w", err)}
	}
	sets, err := ipset.Parse(data, func(n string) bool { return ours[n] })
	if err != nil {
		return []error{err}
	}
	names := make([]string, 0, len(sets))
	for n := range sets {
		names = append(names, n)
	}
	sort.Strings(names)
	var errs []error
	// One set per restore: one still referenced (by rules we could not
	// remove) must not keep the others.
	for _, n := range names {
		var b ipset.Batch
		b.Destroy(n)
		if err := is.Restore(ctx, b.Bytes()); err != nil {
			errs = append(errs, fmt.Errorf("destroying ip set %s: %w", n, err))
		}
	}
	if len(names) > 0 {
		log.Info("removed kpr ip sets", zap.Int("sets", len(names)-len(errs)))
	}
	return errs
}

func cleanupServices(h kernel.Handle, fams []model.Family, exclude []netip.Prefix, log *zap.Logger) []error {
	svcs, err := h.GetServices()
	if err != nil {
		return []error{fmt.Errorf("listing virtual servers: %w", err)}
	}
	var errs []error
	n := 0
outer:
	for _, s := range svcs {
		if s.FWMark != 0 || !slices.ContainsFunc(fams, func(f model.Family) bool { return f.Contains(s.Addr) }) {
			continue
		}
		switch s.Protocol {
		case model.TCP, model.UDP, model.SCTP:
		default:
			continue
		}
		for _, c := range exclude {
			if c.Contains(s.Addr) {
				continue outer
			}
		}
		if err := h.DelService(s); err != nil {
			errs = append(errs, fmt.Errorf("deleting virtual server %s: %w", s.Key(), err))
			continue
		}
		n++
	}
	if n > 0 {
		log.Info("removed IPVS virtual servers", zap.Int("virtual_servers", n))
	}
	return errs
}

// Cleanup removes everything the IPVS mode made for this proxier's family
// (see the package function Cleanup; the shared link goes once no address
// of the other family is left on it) and forgets what it synced.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.kmu.Lock()
	defer p.kmu.Unlock()
	err := Cleanup(ctx, CleanupConfig{
		IPTs: []ipt.Interface{p.cfg.IPT}, IPVS: p.cfg.IPVS, IPSet: p.cfg.IPSet, Links: p.cfg.Links,
		LinkName: p.link, ExcludeCIDRs: p.cfg.ExcludeCIDRs, Families: []model.Family{p.cfg.Family}, Logger: p.log,
	})
	p.known, p.lastRules, p.setupOK = nil, nil, false
	p.draining = map[drainKey]drainItem{}
	p.mu.Lock()
	p.applied = nil
	p.mu.Unlock()
	return err
}
