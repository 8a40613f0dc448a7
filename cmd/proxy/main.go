// Command proxy is kpr, a drop-in replacement for kube-proxy. It accepts
// kube-proxy's flags and --config file; see README.md.
//
//	proxy [kube-proxy flags]      run the proxy
//	proxy --cleanup               remove kpr's rules and exit
//	proxy version                 print the version
//	proxy conntrack <command>     conntrack entries of kpr's Services (see --help)
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/zapr"
	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
	"k8s.io/klog/v2"

	"github.com/kpr-proxy/kpr/internal/app"
	"github.com/kpr-proxy/kpr/internal/config"
	"github.com/kpr-proxy/kpr/internal/ctcli"
	"github.com/kpr-proxy/kpr/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "version" {
		fmt.Println(version.KubeProxyString())
		return 0
	}
	if len(args) > 0 && args[0] == "conntrack" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		return ctcli.Main(ctx, args[1:], os.Stdout, os.Stderr)
	}
	if len(args) > 0 && args[0] == "cleanup" {
		args = append([]string{"--cleanup"}, args[1:]...)
	}
	cfg, err := config.Parse(args, os.Stderr)
	switch {
	case errors.Is(err, config.ErrHelp):
		return 0
	case errors.Is(err, config.ErrVersion):
		fmt.Println(version.KubeProxyString())
		return 0
	case errors.Is(err, config.ErrVersionRaw):
		fmt.Println(version.Raw())
		return 0
	case err != nil:
		fmt.Fprintf(os.Stderr, "proxy: %v\n", err)
		return 2
	}

	// moby/ipvs logs through logrus' global logger (modprobe attempts,
	// "ipvs not enabled" at every handle). kpr reports those conditions
	// itself, once and in its own log format.
	logrus.SetOutput(io.Discard)

	log, err := app.NewLogger(cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "proxy: logger: %v\n", err)
		return 1
	}
	defer func() { _ = log.Sync() }()
	// client-go reports through klog (watch errors such as "forbidden"
	// when RBAC is missing): send those through the same structured log.
	klog.SetLogger(zapr.NewLogger(log.Named("client-go")))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	switch {
	case cfg.WriteConfigTo != "":
		if err := config.WriteConfigFile(cfg.WriteConfigTo, cfg); err != nil {
			fmt.Fprintf(os.Stderr, "proxy: %v\n", err)
			return 1
		}
		return 0
	case cfg.Cleanup:
		if err := app.Cleanup(ctx, cfg, log); err != nil {
			fmt.Fprintf(os.Stderr, "proxy: cleanup: %v\n", err)
			return 1
		}
		return 0
	case cfg.InitOnly:
		if err := app.InitOnly(cfg, log); err != nil {
			fmt.Fprintf(os.Stderr, "proxy: %v\n", err)
			return 1
		}
		return 0
	}
	if err := app.Run(ctx, cfg, log); err != nil {
		log.Error("proxy failed", zap.Error(err))
		return 1
	}
	return 0
}
