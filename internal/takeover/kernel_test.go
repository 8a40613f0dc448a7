package takeover_test

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/takeover"
	takeovertest "github.com/kpr-proxy/kpr/internal/takeover/testing"
	"github.com/kpr-proxy/kpr/internal/testutil/netns"
)

// TestMain guards the house rule: the kernel tests work only inside their
// own namespaces, so the root namespace's iptables (both backends, both
// families), ipsets and nftables must be the same before and after.
func TestMain(m *testing.M) {
	netns.GuardRoot(m, append(netns.IptablesSaves, netns.IPSetNames, netns.NFTTables)...)
}

func normalizeSave(out []byte) string { return netns.NormalizeSave(out) }

func requireBackend(t *testing.T, f model.Family, b ipt.Backend) {
	t.Helper()
	for _, suffix := range []string{"", "-save", "-restore"} {
		netns.RequireTool(t, ipTool(f)+"-"+string(b)+suffix)
	}
}

// nsTables is takeover.Tables with every call made on a thread inside the
// namespace, so the binaries it runs program the namespace; tests reach the
// real implementation only through it.
type nsTables struct {
	t  *testing.T
	ns *netns.NS
	takeover.Tables
}

func (n *nsTables) in(fn func()) {
	if err := n.ns.Do(func() error { fn(); return nil }); err != nil {
		n.t.Fatalf("entering %s: %v", n.ns.Name, err)
	}
}

func (n *nsTables) SaveAll(ctx context.Context) (out []byte, err error) {
	n.in(func() { out, err = n.Tables.SaveAll(ctx) })
	return
}

func (n *nsTables) Restore(ctx context.Context, data []byte) (err error) {
	n.in(func() { err = n.Tables.Restore(ctx, data) })
	return
}

func (n *nsTables) ChainExists(t ipt.Table, c string) (ok bool, err error) {
	n.in(func() { ok, err = n.Tables.ChainExists(t, c) })
	return
}

// realTables opens every family/backend whose tools are installed, bound
// to ns.
func realTables(t *testing.T, ns *netns.NS) []takeover.Tables {
	t.Helper()
	var out []takeover.Tables
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		for _, b := range []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT} {
			// NewTables only runs `iptables --version` (no netfilter state).
			tb, err := takeover.NewTables(f, b, zaptest.NewLogger(t))
			if err != nil {
				t.Logf("%s-%s not installed: %v", ipTool(f), b, err)
				continue
			}
			out = append(out, &nsTables{t: t, ns: ns, Tables: tb})
		}
	}
	return out
}

// sameTables compares two saves table by table: legacy lists tables in
// kernel order, nft and the fake in another.
func sameTables(a, b string) bool {
	split := func(s string) []string {
		var out []string
		for _, t := range strings.Split(s, "COMMIT\n") {
			if strings.TrimSpace(t) != "" {
				out = append(out, t)
			}
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(split(a), split(b))
}

func restoreIn(t *testing.T, ns *netns.NS, f model.Family, b ipt.Backend, data []byte) {
	t.Helper()
	cmd := ns.Command(ipTool(f)+"-"+string(b)+"-restore", "--noflush")
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s-%s-restore in %s: %v\n%s", ipTool(f), b, ns.Name, err, out)
	}
}

func saveIn(t *testing.T, ns *netns.NS, f model.Family, b ipt.Backend) string {
	t.Helper()
	return normalizeSave([]byte(ns.MustExec(ipTool(f) + "-" + string(b) + "-save")))
}

// runIn runs the takeover on a thread inside ns (for the tools and netlink
// calls that are not wrapped in nsTables).
func runIn(t *testing.T, ns *netns.NS, tk *takeover.Takeover) takeover.Result {
	t.Helper()
	var res takeover.Result
	var err error
	if derr := ns.Do(func() error { res, err = tk.Run(context.Background()); return nil }); derr != nil {
		t.Fatal(derr)
	}
	if err != nil {
		t.Fatalf("takeover: %v", err)
	}
	return res
}

// TestKernelIPTablesTakeover loads kube-proxy's rules and kpr's into a
// namespace with the real tools and checks that the takeover leaves exactly
// what the fake predicts (the golden file), on both backends and families.
func TestKernelIPTablesTakeover(t *testing.T) {
	netns.RequireRoot(t)
	for _, tc := range []struct {
		fam     model.Family
		fixture string
		golden  string
	}{
		{model.IPv4, "kube-proxy-iptables-v4.save", "after-iptables-v4.golden"},
		{model.IPv6, "kube-proxy-iptables-v6.save", "after-iptables-v6.golden"},
	} {
		for _, b := range []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT} {
			t.Run(tc.fam.String()+"/"+string(b), func(t *testing.T) {
				requireBackend(t, tc.fam, b)
				ns := netns.New(t, "kpr-takeover")
				restoreIn(t, ns, tc.fam, b, fixture(t, tc.fixture))
				restoreIn(t, ns, tc.fam, b, []byte(kprState))
				tk := newTakeover(t, takeover.Config{Tables: realTables(t, ns)})
				res := runIn(t, ns, tk)
				if res.Chains == 0 || res.Jumps == 0 {
					t.Fatalf("nothing removed: %+v", res)
				}
				want, err := os.ReadFile("testdata/" + tc.golden)
				if err != nil {
					t.Fatal(err)
				}
				if got := saveIn(t, ns, tc.fam, b); !sameTables(got, string(want)) {
					t.Errorf("after the takeover the kernel holds:\n%s\nwant (testdata/%s):\n%s", got, tc.golden, want)
				}
				if present, where := tk.Present(context.Background()); present {
					t.Errorf("Present after the takeover: %s", where)
				}
				// kube-proxy comes back: Present sees it.
				restoreIn(t, ns, tc.fam, b, fixture(t, tc.fixture))
				if present, _ := tk.Present(context.Background()); !present {
					t.Errorf("Present missed kube-proxy's rules coming back")
				}
			})
		}
	}
}

// TestKernelOtherBackend: kube-proxy used the legacy backend (both
// families) while kubelet's hint and kpr are on nft. The takeover finds and
// cleans legacy, and leaves nft as it was.
func TestKernelOtherBackend(t *testing.T) {
	netns.RequireRoot(t)
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		requireBackend(t, f, ipt.BackendLegacy)
		requireBackend(t, f, ipt.BackendNFT)
	}
	ns := netns.New(t, "kpr-takeover")
	restoreIn(t, ns, model.IPv4, ipt.BackendLegacy, fixture(t, "kube-proxy-iptables-v4.save"))
	restoreIn(t, ns, model.IPv6, ipt.BackendLegacy, fixture(t, "kube-proxy-iptables-v6.save"))
	hint := []byte("*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n")
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		restoreIn(t, ns, f, ipt.BackendNFT, hint)
		restoreIn(t, ns, f, ipt.BackendNFT, []byte(kprState))
	}
	nftBefore := saveIn(t, ns, model.IPv4, ipt.BackendNFT) + saveIn(t, ns, model.IPv6, ipt.BackendNFT)
	tk := newTakeover(t, takeover.Config{Tables: realTables(t, ns)})
	res := runIn(t, ns, tk)
	if len(res.Plan.IPTables) != 2 {
		t.Errorf("plan covers %d family/backend pairs, want the 2 legacy ones", len(res.Plan.IPTables))
	}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		got := saveIn(t, ns, f, ipt.BackendLegacy)
		for _, line := range strings.Split(got, "\n") {
			if strings.Contains(line, "KUBE-") && !strings.Contains(line, "KUBE-FIREWALL") &&
				!strings.Contains(line, "KUBE-KUBELET-CANARY") && !strings.Contains(line, "KUBE-IPTABLES-HINT") {
				t.Errorf("%s legacy: kube-proxy left over: %s", f, line)
			}
		}
		if !strings.Contains(got, ":KUBE-IPTABLES-HINT") {
			t.Errorf("%s legacy: kubelet's hint chain removed", f)
		}
	}
	if got := saveIn(t, ns, model.IPv4, ipt.BackendNFT) + saveIn(t, ns, model.IPv6, ipt.BackendNFT); got != nftBefore {
		t.Errorf("nft changed:\n%s", got)
	}
}

// kubeProxyIPSets are the sets kube-proxy's ipvs mode creates (IPv4), with
// their types, as `ipset create` arguments.
var kubeProxyIPSets = [][]string{
	{"KUBE-LOOP-BACK", "hash:ip,port,ip"},
	{"KUBE-CLUSTER-IP", "hash:ip,port"},
	{"KUBE-EXTERNAL-IP", "hash:ip,port"},
	{"KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port"},
	{"KUBE-LOAD-BALANCER", "hash:ip,port"},
	{"KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port"},
	{"KUBE-LOAD-BALANCER-FW", "hash:ip,port"},
	{"KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip"},
	{"KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net"},
	{"KUBE-NODE-PORT-TCP", "bitmap:port", "range", "0-65535"},
	{"KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port", "range", "0-65535"},
	{"KUBE-NODE-PORT-UDP", "bitmap:port", "range", "0-65535"},
	{"KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port", "range", "0-65535"},
	{"KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port"},
	{"KUBE-NODE-PORT-LOCAL-SCTP-HASH", "hash:ip,port"},
	{"KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", "range", "0-65535"},
	{"KUBE-IPVS-IPS", "hash:ip"},
	{"KUBE-6-CLUSTER-IP", "hash:ip,port", "family", "inet6"},
}

// TestKernelIPVSModeRulesAndIPSets: kube-proxy's ipvs mode left rules that
// refer to its ipsets. The sets can only be destroyed after those rules are
// gone, so this checks the order on the real kernel, and that other
// software's KUBE-* sets stay. IPVS itself is a fake (no IPVS here).
func TestKernelIPVSModeRulesAndIPSets(t *testing.T) {
	netns.RequireRoot(t)
	netns.RequireTool(t, "ipset")
	for _, b := range []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT} {
		t.Run(string(b), func(t *testing.T) {
			requireBackend(t, model.IPv4, b)
			ns := netns.New(t, "kpr-takeover")
			for _, s := range kubeProxyIPSets {
				ns.MustExec(append([]string{"ipset", "create", s[0], s[1]}, s[2:]...)...)
			}
			ns.MustExec("ipset", "create", "KUBE-SRC-ABCDEF", "hash:ip") // kube-router's
			ns.MustExec("ipset", "add", "KUBE-NODE-PORT-TCP", "30080")
			ns.MustExec("ipset", "add", "KUBE-NODE-PORT-SCTP-HASH", "192.0.2.11,sctp:30081")
			restoreIn(t, ns, model.IPv4, b, fixture(t, "kube-proxy-ipvs-v4.save"))
			sets, err := takeover.NewIPSets()
			if err != nil {
				t.Fatal(err)
			}
			ipvs := takeovertest.NewIPVS(
				takeover.VirtualServer{Protocol: "TCP", Address: mustAddr("192.0.2.11"), Port: 30080},
				takeover.VirtualServer{Protocol: "SCTP", Address: mustAddr("192.0.2.11"), Port: 30081},
				takeover.VirtualServer{Protocol: "TCP", Address: mustAddr("192.0.2.11"), Port: 22},
			)
			tk := newTakeover(t, takeover.Config{Tables: realTables(t, ns), IPSets: sets, IPVS: ipvs, Links: takeover.NewLinks()})
			runIn(t, ns, tk)
			if got := strings.Fields(ns.MustExec("ipset", "list", "-n")); !slices.Equal(got, []string{"KUBE-SRC-ABCDEF"}) {
				t.Errorf("ipsets left: %v, want only KUBE-SRC-ABCDEF", got)
			}
			if got := ipvs.Servers(); !slices.Equal(got, []string{"TCP 192.0.2.11:22"}) {
				t.Errorf("virtual servers left %v, want the one that is not a NodePort", got)
			}
			// The golden file (from the fake) lists an empty mangle table;
			// the kernel has only the tables the fixture touched.
			want := strings.Replace(string(fixture(t, "after-ipvs-v4.golden")),
				"*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", "", 1)
			if got := saveIn(t, ns, model.IPv4, b); !sameTables(got, want) {
				t.Errorf("after the takeover the kernel holds:\n%s\nwant (testdata/after-ipvs-v4.golden without mangle):\n%s", got, want)
			}
		})
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestKernelNFTablesMode removes kube-proxy's nftables-mode tables and
// nothing else.
func TestKernelNFTablesMode(t *testing.T) {
	netns.RequireRoot(t)
	netns.RequireTool(t, "nft")
	ns := netns.New(t, "kpr-takeover")
	ruleset := `
table ip kube-proxy {
	comment "rules for kube-proxy"
	chain services {
		ip daddr 198.19.192.10 tcp dport 80 dnat to 198.18.1.2:8080
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}
}
table ip6 kube-proxy {
	chain services {
	}
}
table inet other-software {
	chain input {
		type filter hook input priority 0; policy accept;
	}
}
`
	cmd := ns.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s", err, out)
	}
	nft, err := takeover.NewNFTables()
	if err != nil {
		t.Fatal(err)
	}
	tk := newTakeover(t, takeover.Config{NFTables: nft})
	var present bool
	_ = ns.Do(func() error { present, _ = tk.Present(context.Background()); return nil })
	if !present {
		t.Fatal("Present missed the kube-proxy nftables tables")
	}
	res := runIn(t, ns, tk)
	if res.Others != 2 {
		t.Errorf("removed %d objects, want 2 tables", res.Others)
	}
	if got := strings.TrimSpace(ns.MustExec("nft", "list", "tables")); got != "table inet other-software" {
		t.Errorf("tables left:\n%s", got)
	}
}

// TestKernelKubeIPVS0MustBeDummy: a link called kube-ipvs0 that is not a
// dummy link is not kube-proxy's and stays (a veth here: this kernel has no
// dummy links).
func TestKernelKubeIPVS0MustBeDummy(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "kpr-takeover")
	ns.MustExec("ip", "link", "add", "kube-ipvs0", "type", "veth", "peer", "name", "kpr-peer")
	ns.MustExec("ip", "addr", "add", "198.19.192.10/32", "dev", "kube-ipvs0")
	tk := newTakeover(t, takeover.Config{Links: takeover.NewLinks()})
	res := runIn(t, ns, tk)
	if !res.Plan.Empty() || len(res.Plan.Notes) != 1 || !strings.Contains(res.Plan.Notes[0], "is a veth") {
		t.Errorf("plan %+v", res.Plan)
	}
	if _, err := ns.Exec("ip", "link", "show", "kube-ipvs0"); err != nil {
		t.Errorf("kube-ipvs0 (a veth) was removed")
	}
}
