package app

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/kpr-proxy/kpr/internal/iptables"
	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/ipvs"
	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	"github.com/kpr-proxy/kpr/internal/model"
)

// modeProxier is what the app needs from a proxy mode's per-family proxier
// (iptables.Proxier, ipvs.Proxier).
type modeProxier interface {
	Sync(ctx context.Context, snap *model.Snapshot, node *model.Node) error
	CheckCanary() (bool, error)
	Programmed(ctx context.Context, namespace, name string) (string, bool, error)
	Applied() *model.Snapshot
}

type iptablesMode struct{ *iptables.Proxier }

func (m iptablesMode) Sync(ctx context.Context, s *model.Snapshot, n *model.Node) error {
	_, err := m.Proxier.Sync(ctx, s, n)
	return err
}

type ipvsMode struct{ *ipvs.Proxier }

func (m ipvsMode) Sync(ctx context.Context, s *model.Snapshot, n *model.Node) error {
	_, err := m.Proxier.Sync(ctx, s, n)
	return err
}

func (a *App) newIPTablesProxier(fam model.Family, runner ipt.Interface, npPrimary bool, npCIDRs, clusterCIDRs []netip.Prefix) (modeProxier, error) {
	p, err := iptables.New(iptables.Config{
		Family: fam, IPT: runner, Logger: a.log.Named("iptables"), Metrics: a.metrics,
		MasqueradeBit: int(a.cfg.IPTables.MasqueradeBit), MasqueradeAll: a.cfg.IPTables.MasqueradeAll,
		LocalhostNodePorts: a.cfg.IPTables.LocalhostNodePorts,
		NodePortPrimary:    npPrimary, NodePortCIDRs: npCIDRs,
		DetectLocalMode: string(a.cfg.DetectLocal.Mode), ClusterCIDRs: clusterCIDRs,
		BridgeInterface: a.cfg.DetectLocal.BridgeInterface, InterfaceNamePrefix: a.cfg.DetectLocal.InterfaceNamePrefix,
		ConntrackTCPBeLiberal: a.cfg.Conntrack.TCPBeLiberal,
		SyncPeriod:            a.cfg.SyncPeriod,
		MaxBatchServices:      maxBatchServices(runner.Backend()),
		LocalAddrs:            localAddrs,
		Sysctl:                procSysctl{},
	})
	if err != nil {
		return nil, err
	}
	return iptablesMode{p}, nil
}

// maxBatchServices: iptables-nft-restore is quadratic in the size of one
// input, so large syncs go in batches of 250 Service ports (measured: ~0.25 s
// each, however full the table); iptables-legacy-restore rewrites the whole
// table per input, so one input is fastest there.
func maxBatchServices(b ipt.Backend) int {
	if b == ipt.BackendNFT {
		return 250
	}
	return 0
}

// ipvsKernel holds the kernel boundaries both families share.
type ipvsKernel struct {
	handle kernel.Handle
	ipset  ipset.Interface
	links  kernel.Links
}

func (a *App) ipvsKernel() (*ipvsKernel, error) {
	if a.ipvsK != nil {
		return a.ipvsK, nil
	}
	h, err := kernel.NewHandle("")
	if err != nil {
		return nil, fmt.Errorf("ipvs mode: %w (load the ip_vs kernel modules or use --proxy-mode=iptables)", err)
	}
	set, err := ipset.NewRunner(ipset.Config{})
	if err != nil {
		return nil, fmt.Errorf("ipvs mode needs the ipset tool: %w", err)
	}
	a.ipvsK = &ipvsKernel{handle: h, ipset: set, links: &kernel.NetlinkLinks{}}
	return a.ipvsK, nil
}

func (a *App) newIPVSProxier(fam model.Family, runner ipt.Interface, npPrimary bool, npCIDRs, clusterCIDRs []netip.Prefix) (modeProxier, error) {
	k, err := a.ipvsKernel()
	if err != nil {
		return nil, err
	}
	c := a.cfg.IPVS
	p, err := ipvs.New(ipvs.Config{
		Family: fam, IPVS: k.handle, IPSet: k.ipset, IPT: runner, Links: k.links, Sysctl: kernel.ProcSysctl{},
		Logger: a.log.Named("ipvs"), Metrics: a.metrics,
		Scheduler: c.Scheduler, ExcludeCIDRs: c.ExcludeCIDRs, StrictARP: c.StrictARP,
		TCPTimeout: c.TCPTimeout, TCPFinTimeout: c.TCPFinTimeout, UDPTimeout: c.UDPTimeout,
		MasqueradeBit: int(a.cfg.IPTables.MasqueradeBit), MasqueradeAll: a.cfg.IPTables.MasqueradeAll,
		NodePortPrimary: npPrimary, NodePortCIDRs: npCIDRs,
		DetectLocalMode: string(a.cfg.DetectLocal.Mode), ClusterCIDRs: clusterCIDRs,
		BridgeInterface: a.cfg.DetectLocal.BridgeInterface, InterfaceNamePrefix: a.cfg.DetectLocal.InterfaceNamePrefix,
		SyncPeriod: a.cfg.SyncPeriod,
	})
	if err != nil {
		return nil, err
	}
	return ipvsMode{p}, nil
}

// cleanupTimeout bounds --cleanup.
const cleanupTimeout = 2 * time.Minute
