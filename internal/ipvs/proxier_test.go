package ipvs

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
	"github.com/kpr-proxy/kpr/internal/ipvs/desired"
	"github.com/kpr-proxy/kpr/internal/ipvs/ipset"
	"github.com/kpr-proxy/kpr/internal/ipvs/kernel"
	ipvstest "github.com/kpr-proxy/kpr/internal/ipvs/testing"
	"github.com/kpr-proxy/kpr/internal/model"
)

var baseLines = []string{
	"svc default/web TCP 198.19.192.10:80 nodePort=30080",
	"ep default/web 198.18.1.2:8080 ready local",
	"ep default/web 198.18.2.2:8080 ready node=node2",
	"svc kube-system/dns:dns UDP 198.19.192.53:53",
	"ep kube-system/dns:dns 198.18.2.5:53 ready node=node2",
	"svc default/lb TCP 198.19.192.20:443 lb=203.0.113.20 lbRanges=198.51.100.0/24 externalIPs=203.0.113.7 etp=Local hc=32001",
	"ep default/lb 198.18.1.3:8443 ready local",
}

func TestFirstSyncConvergesAndSecondChangesNothing(t *testing.T) {
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		t.Run(fam.String(), func(t *testing.T) {
			e := newEnv(t, fam, nil)
			var s *model.Snapshot
			if fam == model.IPv6 {
				s = e.snap(
					"svc default/web TCP [2001:db8:20::a]:80 nodePort=30080 lb=2001:db8:30::5",
					"ep default/web [2001:db8:10:1::2]:8080 ready local",
					"svc default/dns UDP [2001:db8:20::53]:53",
					"ep default/dns [2001:db8:10:2::5]:53 ready node=node2")
			} else {
				s = e.snap(baseLines...)
			}
			res := e.sync(s)
			if !res.Full || res.Changes.ServicesAdded == 0 || !res.Changes.RulesRestored {
				t.Fatalf("first sync: %+v", res)
			}
			e.requireConverged(s, nil)
			if e.p.Applied() != s {
				t.Fatal("Applied is not the synced snapshot")
			}
			e.resetCalls()
			e.clock.Step(time.Second)
			res = e.sync(s)
			if res.Full {
				t.Fatal("second sync within the sync period was full")
			}
			e.requireNoChanges(res)
		})
	}
}

func TestNodePortsOnNodeAddresses(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	e.links.SetLink("eth1", netip.MustParseAddr("192.0.2.111"))
	s := e.snap(baseLines...)
	e.sync(s)
	for _, ap := range []string{"192.0.2.11:30080", "192.0.2.111:30080"} {
		if e.ipvs.Service(key(model.TCP, ap)) == nil {
			t.Errorf("no NodePort virtual server on %s:\n%s", ap, e.ipvs.Dump())
		}
	}
	if e.ipvs.Service(key(model.TCP, "127.0.0.1:30080")) != nil {
		t.Error("NodePort on loopback")
	}
	// A node address that goes away takes its NodePorts with it.
	e.links.RemoveLink("eth1")
	e.sync(s)
	if e.ipvs.Service(key(model.TCP, "192.0.2.111:30080")) != nil {
		t.Error("NodePort virtual server left on a removed address")
	}
	e.requireConverged(s, nil)
}

func TestNodePortAddressesFlag(t *testing.T) {
	e := newEnv(t, model.IPv4, func(c *Config) {
		c.NodePortCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.100/30")}
	})
	e.links.SetLink("eth1", netip.MustParseAddr("192.0.2.101"))
	e.sync(e.snap(baseLines...))
	if e.ipvs.Service(key(model.TCP, "192.0.2.101:30080")) == nil || e.ipvs.Service(key(model.TCP, "192.0.2.11:30080")) != nil {
		t.Fatalf("NodePorts not limited to --nodeport-addresses:\n%s", e.ipvs.Dump())
	}
}

func TestLocalAddrsOverride(t *testing.T) {
	e := newEnv(t, model.IPv4, func(c *Config) {
		c.LocalAddrs = func() ([]netip.Addr, error) {
			// As net.InterfaceAddrs would answer: loopback, the node IP,
			// and the virtual IPs kpr bound earlier.
			return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.50"), netip.MustParseAddr("198.19.192.10")}, nil
		}
	})
	s := e.snap(baseLines...)
	e.sync(s)
	e.sync(s) // now 198.19.192.10 is on the link and must not become a node address
	if e.ipvs.Service(key(model.TCP, "192.0.2.50:30080")) == nil {
		t.Fatalf("no NodePort on the LocalAddrs address:\n%s", e.ipvs.Dump())
	}
	if e.ipvs.Service(key(model.TCP, "198.19.192.10:30080")) != nil || e.ipvs.Service(key(model.TCP, "127.0.0.1:30080")) != nil {
		t.Fatalf("NodePort on a virtual IP or loopback:\n%s", e.ipvs.Dump())
	}
}

// TestReconcileFromArbitraryKernelStates starts from random leftovers —
// extra and missing virtual servers, wrong settings, wrong weights, stray
// real servers with and without connections, stray set entries and
// addresses, foreign virtual servers in excludeCIDRs, of the other family
// and by firewall mark — and checks that one sync converges and the next
// changes nothing.
func TestReconcileFromArbitraryKernelStates(t *testing.T) {
	pool := []string{
		"svc default/web TCP 198.19.192.10:80 nodePort=30080",
		"ep default/web 198.18.1.2:8080 ready local",
		"ep default/web 198.18.2.2:8080 ready node=node2",
		"svc default/api TCP 198.19.192.11:443 affinity=300",
		"ep default/api 198.18.2.3:8443 ready node=node2",
		"ep default/api 198.18.3.3:8443 ready node=node3",
		"svc kube-system/dns:dns UDP 198.19.192.53:53",
		"ep kube-system/dns:dns 198.18.2.5:53 ready node=node2",
		"svc default/sctp SCTP 198.19.192.12:3868",
		"ep default/sctp 198.18.2.6:3868 ready node=node2",
		"svc default/lb TCP 198.19.192.20:443 lb=203.0.113.20 externalIPs=203.0.113.7 etp=Local",
		"ep default/lb 198.18.1.3:8443 ready local",
		"svc default/empty TCP 198.19.192.30:80",
	}
	var drained, deletedVS int
	defer func() {
		// The random states must exercise draining and deletion at all.
		if !t.Failed() && (drained == 0 || deletedVS == 0) {
			t.Errorf("random states never drained (%d) or deleted (%d) anything", drained, deletedVS)
		}
	}()
	for seed := int64(1); seed <= 40; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewSource(seed))
			e := newEnv(t, model.IPv4, nil)
			e.links.SetLink("eth1", netip.MustParseAddr("192.0.2.111"))
			// A random subset of the pool's Services.
			var lines []string
			keep := map[string]bool{}
			for _, l := range pool {
				f := strings.Fields(l)
				if f[0] == "svc" {
					keep[f[1]] = rng.Intn(4) > 0
				}
				if keep[f[1]] {
					lines = append(lines, l)
				}
			}
			s := e.snap(lines...)
			// What a sync over an empty kernel would make, to seed
			// leftovers from.
			probe := newEnv(t, model.IPv4, nil)
			probe.links.SetLink("eth1", netip.MustParseAddr("192.0.2.111"))
			probe.sync(probe.snap(pool...))
			full := probe.want(probe.snap(pool...))

			type survivor struct {
				k kernel.Key
				d kernel.Destination
			}
			var survivors []survivor
			for _, k := range full.SortedKeys() {
				vs := full.Services[k]
				if rng.Intn(3) == 0 {
					continue // missing from the kernel
				}
				svc := vs.Service
				if rng.Intn(4) == 0 {
					svc.Scheduler = "wrr" // wrong settings
				}
				if rng.Intn(4) == 0 {
					svc.Flags, svc.Timeout = kernel.FlagPersistent, 42
				}
				var ds []kernel.Destination
				for _, d := range vs.Dests {
					if rng.Intn(3) > 0 {
						ds = append(ds, kernel.Destination{Addr: d.Addr(), Port: d.Port(), Weight: []int{0, 1, 5}[rng.Intn(3)]})
					}
				}
				// Stray real servers, some busy.
				for i := 0; i < rng.Intn(3); i++ {
					conns := []int{0, 0, 3}[rng.Intn(3)]
					d := kernel.Destination{Addr: netip.AddrFrom4([4]byte{198, 18, 9, byte(10 + i)}), Port: 9000, Weight: rng.Intn(2), ActiveConns: conns}
					ds = append(ds, d)
					if k.Protocol == model.TCP && conns > 0 && e.wantKey(s, k) {
						// Busy and unwanted: drains at weight 0.
						survivors = append(survivors, survivor{k, kernel.Destination{Addr: d.Addr, Port: d.Port}})
					}
				}
				e.ipvs.AddService(svc, ds...)
			}
			// Virtual servers nobody wants: ours (deleted), foreign in
			// excludeCIDRs, other family, firewall mark (all kept).
			e.ipvs.AddService(kernel.Service{Family: model.IPv4, Protocol: model.TCP, Addr: netip.MustParseAddr("198.19.200.1"), Port: 80, Scheduler: "rr"},
				kernel.Destination{Addr: netip.MustParseAddr("198.18.5.5"), Port: 80, Weight: 1, ActiveConns: 7})
			foreign := []kernel.Service{
				{Family: model.IPv4, Protocol: model.TCP, Addr: netip.MustParseAddr("198.51.100.9"), Port: 80, Scheduler: "wlc"},
				{Family: model.IPv6, Protocol: model.TCP, Addr: netip.MustParseAddr("2001:db8:20::99"), Port: 80, Scheduler: "rr"},
				{Family: model.IPv4, FWMark: 7, Scheduler: "rr"},
			}
			for _, f := range foreign {
				d := kernel.Destination{Addr: netip.MustParseAddr("198.51.100.200"), Port: 80, Weight: 0}
				if f.Family == model.IPv6 {
					d.Addr = netip.MustParseAddr("2001:db8:10::200")
				}
				if f.FWMark != 0 {
					e.ipvs.AddService(f)
					continue
				}
				e.ipvs.AddService(f, d)
			}
			// Leftover sets: some of ours with stray and some right
			// entries, one incomplete, a foreign one.
			var b ipset.Batch
			for _, name := range desired.SetNames(model.IPv4) {
				ws := full.Sets[name]
				if rng.Intn(2) == 0 {
					continue
				}
				b.Create(ws)
				for _, en := range ws.Sorted() {
					if rng.Intn(2) == 0 {
						b.Add(name, en)
					}
				}
				if ws.Type == ipset.HashIPPort {
					b.Add(name, "198.19.250.1,tcp:1")
				}
			}
			b.Create(ipset.NewSet("OTHER-SET", ipset.HashIP, model.IPv4))
			b.Add("OTHER-SET", "192.0.2.200")
			if err := e.sets.Restore(context.Background(), b.Bytes()); err != nil {
				t.Fatal(err)
			}
			// Leftover addresses: some right, one stray, one of the other
			// family (kept).
			var addrs []netip.Addr
			for _, a := range full.Bind {
				if rng.Intn(2) == 0 {
					addrs = append(addrs, a)
				}
			}
			addrs = append(addrs, netip.MustParseAddr("198.19.250.1"), netip.MustParseAddr("2001:db8:20::1"))
			e.links.SetLink(desired.DefaultLink, addrs...)
			// A foreign chain and stale content in one of ours.
			_ = e.ipt.Run("-t", "filter", "-N", "OTHER")
			_ = e.ipt.Run("-t", "filter", "-A", "OTHER", "-j", "ACCEPT")
			_ = e.ipt.Run("-t", "nat", "-N", desired.ChainServices)
			_ = e.ipt.Run("-t", "nat", "-A", desired.ChainServices, "-j", "RETURN")

			res := e.sync(s)
			drained += res.Draining
			deletedVS += res.Changes.ServicesDeleted
			if res.Draining != len(survivors) {
				t.Fatalf("draining %d real servers, want %d", res.Draining, len(survivors))
			}
			e.requireConverged(s, func(exp *ipvstest.FakeIPVS) {
				for _, f := range foreign {
					d := kernel.Destination{Addr: netip.MustParseAddr("198.51.100.200"), Port: 80, Weight: 0}
					if f.Family == model.IPv6 {
						d.Addr = netip.MustParseAddr("2001:db8:10::200")
					}
					if f.FWMark != 0 {
						exp.AddService(f)
					} else {
						exp.AddService(f, d)
					}
				}
				for _, sv := range survivors {
					svc := exp.Service(sv.k)
					if err := exp.NewDestination(svc, &sv.d); err != nil {
						t.Fatal(err)
					}
				}
			})
			if e.sets.Set("OTHER-SET") == nil || setEntries(e.sets.Set("OTHER-SET")) != "192.0.2.200" {
				t.Fatal("foreign ip set was touched")
			}
			if v6, _ := e.links.Addrs(desired.DefaultLink, model.IPv6); len(v6) != 1 {
				t.Fatalf("the IPv4 proxier touched IPv6 addresses: %v", v6)
			}
			if rules, ok := e.ipt.Rules(ipt.TableFilter, "OTHER"); !ok || len(rules) != 1 {
				t.Fatal("foreign chain was touched")
			}
			if rules, _ := e.ipt.Rules(ipt.TableNAT, desired.ChainServices); len(rules) == 1 {
				t.Fatal("stale rules left in our chain")
			}

			e.resetCalls()
			e.clock.Step(time.Second)
			e.requireNoChanges(e.sync(s))
		})
	}
}

// wantKey reports whether virtual server k is wanted by s (stray real
// servers of unwanted virtual servers go with them).
func (e *env) wantKey(s *model.Snapshot, k kernel.Key) bool {
	_, ok := desired.Render(s, e.node, e.p.renderConfig(e.node)).Services[k]
	return ok
}

func TestGracefulTermination(t *testing.T) {
	e := newEnv(t, model.IPv4, func(c *Config) { c.GracefulTerminationTimeout = 10 * time.Minute })
	two := e.snap(
		"svc default/web TCP 198.19.192.10:80",
		"ep default/web 198.18.1.2:8080 ready local",
		"ep default/web 198.18.2.2:8080 ready node=node2")
	one := e.snap(
		"svc default/web TCP 198.19.192.10:80",
		"ep default/web 198.18.1.2:8080 ready local")
	vk := key(model.TCP, "198.19.192.10:80")
	gone := netip.MustParseAddrPort("198.18.2.2:8080")
	e.sync(two)
	if err := e.ipvs.SetConns(vk, gone, 2, 1); err != nil {
		t.Fatal(err)
	}

	// Removed: weight 0 first, not deleted while it has connections.
	res := e.sync(one)
	d := e.ipvs.Dest(vk, gone)
	if d == nil || d.Weight != 0 || res.Draining != 1 {
		t.Fatalf("removed real server: %+v draining=%d, want weight 0 and draining", d, res.Draining)
	}
	for i := 0; i < 3; i++ {
		e.clock.Step(time.Minute)
		if res := e.sync(one); res.Draining != 1 || e.ipvs.Dest(vk, gone) == nil {
			t.Fatalf("deleted while connections remain (draining=%d)", res.Draining)
		}
	}
	// Connections end: deleted on the next sync.
	if err := e.ipvs.SetConns(vk, gone, 0, 0); err != nil {
		t.Fatal(err)
	}
	e.clock.Step(time.Second)
	if res := e.sync(one); res.Draining != 0 || e.ipvs.Dest(vk, gone) != nil {
		t.Fatalf("drained real server not deleted (draining=%d)", res.Draining)
	}
	e.requireConverged(one, nil)

	// Timeout: connections that never end are cut when it passes.
	e.sync(two)
	if err := e.ipvs.SetConns(vk, gone, 5, 0); err != nil {
		t.Fatal(err)
	}
	e.sync(one)
	e.clock.Step(9 * time.Minute)
	if e.sync(one); e.ipvs.Dest(vk, gone) == nil {
		t.Fatal("deleted before the timeout")
	}
	e.clock.Step(time.Minute)
	if res := e.sync(one); e.ipvs.Dest(vk, gone) != nil || res.Draining != 0 {
		t.Fatal("not deleted at the timeout")
	}

	// Re-added while draining: weight back to 1, no longer draining.
	e.sync(two)
	if err := e.ipvs.SetConns(vk, gone, 1, 0); err != nil {
		t.Fatal(err)
	}
	e.sync(one)
	res = e.sync(two)
	if d := e.ipvs.Dest(vk, gone); d == nil || d.Weight != 1 || res.Draining != 0 {
		t.Fatalf("re-added real server: %+v draining=%d", d, res.Draining)
	}
	e.clock.Step(time.Hour)
	e.sync(two)
	if e.ipvs.Dest(vk, gone) == nil {
		t.Fatal("re-added real server deleted by a stale drain")
	}
}

func TestUDPAndSCTPRealServersGoAtOnce(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	two := e.snap(
		"svc default/dns UDP 198.19.192.53:53",
		"ep default/dns 198.18.1.5:53 ready local",
		"ep default/dns 198.18.2.5:53 ready node=node2",
		"svc default/sig SCTP 198.19.192.54:3868",
		"ep default/sig 198.18.1.6:3868 ready local",
		"ep default/sig 198.18.2.6:3868 ready node=node2")
	one := e.snap(
		"svc default/dns UDP 198.19.192.53:53",
		"ep default/dns 198.18.1.5:53 ready local",
		"svc default/sig SCTP 198.19.192.54:3868",
		"ep default/sig 198.18.1.6:3868 ready local")
	e.sync(two)
	_ = e.ipvs.SetConns(key(model.UDP, "198.19.192.53:53"), netip.MustParseAddrPort("198.18.2.5:53"), 0, 9)
	res := e.sync(one)
	if res.Draining != 0 {
		t.Fatalf("UDP/SCTP real servers draining: %d", res.Draining)
	}
	e.requireConverged(one, nil)
}

// TestRestartRepairsStuckWeights is kubernetes issues 57841 and 92019: a
// proxy that restarts mid-drain must not leave wanted real servers at
// weight 0 (no traffic, ever) nor forget unwanted ones.
func TestRestartRepairsStuckWeights(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	s := e.snap(
		"svc default/web TCP 198.19.192.10:80",
		"ep default/web 198.18.1.2:8080 ready local",
		"ep default/web 198.18.2.2:8080 ready node=node2")
	vk := key(model.TCP, "198.19.192.10:80")
	// What a previous process left: one wanted real server at weight 0
	// (it was draining, then came back), one unwanted at weight 0 with
	// connections, one unwanted at weight 1.
	e.ipvs.AddService(kernel.Service{Family: model.IPv4, Protocol: model.TCP, Addr: vk.Addr, Port: 80, Scheduler: "rr"},
		kernel.Destination{Addr: netip.MustParseAddr("198.18.1.2"), Port: 8080, Weight: 0},
		kernel.Destination{Addr: netip.MustParseAddr("198.18.2.2"), Port: 8080, Weight: 1},
		kernel.Destination{Addr: netip.MustParseAddr("198.18.9.9"), Port: 8080, Weight: 0, ActiveConns: 4},
		kernel.Destination{Addr: netip.MustParseAddr("198.18.9.10"), Port: 8080, Weight: 1, InactiveConns: 2})
	res := e.sync(s)
	if d := e.ipvs.Dest(vk, netip.MustParseAddrPort("198.18.1.2:8080")); d == nil || d.Weight != 1 {
		t.Fatalf("wanted real server stuck: %+v", d)
	}
	for _, ap := range []string{"198.18.9.9:8080", "198.18.9.10:8080"} {
		if d := e.ipvs.Dest(vk, netip.MustParseAddrPort(ap)); d == nil || d.Weight != 0 {
			t.Fatalf("unwanted real server %s: %+v, want draining at weight 0", ap, d)
		}
	}
	if res.Draining != 2 {
		t.Fatalf("draining %d, want 2", res.Draining)
	}
	_ = e.ipvs.SetConns(vk, netip.MustParseAddrPort("198.18.9.9:8080"), 0, 0)
	_ = e.ipvs.SetConns(vk, netip.MustParseAddrPort("198.18.9.10:8080"), 0, 0)
	e.clock.Step(time.Second)
	if res := e.sync(s); res.Draining != 0 {
		t.Fatalf("drained real servers not deleted: %d", res.Draining)
	}
	e.requireConverged(s, nil)
}

func TestOneBadServiceDoesNotBlockTheOthers(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	e := newEnv(t, model.IPv4, nil)
	e.p.log = zap.New(core)
	s := e.snap(baseLines...)
	bad := key(model.TCP, "198.19.192.10:80")
	e.ipvs.FailOn("NewService", &bad, syscall.ENOMEM)
	_, err := e.p.Sync(context.Background(), s, e.node)
	if err == nil || !strings.Contains(err.Error(), "default/web") {
		t.Fatalf("sync error %v, want one naming default/web", err)
	}
	if e.ipvs.Service(key(model.UDP, "198.19.192.53:53")) == nil || e.ipvs.Service(key(model.TCP, "192.0.2.11:30080")) == nil {
		t.Fatalf("other virtual servers were not made:\n%s", e.ipvs.Dump())
	}
	found := false
	for _, entry := range logs.All() {
		if entry.ContextMap()["service"] == "default/web" && entry.ContextMap()["virtual_server"] == bad.String() {
			found = true
		}
	}
	if !found {
		t.Fatalf("no error log with service=default/web: %v", logs.All())
	}
	if e.p.Applied() != nil {
		t.Fatal("a failed sync counts as applied")
	}
	// The fault clears: the retry converges (re-reading the kernel).
	e.ipvs.FailOn("NewService", &bad, nil)
	if res := e.sync(s); !res.Full {
		t.Fatal("retry after a failure was not a full sync")
	}
	e.requireConverged(s, nil)
}

func TestPartialFailuresAreRetried(t *testing.T) {
	cases := []struct {
		name   string
		inject func(e *env)
		clear  func(e *env)
	}{
		{"bind address", func(e *env) { e.links.FailOn("AddAddr", netip.MustParseAddr("198.19.192.20"), syscall.EPERM) },
			func(e *env) { e.links.FailOn("AddAddr", netip.MustParseAddr("198.19.192.20"), nil) }},
		{"add real server", func(e *env) { e.ipvs.FailOn("NewDestination", nil, syscall.ENOMEM) },
			func(e *env) { e.ipvs.FailOn("NewDestination", nil, nil) }},
		{"ipset restore", func(e *env) { e.sets.FailNextRestores(1, nil) }, func(e *env) {}},
		{"iptables restore", func(e *env) { e.ipt.FailNextRestores(1, nil) }, func(e *env) {}},
		{"list services", func(e *env) { e.ipvs.FailOn("GetServices", nil, syscall.EIO); e.p.ForceFullSync() },
			func(e *env) { e.ipvs.FailOn("GetServices", nil, nil) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, model.IPv4, nil)
			first := e.snap(baseLines[:5]...)
			e.sync(first)
			s := e.snap(baseLines...)
			c.inject(e)
			if _, err := e.p.Sync(context.Background(), s, e.node); err == nil {
				t.Fatal("sync with an injected fault succeeded")
			}
			c.clear(e)
			e.clock.Step(time.Second)
			e.sync(s)
			e.requireConverged(s, nil)
			e.resetCalls()
			e.requireNoChanges(e.sync(s))
		})
	}
}

func TestPartialSyncTracksChangesWithoutReading(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	s1 := e.snap(baseLines...)
	e.sync(s1)
	// Something external the proxier cannot know about without reading.
	e.ipvs.AddService(kernel.Service{Family: model.IPv4, Protocol: model.TCP, Addr: netip.MustParseAddr("198.19.200.9"), Port: 1, Scheduler: "rr"})
	s2 := e.snap(append(baseLines, "ep default/web 198.18.3.2:8080 ready node=node3")...)
	e.clock.Step(time.Second)
	res := e.sync(s2)
	// The new endpoint joins the cluster IP and the NodePort (one node
	// address) virtual servers.
	if res.Full || res.Changes.DestsAdded != 2 || res.Changes.Total() != 2 {
		t.Fatalf("partial sync: %+v", res)
	}
	if e.ipvs.Service(key(model.TCP, "198.19.200.9:1")) == nil {
		t.Fatal("a partial sync read and cleaned the table")
	}
	// The periodic full sync re-reads and removes it.
	e.clock.Step(time.Minute)
	if res := e.sync(s2); !res.Full {
		t.Fatal("no full sync after the sync period")
	}
	if e.ipvs.Service(key(model.TCP, "198.19.200.9:1")) != nil {
		t.Fatal("full sync left a stray virtual server")
	}
	// ForceFullSync does it too.
	e.ipvs.AddService(kernel.Service{Family: model.IPv4, Protocol: model.TCP, Addr: netip.MustParseAddr("198.19.200.9"), Port: 1, Scheduler: "rr"})
	e.p.ForceFullSync()
	e.clock.Step(time.Second)
	if res := e.sync(s2); !res.Full || e.ipvs.Service(key(model.TCP, "198.19.200.9:1")) != nil {
		t.Fatal("forced full sync did not clean up")
	}
}

func TestServiceChangesUpdateInPlace(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	vk := key(model.TCP, "198.19.192.10:80")
	e.sync(e.snap("svc default/web TCP 198.19.192.10:80", "ep default/web 198.18.2.2:8080 ready node=node2"))
	_ = e.ipvs.SetConns(vk, netip.MustParseAddrPort("198.18.2.2:8080"), 3, 0)
	res := e.sync(e.snap("svc default/web TCP 198.19.192.10:80 affinity=600", "ep default/web 198.18.2.2:8080 ready node=node2"))
	if res.Changes.ServicesUpdated != 1 || res.Changes.ServicesAdded != 0 || res.Changes.ServicesDeleted != 0 {
		t.Fatalf("affinity change: %+v", res.Changes)
	}
	if svc := e.ipvs.Service(vk); svc.Flags&kernel.FlagPersistent == 0 || svc.Timeout != 600 {
		t.Fatalf("virtual server not persistent: %s", svc)
	}
	if d := e.ipvs.Dest(vk, netip.MustParseAddrPort("198.18.2.2:8080")); d == nil || d.ActiveConns != 3 {
		t.Fatal("update recreated the virtual server (connections lost)")
	}
}

func TestServiceRemoval(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	e.sync(e.snap(baseLines...))
	empty := e.snap()
	e.clock.Step(time.Second)
	e.sync(empty)
	if d := e.ipvs.Dump(); d != "" {
		t.Fatalf("virtual servers left:\n%s", d)
	}
	if a, _ := e.links.Addrs(desired.DefaultLink, model.IPv4); len(a) != 0 {
		t.Fatalf("addresses left: %v", a)
	}
	for _, n := range desired.SetNames(model.IPv4) {
		if s := e.sets.Set(n); s == nil || len(s.Entries) != 0 {
			t.Fatalf("set %s: %v", n, setEntries(s))
		}
	}
}

func TestExcludeCIDRsSurvive(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	keepSvc := kernel.Service{Family: model.IPv4, Protocol: model.TCP, Addr: netip.MustParseAddr("198.51.100.5"), Port: 80, Scheduler: "sh"}
	e.ipvs.AddService(keepSvc, kernel.Destination{Addr: netip.MustParseAddr("198.51.100.6"), Port: 80, Weight: 3})
	e.ipvs.AddService(kernel.Service{Family: model.IPv4, Protocol: model.TCP, Addr: netip.MustParseAddr("198.19.255.5"), Port: 80, Scheduler: "rr"})
	s := e.snap(baseLines...)
	e.sync(s)
	if e.ipvs.Service(keepSvc.Key()) == nil || e.ipvs.Dest(keepSvc.Key(), netip.MustParseAddrPort("198.51.100.6:80")).Weight != 3 {
		t.Fatal("virtual server in excludeCIDRs was touched")
	}
	if e.ipvs.Service(key(model.TCP, "198.19.255.5:80")) != nil {
		t.Fatal("stray virtual server outside excludeCIDRs kept")
	}
	if err := e.p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.ipvs.Service(keepSvc.Key()) == nil {
		t.Fatal("cleanup removed a virtual server in excludeCIDRs")
	}
}

func TestSysctlsAndTimeouts(t *testing.T) {
	e := newEnv(t, model.IPv4, func(c *Config) {
		c.StrictARP = true
		c.TCPTimeout, c.UDPTimeout = 900*time.Second, 300*time.Second
	})
	e.sys.Values["net/ipv4/ip_forward"] = "0"
	e.sync(e.snap(baseLines...))
	for k, v := range map[string]string{
		"net/ipv4/vs/conntrack": "1", "net/ipv4/vs/expire_nodest_conn": "1", "net/ipv4/vs/expire_quiescent_template": "1",
		"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2",
	} {
		if got := e.sys.Value(k); got != v {
			t.Errorf("sysctl %s = %q, want %q", k, got, v)
		}
	}
	if to, _ := e.ipvs.GetTimeouts(); to.TCP != 900*time.Second || to.UDP != 300*time.Second || to.TCPFin != 0 {
		t.Errorf("timeouts %+v", to)
	}
	// Already right: a full sync writes nothing.
	n := e.sys.Sets()
	e.p.ForceFullSync()
	e.sync(e.snap(baseLines...))
	if e.sys.Sets() != n {
		t.Error("sysctls rewritten although unchanged")
	}

	// Without strictARP the ARP sysctls are left alone.
	e2 := newEnv(t, model.IPv4, nil)
	e2.sync(e2.snap(baseLines...))
	if e2.sys.Value("net/ipv4/conf/all/arp_ignore") != "" {
		t.Error("arp_ignore set without strictARP")
	}
}

func TestSetupFailureReportedButStateKept(t *testing.T) {
	e := newEnv(t, model.IPv4, func(c *Config) { c.StrictARP = true })
	e.sys.Fail["net/ipv4/conf/all/arp_ignore"] = errors.New("read-only file system")
	s := e.snap(baseLines...)
	if _, err := e.p.Sync(context.Background(), s, e.node); err == nil || !strings.Contains(err.Error(), "arp_ignore") {
		t.Fatalf("sync error %v, want the sysctl failure", err)
	}
	// Services were programmed regardless.
	if e.ipvs.Service(key(model.TCP, "198.19.192.10:80")) == nil {
		t.Fatal("setup failure blocked the Services")
	}
	delete(e.sys.Fail, "net/ipv4/conf/all/arp_ignore")
	e.clock.Step(time.Second)
	e.sync(s)
	if e.sys.Value("net/ipv4/conf/all/arp_ignore") != "1" {
		t.Fatal("setup not retried")
	}
}

func TestCanaryAndLinkLoss(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	s := e.snap(baseLines...)
	e.sync(s)
	if ok, err := e.p.CheckCanary(); !ok || err != nil {
		t.Fatalf("canary after sync: %v %v", ok, err)
	}
	// Someone deletes the link: the next sync must notice and rebuild.
	e.links.RemoveLink(desired.DefaultLink)
	if ok, _ := e.p.CheckCanary(); ok {
		t.Fatal("lost link not reported")
	}
	e.clock.Step(time.Second)
	if res := e.sync(s); !res.Full {
		t.Fatal("no full sync after the link was lost")
	}
	e.requireConverged(s, nil)
	// An external flush of the nat table.
	if err := e.ipt.Run("-t", "nat", "-F"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := e.p.CheckCanary(); ok {
		t.Fatal("flush not noticed")
	}
	e.clock.Step(time.Second)
	if res := e.sync(s); !res.Full || !res.Changes.RulesRestored {
		t.Fatalf("no full sync after a flush: %+v", res)
	}
	e.requireConverged(s, nil)
	if rules, _ := e.ipt.Rules(ipt.TableNAT, desired.ChainMarkMasq); len(rules) != 1 {
		t.Fatalf("rules not restored: %v", rules)
	}
}

func TestRulesRestoredOnlyWhenChanged(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	e.sync(e.snap(baseLines...))
	e.resetCalls()
	e.clock.Step(time.Second)
	// More endpoints and Services: sets change, rules do not.
	res := e.sync(e.snap(append(baseLines, "svc default/x TCP 198.19.192.99:80", "ep default/x 198.18.2.9:80 ready")...))
	if res.Changes.RulesRestored || len(e.ipt.Restores()) != 0 {
		t.Fatal("iptables-restore for a change that only touches ip sets")
	}
	// A source-ranged LB that excludes the node adds a rule.
	e.clock.Step(time.Second)
	res = e.sync(e.snap(append(baseLines, "svc default/y TCP 198.19.192.98:80 lb=203.0.113.40 lbRanges=198.51.100.0/28", "ep default/y 198.18.2.9:80 ready")...))
	if !res.Changes.RulesRestored {
		t.Fatal("rules not restored for a new node-access rule")
	}
	rules, _ := e.ipt.Rules(ipt.TableFilter, desired.ChainOutFilter)
	if len(rules) != 2 || !strings.Contains(rules[1], "--vaddr 203.0.113.40/32") {
		t.Fatalf("OUT-FILTER rules: %v", rules)
	}
}

func TestCleanupRemovesOnlyOurs(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	s := e.snap(baseLines...)
	e.sync(s)
	fw := kernel.Service{Family: model.IPv4, FWMark: 3, Scheduler: "rr"}
	e.ipvs.AddService(fw)
	var b ipset.Batch
	b.Create(ipset.NewSet("OTHER-SET", ipset.HashIP, model.IPv4))
	_ = e.sets.Restore(context.Background(), b.Bytes())
	_ = e.ipt.Run("-t", "filter", "-N", "OTHER")
	e.links.SetLink(desired.DefaultLink, append(mustAddrs(e.links.Addrs(desired.DefaultLink, model.IPv4)), netip.MustParseAddr("2001:db8:20::5"))...)

	if err := e.p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := e.ipvs.Dump(); d != fw.String()+"\n" {
		t.Fatalf("IPVS after cleanup:\n%s", d)
	}
	if names := e.sets.Names(); len(names) != 1 || names[0] != "OTHER-SET" {
		t.Fatalf("sets after cleanup: %v", names)
	}
	for _, tb := range []ipt.Table{ipt.TableFilter, ipt.TableNAT} {
		chains, _ := e.ipt.ListChains(context.Background(), tb)
		for _, c := range chains {
			if desired.IsOurChain(c) || c == ipt.CanaryChain {
				t.Fatalf("chain %s/%s left", tb, c)
			}
		}
	}
	if _, ok := e.ipt.Rules(ipt.TableFilter, "OTHER"); !ok {
		t.Fatal("foreign chain removed")
	}
	// The IPv6 address of the other family keeps the shared link.
	if ok, _ := e.links.LinkExists(desired.DefaultLink); !ok {
		t.Fatal("link removed while the other family uses it")
	}
	if a, _ := e.links.Addrs(desired.DefaultLink, model.IPv4); len(a) != 0 {
		t.Fatalf("IPv4 addresses left: %v", a)
	}
	// Whole cleanup (both families) removes the link; doing it again is
	// harmless.
	for i := 0; i < 2; i++ {
		if err := Cleanup(context.Background(), CleanupConfig{IPTs: []ipt.Interface{e.ipt}, IPVS: e.ipvs, IPSet: e.sets, Links: e.links}); err != nil {
			t.Fatal(err)
		}
	}
	if ok, _ := e.links.LinkExists(desired.DefaultLink); ok {
		t.Fatal("link left after a full cleanup")
	}
	// And a new sync starts from scratch.
	e.sync(s)
	e.requireConverged(s, func(exp *ipvstest.FakeIPVS) { exp.AddService(fw) })
}

func mustAddrs(a []netip.Addr, err error) []netip.Addr {
	if err != nil {
		panic(err)
	}
	return a
}

func TestProgrammed(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	s := e.snap(baseLines...)
	e.sync(s)
	out, ok, err := e.p.Programmed(context.Background(), "default", "lb")
	if err != nil || !ok {
		t.Fatalf("Programmed: %v %v", ok, err)
	}
	for _, want := range []string{
		"TCP 198.19.192.20:443 rr  (default/lb cluster-ip)",
		"-> 198.18.1.3:8443 weight 1 active 0 inactive 0",
		"TCP 203.0.113.20:443 rr  (default/lb load-balancer)",
		"TCP 203.0.113.7:443 rr  (default/lb external-ip)",
		"KPR-LOAD-BALANCER-LOCAL 203.0.113.20,tcp:443",
		"KPR-LOAD-BALANCER-SOURCE-CIDR 203.0.113.20,tcp:443,198.51.100.0/24",
		"KPR-HEALTH-CHECK-NODE-PORT 32001",
		"  203.0.113.20\n",
		"--match-set KPR-LOAD-BALANCER-FW dst,dst",
		"-m ipvs --vaddr 203.0.113.20/32",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("Programmed output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "MISSING") || strings.Contains(out, "198.19.192.10") {
		t.Errorf("Programmed output wrong:\n%s", out)
	}
	// Drift shows up.
	_ = e.ipvs.DelService(&kernel.Service{Family: model.IPv4, Protocol: model.TCP, Addr: netip.MustParseAddr("203.0.113.7"), Port: 443})
	out, _, _ = e.p.Programmed(context.Background(), "default", "lb")
	if !strings.Contains(out, "TCP 203.0.113.7:443 rr  (default/lb external-ip) MISSING") {
		t.Errorf("missing virtual server not reported:\n%s", out)
	}
	if _, ok, _ := e.p.Programmed(context.Background(), "default", "nope"); ok {
		t.Error("unknown Service reported as programmed")
	}
}

func TestSchedulerAndConfigErrors(t *testing.T) {
	e := newEnv(t, model.IPv4, func(c *Config) { c.Scheduler = "mh" })
	e.sync(e.snap(baseLines...))
	svc := e.ipvs.Service(key(model.TCP, "198.19.192.10:80"))
	if svc.Scheduler != "mh" || svc.Flags&kernel.FlagSched2 == 0 {
		t.Fatalf("mh virtual server: %s", svc)
	}
	if _, err := New(Config{Family: model.IPv4}); err == nil {
		t.Error("New without boundaries succeeded")
	}
	if _, err := New(Config{Family: model.IPv6, IPVS: e.ipvs, IPSet: e.sets, IPT: e.ipt, Links: e.links}); err == nil {
		t.Error("New with an IPv4 iptables interface for IPv6 succeeded")
	}
	if _, err := e.p.Sync(context.Background(), &model.Snapshot{Family: model.IPv6}, e.node); err == nil {
		t.Error("Sync of an IPv6 snapshot on the IPv4 proxier succeeded")
	}
	if _, err := e.p.Sync(context.Background(), nil, e.node); err == nil {
		t.Error("Sync of a nil snapshot succeeded")
	}
}

// TestConcurrentReaders runs Programmed, Applied and CheckCanary while
// syncs run (meaningful under -race).
func TestConcurrentReaders(t *testing.T) {
	e := newEnv(t, model.IPv4, nil)
	s := e.snap(baseLines...)
	e.sync(s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 50; i++ {
			if _, _, err := e.p.Programmed(context.Background(), "default", "web"); err != nil {
				t.Error(err)
				return
			}
			_ = e.p.Applied()
			if _, err := e.p.CheckCanary(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; i < 50; i++ {
		e.clock.Step(time.Second)
		if _, err := e.p.Sync(context.Background(), s, e.node); err != nil {
			t.Fatal(err)
		}
	}
	<-done
}
