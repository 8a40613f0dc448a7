package config

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseDefaults(t *testing.T) {
	c := mustParse(t)
	sameConfig(t, c, wantDefaults())
	// kube-proxy warns at run time that ClusterCIDR mode without a
	// cluster CIDR detects nothing; kpr says so up front.
	wantWarning(t, c, "--cluster-cidr", "not set")
	if len(c.Warnings) != 1 {
		t.Errorf("warnings = %v, want only the --cluster-cidr one", c.Warnings)
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want func(c *Config)
	}{
		{"ipvs mode keeps the flag default min sync of 1s",
			[]string{"--proxy-mode=ipvs"},
			func(c *Config) { c.Mode = ModeIPVS }},
		{"ipvs sync periods",
			[]string{"--proxy-mode", "ipvs", "--ipvs-sync-period=1m", "--ipvs-min-sync-period=0"},
			func(c *Config) { c.Mode, c.SyncPeriod, c.MinSyncPeriod = ModeIPVS, time.Minute, 0 }},
		{"iptables sync periods",
			[]string{"--iptables-sync-period=10s", "--iptables-min-sync-period=2s"},
			func(c *Config) { c.SyncPeriod, c.MinSyncPeriod = 10*time.Second, 2*time.Second }},
		{"iptables sync periods do not apply in ipvs mode",
			[]string{"--proxy-mode=ipvs", "--iptables-sync-period=10s"},
			func(c *Config) { c.Mode = ModeIPVS }},
		{"ipvs sync periods do not apply in iptables mode",
			[]string{"--ipvs-sync-period=10s", "--ipvs-min-sync-period=5s"},
			func(c *Config) {}},
		{"underscores are accepted for hyphens",
			[]string{"--iptables_sync_period=7s"},
			func(c *Config) { c.SyncPeriod = 7 * time.Second }},
		{"dual-stack cluster CIDR",
			[]string{"--cluster-cidr=198.18.0.0/16,2001:db8:10::/56"},
			func(c *Config) { c.DetectLocal.ClusterCIDRs = prefixes("198.18.0.0/16", "2001:db8:10::/56") }},
		{"cluster CIDR is masked like kube-proxy's",
			[]string{"--cluster-cidr=198.18.7.1/16"},
			func(c *Config) { c.DetectLocal.ClusterCIDRs = prefixes("198.18.0.0/16") }},
		{"nodeport addresses: primary and CIDRs",
			[]string{"--nodeport-addresses=primary,192.0.2.0/24", "--nodeport-addresses", "2001:db8:1::/64"},
			func(c *Config) {
				c.NodePortAddresses = NodePortAddresses{Primary: true, CIDRs: prefixes("192.0.2.0/24", "2001:db8:1::/64")}
			}},
		{"nodeport addresses: keywords expand",
			[]string{"--nodeport-addresses=localhost,all"},
			func(c *Config) {
				c.NodePortAddresses.CIDRs = prefixes("127.0.0.0/8", "::1/128", "0.0.0.0/0", "::/0")
			}},
		{"iptables flags",
			[]string{"--masquerade-all", "--iptables-masquerade-bit=20", "--iptables-localhost-nodeports=false"},
			func(c *Config) {
				c.IPTables.MasqueradeAll, c.IPTables.MasqueradeBit, c.IPTables.LocalhostNodePorts = true, 20, false
			}},
		{"ipvs flags",
			[]string{"--proxy-mode=ipvs", "--ipvs-scheduler=sh", "--ipvs-exclude-cidrs=203.0.113.0/24,2001:db8:30::/64",
				"--ipvs-strict-arp", "--ipvs-tcp-timeout=15m", "--ipvs-tcpfin-timeout=2m", "--ipvs-udp-timeout=5m"},
			func(c *Config) {
				c.Mode = ModeIPVS
				c.IPVS = IPVS{Scheduler: "sh", ExcludeCIDRs: prefixes("203.0.113.0/24", "2001:db8:30::/64"), StrictARP: true,
					TCPTimeout: 15 * time.Minute, TCPFinTimeout: 2 * time.Minute, UDPTimeout: 5 * time.Minute}
			}},
		{"conntrack flags",
			[]string{"--conntrack-max-per-core=0", "--conntrack-min=5", "--conntrack-tcp-timeout-established=2h",
				"--conntrack-tcp-timeout-close-wait=0", "--conntrack-tcp-be-liberal", "--conntrack-udp-timeout=30s",
				"--conntrack-udp-timeout-stream=3m"},
			func(c *Config) {
				c.Conntrack = Conntrack{MaxPerCore: 0, Min: 5, TCPEstablishedTimeout: 2 * time.Hour, TCPCloseWaitTimeout: 0,
					TCPBeLiberal: true, UDPTimeout: 30 * time.Second, UDPStreamTimeout: 3 * time.Minute}
			}},
		{"detect local: bridge",
			[]string{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0"},
			func(c *Config) { c.DetectLocal = DetectLocal{Mode: LocalModeBridgeInterface, BridgeInterface: "cbr0"} }},
		{"detect local: interface prefix",
			[]string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth"},
			func(c *Config) {
				c.DetectLocal = DetectLocal{Mode: LocalModeInterfaceNamePrefix, InterfaceNamePrefix: "veth"}
			}},
		{"detect local: node CIDR",
			[]string{"--detect-local-mode=NodeCIDR"},
			func(c *Config) { c.DetectLocal.Mode = LocalModeNodeCIDR }},
		{"hostname override is trimmed and lower-cased",
			[]string{"--hostname-override= Node-A "},
			func(c *Config) { c.HostnameOverride = "node-a" }},
		{"API client",
			[]string{"--kubeconfig=/etc/kpr/kubeconfig", "--master=https://192.0.2.1:6443", "--kube-api-qps=50",
				"--kube-api-burst=100", "--kube-api-content-type=application/json"},
			func(c *Config) {
				c.ClientConnection = ClientConnection{Kubeconfig: "/etc/kpr/kubeconfig", ContentType: "application/json", QPS: 50, Burst: 100}
				c.Master = "https://192.0.2.1:6443"
			}},
		{"bind addresses without port get the default port",
			[]string{"--bind-address=192.0.2.5", "--healthz-bind-address=192.0.2.5", "--metrics-bind-address=0.0.0.0"},
			func(c *Config) {
				c.BindAddress = netip.MustParseAddr("192.0.2.5")
				c.HealthzBindAddress = netip.MustParseAddrPort("192.0.2.5:10256")
				c.MetricsBindAddress = netip.MustParseAddrPort("0.0.0.0:10249")
			}},
		{"IPv6 bind addresses",
			[]string{"--healthz-bind-address=[::]:9999", "--metrics-bind-address=[::1]:9998"},
			func(c *Config) {
				c.HealthzBindAddress = netip.MustParseAddrPort("[::]:9999")
				c.MetricsBindAddress = netip.MustParseAddrPort("[::1]:9998")
			}},
		{"sloppy IPv4 is accepted as kube-proxy accepts it",
			[]string{"--bind-address=192.000.002.005"},
			func(c *Config) { c.BindAddress = netip.MustParseAddr("192.0.2.5") }},
		{"an empty --bind-address keeps the default",
			[]string{"--bind-address="},
			func(c *Config) {}},
		{"--healthz-port=0 disables the health server",
			[]string{"--healthz-port=0"},
			func(c *Config) { c.HealthzBindAddress = netip.AddrPort{} }},
		{"--healthz-port does not replace a port already given (kube-proxy quirk)",
			[]string{"--healthz-port=12345"},
			func(c *Config) {}},
		{"--healthz-port completes an address without port",
			[]string{"--healthz-bind-address=192.0.2.5", "--healthz-port=12345", "--metrics-bind-address=192.0.2.5", "--metrics-port=12346"},
			func(c *Config) {
				c.HealthzBindAddress = netip.MustParseAddrPort("192.0.2.5:12345")
				c.MetricsBindAddress = netip.MustParseAddrPort("192.0.2.5:12346")
			}},
		{"verbosity", []string{"-v=4"}, func(c *Config) { c.LogLevel = 4 }},
		{"verbosity long form", []string{"--v", "3"}, func(c *Config) { c.LogLevel = 3 }},
		{"kube-proxy text logging is kpr console", []string{"--logging-format=text"},
			func(c *Config) { c.LogFormat = LogFormatConsole }},
		{"--log-format", []string{"--log-format=console"}, func(c *Config) { c.LogFormat = LogFormatConsole }},
		{"--log-format wins over --logging-format", []string{"--logging-format=text", "--log-format=json"},
			func(c *Config) {}},
		{"kpr flags",
			[]string{"--iptables-backend=nft", "--takeover-kube-proxy", "--takeover-dry-run"},
			func(c *Config) {
				c.IPTables.Backend, c.Takeover = IPTablesBackendNFT, Takeover{Enabled: true, DryRun: true}
			}},
		{"actions",
			[]string{"--cleanup", "--init-only", "--write-config-to=/tmp/out.yaml"},
			func(c *Config) { c.Cleanup, c.InitOnly, c.WriteConfigTo = true, true, "/tmp/out.yaml" }},
		{"feature gate kpr honours",
			[]string{"--feature-gates=AllowServiceExternalIPs=false"},
			func(c *Config) {
				c.FeatureGates = map[string]bool{"AllowServiceExternalIPs": false}
				c.Features.AllowServiceExternalIPs = false
			}},
		{"process settings",
			[]string{"--oom-score-adj=-100", "--config-sync-period=1m", "--profiling", "--bind-address-hard-fail",
				"--show-hidden-metrics-for-version=1.36"},
			func(c *Config) {
				c.OOMScoreAdj, c.ConfigSyncPeriod, c.EnableProfiling, c.BindAddressHardFail = -100, time.Minute, true, true
				c.ShowHiddenMetricsForVersion = "1.36"
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := wantDefaults()
			tc.want(want)
			sameConfig(t, mustParse(t, tc.args...), want)
		})
	}
}

func TestParseFlagWarnings(t *testing.T) {
	for _, tc := range []struct {
		args           []string
		field, message string
	}{
		{[]string{"--proxy-mode=ipvs", "--iptables-sync-period=10s"}, "--iptables-sync-period", "applies only to mode iptables"},
		{[]string{"--ipvs-sync-period=10s"}, "--ipvs-sync-period", "applies only to mode ipvs"},
		{[]string{"--ipvs-strict-arp"}, "--ipvs-strict-arp", "applies only to mode ipvs"},
		{[]string{"--ipvs-scheduler=bogus"}, "--ipvs-scheduler", "not an IPVS scheduler"},
		{[]string{"--ipvs-exclude-cidrs=nonsense"}, "--ipvs-exclude-cidrs[0]", "must be a valid CIDR"},
		{[]string{"--proxy-mode=ipvs", "--iptables-localhost-nodeports=false"}, "--iptables-localhost-nodeports", "applies only to mode iptables"},
		{[]string{"--healthz-port=0"}, "--healthz-port", "deprecated"},
		{[]string{"--metrics-port=10249"}, "--metrics-port", "deprecated"},
		{[]string{"--vmodule=proxier=5"}, "--vmodule", "not implemented"},
		{[]string{"--log-flush-frequency=1s"}, "--log-flush-frequency", "ignored"},
		{[]string{"--log-text-split-stream"}, "--log-text-split-stream", "not implemented"},
		{[]string{"--log-json-info-buffer-size=1Mi"}, "--log-json-info-buffer-size", "not implemented"},
		{[]string{"--show-hidden-metrics-for-version=1.36"}, "--show-hidden-metrics-for-version", "no hidden metrics"},
		{[]string{"--detect-local-mode=NodeCIDR", "--pod-bridge-interface=cbr0"}, "--pod-bridge-interface", "used only when --detect-local-mode is BridgeInterface"},
		{[]string{"--detect-local-mode=NodeCIDR", "--cluster-cidr=198.18.0.0/16"}, "--cluster-cidr", "not used to detect local traffic"},
		{[]string{"--detect-local-mode=NodeCIDR", "--cluster-cidr=bogus"}, "--cluster-cidr", "ignored"},
		{[]string{"--feature-gates=LoggingAlphaOptions=true"}, "--feature-gates[LoggingAlphaOptions]", "not implemented by kpr"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			wantWarning(t, mustParse(t, tc.args...), tc.field, tc.message)
		})
	}
}

func TestParseFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		field   string
		details []string
	}{
		{[]string{"--proxy-mode=nftables"}, "--proxy-mode", []string{"not supported by kpr", `"nftables"`}},
		{[]string{"--proxy-mode=kernelspace"}, "--proxy-mode", []string{"not supported by kpr", "Windows"}},
		{[]string{"--proxy-mode=userspace"}, "--proxy-mode", []string{`must be "iptables" or "ipvs"`}},
		{[]string{"--iptables-masquerade-bit=32"}, "--iptables-masquerade-bit", []string{"[0, 31]", "got 32"}},
		{[]string{"--iptables-masquerade-bit=-1"}, "--iptables-masquerade-bit", []string{"[0, 31]"}},
		{[]string{"--iptables-min-sync-period=1m"}, "--iptables-sync-period", []string{"greater than or equal to --iptables-min-sync-period"}},
		{[]string{"--iptables-sync-period=0"}, "--iptables-sync-period", []string{"greater than 0"}},
		{[]string{"--iptables-min-sync-period=-1s"}, "--iptables-min-sync-period", []string{"greater than or equal to 0"}},
		{[]string{"--proxy-mode=ipvs", "--ipvs-min-sync-period=1m"}, "--ipvs-sync-period", []string{"--ipvs-min-sync-period"}},
		{[]string{"--proxy-mode=ipvs", "--ipvs-scheduler=bogus"}, "--ipvs-scheduler", []string{"not an IPVS scheduler"}},
		{[]string{"--proxy-mode=ipvs", "--ipvs-exclude-cidrs=192.0.2.0/24,bad"}, "--ipvs-exclude-cidrs[1]", []string{"valid CIDR"}},
		{[]string{"--proxy-mode=ipvs", "--ipvs-tcp-timeout=-1s"}, "--ipvs-tcp-timeout", []string{"greater than or equal to 0"}},
		{[]string{"--cluster-cidr=198.18.0.0/16,198.19.0.0/16"}, "--cluster-cidr", []string{"dual-stack pair"}},
		{[]string{"--cluster-cidr=198.18.0.0/16,2001:db8:10::/56,198.19.0.0/16"}, "--cluster-cidr", []string{"single CIDR or a dual-stack pair"}},
		{[]string{"--cluster-cidr=nonsense"}, "--cluster-cidr", []string{"valid CIDR", `"nonsense"`}},
		// kube-proxy does not trim spaces around the comma either.
		{[]string{"--cluster-cidr=198.18.0.0/16, 2001:db8:10::/56"}, "--cluster-cidr", []string{"valid CIDR"}},
		{[]string{"--nodeport-addresses=primary,primary"}, "--nodeport-addresses[1]", []string{"duplicate keyword"}},
		{[]string{"--nodeport-addresses=192.0.2.0/24,foo"}, "--nodeport-addresses[1]", []string{"'primary', 'localhost', 'all'", `"foo"`}},
		{[]string{"--detect-local-mode=BridgeInterface"}, "--pod-bridge-interface", []string{"must be set when --detect-local-mode is BridgeInterface"}},
		{[]string{"--detect-local-mode=InterfaceNamePrefix"}, "--pod-interface-name-prefix", []string{"must be set"}},
		{[]string{"--detect-local-mode=Bogus"}, "--detect-local-mode", []string{"ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix"}},
		{[]string{"--oom-score-adj=2000"}, "--oom-score-adj", []string{"[-1000, 1000]"}},
		{[]string{"--conntrack-min=-1"}, "--conntrack-min", []string{"greater than or equal to 0"}},
		{[]string{"--conntrack-max-per-core=-1"}, "--conntrack-max-per-core", []string{"greater than or equal to 0"}},
		{[]string{"--conntrack-tcp-timeout-established=-1s"}, "--conntrack-tcp-timeout-established", []string{"greater than or equal to 0"}},
		{[]string{"--conntrack-udp-timeout-stream=-1s"}, "--conntrack-udp-timeout-stream", []string{"greater than or equal to 0"}},
		{[]string{"--kube-api-burst=-1"}, "--kube-api-burst", []string{"greater than or equal to 0"}},
		{[]string{"--config-sync-period=0"}, "--config-sync-period", []string{"greater than 0"}},
		// kube-proxy rejects a disabled metrics server too.
		{[]string{"--metrics-port=0"}, "--metrics-bind-address", []string{"must be IP:port"}},
		{[]string{"--hostname-override=   "}, "--hostname-override", []string{"must not be blank"}},
		{[]string{"--feature-gates=NoSuchGate=true"}, "--feature-gates[NoSuchGate]", []string{"unrecognized feature gate"}},
		{[]string{"--feature-gates=MultiCIDRServiceAllocator=false"}, "--feature-gates[MultiCIDRServiceAllocator]", []string{"locked to true"}},
		{[]string{"--feature-gates=KubeProxyIPVS=false", "--proxy-mode=ipvs"}, "--proxy-mode", []string{"KubeProxyIPVS=false"}},
		{[]string{"--show-hidden-metrics-for-version=1.30"}, "--show-hidden-metrics-for-version", []string{"'1.36'"}},
		{[]string{"--logging-format=xml"}, "--logging-format", []string{`"text" or "json"`}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			c, err := Parse(tc.args, io.Discard)
			if c != nil {
				t.Errorf("got a Config with the error")
			}
			wantFieldError(t, err, tc.field, tc.details...)
			if !strings.Contains(err.Error(), "(flags)") {
				t.Errorf("error %q does not say the flags are at fault", err)
			}
		})
	}
}

// Errors pflag raises while parsing name the flag themselves.
func TestParseSyntaxErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--iptables-masquerade-bit=abc"}, "--iptables-masquerade-bit"},
		{[]string{"--bind-address=nope"}, "--bind-address"},
		{[]string{"--healthz-bind-address=192.0.2.1:99999"}, "--healthz-bind-address"},
		{[]string{"--metrics-bind-address=host.example:10249"}, "--metrics-bind-address"},
		{[]string{"--iptables-backend=iptables"}, "--iptables-backend"},
		{[]string{"--log-format=text"}, "--log-format"},
		{[]string{"--feature-gates=Foo"}, "--feature-gates"},
		{[]string{"--version=v1.37.0"}, "--version"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
		// Removed from kube-proxy years ago; kube-proxy v1.37 rejects it too.
		{[]string{"--resource-container="}, "resource-container"},
		{[]string{"stray"}, "positional"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := Parse(tc.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse(%q) error = %v, want one mentioning %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestParseReportsAllErrors(t *testing.T) {
	_, err := Parse([]string{"--proxy-mode=nftables", "--iptables-masquerade-bit=40", "--oom-score-adj=5000"}, io.Discard)
	got := map[string]bool{}
	for _, fe := range fieldErrors(err) {
		got[fe.Field] = true
	}
	for _, f := range []string{"--proxy-mode", "--iptables-masquerade-bit", "--oom-score-adj"} {
		if !got[f] {
			t.Errorf("no error for %s in %v", f, err)
		}
	}
}

func TestParseHelp(t *testing.T) {
	var out bytes.Buffer
	_, err := Parse([]string{"--help"}, &out)
	if !errors.Is(err, ErrHelp) {
		t.Fatalf("err = %v, want ErrHelp", err)
	}
	text := out.String()
	for _, want := range []string{"kube-proxy flags:", "kube-proxy logging flags:", "kpr flags:",
		"--iptables-backend", "--takeover-kube-proxy", "--conntrack-max-per-core", "(default 32768)"} {
		if !strings.Contains(text, want) {
			t.Errorf("help lacks %q", want)
		}
	}
	// Groups come in order, and deprecated flags stay out of the help.
	if strings.Index(text, "kube-proxy flags:") > strings.Index(text, "kpr flags:") {
		t.Error("kpr flags printed before kube-proxy flags")
	}
	if strings.Contains(text, "--healthz-port") {
		t.Error("help shows the deprecated --healthz-port")
	}
	var u bytes.Buffer
	Usage(&u)
	if u.String() != text {
		t.Error("Usage() differs from the --help output")
	}
}

func TestParseVersion(t *testing.T) {
	// --version is answered before --config is read, so a broken file does
	// not stop it.
	for _, tc := range []struct {
		args []string
		want error
	}{
		{[]string{"--version"}, ErrVersion},
		{[]string{"--version=true", "--config=/does/not/exist"}, ErrVersion},
		{[]string{"--version=raw"}, ErrVersionRaw},
	} {
		_, err := Parse(tc.args, io.Discard)
		if !errors.Is(err, tc.want) {
			t.Errorf("Parse(%q) = %v, want %v", tc.args, err, tc.want)
		}
	}
	if !errors.Is(ErrVersionRaw, ErrVersion) {
		t.Error("ErrVersionRaw is not an ErrVersion")
	}
	if _, err := Parse([]string{"--version=false"}, io.Discard); err != nil {
		t.Errorf("--version=false: %v", err)
	}
}

func TestParseDeprecatedFlagNotice(t *testing.T) {
	var out bytes.Buffer
	if _, err := Parse([]string{"--healthz-port=10256"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "--healthz-port has been deprecated") {
		t.Errorf("no deprecation notice on stderr: %q", out.String())
	}
}
