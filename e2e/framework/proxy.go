package framework

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/e2e/build"
)

// Proxy implementations selectable with $E2E_PROXY.
const (
	ProxyKpr      = "kpr"      // bin/proxy (default)
	ProxyUpstream = "upstream" // kube-proxy built from k8s.io/kubernetes
)

// Ports the standard proxy arguments bind in the node namespace.
const (
	ProxyHealthzPort = 10256
	ProxyMetricsPort = 10249
)

// ProxySpec says which proxy binary to run on a node and how.
type ProxySpec struct {
	// Binary is the program to run (see ProxyBinary).
	Binary string
	// Args are its arguments (see StandardProxyArgs).
	Args []string
	// Name names the log file; default "proxy-<node>".
	Name string
	// Env is added to the proxy's environment (e.g. IPTablesBackendEnv).
	Env []string
}

// Proxy is a proxy process on a node.
type Proxy struct {
	*Process
	Node *Node
}

// ProxyUnderTest is $E2E_PROXY: ProxyKpr (default) or ProxyUpstream.
func ProxyUnderTest() string {
	if v := os.Getenv("E2E_PROXY"); v != "" {
		return v
	}
	return ProxyKpr
}

// ProxyBinary returns the binary for kind (ProxyKpr or ProxyUpstream). kpr's
// is $E2E_PROXY_BIN, else <repo>/bin/proxy; upstream kube-proxy is the
// harness-built one.
func (c *Cluster) ProxyBinary(kind string) (string, error) {
	switch kind {
	case ProxyUpstream:
		return c.bins["kube-proxy"], nil
	case ProxyKpr:
		if p := os.Getenv("E2E_PROXY_BIN"); p != "" {
			return p, nil
		}
		moduleDir, err := build.FindModuleDir()
		if err != nil {
			return "", err
		}
		p := filepath.Join(filepath.Dir(moduleDir), "bin", "proxy")
		if !isExecutable(p) {
			return "", fmt.Errorf("%s not found: run `make build` first (or set E2E_PROXY_BIN)", p)
		}
		return p, nil
	}
	return "", fmt.Errorf("unknown proxy %q (want %q or %q)", kind, ProxyKpr, ProxyUpstream)
}

// StandardProxyArgs are the kube-proxy flags every e2e proxy gets (kpr is a
// drop-in, so both take the same ones). conntrack-max-per-core=0 because
// nf_conntrack_max cannot be set from a non-initial network namespace.
func StandardProxyArgs(n *Node, kubeconfig string) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--hostname-override=" + n.Name,
		"--proxy-mode=iptables",
		"--cluster-cidr=" + ClusterCIDRFlag(),
		fmt.Sprintf("--metrics-bind-address=0.0.0.0:%d", ProxyMetricsPort),
		fmt.Sprintf("--healthz-bind-address=0.0.0.0:%d", ProxyHealthzPort),
		"--conntrack-max-per-core=0",
		"--v=2",
	}
}

// StartProxy runs a proxy in node i's namespace. It is stopped when the test
// ends.
func (c *Cluster) StartProxy(t testing.TB, node int, spec ProxySpec) *Proxy {
	t.Helper()
	return c.Node(node).StartProxy(t, spec)
}

// StartProxyUnderTest runs $E2E_PROXY's proxy on node i with
// StandardProxyArgs (admin kubeconfig unless kubeconfig is given) plus
// extraArgs, and waits for its healthz.
func (c *Cluster) StartProxyUnderTest(t testing.TB, node int, kubeconfig string, extraArgs ...string) *Proxy {
	t.Helper()
	bin, err := c.ProxyBinary(ProxyUnderTest())
	if err != nil {
		t.Fatal(err)
	}
	if kubeconfig == "" {
		kubeconfig = c.AdminKubeconfig
	}
	n := c.Node(node)
	p := n.StartProxy(t, ProxySpec{Binary: bin, Args: append(StandardProxyArgs(n, kubeconfig), extraArgs...)})
	p.WaitHealthy(t, 60*time.Second)
	p.WaitSynced(t, 60*time.Second)
	return p
}

// StartProxy runs a proxy in the node's namespace. It is stopped when the
// test ends.
func (n *Node) StartProxy(t testing.TB, spec ProxySpec) *Proxy {
	t.Helper()
	if spec.Binary == "" {
		t.Fatal("ProxySpec.Binary is required")
	}
	if spec.Name == "" {
		spec.Name = "proxy-" + n.Name
	}
	proc, err := n.c.startProcess(ProcessSpec{Name: spec.Name, NS: n.NetNS, Argv: append([]string{spec.Binary}, spec.Args...), Env: spec.Env})
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Process: proc, Node: n}
	t.Cleanup(func() { _ = p.Process.Stop(5 * time.Second) })
	return p
}

// Stop stops the proxy (SIGTERM, then SIGKILL after 5s).
func (p *Proxy) Stop(t testing.TB) {
	t.Helper()
	if err := p.Process.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// Restart stops and starts the proxy with the same arguments.
func (p *Proxy) Restart(t testing.TB) {
	t.Helper()
	if err := p.Process.Restart(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// Healthz fetches the proxy's healthz from inside the node namespace and
// returns the status code and body.
func (p *Proxy) Healthz(ctx context.Context) (int, string, error) {
	return p.Node.httpGet(ctx, fmt.Sprintf("http://%s/healthz", ipPort(p.Node.IPv4, ProxyHealthzPort)))
}

// Metrics fetches the proxy's Prometheus metrics text.
func (p *Proxy) Metrics(ctx context.Context) (string, error) {
	code, body, err := p.Node.httpGet(ctx, fmt.Sprintf("http://%s/metrics", ipPort(p.Node.IPv4, ProxyMetricsPort)))
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("metrics: HTTP %d", code)
	}
	return body, err
}

// WaitHealthy waits until healthz answers 200 (kube-proxy's healthz does
// once it has synced), failing with the proxy's log tail on timeout or exit.
func (p *Proxy) WaitHealthy(t testing.TB, timeout time.Duration) {
	t.Helper()
	err := p.Node.c.waitProcess(context.Background(), p.Process, timeout, p.Name+" healthz", func(ctx context.Context) error {
		code, body, err := p.Healthz(ctx)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("healthz %d: %s", code, firstLine(body))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// SyncedMetric is the kube-proxy metric whose non-zero value says the proxy
// has programmed rules at least once (kpr exports it too).
const SyncedMetric = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"

// WaitSynced waits until the proxy reports a completed sync through
// SyncedMetric. healthz alone does not say that: kube-proxy answers 200
// before its first sync.
func (p *Proxy) WaitSynced(t testing.TB, timeout time.Duration) {
	t.Helper()
	err := p.Node.c.waitProcess(context.Background(), p.Process, timeout, p.Name+" first sync ("+SyncedMetric+" > 0)", func(ctx context.Context) error {
		body, err := p.Metrics(ctx)
		if err != nil {
			return err
		}
		v, ok := metricValue(body, SyncedMetric)
		if !ok {
			return fmt.Errorf("metric %s not exported yet", SyncedMetric)
		}
		if v <= 0 {
			return fmt.Errorf("%s = %v", SyncedMetric, v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// metricValue finds the first sample of name in Prometheus text format
// ("name value [timestamp]" or "name{labels} value [timestamp]").
func metricValue(text, name string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" {
			continue
		}
		switch rest[0] {
		case ' ':
		case '{':
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			rest = rest[end+1:]
		default:
			continue // a longer metric name with this prefix
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			return v, true
		}
	}
	return 0, false
}

// httpGet does a GET from inside the namespace.
func (n *NetNS) httpGet(ctx context.Context, url string) (int, string, error) {
	tr := &http.Transport{DialContext: n.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// HTTPGet does a GET from inside the namespace and returns status and body.
func (n *NetNS) HTTPGet(ctx context.Context, url string) (int, string, error) {
	return n.httpGet(ctx, url)
}

// IPTablesBackendEnv returns a PATH setting under which "iptables",
// "iptables-save", "iptables-restore" and the ip6tables ones are the given
// backend's ("legacy" or "nft"), for ProxySpec.Env. Proxies call these names
// from PATH, and the machine default is nf_tables, which is very slow for huge
// restores (GUIDE.md §3); this lets a test or benchmark measure both.
func (c *Cluster) IPTablesBackendEnv(t testing.TB, backend string) []string {
	t.Helper()
	if backend != "legacy" && backend != "nft" {
		t.Fatalf("IPTablesBackendEnv(%q): want \"legacy\" or \"nft\"", backend)
	}
	dir := filepath.Join(c.RunDir, "iptables-"+backend)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			target, err := exec.LookPath(fam + "-" + backend + suffix)
			if err != nil {
				t.Skipf("skipping: %s%s for the %s backend not installed", fam, suffix, backend)
			}
			link := filepath.Join(dir, fam+suffix)
			if _, err := os.Lstat(link); err == nil {
				continue
			}
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
		}
	}
	return []string{"PATH=" + dir + string(os.PathListSeparator) + os.Getenv("PATH")}
}
