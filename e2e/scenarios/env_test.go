package scenarios

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/kpr-proxy/kpr/e2e/build"
	"github.com/kpr-proxy/kpr/e2e/echo"
	"github.com/kpr-proxy/kpr/e2e/framework"
)

// Time budgets. programTimeout is how long a proxy may take to program an
// API change; it is generous because two proxies, the apiserver and the
// EndpointSlice controller share two cores.
const (
	programTimeout = 30 * time.Second
	queryTimeout   = 2 * time.Second
)

// env is the cluster every scenario shares: two nodes, each running the proxy
// under test exactly as its DaemonSet would (ServiceAccount kube-system/kpr
// with manifests/rbac.yaml, a token kubeconfig), and one client pod per node
// that no Service selects.
type env struct {
	c *framework.Cluster
	// kind is framework.ProxyKpr or framework.ProxyUpstream.
	kind       string
	kubeconfig string
	proxies    []*framework.Proxy
	// clients[i] runs on node i.
	clients []*framework.Pod
	// backend is the iptables backend ("nft" or "legacy") the proxies
	// program, found by looking at the node's tables.
	backend string
}

const clientNS = "e2e-clients"

func newEnv(t *testing.T) *env {
	t.Helper()
	c := framework.Start(t, framework.Options{})
	moduleDir, err := build.FindModuleDir()
	if err != nil {
		t.Fatal(err)
	}
	c.ApplyFile(t, filepath.Join(filepath.Dir(moduleDir), "manifests", "rbac.yaml"))
	kc, _ := c.ServiceAccountKubeconfig(t, "kube-system", "kpr")
	e := &env{c: c, kind: framework.ProxyUnderTest(), kubeconfig: kc}
	if e.kind == framework.ProxyUpstream {
		// Upstream kube-proxy v1.37 also lists and watches
		// networking.k8s.io ServiceCIDRs (its ServiceCIDR informer runs
		// whenever MultiCIDRServiceAllocator is on, GA since 1.33; in
		// iptables mode the data is unused). kpr's manifests/rbac.yaml does
		// not grant that, and upstream's own system:node-proxier role does.
		// Without it upstream works but logs "forbidden" every few seconds,
		// which RBACSufficient would report; so for upstream only, and
		// without touching the manifests, the suite grants this one extra
		// rule to the same ServiceAccount.
		c.ApplyYAML(t, []byte(upstreamExtraRBAC))
	}
	for i := range c.Nodes() {
		e.clients = append(e.clients, c.CreatePod(t, framework.PodSpec{
			Name: fmt.Sprintf("client-%d", i+1), Namespace: clientNS, Node: i,
			Labels: map[string]string{"role": "client"},
		}))
	}
	for i := range c.Nodes() {
		e.proxies = append(e.proxies, c.StartProxyUnderTest(t, i, kc))
	}
	e.backend = e.detectBackend(t, c.Node(0))
	t.Logf("proxy under test: %s; iptables backend in use: %s; run dir %s", e.kind, e.backend, c.RunDir)
	return e
}

const upstreamExtraRBAC = `
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: e2e-upstream-kube-proxy-servicecidrs
rules:
  - apiGroups: ["networking.k8s.io"]
    resources: ["servicecidrs"]
    verbs: ["list", "watch"]
  # kube-proxy records Events (kpr does not, so its role has none).
  - apiGroups: ["", "events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: e2e-upstream-kube-proxy-servicecidrs
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: e2e-upstream-kube-proxy-servicecidrs
subjects:
  - kind: ServiceAccount
    name: kpr
    namespace: kube-system
`

// scenario is one entry of the suite.
type scenario struct {
	name string
	fn   func(t *testing.T, e *env)
}

// run runs one scenario as a subtest. When it fails, the kernel state and the
// proxies' logs are saved before the scenario's own cleanups remove its
// Services and pods. Afterwards every proxy must still be running; a dead one
// fails the scenario and is restarted so the rest of the suite can go on.
func (e *env) run(t *testing.T, s scenario) {
	t.Run(s.name, func(t *testing.T) {
		start := time.Now()
		defer func() {
			if t.Failed() {
				e.saveEvidence(t)
			}
			for _, p := range e.proxies {
				if !p.Running() {
					t.Errorf("proxy on %s is not running after scenario %s; log tail:\n%s", p.Node.Name, s.name, p.Tail(40))
					p.Restart(t)
					p.WaitHealthy(t, 60*time.Second)
					p.WaitSynced(t, 60*time.Second)
				}
			}
			t.Logf("scenario %s took %s", s.name, time.Since(start).Round(time.Millisecond))
		}()
		s.fn(t, e)
	})
}

// saveEvidence writes each node's iptables-save (both families) and
// conntrack table to <run dir>/evidence/<subtest>/ and logs the proxies' log
// tails.
func (e *env) saveEvidence(t *testing.T) {
	dir := filepath.Join(e.c.RunDir, "evidence", regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("evidence: %v", err)
		return
	}
	for _, n := range e.c.Nodes() {
		for _, fam := range []string{"iptables", "ip6tables"} {
			out, err := n.Exec(fam + "-" + e.backend + "-save")
			if err != nil {
				out += "\n# error: " + err.Error()
			}
			_ = os.WriteFile(filepath.Join(dir, n.Name+"-"+fam+"-save.txt"), []byte(out), 0o644)
		}
		if out, err := n.Exec("conntrack", "-L"); err == nil {
			_ = os.WriteFile(filepath.Join(dir, n.Name+"-conntrack.txt"), []byte(out), 0o644)
		}
	}
	for _, p := range e.proxies {
		t.Logf("==== proxy %s (%s), last 30 lines:\n%s", p.Node.Name, p.LogPath, p.Tail(30))
	}
	t.Logf("evidence (iptables-save, conntrack) saved in %s", dir)
}

// servicesChain matches the proxy's top-level Services chain: KUBE-SERVICES
// for kube-proxy, KPR-SERVICES for kpr.
var servicesChain = regexp.MustCompile(`(?m)^:(KUBE|KPR)-SERVICES `)

// detectBackend finds which iptables backend holds the proxy's rules on n:
// the one whose full save has the proxy's Services chain. Only full saves
// are used: `iptables-legacy-save -t nat` would create the legacy nat table.
func (e *env) detectBackend(t *testing.T, n *framework.Node) string {
	t.Helper()
	var found []string
	for _, b := range []string{"nft", "legacy"} {
		out, err := n.Exec("iptables-" + b + "-save")
		if err == nil && servicesChain.MatchString(out) {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		t.Fatalf("cannot tell which iptables backend the proxy uses on %s: a KUBE-SERVICES or KPR-SERVICES chain is in %v", n.Name, found)
	}
	return found[0]
}

// iptables runs the proxy's backend's iptables (or ip6tables) command in n.
func (e *env) iptables(n *framework.Node, v6 bool, args ...string) (string, error) {
	bin := "iptables-" + e.backend
	if v6 {
		bin = "ip6tables-" + e.backend
	}
	return n.Exec(append([]string{bin}, args...)...)
}

// ---- API objects ----

func (e *env) ensureNamespace(t *testing.T, ns string) {
	t.Helper()
	_, err := e.c.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// pod creates an echo pod name in ns on node (0-based) with labels.
func (e *env) pod(t *testing.T, ns, name string, node int, labels map[string]string) *framework.Pod {
	t.Helper()
	return e.c.CreatePod(t, framework.PodSpec{Name: name, Namespace: ns, Node: node, Labels: labels})
}

// createService creates svc and deletes it when the scenario ends.
func (e *env) createService(t *testing.T, svc *corev1.Service) *corev1.Service {
	t.Helper()
	e.ensureNamespace(t, svc.Namespace)
	created, err := e.c.Client.CoreV1().Services(svc.Namespace).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Service %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	t.Cleanup(func() {
		err := e.c.Client.CoreV1().Services(svc.Namespace).Delete(context.Background(), svc.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Logf("deleting Service %s/%s: %v", svc.Namespace, svc.Name, err)
		}
	})
	t.Logf("Service %s/%s: type %s, clusterIPs %v, ports %s", created.Namespace, created.Name, created.Spec.Type, created.Spec.ClusterIPs, portsString(created.Spec.Ports))
	return created
}

// updateService applies mutate to the current Service and updates it.
func (e *env) updateService(t *testing.T, ns, name string, mutate func(*corev1.Service)) *corev1.Service {
	t.Helper()
	var out *corev1.Service
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := e.c.Client.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		mutate(svc)
		out, err = e.c.Client.CoreV1().Services(ns).Update(context.Background(), svc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("updating Service %s/%s: %v", ns, name, err)
	}
	return out
}

// setLoadBalancerIngress writes status.loadBalancer.ingress as a cloud
// controller would.
func (e *env) setLoadBalancerIngress(t *testing.T, ns, name string, ingress ...corev1.LoadBalancerIngress) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := e.c.Client.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		svc.Status.LoadBalancer.Ingress = ingress
		_, err = e.c.Client.CoreV1().Services(ns).UpdateStatus(context.Background(), svc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("setting load-balancer status of %s/%s: %v", ns, name, err)
	}
}

// routeLoadBalancer points the router's route for ip/32 at node for the rest
// of the scenario (the harness routes the whole LB /24 to node1 otherwise).
func (e *env) routeLoadBalancer(t *testing.T, ip string, node *framework.Node) {
	t.Helper()
	prefix := ip + "/32"
	if err := e.c.RouteLoadBalancer(mustPrefix(t, prefix), node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = e.c.Router().Exec("ip", "route", "del", prefix) })
}

func labels(app string) map[string]string { return map[string]string{"app": app} }

var (
	newService = framework.NewService
	tcpPort    = framework.TCPServicePort
	udpPort    = framework.UDPServicePort
)

func nodePortOf(t *testing.T, svc *corev1.Service, name string) int {
	t.Helper()
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			if p.NodePort == 0 {
				t.Fatalf("Service %s port %s has no nodePort", svc.Name, name)
			}
			return int(p.NodePort)
		}
	}
	t.Fatalf("Service %s has no port %s", svc.Name, name)
	return 0
}

// clusterIP returns the Service's cluster IP of the family (v6 or not).
func clusterIP(t *testing.T, svc *corev1.Service, v6 bool) string {
	t.Helper()
	for _, ip := range svc.Spec.ClusterIPs {
		if strings.Contains(ip, ":") == v6 {
			return ip
		}
	}
	t.Fatalf("Service %s has no %s cluster IP: %v", svc.Name, map[bool]string{false: "IPv4", true: "IPv6"}[v6], svc.Spec.ClusterIPs)
	return ""
}

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }

func portsString(ps []corev1.ServicePort) string {
	var parts []string
	for _, p := range ps {
		s := fmt.Sprintf("%s %d/%s", p.Name, p.Port, p.Protocol)
		if p.NodePort != 0 {
			s += fmt.Sprintf(" nodePort %d", p.NodePort)
		}
		parts = append(parts, s)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// ---- traffic ----

// query sends one echo query from ns with queryTimeout (bounded by ctx).
func query(ctx context.Context, from *framework.NetNS, proto, addr string) (echo.Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	r, err := from.Query(ctx, proto, addr)
	if err != nil {
		return r, fmt.Errorf("%s %s from %s: %w", proto, addr, shortNS(from), err)
	}
	return r, nil
}

// shortNS drops the run-specific prefix of a namespace name for messages.
func shortNS(n *framework.NetNS) string {
	parts := strings.SplitN(n.Name, "-", 4)
	return parts[len(parts)-1]
}

// answeredBy queries addr up to tries times and checks that every pod in want
// answers and nobody else does. It stops as soon as all have answered unless
// all is set (then it runs every try).
func answeredBy(ctx context.Context, from *framework.NetNS, proto, addr string, want []string, tries int, all bool) (map[string]int, error) {
	seen := map[string]int{}
	for i := 0; i < tries && (all || len(seen) < len(want)); i++ {
		r, err := query(ctx, from, proto, addr)
		if err != nil {
			return seen, err
		}
		if !slices.Contains(want, r.Pod) {
			return seen, fmt.Errorf("%s %s from %s answered by %q, want only %v", proto, addr, shortNS(from), r.Pod, want)
		}
		seen[r.Pod]++
	}
	if len(seen) < len(want) {
		return seen, fmt.Errorf("%s %s from %s: only %v answered in %d tries, want all of %v", proto, addr, shortNS(from), seen, tries, want)
	}
	return seen, nil
}

// expectBackends waits until queries from ns to addr are answered by exactly
// the pods in want (every one of them, nobody else).
func expectBackends(t *testing.T, from *framework.NetNS, proto, addr string, want ...string) {
	t.Helper()
	tries := 20 * len(want)
	framework.Eventually(t, programTimeout, fmt.Sprintf("%s %s from %s answered by %v", proto, addr, shortNS(from), want), func(ctx context.Context) error {
		_, err := answeredBy(ctx, from, proto, addr, want, tries, false)
		return err
	})
}

// expectOnly waits until n consecutive queries are all answered by the one
// pod want (e.g. a traffic policy restricting the endpoints).
func expectOnly(t *testing.T, from *framework.NetNS, proto, addr, want string, n int) {
	t.Helper()
	framework.Eventually(t, programTimeout, fmt.Sprintf("%d consecutive %s %s from %s answered by %s", n, proto, addr, shortNS(from), want), func(ctx context.Context) error {
		_, err := answeredBy(ctx, from, proto, addr, []string{want}, n, true)
		return err
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// expectDropped waits until queries to addr get no answer at all (the packet
// is dropped: no reply, no reset, no ICMP error), then checks that it stays so
// for two more attempts.
func expectDropped(t *testing.T, from *framework.NetNS, proto, addr string) {
	t.Helper()
	probe := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer cancel()
		r, err := from.Query(ctx, proto, addr)
		switch {
		case err == nil:
			return fmt.Errorf("%s %s from %s answered by %s, want it dropped", proto, addr, shortNS(from), r.Pod)
		case !isTimeout(err):
			return fmt.Errorf("%s %s from %s: %v, want a silent drop (timeout)", proto, addr, shortNS(from), err)
		}
		return nil
	}
	framework.Eventually(t, programTimeout, fmt.Sprintf("%s %s from %s dropped", proto, addr, shortNS(from)), probe)
	for i := 0; i < 2; i++ {
		if err := probe(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// dialRefusedWithin dials TCP addr and reports nil if the connection is
// refused within limit.
func dialRefusedWithin(ctx context.Context, from *framework.NetNS, addr string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	c, err := from.DialContext(ctx, "tcp", addr)
	took := time.Since(start)
	if err == nil {
		c.Close()
		return fmt.Errorf("tcp %s from %s: connected, want refused", addr, shortNS(from))
	}
	if !isRefused(err) {
		return fmt.Errorf("tcp %s from %s: %v after %s, want connection refused within %s", addr, shortNS(from), err, took.Round(time.Millisecond), limit)
	}
	return nil
}

// udpRefusedWithin sends a datagram to addr from a connected socket and
// reports nil if the ICMP port-unreachable (read error ECONNREFUSED) arrives
// within limit.
func udpRefusedWithin(ctx context.Context, from *framework.NetNS, addr string, limit time.Duration) error {
	c, err := from.DialContext(ctx, "udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(limit))
	if _, err := c.Write([]byte("who\n")); err != nil {
		if isRefused(err) {
			return nil
		}
		return err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err == nil {
		return fmt.Errorf("udp %s from %s: answered %q, want port unreachable", addr, shortNS(from), strings.TrimSpace(string(buf[:n])))
	}
	if !isRefused(err) {
		return fmt.Errorf("udp %s from %s: %v, want port unreachable within %s", addr, shortNS(from), err, limit)
	}
	return nil
}

// waitNotSelected waits until no client picks pod for new connections to addr
// any more: 40 consecutive queries from every client node go elsewhere. With
// at least two other ready endpoints a stale rule would show up in 40 tries
// with probability above 1-(2/3)^40. This is how the suite knows both proxies
// have synced a removal before the pod is killed, as a kubelet's grace
// period would allow.
func (e *env) waitNotSelected(t *testing.T, proto, addr, pod string) {
	t.Helper()
	for _, cl := range e.clients {
		framework.Eventually(t, programTimeout, fmt.Sprintf("%s %s from %s no longer sent to %s", proto, addr, cl.Name, pod), func(ctx context.Context) error {
			for i := 0; i < 40; i++ {
				r, err := query(ctx, cl.NetNS, proto, addr)
				if err != nil {
					return err
				}
				if r.Pod == pod {
					return fmt.Errorf("try %d still answered by %s", i+1, pod)
				}
			}
			return nil
		})
	}
}

// retire removes p the way a kubelet does during a rollout: graceful
// deletion (its endpoints turn terminating, no longer ready), wait until the
// proxies stopped choosing it for each of the Service addresses (proto,
// addr pairs), then stop it and delete the Pod object.
func (e *env) retire(t *testing.T, p *framework.Pod, targets ...[2]string) {
	t.Helper()
	p.Terminate(t, 30*time.Second)
	for _, tg := range targets {
		e.waitNotSelected(t, tg[0], tg[1], p.Name)
	}
	p.Finish(t)
}

// healthz checks every proxy answers /healthz with 200.
func (e *env) expectProxiesHealthy(t *testing.T) {
	t.Helper()
	for _, p := range e.proxies {
		if !p.Running() {
			t.Fatalf("proxy on %s exited; log tail:\n%s", p.Node.Name, p.Tail(40))
		}
		framework.Eventually(t, 30*time.Second, "healthz 200 on "+p.Node.Name, func(ctx context.Context) error {
			code, body, err := p.Healthz(ctx)
			if err != nil {
				return err
			}
			if code != 200 {
				return fmt.Errorf("healthz %d: %s", code, strings.TrimSpace(body))
			}
			return nil
		})
	}
}

// metric returns the sum of all samples of name in the proxy's metrics.
func metric(ctx context.Context, p *framework.Proxy, name string) (float64, bool, error) {
	body, err := p.Metrics(ctx)
	if err != nil {
		return 0, false, err
	}
	v, ok := sumMetric(body, name)
	return v, ok, nil
}

// sumMetric adds up every sample of name ("name value" or
// "name{labels} value") in Prometheus text.
func sumMetric(text, name string) (float64, bool) {
	var sum float64
	found := false
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			rest = rest[end+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(f[0], &v); err == nil {
			sum += v
			found = true
		}
	}
	return sum, found
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
