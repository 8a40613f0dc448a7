package vm

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/e2e/framework"
	"github.com/kpr-proxy/kpr/e2e/vm/agentapi"
	"github.com/kpr-proxy/kpr/e2e/vm/image"
)

// Guest paths of the proxy and its kubeconfig.
const (
	guestProxyBin  = agentapi.BinDir + "/proxy"
	guestKubeconf  = "/etc/kpr/kubeconfig"
	proxyProcName  = "proxy"
	proxyMetricURL = "http://127.0.0.1:10249/metrics"
)

// ProxyFile returns the overlay entry carrying the proxy binary of kind
// (framework.ProxyKpr: bin/proxy; framework.ProxyUpstream: the harness-built
// kube-proxy) to Boot.
func ProxyFile(c *framework.Cluster, kind string) (image.OverlayFile, error) {
	bin, err := c.ProxyBinary(kind)
	if err != nil {
		return image.OverlayFile{}, err
	}
	if _, err := os.Stat(bin); err != nil {
		return image.OverlayFile{}, fmt.Errorf("proxy binary for %s: %w", kind, err)
	}
	return image.OverlayFile{Path: guestProxyBin, Src: bin, Mode: 0o755}, nil
}

// Proxy is the proxy process in the guest.
type Proxy struct {
	v    *VM
	Kind string
	Args []string
}

// ProxyArgs are the proxy flags in the guest: the e2e standard ones with
// --proxy-mode=ipvs and the guest's kubeconfig. --conntrack-max-per-core=0
// is dropped: the guest is the proxy's own initial namespace, where
// nf_conntrack_max is writable, so it behaves as on a real node.
func (v *VM) ProxyArgs(extra ...string) []string {
	var args []string
	for _, a := range framework.StandardProxyArgs(v.Node, guestKubeconf) {
		switch {
		case strings.HasPrefix(a, "--proxy-mode="):
			args = append(args, "--proxy-mode=ipvs")
		case strings.HasPrefix(a, "--conntrack-max-per-core="):
		default:
			args = append(args, a)
		}
	}
	return append(args, extra...)
}

// StartProxy copies kubeconfig (a host file, e.g. from
// ServiceAccountKubeconfig: its server is https://192.0.2.2:6443, which the
// guest reaches through qemu's guestfwd) into the guest and starts the proxy
// in IPVS mode, then waits for its first sync.
func (v *VM) StartProxy(t testing.TB, kind, kubeconfig string, extra ...string) *Proxy {
	t.Helper()
	kc, err := os.ReadFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := v.Agent.WriteFile(ctx, guestKubeconf, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &Proxy{v: v, Kind: kind, Args: v.ProxyArgs(extra...)}
	p.Start(t)
	t.Cleanup(func() {
		if v.qemu != nil && v.qemu.Running() {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			_, _ = v.Agent.Stop(ctx, agentapi.StopArgs{Name: proxyProcName, Grace: 5 * time.Second})
		}
	})
	return p
}

// Start (re)starts the proxy and waits until it has synced (see WaitSynced).
func (p *Proxy) Start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := p.v.Agent.Start(ctx, agentapi.StartArgs{Name: proxyProcName, Argv: append([]string{guestProxyBin}, p.Args...)}); err != nil {
		t.Fatalf("starting the proxy in the VM: %v", err)
	}
	p.WaitSynced(t, 120*time.Second)
}

// Stop stops the proxy (SIGTERM, SIGKILL after 5s), as a DaemonSet rollout
// or a node agent restart would.
func (p *Proxy) Stop(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := p.v.Agent.Stop(ctx, agentapi.StopArgs{Name: proxyProcName, Grace: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if st.Running {
		t.Fatalf("proxy still running after Stop")
	}
}

// Running reports whether the proxy process is alive.
func (p *Proxy) Running(ctx context.Context) (bool, string, error) {
	st, err := p.v.Agent.Status(ctx, proxyProcName)
	return st.Running, st.Exit, err
}

// Log returns the proxy's log from the guest.
func (p *Proxy) Log(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := p.v.Agent.ReadFile(ctx, agentapi.LogDir+"/"+proxyProcName+".log")
	if err != nil {
		return fmt.Sprintf("(cannot read the proxy log: %v)", err)
	}
	return string(b)
}

// Tail returns the last n lines of the proxy's log.
func (p *Proxy) Tail(t testing.TB, n int) string {
	lines := strings.Split(strings.TrimRight(p.Log(t), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitSynced waits until the current proxy process reports a completed sync
// (framework.SyncedMetric > 0), failing with its log tail if it exits or
// the timeout passes.
func (p *Proxy) WaitSynced(t testing.TB, timeout time.Duration) {
	t.Helper()
	err := framework.Poll(context.Background(), timeout, 250*time.Millisecond, func(ctx context.Context) error {
		running, exit, err := p.Running(ctx)
		if err != nil {
			return err
		}
		if !running {
			return fmt.Errorf("proxy exited: %s", exit)
		}
		r, err := p.v.Agent.HTTPGet(ctx, agentapi.HTTPGetArgs{URL: proxyMetricURL, Timeout: 3 * time.Second})
		if err != nil {
			return err
		}
		v, ok := metricValue(r.Body, framework.SyncedMetric)
		if !ok || v <= 0 {
			return fmt.Errorf("%s not > 0 yet", framework.SyncedMetric)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("proxy (%s) in the VM did not sync: %v\n--- last lines of its log:\n%s", p.Kind, err, p.Tail(t, 40))
	}
}

// Metric names WaitIdle compares (kube-proxy's; kpr exports the same).
const (
	syncedMetric = framework.SyncedMetric
	queuedMetric = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
)

// WaitIdle waits until the proxy has no sync pending or running: for every
// IP family the last completed sync is no older than the last queued one,
// and no sync completes during a quiet period. Stopping a proxy in the
// middle of a sync can leave its ipsets half-updated (upstream kube-proxy
// then rejects new connections to a ClusterIP that is in KUBE-IPVS-IPS but
// not yet in KUBE-CLUSTER-IP until it runs again), which is not what a
// restart test is about.
func (p *Proxy) WaitIdle(t testing.TB, timeout time.Duration) {
	t.Helper()
	const quiet = 2 * time.Second
	var last map[string]float64
	var since time.Time
	err := framework.Poll(context.Background(), timeout, 250*time.Millisecond, func(ctx context.Context) error {
		r, err := p.v.Agent.HTTPGet(ctx, agentapi.HTTPGetArgs{URL: proxyMetricURL, Timeout: 3 * time.Second})
		if err != nil {
			return err
		}
		synced, queued := metricSamples(r.Body, syncedMetric), metricSamples(r.Body, queuedMetric)
		if len(synced) == 0 {
			return fmt.Errorf("%s not exported", syncedMetric)
		}
		for k, q := range queued {
			if synced[k] < q {
				last = nil
				return fmt.Errorf("sync pending (%s%s: queued %.3f, last synced %.3f)", queuedMetric, k, q, synced[k])
			}
		}
		if !maps.Equal(last, synced) {
			last, since = synced, time.Now()
			return fmt.Errorf("a sync just completed")
		}
		if time.Since(since) < quiet {
			return fmt.Errorf("quiet for %s only", time.Since(since).Round(time.Millisecond))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("proxy (%s) in the VM did not become idle: %v", p.Kind, err)
	}
}

// metricSamples returns every sample of name keyed by its label set ("" or
// "{ip_family=\"IPv4\"}").
func metricSamples(text, name string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" {
			continue
		}
		labels := ""
		switch rest[0] {
		case ' ':
		case '{':
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			labels, rest = rest[:end+1], rest[end+1:]
		default:
			continue
		}
		if f := strings.Fields(rest); len(f) > 0 {
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				out[labels] = v
			}
		}
	}
	return out
}

// HealthCheck GETs the proxy's service health check port for a Service
// (healthCheckNodePort) from the outside namespace and returns status and
// body.
func (p *Proxy) HealthCheck(ctx context.Context, port int) (int, string, error) {
	r, err := p.v.Agent.HTTPGet(ctx, agentapi.HTTPGetArgs{NetNS: OutsideNS, URL: fmt.Sprintf("http://%s:%d/", p.v.Node.IPv4, port), Timeout: 3 * time.Second})
	return r.Status, r.Body, err
}

// metricValue returns a sample of name (any label set) > 0 if there is one,
// else any sample.
func metricValue(text, name string) (float64, bool) {
	samples := metricSamples(text, name)
	var v float64
	found := false
	for _, x := range samples {
		if !found || x > v {
			v, found = x, true
		}
	}
	return v, found
}
