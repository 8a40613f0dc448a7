package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kpr-proxy/kpr/e2e/build"
	"github.com/kpr-proxy/kpr/e2e/framework"
)

func TestMain(m *testing.M) { framework.Main(m) }

// TestBench is `make bench`. It only runs with KPR_BENCH=1 (it takes from a
// few minutes to an hour), so `go test ./...` in e2e skips it.
func TestBench(t *testing.T) {
	if os.Getenv("KPR_BENCH") == "" {
		t.Skip("skipping: the kpr vs kube-proxy benchmark runs with `make bench` (KPR_BENCH=1)")
	}
	cfg, err := ParseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	moduleDir, err := build.FindModuleDir()
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if cfg.OutDir == "" {
		cfg.OutDir = filepath.Join(moduleDir, "_cache", "bench", started.Format("20060102-150405"))
	}
	if cfg.DocsDir == "" {
		cfg.DocsDir = filepath.Join(filepath.Dir(moduleDir), "docs", "bench")
	}
	workDir := filepath.Join(cfg.OutDir, "work")
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := io.Writer(os.Stderr)
	logger, closeLog, err := fileLogger(filepath.Join(cfg.OutDir, "harness.log"))
	if err != nil {
		t.Fatal(err)
	}
	// Registered before framework.Start's teardown, so it runs after it
	// (cleanups run last-in first-out) and the teardown can still log.
	t.Cleanup(closeLog)

	b := &Bench{Cfg: cfg, Out: out, WorkDir: workDir, start: started, Shims: map[string]*ShimDir{}}
	b.progressf("kpr bench: N=%v (baseline %d), backends %v, proxies %v, modes %v; results in %s", cfg.Ns, cfg.BaselineN, cfg.Backends, cfg.Proxies, cfg.Modes, cfg.OutDir)
	b.progressf("load average: %s (other work on this 2-core machine skews every figure)", loadAvg())

	rep := &Report{Started: started.Format(time.RFC3339), Config: cfg, SetupSec: map[int]float64{}}
	rep.Machine = machineInfo(t)
	rep.Machine.LoadAvgStart = loadAvg()

	b.progressf("starting the control plane and 2 node namespaces (harness log: %s)", filepath.Join(cfg.OutDir, "harness.log"))
	c := framework.Start(t, framework.Options{Nodes: 2, NoControllerManager: true, Logger: logger})
	b.Cluster, b.Node = c, c.Node(0)
	rep.RunDir = c.RunDir
	for _, p := range cfg.Proxies {
		if _, err := c.ProxyBinary(p); err != nil {
			t.Fatal(err)
		}
	}
	rep.Machine.KprVersion = versionOf(c, ProxyKpr)
	rep.Machine.UpstreamVersion = versionOf(c, ProxyUpstream)

	ctx := context.Background()
	shim, err := BuildShim(ctx, moduleDir, workDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, be := range cfg.Backends {
		if b.Shims[be], err = NewShimDir(filepath.Join(workDir, "path-"+be), shim, be); err != nil {
			t.Fatalf("backend %s: %v", be, err)
		}
	}

	b.progressf("creating the client pod (node1) and two echo pods (node2)")
	b.Client = c.CreatePod(t, framework.PodSpec{Name: "client", Namespace: Namespace, Node: 0})
	b.EchoA = c.CreatePod(t, framework.PodSpec{Name: "echo-a", Namespace: Namespace, Node: 1})
	b.EchoB = c.CreatePod(t, framework.PodSpec{Name: "echo-b", Namespace: Namespace, Node: 1})
	if b.Kernel, err = SnapshotKernel(b.Node.NetNS, cfg.Backends); err != nil {
		t.Fatal(err)
	}

	fast := rest.CopyConfig(c.RESTConfig)
	fast.QPS, fast.Burst = -1, 0 // no client-side rate limit: setup must not dominate
	fast.UserAgent = "kpr-bench-setup"
	fastClient, err := kubernetes.NewForConfig(fast)
	if err != nil {
		t.Fatal(err)
	}
	b.Workload = &Workload{Client: fastClient, PerService: cfg.EndpointsPerService, Workers: 32, Progress: out,
		Probes: cfg.ProbeServices, ProbeBackend: b.EchoA.IPv4(), EchoNode: c.Nodes()[1].Name}
	if err := b.Workload.EnsureNamespace(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Workload.CreateEcho(ctx, b.EchoA.IPv4()); err != nil {
		t.Fatal(err)
	}
	b.echoCur = b.EchoA

	modes := cfg.Modes
	if containsStr(modes, ModeIPVS) {
		if ok, why := IPVSAvailable(b.Node.NetNS); !ok {
			b.progressf("ipvs mode: skipped: %s", why)
			rep.Skipped = append(rep.Skipped, "IPVS mode: "+why+".")
			modes = without(modes, ModeIPVS)
		}
	}

	save := func() {
		rep.Finished = time.Now().Format(time.RFC3339)
		rep.DurationSec = time.Since(started).Seconds()
		rep.Machine.LoadAvgEnd = loadAvg()
		if err := writeOutputs(rep, cfg.OutDir); err != nil {
			t.Errorf("writing results: %v", err)
		}
	}
	for _, step := range cfg.Steps() {
		b.progressf("== %d Services × %d endpoints%s", step.N, cfg.EndpointsPerService, map[bool]string{true: " (baseline: cold sync and first packet only)", false: ""}[step.BaselineOnly])
		setup := time.Now()
		if err := b.Workload.GrowTo(ctx, step.N); err != nil {
			save()
			t.Fatalf("creating Services: %v", err)
		}
		rep.SetupSec[step.N] = time.Since(setup).Seconds()
		for _, mode := range modes {
			for _, be := range cfg.Backends {
				for _, proxy := range cfg.Proxies {
					rep.Results = append(rep.Results, b.RunOne(t, step, mode, be, proxy))
					save() // partial results survive an interrupted run
				}
			}
		}
	}
	save()
	b.progressf("results: %s", filepath.Join(cfg.OutDir, "results.md"))
	if cfg.DocsDir != "none" {
		if err := copyOutputs(cfg.OutDir, cfg.DocsDir); err != nil {
			t.Errorf("copying results to %s: %v", cfg.DocsDir, err)
		} else {
			b.progressf("copied results.md, chart.svg and raw.json to %s", cfg.DocsDir)
		}
	}
	for _, r := range rep.Results {
		if r.Error != "" {
			t.Errorf("%s: %s", label(r), r.Error)
		}
	}
}

func writeOutputs(rep *Report, dir string) error {
	raw, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "raw.json"), append(raw, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(rep.Markdown()), 0o644); err != nil {
		return err
	}
	ns := rep.ns()
	title := "kpr vs upstream kube-proxy v1.37"
	if len(ns) > 0 {
		title += fmt.Sprintf(" — up to %s Services × %d endpoints", fmtN(ns[len(ns)-1]), rep.Config.EndpointsPerService)
	}
	return os.WriteFile(filepath.Join(dir, "chart.svg"), []byte(RenderSVG(title, rep.Panels())), 0o644)
}

func copyOutputs(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"results.md", "chart.svg", "raw.json"} {
		b, err := os.ReadFile(filepath.Join(from, f))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, f), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// fileLogger sends the harness's own logs to a file, so the console shows
// only the bench's progress.
func fileLogger(path string) (*zap.Logger, func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, err
	}
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	l := zap.New(zapcore.NewCore(enc, zapcore.AddSync(f), zapcore.DebugLevel))
	return l, func() { _ = l.Sync(); _ = f.Close() }, nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func machineInfo(t testing.TB) Machine {
	t.Helper()
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), IPTables: map[string]string{}}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int64
				if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err == nil {
					m.MemTotal = fmt.Sprintf("%.0f GB", float64(kb)/1e6)
				}
			}
		}
	}
	for _, be := range []string{BackendLegacy, BackendNFT} {
		if out, err := exec.Command("iptables-"+be, "--version").Output(); err == nil {
			m.IPTables[be] = strings.TrimSpace(string(out))
		}
	}
	return m
}

func versionOf(c *framework.Cluster, proxy string) string {
	bin, err := c.ProxyBinary(proxy)
	if err != nil {
		return "?"
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

func containsStr(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func without(xs []string, x string) []string {
	var out []string
	for _, v := range xs {
		if v != x {
			out = append(out, v)
		}
	}
	return out
}

// TestRerender rewrites results.md and chart.svg of an earlier run from its
// raw.json, for a change to the report's layout without a new run:
// BENCH_RERENDER=<results dir> go test -run '^TestRerender$' ./bench/
func TestRerender(t *testing.T) {
	dir := os.Getenv("BENCH_RERENDER")
	if dir == "" {
		t.Skip("BENCH_RERENDER=<results dir> not set")
	}
	raw, err := os.ReadFile(filepath.Join(dir, "raw.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatalf("%s/raw.json: %v", dir, err)
	}
	if err := writeOutputs(&rep, dir); err != nil {
		t.Fatal(err)
	}
}
