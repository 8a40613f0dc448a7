// Package plugin implements podnet's CNI commands (ADD, DEL, CHECK, STATUS,
// GC; VERSION comes from skel). It glues the pure parts (config, ipam,
// check) to the kernel parts (wire, masq) in the order that keeps failures
// clean: validate everything first, then reserve, then wire, and undo this
// call's own work in success-gated defers.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/kpr-proxy/kpr/internal/cni/config"
	"github.com/kpr-proxy/kpr/internal/cni/ipam"
	"github.com/kpr-proxy/kpr/internal/cni/masq"
	"github.com/kpr-proxy/kpr/internal/cni/wire"
)

// SupportedVersions are the CNI spec versions podnet speaks; results are
// converted to the version the config asks for.
var SupportedVersions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// VersionInfo is podnet's answer to VERSION.
func VersionInfo() version.PluginInfo { return version.PluginSupports(SupportedVersions...) }

// DefaultLockTimeout bounds the wait for the node's IPAM lock; after it the
// runtime gets "try again later" (code 11) rather than a hung sandbox.
const DefaultLockTimeout = 30 * time.Second

// Config configures New. Zero values pick the real implementations.
type Config struct {
	Logger      *zap.Logger
	LockTimeout time.Duration
	// OpenStore opens the IPAM store of one network directory.
	OpenStore func(dir string) (ipam.Store, error)
	// NewMasqTable returns the iptables (is6=false) or ip6tables table.
	NewMasqTable func(is6 bool) (masq.Table, error)
}

// Plugin holds the CNI command handlers.
type Plugin struct {
	log          *zap.Logger
	lockTimeout  time.Duration
	openStore    func(dir string) (ipam.Store, error)
	newMasqTable func(is6 bool) (masq.Table, error)
}

// New returns a Plugin.
func New(cfg Config) *Plugin {
	p := &Plugin{log: cfg.Logger, lockTimeout: cfg.LockTimeout, openStore: cfg.OpenStore, newMasqTable: cfg.NewMasqTable}
	if p.log == nil {
		p.log = zap.NewNop()
	}
	if p.lockTimeout <= 0 {
		p.lockTimeout = DefaultLockTimeout
	}
	if p.openStore == nil {
		p.openStore = func(dir string) (ipam.Store, error) {
			return ipam.OpenDiskStore(ipam.DiskStoreConfig{Dir: dir})
		}
	}
	if p.newMasqTable == nil {
		p.newMasqTable = masq.NewTable
	}
	return p
}

// Funcs returns the handlers for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
}

// --- errors -----------------------------------------------------------------

func cniErr(code uint, format string, args ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, args...), "")
}

func configError(err error) *types.Error {
	if errors.Is(err, config.ErrDecode) {
		return cniErr(types.ErrDecodingFailure, "%v", err)
	}
	return cniErr(types.ErrInvalidNetworkConfig, "%v", err)
}

// openPodNS opens CNI_NETNS; a path that is missing, not a netns, or the
// node's own netns is the runtime passing a bad environment (code 4).
func openPodNS(path string) (ns.NetNS, error) {
	if path == "" {
		return nil, cniErr(types.ErrInvalidEnvironmentVariables, "CNI_NETNS is empty")
	}
	podNS, err := ns.GetNS(path)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		switch {
		case errors.As(err, &notExist):
			return nil, cniErr(types.ErrInvalidEnvironmentVariables, "CNI_NETNS %q does not exist", path)
		case errors.As(err, &notNS):
			return nil, cniErr(types.ErrInvalidEnvironmentVariables, "CNI_NETNS %q is not a network namespace", path)
		}
		return nil, cniErr(types.ErrInvalidEnvironmentVariables, "opening CNI_NETNS %q: %v", path, err)
	}
	if same, err := isCurrentNS(podNS); err != nil {
		podNS.Close()
		return nil, fmt.Errorf("comparing CNI_NETNS with the node's netns: %w", err)
	} else if same {
		podNS.Close()
		return nil, cniErr(types.ErrInvalidEnvironmentVariables, "CNI_NETNS %q is the node's own network namespace", path)
	}
	return podNS, nil
}

func isCurrentNS(n ns.NetNS) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(n.Fd()), &a); err != nil {
		return false, err
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &b); err != nil {
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// lockedStore opens the network's IPAM store and takes its lock.
func (p *Plugin) lockedStore(cfg *config.Config) (ipam.Store, *ipam.Allocator, error) {
	st, err := p.openStore(cfg.NetworkDir())
	if err != nil {
		return nil, nil, cniErr(types.ErrIOFailure, "IPAM data directory %s: %v", cfg.NetworkDir(), err)
	}
	if err := p.lock(st); err != nil {
		st.Close()
		return nil, nil, err
	}
	return st, ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: pools(cfg)}), nil
}

func (p *Plugin) lock(st ipam.Store) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.lockTimeout)
	defer cancel()
	if err := st.Lock(ctx); err != nil {
		if errors.Is(err, ipam.ErrLockTimeout) {
			return cniErr(types.ErrTryAgainLater, "%v (another podnet call holds it for over %s)", err, p.lockTimeout)
		}
		return cniErr(types.ErrIOFailure, "%v", err)
	}
	return nil
}

func pools(cfg *config.Config) []ipam.Pool {
	out := make([]ipam.Pool, 0, len(cfg.Ranges))
	for _, r := range cfg.Ranges {
		out = append(out, ipam.Pool{Subnet: r.Subnet, Gateway: r.Gateway})
	}
	return out
}

func owner(args *skel.CmdArgs) ipam.Owner {
	return ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
}

// --- ADD --------------------------------------------------------------------

// Add wires one pod. Order: parse config and open the pod netns (no side
// effects yet), then under the IPAM lock reserve addresses and make sure the
// node-level pieces exist (bridge, gateway, masquerade chain), then outside
// the lock create the veth pair and configure the pod. Any failure releases
// the addresses this call reserved and removes the veth it made.
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	cfg, err := config.Parse(args.StdinData)
	if err != nil {
		return configError(err)
	}
	podNS, err := openPodNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()
	log := p.log.With(zap.String("container_id", args.ContainerID), zap.String("ifname", args.IfName), zap.String("netns", args.Netns))

	st, alloc, err := p.lockedStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	locked := true
	unlock := func() {
		if locked {
			_ = st.Unlock()
			locked = false
		}
	}
	defer unlock()

	leases, err := alloc.Allocate(owner(args))
	if err != nil {
		var ex *ipam.ExhaustedError
		if errors.As(err, &ex) {
			return cniErr(types.ErrTryAgainLater, "%v (IPAM data in %s)", err, cfg.NetworkDir())
		}
		return fmt.Errorf("allocating pod address: %w", err)
	}
	success := false
	defer func() {
		if success {
			return
		}
		var fresh []netip.Addr
		for _, l := range leases {
			if l.Fresh {
				fresh = append(fresh, l.Addr)
			}
		}
		if len(fresh) == 0 {
			return
		}
		if !locked {
			if lerr := p.lock(st); lerr != nil {
				log.Error("cannot release addresses of failed ADD", zap.Error(lerr), zap.Any("addresses", fresh))
				return
			}
			locked = true
		}
		if _, rerr := alloc.ReleaseIfOwned(owner(args), fresh); rerr != nil {
			log.Error("releasing addresses of failed ADD", zap.Error(rerr))
		}
	}()

	br, err := p.ensureNode(cfg, log)
	if err != nil {
		return err
	}
	unlock()

	hostIf := wire.HostVethName(args.ContainerID, args.IfName)
	podCfg := wire.PodConfig{NetNS: podNS, IfName: args.IfName, HostIfName: hostIf, Bridge: cfg.Bridge, MTU: cfg.MTU}
	for _, l := range leases {
		podCfg.Addrs = append(podCfg.Addrs, netip.PrefixFrom(l.Addr, l.Pool.Subnet.Bits()))
		podCfg.Gateways = append(podCfg.Gateways, l.Pool.Gateway)
	}
	pod, err := wire.SetupPod(podCfg)
	if err != nil {
		return err
	}
	if pod.ReplacedStale {
		log.Warn("replaced a stale node-side veth of an earlier sandbox of this container", zap.String("host_ifname", hostIf))
	}

	result := buildResult(cfg, br, pod, args.Netns, leases)
	if err := types.PrintResult(result, cfg.Plugin.CNIVersion); err != nil {
		// The runtime never learns of this pod: undo the veth too.
		_ = wire.TeardownPod(args.Netns, args.IfName, hostIf)
		return err
	}
	success = true
	log.Debug("pod added", zap.Stringers("addresses", leaseAddrs(leases)))
	return nil
}

func leaseAddrs(ls []ipam.Lease) []netip.Addr {
	out := make([]netip.Addr, 0, len(ls))
	for _, l := range ls {
		out = append(out, l.Addr)
	}
	return out
}

// ensureNode makes the node-level pieces exist. It runs under the IPAM lock,
// which serialises it across concurrent plugin processes.
func (p *Plugin) ensureNode(cfg *config.Config, log *zap.Logger) (wire.Iface, error) {
	bcfg := wire.BridgeConfig{Name: cfg.Bridge, MTU: cfg.MTU}
	for _, r := range cfg.Ranges {
		bcfg.Gateways = append(bcfg.Gateways, netip.PrefixFrom(r.Gateway, r.Subnet.Bits()))
	}
	br, err := wire.EnsureBridge(bcfg)
	if err != nil {
		return wire.Iface{}, err
	}
	if changed, err := wire.EnsureBridgeNetfilter(); err != nil {
		log.Warn("cannot enable bridge netfilter; pod-to-Service traffic that lands on the same bridge may break", zap.Error(err))
	} else if len(changed) > 0 {
		log.Info("enabled bridge netfilter", zap.Strings("sysctls", changed))
	}
	if cfg.IPMasq {
		for _, r := range cfg.Ranges {
			t, err := p.newMasqTable(r.Is6())
			if err != nil {
				return wire.Iface{}, err
			}
			pol := masq.Policy{PodSubnet: r.Subnet, ClusterCIDRs: cfg.ClusterCIDRs, RandomFully: t.HasRandomFully()}
			if _, err := masq.Ensure(t, pol); err != nil {
				return wire.Iface{}, fmt.Errorf("ipMasq: %w", err)
			}
		}
	}
	return br, nil
}

func buildResult(cfg *config.Config, br wire.Iface, pod wire.Pod, netnsPath string, leases []ipam.Lease) *current.Result {
	r := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: br.Name, Mac: br.MAC},
			{Name: pod.Host.Name, Mac: pod.Host.MAC},
			{Name: pod.Container.Name, Mac: pod.Container.MAC, Sandbox: netnsPath},
		},
		DNS: cfg.Plugin.DNS,
	}
	for _, l := range leases {
		bits := l.Addr.BitLen()
		r.IPs = append(r.IPs, &current.IPConfig{
			Interface: current.Int(2),
			Address:   net.IPNet{IP: l.Addr.AsSlice(), Mask: net.CIDRMask(l.Pool.Subnet.Bits(), bits)},
			Gateway:   l.Pool.Gateway.AsSlice(),
		})
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if l.Addr.Is6() {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		r.Routes = append(r.Routes, &types.Route{
			Dst: net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(0, bits)},
			GW:  l.Pool.Gateway.AsSlice(),
		})
	}
	return r
}

// --- DEL --------------------------------------------------------------------

// Del removes the pod's interface and frees its addresses. Everything that
// is already gone (netns, interface, address) is success.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	cfg, err := config.Parse(args.StdinData)
	if err != nil {
		return configError(err)
	}
	// Interfaces first, then the address: the address must not be handed to
	// a new pod while the old interface may still answer for it.
	if err := wire.TeardownPod(args.Netns, args.IfName, wire.HostVethName(args.ContainerID, args.IfName)); err != nil {
		return err
	}
	st, alloc, err := p.lockedStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	defer st.Unlock()
	freed, err := alloc.Release(owner(args))
	if err != nil {
		return fmt.Errorf("releasing pod addresses: %w", err)
	}
	p.log.Debug("pod deleted", zap.String("container_id", args.ContainerID), zap.String("ifname", args.IfName), zap.Stringers("freed", freed))
	return nil
}

// --- CHECK ------------------------------------------------------------------

// Check compares the attachment the runtime remembers (prevResult) with the
// kernel and the IPAM store, and lists every difference.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	cfg, err := config.Parse(args.StdinData)
	if err != nil {
		return configError(err)
	}
	if cfg.Plugin.RawPrevResult == nil {
		return cniErr(types.ErrInvalidNetworkConfig, "CHECK needs prevResult (the result of ADD) in the config")
	}
	if err := version.ParsePrevResult(&cfg.Plugin); err != nil {
		return cniErr(types.ErrDecodingFailure, "parsing prevResult: %v", err)
	}
	prev, err := current.NewResultFromResult(cfg.Plugin.PrevResult)
	if err != nil {
		return cniErr(types.ErrDecodingFailure, "converting prevResult: %v", err)
	}
	podNS, err := openPodNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()

	hostIf := wire.HostVethName(args.ContainerID, args.IfName)
	obs, err := wire.Observe(cfg.Bridge, hostIf, podNS, args.IfName)
	if err != nil {
		return err
	}
	st, alloc, err := p.lockedStore(cfg)
	if err != nil {
		return err
	}
	held, err := alloc.Lookup(owner(args))
	st.Unlock()
	st.Close()
	if err != nil {
		return fmt.Errorf("reading IPAM reservations: %w", err)
	}
	var heldAddrs []netip.Addr
	for _, r := range held {
		heldAddrs = append(heldAddrs, r.Addr)
	}

	exp := expectationFrom(cfg, prev, args.IfName, hostIf, args.Netns)
	if diffs := Diff(exp, obs, heldAddrs); len(diffs) > 0 {
		return fmt.Errorf("podnet CHECK of %s/%s found %d problem(s): %s", args.ContainerID, args.IfName, len(diffs), strings.Join(diffs, "; "))
	}
	return nil
}

// --- STATUS -----------------------------------------------------------------

// Status answers "can an ADD succeed now?": the config is valid, the IPAM
// directory is usable, every pool has a free address, iptables is there when
// ipMasq needs it. Anything else is code 50 (plugin not available).
func (p *Plugin) Status(args *skel.CmdArgs) error {
	cfg, err := config.Parse(args.StdinData)
	if err != nil {
		return configError(err)
	}
	st, err := p.openStore(cfg.NetworkDir())
	if err != nil {
		return cniErr(types.ErrPluginNotAvailable, "IPAM data directory %s unusable: %v", cfg.NetworkDir(), err)
	}
	defer st.Close()
	if err := p.lock(st); err != nil {
		return cniErr(types.ErrPluginNotAvailable, "IPAM lock: %v", err)
	}
	usage, err := ipam.NewAllocator(ipam.AllocatorConfig{Store: st, Pools: pools(cfg)}).Usage()
	_ = st.Unlock()
	if err != nil {
		return cniErr(types.ErrPluginNotAvailable, "reading IPAM data in %s: %v", cfg.NetworkDir(), err)
	}
	for _, u := range usage {
		if u.Used >= u.Usable {
			return cniErr(types.ErrPluginNotAvailable, "pod subnet %s is exhausted: %d of %d addresses allocated", u.Pool.Subnet, u.Used, u.Usable)
		}
	}
	if cfg.IPMasq {
		for _, r := range cfg.Ranges {
			if _, err := p.newMasqTable(r.Is6()); err != nil {
				return cniErr(types.ErrPluginNotAvailable, "%v", err)
			}
		}
	}
	return nil
}

// --- GC ---------------------------------------------------------------------

// GC releases addresses of attachments the runtime no longer knows.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	cfg, err := config.Parse(args.StdinData)
	if err != nil {
		return configError(err)
	}
	valid := map[ipam.Owner]bool{}
	for _, a := range cfg.Plugin.ValidAttachments {
		valid[ipam.Owner{ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	st, alloc, err := p.lockedStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	defer st.Unlock()
	gone, err := alloc.GC(func(o ipam.Owner) bool { return valid[o] })
	for _, r := range gone {
		p.log.Info("released address of stale attachment", zap.Stringer("address", r.Addr), zap.String("container_id", r.Owner.ContainerID), zap.String("ifname", r.Owner.IfName))
	}
	return err
}

// StderrLogger is podnet's CNI-mode logger: warnings and errors on stderr,
// which runtimes put into their logs. Level via PODNET_LOG_LEVEL.
func StderrLogger() *zap.Logger {
	lvl := zap.WarnLevel
	if s := os.Getenv("PODNET_LOG_LEVEL"); s != "" {
		if l, err := zap.ParseAtomicLevel(s); err == nil {
			lvl = l.Level()
		}
	}
	c := zap.NewProductionConfig()
	c.Level = zap.NewAtomicLevelAt(lvl)
	c.OutputPaths = []string{"stderr"}
	c.Sampling = nil
	l, err := c.Build()
	if err != nil {
		return zap.NewNop()
	}
	return l.With(zap.String("component", "podnet"), zap.Int("pid", os.Getpid()))
}
