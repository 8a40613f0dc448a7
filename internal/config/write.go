package config

import (
	"fmt"
	"os"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"
)

// ToKubeProxyConfiguration expresses c as a kube-proxy configuration file,
// for --write-config-to and for showing the effective configuration. Loading
// the result gives back c, except for what the file format cannot say:
// kpr's own flags, a disabled health server, and the zero values kube-proxy
// replaces with defaults when it reads a file (iptables.minSyncPeriod 0,
// QPS 0, Burst 0, an empty content type).
func ToKubeProxyConfiguration(c *Config) *v1alpha1.KubeProxyConfiguration {
	k := &v1alpha1.KubeProxyConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: fileAPIVersion, Kind: fileKind},
	}
	if len(c.FeatureGates) > 0 {
		k.FeatureGates = make(map[string]bool, len(c.FeatureGates))
		for name, v := range c.FeatureGates {
			k.FeatureGates[name] = v
		}
	}
	k.ClientConnection.Kubeconfig = c.ClientConnection.Kubeconfig
	k.ClientConnection.AcceptContentTypes = c.ClientConnection.AcceptContentTypes
	k.ClientConnection.ContentType = c.ClientConnection.ContentType
	k.ClientConnection.QPS = c.ClientConnection.QPS
	k.ClientConnection.Burst = c.ClientConnection.Burst

	k.Logging.Verbosity = logsapi.VerbosityLevel(c.LogLevel)
	k.Logging.Format = "json"
	if c.LogFormat == LogFormatConsole {
		k.Logging.Format = "text"
	}

	k.HostnameOverride = c.HostnameOverride
	k.BindAddress = c.BindAddress.String()
	if c.HealthzBindAddress.IsValid() {
		k.HealthzBindAddress = c.HealthzBindAddress.String()
	}
	k.MetricsBindAddress = c.MetricsBindAddress.String()
	k.BindAddressHardFail = c.BindAddressHardFail
	k.EnableProfiling = c.EnableProfiling
	k.ShowHiddenMetricsForVersion = c.ShowHiddenMetricsForVersion

	k.Mode = v1alpha1.ProxyMode(c.Mode)
	k.IPTables.MasqueradeBit = ptrTo(c.IPTables.MasqueradeBit)
	k.IPTables.MasqueradeAll = c.IPTables.MasqueradeAll
	k.IPTables.LocalhostNodePorts = ptrTo(c.IPTables.LocalhostNodePorts)
	sync := metav1.Duration{Duration: c.SyncPeriod}
	minSync := metav1.Duration{Duration: c.MinSyncPeriod}
	if c.Mode == ModeIPVS {
		k.IPVS.SyncPeriod, k.IPVS.MinSyncPeriod = sync, minSync
	} else {
		k.IPTables.SyncPeriod, k.IPTables.MinSyncPeriod = sync, minSync
	}
	k.IPVS.Scheduler = c.IPVS.Scheduler
	for _, p := range c.IPVS.ExcludeCIDRs {
		k.IPVS.ExcludeCIDRs = append(k.IPVS.ExcludeCIDRs, p.String())
	}
	k.IPVS.StrictARP = c.IPVS.StrictARP
	k.IPVS.TCPTimeout.Duration = c.IPVS.TCPTimeout
	k.IPVS.TCPFinTimeout.Duration = c.IPVS.TCPFinTimeout
	k.IPVS.UDPTimeout.Duration = c.IPVS.UDPTimeout

	k.DetectLocalMode = v1alpha1.LocalMode(c.DetectLocal.Mode)
	k.DetectLocal.BridgeInterface = c.DetectLocal.BridgeInterface
	k.DetectLocal.InterfaceNamePrefix = c.DetectLocal.InterfaceNamePrefix
	cidrs := make([]string, len(c.DetectLocal.ClusterCIDRs))
	for i, p := range c.DetectLocal.ClusterCIDRs {
		cidrs[i] = p.String()
	}
	k.ClusterCIDR = strings.Join(cidrs, ",")
	if c.NodePortAddresses.Primary {
		k.NodePortAddresses = append(k.NodePortAddresses, "primary")
	}
	for _, p := range c.NodePortAddresses.CIDRs {
		k.NodePortAddresses = append(k.NodePortAddresses, p.String())
	}

	k.OOMScoreAdj = ptrTo(c.OOMScoreAdj)
	k.Conntrack.MaxPerCore = ptrTo(c.Conntrack.MaxPerCore)
	k.Conntrack.Min = ptrTo(c.Conntrack.Min)
	k.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: c.Conntrack.TCPEstablishedTimeout}
	k.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: c.Conntrack.TCPCloseWaitTimeout}
	k.Conntrack.TCPBeLiberal = c.Conntrack.TCPBeLiberal
	k.Conntrack.UDPTimeout.Duration = c.Conntrack.UDPTimeout
	k.Conntrack.UDPStreamTimeout.Duration = c.Conntrack.UDPStreamTimeout
	k.ConfigSyncPeriod.Duration = c.ConfigSyncPeriod
	return k
}

// MarshalKubeProxyConfiguration returns c as KubeProxyConfiguration YAML.
func MarshalKubeProxyConfiguration(c *Config) ([]byte, error) {
	return yaml.Marshal(ToKubeProxyConfiguration(c))
}

// WriteConfigFile writes c to path as KubeProxyConfiguration YAML
// (--write-config-to). The YAML is built before the file is touched, so a
// failure leaves an existing file as it was.
func WriteConfigFile(path string, c *Config) error {
	data, err := MarshalKubeProxyConfiguration(c)
	if err != nil {
		return fmt.Errorf("encoding the configuration: %w", err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("--write-config-to: %w", err)
	}
	return nil
}
