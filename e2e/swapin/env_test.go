// Package swapin proves that kpr replaces the kube-proxy DaemonSet of a
// kubeadm-style cluster: the manifests apply to a real apiserver, kpr runs
// as its DaemonSet's container would (the DaemonSet's own command, the
// cluster's kube-proxy ConfigMap and the ServiceAccount token mounted where
// the DaemonSet mounts them), every ClusterRole rule is needed, and the
// takeover from a running upstream kube-proxy loses no request.
//
//	cd e2e && go test -count=1 -v -timeout 20m ./swapin/
package swapin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kpr-proxy/kpr/e2e/build"
	"github.com/kpr-proxy/kpr/e2e/framework"
)

func TestMain(m *testing.M) { framework.Main(m) }

// kubeadm's defaults, which the kube-proxy ConfigMap leaves in place: kpr
// serves health on 0.0.0.0:10256 and metrics on 127.0.0.1:10249.
const (
	kprHealthz = "0.0.0.0:10256"
	kprMetrics = "127.0.0.1:10249"
)

// env is one cluster with the project's manifests applied.
type env struct {
	c    *framework.Cluster
	repo string
	// ds is kpr's DaemonSet as the apiserver accepted it (server-side dry
	// run: defaulted and validated).
	ds     *appsv1.DaemonSet
	kprBin string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping the swap-in e2e in -short mode")
	}
	if framework.ProxyUnderTest() == framework.ProxyUpstream {
		t.Skip("skipping: the swap-in tests replace upstream kube-proxy with kpr (E2E_PROXY=upstream has nothing to swap in)")
	}
	// kubeadm runs the apiserver with --allow-privileged=true: kube-proxy's
	// own DaemonSet is privileged, and so is kpr's.
	c := framework.Start(t, framework.Options{APIServerArgs: []string{"--allow-privileged=true"}})
	moduleDir, err := build.FindModuleDir()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{c: c, repo: filepath.Dir(moduleDir)}
	if e.kprBin, err = c.ProxyBinary(framework.ProxyKpr); err != nil {
		t.Fatal(err)
	}
	// RBAC for real; the kube-proxy ConfigMap for real, as kubeadm made it.
	c.ApplyFile(t, e.manifest("rbac.yaml"))
	c.ApplyFile(t, filepath.Join("testdata", "kube-proxy-configmap.yaml"))
	// The DaemonSet through the apiserver's full admission, stored nowhere:
	// there are no kubelets to run it.
	for _, obj := range c.ApplyYAMLDryRun(t, e.read(t, e.manifest("daemonset.yaml"))) {
		if obj.GetKind() == "DaemonSet" {
			e.ds = toDaemonSet(t, obj)
		}
	}
	if e.ds == nil {
		t.Fatal("manifests/daemonset.yaml has no DaemonSet")
	}
	return e
}

func (e *env) manifest(name string) string { return filepath.Join(e.repo, "manifests", name) }

func (e *env) read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func toDaemonSet(t *testing.T, obj *unstructured.Unstructured) *appsv1.DaemonSet {
	t.Helper()
	ds := &appsv1.DaemonSet{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, ds); err != nil {
		t.Fatal(err)
	}
	return ds
}

// startKpr runs kpr's DaemonSet container on node i the way a kubelet
// would (framework.StartHostPod), plus extra args and environment.
func (e *env) startKpr(t *testing.T, node int, env []string, extra ...string) *framework.Proxy {
	t.Helper()
	return e.c.StartHostPod(t, node, framework.HostPodSpec{
		Name: "kpr", Namespace: "kube-system", Template: e.ds.Spec.Template,
		Binaries: map[string]string{"/proxy": e.kprBin}, ExtraArgs: extra, Env: env,
	})
}

// metric reads one metric (summed over its samples) from addr inside n.
func metric(ctx context.Context, n *framework.Node, addr, name string) (float64, bool, error) {
	code, body, err := n.HTTPGet(ctx, "http://"+addr+"/metrics")
	if err != nil {
		return 0, false, err
	}
	if code != 200 {
		return 0, false, fmt.Errorf("metrics: HTTP %d", code)
	}
	var sum float64
	found := false
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if rest[0] == '{' {
			rest = rest[strings.LastIndexByte(rest, '}')+1:]
		}
		if f := strings.Fields(rest); len(f) > 0 {
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				sum += v
				found = true
			}
		}
	}
	return sum, found, nil
}

// waitSynced waits until the proxy whose metrics are at addr in node n
// reports a completed sync.
func waitSynced(t *testing.T, p *framework.Proxy, addr string, timeout time.Duration) {
	t.Helper()
	framework.Eventually(t, timeout, p.Name+" first sync", func(ctx context.Context) error {
		if !p.Running() {
			return fmt.Errorf("%s exited:\n%s", p.Name, p.Tail(30))
		}
		v, ok, err := metric(ctx, p.Node, addr, framework.SyncedMetric)
		if err != nil {
			return err
		}
		if !ok || v <= 0 {
			return fmt.Errorf("%s = %v", framework.SyncedMetric, v)
		}
		return nil
	})
}

// ---- a Service and compact traffic checks ----

const svcNS = "swapin"

// web is a dual-stack NodePort Service with one echo pod on each node.
type web struct {
	svc      *corev1.Service
	pods     []string
	nodePort int
	client   *framework.Pod // a client pod on node1 that no Service selects
}

func (e *env) createWeb(t *testing.T) *web {
	t.Helper()
	w := &web{}
	var ips []netip.Addr
	for i := range e.c.Nodes() {
		p := e.c.CreatePod(t, framework.PodSpec{Name: fmt.Sprintf("web-%d", i+1), Namespace: svcNS, Node: i, Labels: map[string]string{"app": "web"}})
		w.pods = append(w.pods, p.Name)
		ips = append(ips, p.IPs...)
	}
	w.client = e.c.CreatePod(t, framework.PodSpec{Name: "client", Namespace: svcNS, Node: 0, Labels: map[string]string{"role": "client"}})
	policy := corev1.IPFamilyPolicyPreferDualStack
	svc, err := e.c.Client.CoreV1().Services(svcNS).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: svcNS},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "web"}, IPFamilyPolicy: &policy,
			Ports: []corev1.ServicePort{{Name: "tcp", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("tcp")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.svc, w.nodePort = svc, int(svc.Spec.Ports[0].NodePort)
	e.c.WaitForEndpoints(t, svcNS, "web", ips, 60*time.Second)
	t.Logf("Service %s/web: clusterIPs %v, nodePort %d, endpoints %v", svcNS, svc.Spec.ClusterIPs, w.nodePort, ips)
	return w
}

func (w *web) clusterIP(v6 bool) netip.Addr {
	for _, s := range w.svc.Spec.ClusterIPs {
		if a := netip.MustParseAddr(s); a.Is6() == v6 {
			return a
		}
	}
	return netip.Addr{}
}

// answeredByAll queries addr from ns until every backend answered (and
// nobody else did), up to tries times.
func answeredByAll(ctx context.Context, from *framework.NetNS, addr string, want []string, tries int) error {
	seen := map[string]int{}
	for i := 0; i < tries && len(seen) < len(want); i++ {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := from.Query(qctx, "tcp", addr)
		cancel()
		if err != nil {
			return fmt.Errorf("tcp %s: %w", addr, err)
		}
		if !slices.Contains(want, r.Pod) {
			return fmt.Errorf("tcp %s answered by %q, want one of %v", addr, r.Pod, want)
		}
		seen[r.Pod]++
	}
	if len(seen) < len(want) {
		return fmt.Errorf("tcp %s: only %v answered in %d tries, want all of %v", addr, seen, tries, want)
	}
	return nil
}

// checkTraffic is the compact version of the core scenarios: ClusterIP
// (IPv4 from every node and from a pod, IPv6 from a node) and NodePort from
// the outside client through every node, each reaching every endpoint.
func (e *env) checkTraffic(t *testing.T, w *web) {
	t.Helper()
	type path struct {
		name string
		from *framework.NetNS
		addr string
	}
	var paths []path
	for _, n := range e.c.Nodes() {
		paths = append(paths, path{"ClusterIP from " + n.Name, n.NetNS, framework.AddrPort(w.clusterIP(false), 80)})
		paths = append(paths, path{"NodePort via " + n.Name + " from outside", e.c.Outside().NetNS, framework.AddrPort(n.IPv4, w.nodePort)})
	}
	paths = append(paths, path{"ClusterIP from a pod", w.client.NetNS, framework.AddrPort(w.clusterIP(false), 80)})
	if v6 := w.clusterIP(true); v6.IsValid() {
		paths = append(paths, path{"IPv6 ClusterIP from node1", e.c.Node(0).NetNS, framework.AddrPort(v6, 80)})
	}
	for _, p := range paths {
		framework.Eventually(t, 30*time.Second, p.name+" reaches every endpoint", func(ctx context.Context) error {
			return answeredByAll(ctx, p.from, p.addr, w.pods, 40)
		})
	}
}

// ---- logs ----

// logLines returns the lines the proxy's current run logged (a process of
// the same name started earlier appended to the same file, before the
// harness's "==== e2e: start" marker of this run).
func logLines(t *testing.T, p *framework.Proxy) []string {
	t.Helper()
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "==== e2e: start #") {
			return lines[i+1:]
		}
	}
	return lines
}

// jsonLog is one of kpr's JSON log lines.
type jsonLog map[string]any

func (l jsonLog) msg() string { s, _ := l["msg"].(string); return s }

// jsonLogs returns kpr's JSON log lines whose message starts with prefix.
func jsonLogs(t *testing.T, p *framework.Proxy, prefix string) []jsonLog {
	t.Helper()
	var out []jsonLog
	for _, line := range logLines(t, p) {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var l jsonLog
		if json.Unmarshal([]byte(line), &l) == nil && strings.HasPrefix(l.msg(), prefix) {
			out = append(out, l)
		}
	}
	return out
}

// ---- iptables in node namespaces ----

// kubeProxyChain matches chain declarations of kube-proxy's chains (both
// modes), never kubelet's KUBE-FIREWALL, KUBE-KUBELET-CANARY,
// KUBE-IPTABLES-HINT or KUBE-MARK-DROP.
var kubeProxyChain = regexp.MustCompile(`(?m)^:(KUBE-(SERVICES|EXTERNAL-SERVICES|NODEPORTS|NODE-PORT|POSTROUTING|MARK-MASQ|FORWARD|LOAD-BALANCER|SOURCE-RANGES-FIREWALL|IPVS-FILTER|IPVS-OUT-FILTER|PROXY-[A-Z0-9-]+|(SVC|SVL|SEP|EXT|FW|XLB)-[A-Z0-9]+)) `)

// save is a node's full iptables-save of one backend, both families.
func save(t *testing.T, n *framework.Node, backend string) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables", "ip6tables"} {
		fmt.Fprintf(&b, "# %s-%s\n%s", tool, backend, n.MustExec(t, tool+"-"+backend+"-save"))
	}
	return b.String()
}

func kubeProxyChains(s string) []string {
	var out []string
	for _, m := range kubeProxyChain.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// loadRules feeds a restore batch to both families' --noflush restore of a
// backend in n.
func loadRules(t *testing.T, n *framework.Node, backend string, v4, v6 string) {
	t.Helper()
	for tool, data := range map[string]string{"iptables": v4, "ip6tables": v6} {
		cmd := n.Command(tool+"-"+backend+"-restore", "--noflush")
		cmd.Stdin = strings.NewReader(data)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s-%s-restore in %s: %v\n%s", tool, backend, n.Name, err, out)
		}
	}
}

// wipeIPTables empties every table that exists in a node's backends (the
// node namespaces hold only what the tests and proxies put there).
func wipeIPTables(t *testing.T, n *framework.Node) {
	t.Helper()
	for _, backend := range []string{"legacy", "nft"} {
		for _, tool := range []string{"iptables", "ip6tables"} {
			out := n.MustExec(t, tool+"-"+backend+"-save")
			for _, line := range strings.Split(out, "\n") {
				if table, ok := strings.CutPrefix(line, "*"); ok {
					n.MustExec(t, tool+"-"+backend, "-t", table, "-F")
					n.MustExec(t, tool+"-"+backend, "-t", table, "-X")
				}
			}
		}
	}
}

// ---- load ----

// stream is one source of requests: a new TCP connection to addr from ns,
// read the echo server's answer, close.
type stream struct {
	name string
	from *framework.NetNS
	addr string
}

// load sends requests on every stream until stopped, and counts them.
type load struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	sent map[string]int
	fail map[string][]string
}

// maxLoad bounds a load run even if a test forgets to stop it.
const maxLoad = 5 * time.Minute

func startLoad(streams []stream) *load {
	l := &load{stop: make(chan struct{}), sent: map[string]int{}, fail: map[string][]string{}}
	deadline := time.Now().Add(maxLoad)
	for _, s := range streams {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for time.Now().Before(deadline) {
				select {
				case <-l.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				start := time.Now()
				r, err := s.from.Query(ctx, "tcp", s.addr)
				cancel()
				l.mu.Lock()
				l.sent[s.name]++
				if err != nil {
					l.fail[s.name] = append(l.fail[s.name], fmt.Sprintf("%s: %v (after %s)", start.Format("15:04:05.000"), err, time.Since(start).Round(time.Millisecond)))
				} else if r.Pod == "" {
					l.fail[s.name] = append(l.fail[s.name], start.Format("15:04:05.000")+": empty answer")
				}
				l.mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	return l
}

// Stop stops the load and returns requests sent and failed per stream.
func (l *load) Stop() (sent map[string]int, fail map[string][]string) {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent, l.fail
}

// counts returns the totals so far.
func (l *load) counts() (sent, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, n := range l.sent {
		sent += n
		failed += len(l.fail[k])
	}
	return sent, failed
}
