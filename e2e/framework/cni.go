package framework

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"go.uber.org/zap"
)

// cniRuntime calls the CNI plugin as a container runtime does: libcni, with
// the plugin executed from a thread inside the node namespace (so the bridge
// and host-side veths land there), one cache dir per run. Each node has its
// own plugin dir and network config, as each real node does.
type cniRuntime struct {
	cfgs  map[string]*libcni.CNIConfig         // by node name
	lists map[string]*libcni.NetworkConfigList // by node name
}

// podnetBinary finds bin/podnet.
func (c *Cluster) podnetBinary(moduleDir string) string {
	if c.opts.PodnetBinary != "" {
		return c.opts.PodnetBinary
	}
	if p := os.Getenv("E2E_PODNET_BIN"); p != "" {
		return p
	}
	return filepath.Join(filepath.Dir(moduleDir), "bin", "podnet")
}

// pickCNI decides which plugin to use.
func (c *Cluster) pickCNI(moduleDir string) error {
	want := c.opts.CNI
	if want == CNIAuto {
		want = os.Getenv("E2E_CNI")
	}
	podnet, _ := filepath.Abs(c.podnetBinary(moduleDir))
	if want == CNIAuto {
		if isExecutable(podnet) {
			want = CNIPodnet
		} else {
			want = CNIReference
			c.t.Logf("e2e: %s not found (build it with `make build`); using the reference bridge+host-local CNI plugins and static node routes", podnet)
		}
	}
	switch want {
	case CNIPodnet:
		if !isExecutable(podnet) {
			return fmt.Errorf("CNI %q requested but %s is not an executable", want, podnet)
		}
		c.podnet = podnet
	case CNIReference:
	default:
		return fmt.Errorf("unknown CNI %q (want %q or %q)", want, CNIPodnet, CNIReference)
	}
	c.CNI = want
	c.cni = &cniRuntime{cfgs: map[string]*libcni.CNIConfig{}, lists: map[string]*libcni.NetworkConfigList{}}
	return nil
}

// nodeCNIDirs are a node's stand-ins for /opt/cni/bin, /etc/cni/net.d and
// the plugin's IPAM data dir (nodes share one filesystem here, so each gets
// its own).
func (c *Cluster) nodeCNIDirs(n *Node) (binDir, confDir, dataDir string) {
	base := filepath.Join(c.RunDir, "cni", n.Name)
	return filepath.Join(base, "bin"), filepath.Join(base, "net.d"), filepath.Join(base, "data")
}

// startPodNetwork sets up each node's pod network the way the plugin is
// deployed. podnet: `podnet node` (its DaemonSet's job) installs the plugin,
// writes the conflist from the Node's podCIDRs and keeps routes to the other
// nodes; the harness, as the runtime, loads that conflist. reference: the
// harness writes a bridge+host-local conflist and the routes itself.
func (c *Cluster) startPodNetwork(ctx context.Context) error {
	for _, n := range c.nodes {
		binDir, confDir, dataDir := c.nodeCNIDirs(n)
		for _, d := range []string{binDir, confDir, dataDir} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		c.cni.cfgs[n.Name] = libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(c.RunDir, "cni", "cache"), nil)
		if c.CNI == CNIPodnet && !c.opts.NoRoutesController {
			if err := c.startPodnetNode(n, binDir, confDir, dataDir); err != nil {
				return err
			}
			continue
		}
		links := map[string]string{"bridge": c.bins["cni-bridge"], "host-local": c.bins["cni-host-local"]}
		if c.CNI == CNIPodnet {
			links = map[string]string{"podnet": c.podnet}
		}
		for name, target := range links {
			if err := os.Symlink(target, filepath.Join(binDir, name)); err != nil {
				return err
			}
		}
		conf, err := c.cniConfig(n, dataDir)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(confDir, "10-e2e.conflist"), conf, 0o644); err != nil {
			return err
		}
	}
	// Load each node's conflist as a runtime would (podnet's appears once
	// `podnet node` has seen its Node).
	for _, n := range c.nodes {
		_, confDir, _ := c.nodeCNIDirs(n)
		var proc *Process
		if n.routes != nil {
			proc = n.routes
		} else {
			proc = c.apiserver // any live process: the wait just needs one
		}
		if err := c.waitProcess(ctx, proc, 30*time.Second, "CNI config in "+confDir, func(context.Context) error {
			files, err := libcni.ConfFiles(confDir, []string{".conflist"})
			if err != nil {
				return err
			}
			if len(files) == 0 {
				return fmt.Errorf("no .conflist yet")
			}
			sort.Strings(files) // runtimes take the first in lexical order
			list, err := libcni.NetworkConfFromFile(files[0])
			if err != nil {
				return fmt.Errorf("%s: %w", files[0], err)
			}
			c.cni.lists[n.Name] = list
			return nil
		}); err != nil {
			return err
		}
	}
	if c.CNI == CNIReference {
		return c.addStaticPodRoutes()
	}
	return nil
}

// startPodnetNode runs `podnet node` in n's namespace, as its DaemonSet
// would, with per-node directories.
func (c *Cluster) startPodnetNode(n *Node, binDir, confDir, dataDir string) error {
	kc := filepath.Join(c.RunDir, "podnet-node.kubeconfig")
	if _, err := os.Stat(kc); err != nil {
		if err := writeKubeconfig(kc, c.pki.CAPEM, c.pki.AdminToken, "kpr-e2e-admin"); err != nil {
			return err
		}
	}
	args := []string{
		c.podnet, "node",
		"--kubeconfig=" + kc,
		"--node-name=" + n.Name,
		"--cni-bin-dir=" + binDir,
		"--cni-conf-dir=" + confDir,
		"--data-dir=" + dataDir,
		"--cluster-cidr=" + ClusterCIDRFlag(),
		"--log-level=debug",
	}
	if c.opts.IPMasq {
		args = append(args, "--ip-masq")
	}
	p, err := c.startProcess(ProcessSpec{Name: "podnet-node-" + n.Name, NS: n.NetNS, Argv: args})
	if err != nil {
		return err
	}
	n.routes = p
	return nil
}

// cniConfig renders node n's conflist.
func (c *Cluster) cniConfig(n *Node, dataDir string) ([]byte, error) {
	var plugin map[string]any
	switch c.CNI {
	case CNIPodnet:
		plugin = map[string]any{
			"type":        "podnet",
			"bridge":      "cbr0",
			"ranges":      []map[string]string{{"subnet": n.PodCIDRv4.String()}, {"subnet": n.PodCIDRv6.String()}},
			"ipMasq":      c.opts.IPMasq,
			"clusterCIDR": ClusterCIDRFlag(),
			"dataDir":     dataDir,
		}
	case CNIReference:
		plugin = map[string]any{
			"type":        "bridge",
			"bridge":      "cbr0",
			"isGateway":   true,
			"ipMasq":      c.opts.IPMasq,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type": "host-local",
				"ranges": [][]map[string]string{
					{{"subnet": n.PodCIDRv4.String()}},
					{{"subnet": n.PodCIDRv6.String()}},
				},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}, {"dst": "::/0"}},
				"dataDir": dataDir,
			},
		}
	}
	return json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "e2e-" + c.CNI,
		"plugins":    []any{plugin},
	}, "", "  ")
}

// cniAdd attaches the pod namespace to node n and returns the pod's IPs.
func (c *Cluster) cniAdd(ctx context.Context, n *Node, rt *libcni.RuntimeConf) ([]netip.Addr, error) {
	list := c.cni.lists[n.Name]
	var res *types100.Result
	start := time.Now()
	err := n.Do(func() error {
		r, err := c.cni.cfgs[n.Name].AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("CNI ADD (%s) on %s: %w", c.CNI, n.Name, err)
	}
	var ips []netip.Addr
	for _, ipc := range res.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return nil, fmt.Errorf("CNI ADD returned bad IP %v", ipc.Address)
		}
		ips = append(ips, a.Unmap())
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("CNI ADD on %s returned no IPs: %s", n.Name, res)
	}
	c.Log.Debug("cni add", zap.String("node", n.Name), zap.String("netns", rt.NetNS), zap.Any("ips", ips), zap.Duration("took", time.Since(start)))
	return ips, nil
}

// cniDel detaches the pod namespace. Like a runtime, it is retried by the
// caller's teardown only once; DEL must be idempotent in the plugin.
func (c *Cluster) cniDel(ctx context.Context, n *Node, rt *libcni.RuntimeConf) error {
	list := c.cni.lists[n.Name]
	return n.Do(func() error { return c.cni.cfgs[n.Name].DelNetworkList(ctx, list, rt) })
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}
