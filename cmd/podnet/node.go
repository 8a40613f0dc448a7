package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kpr-proxy/kpr/internal/cni/config"
	"github.com/kpr-proxy/kpr/internal/cni/install"
	"github.com/kpr-proxy/kpr/internal/cni/routes"
	"github.com/kpr-proxy/kpr/internal/version"
)

// nodeOptions are `podnet node`'s flags.
type nodeOptions struct {
	Kubeconfig    string
	NodeName      string
	CNIConfDir    string
	CNIConfName   string
	CNIBinDir     string
	InstallBinary bool
	NetworkName   string
	CNIVersion    string
	Bridge        string
	MTU           int
	IPMasq        bool
	ClusterCIDR   string
	DataDir       string
	Routes        bool
	RouteProtocol int
	ResyncPeriod  time.Duration
	LogLevel      string
}

func nodeFlags(o *nodeOptions) *pflag.FlagSet {
	fs := pflag.NewFlagSet("podnet node", pflag.ContinueOnError)
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty means in-cluster config")
	fs.StringVar(&o.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's Node name (default $NODE_NAME)")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "directory the conflist is written to")
	fs.StringVar(&o.CNIConfName, "cni-conf-name", "10-podnet.conflist", "conflist file name")
	fs.StringVar(&o.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "directory the plugin binary is installed to")
	fs.BoolVar(&o.InstallBinary, "install-binary", true, "copy this binary to <cni-bin-dir>/podnet at start")
	fs.StringVar(&o.NetworkName, "network-name", "podnet", "network name in the conflist")
	fs.StringVar(&o.CNIVersion, "cni-version", "1.0.0", "cniVersion of the conflist (1.1.0 enables STATUS and GC on runtimes that support it)")
	fs.StringVar(&o.Bridge, "bridge", "", "bridge name in the conflist (plugin default "+config.DefaultBridge+")")
	fs.IntVar(&o.MTU, "mtu", 0, fmt.Sprintf("pod MTU in the conflist (plugin default %d)", config.DefaultMTU))
	fs.BoolVar(&o.IPMasq, "ip-masq", false, "masquerade pod traffic leaving --cluster-cidr")
	fs.StringVar(&o.ClusterCIDR, "cluster-cidr", "", "cluster pod CIDR(s), comma-separated (needed by --ip-masq)")
	fs.StringVar(&o.DataDir, "data-dir", "", "IPAM data directory in the conflist (plugin default "+config.DefaultDataDir+")")
	fs.BoolVar(&o.Routes, "routes", true, "keep host-gw routes to other nodes' podCIDRs (nodes must share an L2 segment)")
	fs.IntVar(&o.RouteProtocol, "route-protocol", routes.DefaultProtocol, "route protocol number that marks podnet's routes")
	fs.DurationVar(&o.ResyncPeriod, "resync-period", routes.DefaultResyncPeriod, "how often routes are re-checked without Node changes")
	fs.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	return fs
}

// nodeDeps are the outside world of `podnet node`, injected by tests.
type nodeDeps struct {
	Client kubernetes.Interface
	// Table is nil when routes are disabled.
	Table routes.Table
	// Executable is the binary to install.
	Executable string
	Logger     *zap.Logger
}

func runNodeCmd(args []string) int {
	var o nodeOptions
	fs := nodeFlags(&o)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "podnet node: %v\n", err)
		return 2
	}
	log, err := newLogger(o.LogLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "podnet node: %v\n", err)
		return 2
	}
	defer func() { _ = log.Sync() }()

	deps := nodeDeps{Logger: log}
	if deps.Executable, err = os.Executable(); err != nil {
		log.Error("cannot find own binary", zap.Error(err))
		return 1
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	if err != nil {
		log.Error("cannot load Kubernetes client config", zap.Error(err), zap.String("kubeconfig", o.Kubeconfig))
		return 1
	}
	restCfg.UserAgent = "podnet/" + version.Version
	if deps.Client, err = kubernetes.NewForConfig(restCfg); err != nil {
		log.Error("cannot create Kubernetes client", zap.Error(err))
		return 1
	}
	if o.Routes {
		t, err := routes.NewNetlinkTable(routes.NetlinkConfig{})
		if err != nil {
			log.Error("cannot open netlink", zap.Error(err))
			return 1
		}
		defer t.Close()
		deps.Table = t
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runNode(ctx, o, deps); err != nil {
		log.Error("podnet node failed", zap.Error(err))
		return 1
	}
	return 0
}

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zap.ParseAtomicLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	c := zap.NewProductionConfig()
	c.Level = lvl
	l, err := c.Build()
	if err != nil {
		return nil, err
	}
	return l.With(zap.String("component", "podnet-node")), nil
}

// runNode validates options, installs the binary, then watches Nodes until
// ctx ends: the conflist follows the own Node's podCIDRs, routes follow the
// other Nodes.
func runNode(ctx context.Context, o nodeOptions, d nodeDeps) error {
	if o.NodeName == "" {
		return errors.New("--node-name (or $NODE_NAME) is required")
	}
	var clusterCIDRs []netip.Prefix
	if o.ClusterCIDR != "" {
		for _, s := range strings.Split(o.ClusterCIDR, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(s))
			if err != nil {
				return fmt.Errorf("--cluster-cidr %q: %w", o.ClusterCIDR, err)
			}
			if p.Masked() != p {
				return fmt.Errorf("--cluster-cidr %q: %s has host bits set; did you mean %s?", o.ClusterCIDR, p, p.Masked())
			}
			clusterCIDRs = append(clusterCIDRs, p)
		}
	}
	if o.IPMasq && len(clusterCIDRs) == 0 {
		return errors.New("--ip-masq needs --cluster-cidr")
	}
	if o.InstallBinary {
		changed, err := install.InstallBinary(d.Executable, o.CNIBinDir, "podnet")
		if err != nil {
			return fmt.Errorf("installing plugin into %s: %w", o.CNIBinDir, err)
		}
		d.Logger.Info("plugin binary installed", zap.String("path", filepath.Join(o.CNIBinDir, "podnet")), zap.Bool("changed", changed))
	}
	confPath := filepath.Join(o.CNIConfDir, o.CNIConfName)
	writeConf := func(n *v1.Node) error {
		cidrs, errs := routes.PodCIDRs(n)
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		data, err := install.Conflist(install.ConflistConfig{
			Name: o.NetworkName, CNIVersion: o.CNIVersion, PodCIDRs: cidrs,
			Bridge: o.Bridge, MTU: o.MTU, IPMasq: o.IPMasq, ClusterCIDRs: clusterCIDRs, DataDir: o.DataDir,
		})
		if err != nil {
			return err
		}
		changed, err := install.WriteFileAtomic(confPath, data, 0o644)
		if err != nil {
			return fmt.Errorf("writing %s: %w", confPath, err)
		}
		d.Logger.Info("CNI config written", zap.String("path", confPath), zap.Strings("pod_cidrs", n.Spec.PodCIDRs), zap.Bool("changed", changed))
		return nil
	}
	c, err := routes.New(routes.Config{
		Client:       d.Client,
		NodeName:     o.NodeName,
		Table:        d.Table,
		Protocol:     o.RouteProtocol,
		Logger:       d.Logger,
		ResyncPeriod: o.ResyncPeriod,
		OnLocalNode:  writeConf,
	})
	if err != nil {
		return err
	}
	return c.Run(ctx)
}

// runInstallCmd is `podnet install`: the binary copy alone, for an init
// container.
func runInstallCmd(args []string) int {
	fs := pflag.NewFlagSet("podnet install", pflag.ContinueOnError)
	binDir := fs.String("cni-bin-dir", "/opt/cni/bin", "directory the plugin binary is installed to")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "podnet install: %v\n", err)
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "podnet install: %v\n", err)
		return 1
	}
	changed, err := install.InstallBinary(self, *binDir, "podnet")
	if err != nil {
		fmt.Fprintf(os.Stderr, "podnet install: %v\n", err)
		return 1
	}
	fmt.Printf("installed %s (changed: %v)\n", filepath.Join(*binDir, "podnet"), changed)
	return 0
}
