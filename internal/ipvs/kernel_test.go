package ipvs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/ipvs/desired"
	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	ipvstest "github.com/kpr-proxy/kpr/internal/ipvs/testing"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/model/modeltest"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

// TestMain guards the house rule: the root namespace's iptables rules (both
// backends, both families), ip sets and addresses — read-only dumps — are
// the same before and after the run.
func TestMain(m *testing.M) {
	netns.GuardRoot(m, append(netns.IptablesSaves, netns.IPSetNames, netns.Addresses)...)
}

// xtIPVS reports whether iptables' ipvs match works in the namespace (it
// needs the ip_vs module, which this machine's kernel lacks).
func xtIPVS(n *netns.NS, tool string) bool {
	_, err := n.Exec(tool, "-t", "filter", "-A", "OUTPUT", "-m", "ipvs", "--vaddr", "203.0.113.1/32", "-j", "DROP")
	if err == nil {
		n.MustExec(tool, "-t", "filter", "-D", "OUTPUT", "-m", "ipvs", "--vaddr", "203.0.113.1/32", "-j", "DROP")
	}
	return err == nil
}

// TestKernelEverythingButIPVS runs the proxier against the real kernel in a
// namespace for everything this machine has: iptables (legacy and nft,
// IPv4 and IPv6) through the real runner, ip sets through the ipset tool,
// the link (a veth standing in for the dummy) and its addresses through
// netlink. Only the IPVS table is the fake (no IPVS here; the VM e2e covers
// it). It checks the kernel accepts the batches, holds what was wanted, a
// second sync changes nothing, and Cleanup leaves the namespace clean.
func TestKernelEverythingButIPVS(t *testing.T) {
	netns.RequireRoot(t)
	netns.RequireTool(t, "ipset")
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		for _, backend := range []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT} {
			t.Run(fmt.Sprintf("%s-%s", fam, backend), func(t *testing.T) {
				tool := map[model.Family]string{model.IPv4: "iptables", model.IPv6: "ip6tables"}[fam] + "-" + string(backend)
				netns.RequireTool(t, tool)
				netns.RequireTool(t, tool+"-save")
				netns.RequireTool(t, tool+"-restore")
				kernelRun(t, fam, backend, tool)
			})
		}
	}
}

func kernelRun(t *testing.T, fam model.Family, backend ipt.Backend, tool string) {
	n := netns.New(t, "kpr-ipvsk")
	n.MustExec("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	n.MustExec("ip", "addr", "add", "192.0.2.11/24", "dev", "eth0")
	n.MustExec("ip", "addr", "add", "2001:db8:1::11/64", "dev", "eth0", "nodad")
	n.MustExec("ip", "link", "set", "eth0", "up")
	log := zaptest.NewLogger(t)
	iptr, err := ipt.New(ipt.Config{Family: fam, Backend: backend, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	setr, err := ipset.NewRunner(ipset.Config{})
	if err != nil {
		t.Fatal(err)
	}
	links := &kernel.NetlinkLinks{NewLink: func(name string) netlink.Link { return kernel.VethLink(name, "kprpeer0") }}
	fake := ipvstest.NewFakeIPVS()
	cidr := netip.MustParsePrefix("198.18.0.0/16")
	lines := []string{
		"svc default/web TCP 198.19.192.10:80 nodePort=30080 affinity=600",
		"ep default/web 198.18.1.2:8080 ready local",
		"ep default/web 198.18.2.2:8080 ready node=node2",
		"svc kube-system/dns:dns UDP 198.19.192.53:53",
		"ep kube-system/dns:dns 198.18.2.5:53 ready node=node2",
		"svc default/sig SCTP 198.19.192.12:3868 nodePort=30868",
		"ep default/sig 198.18.2.6:3868 ready node=node2",
		"svc default/lb TCP 198.19.192.20:443 lb=203.0.113.20 lbRanges=192.0.2.0/24,0.0.0.0/0 externalIPs=203.0.113.7 etp=Local hc=32001 nodePort=30443",
		"ep default/lb 198.18.2.3:8443 ready node=node2",
	}
	if fam == model.IPv6 {
		cidr = netip.MustParsePrefix("2001:db8:10::/56")
		lines = []string{
			"svc default/web TCP [2001:db8:20::a]:80 nodePort=30080 affinity=600",
			"ep default/web [2001:db8:10:1::2]:8080 ready local",
			"svc default/dns UDP [2001:db8:20::53]:53",
			"ep default/dns [2001:db8:10:2::5]:53 ready node=node2",
			"svc default/lb TCP [2001:db8:20::20]:443 lb=2001:db8:30::5 lbRanges=2001:db8:1::/64,::/0 externalIPs=2001:db8:30::7 etp=Local hc=32001 nodePort=30443",
			"ep default/lb [2001:db8:10:2::3]:8443 ready node=node2",
		}
	}
	if xtIPVS(n, tool) {
		// Only with the ip_vs module: a source-ranged LB that leaves the
		// node out needs the ipvs match.
		if fam == model.IPv4 {
			lines = append(lines, "svc default/lb2 TCP 198.19.192.21:443 lb=203.0.113.21 lbRanges=198.51.100.0/24", "ep default/lb2 198.18.2.4:8443 ready")
		} else {
			lines = append(lines, "svc default/lb2 TCP [2001:db8:20::21]:443 lb=2001:db8:30::6 lbRanges=2001:db8:99::/64", "ep default/lb2 [2001:db8:10:2::4]:8443 ready")
		}
	} else {
		t.Log("no ipvs iptables match in this kernel: the node-access rule for source-ranged LBs is left to the VM e2e")
	}
	snap := modeltest.MustBuild(fam, nodeName, lines...)
	node := &model.Node{Name: nodeName, Addresses: []netip.Addr{nodeIP(fam)}}
	p, err := New(Config{
		Family: fam, IPVS: fake, IPSet: setr, IPT: iptr, Links: links, Sysctl: ipvstest.NewFakeSysctl(),
		Logger: log, MasqueradeBit: 14, DetectLocalMode: "ClusterCIDR", ClusterCIDRs: []netip.Prefix{cidr},
		SyncPeriod: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sync := func() Result {
		t.Helper()
		var res Result
		var serr error
		if err := n.Do(func() error { res, serr = p.Sync(ctx, snap, node); return nil }); err != nil {
			t.Fatal(err)
		}
		if serr != nil {
			t.Fatalf("sync: %v", serr)
		}
		return res
	}
	res := sync()
	want := desired.Render(snap, node, p.lastCfg)

	// Independent reads of the namespace.
	save := n.MustExec(tool + "-save")
	for _, j := range desired.Jumps() {
		if !strings.Contains(save, fmt.Sprintf("-A %s -m comment --comment \"kpr: %s\" -j %s", j.From, j.To, j.To)) {
			t.Errorf("jump %s -> %s missing:\n%s", j.From, j.To, save)
		}
	}
	for _, c := range append(append([]string{}, desired.NATChains...), desired.FilterChains...) {
		if !strings.Contains(save, ":"+c+" ") {
			t.Errorf("chain %s missing", c)
		}
	}
	if !strings.Contains(save, "--match-set "+desired.SetName(fam, desired.SetClusterIP)+" dst,dst") {
		t.Errorf("set rules missing:\n%s", save)
	}
	kernelSets, err := ipset.Parse([]byte(n.MustExec("ipset", "save")), nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, ws := range want.Sets {
		ks := kernelSets[name]
		if ks == nil || strings.Join(ks.Sorted(), " ") != strings.Join(ws.Sorted(), " ") {
			t.Errorf("set %s in the kernel: %v, want %v", name, ks, ws.Sorted())
		}
	}
	addrOut := n.MustExec("ip", "-o", "addr", "show", "dev", desired.DefaultLink)
	for _, a := range want.Bind {
		if !strings.Contains(addrOut, " "+a.String()+"/") {
			t.Errorf("address %s not on the link:\n%s", a, addrOut)
		}
	}
	if res.Changes.AddrsAdded != len(want.Bind) || res.Changes.SetEntriesAdded != want.Stats.SetEntries {
		t.Errorf("first sync changes %+v", res.Changes)
	}

	// A second sync changes nothing; a forced full one only rewrites the
	// (unchanged) rules.
	if res := sync(); res.Changes.Total() != 0 {
		t.Fatalf("second sync changed %+v", res.Changes)
	}
	p.ForceFullSync()
	if res := sync(); !res.Full || res.Changes.Total() != 1 || !res.Changes.RulesRestored {
		t.Fatalf("forced full sync: %+v", res)
	}
	if after := n.MustExec(tool + "-save"); netns.NormalizeSave([]byte(after)) != netns.NormalizeSave([]byte(save)) {
		t.Errorf("rules changed by a full sync of the same state")
	}

	// Cleanup leaves no trace in the namespace.
	var cerr error
	if err := n.Do(func() error {
		cerr = Cleanup(ctx, CleanupConfig{IPTs: []ipt.Interface{iptr}, IPSet: setr, IPVS: fake, Links: links, Logger: log})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if cerr != nil {
		t.Fatalf("cleanup: %v", cerr)
	}
	if s := n.MustExec(tool + "-save"); strings.Contains(s, "KPR-") {
		t.Errorf("rules left after cleanup:\n%s", s)
	}
	if s := strings.TrimSpace(n.MustExec("ipset", "list", "-n")); s != "" {
		t.Errorf("sets left after cleanup: %s", s)
	}
	if _, err := n.Exec("ip", "link", "show", desired.DefaultLink); err == nil {
		t.Error("link left after cleanup")
	}
	if d := fake.Dump(); d != "" {
		t.Errorf("virtual servers left:\n%s", d)
	}
}

// TestKernelFilterRulesWithPackets sends real TCP connections through the
// IPVS mode's filter rules in a namespace. With no IPVS in this kernel a
// virtual IP:port that the rules let through reaches a local listener
// instead of a real server, which is exactly what shows the rules' verdict:
//
//	client 198.51.100.10 ── node 198.51.100.1, 192.0.2.11, kpr-ipvs0 (VIPs)
//
// a Service port on a VIP passes, another port on a VIP is rejected
// (kubernetes issue 72236), a load balancer's source ranges drop clients
// outside them, and an ETP Local Service without local endpoints drops
// outside clients.
func TestKernelFilterRulesWithPackets(t *testing.T) {
	netns.RequireRoot(t)
	netns.RequireTool(t, "ipset")
	for _, backend := range []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT} {
		t.Run(string(backend), func(t *testing.T) {
			netns.RequireTool(t, "iptables-"+string(backend)+"-restore")
			node, client := netns.New(t, "kpr-ipvsn"), netns.New(t, "kpr-ipvsc")
			netns.Veth(t, node, "eth-out", client, "eth0")
			node.MustExec("ip", "addr", "add", "198.51.100.1/24", "dev", "eth-out")
			node.MustExec("ip", "addr", "add", "192.0.2.11/24", "dev", "eth-out")
			client.MustExec("ip", "addr", "add", "198.51.100.10/24", "dev", "eth0")
			for _, dst := range []string{"192.0.2.0/24", "198.19.192.0/18", "203.0.113.0/24"} {
				client.MustExec("ip", "route", "add", dst, "via", "198.51.100.1")
			}
			// Listeners on every port the test uses, on all addresses.
			for _, port := range []int{80, 2222, 8081, 8082, 8083} {
				listen(t, node, port)
			}
			log := zaptest.NewLogger(t)
			iptr, err := ipt.New(ipt.Config{Family: model.IPv4, Backend: backend, Logger: log})
			if err != nil {
				t.Fatal(err)
			}
			setr, err := ipset.NewRunner(ipset.Config{})
			if err != nil {
				t.Fatal(err)
			}
			p, err := New(Config{
				Family: model.IPv4, IPVS: ipvstest.NewFakeIPVS(), IPSet: setr, IPT: iptr, Sysctl: ipvstest.NewFakeSysctl(),
				Links:  &kernel.NetlinkLinks{NewLink: func(name string) netlink.Link { return kernel.VethLink(name, "kprpeer0") }},
				Logger: log, MasqueradeBit: 14, DetectLocalMode: "ClusterCIDR", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")},
			})
			if err != nil {
				t.Fatal(err)
			}
			snap := modeltest.MustBuild(model.IPv4, nodeName,
				"svc default/web TCP 198.19.192.10:80",
				"ep default/web 198.18.2.2:8080 ready node=node2",
				"svc default/in-range TCP 198.19.192.20:8081 lb=203.0.113.20 lbRanges=198.51.100.0/28,192.0.2.0/24",
				"ep default/in-range 198.18.2.3:8081 ready node=node2",
				"svc default/out-of-range TCP 198.19.192.21:8082 lb=203.0.113.21 lbRanges=192.0.2.0/24",
				"ep default/out-of-range 198.18.2.4:8082 ready node=node2",
				"svc default/local TCP 198.19.192.30:8083 lb=203.0.113.30 etp=Local",
				"ep default/local 198.18.2.5:8083 ready node=node2")
			nd := &model.Node{Name: nodeName, Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.11")}}
			var serr error
			if err := node.Do(func() error { _, serr = p.Sync(context.Background(), snap, nd); return nil }); err != nil || serr != nil {
				t.Fatalf("sync: %v %v", err, serr)
			}
			for _, c := range []struct {
				addr string
				want string // "ok", "refused", "dropped"
			}{
				{"198.19.192.10:80", "ok"},
				{"198.19.192.10:2222", "refused"},
				{"203.0.113.20:8081", "ok"},
				{"203.0.113.21:8082", "dropped"},
				{"203.0.113.30:8083", "dropped"},
				{"198.19.192.30:8083", "ok"}, // the cluster IP is not external traffic
				{"192.0.2.11:2222", "ok"},    // node addresses are not virtual IPs
			} {
				if got := connect(client, c.addr); got != c.want {
					t.Errorf("client -> %s: %s, want %s", c.addr, got, c.want)
				}
			}
		})
	}
}

func listen(t *testing.T, n *netns.NS, port int) {
	t.Helper()
	var l net.Listener
	if err := n.Do(func() error {
		var err error
		l, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "ok")
			c.Close()
		}
	}()
}

// connect dials from inside n: "ok" when the listener answered, "refused"
// on a reject, "dropped" when nothing answered within a second.
func connect(n *netns.NS, addr string) string {
	out := ""
	_ = n.Do(func() error {
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			out = "refused"
			return nil
		case err != nil:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				out = "dropped"
			} else {
				out = err.Error()
			}
			return nil
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			out = err.Error()
			return nil
		}
		out = strings.TrimSpace(line)
		return nil
	})
	return out
}
