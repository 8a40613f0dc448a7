package ipvs

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/ipvs/desired"
	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	"github.com/kpr-proxy/kpr/internal/model"
)

// Programmed returns what the kernel holds for one Service (all its ports):
// its virtual servers with their real servers (weights and connection
// counts), its virtual IPs on kpr's link, its ip set entries, and the
// iptables rules that match those sets. Everything is read back from the
// kernel; what the last sync wanted but the kernel lacks is marked
// MISSING. ok is false when the last synced snapshot has no such Service.
func (p *Proxier) Programmed(ctx context.Context, namespace, name string) (string, bool, error) {
	p.mu.Lock()
	snap, cfg, node := p.applied, p.lastCfg, p.lastNode
	p.mu.Unlock()
	if snap == nil || cfg == nil {
		return "", false, nil
	}
	// The Service's share of the desired state is the desired state of a
	// snapshot holding only it.
	sub := &model.Snapshot{Family: snap.Family, Services: map[model.ServicePortName]*model.ServicePort{}, Endpoints: map[model.ServicePortName][]*model.Endpoint{}}
	for n, sp := range snap.Services {
		if n.Namespace == namespace && n.Name == name {
			sub.Services[n] = sp
			sub.Endpoints[n] = snap.Endpoints[n]
		}
	}
	if len(sub.Services) == 0 {
		return "", false, nil
	}
	want := desired.Render(sub, node, cfg)

	p.kmu.Lock()
	defer p.kmu.Unlock()
	var b strings.Builder

	svcs, err := p.cfg.IPVS.GetServices()
	if err != nil {
		return "", true, fmt.Errorf("listing virtual servers: %w", err)
	}
	inKernel := map[kernel.Key]*kernel.Service{}
	for _, s := range svcs {
		if p.isOurs(s) {
			inKernel[s.Key()] = s
		}
	}
	b.WriteString("virtual servers:\n")
	for _, k := range want.SortedKeys() {
		vs := want.Services[k]
		ks := inKernel[k]
		if ks == nil {
			fmt.Fprintf(&b, "  %s  (%s %s) MISSING\n", vs.Service.String(), vs.Owner, vs.Kind)
			continue
		}
		fmt.Fprintf(&b, "  %s  (%s %s)\n", ks.String(), vs.Owner, vs.Kind)
		ds, err := p.cfg.IPVS.GetDestinations(ks)
		if err != nil {
			return "", true, fmt.Errorf("listing real servers of %s: %w", k, err)
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i].AddrPort().Compare(ds[j].AddrPort()) < 0 })
		seen := map[string]bool{}
		for _, d := range ds {
			seen[d.AddrPort().String()] = true
			state := ""
			if d.Weight == 0 {
				state = " (draining)"
			}
			fmt.Fprintf(&b, "    -> %s weight %d active %d inactive %d%s\n", d.AddrPort(), d.Weight, d.ActiveConns, d.InactiveConns, state)
		}
		for _, d := range vs.Dests {
			if !seen[d.String()] {
				fmt.Fprintf(&b, "    -> %s MISSING\n", d)
			}
		}
	}

	addrs, err := p.cfg.Links.Addrs(p.link, p.cfg.Family)
	if err != nil {
		return "", true, fmt.Errorf("listing addresses of %s: %w", p.link, err)
	}
	bound := map[string]bool{}
	for _, a := range addrs {
		bound[a.String()] = true
	}
	fmt.Fprintf(&b, "\nlink %s:\n", p.link)
	for _, a := range want.Bind {
		mark := ""
		if !bound[a.String()] {
			mark = " MISSING"
		}
		fmt.Fprintf(&b, "  %s%s\n", a, mark)
	}

	data, err := p.cfg.IPSet.Save(ctx)
	if err != nil {
		return "", true, err
	}
	kernelSets, err := ipset.Parse(data, func(n string) bool { _, ok := want.Sets[n]; return ok })
	if err != nil {
		return "", true, err
	}
	b.WriteString("\nip sets:\n")
	var setNames []string
	for n, s := range want.Sets {
		if len(s.Entries) > 0 {
			setNames = append(setNames, n)
		}
	}
	sort.Strings(setNames)
	for _, n := range setNames {
		for _, e := range want.Sets[n].Sorted() {
			mark := ""
			if ks := kernelSets[n]; ks == nil || !ks.Has(e) {
				mark = " MISSING"
			}
			fmt.Fprintf(&b, "  %s %s%s\n", n, e, mark)
		}
	}

	// The rules are shared by all Services; show those matching a set the
	// Service has entries in, and the per-LB node-access rules naming it.
	b.WriteString("\niptables rules for those sets:\n")
	tag := namespace + "/" + name
	for _, table := range []ipt.Table{ipt.TableNAT, ipt.TableFilter} {
		saved, err := p.cfg.IPT.SaveTable(ctx, table)
		if err != nil {
			return "", true, err
		}
		var lines []string
		for _, l := range strings.Split(string(saved), "\n") {
			f := strings.Fields(l)
			if len(f) < 2 || f[0] != "-A" || !desired.IsOurChain(f[1]) {
				continue
			}
			match := strings.Contains(l, `"`+tag+":") || strings.Contains(l, `"`+tag+" ")
			for _, n := range setNames {
				if strings.Contains(l, "--match-set "+n+" ") {
					match = true
				}
			}
			if match {
				lines = append(lines, l)
			}
		}
		if len(lines) > 0 {
			b.WriteString("*" + string(table) + "\n")
			for _, l := range lines {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String(), true, nil
}
