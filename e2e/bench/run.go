package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/e2e/framework"
)

// Bench runs the measurements on one cluster. Node(0) runs the proxy under
// test and the client pod; the echo pods run on Node(1), so traffic to them
// is routed (no same-bridge hairpin) and only node1's rules act on it.
type Bench struct {
	Cfg      Config
	Cluster  *framework.Cluster
	Node     *framework.Node
	Client   *framework.Pod
	EchoA    *framework.Pod
	EchoB    *framework.Pod
	Workload *Workload
	Kernel   *KernelState
	// Shims are the PATH directories per backend.
	Shims map[string]*ShimDir
	// Out receives progress lines.
	Out io.Writer
	// WorkDir holds the shim logs.
	WorkDir string

	start   time.Time
	echoCur *framework.Pod // where the echo Service points now
}

func (b *Bench) progressf(format string, args ...any) {
	el := time.Since(b.start).Round(time.Second)
	fmt.Fprintf(b.Out, "[%6s] %s\n", el, fmt.Sprintf(format, args...))
}

// minSyncPeriod is both proxies' default --iptables-min-sync-period: changes
// are paced further apart than this, so each gets a sync of its own at once
// rather than waiting out the rate limiter.
const minSyncPeriod = time.Second

// RunOne runs one proxy at the workload's current N in mode/backend.
func (b *Bench) RunOne(t testing.TB, step Step, mode, backend, proxy string) Result {
	t.Helper()
	r := Result{Mode: mode, Backend: backend, Proxy: proxy, N: step.N, EndpointsPerService: b.Cfg.EndpointsPerService, BaselineOnly: step.BaselineOnly}
	if err := b.runOne(t, step, &r); err != nil {
		r.Error = err.Error()
		b.progressf("  %s: ERROR: %v", label(r), err)
	}
	return r
}

func label(r Result) string {
	return fmt.Sprintf("%s/%s/%s N=%d", r.Mode, r.Backend, r.Proxy, r.N)
}

func (b *Bench) runOne(t testing.TB, step Step, r *Result) (err error) {
	ctx := context.Background()
	if err := b.Kernel.Reset(); err != nil {
		return fmt.Errorf("resetting the node's rules before the run: %w", err)
	}
	bin, err := b.Cluster.ProxyBinary(r.Proxy)
	if err != nil {
		return err
	}
	shim := b.Shims[r.Backend]
	shimLog := filepath.Join(b.WorkDir, fmt.Sprintf("restores-%s-%s-%s-%d.jsonl", r.Mode, r.Backend, r.Proxy, r.N))
	_ = os.Remove(shimLog)
	r.ShimLog = shimLog
	args := framework.StandardProxyArgs(b.Node, b.Cluster.AdminKubeconfig)
	if r.Mode == ModeIPVS {
		for i, a := range args {
			if strings.HasPrefix(a, "--proxy-mode=") {
				args[i] = "--proxy-mode=ipvs"
			}
		}
	}
	if r.Proxy == ProxyKpr {
		// Upstream has no such flag: it uses whatever "iptables" is on
		// PATH, which the shim directory makes the same backend.
		args = append(args, "--iptables-backend="+r.Backend)
	}
	timeout := b.Cfg.SyncTimeout
	if r.Proxy == ProxyUpstream && r.Backend == BackendNFT {
		timeout = b.Cfg.UpstreamNFTTimeout
	}
	r.ColdSync.TimeoutSeconds = timeout.Seconds()

	b.progressf("  %s: starting %s (%s), cold sync timeout %s", label(*r), r.Proxy, filepath.Base(bin), timeout)
	t0 := time.Now()
	p := b.Node.StartProxy(t, framework.ProxySpec{
		Binary: bin,
		Args:   args,
		Name:   fmt.Sprintf("proxy-%s-%s-%s-%d", r.Mode, r.Backend, r.Proxy, r.N),
		Env:    shim.Env(shimLog),
	})
	r.LogPath = p.LogPath
	defer func() {
		r.DurationSec = time.Since(t0).Seconds()
		if stopErr := p.Process.Stop(10 * time.Second); stopErr != nil && err == nil {
			err = stopErr
		}
		if resetErr := b.Kernel.Reset(); resetErr != nil && err == nil {
			err = fmt.Errorf("resetting the node's rules after the run: %w", resetErr)
		}
	}()
	pid := p.Pid()
	exited, exitErr := p.Exited()

	// 1. Cold sync.
	if err := b.coldSync(ctx, r, t0, timeout, exited, shimLog); err != nil {
		if !r.ColdSync.Finished {
			select {
			case <-exited:
				return fmt.Errorf("%w; proxy exited (%v); last lines of %s:\n%s", err, exitErr(), p.LogPath, p.Tail(15))
			default:
			}
		}
		return err
	}
	if !r.ColdSync.Finished {
		// Did not finish in time: nothing else to measure, but what it
		// used so far is worth reporting.
		if u, err := ReadProcUsage(pid); err == nil {
			r.UsageEnd = &u
		}
		return nil
	}
	if u, err := ReadProcUsage(pid); err == nil {
		r.UsageAtSync = &u
	}

	// 2. One-change latency.
	if !step.BaselineOnly {
		if err := b.waitQuiet(ctx, shimLog, 3*time.Second, 2*time.Minute); err != nil {
			b.progressf("    (proxy not quiet before changes: %v)", err)
		}
		cs, err := b.changes(ctx, shimLog, exited)
		r.Changes = cs
		if err != nil {
			return err
		}
	}

	// 3. First-packet latency.
	if err := b.waitQuiet(ctx, shimLog, 2*time.Second, time.Minute); err != nil {
		b.progressf("    (proxy not quiet before connects: %v)", err)
	}
	fp, direct, err := b.firstPacket()
	r.FirstPacket, r.Direct = fp, direct
	if err != nil {
		return err
	}

	u, err := ReadProcUsage(pid)
	if err != nil {
		return fmt.Errorf("reading the proxy's CPU and memory: %w", err)
	}
	r.UsageEnd = &u
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if body, err := p.Metrics(mctx); err == nil {
		r.ProxyMetrics = selectMetrics(body)
	}
	b.progressf("  %s: CPU %.1f s (+%.1f s in children), peak RSS %s", label(*r), r.UsageEnd.SelfSec(), r.UsageEnd.ChildrenSec, humanBytes(r.UsageEnd.PeakRSSBytes))
	if comm := ProcComm(pid); comm == "ip" {
		return fmt.Errorf("pid %d is still `ip`, not the proxy: usage figures would be wrong", pid)
	}
	return nil
}

func (b *Bench) coldSync(ctx context.Context, r *Result, t0 time.Time, timeout time.Duration, exited <-chan struct{}, shimLog string) error {
	cctx, cancel := context.WithDeadline(ctx, t0.Add(timeout))
	defer cancel()
	addr := netip.AddrPortFrom(EchoClusterIP, ServicePort)
	// Slow proxies get a progress line now and then.
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	go func() {
		for {
			select {
			case <-cctx.Done():
				return
			case <-tick.C:
				b.progressf("    … %s: still waiting for the rules (%s)", label(*r), describeShimLog(shimLog, t0))
			}
		}
	}()
	at, probes, err := WaitForAnswer(cctx, b.Client.NetNS, addr, "", DefaultProbe, exited)
	r.ColdSync.Probes = probes
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(cctx.Err(), context.DeadlineExceeded) {
			select {
			case <-exited:
				return err
			default:
			}
			entries, _ := ReadShimLog(shimLog)
			b.progressf("  %s: did not finish in %s (restores: %s)", label(*r), timeout, describeShimLog(shimLog, t0))
			r.ColdSync.Finished = false
			r.FullV4 = SummarizeRestores(entries, false, t0, time.Now())
			r.FullV6 = SummarizeRestores(entries, true, t0, time.Now())
			return nil
		}
		return fmt.Errorf("cold sync: %w", err)
	}
	r.ColdSync.Seconds = at.Sub(t0).Seconds()
	r.ColdSync.VerifiedBy = "probe, then one kernel read"
	check, err := b.checkKernel(r)
	if err != nil {
		return err
	}
	for !check.Complete() {
		// The batch with the echo Service lacked some: poll the kernel
		// (expensive at 10k, but only in this unexpected case).
		if cctx.Err() != nil {
			return fmt.Errorf("cold sync: echo Service answered after %.2fs but the kernel never held every Service: %s", r.ColdSync.Seconds, check)
		}
		select {
		case <-exited:
			return fmt.Errorf("cold sync: proxy exited with the kernel holding %s", check)
		case <-time.After(2 * time.Second):
		}
		if check, err = b.checkKernel(r); err != nil {
			return err
		}
		r.ColdSync.Seconds = time.Since(t0).Seconds()
		r.ColdSync.VerifiedBy = "kernel reads every 2s (the first batch lacked Services)"
	}
	r.ColdSync.Check = check
	r.ColdSync.Finished = true
	syncAt := t0.Add(time.Duration(r.ColdSync.Seconds * float64(time.Second)))
	entries, err := ReadShimLog(shimLog)
	if err != nil {
		return err
	}
	r.FullV4 = SummarizeRestores(entries, false, t0, syncAt)
	r.FullV6 = SummarizeRestores(entries, true, t0, syncAt)
	// The restore that put the rules in: the last IPv4 one started before
	// the answer (the kernel has the rules a little before the process has
	// exited and the shim has logged).
	for _, e := range entries {
		if !e.V6 && !e.IsTest() && e.StartTime().Before(syncAt) {
			r.ColdSync.LastRestoreEndSec = e.EndTime().Sub(t0).Seconds()
		}
	}
	b.progressf("  %s: cold sync %.2f s (%d probes; kernel: %s; IPv4 restore: %d lines, %s, ended at %.2f s)",
		label(*r), r.ColdSync.Seconds, r.ColdSync.Probes, check, r.FullV4.MaxLines, humanBytes(int64(r.FullV4.MaxBytes)), r.ColdSync.LastRestoreEndSec)
	return nil
}

func (b *Bench) checkKernel(r *Result) (NATCheck, error) {
	want := b.Workload.ClusterIPs()
	if len(want) != r.N {
		return NATCheck{}, fmt.Errorf("bench bug: workload has %d Services, want %d", len(want), r.N)
	}
	if r.Mode == ModeIPVS {
		return CheckIPVS(b.Node.NetNS, want, ServicePort)
	}
	save, err := SaveTable(b.Node.NetNS, b.Shims[r.Backend].Save, "nat")
	if err != nil {
		return NATCheck{}, err
	}
	return CheckNAT(save, want, ServicePort), nil
}

// waitQuiet waits until the proxy has not started an iptables-restore for
// quiet (so a follow-up sync does not land in the next measurement).
func (b *Bench) waitQuiet(ctx context.Context, shimLog string, quiet, limit time.Duration) error {
	return framework.Poll(ctx, limit, 250*time.Millisecond, func(context.Context) error {
		b, err := os.ReadFile(shimLog)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		all, err := parseShimLogAll(b)
		if err != nil {
			return err
		}
		if run := runningRestores(all); len(run) > 0 {
			return fmt.Errorf("a restore is running (started %s ago)", time.Since(run[0].StartTime()).Round(time.Millisecond))
		}
		var last time.Time
		for _, e := range all {
			if !e.Running && e.EndTime().After(last) {
				last = e.EndTime()
			}
		}
		if d := time.Since(last); !last.IsZero() && d < quiet {
			return fmt.Errorf("last restore ended %s ago", d.Round(time.Millisecond))
		}
		return nil
	})
}

// changes points the echo Service at the other echo pod, Changes times,
// and times each write until the new pod answers a new connection.
func (b *Bench) changes(ctx context.Context, shimLog string, exited <-chan struct{}) (*ChangeStats, error) {
	cs := &ChangeStats{ResolutionMs: float64(DefaultProbe.Interval.Milliseconds())}
	var writes, durs []float64
	addr := netip.AddrPortFrom(EchoClusterIP, ServicePort)
	pacing := minSyncPeriod + 500*time.Millisecond
	cs.PacingMs = float64(pacing.Milliseconds())
	for i := 0; i < b.Cfg.Changes; i++ {
		target := b.EchoA
		if b.echoCur == b.EchoA {
			target = b.EchoB
		}
		t0 := time.Now()
		if err := b.Workload.SetEchoBackend(ctx, target.IPv4()); err != nil {
			return cs, err
		}
		writes = append(writes, float64(time.Since(t0).Microseconds())/1e3)
		b.echoCur = target
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		at, _, err := WaitForAnswer(wctx, b.Client.NetNS, addr, target.Name, DefaultProbe, exited)
		cancel()
		if err != nil {
			select {
			case <-exited:
				return cs, fmt.Errorf("change %d: %w", i+1, err)
			default:
			}
			cs.Failures++
			b.progressf("    change %d/%d: %s never answered: %v", i+1, b.Cfg.Changes, target.Name, err)
			continue
		}
		ms := float64(at.Sub(t0).Microseconds()) / 1e3
		cs.SamplesMs = append(cs.SamplesMs, ms)
		// Let the sync finish writing its log line, then attribute restores.
		time.Sleep(pacing)
		entries, err := ReadShimLog(shimLog)
		if err != nil {
			return cs, err
		}
		st := SummarizeRestores(entries, false, t0, at)
		cs.PartialBytes = append(cs.PartialBytes, st.Bytes)
		cs.PartialLines = append(cs.PartialLines, st.Lines)
		cs.RestoreFailures += st.Failures
		if st.Count > 0 {
			durs = append(durs, float64(st.DurationMs))
		}
		cs.RestoresPerChange += float64(st.Count)
		if (i+1)%5 == 0 || i == 0 {
			b.progressf("    change %d/%d: %.1f ms (restore: %d lines, %s)", i+1, b.Cfg.Changes, ms, st.Lines, humanBytes(int64(st.Bytes)))
		}
	}
	if n := len(cs.SamplesMs); n > 0 {
		cs.MedianMs = Quantile(cs.SamplesMs, 0.5)
		cs.P90Ms = Quantile(cs.SamplesMs, 0.9)
		cs.MinMs = Quantile(cs.SamplesMs, 0)
		cs.MaxMs = Quantile(cs.SamplesMs, 1)
		cs.RestoresPerChange /= float64(n)
	}
	cs.APIWriteMs = nanToZero(Quantile(writes, 0.5))
	cs.MedianBytes = nanToZero(Quantile(intsToFloats(cs.PartialBytes), 0.5))
	cs.MedianLines = nanToZero(Quantile(intsToFloats(cs.PartialLines), 0.5))
	cs.RestoreMedianDurMs = nanToZero(Quantile(durs, 0.5))
	b.progressf("    one-change latency: median %.1f ms, p90 %.1f ms (%d samples, %d failed); partial restore median %s, %.0f lines",
		cs.MedianMs, cs.P90Ms, len(cs.SamplesMs), cs.Failures, humanBytes(int64(cs.MedianBytes)), cs.MedianLines)
	if cs.Failures > 0 {
		return cs, fmt.Errorf("%d of %d changes never reached the kernel within 60s", cs.Failures, b.Cfg.Changes)
	}
	return cs, nil
}

func intsToFloats(xs []int) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(x)
	}
	return out
}

// warmupConnects are made and dropped before each latency series (ARP,
// route and socket caches).
const warmupConnects = 50

func (b *Bench) firstPacket() (*LatencyStats, *LatencyStats, error) {
	var cluster []netip.AddrPort
	for _, ip := range b.Workload.ProbeClusterIPs() {
		cluster = append(cluster, netip.AddrPortFrom(ip, ServicePort))
	}
	direct := []netip.AddrPort{netip.AddrPortFrom(b.echoCur.IPv4(), TargetPort)}
	var out [2]*LatencyStats
	for i, addrs := range [][]netip.AddrPort{cluster, direct} {
		if _, _, err := ConnectLatencies(b.Client.NetNS, addrs, warmupConnects, time.Second); err != nil {
			return out[0], out[1], fmt.Errorf("warm-up connects to %v: %w", addrs, err)
		}
		ds, failed, err := ConnectLatencies(b.Client.NetNS, addrs, b.Cfg.Connects, time.Second)
		st := SummarizeLatencies(ds, failed)
		out[i] = &st
		if err != nil {
			return out[0], out[1], err
		}
	}
	b.progressf("    first packet: ClusterIP connect median %.0f µs, p90 %.0f µs (%d connects over %d Services); pod IP median %.0f µs",
		out[0].MedianUs, out[0].P90Us, b.Cfg.Connects, len(cluster), out[1].MedianUs)
	return out[0], out[1], nil
}

// metricPrefixes are the /metrics series kept in raw.json.
var metricPrefixes = []string{
	"kpr_iptables_restore_bytes_sum", "kpr_iptables_restore_bytes_count",
	"kpr_iptables_restore_lines_sum", "kpr_iptables_restore_lines_count",
	"kubeproxy_sync_proxy_rules_duration_seconds_sum", "kubeproxy_sync_proxy_rules_duration_seconds_count",
	"kubeproxy_sync_full_proxy_rules_duration_seconds_sum", "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
	"kubeproxy_sync_partial_proxy_rules_duration_seconds_sum", "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
	"kubeproxy_sync_proxy_rules_iptables_total",
}

// selectMetrics keeps metricPrefixes' samples ("name{labels}" → value).
func selectMetrics(body string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		for _, p := range metricPrefixes {
			if !strings.HasPrefix(line, p) {
				continue
			}
			rest := line[len(p):]
			if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
				continue
			}
			i := strings.LastIndexByte(line, ' ')
			if i < 0 {
				continue
			}
			v, err := strconv.ParseFloat(line[i+1:], 64)
			if err != nil {
				continue
			}
			out[line[:i]] = v
		}
	}
	return out
}
