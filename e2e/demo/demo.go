package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/kpr-proxy/kpr/e2e/build"
	"github.com/kpr-proxy/kpr/e2e/framework"
)

// The demo's objects and addresses (all from the e2e address plan).
const (
	svcNamespace = "default"
	svcName      = "echo"
	svcPort      = 80
	// numPods echo pods, spread over the nodes round-robin.
	numPods = 3
	// maxClusterIPRequests bounds the ClusterIP section, which keeps asking
	// until every pod has answered (kpr picks an endpoint at random per
	// connection, so 6 requests do not always reach all 3).
	maxClusterIPRequests = 40
	sections             = 5
)

// lbIP is the LoadBalancer ingress address the demo "allocates", as a cloud
// controller would.
var lbIP = netip.MustParseAddr("203.0.113.10")

// config says how the demo runs.
type config struct {
	// Requests is how many requests each traffic section makes (ClusterIP
	// makes more until every pod answered; NodePort makes this many per
	// node, split).
	Requests int
	// Hold keeps the cluster up after the show until ctx is cancelled.
	Hold bool
	// Printer receives the narrative.
	Printer *printer
	// RunDir is the cluster's run directory; empty lets the framework pick.
	RunDir string
	// HarnessLog receives the harness's own log (default: discarded).
	HarnessLog io.Writer
}

// result is what the demo observed, for its test.
type result struct {
	Pods         []string
	ClusterIP    tally
	NodePort     map[string]tally // node name → answers via that node
	LoadBalancer tally
	Hint         hint
}

// demo holds the run's state.
type demo struct {
	ctx context.Context
	t   testing.TB
	cfg config
	p   *printer
	c   *framework.Cluster
	res *result

	proxies       []*framework.Proxy
	teardownStart time.Time
}

// run is the whole demo. It fails t on any error (teardown is t's cleanups)
// and calls t.SkipNow when ctx is cancelled (Ctrl-C) before the show ends.
func run(ctx context.Context, t testing.TB, cfg config) *result {
	if cfg.Requests <= 0 {
		cfg.Requests = 6
	}
	d := &demo{ctx: ctx, t: t, cfg: cfg, p: cfg.Printer, res: &result{NodePort: map[string]tally{}}}
	// Deferred calls run before t's cleanups (the teardown), also after
	// t.FailNow/SkipNow.
	defer func() {
		d.teardownStart = time.Now()
		d.p.printf("\nTearing down: pods, proxies, control plane, namespaces…\n")
	}()
	d.startCluster()
	d.startProxies()
	d.createWorkload()
	d.p.section(4, sections, "Traffic through kpr's rules (each request is a new connection; the pod answers with its name)")
	d.showClusterIP()
	d.showNodePorts()
	d.showLoadBalancer()
	d.res.Hint = d.hint()
	if !cfg.Hold {
		return d.res
	}
	d.p.section(5, sections, "Up and running")
	d.p.printf("%s", indent(d.res.Hint.render(), "      "))
	d.hold()
	return d.res
}

// check fails the demo on err, or ends it quietly when err came from an
// interrupt.
func (d *demo) check(err error, what string) {
	d.t.Helper()
	if err == nil {
		return
	}
	d.interrupted()
	d.t.Fatalf("%s: %v", what, err)
}

// interrupted ends the demo (as skipped) if ctx was cancelled.
func (d *demo) interrupted() {
	if d.ctx.Err() != nil {
		d.t.SkipNow()
	}
}

func (d *demo) startCluster() {
	d.p.section(1, sections, "Local cluster: control plane (etcd, kube-apiserver, EndpointSlice controller), 2 nodes, an outside client — all in network namespaces")
	harnessLog := d.cfg.HarnessLog
	if harnessLog == nil {
		harnessLog = io.Discard
	}
	fileCore := zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(harnessLog), zapcore.DebugLevel)
	log := zap.New(zapcore.NewTee(fileCore, &progressCore{LevelEnabler: zapcore.InfoLevel, p: d.p}))

	// Registered before Start, so it runs after the cluster's own teardown:
	// it checks and reports that nothing is left.
	prefix := fmt.Sprintf("%s%d-", framework.NSPrefix, os.Getpid())
	d.t.Cleanup(func() {
		// Keep the logs, drop the bulk (etcd's preallocated WAL, copies of
		// the CNI plugin): a run directory is then a few hundred KB.
		if d.c != nil {
			_ = os.RemoveAll(filepath.Join(d.c.RunDir, "etcd-data"))
			for _, n := range d.c.Nodes() {
				_ = os.RemoveAll(filepath.Join(d.c.RunDir, "cni", n.Name, "bin"))
			}
		}
		left, err := leftoverNamespaces(prefix)
		switch {
		case err != nil:
			d.p.printf("\nteardown: cannot list namespaces: %v\n", err)
		case len(left) > 0:
			d.p.printf("\nteardown: namespaces still present (the final sweep removes them): %s\n", strings.Join(left, " "))
		default:
			d.p.printf("\nTorn down in %s: no namespaces or processes left (`ip netns list` shows none of %s*).\n",
				round(time.Since(d.teardownStart)), prefix)
		}
	})

	start := time.Now()
	d.c = framework.Start(d.t, framework.Options{RunDir: d.cfg.RunDir, Logger: log})
	d.interrupted()
	d.p.line("cluster up in %s; CNI %s; run directory %s", round(time.Since(start)), d.c.CNI, d.c.RunDir)
}

func leftoverNamespaces(prefix string) ([]string, error) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil, err
	}
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			left = append(left, f[0])
		}
	}
	return left, nil
}

// startProxies runs bin/proxy in every node namespace the way the DaemonSet
// does: as ServiceAccount kube-system/kpr with manifests/rbac.yaml's
// permissions (and nothing else), with hostNetwork (the node's namespace).
func (d *demo) startProxies() {
	d.p.section(2, sections, "kpr (bin/proxy) on every node, as the DaemonSet runs it: ServiceAccount kube-system/kpr, RBAC from manifests/rbac.yaml")
	moduleDir, err := build.FindModuleDir()
	d.check(err, "finding the e2e module")
	rbac := filepath.Join(filepath.Dir(moduleDir), "manifests", "rbac.yaml")
	objs := d.c.ApplyFile(d.t, rbac)
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind()+" "+o.GetName())
	}
	d.p.line("applied %s: %s", relToRepo(moduleDir, rbac), strings.Join(kinds, ", "))
	kubeconfig, _ := d.c.ServiceAccountKubeconfig(d.t, "kube-system", "kpr")
	d.p.line("token for kube-system/kpr (TokenRequest API) in %s", kubeconfig)
	bin, err := d.c.ProxyBinary(framework.ProxyKpr)
	d.check(err, "kpr binary")
	for _, n := range d.c.Nodes() {
		d.interrupted()
		start := time.Now()
		p := n.StartProxy(d.t, framework.ProxySpec{Binary: bin, Args: framework.StandardProxyArgs(n, kubeconfig)})
		p.WaitHealthy(d.t, 60*time.Second)
		p.WaitSynced(d.t, 60*time.Second)
		d.proxies = append(d.proxies, p)
		d.p.line("%s: kpr pid %d healthy and synced in %s (log: %s)", n.Name, p.Pid(), round(time.Since(start)), p.LogPath)
	}
}

// createWorkload creates the echo pods and a LoadBalancer Service in front
// of them, and waits for the EndpointSlice controller.
func (d *demo) createWorkload() {
	d.p.section(3, sections, fmt.Sprintf("%d echo pods behind Service %s/%s (type LoadBalancer, port %d → pod port \"http\" %d)", numPods, svcNamespace, svcName, svcPort, framework.EchoHTTPPort))
	labels := map[string]string{"app": svcName}
	var ips []netip.Addr
	for i := range numPods {
		d.interrupted()
		name := fmt.Sprintf("echo-%d", i+1)
		pod := d.c.CreatePod(d.t, framework.PodSpec{Name: name, Namespace: svcNamespace, Node: i % len(d.c.Nodes()), Labels: labels})
		d.res.Pods = append(d.res.Pods, name)
		ips = append(ips, pod.IPs...)
		d.p.line("pod %-7s on %s  %s", name, pod.Node.Name, joinAddrs(pod.IPs))
	}
	svc, err := d.c.Client.CoreV1().Services(svcNamespace).Create(d.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svcName, Namespace: svcNamespace},
		Spec: corev1.ServiceSpec{
			Type:           corev1.ServiceTypeLoadBalancer,
			Selector:       labels,
			IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicyPreferDualStack),
			Ports:          []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: svcPort, TargetPort: intstr.FromString("http")}},
		},
	}, metav1.CreateOptions{})
	d.check(err, "creating the Service")
	d.p.line("Service %s: ClusterIPs %s, port %d, NodePort %d", svcName, strings.Join(svc.Spec.ClusterIPs, " "), svcPort, svc.Spec.Ports[0].NodePort)
	slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	start := time.Now()
	d.check(framework.Poll(d.ctx, 30*time.Second, 100*time.Millisecond, func(ctx context.Context) error {
		got, err := d.c.EndpointSliceAddresses(ctx, svcNamespace, svcName)
		if err != nil {
			return err
		}
		if !slices.Equal(got, ips) {
			return fmt.Errorf("have %v, want %v", got, ips)
		}
		return nil
	}), "waiting for the EndpointSlices")
	d.p.line("EndpointSlices list all %d pods (both families) after %s", numPods, round(time.Since(start)))
}

func (d *demo) service() *corev1.Service {
	svc, err := d.c.Client.CoreV1().Services(svcNamespace).Get(d.ctx, svcName, metav1.GetOptions{})
	d.check(err, "reading the Service")
	return svc
}

// firstAnswer waits until addr answers from ns: kpr programs rules
// asynchronously after the API change.
func (d *demo) firstAnswer(from *framework.NetNS, addr string) {
	start := time.Now()
	d.check(framework.Poll(d.ctx, 30*time.Second, 100*time.Millisecond, func(ctx context.Context) error {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := from.Query(cctx, "http", addr)
		return err
	}), "waiting for "+addr+" to answer")
	if waited := time.Since(start); waited > 200*time.Millisecond {
		d.p.line("(first answer after %s: kpr had to program the rules)", round(waited))
	}
}

// requests makes n HTTP requests to addr from inside ns, printing each, and
// keeps going (up to max) until every pod in want answered, if want is set.
func (d *demo) requests(from *framework.NetNS, addr string, n, max int, want []string) tally {
	got := tally{}
	pods := map[string]string{} // pod IP → node, for the printout
	for _, name := range d.res.Pods {
		if p := d.c.Pod(svcNamespace, name); p != nil {
			for _, ip := range p.IPs {
				pods[ip.String()] = p.Node.Name
			}
		}
	}
	for i := 1; i <= max; i++ {
		if i > n && len(got.missing(want)) == 0 {
			break
		}
		d.interrupted()
		cctx, cancel := context.WithTimeout(d.ctx, 3*time.Second)
		r, err := from.Query(cctx, "http", addr)
		cancel()
		if err != nil {
			d.check(err, fmt.Sprintf("request #%d to %s", i, addr))
		}
		got[r.Pod]++
		podIP := hostOf(r.Local)
		d.p.line("#%-2d GET http://%s/  →  %-6s (pod %s on %s; it saw the client as %s)", i, addr, r.Pod, podIP, pods[podIP], r.ClientIP())
	}
	if miss := got.missing(want); len(miss) > 0 {
		d.t.Fatalf("after %d requests to %s, pods %v never answered (answers: %s)", max, addr, miss, got)
	}
	d.p.line("answered by: %s", got)
	return got
}

func (d *demo) showClusterIP() {
	svc := d.service()
	n1 := d.c.Node(0)
	addr := framework.AddrPort(netip.MustParseAddr(svc.Spec.ClusterIP), svcPort)
	d.p.printf("\n  ClusterIP %s from %s (like `curl` on the node; kpr's rules pick a pod at random)\n", addr, n1.Name)
	d.firstAnswer(n1.NetNS, addr)
	d.res.ClusterIP = d.requests(n1.NetNS, addr, d.cfg.Requests, maxClusterIPRequests, d.res.Pods)
}

func (d *demo) showNodePorts() {
	svc := d.service()
	np := int(svc.Spec.Ports[0].NodePort)
	out := d.c.Outside()
	per := max(d.cfg.Requests/2, 1)
	d.p.printf("\n  NodePort %d from the outside client %s (outside the cluster, behind the router), via each node\n", np, out.IPv4)
	for _, n := range d.c.Nodes() {
		addr := framework.AddrPort(n.IPv4, np)
		d.p.line("via %s (%s):", n.Name, n.IPv4)
		d.firstAnswer(out.NetNS, addr)
		d.res.NodePort[n.Name] = d.requests(out.NetNS, addr, per, per, nil)
	}
}

// showLoadBalancer plays the cloud: it writes the Service's
// status.loadBalancer.ingress and routes that address to the nodes.
func (d *demo) showLoadBalancer() {
	d.check(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc := d.service()
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP.String()}}
		_, err := d.c.Client.CoreV1().Services(svcNamespace).UpdateStatus(d.ctx, svc, metav1.UpdateOptions{})
		return err
	}), "setting status.loadBalancer.ingress")
	nodes := d.c.Nodes()
	d.check(d.c.RouteLoadBalancer(netip.PrefixFrom(lbIP, 32), nodes...), "routing the LoadBalancer IP")
	addr := framework.AddrPort(lbIP, svcPort)
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	d.p.printf("\n  LoadBalancer %s from the outside client\n", addr)
	d.p.line("playing the cloud: status.loadBalancer.ingress = %s (status subresource); the router sends it to %s (ECMP)", lbIP, strings.Join(names, " and "))
	d.firstAnswer(d.c.Outside().NetNS, addr)
	d.res.LoadBalancer = d.requests(d.c.Outside().NetNS, addr, d.cfg.Requests, d.cfg.Requests, nil)
	d.p.printf("\n  Pods see a node's address as the client: kpr masquerades Service traffic that does not come from a pod\n"+
		"  (the node's eth0 address, or its pod bridge 198.18.N.1 for a pod on the same node). With\n"+
		"  externalTrafficPolicy: Local, NodePort and LoadBalancer traffic would keep the client's own %s.\n", d.c.Outside().IPv4)
}

// hint collects the real names, addresses and paths for the poke-around
// text.
func (d *demo) hint() hint {
	svc := d.service()
	h := hint{
		OutsideNS:       d.c.Outside().Name,
		ControlPlaneNS:  d.c.ControlPlane().Name,
		ClusterIPs:      svc.Spec.ClusterIPs,
		Port:            svcPort,
		NodePort:        svc.Spec.Ports[0].NodePort,
		LBIP:            lbIP.String(),
		IPTablesSave:    iptablesSaveCommand(d.c.Node(0)),
		AdminKubeconfig: d.c.AdminKubeconfig,
		CAFile:          filepath.Join(d.c.RunDir, "pki", "ca.crt"),
		AdminTokenFile:  filepath.Join(d.c.RunDir, "admin.token"),
		EchoBin:         d.c.Binary("echo"),
		APIServer:       framework.APIServerURL(),
		RunDir:          d.c.RunDir,
		LogDir:          d.c.LogDir,
		NSPrefix:        fmt.Sprintf("%s%d-", framework.NSPrefix, os.Getpid()),
		MetricPort:      framework.ProxyMetricsPort,
	}
	_, err := exec.LookPath("kubectl")
	h.Kubectl = err == nil
	_, err = exec.LookPath("curl")
	h.Curl = err == nil
	// For curl against the API without kubectl; the kubeconfig holds the
	// same token.
	d.check(os.WriteFile(h.AdminTokenFile, []byte(d.c.RESTConfig.BearerToken+"\n"), 0o600), "writing the admin token file")
	for _, n := range d.c.Nodes() {
		h.Nodes = append(h.Nodes, hintNode{Name: n.Name, NS: n.NetNS.Name, IP: n.IPv4.String()})
	}
	return h
}

// iptablesSaveCommand names the iptables-save that shows kpr's rules on n:
// plain "iptables-save" when the machine's default backend is the one kpr
// used, else the backend's own binary.
func iptablesSaveCommand(n *framework.Node) string {
	used := ""
	for _, backend := range []string{"nft", "legacy"} {
		out, err := n.Exec("iptables-"+backend+"-save", "-t", "nat")
		if err == nil && strings.Contains(out, "KPR-") {
			used = backend
			break
		}
	}
	if used == "" {
		return "iptables-save"
	}
	ver, err := exec.Command("iptables-save", "--version").CombinedOutput()
	isDefault := err == nil && (strings.Contains(string(ver), "nf_tables") == (used == "nft"))
	if isDefault {
		return "iptables-save"
	}
	return "iptables-" + used + "-save"
}

// hold keeps the cluster up until ctx is cancelled, reporting a proxy that
// exits meanwhile.
func (d *demo) hold() {
	type exit struct {
		p   *framework.Proxy
		err error
	}
	exits := make(chan exit, len(d.proxies))
	for _, p := range d.proxies {
		done, waitErr := p.Exited()
		go func() {
			select {
			case <-d.ctx.Done():
			case <-done:
				exits <- exit{p, waitErr()}
			}
		}()
	}
	for {
		select {
		case <-d.ctx.Done():
			return
		case e := <-exits:
			d.p.printf("\nwarning: kpr on %s exited (%v); its log: %s\n", e.p.Node.Name, e.err, e.p.LogPath)
		}
	}
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}

func hostOf(hostport string) string {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return ap.Addr().String()
	}
	return hostport
}

func relToRepo(moduleDir, path string) string {
	if rel, err := filepath.Rel(filepath.Dir(moduleDir), path); err == nil {
		return rel
	}
	return path
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}
