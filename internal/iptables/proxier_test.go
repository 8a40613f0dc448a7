package iptables

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	ipttest "github.com/kpr-proxy/kpr/internal/iptables/ipt/testing"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/model/modeltest"
)

type fakeSysctl map[string]string

func (f fakeSysctl) Get(n string) (string, error) { return f[n], nil }
func (f fakeSysctl) Set(n, v string) error        { f[n] = v; return nil }

type env struct {
	t     *testing.T
	fake  *ipttest.FakeIPTables
	clock *clocktesting.FakeClock
	p     *Proxier
	node  *model.Node
	snap  *model.Snapshot
	sys   fakeSysctl
}

func newEnv(t *testing.T, mod func(*Config)) *env {
	e := &env{
		t:     t,
		fake:  ipttest.New(model.IPv4),
		clock: clocktesting.NewFakeClock(time.Unix(1_700_000_000, 0)),
		node:  &model.Node{Name: "node1", Zone: "a", Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.11")}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")}},
		sys:   fakeSysctl{},
	}
	cfg := Config{
		Family: model.IPv4, IPT: e.fake, Logger: zaptest.NewLogger(t), Clock: e.clock,
		MasqueradeBit: 14, LocalhostNodePorts: true,
		DetectLocalMode: DetectLocalClusterCIDR, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")},
		SyncPeriod: 30 * time.Second, Sysctl: e.sys,
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	return e
}

// sync renders lines (modeltest form) as the next snapshot, sharing
// unchanged Service ports with the previous one as the tracker does.
func (e *env) sync(lines ...string) Result {
	e.t.Helper()
	snap := modeltest.MustBuild(model.IPv4, "node1", lines...)
	if e.snap != nil {
		snap = modeltest.Reuse(e.snap, snap)
	}
	e.snap = snap
	res, err := e.p.Sync(context.Background(), snap, e.node)
	if err != nil {
		e.t.Fatalf("sync: %v", err)
	}
	return res
}

func (e *env) kernel() string {
	return string(e.fake.Save(ipt.TableFilter)) + string(e.fake.Save(ipt.TableNAT))
}

var webLines = []string{
	"svc default/web TCP 198.19.192.10:80 nodePort=30010",
	"ep default/web 198.18.1.2:8080 ready local",
	"ep default/web 198.18.2.2:8080 ready node=node2",
	"svc default/dns UDP 198.19.192.53:53",
	"ep default/dns 198.18.2.53:53 ready node=node2",
}

func TestFirstSyncIsFullAndEnsuresJumps(t *testing.T) {
	e := newEnv(t, nil)
	res := e.sync(webLines...)
	if !res.Full || res.Skipped {
		t.Fatalf("first sync: full=%v skipped=%v", res.Full, res.Skipped)
	}
	for _, want := range []struct{ table, chain, target string }{
		{"nat", "PREROUTING", "KPR-SERVICES"},
		{"nat", "OUTPUT", "KPR-SERVICES"},
		{"nat", "POSTROUTING", "KPR-POSTROUTING"},
		{"filter", "FORWARD", "KPR-FORWARD"},
		{"filter", "INPUT", "KPR-LOCALNET"},
	} {
		rules, _ := e.fake.Rules(ipt.Table(want.table), want.chain)
		if len(rules) == 0 || !strings.Contains(strings.Join(rules, "\n"), "-j "+want.target) {
			t.Errorf("%s/%s has no jump to %s: %v", want.table, want.chain, want.target, rules)
		}
	}
	if ok, err := e.p.CheckCanary(); err != nil || !ok {
		t.Errorf("canary after first sync: ok=%v err=%v", ok, err)
	}
	if e.sys["net/ipv4/conf/all/route_localnet"] != "1" {
		t.Errorf("route_localnet not enabled for localhost NodePorts")
	}
	if !strings.Contains(e.kernel(), "--to-destination 198.18.2.53:53") {
		t.Errorf("DNAT for dns missing:\n%s", e.kernel())
	}
}

func TestUnchangedSyncRunsNoRestore(t *testing.T) {
	e := newEnv(t, nil)
	e.sync(webLines...)
	n := len(e.fake.Restores())
	res := e.sync(webLines...)
	if !res.Skipped || res.Full {
		t.Fatalf("unchanged sync: skipped=%v full=%v", res.Skipped, res.Full)
	}
	if got := len(e.fake.Restores()); got != n {
		t.Errorf("unchanged sync ran iptables-restore (%d → %d calls)", n, got)
	}
}

func TestPartialSyncSendsOnlyChangedService(t *testing.T) {
	e := newEnv(t, nil)
	e.sync(webLines...)
	changed := append([]string{}, webLines[:4]...)
	changed = append(changed, "ep default/dns 198.18.2.54:53 ready node=node2")
	res := e.sync(changed...)
	if res.Full {
		t.Fatal("expected partial sync")
	}
	calls := e.fake.Restores()
	last := string(calls[len(calls)-1].Data)
	if strings.Contains(last, "default/web") {
		t.Errorf("partial sync rewrote the unchanged web Service:\n%s", last)
	}
	// Both endpoints are on node2, so they are DNATed from the Service
	// chain itself: rewriting that chain is what removes the old one.
	if !strings.Contains(last, "--to-destination 198.18.2.54:53") || strings.Contains(last, "198.18.2.53:53") {
		t.Errorf("partial sync lacks the new endpoint or still has the old one:\n%s", last)
	}
}

func TestRestoreFailureForcesFullSyncWithListing(t *testing.T) {
	e := newEnv(t, nil)
	e.sync(webLines...)
	e.fake.FailNextRestores(1, errors.New("injected"))
	snap := modeltest.Reuse(e.snap, modeltest.MustBuild(model.IPv4, "node1", webLines[:3]...))
	if _, err := e.p.Sync(context.Background(), snap, e.node); err == nil {
		t.Fatal("expected the injected failure")
	}
	e.snap = snap
	res := e.sync(webLines[:3]...)
	if !res.Full {
		t.Fatal("sync after a failure must be full")
	}
	if strings.Contains(e.kernel(), "198.18.2.53") {
		t.Errorf("dns rules survived the full resync after failure:\n%s", e.kernel())
	}
}

func TestExternalFlushIsRepaired(t *testing.T) {
	e := newEnv(t, nil)
	e.sync(webLines...)
	want := e.kernel()
	if err := e.fake.Run("-t", "nat", "-F"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := e.p.CheckCanary(); ok {
		t.Fatal("canary did not notice the nat flush")
	}
	res := e.sync(webLines...)
	if !res.Full {
		t.Fatal("sync after a lost canary must be full")
	}
	if got := e.kernel(); got != want {
		t.Errorf("rules not repaired:\n--- got\n%s\n--- want\n%s", got, want)
	}
	rules, _ := e.fake.Rules(ipt.TableNAT, "PREROUTING")
	if len(rules) == 0 {
		t.Error("jump from PREROUTING not restored")
	}
}

func TestSyncPeriodForcesFullSync(t *testing.T) {
	e := newEnv(t, nil)
	e.sync(webLines...)
	e.clock.Step(10 * time.Second)
	if res := e.sync(webLines...); res.Full {
		t.Fatal("full sync before the sync period elapsed")
	}
	e.clock.Step(25 * time.Second)
	if res := e.sync(webLines...); !res.Full {
		t.Fatal("no full sync after the sync period")
	}
}

// A Service removed in the very sync that is the periodic full resync must
// still have its chains deleted (the kernel is not re-listed then).
func TestPeriodicFullSyncDeletesRemovedServiceChains(t *testing.T) {
	e := newEnv(t, nil)
	e.sync(webLines...)
	e.clock.Step(31 * time.Second)
	if res := e.sync(webLines[:3]...); !res.Full {
		t.Fatal("expected the periodic full sync")
	}
	fresh := newEnv(t, nil)
	fresh.sync(webLines[:3]...)
	if got, want := e.kernel(), fresh.kernel(); got != want {
		t.Errorf("removed Service's chains survived the periodic full sync\n--- got\n%s\n--- want\n%s", got, want)
	}
}

func TestNodeCIDRChangeForcesFullSync(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.DetectLocalMode = DetectLocalNodeCIDR })
	e.sync(webLines...)
	if !strings.Contains(e.kernel(), "! -s 198.18.1.0/24") {
		t.Fatalf("NodeCIDR detector not used:\n%s", e.kernel())
	}
	e.node = &model.Node{Name: "node1", Addresses: e.node.Addresses, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.9.0/24")}}
	if res := e.sync(webLines...); !res.Full {
		t.Fatal("podCIDR change must force a full sync")
	}
	if !strings.Contains(e.kernel(), "! -s 198.18.9.0/24") || strings.Contains(e.kernel(), "198.18.1.0/24") {
		t.Errorf("rules not rebuilt for the new podCIDR:\n%s", e.kernel())
	}
}

func TestNodePortAddressesResolved(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.NodePortCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
		c.LocalAddrs = func() ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("127.0.0.1")}, nil
		}
	})
	e.sync(webLines...)
	k := e.kernel()
	if !strings.Contains(k, "-d 192.0.2.11") || strings.Contains(k, "-d 198.18.1.1") || strings.Contains(k, "addrtype --dst-type LOCAL -j KPR-NODEPORTS") {
		t.Errorf("NodePort jump not limited to 192.0.2.11:\n%s", k)
	}
}

func TestCleanupRemovesOnlyOurs(t *testing.T) {
	e := newEnv(t, nil)
	// Someone else's rules and kubelet's chains must survive.
	for _, args := range [][]string{
		{"-t", "nat", "-N", "KUBE-KUBELET-CANARY"},
		{"-t", "filter", "-N", "KUBE-FIREWALL"},
		{"-t", "filter", "-A", "INPUT", "-j", "KUBE-FIREWALL"},
		{"-t", "nat", "-A", "POSTROUTING", "-s", "198.18.0.0/16", "-j", "MASQUERADE"},
	} {
		if err := e.fake.Run(args...); err != nil {
			t.Fatal(err)
		}
	}
	before := e.kernel()
	e.sync(webLines...)
	if err := Cleanup(context.Background(), e.fake, zaptest.NewLogger(t)); err != nil {
		t.Fatal(err)
	}
	if got := e.kernel(); got != before {
		t.Errorf("cleanup did not restore the original state:\n--- got\n%s\n--- want\n%s", got, before)
	}
	if m := string(e.fake.Save(ipt.TableMangle)); strings.Contains(m, "KPR-") {
		t.Errorf("canary left in mangle:\n%s", m)
	}
	if err := Cleanup(context.Background(), e.fake, zaptest.NewLogger(t)); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
}

// TestRandomSyncSequencesMatchFullSync: whatever sequence of changes and
// partial syncs happens, the kernel ends up exactly as one full sync of the
// final state leaves it.
func TestRandomSyncSequencesMatchFullSync(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	pool := []string{
		"svc ns/a TCP 198.19.192.1:80 nodePort=30001",
		"svc ns/b UDP 198.19.192.2:53",
		"svc ns/c TCP 198.19.192.3:443 lb=203.0.113.3 lbRanges=198.51.100.0/24 etp=Local hc=32003",
		"svc ns/d TCP 198.19.192.4:80 itp=Local affinity=60",
		"svc ns/e SCTP 198.19.192.5:3868 externalIPs=203.0.113.5",
	}
	eps := []string{"198.18.1.%d:80 ready local", "198.18.2.%d:80 ready node=node2", "198.18.1.%d:80 serving terminating local", "198.18.2.%d:80 node=node2"}
	for round := 0; round < 40; round++ {
		e := newEnv(t, nil)
		var last []string
		for step := 0; step < 6; step++ {
			var lines []string
			for i, s := range pool {
				if rng.Intn(4) == 0 {
					continue
				}
				lines = append(lines, s)
				name := strings.Fields(s)[1]
				for k := rng.Intn(4); k > 0; k-- {
					ep := eps[rng.Intn(len(eps))]
					lines = append(lines, "ep "+name+" "+fmt.Sprintf(ep, 10*(i+1)+k))
				}
			}
			e.sync(lines...)
			last = lines
		}
		fresh := newEnv(t, nil)
		fresh.sync(last...)
		if got, want := e.kernel(), fresh.kernel(); got != want {
			t.Fatalf("round %d: partial syncs diverged from a full sync\n--- partial\n%s\n--- full\n%s", round, got, want)
		}
	}
}
