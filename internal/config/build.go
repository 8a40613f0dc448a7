package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"k8s.io/kube-proxy/config/v1alpha1"
)

// builder turns a defaulted KubeProxyConfiguration into a Config, applying
// kube-proxy's validation and kpr's support rules. It collects every error
// and warning instead of stopping at the first.
type builder struct {
	// name turns a file path ("iptables.masqueradeBit") into what the
	// operator wrote: the flag when the value came from the command line.
	name  func(path string) string
	errs  []*FieldError
	warns []Warning
}

func (b *builder) fail(path string, value any, detail string) {
	b.errs = append(b.errs, &FieldError{Field: b.name(path), Value: value, Detail: detail})
}

func (b *builder) warn(path, msg string) {
	b.warns = append(b.warns, Warning{Field: b.name(path), Message: msg})
}

// The IPVS schedulers of the Linux kernel (net/netfilter/ipvs/ip_vs_*.c).
// kube-proxy fails at start-up when the scheduler's module is missing; kpr
// rejects a name that can never exist before it touches anything.
func isIPVSScheduler(s string) bool {
	switch s {
	case "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos":
		return true
	}
	return false
}

// build converts kpc (already defaulted) into a Config.
func (b *builder) build(kpc *v1alpha1.KubeProxyConfiguration) *Config {
	c := &Config{}

	features, ipvsAllowed := b.checkFeatureGates(kpc.FeatureGates)
	c.Features = features
	if len(kpc.FeatureGates) > 0 {
		c.FeatureGates = make(map[string]bool, len(kpc.FeatureGates))
		for k, v := range kpc.FeatureGates {
			c.FeatureGates[k] = v
		}
	}

	b.buildMode(c, kpc, ipvsAllowed)
	b.buildSync(c, kpc)
	b.buildIPTables(c, kpc)
	b.buildIPVS(c, kpc)
	b.buildConntrack(c, kpc)
	b.buildAddresses(c, kpc)
	b.buildNodePortAddresses(c, kpc)
	b.buildDetectLocal(c, kpc)
	b.buildLogging(c, kpc)
	b.checkOtherPlatforms(kpc)

	if h := kpc.HostnameOverride; h != "" {
		c.HostnameOverride = strings.ToLower(strings.TrimSpace(h))
		if c.HostnameOverride == "" {
			b.fail("hostnameOverride", h, "must not be blank")
		}
	}

	cc := kpc.ClientConnection
	c.ClientConnection = ClientConnection{
		Kubeconfig:         cc.Kubeconfig,
		AcceptContentTypes: cc.AcceptContentTypes,
		ContentType:        cc.ContentType,
		QPS:                cc.QPS,
		Burst:              cc.Burst,
	}
	if cc.Burst < 0 {
		b.fail("clientConnection.burst", cc.Burst, "must be greater than or equal to 0")
	}

	c.ConfigSyncPeriod = kpc.ConfigSyncPeriod.Duration
	if c.ConfigSyncPeriod <= 0 {
		b.fail("configSyncPeriod", c.ConfigSyncPeriod, "must be greater than 0")
	}

	c.OOMScoreAdj = deref(kpc.OOMScoreAdj, defaultOOMScoreAdj)
	if c.OOMScoreAdj < -1000 || c.OOMScoreAdj > 1000 {
		b.fail("oomScoreAdj", c.OOMScoreAdj, "must be within the range [-1000, 1000]")
	}

	c.BindAddressHardFail = kpc.BindAddressHardFail
	c.EnableProfiling = kpc.EnableProfiling
	c.ShowHiddenMetricsForVersion = kpc.ShowHiddenMetricsForVersion
	if v := kpc.ShowHiddenMetricsForVersion; v != "" {
		if v != showHiddenMetricsVersion {
			b.fail("showHiddenMetricsForVersion", v, "must be omitted or have the value '"+showHiddenMetricsVersion+"'; only the previous minor version is allowed")
		} else {
			b.warn("showHiddenMetricsForVersion", "accepted; kpr has no hidden metrics, so this shows nothing more")
		}
	}
	if kpc.PortRange != "" {
		b.warn("portRange", "ignored: it configured the removed userspace proxy (kube-proxy ignores it too)")
	}
	return c
}

// showHiddenMetricsVersion is the one value kube-proxy v1.37 accepts: the
// previous minor release.
const showHiddenMetricsVersion = "1.36"

func (b *builder) buildMode(c *Config, kpc *v1alpha1.KubeProxyConfiguration, ipvsAllowed bool) {
	c.Mode = ModeIPTables
	switch mode := string(kpc.Mode); mode {
	case "", "iptables":
		// Empty is kube-proxy's Linux default.
	case "ipvs":
		c.Mode = ModeIPVS
		if !ipvsAllowed {
			b.fail("mode", mode, "the ipvs mode is disabled by the feature gate KubeProxyIPVS=false")
		}
	case "nftables":
		b.fail("mode", mode, "the nftables mode is not supported by kpr; kpr implements iptables (the default) and ipvs")
	case "kernelspace":
		b.fail("mode", mode, "kernelspace is kube-proxy's Windows mode and is not supported by kpr; kpr implements iptables (the default) and ipvs")
	default:
		b.fail("mode", mode, `must be "iptables" or "ipvs" (empty means iptables)`)
	}
}

// buildSync takes the sync periods from the selected mode's section, as
// kube-proxy's conversion to its internal configuration does.
func (b *builder) buildSync(c *Config, kpc *v1alpha1.KubeProxyConfiguration) {
	section := "iptables"
	sync, minSync := kpc.IPTables.SyncPeriod.Duration, kpc.IPTables.MinSyncPeriod.Duration
	if c.Mode == ModeIPVS {
		section = "ipvs"
		sync, minSync = kpc.IPVS.SyncPeriod.Duration, kpc.IPVS.MinSyncPeriod.Duration
	}
	c.SyncPeriod, c.MinSyncPeriod = sync, minSync
	if sync <= 0 {
		b.fail(section+".syncPeriod", sync, "must be greater than 0")
	}
	if minSync < 0 {
		b.fail(section+".minSyncPeriod", minSync, "must be greater than or equal to 0")
	}
	if minSync > sync {
		b.fail(section+".syncPeriod", sync, fmt.Sprintf("must be greater than or equal to %s (%s)", b.name(section+".minSyncPeriod"), minSync))
	}
}

func (b *builder) buildIPTables(c *Config, kpc *v1alpha1.KubeProxyConfiguration) {
	ipt := kpc.IPTables
	c.IPTables = IPTables{
		MasqueradeBit:      deref(ipt.MasqueradeBit, defaultMasqueradeBit),
		MasqueradeAll:      ipt.MasqueradeAll,
		LocalhostNodePorts: deref(ipt.LocalhostNodePorts, true),
		Backend:            IPTablesBackendAuto,
	}
	// kube-proxy checks the bit whatever the mode.
	if bit := c.IPTables.MasqueradeBit; bit < 0 || bit > 31 {
		b.fail("iptables.masqueradeBit", bit, "must be within the range [0, 31]")
	}
	if c.Mode == ModeIPVS {
		// Settings only the iptables mode reads: ignored, as in kube-proxy.
		if d := ipt.SyncPeriod.Duration; d != 0 && d != defaultSyncPeriod {
			b.warn("iptables.syncPeriod", "ignored: applies only to mode iptables (the ipvs mode uses ipvs.syncPeriod)")
		}
		if d := ipt.MinSyncPeriod.Duration; d != 0 && d != defaultMinSyncPeriod {
			b.warn("iptables.minSyncPeriod", "ignored: applies only to mode iptables (the ipvs mode uses ipvs.minSyncPeriod)")
		}
		if !c.IPTables.LocalhostNodePorts {
			b.warn("iptables.localhostNodePorts", "ignored: applies only to mode iptables (the ipvs mode never serves NodePorts on localhost)")
		}
	}
}

func (b *builder) buildIPVS(c *Config, kpc *v1alpha1.KubeProxyConfiguration) {
	ipvs := kpc.IPVS
	selected := c.Mode == ModeIPVS
	// problem reports a bad value: an error in ipvs mode; otherwise
	// kube-proxy does not look at the section, so neither do we, beyond a
	// warning. The value is then left at its zero.
	problem := func(path string, value any, detail string) {
		if selected {
			b.fail(path, value, detail)
		} else {
			b.warn(path, fmt.Sprintf("ignored: applies only to mode ipvs, and %s (got %s)", detail, formatValue(value)))
		}
	}
	ignored := func(path string) {
		if !selected {
			b.warn(path, "ignored: applies only to mode ipvs")
		}
	}

	c.IPVS.Scheduler = ipvs.Scheduler
	switch {
	case ipvs.Scheduler == "" || ipvs.Scheduler == defaultIPVSScheduler:
		c.IPVS.Scheduler = defaultIPVSScheduler
	case !isIPVSScheduler(ipvs.Scheduler):
		problem("ipvs.scheduler", ipvs.Scheduler, "is not an IPVS scheduler of the Linux kernel (rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos)")
		c.IPVS.Scheduler = defaultIPVSScheduler
	default:
		ignored("ipvs.scheduler")
	}

	if !selected {
		if d := ipvs.SyncPeriod.Duration; d != 0 && d != defaultSyncPeriod {
			ignored("ipvs.syncPeriod")
		}
		if d := ipvs.MinSyncPeriod.Duration; d != 0 && d != defaultMinSyncPeriod {
			ignored("ipvs.minSyncPeriod")
		}
	}

	for i, s := range ipvs.ExcludeCIDRs {
		p, err := parseCIDR(s)
		if err != nil {
			problem(fmt.Sprintf("ipvs.excludeCIDRs[%d]", i), s, "must be a valid CIDR")
			continue
		}
		c.IPVS.ExcludeCIDRs = append(c.IPVS.ExcludeCIDRs, p)
	}
	if len(c.IPVS.ExcludeCIDRs) > 0 {
		ignored("ipvs.excludeCIDRs")
	}

	c.IPVS.StrictARP = ipvs.StrictARP
	if ipvs.StrictARP {
		ignored("ipvs.strictARP")
	}

	for _, t := range []struct {
		path string
		in   time.Duration
		out  *time.Duration
	}{
		{"ipvs.tcpTimeout", ipvs.TCPTimeout.Duration, &c.IPVS.TCPTimeout},
		{"ipvs.tcpFinTimeout", ipvs.TCPFinTimeout.Duration, &c.IPVS.TCPFinTimeout},
		{"ipvs.udpTimeout", ipvs.UDPTimeout.Duration, &c.IPVS.UDPTimeout},
	} {
		switch {
		case t.in < 0:
			problem(t.path, t.in, "must be greater than or equal to 0")
		case t.in > 0:
			*t.out = t.in
			ignored(t.path)
		}
	}
}

func (b *builder) buildConntrack(c *Config, kpc *v1alpha1.KubeProxyConfiguration) {
	ct := kpc.Conntrack
	c.Conntrack = Conntrack{
		MaxPerCore:   deref(ct.MaxPerCore, defaultConntrackMaxPerCor),
		Min:          deref(ct.Min, defaultConntrackMin),
		TCPBeLiberal: ct.TCPBeLiberal,
	}
	if c.Conntrack.MaxPerCore < 0 {
		b.fail("conntrack.maxPerCore", c.Conntrack.MaxPerCore, "must be greater than or equal to 0")
	}
	if c.Conntrack.Min < 0 {
		b.fail("conntrack.min", c.Conntrack.Min, "must be greater than or equal to 0")
	}
	established, closeWait := defaultTCPEstablished, defaultTCPCloseWait
	if ct.TCPEstablishedTimeout != nil {
		established = ct.TCPEstablishedTimeout.Duration
	}
	if ct.TCPCloseWaitTimeout != nil {
		closeWait = ct.TCPCloseWaitTimeout.Duration
	}
	for _, t := range []struct {
		path string
		in   time.Duration
		out  *time.Duration
	}{
		{"conntrack.tcpEstablishedTimeout", established, &c.Conntrack.TCPEstablishedTimeout},
		{"conntrack.tcpCloseWaitTimeout", closeWait, &c.Conntrack.TCPCloseWaitTimeout},
		{"conntrack.udpTimeout", ct.UDPTimeout.Duration, &c.Conntrack.UDPTimeout},
		{"conntrack.udpStreamTimeout", ct.UDPStreamTimeout.Duration, &c.Conntrack.UDPStreamTimeout},
	} {
		*t.out = t.in
		if t.in < 0 {
			b.fail(t.path, t.in, "must be greater than or equal to 0")
		}
	}
}

func (b *builder) buildAddresses(c *Config, kpc *v1alpha1.KubeProxyConfiguration) {
	if ip, ok := parseIP(kpc.BindAddress); ok {
		c.BindAddress = ip
	} else {
		b.fail("bindAddress", kpc.BindAddress, "not a valid IP address")
	}
	// An empty health address disables the health server (only reachable
	// with --healthz-port=0: a file's empty value is defaulted).
	if kpc.HealthzBindAddress != "" {
		ap, err := parseHostPort(kpc.HealthzBindAddress)
		if err != nil {
			b.fail("healthzBindAddress", kpc.HealthzBindAddress, err.Error())
		}
		c.HealthzBindAddress = ap
	}
	ap, err := parseHostPort(kpc.MetricsBindAddress)
	if err != nil {
		b.fail("metricsBindAddress", kpc.MetricsBindAddress, err.Error())
	}
	c.MetricsBindAddress = ap
}

// The ranges kube-proxy's nodePortAddresses keywords expand to.
func loopbackPrefixes() []netip.Prefix {
	return []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{127}), 8), netip.PrefixFrom(netip.IPv6Loopback(), 128)}
}

func allPrefixes() []netip.Prefix {
	return []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0), netip.PrefixFrom(netip.IPv6Unspecified(), 0)}
}

func (b *builder) buildNodePortAddresses(c *Config, kpc *v1alpha1.KubeProxyConfiguration) {
	seen := map[string]bool{}
	for i, s := range kpc.NodePortAddresses {
		path := fmt.Sprintf("nodePortAddresses[%d]", i)
		switch s {
		case "primary", "localhost", "all":
			if seen[s] {
				b.fail(path, s, "duplicate keyword")
				continue
			}
			seen[s] = true
			switch s {
			case "primary":
				c.NodePortAddresses.Primary = true
			case "localhost":
				c.NodePortAddresses.CIDRs = append(c.NodePortAddresses.CIDRs, loopbackPrefixes()...)
			case "all":
				c.NodePortAddresses.CIDRs = append(c.NodePortAddresses.CIDRs, allPrefixes()...)
			}
		default:
			p, err := parseCIDR(s)
			if err != nil {
				b.fail(path, s, "must be a valid CIDR or one of the keywords 'primary', 'localhost', 'all'")
				continue
			}
			c.NodePortAddresses.CIDRs = append(c.NodePortAddresses.CIDRs, p)
		}
	}
}

func (b *builder) buildDetectLocal(c *Config, kpc *v1alpha1.KubeProxyConfiguration) {
	d := &c.DetectLocal
	d.Mode = LocalMode(kpc.DetectLocalMode)
	if d.Mode == "" {
		d.Mode = LocalModeClusterCIDR
	}
	d.BridgeInterface = kpc.DetectLocal.BridgeInterface
	d.InterfaceNamePrefix = kpc.DetectLocal.InterfaceNamePrefix

	switch d.Mode {
	case LocalModeClusterCIDR, LocalModeNodeCIDR, LocalModeBridgeInterface, LocalModeInterfaceNamePrefix:
	default:
		b.fail("detectLocalMode", string(d.Mode), "must be one of ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix")
	}

	// kube-proxy validates the cluster CIDRs only when they are used.
	used := d.Mode == LocalModeClusterCIDR
	problem := func(value any, detail string) {
		if used {
			b.fail("clusterCIDR", value, detail)
		} else {
			b.warn("clusterCIDR", fmt.Sprintf("ignored: %s (got %s)", detail, formatValue(value)))
		}
	}
	if kpc.ClusterCIDR != "" {
		parts := strings.Split(kpc.ClusterCIDR, ",")
		if len(parts) > 2 {
			problem(kpc.ClusterCIDR, "must be a single CIDR or a dual-stack pair of CIDRs (e.g. 198.18.0.0/16,2001:db8:10::/56)")
		} else {
			var cidrs []netip.Prefix
			for _, s := range parts {
				p, err := parseCIDR(s)
				if err != nil {
					problem(s, "must be a valid CIDR (e.g. 198.18.0.0/16 or 2001:db8:10::/56)")
					continue
				}
				cidrs = append(cidrs, p)
			}
			if len(cidrs) == 2 && cidrs[0].Addr().Is6() == cidrs[1].Addr().Is6() {
				problem(kpc.ClusterCIDR, "two CIDRs must be a dual-stack pair (one IPv4, one IPv6)")
				cidrs = nil
			}
			d.ClusterCIDRs = cidrs
		}
	}

	modeName := b.name("detectLocalMode")
	switch d.Mode {
	case LocalModeBridgeInterface:
		if d.BridgeInterface == "" {
			b.fail("detectLocal.bridgeInterface", d.BridgeInterface, "must be set when "+modeName+" is BridgeInterface")
		}
	case LocalModeInterfaceNamePrefix:
		if d.InterfaceNamePrefix == "" {
			b.fail("detectLocal.interfaceNamePrefix", d.InterfaceNamePrefix, "must be set when "+modeName+" is InterfaceNamePrefix")
		}
	case LocalModeClusterCIDR:
		if kpc.ClusterCIDR == "" {
			b.warn("clusterCIDR", "not set: with "+modeName+" ClusterCIDR no traffic is treated as local (as in kube-proxy)")
		}
	}
	if d.Mode != LocalModeBridgeInterface && d.BridgeInterface != "" {
		b.warn("detectLocal.bridgeInterface", "ignored: used only when "+modeName+" is BridgeInterface")
	}
	if d.Mode != LocalModeInterfaceNamePrefix && d.InterfaceNamePrefix != "" {
		b.warn("detectLocal.interfaceNamePrefix", "ignored: used only when "+modeName+" is InterfaceNamePrefix")
	}
	if !used && len(d.ClusterCIDRs) > 0 {
		b.warn("clusterCIDR", "not used to detect local traffic: "+modeName+" is "+string(d.Mode))
	}
}

func (b *builder) buildLogging(c *Config, kpc *v1alpha1.KubeProxyConfiguration) {
	lg := kpc.Logging
	c.LogLevel = uint32(lg.Verbosity)
	c.LogFormat = LogFormatJSON
	switch lg.Format {
	case "", "json":
	case "text":
		c.LogFormat = LogFormatConsole
	default:
		b.fail("logging.format", lg.Format, `must be "text" or "json"`)
	}
	if len(lg.VModule) > 0 {
		b.warn("logging.vmodule", "not implemented by kpr, ignored: kpr has one verbosity for all of its code")
	}
	if f := lg.FlushFrequency.Duration.Duration; f != 0 && f != defaultLogFlushFrequency {
		b.warn("logging.flushFrequency", "ignored: kpr does not buffer log lines")
	}
	for _, o := range []struct {
		format      string
		splitStream bool
		bufferZero  bool
	}{
		{"text", lg.Options.Text.SplitStream, lg.Options.Text.InfoBufferSize.IsZero()},
		{"json", lg.Options.JSON.SplitStream, lg.Options.JSON.InfoBufferSize.IsZero()},
	} {
		if o.splitStream {
			b.warn("logging.options."+o.format+".splitStream", "not implemented by kpr, ignored: kpr logs to one stream")
		}
		if !o.bufferZero {
			b.warn("logging.options."+o.format+".infoBufferSize", "not implemented by kpr, ignored: kpr does not buffer log lines")
		}
	}
}

// checkOtherPlatforms warns about settings of modes kpr never runs: kube-proxy
// on Linux ignores them too, so they are no error, but they are not
// silently dropped either.
func (b *builder) checkOtherPlatforms(kpc *v1alpha1.KubeProxyConfiguration) {
	nft := kpc.NFTables
	if nft.MasqueradeBit != nil && *nft.MasqueradeBit != defaultMasqueradeBit {
		b.warn("nftables.masqueradeBit", "ignored: applies only to mode nftables")
	}
	if nft.MasqueradeAll {
		b.warn("nftables.masqueradeAll", "ignored: applies only to mode nftables (use iptables.masqueradeAll)")
	}
	if d := nft.SyncPeriod.Duration; d != 0 && d != defaultSyncPeriod {
		b.warn("nftables.syncPeriod", "ignored: applies only to mode nftables")
	}
	if d := nft.MinSyncPeriod.Duration; d != 0 && d != defaultMinSyncPeriod {
		b.warn("nftables.minSyncPeriod", "ignored: applies only to mode nftables")
	}
	if kpc.Winkernel != (v1alpha1.KubeProxyWinkernelConfiguration{}) {
		b.warn("winkernel", "ignored: settings of kube-proxy's Windows (kernelspace) mode")
	}
	if kpc.WindowsRunAsService {
		b.warn("windowsRunAsService", "ignored: Windows only")
	}
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
