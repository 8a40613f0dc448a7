package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/kpr-proxy/kpr/internal/cni/wire"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func apOf(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// Two pods on one node reach each other (no NAT) and their gateway; the
// wiring looks as documented (bridge, hairpin, MTU, gateway, bridge-nf).
func TestTwoPodsOneNode(t *testing.T) {
	node := newTestNode(t, "pnc-node")
	// The minimal conflist of the docs, plus a private data dir.
	list := node.conflist("1.0.0", map[string]any{"subnet": "198.18.1.0/24"})
	podA, podB := netns.New(t, "pnc-pod"), netns.New(t, "pnc-pod")
	ra := node.mustAdd(list, "ctr-a", podA)
	rb := node.mustAdd(list, "ctr-b", podB)

	if got := fmt.Sprint(ra.IPs[0].Address.String(), " gw ", ra.IPs[0].Gateway); got != "198.18.1.2/24 gw 198.18.1.1" {
		t.Errorf("pod A: %s", got)
	}
	if len(ra.Interfaces) != 3 || ra.Interfaces[0].Name != "cbr0" || ra.Interfaces[1].Name != wire.HostVethName("ctr-a", "eth0") ||
		ra.Interfaces[2].Name != "eth0" || ra.Interfaces[2].Sandbox != podA.Path() || *ra.IPs[0].Interface != 2 {
		t.Errorf("pod A interfaces: %v", ra)
	}
	if len(ra.Routes) != 1 || ra.Routes[0].String() != "{Dst:{IP:0.0.0.0 Mask:00000000} GW:198.18.1.1 MTU:0 AdvMSS:0 Priority:0 Table:<nil> Scope:<nil>}" {
		t.Errorf("pod A routes: %v", ra.Routes)
	}
	a, b := podAddr(t, ra, false), podAddr(t, rb, false)
	if a == b {
		t.Fatalf("both pods got %s", a)
	}

	listen(t, podB.Path(), apOf(b, 8080))
	mustReach(t, podA.Path(), apOf(b, 8080), a)
	listen(t, node.ns.Path(), ap("198.18.1.1:8081"))
	mustReach(t, podA.Path(), ap("198.18.1.1:8081"), a)
	mustReach(t, podB.Path(), ap("198.18.1.1:8081"), b)

	br := node.ns.MustExec("ip", "-d", "addr", "show", "cbr0")
	for _, want := range []string{"bridge", "198.18.1.1/24", "mtu 1500"} {
		if !strings.Contains(br, want) {
			t.Errorf("cbr0 lacks %q:\n%s", want, br)
		}
	}
	hv := node.ns.MustExec("ip", "-d", "link", "show", wire.HostVethName("ctr-a", "eth0"))
	for _, want := range []string{"master cbr0", "hairpin on", "mtu 1500"} {
		if !strings.Contains(hv, want) {
			t.Errorf("node-side veth lacks %q:\n%s", want, hv)
		}
	}
	if out := podA.MustExec("ip", "route", "show"); !strings.Contains(out, "default via 198.18.1.1 dev eth0") {
		t.Errorf("pod A routes:\n%s", out)
	}
	if out := node.ns.MustExec("cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"); strings.TrimSpace(out) != "1" {
		t.Errorf("bridge-nf-call-iptables = %s", out)
	}

	for _, c := range []struct {
		id  string
		pod *netns.NS
	}{{"ctr-a", podA}, {"ctr-b", podB}} {
		if err := node.del(list, c.id, c.pod.Path()); err != nil {
			t.Fatalf("DEL %s: %v", c.id, err)
		}
	}
	node.assertClean(podA, podB)
}

// The result follows the requested spec version.
func TestResultVersions(t *testing.T) {
	node := newTestNode(t, "pnc-node")
	pod := netns.New(t, "pnc-pod")
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		list := node.conflist(v, map[string]any{"subnet": "198.18.1.0/24"})
		res, err := node.add(list, "ctr-v", pod.Path())
		if err != nil {
			t.Fatalf("ADD with cniVersion %s: %v", v, err)
		}
		if res.Version() != v {
			t.Errorf("cniVersion %s: result version %s", v, res.Version())
		}
		if err := node.del(list, "ctr-v", pod.Path()); err != nil {
			t.Fatalf("DEL %s: %v", v, err)
		}
	}
	node.assertClean(pod)
}

// CHECK passes on a healthy pod and names what is wrong after someone
// deletes the pod's default route; DEL twice succeeds.
func TestCheckAndDelTwice(t *testing.T) {
	node := newTestNode(t, "pnc-node")
	list := node.conflist("1.0.0", map[string]any{"subnet": "198.18.1.0/24"})
	pod := netns.New(t, "pnc-pod")
	node.mustAdd(list, "ctr-c", pod)
	if err := node.check(list, "ctr-c", pod.Path()); err != nil {
		t.Fatalf("CHECK of a fresh pod: %v", err)
	}
	pod.MustExec("ip", "route", "del", "default")
	err := node.check(list, "ctr-c", pod.Path())
	if err == nil || !strings.Contains(err.Error(), "pod route 0.0.0.0/0 via 198.18.1.1 is missing") {
		t.Fatalf("CHECK after deleting the route: %v", err)
	}
	// More differences are all reported.
	node.ns.MustExec("ip", "link", "set", wire.HostVethName("ctr-c", "eth0"), "type", "bridge_slave", "hairpin", "off")
	err = node.check(list, "ctr-c", pod.Path())
	if err == nil || !strings.Contains(err.Error(), "2 problem(s)") || !strings.Contains(err.Error(), "hairpin mode is off") {
		t.Fatalf("CHECK with two problems: %v", err)
	}

	for i := 0; i < 2; i++ {
		if err := node.del(list, "ctr-c", pod.Path()); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	node.assertClean(pod)
}

// DEL is idempotent: missing netns, empty netns, unknown container.
func TestDelIdempotent(t *testing.T) {
	node := newTestNode(t, "pnc-node")
	list := node.conflist("1.0.0", map[string]any{"subnet": "198.18.1.0/24"})
	pod := netns.New(t, "pnc-pod")
	node.mustAdd(list, "ctr-d", pod)
	path := pod.Path()
	pod.Delete() // the runtime tore the sandbox down before DEL
	if err := node.del(list, "ctr-d", path); err != nil {
		t.Fatalf("DEL with a vanished netns: %v", err)
	}
	if err := node.del(list, "ctr-d", ""); err != nil {
		t.Fatalf("DEL without netns: %v", err)
	}
	if err := node.del(list, "never-added", "/run/netns/pnc-does-not-exist"); err != nil {
		t.Fatalf("DEL of an unknown container: %v", err)
	}
	node.assertClean()
}

// The same container ID and interface get the same address back, e.g.
// when a runtime re-creates a sandbox without DEL.
func TestSameContainerSameAddress(t *testing.T) {
	node := newTestNode(t, "pnc-node")
	list := node.conflist("1.0.0", map[string]any{"subnet": "198.18.1.0/24"})
	pod1 := netns.New(t, "pnc-pod")
	first := podAddr(t, node.mustAdd(list, "ctr-s", pod1), false)
	node.mustAdd(list, "ctr-other", netns.New(t, "pnc-pod"))
	pod1.Delete()
	pod2 := netns.New(t, "pnc-pod")
	if again := podAddr(t, node.mustAdd(list, "ctr-s", pod2), false); again != first {
		t.Fatalf("re-ADD of the same container got %s, first time %s", again, first)
	}
	// A second ADD into a netns that still has the interface fails, and
	// must not release the address the pod uses.
	if _, err := node.add(list, "ctr-s", pod2.Path()); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("ADD twice: %v", err)
	}
	if f := node.addressFiles(); len(f) != 2 {
		t.Fatalf("reservations after failed duplicate ADD: %v", f)
	}
	if err := node.check(list, "ctr-s", pod2.Path()); err != nil {
		t.Fatalf("pod broken by failed duplicate ADD: %v", err)
	}
}

// 200 ADD/DEL cycles leave no address, file or veth behind.
func TestAddDelCycles(t *testing.T) {
	node := newTestNode(t, "pnc-node")
	list := node.conflist("1.0.0", map[string]any{"subnet": "198.18.1.0/24"})
	pod := netns.New(t, "pnc-pod")
	seen := map[netip.Addr]bool{}
	for i := 0; i < 200; i++ {
		id := fmt.Sprintf("cycle-%03d", i)
		seen[podAddr(t, node.mustAdd(list, id, pod), false)] = true
		if err := node.del(list, id, pod.Path()); err != nil {
			t.Fatalf("DEL %s: %v", id, err)
		}
	}
	// Round-robin allocation walked the pool instead of reusing one address.
	if len(seen) < 200 {
		t.Errorf("200 cycles used only %d distinct addresses", len(seen))
	}
	node.assertClean(pod)
	entries, _ := os.ReadDir(filepath.Join(node.dataDir, "podnet"))
	for _, e := range entries {
		if n := e.Name(); n != "lock" && !strings.HasPrefix(n, "last_reserved.") {
			t.Errorf("unexpected file in data dir: %s", n)
		}
	}
}

// 20 parallel ADDs (20 plugin processes) get 20 distinct addresses.
func TestParallelAdds(t *testing.T) {
	node := newTestNode(t, "pnc-node")
	list := node.conflist("1.0.0", map[string]any{"subnet": "198.18.1.0/24"})
	const n = 20
	pods := make([]*netns.NS, n)
	for i := range pods {
		pods[i] = netns.New(t, "pnc-pod")
	}
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := node.add(list, fmt.Sprintf("par-%02d", i), pods[i].Path())
			if err != nil {
				errs[i] = err
				return
			}
			r, err := current.NewResultFromResult(res)
			if err != nil {
				errs[i] = err
				return
			}
			a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
			addrs[i] = a.Unmap()
		}(i)
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		if j, dup := seen[addrs[i]]; dup {
			t.Fatalf("pods %d and %d both got %s", j, i, addrs[i])
		}
		seen[addrs[i]] = i
	}
	if f := node.addressFiles(); len(f) != n {
		t.Fatalf("%d reservation files, want %d", len(f), n)
	}
	// Every pod is wired: the last one reaches the first.
	listen(t, pods[0].Path(), apOf(addrs[0], 8080))
	mustReach(t, pods[n-1].Path(), apOf(addrs[0], 8080), addrs[n-1])

	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = node.del(list, fmt.Sprintf("par-%02d", i), pods[i].Path())
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL %d: %v", i, err)
		}
	}
	node.assertClean(pods...)
}

// Bad input gets the right CNI error code, a message that names the
// problem, and leaves nothing behind.
func TestBadInput(t *testing.T) {
	node := newTestNode(t, "pnc-node")
	pod := netns.New(t, "pnc-pod")
	good := map[string]any{"subnet": "198.18.1.0/24"}
	with := func(k string, v any) map[string]any {
		m := map[string]any{"subnet": "198.18.1.0/24"}
		m[k] = v
		return m
	}
	for _, tc := range []struct {
		name   string
		plugin map[string]any
		netns  string
		code   uint
		msg    string
	}{
		{"subnet does not parse", with("subnet", "198.18.1.0/33"), pod.Path(), types.ErrInvalidNetworkConfig, `subnet "198.18.1.0/33": does not parse`},
		{"subnet not a cidr", with("subnet", "pods"), pod.Path(), types.ErrInvalidNetworkConfig, `subnet "pods"`},
		{"gateway outside subnet", with("gateway", "198.18.9.1"), pod.Path(), types.ErrInvalidNetworkConfig, "gateway 198.18.9.1 is outside subnet 198.18.1.0/24"},
		{"key of wrong type", with("mtu", "big"), pod.Path(), types.ErrDecodingFailure, "mtu"},
		{"unknown key", with("bridg", "cbr1"), pod.Path(), types.ErrInvalidNetworkConfig, `unknown key(s) "bridg"`},
		{"ipMasq without clusterCIDR", with("ipMasq", true), pod.Path(), types.ErrInvalidNetworkConfig, "ipMasq needs a clusterCIDR"},
		{"netns path missing", good, "/run/netns/pnc-does-not-exist", types.ErrInvalidEnvironmentVariables, `CNI_NETNS "/run/netns/pnc-does-not-exist" does not exist`},
		{"netns not a netns", good, node.dataDir, types.ErrInvalidEnvironmentVariables, "is not a network namespace"},
		{"netns empty", good, "", types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"netns is the node", good, node.ns.Path(), types.ErrInvalidEnvironmentVariables, "node's own network namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			list := node.conflist("1.0.0", tc.plugin)
			_, err := node.add(list, "bad-"+strings.ReplaceAll(tc.name, " ", "-"), tc.netns)
			if err == nil {
				t.Fatal("ADD succeeded")
			}
			if cniCode(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error code %d %q; want code %d mentioning %q", cniCode(err), err, tc.code, tc.msg)
			}
			node.assertClean(pod)
		})
	}

	t.Run("not json", func(t *testing.T) {
		// libcni would refuse this conflist itself; feed the plugin directly
		// as a runtime's exec does.
		err := node.do(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			_, err := invoke.ExecPluginWithResult(ctx, filepath.Join(pluginDir, "podnet"), []byte(`{"cniVersion":"1.0.0","name":`),
				&invoke.Args{Command: "ADD", ContainerID: "bad-json", NetNS: pod.Path(), IfName: "eth0", Path: pluginDir}, nil)
			return err
		})
		if cniCode(err) != types.ErrDecodingFailure {
			t.Fatalf("error %v (code %d), want code %d", err, cniCode(err), types.ErrDecodingFailure)
		}
		node.assertClean(pod)
	})

	t.Run("bridge name taken by a non-bridge", func(t *testing.T) {
		node.ns.MustExec("ip", "link", "add", "cbrx", "type", "veth", "peer", "name", "cbrx-peer")
		defer node.ns.Exec("ip", "link", "del", "cbrx")
		_, err := node.add(node.conflist("1.0.0", with("bridge", "cbrx")), "bad-bridge", pod.Path())
		if err == nil || !strings.Contains(err.Error(), "cbrx exists but is a veth, not a bridge") {
			t.Fatalf("err = %v", err)
		}
		node.assertClean(pod)
	})

	t.Run("failure after wiring started is undone", func(t *testing.T) {
		// The pod netns already has a default route, so ADD fails at its
		// last step: address, veth and pod interface must all go again.
		bad := netns.New(t, "pnc-pod")
		bad.MustExec("ip", "link", "add", "x0", "type", "veth", "peer", "name", "x1")
		bad.MustExec("ip", "link", "set", "x0", "up")
		bad.MustExec("ip", "route", "add", "default", "dev", "x0")
		_, err := node.add(node.conflist("1.0.0", good), "bad-late", bad.Path())
		if err == nil || !strings.Contains(err.Error(), "already has a default IPv4 route") {
			t.Fatalf("err = %v", err)
		}
		node.assertClean(bad)
	})

	t.Run("exhaustion", func(t *testing.T) {
		// A /29 has 5 addresses for pods (.2-.6; .1 is the gateway).
		list := node.conflist("1.0.0", map[string]any{"subnet": "198.18.3.0/29", "bridge": "cbr3"})
		var pods []*netns.NS
		for i := 0; i < 5; i++ {
			p := netns.New(t, "pnc-pod")
			pods = append(pods, p)
			node.mustAdd(list, fmt.Sprintf("full-%d", i), p)
		}
		extra := netns.New(t, "pnc-pod")
		_, err := node.add(list, "full-extra", extra.Path())
		if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "no free address in pod subnet 198.18.3.0/29: all 5 usable addresses are allocated") {
			t.Fatalf("6th ADD: code %d, %v", cniCode(err), err)
		}
		if out, err := extra.Exec("ip", "link", "show", "eth0"); err == nil {
			t.Fatalf("failed ADD left eth0:\n%s", out)
		}
		if len(node.hostVeths()) != 5 || len(node.addressFiles()) != 5 {
			t.Fatalf("after failed ADD: veths %v, files %v", node.hostVeths(), node.addressFiles())
		}
		for i, p := range pods {
			if err := node.del(list, fmt.Sprintf("full-%d", i), p.Path()); err != nil {
				t.Fatal(err)
			}
		}
		node.assertClean(pods...)
	})
}

// STATUS (spec 1.1) says whether an ADD can succeed; GC frees addresses of
// attachments the runtime no longer has.
func TestStatusAndGC(t *testing.T) {
	node := newTestNode(t, "pnc-node")
	list := node.conflist("1.1.0", map[string]any{"subnet": "198.18.4.0/30"})
	if err := node.status(list); err != nil {
		t.Fatalf("STATUS of an empty node: %v", err)
	}
	pod := netns.New(t, "pnc-pod")
	node.mustAdd(list, "only-one", pod) // a /30 holds one pod
	err := node.status(list)
	if cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "198.18.4.0/30 is exhausted") {
		t.Fatalf("STATUS of a full node: code %d, %v", cniCode(err), err)
	}
	bad := node.conflist("1.1.0", map[string]any{"subnet": "nope"})
	if err := node.status(bad); cniCode(err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("STATUS with a bad config: code %d, %v", cniCode(err), err)
	}

	// A reservation whose owner the runtime does not know (a crashed node's
	// leftover) is freed by GC; the live pod keeps its address.
	list = node.conflist("1.1.0", map[string]any{"subnet": "198.18.1.0/24"})
	pod2 := netns.New(t, "pnc-pod")
	keep := podAddr(t, node.mustAdd(list, "live", pod2), false)
	ghost := filepath.Join(node.dataDir, "podnet", "198.18.1.200")
	if err := os.WriteFile(ghost, []byte("ghost\neth0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	valid := []types.GCAttachment{{ContainerID: "live", IfName: "eth0"}, {ContainerID: "only-one", IfName: "eth0"}}
	if err := node.do(func() error { return node.cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid}) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if _, err := os.Stat(ghost); !os.IsNotExist(err) {
		t.Fatalf("GC left the stale reservation: %v", err)
	}
	if _, err := os.Stat(filepath.Join(node.dataDir, "podnet", keep.String())); err != nil {
		t.Fatalf("GC removed the live pod's reservation: %v", err)
	}
}

// IPv6-only and dual-stack pods reach each other and the gateway.
func TestIPv6AndDualStack(t *testing.T) {
	for _, tc := range []struct {
		name   string
		plugin map[string]any
		v4, v6 bool
	}{
		{"ipv6", map[string]any{"subnet": "2001:db8:10:1::/64"}, false, true},
		{"dual-stack", map[string]any{"ranges": []map[string]string{{"subnet": "198.18.1.0/24"}, {"subnet": "2001:db8:10:1::/64"}}}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := newTestNode(t, "pnc-node")
			list := node.conflist("1.0.0", tc.plugin)
			podA, podB := netns.New(t, "pnc-pod"), netns.New(t, "pnc-pod")
			ra := node.mustAdd(list, "ctr-a", podA)
			rb := node.mustAdd(list, "ctr-b", podB)
			wantIPs := 0
			for _, fam := range []struct {
				on  bool
				v6  bool
				gw  string
				dst string
			}{{tc.v4, false, "198.18.1.1", "0.0.0.0/0"}, {tc.v6, true, "2001:db8:10:1::1", "::/0"}} {
				if !fam.on {
					continue
				}
				wantIPs++
				a, b := podAddr(t, ra, fam.v6), podAddr(t, rb, fam.v6)
				listen(t, podB.Path(), apOf(b, 8080))
				mustReach(t, podA.Path(), apOf(b, 8080), a)
				gw := netip.MustParseAddr(fam.gw)
				listen(t, node.ns.Path(), apOf(gw, 8081))
				mustReach(t, podA.Path(), apOf(gw, 8081), a)
				found := false
				for _, r := range ra.Routes {
					found = found || (r.Dst.String() == fam.dst && r.GW.String() == fam.gw)
				}
				if !found {
					t.Errorf("no route %s via %s in result %v", fam.dst, fam.gw, ra.Routes)
				}
			}
			if len(ra.IPs) != wantIPs {
				t.Errorf("result IPs %v, want %d", ra.IPs, wantIPs)
			}
			if err := node.check(list, "ctr-a", podA.Path()); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			for _, c := range []struct {
				id  string
				pod *netns.NS
			}{{"ctr-a", podA}, {"ctr-b", podB}} {
				if err := node.del(list, c.id, c.pod.Path()); err != nil {
					t.Fatal(err)
				}
			}
			node.assertClean(podA, podB)
		})
	}
}

// ipMasq: traffic leaving the cluster CIDR leaves with the node's address;
// pod-to-pod traffic keeps the pod's.
func TestIPMasq(t *testing.T) {
	netns.RequireTool(t, "iptables")
	node := newTestNode(t, "pnc-node")
	ext := netns.New(t, "pnc-ext")
	netns.Veth(t, node.ns, "eth0", ext, "eth0")
	node.ns.MustExec("ip", "addr", "add", "198.51.100.1/24", "dev", "eth0")
	ext.MustExec("ip", "addr", "add", "198.51.100.10/24", "dev", "eth0")
	// ext has no route to the pod subnet: replies only come back if the
	// pod's source was rewritten to the node's address.

	list := node.conflist("1.0.0", map[string]any{"subnet": "198.18.1.0/24", "ipMasq": true, "clusterCIDR": "198.18.0.0/16"})
	podA, podB := netns.New(t, "pnc-pod"), netns.New(t, "pnc-pod")
	a := podAddr(t, node.mustAdd(list, "ctr-a", podA), false)
	b := podAddr(t, node.mustAdd(list, "ctr-b", podB), false)

	listen(t, ext.Path(), ap("198.51.100.10:8080"))
	mustReach(t, podA.Path(), ap("198.51.100.10:8080"), netip.MustParseAddr("198.51.100.1"))
	listen(t, podB.Path(), apOf(b, 8080))
	mustReach(t, podA.Path(), apOf(b, 8080), a)

	save := node.ns.MustExec("iptables-save", "-t", "nat")
	if strings.Count(save, "-j PODNET-MASQ") != 1 || !strings.Contains(save, "-A PODNET-MASQ -d 198.18.0.0/16") {
		t.Fatalf("nat table:\n%s", save)
	}
	for _, id := range []string{"ctr-a", "ctr-b"} {
		pod := map[string]*netns.NS{"ctr-a": podA, "ctr-b": podB}[id]
		if err := node.del(list, id, pod.Path()); err != nil {
			t.Fatal(err)
		}
	}
	node.assertClean(podA, podB)
}

// Subcommand dispatch of the real binary.
func TestSubcommands(t *testing.T) {
	bin := filepath.Join(pluginDir, "podnet")
	run := func(args ...string) (string, int) {
		cmd := exec.Command(bin, args...)
		for _, e := range os.Environ() {
			if !strings.HasPrefix(e, "CNI_") {
				cmd.Env = append(cmd.Env, e)
			}
		}
		out, err := cmd.CombinedOutput()
		code := 0
		if err != nil {
			code = cmd.ProcessState.ExitCode()
		}
		return string(out), code
	}
	if out, code := run("version"); code != 0 || !strings.Contains(out, "podnet CNI plugin") || !strings.Contains(out, "1.1.0") {
		t.Errorf("version: %d %s", code, out)
	}
	if out, code := run("frobnicate"); code != 2 || !strings.Contains(out, `unknown subcommand "frobnicate"`) {
		t.Errorf("unknown subcommand: %d %s", code, out)
	}
	if out, code := run("node", "--kubeconfig", "/nonexistent", "--node-name", "n1", "--install-binary=false", "--routes=false"); code != 1 || !strings.Contains(out, "/nonexistent") {
		t.Errorf("node with a bad kubeconfig: %d %s", code, out)
	}
	dir := t.TempDir()
	if out, code := run("install", "--cni-bin-dir", dir); code != 0 {
		t.Errorf("install: %d %s", code, out)
	}
	if st, err := os.Stat(filepath.Join(dir, "podnet")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("installed binary: %v %v", st, err)
	}
	// No CNI_COMMAND and no arguments: skel's "about" text.
	if out, code := run(); code != 0 || !strings.Contains(out, "CNI protocol versions supported: 0.3.1, 0.4.0, 1.0.0, 1.1.0") {
		t.Errorf("no arguments: %d %s", code, out)
	}
}
