package ipvs

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	ipttest "github.com/kpr-proxy/kpr/internal/iptables/ipt/testing"
	"github.com/kpr-proxy/kpr/internal/ipvs/desired"
	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	ipvstest "github.com/kpr-proxy/kpr/internal/ipvs/testing"
	"github.com/kpr-proxy/kpr/internal/model"
	"github.com/kpr-proxy/kpr/internal/model/modeltest"
)

const nodeName = "node1"

// env is a proxier over stateful fakes of every kernel boundary.
type env struct {
	t     *testing.T
	fam   model.Family
	ipvs  *ipvstest.FakeIPVS
	sets  *ipvstest.FakeIPSet
	ipt   *ipttest.FakeIPTables
	links *ipvstest.FakeLinks
	sys   *ipvstest.FakeSysctl
	clock *clocktesting.FakeClock
	p     *Proxier
	node  *model.Node
	log   *zap.Logger
}

func nodeIP(f model.Family) netip.Addr {
	if f == model.IPv6 {
		return netip.MustParseAddr("2001:db8:1::11")
	}
	return netip.MustParseAddr("192.0.2.11")
}

func newEnv(t *testing.T, fam model.Family, mod func(*Config)) *env {
	t.Helper()
	e := &env{
		t: t, fam: fam,
		ipvs:  ipvstest.NewFakeIPVS(),
		sets:  ipvstest.NewFakeIPSet(),
		ipt:   ipttest.New(fam),
		links: ipvstest.NewFakeLinks(),
		sys:   ipvstest.NewFakeSysctl(),
		clock: clocktesting.NewFakeClock(time.Unix(1_700_000_000, 0)),
		node:  &model.Node{Name: nodeName, Zone: "zone-a", Addresses: []netip.Addr{nodeIP(fam)}},
		log:   zaptest.NewLogger(t),
	}
	e.links.SetLink("eth0", netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("2001:db8:1::11"), netip.MustParseAddr("fe80::1"))
	// The fake ipset knows which sets the fake iptables rules reference,
	// so destroying a set still in use fails as in the kernel.
	e.sets.InUse = func(name string) bool {
		for _, tb := range []string{"filter", "nat"} {
			if strings.Contains(string(e.ipt.Save(ipt.Table(tb))), "--match-set "+name+" ") {
				return true
			}
		}
		return false
	}
	cidr := netip.MustParsePrefix("198.18.0.0/16")
	if fam == model.IPv6 {
		cidr = netip.MustParsePrefix("2001:db8:10::/56")
	}
	cfg := Config{
		Family: fam, IPVS: e.ipvs, IPSet: e.sets, IPT: e.ipt, Links: e.links, Sysctl: e.sys,
		Logger: e.log, Clock: e.clock,
		MasqueradeBit: 14, DetectLocalMode: "ClusterCIDR", ClusterCIDRs: []netip.Prefix{cidr},
		SyncPeriod: time.Minute, ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:99::/64")},
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

func (e *env) snap(lines ...string) *model.Snapshot {
	e.t.Helper()
	s, err := modeltest.Build(e.fam, nodeName, lines...)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *env) sync(s *model.Snapshot) Result {
	e.t.Helper()
	res, err := e.p.Sync(context.Background(), s, e.node)
	if err != nil {
		e.t.Fatalf("sync: %v", err)
	}
	return res
}

func (e *env) resetCalls() {
	e.ipvs.ResetCalls()
	e.links.ResetCalls()
	e.sets.ResetCalls()
	e.ipt.ResetRestores()
}

// requireNoChanges asserts that the last sync changed nothing, by its own
// account and by the fakes' counters.
func (e *env) requireNoChanges(res Result) {
	e.t.Helper()
	if n := res.Changes.Total(); n != 0 {
		e.t.Fatalf("sync made %d changes, want none: %+v", n, res.Changes)
	}
	if n := e.ipvs.Mutations(); n != 0 {
		e.t.Fatalf("IPVS saw %d mutations: %v", n, e.ipvs.Calls())
	}
	if n := e.links.Mutations(); n != 0 {
		e.t.Fatalf("links saw %d mutations", n)
	}
	if c, _ := e.sets.Restores(); c != 0 {
		e.t.Fatalf("ipset restore ran %d times", c)
	}
	if r := e.ipt.Restores(); len(r) != 0 {
		e.t.Fatalf("iptables-restore ran %d times", len(r))
	}
}

// want renders the desired state with the config the proxier last used.
func (e *env) want(s *model.Snapshot) *desired.State {
	e.p.mu.Lock()
	cfg := e.p.lastCfg
	e.p.mu.Unlock()
	if cfg == nil {
		e.t.Fatal("no successful sync yet")
	}
	return desired.Render(s, e.node, cfg)
}

// requireConverged asserts that the fakes hold exactly the desired state;
// adjust (may be nil) adds to the expected IPVS table what must survive
// besides it (foreign virtual servers, draining real servers).
func (e *env) requireConverged(s *model.Snapshot, adjust func(exp *ipvstest.FakeIPVS)) {
	e.t.Helper()
	want := e.want(s)
	exp := ipvstest.NewFakeIPVS()
	for _, vs := range want.Services {
		var ds []kernel.Destination
		for _, d := range vs.Dests {
			ds = append(ds, kernel.Destination{Addr: d.Addr(), Port: d.Port(), Weight: 1})
		}
		exp.AddService(vs.Service, ds...)
	}
	if adjust != nil {
		adjust(exp)
	}
	if got, wantDump := e.ipvs.Dump(), exp.Dump(); got != wantDump {
		e.t.Fatalf("IPVS table differs\n--- want\n%s--- got\n%s", wantDump, got)
	}
	for name, ws := range want.Sets {
		ks := e.sets.Set(name)
		if ks == nil {
			e.t.Fatalf("ip set %s missing", name)
		}
		if got, w := strings.Join(ks.Sorted(), " "), strings.Join(ws.Sorted(), " "); got != w {
			e.t.Fatalf("ip set %s: got %q want %q", name, got, w)
		}
	}
	addrs, _ := e.links.Addrs(desired.DefaultLink, e.fam)
	if fmt.Sprint(addrs) != fmt.Sprint(want.Bind) {
		e.t.Fatalf("link addresses %v, want %v", addrs, want.Bind)
	}
	for _, j := range desired.Jumps() {
		if ok, _ := e.ipt.RuleExists(ipt.Table(j.Table), j.From, j.RuleArgs()...); !ok {
			e.t.Fatalf("jump %s/%s -> %s missing", j.Table, j.From, j.To)
		}
	}
	if ok, _ := ipt.CanaryIntact(e.ipt); !ok {
		e.t.Fatal("canary missing")
	}
}

func key(proto model.Protocol, ap string) kernel.Key {
	a := netip.MustParseAddrPort(ap)
	return kernel.Key{Protocol: proto, Addr: a.Addr(), Port: a.Port()}
}

func setEntries(s *ipset.Set) string {
	if s == nil {
		return "<no set>"
	}
	return strings.Join(s.Sorted(), " ")
}
