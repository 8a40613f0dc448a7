package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// comparable drops what a KubeProxyConfiguration file does not carry:
// where the configuration came from, the actions, kpr's own flags and the
// warnings.
func comparable(c *Config) *Config {
	out := c.Clone()
	out.ConfigFile, out.WriteConfigTo, out.Cleanup, out.InitOnly, out.Master = "", "", false, false, ""
	out.IPTables.Backend = IPTablesBackendAuto
	out.Takeover = Takeover{}
	out.Warnings = nil
	return out
}

// --write-config-to writes a file that loads back into the same
// configuration, whatever the flags were.
func TestWriteConfigRoundTrip(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"--proxy-mode=ipvs", "--ipvs-scheduler=wrr", "--ipvs-sync-period=1m", "--ipvs-min-sync-period=3s",
			"--ipvs-exclude-cidrs=203.0.113.0/24", "--ipvs-strict-arp", "--ipvs-tcp-timeout=10m",
			"--ipvs-tcpfin-timeout=1m", "--ipvs-udp-timeout=1m"},
		{"--cluster-cidr=198.18.0.0/16,2001:db8:10::/56", "--nodeport-addresses=primary,192.0.2.0/24,localhost",
			"--bind-address=2001:db8:1::5", "--healthz-bind-address=[::]:10256", "--metrics-bind-address=[::1]:10249"},
		{"--masquerade-all", "--iptables-masquerade-bit=3", "--iptables-localhost-nodeports=false",
			"--iptables-sync-period=45s", "--iptables-min-sync-period=5s"},
		{"--conntrack-max-per-core=0", "--conntrack-min=1", "--conntrack-tcp-timeout-established=0",
			"--conntrack-tcp-timeout-close-wait=30m", "--conntrack-tcp-be-liberal", "--conntrack-udp-timeout=10s",
			"--conntrack-udp-timeout-stream=1m"},
		{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0"},
		{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth", "--hostname-override=Node-7"},
		{"--kubeconfig=/k", "--kube-api-qps=20", "--kube-api-burst=40", "--kube-api-content-type=application/json",
			"--oom-score-adj=-10", "--config-sync-period=3m", "--profiling", "--bind-address-hard-fail",
			"--show-hidden-metrics-for-version=1.36", "--feature-gates=AllowServiceExternalIPs=false,LoggingAlphaOptions=true",
			"-v=6", "--logging-format=text"},
		{"--log-format=console", "--iptables-backend=nft", "--takeover-kube-proxy"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "written.yaml")
			c1 := mustParse(t, append(args, "--write-config-to="+out)...)
			if c1.WriteConfigTo != out {
				t.Fatalf("WriteConfigTo = %q", c1.WriteConfigTo)
			}
			if err := WriteConfigFile(c1.WriteConfigTo, c1); err != nil {
				t.Fatal(err)
			}
			c2, err := Load(out)
			if err != nil {
				data, _ := os.ReadFile(out)
				t.Fatalf("loading the written file: %v\n%s", err, data)
			}
			sameConfig(t, comparable(c2), comparable(c1))
		})
	}
}

// A loaded file written back and loaded again does not change.
func TestWriteConfigRoundTripFiles(t *testing.T) {
	for _, p := range []string{"testdata/kubeadm-v1.3x-config.conf", "testdata/dual-stack-ipvs.yaml", "testdata/full.json"} {
		t.Run(p, func(t *testing.T) {
			c1, err := Load(p)
			if err != nil {
				t.Fatal(err)
			}
			data, err := MarshalKubeProxyConfiguration(c1)
			if err != nil {
				t.Fatal(err)
			}
			c2, err := Load(writeFile(t, "again.yaml", string(data)))
			if err != nil {
				t.Fatalf("%v\n%s", err, data)
			}
			sameConfig(t, comparable(c2), comparable(c1))
		})
	}
}

func TestToKubeProxyConfiguration(t *testing.T) {
	c := mustParse(t, "--proxy-mode=ipvs", "--ipvs-sync-period=2m", "--ipvs-min-sync-period=5s",
		"--nodeport-addresses=primary,192.0.2.0/24", "--cluster-cidr=198.18.0.0/16,2001:db8:10::/56", "--healthz-port=0")
	k := ToKubeProxyConfiguration(c)
	if k.APIVersion != "kubeproxy.config.k8s.io/v1alpha1" || k.Kind != "KubeProxyConfiguration" {
		t.Errorf("type %s/%s", k.APIVersion, k.Kind)
	}
	if k.Mode != "ipvs" || k.IPVS.SyncPeriod.Duration != 2*time.Minute || k.IPVS.MinSyncPeriod.Duration != 5*time.Second {
		t.Errorf("mode %q ipvs sync %v/%v", k.Mode, k.IPVS.SyncPeriod, k.IPVS.MinSyncPeriod)
	}
	// The sync periods go to the selected mode's section only.
	if k.IPTables.SyncPeriod.Duration != 0 {
		t.Errorf("iptables.syncPeriod = %v in ipvs mode", k.IPTables.SyncPeriod)
	}
	if strings.Join(k.NodePortAddresses, ",") != "primary,192.0.2.0/24" {
		t.Errorf("nodePortAddresses = %q", k.NodePortAddresses)
	}
	if k.ClusterCIDR != "198.18.0.0/16,2001:db8:10::/56" {
		t.Errorf("clusterCIDR = %q", k.ClusterCIDR)
	}
	// A disabled health server has no file form: it is left empty.
	if k.HealthzBindAddress != "" || k.MetricsBindAddress != "127.0.0.1:10249" {
		t.Errorf("healthz %q metrics %q", k.HealthzBindAddress, k.MetricsBindAddress)
	}
	if k.Logging.Format != "json" {
		t.Errorf("logging.format = %q", k.Logging.Format)
	}

	data, err := MarshalKubeProxyConfiguration(c)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	if m["apiVersion"] != "kubeproxy.config.k8s.io/v1alpha1" || m["kind"] != "KubeProxyConfiguration" || m["mode"] != "ipvs" {
		t.Errorf("YAML head: %v %v %v", m["apiVersion"], m["kind"], m["mode"])
	}
}

func TestWriteConfigFileError(t *testing.T) {
	c := mustParse(t)
	err := WriteConfigFile(filepath.Join(t.TempDir(), "missing-dir", "out.yaml"), c)
	if err == nil || !strings.Contains(err.Error(), "--write-config-to") {
		t.Fatalf("error = %v", err)
	}
}

// kube-proxy's own --write-config-to output (every field, defaults filled
// in, logging.format text) loads without complaint.
func TestLoadKubeProxyWrittenConfig(t *testing.T) {
	p := fileWith(t, `bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig: ""
  qps: 5
clusterCIDR: 198.18.0.0/16
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpBeLiberal: false
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ClusterCIDR
enableProfiling: false
healthzBindAddress: 0.0.0.0:10256
hostnameOverride: ""
iptables:
  localhostNodePorts: true
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
logging:
  flushFrequency: 5s
  format: text
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: 127.0.0.1:10249
mode: iptables
nftables:
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: -999
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
`)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	want := wantDefaults()
	want.ConfigFile = p
	want.DetectLocal.ClusterCIDRs = prefixes("198.18.0.0/16")
	want.LogFormat = LogFormatConsole
	sameConfig(t, c, want)
	if len(c.Warnings) != 0 {
		t.Errorf("warnings: %v", c.Warnings)
	}
}
