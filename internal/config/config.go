// Package config turns kube-proxy's command line and KubeProxyConfiguration
// file (kubeproxy.config.k8s.io/v1alpha1) into kpr's own typed, validated
// Config.
//
// kpr is a drop-in for kube-proxy v1.37, so the flags, the file format, the
// defaults and the precedence between them mirror kube-proxy's
// cmd/kube-proxy/app/options.go: with --config the file replaces every
// kube-proxy flag except the logging flags and --hostname-override (and the
// flags that are not configuration: --master, --cleanup, --init-only,
// --write-config-to). kpr's own flags (--iptables-backend, --takeover-*,
// --log-format) always come from the command line.
//
// What kpr does not implement is reported: an error when it would change
// how the selected proxy mode behaves, a Warning otherwise. Nothing is
// dropped silently.
package config

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"
)

// ProxyMode is the proxy backend.
type ProxyMode string

// The proxy modes kpr implements. kube-proxy's "nftables" and "kernelspace"
// are rejected with an error.
const (
	ModeIPTables ProxyMode = "iptables"
	ModeIPVS     ProxyMode = "ipvs"
)

// LocalMode is how traffic from local pods is recognised.
type LocalMode string

// The detect-local modes, spelled as kube-proxy spells them.
const (
	LocalModeClusterCIDR         LocalMode = "ClusterCIDR"
	LocalModeNodeCIDR            LocalMode = "NodeCIDR"
	LocalModeBridgeInterface     LocalMode = "BridgeInterface"
	LocalModeInterfaceNamePrefix LocalMode = "InterfaceNamePrefix"
)

// IPTablesBackend selects which iptables binaries kpr drives.
type IPTablesBackend string

// The iptables backends (--iptables-backend).
const (
	// IPTablesBackendAuto uses whichever backend the node already uses, as
	// kube-proxy's iptables wrapper detects it.
	IPTablesBackendAuto   IPTablesBackend = "auto"
	IPTablesBackendLegacy IPTablesBackend = "legacy"
	IPTablesBackendNFT    IPTablesBackend = "nft"
)

// LogFormat is the encoding of kpr's log lines (--log-format).
type LogFormat string

// The log formats.
const (
	LogFormatJSON    LogFormat = "json"
	LogFormatConsole LogFormat = "console"
)

// Config is kpr's effective configuration.
//
// Parse and Load build it once; nothing changes it afterwards. It is shared
// by pointer, so treat it as read-only: do not modify its slices or map (use
// Clone to get a copy you may change, e.g. in tests).
type Config struct {
	// ConfigFile is the --config path, or "" when the configuration came
	// from flags only.
	ConfigFile string
	// WriteConfigTo, when set, asks main to write this configuration as a
	// KubeProxyConfiguration file (WriteConfigFile) and exit.
	WriteConfigTo string
	// Cleanup asks main to remove kpr's rules (only kpr's) and exit.
	Cleanup bool
	// InitOnly asks main to do the steps that need full root privileges
	// (sysctls, conntrack limits) and exit.
	InitOnly bool

	Mode ProxyMode
	// HostnameOverride is the Node name to use, trimmed and lower-cased as
	// kube-proxy does; "" means the host name (see NodeName).
	HostnameOverride string
	// Master overrides the API server address in the kubeconfig.
	Master           string
	ClientConnection ClientConnection

	// BindAddress is kube-proxy's historical name for "the node's primary
	// IP override"; nothing binds to it. The unspecified address (0.0.0.0
	// or ::) means "detect it".
	BindAddress netip.Addr
	// HealthzBindAddress is where the health server listens; the zero
	// value (!IsValid()) means disabled.
	HealthzBindAddress netip.AddrPort
	// MetricsBindAddress is where the metrics server listens; always valid.
	MetricsBindAddress netip.AddrPort
	// BindAddressHardFail makes failure to bind the health or metrics
	// server fatal.
	BindAddressHardFail bool
	// EnableProfiling serves /debug/pprof on the metrics server.
	EnableProfiling bool
	// ShowHiddenMetricsForVersion is accepted for compatibility; kpr has no
	// hidden metrics.
	ShowHiddenMetricsForVersion string

	// SyncPeriod is the full-resync interval of the selected mode.
	SyncPeriod time.Duration
	// MinSyncPeriod is the minimum interval between syncs of the selected
	// mode; 0 means every change syncs at once.
	MinSyncPeriod time.Duration
	// ConfigSyncPeriod is the informers' resync interval.
	ConfigSyncPeriod time.Duration

	IPTables          IPTables
	IPVS              IPVS
	Conntrack         Conntrack
	DetectLocal       DetectLocal
	NodePortAddresses NodePortAddresses
	// OOMScoreAdj is written to /proc/self/oom_score_adj, in [-1000, 1000].
	OOMScoreAdj int32

	// FeatureGates are the gates set explicitly (flag or file), as given.
	FeatureGates map[string]bool
	// Features are the effective values of the gates kpr acts on.
	Features Features

	// LogLevel is the klog-style verbosity from --v / logging.verbosity:
	// 0 logs info and above, higher values add more detail.
	LogLevel  uint32
	LogFormat LogFormat

	// Takeover carries --takeover-kube-proxy and --takeover-dry-run.
	Takeover Takeover

	// Warnings are the findings that did not stop the configuration from
	// loading (ignored settings, deprecated flags, gates kpr does not
	// implement). main logs them once its logger exists.
	Warnings []Warning
}

// ClientConnection holds the API client settings.
type ClientConnection struct {
	Kubeconfig         string
	AcceptContentTypes string
	ContentType        string
	QPS                float32
	Burst              int32
}

// IPTables holds the iptables settings. MasqueradeBit and MasqueradeAll
// apply to the ipvs mode too, as in kube-proxy.
type IPTables struct {
	// MasqueradeBit is the fwmark bit (0..31) that marks packets for SNAT.
	MasqueradeBit int32
	// MasqueradeAll SNATs all traffic sent to Service cluster IPs.
	MasqueradeAll bool
	// LocalhostNodePorts allows NodePorts on 127.0.0.0/8 (iptables mode,
	// IPv4 only).
	LocalhostNodePorts bool
	// Backend is kpr's --iptables-backend.
	Backend IPTablesBackend
}

// MasqueradeMark is the fwmark value with only MasqueradeBit set.
func (t IPTables) MasqueradeMark() uint32 { return 1 << uint(t.MasqueradeBit) }

// IPVS holds the ipvs-mode settings.
type IPVS struct {
	// Scheduler is the IPVS scheduler; kube-proxy's "" is resolved to "rr".
	Scheduler string
	// ExcludeCIDRs are left alone when cleaning up IPVS services.
	ExcludeCIDRs []netip.Prefix
	// StrictARP sets arp_ignore=1 and arp_announce=2.
	StrictARP bool
	// Timeouts for IPVS connections; 0 leaves the kernel's value.
	TCPTimeout    time.Duration
	TCPFinTimeout time.Duration
	UDPTimeout    time.Duration
}

// Conntrack holds the conntrack sysctl settings. A zero duration or
// MaxPerCore leaves the kernel's value unchanged.
type Conntrack struct {
	// MaxPerCore is nf_conntrack_max per CPU; 0 leaves the limit (and Min
	// is ignored).
	MaxPerCore int32
	// Min is the lower bound for nf_conntrack_max.
	Min                   int32
	TCPEstablishedTimeout time.Duration
	TCPCloseWaitTimeout   time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal=1.
	TCPBeLiberal     bool
	UDPTimeout       time.Duration
	UDPStreamTimeout time.Duration
}

// DetectLocal says how traffic from this node's pods is recognised.
type DetectLocal struct {
	Mode LocalMode
	// ClusterCIDRs are the pod ranges, at most one per family (used by
	// LocalModeClusterCIDR).
	ClusterCIDRs []netip.Prefix
	// BridgeInterface is used by LocalModeBridgeInterface.
	BridgeInterface string
	// InterfaceNamePrefix is used by LocalModeInterfaceNamePrefix.
	InterfaceNamePrefix string
}

// ClusterCIDR returns the cluster CIDR of one family, if configured.
func (d DetectLocal) ClusterCIDR(ipv6 bool) (netip.Prefix, bool) {
	for _, p := range d.ClusterCIDRs {
		if p.Addr().Is6() == ipv6 {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// NodePortAddresses limits the node addresses NodePorts are served on.
// Neither Primary nor CIDRs set means every local address, as in kube-proxy's
// iptables and ipvs modes.
type NodePortAddresses struct {
	// Primary is kube-proxy's "primary" keyword: the node's primary IP of
	// each family (known only at run time; see Resolve).
	Primary bool
	// CIDRs are the given ranges, with the keywords "localhost"
	// (127.0.0.0/8, ::1/128) and "all" (0.0.0.0/0, ::/0) expanded.
	CIDRs []netip.Prefix
}

// IsZero reports whether NodePorts are not restricted at all.
func (n NodePortAddresses) IsZero() bool { return !n.Primary && len(n.CIDRs) == 0 }

// Resolve returns the ranges of one family that NodePorts are served on,
// given the node's primary IP of that family (the zero Addr if it has none).
// Like kube-proxy, "primary" is skipped when the node IP is missing or
// loopback, and a family with no range at all gets its whole space, so a
// one-family setting does not close NodePorts on the other family.
func (n NodePortAddresses) Resolve(ipv6 bool, nodeIP netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	if n.Primary && nodeIP.IsValid() && !nodeIP.IsLoopback() && nodeIP.Is6() == ipv6 {
		out = append(out, netip.PrefixFrom(nodeIP, nodeIP.BitLen()))
	}
	for _, p := range n.CIDRs {
		if p.Addr().Is6() == ipv6 {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		if ipv6 {
			return []netip.Prefix{netip.PrefixFrom(netip.IPv6Unspecified(), 0)}
		}
		return []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0)}
	}
	return out
}

// SplitByFamily splits prefixes into IPv4 and IPv6 ones, keeping order.
func SplitByFamily(prefixes []netip.Prefix) (v4, v6 []netip.Prefix) {
	for _, p := range prefixes {
		if p.Addr().Is6() {
			v6 = append(v6, p)
		} else {
			v4 = append(v4, p)
		}
	}
	return v4, v6
}

// Features are the effective values of the feature gates kpr acts on.
type Features struct {
	// AllowServiceExternalIPs: when false, no rules are programmed for
	// Service externalIPs (kube-proxy's behaviour with the gate off).
	AllowServiceExternalIPs bool
}

// Takeover holds kpr's takeover flags (used by the takeover procedure).
type Takeover struct {
	// Enabled is --takeover-kube-proxy.
	Enabled bool
	// DryRun is --takeover-dry-run.
	DryRun bool
}

// NodeName returns the Node name kpr runs as: HostnameOverride, or else the
// host name, lower-cased and trimmed as kube-proxy does.
func (c *Config) NodeName() (string, error) {
	if c.HostnameOverride != "" {
		return c.HostnameOverride, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", err
	}
	h = strings.ToLower(strings.TrimSpace(h))
	if h == "" {
		return "", errEmptyHostname
	}
	return h, nil
}

// Clone returns a deep copy that the caller may modify.
func (c *Config) Clone() *Config {
	out := *c
	out.IPVS.ExcludeCIDRs = slices.Clone(c.IPVS.ExcludeCIDRs)
	out.DetectLocal.ClusterCIDRs = slices.Clone(c.DetectLocal.ClusterCIDRs)
	out.NodePortAddresses.CIDRs = slices.Clone(c.NodePortAddresses.CIDRs)
	out.Warnings = slices.Clone(c.Warnings)
	if c.FeatureGates != nil {
		out.FeatureGates = make(map[string]bool, len(c.FeatureGates))
		for k, v := range c.FeatureGates {
			out.FeatureGates[k] = v
		}
	}
	return &out
}
