package ipvs

// The reconcile steps of one sync, in the order Sync runs them. Each applies
// only the difference between the desired state and p.known (what the
// kernel holds), keeps p.known in step with what succeeded, and reports
// failures through the syncState without stopping at the first one.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"syscall"

	"go.uber.org/zap"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/ipvs/desired"
	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	"github.com/kpr-proxy/kpr/internal/metrics"
	"github.com/kpr-proxy/kpr/internal/model"
)

// syncSets applies the ip set differences in one `ipset restore`.
func (p *Proxier) syncSets(ctx context.Context, want *desired.State, st *syncState) {
	names := make([]string, 0, len(want.Sets))
	for n := range want.Sets {
		names = append(names, n)
	}
	sort.Strings(names)
	var b ipset.Batch
	var dels [][2]string
	added, deleted, created := 0, 0, 0
	skip := map[string]bool{}
	for _, n := range names {
		ws, ks := want.Sets[n], p.known.sets[n]
		if ks == nil {
			b.Create(ws)
			created++
			ks = ipset.NewSet(n, ws.Type, ws.Family)
		} else if !ks.Compatible(ws) {
			skip[n] = true
			err := fmt.Errorf("ip set %s exists with another definition than kpr's (%s); remove it (proxy --cleanup) so it can be recreated", n, ws.Definition())
			p.log.Error("ip set", zap.String("ipset", n), zap.Error(err))
			st.sfail(err)
			continue
		}
		adds := make([]string, 0)
		for e := range ws.Entries {
			if !ks.Has(e) {
				adds = append(adds, e)
			}
		}
		sort.Strings(adds)
		for _, e := range adds {
			b.Add(n, e)
		}
		added += len(adds)
		var rm []string
		for e := range ks.Entries {
			if !ws.Has(e) {
				rm = append(rm, e)
			}
		}
		sort.Strings(rm)
		for _, e := range rm {
			dels = append(dels, [2]string{n, e})
		}
	}
	// Deletions last, so an entry moving between sets (a policy change)
	// is never in neither.
	for _, d := range dels {
		b.Del(d[0], d[1])
	}
	deleted = len(dels)
	if b.Lines() == 0 {
		return
	}
	if err := p.cfg.IPSet.Restore(ctx, b.Bytes()); err != nil {
		fields := []zap.Field{zap.Error(err), zap.Int("lines", b.Lines())}
		var re *ipset.RestoreError
		if errors.As(err, &re) && re.Line > 0 {
			fields = append(fields, zap.Strings("commands", ipset.ContextLines(b.Bytes(), re.Line, 2)))
		}
		p.log.Error("ipset restore failed", fields...)
		st.kfail(err)
		return
	}
	for _, n := range names {
		if !skip[n] {
			p.known.sets[n] = want.Sets[n]
		}
	}
	st.ch.SetsCreated += created
	st.ch.SetEntriesAdded += added
	st.ch.SetEntriesDeleted += deleted
}

// syncRules applies the iptables batch when it changed (or on full syncs).
func (p *Proxier) syncRules(ctx context.Context, want *desired.State, full bool, st *syncState) {
	if !full && p.lastRules != nil && string(p.lastRules) == string(want.Rules) {
		return
	}
	lines := strings.Count(string(want.Rules), "\n")
	p.cfg.Metrics.ObserveRestore(p.cfg.Family, metrics.SyncAny, len(want.Rules), lines)
	if err := p.cfg.IPT.Restore(ctx, want.Rules); err != nil {
		p.cfg.Metrics.IPTablesRestoreFailed(p.cfg.Family)
		fields := []zap.Field{zap.Error(err)}
		var re *ipt.RestoreError
		if errors.As(err, &re) && re.Line > 0 {
			fields = append(fields, zap.Int("line", re.Line), zap.Strings("rules", ipt.ContextLines(want.Rules, re.Line, 3)))
		}
		p.log.Error("iptables-restore failed", fields...)
		p.lastRules = nil
		st.kfail(fmt.Errorf("iptables-restore: %w", err))
		return
	}
	p.lastRules = want.Rules
	st.ch.RulesRestored = true
}

// syncServices creates and updates the wanted virtual servers and their
// real servers. One failing virtual server never stops the others.
func (p *Proxier) syncServices(want *desired.State, st *syncState) {
	for _, key := range want.SortedKeys() {
		vs := want.Services[key]
		cur := p.known.services[key]
		if cur == nil {
			if err := p.cfg.IPVS.NewService(&vs.Service); err != nil {
				p.vsError("adding virtual server", vs, err, st)
				continue
			}
			cur = &knownVS{svc: vs.Service, dests: map[netip.AddrPort]int{}, excluded: p.excluded(key.Addr)}
			p.known.services[key] = cur
			st.ch.ServicesAdded++
		} else if !cur.svc.SameSettings(&vs.Service) {
			if err := p.cfg.IPVS.UpdateService(&vs.Service); err != nil {
				p.vsError("updating virtual server", vs, err, st)
				continue
			}
			cur.svc = vs.Service
			st.ch.ServicesUpdated++
		}
		p.syncDests(vs, cur, st)
	}
}

func (p *Proxier) vsError(what string, vs *desired.VirtualServer, err error, st *syncState) {
	p.log.Error(what, zap.String("service", vs.Owner.String()), zap.String("virtual_server", vs.Key().String()),
		zap.String("kind", string(vs.Kind)), zap.Error(err))
	st.kfail(fmt.Errorf("%s %s for %s: %w", what, vs.Key(), vs.Owner, err))
}

// syncDests reconciles one virtual server's real servers: wanted ones exist
// with weight 1 (which also repairs weights left at 0 by a restart or by
// draining), unwanted ones drain.
func (p *Proxier) syncDests(vs *desired.VirtualServer, cur *knownVS, st *syncState) {
	key := vs.Key()
	if len(cur.dests) == len(vs.Dests) && len(p.draining) == 0 {
		// The steady state: same real servers, all at weight 1.
		same := true
		for _, d := range vs.Dests {
			if w, ok := cur.dests[d]; !ok || w != 1 {
				same = false
				break
			}
		}
		if same {
			return
		}
	}
	wanted := make(map[netip.AddrPort]bool, len(vs.Dests))
	for _, d := range vs.Dests {
		wanted[d] = true
		dk := drainKey{key, d}
		w, ok := cur.dests[d]
		switch {
		case !ok:
			if err := p.cfg.IPVS.NewDestination(&cur.svc, dest(d, 1)); err != nil {
				p.vsError("adding real server "+d.String()+" to", vs, err, st)
				continue
			}
			cur.dests[d] = 1
			st.ch.DestsAdded++
		case w != 1:
			if err := p.cfg.IPVS.UpdateDestination(&cur.svc, dest(d, 1)); err != nil {
				p.vsError("restoring weight of real server "+d.String()+" in", vs, err, st)
				continue
			}
			cur.dests[d] = 1
			st.ch.DestsUpdated++
		}
		if _, ok := p.draining[dk]; ok {
			p.log.Info("real server is wanted again, no longer draining",
				zap.String("service", vs.Owner.String()), zap.String("virtual_server", key.String()), zap.String("real_server", d.String()))
			delete(p.draining, dk)
		}
	}
	for d, w := range cur.dests {
		if wanted[d] {
			continue
		}
		p.retire(vs.Owner.String(), cur, d, w, st)
	}
}

// retire starts removing an unwanted real server: TCP ones drain (weight 0,
// queued), UDP and SCTP ones are deleted at once.
func (p *Proxier) retire(owner string, cur *knownVS, d netip.AddrPort, w int, st *syncState) {
	key := cur.svc.Key()
	if key.Protocol != model.TCP {
		if err := p.cfg.IPVS.DelDestination(&cur.svc, dest(d, 0)); err != nil && !errors.Is(err, syscall.ENOENT) {
			p.log.Error("deleting real server", zap.String("service", owner), zap.String("virtual_server", key.String()),
				zap.String("real_server", d.String()), zap.Error(err))
			st.kfail(fmt.Errorf("deleting real server %s of %s: %w", d, key, err))
			return
		}
		delete(cur.dests, d)
		delete(p.draining, drainKey{key, d})
		st.ch.DestsDeleted++
		return
	}
	if w != 0 {
		if err := p.cfg.IPVS.UpdateDestination(&cur.svc, dest(d, 0)); err != nil {
			p.log.Error("draining real server", zap.String("service", owner), zap.String("virtual_server", key.String()),
				zap.String("real_server", d.String()), zap.Error(err))
			st.kfail(fmt.Errorf("draining real server %s of %s: %w", d, key, err))
			return
		}
		cur.dests[d] = 0
		st.ch.DestsUpdated++
	}
	dk := drainKey{key, d}
	if _, ok := p.draining[dk]; !ok {
		now := p.cfg.Clock.Now()
		p.draining[dk] = drainItem{since: now, deadline: now.Add(p.cfg.GracefulTerminationTimeout)}
		p.log.Debug("draining real server", zap.String("service", owner), zap.String("virtual_server", key.String()),
			zap.String("real_server", d.String()))
	}
}

func dest(d netip.AddrPort, weight int) *kernel.Destination {
	return &kernel.Destination{Addr: d.Addr(), Port: d.Port(), Weight: weight}
}

// syncAddrs binds the wanted virtual IPs to the link and unbinds the rest.
func (p *Proxier) syncAddrs(want *desired.State, st *syncState) {
	wanted := make(map[netip.Addr]bool, len(want.Bind))
	owner := map[netip.Addr]string{}
	for _, vs := range want.Services {
		if vs.Bind {
			if o, ok := owner[vs.Addr]; !ok || vs.Owner.String() < o {
				owner[vs.Addr] = vs.Owner.String()
			}
		}
	}
	for _, a := range want.Bind {
		wanted[a] = true
		if p.known.addrs[a] {
			continue
		}
		if err := p.cfg.Links.AddAddr(p.link, a); err != nil {
			p.log.Error("binding virtual IP", zap.String("service", owner[a]), zap.String("address", a.String()),
				zap.String("link", p.link), zap.Error(err))
			st.kfail(fmt.Errorf("binding %s to %s for %s: %w", a, p.link, owner[a], err))
			continue
		}
		p.known.addrs[a] = true
		st.ch.AddrsAdded++
	}
	for a := range p.known.addrs {
		if wanted[a] {
			continue
		}
		if err := p.cfg.Links.DelAddr(p.link, a); err != nil {
			p.log.Error("unbinding virtual IP", zap.String("address", a.String()), zap.String("link", p.link), zap.Error(err))
			st.kfail(fmt.Errorf("unbinding %s from %s: %w", a, p.link, err))
			continue
		}
		delete(p.known.addrs, a)
		st.ch.AddrsDeleted++
	}
}

// deleteStale removes virtual servers nothing wants, except those in
// ExcludeCIDRs.
func (p *Proxier) deleteStale(want *desired.State, st *syncState) {
	var stale []kernel.Key
	for k, cur := range p.known.services {
		if _, ok := want.Services[k]; !ok && !cur.excluded {
			stale = append(stale, k)
		}
	}
	sort.Slice(stale, func(i, j int) bool { return stale[i].Less(stale[j]) })
	for _, k := range stale {
		cur := p.known.services[k]
		if err := p.cfg.IPVS.DelService(&cur.svc); err != nil && !errors.Is(err, syscall.ESRCH) {
			p.log.Error("deleting virtual server", zap.String("virtual_server", k.String()), zap.Error(err))
			st.kfail(fmt.Errorf("deleting virtual server %s: %w", k, err))
			continue
		}
		delete(p.known.services, k)
		for dk := range p.draining {
			if dk.vs == k {
				delete(p.draining, dk)
			}
		}
		st.ch.ServicesDeleted++
	}
}

// drain deletes draining real servers whose connections are gone or whose
// time is up. It reads only the virtual servers that have some.
func (p *Proxier) drain(st *syncState) {
	if len(p.draining) == 0 {
		return
	}
	byVS := map[kernel.Key][]netip.AddrPort{}
	for dk := range p.draining {
		byVS[dk.vs] = append(byVS[dk.vs], dk.dest)
	}
	keys := make([]kernel.Key, 0, len(byVS))
	for k := range byVS {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Less(keys[j]) })
	now := p.cfg.Clock.Now()
	for _, k := range keys {
		cur := p.known.services[k]
		if cur == nil {
			for _, d := range byVS[k] {
				delete(p.draining, drainKey{k, d})
			}
			continue
		}
		ds, err := p.cfg.IPVS.GetDestinations(&cur.svc)
		if err != nil {
			p.log.Error("reading draining real servers", zap.String("virtual_server", k.String()), zap.Error(err))
			st.kfail(fmt.Errorf("reading real servers of %s: %w", k, err))
			continue
		}
		inKernel := make(map[netip.AddrPort]*kernel.Destination, len(ds))
		for _, d := range ds {
			inKernel[d.AddrPort()] = d
		}
		for _, d := range byVS[k] {
			dk := drainKey{k, d}
			item := p.draining[dk]
			kd := inKernel[d]
			if kd == nil {
				delete(p.draining, dk)
				delete(cur.dests, d)
				continue
			}
			conns := kd.ActiveConns + kd.InactiveConns
			timedOut := !now.Before(item.deadline)
			if conns > 0 && !timedOut {
				continue
			}
			if err := p.cfg.IPVS.DelDestination(&cur.svc, kd); err != nil && !errors.Is(err, syscall.ENOENT) {
				p.log.Error("deleting drained real server", zap.String("virtual_server", k.String()),
					zap.String("real_server", d.String()), zap.Error(err))
				st.kfail(fmt.Errorf("deleting real server %s of %s: %w", d, k, err))
				continue
			}
			if timedOut && conns > 0 {
				p.log.Info("drain timeout: deleting real server with its connections",
					zap.String("virtual_server", k.String()), zap.String("real_server", d.String()),
					zap.Int("connections", conns), zap.Duration("drained_for", now.Sub(item.since)))
			}
			delete(p.draining, dk)
			delete(cur.dests, d)
			st.ch.DestsDeleted++
		}
	}
}
