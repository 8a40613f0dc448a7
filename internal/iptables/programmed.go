package iptables

import (
	"context"
	"sort"
	"strings"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/iptables/render"
	"github.com/kpr-proxy/kpr/internal/model"
)

// Programmed returns the rules this proxier has in the kernel for one
// Service (all its ports): the entries in shared chains that name it, its own
// chains and its endpoints' chains, read back with iptables-save. ok is false
// when the last synced snapshot has no such Service. It only reads the
// kernel and is safe to call while Sync runs.
func (p *Proxier) Programmed(ctx context.Context, namespace, name string) (string, bool, error) {
	snap := p.Applied()
	if snap == nil {
		return "", false, nil
	}
	own := map[string]bool{}
	for n := range snap.Services {
		if n.Namespace == namespace && n.Name == name {
			for _, c := range render.ServiceChains(n) {
				own[c] = true
			}
		}
	}
	if len(own) == 0 {
		return "", false, nil
	}
	tag := `"` + namespace + "/" + name
	var b strings.Builder
	for _, table := range []ipt.Table{ipt.TableNAT, ipt.TableFilter} {
		data, err := p.cfg.IPT.SaveTable(ctx, table)
		if err != nil {
			return "", true, err
		}
		lines := strings.Split(string(data), "\n")
		// Endpoint chains are found through the Service's own chains.
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) > 1 && f[0] == "-A" && own[f[1]] {
				for i := 2; i+1 < len(f); i++ {
					if f[i] == "-j" && strings.HasPrefix(f[i+1], render.Prefix+"SEP-") {
						own[f[i+1]] = true
					}
				}
			}
		}
		var out []string
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) < 2 || f[0] != "-A" {
				continue
			}
			if own[f[1]] || (render.IsOurs(f[1]) && (strings.Contains(l, tag+" ") || strings.Contains(l, tag+":") || strings.Contains(l, tag+`"`))) {
				out = append(out, l)
			}
		}
		if len(out) == 0 {
			continue
		}
		sort.SliceStable(out, func(i, j int) bool { return chainOrder(out[i]) < chainOrder(out[j]) })
		b.WriteString("*" + string(table) + "\n")
		for _, l := range out {
			b.WriteString(l + "\n")
		}
	}
	return b.String(), true, nil
}

// chainOrder lists shared chains first, then Service chains, then endpoints.
func chainOrder(line string) int {
	switch {
	case strings.Contains(line, "-A "+render.Prefix+"SEP-"):
		return 2
	case strings.Contains(line, "-A "+render.Prefix+"SVC-"), strings.Contains(line, "-A "+render.Prefix+"SVL-"),
		strings.Contains(line, "-A "+render.Prefix+"EXT-"), strings.Contains(line, "-A "+render.Prefix+"FW-"):
		return 1
	}
	return 0
}

// lastApplied records the snapshot the kernel now holds.
func (p *Proxier) setApplied(s *model.Snapshot) {
	p.mu.Lock()
	p.applied = s
	p.mu.Unlock()
}

// Applied returns the snapshot the kernel holds (nil before the first
// successful sync). Safe to call while Sync runs; the snapshot is immutable.
func (p *Proxier) Applied() *model.Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.applied
}
