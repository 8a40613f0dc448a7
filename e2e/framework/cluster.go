package framework

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kpr-proxy/kpr/e2e/build"
)

// CNI plugin choices for Options.CNI.
const (
	// CNIAuto uses podnet when its binary is found, else CNIReference.
	CNIAuto = ""
	// CNIPodnet uses kpr's bin/podnet, with `podnet node` as the routes
	// controller in every node namespace.
	CNIPodnet = "podnet"
	// CNIReference uses the reference bridge + host-local plugins from
	// containernetworking/plugins, and the harness adds the routes to other
	// nodes' pod CIDRs itself. It keeps e2e independent of podnet.
	CNIReference = "reference"
)

// Options configures Start. The zero value is a 2-node dual-stack cluster.
type Options struct {
	// Nodes is the number of node namespaces (default 2, at most 50).
	Nodes int
	// CNI picks the pod network plugin (CNIAuto, CNIPodnet, CNIReference).
	// $E2E_CNI overrides CNIAuto.
	CNI string
	// PodnetBinary is bin/podnet's path. Default: $E2E_PODNET_BIN, else
	// <repo>/bin/podnet.
	PodnetBinary string
	// NoRoutesController skips `podnet node` (CNIPodnet only): the harness
	// installs the plugin and writes its conflist itself, and nodes get no
	// routes to each other's pod CIDRs (e.g. for a test that runs the
	// controller itself).
	NoRoutesController bool
	// IPMasq enables the CNI plugin's masquerading of pod egress.
	IPMasq bool
	// NoControllerManager skips kube-controller-manager: no EndpointSlices
	// from Pods, no default ServiceAccounts (tests then create both).
	NoControllerManager bool
	// APIServerArgs and ControllerManagerArgs are appended to the defaults.
	APIServerArgs         []string
	ControllerManagerArgs []string
	// RunDir holds logs, certificates, kubeconfigs and etcd data. Default:
	// $E2E_RUN_DIR, else e2e/_cache/runs/<time>-<pid>-<rand> (the newest 20
	// runs are kept).
	RunDir string
	// Logger receives the harness's own progress. Default: zaptest (t.Log).
	Logger *zap.Logger
}

// Cluster is a running control plane plus namespace-made nodes.
type Cluster struct {
	// RunDir holds this run's files; LogDir (= RunDir/logs) one log per
	// process.
	RunDir, LogDir string
	// Client is an admin client (dialing through the control-plane
	// namespace; usable from the test process).
	Client kubernetes.Interface
	// RESTConfig is Client's config.
	RESTConfig *rest.Config
	// AdminKubeconfig is a kubeconfig file with the admin token, for
	// processes in node namespaces.
	AdminKubeconfig string
	// CNI is the plugin in use (CNIPodnet or CNIReference).
	CNI string
	// Log is the harness logger.
	Log *zap.Logger

	t    testing.TB
	opts Options
	id   string
	bins build.Result
	pki  *pki

	bridge, router, cp *NetNS
	outside            *Host
	nodes              []*Node

	etcd, apiserver, kcm *Process
	cni                  *cniRuntime
	podnet               string // absolute path of bin/podnet (CNIPodnet)

	mu         sync.Mutex
	namespaces []*NetNS
	procs      []*Process
	pods       map[string]*Pod
}

// Node is one node namespace and its Node object.
type Node struct {
	*NetNS
	// Name is "node1", "node2", … (also the Node object's name).
	Name string
	// Index is the 0-based index: Cluster.Node(Index) returns this node.
	Index int
	// IPv4 and IPv6 are the InternalIPs on eth0.
	IPv4, IPv6 netip.Addr
	// PodCIDRv4/v6 are spec.podCIDRs.
	PodCIDRv4, PodCIDRv6 netip.Prefix
	// Zone is the topology.kubernetes.io/zone label ("zone-a", "zone-b", …).
	Zone string
	// BridgeNFCall says net.bridge.bridge-nf-call-iptables exists (and was
	// set to 1) in the node namespace.
	BridgeNFCall bool

	c      *Cluster
	routes *Process
}

// Host is a namespace outside the cluster (the outside client).
type Host struct {
	*NetNS
	IPv4 netip.Addr
}

// Start brings up the whole cluster, or skips the test (not root, no `ip`)
// or fails it. Everything is torn down by t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	requireRoot(t)
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.Nodes < 1 || opts.Nodes > maxNodes {
		t.Fatalf("framework.Start: Nodes=%d, want 1..%d", opts.Nodes, maxNodes)
	}
	log := opts.Logger
	if log == nil {
		log = zaptest.NewLogger(t)
	}
	c := &Cluster{t: t, opts: opts, id: randHex(2), Log: log, pods: map[string]*Pod{}}
	// Registered first, so it runs last: after the test's own cleanups
	// (pods, proxies) have run.
	t.Cleanup(c.teardown)
	start := time.Now()
	if err := c.start(); err != nil {
		t.Fatalf("framework.Start: %v", err)
	}
	log.Info("cluster up", zap.Duration("took", time.Since(start)), zap.String("run_dir", c.RunDir), zap.String("cni", c.CNI))
	return c
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: e2e needs root to create network namespaces (run `go test` as root)")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not installed (apt-get install iproute2 iptables)", tool)
		}
	}
}

func (c *Cluster) step(name string, fn func() error) error {
	start := time.Now()
	if err := fn(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	c.Log.Info("step done", zap.String("step", name), zap.Duration("took", time.Since(start)))
	return nil
}

func (c *Cluster) start() error {
	ctx := context.Background()
	moduleDir, err := build.FindModuleDir()
	if err != nil {
		return err
	}
	if err := c.step("binaries", func() error {
		c.bins, err = build.Ensure(build.Config{ModuleDir: moduleDir, Progress: os.Stderr})
		return err
	}); err != nil {
		return err
	}
	if err := c.setupRunDir(moduleDir); err != nil {
		return err
	}
	if err := c.pickCNI(moduleDir); err != nil {
		return err
	}
	if err := c.step("topology", func() error {
		if err := c.buildWire(); err != nil {
			return err
		}
		if err := c.buildRouter(); err != nil {
			return err
		}
		if err := c.buildControlPlaneNS(); err != nil {
			return err
		}
		for i := 0; i < c.opts.Nodes; i++ {
			n := &Node{Index: i, c: c}
			n.Name, n.IPv4, n.IPv6, n.PodCIDRv4, n.PodCIDRv6, n.Zone = nodeAddrs(i)
			if err := c.buildNodeNS(n); err != nil {
				return err
			}
			c.nodes = append(c.nodes, n)
		}
		return c.RouteLoadBalancer(LoadBalancerNetV4, c.nodes[0])
	}); err != nil {
		return err
	}
	if err := c.step("control plane", func() error { return c.startControlPlane(ctx) }); err != nil {
		return err
	}
	if err := c.step("nodes", func() error {
		for _, n := range c.nodes {
			if err := c.registerNode(ctx, n); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	if !c.opts.NoControllerManager {
		if err := c.step("controller manager", func() error { return c.startControllerManager(ctx) }); err != nil {
			return err
		}
	}
	return c.step("pod network", func() error { return c.startPodNetwork(ctx) })
}

func (c *Cluster) setupRunDir(moduleDir string) error {
	dir := c.opts.RunDir
	if dir == "" {
		dir = os.Getenv("E2E_RUN_DIR")
	}
	if dir == "" {
		runs := filepath.Join(moduleDir, "_cache", "runs")
		pruneRuns(runs, 20)
		dir = filepath.Join(runs, fmt.Sprintf("%s-%d-%s", time.Now().Format("20060102-150405"), os.Getpid(), c.id))
	}
	c.RunDir, _ = filepath.Abs(dir)
	c.LogDir = filepath.Join(c.RunDir, "logs")
	if err := os.MkdirAll(c.LogDir, 0o755); err != nil {
		return err
	}
	c.Log.Info("run directory", zap.String("run_dir", c.RunDir))
	return nil
}

// pruneRuns keeps the newest keep run directories.
func pruneRuns(dir string, keep int) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names) // names start with a timestamp
	for len(names) >= keep {
		_ = os.RemoveAll(filepath.Join(dir, names[0]))
		names = names[1:]
	}
}

// Node returns node i (0-based: Node(0) is "node1").
func (c *Cluster) Node(i int) *Node {
	if i < 0 || i >= len(c.nodes) {
		c.t.Fatalf("Node(%d): cluster has %d nodes (0-based index)", i, len(c.nodes))
	}
	return c.nodes[i]
}

// Nodes returns all nodes.
func (c *Cluster) Nodes() []*Node { return append([]*Node(nil), c.nodes...) }

// NodeByName returns the node called name, or nil.
func (c *Cluster) NodeByName(name string) *Node {
	for _, n := range c.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Outside is the external client namespace (OutsideIPv4), behind the router.
func (c *Cluster) Outside() *Host { return c.outside }

// Router is the router/sink namespace (nodes' default gateway).
func (c *Cluster) Router() *NetNS { return c.router }

// ControlPlane is the namespace running etcd and the apiserver.
func (c *Cluster) ControlPlane() *NetNS { return c.cp }

// Binary returns the path of a harness-built binary ("kube-proxy", "echo",
// "etcd", …).
func (c *Cluster) Binary(name string) string { return c.bins[name] }

// startProcess starts a process whose log goes to LogDir and which teardown
// stops.
func (c *Cluster) startProcess(spec ProcessSpec) (*Process, error) {
	spec.LogDir = c.LogDir
	p, err := startProcess(spec)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	c.Log.Info("process started", zap.String("name", p.Name), zap.Int("pid", p.Pid()), zap.String("netns", spec.NS.Name), zap.String("log", p.LogPath))
	return p, nil
}

// teardown stops everything in reverse order of creation and removes every
// namespace. On failure it prints the tail of every process log first.
func (c *Cluster) teardown() {
	if c.t.Failed() || panicking() || os.Getenv("E2E_DUMP_LOGS") != "" {
		c.dumpLogs(40)
	}
	c.mu.Lock()
	pods := make([]*Pod, 0, len(c.pods))
	for _, p := range c.pods {
		pods = append(pods, p)
	}
	procs := append([]*Process(nil), c.procs...)
	nss := append([]*NetNS(nil), c.namespaces...)
	c.mu.Unlock()
	for _, p := range pods {
		p.teardownLocal()
	}
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(5 * time.Second); err != nil {
			c.t.Logf("e2e teardown: %v", err)
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		nss[i].destroy()
	}
	if names, err := listNetNS(); err == nil {
		var left []string
		for _, n := range names {
			if strings.HasPrefix(n, c.netnsName("")) {
				left = append(left, n)
			}
		}
		if len(left) > 0 {
			c.t.Errorf("e2e teardown: namespaces left behind: %v", left)
		}
	}
	c.Log.Info("cluster torn down", zap.String("logs", c.LogDir))
}

// dumpLogs prints the last n lines of every process log to the test log.
func (c *Cluster) dumpLogs(n int) {
	c.mu.Lock()
	procs := append([]*Process(nil), c.procs...)
	c.mu.Unlock()
	for _, p := range procs {
		c.t.Logf("==== last %d lines of %s (%s):\n%s", n, p.Name, p.LogPath, p.Tail(n))
	}
}

// DumpLogs prints the last n lines of every process log (teardown does this
// by itself when the test failed).
func (c *Cluster) DumpLogs(n int) { c.dumpLogs(n) }

// panicking reports whether the test function is unwinding from a panic.
// testing runs cleanups before it marks a panicked test failed, so Failed()
// is still false then; the panic frame on this goroutine's stack is the only
// sign.
func panicking() bool {
	return strings.Contains(string(debug.Stack()), "\npanic(")
}

func randHex(nBytes int) string {
	b := make([]byte, nBytes)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
