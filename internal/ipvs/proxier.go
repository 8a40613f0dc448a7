// Package ipvs is the IPVS proxy mode: it keeps one IP family's IPVS table,
// ip sets, virtual-IP link addresses and iptables rules in step with the
// Snapshots it is given.
//
// What the kernel should hold is computed by package desired (pure); this
// package reconciles the kernel towards it and never flushes: each sync
// applies only the differences between the desired state and what the
// kernel holds. What the kernel holds is read back (GetServices,
// GetDestinations, `ipset save`, the link's addresses) on full syncs — the
// first one, every SyncPeriod, after any failure, and when forced — and is
// otherwise tracked from the changes this proxier made, so a partial sync
// costs no kernel reads beyond the node's addresses.
//
// Real servers that go away are drained, not cut: TCP ones get weight 0 and
// are deleted once their connections are gone or GracefulTerminationTimeout
// has passed; UDP and SCTP ones are deleted at once (their "connections"
// never end, and net/ipv4/vs/expire_nodest_conn makes clients move on). A
// restart never leaves weights stuck at 0 (kubernetes issues 57841, 92019):
// the first sync restores weight 1 on every wanted real server and queues
// every unwanted one for draining again.
//
// A Proxier is not safe for concurrent use by several syncing goroutines:
// exactly one goroutine (the sync runner) calls Sync. CheckCanary, Applied
// and Programmed may run elsewhere.
package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"

	kpriptables "github.com/kpr-proxy/kpr/internal/iptables"
	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/iptables/render"
	"github.com/kpr-proxy/kpr/internal/ipvs/desired"
	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	"github.com/kpr-proxy/kpr/internal/metrics"
	"github.com/kpr-proxy/kpr/internal/model"
)

// Config configures a Proxier for one family.
type Config struct {
	Family model.Family
	// Kernel boundaries. Sysctl may be nil (no sysctl is touched).
	IPVS   kernel.Handle
	IPSet  ipset.Interface
	IPT    ipt.Interface
	Links  kernel.Links
	Sysctl kernel.Sysctl

	Logger  *zap.Logger
	Metrics *metrics.Metrics // nil records nothing
	Clock   clock.PassiveClock

	// Scheduler is the IPVS scheduler ("rr" when empty).
	Scheduler string
	// ExcludeCIDRs: virtual servers in these ranges are never deleted
	// (they belong to someone else).
	ExcludeCIDRs []netip.Prefix
	// StrictARP sets arp_ignore=1 and arp_announce=2, so the node does not
	// answer ARP for the virtual IPs (needed by MetalLB-style L2 LBs).
	StrictARP bool
	// IPVS connection timeouts; 0 leaves the kernel's value.
	TCPTimeout, TCPFinTimeout, UDPTimeout time.Duration

	MasqueradeBit int
	MasqueradeAll bool
	// NodePortPrimary and NodePortCIDRs are --nodeport-addresses (CIDRs
	// already filtered to this family); neither set means every node
	// address.
	NodePortPrimary bool
	NodePortCIDRs   []netip.Prefix

	DetectLocalMode     string
	ClusterCIDRs        []netip.Prefix // this family's --cluster-cidr
	BridgeInterface     string
	InterfaceNamePrefix string

	// SyncPeriod is --ipvs-sync-period: a full sync (re-reading the
	// kernel) happens at least this often.
	SyncPeriod time.Duration

	// LocalAddrs, if set, lists the node's local addresses instead of
	// Links.NodeAddrs; the addresses on kpr's link are taken out.
	LocalAddrs func() ([]netip.Addr, error)

	// LinkName is the link holding the virtual IPs (desired.DefaultLink
	// when empty).
	LinkName string
	// GracefulTerminationTimeout bounds how long a removed TCP real server
	// drains before it is deleted with its connections (default 15m).
	GracefulTerminationTimeout time.Duration
}

// DefaultGracefulTerminationTimeout is the drain limit when none is given:
// kube-proxy's IPVS TCP timeout, after which idle connections are gone
// anyway.
const DefaultGracefulTerminationTimeout = 15 * time.Minute

// Changes counts what one sync changed in the kernel.
type Changes struct {
	ServicesAdded, ServicesUpdated, ServicesDeleted int
	// DestsUpdated counts weight changes: drains (to 0) and restores (to 1).
	DestsAdded, DestsUpdated, DestsDeleted int
	AddrsAdded, AddrsDeleted               int
	SetsCreated                            int
	SetEntriesAdded, SetEntriesDeleted     int
	RulesRestored                          bool
}

// Total is the number of kernel changes (a rules restore counts one).
func (c Changes) Total() int {
	n := c.ServicesAdded + c.ServicesUpdated + c.ServicesDeleted + c.DestsAdded + c.DestsUpdated + c.DestsDeleted +
		c.AddrsAdded + c.AddrsDeleted + c.SetsCreated + c.SetEntriesAdded + c.SetEntriesDeleted
	if c.RulesRestored {
		n++
	}
	return n
}

// Result describes one Sync (also a failed one, as far as it got).
type Result struct {
	// Full: the kernel was read back rather than trusted from the last
	// sync.
	Full    bool
	Changes Changes
	Stats   desired.Stats
	// Draining is how many real servers wait for their connections to end.
	Draining int
	Duration time.Duration
}

// knownVS is a virtual server as the kernel holds it.
type knownVS struct {
	svc   kernel.Service
	dests map[netip.AddrPort]int // weight
	// excluded: in ExcludeCIDRs, so never deleted.
	excluded bool
}

// kernelState is what the kernel holds, as far as this proxier knows.
type kernelState struct {
	services map[kernel.Key]*knownVS
	sets     map[string]*ipset.Set
	addrs    map[netip.Addr]bool
}

// drainKey is one real server of one virtual server.
type drainKey struct {
	vs   kernel.Key
	dest netip.AddrPort
}

type drainItem struct {
	since, deadline time.Time
}

// Proxier programs one family's IPVS mode.
type Proxier struct {
	cfg     Config
	log     *zap.Logger
	link    string
	exclude []netip.Prefix

	// kmu serialises kernel access: Sync, Programmed and Cleanup share the
	// (not concurrency-safe) handles.
	kmu       sync.Mutex
	known     *kernelState // nil: read the kernel on the next sync
	lastFull  time.Time
	forceFull atomic.Bool
	lastRules []byte // last iptables batch applied; nil forces a restore
	setupOK   bool
	draining  map[drainKey]drainItem
	nodeAddrs []netip.Addr // last good answer
	warned    map[string]bool
	conflicts string

	mu       sync.Mutex // guards the fields below, read by Programmed/Applied
	applied  *model.Snapshot
	lastCfg  *desired.Config
	lastNode *model.Node
}

// New makes a Proxier. It touches nothing in the kernel.
func New(cfg Config) (*Proxier, error) {
	switch {
	case cfg.IPVS == nil:
		return nil, errors.New("ipvs proxier: no IPVS handle")
	case cfg.IPSet == nil:
		return nil, errors.New("ipvs proxier: no ipset interface")
	case cfg.IPT == nil:
		return nil, errors.New("ipvs proxier: no ipt.Interface")
	case cfg.Links == nil:
		return nil, errors.New("ipvs proxier: no links interface")
	}
	if cfg.Family != model.IPv4 && cfg.Family != model.IPv6 {
		return nil, fmt.Errorf("ipvs proxier: bad family %v", cfg.Family)
	}
	if cfg.IPT.Family() != cfg.Family {
		return nil, fmt.Errorf("ipvs proxier: %s iptables interface for a %s proxier", cfg.IPT.Family(), cfg.Family)
	}
	if cfg.MasqueradeBit < 0 || cfg.MasqueradeBit > 31 {
		return nil, fmt.Errorf("ipvs proxier: masquerade bit %d not in [0, 31]", cfg.MasqueradeBit)
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
	if cfg.GracefulTerminationTimeout <= 0 {
		cfg.GracefulTerminationTimeout = DefaultGracefulTerminationTimeout
	}
	if cfg.Scheduler == "" {
		cfg.Scheduler = desired.DefaultScheduler
	}
	p := &Proxier{
		cfg:      cfg,
		log:      cfg.Logger.With(zap.String("ip_family", cfg.Family.String())),
		link:     cfg.LinkName,
		draining: map[drainKey]drainItem{},
		warned:   map[string]bool{},
	}
	if p.link == "" {
		p.link = desired.DefaultLink
	}
	for _, c := range cfg.ExcludeCIDRs {
		if cfg.Family.Contains(c.Addr()) {
			p.exclude = append(p.exclude, c.Masked())
		}
	}
	return p, nil
}

// ForceFullSync makes the next Sync re-read the kernel and rewrite the
// rules. Safe to call from any goroutine.
func (p *Proxier) ForceFullSync() { p.forceFull.Store(true) }

// CheckCanary reports whether our canary rules and our link are still in
// place; either gone means someone flushed or deleted them, so a full resync
// is forced. It only reads the kernel (after any running Sync).
func (p *Proxier) CheckCanary() (bool, error) {
	// The boundaries are not safe for concurrent use: wait for a running
	// sync.
	p.kmu.Lock()
	defer p.kmu.Unlock()
	ok, err := ipt.CanaryIntact(p.cfg.IPT, ipt.DefaultCanaryTables()...)
	if err != nil {
		return false, err
	}
	if !ok {
		p.log.Warn("iptables canary is gone: rules were flushed by someone else, forcing a full resync")
	} else {
		if ok, err = p.cfg.Links.LinkExists(p.link); err != nil {
			return false, err
		}
		if !ok {
			p.log.Warn("the virtual IP link is gone, forcing a full resync", zap.String("link", p.link))
		}
	}
	if !ok {
		p.ForceFullSync()
	}
	return ok, nil
}

func (p *Proxier) excluded(a netip.Addr) bool {
	for _, c := range p.exclude {
		if c.Contains(a) {
			return true
		}
	}
	return false
}

// isOurs reports whether a listed virtual server is one this proxier
// manages: its family, a protocol kpr uses, not a firewall-mark service.
func (p *Proxier) isOurs(s *kernel.Service) bool {
	if s.FWMark != 0 || !p.cfg.Family.Contains(s.Addr) {
		return false
	}
	switch s.Protocol {
	case model.TCP, model.UDP, model.SCTP:
		return true
	}
	return false
}

// syncState carries one sync's bookkeeping.
type syncState struct {
	ch        Changes
	kernelErr []error // invalidate what we know of the kernel
	setupErr  []error // retried next sync, but the kernel state is known
}

func (s *syncState) kfail(err error) { s.kernelErr = append(s.kernelErr, err) }
func (s *syncState) sfail(err error) { s.setupErr = append(s.setupErr, err) }

// Sync brings the kernel in line with snap. Failures of single virtual
// servers, addresses or set batches are logged with the Service they belong
// to and do not stop the rest; the returned error joins them, so the runner
// retries (and the next sync re-reads the kernel).
func (p *Proxier) Sync(ctx context.Context, snap *model.Snapshot, node *model.Node) (res Result, err error) {
	p.kmu.Lock()
	defer p.kmu.Unlock()
	start := p.cfg.Clock.Now()
	if snap == nil {
		return res, errors.New("ipvs proxier: nil snapshot")
	}
	if snap.Family != p.cfg.Family {
		return res, fmt.Errorf("snapshot of family %s given to the %s proxier", snap.Family, p.cfg.Family)
	}
	if node == nil {
		node = &model.Node{}
	}
	var st syncState
	defer func() {
		res.Changes = st.ch
		res.Draining = len(p.draining)
		res.Duration = p.cfg.Clock.Since(start)
	}()

	forced := p.forceFull.Swap(false)
	full := p.known == nil || forced || p.cfg.Clock.Since(p.lastFull) >= p.cfg.SyncPeriod
	res.Full = full
	if full || !p.setupOK {
		p.setup(&st)
	}
	if full {
		known, err := p.readKernel(ctx)
		if err != nil {
			p.known = nil
			return res, fmt.Errorf("reading the kernel's IPVS state: %w", err)
		}
		p.known = known
		p.lastRules = nil
	}

	cfg := p.renderConfig(node)
	want := desired.Render(snap, node, cfg)
	res.Stats = want.Stats
	if c := strings.Join(want.Conflicts, "; "); c != p.conflicts {
		p.conflicts = c
		for _, msg := range want.Conflicts {
			p.log.Warn("conflicting virtual server", zap.String("conflict", msg))
		}
	}

	// Order matters for traffic: sets before the rules that match them;
	// virtual and real servers before their address becomes local;
	// addresses removed before their virtual servers go.
	p.syncSets(ctx, want, &st)
	p.syncRules(ctx, want, full, &st)
	p.syncServices(want, &st)
	p.syncAddrs(want, &st)
	p.deleteStale(want, &st)
	p.drain(&st)

	p.cfg.Metrics.SetNoLocalEndpoints(p.cfg.Family, metrics.TrafficPolicyInternal, want.Stats.NoLocalInternal)
	p.cfg.Metrics.SetNoLocalEndpoints(p.cfg.Family, metrics.TrafficPolicyExternal, want.Stats.NoLocalExternal)
	if len(st.kernelErr) > 0 {
		// Something failed half-way: what we think the kernel holds may
		// be wrong. Read it back next time.
		p.known = nil
	}
	if errs := append(st.kernelErr, st.setupErr...); len(errs) > 0 {
		return res, errors.Join(errs...)
	}
	if full {
		p.lastFull = p.cfg.Clock.Now()
	}
	p.mu.Lock()
	p.applied, p.lastCfg, p.lastNode = snap, cfg, node
	p.mu.Unlock()
	p.cfg.Metrics.ObserveSync(p.cfg.Family, metrics.SyncAny, p.cfg.Clock.Since(start))
	p.log.Debug("synced IPVS",
		zap.Bool("full_sync", full),
		zap.Int("virtual_servers", want.Stats.VirtualServers),
		zap.Int("real_servers", want.Stats.RealServers),
		zap.Int("changes", st.ch.Total()),
		zap.Int("draining", len(p.draining)))
	return res, nil
}

// sysctls the IPVS mode needs, as kube-proxy sets them.
func (p *Proxier) sysctls() [][2]string {
	out := [][2]string{
		// Let iptables (masquerade) see IPVS connections.
		{"net/ipv4/vs/conntrack", "1"},
		// Drop (and let clients retry) connections whose real server was
		// deleted, instead of blackholing them until they time out.
		{"net/ipv4/vs/expire_nodest_conn", "1"},
		// Expire persistence templates of drained (weight 0) real servers.
		{"net/ipv4/vs/expire_quiescent_template", "1"},
		{"net/ipv4/ip_forward", "1"},
	}
	if p.cfg.StrictARP {
		out = append(out,
			[2]string{"net/ipv4/conf/all/arp_ignore", "1"},
			[2]string{"net/ipv4/conf/all/arp_announce", "2"})
	}
	return out
}

// setup ensures what does not depend on Services: sysctls, IPVS timeouts,
// the link, the jumps from built-in chains and the canary. Its failures are
// reported but do not make the kernel state unknown.
func (p *Proxier) setup(st *syncState) {
	ok := true
	fail := func(err error) {
		ok = false
		p.log.Error("IPVS mode setup", zap.Error(err))
		st.sfail(err)
	}
	if p.cfg.Sysctl != nil {
		for _, kv := range p.sysctls() {
			if cur, err := p.cfg.Sysctl.Get(kv[0]); err == nil && cur == kv[1] {
				continue
			}
			if err := p.cfg.Sysctl.Set(kv[0], kv[1]); err != nil {
				fail(fmt.Errorf("setting sysctl %s=%s: %w", kv[0], kv[1], err))
			}
		}
	}
	if want := (kernel.Timeouts{TCP: p.cfg.TCPTimeout, TCPFin: p.cfg.TCPFinTimeout, UDP: p.cfg.UDPTimeout}); want != (kernel.Timeouts{}) {
		cur, err := p.cfg.IPVS.GetTimeouts()
		if err != nil || (want.TCP != 0 && cur.TCP != want.TCP) || (want.TCPFin != 0 && cur.TCPFin != want.TCPFin) || (want.UDP != 0 && cur.UDP != want.UDP) {
			if err := p.cfg.IPVS.SetTimeouts(want); err != nil {
				fail(fmt.Errorf("setting IPVS timeouts: %w", err))
			}
		}
	}
	if existed, err := p.cfg.Links.EnsureLink(p.link); err != nil {
		fail(fmt.Errorf("ensuring link %s: %w", p.link, err))
	} else if !existed {
		p.log.Info("created the virtual IP link", zap.String("link", p.link))
	}
	for _, j := range desired.Jumps() {
		if _, err := p.cfg.IPT.EnsureChain(ipt.Table(j.Table), j.To); err != nil {
			fail(fmt.Errorf("ensuring chain %s/%s: %w", j.Table, j.To, err))
			continue
		}
		if _, err := p.cfg.IPT.EnsureRule(ipt.Prepend, ipt.Table(j.Table), j.From, j.RuleArgs()...); err != nil {
			fail(fmt.Errorf("ensuring jump %s/%s -> %s: %w", j.Table, j.From, j.To, err))
		}
	}
	if err := ipt.EnsureCanary(p.cfg.IPT, ipt.DefaultCanaryTables()...); err != nil {
		fail(fmt.Errorf("ensuring canary: %w", err))
	}
	p.setupOK = ok
}

// readKernel reads what the kernel holds for this family.
func (p *Proxier) readKernel(ctx context.Context) (*kernelState, error) {
	ks := &kernelState{services: map[kernel.Key]*knownVS{}, addrs: map[netip.Addr]bool{}}
	svcs, err := p.cfg.IPVS.GetServices()
	if err != nil {
		return nil, fmt.Errorf("listing virtual servers: %w", err)
	}
	for _, s := range svcs {
		if !p.isOurs(s) {
			continue
		}
		ds, err := p.cfg.IPVS.GetDestinations(s)
		if err != nil {
			return nil, fmt.Errorf("listing real servers of %s: %w", s.Key(), err)
		}
		k := &knownVS{svc: *s, dests: make(map[netip.AddrPort]int, len(ds)), excluded: p.excluded(s.Addr)}
		k.svc.Flags &^= kernel.FlagHashed
		for _, d := range ds {
			k.dests[d.AddrPort()] = d.Weight
		}
		ks.services[s.Key()] = k
	}
	data, err := p.cfg.IPSet.Save(ctx)
	if err != nil {
		return nil, err
	}
	ours := map[string]bool{}
	for _, n := range desired.SetNames(p.cfg.Family) {
		ours[n] = true
	}
	if ks.sets, err = ipset.Parse(data, func(n string) bool { return ours[n] }); err != nil {
		return nil, err
	}
	addrs, err := p.cfg.Links.Addrs(p.link, p.cfg.Family)
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		ks.addrs[a] = true
	}
	return ks, nil
}

// renderConfig derives the desired-state configuration from the static
// config and the node's current facts.
func (p *Proxier) renderConfig(node *model.Node) *desired.Config {
	nodeAddrs := p.currentNodeAddrs()
	c := &desired.Config{
		Family:        p.cfg.Family,
		Scheduler:     p.cfg.Scheduler,
		MasqueradeBit: p.cfg.MasqueradeBit,
		MasqueradeAll: p.cfg.MasqueradeAll,
		RandomFully:   p.cfg.IPT.HasRandomFully(),
		LocalDetector: p.localDetector(node),
		NodeAddrs:     nodeAddrs,
		NodePortIPs:   p.nodePortIPs(node, nodeAddrs),
	}
	if len(node.Addresses) > 0 {
		c.NodeIP = node.Addresses[0]
	}
	return c
}

// currentNodeAddrs lists the node's own addresses (outside kpr's link).
// On error the last good answer is kept, so a transient netlink failure
// does not tear down every NodePort.
func (p *Proxier) currentNodeAddrs() []netip.Addr {
	var addrs []netip.Addr
	var err error
	if p.cfg.LocalAddrs != nil {
		var all []netip.Addr
		all, err = p.cfg.LocalAddrs()
		seen := map[netip.Addr]bool{}
		for _, a := range all {
			a = a.Unmap()
			if kernel.UsableNodeAddr(p.cfg.Family, a) && !seen[a] && (p.known == nil || !p.known.addrs[a]) {
				seen[a] = true
				addrs = append(addrs, a)
			}
		}
		sort.Slice(addrs, func(i, j int) bool { return addrs[i].Less(addrs[j]) })
	} else {
		addrs, err = p.cfg.Links.NodeAddrs(p.cfg.Family, p.link)
	}
	if err != nil {
		p.log.Error("listing node addresses; keeping the previous ones", zap.Error(err))
		return p.nodeAddrs
	}
	p.nodeAddrs = addrs
	return addrs
}

// nodePortIPs resolves --nodeport-addresses: nothing means every node
// address, "primary" the node's primary IP, CIDRs the node addresses inside
// them. Loopback addresses never carry NodePorts in IPVS mode.
func (p *Proxier) nodePortIPs(node *model.Node, nodeAddrs []netip.Addr) []netip.Addr {
	if !p.cfg.NodePortPrimary && len(p.cfg.NodePortCIDRs) == 0 {
		return nodeAddrs
	}
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(a netip.Addr) {
		if kernel.UsableNodeAddr(p.cfg.Family, a) && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	if p.cfg.NodePortPrimary && len(node.Addresses) > 0 {
		add(node.Addresses[0])
	}
	for _, a := range nodeAddrs {
		for _, c := range p.cfg.NodePortCIDRs {
			if c.Contains(a) {
				add(a)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

func (p *Proxier) localDetector(node *model.Node) render.LocalDetector {
	switch p.cfg.DetectLocalMode {
	case kpriptables.DetectLocalClusterCIDR, "":
		if len(p.cfg.ClusterCIDRs) > 0 {
			return render.DetectLocalByCIDR(kpriptables.DetectLocalClusterCIDR, p.cfg.ClusterCIDRs[0])
		}
	case kpriptables.DetectLocalNodeCIDR:
		if len(node.PodCIDRs) > 0 {
			return render.DetectLocalByCIDR(kpriptables.DetectLocalNodeCIDR, node.PodCIDRs[0])
		}
		if !p.warned["nodecidr"] {
			p.log.Warn("detect-local-mode NodeCIDR but the Node has no podCIDR in this family yet; pod traffic cannot be told apart",
				zap.String("node", node.Name))
			p.warned["nodecidr"] = true
		}
	case kpriptables.DetectLocalBridgeInterface:
		return render.DetectLocalByBridge(p.cfg.BridgeInterface)
	case kpriptables.DetectLocalInterfaceNamePrefix:
		return render.DetectLocalByInterfacePrefix(p.cfg.InterfaceNamePrefix)
	}
	return render.NoLocalDetector()
}

// Applied returns the snapshot the kernel holds (nil before the first
// successful sync). Safe to call while Sync runs; the snapshot is immutable.
func (p *Proxier) Applied() *model.Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.applied
}
