package config

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// The kube-proxy ConfigMap kubeadm v1.3x writes (every field, most at zero)
// must load unchanged and mean kube-proxy's defaults.
func TestLoadKubeadmConfig(t *testing.T) {
	c, err := Load("testdata/kubeadm-v1.3x-config.conf")
	if err != nil {
		t.Fatal(err)
	}
	want := wantDefaults()
	want.ConfigFile = "testdata/kubeadm-v1.3x-config.conf"
	want.ClientConnection.Kubeconfig = "/var/lib/kube-proxy/kubeconfig.conf"
	want.DetectLocal.ClusterCIDRs = prefixes("198.18.0.0/16")
	sameConfig(t, c, want)
	if len(c.Warnings) != 0 {
		t.Errorf("warnings for a stock kubeadm file: %v", c.Warnings)
	}
}

// kubeadm has written featureGates: {} in some releases and mode: iptables
// since it stopped leaving the mode empty.
func TestLoadKubeadmConfigVariants(t *testing.T) {
	data, err := os.ReadFile("testdata/kubeadm-v1.3x-config.conf")
	if err != nil {
		t.Fatal(err)
	}
	base := string(data)
	for name, edit := range map[string]func(string) string{
		"featureGates {}": func(s string) string { return s + "featureGates: {}\n" },
		"mode iptables":   func(s string) string { return strings.Replace(s, `mode: ""`, "mode: iptables", 1) },
	} {
		t.Run(name, func(t *testing.T) {
			p := writeFile(t, "config.conf", edit(base))
			c, err := Load(p)
			if err != nil {
				t.Fatal(err)
			}
			want := wantDefaults()
			want.ConfigFile = p
			want.ClientConnection.Kubeconfig = "/var/lib/kube-proxy/kubeconfig.conf"
			want.DetectLocal.ClusterCIDRs = prefixes("198.18.0.0/16")
			sameConfig(t, c, want)
		})
	}
}

// Older kubeadm wrote udpIdleTimeout, which kube-proxy v1.37 no longer has
// but still loads (leniently): kpr loads it with a warning.
func TestLoadOldKubeadmConfig(t *testing.T) {
	c, err := Load("testdata/kubeadm-v1.2x-config.conf")
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != ModeIPTables || len(c.DetectLocal.ClusterCIDRs) != 1 {
		t.Errorf("mode %q, cluster CIDRs %v", c.Mode, c.DetectLocal.ClusterCIDRs)
	}
	wantWarning(t, c, "udpIdleTimeout", "removed")
}

func TestLoadDualStackIPVS(t *testing.T) {
	c, err := Load("testdata/dual-stack-ipvs.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := wantDefaults()
	want.ConfigFile = "testdata/dual-stack-ipvs.yaml"
	want.Mode = ModeIPVS
	want.ClientConnection.Kubeconfig = "/var/lib/kpr/kubeconfig"
	// An IPv6 bind address moves the default server addresses to IPv6.
	want.BindAddress = netip.IPv6Unspecified()
	want.HealthzBindAddress = netip.MustParseAddrPort("[::]:10256")
	want.MetricsBindAddress = netip.MustParseAddrPort("[::1]:10249")
	want.DetectLocal.ClusterCIDRs = prefixes("2001:db8:10::/56", "198.18.0.0/16")
	want.NodePortAddresses.CIDRs = prefixes("2001:db8:1::/64", "192.0.2.0/24")
	want.SyncPeriod, want.MinSyncPeriod = time.Minute, 2*time.Second
	want.IPVS = IPVS{Scheduler: "wrr", ExcludeCIDRs: prefixes("203.0.113.0/24", "2001:db8:30::/64"), StrictARP: true,
		TCPTimeout: 15 * time.Minute, TCPFinTimeout: 2 * time.Minute, UDPTimeout: 5 * time.Minute}
	want.IPTables.MasqueradeBit, want.IPTables.MasqueradeAll = 15, true
	want.Conntrack.MaxPerCore, want.Conntrack.TCPBeLiberal = 0, true
	want.Conntrack.UDPTimeout, want.Conntrack.UDPStreamTimeout = 30*time.Second, 5*time.Minute
	sameConfig(t, c, want)
	if len(c.Warnings) != 0 {
		t.Errorf("warnings: %v", c.Warnings)
	}

	v4, v6 := SplitByFamily(c.DetectLocal.ClusterCIDRs)
	if len(v4) != 1 || len(v6) != 1 || v4[0] != netip.MustParsePrefix("198.18.0.0/16") {
		t.Errorf("SplitByFamily = %v, %v", v4, v6)
	}
}

func TestLoadJSON(t *testing.T) {
	c, err := Load("testdata/full.json")
	if err != nil {
		t.Fatal(err)
	}
	want := wantDefaults()
	want.ConfigFile = "testdata/full.json"
	want.HostnameOverride = "node-1"
	want.MetricsBindAddress = netip.MustParseAddrPort("0.0.0.0:10249")
	want.HealthzBindAddress = netip.MustParseAddrPort("192.0.2.10:12345")
	want.FeatureGates = map[string]bool{"AllowServiceExternalIPs": false}
	want.Features.AllowServiceExternalIPs = false
	want.IPTables.MasqueradeBit, want.IPTables.LocalhostNodePorts = 5, false
	// minSyncPeriod: 0s in a file is "unset" to kube-proxy and defaults to 1s.
	want.SyncPeriod, want.MinSyncPeriod = 10*time.Second, time.Second
	want.DetectLocal = DetectLocal{Mode: LocalModeInterfaceNamePrefix, InterfaceNamePrefix: "veth"}
	want.NodePortAddresses = NodePortAddresses{Primary: true, CIDRs: prefixes("127.0.0.0/8", "::1/128")}
	// An explicit 0s is kept (it means "leave the kernel's value").
	want.Conntrack.TCPEstablishedTimeout, want.Conntrack.Min = 0, 1000
	want.LogLevel, want.LogFormat = 4, LogFormatConsole
	want.OOMScoreAdj, want.ConfigSyncPeriod = -500, 5*time.Minute
	sameConfig(t, c, want)
	wantWarning(t, c, "featureGates.AllowServiceExternalIPs", "GA feature gate")
}

func TestLoadStrictErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, field, detail string
	}{
		{"unknown top-level field", "foo: 1\n", "foo", "unknown field"},
		{"unknown nested field", "iptables:\n  foo: true\n", "iptables.foo", "unknown field"},
		{"field names are case-sensitive", "iptables:\n  MasqueradeBit: 3\n", "iptables.MasqueradeBit", "unknown field"},
		{"duplicate field", "mode: ipvs\nmode: iptables\n", "", "duplicate"},
		{"wrong type", "iptables:\n  masqueradeBit: abc\n", "", "masqueradeBit"},
		{"bad duration", "configSyncPeriod: soon\n", "configSyncPeriod", "invalid duration"},
		{"bad nested duration", "conntrack:\n  tcpEstablishedTimeout: forever\n", "conntrack.tcpEstablishedTimeout", "invalid duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(fileWith(t, tc.body))
			if err == nil {
				t.Fatal("no error")
			}
			if tc.field != "" {
				wantFieldError(t, err, tc.field, tc.detail)
			} else if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("error %q lacks %q", err, tc.detail)
			}
			if !strings.Contains(err.Error(), "config.yaml") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestLoadStrictErrorsListsAll(t *testing.T) {
	_, err := Load(fileWith(t, "foo: 1\nipvs:\n  bar: 2\n"))
	got := map[string]bool{}
	for _, fe := range fieldErrors(err) {
		got[fe.Field] = true
	}
	if !got["foo"] || !got["ipvs.bar"] {
		t.Errorf("errors %v, want foo and ipvs.bar", err)
	}
}

func TestLoadFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, content, want string
	}{
		{"empty", "", "empty"},
		{"only whitespace", "\n \n", "empty"},
		{"no apiVersion or kind", "mode: iptables\n", "apiVersion and kind are missing"},
		{"wrong apiVersion", "apiVersion: kubeproxy.config.k8s.io/v1alpha2\nkind: KubeProxyConfiguration\n", `apiVersion "kubeproxy.config.k8s.io/v1alpha2" is not supported`},
		{"wrong kind", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n", `kind "KubeletConfiguration"`},
		{"not YAML", "apiVersion: [unclosed\n", "not valid YAML"},
		{"not an object", "- a\n- b\n", "not a KubeProxyConfiguration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeFile(t, "bad.yaml", tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := Load("/does/not/exist.yaml"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// Settings kpr cannot honour in the selected mode are errors naming the
// field; settings kube-proxy itself ignores are warnings.
func TestLoadUnsupported(t *testing.T) {
	for _, tc := range []struct {
		body, field, detail string
	}{
		{"mode: nftables\n", "mode", "not supported by kpr"},
		{"mode: kernelspace\n", "mode", "not supported by kpr"},
		{"featureGates:\n  KubeProxyIPVS: false\nmode: ipvs\n", "mode", "KubeProxyIPVS=false"},
		{"featureGates:\n  Bogus: true\n", "featureGates.Bogus", "unrecognized feature gate"},
		{"featureGates:\n  WinDSR: false\n", "featureGates.WinDSR", "locked to true"},
		{"logging:\n  format: xml\n", "logging.format", `"text" or "json"`},
		{"mode: ipvs\nipvs:\n  scheduler: fastest\n", "ipvs.scheduler", "not an IPVS scheduler"},
	} {
		t.Run(tc.body, func(t *testing.T) {
			_, err := Load(fileWith(t, tc.body))
			wantFieldError(t, err, tc.field, tc.detail)
		})
	}
}

func TestLoadWarnings(t *testing.T) {
	for _, tc := range []struct {
		body, field, detail string
	}{
		{"ipvs:\n  strictARP: true\n", "ipvs.strictARP", "applies only to mode ipvs"},
		{"ipvs:\n  scheduler: sh\n", "ipvs.scheduler", "applies only to mode ipvs"},
		{"ipvs:\n  tcpTimeout: 10s\n", "ipvs.tcpTimeout", "applies only to mode ipvs"},
		{"mode: ipvs\niptables:\n  syncPeriod: 10s\n", "iptables.syncPeriod", "applies only to mode iptables"},
		{"nftables:\n  masqueradeBit: 10\n", "nftables.masqueradeBit", "applies only to mode nftables"},
		{"nftables:\n  masqueradeAll: true\n", "nftables.masqueradeAll", "applies only to mode nftables"},
		{"winkernel:\n  networkName: l2bridge\n", "winkernel", "Windows"},
		{"windowsRunAsService: true\n", "windowsRunAsService", "Windows"},
		{"portRange: 30000-32767\n", "portRange", "userspace"},
		{"logging:\n  vmodule:\n  - filePattern: proxier\n    verbosity: 5\n", "logging.vmodule", "not implemented"},
		{"logging:\n  options:\n    json:\n      splitStream: true\n", "logging.options.json.splitStream", "not implemented"},
		{"featureGates:\n  NFTablesNetlink: false\n", "featureGates.NFTablesNetlink", "nftables"},
		{"featureGates:\n  WatchListClient: false\n", "featureGates.WatchListClient", "KUBE_FEATURE_WatchListClient"},
		{"featureGates:\n  AllAlpha: true\n", "featureGates.AllAlpha", "kpr implements none"},
		{"featureGates:\n  KubeProxyIPVS: true\n", "featureGates.KubeProxyIPVS", "deprecated feature gate"},
		{"featureGates:\n  AtomicWriteVolumeUserFields: true\n", "featureGates.AtomicWriteVolumeUserFields", "no effect on kube-proxy"},
		{"clusterCIDR: 198.18.0.0/16\ndetectLocalMode: NodeCIDR\n", "clusterCIDR", "not used to detect local traffic"},
		{"detectLocal:\n  interfaceNamePrefix: veth\n", "detectLocal.interfaceNamePrefix", "used only when detectLocalMode is InterfaceNamePrefix"},
		{"resourceContainer: /kube-proxy\n", "resourceContainer", "removed"},
		{"conntrack:\n  max: 0\n", "conntrack.max", "removed"},
	} {
		t.Run(tc.body, func(t *testing.T) {
			c, err := Load(fileWith(t, tc.body))
			if err != nil {
				t.Fatal(err)
			}
			wantWarning(t, c, tc.field, tc.detail)
		})
	}
}

// Gates at their default values, and kpr's no-difference gates, are quiet.
func TestLoadQuietGates(t *testing.T) {
	c, err := Load(fileWith(t, "clusterCIDR: 198.18.0.0/16\nfeatureGates:\n  ComponentFlagz: false\n  NFTablesNetlink: true\n  LoggingAlphaOptions: false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings: %v", c.Warnings)
	}
}

func TestLoadValidationNamesFields(t *testing.T) {
	for _, tc := range []struct {
		body, field, detail string
	}{
		{"iptables:\n  masqueradeBit: 40\n", "iptables.masqueradeBit", "[0, 31]"},
		{"iptables:\n  syncPeriod: 5s\n  minSyncPeriod: 10s\n", "iptables.syncPeriod", "greater than or equal to iptables.minSyncPeriod"},
		{"mode: ipvs\nipvs:\n  syncPeriod: 5s\n  minSyncPeriod: 10s\n", "ipvs.syncPeriod", "ipvs.minSyncPeriod"},
		{"detectLocalMode: BridgeInterface\n", "detectLocal.bridgeInterface", "must be set when detectLocalMode is BridgeInterface"},
		{"nodePortAddresses: [192.0.2.0/24, 'nope']\n", "nodePortAddresses[1]", "valid CIDR"},
		{"clusterCIDR: 198.18.0.0/33\n", "clusterCIDR", "valid CIDR"},
		{"bindAddress: nowhere\n", "bindAddress", "not a valid IP"},
		{"healthzBindAddress: 192.0.2.1:0\n", "healthzBindAddress", "valid port"},
		{"metricsBindAddress: localhost:10249\n", "metricsBindAddress", "not a valid IP"},
		{"hostnameOverride: '  '\n", "hostnameOverride", "must not be blank"},
		{"oomScoreAdj: -1001\n", "oomScoreAdj", "[-1000, 1000]"},
		{"conntrack:\n  udpTimeout: -1s\n", "conntrack.udpTimeout", "greater than or equal to 0"},
		{"clientConnection:\n  burst: -5\n", "clientConnection.burst", "greater than or equal to 0"},
		{"mode: ipvs\nipvs:\n  excludeCIDRs: [bad]\n", "ipvs.excludeCIDRs[0]", "valid CIDR"},
		{"showHiddenMetricsForVersion: '1.35'\n", "showHiddenMetricsForVersion", "previous minor"},
	} {
		t.Run(tc.body, func(t *testing.T) {
			_, err := Load(fileWith(t, tc.body))
			wantFieldError(t, err, tc.field, tc.detail)
			if !strings.Contains(err.Error(), "--config") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestLoadFileDefaultsDifferFromFlags(t *testing.T) {
	// In a file, an ipvs mode without ipvs.minSyncPeriod gets 0; through
	// flags it gets 1s (kube-proxy's internal default). Both mirror kube-proxy.
	c, err := Load(fileWith(t, "mode: ipvs\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.MinSyncPeriod != 0 || c.SyncPeriod != 30*time.Second {
		t.Errorf("file ipvs sync = %v/%v, want 30s/0", c.SyncPeriod, c.MinSyncPeriod)
	}
	if f := mustParse(t, "--proxy-mode=ipvs"); f.MinSyncPeriod != time.Second {
		t.Errorf("flag ipvs min sync = %v, want 1s", f.MinSyncPeriod)
	}
	// A bare IP gets the default port.
	c, err = Load(fileWith(t, "healthzBindAddress: 192.0.2.7\nmetricsBindAddress: '::'\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.HealthzBindAddress.String() != "192.0.2.7:10256" || c.MetricsBindAddress.String() != "[::]:10249" {
		t.Errorf("addresses %v %v", c.HealthzBindAddress, c.MetricsBindAddress)
	}
}

// With --config the file replaces the kube-proxy flags; only the logging
// flags, --hostname-override, --master and the action flags still apply,
// plus kpr's own flags.
func TestConfigPrecedence(t *testing.T) {
	path := fileWith(t, `mode: iptables
hostnameOverride: from-file
clusterCIDR: 198.18.0.0/16
iptables:
  masqueradeBit: 3
featureGates:
  AllowServiceExternalIPs: true
logging:
  verbosity: 2
  format: text
`)
	c := mustParse(t, "--config="+path,
		"--proxy-mode=ipvs", "--iptables-masquerade-bit=9", "--feature-gates=AllowServiceExternalIPs=false",
		"--healthz-port=0", "--cluster-cidr=2001:db8:10::/56",
		"--hostname-override=From-Flag", "--v=5", "--logging-format=json", "--master=https://192.0.2.1:6443",
		"--cleanup", "--iptables-backend=legacy", "--takeover-kube-proxy")

	if c.Mode != ModeIPTables || c.IPTables.MasqueradeBit != 3 || !c.Features.AllowServiceExternalIPs {
		t.Errorf("kube-proxy flags beat the file: mode %q, bit %d, externalIPs %v", c.Mode, c.IPTables.MasqueradeBit, c.Features.AllowServiceExternalIPs)
	}
	if !c.HealthzBindAddress.IsValid() {
		t.Error("--healthz-port=0 disabled the health server despite --config")
	}
	if c.DetectLocal.ClusterCIDRs[0] != netip.MustParsePrefix("198.18.0.0/16") {
		t.Errorf("cluster CIDRs %v", c.DetectLocal.ClusterCIDRs)
	}
	for _, f := range []string{"--proxy-mode", "--iptables-masquerade-bit", "--feature-gates", "--healthz-port", "--cluster-cidr"} {
		wantWarning(t, c, f, "ignored because --config is set")
	}
	for _, f := range []string{"--hostname-override", "--v", "--logging-format", "--master", "--cleanup", "--iptables-backend", "--config"} {
		wantNoWarning(t, c, f)
	}
	if c.HostnameOverride != "from-flag" || c.LogLevel != 5 || c.LogFormat != LogFormatJSON {
		t.Errorf("command-line overrides lost: hostname %q, level %d, format %q", c.HostnameOverride, c.LogLevel, c.LogFormat)
	}
	if c.Master != "https://192.0.2.1:6443" || !c.Cleanup || c.IPTables.Backend != IPTablesBackendLegacy || !c.Takeover.Enabled {
		t.Errorf("non-configuration flags lost: %+v", c)
	}
	if c.ConfigFile != path {
		t.Errorf("ConfigFile = %q", c.ConfigFile)
	}

	// Without the logging flags, the file's logging settings hold.
	c = mustParse(t, "--config="+path)
	if c.HostnameOverride != "from-file" || c.LogLevel != 2 || c.LogFormat != LogFormatConsole {
		t.Errorf("file values lost: hostname %q, level %d, format %q", c.HostnameOverride, c.LogLevel, c.LogFormat)
	}
	// kpr's --log-format beats the file's logging.format.
	if c := mustParse(t, "--config="+path, "--log-format=json"); c.LogFormat != LogFormatJSON {
		t.Errorf("--log-format lost to the file: %q", c.LogFormat)
	}
}

// An error in a value a flag put over the file is named by that flag.
func TestConfigPrecedenceErrorNames(t *testing.T) {
	path := fileWith(t, "iptables:\n  masqueradeBit: 40\n")
	_, err := Parse([]string{"--config=" + path, "--hostname-override= ", "--logging-format=xml"}, io.Discard)
	wantFieldError(t, err, "iptables.masqueradeBit", "[0, 31]")
	wantFieldError(t, err, "--logging-format", `"text" or "json"`)
	// A blank --hostname-override is "not given" for kube-proxy, so the
	// whitespace-only value here is the flag's and it is rejected.
	wantFieldError(t, err, "--hostname-override", "must not be blank")
}
