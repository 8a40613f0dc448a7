package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
)

// options holds what the command line sets. kube-proxy's configuration
// flags write straight into kpc, which starts at kube-proxy's defaults; the
// rest are kept apart, as in kube-proxy's Options.
type options struct {
	kpc v1alpha1.KubeProxyConfiguration

	configFile       string
	writeConfigTo    string
	cleanup          bool
	initOnly         bool
	master           string
	hostnameOverride string
	healthzPort      int32
	metricsPort      int32
	version          string

	iptablesBackend string
	takeover        bool
	takeoverDryRun  bool
	logFormat       string

	// The flags by help group, and their union, which parses.
	kubeFS, logFS, kprFS *pflag.FlagSet
	fs                   *pflag.FlagSet
}

func newOptions(stderr io.Writer) *options {
	o := &options{
		kpc:             flagDefaults(),
		healthzPort:     defaultHealthzPort,
		metricsPort:     defaultMetricsPort,
		version:         "false",
		iptablesBackend: string(IPTablesBackendAuto),
		logFormat:       string(LogFormatJSON),
	}
	o.kubeFS = pflag.NewFlagSet("kube-proxy", pflag.ContinueOnError)
	o.logFS = pflag.NewFlagSet("logging", pflag.ContinueOnError)
	o.kprFS = pflag.NewFlagSet("kpr", pflag.ContinueOnError)
	o.addKubeProxyFlags(o.kubeFS)
	o.addLoggingFlags(o.logFS)
	o.addKprFlags(o.kprFS)

	fs := pflag.NewFlagSet("kpr", pflag.ContinueOnError)
	// kube-proxy accepts --iptables_sync_period for --iptables-sync-period.
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	fs.SetOutput(stderr) // pflag prints deprecation notices here
	fs.Usage = func() { o.usage(stderr) }
	fs.AddFlagSet(o.kubeFS)
	fs.AddFlagSet(o.logFS)
	fs.AddFlagSet(o.kprFS)
	// Hidden from --help; pflag prints a notice when they are used.
	_ = fs.MarkDeprecated("healthz-port", "use --healthz-bind-address instead")
	_ = fs.MarkDeprecated("metrics-port", "use --metrics-bind-address instead")
	o.fs = fs
	return o
}

// Flags ignored with --config (it replaces them), so that the
// configuration file is the one source, as in kube-proxy: all
// kube-proxy flags except these and the logging flags.
func appliesWithConfig(name string) bool {
	switch name {
	case "config", "write-config-to", "cleanup", "init-only", "master", "hostname-override", "version":
		return true
	}
	return false
}

func (o *options) addKubeProxyFlags(fs *pflag.FlagSet) {
	k := &o.kpc
	fs.StringVar(&o.configFile, "config", "", "Path to a KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1, YAML or JSON). Its values replace every other kube-proxy flag except --hostname-override, --master and the logging flags.")
	fs.StringVar(&o.writeConfigTo, "write-config-to", "", "Write the effective configuration to this file as a KubeProxyConfiguration and exit.")
	fs.BoolVar(&o.cleanup, "cleanup", false, "Remove every rule and chain kpr installed (never kube-proxy's or kubelet's), then exit.")
	fs.BoolVar(&o.initOnly, "init-only", false, "Do the set-up that needs full root privileges (sysctls), then exit; kpr can then run with only CAP_NET_ADMIN.")
	fs.Var(&versionValue{&o.version}, "version", "Print version information and exit (--version=raw for details).")
	fs.Lookup("version").NoOptDefVal = "true"
	fs.Var(cliflag.NewMapStringBool(&k.FeatureGates), "feature-gates", "Comma-separated key=value pairs of feature gates, e.g. AllowServiceExternalIPs=false.")

	fs.StringVar(&k.ClientConnection.Kubeconfig, "kubeconfig", k.ClientConnection.Kubeconfig, "Path to a kubeconfig file for the API server (in-cluster config when empty).")
	fs.StringVar(&o.master, "master", "", "Address of the Kubernetes API server; overrides the kubeconfig's.")
	fs.StringVar(&k.ClientConnection.ContentType, "kube-api-content-type", k.ClientConnection.ContentType, "Content type of requests sent to the API server.")
	fs.Float32Var(&k.ClientConnection.QPS, "kube-api-qps", k.ClientConnection.QPS, "Queries per second to the API server.")
	fs.Int32Var(&k.ClientConnection.Burst, "kube-api-burst", k.ClientConnection.Burst, "Burst of queries to the API server.")

	fs.StringVar(&o.hostnameOverride, "hostname-override", "", "Name of this Node in the API; the host name when empty.")
	fs.Var(&ipValue{&k.BindAddress}, "bind-address", "Override of the node's primary IP (nothing binds to it; the name is historical).")
	fs.Var(&ipPortValue{&k.HealthzBindAddress}, "healthz-bind-address", "IP[:port] of the health server (port 10256 if omitted).")
	fs.Var(&ipPortValue{&k.MetricsBindAddress}, "metrics-bind-address", "IP[:port] of the metrics server (port 10249 if omitted); 0.0.0.0:10249 or [::]:10249 to listen on all interfaces.")
	fs.BoolVar(&k.BindAddressHardFail, "bind-address-hard-fail", false, "Exit if the health or metrics server cannot bind its port.")
	fs.BoolVar(&k.EnableProfiling, "profiling", false, "Serve /debug/pprof on the metrics server.")
	fs.StringVar(&k.ShowHiddenMetricsForVersion, "show-hidden-metrics-for-version", "", "Accepted for compatibility (only '"+showHiddenMetricsVersion+"'); kpr has no hidden metrics.")
	fs.Var(&stringValue{(*string)(&k.Mode), "ProxyMode"}, "proxy-mode", "Proxy mode: 'iptables' (default) or 'ipvs'. kube-proxy's 'nftables' and 'kernelspace' are not supported.")
	fs.Int32Var(&o.healthzPort, "healthz-port", o.healthzPort, "Port of the health server; 0 disables it.")
	fs.Int32Var(&o.metricsPort, "metrics-port", o.metricsPort, "Port of the metrics server.")

	fs.Int32Var(k.IPTables.MasqueradeBit, "iptables-masquerade-bit", *k.IPTables.MasqueradeBit, "Bit of the fwmark that marks packets for SNAT (iptables and ipvs modes), 0..31.")
	fs.BoolVar(&k.IPTables.MasqueradeAll, "masquerade-all", false, "SNAT all traffic sent to Service cluster IPs.")
	fs.BoolVar(k.IPTables.LocalhostNodePorts, "iptables-localhost-nodeports", *k.IPTables.LocalhostNodePorts, "Allow NodePorts on 127.0.0.0/8 (iptables mode, IPv4 only).")
	fs.DurationVar(&k.IPTables.SyncPeriod.Duration, "iptables-sync-period", k.IPTables.SyncPeriod.Duration, "Interval of full resyncs in iptables mode; > 0.")
	fs.DurationVar(&k.IPTables.MinSyncPeriod.Duration, "iptables-min-sync-period", k.IPTables.MinSyncPeriod.Duration, "Minimum interval between syncs in iptables mode; 0 syncs on every change.")

	fs.DurationVar(&k.IPVS.SyncPeriod.Duration, "ipvs-sync-period", k.IPVS.SyncPeriod.Duration, "Interval of full resyncs in ipvs mode; > 0.")
	fs.DurationVar(&k.IPVS.MinSyncPeriod.Duration, "ipvs-min-sync-period", k.IPVS.MinSyncPeriod.Duration, "Minimum interval between syncs in ipvs mode; 0 syncs on every change.")
	fs.StringVar(&k.IPVS.Scheduler, "ipvs-scheduler", "", "IPVS scheduler in ipvs mode (rr when empty).")
	fs.StringSliceVar(&k.IPVS.ExcludeCIDRs, "ipvs-exclude-cidrs", nil, "Comma-separated CIDRs whose IPVS services are left alone when cleaning up.")
	fs.BoolVar(&k.IPVS.StrictARP, "ipvs-strict-arp", false, "Set arp_ignore=1 and arp_announce=2 (ipvs mode).")
	fs.DurationVar(&k.IPVS.TCPTimeout.Duration, "ipvs-tcp-timeout", 0, "Timeout of idle IPVS TCP connections; 0 leaves the kernel's value.")
	fs.DurationVar(&k.IPVS.TCPFinTimeout.Duration, "ipvs-tcpfin-timeout", 0, "Timeout of IPVS TCP connections after a FIN; 0 leaves the kernel's value.")
	fs.DurationVar(&k.IPVS.UDPTimeout.Duration, "ipvs-udp-timeout", 0, "Timeout of IPVS UDP packets; 0 leaves the kernel's value.")

	fs.Var(&stringValue{(*string)(&k.DetectLocalMode), "LocalMode"}, "detect-local-mode", "How local pod traffic is recognised: ClusterCIDR (default), NodeCIDR, BridgeInterface or InterfaceNamePrefix.")
	fs.StringVar(&k.DetectLocal.BridgeInterface, "pod-bridge-interface", "", "Bridge of this node's pods, for --detect-local-mode=BridgeInterface.")
	fs.StringVar(&k.DetectLocal.InterfaceNamePrefix, "pod-interface-name-prefix", "", "Name prefix of this node's pod interfaces, for --detect-local-mode=InterfaceNamePrefix.")
	fs.StringVar(&k.ClusterCIDR, "cluster-cidr", "", "Pod CIDR of the cluster, or a comma-separated dual-stack pair, for --detect-local-mode=ClusterCIDR.")
	fs.StringSliceVar(&k.NodePortAddresses, "nodeport-addresses", nil, "CIDRs and keywords ('primary', 'localhost', 'all') limiting the node IPs NodePorts are served on; all IPs when empty.")

	fs.Int32Var(k.OOMScoreAdj, "oom-score-adj", *k.OOMScoreAdj, "oom_score_adj of the process, -1000..1000.")
	fs.Int32Var(k.Conntrack.MaxPerCore, "conntrack-max-per-core", *k.Conntrack.MaxPerCore, "nf_conntrack_max per CPU core (0 leaves the limit as is and ignores --conntrack-min).")
	fs.Int32Var(k.Conntrack.Min, "conntrack-min", *k.Conntrack.Min, "Lower bound of nf_conntrack_max, whatever --conntrack-max-per-core gives.")
	fs.DurationVar(&k.Conntrack.TCPEstablishedTimeout.Duration, "conntrack-tcp-timeout-established", k.Conntrack.TCPEstablishedTimeout.Duration, "Idle timeout of established TCP connections (0 leaves the kernel's value).")
	fs.DurationVar(&k.Conntrack.TCPCloseWaitTimeout.Duration, "conntrack-tcp-timeout-close-wait", k.Conntrack.TCPCloseWaitTimeout.Duration, "Timeout of TCP connections in CLOSE_WAIT (0 leaves the kernel's value).")
	fs.BoolVar(&k.Conntrack.TCPBeLiberal, "conntrack-tcp-be-liberal", false, "Set nf_conntrack_tcp_be_liberal=1, so out-of-window TCP packets are not marked INVALID.")
	fs.DurationVar(&k.Conntrack.UDPTimeout.Duration, "conntrack-udp-timeout", 0, "Idle timeout of UNREPLIED UDP flows (0 leaves the kernel's value).")
	fs.DurationVar(&k.Conntrack.UDPStreamTimeout.Duration, "conntrack-udp-timeout-stream", 0, "Idle timeout of ASSURED UDP flows (0 leaves the kernel's value).")
	fs.DurationVar(&k.ConfigSyncPeriod.Duration, "config-sync-period", k.ConfigSyncPeriod.Duration, "Resync interval of the API watches; > 0.")
}

// loggingFlagPaths maps kube-proxy's logging flags to their file fields.
// With --config, those given on the command line override the file's.
func loggingFlagPaths() [][2]string {
	return [][2]string{
		{"v", "logging.verbosity"},
		{"vmodule", "logging.vmodule"},
		{"logging-format", "logging.format"},
		{"log-flush-frequency", "logging.flushFrequency"},
		{"log-text-split-stream", "logging.options.text.splitStream"},
		{"log-text-info-buffer-size", "logging.options.text.infoBufferSize"},
		{"log-json-split-stream", "logging.options.json.splitStream"},
		{"log-json-info-buffer-size", "logging.options.json.infoBufferSize"},
	}
}

func (o *options) addLoggingFlags(fs *pflag.FlagSet) {
	lg := &o.kpc.Logging
	fs.VarP(logsapi.VerbosityLevelPflag(&lg.Verbosity), "v", "v", "Log verbosity: 0 logs info and above, higher numbers add detail.")
	fs.Var(logsapi.VModuleConfigurationPflag(&lg.VModule), "vmodule", "Accepted for compatibility, ignored with a warning: kpr has one verbosity.")
	fs.StringVar(&lg.Format, "logging-format", "", "kube-proxy's log format, 'text' or 'json'. kpr maps text to --log-format=console; --log-format wins if both are given.")
	fs.DurationVar(&lg.FlushFrequency.Duration.Duration, "log-flush-frequency", lg.FlushFrequency.Duration.Duration, "Accepted for compatibility, ignored: kpr does not buffer log lines.")
	fs.BoolVar(&lg.Options.Text.SplitStream, "log-text-split-stream", false, "Accepted for compatibility, ignored with a warning.")
	fs.Var(&lg.Options.Text.InfoBufferSize, "log-text-info-buffer-size", "Accepted for compatibility, ignored with a warning.")
	fs.BoolVar(&lg.Options.JSON.SplitStream, "log-json-split-stream", false, "Accepted for compatibility, ignored with a warning.")
	fs.Var(&lg.Options.JSON.InfoBufferSize, "log-json-info-buffer-size", "Accepted for compatibility, ignored with a warning.")
}

func (o *options) addKprFlags(fs *pflag.FlagSet) {
	fs.Var(&enumValue{&o.iptablesBackend, []string{"auto", "legacy", "nft"}}, "iptables-backend", "iptables backend to program: auto (whichever the node already uses), legacy or nft.")
	fs.BoolVar(&o.takeover, "takeover-kube-proxy", false, "Take over from a running kube-proxy on this node.")
	fs.BoolVar(&o.takeoverDryRun, "takeover-dry-run", false, "With --takeover-kube-proxy: report what the takeover would do, change nothing.")
	fs.Var(&enumValue{&o.logFormat, []string{"json", "console"}}, "log-format", "Log format: json or console. Overrides --logging-format and logging.format.")
}

// usage prints the flags grouped, kube-proxy's first.
func (o *options) usage(w io.Writer) {
	fmt.Fprint(w, `Usage: kpr [flags]

kpr is a drop-in replacement for kube-proxy v1.37: it takes kube-proxy's flags and
KubeProxyConfiguration file. With --config, the file replaces every kube-proxy flag
except --hostname-override, --master, --cleanup, --init-only, --write-config-to and
the logging flags, as in kube-proxy. kpr's own flags always apply.
`)
	for _, g := range []struct {
		title string
		fs    *pflag.FlagSet
	}{
		{"kube-proxy flags", o.kubeFS},
		{"kube-proxy logging flags", o.logFS},
		{"kpr flags", o.kprFS},
	} {
		fmt.Fprintf(w, "\n%s:\n%s", g.title, g.fs.FlagUsagesWrapped(100))
	}
}

// Usage prints kpr's grouped flag help to w.
func Usage(w io.Writer) { newOptions(io.Discard).usage(w) }

// Parse parses kpr's command line (without the program name), reads the
// --config file if given, and returns the validated configuration.
//
// It returns ErrHelp after printing the usage to stderr for -h/--help, and
// ErrVersion (or ErrVersionRaw) for --version, before reading any file.
// pflag prints notices about deprecated flags to stderr; they are in
// Config.Warnings too. Other errors name the flag or file field at fault;
// a *ValidationError lists them all.
func Parse(args []string, stderr io.Writer) (*Config, error) {
	o := newOptions(stderr)
	if err := o.fs.Parse(args); err != nil {
		return nil, err
	}
	for _, a := range o.fs.Args() {
		if a != "" {
			return nil, fmt.Errorf("kpr takes no positional arguments, got %q", o.fs.Args())
		}
	}
	switch o.version {
	case "true":
		return nil, ErrVersion
	case "raw":
		return nil, ErrVersionRaw
	}
	return o.complete()
}

// Load reads a KubeProxyConfiguration file alone, as `kpr --config path` would.
func Load(path string) (*Config, error) {
	return Parse([]string{"--config", path}, io.Discard)
}

// complete mirrors kube-proxy's Options.Complete: pick the file or the
// flags, apply the overrides, default, validate.
func (o *options) complete() (*Config, error) {
	var (
		kpc        *v1alpha1.KubeProxyConfiguration
		warns      []Warning
		source     = "flags"
		overridden = map[string]bool{} // file paths set by a flag
	)
	if o.configFile != "" {
		source = "--config " + o.configFile
		data, err := os.ReadFile(o.configFile)
		if err != nil {
			return nil, fmt.Errorf("--config: %w", err)
		}
		kpc, warns, err = decodeFile(data, source)
		if err != nil {
			var ve *ValidationError
			if errors.As(err, &ve) {
				return nil, err // already names the file
			}
			return nil, fmt.Errorf("--config %s: %w", o.configFile, err)
		}
		setDefaults(kpc)
		o.copyLoggingFlags(&kpc.Logging, overridden)
		o.fs.Visit(func(f *pflag.Flag) {
			if o.kubeFS.Lookup(f.Name) != nil && !appliesWithConfig(f.Name) {
				warns = append(warns, Warning{Field: "--" + f.Name, Message: "ignored because --config is set (as in kube-proxy); set it in the configuration file instead"})
			}
		})
	} else {
		kpc = &o.kpc
		if o.writeConfigTo == "" {
			// kube-proxy's deprecated --healthz-port/--metrics-port: 0
			// disables the server, otherwise the port is added to an
			// address given without one.
			kpc.HealthzBindAddress = addressFromPortFlag(kpc.HealthzBindAddress, o.healthzPort)
			kpc.MetricsBindAddress = addressFromPortFlag(kpc.MetricsBindAddress, o.metricsPort)
		} else {
			// kube-proxy skips the port flags here and would then reject
			// an address without a port; kpr just adds the default port.
			kpc.HealthzBindAddress = appendPortIfNeeded(kpc.HealthzBindAddress, defaultHealthzPort)
			kpc.MetricsBindAddress = appendPortIfNeeded(kpc.MetricsBindAddress, defaultMetricsPort)
		}
		for _, name := range []string{"healthz-port", "metrics-port"} {
			if o.fs.Changed(name) {
				warns = append(warns, Warning{Field: "--" + name, Message: "deprecated: use --" + strings.TrimSuffix(name, "-port") + "-bind-address"})
			}
		}
	}
	if o.hostnameOverride != "" {
		kpc.HostnameOverride = o.hostnameOverride
		overridden["hostnameOverride"] = true
	}

	b := &builder{name: pathNamer(o.configFile == "", overridden), warns: warns}
	c := b.build(kpc)
	c.ConfigFile = o.configFile
	c.WriteConfigTo = o.writeConfigTo
	c.Cleanup = o.cleanup
	c.InitOnly = o.initOnly
	c.Master = o.master
	c.IPTables.Backend = IPTablesBackend(o.iptablesBackend)
	c.Takeover = Takeover{Enabled: o.takeover, DryRun: o.takeoverDryRun}
	if o.fs.Changed("log-format") {
		c.LogFormat = LogFormat(o.logFormat)
	}
	if len(b.errs) > 0 {
		return nil, &ValidationError{Source: source, Errs: b.errs}
	}
	c.Warnings = b.warns
	return c, nil
}

// copyLoggingFlags puts the logging flags given on the command line over
// the file's logging settings (kube-proxy's copyLogsFromFlags).
func (o *options) copyLoggingFlags(to *logsapi.LoggingConfiguration, overridden map[string]bool) {
	from := &o.kpc.Logging
	for _, fp := range loggingFlagPaths() {
		if !o.fs.Changed(fp[0]) {
			continue
		}
		overridden[fp[1]] = true
		switch fp[0] {
		case "v":
			to.Verbosity = from.Verbosity
		case "vmodule":
			// The command line's patterns come first, as in kube-proxy.
			to.VModule = append(append(logsapi.VModuleConfiguration{}, from.VModule...), to.VModule...)
		case "logging-format":
			to.Format = from.Format
		case "log-flush-frequency":
			to.FlushFrequency = from.FlushFrequency
		case "log-text-split-stream":
			to.Options.Text.SplitStream = from.Options.Text.SplitStream
		case "log-text-info-buffer-size":
			to.Options.Text.InfoBufferSize = from.Options.Text.InfoBufferSize
		case "log-json-split-stream":
			to.Options.JSON.SplitStream = from.Options.JSON.SplitStream
		case "log-json-info-buffer-size":
			to.Options.JSON.InfoBufferSize = from.Options.JSON.InfoBufferSize
		}
	}
}

func addressFromPortFlag(addr string, port int32) string {
	if port == 0 {
		return ""
	}
	return appendPortIfNeeded(addr, int(port))
}

// flagForPath is the command-line flag that sets a file field, if any.
func flagForPath(path string) string {
	switch path {
	case "mode":
		return "proxy-mode"
	case "hostnameOverride":
		return "hostname-override"
	case "bindAddress":
		return "bind-address"
	case "healthzBindAddress":
		return "healthz-bind-address"
	case "metricsBindAddress":
		return "metrics-bind-address"
	case "bindAddressHardFail":
		return "bind-address-hard-fail"
	case "enableProfiling":
		return "profiling"
	case "showHiddenMetricsForVersion":
		return "show-hidden-metrics-for-version"
	case "featureGates":
		return "feature-gates"
	case "clientConnection.kubeconfig":
		return "kubeconfig"
	case "clientConnection.contentType":
		return "kube-api-content-type"
	case "clientConnection.qps":
		return "kube-api-qps"
	case "clientConnection.burst":
		return "kube-api-burst"
	case "iptables.masqueradeBit":
		return "iptables-masquerade-bit"
	case "iptables.masqueradeAll":
		return "masquerade-all"
	case "iptables.localhostNodePorts":
		return "iptables-localhost-nodeports"
	case "iptables.syncPeriod":
		return "iptables-sync-period"
	case "iptables.minSyncPeriod":
		return "iptables-min-sync-period"
	case "ipvs.syncPeriod":
		return "ipvs-sync-period"
	case "ipvs.minSyncPeriod":
		return "ipvs-min-sync-period"
	case "ipvs.scheduler":
		return "ipvs-scheduler"
	case "ipvs.excludeCIDRs":
		return "ipvs-exclude-cidrs"
	case "ipvs.strictARP":
		return "ipvs-strict-arp"
	case "ipvs.tcpTimeout":
		return "ipvs-tcp-timeout"
	case "ipvs.tcpFinTimeout":
		return "ipvs-tcpfin-timeout"
	case "ipvs.udpTimeout":
		return "ipvs-udp-timeout"
	case "detectLocalMode":
		return "detect-local-mode"
	case "detectLocal.bridgeInterface":
		return "pod-bridge-interface"
	case "detectLocal.interfaceNamePrefix":
		return "pod-interface-name-prefix"
	case "clusterCIDR":
		return "cluster-cidr"
	case "nodePortAddresses":
		return "nodeport-addresses"
	case "oomScoreAdj":
		return "oom-score-adj"
	case "conntrack.maxPerCore":
		return "conntrack-max-per-core"
	case "conntrack.min":
		return "conntrack-min"
	case "conntrack.tcpEstablishedTimeout":
		return "conntrack-tcp-timeout-established"
	case "conntrack.tcpCloseWaitTimeout":
		return "conntrack-tcp-timeout-close-wait"
	case "conntrack.tcpBeLiberal":
		return "conntrack-tcp-be-liberal"
	case "conntrack.udpTimeout":
		return "conntrack-udp-timeout"
	case "conntrack.udpStreamTimeout":
		return "conntrack-udp-timeout-stream"
	case "configSyncPeriod":
		return "config-sync-period"
	}
	for _, fp := range loggingFlagPaths() {
		if fp[1] == path {
			return fp[0]
		}
	}
	return ""
}

// pathNamer returns the builder's naming function: a file field is shown
// as the flag that set it ("--iptables-masquerade-bit",
// "--nodeport-addresses[1]", "--feature-gates[Foo]") when the value came
// from the command line, else as its path in the file.
func pathNamer(fromFlags bool, overridden map[string]bool) func(string) string {
	return func(path string) string {
		base, suffix := path, ""
		if i := strings.IndexByte(path, '['); i >= 0 {
			base, suffix = path[:i], path[i:]
		} else if gate, ok := strings.CutPrefix(path, "featureGates."); ok {
			base, suffix = "featureGates", "["+gate+"]"
		}
		if !fromFlags && !overridden[base] {
			return path
		}
		if f := flagForPath(base); f != "" {
			return "--" + f + suffix
		}
		return path
	}
}

// ipValue is kube-proxy's --bind-address: an IP; "" leaves the default.
type ipValue struct{ p *string }

func (v *ipValue) String() string { return *v.p }
func (v *ipValue) Type() string   { return "ip" }
func (v *ipValue) Set(s string) error {
	if s == "" {
		return nil
	}
	if netutils.ParseIPSloppy(s) == nil {
		return fmt.Errorf("%q is not a valid IP address", s)
	}
	*v.p = s
	return nil
}

// ipPortValue is kube-proxy's IP or IP:port flag; "" leaves the default.
type ipPortValue struct{ p *string }

func (v *ipPortValue) String() string { return *v.p }
func (v *ipPortValue) Type() string   { return "ipport" }
func (v *ipPortValue) Set(s string) error {
	if s == "" {
		return nil
	}
	if netutils.ParseIPSloppy(s) == nil {
		if _, err := parseHostPort(s); err != nil {
			return fmt.Errorf("%q is not IP or IP:port: %v", s, err)
		}
	}
	*v.p = s
	return nil
}

// stringValue is a string flag with a type name for --help; its value is
// validated with the rest of the configuration, as kube-proxy does.
type stringValue struct {
	p   *string
	typ string
}

func (v *stringValue) String() string     { return *v.p }
func (v *stringValue) Type() string       { return v.typ }
func (v *stringValue) Set(s string) error { *v.p = s; return nil }

// enumValue is a string flag restricted to a few values.
type enumValue struct {
	p       *string
	allowed []string
}

func (v *enumValue) String() string { return *v.p }
func (v *enumValue) Type() string   { return strings.Join(v.allowed, "|") }
func (v *enumValue) Set(s string) error {
	for _, a := range v.allowed {
		if s == a {
			*v.p = s
			return nil
		}
	}
	return fmt.Errorf("must be one of %s", strings.Join(v.allowed, ", "))
}

// versionValue is --version: a boolean that also takes "raw".
type versionValue struct{ p *string }

func (v *versionValue) String() string { return *v.p }
func (v *versionValue) Type() string   { return "version" }
func (v *versionValue) IsBoolFlag() bool {
	return true
}
func (v *versionValue) Set(s string) error {
	switch strings.ToLower(s) {
	case "raw":
		*v.p = "raw"
	case "true", "1", "t":
		*v.p = "true"
	case "false", "0", "f":
		*v.p = "false"
	default:
		// kube-proxy's --version=vX.Y.Z fakes the reported version; kpr
		// always reports its own.
		return fmt.Errorf("must be true, false or raw")
	}
	return nil
}
