// Package app wires kpr together: configuration → API client → watcher →
// rate-limited sync runner → one proxier per IP family, plus the health,
// metrics and health-check-node-port servers. It holds no proxy logic of its
// own; each piece lives in the package named for its job.
package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	gosync "sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kpr-proxy/kpr/internal/config"
	"github.com/kpr-proxy/kpr/internal/endpoints"
	"github.com/kpr-proxy/kpr/internal/health"
	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/metrics"
	"github.com/kpr-proxy/kpr/internal/model"
	kprsync "github.com/kpr-proxy/kpr/internal/sync"
	"github.com/kpr-proxy/kpr/internal/version"
	"github.com/kpr-proxy/kpr/internal/watch"
)

// canaryInterval is how often the proxiers check that nobody flushed our
// rules. Three `iptables -C` per family; cheap enough to notice a firewalld
// reload within seconds rather than at the next periodic resync.
const canaryInterval = 5 * time.Second

// family is one IP family's proxier and what it last programmed.
type family struct {
	fam     model.Family
	proxier modeProxier
	// applied is the snapshot the kernel holds (after the last successful
	// sync); conntrack cleanup compares against it.
	applied *model.Snapshot
}

// App is a running proxy.
type App struct {
	cfg      *config.Config
	log      *zap.Logger
	nodeName string
	client   kubernetes.Interface
	reg      *prometheus.Registry
	metrics  *metrics.Metrics

	watcher  *watch.Watcher
	runner   *kprsync.Runner
	families []*family
	healthz  *health.ProxyHealthServer
	hcServer *health.ServiceHealthServer
	cleaners map[model.Family]StaleCleaner
	ipvsK    *ipvsKernel

	ctx context.Context
}

// StaleCleaner removes conntrack entries that point at endpoints a sync
// just took away (implemented by package conntrack).
type StaleCleaner interface {
	Cleanup(prev, cur *model.Snapshot, node *model.Node) (int, error)
}

// Run runs the proxy until ctx is cancelled. Rules stay in place on exit,
// as with kube-proxy: a restart must not interrupt traffic.
func Run(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
	for _, w := range cfg.Warnings {
		log.Warn("configuration", zap.String("field", w.Field), zap.String("warning", w.Message))
	}
	if cfg.Mode != config.ModeIPTables && cfg.Mode != config.ModeIPVS {
		return fmt.Errorf("proxy mode %q is not supported by kpr; use iptables or ipvs", cfg.Mode)
	}
	nodeName, err := cfg.NodeName()
	if err != nil {
		return fmt.Errorf("node name: %w", err)
	}
	a := &App{cfg: cfg, log: log, nodeName: nodeName, ctx: ctx, cleaners: map[model.Family]StaleCleaner{}}
	log.Info("starting kpr", zap.String("version", version.String()), zap.String("node", a.nodeName),
		zap.String("proxy_mode", string(cfg.Mode)))

	applyOOMScoreAdj(cfg.OOMScoreAdj, log)
	if err := applyConntrackSysctls(cfg, log); err != nil {
		log.Warn("conntrack sysctls", zap.Error(err))
	}

	client, err := NewClient(cfg)
	if err != nil {
		return err
	}
	a.client = client
	a.reg = prometheus.NewRegistry()
	a.metrics = metrics.New(a.reg)

	fams, err := a.buildFamilies(ctx)
	if err != nil {
		return err
	}
	a.families = fams

	var servers gosync.WaitGroup
	defer servers.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.ctx = ctx

	if err := a.startServers(ctx, &servers); err != nil {
		return err
	}

	famList := make([]model.Family, 0, len(fams))
	for _, f := range fams {
		famList = append(famList, f.fam)
	}
	a.watcher, err = watch.New(watch.Config{
		Client: client, NodeName: a.nodeName, Families: famList,
		ResyncPeriod: cfg.ConfigSyncPeriod, Logger: log.Named("watch"),
		Recorder: recorder{a.metrics}, RequestSync: a.requestSync,
		IgnoreExternalIPs: !cfg.Features.AllowServiceExternalIPs,
	})
	if err != nil {
		return err
	}
	a.runner, err = kprsync.New(kprsync.Config{
		Name: "iptables", Fn: a.withTakeover(a.sync),
		MinInterval: cfg.MinSyncPeriod, MaxInterval: cfg.SyncPeriod, Burst: 2,
		Retry:  &kprsync.Backoff{Initial: time.Second, Max: cfg.SyncPeriod, Factor: 2},
		Logger: log.Named("sync"),
	})
	if err != nil {
		return err
	}

	a.watcher.Start(ctx)
	log.Info("waiting for the informer caches")
	waitCtx, waitDone := context.WithCancel(ctx)
	go func() {
		// Rules stay as they are while we wait; say why nothing happens.
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-waitCtx.Done():
				return
			case <-t.C:
				log.Warn("still waiting for Services, EndpointSlices and the Node from the API server; "+
					"check the apiserver address and the ClusterRole (list/watch services, endpointslices, nodes)",
					zap.String("node", a.nodeName))
			}
		}
	}()
	err = a.watcher.WaitForSync(ctx)
	waitDone()
	if err != nil {
		return fmt.Errorf("waiting for Services and EndpointSlices: %w", err)
	}
	if cfg.DetectLocal.Mode == config.LocalModeNodeCIDR {
		// Pod traffic can only be recognised once the Node has its
		// podCIDR; kube-proxy waits for it too.
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Minute)
		_, err := a.watcher.WaitForNode(wctx, watch.NeedPodCIDRs)
		wcancel()
		if err != nil {
			log.Warn("Node has no podCIDR; NodeCIDR local detection stays off until it does", zap.Error(err))
		}
	}

	go a.monitorCanaries(ctx)
	a.requestSync()
	err = a.runner.Run(ctx)
	a.watcher.Wait()
	if a.hcServer != nil {
		a.hcServer.Close()
	}
	log.Info("kpr stopped; programmed rules are left in place")
	return err
}

// requestSync is called by the watcher on every change.
func (a *App) requestSync() {
	now := time.Now()
	for _, f := range a.families {
		if a.healthz != nil {
			a.healthz.QueuedUpdate(f.fam)
		}
		a.metrics.SyncQueued(f.fam, now)
	}
	if a.runner != nil {
		a.runner.Request()
	}
}

// sync is the runner's work function: the only code that changes the
// kernel.
func (a *App) sync() error {
	st := a.watcher.Snapshot()
	pendingSvc, pendingEp := a.watcher.Pending()
	a.metrics.SetServiceChangesPending(pendingSvc)
	a.metrics.SetEndpointChangesPending(pendingEp)

	var errs []error
	hcPorts := map[types.NamespacedName]uint16{}
	localEps := map[types.NamespacedName]int{}
	for _, f := range a.families {
		fs := st.Family(f.fam)
		if fs == nil {
			continue
		}
		err := f.proxier.Sync(a.ctx, fs.Snapshot, fs.Node)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.fam, err))
			continue
		}
		now := time.Now()
		a.metrics.SyncSucceeded(f.fam, now)
		if a.healthz != nil {
			a.healthz.Updated(f.fam)
		}
		for nsn, t := range fs.TriggerTimes {
			a.metrics.ObserveNetworkProgramming(f.fam, now.Sub(t))
			a.log.Debug("network programmed", zap.String("service", nsn.String()), zap.Duration("latency", now.Sub(t)))
		}
		if c := a.cleaners[f.fam]; c != nil {
			if _, err := c.Cleanup(f.applied, fs.Snapshot, fs.Node); err != nil {
				a.log.Warn("conntrack cleanup failed", zap.String("ip_family", f.fam.String()), zap.Error(err))
			}
		}
		f.applied = fs.Snapshot
		collectHealthChecks(fs.Snapshot, fs.Node, hcPorts, localEps)
	}
	if a.hcServer != nil {
		a.hcServer.SyncServices(hcPorts)
		a.hcServer.SyncEndpoints(localEps)
	}
	return errors.Join(errs...)
}

// collectHealthChecks gathers, per Service, its health check node port and
// how many local endpoints it has (the number the load balancer's probe
// sees), merging families: a dual-stack Service has one health check port.
func collectHealthChecks(snap *model.Snapshot, node *model.Node, ports map[types.NamespacedName]uint16, local map[types.NamespacedName]int) {
	for name, sp := range snap.Services {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		nsn := types.NamespacedName{Namespace: name.Namespace, Name: name.Name}
		ports[nsn] = sp.HealthCheckNodePort
		n := len(endpoints.Categorize(snap.Endpoints[name], sp, node).Local)
		if n > local[nsn] {
			local[nsn] = n
		}
	}
}

func (a *App) monitorCanaries(ctx context.Context) {
	t := time.NewTicker(canaryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, f := range a.families {
			ok, err := f.proxier.CheckCanary()
			if err != nil {
				a.log.Debug("canary check failed", zap.String("ip_family", f.fam.String()), zap.Error(err))
				continue
			}
			if !ok {
				a.runner.Request()
			}
		}
	}
}

// buildFamilies makes a proxier for each family whose iptables works here.
func (a *App) buildFamilies(ctx context.Context) ([]*family, error) {
	var out []*family
	v4CIDRs, v6CIDRs := config.SplitByFamily(a.cfg.DetectLocal.ClusterCIDRs)
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		backend, reason, err := ipt.DetectBackend(ctx, fam, string(a.cfg.IPTables.Backend), a.log)
		if err != nil {
			if fam == model.IPv4 {
				return nil, fmt.Errorf("iptables for IPv4: %w", err)
			}
			a.log.Warn("IPv6 iptables unusable; running single-stack IPv4", zap.Error(err))
			continue
		}
		runner, err := ipt.New(ipt.Config{Family: fam, Backend: backend, Logger: a.log.Named("ipt")})
		if err != nil {
			if fam == model.IPv4 {
				return nil, err
			}
			a.log.Warn("IPv6 iptables unusable; running single-stack IPv4", zap.Error(err))
			continue
		}
		a.log.Info("iptables backend", zap.String("ip_family", fam.String()), zap.String("backend", string(backend)), zap.String("reason", reason))
		cidrs := v4CIDRs
		if fam == model.IPv6 {
			cidrs = v6CIDRs
		}
		npPrimary := a.cfg.NodePortAddresses.Primary
		var npCIDRs []netip.Prefix
		for _, c := range a.cfg.NodePortAddresses.CIDRs {
			if fam.Contains(c.Addr()) {
				npCIDRs = append(npCIDRs, c)
			}
		}
		var p modeProxier
		if a.cfg.Mode == config.ModeIPVS {
			p, err = a.newIPVSProxier(fam, runner, npPrimary, npCIDRs, cidrs)
		} else {
			p, err = a.newIPTablesProxier(fam, runner, npPrimary, npCIDRs, cidrs)
		}
		if err != nil {
			return nil, err
		}
		if c, err := newStaleCleaner(fam, a.log, a.metrics); err != nil {
			a.log.Warn("conntrack cleanup unavailable", zap.String("ip_family", fam.String()), zap.Error(err))
		} else if c != nil {
			a.cleaners[fam] = c
		}
		out = append(out, &family{fam: fam, proxier: p})
	}
	return out, nil
}

func (a *App) startServers(ctx context.Context, wg *gosync.WaitGroup) error {
	var err error
	if a.cfg.HealthzBindAddress.IsValid() {
		a.healthz, err = health.NewProxyHealthServer(health.ProxyHealthConfig{
			Addr:          a.cfg.HealthzBindAddress.String(),
			HealthTimeout: 2 * a.cfg.SyncPeriod,
			Node:          nodeGetter{a},
			Metrics:       a.metrics,
			Logger:        a.log.Named("healthz"),
		})
		if err != nil {
			return err
		}
		a.serve(ctx, wg, "healthz", func() error { return a.healthz.Run(ctx) })
	}
	mux, err := health.NewMetricsMux(health.MetricsMuxConfig{
		Gatherer: a.reg, ProxyMode: string(a.cfg.Mode), EnableProfiling: a.cfg.EnableProfiling,
		Configz: config.ToKubeProxyConfiguration(a.cfg),
	})
	if err != nil {
		return err
	}
	mux.Handle("/debug/kpr/", http.HandlerFunc(a.debugHandler))
	a.serve(ctx, wg, "metrics", func() error {
		return health.ListenAndServe(ctx, health.StdListener{}, a.cfg.MetricsBindAddress.String(), mux)
	})

	hcAddrs, hcFamily := a.healthCheckAddrs()
	var checker health.HealthChecker = alwaysHealthy{}
	if a.healthz != nil {
		checker = a.healthz
	}
	a.hcServer, err = health.NewServiceHealthServer(health.ServiceHealthConfig{
		NodeName: a.nodeName, Family: hcFamily, NodePortAddresses: hcAddrs,
		Proxy: checker, Logger: a.log.Named("healthcheck"),
	})
	return err
}

// healthCheckAddrs picks where health check node ports listen: the local
// addresses --nodeport-addresses selects, or every address (the wildcard,
// both families) when it is unset or mixes families.
func (a *App) healthCheckAddrs() ([]netip.Addr, model.Family) {
	npa := a.cfg.NodePortAddresses
	if npa.IsZero() || npa.Primary {
		return nil, 0
	}
	all, err := localAddrs()
	if err != nil {
		return nil, 0
	}
	var out []netip.Addr
	fam := model.Family(0)
	for _, ad := range all {
		for _, c := range npa.CIDRs {
			if !c.Contains(ad) {
				continue
			}
			if c.Bits() == 0 {
				return nil, 0 // "all"
			}
			if fam != 0 && fam != model.FamilyOf(ad) {
				return nil, 0
			}
			fam = model.FamilyOf(ad)
			out = append(out, ad)
			break
		}
	}
	return out, fam
}

// serve runs a server until ctx ends. A failure (typically "address in
// use": during a migration kube-proxy still holds 10256/10249) is retried
// every bindRetry, as kube-proxy does, unless --bind-address-hard-fail.
func (a *App) serve(ctx context.Context, wg *gosync.WaitGroup, name string, run func() error) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			err := run()
			if ctx.Err() != nil {
				return
			}
			if a.cfg.BindAddressHardFail {
				a.log.Fatal("server failed", zap.String("server", name), zap.Error(err))
			}
			a.log.Warn("server failed; retrying", zap.String("server", name), zap.Error(err), zap.Duration("retry_in", bindRetry))
			select {
			case <-ctx.Done():
				return
			case <-time.After(bindRetry):
			}
		}
	}()
}

// bindRetry is how long a failed health or metrics server waits to retry.
const bindRetry = 5 * time.Second

type alwaysHealthy struct{}

func (alwaysHealthy) Healthy() bool { return true }

// nodeGetter gives the health server the Node facts it judges /healthz by.
// The watcher keeps model facts, not the API object; a terminating node is
// presented with the autoscaler's taint, which the health server treats
// exactly like a node being deleted.
type nodeGetter struct{ a *App }

func (n nodeGetter) Node() *v1.Node {
	if n.a.watcher == nil {
		return nil
	}
	for _, node := range n.a.watcher.Nodes() {
		if node == nil || node.Name == "" {
			continue
		}
		out := &v1.Node{}
		out.Name = node.Name
		if node.Terminating {
			out.Spec.Taints = []v1.Taint{{Key: health.ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
		}
		return out
	}
	return nil
}

type recorder struct{ m *metrics.Metrics }

func (r recorder) InvalidObject(kind, reason string) { r.m.InvalidObject(kind, reason) }
func (r recorder) ServiceChange()                    { r.m.ServiceChanged() }
func (r recorder) EndpointChange()                   { r.m.EndpointChanged() }
func (r recorder) ChangesPending(services, eps int) {
	r.m.SetServiceChangesPending(services)
	r.m.SetEndpointChangesPending(eps)
}

// NewClient builds the API client from --kubeconfig/--master, falling back
// to the in-cluster config, with kube-proxy's client settings.
func NewClient(cfg *config.Config) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if cfg.ClientConnection.Kubeconfig == "" && cfg.Master == "" {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig or --master given and not running in a cluster: %w", err)
		}
	} else {
		rc, err = clientcmd.BuildConfigFromFlags(cfg.Master, cfg.ClientConnection.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("loading kubeconfig %q: %w", cfg.ClientConnection.Kubeconfig, err)
		}
	}
	rc.QPS = cfg.ClientConnection.QPS
	rc.Burst = int(cfg.ClientConnection.Burst)
	rc.ContentType = cfg.ClientConnection.ContentType
	rc.AcceptContentTypes = cfg.ClientConnection.AcceptContentTypes
	rc.UserAgent = "kpr/" + version.Version
	return kubernetes.NewForConfig(rc)
}

// localAddrs lists this network namespace's interface addresses.
func localAddrs() ([]netip.Addr, error) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ifAddrs))
	for _, ia := range ifAddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}

// procSysctl reads and writes /proc/sys.
type procSysctl struct{}

func (procSysctl) Get(name string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
	return strings.TrimSpace(string(b)), err
}

func (procSysctl) Set(name, value string) error {
	return os.WriteFile("/proc/sys/"+strings.ReplaceAll(name, ".", "/"), []byte(value), 0o644)
}

func applyOOMScoreAdj(v int32, log *zap.Logger) {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(int(v))), 0o644); err != nil {
		log.Info("cannot set oom_score_adj", zap.Int32("value", v), zap.Error(err))
	}
}
