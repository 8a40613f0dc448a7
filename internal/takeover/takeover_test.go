package takeover_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/takeover"
	takeovertest "github.com/kpr-proxy/kpr/internal/takeover/testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// kprState is what kpr has programmed before the takeover runs: its own
// chains and its jumps, prepended ahead of kube-proxy's.
const kprState = `*mangle
:KPR-CANARY - [0:0]
-A KPR-CANARY -m comment --comment kpr-canary -j RETURN
COMMIT
*filter
:KPR-SERVICES - [0:0]
:KPR-FORWARD - [0:0]
-I FORWARD 1 -m comment --comment "kpr: KPR-FORWARD" -j KPR-FORWARD
-I OUTPUT 1 -m conntrack --ctstate NEW -m comment --comment "kpr: KPR-SERVICES" -j KPR-SERVICES
-A KPR-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
*nat
:KPR-SERVICES - [0:0]
:KPR-POSTROUTING - [0:0]
-I PREROUTING 1 -m comment --comment "kpr: KPR-SERVICES" -j KPR-SERVICES
-I OUTPUT 1 -m comment --comment "kpr: KPR-SERVICES" -j KPR-SERVICES
-I POSTROUTING 1 -m comment --comment "kpr: KPR-POSTROUTING" -j KPR-POSTROUTING
-A KPR-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
COMMIT
`

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// newNode returns the four iptables fakes of a node (both families, both
// backends), each with the standard tables present and empty.
func newNode() map[string]*takeovertest.Tables {
	out := map[string]*takeovertest.Tables{}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		for _, b := range []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT} {
			out[key(f, b)] = takeovertest.NewTables(f, b, ipt.TableMangle, ipt.TableFilter, ipt.TableNAT)
		}
	}
	return out
}

func key(f model.Family, b ipt.Backend) string { return f.String() + "/" + string(b) }

func tablesOf(node map[string]*takeovertest.Tables) []takeover.Tables {
	var out []takeover.Tables
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		for _, b := range []ipt.Backend{ipt.BackendLegacy, ipt.BackendNFT} {
			out = append(out, node[key(f, b)])
		}
	}
	return out
}

func mustLoad(t *testing.T, tb *takeovertest.Tables, data []byte) {
	t.Helper()
	if err := tb.Load(data); err != nil {
		t.Fatalf("loading rules into the fake: %v", err)
	}
}

func saveAll(t *testing.T, tb *takeovertest.Tables) string {
	t.Helper()
	b, err := tb.SaveAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run with -update and review the diff):\n--- got\n%s", name, got)
	}
}

func newTakeover(t *testing.T, cfg takeover.Config) *takeover.Takeover {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	tk, err := takeover.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func TestTakeoverRemovesKubeProxyIPTablesOnly(t *testing.T) {
	for _, tc := range []struct {
		fam     model.Family
		fixture string
		golden  string
	}{
		{model.IPv4, "kube-proxy-iptables-v4.save", "after-iptables-v4.golden"},
		{model.IPv6, "kube-proxy-iptables-v6.save", "after-iptables-v6.golden"},
	} {
		t.Run(tc.fam.String(), func(t *testing.T) {
			node := newNode()
			tb := node[key(tc.fam, ipt.BackendNFT)]
			mustLoad(t, tb, fixture(t, tc.fixture))
			mustLoad(t, tb, []byte(kprState))
			var out bytes.Buffer
			tk := newTakeover(t, takeover.Config{Tables: tablesOf(node), Out: &out})
			res, err := tk.Run(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			after := saveAll(t, tb)
			golden(t, tc.golden, after)
			for _, line := range strings.Split(after, "\n") {
				if strings.Contains(line, "KUBE-") && !strings.Contains(line, "KUBE-FIREWALL") &&
					!strings.Contains(line, "KUBE-KUBELET-CANARY") && !strings.Contains(line, "KUBE-IPTABLES-HINT") {
					t.Errorf("kube-proxy left over: %s", line)
				}
			}
			// One restore per table that had anything of kube-proxy's, and
			// nothing at all in the other three fakes.
			if n := len(tb.Restores()) - 2; n != 3 {
				t.Errorf("%d restores for the takeover, want 3 (one per table)", n)
			}
			for k, other := range node {
				if other != tb && len(other.Restores()) != 0 {
					t.Errorf("%s was changed though it had nothing of kube-proxy's", k)
				}
			}
			chains, jumps, _ := res.Plan.Counts()
			if res.Chains != chains || res.Jumps != jumps || chains == 0 || jumps == 0 {
				t.Errorf("removed %d chains and %d jumps, plan had %d and %d", res.Chains, res.Jumps, chains, jumps)
			}
			if !strings.Contains(out.String(), "remove chain") || !strings.Contains(out.String(), `remove rule   `+ipTool(tc.fam)) {
				t.Errorf("plan text lacks the removals:\n%s", out.String())
			}
			// A second run finds nothing and changes nothing.
			before := len(tb.Restores())
			res, err = tk.Run(context.Background())
			if err != nil || !res.Plan.Empty() || len(tb.Restores()) != before {
				t.Errorf("second run: err %v, plan empty %v, restores %d→%d", err, res.Plan.Empty(), before, len(tb.Restores()))
			}
		})
	}
}

func ipTool(f model.Family) string {
	if f == model.IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

func TestDryRunChangesNothingAndPrintsThePlan(t *testing.T) {
	node := newNode()
	tb := node[key(model.IPv4, ipt.BackendLegacy)]
	mustLoad(t, tb, fixture(t, "kube-proxy-iptables-v4.save"))
	mustLoad(t, tb, []byte(kprState))
	before := saveAll(t, tb)
	restores := len(tb.Restores())
	ipvs := takeovertest.NewIPVS(takeover.VirtualServer{Protocol: "TCP", Address: netip.MustParseAddr("198.19.192.10"), Port: 80})
	links := takeovertest.NewLinks(map[string]takeovertest.Link{"kube-ipvs0": {Kind: "dummy", Addrs: []netip.Addr{netip.MustParseAddr("198.19.192.10")}}})
	sets := takeovertest.NewIPSets(map[string][]string{"KUBE-CLUSTER-IP": {"198.19.192.10,tcp:80"}})
	nft := takeovertest.NewNFTables(takeover.NFTable{Family: "ip", Name: "kube-proxy"})
	var out bytes.Buffer
	tk := newTakeover(t, takeover.Config{Tables: tablesOf(node), IPVS: ipvs, Links: links, IPSets: sets, NFTables: nft, DryRun: true, Out: &out})
	res, err := tk.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !res.DryRun || res.Chains != 0 || res.Jumps != 0 || res.Others != 0 {
		t.Errorf("dry run reports removals: %+v", res)
	}
	if after := saveAll(t, tb); after != before || len(tb.Restores()) != restores {
		t.Errorf("dry run changed iptables:\n%s", after)
	}
	if len(ipvs.Servers()) != 1 || len(links.Names()) != 1 || len(sets.Names()) != 1 {
		t.Errorf("dry run removed IPVS objects: servers %v links %v sets %v", ipvs.Servers(), links.Names(), sets.Names())
	}
	if tables, _ := nft.Tables(context.Background()); len(tables) != 1 {
		t.Errorf("dry run removed nftables tables")
	}
	text := out.String()
	for _, want := range []string{
		"kube-proxy takeover: 16 iptables chains, 12 jump rules, 4 other objects of kube-proxy's",
		`remove rule   iptables legacy nat: -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		"remove chain  iptables legacy nat: KUBE-SVC-ERIFXISQEP7F7OF4 (3 rules)",
		"remove chain  iptables legacy mangle: KUBE-PROXY-CANARY (0 rules)",
		"remove nftables table ip kube-proxy",
		"remove IPVS virtual server TCP 198.19.192.10:80",
		"remove link kube-ipvs0",
		"remove ipset KUBE-CLUSTER-IP",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("plan text lacks %q:\n%s", want, text)
		}
	}
	for _, never := range []string{"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "KPR-"} {
		if strings.Contains(text, never) {
			t.Errorf("plan mentions %s:\n%s", never, text)
		}
	}
}

func TestForeignReferenceKeepsChain(t *testing.T) {
	node := newNode()
	tb := node[key(model.IPv4, ipt.BackendLegacy)]
	mustLoad(t, tb, fixture(t, "kube-proxy-iptables-v4.save"))
	// A CNI plugin's chain marks packets through kube-proxy's KUBE-MARK-MASQ,
	// as hostport plugins once did.
	mustLoad(t, tb, []byte("*nat\n:CNI-HOSTPORT-SETMARK - [0:0]\n-A CNI-HOSTPORT-SETMARK -j KUBE-MARK-MASQ\n-A OUTPUT -j CNI-HOSTPORT-SETMARK\nCOMMIT\n"))
	tk := newTakeover(t, takeover.Config{Tables: tablesOf(node)})
	res, err := tk.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var kept []takeover.Kept
	for _, ip := range res.Plan.IPTables {
		for _, tp := range ip.Tables {
			kept = append(kept, tp.Kept...)
		}
	}
	if len(kept) != 1 || kept[0].Chain != "KUBE-MARK-MASQ" || !strings.Contains(kept[0].Reason, "CNI-HOSTPORT-SETMARK") {
		t.Fatalf("kept %+v, want only KUBE-MARK-MASQ because of CNI-HOSTPORT-SETMARK", kept)
	}
	if rules, ok := tb.Rules(ipt.TableNAT, "KUBE-MARK-MASQ"); !ok || len(rules) != 1 {
		t.Errorf("KUBE-MARK-MASQ was changed: %v %v", rules, ok)
	}
	if rules, _ := tb.Rules(ipt.TableNAT, "CNI-HOSTPORT-SETMARK"); len(rules) != 1 {
		t.Errorf("the CNI chain was changed: %v", rules)
	}
	if _, ok := tb.Rules(ipt.TableNAT, "KUBE-SERVICES"); ok {
		t.Errorf("KUBE-SERVICES was not removed")
	}
}

func TestBuiltinJumpWithoutKubeProxyCommentKeepsChainAndItsClosure(t *testing.T) {
	node := newNode()
	tb := node[key(model.IPv4, ipt.BackendLegacy)]
	mustLoad(t, tb, fixture(t, "kube-proxy-iptables-v4.save"))
	// Someone else's rule (no kube-proxy comment) sends traffic into
	// KUBE-NODEPORTS: removing it would break them, so the chain and all
	// it leads to stay; kube-proxy's own jumps still go.
	mustLoad(t, tb, []byte("*nat\n-A INPUT -p tcp -j KUBE-NODEPORTS\nCOMMIT\n"))
	tk := newTakeover(t, takeover.Config{Tables: tablesOf(node)})
	res, err := tk.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, ip := range res.Plan.IPTables {
		for _, tp := range ip.Tables {
			if tp.Table == ipt.TableNAT {
				for _, k := range tp.Kept {
					kept = append(kept, k.Chain)
				}
			}
		}
	}
	want := []string{"KUBE-EXT-ERIFXISQEP7F7OF4", "KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-SEP-OUZRQ3VQEGF6NJSE", "KUBE-SEP-XSGV3BNHSR7FKLTX", "KUBE-SVC-ERIFXISQEP7F7OF4"}
	if !slices.Equal(kept, want) {
		t.Errorf("kept %v, want %v", kept, want)
	}
	if _, ok := tb.Rules(ipt.TableNAT, "KUBE-SERVICES"); ok {
		t.Errorf("KUBE-SERVICES (only kube-proxy's jumps lead to it) was not removed")
	}
	if rules, _ := tb.Rules(ipt.TableNAT, "PREROUTING"); len(rules) != 0 {
		t.Errorf("kube-proxy's PREROUTING jump not removed: %v", rules)
	}
}

func TestBothBackendsAndFamilies(t *testing.T) {
	// kube-proxy ran on the legacy backend (both families); kpr runs on
	// nft. The takeover must find and clean legacy and leave nft alone.
	node := newNode()
	mustLoad(t, node[key(model.IPv4, ipt.BackendLegacy)], fixture(t, "kube-proxy-iptables-v4.save"))
	mustLoad(t, node[key(model.IPv6, ipt.BackendLegacy)], fixture(t, "kube-proxy-iptables-v6.save"))
	mustLoad(t, node[key(model.IPv4, ipt.BackendNFT)], []byte(kprState))
	mustLoad(t, node[key(model.IPv6, ipt.BackendNFT)], []byte(kprState))
	nftBefore := saveAll(t, node[key(model.IPv4, ipt.BackendNFT)])
	tk := newTakeover(t, takeover.Config{Tables: tablesOf(node)})
	res, err := tk.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Plan.IPTables) != 2 {
		t.Fatalf("plan covers %d family/backend pairs, want the 2 legacy ones: %+v", len(res.Plan.IPTables), res.Plan.IPTables)
	}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		legacy := saveAll(t, node[key(f, ipt.BackendLegacy)])
		if strings.Contains(legacy, "KUBE-SERVICES") || strings.Contains(legacy, "KUBE-PROXY-CANARY") {
			t.Errorf("%s legacy still has kube-proxy's chains:\n%s", f, legacy)
		}
		if !strings.Contains(legacy, ":KUBE-KUBELET-CANARY") || !strings.Contains(legacy, ":KUBE-IPTABLES-HINT") {
			t.Errorf("%s legacy lost kubelet's chains:\n%s", f, legacy)
		}
	}
	if got := saveAll(t, node[key(model.IPv4, ipt.BackendNFT)]); got != nftBefore {
		t.Errorf("nft changed:\n%s", got)
	}
}

func TestIPVSModeObjects(t *testing.T) {
	node := newNode()
	tb := node[key(model.IPv4, ipt.BackendLegacy)]
	mustLoad(t, tb, fixture(t, "kube-proxy-ipvs-v4.save"))
	vip := netip.MustParseAddr("198.19.192.10")
	nodeIP := netip.MustParseAddr("192.0.2.11")
	vs := func(proto, addr string, port uint16) takeover.VirtualServer {
		return takeover.VirtualServer{Protocol: proto, Address: netip.MustParseAddr(addr), Port: port}
	}
	ipvs := takeovertest.NewIPVS(
		vs("TCP", "198.19.192.10", 80),  // ClusterIP on kube-ipvs0
		vs("UDP", "198.19.192.10", 53),  // ClusterIP, another port
		vs("TCP", "192.0.2.11", 30080),  // NodePort in KUBE-NODE-PORT-TCP
		vs("TCP", "192.0.2.11", 22),     // someone else's
		vs("UDP", "192.0.2.11", 30080),  // NodePort number, but UDP is not in the sets
		vs("TCP", "203.0.113.5", 80),    // someone else's
		vs("TCP", "198.19.192.11", 443), // kube-ipvs0 address, claimed by kpr's ipvs mode
		takeover.VirtualServer{FWMark: 7},
	)
	links := takeovertest.NewLinks(map[string]takeovertest.Link{
		"kube-ipvs0": {Kind: "dummy", Addrs: []netip.Addr{vip, netip.MustParseAddr("198.19.192.11")}},
		"eth0":       {Kind: "veth", Addrs: []netip.Addr{nodeIP}},
	})
	sets := takeovertest.NewIPSets(map[string][]string{
		"KUBE-CLUSTER-IP":                 {"198.19.192.10,tcp:80", "198.19.192.10,udp:53"},
		"KUBE-NODE-PORT-TCP":              {"30080"},
		"KUBE-LOOP-BACK":                  nil,
		"KUBE-LOAD-BALANCER":              nil,
		"KUBE-EXTERNAL-IP":                nil,
		"KUBE-EXTERNAL-IP-LOCAL":          nil,
		"KUBE-HEALTH-CHECK-NODE-PORT":     nil,
		"KUBE-IPVS-IPS":                   {"198.19.192.10"},
		"KUBE-6-CLUSTER-IP":               nil,
		"KUBE-6-LOAD-BALANCER-SOURCE-CID": nil, // KUBE-6-LOAD-BALANCER-SOURCE-CIDR cut to 31 characters
		"KUBE-SRC-ABCDEF":                 nil, // kube-router's, not kube-proxy's
		"my-set":                          nil,
	})
	keep := func(v takeover.VirtualServer) bool { return v.Address == netip.MustParseAddr("198.19.192.11") }
	tk := newTakeover(t, takeover.Config{Tables: tablesOf(node), IPVS: ipvs, Links: links, IPSets: sets, KeepVirtualServer: keep})
	res, err := tk.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wantLeft := []string{"TCP 192.0.2.11:22", "TCP 198.19.192.11:443", "TCP 203.0.113.5:80", "UDP 192.0.2.11:30080", "fwmark 7"}
	if got := ipvs.Servers(); !slices.Equal(got, wantLeft) {
		t.Errorf("virtual servers left %v, want %v", got, wantLeft)
	}
	if got := links.Names(); !slices.Equal(got, []string{"eth0"}) {
		t.Errorf("links left %v", got)
	}
	if got := sets.Names(); !slices.Equal(got, []string{"KUBE-SRC-ABCDEF", "my-set"}) {
		t.Errorf("ipsets left %v", got)
	}
	after := saveAll(t, tb)
	golden(t, "after-ipvs-v4.golden", after)
	if res.Others != 3+1+10 {
		t.Errorf("removed %d other objects, want 14 (3 servers, 1 link, 10 sets)", res.Others)
	}
}

func TestKubeIPVS0ThatIsNotDummyIsLeftAlone(t *testing.T) {
	links := takeovertest.NewLinks(map[string]takeovertest.Link{"kube-ipvs0": {Kind: "veth", Addrs: []netip.Addr{netip.MustParseAddr("198.19.192.10")}}})
	ipvs := takeovertest.NewIPVS(takeover.VirtualServer{Protocol: "TCP", Address: netip.MustParseAddr("198.19.192.10"), Port: 80})
	tk := newTakeover(t, takeover.Config{Links: links, IPVS: ipvs})
	res, err := tk.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Plan.Empty() || len(links.Names()) != 1 || len(ipvs.Servers()) != 1 {
		t.Errorf("a veth called kube-ipvs0 was treated as kube-proxy's: plan %+v", res.Plan)
	}
	if len(res.Plan.Notes) != 1 || !strings.Contains(res.Plan.Notes[0], "not kube-proxy's dummy link") {
		t.Errorf("notes %v", res.Plan.Notes)
	}
}

func TestNFTablesMode(t *testing.T) {
	nft := takeovertest.NewNFTables(
		takeover.NFTable{Family: "ip", Name: "kube-proxy"},
		takeover.NFTable{Family: "ip6", Name: "kube-proxy"},
		takeover.NFTable{Family: "inet", Name: "kube-proxy"}, // not kube-proxy's families
		takeover.NFTable{Family: "ip", Name: "filter"},
		takeover.NFTable{Family: "ip", Name: "nat"},
	)
	tk := newTakeover(t, takeover.Config{NFTables: nft})
	res, err := tk.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	left, _ := nft.Tables(context.Background())
	want := []takeover.NFTable{{Family: "inet", Name: "kube-proxy"}, {Family: "ip", Name: "filter"}, {Family: "ip", Name: "nat"}}
	if !slices.Equal(left, want) || res.Others != 2 {
		t.Errorf("tables left %v (removed %d), want %v", left, res.Others, want)
	}
	if present, _ := tk.Present(context.Background()); present {
		t.Errorf("Present after the takeover")
	}
	nft.Add(takeover.NFTable{Family: "ip", Name: "kube-proxy"})
	if present, where := tk.Present(context.Background()); !present || where != "nftables table ip kube-proxy" {
		t.Errorf("Present = %v %q after kube-proxy recreated its table", present, where)
	}
}

func TestFailedRestoreIsReplannedAndRetried(t *testing.T) {
	node := newNode()
	tb := node[key(model.IPv4, ipt.BackendNFT)]
	mustLoad(t, tb, fixture(t, "kube-proxy-iptables-v4.save"))
	tb.FailNextRestores(1, nil)
	saves := tb.SaveAllCalls()
	tk := newTakeover(t, takeover.Config{Tables: tablesOf(node)})
	if _, err := tk.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := tb.SaveAllCalls() - saves; got != 2 {
		t.Errorf("%d saves, want 2 (plan, then re-plan after the failure)", got)
	}
	if s := saveAll(t, tb); strings.Contains(s, "KUBE-SERVICES") {
		t.Errorf("kube-proxy's rules left after the retry:\n%s", s)
	}
}

func TestPersistentFailureIsReported(t *testing.T) {
	node := newNode()
	tb := node[key(model.IPv4, ipt.BackendNFT)]
	mustLoad(t, tb, fixture(t, "kube-proxy-iptables-v4.save"))
	injected := errors.New("injected")
	tb.FailNextRestores(100, injected)
	tk := newTakeover(t, takeover.Config{Tables: tablesOf(node)})
	_, err := tk.Run(context.Background())
	if !errors.Is(err, injected) || !strings.Contains(err.Error(), "iptables-nft table") {
		t.Fatalf("err = %v, want the injected failure naming the backend and table", err)
	}
}

func TestIPSetInUseIsReported(t *testing.T) {
	sets := takeovertest.NewIPSets(map[string][]string{"KUBE-CLUSTER-IP": nil, "KUBE-LOOP-BACK": nil})
	sets.SetInUse("KUBE-CLUSTER-IP", true)
	tk := newTakeover(t, takeover.Config{IPSets: sets})
	res, err := tk.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ipset KUBE-CLUSTER-IP") {
		t.Fatalf("err = %v, want one naming KUBE-CLUSTER-IP", err)
	}
	if res.Others != 1 || !slices.Equal(sets.Names(), []string{"KUBE-CLUSTER-IP"}) {
		t.Errorf("removed %d, left %v: the set that could go should be gone", res.Others, sets.Names())
	}
}

func TestPresentProbesOnlyExistingTables(t *testing.T) {
	node := newNode()
	// The legacy IPv4 backend has no tables at all (never used).
	empty := takeovertest.NewTables(model.IPv4, ipt.BackendLegacy)
	node[key(model.IPv4, ipt.BackendLegacy)] = empty
	used := node[key(model.IPv4, ipt.BackendNFT)]
	mustLoad(t, used, fixture(t, "kube-proxy-iptables-v4.save"))
	tk := newTakeover(t, takeover.Config{Tables: tablesOf(node)})
	if present, where := tk.Present(context.Background()); !present || !strings.Contains(where, "iptables-nft") {
		t.Fatalf("Present before the takeover = %v %q", present, where)
	}
	if _, err := tk.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if present, where := tk.Present(context.Background()); present {
		t.Fatalf("Present after the takeover: %s", where)
	}
	if s := saveAll(t, empty); s != "" {
		t.Errorf("probing created tables in the unused backend:\n%s", s)
	}
	// kube-proxy, still running, notices its canary is gone and puts
	// everything back.
	mustLoad(t, used, fixture(t, "kube-proxy-iptables-v4.save"))
	if present, where := tk.Present(context.Background()); !present || where != "iptables-nft mangle has KUBE-PROXY-CANARY" {
		t.Errorf("Present = %v %q after kube-proxy's rules came back", present, where)
	}
}

func TestNilTablesIsAnError(t *testing.T) {
	if _, err := takeover.New(takeover.Config{Tables: []takeover.Tables{nil}}); err == nil {
		t.Fatal("New accepted a nil Tables")
	}
}

func TestBadSaveOutputIsANoteNotACrash(t *testing.T) {
	tb := &badSave{Tables: takeovertest.NewTables(model.IPv4, ipt.BackendNFT, ipt.TableNAT)}
	tk := newTakeover(t, takeover.Config{Tables: []takeover.Tables{tb}})
	res, err := tk.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Plan.Empty() || len(res.Plan.Notes) != 1 || !strings.Contains(res.Plan.Notes[0], "outside a table") {
		t.Errorf("plan %+v", res.Plan)
	}
}

type badSave struct{ *takeovertest.Tables }

func (badSave) SaveAll(context.Context) ([]byte, error) { return []byte("-A FOO -j BAR\n"), nil }
