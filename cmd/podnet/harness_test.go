package main

// Test harness: the plugin binary, "nodes" (network namespaces the tests
// create), pods (more namespaces), and libcni driving the binary exactly as
// a container runtime does.
//
// House rule: the plugin never runs in the test process's own network
// namespace. Every libcni call goes through testNode.do, which switches the
// calling OS thread into the node's namespace (the plugin child inherits it)
// and refuses to run if the switch did not happen.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

var (
	// pluginDir holds the podnet binary built by TestMain.
	pluginDir string
	// testNetNS is the test process's own netns (never to be touched).
	testNetNS string
)

func TestMain(m *testing.M) {
	testNetNS, _ = os.Readlink("/proc/self/ns/net")
	dir, err := os.MkdirTemp("", "podnet-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(goBin, "build", "-o", filepath.Join(dir, "podnet"), ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building podnet: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	pluginDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// opTimeout bounds one plugin call so a hang fails the test (and its
// cleanups delete the namespaces) instead of killing the whole binary.
const opTimeout = 60 * time.Second

type testNode struct {
	t       *testing.T
	ns      *netns.NS
	dataDir string
	cni     *libcni.CNIConfig
}

// newTestNode creates a node namespace with forwarding on (the node's job,
// not the plugin's), a private IPAM data dir and a private libcni cache.
func newTestNode(t *testing.T, prefix string) *testNode {
	t.Helper()
	n := netns.New(t, prefix)
	if err := n.Do(func() error {
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("enabling forwarding in %s: %v", n.Name, err)
	}
	return &testNode{
		t:       t,
		ns:      n,
		dataDir: t.TempDir(),
		cni:     libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, t.TempDir(), nil),
	}
}

// do runs fn on a thread inside the node's netns.
func (n *testNode) do(fn func() error) error {
	return n.ns.Do(func() error {
		cur, err := os.Readlink("/proc/thread-self/ns/net")
		if err != nil {
			return err
		}
		if cur == testNetNS {
			return errors.New("refusing to run the plugin in the test's own network namespace")
		}
		return fn()
	})
}

// conflist builds a conflist with the node's data dir; plugin holds the
// plugin's keys besides type and dataDir.
func (n *testNode) conflist(cniVersion string, plugin map[string]any) *libcni.NetworkConfigList {
	n.t.Helper()
	p := map[string]any{"type": "podnet", "dataDir": n.dataDir}
	for k, v := range plugin {
		p[k] = v
	}
	raw, _ := json.Marshal(map[string]any{"cniVersion": cniVersion, "name": "podnet", "plugins": []any{p}})
	l, err := libcni.ConfListFromBytes(raw)
	if err != nil {
		n.t.Fatalf("conflist: %v", err)
	}
	return l
}

func rtConf(id string, podNS string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: podNS, IfName: "eth0"}
}

func (n *testNode) add(list *libcni.NetworkConfigList, id, podNS string) (types.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var res types.Result
	err := n.do(func() error {
		var err error
		res, err = n.cni.AddNetworkList(ctx, list, rtConf(id, podNS))
		return err
	})
	return res, err
}

// mustAdd adds and returns the result as the current version.
func (n *testNode) mustAdd(list *libcni.NetworkConfigList, id string, pod *netns.NS) *current.Result {
	n.t.Helper()
	res, err := n.add(list, id, pod.Path())
	if err != nil {
		n.t.Fatalf("ADD %s: %v", id, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		n.t.Fatal(err)
	}
	return r
}

func (n *testNode) del(list *libcni.NetworkConfigList, id, podNS string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return n.do(func() error { return n.cni.DelNetworkList(ctx, list, rtConf(id, podNS)) })
}

func (n *testNode) check(list *libcni.NetworkConfigList, id, podNS string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return n.do(func() error { return n.cni.CheckNetworkList(ctx, list, rtConf(id, podNS)) })
}

func (n *testNode) status(list *libcni.NetworkConfigList) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return n.do(func() error { return n.cni.GetStatusNetworkList(ctx, list) })
}

// addressFiles lists the IPAM reservation files of network "podnet".
func (n *testNode) addressFiles() []string {
	entries, _ := os.ReadDir(filepath.Join(n.dataDir, "podnet"))
	var out []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

var hostVethRE = regexp.MustCompile(`\d+: (pn[0-9a-f]{12})@`)

// hostVeths lists podnet's node-side veths.
func (n *testNode) hostVeths() []string {
	var out []string
	for _, m := range hostVethRE.FindAllStringSubmatch(n.ns.MustExec("ip", "-o", "link", "show"), -1) {
		out = append(out, m[1])
	}
	return out
}

// assertClean checks that no address, reservation file or veth is left and
// that the pods have no eth0.
func (n *testNode) assertClean(pods ...*netns.NS) {
	n.t.Helper()
	if f := n.addressFiles(); len(f) > 0 {
		n.t.Errorf("reservation files left: %v", f)
	}
	if v := n.hostVeths(); len(v) > 0 {
		n.t.Errorf("node-side veths left: %v", v)
	}
	for _, p := range pods {
		if out, err := p.Exec("ip", "link", "show", "eth0"); err == nil {
			n.t.Errorf("pod %s still has eth0:\n%s", p.Name, out)
		}
	}
}

// cniCode returns the CNI error code of err (0 if not a CNI error).
func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// listen starts a TCP server inside the namespace at path: each connection
// is answered with the remote address the server saw, then closed.
func listen(t *testing.T, path string, addr netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	if err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, path, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			c.Close()
		}
	}()
}

// dial connects from the namespace at path to addr and returns the source
// address the server reported.
func dial(path string, addr netip.AddrPort) (netip.Addr, error) {
	var got string
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		d := net.Dialer{Timeout: 10 * time.Second}
		c, err := d.Dial("tcp", addr.String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		got, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	if err != nil {
		return netip.Addr{}, err
	}
	ap, err := netip.ParseAddrPort(strings.TrimSpace(got))
	if err != nil {
		return netip.Addr{}, err
	}
	return ap.Addr().Unmap(), nil
}

// mustReach asserts a TCP connection from pod path to addr works and the
// server sees wantSrc as source.
func mustReach(t *testing.T, from string, to netip.AddrPort, wantSrc netip.Addr) {
	t.Helper()
	src, err := dial(from, to)
	if err != nil {
		t.Fatalf("connect from %s to %s: %v", from, to, err)
	}
	if wantSrc.IsValid() && src != wantSrc {
		t.Fatalf("connect from %s to %s: server saw source %s, want %s", from, to, src, wantSrc)
	}
}

// podAddr returns the result's address of the given family.
func podAddr(t *testing.T, r *current.Result, v6 bool) netip.Addr {
	t.Helper()
	for _, ip := range r.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		a = a.Unmap()
		if a.Is6() == v6 {
			return a
		}
	}
	t.Fatalf("result has no %s address: %v", map[bool]string{false: "IPv4", true: "IPv6"}[v6], r.IPs)
	return netip.Addr{}
}
