// Package iptables is the iptables proxy mode: it keeps one IP family's
// iptables rules in step with the Snapshots it is given. Rendering is pure
// (package render); this package decides full versus partial syncs, ensures
// the few rules in built-in chains, applies the batch through ipt.Interface
// and reports what happened.
//
// A Proxier is not safe for concurrent use: exactly one goroutine (the sync
// runner) calls Sync. CheckCanary only reads and may run elsewhere.
package iptables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/iptables/render"
	"github.com/kpr-proxy/kpr/internal/metrics"
	"github.com/kpr-proxy/kpr/internal/model"
)

// Detect-local modes, spelled as kube-proxy's --detect-local-mode.
const (
	DetectLocalClusterCIDR         = "ClusterCIDR"
	DetectLocalNodeCIDR            = "NodeCIDR"
	DetectLocalBridgeInterface     = "BridgeInterface"
	DetectLocalInterfaceNamePrefix = "InterfaceNamePrefix"
)

// Config configures a Proxier for one family.
type Config struct {
	Family  model.Family
	IPT     ipt.Interface
	Logger  *zap.Logger
	Metrics *metrics.Metrics // nil records nothing
	Clock   clock.PassiveClock

	MasqueradeBit      int
	MasqueradeAll      bool
	LocalhostNodePorts bool
	// NodePortAddresses from --nodeport-addresses (already filtered to
	// this family). Neither set means all local addresses.
	NodePortPrimary bool
	NodePortCIDRs   []netip.Prefix

	DetectLocalMode     string
	ClusterCIDRs        []netip.Prefix // this family's --cluster-cidr
	BridgeInterface     string
	InterfaceNamePrefix string

	ConntrackTCPBeLiberal bool
	// SyncPeriod is --iptables-sync-period: a full sync happens at least
	// this often, which repairs anything changed behind our back.
	SyncPeriod time.Duration
	// MaxBatchServices splits large syncs into several restores (see
	// render.Config.MaxBatchServices); 0 means one restore per sync.
	MaxBatchServices int

	// LocalAddrs lists the node's local addresses (in the proxy's network
	// namespace), for --nodeport-addresses CIDRs.
	LocalAddrs func() ([]netip.Addr, error)
	// Sysctl sets route_localnet for localhost NodePorts (IPv4).
	Sysctl Sysctl
}

// Sysctl is the kernel-parameter boundary.
type Sysctl interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

// Result describes one successful Sync.
type Result struct {
	Full    bool
	Skipped bool // nothing changed: no restore was run
	Stats   render.Stats
	// Duration of the whole sync, rendering included.
	Duration time.Duration
}

// Proxier programs one family's rules.
type Proxier struct {
	cfg Config
	log *zap.Logger

	renderCfg *render.Config // replaced (never mutated) when inputs change
	node      *model.Node    // node facts renderCfg was built from
	state     *render.State  // of the last applied batch; nil forces a full sync
	// kernelKnown: the kernel holds exactly what state describes, so a
	// full sync need not list the kernel's chains first.
	kernelKnown bool
	lastFull    time.Time
	forceFull   atomic.Bool
	warnedNode  bool

	mu      sync.Mutex      // guards applied, read by Programmed
	applied *model.Snapshot // the snapshot the kernel holds
}

// New makes a Proxier. It touches nothing in the kernel.
func New(cfg Config) (*Proxier, error) {
	if cfg.IPT == nil {
		return nil, errors.New("iptables proxier: no ipt.Interface")
	}
	if cfg.IPT.Family() != cfg.Family {
		return nil, fmt.Errorf("iptables proxier: %s interface for a %s proxier", cfg.IPT.Family(), cfg.Family)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.SyncPeriod <= 0 {
		cfg.SyncPeriod = 30 * time.Second
	}
	return &Proxier{cfg: cfg, log: cfg.Logger.With(zap.String("ip_family", cfg.Family.String()))}, nil
}

// ForceFullSync makes the next Sync a full one that also re-lists the
// kernel's chains (after an external flush, say). Safe to call from any
// goroutine.
func (p *Proxier) ForceFullSync() { p.forceFull.Store(true) }

// CheckCanary reports whether our canary rules are still in place; a lost
// canary means someone flushed tables (a firewalld reload, `iptables -F`), so
// a full resync is forced. It only reads the kernel.
func (p *Proxier) CheckCanary() (bool, error) {
	ok, err := ipt.CanaryIntact(p.cfg.IPT, ipt.DefaultCanaryTables()...)
	if err != nil {
		return false, err
	}
	if !ok {
		p.log.Warn("iptables canary is gone: rules were flushed by someone else, forcing a full resync")
		p.ForceFullSync()
	}
	return ok, nil
}

// Sync brings the kernel in line with snap. On error the kernel may hold a
// partly applied batch (iptables-restore commits per table); the next Sync
// is then a full one.
func (p *Proxier) Sync(ctx context.Context, snap *model.Snapshot, node *model.Node) (res Result, err error) {
	start := p.cfg.Clock.Now()
	if snap.Family != p.cfg.Family {
		return res, fmt.Errorf("snapshot of family %s given to the %s proxier", snap.Family, p.cfg.Family)
	}
	p.updateRenderConfig(node)

	if p.forceFull.Swap(false) {
		// Someone else changed the tables: what we think the kernel
		// holds is no longer true.
		p.state, p.kernelKnown = nil, false
	}
	full := p.state == nil || p.cfg.Clock.Since(p.lastFull) >= p.cfg.SyncPeriod
	var existing map[string][]string
	if full {
		if err := p.ensureBaseRules(); err != nil {
			p.state, p.kernelKnown = nil, false
			return res, err
		}
		if !p.kernelKnown {
			// Unknown kernel state (start, failure, external flush):
			// list chains so leftovers get deleted.
			nat, err := p.cfg.IPT.ListChains(ctx, ipt.TableNAT)
			if err != nil {
				p.state = nil
				return res, fmt.Errorf("listing nat chains: %w", err)
			}
			existing = map[string][]string{"nat": nat}
		}
	}

	// Prev is passed on full syncs too: the chains it owned are deletion
	// candidates when the kernel is not re-listed.
	in := render.Input{Snapshot: snap, Node: p.node, Config: p.renderCfg, Existing: existing, Prev: p.state, ForceFull: full}
	out := render.Render(in)
	res.Full, res.Stats = out.Full, out.Stats
	kind := metrics.SyncPartial
	if out.Full {
		kind = metrics.SyncFull
	}
	defer func() {
		res.Duration = p.cfg.Clock.Since(start)
		if err == nil {
			p.cfg.Metrics.ObserveSync(p.cfg.Family, kind, res.Duration)
		}
	}()

	if !out.Full && out.Stats.ChainsWritten == 0 && out.Stats.ChainsDeleted == 0 {
		// Nothing changed; skip the exec entirely.
		res.Skipped = true
		p.state = out.State
		p.setApplied(snap)
		return res, nil
	}

	p.cfg.Metrics.ObserveRestore(p.cfg.Family, kind, out.Stats.Bytes, out.Stats.Lines)
	for i, batch := range out.Batches {
		err := p.cfg.IPT.Restore(ctx, batch)
		if err == nil {
			continue
		}
		p.cfg.Metrics.IPTablesRestoreFailed(p.cfg.Family)
		if !out.Full {
			p.cfg.Metrics.IPTablesPartialRestoreFailed(p.cfg.Family)
		}
		fields := []zap.Field{zap.Error(err), zap.Bool("full_sync", out.Full), zap.Int("lines", out.Stats.Lines),
			zap.Int("batch", i+1), zap.Int("batches", len(out.Batches))}
		var re *ipt.RestoreError
		if errors.As(err, &re) && re.Line > 0 {
			fields = append(fields, zap.Int("line", re.Line), zap.Strings("rules", ipt.ContextLines(batch, re.Line, 3)))
		}
		p.log.Error("iptables-restore failed; falling back to a full sync", fields...)
		// The failed batch may be half applied: forget what we think the
		// kernel holds.
		p.state, p.kernelKnown = nil, false
		return res, fmt.Errorf("iptables-restore: %w", err)
	}
	p.state, p.kernelKnown = out.State, true
	p.setApplied(snap)
	if out.Full {
		p.lastFull = p.cfg.Clock.Now()
	}
	p.cfg.Metrics.SetIPTablesRules(p.cfg.Family, metrics.TableNAT, out.Stats.NATRules, out.Stats.NATRulesWritten)
	p.cfg.Metrics.SetIPTablesRules(p.cfg.Family, metrics.TableFilter, out.Stats.FilterRules, out.Stats.FilterRulesWritten)
	p.cfg.Metrics.SetNoLocalEndpoints(p.cfg.Family, metrics.TrafficPolicyInternal, out.Stats.NoLocalInternal)
	p.cfg.Metrics.SetNoLocalEndpoints(p.cfg.Family, metrics.TrafficPolicyExternal, out.Stats.NoLocalExternal)
	p.log.Debug("synced iptables rules",
		zap.Bool("full_sync", out.Full),
		zap.Int("services", out.Stats.ServicesTotal),
		zap.Int("services_rendered", out.Stats.ServicesRendered),
		zap.Int("lines", out.Stats.Lines),
		zap.Int("bytes", out.Stats.Bytes),
		zap.Int("chains_deleted", out.Stats.ChainsDeleted))
	return res, nil
}

// ensureBaseRules creates our fixed chains' jumps from the built-in chains
// and the canary. They live outside the restore batch because a --noflush
// restore cannot add one rule to a chain it does not own.
func (p *Proxier) ensureBaseRules() error {
	for _, j := range render.Jumps(p.cfg.Family, p.cfg.LocalhostNodePorts) {
		if _, err := p.cfg.IPT.EnsureChain(ipt.Table(j.Table), j.To); err != nil {
			return fmt.Errorf("ensuring chain %s/%s: %w", j.Table, j.To, err)
		}
		if _, err := p.cfg.IPT.EnsureRule(ipt.Prepend, ipt.Table(j.Table), j.From, j.RuleArgs()...); err != nil {
			return fmt.Errorf("ensuring jump %s/%s -> %s: %w", j.Table, j.From, j.To, err)
		}
	}
	if err := ipt.EnsureCanary(p.cfg.IPT, ipt.DefaultCanaryTables()...); err != nil {
		return fmt.Errorf("ensuring canary: %w", err)
	}
	if p.cfg.Family == model.IPv4 && p.cfg.LocalhostNodePorts && p.cfg.Sysctl != nil {
		// Localhost NodePorts need routing of 127/8 off the loopback
		// device; KPR-LOCALNET drops what that would otherwise let in.
		const name = "net/ipv4/conf/all/route_localnet"
		if v, err := p.cfg.Sysctl.Get(name); err != nil || v != "1" {
			if err := p.cfg.Sysctl.Set(name, "1"); err != nil {
				p.log.Warn("cannot enable route_localnet: localhost NodePorts will not work",
					zap.String("sysctl", name), zap.Error(err))
			}
		}
	}
	return nil
}

// updateRenderConfig derives the render configuration from the static
// config and the node's current facts, replacing it (which forces a full
// sync) only when the result differs.
func (p *Proxier) updateRenderConfig(node *model.Node) {
	if node == nil {
		node = &model.Node{}
	}
	c := &render.Config{
		Family:                p.cfg.Family,
		MasqueradeBit:         p.cfg.MasqueradeBit,
		MasqueradeAll:         p.cfg.MasqueradeAll,
		RandomFully:           p.cfg.IPT.HasRandomFully(),
		LocalhostNodePorts:    p.cfg.LocalhostNodePorts,
		ConntrackTCPBeLiberal: p.cfg.ConntrackTCPBeLiberal,
		MaxBatchServices:      p.cfg.MaxBatchServices,
		LocalDetector:         p.localDetector(node),
		NodePortAddresses:     p.nodePortAddresses(node),
	}
	if len(node.Addresses) > 0 {
		c.NodeIP = node.Addresses[0]
	}
	if p.renderCfg == nil || !reflect.DeepEqual(*c, *p.renderCfg) {
		p.renderCfg = c
	}
	if p.node == nil || !reflect.DeepEqual(*node, *p.node) {
		p.node = node
	}
}

func (p *Proxier) localDetector(node *model.Node) render.LocalDetector {
	switch p.cfg.DetectLocalMode {
	case DetectLocalClusterCIDR, "":
		if len(p.cfg.ClusterCIDRs) > 0 {
			return render.DetectLocalByCIDR(DetectLocalClusterCIDR, p.cfg.ClusterCIDRs[0])
		}
	case DetectLocalNodeCIDR:
		if len(node.PodCIDRs) > 0 {
			return render.DetectLocalByCIDR(DetectLocalNodeCIDR, node.PodCIDRs[0])
		}
		if !p.warnedNode {
			p.log.Warn("detect-local-mode NodeCIDR but the Node has no podCIDR in this family yet; pod traffic cannot be told apart",
				zap.String("node", node.Name))
			p.warnedNode = true
		}
	case DetectLocalBridgeInterface:
		return render.DetectLocalByBridge(p.cfg.BridgeInterface)
	case DetectLocalInterfaceNamePrefix:
		return render.DetectLocalByInterfacePrefix(p.cfg.InterfaceNamePrefix)
	}
	return render.NoLocalDetector()
}

// nodePortAddresses resolves --nodeport-addresses: "primary" means the
// node's primary IPs, CIDRs mean the local addresses inside them, nothing
// means every local address.
func (p *Proxier) nodePortAddresses(node *model.Node) render.NodePortAddresses {
	if !p.cfg.NodePortPrimary && len(p.cfg.NodePortCIDRs) == 0 {
		return render.NodePortAddresses{All: true}
	}
	var out render.NodePortAddresses
	seen := map[netip.Addr]bool{}
	add := func(a netip.Addr) {
		if p.cfg.Family.Contains(a) && !seen[a] {
			seen[a] = true
			out.IPs = append(out.IPs, a)
		}
	}
	if p.cfg.NodePortPrimary && len(node.Addresses) > 0 {
		add(node.Addresses[0])
	}
	if len(p.cfg.NodePortCIDRs) > 0 && p.cfg.LocalAddrs != nil {
		addrs, err := p.cfg.LocalAddrs()
		if err != nil {
			p.log.Error("listing local addresses for --nodeport-addresses; NodePorts may be unreachable", zap.Error(err))
		}
		for _, a := range addrs {
			for _, c := range p.cfg.NodePortCIDRs {
				if c.Contains(a) {
					add(a)
					break
				}
			}
		}
	}
	return out
}
